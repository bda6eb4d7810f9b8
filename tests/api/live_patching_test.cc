// Live patching where threads stand in the code being patched: a thread stopped inside a window
// (by a page fault it waits on in the kernel, or in a signal handler that spins, sleeps or blocks
// every signal) while the probe is attached resumes intact; an instruction probe's saved state
// does not depend on the stack below it being zero; a forked child patches its own code, not its
// parent's.
//
// lp_fault_in_window holds a thread inside its window on purpose: a page fault at
// lp_fault_in_window+1 (inside its window) keeps the thread in the kernel (userfaultfd) or in its
// SIGSEGV handler while the probe is attached. Each scenario that may crash runs in a fresh
// process, with a deadline. Callers running while the probe is attached and detached thousands of
// times are tortured in tests/stress/live_patching_test.cc.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/child_process.h"
#include "support/code_bytes.h"
#include "support/live_target.h"
#include "support/watchdog.h"
#include "targets/targets.h"
#include "usprobe/usprobe.h"

// lp_fault_in_window(p) returns *p + 1, with exact bytes (a probe target in this executable):
//   +0 push %rbp (1); +1 mov (%rdi),%eax (2); +3 add $1,%eax (3); +6 pop %rbp; +7 ret
// A jump at the entry covers push, mov and add: a thread can be stopped at +1 or +3 inside it.
asm(R"(
  .text
  .globl lp_fault_in_window
  .type lp_fault_in_window, @function
  .p2align 4
lp_fault_in_window:
  push %rbp
  mov (%rdi), %eax
  add $1, %eax
  pop %rbp
  ret
  .size lp_fault_in_window, .-lp_fault_in_window
)");
extern "C" int lp_fault_in_window(const int *p);

namespace {
constexpr const char *kChildEnv = "USPROBE_LIVE_PATCHING_CHILD";
std::string run_in_child(const char *name, std::chrono::seconds limit) {
  return usprobe::test::run_in_child(kChildEnv, name, limit);
}
using usprobe::test::strf;

using CodeCopy = usprobe::test::CodeBytes;  // a function's first 16 bytes

using Target = usprobe::test::LiveTarget;
using usprobe::test::counted_mid_target;

// Scenarios that may crash run in a fresh process: this test binary started again with
// USPROBE_LIVE_PATCHING_CHILD=<name>, which a static initializer (at the end of this file) turns
// into "run that scenario, exit with its status" before GoogleTest starts. A fresh process, not a
// fork of this one: whatever this process did before (usprobe state included) cannot leak in.
// (tests/support/child_process.h; run_in_child() above names this file's variable.)

// Leaves non-zero bytes in the 16 KiB of stack below the caller's frame, as a signal frame, a
// deep call or any earlier work does in a real program.
__attribute__((noinline)) void dirty_the_stack() {
  volatile unsigned char junk[16384];
  for (size_t i = 0; i < sizeof junk; ++i) junk[i] = static_cast<unsigned char>(0xa5 ^ i);
}

// A consumer with a callback: its hits take the path that saves the whole extended state (a probe
// with only the built-in counter may skip it).
std::atomic<int> g_dirty_stack_callbacks{0};
void on_dirty_stack_hit(usprobe_hit *, void *) {
  g_dirty_stack_callbacks.fetch_add(1, std::memory_order_relaxed);
}

int probe_mid_site_over_dirty_stack(unsigned flags) {
  const Target t = counted_mid_target();
  usprobe_link *link = nullptr;
  const usprobe_consumer consumer{on_dirty_stack_hit, nullptr, nullptr};
  if (usprobe_attach_ex(t.location.c_str(), &consumer, flags, &link) < 0) {
    std::fprintf(stderr, "attach %s: %s\n", t.location.c_str(), usprobe_last_error());
    return 3;
  }
  int bad = 0;
  for (long i = 0; i < 100; ++i) {
    dirty_the_stack();
    if (tgt_counted_mid(i) != i + 1) ++bad;
  }
  uint64_t hits = usprobe_link_hits(link);
  usprobe_detach(link);
  std::printf("%s%s: 100 calls over a dirty stack, %" PRIu64 " hits, %d callbacks, %d wrong\n",
              t.name, flags & USPROBE_FORCE_INT3 ? " (int3 path)" : "", hits,
              g_dirty_stack_callbacks.load(), bad);
  return bad == 0 && hits == 100 && g_dirty_stack_callbacks.load() == 100 ? 0 : 1;
}

// An instruction probe (not at a function entry) saves the whole extended state (xsave) around
// its callbacks. Its save area lies on the probed thread's stack, below the red zone, where earlier
// work has left arbitrary bytes: the probe must not depend on that memory being zero.
TEST(LivePatching, InstructionSiteProbeSurvivesDirtyStack) {
  EXPECT_EQ(run_in_child("dirty-stack-jump", std::chrono::seconds(30)), "") << "jump path";
  EXPECT_EQ(run_in_child("dirty-stack-int3", std::chrono::seconds(30)), "") << "int3 path";
}

// A thread that a signal interrupted inside a window, and that is still in the handler while
// the window is patched, resumes inside the window when the handler returns. The signal round sees
// only the handler's context (or, when the handler sleeps in a system call, does not signal the
// thread at all): the interrupted context, one signal frame further up, must be found too, or the
// jump's tail is executed as instructions. Runtimes do this all the time: guard pages, GC
// safepoint polls and lazily mapped memory all stop threads in SIGSEGV handlers at arbitrary
// instructions.
//
// lp_fault_in_window (at the top of this file) loads through its argument at +1, inside the
// 6-byte window of a jump at its entry. The test makes that load fault, attaches while the thread
// waits in its SIGSEGV handler, then lets the handler make the page readable and return.
enum class HandlerWait { kSpinning, kSleeping, kSpinningAllSignalsBlocked };
HandlerWait g_wait_kind = HandlerWait::kSpinning;
std::atomic<int> g_in_handler{0};
std::atomic<int> g_release_handler{0};
std::atomic<uintptr_t> g_fault_pc{0};
void *g_guard_page = nullptr;

void on_segv(int, siginfo_t *, void *ctx) {
  int saved_errno = errno;
  if (g_in_handler.load(std::memory_order_relaxed)) {
    // A second fault: the thread resumed into garbage. Let the next one kill the process.
    signal(SIGSEGV, SIG_DFL);
    errno = saved_errno;
    return;
  }
  const auto *uc = static_cast<const ucontext_t *>(ctx);
  g_fault_pc.store(static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]));
  g_in_handler.store(1, std::memory_order_release);
  // Wait for the test to attach (at most 10 s: a test must never hang).
  timespec start{}, now{};
  clock_gettime(CLOCK_MONOTONIC, &start);
  do {
    if (g_wait_kind == HandlerWait::kSleeping) {
      timespec ts{0, 100 * 1000};
      nanosleep(&ts, nullptr);
    }
    clock_gettime(CLOCK_MONOTONIC, &now);
  } while (!g_release_handler.load(std::memory_order_acquire) && now.tv_sec - start.tv_sec < 10);
  mprotect(g_guard_page, 4096, PROT_READ);  // the load succeeds when the thread resumes
  errno = saved_errno;
}

