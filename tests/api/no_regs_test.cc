// USPROBE_NO_REGS (usprobe.h): a consumer whose handlers read no register runs on the
// trampolines' fast paths, where a hit builds no register view. What a user notices: every call is
// seen entering and returning, exactly, on the jump and the int3 path; the call's session carries
// what the entry kept to the return; the register readers answer 0 on the fast path and the real
// values beside a consumer without the flag (the full path); a probed function that the handler
// calls counts as missed, as from any handler; and the probed code computes what it computes
// unprobed.
#include <atomic>
#include <cstdint>
#include <string>

#include <gtest/gtest.h>

#include "support/test_link.h"
#include "targets/ret_targets.h"
#include "usprobe/usprobe.h"

namespace {

using usprobe::test::Link;

constexpr unsigned kFast = USPROBE_NO_REGS | USPROBE_GENERAL_REGS_ONLY;

// A sanitized build of the library has no fast paths (its trampolines save everything on every
// hit: src/arch/x86_64/trampoline.cc), and its handlers see the registers.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kFastPaths = false;
#else
constexpr bool kFastPaths = true;
#endif

std::string loc(const char *symbol) {
  return std::string("libusprobe_targets.so:") + symbol;
}

// What the handlers saw (user = a Seen).
struct Seen {
  std::atomic<uint64_t> entries{0};
  std::atomic<uint64_t> returns{0};
  std::atomic<uint64_t> kept_sum{0};  // the sessions' words, as the returns found them
  std::atomic<uint64_t> arg_sum{0};   // usprobe_arg(hit, 0) at the entries
  std::atomic<uint64_t> retval_sum{0};
  std::atomic<uint64_t> calls_made{0};  // the handler's own call of a probed function
  bool call_probed = false;
};

void on_entry(usprobe_hit *hit, void *user) {
  auto *s = static_cast<Seen *>(user);
  const uint64_t n = s->entries.fetch_add(1, std::memory_order_relaxed) + 1;
  if (uint64_t *session = usprobe_session(hit)) session[0] = n;
  s->arg_sum.fetch_add(usprobe_arg(hit, 0), std::memory_order_relaxed);
  if (s->call_probed) s->calls_made.fetch_add(ret_leaf(1) == 2, std::memory_order_relaxed);
}
void on_return(usprobe_hit *hit, void *user) {
  auto *s = static_cast<Seen *>(user);
  s->returns.fetch_add(1, std::memory_order_relaxed);
  if (const uint64_t *session = usprobe_session(hit))
    s->kept_sum.fetch_add(session[0], std::memory_order_relaxed);
  s->retval_sum.fetch_add(usprobe_retval(hit), std::memory_order_relaxed);
}

// ret_int(x) = 3x + 1 for x = 0 .. n - 1: the arguments sum to n(n-1)/2, the results to
// 3n(n-1)/2 + n, and the sessions, numbered 1 .. n by the entries, to n(n+1)/2.
struct Sums {
  uint64_t args, results, sessions;
};
Sums expected(uint64_t n) {
  return {n * (n - 1) / 2, 3 * n * (n - 1) / 2 + n, n * (n + 1) / 2};
}
uint64_t call_ret_int(uint64_t n) {
  uint64_t sum = 0;
  for (uint64_t x = 0; x < n; ++x) sum += static_cast<uint64_t>(ret_int(static_cast<long>(x)));
  return sum;
}

constexpr uint64_t kCalls = 100000;

TEST(NoRegs, FastPathSeesEveryCallAndCarriesTheSessionWithoutRegisters) {
  Seen seen;
  usprobe_consumer c{on_entry, &seen, on_return};
  Link link;
  ASSERT_ATTACHED(link.attach(loc("ret_int"), &c, kFast));
  ASSERT_FALSE(link.int3()) << link.reason();
  EXPECT_EQ(call_ret_int(kCalls), expected(kCalls).results);  // the code is unchanged
  EXPECT_EQ(seen.entries.load(), kCalls);
  EXPECT_EQ(seen.returns.load(), kCalls);
  EXPECT_EQ(link.hits(), kCalls);
  EXPECT_EQ(link.return_hits(), kCalls);
  EXPECT_EQ(seen.kept_sum.load(), expected(kCalls).sessions);
  // No register view on the fast paths: the readers answer 0.
  EXPECT_EQ(seen.arg_sum.load(), kFastPaths ? 0u : expected(kCalls).args);
  EXPECT_EQ(seen.retval_sum.load(), kFastPaths ? 0u : expected(kCalls).results);
}

// The int3 path enters the same trampoline: its fast path too.
TEST(NoRegs, Int3PathTakesTheFastPathToo) {
  Seen seen;
  usprobe_consumer c{on_entry, &seen, on_return};
  Link link;
  ASSERT_ATTACHED(link.attach(loc("ret_int"), &c, kFast | USPROBE_FORCE_INT3));
  ASSERT_TRUE(link.int3());
  EXPECT_EQ(call_ret_int(kCalls / 10), expected(kCalls / 10).results);
  EXPECT_EQ(seen.entries.load(), kCalls / 10);
  EXPECT_EQ(seen.returns.load(), kCalls / 10);
  EXPECT_EQ(seen.kept_sum.load(), expected(kCalls / 10).sessions);
  EXPECT_EQ(seen.arg_sum.load(), kFastPaths ? 0u : expected(kCalls / 10).args);
}

// Beside a consumer that reads registers, the location takes the full path, and both consumers
// see the registers.
TEST(NoRegs, BesideAConsumerWithRegistersBothSeeThem) {
  Seen fast, full;
  usprobe_consumer cf{on_entry, &fast, on_return}, cr{on_entry, &full, on_return};
  Link a, b;
  ASSERT_ATTACHED(a.attach(loc("ret_int"), &cf, kFast));
  ASSERT_ATTACHED(b.attach(loc("ret_int"), &cr, USPROBE_GENERAL_REGS_ONLY));
  EXPECT_EQ(call_ret_int(kCalls), expected(kCalls).results);
  for (Seen *s : {&fast, &full}) {
    EXPECT_EQ(s->entries.load(), kCalls);
    EXPECT_EQ(s->returns.load(), kCalls);
    EXPECT_EQ(s->arg_sum.load(), expected(kCalls).args);
    EXPECT_EQ(s->retval_sum.load(), expected(kCalls).results);
  }
  // Once the other consumer goes, the fast path is back.
  ASSERT_EQ(b.detach(), 0);
  fast.arg_sum = 0;
  EXPECT_EQ(call_ret_int(kCalls), expected(kCalls).results);
  EXPECT_EQ(fast.entries.load(), 2 * kCalls);
  EXPECT_EQ(fast.arg_sum.load(), kFastPaths ? 0u : expected(kCalls).args);
}

// A probed function called from a fast-path handler counts as missed, not as a hit.
TEST(NoRegs, AProbedCallFromTheHandlerCountsAsMissed) {
  Seen seen;
  seen.call_probed = true;
  usprobe_consumer c{on_entry, &seen, on_return};
  Link outer, inner;
  ASSERT_ATTACHED(outer.attach(loc("ret_int"), &c, kFast));
  ASSERT_ATTACHED(inner.attach(loc("ret_leaf")));  // the built-in counter: the counter path
  EXPECT_EQ(call_ret_int(1000), expected(1000).results);
  EXPECT_EQ(seen.calls_made.load(), 1000u);
  EXPECT_EQ(inner.hits(), 0u);
  EXPECT_EQ(inner.missed(), 1000u);
}

}  // namespace
