// The program the end-to-end tests run under the usprobe CLI (tests/e2e/). Each mode makes a known
// number of calls of known functions (in threads, across fork and exec), or ends in a known way,
// and prints a line that tells the test what it did. Only the exported functions below are named
// e2e_*, so `exe:e2e_*` matches exactly e2e_work, e2e_greet and e2e_args.
//
//   calls N            e2e_work(0..N-1)
//   threads T N        T new threads, each e2e_work(0..N-1); the main thread makes no call
//   fork N M           N/2 calls, fork; the child makes M calls and exits; the parent waits, then
//                      makes the other N - N/2; prints "fork parent=PID child=PID"
//   exec N M           N calls, prints "exec pid=PID", then execv(itself, "calls", M)
//   exec-other N PATH [ARG...]   N calls, then execv(PATH, ARG...): an image with no e2e_work
//   greet              e2e_greet("alice", 1), ("bob", 22), ("carol", -3), ((char *)0x10, 4),
//                      ("dave", 5): the fourth name is a bad pointer that e2e_greet never reads
//   args               e2e_args("xyz", -5, 3000000000u, -1234567890123, 0xdeadbeefcafe, 'Q')
//   sleep S            3 calls, prints "sleeping" (flushed), sleeps S seconds, prints "slept"
//   ticks K MS         K rounds of 100 calls, each followed by a MS-millisecond sleep
//   libc K             K calls of libc's getppid, then K of memmove (an IFUNC, through a pointer
//                      so that the compiler keeps the calls)
//   exit K             2 calls, then exit(K)
//   raise SIG          2 calls, then raise(SIG) with the default action
//   marker FILE        creates FILE (the tests check that a refused command never ran)
//   blocked-threads T N   T threads that block every signal (pthread_sigmask, as liblzma's
//                      workers do) and make N calls each; the main thread blocks every signal
//                      (sigprocmask) while it creates them
//   own-trap N LIB     installs a SIGTRAP handler (as crash reporters do) and raises SIGTRAP 3
//                      times, dlopens LIB, N calls; then ignores SIGTRAP, raises it, dlcloses LIB,
//                      N calls; prints "own-trap handled H" (H: the handler's runs)
//   raw-blocked N      blocks SIGTRAP with a raw rt_sigprocmask system call (which no library can
//                      see), then N calls
//
// The same source is linked statically as e2e_static (a command the CLI must refuse).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// noipa: no inlining, cloning (e2e_work.constprop.0) or interprocedural shortcuts, so every call
// goes to the exported symbol with its arguments in the System V registers.
#define E2E_PROBED __attribute__((noipa, used, visibility("default")))

volatile long e2e_sink;
const char *volatile e2e_last_name;

E2E_PROBED int e2e_work(int i) {
  e2e_sink += i;
  return i + 1;
}

// Never reads `name`: the greet mode passes a bad pointer on purpose.
E2E_PROBED void e2e_greet(const char *name, int n) {
  e2e_last_name = name;
  e2e_sink += n;
}

E2E_PROBED void e2e_args(const char *s, int i, unsigned u, long l, unsigned long ul, int c) {
  e2e_last_name = s;
  e2e_sink += i + (long)u + l + (long)ul + c;
}

static void usage(void) {
  fprintf(stderr,
          "usage: e2e_target calls N | threads T N | fork N M | exec N M | "
          "exec-other N PATH [ARG...] | greet | args | sleep S | ticks K MS | libc K | exit K | "
          "raise SIG | marker FILE | blocked-threads T N | own-trap N LIB | raw-blocked N\n");
  exit(64);
}

static int number(const char *text) {
  char *end = NULL;
  long v = strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || v < INT_MIN || v > INT_MAX) usage();
  return (int)v;
}

static void work(int n) {
  for (int i = 0; i < n; ++i) e2e_work(i);
}

static void *thread_main(void *arg) {
  work((int)(long)arg);
  return NULL;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

static int run_threads(int nthreads, int n) {
  pthread_t threads[64];
  if (nthreads < 1 || nthreads > 64) usage();
  for (int t = 0; t < nthreads; ++t)
    if (pthread_create(&threads[t], NULL, thread_main, (void *)(long)n) != 0) return 1;
  for (int t = 0; t < nthreads; ++t) pthread_join(threads[t], NULL);
  printf("threads %d x %d\n", nthreads, n);
  return 0;
}

static void *blocked_thread_main(void *arg) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  work((int)(long)arg);
  return NULL;
}

static int run_blocked_threads(int nthreads, int n) {
  pthread_t threads[64];
  if (nthreads < 1 || nthreads > 64) usage();
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, &old);
  for (int t = 0; t < nthreads; ++t)
    if (pthread_create(&threads[t], NULL, blocked_thread_main, (void *)(long)n) != 0) return 1;
  sigprocmask(SIG_SETMASK, &old, NULL);
  for (int t = 0; t < nthreads; ++t) pthread_join(threads[t], NULL);
  printf("blocked-threads %d x %d\n", nthreads, n);
  return 0;
}

static volatile sig_atomic_t own_trap_handled;
static void on_own_trap(int sig, siginfo_t *info, void *ctx) {
  (void)ctx;
  if (sig == SIGTRAP && info->si_code == SI_TKILL) ++own_trap_handled;
}

