// usprobe run: bpftrace programs on e2e_target, whose calls and arguments are known, so that every
// map, printf line and exit status is known exactly (bt/ is the front end, printer and compiler;
// agent/bt_vm.cc runs the hits).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "e2e_support.h"

namespace {

using e2e::Output;
using e2e::run;

// Aggregations of every kind keyed and not, a predicate, a return probe, BEGIN and END: the
// command's output as unprobed, then bpftrace's report byte for byte.
TEST(CliRun, MapsOfEveryAggregationPrintAsBpftracePrintsThem) {
  Output r = run({e2e::cli(), "run", "-e",
                  "BEGIN { printf(\"start\\n\"); } "
                  "uprobe:exe:e2e_work /arg0 % 2 == 0/ { @[arg0 % 4] = count(); @h = hist(arg0); "
                  "@s = sum(arg0); @l = lhist(arg0, 0, 100, 50); @mx = max(arg0); } "
                  "uretprobe:exe:e2e_work { @r = count(); @st = stats(retval == retval ? 3 : 0); } "
                  "END { printf(\"end %d\\n\", 7); }",
                  "--", e2e::target(), "calls", "100"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out,
            "Attaching 4 probes...\n"
            "start\n"
            "calls 100\n"
            "end 7\n"
            "\n\n"
            "@[0]: 25\n"
            "@[2]: 25\n"
            "@h: \n"
            "[0]                    1 |@@                                                  |\n"
            "[1]                    0 |                                                    |\n"
            "[2, 4)                 1 |@@                                                  |\n"
            "[4, 8)                 2 |@@@@@                                               |\n"
            "[8, 16)                4 |@@@@@@@@@@@                                         |\n"
            "[16, 32)               8 |@@@@@@@@@@@@@@@@@@@@@@@                             |\n"
            "[32, 64)              16 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@      |\n"
            "[64, 128)             18 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
            "\n"
            "@l: \n"
            "[0, 50)               25 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
            "[50, 100)             25 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
            "\n"
            "@mx: 98\n"
            "@r: 100\n"
            "@s: 2450\n"
            "@st: count 100, average 3, total 300\n"
            "\n");
}

// Four threads: per-thread aggregations merged exactly, and per-thread state kept from each call's
// entry to its return in a map every thread shares (@start[tid], deleted at the return).
TEST(CliRun, PerThreadStateFromEntryToReturnAcrossFourThreads) {
  Output r = run({e2e::cli(), "run", "-e",
                  "uprobe:exe:e2e_work { @c = count(); @t[tid] = count(); @start[tid] = nsecs; } "
                  "uretprobe:exe:e2e_work /@start[tid]/ { @timed = count(); "
                  "@backwards = sum(nsecs < @start[tid]); delete(@start[tid]); }",
                  "--", e2e::target(), "threads", "4", "5000"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<std::string> lines = e2e::lines(r.out);
  ASSERT_GE(lines.size(), 2u) << r.out;
  EXPECT_EQ(lines[0], "Attaching 2 probes...");
  EXPECT_EQ(lines[1], "threads 4 x 5000");
  size_t per_thread = 0;
  for (const std::string &l : lines)
    if (l.starts_with("@t[")) {
      ++per_thread;
      EXPECT_TRUE(l.ends_with("]: 5000")) << l;
    }
  EXPECT_EQ(per_thread, 4u) << r.out;
  EXPECT_NE(r.out.find("\n@c: 20000\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n@timed: 20000\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n@backwards: 0\n"), std::string::npos) << r.out;
  // Every entry deleted at its return: @start prints empty.
  EXPECT_EQ(r.out.find("@start["), std::string::npos) << r.out;
}

// printf of strings the probe copies (str, comm) and a string-keyed map; an unreadable pointer
// (0x10) reads as "", as bpftrace's str() gives it.
TEST(CliRun, StringsFromTheProbedProcessInPrintfAndKeys) {
  Output r = run({e2e::cli(), "run", "-e",
                  "uprobe:exe:e2e_greet { printf(\"%s %d|%s|\\n\", str(arg0), arg1, comm); "
                  "@n[str(arg0)] = count(); }",
                  "-c", std::string(e2e::target()) + " greet"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  for (const char *line :
       {"alice 1|e2e_target|", "bob 22|e2e_target|", "carol -3|e2e_target|", " 4|e2e_target|",
        "dave 5|e2e_target|", "hello (bad pointer) 4", "@n[alice]: 1", "@n[]: 1", "@n[dave]: 1"})
    EXPECT_NE(r.out.find(std::string("\n") + line + "\n"), std::string::npos) << line << "\n"
                                                                              << r.out;
}

// func and probe name the function a glob matched (bpftrace 0.17 prints an address for func on
// a PIE; usprobe its name), in keys and in printf.
TEST(CliRun, FuncAndProbeNameTheFunctionAGlobMatched) {
  Output r = run({e2e::cli(), "run", "-e",
                  "uprobe:exe:e2e_* { @[func] = count(); @p[probe] = count(); "
                  "printf(\"in %s\\n\", func); } uretprobe:exe:e2e_work { @r[probe] = count(); }",
                  "--", e2e::target(), "calls", "3"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<std::string> lines = e2e::lines(r.out);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines[0], "Attaching 4 probes...") << "three e2e_* functions and one return";
  size_t printed = 0;
  for (const std::string &l : lines) printed += l == "in e2e_work";
  EXPECT_EQ(printed, 3u) << r.out;
  EXPECT_NE(r.out.find("\n@[e2e_work]: 3\n"), std::string::npos) << r.out;
  for (const char *m : {"\n@p[uprobe:/", "\n@r[uretprobe:/"}) {
    size_t at = r.out.find(m);
    ASSERT_NE(at, std::string::npos) << m << "\n" << r.out;
    EXPECT_TRUE(r.out.substr(at).find(":e2e_work]: 3\n") < r.out.substr(at).find('\n', 1)) << r.out;
  }
}

// ustack as a key: the stacks walked with DWARF (e2e_target has no frame pointers; bpftrace 0.17
// walks frame pointers and stops after two frames here), named after the command exited from the
// mappings its agent wrote, each frame as bpftrace prints one.
TEST(CliRun, UstackKeysNameEveryFrameAfterTheCommandExited) {
  Output r = run({e2e::cli(), "run", "-e",
                  "uprobe:exe:e2e_work { @[ustack] = count(); @two[ustack(2)] = count(); }", "--",
                  e2e::target(), "calls", "7"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const size_t whole = r.out.find("\n@[\n    e2e_work+0\n    main+");
  ASSERT_NE(whole, std::string::npos) << r.out;
  const std::string tail = r.out.substr(whole);
  EXPECT_NE(tail.find("    __libc_start_main+"), std::string::npos) << r.out;
  EXPECT_NE(tail.find("]: 7\n"), std::string::npos) << r.out;
  const size_t two = r.out.find("\n@two[\n    e2e_work+0\n    main+");
  ASSERT_NE(two, std::string::npos) << r.out;
  EXPECT_EQ(r.out.substr(r.out.find('\n', r.out.find("main+", two)) + 1, 6), "]: 7\n")
      << "two frames, then the count: " << r.out;
}

// ustack in printf: bpftrace's layout (a newline, then each frame on a line of its own, indented by
// 8 spaces), frames named while the command runs; ustack(N) stops at N.
// bpftrace 0.17 walks frame pointers and leaves out main here; usprobe walks with DWARF.
TEST(CliRun, UstackInPrintfAsBpftraceLaysItOut) {
  Output r = run({e2e::cli(), "run", "-e",
                  "uprobe:exe:e2e_work /arg0 == 3/ { printf(\"at %d:%s|\\n\", arg0, ustack(2)); "
                  "printf(\"whole:%s|\\n\", ustack); }",
                  "--", e2e::target(), "calls", "5"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const size_t two = r.out.find("at 3:\n        e2e_work+0\n        main+");
  ASSERT_NE(two, std::string::npos) << r.out;
  EXPECT_EQ(r.out.substr(r.out.find('\n', r.out.find("main+", two)) + 1, 2), "|\n")
      << "two frames, then the format's next character: " << r.out;
  const size_t whole = r.out.find("whole:\n        e2e_work+0\n        main+");
  ASSERT_NE(whole, std::string::npos) << r.out;
  EXPECT_NE(r.out.find("        __libc_start_main+", whole), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n|\n", whole), std::string::npos) << r.out;
}

// buf(p, n) in printf (%r) and in keys: n bytes as they are in memory, NULs included, printed as
// bpftrace prints them (printable ASCII as is, other bytes as \xNN); a pointer that cannot be read
// (greet's fourth name) gives n zeros.
TEST(CliRun, BufPrintsTheBytesAsBpftraceDoes) {
  Output r = run({e2e::cli(), "run", "-e",
                  "uprobe:exe:e2e_greet { printf(\"[%r] %d\\n\", buf(arg0, 10), arg1); "
                  "@[buf(arg0, 2)] = count(); }",
                  "--", e2e::target(), "greet"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  for (const char *line :
       {"\n[alice\\x00bob\\x00] 1\n", "\n[bob\\x00carol\\x00] 22\n", "\n[carol\\x00hell] -3\n",
        "\n[\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00] 4\n",
        "\n@[\\x00\\x00]: 1\n@[al]: 1\n@[bo]: 1\n@[ca]: 1\n@[da]: 1\n"})
    EXPECT_NE(r.out.find(line), std::string::npos) << line << "\n" << r.out;
}

// Strings kept in a map from a call's entry to its return (@name[tid] = str(arg0), the pattern of
// opensnoop-like tools), a keyless string and a string per key: bpftrace's output, byte for byte.
TEST(CliRun, StringValuesKeptFromEntryToReturn) {
  e2e::TempDir dir;
  const std::string report = dir.file("out.txt");
  Output r = run({e2e::cli(), "run", "-o", report, "-e",
                  "uprobe:exe:e2e_greet { @name[tid] = str(arg0); @last = str(arg0); "
                  "@who[arg1] = comm; } "
                  "uretprobe:exe:e2e_greet { printf(\"%s done\\n\", @name[tid]); "
                  "delete(@name[tid]); }",
                  "--", e2e::target(), "greet"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(e2e::read_file(report),
            "Attaching 2 probes...\n"
            "alice done\nbob done\ncarol done\n done\ndave done\n"
            "\n\n"
            "@last: dave\n"
            "\n"
            "@who[1]: e2e_target\n@who[4]: e2e_target\n@who[5]: e2e_target\n"
            "@who[22]: e2e_target\n@who[4294967293]: e2e_target\n");
}

// usym names an address with the mappings of the process that recorded it, in a key and in printf:
// __libc_start_main registers the dynamic linker's _dl_fini with __cxa_atexit in every dynamically
// linked program (bpftrace 0.17 prints its address).
TEST(CliRun, UsymNamesAFunctionPointerArgument) {
  Output r = run({e2e::cli(), "run", "-e",
                  "uprobe:libc:__cxa_atexit { @[usym(arg0)] = count(); "
                  "printf(\"registered %s\\n\", usym(arg0)); }",
                  "--", e2e::target(), "calls", "1"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("\nregistered _dl_fini\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n@[_dl_fini]: 1\n"), std::string::npos) << r.out;
}

// cpid, as bpftrace programs written for -c use it (/pid == cpid/): the command's own process, not
// the child it forks.
TEST(CliRun, CpidIsTheCommandsProcessNotItsChildren) {
  Output r = run({e2e::cli(), "run", "-e",
                  "uprobe:exe:e2e_work /pid == cpid/ { @mine = count(); } "
                  "uprobe:exe:e2e_work /pid != cpid/ { @child = count(); } "
                  "END { printf(\"cpid known: %d\\n\", cpid != 0); }",
                  "--", e2e::target(), "fork", "10", "6"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("\ncpid known: 1\n\n\n@child: 6\n@mine: 10\n"), std::string::npos) << r.out;
}

// Conditions the compiler turns into one compare-and-jump (a predicate, an if, a ternary; each side
// of an &&), against a register and against an immediate, signed and unsigned, and the ones it
// does not (!, ||): each branch counts what the same comparison gives as a value (sum), and what
// the 80 calls with arguments 10..89 give.
TEST(CliRun, ConditionsBranchAsTheirValuesSay) {
  Output r =
      run({e2e::cli(), "run", "-e",
           "uprobe:exe:e2e_work /arg0 >= 10 && arg0 < 90/ { @a = count(); $x = 30; "
           "if (arg0 == 50) { @eq = count(); } "
           "if (arg0 != 50) { @ne = count(); } else { @else = count(); } "
           "if ((int64)arg0 - 60 < -20) { @lt = count(); } @vlt = sum((int64)arg0 - 60 < -20); "
           "if (arg0 > $x) { @gt = count(); } @vgt = sum(arg0 > $x); "
           "if (arg0 >= $x && arg0 <= 40) { @range = count(); } "
           "@vrange = sum(arg0 >= $x && arg0 <= 40); "
           "if (arg0 >= 85) { @ge = count(); } "
           "if (!(arg0 < 88)) { @not = count(); } "
           "if (arg0 == 10 || arg0 == 89) { @or = count(); } "
           "@t[arg0 <= 20 ? 1 : 2] = count(); }",
           "--", e2e::target(), "calls", "100"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  for (const char *line :
       {"\n@a: 80\n", "\n@eq: 1\n", "\n@ne: 79\n", "\n@else: 1\n", "\n@lt: 30\n", "\n@vlt: 30\n",
        "\n@gt: 59\n", "\n@vgt: 59\n", "\n@range: 11\n", "\n@vrange: 11\n", "\n@ge: 5\n",
        "\n@not: 2\n", "\n@or: 2\n", "\n@t[1]: 11\n@t[2]: 69\n"})
    EXPECT_NE(r.out.find(line), std::string::npos) << line << r.out;
}

// print() and clear() in a probe: carried out by the CLI when it reads the hit's records, in their
// order (bpftrace's asynchronous actions). The maps printed here change no more after arg0 == 10.
TEST(CliRun, PrintAndClearInAProbeInTheirOrder) {
  Output r = run({e2e::cli(), "run", "-e",
                  "uprobe:exe:e2e_work /arg0 < 10/ { @early = count(); @e[arg0 % 2] = sum(arg0); } "
                  "uprobe:exe:e2e_work /arg0 == 10/ { print(@early); print(@e, 1); clear(@early); "
                  "print(arg0 * 3); print(\"ten\"); }",
                  "--", e2e::target(), "calls", "100"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  // The command's own line comes whenever its stdout is flushed: not among the tool's lines.
  std::string out = r.out;
  const size_t command_line = out.find("calls 100\n");
  ASSERT_NE(command_line, std::string::npos) << out;
  out.erase(command_line, 10);
  EXPECT_EQ(out,
            "Attaching 2 probes...\n"
            "@early: 10\n"
            "@e[1]: 25\n"
            "30\n"
            "ten\n"
            "\n\n"
            "@e[0]: 20\n"
            "@e[1]: 25\n"
            "@early: 0\n");
}

// delete() of an aggregation's entry in a probe: what the key counted before is gone, what it
// counts after is there. A hist's whole entry goes (bpftrace 0.17 deletes only the bucket of the
// last value it bucketed: CliRunOracle leaves hist out).
TEST(CliRun, DeleteOfAnAggregationsEntryInAProbe) {
  Output r = run({e2e::cli(), "run", "-e",
                  "uprobe:exe:e2e_work { @c[arg0 % 2] = count(); @all = count(); "
                  "@k[arg0 % 3] = hist(arg0); "
                  "if (arg0 == 60) { delete(@c[0]); delete(@all); delete(@k[2]); } }",
                  "--", e2e::target(), "calls", "100"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  // Calls 61..99 after the delete: 19 of them even (62..98), and 39 in all.
  EXPECT_NE(r.out.find("\n@all: 39\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n@c[0]: 19\n@c[1]: 50\n"), std::string::npos) << r.out;
  // Key 2 after the delete: 62 alone below 64, then 65, 68, ..., 98.
  EXPECT_NE(
      r.out.find(
          "\n@k[2]: \n"
          "[32, 64)               1 |@@@@                                                |\n"
          "[64, 128)             12 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"),
      std::string::npos)
      << r.out;
}

// A delete takes the key's values out of every thread's table at once (a tombstone that each
// thread's entry checks), as bpftrace's delete of a per-CPU map's key does on every CPU. Four
// threads each delete @c[1] at their last call: whichever deletes last does so after every call of
// every thread, so nothing of @c is left, though each thread counted into its own table.
TEST(CliRun, DeleteInOneThreadEmptiesEveryThreadsEntry) {
  Output r = run({e2e::cli(), "run", "-e",
                  "uprobe:exe:e2e_work { @c[1] = count(); @n = count(); "
                  "if (arg0 == 1999) { delete(@c[1]); } }",
                  "--", e2e::target(), "threads", "4", "2000"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("\n@n: 8000\n"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("@c["), std::string::npos) << r.out;
}

// A program with an error: bpftrace's message, place and underline; exit 2 and nothing started.
TEST(CliRun, ErrorsAsACompilerGivesThemAndNothingStarts) {
  e2e::TempDir dir;
  const std::string marker = dir.file("ran");
  Output syntax = run({e2e::cli(), "run", "-e", "uprobe:exe:e2e_work { @x = count() exit(); }",
                       "--", e2e::target(), "marker", marker});
  EXPECT_EQ(syntax.exit_code(), 2) << syntax.describe();
  EXPECT_TRUE(syntax.err.starts_with("stdin:1:")) << syntax.err;
  EXPECT_NE(syntax.err.find("ERROR: "), std::string::npos) << syntax.err;
  EXPECT_NE(syntax.err.find("'exit'"), std::string::npos) << syntax.err;
  Output unknown = run({e2e::cli(), "run", "-e", "uprobe:exe:e2e_work { @x = frobnicate(); }", "--",
                        e2e::target(), "marker", marker});
  EXPECT_EQ(unknown.exit_code(), 2) << unknown.describe();
  EXPECT_NE(unknown.err.find("frobnicate"), std::string::npos) << unknown.err;
  Output arg = run({e2e::cli(), "run", "-e", "uprobe:exe:e2e_work { @x = sum(arg6); }", "--",
                    e2e::target(), "marker", marker});
  EXPECT_EQ(arg.exit_code(), 2) << arg.describe();
  EXPECT_NE(arg.err.find("arg6"), std::string::npos) << arg.err;
  EXPECT_FALSE(e2e::file_exists(marker)) << "a refused program must not start the command";
}

}  // namespace
