// Copying a string that a probed function was given, which may be any pointer at all, without
// crashing the command: the copy routine (safe_copy.S) reads with one marked instruction, and a
// fault there is turned into a failure return by the fault fixup (fault_fixup.h), as the kernel's
// exception tables do for copy_from_user.
#pragma once

#include <cstddef>

extern "C" {

// Copies the NUL-terminated string at src to dst, at most n - 1 bytes (n >= 1), and terminates
// dst. Returns the length copied, or -1 when reading src faulted (dst then holds ""). Touches no
// vector register, calls nothing. Without the fixup installed a fault is fatal, as without usprobe.
long usprobe_agent_safe_copy(char *dst, const char *src, size_t n);

// The copy's one faulting instruction, [load, load_end), and where a fault there resumes.
extern const char usprobe_agent_safe_copy_load[];
extern const char usprobe_agent_safe_copy_load_end[];
extern const char usprobe_agent_safe_copy_fixup[];
}
