// Stacks mode's consumer (protocol/protocol.h, "Stacks mode"). Unlike the handlers of handlers.h it
// is compiled normally and attached without USPROBE_GENERAL_REGS_ONLY: it calls the unwinder
// (usprobe_hit_stack), which may use any register, so the trampoline must save the vector state
// for it.
#pragma once

#include "usprobe/usprobe.h"

namespace usprobe::agent {

// hits[probe] += 1, and the user stack at the hit (usprobe_hit_stack, at most kMaxStackFrames
// addresses) counted in this thread's stack table (stack_table.h); a new stack that the full table
// cannot take goes to this thread's ring as a StackRecord, and when the ring has no room either,
// it is dropped and missed[probe] += 1.
void stack_handler(usprobe_hit *hit, void *user);

}  // namespace usprobe::agent
