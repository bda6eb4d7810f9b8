// The hit path: the consumers the agent attaches, one per probe, with the probe's index as `user`.
// Both run on the thread that hit the probe, inside the engine's dispatch, and are built with
// -mgeneral-regs-only (attached with USPROBE_GENERAL_REGS_ONLY: the trampoline does not save the
// vector state for them).
#pragma once

#include <atomic>

#include "usprobe/usprobe.h"

namespace usprobe::agent {

// Count mode: hits[probe] += 1 in this thread's slot. With g_counter_path_homes, also sets the
// thread's counter home (core/thread_record.h) to its slot's hits, when the slot is its own for
// good: the engine's counter path then counts the probes alone at their functions into it
// (agent.cc, count_in_the_engine).
void count_handler(usprobe_hit *hit, void *user);
extern std::atomic<bool> g_counter_path_homes;
extern std::atomic<uint64_t> g_counter_tag;  // the session's tag for homes (agent.cc)
// Trace mode: an Event (time, thread, arguments, `%s` strings) in this thread's ring, and
// hits[probe] += 1; when the ring is full the event is dropped and missed[probe] += 1.
void trace_handler(usprobe_hit *hit, void *user);
// Trace mode, a USDT probe (plan location "usdt:..."): as trace_handler, with argN the argument N
// of the hit site's note (usprobe_usdt_arg) instead of a register.
void trace_usdt_handler(usprobe_hit *hit, void *user);
// A return probe's entry: keeps the arguments and the time (rdtsc) in the call's session, those
// its plan asks for (kPlanEntryArgs, kPlanEntryTime).
void trace_return_entry_handler(usprobe_hit *hit, void *user);
// Its return: an Event with the entry's arguments, a ReturnTail (the return value, %rax, and the
// entry's time) and the strings of both, as trace_handler writes them.
void trace_return_handler(usprobe_hit *hit, void *user);

// Latency mode, at a function's entry: hits[probe] += 1, and the time (rdtsc) in the call's
// session. With g_counter_path_homes, sets the thread's counter home as count_handler does: the
// engine then times the calls of the probes alone at their functions itself, into the same
// counters and histograms as these handlers (agent.cc, attach_all's ExternalTimer).
void latency_entry_handler(usprobe_hit *hit, void *user);
// Latency mode, at its return: the call's duration, in nanoseconds, into this thread's histogram of
// the probe (protocol.h, "Latency mode").
void latency_return_handler(usprobe_hit *hit, void *user);

}  // namespace usprobe::agent
