// An ELF file opened with libelf: its functions (from .symtab and .dynsym), what its unwind
// information says (function bounds and landing pads, from .eh_frame), the mapping between
// virtual addresses and file offsets, and its bytes. A probe's location is a file offset, as in
// the kernel's uprobes, so everything here speaks in file offsets.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <compare>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace usprobe::elf {

// File identity: the device and inode of the file, as /proc/self/maps and stat() give them.
struct FileId {
  dev_t dev = 0;
  ino_t ino = 0;
  auto operator<=>(const FileId &) const = default;
};

// A file's version, as stat() tells it: a file rewritten in place has another (size or mtime).
struct FileVersion {
  uint64_t dev = 0;
  uint64_t ino = 0;
  uint64_t size = 0;
  int64_t mtime_sec = 0;
  int64_t mtime_nsec = 0;
  static FileVersion of(const struct stat &st);
  auto operator<=>(const FileVersion &) const = default;
};

struct Function {
  std::string name;     // plain name, version suffix removed ("memcpy", not "memcpy@@GLIBC_2.14")
  std::string version;  // "GLIBC_2.14" or empty
  uint64_t vaddr = 0;   // st_value
  uint64_t file_offset = 0;     // where its first byte is in the file
  uint64_t size = 0;            // st_size (bytes)
  bool ifunc = false;           // STT_GNU_IFUNC: the symbol is a resolver, not the implementation
  bool hidden_version = false;  // "name@VER": a version kept for old binaries, not the default
  bool exported = false;        // listed in .dynsym, so the dynamic linker (dlsym) can find it
};

class ElfFile {
 public:
  // Opens and indexes `path`. Errors: no such file, not an ELF file, not x86-64.
  static Result<std::shared_ptr<const ElfFile>> open(const std::string &path);
  ~ElfFile();

  const std::string &path() const;
  FileId id() const;
  FileVersion version() const;
  // An executable with no PT_INTERP: ET_EXEC (gcc -static) or ET_DYN flagged DF_1_PIE
  // (gcc -static-pie). No dynamic linker ever runs in it, so nothing can load usprobe there.
  // Shared libraries are not executables, even libc.so.6, which has a PT_INTERP so it can run.
  bool is_static_executable() const;
  // A program (ET_EXEC, or ET_DYN flagged DF_1_PIE), static or not: the kernel maps it at exec,
  // and the dynamic linker refuses to dlopen it. Not libc.so.6 (a library that can also run).
  bool is_program() const;
  // Where the kernel (or, for the dynamic linker, the kernel through PT_INTERP) starts the file:
  // e_entry as a file offset; nullopt when it has none (most libraries: e_entry 0). The code there
  // (`_start`) is entered with the stack the kernel built, argc at [rsp], not called: it has no
  // return address and never returns.
  std::optional<uint64_t> entry_offset() const;
  // The program interpreter (PT_INTERP) an executable names, "/lib64/ld-linux-x86-64.so.2";
  // empty when it has none.
  const std::string &interpreter() const;

  // Every function with a nonzero size, from .symtab and .dynsym, one entry per (offset, name),
  // sorted by file offset. Aliases at one offset are all listed. (Made on the first call: the
  // lookups below do not need it.)
  const std::vector<Function> &functions() const;

  // Find a function by name: plain ("memcpy") or versioned ("memcpy@@GLIBC_2.14",
  // "memcpy@GLIBC_2.2.5"). A plain name with several versions picks the default (@@) one.
  // Errors: "FILE: no function `mallok` (did you mean `malloc`?)",
  //         "FILE: `environ` is a data symbol, not a function".
  Result<Function> find_function(std::string_view name) const;

  // The function whose [file_offset, file_offset+size) holds `file_offset`; nullopt if none.
  // Where aliases overlap, the one with a global binding and the shortest name wins. (Where
  // functions of different starts overlap, the innermost, the one starting last, wins first.)
  std::optional<Function> function_containing(uint64_t file_offset) const;
  // Where the first function that starts at or after `file_offset` starts; nullopt if none does.
  std::optional<uint64_t> next_function_start(uint64_t file_offset) const;

