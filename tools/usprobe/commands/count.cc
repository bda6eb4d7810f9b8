// usprobe count PROBE... [-i S] [-d S] [-o FILE] [--json] [--per-pid] [--all] [--top N] [-T]
// -- COMMAND [ARGS...]: how many times each probe was hit, by every process of the command,
// reported every interval and once more, in total, when the command exits (BCC's funccount).
#include <fmt/format.h>

#include <chrono>

#include "commands/commands.h"
#include "output/metrics.h"
#include "output/report.h"
#include "session/region.h"
#include "session/session.h"
#include "session/supervisor.h"

namespace usprobe::cli {
namespace {

// Threads come and go far less often than they hit probes: twenty times a second keeps slots free
// for new threads and notices timely.
constexpr std::chrono::milliseconds kTick{50};

struct Reporter {
  const CountOptions &options;
  const std::vector<Probe> &probes;
  const Region &region;
  FILE *out;

  void print(const Counts &counts, double elapsed_s, bool total, const ExitInfo &exit) {
    std::vector<ProbeTotal> rows = tally(probes, counts);
    // The process's name as its slots gave it (they keep it after the process is gone).
    auto comm = [this](int32_t pid) { return region.comm(pid); };
    if (options.json) {
      fmt::print(
          out, "{}\n",
          dump_line(json_report(rows, elapsed_s, total, exit.status, options.top,
                                options.per_pid ? comm : std::function<std::string(int32_t)>())));
    } else {
      TableOptions table{options.per_pid, options.all, options.top, comm};
      fmt::print(out, "{}{}", report_heading(elapsed_s, total, exit.ending, options.timestamps),
                 text_report(rows, table));
    }
    std::fflush(out);
  }
};

}  // namespace

int run_count(const CountOptions &options) {
  auto session = prepare_probes(options.probes, {options.command, options.pids, options.comm});
  if (!session) return report_error(session.error());
  const std::vector<Probe> &probes = session->probes;

  auto output = Output::open(options.output, options.cmd_output, *session->target);
  if (!output) return report_error(output.error());
  auto server = MetricsServer::for_option(options.serve);
  if (!server) return report_error(server.error());
  std::vector<PlanEntry> plan;
  for (const Probe &p : probes) plan.push_back({p.location, 0});
  RegionConfig config;
  config.mode = agent::kModeCount;
  config.comm = options.comm;
  Supervisor supervisor;
  Target &target = *session->target;
  auto region = target.start(config, plan, session->agent, supervisor);
  if (!region) return report_error(region.error());

  NoticePrinter notices(probes, options.verbose);
  notices.info(target.notes());
  Reporter reporter{options, probes, **region, output->file()};
  return report_while_running(
      supervisor, target, **region, notices,
      {kTick, options.duration_s, options.interval_s, output->file(), options.stop_signal},
      Counts{}, [&] { return (*region)->counts(); },
      [&](const Counts &c, double elapsed, bool total, const ExitInfo &exit) {
        reporter.print(c, elapsed, total, exit);
      },
      *server ? std::function<void()>(
                    [&] { (*server)->publish(count_metrics(tally(probes, (*region)->counts()))); })
              : std::function<void()>());
}

}  // namespace usprobe::cli
