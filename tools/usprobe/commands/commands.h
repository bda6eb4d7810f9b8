// The subcommands, one file each (list.cc, count.cc, trace.cc, latency.cc, stacks.cc), behind one
// entry point (cli.cc) that parses the command line. Each probes a command it starts (COMMAND after
// "--") or running processes (-p PID) and returns usprobe's exit status: 2 for its own errors,
// otherwise the command's (0 for an attached session).
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace usprobe::cli {

struct ListOptions {
  std::string file;
  std::string pattern;  // "" = every function
  bool json = false;
  bool regex = false;    // -r: pattern is a regular expression, not a glob
  bool verbose = false;  // -v: USDT probes with their sites, arguments and semaphore
};

struct CountOptions {
  std::vector<std::string> probes;
  std::vector<std::string> command;
  std::vector<pid_t> pids;  // -p: attach to these running processes instead
  std::optional<double> interval_s, duration_s;
  // Where things go (README "Where output goes"): -o ("" = the default: stderr with a command,
  // stdout with -p; "-" = stdout) and --cmd-output (the command's stdout; "" = unchanged, or
  // stderr with -o -; "null" = /dev/null).
  std::string output, cmd_output;
  int stop_signal = SIGINT;  // --signal: what -d sends the command (SIGKILL 1 s later)
  std::string comm;          // -n: only processes whose name contains it are probed
  bool json = false, per_pid = false, verbose = false;
  bool all = false;         // --all: rows without hits too
  bool timestamps = false;  // -T: a "HH:MM:SS" line before each report (funccount -T)
  size_t top = 0;           // --top N: the N busiest rows (0: all)
  std::string serve;        // --serve HOST:PORT: /metrics for Prometheus while it runs
};

// trace: each thread's ring (trace.cc says how it was sized), and how much of a %s string the
// agent copies (bpftrace's default str() keeps 63 bytes too).
inline constexpr uint64_t kDefaultRingSize = uint64_t{16} << 20;
inline constexpr uint64_t kMinRingSize = uint64_t{64} << 10;
inline constexpr uint64_t kMaxRingSize = uint64_t{1} << 30;
inline constexpr uint32_t kDefaultStrlen = 63;
inline constexpr uint32_t kMaxStrlen = 4095;

struct TraceOptions {
  std::vector<std::string> probes;  // probe, then an optional format and its arguments
  std::vector<std::string> command;
  std::vector<pid_t> pids;  // -p: attach to these running processes instead
  std::optional<double> duration_s;
  // Where things go (README "Where output goes"): -o ("" = the default: stderr with a command,
  // stdout with -p; "-" = stdout) and --cmd-output (the command's stdout; "" = unchanged, or
  // stderr with -o -; "null" = /dev/null).
  std::string output, cmd_output;
  int stop_signal = SIGINT;  // --signal: what -d sends the command (SIGKILL 1 s later)
  std::string comm;          // -n: only processes whose name contains it are probed
  bool json = false, verbose = false;
  uint64_t buffer_size = 0;          // --buffer-size: bytes per thread (0: kDefaultRingSize)
  uint32_t strlen = kDefaultStrlen;  // --strlen: bytes of a %s string kept, its NUL not counted
  bool timestamp = false;            // -t: a TIME(s) column, seconds since the trace started
  bool wall_time = false;            // -T: a TIME column, the wall-clock time (HH:MM:SS)
  bool durations = false;            // -D: a DURATION(us) column: a return's time since its entry
  bool user_stacks = false;          // -U: each event's user stack after its line
  uint64_t max_events = 0;           // -M: stop after this many events (0: no limit)
};

// run: a bpftrace program (bt/), from a file or -e, on a command (-- COMMAND or -c 'CMD') or
// running processes (-p).
struct RunOptions {
  std::string file;     // FILE.bt
  std::string program;  // -e
  std::vector<std::string> command;
  std::string c_command;  // -c 'CMD'
  std::vector<pid_t> pids;
  std::optional<double> duration_s;
  int stop_signal = SIGINT;
  std::string comm;
  bool json = false;  // -f json
  bool verbose = false;
  std::string output;  // -o FILE: the program's output ("" = stdout)
};
int run_run(const RunOptions &options);

struct LatencyOptions {
  std::vector<std::string> probes;  // function entries: FILE:SYMBOL or FILE:GLOB
  std::vector<std::string> command;
  std::vector<pid_t> pids;  // -p: attach to these running processes instead
  std::optional<double> interval_s, duration_s;
  std::string unit = "ns";  // ns, us or ms: the text report's table and numbers (-u: us, -m: ms)
  // Where things go (README "Where output goes"): -o ("" = the default: stderr with a command,
  // stdout with -p; "-" = stdout) and --cmd-output (the command's stdout; "" = unchanged, or
  // stderr with -o -; "null" = /dev/null).
  std::string output, cmd_output;
  int stop_signal = SIGINT;  // --signal: what -d sends the command (SIGKILL 1 s later)
  std::string comm;          // -n: only processes whose name contains it are probed
  bool json = false, verbose = false;
  bool per_function = false;  // -F: a histogram per function (else one for all, as funclatency)
  bool timestamps = false;    // -T: a "HH:MM:SS" line before each report
  std::string pprof;          // --pprof: "" = none: where the pprof profile of the run goes
  std::string serve;          // --serve HOST:PORT: /metrics for Prometheus while it runs
};

struct StacksOptions {
  std::vector<std::string> probes;  // FILE:SYMBOL, FILE:GLOB, FILE:SYMBOL+OFF, FILE:0xOFF
  std::vector<std::string> command;
  std::vector<pid_t> pids;  // -p: attach to these running processes instead
  std::optional<double> duration_s;
  // Where things go (README "Where output goes"): -o ("" = the default: stderr with a command,
  // stdout with -p; "-" = stdout) and --cmd-output (the command's stdout; "" = unchanged, or
  // stderr with -o -; "null" = /dev/null).
  std::string output, cmd_output;
  int stop_signal = SIGINT;  // --signal: what -d sends the command (SIGKILL 1 s later)
  std::string comm;          // -n: only processes whose name contains it are probed
  std::string svg;           // "" = none: where the flame graph goes
  std::string pprof;         // "" = none: where the pprof profile goes (output/pprof.h)
  bool frame_pointers = false, folded = false, verbose = false;
  std::optional<double> interval_s;  // -i: a report of the stacks seen in each interval
  size_t top = 0;                    // --top N: the N most frequent stacks of each probe (0: all)
  bool per_pid = false;              // -P: one list per process (stackcount -P)
};

int run_list(const ListOptions &options);
int run_count(const CountOptions &options);
int run_trace(const TraceOptions &options);
int run_latency(const LatencyOptions &options);
int run_stacks(const StacksOptions &options);

// usprobe's main().
int run_cli(int argc, char **argv);

}  // namespace usprobe::cli
