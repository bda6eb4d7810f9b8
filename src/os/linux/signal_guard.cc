// The interposed signal calls: see signal_guard.h for what they do and what they cannot cover.
//
// The mask and disposition calls may run in a signal handler, in any thread, while usprobe patches
// code: no lock, no allocation; the per-thread state is initial-exec TLS; the program's SIGTRAP
// disposition is published as immutable records. (pthread_create, not async-signal-safe itself,
// may allocate.) The calls forward to the next definitions (libc's, or a
// sanitizer's interceptor), looked up once with dlsym(RTLD_NEXT).
#include "os/linux/signal_guard.h"

#include <dlfcn.h>
#include <poll.h>
#include <pthread.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <new>

#include "os/linux/os_inline.h"
#include "os/linux/thread_round.h"

// signal_guard's own sigaction (defined with the interposed calls, below).
extern "C" int usprobe_own_sigaction(int sig, const struct sigaction *act,
                                     struct sigaction *old) noexcept
    __attribute__((visibility("hidden")));

namespace usprobe::os {
namespace {

using SigactionFn = int (*)(int, const struct sigaction *, struct sigaction *);
using SigmaskFn = int (*)(int, const sigset_t *, sigset_t *);
using SigsuspendFn = int (*)(const sigset_t *);
using SigpendingFn = int (*)(sigset_t *);
using SigtimedwaitFn = int (*)(const sigset_t *, siginfo_t *, const struct timespec *);
using SignalFn = sighandler_t (*)(int, sighandler_t);
using SigopFn = int (*)(int);
using AttrSigmaskFn = int (*)(pthread_attr_t *, const sigset_t *);
using CreateFn = int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
using PpollFn = int (*)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
using PselectFn = int (*)(int, fd_set *, fd_set *, fd_set *, const struct timespec *,
                          const sigset_t *);

// The next definition of `name`, looked up on first use (normally by the constructor below, before
// the program runs; dlsym is not async-signal-safe, the loads after it are).
// (Every name looked up exists in glibc; the System V calls are deprecated there but exported.)
// Where libusprobe comes after libc in the search order (a dependency of a preloaded library, or of
// one that is dlopened), nothing after it defines the name: libc's own, then, which is the one the
// program calls anyway (usprobe's come later and are not its).
template <typename Fn>
Fn next(std::atomic<Fn> &slot, const char *name) {
  Fn fn = slot.load(std::memory_order_acquire);  // pairs with the release below
  if (!fn) {
    fn = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
    if (!fn)
      if (void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD))
        fn = reinterpret_cast<Fn>(dlsym(libc, name));
    slot.store(fn, std::memory_order_release);
  }
  return fn;
}

std::atomic<SigactionFn> g_sigaction{nullptr};
std::atomic<SigmaskFn> g_pthread_sigmask{nullptr};
std::atomic<SigsuspendFn> g_sigsuspend{nullptr};
std::atomic<SigpendingFn> g_sigpending{nullptr};
std::atomic<SigtimedwaitFn> g_sigtimedwait{nullptr};
std::atomic<SignalFn> g_signal{nullptr};
std::atomic<SignalFn> g_sigset{nullptr};
std::atomic<SigopFn> g_sighold{nullptr};
std::atomic<SigopFn> g_sigrelse{nullptr};
std::atomic<SigopFn> g_sigignore{nullptr};
std::atomic<AttrSigmaskFn> g_attr_setsigmask{nullptr};
std::atomic<CreateFn> g_pthread_create{nullptr};
std::atomic<PpollFn> g_ppoll{nullptr};
std::atomic<PselectFn> g_pselect{nullptr};

__attribute__((constructor(101))) void resolve_all() {
  next(g_sigaction, "sigaction");
  next(g_pthread_sigmask, "pthread_sigmask");
  next(g_sigsuspend, "sigsuspend");
  next(g_sigpending, "sigpending");
  next(g_sigtimedwait, "sigtimedwait");
  next(g_signal, "signal");
  next(g_sigset, "sigset");
  next(g_sighold, "sighold");
  next(g_sigrelse, "sigrelse");
  next(g_sigignore, "sigignore");
  next(g_attr_setsigmask, "pthread_attr_setsigmask_np");
  next(g_pthread_create, "pthread_create");
  next(g_ppoll, "ppoll");
  next(g_pselect, "pselect");
}

constexpr uint64_t bit(int sig) {
  return 1ull << (sig - 1);
}
// Guarded signals are all below 65: the first word of a sigset_t holds them.
uint64_t &word(sigset_t &s) {
  return s.__val[0];
}
uint64_t word(const sigset_t &s) {
  return s.__val[0];
}

// The signals that the interposed calls never block. Acquire loads pair with the release in
// keep_unblocked (and in guarded_sigaction, where the program takes one back).
std::atomic<uint64_t> g_guarded{0};
// Per signal: the guarded signals the program put in its handler's sa_mask (given back in oldact).
std::atomic<uint64_t> g_mask_asked[65];
// Per guarded signal but SIGTRAP: whom to tell when the program takes it for itself.
std::atomic<void (*)(int)> g_on_taken[65];

// Per thread: the guarded signals this thread's program believes it blocks, and a SIGTRAP kept
// pending for it (what was sent: code, sender, value).
constinit thread_local uint64_t t_wanted __attribute__((tls_model("initial-exec"))) = 0;
struct Pending {
  bool set;
  int code;
  pid_t pid;
  uid_t uid;
  sigval value;
};
constinit thread_local Pending t_pending __attribute__((tls_model("initial-exec"))) = {};

// The program's SIGTRAP dispositions: immutable once published, the current one named by index.
// A reader copies a record while a writer fills another; one would have to be overwritten 15 times
// during one copy for a reader to see a torn record.
constexpr uint32_t kRecords = 16;
struct sigaction g_records[kRecords];
std::atomic<uint32_t> g_record_next{0};
std::atomic<uint32_t> g_record_current{0};
std::atomic<bool> g_sigtrap_taken{false};
void (*g_restorer)() = nullptr;  // what glibc gives every handler it installs
constexpr int kSaRestorer = 0x04000000;

void publish(const struct sigaction &a) {
  uint32_t i = (g_record_next.fetch_add(1, std::memory_order_relaxed) + 1) % kRecords;
  g_records[i] = a;
  g_record_current.store(i, std::memory_order_release);  // pairs with program_sigtrap_action
}

// The record of what the program asked for, as glibc's sigaction would give it back: the kernel
// drops SIGKILL and SIGSTOP from sa_mask, glibc adds its restorer.
void record(const struct sigaction &act) {
  struct sigaction r = act;
  sigdelset(&r.sa_mask, SIGKILL);
  sigdelset(&r.sa_mask, SIGSTOP);
  r.sa_flags |= kSaRestorer;
  r.sa_restorer = g_restorer;
  publish(r);
}

// Sends the kept SIGTRAP again, to this thread, as it was sent (rt_tgsigqueueinfo may give any
// si_code within the own process). It is delivered as this system call returns.
void deliver_pending() {
  if (!t_pending.set) return;
  t_pending.set = false;
  siginfo_t info{};
  info.si_signo = SIGTRAP;
  info.si_code = t_pending.code;
  info.si_pid = t_pending.pid;
  info.si_uid = t_pending.uid;
  info.si_value = t_pending.value;
  raw_syscall6(SYS_rt_tgsigqueueinfo, raw_syscall6(SYS_getpid), raw_gettid(), SIGTRAP,
               reinterpret_cast<long>(&info));
}

// pthread_sigmask with the guarded signals left out of what is blocked. Returns 0 or an errno.
int guarded_sigmask(int how, const sigset_t *set, sigset_t *old) {
  SigmaskFn real = next(g_pthread_sigmask, "pthread_sigmask");
  const uint64_t guarded = g_guarded.load(std::memory_order_acquire);
  if (!guarded) return real(how, set, old);
  const uint64_t before = t_wanted;
  uint64_t after = before;
  sigset_t pass;
  const sigset_t *p = set;
  if (set) {
    const uint64_t asked = word(*set) & guarded;
    switch (how) {
      case SIG_BLOCK:
        after = before | asked;
        break;
      case SIG_UNBLOCK:
        after = before & ~asked;
        break;
      case SIG_SETMASK:
        after = asked;
        break;
      default:
        return real(how, set, old);  // EINVAL
    }
    if (asked) {
      pass = *set;
      word(pass) &= ~guarded;
      p = &pass;
    }
  }
  t_wanted = before | after;  // a block holds from before the call returns
  int rc = real(how, p, old);
  if (rc != 0) {
    t_wanted = before;
    return rc;
  }
  if (old) word(*old) |= before;
  t_wanted = after;
  if (t_pending.set && !(after & bit(SIGTRAP))) deliver_pending();
  return 0;
}

// The set to pass for a temporary mask (sigsuspend, ppoll, pselect): without guarded signals.
const sigset_t *strip(const sigset_t *set, sigset_t &copy) {
  const uint64_t guarded = g_guarded.load(std::memory_order_acquire);
  if (!set || !(word(*set) & guarded)) return set;
  copy = *set;
  word(copy) &= ~guarded;
  return &copy;
}

// Whether a sigwait-family call on `set` can take the kept SIGTRAP; if so fills `info`.
bool take_pending(const sigset_t *set, siginfo_t *info) {
  if (!t_pending.set || !set || !sigismember(set, SIGTRAP)) return false;
  t_pending.set = false;
  if (info) {
    *info = siginfo_t{};
    info->si_signo = SIGTRAP;
    info->si_code = t_pending.code;
    info->si_pid = t_pending.pid;
    info->si_uid = t_pending.uid;
    info->si_value = t_pending.value;
  }
  return true;
}

// The program's handlers, each behind program_handler_shim: by signal, the function with bit 63
// set when it takes three arguments (SA_SIGINFO); 0 when none was recorded. One word, so that a
// handler running while the program changes it reads one whole record.
std::atomic<uint64_t> g_program_handler[65];
constexpr uint64_t kSiginfo = uint64_t{1} << 63;

uint64_t encode(void (*handler)(int, siginfo_t *, void *), unsigned long flags) {
  return reinterpret_cast<uint64_t>(handler) | (flags & SA_SIGINFO ? kSiginfo : 0);
}

// Runs the program's handler, then tells the thread round when the signal cut a wait short: that
// EINTR is the program's (thread_round.h). Every handler the program installs through sigaction
// or signal runs behind it, but those of the synchronous faults (whose handlers fix up the
// context), SIGTRAP (usprobe's handler forwards to the program's) and glibc's own signals.
void program_handler_shim(int sig, siginfo_t *info, void *ctx) {
  const uint64_t h = g_program_handler[sig].load(std::memory_order_acquire);
  const uint64_t fn = h & ~kSiginfo;
  if (fn == 0) return;
  if (h & kSiginfo)
    reinterpret_cast<void (*)(int, siginfo_t *, void *)>(fn)(sig, info, ctx);
  else
    reinterpret_cast<void (*)(int)>(fn)(sig);
  keep_wait_interrupted(static_cast<ucontext_t *>(ctx));
}

bool wrappable(int sig) {
  switch (sig) {
    case SIGTRAP:
    case SIGSEGV:
    case SIGBUS:
    case SIGILL:
    case SIGFPE:
    case SIGKILL:
    case SIGSTOP:
      return false;
    default:
      return sig >= 1 && sig <= 64 && !(sig >= 32 && sig < SIGRTMIN);
  }
}

bool is_handler(const struct sigaction &act) {
  return act.sa_handler != SIG_DFL && act.sa_handler != SIG_IGN;
}

// What the kernel reports (`old`) as the program set it: its handler, not the shim.
void unwrap(struct sigaction *old, uint64_t recorded) {
  if (old->sa_sigaction != program_handler_shim) return;
  old->sa_sigaction = reinterpret_cast<void (*)(int, siginfo_t *, void *)>(recorded & ~kSiginfo);
  if (!(recorded & kSiginfo)) old->sa_flags &= ~SA_SIGINFO;
}

// Puts the shim in front of the program's handler that the kernel has for `sig` now, installed
// where the interposed calls did not see it: glibc's signal() and sigset() (which call glibc's own
// sigaction), or before usprobe was loaded into the process. With the system call itself, which
// keeps the restorer, mask and flags as they are: a probe on libc's sigaction counts only the
// program's calls.
void adopt(int sig) {
  if (!wrappable(sig) || (g_guarded.load(std::memory_order_acquire) & bit(sig))) return;
  struct KernelAction {
    void (*handler)(int, siginfo_t *, void *);
    unsigned long flags;
    void (*restorer)();
    uint64_t mask;
  } now{};
  if (raw_syscall6(SYS_rt_sigaction, sig, 0, reinterpret_cast<long>(&now), sizeof now.mask) != 0)
    return;
  const auto handler = reinterpret_cast<uint64_t>(now.handler);
  if (handler == reinterpret_cast<uint64_t>(SIG_DFL) ||
      handler == reinterpret_cast<uint64_t>(SIG_IGN) || now.handler == program_handler_shim)
    return;
  // Recorded before the kernel has the shim: a signal that comes in between finds its handler.
  g_program_handler[sig].store(encode(now.handler, now.flags),
                               std::memory_order_release);  // pairs with the shim
  KernelAction wrapped = now;
  wrapped.handler = program_handler_shim;
  wrapped.flags |= SA_SIGINFO;
  raw_syscall6(SYS_rt_sigaction, sig, reinterpret_cast<long>(&wrapped), 0, sizeof wrapped.mask);
}

// glibc's signal() or sigset() (`call`), which install through glibc's own sigaction: the
// handler then goes behind the shim, and what the call gives back is the program's.
sighandler_t through_glibc(int sig, sighandler_t disp, SignalFn call) {
  const uint64_t recorded =
      sig >= 1 && sig <= 64 ? g_program_handler[sig].load(std::memory_order_acquire) : 0;
  sighandler_t old = call(sig, disp);
  if (old == SIG_ERR) return old;
  if (reinterpret_cast<void *>(old) == reinterpret_cast<void *>(program_handler_shim))
    old = reinterpret_cast<sighandler_t>(recorded & ~kSiginfo);
  adopt(sig);
  return old;
}

// sigaction, with guarded signals out of sa_mask, the shim in front of the program's handler and
// SIGTRAP's disposition recorded.
int guarded_sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  if (sig == SIGTRAP && g_sigtrap_taken.load(std::memory_order_acquire)) {
    struct sigaction prev;
    program_sigtrap_action(&prev);
    if (act) record(*act);
    if (old) *old = prev;
    return 0;
  }
  SigactionFn real = next(g_sigaction, "sigaction");
  if (sig < 1 || sig > 64) return real(sig, act, old);
  const uint64_t guarded = g_guarded.load(std::memory_order_acquire);
  struct sigaction pass;
  const struct sigaction *p = act;
  uint64_t asked = 0;
  const bool wrap = act && is_handler(*act) && wrappable(sig);
  if (act) {
    asked = word(act->sa_mask) & guarded;
    if (asked || wrap) {
      pass = *act;
      word(pass.sa_mask) &= ~guarded;
      if (wrap) {
        pass.sa_sigaction = program_handler_shim;
        pass.sa_flags |= SA_SIGINFO;
      }
      p = &pass;
    }
  }
  // Recorded before the kernel has the shim: a signal that comes in between finds its handler.
  const uint64_t recorded =
      wrap ? g_program_handler[sig].exchange(encode(act->sa_sigaction, act->sa_flags),
                                             std::memory_order_acq_rel)
           : g_program_handler[sig].load(std::memory_order_acquire);
  int rc = real(sig, p, old);
  if (rc != 0) {
    if (wrap) g_program_handler[sig].store(recorded, std::memory_order_release);
    return rc;
  }
  if (old) unwrap(old, recorded);
  // The program sets a disposition of its own for a guarded signal (any, SIG_DFL included: the
  // kernel's now is not usprobe's handler): usprobe lets it go.
  if (act && (guarded & bit(sig))) {
    g_guarded.fetch_and(~bit(sig), std::memory_order_release);
    if (auto *taken = g_on_taken[sig].load(std::memory_order_relaxed)) taken(sig);
  }
  uint64_t before = act ? g_mask_asked[sig].exchange(asked, std::memory_order_relaxed)
                        : g_mask_asked[sig].load(std::memory_order_relaxed);
  if (old) word(old->sa_mask) |= before;
  return 0;
}

