// `usprobe run`: the values of a bpftrace program as the CLI holds them once it has merged what
// every thread of the command recorded. The printer (bt/print.h) turns them into bpftrace's text
// and NDJSON; the rest of `run` fills them from the shared region.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace usprobe::bt {

// A value a key part or a plain map value can hold. An integer carries its signedness, which
// decides how bpftrace prints it (-1 or 18446744073709551615). A stack is already symbolized: one
// line per frame, as bpftrace prints `ustack` ("func+off" or the address in hex), innermost first.
struct Int {
  uint64_t bits = 0;
  bool is_signed = true;
  friend bool operator==(const Int &, const Int &) = default;
};
struct Str {
  std::string text;
  friend bool operator==(const Str &, const Str &) = default;
};
struct Stack {
  std::vector<std::string> frames;
  friend bool operator==(const Stack &, const Stack &) = default;
};
// usym(addr): "func+off" or, unknown, the address as bpftrace shows it (0x hex). Printed as a
// string; kept apart from Str only to document where it came from.
struct Sym {
  std::string text;
  friend bool operator==(const Sym &, const Sym &) = default;
};
using Scalar = std::variant<Int, Str, Stack, Sym>;

// What a map's value is: a plain value assigned with `=`, or an aggregation.
enum class ValueKind { kScalar, kCount, kSum, kAvg, kMin, kMax, kStats, kHist, kLhist };

// Aggregations, merged over threads: count/sum/min/max are one number, avg and stats a count and
// a total (bpftrace prints avg as total / count, rounded toward zero, in integer arithmetic).
struct Stats {
  uint64_t count = 0;
  int64_t total = 0;
  friend bool operator==(const Stats &, const Stats &) = default;
};
// hist(): bpftrace's power-of-two buckets. buckets[0] counts negative values, buckets[1] zero,
// buckets[2] 1, and buckets[k] for 3 <= k <= 32 the values in [2^(k-2), 2^(k-1)) (so 2..3, 4..7,
// ...). bpftrace 0.17 takes the log2 over 32 bits (shifts of 16, 8, 4, 2 and 1), so bucket 33,
// which it labels [2G, 4G), counts every value from 2^31 up: hist(1 << 40) prints [2G, 4G) 1.
// usprobe does the same, so that its histograms equal bpftrace's; buckets 34..65 stay empty
// (room for a 64-bit log2 without a change of layout).
//
// lhist(v, min, max, step): buckets[0] counts v < min, buckets[i] for 1 <= i <= (max - min) / step
// the values in [min + (i-1)*step, min + i*step), and the last counts v >= max.
struct Hist {
  std::vector<uint64_t> buckets;
  friend bool operator==(const Hist &, const Hist &) = default;
};
struct Lhist {
  int64_t min = 0, max = 0, step = 1;
  std::vector<uint64_t> buckets;  // (max - min) / step + 2
  friend bool operator==(const Lhist &, const Lhist &) = default;
};
using Value = std::variant<Scalar, int64_t /* count sum min max */, Stats, Hist, Lhist>;

inline constexpr size_t kHistBuckets = 66;
// The last bucket bpftrace 0.17's hist() fills: [2G, 4G), and everything above (see Hist).
inline constexpr size_t kHistLastBucket = 33;

// The bucket of a hist() value (see Hist).
constexpr size_t hist_bucket(int64_t v) {
  if (v < 0) return 0;
  if (v == 0) return 1;
  size_t log2 = static_cast<size_t>(63 - __builtin_clzll(static_cast<uint64_t>(v)));
  return 2 + (log2 < kHistLastBucket - 2 ? log2 : kHistLastBucket - 2);
}
static_assert(hist_bucket(1) == 2 && hist_bucket(2) == 3 && hist_bucket(3) == 3 &&
              hist_bucket(4) == 4 && hist_bucket((int64_t{1} << 31) - 1) == 32 &&
              hist_bucket(int64_t{1} << 31) == kHistLastBucket &&
              hist_bucket(INT64_MAX) == kHistLastBucket && kHistLastBucket < kHistBuckets);

// One map: its name as written ("@", "@bytes"), what its values are, and its entries. A map
// without keys (`@x = count()`) has one entry whose key is empty. Keys with several parts
// (`@m[pid, comm]`) list them in order.
struct MapEntry {
  std::vector<Scalar> key;
  Value value;
};
struct Map {
  std::string name;
  ValueKind kind = ValueKind::kScalar;
  bool is_signed = true;  // sum, min, max, avg, stats: of signed values (as bpftrace types them)
  std::vector<MapEntry> entries;
};

}  // namespace usprobe::bt