int attach_while_thread_waits_in_handler_inside_window() {
  struct sigaction sa {};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO;
  if (g_wait_kind == HandlerWait::kSpinningAllSignalsBlocked)
    sigfillset(&sa.sa_mask);  // usprobe leaves its own signals out (os/linux/signal_guard.h)
  else
    sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, nullptr);
  g_guard_page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (g_guard_page == MAP_FAILED) return 3;
  *static_cast<int *>(g_guard_page) = 41;
  mprotect(g_guard_page, 4096, PROT_NONE);

  const auto *fn = reinterpret_cast<const uint8_t *>(&lp_fault_in_window);
  const CodeCopy before(fn);
  int result = 0;
  std::thread victim([&] { result = lp_fault_in_window(static_cast<const int *>(g_guard_page)); });
  while (!g_in_handler.load(std::memory_order_acquire)) std::this_thread::yield();
  const uintptr_t pc = g_fault_pc.load() - reinterpret_cast<uintptr_t>(fn);

  usprobe_link *link = nullptr;
  int rc = usprobe_attach("exe:lp_fault_in_window", nullptr, &link);
  const bool int3 = rc == 0 && usprobe_link_uses_int3(link);
  std::printf("thread stopped at lp_fault_in_window+%#" PRIxPTR
              " in its handler; attach: %d "
              "(%s path%s%s)\n",
              pc, rc, int3 ? "int3" : "jump", int3 ? ": " : "",
              int3 ? usprobe_link_int3_reason(link) : "");
  std::fflush(stdout);
  if (rc < 0) {
    // Refusing is right only where a thread blocks SIGTRAP: an int3 would kill it.
    const bool refused_for_sigtrap = g_wait_kind == HandlerWait::kSpinningAllSignalsBlocked &&
                                     rc == -EAGAIN &&
                                     std::strstr(usprobe_last_error(), "blocks SIGTRAP") != nullptr;
    std::fprintf(refused_for_sigtrap ? stdout : stderr, "attach: %s\n", usprobe_last_error());
    g_release_handler.store(1);
    victim.join();
    std::printf("the thread resumed and returned %d (expected 42)\n", result);
    if (!before.intact()) std::fprintf(stderr, "bytes changed: %s\n", before.now().c_str());
    return refused_for_sigtrap && result == 42 && before.intact() ? 0 : 3;
  }
  g_release_handler.store(1, std::memory_order_release);
  victim.join();
  const uint64_t hits = usprobe_link_hits(link);
  usprobe_detach(link);
  std::printf("the thread resumed and returned %d (expected 42); %" PRIu64 " hits\n", result, hits);
  if (!before.intact()) std::fprintf(stderr, "bytes not restored: %s\n", before.now().c_str());
  return result == 42 && before.intact() ? 0 : 1;
}

