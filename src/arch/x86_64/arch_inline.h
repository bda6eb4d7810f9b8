// x86-64's inline part of the arch contract (core/arch.h includes it): register accessors that
// the return-probe hit path calls on every hit, where an out-of-line call would cost more than
// the access.
#pragma once

#include <cstdint>

#include "arch/x86_64/regs.h"

namespace usprobe::arch {

inline uint64_t hit_ip(const Regs &r) {
  return r.rip;
}
inline uint64_t hit_sp(const Regs &r) {
  return r.rsp;
}
inline uint64_t *return_address_slot(const Regs &r) {
  return reinterpret_cast<uint64_t *>(r.rsp);  // at a function's first instruction
}
inline uint64_t returned_from_sp(const Regs &r) {
  return r.rsp - 8;  // `ret` popped the return address from there
}

}  // namespace usprobe::arch
