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
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
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

// The index is made of plain records, its strings in one buffer (Impl::strings), so that it
// copies as a few arrays: into another process (index_image, open_prepared) at the cost of a
// memcpy, where reading and indexing the file again costs milliseconds.
struct Segment {
  uint64_t vaddr = 0, offset = 0, filesz = 0;
  uint32_t exec = 0;  // PF_X
  uint32_t pad = 0;
};

struct NameRef {
  uint32_t off = 0, len = 0;  // in Impl::strings
};

// A slot of a file's name hash table (ElfFile::Impl::named).
struct NameSlot {
  uint32_t hash;
  uint32_t first_plus_one;  // 1 + the position in by_name of the first fn of that name; 0: free
};

// A Function, as the index keeps it.
struct FnRecord {
  uint64_t vaddr = 0;
  uint64_t file_offset = 0;
  uint64_t size = 0;
  uint64_t max_end = 0;  // max(file_offset + size) over this record and every one before it
  NameRef name, version;
  uint8_t bind = STB_LOCAL;
  uint8_t ifunc = 0, hidden_version = 0, exported = 0;
  uint32_t pad = 0;
};

struct ValueRecord {
  NameRef name;
  uint64_t vaddr = 0;
};

struct SectionRecord {
  NameRef name;
  uint32_t type = 0, pad = 0;
  uint64_t flags = 0, vaddr = 0, file_offset = 0, size = 0;
};

// A function symbol as read, before .symtab and .dynsym are merged.
struct RawFunction {
  Function fn;
  unsigned char bind = STB_LOCAL;
};

// index_image's format: a head, then each part as its length and its bytes, in the order of
// ElfFile::Impl::parts().
constexpr uint64_t kImageMagic = 0x3249'4645'4c45'5355ull;  // "USELFEI2", little-endian
struct ImageHead {
  uint64_t magic = kImageMagic;
  uint32_t flags = 0;  // kImage* below
  uint32_t pad = 0;
  uint64_t entry = 0;
  uint64_t file_size = 0;
};
constexpr uint32_t kImageStatic = 1, kImageProgram = 2, kImageEntry = 4;

class ImageWriter {
 public:
  template <class T>
  void pod(const T &v) {
    static_assert(std::is_trivially_copyable_v<T>);
    append(&v, sizeof v);
  }
  // Each part 8-aligned, so that a reader can use the tables where they lie (ImageReader::view).
  template <class T>
  void part(std::span<const T> v) {
    static_assert(std::is_trivially_copyable_v<T> && alignof(T) <= 8);
    pod(uint64_t{v.size()});
    append(v.data(), v.size() * sizeof(T));
    out_.resize((out_.size() + 7) & ~size_t{7});
  }
  template <class T>
  void part(const std::vector<T> &v) {
    part(std::span<const T>(v));
  }
  void part(std::string_view s) { part(std::span<const char>(s.data(), s.size())); }
  std::vector<uint8_t> take() { return std::move(out_); }

 private:
  void append(const void *p, size_t n) {
    const auto *b = static_cast<const uint8_t *>(p);
    out_.insert(out_.end(), b, b + n);
  }
  std::vector<uint8_t> out_;
};

