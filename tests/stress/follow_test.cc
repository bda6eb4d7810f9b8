// Probes that follow the address space, tortured: two callers hammer a probed function of L1
// (tests/targets/follow_lib.c), a mapper thread dlopens and dlcloses L1 (a reference only: the
// callers hold it) and L2 (follow_lib_b.c, mapped and unmapped every round) and calls L2, while
// the main thread attaches and detaches callback probes on both. No handler runs after its detach
// returned, calls made while a probe is attached are counted (see there for the exact bounds),
// each dlclose unmaps L2, and nothing crashes.
//
// Bound: 150 attach/detach cycles or 4 s, whichever comes first (the time only shortens a run on a
// slow or loaded machine, and never below 20 cycles), under a watchdog.
#include <dlfcn.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "support/child_process.h"
#include "support/dl_lib.h"
#include "support/watchdog.h"
#include "usprobe/usprobe.h"

#if !defined(FOLLOW_LIB) || !defined(FOLLOW_LIB_B)
#error "FOLLOW_LIB and FOLLOW_LIB_B (the test libraries' paths) come from tests/CMakeLists.txt"
#endif

namespace {

using usprobe::test::strf;
using Clock = std::chrono::steady_clock;

constexpr const char *kLib = FOLLOW_LIB;     // L1: follow_add, follow_tiny
constexpr const char *kLibB = FOLLOW_LIB_B;  // L2: follow_b_mul, follow_b_tiny

using AddFn = int (*)(int, int);  // follow_add(a, b) == a + b, follow_b_mul(a, b) == a * b
using TinyFn = int (*)(int);      // follow_tiny(x) == x + 1, follow_b_tiny(x) == x + 2

// Results in wrapping arithmetic, as the libraries compute them (no signed overflow for UBSan).
int wrap_add(int a, int b) {
  return static_cast<int>(static_cast<unsigned>(a) + static_cast<unsigned>(b));
}
int wrap_mul(int a, int b) {
  return static_cast<int>(static_cast<unsigned>(a) * static_cast<unsigned>(b));
}

std::string location(const char *lib, const char *function) {
  return std::string(lib) + ":" + function;
}

using usprobe::test::Lib;
using usprobe::test::loaded;

// --- DlopenDlcloseStress -----------------------------------------------------------------------

using usprobe::test::Watchdog;

// A counter of completed calls, on its own cache line. Written by one thread only (a release store
// of load + 1): a reader that sees a count also sees the hits of the calls it counts.
struct alignas(64) Completed {
  std::atomic<uint64_t> calls{0};

  void add() { calls.store(calls.load(std::memory_order_relaxed) + 1, std::memory_order_release); }
  uint64_t get() const { return calls.load(std::memory_order_acquire); }
};

// One attach's state, seen by its callback; kept alive until the end of the test (a late hit
// would otherwise touch freed memory instead of being reported).
constexpr uint64_t kMagic = 0x464f4c4c4f570000;
struct AttachState {
  std::atomic<bool> detached{false};  // set by the main thread right after detach returned
  std::atomic<uint64_t> calls{0};
  uint64_t magic = kMagic;
};
std::atomic<uint64_t> g_late{0};  // callbacks that started after their detach returned
std::atomic<uint64_t> g_bad{0};   // callbacks with a wrong user pointer

void on_stress_entry(usprobe_hit *, void *user) {
  auto *state = static_cast<AttachState *>(user);
  // Acquire pairs with the main thread's release store after detach.
  if (state->detached.load(std::memory_order_acquire))
    g_late.fetch_add(1, std::memory_order_relaxed);
  if (state->magic != kMagic) g_bad.fetch_add(1, std::memory_order_relaxed);
  state->calls.fetch_add(1, std::memory_order_relaxed);
}

// Per-cycle bounds of one probe, accumulated over the cycles.
struct Bounds {
  explicit Bounds(const char *w) : what(w) {}

  const char *what;
  uint64_t cycles = 0, covered_calls = 0, violations = 0;
  std::string first;

