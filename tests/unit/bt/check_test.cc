// The checker: the types it gives, the map table, printf's formats, and its errors. Verified
// against bpftrace 0.17 on this machine (`bpftrace -e`, the map's type shown by an assignment
// that does not fit it):
//   types: pid tid uid gid cpu nsecs elapsed arg0 retval: unsigned int64; comm string[16];
//     str(p) and str(p, 5) string[64]; "ab" string[3]; func usym; ustack ustack; buf(p, 8)
//     buffer[9]; (uint8)1 unsigned int8 in a variable, unsigned int64 in a map; 1 and -1 int64;
//     pid+1, -pid, !pid unsigned int64; (int8)1 < 2 int64.
//   errors, same text here: "Type mismatch for @x: trying to assign value of type 'string[2]'
//     when map already contains a value of type 'int64" (bpftrace drops the closing quote; ours has
//     it), "Argument mismatch for @x: ..." (bpftrace names every integer key "unsigned int64"),
//     "Type mismatch for $x: ..." (at the '='), "Undefined map: @x", "Undefined or undeclared
//     variable: $x", "count() should be directly assigned to a map", "x86_64 doesn't support arg6",
//     "The func builtin can not be used with 'usdt' probes", "printf: Not enough / Too many
//     arguments for format string (1 supplied, 2 expected)", "printf: %d specifier expects a value
//     of type integer (string supplied)", "printf() expects a string literal (integer provided)",
//     "printf() requires at least one argument (0 provided)", "hist() requires one argument (0
//     provided)", "lhist() ..." (4 arguments, literals, min < max, step >= 1, min >= 0), "sum()
//     only supports integer arguments (string provided)", "count() requires no arguments (1
//     provided)", "exit() requires no arguments (1 provided)", "The ++ operator can not be used on
//     expressions of type 'count'", "Ternary operator must return the same type: have 'integer' and
//     'string'", "Type mismatch for '+': comparing 'int64' with 'string[2]'" (both operands
//     underlined), "The < operator can not be used on expressions of types string[2], string[2]"
//     and "The ~ operator can not be used on expressions of type 'string[2]'" (the operator
//     underlined), "clear() expects a map to be provided".
//   bpftrace's wording adapted to usprobe: arg0 outside uprobe/usdt ("...can only be used with
//     'kprobes', 'uprobes' and 'usdt' probes"), retval outside uretprobe.
//   bpftrace 0.17 takes and usprobe refuses, saying why: reading an aggregation map as a value
//     (`@y = @x` of a count(); bpftrace refuses it in arithmetic and printf already); printf
//     conversions it does not know (`%q`, a trailing `%5`: bpftrace prints them as text).
//   has_key() is not in bpftrace 0.17 ("Unknown function: has_key"): usprobe's, as later
//     bpftrace versions define it.
#include "bt/check.h"

#include <gtest/gtest.h>

#include "bt/parser.h"

