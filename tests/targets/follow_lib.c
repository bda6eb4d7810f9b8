// libusprobe_follow_lib.so: a library that follow_test does NOT link. The test dlopens it by path,
// dlmopens a second copy of it and maps it by hand with mmap, to check that probes attached to its
// functions follow it into and out of the address space (tests/api/follow_test.cc).
//
// Built with -nostdlib and without sanitizers (tests/targets/CMakeLists.txt): it needs nothing, so
// a dlmopen'ed copy in a new namespace loads no second libc or libasan. Every function is leaf code
// that touches no memory, GOT entry or relocation: it runs correctly from a copy of the file mapped
// by hand (where the loader applied no relocation), as the NotifyMapping test does.

#define FOLLOW_API __attribute__((noinline, visibility("default")))

// follow_add(a, b) == a + b, the long way round: a is multiplied by an odd constant and back by its
// inverse modulo 2^32, and the empty asm statements keep the compiler from folding that away. The
// function is then well over 16 bytes, so a probe at its entry takes the jump path.
FOLLOW_API int follow_add(int a, int b) {
  unsigned x = (unsigned)a * 0x9e3779b1u;
  __asm__("" : "+r"(x));
  unsigned y = (unsigned)b ^ 0x5bd1e995u;
  __asm__("" : "+r"(y));
  return (int)(x * 0x0e8b2f51u + (y ^ 0x5bd1e995u));  // 0x9e3779b1 * 0x0e8b2f51 == 1 mod 2^32
}

// follow_tiny(x) == x + 1 in exactly 4 bytes (lea 1(%rdi),%eax; ret): too short for a 5-byte
// jump, so a probe at its entry takes the int3 path.
__asm__(R"(
  .text
  .globl follow_tiny
  .type follow_tiny, @function
  .p2align 4
follow_tiny:
  lea 1(%rdi), %eax
  ret
  .size follow_tiny, .-follow_tiny
)");