// signal() and friends through guarded_sigaction: BSD semantics (the signal itself blocked in
// its handler, system calls restarted) or System V's (reset on delivery, not blocked).
sighandler_t signal_via_sigaction(int sig, sighandler_t handler, bool sysv) {
  if (handler == SIG_ERR || sig < 1 || sig >= NSIG) {
    errno = EINVAL;
    return SIG_ERR;
  }
  struct sigaction act {
  }, old{};
  act.sa_handler = handler;
  sigemptyset(&act.sa_mask);
  if (!sysv) sigaddset(&act.sa_mask, sig);
  act.sa_flags = sysv ? SA_RESETHAND | SA_NODEFER : SA_RESTART;
  if (guarded_sigaction(sig, &act, &old) < 0) return SIG_ERR;
  return old.sa_handler;
}

// Whether signal() must go through guarded_sigaction: usprobe records or watches `sig`.
bool watched(int sig) {
  return sig >= 1 && sig <= 64 && (g_guarded.load(std::memory_order_acquire) & bit(sig));
}

}  // namespace

int real_sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  return next(g_sigaction, "sigaction")(sig, act, old);
}

int real_sigmask(int how, const sigset_t *set, sigset_t *old) {
  return next(g_pthread_sigmask, "pthread_sigmask")(how, set, old);
}

