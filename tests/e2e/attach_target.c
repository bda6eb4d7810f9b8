// A long-running process for `usprobe ... -p PID` (attach_test.cc): threads caught in the middle of
// what servers do when a probe arrives, and a main thread that calls the probed function exactly as
// often as it is told.
//
//   attach_target CONTROL_FIFO READ_FIFO
//
// Threads: one in nanosleep (50 ms at a time; a sleep that ends early or with EINTR is counted),
// one in read() on READ_FIFO (an EINTR is counted), one in a futex wait (an EINTR is counted), one
// calling attach_spin() as fast as it can, and, with ATTACH_TARGET_BLOCKER in the environment, one
// that blocks every signal (pthread_sigmask) and sleeps (or, with ATTACH_TARGET_BLOCKER=spin, calls
// attach_spin without pause, as liblzma's compressing workers run). The main thread prints
//   ready pid=PID driven=0xADDR bytes=HEX32
// (attach_driven's address and its first 16 code bytes, before anything is probed), then waits in
// epoll_wait (an EINTR is counted: the thread usprobe -p seizes sits there) for lines from
// CONTROL_FIFO:
//   call N    calls attach_driven N times, then prints "called N"
//   fork N    forks a child that calls attach_driven N times, prints "child PID called N" and stays
//             alive (pause) until it is killed
//   open N    opens /dev/null, prints "open N fd=FD" (the number it got) and closes it
//   exec      forks a child that execs /bin/sleep 30, then prints "exec'd PID"
//   handler N raises SIGUSR2, whose handler main installed before the ready line, and prints
//             "handler N ran=R own=O kernel=K": R the handler's runs so far, O whether sigaction
//             gives back that handler, K whether the kernel has it (the rt_sigaction system call)
//   quit      stops the threads and prints "eintr=E short=S reads=R spins>0=B", then exits 0
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_stop;
static atomic_int g_started;  // threads that are running their own code (their masks set)
static atomic_int g_eintr, g_short;
static atomic_long g_reads, g_spins;
static uint32_t g_futex;  // 0 = wait; the main thread stores 1 and wakes at quit
static const char *g_read_fifo;
static volatile long g_sink;

__attribute__((noinline, used)) long attach_driven(long x) {
  g_sink += x;
  __asm__ volatile("" ::: "memory");
  return g_sink;
}

__attribute__((noinline, used)) long attach_spin(long x) {
  g_sink ^= x;
  __asm__ volatile("" ::: "memory");
  return g_sink;
}

static atomic_int g_usr2;
static void on_usr2(int sig) {
  (void)sig;
  atomic_fetch_add(&g_usr2, 1);
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void *sleeper(void *arg) {
  (void)arg;
  atomic_fetch_add(&g_started, 1);
  while (!atomic_load(&g_stop)) {
    struct timespec want = {0, 50 * 1000 * 1000};
    double t0 = now_s();
    int rc = nanosleep(&want, NULL);
    if (rc != 0 && errno == EINTR) atomic_fetch_add(&g_eintr, 1);
    if (now_s() - t0 < 0.0499) atomic_fetch_add(&g_short, 1);
  }
  return NULL;
}

static void *reader(void *arg) {
  (void)arg;
  atomic_fetch_add(&g_started, 1);
  int fd = open(g_read_fifo, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  char buf[256];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      atomic_fetch_add(&g_reads, n);
      continue;
    }
    if (n < 0 && errno == EINTR) {
      atomic_fetch_add(&g_eintr, 1);
      continue;
    }
    break;  // end of file: the test closed its end at quit
  }
  close(fd);
  return NULL;
}

