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
#include <charconv>
#include <limits>
#include <optional>
#include <string_view>
#include <system_error>

#include "commands/commands.h"
#include "core/edit_distance.h"
#include "resolve/probe_spec.h"
#include "resolve/symbolizer.h"

namespace usprobe::cli {
namespace {

constexpr const char *kProbeHelp = R"(
Probes (one argument each):
  FILE:SYMBOL           entry of a function; SYMBOL may be a glob (libc:str*), or with -r an
                        extended regular expression searched for in the names (libc:^str(len|cmp)$)
  FILE:SYMBOL+OFF       OFF bytes into it (decimal or 0x hex)
  FILE:0xOFF            a file offset
  uretprobe:FILE:SYMBOL the function's returns (count, trace; trace prints them with retval)
  usdt:FILE:PROVIDER:NAME  a USDT probe (all its sites; globs in PROVIDER and NAME; its
                        semaphore raised while probed); usdt:FILE:NAME when NAME is unique
  An optional "uprobe:" prefix (bpftrace's spelling) is ignored.
FILE is a path (/usr/bin/sqlite3), "exe" (the command itself) or a short library name (libc,
libsqlite3, libm.so.6), found the way the command's dynamic linker finds it (with -p: among the
libraries the process has loaded, and paths as the process sees them, in its mount namespace).
Durations (-i, -d): seconds (5, 1.5) or with a unit: 250us, 500ms, 2s, 1m.
Probes that were never placed, and probes that run on the int3 path (a trap per hit, where a jump
cannot be placed), are listed when the session ends.)";

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
return, from the pointer the call was given. In a usdt: spec, argN is the USDT note's argument N
(arg0..arg11), read as the note says: 'usdt:/usr/bin/python3.11:python:audit "%s", arg0'.
Columns: PID TID COMM PROBE MESSAGE; -t adds TIME(s), -T the wall-clock TIME, -D a return's
DURATION(us); -U prints the user stack under each event, a frame a line. --json: one object a
line: time_s, pid, tid, comm, probe, args, message, and errors, duration_ns (-D), stack (-U).
Each thread of the command writes its events into a buffer of its own (-b): an event that finds
it full is lost, and the count of lost events ends the run.)";

constexpr const char *kDurationHelp =
    "stop after DURATION (5, 1.5, 500ms, 2s, 1m): the command gets SIGINT (--signal), and "
    "SIGKILL if it is still there 1 s later; an attached session ends";

constexpr const char *kOutputHelp =
    "write the report to FILE (-: stdout; default: stderr with a command, stdout with -p)";

constexpr const char *kStreamsHelp = R"(

Where output goes: with a command, the report goes to stderr (or to -o FILE) and the command's
own stdout, stdin and stderr are left as they are: nothing mixes with what it prints. -o - puts
the report on stdout, and the command's stdout then goes to stderr, or to --cmd-output FILE
(null: /dev/null). With -p the report goes to stdout (or to -o FILE). usprobe's own messages
always go to stderr.
At -d the command gets SIGINT (or --signal SIG); if it has not exited 1 s later usprobe kills
it (SIGKILL). It prints the final report and exits with 0: usprobe ended the run itself.)";

void set_footer(CLI::App *sub, std::string_view extra, std::string_view examples) {
  sub->footer(
      std::string(kProbeHelp) + std::string(extra) + kStreamsHelp +
      "\n\nThe command follows \"--\"; usprobe exits with its exit status. With -p PID (once\n"
      "or more) usprobe attaches to running processes instead, and removes its probes\n"
      "from them when the session ends: on Ctrl-C, at -d, or when the last one exits.\n\n"
      "Examples:\n" +
      std::string(examples));
}

