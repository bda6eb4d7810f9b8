#include "core/dispatch.h"

#include "core/probe.h"
#include "core/rcu.h"
#include "core/thread_record.h"

using namespace usprobe;

// Out of line: the indirect calls would otherwise make every hit save callee-saved registers.
__attribute__((noinline)) static void run_callbacks(const ConsumerArray *a, arch::Regs *regs,
                                                    const Probe *probe) {
  usprobe_hit hit{regs, probe};
  for (uint32_t i = 0; i < a->count; ++i) {
    const ConsumerEntry &c = a->entries[i];
    if (c.on_entry) c.on_entry(&hit, c.user);
  }
}

// The hit path. It must never lock, allocate, make a system call (beyond a thread's first hit,
// which registers the thread), or write memory that another thread writes: every store below goes
// to this thread's own record.
extern "C" int usprobe_dispatch(arch::Regs *regs, const Probe *probe, int vector_saved) {
  ThreadRecord *rec = t_record;
  if (__builtin_expect(rec == nullptr, 0)) {
    if (!vector_saved) return kDispatchNeedsVectorSave;  // registering calls into libc
    rec = register_current_thread();
    if (!rec) return kDispatchDone;
  }
  uint64_t *counters = rec->counters;

  if (rec->depth.load(std::memory_order_relaxed) != 0) {
    // A hit while a handler of this thread runs (the handler, or a signal handler that interrupted
    // it, executed a probed instruction): count it as missed and skip the consumers.
    rcu::ReadGuard guard(rec);
    if (const ConsumerArray *a = probe->consumers.load(std::memory_order_acquire))
      for (uint32_t i = 0; i < a->count; ++i) bump(counters[2 * a->entries[i].slot + 1]);
    return kDispatchDone;
  }
  int result = kDispatchDone;
  rec->depth.store(1, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);  // a signal handler on this thread sees it
  {
    rcu::ReadGuard guard(rec);
    // Acquire pairs with the release store that published the array (registry's publish()).
    if (const ConsumerArray *a = probe->consumers.load(std::memory_order_acquire)) {
      if (a->wants_vector_state && !vector_saved) {
        result = kDispatchNeedsVectorSave;  // nothing counted yet: the retry counts
      } else {
        for (uint32_t i = 0; i < a->count; ++i) bump(counters[2 * a->entries[i].slot]);
        if (a->has_callbacks) run_callbacks(a, regs, probe);
      }
    }
  }
  std::atomic_signal_fence(std::memory_order_seq_cst);
  rec->depth.store(0, std::memory_order_relaxed);
  return result;
}
