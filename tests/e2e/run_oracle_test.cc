// bpftrace as the oracle of `usprobe run`: each program runs once under bpftrace 0.17 and once
// under usprobe, on the same deterministic command (e2e_target), and both print the same thing.
// The command's own lines are taken out (when they appear among the tools' lines is a matter of
// pipes and buffering); where bpftrace orders entries arbitrarily (map entries with equal
// values), a map's entries compare as a set; hist/lhist rows, printf lines and everything else
// compare in order. Values that differ from run to run (pid, tid, cpu, nsecs) are compared by
// shape: a program prints relations of them, or the test masks them.
//
// Found while writing these (README.md "usprobe run"):
//   - bpftrace 0.17 prints a keyless count() that counted nothing or was cleared as "@c: 0";
//     usprobe does too (bt/host.cc).
//   - exit() in BEGIN: bpftrace still runs END; so does usprobe (bt/host.cc). bpftrace also lets
//     the command run on, untraced; usprobe stops it.
//   - errors: bpftrace's wording and underline kept where usprobe claims it
//     (tests/unit/bt/check_test.cc); usprobe closes the quote bpftrace leaves open in "Type
//     mismatch for @x: ... 'int64'".
//
// These run alone (RUN_SERIAL, tests/e2e/CMakeLists.txt): bpftrace's kernel uprobes and
// usprobe's patches must not be in the same code at once. Skipped, saying why, where bpftrace is
// absent or cannot trace here (it needs root).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "e2e_support.h"

namespace {

using e2e::Json;
using e2e::Output;

constexpr const char *kBpftrace = "/usr/bin/bpftrace";

// Why bpftrace cannot be the oracle here; empty when it can. Asked once: a program that counts
// one call of e2e_work.
const std::string &bpftrace_missing() {
  static const std::string why = [] {
    if (!e2e::file_exists(kBpftrace)) return std::string(kBpftrace) + " is not installed";
    const std::string t = e2e::target();
    Output b = e2e::run(
        {kBpftrace, "-e", "uprobe:" + t + ":e2e_work { @ = count(); }", "-c", t + " calls 1"});
    if (b.exit_code() != 0 || b.out.find("\n@: 1\n") == std::string::npos)
      return "bpftrace cannot trace here: " + b.describe() + b.out;
    return std::string();
  }();
  return why;
}

#define SKIP_WITHOUT_BPFTRACE()                                          \
  do {                                                                   \
    if (!bpftrace_missing().empty()) GTEST_SKIP() << bpftrace_missing(); \
  } while (0)

// "$T" in a program stands for e2e_target's absolute path (bpftrace needs it; usprobe takes it).
std::string with_target(std::string program) {
  const std::string t = e2e::target();
  for (size_t at = program.find("$T"); at != std::string::npos; at = program.find("$T", at))
    program.replace(at, 2, t);
  return program;
}

struct Runs {
  Output bpftrace, usprobe;
};

Runs run_both(const std::string &program, const std::string &args, bool json = false) {
  const std::string command = std::string(e2e::target()) + " " + args;
  std::vector<std::string> b = {kBpftrace}, u = {e2e::cli(), "run"};
  if (json) {
    for (auto *v : {&b, &u}) v->insert(v->end(), {"-f", "json"});
  }
  for (auto *v : {&b, &u}) v->insert(v->end(), {"-e", with_target(program), "-c", command});
  return {e2e::run(b), e2e::run(u)};
}

// The lines of `out` without the command's own (each taken out once), as a plain run prints them
// (`sleep S` runs as `sleep 0`: the same lines, at once).
std::vector<std::string> tool_lines(const std::string &out, std::string args) {
  std::vector<std::string> lines = e2e::lines(out);
  if (args.starts_with("sleep ")) args = "sleep 0";
  Output plain = e2e::run({"/bin/sh", "-c", std::string(e2e::target()) + " " + args});
  for (const std::string &own : e2e::lines(plain.out)) {
    auto it = std::find(lines.begin(), lines.end(), own);
    if (it != lines.end()) lines.erase(it);
  }
  return lines;
}

// "@name" of a map's line ("@x[1, a]: 3" -> "@x"), "" for other lines.
std::string map_of(const std::string &line) {
  if (!line.starts_with("@")) return "";
  size_t end = line.find_first_of("[:");
  return end == std::string::npos ? "" : line.substr(0, end);
}

// The text output normalized: one entry per map line (a hist's header with its rows and the
// blank line after them as one entry), and each run of a keyed map's entries sorted, since
// bpftrace orders equal values arbitrarily. Lines of maps named in `masked` keep their name
// only (their keys and values change from run to run).
std::vector<std::string> normalized(const std::vector<std::string> &lines,
                                    const std::vector<std::string> &masked) {
  std::vector<std::string> entries;
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string entry = lines[i];
    std::string map = map_of(entry);
    if (!map.empty() && std::find(masked.begin(), masked.end(), map) != masked.end())
      entry = map + "[masked]";
    // A hist or lhist: "@h: " then rows up to a blank line.
    if (!map.empty() && lines[i].ends_with(": ")) {
      while (i + 1 < lines.size() && !lines[i + 1].empty()) entry += "\n" + lines[++i];
    }
    entries.push_back(entry);
  }
  for (size_t i = 0; i < entries.size();) {
    std::string map = map_of(entries[i]);
    size_t j = i + 1;
    if (!map.empty() && entries[i].starts_with(map + "["))
      while (j < entries.size() && entries[j].starts_with(map + "[")) ++j;
    std::sort(entries.begin() + static_cast<ptrdiff_t>(i),
              entries.begin() + static_cast<ptrdiff_t>(j));
    i = j;
  }
  return entries;
}

