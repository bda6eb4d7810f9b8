// One line of /proc/PID/maps, the one parser of the format:
//
//   7f6adcaaf000-7f6adcc05000 r-xp 00026000 fe:00 332835      /usr/lib/x86_64-linux-gnu/libc.so.6
//
// Every field before the path is a run of non-space characters separated by one space; the kernel
// then pads with spaces up to a column and prints the path, which may itself contain spaces
// (everything up to the end of the line belongs to it) or be missing (anonymous memory).
//
// Header-only, and usable on the hit path: no allocation, no libc (not even memchr, which a probe
// may sit on: every scan is a plain loop), no system call. read_mappings (proc_maps.h) builds on
// it, and so do the stack walk's own search of the mappings (core/stack.cc) and the lines the
// agent and the CLI keep for symbolizing (protocol/maps_lines.h).
#pragma once

#include <cstdint>
#include <string_view>

namespace usprobe::os {

struct MapsLine {
  uint64_t start = 0, end = 0;  // [start, end)
  bool read = false, write = false, exec = false, priv = false;
  uint64_t offset = 0;  // file offset of `start`
  uint32_t major = 0, minor = 0;
  uint64_t ino = 0;
  std::string_view path;  // after the padding; empty for anonymous memory; " (deleted)" kept
};

namespace maps_detail {

inline bool take_number(std::string_view &s, unsigned base, uint64_t &out) {
  uint64_t v = 0;
  size_t i = 0;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    unsigned d;
    if (c >= '0' && c <= '9')
      d = static_cast<unsigned>(c - '0');
    else if (base == 16 && c >= 'a' && c <= 'f')
      d = static_cast<unsigned>(c - 'a' + 10);
    else if (base == 16 && c >= 'A' && c <= 'F')
      d = static_cast<unsigned>(c - 'A' + 10);
    else
      break;
    if (v > (UINT64_MAX - d) / base) return false;  // overflow
    v = v * base + d;
  }
  if (i == 0) return false;
  out = v;
  s.remove_prefix(i);
  return true;
}

inline bool take_char(std::string_view &s, char c) {
  if (s.empty() || s.front() != c) return false;
  s.remove_prefix(1);
  return true;
}

}  // namespace maps_detail

// Parses `line` (without its newline) into `out`; false when it is not in the kernel's format.
// A line cut short by a reader's buffer parses as long as its fields before the path are whole.
inline bool parse_maps_line(std::string_view line, MapsLine &out) {
  using namespace maps_detail;
  MapsLine m;
  uint64_t major = 0, minor = 0;
  std::string_view s = line;
  if (!take_number(s, 16, m.start) || !take_char(s, '-') || !take_number(s, 16, m.end) ||
      !take_char(s, ' ') || s.size() < 4)
    return false;
  const char r = s[0], w = s[1], x = s[2], p = s[3];
  if ((r != 'r' && r != '-') || (w != 'w' && w != '-') || (x != 'x' && x != '-') ||
      (p != 'p' && p != 's'))
    return false;
  m.read = r == 'r';
  m.write = w == 'w';
  m.exec = x == 'x';
  m.priv = p == 'p';
  s.remove_prefix(4);
  if (!take_char(s, ' ') || !take_number(s, 16, m.offset) || !take_char(s, ' ') ||
      !take_number(s, 16, major) || !take_char(s, ':') || !take_number(s, 16, minor) ||
      !take_char(s, ' ') || !take_number(s, 10, m.ino) || !(s.empty() || s.front() == ' ') ||
      m.end < m.start || major > UINT32_MAX || minor > UINT32_MAX)
    return false;
  m.major = static_cast<uint32_t>(major);
  m.minor = static_cast<uint32_t>(minor);
  size_t i = 0;
  while (i < s.size() && s[i] == ' ') ++i;
  m.path = s.substr(i);
  out = m;
  return true;
}

}  // namespace usprobe::os
