// Where one USDT argument's value is at a probe hit, decoded from its operand string: the plain
// data part of elf::UsdtArg, apart so that the hit path (core/usdt_arg.h) includes no strings.
#pragma once

#include <cstdint>

namespace usprobe::elf {

struct UsdtArgSpec {
  enum class Kind : uint8_t {
    kRegister,  // the value is in register `base` (bits shift..shift+size*8)
    kMemory,    // at base + index*scale + offset
    kConstant,  // the value is `offset`
  };
  Kind kind = Kind::kConstant;
  uint8_t size = 8;        // 1, 2, 4 or 8 bytes: "N@" gives |N|; a bare operand, 8
  bool is_signed = false;  // N negative: sign-extend from `size` bytes, else zero-extend
  int8_t base = -1;        // usprobe_reg (USPROBE_RAX..USPROBE_R15, USPROBE_RIP); -1: none
  int8_t index = -1;       // usprobe_reg; -1: none
  uint8_t scale = 1;       // 1, 2, 4, 8
  uint8_t shift = 0;       // kRegister: 8 for %ah %bh %ch %dh (bits 8..15), else 0
  // kMemory: the displacement; kConstant: the value. For a %rip-relative operand (base ==
  // USPROBE_RIP) the displacement is taken from the probed instruction, not from the next one:
  // symbol vaddr + displacement - the probe's pc vaddr, so that at a hit
  // address = (address of the probed instruction) + offset.
  int64_t offset = 0;
};

}  // namespace usprobe::elf
