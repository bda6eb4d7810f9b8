// ElfFile on libelf. Everything is read once, in open(): the PT_LOAD segments, the functions of
// .symtab and .dynsym, the names of data symbols (for error messages) and the build-id. The libelf
// handle is then closed; only our own read-only mapping of the file stays, for bytes(). An opened
// ElfFile never changes afterwards, so any number of threads may share it.
#include "elf/elf_file.h"

#include <fcntl.h>
#include <gelf.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "core/edit_distance.h"
#include "elf/eh_frame.h"

namespace usprobe::elf {
namespace {

// libelf refuses every call until the caller has said which ELF version it speaks.
void init_libelf() {
  static const bool ok = elf_version(EV_CURRENT) != EV_NONE;
  (void)ok;
}

class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(const UniqueFd &) = delete;
  UniqueFd &operator=(const UniqueFd &) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

class UniqueElf {
 public:
  explicit UniqueElf(Elf *e) : elf_(e) {}
  ~UniqueElf() {
    if (elf_) elf_end(elf_);
  }
  UniqueElf(const UniqueElf &) = delete;
  UniqueElf &operator=(const UniqueElf &) = delete;
  Elf *get() const { return elf_; }

 private:
  Elf *elf_;
};

struct Segment {
  uint64_t vaddr = 0, offset = 0, filesz = 0;
  bool exec = false;
};

// A function symbol as read, before .symtab and .dynsym are merged.
struct RawFunction {
  Function fn;
  unsigned char bind = STB_LOCAL;
};

// Where several symbols name one address, the higher rank is the better name.
int binding_rank(unsigned char bind) {
  switch (bind) {
    case STB_GLOBAL:
      return 2;
    case STB_WEAK:
      return 1;
    default:
      return 0;
  }
}

bool is_x86_64(Elf *e) {
  GElf_Ehdr eh;
  return gelf_getehdr(e, &eh) && eh.e_ident[EI_CLASS] == ELFCLASS64 &&
         eh.e_ident[EI_DATA] == ELFDATA2LSB && eh.e_machine == EM_X86_64;
}

// The NT_GNU_BUILD_ID note of any SHT_NOTE section, in lower-case hex.
std::string read_build_id(Elf *e) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (Elf_Scn *scn = elf_nextscn(e, nullptr); scn; scn = elf_nextscn(e, scn)) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_NOTE) continue;
    Elf_Data *data = elf_getdata(scn, nullptr);
    if (!data || !data->d_buf) continue;
    GElf_Nhdr nh;
    size_t name_off = 0, desc_off = 0;
    for (size_t off = 0; (off = gelf_getnote(data, off, &nh, &name_off, &desc_off)) > 0;) {
      const char *base = static_cast<const char *>(data->d_buf);
      if (nh.n_type != NT_GNU_BUILD_ID || nh.n_namesz != 4 ||
          std::memcmp(base + name_off, "GNU", 4) != 0)
        continue;
      std::string hex;
      for (size_t i = 0; i < nh.n_descsz; ++i) {
        auto b = static_cast<uint8_t>(base[desc_off + i]);
        hex += kHex[b >> 4];
        hex += kHex[b & 15];
      }
      return hex;
    }
  }
  return {};
}

Elf_Scn *find_section_of_type(Elf *e, uint32_t type) {
  for (Elf_Scn *scn = elf_nextscn(e, nullptr); scn; scn = elf_nextscn(e, scn)) {
    GElf_Shdr sh;
    if (gelf_getshdr(scn, &sh) && sh.sh_type == type) return scn;
  }
  return nullptr;
}

