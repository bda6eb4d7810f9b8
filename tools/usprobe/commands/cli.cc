// The command line: subcommands and their options (CLI11), then the subcommand's run_*().
//
// Everything after the first "--" is the command to run, taken as it is: it is cut off before
// CLI11 sees the rest, so the command's own options are never mistaken for usprobe's.
#include <fmt/format.h>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <limits>
#include <string_view>
#include <system_error>

#include "commands/commands.h"
#include "resolve/probe_spec.h"
#include "resolve/symbolizer.h"

namespace usprobe::cli {
namespace {

constexpr const char *kProbeHelp = R"(
Probes (one argument each):
  FILE:SYMBOL       entry of a function; SYMBOL may be a glob (libc:str*)
  FILE:SYMBOL+OFF   OFF bytes into it (decimal or 0x hex)
  FILE:0xOFF        a file offset
  An optional "uprobe:" prefix (bpftrace's spelling) is ignored.
FILE is a path, "exe" (the command itself) or a short library name (libc, libsqlite3,
libm.so.6), found the way the command's dynamic linker finds it (with -p: among the libraries
the process has loaded, and paths as the process sees them, in its mount namespace).)";

constexpr const char *kTraceHelp = R"(
Trace specs: a probe, then optionally a format and its arguments, in one argument:
  'exe:greet "%s has %d", arg0, arg1'
  'uretprobe:libc:open "%s -> %d", arg0, retval'
Conversions: %d %i %u %x %ld %lu %lx %lld %llu %llx %p %c %s %%, with C flags, widths and
precisions (up to 4096). %s prints the string argN points to, copied when the probe is hit: its
first 63 bytes (--strlen), then "..." when it is longer; an unreadable one prints (null) or
<bad 0xADDR> (in --json: null in "args", and "errors": {"arg0": "bad address 0x10"}).
In a uretprobe: spec, retval is the return value and arg0..arg5 are the arguments the call was
made with (kept at its entry, as bpftrace's @path[tid] = arg0): a %s of one is copied at the
return, from the pointer the call was given.
Columns: PID TID COMM PROBE MESSAGE; -t adds TIME(s), -T the wall-clock TIME, -D a return's
DURATION(us); -U prints the user stack under each event, a frame a line. --json: one object a
line: time_s, pid, tid, comm, probe, args, message, and errors, duration_ns (-D), stack (-U).
Each thread of the command writes its events into a buffer of its own (-b): an event that finds
it full is lost, and the count of lost events ends the run.)";

constexpr const char *kDurationHelp =
    "stop after SECONDS: the command gets SIGINT; an attached session ends";

void set_footer(CLI::App *sub, std::string_view extra) {
  sub->footer(
      std::string(kProbeHelp) + std::string(extra) +
      "\nThe command follows \"--\"; usprobe exits with its exit status. With -p PID (once\n"
      "or more) usprobe attaches to running processes instead, and removes its probes\n"
      "from them when the session ends: on Ctrl-C, at -d, or when the last one exits.");
}

// CLI11's PositiveNumber prints the whole range of a double when it refuses a value.
CLI::Validator seconds() {
  return CLI::Validator(
      [](std::string &value) -> std::string {
        double v = 0;
        try {
          size_t used = 0;
          v = std::stod(value, &used);
          if (used != value.size()) v = 0;
        } catch (const std::exception &) {
        }
        return v > 0 && v < 1e9 ? "" : "expected a number of seconds > 0, not '" + value + "'";
      },
      "SECONDS");
}

// --top N: a whole number from 1 to 999999999 (CLI11's Range would print the whole range of
// size_t).
CLI::Validator positive_count() {
  return CLI::Validator(
      [](std::string &value) -> std::string {
        bool digits = !value.empty() && value.size() < 10 &&
                      value.find_first_not_of("0123456789") == std::string::npos;
        return digits && std::stoul(value) > 0
                   ? ""
                   : "expected a whole number from 1 to 999999999, not '" + value + "'";
      },
      "N");
}

// A standard descriptor (0, 1, 2) that usprobe was started without is taken by /dev/null,
// close-on-exec: nothing usprobe opens later (the shared region above all) can land on it, so the
// command, which loses these at its exec, starts with exactly the descriptors it would have had
// without usprobe, and usprobe's own writes to a closed stdout or stderr go nowhere.
void hold_standard_descriptors() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1) continue;
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) return;
    if (null != fd) {  // a lower one was closed and taken in the meantime: cannot happen
      ::close(null);
      return;
    }
  }
}

