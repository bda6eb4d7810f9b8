/* libusprobe_targets.so: tricky functions to probe. See targets.h for what each one is for.
 *
 * Conventions here:
 *  - every function is `.globl` with `.type @function` and an exact `.size`, and is aligned to 16
 *    (the padding between functions lies outside every symbol);
 *  - calls and jumps between these functions go through local aliases (.L*_local), so they are
 *    direct rel32 branches, not PLT calls;
 *  - the offsets of mid-function sites are checked here against targets.h (.if/.error), and
 *    exported as data (tgt_*_offset). */
#include "targets.h"

#define FUNC(name)          \
  .globl name;              \
  .type name, @function;    \
  .p2align 4;               \
  name:

#define END(name) .size name, .- name

/* Record a corruption: set bit `bit` in the quad mask at `slot`. bts only changes CF. */
#define BAD(bit, slot) btsq $(bit), slot

  .text

/* ---- tgt_endbr64(a, b) -> a + b -------------------------------------------------------------- */
FUNC(tgt_endbr64)
  endbr64
  push %rbp
  mov %rsp, %rbp
  lea (%rdi,%rsi), %rax
  pop %rbp
  ret
END(tgt_endbr64)

/* ---- tgt_rip_first() -> tgt_rip_data ------------------------------------------------------- */
FUNC(tgt_rip_first)
  mov tgt_rip_data(%rip), %rax
  ret
END(tgt_rip_first)

/* tgt_set_rip_data(v) -> previous value */
FUNC(tgt_set_rip_data)
  mov tgt_rip_data(%rip), %rax
  mov %rdi, tgt_rip_data(%rip)
  ret
END(tgt_set_rip_data)

/* ---- tgt_rip_cmp_imm() -> 1 ---------------------------------------------------------------- */
FUNC(tgt_rip_cmp_imm)
  cmpl $0x2a, .Lconst42(%rip)
  sete %al
  movzbl %al, %eax
  ret
END(tgt_rip_cmp_imm)

/* ---- tgt_jcc_in_window(x) -> x == 0 ? 100 : 2x ---------------------------------------------- */
FUNC(tgt_jcc_in_window)
  test %edi, %edi
  je 1f
  lea (%rdi,%rdi), %eax
  ret
1:
  mov $100, %eax
  ret
END(tgt_jcc_in_window)

/* ---- tgt_loop_to_entry2(n) -> 1 + ... + n -------------------------------------------------- */
FUNC(tgt_loop_to_entry2)
  xor %eax, %eax
.Lloop_entry2:
  add %edi, %eax
  dec %edi
  jg .Lloop_entry2
  ret
END(tgt_loop_to_entry2)
  .if (.Lloop_entry2 - tgt_loop_to_entry2) != 2
  .error "tgt_loop_to_entry2: the loop head must be at entry+2"
  .endif

/* ---- tgt_one_byte(), tgt_three_byte(x) ------------------------------------------------------ */
FUNC(tgt_one_byte)
  ret
END(tgt_one_byte)

FUNC(tgt_three_byte)
  mov %edi, %eax
  ret
END(tgt_three_byte)
  .if (. - tgt_three_byte) != 3
  .error "tgt_three_byte must be 3 bytes long"
  .endif

/* ---- tgt_xmm_args(a..h) -> a + 2b + ... + 8h ------------------------------------------------ */
FUNC(tgt_xmm_args)
  mulsd .Ld2(%rip), %xmm1
  mulsd .Ld3(%rip), %xmm2
  mulsd .Ld4(%rip), %xmm3
  mulsd .Ld5(%rip), %xmm4
  mulsd .Ld6(%rip), %xmm5
  mulsd .Ld7(%rip), %xmm6
  mulsd .Ld8(%rip), %xmm7
  addsd %xmm1, %xmm0
  addsd %xmm2, %xmm0
  addsd %xmm3, %xmm0
  addsd %xmm4, %xmm0
  addsd %xmm5, %xmm0
  addsd %xmm6, %xmm0
  addsd %xmm7, %xmm0
  ret
