// The dynamic linker itself answers which libraries a command loads: `ld.so --list PROG` maps
// them as it would for a run and prints where each came from, without running the program
// (unlike ldd on old glibc, it executes nothing of PROG). Asking it, rather than re-implementing
// its search, gets LD_LIBRARY_PATH, DT_RUNPATH, $ORIGIN and hwcaps subdirectories right.
#include "resolve/library_finder.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <gelf.h>
#include <libelf.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <utility>

#include "elf/location.h"
#include "resolve/paths.h"

extern char **environ;

namespace usprobe::cli {
namespace {

// Where a library the command may dlopen later is, when the ld.so cache does not know it.
constexpr const char *kDefaultDirs[] = {"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"};

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

std::string_view basename_of(std::string_view path) {
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

// "path (0x...)" -> "path": the load address printed after the path.
std::string_view strip_address(std::string_view s) {
  size_t paren = s.rfind(" (");
  return paren == std::string_view::npos ? s : trim(s.substr(0, paren));
}

// Runs argv (argv[0] a path) with stdout captured and stderr discarded; nullopt when it could
// not run or failed.
std::optional<std::string> capture(const std::vector<std::string> &args) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return std::nullopt;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], STDOUT_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  std::vector<char *> argv;
  for (const std::string &a : args) argv.push_back(const_cast<char *>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  int err = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipefd[1]);
  std::string out;
  if (err == 0) {
    char buf[4096];
    ssize_t n;
    while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
      if (n > 0) out.append(buf, static_cast<size_t>(n));
  }
  ::close(pipefd[0]);
  if (err != 0) return std::nullopt;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
  return out;
}

bool is_elf_file(const std::string &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char magic[4] = {};
  bool elf = ::read(fd, magic, 4) == 4 && std::memcmp(magic,
                                                      "\x7f"
                                                      "ELF",
                                                      4) == 0;
  ::close(fd);
  return elf;
}

// A matching ELF file in `dir`: the shortest name first, so "libfoo" takes libfoo.so.1 over
// libfoo.so.1.2.3 (the same file, usually) and a text libfoo.so (a linker script, as libc.so is)
// is skipped.
std::optional<std::string> from_dir(const std::string &dir, std::string_view name) {
  std::vector<std::string> found;
  if (DIR *d = ::opendir(dir.c_str())) {
    while (dirent *e = ::readdir(d))
      if (elf::library_name_matches(name, e->d_name)) found.emplace_back(e->d_name);
    ::closedir(d);
  }
  std::sort(found.begin(), found.end(), [](const std::string &a, const std::string &b) {
    return a.size() != b.size() ? a.size() < b.size() : a < b;
  });
  for (const std::string &f : found) {
    std::string path = dir + "/" + f;
    if (is_elf_file(path)) return path;
  }
  return std::nullopt;
}

std::optional<std::string> from_default_dirs(std::string_view name) {
  for (const char *dir : kDefaultDirs)
    if (auto path = from_dir(dir, name)) return path;
  return std::nullopt;
}

// The DT_RPATH and DT_RUNPATH strings of the ELF file at `path` ("" when absent or unreadable).
std::pair<std::string, std::string> rpath_and_runpath(const std::string &path) {
  std::pair<std::string, std::string> out;
  if (::elf_version(EV_CURRENT) == EV_NONE) return out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  if (Elf *e = ::elf_begin(fd, ELF_C_READ, nullptr)) {
    Elf_Scn *scn = nullptr;
    while ((scn = ::elf_nextscn(e, scn)) != nullptr) {
      GElf_Shdr sh;
      if (!::gelf_getshdr(scn, &sh) || sh.sh_type != SHT_DYNAMIC || sh.sh_entsize == 0) continue;
      Elf_Data *data = ::elf_getdata(scn, nullptr);
      if (!data) continue;
      size_t n = sh.sh_size / sh.sh_entsize;
      for (size_t i = 0; i < n; ++i) {
        GElf_Dyn dyn;
        if (!::gelf_getdyn(data, static_cast<int>(i), &dyn)) break;
        if (dyn.d_tag != DT_RPATH && dyn.d_tag != DT_RUNPATH) continue;
        const char *str = ::elf_strptr(e, sh.sh_link, dyn.d_un.d_val);
        if (str) (dyn.d_tag == DT_RPATH ? out.first : out.second) = str;
      }
    }
    ::elf_end(e);
  }
  ::close(fd);
  return out;
}

// "a:b" split at any of `separators`; an empty element is kept as "".
std::vector<std::string> split_list(std::string_view list, std::string_view separators) {
  std::vector<std::string> out;
  while (true) {
    size_t at = list.find_first_of(separators);
    out.emplace_back(list.substr(0, at));
    if (at == std::string_view::npos) break;
    list.remove_prefix(at + 1);
  }
  return out;
}

// $ORIGIN and ${ORIGIN} replaced with `origin`; an empty directory is the current one.
std::string expand_origin(std::string dir, std::string_view origin) {
  if (dir.empty()) return ".";
  for (std::string_view token : {"${ORIGIN}", "$ORIGIN"}) {
    size_t at;
    while ((at = dir.find(token)) != std::string::npos) dir.replace(at, token.size(), origin);
  }
  return dir;
}

std::optional<std::string> first_match(const std::vector<LibraryEntry> &entries,
                                       std::string_view name) {
  for (const LibraryEntry &e : entries)
    if (elf::library_name_matches(name, e.name) ||
        elf::library_name_matches(name, basename_of(e.path)))
      return e.path;
  return std::nullopt;
}

}  // namespace

