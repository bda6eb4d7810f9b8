// Site tactics of arch::prepare_site (issue 12, item 1): which jump a site gets when a jump over a
// whole 5-byte window cannot stand, and the bytes it writes. Nothing is patched: the plans are
// made for code at a synthetic address (a reserved, inaccessible page), read back and released.
// Their code memory is the core's (code_space()), or one that counts what the plan takes.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <vector>

#include "arch/x86_64/relocator.h"
#include "core/arch.h"
#include "core/code_space.h"
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
                         const std::vector<uint64_t> &file_targets = {},
                         CodeSpace &space = code_space()) {
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
  return prepare_site(req, space);
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
  release_trampoline(*plan, code_space());
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
  release_trampoline(*plan, code_space());
}

// The core's code memory, lent with a count of what is held and what is written: the architecture
// must take its code from the CodeSpace it is handed (core/code_space.h), and give it all back.
class CountingSpace final : public CodeSpace {
 public:
  std::set<uint64_t> near_blocks, within_blocks;  // held
  std::vector<uint64_t> written;                  // write_later's addresses

  Result<uint64_t> alloc_near(uint64_t near, size_t size) override {
    auto r = code_space().alloc_near(near, size);
    if (r) near_blocks.insert(*r);
    return r;
  }
  void free_near(uint64_t addr, size_t size) override {
    EXPECT_EQ(near_blocks.erase(addr), 1u) << "not from alloc_near";
    code_space().free_near(addr, size);
  }
  Result<uint64_t> alloc_within(uint64_t lo, uint64_t hi, size_t size) override {
    auto r = code_space().alloc_within(lo, hi, size);
    if (r) within_blocks.insert(*r);
    return r;
  }
  void free_within(uint64_t addr, size_t size) override {
    EXPECT_EQ(within_blocks.erase(addr), 1u) << "not from alloc_within";
    code_space().free_within(addr, size);
  }
  void write_later(uint64_t addr, std::span<const uint8_t> bytes, size_t block_size) override {
    written.push_back(addr);
    code_space().write_later(addr, bytes, block_size);
  }
  Result<void> write_now(uint64_t addr, std::span<const uint8_t> bytes) override {
    ADD_FAILURE() << "a site's code is written with its batch";
    return code_space().write_now(addr, bytes);
  }
};

TEST(Tactics, ATrampolineComesFromTheCodeSpaceItIsGivenAndGoesBackToIt) {
  // The shared return code, made once in a process by its first function entry, is not the
  // site's: made here first, from the core's code memory.
  ASSERT_TRUE(make_return_trampoline(code_space()));
  CountingSpace space;
  const Bytes f = {0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3};  // push %rbp; mov %rsp,%rbp; pop; ret
  auto plan = plan_at(f, 0, {}, {}, space);
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_EQ(plan->path, "jump");
  EXPECT_EQ(space.near_blocks, std::set<uint64_t>{plan->trampoline});
  EXPECT_TRUE(space.within_blocks.empty());
  EXPECT_EQ(space.written, std::vector<uint64_t>{plan->trampoline});
  release_trampoline(*plan, space);
  EXPECT_TRUE(space.near_blocks.empty());
}

TEST(Tactics, APunnedJumpsStubComesFromTheCodeSpaceToo) {
  ASSERT_TRUE(make_return_trampoline(code_space()));
  CountingSpace space;
  auto plan = plan_at(kLoopAfterEntry, 0, {}, {}, space);
  ASSERT_TRUE(plan) << plan.error().message;
  ASSERT_EQ(plan->path, "jump (punned)") << plan->int3_reason;
  EXPECT_EQ(space.near_blocks, std::set<uint64_t>{plan->trampoline});
  EXPECT_EQ(space.within_blocks, std::set<uint64_t>{plan->stub});
  EXPECT_EQ(space.written, (std::vector<uint64_t>{plan->trampoline, plan->stub}));
  release_trampoline(*plan, space);
  EXPECT_TRUE(space.near_blocks.empty());
  EXPECT_TRUE(space.within_blocks.empty());
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
  release_trampoline(*plan, code_space());
  plan = plan_at(f, 7);  // movslq, 4 bytes: punned, borrowing 1 byte of the add
  ASSERT_TRUE(plan) << plan.error().message;
  ASSERT_TRUE(plan->jump) << plan->int3_reason;
  EXPECT_EQ(plan->path, "jump (punned)");
  EXPECT_EQ(plan->patch.size(), 4u);
  auto j = x86::decode_jump(patched(f, 7, *plan), code_page() + 0x100 + 7);
  ASSERT_TRUE(j);
  EXPECT_EQ(j->target, plan->stub);
  release_trampoline(*plan, code_space());
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
  release_trampoline(*plan, code_space());
}

