// usprobe against a command that does what a careless or hostile one can: scribbles over the
// shared region, starts with stdin closed, outlives a usprobe that was killed; and usprobe whose
// output goes away or that is sent the signals a terminal sends.
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "e2e_support.h"

#include "support/text_match.h"

namespace rx = usprobe::test;

namespace {

using e2e::hits_of;
using e2e::Json;
using e2e::only_total;
using e2e::Output;
using e2e::run;

const char *robust_target() {
  return ROBUST_TARGET;
}

bool contains(const std::string &text, const std::string &part) {
  return text.find(part) != std::string::npos;
}

// Item 4: the command rewrites the header and its slots; usprobe reads on, says so, and reports.
TEST(RobustRegion, CountSurvivesACommandThatScribblesOverTheRegion) {
  Output r = run(
      {e2e::cli(), "count", "--json", "exe:robust_work", "--", robust_target(), "scribble", "100"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_TRUE(contains(r.out, "scribbled\n")) << r.describe();
  EXPECT_TRUE(contains(r.err, "corrupt records ignored")) << r.describe();
  Json total = only_total(r);
  EXPECT_EQ(total.value("exit_status", -1), 0) << total.dump();
}

TEST(RobustRegion, TraceSurvivesACommandThatScribblesOverTheRegion) {
  Output r =
      run({e2e::cli(), "trace", "exe:robust_work", "--", robust_target(), "scribble", "100"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_TRUE(contains(r.out, "scribbled\n")) << r.describe();
  EXPECT_TRUE(contains(r.err, "corrupt records ignored")) << r.describe();
  EXPECT_TRUE(contains(r.err, " events, ")) << r.describe();
}

// The agent, too, follows its own copy of the layout: a process that rewrote the header does not
// send the agents of the command (its own, or a more privileged process's) outside the region. A
// thread that starts after the header was written over claims its slot where the CLI reads it.
TEST(RobustRegion, TheAgentFollowsItsOwnCopyOfTheLayout) {
  Output r = run({e2e::cli(), "count", "--json", "exe:robust_work", "--", robust_target(),
                  "scribble-header", "100"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_TRUE(contains(r.out, "done\n")) << r.describe();
  EXPECT_EQ(hits_of(only_total(r), "exe:robust_work"), 200u) << r.describe();
}

// Item 10: `CMD 0<&-` under usprobe is `CMD 0<&-`: fd 0 stays closed, the region is not on it.
std::vector<std::string> without_stdin(std::vector<std::string> argv) {
  argv.insert(argv.begin(), {"/bin/sh", "-c", "exec \"$@\" 0<&-", "sh"});
  return argv;
}

TEST(RobustDescriptors, AClosedStdinStaysClosedForTheCommand) {
  e2e::TempDir dir;
  Output plain = run(without_stdin({"head", "-c", "16"}));
  Output probed = run(without_stdin(
      {e2e::cli(), "count", "-o", dir.file("report"), "libc:malloc", "--", "head", "-c", "16"}));
  ASSERT_NE(plain.exit_code(), 0) << plain.describe();  // head cannot read a closed stdin
  EXPECT_EQ(probed.exit_code(), plain.exit_code()) << probed.describe();
  EXPECT_EQ(probed.out, plain.out) << probed.describe();  // never the region's "UUSPROB1..."
  EXPECT_TRUE(contains(probed.err, plain.err)) << "unprobed:\n"
                                               << plain.err << "probed:\n"
                                               << probed.err;
}

// "fds 1 2 3c ..." (c: close-on-exec) -> {1, 2, 3, ...}, and those close-on-exec.
std::set<int> fds_of(const std::string &out, std::string *region, std::set<int> *cloexec) {
  std::set<int> fds;
  std::istringstream in(out);
  std::string word;
  in >> word;  // "fds"
  while (in >> word && word != "region") {
    fds.insert(std::stoi(word));
    if (word.back() == 'c') cloexec->insert(std::stoi(word));
  }
  in >> *region;
  return fds;
}

TEST(RobustDescriptors, TheCommandSeesItsOwnDescriptorsAndTheRegionAboveTwo) {
  e2e::TempDir dir;
  Output plain = run(without_stdin({robust_target(), "fds"}));
  Output probed = run(without_stdin({e2e::cli(), "count", "-o", dir.file("report"),
                                     "exe:robust_work", "--", robust_target(), "fds"}));
  ASSERT_EQ(plain.exit_code(), 0) << plain.describe();
  ASSERT_EQ(probed.exit_code(), 0) << probed.describe();
  std::string plain_region, region;
  std::set<int> plain_cloexec, cloexec;
  std::set<int> plain_fds = fds_of(plain.out, &plain_region, &plain_cloexec);
  std::set<int> fds = fds_of(probed.out, &region, &cloexec);
  EXPECT_EQ(plain_region, "-");
  EXPECT_FALSE(plain_fds.count(0)) << plain.out;
  // The region's descriptor, inherited (the agent needs it: an image exec'd later maps the region
  // through it), is above the standard ones; so are the agent's own (the engine's /proc/self/mem),
  // which are close-on-exec. Everything else is as without usprobe.
  ASSERT_NE(region, "-") << probed.out;
  int region_fd = std::stoi(region);
  EXPECT_GT(region_fd, 2);
  EXPECT_FALSE(cloexec.count(region_fd));
  fds.erase(region_fd);
  for (int fd : std::set<int>(fds))
    if (!plain_fds.count(fd) && fd > 2 && cloexec.count(fd)) fds.erase(fd);
  EXPECT_EQ(fds, plain_fds) << "unprobed: " << plain.out << "probed: " << probed.out;
}

// Item 12: SIGHUP, SIGQUIT and SIGTERM sent to usprobe are handled as SIGINT: forwarded to the
// command, then the report.
TEST(RobustSignals, HangupQuitAndTermAreForwardedAndTheReportPrinted) {
  for (int sig : {SIGHUP, SIGQUIT, SIGTERM}) {
    SCOPED_TRACE(strsignal(sig));
    // No core file from the command's SIGQUIT.
    e2e::Process p({"/bin/sh", "-c", "ulimit -c 0; exec \"$@\"", "sh", e2e::cli(), "count",
                    "--json", "exe:robust_work", "--", robust_target(), "pid-sleep", "30"});
    ASSERT_TRUE(p.wait_for_stdout("pid ", std::chrono::seconds(20)))
        << p.finish(std::chrono::seconds(1)).describe();
    ASSERT_EQ(kill(p.pid(), sig), 0);
    Output r = p.finish(std::chrono::seconds(20));
    ASSERT_FALSE(r.timed_out) << r.describe();
    EXPECT_EQ(r.exit_code(), 128 + sig) << r.describe();
    EXPECT_FALSE(contains(r.out, "slept")) << r.describe();
    Json total = only_total(r);
    EXPECT_EQ(hits_of(total, "exe:robust_work"), 3u) << total.dump();
    EXPECT_EQ(total.value("exit_status", -1), 128 + sig) << total.dump();
  }
}

// A reader that goes away (`| head -1`) ends the session as Ctrl-C would, at once, even while
// the command writes nothing usprobe would print.
TEST(RobustSignals, AClosedOutputPipeInterruptsTheCommandAndUsprobeReports) {
  std::string script =
      std::string("\"$0\" trace -o - --cmd-output null exe:robust_work -- \"$1\" pid-sleep 30 2>") +
      "\"$2\" | head -1";
  e2e::TempDir dir;
  Output r = run({"/bin/sh", "-c", script, e2e::cli(), robust_target(), dir.file("err")},
                 std::chrono::seconds(20));
  ASSERT_FALSE(r.timed_out) << "usprobe kept running after its reader left\n" << r.describe();
  EXPECT_EQ(r.out.substr(0, 3), "PID") << r.describe();
  EXPECT_EQ(e2e::lines(r.out).size(), 1u) << r.describe();
  std::string err = e2e::read_file(dir.file("err"));
  EXPECT_TRUE(contains(err, "usprobe: the output was closed: interrupting the command")) << err;
  // The summary still comes (how many events depends on when head left: perhaps before the agent
  // started in the command, which usprobe then says), and nothing else.
  int summaries = 0;
  for (const std::string &line : e2e::lines(err)) {
    if (rx::regex_match(line, rx::regex("usprobe: [0-9]+ events, 0 lost"))) {
      ++summaries;
      continue;
    }
    EXPECT_TRUE(line == "usprobe: the output was closed: interrupting the command" ||
                line ==
                    "usprobe: warning: the agent never started in the command: nothing was "
                    "probed")
        << err;
  }
  EXPECT_EQ(summaries, 1) << err;
}

// Whether process `pid` has ended: gone, or a zombie nobody reaped yet.
bool ended(pid_t pid) {
  std::string stat = e2e::read_file("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return true;
  size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
}

// usprobe killed with SIGKILL cannot report, but the command must not run on probed with nobody
// reading its region: its watchdog ends it.
TEST(RobustSignals, AfterUsprobeIsKilledTheCommandIsEnded) {
  e2e::Process p(
      {e2e::cli(), "count", "exe:robust_work", "--", robust_target(), "pid-sleep", "60"});
  ASSERT_TRUE(p.wait_for_stdout("\n", std::chrono::seconds(20)))
      << p.finish(std::chrono::seconds(1)).describe();
  // The first line is "pid N" (wait_for_stdout keeps what it read: read it back from /proc).
  pid_t command = -1;
  for (int i = 0; i < 200 && command < 0; ++i) {
    std::string children = e2e::read_file("/proc/" + std::to_string(p.pid()) + "/task/" +
                                          std::to_string(p.pid()) + "/children");
    std::istringstream in(children);
    pid_t pid;
    while (in >> pid)
      // Its children are the command and the watchdog, a fork of usprobe: the command's argv[0]
      // is the target.
      if (e2e::read_file("/proc/" + std::to_string(pid) + "/cmdline").rfind(robust_target(), 0) ==
          0)
        command = pid;
    if (command < 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GT(command, 0) << "the command is not a child of usprobe";
  ASSERT_EQ(kill(p.pid(), SIGKILL), 0);
  // Not p.finish() yet: it kills the process group, the command's too.
  bool gone = false;
  for (int i = 0; i < 1000 && !gone; ++i) {  // 10 s at most
    gone = ended(command);
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!gone) kill(command, SIGKILL);
  EXPECT_TRUE(gone) << "the command ran on for 10 s after usprobe was killed";
  p.finish(std::chrono::seconds(5));
}

// sh -c vforks each command. The shell's own hits (malloc) have put its thread on the counter
// path; a vfork child runs on that thread's TLS, and its hits must still be its own: each child's
// execve is counted under the child's pid, none under the shell's.
TEST(RobustCount, AVforkChildsHitsAreItsOwnWhileItsParentIsOnTheCounterPath) {
  std::string t = robust_target();
  std::string script = t + " getpids 1; " + t + " getpids 1; " + t + " getpids 1";
  Output r = run({e2e::cli(), "count", "--json", "--per-pid", "libc:malloc", "libc:execve", "--",
                  "/bin/sh", "-c", script});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::set<long> printed;
  for (const std::string &line : e2e::lines(r.out))
    if (line.rfind("pid ", 0) == 0) printed.insert(std::stol(line.substr(4)));
  ASSERT_EQ(printed.size(), 3u) << r.describe();
  Json total = only_total(r);
  auto p = e2e::probe_in(total, "libc:execve");
  ASSERT_TRUE(p) << total.dump();
  std::map<long, uint64_t> execs;
  for (auto &[key, value] : (*p)["pids"].items()) execs[std::stol(key)] = value.get<uint64_t>();
  // The three children that ran the target, one execve each (`true` is the shell's own).
  std::map<long, uint64_t> expected;
  for (long pid : printed) expected[pid] = 1;
  EXPECT_EQ(execs, expected) << total.dump();
  EXPECT_GT(hits_of(total, "libc:malloc"), 0u) << total.dump();
}

// Item 15: sh -c vforks each command; the execve in each child is that child's, not its parent's
// nor an earlier child's.
TEST(RobustTrace, EachVforkChildsEventsCarryItsOwnPidAndTid) {
  e2e::TempDir dir;
  std::string t = robust_target();
  std::string script = t + " getpids 1; " + t + " getpids 1; " + t + " getpids 1; true";
  Output r = run({e2e::cli(), "trace", "--json", "-o", dir.file("trace"), "libc:execve", "--",
                  "/bin/sh", "-c", script});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::multiset<int> printed;
  for (const std::string &line : e2e::lines(r.out))
    if (line.rfind("pid ", 0) == 0) printed.insert(std::stoi(line.substr(4)));
  ASSERT_EQ(printed.size(), 3u) << r.describe();
  std::multiset<int> traced;
  for (const Json &event : e2e::json_lines(e2e::read_file(dir.file("trace")))) {
    ASSERT_TRUE(event.is_object()) << event.dump();
    int pid = event.value("pid", -1);
    EXPECT_EQ(event.value("tid", -1), pid) << event.dump();  // each child has one thread
    // The children that ran the target, and the one that ran `true`.
    if (printed.count(pid)) traced.insert(pid);
  }
  EXPECT_EQ(traced, printed) << e2e::read_file(dir.file("trace")) << r.describe();
}

}  // namespace
