// The process inject_test.cc attaches to: threads caught inside system calls that must restart
// after an injection as if nothing happened, and one that computes without pause.
//   main     read() on stdin (a pipe the test writes to once it is done injecting)
//   sleeper  one nanosleep of 3 s: it must return 0 after the whole time
//   waiter   futex wait on a word only main sets: it must return 0, woken, not EINTR
//   spinner  floating-point arithmetic, each round checked against the first
// Each thread reports on stdout; the first line names the threads' tids. With `--hide DIR`, the
// process first moves to a mount namespace of its own with an empty tmpfs over DIR.
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static atomic_int futex_word;
static atomic_int stop_spin;
static atomic_int tids[3];

static long elapsed_ms(const struct timespec *a, const struct timespec *b) {
  return (b->tv_sec - a->tv_sec) * 1000 + (b->tv_nsec - a->tv_nsec) / 1000000;
}

static void *sleeper(void *arg) {
  (void)arg;
  atomic_store(&tids[0], (int)gettid());
  struct timespec start, end, req = {3, 0};
  clock_gettime(CLOCK_MONOTONIC, &start);
  int rc = nanosleep(&req, NULL);
  int e = rc ? errno : 0;
  clock_gettime(CLOCK_MONOTONIC, &end);
  printf("nanosleep rc=%d errno=%d slept_ms=%ld\n", rc, e, elapsed_ms(&start, &end));
  return NULL;
}

static void *waiter(void *arg) {
  (void)arg;
  atomic_store(&tids[1], (int)gettid());
  long rc = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
  printf("futex rc=%ld errno=%d word=%d\n", rc, rc ? errno : 0, atomic_load(&futex_word));
  return NULL;
}

__attribute__((noinline)) static double round_of(double x) {
  for (int i = 0; i < 1000; i++) x = x * 1.0000001 + 0.5 / (i + 1.0);
  return x;
}

static void *spinner(void *arg) {
  (void)arg;
  atomic_store(&tids[2], (int)gettid());
  const double first = round_of(1.0);
  long rounds = 0, wrong = 0;
  while (!atomic_load(&stop_spin)) {
    if (round_of(1.0) != first) wrong++;
    rounds++;
  }
  printf("spin rounds=%s wrong=%ld\n", rounds > 0 ? "some" : "none", wrong);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--hide") == 0) {
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("none", argv[2], "tmpfs", 0, NULL) != 0) {
      printf("hide failed: %s\n", strerror(errno));
      return 3;
    }
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  pthread_t t[3];
  pthread_create(&t[0], NULL, sleeper, NULL);
  pthread_create(&t[1], NULL, waiter, NULL);
  pthread_create(&t[2], NULL, spinner, NULL);
  while (!atomic_load(&tids[0]) || !atomic_load(&tids[1]) || !atomic_load(&tids[2])) usleep(1000);
  printf("ready main=%d sleeper=%d waiter=%d spinner=%d\n", (int)getpid(), atomic_load(&tids[0]),
         atomic_load(&tids[1]), atomic_load(&tids[2]));
  char buf[64] = {0};
  ssize_t n = read(0, buf, sizeof buf - 1);
  printf("read rc=%zd errno=%d data=%.*s\n", n, n < 0 ? errno : 0,
         n > 0 ? (int)strcspn(buf, "\n") : 0, buf);
  atomic_store(&futex_word, 1);
  syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
  pthread_join(t[0], NULL);
  pthread_join(t[1], NULL);
  atomic_store(&stop_spin, 1);
  pthread_join(t[2], NULL);
  printf("done\n");
  return 0;
}