// --signal: SIGTERM, TERM, term or 15.
// Becomes the number, which CLI11 then stores.
CLI::Validator signal_number() {
  return CLI::Validator(
      [](std::string &value) -> std::string {
        std::string name = value;
        for (char &c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        if (name.starts_with("SIG")) name.erase(0, 3);
        int number = 0;
        auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), number);
        if (ec == std::errc() && end == name.data() + name.size() && number >= 1 &&
            number <= SIGRTMAX) {
          value = std::to_string(number);
          return "";
        }
        for (int sig = 1; sig < SIGRTMIN; ++sig)
          if (const char *abbrev = ::sigabbrev_np(sig); abbrev && name == abbrev) {
            value = std::to_string(sig);
            return "";
          }
        return "expected a signal name or number (INT, SIGTERM, 15), not '" + value + "'";
      },
      "");
}

// Each subcommand's examples, as BCC's tools have them: a command line, then what it does.
constexpr const char *kCountExamples =
    R"(  usprobe count libc:malloc libc:free -- sqlite3 :memory: 'select 1'
        count calls of malloc and free in one run of sqlite3
  usprobe count 'libc:str*' -- ls /
        count every libc function whose name starts with "str" (a glob)
  usprobe count -r 'libc:^str(len|cmp)$' -- ls /
        count strlen and strcmp, chosen by a regular expression
  usprobe count exe:main -- ./app
        a function of the command's own program (exe; one its symbols name)
  usprobe count /usr/lib/x86_64-linux-gnu/libsqlite3.so.0:sqlite3_step -- sqlite3 :memory: 'select 1'
        a function of a library given by its path
  usprobe count uretprobe:libc:malloc -- ls /
        count malloc's returns
  usprobe count -i 1s -d 10s --per-pid libc:malloc -p 1234
        attach to process 1234, report every second, per process, stop after 10 s)";

constexpr const char *kTraceExamples =
    R"(  usprobe trace 'libc:open "%s", arg0' -- cat /etc/hostname
        print the file name each open() is given
  usprobe trace 'uretprobe:libc:malloc "%p", retval' -- ls /
        print what each malloc returns
  usprobe trace 'libc:write "fd %d, %lu bytes", arg0, arg2' -d 500ms -p 1234
        attach to process 1234 for half a second, print each write's fd and size
  usprobe trace --json exe:main -- ./app
        one JSON object per hit, without a format)";

constexpr const char *kLatencyExamples =
    R"(  usprobe latency -u libsqlite3:sqlite3_step -- sqlite3 :memory: 'select 1'
        time each sqlite3_step call, in microseconds
  usprobe latency -F 'libc:str*' -- ls /
        a table for each libc function starting with "str" (without -F: one for all)
  usprobe latency -i 1s -d 5s libc:malloc -p 1234
        attach to process 1234, report every second, stop after 5 s)";

constexpr const char *kStacksExamples =
    R"(  usprobe stacks libc:malloc -- ls /
        the distinct stacks that call malloc, most frequent first
  usprobe stacks --svg malloc.svg libc:malloc -- ls /
        the same, and a flame graph of them
  usprobe stacks --pprof malloc.pb.gz libc:malloc -- ls /
        the same as a pprof profile: go tool pprof -top malloc.pb.gz
  usprobe stacks --folded -o malloc.folded --fp libc:malloc -d 2s -p 1234
        two seconds of a running process, frame pointers only, folded stacks into a file)";

constexpr const char *kListExamples =
    R"(  usprobe list libc 'str*'
        the functions of libc whose names start with "str", with offsets and sizes
  usprobe list -r libc '^str(len|cmp)$'
        a regular expression instead of a glob
  usprobe list /usr/bin/sqlite3
        every function of a program, by its path (a stripped one lists its exported ones)
  usprobe list --json libsqlite3 'sqlite3_*'
        one JSON object
  usprobe list usdt:/usr/bin/python3.11
        the USDT probes of a file, as bpftrace -l names them (usdt:FILE:PROVIDER:NAME)
  usprobe list -v 'usdt:/usr/bin/python3.11:python:gc*'
        with each probe's sites, the argument specs of each, and its semaphore)";