// Version names of .gnu.version_d by version index. The base entry (VER_FLG_BASE) names the
// file itself, not a version, and symbols pointing at it are unversioned: it is left empty.
std::vector<std::string> read_version_definitions(Elf *e) {
  std::vector<std::string> names;
  Elf_Scn *scn = find_section_of_type(e, SHT_GNU_verdef);
  GElf_Shdr sh;
  if (!scn || !gelf_getshdr(scn, &sh)) return names;
  Elf_Data *data = elf_getdata(scn, nullptr);
  if (!data) return names;
  size_t off = 0;
  for (size_t n = 0; n < sh.sh_info; ++n) {
    GElf_Verdef vd;
    GElf_Verdaux aux;
    if (!gelf_getverdef(data, static_cast<int>(off), &vd)) break;
    if (!(vd.vd_flags & VER_FLG_BASE) && vd.vd_cnt > 0 &&
        gelf_getverdaux(data, static_cast<int>(off + vd.vd_aux), &aux)) {
      const char *name = elf_strptr(e, sh.sh_link, aux.vda_name);
      if (name) {
        if (names.size() <= vd.vd_ndx) names.resize(vd.vd_ndx + 1u);
        names[vd.vd_ndx] = name;
      }
    }
    if (vd.vd_next == 0) break;
    off += vd.vd_next;
  }
  return names;
}

}  // namespace

struct ElfFile::Impl {
  std::string path;
  FileId id;
  const uint8_t *map = nullptr;  // the whole file, PROT_READ, for bytes()
  size_t size = 0;
  bool is_static = false;
  bool is_program = false;
  std::string interpreter;        // PT_INTERP's path; empty when none
  std::optional<uint64_t> entry;  // e_entry as a file offset
  std::string build_id;
  std::string symtab_path;
  std::vector<Segment> loads;

  std::vector<Function> functions;      // sorted by file offset, then name
  std::vector<unsigned char> bindings;  // STB_* of functions[i]
  std::vector<uint64_t> max_end;        // max(file_offset + size) over functions[0..i]
  std::unordered_map<std::string, std::vector<uint32_t>> by_name;  // plain name -> indices
  std::unordered_set<std::string> data_names;      // objects and TLS: "is a data symbol"
  std::unordered_set<std::string> sizeless_names;  // functions with st_size 0: bounds unknown
  // The values of the symbols that are not in `functions` (data objects, sizeless functions,
  // untyped labels), for symbol_vaddr(); with the rank that decides between duplicates.
  struct SymbolValue {
    uint64_t vaddr = 0;
    int rank = 0;
  };
  std::unordered_map<std::string, SymbolValue> other_symbols;
  std::vector<Section> sections;
  std::vector<CodeRange> unwind_ranges;  // .eh_frame's FDEs, sorted by file offset
  std::vector<uint64_t> landing_pads;    // sorted, unique

  ~Impl() {
    if (map) ::munmap(const_cast<uint8_t *>(map), size);
  }

  std::optional<uint64_t> vaddr_to_offset(uint64_t vaddr) const {
    for (const Segment &s : loads)
      if (vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz) return s.offset + (vaddr - s.vaddr);
    return std::nullopt;
  }

  void read_segments(Elf *e);
  void read_symbols(Elf *e, Elf_Scn *scn, bool dynamic, std::vector<RawFunction> &out);
  void read_separate_debug_symtab(std::vector<RawFunction> &out);
  void index(std::vector<RawFunction> raw);
  void read_unwind_info(Elf *e);
  void read_sections(Elf *e);
  void note_symbol_value(const std::string &name, uint64_t vaddr, int rank);
  std::string suggest(std::string_view name) const;
};

