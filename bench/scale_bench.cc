// usprobe_scale: does the hit path scale across threads, and how long does a batch of 10,000
// probes take to attach and detach (issue 6; DESIGN.md, "The hit path" and "Measuring").
//
// Scaling. For each case below and each thread count 1, 2, 4, ... up to the CPUs this process may
// run on (the last count is always all of them), start that many threads, each pinned to its own
// CPU, each calling tgt_counted through a volatile function pointer in a loop, all at the same
// time for a fixed window. Each thread reads its own CPU clock (CLOCK_THREAD_CPUTIME_ID) at the
// start and end of the window, so "ns per call per thread" is what a call cost the thread that
// made it while every other thread was calling too; time the thread spent descheduled is not in
// it (--wall uses each thread's wall time over the window instead). The figure is the mean over
// the threads (their CPU time summed over their calls summed), the median over repetitions;
// "ratio" is the 1-thread time over the n-thread time, i.e. the per-thread hit rate with n threads
// relative to 1 thread. Every count is checked against the calls made.
//
//   plain                   no probe: the cost of the call and loop alone
//   kernel uprobe           the kernel's uprobe on tgt_counted (perf_event_open, inherited by the
//                           threads; skipped with the reason when the kernel refuses)
//   kernel uretprobe        the kernel's uretprobe on tgt_counted
//   usprobe entry counter   entry probe, built-in counter (per thread, summed when read)
//   usprobe return counter  "uretprobe:" probe, built-in counter
//   usprobe entry tls cb    entry probe, C callback incrementing a thread_local: a callback that
//                           writes nothing shared, the control for the next row
//   usprobe entry atomic cb entry probe, C callback doing fetch_add on one global
//                           std::atomic<uint64_t>: the shared write the hit path rules forbid
//                           (DESIGN.md), to show what it costs once several cores hit
// The kernel rows run first, before usprobe patches tgt_counted: never both on one site.
// Goal: with all CPUs busy, the per-thread rate of the usprobe entry and return counters is at
// least 0.95 of their 1-thread rate.
//
// Batch. usprobe_attach_batch of 10,000 locations (many_fn_0 .. many_fn_9999 of
// libusprobe_many.so, tests/targets/many_functions.S), each function called once and its count
// checked, then usprobe_detach_batch of the 10,000 links; wall time of each call, several rounds.
// The first round also reads the library's symbol table; the goal (each at most 50 ms) is judged
// on the median round, and the first and slowest rounds are printed beside it.
//
// Flags: --reps=N (default 5), --window=SECONDS (default 0.2), --rounds=N (batch, default 3),
// --max-threads=N (cap the thread counts), --wall, --no-scale, --no-batch.
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "targets/targets.h"
#include "usprobe/usprobe.h"
#ifdef USPROBE_BENCH_KERNEL_UPROBE
#include "support/kernel_uprobe.h"
#endif

extern "C" {
extern const uint64_t many_count;
extern long (*const many_table[])(long);
}

