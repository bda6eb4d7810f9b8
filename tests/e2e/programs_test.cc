// Programs nobody wrote for usprobe: Debian's sqlite3 shell and python3, run under `usprobe count`
// with probes on their libraries. Their output must be exactly that of a plain run, and the probes
// must see calls. (kernel_oracle_test.cc checks sqlite3's counts against the kernel's uprobes.)
#include <cstdlib>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "e2e_support.h"

namespace {

using e2e::Json;
using e2e::Output;
using e2e::run;

constexpr const char *kSqlite = "/usr/bin/sqlite3";
constexpr const char *kPython = "/usr/bin/python3";

// Deterministic work that allocates and measures strings: the output is the same on every run.
constexpr const char *kPythonProgram = R"(
import hashlib, json
words = ["w%d" % i for i in range(20000)]
table = {w: len(w) for w in words}
print(sum(table.values()), len(table))
print(hashlib.sha256(" ".join(words).encode()).hexdigest())
print(json.dumps(sorted(words[:5], reverse=True)))
)";

// Runs `command` plain, then under `usprobe count --json -o FILE probes...`; expects the same
// stdout, stderr and exit status, and returns the total report.
Json count_alongside_plain_run(const std::vector<std::string> &probes,
                               const std::vector<std::string> &command) {
  Output plain = run(command);
  EXPECT_EQ(plain.exit_code(), 0) << plain.describe();
  EXPECT_FALSE(plain.out.empty()) << plain.describe();
  e2e::TempDir dir;
  const std::string file = dir.file("report.json");
  std::vector<std::string> argv = {e2e::cli(), "count", "--json", "-o", file};
  argv.insert(argv.end(), probes.begin(), probes.end());
  argv.push_back("--");
  argv.insert(argv.end(), command.begin(), command.end());
  Output probed = run(argv);
  EXPECT_EQ(probed.exit_code(), 0) << probed.describe();
  EXPECT_EQ(probed.out, plain.out) << "stdout differs from a plain run";
  EXPECT_EQ(probed.err, plain.err) << "stderr differs from a plain run";
  std::vector<Json> reports = e2e::reports(e2e::read_file(file));
  EXPECT_EQ(reports.size(), 1u) << e2e::read_file(file);
  if (reports.empty()) return Json::object();
  EXPECT_EQ(reports.back().value("type", ""), "total");
  EXPECT_EQ(reports.back().value("exit_status", -1), 0);
  EXPECT_EQ(reports.back()["probes"].size(), probes.size()) << reports.back().dump();
  return reports.back();
}

TEST(CliPrograms, SqliteRunsUnchangedAndItsLibraryCallsAreCounted) {
  if (!e2e::file_exists(kSqlite)) GTEST_SKIP() << kSqlite << " is not installed (apt sqlite3)";
  const std::vector<std::string> probes = {
      "libsqlite3:sqlite3_step", "libsqlite3:sqlite3_prepare_v2", "libsqlite3:sqlite3_finalize",
      "libc:malloc", "libc:free"};
  Json total = count_alongside_plain_run(
      probes, {kSqlite, ":memory:", std::string(".read ") + e2e::workload_sql()});
  for (const std::string &name : probes) {
    auto p = e2e::probe_in(total, name);
    ASSERT_TRUE(p) << name << " missing: " << total.dump();
    EXPECT_GT(p->value("hits", 0u), 0u) << p->dump();
    EXPECT_EQ(p->value("missed", 1u), 0u) << p->dump();
  }
  // The shell prepares and finalizes each of the script's 15 statements; 49 rows come out, each
  // one step, plus one final step per statement.
  EXPECT_GE(e2e::probe_in(total, "libsqlite3:sqlite3_prepare_v2")->value("hits", 0u), 15u);
  EXPECT_GE(e2e::probe_in(total, "libsqlite3:sqlite3_finalize")->value("hits", 0u), 15u);
  EXPECT_GE(e2e::probe_in(total, "libsqlite3:sqlite3_step")->value("hits", 0u), 49u + 15u);
}

TEST(CliPrograms, PythonRunsUnchangedAndLibcCallsAreCounted) {
  if (!e2e::file_exists(kPython)) GTEST_SKIP() << kPython << " is not installed (apt python3)";
  const std::vector<std::string> probes = {"libc:malloc", "libc:free", "libc:strlen"};
  Json total = count_alongside_plain_run(probes, {kPython, "-c", kPythonProgram});
  for (const std::string &name : probes) {
    auto p = e2e::probe_in(total, name);
    ASSERT_TRUE(p) << name << " missing: " << total.dump();
    EXPECT_GT(p->value("hits", 0u), 0u) << p->dump();
    EXPECT_EQ(p->value("missed", 1u), 0u) << p->dump();
  }
  // 20,000 strings and a dict of them: far more than a thousand allocations.
  EXPECT_GT(e2e::probe_in(total, "libc:malloc")->value("hits", 0u), 1000u) << total.dump();
}

