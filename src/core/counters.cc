#include "core/counters.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>
#include <vector>

#include "core/os.h"
#include "core/thread_record.h"

namespace usprobe::counters {
namespace {

// Guards slot allocation, the retired totals and folding; readers of counts take it so that a
// fold in progress is never seen half done. The hit path never takes it.
std::mutex g_mutex;
std::vector<uint32_t> g_free;   // freed slots, reused first
uint32_t g_next = 0;            // slots [0, g_next) have been handed out at least once
std::vector<bool> g_in_use;     // by slot
std::vector<Totals> g_retired;  // by slot: counts of threads that have exited

uint64_t load(const uint64_t &c) {
  return std::atomic_ref<const uint64_t>(c).load(std::memory_order_relaxed);
}
void zero(uint64_t &c) {
  std::atomic_ref<uint64_t>(c).store(0, std::memory_order_relaxed);
}

}  // namespace

std::optional<uint32_t> alloc_slot() {
  std::lock_guard lock(g_mutex);
  uint32_t slot;
  if (!g_free.empty()) {
    slot = g_free.back();
    g_free.pop_back();
  } else {
    if (g_next == kMaxConsumerSlots) return std::nullopt;
    slot = g_next++;
    g_in_use.resize(g_next);
    g_retired.resize(g_next);
  }
  g_in_use[slot] = true;
  return slot;
}

void free_slot(uint32_t slot) {
  std::lock_guard lock(g_mutex);
  // No thread writes this slot any more (the caller waited for a grace period), so zeroing it
  // everywhere leaves it clean for its next consumer.
  for (ThreadRecord *r = all_records(); r; r = r->next) {
    for (uint32_t w = 0; w < kCounterWords; ++w) zero(r->counters[kCounterWords * slot + w]);
  }
  g_retired[slot] = {};
  g_in_use[slot] = false;
  g_free.push_back(slot);
}

Totals read(uint32_t slot) {
  std::lock_guard lock(g_mutex);
  Totals t = g_retired[slot];
  for (ThreadRecord *r = all_records(); r; r = r->next) {
    t.hits += load(r->counters[kCounterWords * slot + kHits]);
    t.missed += load(r->counters[kCounterWords * slot + kMissed]);
    t.returns += load(r->counters[kCounterWords * slot + kReturns]);
  }
  return t;
}

void reclaim_dead_threads() {
  std::lock_guard lock(g_mutex);
  for (ThreadRecord *r = all_records(); r; r = r->next) {
    pid_t tid = r->tid.load(std::memory_order_acquire);
    if (tid == 0) continue;
    if (!os::thread_exited(tid)) continue;
    for (uint32_t s = 0; s < g_next; ++s) {
      if (!g_in_use[s]) continue;
      g_retired[s].hits += load(r->counters[kCounterWords * s + kHits]);
      g_retired[s].missed += load(r->counters[kCounterWords * s + kMissed]);
      g_retired[s].returns += load(r->counters[kCounterWords * s + kReturns]);
    }
    // Give the pages back; they read as zero when the record is reused.
    madvise(r->counters, sizeof(uint64_t) * kCounterWords * kMaxConsumerSlots, MADV_DONTNEED);
    r->rcu_word.store(0, std::memory_order_relaxed);
    // Release: the record is zeroed before another thread can claim it (its CAS acquires).
    r->tid.store(0, std::memory_order_release);
  }
}

}  // namespace usprobe::counters
