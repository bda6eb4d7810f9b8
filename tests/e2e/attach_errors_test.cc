// `usprobe COMMAND -p PID` as a user meets it: every refusal (exit status 2, one line on stderr
// naming the pid and the reason, nothing on stdout, the process untouched), a process in another
// mount namespace, trace, latency and stacks on a running process, every way a session ends
// (-d, the process's exit, usprobe killed, -i reports on the way), and a process whose thread
// blocks every signal (its probes refused, it left unpatched). The target is attach_target.c; its
// last line, "eintr=0 short=0 ...", says no system call of its threads was disturbed.
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "attach_support.h"
#include "e2e_support.h"

#include "support/text_match.h"

namespace rx = usprobe::test;

namespace {

using namespace e2e;

const std::string kUndisturbed = "eintr=0 short=0 reads=0 spins>0=1";

std::string pid_text(pid_t pid) {
  return std::to_string(pid);
}

// A refusal as the user sees it: status 2, nothing on stdout, one line on stderr that names the
// pid ("pid N") and holds every one of `mentions`.
void expect_refusal(const Output &r, pid_t pid, const std::vector<std::string> &mentions,
                    const std::string &names_pid_as = "pid ") {
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  EXPECT_EQ(r.out, "") << r.describe();
  std::vector<std::string> err = lines(r.err);
  ASSERT_EQ(err.size(), 1u) << r.describe();
  EXPECT_TRUE(starts_with(err[0], "usprobe: ")) << err[0];
  EXPECT_NE(err[0].find(names_pid_as + pid_text(pid)), std::string::npos) << err[0];
  for (const std::string &m : mentions) EXPECT_NE(err[0].find(m), std::string::npos) << err[0];
}

// The target as it was found: the original code at attach_driven, and it still runs.
void expect_untouched(AttachTarget &target) {
  EXPECT_EQ(code_bytes(target.pid(), target.driven().address), target.driven().bytes);
  EXPECT_EQ(::kill(target.pid(), 0), 0) << "the target died";
}

// Its calls still work, then it ends with none of its threads disturbed.
void expect_runs_on(AttachTarget &target, int calls) {
  EXPECT_TRUE(target.call(calls)) << target.process().out_so_far();
  Output last = target.quit();
  ASSERT_EQ(last.exit_code(), 0) << last.describe();
  EXPECT_NE(last.out.find(kUndisturbed), std::string::npos) << last.out;
}

std::vector<std::string> count_cmd(pid_t pid, std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {cli(), "count", "-p", pid_text(pid), "exe:attach_driven"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

// The inodes of the attached sessions' regions that `pid` maps (/memfd:usprobe-region).
std::set<std::string> region_inodes(pid_t pid) {
  std::set<std::string> out;
  for (const std::string &line : lines(read_file("/proc/" + pid_text(pid) + "/maps"))) {
    std::vector<std::string> w = words(line);
    if (w.size() >= 6 && w[5] == "/memfd:usprobe-region") out.insert(w[4]);
  }
  return out;
}

// The build directory (where the CLI and its agent are).
std::string build_dir() {
  return std::filesystem::path(realpath_of(cli())).parent_path().string();
}

// --- Refusals ---------------------------------------------------------------------------------

TEST(AttachRefused, NoSuchProcess) {
  // A pid that was just freed: a child that exited and was reaped.
  pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  ASSERT_GT(gone, 0);
  ::waitpid(gone, nullptr, 0);
  Output r = run(count_cmd(gone), 20s);
  expect_refusal(r, gone, {"no such process"});
}

TEST(AttachRefused, UsprobeItself) {
  // The shell's pid is usprobe's once it execs it.
  Process sh({"/bin/sh", "-c", std::string("exec '") + cli() + "' count -p $$ libc:malloc"});
  pid_t pid = sh.pid();
  Output r = sh.finish(20s);
  expect_refusal(r, pid, {"is usprobe itself", "cannot attach to its own process"});
}

TEST(AttachRefused, AlreadyTracedNamesTheTracer) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  // A tracer of our own: a child that seizes the target and waits; when it is killed, the kernel
  // detaches it (the target never stops: PTRACE_SEIZE does not stop it).
  int ready[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  pid_t tracer = ::fork();
  if (tracer == 0) {
    char ok = ::ptrace(PTRACE_SEIZE, target.pid(), nullptr, nullptr) == 0 ? 'y' : 'n';
    (void)::write(ready[1], &ok, 1);
    for (;;) ::pause();
  }
  ASSERT_GT(tracer, 0);
  ::close(ready[1]);
  char ok = 0;
  ASSERT_EQ(::read(ready[0], &ok, 1), 1);
  ::close(ready[0]);
  Output r;
  if (ok == 'y') r = run(count_cmd(target.pid()), 20s);
  ::kill(tracer, SIGKILL);
  ::waitpid(tracer, nullptr, 0);
  ASSERT_EQ(ok, 'y') << "PTRACE_SEIZE of the target failed";
  expect_refusal(r, target.pid(),
                 {"(attach_target) is already traced by pid " + pid_text(tracer) + " (e2e_tests)",
                  "detach that one first"});
  expect_untouched(target);
  expect_runs_on(target, 10);
}

TEST(AttachRefused, StaticExecutable) {
  Process program({static_target(), "sleep", "20"});
  ASSERT_TRUE(program.wait_for_stdout("sleeping\n", 10s)) << program.finish(1s).describe();
  Output r = run(count_cmd(program.pid()), 20s);
  expect_refusal(r, program.pid(),
                 {"statically linked", realpath_of(static_target()), "dynamically linked"});
  EXPECT_EQ(::kill(program.pid(), 0), 0) << "the program died";
}

TEST(AttachRefused, AnotherUsersProcessWithoutPrivilege) {
  const std::string runuser = "/usr/sbin/runuser";
  if (!file_exists(runuser)) GTEST_SKIP() << "no " << runuser;
  if (::geteuid() != 0) GTEST_SKIP() << "needs root, to run usprobe as nobody";
  Output probe = run({runuser, "-u", "nobody", "--", cli(), "--version"}, 20s);
  if (probe.exit_code() != 0)
    GTEST_SKIP() << "nobody cannot run " << cli() << " (the build directory is not readable by "
                 << "it): " << probe.describe();
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  std::vector<std::string> argv = {runuser, "-u", "nobody", "--"};
  for (const std::string &a : count_cmd(target.pid())) argv.push_back(a);
  Output r = run(argv, 20s);
  expect_refusal(r, target.pid(),
                 {"belongs to uid 0", "usprobe runs as uid", "CAP_SYS_PTRACE",
                  "run usprobe as that user or as root"});
  expect_untouched(target);
  expect_runs_on(target, 10);
}

TEST(AttachRefused, PidAndACommandTogether) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  const std::string marker = dir.file("ran");
  Output r = run(count_cmd(target.pid(), {"--", "/usr/bin/touch", marker}), 20s);
  expect_refusal(
      r, target.pid(),
      {"and a command after '--' (/usr/bin/touch) exclude each other", "not both", "usage:"},
      "count: -p ");
  EXPECT_FALSE(file_exists(marker)) << "the command ran";
  expect_untouched(target);
  expect_runs_on(target, 10);
}

// What only a launched command has (--cmd-output, --signal) and a process of another name (-n)
// are refused before the process is touched.
TEST(AttachRefused, CommandOnlyOptionsAndAnotherNameLeaveTheProcessAlone) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  const std::string output = dir.file("out");
  for (const auto &[extra, mentions] :
       {std::pair<std::vector<std::string>, std::string>{{"--cmd-output", output},
                                                         "count: --cmd-output is for a command"},
        {{"--signal", "TERM"}, "count: --signal is what -d sends a command"}}) {
    Output r = run(count_cmd(target.pid(), extra), 20s);
    EXPECT_EQ(r.exit_code(), 2) << r.describe();
    EXPECT_EQ(r.out, "") << r.describe();
    ASSERT_EQ(lines(r.err).size(), 1u) << r.describe();
    EXPECT_NE(r.err.find(mentions), std::string::npos) << r.err;
  }
  EXPECT_FALSE(file_exists(output));
  Output r = run(count_cmd(target.pid(), {"-n", "postgres"}), 20s);
  expect_refusal(r, target.pid(), {"-n postgres: ", "is named 'attach_target'"});
  expect_untouched(target);
  expect_runs_on(target, 10);
}

TEST(AttachRefused, ASecondSessionNamesTheFirstUsprobe) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  const Driven &d = target.driven();
  Process first({cli(), "count", "--json", "-p", pid_text(target.pid()), "exe:attach_driven"});
  ASSERT_TRUE(wait_patched(target.pid(), d, first, 20s)) << end_session(first).describe();
  Output second = run(count_cmd(target.pid()), 20s);
  expect_refusal(
      second, target.pid(),
      {"is probed by another usprobe session (usprobe pid " + pid_text(first.pid()) + ")",
       "end that session first"});
  // The first session goes on, as it was: its probe in place, and every call counted.
  EXPECT_NE(code_bytes(target.pid(), d.address), d.bytes);
  ASSERT_TRUE(target.call(123));
  Output r = end_session(first);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(hits_of(only_total(r), "exe:attach_driven"), 123u) << r.out;
  expect_untouched(target);
  expect_runs_on(target, 10);
}

