// A program's signal masks and its own SIGTRAP disposition, where usprobe has int3s: int3-path
// sites (here forced with USPROBE_FORCE_INT3) and the dynamic linker's hook on _r_debug.r_brk.
//
// The kernel kills a thread that executes an int3 while it blocks SIGTRAP, and a program's own
// SIGTRAP handler installed over usprobe's would take over usprobe's traps. libusprobe.so keeps
// SIGTRAP deliverable and its handler installed, while the program sees its mask and its
// disposition as it set them and gets its own SIGTRAPs as without usprobe
// (src/os/linux/signal_guard.h). Each scenario runs in a fresh process (some end by SIGTRAP).
#include <dlfcn.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/child_process.h"
#include "targets/targets.h"
#include "usprobe/usprobe.h"

namespace {

constexpr const char *kChildEnv = "USPROBE_SIGNALS_CHILD";
constexpr long kCalls = 1000;

std::string run_in_child(const char *name) {
  return usprobe::test::run_in_child(kChildEnv, name, std::chrono::seconds(30));
}

// The probe on tgt_counted, on the int3 path; nullptr (with a message) on failure.
usprobe_link *attach_int3() {
  usprobe_link *link = nullptr;
  int rc =
      usprobe_attach_ex("libusprobe_targets.so:tgt_counted", nullptr, USPROBE_FORCE_INT3, &link);
  if (rc != 0) {
    std::fprintf(stderr, "attach: %s\n", usprobe_last_error());
    return nullptr;
  }
  if (!usprobe_link_uses_int3(link)) {
    std::fprintf(stderr, "the probe is not on the int3 path\n");
    return nullptr;
  }
  return link;
}

// Calls tgt_counted kCalls times; the number of wrong results.
long call_counted() {
  long wrong = 0;
  for (long i = 0; i < kCalls; ++i) wrong += tgt_counted(i) != i + 1;
  return wrong;
}

bool mask_has_sigtrap() {
  sigset_t now;
  pthread_sigmask(SIG_SETMASK, nullptr, &now);
  return sigismember(&now, SIGTRAP);
}

// Whether the kernel really blocks SIGTRAP in this thread (SigBlk in /proc/thread-self/status).
bool kernel_blocks_sigtrap() {
  std::ifstream status("/proc/thread-self/status");
  for (std::string line; std::getline(status, line);)
    if (line.starts_with("SigBlk:"))
      return (std::stoull(line.substr(7), nullptr, 16) >> (SIGTRAP - 1)) & 1;
  return true;
}

// A thread created while its creator blocked every signal (sigprocmask), which blocks every signal
// again itself (pthread_sigmask), calls a function with an int3 probe: every call is counted and
// returns the right value, and the thread reads SIGTRAP back in its mask.
int blocked_threads_are_counted() {
  usprobe_link *link = attach_int3();
  if (!link) return 2;
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, &old);
  bool creator_sees_it = mask_has_sigtrap();
  long wrong = -1;
  bool thread_started_unblocked = false, thread_sees_it = false, inherited = false;
  std::thread t([&] {
    thread_started_unblocked = !kernel_blocks_sigtrap();
    inherited = mask_has_sigtrap();  // its creator's mask, as the program believes it is
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    thread_sees_it = mask_has_sigtrap();
    wrong = call_counted();
  });
  t.join();
  sigprocmask(SIG_SETMASK, &old, nullptr);
  const uint64_t hits = usprobe_link_hits(link);
  std::printf(
      "hits %llu of %ld calls, %ld wrong results; SIGTRAP in the masks read back: "
      "creator %d, thread at its start %d and after its own block %d; the new thread "
      "started with SIGTRAP deliverable: %d\n",
      static_cast<unsigned long long>(hits), kCalls, wrong, creator_sees_it, inherited,
      thread_sees_it, thread_started_unblocked);
  usprobe_detach(link);
  return hits == kCalls && wrong == 0 && creator_sees_it && inherited && thread_sees_it &&
                 !mask_has_sigtrap() && thread_started_unblocked
             ? 0
             : 1;
}

