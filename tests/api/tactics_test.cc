// Jumps where a 5-byte window over whole instructions cannot stand (issue 12, item 1): a branch
// target right after the probed instruction, a function that jumps indirectly through a table, a
// 3-byte function. Each used to take the int3 path (and a thread that blocks SIGTRAP died there);
// each now gets a jump that writes only the probed instruction's bytes (punned when it is shorter
// than the jump: the displacement's high bytes are the next instruction's, unchanged), or over
// the instruction and the next ones up to a branch target, or a plain jump whose window runs on
// over the padding after a function's last `ret`. Counts are exact, results unchanged, detach
// restores every byte. Live attach/detach under callers running flat out is tortured in
// tests/stress/tactics_test.cc.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
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

usprobe_link *attach(const std::string &where) {
  usprobe_link *link = nullptr;
  const int rc = usprobe_attach(where.c_str(), nullptr, &link);
  EXPECT_EQ(rc, 0) << where << ": " << usprobe_last_error();
  return link;
}

TEST(Tactics, BranchTargetAfterTheFirstInstructionGetsAJump) {
  Watchdog dog(::testing::UnitTest::GetInstance()->current_test_info()->name());
  Bytes before(reinterpret_cast<const void *>(&tac_loop_head), 24);
  usprobe_link *link = attach("exe:tac_loop_head");
  ASSERT_NE(link, nullptr);
  EXPECT_EQ(usprobe_link_uses_int3(link), 0) << usprobe_link_int3_reason(link);
  EXPECT_STREQ(usprobe_link_path(link), "jump (punned)");
  long sum = 0;
  for (long i = 0; i < 1000; ++i) sum += tac_loop_head(i % 7);
  EXPECT_EQ(sum, 1000 / 7 * (1 + 1 + 2 + 3 + 4 + 5 + 6) + (1 + 1 + 2 + 3 + 4 + 5));
  EXPECT_EQ(usprobe_link_hits(link), 1000u);
  EXPECT_EQ(usprobe_detach(link), 0);
  EXPECT_TRUE(before.intact());
}

TEST(Tactics, JumpTableFunctionCountsEveryCase) {
  Watchdog dog(::testing::UnitTest::GetInstance()->current_test_info()->name());
  Bytes before(reinterpret_cast<const void *>(&tac_switch), 64);
  const std::string where[] = {offset_of(tac_switch_tail), offset_of(tac_switch_case0),
                               offset_of(tac_switch_case1)};
  const char *paths[] = {"jump (punned)", "jump (one instruction)", "jump (punned)"};
  usprobe_link *links[3];
  for (int i = 0; i < 3; ++i) {
    links[i] = attach(where[i]);
    ASSERT_NE(links[i], nullptr);
    EXPECT_EQ(usprobe_link_uses_int3(links[i]), 0)
        << where[i] << ": " << usprobe_link_int3_reason(links[i]);
    EXPECT_STREQ(usprobe_link_path(links[i]), paths[i]) << where[i];
  }
  uint64_t per_case[5] = {};
  for (long i = 0; i < 5000; ++i) {
    const long x = i % 5 == 4 ? 99 : i % 5;
    ASSERT_EQ(tac_switch(x), switch_value(x)) << x;
    ++per_case[i % 5];
  }
  EXPECT_EQ(usprobe_link_hits(links[0]), 5000u);  // the tail: every call
  EXPECT_EQ(usprobe_link_hits(links[1]), per_case[0]);
  EXPECT_EQ(usprobe_link_hits(links[2]), per_case[1]);
  EXPECT_EQ(usprobe_detach_batch(links, 3), 0);
  EXPECT_TRUE(before.intact());
}

TEST(Tactics, ThreeByteFunctionGetsAJump) {
  Watchdog dog(::testing::UnitTest::GetInstance()->current_test_info()->name());
  Bytes before(reinterpret_cast<const void *>(&tac_tiny), 11);  // its 3 bytes and 8 of padding
  usprobe_link *link = attach("exe:tac_tiny");
  ASSERT_NE(link, nullptr);
  EXPECT_EQ(usprobe_link_uses_int3(link), 0) << usprobe_link_int3_reason(link);
  // A plain jump: the window runs on over the int3 padding after the ret, which nothing runs.
  EXPECT_STREQ(usprobe_link_path(link), "jump");
  int sum = 0;
  for (int i = 0; i < 1000; ++i) sum += tac_tiny();
  EXPECT_EQ(sum, 0);
  EXPECT_EQ(usprobe_link_hits(link), 1000u);
  EXPECT_EQ(usprobe_detach(link), 0);
  EXPECT_TRUE(before.intact());
}

TEST(Tactics, NopBeforeAJumpBackIsPunnedWithTheJump) {
  Watchdog dog(::testing::UnitTest::GetInstance()->current_test_info()->name());
  const auto *site = reinterpret_cast<const uint8_t *>(tac_nop_jmp_site);
  const uint8_t jmp_rel8 = site[2];  // `jmp 1b`: eb, then this
  Bytes before(reinterpret_cast<const void *>(&tac_nop_jmp), 32);
  usprobe_link *link = attach(nop_jmp_site());
  ASSERT_NE(link, nullptr);
  EXPECT_EQ(usprobe_link_uses_int3(link), 0) << usprobe_link_int3_reason(link);
  EXPECT_STREQ(usprobe_link_path(link), "jump (punned)");
  // e9 LL HH over `nop; jmp 1b` (the jmp's bytes are the displacement's low ones now, where a
  // jump over the nop alone would have kept them); the ret after it is as it was.
  EXPECT_EQ(site[0], 0xe9);
  EXPECT_FALSE(site[1] == 0xeb && site[2] == jmp_rel8) << "the jmp was left as it was";
  EXPECT_EQ(site[3], 0xc3);
  long sum = 0;
  for (int i = -500; i < 500; ++i) sum += tac_nop_jmp(i);
  EXPECT_EQ(sum, -500 * 501 / 2 + 500 * 501 / 2);
  EXPECT_EQ(usprobe_link_hits(link), 500u);
  EXPECT_EQ(usprobe_detach(link), 0);
  EXPECT_TRUE(before.intact());
}

