// usprobe_jump_share: how many sites take the jump path, and why the others take the int3 path
// (issue 12, item 1; issue 15 for USDT sites). It asks the engine's own site analysis
// (core/site_analysis.h: arch::prepare_site with the request the registry makes, the enclosing
// function's bytes, the file's branch targets, the bytes after the function) for each site, one
// site at a time, and gives each trampoline back at once. Nothing is patched.
//
//   usprobe_jump_share                      all three sections with the default files and functions
//   usprobe_jump_share --entries [FILE...]  every function entry of each file (aliases once)
//   usprobe_jump_share --boundaries         every instruction boundary of the hot libc functions
//                                           listed below (IFUNCs: the implementation this
//                                           process uses)
//   usprobe_jump_share --usdt [FILE...]     every USDT site of each file (default: postgres,
//                                           python3.11, libstdc++ and the test library
//                                           libusprobe_usdt_targets.so of this build tree)
//   --attach-boundaries [FUNC|hot...]       attach a counter at every one of those boundaries in
//                                           one usprobe_attach_batch in this process, run, and
//                                           detach them: the time each batch takes (issue 17,
//                                           "attach cost that does not grow with the function")
//   -v                                      also list each int3 site and its reason (--usdt: and
//                                           each punned one, with the bytes around the site)
//
// Libraries are dlopen()ed and analysed where the dynamic linker mapped them. A program (the
// default lists have /usr/bin/python3.11, a non-PIE executable, and postgres, a PIE) cannot be
// loaded into this process: its PT_LOAD segments are reserved (PROT_NONE, nothing executable) at
// the addresses it would run at (a PIE at an address the kernel picks), so that reach and
// placement are decided as in the real process; the analysis reads the code from the file either
// way.
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "arch/x86_64/relocator.h"
#include "core/arch.h"
#include "core/probe.h"
#include "core/site_analysis.h"
#include "elf/elf_file.h"
#include "elf/location.h"
#include "usprobe/usprobe.h"