namespace usprobe::bt {
namespace {

// The typed dump, or the formatted error.
std::string checked(std::string_view src) {
  auto p = parse(src);
  if (!p) return "parse error: " + p.error().message;
  auto c = check(*p);
  if (!c) return format_diagnostic("stdin", src, c.error());
  return dump(*p, true);
}

std::string error_of(std::string_view src) {
  auto p = parse(src);
  if (!p) return "parse error: " + p.error().message;
  auto c = check(*p);
  if (!c) return c.error().message;
  return "ok";
}

Program checked_program(std::string_view src) {
  auto p = parse(src);
  EXPECT_TRUE(p) << p.error().message;
  auto c = check(*p);
  EXPECT_TRUE(c) << c.error().message;
  return std::move(*p);
}

TEST(BtCheck, BuiltinTypes) {
  EXPECT_EQ(checked("u:a:b { @a = pid; @b = comm; @c = str(arg0); @d = func; @e = ustack; "
                    "@f = ustack(5); @g = buf(arg1, 8); @h = usym(arg2); @i = \"ab\"; @j = -1; "
                    "@k = probe; }"),
            "(probe (uprobe \"a\" \"b\") (= @a:u64 pid:u64) (= @b:str16 comm:str16) "
            "(= @c:str64 (str arg0:u64):str64) (= @d:usym func:usym) "
            "(= @e:ustack127 (ustack):ustack127) (= @f:ustack5 (ustack 5:s64):ustack5) "
            "(= @g:buf9 (buf arg1:u64 8:s64):buf9) (= @h:usym (usym arg2:u64):usym) "
            "(= @i:str3 \"ab\":str3) (= @j:s64 (- 1:s64):s64) (= @k:str64 probe:str64))\n");
}

TEST(BtCheck, IntegerWidthsAndSignedness) {
  // Variables keep a cast's width; maps store 64 bits, keeping the sign.
  EXPECT_EQ(checked("BEGIN { $x = (uint8)1; @m = $x; @n = (int16)1 + 2; @o = pid + -1; "
                    "@p = (int8)1 < 2; @q = 1 ? pid : 2 }"),
            "(probe BEGIN (= $x:u8 (uint8 1:s64):u8) (= @m:u64 $x:u8) "
            "(= @n:s64 (+ (int16 1:s64):s16 2:s64):s64) (= @o:u64 (+ pid:u64 (- 1:s64):s64):u64) "
            "(= @p:s64 (< (int8 1:s64):s8 2:s64):s64) (= @q:u64 (? 1:s64 pid:u64 2:s64):u64))\n");
}

TEST(BtCheck, MapTableRecordsKeysKindsAndLhist) {
  Program p = checked_program(
      "u:libc:malloc { @bytes[comm, pid] = sum(arg0); @sizes = hist(arg0); "
      "@l[tid] = lhist(arg0, 0, 100, 10); @n = count(); @last[\"k\"] = arg0; @neg = min(-1); }");
  ASSERT_EQ(p.maps.size(), 6u);
  const MapInfo &bytes = p.maps[0];
  EXPECT_EQ(bytes.name, "@bytes");
  EXPECT_EQ(bytes.kind, ValueKind::kSum);
  ASSERT_EQ(bytes.keys.size(), 2u);
  EXPECT_EQ(bytes.keys[0], Type::string(16));
  EXPECT_EQ(bytes.keys[1], Type::integer(64, false));
  EXPECT_FALSE(bytes.is_signed);
  EXPECT_EQ(p.maps[1].kind, ValueKind::kHist);
  const MapInfo &l = p.maps[2];
  EXPECT_EQ(l.kind, ValueKind::kLhist);
  EXPECT_EQ(std::tuple(l.lhist_min, l.lhist_max, l.lhist_step), std::tuple(0, 100, 10));
  EXPECT_EQ(p.maps[3].kind, ValueKind::kCount);
  EXPECT_EQ(p.maps[4].kind, ValueKind::kScalar);
  EXPECT_EQ(p.maps[4].value, Type::integer(64, false));
  EXPECT_EQ(p.maps[4].keys[0], Type::string(2));
  EXPECT_EQ(p.maps[5].kind, ValueKind::kMin);
  EXPECT_TRUE(p.maps[5].is_signed);
  // Each use points at its map.
  EXPECT_EQ(p.probes[0].body[2].target->index, 2);
}

TEST(BtCheck, MapsMayBeReadAboveTheirAssignment) {
  Program p = checked_program("interval:s:1 { printf(\"%d\\n\", @x); } u:a:b { @x = arg0; }");
  ASSERT_EQ(p.maps.size(), 1u);
  EXPECT_EQ(p.probes[0].body[0].expr->args[1]->index, 0);
  EXPECT_EQ(p.probes[0].body[0].expr->args[1]->type, Type::integer(64, false));
  ASSERT_EQ(p.printfs.size(), 1u);
  EXPECT_EQ(p.printfs[0].format, "%d\n");
}

TEST(BtCheck, ScratchVariablesAreIndexedPerBlock) {
  Program p = checked_program(
      "BEGIN { $a = 1; $b = \"s\"; $a += 2; @x = $b } "
      "END { $b = 5; $b++; exit() }");
  ASSERT_EQ(p.probes[0].variables.size(), 2u);
  EXPECT_EQ(p.probes[0].variables[1].name, "b");
  EXPECT_EQ(p.probes[0].variables[1].type, Type::string(2));
  EXPECT_EQ(p.probes[0].body[2].target->index, 0);
  EXPECT_EQ(p.probes[0].body[3].value->index, 1);
  ASSERT_EQ(p.probes[1].variables.size(), 1u);
  EXPECT_EQ(p.probes[1].variables[0].type, Type::integer(64, true));
}

TEST(BtCheck, PrintfFormatsAndArguments) {
  Program p = checked_program(
      "u:a:b { printf(\"%lu %ld %llu %lld %lx %llx %X %o %c %p %i %u|%-5d|%05d|%.3s|%s %s %% "
      "%r\\n\","
      " 1,2,3,4,5,6,7,8,65,9,10,11,12,13,\"abcdef\", usym(arg0), ustack, buf(arg0, 4)); }");
  ASSERT_EQ(p.printfs.size(), 1u);
  ASSERT_EQ(p.printfs[0].args.size(), 18u);
  EXPECT_EQ(p.printfs[0].args[14], Type::string(7));
  EXPECT_EQ(p.printfs[0].args[17].kind, TypeKind::kBuf);
  auto specs = parse_format("a %-08.3lld %% %s");
  ASSERT_TRUE(specs);
  ASSERT_EQ(specs->size(), 2u);
  EXPECT_EQ((*specs)[0].spec, "%-08.3lld");
  EXPECT_EQ((*specs)[0].conversion, 'd');
  EXPECT_EQ((*specs)[1].conversion, 's');
}

TEST(BtCheck, PrintfErrorsAsBpftrace) {
  EXPECT_EQ(checked("BEGIN { printf(\"%d %d\\n\", 1); exit(); }"),
            "stdin:1:9-29: ERROR: printf: Not enough arguments for format string (1 supplied, 2 "
            "expected)\n"
            "BEGIN { printf(\"%d %d\\n\", 1); exit(); }\n"
            "        ~~~~~~~~~~~~~~~~~~~~\n");
  EXPECT_EQ(checked("BEGIN { printf(\"%d\\n\", \"a\"); exit(); }"),
            "stdin:1:9-28: ERROR: printf: %d specifier expects a value of type integer (string "
            "supplied)\n"
            "BEGIN { printf(\"%d\\n\", \"a\"); exit(); }\n"
            "        ~~~~~~~~~~~~~~~~~~~\n");
  EXPECT_EQ(error_of("BEGIN { printf(\"%d\\n\", 1, 2); }"),
            "printf: Too many arguments for format string (2 supplied, 1 expected)");
  EXPECT_EQ(error_of("BEGIN { printf(\"%s\\n\", 1); }"),
            "printf: %s specifier expects a value of type string (integer supplied)");
  EXPECT_EQ(error_of("BEGIN { printf(\"%s\\n\", buf(0, 4)); }"),
            "printf: %s specifier expects a value of type string (buffer supplied)");
  EXPECT_EQ(error_of("BEGIN { printf(1); }"),
            "printf() expects a string literal (integer provided)");
  EXPECT_EQ(error_of("BEGIN { printf(); }"),
            "printf() requires at least one argument (0 provided)");
  EXPECT_EQ(error_of("BEGIN { printf(\"%q\", 1); }"),
            "printf: unknown conversion '%q' (expected one of d i u x X o c s p r, or %% for a "
            "'%')");
  EXPECT_EQ(error_of("BEGIN { printf(\"%5\"); }"),
            "printf: incomplete conversion '%5' at the end of the format (write %% for a '%')");
}

TEST(BtCheck, BuiltinsFollowTheProbeType) {
  EXPECT_EQ(checked("usdt:/usr/bin/python3.11:python:line { printf(\"%d\\n\", arg11); exit(); }"),
            "(probe (usdt \"/usr/bin/python3.11\" \"python\" \"line\") "
            "(printf \"%d\\n\":str4 arg11:u64) (exit))\n");
  EXPECT_EQ(checked("uprobe:/bin/bash:readline { @ = arg6; }"),
            "stdin:1:33-37: ERROR: x86_64 doesn't support arg6\n"
            "uprobe:/bin/bash:readline { @ = arg6; }\n"
            "                                ~~~~\n");
  EXPECT_EQ(error_of("uretprobe:/bin/bash:readline { @ = arg0; }"),
            "The arg0 builtin can only be used with 'uprobes' and 'usdt' probes");
  EXPECT_EQ(error_of("END { @ = arg0; }"),
            "The arg0 builtin can only be used with 'uprobes' and 'usdt' probes");
  EXPECT_EQ(error_of("u:a:b { @ = retval; }"),
            "The retval builtin can only be used with 'uretprobe' probes");
  EXPECT_EQ(error_of("usdt:a:b:c { @ = func; }"),
            "The func builtin can not be used with 'usdt' probes");
  EXPECT_EQ(error_of("interval:s:1 { @ = func; }"),
            "The func builtin can not be used with 'interval' probes");
  EXPECT_EQ(error_of("BEGIN { @ = func; }"),
            "The func builtin can not be used with 'BEGIN' probes");
  // Every attach point of a block must allow it.
  EXPECT_EQ(error_of("u:a:b, ur:a:b { @ = arg0; }"),
            "The arg0 builtin can only be used with 'uprobes' and 'usdt' probes");
  EXPECT_EQ(error_of("ur:a:b { @[func] = retval; }"), "ok");
}

TEST(BtCheck, MapsAgreeOnKeysAndValues) {
  EXPECT_EQ(checked("BEGIN { @x = 1; @x = \"a\"; exit(); }"),
            "stdin:1:17-19: ERROR: Type mismatch for @x: trying to assign value of type "
            "'string[2]' when map already contains a value of type 'int64'\n"
            "BEGIN { @x = 1; @x = \"a\"; exit(); }\n"
            "                ~~\n");
  EXPECT_EQ(checked("BEGIN { @x[1] = 1; @x[1,2] = 2; exit(); }"),
            "stdin:1:20-27: ERROR: Argument mismatch for @x: trying to access with arguments: "
            "[unsigned int64, unsigned int64] when map expects arguments: [unsigned int64]\n"
            "BEGIN { @x[1] = 1; @x[1,2] = 2; exit(); }\n"
            "                   ~~~~~~~\n");
  EXPECT_EQ(error_of("BEGIN { @x[1] = 1; @x[\"a\"] = 2; }"),
            "Argument mismatch for @x: trying to access with arguments: [string[2]] when map "
            "expects arguments: [unsigned int64]");
  EXPECT_EQ(error_of("BEGIN { @x = count(); @x = 1; }"),
            "Type mismatch for @x: trying to assign value of type 'int64' when map already "
            "contains a value of type 'count'");
  EXPECT_EQ(error_of("BEGIN { @[1] = hist(1); @[2] = lhist(1,0,10,1); }"),
            "Type mismatch for @: trying to assign value of type 'lhist' when map already "
            "contains a value of type 'hist'");
  EXPECT_EQ(error_of("BEGIN { @ = lhist(1,0,10,1); @ = lhist(1,0,20,1); }"),
            "lhist() of @ was given min 0, max 10, step 1 before");
  // Ints of any width, strings of any size, share a map; the largest string is kept.
  Program p = checked_program("BEGIN { @a = \"x\"; @a = \"xyz\"; @b[(uint8)1] = 1; @b[-1] = 2 }");
  EXPECT_EQ(p.maps[0].value, Type::string(4));
}

TEST(BtCheck, UndefinedMapsAndVariables) {
  EXPECT_EQ(checked("BEGIN { @y = @x; exit(); }"),
            "stdin:1:14-16: ERROR: Undefined map: @x\n"
            "BEGIN { @y = @x; exit(); }\n"
            "             ~~\n");
  EXPECT_EQ(error_of("BEGIN { delete(@x[1]); }"), "Undefined map: @x");
  EXPECT_EQ(error_of("BEGIN { @y = $x; }"), "Undefined or undeclared variable: $x");
  EXPECT_EQ(error_of("BEGIN { $x++ }"), "Undefined or undeclared variable: $x");
  // Scratch variables belong to their block.
  EXPECT_EQ(error_of("BEGIN { $x = 1 } END { @ = $x }"), "Undefined or undeclared variable: $x");
  EXPECT_EQ(checked("BEGIN { $x = 1; $x = \"a\"; exit(); }"),
            "stdin:1:20-21: ERROR: Type mismatch for $x: trying to assign value of type "
            "'string[2]' when variable already contains a value of type 'int64'\n"
            "BEGIN { $x = 1; $x = \"a\"; exit(); }\n"
            "                   ~\n");
}

TEST(BtCheck, Aggregations) {
  EXPECT_EQ(checked("BEGIN { $y = count(); exit(); }"),
            "stdin:1:14-21: ERROR: count() should be directly assigned to a map\n"
            "BEGIN { $y = count(); exit(); }\n"
            "             ~~~~~~~\n");
  EXPECT_EQ(error_of("BEGIN { printf(\"%d\\n\", count()); }"),
            "count() should be directly assigned to a map");
  EXPECT_EQ(error_of("BEGIN { @ = count(1); }"), "count() requires no arguments (1 provided)");
  EXPECT_EQ(error_of("BEGIN { @ = sum(\"a\"); }"),
            "sum() only supports integer arguments (string provided)");
  EXPECT_EQ(error_of("BEGIN { @ = hist(); }"), "hist() requires one argument (0 provided)");
  EXPECT_EQ(error_of("BEGIN { @ = lhist(5, 0, 10); }"),
            "lhist() requires 4 arguments (3 provided)");
  EXPECT_EQ(error_of("BEGIN { $a = 0; @ = lhist(5, $a, 10, 1); }"),
            "lhist() expects a integer literal (integer provided)");
  EXPECT_EQ(error_of("BEGIN { @ = lhist(1, 10, 0, 1); }"),
            "lhist() min must be less than max (provided min 10 and max 0)");
  EXPECT_EQ(error_of("BEGIN { @ = lhist(1, 0, 10, 0); }"),
            "lhist() step must be >= 1 (0 provided)");
  EXPECT_EQ(error_of("BEGIN { @ = lhist(1, -5, 10, 1); }"),
            "lhist() min must be non-negative (provided min -5)");
  EXPECT_EQ(checked("BEGIN { @a++; @b = count(); @b++; exit(); }"),
            "stdin:1:29-33: ERROR: The ++ operator can not be used on expressions of type 'count'\n"
            "BEGIN { @a++; @b = count(); @b++; exit(); }\n"
            "                            ~~~~\n");
  EXPECT_EQ(error_of("BEGIN { @b = count(); @c = @b + 1; }"),
            "@b holds count() values, which usprobe reads only through print(), clear(), delete() "
            "and has_key(): each thread keeps its own part of them until they are printed");
  EXPECT_EQ(error_of("BEGIN { @b = count(); print(@b); print(@b, 10); clear(@b); delete(@b); }"),
            "ok");
}

TEST(BtCheck, OperatorsAndCalls) {
  EXPECT_EQ(checked("BEGIN { printf(\"%d\\n\", (int64)1 + \"a\"); exit(); }"),
            "stdin:1:24-38: ERROR: Type mismatch for '+': comparing 'int64' with 'string[2]'\n"
            "BEGIN { printf(\"%d\\n\", (int64)1 + \"a\"); exit(); }\n"
            "                       ~~~~~~~~~~~~~~\n");
  // An operator that does not take its operands' types: bpftrace underlines the operator alone.
  EXPECT_EQ(checked("BEGIN { @ = \"a\" < \"b\"; }"),
            "stdin:1:17-18: ERROR: The < operator can not be used on expressions of types "
            "string[2], string[2]\n"
            "BEGIN { @ = \"a\" < \"b\"; }\n"
            "                ~\n");
  EXPECT_EQ(checked("BEGIN { @ = 1 + (\"a\" << \"b\"); }"),
            "stdin:1:22-24: ERROR: The << operator can not be used on expressions of types "
            "string[2], string[2]\n"
            "BEGIN { @ = 1 + (\"a\" << \"b\"); }\n"
            "                     ~~\n");
  EXPECT_EQ(checked("BEGIN { @ = ~\"a\"; }"),
            "stdin:1:13-14: ERROR: The ~ operator can not be used on expressions of type "
            "'string[2]'\n"
            "BEGIN { @ = ~\"a\"; }\n"
            "            ~\n");
  EXPECT_EQ(error_of("BEGIN { @ = comm == \"bash\"; }"), "ok");
  EXPECT_EQ(error_of("BEGIN { @ = 1 ? 1 : \"a\"; }"),
            "Ternary operator must return the same type: have 'integer' and 'string'");
  EXPECT_EQ(error_of("BEGIN { @ = -\"a\"; }"),
            "The - operator can not be used on expressions of type 'string[2]'");
  EXPECT_EQ(error_of("BEGIN { @ = (uint8)\"a\"; }"),
            "Cannot cast from 'string[2]' to 'unsigned int8'");
  EXPECT_EQ(error_of("BEGIN /\"a\"/ { exit() }"),
            "the predicate must be an integer (string[2] given)");
  EXPECT_EQ(error_of("BEGIN { exit(1); }"), "exit() requires no arguments (1 provided)");
  EXPECT_EQ(error_of("BEGIN { } BEGIN { }"), "More than one BEGIN probe defined");
  EXPECT_EQ(error_of("END { } u:a:b { } BEGIN, END { }"), "More than one END probe defined");
  EXPECT_EQ(error_of("BEGIN { clear(1); }"), "clear() expects a map to be provided");
  EXPECT_EQ(error_of("BEGIN { @x = 1; print(@x, \"a\"); }"),
            "print() expects a integer literal (string provided)");
  EXPECT_EQ(error_of("BEGIN { print(); }"), "print() requires at least one argument (0 provided)");
  EXPECT_EQ(error_of("BEGIN { @x = str(1, 2, 3); }"), "str() takes up to 2 arguments (3 provided)");
  EXPECT_EQ(error_of("BEGIN { @x = buf(1); }"),
            "buf() expects a length argument for non-array type integer");
  EXPECT_EQ(error_of("BEGIN { @x = printf(\"a\"); }"), "printf() returns no value");
  EXPECT_EQ(error_of("BEGIN { @m[1] = 1; @x = has_key(@m, 2); @y = has_key(@m, \"a\"); }"),
            "Argument mismatch for @m: trying to access with arguments: [string[2]] when map "
            "expects arguments: [unsigned int64]");
  EXPECT_EQ(error_of("BEGIN { @x = ustack(0); }"),
            "ustack() frames must be between 1 and 1024 (0 provided)");
}

}  // namespace
}  // namespace usprobe::bt