// A thread whose starting mask, set in its attributes, holds every signal (glibc applies it inside
// pthread_create): counted too.
int attr_mask_thread_is_counted() {
  usprobe_link *link = attach_int3();
  if (!link) return 2;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  sigset_t all;
  sigfillset(&all);
  pthread_attr_setsigmask_np(&attr, &all);
  static long wrong = -1;
  pthread_t t;
  if (pthread_create(
          &t, &attr, [](void *) -> void * { return (wrong = call_counted()), nullptr; }, nullptr) !=
      0)
    return 2;
  pthread_join(t, nullptr);
  pthread_attr_destroy(&attr);
  std::printf("hits %llu of %ld calls, %ld wrong results\n",
              static_cast<unsigned long long>(usprobe_link_hits(link)), kCalls, wrong);
  return usprobe_link_hits(link) == kCalls && wrong == 0 ? 0 : 1;
}

// dlopen with every signal blocked: the dynamic linker calls its debugger hook, which usprobe
// probes with an int3 once anything is attached.
int dlopen_with_signals_blocked() {
  usprobe_link *link = attach_int3();
  if (!link) return 2;
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, nullptr);
  void *lib = dlopen(FOLLOW_LIB, RTLD_NOW);
  if (!lib) {
    std::fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  dlclose(lib);
  long wrong = call_counted();
  std::printf("dlopen and dlclose with every signal blocked; %ld wrong results\n", wrong);
  return wrong == 0 && usprobe_link_hits(link) == kCalls ? 0 : 1;
}

std::atomic<int> g_handled{0};
std::atomic<int> g_handled_code{0};
void on_trap(int sig, siginfo_t *info, void *) {
  if (sig == SIGTRAP) g_handled.fetch_add(1);
  g_handled_code.store(info->si_code);
}

// The program's own SIGTRAP handler, installed after usprobe's: it gets each of its raises once,
// usprobe's int3s are not its business, and it reads back its own disposition.
int own_handler_gets_own_traps() {
  usprobe_link *link = attach_int3();
  if (!link) return 2;
  struct sigaction sa {
  }, before{}, now{};
  sa.sa_sigaction = on_trap;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTRAP, &sa, &before);
  raise(SIGTRAP);
  long wrong = call_counted();
  raise(SIGTRAP);
  raise(SIGTRAP);
  wrong += call_counted();
  sigaction(SIGTRAP, nullptr, &now);
  const uint64_t hits = usprobe_link_hits(link);
  std::printf(
      "%d of 3 raises handled (si_code %d); hits %llu of %ld calls, %ld wrong; "
      "disposition read back: %s, before: %s\n",
      g_handled.load(), g_handled_code.load(), static_cast<unsigned long long>(hits), 2 * kCalls,
      wrong, now.sa_sigaction == on_trap ? "the program's" : "another",
      before.sa_handler == SIG_DFL ? "SIG_DFL" : "not SIG_DFL");
  usprobe_detach(link);
  return g_handled.load() == 3 && g_handled_code.load() == SI_TKILL && hits == 2 * kCalls &&
                 wrong == 0 && now.sa_sigaction == on_trap && (now.sa_flags & SA_SIGINFO) &&
                 before.sa_handler == SIG_DFL
             ? 0
             : 1;
}

// signal() and SA_RESETHAND: the handler runs once, then the disposition is SIG_DFL again.
int reset_handler_runs_once() {
  usprobe_link *link = attach_int3();
  if (!link) return 2;
  struct sigaction sa {
  }, now{};
  sa.sa_sigaction = on_trap;
  sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTRAP, &sa, nullptr);
  raise(SIGTRAP);
  sigaction(SIGTRAP, nullptr, &now);
  sighandler_t previous = signal(SIGTRAP, SIG_IGN);
  raise(SIGTRAP);
  long wrong = call_counted();
  std::printf("%d handled; after it the disposition is %s; signal() returned %s\n",
              g_handled.load(), now.sa_handler == SIG_DFL ? "SIG_DFL" : "not SIG_DFL",
              previous == SIG_DFL ? "SIG_DFL" : "something else");
  return g_handled.load() == 1 && now.sa_handler == SIG_DFL && previous == SIG_DFL && wrong == 0 &&
                 usprobe_link_hits(link) == kCalls
             ? 0
             : 1;
}

