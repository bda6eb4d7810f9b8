// Return probes through the public C API (DESIGN.md, "Return probes"), on the compiled C functions
// of ret_targets.h: every call of a recursion is seen returning, exactly; the return registers
// (%rax, %rax:%rdx, %xmm0) are seen by the handler and reach the caller unchanged however the
// handler uses them; per-call sessions; the depth limit of a thread's return stack; and the ways a
// call can end without returning normally (longjmp, a tail call, an exception, pthread_exit,
// exit) or be interrupted (a signal whose handler calls probed functions, on the thread's stack or
// on an alternate stack), and detaching while a call is still pending.
//
// Scenarios that may crash, or that change process-wide settings (the return depth), run in a
// child process: this test binary started again with USPROBE_RETURN_PROBES_CHILD=<name>
// (tests/support/child_process.h). A child reports each failed expectation on stderr (it shows in
// the test log) and exits with status 1; 3 means an attach failed.
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cinttypes>
#include <cmath>
#include <csetjmp>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>
#include <setjmp.h>

#include "support/child_process.h"
#include "support/test_link.h"
#include "targets/ret_targets.h"
#include "targets/targets.h"
#include "usprobe/usprobe.h"

namespace {

constexpr const char *kLib = "libusprobe_targets.so";
constexpr const char *kChildEnv = "USPROBE_RETURN_PROBES_CHILD";

std::string loc(const char *symbol) {
  return std::string(kLib) + ":" + symbol;
}
std::string uretprobe(const char *symbol) {
  return "uretprobe:" + loc(symbol);
}

std::string run_in_child(const char *name, std::chrono::seconds limit = std::chrono::seconds(60)) {
  return usprobe::test::run_in_child(kChildEnv, name, limit);
}

// fib(n) and the number of calls ret_fib(n) makes: calls(n) = 1 + calls(n-1) + calls(n-2), with
// calls(0) = calls(1) = 1, which is 2 * fib(n + 1) - 1.
constexpr long fib(long n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}
constexpr uint64_t fib_calls(long n) {
  return static_cast<uint64_t>(2 * fib(n + 1) - 1);
}
static_assert(fib(20) == 6765 && fib_calls(20) == 21891);

using Bytes = std::array<uint8_t, 16>;
template <typename F>
Bytes code_bytes(F *fn) {
  Bytes b;
  std::memcpy(b.data(), reinterpret_cast<const void *>(fn), b.size());
  return b;
}

using usprobe::test::Link;

// ---- Handlers -----------------------------------------------------------------------------------

// Entries and returns seen by a consumer's callbacks (user = a Counts), from any thread.
struct Counts {
  std::atomic<uint64_t> entries{0};
  std::atomic<uint64_t> returns{0};
};
void count_entry(usprobe_hit *, void *user) {
  static_cast<Counts *>(user)->entries.fetch_add(1, std::memory_order_relaxed);
}
void count_return(usprobe_hit *, void *user) {
  static_cast<Counts *>(user)->returns.fetch_add(1, std::memory_order_relaxed);
}
usprobe_consumer counting(Counts *c) {
  return usprobe_consumer{count_entry, c, count_return};
}

// The return registers a return handler saw last (user = a Seen). The handler then uses the same
// registers for its own work: double arithmetic and a libc call that formats a double (%xmm0-...
// and %rax, %rdx, ... all change), so a trampoline that does not save them hands the caller junk.
struct Seen {
  std::atomic<uint64_t> returns{0};
  std::atomic<uint64_t> rax{0};
  std::atomic<uint64_t> rdx{0};
  std::atomic<double> xmm0{0};
  std::atomic<size_t> scribbled{0};
};
void see_and_dirty(usprobe_hit *hit, void *user) {
  auto *s = static_cast<Seen *>(user);
  s->rax.store(usprobe_retval(hit), std::memory_order_relaxed);
  s->rdx.store(usprobe_retval_high(hit), std::memory_order_relaxed);
  const double d = usprobe_retval_double(hit);
  s->xmm0.store(d, std::memory_order_relaxed);
  volatile double noise = d * 1.75 - 3.25;
  char buf[128];
  int n = std::snprintf(buf, sizeof buf, "%.6f %g %e %p", noise, std::sqrt(std::fabs(noise) + 2.0),
                        noise / 7.0, static_cast<void *>(buf));
  s->scribbled.fetch_add(static_cast<size_t>(n), std::memory_order_relaxed);
  s->returns.fetch_add(1, std::memory_order_relaxed);
}
usprobe_consumer seeing(Seen *s) {
  return usprobe_consumer{nullptr, s, see_and_dirty};
}

// ---- In a child process -------------------------------------------------------------------------

// A child scenario's expectations: each failure goes to stderr, and the status says whether any
// failed.
struct Checks {
  int failures = 0;
  __attribute__((format(printf, 3, 4))) void expect(bool ok, const char *fmt, ...) {
    if (ok) return;
    ++failures;
    va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "FAILED: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n");
    va_end(ap);
  }
  int status() const { return failures == 0 ? 0 : 1; }
};

usprobe_link *attach_or_report(const std::string &where, const usprobe_consumer *c) {
  usprobe_link *link = nullptr;
  int rc = usprobe_attach(where.c_str(), c, &link);
  if (rc != 0) {
    std::fprintf(stderr, "usprobe_attach(%s): %s: %s\n", where.c_str(), usprobe_strerror(rc),
                 usprobe_last_error());
    return nullptr;
  }
  return link;
}

// ---- Counting -----------------------------------------------------------------------------------

// ret_fib(20) calls itself 21891 times; each call is seen entering and seen returning, by the
// consumer's callbacks and by the link's counters, and the result is still fib(20).
TEST(ReturnProbes, EveryCallOfARecursionIsSeenEnteringAndReturning) {
  Counts counts;
  const usprobe_consumer c = counting(&counts);
  Link link;
  ASSERT_ATTACHED(link.attach(loc("ret_fib"), &c));
  EXPECT_EQ(ret_fib(20), 6765);
  EXPECT_EQ(counts.entries.load(), fib_calls(20));
  EXPECT_EQ(counts.returns.load(), fib_calls(20));
  EXPECT_EQ(link.hits(), fib_calls(20));
  EXPECT_EQ(link.return_hits(), fib_calls(20));
  EXPECT_EQ(link.missed(), 0u);
}

// "uretprobe:" with no consumer: the built-in counter counts returns.
TEST(ReturnProbes, UretprobePrefixWithoutConsumerCountsReturns) {
  Link fib_link, leaf_link;
  ASSERT_ATTACHED(fib_link.attach(uretprobe("ret_fib")));
  ASSERT_ATTACHED(leaf_link.attach(uretprobe("ret_leaf")));
  EXPECT_EQ(ret_fib(20), 6765);
  long wrong = 0;
  for (long i = 0; i < 1000; ++i) wrong += ret_leaf(i) != i + 1;
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(fib_link.return_hits(), fib_calls(20));
  EXPECT_EQ(leaf_link.return_hits(), 1000u);
}

