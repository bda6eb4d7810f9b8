#include "command.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "paths.h"

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

// The PT_INTERP of an x86-64 ELF file; empty when it has none (statically linked).
Result<std::string> read_interp(const std::string &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(errno, path + ": " + std::strerror(errno));
  auto done = [fd](Result<std::string> r) {
    ::close(fd);
    return r;
  };
  Elf64_Ehdr eh;
  if (::pread(fd, &eh, sizeof eh, 0) != static_cast<ssize_t>(sizeof eh) ||
      eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64)
    return done(fail(ENOEXEC, path + ": not an x86-64 ELF file"));
  if (eh.e_type != ET_EXEC && eh.e_type != ET_DYN)
    return done(fail(ENOEXEC, path + ": not an executable"));
  for (unsigned i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    off_t at = static_cast<off_t>(eh.e_phoff + uint64_t{i} * eh.e_phentsize);
    if (::pread(fd, &ph, sizeof ph, at) != static_cast<ssize_t>(sizeof ph)) break;
    if (ph.p_type != PT_INTERP || ph.p_filesz == 0 || ph.p_filesz > PATH_MAX) continue;
    std::string interp(ph.p_filesz, '\0');
    if (::pread(fd, interp.data(), interp.size(), static_cast<off_t>(ph.p_offset)) !=
        static_cast<ssize_t>(interp.size()))
      return done(fail(EIO, path + ": cannot read its PT_INTERP"));
    interp.resize(std::strlen(interp.c_str()));
    return done(interp);
  }
  return done(std::string());
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
  auto interp = read_interp(elf_path);
  if (!interp) return std::unexpected(interp.error());
  if (interp->empty())
    return fail(ENOEXEC,
                elf_path + " is statically linked: LD_PRELOAD cannot load usprobe's agent into it");
  cmd.elf = real_path(elf_path).value_or(elf_path);
  cmd.interp = *interp;
  return cmd;
}

}  // namespace usprobe::cli
