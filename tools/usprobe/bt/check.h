// `usprobe run`: the semantic checks of a parsed bpftrace program, and the types they settle.
// After check() succeeds, the Program is ready to compile: every Expr has its Type, every map use
// its index into Program::maps (which says each map's keys and what it holds), every scratch
// variable its index into its ProbeBlock's variables, and every printf its PrintfInfo.
//
// The rules are bpftrace 0.17's, and so are the messages where it has one ("Type mismatch for @x:
// ...", "x86_64 doesn't support arg6", "printf: %d specifier expects a value of type integer
// (string supplied)"); what usprobe refuses and bpftrace takes says why.
#pragma once

#include <expected>

#include "bt/ast.h"
#include "bt/diagnostic.h"

namespace usprobe::bt {

// The first error found, in source order (a read of a map assigned only further down is not
// one: maps are program-wide, as in bpftrace).
std::expected<void, Diagnostic> check(Program &program);

// The conversions printf() takes, one per '%' of `format` ("%%" is none): for the compiler and
// the printer. `conversion` is the letter (d i u x X o c s p r); `spec` the whole "%-08.3lld".
struct FormatSpec {
  std::string spec;
  char conversion = 'd';
};
// Errors (at no place: the caller gives the printf's): "printf: unknown conversion '%q'".
std::expected<std::vector<FormatSpec>, std::string> parse_format(std::string_view format);

}  // namespace usprobe::bt
