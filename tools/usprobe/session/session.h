// What `count` and `trace` share: everything checked before the command starts (the command, the
// probes, the agent), and the agent's notices printed while it runs.
#pragma once

#include <cstdio>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "resolve/probe_spec.h"
#include "session/region.h"
#include "session/supervisor.h"
#include "target/command.h"
#include "target/launch.h"

namespace usprobe::cli {

struct Session {
  Command command;
  std::vector<Probe> probes;
  std::string agent;  // absolute path of libusprobe-agent.so
};

// Checks the command, resolves the probes for it and finds the agent, in that order; the first
// error is returned and nothing has been started.
Result<Session> prepare_session(const std::vector<ProbeSpec> &specs,
                                const std::vector<std::string> &command_argv);

// The PROBE arguments of count, latency and stacks: parsed, each checked by `check` (when given:
// a subcommand's own refusals), resolved for the command as prepare_session does, and each
// location kept once (libc:malloc and libc:mall* name one). `specs`, when not null, receives the
// parsed specs (Probe::spec_index points into them).
Result<Session> prepare_probes(const std::vector<std::string> &probe_args,
                               const std::vector<std::string> &command_argv,
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
  // At the end: notices the region had no room for, and a command the agent never started in.
  void finish(const Region &region, const ExitInfo &exit);

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
};

// Where reports go: stdout, or the file of -o (created before the command starts).
class Output {
 public:
  static Result<Output> open(const std::string &path);  // "" = stdout
  Output(Output &&other) noexcept : file_(std::exchange(other.file_, nullptr)) {}
  Output &operator=(Output &&) = delete;
  ~Output();
  FILE *file() const { return file_; }

 private:
  explicit Output(FILE *f) : file_(f) {}
  FILE *file_ = nullptr;
};

// The run of count and latency, from the started command to its exit: every tick frees the slots
// of threads that have exited and prints the agents' notices; every interval (-i) reports what
// changed since the last report; at the end, the totals. `take()` reads a Snapshot from the
// region, `subtract(a, b)` is what a holds beyond b, and `print(snapshot, elapsed_s, total,
// status)` reports one. `reported` starts as an empty snapshot. Returns the command's exit status
// (1 when it cannot be known).
template <typename Snapshot, typename Take, typename Print>
int report_while_running(Supervisor &supervisor, const Child &child, Region &region,
                         NoticePrinter &notices, WatchOptions watch, Snapshot reported, Take take,
                         Print print) {
  TraceBatch no_events;  // these modes have no rings
  auto tick = [&] {
    region.reclaim(no_events);
    notices.print(region.new_notices());
  };
  auto interval = [&] {
    Snapshot now = take();
    double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - child.started).count();
    print(subtract(now, reported), elapsed, false, std::nullopt);
    reported = std::move(now);
  };
  ExitInfo exit = supervisor.watch(child, watch, tick, interval);
  // Grandchildren may still run: what they gathered so far is in their live slots.
  tick();
  print(take(), exit.elapsed_s, true, exit.status);
  notices.finish(region, exit);
  return exit.status.value_or(1);
}

// Prints "usprobe: <message>" on stderr and returns 2, usprobe's own failure status.
int report_error(const Error &error);

}  // namespace usprobe::cli