namespace {

using Fn = long (*)(long);

constexpr const char *kLib = "libusprobe_targets.so";
constexpr const char *kManyLib = "libusprobe_many.so";

struct Options {
  int reps = 5;
  double window_s = 0.2;
  int rounds = 3;
  int max_threads = 0;  // 0: every CPU
  bool wall = false;
  bool scale = true;
  bool batch = true;
};
Options g_opt;

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

uint64_t now_ns(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

// ---- Scaling ------------------------------------------------------------------------------------

// The CPUs this process may run on, in order.
std::vector<int> usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  if (cpus.empty()) cpus.push_back(0);
  return cpus;
}

// 1, 2, 4, ... below `max`, then `max` itself.
std::vector<int> thread_counts(int max) {
  std::vector<int> counts;
  for (int n = 1; n < max; n *= 2) counts.push_back(n);
  counts.push_back(max);
  return counts;
}

// What one thread reports; a cache line each, written once at the end.
struct alignas(64) ThreadResult {
  uint64_t calls = 0;
  uint64_t ns = 0;
  bool returned_right = true;
};

// The start and stop flags: read by every thread, written once each by the main thread.
struct alignas(64) Flags {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<bool> stop{false};
};

std::atomic<uint64_t> g_shared_hits{0};
thread_local uint64_t t_hits = 0;
std::atomic<uint64_t> g_tls_hits_total{0};  // each calling thread adds its t_hits when done

// The shared write the hit path must never do: every thread's hit on one cache line.
void count_shared(usprobe_hit *, void *) {
  g_shared_hits.fetch_add(1, std::memory_order_relaxed);
}
// The same callback without the shared write.
void count_own(usprobe_hit *, void *) {
  ++t_hits;
}

// One warm-up call (the thread's first hit registers it with usprobe), then calls in batches of
// 1024 until told to stop. Each call takes the previous result: f(1), f(2), ..., so the last
// result says how many calls were made.
void caller(Fn f, int cpu, Flags *flags, ThreadResult *out) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  Fn volatile vf = f;
  long x = vf(0);
  flags->ready.fetch_add(1, std::memory_order_release);
  while (!flags->go.load(std::memory_order_acquire)) __builtin_ia32_pause();
  clockid_t clock = g_opt.wall ? CLOCK_MONOTONIC : CLOCK_THREAD_CPUTIME_ID;
  uint64_t t0 = now_ns(clock);
  while (!flags->stop.load(std::memory_order_relaxed))
    for (int i = 0; i < 1024; ++i) x = vf(x);
  uint64_t t1 = now_ns(clock);
  out->calls = static_cast<uint64_t>(x) - 1;
  out->ns = t1 - t0;
  out->returned_right = x > 0;
  g_tls_hits_total.fetch_add(t_hits, std::memory_order_relaxed);
  t_hits = 0;
}

struct Window {
  double ns_per_call = NAN;  // mean per thread
  uint64_t calls = 0;        // all threads, without the warm-up calls
  bool returned_right = true;
};

// `n` threads on the first `n` usable CPUs, all calling `f` over one window.
Window run_window(Fn f, const std::vector<int> &cpus, int n) {
  Flags flags;
  std::vector<ThreadResult> results(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i)
    threads.emplace_back(caller, f, cpus[static_cast<size_t>(i)], &flags,
                         &results[static_cast<size_t>(i)]);
  while (flags.ready.load(std::memory_order_acquire) < n) std::this_thread::yield();
  flags.go.store(true, std::memory_order_release);
  std::this_thread::sleep_for(std::chrono::duration<double>(g_opt.window_s));
  flags.stop.store(true, std::memory_order_relaxed);
  for (auto &t : threads) t.join();
  Window w;
  uint64_t ns = 0;
  for (const auto &r : results) {
    w.calls += r.calls;
    ns += r.ns;
    w.returned_right = w.returned_right && r.returned_right;
  }
  w.ns_per_call = w.calls ? static_cast<double>(ns) / static_cast<double>(w.calls) : NAN;
  return w;
}

// A case: how to set it up (returns why not, or "") and how many hits it saw since set up.
struct Case {
  const char *name;
  std::function<std::string()> setup;
  std::function<uint64_t()> hits;
  std::function<void()> teardown;
  bool goal = false;  // judged against the 0.95 goal
  // Set up and torn down around every window, not once: the kernel's uprobes. Once threads that
  // inherited a kernel uprobe event have exited, the kernel (6.18 here) counts only some or none
  // of the hits of threads created later, though the event stays open: so each window opens its
  // own event before creating its threads.
  bool per_window = false;
};

struct CaseResult {
  std::string name;
  std::string skipped;
  bool goal = false;
  std::vector<int> threads;
  std::vector<double> ns;  // median ns per call per thread, one per thread count
};

std::vector<std::string> g_warnings;

// Hits counted over one window must equal the calls made in it, warm-up calls included.
void check_hits(Case &c, uint64_t before, uint64_t want) {
  // A thread's kernel perf counts reach the event only as the thread finishes exiting, which
  // can be after pthread_join returned: give them a moment.
  uint64_t got = c.hits() - before;
  for (int i = 0; i < 100 && got < want; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    got = c.hits() - before;
  }
  if (got != want) {
    char b[256];
    std::snprintf(b, sizeof b, "%s: %" PRIu64 " hits counted, %" PRIu64 " calls made", c.name, got,
                  want);
    g_warnings.emplace_back(b);
  }
}

