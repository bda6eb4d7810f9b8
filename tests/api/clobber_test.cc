// A handler that dirties every caller-saved register, the vector state and the flags changes
// nothing that the probed code can observe: for both trampoline flavours (function entry and
// instruction) and for the int3 path.
//
// The checkers are assembly, so that they see registers, not what a compiler made of them:
//  - tgt_call_with_canaries / tgt_entry_callee (libusprobe_targets.so): function entry;
//  - tgt_clobber_mid (libusprobe_targets.so): an instruction site, GPRs, xmm0-15 (128 bits),
//    flags, red zone, DF;
//  - below, in this file: the full width of the vector registers (ymm0-15, zmm0-31, k1-7), MXCSR
//    and DF set at an instruction site, and ymm/zmm arguments at a function entry.
// Each mask comes back with the names of the corrupted registers (tgt_bit_name).
#include <gtest/gtest.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "targets/targets.h"
#include "usprobe/usprobe.h"

// ---- Vector checkers of this file (exported from the test executable: "exe:NAME") ---------------
//
// usprobe_test_vec_mid(in, out): loads ymm0-15 from in[0..512), MXCSR from in[512], sets DF, then
//   at +usprobe_test_vec_mid_site executes a 5-byte nop (the site), then stores ymm0-15 to
//   out[0..512), MXCSR to out[512], %rflags to out[520], clears DF.
// usprobe_test_zmm_mid(in, out): the same for zmm0-31 (in[0..2048)) and k1-k7 (16 bits each at
//   in[2048 + 2k]); site at +usprobe_test_zmm_mid_site; stores the same layout to out.
// usprobe_test_ymm_caller(in, out, fn): loads ymm0-7 from in[0..256) and calls fn(out);
//   usprobe_test_ymm_callee(out) stores ymm0-7, as it received them, to out[0..256).
// usprobe_test_zmm_caller / usprobe_test_zmm_callee: the same with zmm0-7 (in[0..512)).
asm(R"(
  .text

  .globl usprobe_test_vec_mid
  .type usprobe_test_vec_mid, @function
  .p2align 4
usprobe_test_vec_mid:
  push %rbp
  mov %rsp, %rbp
  .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
  vmovdqu 32*\n(%rdi), %ymm\n
  .endr
  ldmxcsr 512(%rdi)
  std
.Lusprobe_test_vec_site:
  nopl 0x0(%rax,%rax,1)
  pushfq
  popq 520(%rsi)
  cld
  stmxcsr 512(%rsi)
  .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
  vmovdqu %ymm\n, 32*\n(%rsi)
  .endr
  vzeroupper
  pop %rbp
  ret
  .size usprobe_test_vec_mid, .-usprobe_test_vec_mid

  .globl usprobe_test_zmm_mid
  .type usprobe_test_zmm_mid, @function
  .p2align 4
usprobe_test_zmm_mid:
  push %rbp
  mov %rsp, %rbp
  .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
  vmovdqu64 64*\n(%rdi), %zmm\n
  .endr
  .irp k, 1,2,3,4,5,6,7
  kmovw 2048+2*\k(%rdi), %k\k
  .endr
.Lusprobe_test_zmm_site:
  nopl 0x0(%rax,%rax,1)
  .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
  vmovdqu64 %zmm\n, 64*\n(%rsi)
  .endr
  .irp k, 1,2,3,4,5,6,7
  kmovw %k\k, 2048+2*\k(%rsi)
  .endr
  vzeroupper
  pop %rbp
  ret
  .size usprobe_test_zmm_mid, .-usprobe_test_zmm_mid

  .globl usprobe_test_ymm_callee
  .type usprobe_test_ymm_callee, @function
  .p2align 4
usprobe_test_ymm_callee:
  push %rbp
  mov %rsp, %rbp
  .irp n, 0,1,2,3,4,5,6,7
  vmovdqu %ymm\n, 32*\n(%rdi)
  .endr
  vzeroupper
  pop %rbp
  ret
  .size usprobe_test_ymm_callee, .-usprobe_test_ymm_callee

  .globl usprobe_test_ymm_caller
  .type usprobe_test_ymm_caller, @function
  .p2align 4
usprobe_test_ymm_caller:
  push %rbp
  mov %rsp, %rbp
  .irp n, 0,1,2,3,4,5,6,7
  vmovdqu 32*\n(%rdi), %ymm\n
  .endr
  mov %rsi, %rdi
  call *%rdx
  vzeroupper
  pop %rbp
  ret
  .size usprobe_test_ymm_caller, .-usprobe_test_ymm_caller

  .globl usprobe_test_zmm_callee
  .type usprobe_test_zmm_callee, @function
  .p2align 4
usprobe_test_zmm_callee:
  push %rbp
  mov %rsp, %rbp
  .irp n, 0,1,2,3,4,5,6,7
  vmovdqu64 %zmm\n, 64*\n(%rdi)
  .endr
  vzeroupper
  pop %rbp
  ret
  .size usprobe_test_zmm_callee, .-usprobe_test_zmm_callee

  .globl usprobe_test_zmm_caller
  .type usprobe_test_zmm_caller, @function
  .p2align 4
usprobe_test_zmm_caller:
  push %rbp
  mov %rsp, %rbp
  .irp n, 0,1,2,3,4,5,6,7
  vmovdqu64 64*\n(%rdi), %zmm\n
  .endr
  mov %rsi, %rdi
  call *%rdx
  vzeroupper
  pop %rbp
  ret
  .size usprobe_test_zmm_caller, .-usprobe_test_zmm_caller

  .section .rodata
  .p2align 3
  .globl usprobe_test_vec_mid_site
  .type usprobe_test_vec_mid_site, @object
usprobe_test_vec_mid_site:
  .quad .Lusprobe_test_vec_site - usprobe_test_vec_mid
  .size usprobe_test_vec_mid_site, 8
  .globl usprobe_test_zmm_mid_site
  .type usprobe_test_zmm_mid_site, @object
usprobe_test_zmm_mid_site:
  .quad .Lusprobe_test_zmm_site - usprobe_test_zmm_mid
  .size usprobe_test_zmm_mid_site, 8
  .text
)");

