// `usprobe run`: the checked syntax tree (bt/check.h) compiled into what the agent runs on a hit
// (bt/program.h, protocol/bt.h). Each probe block becomes code for each kind of probe it is
// attached to (a uprobe reads argN from registers, a USDT probe from its note); BEGIN, END and
// interval blocks stay trees, for the CLI to run (bt/host.h).
#pragma once

#include <expected>
#include <string>
#include <vector>

#include "bt/ast.h"
#include "bt/diagnostic.h"
#include "bt/program.h"

namespace usprobe::bt {

// A probe the hit path runs: the spec to resolve (as `usprobe count` takes it: "FILE:FUNC",
// "uretprobe:FILE:FUNC", "usdt:FILE:PROVIDER:NAME") and the code block its hits run.
struct CompiledProbe {
  std::string spec;
  uint32_t block = 0;
  const AttachPoint *point = nullptr;
};

struct CompiledProgram {
  Compiled code;
  std::vector<CompiledProbe> probes;
};

// Refuses, with the construct's place, what the hit path does not run yet.
std::expected<CompiledProgram, Diagnostic> compile(const Program &program);

}  // namespace usprobe::bt
