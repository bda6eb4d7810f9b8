// Live patching under load: caller threads run a probed function in a tight loop while the main
// thread attaches and detaches its probe thousands of times. Every attach and detach rewrites the
// code those threads are executing (int3 first, membarrier SYNC_CORE, the tail, sync, the first
// byte, sync; a signal round moves threads stopped inside a window), so this is the torture of the
// cross-modifying-code protocol as a user sees it:
//
//   - nothing crashes, and every call returns the right value, however the patch was caught;
//   - when detach returns the original bytes are back (the first 16 bytes of the function);
//   - every call made while the probe is attached is counted: per cycle, with S1 the calls the
//     callers had completed right after attach returned, S2 right before detach and H the link's
//     hits read after S2, H >= (S2 - S1) - nthreads (each thread may have had one call in flight
//     when attach returned, which may have passed the site before the patch);
//   - and no hit is invented: H <= (S3 - S0) + nthreads, with S0 read before attach and S3 after
//     detach returned (a thread may be inside its counted call when S3 is read);
//   - with a callback consumer: the callback sees its own user pointer and the probed function's
//     argument registers, and never runs after detach returned;
//   - callers that block every signal are counted on both paths (20 cycles each, in a fresh
//     process).
//
// The windows have instruction boundaries inside them: tgt_counted's jump window is three
// instructions (push, mov, lea), tgt_endbr64's two (endbr64, push), the instruction site
// tgt_counted_mid+0x7 two (add, pop). Three callers on two cores are preempted and signalled all
// the time, but interrupts land on few of the instruction boundaries of so short a loop, so these
// tortures alone rarely catch a thread inside a window: tests/api/live_patching_test.cc puts one
// there on purpose.
//
// Bounds: each loop stops at its cycle count or its time budget, whichever comes first (the time
// budget only shortens a run, it never decides the result): 10 s for tgt_counted alone, 3 s for
// each of the other single targets, 4 s for the batch, and 20 cycles (10 s at most) with every
// signal blocked; about 27 s in all. Each
// test also has a watchdog that aborts with a message instead of hanging CI when a patch round or
// a grace period never ends.
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/child_process.h"
#include "support/code_bytes.h"
#include "support/live_target.h"
#include "support/watchdog.h"
#include "targets/targets.h"
#include "usprobe/usprobe.h"

namespace {
// Scenarios that change the process for good (every signal blocked) run in a fresh process: this
// test binary started again with USPROBE_STRESS_LIVE_PATCHING_CHILD=<name>, which a static
// initializer (at the end of this file) turns into "run that scenario, exit with its status"
// before GoogleTest starts (tests/support/child_process.h).
constexpr const char *kChildEnv = "USPROBE_STRESS_LIVE_PATCHING_CHILD";
std::string run_in_child(const char *name, std::chrono::seconds limit) {
  return usprobe::test::run_in_child(kChildEnv, name, limit);
}
using usprobe::test::strf;

using Clock = std::chrono::steady_clock;

constexpr int kThreads = 3;

using usprobe::test::Watchdog;

using CodeCopy = usprobe::test::CodeBytes;  // a function's first 16 bytes

using Target = usprobe::test::LiveTarget;
using usprobe::test::counted_mid_target;
using usprobe::test::plus_one;

long call_counted(long i) {
  return tgt_counted(i);
}
long call_endbr64(long i) {
  return tgt_endbr64(i, 7);
}
long call_rip_first(long) {
  return static_cast<long>(tgt_rip_first());
}
long call_six_args(long i) {
  return tgt_six_args(i, 1, 2, 3, 4, 5);
}
long call_jcc(long i) {
  return tgt_jcc_in_window(static_cast<int>(i & 0xff));
}
long call_first(long i) {
  return tgt_call_first(i);
}
long plus_seven(long i) {
  return i + 7;
}
long rip_data_value(long) {
  return static_cast<long>(TGT_RIP_DATA_INITIAL);
}
long six_value(long i) {
  return i + 2 + 6 + 12 + 20 + 30;
}
long jcc_value(long i) {
  int x = static_cast<int>(i & 0xff);
  return x == 0 ? 100 : 2 * x;
}
long call_first_value(long i) {
  return 3 * i + 8;
}

const std::string kLib = "libusprobe_targets.so:";

Target counted_target() {
  return {"tgt_counted", kLib + "tgt_counted", reinterpret_cast<const void *>(&tgt_counted),
          call_counted, plus_one};
}
Target endbr64_target() {
  return {"tgt_endbr64", kLib + "tgt_endbr64", reinterpret_cast<const void *>(&tgt_endbr64),
          call_endbr64, plus_seven};
}

// One counter of completed calls per (thread, target), on its own cache line. Written by its
// thread only (a release store of load + 1), read by the main thread with relaxed loads followed
// by an acquire fence.
struct alignas(64) Completed {
  std::atomic<uint64_t> calls{0};
};

// Caller threads: each runs every target in turn, checks the results and publishes its counts.
class Callers {
 public:
  Callers(std::vector<Target> targets, int nthreads)
      : targets_(std::move(targets)),
        nthreads_(nthreads),
        completed_(static_cast<size_t>(nthreads) * targets_.size()),
        tids_(static_cast<size_t>(nthreads)) {
    for (int t = 0; t < nthreads_; ++t) threads_.emplace_back([this, t] { run(t); });
    // Let every thread start calling before the first attach.
    while (total(0) < static_cast<uint64_t>(nthreads_) * 16) std::this_thread::yield();
  }
  ~Callers() { stop(); }

