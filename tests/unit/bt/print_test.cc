// The printer of `usprobe run` against what bpftrace v0.17.0 printed. Each expected string is the
// stdout of the bpftrace command in the comment above it, pasted unchanged (run as root; stderr,
// which has only its RLIMIT_MEMLOCK warning, left out). The maps are built as `run` would merge
// them for the same program.
#include "bt/print.h"

#include <gtest/gtest.h>

#include <cstdio>

namespace usprobe::bt {
namespace {

Scalar I(int64_t v) {
  return Int{static_cast<uint64_t>(v), true};
}
Scalar U(uint64_t v) {
  return Int{v, false};
}
Scalar S(std::string text) {
  return Str{std::move(text)};
}
Value N(int64_t v) {
  return Value{v};
}

Hist hist_of(std::initializer_list<int64_t> values) {
  Hist h{std::vector<uint64_t>(kHistBuckets)};
  for (int64_t v : values) ++h.buckets[hist_bucket(v)];
  return h;
}
Lhist lhist_of(int64_t min, int64_t max, int64_t step, std::initializer_list<int64_t> values) {
  Lhist l{min, max, step, std::vector<uint64_t>((max - min) / step + 2)};
  for (int64_t v : values)
    ++l.buckets[v < min ? 0 : v >= max ? l.buckets.size() - 1 : 1 + (v - min) / step];
  return l;
}
Stats stats_of(std::initializer_list<int64_t> values) {
  Stats s;
  for (int64_t v : values) ++s.count, s.total += v;
  return s;
}
Map map(std::string name, ValueKind kind, std::vector<MapEntry> entries, bool is_signed = true) {
  return Map{std::move(name), kind, is_signed, std::move(entries)};
}

std::string text(const fmt::memory_buffer &b) {
  return fmt::to_string(b);
}

// What bpftrace prints for a program that attaches one probe and prints nothing before exit().
std::string exit_text(std::vector<Map> maps) {
  fmt::memory_buffer out;
  out.append(attaching_line(1));
  print_maps_at_exit(out, std::move(maps));
  return text(out);
}
std::string exit_json(std::vector<Map> maps) {
  fmt::memory_buffer out;
  out.append(attached_probes_json(1));
  print_maps_at_exit_json(out, std::move(maps));
  return text(out);
}

// One program's maps, given in no particular order: the printer sorts them.
std::vector<Map> every_kind() {
  return {
      map("@x", ValueKind::kScalar, {{{}, I(5)}}),
      map("@c", ValueKind::kCount, {{{I(2)}, N(2)}, {{I(1)}, N(1)}}, false),
      map("@s", ValueKind::kSum, {{{S("a"), I(5)}, N(-3)}}),
      map("@h", ValueKind::kHist, {{{}, hist_of({5, 0, -1, 1000})}}),
      map("@l", ValueKind::kLhist, {{{}, lhist_of(0, 100, 10, {7})}}),
      map("@st", ValueKind::kStats, {{{}, stats_of({4, 10})}}),
      map("@a", ValueKind::kAvg, {{{}, stats_of({7})}}),
      map("@mn", ValueKind::kMin, {{{}, N(-4)}}),
      map("@mx", ValueKind::kMax, {{{}, N(9)}}),
      map("@str", ValueKind::kScalar, {{{S("k")}, S("v")}}),
  };
}

TEST(BtPrint, AttachingLineSaysProbeOrProbes) {
  EXPECT_EQ(attaching_line(1), "Attaching 1 probe...\n");
  EXPECT_EQ(attaching_line(3), "Attaching 3 probes...\n");
  EXPECT_EQ(attached_probes_json(3),
            "{\"type\": \"attached_probes\", \"data\": {\"probes\": 3}}\n");
}

// bpftrace -e 'BEGIN { @c[1] = count(); @c[2] = count(); @c[2] = count(); @s["a", 5] = sum(-3); @h
// = hist(5); @h = hist(0); @h = hist(-1); @h = hist(1000); @l = lhist(7, 0, 100, 10); @st =
// stats(4); @st = stats(10); @a = avg(7); @mn = min(-4); @mx = max(9); @x = 5; @str["k"] = "v";
// exit(); }'
TEST(BtPrint, ExitPrintsEveryKindOfMapByName) {
  EXPECT_EQ(exit_text(every_kind()), R"bt(Attaching 1 probe...


@a: 7

@c[1]: 1
@c[2]: 2
@h: 
(..., 0)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[0]                    1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[1]                    0 |                                                    |
[2, 4)                 0 |                                                    |
[4, 8)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[8, 16)                0 |                                                    |
[16, 32)               0 |                                                    |
[32, 64)               0 |                                                    |
[64, 128)              0 |                                                    |
[128, 256)             0 |                                                    |
[256, 512)             0 |                                                    |
[512, 1K)              1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@l: 
[0, 10)                1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@mn: -4
@mx: 9
@s[a, 5]: -3
@st: count 2, average 7, total 14

@str[k]: v
@x: 5
)bt");
}

// bpftrace -f json -e 'BEGIN { @c[1] = count(); @c[2] = count(); @c[2] = count(); @s["a", 5] =
// sum(-3); @h = hist(5); @h = hist(0); @h = hist(-1); @h = hist(1000); @l = lhist(7, 0, 100, 10);
// @st = stats(4); @st = stats(10); @a = avg(7); @mn = min(-4); @mx = max(9); @x = 5; @str["k"] =
// "v"; exit(); }'
TEST(BtPrint, JsonExitPrintsEveryKindOfMapByName) {
  EXPECT_EQ(exit_json(every_kind()), R"bt({"type": "attached_probes", "data": {"probes": 1}}


{"type": "stats", "data": {"@a": 7}}
{"type": "map", "data": {"@c": {"1": 1, "2": 2}}}
{"type": "hist", "data": {"@h": [{"max": -1, "count": 1}, {"min": 0, "max": 0, "count": 1}, {"min": 1, "max": 1, "count": 0}, {"min": 2, "max": 3, "count": 0}, {"min": 4, "max": 7, "count": 1}, {"min": 8, "max": 15, "count": 0}, {"min": 16, "max": 31, "count": 0}, {"min": 32, "max": 63, "count": 0}, {"min": 64, "max": 127, "count": 0}, {"min": 128, "max": 255, "count": 0}, {"min": 256, "max": 511, "count": 0}, {"min": 512, "max": 1023, "count": 1}]}}
{"type": "hist", "data": {"@l": [{"min": 0, "max": 9, "count": 1}]}}
{"type": "map", "data": {"@mn": -4}}
{"type": "map", "data": {"@mx": 9}}
{"type": "map", "data": {"@s": {"a,5": -3}}}
{"type": "stats", "data": {"@st": {"count": 2, "average": 7, "total": 14}}}
{"type": "map", "data": {"@str": {"k": "v"}}}
{"type": "map", "data": {"@x": 5}}
)bt");
}

// bpftrace -e 'BEGIN { @h = hist(1000); @h2 = hist(1000000); @h2 = hist(3000000000); @h2 = hist(1);
// exit(); }'
TEST(BtPrint, HistLabelsUseKMGAndKeepInteriorEmptyBuckets) {
  EXPECT_EQ(exit_text({map("@h2", ValueKind::kHist, {{{}, hist_of({1000000, 3000000000, 1})}}),
                       map("@h", ValueKind::kHist, {{{}, hist_of({1000})}})}),
            R"bt(Attaching 1 probe...


@h: 
[512, 1K)              1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@h2: 
[1]                    1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[2, 4)                 0 |                                                    |
[4, 8)                 0 |                                                    |
[8, 16)                0 |                                                    |
[16, 32)               0 |                                                    |
[32, 64)               0 |                                                    |
[64, 128)              0 |                                                    |
[128, 256)             0 |                                                    |
[256, 512)             0 |                                                    |
[512, 1K)              0 |                                                    |
[1K, 2K)               0 |                                                    |
[2K, 4K)               0 |                                                    |
[4K, 8K)               0 |                                                    |
[8K, 16K)              0 |                                                    |
[16K, 32K)             0 |                                                    |
[32K, 64K)             0 |                                                    |
[64K, 128K)            0 |                                                    |
[128K, 256K)           0 |                                                    |
[256K, 512K)           0 |                                                    |
[512K, 1M)             1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[1M, 2M)               0 |                                                    |
[2M, 4M)               0 |                                                    |
[4M, 8M)               0 |                                                    |
[8M, 16M)              0 |                                                    |
[16M, 32M)             0 |                                                    |
[32M, 64M)             0 |                                                    |
[64M, 128M)            0 |                                                    |
[128M, 256M)           0 |                                                    |
[256M, 512M)           0 |                                                    |
[512M, 1G)             0 |                                                    |
[1G, 2G)               0 |                                                    |
[2G, 4G)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

)bt");
}

// bpftrace -e 'BEGIN { @h = hist(1); @h = hist(2); @h = hist(2); @h = hist(4); @h = hist(4); @h =
// hist(4); @h = hist(8); @h = hist(8); @h = hist(8); @h = hist(8); @h = hist(8); @h = hist(8); @h =
// hist(8); @h = hist(16); @h = hist(16); @h = hist(16); @h = hist(16); @h = hist(16); exit(); }'
TEST(BtPrint, HistBarsScaleToTheLargestBucketAndTruncate) {
  EXPECT_EQ(exit_text({map(
                "@h", ValueKind::kHist,
                {{{}, hist_of({1, 2, 2, 4, 4, 4, 8, 8, 8, 8, 8, 8, 8, 16, 16, 16, 16, 16})}})}),
            R"bt(Attaching 1 probe...


@h: 
[1]                    1 |@@@@@@@                                             |
[2, 4)                 2 |@@@@@@@@@@@@@@                                      |
[4, 8)                 3 |@@@@@@@@@@@@@@@@@@@@@@                              |
[8, 16)                7 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[16, 32)               5 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@               |

)bt");
}

// bpftrace 0.17 puts every value from 2^31 up into [2G, 4G) (value.h's hist_bucket does too), and
// its json gives that bucket the bounds of a 32-bit shift.
// bpftrace -e 'BEGIN { @h = hist(2147483647); @h = hist(2147483648); @h = hist(4294967296); @h =
// hist(1073741824); @g = hist(4294967295); exit(); }'
TEST(BtPrint, HistValuesFrom2GUpShareTheLastBucket) {
  std::vector<Map> maps = {map("@h", ValueKind::kHist,
                               {{{}, hist_of({2147483647, 2147483648, 4294967296, 1073741824})}}),
                           map("@g", ValueKind::kHist, {{{}, hist_of({4294967295})}})};
  EXPECT_EQ(exit_text(maps), R"bt(Attaching 1 probe...


@g: 
[2G, 4G)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@h: 
[1G, 2G)               2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[2G, 4G)               2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

)bt");
  // bpftrace -f json -e 'BEGIN { @h = hist(2147483647); @h = hist(2147483648); @h =
  // hist(4294967296);
  // @h = hist(1073741824); @g = hist(4294967295); exit(); }'
  EXPECT_EQ(exit_json(maps), R"bt({"type": "attached_probes", "data": {"probes": 1}}


{"type": "hist", "data": {"@g": [{"min": -2147483648, "max": 0, "count": 1}]}}
{"type": "hist", "data": {"@h": [{"min": 1073741824, "max": 2147483647, "count": 2}, {"min": -2147483648, "max": 0, "count": 2}]}}
)bt");
}

// bpftrace -e 'BEGIN { @l = lhist(0, 0, 4096, 1024); @l = lhist(5000, 0, 4096, 1024); @l =
// lhist(2048, 0, 4096, 1024); @n = lhist(3000000, 0, 3145728, 1048576); @n = lhist(-1, 0, 3145728,
// 1048576); exit(); }'
TEST(BtPrint, LhistLabelsBelowMinAboveMaxAndKM) {
  std::vector<Map> maps = {
      map("@n", ValueKind::kLhist, {{{}, lhist_of(0, 3145728, 1048576, {3000000, -1})}}),
      map("@l", ValueKind::kLhist, {{{}, lhist_of(0, 4096, 1024, {0, 5000, 2048})}})};
  EXPECT_EQ(exit_text(maps), R"bt(Attaching 1 probe...


@l: 
[0, 1K)                1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[1K, 2K)               0 |                                                    |
[2K, 3K)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[3K, 4K)               0 |                                                    |
[4K, ...)              1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@n: 
(..., 0)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[0, 1M)                0 |                                                    |
[1M, 2M)               0 |                                                    |
[2M, 3M)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

)bt");
  // bpftrace -f json -e 'BEGIN { @l = lhist(0, 0, 4096, 1024); @l = lhist(5000, 0, 4096, 1024); @l
  // = lhist(2048, 0, 4096, 1024); @n = lhist(3000000, 0, 3145728, 1048576); @n = lhist(-1, 0,
  // 3145728, 1048576); exit(); }'
  EXPECT_EQ(exit_json(maps), R"bt({"type": "attached_probes", "data": {"probes": 1}}


{"type": "hist", "data": {"@l": [{"min": 0, "max": 1023, "count": 1}, {"min": 1024, "max": 2047, "count": 0}, {"min": 2048, "max": 3071, "count": 1}, {"min": 3072, "max": 4095, "count": 0}, {"min": 4096, "count": 1}]}}
{"type": "hist", "data": {"@n": [{"max": -1, "count": 1}, {"min": 0, "max": 1048575, "count": 0}, {"min": 1048576, "max": 2097151, "count": 0}, {"min": 2097152, "max": 3145727, "count": 1}]}}
)bt");
}

// Keyed histograms sort by the total of their buckets, and each key is followed by a blank line.
// bpftrace -e 'BEGIN { @h["b"] = hist(1); @h["b"] = hist(1); @h["a"] = hist(4); @h["c"] =
// hist(100); @h["c"] = hist(100); @h["c"] = hist(100); @l[1] = lhist(5, 0, 10, 1); @l[1] = lhist(5,
// 0, 10, 1); @l[2] = lhist(-5, 0, 10, 1); @l[3] = lhist(50, 0, 10, 1); @l[3] = lhist(50, 0, 10, 1);
// @l[3] = lhist(50, 0, 10, 1); exit(); }'
TEST(BtPrint, KeyedHistsSortByTotalCount) {
  std::vector<Map> maps = {map("@h", ValueKind::kHist,
                               {{{S("b")}, hist_of({1, 1})},
                                {{S("a")}, hist_of({4})},
                                {{S("c")}, hist_of({100, 100, 100})}}),
                           map("@l", ValueKind::kLhist,
                               {{{I(1)}, lhist_of(0, 10, 1, {5, 5})},
                                {{I(2)}, lhist_of(0, 10, 1, {-5})},
                                {{I(3)}, lhist_of(0, 10, 1, {50, 50, 50})}})};
  EXPECT_EQ(exit_text(maps), R"bt(Attaching 1 probe...


@h[a]: 
[4, 8)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@h[b]: 
[1]                    2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@h[c]: 
[64, 128)              3 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@l[2]: 
(..., 0)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@l[1]: 
[5, 6)                 2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@l[3]: 
[10, ...)              3 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

)bt");
  // bpftrace -f json -e 'BEGIN { @h["b"] = hist(1); @h["b"] = hist(1); @h["a"] = hist(4); @h["c"] =
  // hist(100); @h["c"] = hist(100); @h["c"] = hist(100); @l[1] = lhist(5, 0, 10, 1); @l[1] =
  // lhist(5, 0, 10, 1); @l[2] = lhist(-5, 0, 10, 1); @l[3] = lhist(50, 0, 10, 1); @l[3] = lhist(50,
  // 0, 10, 1);
  // @l[3] = lhist(50, 0, 10, 1); exit(); }'
  EXPECT_EQ(exit_json(maps), R"bt({"type": "attached_probes", "data": {"probes": 1}}


{"type": "hist", "data": {"@h": {"a": [{"min": 4, "max": 7, "count": 1}], "b": [{"min": 1, "max": 1, "count": 2}], "c": [{"min": 64, "max": 127, "count": 3}]}}}
{"type": "hist", "data": {"@l": {"2": [{"max": -1, "count": 1}], "1": [{"min": 5, "max": 5, "count": 2}], "3": [{"min": 10, "count": 3}]}}}
)bt");
}

// Plain integer values sort by value; string values by key: integers as unsigned 64 bits (-1
// last), strings bytewise, the first part first. (In this run bpftrace printed the tie
// @m[-1]: 7, @m[2]: 7 in its hash table's order; in another run it printed @m[2] first. usprobe
// breaks ties by key: @m[2] first.)
// bpftrace -e 'BEGIN { @m[3] = 10; @m[1] = -5; @m[2] = 7; @m[-1] = 7; @v["b"] = "x"; @v["a"] = "z";
// @v["c"] = "a"; @w[-1] = "a"; @w[3] = "b"; @w[1] = "c"; @w[-7] = "d"; @v2[5, "b"] = "x"; @v2[5,
// "a"] = "x"; @v2[-2, "c"] = "x"; @v2[10, "a"] = "x"; @v2[5, "ab"] = "x"; @v3["b", 2] = "x";
// @v3["b", 1] = "x"; @v3["a", 9] = "x"; @v3["ab", 0] = "x"; exit(); }'
TEST(BtPrint, PlainValuesSortByValueAndStringsByKey) {
  std::string expected = R"bt(Attaching 1 probe...


@m[1]: -5
@m[-1]: 7
@m[2]: 7
@m[3]: 10
@v[a]: z
@v[b]: x
@v[c]: a
@v2[5, a]: x
@v2[5, ab]: x
@v2[5, b]: x
@v2[10, a]: x
@v2[-2, c]: x
@v3[a, 9]: x
@v3[ab, 0]: x
@v3[b, 1]: x
@v3[b, 2]: x
@w[1]: c
@w[3]: b
@w[-7]: d
@w[-1]: a
)bt";
  // The tie, in usprobe's order.
  const std::string_view bpftrace_tie = "@m[-1]: 7\n@m[2]: 7\n";
  expected.replace(expected.find(bpftrace_tie), bpftrace_tie.size(), "@m[2]: 7\n@m[-1]: 7\n");
  EXPECT_EQ(exit_text({
                map("@m", ValueKind::kScalar,
                    {{{I(3)}, I(10)}, {{I(1)}, I(-5)}, {{I(2)}, I(7)}, {{I(-1)}, I(7)}}),
                map("@v", ValueKind::kScalar,
                    {{{S("b")}, S("x")}, {{S("a")}, S("z")}, {{S("c")}, S("a")}}),
                map("@w", ValueKind::kScalar,
                    {{{I(-1)}, S("a")}, {{I(3)}, S("b")}, {{I(1)}, S("c")}, {{I(-7)}, S("d")}}),
                map("@v2", ValueKind::kScalar,
                    {{{I(5), S("b")}, S("x")},
                     {{I(5), S("a")}, S("x")},
                     {{I(-2), S("c")}, S("x")},
                     {{I(10), S("a")}, S("x")},
                     {{I(5), S("ab")}, S("x")}}),
                map("@v3", ValueKind::kScalar,
                    {{{S("b"), I(2)}, S("x")},
                     {{S("b"), I(1)}, S("x")},
                     {{S("a"), I(9)}, S("x")},
                     {{S("ab"), I(0)}, S("x")}}),
            }),
            expected);
}

// (bpftrace 0.17 drops @ma[2] = max(-3): a new key's max starts at 0. That is for the recorder to
// copy or not; the printer prints what it is given.)
std::vector<Map> aggregations_with_negatives() {
  return {
      map("@su", ValueKind::kSum, {{{I(1)}, N(-5)}, {{I(2)}, N(3)}, {{I(3)}, N(-10)}}),
      map("@mi", ValueKind::kMin, {{{I(1)}, N(5)}, {{I(2)}, N(-3)}, {{I(3)}, N(1)}}),
      map("@ma", ValueKind::kMax, {{{I(1)}, N(5)}, {{I(3)}, N(1)}}),
      map("@av", ValueKind::kAvg,
          {{{I(1)}, stats_of({10})}, {{I(2)}, stats_of({-7, 0})}, {{I(3)}, stats_of({3})}}),
      map("@st", ValueKind::kStats,
          {{{I(1)}, stats_of({100})}, {{I(2)}, stats_of({-7, 0})}, {{I(3)}, stats_of({3, 3, 3})}}),
  };
}

// Sums, mins and maxes sort by signed value; avg and stats by average, which rounds toward zero
// (-7 / 2 is -3); avg and stats maps end with a blank line.
// bpftrace -e 'BEGIN { @su[1] = sum(-5); @su[2] = sum(3); @su[3] = sum(-10); @mi[1] = min(5);
// @mi[2] = min(-3); @mi[3] = min(1); @ma[1] = max(5); @ma[3] = max(1); @av[1] = avg(10); @av[2] =
// avg(-7); @av[2] = avg(0); @av[3] = avg(3); @st[1] = stats(100); @st[2] = stats(-7); @st[2] =
// stats(0); @st[3] = stats(3); @st[3] = stats(3); @st[3] = stats(3); exit(); }'
TEST(BtPrint, AggregationsWithNegatives) {
  EXPECT_EQ(exit_text(aggregations_with_negatives()), R"bt(Attaching 1 probe...


@av[2]: -3
@av[3]: 3
@av[1]: 10

@ma[3]: 1
@ma[1]: 5
@mi[2]: -3
@mi[3]: 1
@mi[1]: 5
@st[2]: count 2, average -3, total -7
@st[3]: count 3, average 3, total 9
@st[1]: count 1, average 100, total 100

@su[3]: -10
@su[1]: -5
@su[2]: 3
)bt");
}

// bpftrace -f json -e 'BEGIN { @su[1] = sum(-5); @su[2] = sum(3); @su[3] = sum(-10); @mi[1] =
// min(5); @mi[2] = min(-3); @mi[3] = min(1); @ma[1] = max(5); @ma[3] = max(1); @av[1] = avg(10);
// @av[2] = avg(-7); @av[2] = avg(0); @av[3] = avg(3); @st[1] = stats(100); @st[2] = stats(-7);
// @st[2] = stats(0); @st[3] = stats(3); @st[3] = stats(3); @st[3] = stats(3); exit(); }'
TEST(BtPrint, JsonAggregationsWithNegatives) {
  EXPECT_EQ(exit_json(aggregations_with_negatives()),
            R"bt({"type": "attached_probes", "data": {"probes": 1}}


{"type": "stats", "data": {"@av": {"2": -3, "3": 3, "1": 10}}}
{"type": "map", "data": {"@ma": {"3": 1, "1": 5}}}
{"type": "map", "data": {"@mi": {"2": -3, "3": 1, "1": 5}}}
{"type": "stats", "data": {"@st": {"2": {"count": 2, "average": -3, "total": -7}, "3": {"count": 3, "average": 3, "total": 9}, "1": {"count": 1, "average": 100, "total": 100}}}}
{"type": "map", "data": {"@su": {"3": -10, "1": -5, "2": 3}}}
)bt");
}

// By average, not by total (5, 18, 10) or count (5, 3, 1).
// bpftrace -e 'BEGIN { @st[1] = stats(10); @st[2] = stats(6); @st[2] = stats(6); @st[2] = stats(6);
// @st[3] = stats(1); @st[3] = stats(1); @st[3] = stats(1); @st[3] = stats(1); @st[3] = stats(1);
// @av[1] = avg(10); @av[2] = avg(6); @av[2] = avg(6); @av[2] = avg(6); @av[3] = avg(1); @av[3] =
// avg(1); @av[3] = avg(1); @av[3] = avg(1); @av[3] = avg(1); exit(); }'
TEST(BtPrint, StatsAndAvgSortByAverage) {
  EXPECT_EQ(exit_text({map("@st", ValueKind::kStats,
                           {{{I(1)}, stats_of({10})},
                            {{I(2)}, stats_of({6, 6, 6})},
                            {{I(3)}, stats_of({1, 1, 1, 1, 1})}}),
                       map("@av", ValueKind::kAvg,
                           {{{I(1)}, stats_of({10})},
                            {{I(2)}, stats_of({6, 6, 6})},
                            {{I(3)}, stats_of({1, 1, 1, 1, 1})}})}),
            R"bt(Attaching 1 probe...


@av[3]: 1
@av[2]: 6
@av[1]: 10

@st[3]: count 5, average 1, total 5
@st[2]: count 3, average 6, total 18
@st[1]: count 1, average 10, total 10

)bt");
}

// Values print as their type's signedness says; a 64-bit integer key always as signed.
std::vector<Map> signedness() {
  return {
      map("@neg", ValueKind::kScalar, {{{}, I(-5)}}),
      map("@u", ValueKind::kScalar, {{{U(UINT64_MAX)}, U(UINT64_MAX)}}),
      map("@u32", ValueKind::kScalar, {{{U(UINT32_MAX)}, U(UINT32_MAX)}}),
      map("@i32", ValueKind::kScalar, {{{I(-1)}, I(-1)}}),
      map("@u8", ValueKind::kScalar, {{{}, U(200)}}),
      map("@i8", ValueKind::kScalar, {{{}, I(-3)}}),
      map("@sm", ValueKind::kSum, {{{}, N(-1)}}, /*is_signed=*/false),
      map("@sm2", ValueKind::kSum, {{{}, N(-3)}}),
      map("@ct", ValueKind::kCount, {{{}, N(1)}}, false),
  };
}

// bpftrace -e 'BEGIN { @neg = -5; @u[(uint64)-1] = (uint64)-1; @u32[(uint32)-1] = (uint32)-1;
// @i32[(int32)-1] = (int32)-1; @u8 = (uint8)200; @i8 = (int8)-3; @sm = sum((uint64)-1); @sm2 =
// sum(-3); @ct = count(); exit(); }'
TEST(BtPrint, SignedAndUnsignedValuesAndKeys) {
  EXPECT_EQ(exit_text(signedness()), R"bt(Attaching 1 probe...


@ct: 1
@i32[-1]: -1
@i8: -3
@neg: -5
@sm: 18446744073709551615
@sm2: -3
@u[-1]: 18446744073709551615
@u32[4294967295]: 4294967295
@u8: 200
)bt");
}

// bpftrace -f json -e 'BEGIN { @neg = -5; @u[(uint64)-1] = (uint64)-1; @u32[(uint32)-1] =
// (uint32)-1; @i32[(int32)-1] = (int32)-1; @u8 = (uint8)200; @i8 = (int8)-3; @sm = sum((uint64)-1);
// @sm2 = sum(-3); @ct = count(); @s["a b"] = "c\"d"; exit(); }'
TEST(BtPrint, JsonSignedAndUnsignedValuesAndKeys) {
  std::vector<Map> maps = signedness();
  maps.push_back(map("@s", ValueKind::kScalar, {{{S("a b")}, S("c\"d")}}));
  EXPECT_EQ(exit_json(maps), R"bt({"type": "attached_probes", "data": {"probes": 1}}


{"type": "map", "data": {"@ct": 1}}
{"type": "map", "data": {"@i32": {"-1": -1}}}
{"type": "map", "data": {"@i8": -3}}
{"type": "map", "data": {"@neg": -5}}
{"type": "map", "data": {"@s": {"a b": "c\"d"}}}
{"type": "map", "data": {"@sm": 18446744073709551615}}
{"type": "map", "data": {"@sm2": -3}}
{"type": "map", "data": {"@u": {"-1": 18446744073709551615}}}
{"type": "map", "data": {"@u32": {"4294967295": 4294967295}}}
{"type": "map", "data": {"@u8": 200}}
)bt");
}

// print(@m, top, div): the last `top` in sort order, numbers divided toward zero (-7 / 10 is 0),
// hist counts divided but not their bars; stats ignore both, avg takes both.
std::vector<Map> printed_maps() {
  return {
      map("@c", ValueKind::kSum, {{{I(1)}, N(10)}, {{I(2)}, N(250)}, {{I(3)}, N(-7)}}),
      map("@h", ValueKind::kHist, {{{I(1)}, hist_of({3})}, {{I(2)}, hist_of({3, 3})}}),
      map("@st", ValueKind::kStats, {{{I(1)}, stats_of({3})}, {{I(2)}, stats_of({5})}}),
      map("@a", ValueKind::kAvg, {{{I(1)}, stats_of({30})}, {{I(2)}, stats_of({50})}}),
  };
}

// bpftrace -e 'BEGIN { @c[1] = sum(10); @c[2] = sum(250); @c[3] = sum(-7); print(@c, 2); print(@c,
// 0, 10); print(@c, 5, 100); @h[1] = hist(3); @h[2] = hist(3); @h[2] = hist(3); print(@h, 1);
// print(@h, 1, 2); @st[1] = stats(3); @st[2] = stats(5); print(@st, 1); @a[1] = avg(30); @a[2] =
// avg(50); print(@a, 1, 10); exit(); }'
TEST(BtPrint, PrintWithTopAndDiv) {
  std::vector<Map> maps = printed_maps();
  fmt::memory_buffer out;
  out.append(attaching_line(1));
  print_map(out, maps[0], 2);
  print_map(out, maps[0], 0, 10);
  print_map(out, maps[0], 5, 100);
  print_map(out, maps[1], 1);
  print_map(out, maps[1], 1, 2);
  print_map(out, maps[2], 1);
  print_map(out, maps[3], 1, 10);
  print_maps_at_exit(out, maps);
  EXPECT_EQ(text(out), R"bt(Attaching 1 probe...
@c[1]: 10
@c[2]: 250
@c[3]: 0
@c[1]: 1
@c[2]: 25
@c[3]: 0
@c[1]: 0
@c[2]: 2
@h[2]: 
[2, 4)                 2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@h[2]: 
[2, 4)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@st[1]: count 1, average 3, total 3
@st[2]: count 1, average 5, total 5

@a[2]: 5



@a[1]: 30
@a[2]: 50

@c[3]: -7
@c[1]: 10
@c[2]: 250
@h[1]: 
[2, 4)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@h[2]: 
[2, 4)                 2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|

@st[1]: count 1, average 3, total 3
@st[2]: count 1, average 5, total 5

)bt");
}

// bpftrace -f json -e 'BEGIN { @c[1] = sum(10); @c[2] = sum(250); @c[3] = sum(-7); print(@c, 2);
// print(@c, 0, 10); print(@c, 5, 100); @h[1] = hist(3); @h[2] = hist(3); @h[2] = hist(3); print(@h,
// 1); print(@h, 1, 2); @st[1] = stats(3); @st[2] = stats(5); print(@st, 1); @a[1] = avg(30); @a[2]
// = avg(50); print(@a, 1, 10); exit(); }'
TEST(BtPrint, JsonPrintWithTopAndDiv) {
  std::vector<Map> maps = printed_maps();
  fmt::memory_buffer out;
  out.append(attached_probes_json(1));
  print_map_json(out, maps[0], 2);
  print_map_json(out, maps[0], 0, 10);
  print_map_json(out, maps[0], 5, 100);
  print_map_json(out, maps[1], 1);
  print_map_json(out, maps[1], 1, 2);
  print_map_json(out, maps[2], 1);
  print_map_json(out, maps[3], 1, 10);
  print_maps_at_exit_json(out, maps);
  EXPECT_EQ(text(out), R"bt({"type": "attached_probes", "data": {"probes": 1}}
{"type": "map", "data": {"@c": {"1": 10, "2": 250}}}
{"type": "map", "data": {"@c": {"3": 0, "1": 1, "2": 25}}}
{"type": "map", "data": {"@c": {"3": 0, "1": 0, "2": 2}}}
{"type": "hist", "data": {"@h": {"2": [{"min": 2, "max": 3, "count": 2}]}}}
{"type": "hist", "data": {"@h": {"2": [{"min": 2, "max": 3, "count": 1}]}}}
{"type": "stats", "data": {"@st": {"1": {"count": 1, "average": 3, "total": 3}, "2": {"count": 1, "average": 5, "total": 5}}}}
{"type": "stats", "data": {"@a": {"2": 5}}}


{"type": "stats", "data": {"@a": {"1": 30, "2": 50}}}
{"type": "map", "data": {"@c": {"3": -7, "1": 10, "2": 250}}}
{"type": "hist", "data": {"@h": {"1": [{"min": 2, "max": 3, "count": 1}], "2": [{"min": 2, "max": 3, "count": 2}]}}}
{"type": "stats", "data": {"@st": {"1": {"count": 1, "average": 3, "total": 3}, "2": {"count": 1, "average": 5, "total": 5}}}}
)bt");
}

// lhist ignores div; top applies to string values too; a hist's bars keep the undivided counts
// (3 and 1 divided by 2 print 1 and 0, with the bars of 3 and 1).
// bpftrace -e 'BEGIN { @l = lhist(5, 0, 10, 1); @l = lhist(5, 0, 10, 1); @l = lhist(5, 0, 10, 1);
// @l = lhist(7, 0, 10, 1); print(@l, 0, 2); @v[1] = "a"; @v[2] = "b"; @v[3] = "c"; print(@v, 1);
// @m[1] = 1; @m[2] = 5; @m[3] = 3; print(@m, 2, 2); @h = hist(2); @h = hist(2); @h = hist(2); @h =
// hist(5); print(@h, 0, 2); exit(); }'
TEST(BtPrint, PrintDivLeavesLhistAndHistBarsAlone) {
  std::vector<Map> maps = {
      map("@l", ValueKind::kLhist, {{{}, lhist_of(0, 10, 1, {5, 5, 5, 7})}}),
      map("@v", ValueKind::kScalar, {{{I(1)}, S("a")}, {{I(2)}, S("b")}, {{I(3)}, S("c")}}),
      map("@m", ValueKind::kScalar, {{{I(1)}, I(1)}, {{I(2)}, I(5)}, {{I(3)}, I(3)}}),
      map("@h", ValueKind::kHist, {{{}, hist_of({2, 2, 2, 5})}}),
  };
  fmt::memory_buffer out;
  out.append(attaching_line(1));
  print_map(out, maps[0], 0, 2);
  print_map(out, maps[1], 1);
  print_map(out, maps[2], 2, 2);
  print_map(out, maps[3], 0, 2);
  print_maps_at_exit(out, maps);
  EXPECT_EQ(text(out), R"bt(Attaching 1 probe...
@l: 
[5, 6)                 3 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[6, 7)                 0 |                                                    |
[7, 8)                 1 |@@@@@@@@@@@@@@@@@                                   |

@v[3]: c
@m[3]: 1
@m[2]: 2
@h: 
[2, 4)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[4, 8)                 0 |@@@@@@@@@@@@@@@@@                                   |



@h: 
[2, 4)                 3 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[4, 8)                 1 |@@@@@@@@@@@@@@@@@                                   |

@l: 
[5, 6)                 3 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
[6, 7)                 0 |                                                    |
[7, 8)                 1 |@@@@@@@@@@@@@@@@@                                   |

@m[1]: 1
@m[3]: 3
@m[2]: 5
@v[1]: a
@v[2]: b
@v[3]: c
)bt");
}

// An empty map prints one blank line, two for avg and stats; nothing in json.
std::vector<Map> empty_maps() {
  return {map("@a", ValueKind::kAvg, {}),   map("@c", ValueKind::kHist, {}),
          map("@d", ValueKind::kLhist, {}), map("@e", ValueKind::kCount, {}),
          map("@f", ValueKind::kStats, {}), map("@g", ValueKind::kScalar, {})};
}

// bpftrace -e 'BEGIN { @a[1] = avg(1); clear(@a); @c[1] = hist(1); clear(@c); @d[2] = lhist(1, 0,
// 10, 1); clear(@d); @e[1] = count(); clear(@e); @f[1] = stats(1); clear(@f); @g = 1; delete(@g);
// exit(); }'
TEST(BtPrint, EmptyMapsPrintBlankLines) {
  EXPECT_EQ(exit_text(empty_maps()), R"bt(Attaching 1 probe...










)bt");
}

// bpftrace -f json -e 'BEGIN { @a[1] = avg(1); clear(@a); @c[1] = hist(1); clear(@c); @d[2] =
// lhist(1, 0, 10, 1); clear(@d); @e[1] = count(); clear(@e); @f[1] = stats(1); clear(@f); @g = 1;
// delete(@g); @x = 1; exit(); }'
TEST(BtPrint, JsonLeavesEmptyMapsOut) {
  std::vector<Map> maps = empty_maps();
  maps.push_back(map("@x", ValueKind::kScalar, {{{}, I(1)}}));
  EXPECT_EQ(exit_json(maps), R"bt({"type": "attached_probes", "data": {"probes": 1}}


{"type": "map", "data": {"@x": 1}}
)bt");
}

// A stack as a key: a newline and frames indented by 4; as a value, by 8, and no newline between
// entries (the stack ends in one). usym values print with no newline between entries at all
// (bpftrace 0.17's quirk). Addresses are what bpftrace printed when it could not symbolize.
// bpftrace -e 'uprobe:/tmp/btp/t:bar { @n++; @v[@n] = usym(reg("ip")); @w[@n] = ustack(2);
//   @k[ustack(2), 7] = count(); if (@n == 2) { exit(); } }' -c /tmp/btp/t
// (t: main calls foo twice, foo calls bar; stdout less t's own output.)
TEST(BtPrint, StacksAndUsyms) {
  auto stack = [](std::vector<std::string> frames) { return Stack{std::move(frames)}; };
  std::vector<Map> maps = {
      map("@k", ValueKind::kCount,
          {{{stack({"0x55b7f7cbe139", "0x55b7f7cbe15e"}), I(7)}, N(1)},
           {{stack({"0x55b7f7cbe139", "0x55b7f7cbe16a"}), I(7)}, N(1)}},
          false),
      map("@n", ValueKind::kCount, {{{}, N(2)}}, false),
      map("@v", ValueKind::kScalar,
          {{{I(1)}, Sym{"0x5596c5207159"}}, {{I(2)}, Sym{"0x5596c5207159"}}}),
      map("@w", ValueKind::kScalar,
          {{{I(1)}, stack({"0x5596c5207159", "0x5596c520717e"})},
           {{I(2)}, stack({"0x5596c5207159", "0x5596c520718a"})}}),
  };
  EXPECT_EQ(exit_text(maps), R"bt(Attaching 1 probe...


@k[
    0x55b7f7cbe139
    0x55b7f7cbe15e
, 7]: 1
@k[
    0x55b7f7cbe139
    0x55b7f7cbe16a
, 7]: 1
@n: 2
@v[1]: 0x5596c5207159@v[2]: 0x5596c5207159
@w[1]: 
        0x5596c5207159
        0x5596c520717e
@w[2]: 
        0x5596c5207159
        0x5596c520718a

)bt");
  fmt::memory_buffer out;
  print_map_json(out, maps[0]);
  print_map_json(out, maps[3]);
  EXPECT_EQ(
      text(out),
      "{\"type\": \"map\", \"data\": {\"@k\": {\"\\n    0x55b7f7cbe139\\n    "
      "0x55b7f7cbe15e\\n,7\": "
      "1, \"\\n    0x55b7f7cbe139\\n    0x55b7f7cbe16a\\n,7\": 1}}}\n"
      "{\"type\": \"map\", \"data\": {\"@w\": {\"1\": \"\\n        0x5596c5207159\\n        "
      "0x5596c520717e\\n\", \"2\": \"\\n        0x5596c5207159\\n        0x5596c520718a\\n\"}}}\n");
}

// The same, symbolized: bpftrace prints a frame "func+offset" and a usym the function alone.
// (t built with -no-pie, at -O1, so foo is inlined into main; printed while t ran.)
// bpftrace -e 'uprobe:/tmp/btp/tn:bar { @n++; @w[@n] = ustack(3); @k[ustack(2)] = count();
//   @u[usym(reg("ip"))] = count(); @v[1] = usym(reg("ip")); @v[2] = usym(reg("ip"));
//   if (@n == 2) { print(@k); print(@w); print(@u); print(@v); printf("%s|\n", ustack(2)); } }'
//   -c /tmp/btp/tn
TEST(BtPrint, SymbolizedStacksAndUsymsAsPrintShowsThem) {
  fmt::memory_buffer out;
  print_map(out, map("@k", ValueKind::kCount,
                     {{{Stack{{"bar+0", "main+31"}}}, N(1)}, {{Stack{{"bar+0", "main+19"}}}, N(1)}},
                     false));
  print_map(out, map("@w", ValueKind::kScalar,
                     {{{I(1)}, Stack{{"bar+0", "main+19", "__libc_start_call_main+122"}}},
                      {{I(2)}, Stack{{"bar+0", "main+31", "__libc_start_call_main+122"}}}}));
  print_map(out, map("@u", ValueKind::kCount, {{{Sym{"bar"}}, N(2)}}, false));
  print_map(out, map("@v", ValueKind::kScalar, {{{I(1)}, Sym{"bar"}}, {{I(2)}, Sym{"bar"}}}));
  std::string printed = text(out) + format_printf("%s|\n", {Stack{{"bar+0", "main+31"}}});
  EXPECT_EQ(printed, R"bt(@k[
    bar+0
    main+31
]: 1
@k[
    bar+0
    main+19
]: 1
@w[1]: 
        bar+0
        main+19
        __libc_start_call_main+122
@w[2]: 
        bar+0
        main+31
        __libc_start_call_main+122

@u[bar]: 2
@v[1]: bar@v[2]: bar

        bar+0
        main+31
|
)bt");
}

