// usprobe_hit_stack (core/stack.h): where a walk starts, the trampolines' landings taken out of
// their frames and the bounds of the thread's stack, for the architecture's two walkers.
#include "core/stack.h"

#include <pthread.h>

#include <climits>

#include "core/arch.h"
#include "core/os.h"
#include "core/probe.h"
#include "core/return_stack.h"
#include "core/thread_record.h"
#include "usprobe/usprobe.h"

namespace usprobe::stack {
namespace {

// ---- Where the walk starts ---------------------------------------------------------------------

struct Start {
  uint64_t ip;  // ips[0]
  uint64_t sp;  // the stack pointer there; every frame of the walk lies above it
  bool entry;   // at a function's first instruction: its return address is at sp
};

Start start_of(const usprobe_hit &hit) {
  const uint64_t sp = arch::reg(*hit.regs, USPROBE_RSP);
  // In a return handler the view is the caller's, just returned to: its %rsp and callee-saved
  // registers, and rip 0; the caller resumes at the instance's original return address.
  if (hit.returning) return {hit.returning->return_address, sp, false};
  // At a function's first instruction the return address is still at the stack pointer and the
  // frame pointer is still the caller's.
  return {arch::reg(*hit.regs, USPROBE_RIP), sp, hit.probe->function_entry};
}

// ---- Return addresses the trampolines took over -------------------------------------------------

// This thread's pending returns (it is running a handler: t_thread.record is set and only it
// changes its return stack). A pending return's slot holds its trampoline's landing
// (core/return_stack.h).
struct Pending {
  const ThreadRecord *rec;
};

Pending pending_returns() {
  return {t_thread.record};
}

// arch::ReturnFixup: the original return address of a slot that holds a pending return's landing,
// newest instance first; a tail call's instance shares its caller's slot and returns to the
// caller's landing, whose own instance, older, has the original.
uint64_t original_return(const void *ctx, uint64_t slot, uint64_t value) {
  const auto *p = static_cast<const Pending *>(ctx);
  if (p->rec)
    for (uint32_t i = t_thread.returns.return_top; i-- > 0;) {
      const ReturnInstance &inst = t_thread.returns.returns[i];
      if (inst.sp == slot && value == inst.landing) value = inst.return_address;
    }
  return value;
}

// ---- The bounds of the stack --------------------------------------------------------------------

struct StackRange {
  uint64_t lo = 0, hi = 0;  // [lo, hi): readable, and not unmapped while the thread lives
};

// The thread's own stack, once found: the frame-pointer walk of every later hit on that stack
// costs no system call. Initial-exec and constinit, as t_thread.record: no __tls_get_addr, no
// wrapper.
constinit thread_local StackRange t_stack __attribute__((tls_model("initial-exec")));

// The top of the readable stack above `sp`, for the frame-pointer walk's bounds. The thread's own
// stack is remembered; another one (a sigaltstack, a coroutine's) is looked up on every walk,
// since it may be unmapped and its addresses reused once the walk is over.
bool stack_top(uint64_t sp, uint64_t &hi) {
  if (sp >= t_stack.lo && sp < t_stack.hi) {
    hi = t_stack.hi;
    return true;
  }
  os::MappedRange m;
  if (!os::find_mapped_range(sp, m)) return false;
  // glibc puts a thread's descriptor (pthread_self()) and its static TLS at the top of the
  // thread's stack mapping, above every frame: when it lies there, the mapping is this thread's
  // own stack, and the frames end below it. The main thread's stack is "[stack]".
  const auto self = reinterpret_cast<uint64_t>(pthread_self());
  const bool own_thread_stack = self > sp && self < m.end;
  if (own_thread_stack) m.end = self;
  if (own_thread_stack || m.main_stack) t_stack = {m.start, m.end};
  hi = m.end;
  return true;
}

// ---- The frame-pointer walk ---------------------------------------------------------------------

// Never allocates, locks or makes a system call (but the thread's first, in stack_top).
size_t frame_pointer_walk(const usprobe_hit &hit, const Start &s, const Pending &pending,
                          uint64_t *ips, size_t max) {
  size_t n = 1;  // ips[0] is the start
  if (n < max && s.entry) {
    // The function has not pushed a frame yet: its caller's return address is at the stack
    // pointer, outside the chain, which starts at the caller's frame.
    const uint64_t *slot = arch::return_address_slot(*hit.regs);
    const uint64_t ret = original_return(&pending, reinterpret_cast<uint64_t>(slot), *slot);
    if (ret == 0) return n;
    ips[n++] = ret;
  }
  uint64_t hi = 0;
  if (n < max && stack_top(s.sp, hi))
    n += arch::frame_pointer_walk(arch::frame_pointer(*hit.regs), s.sp, hi, ips + n, max - n,
                                  original_return, &pending);
  return n;
}

// ---- The DWARF walk ----------------------------------------------------------------------------

// Never allocates, locks or makes a system call (but the thread's first, in stack_top).
size_t dwarf_walk(const usprobe_hit &hit, const Start &s, const Pending &pending, uint64_t *ips,
                  size_t max) {
  uint64_t hi = 0;
  if (!stack_top(s.sp, hi)) return 1;
  return 1 + arch::dwarf_walk({hit.regs, s.ip, s.sp, s.entry}, hi, ips + 1, max - 1,
                              original_return, &pending);
}

}  // namespace

int walk(const usprobe_hit *hit, uint64_t *ips, size_t max, unsigned flags) {
  if (!hit || !hit->regs || !ips || max == 0 || (flags & ~USPROBE_STACK_FP) != 0) return -EINVAL;
  if (max > INT_MAX) max = INT_MAX;
  const Start s = start_of(*hit);
  const Pending pending = pending_returns();
  ips[0] = s.ip;
  size_t n = 1;
  if (max > 1) {
    n = (flags & USPROBE_STACK_FP) ? frame_pointer_walk(*hit, s, pending, ips, max)
                                   : dwarf_walk(*hit, s, pending, ips, max);
  }
  return static_cast<int>(n);
}

}  // namespace usprobe::stack