// An entry-only link and a return link on one function share its patch and count independently;
// the entry-only link sees no returns, and detaching the return link leaves the entry link
// counting.
TEST(ReturnProbes, EntryLinkAndReturnLinkOnOneFunctionCountIndependently) {
  Link entry, ret;
  ASSERT_ATTACHED(entry.attach(loc("ret_leaf")));
  ASSERT_ATTACHED(ret.attach(uretprobe("ret_leaf")));
  for (long i = 0; i < 100; ++i) ASSERT_EQ(ret_leaf(i), i + 1);
  EXPECT_EQ(entry.hits(), 100u);
  EXPECT_EQ(entry.return_hits(), 0u);
  EXPECT_EQ(ret.return_hits(), 100u);
  ASSERT_EQ(ret.detach(), 0);
  for (long i = 0; i < 100; ++i) ASSERT_EQ(ret_leaf(i), i + 1);
  EXPECT_EQ(entry.hits(), 200u);
}

// Four threads, each making its own calls at once: the counts are exact.
TEST(ReturnProbes, ReturnsOfFourThreadsAreCountedExactly) {
  constexpr long kCalls = 20000;
  constexpr long kFibN = 12;
  Counts counts;
  const usprobe_consumer c{nullptr, &counts, count_return};  // no entry handler
  Link int_link, fib_link;
  ASSERT_ATTACHED(int_link.attach(loc("ret_int"), &c));
  ASSERT_ATTACHED(fib_link.attach(uretprobe("ret_fib")));
  std::atomic<long> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&wrong, t] {
      for (long i = 0; i < kCalls; ++i)
        if (ret_int(i * 4 + t) != (i * 4 + t) * 3 + 1) wrong.fetch_add(1);
      if (ret_fib(kFibN) != fib(kFibN)) wrong.fetch_add(1);
    });
  for (auto &th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(counts.returns.load(), 4u * kCalls);
  EXPECT_EQ(int_link.hits(), 4u * kCalls);
  EXPECT_EQ(int_link.return_hits(), 4u * kCalls);
  EXPECT_EQ(fib_link.return_hits(), 4 * fib_calls(kFibN));
}

// ---- Return values ------------------------------------------------------------------------------

// The handler sees %rax, %rax:%rdx and %xmm0 as the function returned them; the handler then
// dirties those registers itself, and the caller still gets exactly what the function returned.
TEST(ReturnProbes, ReturnValuesAreSeenAndReachTheCallerUnchanged) {
  Seen s_int, s_ptr, s_pair, s_double;
  const usprobe_consumer c_int = seeing(&s_int), c_ptr = seeing(&s_ptr), c_pair = seeing(&s_pair),
                         c_double = seeing(&s_double);
  Link l_int, l_ptr, l_pair, l_double;
  ASSERT_ATTACHED(l_int.attach(loc("ret_int"), &c_int));
  ASSERT_ATTACHED(l_ptr.attach(loc("ret_ptr"), &c_ptr));
  ASSERT_ATTACHED(l_pair.attach(loc("ret_pair"), &c_pair));
  ASSERT_ATTACHED(l_double.attach(loc("ret_double"), &c_double));

  static char buffer[256];
  for (long x = -50; x < 50; ++x) {
    SCOPED_TRACE(x);
    const long i = ret_int(x);
    EXPECT_EQ(i, x * 3 + 1);
    EXPECT_EQ(s_int.rax.load(), static_cast<uint64_t>(x * 3 + 1));

    char *p = &buffer[x + 50];
    void *q = ret_ptr(p);
    EXPECT_EQ(q, p + 8);
    EXPECT_EQ(s_ptr.rax.load(), reinterpret_cast<uint64_t>(p + 8));

    const ret_two pair = ret_pair(x, 1000 + x);
    EXPECT_EQ(pair.a, 2 * x + 1000);
    EXPECT_EQ(pair.b, -1000);
    EXPECT_EQ(s_pair.rax.load(), static_cast<uint64_t>(2 * x + 1000));
    EXPECT_EQ(s_pair.rdx.load(), static_cast<uint64_t>(-1000l));

    const double d = ret_double(static_cast<double>(x) * 0.5);  // exact: x * 1.25
    EXPECT_EQ(d, static_cast<double>(x) * 1.25);
    EXPECT_EQ(s_double.xmm0.load(), static_cast<double>(x) * 1.25);
  }
  EXPECT_EQ(s_int.returns.load(), 100u);
  EXPECT_EQ(s_ptr.returns.load(), 100u);
  EXPECT_EQ(s_pair.returns.load(), 100u);
  EXPECT_EQ(s_double.returns.load(), 100u);
  EXPECT_GT(s_double.scribbled.load(), 0u);
}

// ---- Sessions -----------------------------------------------------------------------------------

// Checks that each call's session comes back to that call's return: the entry handler finds the
// session zeroed and writes the argument and a sequence number; the return handler finds the
// sequence number of the innermost pending call and the result that belongs to the argument.
// Single-threaded.
struct SessionCheck {
  std::vector<uint64_t> pending;  // sequence numbers of the calls not yet returned, innermost last
  uint64_t next_seq = 1;
  uint64_t entries = 0, returns = 0, problems = 0;
  std::string first_problem;
  void problem(const std::string &what) {
    if (problems++ == 0) first_problem = what;
  }
};
constexpr unsigned kLast = USPROBE_SESSION_WORDS - 1;
// What the entry of call #seq writes into session word w (1 <= w < kLast): every word is checked.
uint64_t session_pattern(uint64_t seq, unsigned w) {
  return seq * 0x9e3779b97f4a7c15ull + w;
}
void session_fib_entry(usprobe_hit *hit, void *user) {
  auto *s = static_cast<SessionCheck *>(user);
  ++s->entries;
  uint64_t *session = usprobe_session(hit);
  if (!session) return s->problem("entry: usprobe_session() is NULL");
  for (unsigned w = 0; w < USPROBE_SESSION_WORDS; ++w)
    if (session[w] != 0)
      s->problem(usprobe::test::strf("entry: session word %u not zero: %#" PRIx64, w, session[w]));
  session[0] = usprobe_arg(hit, 0);
  session[kLast] = s->next_seq;
  for (unsigned w = 1; w < kLast; ++w) session[w] = session_pattern(s->next_seq, w);
  s->pending.push_back(s->next_seq++);  // reserved: no allocation here
}
void session_fib_return(usprobe_hit *hit, void *user) {
  auto *s = static_cast<SessionCheck *>(user);
  ++s->returns;
  uint64_t *session = usprobe_session(hit);
  if (!session) return s->problem("return: usprobe_session() is NULL");
  if (s->pending.empty()) return s->problem("return: no call pending");
  if (session[kLast] != s->pending.back())
    s->problem(usprobe::test::strf("return: session of call #%" PRIu64 ", expected #%" PRIu64,
                                   session[kLast], s->pending.back()));
  for (unsigned w = 1; w < kLast; ++w)
    if (session[w] != session_pattern(s->pending.back(), w))
      s->problem(usprobe::test::strf("return: session word %u of call #%" PRIu64 " changed", w,
                                     s->pending.back()));
  s->pending.pop_back();
  const long n = static_cast<long>(session[0]);
  if (n < 0 || n > 20 || usprobe_retval(hit) != static_cast<uint64_t>(fib(n)))
    s->problem(usprobe::test::strf("return: session says ret_fib(%ld), result %" PRIu64, n,
                                   usprobe_retval(hit)));
}

