// Slots: each thread that hits a probe writes its counts (and, in trace mode, its events) into a
// slot of its own in the region (protocol/protocol.h, "Slots").
#pragma once

#include <atomic>
#include <cstdint>

#include "agent/region.h"
#include "protocol/protocol.h"

namespace usprobe::agent {

// This thread's slot, or nullptr before its first hit. Initial-exec TLS: one %fs-relative load on
// the hit path, never __tls_get_addr (the agent is preloaded, or dlopened early enough to get
// static TLS from the loader's surplus). Reset in a forked child, whose thread must take a slot
// tagged with the child's pid.
extern constinit thread_local SlotHeader *t_slot __attribute__((tls_model("initial-exec")));
// The session (g_region.session) whose region holds t_slot (and t_slot_at_fork). In attach mode a
// session ends, its region is unmapped and a later session maps another: a thread's slot from an
// earlier session points into memory that is gone, and nothing can reach into every thread's TLS
// to clear it. So the hit path compares the numbers (a load and a compare, no lock, no
// read-modify-write) and a thread whose slot is stale takes a new one on the slow path.
extern constinit thread_local uint32_t t_slot_session __attribute__((tls_model("initial-exec")));

// Inside fork(): set on the forking thread by the agent's prepare handler and cleared by its
// parent or child handler (agent.cc). The program's own work in between (its other fork handlers,
// _Fork, libc's malloc and stdio locking around it) is counted like any other; but after the
// split, the same thread-local state serves two processes, and a hit cannot tell which it is in
// without asking the kernel. So in between, t_slot is null (every hit takes thread_slot's slow
// path), the parent's slot waits in t_slot_at_fork, and each hit asks for its pid (fork_slot()).
extern constinit thread_local bool t_forking __attribute__((tls_model("initial-exec")));
extern constinit thread_local SlotHeader *t_slot_at_fork __attribute__((tls_model("initial-exec")));

// The first hit of a thread: takes a free slot, or returns the overflow slot when none is free.
// Runs on the hit path (compiled with -mgeneral-regs-only): no lock, no allocation, no libc; one
// raw gettid system call (see slots.cc).
SlotHeader *claim_slot();

// vfork and its kind. The child of vfork (and of posix_spawn, system and popen, which clone with
// CLONE_VM | CLONE_VFORK) runs in its parent's memory, on the parent thread's TLS, until it execs
// or exits: t_slot there is the parent's, and so would be the pid and tid of its hits. The agent
// interposes those calls (vfork.cc), and each sets t_vfork_parent to the calling thread's tid
// first. While it is set, a hit asks the kernel who it is (vfork_slot, in slots.cc): the child
// gets a slot of its own (pid and tid its own), kept in t_vfork_slot; the parent, back after its
// child exec'd or exited, clears it. Other hits pay one TLS load and a branch.
extern constinit thread_local int32_t t_vfork_parent __attribute__((tls_model("initial-exec")));
SlotHeader *vfork_slot();

// thread_slot's slow path: a thread's first hit in this session, or a hit inside fork()
// (t_forking), which also makes a raw getpid system call: in the parent it counts into the parent's
// slot; in the child, whose only thread this is, it tags the child's slots with the child's pid and
// takes one.
SlotHeader *first_or_fork_slot();

// Whether t_slot is a slot of the current session's region.
inline bool thread_slot_current() {
  return t_slot != nullptr && t_slot_session == g_region.session;
}

inline SlotHeader *thread_slot() {
  if (__builtin_expect(t_vfork_parent != 0, 0)) return vfork_slot();
  SlotHeader *s = t_slot;
  if (__builtin_expect(s == nullptr || t_slot_session != g_region.session, 0))
    s = first_or_fork_slot();
  return s;
}

// Adds n to a counter of this thread's own slot, whose only writer it is: a relaxed load and
// store, no read-modify-write (the CLI reads with relaxed loads and, once the thread is gone,
// zeroes it).
inline void owned_add(std::atomic<uint64_t> &counter, uint64_t n) {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

// Adds n to a counter of slot s, which may be the overflow slot. That one has many writers:
// fetch_add, so that no count is lost.
inline void slot_add(SlotHeader *s, std::atomic<uint64_t> &counter, uint64_t n) {
  if (__builtin_expect(s == g_region.overflow, 0))
    counter.fetch_add(n, std::memory_order_relaxed);
  else
    owned_add(counter, n);
}

// For handlers that write more than counters (trace events, stacks), which the overflow slot's
// many writers could not share: when s is the overflow slot, counts the hit and its loss there
// (exactly, with fetch_add) and returns true; the handler then stops.
inline bool overflow_hit(SlotHeader *s, std::atomic<uint64_t> &hits,
                         std::atomic<uint64_t> &missed) {
  if (__builtin_expect(s != g_region.overflow, 1)) return false;
  hits.fetch_add(1, std::memory_order_relaxed);
  missed.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// After an exec: the slot of the thread that called exec (same pid, and the tid this thread now
// has) still looks alive to the CLI, so it is marked kSlotOrphan for the CLI to drain and free.
// Call before attaching, while no thread of this image owns a slot.
void mark_exec_orphans(int32_t pid, int32_t tid);

}  // namespace usprobe::agent
