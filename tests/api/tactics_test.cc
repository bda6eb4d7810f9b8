// Jumps where a 5-byte window over whole instructions cannot stand (issue 12, item 1): a branch
// target right after the probed instruction, a function that jumps indirectly through a table, a
// 3-byte function. Each used to take the int3 path (and a thread that blocks SIGTRAP died there);
// each now gets a jump that writes only the probed instruction's bytes (punned when it is shorter
// than the jump: the displacement's high bytes are the next instruction's, unchanged), or over
// the instruction and the next ones up to a branch target, or a plain jump whose window runs on
// over the padding after a function's last `ret`. Counts are exact, results unchanged, detach
// restores every byte, and live attach/detach under callers running flat out keeps results exact.
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

#include "support/watchdog.h"
#include "usprobe/usprobe.h"

// The targets, with exact bytes, in this executable ("exe:NAME").
asm(R"(
  .text
  # tac_loop_head(n) -> max(n, 1): the loop's head is the second instruction, so a branch lands
  # 2 bytes into any 5-byte window at the entry.
  .globl tac_loop_head
  .type tac_loop_head, @function
  .p2align 4
tac_loop_head:
  xor %eax, %eax          # +0, 2 bytes
1:
  inc %rax                # +2, the loop's head
  cmp %rdi, %rax
  jb 1b
  ret
  .size tac_loop_head, .-tac_loop_head
  int3; int3; int3; int3; int3; int3; int3; int3

  # tac_switch(x) -> 10, x + 20, 2x, 7 for x = 0..3, -1 otherwise; plus 1 (the common tail).
  # A jump table: the function jumps indirectly, so no site past its entry may cover another
  # instruction start.
  .globl tac_switch
  .type tac_switch, @function
  .p2align 4
tac_switch:
  cmp $3, %rdi
  ja 5f
  lea 9f(%rip), %rax
  movslq (%rax,%rdi,4), %rcx
  add %rcx, %rax
  jmp *%rax
  .globl tac_switch_case0
tac_switch_case0:
  mov $10, %eax           # 5 bytes: one-instruction jump
  jmp 6f
  .globl tac_switch_case1
tac_switch_case1:
  lea 20(%rdi), %eax      # 3 bytes: punned
  jmp 6f
2:
  lea (%rdi,%rdi), %eax
  jmp 6f
3:
  mov $7, %eax
  jmp 6f
5:
  mov $-1, %eax
  .globl tac_switch_tail
tac_switch_tail:
6:
  add $1, %eax            # 3 bytes, every case's way out: punned over `ret` and the padding
  ret
  .size tac_switch, .-tac_switch
  int3; int3; int3; int3; int3; int3; int3; int3
  .section .rodata
  .p2align 2
9:
  .long tac_switch_case0 - 9b, tac_switch_case1 - 9b, 2b - 9b, 3b - 9b
  .text

  # tac_tiny() -> 0: 3 bytes.
  .globl tac_tiny
  .type tac_tiny, @function
  .p2align 4
tac_tiny:
  xor %eax, %eax
  ret
  .size tac_tiny, .-tac_tiny
  int3; int3; int3; int3; int3; int3; int3; int3

  # tac_nop_jmp(x) -> x + 1 for x >= 0 (the nop runs once), x otherwise: the shape of a USDT site
  # in an out-of-line block (postgres's lwlock__condacquire): `nop; jmp back`, and a branch
  # target right after. The nop alone could only be punned with one byte written; the nop and the
  # jmp (3 bytes) are written together, borrowing the ret and one byte of padding.
  .globl tac_nop_jmp
  .type tac_nop_jmp, @function
  .p2align 4
tac_nop_jmp:
  mov %edi, %eax
  test %edi, %edi
  js 3f
  jmp 2f
1:
  add $1, %eax
  ret
2:
  .globl tac_nop_jmp_site
tac_nop_jmp_site:
  nop
  jmp 1b
3:
  ret
  .size tac_nop_jmp, .-tac_nop_jmp
  int3; int3; int3; int3; int3; int3; int3; int3
)");
extern "C" {
long tac_loop_head(long n);
int tac_switch(long x);
int tac_tiny();
int tac_nop_jmp(int x);
extern const char tac_switch_case0[], tac_switch_case1[], tac_switch_tail[], tac_nop_jmp_site[];
}

namespace {

using usprobe::test::Watchdog;

long switch_value(long x) {
  switch (x) {
    case 0:
      return 10 + 1;
    case 1:
      return x + 20 + 1;
    case 2:
      return 2 * x + 1;
    case 3:
      return 7 + 1;
    default:
      return -1 + 1;
  }
}

std::string offset_of(const char *label) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "exe:tac_switch+%#" PRIxPTR,
                reinterpret_cast<uintptr_t>(label) - reinterpret_cast<uintptr_t>(&tac_switch));
  return buf;
}
std::string nop_jmp_site() {
  char buf[64];
  std::snprintf(
      buf, sizeof buf, "exe:tac_nop_jmp+%#" PRIxPTR,
      reinterpret_cast<uintptr_t>(tac_nop_jmp_site) - reinterpret_cast<uintptr_t>(&tac_nop_jmp));
  return buf;
}

// The bytes a patch may write or borrow: the function's first 16 and the 8 after its end.
struct Bytes {
  const uint8_t *at;
  size_t n;
  std::vector<uint8_t> copy;
  Bytes(const void *p, size_t len)
      : at(static_cast<const uint8_t *>(p)), n(len), copy(at, at + len) {}
  bool intact() const { return std::memcmp(copy.data(), at, n) == 0; }
};

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
  for (int cycle = 0; cycle < 300 && !wrong.load(); ++cycle) {
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