// Reads what ImageWriter wrote; false at the first part that runs past the end.
class ImageReader {
 public:
  explicit ImageReader(std::span<const uint8_t> in) : in_(in) {}
  template <class T>
  bool pod(T &v) {
    if (in_.size() < sizeof v) return false;
    std::memcpy(&v, in_.data(), sizeof v);
    in_ = in_.subspan(sizeof v);
    return true;
  }
  // The next part where it lies, when it is aligned for T (the image mapped at a page, as the
  // writer aligned it); otherwise a copy into `copy`. The image must outlive the view.
  template <class T>
  bool view(std::span<const T> &v, std::vector<T> &copy) {
    uint64_t n = 0;
    if (!pod(n) || n > in_.size() / sizeof(T)) return false;
    if (reinterpret_cast<uintptr_t>(in_.data()) % alignof(T) == 0) {
      v = {reinterpret_cast<const T *>(in_.data()), n};
    } else {
      copy.resize(n);
      if (n) std::memcpy(copy.data(), in_.data(), n * sizeof(T));
      v = copy;
    }
    return skip(n * sizeof(T));
  }
  bool view(std::string_view &v) {
    uint64_t n = 0;
    if (!pod(n) || n > in_.size()) return false;
    v = {reinterpret_cast<const char *>(in_.data()), n};
    return skip(n);
  }
  template <class T>
  bool part(std::vector<T> &v) {
    std::span<const T> at;
    if (!view(at, v)) return false;
    if (at.data() != v.data()) v.assign(at.begin(), at.end());
    return true;
  }
  bool part(std::string &s) {
    std::string_view at;
    if (!view(at)) return false;
    s.assign(at);
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  // Past n bytes and the padding after them.
  bool skip(uint64_t n) {
    in_ = in_.subspan(n);
    const size_t pad = std::min<size_t>((8 - n % 8) % 8, in_.size());
    in_ = in_.subspan(pad);
    return true;
  }
  std::span<const uint8_t> in_;
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
  FileVersion file_version;
  const uint8_t *map = nullptr;  // the whole file, PROT_READ, for bytes()
  size_t size = 0;
  // A prepared file's bytes and index belong to `keep` (open_prepared); otherwise `map` is ours.
  std::shared_ptr<const void> keep;
  bool is_static = false;
  bool is_program = false;
  std::string interpreter;        // PT_INTERP's path; empty when none
  std::optional<uint64_t> entry;  // e_entry as a file offset
  std::string build_id;
  std::string symtab_path;
  std::vector<Segment> loads;

  // The index, as every lookup reads it: views of the tables open() built (own_*, below), or of
  // a prepared file's image, in place (adopt).
  std::string_view strings;                 // every NameRef's characters
  std::span<const FnRecord> fns;            // sorted by file offset, then name
  std::span<const uint32_t> by_name;        // indices of fns, sorted by name, then index
  std::span<const NameRef> data_names;      // objects and TLS: "is a data symbol"; sorted, unique
  std::span<const NameRef> sizeless_names;  // functions with st_size 0: bounds unknown; likewise
  // The values of the symbols that are not in `fns` (data objects, sizeless functions, untyped
  // labels), for symbol_vaddr(); sorted by name, unique.
  std::span<const ValueRecord> other_symbols;
  std::vector<SectionRecord> section_records;

  // The tables themselves, where this process built (or copied) them.
  std::string own_strings;
  std::vector<FnRecord> own_fns;
  std::vector<uint32_t> own_by_name;
  std::vector<NameRef> own_data_names, own_sizeless_names;
  std::vector<ValueRecord> own_other_symbols;
  std::vector<CodeRange> unwind_ranges;  // .eh_frame's FDEs, sorted by file offset
  std::vector<uint64_t> landing_pads;    // sorted, unique

  std::vector<Section> sections;  // made from section_records
  mutable std::once_flag functions_made;
  mutable std::vector<Function> functions;  // made from fns on the first functions()

  // Only while open() reads the file: the symbols that end up in the sorted tables above.
  struct SymbolValue {
    uint64_t vaddr = 0;
    int rank = 0;
  };
  struct Reading {
    std::unordered_set<std::string> data_names, sizeless_names;
    std::unordered_map<std::string, SymbolValue> other_symbols;
  };
  std::unique_ptr<Reading> reading;  // made by open_uncached, gone by the end of open()

  ~Impl() {
    if (map && !keep) ::munmap(const_cast<uint8_t *>(map), size);
  }

  std::optional<uint64_t> vaddr_to_offset(uint64_t vaddr) const {
    for (const Segment &s : loads)
      if (vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz) return s.offset + (vaddr - s.vaddr);
    return std::nullopt;
  }
  std::string_view str(NameRef r) const { return strings.substr(r.off, r.len); }
  // While building: a name into own_strings, and back.
  NameRef intern(std::string_view s) {
    NameRef r{static_cast<uint32_t>(own_strings.size()), static_cast<uint32_t>(s.size())};
    own_strings.append(s);
    return r;
  }
  std::string_view built(NameRef r) const {
    return std::string_view(own_strings).substr(r.off, r.len);
  }
  // The views, onto the tables built.
  void view_own() {
    strings = own_strings;
    fns = own_fns;
    by_name = own_by_name;
    data_names = own_data_names;
    sizeless_names = own_sizeless_names;
    other_symbols = own_other_symbols;
  }
  Function function(size_t i) const {
    const FnRecord &r = fns[i];
    return Function{std::string(str(r.name)),
                    std::string(str(r.version)),
                    r.vaddr,
                    r.file_offset,
                    r.size,
                    r.ifunc != 0,
                    r.hidden_version != 0,
                    r.exported != 0};
  }
  // The indices of fns named `name` (plain), in increasing order. In a hash table: a prepared
  // file's image carries one; a file opened here makes one at its 64th lookup, and searches by_name
  // for the lookups before. (A `libc:*` session looks up each of 3,656 names in every process it
  // starts in, where the search cost 1,200 instructions a name.)
  std::span<const uint32_t> named(std::string_view name) const {
    std::optional<size_t> at;
    if (!name_hash_prepared &&
        name_lookups.fetch_add(1, std::memory_order_relaxed) < kNameSearches) {
      const size_t i = static_cast<size_t>(
          std::lower_bound(by_name.begin(), by_name.end(), name, NameLess{this}) - by_name.begin());
      if (i < by_name.size() && str(fns[by_name[i]].name) == name) at = i;
    } else {
      if (!name_hash_prepared) std::call_once(name_hash_made, [this] { make_name_hash(); });
      at = hashed(name);
    }
    if (!at) return {};
    const size_t first = *at;
    size_t end = first + 1;
    while (end < by_name.size() && str(fns[by_name[end]].name) == name) ++end;
    return by_name.subspan(first, end - first);
  }
  static constexpr uint32_t kNameSearches = 64;
  mutable std::atomic<uint32_t> name_lookups{0};
  mutable std::once_flag name_hash_made;
  // Open addressing, at most half full: (the name's hash, 1 + the position in by_name of the
  // first fn of that name); 0 marks a free slot. Made here (name_hash_made), or part of a
  // prepared file's image: then set before the file is shared, and used from the first lookup.
  mutable std::span<const NameSlot> name_hash;
  mutable std::vector<NameSlot> own_name_hash;
  bool name_hash_prepared = false;
  static uint32_t hash_of(std::string_view s) {
    uint32_t h = 2166136261u;  // FNV-1a
    for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 16777619u;
    return h;
  }
  void make_name_hash() const {
    size_t slots = 2;
    while (slots < 2 * by_name.size()) slots *= 2;
    own_name_hash.assign(slots, {0, 0});
    for (size_t i = 0; i < by_name.size(); ++i) {
      const std::string_view n = str(fns[by_name[i]].name);
      if (i > 0 && str(fns[by_name[i - 1]].name) == n) continue;
      const uint32_t h = hash_of(n);
      size_t k = h & (slots - 1);
      while (own_name_hash[k].first_plus_one != 0) k = (k + 1) & (slots - 1);
      own_name_hash[k] = {h, static_cast<uint32_t>(i + 1)};
    }
    name_hash = own_name_hash;
  }
  std::optional<size_t> hashed(std::string_view name) const {
    const uint32_t h = hash_of(name);
    const size_t mask = name_hash.size() - 1;
    for (size_t k = h & mask; name_hash[k].first_plus_one != 0; k = (k + 1) & mask) {
      const size_t at = name_hash[k].first_plus_one - 1;
      if (name_hash[k].hash == h && str(fns[by_name[at]].name) == name) return at;
    }
    return std::nullopt;
  }
  struct NameLess {
    const Impl *im;
    bool operator()(uint32_t i, std::string_view n) const { return im->str(im->fns[i].name) < n; }
    bool operator()(std::string_view n, uint32_t i) const { return n < im->str(im->fns[i].name); }
  };
  bool listed(std::span<const NameRef> names, std::string_view name) const {
    return std::binary_search(names.begin(), names.end(), name, RefLess{this});
  }
  struct RefLess {
    const Impl *im;
    bool operator()(NameRef a, std::string_view b) const { return im->str(a) < b; }
    bool operator()(std::string_view a, NameRef b) const { return a < im->str(b); }
    bool operator()(NameRef a, NameRef b) const { return im->str(a) < im->str(b); }
  };

  void read_segments(Elf *e);
  void read_symbols(Elf *e, Elf_Scn *scn, bool dynamic, std::vector<RawFunction> &out);
  void read_separate_debug_symtab(std::vector<RawFunction> &out);
  void index(std::vector<RawFunction> raw);
  void finish_reading();
  void read_unwind_info(Elf *e);
  void read_sections(Elf *e);
  void make_sections();
  void note_symbol_value(const std::string &name, uint64_t vaddr, int rank);
  std::string suggest(std::string_view name) const;
  std::vector<uint8_t> image() const;
  bool adopt(std::span<const uint8_t> image);
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
      loads.push_back({ph.p_vaddr, ph.p_offset, ph.p_filesz, (ph.p_flags & PF_X) ? 1u : 0u, 0});
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
      reading->data_names.insert(std::move(name));
      continue;
    }
    if (type != STT_FUNC && type != STT_GNU_IFUNC) continue;
    if (sym.st_size == 0) {
      note_symbol_value(name, sym.st_value, rank);
      reading->sizeless_names.insert(std::move(name));
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
  auto [it, added] = reading->other_symbols.try_emplace(name, SymbolValue{vaddr, rank});
  if (!added && rank > it->second.rank) it->second = SymbolValue{vaddr, rank};
}

void ElfFile::Impl::read_sections(Elf *e) {
  size_t shstrndx = 0;
  if (elf_getshdrstrndx(e, &shstrndx) != 0) return;
  for (Elf_Scn *scn = elf_nextscn(e, nullptr); scn; scn = elf_nextscn(e, scn)) {
    GElf_Shdr sh;
    if (!gelf_getshdr(scn, &sh)) continue;
    const char *name = elf_strptr(e, shstrndx, sh.sh_name);
    section_records.push_back({intern(name ? name : ""), sh.sh_type, 0, sh.sh_flags, sh.sh_addr,
                               sh.sh_offset, sh.sh_size});
  }
}

void ElfFile::Impl::make_sections() {
  sections.reserve(section_records.size());
  for (const SectionRecord &r : section_records)
    sections.push_back({std::string(str(r.name)), r.type, r.flags, r.vaddr, r.file_offset, r.size});
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
  own_fns.reserve(raw.size());
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
      if (!own_fns.empty() && own_fns.back().file_offset == r.fn.file_offset &&
          built(own_fns.back().name) == r.fn.name &&
          built(own_fns.back().version) == r.fn.version) {
        FnRecord &kept = own_fns.back();  // the same symbol, seen in both tables
        kept.exported |= r.fn.exported;
        kept.ifunc |= r.fn.ifunc;
        kept.size = std::max(kept.size, r.fn.size);
        if (binding_rank(r.bind) > binding_rank(kept.bind)) kept.bind = r.bind;
        continue;
      }
      FnRecord rec;
      rec.vaddr = r.fn.vaddr;
      rec.file_offset = r.fn.file_offset;
      rec.size = r.fn.size;
      rec.name = intern(r.fn.name);
      rec.version = intern(r.fn.version);
      rec.bind = r.bind;
      rec.ifunc = r.fn.ifunc;
      rec.hidden_version = r.fn.hidden_version;
      rec.exported = r.fn.exported;
      own_fns.push_back(rec);
    }
    i = j;
  }
  uint64_t end = 0;
  own_by_name.resize(own_fns.size());
  for (size_t i = 0; i < own_fns.size(); ++i) {
    end = std::max(end, own_fns[i].file_offset + own_fns[i].size);
    own_fns[i].max_end = end;
    own_by_name[i] = static_cast<uint32_t>(i);
  }
  std::stable_sort(own_by_name.begin(), own_by_name.end(), [this](uint32_t a, uint32_t b) {
    return built(own_fns[a].name) < built(own_fns[b].name);
  });
}

