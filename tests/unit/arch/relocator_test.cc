// Relocator tests, one per instruction class: input bytes with their disassembly, a destination
// near or far, and what must hold at the new address. Each relocated branch or memory operand is
// decoded again with Zydis and must reach the same absolute address as the original; where the
// exact output is the clearest statement it is checked byte for byte. Calls, and a few real libc
// prologues, are executed from RWX pages.
#include "arch/x86_64/relocator.h"

#include <Zydis/Zydis.h>
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "arch/x86_64/code_writer.h"
#include "core/arch.h"

namespace usprobe::x86 {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr uint64_t kGB = 1ull << 30;
constexpr uint64_t kSrc = 0x7f12'3456'0000;  // where the "original" code is mapped
constexpr uint64_t kNear = kSrc + 0x10'0000;
constexpr uint64_t kFar1G = kSrc + kGB;
constexpr uint64_t kFar3G = kSrc + 3 * kGB;

// ---- Decoding the output ----------------------------------------------------------------------

struct Insn {
  ZydisDecodedInstruction ins;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
};

std::optional<Insn> Decode(std::span<const uint8_t> code, size_t off) {
  ZydisDecoder dec;
  ZydisDecoderInit(&dec, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
  Insn d;
  if (off >= code.size() || !ZYAN_SUCCESS(ZydisDecoderDecodeFull(&dec, code.data() + off,
                                                                 code.size() - off, &d.ins, d.ops)))
    return std::nullopt;
  return d;
}

std::optional<uint64_t> BranchTarget(const Insn &d, uint64_t addr) {
  for (uint8_t i = 0; i < d.ins.operand_count; ++i) {
    uint64_t t = 0;
    if (d.ops[i].type == ZYDIS_OPERAND_TYPE_IMMEDIATE && d.ops[i].imm.is_relative &&
        ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&d.ins, &d.ops[i], addr, &t)))
      return t;
  }
  return std::nullopt;
}

std::optional<uint64_t> RipTarget(const Insn &d, uint64_t addr) {
  for (uint8_t i = 0; i < d.ins.operand_count; ++i) {
    uint64_t t = 0;
    if (d.ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY && d.ops[i].mem.base == ZYDIS_REGISTER_RIP &&
        ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&d.ins, &d.ops[i], addr, &t)))
      return t;
  }
  return std::nullopt;
}

uint64_t ReadU64(const Bytes &code, size_t at) {
  uint64_t v = 0;
  if (at + 8 <= code.size()) std::memcpy(&v, &code[at], 8);
  return v;
}

// `jmp *0(%rip); .quad target` at `at`?
bool IsAbsoluteJmp(const Bytes &code, size_t at) {
  static const uint8_t kForm[] = {0xFF, 0x25, 0, 0, 0, 0};
  return at + 14 <= code.size() && std::memcmp(&code[at], kForm, sizeof kForm) == 0;
}

