#include "target/command.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "elf/elf_file.h"
#include "resolve/paths.h"

namespace usprobe::cli {
namespace {

// execvp's search: PATH's directories in order, an empty entry meaning the current directory.
std::optional<std::string> search_path(const std::string &name) {
  const char *env = std::getenv("PATH");
  std::string_view path = env ? env : "/usr/local/bin:/usr/bin:/bin";
  while (true) {
    size_t colon = path.find(':');
    std::string dir(path.substr(0, colon));
    std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    struct stat st;
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0)
      return candidate;
    if (colon == std::string_view::npos) return std::nullopt;
    path.remove_prefix(colon + 1);
  }
}

Result<void> check_executable(const std::string &path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) return fail(ENOENT, path + ": no such file");
    return fail(err, path + ": " + std::strerror(err));
  }
  if (S_ISDIR(st.st_mode)) return fail(EISDIR, path + ": is a directory");
  if (!S_ISREG(st.st_mode)) return fail(EACCES, path + ": not a regular file");
  if (::access(path.c_str(), X_OK) != 0) return fail(EACCES, path + ": not executable");
  return {};
}

struct FileStart {
  bool elf = false;
  std::string interpreter;  // a script's, from its "#!" line; empty if not a script
};

Result<FileStart> read_start(const std::string &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(errno, path + ": " + std::strerror(errno));
  char buf[256] = {};
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  FileStart start;
  if (n >= 4 && std::memcmp(buf, ELFMAG, SELFMAG) == 0) {
    start.elf = true;
  } else if (n >= 2 && buf[0] == '#' && buf[1] == '!') {
    // As the kernel reads it: blanks, then the interpreter up to a blank or the end of the line.
    std::string_view line(buf + 2, static_cast<size_t>(n) - 2);
    line = line.substr(0, line.find('\n'));
    size_t begin = line.find_first_not_of(" \t");
    if (begin != std::string_view::npos) {
      line.remove_prefix(begin);
      start.interpreter = std::string(line.substr(0, line.find_first_of(" \t\r")));
    }
    if (start.interpreter.empty()) return fail(ENOEXEC, path + ": '#!' names no interpreter");
  }
  return start;
}

}  // namespace

Result<Command> check_command(const std::vector<std::string> &argv) {
  if (argv.empty() || argv[0].empty()) return fail(EINVAL, "no command given");
  Command cmd;
  cmd.argv = argv;
  if (argv[0].find('/') == std::string::npos) {
    auto found = search_path(argv[0]);
    if (!found) return fail(ENOENT, "command '" + argv[0] + "' not found in PATH");
    cmd.path = *found;
  } else {
    cmd.path = argv[0];
  }
  if (auto ok = check_executable(cmd.path); !ok) return std::unexpected(ok.error());
  auto start = read_start(cmd.path);
  if (!start) return std::unexpected(start.error());
  std::string elf_path = cmd.path;
  if (!start->elf) {
    if (start->interpreter.empty())
      return fail(ENOEXEC, cmd.path + ": neither an ELF executable nor a '#!' script");
    // The kernel runs the interpreter, so that is the ELF file LD_PRELOAD must work in. One level
    // only: an interpreter that is itself a script is refused.
    elf_path = start->interpreter;
    if (auto ok = check_executable(elf_path); !ok)
      return fail(ok.error().code, cmd.path + ": its interpreter " + ok.error().message);
    auto interp_start = read_start(elf_path);
    if (!interp_start) return std::unexpected(interp_start.error());
    if (!interp_start->elf)
      return fail(ENOEXEC, cmd.path + ": its interpreter " + elf_path + " is not an ELF file");
  }
  auto file = elf::ElfFile::open(elf_path);
  if (!file) return std::unexpected(file.error());
  if ((*file)->is_static_executable())
    return fail(ENOEXEC,
                elf_path + " is statically linked: LD_PRELOAD cannot load usprobe's agent into it");
  if ((*file)->interpreter().empty())
    return fail(ENOEXEC, elf_path + ": not an executable (it names no program interpreter)");
  cmd.elf = real_path(elf_path).value_or(elf_path);
  cmd.interp = (*file)->interpreter();
  return cmd;
}

}  // namespace usprobe::cli
