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
struct ThreadReturns;

constexpr uint32_t kDepthInternal = 2;  // ThreadReturns::depth

struct alignas(64) ThreadRecord {
  // core/rcu.h: 0 when quiescent, else (epoch << 8) | nesting. Written only by the owner thread
  // (including its signal handlers), read by grace-period waiters.
  std::atomic<uint64_t> rcu_word{0};
  // Thread id of the owner; 0 when the record is free. Set by the owner with a CAS from 0.
  std::atomic<pid_t> tid{0};
  // counters[kCounterWords * slot + kHits, kMissed, kReturns]. Written by the owner only
  // (relaxed load + relaxed store, no read-modify-write); summed by others with relaxed loads.
  uint64_t *counters = nullptr;
  // The memory of the owner's return stack (ThreadReturns), return_depth instances, kept with the
  // record for the next thread that takes it.
  ReturnInstance *returns = nullptr;
  uint64_t return_depth = 0;
  // The owner's ThreadReturns, in its TLS: for retire.cc, which reads another thread's return
  // stack by a copy that fails safely once the thread is gone.
  std::atomic<const ThreadReturns *> owner_returns{nullptr};
  ThreadRecord *next = nullptr;  // the list of all records; immutable once published
};

// This thread's return stack and dispatch depth (ThreadLocals::returns): the return paths
// (arch/x86_64/trampoline.cc) reach every field at its %fs-relative offset, with no register
// holding the record. Written by the owner only (its signal handlers included); other threads
// read only return_top, by a copy that fails safely (retire.cc, ThreadRecord::owner_returns). A
// thread that takes a record starts with an empty stack over the record's memory
// (register_current_thread).
struct ThreadReturns {
  // Pending return probes, a stack of return_depth instances (core/return_stack.h); entries
  // [0, return_top) are live.
  // return_top and depth are one 64-bit word, depth the high half, and return_depth one too: the
  // return paths tell "outside handlers, with room" by one compare, word < return_depth.
  uint32_t return_top = 0;
  // Dispatch depth of this thread: nonzero while a handler of this thread runs.
  // kDepthInternal while usprobe's own work runs in a handler (following the dynamic linker): hits
  // there are not the program's, and are neither counted nor missed.
  std::atomic<uint32_t> depth{0};
  uint64_t return_depth = 0;
  ReturnInstance *returns = nullptr;
  // Which stack the thread runs on (return_stack.h, "Stacks"): 0 for its own, else the address of
  // the ucontext_t it last switched to.
  uint64_t stack_key = 0;
};

// The counter path: the code at a function entry that counts a probe whose only consumer is one
// counter without calling anything (Probe::counter_word). It reads two words, this thread's
// counter base (t_thread.counter_path.base) and the probe's counter word, adds them, and increments
// the word at kCounterBias past the sum:
//
//   base          where this thread's counters are, while it runs no handler; else 0. Its home
//                 (t_thread.counter_path.home) is the engine's counters of the thread's record (set
//                 on its first hit), or, for counters kept elsewhere (counter_path_external()),
//                 what their owner sets with set_counter_home(); 0 for none. A home below
//                 kCounterBias is none: the bias trick could not tell it from 0.
//   counter word  -kCounterBias + the byte offset of the counter from the base, or 0.
//
// The sum carries out of 64 bits exactly when both are set (base >= kCounterBias > offset): one
// `add` and one `jnc` tell the counter path from the full path, which counts everything else.
// Zeroing the base inside handlers is what makes a hit there a miss, as the full path counts it.
constexpr uint64_t kCounterBias = uint64_t{1} << 30;
static_assert(sizeof(uint64_t) * kCounterWords * kMaxConsumerSlots < kCounterBias);
// The word of a counter `offset` bytes from the base.
inline uint64_t counter_word_at(uint64_t offset) {
  return (0 - kCounterBias) + offset;
}
// Tags, for counters kept outside the engine whose owner comes and goes (the agent's sessions on a
// running process, whose regions are unmapped at their end while threads' homes still point
// there, and no thread's TLS can be reached to clear them): a home may carry its owner's tag above
// the address bits, home = address | tag << kCounterTagShift, and a word the same tag subtracted,
// counter_word_at(offset) - (tag << kCounterTagShift). The sum still carries exactly when both are
// set and the tags are equal (address + offset >= kCounterBias); a home of an older owner (a
// smaller tag: user addresses are below 2^47) does not carry, and the hit takes the full path,
// which sets the home again. Tag 0 is the untagged engine's own.
constexpr unsigned kCounterTagShift = 47;
constexpr uint64_t kMaxCounterTag = (uint64_t{1} << (64 - kCounterTagShift)) - 1;
inline uint64_t tagged_counter_word(uint64_t offset, uint64_t tag) {
  return counter_word_at(offset) - (tag << kCounterTagShift);
}
inline uint64_t tagged_counter_home(uint64_t address, uint64_t tag) {
  return address < (uint64_t{1} << kCounterTagShift) ? address | (tag << kCounterTagShift) : 0;
}
// The word of an engine consumer's hits counter, and back.
inline uint64_t counter_word(uint32_t slot) {
  return counter_word_at(sizeof(uint64_t) * (kCounterWords * slot + kHits));
}
inline uint32_t counter_word_slot(uint64_t word) {
  return static_cast<uint32_t>((word + kCounterBias) / sizeof(uint64_t) / kCounterWords);
}