// Whether `d` is part of the push of a return address that an emulated call emits.
bool IsReturnAddressPush(const Insn &d) {
  const auto &op0 = d.ops[0];
  switch (d.ins.mnemonic) {
    case ZYDIS_MNEMONIC_PUSH:
      return op0.type == ZYDIS_OPERAND_TYPE_IMMEDIATE;
    case ZYDIS_MNEMONIC_LEA:
      return op0.type == ZYDIS_OPERAND_TYPE_REGISTER && op0.reg.value == ZYDIS_REGISTER_RSP;
    case ZYDIS_MNEMONIC_MOV:
      return op0.type == ZYDIS_OPERAND_TYPE_MEMORY && op0.mem.base == ZYDIS_REGISTER_RSP &&
             d.ops[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE;
    default:
      return false;
  }
}

// Where control goes when the relocated branch at `off` of `code` (placed at `base`) is taken in
// the sense of the original instruction. Understands what the relocator emits: jmp/jcc rel32,
// `jmp *0(%rip); .quad target`, the inverted jcc rel8 over that, and an emulated call's push.
uint64_t FollowBranch(const Bytes &code, uint64_t base, size_t off) {
  for (int guard = 0; guard < 8; ++guard) {
    auto d = Decode(code, off);
    if (!d) break;
    size_t next = off + d->ins.length;
    if (IsReturnAddressPush(*d)) {
      off = next;
      continue;
    }
    if (IsAbsoluteJmp(code, off)) return ReadU64(code, off + 6);
    if (auto t = BranchTarget(*d, base + off)) {
      if (d->ins.meta.category == ZYDIS_CATEGORY_COND_BR && *t == base + next + 14 &&
          IsAbsoluteJmp(code, next))
        return ReadU64(
            code, next + 6);  // the inverted jcc skips the jmp when the original would not branch
      return *t;
    }
    break;
  }
  ADD_FAILURE() << "no branch at relocated offset " << off;
  return 0;
}

// The 64-bit value that the push sequence at `off` (emitted for an emulated call) pushes.
std::optional<uint64_t> PushedValue(const Bytes &code, size_t off) {
  uint64_t lo = 0, hi = 0;
  bool have_lo = false, have_hi = false;
  for (int guard = 0; guard < 4; ++guard) {
    auto d = Decode(code, off);
    if (!d || !IsReturnAddressPush(*d)) break;
    if (d->ins.mnemonic == ZYDIS_MNEMONIC_PUSH) return static_cast<uint64_t>(d->ops[0].imm.value.s);
    if (d->ins.mnemonic == ZYDIS_MNEMONIC_MOV) {
      auto v = static_cast<uint32_t>(d->ops[1].imm.value.u);
      if (d->ops[0].mem.disp.value == 0) lo = v, have_lo = true;
      if (d->ops[0].mem.disp.value == 4) hi = v, have_hi = true;
    }
    off += d->ins.length;
  }
  if (have_lo && have_hi) return lo | hi << 32;
  return std::nullopt;
}

// For every instruction of `rel`: direct branches and calls reach the original target, RIP-
// relative operands address the original location, calls push the original return address, and
// everything else is the original bytes.
void ExpectSameMeaning(std::span<const uint8_t> src, uint64_t src_addr, const Relocation &rel,
                       uint64_t dst_addr) {
  size_t end = 0;
  for (auto [o, r] : rel.map) {
    auto od = Decode(src, o);
    ASSERT_TRUE(od) << "original offset " << o;
    end = o + od->ins.length;
    uint64_t opc = src_addr + o;
    SCOPED_TRACE("original offset " + std::to_string(o) + ", relocated offset " +
                 std::to_string(r));
    bool is_call = od->ins.mnemonic == ZYDIS_MNEMONIC_CALL;
    if (is_call) {
      EXPECT_EQ(PushedValue(rel.code, r), opc + od->ins.length);
    }
    if (auto t = BranchTarget(*od, opc)) {
      EXPECT_EQ(FollowBranch(rel.code, dst_addr, r), *t);
      if (od->ins.meta.category == ZYDIS_CATEGORY_COND_BR) {
        // Same condition: jcc rel32 with the same condition code, or the inverted one over an
        // absolute jmp.
        auto rd = Decode(rel.code, r);
        ASSERT_TRUE(rd);
        bool inverted = IsAbsoluteJmp(rel.code, r + rd->ins.length);
        EXPECT_EQ(rd->ins.opcode & 0xF, (od->ins.opcode & 0xF) ^ (inverted ? 1 : 0));
      }
    } else if (auto m = RipTarget(*od, opc)) {
      // The first RIP-relative instruction of the relocated sequence (after a call's push).
      std::optional<uint64_t> got;
      for (size_t at = r; !got && at < rel.code.size();) {
        auto d = Decode(rel.code, at);
        if (!d) break;
        got = RipTarget(*d, dst_addr + at);
        at += d->ins.length;
      }
      EXPECT_EQ(got, m);
    } else if (!is_call) {
      ASSERT_LE(r + od->ins.length, rel.code.size());
      EXPECT_TRUE(
          std::equal(src.begin() + o, src.begin() + o + od->ins.length, rel.code.begin() + r))
          << "instruction not copied unchanged";
    }
  }
  EXPECT_EQ(rel.consumed, end);
}

using Map = std::vector<std::pair<uint32_t, uint32_t>>;

Relocation MustRelocate(const Bytes &src, uint64_t src_addr, size_t min_len, uint64_t dst) {
  auto r = relocate(src, src_addr, min_len, dst);
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
  return r ? *r : Relocation{};
}

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// ---- Executing relocated code -----------------------------------------------------------------

// An anonymous read-write-execute mapping, exactly at `hint` when one is given.
class CodePage {
 public:
  explicit CodePage(uint64_t hint = 0, size_t len = 0x2000) : len_(len) {
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | (hint ? MAP_FIXED_NOREPLACE : 0);
    void *p =
        mmap(reinterpret_cast<void *>(hint), len, PROT_READ | PROT_WRITE | PROT_EXEC, flags, -1, 0);
    if (p != MAP_FAILED && (!hint || reinterpret_cast<uint64_t>(p) == hint))
      p_ = static_cast<uint8_t *>(p);
    else if (p != MAP_FAILED)
      munmap(p, len);
  }
  ~CodePage() {
    if (p_) munmap(p_, len_);
  }
  CodePage(const CodePage &) = delete;
  CodePage &operator=(const CodePage &) = delete;

  explicit operator bool() const { return p_ != nullptr; }
  uint8_t *data() const { return p_; }
  uint64_t addr() const { return reinterpret_cast<uint64_t>(p_); }
  void put(size_t at, const Bytes &b) { std::memcpy(p_ + at, b.data(), b.size()); }
  void put_u64(size_t at, uint64_t v) { std::memcpy(p_ + at, &v, 8); }

 private:
  size_t len_;
  uint8_t *p_ = nullptr;
};

// A page `distance` bytes above or below `near` (or the first free page after that).
std::unique_ptr<CodePage> PageAt(uint64_t near, int64_t distance) {
  for (int i = 0; i < 64; ++i) {
    uint64_t hint = (near + distance + static_cast<uint64_t>(i) * 0x10'0000) & ~uint64_t{0xFFF};
    auto p = std::make_unique<CodePage>(hint);
    if (*p) return p;
  }
  return nullptr;
}

// Places the relocated code at `at` followed, when it falls through, by the jump back to
// `resume`, then by an int3 that catches a return into the copy.
void Install(const Relocation &rel, uint8_t *at, uint64_t resume) {
  CodeWriter w(reinterpret_cast<uint64_t>(at));
  w.put_bytes(rel.code.data(), rel.code.size());
  if (rel.falls_through) w.put_jmp(resume);
  w.put_int3();
  std::memcpy(at, w.bytes().data(), w.size());
}

using Fn1 = long (*)(long);
using Fn2 = long (*)(long, long);

// ---- RIP-relative operands --------------------------------------------------------------------

TEST(Relocator, RipRelativeLoadKeepsAbsoluteTarget) {
  const Bytes src = {
      0x48, 0x8b, 0x05, 0x78, 0x56, 0x34, 0x12,  // mov 0x12345678(%rip),%rax
  };
  auto near = MustRelocate(src, kSrc, 5, kNear);
  // target kSrc + 7 + 0x12345678 seen from kNear + 7: 0x12345678 - 0x100000.
  EXPECT_EQ(near.code, (Bytes{0x48, 0x8b, 0x05, 0x78, 0x56, 0x24, 0x12}));
  EXPECT_EQ(near.consumed, 7u);
  EXPECT_EQ(near.map, (Map{{0, 0}}));
  EXPECT_TRUE(near.falls_through);
  ExpectSameMeaning(src, kSrc, near, kNear);

  auto far = MustRelocate(src, kSrc, 5, kFar1G);
  ASSERT_EQ(far.code.size(), 7u);
  ExpectSameMeaning(src, kSrc, far, kFar1G);
  auto below = MustRelocate(src, kSrc, 5, kSrc - kGB);
  ExpectSameMeaning(src, kSrc, below, kSrc - kGB);
}

TEST(Relocator, RipRelativeLoadExecutesAtNewAddress) {
  CodePage orig;
  ASSERT_TRUE(orig);
  orig.put(0, {
                  0x48, 0x8b, 0x05, 0xf9, 0x00, 0x00, 0x00,  // mov 0xf9(%rip),%rax  (= orig+0x100)
                  0xc3,                                      // ret
              });
  orig.put_u64(0x100, 0x1122334455667788);
  auto tramp = PageAt(orig.addr(), kGB);
  ASSERT_TRUE(tramp);
  auto rel = MustRelocate(Bytes(orig.data(), orig.data() + 8), orig.addr(), 5, tramp->addr());
  ASSERT_EQ(rel.consumed, 7u);
  Install(rel, tramp->data(), orig.addr() + rel.consumed);
  EXPECT_EQ(reinterpret_cast<Fn1>(tramp->data())(0), 0x1122334455667788);
}

TEST(Relocator, RipRelativeLeaKeepsTarget) {
  const Bytes src = {
      0x48, 0x8d, 0x3d, 0x3c, 0x2f, 0x00, 0x00,  // lea 0x2f3c(%rip),%rdi
      0x4c, 0x8d, 0x05, 0x00, 0xf0, 0xff, 0xff,  // lea -0x1000(%rip),%r8
  };
  for (uint64_t dst : {kNear, kFar1G, kSrc - kGB}) {
    auto rel = MustRelocate(src, kSrc, 8, dst);
    EXPECT_EQ(rel.consumed, 14u);
    EXPECT_EQ(rel.map, (Map{{0, 0}, {7, 7}}));
    ExpectSameMeaning(src, kSrc, rel, dst);
  }
}

TEST(Relocator, RipRelativeCmpWithImmediateKeepsTarget) {
  // The displacement is relative to the end of the instruction, after the immediate.
  const Bytes src = {
      0x48, 0x81, 0x3d, 0x00, 0x10, 0x00, 0x00, 0x78, 0x56, 0x34,
      0x12,                                                        // cmpq $0x12345678,0x1000(%rip)
      0x80, 0x3d, 0xf0, 0x0f, 0x00, 0x00, 0x00,                    // cmpb $0x0,0xff0(%rip)
      0xc7, 0x05, 0x10, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,  // movl $0x1,0x10(%rip)
  };
  auto rel = MustRelocate(src, kSrc, src.size(), kFar1G);
  EXPECT_EQ(rel.consumed, src.size());
  EXPECT_EQ(rel.map, (Map{{0, 0}, {11, 11}, {18, 18}}));
  ExpectSameMeaning(src, kSrc, rel, kFar1G);
  // Immediates are untouched.
  ASSERT_EQ(rel.code.size(), src.size());
  EXPECT_EQ(Bytes(rel.code.begin() + 7, rel.code.begin() + 11), (Bytes{0x78, 0x56, 0x34, 0x12}));
  EXPECT_EQ(rel.code[17], 0x00);
  EXPECT_EQ(Bytes(rel.code.begin() + 24, rel.code.end()), (Bytes{0x01, 0x00, 0x00, 0x00}));
  // Exact target check for the first one: kSrc + 11 + 0x1000 seen from kFar1G + 11.
  auto d = Decode(rel.code, 0);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->ins.raw.disp.value, static_cast<int64_t>(0x1000) - static_cast<int64_t>(kGB));
}

TEST(Relocator, SseRipRelativeLoad) {
  const Bytes src = {
      0xf2, 0x0f, 0x10, 0x05, 0x00, 0x01, 0x00, 0x00,              // movsd 0x100(%rip),%xmm0
      0x66, 0x0f, 0x6f, 0x0d, 0x00, 0x02, 0x00, 0x00,              // movdqa 0x200(%rip),%xmm1
      0xc5, 0xfa, 0x6f, 0x15, 0x00, 0x03, 0x00, 0x00,              // vmovdqu 0x300(%rip),%xmm2
      0x66, 0x0f, 0x3a, 0x0f, 0x1d, 0x00, 0x04, 0x00, 0x00, 0x08,  // palignr $0x8,0x400(%rip),%xmm3
  };
  for (uint64_t dst : {kNear, kFar1G}) {
    auto rel = MustRelocate(src, kSrc, src.size(), dst);
    EXPECT_EQ(rel.map, (Map{{0, 0}, {8, 8}, {16, 16}, {24, 24}}));
    ExpectSameMeaning(src, kSrc, rel, dst);
    ASSERT_EQ(rel.code.size(), src.size());
    EXPECT_EQ(rel.code.back(), 0x08);  // palignr's immediate
  }
}

TEST(Relocator, JmpThroughRipRelativePointerKeepsSlot) {
  const Bytes src = {
      0xff, 0x25, 0x00, 0x10, 0x00, 0x00,  // jmp *0x1000(%rip)
  };
  auto rel = MustRelocate(src, kSrc, 5, kFar1G);
  ASSERT_EQ(rel.code.size(), 6u);
  EXPECT_FALSE(rel.falls_through);
  ExpectSameMeaning(src, kSrc, rel, kFar1G);
}

TEST(Relocator, RipTargetOutOfRangeIsRefused) {
  const Bytes src = {
      0x48, 0x8d, 0x3d, 0x3c, 0x2f, 0x00, 0x00,  // lea 0x2f3c(%rip),%rdi
  };
  for (uint64_t dst : {kFar3G, kSrc - 3 * kGB}) {
    auto r = relocate(src, kSrc, 5, dst);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, ERANGE);
    const auto &msg = r.error().message;
    EXPECT_NE(msg.find("lea 0x2f3c(%rip)"), std::string::npos) << msg;
    EXPECT_NE(msg.find(Hex(kSrc)), std::string::npos) << msg;
    EXPECT_NE(msg.find("beyond +-2 GB of the trampoline"), std::string::npos) << msg;
  }
}

