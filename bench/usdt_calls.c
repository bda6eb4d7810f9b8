// The CLI benchmark's USDT command (scripts/bench, "CLI: ... hits of a USDT probe"): N calls of
// usdt_tick (bench/usdt_tick.c), each passing the site of the USDT probe usprobe_bench:tick once,
// timed by the program itself, so the same number is comparable plain, under
// `usprobe count usdt:PROGRAM:usprobe_bench:tick` and under bpftrace's usdt: probe:
//
//   build/bench/usdt_calls [N]      (N defaults to 10,000,000)
//   ns_per_call=1.412 calls=10000000
//
// The time covers the loop only, not the start of the process or the attaching of probes.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "usdt_tick.h"

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  long calls = 10000000;
  if (argc > 1) {
    char *end = NULL;
    calls = strtol(argv[1], &end, 10);
    if (argc > 2 || *argv[1] == '\0' || *end != '\0' || calls <= 0) {
      fprintf(stderr, "usage: usdt_calls [N]\n");
      return 64;
    }
  }
  const double start = now_ns();
  long x = 0;
  for (long i = 0; i < calls; ++i) x = usdt_tick(x);
  const double elapsed = now_ns() - start;
  if (x != calls) {
    fprintf(stderr, "usdt_calls: usdt_tick returned %ld after %ld calls\n", x, calls);
    return 1;
  }
  printf("ns_per_call=%.3f calls=%ld\n", elapsed / (double)calls, calls);
  return 0;
}
