// The ELF entry point (_start) is entered by the kernel with argc at [rsp], not called: a return
// probe there would take argc for a return address and overwrite it. Globs leave it out, a return
// probe (or latency, which times returns) on it is refused, and an entry probe on it is fine.
#include <string>

#include <gtest/gtest.h>

#include "e2e_support.h"

namespace {

using e2e::Output;

const std::string kTarget = ENTRY_TARGET;

// entry_target prints its argc when it runs.
void expect_refused(const Output &r, const std::string &mentions) {
  e2e::expect_refused(r, mentions, "argc");
}

TEST(EntryPoint, LatencyOnStartIsRefusedBeforeTheCommandStarts) {
  Output r = e2e::run({e2e::cli(), "latency", "exe:_start", "--", kTarget, "a", "b"});
  expect_refused(r, "exe:_start is the program's entry point: it is entered, not called");
}

TEST(EntryPoint, ReturnProbeOnStartIsRefused) {
  Output r = e2e::run({e2e::cli(), "count", "uretprobe:exe:_start", "--", kTarget, "a", "b"});
  expect_refused(r, "exe:_start is the program's entry point: it is entered, not called");
}

TEST(EntryPoint, EntryProbeOnStartCountsOnceAndLeavesArgcAlone) {
  Output r = e2e::run({e2e::cli(), "count", "--json", "exe:_start", "--", kTarget, "a", "b"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("argc 3\n"), std::string::npos) << r.describe();
  EXPECT_EQ(e2e::hits_of(e2e::only_total(r), "exe:_start"), 1u) << r.describe();
}

TEST(EntryPoint, LatencyOverEveryFunctionOfTheProgramLeavesStartOut) {
  Output r = e2e::run({e2e::cli(), "latency", "--json", "exe:*", "--", kTarget, "5", "x"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("argc 3\nsum 85\n"), std::string::npos) << r.describe();
  EXPECT_EQ(r.out.find("_start"), std::string::npos) << r.describe();
}

TEST(EntryPoint, LatencyOverEveryFunctionOfPythonRunsIt) {
  const std::string python = "/usr/bin/python3.11";
  if (!e2e::file_exists(python)) GTEST_SKIP() << python << " is not installed";
  Output r = e2e::run({e2e::cli(), "latency", "exe:*", "--", python, "-c", "print(1)"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_TRUE(e2e::starts_with(r.out, "1\n")) << r.describe();
}

}  // namespace