// --- Another mount namespace ------------------------------------------------------------------

TEST(AttachNamespaces, AProcessThatCannotSeeTheBuildDirectoryIsCountedExactly) {
  if (::geteuid() != 0 || run({"/usr/bin/unshare", "-m", "/bin/true"}, 20s).exit_code() != 0)
    GTEST_SKIP() << "unshare -m is not available";
  TempDir dir;
  // The program is copied out of the build directory, which a tmpfs then hides from it: neither
  // the CLI's nor the agent's path exists where the target looks.
  const std::string copy = dir.file("attach_target");
  std::filesystem::copy_file(ATTACH_TARGET, copy);
  const std::string build = build_dir();
  AttachTarget target(dir, copy,
                      {"/usr/bin/unshare", "-m", "/bin/sh", "-c",
                       R"(mount -t tmpfs usprobe-test "$1" && shift && exec "$@")", "sh", build});
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  ASSERT_FALSE(file_exists("/proc/" + pid_text(target.pid()) + "/root" + build + "/usprobe"))
      << "the target still sees " << build;
  Process usprobe({cli(), "count", "--json", "-p", pid_text(target.pid()), "exe:attach_driven"});
  ASSERT_TRUE(wait_patched(target.pid(), target.driven(), usprobe, 20s))
      << end_session(usprobe).describe();
  ASSERT_TRUE(target.call(321));
  Output r = end_session(usprobe);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(hits_of(only_total(r), "exe:attach_driven"), 321u) << r.out;
  expect_untouched(target);
  expect_runs_on(target, 10);
}

