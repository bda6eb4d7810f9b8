// Process control for attaching to a running process: one thread of the target seized with
// ptrace and used, while it is stopped, to run system calls and function calls in the target, then
// put back exactly as it was. The only place in usprobe that uses ptrace (inject.cc drives it).
//
// The steps, each undoing what it did:
//   seize()     PTRACE_SEIZE, PTRACE_INTERRUPT, wait for the stop. A signal the thread was about to
//               take is kept (with its siginfo) and given back at release().
//   save()      registers, FP/vector state (the xstate regset) and signal mask. While the thread
//               is held, every signal is blocked in it but SIGTRAP and SIGSEGV, the two that
//               single steps and remote calls end with: a signal sent to the process goes to
//               another thread or stays pending; none is lost. (The two must stay unblocked: the
//               kernel would reset the handler of a blocked SIGSEGV it forces.)
//   syscall()   rip at a `syscall` instruction of the target, orig_rax = -1 (so the kernel's
//               syscall-restart logic leaves the injected call alone), one single step.
//   call()      rip at a function, rsp below the red zone and 16-byte aligned, return address 0:
//               the SIGSEGV at rip 0 says it returned. A call that does not return in time is
//               interrupted and abandoned (the caller restores the registers).
//   restore()   registers, xstate and signal mask as saved. A system call the thread was in
//               (read, nanosleep, futex) has its saved state (rax = -ERESTART..., orig_rax) back,
//               so it restarts as if nothing happened, nanosleep with its remaining time.
//   release()   PTRACE_DETACH, giving back the signal kept at seize or arrived meanwhile. A wait
//               that the interrupt cut short with EINTR (epoll_wait returns it, not a restart
//               code, even when no handler runs) is set to be made again, as the kernel makes
//               nanosleep or read again, unless a signal is pending that the program may count
//               on that EINTR for.
//
// Every call must come from the thread that seized (ptrace's tracer is a thread).
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/user.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/error.h"

namespace usprobe::cli {

class SeizedThread {
 public:
  // Seizes thread `tid` of process `pid` and waits (up to `timeout`) for it to stop.
  // Errors: "pid N: no such process", "pid N: ptrace: not permitted (another user's process,
  // kernel.yama.ptrace_scope, or a process that is not dumpable)", "pid N exited during the
  // attach", "pid N: thread T did not stop within 2000 ms (in an uninterruptible sleep?)".
  static Result<std::unique_ptr<SeizedThread>> seize(pid_t pid, pid_t tid,
                                                     std::chrono::milliseconds timeout);
  // Releases the thread if release() was not called (after restore(), if save() was).
  ~SeizedThread();
  SeizedThread(const SeizedThread &) = delete;
  SeizedThread &operator=(const SeizedThread &) = delete;

  pid_t pid() const { return pid_; }
  pid_t tid() const { return tid_; }

  Result<void> save();
  Result<void> restore();

  // Runs system call `nr` in the target through the `syscall` instruction at `syscall_insn`;
  // the kernel's return value (a negative errno on failure).
  Result<int64_t> syscall(uint64_t syscall_insn, long nr, std::array<uint64_t, 6> args);
  // Calls the function at `function` with up to six integer arguments; its return value (rax).
  // Error ETIMEDOUT when it has not returned within `timeout`: the thread is stopped again where
  // it was, and restore() abandons the call's frame.
  Result<uint64_t> call(uint64_t function, std::array<uint64_t, 6> args,
                        std::chrono::milliseconds timeout);

  // The thread's signal mask (bit n - 1 for signal n), and setting it: for a thread that is only
  // seized, not save()d, whose mask is all there is to change (signal_masks.h).
  Result<uint64_t> signal_mask();
  Result<void> set_signal_mask(uint64_t mask);

  // Detaches, handing back the signals kept while the thread was held.
  Result<void> release();

  // How long the thread has been (or was, once released) held stopped.
  double stopped_ms() const;

 private:
  void restart_cut_wait();
  SeizedThread(pid_t pid, pid_t tid) : pid_(pid), tid_(tid) {}
  enum class Stop { kEvent, kSignal };
  // Resumes with `request` (PTRACE_CONT or PTRACE_SINGLESTEP) until a signal-delivery-stop for
  // `expected` comes from the kernel (si_code > 0); other signals are kept for release().
  Result<user_regs_struct> run_until(int request, int expected,
                                     std::chrono::steady_clock::time_point deadline);
  Result<void> interrupt_and_wait(std::chrono::steady_clock::time_point deadline);
  Result<int> wait_stop(std::chrono::steady_clock::time_point deadline);
  Result<void> set_regs(const user_regs_struct &regs);
  // The error for a failed ptrace request (errno): "pid N exited during the attach" for ESRCH.
  Error ptrace_error(const char *what);

  pid_t pid_;
  pid_t tid_;
  bool attached_ = false;
  bool gone_ = false;         // the thread exited: nothing to restore or detach
  Stop stop_ = Stop::kEvent;  // the kind of the current stop: detach delivers a signal only
                              // from a signal-delivery-stop
  bool saved_ = false;
  bool dirty_ = false;  // registers or mask changed since save()
  user_regs_struct regs_{};
  std::vector<uint8_t> xstate_;
  int xstate_type_ = 0;  // NT_X86_XSTATE, or NT_PRFPREG where the kernel has no xstate regset
  uint64_t sigmask_ = 0;
  std::vector<siginfo_t> pending_;
  std::chrono::steady_clock::time_point stopped_at_;
  std::chrono::steady_clock::time_point released_at_;
};

// The target's memory through /proc/PID/mem. Errors: "pid N: reading 0xADDR: EIO ...".
Result<void> read_memory(pid_t pid, uint64_t address, std::span<uint8_t> out);
Result<void> write_memory(pid_t pid, uint64_t address, std::span<const uint8_t> data);

}  // namespace usprobe::cli
