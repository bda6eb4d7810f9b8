// Location specs: find the file (a path, "exe", or a library mapped in this process), open it,
// and turn the symbol or offset into a file offset. An IFUNC symbol is asked of the dynamic
// linker, which runs its resolver, so that the probe lands on the implementation this process
// actually calls, not on the resolver that ran once at load time.
#include "elf/location.h"

#include <dlfcn.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>

#include "core/edit_distance.h"
#include "os/linux/proc_maps.h"

namespace usprobe::elf {
namespace {

std::string hex(uint64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, 16);
  (void)ec;
  return "0x" + std::string(buf, end);
}

std::string_view basename_of(std::string_view path) {
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

Result<std::string> self_exe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf);
  if (n < 0 || static_cast<size_t>(n) >= sizeof buf) {
    int err = n < 0 ? errno : ENAMETOOLONG;
    return fail(err, std::string("/proc/self/exe: ") + std::strerror(err));
  }
  return std::string(buf, static_cast<size_t>(n));
}

// The name a user would type for `f`: a hidden (old) version keeps its "@VER", since the plain
// name means the default version.
std::string display_name(const Function &f) {
  return f.hidden_version ? f.name + "@" + f.version : f.name;
}

struct Implementation {
  std::shared_ptr<const ElfFile> file;
  uint64_t file_offset = 0;
};

// Where the address `addr` of this process comes from: the mapped file and the offset in it.
Result<Implementation> map_address_to_file(const std::shared_ptr<const ElfFile> &hint,
                                           uint64_t addr, std::string_view what) {
  auto maps = os::read_mappings();
  if (!maps) return std::unexpected(maps.error());
  for (const os::Mapping &m : *maps) {
    if (addr < m.start || addr >= m.end) continue;
    // glibc's time and gettimeofday are IFUNCs whose resolvers return the vDSO's functions:
    // code that no file holds, so no location can name it.
    if (m.path.empty() || m.path.front() != '/' || m.deleted)
      return fail(ENOENT, hint->path() + ": `" + std::string(what) + "` resolves to " + hex(addr) +
                              (m.path.empty() ? "" : " in " + m.path) +
                              (m.deleted ? " (deleted)" : "") + ", which is not a mapped file");
    Implementation impl;
    impl.file_offset = addr - m.start + m.offset;
    if (FileId{m.dev, m.ino} == hint->id() || m.path == hint->path()) {
      impl.file = hint;
    } else {
      auto other = ElfFile::open(m.path);
      if (!other) return std::unexpected(other.error());
      impl.file = std::move(*other);
    }
    return impl;
  }
  return fail(ENOENT, hint->path() + ": `" + std::string(what) + "` resolves to " + hex(addr) +
                          ", which is not mapped in this process");
}