END(tgt_xmm_args)

/* ---- tgt_mixed_args(a:int rdi, b:xmm0, c:long rsi, d:xmm1, e:int rdx, f:xmm2, g:long rcx,
 *                     h:xmm3, i:int r8, j:xmm4, k:long r9, l:xmm5) -> 1a + 2b + ... + 12l ---- */
FUNC(tgt_mixed_args)
  movslq %edi, %rax           /* 1a */
  lea (%rsi,%rsi,2), %r10     /* 3c */
  add %r10, %rax
  movslq %edx, %r10
  lea (%r10,%r10,4), %r10     /* 5e */
  add %r10, %rax
  imul $7, %rcx, %r10         /* 7g */
  add %r10, %rax
  movslq %r8d, %r10
  imul $9, %r10, %r10         /* 9i */
  add %r10, %rax
  imul $11, %r9, %r10         /* 11k */
  add %r10, %rax
  cvtsi2sd %rax, %xmm6
  addsd %xmm0, %xmm0          /* 2b */
  mulsd .Ld4(%rip), %xmm1     /* 4d */
  mulsd .Ld6(%rip), %xmm2     /* 6f */
  mulsd .Ld8(%rip), %xmm3     /* 8h */
  mulsd .Ld10(%rip), %xmm4    /* 10j */
  mulsd .Ld12(%rip), %xmm5    /* 12l */
  addsd %xmm6, %xmm0
  addsd %xmm1, %xmm0
  addsd %xmm2, %xmm0
  addsd %xmm3, %xmm0
  addsd %xmm4, %xmm0
  addsd %xmm5, %xmm0
  ret
END(tgt_mixed_args)

/* ---- tgt_helper(x) -> 3x + 7; tgt_call_first(x) -> tgt_helper(x) + 1 ----------------------- */
FUNC(tgt_helper)
.Ltgt_helper_local:
  lea 7(%rdi,%rdi,2), %rax
  ret
END(tgt_helper)

FUNC(tgt_call_first)
  call .Ltgt_helper_local     /* e8 rel32; %rsp is 16-aligned in tgt_helper, which is a leaf */
  add $1, %rax
  ret
END(tgt_call_first)
  .if (. - tgt_call_first) != 10
  .error "tgt_call_first: expected `call rel32; add $1,%rax (4 bytes); ret`"
  .endif

/* ---- tgt_tail_call(x) -> tgt_counted(x) ----------------------------------------------------- */
FUNC(tgt_tail_call)
  {disp32} jmp .Ltgt_counted_local
END(tgt_tail_call)

/* ---- tgt_six_args(a..f) -> 1a + 2b + 3c + 4d + 5e + 6f -------------------------------------- */
FUNC(tgt_six_args)
  lea (%rdi,%rsi,2), %rax
  lea (%rdx,%rdx,2), %r10
  add %r10, %rax
  lea (%rax,%rcx,4), %rax
  lea (%r8,%r8,4), %r10
  add %r10, %rax
  imul $6, %r9, %r10
  add %r10, %rax
  ret
END(tgt_six_args)

/* ---- tgt_stack_arg(a..g) -> g --------------------------------------------------------------- */
FUNC(tgt_stack_arg)
  mov 8(%rsp), %rax
  ret
END(tgt_stack_arg)

/* ---- tgt_indirect_jump(x) ------------------------------------------------------------------- */
FUNC(tgt_indirect_jump)
  cmp $3, %edi
  ja .Lij_default
  mov %edi, %edi
  lea .Lij_table(%rip), %rax
  movslq (%rax,%rdi,4), %rdx
  add %rdx, %rax
  jmp *%rax
.Lij_0:
  mov $10, %eax
  ret
.Lij_1:
  mov $20, %eax
  ret
.Lij_2:
  mov $30, %eax
  ret
.Lij_3:
  mov $40, %eax
  ret
