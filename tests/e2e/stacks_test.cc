// `usprobe stacks`: tests/e2e/stacks_target.c (built without frame pointers, so only DWARF
// unwinding sees its callers) run under the CLI. Each call path to the probed function must come
// out as one stack with its exact count and its frames, innermost first, in the text report, the
// folded lines and the flame graph; and so must the stacks of a forked child that leaves no exit
// handlers run, of an exec'd image, and of a frame-pointer build walked with --fp. C++ frames come
// out demangled; the command's exit status passes through. Hot probes lose nothing: a million
// stacks are counted in the agent's stack tables, exactly.
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "e2e_support.h"

#include "support/text_match.h"

namespace rx = usprobe::test;

namespace {

using e2e::Output;
using e2e::run;

const char *stacks_target() {
  return STACKS_TARGET;
}
const char *stacks_target_fp() {
  return STACKS_TARGET_FP;
}
const char *stacks_target_cc() {
  return STACKS_TARGET_CC;
}

const std::vector<std::string> kPathA = {"shared_leaf", "path_a", "main"};
const std::vector<std::string> kPathB = {"shared_leaf", "middle", "path_b", "main"};

struct Stack {
  std::vector<std::string> frames;  // innermost first
  std::string comm;
  uint64_t count = 0;
};

struct TextReport {
  std::vector<std::string> probes;  // the "PROBE: N stacks, M distinct" lines
  std::vector<Stack> stacks;        // all probes', in report order
  std::string summary;              // "N stacks, M distinct, K lost"
};

// The text report's layout (stacks.cc): a "PROBE: ..." line per probe, then per stack its frames
// (4 spaces), "    - COMM" and the count (8 spaces), stacks separated by blank lines; finally the
// summary. Lines before the first probe line (the command's own output) are skipped.
TextReport parse_report(const std::string &text) {
  TextReport r;
  Stack current;
  bool started = false;
  for (const std::string &line : e2e::lines(text)) {
    if (!line.empty() && line[0] != ' ') {
      if (line.find(" stacks, ") != std::string::npos && line.find(": ") != std::string::npos) {
        r.probes.push_back(line);
        started = true;
      } else if (started && line.find(" lost") != std::string::npos) {
        r.summary = line;
      }
      continue;
    }
    if (!started || line.empty()) continue;
    if (line.starts_with("        ")) {
      current.count = std::stoull(line.substr(8));
      r.stacks.push_back(std::move(current));
      current = Stack();
    } else if (line.starts_with("    - ")) {
      current.comm = line.substr(6);
    } else if (line.starts_with("    ")) {
      current.frames.push_back(line.substr(4));
    }
  }
  return r;
}

// Whether `frames` starts with `prefix` (the frames below main are libc's and _start).
bool starts_with_frames(const std::vector<std::string> &frames,
                        const std::vector<std::string> &prefix) {
  return frames.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), frames.begin());
}

std::string joined(const std::vector<std::string> &frames) {
  std::string out;
  for (const std::string &f : frames) out += (out.empty() ? "" : ", ") + f;
  return out;
}

// The two call paths, each once, with their counts: path_b's (more calls) first.
void expect_two_paths(const TextReport &r, uint64_t a, uint64_t b, const std::string &context) {
  ASSERT_EQ(r.stacks.size(), 2u) << context;
  const Stack &first = r.stacks[0], &second = r.stacks[1];
  const Stack &sb = b >= a ? first : second, &sa = b >= a ? second : first;
  EXPECT_EQ(sb.count, b) << context;
  EXPECT_TRUE(starts_with_frames(sb.frames, kPathB)) << joined(sb.frames) << "\n" << context;
  EXPECT_EQ(sa.count, a) << context;
  EXPECT_TRUE(starts_with_frames(sa.frames, kPathA)) << joined(sa.frames) << "\n" << context;
  EXPECT_EQ(sa.comm, "stacks_target") << context;
  EXPECT_EQ(sb.comm, "stacks_target") << context;
}

TEST(Stacks, CountsEachCallPathWithItsFramesInnermostFirst) {
  Output r = run({e2e::cli(), "stacks", "-o", "-", "exe:shared_leaf", "--", stacks_target()});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.err.find("a 3 b 5"), std::string::npos) << r.err;  // the command's own output
  TextReport report = parse_report(r.out);
  ASSERT_EQ(report.probes.size(), 1u) << r.out;
  EXPECT_EQ(report.probes[0], "exe:shared_leaf: 8 stacks, 2 distinct") << r.out;
  expect_two_paths(report, 3, 5, r.out);
  // Below main: libc's start code and _start, found through .eh_frame too.
  EXPECT_EQ(report.stacks[0].frames.back(), "_start") << r.out;
  EXPECT_EQ(report.summary, "8 stacks, 2 distinct, 0 lost") << r.out;
}