// Each call of a recursion, nested ones included, gets its own session.
TEST(ReturnProbes, EachCallGetsItsOwnSessionThroughRecursion) {
  SessionCheck s;
  s.pending.reserve(64);
  const usprobe_consumer c{session_fib_entry, &s, session_fib_return};
  Link link;
  ASSERT_ATTACHED(link.attach(loc("ret_fib"), &c));
  EXPECT_EQ(ret_fib(15), fib(15));
  EXPECT_EQ(s.entries, fib_calls(15));
  EXPECT_EQ(s.returns, fib_calls(15));
  EXPECT_EQ(s.problems, 0u) << s.first_problem;
  EXPECT_TRUE(s.pending.empty());
}

// Two consumers of one probe each have their own session.
struct Tagged {
  uint64_t tag;
  std::atomic<uint64_t> returns{0}, mismatches{0};
};
void tag_entry(usprobe_hit *hit, void *user) {
  auto *t = static_cast<Tagged *>(user);
  if (uint64_t *s = usprobe_session(hit)) {
    s[0] = t->tag;
    s[1] = usprobe_arg(hit, 0) ^ t->tag;
  }
}
void tag_return(usprobe_hit *hit, void *user) {
  auto *t = static_cast<Tagged *>(user);
  t->returns.fetch_add(1);
  uint64_t *s = usprobe_session(hit);
  const uint64_t arg = (usprobe_retval(hit) - 1) / 3;  // ret_int: x * 3 + 1
  if (!s || s[0] != t->tag || (s[1] ^ t->tag) != arg) t->mismatches.fetch_add(1);
}

TEST(ReturnProbes, SessionsArePrivateToTheirConsumer) {
  Tagged a{0xaaaa0000aaaa0000}, b{0xbbbb0000bbbb0000};
  const usprobe_consumer ca{tag_entry, &a, tag_return}, cb{tag_entry, &b, tag_return};
  Link la, lb;
  ASSERT_ATTACHED(la.attach(loc("ret_int"), &ca));
  ASSERT_ATTACHED(lb.attach(loc("ret_int"), &cb));
  for (long x = 0; x < 500; ++x) ASSERT_EQ(ret_int(x), x * 3 + 1);
  EXPECT_EQ(a.returns.load(), 500u);
  EXPECT_EQ(b.returns.load(), 500u);
  EXPECT_EQ(a.mismatches.load(), 0u);
  EXPECT_EQ(b.mismatches.load(), 0u);
}

// usprobe_session_skip_return() in the entry handler: the return handler runs for that call only
// if it was not skipped, here for the odd arguments only; the other consumer of the same probe is
// not affected.
struct Skipper {
  std::atomic<uint64_t> entries{0}, returns{0}, wrong{0};
};
void skip_even_entry(usprobe_hit *hit, void *user) {
  static_cast<Skipper *>(user)->entries.fetch_add(1);
  const uint64_t x = usprobe_arg(hit, 0);
  if (uint64_t *s = usprobe_session(hit)) {
    // Zero at entry: nothing left over from the previous call's instance.
    for (int i = 0; i < USPROBE_SESSION_WORDS; ++i)
      if (s[i] != 0) static_cast<Skipper *>(user)->wrong.fetch_add(1);
    s[0] = x;
    s[USPROBE_SESSION_WORDS - 1] = ~x;
  }
  if (x % 2 == 0) usprobe_session_skip_return(hit);
}
void skip_even_return(usprobe_hit *hit, void *user) {
  auto *k = static_cast<Skipper *>(user);
  k->returns.fetch_add(1);
  uint64_t *s = usprobe_session(hit);
  if (!s || s[0] % 2 == 0 || usprobe_retval(hit) != s[0] * 3 + 1) k->wrong.fetch_add(1);
}

TEST(ReturnProbes, SkipReturnFromTheEntryHandlerSkipsThatCallsReturnHandler) {
  Skipper k;
  Counts other;
  const usprobe_consumer c{skip_even_entry, &k, skip_even_return};
  const usprobe_consumer c_other = counting(&other);
  Link link, link_other;
  ASSERT_ATTACHED(link.attach(loc("ret_int"), &c));
  ASSERT_ATTACHED(link_other.attach(loc("ret_int"), &c_other));
  for (long x = 0; x < 1000; ++x) ASSERT_EQ(ret_int(x), x * 3 + 1);
  EXPECT_EQ(k.entries.load(), 1000u);
  EXPECT_EQ(k.returns.load(), 500u);
  EXPECT_EQ(k.wrong.load(), 0u);
  EXPECT_EQ(other.returns.load(), 1000u);
}

// The same consumer alone at its probe: the engine's path for one entry handler and one return
// probe (ConsumerArray::simple_handlers) skips and zeroes the same way.
TEST(ReturnProbes, SkipReturnOfTheProbesOnlyConsumer) {
  Skipper k;
  const usprobe_consumer c{skip_even_entry, &k, skip_even_return};
  Link link;
  ASSERT_ATTACHED(link.attach(loc("ret_int"), &c));
  for (long x = 0; x < 1000; ++x) ASSERT_EQ(ret_int(x), x * 3 + 1);
  EXPECT_EQ(k.entries.load(), 1000u);
  EXPECT_EQ(k.returns.load(), 500u);
  EXPECT_EQ(k.wrong.load(), 0u);
  EXPECT_EQ(link.hits(), 1000u);
}

// A consumer without a return handler has no session.
std::atomic<uint64_t> g_non_null_sessions{0};
void entry_asks_for_session(usprobe_hit *hit, void *) {
  if (usprobe_session(hit) != nullptr) g_non_null_sessions.fetch_add(1);
}

TEST(ReturnProbes, SessionIsNullWithoutAReturnProbe) {
  const usprobe_consumer c{entry_asks_for_session, nullptr, nullptr};
  Link link;
  ASSERT_ATTACHED(link.attach(loc("ret_leaf"), &c));
  for (long i = 0; i < 10; ++i) ASSERT_EQ(ret_leaf(i), i + 1);
  EXPECT_EQ(link.hits(), 10u);
  EXPECT_EQ(g_non_null_sessions.load(), 0u);
}

// ---- Depth of the return stack ------------------------------------------------------------------

// In a fresh thread (the depth is fixed at a thread's first hit): ret_depth(n) with every call
// pending at once.
struct DepthRun {
  long result;
  uint64_t hits, returns, missed;
};
DepthRun run_depth_in_fresh_thread(usprobe_link *link, long n) {
  const uint64_t h = usprobe_link_hits(link), r = usprobe_link_return_hits(link),
                 m = usprobe_link_missed(link);
  long result = 0;
  std::thread([&] { result = ret_depth(n); }).join();
  return {result, usprobe_link_hits(link) - h, usprobe_link_return_hits(link) - r,
          usprobe_link_missed(link) - m};
}