static int run_own_trap(int n, const char *lib) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_own_trap;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGTRAP, &sa, NULL) != 0) return 1;
  for (int i = 0; i < 3; ++i) raise(SIGTRAP);
  void *handle = dlopen(lib, RTLD_NOW);
  if (!handle) return 2;
  work(n);
  signal(SIGTRAP, SIG_IGN);
  raise(SIGTRAP);
  dlclose(handle);
  work(n);
  printf("own-trap handled %d\n", (int)own_trap_handled);
  return 0;
}

static int run_fork(int n, int m) {
  work(n / 2);
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    work(m);
    exit(0);
  }
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return 1;
  work(n - n / 2);
  printf("fork parent=%d child=%d\n", (int)getpid(), (int)child);
  return 0;
}

static int run_exec(int n, const char *m) {
  char self[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len <= 0) return 1;
  self[len] = '\0';
  work(n);
  printf("exec pid=%d\n", (int)getpid());
  fflush(stdout);
  char *argv[] = {self, "calls", (char *)m, NULL};
  execv(self, argv);
  perror("execv");
  return 1;
}

static int run_exec_other(int n, char **argv) {
  work(n);
  fflush(stdout);
  execv(argv[0], argv);
  perror("execv");
  return 1;
}

static void greet(const char *name, int n) {
  e2e_greet(name, n);
  printf("hello %s %d\n", name, n);
}

static int run_greet(void) {
  greet("alice", 1);
  greet("bob", 22);
  greet("carol", -3);
  e2e_greet((const char *)0x10, 4);
  printf("hello (bad pointer) 4\n");
  greet("dave", 5);
  return 0;
}

// Sites the CLI refuses before it starts the command (errors_test.cc), in a function that is never
// called: asm_sites+0x1 is inside the 5-byte mov, and the jrcxz at asm_sites+0x5 cannot be moved
// into a trampoline (it reaches only 128 bytes).
__asm__(
    ".text\n"
    ".globl asm_sites\n"
    ".type asm_sites, @function\n"
    "asm_sites:\n"
    "  movl $1, %eax\n"
    "  jrcxz 1f\n"
    "1:\n"
    "  ret\n"
    ".size asm_sites, .-asm_sites\n");

int main(int argc, char **argv) {
  if (argc < 2) usage();
  const char *mode = argv[1];
  if (strcmp(mode, "calls") == 0 && argc == 3) {
    int n = number(argv[2]);
    work(n);
    printf("calls %d\n", n);
  } else if (strcmp(mode, "threads") == 0 && argc == 4) {
    return run_threads(number(argv[2]), number(argv[3]));
  } else if (strcmp(mode, "fork") == 0 && argc == 4) {
    return run_fork(number(argv[2]), number(argv[3]));
  } else if (strcmp(mode, "exec") == 0 && argc == 4) {
    number(argv[3]);
    return run_exec(number(argv[2]), argv[3]);
  } else if (strcmp(mode, "exec-other") == 0 && argc >= 4) {
    return run_exec_other(number(argv[2]), argv + 3);
  } else if (strcmp(mode, "greet") == 0 && argc == 2) {
    return run_greet();
  } else if (strcmp(mode, "args") == 0 && argc == 2) {
    e2e_args("xyz", -5, 3000000000u, -1234567890123L, 0xdeadbeefcafeUL, 'Q');
    printf("args\n");
  } else if (strcmp(mode, "sleep") == 0 && argc == 3) {
    int seconds = number(argv[2]);
    work(3);
    printf("sleeping\n");
    fflush(stdout);
    sleep_ms(seconds * 1000L);
    printf("slept\n");
  } else if (strcmp(mode, "ticks") == 0 && argc == 4) {
    int rounds = number(argv[2]), ms = number(argv[3]);
    for (int r = 0; r < rounds; ++r) {
      work(100);
      sleep_ms(ms);
    }
    printf("ticks %d\n", rounds);
  } else if (strcmp(mode, "libc") == 0 && argc == 3) {
    int n = number(argv[2]);
    for (int i = 0; i < n; ++i) getppid();
    void *(*volatile move)(void *, const void *, size_t) = memmove;
    char bytes[16] = "abcdefgh";
    for (int i = 0; i < n; ++i) move(bytes + 1, bytes, 8);
    printf("libc %d\n", n);
  } else if (strcmp(mode, "exit") == 0 && argc == 3) {
    int code = number(argv[2]);
    work(2);
    printf("exit %d\n", code);
    exit(code);
  } else if (strcmp(mode, "raise") == 0 && argc == 3) {
    int sig = number(argv[2]);
    work(2);
    fflush(stdout);
    signal(sig, SIG_DFL);
    raise(sig);
    return 1;
  } else if (strcmp(mode, "blocked-threads") == 0 && argc == 4) {
    return run_blocked_threads(number(argv[2]), number(argv[3]));
  } else if (strcmp(mode, "own-trap") == 0 && argc == 4) {
    return run_own_trap(number(argv[2]), argv[3]);
  } else if (strcmp(mode, "raw-blocked") == 0 && argc == 3) {
    int n = number(argv[2]);
    unsigned long trap = 1ul << (SIGTRAP - 1);
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, &trap, NULL, sizeof trap);
    work(n);
    printf("raw-blocked %d\n", n);
  } else if (strcmp(mode, "marker") == 0 && argc == 3) {
    int fd = open(argv[2], O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) return 1;
    close(fd);
    printf("marker created\n");
  } else {
    usage();
  }
  return 0;
}
