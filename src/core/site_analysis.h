// What the engine would do at a file's sites, asked without a probed process: the request the
// registry builds for a site (the enclosing function's bytes, the file's branch targets, the bytes
// after the function), and the path arch::prepare_site chooses with it (jump, jump (one
// instruction), jump (punned), jump (window before the site), or int3 and why).
//
// The registry makes its requests here (site_request), so a report made with analyse_site says
// what an attach would do, with these limits:
//   - Run-time memory decides two things: a trampoline must lie within +-2 GB of the site, and a
//     punned jump's stub needs free memory in the small range its borrowed bytes fix (often a
//     single address). The analysis lays the file out in this process (where it is mapped already,
//     or in address space reserved like the kernel or the dynamic linker would map it), so
//     both are judged against this process's address space, not the target's: a punned site may
//     take the int3 path in a process whose memory is laid out otherwise, and the other way round.
//   - Other probes are not known: a site whose window or borrowed bytes another probe's patch
//     overlaps takes the int3 path at attach ("another probe's site lies within the window").
//   - Bytes are the file's; code that differs in memory (a debugger's breakpoint) is refused at
//     attach, never analysed here.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "base/error.h"
#include "core/arch.h"
#include "elf/elf_file.h"
#include "elf/location.h"

namespace usprobe {

// Direct branch targets of every function of a file (from its symbols and its FDEs) and its
// landing pads (where the unwinder resumes a frame: a branch target that no instruction names), in
// file offsets, sorted; computed once per file (about 40 ms for libc) and kept for the life of the
// process. Thread-safe.
const std::vector<uint64_t> *file_branch_targets(const elf::ElfFile &file);
// The code ranges (file offset, size) that file_branch_targets decoded completely, sorted: the
// functions (the first alias at an offset) and the FDEs of unnamed code (arch.h,
// SiteRequest::complete_ranges).
const std::vector<std::pair<uint64_t, uint64_t>> *file_complete_ranges(const elf::ElfFile &file);
// The branch targets and complete ranges of a file as another process computed them (the CLI,
// once for every process of a command: protocol/targets.h): the two functions above take them
// for a file of this identity and build id (not empty) instead of decoding it, if they have not
// decoded it already.
void provide_file_branch_targets(const elf::FileId &id, std::string build_id,
                                 std::vector<uint64_t> targets,
                                 std::vector<std::pair<uint64_t, uint64_t>> complete);

// The file's code bytes from `end` (a function's end) up to the next function's start, at most 16
// (the longest padding instruction, 15 bytes, fits): what a jump at the function's last
// instructions may borrow or cover (arch.h, SiteRequest::after). Never another function's bytes: a
// probe there would change them.
std::span<const uint8_t> bytes_after(const elf::ElfFile &file, uint64_t end);

// The registry's request for the site of `loc` mapped at `addr`: bounds from the enclosing
// function (or the FDE), else the 32 bytes from the site; branch targets; bytes after. The caller
// fills in probe, describe and the force_* fields. Error: the offset is past the end of the file.
Result<arch::SiteRequest> site_request(const elf::ResolvedLocation &loc, uint64_t addr);

// A file's executable segments at run-time addresses in this process: where the file is mapped
// already, else in address space reserved (PROT_NONE, nothing runs there) where a process would
// map it (a non-PIE executable at its link-time addresses, anything else where the kernel
// places it), so that trampolines and stubs are placed as they would be. Never runs the file's
// code (no dlopen). The reservation is released with the object.
class CodeImage {
 public:
  static Result<CodeImage> map(std::shared_ptr<const elf::ElfFile> file);
  CodeImage(CodeImage &&other) noexcept;
  CodeImage &operator=(CodeImage &&) = delete;
  ~CodeImage();

  const elf::ElfFile &file() const { return *file_; }
  const std::shared_ptr<const elf::ElfFile> &file_ptr() const { return file_; }
  // The run-time address of a file offset in an executable segment; nullopt elsewhere.
  std::optional<uint64_t> runtime(uint64_t file_offset) const;

 private:
  CodeImage() = default;
  std::shared_ptr<const elf::ElfFile> file_;
  std::vector<std::tuple<uint64_t, uint64_t, uint64_t>> pieces_;  // (file offset, size, address)
  uint64_t reserved_ = 0, reserved_size_ = 0;
};

struct SiteVerdict {
  uint64_t file_offset = 0;
  // arch::SitePlan::path ("jump", "jump (one instruction)", "jump (punned)", "jump (window before
  // the site)", "int3"), or "cannot be probed" when no probe can be placed there at all.
  std::string path;
  bool jump = false;
  std::string reason;  // why int3 or why not at all; empty on a jump path
  // Where the patch starts (a file offset; the site for every path so far).
  uint64_t patch_offset = 0;
  uint32_t written = 0;    // bytes the patch writes
  uint32_t footprint = 0;  // bytes from patch_offset on that it writes or relies on (borrows)
};

// The path the engine would choose for `loc` (its bounds as resolve_location gives them), placed
// with `image`. Makes the site's trampoline and gives it back at once; nothing is patched. Not for
// use while the registry attaches in this process (it takes code memory the same way).
SiteVerdict analyse_site(const CodeImage &image, const elf::ResolvedLocation &loc);

// Every USDT site of a file (elf/usdt.h), in note order, with its verdict.
struct UsdtSiteVerdict {
  std::string provider, name;
  SiteVerdict verdict;
};
// `file`: a path, or a short library name mapped in this process (as locations take them).
// Errors: the file cannot be opened or its notes read, its addresses cannot be reserved here; a
// file without USDT notes gives an empty list.
Result<std::vector<UsdtSiteVerdict>> analyse_usdt_sites(std::string_view file);
// The same for a file already laid out.
Result<std::vector<UsdtSiteVerdict>> analyse_usdt_sites(const CodeImage &image);

}  // namespace usprobe