// The symbols read beside the functions, into the sorted tables; then the views onto them all.
void ElfFile::Impl::finish_reading() {
  auto by_text = [this](NameRef a, NameRef b) { return built(a) < built(b); };
  auto sorted = [&](const std::unordered_set<std::string> &names) {
    std::vector<NameRef> out;
    out.reserve(names.size());
    for (const std::string &n : names) out.push_back(intern(n));
    std::sort(out.begin(), out.end(), by_text);
    return out;
  };
  own_data_names = sorted(reading->data_names);
  own_sizeless_names = sorted(reading->sizeless_names);
  own_other_symbols.reserve(reading->other_symbols.size());
  for (const auto &[name, value] : reading->other_symbols)
    own_other_symbols.push_back({intern(name), value.vaddr});
  std::sort(own_other_symbols.begin(), own_other_symbols.end(),
            [&](const ValueRecord &a, const ValueRecord &b) { return by_text(a.name, b.name); });
  reading.reset();
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
  std::string_view best;
  bool best_exported = false;
  auto key = [](std::string_view n, size_t d, bool exported) {
    return std::make_tuple(d, !exported, n.starts_with('_'), n);
  };
  size_t best_d = limit + 1;
  // Each name once: a run of by_name.
  for (size_t i = 0, j; i < by_name.size(); i = j) {
    const std::string_view candidate = str(fns[by_name[i]].name);
    bool exported = false;
    for (j = i; j < by_name.size() && str(fns[by_name[j]].name) == candidate; ++j)
      exported |= fns[by_name[j]].exported != 0;
    size_t d = bounded_edit_distance(name, candidate, std::min(limit, best_d));
    if (d > limit) continue;  // (d == 0: differs only in case; never identical, or found)
    if (best.empty() || key(candidate, d, exported) < key(best, best_d, best_exported)) {
      best = candidate;
      best_d = d;
      best_exported = exported;
    }
  }
  return std::string(best);
}