extern "C" {
void usprobe_test_vec_mid(const void *in, void *out);
void usprobe_test_zmm_mid(const void *in, void *out);
void usprobe_test_ymm_callee(void *out);
void usprobe_test_ymm_caller(const void *in, void *out, void (*fn)(void *));
void usprobe_test_zmm_callee(void *out);
void usprobe_test_zmm_caller(const void *in, void *out, void (*fn)(void *));
extern const uint64_t usprobe_test_vec_mid_site;
extern const uint64_t usprobe_test_zmm_mid_site;
}

namespace {

constexpr const char *kLib = "libusprobe_targets.so";

std::string loc(const char *file, const char *symbol, uint64_t offset = 0) {
  char buf[200];
  if (offset)
    std::snprintf(buf, sizeof buf, "%s:%s+%#" PRIx64, file, symbol, offset);
  else
    std::snprintf(buf, sizeof buf, "%s:%s", file, symbol);
  return buf;
}

std::string describe(uint64_t mask) {
  if (mask == 0) return "nothing corrupted";
  std::string s = "corrupted:";
  for (unsigned bit = 0; bit < 64; ++bit)
    if (mask & (uint64_t{1} << bit)) s += std::string(" ") + tgt_bit_name(bit);
  return s;
}

bool have_avx() {
  return __builtin_cpu_supports("avx");
}
bool have_avx512() {
  return __builtin_cpu_supports("avx512f");
}

// ---- Handlers that dirty state ------------------------------------------------------------------

struct HandlerStats {
  uint64_t calls = 0;
  uint64_t df_set = 0;  // the handler was called with DF set (the ABI wants it clear)
};

void note_call(void *user) {
  auto *s = static_cast<HandlerStats *>(user);
  ++s->calls;
  if (__builtin_ia32_readeflags_u64() & 0x400) ++s->df_set;
}

// Every caller-saved GPR, xmm0-15 (each a different pattern), the status flags (the opposite of
// TGT_CLOBBER_FLAGS: CF=0 PF=1 AF=0 ZF=1 SF=0 OF=0) and MXCSR's exception flags.
__attribute__((noinline)) void dirty_gprs_xmm_flags() {
  uint32_t mxcsr = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  mxcsr |= 0x3f;  // status bits only: the control bits are callee-saved
  asm volatile("ldmxcsr %0" : : "m"(mxcsr));
  asm volatile(
      "movabs $0xdeadbeefcafef00d, %%rax\n\t"
      "movabs $0x0badc0de0badc0de, %%rcx\n\t"
      "movabs $0x1111222233334444, %%rdx\n\t"
      "movabs $0x5555666677778888, %%rsi\n\t"
      "movabs $0x99990000aaaabbbb, %%rdi\n\t"
      "movabs $0xccccddddeeeeffff, %%r8\n\t"
      "movabs $0x0123456789abcdef, %%r9\n\t"
      "movabs $0xfedcba9876543210, %%r10\n\t"
      "movabs $0x8000000000000001, %%r11\n\t"
      "pcmpeqd %%xmm0, %%xmm0\n\t"
      "movq %%rax, %%xmm1\n\t"
      "movq %%rcx, %%xmm2\n\t"
      "movq %%rdx, %%xmm3\n\t"
      "movq %%rsi, %%xmm4\n\t"
      "movq %%rdi, %%xmm5\n\t"
      "movq %%r8, %%xmm6\n\t"
      "movq %%r9, %%xmm7\n\t"
      "pcmpeqd %%xmm8, %%xmm8\n\t"
      "pxor %%xmm9, %%xmm9\n\t"
      "movq %%r10, %%xmm10\n\t"
      "movq %%r11, %%xmm11\n\t"
      "pshufd $0x1b, %%xmm1, %%xmm12\n\t"
      "pshufd $0x4e, %%xmm2, %%xmm13\n\t"
      "pshufd $0x39, %%xmm3, %%xmm14\n\t"
      "pcmpeqb %%xmm15, %%xmm15\n\t"
      "cmp %%rax, %%rax\n\t"
      :
      :
      : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "xmm0", "xmm1", "xmm2", "xmm3",
        "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
        "xmm15", "cc", "memory");
}

// The upper halves of ymm0-15, left dirty (no vzeroupper).
__attribute__((noinline, target("avx"))) void dirty_ymm() {
  asm volatile(
      ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n\t"
      "vpcmpeqd %%xmm\\n, %%xmm\\n, %%xmm\\n\n\t"
      "vinsertf128 $1, %%xmm\\n, %%ymm\\n, %%ymm\\n\n\t"
      ".endr\n\t"
      :
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory");
}

// zmm0-31 all ones, k1-k7 all ones.
__attribute__((noinline, target("avx512f"))) void dirty_zmm_k() {
  asm volatile(
      ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,"
      "31\n\t"
      "vpternlogd $0xff, %%zmm\\n, %%zmm\\n, %%zmm\\n\n\t"
      ".endr\n\t"
      ".irp k, 1,2,3,4,5,6,7\n\t"
      "kxnorw %%k0, %%k0, %%k\\k\n\t"
      ".endr\n\t"
      :
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20",
        "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30",
        "xmm31", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "memory");
}

// libc's string functions: the IFUNC picks AVX2 or AVX-512/EVEX versions here, which use the wide
// registers (and vzeroupper, which zeroes the upper halves of ymm0-15).
__attribute__((noinline)) void dirty_with_libc() {
  static char src[64 * 1024], dst[64 * 1024];
  static char text[8192];
  std::memset(src, 0x5a, sizeof src);
  std::memcpy(dst, src, sizeof dst);
  std::memset(text, 'x', sizeof text - 1);
  volatile size_t n = std::strlen(text);
  (void)n;
  volatile int c = std::memcmp(src, dst, sizeof src);
  (void)c;
}

void handler_gprs(usprobe_hit *, void *user) {
  note_call(user);
  dirty_gprs_xmm_flags();
}
void handler_ymm(usprobe_hit *, void *user) {
  note_call(user);
  dirty_ymm();
}
void handler_zmm(usprobe_hit *, void *user) {
  note_call(user);
  dirty_zmm_k();
}
void handler_libc(usprobe_hit *, void *user) {
  note_call(user);
  dirty_with_libc();
}
// A USPROBE_GENERAL_REGS_ONLY handler: the trampoline saves no vector state for it, so it must
// keep its promise (built general-regs-only); it still dirties every caller-saved GPR and the
// flags.
__attribute__((target("general-regs-only"))) void handler_gprs_only(usprobe_hit *, void *user) {
  auto *s = static_cast<HandlerStats *>(user);
  ++s->calls;
  if (__builtin_ia32_readeflags_u64() & 0x400) ++s->df_set;
  asm volatile(
      "movabs $0xdeadbeefcafef00d, %%rax\n\t"
      "movabs $0x0badc0de0badc0de, %%rcx\n\t"
      "movabs $0x1111222233334444, %%rdx\n\t"
      "movabs $0x5555666677778888, %%rsi\n\t"
      "movabs $0x99990000aaaabbbb, %%rdi\n\t"
      "movabs $0xccccddddeeeeffff, %%r8\n\t"
      "movabs $0x0123456789abcdef, %%r9\n\t"
      "movabs $0xfedcba9876543210, %%r10\n\t"
      "movabs $0x8000000000000001, %%r11\n\t"
      "xor %%eax, %%eax\n\t"  // ZF=1 PF=1, the others clear
      ::
          : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "cc", "memory");
}
void handler_all(usprobe_hit *, void *user) {
  note_call(user);
  dirty_with_libc();
  if (have_avx512()) dirty_zmm_k();
  if (have_avx()) dirty_ymm();
  dirty_gprs_xmm_flags();
}

struct Dirtier {
  const char *name;
  void (*fn)(usprobe_hit *, void *);
  bool (*supported)();
  unsigned flags = 0;  // attach flags the handler asks for
};
bool always() {
  return true;
}
// "counter_only" attaches no consumer (the built-in counter): the trampoline may then take a
// path that saves less, since no handler runs.
const Dirtier kDirtiers[] = {
    {"counter_only", nullptr, always},
    {"gprs_xmm_flags", handler_gprs, always},
    {"ymm", handler_ymm, have_avx},
    {"zmm_k", handler_zmm, have_avx512},
    {"libc", handler_libc, always},
    {"everything", handler_all, always},
    {"gprs_only", handler_gprs_only, always, USPROBE_GENERAL_REGS_ONLY},
};

struct Path {
  const char *name;
  unsigned flags;
};
void PrintTo(const Dirtier &d, std::ostream *os) {
  *os << d.name;
}
void PrintTo(const Path &p, std::ostream *os) {
  *os << p.name;
}

// Which parts of vector register `name` (width bytes each) differ between in and out: "" if none.
std::string vector_diff(const char *name, int n, const uint8_t *in, const uint8_t *out,
                        size_t width) {
  std::string parts;
  for (size_t lane = 0; lane < width / 16; ++lane)
    if (std::memcmp(in + n * width + lane * 16, out + n * width + lane * 16, 16) != 0)
      parts += (parts.empty() ? " bits " : ", ") + std::to_string(lane * 128) + ".." +
               std::to_string(lane * 128 + 127);
  if (parts.empty()) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s%d", name, n);
  return std::string(buf) + parts + " changed";
}
const Path kPaths[] = {{"jump", 0}, {"int3", USPROBE_FORCE_INT3}};

class Clobber : public ::testing::TestWithParam<std::tuple<Dirtier, Path>> {
 protected:
  void SetUp() override {
    if (!dirtier().supported())
      GTEST_SKIP() << "this CPU lacks what the `" << dirtier().name << "` handler uses";
  }
  const Dirtier &dirtier() const { return std::get<0>(GetParam()); }
  const Path &path() const { return std::get<1>(GetParam()); }

  // Attach the dirtying handler at `where` on the parameter's path.
  void attach(const std::string &where) {
    consumer_ = {dirtier().fn, &stats_, nullptr};
    int rc = usprobe_attach_ex(where.c_str(), dirtier().fn ? &consumer_ : nullptr,
                               path().flags | dirtier().flags, &link_);
    ASSERT_EQ(rc, 0) << where << ": " << usprobe_last_error();
    EXPECT_EQ(usprobe_link_uses_int3(link_), path().flags ? 1 : 0)
        << where << ": " << usprobe_link_int3_reason(link_);
  }
  void TearDown() override {
    if (link_) {
      EXPECT_EQ(usprobe_detach(link_), 0) << usprobe_last_error();
    }
  }
  void expect_calls(uint64_t n) {
    EXPECT_EQ(usprobe_link_hits(link_), n);
    EXPECT_EQ(stats_.calls, dirtier().fn ? n : 0);
    EXPECT_EQ(stats_.df_set, 0u) << "a handler ran with DF set";
  }

  usprobe_consumer consumer_{};
  usprobe_link *link_ = nullptr;
  HandlerStats stats_;
};

std::string param_name(const ::testing::TestParamInfo<std::tuple<Dirtier, Path>> &info) {
  return std::string(std::get<0>(info.param).name) + "_" + std::get<1>(info.param).name;
}

// (a) Function entry: tgt_entry_callee checks its arguments, %rax, %r10, %r11, xmm0-7, the stack
// argument and the alignment; tgt_call_with_canaries checks callee-saved registers, its frame and
// what the callee returned.
TEST_P(Clobber, EntryFlavour) {
  attach(loc(kLib, "tgt_entry_callee"));
  uint64_t mask = tgt_call_with_canaries(tgt_entry_callee);
  EXPECT_EQ(mask, 0u) << "tgt_call_with_canaries(tgt_entry_callee): " << describe(mask);
  mask = tgt_clobber_check_entry();
  EXPECT_EQ(mask, 0u) << "tgt_clobber_check_entry(): " << describe(mask);
  expect_calls(2);
}

// (a') The same call returning through a return probe on the callee: its return handler dirties
// as above (or, for counter_only, the built-in counter counts returns through the shortest
// path), and the caller still finds its callee-saved registers, its frame and the return
// registers (%rax, %rdx, %xmm0, %xmm1) as the callee left them.
TEST_P(Clobber, ReturnFromEntryFlavour) {
  const std::string where = loc(kLib, "tgt_entry_callee");
  consumer_ = {nullptr, &stats_, dirtier().fn};
  const unsigned flags = path().flags | dirtier().flags;
  const int rc = dirtier().fn
                     ? usprobe_attach_ex(where.c_str(), &consumer_, flags, &link_)
                     : usprobe_attach_ex(("uretprobe:" + where).c_str(), nullptr, flags, &link_);
  ASSERT_EQ(rc, 0) << where << ": " << usprobe_last_error();
  uint64_t mask = tgt_call_with_canaries(tgt_entry_callee);
  EXPECT_EQ(mask, 0u) << "tgt_call_with_canaries(tgt_entry_callee): " << describe(mask);
  mask = tgt_call_with_canaries(tgt_entry_callee);
  EXPECT_EQ(mask, 0u) << "second call: " << describe(mask);
  EXPECT_EQ(usprobe_link_return_hits(link_), 2u);
  EXPECT_EQ(stats_.calls, dirtier().fn ? 2u : 0u);
}

// (b) An instruction site: every GPR, flags, xmm0-15, the red zone and DF.
TEST_P(Clobber, InstructionFlavour) {
  ASSERT_EQ(tgt_clobber_site_offset, uint64_t{TGT_CLOBBER_SITE_OFFSET});
  attach(loc(kLib, "tgt_clobber_mid", tgt_clobber_site_offset));
  uint64_t mask = tgt_clobber_mid();
  EXPECT_EQ(mask, 0u) << "tgt_clobber_mid(): " << describe(mask);
  expect_calls(1);
}

// The full width of ymm0-15, MXCSR and a set DF at an instruction site.
TEST_P(Clobber, InstructionFlavourYmmMxcsrAndDirectionFlag) {
  if (!have_avx()) GTEST_SKIP() << "no AVX";
  attach(loc("exe", "usprobe_test_vec_mid", usprobe_test_vec_mid_site));
  alignas(64) uint8_t in[528], out[528];
  for (size_t i = 0; i < 512; ++i) in[i] = static_cast<uint8_t>(i * 37 + 11);
  const uint32_t mxcsr = 0x1f80;  // the default: all exceptions masked, no status bits
  std::memcpy(in + 512, &mxcsr, 4);
  std::memset(out, 0, sizeof out);
  usprobe_test_vec_mid(in, out);
  for (int n = 0; n < 16; ++n) EXPECT_EQ(vector_diff("ymm", n, in, out, 32), "");
  uint32_t mxcsr_after = 0;
  std::memcpy(&mxcsr_after, out + 512, 4);
  EXPECT_EQ(mxcsr_after, mxcsr) << std::hex << "MXCSR";
  uint64_t flags = 0;
  std::memcpy(&flags, out + 520, 8);
  EXPECT_TRUE(flags & 0x400) << std::hex << "DF was cleared for the probed code: " << flags;
  expect_calls(1);
}

// zmm0-31 and k1-k7 at an instruction site.
TEST_P(Clobber, InstructionFlavourZmmAndMaskRegisters) {
  if (!have_avx512()) GTEST_SKIP() << "no AVX-512";
  attach(loc("exe", "usprobe_test_zmm_mid", usprobe_test_zmm_mid_site));
  alignas(64) uint8_t in[2048 + 16], out[2048 + 16];
  for (size_t i = 0; i < sizeof in; ++i) in[i] = static_cast<uint8_t>(i * 53 + 7);
  std::memset(out, 0, sizeof out);
  usprobe_test_zmm_mid(in, out);
  for (int n = 0; n < 32; ++n) EXPECT_EQ(vector_diff("zmm", n, in, out, 64), "");
  for (int k = 1; k < 8; ++k)
    EXPECT_EQ(0, std::memcmp(in + 2048 + 2 * k, out + 2048 + 2 * k, 2)) << "k" << k;
  expect_calls(1);
}

// A function entry with 256-bit vector arguments (__m256 travels in ymm0-7 in the System V ABI).
TEST_P(Clobber, EntryFlavourYmmArguments) {
  if (!have_avx()) GTEST_SKIP() << "no AVX";
  attach(loc("exe", "usprobe_test_ymm_callee"));
  alignas(64) uint8_t in[256], out[256];
  for (size_t i = 0; i < sizeof in; ++i) in[i] = static_cast<uint8_t>(i * 29 + 3);
  std::memset(out, 0, sizeof out);
  usprobe_test_ymm_caller(in, out, usprobe_test_ymm_callee);
  for (int n = 0; n < 8; ++n) EXPECT_EQ(vector_diff("argument ymm", n, in, out, 32), "");
  expect_calls(1);
}

// A function entry with 512-bit vector arguments (__m512 travels in zmm0-7).
TEST_P(Clobber, EntryFlavourZmmArguments) {
  if (!have_avx512()) GTEST_SKIP() << "no AVX-512";
  attach(loc("exe", "usprobe_test_zmm_callee"));
  alignas(64) uint8_t in[512], out[512];
  for (size_t i = 0; i < sizeof in; ++i) in[i] = static_cast<uint8_t>(i * 31 + 5);
  std::memset(out, 0, sizeof out);
  usprobe_test_zmm_caller(in, out, usprobe_test_zmm_callee);
  for (int n = 0; n < 8; ++n) EXPECT_EQ(vector_diff("argument zmm", n, in, out, 64), "");
  expect_calls(1);
}

INSTANTIATE_TEST_SUITE_P(Handlers, Clobber,
                         ::testing::Combine(::testing::ValuesIn(kDirtiers),
                                            ::testing::ValuesIn(kPaths)),
                         param_name);

// ---- What handlers see at the sites (after another handler dirtied everything) ------------------

struct MidSeen {
  uint64_t calls = 0;
  uint64_t regs[18] = {};
  uint64_t by_index[18] = {};  // the same, read through usprobe_hit_regs
  uint64_t ip = 0, sp = 0, flags = 0;
  uint64_t redzone[17] = {};
};
void observe_mid(usprobe_hit *hit, void *user) {
  auto *s = static_cast<MidSeen *>(user);
  ++s->calls;
  for (int r = 0; r <= USPROBE_RFLAGS; ++r) s->regs[r] = usprobe_hit_reg(hit, usprobe_reg(r));
  const uint64_t *words = usprobe_hit_regs(hit);
  for (int r = 0; r <= USPROBE_RFLAGS; ++r)
    s->by_index[r] = words[usprobe_reg_index(usprobe_reg(r))];
  s->ip = usprobe_hit_ip(hit);
  s->sp = usprobe_hit_sp(hit);
  s->flags = usprobe_hit_flags(hit);
  for (int i = 1; i <= 16; ++i)
    s->redzone[i] = *reinterpret_cast<const uint64_t *>(s->sp - 8 * static_cast<uint64_t>(i));
}

TEST(ClobberObserve, InstructionSiteRegistersAreTheProbedCodes) {
  const uint64_t expect[16] = {TGT_VAL_RAX, TGT_VAL_RBX, TGT_VAL_RCX, TGT_VAL_RDX,
                               TGT_VAL_RSI, TGT_VAL_RDI, TGT_VAL_RBP, 0,
                               TGT_VAL_R8,  TGT_VAL_R9,  TGT_VAL_R10, TGT_VAL_R11,
                               TGT_VAL_R12, TGT_VAL_R13, TGT_VAL_R14, TGT_VAL_R15};
  const char *names[16] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                           "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
  const std::string where = loc(kLib, "tgt_clobber_mid", tgt_clobber_site_offset);
  const uint64_t site = reinterpret_cast<uint64_t>(&tgt_clobber_mid) + tgt_clobber_site_offset;
  for (const Path &p : kPaths) {
    SCOPED_TRACE(p.name);
    // The dirtying consumer runs first: what the second one sees must not depend on it.
    HandlerStats stats;
    MidSeen seen;
    usprobe_consumer dirty{handler_all, &stats, nullptr}, observe{observe_mid, &seen, nullptr};
    usprobe_link *first = nullptr, *second = nullptr;
    ASSERT_EQ(usprobe_attach_ex(where.c_str(), &dirty, p.flags, &first), 0) << usprobe_last_error();
    ASSERT_EQ(usprobe_attach(where.c_str(), &observe, &second), 0) << usprobe_last_error();
    EXPECT_EQ(usprobe_link_uses_int3(first), p.flags ? 1 : 0);
    uint64_t mask = tgt_clobber_mid();
    EXPECT_EQ(mask, 0u) << describe(mask);
    ASSERT_EQ(seen.calls, 1u);
    for (int r = 0; r < 16; ++r) {
      if (r == USPROBE_RSP) continue;
      EXPECT_EQ(seen.regs[r], expect[r]) << std::hex << names[r];
    }
    EXPECT_EQ(seen.regs[USPROBE_RIP], site);
    EXPECT_EQ(seen.ip, site);
    EXPECT_EQ(seen.regs[USPROBE_RSP], seen.sp);
    EXPECT_EQ(seen.sp % 16, 0u) << std::hex << seen.sp;  // tgt_clobber_mid aligns its frame
    EXPECT_EQ(seen.flags & TGT_STATUS_FLAGS_MASK, uint64_t{TGT_CLOBBER_FLAGS})
        << std::hex << "rflags " << seen.flags;
    EXPECT_EQ(seen.flags & 0x400, 0u) << "DF";
    EXPECT_EQ(seen.regs[USPROBE_RFLAGS], seen.flags);
    for (int r = 0; r <= USPROBE_RFLAGS; ++r)
      EXPECT_EQ(seen.by_index[r], seen.regs[r]) << "usprobe_hit_regs, register " << r;
    for (int i = 1; i <= 16; ++i)
      EXPECT_EQ(seen.redzone[i], TGT_REDZONE_PATTERN + i) << "red zone quad -" << 8 * i;
    EXPECT_EQ(usprobe_detach(second), 0);
    EXPECT_EQ(usprobe_detach(first), 0);
  }
}

struct EntrySeen {
  uint64_t calls = 0;
  uint64_t args[6] = {};
  uint64_t rax = 0, r10 = 0, r11 = 0, stack_arg = 0, ret = 0, sp = 0, ip = 0;
};
void observe_entry(usprobe_hit *hit, void *user) {
  auto *s = static_cast<EntrySeen *>(user);
  ++s->calls;
  for (unsigned n = 0; n < 6; ++n) s->args[n] = usprobe_arg(hit, n);
  s->rax = usprobe_hit_reg(hit, USPROBE_RAX);
  s->r10 = usprobe_hit_reg(hit, USPROBE_R10);
  s->r11 = usprobe_hit_reg(hit, USPROBE_R11);
  s->sp = usprobe_hit_sp(hit);
  s->ip = usprobe_hit_ip(hit);
  s->ret = usprobe_hit_return_address(hit);
  s->stack_arg = *reinterpret_cast<const uint64_t *>(s->sp + 8);
}

TEST(ClobberObserve, EntryRegistersAreTheCallers) {
  const std::string where = loc(kLib, "tgt_entry_callee");
  const uint64_t expect_args[6] = {TGT_ENTRY_ARG0, TGT_ENTRY_ARG1, TGT_ENTRY_ARG2,
                                   TGT_ENTRY_ARG3, TGT_ENTRY_ARG4, TGT_ENTRY_ARG5};
  const auto caller = reinterpret_cast<uint64_t>(&tgt_call_with_canaries);
  for (const Path &p : kPaths) {
    SCOPED_TRACE(p.name);
    HandlerStats stats;
    EntrySeen seen;
    usprobe_consumer dirty{handler_all, &stats, nullptr}, observe{observe_entry, &seen, nullptr};
    usprobe_link *first = nullptr, *second = nullptr;
    ASSERT_EQ(usprobe_attach_ex(where.c_str(), &dirty, p.flags, &first), 0) << usprobe_last_error();
    ASSERT_EQ(usprobe_attach(where.c_str(), &observe, &second), 0) << usprobe_last_error();
    uint64_t mask = tgt_call_with_canaries(tgt_entry_callee);
    EXPECT_EQ(mask, 0u) << describe(mask);
    ASSERT_EQ(seen.calls, 1u);
    for (unsigned n = 0; n < 6; ++n) EXPECT_EQ(seen.args[n], expect_args[n]) << "argument " << n;
    EXPECT_EQ(seen.rax, uint64_t{TGT_ENTRY_RAX});
    EXPECT_EQ(seen.r10, uint64_t{TGT_ENTRY_R10});
    EXPECT_EQ(seen.r11, uint64_t{TGT_ENTRY_R11});
    EXPECT_EQ(seen.stack_arg, uint64_t{TGT_ENTRY_ARG6});
    EXPECT_EQ(seen.ip, reinterpret_cast<uint64_t>(&tgt_entry_callee));
    EXPECT_EQ((seen.sp + 8) % 16, 0u);
    EXPECT_GT(seen.ret, caller);
    EXPECT_LT(seen.ret, caller + 0x200) << "the return address is not in tgt_call_with_canaries";
    EXPECT_EQ(usprobe_detach(second), 0);
    EXPECT_EQ(usprobe_detach(first), 0);
  }
}

// (d) The checkers do report corruption: a callee that ignores everything is caught, and a bit
// names what broke.
uint64_t broken_callee(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, double,
                       double, double, double, double, double, double, double) {
  return 0;  // no magic in %rax, nothing in %rdx, xmm0, xmm1
}

TEST(ClobberCheckers, ReportCorruption) {
  uint64_t mask = tgt_call_with_canaries(broken_callee);
  EXPECT_NE(mask, 0u);
  EXPECT_TRUE(mask & (uint64_t{1} << TGT_BIT_RETVAL)) << describe(mask);
  EXPECT_NE(describe(mask).find("return value"), std::string::npos) << describe(mask);
  // Unprobed, every checker is clean.
  EXPECT_EQ(tgt_clobber_mid(), 0u) << describe(tgt_clobber_mid());
  EXPECT_EQ(tgt_clobber_check_entry(), 0u) << describe(tgt_clobber_check_entry());
  if (have_avx()) {
    alignas(64) uint8_t in[528] = {}, out[528] = {};
    for (size_t i = 0; i < 512; ++i) in[i] = static_cast<uint8_t>(i);
    const uint32_t mxcsr = 0x1f80;
    std::memcpy(in + 512, &mxcsr, 4);
    usprobe_test_vec_mid(in, out);
    EXPECT_EQ(0, std::memcmp(in, out, 512));
    usprobe_test_ymm_caller(in, out, usprobe_test_ymm_callee);
    EXPECT_EQ(0, std::memcmp(in, out, 256));
  }
}

}  // namespace
