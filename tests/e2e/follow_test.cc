// Probes on a library the command loads only after it started (tests/e2e/dlopen_target.c, which
// is not linked with tests/e2e/dlopen_lib.c): the CLI resolves them although the command does not
// link the library, the agent does not report them as failures, and the engine places them when
// the command dlopens the library, removes them at dlclose and places them again at the next
// dlopen, so that every call is counted.
#include <algorithm>
#include <string>
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
using e2e::run;

const char *dlopen_target() {
  return DLOPEN_TARGET;
}
const char *dlopen_lib() {
  return DLOPEN_LIB;
}

std::string lib_dir() {
  std::string lib = e2e::realpath_of(dlopen_lib());
  return lib.substr(0, lib.rfind('/'));
}

// The target ran its rounds, and the library really left the process at each dlclose (so that
// the second round needed the probe placed again).
void expect_rounds_ran(const Output &r, int k, int rounds) {
  for (int i = 1; i <= rounds; ++i)
    EXPECT_NE(r.out.find("round " + std::to_string(i) + " mapped=0\n"), std::string::npos)
        << r.describe();
  EXPECT_NE(r.out.find("calls " + std::to_string(k * rounds) + "\n"), std::string::npos)
      << r.describe();
}

TEST(CliFollow, CountsEveryCallOfALibraryLoadedAfterStartAcrossDlcloseAndDlopen) {
  const std::string probe = std::string(dlopen_lib()) + ":dlopen_lib_work";
  const int k = 1000;
  Output r =
      run({e2e::cli(), "count", probe, "--", dlopen_target(), dlopen_lib(), std::to_string(k)});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  expect_rounds_ran(r, k, 2);
  // The text report: the probe's row holds 2K hits and nothing is missed.
  std::vector<std::string> all = e2e::lines(r.out);
  for (const std::string &line : e2e::lines(r.err)) all.push_back(line);
  const rx::regex total_line(R"(^Total over [0-9]+\.[0-9]{3} s \(exit status 0\):$)");
  size_t at = 0;
  while (at < all.size() && !rx::regex_match(all[at], total_line)) ++at;
  ASSERT_LT(at + 2, all.size()) << r.describe();
  EXPECT_EQ(e2e::words(all[at + 2]), (std::vector<std::string>{probe, std::to_string(2 * k), "0"}))
      << r.describe();
  // Waiting for the dlopen is not a failure.
  EXPECT_EQ(r.err.find("not placed"), std::string::npos) << r.describe();
}