CaseResult run_case(Case &c, const std::vector<int> &cpus, const std::vector<int> &counts) {
  CaseResult res{c.name, "", c.goal, {}, {}};
  if (c.setup && !c.per_window) res.skipped = c.setup();
  for (int n : counts) {
    std::vector<double> reps;
    for (int r = 0; r < g_opt.reps && res.skipped.empty(); ++r) {
      if (c.setup && c.per_window) res.skipped = c.setup();
      if (!res.skipped.empty()) break;
      uint64_t before = c.hits ? c.hits() : 0;
      Window w = run_window(tgt_counted, cpus, n);
      if (!w.returned_right) g_warnings.push_back(std::string(c.name) + ": a call returned wrong");
      if (c.hits) check_hits(c, before, w.calls + static_cast<uint64_t>(n));
      if (c.teardown && c.per_window) c.teardown();
      reps.push_back(w.ns_per_call);
    }
    if (!res.skipped.empty()) break;
    res.threads.push_back(n);
    res.ns.push_back(median(reps));
    std::printf("  %-26s %3d threads  %8.2f ns/call per thread\n", c.name, n, res.ns.back());
    std::fflush(stdout);
  }
  if (c.teardown && !c.per_window) c.teardown();
  return res;
}

// usprobe cases: one link on `location`, its count read through `count`.
struct UsprobeCase {
  usprobe_link *link = nullptr;
  std::string attach(const std::string &location, const usprobe_consumer *consumer,
                     unsigned flags) {
    if (usprobe_attach_ex(location.c_str(), consumer, flags, &link) != 0)
      return "usprobe_attach(" + location + "): " + usprobe_last_error();
    if (usprobe_link_uses_int3(link))
      g_warnings.push_back(location + " took the int3 path: " + usprobe_link_int3_reason(link));
    return "";
  }
  void detach() {
    if (link) usprobe_detach(link);
    link = nullptr;
  }
};

#ifdef USPROBE_BENCH_KERNEL_UPROBE
std::optional<usprobe::test::KernelUprobe> g_kernel;

std::string open_kernel(bool ret) {
  auto where = usprobe::test::file_location_of(reinterpret_cast<const void *>(&tgt_counted));
  if (!where) return "tgt_counted: " + where.error();
  auto probe = usprobe::test::KernelUprobe::open(where->path, where->offset, ret);
  if (!probe)
    return std::string(ret ? "kernel uretprobe" : "kernel uprobe") + " refused: " + probe.error();
  g_kernel.emplace(std::move(*probe));
  return "";
}
#endif

std::vector<CaseResult> run_scaling() {
  std::vector<int> cpus = usable_cpus();
  int max = static_cast<int>(cpus.size());
  if (g_opt.max_threads > 0) max = std::min(max, g_opt.max_threads);
  std::vector<int> counts = thread_counts(max);
  std::printf("Scaling: %d usable CPUs; threads:", static_cast<int>(cpus.size()));
  for (int n : counts) std::printf(" %d", n);
  std::printf("; %d repetitions of %.2f s each; %s\n", g_opt.reps, g_opt.window_s,
              g_opt.wall ? "wall time per thread" : "CPU time per thread");

  const std::string entry = std::string(kLib) + ":tgt_counted";
  static const usprobe_consumer kShared{count_shared, nullptr, nullptr};
  static const usprobe_consumer kOwn{count_own, nullptr, nullptr};
  UsprobeCase up;
  uint64_t shared_before = 0, tls_before = 0;

  std::vector<Case> cases;
  cases.push_back({"plain", nullptr, nullptr, nullptr});
#ifdef USPROBE_BENCH_KERNEL_UPROBE
  // First, while tgt_counted is untouched by usprobe.
  auto kernel_hits = [] { return g_kernel ? g_kernel->count() : 0; };
  auto kernel_close = [] { g_kernel.reset(); };
  cases.push_back(
      {"kernel uprobe", [] { return open_kernel(false); }, kernel_hits, kernel_close, false, true});
  cases.push_back({"kernel uretprobe", [] { return open_kernel(true); }, kernel_hits, kernel_close,
                   false, true});
#else
  auto no_kernel = [] { return std::string("built without tests/support (kernel_uprobe.h)"); };
  cases.push_back({"kernel uprobe", no_kernel, nullptr, nullptr});
  cases.push_back({"kernel uretprobe", no_kernel, nullptr, nullptr});
#endif
  auto detach = [&] { up.detach(); };
  cases.push_back({"usprobe entry counter", [&] { return up.attach(entry, nullptr, 0); },
                   [&] { return usprobe_link_hits(up.link); }, detach, true});
  cases.push_back({"usprobe return counter",
                   [&] { return up.attach("uretprobe:" + entry, nullptr, 0); },
                   [&] { return usprobe_link_return_hits(up.link); }, detach, true});
  cases.push_back({"usprobe entry tls cb",
                   [&] {
                     tls_before = g_tls_hits_total.load();
                     return up.attach(entry, &kOwn, 0);
                   },
                   [&] { return g_tls_hits_total.load() - tls_before; }, detach});
  cases.push_back({"usprobe entry atomic cb",
                   [&] {
                     shared_before = g_shared_hits.load();
                     return up.attach(entry, &kShared, 0);
                   },
                   [&] { return g_shared_hits.load() - shared_before; }, detach});

  std::vector<CaseResult> results;
  for (Case &c : cases) results.push_back(run_case(c, cpus, counts));
  return results;
}

