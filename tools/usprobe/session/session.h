// What the commands share (count, latency, trace, stacks and run): everything checked before the
// session starts (the command or the processes to attach to, the probes, the agent), the agent's
// notices printed while it runs, and the run of count and latency.
#pragma once

#include <cstdio>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"
#include "resolve/probe_spec.h"
#include "session/region.h"
#include "session/supervisor.h"
#include "target/target.h"

namespace usprobe::cli {

// What the session probes: the command to start (COMMAND after "--") or the running processes to
// attach to (-p PID, one or more); the command line gives one or the other.
struct TargetRequest {
  std::vector<std::string> command;
  std::vector<pid_t> pids;
  std::string comm;  // -n: each pid's name must contain it
};

struct Session {
  std::unique_ptr<Target> target;
  std::vector<Probe> probes;
  std::string agent;  // absolute path of libusprobe-agent.so
};

// Checks the target, resolves the probes for it and finds the agent, in that order; the first
// error is returned and nothing has been started.
Result<Session> prepare_session(const std::vector<ProbeSpec> &specs, const TargetRequest &request);

// The PROBE arguments of count, latency and stacks: parsed, each checked by `check` (when given:
// a subcommand's own refusals), resolved for the command as prepare_session does, and each
// site kept once under all its names (merge_same_sites: libc:malloc and libc:mall* name one;
// libc:memcpy, libc:memmove and their implementation are one). `specs`, when not null, receives the
// parsed specs (Probe::spec_index points into them).
Result<Session> prepare_probes(const std::vector<std::string> &probe_args,
                               const TargetRequest &request,
                               const std::function<Result<void>(const ProbeSpec &)> &check = {},
                               std::vector<ProbeSpec> *specs = nullptr);

// Prints the agents' notices on stderr: "usprobe: pid N: <text>". A probe that could not be
// placed is reported once, by the first process that says so; probes on a program that a process
// does not run (exe: probes in a child that exec'd another program) in one line for all of them,
// by the first process that runs each other program (every process with verbose), the others
// counted at the end; informational notices only when verbose.
class NoticePrinter {
 public:
  NoticePrinter(const std::vector<Probe> &probes, bool verbose)
      : probes_(probes), verbose_(verbose) {}
  void print(const std::vector<NoticeMessage> &notices);
  // usprobe's own informational lines (Target::notes()), with verbose: "usprobe: <line>".
  void info(const std::vector<std::string> &lines);
  // At the end: notices the region had no room for, and a command the agent never started in.
  // `noun` names the target in those lines ("the command", "pid 1234").
  void finish(const Region &region, const ExitInfo &exit, const std::string &noun = "the command");

 private:
  void print_other_program(const NoticeMessage &n);

