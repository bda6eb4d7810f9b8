// A second program for tests/e2e: e2e_target's exec-other mode execs it to check that probes on
// e2e_target's own functions (exe:e2e_work) stop resolving in the new image while libc probes go on
// counting. It defines no e2e_* function.
//
//   e2e_other K        K calls of libc's getppid, then prints "other K"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: e2e_other K\n");
    return 64;
  }
  int n = atoi(argv[1]);
  for (int i = 0; i < n; ++i) getppid();
  printf("other %d\n", n);
  return 0;
}