int depth_limit() {
  Checks ck;
  Counts counts;
  const usprobe_consumer c = counting(&counts);
  usprobe_link *link = attach_or_report(loc("ret_depth"), &c);
  if (!link) return 3;
  struct Step {
    unsigned set_depth;  // 0: the default
    long n;
    uint64_t returns;
  };
  for (const Step &step : {Step{0, 100, 64}, Step{80, 100, 80}, Step{1024, 1000, 1000}}) {
    if (step.set_depth) {
      int rc = usprobe_set_return_depth(step.set_depth);
      ck.expect(rc == 0, "usprobe_set_return_depth(%u) = %d: %s", step.set_depth, rc,
                usprobe_last_error());
    }
    const uint64_t returns_before = counts.returns.load();
    const DepthRun run = run_depth_in_fresh_thread(link, step.n);
    const uint64_t callbacks = counts.returns.load() - returns_before;
    std::printf("depth %u: ret_depth(%ld) = %ld, %" PRIu64 " hits, %" PRIu64 " returns (%" PRIu64
                " callbacks), %" PRIu64 " missed\n",
                step.set_depth ? step.set_depth : 64, step.n, run.result, run.hits, run.returns,
                callbacks, run.missed);
    ck.expect(run.result == step.n, "result %ld", run.result);
    ck.expect(run.hits == static_cast<uint64_t>(step.n), "hits %" PRIu64, run.hits);
    ck.expect(run.returns == step.returns, "returns %" PRIu64 ", expected %" PRIu64, run.returns,
              step.returns);
    ck.expect(callbacks == step.returns, "return callbacks %" PRIu64, callbacks);
    ck.expect(run.missed == static_cast<uint64_t>(step.n) - step.returns,
              "missed %" PRIu64 ", expected %" PRIu64, run.missed,
              static_cast<uint64_t>(step.n) - step.returns);
  }
  int rc = usprobe_set_return_depth(1025);
  ck.expect(rc < 0, "usprobe_set_return_depth(1025) = %d, expected a negative errno", rc);
  usprobe_detach(link);
  return ck.status();
}

// 64 calls pending by default; deeper calls run no return handler and count as missed, and the
// function still works. usprobe_set_return_depth() changes that for threads started afterwards
// (up to 1024; more is refused).
TEST(ReturnProbes, DeeperCallsThanTheReturnDepthAreMissedNotBroken) {
  EXPECT_EQ(run_in_child("depth-limit"), "");
}

// ---- Calls that do not return normally ----------------------------------------------------------

// Calls ret_jump_outer(n) for an odd n: ret_jump_inner longjmps back here, past all three.
__attribute__((noinline)) long leave_by_longjmp(long n) {
  jmp_buf env;
  int v = setjmp(env);
  if (v == 0) {
    ret_jump_outer(&env, n);
    return -1;  // not reached
  }
  return v;
}

// `rounds` rounds of a call chain left by longjmp and one that returns; the wrong results.
long longjmp_rounds(long rounds) {
  long wrong = 0;
  jmp_buf unused;
  for (long i = 0; i < rounds; ++i) {
    if (leave_by_longjmp(2 * i + 1) != 2 * i + 1) ++wrong;
    if (ret_jump_outer(&unused, 2 * i) != 2 * i + 111) ++wrong;
  }
  return wrong;
}

int longjmp_out() {
  Checks ck;
  Counts outer, mid, inner;
  const usprobe_consumer c_outer = counting(&outer), c_mid = counting(&mid),
                         c_inner = counting(&inner);
  usprobe_link *l_outer = attach_or_report(loc("ret_jump_outer"), &c_outer);
  usprobe_link *l_mid = attach_or_report(loc("ret_jump_mid"), &c_mid);
  usprobe_link *l_inner = attach_or_report(loc("ret_jump_inner"), &c_inner);
  if (!l_outer || !l_mid || !l_inner) return 3;
  constexpr long kRounds = 1000;
  const long wrong = longjmp_rounds(kRounds);
  std::printf(
      "%ld rounds: outer %" PRIu64 "/%" PRIu64 ", mid %" PRIu64 "/%" PRIu64 ", inner %" PRIu64
      "/%" PRIu64 " entries/returns; missed %" PRIu64 "\n",
      kRounds, outer.entries.load(), outer.returns.load(), mid.entries.load(), mid.returns.load(),
      inner.entries.load(), inner.returns.load(),
      usprobe_link_missed(l_outer) + usprobe_link_missed(l_mid) + usprobe_link_missed(l_inner));
  ck.expect(wrong == 0, "%ld wrong results", wrong);
  for (auto [name, counts, link] :
       {std::tuple{"outer", &outer, l_outer}, std::tuple{"mid", &mid, l_mid},
        std::tuple{"inner", &inner, l_inner}}) {
    ck.expect(counts->entries.load() == 2 * kRounds, "%s: %" PRIu64 " entries", name,
              counts->entries.load());
    ck.expect(counts->returns.load() == kRounds, "%s: %" PRIu64 " returns, expected %ld", name,
              counts->returns.load(), kRounds);
    ck.expect(usprobe_link_return_hits(link) == kRounds, "%s: link: %" PRIu64 " returns", name,
              usprobe_link_return_hits(link));
  }
  usprobe_detach(l_outer);
  usprobe_detach(l_mid);
  usprobe_detach(l_inner);
  return ck.status();
}

// The same with built-in counters, which the return counter path counts in the trampolines
// (arch/x86_64/trampoline.cc): its instances hold no sessions, and dropping them counts the miss
// at the slot that the C++ path works out from them. Each entry is a hit; only normal returns
// count; the abandoned instances are dropped as misses when a full stack makes room, so at most
// the 63 still pending at the end (21 rounds' worth) are not counted yet.
int longjmp_out_counted() {
  Checks ck;
  const char *names[] = {"ret_jump_outer", "ret_jump_mid", "ret_jump_inner"};
  usprobe_link *links[3];
  for (int i = 0; i < 3; ++i)
    if (usprobe_attach(uretprobe(names[i]).c_str(), nullptr, &links[i]) != 0) return 3;
  constexpr long kRounds = 1000;
  const long wrong = longjmp_rounds(kRounds);
  ck.expect(wrong == 0, "%ld wrong results", wrong);
  for (int i = 0; i < 3; ++i) {
    const uint64_t hits = usprobe_link_hits(links[i]), returns = usprobe_link_return_hits(links[i]),
                   missed = usprobe_link_missed(links[i]);
    std::printf("%s: %" PRIu64 " hits, %" PRIu64 " returns, %" PRIu64 " missed\n", names[i], hits,
                returns, missed);
    ck.expect(hits == 2 * kRounds, "%s: %" PRIu64 " hits", names[i], hits);
    ck.expect(returns == kRounds, "%s: %" PRIu64 " returns", names[i], returns);
    ck.expect(missed <= kRounds && missed >= kRounds - 21, "%s: %" PRIu64 " missed", names[i],
              missed);
    usprobe_detach(links[i]);
  }
  return ck.status();
}

// A chain of probed calls left by longjmp never returns: the program goes on correctly, only the
// normal returns are counted, and the abandoned instances are dropped (1000 rounds leave 3000 of
// them: kept, they would fill the 64-deep return stack after 21 rounds). (Whether a dropped
// instance counts in usprobe_link_missed() is not specified; the child prints it.)
TEST(ReturnProbes, LongjmpPastProbedCallsDropsTheirInstances) {
  EXPECT_EQ(run_in_child("longjmp-out"), "");
}

TEST(ReturnProbes, LongjmpPastCountedCallsCountsTheirReturnsAndMisses) {
  EXPECT_EQ(run_in_child("longjmp-out-counted"), "");
}