namespace {

using usprobe::elf::ElfFile;

const char *const kDefaultFiles[] = {"libc.so.6", "libstdc++.so.6", "libsqlite3.so.0",
                                     "libcrypto.so.3", "/usr/bin/python3.11"};
// Files with USDT notes (goal: >= 99% of their sites on a jump).
const char *const kDefaultUsdtFiles[] = {"/usr/lib/postgresql/15/bin/postgres",
                                         "/usr/bin/python3.11", "libstdc++.so.6"};

// Hot libc functions: the string and memory families, the allocator, stdio, sorting and search,
// conversions, time, environment, and a few with jump tables (fnmatch, strptime, sysconf,
// confstr, vfwprintf, vfwscanf). 115 names.
const char *const kHotFunctions[] = {"memcpy",
                                     "memmove",
                                     "memset",
                                     "memcmp",
                                     "memchr",
                                     "memrchr",
                                     "mempcpy",
                                     "bcmp",
                                     "wmemset",
                                     "wmemcmp",
                                     "wmemchr",
                                     "rawmemchr",
                                     "strlen",
                                     "strnlen",
                                     "strcmp",
                                     "strncmp",
                                     "strcasecmp",
                                     "strncasecmp",
                                     "strcpy",
                                     "strncpy",
                                     "stpcpy",
                                     "stpncpy",
                                     "strcat",
                                     "strncat",
                                     "strchr",
                                     "strrchr",
                                     "strchrnul",
                                     "strstr",
                                     "strcasestr",
                                     "strspn",
                                     "strcspn",
                                     "strpbrk",
                                     "strtok",
                                     "strtok_r",
                                     "strsep",
                                     "strdup",
                                     "strndup",
                                     "wcslen",
                                     "vfwprintf",
                                     "wcscmp",
                                     "wcschr",
                                     "wcsrchr",
                                     "wcscpy",
                                     "malloc",
                                     "free",
                                     "realloc",
                                     "calloc",
                                     "memalign",
                                     "posix_memalign",
                                     "aligned_alloc",
                                     "malloc_usable_size",
                                     "confstr",
                                     "printf",
                                     "fprintf",
                                     "sprintf",
                                     "snprintf",
                                     "vprintf",
                                     "vfprintf",
                                     "vsprintf",
                                     "vsnprintf",
                                     "dprintf",
                                     "asprintf",
                                     "puts",
                                     "fputs",
                                     "fputc",
                                     "putc",
                                     "putchar",
                                     "fwrite",
                                     "fopen",
                                     "fdopen",
                                     "fclose",
                                     "fread",
                                     "fgets",
                                     "fgetc",
                                     "getc",
                                     "getline",
                                     "getdelim",
                                     "fflush",
                                     "fseek",
                                     "ftell",
                                     "vfwscanf",
                                     "setvbuf",
                                     "sscanf",
                                     "fscanf",
                                     "scanf",
                                     "qsort",
                                     "qsort_r",
                                     "bsearch",
                                     "strtol",
                                     "strtoul",
                                     "strtoll",
                                     "strtoull",
                                     "strtod",
                                     "strtof",
                                     "atoi",
                                     "atol",
                                     "getenv",
                                     "setenv",
                                     "time",
                                     "clock_gettime",
                                     "gettimeofday",
                                     "localtime_r",
                                     "gmtime_r",
                                     "strftime",
                                     "mktime",
                                     "open",
                                     "read",
                                     "write",
                                     "close",
                                     "pthread_mutex_lock",
                                     "pthread_mutex_unlock",
                                     "pthread_once",
                                     "fnmatch",
                                     "strptime",
                                     "sysconf"};

struct Counts {
  size_t total = 0;
  std::map<std::string, size_t> paths;    // "jump", "jump (punned)", ..., "int3"
  std::map<std::string, size_t> reasons;  // int3 reasons, numbers and instructions generalised
  size_t errors = 0;                      // no probe can be placed at all (prepare_site failed)
};

std::string generalise(const std::string &reason) {
  static const std::regex insn("`[^`]*`"), hex("0x[0-9a-f]+"), dec("[0-9]+");
  std::string s = std::regex_replace(reason, insn, "`INSN`");
  s = std::regex_replace(s, hex, "X");
  return std::regex_replace(s, dec, "N");
}

bool g_verbose = false;

// A file as analysed: a library is dlopen()ed first (short names resolve among this process's
// mappings, and IFUNCs to the implementation it uses), so that it is analysed where the dynamic
// linker mapped it; a program's segments are reserved where it would run (core/site_analysis.h).
std::optional<usprobe::CodeImage> load(const std::string &name) {
  std::string path = name;
  if (name.find('/') == std::string::npos || name.find(".so") != std::string::npos) {
    void *h = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      fmt::print(stderr, "{}: {}\n", name, dlerror());
      return std::nullopt;
    }
    link_map *lm = nullptr;
    if (dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_name[0]) path = lm->l_name;
  }
  auto f = ElfFile::open(path);
  if (!f) {
    fmt::print(stderr, "{}: {}\n", path, f.error().message);
    return std::nullopt;
  }
  auto image = usprobe::CodeImage::map(*f);
  if (!image) {
    fmt::print(stderr, "{}\n", image.error().message);
    return std::nullopt;
  }
  return std::move(*image);
}

// One site of `image` in a function of known bounds.
usprobe::elf::ResolvedLocation location(const usprobe::CodeImage &image, const std::string &symbol,
                                        uint64_t func_offset, uint64_t func_size,
                                        uint64_t site_offset) {
  usprobe::elf::ResolvedLocation loc;
  loc.file = std::shared_ptr<const ElfFile>(std::shared_ptr<const ElfFile>(), &image.file());
  loc.symbol = symbol;
  loc.func_offset = func_offset;
  loc.func_size = func_size;
  loc.file_offset = site_offset;
  return loc;
}

