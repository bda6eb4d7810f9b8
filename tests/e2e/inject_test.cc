// Attaching to a running process: check_attachable and inject_agent (tools/usprobe/target/) on real
// processes, with a stand-in agent (fake_agent.c). The target (inject_target.c) has threads inside
// read(), nanosleep and a futex wait, and one computing; each injection seizes one of them, and
// the target's own output says whether any system call saw EINTR or slept short, and whether the
// computing thread ever got a wrong result. Refusals are checked for their message and for the
// target running on as before.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "e2e_support.h"
#include "elf/elf_file.h"
#include "target/inject.h"
#include "target/ptrace.h"

namespace usprobe::cli {
namespace {

using namespace std::chrono_literals;

std::string slurp(const std::string &path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A process started with its stdin and stdout on pipes (stderr too, on stdout's pipe).
class Process {
 public:
  explicit Process(std::vector<std::string> argv) {
    int in[2], out[2];
    EXPECT_EQ(::pipe2(in, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::dup2(out[1], 2);
      std::vector<char *> args;
      for (auto &a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    stdin_ = in[1];
    stdout_ = out[0];
  }
  ~Process() {
    if (stdin_ >= 0) ::close(stdin_);
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    ::close(stdout_);
  }
  pid_t pid() const { return pid_; }

  // The next line of output, waiting up to `limit`; "" at the end or on timeout.
  std::string line(std::chrono::milliseconds limit = 5000ms) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      if (size_t nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string l = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return l;
      }
      if (!fill(deadline)) return "";
    }
  }
  // Everything until the process closes its output, then its exit status.
  std::string rest(int *status, std::chrono::milliseconds limit = 10000ms) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (fill(deadline)) {
    }
    *status = -1;
    if (::waitpid(pid_, status, 0) == pid_) reaped_ = true;
    return std::exchange(buffer_, "");
  }
  void write_stdin(const std::string &text) {
    ASSERT_EQ(::write(stdin_, text.data(), text.size()), static_cast<ssize_t>(text.size()));
    ::close(stdin_);
    stdin_ = -1;
  }
  bool running() const {
    std::string stat = slurp(fmt::format("/proc/{}/stat", pid_));
    size_t close = stat.rfind(')');
    return close != std::string::npos && stat[close + 2] != 'Z';
  }

 private:
  bool fill(std::chrono::steady_clock::time_point deadline) {
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{stdout_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      char buf[4096];
      ssize_t n = ::read(stdout_, buf, sizeof buf);
      if (n <= 0) return false;
      buffer_.append(buf, static_cast<size_t>(n));
      return true;
    }
    return false;
  }
  pid_t pid_ = -1;
  int stdin_ = -1, stdout_ = -1;
  bool reaped_ = false;
  std::string buffer_;
};

// The tids in inject_target's first line: "ready main=P sleeper=T waiter=T spinner=T".
struct Tids {
  pid_t main = 0, sleeper = 0, waiter = 0, spinner = 0;
};
Tids parse_ready(const std::string &line) {
  Tids t;
  EXPECT_EQ(std::sscanf(line.c_str(), "ready main=%d sleeper=%d waiter=%d spinner=%d", &t.main,
                        &t.sleeper, &t.waiter, &t.spinner),
            4)
      << line;
  return t;
}

// The system call thread tid is in (its number in /proc/PID/task/TID/syscall), -1 when running.
long syscall_of(pid_t pid, pid_t tid) {
  std::string s = slurp(fmt::format("/proc/{}/task/{}/syscall", pid, tid));
  if (s.starts_with("running")) return -1;
  return std::atol(s.c_str());
}
// Waits until thread tid is blocked in system call `nr`.
void wait_in_syscall(pid_t pid, pid_t tid, long nr) {
  for (int i = 0; i < 500 && syscall_of(pid, tid) != nr; i++) std::this_thread::sleep_for(2ms);
  ASSERT_EQ(syscall_of(pid, tid), nr) << "thread " << tid << " is not in system call " << nr;
}

// What the fake agent wrote into the region at offset 64.
std::string marker_of(int region_fd) {
  char buf[64] = {0};
  EXPECT_GT(::pread(region_fd, buf, sizeof buf - 1, 64), 0);
  return buf;
}

// fill_region for the fake agent: the command at offset 0, room for the marker.
std::function<Result<void>(int)> command(const std::string &what, bool *called = nullptr) {
  return [what, called](int fd) -> Result<void> {
    if (called) *called = true;
    if (::ftruncate(fd, 4096) != 0) return fail(errno, "ftruncate");
    if (::pwrite(fd, what.c_str(), what.size() + 1, 0) < 0) return fail(errno, "pwrite");
    return {};
  };
}

// Lines of /proc/PID/maps and the targets of /proc/PID/fd that name usprobe's memfds, and
// anonymous executable mappings (the bootstrap's page).
std::vector<std::string> leftovers(pid_t pid) {
  std::vector<std::string> out;
  std::istringstream maps(slurp(fmt::format("/proc/{}/maps", pid)));
  std::string line;
  while (std::getline(maps, line)) {
    auto w = e2e::words(line);
    if (w.size() < 6 && w.size() >= 2 && w[1].find('x') != std::string::npos)
      out.push_back("anonymous executable: " + line);
    if (line.find("memfd:usprobe-region") != std::string::npos) out.push_back(line);
  }
  for (const auto &e : std::filesystem::directory_iterator(fmt::format("/proc/{}/fd", pid))) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink(e.path(), ec).string();
    if (target.find("memfd:usprobe") != std::string::npos) out.push_back("fd " + target);
  }
  return out;
}
// Waits (up to 2 s) until the bootstrap has unmapped its page and no usprobe descriptor is left.
std::vector<std::string> settled_leftovers(pid_t pid) {
  std::vector<std::string> left;
  for (int i = 0; i < 200; i++) {
    left = leftovers(pid);
    if (left.empty()) break;
    std::this_thread::sleep_for(10ms);
  }
  return left;
}

std::string error_of(const Result<AttachPoint> &r) {
  return r ? "" : r.error().message;
}

TEST(Inject, ThreadsInSystemCallsCarryOnAndTheSecondAttachFindsTheLoadedAgent) {
  Process target({INJECT_TARGET});
  Tids tids = parse_ready(target.line());
  ASSERT_EQ(tids.main, target.pid());
  wait_in_syscall(target.pid(), tids.sleeper, SYS_clock_nanosleep);
  wait_in_syscall(target.pid(), tids.waiter, SYS_futex);
  wait_in_syscall(target.pid(), tids.main, SYS_read);

  // One injection per thread: the first loads the agent, each later one finds it loaded.
  const pid_t order[] = {tids.sleeper, tids.waiter, tids.spinner, tids.main};
  for (int i = 0; i < 4; i++) {
    SCOPED_TRACE(fmt::format("injection {}, seizing thread {}", i + 1, order[i]));
    auto point = check_attachable(target.pid());
    ASSERT_TRUE(point) << point.error().message;
    EXPECT_EQ(point->agent_attach != 0, i > 0) << "the agent is found loaded after the first";
    point->tid = order[i];
    bool filled = false;
    auto injected = inject_agent(*point, FAKE_AGENT_A, command("ok", &filled));
    ASSERT_TRUE(injected) << injected.error().message;
    EXPECT_TRUE(filled);
    EXPECT_EQ(marker_of(injected->region_fd),
              fmt::format("attached {} by {} build a", i + 1, target.pid()));
    std::printf("attach %d (thread %d): attach_ms %.3f longest_stop_ms %.3f\n", i + 1, order[i],
                injected->attach_ms, injected->longest_stop_ms);
    ::close(injected->region_fd);
    ::close(injected->control_fd);  // the fake agent's watcher says the session ended
    EXPECT_EQ(target.line(), fmt::format("session {} ended", i + 1));
    EXPECT_EQ(settled_leftovers(target.pid()), std::vector<std::string>{});
  }
  // One agent, loaded once.
  std::string maps = slurp(fmt::format("/proc/{}/maps", target.pid()));
  EXPECT_NE(maps.find("memfd:usprobe-agent"), std::string::npos);
  EXPECT_EQ(maps.find(FAKE_AGENT_A), std::string::npos);

  target.write_stdin("hello\n");
  int status = 0;
  std::string out = target.rest(&status);
  EXPECT_NE(out.find("read rc=6 errno=0 data=hello"), std::string::npos) << out;
  EXPECT_NE(out.find("futex rc=0 errno=0 word=1"), std::string::npos) << out;
  EXPECT_NE(out.find("spin rounds=some wrong=0"), std::string::npos) << out;
  EXPECT_NE(out.find("done"), std::string::npos) << out;
  unsigned slept = 0;
  auto at = out.find("nanosleep rc=0 errno=0 slept_ms=");
  ASSERT_NE(at, std::string::npos) << out;
  std::sscanf(out.c_str() + at, "nanosleep rc=0 errno=0 slept_ms=%u", &slept);
  EXPECT_GE(slept, 3000u) << "nanosleep kept its remaining time";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

// A second process handed the region of the first (several -p, one session): the fake agent in
// the second writes its marker into the first's region, and nothing of the passing is left in it.
TEST(Inject, ExistingRegionIsHandedToASecondProcess) {
  Process first({INJECT_TARGET}), second({INJECT_TARGET});
  parse_ready(first.line());
  parse_ready(second.line());
  auto point = check_attachable(first.pid());
  ASSERT_TRUE(point) << point.error().message;
  auto created = inject_agent(*point, FAKE_AGENT_A, command("ok"));
  ASSERT_TRUE(created) << created.error().message;
  EXPECT_EQ(marker_of(created->region_fd), fmt::format("attached 1 by {} build a", first.pid()));

  auto other = check_attachable(second.pid());
  ASSERT_TRUE(other) << other.error().message;
  auto handed = inject_agent(*other, FAKE_AGENT_A, created->region_fd);
  ASSERT_TRUE(handed) << handed.error().message;
  EXPECT_EQ(handed->region_fd, -1);
  std::printf(
      "created: attach_ms %.3f longest_stop_ms %.3f; handed: attach_ms %.3f "
      "longest_stop_ms %.3f\n",
      created->attach_ms, created->longest_stop_ms, handed->attach_ms, handed->longest_stop_ms);
  EXPECT_EQ(marker_of(created->region_fd), fmt::format("attached 1 by {} build a", second.pid()));
  ::close(handed->control_fd);
  EXPECT_EQ(second.line(), "session 1 ended");
  // The fake agent closed the region it was handed; the socketpair went with the injection.
  EXPECT_EQ(settled_leftovers(second.pid()), std::vector<std::string>{});
  for (const auto &e :
       std::filesystem::directory_iterator(fmt::format("/proc/{}/fd", second.pid())))
    EXPECT_EQ(std::filesystem::read_symlink(e.path()).string().find("socket:"), std::string::npos)
        << e.path();
  ::close(created->region_fd);
  ::close(created->control_fd);
  EXPECT_EQ(first.line(), "session 1 ended");
  EXPECT_TRUE(second.running());
}

TEST(Inject, AgentRefusalCarriesItsMessageAndTheSessionDescriptorsGo) {
  Process target({INJECT_TARGET});
  parse_ready(target.line());
  auto point = check_attachable(target.pid());
  ASSERT_TRUE(point) << point.error().message;
  auto injected = inject_agent(*point, FAKE_AGENT_A, command("refuse"));
  ASSERT_FALSE(injected);
  EXPECT_EQ(injected.error().code, EBUSY);
  EXPECT_EQ(injected.error().message,
            fmt::format("pid {} is probed by another usprobe session", target.pid()));
  EXPECT_EQ(settled_leftovers(target.pid()), std::vector<std::string>{});
  EXPECT_TRUE(target.running());
}

TEST(Inject, FailedFillLeavesTheTargetAsItWas) {
  Process target({INJECT_TARGET});
  Tids tids = parse_ready(target.line());
  wait_in_syscall(target.pid(), tids.main, SYS_read);
  auto point = check_attachable(target.pid());
  ASSERT_TRUE(point) << point.error().message;
  std::string maps_before = slurp(fmt::format("/proc/{}/maps", target.pid()));
  auto injected = inject_agent(*point, FAKE_AGENT_A,
                               [](int) -> Result<void> { return fail(ENOSPC, "region: no room"); });
  ASSERT_FALSE(injected);
  EXPECT_EQ(injected.error().message, "region: no room");
  EXPECT_EQ(leftovers(target.pid()), std::vector<std::string>{});
  EXPECT_EQ(slurp(fmt::format("/proc/{}/maps", target.pid())), maps_before);
  target.write_stdin("again\n");
  int status = 0;
  std::string out = target.rest(&status);
  EXPECT_NE(out.find("read rc=6 errno=0 data=again"), std::string::npos) << out;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
}

TEST(Inject, AgentOfAnotherBuildIsRefusedBeforeTouchingTheTarget) {
  Process target({INJECT_TARGET});
  parse_ready(target.line());
  auto point = check_attachable(target.pid());
  ASSERT_TRUE(point) << point.error().message;
  auto first = inject_agent(*point, FAKE_AGENT_A, command("ok"));
  ASSERT_TRUE(first) << first.error().message;
  ::close(first->region_fd);
  ::close(first->control_fd);
  point = check_attachable(target.pid());
  ASSERT_TRUE(point) << point.error().message;
  bool filled = false;
  auto second = inject_agent(*point, FAKE_AGENT_B, command("ok", &filled));
  ASSERT_FALSE(second);
  EXPECT_FALSE(filled);
  EXPECT_NE(second.error().message.find("has an agent of another usprobe build loaded"),
            std::string::npos)
      << second.error().message;
  EXPECT_TRUE(target.running());
}

TEST(Inject, ProcessHeldByAnotherSessionIsRefused) {
  Process target({INJECT_TARGET});
  parse_ready(target.line());
  auto point = check_attachable(target.pid());
  ASSERT_TRUE(point) << point.error().message;
  auto held = inject_agent(*point, FAKE_AGENT_A, command("hold"));
  ASSERT_TRUE(held) << held.error().message;
  // The region mapped by another process too, as the other session's usprobe maps it.
  int mapped[2];
  ASSERT_EQ(::pipe(mapped), 0);
  pid_t holder = ::fork();
  if (holder == 0) {
    void *region = ::mmap(nullptr, 4096, PROT_READ, MAP_SHARED, held->region_fd, 0);
    (void)!::write(mapped[1], region == MAP_FAILED ? "n" : "y", 1);
    ::pause();
    ::_exit(0);
  }
  char answer = 0;
  ASSERT_EQ(::read(mapped[0], &answer, 1), 1);
  ::close(mapped[0]);
  ::close(mapped[1]);
  EXPECT_EQ(answer, 'y');
  std::string comm = slurp("/proc/self/comm");
  comm.pop_back();
  auto again = check_attachable(target.pid());
  ::kill(holder, SIGKILL);
  ::waitpid(holder, nullptr, 0);
  EXPECT_EQ(error_of(again),
            fmt::format("pid {} (inject_target) is probed by another usprobe session (pid {}, {}, "
                        "maps its region): end that session first",
                        target.pid(), holder, comm));
  ::close(held->region_fd);
  ::close(held->control_fd);
}

TEST(Inject, ProcessExitingDuringTheAttachIsReported) {
  Process target({INJECT_TARGET});
  parse_ready(target.line());
  auto point = check_attachable(target.pid());
  ASSERT_TRUE(point) << point.error().message;
  pid_t pid = target.pid();
  auto injected = inject_agent(*point, FAKE_AGENT_A, [pid](int) -> Result<void> {
    ::kill(pid, SIGKILL);  // while usprobe holds one of its threads
    return {};
  });
  ASSERT_FALSE(injected);
  EXPECT_EQ(injected.error().message, fmt::format("pid {} exited during the attach", pid));
}

TEST(Inject, RefusesNoSuchProcess) {
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  EXPECT_EQ(error_of(check_attachable(child)), fmt::format("pid {}: no such process", child));
}

TEST(Inject, RefusesItself) {
  EXPECT_EQ(
      error_of(check_attachable(::getpid())),
      fmt::format("pid {} is usprobe itself: it cannot attach to its own process", ::getpid()));
}

TEST(Inject, RefusesATracedProcessNamingItsTracer) {
  Process strace({"/usr/bin/strace", "-f", "-o", "/dev/null", INJECT_TARGET});
  std::string ready = strace.line();
  if (ready.empty()) GTEST_SKIP() << "strace could not run the target here";
  Tids tids = parse_ready(ready);
  auto r = check_attachable(tids.main);
  EXPECT_EQ(error_of(r), fmt::format("pid {} (inject_target) is already traced by pid {} (strace): "
                                     "a process has one tracer at a time; detach that one first",
                                     tids.main, strace.pid()));
  ::kill(tids.main, SIGKILL);
}

TEST(Inject, RefusesAStaticExecutable) {
  Process target({e2e::static_target(), "sleep", "30"});
  ASSERT_EQ(target.line(), "sleeping");
  auto r = check_attachable(target.pid());
  EXPECT_EQ(
      error_of(r),
      fmt::format("pid {} (e2e_static) runs a statically linked program ({}): it has no "
                  "dynamic linker, so usprobe's agent cannot be loaded into it; only dynamically "
                  "linked programs can be probed",
                  target.pid(), e2e::realpath_of(e2e::static_target())));
  EXPECT_TRUE(target.running());
}

TEST(Inject, WorksInAnotherMountNamespaceThatCannotSeeTheAgent) {
  Process target({INJECT_TARGET, "--hide", BUILD_DIR});
  std::string first = target.line();
  if (first.starts_with("hide failed")) GTEST_SKIP() << "no mount namespace here: " << first;
  parse_ready(first);
  ASSERT_FALSE(std::filesystem::exists(fmt::format("/proc/{}/root{}", target.pid(), FAKE_AGENT_A)))
      << "the target still sees the agent's file";
  auto point = check_attachable(target.pid());
  ASSERT_TRUE(point) << point.error().message;
  auto injected = inject_agent(*point, FAKE_AGENT_A, command("ok"));
  ASSERT_TRUE(injected) << injected.error().message;
  EXPECT_EQ(marker_of(injected->region_fd), fmt::format("attached 1 by {} build a", target.pid()));
  ::close(injected->region_fd);
  ::close(injected->control_fd);
  EXPECT_EQ(target.line(), "session 1 ended");
}

}  // namespace
}  // namespace usprobe::cli

namespace usprobe::cli {
namespace {

// A remote call that never returns (pause(), every signal blocked) is interrupted after its
// timeout and abandoned: the thread goes back into its nanosleep, which still sleeps its full time.
TEST(Inject, CallThatDoesNotReturnIsAbandonedAndTheThreadCarriesOn) {
  Process target({INJECT_TARGET});
  Tids tids = parse_ready(target.line());
  wait_in_syscall(target.pid(), tids.sleeper, SYS_clock_nanosleep);
  auto point = check_attachable(target.pid());
  ASSERT_TRUE(point) << point.error().message;
  auto libc = elf::ElfFile::open(fmt::format("/proc/{}/root{}", target.pid(), point->libc_path));
  ASSERT_TRUE(libc) << libc.error().message;
  auto pause_fn = (*libc)->find_function("pause");
  ASSERT_TRUE(pause_fn);
  auto thread = SeizedThread::seize(target.pid(), tids.sleeper, 2000ms);
  ASSERT_TRUE(thread) << thread.error().message;
  ASSERT_TRUE((*thread)->save());
  auto called = (*thread)->call(point->libc_bias + pause_fn->vaddr, {}, 200ms);
  ASSERT_FALSE(called);
  EXPECT_EQ(called.error().code, ETIMEDOUT);
  EXPECT_NE(called.error().message.find("did not return within 200 ms"), std::string::npos)
      << called.error().message;
  EXPECT_TRUE((*thread)->restore());
  EXPECT_TRUE((*thread)->release());
  thread->reset();
  target.write_stdin("x\n");
  int status = 0;
  std::string out = target.rest(&status);
  unsigned slept = 0;
  auto at = out.find("nanosleep rc=0 errno=0 slept_ms=");
  ASSERT_NE(at, std::string::npos) << out;
  std::sscanf(out.c_str() + at, "nanosleep rc=0 errno=0 slept_ms=%u", &slept);
  EXPECT_GE(slept, 3000u);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
}

}  // namespace
}  // namespace usprobe::cli
