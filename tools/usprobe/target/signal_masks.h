// Threads of an attached process that block the signals the engine needs.
//
// The engine writes an int3 on the first byte of every site it patches, for a moment (the
// cross-modifying-code protocol), and leaves one where no jump can stand; a thread that executes
// an int3 while it blocks SIGTRAP is killed by the kernel. And before it writes a jump it runs a
// thread round: every thread that runs user code gets the round's signal and answers from its
// handler, so that none is left stopped inside a patch window; a thread that blocks that signal
// cannot answer, and the batch falls back to int3 sites. In a launched command the agent keeps
// both signals unblocked from the start (it interposes the program's mask calls,
// src/os/linux/signal_guard.h) and the program never knows. A running process may have threads
// that block them already (liblzma's workers and many servers' block every signal, leaving them
// to one thread). usprobe holds ptrace here: once the agent is loaded and has said which signal
// its round uses (usprobe_agent_prepare, protocol/attach.h), and before it attaches, usprobe
// unblocks SIGTRAP and that signal in those threads (PTRACE_SETSIGMASK, each thread seized for a
// moment; a system call it was in restarts as ptrace.h says), and blocks them again at the end of
// the session, once every probe is removed.
//
// What the program may notice: SIGTRAP is only raised by an int3 (the engine's: it handles its
// own and passes any other to the program's disposition) or sent on purpose; the round's signal is
// a real-time signal the program leaves at its default, which only the engine sends, to threads
// it sees running user code (not to a thread sleeping in a system call, whose sleep it would cut
// short; a wait it cuts short all the same, the thread having gone to sleep as it was sent, is
// made again by its handler). Every other signal stays as the program set it.
//
// What stays: a thread that blocks SIGTRAP again during the session by its own mask call (an
// agent injected into a running process cannot interpose libc's calls) and then reaches an int3.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "base/error.h"

namespace usprobe::cli {

// Signals as a mask: bit n - 1 for signal n (as /proc's SigBlk and PTRACE_SETSIGMASK have them).
inline uint64_t signal_bit(int sig) {
  return uint64_t{1} << (sig - 1);
}

// A thread whose mask usprobe changed, and the signals it took out of it.
struct MaskChange {
  pid_t tid = 0;
  uint64_t signals = 0;
  uint64_t session = 0;  // every signal the session keeps unblocked: SIGTRAP and the round's
};

// Threads of `pid` whose mask holds any of `signals`, from /proc/PID/task/*/status.
std::vector<pid_t> threads_blocking(pid_t pid, uint64_t signals);

// Takes `signals` out of the mask of every thread of `pid` that blocks any of them; what it
// changed. On an error the changes made so far are undone. Errors: as SeizedThread::seize (a
// thread that exits meanwhile is no error).
Result<std::vector<MaskChange>> unblock_signals(pid_t pid, uint64_t signals);

// Puts back what `changes` took out, in the threads that still run (best effort: a thread that
// exited, or one that cannot be seized now, is left). The number of threads changed back.
//
// A thread found inside one of the engine's signal handlers (a round's handler that has answered
// and not yet returned) blocks a session signal for the handler's run, and its return would set
// the mask back to the session's, undoing the change: such a thread is let go and seized again a
// moment later (up to 100 ms; then it is changed anyway, in case the program blocked the signal
// itself).
size_t block_again(pid_t pid, const std::vector<MaskChange> &changes);

}  // namespace usprobe::cli
