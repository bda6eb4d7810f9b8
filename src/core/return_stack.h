// Return probes (DESIGN.md, "Return probes"): each thread keeps a stack of the calls whose return
// it is waiting for.
//
// At a probed function's entry, dispatch takes the next free instance on the thread's return
// stack, lets the entry handlers fill their session data, keeps the return address in it and
// pushes it. The site's trampoline then calls the function instead of jumping to it, so that the
// return address on the stack becomes the trampoline's landing (arch/x86_64/trampoline.cc), and
// the CPU predicts both returns. When the function returns to the landing, the shared return code
// calls usprobe_return_dispatch: that pops the instance, runs the return handlers and hands back
// the original return address, where the return code returns.
//
// Instances are matched by stack pointer: an instance whose `sp` (where the return address lived)
// lies below the current one belongs to a frame that was left without returning (longjmp,
// siglongjmp): it is dropped, and its returns counted as missed, when a return or a new entry
// passes it. A stack that is full leaves a call unhijacked; that call's return is counted as
// missed. Nothing here allocates: the stack is mapped with the thread's record.
//
// Stacks. That rule holds on one stack only. A thread that switches stacks (swapcontext-style
// coroutines) has calls pending on several, and a suspended coroutine's frames may lie below the
// current stack pointer while still alive. So each instance carries the key of the stack it was
// made on (ThreadReturns::stack_key), and only instances of the current stack are judged by stack
// pointer. The key follows libc's context switches: an entry probe on swapcontext(oucp, ucp)
// (note_context_switch) gives the instances of the stack being left the key `oucp`, where that
// stack's context is saved, and makes `ucp` current; setcontext(ucp) makes `ucp` current. A
// thread starts on key 0. Stack switches that bypass libc (hand-written assembly) are not seen:
// their instances are then judged as if on one stack (README, caveats).
#pragma once

#include <atomic>
#include <cstdint>

#include "usprobe/usprobe.h"

namespace usprobe {

struct Probe;
}
namespace usprobe {

constexpr uint32_t kDefaultReturnDepth = 64;
constexpr uint32_t kMaxReturnDepth = 1024;
// Consumers of one probe whose return handlers get session data; more than that run without.
constexpr uint32_t kMaxSessions = 4;

// What one consumer keeps from a call's entry to its return.
// data: USPROBE_SESSION_WORDS (usprobe.h). An instance is about 350 bytes with it, and a thread's
// return stack (64 deep by default, MAP_NORESERVE: pages count once touched) about 22 KiB.
struct ReturnSession {
  uint32_t slot;  // the consumer's counter slot: identifies it at the return
  uint32_t skip;  // nonzero: its entry handler declined the return (usprobe_session_skip_return)
  uint64_t data[USPROBE_SESSION_WORDS];
};

struct ReturnInstance {
  uint64_t return_address;  // the original one, restored when the call returns
  uint64_t sp;              // where it lived on the stack (%rsp at the function's entry)
  uint64_t entry_ip;        // the probed function's address, for usprobe_hit_ip
  const Probe *probe;
  // The id of the probe's ConsumerArray at the entry; below kFirstConsumerArrayId where a return
  // path wrote the instance (core/dispatch.cc, complete).
  uint64_t array_id;
  uint64_t stack_key;  // the thread's stack_key at the entry
  uint32_t sessions;   // used entries of `session`
  uint64_t landing;    // what the return address was replaced by: one of the trampoline's landings
  ReturnSession session[kMaxSessions];
};

// The depth a thread's return stack gets when the thread registers (usprobe_set_return_depth).
extern std::atomic<uint32_t> g_return_depth;
// An entry handler for the unwinder's entry points (registry.cc, guard_unwinders): puts back the
// original return address of every pending return of this thread that is still on its stack, so
// that the unwinder sees the real callers, and empties the thread's return stack. Those returns
// are counted as missed.
void restore_pending_returns(usprobe_hit *hit, void *user);
// An entry handler for libc's swapcontext (user: kSwapContext) and setcontext (kSetContext):
// follows the thread's stack key (see "Stacks" above).
inline void *const kSwapContext = reinterpret_cast<void *>(1);
inline void *const kSetContext = reinterpret_cast<void *>(2);
void note_context_switch(usprobe_hit *hit, void *user);

// The shared return code (arch::make_return_trampoline), set before the first return probe is
// published; nonzero once return probes have existed.
extern std::atomic<uint64_t> g_return_trampoline;

}  // namespace usprobe
