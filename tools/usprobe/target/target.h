// The probed processes, as the commands see them: a command that usprobe starts (launched), or
// processes that were running already (attached, `-p PID`). The commands speak to this seam alone:
// they check the target, resolve their probes for it, start the session with a region and a plan,
// watch it, and read the region at the end; how the agent got into the processes, how the session
// ends and what "the end" means is the target's business.
//
//   launched  fork + exec with LD_PRELOAD (launch.h); the session ends when the command exits
//             (Ctrl-C and -d interrupt the command, which then exits, or is killed a second
//             after -d); usprobe exits with its status (0 when usprobe killed it). The probes are
//             never removed: the processes are ending.
//   attached  ptrace injection (inject.h) into each PID, one after the other, all of them sharing
//             one region (counts are tagged with their pid); a PID that cannot be attached ends
//             the session in those attached before it. The session ends on Ctrl-C/SIGTERM, at -d,
//             or when the last target exits; then every process that carries the session's probes
//             (the targets and the children they forked meanwhile) removes them and says so
//             through the region, and usprobe exits with 0. The processes keep running.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "resolve/library_finder.h"
#include "session/region.h"
#include "session/supervisor.h"

namespace usprobe::cli {

class Target {
 public:
  virtual ~Target() = default;

  // Checks what can be checked before anything starts: the command (target/command.h), or each
  // pid (inject.h: check_attachable). The first refusal is returned; nothing has been touched.
  static Result<std::unique_ptr<Target>> launched(const std::vector<std::string> &argv);
  static Result<std::unique_ptr<Target>> attached(const std::vector<pid_t> &pids);

  // Where the probes' FILE parts are looked up ("exe", "libc", paths): the command's, or the
  // target process's mount namespace and mapped libraries.
  virtual LibraryFinder finder() const = 0;
  // The processes' name in messages: "the command", "pid 1234", "pids 1234, 1240".
  virtual std::string noun() const = 0;
  // For reports that name what was probed (a flame graph's subtitle): the command line, or the
  // pids with their programs.
  virtual std::string description() const = 0;
  // Attached targets end with their probes removed, and their exit statuses are not known.
  virtual bool is_attached() const = 0;
  // A launched command's stdout goes to `fd` (still usprobe's: the command gets a copy) instead of
  // usprobe's stdout; called before start(). Attached processes keep theirs.
  virtual void send_stdout_to(int /*fd*/) {}

  // Creates the region with `config` and `plan` and gets the agent going in every process, with
  // `agent` (libusprobe-agent.so). Launched: the region, then the command. Attached: for each pid,
  // the injection: the first has the target create the region's memfd, the others are handed that
  // region. On error nothing is left probed, and the error names the pid. The region lives as long
  // as the target.
  virtual Result<Region *> start(const RegionConfig &config, const std::vector<PlanEntry> &plan,
                                 const std::string &agent, Supervisor &supervisor) = 0;

  // From the start until the end of the session (target.h's header says what ends it), with
  // on_tick every tick and on_interval every interval; when it returns, the session is over:
  // every attached process has removed its probes (or, gone, never will), so the region holds
  // all that will ever be counted.
  virtual ExitInfo watch(Supervisor &supervisor, const WatchOptions &options,
                         const std::function<void()> &on_tick,
                         const std::function<void()> &on_interval) = 0;

  // What started the session, for -v: attached, how long each injection took and how long the
  // thread it seized was held ("pid 1234: agent injected in 3.1 ms, thread 1234 held 0.8 ms").
  virtual std::vector<std::string> notes() const { return {}; }

  // When the session started (the command's start, the end of the injection).
  virtual std::chrono::steady_clock::time_point started() const = 0;
};

}  // namespace usprobe::cli