TEST(Tactics, ThreeByteFunctionJumpsOverItsPadding) {
  // 0: xor %eax,%eax; 2: ret, then int3 padding up to the next function: nothing runs the padding,
  // so a plain 5-byte window may cover it.
  const Bytes f = {0x31, 0xc0, 0xc3};
  auto plan = plan_at(f, 0, Bytes{0xcc, 0xcc, 0xcc, 0xcc, 0xcc});
  ASSERT_TRUE(plan) << plan.error().message;
  ASSERT_TRUE(plan->jump) << plan->int3_reason;
  EXPECT_EQ(plan->path, "jump");
  ASSERT_EQ(plan->patch.size(), 5u);
  EXPECT_EQ(plan->patch[0], 0xe9);
  EXPECT_EQ(plan->original, (Bytes{0x31, 0xc0, 0xc3, 0xcc, 0xcc}));
  EXPECT_EQ(plan->window_length, 5u);
  EXPECT_EQ(plan->stub, 0u);
  release_trampoline(*plan, code_space());
}

// The shape of a USDT site at a function's end (postgres's clog__checkpoint__done): the nop, then
// `pop %rbp; ret` and the compiler's padding.
const Bytes kUsdtAtTheEnd = {
    0xe8, 0x00, 0x00, 0x00, 0x00,  // 0: call 5
    0x90,                          // 5: nop               <- the site
    0x5d,                          // 6: pop %rbp
    0xc3,                          // 7: ret
};
const Bytes kSevenByteNop = {0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00};  // nopl 0x0(%rax)

TEST(Tactics, WindowRunsOverThePaddingAfterTheLastInstruction) {
  auto plan = plan_at(kUsdtAtTheEnd, 5, kSevenByteNop);
  ASSERT_TRUE(plan) << plan.error().message;
  ASSERT_TRUE(plan->jump) << plan->int3_reason;
  EXPECT_EQ(plan->path, "jump");
  EXPECT_EQ(plan->original, (Bytes{0x90, 0x5d, 0xc3, 0x0f, 0x1f}));
  // Whole instructions: the padding's nopl is relocated too (never run: the ret comes first).
  EXPECT_EQ(plan->window_length, 10u);
  auto j = x86::decode_jump(plan->patch, code_page() + 0x100 + 5);
  ASSERT_TRUE(j);
  EXPECT_EQ(j->target, plan->trampoline);
  release_trampoline(*plan, code_space());
}

TEST(Tactics, NoWindowOverPaddingUnlessTheFunctionEndsWithAReturnOrJump) {
  // Without the ret, `pop %rbp` falls through into the bytes after the function.
  const Bytes falls = {0xe8, 0x00, 0x00, 0x00, 0x00, 0x90, 0x5d};
  auto plan = plan_at(falls, 5, kSevenByteNop);
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_NE(plan->path, "jump");
  release_trampoline(*plan, code_space());
  // Bytes after the function that are not padding: `mov %rdi,%rax` (no function, no symbol).
  plan = plan_at(kUsdtAtTheEnd, 5, Bytes{0x48, 0x89, 0xf8, 0xc3});
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_NE(plan->path, "jump");
  release_trampoline(*plan, code_space());
  // Padding cut off by the next function (a 7-byte nop of which 4 bytes are known): no window.
  plan = plan_at(kUsdtAtTheEnd, 5, Bytes{0x0f, 0x1f, 0x80, 0x00});
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_NE(plan->path, "jump");
  release_trampoline(*plan, code_space());
}