// SIG_IGN: the program's raise is ignored, the probe still counts.
int ignored_trap_is_ignored() {
  usprobe_link *link = attach_int3();
  if (!link) return 2;
  signal(SIGTRAP, SIG_IGN);
  raise(SIGTRAP);
  long wrong = call_counted();
  std::printf("raise(SIGTRAP) ignored; %ld wrong results\n", wrong);
  return wrong == 0 && usprobe_link_hits(link) == kCalls ? 0 : 1;
}

// SIG_DFL set after a handler: the program's raise kills it with SIGTRAP, as without usprobe.
int default_trap_kills() {
  usprobe_link *link = attach_int3();
  if (!link) return 2;
  struct sigaction sa {};
  sa.sa_sigaction = on_trap;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGTRAP, &sa, nullptr);
  if (call_counted() != 0) return 1;
  signal(SIGTRAP, SIG_DFL);
  rlimit no_core{0, 0};
  setrlimit(RLIMIT_CORE, &no_core);  // the default action dumps core: not into the build tree
  std::fflush(stdout);
  raise(SIGTRAP);
  return 0;  // not reached: the test expects death by SIGTRAP
}

// A SIGTRAP raised while the program blocks it stays pending (sigpending says so) while int3 sites
// keep working, and reaches the program's handler when it unblocks SIGTRAP.
int blocked_raise_waits_for_unblock() {
  usprobe_link *link = attach_int3();
  if (!link) return 2;
  struct sigaction sa {};
  sa.sa_sigaction = on_trap;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGTRAP, &sa, nullptr);
  sigset_t trap;
  sigemptyset(&trap);
  sigaddset(&trap, SIGTRAP);
  pthread_sigmask(SIG_BLOCK, &trap, nullptr);
  raise(SIGTRAP);
  const int while_blocked = g_handled.load();
  long wrong = call_counted();
  sigset_t pending;
  sigpending(&pending);
  const bool reported_pending = sigismember(&pending, SIGTRAP);
  pthread_sigmask(SIG_UNBLOCK, &trap, nullptr);
  const int after = g_handled.load();
  std::printf("handled while blocked: %d, pending: %d, handled after the unblock: %d; %ld wrong\n",
              while_blocked, reported_pending, after, wrong);
  return while_blocked == 0 && reported_pending && after == 1 && wrong == 0 &&
                 usprobe_link_hits(link) == kCalls && g_handled_code.load() == SI_TKILL
             ? 0
             : 1;
}

// A SIGTRAP kept pending for a thread that "blocks" it is taken by sigwaitinfo.
int blocked_raise_is_taken_by_sigwait() {
  usprobe_link *link = attach_int3();
  if (!link) return 2;
  sigset_t trap;
  sigemptyset(&trap);
  sigaddset(&trap, SIGTRAP);
  sigprocmask(SIG_BLOCK, &trap, nullptr);
  raise(SIGTRAP);
  long wrong = call_counted();
  siginfo_t info{};
  timespec zero{};
  int sig = sigtimedwait(&trap, &info, &zero);
  std::printf("sigtimedwait: %d (si_code %d); %ld wrong\n", sig, info.si_code, wrong);
  return sig == SIGTRAP && info.si_code == SI_TKILL && wrong == 0 ? 0 : 1;
}

// Five attach/detach cycles of tgt_counted while a thread calls it flat out: how many attached,
// how many of those took the int3 path, and how many calls returned a wrong result.
struct Cycles {
  int attached = 0, int3 = 0;
  long wrong = 0;
};
Cycles attach_cycles_while_called() {
  std::atomic<bool> stop{false};
  std::atomic<long> wrong{0}, calls{0};
  std::thread caller([&] {
    for (long i = 0; !stop.load(std::memory_order_relaxed); ++i) {
      wrong += tgt_counted(i) != i + 1;
      calls.fetch_add(1, std::memory_order_relaxed);
    }
  });
  while (calls.load() < 1000) std::this_thread::yield();
  Cycles c;
  for (int cycle = 0; cycle < 5; ++cycle) {
    usprobe_link *link = nullptr;
    if (usprobe_attach("libusprobe_targets.so:tgt_counted", nullptr, &link) != 0) break;
    ++c.attached;
    c.int3 += usprobe_link_uses_int3(link);
    usprobe_detach(link);
  }
  stop = true;
  caller.join();
  c.wrong = wrong.load();
  return c;
}

