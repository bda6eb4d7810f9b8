#include "target/ptrace.h"

#include <elf.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "core/arch.h"

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
    if (e == EPERM)
      return fail(e, fmt::format("pid {}: ptrace: not permitted (another user's process, "
                                 "kernel.yama.ptrace_scope, or a process that is not dumpable)",
                                 pid));
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
      return std::unexpected(t->ptrace_error("ptrace"));
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
  // Polled, so that a stop that never comes ends in a timeout. The interval grows to 100 us, which
  // the thread's stop time is counted in, then, after 100 ms of waiting, to 1 ms.
  auto interval = std::chrono::microseconds(5);
  auto patient = Clock::now() + std::chrono::milliseconds(100);
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
    auto cap = std::chrono::microseconds(Clock::now() < patient ? 100 : 1000);
    interval = std::min(interval * 2, cap);
  }
}

Error SeizedThread::ptrace_error(const char *what) {
  int e = errno;
  // ptrace answers ESRCH for a tracee that is not in a stop: it is only asked while the thread is
  // stopped, so the thread has died (the process was killed, or exec'd in another thread).
  if (e == ESRCH) {
    gone_ = true;
    return Error{ESRCH, fmt::format("pid {} exited during the attach", pid_)};
  }
  return Error{e, fmt::format("pid {}: {}: {}", pid_, what, errno_text(e))};
}

Result<void> SeizedThread::save() {
  if (ptrace_request(PTRACE_GETREGS, tid_, 0, reinterpret_cast<uint64_t>(&regs_)) != 0)
    return std::unexpected(ptrace_error("reading registers"));
  xstate_.assign(kXstateMax, 0);
  iovec iov{xstate_.data(), xstate_.size()};
  xstate_type_ = NT_X86_XSTATE;
  if (ptrace_request(PTRACE_GETREGSET, tid_, NT_X86_XSTATE, reinterpret_cast<uint64_t>(&iov)) !=
      0) {
    xstate_type_ = NT_PRFPREG;
    iov = {xstate_.data(), xstate_.size()};
    if (ptrace_request(PTRACE_GETREGSET, tid_, NT_PRFPREG, reinterpret_cast<uint64_t>(&iov)) != 0)
      return std::unexpected(ptrace_error("reading FP registers"));
  }
  xstate_.resize(iov.iov_len);
  if (ptrace_request(PTRACE_GETSIGMASK, tid_, sizeof sigmask_,
                     reinterpret_cast<uint64_t>(&sigmask_)) != 0)
    return std::unexpected(ptrace_error("reading the signal mask"));
  saved_ = true;
  // Everything blocked but the two signals that end a single step and a remote call.
  uint64_t held = ~0ull & ~(1ull << (SIGTRAP - 1)) & ~(1ull << (SIGSEGV - 1));
  dirty_ = true;
  if (ptrace_request(PTRACE_SETSIGMASK, tid_, sizeof held, reinterpret_cast<uint64_t>(&held)) != 0)
    return std::unexpected(ptrace_error("setting the signal mask"));
  return {};
}

Result<uint64_t> SeizedThread::signal_mask() {
  uint64_t mask = 0;
  if (ptrace_request(PTRACE_GETSIGMASK, tid_, sizeof mask, reinterpret_cast<uint64_t>(&mask)) != 0)
    return std::unexpected(ptrace_error("reading the signal mask"));
  return mask;
}

Result<void> SeizedThread::set_signal_mask(uint64_t mask) {
  if (ptrace_request(PTRACE_SETSIGMASK, tid_, sizeof mask, reinterpret_cast<uint64_t>(&mask)) != 0)
    return std::unexpected(ptrace_error("setting the signal mask"));
  return {};
}

Result<void> SeizedThread::set_regs(const user_regs_struct &regs) {
  dirty_ = true;
  if (ptrace_request(PTRACE_SETREGS, tid_, 0, reinterpret_cast<uint64_t>(&regs)) != 0)
    return std::unexpected(ptrace_error("setting registers"));
  return {};
}

Result<void> SeizedThread::restore() {
  if (!saved_ || gone_) return {};
  if (ptrace_request(PTRACE_SETREGS, tid_, 0, reinterpret_cast<uint64_t>(&regs_)) != 0)
    return std::unexpected(ptrace_error("restoring registers"));
  iovec iov{xstate_.data(), xstate_.size()};
  if (ptrace_request(PTRACE_SETREGSET, tid_, xstate_type_, reinterpret_cast<uint64_t>(&iov)) != 0)
    return std::unexpected(ptrace_error("restoring FP registers"));
  if (ptrace_request(PTRACE_SETSIGMASK, tid_, sizeof sigmask_,
                     reinterpret_cast<uint64_t>(&sigmask_)) != 0)
    return std::unexpected(ptrace_error("restoring the signal mask"));
  dirty_ = false;
  return {};
}

