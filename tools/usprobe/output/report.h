// Count reports: per probe, how many hits and misses, and from which processes. Text for people
// (a table sorted by hits), JSON for programs (one object per line, every probe present).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "resolve/probe_spec.h"
#include "session/region.h"

namespace usprobe::cli {

struct ProbeTotal {
  std::string probe;                 // display name
  std::vector<std::string> aliases;  // other names of its site (Probe::aliases)
  std::string location;              // as given to the agent
  Count total;
  std::map<int32_t, Count> pids;  // processes with a nonzero hit or miss count
};

// One row per probe, sorted by hits (most first), then by name.
std::vector<ProbeTotal> tally(const std::vector<Probe> &probes, const Counts &counts);
// now - before, key by key: the hits of one interval.
Counts subtract(const Counts &now, const Counts &before);

struct TableOptions {
  bool per_pid = false;  // one row per (process, probe), with the process's PID and COMM first
  bool all = false;      // rows that saw no hit and no miss too (else counted in the last line)
  size_t top = 0;        // only the first `top` rows (0: all)
  std::function<std::string(int32_t)> comm;  // per_pid: a process's name ("" when unknown)
};

// The table, header line first, rows sorted by hits (most first), then by name:
//   PROBE                                HITS     MISSED
//   libc:memcpy (also memmove)          12345          0
//   (3538 probes not hit; --all shows them)
// With per_pid, one row per (process, probe) and PID and COMM columns first. The last line, when
// rows were left out, says how many and why.
std::string text_report(const std::vector<ProbeTotal> &rows, const TableOptions &options);

// The first line of a text report: "[HH:MM:SS] S.SSS s" (local time, seconds since the start) for
// an interval, "Total over S s (exit status N):" at the end. With `timestamp` (-T, BCC's
// funccount -T), a line "HH:MM:SS" comes first in both.
std::string report_heading(double elapsed_s, bool total, std::string_view ending,
                           bool timestamp = false);

// {"type":"interval"|"total","elapsed_s":1.234,"timestamp":1764672245.123,"exit_status":0,
// "probes":[{"probe":..,"aliases":[..],"location":..,"hits":N,"missed":M,"pids":{"1234":N},
// "comms":{"1234":"sqlite3"}}]}; exit_status only in a total (null when unknown); timestamp:
// the wall-clock time of the report (Unix seconds); every probe present, unless `top` (not 0)
// keeps the first rows only; comms when `comm` is given.
nlohmann::ordered_json json_report(const std::vector<ProbeTotal> &rows, double elapsed_s,
                                   bool total, std::optional<int> exit_status, size_t top = 0,
                                   const std::function<std::string(int32_t)> &comm = {});

// One line of JSON (invalid UTF-8 in names replaced, never thrown over).
std::string dump_line(const nlohmann::ordered_json &j);

}  // namespace usprobe::cli