void ElfFile::Impl::read_segments(Elf *e) {
  GElf_Ehdr eh;
  gelf_getehdr(e, &eh);
  size_t n = 0;
  if (elf_getphdrnum(e, &n) != 0) n = 0;
  bool has_interp = false;
  std::optional<GElf_Phdr> dynamic;
  for (size_t i = 0; i < n; ++i) {
    GElf_Phdr ph;
    if (!gelf_getphdr(e, static_cast<int>(i), &ph)) continue;
    if (ph.p_type == PT_LOAD)
      loads.push_back({ph.p_vaddr, ph.p_offset, ph.p_filesz, (ph.p_flags & PF_X) != 0});
    else if (ph.p_type == PT_INTERP && ph.p_offset <= size && ph.p_filesz <= size - ph.p_offset) {
      has_interp = true;
      const auto *text = reinterpret_cast<const char *>(map + ph.p_offset);
      interpreter.assign(text, strnlen(text, ph.p_filesz));
    } else if (ph.p_type == PT_DYNAMIC)
      dynamic = ph;
  }
  // DF_1_PIE tells a static-pie executable from a shared library: both are ET_DYN without a
  // PT_INTERP (glibc's own libc.so.6 does have one, so that it can be run to print its version).
  bool pie = false;
  if (dynamic && dynamic->p_offset <= size && dynamic->p_filesz <= size - dynamic->p_offset) {
    for (uint64_t off = 0; off + sizeof(Elf64_Dyn) <= dynamic->p_filesz; off += sizeof(Elf64_Dyn)) {
      Elf64_Dyn d;
      std::memcpy(&d, map + dynamic->p_offset + off, sizeof d);
      if (d.d_tag == DT_NULL) break;
      if (d.d_tag == DT_FLAGS_1 && (d.d_un.d_val & DF_1_PIE)) pie = true;
    }
  }
  is_program = eh.e_type == ET_EXEC || (eh.e_type == ET_DYN && pie);
  if (eh.e_entry != 0) entry = vaddr_to_offset(eh.e_entry);
  is_static = !has_interp && is_program;
}

void ElfFile::Impl::read_symbols(Elf *e, Elf_Scn *scn, bool dynamic,
                                 std::vector<RawFunction> &out) {
  GElf_Shdr sh;
  if (!gelf_getshdr(scn, &sh) || sh.sh_entsize == 0) return;
  Elf_Data *data = elf_getdata(scn, nullptr);
  if (!data) return;
  size_t count = sh.sh_size / sh.sh_entsize;

  // .dynsym carries versions out of line: .gnu.version holds one index per symbol, naming an
  // entry of .gnu.version_d; bit 15 (VERSYM_HIDDEN) marks "name@VER" rather than "name@@VER".
  Elf_Data *versym = nullptr;
  std::vector<std::string> version_names;
  if (dynamic) {
    if (Elf_Scn *vs = find_section_of_type(e, SHT_GNU_versym)) versym = elf_getdata(vs, nullptr);
    version_names = read_version_definitions(e);
  }

  out.reserve(out.size() + count);
  for (size_t i = 1; i < count; ++i) {
    GElf_Sym sym;
    if (!gelf_getsym(data, static_cast<int>(i), &sym)) continue;
    if (sym.st_shndx == SHN_UNDEF || sym.st_shndx == SHN_ABS) continue;
    const char *cname = elf_strptr(e, sh.sh_link, sym.st_name);
    if (!cname || !*cname) continue;
    std::string name = cname, version;
    bool hidden = false;
    if (versym) {
      GElf_Versym v;
      if (gelf_getversym(versym, static_cast<int>(i), &v)) {
        size_t ndx = v & 0x7fff;
        hidden = (v & 0x8000) != 0;
        if (ndx < version_names.size()) version = version_names[ndx];
      }
    } else if (size_t at = name.find('@'); at != std::string::npos && at > 0) {
      // .symtab spells versions into the name: "memcpy@GLIBC_2.2.5", "memcpy@@GLIBC_2.14".
      hidden = name.compare(at, 2, "@@") != 0;
      version = name.substr(at + (hidden ? 1 : 2));
      name.resize(at);
    }
    if (version.empty()) hidden = false;

    unsigned char type = GELF_ST_TYPE(sym.st_info);
    // .symtab over .dynsym (read first), then the stronger binding.
    int rank = (dynamic ? 0 : 4) + binding_rank(GELF_ST_BIND(sym.st_info));
    if (type == STT_OBJECT || type == STT_NOTYPE) note_symbol_value(name, sym.st_value, rank);
    if (type == STT_OBJECT || type == STT_TLS || type == STT_COMMON) {
      data_names.insert(std::move(name));
      continue;
    }
    if (type != STT_FUNC && type != STT_GNU_IFUNC) continue;
    if (sym.st_size == 0) {
      note_symbol_value(name, sym.st_value, rank);
      sizeless_names.insert(std::move(name));
      continue;
    }
    auto offset = vaddr_to_offset(sym.st_value);
    if (!offset) continue;  // not in the file's loaded image: nothing there to probe
    RawFunction r;
    r.fn.name = std::move(name);
    r.fn.version = std::move(version);
    r.fn.vaddr = sym.st_value;
    r.fn.file_offset = *offset;
    r.fn.size = sym.st_size;
    r.fn.ifunc = type == STT_GNU_IFUNC;
    r.fn.hidden_version = hidden;
    r.fn.exported = dynamic;
    r.bind = GELF_ST_BIND(sym.st_info);
    out.push_back(std::move(r));
  }
}

