// usprobe trace PROBESPEC... [-o FILE] [--json] [--buffer-size SIZE] [--strlen N] [-t] [-T] [-D]
// [-U] [-M N] -- COMMAND [ARGS...]: one line per hit, with the arguments printed through each
// probe's format, as BCC's trace does: PID TID COMM PROBE MESSAGE, -t and -T add the time since
// the start and the wall-clock time in front, -D a return's duration, -U the user stack below.
//
// Losing nothing at high rates. Each thread of the command writes its records into a ring of its
// own (protocol/protocol.h, "Rings"); a record that finds its ring full is lost and counted. So the
// CLI must empty the rings faster than threads fill them, and keeps them small in the meantime:
//   - every tick (2 ms) each ring's new bytes are copied out in one memcpy and the ring's space is
//     given back at once (Region::drain); records are taken apart and formatted afterwards, from
//     the copy, into one large buffer that is written with a few big writes;
//   - while a large batch is being formatted the rings are drained again every few thousand
//     events, so a slow terminal or a burst never leaves them full for long: the backlog waits in
//     the CLI's memory (up to kMaxBacklog bytes of records, beyond which the rings fill and the
//     agent counts what it loses);
//   - the default ring (kDefaultRingSize, 16 MiB: 233,000 records without strings) holds about
//     45 ms of a thread that hits a probe 5 million times a second, far more than a tick; --buffer-
//     size makes it bigger for longer stalls (an output pipe that blocks).
// Rings are sparse memory: only the pages a thread has written take memory.
#include <fmt/format.h>

#include <limits.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>

#include "commands/commands.h"
#include "output/format.h"
#include "output/report.h"
#include "protocol/maps_lines.h"
#include "resolve/symbolizer.h"
#include "session/region.h"
#include "session/session.h"
#include "session/stack_names.h"
#include "session/supervisor.h"
#include "session/tsc_clock.h"

namespace usprobe::cli {
namespace {

constexpr std::chrono::milliseconds kTick{2};
// Formatting stops every this many events to drain the rings again.
constexpr size_t kDrainEvery = 4096;
// Records copied out and not printed yet, at most: beyond this the rings are left to fill.
constexpr size_t kMaxBacklog = size_t{256} << 20;
// A tick returns to the supervisor (signals, the command's exit) after this long at the most,
// printing the rest of its backlog at the next one.
constexpr std::chrono::milliseconds kMaxTickWork{100};
// Output is written in pieces of about this size.
constexpr size_t kWriteChunk = size_t{1} << 20;
// -U: the mappings the agents write for naming the stacks (as usprobe stacks has them).
constexpr uint32_t kMaxMaps = 16384;
constexpr uint64_t kMapsTextSize = uint64_t{64} << 20;

class Printer {
 public:
  Printer(const TraceOptions &o, const std::vector<Probe> &p, const std::vector<TraceSpec> &s,
          const TscClock &c, FILE *f)
      : options(o), probes(p), specs(s), clock(c), out(f) {}

  const TraceOptions &options;
  const std::vector<Probe> &probes;
  const std::vector<TraceSpec> &specs;
  const TscClock &clock;
  FILE *out;
  const Region *region = nullptr;  // for the threads' names, once started
  StackNames stack_names;
  uint64_t printed = 0;
  size_t probe_width = 20;                 // the longest probe name, at least 20: messages line up
  fmt::memory_buffer line;                 // what has been formatted and not written yet
  std::vector<std::string> probe_columns;  // by probe index
  std::string ids;                         // the pid, tid and comm columns of ids_pid, ids_tid
  int32_t ids_pid = 0, ids_tid = 0;
  // -T: the wall-clock time at the TSC clock's time 0, and the last second printed.
  int64_t wall_start_ns = 0;
  time_t wall_second = -1;
  std::string wall_text;

  // Whether -M's count is reached: nothing more is printed.
  bool full() const { return options.max_events != 0 && printed >= options.max_events; }

