/* libusprobe_targets.so: tricky functions to probe, written in assembly (targets.S) so that their
 * bytes are exactly what the comments below say, whatever the compiler and its flags.
 *
 * Every function is exported (default visibility) with exact ELF symbol bounds (.type/.size), so
 * the ELF resolver sees the same function bounds that the window analysis needs. A probe location
 * for a function entry is "libusprobe_targets.so:NAME"; for an instruction inside a function it is
 * "libusprobe_targets.so:NAME+OFF", where OFF comes from the exported *_offset constants (or the
 * matching TGT_*_OFFSET macros, which the assembler checks against the code), e.g. in C++:
 *
 *   auto loc = std::format("libusprobe_targets.so:tgt_counted_mid+{:#x}",
 *                          tgt_counted_mid_site_offset);   // "...:tgt_counted_mid+0x7"
 *
 * This header is shared with targets.S: the constants are plain literals that both C and the GNU
 * assembler understand; everything else is hidden from the assembler. */
#ifndef USPROBE_TESTS_TARGETS_TARGETS_H
#define USPROBE_TESTS_TARGETS_TARGETS_H

/* ---- Offsets of mid-function sites (checked at assembly time by targets.S) ------------------ */

#define TGT_COUNTED_MID_SITE_OFFSET 0x7 /* tgt_counted_mid+0x7: `add $1,%rax; pop %rbp` */
#define TGT_CLOBBER_SITE_OFFSET 0x22f   /* tgt_clobber_mid+0x22f: `lea ADD(%r11),%r11` */

/* ---- Register corruption report bits (tgt_clobber_mid, tgt_call_with_canaries, ...) --------- */

/* Bit numbers of GPRs follow enum usprobe_reg: RAX 0, RBX 1, RCX 2, RDX 3, RSI 4, RDI 5, RBP 6,
 * RSP 7, R8..R15 8..15. For RSP the bit means "%rsp moved" or "misaligned". */
#define TGT_BIT_RAX 0
#define TGT_BIT_RBX 1
#define TGT_BIT_RCX 2
#define TGT_BIT_RDX 3
#define TGT_BIT_RSI 4
#define TGT_BIT_RDI 5
#define TGT_BIT_RBP 6
#define TGT_BIT_RSP 7
#define TGT_BIT_R8 8
#define TGT_BIT_R9 9
#define TGT_BIT_R10 10
#define TGT_BIT_R11 11
#define TGT_BIT_R12 12
#define TGT_BIT_R13 13
#define TGT_BIT_R14 14
#define TGT_BIT_R15 15
#define TGT_BIT_FLAGS 16    /* CF PF AF ZF SF OF differ from what was set, or DF was left set */
#define TGT_BIT_STACK 17    /* red zone, caller frame or stack argument memory was overwritten */
#define TGT_BIT_RETVAL 18   /* the callee's return value (%rax) did not come back intact */
#define TGT_BIT_RET_RDX 19  /* %rdx (second return register) did not come back intact */
#define TGT_BIT_RET_XMM0 20 /* %xmm0 (low 64 bits, return register) did not come back intact */
#define TGT_BIT_RET_XMM1 21 /* %xmm1 (low 64 bits, return register) did not come back intact */
#define TGT_BIT_XMM0 32     /* xmmN is bit 32 + N, N = 0..15 */

/* ---- Values held at the tgt_clobber_mid site ------------------------------------------------ */

/* GPRs at the site (before the site instruction runs). %rsp is the function's own; %rbp holds
 * TGT_VAL_RBP, not a frame pointer, so a frame-pointer walk from the site stops being valid. */
