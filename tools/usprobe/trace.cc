// usprobe trace PROBESPEC... [-o FILE] [--json] -- COMMAND [ARGS...]: one line per hit, with the
// arguments printed through each probe's format, as BCC's trace does.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "commands.h"
#include "format.h"
#include "launch.h"
#include "region.h"
#include "report.h"
#include "session.h"
#include "supervisor.h"
#include "tsc_clock.h"

namespace usprobe::cli {
namespace {

// Each thread's ring holds 256 KiB, about 2,000 records with two strings: at one drain every
// 20 ms, a thread can trace 100,000 hits a second before records are dropped.
constexpr std::chrono::milliseconds kTick{20};
constexpr uint64_t kRingSize = 256 * 1024;

struct Printer {
  const TraceOptions &options;
  const std::vector<Probe> &probes;
  const std::vector<TraceSpec> &specs;
  const TscClock &clock;
  FILE *out;
  uint64_t printed = 0;
  size_t probe_width = 20;  // the longest probe name, at least 20: messages line up

  void header() {
    for (const Probe &p : probes) probe_width = std::max(probe_width, p.display.size());
    if (!options.json)
      fmt::print(out, "{:<11} {:<7} {:<7} {:<{}} {}\n", "TIME(s)", "PID", "TID", "PROBE",
                 probe_width, "MESSAGE");
    std::fflush(out);
  }

  void print(const TraceEvent &e) {
    const Probe &probe = probes[e.probe];
    const std::optional<Format> &format = specs[probe.spec_index].format;
    double t = clock.seconds(e.tsc);
    std::string message = render_message(format, e);
    if (options.json) {
      nlohmann::ordered_json j;
      j["time_s"] = std::round(t * 1e6) / 1e6;
      j["pid"] = e.pid;
      j["tid"] = e.tid;
      j["probe"] = probe.display;
      j["args"] = render_args(format, e);
      j["message"] = message;
      fmt::print(out, "{}\n", dump_line(j));
    } else {
      fmt::print(out, "{:<11.6f} {:<7} {:<7} {:<{}} {}\n", t, e.pid, e.tid, probe.display,
                 probe_width, message);
    }
    ++printed;
  }
};

}  // namespace

int run_trace(const TraceOptions &options) {
  std::vector<TraceSpec> trace_specs;
  std::vector<ProbeSpec> specs;
  for (const std::string &p : options.probes) {
    auto trace_spec = parse_trace_spec(p);
    if (!trace_spec) return report_error(trace_spec.error());
    auto spec = parse_probe(trace_spec->probe);
    if (!spec) return report_error(spec.error());
    trace_specs.push_back(std::move(*trace_spec));
    specs.push_back(std::move(*spec));
  }
  auto session = prepare_session(specs, options.command);
  if (!session) return report_error(session.error());
  const std::vector<Probe> &probes = session->probes;
  auto output = Output::open(options.output);
  if (!output) return report_error(output.error());

  std::vector<PlanEntry> plan;
  for (const Probe &p : probes) {
    const std::optional<Format> &format = trace_specs[p.spec_index].format;
    plan.push_back({p.location, format ? format->string_mask() : 0});
  }
  RegionConfig config;
  config.mode = agent::kModeTrace;
  config.ring_size = kRingSize;
  auto region = Region::create(config, plan);
  if (!region) return report_error(region.error());

  TscClock clock;
  clock.calibrate();
  Supervisor supervisor;
  Printer printer{options, probes, trace_specs, clock, output->file()};
  printer.header();
  clock.mark_start();
  auto child = launch(session->command, session->agent, region->fd(), supervisor.child_mask());
  if (!child) return report_error(child.error());

  NoticePrinter notices(probes, options.verbose);
  std::vector<TraceEvent> batch;
  auto tick = [&] {
    clock.refine();
    region->drain(batch);
    region->reclaim(batch);
    // Each ring is in order; across threads, order by the time of the hit.
    std::stable_sort(batch.begin(), batch.end(),
                     [](const TraceEvent &a, const TraceEvent &b) { return a.tsc < b.tsc; });
    for (const TraceEvent &e : batch) printer.print(e);
    if (!batch.empty()) std::fflush(output->file());
    batch.clear();
    notices.print(region->new_notices());
  };
  ExitInfo exit =
      supervisor.watch(*child, {kTick, std::nullopt, std::nullopt, output->file()}, tick, [] {});
  tick();

  uint64_t lost = 0;  // records dropped on full rings, and hits the engine skipped
  for (const auto &[key, c] : region->counts()) lost += c.missed;
  fmt::print(stderr, "usprobe: {} events, {} lost\n", printer.printed, lost);
  notices.finish(*region);
  return exit.status.value_or(1);
}

}  // namespace usprobe::cli