// The implementation the dynamic linker chose for the IFUNC `f` of `file`. dlsym() on an IFUNC
// symbol runs the resolver and returns its result, exactly what a call through the PLT reaches.
// dlopen(RTLD_NOLOAD) hands out a handle only for an object already loaded; glibc recognises it
// by name or by device and inode, so any path to the file works (a symlink, /lib vs /usr/lib).
Result<Implementation> resolve_ifunc(const std::shared_ptr<const ElfFile> &file,
                                     const Function &f) {
  std::string what = display_name(f);
  if (!f.exported)
    return fail(ENOENT, file->path() + ": `" + what +
                            "` is a local IFUNC, which the dynamic linker cannot resolve; probe "
                            "one of its implementations by name");
  void *handle = ::dlopen(file->path().c_str(), RTLD_NOLOAD | RTLD_LAZY);
  if (!handle) {
    // The main program is loaded by the kernel, not by the dynamic linker, which therefore does
    // not know its file identity: dlopen(NULL) is its handle.
    struct stat st;
    if (::stat("/proc/self/exe", &st) == 0 && FileId{st.st_dev, st.st_ino} == file->id())
      handle = ::dlopen(nullptr, RTLD_LAZY);
  }
  if (!handle)
    return fail(ENOENT, file->path() + ": `" + what +
                            "` is an IFUNC and the library is not loaded in this process");
  // dlvsym for a versioned symbol: the hidden versions are only reachable that way.
  void *addr = f.version.empty() ? ::dlsym(handle, f.name.c_str())
                                 : ::dlvsym(handle, f.name.c_str(), f.version.c_str());
  // Most implementations are in the file itself (libc's __strlen_avx2): its link map's load bias
  // says where without reading /proc/self/maps. An address inside one of the file's segments is
  // the file's: the dynamic linker maps the whole image at the bias, and nothing else there.
  std::optional<uint64_t> own_offset;
  if (link_map *lm = nullptr; addr && ::dlinfo(handle, RTLD_DI_LINKMAP, &lm) == 0 && lm)
    if (auto off = file->vaddr_to_offset(reinterpret_cast<uintptr_t>(addr) - lm->l_addr);
        off && file->offset_is_executable(*off))
      own_offset = off;
  // The object stays loaded: RTLD_NOLOAD only took one more reference, given back here.
  ::dlclose(handle);
  if (!addr) return fail(ENOENT, file->path() + ": the dynamic linker cannot find `" + what + "`");
  if (own_offset) return Implementation{file, *own_offset};
  return map_address_to_file(file, reinterpret_cast<uintptr_t>(addr), what);
}

// Bounds for an offset that no symbol covers (a stripped file): the FDE around it. At an FDE's
// first byte the bounds stay unknown: it may be a function's cold part, jumped into with live
// registers, and a site at a function's start gets the function-entry trampoline, which assumes
// the registers of a call. (Nothing there needs the bounds: it starts an instruction, and nothing
// before it can be in a window.)
void use_unwind_bounds(ResolvedLocation &loc) {
  auto range = loc.file->unwind_range_containing(loc.file_offset);
  if (!range || range->file_offset == loc.file_offset) return;
  loc.func_offset = range->file_offset;
  loc.func_size = range->size;
}

std::unexpected<Error> bad_spec(std::string_view spec) {
  return fail(EINVAL, "bad location `" + std::string(spec) +
                          "`: expected FILE:SYMBOL, FILE:SYMBOL+OFFSET or FILE:0xOFFSET");
}

}  // namespace

bool library_name_matches(std::string_view name, std::string_view basename) {
  if (name.empty() || !basename.starts_with(name)) return false;
  std::string_view after = basename.substr(name.size());
  return after.empty() || after.starts_with(".so") || after.starts_with('-') ||
         (name.ends_with(".so") && after.starts_with('.'));
}

Result<std::string> resolve_file(std::string_view file) {
  if (file.empty()) return fail(EINVAL, "empty file name");
  if (file.find('/') != std::string_view::npos) {
    std::string path(file);
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      int err = errno;
      if (err == ENOENT || err == ENOTDIR) return fail(ENOENT, path + ": no such file");
      return fail(err, path + ": " + std::strerror(err));
    }
    return path;
  }
  if (file == "exe" || file == "self") return self_exe();
  auto maps = os::read_mappings();
  if (!maps) return std::unexpected(maps.error());
  const os::Mapping *deleted = nullptr;
  for (const os::Mapping &m : *maps) {
    if (m.path.empty() || m.path.front() != '/') continue;
    if (!library_name_matches(file, basename_of(m.path))) continue;
    if (!m.deleted) return m.path;
    deleted = &m;
  }
  // The file was replaced (a package upgrade) while mapped: whatever is at that path now has
  // different offsets, so it must not be used in its place.
  if (deleted)
    return fail(ENOENT, std::string(file) + ": the mapped " + deleted->path +
                            " has been deleted or replaced since it was loaded");
  return fail(ENOENT, std::string(file) + ": no such library mapped in this process");
}

