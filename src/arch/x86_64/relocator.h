// The x86-64 decoder and relocator, on Zydis.
//
// scan_function() decodes a whole function once so that site analysis can ask the questions the
// jump path depends on: where instructions start, which addresses direct branches reach, whether
// the function jumps indirectly. relocate() moves whole instructions from their original address
// to a new one so that each still reaches the same absolute targets (RIP-relative operands,
// jcc/jmp rel8 and rel32, call, endbr64), or says why it cannot.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/error.h"

namespace usprobe::x86 {

struct FunctionScan {
  // Offsets (from the function start) where instructions start, ascending.
  std::vector<uint32_t> boundaries;
  // Absolute targets of every direct jmp/jcc/call/loop/jrcxz in the function.
  std::vector<uint64_t> branch_targets;
  // Any `jmp reg` / `jmp [mem]` (jump tables, tail calls through pointers).
  bool has_indirect_jump = false;
  // False when decoding stopped on bytes Zydis cannot decode.
  bool complete = true;

  bool is_boundary(uint32_t off) const;  // binary search in boundaries
};

// Decode `code`, which is mapped at `runtime_addr`, linearly from its start to its end.
// branch_targets come sorted and without duplicates. Decoding stops, with complete = false, at the
// first bytes that do not decode or at an instruction cut off by the end of `code`.
FunctionScan scan_function(std::span<const uint8_t> code, uint64_t runtime_addr);

// Length of the one instruction at the start of `code` (0 when it does not decode).
size_t instruction_length(std::span<const uint8_t> code);

// Whether the one instruction at the start of `code` is padding that compilers and assemblers put
// between functions: a nop of any length (90, 66 90, 0f 1f /0, ...) or int3.
bool is_padding(std::span<const uint8_t> code);
// Whether execution can go on after the one instruction at the start of `code`: false for ret,
// jmp (any form) and ud0/ud1/ud2, and for bytes that do not decode.
bool falls_through(std::span<const uint8_t> code);

// The direct jmp (rel8 or rel32, any prefixes) at the start of `code`, mapped at `addr`: its length
// and target; nullopt when the bytes are not one.
struct DecodedJump {
  size_t length = 0;
  uint64_t target = 0;
};
std::optional<DecodedJump> decode_jump(std::span<const uint8_t> code, uint64_t addr);

// The number a system call was made with, when the code loaded it as a constant. `before` holds
// the bytes up to a pc that follows a `syscall` (0f 05, its last two bytes); the answer is the
// immediate of the nearest `mov $n, %eax` (or %rax) from which the bytes decode exactly up to the
// syscall, with no instruction between that branches or writes %rax. nullopt when there is none
// (the number came from a register or memory, as in a generic syscall() wrapper).
std::optional<uint32_t> constant_syscall_number(std::span<const uint8_t> before);

struct Relocation {
  std::vector<uint8_t> code;  // relocated instructions, to be placed at dst_addr
  size_t consumed = 0;        // original bytes covered: whole instructions, >= min_len
  // (original offset, relocated offset) of each instruction start.
  std::vector<std::pair<uint32_t, uint32_t>> map;
  // False when the last relocated instruction never falls through (ret, jmp): no jump back needed.
  bool falls_through = true;
};

// Relocate whole instructions from `src` (mapped at src_addr) until at least `min_len` bytes are
// covered, for execution at `dst_addr`. Refuses (returns an Error whose message says which
// instruction and why) when an instruction cannot keep its meaning at the new address:
// a RIP-relative operand whose target is beyond +-2 GB of dst_addr, a `call` that is not the last
// instruction covered (its return address would point into the patched window), loop/jrcxz/xbegin,
// instructions that do not decode. Branches to targets within [src_addr, src_addr + consumed) are
// refused too: the caller checks branch targets against the window before relocating.
//
// Refusals carry EINVAL, except a RIP-relative target out of reach, which carries ERANGE (a
// trampoline nearer the site may succeed). Messages show the instruction in AT&T syntax and its
// address: "`lea 0x2f3c(%rip), %rdi` at 0x7f..: RIP-relative target 0x.. is beyond +-2 GB of the
// trampoline at 0x..".
//
// A call that is the last instruction covered (direct, through a register or through memory) is
// emulated, not copied: the code pushes the ORIGINAL return address (src_addr + consumed) without
// touching registers or flags, then jumps to the callee, so the callee returns to the original
// code right after the window and falls_through is false. A copied call would return into the
// trampoline, where the unwinder finds no CFI (C++ exceptions and handler stack traces would break
// there). The price: processes running with CET shadow stacks cannot use this (the callee's ret
// would not match the shadow stack).
Result<Relocation> relocate(std::span<const uint8_t> src, uint64_t src_addr, size_t min_len,
                            uint64_t dst_addr);

}  // namespace usprobe::x86