// A thread blocked in the kernel on a page fault at lp_fault_in_window+1, inside the window: the
// round must see it there (its /proc syscall line shows a user pc, not a system call), signal it
// and move it to the window's relocated copy, where it retries the load once the page arrives.
int stopped_in_page_fault() {
  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
  if (uffd < 0) uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC));
  if (uffd < 0) {
    std::printf("SKIP: userfaultfd: %s\n", std::strerror(errno));
    return 77;
  }
  uffdio_api api{};
  api.api = UFFD_API;
  void *page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uffdio_register reg{};
  reg.range = {reinterpret_cast<uint64_t>(page), 4096};
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl(uffd, UFFDIO_API, &api) != 0 || page == MAP_FAILED ||
      ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) {
    std::printf("SKIP: userfaultfd setup: %s\n", std::strerror(errno));
    return 77;
  }
  const auto *fn = reinterpret_cast<const uint8_t *>(&lp_fault_in_window);
  const CodeCopy before(fn);
  int result = 0;
  std::thread victim([&] { result = lp_fault_in_window(static_cast<const int *>(page)); });
  // The fault event says the thread is blocked at the load, lp_fault_in_window+1.
  pollfd pfd{uffd, POLLIN, 0};
  uffd_msg msg{};
  if (poll(&pfd, 1, 10000) != 1 || read(uffd, &msg, sizeof msg) != sizeof msg ||
      msg.event != UFFD_EVENT_PAGEFAULT) {
    std::fprintf(stderr, "no page fault event from the thread\n");
    _exit(3);  // the thread is stuck in the fault; do not join it
  }
  usprobe_link *link = nullptr;
  int rc = usprobe_attach("exe:lp_fault_in_window", nullptr, &link);
  const bool int3 = rc == 0 && usprobe_link_uses_int3(link);
  std::printf("thread blocked in a page fault at lp_fault_in_window+1; attach: %d (%s path%s%s)\n",
              rc, int3 ? "int3" : "jump", int3 ? ": " : "",
              int3 ? usprobe_link_int3_reason(link) : "");
  // Resolve the fault: the page arrives holding 41.
  static int source[1024] = {41};
  uffdio_copy copy{};
  copy.dst = reinterpret_cast<uint64_t>(page);
  copy.src = reinterpret_cast<uint64_t>(source);
  copy.len = 4096;
  if (ioctl(uffd, UFFDIO_COPY, &copy) != 0 && errno != EEXIST) {
    std::fprintf(stderr, "UFFDIO_COPY: %s\n", std::strerror(errno));
    _exit(3);
  }
  victim.join();
  if (rc == 0) usprobe_detach(link);
  std::printf("the thread resumed and returned %d (expected 42)\n", result);
  if (!before.intact()) std::fprintf(stderr, "bytes not restored: %s\n", before.now().c_str());
  // On the int3 path the window's interior is never written and nothing needed moving.
  if (int3) std::fprintf(stderr, "the jump path was not taken: the round was not exercised\n");
  return rc == 0 && !int3 && result == 42 && before.intact() ? 0 : 1;
}

int stopped_in_spinning_handler() {
  g_wait_kind = HandlerWait::kSpinning;
  return attach_while_thread_waits_in_handler_inside_window();
}
int stopped_in_sleeping_handler() {
  g_wait_kind = HandlerWait::kSleeping;
  return attach_while_thread_waits_in_handler_inside_window();
}
int stopped_with_signals_blocked() {
  g_wait_kind = HandlerWait::kSpinningAllSignalsBlocked;
  return attach_while_thread_waits_in_handler_inside_window();
}

TEST(LivePatching, ThreadStoppedInWindowByPageFaultIsMovedByTheRound) {
  std::string how = run_in_child("stopped-in-page-fault", std::chrono::seconds(30));
  if (how == "the child exited with status 77") GTEST_SKIP() << "userfaultfd is not available";
  EXPECT_EQ(how, "");
}