.Lij_default:
  mov $-1, %eax
  ret
END(tgt_indirect_jump)

  .section .rodata
  .p2align 2
.Lij_table:
  .long .Lij_0 - .Lij_table
  .long .Lij_1 - .Lij_table
  .long .Lij_2 - .Lij_table
  .long .Lij_3 - .Lij_table
  .text

/* ---- tgt_recurse(n) -> n -------------------------------------------------------------------- */
FUNC(tgt_recurse)
.Ltgt_recurse_local:
  push %rbp
  mov %rsp, %rbp
  xor %eax, %eax
  test %rdi, %rdi
  jle 1f
  dec %rdi
  call .Ltgt_recurse_local
  inc %rax
1:
  pop %rbp
  ret
END(tgt_recurse)

/* ---- tgt_counted(x) -> x + 1 ---------------------------------------------------------------- */
FUNC(tgt_counted)
.Ltgt_counted_local:
  push %rbp
  mov %rsp, %rbp
  lea 1(%rdi), %rax
  pop %rbp
  ret
END(tgt_counted)

/* ---- tgt_counted_mid(x) -> x + 1, site at +7 ------------------------------------------------ */
FUNC(tgt_counted_mid)
  push %rbp
  mov %rsp, %rbp
  mov %rdi, %rax
.Lcounted_mid_site:
  add $1, %rax
  pop %rbp
  ret
END(tgt_counted_mid)
  .if (.Lcounted_mid_site - tgt_counted_mid) != TGT_COUNTED_MID_SITE_OFFSET
  .error "tgt_counted_mid: site offset differs from TGT_COUNTED_MID_SITE_OFFSET"
  .endif

/* ---- tgt_clobber_mid() -> 0 or mask ----------------------------------------------------------
 * Frame after the prologue (%rsp 16-aligned):
 *   0(%rsp) the value of %rsp itself    8(%rsp) spill of %rax    16(%rsp) the mask */
#define CM_SELF 0(%rsp)
#define CM_RAX 8(%rsp)
#define CM_MASK 16(%rsp)

/* cmp a GPR with its expected quad (RIP-relative); if it differs, set `bit` in the mask quad at
 * `slot`. cmp and bts change only the flags. */
.macro check_reg reg, expect, bit, slot
  cmp \expect(%rip), %\reg
  je 1f
  BAD(\bit, \slot)
1:
.endm

FUNC(tgt_clobber_mid)
  push %rbp
  push %rbx
  push %r12
  push %r13
  push %r14
  push %r15
  sub $24, %rsp
  mov %rsp, CM_SELF
  movq $0, CM_MASK
  /* flags: CF=1 PF=0 AF=1 ZF=0 SF=1 OF=1 */
  pushq $TGT_CLOBBER_FLAGS
  popfq
  /* the red zone (mov does not touch the flags from here to the site) */
  .set i, 1
  .rept 16
  movabs $(TGT_REDZONE_PATTERN + i), %rax
  mov %rax, -8*i(%rsp)
  .set i, i + 1
  .endr
  /* xmm0-15 */
  .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
  movdqa .Lclobber_xmm + 16*\n(%rip), %xmm\n
  .endr
  /* every GPR but %rsp */
  movabs $TGT_VAL_RAX, %rax
  movabs $TGT_VAL_RBX, %rbx
  movabs $TGT_VAL_RCX, %rcx
  movabs $TGT_VAL_RDX, %rdx
  movabs $TGT_VAL_RSI, %rsi
  movabs $TGT_VAL_RDI, %rdi
  movabs $TGT_VAL_RBP, %rbp
  movabs $TGT_VAL_R8, %r8
  movabs $TGT_VAL_R9, %r9
  movabs $TGT_VAL_R10, %r10
  movabs $TGT_VAL_R11, %r11
  movabs $TGT_VAL_R12, %r12
  movabs $TGT_VAL_R13, %r13
  movabs $TGT_VAL_R14, %r14
  movabs $TGT_VAL_R15, %r15
