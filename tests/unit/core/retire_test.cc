// core/retire.h on a page of code this test writes and runs on a thread of its own: retire::idle
// answers "not now" while the thread's instruction pointer is inside a range, or while a word of
// its stack (a return address) points into one, and "idle" once the thread has left; and
// retire::counter_windows_clear sends a thread that stands inside a counter window back to the
// window's start (the code there counts each start), but refuses while a signal frame on a
// thread's stack would resume inside a window.
//
// Every wait has a deadline and only waits for a condition; no sleep decides a result.
#include "core/retire.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include "core/arch.h"
#include "core/os.h"

namespace usprobe {
namespace {

using Clock = std::chrono::steady_clock;

// Waits (yielding) until `done` holds, for 10 s at most; returns whether it held.
bool wait_for(const std::function<bool()> &done) {
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (!done()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// The test's code page. Offsets and bytes:
//
//   kCallOut (0x00): calls the function in %rsi with %rdi, so that the return address kCallOut +
//     6 stands on the thread's stack while that function runs:
//       00 sub $8,%rsp; 04 call *%rsi; 06 add $8,%rsp; 0a ret
//   kSpin (0x40): stores 1 to the int at %rdi, spins until it reads 2, returns:
//       40 movl $1,(%rdi); 46 pause; 48 cmpl $2,(%rdi); 4b jne 46; 4d ret
//   kWindow (0x80): counts its start in the int at %rdi, spins until the int at 4(%rdi) is set:
//       80 incl (%rdi); 82 pause; 84 cmpl $0,4(%rdi); 88 je 82; 8a ret
//     a counter window [0x80, 0x8a) whose every instruction maps back to its start, as a
//     trampoline's counter path does.
constexpr uint64_t kCallOut = 0x00, kSpin = 0x40, kWindow = 0x80, kWindowLength = 10;
constexpr uint8_t kPage[] = {
    0x48, 0x83, 0xec, 0x08, 0xff, 0xd6, 0x48, 0x83, 0xc4, 0x08, 0xc3,  // kCallOut
};
constexpr uint8_t kSpinCode[] = {0xc7, 0x07, 0x01, 0x00, 0x00, 0x00, 0xf3,
                                 0x90, 0x83, 0x3f, 0x02, 0x75, 0xf9, 0xc3};
constexpr uint8_t kWindowCode[] = {0xff, 0x07, 0xf3, 0x90, 0x83, 0x7f,
                                   0x04, 0x00, 0x74, 0xf8, 0xc3};
const std::pair<uint32_t, uint32_t> kWindowMap[] = {{0, 0}, {2, 0}, {4, 0}, {8, 0}};

class CodePage {
 public:
  CodePage() {
    void *p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    auto *b = static_cast<uint8_t *>(p);
    std::memset(b, 0xcc, 4096);
    std::memcpy(b + kCallOut, kPage, sizeof kPage);
    std::memcpy(b + kSpin, kSpinCode, sizeof kSpinCode);
    std::memcpy(b + kWindow, kWindowCode, sizeof kWindowCode);
    if (mprotect(p, 4096, PROT_READ | PROT_EXEC) != 0) return;
    base_ = reinterpret_cast<uint64_t>(p);
  }
  ~CodePage() {
    if (base_) munmap(reinterpret_cast<void *>(base_), 4096);
  }
  CodePage(const CodePage &) = delete;
  CodePage &operator=(const CodePage &) = delete;

  uint64_t at(uint64_t offset) const { return base_ + offset; }
  bool ok() const { return base_ != 0; }

 private:
  uint64_t base_ = 0;
};

// A thread that runs `body` and is joined when the test's scope ends, whatever the test's result
// (after `release`, which lets the body finish).
class Runner {
 public:
  Runner(std::function<void()> body, std::function<void()> release)
      : release_(std::move(release)), thread_(std::move(body)) {}
  ~Runner() {
    release_();
    thread_.join();
  }
  Runner(const Runner &) = delete;
  Runner &operator=(const Runner &) = delete;

 private:
  std::function<void()> release_;
  std::thread thread_;
};

// Where the spinning thread waits once it left the page: outside every range the tests pass.
void wait_until(const std::atomic<int> &flag, int value) {
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (flag.load() != value && Clock::now() < deadline) std::this_thread::yield();
}

// Overwrites the 8 KiB of stack below the caller's frame. A thread that left the range may have
// left words that point into it down there (the signal frames of the rounds that looked at it, a
// popped return address); the frames it makes next could leave some of them in place, above its
// stack pointer, where retire::idle rightly counts them.
__attribute__((noinline)) void scrub_stack() {
  volatile uint8_t junk[8192];
  for (size_t i = 0; i < sizeof junk; ++i) junk[i] = 0;
}

TEST(Retire, IdleIsFalseWhileAThreadRunsInTheCodeAndTrueOnceItLeft) {
  ASSERT_TRUE(os::membarrier_init());
  CodePage page;
  ASSERT_TRUE(page.ok());
  // The spin loop and its ret, not the entry: no word the caller keeps (the address it called)
  // points into the range, only the thread's instruction pointer does.
  const std::vector<retire::Range> loop = {{page.at(kSpin + 6), page.at(kSpin + 14)}};
  const auto spin = reinterpret_cast<void (*)(std::atomic<int> *)>(page.at(kSpin));
  std::atomic<int> in_code{0}, left{0}, stop{0};
  Runner runner(
      [&] {
        spin(&in_code);  // 1 while inside; returns once the test stores 2
        scrub_stack();
        left.store(1);
        wait_until(stop, 1);
      },
      [&] {
        in_code.store(2);
        stop.store(1);
      });
  ASSERT_TRUE(wait_for([&] { return in_code.load() == 1; }));
  EXPECT_FALSE(retire::idle(loop, {})) << "a thread spins inside the range";
  EXPECT_FALSE(retire::idle(loop, {})) << "asking again changes nothing";
  const std::vector<retire::Range> elsewhere = {
      {page.at(kWindow), page.at(kWindow + kWindowLength)}};
  EXPECT_TRUE(retire::idle(elsewhere, {})) << "a range the thread is not in";
  in_code.store(2);
  ASSERT_TRUE(wait_for([&] { return left.load() == 1; }));
  EXPECT_TRUE(retire::idle(loop, {})) << "the thread left the range (and is still alive)";
}

// The thread runs a function called from inside the range: its instruction pointer is outside,
// but the call's return address on its stack points in (a handler called from a trampoline).
std::atomic<int> g_called{0};  // 1: in the called function; 2: it may return
void retire_test_callee(std::atomic<int> *state) {
  state->store(1);
  wait_until(*state, 2);
}

TEST(Retire, IdleIsFalseWhileAStackWordPointsIntoTheCode) {
  ASSERT_TRUE(os::membarrier_init());
  CodePage page;
  ASSERT_TRUE(page.ok());
  const std::vector<retire::Range> after_call = {{page.at(kCallOut + 6), page.at(kCallOut + 11)}};
  const auto call_out =
      reinterpret_cast<void (*)(std::atomic<int> *, void (*)(std::atomic<int> *))>(
          page.at(kCallOut));
  std::atomic<int> left{0}, stop{0};
  g_called.store(0);
  Runner runner(
      [&] {
        call_out(&g_called, retire_test_callee);
        scrub_stack();
        left.store(1);
        wait_until(stop, 1);
      },
      [&] {
        g_called.store(2);
        stop.store(1);
      });
  ASSERT_TRUE(wait_for([&] { return g_called.load() == 1; }));
  EXPECT_FALSE(retire::idle(after_call, {})) << "a return address into the range is on the stack";
  g_called.store(2);
  ASSERT_TRUE(wait_for([&] { return left.load() == 1; }));
  EXPECT_TRUE(retire::idle(after_call, {})) << "the call returned through the range";
}

// The window's counts: starts (the int the window's first instruction increments) and release.
struct WindowState {
  std::atomic<int> starts{0};
  std::atomic<int> release{0};
};
static_assert(sizeof(std::atomic<int>) == 4);

arch::WindowMove counter_window(const CodePage &page) {
  return {page.at(kWindow), kWindowLength, page.at(kWindow), kWindowMap, std::size(kWindowMap)};
}

TEST(Retire, CounterWindowsClearSendsAThreadInsideAWindowBackToItsStart) {
  ASSERT_TRUE(os::membarrier_init());
  CodePage page;
  ASSERT_TRUE(page.ok());
  const auto run_window = reinterpret_cast<void (*)(WindowState *)>(page.at(kWindow));
  WindowState state;
  std::atomic<int> left{0};
  Runner runner(
      [&] {
        run_window(&state);
        left.store(1);
      },
      [&] { state.release.store(1); });
  ASSERT_TRUE(wait_for([&] { return state.starts.load() == 1; }));
  const arch::WindowMove windows[] = {counter_window(page)};
  EXPECT_TRUE(retire::counter_windows_clear(windows));
  // Moved to the start, the thread counts a second start (and only one: it was moved once).
  ASSERT_TRUE(wait_for([&] { return state.starts.load() >= 2; }));
  EXPECT_EQ(state.starts.load(), 2);
  EXPECT_TRUE(retire::counter_windows_clear(windows));
  ASSERT_TRUE(wait_for([&] { return state.starts.load() >= 3; }));
  state.release.store(1);
  ASSERT_TRUE(wait_for([&] { return left.load() == 1; }));
  EXPECT_EQ(state.starts.load(), 3);
  EXPECT_TRUE(retire::counter_windows_clear(windows)) << "no thread in the window";
}

// A signal that interrupted the thread inside the window, whose handler still runs: the round sees
// the handler, but sigreturn will resume inside the window with a word read before.
std::atomic<int> g_handler{0};  // 1: in the handler; 2: it may return
void spin_in_handler(int) {
  g_handler.store(1);
  wait_until(g_handler, 2);
}

TEST(Retire, CounterWindowsClearRefusesWhileASignalFrameResumesInsideAWindow) {
  ASSERT_TRUE(os::membarrier_init());
  CodePage page;
  ASSERT_TRUE(page.ok());
  struct sigaction sa {
  }, old{};
  sa.sa_handler = spin_in_handler;
  sigemptyset(&sa.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR2, &sa, &old), 0);
  const auto run_window = reinterpret_cast<void (*)(WindowState *)>(page.at(kWindow));
  WindowState state;
  g_handler.store(0);
  std::atomic<pthread_t> thread{};
  {
    Runner runner(
        [&] {
          thread.store(pthread_self());
          run_window(&state);
        },
        [&] {
          g_handler.store(2);
          state.release.store(1);
        });
    ASSERT_TRUE(wait_for([&] { return state.starts.load() == 1; }));
    ASSERT_EQ(pthread_kill(thread.load(), SIGUSR2), 0);
    ASSERT_TRUE(wait_for([&] { return g_handler.load() == 1; }));
    const arch::WindowMove windows[] = {counter_window(page)};
    EXPECT_FALSE(retire::counter_windows_clear(windows));
    EXPECT_EQ(state.starts.load(), 1) << "the thread was moved while its handler ran";
    g_handler.store(2);  // the handler returns into the window, and the frame is gone
    EXPECT_TRUE(wait_for([&] { return retire::counter_windows_clear(windows); }));
    ASSERT_TRUE(wait_for([&] { return state.starts.load() >= 2; }));
  }
  sigaction(SIGUSR2, &old, nullptr);
}

}  // namespace
}  // namespace usprobe