  void stop() {
    stop_.store(true, std::memory_order_relaxed);
    for (auto &t : threads_)
      if (t.joinable()) t.join();
  }

  // Calls of target `k` completed so far, all threads.
  uint64_t total(size_t k) const {
    uint64_t sum = 0;
    for (int t = 0; t < nthreads_; ++t)
      sum += completed_[slot(t, k)].calls.load(std::memory_order_relaxed);
    // Acquire fence after the loads: pairs with each caller's release store of its count, so that
    // whatever is read after this (a link's hits) includes the hits of the calls counted here.
    std::atomic_thread_fence(std::memory_order_acquire);
    return sum;
  }
  std::vector<uint64_t> totals() const {
    std::vector<uint64_t> v(targets_.size());
    for (size_t k = 0; k < v.size(); ++k) v[k] = total(k);
    return v;
  }
  uint64_t wrong_results() const { return wrong_.load(std::memory_order_relaxed); }
  const std::string &first_wrong() const { return first_wrong_; }
  pid_t tid(int t) const { return tids_[static_cast<size_t>(t)].load(std::memory_order_acquire); }

 private:
  size_t slot(int t, size_t k) const { return static_cast<size_t>(t) * targets_.size() + k; }

  void run(int t) {
    tids_[static_cast<size_t>(t)].store(static_cast<pid_t>(syscall(SYS_gettid)),
                                        std::memory_order_release);
    long i = t * 1000003L;
    while (!stop_.load(std::memory_order_relaxed)) {
      for (size_t k = 0; k < targets_.size(); ++k, ++i) {
        const Target &tg = targets_[k];
        long got = tg.call(i);
        if (got != tg.expected(i)) {
          if (wrong_.fetch_add(1, std::memory_order_relaxed) == 0)
            first_wrong_ =
                strf("%s(%ld) returned %ld, expected %ld", tg.name, i, got, tg.expected(i));
        }
        auto &c = completed_[slot(t, k)].calls;
        // Release: a reader that sees this count also sees the call's hit, if it was counted.
        c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_release);
      }
    }
  }

  std::vector<Target> targets_;
  int nthreads_;
  std::vector<Completed> completed_;
  std::vector<std::atomic<pid_t>> tids_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> wrong_{0};
  std::string first_wrong_;  // written once, by the thread whose fetch_add saw 0
};

// Waits (yielding the CPU to the callers) until they completed `calls` more calls of target `k`,
// or a short time passed: on two cores the callers may not have run at all since attach.
void let_callers_run(const Callers &callers, size_t k, uint64_t calls) {
  uint64_t from = callers.total(k);
  auto until = Clock::now() + std::chrono::microseconds(300);
  while (callers.total(k) - from < calls && Clock::now() < until) std::this_thread::yield();
}

// Per-cycle accounting of one link, accumulated over all cycles.
struct Accounting {
  uint64_t cycles = 0;
  uint64_t attached_calls = 0;  // sum of S2 - S1
  uint64_t hits = 0;            // sum of H
  uint64_t int3_cycles = 0;     // cycles whose site took the int3 path
  std::string int3_reason;
  uint64_t low_violations = 0, high_violations = 0;
  std::string first_violation;

