// The program the stacks end-to-end tests run under `usprobe stacks` (tests/e2e/stacks_test.cc):
// two call paths to one function, taken a known number of times. Built -O2
// -fomit-frame-pointer (stacks_target: only DWARF unwinding sees its callers) and
// -fno-omit-frame-pointer (stacks_target_fp: for --fp).
//
//   stacks_target [A B [STATUS]]     main -> path_a -> shared_leaf, A times (default 3), then
//                                    main -> path_b -> middle -> shared_leaf, B times (default 5);
//                                    prints "a A b B" and exits with STATUS (default 0)
//   stacks_target fork [STATUS]      the same with A = 3 and B = 5, but the A calls are made by a
//                                    forked child that leaves with _exit (no exit handlers)
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

// noipa: no inlining, cloning or interprocedural shortcuts: every call is a real call, so every
// function is a frame of the stack.
#define STACKS_FRAME __attribute__((noipa, used, visibility("default")))

volatile long stacks_sink;

STACKS_FRAME void shared_leaf(int i) {
  stacks_sink += i;
}

// The statements after each call keep it from being a tail call (a jmp, no frame of its own).
STACKS_FRAME void middle(int i) {
  shared_leaf(i);
  stacks_sink += 1;
}

STACKS_FRAME void path_a(int i) {
  shared_leaf(i);
  stacks_sink += 2;
}

STACKS_FRAME void path_b(int i) {
  middle(i);
  stacks_sink += 3;
}

static int number(const char *text) {
  char *end = NULL;
  long v = strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || v < 0 || v > INT_MAX) {
    fprintf(stderr, "usage: stacks_target [A B [STATUS]] | fork [STATUS]\n");
    exit(64);
  }
  return (int)v;
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "fork") == 0) {
    int status = argc >= 3 ? number(argv[2]) : 0;
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
      for (int i = 0; i < 3; ++i) path_a(i);
      _exit(0);
    }
    int wstatus = 0;
    if (waitpid(child, &wstatus, 0) != child || !WIFEXITED(wstatus)) return 1;
    for (int i = 0; i < 5; ++i) path_b(i);
    printf("a 3 b 5\n");
    return status;
  }
  int a = argc >= 3 ? number(argv[1]) : 3;
  int b = argc >= 3 ? number(argv[2]) : 5;
  int status = argc >= 4 ? number(argv[3]) : 0;
  for (int i = 0; i < a; ++i) path_a(i);
  for (int i = 0; i < b; ++i) path_b(i);
  printf("a %d b %d\n", a, b);
  return status;
}
