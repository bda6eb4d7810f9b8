// RCU: readers never see freed state, grace periods wait for readers that began before them and
// not for those that began after, and the read side nests (signal handlers).
#include "core/rcu.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "core/os.h"

namespace usprobe {
namespace {

struct Box {
  std::atomic<uint64_t> value;
  std::atomic<bool> alive;
  explicit Box(uint64_t v) : value(v), alive(true) {}
};

class Rcu : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(os::membarrier_init()); }
};

TEST_F(Rcu, ReadersNeverSeeStateFreedByAWriter) {
  std::atomic<Box *> shared{new Box(0)};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0}, dead_seen{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t)
    readers.emplace_back([&] {
      ThreadRecord *rec = current_record();
      while (!stop.load(std::memory_order_relaxed)) {
        rcu::ReadGuard g(rec);
        Box *b = shared.load(std::memory_order_acquire);
        // The writer marks a box dead before freeing it only after a grace period; a reader that
        // still holds it must never observe the mark.
        if (!b->alive.load(std::memory_order_relaxed)) dead_seen.fetch_add(1);
        reads.fetch_add(1, std::memory_order_relaxed);
      }
    });
  while (reads.load() < 1000) std::this_thread::yield();  // readers are running
  for (uint64_t i = 1; i <= 300; ++i) {
    Box *old = shared.exchange(new Box(i), std::memory_order_acq_rel);
    rcu::synchronize();
    old->alive.store(false, std::memory_order_relaxed);
    delete old;
  }
  stop = true;
  for (auto &t : readers) t.join();
  delete shared.load();
  EXPECT_EQ(dead_seen.load(), 0u);
  EXPECT_GT(reads.load(), 0u);
}

TEST_F(Rcu, GracePeriodWaitsForAReaderThatBeganBefore) {
  std::atomic<int> phase{0};
  std::thread reader([&] {
    ThreadRecord *rec = current_record();
    rcu::ReadGuard g(rec);
    phase = 1;
    while (phase.load() != 2) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    phase = 3;  // still inside the read section
  });
  while (phase.load() != 1) std::this_thread::yield();
  phase = 2;
  rcu::synchronize();
  EXPECT_EQ(phase.load(), 3) << "synchronize() returned while a read section was still open";
  reader.join();
}

