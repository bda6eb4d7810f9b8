#include "output/report.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <ctime>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace usprobe::cli {

std::vector<ProbeTotal> tally(const std::vector<Probe> &probes, const Counts &counts) {
  std::vector<ProbeTotal> rows(probes.size());
  for (size_t i = 0; i < probes.size(); ++i) {
    rows[i].probe = probes[i].display;
    rows[i].location = probes[i].location;
  }
  for (const auto &[key, c] : counts) {
    auto [pid, probe] = key;
    if (probe >= rows.size() || (c.hits == 0 && c.missed == 0)) continue;
    ProbeTotal &row = rows[probe];
    row.total.hits += c.hits;
    row.total.missed += c.missed;
    Count &p = row.pids[pid];
    p.hits += c.hits;
    p.missed += c.missed;
  }
  std::stable_sort(rows.begin(), rows.end(), [](const ProbeTotal &a, const ProbeTotal &b) {
    if (a.total.hits != b.total.hits) return a.total.hits > b.total.hits;
    return a.probe < b.probe;
  });
  return rows;
}

Counts subtract(const Counts &now, const Counts &before) {
  Counts out;
  for (const auto &[key, c] : now) {
    Count prev;
    if (auto it = before.find(key); it != before.end()) prev = it->second;
    // Totals only grow (freed slots are folded in first); the guard is against a wrap to 2^64.
    Count d{c.hits > prev.hits ? c.hits - prev.hits : 0,
            c.missed > prev.missed ? c.missed - prev.missed : 0};
    if (d.hits != 0 || d.missed != 0) out[key] = d;
  }
  return out;
}

std::string text_report(const std::vector<ProbeTotal> &rows, bool per_pid) {
  size_t name_width = std::string_view("PROBE").size();
  for (const ProbeTotal &r : rows) name_width = std::max(name_width, r.probe.size());
  name_width += 2;
  std::string out;
  if (!per_pid) {
    out += fmt::format("{:<{}}{:>10} {:>10}\n", "PROBE", name_width, "HITS", "MISSED");
    for (const ProbeTotal &r : rows)
      out +=
          fmt::format("{:<{}}{:>10} {:>10}\n", r.probe, name_width, r.total.hits, r.total.missed);
    return out;
  }
  struct Row {
    std::string pid;  // "-" for a probe no process hit
    const ProbeTotal *probe;
    Count count;
  };
  std::vector<Row> table;
  for (const ProbeTotal &r : rows) {
    if (r.pids.empty()) table.push_back({"-", &r, {}});
    for (const auto &[pid, c] : r.pids) table.push_back({std::to_string(pid), &r, c});
  }
  std::stable_sort(table.begin(), table.end(), [](const Row &a, const Row &b) {
    return std::forward_as_tuple(b.count.hits, a.probe->probe) <
           std::forward_as_tuple(a.count.hits, b.probe->probe);
  });
  size_t pid_width = std::string_view("PID").size();
  for (const Row &r : table) pid_width = std::max(pid_width, r.pid.size());
  pid_width += 2;
  out += fmt::format("{:<{}}{:<{}}{:>10} {:>10}\n", "PID", pid_width, "PROBE", name_width, "HITS",
                     "MISSED");
  for (const Row &r : table)
    out += fmt::format("{:<{}}{:<{}}{:>10} {:>10}\n", r.pid, pid_width, r.probe->probe, name_width,
                       r.count.hits, r.count.missed);
  return out;
}

nlohmann::ordered_json json_report(const std::vector<ProbeTotal> &rows, double elapsed_s,
                                   bool total, std::optional<int> exit_status) {
  nlohmann::ordered_json j;
  j["type"] = total ? "total" : "interval";
  j["elapsed_s"] = std::round(elapsed_s * 1000.0) / 1000.0;
  if (total) {
    if (exit_status)
      j["exit_status"] = *exit_status;
    else
      j["exit_status"] = nullptr;
  }
  nlohmann::ordered_json probes = nlohmann::ordered_json::array();
  for (const ProbeTotal &r : rows) {
    nlohmann::ordered_json p;
    p["probe"] = r.probe;
    p["location"] = r.location;
    p["hits"] = r.total.hits;
    p["missed"] = r.total.missed;
    nlohmann::ordered_json pids = nlohmann::ordered_json::object();
    for (const auto &[pid, c] : r.pids)
      if (c.hits != 0) pids[std::to_string(pid)] = c.hits;
    p["pids"] = std::move(pids);
    probes.push_back(std::move(p));
  }
  j["probes"] = std::move(probes);
  return j;
}

std::string dump_line(const nlohmann::ordered_json &j) {
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string report_heading(double elapsed_s, bool total, std::string_view ending) {
  if (total) return fmt::format("Total over {:.3f} s ({}):\n", elapsed_s, ending);
  std::time_t now = std::time(nullptr);
  std::tm local{};
  ::localtime_r(&now, &local);
  return fmt::format("[{:%H:%M:%S}]\n", local);
}

}  // namespace usprobe::cli
