// The lines of a /proc/PID/maps text that can name an address of a stack: those of mapped files and
// of [vdso] and [vsyscall]. Anonymous memory, [heap] and [stack] are left out, so that the text
// changes only when a file is mapped or unmapped. Shared by the agent (which writes its own into
// the region, agent/maps.h) and the CLI (which reads those of live processes).
#pragma once

#include <string>
#include <string_view>

#include "os/linux/maps_line.h"

namespace usprobe::agent {

// The path field of a maps line: what follows the inode, after the padding ("" for anonymous
// memory, and for a line that is not in the kernel's format).
inline std::string_view maps_line_path(std::string_view line) {
  os::MapsLine l;
  return os::parse_maps_line(line, l) ? l.path : std::string_view();
}

inline std::string naming_lines(std::string_view maps_text) {
  std::string out;
  while (!maps_text.empty()) {
    size_t eol = maps_text.find('\n');
    std::string_view line = maps_text.substr(0, eol);
    maps_text = eol == std::string_view::npos ? std::string_view() : maps_text.substr(eol + 1);
    std::string_view path = maps_line_path(line);
    if (path.starts_with('/') || path == "[vdso]" || path == "[vsyscall]") {
      out += line;
      out += '\n';
    }
  }
  return out;
}

}  // namespace usprobe::agent