namespace {

// FILE parts already opened, by their spelling: a batch names one library thousands of times.
using OpenedFiles = std::map<std::string, Result<std::shared_ptr<const ElfFile>>, std::less<>>;

Result<std::shared_ptr<const ElfFile>> open_file_part(std::string_view file_part,
                                                      OpenedFiles &opened_files) {
  if (auto it = opened_files.find(file_part); it != opened_files.end()) return it->second;
  auto result = [&]() -> Result<std::shared_ptr<const ElfFile>> {
    auto path = resolve_file(file_part);
    if (!path) return std::unexpected(path.error());
    auto opened = ElfFile::open(*path);
    if (!opened) return std::unexpected(opened.error());
    if ((*opened)->is_static_executable())
      return fail(ENOEXEC, *path +
                               ": statically linked; usprobe runs as a shared library inside the "
                               "process, and no dynamic linker ever runs in a static executable");
    return std::move(*opened);
  }();
  opened_files.emplace(std::string(file_part), result);
  return result;
}

Result<ResolvedLocation> resolve_one(std::string_view spec, OpenedFiles &opened_files) {
  // Split at the last ':': FILE may contain ':' (rarely), a symbol or offset never does.
  size_t colon = spec.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == spec.size())
    return bad_spec(spec);
  std::string_view file_part = spec.substr(0, colon), target = spec.substr(colon + 1);

  std::optional<uint64_t> raw_offset;
  std::string_view symbol = target;
  uint64_t delta = 0;
  if (target.starts_with("0x") || target.starts_with("0X")) {
    raw_offset = parse_offset(target);
    if (!raw_offset) return bad_spec(spec);
  } else if (size_t plus = target.rfind('+'); plus != std::string_view::npos) {
    auto off = parse_offset(target.substr(plus + 1));
    symbol = target.substr(0, plus);
    if (!off || symbol.empty()) return bad_spec(spec);
    delta = *off;
  }
  if (!raw_offset && std::any_of(symbol.begin(), symbol.end(),
                                 [](char c) { return c == ' ' || c == '\t' || c == '\n'; }))
    return bad_spec(spec);

  auto opened = open_file_part(file_part, opened_files);
  if (!opened) return std::unexpected(opened.error());
  std::shared_ptr<const ElfFile> file = std::move(*opened);

  ResolvedLocation loc;
  loc.spec = std::string(spec);
  if (raw_offset) {
    if (!file->offset_is_executable(*raw_offset))
      return fail(EINVAL, file->path() + ": offset " + hex(*raw_offset) +
                              " is not in an executable segment");
    loc.file = file;
    loc.file_offset = *raw_offset;
    loc.func_offset = *raw_offset;
    if (std::optional<Function> f = file->function_containing(*raw_offset)) {
      loc.symbol = display_name(*f);
      loc.func_offset = f->file_offset;
      loc.func_size = f->size;
    } else {
      use_unwind_bounds(loc);
    }
    return loc;
  }

  auto fn = file->find_function(symbol);
  if (!fn) return std::unexpected(fn.error());
  loc.file = file;
  loc.symbol = display_name(*fn);
  loc.func_offset = fn->file_offset;
  loc.func_size = fn->size;
  uint64_t entry = fn->file_offset;
  if (fn->ifunc) {
    auto impl = resolve_ifunc(file, *fn);
    if (!impl) return std::unexpected(impl.error());
    loc.file = impl->file;
    loc.ifunc_resolved = true;
    entry = impl->file_offset;
    if (std::optional<Function> f = loc.file->function_containing(entry)) {
      loc.symbol = display_name(*f);
      loc.func_offset = f->file_offset;
      loc.func_size = f->size;
    } else {
      // No symbol covers the implementation (a stripped library without its debug file): the
      // offset is still right, only its name is unknown, and its bounds come from .eh_frame.
      loc.symbol.clear();
      loc.func_offset = entry;
      loc.func_size = 0;
      loc.file_offset = entry;
      use_unwind_bounds(loc);
    }
  }
  loc.file_offset = entry + delta;
  if (loc.func_size != 0 && loc.file_offset - loc.func_offset >= loc.func_size)
    return fail(EINVAL, loc.file->path() + ": offset " + hex(delta) + " is beyond the end of `" +
                            loc.symbol + "`, which is " + hex(loc.func_size) + " bytes long");
  if (!loc.file->offset_is_executable(loc.file_offset))
    return fail(EINVAL, loc.file->path() + ": offset " + hex(loc.file_offset) +
                            " is not in an executable segment");
  return loc;
}

}  // namespace

