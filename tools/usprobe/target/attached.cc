// Running processes that usprobe attaches to (target.h): every refusal is decided before any of
// them is touched; then the agent is injected into each (inject.h), all of them sharing one region
// (the first creates it, the others are handed it), and at the end of the session every process
// that carries the session's probes removes them (protocol/attach.h).
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <optional>
#include <thread>

#include "protocol/attach.h"
#include "target/inject.h"
#include "target/launch.h"
#include "target/signal_masks.h"
#include "target/target.h"

namespace usprobe::cli {
namespace {

using Clock = std::chrono::steady_clock;

// How long the processes get, once the session is over, to say that their probes are removed: a
// detach is a few milliseconds, but a process under load (or stopped by a debugger) may need more.
constexpr std::chrono::seconds kDetachWait{10};

// Whether `pid` is still a running process: not gone, not a zombie (whose probes went with its
// memory).
bool running(pid_t pid) {
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(stat, line)) return false;
  size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z' &&
         line[paren + 2] != 'X';
}

std::string pid_list(const std::vector<pid_t> &pids) {
  std::string out;
  for (pid_t p : pids) out += (out.empty() ? "" : ", ") + std::to_string(p);
  return out;
}

struct Process {
  AttachPoint point;
  std::string program;  // what it runs, for the description
  Injected injected;
  int pidfd = -1;
  bool exited = false;
  std::vector<MaskChange> unblocked;  // signals taken out of its threads' masks (signal_masks.h)
};

class AttachedTarget final : public Target {
 public:
  explicit AttachedTarget(std::vector<Process> processes) : processes_(std::move(processes)) {}
  ~AttachedTarget() override {
    end_session();
    for (Process &p : processes_)
      if (p.pidfd >= 0) ::close(p.pidfd);
  }

  // Probes resolve against the first process: the others must run the same program and map the
  // same libraries for them to be placed (each agent says which it could not place).
  LibraryFinder finder() const override {
    return LibraryFinder::for_process(processes_.front().point.pid);
  }
  std::string noun() const override {
    return processes_.size() == 1 ? fmt::format("pid {}", processes_.front().point.pid)
                                  : "pids " + pid_list(pids());
  }
  std::string description() const override {
    std::string out;
    for (const Process &p : processes_)
      out += fmt::format("{}pid {} ({})", out.empty() ? "" : ", ", p.point.pid, p.program);
    return out;
  }
  bool is_attached() const override { return true; }