// ret_tail ends with `jmp ret_leaf`: ret_leaf returns straight to ret_tail's caller, through the
// return address that ret_tail's probe already replaced.
int tail_call() {
  Checks ck;
  Seen tail, leaf;
  const usprobe_consumer c_tail = seeing(&tail), c_leaf = seeing(&leaf);
  usprobe_link *l_tail = attach_or_report(loc("ret_tail"), &c_tail);
  usprobe_link *l_leaf = attach_or_report(loc("ret_leaf"), &c_leaf);
  if (!l_tail || !l_leaf) return 3;
  long wrong = 0, wrong_seen = 0;
  for (long x = 0; x < 1000; ++x) {
    if (ret_tail(x) != 2 * x + 1) ++wrong;
    if (tail.rax.load() != static_cast<uint64_t>(2 * x + 1) ||
        leaf.rax.load() != static_cast<uint64_t>(2 * x + 1))
      ++wrong_seen;
  }
  std::printf("1000 calls of ret_tail: %" PRIu64 " ret_tail returns, %" PRIu64
              " ret_leaf returns\n",
              tail.returns.load(), leaf.returns.load());
  ck.expect(wrong == 0, "%ld wrong results", wrong);
  ck.expect(wrong_seen == 0, "%ld calls with a wrong return value seen", wrong_seen);
  ck.expect(tail.returns.load() == 1000, "ret_tail: %" PRIu64 " returns", tail.returns.load());
  ck.expect(leaf.returns.load() == 1000, "ret_leaf: %" PRIu64 " returns", leaf.returns.load());
  usprobe_detach(l_tail);
  usprobe_detach(l_leaf);
  return ck.status();
}

// The same with built-in counters: two instances share the caller's slot, and each return path
// returns through the other's landing.
TEST(ReturnProbes, TailCallBetweenCountedFunctionsCountsBothReturns) {
  Link tail, leaf;
  ASSERT_ATTACHED(tail.attach(uretprobe("ret_tail")));
  ASSERT_ATTACHED(leaf.attach(uretprobe("ret_leaf")));
  long wrong = 0;
  for (long x = 0; x < 1000; ++x) wrong += ret_tail(x) != 2 * x + 1;
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(tail.hits(), 1000u);
  EXPECT_EQ(tail.return_hits(), 1000u);
  EXPECT_EQ(leaf.hits(), 1000u);
  EXPECT_EQ(leaf.return_hits(), 1000u);
  EXPECT_EQ(tail.missed() + leaf.missed(), 0u);
}

// A tail call from a probed function into another: both are seen returning (once, with the
// value), and the caller gets its result.
TEST(ReturnProbes, TailCallFromOneProbedFunctionToAnotherReturnsThroughBoth) {
  EXPECT_EQ(run_in_child("tail-call"), "");
}

long plus_one(long x) {
  return x + 1;
}
long throw_runtime_error(long x) {
  throw std::runtime_error("thrown with " + std::to_string(x));
}

int exception_through() {
  Checks ck;
  Counts counts;
  const usprobe_consumer c = counting(&counts);
  usprobe_link *link = attach_or_report(loc("ret_call"), &c);
  if (!link) return 3;
  constexpr long kRounds = 200;
  long caught = 0, wrong = 0;
  for (long i = 0; i < kRounds; ++i) {
    try {
      ret_call(throw_runtime_error, i);
    } catch (const std::runtime_error &e) {
      if (e.what() == "thrown with " + std::to_string(i)) ++caught;
    }
    if (ret_call(plus_one, i) != i + 2) ++wrong;
  }
  ck.expect(caught == kRounds, "%ld of %ld exceptions caught", caught, kRounds);
  ck.expect(wrong == 0, "%ld wrong results", wrong);
  ck.expect(counts.entries.load() == 2 * kRounds, "%" PRIu64 " entries", counts.entries.load());
  ck.expect(counts.returns.load() == kRounds, "%" PRIu64 " returns, expected %ld",
            counts.returns.load(), kRounds);
  usprobe_detach(link);
  return ck.status();
}

// A C++ exception thrown through a probed function reaches its catch (the unwinder finds the
// callers: DESIGN.md, "Return probes"); the call is not seen returning, and later calls are.
TEST(ReturnProbes, ExceptionThroughAProbedFunctionReachesItsCatch) {
  EXPECT_EQ(run_in_child("exception-through"), "");
}

long exit_this_thread(long) {
  pthread_exit(nullptr);
}
void *call_and_exit_thread(void *) {
  ret_call(exit_this_thread, 1);
  return reinterpret_cast<void *>(1);  // not reached
}

int thread_exit_pending() {
  Checks ck;
  Counts counts;
  const usprobe_consumer c = counting(&counts);
  usprobe_link *link = attach_or_report(loc("ret_call"), &c);
  if (!link) return 3;
  constexpr int kExiting = 50;
  for (int i = 0; i < kExiting; ++i) {
    pthread_t th;
    if (pthread_create(&th, nullptr, call_and_exit_thread, nullptr) != 0) return 4;
    void *ret = nullptr;
    pthread_join(th, &ret);
    ck.expect(ret == nullptr, "thread %d returned %p, not pthread_exit(NULL)", i, ret);
  }
  ck.expect(counts.entries.load() == kExiting, "%" PRIu64 " entries", counts.entries.load());
  ck.expect(counts.returns.load() == 0, "%" PRIu64 " returns of exited calls",
            counts.returns.load());
  // Later threads (on the stacks and, maybe, the thread records of the exited ones).
  constexpr long kCalls = 1000;
  std::atomic<long> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&wrong] {
      for (long i = 0; i < kCalls; ++i)
        if (ret_call(plus_one, i) != i + 2) wrong.fetch_add(1);
    });
  for (auto &th : threads) th.join();
  ck.expect(wrong.load() == 0, "%ld wrong results", wrong.load());
  ck.expect(counts.returns.load() == 4 * kCalls, "%" PRIu64 " returns, expected %ld",
            counts.returns.load(), 4 * kCalls);
  ck.expect(usprobe_link_return_hits(link) == 4 * kCalls, "link: %" PRIu64 " returns",
            usprobe_link_return_hits(link));
  usprobe_detach(link);
  return ck.status();
}

// Threads that end by pthread_exit() inside a probed function, with its return pending: nothing
// crashes, and the returns of later threads are counted exactly.
TEST(ReturnProbes, ThreadExitingInsideAProbedFunctionLeavesLaterThreadsCounting) {
  EXPECT_EQ(run_in_child("thread-exit-pending"), "");
}

long exit_process_7(long) {
  std::exit(7);
}

int exit_inside() {
  usprobe_link *link = attach_or_report(uretprobe("ret_call"), nullptr);
  if (!link) return 3;
  ret_call(exit_process_7, 0);
  return 1;  // not reached
}

// exit() called inside a probed function (its return pending) ends the process normally, with
// that status: usprobe's and libc's exit handlers run without trouble.
TEST(ReturnProbes, ExitInsideAProbedFunctionEndsTheProcessWithItsStatus) {
  EXPECT_EQ(run_in_child("exit-inside"), "the child exited with status 7");
}

// fork() inside a probed function, its return pending: both processes return through the return
// trampoline with the right value, and each counts the return (the child's copy of the thread's
// return stack is its own).
long fork_and_wait(long x) {
  pid_t pid = fork();
  if (pid == 0) return x * 2;  // the child: returns through ret_call, then exits below
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status) == 0 ? x * 3 : -WEXITSTATUS(status);
}

