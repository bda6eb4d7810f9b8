// The CLI benchmark's command (scripts/bench, "CLI: 10,000,000 calls"): N calls of loop_target in
// one loop, timed by the program itself, so the same number is comparable plain, under
// `usprobe count exe:loop_target` and under bpftrace:
//
//   build/bench/loop_calls [N]      (N defaults to 10,000,000)
//   ns_per_call=1.412 calls=10000000 cpu_ns_per_call=1.398
//
// The time covers the loop only, not the start of the process or the attaching of probes.
// ns_per_call is wall-clock time; cpu_ns_per_call is the thread's CPU time (user and system, so a
// kernel uprobe's handler counts too), which leaves out the time the thread waited for a CPU on a
// busy machine ("CLI, usprobe run" uses it). loop_target(i) is called with i = 0, 1, ..., N - 1,
// so a probe's maps are exact functions of N.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile long loop_sink;

// noipa: a real call every time (no inlining, no cloning), to the exported symbol.
__attribute__((noipa, used, visibility("default"))) void loop_target(int i) {
  loop_sink += i;
}

static double clock_ns(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  long calls = 10000000;
  if (argc > 1) {
    char *end = NULL;
    calls = strtol(argv[1], &end, 10);
    if (argc > 2 || *argv[1] == '\0' || *end != '\0' || calls <= 0) {
      fprintf(stderr, "usage: loop_calls [N]\n");
      return 64;
    }
  }
  const double start = clock_ns(CLOCK_MONOTONIC);
  const double cpu_start = clock_ns(CLOCK_THREAD_CPUTIME_ID);
  for (long i = 0; i < calls; ++i) loop_target((int)i);
  const double cpu_elapsed = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu_start;
  const double elapsed = clock_ns(CLOCK_MONOTONIC) - start;
  printf("ns_per_call=%.3f calls=%ld cpu_ns_per_call=%.3f\n", elapsed / (double)calls, calls,
         cpu_elapsed / (double)calls);
  return 0;
}
