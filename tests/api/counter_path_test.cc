// The counter path (core/thread_record.h): a function entry whose only consumer is one built-in
// entry counter is counted by the trampoline itself, with no call. What a user notices: counts
// stay exact whatever the threads, signals and handlers do, the path turns off and on as consumers
// come and go. Threads counting at once, a signal storm and a slot that must never count for its
// next consumer are tortured in tests/stress/counter_path_test.cc.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "support/test_link.h"
#include "targets/targets.h"
#include "usprobe/usprobe.h"

namespace {

using usprobe::test::Link;

std::string loc(const char *symbol) {
  return std::string("libusprobe_targets.so:") + symbol;
}

long (*volatile g_counted)(long) = tgt_counted;
long (*volatile g_helper)(long) = tgt_helper;
long (*volatile g_six)(long, long, long, long, long, long) = tgt_six_args;

const unsigned kPaths[] = {0u, unsigned{USPROBE_FORCE_INT3}};
const char *path_name(unsigned flags) {
  return flags ? "int3 path" : "jump path";
}

void call_six_inside(usprobe_hit *, void *user) {
  if (g_six(1, 1, 1, 1, 1, 1) != 21) ++*static_cast<uint64_t *>(user);
}

// A call made by a handler is not the program's: the counter path is off inside handlers, and the
// full path counts the hit as missed.
TEST(CounterPath, HitInsideAHandlerIsMissed) {
  for (unsigned flags : kPaths) {
    SCOPED_TRACE(path_name(flags));
    uint64_t wrong = 0;
    usprobe_consumer outer_consumer{call_six_inside, &wrong, nullptr};
    Link outer, inner;
    ASSERT_ATTACHED(outer.attach(loc("tgt_counted"), &outer_consumer, flags));
    ASSERT_ATTACHED(inner.attach(loc("tgt_six_args"), nullptr, flags));
    for (long i = 0; i < 100; ++i) ASSERT_EQ(g_counted(i), i + 1);
    EXPECT_EQ(g_six(1, 1, 1, 1, 1, 1), 21);  // the program's own call: a hit
    EXPECT_EQ(outer.hits(), 100u);
    EXPECT_EQ(inner.hits(), 1u);
    EXPECT_EQ(inner.missed(), 100u);
    EXPECT_EQ(wrong, 0u);
  }
}

void count_call(usprobe_hit *, void *user) {
  ++*static_cast<uint64_t *>(user);
}

// The path serves one counter alone; a second consumer, a handler or a return probe on the same
// function turn it off, and every consumer still counts every call while they are there.
TEST(CounterPath, OtherConsumersTurnItOffAndCountsStayExact) {
  Link a;
  ASSERT_ATTACHED(a.attach(loc("tgt_helper")));
  for (long i = 0; i < 10; ++i) ASSERT_EQ(g_helper(i), 3 * i + 7);
  EXPECT_EQ(a.hits(), 10u);
  {
    Link b;
    ASSERT_ATTACHED(b.attach(loc("tgt_helper")));
    for (long i = 0; i < 10; ++i) g_helper(i);
    EXPECT_EQ(a.hits(), 20u);
    EXPECT_EQ(b.hits(), 10u);
  }
  for (long i = 0; i < 10; ++i) g_helper(i);
  EXPECT_EQ(a.hits(), 30u);
  {
    uint64_t calls = 0;
    usprobe_consumer with_handler{count_call, &calls, nullptr};
    Link c;
    ASSERT_ATTACHED(c.attach(loc("tgt_helper"), &with_handler));
    for (long i = 0; i < 10; ++i) g_helper(i);
    EXPECT_EQ(calls, 10u);
    EXPECT_EQ(c.hits(), 10u);
    EXPECT_EQ(a.hits(), 40u);
  }
  {
    Link r;
    ASSERT_ATTACHED(r.attach("uretprobe:" + loc("tgt_helper")));
    for (long i = 0; i < 10; ++i) g_helper(i);
    EXPECT_EQ(r.return_hits(), 10u);
    EXPECT_EQ(a.hits(), 50u);
  }
  for (long i = 0; i < 10; ++i) g_helper(i);
  EXPECT_EQ(a.hits(), 60u);
}

}  // namespace
