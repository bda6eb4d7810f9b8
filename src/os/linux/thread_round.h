// Thread rounds on Linux (core/os.h says what a round is): each other thread is sent a real-time
// signal whose handler runs `fn` on the interrupted context.
//
// A thread blocked in a system call is not signalled (that would interrupt its sleep): its user
// instruction pointer is read from /proc/self/task/TID/syscall and given to `pc_is_safe`; only
// when that says no is the thread signalled. A thread seen running may go to sleep in a wait
// before the signal lands, which fails the wait with EINTR: the handler makes the wait again when
// the code made it with a constant number (arch::restart_wait), as glibc's wrappers do. A thread
// that blocks the round's signal does not answer (signal_guard.h keeps the program from blocking
// it through libc).
#pragma once

#include <ucontext.h>

#include "base/error.h"
#include "core/os.h"

namespace usprobe::os {

// The round's signal, its handler installed (the first call picks it: a real-time signal the
// program leaves at its default). For an injector that must make it deliverable in threads that
// block it (protocol/attach.h).
Result<int> round_signal();

// Called as a handler of the program's returns (signal_guard.cc puts one in front of each): when
// the signal cut a wait short, the EINTR is the program's, and the round's handler must not make
// that wait again, were its signal delivered as the program's handler returns. Async-signal-safe.
void keep_wait_interrupted(ucontext_t *uc);

}  // namespace usprobe::os
