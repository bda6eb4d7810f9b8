// core/registry.h without the C API: attach and detach transactions on functions of this binary
// ("exe:reg_add_one" and its neighbours, below), counted by the built-in counter (read straight
// from the link's slot). The registry's own contracts: every call counted while attached and the
// original bytes back byte for byte after detach; one probe and one patch per location, shared by
// its links and kept until the last of them goes; a detach batch checked whole before anything is
// detached; an attach batch that answers each location on its own; a freed counter slot given to
// the next link, at zero; and the int3 path's site holding the trap byte.
#include "core/registry.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "base/log_linear.h"
#include "core/arch.h"
#include "core/counters.h"
#include "core/probe.h"
#include "core/thread_record.h"

// reg_add_one(x) = x + 1, reg_add_two(x) = x + 2, reg_add_three(x) = x + 3: plain jump sites.
asm(R"(
  .text
  .globl reg_add_one
  .type reg_add_one, @function
  .p2align 4
reg_add_one:
  push %rbp
  mov %rsp, %rbp
  lea 1(%rdi), %rax
  pop %rbp
  ret
  .size reg_add_one, .-reg_add_one
  int3; int3; int3; int3; int3; int3; int3; int3

  .globl reg_add_two
  .type reg_add_two, @function
  .p2align 4
reg_add_two:
  push %rbp
  mov %rsp, %rbp
  lea 2(%rdi), %rax
  pop %rbp
  ret
  .size reg_add_two, .-reg_add_two
  int3; int3; int3; int3; int3; int3; int3; int3

  .globl reg_add_three
  .type reg_add_three, @function
  .p2align 4
reg_add_three:
  push %rbp
  mov %rsp, %rbp
  lea 3(%rdi), %rax
  pop %rbp
  ret
  .size reg_add_three, .-reg_add_three
  int3; int3; int3; int3; int3; int3; int3; int3

  .globl reg_spin
  .type reg_spin, @function
  .p2align 4
reg_spin:
  push %rbp
  mov %rsp, %rbp
  rdtsc
  shl $32, %rdx
  or %rdx, %rax
  lea (%rax,%rdi), %rcx
1:
  rdtsc
  shl $32, %rdx
  or %rdx, %rax
  cmp %rcx, %rax
  jb 1b
  mov %rdi, %rax
  pop %rbp
  ret
  .size reg_spin, .-reg_spin
  int3; int3; int3; int3; int3; int3; int3; int3
)");
extern "C" {
long reg_add_one(long x);
long reg_add_two(long x);
long reg_add_three(long x);
long reg_spin(long ticks);  // returns ticks once the time stamp counter has advanced that much
}

namespace usprobe {
namespace {

long (*volatile g_add_one)(long) = reg_add_one;
long (*volatile g_add_two)(long) = reg_add_two;
long (*volatile g_add_three)(long) = reg_add_three;
long (*volatile g_spin)(long) = reg_spin;

using Code = std::array<uint8_t, 16>;
Code code_at(long (*fn)(long)) {
  Code c;
  std::memcpy(c.data(), reinterpret_cast<const void *>(fn), c.size());
  return c;
}

uint64_t hits(const usprobe_link *link) {
  return counters::read(link->slot).hits;
}

// One attach of the built-in counter; null (with the test failed) when it was refused.
usprobe_link *attach_one(const std::string &where, unsigned flags = 0) {
  const std::string locations[] = {where};
  auto r = registry::attach(locations, {}, flags);
  EXPECT_EQ(r.size(), 1u);
  if (r.size() != 1 || !r[0]) {
    ADD_FAILURE() << where << ": " << (r.empty() ? "no result" : r[0].error().message);
    return nullptr;
  }
  return *r[0];
}

Result<void> detach(std::vector<usprobe_link *> links) {
  return registry::detach(links);
}

TEST(Registry, CountsEveryCallWhileAttachedAndDetachRestoresTheBytes) {
  const Code before = code_at(reg_add_one);
  usprobe_link *link = attach_one("exe:reg_add_one");
  ASSERT_NE(link, nullptr);
  EXPECT_NE(code_at(reg_add_one), before) << "attach did not patch the function";
  EXPECT_EQ(registry::site_count(link), 1);
  EXPECT_FALSE(registry::uses_int3(link)) << registry::int3_reason(link);
  EXPECT_STREQ(registry::path(link), "jump");
  for (long i = 0; i < 1000; ++i) ASSERT_EQ(g_add_one(i), i + 1);
  EXPECT_EQ(hits(link), 1000u);
  ASSERT_TRUE(detach({link}));
  EXPECT_EQ(code_at(reg_add_one), before) << "detach did not restore every byte";
  EXPECT_EQ(g_add_one(41), 42);
}

TEST(Registry, LinksOnOneLocationShareOneProbeAndItsPatchUntilTheLastGoes) {
  const Code before = code_at(reg_add_two);
  usprobe_link *first = attach_one("exe:reg_add_two");
  ASSERT_NE(first, nullptr);
  const Code patched = code_at(reg_add_two);
  // A second attach of the location finds the probe the first made.
  usprobe_link *second = attach_one("exe:reg_add_two");
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->probe, first->probe) << "a second probe for one location";
  EXPECT_NE(second->slot, first->slot) << "each link has its own counters";
  EXPECT_EQ(code_at(reg_add_two), patched) << "the second attach rewrote the patch";
  for (long i = 0; i < 10; ++i) ASSERT_EQ(g_add_two(i), i + 2);
  EXPECT_EQ(hits(first), 10u);
  EXPECT_EQ(hits(second), 10u);