std::vector<LibraryEntry> parse_ld_list(std::string_view output) {
  std::vector<LibraryEntry> out;
  while (!output.empty()) {
    size_t nl = output.find('\n');
    std::string_view line = trim(output.substr(0, nl));
    output = nl == std::string_view::npos ? std::string_view() : output.substr(nl + 1);
    if (size_t arrow = line.find(" => "); arrow != std::string_view::npos) {
      std::string_view path = strip_address(line.substr(arrow + 4));
      // "libfoo.so.1 => not found": the command will not even start; nothing to probe there.
      if (path.empty() || path.front() != '/') continue;
      out.push_back({std::string(trim(line.substr(0, arrow))), std::string(path)});
    } else if (line.starts_with(
                   '/')) {  // the dynamic linker: "/lib64/ld-linux-x86-64.so.2 (0x...)"
      std::string_view path = strip_address(line);
      out.push_back({std::string(basename_of(path)), std::string(path)});
    }
  }
  return out;
}

std::vector<LibraryEntry> parse_ldconfig(std::string_view output) {
  std::vector<LibraryEntry> out;
  while (!output.empty()) {
    size_t nl = output.find('\n');
    std::string_view line = trim(output.substr(0, nl));
    output = nl == std::string_view::npos ? std::string_view() : output.substr(nl + 1);
    size_t open = line.find(" ("), close = line.find(") => ");
    if (open == std::string_view::npos || close == std::string_view::npos || close < open) continue;
    std::string_view flags = line.substr(open + 2, close - open - 2);
    if (flags.find("x86-64") == std::string_view::npos) continue;  // 32-bit and x32 libraries
    out.push_back({std::string(line.substr(0, open)), std::string(trim(line.substr(close + 5)))});
  }
  return out;
}

std::vector<std::string> dlopen_search_dirs(std::string_view rpath, std::string_view runpath,
                                            std::string_view ld_library_path,
                                            std::string_view origin) {
  std::vector<std::string> out;
  auto add = [&](std::string_view list, std::string_view separators) {
    for (std::string &d : split_list(list, separators)) {
      std::string dir = expand_origin(std::move(d), origin);
      if (std::find(out.begin(), out.end(), dir) == out.end()) out.push_back(std::move(dir));
    }
  };
  if (runpath.empty() && !rpath.empty()) add(rpath, ":");
  if (!ld_library_path.empty()) add(ld_library_path, ":;");
  if (!runpath.empty()) add(runpath, ":");
  return out;
}

LibraryFinder LibraryFinder::for_command(std::string exe, std::string interp) {
  LibraryFinder f;
  f.exe_ = std::move(exe);
  f.interp_ = std::move(interp);
  return f;
}

LibraryFinder LibraryFinder::for_listing() {
  return LibraryFinder();
}

LibraryFinder LibraryFinder::for_process(pid_t pid) {
  LibraryFinder f;
  f.pid_ = pid;
  // Another mount namespace (a container): its files are reached through its root. In ours the
  // paths are used as they are, so that reports show them plainly.
  f.root_ = process_root(pid);
  char exe[4096];
  ssize_t n = ::readlink(fmt::format("/proc/{}/exe", pid).c_str(), exe, sizeof exe - 1);
  if (n > 0) {
    std::string_view path(exe, static_cast<size_t>(n));
    // An executable replaced since the process started (a package upgrade) is no longer a file
    // that a probe can name.
    if (path.ends_with(" (deleted)"))
      f.exe_problem_ = fmt::format("pid {} runs {}, which was deleted or replaced since it started",
                                   pid, path.substr(0, path.size() - 10));
    else
      f.exe_ = std::string(path);
  } else {
    f.exe_problem_ = fmt::format("cannot read /proc/{}/exe: {}", pid, std::strerror(errno));
  }
  // Mapped files, in the order of the maps: the program, then its libraries as they were loaded.
  std::ifstream maps(fmt::format("/proc/{}/maps", pid));
  std::string line;
  while (std::getline(maps, line)) {
    size_t slash = line.find(" /");
    if (slash == std::string::npos || line.ends_with(" (deleted)")) continue;
    std::string path = line.substr(slash + 1);
    if (std::any_of(f.mapped_.begin(), f.mapped_.end(),
                    [&](const LibraryEntry &e) { return e.path == path; }))
      continue;
    f.mapped_.push_back({std::string(basename_of(path)), path});
  }
  return f;
}