// A USDT site whose next instruction is a branch target (postgres's lwlock__condacquire):
// `call; nop; jmp back`, then the next block. The nop alone would be punned with one byte written
// (one possible address for the stub); the nop and the jmp together are 3 bytes, all written:
// e9 LL HH, borrowing the next block's first 2 bytes (a 64 KB range).
const Bytes kNopJmpBeforeTarget = {
    0x41, 0x0f, 0xb7, 0x38,        //  0: movzwl (%r8),%edi   <- the loop's head
    0xe8, 0x00, 0x00, 0x00, 0x00,  //  4: call 9
    0x90,                          //  9: nop                 <- the site
    0xeb, 0xf3,                    // 10: jmp 0
    0x41, 0x0f, 0xb7, 0x38,        // 12: movzwl (%r8),%edi   <- a branch target (from 16)
    0xeb, 0xfa,                    // 16: jmp 12
};

TEST(Tactics, PunnedJumpOverSeveralInstructions) {
  auto plan = plan_at(kNopJmpBeforeTarget, 9);
  ASSERT_TRUE(plan) << plan.error().message;
  ASSERT_TRUE(plan->jump) << plan->int3_reason;
  EXPECT_EQ(plan->path, "jump (punned)");
  ASSERT_EQ(plan->patch.size(), 3u);
  EXPECT_EQ(plan->patch[0], 0xe9);
  EXPECT_EQ(plan->original, (Bytes{0x90, 0xeb, 0xf3}));
  EXPECT_EQ(plan->window_length, 3u);
  EXPECT_EQ(plan->footprint, 5u);
  EXPECT_EQ(plan->borrowed, (Bytes{0x41, 0x0f}));
  // A thread stopped at the jmp while the patch is written is moved to its copy.
  ASSERT_EQ(plan->window_map.size(), 2u);
  EXPECT_EQ(plan->window_map[1].first, 1u);
  const uint64_t site = code_page() + 0x100 + 9;
  auto j = x86::decode_jump(patched(kNopJmpBeforeTarget, 9, *plan), site);
  ASSERT_TRUE(j);
  EXPECT_EQ(j->length, 5u);
  EXPECT_EQ(j->target, plan->stub);
  // The branch target still decodes as before.
  EXPECT_EQ(
      x86::instruction_length(Bytes(kNopJmpBeforeTarget.begin() + 12, kNopJmpBeforeTarget.end())),
      4u);
  release_trampoline(*plan, code_space());
}

TEST(Tactics, PunnedWindowStopsAtABranchTarget) {
  // 0: nop (site); 1: nop, a branch target (from 3); 2: ret; 3: jmp 1
  const Bytes f = {0x90, 0x90, 0xc3, 0xeb, 0xfc};
  auto plan = plan_at(f, 0);
  ASSERT_TRUE(plan) << plan.error().message;
  if (plan->jump) {
    EXPECT_EQ(plan->path, "jump (punned)");
    EXPECT_EQ(plan->patch.size(), 1u);  // the nop alone
  } else {
    EXPECT_NE(plan->int3_reason.find("the instruction alone"), std::string::npos)
        << plan->int3_reason;
  }
  release_trampoline(*plan, code_space());
}

// A code space that gives the same block every time and keeps what is written into it, unwritten:
// two plans made at one place, to compare their code.
class SamePlaceSpace final : public CodeSpace {
 public:
  uint64_t block = 0;
  size_t block_size = 0;
  Bytes written;
  ~SamePlaceSpace() {
    if (block) code_space().free_near(block, block_size);
  }
  Result<uint64_t> alloc_near(uint64_t near, size_t size) override {
    if (!block) {
      auto r = code_space().alloc_near(near, size);
      if (!r) return r;
      block = *r, block_size = size;
    }
    return block;
  }
  void free_near(uint64_t, size_t) override {}
  Result<uint64_t> alloc_within(uint64_t, uint64_t, size_t) override {
    return fail(ENOMEM, "no stubs here");
  }
  void free_within(uint64_t, size_t) override {}
  void write_later(uint64_t addr, std::span<const uint8_t> bytes, size_t) override {
    EXPECT_EQ(addr, block);
    written.assign(bytes.begin(), bytes.end());
  }
  Result<void> write_now(uint64_t, std::span<const uint8_t>) override {
    return fail(EINVAL, "a site's code is written with its batch");
  }
};