int fork_pending() {
  Counts counts;
  const usprobe_consumer c = counting(&counts);
  usprobe_link *link = attach_or_report(loc("ret_call"), &c);
  if (!link) return 3;
  const pid_t parent = getpid();
  long r = ret_call(fork_and_wait, 5);  // ret_call returns fn(x) + 1
  if (getpid() != parent) {
    // The child: 5 * 2 + 1, and its one return counted in its own copy of the counters.
    bool ok = r == 11 && counts.returns.load() == 1 && usprobe_link_return_hits(link) == 1;
    std::_Exit(ok ? 0 : 9);
  }
  Checks ck;
  ck.expect(r == 16, "the parent got %ld, expected 16 (the child failed if negative)", r);
  ck.expect(counts.returns.load() == 1, "%" PRIu64 " returns", counts.returns.load());
  usprobe_detach(link);
  return ck.status();
}

TEST(ReturnProbes, ForkWithAReturnPendingReturnsCorrectlyInBothProcesses) {
  EXPECT_EQ(run_in_child("fork-pending"), "");
}

// ---- Signals ------------------------------------------------------------------------------------

std::atomic<long> g_handler_result{0};
void handler_calls_probed_function(int) {
  g_handler_result.store(ret_int(14), std::memory_order_relaxed);  // 43
}
long raise_usr1(long x) {
  raise(SIGUSR1);
  return x * 2;
}

enum class AltStack { none, below, above };  // where the signal stack lies, from the thread's

int signal_reentry(AltStack alt) {
  Checks ck;
  struct sigaction sa {};
  sa.sa_handler = handler_calls_probed_function;
  sa.sa_flags = alt == AltStack::none ? 0 : SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGUSR1, &sa, nullptr) != 0) return 4;
  Seen call_seen, int_seen;
  const usprobe_consumer c_call = seeing(&call_seen), c_int = seeing(&int_seen);
  usprobe_link *l_call = attach_or_report(loc("ret_call"), &c_call);
  usprobe_link *l_int = attach_or_report(loc("ret_int"), &c_int);
  if (!l_call || !l_int) return 3;

  constexpr long kCalls = 100;
  long wrong = 0, wrong_seen = 0;
  auto body = [&] {
    for (long i = 0; i < kCalls; ++i) {
      g_handler_result.store(0);
      if (ret_call(raise_usr1, i) != 2 * i + 1 || g_handler_result.load() != 43) ++wrong;
      if (call_seen.rax.load() != static_cast<uint64_t>(2 * i + 1) || int_seen.rax.load() != 43)
        ++wrong_seen;
    }
  };
  if (alt == AltStack::none) {
    body();
  } else {
    // One mapping, two halves: the thread's stack in one, its signal stack in the other.
    constexpr size_t kHalf = 1 << 20;
    auto *region = static_cast<char *>(mmap(nullptr, 2 * kHalf, PROT_READ | PROT_WRITE,
                                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0));
    if (region == MAP_FAILED) return 4;
    char *thread_stack = alt == AltStack::above ? region : region + kHalf;
    char *signal_stack = alt == AltStack::above ? region + kHalf : region;
    struct Arg {
      decltype(body) *fn;
      char *signal_stack;
      size_t size;
    } arg{&body, signal_stack, kHalf};
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstack(&attr, thread_stack, kHalf);
    pthread_t th;
    auto run = [](void *p) -> void * {
      auto *a = static_cast<Arg *>(p);
      stack_t ss{};
      ss.ss_sp = a->signal_stack;
      ss.ss_size = a->size;
      if (sigaltstack(&ss, nullptr) != 0) return reinterpret_cast<void *>(1);
      (*a->fn)();
      return nullptr;
    };
    if (pthread_create(&th, &attr, run, &arg) != 0) return 4;
    void *ret = nullptr;
    pthread_join(th, &ret);
    pthread_attr_destroy(&attr);
    ck.expect(ret == nullptr, "sigaltstack failed");
  }
  std::printf("%ld calls raising a signal: %" PRIu64 " ret_call returns, %" PRIu64
              " ret_int returns (in the handler)\n",
              kCalls, call_seen.returns.load(), int_seen.returns.load());
  ck.expect(wrong == 0, "%ld wrong results", wrong);
  ck.expect(wrong_seen == 0, "%ld calls with a wrong return value seen", wrong_seen);
  ck.expect(call_seen.returns.load() == kCalls, "ret_call: %" PRIu64 " returns",
            call_seen.returns.load());
  ck.expect(int_seen.returns.load() == kCalls, "ret_int: %" PRIu64 " returns",
            int_seen.returns.load());
  usprobe_detach(l_call);
  usprobe_detach(l_int);
  return ck.status();
}

// A probed function's body takes a signal whose handler calls another probed function: both
// returns are seen, with their values, and both callers get their results.
TEST(ReturnProbes, SignalHandlerCallingAProbedFunctionInsideAnother) {
  EXPECT_EQ(run_in_child("signal-reentry"), "");
}

// The same with the handler on an alternate signal stack, below the thread's stack and above it
// (where the handler's stack pointer is higher than that of the pending call it interrupted, so
// "an older instance with a lower stack pointer was left by longjmp" does not hold).
TEST(ReturnProbes, SignalHandlerOnAnAlternateStackBelowTheThreadStack) {
  EXPECT_EQ(run_in_child("signal-altstack-below"), "");
}
TEST(ReturnProbes, SignalHandlerOnAnAlternateStackAboveTheThreadStack) {
  EXPECT_EQ(run_in_child("signal-altstack-above"), "");
}

// ---- Coroutines ---------------------------------------------------------------------------------

// swapcontext coroutines: a thread with calls pending on several stacks. main calls ret_call, whose
// body switches to a coroutine; the coroutine calls ret_call, whose body switches back; the outer
// call returns while the inner one is still pending on the coroutine's stack (which may lie below
// the thread's: the "left by longjmp" rule must not drop it), then the coroutine is resumed and
// its call returns too.
ucontext_t g_main_ctx, g_co_ctx;
long g_co_result = 0;

long co_yield_to_main(long x) {
  swapcontext(&g_co_ctx, &g_main_ctx);
  return x * 2;
}
long switch_to_coroutine(long x) {
  swapcontext(&g_main_ctx, &g_co_ctx);
  return x * 3;
}
void coroutine_body() {
  g_co_result = ret_call(co_yield_to_main, 10);  // 10 * 2 + 1
}

struct CoStack {
  size_t size = 256 * 1024;
  void *base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ~CoStack() { munmap(base, size); }
};

// Out of line: getcontext returns twice, which would make every local of the caller suspect.
__attribute__((noinline)) void make_coroutine(ucontext_t *ctx, const CoStack &stack,
                                              void (*body)()) {
  getcontext(ctx);
  ctx->uc_stack.ss_sp = stack.base;
  ctx->uc_stack.ss_size = stack.size;
  ctx->uc_link = &g_main_ctx;
  makecontext(ctx, body, 0);
}

