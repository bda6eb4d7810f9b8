// usprobe latency PROBE... [-u|-m|--unit ns|us|ms] [-F] [-T] [-i S] [-d S] [-o FILE] [--json]
// [--pprof FILE] -- COMMAND [ARGS...]: how long each call of the probed functions took, by every
// process of the command, as a histogram with its mean and percentiles (BCC's funclatency: one for
// all the functions, or with -F one per function; JSON has one object per function), reported
// every interval and once more, in total, when the command exits; and with --pprof, the total
// calls and time of each function as a pprof profile.
//
// The agent times each call with rdtsc at the entry and at the return (agent/handlers.cc) and adds
// the duration, converted to nanoseconds with the multiplier this file calibrates, to its thread's
// histogram in the region; the CLI sums the histograms of all slots (region.h).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <string_view>

#include "commands/commands.h"
#include "elf/elf_file.h"
#include "output/latency_report.h"
#include "output/metrics.h"
#include "output/pprof.h"
#include "output/report.h"
#include "resolve/symbolizer.h"
#include "session/region.h"
#include "session/session.h"
#include "session/supervisor.h"
#include "session/tsc_clock.h"

namespace usprobe::cli {
namespace {

// As count: slots of exited threads are freed twenty times a second.
constexpr std::chrono::milliseconds kTick{50};
// A slot holds about 4 KiB of histogram per probe; the region is sparse, but a glob over a large
// library would still map gigabytes. Past this size there are fewer slots, and the threads that
// find none free share the overflow slot (exact, a little slower).
constexpr uint64_t kMaxRegionBytes = uint64_t{4} << 30;
constexpr uint32_t kMaxSlots = 512, kMinSlots = 16;
// In the text report, probes that saw no call are named on one line, this many at most.
constexpr size_t kMaxIdleNamed = 10;

std::optional<Unit> parse_unit(const std::string &text) {
  if (text == "ns") return Unit::kNs;
  if (text == "us") return Unit::kUs;
  if (text == "ms") return Unit::kMs;
  return std::nullopt;
}

// Latency is measured between a function's entry and its return: no offsets, no return probes.
Result<void> check_function_entry(const ProbeSpec &spec) {
  if (spec.returns)
    return fail(EINVAL, fmt::format("latency: '{}': name the function, not its return "
                                    "(latency probes its entry and its returns)",
                                    spec.text));
  if (spec.kind == ProbeSpec::Kind::kUsdt)
    return fail(EINVAL, fmt::format("latency: '{}': a USDT probe is a point in the code, not a "
                                    "function: it has no return to time (count, trace or stacks "
                                    "take it)",
                                    spec.text));
  if (spec.kind != ProbeSpec::Kind::kSymbol && spec.kind != ProbeSpec::Kind::kGlob)
    return fail(EINVAL, fmt::format("latency: '{}' is not a function entry (expected FILE:SYMBOL "
                                    "or FILE:GLOB)",
                                    spec.text));
  return {};
}

// "f.cold", "f.cold.3": code GCC moved out of f, entered by a jump from f, not by a call. It has
// no return of its own to time.
bool is_cold_part(std::string_view name) {
  size_t dot = name.rfind(".cold");
  if (dot == std::string_view::npos) return false;
  std::string_view rest = name.substr(dot + 5);
  return rest.empty() || (rest.size() > 1 && rest[0] == '.' &&
                          rest.find_first_not_of("0123456789", 1) == std::string_view::npos);
}

struct Snapshot {
  std::vector<Histogram> histograms;  // by probe index
  std::vector<uint64_t> missed;       // by probe index
};

Snapshot take(const Region &region, size_t probe_count) {
  Snapshot s{region.histograms(), std::vector<uint64_t>(probe_count, 0)};
  s.histograms.resize(probe_count);
  for (const auto &[key, c] : region.counts())
    if (key.second < probe_count) s.missed[key.second] += c.missed;
  return s;
}

Snapshot subtract(const Snapshot &now, const Snapshot &before) {
  Snapshot d = now;
  for (size_t i = 0; i < d.histograms.size() && i < before.histograms.size(); ++i) {
    d.histograms[i] = cli::subtract(now.histograms[i], before.histograms[i]);
    d.missed[i] = now.missed[i] > before.missed[i] ? now.missed[i] - before.missed[i] : 0;
  }
  return d;
}

// "exe:a, exe:b, exe:c and 4 more": names for one line.
std::string some_names(const std::vector<std::string> &names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < kMaxIdleNamed; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > kMaxIdleNamed)
    out += fmt::format(" and {} more", names.size() - kMaxIdleNamed);
  return out;
}

// The calls of the whole run as a pprof profile: a sample per probe that saw calls, its values the
// calls timed and their total nanoseconds. Its one location is the probed function in its file,
// named by the file's symbols (the demangled name, and the name as is for system_name). There is no
// process's address to give: every process may load the file elsewhere. So the mapping is the file
// itself at address 0 (memory_start 0, file_offset 0): a location's address is its file offset,
// which is what a profiler that names it again from the file computes from any mapping.
PprofProfile latency_profile(const std::vector<Probe> &probes, const Snapshot &total) {
  PprofProfile profile({{"calls", "count"}, {"latency", "nanoseconds"}});
  std::map<std::string, std::shared_ptr<const elf::ElfFile>> files;
  for (size_t i = 0; i < probes.size() && i < total.histograms.size(); ++i) {
    const Histogram &h = total.histograms[i];
    if (h.count == 0) continue;
    const Probe &p = probes[i];
    uint64_t mapping = 0, function = 0, address = 0;
    if (!p.site_file.empty() && p.site_offset) {
      auto [it, inserted] = files.try_emplace(p.site_file);
      if (inserted)
        if (auto opened = elf::ElfFile::open(p.site_file)) it->second = std::move(*opened);
      std::error_code ec;
      uint64_t size = std::filesystem::file_size(p.site_file, ec);
      const elf::ElfFile *elf = it->second.get();
      mapping = profile.add_mapping(
          {0, ec ? 0 : size, 0, p.site_file, elf ? elf->build_id() : std::string()});
      address = *p.site_offset;
      if (std::optional<elf::Function> f = elf ? elf->function_containing(address) : std::nullopt)
        function = profile.add_function(demangle_names() ? demangle(f->name) : f->name, f->name);
    }
    // An IFUNC that the command resolves itself: no file known, the probe's name alone.
    if (function == 0) function = profile.add_function(p.display, "");
    const int64_t values[] = {static_cast<int64_t>(h.count), static_cast<int64_t>(h.sum_ns)};
    profile.add_sample({profile.add_location(mapping, address, function)}, values);
  }
  return profile;
}

struct Reporter {
  const LatencyOptions &options;
  const std::vector<Probe> &probes;
  Unit unit;
  FILE *out;
  std::optional<Snapshot> last_total{};  // the total report's snapshot, for --pprof
  double last_total_elapsed_s = 0;