// ---- Branches -----------------------------------------------------------------------------------

TEST(Relocator, JccRel8WidensToRel32SameTarget) {
  const Bytes src = {
      0x74, 0x10,        // je .+0x12
      0x48, 0x89, 0xe5,  // mov %rsp,%rbp
  };
  auto rel = MustRelocate(src, kSrc, 5, kNear);
  // je rel32 to kSrc + 0x12 from kNear + 6: 0x12 - 6 - 0x100000 = 0xfff0000c.
  EXPECT_EQ(rel.code, (Bytes{0x0f, 0x84, 0x0c, 0x00, 0xf0, 0xff, 0x48, 0x89, 0xe5}));
  EXPECT_EQ(rel.consumed, 5u);
  EXPECT_EQ(rel.map, (Map{{0, 0}, {2, 6}}));
  EXPECT_TRUE(rel.falls_through);
  ExpectSameMeaning(src, kSrc, rel, kNear);

  // Every condition keeps its condition.
  for (uint8_t cc = 0; cc < 16; ++cc) {
    const Bytes jcc = {static_cast<uint8_t>(0x70 | cc), 0x10};
    auto r = MustRelocate(jcc, kSrc, 2, kFar1G);
    ASSERT_EQ(r.code.size(), 6u);
    EXPECT_EQ(r.code[1], 0x80 | cc);
    ExpectSameMeaning(jcc, kSrc, r, kFar1G);
  }
}

TEST(Relocator, JccRel32) {
  const Bytes src = {
      0x0f, 0x85, 0x00, 0x01, 0x00, 0x00,  // jne .+0x106
  };
  auto near = MustRelocate(src, kSrc, 5, kNear);
  ASSERT_EQ(near.code.size(), 6u);
  EXPECT_EQ(near.code[1], 0x85);
  EXPECT_TRUE(near.falls_through);
  ExpectSameMeaning(src, kSrc, near, kNear);

  // Out of rel32 range: the inverted condition skips an absolute jmp.
  auto far = MustRelocate(src, kSrc, 5, kFar3G);
  Bytes want = {0x74, 0x0e, 0xff, 0x25, 0x00, 0x00, 0x00, 0x00};  // je .+16; jmp *0(%rip)
  uint64_t target = kSrc + 0x106;
  want.insert(want.end(), reinterpret_cast<uint8_t *>(&target),
              reinterpret_cast<uint8_t *>(&target) + 8);
  EXPECT_EQ(far.code, want);
  EXPECT_TRUE(far.falls_through);
  ExpectSameMeaning(src, kSrc, far, kFar3G);
}