void count(const usprobe::SiteVerdict &v, const std::string &describe, Counts &c) {
  ++c.total;
  ++c.paths[v.path];
  if (v.path == "cannot be probed") {
    ++c.errors;
    ++c.reasons[generalise(v.reason.substr(v.reason.find(':') + 1))];
    if (g_verbose) fmt::print("  {}: {}\n", describe, v.reason);
  } else if (!v.jump) {
    ++c.reasons[generalise(v.reason)];
    if (g_verbose) fmt::print("  int3 {}: {}\n", describe, v.reason);
  }
}

void analyse(const usprobe::CodeImage &image, uint64_t func_offset, uint64_t func_size,
             uint64_t site_offset, const std::string &describe, Counts &c) {
  if (!image.runtime(site_offset) || !image.runtime(func_offset)) return;
  auto loc = location(image, describe, func_offset, func_size, site_offset);
  count(usprobe::analyse_site(image, loc), describe, c);
}

void print(const std::string &title, const Counts &c, double goal = 0) {
  size_t int3 = c.paths.count("int3") ? c.paths.at("int3") : 0;
  size_t jump = c.total - int3 - c.errors;

  fmt::print("{}: {} sites, {} jump ({:.2f}%), {} int3 ({:.2f}%), {} cannot be probed\n", title,
             c.total, jump, c.total ? 100.0 * jump / c.total : 0.0, int3,
             c.total ? 100.0 * int3 / c.total : 0.0, c.errors);
  if (goal > 0) {
    const double share = c.total ? 100.0 * jump / c.total : 0.0;
    fmt::print("  goal: >= {}% of these on a jump: {:.2f}%, {}\n", goal, share,
               share >= goal ? "met" : "MISSED");
  }
  for (const auto &[path, n] : c.paths)
    if (path != "int3" && path != "cannot be probed") fmt::print("  {:>7}  {}\n", n, path);
  std::vector<std::pair<size_t, std::string>> r;
  for (const auto &[why, n] : c.reasons) r.emplace_back(n, why);
  std::sort(r.rbegin(), r.rend());
  if (!r.empty()) fmt::print("  int3 (or not probeable), by reason:\n");
  for (const auto &[n, why] : r) fmt::print("  {:>7}  {}\n", n, why);
}

void add(Counts &all, const Counts &c) {
  all.total += c.total;
  all.errors += c.errors;
  for (auto &[k, v] : c.paths) all.paths[k] += v;
  for (auto &[k, v] : c.reasons) all.reasons[k] += v;
}

void entries(const std::vector<std::string> &files) {
  Counts all;
  for (const std::string &name : files) {
    auto l = load(name);
    if (!l) continue;
    const ElfFile &file = l->file();
    Counts c;
    uint64_t last = ~0ull;
    for (const auto &f : file.functions()) {
      if (f.file_offset == last) continue;  // aliases
      last = f.file_offset;
      if (!file.offset_is_executable(f.file_offset)) continue;
      analyse(*l, f.file_offset, f.size, f.file_offset, f.name, c);
    }
    print(fmt::format("function entries of {}", file.path()), c);
    add(all, c);
  }
  if (files.size() > 1) print("function entries, all files", all, 99.9);
}

void boundaries() {
  auto libc = load("libc.so.6");
  if (!libc) return;
  Counts c;
  std::vector<uint64_t> seen;
  size_t functions = 0;
  for (const char *name : kHotFunctions) {
    auto loc = usprobe::elf::resolve_location(fmt::format("libc:{}", name));
    if (!loc || loc->func_size == 0) {
      fmt::print(stderr, "libc:{}: {}\n", name, loc ? "no size" : loc.error().message);
      continue;
    }
    if (std::find(seen.begin(), seen.end(), loc->func_offset) != seen.end()) continue;
    seen.push_back(loc->func_offset);
    ++functions;
    auto code = libc->file().bytes(loc->func_offset, loc->func_size);
    auto scan = usprobe::x86::scan_function(code, 0);
    for (uint32_t off : scan.boundaries)
      analyse(*libc, loc->func_offset, loc->func_size, loc->func_offset + off,
              fmt::format("{}+{:#x}", loc->symbol, off), c);
  }
  print(fmt::format("instruction boundaries of {} hot libc functions", functions), c, 95);
}