Result<ResolvedLocation> resolve_location(std::string_view spec) {
  OpenedFiles opened_files;
  return resolve_one(spec, opened_files);
}

std::vector<Result<ResolvedLocation>> resolve_locations(std::span<const std::string> specs) {
  OpenedFiles opened_files;
  std::vector<Result<ResolvedLocation>> out;
  out.reserve(specs.size());
  for (const std::string &spec : specs) out.push_back(resolve_one(spec, opened_files));
  return out;
}

size_t file_colon(std::string_view s) {
  int depth = 0;
  for (size_t i = s.size(); i-- > 0;) {
    const char c = s[i];
    if (c == ')' || c == ']' || c == '}') {
      ++depth;
    } else if (c == '(' || c == '[' || c == '{') {
      depth = depth > 0 ? depth - 1 : 0;
    } else if (c == ':' && depth == 0) {
      if (i > 0 && s[i - 1] == ':') {  // "::" of a qualified name
        --i;
        continue;
      }
      return i;
    }
  }
  return std::string_view::npos;
}

ProbeType split_probe_type(std::string_view spec) {
  for (auto [prefix, returns] : {std::pair{std::string_view("uprobe:"), false},
                                 std::pair{std::string_view("uretprobe:"), true}}) {
    if (!spec.starts_with(prefix)) continue;
    const std::string_view rest = spec.substr(prefix.size());
    if (file_colon(rest) != std::string_view::npos) return {returns, rest};
  }
  return {false, spec};
}

bool is_usdt_spec(std::string_view spec) {
  return spec.starts_with("usdt:");
}

