// Tortures of the return counter path (arch/x86_64/trampoline.cc, emit_return_counter_path: a
// function entry whose only consumer is one built-in counter that is a return probe is counted,
// entry and return, by the trampoline and the shared return code, with no call): four threads at
// once on both paths, a SIGPROF storm whose handler calls the probed function inside the path's
// guarded stretches, and a slot freed while three threads call flat out (returns pending across
// the detach), which must never count for the consumer that gets it next.
//
// Bounds: 4 x 500,000 calls (jump path) and 4 x 20,000 (int3 path); 10,000,000 calls under a
// 200 us profiling timer; 150 attach/detach rounds of about 0.6 ms each. About 4 s in all on two
// cores.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/time.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "support/test_link.h"
#include "targets/targets.h"
#include "usprobe/usprobe.h"

namespace {

using usprobe::test::Link;

std::string uretprobe(const char *symbol) {
  return std::string("uretprobe:libusprobe_targets.so:") + symbol;
}

long (*volatile g_counted)(long) = tgt_counted;

const unsigned kPaths[] = {0u, unsigned{USPROBE_FORCE_INT3}};
const char *path_name(unsigned flags) {
  return flags ? "int3 path" : "jump path";
}

TEST(ReturnCounterPath, FourThreadsCountEveryCallAndItsReturn) {
  for (unsigned flags : kPaths) {
    SCOPED_TRACE(path_name(flags));
    Link link;
    ASSERT_ATTACHED(link.attach(uretprobe("tgt_counted"), nullptr, flags));
    const long kCalls = flags ? 20000 : 500000;  // each int3 hit is a signal
    std::atomic<long> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&] {
        long bad = 0;
        for (long i = 0; i < kCalls; ++i) bad += g_counted(i) != i + 1;
        wrong += bad;
      });
    for (auto &t : threads) t.join();
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_EQ(link.hits(), 4u * kCalls);
    EXPECT_EQ(link.return_hits(), 4u * kCalls);
    EXPECT_EQ(link.missed(), 0u);
  }
}

// A signal handler that calls the probed function may interrupt the path anywhere: before its
// guard, its call is counted and its return too; inside it (the return instance half made, or half
// taken back), it is counted as missed and its return left alone, as inside any handler. Either
// way no call is lost or counted twice, and every counted entry's return is counted.
std::atomic<uint64_t> g_calls_in_handler{0};
void call_in_handler(int) {
  if (g_counted(1) == 2) g_calls_in_handler.fetch_add(1, std::memory_order_relaxed);
}

TEST(ReturnCounterPath, SignalHandlerCallsAreCountedOrMissedNeverLost) {
  Link link;
  ASSERT_ATTACHED(link.attach(uretprobe("tgt_counted")));
  struct sigaction sa {
  }, old{};
  sa.sa_handler = call_in_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ASSERT_EQ(sigaction(SIGPROF, &sa, &old), 0);
  itimerval every{{0, 200}, {0, 200}}, off{};
  ASSERT_EQ(setitimer(ITIMER_PROF, &every, nullptr), 0);
  constexpr long kCalls = 10000000;
  long wrong = 0;
  for (long i = 0; i < kCalls; ++i) wrong += g_counted(i) != i + 1;
  setitimer(ITIMER_PROF, &off, nullptr);
  sigaction(SIGPROF, &old, nullptr);
  EXPECT_EQ(wrong, 0);
  EXPECT_GT(g_calls_in_handler.load(), 0u) << "no signal arrived during the loop";
  EXPECT_EQ(link.hits() + link.missed(), kCalls + g_calls_in_handler.load());
  EXPECT_EQ(link.return_hits(), link.hits());
  EXPECT_GE(link.hits(), static_cast<uint64_t>(kCalls));
}

// Threads call a function without pause while its return counter comes and goes; each time, the
// freed slot goes to a return counter on a function nobody calls, which must read zero. A thread
// stopped between a load of the probe's return word and the increment it names (at the entry, or
// in the shared return code), or a call whose entry was counted before the detach and returns
// after it, would otherwise count into it.
TEST(ReturnCounterPath, AFreedSlotNeverCountsForItsNextConsumer) {
  std::atomic<bool> stop{false};
  std::atomic<long> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&] {
      long bad = 0;
      for (long i = 0; !stop.load(std::memory_order_relaxed); ++i) bad += g_counted(i) != i + 1;
      wrong += bad;
    });
  uint64_t stray = 0, counted = 0;
  for (int round = 0; round < 150; ++round) {
    Link busy;
    ASSERT_ATTACHED(busy.attach(uretprobe("tgt_counted")));
    std::this_thread::sleep_for(std::chrono::microseconds(300));
    counted += busy.return_hits();
    ASSERT_EQ(busy.detach(), 0) << usprobe_last_error();
    Link idle;
    ASSERT_ATTACHED(idle.attach(uretprobe("tgt_six_args")));
    std::this_thread::sleep_for(std::chrono::microseconds(300));
    stray += idle.hits() + idle.return_hits() + idle.missed();
  }
  stop = true;
  for (auto &t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(counted, 0u);
  EXPECT_EQ(stray, 0u)
      << "calls of the busy function were counted for the next consumer of its slot";
}

}  // namespace