.Lclobber_site:
  lea TGT_CLOBBER_SITE_ADD(%r11), %r11
.Lclobber_site_end:
  /* flags first, before anything changes them: lahf gives SF ZF 0 AF 0 PF 1 CF, seto OF */
  mov %rax, CM_RAX
  lahf
  seto %al
  cmp $(((TGT_CLOBBER_FLAGS & 0xff) << 8) | ((TGT_CLOBBER_FLAGS >> 11) & 1)), %ax
  je 1f
  BAD(TGT_BIT_FLAGS, CM_MASK)
1:
  mov CM_RAX, %rax
  cmp %rsp, CM_SELF
  je 1f
  BAD(TGT_BIT_RSP, CM_MASK)
1:
  check_reg rax, .Lcm_rax, TGT_BIT_RAX, CM_MASK
  check_reg rbx, .Lcm_rbx, TGT_BIT_RBX, CM_MASK
  check_reg rcx, .Lcm_rcx, TGT_BIT_RCX, CM_MASK
  check_reg rdx, .Lcm_rdx, TGT_BIT_RDX, CM_MASK
  check_reg rsi, .Lcm_rsi, TGT_BIT_RSI, CM_MASK
  check_reg rdi, .Lcm_rdi, TGT_BIT_RDI, CM_MASK
  check_reg rbp, .Lcm_rbp, TGT_BIT_RBP, CM_MASK
  check_reg r8, .Lcm_r8, TGT_BIT_R8, CM_MASK
  check_reg r9, .Lcm_r9, TGT_BIT_R9, CM_MASK
  check_reg r10, .Lcm_r10, TGT_BIT_R10, CM_MASK
  check_reg r11, .Lcm_r11, TGT_BIT_R11, CM_MASK
  check_reg r12, .Lcm_r12, TGT_BIT_R12, CM_MASK
  check_reg r13, .Lcm_r13, TGT_BIT_R13, CM_MASK
  check_reg r14, .Lcm_r14, TGT_BIT_R14, CM_MASK
  check_reg r15, .Lcm_r15, TGT_BIT_R15, CM_MASK
  /* xmm0-15, all 128 bits (pcmpeqb turns equal bytes into 0xff) */
  .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
  pcmpeqb .Lclobber_xmm + 16*\n(%rip), %xmm\n
  pmovmskb %xmm\n, %eax
  cmp $0xffff, %eax
  je 1f
  BAD(TGT_BIT_XMM0 + \n, CM_MASK)
1:
  .endr
  /* the red zone */
  .set i, 1
  .rept 16
  movabs $(TGT_REDZONE_PATTERN + i), %rax
  cmp %rax, -8*i(%rsp)
  je 1f
  BAD(TGT_BIT_STACK, CM_MASK)
1:
  .set i, i + 1
  .endr
  /* DF must be clear (the red zone is checked, so pushfq may write there now) */
  pushfq
  pop %rax
  test $0x400, %eax
  je 1f
  cld
  BAD(TGT_BIT_FLAGS, CM_MASK)
1:
  mov CM_MASK, %rax
  add $24, %rsp
  pop %r15
  pop %r14
  pop %r13
  pop %r12
  pop %rbx
  pop %rbp
  ret
END(tgt_clobber_mid)
  .if (.Lclobber_site - tgt_clobber_mid) != TGT_CLOBBER_SITE_OFFSET
  .error "tgt_clobber_mid: site offset differs from TGT_CLOBBER_SITE_OFFSET"
  .endif
  .if (.Lclobber_site_end - .Lclobber_site) != 7
  .error "tgt_clobber_mid: the site instruction must be 7 bytes"
  .endif

/* ---- tgt_entry_callee(a..g, x0..x7) -> mask | TGT_ENTRY_MAGIC ------------------------------
 * Frame: 0(%rbp) saved %rbp, 8(%rbp) return address, 16(%rbp) g; -16(%rbp) = 0(%rsp) the mask. */
