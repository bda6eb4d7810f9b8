// Parsing /proc/self/maps. A line is
//
//   7f6adcaaf000-7f6adcc05000 r-xp 00026000 fe:00 332835      /usr/lib/x86_64-linux-gnu/libc.so.6
//
// Every field before the path is a run of non-space characters separated by one space; the
// kernel then pads with spaces up to a column and prints the path, which may itself contain
// spaces (everything up to the end of the line belongs to it) or be missing (anonymous memory).
#include "os/linux/proc_maps.h"

#include <fcntl.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <string_view>

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

// A cursor over one line; each take_* consumes a field and reports whether it was well formed.
class LineReader {
 public:
  explicit LineReader(std::string_view line) : rest_(line) {}

  bool take_hex(uint64_t &out) {
    auto [ptr, ec] = std::from_chars(rest_.data(), rest_.data() + rest_.size(), out, 16);
    if (ec != std::errc() || ptr == rest_.data()) return false;
    rest_.remove_prefix(static_cast<size_t>(ptr - rest_.data()));
    return true;
  }
  bool take_dec(uint64_t &out) {
    auto [ptr, ec] = std::from_chars(rest_.data(), rest_.data() + rest_.size(), out, 10);
    if (ec != std::errc() || ptr == rest_.data()) return false;
    rest_.remove_prefix(static_cast<size_t>(ptr - rest_.data()));
    return true;
  }
  bool take_char(char c) {
    if (rest_.empty() || rest_.front() != c) return false;
    rest_.remove_prefix(1);
    return true;
  }
  bool take_perms(Mapping &m) {
    if (rest_.size() < 4) return false;
    std::string_view p = rest_.substr(0, 4);
    if ((p[0] != 'r' && p[0] != '-') || (p[1] != 'w' && p[1] != '-') ||
        (p[2] != 'x' && p[2] != '-') || (p[3] != 'p' && p[3] != 's'))
      return false;
    m.read = p[0] == 'r';
    m.write = p[1] == 'w';
    m.exec = p[2] == 'x';
    m.priv = p[3] == 'p';
    rest_.remove_prefix(4);
    return true;
  }
  // The inode must be followed by the padding or the end of the line.
  bool at_field_end() const { return rest_.empty() || rest_.front() == ' '; }
  // Whatever follows the inode, without the padding; empty for anonymous mappings.
  std::string_view take_rest() {
    size_t first = rest_.find_first_not_of(' ');
    return first == std::string_view::npos ? std::string_view() : rest_.substr(first);
  }

 private:
  std::string_view rest_;
};

bool parse_line(std::string_view line, Mapping &m) {
  LineReader r(line);
  uint64_t major = 0, minor = 0, ino = 0;
  if (!r.take_hex(m.start) || !r.take_char('-') || !r.take_hex(m.end) || !r.take_char(' ') ||
      !r.take_perms(m) || !r.take_char(' ') || !r.take_hex(m.offset) || !r.take_char(' ') ||
      !r.take_hex(major) || !r.take_char(':') || !r.take_hex(minor) || !r.take_char(' ') ||
      !r.take_dec(ino) || !r.at_field_end())
    return false;
  if (m.end < m.start) return false;
  std::string_view path = r.take_rest();
  // The kernel appends " (deleted)" to the path of an unlinked file. A file whose real name ends
  // that way is indistinguishable; treating it as deleted only costs a failed lookup.
  constexpr std::string_view kDeleted = " (deleted)";
  if (path.ends_with(kDeleted)) {
    path.remove_suffix(kDeleted.size());
    m.deleted = true;
  }
  m.dev = makedev(static_cast<unsigned>(major), static_cast<unsigned>(minor));
  m.ino = static_cast<ino_t>(ino);
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
