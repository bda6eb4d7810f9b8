#include "resolve/paths.h"

#include <fmt/format.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <string_view>

namespace usprobe::cli {

std::string process_root(pid_t pid) {
  char mine[64] = {}, theirs[64] = {};
  std::string ns = fmt::format("/proc/{}/ns/mnt", pid);
  if (::readlink("/proc/self/ns/mnt", mine, sizeof mine - 1) < 0 ||
      ::readlink(ns.c_str(), theirs, sizeof theirs - 1) < 0 || std::string_view(mine) != theirs)
    return fmt::format("/proc/{}/root", pid);
  return "";
}

std::optional<std::string> real_path(const std::string &path) {
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) return std::nullopt;
  return std::string(buf);
}

}  // namespace usprobe::cli