#define EC_MASK 0(%rsp)

FUNC(tgt_entry_callee)
.Ltgt_entry_callee_local:
  push %rbp
  mov %rsp, %rbp
  sub $16, %rsp
  movq $0, EC_MASK
  check_reg rax, .Le_rax, TGT_BIT_RAX, EC_MASK
  check_reg r10, .Le_r10, TGT_BIT_R10, EC_MASK
  check_reg r11, .Le_r11, TGT_BIT_R11, EC_MASK
  check_reg rdi, .Le_arg0, TGT_BIT_RDI, EC_MASK
  check_reg rsi, .Le_arg1, TGT_BIT_RSI, EC_MASK
  check_reg rdx, .Le_arg2, TGT_BIT_RDX, EC_MASK
  check_reg rcx, .Le_arg3, TGT_BIT_RCX, EC_MASK
  check_reg r8, .Le_arg4, TGT_BIT_R8, EC_MASK
  check_reg r9, .Le_arg5, TGT_BIT_R9, EC_MASK
  mov 16(%rbp), %rax
  check_reg rax, .Le_arg6, TGT_BIT_STACK, EC_MASK
  /* at the entry %rsp + 8 was 16-aligned: %rbp is */
  test $15, %bpl
  je 1f
  BAD(TGT_BIT_RSP, EC_MASK)
1:
  .irp n, 0,1,2,3,4,5,6,7
  movq %xmm\n, %rax
  check_reg rax, .Le_x0+8*\n, TGT_BIT_XMM0+\n, EC_MASK
  .endr
  mov EC_MASK, %rax
  movabs $TGT_ENTRY_MAGIC, %rcx
  or %rcx, %rax
  movabs $TGT_ENTRY_RET_RDX, %rdx
  movsd .Le_ret_x0(%rip), %xmm0
  movsd .Le_ret_x1(%rip), %xmm1
  leave
  ret
END(tgt_entry_callee)
#undef EC_MASK

/* ---- tgt_call_with_canaries(fn) -> mask ----------------------------------------------------
 * Frame after the prologue (%rsp 16-aligned, as the call needs):
 *   0 the 7th argument   8 the value of %rsp   16 fn   24 the mask   32 spill of %rax
 *   40, 48, 56 canaries (TGT_STACK_CANARY + 1..3) */
#define CC_ARG6 0(%rsp)
#define CC_SELF 8(%rsp)
#define CC_FN 16(%rsp)
#define CC_MASK 24(%rsp)
#define CC_RAX 32(%rsp)

FUNC(tgt_call_with_canaries)
.Ltgt_call_with_canaries_local:
  push %rbp
  mov %rsp, %rbp
  push %rbx
  push %r12
  push %r13
  push %r14
  push %r15
  sub $72, %rsp
  mov %rdi, CC_FN
  mov %rsp, CC_SELF
  movq $0, CC_MASK
  movabs $TGT_ENTRY_ARG6, %rax
  mov %rax, CC_ARG6
  .irp k, 1,2,3
  movabs $(TGT_STACK_CANARY + \k), %rax
  mov %rax, 32+8*\k(%rsp)
  .endr
  .irp n, 0,1,2,3,4,5,6,7
  movsd .Le_x0 + 8*\n(%rip), %xmm\n
  .endr
  movabs $TGT_VAL_RBX, %rbx
  movabs $TGT_VAL_RBP, %rbp
  movabs $TGT_VAL_R12, %r12
  movabs $TGT_VAL_R13, %r13
  movabs $TGT_VAL_R14, %r14
  movabs $TGT_VAL_R15, %r15
  movabs $TGT_ENTRY_ARG0, %rdi
  movabs $TGT_ENTRY_ARG1, %rsi
  movabs $TGT_ENTRY_ARG2, %rdx
  movabs $TGT_ENTRY_ARG3, %rcx
  movabs $TGT_ENTRY_ARG4, %r8
  movabs $TGT_ENTRY_ARG5, %r9
  movabs $TGT_ENTRY_R10, %r10
  movabs $TGT_ENTRY_R11, %r11
  movabs $TGT_ENTRY_RAX, %rax
  call *CC_FN
  mov %rax, CC_RAX
  cmp %rsp, CC_SELF
  je 1f
  BAD(TGT_BIT_RSP, CC_MASK)
