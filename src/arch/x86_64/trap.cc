// The int3 path's trap handler, and moving threads out of windows while a jump is written.
//
// A trap at a usprobe site is not handled in the signal handler: the handler only sets %rip to the
// site's trampoline, which runs dispatch with the registers the probed code had (the kernel
// restores them from the ucontext) and resumes after the displaced instruction. So handlers never
// run in signal context, and the int3 path costs one trap round trip plus a trampoline.
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

#include "core/arch.h"

namespace usprobe::arch {
namespace {

uint64_t (*g_lookup)(uint64_t) = nullptr;
struct sigaction g_previous;  // the application's SIGTRAP disposition when we installed ours

void forward(int sig, siginfo_t *info, void *ctx) {
  const struct sigaction &p = g_previous;
  if (p.sa_flags & SA_SIGINFO) {
    if (p.sa_sigaction) p.sa_sigaction(sig, info, ctx);
    return;
  }
  if (p.sa_handler == SIG_IGN) return;
  if (p.sa_handler != SIG_DFL) {
    p.sa_handler(sig);
    return;
  }
  // Default action: terminate with SIGTRAP (and a core dump), as if usprobe were not here.
  signal(SIGTRAP, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTRAP);
  sigprocmask(SIG_UNBLOCK, &set, nullptr);
  raise(SIGTRAP);
}

void on_sigtrap(int sig, siginfo_t *info, void *ctx) {
  auto *uc = static_cast<ucontext_t *>(ctx);
  greg_t &rip = uc->uc_mcontext.gregs[REG_RIP];
  // An int3 trap reports the address after the int3 (SI_KERNEL); single-steps and kill() do not
  // come from our sites.
  if (info->si_code == SI_KERNEL) {
    uint64_t site = static_cast<uint64_t>(rip) - 1;
    if (uint64_t trampoline = g_lookup(site)) {
      rip = static_cast<greg_t>(trampoline);
      return;
    }
    // Not a site (any more). If the byte is no longer an int3, the probe was removed while this
    // thread was trapping: run the original instruction.
    if (*reinterpret_cast<volatile uint8_t *>(site) != trap_byte()) {
      rip = static_cast<greg_t>(site);
      return;
    }
  }
  forward(sig, info, ctx);
}

}  // namespace

Result<void> install_trap_handler(uint64_t (*lookup)(uint64_t)) {
  static std::once_flag once;
  static Result<void> result;
  std::call_once(once, [lookup] {
    g_lookup = lookup;
    struct sigaction sa {};
    sa.sa_sigaction = on_sigtrap;
    // SA_NODEFER: a handler of the application's that hits an int3 site while SIGTRAP is being
    // handled must trap again, not be killed (a blocked synchronous SIGTRAP is fatal).
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTRAP, &sa, &g_previous) != 0)
      result = fail(errno, std::string("sigaction(SIGTRAP): ") + strerror(errno));
  });
  return result;
}

bool pc_outside_windows(uint64_t pc, std::span<const WindowMove> windows) {
  for (const WindowMove &w : windows)
    if (pc > w.site && pc < w.site + w.length) return false;
  return true;
}

void move_out_of_windows(ucontext_t *uc, std::span<const WindowMove> windows) {
  greg_t &rip = uc->uc_mcontext.gregs[REG_RIP];
  uint64_t pc = static_cast<uint64_t>(rip);
  for (const WindowMove &w : windows) {
    if (!(pc > w.site && pc < w.site + w.length)) continue;
    for (size_t i = 0; i < w.map_size; ++i)
      if (w.site + w.map[i].first == pc) {
        rip = static_cast<greg_t>(w.window_copy + w.map[i].second);
        return;
      }
  }
}

}  // namespace usprobe::arch
