#include "target/launch.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>

#include <fmt/format.h>

#include "core/site_analysis.h"
#include "elf/location.h"
#include "protocol/prepared.h"
#include "protocol/protocol.h"
#include "resolve/paths.h"

extern char **environ;

namespace usprobe::cli {
namespace {

constexpr const char *kAgentName = "libusprobe-agent.so";

bool readable(const std::string &path) {
  return ::access(path.c_str(), R_OK) == 0;
}

// The write end of the watchdog's pipe (launch.h); -1 when none was started.
int g_watchdog_fd = -1;
pid_t g_watchdog_pid = -1;

void dismiss_watchdog() {
  if (g_watchdog_fd < 0) return;
  char done = 'd';
  [[maybe_unused]] ssize_t n = ::write(g_watchdog_fd, &done, 1);
  ::close(g_watchdog_fd);
  g_watchdog_fd = -1;
}

// The watchdog's life, in the forked process: it never returns.
[[noreturn]] void watchdog(int pipe_fd, dev_t dev, ino_t ino) {
  ::setsid();  // neither the terminal's signals nor the e2e tests' process-group kills reach it
  // Nothing of usprobe's stays open in it (a pipe it held would keep a reader of usprobe's output
  // waiting): /dev/null on 0-2, the pipe on 3, the rest closed.
  int null = ::open("/dev/null", O_RDWR);
  for (int fd = 0; fd <= 2; ++fd)
    if (null >= 0 && null != fd) ::dup2(null, fd);
  if (pipe_fd != 3) {
    ::dup2(pipe_fd, 3);
    pipe_fd = 3;
  }
  if (::syscall(SYS_close_range, 4u, ~0u, 0u) != 0)
    for (int fd = 4; fd < 4096; ++fd) ::close(fd);
  sigset_t all;
  sigfillset(&all);
  ::sigprocmask(SIG_BLOCK, &all, nullptr);  // only SIGKILL ends it
  char c = 0;
  ssize_t n;
  while ((n = ::read(pipe_fd, &c, 1)) < 0 && errno == EINTR) {
  }
  if (n == 1) ::_exit(0);  // dismissed: usprobe ended as it should
  pid_t self = ::getpid();
  for (int round = 0; round < 500; ++round) {
    std::vector<pid_t> left = processes_mapping(dev, ino, self);
    if (left.empty()) break;
    for (pid_t pid : left) ::kill(pid, SIGKILL);
    ::usleep(10'000);
  }
  ::_exit(0);
}

// Starts the watchdog (launch.h) for the region behind `region_fd`, once per usprobe.
void start_watchdog(int region_fd) {
  if (g_watchdog_fd >= 0) return;
  struct stat st;
  if (::fstat(region_fd, &st) != 0) return;
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return;
  std::fflush(nullptr);  // nothing buffered is written twice
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(p[0]);
    ::close(p[1]);
    return;
  }
  if (pid == 0) {
    ::close(p[1]);
    watchdog(p[0], st.st_dev, st.st_ino);
  }
  ::close(p[0]);
  g_watchdog_fd = p[1];
  g_watchdog_pid = pid;
  std::atexit(dismiss_watchdog);
}

}  // namespace

bool maps_memfd(pid_t pid, dev_t dev, ino_t ino) {
  // A maps line: address perms offset major:minor inode, blanks, pathname (a memfd's /memfd:NAME).
  std::string device = fmt::format(" {:02x}:{:02x} {} ", major(dev), minor(dev), ino);
  std::ifstream maps(fmt::format("/proc/{}/maps", pid));
  std::string line;
  while (std::getline(maps, line))
    if (line.find(device) != std::string::npos && line.find(" /memfd:") != std::string::npos)
      return true;
  return false;
}

std::vector<pid_t> processes_mapping(dev_t dev, ino_t ino, pid_t self) {
  std::vector<pid_t> out;
  DIR *proc = ::opendir("/proc");
  if (!proc) return out;
  while (dirent *d = ::readdir(proc)) {
    char *end = nullptr;
    long pid = std::strtol(d->d_name, &end, 10);
    if (pid <= 0 || *end != '\0' || pid == self) continue;
    if (maps_memfd(static_cast<pid_t>(pid), dev, ino)) out.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(proc);
  return out;
}

void kill_command_processes(int region_fd) {
  struct stat st;
  if (::fstat(region_fd, &st) != 0) return;
  for (pid_t pid : processes_mapping(st.st_dev, st.st_ino, ::getpid()))
    if (pid != g_watchdog_pid) ::kill(pid, SIGKILL);
}

Result<std::string> find_agent() {
  std::vector<std::string> candidates;
  if (const char *env = std::getenv("USPROBE_AGENT"); env && *env) {
    candidates.push_back(env);  // set on purpose: no other place is tried
  } else {
    if (auto self = real_path("/proc/self/exe")) {
      std::string dir = self->substr(0, self->rfind('/'));
      candidates.push_back(dir + "/" + kAgentName);  // the build tree
      // An installed tree, wherever its prefix is: PREFIX/bin/usprobe, PREFIX/LIBDIR/the agent.
      candidates.push_back(dir + "/../" + USPROBE_RELATIVE_LIBDIR + "/" + kAgentName);
      candidates.push_back(dir + "/../lib/x86_64-linux-gnu/" + kAgentName);  // Debian layout
    }
    candidates.push_back(std::string(USPROBE_INSTALL_LIBDIR) + "/" + kAgentName);
  }
  std::string looked;
  for (const std::string &c : candidates) {
    if (readable(c))
      if (auto abs = real_path(c)) return *abs;  // LD_PRELOAD wants it absolute
    looked += (looked.empty() ? "" : ", ") + c;
  }
  return fail(ENOENT, "agent library not found (looked in " + looked + ")");
}

std::vector<std::string> command_environment(char **env, const std::string &agent, int region_fd,
                                             int prepared_fd) {
  std::string preload = agent;
  std::vector<std::string> out;
  for (char **e = env; e && *e; ++e) {
    std::string_view var(*e);
    if (var.starts_with("LD_PRELOAD=")) {
      std::string_view old = var.substr(11);
      if (!old.empty()) preload += ":" + std::string(old);
      continue;
    }
    if (var.starts_with(std::string(agent::kEnvFd) + "=")) continue;
    if (var.starts_with(std::string(agent::kEnvPath) + "=")) continue;
    if (var.starts_with(std::string(agent::kEnvPrepared) + "=")) continue;
    out.emplace_back(var);
  }
  out.push_back("LD_PRELOAD=" + preload);
  out.push_back(std::string(agent::kEnvFd) + "=" + std::to_string(region_fd));
  out.push_back(fmt::format("{}=/proc/{}/fd/{}", agent::kEnvPath, getpid(), region_fd));
  if (prepared_fd >= 0)
    out.push_back(fmt::format("{}=/proc/{}/fd/{}", agent::kEnvPrepared, getpid(), prepared_fd));
  return out;
}

int prepared_files_memfd(const std::vector<std::string> &locations,
                         const std::vector<std::string> &files_too) {
  // The probed files, each once: the engine's own resolution, as the agent's attach makes it.
  std::vector<std::string> specs;
  std::vector<std::shared_ptr<const elf::ElfFile>> files;
  auto add = [&](const std::shared_ptr<const elf::ElfFile> &f) {
    if (f && !f->build_id().empty() &&
        std::none_of(files.begin(), files.end(), [&](const auto &g) { return g->id() == f->id(); }))
      files.push_back(f);
  };
  for (std::string_view l : locations) {
    l = elf::split_probe_type(l).location;
    if (elf::is_usdt_spec(l)) {
      if (auto sites = elf::resolve_usdt(l); sites && !sites->empty()) add(sites->front().file);
    } else {
      specs.emplace_back(l);
    }
  }
  for (const auto &r : elf::resolve_locations(specs))
    if (r) add(r->file);
  for (const std::string &path : files_too)
    if (auto f = elf::ElfFile::open(path)) add(*f);
  if (files.empty()) return -1;

  agent::PreparedHead head{agent::kPreparedMagic, agent::kPreparedVersion, 0, 0};
  std::vector<agent::PreparedFile> records;
  std::vector<uint64_t> words;  // every file's targets, then its complete ranges as pairs
  std::vector<std::vector<uint8_t>> images;
  std::vector<const elf::ElfFile *> kept;  // the file of each record
  for (const auto &f : files) {
    if (records.size() == agent::kPreparedMaxFiles) break;
    if (f->build_id().size() >= sizeof agent::PreparedFile::build_id) continue;
    const std::vector<uint64_t> &t = *file_branch_targets(*f);
    const auto &ranges = *file_complete_ranges(*f);
    agent::PreparedFile r{};
    r.dev = f->id().dev;
    r.ino = f->id().ino;
    std::memcpy(r.build_id, f->build_id().data(), f->build_id().size());
    r.first = words.size();
    r.count = t.size();
    words.insert(words.end(), t.begin(), t.end());
    r.ranges_first = words.size();
    r.ranges = ranges.size();
    for (const auto &[offset, size] : ranges) {
      words.push_back(offset);
      words.push_back(size);
    }
    const elf::FileVersion v = f->version();
    r.size = v.size;
    r.mtime_sec = v.mtime_sec;
    r.mtime_nsec = v.mtime_nsec;
    records.push_back(r);
    images.push_back(f->index_image());
    kept.push_back(f.get());
  }
  head.words = words.size();
  head.files = static_cast<uint32_t>(records.size());
  // Each file's bytes, then its image, after the words, 8-aligned.
  size_t size = sizeof head + records.size() * sizeof records[0] + head.words * 8;
  auto align8 = [](size_t n) { return (n + 7) & ~size_t{7}; };
  for (size_t i = 0; i < records.size(); ++i) {
    records[i].bytes_at = size;
    size = align8(size + records[i].size);
    records[i].image_at = size;
    records[i].image_size = images[i].size();
    size = align8(size + images[i].size());
  }
  int fd = ::memfd_create(agent::kPreparedMemfdName, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -1;
  // Written through a mapping, which is gone before the seals go on (F_SEAL_WRITE refuses a file
  // with a writable mapping).
  bool ok = ::ftruncate(fd, static_cast<off_t>(size)) == 0;
  void *mem = ok ? ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  ok = mem != MAP_FAILED;
  if (ok) {
    char *base = static_cast<char *>(mem), *at = base;
    std::memcpy(at, &head, sizeof head);
    at += sizeof head;
    if (!records.empty()) std::memcpy(at, records.data(), records.size() * sizeof records[0]);
    at += records.size() * sizeof records[0];
    if (!words.empty()) std::memcpy(at, words.data(), words.size() * sizeof words[0]);
    for (size_t i = 0; i < records.size(); ++i) {
      std::span<const uint8_t> bytes = kept[i]->bytes(0, records[i].size);
      if (bytes.size() != records[i].size) {
        ok = false;
        break;
      }
      std::memcpy(base + records[i].bytes_at, bytes.data(), bytes.size());
      if (!images[i].empty())
        std::memcpy(base + records[i].image_at, images[i].data(), images[i].size());
    }
    ::munmap(mem, size);
  }
  ok =
      ok && ::fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) == 0;
  if (!ok) {
    ::close(fd);
    return -1;
  }
  return fd;
}

Result<Child> launch(const Command &command, const std::string &agent, int region_fd,
                     const sigset_t &child_mask, int stdout_fd, int prepared_fd) {
  // Everything the child needs is built before fork: between fork and exec it may only make
  // async-signal-safe calls.
  std::vector<std::string> env = command_environment(environ, agent, region_fd, prepared_fd);
  std::vector<char *> envp, argv;
  for (std::string &e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  for (const std::string &a : command.argv) argv.push_back(const_cast<char *>(a.c_str()));
  argv.push_back(nullptr);
  // The exec's failure comes back through this pipe; its close-on-exec end reads as EOF when the
  // exec succeeded.
  start_watchdog(region_fd);
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0)
    return fail(errno, std::string("pipe: ") + std::strerror(errno));

  Child child;
  child.started = std::chrono::steady_clock::now();
  child.pid = ::fork();
  if (child.pid < 0) {
    int err = errno;
    ::close(report[0]);
    ::close(report[1]);
    return fail(err, std::string("fork: ") + std::strerror(err));
  }
  if (child.pid == 0) {
    ::close(report[0]);
    ::sigprocmask(SIG_SETMASK, &child_mask, nullptr);
    // dup2 leaves the copy without close-on-exec: the command keeps it.
    if (stdout_fd >= 0 && stdout_fd != STDOUT_FILENO && ::dup2(stdout_fd, STDOUT_FILENO) < 0) {
      int err = errno;
      [[maybe_unused]] ssize_t n = ::write(report[1], &err, sizeof err);
      ::_exit(127);
    }
    ::execve(command.path.c_str(), argv.data(), envp.data());
    int err = errno;
    [[maybe_unused]] ssize_t n = ::write(report[1], &err, sizeof err);
    ::_exit(127);
  }
  ::close(report[1]);
  int err = 0;
  ssize_t n;
  while ((n = ::read(report[0], &err, sizeof err)) < 0 && errno == EINTR) {
  }
  ::close(report[0]);
  if (n == static_cast<ssize_t>(sizeof err)) {
    while (::waitpid(child.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return fail(err, "cannot execute " + command.path + ": " + std::strerror(err));
  }
  return child;
}

}  // namespace usprobe::cli
