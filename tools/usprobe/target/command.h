// The command usprobe runs: found in PATH, checked before it is started. The agent gets into the
// command through LD_PRELOAD, so the file must be a dynamically linked ELF executable (or a
// script whose interpreter is one); anything else is refused with a reason instead of running
// the command with nothing probed.
#pragma once

#include <string>
#include <vector>

#include "base/error.h"

namespace usprobe::cli {

struct Command {
  std::vector<std::string> argv;  // as given; argv[0] as the user wrote it
  std::string path;               // what execve runs: argv[0], or where PATH found it
  std::string elf;     // real path of the ELF file that runs: `path`, or a script's interpreter
  std::string interp;  // that file's dynamic linker (PT_INTERP)
};

// Errors: "command 'x' not found in PATH", "./x: no such file", "./x: not executable",
// "/path/prog is statically linked: LD_PRELOAD cannot load usprobe's agent into it", ...
Result<Command> check_command(const std::vector<std::string> &argv);

}  // namespace usprobe::cli
