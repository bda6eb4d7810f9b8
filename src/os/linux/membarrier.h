// membarrier(2): the two barriers the core needs from the kernel.
//
//  - sync_core(): after cross-modifying code, every thread of this process has executed a
//    serializing instruction before it returns, so no core runs stale bytes of a patched site.
//  - memory_barrier(): a full memory barrier on every running thread of this process. RCU uses it
//    so that readers need only compiler barriers (see core/rcu.h).
#pragma once

#include "core/error.h"

namespace usprobe::os {

// Registers this process for both commands; idempotent; thread-safe.
Result<void> membarrier_init();
void membarrier_sync_core();
void membarrier_memory_barrier();

}  // namespace usprobe::os