// A grace period waits for the read sections that began before it, and for no other: not for a
// thread that is quiescent (it has a record and reads nothing), and not for a section that began
// at the grace period's own epoch, however long that section lasts. Which record synchronize()
// looks at first is not up to the test, so the late reader's word is set as a ReadGuard sets it
// when it begins just after synchronize() has bumped the epoch: at the next epoch. The reader stays
// inside until synchronize() has returned or, if synchronize() waits for it, gives up after 20 s:
// the test then fails instead of hanging.
TEST_F(Rcu, GracePeriodDoesNotWaitForQuiescentOrLaterReaders) {
  std::atomic<bool> late_in{false}, synced{false}, late_saw_sync_inside{false};
  std::atomic<bool> quiescent_ready{false}, quiescent_stop{false};
  std::thread quiescent([&] {
    (void)current_record();
    quiescent_ready = true;
    while (!quiescent_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  const uint64_t next_epoch = rcu::g_epoch.load() + 1;  // the one synchronize() will start
  std::thread late([&] {
    ThreadRecord *rec = current_record();
    rec->rcu_word.store((next_epoch << 8) | 1);
    late_in = true;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!synced.load() && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    late_saw_sync_inside = synced.load();
    rec->rcu_word.store(0);
  });
  while (!late_in.load() || !quiescent_ready.load()) std::this_thread::yield();
  rcu::synchronize();
  synced = true;
  late.join();
  quiescent_stop = true;
  quiescent.join();
  ASSERT_EQ(rcu::g_epoch.load(), next_epoch) << "something else began a grace period meanwhile";
  EXPECT_TRUE(late_saw_sync_inside.load())
      << "synchronize() waited for a read section that began at its own epoch";
}

TEST_F(Rcu, ReadSectionsNestAndRestoreTheWord) {
  ThreadRecord *rec = current_record();
  ASSERT_EQ(rec->rcu_word.load(), 0u);
  {
    rcu::ReadGuard outer(rec);
    uint64_t w = rec->rcu_word.load();
    EXPECT_EQ(w & 0xff, 1u);
    {
      rcu::ReadGuard inner(rec);
      EXPECT_EQ(rec->rcu_word.load(), w + 1);
    }
    EXPECT_EQ(rec->rcu_word.load(), w);
  }
  EXPECT_EQ(rec->rcu_word.load(), 0u);
}

ThreadRecord *g_rec_for_signal;
std::atomic<uint64_t> g_word_in_handler{0};
void nested_reader(int) {
  rcu::ReadGuard g(g_rec_for_signal);
  g_word_in_handler = g_rec_for_signal->rcu_word.load();
}

TEST_F(Rcu, SignalHandlerNestsOnTheInterruptedSection) {
  g_rec_for_signal = current_record();
  struct sigaction sa {
  }, old{};
  sa.sa_handler = nested_reader;
  sigaction(SIGUSR1, &sa, &old);
  uint64_t outer_word;
  {
    rcu::ReadGuard g(g_rec_for_signal);
    outer_word = g_rec_for_signal->rcu_word.load();
    raise(SIGUSR1);
    EXPECT_EQ(g_rec_for_signal->rcu_word.load(), outer_word) << "the handler did not restore it";
  }
  EXPECT_EQ(g_word_in_handler.load(), outer_word + 1);
  EXPECT_EQ(g_rec_for_signal->rcu_word.load(), 0u);
  sigaction(SIGUSR1, &old, nullptr);
}

// defer(): what a writer that cannot wait hands over is freed only once every read section that
// was running at the hand-over has ended, by a later reclaim() (which never waits) or
// synchronize().
TEST_F(Rcu, DeferredFreeWaitsForReadersThatWereRunning) {
  std::atomic<bool> in_section{false}, leave{false};
  std::thread reader([&] {
    ThreadRecord *rec = current_record();
    rcu::ReadGuard g(rec);
    in_section = true;
    while (!leave.load()) std::this_thread::yield();
  });
  while (!in_section.load()) std::this_thread::yield();
  std::atomic<int> freed{0};
  rcu::defer([&] { freed.fetch_add(1); });
  EXPECT_EQ(rcu::reclaim(false), 1u);  // the reader is still in its section: kept
  EXPECT_EQ(freed.load(), 0);
  leave = true;
  reader.join();
  EXPECT_EQ(rcu::reclaim(false), 0u);
  EXPECT_EQ(freed.load(), 1);
}

TEST_F(Rcu, DeferredFreeDoesNotWaitForLaterReaders) {
  std::atomic<bool> in_section{false}, leave{false};
  std::atomic<int> freed{0};
  rcu::defer([&] { freed.fetch_add(1); });
  std::thread reader([&] {  // begins after the hand-over: cannot have seen the state
    ThreadRecord *rec = current_record();
    rcu::ReadGuard g(rec);
    in_section = true;
    while (!leave.load()) std::this_thread::yield();
  });
  while (!in_section.load()) std::this_thread::yield();
  EXPECT_EQ(rcu::reclaim(false), 0u);
  EXPECT_EQ(freed.load(), 1);
  leave = true;
  reader.join();
}

// The dynamic linker's hook defers from inside its own thread's read section: with
// self_quiescent, that section does not hold the free back (it cannot reference the state).
TEST_F(Rcu, ReclaimInsideOwnReadSectionWithSelfQuiescent) {
  std::atomic<int> freed{0};
  ThreadRecord *rec = current_record();
  {
    rcu::ReadGuard g(rec);
    rcu::defer([&] { freed.fetch_add(1); });
    EXPECT_EQ(rcu::reclaim(false), 1u);
    EXPECT_EQ(freed.load(), 0);
    EXPECT_EQ(rcu::reclaim(true), 0u);
    EXPECT_EQ(freed.load(), 1);
  }
}

TEST_F(Rcu, SynchronizeRunsDeferredFrees) {
  std::atomic<int> freed{0};
  rcu::defer([&] { freed.fetch_add(1); });
  rcu::defer([&] { freed.fetch_add(1); });
  rcu::synchronize();
  EXPECT_EQ(freed.load(), 2);
  EXPECT_EQ(rcu::reclaim(false), 0u);
}

}  // namespace
}  // namespace usprobe
