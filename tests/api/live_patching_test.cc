// Live patching under load: caller threads run a probed function in a tight loop while the main
// thread attaches and detaches its probe thousands of times. Every attach and detach rewrites the
// code those threads are executing (int3 first, membarrier SYNC_CORE, the tail, sync, the first
// byte, sync; a signal round moves threads stopped inside a window), so this is the test of the
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
//     argument registers, and never runs after detach returned.
//
// The windows have instruction boundaries inside them: tgt_counted's jump window is three
// instructions (push, mov, lea), tgt_endbr64's two (endbr64, push), the instruction site
// tgt_counted_mid+0x7 two (add, pop). Three callers on two cores are preempted and signalled all
// the time, but interrupts land on few of the instruction boundaries of so short a loop, so the
// stress tests alone rarely catch a thread inside a window. The ThreadStoppedInWindow* tests put
// one there on purpose: a page fault at lp_fault_in_window+1 (inside its window) holds the thread
// in the kernel (userfaultfd) or in its SIGSEGV handler while the probe is attached.
//
// Loops are bounded by a cycle count and by time; the time bound only shortens a run, it never
// decides the result. Each test also has a watchdog that aborts with a message instead of hanging
// CI when a patch round or a grace period never ends.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/child_process.h"
#include "support/watchdog.h"
#include "targets/targets.h"
#include "usprobe/usprobe.h"

// lp_fault_in_window(p) returns *p + 1, with exact bytes (a probe target in this executable):
//   +0 push %rbp (1); +1 mov (%rdi),%eax (2); +3 add $1,%eax (3); +6 pop %rbp; +7 ret
// A jump at the entry covers push, mov and add: a thread can be stopped at +1 or +3 inside it.
asm(R"(
  .text
  .globl lp_fault_in_window
  .type lp_fault_in_window, @function
  .p2align 4
lp_fault_in_window:
  push %rbp
  mov (%rdi), %eax
  add $1, %eax
  pop %rbp
  ret
  .size lp_fault_in_window, .-lp_fault_in_window
)");
extern "C" int lp_fault_in_window(const int *p);

namespace {
constexpr const char *kChildEnv = "USPROBE_LIVE_PATCHING_CHILD";
std::string run_in_child(const char *name, std::chrono::seconds limit) {
  return usprobe::test::run_in_child(kChildEnv, name, limit);
}
using usprobe::test::strf;

using Clock = std::chrono::steady_clock;

// printf-style formatting into a std::string (the tests link no formatting library).

constexpr int kThreads = 3;

using usprobe::test::Watchdog;

// The first 16 bytes of a function, to check that detach restored them exactly.
struct CodeCopy {
  const uint8_t *at;
  std::array<uint8_t, 16> bytes;

