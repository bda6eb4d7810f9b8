// The program follow_test.cc runs under the usprobe CLI: it is not linked with the library it
// probes, and loads it only after it started.
//
//   dlopen_target LIB K [ROUNDS]   ROUNDS times (2 unless given): dlopen(LIB), K calls of its
//                                  dlopen_lib_work, dlclose(LIB); after each dlclose prints
//                                  "round R mapped=M" (M: 1 when LIB is still mapped), and at
//                                  the end "calls N" (N the calls made in all)
//
// Exit status 0, or 3 when LIB cannot be loaded or lacks dlopen_lib_work.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Whether /proc/self/maps maps `path` (compared by its real path).
static int mapped(const char *real) {
  FILE *f = fopen("/proc/self/maps", "re");
  if (!f) return -1;
  char line[PATH_MAX + 256];
  int found = 0;
  while (!found && fgets(line, sizeof line, f)) {
    char *slash = strchr(line, '/');
    if (!slash) continue;
    slash[strcspn(slash, "\n")] = '\0';
    found = strcmp(slash, real) == 0;
  }
  fclose(f);
  return found;
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 4) {
    fprintf(stderr, "usage: dlopen_target LIB K [ROUNDS]\n");
    return 64;
  }
  const char *lib = argv[1];
  int k = atoi(argv[2]);
  int rounds = argc == 4 ? atoi(argv[3]) : 2;
  char real[PATH_MAX];
  if (!realpath(lib, real)) snprintf(real, sizeof real, "%s", lib);
  long calls = 0;
  for (int r = 1; r <= rounds; ++r) {
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      fprintf(stderr, "dlopen_target: %s\n", dlerror());
      return 3;
    }
    int (*work)(int) = (int (*)(int))dlsym(h, "dlopen_lib_work");
    if (!work) {
      fprintf(stderr, "dlopen_target: %s\n", dlerror());
      return 3;
    }
    for (int i = 0; i < k; ++i) calls += work(i) > 0;
    dlclose(h);
    printf("round %d mapped=%d\n", r, mapped(real));
  }
  printf("calls %ld\n", calls);
  return 0;
}