// bpftrace -e 'BEGIN { @x = 5; print(5); print("s"); exit(); }' (and -f json)
TEST(BtPrint, PrintOfAValue) {
  fmt::memory_buffer out;
  print_value(out, I(5));
  print_value(out, S("s"));
  EXPECT_EQ(text(out), "5\ns\n");
  EXPECT_EQ(value_json(I(5)), "{\"type\": \"value\", \"data\": 5}\n");
  EXPECT_EQ(value_json(S("s")), "{\"type\": \"value\", \"data\": \"s\"}\n");
}

// bpftrace -f json -e 'BEGIN { printf("a\"b\\c\td\r\x01\x1f\x7f|é\n"); @e["é\x02"] = 1; exit(); }'
TEST(BtPrint, JsonEscapesAsBpftraceDoes) {
  std::string printed = format_printf("a\"b\\c\td\r\x01\x1f\x7f|\xc3\xa9\n", {});
  EXPECT_EQ(printf_json(printed),
            "{\"type\": \"printf\", \"data\": "
            "\"a\\\"b\\\\c\\td\\r\\u0001\\u001f\x7f|\\uffffffc3\\uffffffa9\\n\"}\n");
  fmt::memory_buffer out;
  print_map_json(out, map("@e", ValueKind::kScalar, {{{S("\xc3\xa9\x02")}, I(1)}}));
  EXPECT_EQ(text(out),
            "{\"type\": \"map\", \"data\": {\"@e\": {\"\\uffffffc3\\uffffffa9\\u0002\": 1}}}\n");
}

