#include "resolve/paths.h"

#include <climits>
#include <cstdlib>

namespace usprobe::cli {

std::optional<std::string> real_path(const std::string &path) {
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) return std::nullopt;
  return std::string(buf);
}

}  // namespace usprobe::cli
