// Keeping usprobe's signals deliverable while the program believes it blocked them, and keeping
// usprobe's SIGTRAP handler in front of the program's.
//
// A thread that executes an int3 while it blocks SIGTRAP is killed by the kernel (force_sig resets
// a blocked synchronous signal to its default action), and a thread that blocks the thread round's
// signal cannot answer a round. Programs block every signal all the time: liblzma's workers,
// util-linux's su/runuser while PAM unloads, servers that take their signals in one thread. So
// libusprobe.so (and the agent) export the calls that change a thread's mask or a signal's
// disposition, and forward them to the next definition (libc's) with usprobe's signals left out:
//
//  - the mask calls (sigprocmask, pthread_sigmask, sigsuspend, ppoll, pselect,
//    pthread_attr_setsigmask_np, and the System V sighold/sigrelse/sigset) never block a guarded
//    signal; the program's wish is kept in a
//    per-thread bit, which is what it reads back as its old mask;
//  - sigaction leaves guarded signals out of every handler's sa_mask (and gives them back in
//    oldact);
//  - every other handler the program installs (sigaction, signal, sigset, and at load the ones
//    already installed, where the program's sigaction is this one) runs behind
//    program_handler_shim, which tells the thread round when the handler returns to a wait that
//    its signal cut short (thread_round.h); sigaction and signal give back the program's handler
//    and flags. An agent injected into a running process is not in the program's lookups: its
//    handlers stay as they are;
//  - for SIGTRAP, sigaction/signal/bsd_signal/sysv_signal/sigset/sigignore do not touch the
//    kernel's disposition (usprobe's handler stays installed): they record the program's, which
//    usprobe's handler applies to every trap that is not usprobe's (os/linux/trap_handler.cc);
//  - a SIGTRAP sent (kill, raise, sigqueue) to a thread that "blocks" it stays pending in that
//    thread (program_blocks, defer_signal) and is sent again when the program unblocks it; the
//    sigwait family and sigpending see it.
//
// What cannot be interposed: glibc's internal calls go to its hidden aliases, not through these
// symbols. pthread_create and posix_spawn block every signal with a raw rt_sigprocmask around
// clone (the new thread runs glibc's start-up with everything blocked until it takes its
// creator's mask, SIGTRAP unblocked); posix_spawn's child runs glibc's dup2/close/sigaction code
// with everything blocked until the exec; a thread blocks everything in glibc's exit path; and
// siglongjmp restores a saved mask without telling us (the saved mask is the real one, SIGTRAP
// unblocked, so only the program's view can go stale). Fortified programs call __ppoll_chk, and
// epoll_pwait is not interposed: a handler that runs during such a wait with a mask holding
// SIGTRAP and hits an int3 site is killed. A probe on the int3 path placed on a libc
// function that runs inside one of those windows (the functions glibc calls there, not the
// program's) still kills that thread. A program that blocked SIGTRAP before this library was
// loaded (a process usprobe attaches to later), or with a raw system call, is found by the
// patcher's check (core/patcher.cc).
//
// A new thread (pthread_create, also interposed) starts with the guarded signals really
// unblocked and its creator's bits: it too believes it blocks what its creator "blocked".
//
// Where the program's view differs from what it would see without usprobe: a thread whose
// attributes set its starting mask, and a process after exec, start with the bits clear (SIGTRAP
// reads back unblocked). A SIGTRAP sent to the whole process is taken by whichever thread the
// kernel picks, and kept pending there if that thread "blocks" it, where the kernel would have
// picked a thread that does not. The program's SIGTRAP handler runs as if SA_NODEFER were set. API
// users who dlopen libusprobe.so rather than link it get none of this: their calls go to libc
// first.
#pragma once

#include <signal.h>

#include <cstdint>

namespace usprobe::os {

// libc's sigaction and pthread_sigmask (the next definitions after ours), for usprobe's own use.
int real_sigaction(int sig, const struct sigaction *act, struct sigaction *old);
int real_sigmask(int how, const sigset_t *set, sigset_t *old);  // returns 0 or an errno

// Removes the guarded signals from `set`. Async-signal-safe.
void strip_guarded(sigset_t *set);

// From now on `sig` is never blocked by the interposed calls (the thread round's signal), until
// the program installs a disposition of its own for it: then `on_taken(sig)` is called and the
// signal is the program's again.
void keep_unblocked(int sig, void (*on_taken)(int) = nullptr);

// From now on the program's sigaction calls on SIGTRAP are recorded, not applied; `previous` is
// the disposition the kernel had when usprobe's handler took over (what the program reads back
// first). Also keeps SIGTRAP unblocked.
void take_over_sigtrap(const struct sigaction &previous);

// The program's current SIGTRAP disposition, as it set it. Async-signal-safe.
void program_sigtrap_action(struct sigaction *out);
// SA_RESETHAND: the program's SIGTRAP disposition goes back to SIG_DFL. Async-signal-safe.
void reset_program_sigtrap_action();

// Puts usprobe's shim in front of each handler of the program's that the kernel has now (those
// installed before usprobe was loaded into the process): see program_handler_shim.
void adopt_program_handlers();

// Whether the calling thread's program believes it blocks `sig`. Async-signal-safe.
bool program_blocks(int sig);

// Keeps an asynchronous SIGTRAP pending for the calling thread until its program unblocks it
// (or takes it with sigwait). Async-signal-safe.
void defer_sigtrap(const siginfo_t *info);

}  // namespace usprobe::os
