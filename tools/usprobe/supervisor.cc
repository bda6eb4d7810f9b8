#include "supervisor.h"

#include <poll.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>

#include <fmt/format.h>

namespace usprobe::cli {
namespace {

using Clock = std::chrono::steady_clock;

std::chrono::nanoseconds from_seconds(double s) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(s));
}

// A pidfd becomes readable when the process exits, which wakes poll at once instead of at the
// next tick. Without one (kernels before 5.3) the tick alone notices the exit.
int open_pidfd(pid_t pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

std::optional<int> decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return std::nullopt;
}

// The command died of SIGTRAP. usprobe keeps SIGTRAP deliverable wherever a program blocks it
// through libc (src/os/linux/signal_guard.h), and applies the program's own SIGTRAP disposition to
// traps that are not usprobe's; what it cannot see is a mask set by a raw system call, or glibc's
// own windows with every signal blocked (a thread's start and exit, posix_spawn's child), where
// the kernel kills a thread that reaches an int3 site. Or the program raised SIGTRAP itself.
void explain_sigtrap() {
  fmt::print(stderr,
             "usprobe: the command was killed by SIGTRAP: unless it raised that itself, a thread "
             "reached an int3 probe site while it blocked SIGTRAP where usprobe cannot unblock it "
             "(a raw system call, glibc's thread start or exit, posix_spawn); -v counts the "
             "probes on the int3 path\n");
  std::fflush(stderr);
}

}  // namespace

Supervisor::Supervisor() {
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  ::sigprocmask(SIG_BLOCK, &block, &old_mask_);
  signal_fd_ = ::signalfd(-1, &block, SFD_CLOEXEC | SFD_NONBLOCK);
  // waitpid must see the child's exit: an inherited SIG_IGN for SIGCHLD would reap it silently.
  ::signal(SIGCHLD, SIG_DFL);
}

Supervisor::~Supervisor() {
  if (signal_fd_ >= 0) ::close(signal_fd_);
  ::sigprocmask(SIG_SETMASK, &old_mask_, nullptr);
}

ExitInfo Supervisor::watch(const Child &child, const WatchOptions &options,
                           const std::function<void()> &on_tick,
                           const std::function<void()> &on_interval) {
  int pidfd = open_pidfd(child.pid);
  // time_point::max(): never (no -d, no -i).
  constexpr Clock::time_point kNever = Clock::time_point::max();
  Clock::time_point stop_at = kNever, next_interval = kNever;
  if (options.duration_s) stop_at = child.started + from_seconds(*options.duration_s);
  if (options.interval_s) next_interval = child.started + from_seconds(*options.interval_s);
  bool interrupted = false;
  ExitInfo info;

  while (true) {
    Clock::time_point now = Clock::now();
    Clock::time_point wake = std::min({now + options.tick, stop_at, next_interval});
    auto wait =
        std::chrono::ceil<std::chrono::milliseconds>(std::max(wake - now, Clock::duration()));
    pollfd fds[2] = {{signal_fd_, POLLIN, 0}, {pidfd, POLLIN, 0}};
    ::poll(fds, pidfd >= 0 ? 2 : 1, static_cast<int>(wait.count()));

    signalfd_siginfo si;
    while (signal_fd_ >= 0 &&
           ::read(signal_fd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      if (si.ssi_signo == SIGINT && interrupted) {
        ::kill(child.pid, SIGKILL);
      } else if (si.ssi_code != SI_KERNEL) {
        ::kill(child.pid, static_cast<int>(si.ssi_signo));  // the terminal's went to it already
      }
      interrupted = true;
    }
    if (stop_at != kNever && Clock::now() >= stop_at) {
      stop_at = kNever;
      ::kill(child.pid, SIGINT);
      interrupted = true;  // from now on as after Ctrl-C: a SIGINT to usprobe kills the command
    }

    int status = 0;
    pid_t done = ::waitpid(child.pid, &status, WNOHANG);
    if (done == child.pid || (done < 0 && errno == ECHILD)) {
      info.elapsed_s = std::chrono::duration<double>(Clock::now() - child.started).count();
      if (done == child.pid) {
        info.status = decode_status(status);
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGTRAP) explain_sigtrap();
      }
      break;
    }
    on_tick();
    if (next_interval != kNever && Clock::now() >= next_interval) {
      on_interval();
      auto step = from_seconds(*options.interval_s);
      // A late report does not bring a burst of catch-up reports.
      while (next_interval <= Clock::now()) next_interval += step;
    }
  }
  if (pidfd >= 0) ::close(pidfd);
  return info;
}

}  // namespace usprobe::cli