Result<std::vector<ResolvedLocation>> resolve_usdt(std::string_view spec) {
  auto bad = [&] {
    return fail(EINVAL, "bad location `" + std::string(spec) +
                            "`: expected usdt:FILE:PROVIDER:NAME or usdt:FILE:NAME");
  };
  if (!is_usdt_spec(spec)) return bad();
  std::string_view rest = spec.substr(5);
  // FILE may hold ':' (rarely); PROVIDER and NAME never do. usdt:FILE:NAME names a probe whose
  // NAME alone is unique; with three parts, the middle one may be a provider or part of FILE:
  // a provider when the whole of what precedes it opens as a file.
  size_t last = rest.rfind(':');
  if (last == std::string_view::npos || last == 0 || last + 1 == rest.size()) return bad();
  std::string_view name = rest.substr(last + 1), before = rest.substr(0, last);
  std::string_view provider;
  std::string_view file_part = before;
  if (size_t mid = before.rfind(':'); mid != std::string_view::npos && mid > 0) {
    OpenedFiles probe_open;
    if (open_file_part(before.substr(0, mid), probe_open)) {
      file_part = before.substr(0, mid);
      provider = before.substr(mid + 1);
    }
  }
  if (name.empty() || file_part.empty()) return bad();
  OpenedFiles opened_files;
  auto opened = open_file_part(file_part, opened_files);
  if (!opened) return std::unexpected(opened.error());
  std::shared_ptr<const ElfFile> file = std::move(*opened);
  auto notes = read_usdt_probes(*file);
  if (!notes) return std::unexpected(notes.error());
  if (notes->empty()) return fail(ENOENT, file->path() + ": no USDT probes (.note.stapsdt)");

  std::vector<const UsdtProbe *> sites;
  std::vector<std::string> providers;  // those that have NAME, when PROVIDER was left out
  for (const UsdtProbe &n : *notes) {
    if (n.name != name || (!provider.empty() && n.provider != provider)) continue;
    sites.push_back(&n);
    if (std::find(providers.begin(), providers.end(), n.provider) == providers.end())
      providers.push_back(n.provider);
  }
  if (sites.empty()) {
    // The nearest provider:name, for the message.
    std::string wanted =
        provider.empty() ? std::string(name) : std::string(provider) + ":" + std::string(name);
    std::string best;
    size_t best_d = std::clamp<size_t>(wanted.size() / 4, 1, 3) + 1;
    for (const UsdtProbe &n : *notes) {
      std::string candidate = provider.empty() ? n.name : n.provider + ":" + n.name;
      size_t d = bounded_edit_distance(wanted, candidate, best_d - 1);
      if (d < best_d) {
        best = provider.empty() ? n.provider + ":" + n.name : candidate;
        best_d = d;
      }
    }
    std::string message = file->path() + ": no USDT probe `" + wanted + "`";
    if (!best.empty()) message += " (did you mean `" + best + "`?)";
    return fail(ENOENT, message);
  }
  if (providers.size() > 1) {
    std::string list;
    for (const std::string &p : providers) list += (list.empty() ? "" : ", ") + p;
    return fail(EINVAL, file->path() + ": USDT probe `" + std::string(name) +
                            "` is in several providers (" + list +
                            "): name one, usdt:FILE:PROVIDER:NAME");
  }
  std::vector<ResolvedLocation> out;
  for (const UsdtProbe *n : sites) {
    if (!n->args_error.empty())
      return fail(EINVAL, file->path() + ": USDT probe `" + n->provider + ":" + n->name +
                              "`: its arguments `" + n->args_text + "`: " + n->args_error);
    ResolvedLocation loc;
    loc.spec = std::string(spec);
    loc.file = file;
    loc.file_offset = n->file_offset;
    loc.func_offset = n->file_offset;
    // The enclosing function's bounds: the site's analysis decodes it (branch targets).
    if (std::optional<Function> f = file->function_containing(n->file_offset)) {
      loc.symbol = display_name(*f);
      loc.func_offset = f->file_offset;
      loc.func_size = f->size;
    } else {
      use_unwind_bounds(loc);
    }
    loc.usdt = std::make_shared<const UsdtProbe>(*n);
    out.push_back(std::move(loc));
  }
  return out;
}

bool returns_twice(const ElfFile &file, uint64_t file_offset) {
  static constexpr std::string_view kNames[] = {"setjmp",    "_setjmp",  "__sigsetjmp",
                                                "sigsetjmp", "__setjmp", "getcontext",
                                                "vfork",     "__vfork"};
  // symbol_vaddr, not find_function: a name the file lacks costs a lookup, not a search for
  // suggestions (a glob asks for each of its functions).
  for (std::string_view name : kNames)
    if (auto v = file.symbol_vaddr(name); v && file.vaddr_to_offset(*v) == file_offset) return true;
  return false;
}

std::string returns_twice_refusal(std::string_view function) {
  return fmt::format(
      "{} returns twice (as setjmp, getcontext and vfork do): its second return would "
      "come back to a return probe's landing with no call of its own there, so it "
      "cannot have a return probe",
      function);
}

std::string ResolvedLocation::describe() const {
  const std::string_view base = basename_of(file ? file->path() : spec);
  std::string out;
  if (usdt) {
    out.reserve(8 + base.size() + usdt->provider.size() + usdt->name.size());
    out.append("usdt:")
        .append(base)
        .append(":")
        .append(usdt->provider)
        .append(":")
        .append(usdt->name);
    return out;
  }
  // Made for every probe a batch places (its name): appended in one buffer.
  out.reserve(base.size() + symbol.size() + 20);
  out.append(base).append(":");
  if (symbol.empty()) return out.append(hex(file_offset));
  out.append(symbol);
  if (uint64_t off = offset_in_function(); off != 0) out.append("+").append(hex(off));
  return out;
}

std::optional<uint64_t> parse_offset(std::string_view s) {
  int base = 10;
  if (s.starts_with("0x") || s.starts_with("0X")) {
    s.remove_prefix(2);
    base = 16;
  }
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace usprobe::elf