TEST(Stacks, FoldedLinesGoFromTheProcessNameToTheProbedFunction) {
  e2e::TempDir dir;
  std::string out = dir.file("folded.txt");
  Output r =
      run({e2e::cli(), "stacks", "--folded", "-o", out, "exe:shared_leaf", "--", stacks_target()});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<std::string> lines = e2e::lines(e2e::read_file(out));
  ASSERT_EQ(lines.size(), 2u) << e2e::read_file(out);
  // fold() sorts the lines as strings: ...;main;path_a;... before ...;main;path_b;...
  EXPECT_TRUE(lines[0].starts_with("stacks_target;")) << lines[0];
  EXPECT_TRUE(lines[0].ends_with(";main;path_a;shared_leaf 3")) << lines[0];
  EXPECT_TRUE(lines[1].starts_with("stacks_target;")) << lines[1];
  EXPECT_TRUE(lines[1].ends_with(";main;path_b;middle;shared_leaf 5")) << lines[1];
  EXPECT_NE(r.err.find("usprobe: 8 stacks, 2 distinct, 0 lost"), std::string::npos) << r.err;
}

TEST(Stacks, SeveralProbesEndFoldedLinesWithTheProbe) {
  Output r = run({e2e::cli(), "stacks", "-o", "-", "--folded", "exe:shared_leaf", "exe:middle",
                  "--", stacks_target()});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::set<std::string> tails;
  for (const std::string &line : e2e::lines(r.out)) {
    if (!line.starts_with("stacks_target;")) continue;
    size_t main = line.find(";main;");
    ASSERT_NE(main, std::string::npos) << line;
    tails.insert(line.substr(main + 1));
  }
  EXPECT_EQ(tails, (std::set<std::string>{"main;path_a;shared_leaf;exe:shared_leaf 3",
                                          "main;path_b;middle;shared_leaf;exe:shared_leaf 5",
                                          "main;path_b;middle;exe:middle 5"}))
      << r.out;
}

TEST(Stacks, SvgFlameGraphIsWellFormedXmlWithEveryFrame) {
  e2e::TempDir dir;
  std::string svg = dir.file("flame.svg");
  Output r = run(
      {e2e::cli(), "stacks", "-o", "-", "--svg", svg, "exe:shared_leaf", "--", stacks_target()});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  // The text report still goes to stdout.
  expect_two_paths(parse_report(r.out), 3, 5, r.out);
  ASSERT_TRUE(e2e::file_exists(svg)) << r.describe();
  // Parsed by an XML parser that is not ours; each frame's <title> is "NAME (N samples, P%)".
  const char *script =
      "import sys, xml.etree.ElementTree as ET\n"
      "root = ET.parse(sys.argv[1]).getroot()\n"
      "for e in root.iter():\n"
      "    if e.tag.rsplit('}', 1)[-1] == 'title' and e.text:\n"
      "        print(e.text.split(' (')[0])\n";
  Output py = run({"/usr/bin/python3", "-c", script, svg});
  ASSERT_EQ(py.exit_code(), 0) << py.describe();
  std::vector<std::string> titles = e2e::lines(py.out);
  std::set<std::string> names(titles.begin(), titles.end());
  for (const char *name : {"shared_leaf", "path_a", "path_b", "middle", "main", "stacks_target"})
    EXPECT_TRUE(names.contains(name)) << name << " missing; titles:\n" << py.out;
  std::string text = e2e::read_file(svg);
  EXPECT_NE(text.find("usprobe stacks exe:shared_leaf"), std::string::npos) << "no title";
  EXPECT_NE(text.find(stacks_target()), std::string::npos) << "the command is not named";
}

TEST(Stacks, FramePointerWalkOnAFramePointerBuild) {
  Output r =
      run({e2e::cli(), "stacks", "-o", "-", "--fp", "exe:shared_leaf", "--", stacks_target_fp()});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  TextReport report = parse_report(r.out);
  ASSERT_EQ(report.stacks.size(), 2u) << r.out;
  EXPECT_EQ(report.stacks[0].count, 5u) << r.out;
  EXPECT_TRUE(starts_with_frames(report.stacks[0].frames, kPathB)) << r.out;
  EXPECT_EQ(report.stacks[1].count, 3u) << r.out;
  EXPECT_TRUE(starts_with_frames(report.stacks[1].frames, kPathA)) << r.out;
}

