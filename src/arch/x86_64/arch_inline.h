// x86-64's inline part of the arch contract (core/arch.h includes it): register accessors, own-word
// arithmetic and the clock that the hit path uses on every hit, where an out-of-line call would
// cost more than the work.
#pragma once

#include <atomic>
#include <cstdint>

#include "arch/x86_64/regs.h"

namespace usprobe::arch {

inline uint64_t hit_ip(const Regs &r) {
  return r.rip;
}
inline uint64_t hit_sp(const Regs &r) {
  return r.rsp;
}
inline uint64_t *return_address_slot(const Regs &r) {
  return reinterpret_cast<uint64_t *>(r.rsp);  // at a function's first instruction
}
inline uint64_t returned_from_sp(const Regs &r) {
  return r.rsp - 8;  // `ret` popped the return address from there
}

// Adds one to a word that only this thread writes, in one instruction (not locked): a signal
// handler of this thread that adds to it too is never lost between a load and a store, and other
// threads read it whole. ThreadSanitizer builds see a relaxed load and store.
inline void increment_own_word(uint64_t &word) {
#if defined(__SANITIZE_THREAD__)
  std::atomic_ref<uint64_t> w(word);
  w.store(w.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
#else
  asm volatile("incq %0" : "+m"(word));
#endif
}
// Adds n to such a word, in one instruction too.
inline void add_own_word(uint64_t &word, uint64_t n) {
#if defined(__SANITIZE_THREAD__)
  std::atomic_ref<uint64_t> w(word);
  w.store(w.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
#else
  asm volatile("addq %1,%0" : "+m"(word) : "r"(n));
#endif
}

// The time stamp counter: ticks of a clock that the cores share (the engine's timers,
// core/probe.h's ExternalTimer, count in these).
inline uint64_t timestamp() {
  return __builtin_ia32_rdtsc();
}

}  // namespace usprobe::arch
