// The x86-64 half of the stack walk (core/stack.h): the %rbp chain and libunwind's machine context.
//
// A frame built with frame pointers starts `push %rbp; mov %rsp,%rbp`: %rbp points at the saved
// %rbp of the caller, with the return address just above it. Walking the chain is two loads per
// frame; the bounds checks are what keep a broken chain (code built without frame pointers uses
// %rbp as an ordinary register) from reading memory that is not there.
#include <ucontext.h>

#include <cstring>

#include "arch/x86_64/regs.h"
#include "core/stack.h"

namespace usprobe::arch {

uint64_t frame_pointer(const Regs &r) {
  return r.rbp;
}

// Reads other frames' memory on purpose, wherever a (checked) chain leads: not for AddressSanitizer
// to judge.
__attribute__((no_sanitize("address"))) size_t frame_pointer_walk(uint64_t fp, uint64_t lo,
                                                                  uint64_t hi, uint64_t *ips,
                                                                  size_t max, ReturnFixup fixup,
                                                                  const void *ctx) {
  size_t n = 0;
  // Each frame reads 16 bytes at fp: the saved %rbp, then the return address.
  while (n < max && hi >= 16 && fp >= lo && fp <= hi - 16 && fp % 8 == 0) {
    const auto *frame = reinterpret_cast<const uint64_t *>(fp);
    const uint64_t ret = fixup(ctx, fp + 8, frame[1]);
    if (ret == 0) break;  // the outermost frame
    ips[n++] = ret;
    const uint64_t next = frame[0];
    if (next <= fp) break;  // 0 ends the chain (_start, a thread's start); down or flat is broken
    fp = next;
  }
  return n;
}

void unwind_context(const Regs &r, uint64_t ip, uint64_t sp, ucontext_t *uc) {
  std::memset(uc, 0, sizeof *uc);
  greg_t *g = uc->uc_mcontext.gregs;
  g[REG_RAX] = static_cast<greg_t>(r.rax);
  g[REG_RBX] = static_cast<greg_t>(r.rbx);
  g[REG_RCX] = static_cast<greg_t>(r.rcx);
  g[REG_RDX] = static_cast<greg_t>(r.rdx);
  g[REG_RSI] = static_cast<greg_t>(r.rsi);
  g[REG_RDI] = static_cast<greg_t>(r.rdi);
  g[REG_RBP] = static_cast<greg_t>(r.rbp);
  g[REG_R8] = static_cast<greg_t>(r.r8);
  g[REG_R9] = static_cast<greg_t>(r.r9);
  g[REG_R10] = static_cast<greg_t>(r.r10);
  g[REG_R11] = static_cast<greg_t>(r.r11);
  g[REG_R12] = static_cast<greg_t>(r.r12);
  g[REG_R13] = static_cast<greg_t>(r.r13);
  g[REG_R14] = static_cast<greg_t>(r.r14);
  g[REG_R15] = static_cast<greg_t>(r.r15);
  g[REG_EFL] = static_cast<greg_t>(r.rflags);
  g[REG_RSP] = static_cast<greg_t>(sp);
  g[REG_RIP] = static_cast<greg_t>(ip);
}

}  // namespace usprobe::arch