// Without frame pointers the chain ends early, but every stack still starts at the probed function
// and its caller (the return address at the stack pointer, at a function's entry).
TEST(Stacks, FramePointerWalkWithoutFramePointersStillStartsAtTheProbe) {
  Output r =
      run({e2e::cli(), "stacks", "-o", "-", "--fp", "exe:shared_leaf", "--", stacks_target()});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  TextReport report = parse_report(r.out);
  ASSERT_FALSE(report.stacks.empty()) << r.out;
  uint64_t total = 0;
  for (const Stack &s : report.stacks) {
    ASSERT_GE(s.frames.size(), 2u) << r.out;
    EXPECT_EQ(s.frames[0], "shared_leaf") << r.out;
    EXPECT_TRUE(s.frames[1] == "path_a" || s.frames[1] == "middle") << r.out;
    total += s.count;
  }
  EXPECT_EQ(total, 8u) << r.out;
}

// A hot probe: a frame-pointer walk takes about 20 ns, so a million hits in a few milliseconds
// are far more records than a thread's ring holds between two drains. The agent counts repeated
// stacks in the thread's stack table instead: every hit is counted, none is lost.
TEST(Stacks, AMillionFramePointerStacksAreCountedExactlyWithNoneLost) {
  Output r = run({e2e::cli(), "stacks", "-o", "-", "--fp", "exe:shared_leaf", "--",
                  stacks_target_fp(), "1000000", "0"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  TextReport report = parse_report(r.out);
  ASSERT_EQ(report.stacks.size(), 1u) << r.out;
  EXPECT_EQ(report.stacks[0].count, 1000000u) << r.out;
  EXPECT_TRUE(starts_with_frames(report.stacks[0].frames, kPathA)) << r.out;
  EXPECT_EQ(report.summary, "1000000 stacks, 1 distinct, 0 lost") << r.out;
}

// The same with DWARF unwinding, on both call paths.
TEST(Stacks, TwoHundredThousandDwarfStacksAreCountedExactlyWithNoneLost) {
  Output r = run({e2e::cli(), "stacks", "-o", "-", "exe:shared_leaf", "--", stacks_target(),
                  "120000", "80000"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  TextReport report = parse_report(r.out);
  expect_two_paths(report, 120000, 80000, r.out);
  EXPECT_EQ(report.summary, "200000 stacks, 2 distinct, 0 lost") << r.out;
}

TEST(Stacks, ExitStatusPassesThrough) {
  Output r = run(
      {e2e::cli(), "stacks", "-o", "-", "exe:shared_leaf", "--", stacks_target(), "2", "7", "3"});
  EXPECT_EQ(r.exit_code(), 3) << r.describe();
  expect_two_paths(parse_report(r.out), 2, 7, r.out);
}

// The child makes its calls and leaves with _exit: it never writes mappings of its own, and is gone
// before the CLI could read them. Its parent's (the same image) name its stacks.
TEST(Stacks, ForkedChildThatLeavesWithUnderscoreExitIsNamed) {
  Output r =
      run({e2e::cli(), "stacks", "-o", "-", "exe:shared_leaf", "--", stacks_target(), "fork"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  expect_two_paths(parse_report(r.out), 3, 5, r.out);
}

// The shell forks for the first run and exec's the second in its own process: a new image in the
// same pid, whose stacks must be named with its own mappings, not the shell's.
TEST(Stacks, ExecdImageIsNamedWithItsOwnMappings) {
  std::string t = stacks_target();
  // "exe" would be the shell: the probe names the program's file.
  Output r = run({e2e::cli(), "stacks", "-o", "-", t + ":shared_leaf", "--", "/bin/sh", "-c",
                  "'" + t + "' 1 2 && exec '" + t + "' 2 1"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  expect_two_paths(parse_report(r.out), 3, 3, r.out);
}

TEST(Stacks, CppFramesAreDemangled) {
  Output r = run({e2e::cli(), "stacks", "-o", "-", "exe:_ZN11stacks_demo6Parser5parseEi", "--",
                  stacks_target_cc()});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  TextReport report = parse_report(r.out);
  ASSERT_EQ(report.stacks.size(), 1u) << r.out;
  EXPECT_EQ(report.stacks[0].count, 4u) << r.out;
  EXPECT_TRUE(starts_with_frames(
      report.stacks[0].frames,
      {"stacks_demo::Parser::parse(int)", "void stacks_demo::run<int>(int)", "main"}))
      << r.out;
}

// --no-demangle: frames as the ELF file names them; -f is --folded (stackcount -f).
TEST(Stacks, NoDemangleKeepsMangledFramesInFoldedLines) {
  e2e::TempDir dir;
  const std::string out = dir.file("folded.txt");
  Output r = run({e2e::cli(), "stacks", "-f", "--no-demangle", "-o", out,
                  "exe:stacks_demo::Parser::parse", "--", stacks_target_cc()});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<std::string> lines = e2e::lines(e2e::read_file(out));
  ASSERT_EQ(lines.size(), 1u) << e2e::read_file(out);
  EXPECT_TRUE(lines[0].starts_with("stacks_target_c")) << lines[0];
  EXPECT_TRUE(
      lines[0].ends_with(";main;_ZN11stacks_demo3runIiEEvT_;_ZN11stacks_demo6Parser5parseEi 4"))
      << lines[0];
}

// --top 1 keeps the most frequent stack (path_b's 5 of 8), and the probe's line still counts
// both; -P lists each process's stacks apart, named "comm-PID" (stackcount -P).
TEST(Stacks, TopKeepsTheMostFrequentStacksAndPerPidNamesTheProcess) {
  e2e::TempDir dir;
  const std::string out = dir.file("report.txt");
  Output r = run({e2e::cli(), "stacks", "--top", "1", "-P", "-o", out, "exe:shared_leaf", "--",
                  stacks_target()});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const std::string text = e2e::read_file(out);
  TextReport report = parse_report(text);
  ASSERT_EQ(report.probes.size(), 1u) << text;
  EXPECT_EQ(report.probes[0], "exe:shared_leaf: 8 stacks, 2 distinct") << text;
  ASSERT_EQ(report.stacks.size(), 1u) << text;
  EXPECT_EQ(report.stacks[0].count, 5u) << text;
  EXPECT_TRUE(starts_with_frames(report.stacks[0].frames, kPathB)) << text;
  EXPECT_TRUE(rx::regex_match(report.stacks[0].comm, rx::regex("stacks_target-[0-9]+"))) << text;
  EXPECT_NE(text.find("\n(1 less frequent stacks left out by --top 1)\n"), std::string::npos)
      << text;
}

// -i: a report of each interval's stacks, then one of the whole run (e2e_target: 4 rounds of 100
// calls of e2e_work, 150 ms apart).
TEST(Stacks, IntervalReportsComeWhileTheCommandRunsThenTheTotal) {
  e2e::TempDir dir;
  const std::string out = dir.file("report.txt");
  Output r = run({e2e::cli(), "stacks", "-i", "0.2", "-o", out, "exe:e2e_work", "--", e2e::target(),
                  "ticks", "4", "150"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const std::string text = e2e::read_file(out);
  const rx::regex heading(R"(\[[0-9]{2}:[0-9]{2}:[0-9]{2}\] [0-9]+\.[0-9]{3} s)");
  const rx::regex probe_line(R"(exe:e2e_work: ([0-9]+) stacks, [0-9]+ distinct)");
  int intervals = 0, with_stacks = 0;
  uint64_t interval_sum = 0, total = 0;
  bool in_total = false;
  for (const std::string &line : e2e::lines(text)) {
    rx::smatch m;
    if (rx::regex_match(line, heading)) {
      ++intervals;
    } else if (line.starts_with("Total over ")) {
      in_total = true;
    } else if (rx::regex_match(line, m, probe_line)) {
      uint64_t n = std::stoull(m[1]);
      if (in_total) {
        total = n;
      } else {
        interval_sum += n;
        with_stacks += n > 0;
      }
    }
  }
  EXPECT_GE(intervals, 2) << text;
  EXPECT_GE(with_stacks, 2) << text;
  EXPECT_EQ(total, 400u) << text;
  EXPECT_LE(interval_sum, 400u) << text;  // the last calls may come after the last interval
}

TEST(Stacks, ReturnProbesAreRefusedBeforeTheCommandStarts) {
  Output r =
      run({e2e::cli(), "stacks", "uretprobe:exe:shared_leaf", "--", stacks_target(), "1", "1"});
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  EXPECT_EQ(r.out, "") << "the command ran";
  EXPECT_EQ(e2e::lines(r.err).size(), 1u) << r.err;
  EXPECT_TRUE(r.err.starts_with("usprobe: stacks: 'uretprobe:exe:shared_leaf'")) << r.err;
}

TEST(Stacks, MissingCommandIsAnError) {
  Output r = run({e2e::cli(), "stacks", "exe:shared_leaf"});
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  EXPECT_NE(r.err.find("usprobe: stacks: missing '--'"), std::string::npos) << r.err;
}

}  // namespace