// A thread interrupted inside a window by a signal whose handler is still running when the jump
// is written: the round sees the handler's context, not the one saved in the signal frame that
// sigreturn will resume, so the patcher looks for such frames on the thread's stack and keeps the
// window's interior untouched (the int3 path) when it finds one.
TEST(LivePatching, ThreadStoppedInWindowBySpinningSignalHandlerSurvivesAttach) {
  EXPECT_EQ(run_in_child("stopped-in-spinning-handler", std::chrono::seconds(30)), "");
}

TEST(LivePatching, ThreadStoppedInWindowBySleepingSignalHandlerSurvivesAttach) {
  EXPECT_EQ(run_in_child("stopped-in-sleeping-handler", std::chrono::seconds(30)), "");
}

// A handler whose sa_mask holds every signal: usprobe keeps SIGTRAP and its round's signal out of
// it, so the round reaches the thread (or, where the mask was set without usprobe's knowledge, the
// attach is refused); either way the thread resumes intact.
TEST(LivePatching, ThreadStoppedInWindowWithSignalsBlockedRefusesAttach) {
  EXPECT_EQ(run_in_child("stopped-with-signals-blocked", std::chrono::seconds(30)), "");
}

// A process that forks after usprobe wrote code: the child's attach must patch the child's code.
// (The parent's code is the parent's: a child's probe must neither appear there nor be missing in
// the child.) Forked, not spawned: inheriting the parent's usprobe state is the point.
TEST(LivePatching, ForkedChildPatchesItsOwnCodeNotItsParents) {
  const std::string location = "libusprobe_targets.so:tgt_counted";
  usprobe_link *link = nullptr;
  ASSERT_EQ(usprobe_attach(location.c_str(), nullptr, &link), 0) << usprobe_last_error();
  EXPECT_EQ(tgt_counted(1), 2);
  ASSERT_EQ(usprobe_detach(link), 0);
  const CodeCopy before(reinterpret_cast<const void *>(&tgt_counted));

  int to_parent[2], to_child[2];
  ASSERT_EQ(pipe(to_parent), 0);
  ASSERT_EQ(pipe(to_child), 0);
  std::fflush(stdout);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The child: attach, call, report, wait until the parent has looked at its own code, detach.
    char report[256];
    usprobe_link *l = nullptr;
    int rc = usprobe_attach(location.c_str(), nullptr, &l);
    bool patched = !before.intact();
    long wrong = 0;
    for (long i = 0; i < 100; ++i) wrong += tgt_counted(i) != i + 1;
    uint64_t hits = rc == 0 ? usprobe_link_hits(l) : 0;
    std::snprintf(report, sizeof report,
                  "child: attach %d (%s), its own code %s, %" PRIu64
                  " hits for 100 calls, %ld "
                  "wrong results",
                  rc, rc == 0 ? "ok" : usprobe_last_error(), patched ? "patched" : "NOT patched",
                  hits, wrong);
    (void)!write(to_parent[1], report, std::strlen(report) + 1);
    char go;
    (void)!read(to_child[0], &go, 1);
    if (rc == 0) usprobe_detach(l);
    _exit(rc == 0 && patched && hits == 100 && wrong == 0 && before.intact() ? 0 : 1);
  }
  char report[256] = {};
  ssize_t n = read(to_parent[0], report, sizeof report - 1);
  // While the child's probe is attached, this process's code must be its own.
  const bool parent_intact = before.intact();
  const std::string parent_bytes = before.now();
  const long parent_result = tgt_counted(41);
  (void)!write(to_child[1], "g", 1);
  int status = 0;
  waitpid(pid, &status, 0);
  for (int fd : {to_parent[0], to_parent[1], to_child[0], to_child[1]}) close(fd);
  std::printf("%s\n", n > 0 ? report : "child: no report");
  EXPECT_TRUE(parent_intact) << "the child's attach changed the parent's code: " << parent_bytes;
  EXPECT_EQ(parent_result, 42);
  EXPECT_TRUE(before.intact()) << "after the child exited: " << before.now();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << report;
}

}  // namespace

// The child side of run_in_child(): runs before GoogleTest's main when the variable is set.
namespace {
const usprobe::test::Scenario kScenarios[] = {
    {"dirty-stack-jump", [] { return probe_mid_site_over_dirty_stack(0); }},
    {"dirty-stack-int3", [] { return probe_mid_site_over_dirty_stack(USPROBE_FORCE_INT3); }},
    {"stopped-in-page-fault", stopped_in_page_fault},
    {"stopped-in-spinning-handler", stopped_in_spinning_handler},
    {"stopped-in-sleeping-handler", stopped_in_sleeping_handler},
    {"stopped-with-signals-blocked", stopped_with_signals_blocked},
};
const bool g_child_dispatched = usprobe::test::run_scenario_if_child(kChildEnv, kScenarios);
}  // namespace