// ---- printf ----

// bpftrace -e 'BEGIN { printf("%5d|%-5s|%x|%lu|%c|%%\n", 42, "ab", 255, 7, 65); exit(); }'
// (the text after the last conversion is copied as written: "%%" stays.)
TEST(BtPrint, PrintfCopiesTheTextAfterTheLastConversion) {
  EXPECT_EQ(format_printf("%5d|%-5s|%x|%lu|%c|%%\n", {I(42), S("ab"), I(255), I(7), I(65)}),
            "   42|ab   |ff|7|A|%%\n");
  // bpftrace -e 'BEGIN { printf("%% %d %%\n", 5); printf("100%%\n"); printf("%s %d\n", "a%%b", 3);
  //   printf("%i|%5%|%z|a%\n"); exit(); }'
  EXPECT_EQ(format_printf("%% %d %%\n", {I(5)}), "% 5 %%\n");
  EXPECT_EQ(format_printf("100%%\n", {}), "100%%\n");
  EXPECT_EQ(format_printf("%s %d\n", {S("a%%b"), I(3)}), "a%%b 3\n");
  EXPECT_EQ(format_printf("%i|%5%|%z|a%\n", {}), "%i|%5%|%z|a%\n");
}

// printf("[<conversion>]\n", <argument>) for each line, e.g.
// bpftrace -e 'BEGIN { printf("[%d]\n", 4294967296); exit(); }'
// Without a length, C reads 32 bits of bpftrace's 64-bit argument.
TEST(BtPrint, PrintfLengthsReadWhatCWouldRead) {
  struct Case {
    const char *format;
    int64_t arg;
    const char *printed;
  };
  const Case cases[] = {
      {"[%d]", 4294967296, "[0]"},
      {"[%d]", -1, "[-1]"},
      {"[%u]", -1, "[4294967295]"},
      {"[%x]", -1, "[ffffffff]"},
      {"[%X]", -1, "[FFFFFFFF]"},
      {"[%o]", -1, "[37777777777]"},
      {"[%ld]", 4294967296, "[4294967296]"},
      {"[%lu]", -1, "[18446744073709551615]"},
      {"[%lx]", 4294967296, "[100000000]"},
      {"[%lX]", -1, "[FFFFFFFFFFFFFFFF]"},
      {"[%lld]", -1, "[-1]"},
      {"[%llu]", -1, "[18446744073709551615]"},
      {"[%llx]", -1, "[ffffffffffffffff]"},
      {"[%hd]", 4294967296, "[0]"},
      {"[%hu]", -1, "[65535]"},
      {"[%hhd]", -1, "[-1]"},
      {"[%hhu]", -1, "[255]"},
      {"[%hx]", -1, "[ffff]"},
      {"[%zd]", -1, "[-1]"},
      {"[%zu]", 4294967296, "[4294967296]"},
      {"[%jd]", 4294967296, "[4294967296]"},
      {"[%td]", 5, "[5]"},
      {"[%zx]", 255, "[ff]"},
      {"[%lo]", 8, "[10]"},
      {"[%p]", 4294967296, "[0x100000000]"},
      {"[%p]", -1, "[0xffffffffffffffff]"},
      {"[%p]", 0, "[(nil)]"},
      {"[%lp]", 5, "[0x5]"},
      {"[%c]", 65, "[A]"},
      {"[%c]", 300, "[,]"},
  };
  for (const Case &c : cases)
    EXPECT_EQ(format_printf(std::string(c.format) + "\n", {I(c.arg)}),
              std::string(c.printed) + "\n")
        << c.format << " of " << c.arg;
  // The argument's own width was settled when it was widened to 64 bits:
  // printf("%x", (int8)-1) prints ffffffff, printf("%lu", (uint8)-1) 255, printf("%d", (uint32)-1)
  // -1.
  EXPECT_EQ(format_printf("%x %lu %d %ld", {I(-1), U(255), U(UINT32_MAX), U(UINT32_MAX)}),
            "ffffffff 255 -1 4294967295");
}

