// Site tactics of arch::prepare_site (issue 12, item 1): which jump a site gets when a jump over a
// whole 5-byte window cannot stand, and the bytes it writes. Nothing is patched: the plans are
// made for code at a synthetic address (a reserved, inaccessible page), read back and released.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <vector>

#include "arch/x86_64/relocator.h"
#include "core/arch.h"
#include "core/probe.h"

namespace usprobe::arch {
namespace {

using Bytes = std::vector<uint8_t>;

// A page of address space that holds the "function" (never executed; PROT_NONE).
uint64_t code_page() {
  static const uint64_t page = [] {
    void *p = mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return reinterpret_cast<uint64_t>(p);
  }();
  return page;
}

Probe g_probe;

Result<SitePlan> plan_at(const Bytes &function, uint32_t off, const Bytes &after = {},
                         const std::vector<uint64_t> &file_targets = {}) {
  SiteRequest req;
  req.function_addr = code_page() + 0x100;
  req.site = req.function_addr + off;
  req.function = function;
  req.bounds_known = true;
  req.probe = &g_probe;
  req.describe = "test";
  req.file_branch_targets = &file_targets;
  req.site_file_offset = 0x100000 + off;
  req.after = after;
  return prepare_site(req);
}

// What a thread decodes at the site once the patch is written: the patch, then the original bytes
// after it.
Bytes patched(const Bytes &function, uint32_t off, const SitePlan &plan) {
  Bytes b = function;
  std::copy(plan.patch.begin(), plan.patch.end(), b.begin() + off);
  return Bytes(b.begin() + off, b.end());
}

// A loop whose head is the function's second instruction: the branch back lands inside any 5-byte
// window at the entry.
const Bytes kLoopAfterEntry = {
    0x31, 0xc0,        //  0: xor %eax,%eax
    0x48, 0xff, 0xc0,  //  2: inc %rax          <- the loop's head, a branch target
    0x48, 0x39, 0xf8,  //  5: cmp %rdi,%rax
    0x72, 0xf8,        //  8: jb 2
    0xc3,              // 10: ret
};

TEST(Tactics, PlainJumpWhereTheWindowIsClear) {
  // 0: push %rbp; 1: mov %rsp,%rbp; 4: pop %rbp; 5: ret
  const Bytes f = {0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3};
  auto plan = plan_at(f, 0);
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_TRUE(plan->jump);
  EXPECT_EQ(plan->path, "jump");
  EXPECT_EQ(plan->patch.size(), 5u);
  EXPECT_EQ(plan->window_length, 5u);
  EXPECT_EQ(plan->stub, 0u);
  release_trampoline(*plan);
}

TEST(Tactics, PunnedJumpWhenABranchTargetFollowsTheFirstInstruction) {
  auto plan = plan_at(kLoopAfterEntry, 0);
  ASSERT_TRUE(plan) << plan.error().message;
  ASSERT_TRUE(plan->jump) << plan->int3_reason;
  EXPECT_EQ(plan->path, "jump (punned)");
  // Only `xor %eax,%eax` is written: e9 LL (p = 0) borrows 48 ff c0 of the loop's head, which
  // stays `inc %rax`: e9 LL 48 ff c0 = jmp site + 5 + 0xc0ff48LL (sign-extended: 0xc0ff48LL is
  // negative, so about 1 GB behind the site).
  ASSERT_EQ(plan->patch.size(), 2u);
  EXPECT_EQ(plan->patch[0], 0xe9);
  EXPECT_EQ(plan->original, (Bytes{0x31, 0xc0}));
  EXPECT_EQ(plan->window_length, 2u);
  EXPECT_EQ(plan->footprint, 5u);
  const uint64_t site = code_page() + 0x100;
  auto j = x86::decode_jump(patched(kLoopAfterEntry, 0, *plan), site);
  ASSERT_TRUE(j);
  EXPECT_EQ(j->length, 5u);
  EXPECT_EQ(j->target, plan->stub);
  EXPECT_EQ(j->target - (site + 5), 0xffffffffc0ff4800ull + plan->patch[1]);
  // The loop's head decodes as before.
  EXPECT_EQ(x86::instruction_length(Bytes(kLoopAfterEntry.begin() + 2, kLoopAfterEntry.end())), 3u);
  release_trampoline(*plan);
}

TEST(Tactics, OneInstructionJumpInsideAFunctionThatJumpsIndirectly) {
  const Bytes f = {
      0x48, 0x8d, 0x05, 0x10, 0x00, 0x00, 0x00,  //  0: lea 0x10(%rip),%rax
      0x48, 0x63, 0x0c, 0xb8,                    //  7: movslq (%rax,%rdi,4),%rcx
      0x48, 0x01, 0xc8,                          // 11: add %rcx,%rax
      0xff, 0xe0,                                // 14: jmp *%rax
      0xc3,                                      // 16: ret
  };
  // At +0, the lea (7 bytes) is replaced by a jmp rel32 and two bytes left unreachable: no other
  // instruction start changes, so the indirect jump can land anywhere it could before.
  auto plan = plan_at(f, 0);
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_EQ(plan->path, "jump");  // the entry: a plain window, as before
  release_trampoline(*plan);
  plan = plan_at(f, 7);  // movslq, 4 bytes: punned, borrowing 1 byte of the add
  ASSERT_TRUE(plan) << plan.error().message;
  ASSERT_TRUE(plan->jump) << plan->int3_reason;
  EXPECT_EQ(plan->path, "jump (punned)");
  EXPECT_EQ(plan->patch.size(), 4u);
  auto j = x86::decode_jump(patched(f, 7, *plan), code_page() + 0x100 + 7);
  ASSERT_TRUE(j);
  EXPECT_EQ(j->target, plan->stub);
  release_trampoline(*plan);
}

TEST(Tactics, OneInstructionJumpOverALongInstruction) {
  // A function that jumps indirectly: at +2, only the instruction itself may be written.
  const Bytes f = {
      0x31, 0xc0,                    // 0: xor %eax,%eax
      0xb9, 0x01, 0x00, 0x00, 0x00,  // 2: mov $1,%ecx
      0xff, 0xe0,                    // 7: jmp *%rax
  };
  auto plan = plan_at(f, 2);
  ASSERT_TRUE(plan) << plan.error().message;
  ASSERT_TRUE(plan->jump) << plan->int3_reason;
  EXPECT_EQ(plan->path, "jump (one instruction)");
  EXPECT_EQ(plan->patch.size(), 5u);
  EXPECT_EQ(plan->patch[0], 0xe9);
  EXPECT_EQ(plan->window_length, 5u);
  release_trampoline(*plan);
}

TEST(Tactics, ThreeByteFunctionBorrowsItsPadding) {
  // 0: xor %eax,%eax; 2: ret, then int3 padding up to the next function
  const Bytes f = {0x31, 0xc0, 0xc3};
  auto plan = plan_at(f, 0, Bytes{0xcc, 0xcc, 0xcc, 0xcc, 0xcc});
  ASSERT_TRUE(plan) << plan.error().message;
  ASSERT_TRUE(plan->jump) << plan->int3_reason;
  EXPECT_EQ(plan->path, "jump (punned)");
  Bytes seen = {plan->patch[0], plan->patch[1], 0xc3, 0xcc, 0xcc};
  auto j = x86::decode_jump(seen, code_page() + 0x100);
  ASSERT_TRUE(j);
  EXPECT_EQ(j->target, plan->stub);
  release_trampoline(*plan);
}

TEST(Tactics, NoBorrowingPastTheNextFunction) {
  // A 3-byte function immediately followed by another function: nothing to borrow, int3.
  const Bytes f = {0x31, 0xc0, 0xc3};
  auto plan = plan_at(f, 0, {});
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_FALSE(plan->jump);
  EXPECT_EQ(plan->path, "int3");
  EXPECT_NE(plan->int3_reason.find("punned"), std::string::npos) << plan->int3_reason;
  release_trampoline(*plan);
}

TEST(Tactics, PrefixesShiftTheBorrowedBytes) {
  // Each count of prefixes gives a different range; all decode as one jmp rel32.
  for (const Bytes &b :
       {Bytes{0x48, 0xe9, 0x01, 0x02, 0x03, 0x04}, Bytes{0x26, 0x48, 0xe9, 0x01, 0x02, 0x03, 0x04},
        Bytes{0x26, 0x36, 0x48, 0xe9, 0x01, 0x02, 0x03, 0x04}}) {
    auto j = x86::decode_jump(b, 0x1000);
    ASSERT_TRUE(j);
    EXPECT_EQ(j->length, b.size());
    EXPECT_EQ(j->target, 0x1000 + b.size() + 0x04030201);
  }
}

}  // namespace
}  // namespace usprobe::arch