// -f json: each JSON line parsed (objects compare whatever their keys' order), the rest as is.
std::vector<std::string> normalized_json(const std::vector<std::string> &lines) {
  std::vector<std::string> out;
  for (const std::string &l : lines) {
    if (!l.starts_with("{")) {
      out.push_back(l);
      continue;
    }
    Json j = Json::parse(l, nullptr, false);
    out.push_back(j.is_discarded() ? "unparsable: " + l : j.dump());
  }
  return out;
}

std::string joined(const std::vector<std::string> &entries) {
  std::string out;
  for (const std::string &e : entries) out += e + "\n";
  return out;
}

struct Case {
  const char *what;
  const char *program;
  const char *args;  // e2e_target's
  std::vector<std::string> masked = {};
  bool json = false;
};

// Every construct README's "usprobe run" paragraph says runs today, each program on e2e_target
// (calls N: e2e_work(0..N-1); greet: e2e_greet("alice", 1) ... ; args: e2e_args("xyz", -5,
// 3000000000u, -1234567890123, 0xdeadbeefcafe, 'Q')).
const std::vector<Case> &cases() {
  static const std::vector<Case> all = {
      {"predicates, && and ||",
       "uprobe:$T:e2e_work /arg0 > 5 && arg0 < 9 || arg0 == 0/ { @p = count(); @k[arg0] = "
       "count(); } uprobe:$T:e2e_work /!(arg0 % 4)/ { @four = count(); }",
       "calls 12"},
      {"if / else if / else",
       "uprobe:$T:e2e_work { if (arg0 % 3 == 0) { @a = count(); } else if (arg0 % 3 == 1) { @b = "
       "count(); } else { @c = count(); } if (arg0 > 100) { @never = count(); } }",
       "calls 10"},
      {"scratch variables",
       "uprobe:$T:e2e_work { $x = arg0 * 3; $y = $x + 1; $y += 2; @v[arg0] = sum($y); }",
       "calls 5"},
      {"arithmetic and unary operators",
       "uprobe:$T:e2e_args { printf(\"%d %d %d %d %d %d %d %d %d %d %d\\n\", arg1 + 7, arg1 - 7, "
       "arg1 * 3, arg2 / 7, arg2 % 7, arg4 & 0xff, arg4 | 1, arg4 ^ 0xffff, arg1 << 3, arg2 >> 4, "
       "-arg1); printf(\"%d %d %d %d %ld\\n\", ~arg1, !arg1, !0, ~0, (int64)arg1 * 1000000007); }",
       "args"},
      {"comparisons signed and unsigned, ternary",
       "uprobe:$T:e2e_args { printf(\"%d %d %d %d %d\\n\", (int32)arg1 < 0, (int64)arg3 < 0, "
       "arg1 > 5, (int32)arg1 > -10, (int32)arg2 < 0); printf(\"%d %d %d %d\\n\", arg2 > "
       "2000000000, arg1 == 4294967291, (int32)arg1 == -5, arg1 > 5 ? 100 : 200); }",
       "args"},
      // The same comparisons deciding branches (one compare-and-jump each in usprobe's code), with
      // an immediate and with a register on the right.
      {"comparisons as predicates and ifs, signed and unsigned",
       "uprobe:$T:e2e_args /(int32)arg1 < 0 && arg2 > 2000000000/ { @a = count(); } "
       "uprobe:$T:e2e_args { if (arg1 > 5) { @b = count(); } if ((int32)arg1 > -10) { @c = "
       "count(); } if ((int32)arg2 < 0) { @d = count(); } if (arg1 == 4294967291) { @e = count(); "
       "} if ((int64)arg3 <= -1234567890123) { @f = count(); } if (arg1 != arg2) { @g = count(); "
       "} $x = (int32)arg1; if ($x >= -5) { @h = count(); } if (arg2 < arg4) { @i = count(); } "
       "@t = sum((int32)arg1 >= -5 ? 1 : 2); if (arg1 < 5) { @n1 = count(); } if ((int32)arg1 < "
       "-10) { @n2 = count(); } if (arg2 <= 2999999999) { @n3 = count(); } if ($x > -5) { @n4 = "
       "count(); } if (arg2 >= arg4) { @n5 = count(); } @u = sum(arg1 < 5 ? 1 : 2); }",
       "args"},
      {"casts int8..uint64",
       "uprobe:$T:e2e_args { printf(\"%d %d %d %d %d %d %ld %lu\\n\", (int8)arg4, (uint8)arg4, "
       "(int16)arg4, (uint16)arg4, (int32)arg4, (uint32)arg4, (int64)arg3, (uint64)arg3); "
       "@neg[(int32)arg1] = count(); @m = min((int8)arg4); }",
       "args"},
      {"printf conversions, widths and flags",
       "uprobe:$T:e2e_args { printf(\"%u %x %s %c %ld %lu %llx|\\n\", arg1, arg4, str(arg0), "
       "arg5, arg3, arg2, arg4); printf(\"[%5d] [%-5d] [%05d] [%10s] [%-10s] [%X] [%08x] "
       "[%%]\\n\", arg1, arg1, 42, str(arg0), str(arg0), 255, 255); }",
       "args"},
      {"string comparison, str(), comm, string keys",
       "uprobe:$T:e2e_greet /str(arg0) == \"bob\"/ { printf(\"bob %d %s\\n\", arg1, comm); } "
       "uprobe:$T:e2e_greet /str(arg0) != \"bob\"/ { @other[str(arg0)] = count(); "
       "@c[comm] = count(); }",
       "greet"},
      {"builtins pid tid uid gid cpu",
       "uprobe:$T:e2e_work { @pid[pid] = count(); @tid[tid] = count(); @uid[uid] = count(); "
       "@gid[gid] = count(); @cpu = max(cpu); @same = sum(pid == tid); }",
       "calls 10",
       {"@pid", "@tid", "@cpu"}},
      {"uretprobe, retval, nsecs and elapsed, delete",
       "uprobe:$T:e2e_work { @start[arg0] = nsecs; } uretprobe:$T:e2e_work { @rv[retval] = "
       "count(); @ok = sum(nsecs >= @start[retval - 1]); @el = sum(elapsed > 0); "
       "delete(@start[retval - 1]); }",
       "calls 6"},
      {"every aggregation",
       "uprobe:$T:e2e_work { @c = count(); @s = sum(arg0); @a = avg(arg0); @mn = min(arg0); "
       "@mx = max(arg0); @st = stats(arg0); @h = hist(arg0); @l = lhist(arg0, 0, 50, 10); }",
       "calls 40"},
      {"keys of strings, ints and several parts",
       "uprobe:$T:e2e_greet { @n[str(arg0)] = sum(arg1); @m[str(arg0), arg1] = count(); "
       "@o[arg1, comm] = max(arg1); @h[arg1 > 0] = hist(arg1); }",
       "greet"},
      {"plain maps: assign, read, +=, ++, delete",
       "uprobe:$T:e2e_work { @x = arg0; @y[arg0 % 4] = arg0; @z += arg0; @w++; @v[arg0 % 2] += "
       "1; @u[arg0 % 3]++; @r = @x + 1000; delete(@y[0]); }",
       "calls 10"},
      {"BEGIN and END with printf",
       "BEGIN { printf(\"hello %d %s\\n\", 42, \"there\"); } uprobe:$T:e2e_work { @ = count(); "
       "} END { printf(\"bye %x\\n\", 255); }",
       "calls 3"},
      {"print, print with top, clear in END",
       "uprobe:$T:e2e_work { @a[arg0 % 5] = sum(arg0); @b = sum(arg0); @c = count(); "
       "@h = hist(arg0); } END { print(@a); print(@a, 2); clear(@b); print(@b); clear(@c); "
       "print(@c); print(@h); printf(\"--\\n\"); }",
       "calls 20"},
      // At the last of the 3 calls before the sleep: the calls after exit() in the same burst
      // would race with its stop (bpftrace counts them or not). The count leaves out the
      // exiting call itself: whether bpftrace still runs the second probe on it after the first
      // called exit() is a race too (it printed @c: 2 once in seven runs here, and 3 otherwise).
      {"exit() from a probe stops the command; END still runs",
       "uprobe:$T:e2e_work /arg0 == 2/ { printf(\"exiting at %d\\n\", arg0); exit(); } "
       "uprobe:$T:e2e_work /arg0 < 2/ { @c = count(); } END { printf(\"end\\n\"); }",
       "sleep 5"},
      // print() and clear() in a probe are carried out by the tool when it reads them (bpftrace's
      // asynchronous actions), in order: the maps printed here no call changes after arg0 == 10.
      {"print and clear in a probe",
       "uprobe:$T:e2e_work /arg0 < 10/ { @early = count(); @e[arg0 % 2] = sum(arg0); } "
       "uprobe:$T:e2e_work /arg0 == 10/ { print(@early); print(@e, 1); clear(@early); "
       "print(arg0 * 3); print(\"ten\"); }",
       "calls 20"},
      {"json: print and clear in a probe",
       "uprobe:$T:e2e_work /arg0 < 10/ { @early = count(); @e[arg0 % 2] = sum(arg0); } "
       "uprobe:$T:e2e_work /arg0 == 10/ { print(@early); print(@e, 1); clear(@early); "
       "print(arg0 * 3); print(\"ten\"); }",
       "calls 20",
       {},
       true},
      // buf(): printable bytes as they are, the others (NULs included) as \xNN; a pointer that
      // cannot be read (greet's fourth name) gives zeros.
      {"buf in printf and keys",
       "uprobe:$T:e2e_greet { printf(\"[%r] [%r] %d\\n\", buf(arg0, 3), buf(arg0, 10), arg1); "
       "@[buf(arg0, 2)] = count(); @k[buf(arg0, 1), arg1 % 2] = count(); }",
       "greet"},
      {"json: buf in printf and keys",
       "uprobe:$T:e2e_greet { printf(\"[%r]\\n\", buf(arg0, 7)); @[buf(arg0, 2)] = count(); }",
       "greet",
       {},
       true},
      // delete() of an aggregation's entries in a probe: the key's values so far are gone, the
      // updates after it count again (a keyed count, a keyless sum). Not a hist: bpftrace 0.17
      // deletes one of its buckets, that of the last value it bucketed (run_test.cc has usprobe's).
      {"delete of aggregation entries in a probe",
       "uprobe:$T:e2e_work { @c[arg0 % 2] = count(); @s = sum(arg0); "
       "if (arg0 == 50) { delete(@c[0]); delete(@s); } }",
       "calls 100"},
      {"json: aggregations",
       "BEGIN { printf(\"hi %d\\n\", 1); } uprobe:$T:e2e_work { @a[arg0 % 3] = count(); "
       "@h = hist(arg0); @l = lhist(arg0, 0, 20, 5); @st = stats(arg0); @av = avg(arg0); "
       "@k[comm, arg0 % 2] = sum(arg0); @e = count(); }",
       "calls 20",
       {},
       true},
      {"json: printf and string keys",
       "uprobe:$T:e2e_greet { @n[str(arg0)] = count(); printf(\"%s-%d\\n\", str(arg0), arg1); } "
       "END { print(@n); }",
       "greet",
       {},
       true},
  };
  return all;
}

