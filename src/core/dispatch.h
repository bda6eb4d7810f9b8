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
// At a function's entry, `landing` is the trampoline's return point (arch.h, return probes): when
// dispatch takes the call's return it returns kDispatchReturnProbe, and the trampoline calls the
// function from there.
enum : int { kDispatchDone = 0, kDispatchNeedsVectorSave = 1, kDispatchReturnProbe = 2 };
extern "C" int usprobe_dispatch(usprobe::arch::Regs *regs, const usprobe::Probe *probe,
                                int vector_saved, uint64_t landing);

// Called by the shared return code (arch::make_return_trampoline) with the return registers. Pops
// this thread's return instance, runs the return handlers and returns the original return
// address; or, like usprobe_dispatch, kDispatchNeedsVectorSave before doing anything when a
// handler needs the vector state and `vectors` (the saved vector return registers) is null.
extern "C" uint64_t usprobe_return_dispatch(usprobe::arch::Regs *regs, const void *vectors);
