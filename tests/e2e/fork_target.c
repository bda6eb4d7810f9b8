// The program of the fork tests (count_test.cc): calls that happen inside fork(). It registers two
// sets of fork handlers: the "early" ones from .preinit_array, before any library's constructor
// runs (so before those of a preloaded library such as usprobe's agent), and the "late" ones from
// main. pthread_atfork runs prepare handlers in the reverse order of registration and parent and
// child handlers in order, so a library that registers its own handlers from its constructor has
// the early handlers run inside its own (after its prepare handler, before its parent or child
// handler) and the late ones outside.
//
//   fork_target N      starts a thread and joins it (so that libc locks malloc around each fork,
//                      as in any program that has had threads), then forks N times; each child
//                      exits at once, the parent waits for it. Prints
//                      "forks=N early_prepare=A early_parent=B early_child=C late_prepare=D
//                      late_parent=E late_child=F", the handlers' own counts of their calls (the
//                      children's kept in shared memory).
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define FORK_PROBED __attribute__((noipa, used, visibility("default")))

// The handlers' counts. Shared with the children, which count their child handlers there.
enum { kEarlyPrepare, kEarlyParent, kEarlyChild, kLatePrepare, kLateParent, kLateChild, kCounts };
static volatile long *counts;

FORK_PROBED void early_prepare(void) {
  __atomic_add_fetch(&counts[kEarlyPrepare], 1, __ATOMIC_SEQ_CST);
}
FORK_PROBED void early_parent(void) {
  __atomic_add_fetch(&counts[kEarlyParent], 1, __ATOMIC_SEQ_CST);
}
FORK_PROBED void early_child(void) {
  __atomic_add_fetch(&counts[kEarlyChild], 1, __ATOMIC_SEQ_CST);
}
FORK_PROBED void late_prepare(void) {
  __atomic_add_fetch(&counts[kLatePrepare], 1, __ATOMIC_SEQ_CST);
}
FORK_PROBED void late_parent(void) {
  __atomic_add_fetch(&counts[kLateParent], 1, __ATOMIC_SEQ_CST);
}
FORK_PROBED void late_child(void) {
  __atomic_add_fetch(&counts[kLateChild], 1, __ATOMIC_SEQ_CST);
}

static void register_early(int argc, char **argv, char **envp) {
  (void)argc, (void)argv, (void)envp;
  void *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) abort();
  counts = shared;
  if (pthread_atfork(early_prepare, early_parent, early_child) != 0) abort();
}
__attribute__((section(".preinit_array"),
               used)) static void (*const preinit)(int, char **, char **) = register_early;

static void *nothing(void *arg) {
  return arg;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: fork_target N\n");
    return 64;
  }
  const int n = atoi(argv[1]);
  if (pthread_atfork(late_prepare, late_parent, late_child) != 0) return 1;
  pthread_t t;
  if (pthread_create(&t, NULL, nothing, NULL) != 0 || pthread_join(t, NULL) != 0) return 1;
  int forks = 0;
  for (int i = 0; i < n; ++i) {
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) _exit(0);
    int status;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status)) return 1;
    ++forks;
  }
  printf(
      "forks=%d early_prepare=%ld early_parent=%ld early_child=%ld late_prepare=%ld "
      "late_parent=%ld late_child=%ld\n",
      forks, counts[kEarlyPrepare], counts[kEarlyParent], counts[kEarlyChild], counts[kLatePrepare],
      counts[kLateParent], counts[kLateChild]);
  return 0;
}
