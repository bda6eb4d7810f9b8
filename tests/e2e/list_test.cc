// `usprobe list FILE [PATTERN] [--json]`: the functions of an ELF file with their file offsets and
// sizes, checked against usprobe's own ELF reader (src/elf).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "e2e_support.h"
#include "elf/elf_file.h"
#include "elf/usdt.h"

namespace {

using e2e::Json;
using e2e::Output;
using e2e::run;

std::string text_line(const std::string &name) {
  auto fn = e2e::function_in(e2e::target(), name);
  EXPECT_TRUE(fn.has_value()) << name;
  if (!fn) return "";
  char line[256];
  std::snprintf(line, sizeof line, "0x%016llx %8llu  %s",
                static_cast<unsigned long long>(fn->offset),
                static_cast<unsigned long long>(fn->size), name.c_str());
  return line;
}

TEST(CliList, TextGivesOffsetSizeAndNameSortedByOffset) {
  Output r = run({e2e::cli(), "list", e2e::target(), "e2e_*"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<std::string> want = {text_line("e2e_work"), text_line("e2e_greet"),
                                   text_line("e2e_args")};
  std::sort(want.begin(), want.end());  // same width hex: text order is offset order
  EXPECT_EQ(e2e::lines(r.out), want) << r.describe();
}

// -r: the pattern is a regular expression, searched for in the names.
TEST(CliList, RegexPatternSelectsTheNamesItMatches) {
  Output r = run({e2e::cli(), "list", "-r", e2e::target(), "^e2e_(work|greet)$"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<std::string> want = {text_line("e2e_work"), text_line("e2e_greet")};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(e2e::lines(r.out), want) << r.describe();
}

// "exe" is the command a session starts: list has none, and says what to give instead.
TEST(CliList, ExeWithoutACommandAsksForAPath) {
  Output r = run({e2e::cli(), "list", "exe", "main"});
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  EXPECT_EQ(r.err,
            "usprobe: list: 'exe' is the command a session starts; give its path: usprobe list "
            "/usr/bin/sqlite3\n");
  EXPECT_EQ(r.out, "");
}

// A stripped program (Debian's sqlite3: only .dynsym) lists its exported functions, with a note
// naming the package of its debug symbols; a probe on a function it does not export says the same.
TEST(CliList, AStrippedFileSaysSoAndNamesItsDebugPackage) {
  const std::string sqlite3 = "/usr/bin/sqlite3";
  if (!e2e::file_exists(sqlite3)) GTEST_SKIP() << "no /usr/bin/sqlite3 (Debian sqlite3)";
  auto file = usprobe::elf::ElfFile::open(sqlite3);
  ASSERT_TRUE(file.has_value()) << file.error().message;
  if (!(*file)->symtab_path().empty()) GTEST_SKIP() << "sqlite3's symbols are installed";
  Output r = run({e2e::cli(), "list", sqlite3});
  EXPECT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.err.find("usprobe: note: /usr/bin/sqlite3 is stripped: only its exported functions "
                       "are listed; install sqlite3-dbgsym (debian-debug archive) for the others"),
            std::string::npos)
      << r.describe();
  Output p = run({e2e::cli(), "count", "/usr/bin/sqlite3:sqlite3_no_such_function", "--", "true"});
  EXPECT_EQ(p.exit_code(), 2) << p.describe();
  EXPECT_NE(p.err.find("is stripped: only its exported functions are known; install "
                       "sqlite3-dbgsym"),
            std::string::npos)
      << p.describe();
}

TEST(CliList, JsonGivesTheAbsolutePathAndTheFunctions) {
  // A relative path on the command line; the report names the file absolutely.
  // (With a slash in it: a bare name would be a short library name.)
  std::string relative =
      std::filesystem::relative(e2e::target(), std::filesystem::current_path()).string();
  if (relative.find('/') == std::string::npos) relative = "./" + relative;
  ASSERT_NE(relative.front(), '/');
  Output r = run({e2e::cli(), "list", relative, "e2e_work", "--json"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> all = e2e::json_lines(r.out);
  ASSERT_EQ(all.size(), 1u) << r.describe();
  EXPECT_EQ(e2e::lines(r.out).size(), 1u) << "one line: " << r.describe();
  auto fn = e2e::function_in(e2e::target(), "e2e_work");
  ASSERT_TRUE(fn);
  Json want = {{"file", e2e::realpath_of(e2e::target())},
               {"functions", {{{"name", "e2e_work"}, {"offset", fn->offset}, {"size", fn->size}}}}};
  EXPECT_EQ(all[0], want) << all[0].dump();
}

TEST(CliList, WithoutPatternListsEveryFunctionInOffsetOrder) {
  Output r = run({e2e::cli(), "list", e2e::target(), "--json"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> all = e2e::json_lines(r.out);
  ASSERT_EQ(all.size(), 1u) << r.describe();
  ASSERT_TRUE(all[0].contains("functions") && all[0]["functions"].is_array()) << all[0].dump();
  std::set<std::string> names;
  uint64_t last = 0;
  for (const Json &f : all[0]["functions"]) {
    names.insert(f.value("name", ""));
    const uint64_t offset = f.value("offset", uint64_t{0});
    EXPECT_LE(last, offset) << f.dump();
    last = offset;
  }
  for (const char *name : {"main", "e2e_work", "e2e_greet", "e2e_args"})
    EXPECT_TRUE(names.count(name)) << name << " missing";
}

TEST(CliList, AFileThatDoesNotExistIsAnError) {
  Output r = run({e2e::cli(), "list", "/nonexistent/usprobe-e2e/libnothing.so"});
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  std::vector<std::string> err = e2e::lines(r.err);
  ASSERT_EQ(err.size(), 1u) << r.describe();
  EXPECT_TRUE(e2e::starts_with(err[0], "usprobe: ")) << err[0];
  EXPECT_NE(err[0].find("/nonexistent/usprobe-e2e/libnothing.so"), std::string::npos) << err[0];
}

// A C++ function is listed by its mangled name, then its demangled one, and a pattern matches
// either: both name it in a probe (tests/e2e/stacks_target_cc.cc's two stacks_demo::scale).
TEST(CliList, CxxFunctionsShowTheirDemangledNamesAndPatternsMatchThem) {
  Output r = run({e2e::cli(), "list", STACKS_TARGET_CC, "stacks_demo::scale*"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<std::string> rows = e2e::lines(r.out);
  ASSERT_EQ(rows.size(), 2u) << r.out;
  std::vector<std::string> names;
  for (const std::string &row : rows) {
    std::vector<std::string> w = e2e::words(row);
    ASSERT_EQ(w.size(), 4u) << row;
    names.push_back(w[2] + " " + w[3]);
  }
  EXPECT_EQ(names,
            (std::vector<std::string>{"_ZN11stacks_demo5scaleEi stacks_demo::scale(int)",
                                      "_ZN11stacks_demo5scaleEd stacks_demo::scale(double)"}));
}

}  // namespace

namespace {

constexpr const char *kPython311 = "/usr/bin/python3.11";

// usdt:FILE lists the file's USDT probes one a line, as bpftrace -l names them (CPython's eight,
// in note order); -v adds each probe's sites, semaphore and argument specs, as the notes have them
// (read here with usprobe's ELF reader); a file without notes says so.
TEST(CliList, UsdtProbesAsBpftraceNamesThemAndWithVTheirSitesArgumentsAndSemaphore) {
  if (!e2e::file_exists(kPython311)) GTEST_SKIP() << kPython311 << " is not installed";
  Output all = run({e2e::cli(), "list", std::string("usdt:") + kPython311});
  ASSERT_EQ(all.exit_code(), 0) << all.describe();
  std::vector<std::string> want;
  for (const char *name : {"audit", "gc__done", "gc__start", "line", "import__find__load__start",
                           "import__find__load__done", "function__entry", "function__return"})
    want.push_back(std::string("usdt:") + kPython311 + ":python:" + name);
  std::vector<std::string> got = e2e::lines(all.out);
  std::vector<std::string> sorted_got = got, sorted_want = want;
  std::sort(sorted_got.begin(), sorted_got.end());
  std::sort(sorted_want.begin(), sorted_want.end());
  EXPECT_EQ(sorted_got, sorted_want) << all.describe();

  Output verbose = run({e2e::cli(), "list", "-v", std::string("usdt:") + kPython311 + ":audit"});
  ASSERT_EQ(verbose.exit_code(), 0) << verbose.describe();
  auto file = usprobe::elf::ElfFile::open(kPython311);
  ASSERT_TRUE(file.has_value());
  auto notes = usprobe::elf::read_usdt_probes(**file);
  ASSERT_TRUE(notes.has_value());
  auto audit = std::find_if(notes->begin(), notes->end(),
                            [](const usprobe::elf::UsdtProbe &n) { return n.name == "audit"; });
  ASSERT_NE(audit, notes->end());
  ASSERT_NE(audit->semaphore_vaddr, 0u);
  char head[256], site[256];
  std::snprintf(head, sizeof head, "usdt:%s:python:audit  1 site, semaphore %#llx", kPython311,
                static_cast<unsigned long long>(audit->semaphore_vaddr));
  ASSERT_EQ(audit->args.size(), 2u);
  // Then the path the engine would give the site: python:audit's nop is followed by whole
  // instructions that no branch enters.
  std::snprintf(site, sizeof site, "    0x%016llx  arg0=%s arg1=%s  [jump]",
                static_cast<unsigned long long>(audit->file_offset), audit->args[0].text.c_str(),
                audit->args[1].text.c_str());
  EXPECT_EQ(e2e::lines(verbose.out), (std::vector<std::string>{head, site})) << verbose.describe();

  Output none = run({e2e::cli(), "list", std::string("usdt:") + e2e::target()});
  EXPECT_EQ(none.exit_code(), 2) << none.describe();
  EXPECT_EQ(none.err, "usprobe: " + e2e::realpath_of(e2e::target()) +
                          ": no USDT probes (the file has no .note.stapsdt notes)\n");
}

}  // namespace
