// Names for the addresses of a process's stacks: which mapped file an address is in, where in
// that file, and which function of the file holds it, demangled.
//
// A stack as the agent captures it is an array of instruction addresses: ips[0] is the probed
// instruction itself, the rest are return addresses, outermost caller last. An address is
// turned into a name in three steps:
//
//   1. ModuleMap: the process's mappings (from /proc/PID/maps) give the mapped file and the file
//      offset: offset = address - mapping start + mapping's file offset.
//   2. elf::ElfFile (src/elf) gives the function whose bytes hold that file offset, from .symtab
//      (the file's own, or the -dbg package's file found by build-id) or else .dynsym. ElfFile
//      translates between virtual addresses and file offsets through the PT_LOAD headers, so
//      its functions are already placed by file offset.
//   3. A C++ name is demangled with abi::__cxa_demangle.
//
// A return address is the instruction after a call. When the call is the last instruction of a
// function (a call to a noreturn function), that address is already the next function's first
// byte, so return addresses are looked up at address - 1, which is always inside the call. The
// offset printed is still that of the return address itself.
//
// What an address is called when the lookup fails:
//   - in a mapped file, but in no function of it (stripped, or the file is gone):
//     "libfoo.so+0x1234": the file's base name and the file offset of the address;
//   - in a named mapping that is not a file ("[vdso]", "[heap]"): that name, "[vdso]";
//   - in no mapping at all (anonymous memory, JIT code) or 0: "[unknown]".
//
// Usage:
//
//   auto modules = read_module_map(pid);
//   if (!modules) return report_error(modules.error());
//   Symbolizer symbolizer(std::move(*modules));
//   for (const Frame &f : symbolizer.symbolize_stack(ips))
//     fmt::print("  {}\n", f.name_with_offset());   // "parse_header+0x1c [/usr/bin/app]"
//
// Not thread-safe: a Symbolizer caches the ELF files it opened and the names it demangled.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/error.h"
#include "elf/elf_file.h"
#include "os/linux/proc_maps.h"

namespace usprobe::cli {

// One mapping of a process that an address can be named by: a mapped file (any permissions, so
// that every address of a mapped ELF file maps back to its file offset), or a named pseudo
// mapping such as [vdso]. Anonymous memory is left out.
struct Module {
  uint64_t start = 0, end = 0;  // [start, end)
  uint64_t offset = 0;          // file offset of `start`
  std::string path;             // "/usr/lib/x86_64-linux-gnu/libc.so.6", or "[vdso]"
  bool exec = false;
  bool deleted = false;  // the file was unlinked: `path` now names another file or none

  bool is_file() const { return !path.empty() && path.front() == '/'; }
  // The file offset of `address`, which must be in [start, end).
  uint64_t file_offset(uint64_t address) const { return address - start + offset; }
};

// A process's modules, sorted by address.
class ModuleMap {
 public:
  ModuleMap() = default;
  explicit ModuleMap(const std::vector<os::Mapping> &mappings);

  // The module holding `address`; nullptr when none does.
  const Module *find(uint64_t address) const;
  const std::vector<Module> &modules() const { return modules_; }

 private:
  std::vector<Module> modules_;
};

// The text of a maps file, as /proc/PID/maps prints it. Errors name the malformed line.
Result<ModuleMap> parse_module_map(std::string_view maps_text);
// /proc/PID/maps of a live process. Errors: the process is gone or not ours to read.
Result<ModuleMap> read_module_map(pid_t pid);

// One named address of a stack.
struct Frame {
  uint64_t address = 0;
  std::string module;            // path of the mapping holding the address; empty when none
  uint64_t file_offset = 0;      // of `address` in `module`, when that is a file
  std::string function;          // demangled; empty when no function holds the address
  std::string symbol;            // the function's name in the file, as is (mangled); or empty
  uint64_t function_offset = 0;  // address - the function's first byte

  // The name a flame graph or a folded stack uses, the same for every address of a function:
  // "ns::parse(char const*)", or one of the fallbacks in the comment at the top of this file.
  std::string name() const;
  // For a listing of one stack: "parse+0x1c [/usr/bin/app]", "libfoo.so+0x1234 [/lib/libfoo.so]"
  // or "[unknown] 0x7f0012345678".
  std::string name_with_offset() const;
};

class Symbolizer {
 public:
  explicit Symbolizer(ModuleMap modules);

  // Names one address. A `return_address` is looked up at address - 1 (see the top of the file).
  Frame symbolize(uint64_t address, bool return_address = false);
  // Names a captured stack: ips[0] is the exact address of the probed instruction, every later
  // entry a return address. Frames come out in the same order, innermost first.
  std::vector<Frame> symbolize_stack(std::span<const uint64_t> ips);

  const ModuleMap &modules() const { return modules_; }
  // The GNU build-id of the ELF file of `module`, in hex; empty when it has none, is not a file
  // that can be opened, or was unlinked (its path may name another file now).
  std::string build_id(const Module &module);

 private:
  // The ELF file behind `module`, opened once per path; nullptr when it cannot be opened or is
  // not an ELF file (a failure is cached too, so it is not retried on every frame).
  const elf::ElfFile *elf_for(const Module &module);
  const std::string &demangled(const std::string &name);

  ModuleMap modules_;
  std::map<std::string, std::shared_ptr<const elf::ElfFile>> files_;
  std::unordered_map<std::string, std::string> demangled_;
};

// `name` demangled when it is a mangled C++ name ("_ZN2ns5parseEPKc" -> "ns::parse(char
// const*)"), otherwise `name` unchanged.
std::string demangle(const std::string &name);

// Whether C++ names in reports are demangled (--no-demangle turns it off): the names a glob or an
// overloaded name gives probes, and the frames of stacks. Matching probes to demangled names does
// not depend on it.
void set_demangle_names(bool demangle);
bool demangle_names();

}  // namespace usprobe::cli