  void check(bool ok, const std::string &why) {
    if (!ok && violations++ == 0) first = strf("%s, cycle %" PRIu64 ": ", what, cycles) + why;
  }
};

constexpr int kCallers = 2;
constexpr int kCycles = 150;
// The fewest cycles that mean anything: they run whatever the time (on two cores shared with
// another torture, 4 s made as few as 17 of them, and the run failed on a timing).
constexpr int kMinCycles = 20;
// Only shortens a run on a slow or loaded machine (sanitizers), past kMinCycles; never decides the
// result.
constexpr auto kBudget = std::chrono::seconds(4);
constexpr int kRoundCalls = 4;  // calls of each of L2's functions per dlopen/dlclose round

TEST(FollowStress, DlopenDlcloseStress) {
  ASSERT_FALSE(loaded(kLib)) << kLib << " is loaded already";
  ASSERT_FALSE(loaded(kLibB)) << kLibB << " is loaded already";
  Watchdog watchdog("FollowStress.DlopenDlcloseStress");
  g_late = 0;
  g_bad = 0;

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> wrong{0};  // wrong results, failed dlopen/dlsym
  std::atomic<int> ready{0};
  std::array<Completed, kCallers> completed;
  auto callers_total = [&] {
    uint64_t sum = 0;
    for (const auto &c : completed) sum += c.get();
    return sum;
  };

  // Callers: each holds L1 with its own handle and calls follow_add until told to stop.
  std::vector<std::thread> threads;
  for (int t = 0; t < kCallers; ++t)
    threads.emplace_back([&, t] {
      Lib lib(kLib);
      auto fn = lib ? lib.sym<AddFn>("follow_add") : nullptr;
      if (!fn) wrong.fetch_add(1);
      ready.fetch_add(1);
      for (unsigned i = static_cast<unsigned>(t) * 1000003u;
           fn && !stop.load(std::memory_order_relaxed); ++i) {
        int x = static_cast<int>(i);
        if (fn(x, 7) != wrap_add(x, 7)) wrong.fetch_add(1, std::memory_order_relaxed);
        completed[static_cast<size_t>(t)].add();
        // On two cores, callers that never yield starve the mapper, which holds usprobe's lock
        // from the loader's RT_ADD/RT_DELETE to RT_CONSISTENT: every attach and detach would wait
        // for it for milliseconds. A yield every 256 calls keeps the test short.
        if ((i & 255) == 0) std::this_thread::yield();
      }
    });
  while (ready.load() < kCallers) std::this_thread::yield();

  // The mapper: round r takes and gives back a reference to L1 (the callers keep it mapped), then
  // maps L2, calls each of its functions kRoundCalls times and unmaps it. rounds_started is r + 1
  // from before round r's dlopen of L2, rounds_finished r + 1 from after its last call.
  std::atomic<uint64_t> rounds_started{0}, rounds_finished{0}, still_loaded{0};
  std::array<Completed, 2> b_calls;  // completed calls of follow_b_mul, follow_b_tiny
  threads.emplace_back([&] {
    for (uint64_t r = 0; !stop.load(std::memory_order_relaxed); ++r) {
      if (void *h = dlopen(kLib, RTLD_NOW | RTLD_LOCAL))
        dlclose(h);
      else
        wrong.fetch_add(1);
      rounds_started.store(r + 1);
      Lib lib(kLibB);
      auto mul = lib ? lib.sym<AddFn>("follow_b_mul") : nullptr;
      auto tiny = lib ? lib.sym<TinyFn>("follow_b_tiny") : nullptr;
      if (!mul || !tiny) {
        wrong.fetch_add(1);
        break;
      }
      for (int k = 0; k < kRoundCalls; ++k) {
        int x = static_cast<int>(r) + k;
        if (mul(x, 3) != wrap_mul(x, 3)) wrong.fetch_add(1, std::memory_order_relaxed);
        b_calls[0].add();
        if (tiny(x) != wrap_add(x, 2)) wrong.fetch_add(1, std::memory_order_relaxed);
        b_calls[1].add();
      }
      rounds_finished.store(r + 1);
      lib.close();
      if (loaded(kLibB)) still_loaded.fetch_add(1);
    }
  });

  // The main thread attaches and detaches one callback probe on L1's follow_add and one on one of
  // L2's functions (follow_b_mul, jump path, and follow_b_tiny, int3 path, in turn), in alternating
  // orders. Per cycle, for L1, with S0 the callers' completed calls read before attach, S1 right
  // after attach returned, S2 right before detach (H the link's hits read after S2) and S3 right
  // after detach returned:
  //   H >= (S2 - S1) - kCallers: a caller may have had one call in flight when attach returned,
  //     which passed the site before it was patched but completed after S1 was read;
  //   the callback's final count <= (S3 - S0) + kCallers: a caller may be inside a counted call
  //     when S3 is read.
  // For L2, with A = rounds_started read after attach returned and B = rounds_finished read before
  // detach: rounds A..B-1 mapped L2 after attach returned and made their last call before detach
  // was called, so every one of their calls is counted: H >= kRoundCalls * (B - A), exactly; and
  // the callback's final count <= the mapper's calls from before attach to after detach, + 1.
  std::vector<std::unique_ptr<AttachState>> states;
  Bounds l1{"follow_add"}, l2{"L2"};
  uint64_t attach_failures = 0, detach_failures = 0, l1_sites_wrong = 0;
  std::string first_error;
  const auto start = Clock::now();
  for (int c = 0; c < kCycles && (c < kMinCycles || Clock::now() - start < kBudget); ++c) {
    const bool tiny = c % 2 == 1;
    const bool l1_first = (c / 2) % 2 == 0;
    const std::string l2_where = location(kLibB, tiny ? "follow_b_tiny" : "follow_b_mul");
    Completed &l2_calls = b_calls[tiny ? 1 : 0];
    states.push_back(std::make_unique<AttachState>());
    AttachState *s1_state = states.back().get();
    states.push_back(std::make_unique<AttachState>());
    AttachState *s2_state = states.back().get();
    const usprobe_consumer c1{on_stress_entry, s1_state, nullptr};
    const usprobe_consumer c2{on_stress_entry, s2_state, nullptr};

    const uint64_t s0 = callers_total(), b0 = l2_calls.get();
    usprobe_link *link1 = nullptr, *link2 = nullptr;
    auto attach = [&](const std::string &where, const usprobe_consumer *cons, usprobe_link **out) {
      if (int rc = usprobe_attach(where.c_str(), cons, out); rc < 0) {
        *out = nullptr;
        if (attach_failures++ == 0) first_error = where + ": " + usprobe_last_error();
      }
    };
    if (l1_first) attach(location(kLib, "follow_add"), &c1, &link1);
    attach(l2_where, &c2, &link2);
    if (!l1_first) attach(location(kLib, "follow_add"), &c1, &link1);
    const uint64_t s1 = callers_total();
    const uint64_t a = rounds_started.load();
    if (!link1 || !link2) {
      if (link1) usprobe_detach(link1);
      if (link2) usprobe_detach(link2);
      if (attach_failures > 10) break;
      continue;
    }
    l1_sites_wrong += usprobe_link_sites(link1) != 1;

    // Let the callers call and the mapper complete a round with the probes attached (bounded).
    const auto until = Clock::now() + std::chrono::milliseconds(5);
    while ((rounds_finished.load() <= a || callers_total() - s1 < 8) && Clock::now() < until)
      std::this_thread::yield();

    const uint64_t b = rounds_finished.load();
    const uint64_t s2 = callers_total();
    const uint64_t h1 = usprobe_link_hits(link1), h2 = usprobe_link_hits(link2);
    auto detach = [&](usprobe_link *link, AttachState *state) {
      if (usprobe_detach(link) < 0 && detach_failures++ == 0)
        first_error = std::string("usprobe_detach: ") + usprobe_last_error();
      // Release: pairs with the callback's acquire load.
      state->detached.store(true, std::memory_order_release);
    };
    if (l1_first) detach(link1, s1_state);
    detach(link2, s2_state);
    if (!l1_first) detach(link1, s1_state);
    const uint64_t s3 = callers_total(), b3 = l2_calls.get();

    ++l1.cycles;
    l1.covered_calls += s2 - s1;
    l1.check(h1 + kCallers >= s2 - s1,
             strf("H=%" PRIu64 " but S2-S1=%" PRIu64 ": calls made while attached were lost", h1,
                  s2 - s1));
    const uint64_t cb1 = s1_state->calls.load();
    l1.check(
        cb1 <= s3 - s0 + kCallers,
        strf("%" PRIu64 " callbacks but S3-S0=%" PRIu64 ": more hits than calls", cb1, s3 - s0));
    l1.check(cb1 >= h1, strf("%" PRIu64 " callbacks after detach, H=%" PRIu64, cb1, h1));

    ++l2.cycles;
    const uint64_t covered = b > a ? kRoundCalls * (b - a) : 0;
    l2.covered_calls += covered;
    l2.check(h2 >= covered, strf("%s: H=%" PRIu64 " but rounds %" PRIu64 "..%" PRIu64
                                 " made %" PRIu64 " calls while attached",
                                 tiny ? "follow_b_tiny" : "follow_b_mul", h2, a, b, covered));
    const uint64_t cb2 = s2_state->calls.load();
    l2.check(cb2 <= b3 - b0 + 1, strf("%s: %" PRIu64 " callbacks but %" PRIu64 " calls",
                                      tiny ? "follow_b_tiny" : "follow_b_mul", cb2, b3 - b0));
    l2.check(cb2 >= h2, strf("%" PRIu64 " callbacks after detach, H=%" PRIu64, cb2, h2));
  }
  const double took = std::chrono::duration<double>(Clock::now() - start).count();

  stop = true;
  for (auto &t : threads) t.join();
  std::printf("%" PRIu64 " attach/detach cycles in %.2f s; %" PRIu64
              " dlopen/dlclose rounds; calls covered: %" PRIu64 " of L1's, %" PRIu64 " of L2's\n",
              l1.cycles, took, rounds_finished.load(), l1.covered_calls, l2.covered_calls);

  EXPECT_EQ(attach_failures, 0u) << first_error;
  EXPECT_EQ(detach_failures, 0u) << first_error;
  EXPECT_EQ(wrong.load(), 0u) << "wrong results or failed dlopen/dlsym";
  EXPECT_EQ(g_late.load(), 0u) << "callbacks ran after their detach returned";
  EXPECT_EQ(g_bad.load(), 0u);
  EXPECT_EQ(l1_sites_wrong, 0u) << "follow_add's link did not have exactly one site";
  EXPECT_EQ(still_loaded.load(), 0u) << "dlclose did not unmap L2 in some rounds";
  EXPECT_EQ(l1.violations, 0u) << l1.first;
  EXPECT_EQ(l2.violations, 0u) << l2.first;
  EXPECT_GE(l1.cycles, uint64_t{kMinCycles}) << "cycles ended early (attach failures)";
  EXPECT_GT(l2.covered_calls, 0u) << "no dlopen round ran wholly while L2's probe was attached";
  EXPECT_FALSE(loaded(kLib));
  EXPECT_FALSE(loaded(kLibB));
}

}  // namespace
