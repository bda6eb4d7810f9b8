// The register view of a hit, exactly as the trampoline leaves it on the stack (lowest address
// first). The trampoline pushes rflags, then the caller-saved registers (rax, rcx, rdx, rsi, rdi,
// r8-r11: all a fast path needs), then the callee-saved ones (rbx, rbp, r12-r15), then the
// site's %rsp and the site address, so the order here is the reverse of the pushes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace usprobe::arch {

struct Regs {
  uint64_t rip;  // the probed instruction
  uint64_t rsp;  // %rsp at the probed instruction
  uint64_t r15, r14, r13, r12, rbp, rbx;
  uint64_t r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
  uint64_t rflags;
};
static_assert(sizeof(Regs) == 18 * 8);
static_assert(offsetof(Regs, rax) == 16 * 8 && offsetof(Regs, rflags) == 17 * 8);

}  // namespace usprobe::arch
