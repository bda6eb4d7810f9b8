#include "os/linux/thread_round.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/arch.h"
#include "os/linux/os_inline.h"
#include "os/linux/signal_guard.h"

namespace usprobe::os {
namespace {

// The round in progress. Written by one round at a time (g_round_mutex); read by signal handlers.
struct Round {
  RoundFn fn = nullptr;
  void *arg = nullptr;
  pid_t *tids = nullptr;
  std::atomic<int> *acked = nullptr;
  size_t count = 0;
};
std::mutex g_round_mutex;
Round g_round;
// Static, so that a handler running late never touches freed memory.
constexpr size_t kMaxThreads = 16384;
pid_t g_tids[kMaxThreads];
std::atomic<int> g_acked[kMaxThreads];
uint64_t g_sp[kMaxThreads];  // written by thread i's handler before its ack (release)
// Non-null while a round runs. Release on publish pairs with the acquire in round_handler; a
// handler that runs late (after its round gave up on it) sees nullptr or a later round, in which
// it is either not listed or legitimately a member: fn is idempotent.
std::atomic<Round *> g_active{nullptr};
// Handlers between their first and last instruction. A round ends when they are done: a thread
// still inside one has the handler's signal mask, and a caller that looks at the threads next (an
// injector putting back the masks it changed for the session) would see that one.
std::atomic<int> g_handlers_running{0};
// Bumped by each ack, and the futex the waiting patcher sleeps on.
std::atomic<uint32_t> g_ack_count{0};
static_assert(sizeof(g_ack_count) == sizeof(uint32_t) &&
              std::atomic<uint32_t>::is_always_lock_free);

// The code before the pc of a context that may have returned from a system call, read with a
// system call, which fails instead of faulting where the process has no memory: from the start of
// the page that holds pc - 2 at the lowest (that page was just executed), at most
// arch::kWaitCodeBefore bytes.
std::span<const uint8_t> code_before(uint64_t pc, uint8_t (&buf)[arch::kWaitCodeBefore]) {
  if (pc < 2) return {};
  const uint64_t page_start = (pc - 2) & ~uint64_t{4095};
  const uint64_t from = std::max(page_start, pc >= sizeof buf ? pc - sizeof buf : 0);
  const size_t len = pc - from;
  iovec local{buf, len};
  iovec remote{reinterpret_cast<void *>(from), len};
  long got =
      os::raw_syscall6(SYS_process_vm_readv, os::raw_syscall6(SYS_getpid),
                       reinterpret_cast<long>(&local), 1, reinterpret_cast<long>(&remote), 1, 0);
  return got == static_cast<long>(len) ? std::span<const uint8_t>(buf, len)
                                       : std::span<const uint8_t>();
}

}  // namespace

void keep_wait_interrupted(ucontext_t *uc) {
  uint8_t buf[arch::kWaitCodeBefore];
  if (arch::returned_eintr(uc))
    (void)arch::keep_wait_interrupted(uc, code_before(arch::interrupted_pc(uc), buf));
}

namespace {

// Calls nothing in libc (no errno, no syscall()): any libc function may be mid-patch right now.
void round_handler(int sig, siginfo_t *, void *ctx) {
  g_handlers_running.fetch_add(1, std::memory_order_relaxed);
  auto *uc = static_cast<ucontext_t *>(ctx);
  // The signal may have reached the thread asleep in a wait, in the moment between the round's
  // last look and the signal: the call would fail with EINTR. Made again, the thread never knows.
  // Unless a signal of the program's is pending too (this handler blocks them all) that the
  // interrupted code does not block: its handler runs next, and the program may count on the EINTR
  // to see what that handler did. One that the code blocks (a wait with a mask of its own, as
  // epoll_pwait, unblocks it for the wait only) ends the wait made again. A handler of the
  // program's that ran before this one, and saw the EINTR, has made it look like no cut-short
  // wait (keep_wait_interrupted).
  if (arch::returned_eintr(uc)) {
    uint64_t pending = 0;
    const uint64_t ours = uint64_t{1} << (sig - 1);
    uint64_t blocked = 0;
    std::memcpy(&blocked, &uc->uc_sigmask, sizeof blocked);
    if (os::raw_syscall6(SYS_rt_sigpending, reinterpret_cast<long>(&pending), sizeof pending) ==
            0 &&
        (pending & ~ours & ~blocked) == 0) {
      uint8_t buf[arch::kWaitCodeBefore];
      (void)arch::restart_wait(uc, code_before(arch::interrupted_pc(uc), buf));
    }
  }
  Round *r = g_active.load(std::memory_order_acquire);
  if (r) {
    pid_t self = os::raw_gettid();
    for (size_t i = 0; i < r->count; ++i) {
      if (r->tids[i] != self) continue;
      g_sp[i] = r->fn(uc, r->arg);
      r->acked[i].store(1, std::memory_order_release);  // pairs with the acquire in wait loop
      g_ack_count.fetch_add(1, std::memory_order_release);
      os::raw_syscall6(SYS_futex, reinterpret_cast<long>(&g_ack_count), FUTEX_WAKE_PRIVATE, 1);
      break;
    }
  }
  g_handlers_running.fetch_sub(1, std::memory_order_release);
}

// The round's signal: a real-time signal that the application leaves at its default, with our
// handler. Picked when the library is loaded, so that the interposed mask calls keep it unblocked
// from the start (os/linux/signal_guard.h): a thread that blocks every signal still answers. If
// the program later takes that signal for itself, the next round picks another one (which threads
// that block everything then do block: they go unreached, and the patcher falls back).
std::mutex g_pick_mutex;
std::atomic<int> g_round_signal{0};

void on_signal_taken(int sig) {
  int expected = sig;
  g_round_signal.compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
}

Result<int> install_handler() {
  if (int sig = g_round_signal.load(std::memory_order_acquire)) return sig;
  std::lock_guard lock(g_pick_mutex);
  if (int sig = g_round_signal.load(std::memory_order_acquire)) return sig;
  for (int sig = SIGRTMAX - 1; sig > SIGRTMIN + 4; --sig) {
    struct sigaction old {};
    if (real_sigaction(sig, nullptr, &old) != 0) continue;
    if (!(old.sa_flags & SA_SIGINFO) && old.sa_handler != SIG_DFL) continue;
    if ((old.sa_flags & SA_SIGINFO) && old.sa_sigaction != nullptr) continue;
    struct sigaction sa {};
    sa.sa_sigaction = round_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigfillset(&sa.sa_mask);
    // A synchronous signal raised while blocked kills the process: the handler may run into a
    // site's transient int3 (SIGTRAP), so those stay deliverable.
    for (int sync : {SIGTRAP, SIGSEGV, SIGBUS, SIGILL, SIGFPE}) sigdelset(&sa.sa_mask, sync);
    if (real_sigaction(sig, &sa, nullptr) == 0) {
      keep_unblocked(sig, on_signal_taken);
      g_round_signal.store(sig, std::memory_order_release);  // pairs with the acquire loads
      return sig;
    }
  }
  return fail(EBUSY, "no free real-time signal for usprobe's thread round");
}

__attribute__((constructor)) void install_at_load() {
  (void)install_handler();
  adopt_program_handlers();  // after: the round's signal is guarded by now
}

std::vector<pid_t> list_threads() {
  std::vector<pid_t> tids;
  DIR *d = opendir("/proc/self/task");
  if (!d) return tids;
  while (dirent *e = readdir(d))
    if (e->d_name[0] >= '0' && e->d_name[0] <= '9') tids.push_back(atoi(e->d_name));
  closedir(d);
  return tids;
}

// The user-space pc (and sp) of a thread blocked in a system call; pc 0 when it is running (or
// unknown).
uint64_t blocked_pc(pid_t tid, uint64_t *sp) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  if (strncmp(buf, "running", 7) == 0) return 0;
  // "NR arg1 .. arg6 sp pc" or "-1 sp pc": the sp and pc are the last two fields.
  char *last = strrchr(buf, ' ');
  if (!last) return 0;
  *last = 0;
  if (char *prev = strrchr(buf, ' ')) *sp = strtoull(prev + 1, nullptr, 16);
  return strtoull(last + 1, nullptr, 16);
}

// What became of a thread that the round meant to signal.
enum class Reach { kSignalled, kAsleep, kGone };

// Signals thread `tid` unless it is asleep in a system call at a safe pc (then *sp is its stack
// pointer). A signal with a handler that reaches a thread asleep in nanosleep, poll, select or
// epoll_wait makes the call fail with EINTR whatever SA_RESTART says. So the thread's state is
// read again just before the signal. It may still go to sleep before the signal lands (the
// interrupt that delivers it to a running thread's core takes microseconds, and a thread that
// traps at a site being written runs slowly): round_handler then makes the call again.
Reach signal_unless_asleep(pid_t pid, pid_t tid, int sig, PcCheck pc_is_safe, void *arg,
                           uint64_t *sp) {
  const uint64_t pc = blocked_pc(tid, sp);
  if (pc != 0 && pc_is_safe(pc, arg)) return Reach::kAsleep;
  return syscall(SYS_tgkill, pid, tid, sig) == 0 ? Reach::kSignalled : Reach::kGone;
}

// Whether thread `tid` has `sig` in its blocked mask (from its /proc status); false when unknown.
bool thread_blocks(pid_t tid, int sig) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/self/task/%d/status", tid);
  FILE *f = fopen(path, "re");
  if (!f) return false;
  bool blocks = false;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "SigBlk:", 7) != 0) continue;
    blocks = (strtoull(line + 7, nullptr, 16) & (1ull << (sig - 1))) != 0;
    break;
  }
  fclose(f);
  return blocks;
}

}  // namespace

