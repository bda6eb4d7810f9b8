// File paths as the CLI hands them on: to the agent, to LD_PRELOAD, in reports.
#pragma once

#include <optional>
#include <string>

namespace usprobe::cli {

// `path` made absolute with every symlink resolved (realpath(3)); nullopt when it does not exist.
std::optional<std::string> real_path(const std::string &path);

}  // namespace usprobe::cli