  ASSERT_TRUE(detach({first}));
  EXPECT_EQ(code_at(reg_add_two), patched) << "the patch went with a link that was not the last";
  for (long i = 0; i < 5; ++i) ASSERT_EQ(g_add_two(i), i + 2);
  EXPECT_EQ(hits(second), 15u);
  ASSERT_TRUE(detach({second}));
  EXPECT_EQ(code_at(reg_add_two), before);
}

TEST(Registry, ADetachBatchWithALinkNotAttachedDetachesNone) {
  const Code before = code_at(reg_add_one);
  usprobe_link *gone = attach_one("exe:reg_add_two");
  usprobe_link *kept = attach_one("exe:reg_add_one");
  ASSERT_NE(gone, nullptr);
  ASSERT_NE(kept, nullptr);
  ASSERT_TRUE(detach({gone}));
  const Code patched = code_at(reg_add_one);

  auto twice = detach({gone});  // `gone` is only compared, never followed
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.error().code, EINVAL);
  auto mixed = detach({kept, gone});
  ASSERT_FALSE(mixed);
  EXPECT_EQ(mixed.error().code, EINVAL) << mixed.error().message;
  auto repeated = detach({kept, kept});
  ASSERT_FALSE(repeated);
  EXPECT_EQ(repeated.error().code, EINVAL) << repeated.error().message;

  // Neither refused batch detached `kept`.
  EXPECT_EQ(code_at(reg_add_one), patched);
  EXPECT_EQ(g_add_one(1), 2);
  EXPECT_EQ(hits(kept), 1u);
  ASSERT_TRUE(detach({nullptr, kept, nullptr})) << "null entries are skipped";
  EXPECT_EQ(code_at(reg_add_one), before);
}

TEST(Registry, AnAttachBatchAnswersEachLocationAndABadOneLeavesTheOthersAttached) {
  const Code one = code_at(reg_add_one), three = code_at(reg_add_three);
  const std::string locations[] = {"exe:reg_add_one", "exe:reg_no_such_function",
                                   "exe:reg_add_three"};
  auto r = registry::attach(locations, {});
  ASSERT_EQ(r.size(), 3u);
  ASSERT_TRUE(r[0]) << r[0].error().message;
  ASSERT_FALSE(r[1]);
  ASSERT_TRUE(r[2]) << r[2].error().message;
  EXPECT_EQ(r[1].error().code, ENOENT);
  EXPECT_NE(r[1].error().message.find("reg_no_such_function"), std::string::npos)
      << r[1].error().message;
  EXPECT_EQ(g_add_one(1), 2);
  EXPECT_EQ(g_add_three(1), 4);
  EXPECT_EQ(g_add_three(2), 5);
  EXPECT_EQ(hits(*r[0]), 1u);
  EXPECT_EQ(hits(*r[2]), 2u) << "results out of order";
  ASSERT_TRUE(detach({*r[0], *r[2]}));
  EXPECT_EQ(code_at(reg_add_one), one);
  EXPECT_EQ(code_at(reg_add_three), three);
}

