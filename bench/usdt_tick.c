/* The USDT probe of the benchmarks (usprobe_bench, usprobe_hitloop, usdt_calls): usdt_tick(x)
   passes the site of usprobe_bench:tick with x as its argument and returns x + 1.

   The code is what GCC -O2 emits for
       long usdt_tick(long x) { STAP_PROBE1(usprobe_bench, tick, x); return x + 1; }
   (nop, lea 1(%rdi),%rax, ret; argument -8@%rdi), written out with <sys/sdt.h>'s STAP_PROBE_ASM so
   that usdt_tick_site names the probe's nop exactly: the kernel's uprobe goes at its file offset.
   Each program links its own copy and attaches "usdt:exe:usprobe_bench:tick". Hidden: the address
   is the code itself, never a PLT stub. */
#include "usdt_tick.h"

#include <sys/sdt.h>

/* The operand is stringified as written: clang-format would space it ("- 8 @ % rdi"). */
// clang-format off
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl usdt_tick\n"
    ".hidden usdt_tick\n"
    ".type usdt_tick, @function\n"
    "usdt_tick:\n"
    ".globl usdt_tick_site\n"
    ".hidden usdt_tick_site\n"
    "usdt_tick_site:\n"
    STAP_PROBE_ASM(usprobe_bench, tick, -8@%rdi)
    "lea 1(%rdi), %rax\n"
    "ret\n"
    ".size usdt_tick, .-usdt_tick\n");
// clang-format on