int coroutine_rounds(Checks &ck, const CoStack &stack, usprobe_link *link, Counts &counts) {
  constexpr long kRounds = 200;
  long wrong = 0;
  for (long i = 0; i < kRounds; ++i) {
    make_coroutine(&g_co_ctx, stack, coroutine_body);
    g_co_result = 0;
    if (ret_call(switch_to_coroutine, i) != 3 * i + 1) ++wrong;  // the coroutine's call pending
    swapcontext(&g_main_ctx, &g_co_ctx);                         // it returns; the body ends
    if (g_co_result != 21) ++wrong;
  }
  int local = 0;
  std::printf("%ld rounds, coroutine stack at %p, this stack at %p: %" PRIu64 " entries, %" PRIu64
              " returns, %" PRIu64 " missed\n",
              kRounds, stack.base, static_cast<void *>(&local), counts.entries.load(),
              counts.returns.load(), usprobe_link_missed(link));
  ck.expect(wrong == 0, "%ld wrong results", wrong);
  ck.expect(counts.entries.load() == 2 * kRounds, "%" PRIu64 " entries", counts.entries.load());
  ck.expect(counts.returns.load() == 2 * kRounds, "%" PRIu64 " returns, expected %ld",
            counts.returns.load(), 2 * kRounds);
  ck.expect(usprobe_link_missed(link) == 0, "%" PRIu64 " missed", usprobe_link_missed(link));
  return ck.status();
}

// where: the coroutine's stack below this thread's (main thread, stack mapped now) or above it (a
// thread whose stack is mapped after the coroutine's).
int coroutines(bool above) {
  Checks ck;
  Counts counts;
  const usprobe_consumer c = counting(&counts);
  usprobe_link *link = attach_or_report(loc("ret_call"), &c);
  if (!link) return 3;
  CoStack stack;
  if (!above) {
    coroutine_rounds(ck, stack, link, counts);
  } else {
    std::thread([&] { coroutine_rounds(ck, stack, link, counts); }).join();
  }
  usprobe_detach(link);
  return ck.status();
}

TEST(ReturnProbes, CoroutineCallsPendingOnAStackBelowThisOneReturn) {
  EXPECT_EQ(run_in_child("coroutine-below"), "");
}
TEST(ReturnProbes, CoroutineCallsPendingOnAStackAboveThisOneReturn) {
  EXPECT_EQ(run_in_child("coroutine-above"), "");
}

// Eight coroutines, each suspended 13 probed calls deep: 104 pending calls on eight stacks. The
// first 64 fill the return stack and all return when their coroutines resume; the other 40 are
// missed, and none of the pending ones is taken for a frame left by longjmp.
constexpr int kCoroutines = 8;
constexpr long kCoDepth = 12;  // ret_call(co_recurse, 12) makes 13 calls of ret_call
ucontext_t g_cos[kCoroutines];
long g_co_results[kCoroutines];
int g_current_co = 0;

long co_recurse(long x) {
  if (x == 0) {
    swapcontext(&g_cos[g_current_co], &g_main_ctx);
    return 0;
  }
  return ret_call(co_recurse, x - 1);
}
void co_deep_body() {
  const int me = g_current_co;
  g_co_results[me] = ret_call(co_recurse, kCoDepth);
}

int coroutines_fill() {
  Checks ck;
  Counts counts;
  const usprobe_consumer c = counting(&counts);
  usprobe_link *link = attach_or_report(loc("ret_call"), &c);
  if (!link) return 3;
  std::vector<std::unique_ptr<CoStack>> stacks;
  for (int i = 0; i < kCoroutines; ++i) {
    stacks.push_back(std::make_unique<CoStack>());
    make_coroutine(&g_cos[i], *stacks.back(), co_deep_body);
    g_current_co = i;
    swapcontext(&g_main_ctx, &g_cos[i]);  // runs until the bottom of its recursion
  }
  for (int i = 0; i < kCoroutines; ++i) {
    g_current_co = i;
    swapcontext(&g_main_ctx, &g_cos[i]);  // returns all the way up; the body ends
  }
  const uint64_t calls = kCoroutines * (kCoDepth + 1);
  std::printf("%d coroutines %ld calls deep: %" PRIu64 " entries, %" PRIu64 " returns, %" PRIu64
              " missed\n",
              kCoroutines, kCoDepth + 1, counts.entries.load(), counts.returns.load(),
              usprobe_link_missed(link));
  for (int i = 0; i < kCoroutines; ++i)
    ck.expect(g_co_results[i] == kCoDepth + 1, "coroutine %d: %ld", i, g_co_results[i]);
  ck.expect(counts.entries.load() == calls, "%" PRIu64 " entries", counts.entries.load());
  ck.expect(counts.returns.load() == 64, "%" PRIu64 " returns, expected 64", counts.returns.load());
  ck.expect(usprobe_link_missed(link) == calls - 64, "%" PRIu64 " missed, expected %" PRIu64,
            usprobe_link_missed(link), calls - 64);
  usprobe_detach(link);
  return ck.status();
}

TEST(ReturnProbes, CoroutinesFillingTheReturnStackMissCallsAndLoseNone) {
  EXPECT_EQ(run_in_child("coroutines-fill"), "");
}

// ---- Handlers that call probed functions ----------------------------------------------------

std::atomic<long> g_leaf_from_handler{0};
void return_handler_calls_leaf(usprobe_hit *hit, void *) {
  g_leaf_from_handler.store(ret_leaf(static_cast<long>(usprobe_retval(hit))));
}

int handler_calls_probed() {
  Checks ck;
  const usprobe_consumer c_int{nullptr, nullptr, return_handler_calls_leaf};
  Counts leaf;
  const usprobe_consumer c_leaf = counting(&leaf);
  usprobe_link *l_int = attach_or_report(loc("ret_int"), &c_int);
  usprobe_link *l_leaf = attach_or_report(loc("ret_leaf"), &c_leaf);
  if (!l_int || !l_leaf) return 3;
  long wrong = 0;
  for (long x = 0; x < 100; ++x)
    if (ret_int(x) != 3 * x + 1 || g_leaf_from_handler.load() != 3 * x + 2) ++wrong;
  ck.expect(wrong == 0, "%ld wrong results", wrong);
  ck.expect(usprobe_link_return_hits(l_int) == 100, "ret_int: %" PRIu64 " returns",
            usprobe_link_return_hits(l_int));
  ck.expect(usprobe_link_missed(l_leaf) == 100, "ret_leaf: %" PRIu64 " missed, expected 100",
            usprobe_link_missed(l_leaf));
  ck.expect(leaf.entries.load() == 0 && leaf.returns.load() == 0,
            "ret_leaf's handlers ran from a return handler: %" PRIu64 " entries, %" PRIu64
            " returns",
            leaf.entries.load(), leaf.returns.load());
  usprobe_detach(l_int);
  usprobe_detach(l_leaf);
  return ck.status();
}

// A return handler that calls a probed function does not recurse: that call is counted as missed
// and runs no handler, entry or return, and the handler gets its result.
TEST(ReturnProbes, ProbedFunctionCalledFromAReturnHandlerIsMissedNotRecursed) {
  EXPECT_EQ(run_in_child("handler-calls-probed"), "");
}

// ---- Detaching ----------------------------------------------------------------------------------

// After the calls have returned: the code is restored exactly, and calls are no longer counted.
TEST(ReturnProbes, DetachAfterTheCallsReturnedRestoresTheCodeAndStopsCounting) {
  const Bytes before = code_bytes(ret_fib);
  Counts counts;
  const usprobe_consumer c = counting(&counts);
  Link link;
  ASSERT_ATTACHED(link.attach(loc("ret_fib"), &c));
  EXPECT_NE(code_bytes(ret_fib), before) << "not patched while attached";
  EXPECT_EQ(ret_fib(10), 55);
  EXPECT_EQ(counts.returns.load(), fib_calls(10));
  ASSERT_EQ(link.detach(), 0);
  EXPECT_EQ(code_bytes(ret_fib), before);
  EXPECT_EQ(ret_fib(10), 55);
  EXPECT_EQ(counts.entries.load(), fib_calls(10));
  EXPECT_EQ(counts.returns.load(), fib_calls(10));
}