// A link alone on a function entry counts on the counter path (the trampoline increments its slot
// without a call): its slot must come back, at zero, and count only for the link that gets it.
TEST(Registry, AFreedCounterSlotGoesToTheNextLinkAtZero) {
  usprobe_link *first = attach_one("exe:reg_add_one");
  ASSERT_NE(first, nullptr);
  for (long i = 0; i < 5; ++i) ASSERT_EQ(g_add_one(i), i + 1);
  ASSERT_EQ(hits(first), 5u);
  const uint32_t slot = first->slot;
  ASSERT_TRUE(detach({first}));

  usprobe_link *next = attach_one("exe:reg_add_three");
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next->slot, slot) << "the detached link's slot was not given back";
  EXPECT_EQ(hits(next), 0u);
  for (long i = 0; i < 3; ++i) ASSERT_EQ(g_add_one(i), i + 1);  // no longer probed
  EXPECT_EQ(hits(next), 0u);
  EXPECT_EQ(g_add_three(0), 3);
  EXPECT_EQ(hits(next), 1u);
  ASSERT_TRUE(detach({next}));
}

// A counter kept outside the engine (ExternalCounter), as the agent keeps its sessions'
// counts: its handler counts the full path's hits and sets the thread's home, as count_handler
// does, and the counter path counts the others there. A home set under an older tag (a session
// that ended) is not taken: the hit goes to the handler, which sets the new one.
struct ExternalHome {
  uint64_t *home = nullptr;
  uint64_t tag = 0;
  uint64_t handler_hits = 0;
};
ExternalHome g_external;
void count_externally(usprobe_hit *, void *) {
  ++g_external.handler_hits;
  set_counter_home(
      tagged_counter_home(reinterpret_cast<uint64_t>(g_external.home), g_external.tag));
}

TEST(Registry, AnExternalCounterCountsAtItsTagsHomeAndAStaleHomeTakesTheFullPath) {
  const uint64_t saved_home = t_thread.counter_path.home;
  alignas(64) static uint64_t first[4], second[4];
  const std::string locations[] = {"exe:reg_add_three"};
  const usprobe_consumer consumer{count_externally, nullptr, nullptr};
  constexpr uint32_t kOffset = 2 * sizeof(uint64_t);  // the counter is word 2 of the home
  auto attach_counting = [&](uint64_t tag) -> usprobe_link * {
    const ExternalCounter counter{true, kOffset, tag, {}};
    auto r = registry::attach(locations, std::span(&consumer, 1), 0, std::span(&counter, 1));
    EXPECT_TRUE(r.size() == 1 && r[0]) << (r.empty() || r[0] ? "" : r[0].error().message);
    return r.size() == 1 && r[0] ? *r[0] : nullptr;
  };

  g_external = {first, 1, 0};
  set_counter_home(0);  // this thread has no home yet
  usprobe_link *link = attach_counting(1);
  ASSERT_NE(link, nullptr);
  EXPECT_EQ(registry::on_counter_path(std::span(&link, 1)), 1u);
  for (long i = 0; i < 10; ++i) ASSERT_EQ(g_add_three(i), i + 3);
  EXPECT_EQ(g_external.handler_hits, 1u) << "the first hit sets the home, the others count there";
  EXPECT_EQ(first[2], 9u);
  ASSERT_TRUE(detach({link}));

  // The next owner's tag: the home of tag 1 is stale, and only the handler may set the new one.
  g_external = {second, 2, 0};
  link = attach_counting(2);
  ASSERT_NE(link, nullptr);
  for (long i = 0; i < 10; ++i) ASSERT_EQ(g_add_three(i), i + 3);
  EXPECT_EQ(g_external.handler_hits, 1u);
  EXPECT_EQ(second[2], 9u);
  EXPECT_EQ(first[2], 9u) << "a hit counted into the stale home";
  EXPECT_EQ(first[0] + first[1] + first[3] + second[0] + second[1] + second[3], 0u);

  // Without one, the same consumer is a handler: every hit calls it.
  ASSERT_TRUE(detach({link}));
  auto r = registry::attach(locations, std::span(&consumer, 1), 0);
  ASSERT_TRUE(r.size() == 1 && r[0]);
  link = *r[0];
  EXPECT_EQ(registry::on_counter_path(std::span(&link, 1)), 0u);
  g_external.handler_hits = 0;
  for (long i = 0; i < 10; ++i) ASSERT_EQ(g_add_three(i), i + 3);
  EXPECT_EQ(g_external.handler_hits, 10u);
  EXPECT_EQ(second[2], 9u);
  ASSERT_TRUE(detach({link}));
  set_counter_home(saved_home);
}