// A function entry's code up to its window is copied from the one written before it, with its own
// probe, site and trampoline addresses (EntryTemplate): byte for byte the code written out for it,
// with each kind of return path (Probe::return_path).
TEST(Tactics, AFunctionEntryCopiedFromTheTemplateIsTheCodeWrittenOut) {
  ASSERT_TRUE(make_return_trampoline(code_space()));
  for (const uint8_t kind :
       {Probe::kNoReturnPath, Probe::kReturnCounterPath, Probe::kReturnTimerPath}) {
    SCOPED_TRACE(testing::Message() << "return path " << int{kind});
    static Probe first, second;
    first.return_path = second.return_path = kind;
    const Bytes f = {0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3};  // push %rbp; mov %rsp,%rbp; pop; ret
    auto request = [&](uint32_t at, const Probe *probe) {
      SiteRequest req;
      req.function_addr = req.site = code_page() + at;
      req.function = f;
      req.bounds_known = true;
      req.probe = probe;
      req.describe = "test";
      return req;
    };
    forget_trampoline_template();
    auto written_out = prepare_site(request(0x100, &first), code_space());  // the template
    ASSERT_TRUE(written_out) << written_out.error().message;

    SamePlaceSpace space;
    auto copied = prepare_site(request(0x400, &second), space);
    ASSERT_TRUE(copied) << copied.error().message;
    const Bytes copy = space.written;
    forget_trampoline_template();
    auto fresh = prepare_site(request(0x400, &second), space);
    ASSERT_TRUE(fresh) << fresh.error().message;
    ASSERT_EQ(copied->trampoline, fresh->trampoline);
    EXPECT_NE(copied->trampoline, written_out->trampoline);
    EXPECT_EQ(copy, space.written) << "the copy differs from the code written out";
    for (size_t i = 0; i < fresh->counter_windows.size(); ++i) {
      EXPECT_EQ(copied->counter_windows[i].start, fresh->counter_windows[i].start);
      EXPECT_EQ(copied->counter_windows[i].length, fresh->counter_windows[i].length);
      EXPECT_TRUE(
          std::ranges::equal(copied->counter_windows[i].map, fresh->counter_windows[i].map));
    }
    // A sanitizer build's trampolines have no fast paths, the return paths included.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    constexpr bool kReturnPaths = false;
#else
    constexpr bool kReturnPaths = true;
#endif
    const bool return_path = kReturnPaths && kind != Probe::kNoReturnPath;
    // The counter path's window alone, or the return path's entry and its restart stubs.
    EXPECT_NE(fresh->counter_windows[0].length, 0u);
    EXPECT_EQ(fresh->counter_windows[1].length != 0, return_path);
    EXPECT_EQ(copied->window_copy, fresh->window_copy);
    // Not the template's addresses: the second probe's own.
    const auto has = [&](uint64_t v) {
      for (size_t i = 0; i + 8 <= copy.size(); ++i)
        if (std::memcmp(copy.data() + i, &v, 8) == 0) return true;
      return false;
    };
    // A probe made for a return path has it instead of the counter path.
    EXPECT_EQ(has(reinterpret_cast<uint64_t>(&second.counter_word)), !return_path);
    EXPECT_FALSE(has(reinterpret_cast<uint64_t>(&first.counter_word)));
    EXPECT_TRUE(has(code_page() + 0x400));
    EXPECT_EQ(has(reinterpret_cast<uint64_t>(&second.return_word)),
              return_path && kind == Probe::kReturnCounterPath);
    EXPECT_EQ(has(reinterpret_cast<uint64_t>(&second.timer_word)),
              return_path && kind == Probe::kReturnTimerPath);
    release_trampoline(*written_out, code_space());
  }
}

TEST(Tactics, NoBorrowingPastTheNextFunction) {
  // A 3-byte function immediately followed by another function: nothing to borrow, int3.
  const Bytes f = {0x31, 0xc0, 0xc3};
  auto plan = plan_at(f, 0, {});
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_FALSE(plan->jump);
  EXPECT_EQ(plan->path, "int3");
  EXPECT_NE(plan->int3_reason.find("punned"), std::string::npos) << plan->int3_reason;
  release_trampoline(*plan, code_space());
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
