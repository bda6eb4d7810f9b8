// Latency reports: per probe, a log2 table of call durations as BCC's funclatency draws it, then
// the count, mean and percentiles. Text for people, JSON (one object per probe per line) for
// programs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "output/histogram.h"

namespace usprobe::cli {

enum class Unit { kNs, kUs, kMs };

struct UnitInfo {
  std::string_view name;   // "ns": after numbers
  std::string_view table;  // "nsecs": the table's column title
  uint64_t ns = 1;         // nanoseconds in one unit
};
UnitInfo unit_info(Unit unit);

struct LatencyRow {
  std::string probe;  // display name
  Histogram histogram;
  uint64_t missed = 0;                 // calls not timed (recursion, returns not seen)
  std::vector<std::string> aliases{};  // other names of the function's site (Probe::aliases)
};

// One probe with calls:
//   exe:parse
//        nsecs          : count    distribution
//          256 -> 511        : 3        |*****                                   |
//          512 -> 1023       : 24       |****************************************|
//   count 27, avg 601 ns, p50 580 ns, p99 1004 ns
// ", missed N" ends the last line when N > 0. A probe without calls gets its name and
// "count 0" alone.
std::string latency_text(const LatencyRow &row, Unit unit);

// {"probe":..,"aliases":[..],"type":"interval"|"total","count":N,"avg_ns":X,"p50_ns":Y,"p99_ns":Z,"missed":M,
//  "buckets":[{"low_ns":L,"high_ns":H,"count":C},...]}: the non-empty log2 buckets of
// nanoseconds, high_ns inclusive; avg_ns, p50_ns and p99_ns are null without calls.
nlohmann::ordered_json latency_json(const LatencyRow &row, std::string_view type);

}  // namespace usprobe::cli
