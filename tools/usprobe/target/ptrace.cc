#include "target/ptrace.h"

#include <elf.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

namespace usprobe::cli {

namespace {

using Clock = std::chrono::steady_clock;

// The FP/vector state can be large (AVX-512 and AMX: over 10 KiB); the kernel says how much.
constexpr size_t kXstateMax = 64 * 1024;
// Below the interrupted code's stack pointer: the red zone and some room.
constexpr uint64_t kStackSkip = 128 + 256;

long ptrace_request(int request, pid_t tid, uint64_t addr, uint64_t data) {
  return ::ptrace(static_cast<__ptrace_request>(request), tid, addr, data);
}

std::string errno_text(int e) {
  return std::strerror(e);
}

}  // namespace

Result<std::unique_ptr<SeizedThread>> SeizedThread::seize(pid_t pid, pid_t tid,
                                                          std::chrono::milliseconds timeout) {
  std::unique_ptr<SeizedThread> t(new SeizedThread(pid, tid));
  if (ptrace_request(PTRACE_SEIZE, tid, 0, 0) != 0) {
    int e = errno;
    if (e == ESRCH) return fail(ESRCH, fmt::format("pid {}: no such process", pid));
    return fail(e, fmt::format("pid {}: ptrace: {}", pid, errno_text(e)));
  }
  t->attached_ = true;
  if (ptrace_request(PTRACE_INTERRUPT, tid, 0, 0) != 0) {
    int e = errno;
    return fail(e, fmt::format("pid {}: ptrace interrupt: {}", pid, errno_text(e)));
  }
  auto deadline = Clock::now() + timeout;
  // The first stop is the interrupt's (an event stop), or a signal the thread was taking: that
  // one is kept, and suppressed for now, and the interrupt's stop follows at once.
  for (;;) {
    auto status = t->wait_stop(deadline);
    if (!status) {
      if (status.error().code == ETIMEDOUT)
        return fail(ETIMEDOUT, fmt::format("pid {}: thread {} did not stop within {} ms "
                                           "(in an uninterruptible sleep?)",
                                           pid, tid, timeout.count()));
      return std::unexpected(status.error());
    }
    if ((*status >> 16) == PTRACE_EVENT_STOP) break;
    siginfo_t info{};
    if (ptrace_request(PTRACE_GETSIGINFO, tid, 0, reinterpret_cast<uint64_t>(&info)) == 0)
      t->pending_.push_back(info);
    if (ptrace_request(PTRACE_CONT, tid, 0, 0) != 0)
      return fail(errno, fmt::format("pid {}: ptrace: {}", pid, errno_text(errno)));
  }
  t->stop_ = Stop::kEvent;
  t->stopped_at_ = Clock::now();
  return t;
}

SeizedThread::~SeizedThread() {
  if (!attached_ || gone_) return;
  if (saved_ && dirty_) (void)restore();
  (void)release();
}

Result<int> SeizedThread::wait_stop(Clock::time_point deadline) {
  // Polled, so that a stop that never comes ends in a timeout; the interval grows to 1 ms.
  auto interval = std::chrono::microseconds(10);
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(tid_, &status, __WALL | WNOHANG);
    if (r < 0) {
      if (errno == EINTR) continue;
      gone_ = true;
      return fail(ESRCH, fmt::format("pid {} exited during the attach", pid_));
    }
    if (r == tid_) {
      if (WIFEXITED(status) || WIFSIGNALED(status)) {
        gone_ = true;
        return fail(ESRCH, fmt::format("pid {} exited during the attach", pid_));
      }
      if (WIFSTOPPED(status)) return status;
      continue;
    }
    if (Clock::now() >= deadline) return fail(ETIMEDOUT, "timed out");
    std::this_thread::sleep_for(interval);
    interval = std::min(interval * 2, std::chrono::microseconds(1000));
  }
}

Result<void> SeizedThread::save() {
  if (ptrace_request(PTRACE_GETREGS, tid_, 0, reinterpret_cast<uint64_t>(&regs_)) != 0)
    return fail(errno, fmt::format("pid {}: reading registers: {}", pid_, errno_text(errno)));
  xstate_.assign(kXstateMax, 0);
  iovec iov{xstate_.data(), xstate_.size()};
  xstate_type_ = NT_X86_XSTATE;
  if (ptrace_request(PTRACE_GETREGSET, tid_, NT_X86_XSTATE, reinterpret_cast<uint64_t>(&iov)) !=
      0) {
    xstate_type_ = NT_PRFPREG;
    iov = {xstate_.data(), xstate_.size()};
    if (ptrace_request(PTRACE_GETREGSET, tid_, NT_PRFPREG, reinterpret_cast<uint64_t>(&iov)) != 0)
      return fail(errno, fmt::format("pid {}: reading FP registers: {}", pid_, errno_text(errno)));
  }
  xstate_.resize(iov.iov_len);
  if (ptrace_request(PTRACE_GETSIGMASK, tid_, sizeof sigmask_,
                     reinterpret_cast<uint64_t>(&sigmask_)) != 0)
    return fail(errno, fmt::format("pid {}: reading the signal mask: {}", pid_, errno_text(errno)));
  saved_ = true;
  // Everything blocked but the two signals that end a single step and a remote call.
  uint64_t held = ~0ull & ~(1ull << (SIGTRAP - 1)) & ~(1ull << (SIGSEGV - 1));
  dirty_ = true;
  if (ptrace_request(PTRACE_SETSIGMASK, tid_, sizeof held, reinterpret_cast<uint64_t>(&held)) != 0)
    return fail(errno, fmt::format("pid {}: setting the signal mask: {}", pid_, errno_text(errno)));
  return {};
}

