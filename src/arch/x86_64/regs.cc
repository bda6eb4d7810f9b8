#include "arch/x86_64/regs.h"

#include <cstddef>
#include <cstring>

#include "core/arch.h"

namespace usprobe::arch {

uint64_t reg(const Regs &r, usprobe_reg which) {
  switch (which) {
    case USPROBE_RAX:
      return r.rax;
    case USPROBE_RBX:
      return r.rbx;
    case USPROBE_RCX:
      return r.rcx;
    case USPROBE_RDX:
      return r.rdx;
    case USPROBE_RSI:
      return r.rsi;
    case USPROBE_RDI:
      return r.rdi;
    case USPROBE_RBP:
      return r.rbp;
    case USPROBE_RSP:
      return r.rsp;
    case USPROBE_R8:
      return r.r8;
    case USPROBE_R9:
      return r.r9;
    case USPROBE_R10:
      return r.r10;
    case USPROBE_R11:
      return r.r11;
    case USPROBE_R12:
      return r.r12;
    case USPROBE_R13:
      return r.r13;
    case USPROBE_R14:
      return r.r14;
    case USPROBE_R15:
      return r.r15;
    case USPROBE_RIP:
      return r.rip;
    case USPROBE_RFLAGS:
      return r.rflags;
  }
  return 0;
}

int reg_index(usprobe_reg which) {
  constexpr auto word = [](size_t offset) { return static_cast<int>(offset / 8); };
  switch (which) {
    case USPROBE_RAX:
      return word(offsetof(Regs, rax));
    case USPROBE_RBX:
      return word(offsetof(Regs, rbx));
    case USPROBE_RCX:
      return word(offsetof(Regs, rcx));
    case USPROBE_RDX:
      return word(offsetof(Regs, rdx));
    case USPROBE_RSI:
      return word(offsetof(Regs, rsi));
    case USPROBE_RDI:
      return word(offsetof(Regs, rdi));
    case USPROBE_RBP:
      return word(offsetof(Regs, rbp));
    case USPROBE_RSP:
      return word(offsetof(Regs, rsp));
    case USPROBE_R8:
      return word(offsetof(Regs, r8));
    case USPROBE_R9:
      return word(offsetof(Regs, r9));
    case USPROBE_R10:
      return word(offsetof(Regs, r10));
    case USPROBE_R11:
      return word(offsetof(Regs, r11));
    case USPROBE_R12:
      return word(offsetof(Regs, r12));
    case USPROBE_R13:
      return word(offsetof(Regs, r13));
    case USPROBE_R14:
      return word(offsetof(Regs, r14));
    case USPROBE_R15:
      return word(offsetof(Regs, r15));
    case USPROBE_RIP:
      return word(offsetof(Regs, rip));
    case USPROBE_RFLAGS:
      return word(offsetof(Regs, rflags));
  }
  return -1;
}

namespace {
// System V argument order.
uint64_t Regs::*const kArgs[6] = {&Regs::rdi, &Regs::rsi, &Regs::rdx,
                                  &Regs::rcx, &Regs::r8,  &Regs::r9};
}  // namespace

void cpu_relax() {
  __builtin_ia32_pause();
}

uint64_t arg(const Regs &r, unsigned n) {
  return n < 6 ? r.*kArgs[n] : 0;
}
void set_arg(Regs &r, unsigned n, uint64_t value) {
  if (n < 6) r.*kArgs[n] = value;
}

double return_double(const void *vectors) {
  double d;
  std::memcpy(&d, vectors, sizeof d);  // the return trampoline saved xmm0 first
  return d;
}

}  // namespace usprobe::arch
