// Tortures of the counter path (core/thread_record.h: a function entry whose only consumer is one
// built-in entry counter is counted by the trampoline itself) and of the return counter path
// (arch/x86_64/trampoline.cc, emit_return_counter_path: a return probe's built-in counter, entry
// and return, counted by the trampoline and the shared return code): four threads counting at once
// on both paths, a SIGPROF storm whose handler calls the probed function between a load and its
// increment (or inside the return path's guarded stretches), and a slot freed while three threads
// call flat out (returns pending across the detach), which must never count for the consumer that
// gets it next.
//
// Bounds, each for the entry counter and then the return counter: 4 x 500,000 calls (jump path)
// and 4 x 20,000 (int3 path); 20,000,000 (entry) and 10,000,000 (return) calls under a 200 us
// profiling timer; 150 attach/detach rounds of about 0.6 ms each. About 8 s in all on two cores.
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

std::string loc(const char *symbol) {
  return std::string("libusprobe_targets.so:") + symbol;
}

long (*volatile g_counted)(long) = tgt_counted;

const unsigned kPaths[] = {0u, unsigned{USPROBE_FORCE_INT3}};
const char *path_name(unsigned flags) {
  return flags ? "int3 path" : "jump path";
}

// The probe types: "" the entry counter, "uretprobe:" the return counter (hits at the entry,
// returns at the return).
const char *const kTypes[] = {"", "uretprobe:"};

TEST(CounterPath, FourThreadsCountEveryCall) {
  for (const std::string type : kTypes)
    for (unsigned flags : kPaths) {
      SCOPED_TRACE(type + path_name(flags));
      Link link;
      ASSERT_ATTACHED(link.attach(type + loc("tgt_counted"), nullptr, flags));
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
      EXPECT_EQ(link.return_hits(), type.empty() ? 0u : 4u * kCalls);
      EXPECT_EQ(link.missed(), 0u);
    }
}

// A signal handler that calls the probed function may interrupt the counter path between its load
// and its increment: the increment reads the word again, so neither hit is lost.
std::atomic<uint64_t> g_calls_in_handler{0};
void call_in_handler(int) {
  if (g_counted(1) == 2) g_calls_in_handler.fetch_add(1, std::memory_order_relaxed);
}

// `calls` calls of the probed function under a 200 us profiling timer whose handler calls it too;
// how many results were wrong.
long calls_under_a_signal_storm(long calls) {
  g_calls_in_handler = 0;
  struct sigaction sa {
  }, old{};
  sa.sa_handler = call_in_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (sigaction(SIGPROF, &sa, &old) != 0) return calls;
  itimerval every{{0, 200}, {0, 200}}, off{};
  setitimer(ITIMER_PROF, &every, nullptr);
  long wrong = 0;
  for (long i = 0; i < calls; ++i) wrong += g_counted(i) != i + 1;
  setitimer(ITIMER_PROF, &off, nullptr);
  sigaction(SIGPROF, &old, nullptr);
  return wrong;
}

TEST(CounterPath, SignalHandlerHitsAddToTheInterruptedOnes) {
  Link link;
  ASSERT_ATTACHED(link.attach(loc("tgt_counted")));
  constexpr long kCalls = 20000000;
  EXPECT_EQ(calls_under_a_signal_storm(kCalls), 0);
  EXPECT_GT(g_calls_in_handler.load(), 0u) << "no signal arrived during the loop";
  EXPECT_EQ(link.hits(), kCalls + g_calls_in_handler.load());
  EXPECT_EQ(link.missed(), 0u);
}

// On the return counter path a signal handler may interrupt the path anywhere: before its guard,
// its call is counted and its return too; inside it (the return instance half made, or half taken
// back), it is counted as missed and its return left alone, as inside any handler. Either way no
// call is lost or counted twice, and every counted entry's return is counted.
TEST(ReturnCounterPath, SignalHandlerCallsAreCountedOrMissedNeverLost) {
  Link link;
  ASSERT_ATTACHED(link.attach("uretprobe:" + loc("tgt_counted")));
  constexpr long kCalls = 10000000;
  EXPECT_EQ(calls_under_a_signal_storm(kCalls), 0);
  EXPECT_GT(g_calls_in_handler.load(), 0u) << "no signal arrived during the loop";
  EXPECT_EQ(link.hits() + link.missed(), kCalls + g_calls_in_handler.load());
  EXPECT_EQ(link.return_hits(), link.hits());
  EXPECT_GE(link.hits(), static_cast<uint64_t>(kCalls));
}

// Threads call a function without pause while its counter comes and goes; each time, the freed
// slot goes to a counter on a function nobody calls, which must read zero. A thread stopped between
// a load of the word and its increment would otherwise count into it; on the return counter path,
// so would a call whose entry was counted before the detach and that returns after it.
void stray_counts_of_a_freed_slot(const std::string &type) {
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
    ASSERT_ATTACHED(busy.attach(type + loc("tgt_counted")));
    std::this_thread::sleep_for(std::chrono::microseconds(300));
    counted += busy.hits();
    ASSERT_EQ(busy.detach(), 0) << usprobe_last_error();
    Link idle;
    ASSERT_ATTACHED(idle.attach(type + loc("tgt_six_args")));
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

TEST(CounterPath, AFreedSlotNeverCountsForItsNextConsumer) {
  for (const std::string type : kTypes) {
    SCOPED_TRACE(type);
    stray_counts_of_a_freed_slot(type);
  }
}

}  // namespace