// bpftrace -e 'BEGIN { printf("[<conversion>]\n", 42); exit(); }' and the same with -3.
TEST(BtPrint, PrintfWidthPrecisionAndFlags) {
  struct Case {
    const char *format;
    Scalar arg;
    const char *printed;
  };
  const Case cases[] = {
      {"[%05d]", I(42), "[00042]"},
      {"[%05d]", I(-3), "[-0003]"},
      {"[%-5d]", I(-3), "[-3   ]"},
      {"[%.3d]", I(-3), "[-003]"},
      {"[%8.3d]", I(42), "[     042]"},
      {"[%08.3d]", I(-3), "[    -003]"},
      {"[%-05d]", I(42), "[42   ]"},
      {"[%5u]", I(-3), "[4294967293]"},
      {"[%.0d]", I(0), "[]"},
      {"[%5.0d]", I(0), "[     ]"},
      {"[%-d|%0d]", I(1), "[1|%0d]"},
      {"[%5p]", I(42), "[ 0x2a]"},
      {"[%-20p]", I(-3), "[0xfffffffffffffffd  ]"},
      {"[%05p]", I(255), "[0x0ff]"},
      {"[%.5p]", I(255), "[0x000ff]"},
      {"[%.3p]", I(0), "[(nil)]"},
      {"[%.5x]", I(255), "[000ff]"},
      {"[%010.5x]", I(255), "[     000ff]"},
      {"[%-010x|]", I(255), "[ff        |]"},
      {"[%020lx]", I(-3), "[0000fffffffffffffffd]"},
      {"[%5.3s]", S("abcdef"), "[  abc]"},
      {"[%-5.3s|]", S("abcdef"), "[abc  |]"},
      {"[%.10s]", S("ab"), "[ab]"},
      {"[%05s]", S("ab"), "[   ab]"},
      {"[%10s|%-10s|]", S("hi"), "[        hi|%-10s|]"},
      {"[%05c]", I(65), "[    A]"},
      {"[%.3c]", I(65), "[A]"},
      {"[%s]", S("a\tb"), "[a\tb]"},
  };
  for (const Case &c : cases)
    EXPECT_EQ(format_printf(std::string(c.format) + "\n", {c.arg}), std::string(c.printed) + "\n")
        << c.format;
}

