// Retiring trampolines and probes: freeing them only when no thread can still use them.
//
// A grace period is not enough for a trampoline. It covers dispatch and the handlers (they run in
// read sections), but not the code around them: a thread may sit between a trampoline's first
// instruction and its call to dispatch, or between dispatch's return and the jump back, for as
// long as the scheduler leaves it there; a thread sent by the trap handler is on its way into one
// from a signal frame; and a function entered through a return probe's trampoline returns into it
// (its landing) whenever it returns, however long that takes. What proves a trampoline idle, once
// its site is unpatched (no jump or int3 leads into it any more: the patcher synced every core)
// and a grace period has passed since:
//
//  1. no thread's pending return instance has its landing there or names its probe (the return
//     stacks of every live thread, read from their records);
//  2. no thread's instruction pointer is inside it (a thread round: every other thread is
//     signalled, or seen blocked in a system call, which no trampoline makes);
//  3. no word of any thread's stack, from its stack pointer up to kStackScan bytes, points into
//     it: a signal frame whose saved instruction pointer the trap handler set to the trampoline
//     (the handler stores it inside its read section, so after the grace period it is there), or
//     a return address into it from a call that is still running.
//
// Threads that neither answer nor block in a system call make the answer "not now". The caller
// tries again at a later detach; meanwhile the trampolines stay (memory, not safety).
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "base/error.h"
#include "core/arch.h"

namespace usprobe {
struct Probe;
}

namespace usprobe::retire {

using Range = std::pair<uint64_t, uint64_t>;  // [start, end)

// Bytes of each thread's stack scanned above its stack pointer (point 3).
constexpr size_t kStackScan = 64 * 1024;

// Whether no thread can still run `code` or return into it, or hold a return instance of one of
// `probes`. Preconditions: the sites are unpatched and a grace period began after that. Blocks
// (a thread round); not from a signal handler or a read section.
bool idle(const std::vector<Range> &code, const std::vector<const Probe *> &probes);

// Retiring a counter slot the counter path counted into (core/thread_record.h): once the probe's
// counter word no longer names it, a thread may still sit between its load of the word and its
// increment, for as long as the scheduler leaves it there, and would count into the slot's next
// consumer. Run right after the words are cleared (with the registry's mutex held, so that the
// trampolines stay), it moves every thread stopped strictly inside one of `windows` (the plans'
// counter windows: their maps send every instruction back to the load) to the window's start,
// where it reads the cleared word; and it looks for signal frames that would resume inside one.
// True when no thread can increment with a word read before the call; false (threads that did not
// answer, or such a frame) leaves the slots to be kept, never reused. Blocks (a thread round).
bool counter_windows_clear(std::span<const arch::WindowMove> windows);

}  // namespace usprobe::retire
