// Return probes and stack unwinders: a hijacked return address (the return trampoline's) would end
// an unwinder's walk, so that a C++ exception thrown through a return-probed frame terminated the
// program and backtrace(3) stopped short. usprobe puts the original return addresses back when an
// unwinder starts (registry.cc, guard_unwinders); those calls' returns count as missed.
#include <execinfo.h>
#include <gtest/gtest.h>
#include <pthread.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "usprobe/usprobe.h"

extern "C" {
__attribute__((noinline)) long unwind_thrower(long x) {
  if (x % 2) throw std::runtime_error("odd " + std::to_string(x));
  asm volatile("");
  return x;
}
__attribute__((noinline)) long unwind_middle(long x) {
  long r = unwind_thrower(x) + 1;
  asm volatile("");
  return r;
}
__attribute__((noinline)) long unwind_outer(long x) {
  long r = unwind_middle(x) + 1;
  asm volatile("");
  return r;
}
__attribute__((noinline)) int unwind_backtrace_depth(void **frames, int n) {
  int got = backtrace(frames, n);
  asm volatile("");
  return got;
}
__attribute__((noinline)) int unwind_traced(void **frames, int n) {
  int got = unwind_backtrace_depth(frames, n);
  asm volatile("");
  return got;
}
__attribute__((noinline)) int unwind_trace_caller(void **frames, int n) {
  int got = unwind_traced(frames, n);
  asm volatile("");
  return got;
}
__attribute__((noinline)) void *unwind_exit_thread(void *) {
  pthread_exit(reinterpret_cast<void *>(42));
}
}

namespace {

struct Links {
  usprobe_link *outer = nullptr, *middle = nullptr;
  ~Links() {
    if (outer) usprobe_detach(outer);
    if (middle) usprobe_detach(middle);
  }
};

TEST(ReturnProbesAndUnwinders, ExceptionThroughProbedFramesIsCaughtAndTheirReturnsAreMissed) {
  Links l;
  ASSERT_EQ(usprobe_attach("uretprobe:exe:unwind_outer", nullptr, &l.outer), 0)
      << usprobe_last_error();
  ASSERT_EQ(usprobe_attach("uretprobe:exe:unwind_middle", nullptr, &l.middle), 0)
      << usprobe_last_error();
  long sum = 0, caught = 0;
  for (long i = 0; i < 100; ++i) {
    try {
      sum += unwind_outer(i);
    } catch (const std::runtime_error &e) {
      ++caught;
      EXPECT_EQ(std::string(e.what()), "odd " + std::to_string(i));
    }
  }
  EXPECT_EQ(caught, 50);
  EXPECT_EQ(sum, 2450 + 50 * 2);  // the even i, each + 2
  EXPECT_EQ(usprobe_link_hits(l.outer), 100u);
  EXPECT_EQ(usprobe_link_return_hits(l.outer), 50u);
  EXPECT_EQ(usprobe_link_return_hits(l.middle), 50u);
  EXPECT_EQ(usprobe_link_missed(l.outer), 50u) << "the thrown-through calls";
  EXPECT_EQ(usprobe_link_missed(l.middle), 50u);
}

TEST(ReturnProbesAndUnwinders, BacktraceFromACalleeShowsTheProbedCallers) {
  usprobe_link *link = nullptr;
  ASSERT_EQ(usprobe_attach("uretprobe:exe:unwind_traced", nullptr, &link), 0)
      << usprobe_last_error();
  void *frames[64];
  int n = unwind_trace_caller(frames, 64);
  usprobe_detach(link);
  // backtrace's caller, unwind_traced (probed), unwind_trace_caller, this test, gtest...: the walk
  // goes past the probed function into its caller.
  EXPECT_GE(n, 5);
  auto *caller = reinterpret_cast<char *>(&unwind_trace_caller);
  bool caller_seen = false;
  for (int i = 0; i < n; ++i) {
    auto *f = static_cast<char *>(frames[i]);
    caller_seen |= f > caller && f < caller + 256;
  }
  EXPECT_TRUE(caller_seen) << "the frame of the probed function's caller is missing";
}

TEST(ReturnProbesAndUnwinders, PthreadExitFromAProbedFunctionEndsOnlyThatThread) {
  usprobe_link *link = nullptr;
  ASSERT_EQ(usprobe_attach("uretprobe:exe:unwind_exit_thread", nullptr, &link), 0)
      << usprobe_last_error();
  for (int i = 0; i < 20; ++i) {
    pthread_t t;
    ASSERT_EQ(pthread_create(&t, nullptr, unwind_exit_thread, nullptr), 0);
    void *result = nullptr;
    ASSERT_EQ(pthread_join(t, &result), 0);
    EXPECT_EQ(result, reinterpret_cast<void *>(42));
  }
  EXPECT_EQ(usprobe_link_hits(link), 20u);
  EXPECT_EQ(usprobe_link_return_hits(link), 0u);
  usprobe_detach(link);
}

}  // namespace
