// Watching the command while it runs: usprobe wakes every tick to read the region, every
// interval to report, and when the command exits or a signal arrives.
//
// Signals. The command shares usprobe's process group, so Ctrl-C at the terminal reaches both:
// usprobe does not forward a signal the kernel sent (si_code SI_KERNEL), the command has its own.
// A SIGINT or SIGTERM sent to usprobe alone (kill) is forwarded. Either way usprobe keeps
// running until the command exits, to report what was gathered; a second SIGINT kills the
// command (SIGKILL) for the user who does not want to wait.
#pragma once

#include <signal.h>

#include <chrono>
#include <functional>
#include <optional>

#include "launch.h"

namespace usprobe::cli {

struct WatchOptions {
  std::chrono::milliseconds tick{100};
  std::optional<double> duration_s;  // -d: SIGINT to the command after this long
  std::optional<double> interval_s;  // -i: on_interval this often
};

struct ExitInfo {
  std::optional<int> status;  // exit code, or 128 + signal; nullopt when it cannot be known
  double elapsed_s = 0;       // from the start of the command to its exit
};

class Supervisor {
 public:
  // Blocks SIGINT and SIGTERM from now on: they are read from a signalfd, so none is lost
  // between starting the command and watching it.
  Supervisor();
  ~Supervisor();
  Supervisor(const Supervisor &) = delete;
  Supervisor &operator=(const Supervisor &) = delete;

  // The signal mask the command must start with (usprobe's own, before the blocking).
  const sigset_t &child_mask() const { return old_mask_; }

  // Until the direct child exits: on_tick every tick, on_interval every interval. Grandchildren
  // are not waited for.
  ExitInfo watch(const Child &child, const WatchOptions &options,
                 const std::function<void()> &on_tick, const std::function<void()> &on_interval);

 private:
  sigset_t old_mask_;
  int signal_fd_ = -1;
};

}  // namespace usprobe::cli
