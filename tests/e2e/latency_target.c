// The program the latency end-to-end tests run under `usprobe latency` (tests/e2e/latency_test.cc):
// calls of known duration, counted, from the main thread and from threads that exit before it.
//
//   latency_target MS N M T [STATUS]
//     N calls of latency_sleep(MS) (each sleeps MS milliseconds with nanosleep) on the main
//     thread, then T threads that each make M calls of latency_fast(i) and exit; prints
//     "slept N fast T x M" and exits with STATUS (default 0).
#define _GNU_SOURCE
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

// noipa: no inlining, cloning or interprocedural shortcuts: every call goes to the exported symbol.
#define LATENCY_PROBED __attribute__((noipa, used, visibility("default")))

volatile long latency_sink;

LATENCY_PROBED void latency_sleep(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

LATENCY_PROBED int latency_fast(int i) {
  latency_sink += i;
  return i + 1;
}

static int number(const char *text) {
  char *end = NULL;
  long v = strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || v < 0 || v > INT_MAX) {
    fprintf(stderr, "usage: latency_target MS N M T [STATUS]\n");
    exit(64);
  }
  return (int)v;
}

static void *fast_thread(void *arg) {
  int m = (int)(long)arg;
  for (int i = 0; i < m; ++i) latency_fast(i);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: latency_target MS N M T [STATUS]\n");
    return 64;
  }
  int ms = number(argv[1]), n = number(argv[2]), m = number(argv[3]), t = number(argv[4]);
  int status = argc == 6 ? number(argv[5]) : 0;
  if (t > 64) t = 64;
  for (int i = 0; i < n; ++i) latency_sleep(ms);
  pthread_t threads[64];
  for (int i = 0; i < t; ++i)
    if (pthread_create(&threads[i], NULL, fast_thread, (void *)(long)m) != 0) return 1;
  for (int i = 0; i < t; ++i) pthread_join(threads[i], NULL);
  printf("slept %d fast %d x %d\n", n, t, m);
  return status;
}