void ElfFile::Impl::note_symbol_value(const std::string &name, uint64_t vaddr, int rank) {
  auto [it, added] = other_symbols.try_emplace(name, SymbolValue{vaddr, rank});
  if (!added && rank > it->second.rank) it->second = SymbolValue{vaddr, rank};
}

void ElfFile::Impl::read_sections(Elf *e) {
  size_t shstrndx = 0;
  if (elf_getshdrstrndx(e, &shstrndx) != 0) return;
  for (Elf_Scn *scn = elf_nextscn(e, nullptr); scn; scn = elf_nextscn(e, scn)) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh)) continue;
    const char *name = elf_strptr(e, shstrndx, sh.sh_name);
    sections.push_back(
        {name ? name : "", sh.sh_type, sh.sh_flags, sh.sh_addr, sh.sh_offset, sh.sh_size});
  }
}

// Debian strips .symtab from its libraries and ships it in -dbg packages as a file named by the
// build-id. Without it, libc's IFUNC implementations (__strlen_avx2, ...) and every static
// function would have no name. Its symbol values are the stripped file's addresses: the debug
// file is the same link with the contents of the loaded sections removed.
void ElfFile::Impl::read_separate_debug_symtab(std::vector<RawFunction> &out) {
  if (build_id.size() < 4) return;
  std::string debug_path =
      "/usr/lib/debug/.build-id/" + build_id.substr(0, 2) + "/" + build_id.substr(2) + ".debug";
  UniqueFd fd(::open(debug_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return;
  UniqueElf e(elf_begin(fd.get(), ELF_C_READ_MMAP, nullptr));
  if (!e.get() || elf_kind(e.get()) != ELF_K_ELF || !is_x86_64(e.get())) return;
  if (read_build_id(e.get()) != build_id) return;  // a stale file left by another version
  Elf_Scn *symtab = find_section_of_type(e.get(), SHT_SYMTAB);
  if (!symtab) return;
  read_symbols(e.get(), symtab, /*dynamic=*/false, out);
  symtab_path = std::move(debug_path);
}

// Merge the two tables into one entry per (offset, name, version). .symtab repeats most of
// .dynsym, often without the version ("malloc" beside .dynsym's "malloc@@GLIBC_2.2.5"), and may
// hold a local unversioned alias of a versioned symbol (libc's local IFUNC "memcpy"): at one
// offset, an unversioned name is dropped when a versioned one of the same name exists.
void ElfFile::Impl::index(std::vector<RawFunction> raw) {
  // Sorted through a permutation: moving the symbols themselves (two strings each) is what took
  // the time, most of a process's first open of libc.
  std::vector<uint32_t> order(raw.size());
  for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  // By offset first (integers), then each run of one offset (a few aliases) by name and version.
  std::sort(order.begin(), order.end(), [&raw](uint32_t x, uint32_t y) {
    return raw[x].fn.file_offset < raw[y].fn.file_offset;
  });
  for (size_t i = 0, j; i < order.size(); i = j) {
    for (j = i + 1;
         j < order.size() && raw[order[j]].fn.file_offset == raw[order[i]].fn.file_offset;)
      ++j;
    if (j - i > 1)
      std::sort(order.begin() + static_cast<ptrdiff_t>(i),
                order.begin() + static_cast<ptrdiff_t>(j), [&raw](uint32_t x, uint32_t y) {
                  const Function &a = raw[x].fn, &b = raw[y].fn;
                  return std::tie(a.name, a.version) < std::tie(b.name, b.version);
                });
  }
  functions.reserve(raw.size());
  bindings.reserve(raw.size());
  for (size_t i = 0; i < order.size();) {
    const Function &first = raw[order[i]].fn;
    size_t j = i;
    bool any_versioned = false;
    while (j < order.size() && raw[order[j]].fn.file_offset == first.file_offset &&
           raw[order[j]].fn.name == first.name) {
      any_versioned |= !raw[order[j]].fn.version.empty();
      ++j;
    }
    for (size_t k = i; k < j; ++k) {
      RawFunction &r = raw[order[k]];
      if (any_versioned && r.fn.version.empty()) continue;
      if (!functions.empty() && functions.back().file_offset == r.fn.file_offset &&
          functions.back().name == r.fn.name && functions.back().version == r.fn.version) {
        Function &kept = functions.back();  // the same symbol, seen in both tables
        kept.exported |= r.fn.exported;
        kept.ifunc |= r.fn.ifunc;
        kept.size = std::max(kept.size, r.fn.size);
        if (binding_rank(r.bind) > binding_rank(bindings.back())) bindings.back() = r.bind;
        continue;
      }
      functions.push_back(std::move(r.fn));
      bindings.push_back(r.bind);
    }
    i = j;
  }
  max_end.reserve(functions.size());
  by_name.reserve(functions.size());
  uint64_t end = 0;
  for (size_t i = 0; i < functions.size(); ++i) {
    end = std::max(end, functions[i].file_offset + functions[i].size);
    max_end.push_back(end);
    by_name[functions[i].name].push_back(static_cast<uint32_t>(i));
  }
}

// .eh_frame is found by its section name (strip keeps section headers). Its FDEs give code
// bounds; those with an LSDA give the landing pads. Everything is in virtual addresses until here.
void ElfFile::Impl::read_unwind_info(Elf *e) {
  size_t shstrndx = 0;
  if (elf_getshdrstrndx(e, &shstrndx) != 0) return;
  for (Elf_Scn *scn = elf_nextscn(e, nullptr); scn; scn = elf_nextscn(e, scn)) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_PROGBITS) continue;
    const char *name = elf_strptr(e, shstrndx, sh.sh_name);
    if (!name || std::strcmp(name, ".eh_frame") != 0) continue;
    if (sh.sh_offset > size || sh.sh_size > size - sh.sh_offset) return;
    auto fdes = parse_eh_frame({map + sh.sh_offset, sh.sh_size}, sh.sh_addr);
    for (const FrameDescription &fde : fdes) {
      auto begin = vaddr_to_offset(fde.begin);
      if (!begin) continue;
      unwind_ranges.push_back({*begin, fde.size});
      if (fde.lsda == 0) continue;
      auto lsda = vaddr_to_offset(fde.lsda);
      if (!lsda || *lsda >= size) continue;  // (a segment may claim more than the file holds)
      for (uint64_t pad : parse_lsda({map + *lsda, size - *lsda}, fde.lsda, fde.begin))
        if (auto off = vaddr_to_offset(pad)) landing_pads.push_back(*off);
    }
    break;
  }
  std::sort(unwind_ranges.begin(), unwind_ranges.end(),
            [](const CodeRange &a, const CodeRange &b) { return a.file_offset < b.file_offset; });
  std::sort(landing_pads.begin(), landing_pads.end());
  landing_pads.erase(std::unique(landing_pads.begin(), landing_pads.end()), landing_pads.end());
}

