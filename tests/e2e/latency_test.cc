// `usprobe latency`: tests/e2e/latency_target.c run under the CLI. A function that sleeps 3 ms
// must come out with its exact call count and no call below the log2 bucket that holds 3 ms; a
// fast function called from threads that exit before the command must be counted exactly (their
// slots are freed and their histograms folded on the way); the JSON must be well formed and the
// command's exit status must pass through.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "e2e_support.h"

#include "support/text_match.h"

namespace rx = usprobe::test;

namespace {

using e2e::Json;
using e2e::Output;
using e2e::run;

const char *latency_target() {
  return LATENCY_TARGET;
}

constexpr uint64_t k2To21 = uint64_t{1} << 21;  // 2.10 ms

// The JSON lines of a run, by probe; every line that starts with '{' must parse and be one
// probe's total.
std::map<std::string, Json> totals_of(const Output &r) {
  std::map<std::string, Json> out;
  for (const Json &j : e2e::json_lines(r.out)) {
    EXPECT_TRUE(j.is_object()) << j.dump();
    if (!j.is_object()) continue;
    EXPECT_EQ(j.value("type", ""), "total") << j.dump();
    std::string probe = j.value("probe", "");
    EXPECT_FALSE(out.contains(probe)) << "two lines for " << probe << "\n" << r.out;
    out[probe] = j;
  }
  return out;
}

// Every field the CLI documents, with its type, and buckets that add up to the count.
void expect_well_formed(const Json &p) {
  for (const char *key : {"probe", "aliases", "count", "avg_ns", "p50_ns", "p99_ns", "missed",
                          "buckets", "elapsed_s", "timestamp"})
    EXPECT_TRUE(p.contains(key)) << key << " missing in " << p.dump();
  EXPECT_TRUE(p["aliases"].is_array()) << p.dump();
  EXPECT_TRUE(p["timestamp"].is_number()) << p.dump();
  ASSERT_TRUE(p["count"].is_number_unsigned()) << p.dump();
  ASSERT_TRUE(p["missed"].is_number_unsigned()) << p.dump();
  ASSERT_TRUE(p["buckets"].is_array()) << p.dump();
  const uint64_t count = p["count"].get<uint64_t>();
  if (count == 0) {
    EXPECT_TRUE(p["avg_ns"].is_null() && p["p50_ns"].is_null() && p["p99_ns"].is_null())
        << p.dump();
    EXPECT_TRUE(p["buckets"].empty()) << p.dump();
    return;
  }
  for (const char *key : {"avg_ns", "p50_ns", "p99_ns"})
    EXPECT_TRUE(p[key].is_number()) << key << " in " << p.dump();
  EXPECT_LE(p["p50_ns"].get<double>(), p["p99_ns"].get<double>()) << p.dump();
  uint64_t sum = 0, previous_high = 0;
  bool first = true;
  for (const Json &b : p["buckets"]) {
    ASSERT_TRUE(b.is_object() && b["low_ns"].is_number_unsigned() &&
                b["high_ns"].is_number_unsigned() && b["count"].is_number_unsigned())
        << b.dump();
    const uint64_t low = b["low_ns"].get<uint64_t>(), high = b["high_ns"].get<uint64_t>();
    EXPECT_GT(b["count"].get<uint64_t>(), 0u) << "only non-empty buckets: " << p.dump();
    // log2 buckets: 0..1, then 2^k .. 2^(k+1)-1, in increasing order.
    EXPECT_TRUE((low == 0 && high == 1) ||
                (low >= 2 && (low & (low - 1)) == 0 && high == 2 * low - 1))
        << b.dump();
    EXPECT_TRUE(first || low > previous_high) << p.dump();
    first = false;
    previous_high = high;
    sum += b["count"].get<uint64_t>();
  }
  EXPECT_EQ(sum, count) << p.dump();
}

TEST(CliLatency, TimesASleepingFunctionAndCountsAFastOneExactly) {
  Output r = run({e2e::cli(), "latency", "-o", "-", "--json", "exe:latency_sleep",
                  "exe:latency_fast", "--", latency_target(), "3", "20", "2500", "4"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.err.find("slept 20 fast 4 x 2500\n"), std::string::npos) << r.describe();
  auto totals = totals_of(r);
  ASSERT_EQ(totals.size(), 2u) << r.describe();

  const Json &sleep = totals["exe:latency_sleep"];
  expect_well_formed(sleep);
  EXPECT_EQ(sleep.value("count", 0u), 20u) << sleep.dump();
  EXPECT_EQ(sleep.value("missed", 1u), 0u) << sleep.dump();
  // Each call sleeps 3 ms, and nanosleep never returns early: every call lands at 3 ms or above,
  // so in the log2 bucket [2^21, 2^22) ns or a later one. A loaded machine can only make calls
  // longer, so only lower bounds are asserted.
  const double p50 = sleep.value("p50_ns", 0.0);
  EXPECT_GE(p50, static_cast<double>(k2To21)) << sleep.dump();
  EXPECT_GE(sleep.value("avg_ns", 0.0), 3e6) << "nanosleep never returns early: " << sleep.dump();
  for (const Json &b : sleep["buckets"])
    EXPECT_GE(b.value("low_ns", 0u), k2To21) << "a call shorter than its sleep: " << sleep.dump();
  const Json &fast = totals["exe:latency_fast"];
  expect_well_formed(fast);
  EXPECT_EQ(fast.value("count", 0u), 10000u) << fast.dump();
  EXPECT_EQ(fast.value("missed", 1u), 0u) << fast.dump();
  EXPECT_LT(fast.value("p50_ns", 1e9), 1e6) << "a call that does nothing: " << fast.dump();
}

// A function's probe alone at it is timed by the engine itself, in the trampoline's fast paths,
// without a handler call: -v says how many are, and every thread's calls are timed exactly once.
TEST(CliLatency, ProbesAloneAtTheirFunctionsAreTimedByTheEngine) {
  Output r = run({e2e::cli(), "latency", "-v", "-o", "-", "--json", "exe:latency_sleep",
                  "exe:latency_fast", "--", latency_target(), "1", "5", "2500", "4"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.err.find("2 of 2 placed probes are timed by the engine"), std::string::npos)
      << r.describe();
  auto totals = totals_of(r);
  ASSERT_EQ(totals.size(), 2u) << r.describe();
  const Json &fast = totals["exe:latency_fast"];
  expect_well_formed(fast);
  EXPECT_EQ(fast.value("count", 0u), 10000u) << fast.dump();
  EXPECT_EQ(fast.value("missed", 1u), 0u) << fast.dump();
  const Json &sleep = totals["exe:latency_sleep"];
  EXPECT_EQ(sleep.value("count", 0u), 5u) << sleep.dump();
  // 1 ms lies in the log2 bucket [2^19, 2^20) ns: no call lands below it.
  for (const Json &b : sleep["buckets"])
    EXPECT_GE(b.value("low_ns", 0u), 1u << 19) << "a call shorter than its sleep: " << sleep.dump();
}

TEST(CliLatency, ExitStatusIsTheCommands) {
  Output r = run({e2e::cli(), "latency", "-o", "-", "--json", "exe:latency_fast", "--",
                  latency_target(), "0", "0", "5", "1", "7"});
  ASSERT_EQ(r.exit_code(), 7) << r.describe();
  auto totals = totals_of(r);
  ASSERT_EQ(totals.size(), 1u) << r.describe();
  expect_well_formed(totals["exe:latency_fast"]);
  EXPECT_EQ(totals["exe:latency_fast"].value("count", 0u), 5u) << r.describe();
}

TEST(CliLatency, TextReportDrawsTheTableInTheChosenUnit) {
  Output r = run({e2e::cli(), "latency", "-o", "-", "-m", "exe:latency_sleep", "exe:latency_fast",
                  "--", latency_target(), "3", "10", "0", "0", "3"});
  ASSERT_EQ(r.exit_code(), 3) << r.describe();
  EXPECT_TRUE(
      rx::regex_search(r.out, rx::regex(R"(Total over [0-9]+\.[0-9]{3} s \(exit status 3\):)")))
      << r.describe();
  EXPECT_NE(r.out.find("\nexe:latency_sleep\n"), std::string::npos) << r.describe();
  EXPECT_TRUE(rx::regex_search(r.out, rx::regex(R"(\n +msecs +: count +distribution\n)")))
      << r.describe();
  // 3 ms is in the row 2 -> 3 ms; a busy machine can push calls into later rows, never earlier
  // ones: the table starts at that row or a later one, and its counts add up to the 10 calls.
  rx::smatch row;
  ASSERT_TRUE(rx::regex_search(r.out, row,
                               rx::regex(R"(\n +msecs +: count +distribution\n +([0-9]+) -> )")))
      << r.describe();
  EXPECT_GE(std::stoi(row[1]), 2) << "no row below 2 -> 3 ms\n" << r.describe();
  int calls = 0;
  const rx::regex counted(R"(\n +[0-9]+ -> [0-9]+ +: ([0-9]+) +\|)");
  for (const rx::smatch &m : rx::regex_find_all(r.out, counted)) calls += std::stoi(m[1]);
  EXPECT_EQ(calls, 10) << r.describe();
  rx::smatch summary;
  ASSERT_TRUE(rx::regex_search(
      r.out, summary,
      rx::regex(
          R"(\ncount 10, avg ([0-9]+\.[0-9]{6}) ms, p50 ([0-9]+\.[0-9]{6}) ms, p99 [0-9.]+ ms\n)")))
      << r.describe();
  EXPECT_GE(std::stod(summary[1]), 3.0) << r.describe();
  EXPECT_GE(std::stod(summary[2]), 2.097152) << "p50 at 2^21 ns or above\n" << r.describe();
  EXPECT_NE(r.out.find("no calls: exe:latency_fast"), std::string::npos) << r.describe();
}

TEST(CliLatency, RefusesProbesThatAreNotFunctionEntries) {
  for (const char *probe : {"exe:latency_fast+4", "exe:0x1139", "uretprobe:exe:latency_fast"}) {
    Output r = run({e2e::cli(), "latency", probe, "--", latency_target(), "0", "0", "1", "1"});
    EXPECT_EQ(r.exit_code(), 2) << probe << "\n" << r.describe();
    std::vector<std::string> err = e2e::lines(r.err);
    ASSERT_EQ(err.size(), 1u) << probe << "\n" << r.describe();
    EXPECT_TRUE(e2e::starts_with(err[0], "usprobe: latency: ")) << err[0];
    EXPECT_EQ(r.out.find("slept"), std::string::npos) << "the command ran\n" << r.describe();
  }
  Output r = run({e2e::cli(), "latency", "--unit", "s", "exe:latency_fast", "--", latency_target(),
                  "0", "0", "1", "1"});
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  EXPECT_EQ(e2e::lines(r.err).size(), 1u) << r.describe();
}

// A function that returns twice (setjmp: its second return comes from longjmp, to the landing it
// saved) cannot be timed: named, it is refused before anything runs; in a glob, it is left out,
// and a shell that longjmps on its errors (bash's `[` with a missing argument) runs as it does
// alone.
TEST(CliLatency, FunctionsThatReturnTwiceAreRefusedByNameAndLeftOutOfGlobs) {
  Output named = run({e2e::cli(), "latency", "libc:_setjmp", "--", "/bin/true"});
  EXPECT_EQ(named.exit_code(), 2) << named.describe();
  std::vector<std::string> err = e2e::lines(named.err);
  ASSERT_EQ(err.size(), 1u) << named.describe();
  EXPECT_NE(err[0].find("libc:_setjmp returns twice"), std::string::npos) << err[0];

  const std::string script = "[ -n \"$UNSET\" -a ]; echo after";
  Output alone = run({"/bin/bash", "-c", script});
  Output timed =
      run({e2e::cli(), "latency", "-o", "/dev/null", "libc:*", "--", "/bin/bash", "-c", script});
  EXPECT_EQ(timed.exit_code(), alone.exit_code()) << timed.describe();
  EXPECT_EQ(timed.out, alone.out) << timed.describe();
  EXPECT_EQ(timed.out, "after\n") << timed.describe();
  EXPECT_EQ(timed.err.find("aborting"), std::string::npos) << timed.describe();
}

// BCC's funclatency: one histogram for all the functions by default, one per function with -F;
// -u draws the table in microseconds (a flag, as -m is for milliseconds).
TEST(CliLatency, OneHistogramForAllFunctionsUnlessPerFunction) {
  e2e::TempDir dir;
  const std::string combined = dir.file("combined.txt"), per_function = dir.file("per.txt");
  const std::vector<std::string> command = {latency_target(), "1", "3", "100", "1"};
  std::vector<std::string> argv = {e2e::cli(),          "latency",          "-u", "-o", combined,
                                   "exe:latency_sleep", "exe:latency_fast", "--"};
  argv.insert(argv.end(), command.begin(), command.end());
  Output r = run(argv);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::string text = e2e::read_file(combined);
  EXPECT_NE(text.find("\n2 functions: exe:latency_sleep, exe:latency_fast\n"), std::string::npos)
      << text;
  EXPECT_TRUE(rx::regex_search(text, rx::regex(R"(\n +usecs +: count +distribution\n)"))) << text;
  EXPECT_TRUE(rx::regex_search(text, rx::regex(R"(\ncount 103, avg [0-9.]+ us, )"))) << text;
  EXPECT_EQ(text.find("count 100,"), std::string::npos) << text;

  argv = {e2e::cli(),          "latency",          "-F", "-o", per_function,
          "exe:latency_sleep", "exe:latency_fast", "--"};
  argv.insert(argv.end(), command.begin(), command.end());
  Output f = run(argv);
  ASSERT_EQ(f.exit_code(), 0) << f.describe();
  text = e2e::read_file(per_function);
  EXPECT_NE(text.find("\nexe:latency_sleep\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nexe:latency_fast\n"), std::string::npos) << text;
  EXPECT_TRUE(rx::regex_search(text, rx::regex(R"(\ncount 3, avg [0-9]+ ns, )"))) << text;
  EXPECT_TRUE(rx::regex_search(text, rx::regex(R"(\ncount 100, avg [0-9]+ ns, )"))) << text;
}

}  // namespace