void print_scaling(const std::vector<CaseResult> &results) {
  std::printf("\n%-26s %8s %22s %18s %12s\n", "case", "threads", "ns/call per thread",
              "Mcalls/s per thread", "ratio vs 1");
  std::printf("%s\n", std::string(90, '-').c_str());
  for (const CaseResult &r : results) {
    if (!r.skipped.empty()) {
      std::printf("%-26s skipped: %s\n", r.name.c_str(), r.skipped.c_str());
      continue;
    }
    for (size_t i = 0; i < r.threads.size(); ++i)
      std::printf("%-26s %8d %22.2f %18.1f %12.3f\n", i ? "" : r.name.c_str(), r.threads[i],
                  r.ns[i], 1e3 / r.ns[i], r.ns[0] / r.ns[i]);
  }
  std::printf("\n%-60s %8s %8s  %s\n", "goal", "value", "goal", "status");
  std::printf("%s\n", std::string(90, '-').c_str());
  for (const CaseResult &r : results) {
    if (!r.goal) continue;
    std::string what = r.name + ": rate per thread, all CPUs / 1 thread";
    if (!r.skipped.empty()) {
      std::printf("%-60s %8s %8s  n/a (%s)\n", what.c_str(), "n/a", ">= 0.95", r.skipped.c_str());
      continue;
    }
    double ratio = r.ns.front() / r.ns.back();
    std::printf("%-60s %8.3f %8s  %s%s\n", what.c_str(), ratio, ">= 0.95",
                ratio >= 0.95 ? "met" : "MISSED",
                r.threads.back() == 1 ? " (1 CPU only: nothing to compare)" : "");
  }
  std::printf(
      "\n(ns/call per thread: %s of each thread over the window / its calls, averaged over the "
      "threads, median over repetitions; all threads call at once, each pinned to its own CPU)\n",
      g_opt.wall ? "wall time" : "CPU time");
}

// ---- Batch attach and detach --------------------------------------------------------------------

struct BatchResult {
  std::string error;
  std::vector<double> attach_ms, detach_ms;
};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