// usprobe's own work that calls probed functions (the agent's attach) sinks this thread's hits:
// inside the sink's scope they count into a block no one reads, on the counter path, handler
// sections included, and neither the counter nor its handler sees them; after it the thread counts
// at its home again.
TEST(Registry, ASinkTakesThisThreadsHitsAndGivesTheHomeBack) {
  const uint64_t saved_home = t_thread.counter_path.home;
  void *blocks =
      mmap(nullptr, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(blocks, MAP_FAILED);
  auto *home = static_cast<uint64_t *>(blocks);
  auto *sink = home + 4096 / sizeof(uint64_t);
  constexpr uint32_t kOffset = 2 * sizeof(uint64_t);
  constexpr uint64_t kTag = 3;
  const std::string locations[] = {"exe:reg_add_three"};
  const usprobe_consumer consumer{count_externally, nullptr, nullptr};
  const ExternalCounter counter{true, kOffset, kTag, {}};
  auto r = registry::attach(locations, std::span(&consumer, 1), 0, std::span(&counter, 1));
  ASSERT_TRUE(r.size() == 1 && r[0]) << (r.empty() || r[0] ? "" : r[0].error().message);
  usprobe_link *link = *r[0];

  g_external = {home, kTag, 0};
  set_counter_home(0);
  for (long i = 0; i < 4; ++i) ASSERT_EQ(g_add_three(i), i + 3);
  EXPECT_EQ(g_external.handler_hits, 1u);
  EXPECT_EQ(home[2], 3u);
  {
    CounterPathSink sunk(tagged_counter_home(reinterpret_cast<uint64_t>(sink), kTag));
    for (long i = 0; i < 5; ++i) ASSERT_EQ(g_add_three(i), i + 3);
    {
      CounterPathOff off;  // a handler section (the registry's lock holds one)
      for (long i = 0; i < 6; ++i) ASSERT_EQ(g_add_three(i), i + 3);
    }
    for (long i = 0; i < 7; ++i) ASSERT_EQ(g_add_three(i), i + 3);
  }
  EXPECT_EQ(sink[2], 18u);
  EXPECT_EQ(home[2], 3u) << "a sunk hit counted at the home";
  EXPECT_EQ(g_external.handler_hits, 1u) << "a sunk hit took the full path";
  for (long i = 0; i < 8; ++i) ASSERT_EQ(g_add_three(i), i + 3);
  EXPECT_EQ(home[2], 11u) << "the home was not given back";
  {
    CounterPathOff off;  // without a sink, a handler section's hits take the full path
    for (long i = 0; i < 2; ++i) ASSERT_EQ(g_add_three(i), i + 3);
  }
  EXPECT_EQ(g_external.handler_hits, 3u);
  EXPECT_EQ(home[2], 11u);
  EXPECT_EQ(sink[2], 18u);

  ASSERT_TRUE(detach({link}));
  set_counter_home(saved_home);
  munmap(blocks, 2 * 4096);
}

// An external timer (ExternalTimer), as the agent's `usprobe latency` keeps its histograms: its
// handlers time what the engine does not and set the thread's home; the engine times the other
// calls there, and every call is counted once, by one or the other.
struct TimerHome {
  uint64_t hits, returns, sum;
  uint64_t buckets[log_linear_buckets<kTimerSubBits>()];
};
struct TimerHandlers {
  TimerHome *home = nullptr;
  uint64_t tag = 0;
  uint64_t entries = 0, returns = 0;
};
TimerHandlers g_timer;
void time_entry(usprobe_hit *hit, void *) {
  ++g_timer.entries;
  set_counter_home(tagged_counter_home(reinterpret_cast<uint64_t>(g_timer.home), g_timer.tag));
  if (hit->session) hit->session->data[0] = arch::timestamp();  // as usprobe_session(hit)[0]
}
void time_return(usprobe_hit *, void *) {
  ++g_timer.returns;
}

TEST(Registry, AnExternalTimerTimesEachCallAtItsHomeAndItsHandlersTheOthers) {
  const uint64_t saved_home = t_thread.counter_path.home;
  static TimerHome home;
  constexpr uint64_t kTag = 4;
  constexpr long kTicks = 20000;  // a call's time, at least
  const std::string locations[] = {"exe:reg_spin"};
  const usprobe_consumer consumer{time_entry, nullptr, time_return};
  const ExternalCounter timer{true,
                              offsetof(TimerHome, hits),
                              kTag,
                              {true, offsetof(TimerHome, returns), offsetof(TimerHome, sum),
                               offsetof(TimerHome, buckets), uint64_t{1} << 32}};  // ns = ticks
  auto r = registry::attach(locations, std::span(&consumer, 1),
                            USPROBE_GENERAL_REGS_ONLY | USPROBE_NO_REGS, std::span(&timer, 1));
  ASSERT_TRUE(r.size() == 1 && r[0]) << (r.empty() || r[0] ? "" : r[0].error().message);
  usprobe_link *link = *r[0];

  g_timer = {&home, kTag, 0, 0};
  set_counter_home(0);
  for (int i = 0; i < 10; ++i) ASSERT_EQ(g_spin(kTicks), kTicks);
  // The first entry found no home: its handler set it and timed the call's entry; the engine
  // timed the rest, that call's return included.
  EXPECT_EQ(g_timer.entries, 1u);
  EXPECT_EQ(g_timer.returns, 0u);
  EXPECT_EQ(home.hits, 9u);
  EXPECT_EQ(home.returns, 10u);
  EXPECT_GE(home.sum, 10u * kTicks);
  uint64_t bucketed = 0, below = 0;
  for (uint32_t b = 0; b < std::size(home.buckets); ++b) {
    bucketed += home.buckets[b];
    if (b < log_linear_bucket<kTimerSubBits>(kTicks)) below += home.buckets[b];
  }
  EXPECT_EQ(bucketed, 10u);
  EXPECT_EQ(below, 0u) << "a call counted in a bucket below its time";
  // Each call's bucket holds its time: the sum of the times lies between the sum of the buckets'
  // lowest values and that of their highest.
  uint64_t lowest = 0, highest = 0;
  for (uint32_t b = 0; b < std::size(home.buckets); ++b) {
    if (!home.buckets[b]) continue;
    uint64_t lo = b, hi = b;  // the values of bucket b (base/log_linear.h)
    if (b >= (2u << kTimerSubBits)) {
      const uint32_t p = b / (1u << kTimerSubBits) + kTimerSubBits - 1;
      lo = (uint64_t{(1u << kTimerSubBits) + b % (1u << kTimerSubBits)}) << (p - kTimerSubBits);
      hi = lo + (uint64_t{1} << (p - kTimerSubBits)) - 1;
    }
    ASSERT_EQ(log_linear_bucket<kTimerSubBits>(lo), b);
    ASSERT_EQ(log_linear_bucket<kTimerSubBits>(hi), b);
    lowest += home.buckets[b] * lo;
    highest += home.buckets[b] * hi;
  }
  EXPECT_LE(lowest, home.sum) << "calls counted in buckets above their times";
  EXPECT_GE(highest, home.sum) << "calls counted in buckets below their times";

  // Inside a handler section the engine leaves the calls to the handlers.
  {
    CounterPathOff off;
    for (int i = 0; i < 3; ++i) ASSERT_EQ(g_spin(kTicks), kTicks);
  }
  EXPECT_EQ(g_timer.entries, 4u);
  EXPECT_EQ(g_timer.returns, 3u);
  EXPECT_EQ(home.hits, 9u);
  EXPECT_EQ(home.returns, 10u);

  // A home of another owner (an older tag) is not taken: the handler sets this one's again.
  set_counter_home(tagged_counter_home(reinterpret_cast<uint64_t>(&home), kTag - 1));
  for (int i = 0; i < 2; ++i) ASSERT_EQ(g_spin(kTicks), kTicks);
  EXPECT_EQ(g_timer.entries, 5u);
  EXPECT_EQ(home.hits, 10u);
  EXPECT_EQ(home.returns, 12u);

  ASSERT_TRUE(detach({link}));
  for (int i = 0; i < 2; ++i) ASSERT_EQ(g_spin(1), 1);
  EXPECT_EQ(home.returns, 12u);
  set_counter_home(saved_home);
}

TEST(Registry, ForcedInt3SiteHoldsTheTrapByteAndCountsEveryCall) {
  const Code before = code_at(reg_add_two);
  usprobe_link *link = attach_one("exe:reg_add_two", USPROBE_FORCE_INT3);
  ASSERT_NE(link, nullptr);
  EXPECT_TRUE(registry::uses_int3(link));
  EXPECT_STREQ(registry::path(link), "int3");
  EXPECT_NE(std::string(registry::int3_reason(link)).find("USPROBE_FORCE_INT3"), std::string::npos)
      << registry::int3_reason(link);
  const Code now = code_at(reg_add_two);
  EXPECT_EQ(now[0], arch::trap_byte());
  EXPECT_TRUE(std::equal(now.begin() + 1, now.end(), before.begin() + 1))
      << "the int3 path writes one byte";
  for (long i = 0; i < 50; ++i) ASSERT_EQ(g_add_two(i), i + 2);
  EXPECT_EQ(hits(link), 50u);
  ASSERT_TRUE(detach({link}));
  EXPECT_EQ(code_at(reg_add_two), before);
}

}  // namespace
}  // namespace usprobe