// Every part, in one order for writing and reading.
std::vector<uint8_t> ElfFile::Impl::image() const {
  ImageWriter w;
  ImageHead head;
  head.flags =
      (is_static ? kImageStatic : 0) | (is_program ? kImageProgram : 0) | (entry ? kImageEntry : 0);
  head.entry = entry.value_or(0);
  head.file_size = size;
  w.pod(head);
  w.part(interpreter);
  w.part(build_id);
  w.part(symtab_path);
  w.part(loads);
  w.part(strings);
  w.part(fns);
  w.part(by_name);
  w.part(data_names);
  w.part(sizeless_names);
  w.part(other_symbols);
  w.part(section_records);
  w.part(unwind_ranges);
  w.part(landing_pads);
  std::call_once(name_hash_made, [this] { make_name_hash(); });
  w.part(name_hash);
  return w.take();
}

// Takes what image() wrote; false when it does not read back whole, or a name or an index points
// outside its table (the caller then reads the file itself).
bool ElfFile::Impl::adopt(std::span<const uint8_t> in) {
  ImageReader r(in);
  ImageHead head;
  if (!r.pod(head) || head.magic != kImageMagic || head.file_size != size) return false;
  if (!(r.part(interpreter) && r.part(build_id) && r.part(symtab_path) && r.part(loads) &&
        r.view(strings) && r.view(fns, own_fns) && r.view(by_name, own_by_name) &&
        r.view(data_names, own_data_names) && r.view(sizeless_names, own_sizeless_names) &&
        r.view(other_symbols, own_other_symbols) && r.part(section_records) &&
        r.part(unwind_ranges) && r.part(landing_pads) && r.view(name_hash, own_name_hash) &&
        r.done()))
    return false;
  auto fits = [this](NameRef n) { return uint64_t{n.off} + n.len <= strings.size(); };
  if (by_name.size() != fns.size()) return false;
  for (const FnRecord &f : fns)
    if (!fits(f.name) || !fits(f.version)) return false;
  for (uint32_t i : by_name)
    if (i >= fns.size()) return false;
  for (const auto *names : {&data_names, &sizeless_names})
    for (NameRef n : *names)
      if (!fits(n)) return false;
  for (const ValueRecord &v : other_symbols)
    if (!fits(v.name)) return false;
  for (const SectionRecord &sr : section_records)
    if (!fits(sr.name)) return false;
  // A table at most half full, each slot a position in by_name (a wrong hash only misses).
  if (name_hash.size() < 2 || (name_hash.size() & (name_hash.size() - 1)) != 0 ||
      name_hash.size() < 2 * by_name.size())
    return false;
  size_t used = 0;
  for (const NameSlot &slot : name_hash) {
    if (slot.first_plus_one > by_name.size()) return false;
    used += slot.first_plus_one != 0;
  }
  if (used > by_name.size()) return false;  // a free slot ends every search
  name_hash_prepared = true;
  is_static = head.flags & kImageStatic;
  is_program = head.flags & kImageProgram;
  if (head.flags & kImageEntry) entry = head.entry;
  make_sections();
  return true;
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
  static std::mutex cache_mutex;
  static std::map<FileVersion, std::shared_ptr<const ElfFile>> cache;
  const FileVersion key = FileVersion::of(st);
  {
    std::lock_guard lock(cache_mutex);
    if (auto it = cache.find(key); it != cache.end() && it->second->path() == path)
      return it->second;
  }
  Result<std::shared_ptr<const ElfFile>> opened = open_prepared(path, st);
  if (!*opened) opened = open_uncached(path, fd.get(), st);
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
  im.file_version = FileVersion::of(st);
  im.size = static_cast<size_t>(st.st_size);
  im.reading = std::make_unique<Impl::Reading>();
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
  im.finish_reading();
  im.read_unwind_info(e.get());
  im.read_sections(e.get());
  im.view_own();
  im.make_sections();
  return std::shared_ptr<const ElfFile>(std::move(file));
}