  explicit CodeCopy(const void *fn) : at(static_cast<const uint8_t *>(fn)) {
    std::memcpy(bytes.data(), at, bytes.size());
  }
  bool intact() const { return std::memcmp(bytes.data(), at, bytes.size()) == 0; }
  std::string now() const {
    std::string s;
    for (size_t i = 0; i < bytes.size(); ++i) s += strf("%02x ", at[i]);
    return s;
  }
};

// A function the callers run, with its probe location and a check of its result.
struct Target {
  const char *name;
  std::string location;
  const void *code;           // first byte of the function, for the byte check
  long (*call)(long i);       // calls the target with an argument derived from i
  long (*expected)(long i);   // what it must return
  uintptr_t site_offset = 0;  // of the probed instruction in the function
};

long call_counted(long i) {
  return tgt_counted(i);
}
long call_counted_mid(long i) {
  return tgt_counted_mid(i);
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
long plus_one(long i) {
  return i + 1;
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
Target counted_mid_target() {
  return {"tgt_counted_mid+0x7",
          kLib + strf("tgt_counted_mid+%#" PRIx64, tgt_counted_mid_site_offset),
          reinterpret_cast<const void *>(&tgt_counted_mid),
          call_counted_mid,
          plus_one,
          static_cast<uintptr_t>(tgt_counted_mid_site_offset)};
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
// little CPU while the callers trap on the transient int3, and 10,000 cycles take a minute.
TEST(LivePatching, CountedSurvivesTenThousandAttachDetachCycles) {
  run_attach_detach_cycles(counted_target(), 10000, std::chrono::seconds(25), false, 2);
}

TEST(LivePatching, InstructionSiteSurvivesAttachDetachCycles) {
  run_attach_detach_cycles(counted_mid_target(), 5000, std::chrono::seconds(5), false);
}

TEST(LivePatching, Endbr64EntrySurvivesAttachDetachCycles) {
  run_attach_detach_cycles(endbr64_target(), 5000, std::chrono::seconds(5), false);
}

TEST(LivePatching, CallbackConsumerNeverRunsAfterDetach) {
  run_attach_detach_cycles(counted_target(), 3000, std::chrono::seconds(5), true);
}

// The same at an instruction site, whose callbacks run with the whole extended state saved.
TEST(LivePatching, InstructionSiteCallbackConsumerNeverRunsAfterDetach) {
  run_attach_detach_cycles(counted_mid_target(), 3000, std::chrono::seconds(5), true);
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
  for (uint64_t c = 0; c < 2000 && Clock::now() - start < std::chrono::seconds(8); ++c) {
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

// Scenarios that may crash run in a fresh process: this test binary started again with
// USPROBE_LIVE_PATCHING_CHILD=<name>, which a static initializer (at the end of this file) turns
// into "run that scenario, exit with its status" before GoogleTest starts. A fresh process, not a
// fork of this one: whatever this process did before (usprobe state included) cannot leak in.
// (tests/support/child_process.h; run_in_child() above names this file's variable.)

// Leaves non-zero bytes in the 16 KiB of stack below the caller's frame, as a signal frame, a
// deep call or any earlier work does in a real program.
__attribute__((noinline)) void dirty_the_stack() {
  volatile unsigned char junk[16384];
  for (size_t i = 0; i < sizeof junk; ++i) junk[i] = static_cast<unsigned char>(0xa5 ^ i);
}

// A consumer with a callback: its hits take the path that saves the whole extended state (a probe
// with only the built-in counter may skip it).
std::atomic<int> g_dirty_stack_callbacks{0};
void on_dirty_stack_hit(usprobe_hit *, void *) {
  g_dirty_stack_callbacks.fetch_add(1, std::memory_order_relaxed);
}

int probe_mid_site_over_dirty_stack(unsigned flags) {
  const Target t = counted_mid_target();
  usprobe_link *link = nullptr;
  const usprobe_consumer consumer{on_dirty_stack_hit, nullptr, nullptr};
  if (usprobe_attach_ex(t.location.c_str(), &consumer, flags, &link) < 0) {
    std::fprintf(stderr, "attach %s: %s\n", t.location.c_str(), usprobe_last_error());
    return 3;
  }
  int bad = 0;
  for (long i = 0; i < 100; ++i) {
    dirty_the_stack();
    if (tgt_counted_mid(i) != i + 1) ++bad;
  }
  uint64_t hits = usprobe_link_hits(link);
  usprobe_detach(link);
  std::printf("%s%s: 100 calls over a dirty stack, %" PRIu64 " hits, %d callbacks, %d wrong\n",
              t.name, flags & USPROBE_FORCE_INT3 ? " (int3 path)" : "", hits,
              g_dirty_stack_callbacks.load(), bad);
  return bad == 0 && hits == 100 && g_dirty_stack_callbacks.load() == 100 ? 0 : 1;
}

// An instruction probe (not at a function entry) saves the whole extended state (xsave) around
// its callbacks. Its save area lies on the probed thread's stack, below the red zone, where earlier
// work has left arbitrary bytes: the probe must not depend on that memory being zero.
TEST(LivePatching, InstructionSiteProbeSurvivesDirtyStack) {
  EXPECT_EQ(run_in_child("dirty-stack-jump", std::chrono::seconds(30)), "") << "jump path";
  EXPECT_EQ(run_in_child("dirty-stack-int3", std::chrono::seconds(30)), "") << "int3 path";
}

// A thread that a signal interrupted inside a window, and that is still in the handler while
// the window is patched, resumes inside the window when the handler returns. The signal round sees
// only the handler's context (or, when the handler sleeps in a system call, does not signal the
// thread at all): the interrupted context, one signal frame further up, must be found too, or the
// jump's tail is executed as instructions. Runtimes do this all the time: guard pages, GC
// safepoint polls and lazily mapped memory all stop threads in SIGSEGV handlers at arbitrary
// instructions.
//
// lp_fault_in_window (at the top of this file) loads through its argument at +1, inside the
// 6-byte window of a jump at its entry. The test makes that load fault, attaches while the thread
// waits in its SIGSEGV handler, then lets the handler make the page readable and return.
enum class HandlerWait { kSpinning, kSleeping, kSpinningAllSignalsBlocked };
HandlerWait g_wait_kind = HandlerWait::kSpinning;
std::atomic<int> g_in_handler{0};
std::atomic<int> g_release_handler{0};
std::atomic<uintptr_t> g_fault_pc{0};
void *g_guard_page = nullptr;

void on_segv(int, siginfo_t *, void *ctx) {
  int saved_errno = errno;
  if (g_in_handler.load(std::memory_order_relaxed)) {
    // A second fault: the thread resumed into garbage. Let the next one kill the process.
    signal(SIGSEGV, SIG_DFL);
    errno = saved_errno;
    return;
  }
  const auto *uc = static_cast<const ucontext_t *>(ctx);
  g_fault_pc.store(static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]));
  g_in_handler.store(1, std::memory_order_release);
  // Wait for the test to attach (at most 10 s: a test must never hang).
  timespec start{}, now{};
  clock_gettime(CLOCK_MONOTONIC, &start);
  do {
    if (g_wait_kind == HandlerWait::kSleeping) {
      timespec ts{0, 100 * 1000};
      nanosleep(&ts, nullptr);
    }
    clock_gettime(CLOCK_MONOTONIC, &now);
  } while (!g_release_handler.load(std::memory_order_acquire) && now.tv_sec - start.tv_sec < 10);
  mprotect(g_guard_page, 4096, PROT_READ);  // the load succeeds when the thread resumes
  errno = saved_errno;
}

int attach_while_thread_waits_in_handler_inside_window() {
  struct sigaction sa {};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO;
  if (g_wait_kind == HandlerWait::kSpinningAllSignalsBlocked)
    sigfillset(&sa.sa_mask);  // usprobe leaves its own signals out (os/linux/signal_guard.h)
  else
    sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, nullptr);
  g_guard_page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (g_guard_page == MAP_FAILED) return 3;
  *static_cast<int *>(g_guard_page) = 41;
  mprotect(g_guard_page, 4096, PROT_NONE);

  const auto *fn = reinterpret_cast<const uint8_t *>(&lp_fault_in_window);
  const CodeCopy before(fn);
  int result = 0;
  std::thread victim([&] { result = lp_fault_in_window(static_cast<const int *>(g_guard_page)); });
  while (!g_in_handler.load(std::memory_order_acquire)) std::this_thread::yield();
  const uintptr_t pc = g_fault_pc.load() - reinterpret_cast<uintptr_t>(fn);

  usprobe_link *link = nullptr;
  int rc = usprobe_attach("exe:lp_fault_in_window", nullptr, &link);
  const bool int3 = rc == 0 && usprobe_link_uses_int3(link);
  std::printf("thread stopped at lp_fault_in_window+%#" PRIxPTR
              " in its handler; attach: %d "
              "(%s path%s%s)\n",
              pc, rc, int3 ? "int3" : "jump", int3 ? ": " : "",
              int3 ? usprobe_link_int3_reason(link) : "");
  std::fflush(stdout);
  if (rc < 0) {
    // Refusing is right only where a thread blocks SIGTRAP: an int3 would kill it.
    const bool refused_for_sigtrap = g_wait_kind == HandlerWait::kSpinningAllSignalsBlocked &&
                                     rc == -EAGAIN &&
                                     std::strstr(usprobe_last_error(), "blocks SIGTRAP") != nullptr;
    std::fprintf(refused_for_sigtrap ? stdout : stderr, "attach: %s\n", usprobe_last_error());
    g_release_handler.store(1);
    victim.join();
    std::printf("the thread resumed and returned %d (expected 42)\n", result);
    if (!before.intact()) std::fprintf(stderr, "bytes changed: %s\n", before.now().c_str());
    return refused_for_sigtrap && result == 42 && before.intact() ? 0 : 3;
  }
  g_release_handler.store(1, std::memory_order_release);
  victim.join();
  const uint64_t hits = usprobe_link_hits(link);
  usprobe_detach(link);
  std::printf("the thread resumed and returned %d (expected 42); %" PRIu64 " hits\n", result, hits);
  if (!before.intact()) std::fprintf(stderr, "bytes not restored: %s\n", before.now().c_str());
  return result == 42 && before.intact() ? 0 : 1;
}

// A thread blocked in the kernel on a page fault at lp_fault_in_window+1, inside the window: the
// round must see it there (its /proc syscall line shows a user pc, not a system call), signal it
// and move it to the window's relocated copy, where it retries the load once the page arrives.
int stopped_in_page_fault() {
  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
  if (uffd < 0) uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC));
  if (uffd < 0) {
    std::printf("SKIP: userfaultfd: %s\n", std::strerror(errno));
    return 77;
  }
  uffdio_api api{};
  api.api = UFFD_API;
  void *page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uffdio_register reg{};
  reg.range = {reinterpret_cast<uint64_t>(page), 4096};
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl(uffd, UFFDIO_API, &api) != 0 || page == MAP_FAILED ||
      ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) {
    std::printf("SKIP: userfaultfd setup: %s\n", std::strerror(errno));
    return 77;
  }
  const auto *fn = reinterpret_cast<const uint8_t *>(&lp_fault_in_window);
  const CodeCopy before(fn);
  int result = 0;
  std::thread victim([&] { result = lp_fault_in_window(static_cast<const int *>(page)); });
  // The fault event says the thread is blocked at the load, lp_fault_in_window+1.
  pollfd pfd{uffd, POLLIN, 0};
  uffd_msg msg{};
  if (poll(&pfd, 1, 10000) != 1 || read(uffd, &msg, sizeof msg) != sizeof msg ||
      msg.event != UFFD_EVENT_PAGEFAULT) {
    std::fprintf(stderr, "no page fault event from the thread\n");
    _exit(3);  // the thread is stuck in the fault; do not join it
  }
  usprobe_link *link = nullptr;
  int rc = usprobe_attach("exe:lp_fault_in_window", nullptr, &link);
  const bool int3 = rc == 0 && usprobe_link_uses_int3(link);
  std::printf("thread blocked in a page fault at lp_fault_in_window+1; attach: %d (%s path%s%s)\n",
              rc, int3 ? "int3" : "jump", int3 ? ": " : "",
              int3 ? usprobe_link_int3_reason(link) : "");
  // Resolve the fault: the page arrives holding 41.
  static int source[1024] = {41};
  uffdio_copy copy{};
  copy.dst = reinterpret_cast<uint64_t>(page);
  copy.src = reinterpret_cast<uint64_t>(source);
  copy.len = 4096;
  if (ioctl(uffd, UFFDIO_COPY, &copy) != 0 && errno != EEXIST) {
    std::fprintf(stderr, "UFFDIO_COPY: %s\n", std::strerror(errno));
    _exit(3);
  }
  victim.join();
  if (rc == 0) usprobe_detach(link);
  std::printf("the thread resumed and returned %d (expected 42)\n", result);
  if (!before.intact()) std::fprintf(stderr, "bytes not restored: %s\n", before.now().c_str());
  // On the int3 path the window's interior is never written and nothing needed moving.
  if (int3) std::fprintf(stderr, "the jump path was not taken: the round was not exercised\n");
  return rc == 0 && !int3 && result == 42 && before.intact() ? 0 : 1;
}

