// Tortures with the tricky functions of libusprobe_targets.so: four threads count exactly on the
// jump and int3 paths, with and without a callback (and their counts survive the reclamation of
// their thread records); three threads call four probed functions (an entry, an instruction site,
// a call and a conditional jump in the window) while the main thread attaches and detaches them
// in rounds, one in three on the int3 path.
//
// Bounds: 4 x 100,000 calls per jump run and 4 x 5,000 per int3 run; 60 rounds of 0.5 ms.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "support/code_bytes.h"
#include "support/test_link.h"
#include "targets/targets.h"
#include "usprobe/usprobe.h"

namespace {

using usprobe::test::loc;

using usprobe::test::Link;

long (*volatile g_counted)(long) = tgt_counted;
long (*volatile g_counted_mid)(long) = tgt_counted_mid;

// One checked call (as in tests/api/targets_test.cc); adds the hits it should produce to *h.
bool call_jcc_in_window(unsigned i, uint64_t *h) {
  ++*h;
  int x = static_cast<int>(i % 3);  // both sides of the je
  return tgt_jcc_in_window(x) == (x == 0 ? 100 : 2 * x);
}
bool call_call_first(unsigned i, uint64_t *h) {
  ++*h;
  return tgt_call_first(i) == 3l * i + 8;
}

// ---- Threads ------------------------------------------------------------------------------------

TEST(ProbedTargets, FourThreadsCountExactly) {
  struct Run {
    const char *what;
    unsigned flags;
    long calls_per_thread;
    bool callback;  // also a C callback on the probe (without: the built-in counter alone)
  };
  const Run runs[] = {{"jump, counter only", 0u, 100000, false},
                      {"jump, counter and callback", 0u, 100000, true},
                      {"int3, counter only", USPROBE_FORCE_INT3, 5000, false},
                      {"int3, counter and callback", USPROBE_FORCE_INT3, 5000, true}};
  for (const Run &run : runs) {
    SCOPED_TRACE(run.what);
    std::atomic<uint64_t> handled{0};
    usprobe_consumer consumer{[](usprobe_hit *, void *user) {
                                static_cast<std::atomic<uint64_t> *>(user)->fetch_add(
                                    1, std::memory_order_relaxed);
                              },
                              &handled, nullptr};
    Link counter, callback;
    ASSERT_ATTACHED(counter.attach(loc("tgt_counted"), nullptr, run.flags));
    if (run.callback) ASSERT_ATTACHED(callback.attach(loc("tgt_counted"), &consumer));
    EXPECT_EQ(counter.int3(), run.flags != 0);
    std::atomic<long> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&] {
        long bad = 0;
        for (long i = 0; i < run.calls_per_thread; ++i)
          if (g_counted(i) != i + 1) ++bad;
        wrong += bad;
      });
    for (auto &t : threads) t.join();
    const uint64_t total = 4 * static_cast<uint64_t>(run.calls_per_thread);
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_EQ(counter.hits(), total);
    EXPECT_EQ(counter.missed(), 0u);
    if (run.callback) {
      EXPECT_EQ(callback.hits(), total);
      EXPECT_EQ(handled.load(), total);
    }

    // The threads are gone: their counts must survive the reclamation of their records (any
    // attach reclaims), and new threads must not inherit them.
    Link other;
    ASSERT_ATTACHED(other.attach(loc("tgt_helper")));
    EXPECT_EQ(counter.hits(), total);
    std::thread([] {
      for (long i = 0; i < 10; ++i) (void)g_counted(i);
    }).join();
    EXPECT_EQ(counter.hits(), total + 10);
    EXPECT_EQ(other.hits(), 0u);
  }
}

TEST(ProbedTargets, AttachAndDetachWhileThreadsCall) {
  // Live patching: threads call the targets in a loop while the main thread attaches and
  // detaches. Every result must stay right; hits can never exceed calls.
  std::atomic<bool> stop{false};
  std::atomic<long> wrong{0};
  std::atomic<uint64_t> calls{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&] {
      uint64_t n = 0;
      long bad = 0;
      uint64_t ignored = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        unsigned i = static_cast<unsigned>(n);
        if (g_counted(i) != static_cast<long>(i) + 1) ++bad;
        if (g_counted_mid(i) != static_cast<long>(i) + 1) ++bad;
        if (!call_call_first(i, &ignored)) ++bad;
        if (!call_jcc_in_window(i, &ignored)) ++bad;
        ++n;
      }
      wrong += bad;
      calls += n;
    });
  const std::string where[] = {loc("tgt_counted"),
                               loc("tgt_counted_mid", tgt_counted_mid_site_offset),
                               loc("tgt_call_first"), loc("tgt_jcc_in_window")};
  uint64_t total_hits = 0;
  for (int round = 0; round < 60; ++round) {
    const unsigned flags = round % 3 == 2 ? USPROBE_FORCE_INT3 : 0;
    Link links[4];
    for (int k = 0; k < 4; ++k) ASSERT_ATTACHED(links[k].attach(where[k], nullptr, flags));
    std::this_thread::sleep_for(std::chrono::microseconds(500));
    total_hits += links[0].hits();
  }
  stop = true;
  for (auto &t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_LE(total_hits, calls.load());
  EXPECT_GT(total_hits, 0u);
}

}  // namespace
