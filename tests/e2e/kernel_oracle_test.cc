// The kernel as an oracle for the CLI: the same sqlite3 workload is run once under `usprobe count`
// and once, separately, with the kernel's own uprobes (perf_event_open on the "uprobe" PMU) on the
// same functions of the same files, counting for that run's process only. The counts must be
// equal: a user who switches from perf or bpftrace to usprobe sees the same numbers.
//
// The library paths come from the dynamic linker itself (ldd of the command), the file offsets from
// usprobe's ELF reader (src/elf), so the oracle does not depend on the CLI's answers; the test also
// checks that the CLI resolved the short names (libsqlite3, libc) to those same files.
//
// These tests run alone (RUN_SERIAL, tests/e2e/CMakeLists.txt). Skipped, with the reason, where
// perf_event_open is refused.
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "e2e_support.h"
#include "elf/elf_file.h"
#include "support/kernel_uprobe.h"

namespace {

using e2e::Json;
using e2e::Output;

constexpr const char *kSqlite = "/usr/bin/sqlite3";

struct KernelProbe {
  std::string path;  // the ELF file
  uint64_t offset;   // file offset of the probed instruction
};

struct KernelRun {
  std::string skip;  // why the kernel's uprobes could not be used; empty when they were
  std::vector<uint64_t> counts;
  Output output;
};

std::string read_text(const std::string &path) {
  std::string text = e2e::read_file(path);
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

// Runs argv in a child with one kernel uprobe per probe, counting for that child only. The child
// waits on a pipe while the parent opens the events on it (disabled, enabled on exec), then execs.
// Not inherited: for an inherited event the kernel reads attr.uprobe_path again at each clone, from
// the memory of the process that clones, where after exec no such path exists. sqlite3 runs on one
// thread and does not fork; neither does e2e_target in the modes used here.
KernelRun run_with_kernel_uprobes(const std::vector<std::string> &argv,
                                  const std::vector<KernelProbe> &probes) {
  KernelRun result;
  const std::string type_text = read_text("/sys/bus/event_source/devices/uprobe/type");
  if (type_text.empty()) {
    result.skip = "no uprobe PMU (/sys/bus/event_source/devices/uprobe/type)";
    return result;
  }
  const uint32_t type = static_cast<uint32_t>(std::stoul(type_text));

  e2e::TempDir dir;
  const std::string out_file = dir.file("out"), err_file = dir.file("err");
  std::vector<char *> args;
  for (const std::string &a : argv) args.push_back(const_cast<char *>(a.c_str()));
  args.push_back(nullptr);
  int go[2];
  if (pipe2(go, O_CLOEXEC) != 0) {
    result.skip = std::string("pipe2: ") + std::strerror(errno);
    return result;
  }
  const pid_t child = fork();
  if (child == 0) {
    close(go[1]);
    int in = open("/dev/null", O_RDONLY);
    int out = open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
      _exit(126);
    char c;
    if (read(go[0], &c, 1) != 1) _exit(125);  // the parent gave up
    execv(args[0], args.data());
    _exit(127);
  }
  close(go[0]);
  std::vector<int> fds;
  auto cleanup = [&] {
    for (int fd : fds) close(fd);
  };
  for (const KernelProbe &p : probes) {
    perf_event_attr attr;
    std::memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = type;
    attr.uprobe_path = reinterpret_cast<uint64_t>(p.path.c_str());
    attr.probe_offset = p.offset;
    attr.disabled = 1;
    attr.enable_on_exec = 1;
    long fd = syscall(SYS_perf_event_open, &attr, child, -1, -1, PERF_FLAG_FD_CLOEXEC);
    if (fd < 0) {
      result.skip = "perf_event_open(uprobe " + p.path + ":" + std::to_string(p.offset) +
                    "): " + std::strerror(errno);
      close(go[1]);
      waitpid(child, nullptr, 0);
      cleanup();
      return result;
    }
    fds.push_back(static_cast<int>(fd));
  }
  (void)!write(go[1], "x", 1);
  close(go[1]);

  const auto start = std::chrono::steady_clock::now();
  int status = 0;
  while (waitpid(child, &status, WNOHANG) != child) {
    if (std::chrono::steady_clock::now() - start > std::chrono::seconds(60)) {
      kill(child, SIGKILL);
      waitpid(child, &status, 0);
      result.output.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  result.output.wait_status = status;
  result.output.out = e2e::read_file(out_file);
  result.output.err = e2e::read_file(err_file);
  for (int fd : fds) {
    uint64_t value = ~0ull;
    if (read(fd, &value, sizeof value) != static_cast<ssize_t>(sizeof value)) value = ~0ull;
    result.counts.push_back(value);
  }
  cleanup();
  return result;
}

// The path the dynamic linker loads `soname` from for `program` (ldd's "soname => PATH (...)").
std::string library_of(const std::string &program, const std::string &soname) {
  Output r = e2e::run({"/usr/bin/ldd", program});
  for (const std::string &line : e2e::lines(r.out)) {
    auto w = e2e::words(line);
    if (w.size() >= 3 && w[0] == soname && w[1] == "=>") return w[2];
  }
  return "";
}

struct Probe {
  std::string spec;    // for the CLI: "libsqlite3:sqlite3_step"
  std::string soname;  // for ldd: "libsqlite3.so.0"; empty: the command's own executable
  std::string symbol;  // "sqlite3_step"
};

// Counts `probes` on `command` with the CLI and, in a separate run, with kernel uprobes; expects
// equal counts, equal output, and the CLI's locations in the files the dynamic linker loads.
void expect_counts_match_kernel(const std::vector<Probe> &probes,
                                const std::vector<std::string> &command) {
  std::vector<KernelProbe> kernel_probes;
  for (const Probe &p : probes) {
    const std::string path =
        p.soname.empty() ? e2e::realpath_of(command[0]) : library_of(command[0], p.soname);
    ASSERT_FALSE(path.empty()) << "ldd " << command[0] << " shows no " << p.soname;
    auto fn = e2e::function_in(path, p.symbol);
    ASSERT_TRUE(fn) << path << " has no function " << p.symbol;
    kernel_probes.push_back({path, fn->offset});
  }
  KernelRun kernel = run_with_kernel_uprobes(command, kernel_probes);
  if (!kernel.skip.empty()) GTEST_SKIP() << kernel.skip;
  ASSERT_EQ(kernel.output.exit_code(), 0) << kernel.output.describe();

  e2e::TempDir dir;
  const std::string file = dir.file("report.json");
  std::vector<std::string> argv = {e2e::cli(), "count", "--json", "-o", file};
  for (const Probe &p : probes) argv.push_back(p.spec);
  argv.push_back("--");
  argv.insert(argv.end(), command.begin(), command.end());
  Output r = e2e::run(argv);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out, kernel.output.out) << "stdout differs between the runs";
  std::vector<Json> reports = e2e::reports(e2e::read_file(file));
  ASSERT_EQ(reports.size(), 1u) << e2e::read_file(file);
  const Json &total = reports[0];

  for (size_t i = 0; i < probes.size(); ++i) {
    auto p = e2e::probe_in(total, probes[i].spec);
    ASSERT_TRUE(p) << probes[i].spec << " missing: " << total.dump();
    const std::string location = p->value("location", "");
    const size_t colon = location.rfind(':');
    ASSERT_NE(colon, std::string::npos) << location;
    EXPECT_EQ(e2e::realpath_of(location.substr(0, colon)), e2e::realpath_of(kernel_probes[i].path))
        << probes[i].spec << " resolved to " << location;
    EXPECT_EQ(p->value("hits", ~0ull), kernel.counts[i])
        << probes[i].spec << ": usprobe (left) and the kernel's uprobe (right) disagree";
    EXPECT_EQ(p->value("missed", 1u), 0u) << p->dump();
    std::printf("  %-32s usprobe %10llu   kernel %10llu\n", probes[i].spec.c_str(),
                static_cast<unsigned long long>(p->value("hits", ~0ull)),
                static_cast<unsigned long long>(kernel.counts[i]));
  }
}

std::vector<std::string> sqlite_workload() {
  return {kSqlite, ":memory:", std::string(".read ") + e2e::workload_sql()};
}

TEST(CliKernelOracle, SqliteLibraryCallsMatchKernelUprobes) {
  if (!e2e::file_exists(kSqlite)) GTEST_SKIP() << kSqlite << " is not installed (apt sqlite3)";
  expect_counts_match_kernel(
      {{"libsqlite3:sqlite3_step", "libsqlite3.so.0", "sqlite3_step"},
       {"libsqlite3:sqlite3_prepare_v2", "libsqlite3.so.0", "sqlite3_prepare_v2"},
       {"libsqlite3:sqlite3_finalize", "libsqlite3.so.0", "sqlite3_finalize"},
       {"libsqlite3:sqlite3_column_text", "libsqlite3.so.0", "sqlite3_column_text"}},
      sqlite_workload());
}

TEST(CliKernelOracle, SqliteMallocAndFreeMatchKernelUprobes) {
  if (!e2e::file_exists(kSqlite)) GTEST_SKIP() << kSqlite << " is not installed (apt sqlite3)";
  expect_counts_match_kernel(
      {{"libc:malloc", "libc.so.6", "malloc"}, {"libc:free", "libc.so.6", "free"}},
      sqlite_workload());
}

// A program that hardly allocates (printf's stdout buffer): every stray call is visible.
TEST(CliKernelOracle, SmallProgramMallocAndFreeMatchKernelUprobes) {
  expect_counts_match_kernel({{"libc:malloc", "libc.so.6", "malloc"},
                              {"libc:free", "libc.so.6", "free"},
                              {"libc:getppid", "libc.so.6", "getppid"}},
                             {e2e::target(), "libc", "25"});
}

// Calls made inside fork() (tests/e2e/fork_target.c): _Fork, libc's malloc locking around the
// split, and the program's fork handlers that run between the agent's own prepare and parent
// handlers. The kernel counts the parent process only (its events are not inherited), so only
// functions that the parent alone calls are compared here; count_test.cc checks the children's.
TEST(CliKernelOracle, CallsInsideForkMatchKernelUprobes) {
  expect_counts_match_kernel(
      {{"libc:_Fork", "libc.so.6", "_Fork"},
       {"libc:__malloc_fork_lock_parent", "libc.so.6", "__malloc_fork_lock_parent"},
       {"libc:__malloc_fork_unlock_parent", "libc.so.6", "__malloc_fork_unlock_parent"},
       {"exe:early_prepare", "", "early_prepare"},
       {"exe:early_parent", "", "early_parent"},
       {"exe:late_parent", "", "late_parent"}},
      {FORK_TARGET, "6"});
}

// Where the dynamic linker of this process resolves `name` in the libc at `libc_path`: for an IFUNC
// (memcpy, strlen) the implementation this CPU gets (__strlen_evex, ...). sqlite3, started from
// here with the same libc, the same CPU and the same environment (GLIBC_TUNABLES), gets the same.
std::expected<usprobe::test::FileLocation, std::string> resolved_in_libc(
    const std::string &libc_path, const std::string &name) {
  void *libc = dlopen(libc_path.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  if (!libc) return std::unexpected(libc_path + " is not this process's libc: " + dlerror());
  void *addr = dlsym(libc, name.c_str());
  dlclose(libc);
  if (!addr) return std::unexpected("dlsym(" + name + ") failed");
  return usprobe::test::file_location_of(addr);
}

// `usprobe count 'libc:*'` puts a probe on every function of libc at once (thousands of them; a
// few are refused with a notice, such as time, which the vDSO answers). sqlite3 must run as it does
// alone, and a few of its busiest functions must still count what the kernel's uprobes count: the
// allocator, the mutex sqlite3 takes around its memory statistics, and three IFUNCs, counted by the
// kernel on the implementation the dynamic linker picked. Aliases at one offset are one probe under
// one name (memcmp is reported as bcmp), and an IFUNC and its implementation are one site, so every
// name the report gives that code must show the kernel's count.
//
// The functions are ones whose counts are the same on every run of this script. memcpy's are not
// (they vary by a few from run to run); memset is left out because a kernel uprobe on its AVX-512
// implementation, whose first instruction is `vpbroadcastb %esi,%zmm16`, kills sqlite3 with
// SIGSEGV (Linux 6.18). More generally, the kernel does not probe an implementation whose first
// instruction is VEX- or EVEX-encoded (on an AVX2 machine, __strcmp_avx2 starts with `vpxor
// %xmm15, ...`, and the kernel's uprobe counts 0 there while usprobe counts every call): such a
// function is left out on the machine where it runs that code.
bool kernel_probes_start_of(const std::string &path, uint64_t offset) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  unsigned char first = 0;
  bool read = ::pread(fd, &first, 1, static_cast<off_t>(offset)) == 1;
  ::close(fd);
  return read && first != 0xc4 && first != 0xc5 && first != 0x62;  // VEX3, VEX2, EVEX
}

TEST(CliKernelOracle, SqliteUnderAllOfLibcMatchesKernelUprobes) {
  if (!e2e::file_exists(kSqlite)) GTEST_SKIP() << kSqlite << " is not installed (apt sqlite3)";
  const std::vector<std::string> command = sqlite_workload();
  const std::string libc = library_of(kSqlite, "libc.so.6");
  ASSERT_FALSE(libc.empty()) << "ldd " << kSqlite << " shows no libc.so.6";
  auto elf = usprobe::elf::ElfFile::open(libc);
  ASSERT_TRUE(elf) << libc << ": " << elf.error().message;

  std::vector<std::string> functions;
  std::vector<KernelProbe> kernel_probes;
  std::vector<std::string> runs_in;             // the implementation's name, for the printout
  std::vector<std::set<std::string>> names_of;  // every report name of the code that runs
  for (const std::string name :
       {"malloc", "free", "pthread_mutex_lock", "strlen", "strcmp", "memcmp"}) {
    auto fn = (*elf)->find_function(name);
    ASSERT_TRUE(fn) << fn.error().message;
    auto where = resolved_in_libc(libc, name);
    ASSERT_TRUE(where) << where.error();
    ASSERT_EQ(e2e::realpath_of(where->path), e2e::realpath_of(libc)) << name;
    EXPECT_EQ(fn->ifunc, where->offset != fn->file_offset) << name;
    if (!kernel_probes_start_of(libc, where->offset)) {
      std::printf("  libc:%-19s left out: its code here starts with a VEX/EVEX instruction\n",
                  name.c_str());
      continue;
    }
    functions.push_back(name);
    kernel_probes.push_back({libc, where->offset});
    std::optional<usprobe::elf::Function> impl = (*elf)->function_containing(where->offset);
    runs_in.push_back(impl ? impl->name : "?");
    std::set<std::string> names;
    for (const usprobe::elf::Function &f : (*elf)->functions()) {
      if (f.file_offset != fn->file_offset && f.file_offset != where->offset) continue;
      names.insert("libc:" + (f.hidden_version ? f.name + "@" + f.version : f.name));
    }
    names_of.push_back(std::move(names));
  }
  ASSERT_GE(functions.size(), 4u) << "too few functions the kernel can probe on this machine";
  KernelRun kernel = run_with_kernel_uprobes(command, kernel_probes);
  if (!kernel.skip.empty()) GTEST_SKIP() << kernel.skip;
  ASSERT_EQ(kernel.output.exit_code(), 0) << kernel.output.describe();

  Output plain = e2e::run(command);
  ASSERT_EQ(plain.exit_code(), 0) << plain.describe();
  EXPECT_FALSE(plain.out.empty()) << plain.describe();
  e2e::TempDir dir;
  const std::string file = dir.file("report.json");
  std::vector<std::string> argv = {e2e::cli(), "count", "--json", "-o", file, "libc:*", "--"};
  argv.insert(argv.end(), command.begin(), command.end());
  Output r = e2e::run(argv);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out, plain.out) << "stdout differs from a plain run";
  EXPECT_EQ(kernel.output.out, plain.out) << "stdout differs between the plain and kernel runs";
  // sqlite3 writes nothing to stderr here; all there is are usprobe's notices.
  for (const std::string &line : e2e::lines(r.err))
    EXPECT_TRUE(e2e::starts_with(line, "usprobe: ")) << line;
  std::vector<Json> reports = e2e::reports(e2e::read_file(file));
  ASSERT_EQ(reports.size(), 1u) << e2e::read_file(file);
  const Json &total = reports[0];
  EXPECT_EQ(total.value("exit_status", -1), 0);
  ASSERT_GT(total["probes"].size(), 1000u) << "not all of libc was probed: " << r.err;
  size_t missed = 0;
  for (const Json &p : total["probes"]) missed += p.value("missed", 1u) != 0;
  EXPECT_EQ(missed, 0u) << "probes that missed hits";

  for (size_t i = 0; i < functions.size(); ++i) {
    const std::string spec = "libc:" + functions[i];
    std::string names_seen;
    for (const Json &q : total["probes"]) {
      const std::string name = q.value("probe", "");
      if (!names_of[i].contains(name)) continue;
      names_seen += names_seen.empty() ? name : " " + name;
      const std::string location = q.value("location", "");
      EXPECT_EQ(e2e::realpath_of(location.substr(0, location.rfind(':'))), e2e::realpath_of(libc))
          << name << " resolved to " << location;
      EXPECT_EQ(q.value("hits", ~0ull), kernel.counts[i])
          << name << " (" << spec << " runs " << runs_in[i]
          << "): usprobe (left) and the kernel's uprobe (right) disagree";
    }
    EXPECT_FALSE(names_seen.empty()) << spec << " is under no name in the report";
    std::printf("  %-24s kernel %8llu   on %s; usprobe's names: %s\n", spec.c_str(),
                static_cast<unsigned long long>(kernel.counts[i]), runs_in[i].c_str(),
                names_seen.c_str());
  }
}

// bpftrace as the oracle of a USDT probe: python:function__entry (behind a semaphore, which each
// tracer raises; 1,502 here) counted by bpftrace for one run of a script and by usprobe for another
// run of the same script: the same number. Skipped where bpftrace is absent or cannot run (it needs
// root).
TEST(CliKernelOracle, UsdtPythonFunctionEntryCountsWhatBpftraceCounts) {
  const std::string python = "/usr/bin/python3.11", bpftrace = "/usr/bin/bpftrace";
  if (!e2e::file_exists(python)) GTEST_SKIP() << python << " is not installed";
  if (!e2e::file_exists(bpftrace)) GTEST_SKIP() << bpftrace << " is not installed";
  e2e::TempDir dir;
  const std::string script = dir.file("calls.py");
  FILE *f = std::fopen(script.c_str(), "w");
  ASSERT_TRUE(f);
  // CPython 3.11 fires function__entry on its tracing path only: a profile function enables it.
  std::fputs(
      "import sys\ndef f(n):\n    return n + 1\nsys.setprofile(slice)\n"
      "for i in range(1500):\n    f(i)\nsys.setprofile(None)\n",
      f);
  std::fclose(f);
  const std::string probe = "usdt:" + python + ":python:function__entry";
  Output b = e2e::run({bpftrace, "-e", probe + " /pid == cpid/ { @ = count(); }", "-c",
                       python + " -I -S " + script});
  const size_t at = b.out.find("@: ");
  if (b.exit_code() != 0 || at == std::string::npos)
    GTEST_SKIP() << "bpftrace could not count here: " << b.describe() << b.out;
  const uint64_t bpftrace_count = std::stoull(b.out.substr(at + 3));
  Output r =
      e2e::run({e2e::cli(), "count", "--json", "-o", "-", probe, "--", python, "-I", "-S", script});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const uint64_t usprobe_count = e2e::hits_of(e2e::only_total(r), probe);
  EXPECT_EQ(usprobe_count, bpftrace_count) << "usprobe (left) and bpftrace (right) disagree";
  EXPECT_GT(usprobe_count, 1500u);
  std::printf("  %-50s usprobe %8llu   bpftrace %8llu\n", probe.c_str(),
              static_cast<unsigned long long>(usprobe_count),
              static_cast<unsigned long long>(bpftrace_count));
}

}  // namespace