// The nearest function name, if it is close enough to be a typo: one edit per four characters
// of the name (at least one, at most three); more suggests unrelated names ("fstat" for
// "_start"). Ties go to exported names, then to names
// without a leading underscore (the public spelling), then alphabetically, so that the answer
// does not depend on hash order.
std::string ElfFile::Impl::suggest(std::string_view name) const {
  size_t limit = std::clamp<size_t>(name.size() / 4, 1, 3);
  std::string best;
  auto key = [&](const std::string &n, size_t d) {
    const std::vector<uint32_t> &indices = by_name.at(n);
    bool exported = std::any_of(indices.begin(), indices.end(),
                                [&](uint32_t i) { return functions[i].exported; });
    return std::make_tuple(d, !exported, n.starts_with('_'), std::string_view(n));
  };
  size_t best_d = limit + 1;
  for (const auto &[candidate, indices] : by_name) {
    size_t d = bounded_edit_distance(name, candidate, std::min(limit, best_d));
    if (d > limit) continue;  // (d == 0: differs only in case; never identical, or found)
    if (best.empty() || key(candidate, d) < key(best, best_d)) {
      best = candidate;
      best_d = d;
    }
  }
  return best;
}

ElfFile::ElfFile() : impl_(std::make_unique<Impl>()) {}
ElfFile::~ElfFile() = default;

