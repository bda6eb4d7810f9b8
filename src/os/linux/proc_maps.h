// This process's mappings as /proc/self/maps lists them: read_mappings and find_mapped_range
// (core/os.h), and the parser of the maps text for the CLI, which reads another process's.
#pragma once

#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/os.h"

namespace usprobe::os {

// Mappings from /proc/PID/maps text already read; `source` names it in error messages. Errors: a
// line is not in the kernel's format ("start-end perms offset major:minor inode [path]").
Result<std::vector<Mapping>> parse_mappings(std::string_view text, std::string_view source);

}  // namespace usprobe::os