  void add(uint64_t s0, uint64_t s1, uint64_t s2, uint64_t h, uint64_t s3, int nthreads,
           const char *what) {
    ++cycles;
    attached_calls += s2 - s1;
    hits += h;
    const uint64_t n = static_cast<uint64_t>(nthreads);
    bool low = h + n < s2 - s1;  // H >= (S2 - S1) - n, without unsigned underflow
    bool high = h > s3 - s0 + n;
    if ((low || high) && first_violation.empty())
      first_violation =
          strf("%s cycle %" PRIu64 ": S0=%" PRIu64 " S1=%" PRIu64 " S2=%" PRIu64 " H=%" PRIu64
               " S3=%" PRIu64 ": %s",
               what, cycles, s0, s1, s2, h, s3,
               low ? "calls made while attached were not counted" : "more hits than calls");
    low_violations += low;
    high_violations += high;
  }
};

// What a callback consumer checks on every hit.
struct CallbackCycle {
  std::atomic<bool> detached{false};  // set by the main thread after detach returned
  uint64_t magic = 0x5553505242450000;
};
std::atomic<uint64_t> g_callback_calls{0};
std::atomic<uint64_t> g_callback_late{0};     // ran after its link's detach returned
std::atomic<uint64_t> g_callback_bad_hit{0};  // wrong user pointer, ip or argument
uintptr_t g_callback_expected_ip = 0;
bool g_callback_at_entry = true;  // else at tgt_counted_mid+0x7, where %rax == %rdi == x
thread_local uint64_t t_callback_work = 0;

void on_counted_entry(usprobe_hit *hit, void *user) {
  auto *cycle = static_cast<CallbackCycle *>(user);
  // Acquire pairs with the main thread's release store after detach: a callback that starts after
  // the flag was set is a late one.
  if (cycle->detached.load(std::memory_order_acquire))
    g_callback_late.fetch_add(1, std::memory_order_relaxed);
  bool ok = cycle->magic == 0x5553505242450000 && usprobe_hit_ip(hit) == g_callback_expected_ip &&
            (g_callback_at_entry ? usprobe_hit_return_address(hit) != 0
                                 : usprobe_hit_reg(hit, USPROBE_RAX) == usprobe_arg(hit, 0));
  // A little work: mix the argument into a per-thread value (the argument is the caller's i).
  uint64_t x = usprobe_arg(hit, 0);
  for (int r = 0; r < 8; ++r) x = (x ^ (x >> 29)) * 0xbf58476d1ce4e5b9ull;
  t_callback_work += x;
  if (!ok) g_callback_bad_hit.fetch_add(1, std::memory_order_relaxed);
  g_callback_calls.fetch_add(1, std::memory_order_relaxed);
}

void print_rate(const char *what, uint64_t cycles, Clock::duration took, Clock::duration attach,
                Clock::duration detach) {
  double s = std::chrono::duration<double>(took).count();
  double n = cycles ? static_cast<double>(cycles) : 1.0;
  std::printf("%s: %" PRIu64
              " attach/detach cycles in %.2f s: %.0f cycles/s (attach %.0f us, "
              "detach %.0f us on average)\n",
              what, cycles, s, s > 0 ? cycles / s : 0.0,
              std::chrono::duration<double, std::micro>(attach).count() / n,
              std::chrono::duration<double, std::micro>(detach).count() / n);
}