TEST(Relocator, JmpRel8) {
  const Bytes src = {
      0xeb, 0x10,        // jmp .+0x12
      0x90, 0x90, 0x90,  // nop; nop; nop
  };
  auto rel = MustRelocate(src, kSrc, 2, kNear);
  ASSERT_EQ(rel.code.size(), 5u);
  EXPECT_EQ(rel.code[0], 0xe9);
  EXPECT_EQ(rel.consumed, 2u);
  EXPECT_FALSE(rel.falls_through);
  ExpectSameMeaning(src, kSrc, rel, kNear);

  // When the window goes on past the jmp, the last instruction decides.
  auto longer = MustRelocate(src, kSrc, 5, kNear);
  EXPECT_EQ(longer.map, (Map{{0, 0}, {2, 5}, {3, 6}, {4, 7}}));
  EXPECT_TRUE(longer.falls_through);
  ExpectSameMeaning(src, kSrc, longer, kNear);
}

TEST(Relocator, JmpRel32) {
  const Bytes src = {
      0xe9, 0x00, 0x10, 0x00, 0x00,  // jmp .+0x1005
  };
  auto rel = MustRelocate(src, kSrc, 5, kNear);
  // kSrc + 0x1005 from kNear + 5: 0x1000 - 0x100000 = 0xfff01000.
  EXPECT_EQ(rel.code, (Bytes{0xe9, 0x00, 0x10, 0xf0, 0xff}));
  EXPECT_FALSE(rel.falls_through);
  ExpectSameMeaning(src, kSrc, rel, kNear);
}

TEST(Relocator, JmpFarTargetUsesAbsoluteForm) {
  const Bytes src = {
      0xe9, 0x00, 0x10, 0x00, 0x00,  // jmp .+0x1005
  };
  auto rel = MustRelocate(src, kSrc, 5, kFar3G);
  Bytes want = {0xff, 0x25, 0x00, 0x00, 0x00, 0x00};  // jmp *0(%rip)
  uint64_t target = kSrc + 0x1005;
  want.insert(want.end(), reinterpret_cast<uint8_t *>(&target),
              reinterpret_cast<uint8_t *>(&target) + 8);
  EXPECT_EQ(rel.code, want);
  EXPECT_FALSE(rel.falls_through);
  ExpectSameMeaning(src, kSrc, rel, kFar3G);
}

TEST(Relocator, BranchIntoWindowIsRefused) {
  const Bytes src = {
      0x74, 0x02,        // je .+4 (inside the window)
      0x90,              // nop
      0x90,              // nop
      0x48, 0x89, 0xe5,  // mov %rsp,%rbp
  };
  auto r = relocate(src, kSrc, 5, kNear);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_NE(r.error().message.find("patched window"), std::string::npos) << r.error().message;
  // Zydis spells je as jz.
  EXPECT_NE(r.error().message.find("jz " + Hex(kSrc + 4)), std::string::npos) << r.error().message;
}

TEST(Relocator, LoopIsRefused) {
  const std::pair<Bytes, const char *> cases[] = {
      {{0xe2, 0x10}, "loop"},                            // loop .+0x12
      {{0xe1, 0x10}, "loope"},                           // loope .+0x12
      {{0xe3, 0x10}, "jrcxz"},                           // jrcxz .+0x12
      {{0xc7, 0xf8, 0x00, 0x01, 0x00, 0x00}, "xbegin"},  // xbegin .+0x106
      {{0xc6, 0xf8, 0x01}, "xabort"},                    // xabort $0x1
  };
  for (const auto &[src, name] : cases) {
    auto r = relocate(src, kSrc, 1, kNear);
    ASSERT_FALSE(r.has_value()) << name;
    EXPECT_EQ(r.error().code, EINVAL);
    EXPECT_NE(r.error().message.find(name), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find(Hex(kSrc)), std::string::npos) << r.error().message;
  }
}

// ---- Calls ------------------------------------------------------------------------------------

// orig+0x100: the callee, `lea 0x7(%rdi),%rax; ret`.
const Bytes kCallee = {0x48, 0x8d, 0x47, 0x07, 0xc3};

// Relocates `call callee; add $100,%rax; ret` from `orig` to `tramp` and runs it: 1 + 7 + 100
// comes back only if the callee returned to the original `add`, not into the relocated copy.
void ExpectCallReturnsToOriginal(CodePage &orig, uint8_t *tramp) {
  orig.put(0, {
                  0xe8, 0xfb, 0x00, 0x00, 0x00,  // call .+0x100
                  0x48, 0x83, 0xc0, 0x64,        // add $0x64,%rax
                  0xc3,                          // ret
              });
  orig.put(0x100, kCallee);
  Bytes src(orig.data(), orig.data() + 10);
  auto tramp_addr = reinterpret_cast<uint64_t>(tramp);
  auto rel = MustRelocate(src, orig.addr(), 5, tramp_addr);
  EXPECT_EQ(rel.consumed, 5u);
  EXPECT_FALSE(rel.falls_through);
  ExpectSameMeaning(src, orig.addr(), rel, tramp_addr);
  Install(rel, tramp, orig.addr() + 5);
  EXPECT_EQ(reinterpret_cast<Fn1>(tramp)(1), 108);
}

TEST(Relocator, CallRel32AsLastInstructionReturnsToOriginalCode) {
  {
    SCOPED_TRACE("near, high addresses: lea/movl push, jmp rel32");
    CodePage orig;
    ASSERT_TRUE(orig);
    ExpectCallReturnsToOriginal(orig, orig.data() + 0x1000);
  }
  {
    SCOPED_TRACE("below 2 GB: push $imm32, jmp rel32");
    std::unique_ptr<CodePage> low;
    for (uint64_t hint = 0x1000'0000; !low && hint < 0x4000'0000; hint += 0x100'0000) {
      auto p = std::make_unique<CodePage>(hint);
      if (*p) low = std::move(p);
    }
    ASSERT_TRUE(low);
    ExpectCallReturnsToOriginal(*low, low->data() + 0x1000);
    EXPECT_EQ(low->data()[0x1000], 0x68);  // push $imm32
  }
  {
    SCOPED_TRACE("trampoline 8 GB away: jmp *0(%rip)");
    CodePage orig;
    ASSERT_TRUE(orig);
    auto far = PageAt(orig.addr(), 8 * static_cast<int64_t>(kGB));
    ASSERT_TRUE(far);
    ExpectCallReturnsToOriginal(orig, far->data());
  }
}

