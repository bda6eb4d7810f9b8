// The inline part of core/os.h on Linux: the system calls a thread makes where libc must not be
// called (a probe may sit on any libc function, and errno is libc's), as raw system calls. Async-
// signal-safe, no allocation, no lock. core/os.h includes this file; the agent, which needs more
// system calls of its own, may include it directly.
#pragma once

#include <sys/syscall.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>

// The system-call instruction is the architecture's: the (linux, x86_64) pair's file. A port to
// another architecture adds its own beside it and changes this line.
#include "os/linux/x86_64/raw_syscall.h"

namespace usprobe::os {

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

inline void raw_munmap(void *addr, size_t len) {
  raw_syscall6(SYS_munmap, reinterpret_cast<long>(addr), static_cast<long>(len));
}

// Best effort: a short or failed write is not reported (for a last message before a trap).
inline void raw_write(int fd, const void *buf, size_t len) {
  raw_syscall6(SYS_write, fd, reinterpret_cast<long>(buf), static_cast<long>(len));
}

}  // namespace usprobe::os
