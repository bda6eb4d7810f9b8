/* count_libc: probe libc functions inside this very process, do some real work, and print how
 * often each ran, which path each probe took, and a histogram of malloc sizes taken from the
 * argument register by a callback.
 *
 *   build/examples/count_libc [THREADS]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <usprobe/usprobe.h>

static const char *const kProbes[] = {
    "libc:malloc", "libc:free",   "libc:calloc", "libc:realloc",        "libc:strlen",
    "libc:strcmp", "libc:memcpy", "libc:qsort",  "libc:snprintf",       "libc:fwrite",
    "libc:fopen",  "libc:fclose", "libc:getenv", "libc:pthread_create",
};
enum { kNumProbes = sizeof kProbes / sizeof kProbes[0] };

/* malloc sizes, log2 buckets. A handler runs on the thread that called malloc, so the buckets are
 * shared between threads here; an example can afford the atomics that usprobe's own counters
 * avoid (they are per thread). */
static atomic_ulong size_buckets[48];

static void on_malloc(usprobe_hit *hit, void *user) {
  (void)user;
  unsigned long n = usprobe_arg(hit, 0), b = 0;
  while (n > 1 && b < 47) n >>= 1, ++b;
  atomic_fetch_add_explicit(&size_buckets[b], 1, memory_order_relaxed);
}

static int cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Real work: make words, sort them, write them out, look some up. */
static void *work(void *arg) {
  unsigned seed = (unsigned)(size_t)arg;
  enum { kWords = 20000 };
  char **words = calloc(kWords, sizeof *words);
  for (int i = 0; i < kWords; ++i) {
    char buf[32];
    int len = snprintf(buf, sizeof buf, "w%08x", rand_r(&seed));
    words[i] = malloc((size_t)len + 1 + (size_t)(rand_r(&seed) % 200));
    memcpy(words[i], buf, (size_t)len + 1);
  }
  qsort(words, kWords, sizeof *words, cmp);
  FILE *f = tmpfile();
  size_t total = 0;
  for (int i = 0; i < kWords; ++i) {
    total += strlen(words[i]);
    fwrite(words[i], 1, strlen(words[i]), f);
  }
  if (f) fclose(f);
  for (int i = 0; i < kWords; ++i) free(words[i]);
  free(words);
  (void)getenv("HOME");
  return (void *)total;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 4;
  usprobe_link *links[kNumProbes];
  int errors[kNumProbes];
  usprobe_consumer malloc_sizes = {on_malloc, NULL, NULL};

  /* One batch: one round of code patching for all of them. Built-in counters only... */
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int n = usprobe_attach_batch(kProbes, kNumProbes, NULL, links, errors);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  if (n < kNumProbes) fprintf(stderr, "count_libc: %s\n", usprobe_last_error());
  /* ...and a second consumer on malloc with a callback: the patch is shared. */
  usprobe_link *sizes = NULL;
  if (usprobe_attach("libc:malloc", &malloc_sizes, &sizes) < 0)
    fprintf(stderr, "count_libc: %s\n", usprobe_last_error());
  printf("attached %d probes in %.2f ms\n\n", n,
         (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);

  pthread_t tids[64];
  if (threads > 64) threads = 64;
  for (int i = 0; i < threads; ++i) pthread_create(&tids[i], NULL, work, (void *)(size_t)(i + 1));
  for (int i = 0; i < threads; ++i) pthread_join(tids[i], NULL);

  printf("%-46s %-5s %12s %8s\n", "probe", "path", "hits", "missed");
  for (int i = 0; i < kNumProbes; ++i) {
    if (!links[i]) continue;
    printf("%-46s %-5s %12llu %8llu\n", usprobe_link_name(links[i]),
           usprobe_link_uses_int3(links[i]) ? "int3" : "jump",
           (unsigned long long)usprobe_link_hits(links[i]),
           (unsigned long long)usprobe_link_missed(links[i]));
  }
  if (sizes) {
    printf("\nmalloc sizes (from arg0, %llu calls seen by the callback):\n",
           (unsigned long long)usprobe_link_hits(sizes));
    for (int b = 0; b < 48; ++b) {
      unsigned long c = atomic_load(&size_buckets[b]);
      if (c) printf("  %8lu .. %-8lu %10lu\n", 1ul << b, (2ul << b) - 1, c);
    }
    usprobe_detach(sizes);
  }
  usprobe_detach_batch(links, kNumProbes);
  return 0;
}