  // Code bounds from .eh_frame, which a stripped file keeps: the FDE whose
  // [file_offset, file_offset+size) holds `file_offset`; nullopt if none. An FDE covers one
  // function, or one part of it (GCC puts a function's cold part in an FDE of its own).
  struct CodeRange {
    uint64_t file_offset = 0;
    uint64_t size = 0;
  };
  std::optional<CodeRange> unwind_range_containing(uint64_t file_offset) const;
  // Every FDE's range, sorted by file offset.
  const std::vector<CodeRange> &unwind_ranges() const;

  // Every landing pad of the file's LSDAs (.gcc_except_table, reached through the FDEs' 'L'
  // augmentation), in file offsets, sorted, without repeats: where the unwinder resumes a frame
  // to run a catch or a cleanup. Control reaches them from no branch instruction, yet they are
  // branch targets all the same.
  const std::vector<uint64_t> &landing_pads() const;

  // Translation through the PT_LOAD program headers; nullopt when outside every segment.
  std::optional<uint64_t> vaddr_to_offset(uint64_t vaddr) const;
  std::optional<uint64_t> offset_to_vaddr(uint64_t file_offset) const;
  bool offset_is_executable(uint64_t file_offset) const;  // inside a PF_X PT_LOAD

  // `len` bytes of the file starting at `file_offset` (empty span if out of range).
  std::span<const uint8_t> bytes(uint64_t file_offset, size_t len) const;

  // The section headers, in file order (strip keeps them). `name` is from .shstrtab. A SHT_NOBITS
  // section (.bss) has no bytes in the file: its file_offset says nothing.
  struct Section {
    std::string name;
    uint32_t type = 0;   // SHT_*
    uint64_t flags = 0;  // SHF_*
    uint64_t vaddr = 0;  // sh_addr; 0 for a section that is not loaded (.note.stapsdt)
    uint64_t file_offset = 0;
    uint64_t size = 0;
  };
  const std::vector<Section> &sections() const;
  // The first section named `name`; nullptr when the file has none.
  const Section *find_section(std::string_view name) const;
  // The bytes of a section that has some in the file; empty for SHT_NOBITS or a section that
  // claims more than the file holds.
  std::span<const uint8_t> section_bytes(const Section &section) const;

  // The value (st_value) of the symbol `name` (plain, unversioned), any kind that has an address:
  // functions, sizeless ones included, and data objects (`NBuffers`, `environ`). .symtab (or the
  // separate debug file's) wins over .dynsym; within one table a global over a local (two
  // files' `static int counter` are both locals: the first one read is kept). nullopt when no
  // symbol of that name is defined in the file.
  std::optional<uint64_t> symbol_vaddr(std::string_view name) const;

  // The GNU build-id note in hex ("93ac61ec..."), empty when the file has none.
  const std::string &build_id() const;

  // Where .symtab came from: the file itself, or, for a stripped file, the separate debug file
  // found through its build-id (/usr/lib/debug/.build-id/93/ac61....debug, as Debian's -dbg
  // packages install them). Empty when neither has one: then only .dynsym is known.
  const std::string &symtab_path() const;

  // A file prepared in another process. Opening and indexing a file costs milliseconds (libc:
  // 6 ms), paid by every process that a probed command execs; the CLI opens each probed file once
  // and hands its index and bytes to them all (protocol/targets.h).
  //
  // The index, everything open() read from the file but its bytes, as bytes.
  std::vector<uint8_t> index_image() const;
  // Offers this process a prepared file: the next open() of a file of `version` takes its index
  // from `image` and its bytes from `bytes` (version.size of them) instead of reading the file.
  // `keep` keeps both alive as long as any ElfFile made from them. An image that does not read
  // back whole is not used: open() reads the file then, as without it.
  static void provide_prepared(const FileVersion &version, std::span<const uint8_t> bytes,
                               std::span<const uint8_t> image, std::shared_ptr<const void> keep);

 private:
  ElfFile();
  static Result<std::shared_ptr<const ElfFile>> open_uncached(const std::string &path, int fd,
                                                              const struct stat &st);
  static std::shared_ptr<const ElfFile> open_prepared(const std::string &path,
                                                      const struct stat &st);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace usprobe::elf
