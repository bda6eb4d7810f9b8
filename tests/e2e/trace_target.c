// `usprobe trace`'s program for rates and strings (tests/e2e/trace_test.cc, bench/trace_bench.sh):
//
//   trace_target loop T N RATE   T threads (the main thread when T is 1), each calling
//                                trace_work(0..N-1); RATE calls a second per thread, 0 for as fast
//                                as it goes. Prints, per run, "calls=T*N ns_per_call=X
//                                rate_per_thread=Y" (the loop's own time, the slowest thread's).
//   trace_target name TEXT       trace_name(TEXT) once; prints "name LENGTH"
//
// Pacing: every 256 calls a thread compares the calls made with the calls due by now
// (CLOCK_MONOTONIC through the vDSO) and spins until they are due, so the rate holds over any
// window longer than a few microseconds without a system call in the loop.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TRACE_PROBED __attribute__((noipa, used, visibility("default")))

volatile long trace_sink;

TRACE_PROBED void trace_work(long i) {
  trace_sink += i;
}

TRACE_PROBED void trace_name(const char *name) {
  trace_sink += name[0];
}

static long number(const char *text) {
  char *end = NULL;
  long v = strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || v < 0) {
    fprintf(stderr, "usage: trace_target loop T N RATE | name TEXT\n");
    exit(64);
  }
  return v;
}

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

struct loop {
  long calls, rate;
  double elapsed_ns;
};

static void *run_loop(void *arg) {
  struct loop *l = arg;
  const double start = now_ns();
  const double ns_per_call = l->rate > 0 ? 1e9 / (double)l->rate : 0;
  for (long i = 0; i < l->calls; ++i) {
    if (ns_per_call > 0 && i % 256 == 0)
      while (now_ns() - start < (double)i * ns_per_call) {
      }
    trace_work(i);
  }
  l->elapsed_ns = now_ns() - start;
  return NULL;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "name") == 0) {
    trace_name(argv[2]);
    printf("name %zu\n", strlen(argv[2]));
    return 0;
  }
  if (argc != 5 || strcmp(argv[1], "loop") != 0) number("");
  long threads = number(argv[2]), calls = number(argv[3]), rate = number(argv[4]);
  if (threads < 1 || threads > 64) number("");
  struct loop loops[64];
  pthread_t ids[64];
  for (long t = 0; t < threads; ++t) loops[t] = (struct loop){calls, rate, 0};
  if (threads == 1) {
    run_loop(&loops[0]);
  } else {
    for (long t = 0; t < threads; ++t)
      if (pthread_create(&ids[t], NULL, run_loop, &loops[t]) != 0) return 1;
    for (long t = 0; t < threads; ++t) pthread_join(ids[t], NULL);
  }
  double slowest = 0;
  for (long t = 0; t < threads; ++t)
    if (loops[t].elapsed_ns > slowest) slowest = loops[t].elapsed_ns;
  printf("calls=%ld ns_per_call=%.3f rate_per_thread=%.0f\n", threads * calls,
         calls > 0 ? slowest / (double)calls : 0.0,
         slowest > 0 ? (double)calls * 1e9 / slowest : 0.0);
  return 0;
}
