// DWARF call frame information as .eh_frame holds it (DWARF 5, section 6.4; the LSB's .eh_frame
// and .eh_frame_hdr): pointer encodings, CIEs and FDEs, and the CFA program that says, for an
// instruction of a function, where its caller's registers are.
//
// These are pure functions over byte ranges, for usprobe_hit_stack's unwinder (core/stack.h):
// they never allocate, lock or make a system call, and never read outside the range they are
// given, whatever the bytes hold. Anything they cannot interpret exactly (an unknown opcode or
// encoding, a DWARF expression, a truncated entry) makes them refuse, never guess: a walk ends
// there rather than report a wrong caller.
#pragma once

#include <cstddef>
#include <cstdint>

namespace usprobe::cfi {

// DW_EH_PE_*: how a pointer is stored (low nibble) and what it is relative to (bits 4-6).
inline constexpr uint8_t kPeAbsptr = 0x00, kPeUleb128 = 0x01, kPeUdata2 = 0x02, kPeUdata4 = 0x03,
                         kPeUdata8 = 0x04, kPeSleb128 = 0x09, kPeSdata2 = 0x0a, kPeSdata4 = 0x0b,
                         kPeSdata8 = 0x0c;
inline constexpr uint8_t kPePcrel = 0x10, kPeDatarel = 0x30, kPeIndirect = 0x80, kPeOmit = 0xff;

// Reads a byte range front to back. A read past `end` fails the reader (ok = false) and returns
// 0; every later read fails too.
struct Reader {
  const uint8_t *p;
  const uint8_t *end;
  bool ok = true;

  uint64_t left() const { return ok ? static_cast<uint64_t>(end - p) : 0; }
  uint64_t address() const { return reinterpret_cast<uint64_t>(p); }
  bool skip(uint64_t n);
  uint8_t u8();
  uint16_t u16();
  uint32_t u32();
  uint64_t u64();
  uint64_t uleb128();
  int64_t sleb128();
};

// Reads a pointer stored with `encoding`: absptr (a native 8-byte word), [us]data2/4/8 or
// [us]leb128, absolute, pc-relative (to the pointer's own address) or data-relative (to
// `data_base`, refused when it is 0). Refuses omit, indirect, textrel, funcrel and aligned: the
// hit path has no business dereferencing code addresses it cannot check.
bool read_pointer(Reader &r, uint8_t encoding, uint64_t data_base, uint64_t &out);

// Skips a pointer stored with `encoding` without judging its value (a personality routine's, which
// a walk does not need).
bool skip_pointer(Reader &r, uint8_t encoding);

// The columns a walk tracks: DWARF register numbers below this. The parser is the file format's;
// this number is the one thing in it that is the architecture's, x86-64's (the only unwinder,
// arch/x86_64/dwarf_unwind.cc): 0-15 are the general-purpose registers and 16 the return address;
// rules for higher columns (vector registers) are parsed and dropped: no caller's return address
// depends on them. A second architecture makes it a parameter of the walk.
inline constexpr unsigned kColumns = 17;

// Where a caller's register is (DWARF 5, 6.4.1).
enum class Rule : uint8_t {
  kSame,        // unchanged: the callee has not touched it (callee-saved registers' default)
  kUndefined,   // not recoverable; for the return address: there is no caller (outermost frame)
  kOffset,      // saved at CFA + value
  kValOffset,   // is CFA + value
  kRegister,    // is in register `value`
  kAtRegister,  // saved at register `reg` + value: the one DWARF expression evaluated,
                // {DW_OP_breg<reg> value}, which signal frames use for every register
  kExpression,  // described by any other DWARF expression: not evaluated, so unknown
};

struct RegRule {
  Rule rule = Rule::kSame;
  uint8_t reg = 0;  // kAtRegister's register
  int64_t value = 0;
};

// The CFA (the caller's stack pointer before its call) is register + offset; or, for a signal
// frame, *(register + offset) ({DW_OP_breg<reg> offset; DW_OP_deref}: the interrupted stack
// pointer saved in the signal frame); or any other expression, which is not evaluated.
struct CfaRule {
  bool expression = false;
  bool deref = false;
  uint32_t reg = 0;
  int64_t offset = 0;
};

// One row of the CFA table.
struct Rules {
  CfaRule cfa;
  RegRule regs[kColumns];
};

// A CIE: what its FDEs share.
struct Cie {
  uint64_t code_align = 0;
  int64_t data_align = 0;
  uint32_t ra_column = 0;
  uint8_t fde_encoding = kPeAbsptr;  // 'R'
  bool augmentation_data = false;    // 'z': FDEs have an augmentation data length
  bool signal_frame = false;         // 'S': its frames were interrupted, not calls
  const uint8_t *insns = nullptr, *insns_end = nullptr;  // the initial instructions
};

// An FDE: one function's address range and its CFA program.
struct Fde {
  Cie cie;
  uint64_t pc_begin = 0, pc_end = 0;
  const uint8_t *insns = nullptr, *insns_end = nullptr;
};

// Parses the FDE at `at` (its length field) and its CIE, neither reaching outside [lo, hi).
// False for a CIE, a terminator, an unknown augmentation or CIE version, or a truncated entry.
bool parse_fde(const uint8_t *at, const uint8_t *lo, const uint8_t *hi, Fde &fde);

// Parses the CIE at `at` (its length field), inside [lo, hi).
bool parse_cie(const uint8_t *at, const uint8_t *lo, const uint8_t *hi, Cie &cie);

// Runs the CFA program [p, end) of `cie` from address `loc` until the row that holds `target`,
// starting from `rules` and leaving the row in it. `initial` is the row after the CIE's initial
// instructions, for DW_CFA_restore (nullptr while running them: restore is then refused). False
// on an unknown or malformed instruction, or a remember_state stack deeper than kMaxStates.
inline constexpr unsigned kMaxStates = 8;
bool execute(const uint8_t *p, const uint8_t *end, const Cie &cie, uint64_t loc, uint64_t target,
             const Rules *initial, Rules &rules);

// The row of `fde` at `pc` (inside the FDE's range): the CIE's initial instructions, then the
// FDE's up to pc.
bool rules_at(const Fde &fde, uint64_t pc, Rules &rules);

// The FDE for `pc` through a binary search of an .eh_frame_hdr at `hdr`: the header, its table and
// the FDEs it points to must lie in [lo, hi). False where the table is absent or uses an encoding
// other than a fixed-size data-relative or absolute one, or where no FDE covers pc.
bool find_fde(const uint8_t *hdr, const uint8_t *lo, const uint8_t *hi, uint64_t pc, Fde &fde);

// A loaded ELF object: its mapped range and its .eh_frame_hdr (PT_GNU_EH_FRAME).
struct Object {
  const uint8_t *lo = nullptr, *hi = nullptr;  // [lo, hi): every reading of its CFI stays inside
  const uint8_t *eh_frame_hdr = nullptr;       // null when it has none
};

// The object holding `pc`, with glibc's _dl_find_object: lock-free and async-signal-safe (no
// loader lock, unlike dl_iterate_phdr), so usable from a handler inside malloc or ld.so.
bool find_object(uint64_t pc, Object &object);

}  // namespace usprobe::cfi
