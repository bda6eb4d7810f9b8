// usprobe latency's arithmetic and reports: the log-linear buckets the agent fills
// (protocol/protocol.h), the percentiles and log2 rows the CLI reads from them (histogram.h), the
// text and JSON it prints (latency_report.h), and the region's folding of the histograms of
// threads that have exited (region.h), with the test playing the agent.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "output/histogram.h"
#include "output/latency_report.h"
#include "protocol/protocol.h"
#include "session/region.h"

namespace usprobe::cli {
namespace {

using namespace usprobe::agent;

TEST(LatencyBuckets, EveryValueLandsInTheBucketWhoseBoundsHoldIt) {
  std::vector<uint64_t> values;
  for (uint64_t v = 0; v < 4096; ++v) values.push_back(v);
  for (unsigned bit = 0; bit < 64; ++bit) {
    uint64_t p = uint64_t{1} << bit;
    values.insert(values.end(), {p - 1, p, p + 1, p + p / 3, p | (p - 1)});
  }
  std::mt19937_64 rng(42);
  for (int i = 0; i < 100000; ++i) values.push_back(rng() >> (rng() % 64));
  for (uint64_t v : values) {
    uint32_t b = latency_bucket(v);
    ASSERT_LT(b, kLatencyBuckets) << v;
    ASSERT_LE(latency_bucket_low(b), v) << v;
    ASSERT_GE(latency_bucket_high(b), v) << v;
  }
}

TEST(LatencyBuckets, BucketsTileTheRangeAndAreAtMostAnEighthOfTheirLowWide) {
  EXPECT_EQ(latency_bucket_low(0), 0u);
  EXPECT_EQ(latency_bucket_high(kLatencyBuckets - 1), ~uint64_t{0});
  for (uint32_t i = 0; i + 1 < kLatencyBuckets; ++i) {
    ASSERT_EQ(latency_bucket_high(i) + 1, latency_bucket_low(i + 1)) << i;
    ASSERT_EQ(latency_bucket(latency_bucket_low(i)), i);
    ASSERT_EQ(latency_bucket(latency_bucket_high(i)), i);
    uint64_t width = latency_bucket_high(i) - latency_bucket_low(i) + 1;
    if (i >= 16) {
      ASSERT_LE(width * 8, latency_bucket_low(i)) << i;
    }
    // Inside one power of two: the log2 table is exact.
    if (latency_bucket_low(i) >= 2) {
      ASSERT_EQ(std::bit_floor(latency_bucket_low(i)), std::bit_floor(latency_bucket_high(i))) << i;
    }
  }
}

TEST(LatencyBuckets, ThreeMillisecondsIsAnEighthOfTheTwoToTheTwentyOneBucket) {
  uint32_t b = latency_bucket(3'000'000);
  EXPECT_EQ(latency_bucket_low(b), (uint64_t{8} + 3) << 18);         // 2,883,584
  EXPECT_EQ(latency_bucket_high(b), ((uint64_t{8} + 4) << 18) - 1);  // 3,145,727
}

TEST(LatencyHistogram, CallsAllInOneBucketAreEstimatedByTheirMean) {
  Histogram h;
  h.record(3'061'000, 10);
  h.record(3'071'000, 10);
  EXPECT_DOUBLE_EQ(*mean_ns(h), 3'066'000.0);
  EXPECT_DOUBLE_EQ(*percentile(h, 0.5), 3'066'000.0);
  EXPECT_DOUBLE_EQ(*percentile(h, 0.99), 3'066'000.0);
  // One call elsewhere: interpolation inside the bucket, which still holds the median.
  h.record(9'000'000);
  EXPECT_GE(*percentile(h, 0.5), 2'883'584.0);
  EXPECT_LT(*percentile(h, 0.5), 3'145'728.0);
  EXPECT_LE(*percentile(h, 0.5), *percentile(h, 0.9));
  // Small values have a bucket each: exact.
  Histogram small;
  small.record(7, 3);
  EXPECT_DOUBLE_EQ(*percentile(small, 0.99), 7.0);
}

TEST(LatencyHistogram, PercentilesAreWithinTheBucketWidthOfTheTruth) {
  std::mt19937_64 rng(7);
  std::lognormal_distribution<double> dist(10.0, 1.5);  // around 22 us, long tail
  std::vector<uint64_t> values;
  Histogram h;
  for (int i = 0; i < 20000; ++i) {
    auto v = static_cast<uint64_t>(dist(rng));
    values.push_back(v);
    h.record(v);
  }
  std::sort(values.begin(), values.end());
  for (double q : {0.5, 0.9, 0.99, 0.999}) {
    auto truth = static_cast<double>(values[static_cast<size_t>(std::ceil(q * 20000)) - 1]);
    ASSERT_TRUE(percentile(h, q));
    EXPECT_NEAR(*percentile(h, q), truth, truth * 0.125) << "q " << q;
  }
}

TEST(LatencyHistogram, EmptyHasNoMeanOrPercentile) {
  Histogram h;
  EXPECT_FALSE(mean_ns(h));
  EXPECT_FALSE(percentile(h, 0.5));
  EXPECT_TRUE(log2_rows(h).empty());
}

TEST(LatencyHistogram, SubtractGivesTheCallsOfAnInterval) {
  Histogram before, now;
  before.record(100, 2);
  now = before;
  now.record(5000, 3);
  Histogram d = subtract(now, before);
  EXPECT_EQ(d.count, 3u);
  EXPECT_EQ(d.sum_ns, 15000u);
  EXPECT_EQ(d.bucket(latency_bucket(100)), 0u);
  EXPECT_EQ(d.bucket(latency_bucket(5000)), 3u);
}

TEST(LatencyHistogram, Log2RowsSpanTheNonEmptyRowsOnly) {
  Histogram h;
  h.record(300, 3);   // row 256 -> 511
  h.record(1500, 1);  // row 1024 -> 2047; 512 -> 1023 is empty but inside the span
  EXPECT_EQ(log2_rows(h), (std::vector<Log2Row>{{256, 511, 3}, {512, 1023, 0}, {1024, 2047, 1}}));
  Histogram tiny;
  tiny.record(0);
  tiny.record(1);
  tiny.record(2);
  EXPECT_EQ(log2_rows(tiny), (std::vector<Log2Row>{{0, 1, 2}, {2, 3, 1}}));
}

TEST(LatencyHistogram, Log2RowsInMillisecondsCountABucketWhereItsMiddleIs) {
  Histogram h;
  h.record(3'050'000, 10);  // 3 ms
  h.record(900'000, 1);     // 0 ms
  EXPECT_EQ(log2_rows(h, 1'000'000), (std::vector<Log2Row>{{0, 1, 1}, {2, 3, 10}}));
}

TEST(LatencyReport, TextDrawsTheTableThenTheSummary) {
  LatencyRow row{"exe:parse", {}, 0};
  row.histogram.record(300, 2);
  row.histogram.record(700, 4);
  EXPECT_EQ(latency_text(row, Unit::kNs),
            "exe:parse\n"
            "     nsecs               : count    distribution\n"
            "       256 -> 511        : 2        |********************                    |\n"
            "       512 -> 1023       : 4        |****************************************|\n"
            // p50: rank 3 of 6, the first of the four in [640, 704): 640 + 64 * 0.5 / 4.
            "count 6, avg 567 ns, p50 648 ns, p99 696 ns\n");
}

TEST(LatencyReport, TextSummaryHasUnitsAndMissedWhenNonzero) {
  LatencyRow row{"libc:read", {}, 3};
  row.histogram.record(2'000'000, 1);
  std::string text = latency_text(row, Unit::kUs);
  EXPECT_NE(text.find("     usecs               : count    distribution\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("      1024 -> 2047       : 1        |"), std::string::npos) << text;
  EXPECT_NE(text.find("count 1, avg 2000.000 us, p50 "), std::string::npos) << text;
  EXPECT_TRUE(text.ends_with(" us, missed 3\n")) << text;
  LatencyRow idle{"exe:never", {}, 0};
  EXPECT_EQ(latency_text(idle, Unit::kMs), "exe:never\ncount 0\n");
}

TEST(LatencyReport, JsonHasTheFieldsAndTheNonEmptyLog2Buckets) {
  LatencyRow row{"exe:parse", {}, 1};
  row.histogram.record(300, 2);
  row.histogram.record(1500, 2);
  nlohmann::ordered_json j = latency_json(row, "total");
  EXPECT_EQ(j["probe"], "exe:parse");
  EXPECT_EQ(j["type"], "total");
  EXPECT_EQ(j["count"], 4u);
  EXPECT_DOUBLE_EQ(j["avg_ns"].get<double>(), 900.0);
  EXPECT_GE(j["p50_ns"].get<double>(), 256.0);
  EXPECT_LT(j["p50_ns"].get<double>(), 512.0);
  EXPECT_GE(j["p99_ns"].get<double>(), 1024.0);
  EXPECT_EQ(j["missed"], 1u);
  EXPECT_EQ(j["buckets"].dump(),
            R"([{"low_ns":256,"high_ns":511,"count":2},{"low_ns":1024,"high_ns":2047,"count":2}])");
  nlohmann::ordered_json empty = latency_json({"exe:never", {}, 0}, "interval");
  EXPECT_TRUE(empty["avg_ns"].is_null());
  EXPECT_TRUE(empty["p50_ns"].is_null());
  EXPECT_TRUE(empty["buckets"].empty());
}

// The agent's side of a latency slot, as handlers.cc writes it.
void time_call(Header *h, SlotHeader *s, uint32_t probe, uint64_t ns) {
  slot_returns(s, h->probe_count)[probe] += 1;
  LatencyHistogram &hist = slot_histograms(s, h->hist_offset)[probe];
  hist.sum_ns += ns;
  hist.buckets[latency_bucket(ns)] += 1;
}

SlotHeader *claim(Header *h, uint32_t index, int32_t pid, int32_t tid) {
  SlotHeader *s = slot_at(h, index);
  s->state = kSlotOwned;
  s->pid = pid;
  s->tid = tid;
  return s;
}

TEST(LatencyRegion, HeaderDescribesTheHistogramsAndTheRate) {
  RegionConfig config;
  config.mode = kModeLatency;
  config.max_slots = 4;
  config.tsc_to_ns_mult = tsc_to_ns_mult(2.5);
  auto region = Region::create(config, {{"/bin/a:f", 0}, {"/bin/a:g", 0}});
  ASSERT_TRUE(region) << region.error().message;
  Header *h = region->header();
  EXPECT_EQ(h->mode, kModeLatency);
  EXPECT_EQ(h->ring_size, 0u);
  EXPECT_EQ(h->hist_offset % 64, 0u);
  EXPECT_GE(h->hist_offset, latency_counters_end(2));
  EXPECT_LE(h->hist_offset + 2 * sizeof(LatencyHistogram), h->ring_offset);
  EXPECT_EQ(h->slot_stride, latency_stride_for(2));
  // 2.5 ticks per ns: 1000 ticks are 400 ns.
  EXPECT_NEAR(static_cast<double>((1000 * h->tsc_to_ns_mult) >> kTscShift), 400.0, 1.0);
  // The refusals name their field (the configuration above is accepted).
  config.tsc_to_ns_mult = 0;
  auto no_rate = Region::create(config, {{"/bin/a:f", 0}});
  ASSERT_FALSE(no_rate);
  EXPECT_EQ(no_rate.error().message,
            "bad region configuration: tsc_to_ns_mult 0 (latency mode needs the TSC rate)");
  config.tsc_to_ns_mult = tsc_to_ns_mult(2.5);
  config.ring_size = 4096;
  auto ring = Region::create(config, {{"/bin/a:f", 0}});
  ASSERT_FALSE(ring);
  EXPECT_EQ(ring.error().message,
            "bad region configuration: ring_size 4096 (latency mode has no ring)");
}

TEST(LatencyRegion, ReclaimFoldsTheHistogramsOfExitedThreads) {
  RegionConfig config;
  config.mode = kModeLatency;
  config.max_slots = 4;
  config.tsc_to_ns_mult = uint64_t{1} << kTscShift;
  auto region = Region::create(config, {{"/bin/a:f", 0}, {"/bin/a:g", 0}});
  ASSERT_TRUE(region) << region.error().message;
  Header *h = region->header();
  SlotHeader *dead = claim(h, 0, 100, 101), *live = claim(h, 1, 100, 100);
  time_call(h, dead, 0, 3'000'000);
  time_call(h, dead, 0, 3'000'000);
  time_call(h, live, 0, 500);
  time_call(h, slot_at(h, 3), 1, 40);  // the overflow slot
  TraceBatch no_events;
  region->reclaim(no_events, [](int32_t, int32_t tid) { return tid != 101; });
  EXPECT_EQ(dead->state.load(), kSlotFree);
  EXPECT_EQ(slot_returns(dead, 2)[0].load(), 0u);
  EXPECT_EQ(slot_histograms(dead, h->hist_offset)[0].sum_ns.load(), 0u);
  EXPECT_EQ(slot_histograms(dead, h->hist_offset)[0].buckets[latency_bucket(3'000'000)].load(), 0u);

  // The freed slot serves another thread; the folded histogram stays.
  SlotHeader *next = claim(h, 0, 300, 300);
  time_call(h, next, 0, 3'000'000);
  std::vector<Histogram> all = region->histograms();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].count, 4u);
  EXPECT_EQ(all[0].sum_ns, 9'000'500u);
  EXPECT_EQ(all[0].bucket(latency_bucket(3'000'000)), 3u);
  EXPECT_EQ(all[0].bucket(latency_bucket(500)), 1u);
  EXPECT_EQ(all[1].count, 1u);
  EXPECT_EQ(all[1].bucket(latency_bucket(40)), 1u);
}

}  // namespace
}  // namespace usprobe::cli
