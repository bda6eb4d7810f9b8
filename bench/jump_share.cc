// usprobe_jump_share: how many sites take the jump path, and why the others take the int3 path
// (issue 12, item 1). It asks the engine's own site analysis (arch::prepare_site, with the request
// the registry would make: the enclosing function's bytes, the file's branch targets, the bytes
// after the function) for each site, one site at a time, and gives each trampoline back at once.
// Nothing is patched.
//
//   usprobe_jump_share                      both sections with the default files and functions
//   usprobe_jump_share --entries [FILE...]  every function entry of each file (aliases once)
//   usprobe_jump_share --boundaries         every instruction boundary of the hot libc functions
//                                           listed below (IFUNCs: the implementation this
//                                           process uses)
//   -v                                      also list each int3 site and its reason
//
// Libraries are dlopen()ed and analysed where the dynamic linker mapped them. A program (the
// default list has /usr/bin/python3.11, a non-PIE executable) cannot be loaded into this process:
// its PT_LOAD segments are reserved (PROT_NONE, nothing executable) at the addresses it would run
// at (a PIE at an address the kernel picks), so that reach and placement are decided as in the
// real process; the analysis reads the code from the file either way.
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/mman.h>

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
#include "elf/elf_file.h"
#include "elf/location.h"
#include "os/linux/proc_maps.h"

namespace {

using usprobe::elf::ElfFile;

const char *const kDefaultFiles[] = {"libc.so.6", "libstdc++.so.6", "libsqlite3.so.0",
                                     "libcrypto.so.3", "/usr/bin/python3.11"};

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

// A file as analysed: the ELF file, its direct branch targets (as the registry computes them) and
// where each file offset is at run time.
struct Loaded {
  std::shared_ptr<const ElfFile> file;
  std::vector<uint64_t> targets;
  // (file offset, size, runtime address) of each executable piece
  std::vector<std::tuple<uint64_t, uint64_t, uint64_t>> pieces;

