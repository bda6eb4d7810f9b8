// Reading /proc/self/maps into Mappings; each line as os/linux/maps_line.h parses it.
#include "os/linux/proc_maps.h"

#include <fcntl.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>

#include "os/linux/maps_line.h"

namespace usprobe::os {
namespace {

// The whole file in one string. /proc files have no size, so read until EOF. The kernel builds
// each read() from whole lines, so reading it piecewise sees each line intact.
Result<std::string> read_whole_file(const char *path) {
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return fail(err, std::string(path) + ": " + std::strerror(err));
  }
  std::string text;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return fail(err, std::string(path) + ": " + std::strerror(err));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return text;
}

bool parse_line(std::string_view line, Mapping &m) {
  MapsLine l;
  if (!parse_maps_line(line, l)) return false;
  m.start = l.start;
  m.end = l.end;
  m.read = l.read;
  m.write = l.write;
  m.exec = l.exec;
  m.priv = l.priv;
  m.offset = l.offset;
  std::string_view path = l.path;
  // The kernel appends " (deleted)" to the path of an unlinked file. A file whose real name ends
  // that way is indistinguishable; treating it as deleted only costs a failed lookup.
  constexpr std::string_view kDeleted = " (deleted)";
  if (path.ends_with(kDeleted)) {
    path.remove_suffix(kDeleted.size());
    m.deleted = true;
  }
  m.dev = makedev(l.major, l.minor);
  m.ino = static_cast<ino_t>(l.ino);
  m.path = std::string(path);
  return true;
}

}  // namespace

Result<std::vector<Mapping>> read_mappings(const char *maps_path) {
  auto text = read_whole_file(maps_path);
  if (!text) return std::unexpected(text.error());
  return parse_mappings(*text, maps_path);
}

Result<std::vector<Mapping>> parse_mappings(std::string_view text, std::string_view source) {
  std::vector<Mapping> out;
  std::string_view rest = text;
  size_t line_no = 0;
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
    ++line_no;
    if (line.empty()) continue;
    Mapping m;
    if (!parse_line(line, m))
      return fail(EINVAL, std::string(source) + ":" + std::to_string(line_no) +
                              ": malformed mapping line `" + std::string(line) + "`");
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace usprobe::os