// --- trace, latency, stacks -------------------------------------------------------------------

TEST(AttachCommands, TracePrintsOneEventPerCallWithItsArgument) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  Process usprobe(
      {cli(), "trace", "--json", "-p", pid_text(target.pid()), R"(exe:attach_driven "%d", arg0)"});
  ASSERT_TRUE(wait_patched(target.pid(), target.driven(), usprobe, 20s))
      << end_session(usprobe).describe();
  ASSERT_TRUE(target.call(40));
  Output r = end_session(usprobe);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> events = json_lines(r.out);
  ASSERT_EQ(events.size(), 40u) << r.describe() << r.out;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].value("message", ""), std::to_string(i)) << events[i].dump();
    EXPECT_EQ(events[i].value("pid", 0), target.pid()) << events[i].dump();
  }
  expect_untouched(target);
  expect_runs_on(target, 10);
}

TEST(AttachCommands, LatencyTimesEveryCall) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  Process usprobe({cli(), "latency", "--json", "-p", pid_text(target.pid()), "exe:attach_driven"});
  ASSERT_TRUE(wait_patched(target.pid(), target.driven(), usprobe, 20s))
      << end_session(usprobe).describe();
  ASSERT_TRUE(target.call(250));
  Output r = end_session(usprobe);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> all = json_lines(r.out);
  ASSERT_EQ(all.size(), 1u) << r.out;
  EXPECT_EQ(all[0].value("probe", ""), "exe:attach_driven") << all[0].dump();
  EXPECT_EQ(all[0].value("count", 0u), 250u) << all[0].dump();
  EXPECT_EQ(all[0].value("missed", 1u), 0u) << all[0].dump();
  expect_untouched(target);
  expect_runs_on(target, 10);
}