// '+', ' ', '#', '*', %i, %f and "hh" with c are not conversions to bpftrace: they stay as written
// (bpftrace's parser refuses such a program's arguments, "Too many arguments").
TEST(BtPrint, PrintfLeavesWhatBpftraceDoesNotConvert) {
  EXPECT_EQ(format_printf("%+d % d %#x %*d %i %f %hhc %ls %Lx %lllx", {}),
            "%+d % d %#x %*d %i %f %hhc %ls %Lx %lllx");
}

// bpftrace -e 'BEGIN { printf("[%3c][%-3c]\n", 0, 0); printf("[x%cy]\n", 0); exit(); }'
// bpftrace keeps each piece of snprintf's output as a C string: a NUL ends it.
TEST(BtPrint, PrintfCharZeroEndsItsPiece) {
  EXPECT_EQ(format_printf("[%3c][%-3c]\n", {I(0), I(0)}), "[  ][]\n");
  EXPECT_EQ(format_printf("[x%cy]\n", {I(0)}), "[xy]\n");
  EXPECT_EQ(format_printf("[%c]\n", {I(-1)}), "[\xff]\n");
}

// A usym prints its text, a stack as a map value does.
TEST(BtPrint, PrintfOfSymsAndStacks) {
  EXPECT_EQ(format_printf("%s|%s|\n", {Sym{"bar"}, Sym{"0x1234"}}), "bar|0x1234|\n");
  EXPECT_EQ(format_printf("%s", {Stack{{"main+4"}}}), "\n        main+4\n");
}

