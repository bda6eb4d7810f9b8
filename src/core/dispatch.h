// dispatch: the C++ function every trampoline calls. It runs the consumers of one probe.
#pragma once

#include "core/arch.h"

namespace usprobe {
struct Probe;
}

// Called by trampolines with the saved registers and the site's probe. `vector_saved` says whether
// the trampoline saved the vector state; without it dispatch may only count (it is compiled with
// -mgeneral-regs-only), so when it needs more (a callback to run, or this thread's first hit, which
// calls into libc) it returns kDispatchNeedsVectorSave before doing anything, and the trampoline
// saves the state and calls again. Otherwise it returns kDispatchDone.
//
// At a function's entry, `landing` and `landing_counted` are the trampoline's two return points
// (arch.h, return probes): when dispatch takes the call's return it returns kDispatchReturnProbe,
// and the trampoline calls the function from `landing`, whose return goes to the full return code;
// or, when no consumer has a return handler, kDispatchReturnCounted, and the call is made from
// `landing_counted`, whose return tries usprobe_return_fast first.
enum : int {
  kDispatchDone = 0,
  kDispatchNeedsVectorSave = 1,
  kDispatchReturnProbe = 2,
  kDispatchFull = 3,  // usprobe_entry_fast: not handled, nothing done; take the full path
  kDispatchReturnCounted = 4,
};
extern "C" int usprobe_dispatch(usprobe::arch::Regs *regs, const usprobe::Probe *probe,
                                int vector_saved, uint64_t landing, uint64_t landing_counted);

// The trampolines' fast paths, for probes whose consumers are built-in counters, or entry handlers
// that read no register (Probe::no_entry_handlers): called with only the caller-saved registers
// saved, no Regs view. usprobe_entry_fast: `slot` is where the return address is (the function's
// entry %rsp), `ip` the probed address; returns kDispatchDone, kDispatchReturnCounted (from
// `landing_counted`), kDispatchReturnProbe (from `landing`), or kDispatchFull having done nothing.
// usprobe_return_fast: `slot` is where the returned-from return address was; returns the original
// return address, or 0 having done nothing (then the full return code runs).
extern "C" int usprobe_entry_fast(const usprobe::Probe *probe, const uint64_t *slot, uint64_t ip,
                                  uint64_t landing_counted, uint64_t landing);
extern "C" uint64_t usprobe_return_fast(uint64_t slot);

// Called by the shared return code (arch::make_return_trampoline) with the return registers. Pops
// this thread's return instance, runs the return handlers and returns the original return
// address; or, like usprobe_dispatch, kDispatchNeedsVectorSave before doing anything when a
// handler needs the vector state and `vectors` (the saved vector return registers) is null.
extern "C" uint64_t usprobe_return_dispatch(usprobe::arch::Regs *regs, const void *vectors);