// -i and -d: seconds ("1.5"), or a number with a unit: us, ms, s, m or h ("500ms", "2s", "1m").
// Empty when `text` is not one (or is not above 0, or is a billion seconds or more).
std::optional<double> parse_duration(std::string_view text) {
  size_t number = 0;
  while (number < text.size() &&
         ((text[number] >= '0' && text[number] <= '9') || text[number] == '.'))
    ++number;
  if (number == 0 || number > 32) return std::nullopt;
  std::string digits(text.substr(0, number));
  double v = 0;
  try {
    size_t used = 0;
    v = std::stod(digits, &used);
    if (used != digits.size()) return std::nullopt;
  } catch (const std::exception &) {
    return std::nullopt;
  }
  std::string_view unit = text.substr(number);
  double scale = unit.empty() || unit == "s" ? 1
                 : unit == "ms"              ? 1e-3
                 : unit == "us"              ? 1e-6
                 : unit == "m"               ? 60
                 : unit == "h"               ? 3600
                                             : 0;
  v *= scale;
  if (!(v > 0 && v < 1e9)) return std::nullopt;
  return v;
}

constexpr const char *kDurationExpected = "expected a duration (1.5, 500ms, 2s, 1m)";

// The value CLI11 stores for -i and -d: the duration in seconds (arguments() has refused a bad
// one already, naming it as the user spelt it).
CLI::Validator duration() {
  return CLI::Validator(
      [](std::string &value) -> std::string {
        auto v = parse_duration(value);
        if (!v) return "'" + value + "': " + kDurationExpected;
        value = fmt::format("{:.17g}", *v);
        return "";
      },
      "");  // the options' type_name says DURATION
}

// The nearest of `candidates` to `name`, when it is close enough to be a typo (as the ELF reader's
// suggestions: one edit per four characters, at least one, at most three), else "".
std::string nearest(std::string_view name, const std::vector<std::string> &candidates) {
  size_t limit = std::clamp<size_t>(name.size() / 4, 1, 3);
  std::string best;
  size_t best_d = limit + 1;
  for (const std::string &c : candidates) {
    size_t d = bounded_edit_distance(name, c, limit);
    if (d < best_d) best = c, best_d = d;
  }
  return best;
}

// What CLI11 would say of the subcommand's arguments, said the way users of bpftrace and BCC
// expect: an unknown option with the nearest known one ("unknown option '--jsn' (did you mean
// --json?)"), and a bad duration as spelt ("-d '5x': expected a duration ..."). `args[0]` is the
// subcommand; "" when the options are fine (CLI11 then checks the rest).
std::string check_arguments(const CLI::App &sub, const std::vector<std::string> &args) {
  std::vector<std::string> long_names;
  for (const CLI::Option *opt : sub.get_options())
    for (const std::string &n : opt->get_lnames()) long_names.push_back("--" + n);
  auto find = [&](std::string_view name) -> const CLI::Option * {
    for (const CLI::Option *opt : sub.get_options())
      if (opt->check_name(std::string(name))) return opt;
    return nullptr;
  };
  auto unknown = [&](const std::string &arg) {
    std::string body = arg.substr(arg.find_first_not_of('-'));
    std::vector<std::string> bare;
    for (const std::string &n : long_names) bare.push_back(n.substr(2));
    std::string near = nearest(body, bare);
    return fmt::format("unknown option '{}'{}", arg,
                       near.empty() ? "" : fmt::format(" (did you mean --{}?)", near));
  };
  auto check_value = [](const CLI::Option *opt, const std::string &spelt,
                        const std::string &value) -> std::string {
    bool is_duration = opt->check_lname("duration") || opt->check_lname("interval");
    if (!is_duration || parse_duration(value)) return "";
    return fmt::format("{} '{}': {}", spelt, value, kDurationExpected);
  };
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string &arg = args[i];
    if (arg.size() < 2 || arg[0] != '-') continue;  // a probe, a value, or "-"
    std::string name = arg, value;
    bool attached = false;  // --name=VALUE, -dVALUE
    if (arg.starts_with("--")) {
      if (size_t eq = arg.find('='); eq != std::string::npos)
        name = arg.substr(0, eq), value = arg.substr(eq + 1), attached = true;
    } else if (arg.size() > 2) {
      name = arg.substr(0, 2), value = arg.substr(2), attached = true;
    }
    const CLI::Option *opt = find(name);
    if (!opt) return unknown(arg.starts_with("--") ? name : arg);
    if (opt->get_type_size_max() == 0) {  // a flag: "-v", or "-vx" with more flags
      if (attached && !arg.starts_with("--"))
        for (char c : value) {
          const CLI::Option *more = find(std::string("-") + c);
          if (!more || more->get_type_size_max() != 0) return unknown(arg);
        }
      continue;
    }
    if (!attached) {
      if (i + 1 >= args.size()) continue;  // CLI11 says that a value is missing
      value = args[++i];
    }
    if (std::string bad = check_value(opt, name, value); !bad.empty()) return bad;
  }
  return "";
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
      "");  // the options' type_name says N
}

