#include "resolve/debug_package.h"

#include <dirent.h>
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include "elf/elf_file.h"

namespace usprobe::cli {

std::string owning_package(const std::string &path) {
  // dpkg lists a file by the path its package ships it under: on a merged-/usr system
  // /usr/lib/x86_64-linux-gnu/libc.so.6 is listed as /lib/x86_64-linux-gnu/libc.so.6, and a
  // symlink's target (python3 -> python3.11) under its own name.
  std::set<std::string> names = {path};
  std::error_code ec;
  if (auto real = std::filesystem::canonical(path, ec); !ec) names.insert(real.string());
  for (const std::string &n : std::set<std::string>(names))
    if (n.starts_with("/usr/")) names.insert(n.substr(4));
  const std::string dir = "/var/lib/dpkg/info";
  DIR *d = ::opendir(dir.c_str());
  if (!d) return "";
  std::string found;
  while (const dirent *e = ::readdir(d)) {
    std::string list = e->d_name;
    if (!list.ends_with(".list")) continue;
    std::ifstream in(dir + "/" + list);
    for (std::string line; std::getline(in, line);)
      if (names.count(line)) {
        found = list.substr(0, list.size() - 5);
        break;
      }
    if (!found.empty()) break;
  }
  ::closedir(d);
  return found.substr(0, found.find(':'));  // "libc6:amd64" -> "libc6"
}

std::string stripped_hint(const elf::ElfFile &file) {
  if (!file.symtab_path().empty()) return "";
  std::string package = owning_package(file.path());
  if (package.empty())
    return "install its debug symbols (a file under /usr/lib/debug/.build-id) for the others";
  // glibc ships its debug symbols in a package of its own, not an automatic -dbgsym one.
  if (package == "libc6") return "install libc6-dbg for the others";
  return fmt::format("install {}-dbgsym (debian-debug archive) for the others", package);
}

}  // namespace usprobe::cli