bool only_thread() {
  const std::vector<pid_t> tids = list_threads();
  return tids.size() == 1 && tids.front() == os::raw_gettid();
}

std::vector<int> threads_blocking(int sig) {
  std::vector<int> out;
  for (pid_t tid : list_threads())
    if (thread_blocks(tid, sig)) out.push_back(tid);
  return out;
}

Result<int> round_signal() {
  return install_handler();
}

Result<RoundResult> run_thread_round(RoundFn fn, PcCheck pc_is_safe, void *arg, int timeout_ms) {
  auto sig = install_handler();
  if (!sig) return std::unexpected(sig.error());
  std::lock_guard lock(g_round_mutex);

  pid_t self = os::raw_gettid(), pid = getpid();
  RoundResult res;
  std::vector<pid_t> targets;
  for (pid_t tid : list_threads()) {
    if (tid == self) continue;
    uint64_t sp = 0, pc = blocked_pc(tid, &sp);
    if (pc != 0 && pc_is_safe(pc, arg)) {
      ++res.blocked;
      if (sp) res.stack_pointers.push_back(sp);
      continue;
    }
    targets.push_back(tid);
  }
  if (targets.empty()) return res;
  if (targets.size() > kMaxThreads) {
    res.unreached = targets.size();
    return res;
  }

  std::atomic<int> *acked = g_acked;
  for (size_t i = 0; i < targets.size(); ++i) {
    g_tids[i] = targets[i];
    acked[i].store(0, std::memory_order_relaxed);
  }
  g_round.fn = fn;
  g_round.arg = arg;
  g_round.tids = g_tids;
  g_round.acked = g_acked;
  g_round.count = targets.size();
  g_active.store(&g_round, std::memory_order_release);  // pairs with round_handler's acquire

  // A thread that blocks the round's signal (it blocked it before usprobe was loaded into a
  // running process, or by a raw system call) would never answer: it is not signalled (a queued
  // real-time signal per round would pile up), only looked at again and again below, until it
  // is seen in a system call at a safe pc, or no longer blocking the signal.
  enum class State { kPolled, kSignalled, kDone };
  std::vector<State> state(targets.size(), State::kSignalled);
  auto reach = [&](size_t i) {
    uint64_t sp = 0;
    switch (signal_unless_asleep(pid, targets[i], *sig, pc_is_safe, arg, &sp)) {
      case Reach::kSignalled:
        state[i] = State::kSignalled;
        return;
      case Reach::kAsleep:
        ++res.blocked;
        if (sp) res.stack_pointers.push_back(sp);
        break;
      case Reach::kGone:
        break;  // exited already: it is in no window
    }
    state[i] = State::kDone;
  };
  for (size_t i = 0; i < targets.size(); ++i) {
    if (thread_blocks(targets[i], *sig))
      state[i] = State::kPolled;
    else
      reach(i);
  }

  timespec start{};
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) {
    // Read the count before checking, so that an ack after the check changes it and the futex
    // wait below returns at once instead of sleeping through it.
    const uint32_t seen = g_ack_count.load(std::memory_order_acquire);
    size_t pending = 0;
    for (size_t i = 0; i < targets.size(); ++i) {
      if (state[i] == State::kDone) continue;
      if (state[i] == State::kSignalled && acked[i].load(std::memory_order_acquire)) {
        state[i] = State::kDone;
        ++res.signalled;
        res.stack_pointers.push_back(g_sp[i]);
      } else if (thread_exited(targets[i])) {
        state[i] = State::kDone;  // the thread exited: it is in no window
      } else if (uint64_t sp = 0, pc = state[i] == State::kPolled ? blocked_pc(targets[i], &sp) : 0;
                 pc != 0 && pc_is_safe(pc, arg)) {
        // In a system call, outside every window: it returns to that pc, and from there it
        // cannot get inside a window any more (each window's first byte traps by now, and
        // nothing jumps into a window's middle).
        state[i] = State::kDone;
        ++res.blocked;
        if (sp) res.stack_pointers.push_back(sp);
      } else {
        // A thread seen blocking the signal may only have been inside a handler then (a
        // handler runs with its sa_mask: the previous round's, finishing after its ack): once it
        // no longer blocks it, it is signalled after all.
        if (state[i] == State::kPolled && !thread_blocks(targets[i], *sig)) reach(i);
        if (state[i] != State::kDone) ++pending;
      }
    }
    if (pending == 0) break;
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    long elapsed_ms = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
    if (elapsed_ms > timeout_ms) {
      res.unreached = pending;
      break;
    }
    // Sleep until a handler acks (it wakes us), or 1 ms to look for exited threads. Sleeping,
    // unlike sched_yield, gets the patcher scheduled as soon as the round is complete even while
    // other threads keep the cores busy.
    timespec one_ms{0, 1000 * 1000};
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(&g_ack_count), FUTEX_WAIT_PRIVATE, seen,
            &one_ms, nullptr, 0);
  }
  g_active.store(nullptr, std::memory_order_release);
  // An answered thread is still on its way out of the handler (its futex wake, its return); a
  // preempted one may take a while. Up to the round's timeout.
  for (int waited_us = 0;
       g_handlers_running.load(std::memory_order_acquire) > 0 && waited_us < timeout_ms * 1000;
       waited_us += 50) {
    timespec pause{0, 50 * 1000};
    nanosleep(&pause, nullptr);
  }
  return res;
}

}  // namespace usprobe::os
