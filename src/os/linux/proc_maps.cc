// This process's mappings (core/os.h) from /proc/self/maps; each line as maps_line.h parses it.
#include "os/linux/proc_maps.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>

#include "os/linux/maps_line.h"
#include "os/linux/os_inline.h"

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

// One line of /proc/self/maps (maps_line.h: no allocation, no libc); `line` may be the
// start of a line too long for the buffer (its path is then not "[stack]" anyway). A line that
// does not parse holds nothing.
MappedRange parse_range(const char *p, const char *end) {
  MappedRange m;
  MapsLine l;
  if (!parse_maps_line(std::string_view(p, static_cast<size_t>(end - p)), l)) return m;
  m.start = l.start;
  m.end = l.end;
  m.readable = l.read;
  m.main_stack = l.path == "[stack]";
  return m;
}

}  // namespace

// /proc/self/maps read with raw system calls into a buffer on this stack: no allocation, and no
// libc function a probe may sit on.
bool find_mapped_range(uint64_t addr, MappedRange &out) {
  const long fd = raw_syscall6(SYS_openat, AT_FDCWD, reinterpret_cast<long>("/proc/self/maps"),
                               O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool found = false, done = false;
  // Lines come sorted by address: stop at the one that holds addr, or at the first past it.
  auto look = [&](const char *line, const char *end) {
    const MappedRange m = parse_range(line, end);
    if (m.start > addr) {
      done = true;
    } else if (addr < m.end) {
      out = m;
      found = m.readable;
      done = true;
    }
  };
  char buf[4096];
  size_t have = 0;
  bool rest_of_long_line = false;  // dropping the tail of a line longer than buf
  while (!done) {
    const long r = raw_syscall6(SYS_read, fd, reinterpret_cast<long>(buf + have),
                                static_cast<long>(sizeof buf - have));
    if (r == -EINTR) continue;
    if (r <= 0) break;  // the end (the kernel ends every line with a newline) or an error
    have += static_cast<size_t>(r);
    size_t begin = 0;
    for (size_t i = 0; i < have && !done; ++i) {
      if (buf[i] != '\n') continue;
      if (!rest_of_long_line) look(buf + begin, buf + i);
      rest_of_long_line = false;
      begin = i + 1;
    }
    if (done) break;
    if (begin == 0 && have == sizeof buf) {
      // A line longer than the buffer (a long path): its start holds all that is needed.
      if (!rest_of_long_line) look(buf, buf + have);
      rest_of_long_line = true;
      have = 0;
    } else {
      std::memmove(buf, buf + begin, have - begin);
      have -= begin;
    }
  }
  raw_syscall6(SYS_close, fd);
  return found;
}

Result<std::vector<Mapping>> read_mappings(const char *maps_path) {
  auto text = read_whole_file(maps_path);
  if (!text) return std::unexpected(text.error());
  auto maps = parse_mappings(*text, maps_path);
  if (maps && std::string_view(maps_path) == "/proc/self/maps") note_address_space(*maps);
  return maps;
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

std::optional<LoadedObject> loaded_object_at(uint64_t addr) {
  Dl_info info{};
  link_map *lm = nullptr;
  if (!::dladdr1(reinterpret_cast<const void *>(addr), &info, reinterpret_cast<void **>(&lm),
                 RTLD_DL_LINKMAP) ||
      !lm || !info.dli_fname || info.dli_fname[0] != '/')
    return std::nullopt;
  return LoadedObject{info.dli_fname, lm->l_addr};
}

}  // namespace usprobe::os