void strip_guarded(sigset_t *set) {
  word(*set) &= ~g_guarded.load(std::memory_order_acquire);
}

void keep_unblocked(int sig, void (*on_taken)(int)) {
  g_on_taken[sig].store(on_taken, std::memory_order_relaxed);
  g_guarded.fetch_or(bit(sig), std::memory_order_release);  // pairs with the acquire loads
}

void take_over_sigtrap(const struct sigaction &previous) {
  struct sigaction ours {};
  real_sigaction(SIGTRAP, nullptr, &ours);
  g_restorer = ours.sa_restorer;
  g_records[0] = previous;
  g_record_current.store(0, std::memory_order_release);
  keep_unblocked(SIGTRAP);
  g_sigtrap_taken.store(true, std::memory_order_release);  // pairs with guarded_sigaction
}

void program_sigtrap_action(struct sigaction *out) {
  *out = g_records[g_record_current.load(std::memory_order_acquire)];  // pairs with publish
}

void reset_program_sigtrap_action() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  record(dfl);
}

void adopt_program_handlers() {
  // Only where the program's sigaction is this one, which gives back its handlers: in a process
  // usprobe attached to (the agent loaded late, after libc in every lookup) the program's calls
  // reach libc's, which would give back the shim, and a program calling what it got back as a
  // one-argument handler would hand the shim no context.
  if (dlsym(RTLD_DEFAULT, "sigaction") != reinterpret_cast<void *>(&usprobe_own_sigaction)) return;
  for (int sig = 1; sig <= 64; ++sig) adopt(sig);
}