double ms_since(const timespec &t0) {
  timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return static_cast<double>(t1.tv_sec - t0.tv_sec) * 1e3 +
         static_cast<double>(t1.tv_nsec - t0.tv_nsec) / 1e6;
}

// Every instruction boundary of the hot functions, attached for real in this process (a built-in
// counter each, one batch), then detached in one batch. The functions keep running meanwhile:
// this program calls memcpy, strlen and malloc itself.
int attach_boundaries(const std::vector<std::string> &only) {
  std::vector<std::string> names;
  std::vector<uint64_t> seen;
  size_t functions = 0;
  // The hot functions, or the functions named ("hot" among them: the hot functions too).
  std::vector<std::string> list;
  for (const std::string &name : only.empty() ? std::vector<std::string>{"hot"} : only)
    if (name == "hot")
      list.insert(list.end(), std::begin(kHotFunctions), std::end(kHotFunctions));
    else
      list.push_back(name);
  for (const std::string &name : list) {
    auto loc = usprobe::elf::resolve_location(fmt::format("libc:{}", name));
    if (!loc || loc->func_size == 0) continue;
    if (std::find(seen.begin(), seen.end(), loc->func_offset) != seen.end()) continue;
    seen.push_back(loc->func_offset);
    ++functions;
    auto code = loc->file->bytes(loc->func_offset, loc->func_size);
    auto scan = usprobe::x86::scan_function(code, 0);
    for (uint32_t off : scan.boundaries)
      names.push_back(fmt::format("libc:{}+{:#x}", loc->symbol, off));
  }
  std::vector<const char *> locations;
  for (const auto &n : names) locations.push_back(n.c_str());
  std::vector<usprobe_link *> links(names.size());
  timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  const int attached =
      usprobe_attach_batch(locations.data(), locations.size(), nullptr, links.data(), nullptr);
  const double attach_ms = ms_since(t0);
  if (attached < 0) {
    fmt::print(stderr, "usprobe_jump_share: the batch was refused: {}\n", usprobe_last_error());
    return 1;
  }
  // Some work through the probed functions, counted.
  std::string text;
  for (int i = 0; i < 1000; ++i) text += fmt::format("{} ", i);
  uint64_t hits = 0;
  for (auto *l : links)
    if (l) hits += usprobe_link_hits(l);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  const int detached = usprobe_detach_batch(links.data(), links.size());
  const double detach_ms = ms_since(t0);
  fmt::print(
      "instruction boundaries of {} {}libc functions: {} probes, {} attached in one batch in "
      "{:.0f} ms ({:.1f} us a probe), detached in {:.0f} ms{}; {} hits meanwhile\n",
      functions, list.size() == std::size(kHotFunctions) ? "hot " : "", names.size(), attached,
      attach_ms, attach_ms * 1e3 / double(names.size()), detach_ms,
      detached == 0 ? "" : " (detach FAILED)", hits);
  if (names.size() >= 31788)  // issue 17's count: 31,788 boundary probes in <= 1 s
    fmt::print("  goal: a batch of 31,788 probes or more in <= 1,000 ms: {}\n",
               attach_ms <= 1000 ? "met" : "MISSED");
  return detached == 0 ? 0 : 1;
}

// The file's bytes around a site, the site's byte in brackets: "48 89 c7 e8 12 34 56 78 [90] 48".
std::string bytes_around(const ElfFile &file, uint64_t off) {
  const uint64_t from = off >= 12 ? off - 12 : 0;
  auto b = file.bytes(from, off + 9 - from);
  std::string s;
  for (size_t i = 0; i < b.size(); ++i)
    s += fmt::format(fmt::runtime(from + i == off ? "{}[{:02x}]" : "{}{:02x}"),
                     s.empty() ? "" : " ", b[i]);
  return s;
}