// The main loop of the single-target tests: attach, let the callers run, read S2 and H, detach,
// `max_cycles` times or until `budget` is spent.
void run_attach_detach_cycles(const Target &target, uint64_t max_cycles, Clock::duration budget,
                              bool with_callback, int nthreads = kThreads) {
  Watchdog watchdog(target.name);
  const CodeCopy before(target.code);
  Callers callers({target}, nthreads);
  Accounting acc;
  std::vector<std::unique_ptr<CallbackCycle>> cycles_state;
  g_callback_expected_ip = reinterpret_cast<uintptr_t>(target.code) + target.site_offset;
  g_callback_at_entry = target.site_offset == 0;
  const uint64_t calls_before = g_callback_calls.load(), late_before = g_callback_late.load(),
                 bad_before = g_callback_bad_hit.load();
  uint64_t attach_failures = 0;
  std::string attach_error;
  bool patched_seen = false;
  Clock::duration in_attach{}, in_detach{};

  const auto start = Clock::now();
  for (uint64_t c = 0; c < max_cycles && Clock::now() - start < budget; ++c) {
    usprobe_consumer consumer{};
    const usprobe_consumer *cons = nullptr;
    if (with_callback) {
      cycles_state.push_back(std::make_unique<CallbackCycle>());
      consumer = {on_counted_entry, cycles_state.back().get(), nullptr};
      cons = &consumer;
    }
    const uint64_t s0 = callers.total(0);
    const auto t0 = Clock::now();
    usprobe_link *link = nullptr;
    if (int rc = usprobe_attach(target.location.c_str(), cons, &link); rc < 0) {
      ++attach_failures;
      if (attach_error.empty()) attach_error = strf("%d: %s", rc, usprobe_last_error());
      if (attach_failures > 10) break;
      continue;
    }
    const uint64_t s1 = callers.total(0);
    in_attach += Clock::now() - t0;
    if (!patched_seen) patched_seen = !before.intact();
    if (usprobe_link_uses_int3(link) && acc.int3_cycles++ == 0)
      acc.int3_reason = usprobe_link_int3_reason(link);
    let_callers_run(callers, 0, 3 * nthreads);
    const uint64_t s2 = callers.total(0);
    const uint64_t h = usprobe_link_hits(link);
    const auto t1 = Clock::now();
    if (int rc = usprobe_detach(link); rc < 0) {
      ADD_FAILURE() << "usprobe_detach: " << usprobe_last_error();
      break;
    }
    in_detach += Clock::now() - t1;
    if (with_callback)  // Release: pairs with the callback's acquire load.
      cycles_state.back()->detached.store(true, std::memory_order_release);
    const uint64_t s3 = callers.total(0);
    acc.add(s0, s1, s2, h, s3, nthreads, target.name);
  }
  const auto took = Clock::now() - start;
  callers.stop();

  print_rate(target.name, acc.cycles, took, in_attach, in_detach);
  std::printf("%s: %" PRIu64 " calls while attached, %" PRIu64 " hits, %" PRIu64
              " cycles on the int3 path%s%s\n",
              target.name, acc.attached_calls, acc.hits, acc.int3_cycles,
              acc.int3_cycles ? ": " : "", acc.int3_reason.c_str());
  if (with_callback)
    std::printf("%s: %" PRIu64 " callback calls\n", target.name,
                g_callback_calls.load() - calls_before);

  EXPECT_EQ(attach_failures, 0u) << attach_error;
  ASSERT_GT(acc.cycles, 0u);
  EXPECT_TRUE(patched_seen) << target.name << ": attach never changed the function's bytes";
  EXPECT_EQ(callers.wrong_results(), 0u) << "first: " << callers.first_wrong();
  EXPECT_TRUE(before.intact()) << target.name << " after the last detach: " << before.now();
  EXPECT_EQ(acc.low_violations, 0u) << acc.first_violation;
  EXPECT_EQ(acc.high_violations, 0u) << acc.first_violation;
  EXPECT_GT(acc.hits, 0u) << "no call was ever counted";
  // The jump path is what these windows are for. A round that cannot reach a thread within its
  // timeout leaves the site on the int3 path for good, which is legitimate (and a matter of
  // timing), so only "never the jump path" fails.
  EXPECT_LT(acc.int3_cycles, acc.cycles) << "never on the jump path: " << acc.int3_reason;
  if (with_callback) {
    EXPECT_EQ(g_callback_late.load() - late_before, 0u)
        << "a callback ran after usprobe_detach returned";
    EXPECT_EQ(g_callback_bad_hit.load() - bad_before, 0u)
        << "a callback saw the wrong user pointer, ip or return address";
    // Each counted hit ran the callback (same dispatch); H was read before detach.
    EXPECT_GE(g_callback_calls.load() - calls_before, acc.hits);
  }
}

// One caller per core of the 2-core CI machine: with more callers than cores the patcher gets
// little CPU while the callers trap on the transient int3, and 10,000 cycles take a minute. Up to
// 10,000 cycles: 10 s make 2,000 to 5,000 of them on two cores, as loaded as they are.
TEST(LivePatching, CountedSurvivesTenThousandAttachDetachCycles) {
  run_attach_detach_cycles(counted_target(), 10000, std::chrono::seconds(10), false, 2);
}

TEST(LivePatching, InstructionSiteSurvivesAttachDetachCycles) {
  run_attach_detach_cycles(counted_mid_target(), 5000, std::chrono::seconds(3), false);
}

TEST(LivePatching, Endbr64EntrySurvivesAttachDetachCycles) {
  run_attach_detach_cycles(endbr64_target(), 5000, std::chrono::seconds(3), false);
}

TEST(LivePatching, CallbackConsumerNeverRunsAfterDetach) {
  run_attach_detach_cycles(counted_target(), 3000, std::chrono::seconds(3), true);
}