Result<void> SeizedThread::set_regs(const user_regs_struct &regs) {
  dirty_ = true;
  if (ptrace_request(PTRACE_SETREGS, tid_, 0, reinterpret_cast<uint64_t>(&regs)) != 0)
    return fail(errno, fmt::format("pid {}: setting registers: {}", pid_, errno_text(errno)));
  return {};
}

Result<void> SeizedThread::restore() {
  if (!saved_ || gone_) return {};
  if (ptrace_request(PTRACE_SETREGS, tid_, 0, reinterpret_cast<uint64_t>(&regs_)) != 0)
    return fail(errno, fmt::format("pid {}: restoring registers: {}", pid_, errno_text(errno)));
  iovec iov{xstate_.data(), xstate_.size()};
  if (ptrace_request(PTRACE_SETREGSET, tid_, xstate_type_, reinterpret_cast<uint64_t>(&iov)) != 0)
    return fail(errno, fmt::format("pid {}: restoring FP registers: {}", pid_, errno_text(errno)));
  if (ptrace_request(PTRACE_SETSIGMASK, tid_, sizeof sigmask_,
                     reinterpret_cast<uint64_t>(&sigmask_)) != 0)
    return fail(errno,
                fmt::format("pid {}: restoring the signal mask: {}", pid_, errno_text(errno)));
  dirty_ = false;
  return {};
}

Result<user_regs_struct> SeizedThread::run_until(int request, int expected,
                                                 Clock::time_point deadline) {
  int deliver = 0;
  for (;;) {
    if (ptrace_request(request, tid_, 0, deliver) != 0) {
      int e = errno;
      if (e == ESRCH) gone_ = true;
      return fail(e, fmt::format("pid {}: ptrace: {}", pid_, errno_text(e)));
    }
    auto status = wait_stop(deadline);
    if (!status) return std::unexpected(status.error());
    if ((*status >> 16) != 0) {  // an event stop (interrupt, group stop): carry on
      stop_ = Stop::kEvent;
      continue;
    }
    stop_ = Stop::kSignal;
    siginfo_t info{};
    if (ptrace_request(PTRACE_GETSIGINFO, tid_, 0, reinterpret_cast<uint64_t>(&info)) != 0)
      return fail(errno, fmt::format("pid {}: ptrace: {}", pid_, errno_text(errno)));
    // The kernel's own SIGTRAP or SIGSEGV (si_code > 0) is ours; one sent by kill() is not.
    if (info.si_signo == expected && info.si_code > 0) {
      user_regs_struct regs{};
      if (ptrace_request(PTRACE_GETREGS, tid_, 0, reinterpret_cast<uint64_t>(&regs)) != 0)
        return fail(errno, fmt::format("pid {}: reading registers: {}", pid_, errno_text(errno)));
      return regs;
    }
    pending_.push_back(info);  // handed back at release()
  }
}

Result<int64_t> SeizedThread::syscall(uint64_t syscall_insn, long nr,
                                      std::array<uint64_t, 6> args) {
  user_regs_struct regs = regs_;
  regs.rax = static_cast<uint64_t>(nr);
  regs.orig_rax = ~0ull;  // -1: no system call to restart
  regs.rdi = args[0];
  regs.rsi = args[1];
  regs.rdx = args[2];
  regs.r10 = args[3];
  regs.r8 = args[4];
  regs.r9 = args[5];
  regs.rip = syscall_insn;
  if (auto r = set_regs(regs); !r) return std::unexpected(r.error());
  auto deadline = Clock::now() + std::chrono::seconds(2);
  auto after = run_until(PTRACE_SINGLESTEP, SIGTRAP, deadline);
  if (!after) {
    if (after.error().code == ETIMEDOUT) {
      (void)interrupt_and_wait(Clock::now() + std::chrono::seconds(1));
      return fail(ETIMEDOUT, fmt::format("pid {}: system call {} did not return", pid_, nr));
    }
    return std::unexpected(after.error());
  }
  if (after->rip != syscall_insn + 2)
    return fail(EFAULT, fmt::format("pid {}: no system call instruction at {:#x} (the step "
                                    "ended at {:#x})",
                                    pid_, syscall_insn, after->rip));
  return static_cast<int64_t>(after->rax);
}