  void print(const Snapshot &s, double elapsed_s, bool total, const ExitInfo &exit) {
    if (total) {
      last_total = s;
      last_total_elapsed_s = elapsed_s;
    }
    std::vector<LatencyRow> rows;
    for (size_t i = 0; i < probes.size(); ++i)
      rows.push_back({probes[i].display, s.histograms[i], s.missed[i], probes[i].aliases});
    if (options.json) {
      // When the report was taken, as count's reports say it.
      const double now =
          std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
              .count();
      for (const LatencyRow &r : rows) {
        nlohmann::ordered_json j = latency_json(r, total ? "total" : "interval");
        j["elapsed_s"] = std::round(elapsed_s * 1000.0) / 1000.0;
        j["timestamp"] = std::round(now * 1000.0) / 1000.0;
        fmt::print(out, "{}\n", dump_line(j));
      }
      std::fflush(out);
      return;
    }
    // In text, a function's aliases follow its name.
    for (LatencyRow &r : rows) r.probe = name_with_aliases(r.probe, r.aliases);
    fmt::print(out, "{}", report_heading(elapsed_s, total, exit.ending, options.timestamps));
    std::vector<std::string> idle, timed;
    LatencyRow combined;
    for (const LatencyRow &r : rows) {
      if (r.histogram.count == 0 && r.missed == 0) {
        idle.push_back(r.probe);
        continue;
      }
      timed.push_back(r.probe);
      if (options.per_function) {
        fmt::print(out, "\n{}", latency_text(r, unit));
      } else {
        combined.histogram.add(r.histogram);
        combined.missed += r.missed;
      }
    }
    // funclatency's default: one histogram for every function that was called, named above it.
    if (!options.per_function && !timed.empty()) {
      combined.probe = timed.size() == 1
                           ? timed[0]
                           : fmt::format("{} functions: {}", timed.size(), some_names(timed));
      fmt::print(out, "\n{}", latency_text(combined, unit));
    }
    if (!idle.empty()) fmt::print(out, "\nno calls: {}\n", some_names(idle));
    std::fflush(out);
  }
};

}  // namespace

