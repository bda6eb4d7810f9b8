// usprobe_hit_stack through the public C API: the stack a handler takes names the probed function
// and its callers, in order, with DWARF unwinding (code with and without frame pointers) and with
// frame pointers only; return addresses that pending return probes replaced by the trampoline show
// as the originals, and those returns still go through their probes; a return handler's stack
// starts at the caller's return site; `max` truncates; bad arguments are refused; a garbage frame
// pointer ends the frame-pointer walk without a fault. Also prints the cost of a stack per mode.
//
// Frames are named with dladdr(): the targets are exported by libusprobe_targets.so
// (targets/stack_targets.h), and this binary exports its own functions (ENABLE_EXPORTS).
#include <dlfcn.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/test_link.h"
#include "targets/stack_targets.h"
#include "usprobe/usprobe.hpp"

#define OPAQUE(x) __asm__ volatile("" : "+r"(x))

// The caller of the chain: a frame of this binary, so that the stack is [inner, middle, outer,
// stack_test_call, ...].
extern "C" __attribute__((noipa, visibility("default"))) long stack_test_call(long (*fn)(long),
                                                                              long x) {
  long r = fn(x);
  OPAQUE(r);
  return r;
}

// stk_bad_fp(x, fn, bad_fp) from a frame of this binary.
extern "C" __attribute__((noipa, visibility("default"))) long stack_test_bad_fp(
    long (*fn)(long), long x, unsigned long bad_fp) {
  long r = stk_bad_fp(x, fn, bad_fp);
  OPAQUE(r);
  return r;
}