  std::optional<uint64_t> runtime(uint64_t off) const {
    for (auto [o, n, a] : pieces)
      if (off >= o && off < o + n) return a + (off - o);
    return std::nullopt;
  }
};

void compute_targets(Loaded &l) {
  uint64_t last = ~0ull;
  for (const auto &f : l.file->functions()) {
    if (f.file_offset == last) continue;
    last = f.file_offset;
    auto code = l.file->bytes(f.file_offset, f.size);
    if (!code.empty()) usprobe::arch::branch_targets(code, f.file_offset, l.targets);
  }
  std::sort(l.targets.begin(), l.targets.end());
  l.targets.erase(std::unique(l.targets.begin(), l.targets.end()), l.targets.end());
}

// The registry's bytes_after (core/registry.cc): the code bytes after a function, up to the next
// function's start, at most 8.
std::span<const uint8_t> bytes_after(const ElfFile &file, uint64_t end) {
  const auto &fns = file.functions();
  auto next = std::lower_bound(
      fns.begin(), fns.end(), end,
      [](const usprobe::elf::Function &f, uint64_t o) { return f.file_offset < o; });
  uint64_t n = 8;
  if (next != fns.end()) n = std::min<uint64_t>(n, next->file_offset - end);
  while (n > 0 && !file.offset_is_executable(end + n - 1)) --n;
  return file.bytes(end, n);
}

std::optional<Loaded> load(const std::string &name) {
  Loaded l;
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
  l.file = *f;
  auto maps = usprobe::os::read_mappings();
  if (maps)
    for (const auto &m : *maps)
      if (m.exec && m.dev == l.file->id().dev && m.ino == l.file->id().ino)
        l.pieces.emplace_back(m.offset, m.end - m.start, m.start);
  if (l.pieces.empty()) {
    // A program: reserve its PT_LOAD segments where it would run.
    auto eh = l.file->bytes(0, sizeof(Elf64_Ehdr));
    if (eh.size() < sizeof(Elf64_Ehdr)) return std::nullopt;
    Elf64_Ehdr e;
    std::memcpy(&e, eh.data(), sizeof e);
    std::vector<Elf64_Phdr> loads;
    for (int i = 0; i < e.e_phnum; ++i) {
      auto b = l.file->bytes(e.e_phoff + i * sizeof(Elf64_Phdr), sizeof(Elf64_Phdr));
      Elf64_Phdr ph;
      std::memcpy(&ph, b.data(), sizeof ph);
      if (ph.p_type == PT_LOAD) loads.push_back(ph);
    }
    if (loads.empty()) return std::nullopt;
    const uint64_t lo = loads.front().p_vaddr & ~0xfffull;
    const uint64_t hi = (loads.back().p_vaddr + loads.back().p_memsz + 0xfff) & ~0xfffull;
    void *want = e.e_type == ET_EXEC ? reinterpret_cast<void *>(lo) : nullptr;
    void *p =
        mmap(want, hi - lo, PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (want ? MAP_FIXED_NOREPLACE : 0), -1, 0);
    if (p == MAP_FAILED || (want && p != want)) {
      fmt::print(stderr, "{}: cannot reserve its address range\n", path);
      return std::nullopt;
    }
    const uint64_t bias = reinterpret_cast<uint64_t>(p) - lo;
    for (const auto &ph : loads)
      if (ph.p_flags & PF_X) l.pieces.emplace_back(ph.p_offset, ph.p_filesz, ph.p_vaddr + bias);
    fmt::print("({}: a program, its segments reserved at {:#x}, as it would be loaded)\n", path,
               reinterpret_cast<uint64_t>(p));
  }
  compute_targets(l);
  return l;
}

usprobe::Probe g_probe;  // the trampolines name it; nothing runs them

void analyse(const Loaded &l, uint64_t func_offset, uint64_t func_size, uint64_t site_offset,
             const std::string &describe, Counts &c) {
  auto addr = l.runtime(site_offset);
  auto func_addr = l.runtime(func_offset);
  if (!addr || !func_addr) return;
  usprobe::arch::SiteRequest req;
  req.site = *addr;
  req.function = l.file->bytes(func_offset, func_size);
  req.function_addr = *func_addr;
  req.bounds_known = true;
  req.probe = &g_probe;
  req.describe = describe;
  req.file_branch_targets = &l.targets;
  req.site_file_offset = site_offset;
  req.after = bytes_after(*l.file, func_offset + func_size);
  ++c.total;
  auto plan = usprobe::arch::prepare_site(req);
  if (!plan) {
    ++c.errors;
    ++c.paths["cannot be probed"];
    ++c.reasons[generalise(plan.error().message.substr(plan.error().message.find(':') + 1))];
    if (g_verbose) fmt::print("  {}: {}\n", describe, plan.error().message);
    return;
  }
  ++c.paths[plan->path];
  if (!plan->jump) {
    ++c.reasons[generalise(plan->int3_reason)];
    if (g_verbose) fmt::print("  int3 {}: {}\n", describe, plan->int3_reason);
  }
  usprobe::arch::release_trampoline(*plan);
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

void entries(const std::vector<std::string> &files) {
  Counts all;
  for (const std::string &name : files) {
    auto l = load(name);
    if (!l) continue;
    Counts c;
    uint64_t last = ~0ull;
    for (const auto &f : l->file->functions()) {
      if (f.file_offset == last) continue;  // aliases
      last = f.file_offset;
      if (!l->file->offset_is_executable(f.file_offset)) continue;
      analyse(*l, f.file_offset, f.size, f.file_offset, f.name, c);
    }
    print(fmt::format("function entries of {}", l->file->path()), c);
    all.total += c.total;
    all.errors += c.errors;
    for (auto &[k, v] : c.paths) all.paths[k] += v;
    for (auto &[k, v] : c.reasons) all.reasons[k] += v;
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
    auto code = libc->file->bytes(loc->func_offset, loc->func_size);
    auto scan = usprobe::x86::scan_function(code, 0);
    for (uint32_t off : scan.boundaries)
      analyse(*libc, loc->func_offset, loc->func_size, loc->func_offset + off,
              fmt::format("{}+{:#x}", loc->symbol, off), c);
  }
  print(fmt::format("instruction boundaries of {} hot libc functions", functions), c, 95);
}

}  // namespace

int main(int argc, char **argv) {
  bool want_entries = true, want_boundaries = true;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-v") {
      g_verbose = true;
    } else if (a == "--entries") {
      want_boundaries = false;
    } else if (a == "--boundaries") {
      want_entries = false;
    } else if (a == "-h" || a == "--help") {
      std::puts("usage: usprobe_jump_share [-v] [--entries [FILE...] | --boundaries]");
      return 0;
    } else if (!a.empty() && a[0] == '-') {
      fmt::print(stderr, "usprobe_jump_share: unknown option {}\n", a);
      return 2;
    } else {
      files.push_back(a);
    }
  }
  if (files.empty()) files.assign(std::begin(kDefaultFiles), std::end(kDefaultFiles));
  if (want_entries) entries(files);
  if (want_entries && want_boundaries) std::puts("");
  if (want_boundaries) boundaries();
  return 0;
}