TEST(Relocator, CallThroughRegisterAsLastReturnsToOriginalCode) {
  CodePage orig;
  ASSERT_TRUE(orig);
  orig.put(0, {
                  0xff, 0xd6,              // call *%rsi
                  0x48, 0x83, 0xc0, 0x64,  // add $0x64,%rax
                  0xc3,                    // ret
              });
  orig.put(0x100, kCallee);
  auto rel =
      MustRelocate(Bytes(orig.data(), orig.data() + 2), orig.addr(), 2, orig.addr() + 0x1000);
  EXPECT_FALSE(rel.falls_through);
  EXPECT_EQ(PushedValue(rel.code, 0), orig.addr() + 2);
  Install(rel, orig.data() + 0x1000, orig.addr() + 2);
  auto callee = static_cast<long>(orig.addr() + 0x100);
  EXPECT_EQ(reinterpret_cast<Fn2>(orig.data() + 0x1000)(1, callee), 108);
}

TEST(Relocator, CallThroughRipRelativePointerAsLastReturnsToOriginalCode) {
  CodePage orig;
  ASSERT_TRUE(orig);
  orig.put(0, {
                  0xff, 0x15, 0xfa, 0x01, 0x00, 0x00,  // call *0x1fa(%rip)  (pointer at orig+0x200)
                  0x48, 0x83, 0xc0, 0x64,              // add $0x64,%rax
                  0xc3,                                // ret
              });
  orig.put(0x100, kCallee);
  orig.put_u64(0x200, orig.addr() + 0x100);
  auto tramp = PageAt(orig.addr(), kGB);
  ASSERT_TRUE(tramp);
  Bytes src(orig.data(), orig.data() + 6);
  auto rel = MustRelocate(src, orig.addr(), 5, tramp->addr());
  EXPECT_FALSE(rel.falls_through);
  ExpectSameMeaning(src, orig.addr(), rel, tramp->addr());
  Install(rel, tramp->data(), orig.addr() + 6);
  EXPECT_EQ(reinterpret_cast<Fn1>(tramp->data())(1), 108);
}

TEST(Relocator, CallThroughStackSlotAsLastReadsTheSameSlot) {
  // The emulated call pushes its return address before it jumps through the operand, so an
  // operand that reads %rsp must be re-encoded 8 bytes higher.
  struct Case {
    Bytes code;
    size_t window;
  };
  const Case cases[] = {
      {{
           0x56,                    // push %rsi
           0xff, 0x14, 0x24,        // call *(%rsp)
           0x59,                    // pop %rcx
           0x48, 0x83, 0xc0, 0x64,  // add $0x64,%rax
           0xc3,                    // ret
       },
       4},
      {{
           0x56,                    // push %rsi
           0x57,                    // push %rdi
           0xff, 0x54, 0x24, 0x08,  // call *0x8(%rsp)
           0x5f,                    // pop %rdi
           0x5e,                    // pop %rsi
           0x48, 0x83, 0xc0, 0x64,  // add $0x64,%rax
           0xc3,                    // ret
       },
       6},
  };
  for (const auto &c : cases) {
    CodePage orig;
    ASSERT_TRUE(orig);
    orig.put(0, c.code);
    orig.put(0x100, kCallee);
    auto rel = MustRelocate(c.code, orig.addr(), c.window, orig.addr() + 0x1000);
    ASSERT_EQ(rel.consumed, c.window);
    EXPECT_FALSE(rel.falls_through);
    Install(rel, orig.data() + 0x1000, orig.addr() + c.window);
    auto callee = static_cast<long>(orig.addr() + 0x100);
    EXPECT_EQ(reinterpret_cast<Fn2>(orig.data() + 0x1000)(1, callee), 108);
  }
}

TEST(Relocator, CallNotLastIsRefused) {
  const Bytes cases[] = {
      {0xe8, 0x00, 0x01, 0x00, 0x00, 0x90},        // call .+0x105; nop
      {0xff, 0xd0, 0x90, 0x90, 0x90, 0x90},        // call *%rax; nop...
      {0xff, 0x15, 0x00, 0x01, 0x00, 0x00, 0x90},  // call *0x100(%rip); nop
  };
  for (const auto &src : cases) {
    auto r = relocate(src, kSrc, src.size(), kNear);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, EINVAL);
    const auto &msg = r.error().message;
    EXPECT_NE(msg.find("call"), std::string::npos) << msg;
    EXPECT_NE(msg.find(Hex(kSrc)), std::string::npos) << msg;
    EXPECT_NE(msg.find("patched window"), std::string::npos) << msg;
  }
}

// ---- Copied unchanged ---------------------------------------------------------------------------

TEST(Relocator, Endbr64CopiedUnchanged) {
  const Bytes src = {
      0xf3, 0x0f, 0x1e, 0xfa,  // endbr64
      0x55,                    // push %rbp
      0x48, 0x89, 0xe5,        // mov %rsp,%rbp
  };
  for (uint64_t dst : {kNear, kFar3G}) {
    auto rel = MustRelocate(src, kSrc, 6, dst);
    EXPECT_EQ(rel.code, src);
    EXPECT_EQ(rel.consumed, 8u);
    EXPECT_EQ(rel.map, (Map{{0, 0}, {4, 4}, {5, 5}}));
    EXPECT_TRUE(rel.falls_through);
  }
}

TEST(Relocator, PushMovPrologueCopied) {
  const Bytes src = {
      0x55,                    // push %rbp
      0x48, 0x89, 0xe5,        // mov %rsp,%rbp
      0x41, 0x57,              // push %r15
      0x48, 0x83, 0xec, 0x20,  // sub $0x20,%rsp
  };
  auto rel = MustRelocate(src, kSrc, 5, kFar3G);
  EXPECT_EQ(rel.consumed, 6u);
  EXPECT_EQ(rel.code, Bytes(src.begin(), src.begin() + 6));
  EXPECT_EQ(rel.map, (Map{{0, 0}, {1, 1}, {4, 4}}));
  EXPECT_TRUE(rel.falls_through);
}