bool program_blocks(int sig) {
  return (t_wanted & bit(sig)) != 0;
}

void defer_sigtrap(const siginfo_t *info) {
  t_pending = {true, info->si_code, info->si_pid, info->si_uid, info->si_value};
}

}  // namespace usprobe::os

// The interposed calls. Exported from libusprobe.so (and the agent), so that the program's calls,
// and those of every library it loads, come here first.
using namespace usprobe::os;

#define USPROBE_EXPORT extern "C" __attribute__((visibility("default")))

USPROBE_EXPORT int pthread_sigmask(int how, const sigset_t *set, sigset_t *old) noexcept {
  return guarded_sigmask(how, set, old);
}

USPROBE_EXPORT int sigprocmask(int how, const sigset_t *set, sigset_t *old) noexcept {
  int rc = guarded_sigmask(how, set, old);
  if (rc == 0) return 0;
  errno = rc;
  return -1;
}

USPROBE_EXPORT int sigsuspend(const sigset_t *mask) {
  SigsuspendFn real = next(g_sigsuspend, "sigsuspend");
  const uint64_t guarded = g_guarded.load(std::memory_order_acquire);
  if (!guarded) return real(mask);
  const uint64_t before = t_wanted, during = word(*mask) & guarded;
  // The kept SIGTRAP, unblocked for the wait, is delivered at once and ends it.
  if (t_pending.set && !(during & bit(SIGTRAP))) {
    deliver_pending();
    errno = EINTR;
    return -1;
  }
  sigset_t copy;
  t_wanted = during;
  int rc = real(strip(mask, copy));
  int saved = errno;
  t_wanted = before;
  errno = saved;
  return rc;
}