Result<user_regs_struct> SeizedThread::run_until(int request, int expected,
                                                 Clock::time_point deadline) {
  int deliver = 0;
  for (;;) {
    if (ptrace_request(request, tid_, 0, deliver) != 0)
      return std::unexpected(ptrace_error("ptrace"));
    auto status = wait_stop(deadline);
    if (!status) return std::unexpected(status.error());
    if ((*status >> 16) != 0) {  // an event stop (interrupt, group stop): carry on
      stop_ = Stop::kEvent;
      continue;
    }
    stop_ = Stop::kSignal;
    siginfo_t info{};
    if (ptrace_request(PTRACE_GETSIGINFO, tid_, 0, reinterpret_cast<uint64_t>(&info)) != 0)
      return std::unexpected(ptrace_error("ptrace"));
    // The kernel's own SIGTRAP or SIGSEGV (si_code > 0) is ours; one sent by kill() is not.
    if (info.si_signo == expected && info.si_code > 0) {
      user_regs_struct regs{};
      if (ptrace_request(PTRACE_GETREGS, tid_, 0, reinterpret_cast<uint64_t>(&regs)) != 0)
        return std::unexpected(ptrace_error("reading registers"));
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
    return std::unexpected(ptrace_error("ptrace interrupt"));
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
      return std::unexpected(ptrace_error("ptrace"));
  }
}

namespace {

// The signals pending for thread `tid` (its own and the process's) that it does not block, from
// its status; all ones when unknown.
uint64_t deliverable_signals(pid_t pid, pid_t tid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/task/%d/status", pid, tid);
  FILE *f = std::fopen(path, "re");
  if (!f) return ~0ull;
  uint64_t pending = 0, blocked = 0;
  int seen = 0;
  char line[256];
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, "SigPnd:", 7) == 0 || std::strncmp(line, "ShdPnd:", 7) == 0) {
      pending |= std::strtoull(line + 7, nullptr, 16);
      ++seen;
    } else if (std::strncmp(line, "SigBlk:", 7) == 0) {
      blocked = std::strtoull(line + 7, nullptr, 16);
      ++seen;
    }
  }
  std::fclose(f);
  return seen == 3 ? pending & ~blocked : ~0ull;
}

}  // namespace

void SeizedThread::restart_cut_wait() {
  user_regs_struct regs{};
  if (ptrace_request(PTRACE_GETREGS, tid_, 0, reinterpret_cast<uint64_t>(&regs)) != 0) return;
  if (static_cast<int64_t>(regs.rax) != -EINTR || regs.orig_rax == ~0ull ||
      !arch::is_wait_syscall(regs.orig_rax) || !pending_.empty() ||
      deliverable_signals(pid_, tid_) != 0)
    return;
  uint8_t insn[2] = {};
  if (!read_memory(pid_, regs.rip - 2, insn) || insn[0] != 0x0f || insn[1] != 0x05) return;
  regs.rax = regs.orig_rax;
  regs.rip -= 2;
  (void)ptrace_request(PTRACE_SETREGS, tid_, 0, reinterpret_cast<uint64_t>(&regs));
}

Result<void> SeizedThread::release() {
  if (!attached_) return {};
  attached_ = false;
  released_at_ = Clock::now();
  if (gone_) return {};
  restart_cut_wait();
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

namespace {

// Whether pid is still a live process (not gone, not a zombie).
bool alive(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = std::fopen(path, "re");
  if (!f) return false;
  char buf[512] = {0};
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  const char *close = std::strrchr(buf, ')');
  return n > 0 && close && close[1] == ' ' && close[2] != 'Z' && close[2] != 'X';
}

// /proc/PID/mem at `address`, read or written; a process that died meanwhile says so.
Result<void> access_memory(pid_t pid, uint64_t address, void *data, size_t size, bool write) {
  int fd =
      ::open(fmt::format("/proc/{}/mem", pid).c_str(), (write ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  ssize_t n = -1;
  int e = errno;
  if (fd >= 0) {
    n = write ? ::pwrite(fd, data, size, static_cast<off_t>(address))
              : ::pread(fd, data, size, static_cast<off_t>(address));
    e = n < 0 ? errno : EIO;
    ::close(fd);
  }
  if (n == static_cast<ssize_t>(size)) return {};
  if (!alive(pid)) return fail(ESRCH, fmt::format("pid {} exited during the attach", pid));
  return fail(e, fmt::format("pid {}: {} {:#x}: {}", pid, write ? "writing" : "reading", address,
                             errno_text(e)));
}

}  // namespace

Result<void> read_memory(pid_t pid, uint64_t address, std::span<uint8_t> out) {
  return access_memory(pid, address, out.data(), out.size(), false);
}

Result<void> write_memory(pid_t pid, uint64_t address, std::span<const uint8_t> data) {
  return access_memory(pid, address, const_cast<uint8_t *>(data.data()), data.size(), true);
}

}  // namespace usprobe::cli
