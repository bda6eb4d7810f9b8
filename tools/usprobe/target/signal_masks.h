// Threads of an attached process that block SIGTRAP.
//
// The engine writes an int3 on the first byte of every site it patches, for a moment (the
// cross-modifying-code protocol), and leaves one where no jump can stand; a thread that executes
// an int3 while it blocks SIGTRAP is killed by the kernel. In a launched command the agent keeps
// SIGTRAP unblocked from the start (it interposes the program's mask calls,
// src/os/linux/signal_guard.h) and the program never knows. A running process may have threads
// that block it already (a server's workers often block every signal, leaving them to one thread);
// the engine then refuses to patch. usprobe holds ptrace here, so it unblocks SIGTRAP in those
// threads for the session (PTRACE_SETSIGMASK on each, seized for a moment) and blocks it again at
// the end, once every probe is removed. SIGTRAP is only ever raised by an int3 (the engine's: it
// handles them and passes any other to the program's own disposition) or sent on purpose, so the
// program sees nothing else change; the other signals it blocks stay blocked, and no system call of
// the thread is interrupted (a seized thread resumes its call as ptrace.h says).
//
// What stays: a thread that blocks SIGTRAP again during the session by its own mask call (the agent
// injected into a running process cannot interpose libc's calls) and then reaches an int3.
#pragma once

#include <sys/types.h>

#include <vector>

#include "core/error.h"

namespace usprobe::cli {

// Threads of `pid` whose mask holds SIGTRAP, from /proc/PID/task/*/status.
std::vector<pid_t> threads_blocking_sigtrap(pid_t pid);

// Unblocks SIGTRAP in every thread of `pid` that blocks it; the threads changed. On an error the
// ones changed so far are changed back. Errors: as SeizedThread::seize (a thread that exits in the
// meantime is no error).
Result<std::vector<pid_t>> unblock_sigtrap(pid_t pid);

// Blocks SIGTRAP again in those of `tids` that still run (best effort: a thread that exited, or one
// that cannot be seized now, is left; the number of threads changed back is returned).
size_t block_sigtrap_again(pid_t pid, const std::vector<pid_t> &tids);

}  // namespace usprobe::cli
