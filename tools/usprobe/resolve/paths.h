// File paths as the CLI hands them on: to the agent, to LD_PRELOAD, in reports.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

namespace usprobe::cli {

// `path` made absolute with every symlink resolved (realpath(3)); nullopt when it does not exist.
std::optional<std::string> real_path(const std::string &path);

// Where usprobe reaches the files of process `pid` by the paths the process uses: "" when it
// shares usprobe's mount namespace (the paths are the same), else "/proc/PID/root" to prepend.
// Opening a file by the same path as everyone else also lets ElfFile's cache index it once.
std::string process_root(pid_t pid);

}  // namespace usprobe::cli
