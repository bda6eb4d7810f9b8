// System calls without libc: for code that may run inside a probed libc function (a thread's
// first hit registers itself), where calling `syscall`, `mmap` or touching errno could hit a probe
// again.
#pragma once

#include <sys/syscall.h>

#include <cerrno>
#include <cstdint>

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

// True when thread `tid` of this process no longer exists (tgkill with signal 0: ESRCH).
inline bool thread_exited(int tid) {
  return raw_syscall6(SYS_tgkill, raw_syscall6(SYS_getpid), tid, 0) == -ESRCH;
}

inline int raw_gettid() {
  return static_cast<int>(raw_syscall6(SYS_gettid));
}

// mmap of anonymous private memory; nullptr on failure.
// `hint`: where the mapping should go if that is free (no MAP_FIXED: elsewhere if not).
inline void *raw_mmap_anon(size_t len, int prot, int extra_flags, uint64_t hint = 0) {
  long r = raw_syscall6(SYS_mmap, static_cast<long>(hint), static_cast<long>(len), prot,
                        0x22 /*PRIVATE|ANONYMOUS*/ | extra_flags, -1, 0);
  return r < 0 && r > -4096 ? nullptr : reinterpret_cast<void *>(r);
}

}  // namespace usprobe::os
