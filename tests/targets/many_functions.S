/* libusprobe_many.so: 10,000 distinct tiny functions for the batch attach/detach benchmark
 * (bench/scale_bench.cc) and the memory test of attach/detach cycles (tests/api/lifetimes_test.cc).
 * The assembler writes them out from one macro (.rept), so the source stays a page long: many_fn_0 .. many_fn_9999, each `many_fn_N(x) -> x + 1`, the same shape as
 * tgt_counted (push %rbp; mov %rsp,%rbp; lea 1(%rdi),%rax; pop %rbp; ret), exported, typed,
 * sized and aligned to 16. many_table holds their addresses in order, so the benchmark can
 * call every one of them without 10,000 dlsym()s. */

  .altmacro  /* so that `%i` below passes the value of i, not its name */

  .macro many_fn n
  .globl many_fn_\n
  .type many_fn_\n, @function
  .p2align 4
many_fn_\n:
  push %rbp
  mov %rsp, %rbp
  lea 1(%rdi), %rax
  pop %rbp
  ret
  .size many_fn_\n, .-many_fn_\n
  .pushsection .data.rel.ro
  .quad many_fn_\n
  .popsection
  .endm

  .set MANY_COUNT, 10000

  .pushsection .data.rel.ro
  .globl many_table
  .type many_table, @object
  .p2align 3
many_table:
  .popsection

  .text
  .set i, 0
  .rept MANY_COUNT
  many_fn %i
  .set i, i + 1
  .endr

  .pushsection .data.rel.ro
  .size many_table, .-many_table
  .globl many_count
  .type many_count, @object
many_count:
  .quad MANY_COUNT
  .size many_count, 8
  .popsection

  .section .note.GNU-stack, "", @progbits
