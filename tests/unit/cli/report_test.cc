// Count reports: what people read (a table sorted by hits) and what programs parse (one JSON
// object per report, every probe present).
#include "output/report.h"

#include <fmt/format.h>

#include <ctime>

#include <gtest/gtest.h>

#include "support/text_match.h"

namespace rx = usprobe::test;

namespace usprobe::cli {
namespace {

const std::vector<Probe> kProbes = {
    {"libc:free", "/usr/lib/x86_64-linux-gnu/libc.so.6:free", 0},
    {"libc:malloc", "/usr/lib/x86_64-linux-gnu/libc.so.6:malloc", 0},
    {"exe:never", "/usr/bin/prog:never", 1},
};

Counts sample_counts() {
  Counts c;
  c[{100, 0}] = {10, 0};
  c[{100, 1}] = {30, 1};
  c[{200, 1}] = {5, 0};
  c[{0, 0}] = {2, 0};  // the overflow slot: unknown process
  return c;
}

TEST(Tally, SortsByHitsThenNameAndKeepsEveryProbe) {
  auto rows = tally(kProbes, sample_counts());
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].probe, "libc:malloc");
  EXPECT_EQ(rows[0].total, (Count{35, 1}));
  EXPECT_EQ(rows[1].probe, "libc:free");
  EXPECT_EQ(rows[1].total, (Count{12, 0}));
  EXPECT_EQ(rows[2].probe, "exe:never");
  EXPECT_EQ(rows[2].total, (Count{0, 0}));
  EXPECT_EQ(rows[0].pids.at(100).hits, 30u);
  EXPECT_EQ(rows[0].pids.at(200).hits, 5u);
  EXPECT_EQ(rows[1].pids.at(0).hits, 2u);
}

TEST(Tally, EqualHitsSortByName) {
  Counts c;
  c[{1, 0}] = {7, 0};
  c[{1, 1}] = {7, 0};
  auto rows = tally(kProbes, c);
  EXPECT_EQ(rows[0].probe, "libc:free");
  EXPECT_EQ(rows[1].probe, "libc:malloc");
}

TEST(Subtract, GivesTheHitsOfOneInterval) {
  Counts before = sample_counts(), now = sample_counts();
  now[{100, 1}].hits += 4;
  now[{300, 2}] = {1, 0};
  Counts d = subtract(now, before);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d.at({100, 1}), (Count{4, 0}));
  EXPECT_EQ(d.at({300, 2}), (Count{1, 0}));
}

TEST(TextReport, ColumnsAlignUnderTheHeaderAndProbesNotHitAreCountedAtTheEnd) {
  std::string text = text_report(tally(kProbes, sample_counts()), {});
  // Probe column: the longest name shown + 2; hits and missed right-aligned in 10.
  EXPECT_EQ(text,
            "PROBE              HITS     MISSED\n"
            "libc:malloc          35          1\n"
            "libc:free            12          0\n"
            "(1 probe not hit; --all shows them)\n");
}

TEST(TextReport, AllShowsTheProbesNotHit) {
  TableOptions all;
  all.all = true;
  EXPECT_EQ(text_report(tally(kProbes, sample_counts()), all),
            "PROBE              HITS     MISSED\n"
            "libc:malloc          35          1\n"
            "libc:free            12          0\n"
            "exe:never             0          0\n");
}

TEST(TextReport, TopKeepsTheBusiestRowsAndSaysHowManyAreLeftOut) {
  TableOptions top;
  top.top = 1;
  EXPECT_EQ(text_report(tally(kProbes, sample_counts()), top),
            "PROBE              HITS     MISSED\n"
            "libc:malloc          35          1\n"
            "(1 more probe below the top 1; 1 not hit)\n");
}

TEST(TextReport, AliasesFollowTheNameWithoutTheirFile) {
  std::vector<Probe> probes = {{"libc:memcpy", "/lib/libc.so.6:memcpy", 0}};
  probes[0].aliases = {"libc:memmove", "libc:__memmove_avx_unaligned_erms"};
  Counts c;
  c[{1, 0}] = {3, 0};
  EXPECT_EQ(text_report(tally(probes, c), {}),
            "PROBE                                                           HITS     MISSED\n"
            "libc:memcpy (also memmove, __memmove_avx_unaligned_erms)           3          0\n");
}

