// usprobe's read-copy-update: the hit path reads shared state (consumer arrays, the site table)
// with two plain stores to its own thread record and no fence; writers replace state, wait for a
// grace period, then free the old state.
//
// Why not liburcu: its read side lives in another shared library, behind a PLT call and
// global-dynamic TLS (__tls_get_addr), which the hit-path rules forbid; and its flavours either
// need every thread registered up front (usprobe's threads are the application's) or take a lock
// on a thread's first read. The algorithm is liburcu's urcu-memb with sys_membarrier, reduced:
//
//  reader:  word = (epoch << 8) | 1           (nested: word + 1; restored on exit)
//           compiler barrier; read shared pointers; compiler barrier
//           word = previous value
//  writer:  publish the new pointer (release); epoch += 1; membarrier() (a full barrier on every
//           running thread: it orders each reader's word store before its pointer loads, as
//           a fence would, at the writer's cost instead of the reader's); then wait until every
//           record is quiescent or in a read section that began at the new epoch; membarrier()
//           again so that readers' last loads of old state precede the free.
//
// The single-word state makes the read side safe in signal handlers: a handler that interrupts a
// read section nests on the same word and restores it before returning.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

#include "core/thread_record.h"

namespace usprobe::rcu {

extern std::atomic<uint64_t> g_epoch;

class ReadGuard {
 public:
  explicit ReadGuard(ThreadRecord *r) : r_(r) {
    saved_ = r->rcu_word.load(std::memory_order_relaxed);
    uint64_t word = __builtin_expect(saved_ != 0, 0)
                        ? saved_ + 1
                        // Acquire: a reader that sees the new epoch also sees what was
                        // published before it was bumped (pairs with synchronize()).
                        : (g_epoch.load(std::memory_order_acquire) << 8) | 1;
    r->rcu_word.store(word, std::memory_order_relaxed);
    // Orders the word store before the section's loads; the writer's membarrier makes it a fence.
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  ~ReadGuard() {
    // Release (a plain mov on x86): the section's loads happen before the word goes quiescent;
    // pairs with the acquire load in synchronize(). The writer's second membarrier gives the same
    // order on weaker machines; release is what lets ThreadSanitizer see it.
    r_->rcu_word.store(saved_, std::memory_order_release);
  }
  ReadGuard(const ReadGuard &) = delete;
  ReadGuard &operator=(const ReadGuard &) = delete;

 private:
  ThreadRecord *r_;
  uint64_t saved_;
};

// Wait until every read section that may have seen state published before this call has ended.
// Blocks; must not be called from a read section or a signal handler. Also frees what defer()
// handed over before the call.
void synchronize();

// For writers that cannot wait (the dynamic linker's hook runs inside a read section of its own
// thread, and a thread it would wait for may be blocked on the loader lock it holds): `free` runs
// once every read section that was running when defer() was called has ended, from a later
// reclaim() or synchronize(). Does not block and makes no system call. Unpublish the state first.
void defer(std::function<void()> free);
// How many deferred frees wait.
size_t pending();
// Frees what defer() handed over and whose read sections have all ended; never waits. With
// `self_quiescent`, the calling thread's own read section does not count: only for a caller that
// holds no reference to any deferred state (the hook, which retired that state itself). Two
// membarriers (interrupts for every running thread of the process): writers that defer often
// call it once per batch. Returns how many deferred frees are still waiting.
size_t reclaim(bool self_quiescent);

}  // namespace usprobe::rcu
