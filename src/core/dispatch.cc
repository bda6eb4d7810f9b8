#include "core/dispatch.h"

#include "core/probe.h"
#include "core/rcu.h"
#include "core/thread_record.h"

using namespace usprobe;

// The hit path. It must never lock, allocate, make a system call (beyond a thread's first hit,
// which registers the thread), or write memory that another thread writes: every store below goes
// to this thread's own record.
extern "C" void usprobe_dispatch(arch::Regs *regs, const Probe *probe) {
  ThreadRecord *rec = current_record();
  if (__builtin_expect(rec == nullptr, 0)) return;
  uint64_t *counters = rec->counters;

  if (rec->depth.load(std::memory_order_relaxed) != 0) {
    // A hit while a handler of this thread runs (the handler, or a signal handler that interrupted
    // it, executed a probed instruction): count it as missed and skip the consumers.
    rcu::ReadGuard guard(rec);
    if (const ConsumerArray *a = probe->consumers.load(std::memory_order_acquire))
      for (uint32_t i = 0; i < a->count; ++i) bump(counters[2 * a->entries[i].slot + 1]);
    return;
  }
  rec->depth.store(1, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);  // a signal handler on this thread sees it
  {
    rcu::ReadGuard guard(rec);
    // Acquire pairs with the release store that published the array (Registry::publish).
    if (const ConsumerArray *a = probe->consumers.load(std::memory_order_acquire)) {
      usprobe_hit hit{regs, probe};
      for (uint32_t i = 0; i < a->count; ++i) {
        const ConsumerEntry &c = a->entries[i];
        bump(counters[2 * c.slot]);
        if (c.on_entry) c.on_entry(&hit, c.user);
      }
    }
  }
  std::atomic_signal_fence(std::memory_order_seq_cst);
  rec->depth.store(0, std::memory_order_relaxed);
}
