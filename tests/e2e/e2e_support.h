// What the end-to-end tests share: running a program (the usprobe CLI, or a command alone for
// comparison) with its stdout and stderr captured and a time limit, a scratch directory, the paths
// of the programs under test, and the parsing of the CLI's JSON reports.
//
//   auto r = e2e::run({e2e::cli(), "count", "--json", "exe:e2e_work", "--",
//                      e2e::target(), "calls", "1000"});
//   ASSERT_EQ(r.exit_code(), 0) << r.describe();
//   auto total = e2e::last_report(r.out + r.err);
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace e2e {

using namespace std::chrono_literals;
using Json = nlohmann::json;

// Paths of the programs under test (compile definitions from tests/e2e/CMakeLists.txt).
const char *cli();            // build/usprobe
const char *target();         // e2e_target (tests/e2e/e2e_target.c)
const char *other();          // e2e_other: a second dynamic program, with no e2e_* function
const char *static_target();  // e2e_target linked with -static
const char *workload_sql();   // tests/e2e/data/workload.sql

// How a program ended, and what it wrote.
struct Output {
  int wait_status = 0;
  bool timed_out = false;  // killed (with its process group) at the time limit
  double seconds = 0;      // from start to exit
  std::string out, err;

  bool exited() const;
  int exit_code() const;  // WEXITSTATUS, or -1 when it did not exit normally
  // "exit status 2" / "killed by signal 11 (Segmentation fault)" / "timed out", then its stderr:
  // for assertion messages.
  std::string describe() const;
};

// A running program: its own process group, stdin from /dev/null, stdout and stderr on pipes.
// Signals are reset to their default action and unblocked in the child before exec.
class Process {
 public:
  explicit Process(const std::vector<std::string> &argv);
  Process(const Process &) = delete;
  Process &operator=(const Process &) = delete;
  ~Process();  // kills the process group if it is still running

  pid_t pid() const { return pid_; }
  // Reads output until stdout holds `needle`; false if the process exits or `limit` passes first.
  bool wait_for_stdout(std::string_view needle, std::chrono::milliseconds limit);
  // The same for its stderr.
  bool wait_for_stderr(std::string_view needle, std::chrono::milliseconds limit);
  // What it has written to stdout so far (as far as wait_for_stdout or finish has read).
  const std::string &out_so_far() const { return result_.out; }
  // Waits for the exit (killing the group after `limit`), then reads what is left on the pipes
  // (briefly: a leftover grandchild may hold them open) and kills whatever is left of the group.
  Output finish(std::chrono::milliseconds limit = 60s);

 private:
  bool pump(int timeout_ms);  // one poll round; false when both pipes are closed
  pid_t pid_ = -1;
  int out_fd_ = -1, err_fd_ = -1;
  bool reaped_ = false;
  std::chrono::steady_clock::time_point start_;
  Output result_;
};

// Start, wait (at most `limit`), collect.
Output run(const std::vector<std::string> &argv, std::chrono::milliseconds limit = 60s);

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;
  ~TempDir();
  const std::string &path() const { return path_; }
  std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

bool file_exists(const std::string &path);
std::string read_file(const std::string &path);         // "" when it cannot be read
std::vector<std::string> lines(std::string_view text);  // split at '\n', no empty last line
std::vector<std::string> words(std::string_view line);  // split at runs of blanks
bool starts_with(std::string_view s, std::string_view prefix);
std::string realpath_of(const std::string &path);  // "" when it does not resolve

// A probe refused before the command started: exit status 2, one line on stderr that contains
// `mentions`, and no `ran_marker` (what the command prints when it runs) on stdout.
void expect_refused(const Output &r, const std::string &mentions, const std::string &ran_marker);

// Every line of `text` that starts with '{', parsed as JSON; a line that does not parse becomes a
// JSON string holding "unparsable: <line>" so that tests fail on it with its text.
std::vector<Json> json_lines(std::string_view text);
// The JSON reports ("type" is "interval" or "total") in `text`, in order.
std::vector<Json> reports(std::string_view text);
// The probe named `name` in a report's "probes" array; nullopt if absent.
std::optional<Json> probe_in(const Json &report, std::string_view name);
// The JSON reports of a run, stdout's then stderr's (wherever the CLI wrote them).
std::vector<Json> reports_of(const Output &r);
// The one report of a run without -i, which must be the total (a gtest failure otherwise; an
// empty object when there is none).
Json only_total(const Output &r);
// The hits of probe `name` in a report (a gtest failure and ~0 when it is absent).
uint64_t hits_of(const Json &report, std::string_view name);

// The file offset and size of a function of an ELF file, read with usprobe's own ELF reader
// (src/elf), independently of the CLI; nullopt if it has no such function.
struct FunctionInfo {
  uint64_t offset = 0;
  uint64_t size = 0;
};
std::optional<FunctionInfo> function_in(const std::string &path, const std::string &name);

}  // namespace e2e