// -p PID: a process ID (CLI11's Range would print its whole range in the help).
CLI::Validator process_id() {
  return CLI::Validator(
      [](std::string &value) -> std::string {
        int32_t pid = 0;
        auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), pid);
        return ec == std::errc() && end == value.data() + value.size() && pid > 0
                   ? ""
                   : "expected a process ID (a number from 1), not '" + value + "'";
      },
      "");
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
      "");  // the option's type_name says SIZE
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
  list_cmd->add_flag("-r,--regex", list.regex,
                     "PATTERN is an extended regular expression ('^str(len|cmp)$'), not a glob");
  list_cmd->add_flag("-v,--verbose", list.verbose,
                     "USDT probes (usdt:FILE): each one's sites, argument specs and semaphore");
  list_cmd->footer(std::string("\nFILE is a path (/usr/bin/sqlite3) or a short library name (libc, "
                               "libsqlite3),\nfound as the dynamic linker finds it; \"exe\" "
                               "means nothing without a command: give the program's path.\n\n"
                               "Examples:\n") +
                   kListExamples);

  CountOptions count;
  CLI::App *count_cmd =
      app.add_subcommand("count", "Count probe hits in a command: PROBE... -- COMMAND [ARGS...]");
  count_cmd->add_option("PROBE", count.probes, "probes to count")->required();
  count_cmd
      ->add_option("-i,--interval", count.interval_s, "report every DURATION (2, 1.5, 500ms, 1m)")
      ->transform(duration())
      ->type_name("DURATION");
  count_cmd->add_option("-d,--duration", count.duration_s, kDurationHelp)
      ->transform(duration())
      ->type_name("DURATION");
  count_cmd->add_option("-o,--output", count.output, kOutputHelp)->type_name("FILE");
  count_cmd->add_flag("--json", count.json, "reports as JSON, one object per line");
  count_cmd
      ->add_option("--serve", count.serve,
                   "while it runs, serve the counts at http://HOST:PORT/metrics in Prometheus's "
                   "text format (usprobe_hits_total{probe,pid}, usprobe_missed_total)")
      ->type_name("HOST:PORT");
  count_cmd->add_flag("--per-pid", count.per_pid,
                      "one row per process and probe, with the process's PID and name");
  count_cmd->add_flag("--all", count.all, "also the rows of probes that were not hit");
  count_cmd->add_option("--top", count.top, "only the N busiest rows")
      ->check(positive_count())
      ->type_name("N");
  count_cmd->add_flag("-T,--timestamp", count.timestamps,
                      "an HH:MM:SS line before each report (funccount -T)");
  count_cmd->add_flag("-v,--verbose", count.verbose, "print the agent's informational notices");
  set_footer(count_cmd, "", kCountExamples);

  TraceOptions trace;
  CLI::App *trace_cmd = app.add_subcommand(
      "trace", "Print each probe hit in a command: PROBESPEC... -- COMMAND [ARGS...]");
  trace_cmd->add_option("PROBESPEC", trace.probes, "probes with optional formats")->required();
  trace_cmd->add_option("-o,--output", trace.output, kOutputHelp)->type_name("FILE");
  trace_cmd->add_flag("--json", trace.json, "events as JSON, one object per line");
  trace_cmd->add_flag("-v,--verbose", trace.verbose, "print the agent's informational notices");
  std::string buffer_text;
  trace_cmd
      ->add_option("-b,--buffer-size", buffer_text,
                   "each thread's buffer (default 16M, rounded up to a power of two)")
      ->check(buffer_size(trace.buffer_size))
      ->type_name("SIZE");
  trace_cmd
      ->add_option("--strlen", trace.strlen,
                   "bytes of each %s string to keep (default 63; longer ones end in \"...\")")
      ->check(CLI::Range(1u, kMaxStrlen).description(""))
      ->type_name("N");
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
  set_footer(trace_cmd, std::string("\n") + kTraceHelp, kTraceExamples);

  LatencyOptions latency;
  CLI::App *latency_cmd = app.add_subcommand(
      "latency", "Time the calls of functions in a command: PROBE... -- COMMAND [ARGS...]");
  latency_cmd->add_option("PROBE", latency.probes, "functions to time (FILE:SYMBOL, globs allowed)")
      ->required();
  latency_cmd->add_option("--unit", latency.unit, "unit of the text report: ns (default), us, ms")
      ->check(CLI::IsMember({"ns", "us", "ms"}))
      ->type_name("UNIT");
  // funclatency's -u and -m: flags; -m wins over -u, as in funclatency, and both over --unit.
  latency_cmd->add_flag_callback(
      "-u,--microseconds", [&latency] { latency.unit = "us"; }, "microseconds (--unit us)");
  latency_cmd->add_flag_callback(
      "-m,--milliseconds", [&latency] { latency.unit = "ms"; }, "milliseconds (--unit ms)");
  latency_cmd->add_flag("-F,--function", latency.per_function,
                        "a histogram per function (default: one for all of them, as funclatency)");
  latency_cmd->add_flag("-T,--timestamp", latency.timestamps,
                        "an HH:MM:SS line before each report");
  latency_cmd
      ->add_option("-i,--interval", latency.interval_s, "report every DURATION (2, 1.5, 500ms, 1m)")
      ->transform(duration())
      ->type_name("DURATION");
  latency_cmd->add_option("-d,--duration", latency.duration_s, kDurationHelp)
      ->transform(duration())
      ->type_name("DURATION");
  latency_cmd->add_option("-o,--output", latency.output, kOutputHelp)->type_name("FILE");
  latency_cmd->add_flag("--json", latency.json,
                        "one JSON object per probe per report, one per line");
  latency_cmd
      ->add_option("--serve", latency.serve,
                   "while it runs, serve the latencies at http://HOST:PORT/metrics in Prometheus's "
                   "text format (the histogram usprobe_latency_seconds{probe})")
      ->type_name("HOST:PORT");
  latency_cmd
      ->add_option("--pprof", latency.pprof,
                   "also write each function's calls and total time as a gzipped pprof profile")
      ->type_name("FILE");
  latency_cmd->add_flag("-v,--verbose", latency.verbose, "print the agent's informational notices");
  set_footer(latency_cmd,
             "\n"
             R"(
Latency probes are function entries only (no +OFF, 0xOFF or uretprobe:): each call is timed
from its entry to its return. Text reports draw one log2 table for all the functions (with -F,
one per function), then the count, mean, p50 and p99; calls whose return was not seen (return
depth, longjmp, exceptions) are "missed". JSON: {"probe","aliases","type","count","avg_ns",
"p50_ns","p99_ns","missed","buckets":[{"low_ns","high_ns","count"}],"elapsed_s","timestamp"}
per function, high_ns inclusive. --pprof FILE: a profile.proto (pprof's format, gzipped) with a
sample per function: calls/count and latency/nanoseconds, their total.)",
             kLatencyExamples);

  StacksOptions stacks;
  CLI::App *stacks_cmd = app.add_subcommand(
      "stacks",
      "Count the user stacks that reach probes in a command: PROBE... -- COMMAND [ARGS...]");
  stacks_cmd->add_option("PROBE", stacks.probes, "probes whose stacks to count")->required();
  stacks_cmd->add_flag("--fp", stacks.frame_pointers,
                       "walk frame pointers only (cheaper; stops at code built without them)");
  stacks_cmd->add_option("-d,--duration", stacks.duration_s, kDurationHelp)
      ->transform(duration())
      ->type_name("DURATION");
  stacks_cmd->add_option("-o,--output", stacks.output, kOutputHelp)->type_name("FILE");
  stacks_cmd
      ->add_option("-i,--interval", stacks.interval_s,
                   "report the stacks of every DURATION, then those of the whole run")
      ->transform(duration())
      ->type_name("DURATION");
  stacks_cmd->add_option("--top", stacks.top, "only the N most frequent stacks of each probe")
      ->check(positive_count())
      ->type_name("N");
  stacks_cmd->add_flag("-P,--per-pid", stacks.per_pid, "one list of stacks per process");
  stacks_cmd->add_flag("-f,--folded", stacks.folded,
                       "folded stacks (comm;outermost;...;innermost COUNT), one per line");
  stacks_cmd->add_option("--svg", stacks.svg, "also write an SVG flame graph to FILE")
      ->type_name("FILE");
  stacks_cmd
      ->add_option("--pprof", stacks.pprof,
                   "also write the stacks as a gzipped pprof profile (go tool pprof reads it)")
      ->type_name("FILE");
  stacks_cmd->add_flag("-v,--verbose", stacks.verbose, "print the agent's informational notices");
  set_footer(stacks_cmd,
             "\n"
             R"(
Stacks are taken when a probe is hit, with DWARF unwinding (.eh_frame: works through code built
without frame pointers) or, with --fp, frame pointers; at most 127 frames. The text report lists,
per probe, each distinct stack innermost frame first, the process's name (with -P, comm-PID),
then its count. Folded lines start with the process's name and, with several probes, end with
the probe's name. --pprof FILE: a profile.proto (pprof's format, gzipped) with a sample per
distinct stack (calls/count), labelled comm, probe with several probes, and pid with -P; its
locations carry their mapping (file, build-id, offset) for pprof to symbolize again. Return probes
(uretprobe:) are not supported.)",
             kStacksExamples);

  RunOptions run;
  std::string run_format = "text";
  CLI::App *run_cmd = app.add_subcommand(
      "run",
      "Run a bpftrace program on a command's probes: FILE.bt | -e PROGRAM, -- COMMAND or -p PID");
  run_cmd->add_option("FILE", run.file, "the program, bpftrace's language")->type_name("FILE.bt");
  run_cmd->add_option("-e", run.program, "the program, given here")->type_name("PROGRAM");
  run_cmd->add_option("-c", run.c_command, "the command to run, as one string (bpftrace's -c)")
      ->type_name("CMD");
  run_cmd->add_option("-p,--pid", run.pids, "attach to the running process PID")
      ->check(process_id())
      ->type_name("PID")
      ->allow_extra_args(false);
  run_cmd->add_option("-d,--duration", run.duration_s, kDurationHelp)
      ->transform(duration())
      ->type_name("DURATION");
  run_cmd->add_option("-f,--format", run_format, "output format: text or json (bpftrace's NDJSON)")
      ->check(CLI::IsMember({"text", "json"}))
      ->type_name("FORMAT");
  run_cmd
      ->add_option("-n,--comm", run.comm,
                   "probe only the processes whose name (comm, 15 characters) contains NAME")
      ->type_name("NAME");
  run_cmd->add_flag("-v,--verbose", run.verbose, "print the agent's informational notices");
  run_cmd
      ->add_option("-o,--output", run.output,
                   "write the program's output to FILE (bpftrace's -o), not stdout")
      ->type_name("FILE");
  set_footer(run_cmd,
             "\n"
             R"(
The program is bpftrace's language: uprobe:/u:, uretprobe:/ur:, usdt:/U: probes (FILE as in the
other commands: a path, exe or a short library name), BEGIN, END, interval:s:N/ms:N; predicates,
if/else, scratch variables, integer arithmetic, string comparison, casts; builtins pid tid uid gid
comm cpu nsecs elapsed arg0..arg11 retval; maps with count() sum() avg() min() max() stats() hist()
lhist() or plain values, delete(); printf, print, clear, exit. Its output is bpftrace's: printf
lines as the probes fire, then every map. Each hit runs the probe's code in the probed process, at
a few tens of nanoseconds; aggregations are kept per thread and merged when printed.)",
             "  usprobe run -e 'uprobe:libc:malloc { @[comm] = count(); }' -- ls\n"
             "  usprobe run -e 'uprobe:libc:malloc /arg0 > 4096/ { @sz = hist(arg0); }' -p 1234\n");

  trace_cmd->add_option("-d,--duration", trace.duration_s, kDurationHelp)
      ->transform(duration())
      ->type_name("DURATION");
  for (auto [sub, pids] :
       {std::pair{count_cmd, &count.pids}, std::pair{trace_cmd, &trace.pids},
        std::pair{latency_cmd, &latency.pids}, std::pair{stacks_cmd, &stacks.pids}})
    sub->add_option("-p,--pid", *pids,
                    "attach to the running process PID instead of starting a command (may be "
                    "given several times: one session probes them all)")
        ->check(process_id())
        ->type_name("PID")
        ->allow_extra_args(false);

  // What every probing subcommand shares about its processes and its output.
  auto add_session_options = [](CLI::App *sub, auto &o) {
    sub->add_option("-n,--comm", o.comm,
                    "probe only the processes whose name (comm, 15 characters) contains NAME")
        ->type_name("NAME");
    sub->add_option("--cmd-output", o.cmd_output,
                    "send the command's stdout to FILE (null: /dev/null; default with -o -: "
                    "stderr)")
        ->type_name("FILE");
    sub->add_option("--signal", o.stop_signal, "what -d sends the command (default SIGINT)")
        ->transform(signal_number())
        ->type_name("SIG");
  };
  add_session_options(count_cmd, count);
  add_session_options(trace_cmd, trace);
  add_session_options(latency_cmd, latency);
  add_session_options(stacks_cmd, stacks);

  // bpftrace's name for "attach where I cannot check it is safe".
  bool unsafe = false;
  for (CLI::App *sub : {count_cmd, trace_cmd, latency_cmd, stacks_cmd})
    sub->add_flag("--unsafe", unsafe,
                  "probe a raw offset (FILE:0xOFF) even where no symbol or .eh_frame entry gives "
                  "the bounds to check that an instruction starts there");

  // funccount's -r.
  bool regex = false;
  for (CLI::App *sub : {count_cmd, trace_cmd, latency_cmd, stacks_cmd})
    sub->add_flag("-r,--regex", regex,
                  "each probe's SYMBOL is an extended regular expression searched for in function "
                  "names ('libc:^str(len|cmp)$'), not a name or a glob");
  bool no_demangle = false;
  for (CLI::App *sub : {count_cmd, latency_cmd, stacks_cmd})
    sub->add_flag("--no-demangle", no_demangle, "C++ names as the ELF file spells them (mangled)");

  // CLI11 would say "A subcommand is required" for a misspelt one or an unknown option.
  const std::vector<std::string> subcommands = {"list",    "count",  "trace",
                                                "latency", "stacks", "run"};
  CLI::App *chosen = nullptr;
  for (CLI::App *sub : {list_cmd, count_cmd, trace_cmd, latency_cmd, stacks_cmd, run_cmd})
    if (!args.empty() && args[0] == sub->get_name()) chosen = sub;
  if (!args.empty() && !chosen && args[0] != "-h" && args[0] != "--help" &&
      args[0] != "--version") {
    bool option = args[0].starts_with('-');
    std::string near =
        option ? nearest(args[0], {"--help", "--version"}) : nearest(args[0], subcommands);
    std::string why =
        near.empty() ? "expected a subcommand: list, count, trace, latency, stacks or run"
        : option
            ? fmt::format("did you mean {}?", near)
            : fmt::format("did you mean {}? expected list, count, trace, latency, stacks or run",
                          near);
    fmt::print(stderr, "usprobe: unknown {} '{}' ({}); see usprobe --help\n",
               option ? "option" : "subcommand", args[0], why);
    return 2;
  }
  if (chosen) {
    if (std::string bad = check_arguments(*chosen, args); !bad.empty()) {
      fmt::print(stderr, "usprobe: {}: {}; see usprobe {} --help\n", args[0], bad, args[0]);
      return 2;
    }
  }
  std::vector<const char *> cli_argv{argv[0]};
  for (const std::string &a : args) cli_argv.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(cli_argv.size()), cli_argv.data());
  } catch (const CLI::ParseError &e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    if (chosen)
      fmt::print(stderr, "usprobe: {}: {}; see usprobe {} --help\n", args[0], e.what(), args[0]);
    else
      fmt::print(stderr, "usprobe: {}; see usprobe --help\n", e.what());
    return 2;
  }

  if (run_cmd->parsed()) {
    run.json = run_format == "json";
    run.command = std::move(command);
    std::sort(run.pids.begin(), run.pids.end());
    run.pids.erase(std::unique(run.pids.begin(), run.pids.end()), run.pids.end());
    const char *why = run.file.empty() == run.program.empty()
                          ? "give the program as FILE or as -e PROGRAM (one of them)"
                      : int{!run.pids.empty()} + int{!run.command.empty() || has_separator} +
                                  int{!run.c_command.empty()} !=
                              1
                          ? "give the processes to probe: -- COMMAND, -c 'CMD' or -p PID (one of "
                            "them)"
                          : nullptr;
    if (why) {
      fmt::print(stderr, "usprobe: run: {}; see usprobe run --help\n", why);
      return 2;
    }
    return run_run(run);
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
  // What add_session_options took, checked before anything starts.
  auto check_session_options = [&](CLI::App *sub, const auto &o) {
    if (!pids.empty() && !o.cmd_output.empty()) {
      fmt::print(stderr,
                 "usprobe: {}: --cmd-output is for a command that usprobe starts: with -p the "
                 "processes' output is not usprobe's to send\n",
                 name);
      return false;
    }
    if (!pids.empty() && sub->count("--signal") > 0) {
      fmt::print(stderr,
                 "usprobe: {}: --signal is what -d sends a command that usprobe starts: with -p, "
                 "-d ends the session and leaves the processes running\n",
                 name);
      return false;
    }
    if (sub->count("--comm") > 0 && (o.comm.empty() || o.comm.size() > 15)) {
      fmt::print(stderr, "usprobe: {}: -n '{}': {}\n", name, o.comm,
                 o.comm.empty() ? "an empty name"
                                : "longer than 15 characters, the most a process name (comm) "
                                  "holds: it would match no process");
      return false;
    }
    return true;
  };
  set_unsafe_offsets(unsafe);
  set_regex_symbols(regex);
  set_demangle_names(!no_demangle);
  if (!(count_cmd->parsed()     ? check_session_options(count_cmd, count)
        : trace_cmd->parsed()   ? check_session_options(trace_cmd, trace)
        : latency_cmd->parsed() ? check_session_options(latency_cmd, latency)
                                : check_session_options(stacks_cmd, stacks)))
    return 2;
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