// usprobe's thread round uses a real-time signal it picked when it was loaded. A program that
// later takes that signal for itself gets it: the round moves to another one, and the program's
// handler sees only its own signals.
std::atomic<int> g_rt_handled{0};
int round_signal_taken_by_program() {
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_rt_handled.fetch_add(1); };
  sigemptyset(&sa.sa_mask);
  const int sig = SIGRTMAX - 1;  // the first that usprobe tries
  sigaction(sig, &sa, nullptr);
  const Cycles c = attach_cycles_while_called();
  const int before_raise = g_rt_handled.load();
  raise(sig);
  // Back to the default, as programs that reset every signal do: the round may take it again.
  signal(sig, SIG_DFL);
  usprobe_link *link = nullptr;
  std::atomic<bool> stop{false};
  std::atomic<long> wrong{c.wrong};
  std::thread again([&] {
    for (long i = 0; !stop.load(std::memory_order_relaxed); ++i) wrong += tgt_counted(i) != i + 1;
  });
  const bool reattached = usprobe_attach("libusprobe_targets.so:tgt_counted", nullptr, &link) == 0;
  if (reattached) usprobe_detach(link);
  stop = true;
  again.join();
  if (!reattached) return 3;
  std::printf(
      "%d of 5 attaches (%d on the int3 path); the program's handler ran %d times before "
      "its own raise and %d after; %ld wrong\n",
      c.attached, c.int3, before_raise, g_rt_handled.load(), wrong.load());
  return c.attached == 5 && c.int3 == 0 && before_raise == 0 && g_rt_handled.load() == 1 &&
                 wrong.load() == 0
             ? 0
             : 1;
}

// A program that resets every signal to its default (daemons do), the round's included: the next
// round installs its handler again instead of killing the process with the default action.
int round_signal_reset_by_program() {
  for (int sig = SIGRTMIN; sig <= SIGRTMAX; ++sig) signal(sig, SIG_DFL);
  const Cycles c = attach_cycles_while_called();
  std::printf("%d of 5 attaches (%d on the int3 path); %ld wrong\n", c.attached, c.int3, c.wrong);
  return c.attached == 5 && c.int3 == 0 && c.wrong == 0 ? 0 : 1;
}

// The System V calls, which glibc implements with its own sigaction and sigprocmask: sighold
// "blocks" SIGTRAP (the int3 site still counts), sigset installs the program's handler without
// taking the int3 path over.
void on_trap_plain(int) {
  g_handled.fetch_add(1);
}
// (Deprecated, which is why programs that still use them need this.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
int system_v_calls() {
  usprobe_link *link = attach_int3();
  if (!link) return 2;
  sighold(SIGTRAP);
  long wrong = call_counted();
  const bool held = mask_has_sigtrap();
  sigrelse(SIGTRAP);
  sighandler_t previous = sigset(SIGTRAP, on_trap_plain);
  raise(SIGTRAP);
  wrong += call_counted();
  std::printf("held: %d; sigset returned %s; %d handled; %ld wrong\n", held,
              previous == SIG_DFL ? "SIG_DFL" : "something else", g_handled.load(), wrong);
  return held && previous == SIG_DFL && g_handled.load() == 1 && wrong == 0 &&
                 usprobe_link_hits(link) == 2 * kCalls
             ? 0
             : 1;
}
#pragma GCC diagnostic pop

