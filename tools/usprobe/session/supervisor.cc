#include "session/supervisor.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>

#include <system_error>
#include <utility>

namespace usprobe::cli {
namespace {

using Clock = std::chrono::steady_clock;

std::chrono::nanoseconds from_seconds(double s) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(s));
}

}  // namespace

Supervisor::Supervisor() {
  sigset_t block;
  sigemptyset(&block);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE}) sigaddset(&block, sig);
  ::sigprocmask(SIG_BLOCK, &block, &old_mask_);
  signal_fd_ = ::signalfd(-1, &block, SFD_CLOEXEC | SFD_NONBLOCK);
  // waitpid must see the child's exit: an inherited SIG_IGN for SIGCHLD would reap it silently.
  ::signal(SIGCHLD, SIG_DFL);
}

Supervisor::~Supervisor() {
  if (signal_fd_ >= 0) ::close(signal_fd_);
  ::sigprocmask(SIG_SETMASK, &old_mask_, nullptr);
}

namespace {

// Points `stream` at /dev/null: what is still buffered goes nowhere, and so does everything
// written later, with no write error and no exception from fmt::print.
void silence(FILE *stream) {
  int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (null >= 0) {
    ::dup2(null, ::fileno(stream));  // dup2 clears close-on-exec on the copy: not inherited
    ::close(null);
  }
  std::clearerr(stream);
}

// Whether writes to `fd` can no longer arrive: a pipe without a reader (POLLERR), a terminal that
// hung up (POLLHUP).
bool dead_end(int fd) {
  pollfd p = {fd, 0, 0};
  return fd >= 0 && ::poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP)) != 0;
}

}  // namespace

bool Supervisor::drop_output(FILE *output, std::string_view consequence) {
  if (dead_end(STDERR_FILENO)) silence(stderr);  // 2>&1 | head: stderr went with it
  if (output_gone_ || !output) return false;
  output_gone_ = true;
  silence(output);
  fmt::print(stderr, "usprobe: the output was closed: {}\n", consequence);
  std::fflush(stderr);
  return true;
}

ExitInfo Supervisor::watch(const Watched &watched, const WatchOptions &options,
                           const std::function<void()> &on_tick,
                           const std::function<void()> &on_interval) {
  // time_point::max(): never (no -d, no -i).
  constexpr Clock::time_point kNever = Clock::time_point::max();
  Clock::time_point stop_at = kNever, kill_at = kNever, next_interval = kNever;
  if (options.duration_s) stop_at = watched.started + from_seconds(*options.duration_s);
  if (options.interval_s) next_interval = watched.started + from_seconds(*options.interval_s);
  bool interrupted = false;
  ExitInfo info;
  auto interrupt = [&](int sig, bool from_kernel) {
    watched.interrupt(sig, from_kernel, interrupted);
    interrupted = true;  // from now on as after Ctrl-C
  };

  while (true) {
    Clock::time_point now = Clock::now();
    if (std::exchange(stop_now_, false)) stop_at = std::min(stop_at, now);  // -d's way, at once
    Clock::time_point wake = std::min({now + options.tick, stop_at, kill_at, next_interval});
    auto wait =
        std::chrono::ceil<std::chrono::milliseconds>(std::max(wake - now, Clock::duration()));
    // The output is polled for nothing but errors: a pipe whose reader closed it reports POLLERR.
    int output_fd = options.output && !output_gone_ ? ::fileno(options.output) : -1;
    std::vector<pollfd> fds = {{signal_fd_, POLLIN, 0}, {output_fd, 0, 0}};
    for (int fd : watched.wake_fds)
      if (fd >= 0) fds.push_back({fd, POLLIN, 0});
    ::poll(fds.data(), fds.size(), static_cast<int>(wait.count()));
    // As if the user had pressed Ctrl-C: the session is interrupted, then reported on.
    auto output_closed = [&] {
      if (drop_output(options.output, watched.output_closed)) interrupt(SIGINT, false);
    };
    if (output_fd >= 0 && (fds[1].revents & POLLERR)) output_closed();

    signalfd_siginfo si;
    while (signal_fd_ >= 0 &&
           ::read(signal_fd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      if (si.ssi_signo == SIGPIPE) {
        // A write to a pipe without a reader (it failed with EPIPE): the output's, or stderr's.
        if (output_fd >= 0 && ::poll(&fds[1], 1, 0) == 1 && (fds[1].revents & POLLERR))
          output_closed();
        continue;
      }
      interrupt(static_cast<int>(si.ssi_signo), si.ssi_code == SI_KERNEL);
    }
    if (stop_at != kNever && Clock::now() >= stop_at) {
      stop_at = kNever;
      info.stopped = true;
      interrupt(options.stop_signal, false);
      if (watched.escalate) kill_at = Clock::now() + kStopGrace;
    }
    if (kill_at != kNever && Clock::now() >= kill_at) {
      kill_at = kNever;
      if (watched.escalate()) info.killed = true;
    }

    if (watched.ended(info)) {
      info.elapsed_s = std::chrono::duration<double>(Clock::now() - watched.started).count();
      info.interrupted = interrupted;
      break;
    }
    // fmt::print throws when a write fails: a reader that left between the poll and the write.
    auto guarded = [&](const std::function<void()> &report) {
      try {
        report();
      } catch (const std::system_error &e) {
        // EPIPE: a pipe without a reader; EIO: a terminal that hung up (with SIGHUP).
        if (e.code().value() != EPIPE && e.code().value() != EIO) throw;
        output_closed();
      }
    };
    guarded(on_tick);
    if (next_interval != kNever && Clock::now() >= next_interval) {
      guarded(on_interval);
      auto step = from_seconds(*options.interval_s);
      // A late report does not bring a burst of catch-up reports.
      while (next_interval <= Clock::now()) next_interval += step;
    }
  }
  return info;
}

}  // namespace usprobe::cli