namespace {

struct Prepared {
  std::span<const uint8_t> bytes, image;
  std::shared_ptr<const void> keep;
};
std::mutex g_prepared_mutex;                             // guards g_prepared
auto *g_prepared = new std::map<FileVersion, Prepared>;  // never destroyed (agents' exit)

}  // namespace

FileVersion FileVersion::of(const struct stat &st) {
  return {st.st_dev, st.st_ino, static_cast<uint64_t>(st.st_size), st.st_mtim.tv_sec,
          st.st_mtim.tv_nsec};
}

std::vector<uint8_t> ElfFile::index_image() const {
  return impl_->image();
}

void ElfFile::provide_prepared(const FileVersion &version, std::span<const uint8_t> bytes,
                               std::span<const uint8_t> image, std::shared_ptr<const void> keep) {
  if (bytes.size() != version.size) return;
  std::lock_guard lock(g_prepared_mutex);
  (*g_prepared)[version] = Prepared{bytes, image, std::move(keep)};
}

// The file of `st` as another process prepared it, if one did; null otherwise (or when its image
// does not read back: it is dropped, and open() reads the file).
std::shared_ptr<const ElfFile> ElfFile::open_prepared(const std::string &path,
                                                      const struct stat &st) {
  const FileVersion version = FileVersion::of(st);
  Prepared p;
  {
    std::lock_guard lock(g_prepared_mutex);
    if (g_prepared->empty()) return nullptr;
    auto it = g_prepared->find(version);
    if (it == g_prepared->end()) return nullptr;
    p = it->second;
  }
  std::shared_ptr<ElfFile> file(new ElfFile());
  Impl &im = *file->impl_;
  im.path = path;
  im.file_version = version;
  im.size = p.bytes.size();
  im.map = p.bytes.data();
  im.keep = p.keep;
  if (std::memcmp(im.map, ELFMAG, SELFMAG) != 0 || !im.adopt(p.image)) {
    std::lock_guard lock(g_prepared_mutex);
    g_prepared->erase(version);
    return nullptr;
  }
  return file;
}

