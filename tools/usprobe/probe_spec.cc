#include "probe_spec.h"

#include <fmt/format.h>
#include <fnmatch.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <optional>
#include <set>

#include "arch/x86_64/relocator.h"
#include "elf/location.h"
#include "library_finder.h"

namespace usprobe::cli {
namespace {

std::unexpected<Error> bad_probe(std::string_view text) {
  return fail(EINVAL, fmt::format("bad probe '{}': expected FILE:SYMBOL, FILE:SYMBOL+OFF or "
                                  "FILE:0xOFF",
                                  text));
}

bool is_glob(std::string_view s) {
  return s.find_first_of("*?[") != std::string_view::npos;
}

// Which of two aliases at one offset a user would rather read: "malloc" over "__libc_malloc".
bool better_alias(const std::string &a, const std::string &b) {
  bool a_plain = !a.starts_with('_'), b_plain = !b.starts_with('_');
  if (a_plain != b_plain) return a_plain;
  if (a.size() != b.size()) return a.size() < b.size();
  return a < b;
}

}  // namespace

std::string callable_name(const elf::Function &f) {
  return f.hidden_version ? f.name + "@" + f.version : f.name;
}

Result<ProbeSpec> parse_probe(std::string_view text) {
  ProbeSpec spec;
  spec.text = std::string(text);
  std::string_view s = text;
  // bpftrace's spelling; kept when nothing but SYMBOL would follow, so that a library really
  // called "uprobe" can still be named.
  if (s.starts_with("uprobe:") && s.substr(7).find(':') != std::string_view::npos) {
    s.remove_prefix(7);
  } else if (s.starts_with("uretprobe:") && s.substr(10).find(':') != std::string_view::npos) {
    s.remove_prefix(10);
    spec.returns = true;
  }
  size_t colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == s.size())
    return bad_probe(text);
  spec.file = std::string(s.substr(0, colon));
  std::string_view target = s.substr(colon + 1);
  spec.target = std::string(target);
  if (target.find_first_of(" \t\n\r\f\v") != std::string_view::npos) return bad_probe(text);

  if (target.starts_with("0x") || target.starts_with("0X")) {
    auto off = elf::parse_offset(target);
    if (!off) return bad_probe(text);
    spec.kind = ProbeSpec::Kind::kOffset;
    spec.offset = *off;
  } else if (size_t plus = target.rfind('+'); plus != std::string_view::npos) {  // as src/elf
    auto off = elf::parse_offset(target.substr(plus + 1));
    std::string_view symbol = target.substr(0, plus);
    // A glob with an offset would put a probe at an arbitrary byte of every match.
    if (!off || symbol.empty() || is_glob(symbol)) return bad_probe(text);
    spec.kind = ProbeSpec::Kind::kSymbolOffset;
    spec.symbol = std::string(symbol);
    spec.offset = *off;
  } else {
    spec.kind = is_glob(target) ? ProbeSpec::Kind::kGlob : ProbeSpec::Kind::kSymbol;
    spec.symbol = std::string(target);
  }
  if (spec.returns && spec.kind != ProbeSpec::Kind::kSymbol && spec.kind != ProbeSpec::Kind::kGlob)
    return fail(
        EINVAL,
        fmt::format("bad probe '{}': a return probe takes a function, not an offset", text));
  return spec;
}

std::vector<GlobMatch> expand_glob(const std::vector<elf::Function> &functions,
                                   std::string_view pattern) {
  std::string pat(pattern);
  std::map<std::string, std::set<uint64_t>> offsets_of_name;
  for (const elf::Function &f : functions) offsets_of_name[callable_name(f)].insert(f.file_offset);

  std::map<uint64_t, std::string> best;  // offset -> chosen name
  for (const elf::Function &f : functions) {
    if (::fnmatch(pat.c_str(), f.name.c_str(), 0) != 0) continue;
    std::string name = callable_name(f);
    auto [it, inserted] = best.try_emplace(f.file_offset, name);
    if (!inserted && better_alias(name, it->second)) it->second = name;
  }
  std::vector<GlobMatch> out;
  out.reserve(best.size());
  for (auto &[offset, name] : best) out.push_back({name, offset, offsets_of_name[name].size() > 1});
  return out;
}