1:
  check_reg rbx, .Lcm_rbx, TGT_BIT_RBX, CC_MASK
  check_reg rbp, .Lcm_rbp, TGT_BIT_RBP, CC_MASK
  check_reg r12, .Lcm_r12, TGT_BIT_R12, CC_MASK
  check_reg r13, .Lcm_r13, TGT_BIT_R13, CC_MASK
  check_reg r14, .Lcm_r14, TGT_BIT_R14, CC_MASK
  check_reg r15, .Lcm_r15, TGT_BIT_R15, CC_MASK
  check_reg rdx, .Le_ret_rdx, TGT_BIT_RET_RDX, CC_MASK
  movq %xmm0, %rax
  check_reg rax, .Le_ret_x0, TGT_BIT_RET_XMM0, CC_MASK
  movq %xmm1, %rax
  check_reg rax, .Le_ret_x1, TGT_BIT_RET_XMM1, CC_MASK
  mov CC_ARG6, %rax
  check_reg rax, .Le_arg6, TGT_BIT_STACK, CC_MASK
  .irp k, 1,2,3
  movabs $(TGT_STACK_CANARY + \k), %rax
  cmp %rax, 32+8*\k(%rsp)
  je 1f
  BAD(TGT_BIT_STACK, CC_MASK)
1:
  .endr
  /* the callee's answer: TGT_ENTRY_MAGIC in the top 16 bits, its mask below */
  mov CC_RAX, %rax
  mov %rax, %rcx
  shr $48, %rcx
  cmp $(TGT_ENTRY_MAGIC >> 48), %rcx
  je 2f
  BAD(TGT_BIT_RETVAL, CC_MASK)
  jmp 3f
2:
  shl $16, %rax
  shr $16, %rax
  or %rax, CC_MASK
3:
  mov CC_MASK, %rax
  add $72, %rsp
  pop %r15
  pop %r14
  pop %r13
  pop %r12
  pop %rbx
  pop %rbp
  ret
END(tgt_call_with_canaries)

/* ---- tgt_clobber_check_entry() -------------------------------------------------------------- */
FUNC(tgt_clobber_check_entry)
  lea .Ltgt_entry_callee_local(%rip), %rdi
  jmp .Ltgt_call_with_canaries_local
END(tgt_clobber_check_entry)

/* ---- data ----------------------------------------------------------------------------------- */

  .data
  .p2align 3
  .type tgt_rip_data, @object
tgt_rip_data:                         /* local: read RIP-relative, changed by tgt_set_rip_data */
  .quad TGT_RIP_DATA_INITIAL
  .size tgt_rip_data, 8

  .section .rodata
  .globl tgt_counted_mid_site_offset
  .type tgt_counted_mid_site_offset, @object
  .p2align 3
tgt_counted_mid_site_offset:
  .quad .Lcounted_mid_site - tgt_counted_mid
  .size tgt_counted_mid_site_offset, 8

  .globl tgt_clobber_site_offset
  .type tgt_clobber_site_offset, @object
tgt_clobber_site_offset:
  .quad .Lclobber_site - tgt_clobber_mid
  .size tgt_clobber_site_offset, 8

  /* 0x2a with neighbours that are not: a displacement off by a few bytes reads something else */
  .p2align 3
  .long 0x2b2b2b2b, 0x11111111
.Lconst42:
  .long 0x2a
  .long 0x2c2c2c2c, 0x22222222

  .p2align 3