const std::string &ElfFile::path() const {
  return impl_->path;
}
FileId ElfFile::id() const {
  return FileId{static_cast<dev_t>(impl_->file_version.dev),
                static_cast<ino_t>(impl_->file_version.ino)};
}
FileVersion ElfFile::version() const {
  return impl_->file_version;
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
  const Impl &im = *impl_;
  std::call_once(im.functions_made, [&im] {
    im.functions.reserve(im.fns.size());
    for (size_t i = 0; i < im.fns.size(); ++i) im.functions.push_back(im.function(i));
  });
  return im.functions;
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
  if (std::span<const uint32_t> same = im.named(plain); !same.empty()) {
    // For a plain name: the default version (what a program linking today gets), then exported
    // over local, then the stronger binding; the lowest offset settles the rest.
    auto rank = [&](uint32_t i) {
      const FnRecord &f = im.fns[i];
      return std::make_tuple(!f.hidden_version, f.exported != 0, binding_rank(f.bind));
    };
    std::optional<uint32_t> best;
    for (uint32_t i : same) {
      const FnRecord &f = im.fns[i];
      const std::string_view v = im.str(f.version);
      if (versioned && (v != version || (want_default && f.hidden_version))) continue;
      if (!best || rank(i) > rank(*best)) best = i;
    }
    if (best) return im.function(*best);
    std::string known;
    for (uint32_t i : same) {
      const std::string_view v = im.str(im.fns[i].version);
      known += (known.empty() ? "" : ", ") + (v.empty() ? std::string("(none)") : std::string(v));
    }
    return fail(ENOENT, im.path + ": no function `" + std::string(query) + "` (`" +
                            std::string(plain) + "` has versions " + known + ")");
  }
  if (im.listed(im.data_names, plain))
    return fail(EINVAL,
                im.path + ": `" + std::string(query) + "` is a data symbol, not a function");
  if (im.listed(im.sizeless_names, plain))
    return fail(EINVAL, im.path + ": `" + std::string(query) +
                            "` has no size in the symbol table, so its bounds are unknown; "
                            "probe it by file offset");
  std::string message = im.path + ": no function `" + std::string(query) + "`";
  if (std::string near = im.suggest(plain); !near.empty())
    message += " (did you mean `" + near + "`?)";
  return fail(ENOENT, std::move(message));
}

