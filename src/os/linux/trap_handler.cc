// usprobe's SIGTRAP handler (core/os.h): a trap goes first to the core (which asks the architecture
// whether it is an int3 at a usprobe site), and one that is not usprobe's goes where it would go
// without usprobe. The handler never runs a probe's handlers: for a site it only changes where the
// thread resumes (core/arch.h, take_trap), so handlers never run in signal context.
#include <signal.h>
#include <string.h>

#include <atomic>
#include <cerrno>
#include <mutex>
#include <string>

#include "core/os.h"
#include "os/linux/signal_guard.h"

namespace usprobe::os {
namespace {

std::atomic<TrapTake> g_take{nullptr};

// The kernel's own end for a SIGTRAP: terminate with a core dump, as if usprobe were not here.
[[noreturn]] void die_of_sigtrap() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  real_sigaction(SIGTRAP, &dfl, nullptr);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTRAP);
  real_sigmask(SIG_UNBLOCK, &set, nullptr);
  for (;;) raise(SIGTRAP);
}

// A trap that is not usprobe's goes where it would go without usprobe: to the disposition the
// program set last (signal_guard.h records it; the kernel's stays usprobe's handler).
void forward(int sig, siginfo_t *info, void *ctx) {
  // Sent by kill, tgkill or sigqueue (si_code <= 0), or raised by the CPU (an int3 of the
  // program's own, a single step): the kernel forces a raised one whose signal is blocked or
  // ignored to the default action, and keeps a sent one pending while it is blocked.
  const bool sent = info->si_code <= 0;
  const bool blocked = program_blocks(SIGTRAP);
  if (sent && blocked) {
    defer_sigtrap(info);  // sent again when the program unblocks SIGTRAP
    return;
  }
  struct sigaction p;
  program_sigtrap_action(&p);
  if (p.sa_handler == SIG_IGN && sent) return;
  if (p.sa_handler == SIG_DFL || p.sa_handler == SIG_IGN || blocked) die_of_sigtrap();
  if (p.sa_flags & SA_RESETHAND) reset_program_sigtrap_action();
  // The program's handler runs with its sa_mask blocked (usprobe's signals left out). SIGTRAP
  // itself is not blocked meanwhile, as if SA_NODEFER: an int3 site may be hit in the handler.
  sigset_t mask = p.sa_mask;
  sigdelset(&mask, SIGTRAP);
  strip_guarded(&mask);
  real_sigmask(SIG_BLOCK, &mask, nullptr);
  if (p.sa_flags & SA_SIGINFO)
    p.sa_sigaction(sig, info, ctx);
  else
    p.sa_handler(sig);
}

void on_sigtrap(int sig, siginfo_t *info, void *ctx) {
  TrapTake take = g_take.load(std::memory_order_acquire);  // pairs with install_trap_handler's
  if (take && take(info, static_cast<ucontext_t *>(ctx))) return;
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
    if (real_sigaction(SIGTRAP, &sa, &previous) != 0) {
      result = fail(errno, std::string("sigaction(SIGTRAP): ") + strerror(errno));
      return;
    }
    take_over_sigtrap(previous);
  });
  return result;
}

__attribute__((constructor)) void install_at_load() {
  (void)install();
}

}  // namespace

Result<void> install_trap_handler(TrapTake take) {
  if (auto ok = install(); !ok) return ok;
  g_take.store(take, std::memory_order_release);  // pairs with on_sigtrap's acquire
  return {};
}

uint64_t signal_return_address() {
  // The kernel's x86-64 signal frame starts with the handler's return address, its sa_restorer.
  // usprobe's handlers were installed through glibc, whose sa_restorer (__restore_rt) every
  // glibc-installed handler shares: SIGTRAP's tells it.
  struct sigaction ours {};
  if (real_sigaction(SIGTRAP, nullptr, &ours) != 0) return 0;
  return reinterpret_cast<uint64_t>(ours.sa_restorer);
}

}  // namespace usprobe::os