.Ld2: .double 2.0
.Ld3: .double 3.0
.Ld4: .double 4.0
.Ld5: .double 5.0
.Ld6: .double 6.0
.Ld7: .double 7.0
.Ld8: .double 8.0
.Ld10: .double 10.0
.Ld12: .double 12.0

  /* expected GPRs after the tgt_clobber_mid site (also the callee-saved canaries) */
.Lcm_rax: .quad TGT_VAL_RAX
.Lcm_rbx: .quad TGT_VAL_RBX
.Lcm_rcx: .quad TGT_VAL_RCX
.Lcm_rdx: .quad TGT_VAL_RDX
.Lcm_rsi: .quad TGT_VAL_RSI
.Lcm_rdi: .quad TGT_VAL_RDI
.Lcm_rbp: .quad TGT_VAL_RBP
.Lcm_r8: .quad TGT_VAL_R8
.Lcm_r9: .quad TGT_VAL_R9
.Lcm_r10: .quad TGT_VAL_R10
.Lcm_r11: .quad TGT_VAL_R11 + TGT_CLOBBER_SITE_ADD
.Lcm_r12: .quad TGT_VAL_R12
.Lcm_r13: .quad TGT_VAL_R13
.Lcm_r14: .quad TGT_VAL_R14
.Lcm_r15: .quad TGT_VAL_R15

  /* tgt_entry_callee's expectations and answers */
.Le_rax: .quad TGT_ENTRY_RAX
.Le_r10: .quad TGT_ENTRY_R10
.Le_r11: .quad TGT_ENTRY_R11
.Le_arg0: .quad TGT_ENTRY_ARG0
.Le_arg1: .quad TGT_ENTRY_ARG1
.Le_arg2: .quad TGT_ENTRY_ARG2
.Le_arg3: .quad TGT_ENTRY_ARG3
.Le_arg4: .quad TGT_ENTRY_ARG4
.Le_arg5: .quad TGT_ENTRY_ARG5
.Le_arg6: .quad TGT_ENTRY_ARG6
.Le_x0:
  .double TGT_ENTRY_X0, TGT_ENTRY_X1, TGT_ENTRY_X2, TGT_ENTRY_X3
  .double TGT_ENTRY_X4, TGT_ENTRY_X5, TGT_ENTRY_X6, TGT_ENTRY_X7
.Le_ret_rdx: .quad TGT_ENTRY_RET_RDX
.Le_ret_x0: .double TGT_ENTRY_RET_X0
.Le_ret_x1: .double TGT_ENTRY_RET_X1

  /* xmm0-15 at the tgt_clobber_mid site: 16 distinct 128-bit values */
  .p2align 4
.Lclobber_xmm:
  .quad 0xed09ed5feac1bd33, 0x23dea08d16ef48b7
  .quad 0xbebf3792bc54aa36, 0xb097cc34462cd68e
  .quad 0x907481c58de79739, 0x3d50f7db756a6465
  .quad 0x6229cbf85f7a843c, 0xca0a2382a4a7f23c
  .quad 0x33df162b310d713f, 0x56c34f29d3e58013
  .quad 0x0594605e02a05e42, 0xe37c7ad103230dea
  .quad 0xd749aa90d4334b45, 0x7035a67832609bc1
  .quad 0xa8fef4c3a5c63848, 0xfceed21f619e2998
  .quad 0x7ab43ef67759254b, 0x89a7fdc690dbb76f
  .quad 0x4c69892948ec124e, 0x1661296dc0194546
  .quad 0x1e1ed35c1a7eff51, 0xa31a5514ef56d31d
  .quad 0xefd41d8eec11ec54, 0x2fd380bc1e9460f4
  .quad 0xc18967c1bda4d957, 0xbc8cac634dd1eecb
  .quad 0x933eb1f48f37c65a, 0x4945d80a7d0f7ca2
  .quad 0x64f3fc2760cab35d, 0xd5ff03b1ac4d0a79
  .quad 0x36a9465a325da060, 0x62b82f58db8a9850

  .section .note.GNU-stack, "", @progbits