// Sessions that end while a thread calls the timed function without pause: each end unmaps the
// session's region while that thread may be in the middle of timing a call (the engine's return
// code counts into it). Five sessions in a row time the spinner's calls, and the main thread's,
// which it makes as told (so that each session has timed calls however busy the machine); the
// process runs on undisturbed, and its code is the file's again.
TEST(AttachCommands, LatencySessionsEndingUnderASpinningThreadLeaveItRunning) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  for (int session = 0; session < 5; ++session) {
    SCOPED_TRACE("session " + std::to_string(session));
    Process usprobe({cli(), "latency", "--json", "-p", pid_text(target.pid()), "exe:attach_spin",
                     "exe:attach_driven"});
    ASSERT_TRUE(wait_patched(target.pid(), target.driven(), usprobe, 20s))
        << end_session(usprobe).describe();
    ASSERT_TRUE(target.call(50));
    Output r = end_session(usprobe);
    ASSERT_EQ(r.exit_code(), 0) << r.describe();
    std::vector<Json> all = json_lines(r.out);
    ASSERT_EQ(all.size(), 2u) << r.out;
    for (const Json &probe : all) {
      if (probe.value("probe", "") == "exe:attach_driven") {
        EXPECT_EQ(probe.value("count", 0u), 50u) << probe.dump();
      }
    }
  }
  expect_untouched(target);
  expect_runs_on(target, 10);
}

// The same with `count` and return probes, which the return path counts into the region: each
// session's end unmaps it while the spinner may be between a return's load of the word and its
// increment.
TEST(AttachCommands, ReturnCountSessionsEndingUnderASpinningThreadLeaveItRunning) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  for (int session = 0; session < 5; ++session) {
    SCOPED_TRACE("session " + std::to_string(session));
    // The main thread's calls, made as told, give each session returns to count however busy
    // the machine.
    Process usprobe({cli(), "count", "--json", "-p", pid_text(target.pid()),
                     "uretprobe:exe:attach_spin", "uretprobe:exe:attach_driven"});
    ASSERT_TRUE(wait_patched(target.pid(), target.driven(), usprobe, 20s))
        << end_session(usprobe).describe();
    ASSERT_TRUE(target.call(50));
    Output r = end_session(usprobe);
    ASSERT_EQ(r.exit_code(), 0) << r.describe();
    EXPECT_EQ(hits_of(only_total(r), "uretprobe:exe:attach_driven"), 50u) << r.out;
  }
  expect_untouched(target);
  expect_runs_on(target, 10);
}

TEST(AttachCommands, StacksCountsEveryCallWithItsCaller) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  Process usprobe({cli(), "stacks", "-p", pid_text(target.pid()), "exe:attach_driven"});
  ASSERT_TRUE(wait_patched(target.pid(), target.driven(), usprobe, 20s))
      << end_session(usprobe).describe();
  ASSERT_TRUE(target.call(30));
  Output r = end_session(usprobe);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("exe:attach_driven: 30 stacks, 1 distinct\n"), std::string::npos) << r.out;
  // Innermost first: the probed function, then main, which called it.
  EXPECT_NE(r.out.find("\n    attach_driven\n    main\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n    - attach_target\n        30\n"), std::string::npos) << r.out;
  expect_untouched(target);
  expect_runs_on(target, 10);
}

