// A thread round: look at where every other thread of this process is, and let a function move it.
//
// Patching a 5-byte jump over instructions that another thread may be stopped between is only safe
// if no thread resumes in the middle of the window. The patcher therefore, after the window's
// first byte holds an int3 (so no thread can enter it any more), runs a round: each other thread
// runs `fn` from a signal handler with its interrupted context, and `fn` moves a thread whose
// instruction pointer lies inside a window to the same instruction in the window's relocated copy.
//
// A thread blocked in a system call is not signalled (that would interrupt its sleep): its user
// instruction pointer is read from /proc/self/task/TID/syscall and given to `pc_is_safe`; only
// when that says no is the thread signalled. A thread that does not answer within the timeout
// (it blocks the round's signal, or it is stopped) is counted as unreached: the caller must then
// not write anything that relies on it.
#pragma once

#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/error.h"

namespace usprobe::os {

// Async-signal-safe. Returns the thread's interrupted stack pointer (the caller scans the stack
// above it for signal frames: see RoundResult::stack_pointers).
using RoundFn = uint64_t (*)(ucontext_t *uc, void *arg);
using PcCheck = bool (*)(uint64_t pc, void *arg);  // true when a thread stopped at pc needs no fn

struct RoundResult {
  size_t signalled = 0;  // threads that ran fn
  size_t blocked = 0;    // threads in a system call at a safe pc, left alone
  size_t unreached = 0;  // threads that did not answer in time
  // The stack pointer of every thread looked at (signalled: as fn returned it; blocked: from
  // /proc). A thread may be inside a signal handler whose frame, higher on its stack, holds the
  // context it will return to: only the stack says where that is.
  std::vector<uint64_t> stack_pointers;
};

// Threads of this process (the caller included) whose blocked-signal mask holds `sig`, from
// /proc/self/task/*/status.
std::vector<int> threads_blocking(int sig);

// The round's signal, its handler installed (the first call picks it: a real-time signal the
// program leaves at its default). For an injector that must make it deliverable in threads that
// block it (protocol/attach.h).
Result<int> round_signal();

Result<RoundResult> run_thread_round(RoundFn fn, PcCheck pc_is_safe, void *arg,
                                     int timeout_ms = 2000);

}  // namespace usprobe::os
