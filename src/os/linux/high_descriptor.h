// usprobe's own descriptors in a probed process (the shared region a launched command inherits,
// the engine's /proc/self/mem) take numbers near the top of what the process may open, so that the
// program's own open(), socket() and pipe() calls get the numbers they get unprobed (3 first): a
// program that prints a descriptor, or passes one by number to a child, does what it does
// unprobed, and a trace of open() returns what bpftrace or strace show.
#pragma once

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>

namespace usprobe::os {

// Below 1024 (FD_SETSIZE, and the usual soft limit), leaving the 64 numbers at the top free.
inline constexpr rlim_t kHighDescriptorTop = 1024;
inline constexpr rlim_t kHighDescriptorRoom = 64;

// Moves `fd` to the lowest free number at or above min(soft RLIMIT_NOFILE, 1024) - 64, with
// close-on-exec or not as `cloexec` says, and closes the old number. Returns the new number, or
// `fd` itself where there is no such room (a limit of 67 or less, every number above taken).
inline int move_descriptor_high(int fd, bool cloexec) {
  rlimit limit{};
  if (fd < 0 || ::getrlimit(RLIMIT_NOFILE, &limit) != 0) return fd;
  rlim_t top = std::min(limit.rlim_cur, kHighDescriptorTop);
  if (top <= kHighDescriptorRoom + 3 || static_cast<rlim_t>(fd) >= top - kHighDescriptorRoom)
    return fd;
  int high =
      ::fcntl(fd, cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, static_cast<int>(top - kHighDescriptorRoom));
  if (high < 0) return fd;
  ::close(fd);
  return high;
}

}  // namespace usprobe::os
