// The x86-64 code writer: each emitter gives the bytes of the instruction its name spells (checked
// against the assembler's encoding, in the comments), and labels resolve branches written before
// and after the place they name.
#include "arch/x86_64/code_writer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace usprobe::x86 {
namespace {

using Bytes = std::vector<uint8_t>;
constexpr uint64_t kBase = 0x7f0000001000;

Bytes emit(void (*fn)(CodeWriter &)) {
  CodeWriter w(kBase);
  fn(w);
  return w.bytes();
}

TEST(CodeWriter, MemoryOperandsTakeTheShortestDisplacementAndTheSibThatRspNeeds) {
  // mov %r11,-0x8(%rsp)
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_mov_mem_reg(RSP, -8, R11); }),
            (Bytes{0x4c, 0x89, 0x5c, 0x24, 0xf8}));
  // mov -0x8(%rsp),%r11
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_mov_reg_mem(R11, RSP, -8); }),
            (Bytes{0x4c, 0x8b, 0x5c, 0x24, 0xf8}));
  // mov (%r11),%r11
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_mov_reg_mem(R11, R11, 0); }), (Bytes{0x4d, 0x8b, 0x1b}));
  // mov 0x0(%rbp),%rax: %rbp has no form without a displacement
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_mov_reg_mem(RAX, RBP, 0); }),
            (Bytes{0x48, 0x8b, 0x45, 0x00}));
  // mov %rax,0x88(%rbx)
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_mov_mem_reg(RBX, 0x88, RAX); }),
            (Bytes{0x48, 0x89, 0x83, 0x88, 0x00, 0x00, 0x00}));
  // incq 0x40000000(%r11)
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_incq_mem(R11, 0x40000000); }),
            (Bytes{0x49, 0xff, 0x83, 0x00, 0x00, 0x00, 0x40}));
  // movq $0x0,0x200(%rsp)
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_movq_mem_imm32(RSP, 0x200, 0); }),
            (Bytes{0x48, 0xc7, 0x84, 0x24, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}));
  // cmpq $0x2,(%rsp)
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_cmpq_mem_imm8(RSP, 0, 2); }),
            (Bytes{0x48, 0x83, 0x3c, 0x24, 0x02}));
  // cmpb $0x0,(%rax)
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_cmpb_mem_imm8(RAX, 0, 0); }), (Bytes{0x80, 0x38, 0x00}));
  // add %fs:0xfffffffffffffff0,%r11
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_add_reg_fs_abs(R11, -16); }),
            (Bytes{0x64, 0x4c, 0x03, 0x1c, 0x25, 0xf0, 0xff, 0xff, 0xff}));
}

TEST(CodeWriter, RegisterFormsEncodeTheirOperands) {
  // cmp $0x1,%rax / cmp $0x3,%eax / test %rax,%rax
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_cmp_reg_imm8(RAX, 1); }),
            (Bytes{0x48, 0x83, 0xf8, 0x01}));
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_cmp_reg32_imm8(RAX, 3); }), (Bytes{0x83, 0xf8, 0x03}));
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_test_reg_reg(RAX, RAX); }), (Bytes{0x48, 0x85, 0xc0}));
  // xor %edx,%edx / xor %r9d,%r9d / mov $0x1,%edx / mov $0x7,%r8d
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_xor_reg32_reg32(RDX, RDX); }), (Bytes{0x31, 0xd2}));
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_xor_reg32_reg32(R9, R9); }), (Bytes{0x45, 0x31, 0xc9}));
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_mov_reg32_imm32(RDX, 1); }),
            (Bytes{0xba, 0x01, 0x00, 0x00, 0x00}));
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_mov_reg32_imm32(R8, 7); }),
            (Bytes{0x41, 0xb8, 0x07, 0x00, 0x00, 0x00}));
  // and $0xffffffffffffffc0,%rsp / push $0x0 / cld
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_and_rsp_imm8(-64); }), (Bytes{0x48, 0x83, 0xe4, 0xc0}));
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_push_imm8(0); }), (Bytes{0x6a, 0x00}));
  EXPECT_EQ(emit([](CodeWriter &w) { w.put_cld(); }), (Bytes{0xfc}));
}

// A branch to a label bound later, one to a label bound before, a call and an address: each
// displacement counts from the end of its own instruction.
TEST(CodeWriter, LabelsResolveForwardAndBackwardBranchesAndAddresses) {
  CodeWriter w(kBase);
  Label back, ahead;
  w.bind(back);                      // +0
  w.put_jcc(kAboveOrEqual, ahead);   // +0: 0f 83 rel32
  w.put_jmp(back);                   // +6: e9 rel32
  w.put_mov_reg_address(R8, ahead);  // +11: 49 b8 imm64
  w.put_call(ahead);                 // +21: e8 rel32
  w.put_ret();                       // +26
  w.bind(ahead);                     // +27
  w.put_jcc(kNotEqual, back);        // +27: 0f 85 rel32
  const Bytes b = w.bytes();
  ASSERT_EQ(b.size(), 33u);
  auto rel32 = [&](size_t at) {
    return static_cast<int32_t>(uint32_t{b[at]} | uint32_t{b[at + 1]} << 8 |
                                uint32_t{b[at + 2]} << 16 | uint32_t{b[at + 3]} << 24);
  };
  EXPECT_EQ((Bytes{b[0], b[1]}), (Bytes{0x0f, 0x83}));
  EXPECT_EQ(rel32(2), 27 - 6);
  EXPECT_EQ(b[6], 0xe9);
  EXPECT_EQ(rel32(7), 0 - 11);
  EXPECT_EQ((Bytes{b[11], b[12]}), (Bytes{0x49, 0xb8}));
  uint64_t address = 0;
  for (int i = 7; i >= 0; --i) address = address << 8 | b[13 + i];
  EXPECT_EQ(address, kBase + 27);
  EXPECT_EQ(b[21], 0xe8);
  EXPECT_EQ(rel32(22), 27 - 26);
  EXPECT_EQ((Bytes{b[27], b[28]}), (Bytes{0x0f, 0x85}));
  EXPECT_EQ(rel32(29), 0 - 33);
  EXPECT_TRUE(back.bound());
  EXPECT_TRUE(ahead.bound());
}

}  // namespace
}  // namespace usprobe::x86
