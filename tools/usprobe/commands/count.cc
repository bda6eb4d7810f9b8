// usprobe count PROBE... [-i S] [-d S] [-o FILE] [--json] [--per-pid] -- COMMAND [ARGS...]:
// how many times each probe was hit, by every process of the command, reported every interval
// and once more, in total, when the command exits.
#include <fmt/format.h>

#include <chrono>

#include "commands/commands.h"
#include "output/report.h"
#include "session/region.h"
#include "session/session.h"
#include "session/supervisor.h"
#include "target/launch.h"

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
      fmt::print(out, "{}{}", report_heading(elapsed_s, total, status),
                 text_report(rows, options.per_pid));
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
  return report_while_running(
      supervisor, *child, *region, notices,
      {kTick, options.duration_s, options.interval_s, output->file()}, Counts{},
      [&] { return region->counts(); },
      [&](const Counts &c, double elapsed, bool total, std::optional<int> status) {
        reporter.print(c, elapsed, total, status);
      });
}

}  // namespace usprobe::cli
