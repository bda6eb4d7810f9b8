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

// The lowest number usprobe's descriptors take in a process whose soft RLIMIT_NOFILE is `soft`:
// min(soft, 1024) - 64; 0 where the limit leaves no such room (67 or less).
inline rlim_t high_descriptor_floor(rlim_t soft) {
  rlim_t top = std::min(soft, kHighDescriptorTop);
  return top <= kHighDescriptorRoom + 3 ? 0 : top - kHighDescriptorRoom;
}

// Moves `fd` to the lowest free number at or above high_descriptor_floor(), with close-on-exec or
// not as `cloexec` says, and closes the old number. Returns the new number, or `fd` itself where
// there is no such room (a low limit, every number above taken) or it is there already.
inline int move_descriptor_high(int fd, bool cloexec) {
  rlimit limit{};
  if (fd < 0 || ::getrlimit(RLIMIT_NOFILE, &limit) != 0) return fd;
  rlim_t floor = high_descriptor_floor(limit.rlim_cur);
  if (floor == 0 || static_cast<rlim_t>(fd) >= floor) return fd;
  int high = ::fcntl(fd, cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, static_cast<int>(floor));
  if (high < 0) return fd;
  ::close(fd);
  return high;
}

}  // namespace usprobe::os