// --buffer-size: bytes, with an optional K, M or G (powers of 1024; "KiB" and "MB" read the same).
CLI::Validator buffer_size(uint64_t &out) {
  return CLI::Validator(
      [&out](std::string &value) -> std::string {
        std::string_view v = value;
        size_t digits = 0;
        while (digits < v.size() && digits < 12 && v[digits] >= '0' && v[digits] <= '9') ++digits;
        uint64_t n = 0;
        for (size_t i = 0; i < digits; ++i) n = n * 10 + static_cast<uint64_t>(v[i] - '0');
        std::string unit(v.substr(digits));
        for (char &c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        if (unit.ends_with("IB")) unit.erase(unit.size() - 2);
        if (unit.ends_with("B")) unit.pop_back();
        int shift = unit.empty() ? 0 : unit == "K" ? 10 : unit == "M" ? 20 : unit == "G" ? 30 : -1;
        bool ok = digits > 0 && digits < 12 && shift >= 0;
        if (ok) n <<= shift;
        if (!ok || n < kMinRingSize || n > kMaxRingSize)
          return "expected a size from 64K to 1G (bytes, or with K, M or G), not '" + value + "'";
        out = n;
        return "";
      },
      "SIZE");
}

}  // namespace

int run_subcommand(int argc, char **argv);

int run_cli(int argc, char **argv) {
  hold_standard_descriptors();
  try {
    return run_subcommand(argc, argv);
  } catch (const std::system_error &e) {
    // fmt::print throws when a write fails. EPIPE: the reader of the output went away while the
    // last report was written (supervisor.h), EIO: the terminal hung up. Exit quietly, as a
    // program killed by SIGPIPE would.
    if (e.code().value() != EPIPE && e.code().value() != EIO) throw;
    return 128 + SIGPIPE;
  }
}

