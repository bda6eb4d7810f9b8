// What the engine would refuse at a probe's site, found before the command starts: the file is on
// disk, so the CLI decodes the code there as the engine will (src/arch/x86_64/trampoline.cc,
// prepare_site) instead of leaving the refusal to a notice from the running command.
#pragma once

#include <string_view>

#include "base/error.h"
#include "elf/location.h"

namespace usprobe::cli {

// Errors, `name` being the probe as the user wrote it:
//   "libc:malloc+0x1: offset 0x1 of malloc is inside an instruction"
//   "exe:f+0x8: cannot be probed: `loop 0x...` at 0x...: ..." (no instruction there can be moved)
//   "exe:0x99999: offset is past the end of the file"
// A RIP-relative operand that may be out of reach of a trampoline depends on where the command
// maps things: that is left to the engine.
Result<void> check_site(const elf::ResolvedLocation &loc, std::string_view name);

}  // namespace usprobe::cli