BatchResult run_batch() {
  BatchResult res;
  size_t n = many_count;
  std::vector<std::string> names(n);
  std::vector<const char *> locations(n);
  for (size_t i = 0; i < n; ++i) {
    names[i] = std::string(kManyLib) + ":many_fn_" + std::to_string(i);
    locations[i] = names[i].c_str();
  }
  std::vector<usprobe_link *> links(n);
  std::vector<int> errors(n);
  std::printf("\nBatch: %zu probes (%s), %d rounds\n", n, kManyLib, g_opt.rounds);
  for (int round = 0; round < g_opt.rounds; ++round) {
    auto t0 = std::chrono::steady_clock::now();
    int attached = usprobe_attach_batch(locations.data(), n, nullptr, links.data(), errors.data());
    double attach_ms = ms_since(t0);
    if (attached != static_cast<int>(n)) {
      res.error = "usprobe_attach_batch attached " + std::to_string(attached) + " of " +
                  std::to_string(n) + ": " + usprobe_last_error();
      std::vector<usprobe_link *> got;
      for (usprobe_link *l : links)
        if (l) got.push_back(l);
      usprobe_detach_batch(got.data(), got.size());
      return res;
    }
    // Each function once: each link must count exactly one hit.
    for (size_t i = 0; i < n; ++i) {
      Fn volatile f = many_table[i];
      if (f(static_cast<long>(i)) != static_cast<long>(i) + 1 || usprobe_link_hits(links[i]) != 1) {
        res.error = "many_fn_" + std::to_string(i) + " miscounted after the batch attach";
        break;
      }
    }
    t0 = std::chrono::steady_clock::now();
    int rc = usprobe_detach_batch(links.data(), n);
    double detach_ms = ms_since(t0);
    if (rc != 0 && res.error.empty())
      res.error = std::string("usprobe_detach_batch: ") + usprobe_last_error();
    if (!res.error.empty()) return res;
    res.attach_ms.push_back(attach_ms);
    res.detach_ms.push_back(detach_ms);
    std::printf("  round %d: attach %8.2f ms   detach %8.2f ms\n", round + 1, attach_ms, detach_ms);
    std::fflush(stdout);
  }
  return res;
}

void print_batch(const BatchResult &b) {
  std::printf("\n%-44s %10s %10s %10s %8s  %s\n", "goal (10,000 probes, one batch)", "median",
              "first", "max", "goal", "status");
  std::printf("%s\n", std::string(100, '-').c_str());
  if (!b.error.empty()) {
    std::printf("batch attach/detach: n/a (%s)\n", b.error.c_str());
    return;
  }
  auto row = [](const char *what, const std::vector<double> &ms) {
    double m = median(ms);
    std::printf("%-44s %7.2f ms %7.2f ms %7.2f ms %8s  %s\n", what, m, ms.front(),
                *std::max_element(ms.begin(), ms.end()), "<= 50 ms", m <= 50 ? "met" : "MISSED");
  };
  row("usprobe_attach_batch", b.attach_ms);
  row("usprobe_detach_batch", b.detach_ms);
  std::printf(
      "\n(wall time of one call; median over rounds; the first round also reads the library's "
      "symbols)\n");
}

// -1: run; else exit with that status.
int parse_args(int argc, char **argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char *prefix) -> const char * {
      size_t len = std::strlen(prefix);
      return a.compare(0, len, prefix) == 0 ? argv[i] + len : nullptr;
    };
    if (const char *v = value("--reps=")) {
      g_opt.reps = std::max(1, std::atoi(v));
    } else if (const char *v2 = value("--window=")) {
      g_opt.window_s = std::max(0.01, std::atof(v2));
    } else if (const char *v3 = value("--rounds=")) {
      g_opt.rounds = std::max(1, std::atoi(v3));
    } else if (const char *v4 = value("--max-threads=")) {
      g_opt.max_threads = std::atoi(v4);
    } else if (a == "--wall") {
      g_opt.wall = true;
    } else if (a == "--no-scale") {
      g_opt.scale = false;
    } else if (a == "--no-batch") {
      g_opt.batch = false;
    } else {
      std::printf(
          "usage: %s [--reps=N] [--window=SECONDS] [--rounds=N] [--max-threads=N] [--wall]\n"
          "          [--no-scale] [--no-batch]\n",
          argv[0]);
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  return -1;
}

}  // namespace

int main(int argc, char **argv) {
  if (int status = parse_args(argc, argv); status >= 0) return status;
  std::vector<CaseResult> scaling;
  BatchResult batch;
  if (g_opt.scale) scaling = run_scaling();
  if (g_opt.batch) batch = run_batch();
  if (g_opt.scale) print_scaling(scaling);
  if (g_opt.batch) print_batch(batch);
  if (!g_warnings.empty()) {
    std::printf("\nwarnings:\n");
    for (const auto &w : g_warnings) std::printf("  %s\n", w.c_str());
  }
  return 0;
}