TEST(CliRunOracle, EveryConstructPrintsWhatBpftracePrints) {
  SKIP_WITHOUT_BPFTRACE();
  for (const Case &c : cases()) {
    SCOPED_TRACE(std::string(c.what) + ": " + with_target(c.program) + " -c '" + c.args + "'");
    Runs r = run_both(c.program, c.args, c.json);
    ASSERT_EQ(r.bpftrace.exit_code(), 0) << r.bpftrace.describe();
    EXPECT_EQ(r.usprobe.exit_code(), 0) << r.usprobe.describe();
    std::vector<std::string> b = tool_lines(r.bpftrace.out, c.args),
                             u = tool_lines(r.usprobe.out, c.args);
    if (c.json) {
      EXPECT_EQ(joined(normalized_json(u)), joined(normalized_json(b)))
          << "usprobe (left) and bpftrace (right) disagree";
    } else {
      ASSERT_FALSE(b.empty());
      EXPECT_EQ(u.at(0), b[0]) << "the Attaching line";
      EXPECT_EQ(joined(normalized(u, c.masked)), joined(normalized(b, c.masked)))
          << "usprobe (left) and bpftrace (right) disagree";
    }
    // exit(): the command stopped before it printed "slept".
    if (std::string_view(c.args).starts_with("sleep")) {
      EXPECT_EQ(r.usprobe.out.find("slept"), std::string::npos) << r.usprobe.out;
      EXPECT_EQ(r.bpftrace.out.find("slept"), std::string::npos) << r.bpftrace.out;
    }
  }
}

