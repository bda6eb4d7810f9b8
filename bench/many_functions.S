/* libusprobe_bench_many.so: 10,000 distinct tiny functions for the batch attach/detach benchmark
 * (bench/scale_bench.cc). The assembler writes them out from one macro (.rept), so the source stays
 * a page long: bench_fn_0 .. bench_fn_9999, each `bench_fn_N(x) -> x + 1`, the same shape as
 * tgt_counted (push %rbp; mov %rsp,%rbp; lea 1(%rdi),%rax; pop %rbp; ret), exported, typed,
 * sized and aligned to 16. bench_many_table holds their addresses in order, so the benchmark can
 * call every one of them without 10,000 dlsym()s. */

  .altmacro  /* so that `%i` below passes the value of i, not its name */

  .macro bench_fn n
  .globl bench_fn_\n
  .type bench_fn_\n, @function
  .p2align 4
bench_fn_\n:
  push %rbp
  mov %rsp, %rbp
  lea 1(%rdi), %rax
  pop %rbp
  ret
  .size bench_fn_\n, .-bench_fn_\n
  .pushsection .data.rel.ro
  .quad bench_fn_\n
  .popsection
  .endm

  .set BENCH_MANY_COUNT, 10000

  .pushsection .data.rel.ro
  .globl bench_many_table
  .type bench_many_table, @object
  .p2align 3
bench_many_table:
  .popsection

  .text
  .set i, 0
  .rept BENCH_MANY_COUNT
  bench_fn %i
  .set i, i + 1
  .endr

  .pushsection .data.rel.ro
  .size bench_many_table, .-bench_many_table
  .globl bench_many_count
  .type bench_many_count, @object
bench_many_count:
  .quad BENCH_MANY_COUNT
  .size bench_many_count, 8
  .popsection

  .section .note.GNU-stack, "", @progbits