// The same at an instruction site, whose callbacks run with the whole extended state saved.
TEST(LivePatching, InstructionSiteCallbackConsumerNeverRunsAfterDetach) {
  run_attach_detach_cycles(counted_mid_target(), 3000, std::chrono::seconds(3), true);
}

// Several functions patched and unpatched per transaction: one round of syncs for all sites.
TEST(LivePatching, BatchAttachDetachOfSeveralFunctions) {
  Watchdog watchdog("batch attach/detach");
  std::vector<Target> targets = {
      counted_target(),
      counted_mid_target(),
      endbr64_target(),
      // Not tgt_helper: tgt_call_first calls it, so its hits would exceed its callers' calls.
      {"tgt_rip_first", kLib + "tgt_rip_first", reinterpret_cast<const void *>(&tgt_rip_first),
       call_rip_first, rip_data_value},
      {"tgt_six_args", kLib + "tgt_six_args", reinterpret_cast<const void *>(&tgt_six_args),
       call_six_args, six_value},
      {"tgt_jcc_in_window", kLib + "tgt_jcc_in_window",
       reinterpret_cast<const void *>(&tgt_jcc_in_window), call_jcc, jcc_value},
      {"tgt_call_first", kLib + "tgt_call_first", reinterpret_cast<const void *>(&tgt_call_first),
       call_first, call_first_value},
  };
  const size_t n = targets.size();
  std::vector<CodeCopy> before;
  std::vector<const char *> locations;
  for (const Target &t : targets) {
    before.emplace_back(t.code);
    locations.push_back(t.location.c_str());
  }
  Callers callers(targets, kThreads);
  std::vector<Accounting> acc(n);
  uint64_t failed_attaches = 0;
  std::string attach_error;
  Clock::duration in_attach{}, in_detach{};

  const auto start = Clock::now();
  for (uint64_t c = 0; c < 2000 && Clock::now() - start < std::chrono::seconds(4); ++c) {
    const std::vector<uint64_t> s0 = callers.totals();
    std::vector<usprobe_link *> links(n, nullptr);
    std::vector<int> errors(n, 0);
    const auto t0 = Clock::now();
    int attached = usprobe_attach_batch(locations.data(), n, nullptr, links.data(), errors.data());
    const std::vector<uint64_t> s1 = callers.totals();
    in_attach += Clock::now() - t0;
    if (attached != static_cast<int>(n)) {
      ++failed_attaches;
      if (attach_error.empty()) attach_error = usprobe_last_error();
    }
    let_callers_run(callers, 0, 3 * kThreads);
    const std::vector<uint64_t> s2 = callers.totals();
    std::vector<uint64_t> h(n, 0);
    for (size_t k = 0; k < n; ++k) {
      if (!links[k]) continue;
      h[k] = usprobe_link_hits(links[k]);
      if (usprobe_link_uses_int3(links[k]) && acc[k].int3_cycles++ == 0)
        acc[k].int3_reason = usprobe_link_int3_reason(links[k]);
    }
    std::vector<usprobe_link *> live;
    for (usprobe_link *l : links)
      if (l) live.push_back(l);
    const auto t1 = Clock::now();
    if (int rc = usprobe_detach_batch(live.data(), live.size()); rc < 0) {
      ADD_FAILURE() << "usprobe_detach_batch: " << usprobe_last_error();
      break;
    }
    in_detach += Clock::now() - t1;
    const std::vector<uint64_t> s3 = callers.totals();
    for (size_t k = 0; k < n; ++k)
      if (links[k]) acc[k].add(s0[k], s1[k], s2[k], h[k], s3[k], kThreads, targets[k].name);
    if (failed_attaches > 10) break;
  }
  const auto took = Clock::now() - start;
  callers.stop();

  print_rate("batch of 7 functions", acc[0].cycles, took, in_attach, in_detach);
  EXPECT_EQ(failed_attaches, 0u) << attach_error;
  EXPECT_EQ(callers.wrong_results(), 0u) << "first: " << callers.first_wrong();
  for (size_t k = 0; k < n; ++k) {
    SCOPED_TRACE(targets[k].name);
    std::printf("  %-20s %" PRIu64 " calls while attached, %" PRIu64 " hits, %" PRIu64
                " cycles on the int3 path %s\n",
                targets[k].name, acc[k].attached_calls, acc[k].hits, acc[k].int3_cycles,
                acc[k].int3_reason.c_str());
    EXPECT_GT(acc[k].cycles, 0u);
    EXPECT_TRUE(before[k].intact()) << "after the last detach: " << before[k].now();
    EXPECT_EQ(acc[k].low_violations, 0u) << acc[k].first_violation;
    EXPECT_EQ(acc[k].high_violations, 0u) << acc[k].first_violation;
    EXPECT_GT(acc[k].hits, 0u);
    EXPECT_LT(acc[k].int3_cycles, acc[k].cycles)
        << "never on the jump path: " << acc[k].int3_reason;
  }
}

