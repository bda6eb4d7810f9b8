// bpftrace programs read into their syntax trees (as S-expressions, bt::dump), and the parser's
// errors with their places. Verified against bpftrace 0.17 on this machine (`bpftrace -e`):
//   accepted: `BEGIN { @ = 1 }` (no ';' before '}'), `BEGIN,END { exit(); }`,
//     `BEGIN /1 == 1/ { exit(); }`, `if (1) {..} else if (2) {..} else {..}`,
//     `@c <<= 1`, `@b[1]--`, comments `/* */` and `//`, `0x10 + 010` (= 24).
//   refused: `BEGIN { printf("%d\n", 1+2) exit(); }` -> "1:29-33: syntax error, unexpected call,
//     expecting }" (ours names the identifier and "';' or '}'"); `if (1) printf(..)` -> "expecting
//     {"; `BEGIN { @ = 1;; }` -> "unexpected ;"; `@x = foo(1)` -> "1:14-17: Unknown function:
//     foo"; `@x = foo` -> "Unknown identifier: 'foo'"; `(uint9)1` -> "Unknown struct/union:
//     'uint9'" (ours says which casts exist); `arg12` -> "Unknown identifier: 'arg12'";
//     `uprobe:/bin/bash` -> "1:1-17: uprobe probe type requires 2 arguments"; `usdt:/bin/bash` ->
//     "usdt probe type requires 2 or 3 arguments"; `interval:1` -> "interval probe type requires
//     2 arguments"; `BEGIN { @x = 1; ` -> "1:17-17: syntax error, unexpected end of file".
#include "bt/parser.h"

#include <gtest/gtest.h>

