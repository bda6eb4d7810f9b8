/* USDT probes under the CLI (tests/e2e/usdt_test.cc): calls libusprobe_usdt_targets.so's probes a
   known number of times. Prints what it did, so that a test can see its output unchanged.
     usdt_target strings   ust_fire_string over {"alpha", "beta", "gamma"}, i = 0..2
     usdt_target gated N   ust_fire_gated(i) for i = 0..N-1; prints how many fired
     usdt_target regs N    ust_fire_regs() N times (its note has 12 arguments) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "targets/usdt_targets.h"

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "strings") == 0) {
    static const char *const names[] = {"alpha", "beta", "gamma"};
    for (long i = 0; i < 3; ++i) ust_fire_string(names, i);
    printf("strings 3\n");
    return 0;
  }
  if (argc >= 3 && strcmp(argv[1], "gated") == 0) {
    long n = strtol(argv[2], NULL, 10), fired = 0;
    for (long i = 0; i < n; ++i) fired += ust_fire_gated(i);
    printf("gated %ld fired %ld\n", n, fired);
    return 0;
  }
  if (argc >= 3 && strcmp(argv[1], "regs") == 0) {
    long n = strtol(argv[2], NULL, 10);
    for (long i = 0; i < n; ++i) ust_fire_regs();
    printf("regs %ld\n", n);
    return 0;
  }
  fprintf(stderr, "usage: usdt_target strings | gated N | regs N\n");
  return 2;
}
