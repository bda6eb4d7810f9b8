// Helpers shared by the ELF unit tests: where an address of this process lies in a file, and
// small programs built with gcc into a scratch directory.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>

namespace usprobe::elf::test_util {

namespace fs = std::filesystem;

// Where the address `addr` of this process lies in a mapped file, from /proc/self/maps.
struct FilePosition {
  std::string path;
  uint64_t offset = 0;
};

inline std::optional<FilePosition> file_position(const void *addr) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  auto a = reinterpret_cast<uint64_t>(addr);
  while (std::getline(maps, line)) {
    unsigned long start = 0, end = 0, offset = 0;
    int path_at = 0;
    const char *format = "%lx-%lx %*s %lx %*s %*s %n";
    if (std::sscanf(line.c_str(), format, &start, &end, &offset, &path_at) < 3) continue;
    if (a >= start && a < end) return FilePosition{line.substr(path_at), a - start + offset};
  }
  return std::nullopt;
}

// A scratch directory for files the tests make, removed when the test program exits.
inline const std::string &scratch_dir() {
  // The name lives in a static array, not only in the string: the atexit handler runs after the
  // string's destructor (registered later, so run earlier).
  static char name[] = "/tmp/usprobe-elf-test-XXXXXX";
  static const std::string dir = [] {
    if (!::mkdtemp(name)) return std::string("/tmp");
    std::atexit([] { fs::remove_all(name); });
    return std::string(name);
  }();
  return dir;
}

inline std::string write_file(const std::string &name, const std::string &text) {
  std::string path = scratch_dir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

inline bool have_gcc() {
  static const bool have = std::system("gcc --version >/dev/null 2>&1") == 0;
  return have;
}

// Compiles C `source` with gcc `flags` into the scratch directory, once per name. Empty when the
// compiler refuses (a missing static libc, say).
inline std::string build_with_gcc(const std::string &name, const std::string &flags,
                                  const std::string &source) {
  static std::map<std::string, std::string> built;
  if (auto it = built.find(name); it != built.end()) return it->second;
  std::string src = write_file(name + ".c", source);
  std::string out = scratch_dir() + "/" + name;
  std::string cmd = "gcc -O0 " + flags + " -o " + out + " " + src + " >/dev/null 2>&1";
  return built[name] = std::system(cmd.c_str()) == 0 ? out : "";
}

#define REQUIRE_GCC()                                                 \
  do {                                                                \
    if (!have_gcc()) GTEST_SKIP() << "gcc is not installed: skipped"; \
  } while (0)

}  // namespace usprobe::elf::test_util
