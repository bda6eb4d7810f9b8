// The int3 path's trap handler, and moving threads out of windows while a jump is written.
//
// A trap at a usprobe site is not handled in the signal handler: the handler only sets %rip to the
// site's trampoline, which runs dispatch with the registers the probed code had (the kernel
// restores them from the ucontext) and resumes after the displaced instruction. So handlers never
// run in signal context, and the int3 path costs one trap round trip plus a trampoline.
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>

#include "core/arch.h"
#include "os/linux/signal_guard.h"

namespace usprobe::arch {
namespace {

std::atomic<TrapRedirect> g_redirect{nullptr};

// The kernel's own end for a SIGTRAP: terminate with a core dump, as if usprobe were not here.
[[noreturn]] void die_of_sigtrap() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  os::real_sigaction(SIGTRAP, &dfl, nullptr);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTRAP);
  os::real_sigmask(SIG_UNBLOCK, &set, nullptr);
  for (;;) raise(SIGTRAP);
}

// A trap that is not usprobe's goes where it would go without usprobe: to the disposition the
// program set last (os/linux/signal_guard.h records it; the kernel's stays usprobe's handler).
void forward(int sig, siginfo_t *info, void *ctx) {
  // Sent by kill, tgkill or sigqueue (si_code <= 0), or raised by the CPU (an int3 of the
  // program's own, a single step): the kernel forces a raised one whose signal is blocked or
  // ignored to the default action, and keeps a sent one pending while it is blocked.
  const bool sent = info->si_code <= 0;
  const bool blocked = os::program_blocks(SIGTRAP);
  if (sent && blocked) {
    os::defer_sigtrap(info);  // sent again when the program unblocks SIGTRAP
    return;
  }
  struct sigaction p;
  os::program_sigtrap_action(&p);
  if (p.sa_handler == SIG_IGN && sent) return;
  if (p.sa_handler == SIG_DFL || p.sa_handler == SIG_IGN || blocked) die_of_sigtrap();
  if (p.sa_flags & SA_RESETHAND) os::reset_program_sigtrap_action();
  // The program's handler runs with its sa_mask blocked (usprobe's signals left out). SIGTRAP
  // itself is not blocked meanwhile, as if SA_NODEFER: an int3 site may be hit in the handler.
  sigset_t mask = p.sa_mask;
  sigdelset(&mask, SIGTRAP);
  os::strip_guarded(&mask);
  os::real_sigmask(SIG_BLOCK, &mask, nullptr);
  if (p.sa_flags & SA_SIGINFO)
    p.sa_sigaction(sig, info, ctx);
  else
    p.sa_handler(sig);
}

void on_sigtrap(int sig, siginfo_t *info, void *ctx) {
  auto *uc = static_cast<ucontext_t *>(ctx);
  greg_t &rip = uc->uc_mcontext.gregs[REG_RIP];
  // An int3 trap reports the address after the int3 (SI_KERNEL); single-steps and kill() do not
  // come from our sites.
  TrapRedirect redirect = g_redirect.load(std::memory_order_acquire);
  if (info->si_code == SI_KERNEL && redirect) {
    uint64_t site = static_cast<uint64_t>(rip) - 1;
    static_assert(sizeof rip == 8);
    if (redirect(site, &rip)) return;
    // Not a site (any more). If the byte is no longer an int3, the probe was removed while this
    // thread was trapping: run the original instruction.
    if (*reinterpret_cast<volatile uint8_t *>(site) != trap_byte()) {
      rip = static_cast<greg_t>(site);
      return;
    }
  }
  forward(sig, info, ctx);
}

// usprobe's SIGTRAP handler, installed when the library is loaded (before the program can block
// SIGTRAP or set its own disposition, both of which the interposed calls then only record).
Result<void> install() {
  static std::once_flag once;
  static Result<void> result;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigtrap;
    // SA_NODEFER: a handler of the application's that hits an int3 site while SIGTRAP is being
    // handled must trap again, not be killed (a blocked synchronous SIGTRAP is fatal).
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    struct sigaction previous {};
    if (os::real_sigaction(SIGTRAP, &sa, &previous) != 0) {
      result = fail(errno, std::string("sigaction(SIGTRAP): ") + strerror(errno));
      return;
    }
    os::take_over_sigtrap(previous);
  });
  return result;
}

__attribute__((constructor)) void install_at_load() {
  (void)install();
}

}  // namespace

Result<void> install_trap_handler(TrapRedirect redirect) {
  if (auto ok = install(); !ok) return ok;
  g_redirect.store(redirect, std::memory_order_release);  // pairs with on_sigtrap's acquire
  return {};
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
                             std::span<const WindowMove> windows) {
  // The kernel's x86-64 signal frame: the handler's return address (sa_restorer, glibc's
  // __restore_rt), then the ucontext_t the thread resumes from. Our own handlers were installed
  // through glibc, so their sa_restorer is the one every glibc-installed handler shares.
  struct sigaction ours {};
  if (os::real_sigaction(SIGTRAP, nullptr, &ours) != 0 || !ours.sa_restorer) return false;
  const auto restorer = reinterpret_cast<uint64_t>(ours.sa_restorer);
  // struct rt_sigframe { pretcode; struct ucontext uc; siginfo_t info; ... }: the kernel's
  // ucontext is 304 bytes (flags, link, stack, 256-byte sigcontext, 8-byte sigmask); glibc's
  // ucontext_t starts with the same fields, so gregs can be read through it.
  constexpr size_t kKernelUcontext = 8 + 8 + 24 + 256 + 8;
  const size_t need = 8 + std::max(sizeof(ucontext_t), kKernelUcontext + sizeof(siginfo_t));
  for (size_t off = 0; off + need <= stack.size(); off += 8) {
    uint64_t word;
    std::memcpy(&word, stack.data() + off, 8);
    if (word != restorer) continue;
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