// An interval block on a command that runs 5 rounds of 100 calls, 100 ms apart: when the ticks
// fall differs, so compare shapes: several ticks, each printing the count since the last one as
// "@c: N" (or nothing when it was cleared and no call came), and the same total at the end.
TEST(CliRunOracle, IntervalPrintsAndClearsAsBpftraceDoes) {
  SKIP_WITHOUT_BPFTRACE();
  const char *program =
      "uprobe:$T:e2e_work { @c[1] = count(); @total = count(); } interval:ms:100 { "
      "printf(\"tick\\n\"); print(@c); clear(@c); }";
  Runs r = run_both(program, "ticks 5 100");
  ASSERT_EQ(r.bpftrace.exit_code(), 0) << r.bpftrace.describe();
  ASSERT_EQ(r.usprobe.exit_code(), 0) << r.usprobe.describe();
  for (const Output *o : {&r.bpftrace, &r.usprobe}) {
    std::vector<std::string> lines = tool_lines(o->out, "ticks 5 100");
    ASSERT_FALSE(lines.empty()) << o->out;
    EXPECT_EQ(lines[0], "Attaching 2 probes...") << o->out;
    size_t ticks = 0;
    for (size_t i = 0; i < lines.size(); ++i)
      if (lines[i] == "tick") {
        ++ticks;
        ASSERT_LT(i + 1, lines.size()) << o->out;
        EXPECT_TRUE(lines[i + 1].empty() || lines[i + 1].starts_with("@c[1]: ")) << o->out;
      }
    EXPECT_GE(ticks, 3u) << o->out;
    EXPECT_NE(o->out.find("\n@total: 500\n"), std::string::npos) << o->out;
  }
}

