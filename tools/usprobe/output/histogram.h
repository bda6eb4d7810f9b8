// Latency histograms as the CLI keeps them: the agent's log-linear buckets (protocol/protocol.h,
// "Latency mode") summed over threads, and what is read from them: the mean, percentiles, and the
// log2 rows that the text report draws.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace usprobe::cli {

struct Histogram {
  uint64_t count = 0;   // calls timed
  uint64_t sum_ns = 0;  // their total duration
  // By agent::latency_bucket(ns): kLatencyBuckets entries, or none while nothing was added.
  std::vector<uint64_t> buckets;

  // Adds `n` calls of `ns` each (tests, and the CLI's own bookkeeping).
  void record(uint64_t ns, uint64_t n = 1);
  void add(const Histogram &other);
  uint64_t bucket(uint32_t i) const { return i < buckets.size() ? buckets[i] : 0; }
  bool operator==(const Histogram &) const = default;
};

// now - before, bucket by bucket: the calls of one interval (totals only grow).
Histogram subtract(const Histogram &now, const Histogram &before);

// The mean duration in ns; nullopt for an empty histogram.
std::optional<double> mean_ns(const Histogram &h);

// The q-quantile (0 < q <= 1) in ns, estimated from the buckets: the bucket that holds the call of
// rank ceil(q * n), interpolated linearly inside it (a bucket is at most 12.5% of its lower bound
// wide, so the estimate is within that of the truth). When every call is in one bucket, the
// mean (exact, and inside that bucket) is the estimate of every quantile. nullopt for an empty
// histogram. The rank counts the buckets' own total, which in a live snapshot may differ from
// `count` by the calls being recorded at that moment.
std::optional<double> percentile(const Histogram &h, double q);

// One row of a log2 table: values low..high (inclusive) of the report's unit.
struct Log2Row {
  uint64_t low = 0, high = 0;
  uint64_t count = 0;
  bool operator==(const Log2Row &) const = default;
};

// The log2 rows, in units of `unit_ns` nanoseconds (1, 1000 or 1000000), from the first non-empty
// one to the last, as BCC prints them: row 0 is 0 -> 1, row k (k >= 1) 2^k -> 2^(k+1) - 1. In
// nanoseconds the rows are exact (a bucket lies inside one power of two). In larger units a bucket
// can straddle two rows: it is counted in the row of its midpoint. Empty for an empty histogram.
std::vector<Log2Row> log2_rows(const Histogram &h, uint64_t unit_ns = 1);

}  // namespace usprobe::cli
