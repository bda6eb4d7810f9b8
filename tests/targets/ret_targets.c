/* Return-probe targets (ret_targets.h). The empty asm statements keep each call a real call: a
 * result that passes through one can be neither folded into a loop (GCC turns
 * `return f(n - 1) + f(n - 2)` into one call and an accumulator loop) nor tail-called, so the
 * number of calls and returns is the one the source shows. */
#include "targets/ret_targets.h"

#define RET_API __attribute__((visibility("default"), noinline, noclone))

/* The compiler forgets what it knows about x: it must be computed, and in a register, here. */
#define OPAQUE(x) __asm__ volatile("" : "+r"(x))

RET_API long ret_fib(long n) {
  if (n < 2) return n;
  long a = ret_fib(n - 1);
  OPAQUE(a);
  long b = ret_fib(n - 2);
  OPAQUE(b);
  return a + b;
}

RET_API long ret_depth(long n) {
  if (n <= 1) return n;
  long r = ret_depth(n - 1);
  OPAQUE(r);
  return r + 1;
}

RET_API long ret_int(long x) {
  return x * 3 + 1;
}

RET_API void *ret_ptr(void *p) {
  return (char *)p + 8;
}

RET_API long ret_leaf(long x) {
  return x + 1;
}

RET_API double ret_double(double x) {
  return x * 2.5;
}

RET_API struct ret_two ret_pair(long a, long b) {
  struct ret_two r = {a + b, a - b};
  return r;
}

RET_API long ret_tail(long x) {
  return ret_leaf(x * 2);
}

RET_API long ret_jump_inner(jmp_buf *env, long n) {
  if (n & 1) longjmp(*env, (int)n);
  long r = n + 1;
  OPAQUE(r);
  return r;
}

RET_API long ret_jump_mid(jmp_buf *env, long n) {
  long r = ret_jump_inner(env, n);
  OPAQUE(r);
  return r + 10;
}

RET_API long ret_jump_outer(jmp_buf *env, long n) {
  long r = ret_jump_mid(env, n);
  OPAQUE(r);
  return r + 100;
}

RET_API long ret_call(long (*fn)(long), long x) {
  long r = fn(x);
  OPAQUE(r);
  return r + 1;
}