int run_latency(const LatencyOptions &options) {
  auto unit = parse_unit(options.unit);
  if (!unit)
    return report_error(
        {EINVAL, fmt::format("latency: unknown unit '{}' (expected ns, us or ms)", options.unit)});
  // "-u us" from before -u became funclatency's flag: "us" would read as a probe.
  for (const std::string &p : options.probes)
    if (p == "ns" || p == "us" || p == "ms")
      return report_error(
          {EINVAL, fmt::format("latency: '{}' is not a probe: -u and -m are flags "
                               "(microseconds, milliseconds); --unit {} names a unit",
                               p, p)});
  std::vector<ProbeSpec> specs;
  auto session = prepare_probes(options.probes, {options.command, options.pids, options.comm},
                                check_function_entry, &specs);
  if (!session) return report_error(session.error());
  // A glob's cold parts are left out: they are jumped into, never called.
  std::vector<Probe> probes;
  for (Probe &p : session->probes) {
    // Timing needs the return: none at an entry point (a glob has left it out already).
    if (p.entry_point) {
      Error e = entered_not_called(p);
      e.message = "latency: " + e.message;
      return report_error(e);
    }
    // Nor a function that returns twice (setjmp, vfork): a glob leaves it out, a name is refused.
    const bool glob = specs[p.spec_index].kind == ProbeSpec::Kind::kGlob;
    if (p.returns_twice && !glob) {
      Error e = returned_twice(p);
      e.message = "latency: " + e.message;
      return report_error(e);
    }
    if (!glob || (!is_cold_part(p.display) && !p.returns_twice)) probes.push_back(std::move(p));
  }
  if (probes.empty())
    return report_error({ENOENT, "latency: the probes match only cold parts of functions"});

  auto output = Output::open(options.output, options.cmd_output, *session->target);
  if (!output) return report_error(output.error());
  // Created before the command starts, so that a bad path is reported before anything runs.
  std::optional<Output> pprof;
  if (!options.pprof.empty()) {
    auto opened = Output::create(options.pprof);
    if (!opened) return report_error({opened.error().code, "--pprof: " + opened.error().message});
    pprof.emplace(std::move(*opened));
  }
  auto server = MetricsServer::for_option(options.serve);
  if (!server) return report_error(server.error());
  std::vector<PlanEntry> plan;
  for (const Probe &p : probes) plan.push_back({p.location, 0});

  TscClock clock;
  clock.calibrate();
  RegionConfig config;
  config.mode = agent::kModeLatency;
  config.comm = options.comm;
  config.tsc_to_ns_mult = tsc_to_ns_mult(clock.ticks_per_ns());
  if (config.tsc_to_ns_mult == 0)
    return report_error({EINVAL, fmt::format("latency: cannot use the TSC ({} ticks per ns)",
                                             clock.ticks_per_ns())});
  uint64_t stride = agent::latency_stride_for(static_cast<uint32_t>(plan.size()));
  config.max_slots =
      static_cast<uint32_t>(std::clamp<uint64_t>(kMaxRegionBytes / stride, kMinSlots, kMaxSlots));
  Supervisor supervisor;
  Target &target = *session->target;
  auto region = target.start(config, plan, session->agent, supervisor);
  if (!region) return report_error(region.error());

  NoticePrinter notices(probes, options.verbose);
  notices.info(target.notes());
  Reporter reporter{options, probes, *unit, output->file()};
  int status = report_while_running(
      supervisor, target, **region, notices,
      {kTick, options.duration_s, options.interval_s, output->file(), options.stop_signal},
      Snapshot{std::vector<Histogram>(probes.size()), std::vector<uint64_t>(probes.size())},
      [&] { return take(**region, probes.size()); },
      [&](const Snapshot &s, double elapsed, bool total, const ExitInfo &exit) {
        reporter.print(s, elapsed, total, exit);
      },
      *server ? std::function<void()>([&] {
        const Snapshot now = take(**region, probes.size());
        std::vector<LatencyMetricsRow> rows;
        for (size_t i = 0; i < probes.size(); ++i)
          rows.push_back({probes[i].display, &now.histograms[i], now.missed[i]});
        (*server)->publish(latency_metrics(rows));
      })
              : std::function<void()>());
  if (pprof && reporter.last_total) {
    PprofProfile profile = latency_profile(probes, *reporter.last_total);
    profile.set_time(unix_nanos(target.started()),
                     static_cast<int64_t>(reporter.last_total_elapsed_s * 1e9));
    std::string names;
    for (const Probe &p : probes) names += " " + p.display;
    profile.add_comment("usprobe latency" + names);
    profile.add_comment(target.description());
    if (auto written = write_pprof(pprof->file(), options.pprof, profile); !written)
      return report_error(written.error());
    fmt::print(stderr, "usprobe: pprof profile written to {}\n", options.pprof);
  }
  return status;
}

}  // namespace usprobe::cli