#define TGT_VAL_RAX 0x9f5abf2108f64a04
#define TGT_VAL_RBX 0x3d9238da8840c619
#define TGT_VAL_RCX 0xdbc9b294078b422e
#define TGT_VAL_RDX 0x7a012c4d86d5be43
#define TGT_VAL_RSI 0x1838a60706203a58
#define TGT_VAL_RDI 0xb6701fc0856ab66d
#define TGT_VAL_RBP 0x54a7997a04b53282
#define TGT_VAL_R8 0x91168ced034a2aac
#define TGT_VAL_R9 0x2f4e06a68294a6c1
#define TGT_VAL_R10 0xcd85806001df22d6
#define TGT_VAL_R11 0x6bbcfa1981299eeb
#define TGT_VAL_R12 0x09f473d300741b00
#define TGT_VAL_R13 0xa82bed8c7fbe9715
#define TGT_VAL_R14 0x46636745ff09132a
#define TGT_VAL_R15 0xe49ae0ff7e538f3f
/* The site instruction is `lea TGT_CLOBBER_SITE_ADD(%r11),%r11` (7 bytes, no flags). */
#define TGT_CLOBBER_SITE_ADD 0x1234567
/* %rflags at the site: CF=1 PF=0 AF=1 ZF=0 SF=1 OF=1 (plus the always-one bit 1), DF=0.
 * Compare (usprobe_hit_flags(hit) & TGT_STATUS_FLAGS_MASK) with TGT_CLOBBER_FLAGS. */
#define TGT_CLOBBER_FLAGS 0x893
#define TGT_STATUS_FLAGS_MASK 0x8d7 /* CF, bit 1, PF, AF, ZF, SF, OF */
/* The red zone below %rsp at the site: quad at -8*i(%rsp) = TGT_REDZONE_PATTERN + i, i = 1..16. */
#define TGT_REDZONE_PATTERN 0x5245445a4f4e4500

/* ---- Values of tgt_call_with_canaries / tgt_entry_callee ------------------------------------ */

#define TGT_ENTRY_ARG0 0xa0a1a2a3a4a5a601 /* %rdi */
#define TGT_ENTRY_ARG1 0xb0b1b2b3b4b5b602 /* %rsi */
#define TGT_ENTRY_ARG2 0xc0c1c2c3c4c5c603 /* %rdx */
#define TGT_ENTRY_ARG3 0xd0d1d2d3d4d5d604 /* %rcx */
#define TGT_ENTRY_ARG4 0xe0e1e2e3e4e5e605 /* %r8 */
#define TGT_ENTRY_ARG5 0xf0f1f2f3f4f5f606 /* %r9 */
#define TGT_ENTRY_ARG6 0x0102030405060707 /* 7th integer argument, on the stack at 8(%rsp) */
#define TGT_ENTRY_RAX 0x5aa5000000000008  /* %rax at the call (al = 8 vector registers used) */
#define TGT_ENTRY_R10 0x1010101010101010  /* %r10 at the call (static chain register) */
#define TGT_ENTRY_R11 0x1111111111111111  /* %r11 at the call */
/* xmm0-7 arguments (doubles, exact in binary) */
#define TGT_ENTRY_X0 1.5
#define TGT_ENTRY_X1 -2.25
#define TGT_ENTRY_X2 3.125
#define TGT_ENTRY_X3 -4.0625
#define TGT_ENTRY_X4 5.5
#define TGT_ENTRY_X5 -6.75
#define TGT_ENTRY_X6 7.375
#define TGT_ENTRY_X7 -8.5
/* What tgt_entry_callee returns besides its mask: %rdx, %xmm0, %xmm1. */
#define TGT_ENTRY_RET_RDX 0x2d2d2d2d2d2d2d2d
#define TGT_ENTRY_RET_X0 0.5
#define TGT_ENTRY_RET_X1 -0.25
/* tgt_entry_callee returns its mask | TGT_ENTRY_MAGIC; the caller checks and strips the magic. */
#define TGT_ENTRY_MAGIC 0xc0de000000000000
/* Callee-saved registers hold TGT_VAL_RBX, TGT_VAL_RBP, TGT_VAL_R12..R15 across the call; three
 * quads of the caller's frame above the stack argument hold TGT_STACK_CANARY + 1..3. */
#define TGT_STACK_CANARY 0x43414e4152590000

/* ---- Other constants ------------------------------------------------------------------------ */

#define TGT_RIP_DATA_INITIAL 0x1122334455667788

#ifndef __ASSEMBLER__
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Starts with endbr64 (f3 0f 1e fa), then push %rbp; mov %rsp,%rbp; returns a + b.
 * Tests that the decoder and relocator take endbr64 in the window (CET/IBT style entry). */
long tgt_endbr64(long a, long b);

/* First instruction: `mov tgt_rip_data(%rip),%rax` (48 8b 05 rel32, 7 bytes); returns the quad,
 * initially TGT_RIP_DATA_INITIAL. Tests RIP-relative relocation: a relocated copy must still read
 * the library's live data, which tgt_set_rip_data changes (and returns the previous value). */
