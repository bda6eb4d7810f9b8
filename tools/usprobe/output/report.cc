#include "output/report.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <ctime>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <tuple>

namespace usprobe::cli {

std::vector<ProbeTotal> tally(const std::vector<Probe> &probes, const Counts &counts) {
  std::vector<ProbeTotal> rows(probes.size());
  for (size_t i = 0; i < probes.size(); ++i) {
    rows[i].probe = probes[i].display;
    rows[i].aliases = probes[i].aliases;
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

namespace {

// "(12 more probes below the top 3; 3538 not hit; --all shows them)": what a table left out.
std::string left_out_line(size_t below_top, size_t top, size_t not_hit, std::string_view noun) {
  std::string out;
  if (below_top != 0)
    out = fmt::format("{} more {}{} below the top {}", below_top, noun, below_top == 1 ? "" : "s",
                      top);
  if (not_hit != 0)
    out += out.empty() ? fmt::format("{} {}{} not hit; --all shows them", not_hit, noun,
                                     not_hit == 1 ? "" : "s")
                       : fmt::format("; {} not hit", not_hit);
  return out.empty() ? out : "(" + out + ")\n";
}

}  // namespace

std::string text_report(const std::vector<ProbeTotal> &rows, const TableOptions &options) {
  struct Row {
    std::string pid, comm;  // per_pid; "-" for a probe no process hit
    std::string name;
    Count count;
  };
  std::vector<Row> table;
  for (const ProbeTotal &r : rows) {
    if (!options.per_pid) {
      table.push_back({"", "", name_with_aliases(r.probe, r.aliases), r.total});
      continue;
    }
    if (r.pids.empty()) table.push_back({"-", "-", name_with_aliases(r.probe, r.aliases), {}});
    for (const auto &[pid, c] : r.pids) {
      std::string comm = options.comm ? options.comm(pid) : "";
      table.push_back({std::to_string(pid), comm.empty() ? "?" : comm,
                       name_with_aliases(r.probe, r.aliases), c});
    }
  }
  std::stable_sort(table.begin(), table.end(), [](const Row &a, const Row &b) {
    return std::forward_as_tuple(b.count.hits, a.name) <
           std::forward_as_tuple(a.count.hits, b.name);
  });
  size_t not_hit = 0, below_top = 0;
  if (!options.all) {
    not_hit = static_cast<size_t>(std::count_if(table.begin(), table.end(), [](const Row &r) {
      return r.count.hits == 0 && r.count.missed == 0;
    }));
    std::erase_if(table, [](const Row &r) { return r.count.hits == 0 && r.count.missed == 0; });
  }
  if (options.top != 0 && table.size() > options.top) {
    below_top = table.size() - options.top;
    table.resize(options.top);
  }
  size_t name_width = std::string_view("PROBE").size();
  size_t pid_width = std::string_view("PID").size(), comm_width = std::string_view("COMM").size();
  for (const Row &r : table) {
    name_width = std::max(name_width, r.name.size());
    pid_width = std::max(pid_width, r.pid.size());
    comm_width = std::max(comm_width, r.comm.size());
  }
  name_width += 2, pid_width += 2, comm_width += 2;
  std::string out;
  if (options.per_pid) out += fmt::format("{:<{}}{:<{}}", "PID", pid_width, "COMM", comm_width);
  out += fmt::format("{:<{}}{:>10} {:>10}\n", "PROBE", name_width, "HITS", "MISSED");
  for (const Row &r : table) {
    if (options.per_pid) out += fmt::format("{:<{}}{:<{}}", r.pid, pid_width, r.comm, comm_width);
    out += fmt::format("{:<{}}{:>10} {:>10}\n", r.name, name_width, r.count.hits, r.count.missed);
  }
  out += left_out_line(below_top, options.top, not_hit, options.per_pid ? "row" : "probe");
  return out;
}

nlohmann::ordered_json json_report(const std::vector<ProbeTotal> &rows, double elapsed_s,
                                   bool total, std::optional<int> exit_status, size_t top,
                                   const std::function<std::string(int32_t)> &comm) {
  nlohmann::ordered_json j;
  j["type"] = total ? "total" : "interval";
  j["elapsed_s"] = std::round(elapsed_s * 1000.0) / 1000.0;
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  j["timestamp"] = std::round(now * 1000.0) / 1000.0;
  if (total) {
    if (exit_status)
      j["exit_status"] = *exit_status;
    else
      j["exit_status"] = nullptr;
  }
  nlohmann::ordered_json probes = nlohmann::ordered_json::array();
  for (const ProbeTotal &r : rows) {
    if (top != 0 && probes.size() >= top) break;
    nlohmann::ordered_json p;
    p["probe"] = r.probe;
    p["aliases"] = r.aliases;
    p["location"] = r.location;
    p["hits"] = r.total.hits;
    p["missed"] = r.total.missed;
    nlohmann::ordered_json pids = nlohmann::ordered_json::object();
    for (const auto &[pid, c] : r.pids)
      if (c.hits != 0) pids[std::to_string(pid)] = c.hits;
    p["pids"] = std::move(pids);
    if (comm) {
      nlohmann::ordered_json comms = nlohmann::ordered_json::object();
      for (const auto &[pid, c] : r.pids)
        if (c.hits != 0) comms[std::to_string(pid)] = comm(pid);
      p["comms"] = std::move(comms);
    }
    probes.push_back(std::move(p));
  }
  j["probes"] = std::move(probes);
  return j;
}

std::string dump_line(const nlohmann::ordered_json &j) {
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string report_heading(double elapsed_s, bool total, std::string_view ending, bool timestamp) {
  std::time_t now = std::time(nullptr);
  std::tm local{};
  ::localtime_r(&now, &local);
  std::string out = timestamp ? fmt::format("{:%H:%M:%S}\n", local) : "";
  if (total) return out + fmt::format("Total over {:.3f} s ({}):\n", elapsed_s, ending);
  return out + fmt::format("[{:%H:%M:%S}] {:.3f} s\n", local, elapsed_s);
}

}  // namespace usprobe::cli