namespace {

bool g_unsafe_offsets = false;

// Checks a non-glob location the way the engine will resolve it in the command; the resolved
// location when this process could resolve it (an IFUNC of a library the CLI does not load is
// left to the command).
Result<std::optional<elf::ResolvedLocation>> check_location(const std::string &location,
                                                            const std::string &path,
                                                            const ProbeSpec &spec) {
  auto resolved = elf::resolve_location(location);
  if (resolved) return std::optional(std::move(*resolved));
  if (spec.kind == ProbeSpec::Kind::kSymbol || spec.kind == ProbeSpec::Kind::kSymbolOffset) {
    // The engine resolves an IFUNC (strlen, memcpy) by asking the dynamic linker of the process
    // that has the library loaded, which fails here for a library usprobe itself does not load.
    // The command will resolve it; here it is enough that the symbol exists.
    auto file = elf::ElfFile::open(path);
    if (file) {
      auto fn = (*file)->find_function(spec.symbol);
      if (fn && fn->ifunc) return std::optional<elf::ResolvedLocation>();
    }
  }
  return std::unexpected(resolved.error());
}

// A raw offset must start an instruction: a probe in the middle of one would relocate its tail as
// another instruction. The enclosing function (its symbol, or in a stripped file its FDE) is
// decoded from its start; where nothing gives the bounds, only --unsafe lets the offset through.
// (SYMBOL+OFF always has bounds, and the engine checks it.)
Result<void> check_instruction_start(const elf::ResolvedLocation &loc, const ProbeSpec &spec) {
  if (spec.kind != ProbeSpec::Kind::kOffset) return {};
  const std::string name = spec.file + ":" + spec.target;
  if (loc.func_size == 0) {
    if (g_unsafe_offsets || loc.file->unwind_range_containing(loc.file_offset)) return {};
    return fail(EINVAL, fmt::format("{}: no symbol or unwind information (.eh_frame) gives the "
                                    "bounds of the code at offset {:#x}, so usprobe cannot check "
                                    "that an instruction starts there; --unsafe probes it anyway",
                                    name, loc.file_offset));
  }
  auto scan = x86::scan_function(loc.file->bytes(loc.func_offset, loc.func_size), loc.func_offset);
  const uint64_t off = loc.offset_in_function();
  bool decoded_past = !scan.boundaries.empty() && scan.boundaries.back() >= off;
  if (!scan.is_boundary(static_cast<uint32_t>(off)) && (scan.complete || decoded_past))
    return fail(EINVAL,
                fmt::format("{}: offset {:#x} is inside an instruction", name, loc.file_offset));
  return {};
}

}  // namespace

void set_unsafe_offsets(bool unsafe) {
  g_unsafe_offsets = unsafe;
}

Error entered_not_called(const Probe &probe) {
  std::string name = probe.display;
  if (name.starts_with("uretprobe:")) name.erase(0, 10);
  return Error{EINVAL, fmt::format("{} is the program's entry point: it is entered, not called, so "
                                   "it has no return to probe",
                                   name)};
}

Result<std::vector<Probe>> resolve_probes(const std::vector<ProbeSpec> &specs,
                                          LibraryFinder &finder) {
  std::vector<Probe> out;
  for (size_t i = 0; i < specs.size(); ++i) {
    const ProbeSpec &spec = specs[i];
    // Return probes keep bpftrace's prefix in reports and pass it to the engine in the plan.
    const std::string prefix = spec.returns ? "uretprobe:" : "";
    auto path = finder.find(spec.file);
    if (!path) return std::unexpected(path.error());
    if (spec.kind != ProbeSpec::Kind::kGlob) {
      std::string location = *path + ":" + spec.target;
      auto loc = check_location(location, *path, spec);
      if (!loc) return std::unexpected(loc.error());
      Probe probe{prefix + spec.file + ":" + spec.target, prefix + location, i};
      if (*loc) {
        if (auto ok = check_instruction_start(**loc, spec); !ok) return std::unexpected(ok.error());
        probe.entry_point = (*loc)->file->entry_offset() == (*loc)->file_offset;
      }
      if (probe.entry_point && spec.returns) return std::unexpected(entered_not_called(probe));
      out.push_back(std::move(probe));
      continue;
    }
    auto file = elf::ElfFile::open(*path);
    if (!file) return std::unexpected(file.error());
    if ((*file)->is_static_executable())
      return fail(ENOEXEC, *path + ": statically linked: usprobe's agent cannot be loaded there");
    auto matches = expand_glob((*file)->functions(), spec.symbol);
    // The entry point (_start) is entered, not called: a glob leaves it out, as it would be
    // refused for latency and for return probes, and is of no interest counted (once).
    std::erase_if(matches, [&](const GlobMatch &m) { return (*file)->entry_offset() == m.offset; });
    if (matches.empty())
      return fail(ENOENT, fmt::format("no function in {} matches '{}'", *path, spec.symbol));
    for (const GlobMatch &m : matches) {
      std::string target = m.by_offset ? fmt::format("{:#x}", m.offset) : m.name;
      out.push_back({prefix + spec.file + ":" + m.name, prefix + *path + ":" + target, i});
    }
  }
  return out;
}

}  // namespace usprobe::cli
