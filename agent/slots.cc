#include "agent/slots.h"

#include <sys/prctl.h>
#include <sys/syscall.h>

#include <algorithm>
#include <atomic>

#include "os/linux/os_inline.h"

namespace usprobe::agent {

constinit thread_local SlotHeader *t_slot __attribute__((tls_model("initial-exec"))) = nullptr;
constinit thread_local uint32_t t_slot_session __attribute__((tls_model("initial-exec"))) = 0;
constinit thread_local bool t_forking __attribute__((tls_model("initial-exec"))) = false;
constinit thread_local SlotHeader *t_slot_at_fork __attribute__((tls_model("initial-exec"))) =
    nullptr;
constinit thread_local int32_t t_vfork_parent __attribute__((tls_model("initial-exec"))) = 0;

namespace {

// The vfork child's slot and tid (slots.h). In the TLS it shares with its parent, which never
// reads them: a second child of the same thread has another tid and takes a slot of its own.
constinit thread_local SlotHeader *t_vfork_slot __attribute__((tls_model("initial-exec"))) =
    nullptr;
constinit thread_local int32_t t_vfork_tid __attribute__((tls_model("initial-exec"))) = 0;
constinit thread_local uint32_t t_vfork_session __attribute__((tls_model("initial-exec"))) = 0;

SlotHeader *claim_slot_as(int32_t pid, int32_t tid);

}  // namespace

// Runs once per thread, inside whatever probed function the thread hit first: no lock, no
// allocation, no libc call. It makes one system call, a raw gettid (glibc has no call-free way to
// learn the tid), which the hit path allows on a thread's first hit only, as the engine's dispatch
// does when it registers a thread.
SlotHeader *claim_slot() {
  return claim_slot_as(g_region.pid, os::raw_gettid());
}

// The hit path while a vfork is under way (slots.h): one or two raw system calls a hit, in the
// child (until it execs) and on the parent's first hit after it.
SlotHeader *vfork_slot() {
  int32_t tid = os::raw_gettid();
  if (tid == t_vfork_parent) {
    // The parent: its child has exec'd or exited (vfork suspends the parent until then).
    t_vfork_parent = 0;
    t_vfork_slot = nullptr;
    t_vfork_tid = 0;
    return thread_slot_current() ? t_slot : first_or_fork_slot();
  }
  if (tid != t_vfork_tid || !t_vfork_slot || t_vfork_session != g_region.session) {
    t_vfork_tid = tid;
    t_vfork_session = g_region.session;
    t_vfork_slot = claim_slot_as(static_cast<int32_t>(os::raw_syscall6(SYS_getpid)), tid);
  }
  return t_vfork_slot;
}

namespace {

SlotHeader *claim_slot_as(int32_t pid, int32_t tid) {
  for (uint32_t i = 0; i + 1 < g_region.max_slots; ++i) {
    SlotHeader *s = region_slot(i);
    uint32_t expected = kSlotFree;
    if (s->state.load(std::memory_order_relaxed) != kSlotFree) continue;
    // Acquire pairs with the CLI's release store of kSlotFree: its zeroing of the counters and its
    // last tail store happen before this thread's first write to them.
    if (!s->state.compare_exchange_strong(expected, kSlotOwned, std::memory_order_acquire,
                                          std::memory_order_relaxed))
      continue;
    // The thread's name, for the reports' COMM columns: one more raw system call, on the thread's
    // first hit only, like the gettid above.
    char name[16] = {};
    os::raw_syscall6(SYS_prctl, PR_GET_NAME, reinterpret_cast<long>(name));
    uint64_t words[2];
    __builtin_memcpy(words, name, sizeof words);  // two moves: memcpy itself may be probed
    s->comm[0].store(words[0], std::memory_order_relaxed);
    s->comm[1].store(words[1], std::memory_order_relaxed);
    // After the CAS, as protocol.h orders it: the CLI may briefly see an owned slot whose pid and
    // tid are still 0 (it zeroes them when it frees a slot) and leaves such a slot alone. Release:
    // the CLI that sees the pid sees the name; nothing else is published with them.
    s->tid.store(tid, std::memory_order_relaxed);
    s->pid.store(pid, std::memory_order_release);
    // Relaxed: an exec'd image of this process reads it after the exec, which orders it; other
    // processes never need it.
    std::atomic<uint32_t> &bound = g_region.header->slots_bound;
    uint32_t seen = bound.load(std::memory_order_relaxed);
    while (seen < i + 1 && !bound.compare_exchange_weak(seen, i + 1, std::memory_order_relaxed)) {
    }
    return s;
  }
  return g_region.overflow;
}

}  // namespace

SlotHeader *first_or_fork_slot() {
  if (__builtin_expect(t_forking, 0)) {
    // Not cached in t_slot: until the agent's parent or child handler runs, the next hit may be on
    // the other side of the split. fork() itself costs far more than these system calls.
    const auto pid = static_cast<int32_t>(os::raw_syscall6(SYS_getpid));
    if (pid == g_region.pid) {
      // A session cannot start or end inside fork() (the agent's fork handlers hold its session
      // lock), and before_fork left a stale slot out of t_slot_at_fork.
      if (!t_slot_at_fork) {
        t_slot_at_fork = claim_slot();
        t_slot_session = g_region.session;
      }
      return t_slot_at_fork;
    }
    // The child, before the agent's child handler: its only thread. The slot its parent thread
    // owned (t_slot_at_fork, copied by fork) is not its own.
    g_region.pid = pid;
    t_slot_at_fork = nullptr;
    t_forking = false;
  }
  t_slot_session = g_region.session;
  return t_slot = claim_slot();
}

void mark_exec_orphans(int32_t pid, int32_t tid) {
  const uint32_t bound = std::min(g_region.header->slots_bound.load(std::memory_order_relaxed),
                                  g_region.max_slots - 1);
  for (uint32_t i = 0; i < bound; ++i) {
    SlotHeader *s = region_slot(i);
    if (s->state.load(std::memory_order_acquire) != kSlotOwned) continue;
    if (s->pid.load(std::memory_order_relaxed) != pid ||
        s->tid.load(std::memory_order_relaxed) != tid)
      continue;
    // Release pairs with the CLI's acquire load of the state: the slot's counts, written by the
    // previous image before its exec, are complete. A CAS, not a store: the CLI may be freeing it.
    uint32_t expected = kSlotOwned;
    s->state.compare_exchange_strong(expected, kSlotOrphan, std::memory_order_release,
                                     std::memory_order_relaxed);
  }
}

}  // namespace usprobe::agent