namespace {

constexpr const char *kLib = "libusprobe_targets.so";
constexpr long kArg = 5;
constexpr long kResult = 2 * kArg + 6;  // outer(x) = 2x + 6 (stack_targets.h)

std::string loc(const char *symbol) {
  return std::string(kLib) + ":" + symbol;
}

using usprobe::test::Link;

// A per-thread count, for handlers on many threads.
int &thread_local_matching() {
  thread_local int count = 0;
  return count;
}

// What one handler call saw.
struct Capture {
  unsigned flags = 0;
  size_t max = 64;
  uint64_t ips[64] = {};
  int n = 0;
  int hits = 0;
  uint64_t return_address = 0;  // usprobe_hit_return_address
  // usprobe_hit_stack with bad arguments, from inside the handler.
  int null_ips = 0, zero_max = 0, bad_flags = 0;
};

void take_stack(usprobe_hit *hit, void *user) {
  auto *c = static_cast<Capture *>(user);
  ++c->hits;
  c->n = usprobe_hit_stack(hit, c->ips, c->max, c->flags);
  c->return_address = usprobe_hit_return_address(hit);
  uint64_t one[1];
  c->null_ips = usprobe_hit_stack(hit, nullptr, 8, c->flags);
  c->zero_max = usprobe_hit_stack(hit, one, 0, c->flags);
  c->bad_flags = usprobe_hit_stack(hit, one, 1, 0x80);
}

// The function holding `ip`; a return address belongs to the function of the call before it.
std::string symbol_of(uint64_t ip, bool return_address) {
  Dl_info info{};
  const uint64_t at = return_address ? ip - 1 : ip;
  if (!dladdr(reinterpret_cast<void *>(at), &info) || !info.dli_sname)
    return "?" + std::to_string(ip);
  return info.dli_sname;
}

// The first `count` frames by name: ips[0] is an instruction (`first_is_return_address` false at an
// entry) and the rest are return addresses.
std::vector<std::string> frames(const Capture &c, size_t count, bool first_is_return_address) {
  std::vector<std::string> v;
  for (size_t i = 0; i < count && i < static_cast<size_t>(c.n); ++i)
    v.push_back(symbol_of(c.ips[i], i > 0 || first_is_return_address));
  return v;
}

uint64_t address_of(long (*fn)(long)) {
  return reinterpret_cast<uint64_t>(fn);
}

struct Chain {
  long (*outer)(long);
  const char *inner_name, *middle_name, *outer_name;
};
const Chain kFp{stk_fp_outer, "stk_fp_inner", "stk_fp_middle", "stk_fp_outer"};
const Chain kNoFp{stk_nofp_outer, "stk_nofp_inner", "stk_nofp_middle", "stk_nofp_outer"};

// An entry handler on the chain's inner function takes a stack with `flags`.
Capture entry_stack(const Chain &chain, unsigned flags) {
  Capture c;
  c.flags = flags;
  usprobe_consumer consumer{take_stack, &c, nullptr};
  Link inner;
  EXPECT_EQ(inner.attach(loc(chain.inner_name), &consumer), 0) << usprobe_last_error();
  EXPECT_EQ(stack_test_call(chain.outer, kArg), kResult);
  EXPECT_EQ(c.hits, 1);
  return c;
}

void expect_full_chain(const Capture &c, const Chain &chain, long (*inner)(long)) {
  ASSERT_GE(c.n, 4);
  EXPECT_EQ(c.ips[0], address_of(inner));
  EXPECT_EQ(frames(c, 4, false), (std::vector<std::string>{chain.inner_name, chain.middle_name,
                                                           chain.outer_name, "stack_test_call"}));
}

TEST(HitStack, DwarfWalkNamesEveryCallerWithFramePointers) {
  Capture c = entry_stack(kFp, 0);
  expect_full_chain(c, kFp, stk_fp_inner);
}

TEST(HitStack, DwarfWalkNamesEveryCallerWithoutFramePointers) {
  Capture c = entry_stack(kNoFp, 0);
  expect_full_chain(c, kNoFp, stk_nofp_inner);
}

TEST(HitStack, DwarfWalkReachesMain) {
  Capture c = entry_stack(kNoFp, 0);
  auto names = frames(c, static_cast<size_t>(c.n), false);
  EXPECT_NE(std::find(names.begin(), names.end(), "main"), names.end())
      << "stack of " << c.n << " frames does not reach main";
  EXPECT_LT(c.n, 64) << "the walk did not end";
}

// Many threads walk at once: the DWARF walk's row cache is shared, and must give every thread the
// same frames as a walk alone.
void count_matching_stacks(usprobe_hit *hit, void *user) {
  auto *expected = static_cast<const Capture *>(user);
  uint64_t ips[64];
  const int n = usprobe_hit_stack(hit, ips, 64, 0);
  thread_local int matching = 0;
  if (n >= 4 && std::equal(ips, ips + 4, expected->ips)) ++matching;  // to stack_test_call
  thread_local_matching() = matching;
}

TEST(HitStack, DwarfWalkOnManyThreadsAtOnce) {
  const Capture alone = entry_stack(kNoFp, 0);
  ASSERT_GE(alone.n, 4);
  usprobe_consumer consumer{count_matching_stacks, const_cast<Capture *>(&alone), nullptr};
  Link inner;
  ASSERT_ATTACHED(inner.attach(loc("stk_nofp_inner"), &consumer));
  constexpr int kThreads = 8, kCalls = 2000;
  std::vector<int> matched(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&matched, t] {
      for (int i = 0; i < kCalls; ++i) stack_test_call(stk_nofp_outer, kArg);
      matched[t] = thread_local_matching();
    });
  for (auto &t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(matched[t], kCalls) << "thread " << t;
}

TEST(HitStack, FramePointerWalkNamesEveryCallerWithFramePointers) {
  Capture c = entry_stack(kFp, USPROBE_STACK_FP);
  expect_full_chain(c, kFp, stk_fp_inner);
}

TEST(HitStack, FramePointerWalkKeepsTheCallerAtAFunctionEntry) {
  // Without frame pointers the chain skips the functions that have none (outer here), but the
  // probed function's own caller is read from the stack pointer at the entry.
  Capture c = entry_stack(kNoFp, USPROBE_STACK_FP);
  ASSERT_GE(c.n, 2);
  EXPECT_EQ(frames(c, 2, false), (std::vector<std::string>{"stk_nofp_inner", "stk_nofp_middle"}));
}

// The same with the probe placed by file offset ("FILE:0xOFF"): still a function's entry.
TEST(HitStack, FramePointerWalkKeepsTheCallerAtAnEntryNamedByFileOffset) {
  struct Found {
    uint64_t offset = 0;
  } found;
  ASSERT_GT(usprobe_list_functions(
                kLib,
                [](const char *name, uint64_t offset, uint64_t, void *user) {
                  if (std::string(name) == "stk_nofp_inner")
                    static_cast<Found *>(user)->offset = offset;
                },
                &found),
            0);
  ASSERT_NE(found.offset, 0u);
  Capture c;
  c.flags = USPROBE_STACK_FP;
  usprobe_consumer consumer{take_stack, &c, nullptr};
  Link inner;
  char where[128];
  std::snprintf(where, sizeof where, "%s:%#" PRIx64, kLib, found.offset);
  ASSERT_ATTACHED(inner.attach(where, &consumer));
  EXPECT_EQ(stack_test_call(stk_nofp_outer, kArg), kResult);
  ASSERT_EQ(c.hits, 1);
  ASSERT_GE(c.n, 2);
  EXPECT_EQ(frames(c, 2, false), (std::vector<std::string>{"stk_nofp_inner", "stk_nofp_middle"}));
}

TEST(HitStack, FramePointerWalkOnAnotherThread) {
  Capture c;
  std::thread t([&] { c = entry_stack(kFp, USPROBE_STACK_FP); });
  t.join();
  expect_full_chain(c, kFp, stk_fp_inner);
}

TEST(HitStack, DwarfWalkOnAnotherThread) {
  Capture c;
  std::thread t([&] { c = entry_stack(kNoFp, 0); });
  t.join();
  expect_full_chain(c, kNoFp, stk_nofp_inner);
}

// Whether an address lies in a loaded ELF object. A return address that a pending return probe
// replaced points into usprobe's trampolines, in anonymous memory: no object has it.
bool in_an_object(uint64_t ip) {
  Dl_info info{};
  return dladdr(reinterpret_cast<void *>(ip), &info) != 0 && info.dli_fname != nullptr;
}

// Return probes on outer and middle are pending while inner's handler takes the stack: their
// slots hold trampoline addresses, and the stack must show the callers anyway.
void pending_returns_show_originals(const Chain &chain, unsigned flags) {
  Link outer, middle;
  ASSERT_ATTACHED(outer.attach(std::string("uretprobe:") + loc(chain.outer_name)));
  ASSERT_ATTACHED(middle.attach(std::string("uretprobe:") + loc(chain.middle_name)));
  Capture c = entry_stack(chain, flags);
  ASSERT_GE(c.n, 4);
  EXPECT_EQ(frames(c, 4, false), (std::vector<std::string>{chain.inner_name, chain.middle_name,
                                                           chain.outer_name, "stack_test_call"}));
  for (int i = 0; i < c.n; ++i) EXPECT_TRUE(in_an_object(c.ips[i])) << "frame " << i;
  // The returns still went through their probes: the walk left the trampoline in place.
  EXPECT_EQ(outer.return_hits(), 1u);
  EXPECT_EQ(middle.return_hits(), 1u);
  // And a second call does the same.
  EXPECT_EQ(stack_test_call(chain.outer, kArg), kResult);
  EXPECT_EQ(outer.return_hits(), 2u);
  EXPECT_EQ(middle.return_hits(), 2u);
}

TEST(HitStack, PendingReturnsShowOriginalAddressesDwarf) {
  pending_returns_show_originals(kFp, 0);
}
TEST(HitStack, PendingReturnsShowOriginalAddressesDwarfWithoutFramePointers) {
  pending_returns_show_originals(kNoFp, 0);
}
TEST(HitStack, PendingReturnsShowOriginalAddressesFramePointers) {
  pending_returns_show_originals(kFp, USPROBE_STACK_FP);
}

// A return handler on middle, with outer's return pending: the stack starts at middle's return
// site in outer, then outer's caller (through outer's hijacked slot).
void return_handler_stack(const Chain &chain, unsigned flags) {
  Capture c;
  c.flags = flags;
  usprobe_consumer consumer{nullptr, &c, take_stack};
  Link outer, middle;
  ASSERT_ATTACHED(outer.attach(std::string("uretprobe:") + loc(chain.outer_name)));
  ASSERT_ATTACHED(middle.attach(loc(chain.middle_name), &consumer));
  EXPECT_EQ(stack_test_call(chain.outer, kArg), kResult);
  ASSERT_EQ(c.hits, 1);
  ASSERT_GE(c.n, 2);
  EXPECT_EQ(c.ips[0], c.return_address);
  EXPECT_EQ(frames(c, 2, true), (std::vector<std::string>{chain.outer_name, "stack_test_call"}));
  EXPECT_EQ(outer.return_hits(), 1u);
  EXPECT_EQ(middle.return_hits(), 1u);
}

TEST(HitStack, ReturnHandlerStackStartsAtTheReturnSiteDwarf) {
  return_handler_stack(kFp, 0);
}
TEST(HitStack, ReturnHandlerStackStartsAtTheReturnSiteDwarfWithoutFramePointers) {
  return_handler_stack(kNoFp, 0);
}
TEST(HitStack, ReturnHandlerStackStartsAtTheReturnSiteFramePointers) {
  return_handler_stack(kFp, USPROBE_STACK_FP);
}

TEST(HitStack, MaxTruncates) {
  for (unsigned flags : {0u, USPROBE_STACK_FP}) {
    for (size_t max : {size_t{1}, size_t{2}, size_t{3}}) {
      Capture c;
      c.flags = flags;
      c.max = max;
      c.ips[max] = 0xfeedface;  // must stay untouched
      usprobe_consumer consumer{take_stack, &c, nullptr};
      Link inner;
      ASSERT_ATTACHED(inner.attach(loc("stk_fp_inner"), &consumer));
      EXPECT_EQ(stack_test_call(stk_fp_outer, kArg), kResult);
      EXPECT_EQ(c.n, static_cast<int>(max)) << "flags " << flags;
      EXPECT_EQ(c.ips[0], address_of(stk_fp_inner));
      if (max >= 2) {
        EXPECT_EQ(symbol_of(c.ips[1], true), "stk_fp_middle");
      }
      if (max >= 3) {
        EXPECT_EQ(symbol_of(c.ips[2], true), "stk_fp_outer");
      }
      EXPECT_EQ(c.ips[max], 0xfeedfaceu);
    }
  }
}

TEST(HitStack, BadArgumentsAreRefused) {
  for (unsigned flags : {0u, USPROBE_STACK_FP}) {
    Capture c = entry_stack(kFp, flags);
    EXPECT_EQ(c.null_ips, -EINVAL);
    EXPECT_EQ(c.zero_max, -EINVAL);
    EXPECT_EQ(c.bad_flags, -EINVAL);
  }
  uint64_t ips[4];
  EXPECT_EQ(usprobe_hit_stack(nullptr, ips, 4, 0), -EINVAL);
}

// The top of this thread's stack mapping, from /proc/self/maps.
uint64_t stack_mapping_end(uint64_t inside) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return 0;
  char line[4096];
  uint64_t end = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long long lo = 0, hi = 0;
    if (sscanf(line, "%llx-%llx", &lo, &hi) == 2 && inside >= lo && inside < hi) end = hi;
  }
  fclose(f);
  return end;
}