// Windows are decoded through a cache of instructions kept by their bytes (an instruction decodes
// from its own bytes alone): windows that share their first bytes, or whole first instructions,
// each still decode as themselves, the second time round too.
TEST(Relocator, WindowsThatShareLeadingBytesEachDecodeAsThemselves) {
  struct Case {
    Bytes code;
    size_t consumed;
    Map map;
  };
  const Case cases[] = {
      // push %rbp; mov %rsp,%rbp; push %r15
      {{0x55, 0x48, 0x89, 0xe5, 0x41, 0x57}, 6, {{0, 0}, {1, 1}, {4, 4}}},
      // push %rbp; push %r15; push %r14
      {{0x55, 0x41, 0x57, 0x41, 0x56, 0x53}, 5, {{0, 0}, {1, 1}, {3, 3}}},
      // mov %rsp,%rbp; sub $0x10,%rsp
      {{0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10}, 7, {{0, 0}, {3, 3}}},
      // mov %rdi,%rbx; mov %rsi,%r12
      {{0x48, 0x89, 0xfb, 0x49, 0x89, 0xf4}, 6, {{0, 0}, {3, 3}}},
  };
  for (int round = 0; round < 2; ++round)
    for (const Case &c : cases) {
      auto r = MustRelocate(c.code, kSrc, 5, kNear);
      EXPECT_EQ(r.consumed, c.consumed) << Hex(c.code[0]) << " round " << round;
      EXPECT_EQ(r.map, c.map) << Hex(c.code[0]) << " round " << round;
      EXPECT_EQ(r.code, Bytes(c.code.begin(), c.code.begin() + c.consumed));
    }
  // `mov %rcx,(%rbx)` (48 89 0b) and a RIP-relative `mov 0x10(%rip),%rax` (48 8b 05 ...) share the
  // cache's slot for their first three bytes: the second is still itself, 7 bytes, relocated.
  MustRelocate({0x48, 0x89, 0x0b, 0x48, 0x89, 0xe5}, kSrc, 5, kNear);
  const Bytes rip = {0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00};
  auto r = MustRelocate(rip, kSrc, 5, kNear);
  EXPECT_EQ(r.consumed, 7u);
  ExpectSameMeaning(rip, kSrc, r, kNear);
}

TEST(Relocator, RetAndUd2DoNotFallThrough) {
  const Bytes rets[] = {
      {0xc3},              // ret
      {0xf3, 0xc3},        // repz ret
      {0xc2, 0x08, 0x00},  // ret $0x8
      {0x0f, 0x0b},        // ud2
  };
  for (const auto &src : rets) {
    auto rel = MustRelocate(src, kSrc, 1, kNear);
    EXPECT_EQ(rel.code, src);
    EXPECT_FALSE(rel.falls_through);
  }
  const Bytes int3 = {0xcc};  // int3
  EXPECT_EQ(MustRelocate(int3, kSrc, 1, kNear).code, int3);
}

// ---- Refusals and window size -----------------------------------------------------------------

TEST(Relocator, UndecodableBytesAreRefused) {
  const Bytes cases[] = {
      {0x06, 0x90, 0x90, 0x90, 0x90},              // (push %es: invalid in 64-bit mode)
      {0x55, 0xff, 0xff, 0x90, 0x90, 0x90, 0x90},  // push %rbp; (ff /7: undefined)
  };
  for (const auto &src : cases) {
    auto r = relocate(src, kSrc, 5, kNear);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, EINVAL);
    EXPECT_NE(r.error().message.find("do not decode"), std::string::npos) << r.error().message;
  }
  auto r = relocate(cases[1], kSrc, 5, kNear);
  EXPECT_NE(r.error().message.find(Hex(kSrc + 1)), std::string::npos) << r.error().message;
}

TEST(Relocator, TooFewBytesAreRefused) {
  const Bytes src = {
      0x55,        // push %rbp
      0x48, 0x89,  // (mov %rsp,%rbp, cut short)
  };
  auto r = relocate(src, kSrc, 5, kNear);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_FALSE(r.error().message.empty());
  EXPECT_FALSE(relocate(Bytes{0x55, 0x90}, kSrc, 5, kNear).has_value());
}

TEST(Relocator, ConsumedRoundsUpToWholeInstructions) {
  const Bytes src = {
      0x48, 0x8b, 0x05, 0x78, 0x56, 0x34, 0x12,  // mov 0x12345678(%rip),%rax
      0x55,                                      // push %rbp
      0x48, 0x89, 0xe5,                          // mov %rsp,%rbp
  };
  EXPECT_EQ(MustRelocate(src, kSrc, 1, kNear).consumed, 7u);
  EXPECT_EQ(MustRelocate(src, kSrc, 5, kNear).consumed, 7u);
  EXPECT_EQ(MustRelocate(src, kSrc, 7, kNear).consumed, 7u);
  EXPECT_EQ(MustRelocate(src, kSrc, 8, kNear).consumed, 8u);
  auto all = MustRelocate(src, kSrc, 9, kNear);
  EXPECT_EQ(all.consumed, 11u);
  EXPECT_EQ(all.map, (Map{{0, 0}, {7, 7}, {8, 8}}));
  EXPECT_EQ(instruction_length(src), 7u);
  EXPECT_EQ(instruction_length(std::span(src).subspan(7)), 1u);
  EXPECT_EQ(instruction_length(Bytes{0x06}), 0u);
}

// ---- Real code: prologues of this process's libc ----------------------------------------------

struct Range {
  uint64_t lo = 0, hi = 0;
};

Range LibcText() {
  Range r;
  dl_iterate_phdr(
      [](dl_phdr_info *info, size_t, void *data) {
        if (!info->dlpi_name || !std::strstr(info->dlpi_name, "libc.so")) return 0;
        auto *out = static_cast<Range *>(data);
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto &ph = info->dlpi_phdr[i];
          if (ph.p_type == PT_LOAD && (ph.p_flags & PF_X)) {
            out->lo = info->dlpi_addr + ph.p_vaddr;
            out->hi = out->lo + ph.p_memsz;
          }
        }
        return 1;
      },
      &r);
  return r;
}

// A libc symbol through libc's own handle: RTLD_DEFAULT would find a sanitizer's interceptors
// first under USPROBE_SANITIZE.
uint64_t LibcSymbol(const char *name) {
  static void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  return libc ? reinterpret_cast<uint64_t>(dlsym(libc, name)) : 0;
}

const char *const kLibcFunctions[] = {
    "malloc",
    "free",
    "calloc",
    "realloc",
    "posix_memalign",
    "strlen",
    "strnlen",
    "strcmp",
    "strncmp",
    "strcpy",
    "strncpy",
    "strchr",
    "strrchr",
    "strstr",
    "strdup",
    "memcpy",
    "memmove",
    "memset",
    "memcmp",
    "memchr",
    "printf",
    "fprintf",
    "sprintf",
    "snprintf",
    "vfprintf",
    "puts",
    "fputs",
    "fopen",
    "fclose",
    "fread",
    "fwrite",
    "fflush",
    "fgets",
    "open",
    "close",
    "read",
    "write",
    "lseek",
    "mmap",
    "munmap",
    "pthread_create",
    "pthread_join",
    "pthread_mutex_lock",
    "pthread_mutex_unlock",
    "qsort",
    "bsearch",
    "getenv",
    "setenv",
    "atoi",
    "strtol",
    "strtoul",
    "time",
    "clock_gettime",
    "gettimeofday",
    "sigaction",
    "abs",
    "toupper",
    "isalpha",
    "exit",
    "abort",
    "dlopen",
    "getpid",
    "nanosleep",
    "sched_yield",
    "localtime_r",
};

