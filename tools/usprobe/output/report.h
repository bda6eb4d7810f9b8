// Count reports: per probe, how many hits and misses, and from which processes. Text for people
// (a table sorted by hits), JSON for programs (one object per line, every probe present).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "resolve/probe_spec.h"
#include "session/region.h"

namespace usprobe::cli {

struct ProbeTotal {
  std::string probe;     // display name
  std::string location;  // as given to the agent
  Count total;
  std::map<int32_t, Count> pids;  // processes with a nonzero hit or miss count
};

// One row per probe, sorted by hits (most first), then by name.
std::vector<ProbeTotal> tally(const std::vector<Probe> &probes, const Counts &counts);
// now - before, key by key: the hits of one interval.
Counts subtract(const Counts &now, const Counts &before);

// The table, header line first:
//   PROBE          HITS     MISSED
//   libc:malloc   12345          0
// With per_pid, one row per (process, probe) and a PID column first.
std::string text_report(const std::vector<ProbeTotal> &rows, bool per_pid);

// The first line of a text report: "[HH:MM:SS]" (local time) for an interval, "Total over S s
// (exit status N):" at the end.
std::string report_heading(double elapsed_s, bool total, std::string_view ending);

// {"type":"interval"|"total","elapsed_s":1.234,"exit_status":0,"probes":[{"probe":..,
// "location":..,"hits":N,"missed":M,"pids":{"1234":N}}]}; exit_status only in a total (null when
// unknown).
nlohmann::ordered_json json_report(const std::vector<ProbeTotal> &rows, double elapsed_s,
                                   bool total, std::optional<int> exit_status);

// One line of JSON (invalid UTF-8 in names replaced, never thrown over).
std::string dump_line(const nlohmann::ordered_json &j);

}  // namespace usprobe::cli
