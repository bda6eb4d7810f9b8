// For tests that patch code: a copy of a function's first bytes (or any code's), to check that a
// detach put back exactly what was there, and to show them when it did not.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace usprobe::test {

struct CodeBytes {
  const uint8_t *at;
  std::vector<uint8_t> copy;

  explicit CodeBytes(const void *code, size_t len = 16)
      : at(static_cast<const uint8_t *>(code)), copy(at, at + len) {}
  bool intact() const { return std::memcmp(copy.data(), at, copy.size()) == 0; }
  // The bytes as they are now, in hex.
  std::string now() const {
    std::string s;
    char hex[4];
    for (size_t i = 0; i < copy.size(); ++i) {
      std::snprintf(hex, sizeof hex, "%02x ", at[i]);
      s += hex;
    }
    return s;
  }
};

// Bytes of anonymous executable memory mapped in this process: usprobe's trampoline slabs, in a
// test that makes no other code at run time.
inline size_t anonymous_code_bytes() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  size_t total = 0;
  while (std::getline(maps, line)) {
    std::istringstream in(line);
    std::string range, perms, offset, dev, inode, path;
    in >> range >> perms >> offset >> dev >> inode >> path;
    if (perms.size() < 3 || perms[2] != 'x' || inode != "0" || !path.empty()) continue;
    const size_t dash = range.find('-');
    total += std::stoull(range.substr(dash + 1), nullptr, 16) -
             std::stoull(range.substr(0, dash), nullptr, 16);
  }
  return total;
}

// "libusprobe_targets.so:SYMBOL" and "...:SYMBOL+OFFSET": locations in tests/targets.
inline std::string loc(const char *symbol) {
  return std::string("libusprobe_targets.so:") + symbol;
}
inline std::string loc(const char *symbol, uint64_t offset) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "libusprobe_targets.so:%s+%#llx", symbol,
                static_cast<unsigned long long>(offset));
  return buf;
}

}  // namespace usprobe::test
