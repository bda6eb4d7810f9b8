/* Return-probe targets of libusprobe_targets.so (ret_targets.c): ordinary C, built at -O2 with
 * frame pointers, each function exported, noinline and noclone, so that every call in the source
 * is a real call of the exported entry and every return a real `ret` to the caller.
 *
 * They exist for tests/api/return_probes_test.cc: recursion with an exact number of calls, each
 * return register (%rax, %rax:%rdx, %xmm0) carrying a known value, a call chain left by longjmp,
 * a tail call, and a function that runs a callback (to make a probed function's body raise a
 * signal, throw, exit its thread or detach probes). Probe them as "libusprobe_targets.so:NAME". */
#ifndef USPROBE_TESTS_TARGETS_RET_TARGETS_H
#define USPROBE_TESTS_TARGETS_RET_TARGETS_H

#include <setjmp.h>

#ifdef __cplusplus
extern "C" {
#endif

/* fib(n) by the naive recursion: fib(0) = 0, fib(1) = 1. ret_fib(n) makes ret_fib_calls(n) =
 * 2 * fib(n + 1) - 1 calls of itself in all (21891 for n = 20, whose result is 6765). */
long ret_fib(long n);

/* n for n >= 1, by recursion n calls deep: ret_depth(n) calls ret_depth(n - 1) down to
 * ret_depth(1), so ret_depth(n) makes exactly n calls, all pending at once. n <= 0 returns n. */
long ret_depth(long n);

long ret_int(long x);        /* x * 3 + 1 */
void *ret_ptr(void *p);      /* (char *)p + 8 */
long ret_leaf(long x);       /* x + 1; calls nothing */
double ret_double(double x); /* x * 2.5, in %xmm0 */

/* Sixteen bytes returned in %rax (a) and %rdx (b). (Not named `struct ret_pair`: in C++ a function
 * of the same name would hide it, which -Wshadow refuses.) */
struct ret_two {
  long a, b;
};
struct ret_two ret_pair(long a, long b); /* {a + b, a - b} */

/* ret_tail(x) ends with a tail call (`jmp`) of ret_leaf(x * 2): returns x * 2 + 1, and ret_leaf
 * returns straight to ret_tail's caller. */
long ret_tail(long x);

/* A three-deep chain that longjmp leaves: ret_jump_outer calls ret_jump_mid calls ret_jump_inner.
 * For odd n, ret_jump_inner does longjmp(*env, (int)n): none of the three returns. For even n,
 * each returns normally: inner returns n + 1, mid inner's + 10, outer mid's + 100 (n + 111). */
long ret_jump_outer(jmp_buf *env, long n);
long ret_jump_mid(jmp_buf *env, long n);
long ret_jump_inner(jmp_buf *env, long n);

/* fn(x) + 1: a probed function whose body runs the caller's code (raise a signal, throw,
 * pthread_exit, exit, detach a probe, wait for another thread, ...). */
long ret_call(long (*fn)(long), long x);

#ifdef __cplusplus
}
#endif
#endif /* USPROBE_TESTS_TARGETS_RET_TARGETS_H */