Result<uint64_t> SeizedThread::call(uint64_t function, std::array<uint64_t, 6> args,
                                    std::chrono::milliseconds timeout) {
  user_regs_struct regs = regs_;
  // Below the red zone, 16-byte aligned at the call, then the return address: rsp is 8 mod 16 at
  // the function's entry, as after a `call`.
  uint64_t sp = ((regs_.rsp - kStackSkip) & ~uint64_t{15}) - 8;
  const uint64_t return_address = 0;
  if (auto w = write_memory(pid_, sp, {reinterpret_cast<const uint8_t *>(&return_address), 8}); !w)
    return std::unexpected(w.error());
  regs.rsp = sp;
  regs.rip = function;
  regs.rax = 0;  // no vector registers used by a variadic callee
  regs.orig_rax = ~0ull;
  regs.rdi = args[0];
  regs.rsi = args[1];
  regs.rdx = args[2];
  regs.rcx = args[3];
  regs.r8 = args[4];
  regs.r9 = args[5];
  if (auto r = set_regs(regs); !r) return std::unexpected(r.error());
  auto after = run_until(PTRACE_CONT, SIGSEGV, Clock::now() + timeout);
  if (!after) {
    if (after.error().code == ETIMEDOUT) {
      if (auto s = interrupt_and_wait(Clock::now() + std::chrono::seconds(1)); !s)
        return std::unexpected(s.error());
      return fail(ETIMEDOUT, fmt::format("pid {}: the call at {:#x} did not return within {} ms",
                                         pid_, function, timeout.count()));
    }
    return std::unexpected(after.error());
  }
  if (after->rip != return_address)
    return fail(EFAULT, fmt::format("pid {}: the call at {:#x} crashed at {:#x}", pid_, function,
                                    after->rip));
  return after->rax;
}

Result<void> SeizedThread::interrupt_and_wait(Clock::time_point deadline) {
  if (ptrace_request(PTRACE_INTERRUPT, tid_, 0, 0) != 0)
    return fail(errno, fmt::format("pid {}: ptrace interrupt: {}", pid_, errno_text(errno)));
  for (;;) {
    auto status = wait_stop(deadline);
    if (!status) return std::unexpected(status.error());
    if ((*status >> 16) == PTRACE_EVENT_STOP) {
      stop_ = Stop::kEvent;
      return {};
    }
    siginfo_t info{};
    if (ptrace_request(PTRACE_GETSIGINFO, tid_, 0, reinterpret_cast<uint64_t>(&info)) == 0 &&
        !(info.si_code > 0 && (info.si_signo == SIGTRAP || info.si_signo == SIGSEGV)))
      pending_.push_back(info);
    if (ptrace_request(PTRACE_CONT, tid_, 0, 0) != 0)
      return fail(errno, fmt::format("pid {}: ptrace: {}", pid_, errno_text(errno)));
  }
}

Result<void> SeizedThread::release() {
  if (!attached_) return {};
  attached_ = false;
  released_at_ = Clock::now();
  if (gone_) return {};
  // In a signal-delivery-stop, the detach delivers one signal with its own siginfo; the others
  // (and any, from an event stop) are sent again with tgkill (their siginfo becomes SI_TKILL).
  size_t first = 0;
  int deliver = 0;
  if (stop_ == Stop::kSignal && !pending_.empty()) {
    if (ptrace_request(PTRACE_SETSIGINFO, tid_, 0, reinterpret_cast<uint64_t>(&pending_[0])) == 0) {
      deliver = pending_[0].si_signo;
      first = 1;
    }
  }
  if (ptrace_request(PTRACE_DETACH, tid_, 0, deliver) != 0) {
    int e = errno;
    if (e == ESRCH) return fail(ESRCH, fmt::format("pid {} exited during the attach", pid_));
    return fail(e, fmt::format("pid {}: ptrace detach: {}", pid_, errno_text(e)));
  }
  for (size_t i = first; i < pending_.size(); i++)
    ::syscall(SYS_tgkill, pid_, tid_, pending_[i].si_signo);
  return {};
}

double SeizedThread::stopped_ms() const {
  auto end = attached_ ? Clock::now() : released_at_;
  return std::chrono::duration<double, std::milli>(end - stopped_at_).count();
}

Result<void> read_memory(pid_t pid, uint64_t address, std::span<uint8_t> out) {
  int fd = ::open(fmt::format("/proc/{}/mem", pid).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fail(errno, fmt::format("pid {}: /proc/{}/mem: {}", pid, pid, errno_text(errno)));
  ssize_t n = ::pread(fd, out.data(), out.size(), static_cast<off_t>(address));
  int e = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(out.size()))
    return fail(n < 0 ? e : EIO, fmt::format("pid {}: reading {:#x}: {}", pid, address,
                                             errno_text(n < 0 ? e : EIO)));
  return {};
}

Result<void> write_memory(pid_t pid, uint64_t address, std::span<const uint8_t> data) {
  int fd = ::open(fmt::format("/proc/{}/mem", pid).c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return fail(errno, fmt::format("pid {}: /proc/{}/mem: {}", pid, pid, errno_text(errno)));
  ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(address));
  int e = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(data.size()))
    return fail(n < 0 ? e : EIO, fmt::format("pid {}: writing {:#x}: {}", pid, address,
                                             errno_text(n < 0 ? e : EIO)));
  return {};
}

}  // namespace usprobe::cli
