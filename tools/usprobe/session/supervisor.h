// Watching the session while it runs: usprobe wakes every tick to read the region, every
// interval to report, and when a watched process exits or a signal arrives. What a signal does and
// when the session is over is the target's (target/target.h): a launched command is interrupted
// and waited for, as described below; an attached session just ends.
//
// -d. At the end of the duration the command gets --signal (SIGINT by default), as after a kill;
// if it has not exited kStopGrace later, it gets SIGKILL. Then the session ends as always: the
// final report, with everything counted up to the end, and usprobe exits with the command's status,
// or 0 when usprobe had to kill it (the run ended as asked). An attached session just ends at -d.
//
// Signals. The command shares usprobe's process group, so Ctrl-C at the terminal reaches both:
// usprobe does not forward a signal the kernel sent (si_code SI_KERNEL), the command has its own.
// A SIGINT, SIGTERM, SIGHUP or SIGQUIT sent to usprobe alone (kill) is forwarded. Either way
// usprobe keeps running until the command exits, to report what was gathered; a second SIGINT
// kills the command (SIGKILL) for the user who does not want to wait.
//
// The output. When the reports go to a pipe whose reader is gone (`usprobe trace ... | head -3`),
// usprobe stops writing them (the output is pointed at /dev/null), prints one line on stderr,
// and ends the session as after a SIGINT: the command gets SIGINT, usprobe waits for it and
// exits with its status. SIGPIPE is blocked in usprobe (a write to such a pipe fails with EPIPE
// instead of killing it); the command starts with usprobe's original signal mask, as always.
#pragma once

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <optional>

#include <string>
#include <string_view>
#include <vector>

namespace usprobe::cli {

struct WatchOptions {
  std::chrono::milliseconds tick{100};
  std::optional<double> duration_s;  // -d: stop_signal to the command after this long
  std::optional<double> interval_s;  // -i: on_interval this often
  FILE *output = nullptr;            // where the reports go: watched for a reader that went away
  int stop_signal = SIGINT;          // --signal: what -d sends
};

// At -d, a command that has not exited this long after stop_signal (it ignores or handles the
// signal) is killed: -d bounds the session whatever the command does.
inline constexpr std::chrono::seconds kStopGrace{1};

struct ExitInfo {
  std::optional<int> status;  // exit code, or 128 + signal; nullopt when it cannot be known
  double elapsed_s = 0;       // from the start of the command to its exit
  bool interrupted = false;   // usprobe interrupted it (a signal, -d, its output closed)
  // usprobe ended the run itself: -d's time came (or trace's -M count), and the command got its
  // signal; usprobe then exits with 0, whatever the command made of the signal (`status` is still
  // the command's: 130 for SIGINT).
  bool stopped = false;
  // usprobe killed it (SIGKILL) kStopGrace after -d's signal (`status`: 137).
  bool killed = false;
  // How the session ended, for the total's heading: "exit status 0", "pid 1234 exited",
  // "detached from pid 1234".
  std::string ending;
};

// What the supervisor watches (target/target.h fills it in).
struct Watched {
  std::chrono::steady_clock::time_point started;
  // Readable when a watched process exits (pidfds): they wake the wait at once instead of at the
  // next tick.
  std::vector<int> wake_fds;
  // usprobe was asked to stop: `sig` (SIGINT for -d and for an output that was closed) sent by
  // `from_kernel` (the terminal's, which reached a launched command's group too) or by a process;
  // `again` when this is not the first time.
  std::function<void(int sig, bool from_kernel, bool again)> interrupt;
  // kStopGrace after -d's signal, when the session is not over: kills what is left of it (a
  // launched command). True when something was killed. Empty: -d alone ends the session.
  std::function<bool()> escalate;
  // Whether the session is over; if so fills `info` but for elapsed_s, interrupted and killed.
  std::function<bool(ExitInfo &info)> ended;
  // What a closed output leads to, for the line that says so: "interrupting the command".
  std::string output_closed;
};

class Supervisor {
 public:
  // Blocks SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGPIPE from now on: they are read from a
  // signalfd, so none is lost between starting the command and watching it.
  Supervisor();
  ~Supervisor();
  Supervisor(const Supervisor &) = delete;
  Supervisor &operator=(const Supervisor &) = delete;

  // The signal mask the command must start with (usprobe's own, before the blocking).
  const sigset_t &child_mask() const { return old_mask_; }
  // Whether the output's reader went away during watch().
  bool output_gone() const { return output_gone_; }
  // Ends the session now, as -d does when its time is up (trace -M, from on_tick).
  void stop() { stop_now_ = true; }

  // Until `watched` says the session is over: on_tick every tick, on_interval every interval.
  // A write to options.output that fails because its reader is gone (in on_tick or on_interval)
  // interrupts the session as described above.
  ExitInfo watch(const Watched &watched, const WatchOptions &options,
                 const std::function<void()> &on_tick, const std::function<void()> &on_interval);

 private:
  // The reader of `output` is gone: from now on it writes to /dev/null. True when it was.
  bool drop_output(FILE *output, std::string_view consequence);

  sigset_t old_mask_;
  int signal_fd_ = -1;
  bool output_gone_ = false;
  bool stop_now_ = false;
};

}  // namespace usprobe::cli
