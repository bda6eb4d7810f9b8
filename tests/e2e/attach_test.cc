// `usprobe COMMAND -p PID`: attaching to a process that runs already (attach_target.c), counting
// exactly what it does from the moment the probe is in place, and leaving it as it was found: the
// original code bytes back, in it and in the child it forked during the session, no system call
// of any of its threads interrupted, and a second session working as the first did.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "attach_support.h"
#include "e2e_support.h"

#include "support/text_match.h"

namespace rx = usprobe::test;

namespace {

using namespace e2e;

// The pid of the child the target forked, from its "child PID called N" line.
pid_t child_pid(const std::string &out) {
  rx::smatch m;
  if (!rx::regex_search(out, m, rx::regex(R"(child ([0-9]+) called)"))) return -1;
  return static_cast<pid_t>(std::stol(m[1]));
}

// The signal mask (SigBlk) of every thread of the target, by tid, from /proc/PID/task/*/status.
std::map<std::string, uint64_t> thread_masks(pid_t pid) {
  std::map<std::string, uint64_t> out;
  std::string task = "/proc/" + std::to_string(pid) + "/task";
  for (const auto &entry : std::filesystem::directory_iterator(task))
    for (const std::string &line : lines(read_file(entry.path().string() + "/status")))
      if (starts_with(line, "SigBlk:"))
        out[entry.path().filename().string()] = std::stoull(line.substr(7), nullptr, 16);
  return out;
}

// The masks of the threads in `before`, as they are now in `pid` (threads the agent added left
// out).
std::map<std::string, uint64_t> masks_of(pid_t pid, const std::map<std::string, uint64_t> &before) {
  std::map<std::string, uint64_t> now = thread_masks(pid), out;
  for (const auto &[tid, mask] : before)
    if (now.count(tid)) out[tid] = now[tid];
  return out;
}

// Two sessions on one attach_target (with a thread that blocks every signal when `blocker`: "1"
// sleeps, "spin" runs).
void attach_twice(const char *blocker) {
  TempDir dir;
  if (blocker) ::setenv("ATTACH_TARGET_BLOCKER", blocker, 1);
  AttachTarget target(dir);
  ::unsetenv("ATTACH_TARGET_BLOCKER");
  const std::map<std::string, uint64_t> masks = thread_masks(target.pid());
  EXPECT_EQ(std::count_if(masks.begin(), masks.end(),
                          [](const auto &m) { return (m.second & (1ull << (SIGTRAP - 1))) != 0; }),
            blocker ? 1 : 0);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  const Driven &d = target.driven();
  pid_t child = -1;
  // The number the program's next open() gets: usprobe's descriptors in it (the region, the
  // session's pipe, /proc/self/mem) sit near the top, out of its way.
  auto next_fd = [&](int n) {
    target.send("open " + std::to_string(n));
    std::string want = "open " + std::to_string(n) + " fd=";
    if (!target.process().wait_for_stdout(want, 10s)) return std::string("?");
    const std::string &out = target.process().out_so_far();
    size_t at = out.find(want) + want.size();
    return out.substr(at, out.find('\n', at) - at);
  };
  const std::string unprobed_fd = next_fd(0);
  // The program's SIGUSR2 handler, installed before any session, stays as it is: it runs, and it
  // is what sigaction gives back and what the kernel has, before, during and after the sessions
  // (the program's calls reach libc's sigaction, not the agent's: signal_guard.h). What the
  // target prints.
  int handler_runs = 0;
  auto handler_untouched = [&] {
    const std::string n = std::to_string(++handler_runs);
    target.send("handler " + n);
    std::string want = "handler " + n + " ";
    if (!target.process().wait_for_stdout(want, 10s)) return std::string("?");
    const std::string &out = target.process().out_so_far();
    size_t at = out.find(want) + want.size();
    return out.substr(at, out.find('\n', at) - at);
  };
  auto untouched = [&] { return "ran=" + std::to_string(handler_runs) + " own=1 kernel=1"; };
  std::string seen = handler_untouched();
  EXPECT_EQ(seen, untouched());
  // Two sessions, one after the other, on the same process: the second finds the process as the
  // first left it.
  for (int session = 1; session <= 2; ++session) {
    SCOPED_TRACE("session " + std::to_string(session));
    const int calls = session == 1 ? 1000 : 600;
    Process usprobe({cli(), "count", "--json", "-v", "-p", std::to_string(target.pid()),
                     "exe:attach_driven", "exe:attach_spin"});
    ASSERT_TRUE(wait_patched(target.pid(), d, usprobe, 20s)) << end_session(usprobe).describe();
    // The code changes at the patch's first byte, while the attach still runs (its thread rounds
    // and its reads of /proc/self/maps open descriptors for a moment, the lowest free): the
    // program's next descriptor is compared once the agent has said it is done.
    ASSERT_TRUE(usprobe.wait_for_stderr("probes attached in", 20s))
        << end_session(usprobe).describe();
    EXPECT_EQ(next_fd(session), unprobed_fd) << "the program's own descriptors moved";
    seen = handler_untouched();
    EXPECT_EQ(seen, untouched());
    // The probed files came prepared by the CLI (protocol/prepared.h): the agent maps the memfd
    // it was handed and keeps no descriptor of it.
    const std::string proc = "/proc/" + std::to_string(target.pid());
    EXPECT_NE(read_file(proc + "/maps").find("/memfd:usprobe-prepared"), std::string::npos);
    for (const auto &entry : std::filesystem::directory_iterator(proc + "/fd")) {
      std::error_code ec;
      EXPECT_EQ(std::filesystem::read_symlink(entry.path(), ec).string().find("usprobe-prepared"),
                std::string::npos)
          << entry.path();
    }
    target.poke();  // the reader thread's read() returns once, mid-session
    target.send("call " + std::to_string(calls));
    ASSERT_TRUE(target.process().wait_for_stdout("called " + std::to_string(calls), 10s));
    if (session == 1) {
      target.send("fork 250");
      ASSERT_TRUE(target.process().wait_for_stdout("called 250", 10s));
      child = child_pid(target.process().out_so_far());
      ASSERT_GT(child, 0);
      EXPECT_NE(code_bytes(child, d.address), d.bytes) << "the child carries the probe";
    }
    Output r = end_session(usprobe);
    ASSERT_EQ(r.exit_code(), 0) << r.describe();
    Json total = only_total(r);
    EXPECT_EQ(hits_of(total, "exe:attach_driven"), session == 1 ? 1250u : 600u) << r.out;
    EXPECT_GT(hits_of(total, "exe:attach_spin"), 0u) << r.out;
    // Both probes on jumps: every thread answered the round (-v: "2 probes attached in N ms (0
    // int3)").
    EXPECT_TRUE(rx::regex_search(r.err, rx::regex(R"(2 probes attached in [0-9.]+ ms \(0 int3\))")))
        << r.err;
    // Every process that carried the probes has its original code again, and still runs.
    EXPECT_EQ(code_bytes(target.pid(), d.address), d.bytes);
    if (session == 1) {
      EXPECT_EQ(code_bytes(child, d.address), d.bytes) << "the child forked during the session";
      EXPECT_EQ(::kill(child, 0), 0);
    }
    // usprobe unblocked SIGTRAP and its round's signal in the blocking thread for the session:
    // every thread's mask is what it was. (A thread that answered the last round may still be on
    // the way out of the handler, with its mask, when a loaded machine preempts it there: read
    // again for a moment until it is back.)
    std::map<std::string, uint64_t> after = masks_of(target.pid(), masks);
    for (int i = 0; i < 100 && after != masks; ++i) {
      std::this_thread::sleep_for(10ms);
      after = masks_of(target.pid(), masks);
    }
    EXPECT_EQ(after, masks);
  }
  if (child > 0) ::kill(child, SIGKILL);
  seen = handler_untouched();
  EXPECT_EQ(seen, untouched());
  Output last = target.quit();
  ASSERT_EQ(last.exit_code(), 0) << last.describe();
  EXPECT_NE(last.out.find("eintr=0 short=0 reads=2 spins>0=1"), std::string::npos) << last.out;
}

TEST(Attach, CountsExactlyAndLeavesTheProcessAndItsChildAsTheyWere) {
  attach_twice(nullptr);
}

// A thread that blocks every signal can neither answer the engine's signal round nor survive an
// int3: usprobe unblocks SIGTRAP in it through ptrace for the session, and the round leaves it
// alone while it sleeps in a system call.
TEST(Attach, AThreadThatBlocksEverySignalIsProbedAround) {
  attach_twice("1");
}

// Such a thread that runs user code all the time (liblzma's workers): the round reaches it only
// because its signal is unblocked for the session, so the probes take jumps, not int3s.
TEST(Attach, ARunningThreadThatBlocksEverySignalIsProbedAround) {
  attach_twice("spin");
}

// The hits of `probe` per pid in a --per-pid report.
std::map<long, uint64_t> per_pid(const Json &report, std::string_view probe) {
  std::map<long, uint64_t> out;
  auto p = probe_in(report, probe);
  if (!p || !p->contains("pids")) return out;
  for (const auto &[pid, hits] : (*p)["pids"].items()) out[std::stol(pid)] = hits.get<uint64_t>();
  return out;
}

// Two processes in one session (-p twice): one region, each process's calls counted under its
// pid, exactly, and both left with their original code.
TEST(Attach, SeveralProcessesShareOneSession) {
  TempDir dir_a, dir_b;
  AttachTarget a(dir_a), b(dir_b);
  ASSERT_TRUE(a.ready()) << a.process().finish(1s).describe();
  ASSERT_TRUE(b.ready()) << b.process().finish(1s).describe();
  Process usprobe({cli(), "count", "--json", "--per-pid", "-p", std::to_string(a.pid()), "-p",
                   std::to_string(b.pid()), "exe:attach_driven"});
  ASSERT_TRUE(wait_patched(a.pid(), a.driven(), usprobe, 20s)) << end_session(usprobe).describe();
  ASSERT_TRUE(wait_patched(b.pid(), b.driven(), usprobe, 20s)) << end_session(usprobe).describe();
  a.send("call 700");
  b.send("call 300");
  ASSERT_TRUE(a.process().wait_for_stdout("called 700", 10s));
  ASSERT_TRUE(b.process().wait_for_stdout("called 300", 10s));
  Output r = end_session(usprobe);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Json total = only_total(r);
  EXPECT_EQ(hits_of(total, "exe:attach_driven"), 1000u) << r.out;
  EXPECT_EQ(per_pid(total, "exe:attach_driven"),
            (std::map<long, uint64_t>{{a.pid(), 700}, {b.pid(), 300}}))
      << r.out;
  EXPECT_EQ(code_bytes(a.pid(), a.driven().address), a.driven().bytes);
  EXPECT_EQ(code_bytes(b.pid(), b.driven().address), b.driven().bytes);
  for (AttachTarget *t : {&a, &b}) {
    Output last = t->quit();
    ASSERT_EQ(last.exit_code(), 0) << last.describe();
    EXPECT_NE(last.out.find("eintr=0 short=0"), std::string::npos) << last.out;
  }
}

// The second process cannot be attached (it may open no descriptor: its RLIMIT_NOFILE is below
// the ones it has open): the error names it, and the first, attached already, is left as it was.
TEST(Attach, AFailureWithTheSecondProcessDetachesTheFirst) {
  TempDir dir_a, dir_b;
  AttachTarget a(dir_a), b(dir_b);
  ASSERT_TRUE(a.ready()) << a.process().finish(1s).describe();
  ASSERT_TRUE(b.ready()) << b.process().finish(1s).describe();
  rlimit before{};
  ASSERT_EQ(::prlimit(b.pid(), RLIMIT_NOFILE, nullptr, &before), 0);
  rlimit none{3, before.rlim_max};  // the soft limit: no capability needed to raise it again
  ASSERT_EQ(::prlimit(b.pid(), RLIMIT_NOFILE, &none, nullptr), 0);
  Output r = run({cli(), "count", "--json", "-p", std::to_string(a.pid()), "-p",
                  std::to_string(b.pid()), "exe:attach_driven"},
                 60s);
  ASSERT_EQ(::prlimit(b.pid(), RLIMIT_NOFILE, &before, nullptr), 0)
      << std::strerror(errno) << r.describe() << b.process().finish(1s).describe();
  EXPECT_NE(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.err.find(fmt::format("pid {} (attach_target)", b.pid())), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("Too many open files"), std::string::npos) << r.err;
  // The first process was attached (the agent stays loaded, dormant) and detached (its region is
  // unmapped, its code is back); the second was never patched.
  std::string maps_a = read_file("/proc/" + std::to_string(a.pid()) + "/maps");
  EXPECT_NE(maps_a.find("memfd:usprobe-agent"), std::string::npos) << maps_a;
  EXPECT_EQ(maps_a.find("memfd:usprobe-region"), std::string::npos) << maps_a;
  EXPECT_EQ(code_bytes(a.pid(), a.driven().address), a.driven().bytes);
  EXPECT_EQ(code_bytes(b.pid(), b.driven().address), b.driven().bytes);
  // And a session on it works as before.
  Process usprobe({cli(), "count", "--json", "-p", std::to_string(a.pid()), "exe:attach_driven"});
  ASSERT_TRUE(wait_patched(a.pid(), a.driven(), usprobe, 20s)) << end_session(usprobe).describe();
  a.send("call 5");
  ASSERT_TRUE(a.process().wait_for_stdout("called 5", 10s));
  Output again = end_session(usprobe);
  ASSERT_EQ(again.exit_code(), 0) << again.describe();
  EXPECT_EQ(hits_of(only_total(again), "exe:attach_driven"), 5u) << again.out;
  for (AttachTarget *t : {&a, &b}) {
    Output last = t->quit();
    ASSERT_EQ(last.exit_code(), 0) << last.describe();
    EXPECT_NE(last.out.find("eintr=0 short=0"), std::string::npos) << last.out;
  }
}

}  // namespace
