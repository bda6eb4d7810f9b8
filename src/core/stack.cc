// usprobe_hit_stack (core/stack.h): where a walk starts, the trampolines' landings taken out of
// their frames and the bounds of the thread's stack, for the architecture's two walkers.
#include "core/stack.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/syscall.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <string_view>

#include "core/arch.h"
#include "core/probe.h"
#include "core/return_stack.h"
#include "core/thread_record.h"
#include "os/linux/maps_line.h"
#include "os/linux/raw_syscall.h"
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

// This thread's pending returns (it is running a handler: t_record is set and only it changes its
// return stack). A pending return's slot holds its trampoline's landing (core/return_stack.h).
struct Pending {
  const ThreadRecord *rec;
};

Pending pending_returns() {
  return {t_record};
}

// arch::ReturnFixup: the original return address of a slot that holds a pending return's landing,
// newest instance first; a tail call's instance shares its caller's slot and returns to the
// caller's landing, whose own instance, older, has the original.
uint64_t original_return(const void *ctx, uint64_t slot, uint64_t value) {
  const auto *p = static_cast<const Pending *>(ctx);
  if (p->rec)
    for (uint32_t i = p->rec->return_top; i-- > 0;) {
      const ReturnInstance &inst = p->rec->returns[i];
      if (inst.sp == slot && value == inst.landing) value = inst.return_address;
    }
  return value;
}

// ---- The bounds of the stack --------------------------------------------------------------------

struct StackRange {
  uint64_t lo = 0, hi = 0;  // [lo, hi): readable, and not unmapped while the thread lives
};

// The thread's own stack, once found: the frame-pointer walk of every later hit on that stack
// costs no system call. Initial-exec and constinit, as t_record: no __tls_get_addr, no wrapper.
constinit thread_local StackRange t_stack __attribute__((tls_model("initial-exec")));

struct Mapping {
  uint64_t start = 0, end = 0;
  bool readable = false;
  bool main_stack = false;  // "[stack]": the main thread's
};

// One line of /proc/self/maps (os/linux/maps_line.h: no allocation, no libc); `line` may be the
// start of a line too long for the buffer (its path is then not "[stack]" anyway). A line that
// does not parse holds nothing.
Mapping parse_maps_line(const char *p, const char *end) {
  Mapping m;
  os::MapsLine l;
  if (!os::parse_maps_line(std::string_view(p, static_cast<size_t>(end - p)), l)) return m;
  m.start = l.start;
  m.end = l.end;
  m.readable = l.read;
  m.main_stack = l.path == "[stack]";
  return m;
}

// The mapping of this process that contains `addr`, read from /proc/self/maps with raw system
// calls into a buffer on this stack: no allocation, and no libc function a probe may sit on.
bool find_mapping(uint64_t addr, Mapping &out) {
  const long fd = os::raw_syscall6(SYS_openat, AT_FDCWD, reinterpret_cast<long>("/proc/self/maps"),
                                   O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool found = false, done = false;
  // Lines come sorted by address: stop at the one that holds addr, or at the first past it.
  auto look = [&](const char *line, const char *end) {
    const Mapping m = parse_maps_line(line, end);
    if (m.start > addr) {
      done = true;
    } else if (addr < m.end) {
      out = m;
      found = m.readable;
      done = true;
    }
  };
  char buf[4096];
  size_t have = 0;
  bool rest_of_long_line = false;  // dropping the tail of a line longer than buf
  while (!done) {
    const long r = os::raw_syscall6(SYS_read, fd, reinterpret_cast<long>(buf + have),
                                    static_cast<long>(sizeof buf - have));
    if (r == -EINTR) continue;
    if (r <= 0) break;  // the end (the kernel ends every line with a newline) or an error
    have += static_cast<size_t>(r);
    size_t begin = 0;
    for (size_t i = 0; i < have && !done; ++i) {
      if (buf[i] != '\n') continue;
      if (!rest_of_long_line) look(buf + begin, buf + i);
      rest_of_long_line = false;
      begin = i + 1;
    }
    if (done) break;
    if (begin == 0 && have == sizeof buf) {
      // A line longer than the buffer (a long path): its start holds all that is needed.
      if (!rest_of_long_line) look(buf, buf + have);
      rest_of_long_line = true;
      have = 0;
    } else {
      std::memmove(buf, buf + begin, have - begin);
      have -= begin;
    }
  }
  os::raw_syscall6(SYS_close, fd);
  return found;
}

// The top of the readable stack above `sp`, for the frame-pointer walk's bounds. The thread's own
// stack is remembered; another one (a sigaltstack, a coroutine's) is looked up on every walk,
// since it may be unmapped and its addresses reused once the walk is over.
bool stack_top(uint64_t sp, uint64_t &hi) {
  if (sp >= t_stack.lo && sp < t_stack.hi) {
    hi = t_stack.hi;
    return true;
  }
  Mapping m;
  if (!find_mapping(sp, m)) return false;
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