  // The first process creates the region (its memfd is the target's, filled by the CLI before
  // its agent runs); each other one is handed that region (inject.h), so that every agent of the
  // session counts into it. A failed injection ends the session in the processes done so far.
  Result<Region *> start(const RegionConfig &config, const std::vector<PlanEntry> &plan,
                         const std::string &agent, Supervisor &) override {
    // The probed files, read, indexed and decoded here once rather than in each target
    // (protocol/prepared.h); each target gets its own descriptor of the memfd.
    std::vector<std::string> locations;
    for (const PlanEntry &e : plan) locations.push_back(e.location);
    struct Prepared {
      int fd;
      ~Prepared() {
        if (fd >= 0) ::close(fd);
      }
    } prepared{prepared_files_memfd(locations, {})};
    for (Process &p : processes_) {
      // Threads that block SIGTRAP or the round's signal could not be patched around: they are
      // unblocked once the agent is loaded, before it attaches (signal_masks.h).
      InjectOptions options;
      options.prepared_fd = prepared.fd;
      options.on_prepared = [&p](int round_signal) {
        uint64_t signals = signal_bit(SIGTRAP) | (round_signal > 0 ? signal_bit(round_signal) : 0);
        if (auto changes = unblock_signals(p.point.pid, signals)) p.unblocked = std::move(*changes);
      };
      auto injected =
          !region_ ? inject_agent(
                         p.point, agent,
                         [&](int fd) -> Result<void> {
                           // The injector keeps its descriptor (and closes it on
                           // failure); the region holds a copy.
                           int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
                           if (copy < 0)
                             return fail(errno, fmt::format("dup: {}", std::strerror(errno)));
                           auto region = Region::create(config, plan, copy);
                           if (!region) return std::unexpected(region.error());
                           region_.emplace(std::move(*region));
                           return {};
                         },
                         options)
                   : inject_agent(p.point, agent, region_->fd(), options);
      if (!injected) {
        // The process exited right after its agent attached (its record in the region says so),
        // before usprobe read the answer: the attach took place, its counts are in the region,
        // and the session sees the exit.
        if (injected.error().code == ESRCH && region_ && !running(p.point.pid)) {
          const std::vector<ProcessEntry> records = region_->processes();
          if (std::any_of(records.begin(), records.end(), [&](const ProcessEntry &r) {
                return r.pid == p.point.pid && r.state != 0;
              })) {
            p.exited = true;
            continue;
          }
        }
        block_again(p.point.pid, std::exchange(p.unblocked, {}));
        end_session();  // the processes attached before this one
        region_.reset();
        return std::unexpected(named(p.point.pid, injected.error()));
      }
      p.injected = *injected;
      if (p.injected.region_fd >= 0) ::close(std::exchange(p.injected.region_fd, -1));
      p.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, p.point.pid, 0));
    }
    started_ = Clock::now();
    return &*region_;
  }

  // Any of SIGINT, SIGTERM, SIGHUP, SIGQUIT, -d, or a closed output ends the session; so does the
  // exit of the last target. The processes are not signalled: they are not usprobe's.
  ExitInfo watch(Supervisor &supervisor, const WatchOptions &options,
                 const std::function<void()> &on_tick,
                 const std::function<void()> &on_interval) override {
    bool stop = false;
    Watched watched;
    watched.started = started_;
    for (const Process &p : processes_) watched.wake_fds.push_back(p.pidfd);
    watched.output_closed = "ending the session";
    watched.interrupt = [&](int, bool, bool) { stop = true; };
    watched.ended = [&](ExitInfo &) {
      for (Process &p : processes_) p.exited = p.exited || !running(p.point.pid);
      return stop || std::all_of(processes_.begin(), processes_.end(),
                                 [](const Process &p) { return p.exited; });
    };
    ExitInfo exit = supervisor.watch(watched, options, on_tick, on_interval);
    // Ended on request, the processes ran all along: what never loaded a library was not cut short.
    exit.interrupted = false;
    std::vector<pid_t> gone, left;
    for (const Process &p : processes_) (p.exited ? gone : left).push_back(p.point.pid);
    end_session();
    if (left.empty())
      exit.ending = fmt::format("{} {} exited", gone.size() == 1 ? "pid" : "pids", pid_list(gone));
    else
      exit.ending =
          fmt::format("detached from {} {}", left.size() == 1 ? "pid" : "pids", pid_list(left));
    return exit;
  }

  Clock::time_point started() const override { return started_; }

  std::vector<std::string> notes() const override {
    std::vector<std::string> out;
    for (const Process &p : processes_) {
      std::string line =
          fmt::format("pid {}: agent injected in {:.1f} ms, thread {} held {:.1f} ms", p.point.pid,
                      p.injected.attach_ms, p.point.tid, p.injected.longest_stop_ms);
      if (!p.unblocked.empty())
        line += fmt::format(
            "; SIGTRAP and the round's signal unblocked in {} thread(s) for the "
            "session",
            p.unblocked.size());
      out.push_back(std::move(line));
    }
    return out;
  }

 private:
  // An injection's error, naming the process when there are several and it does not already.
  Error named(pid_t pid, Error error) const {
    if (processes_.size() < 2) return error;
    const std::string name = fmt::format("pid {}", pid);
    for (size_t at = error.message.find(name); at != std::string::npos;
         at = error.message.find(name, at + 1)) {
      size_t after = at + name.size();
      if (after == error.message.size() || !std::isdigit(uint8_t(error.message[after])))
        return error;
    }
    error.message = fmt::format("{}: {}", name, error.message);
    return error;
  }

  std::vector<pid_t> pids() const {
    std::vector<pid_t> out;
    for (const Process &p : processes_) out.push_back(p.point.pid);
    return out;
  }

  // Closes the session's pipes (every process that carries the probes reads end of file) and
  // waits until every one of them that still runs has removed its probes; a process that does not
  // say so in time is named.
  void end_session() {
    bool any = false;
    for (Process &p : processes_)
      if (p.injected.control_fd >= 0) {
        ::close(std::exchange(p.injected.control_fd, -1));
        any = true;
      }
    if (!any || !region_) return;
    auto deadline = Clock::now() + kDetachWait;
    // A process that exec'd during the session (or exited) has no probes of it left, and never
    // says detached: it no longer maps the region.
    struct stat region {};
    ::fstat(region_->fd(), &region);
    std::vector<pid_t> waiting;
    while (true) {
      waiting.clear();
      for (const ProcessEntry &r : region_->processes())
        if (r.state != agent::kProcessDetached && running(r.pid) &&
            maps_memfd(r.pid, region.st_dev, region.st_ino))
          waiting.push_back(r.pid);
      if (waiting.empty() || Clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    for (pid_t pid : waiting)
      fmt::print(stderr,
                 "usprobe: pid {} did not confirm within {} s that its probes are removed\n", pid,
                 kDetachWait.count());
    // No int3 of the session is left, and no round will come, where the process's probes are
    // removed: the threads that blocked SIGTRAP or the round's signal block them again.
    for (Process &p : processes_)
      if (!p.unblocked.empty() &&
          std::find(waiting.begin(), waiting.end(), p.point.pid) == waiting.end())
        block_again(p.point.pid, std::exchange(p.unblocked, {}));
  }

  std::vector<Process> processes_;
  std::optional<Region> region_;
  Clock::time_point started_ = Clock::now();
};

}  // namespace

Result<std::unique_ptr<Target>> Target::attached(const std::vector<pid_t> &pids) {
  std::vector<Process> processes;
  for (pid_t pid : pids) {
    auto point = check_attachable(pid);
    if (!point) return std::unexpected(point.error());
    Process p;
    p.point = std::move(*point);
    char exe[4096];
    ssize_t n = ::readlink(fmt::format("/proc/{}/exe", pid).c_str(), exe, sizeof exe - 1);
    p.program = n > 0 ? std::string(exe, static_cast<size_t>(n)) : "?";
    processes.push_back(std::move(p));
  }
  return std::make_unique<AttachedTarget>(std::move(processes));
}

}  // namespace usprobe::cli
