// This process's mappings as /proc/self/maps lists them: read_mappings and find_mapped_range
// (core/os.h), and the parser of the maps text for the CLI, which reads another process's.
#pragma once

#include <string_view>
#include <vector>

#include "base/error.h"
#include "core/os.h"

namespace usprobe::os {

// Mappings from /proc/PID/maps text already read; `source` names it in error messages. Errors: a
// line is not in the kernel's format ("start-end perms offset major:minor inode [path]").
Result<std::vector<Mapping>> parse_mappings(std::string_view text, std::string_view source);

// Every read of this process's own mappings hands them to the code allocator (code_memory.cc),
// whose search for free address space then need not read them again for a while.
void note_address_space(const std::vector<Mapping> &maps);

}  // namespace usprobe::os
