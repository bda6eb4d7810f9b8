// A Linux system call on x86-64 without libc: the `syscall` instruction with the kernel's register
// convention. The (linux, x86_64) pair's, for code that may run inside a probed libc function (a
// thread's first hit registers itself), where calling `syscall`, `mmap` or touching errno could
// hit a probe again. os_inline.h builds the named calls of core/os.h on it.
#pragma once

#include <sys/syscall.h>

namespace usprobe::os {

inline long raw_syscall6(long nr, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0, long a5 = 0,
                         long a6 = 0) {
  long ret;
  register long r10 asm("r10") = a4;
  register long r8 asm("r8") = a5;
  register long r9 asm("r9") = a6;
  asm volatile("syscall"
               : "=a"(ret)
               : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
               : "rcx", "r11", "memory");
  return ret;  // -errno on failure
}

}  // namespace usprobe::os
