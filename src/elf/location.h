// From a location spec to (file identity, file offset) in this process.
//
//   "FILE:SYMBOL"      function entry        libc:malloc, /usr/lib/x86_64-linux-gnu/libc.so.6:free
//   "FILE:SYMBOL+OFF"  inside a function     app:parse+0x12 (OFF decimal or 0x-hex)
//   "FILE:0xOFF"       raw file offset       /bin/true:0x2a40
//   "usdt:FILE:PROVIDER:NAME", "usdt:FILE:NAME"  a USDT probe (elf/usdt.h): one location per site
//
// FILE is a path (it contains a '/') or a short name of a library mapped in this process:
// "libc" matches libc.so.6, "libm" libm.so.6, "libstdc++" libstdc++.so.6, "libfoo.so" itself;
// "exe" (or "self") is the main executable. IFUNC symbols (libc's strlen, memcpy, ...) resolve to
// the implementation this process uses (e.g. __strlen_avx2) and `symbol` reports it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "elf/elf_file.h"
#include "elf/usdt.h"

namespace usprobe::elf {

struct ResolvedLocation {
  std::string spec;                     // as given
  std::shared_ptr<const ElfFile> file;  // the opened ELF file
  uint64_t file_offset = 0;             // the probed instruction
  std::string symbol;        // enclosing function's name after IFUNC resolution; empty if none
  uint64_t func_offset = 0;  // enclosing function's first byte (file offset)
  // Bounds from the symbol table, or in a stripped file from the FDE around the offset
  // (.eh_frame); func_size is 0 when neither gives them.
  uint64_t func_size = 0;
  bool ifunc_resolved = false;  // symbol was an IFUNC and `symbol` is the chosen implementation
  // A USDT probe's site: its note (provider, name, arguments, semaphore). Null otherwise.
  std::shared_ptr<const UsdtProbe> usdt;

  uint64_t offset_in_function() const { return file_offset - func_offset; }
  // For messages: "libc.so.6:__strlen_avx2", "libc.so.6:malloc+0x4", or "libc.so.6:0x1234"
  // when no function encloses the offset; "usdt:python3.11:python:audit" for a USDT site.
  std::string describe() const;
};

// Whether the function that starts at `file_offset` of `file` returns twice: setjmp's kind (its
// second return comes from longjmp, to the return address it saved, which a return probe had made
// its landing), getcontext (from setcontext) and vfork (once in the child, on the parent's stack,
// then in the parent). Known by name, aliases included: ELF does not mark them. Such a function
// can have no return probe.
bool returns_twice(const ElfFile &file, uint64_t file_offset);
// The reason, for messages: "libc:setjmp returns twice (...)".
std::string returns_twice_refusal(std::string_view function);

// Parse and resolve. Errors name the file and the thing: unknown file, non-ELF file, static
// executable ("statically linked"), unknown symbol (with a suggestion), data symbol, offset outside
// the file's executable segments.
Result<ResolvedLocation> resolve_location(std::string_view spec);
// The same for many specs, opening each distinct FILE once (one result per spec, in order).
std::vector<Result<ResolvedLocation>> resolve_locations(std::span<const std::string> specs);

// bpftrace's probe types before a location: "uprobe:" (a function's entry, or an instruction, as
// without it) and "uretprobe:" (the function's return). One rule for the engine and the CLI: the
// prefix counts only when a whole location follows it, FILE:..., so that a library really called
// "uprobe" can still be named ("uprobe:malloc" is the symbol malloc of a file named uprobe).
struct ProbeType {
  bool returns = false;       // "uretprobe:"
  std::string_view location;  // what follows the prefix, or the whole spec
};
ProbeType split_probe_type(std::string_view spec);

// Where FILE ends in "FILE:SYMBOL" (npos: nowhere): at the last ':' that is neither half of a "::"
// nor inside (), [] or {}, so that a demangled C++ name ("ns::parse(int)", "f[abi:cxx11]()",
// "{lambda()#1}::operator()") stays whole after it, and a path with ':' in it
// ("/odd:dir/lib.so:fn") stays whole before it.
size_t file_colon(std::string_view spec);

// Whether `spec` names a USDT probe ("usdt:..."), whose locations are its sites.
bool is_usdt_spec(std::string_view spec);
// Every site of the USDT probe "usdt:FILE:PROVIDER:NAME" (or "usdt:FILE:NAME", when one provider
// of the file has NAME), in note order. Errors: a bad spec, FILE as resolve_file and
// ElfFile::open, a file without USDT notes, no such probe (with the nearest name), NAME in
// several providers, an argument string the parser refuses.
Result<std::vector<ResolvedLocation>> resolve_usdt(std::string_view spec);

// An offset as locations spell it: "0x1f" (hex) or "31" (decimal); the whole string must be the
// number.
std::optional<uint64_t> parse_offset(std::string_view s);

// Resolve FILE alone (a path or short name, as above) to the path of the ELF file.
Result<std::string> resolve_file(std::string_view file);

// Whether a short library name designates a file with this basename: the name itself, or the
// name followed by ".so" or "-" ("libc" matches "libc.so.6" and "libc-2.31.so", not
// "libcrypt.so.1"); a name that already ends in ".so" also matches its versioned files
// ("libfoo.so" matches "libfoo.so.1").
bool library_name_matches(std::string_view name, std::string_view basename);

}  // namespace usprobe::elf
