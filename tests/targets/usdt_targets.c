/* USDT probes for the tests (see usdt_targets.h). The "regs" and "memory" notes are written with
   <sys/sdt.h>'s STAP_PROBE_ASM so that their operand strings are exactly as listed; the others
   are what GCC chooses for STAP_PROBEn. */
#include "targets/usdt_targets.h"

#include <sys/sdt.h>

/* Hidden: the library's own copies, which its %rip-relative operands address (a default-visible
   global could be interposed by a copy in the executable). */
__attribute__((visibility("hidden"))) int ust_counter = -7;
__attribute__((visibility("hidden"))) struct ust_table_type ust_table = {1, {-100, 200, -300, 400}};

/* The operand strings are stringified as written: clang-format would put spaces inside them
   ("8 @ % % rax"). */
// clang-format off
void ust_fire_regs(void) {
  __asm__ __volatile__(
      "movabs $0x0123456789abcdef, %%rax\n\t"
      "mov $-2, %%r15\n\t"
      "mov $0xfffffff6, %%r14d\n\t"
      "mov $0x7f85, %%r8d\n\t"
      "mov $0xff, %%edi\n\t"
      "mov $0x1ff, %%esi\n\t"
      "mov $0x12345, %%ecx\n\t"
      STAP_PROBE_ASM(usprobe_test, regs,
                     8@%%rax -4@%%eax 2@%%ax -1@%%al 1@%%ah -8@%%r15 -4@%%r14d -2@%%r8w
                     1@%%r8b -1@%%dil 1@%%sil 2@%%cx)
      :
      :
      : "rax", "r15", "r14", "r8", "rdi", "rsi", "rcx", "memory");
}

void ust_fire_string(const char *const *strings, long i) {
  register const char *const *table __asm__("r8") = strings;
  __asm__ __volatile__(STAP_PROBE_ASM(usprobe_test, string, 8@(%%r8,%%rdx,8) -8@%%rdx)
                       :
                       : "r"(table), "d"(i)
                       : "memory");
}

void ust_fire_memory(const long *array, long i) {
  __asm__ __volatile__(
      STAP_PROBE_ASM(usprobe_test, memory,
                     -8@(%%rdi) -8@8(%%rdi) -8@(%%rdi,%%rdx,8) -8@-8(%%rdi,%%rdx,8)
                     -4@ust_counter(%%rip) -8@8+ust_table(%%rip) -8@ust_table+16(%%rip)
                     -4@$-5 8@$0x10)
      :
      : "D"(array), "d"(i)
      : "memory");
}

void ust_forms(void) {
  /* Notes only: the function returns before the sites (their operands name registers that hold
     nothing in particular). */
  __asm__ __volatile__(
      "jmp 1f\n\t"
      STAP_PROBE_ASM(usprobe_test, forms,
                     %%rdi -8(%%rbp) $5 8@0x10(%%rsp) 4@(,%%rax,2) -8@-0x8(%%rbx,%%rcx,4)
                     2@(%%r8,%%r9) -4@-4+ust_counter(%%rip) 1@%%bh)
      STAP_PROBE_ASM(usprobe_test, float, 8f@%%xmm0)
      "1:\n\t"
      :
      :
      : "memory");
}
// clang-format on

long ust_fire_values(signed char c, unsigned char uc, short s, unsigned short us, int i, unsigned u,
                     long l, unsigned long ul, const int *p) {
  STAP_PROBE11(usprobe_test, values, c, uc, s, us, i, u, l, ul, *p, -3, ust_counter);
  return c + uc + s + us + i + u + l + (long)ul + *p;
}

static inline __attribute__((always_inline)) void twice_site(int x) {
  STAP_PROBE1(usprobe_test, twice, x);
}

void ust_fire_twice(int x) {
  twice_site(x);
  twice_site(x + 1);
}