USPROBE_EXPORT int sigpending(sigset_t *set) noexcept {
  int rc = next(g_sigpending, "sigpending")(set);
  if (rc == 0 && t_pending.set) sigaddset(set, SIGTRAP);
  return rc;
}

USPROBE_EXPORT int sigtimedwait(const sigset_t *set, siginfo_t *info,
                                const struct timespec *timeout) {
  if (take_pending(set, info)) return SIGTRAP;
  return next(g_sigtimedwait, "sigtimedwait")(set, info, timeout);
}

USPROBE_EXPORT int sigwaitinfo(const sigset_t *set, siginfo_t *info) {
  return sigtimedwait(set, info, nullptr);
}

USPROBE_EXPORT int sigwait(const sigset_t *set, int *sig) {
  siginfo_t info;
  int rc;
  do rc = sigtimedwait(set, &info, nullptr);
  while (rc < 0 && errno == EINTR);
  if (rc < 0) return errno;
  *sig = rc;
  return 0;
}

USPROBE_EXPORT int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *timeout,
                         const sigset_t *mask) {
  sigset_t copy;
  return next(g_ppoll, "ppoll")(fds, n, timeout, strip(mask, copy));
}

USPROBE_EXPORT int pselect(int n, fd_set *r, fd_set *w, fd_set *e, const struct timespec *timeout,
                           const sigset_t *mask) {
  sigset_t copy;
  return next(g_pselect, "pselect")(n, r, w, e, timeout, strip(mask, copy));
}

