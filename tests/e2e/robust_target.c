// The program of the robustness tests (tests/e2e/robust_test.cc): a command that does what a
// careless or hostile one can do to usprobe.
//
//   fds                 prints "fds N N ..." (its open descriptors, sorted, the one that lists
//                       them left out; "Nc" when close-on-exec) and "region FD" (USPROBE_AGENT_FD,
//                       or "-" when unset)
//   scribble N          N calls of robust_work, then writes pseudo-random bytes over the first
//                       4 KiB of usprobe's shared region (the header) and over 64 KiB of its slots,
//                       found through /proc/self/maps; prints "scribbled"
//   scribble-header N   N calls of robust_work, then pseudo-random bytes over the header only
//                       (its first 4 KiB), then N calls in a new thread (which takes a new slot);
//                       prints "done"
//   pid-sleep S         3 calls, prints "pid PID" (flushed), sleeps S seconds, prints "slept"
//   getpids N           N calls of getpid, then prints "pid PID" (for trace's pid column)
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline, noipa)) int robust_work(int i) {
  return i * 3 + 1;
}

static int number(const char *s) {
  char *end = NULL;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < 0 || v > 100000000) {
    fprintf(stderr, "robust_target: bad number '%s'\n", s);
    exit(2);
  }
  return (int)v;
}

static int cmp(const void *a, const void *b) {
  return *(const int *)a - *(const int *)b;
}

static int run_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return 1;
  int fds[256], n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL && n < 256) {
    if (e->d_name[0] == '.') continue;
    int fd = atoi(e->d_name);
    if (fd != dirfd(d)) fds[n++] = fd;
  }
  closedir(d);
  qsort(fds, (size_t)n, sizeof fds[0], cmp);
  printf("fds");
  for (int i = 0; i < n; ++i)
    printf(" %d%s", fds[i], (fcntl(fds[i], F_GETFD) & FD_CLOEXEC) ? "c" : "");
  const char *region = getenv("USPROBE_AGENT_FD");
  printf("\nregion %s\n", region ? region : "-");
  return 0;
}

static void *work_thread(void *arg) {
  volatile int sink = 0;
  for (int i = 0; i < *(int *)arg; ++i) sink += robust_work(i);
  return NULL;
}

static int run_scribble(int n, int header_only) {
  volatile int sink = 0;
  for (int i = 0; i < n; ++i) sink += robust_work(i);
  FILE *maps = fopen("/proc/self/maps", "re");
  if (!maps) return 1;
  char line[512];
  unsigned long start = 0, end = 0;
  while (fgets(line, sizeof line, maps)) {
    if (!strstr(line, "/memfd:usprobe") || !strstr(line, "rw-s")) continue;
    sscanf(line, "%lx-%lx", &start, &end);
    break;
  }
  fclose(maps);
  if (start == 0) {
    printf("no region\n");
    return 1;
  }
  unsigned char *region = (unsigned char *)start;
  size_t size = end - start;
  uint64_t slot_offset = 0;  // Header: magic, version, mode, region_size, probe_count, ...
  memcpy(&slot_offset, region + 64, sizeof slot_offset);  // offsetof(Header, slot_offset)
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < 4096 && i < size; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    region[i] = (unsigned char)(x >> 56);
  }
  if (header_only) {
    pthread_t t;
    if (pthread_create(&t, NULL, work_thread, &n) != 0 || pthread_join(t, NULL) != 0) return 1;
    printf("done\n");
    return 0;
  }
  for (size_t i = slot_offset; i < slot_offset + 65536 && i < size; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    region[i] = (unsigned char)(x >> 56);
  }
  printf("scribbled\n");
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "fds") == 0) return run_fds();
  if (argc == 3 && strcmp(argv[1], "scribble") == 0) return run_scribble(number(argv[2]), 0);
  if (argc == 3 && strcmp(argv[1], "scribble-header") == 0) return run_scribble(number(argv[2]), 1);
  if (argc == 3 && strcmp(argv[1], "pid-sleep") == 0) {
    for (int i = 0; i < 3; ++i) robust_work(i);
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    struct timespec ts = {number(argv[2]), 0};
    while (nanosleep(&ts, &ts) != 0) {
    }
    printf("slept\n");
    return 0;
  }
  if (argc == 3 && strcmp(argv[1], "getpids") == 0) {
    int n = number(argv[2]);
    for (int i = 0; i < n; ++i) getpid();
    printf("pid %d\n", (int)getpid());
    return 0;
  }
  fprintf(stderr, "usage: robust_target fds | scribble N | pid-sleep S | getpids N\n");
  return 2;
}
