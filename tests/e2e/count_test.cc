// `usprobe count`: real programs (tests/e2e/e2e_target.c) run under the CLI, and the reports
// checked for exact counts, per-pid attribution across threads, fork and exec, the command's exit
// status, SIGINT forwarding, interval and duration reports, the output file and every probe form.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "e2e_support.h"

#include "support/text_match.h"

namespace rx = usprobe::test;

namespace {

using e2e::hits_of;
using e2e::Json;
using e2e::only_total;
using e2e::Output;
using e2e::reports_of;
using e2e::run;

// A probe's "pids" as pid -> hits.
std::map<long, uint64_t> pids_of(const Json &report, std::string_view probe) {
  std::map<long, uint64_t> pids;
  auto p = e2e::probe_in(report, probe);
  EXPECT_TRUE(p.has_value()) << "no probe " << probe << " in " << report.dump();
  if (!p) return pids;
  EXPECT_TRUE(p->contains("pids") && (*p)["pids"].is_object()) << p->dump();
  if (!p->contains("pids") || !(*p)["pids"].is_object()) return pids;
  for (auto &[key, value] : (*p)["pids"].items()) pids[std::stol(key)] = value.get<uint64_t>();
  return pids;
}

std::string libc_path() {
  for (const std::string &line : e2e::lines(e2e::read_file("/proc/self/maps"))) {
    size_t slash = line.find('/');
    if (slash != std::string::npos && line.find("/libc.so.6", slash) != std::string::npos)
      return line.substr(slash);
  }
  return "";
}

// "FILE:SYMBOL" -> (realpath of FILE, SYMBOL).
std::pair<std::string, std::string> split_location(const std::string &location) {
  size_t colon = location.rfind(':');
  if (colon == std::string::npos) return {"", location};
  return {e2e::realpath_of(location.substr(0, colon)), location.substr(colon + 1)};
}

long pid_after(const std::string &out, const std::string &key) {
  size_t at = out.find(key);
  return at == std::string::npos ? -1 : std::stol(out.substr(at + key.size()));
}

TEST(CliCount, CountsEveryCallOfAFunctionOfTheCommand) {
  Output r =
      run({e2e::cli(), "count", "--json", "exe:e2e_work", "--", e2e::target(), "calls", "1000"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("calls 1000\n"), std::string::npos) << r.describe();
  Json total = only_total(r);
  EXPECT_EQ(total.value("exit_status", -1), 0) << total.dump();
  EXPECT_GT(total.value("elapsed_s", 0.0), 0.0) << total.dump();
  EXPECT_LE(total.value("elapsed_s", 1e9), r.seconds + 0.1) << total.dump();
  ASSERT_EQ(total["probes"].size(), 1u) << total.dump();
  const Json &p = total["probes"][0];
  EXPECT_EQ(p.value("probe", ""), "exe:e2e_work");
  EXPECT_EQ(split_location(p.value("location", "")),
            std::make_pair(e2e::realpath_of(e2e::target()), std::string("e2e_work")))
      << p.dump();
  EXPECT_EQ(p.value("hits", 0u), 1000u) << p.dump();
  EXPECT_EQ(p.value("missed", 1u), 0u) << p.dump();
  auto pids = pids_of(total, "exe:e2e_work");
  ASSERT_EQ(pids.size(), 1u) << p.dump();
  EXPECT_GT(pids.begin()->first, 0);
  EXPECT_EQ(pids.begin()->second, 1000u);
}

TEST(CliCount, ProbesWithoutHitsAreReportedAfterTheOthers) {
  Output r = run({e2e::cli(), "count", "--json", "exe:e2e_greet", "exe:e2e_work", "--",
                  e2e::target(), "calls", "10"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Json total = only_total(r);
  ASSERT_EQ(total["probes"].size(), 2u) << total.dump();
  EXPECT_EQ(total["probes"][0].value("probe", ""), "exe:e2e_work") << total.dump();
  EXPECT_EQ(total["probes"][0].value("hits", 0u), 10u) << total.dump();
  EXPECT_EQ(total["probes"][1].value("probe", ""), "exe:e2e_greet") << total.dump();
  EXPECT_EQ(total["probes"][1].value("hits", 1u), 0u) << total.dump();
  EXPECT_TRUE(pids_of(total, "exe:e2e_greet").empty()) << total.dump();
}

TEST(CliCount, CountsALibcFunctionByItsShortLibraryName) {
  Output r =
      run({e2e::cli(), "count", "--json", "libc:getppid", "--", e2e::target(), "libc", "250"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Json total = only_total(r);
  EXPECT_EQ(hits_of(total, "libc:getppid"), 250u) << total.dump();
  auto p = e2e::probe_in(total, "libc:getppid");
  ASSERT_TRUE(p);
  EXPECT_EQ(split_location(p->value("location", "")),
            std::make_pair(e2e::realpath_of(libc_path()), std::string("getppid")))
      << p->dump();
}

TEST(CliCount, ProbesOnMallocAndFreeLeaveTheCommandWorking) {
  Output r = run({e2e::cli(), "count", "--json", "libc:malloc", "libc:free", "--", e2e::target(),
                  "calls", "10"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out, "calls 10\n") << r.describe();  // the report is on stderr
  Json total = only_total(r);
  EXPECT_EQ(total.value("exit_status", -1), 0) << total.dump();
  // printf allocates stdout's buffer.
  EXPECT_GE(hits_of(total, "libc:malloc"), 1u) << total.dump();
}

TEST(CliCount, CountsCallsFromEveryThread) {
  Output r = run(
      {e2e::cli(), "count", "--json", "exe:e2e_work", "--", e2e::target(), "threads", "4", "2500"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("threads 4 x 2500\n"), std::string::npos) << r.describe();
  Json total = only_total(r);
  EXPECT_EQ(hits_of(total, "exe:e2e_work"), 10000u) << total.dump();
  auto pids = pids_of(total, "exe:e2e_work");
  ASSERT_EQ(pids.size(), 1u) << total.dump();
  EXPECT_EQ(pids.begin()->second, 10000u);
}

// A probe alone at a function's entry is counted by the engine's counter path, straight into the
// thread's slot (no handler call), and a return probe alone at its function by the return path:
// -v says how many probes do, and every thread's calls count.
TEST(CliCount, ProbesAloneAtTheirFunctionsCountOnTheCounterPathOrTheReturnPath) {
  for (const char *probe : {"exe:e2e_work", "uretprobe:exe:e2e_work"}) {
    SCOPED_TRACE(probe);
    Output r = run(
        {e2e::cli(), "count", "-v", "--json", probe, "--", e2e::target(), "threads", "4", "2500"});
    ASSERT_EQ(r.exit_code(), 0) << r.describe();
    EXPECT_NE(r.err.find("1 of 1 placed probes count on the counter path or the return path"),
              std::string::npos)
        << r.describe();
    Json total = only_total(r);
    EXPECT_EQ(hits_of(total, probe), 10000u) << total.dump();
  }
}

TEST(CliCount, CountsAForkedChildUnderItsOwnPid) {
  Output r = run({e2e::cli(), "count", "--json", "--per-pid", "exe:e2e_work", "--", e2e::target(),
                  "fork", "100", "200"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const long parent = pid_after(r.out, "parent="), child = pid_after(r.out, "child=");
  ASSERT_GT(parent, 0) << r.describe();
  ASSERT_GT(child, 0) << r.describe();
  Json total = only_total(r);
  EXPECT_EQ(hits_of(total, "exe:e2e_work"), 300u) << total.dump();
  EXPECT_EQ(pids_of(total, "exe:e2e_work"), (std::map<long, uint64_t>{{parent, 100}, {child, 200}}))
      << total.dump();
}

// Calls made inside fork() are the program's: _Fork itself, and the program's fork handlers, also
// those that run between the agent's own prepare handler and its parent or child handler (the
// "early" ones of fork_target.c, registered before the agent's constructor). Only the agent's own
// work in its handlers is left out. The program counts its handlers' calls itself (the children's
// in shared memory) and prints them: usprobe must count exactly as many, each child's under the
// child's pid.
TEST(CliCount, CountsTheCallsMadeInsideFork) {
#ifndef FORK_TARGET
#error "FORK_TARGET comes from tests/e2e/CMakeLists.txt"
#endif
  // libc's own fork work around the split, in a program that has had threads: malloc's locks
  // (named by libc6-dbg's symbols, which scripts/setup installs).
  const char *probes[] = {"libc:_Fork",
                          "libc:__malloc_fork_lock_parent",
                          "libc:__malloc_fork_unlock_parent",
                          "libc:__malloc_fork_unlock_child",
                          "exe:early_prepare",
                          "exe:early_parent",
                          "exe:early_child",
                          "exe:late_prepare",
                          "exe:late_parent",
                          "exe:late_child"};
  std::vector<std::string> argv = {e2e::cli(), "count", "--json", "--per-pid"};
  argv.insert(argv.end(), std::begin(probes), std::end(probes));
  argv.insert(argv.end(), {"--", FORK_TARGET, "6"});
  Output r = run(argv);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const std::string expected_line =
      "forks=6 early_prepare=6 early_parent=6 early_child=6 late_prepare=6 late_parent=6 "
      "late_child=6\n";
  ASSERT_NE(r.out.find(expected_line), std::string::npos)
      << "the program's own counts of its fork handlers: " << r.describe() << r.out;
  Json total = only_total(r);
  for (const char *probe : probes)
    EXPECT_EQ(hits_of(total, probe), 6u) << probe << ": " << total.dump();
  // The parent's handlers and _Fork are the parent's; each child ran its child handlers once.
  for (const char *probe :
       {"libc:_Fork", "libc:__malloc_fork_lock_parent", "libc:__malloc_fork_unlock_parent",
        "exe:early_prepare", "exe:early_parent", "exe:late_prepare", "exe:late_parent"})
    EXPECT_EQ(pids_of(total, probe).size(), 1u) << probe << ": " << total.dump();
  for (const char *probe :
       {"libc:__malloc_fork_unlock_child", "exe:early_child", "exe:late_child"}) {
    auto pids = pids_of(total, probe);
    EXPECT_EQ(pids.size(), 6u) << probe << ": " << total.dump();
    for (auto &[pid, hits] : pids) EXPECT_EQ(hits, 1u) << probe << " in pid " << pid;
    for (auto &[parent, hits] : pids_of(total, "libc:_Fork"))
      EXPECT_EQ(pids.count(parent), 0u)
          << probe << ": a child's call counted under the parent's pid";
  }
}

TEST(CliCount, ProbesTheImageThatExecStarts) {
  Output r = run(
      {e2e::cli(), "count", "--json", "exe:e2e_work", "--", e2e::target(), "exec", "100", "200"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const long pid = pid_after(r.out, "exec pid=");
  ASSERT_GT(pid, 0) << r.describe();
  EXPECT_NE(r.out.find("calls 200\n"), std::string::npos) << r.describe();
  Json total = only_total(r);
  EXPECT_EQ(hits_of(total, "exe:e2e_work"), 300u) << total.dump();
  EXPECT_EQ(pids_of(total, "exe:e2e_work"), (std::map<long, uint64_t>{{pid, 300}})) << total.dump();
}

TEST(CliCount, AfterExecOfAnotherProgramAProbeThatNoLongerResolvesIsReportedOnce) {
  Output r = run({e2e::cli(), "count", "--json", "exe:e2e_work", "libc:getppid", "--",
                  e2e::target(), "exec-other", "5", e2e::other(), "7"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("other 7\n"), std::string::npos) << r.describe();
  Json total = only_total(r);
  EXPECT_EQ(hits_of(total, "exe:e2e_work"), 5u) << total.dump();
  EXPECT_EQ(hits_of(total, "libc:getppid"), 7u) << total.dump();
  int mentions = 0;
  for (const std::string &line : e2e::lines(r.err))
    if (line.find("e2e_work") != std::string::npos && !e2e::starts_with(line, "{")) ++mentions;
  EXPECT_EQ(mentions, 1) << "stderr should say once that exe:e2e_work no longer resolves\n"
                         << r.describe();
}

TEST(CliCount, ExitStatusIsTheCommands) {
  Output r = run({e2e::cli(), "count", "--json", "exe:e2e_work", "--", e2e::target(), "exit", "7"});
  ASSERT_EQ(r.exit_code(), 7) << r.describe();
  Json total = only_total(r);
  EXPECT_EQ(total.value("exit_status", -1), 7) << total.dump();
  EXPECT_EQ(hits_of(total, "exe:e2e_work"), 2u) << total.dump();

  Output text = run({e2e::cli(), "count", "exe:e2e_work", "--", e2e::target(), "exit", "7"});
  ASSERT_EQ(text.exit_code(), 7) << text.describe();
  EXPECT_TRUE(rx::regex_search(text.out + text.err,
                               rx::regex(R"(Total over [0-9]+\.[0-9]{3} s \(exit status 7\):)")))
      << text.describe();
}

TEST(CliCount, ExitStatusIs128PlusTheSignalThatKilledTheCommand) {
  Output r = run({e2e::cli(), "count", "--json", "exe:e2e_work", "--", e2e::target(), "raise",
                  std::to_string(SIGTERM)});
  ASSERT_EQ(r.exit_code(), 128 + SIGTERM) << r.describe();
  Json total = only_total(r);
  EXPECT_EQ(total.value("exit_status", -1), 128 + SIGTERM) << total.dump();
  EXPECT_EQ(hits_of(total, "exe:e2e_work"), 2u) << total.dump();
}

TEST(CliCount, SigintIsForwardedToTheCommandAndTheReportPrinted) {
  e2e::Process p(
      {e2e::cli(), "count", "--json", "exe:e2e_work", "--", e2e::target(), "sleep", "30"});
  ASSERT_TRUE(p.wait_for_stdout("sleeping\n", std::chrono::seconds(20)))
      << "the command did not start under usprobe\n"
      << p.finish(std::chrono::seconds(1)).describe();
  const auto sent = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(p.pid(), SIGINT), 0);
  Output r = p.finish(std::chrono::seconds(20));
  const double after =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count();
  ASSERT_FALSE(r.timed_out) << r.describe();
  EXPECT_LT(after, 5.0) << "usprobe took that long to stop after SIGINT";
  EXPECT_EQ(r.exit_code(), 128 + SIGINT) << r.describe();
  EXPECT_EQ(r.out.find("slept"), std::string::npos) << "the command was not interrupted\n"
                                                    << r.describe();
  Json total = only_total(r);
  EXPECT_EQ(hits_of(total, "exe:e2e_work"), 3u) << total.dump();
  EXPECT_EQ(total.value("exit_status", -1), 128 + SIGINT) << total.dump();
}

TEST(CliCount, IntervalReportsComeWhileTheCommandRunsThenTheTotal) {
  // 6 rounds of 100 calls, 150 ms apart: about 0.9 s, reported every 0.2 s.
  Output r = run({e2e::cli(), "count", "--json", "-i", "0.2", "exe:e2e_work", "--", e2e::target(),
                  "ticks", "6", "150"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> all = reports_of(r);
  ASSERT_GE(all.size(), 3u) << r.describe();
  uint64_t interval_sum = 0;
  int intervals_with_hits = 0;
  for (size_t i = 0; i + 1 < all.size(); ++i) {
    EXPECT_EQ(all[i].value("type", ""), "interval") << all[i].dump();
    EXPECT_GT(all[i].value("elapsed_s", 0.0), 0.0) << all[i].dump();
    const uint64_t hits = hits_of(all[i], "exe:e2e_work");
    interval_sum += hits;
    intervals_with_hits += hits > 0;
  }
  EXPECT_GE(intervals_with_hits, 2) << r.describe();
  const Json &total = all.back();
  EXPECT_EQ(total.value("type", ""), "total") << total.dump();
  EXPECT_EQ(hits_of(total, "exe:e2e_work"), 600u) << total.dump();
  // Interval reports count their own interval; the total counts everything.
  EXPECT_LE(interval_sum, 600u) << r.describe();
  EXPECT_GE(total.value("elapsed_s", 0.0), 0.85) << total.dump();
}

TEST(CliCount, DurationEndsTheCountAfterThatTime) {
  Output r = run({e2e::cli(), "count", "--json", "-d", "0.5", "exe:e2e_work", "--", e2e::target(),
                  "sleep", "30"},
                 std::chrono::seconds(20));
  ASSERT_FALSE(r.timed_out) << r.describe();
  EXPECT_LT(r.seconds, 5.0) << r.describe();
  std::vector<Json> all = reports_of(r);
  ASSERT_FALSE(all.empty()) << r.describe();
  const Json &total = all.back();
  EXPECT_EQ(total.value("type", ""), "total") << total.dump();
  EXPECT_EQ(hits_of(total, "exe:e2e_work"), 3u) << total.dump();
  EXPECT_GE(total.value("elapsed_s", 0.0), 0.45) << total.dump();
  EXPECT_LT(total.value("elapsed_s", 1e9), 5.0) << total.dump();
}

TEST(CliCount, OutputFileGetsTheReportAndStdoutKeepsTheCommandsOutput) {
  e2e::TempDir dir;
  const std::string json_file = dir.file("report.json"), text_file = dir.file("report.txt");
  Output r = run({e2e::cli(), "count", "--json", "-o", json_file, "exe:e2e_work", "--",
                  e2e::target(), "calls", "50"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out, "calls 50\n");
  EXPECT_TRUE(e2e::reports(r.err).empty()) << r.describe();
  std::vector<Json> in_file = e2e::reports(e2e::read_file(json_file));
  ASSERT_EQ(in_file.size(), 1u) << e2e::read_file(json_file);
  EXPECT_EQ(in_file[0].value("type", ""), "total");
  EXPECT_EQ(hits_of(in_file[0], "exe:e2e_work"), 50u) << in_file[0].dump();

  Output t = run(
      {e2e::cli(), "count", "-o", text_file, "exe:e2e_work", "--", e2e::target(), "calls", "50"});
  ASSERT_EQ(t.exit_code(), 0) << t.describe();
  EXPECT_EQ(t.out, "calls 50\n");
  const std::string text = e2e::read_file(text_file);
  EXPECT_NE(text.find("Total over "), std::string::npos) << text;
  EXPECT_EQ((t.out + t.err).find("Total over "), std::string::npos) << t.describe();
}

TEST(CliCount, TextReportHasAHeaderAndOneRowPerProbeByHits) {
  Output r = run(
      {e2e::cli(), "count", "exe:e2e_greet", "exe:e2e_work", "--", e2e::target(), "calls", "1000"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  // Wherever the CLI writes it, the report is a block of lines.
  std::vector<std::string> all = e2e::lines(r.out);
  for (const std::string &line : e2e::lines(r.err)) all.push_back(line);
  const rx::regex total_line(R"(^Total over [0-9]+\.[0-9]{3} s \(exit status 0\):$)");
  size_t at = 0;
  while (at < all.size() && !rx::regex_match(all[at], total_line)) ++at;
  ASSERT_LT(at, all.size()) << "no \"Total over N.NNN s (exit status 0):\" line\n" << r.describe();
  ASSERT_LT(at + 3, all.size()) << r.describe();
  EXPECT_EQ(e2e::words(all[at + 1]), (std::vector<std::string>{"PROBE", "HITS", "MISSED"}))
      << r.describe();
  EXPECT_EQ(e2e::words(all[at + 2]), (std::vector<std::string>{"exe:e2e_work", "1000", "0"}))
      << r.describe();
  // A probe that was not hit has no row: the last line counts it.
  EXPECT_EQ(all[at + 3], "(1 probe not hit; --all shows them)") << r.describe();
}

TEST(CliCount, UprobePrefixIsAcceptedAndLeftOutOfTheName) {
  Output r = run(
      {e2e::cli(), "count", "--json", "uprobe:exe:e2e_work", "--", e2e::target(), "calls", "10"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Json total = only_total(r);
  ASSERT_EQ(total["probes"].size(), 1u) << total.dump();
  EXPECT_EQ(hits_of(total, "exe:e2e_work"), 10u) << total.dump();
}

TEST(CliCount, UretprobePrefixCountsReturnsUnderItsOwnName) {
  Output r = run({e2e::cli(), "count", "--json", "uretprobe:exe:e2e_work", "exe:e2e_work", "--",
                  e2e::target(), "calls", "300"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Json total = only_total(r);
  ASSERT_EQ(total["probes"].size(), 2u) << total.dump();
  EXPECT_EQ(hits_of(total, "uretprobe:exe:e2e_work"), 300u) << total.dump();
  EXPECT_EQ(hits_of(total, "exe:e2e_work"), 300u) << total.dump();
}

TEST(CliCount, GlobProbesEveryMatchingFunction) {
  Output r = run({e2e::cli(), "count", "--json", "exe:e2e_*", "--", e2e::target(), "greet"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Json total = only_total(r);
  std::set<std::string> names;
  for (const Json &p : total["probes"]) names.insert(p.value("probe", ""));
  EXPECT_EQ(names, (std::set<std::string>{"exe:e2e_work", "exe:e2e_greet", "exe:e2e_args"}))
      << total.dump();
  EXPECT_EQ(hits_of(total, "exe:e2e_greet"), 5u) << total.dump();
  EXPECT_EQ(hits_of(total, "exe:e2e_work"), 0u) << total.dump();
  EXPECT_EQ(hits_of(total, "exe:e2e_args"), 0u) << total.dump();
  ASSERT_FALSE(total["probes"].empty());
  EXPECT_EQ(total["probes"][0].value("probe", ""), "exe:e2e_greet") << total.dump();
}

// -r (funccount's): each SYMBOL is a regular expression, on a real library as on the program; a
// duration with a unit is taken (long enough never to end the command first: at 500 ms, a loaded
// machine ended it before its ten calls); a run with every probe on a jump ends without a
// summary line.
TEST(CliCount, RegexSelectsExactlyTheMatchingFunctions) {
  e2e::TempDir dir;
  const std::string report = dir.file("report.json");
  Output r =
      run({e2e::cli(), "count", "--json", "-o", report, "-d", "30000ms", "-r",
           "libc:^str(len|cmp)$", "exe:^e2e_(work|greet)$", "--", e2e::target(), "calls", "10"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> all = e2e::reports(e2e::read_file(report));
  ASSERT_EQ(all.size(), 1u) << e2e::read_file(report);
  std::set<std::string> names;
  for (const Json &p : all[0]["probes"]) names.insert(p.value("probe", ""));
  EXPECT_EQ(names,
            (std::set<std::string>{"libc:strlen", "libc:strcmp", "exe:e2e_work", "exe:e2e_greet"}))
      << all[0].dump();
  EXPECT_EQ(hits_of(all[0], "exe:e2e_work"), 10u) << all[0].dump();
  EXPECT_EQ(r.err.find("int3 path"), std::string::npos) << r.describe();
  EXPECT_EQ(r.err.find("never placed"), std::string::npos) << r.describe();
}

// Probes that pay a trap per hit are named when the session ends, with the reason and the cost.
TEST(CliCount, ProbesOnTheInt3PathAreNamedAtTheEnd) {
  e2e::TempDir dir;
  const std::string report = dir.file("report.json");
  Output r = run({"/usr/bin/env", "USPROBE_FORCE_INT3=1", e2e::cli(), "count", "--json", "-o",
                  report, "exe:e2e_work", "exe:e2e_greet", "--", e2e::target(), "calls", "10"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> all = e2e::reports(e2e::read_file(report));
  ASSERT_EQ(all.size(), 1u) << e2e::read_file(report);
  EXPECT_EQ(hits_of(all[0], "exe:e2e_work"), 10u) << all[0].dump();
  // The busiest first, with its hits; the reason they share once, at the end.
  std::vector<std::string> err = e2e::lines(r.err);
  EXPECT_EQ(
      std::count_if(err.begin(), err.end(),
                    [](const std::string &line) {
                      return e2e::starts_with(
                                 line,
                                 "usprobe: 2 probes are on the int3 path (a trap per hit, ~2 "
                                 "us each; ") &&
                             line.find("in all): exe:e2e_work (10 hits), exe:e2e_greet") !=
                                 std::string::npos &&
                             line.ends_with(": the int3 path was asked for (USPROBE_FORCE_INT3)");
                    }),
      1)
      << r.describe();
}

// The offset of e2e_work as `usprobe list --json` gives it, checked against src/elf.
uint64_t listed_offset_of_e2e_work() {
  Output r = run({e2e::cli(), "list", e2e::target(), "e2e_work", "--json"});
  EXPECT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> all = e2e::json_lines(r.out);
  EXPECT_EQ(all.size(), 1u) << r.describe();
  if (all.size() != 1 || !all[0].contains("functions") || all[0]["functions"].size() != 1) {
    ADD_FAILURE() << "unexpected list output\n" << r.describe();
    return 0;
  }
  const uint64_t offset = all[0]["functions"][0].value("offset", uint64_t{0});
  auto fn = e2e::function_in(e2e::target(), "e2e_work");
  EXPECT_TRUE(fn.has_value());
  if (fn) {
    EXPECT_EQ(offset, fn->offset);
  }
  return offset;
}

TEST(CliCount, SymbolPlusZeroCountsLikeTheSymbol) {
  Output r =
      run({e2e::cli(), "count", "--json", "exe:e2e_work+0", "--", e2e::target(), "calls", "20"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Json total = only_total(r);
  ASSERT_EQ(total["probes"].size(), 1u) << total.dump();
  EXPECT_EQ(hits_of(total, "exe:e2e_work+0"), 20u) << total.dump();
}

TEST(CliCount, FileOffsetOfTheFunctionCountsLikeTheSymbol) {
  const uint64_t offset = listed_offset_of_e2e_work();
  ASSERT_NE(offset, 0u);
  char spec[64];
  std::snprintf(spec, sizeof spec, "exe:0x%llx", static_cast<unsigned long long>(offset));
  Output r = run({e2e::cli(), "count", "--json", spec, "--", e2e::target(), "calls", "20"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Json total = only_total(r);
  ASSERT_EQ(total["probes"].size(), 1u) << total.dump();
  EXPECT_EQ(hits_of(total, spec), 20u) << total.dump();
}

TEST(CliCount, PathOfTheExecutableWorksLikeExe) {
  const std::string spec = std::string(e2e::target()) + ":e2e_work";
  Output r = run({e2e::cli(), "count", "--json", spec, "--", e2e::target(), "calls", "20"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Json total = only_total(r);
  ASSERT_EQ(total["probes"].size(), 1u) << total.dump();
  EXPECT_EQ(hits_of(total, spec), 20u) << total.dump();
}

// A text report's table: the rows (name, hits, missed) under the "PROBE HITS MISSED" header, and
// the line after them that says what was left out ("" when none).
struct Table {
  std::vector<std::tuple<std::string, uint64_t, uint64_t>> rows;
  std::string left_out;
  std::string heading;  // the line above the header
};

Table table_in(const std::string &text) {
  Table t;
  std::vector<std::string> all = e2e::lines(text);
  size_t at = 0;
  while (at < all.size() &&
         !(all[at].find("PROBE") != std::string::npos && all[at].find("HITS") != std::string::npos))
    ++at;
  if (at == all.size()) {
    ADD_FAILURE() << "no table in\n" << text;
    return t;
  }
  if (at > 0) t.heading = all[at - 1];
  for (++at; at < all.size(); ++at) {
    if (all[at].starts_with("(")) {
      t.left_out = all[at];
      break;
    }
    std::vector<std::string> w = e2e::words(all[at]);
    if (w.size() < 3) break;
    // The name may have blanks ("libc:memcpy (also memmove)"): it is what the two numbers follow.
    std::string name = all[at];
    for (int number = 0; number < 2; ++number) {
      name.erase(name.find_last_not_of(' ') + 1);
      name.erase(name.rfind(' ') + 1);
    }
    name.erase(name.find_last_not_of(' ') + 1);
    t.rows.emplace_back(name, std::stoull(w[w.size() - 2]), std::stoull(w.back()));
  }
  return t;
}

constexpr const char *kSqlite = "/usr/bin/sqlite3";

// All of libc and sqlite3's API under sqlite3 (about 5,000 probes, 150 of them hit): the table
// shows the rows that were hit, busiest first, and counts the others in its last line; memcpy and
// memmove, IFUNCs that this CPU resolves to one implementation, which the glob also names, are
// one row. --all brings back the rows not hit, and the rows that were hit keep their counts.
TEST(CliCount, TheTableShowsTheProbesHitBusiestFirstWithOneRowPerSite) {
  if (!e2e::file_exists(kSqlite)) GTEST_SKIP() << kSqlite << " is not installed (apt sqlite3)";
  e2e::TempDir dir;
  const std::string file = dir.file("report.txt"), all_file = dir.file("all.txt");
  const std::string sql = std::string(".read ") + e2e::workload_sql();
  Output r = run({e2e::cli(), "count", "-o", file, "libc:*", "libsqlite3:sqlite3_*", "--", kSqlite,
                  ":memory:", sql});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Table t = table_in(e2e::read_file(file));
  ASSERT_GT(t.rows.size(), 20u) << e2e::read_file(file);
  rx::smatch hidden;
  ASSERT_TRUE(rx::regex_match(t.left_out, hidden,
                              rx::regex(R"(\(([0-9]+) probes not hit; --all shows them\))")))
      << t.left_out;
  EXPECT_GT(std::stoul(hidden[1]), 3000u) << t.left_out;
  std::string memcpy_row;
  for (size_t i = 0; i < t.rows.size(); ++i) {
    auto [name, hits, missed] = t.rows[i];
    EXPECT_TRUE(hits > 0 || missed > 0) << name;
    if (i > 0) {
      auto [prev, prev_hits, prev_missed] = t.rows[i - 1];
      EXPECT_TRUE(prev_hits > hits || (prev_hits == hits && prev < name))
          << "not sorted: " << prev << " " << prev_hits << ", then " << name << " " << hits;
    }
    if (name.starts_with("libc:memcpy") || name.starts_with("libc:memmove") ||
        name.find(" memcpy") != std::string::npos || name.find(" memmove") != std::string::npos) {
      EXPECT_TRUE(memcpy_row.empty())
          << "two rows for memcpy's code: " << memcpy_row << ", " << name;
      memcpy_row = name;
    }
  }
  EXPECT_TRUE(
      rx::regex_match(memcpy_row, rx::regex(R"(libc:memcpy \(also memmove, __mem[a-z0-9_]+\))")))
      << memcpy_row;

  Output a = run({e2e::cli(), "count", "--all", "-o", all_file, "libsqlite3:sqlite3_*", "--",
                  kSqlite, ":memory:", sql});
  ASSERT_EQ(a.exit_code(), 0) << a.describe();
  Table all = table_in(e2e::read_file(all_file));
  EXPECT_EQ(all.left_out, "") << e2e::read_file(all_file);
  std::map<std::string, uint64_t> hit, hit_with_all;
  size_t zero = 0;
  for (auto &[name, hits, missed] : t.rows)
    if (name.starts_with("libsqlite3:")) hit[name] = hits;
  for (auto &[name, hits, missed] : all.rows) {
    if (hits == 0)
      ++zero;
    else
      hit_with_all[name] = hits;
  }
  EXPECT_GT(zero, 100u) << e2e::read_file(all_file);
  EXPECT_EQ(hit, hit_with_all);
}

// memmove is an IFUNC, and so is memcpy, which this CPU resolves to the same code: one patch,
// one probe, each call counted once (the command makes 1,000 calls of memmove; libc's own start
// makes a few more).
TEST(CliCount, AnIfuncAndItsAliasAreOneProbeCountedOnce) {
  e2e::TempDir dir;
  const std::string file = dir.file("report.json");
  Output r = run({e2e::cli(), "count", "--json", "-o", file, "libc:memcpy", "libc:memmove", "--",
                  e2e::target(), "libc", "1000"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> reports = e2e::reports(e2e::read_file(file));
  ASSERT_EQ(reports.size(), 1u) << e2e::read_file(file);
  const Json &total = reports[0];
  ASSERT_EQ(total["probes"].size(), 1u) << total.dump();
  const Json &p = total["probes"][0];
  EXPECT_EQ(p.value("probe", ""), "libc:memcpy") << p.dump();
  EXPECT_EQ(p["aliases"], Json::array({"libc:memmove"})) << p.dump();
  EXPECT_GE(p.value("hits", 0u), 1000u) << p.dump();
  EXPECT_LT(p.value("hits", 0u), 1100u) << "counted twice: " << p.dump();
}

// --top 3 keeps the 3 busiest rows, --per-pid names each row's process, -T puts the time of day
// above the report (funccount -T); the last line says what was left out.
TEST(CliCount, TopPerPidAndTimestampShapeTheTable) {
  e2e::TempDir dir;
  const std::string file = dir.file("report.txt");
  Output r = run({e2e::cli(), "count", "--top", "3", "--per-pid", "-T", "-o", file, "libc:*", "--",
                  e2e::target(), "libc", "200"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const std::string text = e2e::read_file(file);
  std::vector<std::string> lines = e2e::lines(text);
  ASSERT_GE(lines.size(), 6u) << text;
  EXPECT_TRUE(rx::regex_match(lines[0], rx::regex("[0-9]{2}:[0-9]{2}:[0-9]{2}"))) << text;
  EXPECT_TRUE(lines[1].starts_with("Total over ")) << text;
  EXPECT_EQ(e2e::words(lines[2]),
            (std::vector<std::string>{"PID", "COMM", "PROBE", "HITS", "MISSED"}))
      << text;
  std::set<std::string> names;
  for (size_t i = 3; i < 6; ++i) {
    std::vector<std::string> w = e2e::words(lines[i]);
    ASSERT_GE(w.size(), 5u) << lines[i];
    EXPECT_EQ(w[1], "e2e_target") << lines[i];
    names.insert(w[2]);
  }
  EXPECT_TRUE(names.contains("libc:getppid")) << text;
  ASSERT_EQ(lines.size(), 7u) << text;
  EXPECT_TRUE(rx::regex_match(
      lines[6], rx::regex(R"(\([0-9]+ more rows? below the top 3; [0-9]+ not hit\))")))
      << text;
}

// --no-demangle: the names a glob gives C++ functions stay as the ELF file spells them.
TEST(CliCount, NoDemangleKeepsTheMangledNames) {
  e2e::TempDir dir;
  const std::string file = dir.file("report.txt");
  Output r = run({e2e::cli(), "count", "--no-demangle", "-o", file, "exe:stacks_demo::scale*", "--",
                  STACKS_TARGET_CC});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Table t = table_in(e2e::read_file(file));
  std::map<std::string, uint64_t> rows;
  for (auto &[name, hits, missed] : t.rows) rows[name] = hits;
  EXPECT_EQ(rows, (std::map<std::string, uint64_t>{{"exe:_ZN11stacks_demo5scaleEi", 3},
                                                   {"exe:_ZN11stacks_demo5scaleEd", 2}}))
      << e2e::read_file(file);
}

}  // namespace

namespace {

// C++ functions by their demangled names (tests/e2e/stacks_target_cc.cc): the overloads
// stacks_demo::scale(int), 3 calls, and stacks_demo::scale(double), 2 calls.
TEST(CliCount, ADemangledNameWithParametersProbesThatFunctionUnderTheUsersSpelling) {
  Output r =
      run({e2e::cli(), "count", "--json", "exe:stacks_demo::scale(int)", "--", STACKS_TARGET_CC});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Json total = only_total(r);
  ASSERT_EQ(total["probes"].size(), 1u) << total.dump();
  EXPECT_EQ(hits_of(total, "exe:stacks_demo::scale(int)"), 3u) << total.dump();
}

TEST(CliCount, ADemangledNameWithoutParametersProbesEveryOverload) {
  Output r =
      run({e2e::cli(), "count", "--json", "uprobe:exe:stacks_demo::scale", "--", STACKS_TARGET_CC});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  Json total = only_total(r);
  ASSERT_EQ(total["probes"].size(), 2u) << total.dump();
  EXPECT_EQ(hits_of(total, "exe:stacks_demo::scale(int)"), 3u) << total.dump();
  EXPECT_EQ(hits_of(total, "exe:stacks_demo::scale(double)"), 2u) << total.dump();
}

TEST(CliCount, AGlobOverCxxNamesReportsThemDemangledAndAMangledNameKeepsItsSpelling) {
  Output r = run({e2e::cli(), "count", "-o", "-", "exe:stacks_demo::*",
                  "uretprobe:exe:_ZN11stacks_demo5scaleEd", "--", STACKS_TARGET_CC});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::map<std::string, uint64_t> rows;
  for (const std::string &line : e2e::lines(r.out)) {
    std::vector<std::string> w = e2e::words(line);
    if (w.size() == 3 && (w[0].starts_with("exe:") || w[0].starts_with("uretprobe:")))
      rows[w[0]] = std::stoull(w[1]);
  }
  EXPECT_EQ(rows, (std::map<std::string, uint64_t>{{"exe:stacks_demo::Parser::parse(int)", 4},
                                                   {"exe:stacks_demo::scale(int)", 3},
                                                   {"exe:stacks_demo::scale(double)", 2},
                                                   {"exe:stacks_demo::run<int>(int)", 1},
                                                   {"uretprobe:exe:_ZN11stacks_demo5scaleEd", 2}}))
      << r.describe() << r.out;
}

// The report never shares a stream with the command's output: by default it is on stderr and
// stdout is exactly the command's; with -o - stdout is the report alone (each line JSON, as a
// parser that is not ours reads it) and the command's output is on stderr, or with --cmd-output
// in that file, byte for byte.
TEST(CliCount, TheReportAndTheCommandsOutputNeverShareAStream) {
  e2e::TempDir dir;
  const Output plain = run({e2e::target(), "calls", "50"});
  ASSERT_EQ(plain.out, "calls 50\n") << plain.describe();

  Output text = run({e2e::cli(), "count", "exe:e2e_work", "--", e2e::target(), "calls", "50"});
  ASSERT_EQ(text.exit_code(), 0) << text.describe();
  EXPECT_EQ(text.out, plain.out) << text.describe();
  EXPECT_TRUE(rx::regex_search(text.err, rx::regex(R"(\nexe:e2e_work +50 +0\n)")))
      << text.describe();

  Output json = run({e2e::cli(), "count", "--json", "-o", "-", "exe:e2e_work", "--", e2e::target(),
                     "calls", "50"});
  ASSERT_EQ(json.exit_code(), 0) << json.describe();
  EXPECT_NE(json.err.find(plain.out), std::string::npos) << json.describe();
  const std::string report = dir.file("report.json");
  FILE *f = std::fopen(report.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs(json.out.c_str(), f);
  std::fclose(f);
  Output parsed = run({"/usr/bin/python3", "-c",
                       "import json, sys\n"
                       "lines = [json.loads(l) for l in open(sys.argv[1])]\n"
                       "print(len(lines), lines[-1]['type'], lines[-1]['probes'][0]['hits'])",
                       report});
  EXPECT_EQ(parsed.out, "1 total 50\n") << parsed.describe() << json.describe();

  const std::string command_output = dir.file("command.txt");
  Output file = run({e2e::cli(), "count", "--json", "-o", "-", "--cmd-output", command_output,
                     "exe:e2e_work", "--", e2e::target(), "calls", "50"});
  ASSERT_EQ(file.exit_code(), 0) << file.describe();
  EXPECT_EQ(e2e::read_file(command_output), plain.out);
  EXPECT_EQ(file.err.find(plain.out), std::string::npos) << file.describe();
  EXPECT_EQ(hits_of(only_total(file), "exe:e2e_work"), 50u) << file.describe();
}

// usprobe's own descriptors in the command (the shared region, the engine's /proc/self/mem) sit
// near the top of the numbers: the command's own open() and pipe() get the numbers they get
// unprobed, so a program that prints one, and a trace of open()'s returns, show what they show
// without usprobe.
TEST(CliCount, TheCommandsOwnDescriptorsAreNumberedAsUnprobed) {
  const std::vector<std::string> command = {
      "/usr/bin/python3", "-c",
      "import os\n"
      "print(os.open('/dev/null', os.O_RDONLY), *os.pipe(), os.open('/dev/null', os.O_RDONLY))"};
  if (!e2e::file_exists(command[0])) GTEST_SKIP() << command[0] << " is not installed";
  const Output plain = run(command);
  ASSERT_EQ(plain.exit_code(), 0) << plain.describe();
  std::vector<std::string> argv = {e2e::cli(), "count", "-o", "/dev/null", "libc:malloc", "--"};
  argv.insert(argv.end(), command.begin(), command.end());
  const Output probed = run(argv);
  ASSERT_EQ(probed.exit_code(), 0) << probed.describe();
  EXPECT_EQ(probed.out, plain.out) << probed.describe();
}

// A thread created while its creator blocks every signal (liblzma's workers, under xz -T2) gets
// its mask from usprobe's pthread_create without a malloc of the program's: libc:malloc counts
// what it counts when the creator blocks nothing (it counted one more per thread).
TEST(CliCount, ThreadsCreatedWithSignalsBlockedCostTheProgramNoMalloc) {
  auto mallocs = [](const char *mode) -> uint64_t {
    Output r = run({e2e::cli(), "count", "--json", "-o", "-", "libc:malloc", "exe:e2e_work", "--",
                    e2e::target(), mode, "4", "10"});
    EXPECT_EQ(r.exit_code(), 0) << r.describe();
    Json total = only_total(r);
    EXPECT_EQ(hits_of(total, "exe:e2e_work"), 40u) << total.dump();
    return hits_of(total, "libc:malloc");
  };
  const uint64_t open = mallocs("threads"), blocked = mallocs("blocked-threads");
  EXPECT_GT(open, 0u);
  EXPECT_EQ(blocked, open) << "the creator that blocks every signal paid mallocs of usprobe's";
}

// -d ends the run whatever the command does with SIGINT: a command that ignores it is killed a
// second later, the report has its hits, and usprobe exits 0 (it ended the run itself). A
// command that ends before -d keeps its own status.
TEST(CliCount, DurationEndsACommandThatIgnoresSigint) {
  e2e::TempDir dir;
  const std::string report = dir.file("report.json");
  // usprobe started with SIGINT ignored starts the command so (an ignored signal stays ignored
  // across exec): it ignores SIGINT from its first instruction, however late it starts.
  Output r = run({"/bin/sh", "-c",
                  "trap '' INT; exec \"$0\" count --json -o \"$1\" -d 0.3 exe:e2e_work -- \"$2\" "
                  "ticks 1000 10",
                  e2e::cli(), report, e2e::target()},
                 std::chrono::seconds(20));
  ASSERT_FALSE(r.timed_out) << r.describe();
  EXPECT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.err.find("usprobe: the command did not exit 1 s after -d's signal: killing it"),
            std::string::npos)
      << r.describe();
  std::vector<Json> all = e2e::reports(e2e::read_file(report));
  ASSERT_EQ(all.size(), 1u) << e2e::read_file(report);
  EXPECT_EQ(all[0].value("type", ""), "total");
  EXPECT_EQ(all[0].value("exit_status", -1), 128 + SIGKILL) << all[0].dump();
  EXPECT_GE(hits_of(all[0], "exe:e2e_work"), 100u) << all[0].dump();

  Output own = run({e2e::cli(), "count", "-o", report, "-d", "5", "--signal", "SIGTERM",
                    "exe:e2e_work", "--", e2e::target(), "exit", "3"});
  EXPECT_EQ(own.exit_code(), 3) << own.describe();
  EXPECT_EQ(own.err, "") << "nothing was killed";
}

// -n: in a script that runs two programs, only the named one places probes; the other pays
// nothing and is not counted. e2e_other makes 7 calls of getppid, e2e_target (libc 5) 5.
TEST(CliCount, CommFilterCountsOnlyTheNamedProgramOfAScript) {
  e2e::TempDir dir;
  const std::string report = dir.file("report.json");
  const std::string script =
      std::string("'") + e2e::target() + "' libc 5; '" + e2e::other() + "' 7";
  Output all = run({e2e::cli(), "count", "--json", "--per-pid", "-o", report, "libc:getppid", "--",
                    "/bin/sh", "-c", script});
  ASSERT_EQ(all.exit_code(), 0) << all.describe();
  std::vector<Json> unfiltered = e2e::reports(e2e::read_file(report));
  ASSERT_EQ(unfiltered.size(), 1u) << all.describe();
  const uint64_t every = hits_of(unfiltered[0], "libc:getppid");
  EXPECT_GE(every, 12u) << unfiltered[0].dump();

  Output named = run({e2e::cli(), "count", "--json", "--per-pid", "-n", "e2e_oth", "-o", report,
                      "libc:getppid", "--", "/bin/sh", "-c", script});
  ASSERT_EQ(named.exit_code(), 0) << named.describe();
  EXPECT_EQ(named.out, "libc 5\nother 7\n") << named.describe();
  EXPECT_EQ(named.err, "") << "no notice about the probes the other processes skipped";
  std::vector<Json> filtered = e2e::reports(e2e::read_file(report));
  ASSERT_EQ(filtered.size(), 1u) << named.describe();
  EXPECT_EQ(hits_of(filtered[0], "libc:getppid"), 7u) << filtered[0].dump();
  auto probe = e2e::probe_in(filtered[0], "libc:getppid");
  ASSERT_TRUE(probe);
  EXPECT_EQ((*probe)["pids"].size(), 1u) << "one process counted: " << probe->dump();
}

// USDT: python3.11 fires python:function__entry at each Python call while its semaphore is raised
// and (CPython 3.11 checks it only on its tracing path) a profile function is set. A script that
// calls a function 2,000 times under sys.setprofile counts exactly 2,000 more than the same script
// calling it never. The rows are named as bpftrace names the probe, with FILE as given (`exe`;
// the short form's NAME with its provider).
TEST(CliCount, UsdtPythonFunctionEntryCountsEachCallOfAScript) {
  const std::string python = "/usr/bin/python3.11";
  if (!e2e::file_exists(python)) GTEST_SKIP() << python << " is not installed";
  e2e::TempDir dir;
  auto script = [](int calls) {
    return "import sys\ndef f(n):\n    return n + 1\nsys.setprofile(slice)\nfor i in range(" +
           std::to_string(calls) + "):\n    f(i)\nsys.setprofile(None)\n";
  };
  const std::string none = dir.file("none.json");
  Output r0 =
      run({e2e::cli(), "count", "--json", "-o", none, "usdt:" + python + ":python:function__entry",
           "--", python, "-I", "-S", "-c", script(0)});
  ASSERT_EQ(r0.exit_code(), 0) << r0.describe();
  std::vector<Json> reports = e2e::reports(e2e::read_file(none));
  ASSERT_EQ(reports.size(), 1u) << e2e::read_file(none);
  const uint64_t baseline = hits_of(reports[0], "usdt:" + python + ":python:function__entry");

  const std::string text = dir.file("calls.txt");
  Output r = run({e2e::cli(), "count", "-o", text, "usdt:exe:function__entry", "--", python, "-I",
                  "-S", "-c", script(2000)});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  rx::smatch row;
  const std::string report = e2e::read_file(text);
  ASSERT_TRUE(rx::regex_search(report, row,
                               rx::regex(R"(\nusdt:exe:python:function__entry +([0-9]+) +0\n)")))
      << report;
  EXPECT_EQ(std::stoull(row[1]), baseline + 2000) << report;
}

}  // namespace