int stopped_in_spinning_handler() {
  g_wait_kind = HandlerWait::kSpinning;
  return attach_while_thread_waits_in_handler_inside_window();
}
int stopped_in_sleeping_handler() {
  g_wait_kind = HandlerWait::kSleeping;
  return attach_while_thread_waits_in_handler_inside_window();
}
int stopped_with_signals_blocked() {
  g_wait_kind = HandlerWait::kSpinningAllSignalsBlocked;
  return attach_while_thread_waits_in_handler_inside_window();
}

TEST(LivePatching, ThreadStoppedInWindowByPageFaultIsMovedByTheRound) {
  std::string how = run_in_child("stopped-in-page-fault", std::chrono::seconds(30));
  if (how == "the child exited with status 77") GTEST_SKIP() << "userfaultfd is not available";
  EXPECT_EQ(how, "");
}

// A thread interrupted inside a window by a signal whose handler is still running when the jump
// is written: the round sees the handler's context, not the one saved in the signal frame that
// sigreturn will resume, so the patcher looks for such frames on the thread's stack and keeps the
// window's interior untouched (the int3 path) when it finds one.
TEST(LivePatching, ThreadStoppedInWindowBySpinningSignalHandlerSurvivesAttach) {
  EXPECT_EQ(run_in_child("stopped-in-spinning-handler", std::chrono::seconds(30)), "");
}

