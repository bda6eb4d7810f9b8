// Limits, said once here: a command that installs its own SIGSEGV or SIGBUS handler after the
// agent replaces ours (a bad `%s` pointer then reaches its handler), and a thread that blocks
// SIGSEGV dies on a bad pointer as the kernel delivers a blocked fault signal with the default
// action. The handlers reject null, low and non-canonical pointers before copying, which are the
// usual bad ones.
#include "agent/fault_fixup.h"

#include <signal.h>
#include <ucontext.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "agent/safe_copy.h"

namespace usprobe::agent {
namespace {

// The dispositions that were in place when ours were installed, for SIGSEGV and SIGBUS.
struct sigaction g_previous_segv;
struct sigaction g_previous_bus;

// As if our handler were not there.
void forward(int sig, siginfo_t *info, void *ctx) {
  const struct sigaction &p = sig == SIGSEGV ? g_previous_segv : g_previous_bus;
  if (p.sa_handler == SIG_DFL || p.sa_handler == SIG_IGN) {
    // Put the default back and return: the faulting instruction runs again and the kernel applies
    // the default action (terminate with a core dump). An ignored fault signal gets the same from
    // the kernel. A signal that some process sent (si_code <= 0) will not come again: re-raise it;
    // it is not blocked here (SA_NODEFER).
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, nullptr);
    if (info->si_code <= 0) raise(sig);
    return;
  }
  if (p.sa_flags & SA_SIGINFO)
    p.sa_sigaction(sig, info, ctx);
  else
    p.sa_handler(sig);
}

void on_fault(int sig, siginfo_t *info, void *ctx) {
  auto *uc = static_cast<ucontext_t *>(ctx);
  greg_t &rip = uc->uc_mcontext.gregs[REG_RIP];
  auto pc = static_cast<uintptr_t>(rip);
  // A fault the copy's load caused (si_code > 0: sent by the kernel, not by kill()): resume at the
  // fixup, which returns failure to the handler that was copying.
  if (info->si_code > 0 && pc >= reinterpret_cast<uintptr_t>(usprobe_agent_safe_copy_load) &&
      pc < reinterpret_cast<uintptr_t>(usprobe_agent_safe_copy_load_end)) {
    rip = static_cast<greg_t>(reinterpret_cast<uintptr_t>(usprobe_agent_safe_copy_fixup));
    return;
  }
  forward(sig, info, ctx);
}

}  // namespace

std::expected<void, std::string> install_fault_fixup() {
  struct sigaction sa {};
  sa.sa_sigaction = on_fault;
  // SA_ONSTACK: a fault from stack overflow must still reach the command's handler on its
  // alternate stack. SA_NODEFER: a fault inside a forwarded handler is handled, not fatal.
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, &g_previous_segv) != 0)
    return std::unexpected(std::string("sigaction(SIGSEGV): ") + strerror(errno));
  if (sigaction(SIGBUS, &sa, &g_previous_bus) != 0) {
    sigaction(SIGSEGV, &g_previous_segv, nullptr);
    return std::unexpected(std::string("sigaction(SIGBUS): ") + strerror(errno));
  }
  return {};
}

}  // namespace usprobe::agent
