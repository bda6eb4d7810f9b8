// Requests the CLI must refuse before it starts the command: exit status 2, one line on stderr that
// starts "usprobe: " and names what is wrong, and no sign of the command (it would have created a
// marker file and printed "marker created").
#include <cstdio>
#include <ostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "e2e_support.h"

namespace {

using e2e::Output;

enum class Command { kTarget, kStatic, kNotOnPath, kNoSuchPath };

struct ErrorCase {
  const char *name;
  std::vector<std::string> request;  // subcommand, options and probes, before "--"
  Command command;
  std::string mentions;  // the stderr line must contain this
};

void PrintTo(const ErrorCase &c, std::ostream *os) {
  *os << c.name;
}

class CliErrors : public testing::TestWithParam<ErrorCase> {};

std::string NameOf(const testing::TestParamInfo<ErrorCase> &param) {
  return param.param.name;
}

TEST_P(CliErrors, ExitTwoWithOneLineAndTheCommandNeverStarts) {
  const ErrorCase &c = GetParam();
  e2e::TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string marker = dir.file("marker");
  std::vector<std::string> argv = {e2e::cli()};
  argv.insert(argv.end(), c.request.begin(), c.request.end());
  argv.push_back("--");
  switch (c.command) {
    case Command::kTarget:
      argv.insert(argv.end(), {e2e::target(), "marker", marker});
      break;
    case Command::kStatic:
      argv.insert(argv.end(), {e2e::static_target(), "marker", marker});
      break;
    case Command::kNotOnPath:
      argv.insert(argv.end(), {"usprobe-e2e-no-such-command", "marker", marker});
      break;
    case Command::kNoSuchPath:
      argv.insert(argv.end(), {"/nonexistent/usprobe-e2e/prog", "marker", marker});
      break;
  }
  Output r = e2e::run(argv);
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  std::vector<std::string> err = e2e::lines(r.err);
  ASSERT_EQ(err.size(), 1u) << "one line on stderr\n" << r.describe();
  EXPECT_TRUE(e2e::starts_with(err[0], "usprobe: ")) << err[0];
  EXPECT_NE(err[0].find(c.mentions), std::string::npos)
      << "the message should name \"" << c.mentions << "\": " << err[0];
  EXPECT_FALSE(e2e::file_exists(marker)) << "the command ran\n" << r.describe();
  EXPECT_EQ(r.out.find("marker created"), std::string::npos) << "the command ran\n" << r.describe();
}

const std::string kGreet = R"(exe:e2e_greet "%s %d", arg0, arg1)";

INSTANTIATE_TEST_SUITE_P(
    Count, CliErrors,
    testing::Values(
        ErrorCase{"BadOffset", {"count", "exe:e2e_work+zz"}, Command::kTarget, "zz"},
        ErrorCase{"NoFile", {"count", "e2e_work"}, Command::kTarget, "e2e_work"},
        ErrorCase{"UnknownLibrary", {"count", "libnosuch:foo"}, Command::kTarget, "libnosuch"},
        ErrorCase{"UnknownPath",
                  {"count", "/nonexistent/usprobe-e2e/libx.so:foo"},
                  Command::kTarget,
                  "/nonexistent/usprobe-e2e/libx.so"},
        ErrorCase{"UnknownLibcSymbol", {"count", "libc:mallok"}, Command::kTarget, "mallok"},
        // What the engine would refuse in the command is found before it starts (e2e_target.c's
        // asm_sites): not a "not placed" notice from a command that runs anyway.
        ErrorCase{"OffsetInsideAnInstruction",
                  {"count", "exe:asm_sites+0x1"},
                  Command::kTarget,
                  "exe:asm_sites+0x1: offset 0x1 of asm_sites is inside an instruction"},
        ErrorCase{"DecimalOffsetInsideAnInstruction",
                  {"count", "uprobe:exe:asm_sites+1"},
                  Command::kTarget,
                  "inside an instruction"},
        ErrorCase{"InstructionThatCannotBeMoved",
                  {"count", "exe:asm_sites+0x5"},
                  Command::kTarget,
                  "exe:asm_sites+0x5: cannot be probed: "},
        ErrorCase{"ProcSelfExeIsUsprobeNotTheCommand",
                  {"count", "/proc/self/exe:main"},
                  Command::kTarget,
                  "/proc/self/exe is usprobe's own program"},
        ErrorCase{"UnknownExeSymbol", {"count", "exe:e2e_nosuch"}, Command::kTarget, "e2e_nosuch"},
        ErrorCase{"OneBadProbeAmongGoodOnes",
                  {"count", "libc:malloc", "libc:mallok", "exe:e2e_work"},
                  Command::kTarget,
                  "mallok"},
        ErrorCase{
            "GlobMatchesNothing", {"count", "libc:zzz_nomatch*"}, Command::kTarget, "zzz_nomatch"},
        ErrorCase{"StaticCommand", {"count", "libc:malloc"}, Command::kStatic, "e2e_static"},
        ErrorCase{"CommandNotFound",
                  {"count", "libc:malloc"},
                  Command::kNotOnPath,
                  "usprobe-e2e-no-such-command"},
        ErrorCase{"CommandPathDoesNotExist",
                  {"count", "libc:malloc"},
                  Command::kNoSuchPath,
                  "/nonexistent/usprobe-e2e/prog"},
        ErrorCase{"TopZero",
                  {"count", "--top", "0", "exe:e2e_work"},
                  Command::kTarget,
                  "--top: expected a whole number from 1"},
        // -u became funclatency's flag (microseconds): "-u us" names the unit the old way.
        ErrorCase{"LatencyUnitAfterTheMicrosecondsFlag",
                  {"latency", "-u", "us", "exe:e2e_work"},
                  Command::kTarget,
                  "--unit us"},
        ErrorCase{"CommandOutputCannotBeCreated",
                  {"count", "--cmd-output", "/nonexistent/usprobe-e2e/out", "libc:malloc"},
                  Command::kTarget,
                  "--cmd-output /nonexistent/usprobe-e2e/out: cannot open"},
        ErrorCase{"UnknownSignal",
                  {"count", "--signal", "SIGNOPE", "libc:malloc"},
                  Command::kTarget,
                  "--signal: expected a signal name or number"},
        ErrorCase{"NameLongerThanAnyComm",
                  {"count", "-n", "sixteen_letters_", "libc:malloc"},
                  Command::kTarget,
                  "-n 'sixteen_letters_': longer than 15 characters"}),
    NameOf);

INSTANTIATE_TEST_SUITE_P(
    Trace, CliErrors,
    testing::Values(
        ErrorCase{"UnknownSymbol",
                  {"trace", R"(exe:e2e_nosuch "%d", arg0)"},
                  Command::kTarget,
                  "e2e_nosuch"},
        ErrorCase{
            "UnknownConversion", {"trace", R"(exe:e2e_greet "%q", arg0)"}, Command::kTarget, "%q"},
        ErrorCase{
            "NoSuchArgument", {"trace", R"(exe:e2e_greet "%d", arg9)"}, Command::kTarget, "arg9"},
        ErrorCase{"TooFewArguments",
                  {"trace", R"(exe:e2e_greet "%s %d", arg0)"},
                  Command::kTarget,
                  "usprobe: "},
        ErrorCase{"UnterminatedFormat",
                  {"trace", R"(exe:e2e_greet "%s, arg0)"},
                  Command::kTarget,
                  "usprobe: "},
        ErrorCase{"StaticCommand", {"trace", kGreet}, Command::kStatic, "e2e_static"},
        ErrorCase{"CommandNotFound",
                  {"trace", kGreet},
                  Command::kNotOnPath,
                  "usprobe-e2e-no-such-command"}),
    NameOf);

// The command line as bpftrace and BCC users write it: a misspelt option or subcommand gets the
// nearest right one, a bad duration or regex is named, and each points at its subcommand's help.
INSTANTIATE_TEST_SUITE_P(
    Habits, CliErrors,
    testing::Values(
        ErrorCase{"UnknownOptionSuggestsTheNearest",
                  {"count", "--jsn", "exe:e2e_work"},
                  Command::kTarget,
                  "usprobe: count: unknown option '--jsn' (did you mean --json?); see usprobe "
                  "count --help"},
        ErrorCase{"LongOptionWithOneDash",
                  {"trace", "-json", kGreet},
                  Command::kTarget,
                  "trace: unknown option '-json' (did you mean --json?); see usprobe trace --help"},
        ErrorCase{"MisspeltSubcommand",
                  {"cout", "exe:e2e_work"},
                  Command::kTarget,
                  "usprobe: unknown subcommand 'cout' (did you mean count?"},
        ErrorCase{"BadDuration",
                  {"count", "-d", "5x", "exe:e2e_work"},
                  Command::kTarget,
                  "usprobe: count: -d '5x': expected a duration (1.5, 500ms, 2s, 1m); see usprobe "
                  "count --help"},
        ErrorCase{"BadIntervalSpeltLong",
                  {"latency", "--interval=0ms", "exe:e2e_work"},
                  Command::kTarget,
                  "latency: --interval '0ms': expected a duration"},
        ErrorCase{"OtherParseErrorsPointAtTheSubcommandsHelp",
                  {"trace", "--strlen", "0", kGreet},
                  Command::kTarget,
                  "; see usprobe trace --help"},
        ErrorCase{"BadRegex",
                  {"stacks", "-r", "exe:e2e_(work"},
                  Command::kTarget,
                  "bad probe 'exe:e2e_(work': invalid regular expression 'e2e_(work'"},
        ErrorCase{"UsdtOnAFileWithoutNotes",
                  {"count", "usdt:exe:e2e_work"},
                  Command::kTarget,
                  ": no USDT probes (the file has no .note.stapsdt notes)"},
        ErrorCase{"UsdtMisspeltSuggestsTheNearest",
                  {"count", "usdt:/usr/bin/python3.11:python:audti"},
                  Command::kTarget,
                  "/usr/bin/python3.11: no USDT probe `python:audti` (did you mean "
                  "`python:audit`?)"},
        ErrorCase{"UsdtHasNoReturn",
                  {"count", "uretprobe:usdt:/usr/bin/python3.11:python:audit"},
                  Command::kTarget,
                  "a USDT probe is a point in the code, not a function: it has no return to probe"},
        ErrorCase{"UsdtHasNoLatency",
                  {"latency", "usdt:/usr/bin/python3.11:python:audit"},
                  Command::kTarget,
                  "a USDT probe is a point in the code, not a function: it has no return to time"},
        ErrorCase{"UsdtFormatPrintsAnArgumentTheNoteLacks",
                  {"trace", R"(usdt:/usr/bin/python3.11:python:gc__start "%d %d", arg0, arg1)"},
                  Command::kTarget,
                  "usdt:/usr/bin/python3.11:python:gc__start: the format prints arg1, but the "
                  "note at offset"},
        ErrorCase{"UsdtSeventhArgumentOfAThreeArgumentNote",
                  {"trace", R"(usdt:/usr/bin/python3.11:python:line "%d", arg7)"},
                  Command::kTarget,
                  "usdt:/usr/bin/python3.11:python:line: the format prints arg7, but the note at "
                  "offset"},
        ErrorCase{"UsdtHasTwelveArgumentsAtMost",
                  {"trace", R"(usdt:/usr/bin/python3.11:python:line "%d", arg12)"},
                  Command::kTarget,
                  "'arg12' is not an argument (arg0 to arg11)"},
        ErrorCase{"RegexMatchesNothing",
                  {"count", "-r", "exe:^e2e_nosuch"},
                  Command::kTarget,
                  "matches the regular expression '^e2e_nosuch'"}),
    NameOf);

// A raw file offset inside an instruction is refused as the symbol's is: the CLI decodes the
// function around it (e2e_target.c's asm_sites, read with usprobe's ELF reader).
TEST(CliErrorsRaw, FileOffsetInsideAnInstructionIsRefusedAndTheCommandNeverStarts) {
  auto fn = e2e::function_in(e2e::target(), "asm_sites");
  ASSERT_TRUE(fn.has_value());
  e2e::TempDir dir;
  const std::string marker = dir.file("marker");
  char spec[64];
  std::snprintf(spec, sizeof spec, "exe:%#llx", static_cast<unsigned long long>(fn->offset + 1));
  Output r = e2e::run({e2e::cli(), "count", spec, "--", e2e::target(), "marker", marker});
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  std::vector<std::string> err = e2e::lines(r.err);
  ASSERT_EQ(err.size(), 1u) << r.describe();
  EXPECT_EQ(err[0],
            std::string("usprobe: ") + spec + ": offset 0x1 of asm_sites is inside an instruction");
  EXPECT_FALSE(e2e::file_exists(marker)) << "the command ran\n" << r.describe();
}

}  // namespace