// A signal with a handler that reaches a thread asleep in nanosleep, poll, select or epoll_wait
// makes the call fail with EINTR, whatever SA_RESTART says. A round signals only threads it saw
// running, but a thread may go to sleep before the signal lands: the round's handler then makes
// the call again, and the program never sees an EINTR. Eight threads call the probed function
// (traps while the patch is written keep them running) and wait 200 us, in four kinds of wait,
// while the probe is attached and detached 300 times, each time with rounds. Without the restart
// the program saw 70 to 80 EINTRs per 100 cycles here.
int waits_are_made_again() {
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  std::atomic<bool> stop{false};
  std::atomic<long> eintr{0}, waits{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      while (!stop.load(std::memory_order_relaxed)) {
        for (long k = 0; k < 100; ++k) wrong += tgt_counted(k) != k + 1;
        int rc = 0;
        timespec ts{0, 200 * 1000};
        timeval tv{0, 200};
        epoll_event ev{};
        switch (t % 4) {
          case 0:
            rc = nanosleep(&ts, nullptr);
            break;
          case 1:
            rc = poll(nullptr, 0, 1);
            break;
          case 2:
            rc = epoll_wait(ep, &ev, 1, 1);
            break;
          default:
            rc = select(0, nullptr, nullptr, nullptr, &tv);
            break;
        }
        if (rc < 0 && errno == EINTR) eintr.fetch_add(1);
        waits.fetch_add(1);
      }
    });
  int attached = 0, int3 = 0;
  for (int cycle = 0; cycle < 300; ++cycle) {
    usprobe_link *link = nullptr;
    if (usprobe_attach("libusprobe_targets.so:tgt_counted", nullptr, &link) != 0) break;
    ++attached;
    int3 += usprobe_link_uses_int3(link);
    usprobe_detach(link);
  }
  stop = true;
  for (std::thread &t : threads) t.join();
  close(ep);
  std::printf(
      "%d attach/detach cycles (%d on the int3 path); %ld waits, %ld of them EINTR; %ld "
      "wrong\n",
      attached, int3, waits.load(), eintr.load(), wrong.load());
  return attached == 300 && int3 == 0 && waits.load() > 0 && eintr.load() == 0 && wrong.load() == 0
             ? 0
             : 1;
}

// The program's own signal still interrupts its waits while rounds run: a thread waits in
// epoll_pwait with SIGUSR1 unblocked for the wait only (its handler has no SA_RESTART), and each
// SIGUSR1 sent to it during the attach and detach cycles ends one wait with EINTR.
std::atomic<int> g_usr1{0};
void on_usr1(int) {
  g_usr1.fetch_add(1);
}
// SIGUSR1 to `handler` (no SA_RESTART), and blocked in this thread: the threads it makes next
// inherit that, and unblock it for their waits alone.
void usr1_for_waits_only(void (*handler)(int)) {
  struct sigaction sa {};
  sa.sa_handler = handler;
  sigaction(SIGUSR1, &sa, nullptr);
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &usr1, nullptr);
}
int own_signal_still_interrupts() {
  usr1_for_waits_only(on_usr1);
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  std::atomic<bool> stop{false};
  std::atomic<long> eintr{0}, other{0};
  std::thread waiter([&] {
    sigset_t during;
    pthread_sigmask(SIG_SETMASK, nullptr, &during);
    sigdelset(&during, SIGUSR1);
    while (!stop.load()) {
      epoll_event ev{};
      for (long k = 0; k < 100; ++k) (void)tgt_counted(k);
      int rc = epoll_pwait(ep, &ev, 1, 2, &during);
      if (rc < 0 && errno == EINTR)
        eintr.fetch_add(1);
      else if (rc != 0)
        other.fetch_add(1);
    }
  });
  const pthread_t to = waiter.native_handle();
  int sent = 0, attached = 0;
  for (int cycle = 0; cycle < 100; ++cycle) {
    usprobe_link *link = nullptr;
    if (usprobe_attach("libusprobe_targets.so:tgt_counted", nullptr, &link) != 0) break;
    ++attached;
    if (cycle % 5 == 0) {
      const int before = g_usr1.load();
      pthread_kill(to, SIGUSR1);
      ++sent;
      while (g_usr1.load() == before) std::this_thread::yield();
    }
    usprobe_detach(link);
  }
  stop = true;
  waiter.join();
  close(ep);
  std::printf("%d cycles; %d SIGUSR1 sent, %d handled, %ld waits ended by EINTR, %ld otherwise\n",
              attached, sent, g_usr1.load(), eintr.load(), other.load());
  return attached == 100 && g_usr1.load() == sent && eintr.load() == sent && other.load() == 0 ? 0
                                                                                               : 1;
}

