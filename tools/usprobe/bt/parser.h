// `usprobe run`: bpftrace's language, the part that uprobe programs use, read into a Program
// (bt/ast.h). Names are resolved here (builtins, functions, probe types) and attach points split
// into their parts; types are the checker's (bt/check.h).
//
//   auto program = bt::parse("uprobe:libc:malloc /arg0 > 4096/ { @[comm] = count(); }");
//   if (!program) fmt::print(stderr, "{}", bt::format_diagnostic("stdin", src, program.error()));
#pragma once

#include <expected>
#include <string_view>

#include "bt/ast.h"
#include "bt/diagnostic.h"

namespace usprobe::bt {

// The first error ends the parse: a syntax error names the token found and what was expected
// ("unexpected ';', expecting an expression"); an unknown name says why it is refused ("Unknown
// function: foo", "usprobe does not support kprobe probes: ...").
std::expected<Program, Diagnostic> parse(std::string_view source);

}  // namespace usprobe::bt
