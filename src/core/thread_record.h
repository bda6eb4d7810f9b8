// Per-thread state of the hit path: one ThreadRecord per thread that has hit a probe.
//
// A record holds the thread's RCU reader word (core/rcu.h), its dispatch depth (the recursion
// guard) and its counters: one pair (hits, missed) per consumer slot, written only by the owning
// thread and summed by readers of the counts. Nothing on the hit path writes memory that another
// thread writes: that is what lets hits scale with threads.
//
// Records are never freed: they live in mmap'd memory on one list, so a writer can walk them
// without locks, from any context. A record whose thread has died is folded into the retired totals
// and reused (reclaim_dead_threads(), called by writers). A thread registers itself on its first
// hit; that costs a few system calls once and is safe in a signal handler (mmap, CAS, no locks).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>

#include "core/arch.h"

namespace usprobe {

constexpr uint32_t kMaxConsumerSlots = 1u << 20;
// counters[kCounterWords * slot + kHits / kMissed / kReturns]
constexpr uint32_t kCounterWords = 4, kHits = 0, kMissed = 1, kReturns = 2;

struct ReturnInstance;  // core/return_stack.h

constexpr uint32_t kDepthInternal = 2;  // ThreadRecord::depth

struct alignas(64) ThreadRecord {
  // core/rcu.h: 0 when quiescent, else (epoch << 8) | nesting. Written only by the owner thread
  // (including its signal handlers), read by grace-period waiters.
  std::atomic<uint64_t> rcu_word{0};
  // Dispatch depth of this thread: nonzero while a handler of this thread runs. Owner only.
  // kDepthInternal while usprobe's own work runs in a handler (following the dynamic linker): hits
  // there are not the program's, and are neither counted nor missed.
  std::atomic<uint32_t> depth{0};
  // Thread id of the owner; 0 when the record is free. Set by the owner with a CAS from 0.
  std::atomic<pid_t> tid{0};
  // counters[kCounterWords * slot + kHits, kMissed, kReturns]. Written by the owner only
  // (relaxed load + relaxed store, no read-modify-write); summed by others with relaxed loads.
  uint64_t *counters = nullptr;
  // Pending return probes, a stack of return_depth instances (core/return_stack.h); entries
  // [0, return_top) are live. Owner only; a record reused by a new thread starts empty.
  ReturnInstance *returns = nullptr;
  uint32_t return_top = 0;
  uint32_t return_depth = 0;
  // Which stack the thread runs on (return_stack.h, "Stacks"): 0 for its own, else the address of
  // the ucontext_t it last switched to. Owner only.
  uint64_t stack_key = 0;
  ThreadRecord *next = nullptr;  // the list of all records; immutable once published
};

// Initial-exec TLS: one %fs-relative load on the hit path, never __tls_get_addr.
// constinit: no dynamic initialisation, so no TLS wrapper call on the hit path.
extern constinit thread_local ThreadRecord *t_record __attribute__((tls_model("initial-exec")));

// The counter path: the code at a function entry that counts a probe whose only consumer is one
// built-in entry counter (Probe::counter_word) without calling anything. It reads two words, this
// thread's t_counter_base and the probe's counter word, adds them, and increments the word at
// kCounterBias past the sum:
//
//   t_counter_base   the record's `counters` while the thread runs no handler (depth 0), else 0;
//                    also 0 before the thread's first hit, and for a record whose counters lie
//                    below kCounterBias (then the thread always takes the full path).
//   counter word     -kCounterBias + the byte offset of the slot's hits word, or 0.
//
// The sum carries out of 64 bits exactly when both are set (base >= kCounterBias > offset): one
// `add` and one `jnc` tell the counter path from the full path, which counts everything else.
// Zeroing the base inside handlers is what makes a hit there a miss, as the full path counts it.
constexpr uint64_t kCounterBias = uint64_t{1} << 30;
static_assert(sizeof(uint64_t) * kCounterWords * kMaxConsumerSlots < kCounterBias);
inline uint64_t counter_word(uint32_t slot) {
  return (0 - kCounterBias) + sizeof(uint64_t) * (kCounterWords * slot + kHits);
}
inline uint32_t counter_word_slot(uint64_t word) {
  return static_cast<uint32_t>((word + kCounterBias) / sizeof(uint64_t) / kCounterWords);
}
extern constinit thread_local uint64_t t_counter_base __attribute__((tls_model("initial-exec")));

// While this thread runs a handler (or usprobe's own work), the counter path is off: hits go to
// the full path, which counts them as missed (or not at all). Nests, as handler sections do in
// signal handlers: each restores what it found.
class CounterPathOff {
 public:
  CounterPathOff() : saved_(t_counter_base) {
    t_counter_base = 0;
    // The counter path of this thread (a signal handler's hit) sees 0 before the handler runs.
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  ~CounterPathOff() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    t_counter_base = saved_;
  }
  CounterPathOff(const CounterPathOff &) = delete;
  CounterPathOff &operator=(const CounterPathOff &) = delete;

 private:
  uint64_t saved_;
};

// Slow path of the first hit of a thread: take a free record or make one. Async-signal-safe.
// Returns nullptr only when memory cannot be mapped (the hit is then not counted).
ThreadRecord *register_current_thread();

inline ThreadRecord *current_record() {
  ThreadRecord *r = t_record;
  if (__builtin_expect(r == nullptr, 0)) r = register_current_thread();
  return r;
}

// The head of the list of all records (walk with ->next).
ThreadRecord *all_records();

// One-word increment of a per-thread counter: the owner is its only writer, so no atomic
// read-modify-write is needed, and the word is never torn for readers on other threads. One
// instruction where the architecture has it, as the counter path's increment is: a signal handler
// of the owner that counts into the same word (the counter path does, inside a section that only
// counts) is never lost between a load and a store.
inline void bump(uint64_t &counter) {
  arch::increment_own_word(counter);
}

}  // namespace usprobe