// Python's subprocess closes every inherited descriptor but 0-2 before it execs the child, the
// region's memfd included: the child's agent reopens the region through /proc/<usprobe>/fd/N
// (USPROBE_AGENT_REGION) and its calls count under its own pid, with nothing on its stderr.
TEST(CliPrograms, PythonSubprocessWhoseFdsWereClosedIsStillProbed) {
  if (!e2e::file_exists(kPython)) GTEST_SKIP() << kPython << " is not installed (apt python3)";
  constexpr const char *kParent = R"py(
import os, subprocess, sys
child = subprocess.run([sys.executable, "-c", "import os\nfor _ in range(7): os.getppid()"],
                       capture_output=True, text=True, close_fds=True)
print(child.returncode, repr(child.stdout), repr(child.stderr))
)py";
  Json total = count_alongside_plain_run({"libc:getppid"}, {kPython, "-c", kParent});
  auto p = e2e::probe_in(total, "libc:getppid");
  ASSERT_TRUE(p) << total.dump();
  EXPECT_GE(p->value("hits", 0u), 7u) << p->dump();
  // The child's 7 calls are under a pid of their own (the parent makes none of its own here).
  bool child_counted = false;
  for (const auto &[pid, hits] : (*p)["pids"].items()) child_counted |= hits.get<uint64_t>() == 7u;
  EXPECT_TRUE(child_counted) << p->dump();
}

// exe: probes are on python3's own file: a child that execs another program (os.system runs
// dash, which runs true twice) cannot have them placed. One line per such process says so, not
// one per probe (`exe:*` is some 1,500 of them), and python's own counts are what they are.
TEST(CliPrograms, AChildThatExecsAnotherProgramGetsOneLineForAllItsExeProbes) {
  if (!e2e::file_exists(kPython)) GTEST_SKIP() << kPython << " is not installed (apt python3)";
  Output r = e2e::run({e2e::cli(), "count", "--json", "exe:*", "--", kPython, "-c",
                       "import os; print(os.getpid()); os.system('/usr/bin/true; /usr/bin/true')"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const long python_pid = std::atol(r.out.c_str());
  ASSERT_GT(python_pid, 0) << r.out;
  int not_placed = 0;
  for (const std::string &line : e2e::lines(r.err)) {
    EXPECT_EQ(line.find("dropped"), std::string::npos) << line;
    if (line.find("not placed") == std::string::npos) continue;
    if (line.find("more processes ran one of those programs") != std::string::npos) continue;
    ++not_placed;
    EXPECT_NE(line.find("other probes on "), std::string::npos) << line;
    EXPECT_NE(line.find(": the process runs /usr/bin/"), std::string::npos) << line;
  }
  EXPECT_GE(not_placed, 1) << r.describe();
  EXPECT_LE(not_placed, 2) << "one line for dash and one for true at most\n" << r.describe();
  Json total = e2e::only_total(r);
  for (const char *name : {"exe:Py_BytesMain", "exe:Py_RunMain"}) {
    auto p = e2e::probe_in(total, name);
    ASSERT_TRUE(p) << name << " missing: " << total.dump();
    EXPECT_EQ(p->value("hits", 0u), 1u) << p->dump();
    EXPECT_EQ((*p)["pids"].value(std::to_string(python_pid), 0u), 1u) << p->dump();
  }
}

// A command that execs many other programs (a build, a shell script): one line for each program
// that ran instead of the probed one (dash and true here), one that counts the other processes.
TEST(CliPrograms, ManyChildrenRunningOtherProgramsAreCountedAfterTheFirstOfEach) {
  if (!e2e::file_exists(kPython)) GTEST_SKIP() << kPython << " is not installed (apt python3)";
  Output r = e2e::run({e2e::cli(), "count", "--json", "exe:Py_RunMain", "--", kPython, "-c",
                       "import os; os.system('; '.join(['/usr/bin/true'] * 12))"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  int dash = 0, trues = 0, summaries = 0;
  for (const std::string &line : e2e::lines(r.err)) {
    dash +=
        line.find("exe:Py_RunMain not placed: the process runs /usr/bin/dash") != std::string::npos;
    trues +=
        line.find("exe:Py_RunMain not placed: the process runs /usr/bin/true") != std::string::npos;
    summaries +=
        line.find("more processes ran one of those programs: their probes were not placed") !=
        std::string::npos;
  }
  EXPECT_LE(dash, 1) << r.describe();
  EXPECT_EQ(trues, 1) << r.describe();
  EXPECT_EQ(summaries, 1) << r.describe();
  EXPECT_EQ(e2e::hits_of(e2e::only_total(r), "exe:Py_RunMain"), 1u) << r.describe();
}

}  // namespace