static void *futex_waiter(void *arg) {
  (void)arg;
  atomic_fetch_add(&g_started, 1);
  while (__atomic_load_n(&g_futex, __ATOMIC_ACQUIRE) == 0) {
    long rc = syscall(SYS_futex, &g_futex, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    if (rc != 0 && errno == EINTR) atomic_fetch_add(&g_eintr, 1);
  }
  return NULL;
}

static void *spinner(void *arg) {
  (void)arg;
  atomic_fetch_add(&g_started, 1);
  long i = 0;
  while (!atomic_load(&g_stop)) {
    attach_spin(++i);
    atomic_store_explicit(&g_spins, i, memory_order_relaxed);
  }
  return NULL;
}

// With every signal blocked: sleeps, or (ATTACH_TARGET_BLOCKER=spin) calls attach_spin without
// pause, as liblzma's compressing workers run.
static void *blocker(void *arg) {
  int spin = arg != NULL;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  atomic_fetch_add(&g_started, 1);
  long i = 0;
  while (!atomic_load(&g_stop)) {
    if (spin) {
      attach_spin(++i);
      continue;
    }
    struct timespec want = {0, 20 * 1000 * 1000};
    nanosleep(&want, NULL);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: attach_target CONTROL_FIFO READ_FIFO\n");
    return 2;
  }
  g_read_fifo = argv[2];
  struct sigaction usr2 = {.sa_handler = on_usr2};
  sigaction(SIGUSR2, &usr2, NULL);
  const char *blocks = getenv("ATTACH_TARGET_BLOCKER");
  pthread_t threads[5];
  int n = 0;
  pthread_create(&threads[n++], NULL, sleeper, NULL);
  pthread_create(&threads[n++], NULL, reader, NULL);
  pthread_create(&threads[n++], NULL, futex_waiter, NULL);
  pthread_create(&threads[n++], NULL, spinner, NULL);
  if (blocks)
    pthread_create(&threads[n++], NULL, blocker, strcmp(blocks, "spin") == 0 ? (void *)1 : NULL);

  // Made before the ready line: a test may lower RLIMIT_NOFILE once it has seen it.
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) {
    perror("epoll_create1");
    return 1;
  }
  // The ready line says every thread is where it will be: glibc blocks every signal in a new
  // thread until it runs its own code.
  while (atomic_load(&g_started) < n) sched_yield();
  const unsigned char *code = (const unsigned char *)(uintptr_t)&attach_driven;
  printf("ready pid=%d driven=%p bytes=", (int)getpid(), (void *)code);
  for (int i = 0; i < 16; ++i) printf("%02x", code[i]);
  printf("\n");
  fflush(stdout);

  FILE *control = fopen(argv[1], "re");
  if (!control) {
    perror(argv[1]);
    return 1;
  }
  // The main thread, the one usprobe -p seizes, waits in epoll_wait for each command: a call that
  // fails with EINTR when anything interrupts it, even with no handler to run (the kernel does not
  // restart it). Unbuffered, so that a second line that came with the first is still in the pipe
  // for epoll to see.
  setvbuf(control, NULL, _IONBF, 0);
  struct epoll_event want = {.events = EPOLLIN};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fileno(control), &want) != 0) {
    perror("epoll_ctl");
    return 1;
  }
  char line[128];
  for (;;) {
    struct epoll_event got;
    int ready = epoll_wait(ep, &got, 1, -1);
    if (ready < 0) {
      if (errno == EINTR) atomic_fetch_add(&g_eintr, 1);
      continue;
    }
    if (!fgets(line, sizeof line, control)) break;
    long count = 0;
    if (sscanf(line, "call %ld", &count) == 1) {
      for (long i = 0; i < count; ++i) attach_driven(i);
      printf("called %ld\n", count);
    } else if (sscanf(line, "fork %ld", &count) == 1) {
      fflush(stdout);
      pid_t pid = fork();
      if (pid == 0) {
        for (long i = 0; i < count; ++i) attach_driven(i);
        printf("child %d called %ld\n", (int)getpid(), count);
        fflush(stdout);
        for (;;) pause();
      }
    } else if (sscanf(line, "open %ld", &count) == 1) {
      int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
      printf("open %ld fd=%d\n", count, fd);
      close(fd);
    } else if (sscanf(line, "handler %ld", &count) == 1) {
      raise(SIGUSR2);
      struct sigaction back;
      sigaction(SIGUSR2, NULL, &back);
      struct {
        void *handler;
        unsigned long flags;
        void *restorer;
        uint64_t mask;
      } kernel = {0};
      syscall(SYS_rt_sigaction, SIGUSR2, NULL, &kernel, sizeof kernel.mask);
      printf("handler %ld ran=%d own=%d kernel=%d\n", count, atomic_load(&g_usr2),
             back.sa_handler == on_usr2, kernel.handler == (void *)on_usr2);
    } else if (strncmp(line, "exec", 4) == 0) {
      fflush(stdout);
      pid_t pid = fork();
      if (pid == 0) {
        execl("/bin/sleep", "sleep", "30", (char *)NULL);
        _exit(127);
      }
      printf("exec'd %d\n", (int)pid);
    } else if (strncmp(line, "quit", 4) == 0) {
      break;
    }
    fflush(stdout);
  }
  atomic_store(&g_stop, 1);
  __atomic_store_n(&g_futex, 1, __ATOMIC_RELEASE);
  syscall(SYS_futex, &g_futex, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
  for (int i = 0; i < n; ++i) pthread_join(threads[i], NULL);
  printf("eintr=%d short=%d reads=%ld spins>0=%d\n", atomic_load(&g_eintr), atomic_load(&g_short),
         atomic_load(&g_reads), atomic_load(&g_spins) > 0);
  return 0;
}