Result<std::shared_ptr<const ElfFile>> ElfFile::open(const std::string &path) {
  init_libelf();
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) return fail(ENOENT, path + ": no such file");
    return fail(err, path + ": " + std::strerror(err));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    int err = errno;
    return fail(err, path + ": " + std::strerror(err));
  }
  if (S_ISDIR(st.st_mode)) return fail(EISDIR, path + ": is a directory");
  if (!S_ISREG(st.st_mode) || st.st_size < static_cast<off_t>(sizeof(Elf64_Ehdr)))
    return fail(ENOEXEC, path + ": not an ELF file");

  // Opened files are kept, keyed by identity and version, so that resolving a thousand symbols
  // of one library indexes it once. A file rewritten in place gets a new key.
  using Key = std::tuple<dev_t, ino_t, off_t, time_t, long>;
  static std::mutex cache_mutex;
  static std::map<Key, std::shared_ptr<const ElfFile>> cache;
  const Key key{st.st_dev, st.st_ino, st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec};
  {
    std::lock_guard lock(cache_mutex);
    if (auto it = cache.find(key); it != cache.end() && it->second->path() == path)
      return it->second;
  }
  auto opened = open_uncached(path, fd.get(), st);
  if (opened) {
    std::lock_guard lock(cache_mutex);
    if (cache.size() >= 64) cache.erase(cache.begin());
    cache[key] = *opened;
  }
  return opened;
}

