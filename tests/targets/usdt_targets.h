/* USDT probes (<sys/sdt.h>) for the tests: libusprobe_usdt_targets.so, provider "usprobe_test".
   Each ust_fire_* function reaches its probe's site once per call with the argument values given
   beside it, so a test can check the values a tracer reads. */
#ifndef USPROBE_TESTS_TARGETS_USDT_TARGETS_H
#define USPROBE_TESTS_TARGETS_USDT_TARGETS_H

#ifdef __cplusplus
extern "C" {
#endif

/* Probe "regs": registers of every width, loaded with fixed values just before the site:
   %rax = 0x0123456789abcdef, %r15 = -2, %r14 = 0xfffffff6, %r8 = 0x7f85, %rdi = 0xff,
   %rsi = 0x1ff, %rcx = 0x12345. Arguments (as the note spells them, and their values):
     8@%rax     0x0123456789abcdef      -4@%eax   (int32_t)0x89abcdef
     2@%ax      0xcdef                  -1@%al    -17 (0xef)
     1@%ah      0xcd                    -8@%r15   -2
     -4@%r14d   -10                     -2@%r8w   0x7f85
     1@%r8b     0x85                    -1@%dil   -1
     1@%sil     0xff                    2@%cx     0x2345 */
void ust_fire_regs(void);

/* Probe "memory": memory through base, base+index*scale, a %rip-relative global and constants,
   with %rdi = `array` and %rdx = `i` at the site:
     -8@(%rdi)            array[0]
     -8@8(%rdi)           array[1]
     -8@(%rdi,%rdx,8)     array[i]
     -8@-8(%rdi,%rdx,8)   array[i-1]
     -4@ust_counter(%rip)                ust_counter (-7)
     -8@8+ust_table(%rip)                ust_table.arr[0] (-100)
     -8@ust_table+16(%rip)               ust_table.arr[1] (200)
     -4@$-5               -5             8@$0x10   16 */
void ust_fire_memory(const long *array, long i);

/* Probe "string": a string through base+index*scale, "8@(%r8,%rdx,8) -8@%rdx" with %r8 = strings
   and %rdx = i: strings[i] and i. */
void ust_fire_string(const char *const *strings, long i);

/* Probe "values": operands the compiler chose (-O2) for arguments of every size and sign:
   c, uc, s, us, i, u, l, ul, *p, -3 and ust_counter. */
long ust_fire_values(signed char c, unsigned char uc, short s, unsigned short us, int i, unsigned u,
                     long l, unsigned long ul, const int *p);

/* Probe "twice": one probe inlined at two sites; its argument is x, then x + 1. */
void ust_fire_twice(int x);

/* Probe "gated" has a semaphore (usprobe_test_gated_semaphore, as <sys/sdt.h> names it, in
   .probes): a tracer adds one to it while it is attached. ust_fire_gated(x) reaches the site,
   with argument x, only while the semaphore is nonzero, and returns whether it did. */
int ust_fire_gated(long x);
extern unsigned short usprobe_test_gated_semaphore;

/* Probe "forms" is never reached (its function returns first): its note spells operands the
   compilers rarely emit, for the parser: bare operands of old toolchains, hex displacements,
   index without base, -4+sym(%rip). Probe "float" has a floating-point argument (8f@%xmm0),
   which usprobe refuses. */
void ust_forms(void);

extern int ust_counter;
struct ust_table_type {
  long pad;
  long arr[4];
};
extern struct ust_table_type ust_table;

#ifdef __cplusplus
}
#endif

#endif
