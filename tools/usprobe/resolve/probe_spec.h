// Probe arguments as users write them ("libc:malloc", "uprobe:/usr/bin/app:parse+0x12",
// "libc:str*") and their resolution into the plan the agent runs: absolute file paths, globs
// expanded, every symbol and offset checked before the command starts.
#pragma once

#include <regex.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "elf/elf_file.h"
#include "elf/usdt.h"

namespace usprobe::cli {

class LibraryFinder;

// One probe argument, parsed but not resolved.
struct ProbeSpec {
  enum class Kind {
    kSymbol,        // FILE:SYMBOL
    kGlob,          // FILE:PATTERN (fnmatch over the file's functions; with -r, a regex)
    kSymbolOffset,  // FILE:SYMBOL+OFF
    kOffset,        // FILE:0xOFF (a file offset)
    // usdt:FILE:PROVIDER:NAME, or usdt:FILE:NAME (bpftrace's spelling): a USDT probe of FILE's
    // .note.stapsdt notes, every site (note) of it; globs in PROVIDER and NAME.
    kUsdt,
  };
  std::string text;    // as given, with any "uprobe:" prefix
  std::string file;    // FILE as written: a path, "exe" or a short library name
  std::string target;  // what follows the last ':', as written
  Kind kind = Kind::kSymbol;
  std::string symbol;    // kSymbol, kGlob (the pattern), kSymbolOffset
  uint64_t offset = 0;   // kSymbolOffset: bytes into the function; kOffset: file offset
  bool returns = false;  // "uretprobe:" (bpftrace's spelling): the function's returns
  bool regex = false;    // kGlob: the pattern is a regular expression (-r), not a glob
  // kUsdt: PROVIDER as written (a name or a glob; "" in usdt:FILE:NAME, which takes any provider
  // whose probe NAME is, and wants it unique when NAME is no glob); NAME is in `symbol`.
  std::string provider{};
  // kUsdt in trace: bit n when the format prints argn. Resolution refuses a probe with a site
  // whose note has fewer arguments.
  uint32_t usdt_args_used = 0;
};

// The name a probe (and the engine's find_function) takes for `f`: a hidden (old) version keeps
// its "@VER", since the plain name means the default version.
std::string callable_name(const elf::Function &f);

// A function's name as reports show it: demangled ("ns::parse(int)"; a template function's
// return type left out, so that the name reads, and can be given back, as a probe), with a hidden
// version's "@VER" kept.
std::string shown_name(const elf::Function &f);

// Errors: "bad probe 'xyz': expected FILE:SYMBOL, FILE:SYMBOL+OFF or FILE:0xOFF".
Result<ProbeSpec> parse_probe(std::string_view text);

// `usprobe list usdt:FILE[:PROVIDER[:NAME]]`: as parse_probe reads a usdt: probe, and also
// usdt:FILE alone (every probe of FILE: PROVIDER and NAME are "*").
Result<ProbeSpec> parse_usdt_listing(std::string_view text);

// The USDT probes of an ELF file that a kUsdt spec selects, each with all its sites (notes), in
// the order of their first notes. Errors, naming the file: it has no USDT notes; no probe
// matches (with the nearest probe's name when the spec had no glob); a usdt:FILE:NAME whose NAME
// several providers have (listing them).
struct UsdtMatch {
  std::string provider, name;
  std::vector<size_t> sites;  // indices into the notes read_usdt_probes gave
};
Result<std::vector<UsdtMatch>> match_usdt(const std::vector<elf::UsdtProbe> &notes,
                                          const ProbeSpec &spec, const std::string &path);

// -r (funccount's): every SYMBOL that parse_probe reads afterwards is an extended regular
// expression (POSIX extended, as grep -E), searched for in function names, instead of a name or a
// glob; FILE:0xOFF stays an offset. A regex that does not compile is a bad probe.
void set_regex_symbols(bool regex);

// A function a glob selected. `by_offset` is set when another function of the file has the same
// name at a different offset (static functions of different sources): the name alone would send
// the agent to the other one, so the plan names this one by its offset.
struct GlobMatch {
  std::string name;  // "memcpy", or "memcpy@GLIBC_2.2.5" for a hidden (old) version
  uint64_t offset = 0;
  bool by_offset = false;
  std::string shown;   // for reports: demangled ("ns::parse(int)"), else `name`
  bool ifunc = false;  // an IFUNC: the code that runs is elsewhere, where the command's linker says
};

// The functions whose names, mangled or demangled, match `pattern`, one per file offset (aliases:
// the name not starting with '_' if there is one, else the shortest), sorted by offset.
std::vector<GlobMatch> expand_glob(const std::vector<elf::Function> &functions,
                                   std::string_view pattern);

// The functions a probe's pattern selects: a glob as expand_glob, or, with spec.regex, the names
// (mangled or demangled) in which the regex finds a match ("^str(len|cmp)$").
std::vector<GlobMatch> expand_pattern(const std::vector<elf::Function> &functions,
                                      const ProbeSpec &spec);

// A -r pattern, compiled: a POSIX extended regular expression (as grep -E takes it). POSIX
// regcomp rather than std::regex: it is what grep and funccount users write, and GCC 12's
// <regex> does not build warning-free under the sanitizers.
struct RegexFree {
  void operator()(regex_t *re) const {
    ::regfree(re);
    delete re;
  }
};
using Regex = std::unique_ptr<regex_t, RegexFree>;
// Errors name the pattern ("invalid regular expression 'str(': parentheses not balanced").
Result<Regex> compile_regex(const std::string &pattern);
// Whether `re` matches somewhere in `text`.
bool regex_search(const Regex &re, const std::string &text);

// The functions whose demangled C++ name is `name` (a template function's return type may be
// left out, see below): the whole name ("ns::parse(int)", one
// function), or, when `name` has no parameter list, the name without it ("ns::parse": every
// overload, as bpftrace probes them). One per file offset, sorted by offset; C names never match.
std::vector<GlobMatch> match_demangled(const std::vector<elf::Function> &functions,
                                       std::string_view name);

// A demangled name without a template function's return type ("void ns::run<int>(int)" ->
// "ns::run<int>(int)"), and also without its parameter list and qualifiers ("ns::run<int>",
// "ns::A::size() const" -> "ns::A::size").
std::string_view without_return_type(std::string_view demangled);
std::string_view without_parameters(std::string_view demangled);

// A resolved probe: one line of the plan.
struct Probe {
  std::string display;    // in reports: "libc:malloc", "exe:parse+0x12", "/usr/bin/app:0x1139"
  std::string location;   // for the agent: "/usr/lib/x86_64-linux-gnu/libc.so.6:malloc"
                          // (a USDT probe: "usdt:/usr/bin/python3.11:python:audit")
  size_t spec_index = 0;  // which ProbeSpec it came from
  // The file's ELF entry point (_start): entered by the kernel with argc at [rsp], not called, so
  // it has no return. Globs leave it out; only a spec naming it yields it.
  bool entry_point = false;
  // A function that returns twice (elf::returns_twice: setjmp, getcontext, vfork): no return
  // probe. A glob of return probes leaves it out; `latency` leaves it out of a glob too.
  bool returns_twice = false;
  // Where it lands, when usprobe can tell: the file as usprobe opens it and the file offset of the
  // probed instruction (an IFUNC resolved to its implementation). Unknown for an IFUNC of a library
  // usprobe does not load itself: the command resolves it.
  std::string site_file{};
  std::optional<uint64_t> site_offset{};
  // Other names of the same site (libc:memcpy, libc:memmove and __memmove_avx_unaligned_erms are
  // one patch): merge_same_sites() keeps one probe, and reports list these after its name.
  std::vector<std::string> aliases{};
};

// One probe per site, in the order of their first names: probes with the same location, or whose
// sites are known to be one (an IFUNC and its implementation, two names given for one function),
// become the first of them (by spec, then the plainer name: "memcpy" over
// "__memmove_avx_unaligned_erms"), the others its aliases. The engine places one patch per site
// and every probe on it counts every hit: several rows for one site would count each call several
// times over.
std::vector<Probe> merge_same_sites(std::vector<Probe> probes);

// "libc:memcpy (also memmove, __memmove_avx_unaligned_erms)": the name with its aliases, their
// FILE: left out where it is the probe's own.
std::string name_with_aliases(const std::string &name, const std::vector<std::string> &aliases);

// The error for a return probe (or a latency probe, which times returns) on an entry point:
// "exe:_start is the program's entry point: it is entered, not called, so it has no return to
// probe".
Error entered_not_called(const Probe &probe);
// The error for a return probe (or `latency`) on a function that returns twice.
Error returned_twice(const Probe &probe);

// --unsafe: a raw offset whose instruction boundaries nothing can check (no symbol and no FDE
// covers it) is probed as given instead of refused.
void set_unsafe_offsets(bool unsafe);

// Resolves every spec (files through `finder`), expands globs and checks each symbol and offset
// as the engine would. The first error is returned; nothing is half-resolved.
Result<std::vector<Probe>> resolve_probes(const std::vector<ProbeSpec> &specs,
                                          LibraryFinder &finder);

}  // namespace usprobe::cli