// Every USDT site of each file (the notes of .note.stapsdt, elf/usdt.h), analysed as the registry
// places a USDT probe: an instruction probe at the site's nop, bounds from the enclosing function
// or its FDE (core/site_analysis.h).
void usdt(const std::vector<std::string> &files) {
  Counts all;
  for (const std::string &name : files) {
    auto l = load(name);
    if (!l) continue;
    auto sites = usprobe::analyse_usdt_sites(*l);
    if (!sites) {
      fmt::print(stderr, "{}\n", sites.error().message);
      continue;
    }
    Counts c;
    for (const auto &s : *sites) {
      const auto &v = s.verdict;
      ++c.total;
      ++c.paths[v.path];
      if (v.path == "cannot be probed") ++c.errors;
      if (!v.jump) ++c.reasons[generalise(v.reason)];
      // Punned jumps too: whether their stub finds memory depends on the process.
      if (g_verbose && (!v.jump || v.path == "jump (punned)"))
        fmt::print("  {} {}:{} at {:#x}{}{}\n      {}\n", v.path, s.provider, s.name, v.file_offset,
                   v.jump ? fmt::format(" (writes {} bytes, borrows {})", v.written,
                                        v.footprint - v.written)
                          : ": ",
                   v.reason, bytes_around(l->file(), v.file_offset));
    }
    print(fmt::format("USDT sites of {}", l->file().path()), c, 99);
    add(all, c);
  }
  if (files.size() > 1) print("USDT sites, all files", all, 99);
}

}  // namespace

int main(int argc, char **argv) {
  enum Section { kAll, kEntries, kBoundaries, kUsdt, kAttachBoundaries } section = kAll;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-v") {
      g_verbose = true;
    } else if (a == "--entries") {
      section = kEntries;
    } else if (a == "--boundaries") {
      section = kBoundaries;
    } else if (a == "--attach-boundaries") {
      section = kAttachBoundaries;
    } else if (a == "--usdt") {
      section = kUsdt;
    } else if (a == "-h" || a == "--help") {
      std::puts(
          "usage: usprobe_jump_share [-v] [--entries [FILE...] | --boundaries | --usdt [FILE...] "
          "| --attach-boundaries [FUNC...]]");
      return 0;
    } else if (!a.empty() && a[0] == '-') {
      fmt::print(stderr, "usprobe_jump_share: unknown option {}\n", a);
      return 2;
    } else {
      files.push_back(a);
    }
  }
  if (section == kAttachBoundaries) return attach_boundaries(files);
  if (section == kAll || section == kEntries)
    entries(section == kEntries && !files.empty()
                ? files
                : std::vector<std::string>(std::begin(kDefaultFiles), std::end(kDefaultFiles)));
  if (section == kAll) std::puts("");
  if (section == kAll || section == kBoundaries) boundaries();
  if (section == kAll) std::puts("");
  if (section == kAll || section == kUsdt) {
    std::vector<std::string> usdt_files = files;
    if (section != kUsdt || usdt_files.empty()) {
      usdt_files.assign(std::begin(kDefaultUsdtFiles), std::end(kDefaultUsdtFiles));
      // The test library with every kind of USDT site, beside this program in the build tree.
      std::string exe(4096, '\0');
      ssize_t n = readlink("/proc/self/exe", exe.data(), exe.size());
      if (n > 0) {
        exe.resize(static_cast<size_t>(n));
        std::string targets =
            exe.substr(0, exe.rfind('/')) + "/../tests/targets/libusprobe_usdt_targets.so";
        if (access(targets.c_str(), R_OK) == 0) usdt_files.push_back(targets);
      }
    }
    usdt(usdt_files);
  }
  return 0;
}