// A new thread inherits its creator's mask: what the program believes it blocks comes along.
struct Start {
  void *(*fn)(void *);
  void *arg;
  uint64_t wanted;
};

// Handed to the new thread without malloc where it can be: this runs in the program's thread, and
// with libc:malloc probed the program's count must not include usprobe's own allocation (xz -T2,
// whose liblzma creates its workers with every signal blocked, counted one malloc more than
// unprobed). The creator claims a slot, the new thread gives it back once it has copied it; more
// than kStarts creations in flight at once take the heap.
constexpr size_t kStarts = 64;
Start g_starts[kStarts];
std::atomic<bool> g_start_used[kStarts];

Start *claim_start() {
  for (size_t i = 0; i < kStarts; ++i)
    // Acquire: pairs with the release in release_start; the last reader has finished with it.
    if (!g_start_used[i].load(std::memory_order_relaxed) &&
        !g_start_used[i].exchange(true, std::memory_order_acquire))
      return &g_starts[i];
  return new (std::nothrow) Start;
}

void release_start(Start *s) {
  auto at = reinterpret_cast<uintptr_t>(s), first = reinterpret_cast<uintptr_t>(g_starts);
  if (at >= first && at < first + sizeof g_starts)
    g_start_used[(at - first) / sizeof(Start)].store(false, std::memory_order_release);
  else
    delete s;
}

void *start_with_wanted(void *p) {
  Start s = *static_cast<Start *>(p);
  release_start(static_cast<Start *>(p));
  t_wanted = s.wanted;
  return s.fn(s.arg);
}

