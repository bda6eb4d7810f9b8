// Which ELF file the FILE part of a probe names. A path is taken as it is; "exe" is the command;
// a short library name ("libc", "libsqlite3", "libm.so.6") is looked up the way the command's
// dynamic linker will find it, so the probe lands in the file the command really loads, with its
// LD_LIBRARY_PATH, RUNPATH and all. A library it does not load at start (one it may dlopen later,
// which the agent probes when it does) is looked up where the command's dlopen would search: the
// program's DT_RPATH, LD_LIBRARY_PATH, its DT_RUNPATH, then the ld.so cache and the default
// directories.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace usprobe::cli {

// A library as the dynamic linker or the ld.so cache lists it.
struct LibraryEntry {
  std::string name;  // "libc.so.6"
  std::string path;  // "/lib/x86_64-linux-gnu/libc.so.6"
};

// `ld.so --list PROG` output: "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" lines
// (and the dynamic linker itself as "\t/lib64/ld-linux-x86-64.so.2 (0x...)"); names with no file
// (the vDSO, "not found") are left out.
std::vector<LibraryEntry> parse_ld_list(std::string_view output);
// `ldconfig -p` output: "\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1"; only the
// x86-64 entries.
std::vector<LibraryEntry> parse_ldconfig(std::string_view output);

// The directories a dlopen() by the program searches before the ld.so cache, in order, given its
// DT_RPATH and DT_RUNPATH strings ("" when absent) and LD_LIBRARY_PATH: DT_RPATH only when there
// is no DT_RUNPATH, then LD_LIBRARY_PATH, then DT_RUNPATH. Lists split at ':' (LD_LIBRARY_PATH
// also at ';'); an empty element is the current directory; $ORIGIN and ${ORIGIN} become `origin`
// (the program's directory). Duplicates are kept once.
std::vector<std::string> dlopen_search_dirs(std::string_view rpath, std::string_view runpath,
                                            std::string_view ld_library_path,
                                            std::string_view origin);

class LibraryFinder {
 public:
  // For the probes of a command: "exe" is `exe`, the ELF file that runs (for a script, its
  // interpreter), whose dynamic linker is `interp`.
  static LibraryFinder for_command(std::string exe, std::string interp);
  // For `usprobe list`: short names are looked up among the libraries mapped in usprobe itself.
  static LibraryFinder for_listing();
  // For the probes of a running process (-p): "exe" is the program it runs, a short name one of
  // the libraries it has mapped now, a path is as the process sees it, in its mount namespace.
  // Paths returned are the process's; host_path() turns one into a path usprobe can open.
  static LibraryFinder for_process(pid_t pid);

  // A path that find() returned, as usprobe opens it: the same path, or for a process in another
  // mount namespace, the path through its root (/proc/PID/root/...).
  std::string host_path(const std::string &path) const { return root_ + path; }
  // A location ("[uretprobe:]PATH:TARGET", "usdt:PATH:PROVIDER:NAME") whose PATH host_path()
  // made, with the process's path.
  std::string target_location(const std::string &location) const;

  // The absolute path, symbolic links resolved, of the file `file` names. Errors: "library
  // 'libfoo' not found for /usr/bin/x (not a path, not among its libraries, not in its library
  // path, not in the ld.so cache)", "./app: no such file".
  Result<std::string> find(std::string_view file);

 private:
  LibraryFinder() = default;
  std::optional<std::string> from_command(std::string_view name);
  std::optional<std::string> from_cache(std::string_view name);
  std::optional<std::string> from_search_dirs(std::string_view name);

  Result<std::string> find_in_process(std::string_view file);

  std::string exe_, interp_;          // empty for listing
  pid_t pid_ = 0;                     // for_process: the process, its root when it is not ours,
  std::string root_;                  // its mapped files (the kernel's paths, so no symbolic
  std::vector<LibraryEntry> mapped_;  // links), and why exe_ is empty when it is
  std::string exe_problem_;
  std::optional<std::vector<LibraryEntry>> command_libs_, cache_;  // read on first use
  std::optional<std::vector<std::string>> search_dirs_;            // dlopen_search_dirs for exe_
};

}  // namespace usprobe::cli