// A thread that blocks SIGTRAP is killed by any int3 it runs: on a jump path it runs none.
TEST(Tactics, ThreadBlockingSigtrapRunsPunnedSites) {
  Watchdog dog(::testing::UnitTest::GetInstance()->current_test_info()->name());
  usprobe_link *links[2] = {attach("exe:tac_tiny"), attach(offset_of(tac_switch_tail))};
  ASSERT_NE(links[0], nullptr);
  ASSERT_NE(links[1], nullptr);
  std::thread t([] {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    for (int i = 0; i < 100; ++i) {
      (void)tac_tiny();
      (void)tac_switch(i % 4);
    }
  });
  t.join();
  EXPECT_EQ(usprobe_link_hits(links[0]), 100u);
  EXPECT_EQ(usprobe_link_hits(links[1]), 100u);
  EXPECT_EQ(usprobe_detach_batch(links, 2), 0);
}

// A punned jump borrows the bytes after the instruction it writes: no other probe may write them
// while it stands (the registry treats [site, site + 5) as the jump's), and a probe already there
// keeps the punned one off them (it takes the int3 path instead).
TEST(Tactics, BorrowedBytesStayAsTheyAre) {
  Watchdog dog(::testing::UnitTest::GetInstance()->current_test_info()->name());
  const auto *code = reinterpret_cast<const uint8_t *>(&tac_loop_head);
  Bytes before(code, 24);
  usprobe_link *entry = attach("exe:tac_loop_head");
  ASSERT_NE(entry, nullptr);
  ASSERT_STREQ(usprobe_link_path(entry), "jump (punned)");
  usprobe_link *head = nullptr;
  EXPECT_EQ(usprobe_attach("exe:tac_loop_head+0x2", nullptr, &head), -EBUSY);
  EXPECT_EQ(head, nullptr);
  const std::string msg = usprobe_last_error();
  EXPECT_NE(msg.find("tac_loop_head"), std::string::npos) << msg;
  EXPECT_EQ(std::memcmp(code + 2, before.copy.data() + 2, 22), 0) << "borrowed bytes changed";
  for (long i = 0; i < 100; ++i) ASSERT_EQ(tac_loop_head(i), i ? i : 1);
  EXPECT_EQ(usprobe_link_hits(entry), 100u);
  EXPECT_EQ(usprobe_detach(entry), 0);
  EXPECT_TRUE(before.intact());

  // The loop's head first (a plain jump over inc and cmp), then the entry: int3.
  head = attach("exe:tac_loop_head+0x2");
  ASSERT_NE(head, nullptr);
  EXPECT_STREQ(usprobe_link_path(head), "jump");
  entry = attach("exe:tac_loop_head");
  ASSERT_NE(entry, nullptr);
  EXPECT_STREQ(usprobe_link_path(entry), "int3");
  EXPECT_NE(std::string(usprobe_link_int3_reason(entry)).find("window"), std::string::npos)
      << usprobe_link_int3_reason(entry);
  uint64_t loops = 0;
  for (long i = 0; i < 100; ++i) {
    ASSERT_EQ(tac_loop_head(i), i ? i : 1);
    loops += i ? i : 1;
  }
  EXPECT_EQ(usprobe_link_hits(entry), 100u);
  EXPECT_EQ(usprobe_link_hits(head), loops);
  usprobe_link *both[] = {entry, head};
  EXPECT_EQ(usprobe_detach_batch(both, 2), 0);
  EXPECT_TRUE(before.intact());
}

// Code write through /proc/self/mem (what a debugger's breakpoint does).
void poke(const void *at, uint8_t byte) {
  const int fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, &byte, 1, static_cast<off_t>(reinterpret_cast<uintptr_t>(at))), 1);
  close(fd);
}

// A breakpoint on a byte that a punned jump would borrow: its displacement would not be the one
// computed from the file, so the probe is refused, as on a breakpoint in the bytes it writes.
TEST(Tactics, BreakpointOnBorrowedBytesIsSeen) {
  Watchdog dog(::testing::UnitTest::GetInstance()->current_test_info()->name());
  const auto *code = reinterpret_cast<const uint8_t *>(&tac_loop_head);
  const uint8_t head = code[2];
  poke(code + 2, 0xcc);
  usprobe_link *link = nullptr;
  EXPECT_EQ(usprobe_attach("exe:tac_loop_head", nullptr, &link), -EBUSY);
  EXPECT_NE(std::string(usprobe_last_error()).find("differs from the file"), std::string::npos)
      << usprobe_last_error();
  poke(code + 2, head);
  link = attach("exe:tac_loop_head");
  ASSERT_NE(link, nullptr);
  EXPECT_STREQ(usprobe_link_path(link), "jump (punned)");
  EXPECT_EQ(usprobe_detach(link), 0);
}

}  // namespace