// Only a creator that "blocks" a guarded signal pays for this (a slot, or an allocation); a thread
// whose attributes give it a mask of its own starts as the attributes say, with the guarded
// signals out (pthread_attr_setsigmask_np below) and its bits clear.
USPROBE_EXPORT int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                                  void *(*fn)(void *), void *arg) noexcept {
  CreateFn real = next(g_pthread_create, "pthread_create");
  sigset_t own;
  if (!t_wanted || (attr && pthread_attr_getsigmask_np(attr, &own) == 0))
    return real(thread, attr, fn, arg);
  Start *s = claim_start();
  if (!s) return EAGAIN;
  *s = Start{fn, arg, t_wanted};
  int rc = real(thread, attr, start_with_wanted, s);
  if (rc != 0) release_start(s);
  return rc;
}

// The mask a new thread starts with (glibc sets it itself, inside pthread_create).
USPROBE_EXPORT int pthread_attr_setsigmask_np(pthread_attr_t *attr, const sigset_t *mask) {
  sigset_t copy;
  return next(g_attr_setsigmask, "pthread_attr_setsigmask_np")(attr, strip(mask, copy));
}

USPROBE_EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *old) noexcept {
  return guarded_sigaction(sig, act, old);
}
// The definition above, by a name that binds here whatever the lookups find first.
extern "C" __attribute__((visibility("hidden"), alias("sigaction"))) int usprobe_own_sigaction(
    int sig, const struct sigaction *act, struct sigaction *old) noexcept;

USPROBE_EXPORT sighandler_t signal(int sig, sighandler_t handler) noexcept {
  // glibc's signal() calls its own sigaction internally: a signal usprobe watches must not go
  // there. Others keep glibc's exact semantics (siginterrupt's flags).
  if (watched(sig)) return signal_via_sigaction(sig, handler, false);
  return through_glibc(sig, handler, next(g_signal, "signal"));
}

USPROBE_EXPORT sighandler_t bsd_signal(int sig, sighandler_t handler) noexcept {
  return signal(sig, handler);
}

USPROBE_EXPORT sighandler_t sysv_signal(int sig, sighandler_t handler) noexcept {
  return signal_via_sigaction(sig, handler, true);
}

// The System V calls (sigset, sighold, sigrelse, sigignore): glibc implements them with its own
// sigaction and sigprocmask, so a watched signal must not reach them.

// A mask change of `sig` alone; 0 or -1 with errno.
static int mask_one(int how, int sig, sigset_t *old) {
  sigset_t set;
  sigemptyset(&set);
  if (sigaddset(&set, sig) != 0) return -1;
  int rc = guarded_sigmask(how, &set, old);
  if (rc == 0) return 0;
  errno = rc;
  return -1;
}

USPROBE_EXPORT sighandler_t sigset(int sig, sighandler_t disp) noexcept {
  if (!watched(sig)) return through_glibc(sig, disp, next(g_sigset, "sigset"));
  sigset_t old;
  struct sigaction oact {};
  if (disp == SIG_HOLD) {
    if (mask_one(SIG_BLOCK, sig, &old) != 0) return SIG_ERR;
    if (sigismember(&old, sig)) return SIG_HOLD;
    if (guarded_sigaction(sig, nullptr, &oact) != 0) return SIG_ERR;
    return oact.sa_handler;
  }
  struct sigaction act {};
  act.sa_handler = disp;
  sigemptyset(&act.sa_mask);
  if (guarded_sigaction(sig, &act, &oact) != 0) return SIG_ERR;
  if (mask_one(SIG_UNBLOCK, sig, &old) != 0) return SIG_ERR;
  return sigismember(&old, sig) ? SIG_HOLD : oact.sa_handler;
}

USPROBE_EXPORT int sighold(int sig) noexcept {
  if (!watched(sig)) return next(g_sighold, "sighold")(sig);
  return mask_one(SIG_BLOCK, sig, nullptr);
}

USPROBE_EXPORT int sigrelse(int sig) noexcept {
  if (!watched(sig)) return next(g_sigrelse, "sigrelse")(sig);
  return mask_one(SIG_UNBLOCK, sig, nullptr);
}

USPROBE_EXPORT int sigignore(int sig) noexcept {
  if (!watched(sig)) return next(g_sigignore, "sigignore")(sig);
  struct sigaction act {};
  act.sa_handler = SIG_IGN;
  sigemptyset(&act.sa_mask);
  return guarded_sigaction(sig, &act, nullptr);
}
