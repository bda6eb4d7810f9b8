// Per-thread counters: summed over threads, kept when threads exit, zero for a reused slot.
#include "core/counters.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "core/os.h"
#include "core/thread_record.h"

namespace usprobe {
namespace {

void hit(uint32_t slot, int n) {
  ThreadRecord *r = current_record();
  for (int i = 0; i < n; ++i) bump(r->counters[2 * slot]);
}

TEST(Counters, HitsOfAllThreadsAreSummed) {
  auto slot = counters::alloc_slot();
  ASSERT_TRUE(slot);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) ts.emplace_back(hit, *slot, 10000);
  for (auto &t : ts) t.join();
  hit(*slot, 5);
  EXPECT_EQ(counters::read(*slot).hits, 40005u);
  EXPECT_EQ(counters::read(*slot).missed, 0u);
  counters::free_slot(*slot);
}

TEST(Counters, CountsOfExitedThreadsSurviveReclaim) {
  auto slot = counters::alloc_slot();
  ASSERT_TRUE(slot);
  for (int round = 0; round < 3; ++round) {
    std::thread(hit, *slot, 1000).join();
    counters::reclaim_dead_threads();  // the thread is gone: its record is folded and reused
  }
  EXPECT_EQ(counters::read(*slot).hits, 3000u);
  counters::free_slot(*slot);
}

// A thread that registers a record and exits; returns once the kernel says it is gone. join()
// returns when the thread has cleared its tid, which the kernel does a moment before the thread
// stops existing for tgkill: reclaiming in between would (rightly) leave its record alone.
void register_and_exit() {
  int tid = 0;
  std::thread([&tid] {
    current_record();
    tid = os::raw_gettid();
  }).join();
  for (int i = 0; i < 1000 && !os::thread_exited(tid); ++i) std::this_thread::yield();
}

TEST(Counters, ReclaimedRecordsAreReusedByNewThreads) {
  register_and_exit();
  counters::reclaim_dead_threads();
  size_t before = 0;
  for (ThreadRecord *r = all_records(); r; r = r->next) ++before;
  for (int i = 0; i < 20; ++i) {
    register_and_exit();
    counters::reclaim_dead_threads();
  }
  size_t after = 0;
  for (ThreadRecord *r = all_records(); r; r = r->next) ++after;
  EXPECT_EQ(after, before) << "each exited thread's record should be reused, not leaked";
}

TEST(Counters, AFreedSlotComesBackAtZero) {
  auto slot = counters::alloc_slot();
  ASSERT_TRUE(slot);
  hit(*slot, 7);
  std::thread(hit, *slot, 3).join();
  counters::free_slot(*slot);
  auto again = counters::alloc_slot();
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, *slot) << "freed slots are reused first";
  EXPECT_EQ(counters::read(*again).hits, 0u);
  counters::free_slot(*again);
}

}  // namespace
}  // namespace usprobe
