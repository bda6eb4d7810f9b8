// USDT probes (statically defined tracing, SystemTap's <sys/sdt.h>, as bpftrace, libbpf and BCC
// use them): what a file's .note.stapsdt notes say, and where each argument's value is.
//
// A program marks a point of interest with STAP_PROBEn(provider, name, args...). The compiler
// leaves a single `nop` there (the site) and, in the non-loaded section .note.stapsdt, a note:
//
//   namesz=8 descsz type=3 "stapsdt\0"
//   desc: pc (8 bytes)  base (8)  semaphore (8)  "provider\0" "name\0" "args\0"
//
// pc is the nop's link-time address. base is the link-time address of .stapsdt.base, a one-byte
// section every such file carries: a tool that moves the file's addresses after the link (prelink)
// updates the section headers but not the note, so the difference sh_addr - base is what moved.
// semaphore, when nonzero, is the address of an unsigned short the program tests before
// computing the arguments (PROVIDER_NAME_ENABLED()); a tracer adds one while it is attached.
// args is one operand per argument, separated by spaces, each "N@OPERAND": N the size in bytes,
// negative for signed, OPERAND as the assembler spells it (AT&T syntax): "-4@%eax",
// "8@-16(%rbp)", "8@(%r8,%rdx,8)", "-4@$5", "-4@NBuffers(%rip)". Older toolchains wrote the
// operand alone ("%rdi").
//
// Where things are at run time: the file is mapped with one load bias for all its segments
// (0 for a non-PIE executable), so given the address where a probe's site was found,
//   load_bias = site_address - pc_vaddr,   semaphore address = load_bias + semaphore_vaddr
// (UsdtProbe::runtime_address()).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "elf/elf_file.h"
#include "elf/usdt_spec.h"

namespace usprobe::elf {

// The most arguments a note may have (arg0..arg11), as <sys/sdt.h> allows.
inline constexpr size_t kUsdtMaxArgs = 12;

struct UsdtArg : UsdtArgSpec {
  std::string text;  // the operand as in the note: "-4@40+CheckpointStats(%rip)"
};

// Parses one note's argument string. `file` and `pc_vaddr` resolve sym(%rip) operands: the
// symbol's value from .symtab, else .dynsym, data objects included (may be null when the text has
// no symbol). Errors name the operand, counted from 1, and the reason:
//   "operand 3 `8@foo(%rip)`: the file defines no symbol `foo`".
// Floating-point arguments ("8f@%xmm0", newer <sys/sdt.h>) are refused.
Result<std::vector<UsdtArg>> parse_usdt_args(std::string_view text, const ElfFile *file,
                                             uint64_t pc_vaddr);

struct UsdtProbe {  // one note: one site
  std::string provider, name;
  uint64_t pc_vaddr = 0;          // the site's nop, corrected by .stapsdt.base
  uint64_t file_offset = 0;       // the site as a file offset: where the probe is placed
  uint64_t semaphore_vaddr = 0;   // 0: no semaphore (corrected the same way as pc)
  uint64_t semaphore_offset = 0;  // its file offset, when inside a PT_LOAD's file bytes; else 0
  std::string args_text;
  std::vector<UsdtArg> args;  // parsed; empty, with args_error set, when the text is bad
  std::string args_error;

  // The run-time address of `vaddr` (the semaphore, say) in the process where this probe's site is
  // mapped at `site_address`: every segment of a file moves by one load bias.
  uint64_t runtime_address(uint64_t vaddr, uint64_t site_address) const {
    return vaddr + (site_address - pc_vaddr);
  }
};

// Every USDT note of the file, in note order. A probe whose site is not in an executable
// PT_LOAD cannot be placed and is left out, as are malformed notes (truncated, wrong owner,
// strings without their terminating NUL); a bad argument string is reported in args_error.
// Errors: none so far beyond what ElfFile::open() reports (a file without notes has no probes).
Result<std::vector<UsdtProbe>> read_usdt_probes(const ElfFile &file);

// One note as written, before .stapsdt.base corrections and argument parsing.
struct UsdtNote {
  uint64_t pc = 0, base = 0, semaphore = 0;
  std::string provider, name, args;
};
// The stapsdt notes of a note section's bytes (ELF64, little-endian); other notes are skipped, a
// truncated or malformed note ends or skips the walk. Never reads outside `section`.
std::vector<UsdtNote> parse_stapsdt_notes(std::span<const uint8_t> section);

}  // namespace usprobe::elf
