// elf/cfi.h on hand-written bytes: pointer encodings, CIE/FDE parsing, the CFA program and the
// .eh_frame_hdr search; and the search on this binary's own .eh_frame.
#include "elf/cfi.h"

#include <cstdint>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

namespace usprobe::cfi {
namespace {

using Bytes = std::vector<uint8_t>;

template <typename T>
void put(Bytes &b, T v) {
  uint8_t raw[sizeof v];
  std::memcpy(raw, &v, sizeof v);
  b.insert(b.end(), raw, raw + sizeof v);
}

Reader reader(const Bytes &b) {
  return Reader{b.data(), b.data() + b.size()};
}

TEST(CfiPointer, FixedSizeFormatsAreReadAndSignExtended) {
  Bytes b;
  put<uint32_t>(b, 0xfffffff0u);
  put<uint32_t>(b, 0xfffffff0u);
  put<uint64_t>(b, 0x1122334455667788ull);
  put<int16_t>(b, -2);
  Reader r = reader(b);
  uint64_t v = 0;
  ASSERT_TRUE(read_pointer(r, kPeUdata4, 0, v));
  EXPECT_EQ(v, 0xfffffff0u);
  ASSERT_TRUE(read_pointer(r, kPeSdata4, 0, v));
  EXPECT_EQ(v, static_cast<uint64_t>(-16));
  ASSERT_TRUE(read_pointer(r, kPeUdata8, 0, v));
  EXPECT_EQ(v, 0x1122334455667788ull);
  ASSERT_TRUE(read_pointer(r, kPeSdata2, 0, v));
  EXPECT_EQ(v, static_cast<uint64_t>(-2));
  EXPECT_EQ(r.left(), 0u);
}

TEST(CfiPointer, PcRelativeIsFromThePointersOwnAddress) {
  Bytes b(4);
  put<int32_t>(b, -8);
  Reader r = reader(b);
  r.skip(4);
  uint64_t v = 0;
  ASSERT_TRUE(read_pointer(r, kPePcrel | kPeSdata4, 0, v));
  EXPECT_EQ(v, reinterpret_cast<uint64_t>(b.data()) + 4 - 8);
}

TEST(CfiPointer, DataRelativeNeedsABase) {
  Bytes b;
  put<int32_t>(b, 0x100);
  uint64_t v = 0;
  Reader r = reader(b);
  ASSERT_TRUE(read_pointer(r, kPeDatarel | kPeSdata4, 0x5000, v));
  EXPECT_EQ(v, 0x5100u);
  r = reader(b);
  EXPECT_FALSE(read_pointer(r, kPeDatarel | kPeSdata4, 0, v));
}

TEST(CfiPointer, UnsupportedEncodingsAreRefused) {
  Bytes b(16, 0);
  uint64_t v = 0;
  for (uint8_t enc : {kPeOmit, uint8_t(kPeIndirect | kPePcrel | kPeSdata4),
                      uint8_t(0x20 | kPeSdata4) /* textrel */, uint8_t(0x40 | kPeUdata4),
                      uint8_t(0x50) /* aligned */, uint8_t(0x05), uint8_t(0x0d)}) {
    Reader r = reader(b);
    EXPECT_FALSE(read_pointer(r, enc, 0x1000, v)) << "encoding " << int(enc);
  }
}

TEST(CfiPointer, TruncatedPointerFailsTheReader) {
  Bytes b(3, 0);
  Reader r = reader(b);
  uint64_t v = 0;
  EXPECT_FALSE(read_pointer(r, kPeUdata4, 0, v));
  EXPECT_FALSE(r.ok);
}

TEST(CfiReader, Leb128) {
  Bytes b = {0xe5, 0x8e, 0x26, 0x7f, 0x80, 0x7f};
  Reader r = reader(b);
  EXPECT_EQ(r.uleb128(), 624485u);
  EXPECT_EQ(r.sleb128(), -1);
  EXPECT_EQ(r.sleb128(), -128);
  EXPECT_TRUE(r.ok);
  Bytes endless(20, 0x80);  // never terminates
  Reader bad = reader(endless);
  bad.uleb128();
  EXPECT_FALSE(bad.ok);
}

// The CIE GCC writes for x86-64: code align 1, data align -8, return address column 16,
// CFA = rsp + 8, return address at CFA - 8.
Cie x86_cie(const Bytes &insns) {
  Cie cie;
  cie.code_align = 1;
  cie.data_align = -8;
  cie.ra_column = 16;
  cie.fde_encoding = kPePcrel | kPeSdata4;
  cie.insns = insns.data();
  cie.insns_end = insns.data() + insns.size();
  return cie;
}
const Bytes kCieInsns = {0x0c, 0x07, 0x08,  // def_cfa rsp, 8
                         0x90, 0x01};       // offset r16 (ra), 1 * -8

Rules row(const Bytes &fde_insns, uint64_t pc, bool *ok = nullptr) {
  static Bytes cie_insns;
  cie_insns = kCieInsns;
  Fde fde;
  fde.cie = x86_cie(cie_insns);
  fde.pc_begin = 0x1000;
  fde.pc_end = 0x2000;
  fde.insns = fde_insns.data();
  fde.insns_end = fde_insns.data() + fde_insns.size();
  Rules rules;
  const bool r = rules_at(fde, pc, rules);
  if (ok) *ok = r;
  EXPECT_TRUE(r || ok) << "rules_at refused pc " << std::hex << pc;
  return rules;
}

// push %rbp; mov %rsp,%rbp; ...; (remember) leave; ret; (restore) more body.
const Bytes kFramePointerFunction = {
    0x41,              // 0x1001: advance_loc 1 (after push %rbp)
    0x0e, 0x10,        //   def_cfa_offset 16
    0x86, 0x02,        //   offset rbp at CFA - 16
    0x43,              // 0x1004: advance_loc 3 (after mov %rsp,%rbp)
    0x0d, 0x06,        //   def_cfa_register rbp
    0x02, 0x20,        // 0x1024: advance_loc1 0x20
    0x0a,              //   remember_state
    0x0c, 0x07, 0x08,  //   def_cfa rsp, 8 (after leave)
    0xc6,              //   restore rbp
    0x03, 0x01, 0x00,  // 0x1025: advance_loc2 1 (after ret)
    0x0b,              //   restore_state
};

TEST(CfiProgram, EntryRowIsTheCiesInitialRow) {
  Rules r = row(kFramePointerFunction, 0x1000);
  EXPECT_FALSE(r.cfa.expression);
  EXPECT_EQ(r.cfa.reg, 7u);
  EXPECT_EQ(r.cfa.offset, 8);
  EXPECT_EQ(r.regs[16].rule, Rule::kOffset);
  EXPECT_EQ(r.regs[16].value, -8);
  EXPECT_EQ(r.regs[6].rule, Rule::kSame);
}

TEST(CfiProgram, AdvanceLocMovesThroughThePrologue) {
  Rules r = row(kFramePointerFunction, 0x1001);
  EXPECT_EQ(r.cfa.reg, 7u);
  EXPECT_EQ(r.cfa.offset, 16);
  EXPECT_EQ(r.regs[6].rule, Rule::kOffset);
  EXPECT_EQ(r.regs[6].value, -16);
  r = row(kFramePointerFunction, 0x1003);  // still the same row
  EXPECT_EQ(r.cfa.reg, 7u);
}

TEST(CfiProgram, DefCfaRegisterRbpHoldsForTheBody) {
  for (uint64_t pc : {0x1004ull, 0x1010ull, 0x1023ull}) {
    Rules r = row(kFramePointerFunction, pc);
    EXPECT_EQ(r.cfa.reg, 6u) << std::hex << pc;
    EXPECT_EQ(r.cfa.offset, 16) << std::hex << pc;
    EXPECT_EQ(r.regs[6].value, -16);
  }
}

TEST(CfiProgram, RestoreTakesTheInitialRuleAndRestoreStateTheRemembered) {
  Rules r = row(kFramePointerFunction, 0x1024);  // after leave: the epilogue's row
  EXPECT_EQ(r.cfa.reg, 7u);
  EXPECT_EQ(r.cfa.offset, 8);
  EXPECT_EQ(r.regs[6].rule, Rule::kSame);  // restore: the CIE's rule
  r = row(kFramePointerFunction, 0x1025);  // restore_state: CFA and rbp as remembered
  EXPECT_EQ(r.cfa.reg, 6u);
  EXPECT_EQ(r.cfa.offset, 16);
  EXPECT_EQ(r.regs[6].rule, Rule::kOffset);
  EXPECT_EQ(r.regs[6].value, -16);
}

TEST(CfiProgram, ExtendedAndGnuOpcodes) {
  const Bytes insns = {
      0x11, 0x03, 0x7e,  // offset_extended_sf rbx, -2 * -8 = 16
      0x2e, 0x20,        // GNU_args_size 32: ignored
      0x2f, 0x0c, 0x03,  // GNU_negative_offset_extended r12, -(3 * -8) = 24
      0x09, 0x0d, 0x00,  // register r13 in rax
      0x07, 0x0e,        // undefined r14
      0x14, 0x0f, 0x02,  // val_offset r15, 2 * -8
      0x12, 0x07, 0x7e,  // def_cfa_sf rsp, -2 * -8 = 16
      0x05, 0x20, 0x01,  // offset_extended column 32 (xmm15): not tracked, dropped
      0x00,              // nop
  };
  Rules r = row(insns, 0x1000);
  EXPECT_EQ(r.regs[3].rule, Rule::kOffset);
  EXPECT_EQ(r.regs[3].value, 16);
  EXPECT_EQ(r.regs[12].rule, Rule::kOffset);
  EXPECT_EQ(r.regs[12].value, 24);
  EXPECT_EQ(r.regs[13].rule, Rule::kRegister);
  EXPECT_EQ(r.regs[13].value, 0);
  EXPECT_EQ(r.regs[14].rule, Rule::kUndefined);
  EXPECT_EQ(r.regs[15].rule, Rule::kValOffset);
  EXPECT_EQ(r.regs[15].value, -16);
  EXPECT_EQ(r.cfa.offset, 16);
}

TEST(CfiProgram, AdvanceLoc4) {
  const Bytes insns = {0x04, 0x00, 0x08, 0x00, 0x00, 0x0e, 0x20};  // at 0x1800: cfa offset 32
  EXPECT_EQ(row(insns, 0x17ff).cfa.offset, 8);
  EXPECT_EQ(row(insns, 0x1800).cfa.offset, 32);
}

TEST(CfiProgram, UnknownOpcodeStops) {
  for (uint8_t op : {uint8_t{0x2d}, uint8_t{0x3f}, uint8_t{0x17}}) {
    bool ok = true;
    row(Bytes{0x0e, 0x10, op}, 0x1000, &ok);
    EXPECT_FALSE(ok) << "opcode " << int(op);
  }
}

TEST(CfiProgram, UnbalancedOrTooDeepStateStops) {
  bool ok = true;
  row(Bytes{0x0b}, 0x1000, &ok);  // restore_state with nothing remembered
  EXPECT_FALSE(ok);
  row(Bytes(kMaxStates + 1, 0x0a), 0x1000, &ok);
  EXPECT_FALSE(ok);
  row(Bytes(kMaxStates, 0x0a), 0x1000, &ok);
  EXPECT_TRUE(ok);
}

TEST(CfiProgram, OtherExpressionsAreSkippedAndMarked) {
  // def_cfa_expression {breg7 8; lit1; plus}; expression rbx {breg7 0; deref};
  // val_expression r12 {breg7 0}
  const Bytes insns = {0x0f, 0x04, 0x77, 0x08, 0x31, 0x22, 0x10, 0x03, 0x03,
                       0x77, 0x00, 0x06, 0x16, 0x0c, 0x02, 0x77, 0x00};
  Rules r = row(insns, 0x1000);
  EXPECT_TRUE(r.cfa.expression);
  EXPECT_EQ(r.regs[3].rule, Rule::kExpression);
  EXPECT_EQ(r.regs[12].rule, Rule::kExpression);
  bool ok = true;
  row(Bytes{0x0f, 0x03, 0x77, 0x08, 0x31, 0x0d, 0x06}, 0x1000, &ok);  // def_cfa_register after it
  EXPECT_FALSE(ok);
  row(Bytes{0x0f, 0x09, 0x77}, 0x1000, &ok);  // an expression longer than the program
  EXPECT_FALSE(ok);
}

// What glibc's __restore_rt (a signal frame) and GCC's stack realignment say.
TEST(CfiProgram, BaseRegisterExpressionsAreEvaluated) {
  const Bytes insns = {
      0x0f, 0x04, 0x77, 0xa0, 0x01, 0x06,  // def_cfa_expression {breg7 160; deref}
      0x10, 0x10, 0x03, 0x77, 0xa8, 0x01,  // expression r16 {breg7 168}
      0x10, 0x06, 0x02, 0x76, 0x00,        // expression rbp {breg6 0}
  };
  Rules r = row(insns, 0x1000);
  EXPECT_FALSE(r.cfa.expression);
  EXPECT_TRUE(r.cfa.deref);
  EXPECT_EQ(r.cfa.reg, 7u);
  EXPECT_EQ(r.cfa.offset, 160);
  EXPECT_EQ(r.regs[16].rule, Rule::kAtRegister);
  EXPECT_EQ(r.regs[16].reg, 7);
  EXPECT_EQ(r.regs[16].value, 168);
  EXPECT_EQ(r.regs[6].rule, Rule::kAtRegister);
  EXPECT_EQ(r.regs[6].reg, 6);
  EXPECT_EQ(r.regs[6].value, 0);
  // {breg6 -8} without deref is a plain register + offset; def_cfa_offset may follow it, but not
  // a deref'ed one.
  r = row(Bytes{0x0f, 0x02, 0x76, 0x78, 0x0e, 0x20}, 0x1000);
  EXPECT_FALSE(r.cfa.deref);
  EXPECT_EQ(r.cfa.reg, 6u);
  EXPECT_EQ(r.cfa.offset, 32);
  bool ok = true;
  row(Bytes{0x0f, 0x03, 0x76, 0x78, 0x06, 0x0e, 0x20}, 0x1000, &ok);
  EXPECT_FALSE(ok);
}

TEST(CfiProgram, TruncatedOperandStops) {
  bool ok = true;
  row(Bytes{0x0c, 0x07}, 0x1000, &ok);
  EXPECT_FALSE(ok);
}

// A small .eh_frame_hdr + .eh_frame: one CIE "zR" and two FDEs (for 0x100 bytes at `code` and
// 0x80 bytes at code + 0x200), the table data-relative sdata4.
struct Image {
  alignas(8) uint8_t bytes[512] = {};
  size_t hdr = 0, frame = 0, size = 0;
  uint64_t code = 0;