TEST(Relocator, RelocatesPrologueOfLibcFunctions) {
  Range text = LibcText();
  ASSERT_NE(text.lo, 0u) << "libc not found through dl_iterate_phdr";
  auto tramp = PageAt(text.lo, -static_cast<int64_t>(kGB) / 2);
  ASSERT_TRUE(tramp);
  ASSERT_TRUE(CodeWriter::fits_rel32(tramp->addr(), text.hi));
  int tried = 0, ok = 0;
  for (const char *name : kLibcFunctions) {
    auto addr = LibcSymbol(name);
    if (addr < text.lo || addr >= text.hi) continue;  // not in libc's text (or not found)
    ++tried;
    std::span<const uint8_t> code(reinterpret_cast<const uint8_t *>(addr),
                                  std::min<uint64_t>(64, text.hi - addr));
    auto rel = relocate(code, addr, 5, tramp->addr());
    SCOPED_TRACE(name);
    if (!rel) {
      EXPECT_FALSE(rel.error().message.empty());
      EXPECT_TRUE(rel.error().code == EINVAL || rel.error().code == ERANGE);
      std::printf("[  libc    ] %-22s refused: %s\n", name, rel.error().message.c_str());
      continue;
    }
    ++ok;
    EXPECT_GE(rel->consumed, 5u);
    ExpectSameMeaning(code, addr, *rel, tramp->addr());
  }
  std::printf("[  libc    ] relocated the first 5+ bytes of %d of %d libc functions\n", ok, tried);
  EXPECT_GE(tried, 50);
  // DESIGN.md asks for the jump path on at least 95% of function entries.
  EXPECT_GE(ok * 100, tried * 95);

  // 3 GB away, RIP-relative operands no longer reach: those windows are refused with ERANGE,
  // everything else still relocates (branches take the absolute form).
  uint64_t far = text.hi + 3 * kGB;
  int far_ok = 0;
  for (const char *name : kLibcFunctions) {
    auto addr = LibcSymbol(name);
    if (addr < text.lo || addr >= text.hi) continue;
    std::span<const uint8_t> code(reinterpret_cast<const uint8_t *>(addr),
                                  std::min<uint64_t>(64, text.hi - addr));
    SCOPED_TRACE(name);
    auto rel = relocate(code, addr, 5, far);
    if (rel) {
      ++far_ok;
      ExpectSameMeaning(code, addr, *rel, far);
    } else {
      EXPECT_EQ(rel.error().code, ERANGE) << rel.error().message;
      EXPECT_NE(rel.error().message.find("(%rip)"), std::string::npos) << rel.error().message;
    }
  }
  std::printf("[  libc    ] %d of %d relocate to 3 GB away from libc\n", far_ok, tried);
  EXPECT_LT(far_ok, tried);  // some prologues read globals RIP-relatively
}

// Runs relocated libc prologues for real: the relocated window followed by a jump back into the
// original function must behave exactly like the function.
TEST(Relocator, RelocatedLibcProloguesExecute) {
  Range text = LibcText();
  ASSERT_NE(text.lo, 0u);
  auto tramp = PageAt(text.lo, -static_cast<int64_t>(kGB) / 2);
  ASSERT_TRUE(tramp);
  size_t at = 0;
  auto relocated = [&](const char *name) -> void * {
    auto addr = LibcSymbol(name);
    std::span<const uint8_t> code(reinterpret_cast<const uint8_t *>(addr), 64);
    auto rel = relocate(code, addr, 5, tramp->addr() + at);
    if (!rel) {
      ADD_FAILURE() << name << ": " << rel.error().message;
      return nullptr;
    }
    uint8_t *p = tramp->data() + at;
    Install(*rel, p, addr + rel->consumed);
    at += (rel->code.size() + 14 + 1 + 15) & ~size_t{15};
    return p;
  };
  static const char kHello[] = "hello, world";
  if (auto f = reinterpret_cast<size_t (*)(const char *)>(relocated("strlen"))) {
    EXPECT_EQ(f(kHello), 12u);
  }
  if (auto f = reinterpret_cast<int (*)(const char *, const char *)>(relocated("strcmp"))) {
    EXPECT_LT(f("abc", "abd"), 0);
    EXPECT_EQ(f(kHello, kHello), 0);
  }
  if (auto f = reinterpret_cast<const char *(*)(const char *, int)>(relocated("strchr"))) {
    EXPECT_EQ(f(kHello, 'w'), kHello + 7);
  }
  if (auto f = reinterpret_cast<int (*)(const void *, const void *, size_t)>(relocated("memcmp"))) {
    EXPECT_GT(f("abcd", "abca", 4), 0);
  }
  if (auto f = reinterpret_cast<int (*)(const char *)>(relocated("atoi"))) {
    EXPECT_EQ(f("-1234"), -1234);
  }
  if (auto f = reinterpret_cast<long (*)(const char *, char **, int)>(relocated("strtol"))) {
    EXPECT_EQ(f("0x7f", nullptr, 16), 0x7f);
  }
  if (auto f = reinterpret_cast<int (*)(int)>(relocated("toupper"))) {
    EXPECT_EQ(f('q'), 'Q');
  }
  if (auto f = reinterpret_cast<void *(*)(size_t)>(relocated("malloc"))) {
    void *p = f(100);
    ASSERT_NE(p, nullptr);
    std::memset(p, 0xab, 100);
    reinterpret_cast<void (*)(void *)>(LibcSymbol("free"))(p);  // libc's, like the malloc
  }
  if (auto f = reinterpret_cast<char *(*)(const char *)>(relocated("getenv"))) {
    setenv("USPROBE_RELOCATOR_TEST", "yes", 1);
    const char *v = f("USPROBE_RELOCATOR_TEST");
    ASSERT_NE(v, nullptr);
    EXPECT_STREQ(v, "yes");
  }
}

// ---- The number a system call was made with --------------------------------------------------

std::optional<uint32_t> NumberOf(const Bytes &b) {
  return constant_syscall_number(b);
}

TEST(SyscallNumber, TheMovJustBeforeTheSyscall) {
  EXPECT_EQ(NumberOf({0xb8, 0xe6, 0x00, 0x00, 0x00, 0x0f, 0x05}), 230u);  // clock_nanosleep
  EXPECT_EQ(NumberOf({0x48, 0xc7, 0xc0, 0x07, 0x00, 0x00, 0x00, 0x0f, 0x05}), 7u);  // mov $7,%rax
}