// This thread's counter path state (ThreadLocals::counter_path): the trampolines read `base` at its
// %fs-relative offset.
struct CounterPathState {
  uint64_t base = 0;      // what the counter path adds: `home`, or 0 inside handler sections
  uint64_t home = 0;      // the base outside handler sections
  uint64_t sink = 0;      // nonzero: the base everywhere (CounterPathSink)
  uint32_t sections = 0;  // CounterPathOff scopes open on this thread (signal handlers' included)
  uint64_t current() const { return sink ? sink : sections ? 0 : home; }
};
// This thread's TLS: its record (set on its first hit), its counter path's state and its return
// stack. Initial-exec: one %fs-relative load on the hit path, never __tls_get_addr; constinit: no
// dynamic initialisation, so no TLS wrapper call on the hit path. One block: a
// position-independent library reaches initial-exec TLS through an offset it loads from its GOT,
// once for each block a function touches.
struct ThreadLocals {
  ThreadRecord *record = nullptr;
  CounterPathState counter_path;
  ThreadReturns returns;
};
extern constinit thread_local ThreadLocals t_thread __attribute__((tls_model("initial-exec")));

// While this thread runs a handler (or usprobe's own work), the counter path is off: hits go to
// the full path, which counts them as missed (or not at all). Nests, as handler sections do in
// signal handlers: the last one to close turns the path back on, to the home as it is then.
class CounterPathOff {
 public:
  CounterPathOff() {
    CounterPathState &s = t_thread.counter_path;
    ++s.sections;
    s.base = s.sink;
    // The counter path of this thread (a signal handler's hit) sees 0 before the handler runs.
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  ~CounterPathOff() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    CounterPathState &s = t_thread.counter_path;
    --s.sections;
    s.base = s.current();
  }
  CounterPathOff(const CounterPathOff &) = delete;
  CounterPathOff &operator=(const CounterPathOff &) = delete;
};

// While it lives, this thread's counter path counts into `sink` (a home: a tagged address above
// kCounterBias, of a block as large as the counters' offsets reach, that no one reads), inside
// handler sections too. For usprobe's own work that calls probed functions whose hits are not the
// program's, and would each take the full path only to be dropped there (the agent's attach, once
// its first sites are patched, allocates and frees). Not nested; a signal handler's hits on this
// thread meanwhile count into the sink too.
class CounterPathSink {
 public:
  explicit CounterPathSink(uint64_t sink) {
    CounterPathState &s = t_thread.counter_path;
    s.sink = sink >= kCounterBias ? sink : 0;
    s.base = s.current();
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  ~CounterPathSink() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    CounterPathState &s = t_thread.counter_path;
    s.sink = 0;
    s.base = s.current();
  }
  CounterPathSink(const CounterPathSink &) = delete;
  CounterPathSink &operator=(const CounterPathSink &) = delete;
};

// Counters kept outside the engine (the agent's, in memory its command reads): the engine's own
// built-in counters then never take the counter path, a thread's first hit sets no home, and the
// counters' owner sets each thread's home itself. Call before the first attach.
void counter_path_external();
bool counter_path_is_external();
// This thread's home (0: the counter path off for it until set again). Takes effect at once
// outside handler sections, else when the last one closes. Inline: handlers built with
// -mgeneral-regs-only call it, and so it is compiled as they are.
inline void set_counter_home(uint64_t home) {
  CounterPathState &s = t_thread.counter_path;
  s.home = home >= kCounterBias ? home : 0;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  s.base = s.current();
}

// Slow path of the first hit of a thread: take a free record or make one. Async-signal-safe.
// Returns nullptr only when memory cannot be mapped (the hit is then not counted).
ThreadRecord *register_current_thread();

inline ThreadRecord *current_record() {
  ThreadRecord *r = t_thread.record;
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