uint64_t tgt_rip_first(void);
uint64_t tgt_set_rip_data(uint64_t value);

/* First instruction: `cmpl $0x2a,K(%rip)` (83 3d rel32 imm8, 7 bytes: the RIP displacement is
 * followed by an immediate, so it is relative to the end of the immediate), then sete; returns 1.
 * Its neighbours in .rodata differ from 0x2a, so a displacement off by the immediate returns 0. */
int tgt_rip_cmp_imm(void);

/* `test %edi,%edi; je 1f; lea (%rdi,%rdi),%eax; ret; 1: mov $100,%eax; ret`: a conditional
 * jump (rel8) inside the first 5 bytes, which the relocator must widen. x == 0 -> 100, else 2x. */
int tgt_jcc_in_window(int x);

/* `xor %eax,%eax` (2 bytes), then the loop body at entry+2: `add %edi,%eax; dec %edi; jg entry+2;
 * ret`. The back edge targets entry+2, inside a 5-byte window at the entry: a jump there must be
 * refused and the probe take the int3 path. Returns 1 + 2 + ... + n for n >= 0. */
int tgt_loop_to_entry2(int n);

/* A 1-byte function: `ret` (c3). Shorter than a jump: int3 path. */
void tgt_one_byte(void);

/* A 3-byte function: `mov %edi,%eax; ret` (89 f8 c3), returns x. Shorter than a jump: int3. */
int tgt_three_byte(int x);

/* Uses all of xmm0-7: returns a + 2b + 3c + 4d + 5e + 6f + 7g + 8h. First instruction is a
 * RIP-relative `mulsd K(%rip),%xmm1`. Tests that the vector argument registers survive. */
double tgt_xmm_args(double a, double b, double c, double d, double e, double f, double g, double h);

/* Integer arguments in rdi rsi rdx rcx r8 r9 and doubles in xmm0-5, interleaved in the prototype;
 * returns 1a + 2b + 3c + ... + 12l (ints are sign-extended, the sum taken in double). */
double tgt_mixed_args(int a, double b, long c, double d, int e, double f, long g, double h, int i,
                      double j, long k, double l);

/* Returns 3x + 7. Leaf; also a probe target of its own. */
long tgt_helper(long x);

/* First instruction: `call tgt_helper` (e8 rel32, direct, not through the PLT), then `add $1`:
 * returns tgt_helper(x) + 1 = 3x + 8. A relocated window must make the call return to the
 * original code after the call, not into the trampoline. */
long tgt_call_first(long x);

/* First instruction: `jmp tgt_counted` (e9 rel32, forced 5 bytes): a tail call; returns x + 1.
 * A return probe on it sees tgt_counted's return. */
long tgt_tail_call(long x);

/* Returns a*1 + b*2 + c*3 + d*4 + e*5 + f*6 (for argument register views and usprobe_set_arg). */
long tgt_six_args(long a, long b, long c, long d, long e, long f);

/* First instruction: `mov 8(%rsp),%rax` (48 8b 44 24 08), then ret: returns g, the 7th argument
 * (on the stack). The relocated window must run at the original %rsp. */
long tgt_stack_arg(long a, long b, long c, long d, long e, long f, long g);

/* `cmp $3,%edi; ja default; ...; jmp *%rax` through a jump table in .rodata: an indirect jump,
 * so only the entry may take a jump (its window holds cmp and a ja rel8).
 * Returns 0 -> 10, 1 -> 20, 2 -> 30, 3 -> 40, anything else -> -1. */
int tgt_indirect_jump(int x);

/* Recursion through a local label (no PLT): returns n for n >= 0, n + 1 frames deep. For return
 * probes and the depth of the return stack. */
long tgt_recurse(long n);

/* The workhorse of counting tests, in assembly so that it cannot be inlined:
 * `push %rbp; mov %rsp,%rbp; lea 1(%rdi),%rax; pop %rbp; ret`; returns x + 1. */
long tgt_counted(long x);

/* Same result, x + 1, with a mid-function site for an instruction-flavour probe:
 *   +0 push %rbp; +1 mov %rsp,%rbp; +4 mov %rdi,%rax;
 *   +7 add $1,%rax (4 bytes); +0xb pop %rbp; +0xc ret
 * At the site %rax == x. Probe "libusprobe_targets.so:tgt_counted_mid+0x7". */
