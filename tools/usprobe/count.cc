// usprobe count PROBE... [-i S] [-d S] [-o FILE] [--json] [--per-pid] -- COMMAND [ARGS...]:
// how many times each probe was hit, by every process of the command, reported every interval
// and once more, in total, when the command exits.
#include <fmt/chrono.h>
#include <fmt/format.h>

#include <chrono>
#include <ctime>

#include "commands.h"
#include "launch.h"
#include "region.h"
#include "report.h"
#include "session.h"
#include "supervisor.h"

namespace usprobe::cli {
namespace {

// Threads come and go far less often than they hit probes: twenty times a second keeps slots free
// for new threads and notices timely.
constexpr std::chrono::milliseconds kTick{50};

struct Reporter {
  const CountOptions &options;
  const std::vector<Probe> &probes;
  FILE *out;

  void print(const Counts &counts, double elapsed_s, bool total, std::optional<int> status) {
    std::vector<ProbeTotal> rows = tally(probes, counts);
    if (options.json) {
      fmt::print(out, "{}\n", dump_line(json_report(rows, elapsed_s, total, status)));
    } else {
      if (total) {
        fmt::print(out, "Total over {:.3f} s (exit status {}):\n", elapsed_s,
                   status ? std::to_string(*status) : "unknown");
      } else {
        std::time_t now = std::time(nullptr);
        std::tm local{};
        ::localtime_r(&now, &local);
        fmt::print(out, "[{:%H:%M:%S}]\n", local);
      }
      fmt::print(out, "{}", text_report(rows, options.per_pid));
    }
    std::fflush(out);
  }
};

}  // namespace

int run_count(const CountOptions &options) {
  auto session = prepare_probes(options.probes, options.command);
  if (!session) return report_error(session.error());
  const std::vector<Probe> &probes = session->probes;

  auto output = Output::open(options.output);
  if (!output) return report_error(output.error());
  std::vector<PlanEntry> plan;
  for (const Probe &p : probes) plan.push_back({p.location, 0});
  RegionConfig config;
  config.mode = agent::kModeCount;
  auto region = Region::create(config, plan);
  if (!region) return report_error(region.error());

  Supervisor supervisor;
  auto child = launch(session->command, session->agent, region->fd(), supervisor.child_mask());
  if (!child) return report_error(child.error());

  NoticePrinter notices(probes, options.verbose);
  Reporter reporter{options, probes, output->file()};
  std::vector<TraceEvent> no_events;  // count mode has no rings
  Counts reported;                    // at the last interval report
  auto tick = [&] {
    region->reclaim(no_events);
    notices.print(region->new_notices());
  };
  auto interval = [&] {
    Counts now = region->counts();
    double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - child->started).count();
    reporter.print(subtract(now, reported), elapsed, false, std::nullopt);
    reported = std::move(now);
  };
  ExitInfo exit =
      supervisor.watch(*child, {kTick, options.duration_s, options.interval_s}, tick, interval);
  // Grandchildren may still run: what they counted so far is in their live slots.
  tick();
  reporter.print(region->counts(), exit.elapsed_s, true, exit.status);
  notices.finish(*region);
  return exit.status.value_or(1);
}

}  // namespace usprobe::cli
