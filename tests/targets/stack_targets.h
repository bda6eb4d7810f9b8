/* Stack-trace targets of libusprobe_targets.so (stack_targets.c, stack_targets.S), for
 * tests/api/stack_test.cc: a three-deep call chain, outer -> middle -> inner, built twice from one
 * source: stk_fp_* with frame pointers (-fno-omit-frame-pointer) and stk_nofp_* without
 * (-fomit-frame-pointer, as distributions build their packages). Each function is exported,
 * noinline and noipa, and keeps its call a real `call` (no tail call): a stack taken in inner is
 * [inner, middle, outer, the caller of outer, ...]. Probe them as "libusprobe_targets.so:NAME". */
#ifndef USPROBE_TESTS_TARGETS_STACK_TARGETS_H
#define USPROBE_TESTS_TARGETS_STACK_TARGETS_H

#ifdef __cplusplus
extern "C" {
#endif

/* outer(x) = middle(x + 1) + 1, middle(x) = inner(x + 1) + 1, inner(x) = x * 2: outer(x) is
 * 2 * x + 6. */
long stk_fp_outer(long x);
long stk_fp_middle(long x);
long stk_fp_inner(long x);
long stk_nofp_outer(long x);
long stk_nofp_middle(long x);
long stk_nofp_inner(long x);

/* fn(x) called with %rbp set to `bad_fp` (hand-written, with CFI; stack_targets.S): a caller whose
 * frame-pointer chain is garbage, as code without frame pointers leaves it. Returns fn(x). */
long stk_bad_fp(long x, long (*fn)(long), unsigned long bad_fp);

#ifdef __cplusplus
}
#endif
#endif /* USPROBE_TESTS_TARGETS_STACK_TARGETS_H */
