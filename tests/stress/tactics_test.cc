// The site tactics of arch::prepare_site under load (tests/targets/tactics_targets.S): three
// threads call four sites flat out (a jump punned over one instruction, one punned over
// `nop; jmp`, a window over the padding after a ret, an entry before a loop head) while the main
// thread attaches and detaches all four in one batch: every result exact, every hit counted
// between attach and detach, nothing invented, every byte back after each detach.
//
// Bound: 300 attach/detach cycles or 5 s, whichever comes first (300 cycles took 10 s on a loaded
// two-core machine), under a watchdog.
#include <array>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/code_bytes.h"
#include "support/watchdog.h"
#include "targets/tactics_targets.h"
#include "usprobe/usprobe.h"

namespace {

using usprobe::test::Watchdog;

// The bytes a patch may write or borrow: the function's first 16 and the 8 after its end.
using Bytes = usprobe::test::CodeBytes;

// Live attach and detach while threads call the punned sites flat out: every result exact, every
// hit counted between attach and detach, nothing invented, every byte back after each detach.
TEST(Tactics, LiveAttachDetachUnderLoad) {
  Watchdog dog("LiveAttachDetachUnderLoad", std::chrono::seconds(120));
  Bytes loop_bytes(reinterpret_cast<const void *>(&tac_loop_head), 24);
  Bytes switch_bytes(reinterpret_cast<const void *>(&tac_switch), 64);
  constexpr int kThreads = 3;
  std::atomic<bool> stop{false}, wrong{false};
  struct alignas(64) Done {
    std::atomic<uint64_t> calls{0};
  };
  std::array<Done, kThreads> done;
  std::vector<std::thread> callers;
  for (int t = 0; t < kThreads; ++t)
    callers.emplace_back([&, t] {
      for (long i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        const long x = i % 5;
        bool ok = tac_loop_head(x) == (x ? x : 1);
        ok = ok && tac_switch(x) == switch_value(x);
        ok = ok && tac_nop_jmp(static_cast<int>(x)) == x + 1 && tac_tiny() == 0;
        if (!ok) wrong.store(true);
        done[t].calls.store(done[t].calls.load(std::memory_order_relaxed) + 1,
                            std::memory_order_release);
      }
    });
  auto total = [&] {
    uint64_t s = 0;
    for (auto &d : done) s += d.calls.load(std::memory_order_acquire);
    return s;
  };
  // Punned over one instruction, punned over `nop; jmp` (a thread stopped at the jmp while the
  // patch is written is moved to its copy), a window over the padding after a ret.
  Bytes nop_jmp_bytes(reinterpret_cast<const void *>(&tac_nop_jmp), 32);
  Bytes tiny_bytes(reinterpret_cast<const void *>(&tac_tiny), 11);
  const std::string where[] = {"exe:tac_loop_head", offset_of(tac_switch_tail), nop_jmp_site(),
                               "exe:tac_tiny"};
  constexpr int kSites = 4;
  const char *locs[kSites];
  for (int i = 0; i < kSites; ++i) locs[i] = where[i].c_str();
  // 300 cycles, or 5 s on a slow or loaded machine: the time only shortens the run.
  const auto start = std::chrono::steady_clock::now();
  for (int cycle = 0; cycle < 300 && !wrong.load() &&
                      std::chrono::steady_clock::now() - start < std::chrono::seconds(5);
       ++cycle) {
    const uint64_t s0 = total();
    usprobe_link *links[kSites] = {};
    ASSERT_EQ(usprobe_attach_batch(locs, kSites, nullptr, links, nullptr), kSites)
        << usprobe_last_error();
    const uint64_t s1 = total();
    std::this_thread::yield();
    const uint64_t s2 = total();
    uint64_t hits[kSites];
    for (int i = 0; i < kSites; ++i) hits[i] = usprobe_link_hits(links[i]);
    for (usprobe_link *l : links) ASSERT_EQ(usprobe_link_uses_int3(l), 0);
    ASSERT_EQ(usprobe_detach_batch(links, kSites), 0);
    const uint64_t s3 = total();
    // Each caller may have one call in flight at either end.
    for (uint64_t h : hits) {
      EXPECT_GE(h + 2 * kThreads, s2 - s1) << "cycle " << cycle;
      EXPECT_LE(h, s3 - s0 + 2 * kThreads) << "cycle " << cycle;
    }
    ASSERT_TRUE(loop_bytes.intact()) << "cycle " << cycle;
    ASSERT_TRUE(switch_bytes.intact()) << "cycle " << cycle;
    ASSERT_TRUE(nop_jmp_bytes.intact()) << "cycle " << cycle;
    ASSERT_TRUE(tiny_bytes.intact()) << "cycle " << cycle;
  }
  stop.store(true);
  for (auto &t : callers) t.join();
  EXPECT_FALSE(wrong.load()) << "a probed function returned a wrong value";
}

}  // namespace
