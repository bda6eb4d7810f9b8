// This process's mappings as /proc/self/maps lists them.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace usprobe::os {

struct Mapping {
  uint64_t start = 0, end = 0;  // [start, end)
  bool read = false, write = false, exec = false, priv = false;
  uint64_t offset = 0;  // file offset of `start`
  dev_t dev = 0;        // makedev(major, minor) as in the maps line
  ino_t ino = 0;
  std::string path;      // may be empty or "[heap]", "[vdso]", ...
  bool deleted = false;  // the line ended in " (deleted)"; it is removed from `path`, which
                         // now names a different file or none
};

// Parse /proc/self/maps (or `maps_path`, for tests). Errors: the file cannot be read, or a line
// is not in the kernel's format ("start-end perms offset major:minor inode [path]").
Result<std::vector<Mapping>> read_mappings(const char *maps_path = "/proc/self/maps");
// The same from text already read; `source` names it in error messages.
Result<std::vector<Mapping>> parse_mappings(std::string_view text, std::string_view source);

}  // namespace usprobe::os