// --- The end of a session ---------------------------------------------------------------------

TEST(AttachEnds, DurationDetachesAndSaysSo) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  Output r = run(count_cmd(target.pid(), {"-d", "1"}), 30s);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_TRUE(rx::regex_search(r.out, rx::regex("(^|\n)Total over [0-9.]+ s \\(detached from pid " +
                                                pid_text(target.pid()) + "\\):\n")))
      << r.out;
  EXPECT_EQ(r.err, "") << r.describe();
  expect_untouched(target);
  expect_runs_on(target, 10);
}

// A child forked during the session that execs another program carries no probe any more (its
// new image has no agent) and never says it removed them: the session's end does not wait for it.
TEST(AttachEnds, AChildThatExecedIsNotWaitedFor) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  Process usprobe(count_cmd(target.pid()));
  ASSERT_TRUE(wait_patched(target.pid(), target.driven(), usprobe, 20s))
      << end_session(usprobe).describe();
  target.send("exec");
  ASSERT_TRUE(target.process().wait_for_stdout("exec'd ", 10s));
  rx::smatch m;
  const std::string out = target.process().out_so_far();
  ASSERT_TRUE(rx::regex_search(out, m, rx::regex("exec'd ([0-9]+)"))) << out;
  pid_t child = static_cast<pid_t>(std::stol(m[1]));
  // The child's agent ran its fork handler (a record of its own) before the exec.
  for (int i = 0; i < 500 && read_file("/proc/" + pid_text(child) + "/comm") != "sleep\n"; ++i)
    std::this_thread::sleep_for(2ms);
  ASSERT_TRUE(target.call(40));
  Output r = end_session(usprobe);
  ::kill(child, SIGKILL);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.err.find("did not confirm"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("detached from pid " + pid_text(target.pid())), std::string::npos) << r.out;
  expect_untouched(target);
  expect_runs_on(target, 10);
}

TEST(AttachEnds, TheProcessExitingEndsTheSession) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  Process usprobe(count_cmd(target.pid()));
  ASSERT_TRUE(wait_patched(target.pid(), target.driven(), usprobe, 20s))
      << end_session(usprobe).describe();
  ASSERT_TRUE(target.call(300));
  Output last = target.quit();
  ASSERT_EQ(last.exit_code(), 0) << last.describe();
  EXPECT_NE(last.out.find(kUndisturbed), std::string::npos) << last.out;
  Output r = usprobe.finish(30s);  // no signal: it ends by itself
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_TRUE(rx::regex_search(r.out, rx::regex("(^|\n)Total over [0-9.]+ s \\(pid " +
                                                pid_text(target.pid()) + " exited\\):\n")))
      << r.out;
  EXPECT_TRUE(rx::regex_search(r.out, rx::regex("\nexe:attach_driven +300 +0\n"))) << r.out;
  EXPECT_EQ(r.err, "") << r.describe();
}

TEST(AttachEnds, UsprobeKilledLeavesTheProcessUnpatchedAndFreeForAnotherSession) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  const Driven &d = target.driven();
  {
    Process usprobe(count_cmd(target.pid()));
    ASSERT_TRUE(wait_patched(target.pid(), d, usprobe, 20s)) << end_session(usprobe).describe();
    ASSERT_TRUE(target.call(50));
    ::kill(usprobe.pid(), SIGKILL);
    Output r = usprobe.finish(10s);
    ASSERT_FALSE(r.exited()) << r.describe();
  }
  // The agent reads the end of the session's pipe and removes the probes itself.
  EXPECT_TRUE(wait_restored(target.pid(), d, 10s)) << code_bytes(target.pid(), d.address);
  // Nothing of the killed session holds the process: a new one, started at once (while the agent
  // may still be unmapping the old region), attaches and counts exactly.
  Process again({cli(), "count", "--json", "-p", pid_text(target.pid()), "exe:attach_driven"});
  ASSERT_TRUE(wait_patched(target.pid(), d, again, 20s)) << end_session(again).describe();
  ASSERT_TRUE(target.call(70));
  Output r = end_session(again);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(hits_of(only_total(r), "exe:attach_driven"), 70u) << r.out;
  expect_untouched(target);
  expect_runs_on(target, 10);
}