std::string LibraryFinder::target_location(const std::string &location) const {
  if (root_.empty()) return location;
  std::string_view prefix = location.starts_with("uretprobe:") ? "uretprobe:"
                            : location.starts_with("usdt:")    ? "usdt:"
                                                               : "";
  std::string_view rest = std::string_view(location).substr(prefix.size());
  if (!rest.starts_with(root_)) return location;
  return std::string(prefix) + std::string(rest.substr(root_.size()));
}

Result<std::string> LibraryFinder::find_in_process(std::string_view file) {
  if (file == "exe") {
    if (exe_.empty()) return fail(ENOENT, exe_problem_);
    return exe_;
  }
  if (file.find('/') != std::string_view::npos) {
    if (!file.starts_with('/'))
      return fail(EINVAL, fmt::format("{}: a relative path; give the file's absolute path as pid "
                                      "{} sees it",
                                      file, pid_));
    std::string path(file);
    if (::access(host_path(path).c_str(), R_OK) != 0)
      return fail(errno, fmt::format("{}: {} (in pid {}'s mount namespace)", file,
                                     std::strerror(errno), pid_));
    // In our own namespace the real path, as for a command; in another one the kernel would
    // follow an absolute symbolic link from our root, not the process's: the path as it is.
    if (root_.empty()) return real_path(path).value_or(path);
    return path;
  }
  if (auto path = first_match(mapped_, file)) return *path;
  return fail(ENOENT, fmt::format("library '{}' is not loaded in pid {} (give its path to probe it "
                                  "when the process loads it)",
                                  file, pid_));
}

std::optional<std::string> LibraryFinder::from_command(std::string_view name) {
  if (!command_libs_) {
    auto out = capture({interp_, "--list", exe_});
    command_libs_ = out ? parse_ld_list(*out) : std::vector<LibraryEntry>();
  }
  return first_match(*command_libs_, name);
}

std::optional<std::string> LibraryFinder::from_cache(std::string_view name) {
  if (!cache_) {
    std::optional<std::string> out;
    for (const char *ldconfig : {"/sbin/ldconfig", "/usr/sbin/ldconfig"})
      if (!out && ::access(ldconfig, X_OK) == 0) out = capture({ldconfig, "-p"});
    cache_ = out ? parse_ldconfig(*out) : std::vector<LibraryEntry>();
  }
  return first_match(*cache_, name);
}

std::optional<std::string> LibraryFinder::from_search_dirs(std::string_view name) {
  if (!search_dirs_) {
    auto [rpath, runpath] = rpath_and_runpath(exe_);
    const char *ld_library_path = std::getenv("LD_LIBRARY_PATH");  // the command inherits it
    std::string_view dir = exe_;
    dir = dir.substr(0, std::min(dir.size(), dir.rfind('/')));
    search_dirs_ = dlopen_search_dirs(rpath, runpath, ld_library_path ? ld_library_path : "", dir);
  }
  for (const std::string &dir : *search_dirs_)
    if (auto path = from_dir(dir, name)) return path;
  return std::nullopt;
}

namespace {

// "/proc/self/exe", "/proc/thread-self/exe", "/proc/<usprobe's pid>/exe": read by usprobe, these
// name usprobe itself, never the command that a user who writes them means.
bool names_own_exe(std::string_view file) {
  if (!file.starts_with("/proc/") || !file.ends_with("/exe")) return false;
  std::string_view who = file.substr(6, file.size() - 6 - 4);
  return who == "self" || who == "thread-self" || who == std::to_string(::getpid());
}

}  // namespace

Result<std::string> LibraryFinder::find(std::string_view file) {
  if (file.empty()) return fail(EINVAL, "empty file name");
  if (pid_ > 0) return find_in_process(file);
  if (!exe_.empty() && names_own_exe(file))
    return fail(EINVAL, std::string(file) +
                            " is usprobe's own program, not the command's: write 'exe' for the "
                            "program the command runs");
  std::optional<std::string> path;
  if (file.find('/') != std::string_view::npos) {
    auto found = elf::resolve_file(file);  // "path: no such file"
    if (!found) return std::unexpected(found.error());
    path = *found;
  } else if (file == "exe" && !exe_.empty()) {
    path = exe_;
  } else if (!exe_.empty()) {
    path = from_command(file);
    if (!path) path = from_search_dirs(file);          // a library it may dlopen
  } else if (auto mapped = elf::resolve_file(file)) {  // usprobe's own libraries, and "exe"
    path = *mapped;
  }
  if (!path) path = from_cache(file);
  if (!path) path = from_default_dirs(file);
  if (!path) {
    std::string where = exe_.empty() ? std::string("not loaded by usprobe")
                                     : "not among its libraries, not in its library path";
    return fail(ENOENT, "library '" + std::string(file) + "' not found" +
                            (exe_.empty() ? "" : " for " + exe_) + " (not a path, " + where +
                            ", not in the ld.so cache)");
  }
  return real_path(*path).value_or(*path);
}

}  // namespace usprobe::cli
