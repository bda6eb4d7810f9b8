// A command that usprobe starts (target.h): the region first, then the command with the agent
// preloaded (launch.h), watched until it exits.
#include <fmt/format.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <optional>

#include "target/command.h"
#include "target/launch.h"
#include "target/target.h"

namespace usprobe::cli {
namespace {

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

class LaunchedTarget final : public Target {
 public:
  explicit LaunchedTarget(Command command) : command_(std::move(command)) {}
  ~LaunchedTarget() override {
    if (pidfd_ >= 0) ::close(pidfd_);
    if (prepared_fd_ >= 0) ::close(prepared_fd_);
  }

  LibraryFinder finder() const override {
    return LibraryFinder::for_command(command_.elf, command_.interp);
  }
  std::string noun() const override { return "the command"; }
  std::string description() const override {
    std::string out;
    for (const std::string &a : command_.argv) out += (out.empty() ? "" : " ") + a;
    return out;
  }
  bool is_attached() const override { return false; }
  void send_stdout_to(int fd) override { stdout_fd_ = fd; }

  Result<Region *> start(const RegionConfig &config, const std::vector<PlanEntry> &plan,
                         const std::string &agent, Supervisor &supervisor) override {
    auto region = Region::create(config, plan);
    if (!region) return std::unexpected(region.error());
    region_.emplace(std::move(*region));
    std::vector<std::string> locations;
    for (const PlanEntry &e : plan) locations.push_back(e.location);
    std::vector<std::string> files;  // the dynamic linker: the engine follows it with a probe
    if (!command_.interp.empty()) files.push_back(command_.interp);
    prepared_fd_ = prepared_files_memfd(locations, files);
    auto child =
        launch(command_, agent, region_->fd(), supervisor.child_mask(), stdout_fd_, prepared_fd_);
    if (!child) return std::unexpected(child.error());
    child_ = *child;
    pidfd_ = open_pidfd(child_.pid);
    return &*region_;
  }

  // Signals. The command shares usprobe's process group, so Ctrl-C at the terminal reaches both:
  // a signal the kernel sent (si_code SI_KERNEL) is not forwarded, the command has its own. One
  // sent to usprobe alone (kill) is. A second SIGINT kills the command (SIGKILL) for the user who
  // does not want to wait; -d and a closed output send SIGINT (-d: --signal), and SIGKILL the
  // second time. At -d, SIGKILL also comes on its own kStopGrace later (supervisor.h).
  ExitInfo watch(Supervisor &supervisor, const WatchOptions &options,
                 const std::function<void()> &on_tick,
                 const std::function<void()> &on_interval) override {
    Watched watched;
    watched.started = child_.started;
    watched.wake_fds = {pidfd_};
    watched.output_closed = "interrupting the command";
    watched.interrupt = [&](int sig, bool from_kernel, bool again) {
      if (sig == SIGINT && again)
        ::kill(child_.pid, SIGKILL);
      else if (!from_kernel)
        ::kill(child_.pid, sig);
    };
    watched.escalate = [&] {
      // Not when it has exited already (and is not reaped yet): its status is its own.
      siginfo_t si{};
      if (::waitid(P_PID, static_cast<id_t>(child_.pid), &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
          si.si_pid == child_.pid)
        return false;
      fmt::print(stderr, "usprobe: the command did not exit {} s after -d's signal: killing it\n",
                 kStopGrace.count());
      std::fflush(stderr);
      bool killed = ::kill(child_.pid, SIGKILL) == 0;
      // And the processes of the command that carry its probes (children that ignore the signal
      // too, a shell's running command): the run ends here, as the watchdog would end it.
      kill_command_processes(region_->fd());
      return killed;
    };
    watched.ended = [&](ExitInfo &info) {
      int status = 0;
      pid_t done = ::waitpid(child_.pid, &status, WNOHANG);
      if (done != child_.pid && !(done < 0 && errno == ECHILD)) return false;
      if (done == child_.pid) {
        info.status = decode_status(status);
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGTRAP) explain_sigtrap();
      }
      info.ending = info.killed   ? std::string("killed by usprobe at the end of -d")
                    : info.status ? fmt::format("exit status {}", *info.status)
                                  : std::string("exit status unknown");
      return true;
    };
    return supervisor.watch(watched, options, on_tick, on_interval);
  }

  std::chrono::steady_clock::time_point started() const override { return child_.started; }

 private:
  Command command_;
  std::optional<Region> region_;
  Child child_;
  int pidfd_ = -1;
  int prepared_fd_ = -1;  // the probed files, prepared for the command (protocol/prepared.h)
  int stdout_fd_ = -1;    // the command's stdout, when not usprobe's (Output)
};

}  // namespace

Result<std::unique_ptr<Target>> Target::launched(const std::vector<std::string> &argv) {
  auto command = check_command(argv);
  if (!command) return std::unexpected(command.error());
  return std::make_unique<LaunchedTarget>(std::move(*command));
}

}  // namespace usprobe::cli