TEST(AttachEnds, ASessionStartedRightAfterAKilledOneWaitsForItsProbesToGo) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  const Driven &d = target.driven();
  Process killed(count_cmd(target.pid()));
  ASSERT_TRUE(wait_patched(target.pid(), d, killed, 20s)) << end_session(killed).describe();
  std::set<std::string> old_region = region_inodes(target.pid());
  ASSERT_EQ(old_region.size(), 1u);
  ::kill(killed.pid(), SIGKILL);
  // Dead (its memory released), not yet reaped.
  for (int i = 0; i < 2000 && !exited(killed); ++i) std::this_thread::sleep_for(1ms);
  // At once: the killed session's agent is still removing its probes and its region. The new
  // session is not refused for it ("probed by another usprobe session" with no usprobe left).
  Process again({cli(), "count", "--json", "-p", pid_text(target.pid()), "exe:attach_driven"});
  killed.finish(10s);
  // The new session's probe is in place once the old region is gone (the agent unmaps it after
  // removing the old probe), a new one is mapped, and the code is patched.
  bool in_place = false;
  for (auto until = std::chrono::steady_clock::now() + 20s;
       !in_place && std::chrono::steady_clock::now() < until && !exited(again);) {
    std::set<std::string> now = region_inodes(target.pid());
    in_place =
        now.size() == 1 && now != old_region && code_bytes(target.pid(), d.address) != d.bytes;
    if (!in_place) std::this_thread::sleep_for(5ms);
  }
  ASSERT_TRUE(in_place) << end_session(again).describe();
  ASSERT_TRUE(target.call(90));
  Output r = end_session(again);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(hits_of(only_total(r), "exe:attach_driven"), 90u) << r.out;
  expect_untouched(target);
  expect_runs_on(target, 10);
}

TEST(AttachEnds, IntervalReportsWhileAttachedAddUpToTheTotal) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  Process usprobe(count_cmd(target.pid(), {"--json", "-i", "0.2"}));
  ASSERT_TRUE(wait_patched(target.pid(), target.driven(), usprobe, 20s))
      << end_session(usprobe).describe();
  ASSERT_TRUE(target.call(100));
  // Waits (bounded) for the intervals to have reported all 100 calls.
  auto interval_sum = [&](const std::string &out) {
    uint64_t sum = 0;
    for (const Json &j : reports(out))
      if (j.value("type", "") == "interval")
        if (auto p = probe_in(j, "exe:attach_driven")) sum += p->value("hits", uint64_t{0});
    return sum;
  };
  for (int i = 0; i < 200 && interval_sum(usprobe.out_so_far()) < 100; ++i)
    usprobe.wait_for_stdout("\nnever printed\n", 50ms);
  Output r = end_session(usprobe);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> all = reports_of(r);
  ASSERT_GE(all.size(), 2u) << r.out;
  for (size_t i = 0; i + 1 < all.size(); ++i)
    EXPECT_EQ(all[i].value("type", ""), "interval") << all[i].dump();
  EXPECT_EQ(all.back().value("type", ""), "total") << all.back().dump();
  EXPECT_EQ(interval_sum(r.out), 100u) << r.out;
  EXPECT_EQ(hits_of(all.back(), "exe:attach_driven"), 100u) << r.out;
  expect_untouched(target);
  expect_runs_on(target, 10);
}

}  // namespace
