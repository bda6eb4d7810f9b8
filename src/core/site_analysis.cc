#include "core/site_analysis.h"

#include <elf.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

#include <fmt/format.h>

#include "core/code_space.h"
#include "core/os.h"
#include "core/probe.h"
#include "elf/usdt.h"

namespace usprobe {

namespace {

// What decoding a whole file gives (file_branch_targets): its branch targets, and the code ranges
// that decoded completely.
struct FileCode {
  std::vector<uint64_t> targets;
  std::vector<std::pair<uint64_t, uint64_t>> complete;
};
struct Provided {
  std::string build_id;
  FileCode code;
};
std::mutex g_targets_mutex;  // guards the two maps below
// Never destroyed: a probe's site requests point into them for the life of the process.
auto *g_files = new std::map<elf::FileId, std::unique_ptr<FileCode>>;
auto *g_provided = new std::map<elf::FileId, Provided>;

const FileCode &file_code(const elf::ElfFile &file) {
  std::lock_guard lock(g_targets_mutex);
  auto &slot = (*g_files)[file.id()];
  if (slot) return *slot;
  if (auto it = g_provided->find(file.id());
      it != g_provided->end() && it->second.build_id == file.build_id()) {
    slot = std::make_unique<FileCode>(std::move(it->second.code));
    g_provided->erase(it);
    return *slot;
  }
  slot = std::make_unique<FileCode>();
  auto decode = [&](uint64_t offset, uint64_t size) {
    auto code = file.bytes(offset, size);
    if (!code.empty() && arch::branch_targets(code, offset, slot->targets))
      slot->complete.emplace_back(offset, size);
  };
  uint64_t last_offset = ~0ull;
  for (const elf::Function &f : file.functions()) {
    if (f.file_offset == last_offset) continue;  // aliases
    last_offset = f.file_offset;
    decode(f.file_offset, f.size);
  }
  // Code that no symbol names (a stripped file's static functions and cold parts) is known by
  // its FDE: its branches land in named code too, and its own sites get bounds from the FDE.
  for (const elf::ElfFile::CodeRange &r : file.unwind_ranges())
    if (!file.function_containing(r.file_offset)) decode(r.file_offset, r.size);
  auto &t = slot->targets;
  t.insert(t.end(), file.landing_pads().begin(), file.landing_pads().end());
  std::sort(t.begin(), t.end());
  t.erase(std::unique(t.begin(), t.end()), t.end());
  std::sort(slot->complete.begin(), slot->complete.end());
  return *slot;
}

}  // namespace

void provide_file_branch_targets(const elf::FileId &id, std::string build_id,
                                 std::vector<uint64_t> targets,
                                 std::vector<std::pair<uint64_t, uint64_t>> complete) {
  if (build_id.empty()) return;
  std::lock_guard lock(g_targets_mutex);
  (*g_provided)[id] =
      Provided{std::move(build_id), FileCode{std::move(targets), std::move(complete)}};
}

const std::vector<uint64_t> *file_branch_targets(const elf::ElfFile &file) {
  return &file_code(file).targets;
}

const std::vector<std::pair<uint64_t, uint64_t>> *file_complete_ranges(const elf::ElfFile &file) {
  return &file_code(file).complete;
}

std::span<const uint8_t> bytes_after(const elf::ElfFile &file, uint64_t end) {
  uint64_t n = 16;
  if (auto next = file.next_function_start(end)) n = std::min<uint64_t>(n, *next - end);
  while (n > 0 && !file.offset_is_executable(end + n - 1)) --n;
  return file.bytes(end, n);
}

Result<arch::SiteRequest> site_request(const elf::ResolvedLocation &loc, uint64_t addr) {
  arch::SiteRequest req;
  req.site = addr;
  req.bounds_known = loc.func_size > 0;
  if (req.bounds_known) {
    req.function = loc.file->bytes(loc.func_offset, loc.func_size);
    req.function_addr = addr - loc.offset_in_function();
  } else {
    req.function = loc.file->bytes(loc.file_offset, 32);
    req.function_addr = addr;
  }
  if (req.function.empty())
    return fail(EINVAL, fmt::format("{}: offset is past the end of the file", loc.describe()));
  const FileCode &code = file_code(*loc.file);
  req.file_branch_targets = &code.targets;
  req.complete_ranges = &code.complete;
  req.site_file_offset = loc.file_offset;
  req.function_file_offset = loc.func_offset;
  if (req.bounds_known) req.after = bytes_after(*loc.file, loc.func_offset + loc.func_size);
  return req;
}

Result<CodeImage> CodeImage::map(std::shared_ptr<const elf::ElfFile> file) {
  CodeImage image;
  image.file_ = std::move(file);
  const elf::ElfFile &f = *image.file_;
  if (auto maps = os::read_mappings())
    for (const os::Mapping &m : *maps)
      if (m.exec && !m.deleted && m.dev == f.id().dev && m.ino == f.id().ino)
        image.pieces_.emplace_back(m.offset, m.end - m.start, m.start);
  if (!image.pieces_.empty()) return image;

  // Not mapped here: reserve its PT_LOAD span as a process would map it.
  Elf64_Ehdr eh;
  auto ehb = f.bytes(0, sizeof eh);
  if (ehb.size() < sizeof eh) return fail(EINVAL, f.path() + ": no ELF header");
  std::memcpy(&eh, ehb.data(), sizeof eh);
  std::vector<Elf64_Phdr> loads;
  for (unsigned i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    auto b = f.bytes(eh.e_phoff + uint64_t{i} * sizeof ph, sizeof ph);
    if (b.size() < sizeof ph) return fail(EINVAL, f.path() + ": program headers cut short");
    std::memcpy(&ph, b.data(), sizeof ph);
    if (ph.p_type == PT_LOAD) loads.push_back(ph);
  }
  if (loads.empty()) return fail(EINVAL, f.path() + ": no PT_LOAD segment");
  std::sort(loads.begin(), loads.end(),
            [](const Elf64_Phdr &a, const Elf64_Phdr &b) { return a.p_vaddr < b.p_vaddr; });
  const uint64_t lo = loads.front().p_vaddr & ~0xfffull;
  const uint64_t hi = (loads.back().p_vaddr + loads.back().p_memsz + 0xfff) & ~0xfffull;
  auto p = os::reserve_addresses(eh.e_type == ET_EXEC ? lo : 0, hi - lo);
  if (!p)
    return fail(ENOMEM, fmt::format("{}: cannot reserve its addresses {:#x}..{:#x} in this process",
                                    f.path(), lo, hi));
  image.reserved_ = *p;
  image.reserved_size_ = hi - lo;
  const uint64_t bias = image.reserved_ - lo;
  for (const Elf64_Phdr &ph : loads)
    if (ph.p_flags & PF_X) image.pieces_.emplace_back(ph.p_offset, ph.p_filesz, ph.p_vaddr + bias);
  return image;
}

CodeImage::CodeImage(CodeImage &&other) noexcept
    : file_(std::move(other.file_)),
      pieces_(std::move(other.pieces_)),
      reserved_(std::exchange(other.reserved_, 0)),
      reserved_size_(std::exchange(other.reserved_size_, 0)) {}

CodeImage::~CodeImage() {
  if (reserved_) os::release_addresses(reserved_, reserved_size_);
}

std::optional<uint64_t> CodeImage::runtime(uint64_t off) const {
  for (auto [o, n, a] : pieces_)
    if (off >= o && off < o + n) return a + (off - o);
  return std::nullopt;
}

SiteVerdict analyse_site(const CodeImage &image, const elf::ResolvedLocation &loc) {
  static Probe probe;  // the trampolines name it; nothing runs them
  SiteVerdict v;
  v.file_offset = loc.file_offset;
  v.patch_offset = loc.file_offset;
  auto addr = image.runtime(loc.file_offset);
  if (!addr) {
    v.path = "cannot be probed";
    v.reason = fmt::format("offset {:#x} is not in an executable segment", loc.file_offset);
    return v;
  }
  auto req = site_request(loc, *addr);
  if (!req) {
    v.path = "cannot be probed";
    v.reason = req.error().message;
    return v;
  }
  req->probe = &probe;
  req->describe = loc.describe();
  auto plan = arch::prepare_site(*req, code_space());
  if (!plan) {
    v.path = "cannot be probed";
    v.reason = plan.error().message;
    return v;
  }
  v.path = plan->path;
  v.jump = plan->jump;
  v.reason = plan->int3_reason;
  v.written = static_cast<uint32_t>(plan->patch.size());
  v.footprint = plan->jump ? std::max<uint32_t>({plan->footprint, plan->window_length, v.written})
                           : v.written;
  arch::release_trampoline(*plan, code_space());
  return v;
}

Result<std::vector<UsdtSiteVerdict>> analyse_usdt_sites(std::string_view file) {
  auto path = elf::resolve_file(file);
  if (!path) return std::unexpected(path.error());
  auto opened = elf::ElfFile::open(*path);
  if (!opened) return std::unexpected(opened.error());
  auto image = CodeImage::map(std::move(*opened));
  if (!image) return std::unexpected(image.error());
  return analyse_usdt_sites(*image);
}

Result<std::vector<UsdtSiteVerdict>> analyse_usdt_sites(const CodeImage &image) {
  const elf::ElfFile &file = image.file();
  auto notes = elf::read_usdt_probes(file);
  if (!notes) return std::unexpected(notes.error());
  std::vector<UsdtSiteVerdict> out;
  // Each site's bounds as a location at its offset gets them (the enclosing function, else its
  // FDE), which is how a USDT probe's sites are resolved.
  std::vector<std::string> specs;
  for (const elf::UsdtProbe &n : *notes)
    specs.push_back(fmt::format("{}:{:#x}", file.path(), n.file_offset));
  auto locs = elf::resolve_locations(specs);
  for (size_t i = 0; i < notes->size(); ++i) {
    UsdtSiteVerdict s;
    s.provider = (*notes)[i].provider;
    s.name = (*notes)[i].name;
    if (!locs[i]) {
      s.verdict.file_offset = (*notes)[i].file_offset;
      s.verdict.patch_offset = s.verdict.file_offset;
      s.verdict.path = "cannot be probed";
      s.verdict.reason = locs[i].error().message;
    } else {
      s.verdict = analyse_site(image, *locs[i]);
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace usprobe
