#include "output/histogram.h"

#include <algorithm>
#include <cmath>

#include "protocol/protocol.h"

namespace usprobe::cli {
namespace {

using agent::kLatencyBuckets;
using agent::latency_bucket;
using agent::latency_bucket_high;
using agent::latency_bucket_low;

// The log2 row of a value: 0 for 0 and 1, else its highest set bit.
uint32_t log2_row(uint64_t v) {
  return v < 2 ? 0 : 63u - static_cast<uint32_t>(__builtin_clzll(v));
}

}  // namespace

void Histogram::record(uint64_t ns, uint64_t n) {
  if (buckets.empty()) buckets.assign(kLatencyBuckets, 0);
  buckets[latency_bucket(ns)] += n;
  count += n;
  sum_ns += ns * n;
}

void Histogram::add(const Histogram &other) {
  count += other.count;
  sum_ns += other.sum_ns;
  if (other.buckets.empty()) return;
  if (buckets.empty()) buckets.assign(kLatencyBuckets, 0);
  for (size_t i = 0; i < kLatencyBuckets && i < other.buckets.size(); ++i)
    buckets[i] += other.buckets[i];
}

Histogram subtract(const Histogram &now, const Histogram &before) {
  auto minus = [](uint64_t a, uint64_t b) { return a > b ? a - b : 0; };
  Histogram d;
  d.count = minus(now.count, before.count);
  d.sum_ns = minus(now.sum_ns, before.sum_ns);
  if (now.buckets.empty()) return d;
  d.buckets.assign(kLatencyBuckets, 0);
  for (uint32_t i = 0; i < kLatencyBuckets; ++i)
    d.buckets[i] = minus(now.bucket(i), before.bucket(i));
  return d;
}

std::optional<double> mean_ns(const Histogram &h) {
  if (h.count == 0) return std::nullopt;
  return static_cast<double>(h.sum_ns) / static_cast<double>(h.count);
}

std::optional<double> percentile(const Histogram &h, double q) {
  uint64_t total = 0;
  for (uint64_t c : h.buckets) total += c;
  if (total == 0) return std::nullopt;
  q = std::clamp(q, 0.0, 1.0);
  auto rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(total)));
  rank = std::clamp<uint64_t>(rank, 1, total);
  uint64_t below = 0;
  for (uint32_t i = 0; i < kLatencyBuckets; ++i) {
    uint64_t c = h.bucket(i);
    if (below + c < rank) {
      below += c;
      continue;
    }
    auto low = static_cast<double>(latency_bucket_low(i));
    // Every call in this one bucket: their mean is known exactly and lies in the bucket, and is a
    // better guess than a spread the calls do not have (a function that always takes 50 ms).
    if (c == total && h.count == total && h.count != 0)
      return std::clamp(static_cast<double>(h.sum_ns) / static_cast<double>(h.count), low,
                        static_cast<double>(latency_bucket_high(i)));
    // high + 1: the bucket covers [low, high + 1); 0..15 have one value each.
    double width = static_cast<double>(latency_bucket_high(i)) + 1.0 - low;
    if (width <= 1.0) return low;
    // The calls of the bucket spread evenly over it, each at the middle of its share.
    return low + width * (static_cast<double>(rank - below) - 0.5) / static_cast<double>(c);
  }
  return std::nullopt;  // not reached: rank <= total
}

std::vector<Log2Row> log2_rows(const Histogram &h, uint64_t unit_ns) {
  if (unit_ns == 0) unit_ns = 1;
  std::vector<uint64_t> rows(64, 0);
  bool any = false;
  for (uint32_t i = 0; i < kLatencyBuckets; ++i) {
    uint64_t c = h.bucket(i);
    if (c == 0) continue;
    uint64_t low = latency_bucket_low(i), high = latency_bucket_high(i);
    uint64_t mid = low + (high - low) / 2;
    rows[log2_row(mid / unit_ns)] += c;
    any = true;
  }
  std::vector<Log2Row> out;
  if (!any) return out;
  auto first = std::find_if(rows.begin(), rows.end(), [](uint64_t c) { return c != 0; });
  auto last = std::find_if(rows.rbegin(), rows.rend(), [](uint64_t c) { return c != 0; });
  for (auto it = first; it != last.base(); ++it) {
    auto k = static_cast<uint32_t>(it - rows.begin());
    uint64_t low = k == 0 ? 0 : uint64_t{1} << k;
    uint64_t high = k == 63 ? ~uint64_t{0} : (uint64_t{2} << k) - 1;
    out.push_back({low, high, *it});
  }
  return out;
}

}  // namespace usprobe::cli
