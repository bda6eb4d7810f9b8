// The attach benchmark's target (bench/attach_bench.cc, scripts/bench "Attach"): a process that
// usprobe and bpftrace attach to while it runs, and that reports what the attach cost it.
//
//   attach_bench_target        (driven through stdin and stdout, one line each way)
//
// Threads: the main thread (the one `usprobe -p` seizes, target/inject.cc) and one other thread
// each loop on clock_gettime(CLOCK_MONOTONIC) around a 200 us nanosleep and keep the largest gap
// beyond the sleep: how long the thread could not run. A third thread reads the commands on stdin
// and runs the hit loop itself, so nothing calls bench_fn between commands. At start it prints
//   ready pid=PID bench_fn=0xADDR malloc=0xADDR free=0xADDR
// (the addresses of bench_fn and of two libc functions that `libc:*` patches), then answers:
//   reset     forgets the largest gaps so far               -> "ok"
//   gaps      the largest gaps since the last reset, in microseconds beyond the sleep, and when
//             each began (CLOCK_MONOTONIC, ns)              -> "gaps main=US at=NS other=US at=NS"
//   rate MS   calls bench_fn in a loop for MS milliseconds  -> "rate ns_per_call=X calls=N"
//             (X: the thread's CPU time per call)
//   quit      (or end of input) exits 0
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile long bench_sink;

// noipa: a real call every time (no inlining, no cloning), to the symbol the probes name.
__attribute__((noipa, used, visibility("default"))) void bench_fn(int i) {
  bench_sink += i;
}

enum { kSleepNs = 200000 };

// The largest gap of one thread and when it began; the control thread stores 0 to reset.
struct Gap {
  atomic_llong max_ns;
  atomic_llong at_ns;
};
static struct Gap g_main_gap, g_other_gap;

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// Never returns: the process ends with exit() from the control thread.
static void watch_gaps(struct Gap *gap) {
  const struct timespec sleep = {0, kSleepNs};
  for (;;) {
    long long before = now_ns();
    nanosleep(&sleep, NULL);
    long long lost = now_ns() - before - kSleepNs;
    // Relaxed: a benchmark figure read some milliseconds later; a stale pair costs nothing.
    if (lost > atomic_load_explicit(&gap->max_ns, memory_order_relaxed)) {
      atomic_store_explicit(&gap->max_ns, lost, memory_order_relaxed);
      atomic_store_explicit(&gap->at_ns, before, memory_order_relaxed);
    }
  }
}

static void *other_thread(void *arg) {
  (void)arg;
  watch_gaps(&g_other_gap);
  return NULL;
}

// The time is this thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so time the thread spent
// descheduled on a busy machine is not counted as a cost of the calls; the window is wall time.
static long long thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void hit_loop(long ms) {
  const long long end = now_ns() + ms * 1000000LL, cpu_start = thread_cpu_ns();
  long calls = 0;
  while (now_ns() < end) {
    for (int i = 0; i < 10000; ++i) bench_fn(i);
    calls += 10000;
  }
  printf("rate ns_per_call=%.3f calls=%ld\n", (double)(thread_cpu_ns() - cpu_start) / (double)calls,
         calls);
}

static void *control_thread(void *arg) {
  (void)arg;
  char line[128];
  while (fgets(line, sizeof line, stdin)) {
    long ms = 0;
    if (strcmp(line, "reset\n") == 0) {
      atomic_store(&g_main_gap.max_ns, 0);
      atomic_store(&g_other_gap.max_ns, 0);
      printf("ok\n");
    } else if (strcmp(line, "gaps\n") == 0) {
      printf("gaps main=%.1f at=%lld other=%.1f at=%lld\n", atomic_load(&g_main_gap.max_ns) / 1e3,
             atomic_load(&g_main_gap.at_ns), atomic_load(&g_other_gap.max_ns) / 1e3,
             atomic_load(&g_other_gap.at_ns));
    } else if (sscanf(line, "rate %ld", &ms) == 1 && ms > 0) {
      hit_loop(ms);
    } else if (strcmp(line, "quit\n") == 0) {
      break;
    } else {
      printf("error: unknown command %s", line);
    }
    fflush(stdout);
  }
  exit(0);
}

int main(int argc, char **argv) {
  (void)argv;
  if (argc != 1) {
    fprintf(stderr,
            "usage: attach_bench_target (commands on stdin; see bench/attach_bench_target.c)\n");
    return 64;
  }
  pthread_t other, control;
  if (pthread_create(&other, NULL, other_thread, NULL) != 0 ||
      pthread_create(&control, NULL, control_thread, NULL) != 0) {
    fprintf(stderr, "attach_bench_target: pthread_create failed\n");
    return 1;
  }
  // Through the GOT in a PIE: the functions' addresses in libc, not PLT stubs.
  void *volatile m = (void *)&malloc, *volatile f = (void *)&free;
  printf("ready pid=%d bench_fn=%p malloc=%p free=%p\n", (int)getpid(), (void *)&bench_fn, m, f);
  fflush(stdout);
  watch_gaps(&g_main_gap);
}