// A handler of the program's that returns to a wait its signal cut short: that EINTR is the
// program's. Were the round's signal delivered just then, as the handler returns, the context it
// interrupts looks like a wait that the round cut short itself, and the round's handler would make
// the call again: the program would sleep through its own signal. The handler here makes that
// happen every time: it blocks the round's signal with the raw system call (which the interposed
// calls cannot stop) and sends it to its own thread, so that the kernel delivers it as the
// handler's return unblocks it. The wait must still end with EINTR, not run to its timeout.
int g_round_sig = 0;
std::atomic<int> g_usr1_returning{0};
void on_usr1_then_round(int) {
  uint64_t set = uint64_t{1} << (g_round_sig - 1);
  syscall(SYS_rt_sigprocmask, SIG_BLOCK, &set, nullptr, sizeof set);
  syscall(SYS_tgkill, getpid(), gettid(), g_round_sig);
  g_usr1_returning.fetch_add(1);
}
int own_handler_keeps_its_eintr() {
  // The round's signal: the first real-time signal from the top with a handler, in a process
  // that set none of its own.
  for (int sig = SIGRTMAX - 1; sig >= SIGRTMIN && !g_round_sig; --sig) {
    struct sigaction now {};
    sigaction(sig, nullptr, &now);
    if (now.sa_handler != SIG_DFL && now.sa_handler != SIG_IGN) g_round_sig = sig;
  }
  if (!g_round_sig) {
    std::printf("no handler on any real-time signal\n");
    return 1;
  }
  usr1_for_waits_only(on_usr1_then_round);  // (epoll_pwait fails with EINTR under SA_RESTART too)
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  int rounds_eintr = 0, rounds = 0;
  for (int round = 0; round < 5; ++round) {
    int rc = 0, err = 0;
    std::thread waiter([&] {
      sigset_t during;
      pthread_sigmask(SIG_SETMASK, nullptr, &during);
      sigdelset(&during, SIGUSR1);
      epoll_event ev{};
      rc = epoll_pwait(ep, &ev, 1, 2000, &during);
      err = errno;
    });
    pthread_kill(waiter.native_handle(), SIGUSR1);  // taken in the wait, or as it starts
    waiter.join();
    ++rounds;
    rounds_eintr += rc == -1 && err == EINTR;
  }
  close(ep);
  std::printf("%d of %d waits ended by EINTR; the handler ran %d times\n", rounds_eintr, rounds,
              g_usr1_returning.load());
  return rounds_eintr == rounds && g_usr1_returning.load() == rounds ? 0 : 1;
}

// usprobe runs each handler of the program's behind one of its own (that is what lets it tell
// the program's EINTR from its own, above): the program still reads back what it set, through
// sigaction, signal and sigset, and its handlers get what the kernel gives them.
std::atomic<int> g_plain_sig{0}, g_info_value{0};
void on_plain(int sig) {
  g_plain_sig = sig;
}
void on_info(int, siginfo_t *info, void *) {
  g_info_value = info->si_value.sival_int;
}
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
int handlers_read_back_as_set() {
  int wrong = 0;
  struct sigaction sa {
  }, back{};
  sa.sa_sigaction = on_info;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigaction(SIGUSR1, &sa, nullptr);
  sigaction(SIGUSR1, nullptr, &back);
  wrong += back.sa_sigaction != on_info || !(back.sa_flags & SA_SIGINFO) ||
           !(back.sa_flags & SA_RESTART);
  struct {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
  } kernel{};
  syscall(SYS_rt_sigaction, SIGUSR1, nullptr, &kernel, sizeof kernel.mask);
  const bool shimmed = kernel.handler != reinterpret_cast<void *>(on_info);
  sigqueue(getpid(), SIGUSR1, sigval{.sival_int = 42});
  wrong += g_info_value.load() != 42;

  sa = {};
  sa.sa_handler = on_plain;
  struct sigaction previous {};
  sigaction(SIGUSR1, &sa, &previous);
  wrong += previous.sa_sigaction != on_info || !(previous.sa_flags & SA_SIGINFO);
  sigaction(SIGUSR1, nullptr, &back);
  wrong += back.sa_handler != on_plain || (back.sa_flags & SA_SIGINFO);
  raise(SIGUSR1);
  wrong += g_plain_sig.load() != SIGUSR1;

  // signal() and sigset() go to glibc's own sigaction; what they return is still the program's.
  wrong += signal(SIGUSR1, SIG_DFL) != on_plain;
  wrong += signal(SIGUSR2, on_plain) != SIG_DFL;
  wrong += signal(SIGUSR2, SIG_IGN) != on_plain;
  wrong += sigset(SIGHUP, on_plain) != SIG_DFL;
  sigaction(SIGHUP, nullptr, &back);
  wrong += back.sa_handler != on_plain;
  g_plain_sig = 0;
  raise(SIGHUP);
  wrong += g_plain_sig.load() != SIGHUP;
  wrong += sigset(SIGHUP, SIG_DFL) != on_plain;
  std::printf("%d read back wrong; the kernel has %s\n", wrong,
              shimmed ? "usprobe's handler" : "the program's");
  return wrong == 0 && shimmed ? 0 : 1;
}
#pragma GCC diagnostic pop

