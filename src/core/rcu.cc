#include "core/rcu.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>
#include <mutex>
#include <vector>

#include "core/arch.h"
#include "core/os.h"

namespace usprobe::rcu {

std::atomic<uint64_t> g_epoch{1};

namespace {
std::mutex g_gp_mutex;

struct Deferred {
  uint64_t target;  // the epoch defer() started: a reader word at it or later began after
  std::function<void()> free;
};
std::mutex g_deferred_mutex;  // guards g_deferred; never held while a deferred free runs
std::vector<Deferred> &deferred() {
  static auto *v = new std::vector<Deferred>;  // never destroyed: threads may defer during exit
  return *v;
}

// Whether the record's read section (if any) began at `target` or later. A thread that died
// inside a read section (killed from a handler) never ends it.
bool passed(ThreadRecord *r, uint64_t target, unsigned spin) {
  uint64_t w = r->rcu_word.load(std::memory_order_acquire);
  if (w == 0 || (w >> 8) >= target) return true;
  if (spin % 1024 == 1023) {
    pid_t tid = r->tid.load(std::memory_order_relaxed);
    if (tid == 0 || os::thread_exited(tid)) return true;
  }
  return false;
}

// Runs the deferred frees whose target is at most `done` (every read section older than it has
// ended, and the caller has issued the second membarrier).
void run_deferred(uint64_t done) {
  std::vector<Deferred> ready;
  {
    std::lock_guard lock(g_deferred_mutex);
    auto &v = deferred();
    auto split = std::stable_partition(v.begin(), v.end(),
                                       [done](const Deferred &d) { return d.target > done; });
    std::move(split, v.end(), std::back_inserter(ready));
    v.erase(split, v.end());
  }
  for (Deferred &d : ready) d.free();
}

}  // namespace

void synchronize() {
  std::lock_guard lock(g_gp_mutex);
  // Release: readers that load the new epoch (acquire) see everything published before it.
  uint64_t target = g_epoch.fetch_add(1, std::memory_order_acq_rel) + 1;
  // Partner of every reader's first compiler barrier: after this, a reader that still uses old
  // state has its word visible to us, and a reader that starts later sees the new state.
  os::membarrier_memory_barrier();
  for (ThreadRecord *r = all_records(); r; r = r->next) {
    for (unsigned spin = 0;; ++spin) {
      if (passed(r, target, spin)) break;
      // Read sections last nanoseconds: spin briefly, then sleep (a reader preempted inside
      // one needs its core back, which sched_yield does not reliably give it).
      if (spin < 256) {
        arch::cpu_relax();
      } else {
        timespec ts{0, 20 * 1000};
        nanosleep(&ts, nullptr);
      }
    }
  }
  // Partner of every reader's second compiler barrier: their loads of old state happened before
  // their word went quiescent, and so before the caller frees that state.
  os::membarrier_memory_barrier();
  run_deferred(target);
}

void defer(std::function<void()> free) {
  // Begins a grace period as synchronize() does, without its barrier: a reader that loads the new
  // epoch (acquire, pairs with this release) sees the state unpublished before it. The barrier
  // that makes older readers' words visible is reclaim()'s first.
  uint64_t target = g_epoch.fetch_add(1, std::memory_order_acq_rel) + 1;
  std::lock_guard lock(g_deferred_mutex);
  deferred().push_back({target, std::move(free)});
}

size_t pending() {
  std::lock_guard lock(g_deferred_mutex);
  return deferred().size();
}

size_t reclaim(bool self_quiescent) {
  if (pending() == 0) return 0;
  // As synchronize()'s first barrier: a reader that may still use deferred state has its word
  // visible to the loads below.
  os::membarrier_memory_barrier();
  ThreadRecord *self = self_quiescent ? t_thread.record : nullptr;
  // Every target up to `done` is passed by every record: the oldest running read section's epoch
  // bounds it (a reader at epoch e began after every defer() whose target is <= e).
  uint64_t done = g_epoch.load(std::memory_order_acquire);
  for (ThreadRecord *r = all_records(); r; r = r->next) {
    if (r == self) continue;
    const uint64_t w = r->rcu_word.load(std::memory_order_acquire);
    if (w == 0 || (w >> 8) >= done) continue;
    if (!passed(r, done, 1023)) done = w >> 8;  // (passed: its thread died in the section)
  }
  // Partner of the readers' second compiler barrier, as in synchronize().
  os::membarrier_memory_barrier();
  run_deferred(done);
  return pending();
}

}  // namespace usprobe::rcu