int run_subcommand(int argc, char **argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::vector<std::string> command;
  bool has_separator = false;
  if (auto sep = std::find(args.begin(), args.end(), "--"); sep != args.end()) {
    command.assign(sep + 1, args.end());
    args.erase(sep, args.end());
    has_separator = true;
  }

  CLI::App app(
      "usprobe: uprobes in user space. Count, trace, time or collect the stacks of the calls a "
      "command makes.",
      "usprobe");
  app.set_version_flag("--version", "usprobe " USPROBE_VERSION);
  app.require_subcommand(1);

  ListOptions list;
  CLI::App *list_cmd = app.add_subcommand("list", "List the functions of an ELF file");
  list_cmd->add_option("FILE", list.file, "a path or a short library name (libc)")->required();
  list_cmd->add_option("PATTERN", list.pattern, "a glob on function names (str*)");
  list_cmd->add_flag("--json", list.json, "one JSON object");

  CountOptions count;
  CLI::App *count_cmd =
      app.add_subcommand("count", "Count probe hits in a command: PROBE... -- COMMAND [ARGS...]");
  count_cmd->add_option("PROBE", count.probes, "probes to count")->required();
  count_cmd->add_option("-i,--interval", count.interval_s, "report every SECONDS")
      ->check(seconds());
  count_cmd->add_option("-d,--duration", count.duration_s, kDurationHelp)->check(seconds());
  count_cmd->add_option("-o,--output", count.output, "write reports to FILE");
  count_cmd->add_flag("--json", count.json, "reports as JSON, one object per line");
  count_cmd->add_flag("--per-pid", count.per_pid,
                      "one row per process and probe, with the process's PID and name");
  count_cmd->add_flag("--all", count.all, "also the rows of probes that were not hit");
  count_cmd->add_option("--top", count.top, "only the N busiest rows")
      ->check(positive_count())
      ->type_name("N");
  count_cmd->add_flag("-T,--timestamp", count.timestamps,
                      "an HH:MM:SS line before each report (funccount -T)");
  count_cmd->add_flag("-v,--verbose", count.verbose, "print the agent's informational notices");
  set_footer(count_cmd, "");

  TraceOptions trace;
  CLI::App *trace_cmd = app.add_subcommand(
      "trace", "Print each probe hit in a command: PROBESPEC... -- COMMAND [ARGS...]");
  trace_cmd->add_option("PROBESPEC", trace.probes, "probes with optional formats")->required();
  trace_cmd->add_option("-o,--output", trace.output, "write events to FILE");
  trace_cmd->add_flag("--json", trace.json, "events as JSON, one object per line");
  trace_cmd->add_flag("-v,--verbose", trace.verbose, "print the agent's informational notices");
  std::string buffer_text;
  trace_cmd
      ->add_option("-b,--buffer-size", buffer_text,
                   "each thread's buffer (default 16M, rounded up to a power of two)")
      ->check(buffer_size(trace.buffer_size));
  trace_cmd
      ->add_option("--strlen", trace.strlen,
                   "bytes of each %s string to keep (default 63; longer ones end in \"...\")")
      ->check(CLI::Range(1u, kMaxStrlen));
  trace_cmd->add_flag("-t,--timestamp", trace.timestamp,
                      "print a TIME(s) column: seconds since the trace started");
  trace_cmd->add_flag("-T,--time", trace.wall_time,
                      "print a TIME column: the wall-clock time, HH:MM:SS");
  trace_cmd->add_flag("-D,--durations", trace.durations,
                      "print a DURATION(us) column: each return's time since the call's entry");
  trace_cmd->add_flag("-U,--user-stack", trace.user_stacks,
                      "print each event's user stack after its line");
  trace_cmd
      ->add_option("-M,--max-events", trace.max_events,
                   "stop after N events, as -d stops: the command gets SIGINT")
      ->type_name("N")
      ->check(CLI::Validator(
          [](std::string &value) -> std::string {
            // CLI11's Range would print the whole of uint64_t's range in the help and the error.
            bool digits = !value.empty() && value.size() <= 19 &&
                          value.find_first_not_of("0123456789") == std::string::npos;
            return digits && value.find_first_not_of('0') != std::string::npos
                       ? std::string()
                       : "'" + value + "' is not a count of events (1 or more)";
          },
          ""));
  set_footer(trace_cmd, std::string("\n") + kTraceHelp);

  LatencyOptions latency;
  CLI::App *latency_cmd = app.add_subcommand(
      "latency", "Time the calls of functions in a command: PROBE... -- COMMAND [ARGS...]");
  latency_cmd->add_option("PROBE", latency.probes, "functions to time (FILE:SYMBOL, globs allowed)")
      ->required();
  latency_cmd->add_option("--unit", latency.unit, "unit of the text report: ns (default), us, ms")
      ->check(CLI::IsMember({"ns", "us", "ms"}));
  // funclatency's -u and -m: flags; -m wins over -u, as in funclatency, and both over --unit.
  latency_cmd->add_flag_callback(
      "-u,--microseconds", [&latency] { latency.unit = "us"; }, "microseconds (--unit us)");
  latency_cmd->add_flag_callback(
      "-m,--milliseconds", [&latency] { latency.unit = "ms"; }, "milliseconds (--unit ms)");
  latency_cmd->add_flag("-F,--function", latency.per_function,
                        "a histogram per function (default: one for all of them, as funclatency)");
  latency_cmd->add_flag("-T,--timestamp", latency.timestamps,
                        "an HH:MM:SS line before each report");
  latency_cmd->add_option("-i,--interval", latency.interval_s, "report every SECONDS")
      ->check(seconds());
  latency_cmd->add_option("-d,--duration", latency.duration_s, kDurationHelp)->check(seconds());
  latency_cmd->add_option("-o,--output", latency.output, "write reports to FILE");
  latency_cmd->add_flag("--json", latency.json,
                        "one JSON object per probe per report, one per line");
  latency_cmd->add_flag("-v,--verbose", latency.verbose, "print the agent's informational notices");
  set_footer(latency_cmd,
             "\n"
             R"(
Latency probes are function entries only (no +OFF, 0xOFF or uretprobe:): each call is timed
from its entry to its return. Text reports draw one log2 table for all the functions (with -F,
one per function), then the count, mean, p50 and p99; calls whose return was not seen (return
depth, longjmp, exceptions) are "missed". JSON: {"probe","aliases","type","count","avg_ns",
"p50_ns","p99_ns","missed","buckets":[{"low_ns","high_ns","count"}],"elapsed_s","timestamp"}
per function, high_ns inclusive.)");

  StacksOptions stacks;
  CLI::App *stacks_cmd = app.add_subcommand(
      "stacks",
      "Count the user stacks that reach probes in a command: PROBE... -- COMMAND [ARGS...]");
  stacks_cmd->add_option("PROBE", stacks.probes, "probes whose stacks to count")->required();
  stacks_cmd->add_flag("--fp", stacks.frame_pointers,
                       "walk frame pointers only (cheaper; stops at code built without them)");
  stacks_cmd->add_option("-d,--duration", stacks.duration_s, kDurationHelp)->check(seconds());
  stacks_cmd->add_option("-o,--output", stacks.output, "write the report to FILE");
  stacks_cmd
      ->add_option("-i,--interval", stacks.interval_s,
                   "report the stacks of every SECONDS, then those of the whole run")
      ->check(seconds());
  stacks_cmd->add_option("--top", stacks.top, "only the N most frequent stacks of each probe")
      ->check(positive_count())
      ->type_name("N");
  stacks_cmd->add_flag("-P,--per-pid", stacks.per_pid, "one list of stacks per process");
  stacks_cmd->add_flag("-f,--folded", stacks.folded,
                       "folded stacks (comm;outermost;...;innermost COUNT), one per line");
  stacks_cmd->add_option("--svg", stacks.svg, "also write an SVG flame graph to FILE");
  stacks_cmd->add_flag("-v,--verbose", stacks.verbose, "print the agent's informational notices");
  set_footer(stacks_cmd,
             "\n"
             R"(
Stacks are taken when a probe is hit, with DWARF unwinding (.eh_frame: works through code built
without frame pointers) or, with --fp, frame pointers; at most 127 frames. The text report lists,
per probe, each distinct stack innermost frame first, the process's name (with -P, comm-PID),
then its count. Folded lines start with the process's name and, with several probes, end with
the probe's name. Return probes (uretprobe:) are not supported.)");

  trace_cmd->add_option("-d,--duration", trace.duration_s, kDurationHelp)->check(seconds());
  for (auto [sub, pids] :
       {std::pair{count_cmd, &count.pids}, std::pair{trace_cmd, &trace.pids},
        std::pair{latency_cmd, &latency.pids}, std::pair{stacks_cmd, &stacks.pids}})
    sub->add_option("-p,--pid", *pids,
                    "attach to the running process PID instead of starting a command (may be "
                    "given several times: one session probes them all)")
        ->check(CLI::Range(1, std::numeric_limits<pid_t>::max()))
        ->type_name("PID")
        ->allow_extra_args(false);

  // bpftrace's name for "attach where I cannot check it is safe".
  bool unsafe = false;
  for (CLI::App *sub : {count_cmd, trace_cmd, latency_cmd, stacks_cmd})
    sub->add_flag("--unsafe", unsafe,
                  "probe a raw offset (FILE:0xOFF) even where no symbol or .eh_frame entry gives "
                  "the bounds to check that an instruction starts there");

  bool no_demangle = false;
  for (CLI::App *sub : {count_cmd, latency_cmd, stacks_cmd})
    sub->add_flag("--no-demangle", no_demangle, "C++ names as the ELF file spells them (mangled)");

  // CLI11 would say "A subcommand is required" for a misspelt one or an unknown option.
  if (!args.empty() && args[0] != "list" && args[0] != "count" && args[0] != "trace" &&
      args[0] != "latency" && args[0] != "stacks" && args[0] != "-h" && args[0] != "--help" &&
      args[0] != "--version") {
    fmt::print(stderr,
               "usprobe: unknown {} '{}' (expected list, count, trace, latency or stacks)\n",
               args[0].starts_with('-') ? "option" : "subcommand", args[0]);
    return 2;
  }
  std::vector<const char *> cli_argv{argv[0]};
  for (const std::string &a : args) cli_argv.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(cli_argv.size()), cli_argv.data());
  } catch (const CLI::ParseError &e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    fmt::print(stderr, "usprobe: {} (see usprobe --help)\n", e.what());
    return 2;
  }

  bool needs_command =
      count_cmd->parsed() || trace_cmd->parsed() || latency_cmd->parsed() || stacks_cmd->parsed();
  const char *name = count_cmd->parsed()     ? "count"
                     : trace_cmd->parsed()   ? "trace"
                     : latency_cmd->parsed() ? "latency"
                                             : "stacks";
  std::vector<pid_t> &pids = count_cmd->parsed()     ? count.pids
                             : trace_cmd->parsed()   ? trace.pids
                             : latency_cmd->parsed() ? latency.pids
                                                     : stacks.pids;
  if (needs_command && !pids.empty() && has_separator) {
    std::string given;
    for (pid_t p : pids) given += fmt::format("{}-p {}", given.empty() ? "" : " ", p);
    fmt::print(stderr,
               "usprobe: {}: {} and a command after '--'{} exclude each other: attach to running "
               "processes or start a command, not both (usage: usprobe {} PROBE... -p PID | -- "
               "COMMAND [ARGS...])\n",
               name, given, command.empty() ? std::string() : fmt::format(" ({})", command.front()),
               name);
    return 2;
  }
  if (needs_command && pids.empty() && command.empty()) {
    fmt::print(
        stderr, "usprobe: {}: {} (usage: usprobe {} PROBE... -- COMMAND [ARGS...], or -p PID)\n",
        name, has_separator ? "no command after '--'" : "missing '--' and the command to run",
        name);
    return 2;
  }
  // -p 42 -p 42 is one process.
  std::sort(pids.begin(), pids.end());
  pids.erase(std::unique(pids.begin(), pids.end()), pids.end());
  if (!needs_command && has_separator) {
    fmt::print(stderr, "usprobe: list: unexpected '--' (it runs no command)\n");
    return 2;
  }
  if (list_cmd->parsed()) return run_list(list);
  set_unsafe_offsets(unsafe);
  set_demangle_names(!no_demangle);
  if (count_cmd->parsed()) {
    count.command = std::move(command);
    return run_count(count);
  }
  if (latency_cmd->parsed()) {
    latency.command = std::move(command);
    return run_latency(latency);
  }
  if (stacks_cmd->parsed()) {
    stacks.command = std::move(command);
    return run_stacks(stacks);
  }
  trace.command = std::move(command);
  return run_trace(trace);
}

}  // namespace usprobe::cli