const usprobe::test::Scenario kScenarios[] = {
    {"blocked-threads", blocked_threads_are_counted},
    {"dlopen-blocked", dlopen_with_signals_blocked},
    {"attr-mask", attr_mask_thread_is_counted},
    {"own-handler", own_handler_gets_own_traps},
    {"reset-handler", reset_handler_runs_once},
    {"ignored", ignored_trap_is_ignored},
    {"default-kills", default_trap_kills},
    {"pending-until-unblock", blocked_raise_waits_for_unblock},
    {"pending-sigwait", blocked_raise_is_taken_by_sigwait},
    {"system-v", system_v_calls},
    {"round-signal-taken", round_signal_taken_by_program},
    {"round-signal-reset", round_signal_reset_by_program},
    {"waits-made-again", waits_are_made_again},
    {"own-signal-interrupts", own_signal_still_interrupts},
    {"own-handler-keeps-eintr", own_handler_keeps_its_eintr},
    {"handlers-read-back", handlers_read_back_as_set},
};
const bool g_child_dispatched = usprobe::test::run_scenario_if_child(kChildEnv, kScenarios);

TEST(Signals, ThreadsBlockingEverySignalAreCountedOnTheInt3Path) {
  EXPECT_EQ(run_in_child("blocked-threads"), "");
}

TEST(Signals, ThreadStartingWithEverySignalBlockedIsCounted) {
  EXPECT_EQ(run_in_child("attr-mask"), "");
}

TEST(Signals, DlopenWithEverySignalBlockedSurvivesTheLinkerHook) {
  EXPECT_EQ(run_in_child("dlopen-blocked"), "");
}

TEST(Signals, ProgramsOwnHandlerGetsItsOwnTrapsOnly) {
  EXPECT_EQ(run_in_child("own-handler"), "");
}

TEST(Signals, ResetHandRunsTheProgramsHandlerOnce) {
  EXPECT_EQ(run_in_child("reset-handler"), "");
}

TEST(Signals, IgnoredSigtrapIsIgnored) {
  EXPECT_EQ(run_in_child("ignored"), "");
}

TEST(Signals, DefaultSigtrapKillsAsWithoutUsprobe) {
  EXPECT_EQ(
      run_in_child("default-kills"),
      usprobe::test::strf("the child was killed by signal %d (%s)", SIGTRAP, strsignal(SIGTRAP)));
}

TEST(Signals, SigtrapRaisedWhileBlockedIsDeliveredAtUnblock) {
  EXPECT_EQ(run_in_child("pending-until-unblock"), "");
}

TEST(Signals, SigtrapRaisedWhileBlockedIsTakenBySigwait) {
  EXPECT_EQ(run_in_child("pending-sigwait"), "");
}

TEST(Signals, ProgramTakingTheRoundSignalGetsItAndRoundsMoveOn) {
  EXPECT_EQ(run_in_child("round-signal-taken"), "");
}

TEST(Signals, ProgramResettingEverySignalKeepsRoundsWorking) {
  EXPECT_EQ(run_in_child("round-signal-reset"), "");
}

TEST(Signals, WaitsTheRoundInterruptsAreMadeAgain) {
  EXPECT_EQ(run_in_child("waits-made-again"), "");
}

TEST(Signals, TheProgramsOwnSignalStillInterruptsItsWaits) {
  EXPECT_EQ(run_in_child("own-signal-interrupts"), "");
}

TEST(Signals, AWaitThatTheProgramsHandlerCutShortIsNotMadeAgain) {
  EXPECT_EQ(run_in_child("own-handler-keeps-eintr"), "");
}

TEST(Signals, TheProgramReadsBackTheHandlersItSet) {
  EXPECT_EQ(run_in_child("handlers-read-back"), "");
}

TEST(Signals, SystemVCallsKeepTheInt3PathWorking) {
  EXPECT_EQ(run_in_child("system-v"), "");
}

}  // namespace