TEST(CliFollow, JsonCountsTheLoadedLibraryAndAProbeNeverHitStaysAtZero) {
  const std::string work = std::string(dlopen_lib()) + ":dlopen_lib_work";
  const std::string idle = std::string(dlopen_lib()) + ":dlopen_lib_idle";
  Output r = run(
      {e2e::cli(), "count", "--json", work, idle, "--", dlopen_target(), dlopen_lib(), "250", "3"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  expect_rounds_ran(r, 250, 3);
  Json total = only_total(r);
  EXPECT_EQ(hits_of(total, work), 750u) << total.dump();
  EXPECT_EQ(hits_of(total, idle), 0u) << total.dump();
  auto p = e2e::probe_in(total, work);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->value("missed", 1u), 0u) << p->dump();
  EXPECT_EQ(p->value("location", ""), e2e::realpath_of(dlopen_lib()) + ":dlopen_lib_work")
      << p->dump();
  EXPECT_EQ(r.err.find("not placed"), std::string::npos) << r.describe();
}

TEST(CliFollow, VerboseSaysTheProbesWaitForTheirLibrary) {
  const std::string work = std::string(dlopen_lib()) + ":dlopen_lib_work";
  const std::string idle = std::string(dlopen_lib()) + ":dlopen_lib_idle";
  Output r = run(
      {e2e::cli(), "count", "-v", "--json", work, idle, "--", dlopen_target(), dlopen_lib(), "10"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.err.find("2 probes wait for their library to be loaded"), std::string::npos)
      << r.describe();
  EXPECT_EQ(r.err.find("not placed"), std::string::npos) << r.describe();
  EXPECT_EQ(hits_of(only_total(r), work), 20u);
}

TEST(CliFollow, AShortNameFindsALibraryTheCommandMayLoadInItsLibraryPath) {
  // The command does not link libdlopen_lib.so: the name is looked up in LD_LIBRARY_PATH, as the
  // command's dlopen would.
  Output r = run({"/usr/bin/env", "LD_LIBRARY_PATH=" + lib_dir(), e2e::cli(), "count", "--json",
                  "libdlopen_lib:dlopen_lib_work", "--", dlopen_target(), dlopen_lib(), "40"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  expect_rounds_ran(r, 40, 2);
  Json total = only_total(r);
  EXPECT_EQ(hits_of(total, "libdlopen_lib:dlopen_lib_work"), 80u) << total.dump();
  auto p = e2e::probe_in(total, "libdlopen_lib:dlopen_lib_work");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->value("location", ""), e2e::realpath_of(dlopen_lib()) + ":dlopen_lib_work")
      << p->dump();
}

TEST(CliFollow, WithoutTheLibraryPathTheShortNameIsAnError) {
  Output r = run({"/usr/bin/env", "-u", "LD_LIBRARY_PATH", e2e::cli(), "count",
                  "libdlopen_lib:dlopen_lib_work", "--", dlopen_target(), dlopen_lib(), "1"});
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  EXPECT_NE(r.err.find("library 'libdlopen_lib' not found"), std::string::npos) << r.describe();
  EXPECT_EQ(r.out.find("calls"), std::string::npos) << "the command must not run\n" << r.describe();
}

// The library is unloaded before the command exits, so the mappings the agent writes at exit do
// not hold it: its frames are named from the mappings written right after its dlopen (the engine's
// mapping listener, usprobe_on_mapping_change).
TEST(CliFollow, StacksNameTheFramesOfALibraryUnloadedBeforeExit) {
  const std::string probe = std::string(dlopen_lib()) + ":dlopen_lib_work";
  Output r = run({e2e::cli(), "stacks", probe, "--", dlopen_target(), dlopen_lib(), "5", "2"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  expect_rounds_ran(r, 5, 2);
  // The report is on stderr, the command's own output on stdout.
  EXPECT_NE(r.err.find(probe + ": 10 stacks, 1 distinct"), std::string::npos) << r.describe();
  const std::vector<std::string> lines = e2e::lines(r.err);
  auto first = std::find(lines.begin(), lines.end(), "    dlopen_lib_work");
  ASSERT_NE(first, lines.end()) << r.describe();
  ASSERT_NE(first + 1, lines.end());
  EXPECT_EQ(first[1], "    main") << r.describe();
  EXPECT_EQ(r.err.find("[unknown]"), std::string::npos) << r.describe();
}

// A library the command never loads: its probe's zero means "never there", not "never called",
// and the report says so without -v; a library it loads late gets no such line.
TEST(CliFollow, ALibraryTheCommandNeverLoadsIsSaidSoAfterTheReport) {
  const std::string probe = std::string(dlopen_lib()) + ":dlopen_lib_work";
  // The report elsewhere: stderr holds usprobe's messages alone.
  Output r = run({e2e::cli(), "count", "-o", "/dev/null", probe, "exe:e2e_work", "--",
                  e2e::target(), "calls", "3"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<std::string> err = e2e::lines(r.err);
  ASSERT_EQ(err.size(), 1u) << r.describe();
  EXPECT_EQ(err[0], "usprobe: " + e2e::realpath_of(dlopen_lib()) +
                        " was never loaded by the command: " + probe + " was not placed");

  Output loaded = run({e2e::cli(), "count", probe, "--", dlopen_target(), dlopen_lib(), "10"});
  ASSERT_EQ(loaded.exit_code(), 0) << loaded.describe();
  EXPECT_EQ(loaded.err.find("never loaded"), std::string::npos) << loaded.describe();
}

}  // namespace