TEST(SyscallNumber, InstructionsBetweenThatLeaveRaxAlone) {
  // glibc's epoll_pwait: mov $0x119,%eax; mov 0x4(%rsp),%edi; syscall
  EXPECT_EQ(NumberOf({0xb8, 0x19, 0x01, 0x00, 0x00, 0x8b, 0x7c, 0x24, 0x04, 0x0f, 0x05}), 281u);
  // Bytes before the mov that do not decode do not matter.
  EXPECT_EQ(NumberOf({0xff, 0xff, 0x4d, 0x89, 0xc2, 0xb8, 0x17, 0x00, 0x00, 0x00, 0x0f, 0x05}),
            23u);
}

TEST(SyscallNumber, NoneWhenRaxIsWrittenAfterTheMovOrTheCodeBranches) {
  // mov $7,%eax; mov %edx,%eax; syscall
  EXPECT_EQ(NumberOf({0xb8, 0x07, 0x00, 0x00, 0x00, 0x89, 0xd0, 0x0f, 0x05}), std::nullopt);
  // mov $7,%eax; cltq (writes %rax implicitly); syscall
  EXPECT_EQ(NumberOf({0xb8, 0x07, 0x00, 0x00, 0x00, 0x48, 0x98, 0x0f, 0x05}), std::nullopt);
  // mov $7,%eax; jmp +0; syscall: something may jump to the syscall with another number
  EXPECT_EQ(NumberOf({0xb8, 0x07, 0x00, 0x00, 0x00, 0xeb, 0x00, 0x0f, 0x05}), std::nullopt);
  // A generic wrapper: mov %rdi,%rax; syscall
  EXPECT_EQ(NumberOf({0x48, 0x89, 0xf8, 0x0f, 0x05}), std::nullopt);
  // No syscall at the end, or nothing before it.
  EXPECT_EQ(NumberOf({0xb8, 0xe6, 0x00, 0x00, 0x00, 0x90}), std::nullopt);
  EXPECT_EQ(NumberOf({0x0f, 0x05}), std::nullopt);
  EXPECT_EQ(NumberOf({}), std::nullopt);
}

// Every syscall instruction of libc's wait functions on this machine: the number found is the
// call the function makes. (nanosleep is not among them: glibc's calls clock_nanosleep.)
TEST(SyscallNumber, LibcsWaitFunctions) {
  struct Case {
    const char *name;
    std::vector<uint32_t> numbers;  // any of these (libc versions differ)
  };
  const Case cases[] = {
      {"clock_nanosleep", {SYS_clock_nanosleep}},
      {"poll", {SYS_poll, SYS_ppoll}},
      {"epoll_wait", {SYS_epoll_wait, SYS_epoll_pwait}},
      {"epoll_pwait", {SYS_epoll_pwait}},
      {"select", {SYS_select, SYS_pselect6}},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(c.name);
    const uint64_t addr = LibcSymbol(c.name);
    ASSERT_NE(addr, 0u);
    Dl_info info{};
    void *entry = nullptr;
    ASSERT_NE(dladdr1(reinterpret_cast<void *>(addr), &info, &entry, RTLD_DL_SYMENT), 0);
    const auto *sym = static_cast<const ElfW(Sym) *>(entry);
    ASSERT_NE(sym, nullptr);
    const auto *code = reinterpret_cast<const uint8_t *>(addr);
    const FunctionScan scan = scan_function({code, sym->st_size}, addr);
    int syscalls = 0;
    for (uint32_t off : scan.boundaries) {
      if (off + 2 > sym->st_size || code[off] != 0x0f || code[off + 1] != 0x05) continue;
      ++syscalls;
      const size_t from = off >= 32 ? off - 32 : 0;
      const std::optional<uint32_t> nr = constant_syscall_number({code + from, code + off + 2});
      ASSERT_TRUE(nr.has_value()) << "the syscall at +" << off;
      EXPECT_NE(std::find(c.numbers.begin(), c.numbers.end(), *nr), c.numbers.end())
          << "the syscall at +" << off << " found " << *nr;
    }
    // A libc that makes its system calls elsewhere (a shared cancellable-syscall helper) has none
    // here; this one inlines them.
    EXPECT_GT(syscalls, 0);
  }
}

// The round's handler makes a wait again: back to its syscall instruction, with its number.
TEST(SyscallNumber, RestartWaitRewindsToTheSyscallWithItsNumber) {
  const Bytes clock_nanosleep = {0xb8, 0xe6, 0x00, 0x00, 0x00, 0x0f, 0x05};
  const Bytes read = {0x31, 0xc0, 0x0f, 0x05};                     // xor %eax,%eax: read
  const Bytes write = {0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x05};  // mov $1,%eax: write
  ucontext_t uc{};
  auto reset = [&](greg_t rax) {
    uc.uc_mcontext.gregs[REG_RIP] = 0x401007;
    uc.uc_mcontext.gregs[REG_RCX] = 0x401007;  // where the syscall instruction leaves it
    uc.uc_mcontext.gregs[REG_RAX] = rax;
    uc.uc_mcontext.gregs[REG_RDI] = 1;
  };
  reset(-EINTR);
  EXPECT_TRUE(arch::returned_eintr(&uc));
  ASSERT_TRUE(arch::restart_wait(&uc, clock_nanosleep));
  EXPECT_EQ(uc.uc_mcontext.gregs[REG_RIP], 0x401005);
  EXPECT_EQ(uc.uc_mcontext.gregs[REG_RAX], SYS_clock_nanosleep);
  EXPECT_EQ(uc.uc_mcontext.gregs[REG_RDI], 1);  // the arguments stay
  // Not an EINTR, a call that does work, a number that is not a constant: left as they are.
  reset(0);
  EXPECT_FALSE(arch::returned_eintr(&uc));
  EXPECT_FALSE(arch::restart_wait(&uc, clock_nanosleep));
  reset(-EINTR);
  uc.uc_mcontext.gregs[REG_RCX] = 0;  // not after a syscall
  EXPECT_FALSE(arch::returned_eintr(&uc));
  EXPECT_FALSE(arch::restart_wait(&uc, clock_nanosleep));
  reset(-EINTR);
  EXPECT_FALSE(arch::restart_wait(&uc, write));
  EXPECT_FALSE(arch::restart_wait(&uc, read));
  EXPECT_EQ(uc.uc_mcontext.gregs[REG_RIP], 0x401007);
  EXPECT_EQ(uc.uc_mcontext.gregs[REG_RAX], -EINTR);
}

}  // namespace
}  // namespace usprobe::x86
