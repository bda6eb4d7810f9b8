// The value of a USDT argument at a hit, from the registers the trampoline saved and the
// process's memory. Runs on the hit path: never allocates, locks or throws; memory is read only
// through the caller's fault-safe `read`.
#pragma once

#include <cstddef>
#include <cstdint>

#include "arch/x86_64/regs.h"
#include "core/arch.h"
#include "elf/usdt_spec.h"
#include "usprobe/usprobe.h"

namespace usprobe {

// The full 64-bit register `reg` (usprobe_reg) of `regs`; 0 for none (-1).
inline uint64_t usdt_reg_value(const arch::Regs &regs, int8_t reg) {
  return reg < 0 ? 0 : arch::reg(regs, static_cast<usprobe_reg>(reg));
}

// `v`'s low `size` bytes, sign- or zero-extended to 64 bits.
inline uint64_t usdt_extend(uint64_t v, uint8_t size, bool is_signed) {
  if (size >= 8) return v;
  if (size == 0) return 0;  // (never from the parser; a shift by -1 below otherwise)
  const unsigned bits = size * 8u;
  const uint64_t low = v & ((uint64_t{1} << bits) - 1);
  if (!is_signed || !(low >> (bits - 1))) return low;
  return low | ~((uint64_t{1} << bits) - 1);
}

// The value of `a` at a hit: registers from `regs` (regs.rip is the probed instruction), memory
// through `read(addr, dst, len)`, which returns false when the memory cannot be read. Truncated
// to a.size and sign- or zero-extended to 64 bits. false: the memory was unreadable.
inline bool usdt_arg_value(const elf::UsdtArgSpec &a, const arch::Regs &regs,
                           bool (*read)(uint64_t, void *, size_t), uint64_t *out) {
  using Kind = elf::UsdtArgSpec::Kind;
  uint64_t v = 0;
  switch (a.kind) {
    case Kind::kConstant:
      v = static_cast<uint64_t>(a.offset);
      break;
    case Kind::kRegister:
      v = usdt_reg_value(regs, a.base) >> a.shift;
      break;
    case Kind::kMemory: {
      uint64_t addr = static_cast<uint64_t>(a.offset);
      if (a.base >= 0) addr += usdt_reg_value(regs, a.base);
      if (a.index >= 0) addr += usdt_reg_value(regs, a.index) * a.scale;
      // Little-endian: the low `size` bytes of v are the value's.
      if (a.size > sizeof v || !read(addr, &v, a.size)) return false;
      break;
    }
  }
  *out = usdt_extend(v, a.size, a.is_signed);
  return true;
}

}  // namespace usprobe
