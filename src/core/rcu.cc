#include "core/rcu.h"

#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <mutex>

#include "core/arch.h"
#include "os/linux/membarrier.h"
#include "os/linux/raw_syscall.h"

namespace usprobe::rcu {

std::atomic<uint64_t> g_epoch{1};

namespace {
std::mutex g_gp_mutex;

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
      uint64_t w = r->rcu_word.load(std::memory_order_acquire);
      if (w == 0 || (w >> 8) >= target) break;
      // A thread that died inside a read section (killed from a handler) never ends it.
      if (spin % 1024 == 1023) {
        pid_t tid = r->tid.load(std::memory_order_relaxed);
        if (tid == 0 || os::thread_exited(tid)) break;
      }
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
}

}  // namespace usprobe::rcu