TEST(LivePatching, ThreadStoppedInWindowBySleepingSignalHandlerSurvivesAttach) {
  EXPECT_EQ(run_in_child("stopped-in-sleeping-handler", std::chrono::seconds(30)), "");
}

// A handler whose sa_mask holds every signal: usprobe keeps SIGTRAP and its round's signal out of
// it, so the round reaches the thread (or, where the mask was set without usprobe's knowledge, the
// attach is refused); either way the thread resumes intact.
TEST(LivePatching, ThreadStoppedInWindowWithSignalsBlockedRefusesAttach) {
  EXPECT_EQ(run_in_child("stopped-with-signals-blocked", std::chrono::seconds(30)), "");
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

// A process that forks after usprobe wrote code: the child's attach must patch the child's code.
// (The parent's code is the parent's: a child's probe must neither appear there nor be missing in
// the child.) Forked, not spawned: inheriting the parent's usprobe state is the point.
TEST(LivePatching, ForkedChildPatchesItsOwnCodeNotItsParents) {
  const std::string location = kLib + "tgt_counted";
  usprobe_link *link = nullptr;
  ASSERT_EQ(usprobe_attach(location.c_str(), nullptr, &link), 0) << usprobe_last_error();
  EXPECT_EQ(tgt_counted(1), 2);
  ASSERT_EQ(usprobe_detach(link), 0);
  const CodeCopy before(reinterpret_cast<const void *>(&tgt_counted));

  int to_parent[2], to_child[2];
  ASSERT_EQ(pipe(to_parent), 0);
  ASSERT_EQ(pipe(to_child), 0);
  std::fflush(stdout);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The child: attach, call, report, wait until the parent has looked at its own code, detach.
    char report[256];
    usprobe_link *l = nullptr;
    int rc = usprobe_attach(location.c_str(), nullptr, &l);
    bool patched = !before.intact();
    long wrong = 0;
    for (long i = 0; i < 100; ++i) wrong += tgt_counted(i) != i + 1;
    uint64_t hits = rc == 0 ? usprobe_link_hits(l) : 0;
    std::snprintf(report, sizeof report,
                  "child: attach %d (%s), its own code %s, %" PRIu64
                  " hits for 100 calls, %ld "
                  "wrong results",
                  rc, rc == 0 ? "ok" : usprobe_last_error(), patched ? "patched" : "NOT patched",
                  hits, wrong);
    (void)!write(to_parent[1], report, std::strlen(report) + 1);
    char go;
    (void)!read(to_child[0], &go, 1);
    if (rc == 0) usprobe_detach(l);
    _exit(rc == 0 && patched && hits == 100 && wrong == 0 && before.intact() ? 0 : 1);
  }
  char report[256] = {};
  ssize_t n = read(to_parent[0], report, sizeof report - 1);
  // While the child's probe is attached, this process's code must be its own.
  const bool parent_intact = before.intact();
  const std::string parent_bytes = before.now();
  const long parent_result = tgt_counted(41);
  (void)!write(to_child[1], "g", 1);
  int status = 0;
  waitpid(pid, &status, 0);
  for (int fd : {to_parent[0], to_parent[1], to_child[0], to_child[1]}) close(fd);
  std::printf("%s\n", n > 0 ? report : "child: no report");
  EXPECT_TRUE(parent_intact) << "the child's attach changed the parent's code: " << parent_bytes;
  EXPECT_EQ(parent_result, 42);
  EXPECT_TRUE(before.intact()) << "after the child exited: " << before.now();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << report;
}

}  // namespace

// The child side of run_in_child(): runs before GoogleTest's main when the variable is set.
namespace {
const usprobe::test::Scenario kScenarios[] = {
    {"dirty-stack-jump", [] { return probe_mid_site_over_dirty_stack(0); }},
    {"dirty-stack-int3", [] { return probe_mid_site_over_dirty_stack(USPROBE_FORCE_INT3); }},
    {"stopped-in-page-fault", stopped_in_page_fault},
    {"stopped-in-spinning-handler", stopped_in_spinning_handler},
    {"stopped-in-sleeping-handler", stopped_in_sleeping_handler},
    {"stopped-with-signals-blocked", stopped_with_signals_blocked},
    {"jump-callers-signals-blocked", jump_callers_with_signals_blocked},
    {"int3-callers-signals-blocked", int3_callers_with_signals_blocked},
};
const bool g_child_dispatched = usprobe::test::run_scenario_if_child(kChildEnv, kScenarios);
}  // namespace
