#include "output/latency_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace usprobe::cli {
namespace {

constexpr size_t kBarWidth = 40;

std::string in_unit(double ns, const UnitInfo &u) {
  double v = ns / static_cast<double>(u.ns);
  // Whole nanoseconds; finer units keep the nanoseconds as decimals.
  int decimals = u.ns == 1 ? 0 : u.ns == 1000 ? 3 : 6;
  return fmt::format("{:.{}f} {}", v, decimals, u.name);
}

nlohmann::ordered_json number_or_null(std::optional<double> v, double scale) {
  if (!v) return nullptr;
  return std::round(*v * scale) / scale;
}

}  // namespace

UnitInfo unit_info(Unit unit) {
  switch (unit) {
    case Unit::kUs:
      return {"us", "usecs", 1000};
    case Unit::kMs:
      return {"ms", "msecs", 1'000'000};
    case Unit::kNs:
      break;
  }
  return {"ns", "nsecs", 1};
}

std::string latency_text(const LatencyRow &row, Unit unit) {
  UnitInfo u = unit_info(unit);
  const Histogram &h = row.histogram;
  std::string out = row.probe + "\n";
  std::vector<Log2Row> rows = log2_rows(h, u.ns);
  if (!rows.empty()) {
    size_t width = 10;
    uint64_t most = 0;
    for (const Log2Row &r : rows) {
      width = std::max(width, fmt::formatted_size("{}", r.high));
      most = std::max(most, r.count);
    }
    out += fmt::format("{:>{}}{:{}} : count    distribution\n", u.table, width, "", width + 4);
    for (const Log2Row &r : rows) {
      size_t stars = most == 0 ? 0 : static_cast<size_t>(r.count * kBarWidth / most);
      out += fmt::format("{:>{}} -> {:<{}} : {:<8} |{:<{}}|\n", r.low, width, r.high, width,
                         r.count, std::string(stars, '*'), kBarWidth);
    }
  }
  out += fmt::format("count {}", h.count);
  if (auto avg = mean_ns(h)) {
    out += fmt::format(", avg {}", in_unit(*avg, u));
    if (auto p50 = percentile(h, 0.50)) out += fmt::format(", p50 {}", in_unit(*p50, u));
    if (auto p99 = percentile(h, 0.99)) out += fmt::format(", p99 {}", in_unit(*p99, u));
  }
  if (row.missed != 0) out += fmt::format(", missed {}", row.missed);
  out += "\n";
  return out;
}

nlohmann::ordered_json latency_json(const LatencyRow &row, std::string_view type) {
  const Histogram &h = row.histogram;
  nlohmann::ordered_json j;
  j["probe"] = row.probe;
  j["aliases"] = row.aliases;
  j["type"] = type;
  j["count"] = h.count;
  j["avg_ns"] = number_or_null(mean_ns(h), 10);
  j["p50_ns"] = number_or_null(percentile(h, 0.50), 1);
  j["p99_ns"] = number_or_null(percentile(h, 0.99), 1);
  j["missed"] = row.missed;
  nlohmann::ordered_json buckets = nlohmann::ordered_json::array();
  for (const Log2Row &r : log2_rows(h, 1)) {
    if (r.count == 0) continue;
    nlohmann::ordered_json b;
    b["low_ns"] = r.low;
    b["high_ns"] = r.high;
    b["count"] = r.count;
    buckets.push_back(std::move(b));
  }
  j["buckets"] = std::move(buckets);
  return j;
}

}  // namespace usprobe::cli