std::optional<Function> ElfFile::function_containing(uint64_t file_offset) const {
  const Impl &im = *impl_;
  // Innermost first (the latest start), then the aliases' best name: global binding, default
  // version, shortest, alphabetical.
  auto key = [&](size_t i) {
    const FnRecord &f = im.fns[i];
    return std::make_tuple(f.file_offset, binding_rank(f.bind), !f.hidden_version,
                           -static_cast<int64_t>(f.name.len));
  };
  auto better = [&](size_t a, size_t b) {
    if (key(a) != key(b)) return key(a) > key(b);
    return im.str(im.fns[a].name) < im.str(im.fns[b].name);
  };
  auto it = std::upper_bound(im.fns.begin(), im.fns.end(), file_offset,
                             [](uint64_t off, const FnRecord &f) { return off < f.file_offset; });
  std::optional<size_t> best;
  // Walk back from the last function starting at or before the offset; max_end says when no
  // earlier function can reach it any more.
  for (size_t i = static_cast<size_t>(it - im.fns.begin()); i-- > 0;) {
    if (im.fns[i].max_end <= file_offset) break;
    const FnRecord &f = im.fns[i];
    if (file_offset - f.file_offset < f.size && (!best || better(i, *best))) best = i;
  }
  if (!best) return std::nullopt;
  return im.function(*best);
}

std::optional<uint64_t> ElfFile::next_function_start(uint64_t file_offset) const {
  const auto &fns = impl_->fns;
  auto it = std::lower_bound(fns.begin(), fns.end(), file_offset,
                             [](const FnRecord &f, uint64_t o) { return f.file_offset < o; });
  if (it == fns.end()) return std::nullopt;
  return it->file_offset;
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
  auto it = std::lower_bound(
      im.other_symbols.begin(), im.other_symbols.end(), name,
      [&im](const ValueRecord &v, std::string_view n) { return im.str(v.name) < n; });
  if (it != im.other_symbols.end() && im.str(it->name) == name) return it->vaddr;
  if (std::span<const uint32_t> same = im.named(name); !same.empty()) {
    // A function: the default version's address, as find_function() picks it.
    if (auto f = find_function(name)) return f->vaddr;
    return im.fns[same.front()].vaddr;
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
