/* Stack-trace targets (stack_targets.h). Built twice (tests/targets/CMakeLists.txt): with
 * STK_PREFIX stk_fp_ and -fno-omit-frame-pointer, and with STK_PREFIX stk_nofp_ and
 * -fomit-frame-pointer. Each result passes through an empty asm statement, so that every call
 * stays a real call with a return address (no tail call, no folding). */
#include "targets/stack_targets.h"

#ifndef STK_PREFIX
#error "build with -DSTK_PREFIX=stk_fp_ or -DSTK_PREFIX=stk_nofp_"
#endif

#define STK_PASTE_(a, b) a##b
#define STK_PASTE(a, b) STK_PASTE_(a, b)
#define STK(name) STK_PASTE(STK_PREFIX, name)
#define STK_API __attribute__((visibility("default"), noinline, noipa))
#define OPAQUE(x) __asm__ volatile("" : "+r"(x))

STK_API long STK(inner)(long x) {
  long r = x * 2;
  OPAQUE(r);
  return r;
}

STK_API long STK(middle)(long x) {
  long r = STK(inner)(x + 1);
  OPAQUE(r);
  return r + 1;
}

STK_API long STK(outer)(long x) {
  long r = STK(middle)(x + 1);
  OPAQUE(r);
  return r + 1;
}