  Image() {
    code = reinterpret_cast<uint64_t>(bytes) + 0x10000;  // never read: only compared
    Bytes b;
    // .eh_frame_hdr
    b = {1, kPePcrel | kPeSdata4, kPeUdata4, kPeDatarel | kPeSdata4};
    const size_t frame_ptr_at = b.size();
    put<int32_t>(b, 0);  // patched
    put<uint32_t>(b, 2);
    const size_t table_at = b.size();
    b.resize(b.size() + 16);
    frame = b.size();
    // CIE
    const size_t cie = b.size();
    Bytes body = {0, 0, 0, 0, 1, 'z', 'R', 0, 1, 0x78, 16, 1, kPePcrel | kPeSdata4};
    body.insert(body.end(), kCieInsns.begin(), kCieInsns.end());
    while ((body.size() + 4) % 8) body.push_back(0);  // DW_CFA_nop padding
    put<uint32_t>(b, static_cast<uint32_t>(body.size()));
    b.insert(b.end(), body.begin(), body.end());
    size_t fdes[2];
    const uint64_t starts[2] = {code, code + 0x200}, lengths[2] = {0x100, 0x80};
    for (int i = 0; i < 2; ++i) {
      fdes[i] = b.size();
      put<uint32_t>(b, 4 + 4 + 4 + 1 + 3);  // length
      put<uint32_t>(b, static_cast<uint32_t>(b.size() - cie));
      const uint64_t field = reinterpret_cast<uint64_t>(bytes) + b.size();
      put<int32_t>(b, static_cast<int32_t>(starts[i] - field));
      put<uint32_t>(b, static_cast<uint32_t>(lengths[i]));
      b.push_back(0);                         // augmentation data length
      b.insert(b.end(), {0x41, 0x0e, 0x10});  // advance 1; def_cfa_offset 16
    }
    put<uint32_t>(b, 0);  // terminator
    const auto base = reinterpret_cast<uint64_t>(bytes);
    auto patch32 = [&](size_t at, int64_t v) {
      const int32_t x = static_cast<int32_t>(v);
      std::memcpy(&b[at], &x, 4);
    };
    patch32(frame_ptr_at, static_cast<int64_t>(frame - frame_ptr_at));
    for (int i = 0; i < 2; ++i) {
      patch32(table_at + 8 * i, static_cast<int64_t>(starts[i] - base));
      patch32(table_at + 8 * i + 4, static_cast<int64_t>(fdes[i]));
    }
    size = b.size();
    std::memcpy(bytes, b.data(), b.size());
  }
  const uint8_t *lo() const { return bytes; }
  const uint8_t *hi() const { return bytes + size; }
};

TEST(EhFrameHdr, BinarySearchFindsTheCoveringFde) {
  Image img;
  Fde fde;
  ASSERT_TRUE(find_fde(img.lo(), img.lo(), img.hi(), img.code + 0x10, fde));
  EXPECT_EQ(fde.pc_begin, img.code);
  EXPECT_EQ(fde.pc_end, img.code + 0x100);
  EXPECT_EQ(fde.cie.ra_column, 16u);
  EXPECT_EQ(fde.cie.data_align, -8);
  Rules r;
  ASSERT_TRUE(rules_at(fde, img.code + 1, r));
  EXPECT_EQ(r.cfa.offset, 16);
  ASSERT_TRUE(find_fde(img.lo(), img.lo(), img.hi(), img.code + 0x27f, fde));
  EXPECT_EQ(fde.pc_begin, img.code + 0x200);
}

TEST(EhFrameHdr, PcsOutsideEveryFdeAreNotFound) {
  Image img;
  Fde fde;
  EXPECT_FALSE(find_fde(img.lo(), img.lo(), img.hi(), img.code - 1, fde));
  EXPECT_FALSE(find_fde(img.lo(), img.lo(), img.hi(), img.code + 0x100, fde));  // the gap
  EXPECT_FALSE(find_fde(img.lo(), img.lo(), img.hi(), img.code + 0x280, fde));
}

TEST(EhFrameHdr, NothingIsReadOutsideTheObject) {
  Image img;
  Fde fde;
  // A range that ends inside the table, or inside the FDE the table points to.
  EXPECT_FALSE(find_fde(img.lo(), img.lo(), img.lo() + 16, img.code + 0x10, fde));
  EXPECT_FALSE(find_fde(img.lo(), img.lo(), img.hi() - 20, img.code + 0x210, fde));
  EXPECT_FALSE(find_fde(img.lo(), img.lo() + 1, img.hi(), img.code + 0x10, fde));
}

TEST(EhFrameHdr, UnsupportedTableEncodingIsRefused) {
  Image img;
  img.bytes[3] = kPeUleb128;  // not fixed-size: no binary search
  Fde fde;
  EXPECT_FALSE(find_fde(img.lo(), img.lo(), img.hi(), img.code + 0x10, fde));
  img.bytes[3] = 0x20 | kPeSdata4;  // textrel
  EXPECT_FALSE(find_fde(img.lo(), img.lo(), img.hi(), img.code + 0x10, fde));
}

__attribute__((noinline)) int some_function(int x) {
  return x * 3 + 1;
}

TEST(EhFrameHdr, FindsThisBinarysOwnFunctions) {
  const auto pc = reinterpret_cast<uint64_t>(&some_function);
  Object obj;
  ASSERT_TRUE(find_object(pc, obj));
  ASSERT_NE(obj.eh_frame_hdr, nullptr);
  Fde fde;
  ASSERT_TRUE(find_fde(obj.eh_frame_hdr, obj.lo, obj.hi, pc, fde));
  EXPECT_LE(fde.pc_begin, pc);
  EXPECT_GT(fde.pc_end, pc);
  Rules r;
  ASSERT_TRUE(rules_at(fde, pc, r));  // a function's entry: CFA = rsp + 8, ra at CFA - 8
  EXPECT_EQ(r.cfa.reg, 7u);
  EXPECT_EQ(r.cfa.offset, 8);
  EXPECT_EQ(r.regs[16].rule, Rule::kOffset);
  EXPECT_EQ(r.regs[16].value, -8);
  EXPECT_FALSE(find_object(0x10, obj));
}

}  // namespace
}  // namespace usprobe::cfi
