// What one read of the time stamp counter costs (scripts/bench's latency section): the floor of a
// latency probe has two of them, and on a VM rdtsc costs about 10 ns.
//
//   build/bench/tsc_cost [N]      (N reads, default 10,000,000)
//   ns_per_rdtsc=11.412 reads=10000000
//
// The thread's CPU time over N reads in a loop whose sum is kept (so none is left out).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <x86intrin.h>

volatile unsigned long long tsc_sink;

int main(int argc, char **argv) {
  long reads = argc > 1 ? strtol(argv[1], NULL, 10) : 10000000;
  if (reads <= 0) {
    fprintf(stderr, "usage: tsc_cost [N]\n");
    return 64;
  }
  struct timespec a, b;
  unsigned long long sum = 0;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
  for (long i = 0; i < reads; ++i) sum += __rdtsc();
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
  tsc_sink = sum;
  const double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
  printf("ns_per_rdtsc=%.3f reads=%ld\n", ns / (double)reads, reads);
  return 0;
}