// A frame-pointer chain of garbage (what code without frame pointers leaves in %rbp) ends the
// walk after the probed function's caller, wherever it points; DWARF walks through it.
// No AddressSanitizer here: `fake` must be on the real stack, not a fake one.
__attribute__((no_sanitize("address"))) void bad_chain_test() {
  Capture c;
  c.flags = USPROBE_STACK_FP;
  usprobe_consumer consumer{take_stack, &c, nullptr};
  Link inner;
  ASSERT_ATTACHED(inner.attach(loc("stk_fp_inner"), &consumer));
  volatile uint64_t fake[4];
  const auto here = reinterpret_cast<uint64_t>(&fake[0]);
  const uint64_t top = stack_mapping_end(here);
  ASSERT_NE(top, 0u);
  const uint64_t garbage[] = {
      0,                   // the end of a chain
      0x10,                // below the stack
      0xdead0000000,       // nowhere
      ~uint64_t{0} - 15,   // the top of the address space
      top - 8,             // a frame that would cross the top of the stack
      top,                 // just above it
      here + 3,            // misaligned
      here + (64u << 20),  // far above the stack (64 MiB)
  };
  for (uint64_t bad : garbage) {
    c = Capture{};
    c.flags = USPROBE_STACK_FP;
    EXPECT_EQ(stack_test_bad_fp(stk_fp_inner, kArg, bad), 2 * kArg);
    ASSERT_EQ(c.n, 2) << "rbp " << std::hex << bad;
    EXPECT_EQ(frames(c, 2, false), (std::vector<std::string>{"stk_fp_inner", "stk_bad_fp"}));
  }
  // A frame in the stack whose saved %rbp goes down (here: to itself) ends the walk after it.
  fake[0] = here;
  fake[1] = 0x1234;
  c = Capture{};
  c.flags = USPROBE_STACK_FP;
  EXPECT_EQ(stack_test_bad_fp(stk_fp_inner, kArg, here), 2 * kArg);
  ASSERT_EQ(c.n, 3);
  EXPECT_EQ(c.ips[2], 0x1234u);
  // DWARF reads stk_bad_fp's CFI, not %rbp.
  for (uint64_t bad : garbage) {
    c = Capture{};
    EXPECT_EQ(stack_test_bad_fp(stk_fp_inner, kArg, bad), 2 * kArg);
    ASSERT_GE(c.n, 3) << "rbp " << std::hex << bad;
    EXPECT_EQ(frames(c, 3, false),
              (std::vector<std::string>{"stk_fp_inner", "stk_bad_fp", "stack_test_bad_fp"}));
  }
}