Result<std::shared_ptr<const ElfFile>> ElfFile::open_uncached(const std::string &path, int fd_num,
                                                              const struct stat &st) {
  std::shared_ptr<ElfFile> file(new ElfFile());
  Impl &im = *file->impl_;
  im.path = path;
  im.id = FileId{st.st_dev, st.st_ino};
  im.size = static_cast<size_t>(st.st_size);
  // The file's bytes are read into anonymous memory, not mapped: the kernel writes its uprobes'
  // int3 into every mapping of a file that could execute, a read-only one included, and the
  // bytes here are what "the file says" when usprobe checks a site for someone else's patch.
  void *map = ::mmap(nullptr, im.size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (map == MAP_FAILED) {
    int err = errno;
    return fail(err, path + ": cannot read the file: " + std::strerror(err));
  }
  im.map = static_cast<const uint8_t *>(map);
  for (size_t done = 0; done < im.size;) {
    ssize_t n = ::pread(fd_num, static_cast<uint8_t *>(map) + done, im.size - done,
                        static_cast<off_t>(done));
    if (n <= 0) {
      int err = n < 0 ? errno : EIO;
      return fail(err, path + ": cannot read the file: " + std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  ::mprotect(map, im.size, PROT_READ);
  if (std::memcmp(im.map, ELFMAG, SELFMAG) != 0) return fail(ENOEXEC, path + ": not an ELF file");

  // libelf maps the file itself (ELF_C_READ_MMAP) rather than reading our mapping through
  // elf_memory(), which is allowed to write into the image it is given.
  UniqueElf e(elf_begin(fd_num, ELF_C_READ_MMAP, nullptr));
  if (!e.get() || elf_kind(e.get()) != ELF_K_ELF) return fail(ENOEXEC, path + ": not an ELF file");
  if (!is_x86_64(e.get())) return fail(ENOEXEC, path + ": not an x86-64 ELF file");

  im.read_segments(e.get());
  im.build_id = read_build_id(e.get());
  std::vector<RawFunction> raw;
  if (Elf_Scn *dynsym = find_section_of_type(e.get(), SHT_DYNSYM))
    im.read_symbols(e.get(), dynsym, /*dynamic=*/true, raw);
  if (Elf_Scn *symtab = find_section_of_type(e.get(), SHT_SYMTAB)) {
    im.read_symbols(e.get(), symtab, /*dynamic=*/false, raw);
    im.symtab_path = path;
  } else {
    im.read_separate_debug_symtab(raw);
  }
  im.index(std::move(raw));
  im.read_unwind_info(e.get());
  im.read_sections(e.get());
  return std::shared_ptr<const ElfFile>(std::move(file));
}

const std::string &ElfFile::path() const {
  return impl_->path;
}
FileId ElfFile::id() const {
  return impl_->id;
}
bool ElfFile::is_static_executable() const {
  return impl_->is_static;
}
bool ElfFile::is_program() const {
  return impl_->is_program;
}
std::optional<uint64_t> ElfFile::entry_offset() const {
  return impl_->entry;
}
const std::string &ElfFile::interpreter() const {
  return impl_->interpreter;
}
const std::vector<Function> &ElfFile::functions() const {
  return impl_->functions;
}
const std::string &ElfFile::build_id() const {
  return impl_->build_id;
}
const std::string &ElfFile::symtab_path() const {
  return impl_->symtab_path;
}

Result<Function> ElfFile::find_function(std::string_view query) const {
  const Impl &im = *impl_;
  // "name", "name@VER" (that version, default or not) or "name@@VER" (only as the default).
  std::string_view plain = query, version;
  bool versioned = false, want_default = false;
  if (size_t at = query.find('@'); at != std::string_view::npos && at > 0) {
    versioned = true;
    plain = query.substr(0, at);
    version = query.substr(at + 1);
    if (version.starts_with('@')) {
      want_default = true;
      version.remove_prefix(1);
    }
  }
  std::string plain_name(plain);
  if (auto it = im.by_name.find(plain_name); it != im.by_name.end()) {
    // For a plain name: the default version (what a program linking today gets), then exported
    // over local, then the stronger binding; the lowest offset settles the rest.
    auto rank = [&](uint32_t i) {
      const Function &f = im.functions[i];
      return std::make_tuple(!f.hidden_version, f.exported, binding_rank(im.bindings[i]));
    };
    std::optional<uint32_t> best;
    std::string known;
    for (uint32_t i : it->second) {
      const Function &f = im.functions[i];
      known += (known.empty() ? "" : ", ") + (f.version.empty() ? "(none)" : f.version);
      if (versioned && (f.version != version || (want_default && f.hidden_version))) continue;
      if (!best || rank(i) > rank(*best)) best = i;
    }
    if (best) return im.functions[*best];
    return fail(ENOENT, im.path + ": no function `" + std::string(query) + "` (`" + plain_name +
                            "` has versions " + known + ")");
  }
  if (im.data_names.contains(plain_name))
    return fail(EINVAL,
                im.path + ": `" + std::string(query) + "` is a data symbol, not a function");
  if (im.sizeless_names.contains(plain_name))
    return fail(EINVAL, im.path + ": `" + std::string(query) +
                            "` has no size in the symbol table, so its bounds are unknown; "
                            "probe it by file offset");
  std::string message = im.path + ": no function `" + std::string(query) + "`";
  if (std::string near = im.suggest(plain); !near.empty())
    message += " (did you mean `" + near + "`?)";
  return fail(ENOENT, std::move(message));
}

const Function *ElfFile::function_containing(uint64_t file_offset) const {
  const Impl &im = *impl_;
  // Innermost first (the latest start), then the aliases' best name: global binding, default
  // version, shortest, alphabetical.
  auto key = [&](size_t i) {
    const Function &f = im.functions[i];
    return std::make_tuple(f.file_offset, binding_rank(im.bindings[i]), !f.hidden_version,
                           -static_cast<int64_t>(f.name.size()));
  };
  auto better = [&](size_t a, size_t b) {
    if (key(a) != key(b)) return key(a) > key(b);
    return im.functions[a].name < im.functions[b].name;
  };
  auto it = std::upper_bound(im.functions.begin(), im.functions.end(), file_offset,
                             [](uint64_t off, const Function &f) { return off < f.file_offset; });
  std::optional<size_t> best;
  // Walk back from the last function starting at or before the offset; max_end says when no
  // earlier function can reach it any more.
  for (size_t i = static_cast<size_t>(it - im.functions.begin()); i-- > 0;) {
    if (im.max_end[i] <= file_offset) break;
    const Function &f = im.functions[i];
    if (file_offset - f.file_offset < f.size && (!best || better(i, *best))) best = i;
  }
  return best ? &im.functions[*best] : nullptr;
}

std::optional<ElfFile::CodeRange> ElfFile::unwind_range_containing(uint64_t file_offset) const {
  const auto &ranges = impl_->unwind_ranges;
  // FDEs do not overlap: the last one starting at or before the offset is the only candidate.
  auto it = std::upper_bound(ranges.begin(), ranges.end(), file_offset,
                             [](uint64_t off, const CodeRange &r) { return off < r.file_offset; });
  if (it == ranges.begin()) return std::nullopt;
  --it;
  if (file_offset - it->file_offset >= it->size) return std::nullopt;
  return *it;
}

const std::vector<ElfFile::CodeRange> &ElfFile::unwind_ranges() const {
  return impl_->unwind_ranges;
}

const std::vector<uint64_t> &ElfFile::landing_pads() const {
  return impl_->landing_pads;
}

const std::vector<ElfFile::Section> &ElfFile::sections() const {
  return impl_->sections;
}

const ElfFile::Section *ElfFile::find_section(std::string_view name) const {
  for (const Section &s : impl_->sections)
    if (s.name == name) return &s;
  return nullptr;
}

std::span<const uint8_t> ElfFile::section_bytes(const Section &section) const {
  if (section.type == SHT_NOBITS) return {};
  return bytes(section.file_offset, section.size);
}

std::optional<uint64_t> ElfFile::symbol_vaddr(std::string_view name) const {
  const Impl &im = *impl_;
  std::string key(name);
  if (auto it = im.other_symbols.find(key); it != im.other_symbols.end()) return it->second.vaddr;
  if (auto it = im.by_name.find(key); it != im.by_name.end()) {
    // A function: the default version's address, as find_function() picks it.
    if (auto f = find_function(name)) return f->vaddr;
    return im.functions[it->second.front()].vaddr;
  }
  return std::nullopt;
}

std::optional<uint64_t> ElfFile::vaddr_to_offset(uint64_t vaddr) const {
  return impl_->vaddr_to_offset(vaddr);
}

std::optional<uint64_t> ElfFile::offset_to_vaddr(uint64_t file_offset) const {
  for (const Segment &s : impl_->loads)
    if (file_offset >= s.offset && file_offset - s.offset < s.filesz)
      return s.vaddr + (file_offset - s.offset);
  return std::nullopt;
}

bool ElfFile::offset_is_executable(uint64_t file_offset) const {
  for (const Segment &s : impl_->loads)
    if (s.exec && file_offset >= s.offset && file_offset - s.offset < s.filesz) return true;
  return false;
}

// All `len` bytes or none: a caller decoding instructions must not mistake a short read for code.
std::span<const uint8_t> ElfFile::bytes(uint64_t file_offset, size_t len) const {
  const Impl &im = *impl_;
  if (file_offset > im.size || len > im.size - file_offset) return {};
  return {im.map + file_offset, len};
}

}  // namespace usprobe::elf
