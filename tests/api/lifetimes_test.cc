// Lifetimes: what an attach takes comes back once it is detached and no thread can use it any
// more, and not before.
//
//   - TrampolineOfADetachedReturnProbeLivesUntilItsCallReturns: a thread is inside a function
//     entered through a return probe when the probe is detached. Its call returns into the
//     probe's trampoline later, so the trampoline must outlive the detach; it goes at a later
//     detach, once the call has returned.
//
// The memory of 1,000 attach/detach cycles of 1,000 probes is measured in
// tests/stress/lifetimes_test.cc.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "support/code_bytes.h"

#include "support/test_link.h"
#include "usprobe/usprobe.h"

extern "C" const uint64_t many_count;  // tests/targets/many_functions.S: many_fn_0 .. many_fn_9999

// Blocks until `release` is set; returns x + 1. Probed by name (the test binary's .symtab).
extern "C" __attribute__((noinline)) long lt_blocker(long x, std::atomic<int> *state) {
  state->store(1);
  while (state->load() != 2) std::this_thread::yield();
  asm volatile("" ::: "memory");
  return x + 1;
}

namespace {

using usprobe::test::anonymous_code_bytes;

TEST(Lifetimes, TrampolineOfADetachedReturnProbeLivesUntilItsCallReturns) {
  // many_fn_1 .. many_fn_4 are probed below (and the reference keeps libusprobe_many.so linked).
  ASSERT_GE(many_count, 5u);
  // Everything that lives as long as the process (the return trampoline, the hook's) first.
  {
    usprobe::test::Link warm;
    ASSERT_EQ(warm.attach("uretprobe:libusprobe_many.so:many_fn_1"), 0) << usprobe_last_error();
  }
  {
    usprobe::test::Link warm;  // a detach after the one above: its trampoline is retired
    ASSERT_EQ(warm.attach("libusprobe_many.so:many_fn_2"), 0) << usprobe_last_error();
  }
  const size_t code_before = anonymous_code_bytes();

  usprobe_link *link = nullptr;
  ASSERT_EQ(usprobe_attach("uretprobe:exe:lt_blocker", nullptr, &link), 0) << usprobe_last_error();
  EXPECT_GT(anonymous_code_bytes(), code_before);
  std::atomic<int> state{0};
  long result = 0;
  std::thread inside([&] { result = lt_blocker(41, &state); });
  while (state.load() != 1) std::this_thread::yield();

  // The call is pending: its return address on the stack is the trampoline's landing.
  ASSERT_EQ(usprobe_detach(link), 0) << usprobe_last_error();
  EXPECT_GT(anonymous_code_bytes(), code_before) << "the trampoline went while a call would "
                                                    "still return into it";
  {
    usprobe::test::Link other;  // another detach: another chance to retire it, still too early
    ASSERT_EQ(other.attach("libusprobe_many.so:many_fn_3"), 0) << usprobe_last_error();
  }
  EXPECT_GT(anonymous_code_bytes(), code_before);

  state.store(2);  // the call returns through the trampoline
  inside.join();
  EXPECT_EQ(result, 42);

  {
    usprobe::test::Link other;
    ASSERT_EQ(other.attach("libusprobe_many.so:many_fn_4"), 0) << usprobe_last_error();
  }
  EXPECT_EQ(anonymous_code_bytes(), code_before) << "the trampoline stayed after its last call "
                                                    "returned";
}

}  // namespace