// Threads that block every signal: servers commonly block all signals in every thread and take
// them with sigwait or signalfd in one. Such a thread must survive the probe and be counted. A
// kernel uprobe does not care about signal masks; usprobe's int3s (the transient one while a jump
// is written or removed, and int3-path sites) raise SIGTRAP, which the kernel cannot deliver to a
// thread that blocks it and so turns into the default action: the whole process dies. So
// libusprobe.so keeps SIGTRAP (and its round's signal) out of every mask the program sets, while
// the program reads its mask back as it set it (src/os/linux/signal_guard.h).
int callers_with_signals_blocked(unsigned flags) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);  // inherited by the callers
  sigset_t now;
  pthread_sigmask(SIG_SETMASK, nullptr, &now);
  if (!sigismember(&now, SIGTRAP)) {
    std::fprintf(stderr, "the mask read back lacks SIGTRAP, which the program blocked\n");
    return 5;
  }
  const Target target = counted_target();
  const CodeCopy before(target.code);
  Callers callers({target}, 2);
  sigset_t none;
  sigemptyset(&none);
  pthread_sigmask(SIG_SETMASK, &none, nullptr);  // the main thread takes signals again
  Accounting acc;
  const auto start = Clock::now();
  while (acc.cycles < 20 && Clock::now() - start < std::chrono::seconds(10)) {
    const uint64_t s0 = callers.total(0);
    usprobe_link *link = nullptr;
    int rc = usprobe_attach_ex(target.location.c_str(), nullptr, flags, &link);
    if (rc != 0) {
      std::fprintf(stderr, "attach: %d %s\n", rc, usprobe_last_error());
      return 3;
    }
    const uint64_t s1 = callers.total(0);
    let_callers_run(callers, 0, 100);
    const uint64_t s2 = callers.total(0);
    const uint64_t h = usprobe_link_hits(link);
    if (usprobe_link_uses_int3(link)) ++acc.int3_cycles;
    usprobe_detach(link);
    acc.add(s0, s1, s2, h, callers.total(0), 2, target.name);
    if (!before.intact()) {
      std::fprintf(stderr, "bytes not restored: %s\n", before.now().c_str());
      return 4;
    }
  }
  callers.stop();
  std::printf("%" PRIu64 " attach/detach cycles (%" PRIu64
              " on the int3 path) with callers blocking every signal: %" PRIu64 " hits, %" PRIu64
              " wrong results\n",
              acc.cycles, acc.int3_cycles, acc.hits, callers.wrong_results());
  if (!acc.first_violation.empty()) std::fprintf(stderr, "%s\n", acc.first_violation.c_str());
  if ((flags & USPROBE_FORCE_INT3) && acc.int3_cycles != acc.cycles) return 6;
  return callers.wrong_results() == 0 && acc.first_violation.empty() && acc.hits > 0 ? 0 : 1;
}
int jump_callers_with_signals_blocked() {
  return callers_with_signals_blocked(0);
}
int int3_callers_with_signals_blocked() {
  return callers_with_signals_blocked(USPROBE_FORCE_INT3);
}

TEST(LivePatching, ThreadsBlockingAllSignalsAreCountedOnTheJumpPath) {
  EXPECT_EQ(run_in_child("jump-callers-signals-blocked", std::chrono::seconds(40)), "");
}

TEST(LivePatching, ThreadsBlockingAllSignalsAreCountedOnTheInt3Path) {
  EXPECT_EQ(run_in_child("int3-callers-signals-blocked", std::chrono::seconds(40)), "");
}
}  // namespace

// The child side of run_in_child(): runs before GoogleTest's main when the variable is set.
namespace {
const usprobe::test::Scenario kScenarios[] = {
    {"jump-callers-signals-blocked", jump_callers_with_signals_blocked},
    {"int3-callers-signals-blocked", int3_callers_with_signals_blocked},
};
const bool g_child_dispatched = usprobe::test::run_scenario_if_child(kChildEnv, kScenarios);
}  // namespace