// has_key() is usprobe's (bpftrace 0.17 has no such function): its known answer here.
TEST(CliRunOracle, HasKeyWhichBpftrace017LacksGivesTheKnownAnswer) {
  const std::string t = e2e::target();
  Output r = e2e::run({e2e::cli(), "run", "-e",
                       "uprobe:" + t +
                           ":e2e_work { @m[arg0] = 1; if (arg0 % 3 == 0) { delete(@m[arg0]); } "
                           "@h[arg0] = has_key(@m, arg0); @n = has_key(@m, 4); }",
                       "-c", t + " calls 6"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out,
            "Attaching 1 probe...\ncalls 6\n\n\n@h[0]: 0\n@h[3]: 0\n@h[1]: 1\n@h[2]: 1\n@h[4]: "
            "1\n@h[5]: 1\n@m[1]: 1\n@m[2]: 1\n@m[4]: 1\n@m[5]: 1\n@n: 1\n");
}

// Bad programs: usprobe's first line on stderr is bpftrace's ERROR line (place and words), and
// usprobe exits with 2 without starting the command.
TEST(CliRunOracle, ErrorsAreBpftracesErrors) {
  SKIP_WITHOUT_BPFTRACE();
  struct Bad {
    const char *body;   // the block of uprobe:$T:e2e_work
    bool closes_quote;  // bpftrace 0.17 leaves a quote open at the end; usprobe closes it
  };
  const std::vector<Bad> bad = {
      {"printf(\"%d %d\\n\", 1);", false},
      {"printf(\"%d\\n\", \"a\");", false},
      {"printf(\"%d\\n\", 1, 2);", false},
      {"@ = arg6;", false},
      {"@x[1] = 1; @x[1,2] = 2;", false},
      {"@x[str(arg0)] = 1; @x[arg0] = 2;", false},
      {"@y = @x;", false},
      {"@y = $x;", false},
      {"$y = count();", false},
      {"@b = count(); @b++;", false},
      {"printf(\"%d\\n\", (int64)1 + \"a\");", false},
      {"@ = \"a\" < \"b\";", false},
      {"@ = ~\"a\";", false},
      {"@ = 1 ? 1 : \"a\";", false},
      {"@ = lhist(1, 10, 0, 1);", false},
      {"@ = hist();", false},
      {"@ = count(1);", false},
      {"@ = sum(\"a\");", false},
      {"exit(1);", false},
      {"clear(1);", false},
      {"@x = frobnicate();", false},
      // "... a value of type 'int64": bpftrace 0.17 leaves the quote open.
      {"@x = 1; @x = \"a\";", true},
  };
  const std::string t = e2e::target();
  for (const Bad &c : bad) {
    const std::string program = "uprobe:" + t + ":e2e_work { " + c.body + " }";
    SCOPED_TRACE(program);
    Output b = e2e::run({kBpftrace, "-e", program, "-c", t + " calls 1"});
    Output u = e2e::run({e2e::cli(), "run", "-e", program, "-c", t + " calls 1"});
    std::string b_line;
    for (const std::string &l : e2e::lines(b.err))
      if (l.starts_with("stdin:")) {
        b_line = l;
        break;
      }
    ASSERT_NE(b_line, "") << "bpftrace took it: " << b.describe() << b.out;
    EXPECT_EQ(u.exit_code(), 2) << u.describe();
    EXPECT_EQ(u.out, "") << "the command must not start";
    std::vector<std::string> u_lines = e2e::lines(u.err);
    ASSERT_FALSE(u_lines.empty());
    EXPECT_EQ(u_lines[0], c.closes_quote ? b_line + "'" : b_line);
  }
}

}  // namespace