usprobe_link *g_link_to_detach = nullptr;
std::atomic<int> g_detach_rc{1};
long detach_the_probe_of_my_caller(long x) {
  g_detach_rc.store(usprobe_detach(g_link_to_detach));
  return x * 2;
}

int detach_pending_same_thread() {
  Checks ck;
  const Bytes before = code_bytes(ret_call);
  for (int round = 0; round < 20; ++round) {
    Counts counts;
    const usprobe_consumer c = counting(&counts);
    g_link_to_detach = attach_or_report(loc("ret_call"), &c);
    if (!g_link_to_detach) return 3;
    const long r = ret_call(detach_the_probe_of_my_caller, round);
    ck.expect(r == 2 * round + 1, "round %d: result %ld", round, r);
    ck.expect(g_detach_rc.load() == 0, "round %d: usprobe_detach = %d", round, g_detach_rc.load());
    ck.expect(counts.entries.load() == 1, "round %d: %" PRIu64 " entries", round,
              counts.entries.load());
    ck.expect(counts.returns.load() == 0,
              "round %d: the return handler ran after usprobe_detach() returned", round);
    ck.expect(code_bytes(ret_call) == before, "round %d: code not restored", round);
    ck.expect(ret_call(plus_one, round) == round + 2, "round %d: later call wrong", round);
    ck.expect(counts.entries.load() == 1 && counts.returns.load() == 0,
              "round %d: counted after detach", round);
  }
  return ck.status();
}

// Detaching a function's probe from inside that function (its return pending on this thread):
// the call returns its value to the caller, no handler of the link runs after usprobe_detach()
// returned, and the code is restored. 20 rounds.
TEST(ReturnProbes, DetachWhileThisThreadHasTheReturnPending) {
  EXPECT_EQ(run_in_child("detach-pending-same-thread"), "");
}

std::atomic<int> g_waiter_state{0};  // 1: inside ret_call, waiting; 2: may return
long wait_until_released(long x) {
  g_waiter_state.store(1);
  while (g_waiter_state.load() != 2) usleep(1000);
  return x * 2;
}

int detach_pending_other_thread() {
  Checks ck;
  Counts counts;
  const usprobe_consumer c = counting(&counts);
  usprobe_link *link = attach_or_report(loc("ret_call"), &c);
  if (!link) return 3;
  long result = 0;
  std::thread waiter([&result] { result = ret_call(wait_until_released, 21); });
  while (g_waiter_state.load() != 1) usleep(1000);
  const int rc = usprobe_detach(link);  // the waiter is inside ret_call: its return is pending
  ck.expect(rc == 0, "usprobe_detach = %d", rc);
  g_waiter_state.store(2);
  waiter.join();
  ck.expect(result == 43, "result %ld", result);
  ck.expect(counts.entries.load() == 1, "%" PRIu64 " entries", counts.entries.load());
  ck.expect(counts.returns.load() == 0, "the return handler ran after usprobe_detach() returned");
  return ck.status();
}

// The same with the pending return on another thread, which returns after the detach.
TEST(ReturnProbes, DetachWhileAnotherThreadHasTheReturnPending) {
  EXPECT_EQ(run_in_child("detach-pending-other-thread"), "");
}

// ---- Requests that cannot be met ----------------------------------------------------------------

// A return probe only goes at a function's entry: "uretprobe:" and a consumer with on_return are
// refused elsewhere, and nothing is patched.
// A function that returns twice (setjmp's second return comes from longjmp, to the address it
// saved: a return probe's landing with no call there) gets no return probe, by any of its names;
// its entry may still be counted. A setjmp and longjmp afterwards behave as they always do.
TEST(ReturnProbes, ReturnProbeOnAFunctionThatReturnsTwiceIsRefused) {
  for (const char *name : {"libc.so.6:_setjmp", "libc.so.6:setjmp", "libc.so.6:__sigsetjmp",
                           "libc.so.6:getcontext", "libc.so.6:vfork"}) {
    SCOPED_TRACE(name);
    usprobe_link *link = nullptr;
    const int rc = usprobe_attach(("uretprobe:" + std::string(name)).c_str(), nullptr, &link);
    EXPECT_EQ(rc, -EINVAL);
    if (rc == 0) usprobe_detach(link);
    EXPECT_NE(std::string(usprobe_last_error()).find("returns twice"), std::string::npos)
        << usprobe_last_error();
  }
  usprobe_link *entry = nullptr;
  ASSERT_EQ(usprobe_attach("libc.so.6:_setjmp", nullptr, &entry), 0) << usprobe_last_error();
  jmp_buf env;
  volatile int jumps = 0;
  if (_setjmp(env) == 0) {
    jumps = jumps + 1;
    _longjmp(env, 1);
  }
  EXPECT_EQ(jumps, 1);
  EXPECT_EQ(usprobe_link_hits(entry), 1u);
  EXPECT_EQ(usprobe_detach(entry), 0);
}

TEST(ReturnProbes, ReturnProbeInsideAFunctionIsRefused) {
  char where[160];
  std::snprintf(where, sizeof where, "%s:tgt_counted_mid+%#" PRIx64, kLib,
                tgt_counted_mid_site_offset);
  const Bytes before = code_bytes(tgt_counted_mid);
  Counts counts;
  const usprobe_consumer c = counting(&counts);
  for (const usprobe_consumer *consumer : {static_cast<const usprobe_consumer *>(nullptr), &c}) {
    const std::string location = consumer ? std::string(where) : "uretprobe:" + std::string(where);
    SCOPED_TRACE(location);
    usprobe_link *link = nullptr;
    const int rc = usprobe_attach(location.c_str(), consumer, &link);
    EXPECT_LT(rc, 0);
    if (rc == 0) usprobe_detach(link);
    EXPECT_STRNE(usprobe_last_error(), "");
    EXPECT_EQ(code_bytes(tgt_counted_mid), before);
  }
  EXPECT_EQ(tgt_counted_mid(1), 2);
}

}  // namespace

// The child side of run_in_child(): runs before GoogleTest's main when the variable is set.
namespace {
const usprobe::test::Scenario kScenarios[] = {
    {"depth-limit", depth_limit},
    {"longjmp-out", longjmp_out},
    {"longjmp-out-counted", longjmp_out_counted},
    {"tail-call", tail_call},
    {"exception-through", exception_through},
    {"thread-exit-pending", thread_exit_pending},
    {"exit-inside", exit_inside},
    {"fork-pending", fork_pending},
    {"signal-reentry", [] { return signal_reentry(AltStack::none); }},
    {"signal-altstack-below", [] { return signal_reentry(AltStack::below); }},
    {"signal-altstack-above", [] { return signal_reentry(AltStack::above); }},
    {"handler-calls-probed", handler_calls_probed},
    {"coroutine-below", [] { return coroutines(false); }},
    {"coroutine-above", [] { return coroutines(true); }},
    {"coroutines-fill", coroutines_fill},
    {"detach-pending-same-thread", detach_pending_same_thread},
    {"detach-pending-other-thread", detach_pending_other_thread},
};
const bool g_child_dispatched = usprobe::test::run_scenario_if_child(kChildEnv, kScenarios);
}  // namespace
