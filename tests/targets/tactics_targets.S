// Functions for the site tactics of arch::prepare_site (tests/api/tactics_test.cc and its torture,
// tests/stress/tactics_test.cc): shapes where a jump over a whole 5-byte window cannot stand. Linked
// into the test executables themselves (an object library), which probe them as "exe:NAME".
// Declared in tactics_targets.h.
  .text
  // tac_loop_head(n) -> max(n, 1): the loop's head is the second instruction, so a branch lands
  // 2 bytes into any 5-byte window at the entry.
  .globl tac_loop_head
  .type tac_loop_head, @function
  .p2align 4
tac_loop_head:
  xor %eax, %eax  // +0, 2 bytes
1:
  inc %rax  // +2, the loop's head
  cmp %rdi, %rax
  jb 1b
  ret
  .size tac_loop_head, .-tac_loop_head
  int3; int3; int3; int3; int3; int3; int3; int3

  // tac_switch(x) -> 10, x + 20, 2x, 7 for x = 0..3, -1 otherwise; plus 1 (the common tail).
  // A jump table: the function jumps indirectly, so no site past its entry may cover another
  // instruction start.
  .globl tac_switch
  .type tac_switch, @function
  .p2align 4
tac_switch:
  cmp $3, %rdi
  ja 5f
  lea 9f(%rip), %rax
  movslq (%rax,%rdi,4), %rcx
  add %rcx, %rax
  jmp *%rax
  .globl tac_switch_case0
tac_switch_case0:
  mov $10, %eax  // 5 bytes: one-instruction jump
  jmp 6f
  .globl tac_switch_case1
tac_switch_case1:
  lea 20(%rdi), %eax  // 3 bytes: punned
  jmp 6f
2:
  lea (%rdi,%rdi), %eax
  jmp 6f
3:
  mov $7, %eax
  jmp 6f
5:
  mov $-1, %eax
  .globl tac_switch_tail
tac_switch_tail:
6:
  add $1, %eax  // 3 bytes, every case's way out: punned over `ret` and the padding
  ret
  .size tac_switch, .-tac_switch
  int3; int3; int3; int3; int3; int3; int3; int3
  .section .rodata
  .p2align 2
9:
  .long tac_switch_case0 - 9b, tac_switch_case1 - 9b, 2b - 9b, 3b - 9b
  .text

  // tac_tiny() -> 0: 3 bytes.
  .globl tac_tiny
  .type tac_tiny, @function
  .p2align 4
tac_tiny:
  xor %eax, %eax
  ret
  .size tac_tiny, .-tac_tiny
  int3; int3; int3; int3; int3; int3; int3; int3

  // tac_nop_jmp(x) -> x + 1 for x >= 0 (the nop runs once), x otherwise: the shape of a USDT site
  // in an out-of-line block (postgres's lwlock__condacquire): `nop; jmp back`, and a branch
  // target right after. The nop alone could only be punned with one byte written; the nop and the
  // jmp (3 bytes) are written together, borrowing the ret and one byte of padding.
  .globl tac_nop_jmp
  .type tac_nop_jmp, @function
  .p2align 4
tac_nop_jmp:
  mov %edi, %eax
  test %edi, %edi
  js 3f
  jmp 2f
1:
  add $1, %eax
  ret
2:
  .globl tac_nop_jmp_site
tac_nop_jmp_site:
  nop
  jmp 1b
3:
  ret
  .size tac_nop_jmp, .-tac_nop_jmp
  int3; int3; int3; int3; int3; int3; int3; int3

  .section .note.GNU-stack, "", @progbits
