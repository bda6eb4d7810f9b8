#include "resolve/site_check.h"

#include <fmt/format.h>

#include <cerrno>

#include "arch/x86_64/relocator.h"

namespace usprobe::cli {

Result<void> check_site(const elf::ResolvedLocation &loc, std::string_view name) {
  const bool bounds_known = loc.func_size > 0;
  const uint64_t off = bounds_known ? loc.offset_in_function() : 0;
  // As the engine reads them (core/registry.cc): the whole function, or 32 bytes from the site.
  std::span<const uint8_t> code = bounds_known ? loc.file->bytes(loc.func_offset, loc.func_size)
                                               : loc.file->bytes(loc.file_offset, 32);
  if (code.empty() || off >= code.size())
    return fail(EINVAL, fmt::format("{}: offset is past the end of the file", name));
  if (bounds_known) {
    // The engine's rule: an offset that is no instruction start of a function that decodes (or
    // decodes past the offset) is refused.
    x86::FunctionScan scan = x86::scan_function(code, loc.func_offset);
    bool decoded_past = !scan.boundaries.empty() && scan.boundaries.back() >= off;
    if (!scan.is_boundary(static_cast<uint32_t>(off)) && (scan.complete || decoded_past)) {
      // In the user's terms: an offset into the named function, or a file offset.
      if (loc.symbol.empty())
        return fail(EINVAL, fmt::format("{}: offset {:#x} is inside an instruction", name,
                                        loc.file_offset));
      return fail(EINVAL, fmt::format("{}: offset {:#x} of {} is inside an instruction", name, off,
                                      loc.symbol));
    }
  }
  // Every site can take the int3 path if its one instruction can be moved into a trampoline.
  // Moved to its own address, so that only what no address can fix is refused here.
  auto moved = x86::relocate(code.subspan(off), loc.file_offset, 1, loc.file_offset);
  if (!moved && moved.error().code != ERANGE)
    return fail(moved.error().code,
                fmt::format("{}: cannot be probed: {}", name, moved.error().message));
  return {};
}

}  // namespace usprobe::cli