  void header() {
    for (const Probe &p : probes) probe_width = std::max(probe_width, p.display.size());
    // Each probe's column, padded, with the blank before the message: copied, not formatted.
    for (const Probe &p : probes)
      probe_columns.push_back(fmt::format("{:<{}} ", p.display, probe_width));
    if (!options.json) {
      std::string h;
      if (options.wall_time) h += fmt::format("{:<8} ", "TIME");
      if (options.timestamp) h += fmt::format("{:<11} ", "TIME(s)");
      h += fmt::format("{:<7} {:<7} {:<15} ", "PID", "TID", "COMM");
      if (options.durations) h += fmt::format("{:<12} ", "DURATION(us)");
      fmt::print(out, "{}{:<{}} {}\n", h, "PROBE", probe_width, "MESSAGE");
    }
    std::fflush(out);  // from here on events are written to the descriptor directly (write())
  }

  // Time 0 of the TSC clock is now: -T's times count from the wall clock's now.
  void mark_start() {
    timespec now;
    ::clock_gettime(CLOCK_REALTIME, &now);
    wall_start_ns = int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
  }

  // "HH:MM:SS " of the hit, local time: formatted once a second.
  void append_wall_time(uint64_t tsc) {
    auto ns = wall_start_ns + static_cast<int64_t>(std::llround(clock.seconds(tsc) * 1e9));
    time_t second = static_cast<time_t>(ns / 1'000'000'000);
    if (second != wall_second) {
      wall_second = second;
      tm local;
      ::localtime_r(&second, &local);
      wall_text = fmt::format("{:02}:{:02}:{:02} ", local.tm_hour, local.tm_min, local.tm_sec);
    }
    line.append(std::string_view(wall_text));
  }

  std::string comm_of(int32_t pid, int32_t tid) const {
    std::string name = region && pid > 0 ? region->comm(pid, tid) : std::string();
    return name.empty() ? "?" : name;
  }

  // -D: the call's time in nanoseconds, when the event is a return whose entry was seen.
  std::optional<uint64_t> duration_ns(const TraceEvent &e) const {
    if (!e.returning || e.entry_tsc == 0) return std::nullopt;
    double s = clock.seconds(e.tsc) - clock.seconds(e.entry_tsc);
    return s > 0 ? static_cast<uint64_t>(std::llround(s * 1e9)) : 0;  // a core a few ticks behind
  }

  void append_blanks(size_t n) {
    size_t at = line.size();
    line.resize(at + n);
    std::memset(line.data() + at, ' ', n);
  }

  // "%-11.6f " of the time in seconds, with integer arithmetic (as fast as it is exact here).
  void append_time(uint64_t tsc) {
    double us = std::round(clock.seconds(tsc) * 1e6);
    auto total = static_cast<int64_t>(us);
    uint64_t mag = total < 0 ? 0 - static_cast<uint64_t>(total) : static_cast<uint64_t>(total);
    size_t start = line.size();
    if (total < 0) line.push_back('-');
    fmt::format_int whole(mag / 1'000'000);
    line.append(whole.data(), whole.data() + whole.size());
    char fraction[7];
    uint64_t f = mag % 1'000'000;
    for (int i = 6; i >= 1; --i, f /= 10) fraction[i] = static_cast<char>('0' + f % 10);
    fraction[0] = '.';
    line.append(fraction, fraction + 7);
    size_t n = line.size() - start;
    append_blanks(n < 11 ? 11 - n + 1 : 1);
  }

  // Record i of the batch. The text of a probe without a format needs only the record's head;
  // the pid and tid columns are formatted again only when the thread changes.
  void print(const TraceBatch &batch, size_t i) {
    if (full()) return;
    TraceBatch::Head h = batch.head(i);
    const Probe &probe = probes[h.probe];
    const std::optional<Format> &format = specs[probe.spec_index].format;
    if (options.json) {
      TraceEvent e = batch.event(i);
      nlohmann::ordered_json j;
      j["time_s"] = std::round(clock.seconds(e.tsc) * 1e6) / 1e6;
      if (options.wall_time) {
        size_t at = line.size();
        append_wall_time(e.tsc);
        j["time"] = std::string(line.data() + at, line.size() - at - 1);
        line.resize(at);
      }
      j["pid"] = e.pid;
      j["tid"] = e.tid;
      j["comm"] = comm_of(e.pid, e.tid);
      j["probe"] = probe.display;
      j["args"] = render_args(format, e);
      if (auto errors = render_errors(format, e); !errors.empty()) j["errors"] = std::move(errors);
      j["message"] = render_message(format, e);
      if (options.durations)
        if (auto ns = duration_ns(e)) j["duration_ns"] = *ns;
      if (!e.stack.empty()) j["stack"] = stack_names.name(e.pid, e.image, e.stack);
      std::string text = dump_line(j);
      line.append(std::string_view(text));
      line.push_back('\n');
    } else {
      if (options.wall_time) append_wall_time(h.tsc);
      if (options.timestamp) append_time(h.tsc);
      if (h.pid != ids_pid || h.tid != ids_tid || ids.empty()) {
        ids_pid = h.pid;
        ids_tid = h.tid;
        ids = fmt::format("{:<7} {:<7} {:<15} ", h.pid, h.tid, comm_of(h.pid, h.tid));
      }
      line.append(std::string_view(ids));
      // The event is taken apart only when something needs more than its head.
      std::optional<TraceEvent> e;
      if (format || options.durations || options.user_stacks) e = batch.event(i);
      if (options.durations) {
        auto ns = duration_ns(*e);
        std::string d = ns ? fmt::format("{:.3f}", static_cast<double>(*ns) / 1e3) : "-";
        line.append(std::string_view(fmt::format("{:<12} ", d)));
      }
      line.append(std::string_view(probe_columns[h.probe]));
      if (format) append_message(line, format, *e);
      line.push_back('\n');
      if (e && !e->stack.empty())
        for (const std::string &frame : stack_names.name(e->pid, e->image, e->stack))
          line.append(std::string_view(fmt::format("        {}\n", frame)));
    }
    ++printed;
    if (line.size() >= kWriteChunk) write();
  }

  // Writes what was formatted. The command may write to the same pipe (its stderr, or the stdout
  // of -p's processes): a write of at most PIPE_BUF bytes is never interleaved with another one,
  // so pieces that size, cut after a newline, keep every line whole. A file of our own (-o) takes
  // one write.
  void write() {
    const char *p = line.data();
    size_t n = line.size();
    int fd = ::fileno(out);
    const size_t piece = out == stdout || out == stderr ? PIPE_BUF : n;
    while (n > 0) {
      size_t k = n;
      if (k > piece) {
        const void *nl = ::memrchr(p, '\n', piece);
        if (nl) {
          k = static_cast<size_t>(static_cast<const char *>(nl) - p) + 1;
        } else {  // a line longer than a piece: alone, whole
          const void *end = std::memchr(p + piece, '\n', n - piece);
          k = end ? static_cast<size_t>(static_cast<const char *>(end) - p) + 1 : n;
        }
      }
      if (!write_all(fd, p, k)) break;
      p += k;
      n -= k;
    }
    line.clear();
  }

 private:
  static bool write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
      ssize_t w = ::write(fd, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
};

// The order to print a batch in: by the time of the hit. Each ring is in order already, so a
// batch from one thread needs no sort; ties keep the drain order.
void order_by_time(const TraceBatch &batch, std::vector<std::pair<uint64_t, uint32_t>> &order) {
  order.resize(batch.size());
  bool sorted = true;
  for (uint32_t i = 0; i < order.size(); ++i) {
    order[i] = {batch.tsc(i), i};
    if (i > 0 && order[i].first < order[i - 1].first) sorted = false;
  }
  if (!sorted) std::sort(order.begin(), order.end());  // (tsc, index): stable
}

// The per-thread ring for --buffer-size (0: the default): a power of two, rounded up.
uint64_t ring_size_for(uint64_t requested) {
  return requested == 0 ? kDefaultRingSize : std::bit_ceil(requested);
}

}  // namespace

int run_trace(const TraceOptions &options) {
  std::vector<TraceSpec> trace_specs;
  std::vector<ProbeSpec> specs;
  for (const std::string &p : options.probes) {
    auto trace_spec = parse_trace_spec(p);
    if (!trace_spec) return report_error(trace_spec.error());
    auto spec = parse_probe(trace_spec->probe);
    if (!spec) return report_error(spec.error());
    // A USDT probe's notes must give what the format prints: checked as it resolves.
    if (spec->kind == ProbeSpec::Kind::kUsdt && trace_spec->format)
      for (const Conversion &c : trace_spec->format->conversions)
        spec->usdt_args_used |= 1u << c.arg;
    trace_specs.push_back(std::move(*trace_spec));
    specs.push_back(std::move(*spec));
  }
  auto session = prepare_session(specs, {options.command, options.pids, options.comm});
  if (!session) return report_error(session.error());
  const std::vector<Probe> &probes = session->probes;
  auto output = Output::open(options.output, options.cmd_output, *session->target);
  if (!output) return report_error(output.error());

  std::vector<PlanEntry> plan;
  for (const Probe &p : probes) {
    const std::optional<Format> &format = trace_specs[p.spec_index].format;
    auto prints = [&](auto which) {
      return format && std::ranges::any_of(format->conversions,
                                           [&](const Conversion &c) { return which(c.arg); });
    };
    // A return probe's entry keeps only what will be printed: each entry handler costs its call.
    // A USDT probe reads the note's arguments past the sixth only when they are printed.
    uint32_t flags = 0;
    if (p.location.starts_with("uretprobe:")) {
      if (prints([](unsigned arg) { return arg != agent::kRetvalArg; }))
        flags |= agent::kPlanEntryArgs;
      if (options.durations) flags |= agent::kPlanEntryTime;
    } else if (p.location.starts_with("usdt:") &&
               prints([](unsigned arg) { return arg >= agent::kMaxArgs; })) {
      flags |= agent::kPlanMoreArgs;
    }
    plan.push_back({p.location, format ? format->string_mask() : 0, flags});
  }
  RegionConfig config;
  config.mode = agent::kModeTrace;
  config.comm = options.comm;
  config.ring_size = ring_size_for(options.buffer_size);
  config.string_size = options.strlen + 1;
  if (options.user_stacks) {
    config.trace_stacks = true;
    config.max_maps = kMaxMaps;
    config.maps_text_size = kMapsTextSize;
  }
  TscClock clock;
  clock.calibrate();
  Supervisor supervisor;
  Printer printer(options, probes, trace_specs, clock, output->file());
  Target &target = *session->target;
  printer.header();
  clock.mark_start();
  printer.mark_start();
  auto started = target.start(config, plan, session->agent, supervisor);
  if (!started) return report_error(started.error());
  Region *region = *started;
  printer.region = region;

  NoticePrinter notices(probes, options.verbose);
  notices.info(target.notes());
  // Drained and not printed yet (`batch`), drained while `batch` was being printed (`next`).
  TraceBatch batch, next;
  std::vector<std::pair<uint64_t, uint32_t>> order;
  auto drain_into = [&](TraceBatch &into) {
    if (batch.bytes() + next.bytes() < kMaxBacklog) region->drain(into);
  };
  // While the command runs, the rings are drained again and again as a batch is printed; at the
  // end (`last`), once, and everything drained is printed: a process that outlives the command and
  // keeps hitting probes cannot keep usprobe running.
  auto tick = [&](bool last) {
    auto until = std::chrono::steady_clock::now() + kMaxTickWork;
    clock.refine();
    if (last)
      region->drain(batch);
    else
      drain_into(batch);
    region->reclaim(batch);  // a dead thread's last records: always taken
    // After the drain: an image's mappings are written before its first stack.
    if (options.user_stacks)
      for (const MapsMessage &m : region->new_maps()) printer.stack_names.add(m);
    while (!batch.empty()) {
      order_by_time(batch, order);
      for (size_t i = 0; i < order.size(); ++i) {
        printer.print(batch, order[i].second);
        if (!last && (i + 1) % kDrainEvery == 0) drain_into(next);
      }
      batch.clear();
      std::swap(batch, next);
      if (last) continue;
      drain_into(batch);
      if (std::chrono::steady_clock::now() >= until) break;  // the rest at the next tick
    }
    printer.write();
    notices.print(region->new_notices());
    // -M: the count is printed; the session ends as at -d's time.
    if (printer.full()) supervisor.stop();
  };
  ExitInfo exit = target.watch(
      supervisor, {kTick, options.duration_s, std::nullopt, output->file(), options.stop_signal},
      [&] { tick(false); }, [] {});
  tick(true);

  uint64_t lost = 0;  // records dropped on full rings, and hits the engine skipped
  for (const auto &[key, c] : region->counts()) lost += c.missed;
  fmt::print(stderr, "usprobe: {} events, {} lost\n", printer.printed, lost);
  notices.finish(*region, exit, target.noun());
  return exit_status(target, exit);
}

}  // namespace usprobe::cli
