// libusprobe_follow_lib_b.so: the second library of DlopenDlcloseStress
// (tests/stress/follow_test.cc), the one that only its dlopen/dlclose thread holds, so that every
// round really maps and unmaps it.
// Built like follow_lib.c: -nostdlib, no sanitizers, pure leaf functions.

#define FOLLOW_API __attribute__((noinline, visibility("default")))

// follow_b_mul(a, b) == a * b (modulo 2^32), through a multiplication by an odd constant and its
// inverse that the empty asm statements keep from being folded: well over 16 bytes (jump path).
FOLLOW_API int follow_b_mul(int a, int b) {
  unsigned x = (unsigned)a * 0x85ebca6bu;
  __asm__("" : "+r"(x));
  unsigned y = (unsigned)b;
  __asm__("" : "+r"(y));
  return (int)(x * y * 0xa5cb9243u);  // 0x85ebca6b * 0xa5cb9243 == 1 mod 2^32
}

// follow_b_tiny(x) == x + 2 in exactly 4 bytes (lea 2(%rdi),%eax; ret): the int3 path.
__asm__(R"(
  .text
  .globl follow_b_tiny
  .type follow_b_tiny, @function
  .p2align 4
follow_b_tiny:
  lea 2(%rdi), %eax
  ret
  .size follow_b_tiny, .-follow_b_tiny
)");