// Every integer conversion usprobe knows, against glibc's snprintf given the argument C's varargs
// would read: bpftrace hands each piece to snprintf, so glibc is the oracle for the flags.
TEST(BtPrint, PrintfIntegersMatchSnprintf) {
  const int64_t values[] = {0,     1,         -1,        42,         -42,       255,
                            65535, INT32_MAX, INT32_MIN, 4294967296, INT64_MIN, INT64_MAX};
  const char *flags[] = {"", "-", "0", "-0"};
  const char *widths[] = {"", "1", "5", "12", "25"};
  const char *precisions[] = {"", ".0", ".1", ".4", ".20"};
  const char *types[] = {"d",  "u",  "x",  "X",  "o",   "ld",  "lu",  "lx", "lX",
                         "lo", "hd", "hu", "hx", "hhd", "hhu", "hhx", "p"};
  char expected[128];
  for (const char *flag : flags)
    for (const char *width : widths)
      for (const char *precision : precisions)
        for (const char *type : types)
          for (int64_t v : values) {
            std::string spec = std::string("%") + flag + width + precision + type;
            std::string_view t = type;
            if (t == "p") {
              std::snprintf(expected, sizeof expected, spec.c_str(),
                            reinterpret_cast<void *>(static_cast<uintptr_t>(v)));
            } else if (t.starts_with("l")) {
              std::snprintf(expected, sizeof expected, spec.c_str(), v);
            } else {
              std::snprintf(expected, sizeof expected, spec.c_str(), static_cast<int>(v));
            }
            ASSERT_EQ(format_printf(spec, {I(v)}), expected) << spec << " of " << v;
          }
}

}  // namespace
}  // namespace usprobe::bt