TEST(HitStack, GarbageFramePointerNeverFaults) {
  bad_chain_test();
}

// Cost, printed (benchmarks, not tests, hold speed goals): many stacks from one handler call.
struct Timing {
  unsigned flags;
  size_t max;
  int rounds;
  int frames = 0;
  double ns = 0;
};

void time_stacks(usprobe_hit *hit, void *user) {
  auto *t = static_cast<Timing *>(user);
  uint64_t ips[64];
  usprobe_hit_stack(hit, ips, t->max, t->flags);  // warm: caches, first-use work
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < t->rounds; ++i) t->frames = usprobe_hit_stack(hit, ips, t->max, t->flags);
  const auto took = std::chrono::steady_clock::now() - start;
  t->ns = std::chrono::duration<double, std::nano>(took).count() / t->rounds;
}

TEST(HitStack, CostPerStack) {
  struct Case {
    const char *what;
    const Chain &chain;
    unsigned flags;
    size_t max;
    int rounds;
  } cases[] = {
      {"frame pointers, -fno-omit-frame-pointer", kFp, USPROBE_STACK_FP, 64, 200000},
      {"DWARF, -fno-omit-frame-pointer", kFp, 0, 64, 2000},
      {"DWARF, -fomit-frame-pointer", kNoFp, 0, 64, 2000},
      {"DWARF, first 4 frames", kNoFp, 0, 4, 5000},
  };
  for (const Case &k : cases) {
    Timing t{k.flags, k.max, k.rounds};
    usprobe_consumer consumer{time_stacks, &t, nullptr};
    Link inner;
    ASSERT_ATTACHED(inner.attach(loc(k.chain.inner_name), &consumer));
    EXPECT_EQ(stack_test_call(k.chain.outer, kArg), kResult);
    EXPECT_GE(t.frames, 4);
    std::printf("usprobe_hit_stack, %-42s %3d frames: %9.1f ns per stack\n", k.what, t.frames,
                t.ns);
    RecordProperty(k.what, std::to_string(t.ns) + " ns, " + std::to_string(t.frames) + " frames");
  }
}

// The C++ wrapper: the filled part of the buffer, empty on error.
void take_stack_cxx(usprobe_hit *hit, void *user) {
  auto *c = static_cast<Capture *>(user);
  std::span<uint64_t> s = usprobe::hit_stack(hit, c->ips, c->flags);
  c->n = static_cast<int>(s.size());
  c->zero_max = static_cast<int>(usprobe::hit_stack(hit, std::span<uint64_t>(), c->flags).size());
}

TEST(HitStack, CxxWrapper) {
  Capture c;
  auto link = usprobe::attach(loc("stk_nofp_inner"), take_stack_cxx, &c);
  ASSERT_TRUE(link) << link.error().message;
  EXPECT_EQ(stack_test_call(stk_nofp_outer, kArg), kResult);
  expect_full_chain(c, kNoFp, stk_nofp_inner);
  EXPECT_EQ(c.zero_max, 0);
}

}  // namespace
