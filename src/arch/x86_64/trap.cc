// The int3 path's traps as x86-64 sees them, and moving threads out of windows while a jump is
// written.
//
// A trap at a usprobe site is not handled in the signal handler (the OS side's, which hands each
// trap here through the core): take_trap only sets %rip to the site's trampoline, which runs
// dispatch with the registers the probed code had (the kernel restores them from the ucontext) and
// resumes after the displaced instruction. So handlers never run in signal context, and the int3
// path costs one trap round trip plus a trampoline.
#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>

#include <algorithm>
#include <cstring>

#include "arch/x86_64/relocator.h"
#include "core/arch.h"

namespace usprobe::arch {

bool take_trap(const siginfo_t *info, ucontext_t *uc, TrapRedirect redirect) {
  // An int3 trap reports the address after the int3 (SI_KERNEL); single-steps and kill() do not
  // come from our sites.
  if (info->si_code != SI_KERNEL) return false;
  greg_t &rip = uc->uc_mcontext.gregs[REG_RIP];
  uint64_t site = static_cast<uint64_t>(rip) - 1;
  static_assert(sizeof rip == 8);
  if (redirect(site, &rip)) return true;
  // Not a site (any more). If the byte is no longer an int3, the probe was removed while this
  // thread was trapping: run the original instruction.
  if (*reinterpret_cast<volatile uint8_t *>(site) != trap_byte()) {
    rip = static_cast<greg_t>(site);
    return true;
  }
  return false;
}

bool returned_eintr(const ucontext_t *uc) {
  // The syscall instruction leaves its return address in %rcx, and the kernel returns with it
  // there: code that a signal interrupts elsewhere seldom has its own pc in %rcx.
  const greg_t *g = uc->uc_mcontext.gregs;
  return g[REG_RAX] == -EINTR && g[REG_RCX] == g[REG_RIP];
}

// The calls that only wait, and that the kernel makes again when a signal interrupts them and no
// handler runs (or that fail with EINTR even under SA_RESTART): made again, they do what they
// would have done. Calls that do work (read, write, accept...) are restarted by the kernel itself
// under the round's SA_RESTART, and are not listed.
bool is_wait_syscall(uint64_t nr) {
  switch (nr) {
    case SYS_poll:
    case SYS_select:
    case SYS_pause:
    case SYS_nanosleep:
    case SYS_rt_sigtimedwait:
    case SYS_rt_sigsuspend:
    case SYS_futex:
    case SYS_io_getevents:
    case SYS_clock_nanosleep:
    case SYS_epoll_wait:
    case SYS_pselect6:
    case SYS_ppoll:
    case SYS_epoll_pwait:
    case SYS_epoll_pwait2:
      return true;
    default:
      return false;
  }
}

namespace {

// The number of the wait that `uc` returns from with EINTR, when the code made it with a constant
// number.
std::optional<uint32_t> cut_wait(const ucontext_t *uc, std::span<const uint8_t> before) {
  if (!returned_eintr(uc)) return std::nullopt;
  std::optional<uint32_t> nr = x86::constant_syscall_number(before);
  if (!nr || !is_wait_syscall(*nr)) return std::nullopt;
  return nr;
}

}  // namespace

bool restart_wait(ucontext_t *uc, std::span<const uint8_t> before) {
  std::optional<uint32_t> nr = cut_wait(uc, before);
  if (!nr) return false;
  // The arguments are where the call found them: a system call keeps every register but %rax,
  // %rcx and %r11.
  uc->uc_mcontext.gregs[REG_RIP] -= 2;
  uc->uc_mcontext.gregs[REG_RAX] = static_cast<greg_t>(*nr);
  return true;
}

bool keep_wait_interrupted(ucontext_t *uc, std::span<const uint8_t> before) {
  if (!cut_wait(uc, before)) return false;
  // The syscall instruction wrote %rcx (its return address): nothing after it reads that.
  uc->uc_mcontext.gregs[REG_RCX] = 0;
  return true;
}

uint64_t interrupted_pc(const ucontext_t *uc) {
  return static_cast<uint64_t>(uc->uc_mcontext.gregs[REG_RIP]);
}

uint64_t interrupted_sp(const ucontext_t *uc) {
  return static_cast<uint64_t>(uc->uc_mcontext.gregs[REG_RSP]);
}

bool pc_outside_windows(uint64_t pc, std::span<const WindowMove> windows) {
  for (const WindowMove &w : windows)
    if (pc > w.site && pc < w.site + w.length) return false;
  return true;
}

uint64_t move_out_of_windows(ucontext_t *uc, std::span<const WindowMove> windows) {
  greg_t &rip = uc->uc_mcontext.gregs[REG_RIP];
  uint64_t pc = static_cast<uint64_t>(rip);
  const auto sp = static_cast<uint64_t>(uc->uc_mcontext.gregs[REG_RSP]);
  for (const WindowMove &w : windows) {
    if (!(pc > w.site && pc < w.site + w.length)) continue;
    for (size_t i = 0; i < w.map_size; ++i)
      if (w.site + w.map[i].first == pc) {
        rip = static_cast<greg_t>(w.window_copy + w.map[i].second);
        return sp;
      }
  }
  return sp;
}

bool signal_frame_in_windows(std::span<const uint8_t> stack, uint64_t stack_addr,
                             std::span<const WindowMove> windows, uint64_t signal_return) {
  // The kernel's x86-64 signal frame: the handler's return address (`signal_return`: the OS says
  // which), then the ucontext_t the thread resumes from.
  if (!signal_return) return false;
  // struct rt_sigframe { pretcode; struct ucontext uc; siginfo_t info; ... }: the kernel's
  // ucontext is 304 bytes (flags, link, stack, 256-byte sigcontext, 8-byte sigmask); glibc's
  // ucontext_t starts with the same fields, so gregs can be read through it.
  constexpr size_t kKernelUcontext = 8 + 8 + 24 + 256 + 8;
  const size_t need = 8 + std::max(sizeof(ucontext_t), kKernelUcontext + sizeof(siginfo_t));
  for (size_t off = 0; off + need <= stack.size(); off += 8) {
    uint64_t word;
    std::memcpy(&word, stack.data() + off, 8);
    if (word != signal_return) continue;
    ucontext_t uc;
    std::memcpy(&uc, stack.data() + off + 8, sizeof uc);
    const auto pc = static_cast<uint64_t>(uc.uc_mcontext.gregs[REG_RIP]);
    const auto sp = static_cast<uint64_t>(uc.uc_mcontext.gregs[REG_RSP]);
    if (sp <= stack_addr + off) continue;  // a frame's interrupted sp lies above the frame
    if (pc_outside_windows(pc, windows)) continue;
    // A trap on a site's (transient) int3 stops at site+1, inside the window; usprobe's own
    // handler sends that thread to the trampoline, so the frame is harmless.
    siginfo_t info;
    std::memcpy(&info, stack.data() + off + 8 + kKernelUcontext, sizeof info);
    bool our_trap = info.si_signo == SIGTRAP && info.si_code == SI_KERNEL &&
                    std::any_of(windows.begin(), windows.end(),
                                [pc](const WindowMove &w) { return pc == w.site + 1; });
    if (!our_trap) return true;
  }
  return false;
}

}  // namespace usprobe::arch