TEST(TextReport, PerPidRowsComeWithThePidAndTheProcesssName) {
  TableOptions per_pid;
  per_pid.per_pid = true;
  per_pid.all = true;
  per_pid.comm = [](int32_t pid) { return pid == 100 ? std::string("sqlite3") : std::string(); };
  std::string text = text_report(tally(kProbes, sample_counts()), per_pid);
  EXPECT_EQ(text,
            "PID  COMM     PROBE              HITS     MISSED\n"
            "100  sqlite3  libc:malloc          30          1\n"
            "100  sqlite3  libc:free            10          0\n"
            "200  ?        libc:malloc           5          0\n"
            "0    ?        libc:free             2          0\n"
            "-    -        exe:never             0          0\n");
}

TEST(ReportHeading, IntervalsGiveTheTimeOfDayAndTheSecondsSinceTheStart) {
  EXPECT_TRUE(rx::regex_match(report_heading(2.5, false, ""),
                              rx::regex(R"(\[[0-9]{2}:[0-9]{2}:[0-9]{2}\] 2\.500 s\n)")))
      << report_heading(2.5, false, "");
  // -T: funccount's line first, in every report.
  EXPECT_TRUE(rx::regex_match(report_heading(3, true, "exit status 0", true),
                              rx::regex("[0-9]{2}:[0-9]{2}:[0-9]{2}\n"
                                        "Total over 3\\.000 s \\(exit status 0\\):\n")))
      << report_heading(3, true, "exit status 0", true);
}

TEST(JsonReport, TotalHasTheShapeScriptsParse) {
  auto j = json_report(tally(kProbes, sample_counts()), 1.23456, true, 0);
  // The wall-clock time of the report, in Unix seconds.
  ASSERT_TRUE(j.contains("timestamp") && j["timestamp"].is_number()) << j.dump();
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_NEAR(j["timestamp"].get<double>(), now, 5.0);
  j.erase("timestamp");
  EXPECT_EQ(dump_line(j),
            R"({"type":"total","elapsed_s":1.235,"exit_status":0,"probes":[)"
            R"({"probe":"libc:malloc","aliases":[],)"
            R"("location":"/usr/lib/x86_64-linux-gnu/libc.so.6:malloc",)"
            R"("hits":35,"missed":1,"pids":{"100":30,"200":5}},)"
            R"({"probe":"libc:free","aliases":[],)"
            R"("location":"/usr/lib/x86_64-linux-gnu/libc.so.6:free",)"
            R"("hits":12,"missed":0,"pids":{"0":2,"100":10}},)"
            R"({"probe":"exe:never","aliases":[],"location":"/usr/bin/prog:never","hits":0,)"
            R"("missed":0,"pids":{}}]})");
}

TEST(JsonReport, TopKeepsTheBusiestProbesAndPerPidAddsTheProcessesNames) {
  auto j = json_report(tally(kProbes, sample_counts()), 1, true, 0, 1,
                       [](int32_t pid) { return fmt::format("p{}", pid); });
  ASSERT_EQ(j["probes"].size(), 1u) << j.dump();
  EXPECT_EQ(j["probes"][0]["probe"], "libc:malloc");
  EXPECT_EQ(j["probes"][0]["comms"].dump(), R"({"100":"p100","200":"p200"})");
}

TEST(JsonReport, IntervalHasNoExitStatusAndUnknownStatusIsNull) {
  auto interval = json_report(tally(kProbes, {}), 0.5, false, std::nullopt);
  EXPECT_EQ(interval["type"], "interval");
  EXPECT_FALSE(interval.contains("exit_status"));
  auto total = json_report(tally(kProbes, {}), 0.5, true, std::nullopt);
  ASSERT_TRUE(total.contains("exit_status"));
  EXPECT_TRUE(total["exit_status"].is_null());
}

TEST(JsonReport, InvalidUtf8IsReplacedNotThrown) {
  std::vector<Probe> probes = {{"exe:\xff\xfe", "/x:\xff\xfe", 0}};
  std::string line = dump_line(json_report(tally(probes, {}), 0, true, 1));
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_NE(line.find("exe:"), std::string::npos);
}

}  // namespace
}  // namespace usprobe::cli