long tgt_counted_mid(long x);
extern const uint64_t tgt_counted_mid_site_offset; /* == TGT_COUNTED_MID_SITE_OFFSET */

/* The clobber test for instruction probes. Saves the callee-saved registers, fills the 16 quads
 * of the red zone with TGT_REDZONE_PATTERN + i, sets %rflags to TGT_CLOBBER_FLAGS, loads
 * xmm0-15 with known 128-bit values and every GPR with TGT_VAL_*, then at
 * tgt_clobber_mid + tgt_clobber_site_offset executes `lea TGT_CLOBBER_SITE_ADD(%r11),%r11`
 * (7 bytes; a jump fits in it). Then it checks flags, %rsp, every GPR (r11 must be
 * TGT_VAL_R11 + TGT_CLOBBER_SITE_ADD), xmm0-15, the red zone and DF. Returns 0 when everything
 * is intact, else the mask of TGT_BIT_* bits (1 << bit) of what was corrupted.
 * A probe there may use the instruction trampoline or the int3 path: both must pass. */
uint64_t tgt_clobber_mid(void);
extern const uint64_t tgt_clobber_site_offset; /* == TGT_CLOBBER_SITE_OFFSET */

/* The clobber test for function-entry (and return) probes, caller side. Saves its callee-saved
 * registers, loads rbx rbp r12-r15 with TGT_VAL_*, writes canaries into its frame, and calls
 * `fn(TGT_ENTRY_ARG0..ARG6, TGT_ENTRY_X0..X7)` with %rax, %r10, %r11 = TGT_ENTRY_RAX/R10/R11.
 * After the call it checks %rsp, the callee-saved registers, its frame and the stack argument,
 * %rdx, %xmm0, %xmm1 (TGT_ENTRY_RET_*) and the magic in %rax. Returns the callee's mask
 * (without the magic) | the caller's own bits: 0 when all intact. */
typedef uint64_t (*tgt_entry_fn)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                                 uint64_t, double, double, double, double, double, double, double,
                                 double);
uint64_t tgt_call_with_canaries(tgt_entry_fn fn);

/* The callee: `push %rbp; mov %rsp,%rbp; sub $16,%rsp; ...` checks %rax, %r10, %r11, the six
 * argument registers, the stack argument, xmm0-7 and the stack alignment against TGT_ENTRY_*,
 * then returns mask | TGT_ENTRY_MAGIC with %rdx, %xmm0, %xmm1 = TGT_ENTRY_RET_*. Called from C,
 * %rax, %r10 and %r11 are whatever the compiler left, so ignore TGT_BIT_RAX/R10/R11 there. */
uint64_t tgt_entry_callee(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e, uint64_t f,
                          uint64_t g, double x0, double x1, double x2, double x3, double x4,
                          double x5, double x6, double x7);

/* tgt_call_with_canaries(tgt_entry_callee), taking the callee's address directly. */
uint64_t tgt_clobber_check_entry(void);

#ifdef __cplusplus
}
#endif

/* Name of a TGT_BIT_* bit, for messages. */
static inline const char *tgt_bit_name(unsigned bit) {
  static const char *const kGpr[16] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                                       "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
  static const char *const kXmm[16] = {"xmm0",  "xmm1",  "xmm2",  "xmm3", "xmm4",  "xmm5",
                                       "xmm6",  "xmm7",  "xmm8",  "xmm9", "xmm10", "xmm11",
                                       "xmm12", "xmm13", "xmm14", "xmm15"};
  if (bit < 16) return kGpr[bit];
  if (bit >= TGT_BIT_XMM0 && bit < TGT_BIT_XMM0 + 16) return kXmm[bit - TGT_BIT_XMM0];
  switch (bit) {
    case TGT_BIT_FLAGS:
      return "rflags";
    case TGT_BIT_STACK:
      return "stack memory";
    case TGT_BIT_RETVAL:
      return "return value";
    case TGT_BIT_RET_RDX:
      return "returned rdx";
    case TGT_BIT_RET_XMM0:
      return "returned xmm0";
    case TGT_BIT_RET_XMM1:
      return "returned xmm1";
    default:
      return "?";
  }
}

#endif /* __ASSEMBLER__ */
#endif /* USPROBE_TESTS_TARGETS_TARGETS_H */