  const std::vector<Probe> &probes_;
  bool verbose_;
  std::set<int32_t> reported_probes_;
  // Processes whose probes were on a program they did not run: one line for each pair of (probed
  // program, program that ran), the other processes counted (a shell script execs hundreds).
  std::set<std::pair<std::string, std::string>> other_programs_seen_;
  unsigned other_program_hidden_ = 0;
  std::set<std::string> other_program_files_;  // the programs those processes did not run
  // What the agents said of probes, by index: why one was not placed (kNoticeProbe), why one took
  // the int3 path (kNoticeInt3, for the first few), for the summary at the end.
  std::map<int32_t, std::string> not_placed_why_, int3_why_;
};

// What one hit on the int3 path costs (a trap into the kernel and a signal), rounded:
// bench/hit_bench's usprobe/int3_entry_counter, CPU time per call, 1.9 us on the project's quiet
// 2-core VM (README), 3.1 us with that VM loaded by parallel builds (the raw trap: 3.3 us).
inline constexpr const char *kInt3Cost = "~2 us";

// At the end of a session: the probes that never got a site, and those that run on the int3 path,
// in a line each, a few names with their reasons ("usprobe: 2 probes are on the int3 path (a trap
// per hit, ~2 us each; 40 traps in all): libc:foo (40 hits; the function is 4 bytes...), ..."),
// the int3 ones by hits, most first; every name with verbose. `placed` and `int3` are
// Region::placed() and Region::on_int3(), `hits` the hits of each probe (Region::counts()).
void print_summary(const std::vector<Probe> &probes, const std::vector<bool> &placed,
                   const std::vector<bool> &int3, const std::vector<uint64_t> &hits,
                   const std::map<int32_t, std::string> &not_placed,
                   const std::map<int32_t, std::string> &int3_why, bool verbose);

// Where the reports go, and the command's stdout (README, "Where output goes"). The report never
// shares a stream with the command's output, as with perf stat and strace:
//   launched   the report on stderr, or in the file of -o; with -o -, on stdout, and the
//              command's stdout then goes to usprobe's stderr, or to --cmd-output FILE.
//   attached   the report on stdout (-o - too), or in the file of -o, as bpftrace and BCC do.
// --cmd-output FILE ("null": /dev/null) sends the command's stdout there in any case. Files are
// created before anything starts, so that a bad path is an error before the command runs.
class Output {
 public:
  // `path`: -o ("" = the default, "-" = stdout); `cmd_output`: --cmd-output ("" = none). Tells a
  // launched target where its stdout goes.
  static Result<Output> open(const std::string &path, const std::string &cmd_output,
                             Target &target);
  // A file of usprobe's own (stacks --svg).
  static Result<Output> create(const std::string &path);
  Output(Output &&other) noexcept
      : file_(std::exchange(other.file_, nullptr)),
        command_fd_(std::exchange(other.command_fd_, -1)) {}
  Output &operator=(Output &&) = delete;
  ~Output();
  FILE *file() const { return file_; }

 private:
  explicit Output(FILE *f, int command_fd = -1) : file_(f), command_fd_(command_fd) {}
  FILE *file_ = nullptr;
  int command_fd_ = -1;  // --cmd-output's file, usprobe's copy
};

// usprobe's exit status at the end of a session: a launched command's (1 when it cannot be
// known); 0 for an attached session, which ends the way the user asked, and for a command whose
// run usprobe ended itself (-d, trace -M).
int exit_status(const Target &target, const ExitInfo &exit);

// The run of count and latency, from the start of the session to its end: every tick frees the
// slots of threads that have exited and prints the agents' notices; every interval (-i) reports
// what changed since the last report; at the end, the totals. `take()` reads a Snapshot from the
// region, `subtract(a, b)` is what a holds beyond b, and `print(snapshot, elapsed_s, total,
// ending)` reports one. `reported` starts as an empty snapshot. `every_tick`, when set, runs at
// every tick and once more at the end (--serve publishes the counts). Returns usprobe's exit
// status: a launched command's (1 when it cannot be known), 0 for an attached session.
template <typename Snapshot, typename Take, typename Print>
int report_while_running(Supervisor &supervisor, Target &target, Region &region,
                         NoticePrinter &notices, WatchOptions watch, Snapshot reported, Take take,
                         Print print, const std::function<void()> &every_tick = {}) {
  TraceBatch no_events;  // these modes have no rings
  auto tick = [&] {
    region.reclaim(no_events);
    notices.print(region.new_notices());
    if (every_tick) every_tick();
  };
  auto interval = [&] {
    Snapshot now = take();
    double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - target.started()).count();
    print(subtract(now, reported), elapsed, false, ExitInfo{});
    reported = std::move(now);
  };
  ExitInfo exit = target.watch(supervisor, watch, tick, interval);
  // Grandchildren may still run: what they gathered so far is in their live slots.
  tick();
  print(take(), exit.elapsed_s, true, exit);
  notices.finish(region, exit, target.noun());
  return exit_status(target, exit);
}

// Prints "usprobe: <message>" on stderr and returns 2, usprobe's own failure status.
int report_error(const Error &error);

}  // namespace usprobe::cli