namespace usprobe::bt {
namespace {

std::string parsed(std::string_view src) {
  auto p = parse(src);
  if (!p) return "error: " + p.error().message;
  return dump(*p);
}

std::string error_at(std::string_view src) {
  auto p = parse(src);
  if (p) return "parsed: " + dump(*p);
  return format_diagnostic("stdin", src, p.error());
}

TEST(BtParser, AttachPointsOfEveryKind) {
  EXPECT_EQ(parsed("uprobe:/usr/bin/bash:readline, u:libc:str*+0x10, ur:exe:main, "
                   "uretprobe:libc:malloc { exit() }"),
            "(probe (uprobe \"/usr/bin/bash\" \"readline\") (uprobe \"libc\" \"str*\" +16) "
            "(uretprobe \"exe\" \"main\") (uretprobe \"libc\" \"malloc\") (exit))\n");
  EXPECT_EQ(parsed("usdt:/usr/bin/python3.11:python:line,U:exe:probe1 {exit()}"),
            "(probe (usdt \"/usr/bin/python3.11\" \"python\" \"line\") "
            "(usdt \"exe\" \"\" \"probe1\") (exit))\n");
  EXPECT_EQ(parsed("BEGIN,END{exit()} interval:s:2{exit()} i:ms:5{exit()} interval:us:7{exit()}"),
            "(probe BEGIN END (exit))\n(probe (interval 2000000000ns) (exit))\n"
            "(probe (interval 5000000ns) (exit))\n(probe (interval 7000ns) (exit))\n");
}

TEST(BtParser, KeepsTheAttachPointAsWritten) {
  auto p = parse("u:libc:malloc+4 { exit() }");
  ASSERT_TRUE(p);
  const AttachPoint &ap = p->probes[0].attach_points[0];
  EXPECT_EQ(ap.text, "u:libc:malloc+4");
  EXPECT_EQ(ap.function, "malloc");
  EXPECT_EQ(ap.offset, 4u);
  EXPECT_EQ(ap.loc, (SourceLoc{1, 1, 1, 16}));
}

TEST(BtParser, PrecedenceIsCs) {
  EXPECT_EQ(parsed("BEGIN { @ = 1 + 2 * 3 - 4 / 5 % 6 << 1 < 2 == 3 & 4 ^ 5 | 6 && 7 || 8; }"),
            "(probe BEGIN (= @ (|| (&& (| (^ (& (== (< (<< (- (+ 1 (* 2 3)) (% (/ 4 5) 6)) 1) 2) "
            "3) 4) 5) 6) 7) 8)))\n");
  EXPECT_EQ(parsed("BEGIN { @ = -!~1 ? 2 : 3 ? 4 : (uint8)5 + (int64)-6; }"),
            "(probe BEGIN (= @ (? (- (! (~ 1))) 2 (? 3 4 (+ (uint8 5) (int64 (- 6)))))))\n");
  EXPECT_EQ(parsed("BEGIN { @ = (1 + 2) * 3 }"), "(probe BEGIN (= @ (* (+ 1 2) 3)))\n");
}

TEST(BtParser, PredicateEndsAtSlashButParenthesesDivide) {
  EXPECT_EQ(parsed("u:libc:malloc /arg0 > 4096 && (arg0 / 2) < 9/ { @[comm] = count(); }"),
            "(probe (uprobe \"libc\" \"malloc\") (pred (&& (> arg0 4096) (< (/ arg0 2) 9))) "
            "(= (@ comm) (count)))\n");
}

TEST(BtParser, StatementsAssignmentsAndIf) {
  EXPECT_EQ(parsed("BEGIN { $x = 1; $x += 2; $x++; $x--; @a[1, \"k\"] <<= 3; @b--; "
                   "if ($x) { @c = 1 } else if (2) { @c = 2; } else { @c = 3 } exit() }"),
            "(probe BEGIN (= $x 1) (+= $x 2) (++ $x) (-- $x) (<<= (@a 1 \"k\") 3) (-- @b) "
            "(if $x (then (= @c 1)) (else (if 2 (then (= @c 2)) (else (= @c 3))))) (exit))\n");
}

TEST(BtParser, CallsBuiltinsAndMaps) {
  EXPECT_EQ(parsed("ur:libc:malloc { printf(\"%d %s\\n\", retval, str(arg0, 8)); print(@m, 5); "
                   "clear(@m); delete(@m[pid]); @s[ustack, ustack(5), usym(arg0), func, probe] "
                   "= hist(nsecs - elapsed); @l = lhist(cpu, 0, 10, 1); @t = buf(arg0, 4); "
                   "@u = has_key(@m, tid); @v = stats(uid + gid); @w = avg(arg11) }"),
            "(probe (uretprobe \"libc\" \"malloc\") (printf \"%d %s\\n\" retval (str arg0 8)) "
            "(print @m 5) (clear @m) (delete (@m pid)) "
            "(= (@s (ustack) (ustack 5) (usym arg0) func probe) (hist (- nsecs elapsed))) "
            "(= @l (lhist cpu 0 10 1)) (= @t (buf arg0 4)) (= @u (has_key @m tid)) "
            "(= @v (stats (+ uid gid))) (= @w (avg arg11)))\n");
}

TEST(BtParser, SyntaxErrorsNameTheTokenAndWhatWasExpected) {
  EXPECT_EQ(error_at("BEGIN { printf(\"%d\\n\", 1+2) exit(); }"),
            "stdin:1:29-33: ERROR: syntax error, unexpected identifier 'exit', expecting ';' or "
            "'}'\n"
            "BEGIN { printf(\"%d\\n\", 1+2) exit(); }\n"
            "                            ~~~~\n");
  EXPECT_EQ(error_at("BEGIN { if (1) printf(\"a\"); }"),
            "stdin:1:16-22: ERROR: syntax error, unexpected identifier 'printf', expecting '{' (a "
            "probe's or if's statements start with '{')\n"
            "BEGIN { if (1) printf(\"a\"); }\n"
            "               ~~~~~~\n");
  EXPECT_EQ(error_at("BEGIN { @ = 1;; }"),
            "stdin:1:15-16: ERROR: syntax error, unexpected ';', expecting a statement\n"
            "BEGIN { @ = 1;; }\n"
            "              ~\n");
  EXPECT_EQ(error_at("BEGIN { @x = ; }"),
            "stdin:1:14-15: ERROR: syntax error, unexpected ';', expecting an expression\n"
            "BEGIN { @x = ; }\n"
            "             ~\n");
  EXPECT_EQ(error_at("BEGIN { @x = 1; "),
            "stdin:1:17-17: ERROR: syntax error, unexpected end of file, expecting a statement\n"
            "BEGIN { @x = 1; \n"
            "                \n");
  EXPECT_EQ(error_at("BEGIN { @x[1 = 2; }"),
            "stdin:1:14-15: ERROR: syntax error, unexpected '=', expecting ']' (the end of the "
            "map's keys)\n"
            "BEGIN { @x[1 = 2; }\n"
            "             ~\n");
  EXPECT_EQ(error_at("BEGIN { @x; }"),
            "stdin:1:11-12: ERROR: syntax error, unexpected ';', expecting '=', an operator such "
            "as '+=', or '++' after a map\n"
            "BEGIN { @x; }\n"
            "          ~\n");
  EXPECT_EQ(parsed("BEGIN { 1 + 2; }"),
            "error: a statement must be a function call, an assignment or an if: this "
            "expression's value would be unused");
  EXPECT_EQ(parsed("{ exit() }"),
            "error: syntax error, unexpected '{', expecting an attach point (uprobe:FILE:FUNC, "
            "usdt:..., BEGIN...)");
  EXPECT_EQ(parsed(""),
            "error: the program has no probes (expected e.g. uprobe:FILE:FUNC { ... })");
}

TEST(BtParser, UnknownAndUnsupportedNames) {
  EXPECT_EQ(error_at("BEGIN { @x = foo(1); exit(); }"),
            "stdin:1:14-17: ERROR: Unknown function: foo\n"
            "BEGIN { @x = foo(1); exit(); }\n"
            "             ~~~\n");
  EXPECT_EQ(parsed("BEGIN { @x = foo; }"), "error: Unknown identifier: 'foo'");
  EXPECT_EQ(parsed("u:a:b { @x = arg12; }"), "error: Unknown identifier: 'arg12'");
  EXPECT_EQ(parsed("BEGIN { @x = kstack; }"),
            "error: usprobe does not support bpftrace's builtin 'kstack'");
  EXPECT_EQ(parsed("BEGIN { @x = cgroup; }"),
            "error: usprobe does not support bpftrace's builtin 'cgroup'");
  EXPECT_EQ(parsed("BEGIN { system(\"ls\"); }"),
            "error: usprobe does not support bpftrace's function system()");
  EXPECT_EQ(parsed("BEGIN { @x = count; }"), "error: count() is a function: call it as count(...)");
  EXPECT_EQ(parsed("BEGIN { @x = $1; }"),
            "error: usprobe does not support positional parameters ($1)");
  EXPECT_EQ(error_at("BEGIN { @x = (uint9)1; }"),
            "stdin:1:14-21: ERROR: Unknown type in cast: 'uint9' (usprobe casts to int8, int16, "
            "int32, int64, uint8, uint16, uint32 and uint64)\n"
            "BEGIN { @x = (uint9)1; }\n"
            "             ~~~~~~~\n");
}

TEST(BtParser, BadAttachPoints) {
  EXPECT_EQ(error_at("uprobe:/bin/bash { exit(); }"),
            "stdin:1:1-17: ERROR: uprobe probe type requires 2 arguments\n"
            "uprobe:/bin/bash { exit(); }\n"
            "~~~~~~~~~~~~~~~~\n");
  EXPECT_EQ(parsed("usdt:/bin/bash { exit(); }"),
            "error: usdt probe type requires 2 or 3 arguments");
  EXPECT_EQ(parsed("interval:1 { exit(); }"), "error: interval probe type requires 2 arguments");
  EXPECT_EQ(parsed("interval:s:x { exit(); }"),
            "error: interval:s:x: expected a positive decimal count, got 'x'");
  EXPECT_EQ(parsed("interval:m:1 { exit(); }"),
            "error: interval:m:1: invalid interval unit 'm' (expected s, ms, us or hz)");
  EXPECT_EQ(parsed("u:libc:malloc+zz { exit(); }"),
            "error: u:libc:malloc+zz: invalid offset 'zz' (expected decimal or 0x hex)");
  EXPECT_EQ(parsed("ur:libc:malloc+4 { exit(); }"),
            "error: ur:libc:malloc+4: a uretprobe takes no offset: it probes the function's "
            "returns");
  EXPECT_EQ(parsed("u::malloc { exit(); }"), "error: u::malloc: part 2 of the probe is empty");
  EXPECT_EQ(parsed("kprobe:do_sys_open { exit(); }"),
            "error: usprobe does not support kprobe probes: it traces user space (uprobe, "
            "uretprobe, usdt, BEGIN, END, interval)");
  EXPECT_EQ(parsed("foo:bar { exit(); }"),
            "error: Invalid probe type: 'foo' (expected uprobe, uretprobe, usdt, BEGIN, END or "
            "interval)");
  EXPECT_EQ(parsed("BEGIN:x { exit(); }"), "error: BEGIN probe type takes no arguments");
}

TEST(BtParser, ErrorsOnLaterLinesAndAcrossLines) {
  // bpftrace 0.17, a file: "/tmp/btf.bt:3:8-11: ERROR: Unknown function: foo" and the line.
  EXPECT_EQ(format_diagnostic("/tmp/btf.bt", "BEGIN {\n  @x = 1;\n  @y = foo(2);\n}\n",
                              parse("BEGIN {\n  @x = 1;\n  @y = foo(2);\n}\n").error()),
            "/tmp/btf.bt:3:8-11: ERROR: Unknown function: foo\n"
            "  @y = foo(2);\n"
            "       ~~~\n");
  // bpftrace 0.17 prints a span over two lines as "stdin:1-2: ERROR: ..." alone.
  EXPECT_EQ(format_diagnostic("stdin", "a\nb", {{1, 3, 2, 2}, "m"}), "stdin:1-2: ERROR: m\n");
}

}  // namespace
}  // namespace usprobe::bt
