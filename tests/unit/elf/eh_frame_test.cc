// The unwind information readers: LSDAs written byte by byte in each encoding GCC and Clang use,
// and the landing pads and FDE bounds of this test program's own C++ functions, checked against
// where the unwinder really resumed them (a cleanup records its return address while an
// exception passes through).
#include "elf/eh_frame.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "elf/elf_file.h"
#include "elf/location.h"
#include "elf_test_util.h"

namespace usprobe::elf {
namespace {

using namespace test_util;

constexpr uint8_t kOmit = 0xff, kULeb128 = 0x01, kUData4 = 0x03, kPcRelSData4 = 0x1b,
                  kIndirectPcRelSData4 = 0x9b;

void put_u32(std::vector<uint8_t> &v, uint32_t x) {
  for (int i = 0; i < 4; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}

TEST(Lsda, Uleb128CallSitesGiveLandingPadsFromTheFunctionStart) {
  // No LPStart (so the function's start), no type table, three call sites: the second has no
  // landing pad (0), the third an offset that takes two bytes of uleb128 (0x90 0x01 = 0x90).
  std::vector<uint8_t> lsda = {kOmit,
                               kOmit,
                               kULeb128,
                               /*table length*/ 13,
                               /*start*/ 0x04,
                               /*len*/ 0x05,
                               /*pad*/ 0x20,
                               /*action*/ 0x00,
                               /*start*/ 0x10,
                               /*len*/ 0x05,
                               /*pad*/ 0x00,
                               /*action*/ 0x00,
                               /*start*/ 0x18,
                               /*len*/ 0x05,
                               /*pad*/ 0x90,
                               0x01,
                               /*action*/ 0x01,
                               /*the action table follows*/ 0x7f,
                               0x00};
  EXPECT_EQ(parse_lsda(lsda, 0x9000, 0x1000), (std::vector<uint64_t>{0x1020, 0x1090}));
}

TEST(Lsda, UData4CallSitesAfterATypeTable) {
  // libstdc++'s shape: an indirect pc-relative type table, call sites in udata4.
  std::vector<uint8_t> lsda = {kOmit, kIndirectPcRelSData4, /*ttype offset*/ 0x29, kUData4,
                               /*table length*/ 3 * 13};
  for (uint32_t pad : {0x0u, 0x41u, 0x1234u}) {
    put_u32(lsda, 0x10);  // start
    put_u32(lsda, 0x08);  // length
    put_u32(lsda, pad);
    lsda.push_back(0x01);  // action (uleb128)
  }
  EXPECT_EQ(parse_lsda(lsda, 0x9000, 0x2000), (std::vector<uint64_t>{0x2041, 0x3234}));
}

TEST(Lsda, GivenLPStartIsRelativeToItsOwnField) {
  // LPStart pc-relative sdata4: the field is at 0x9001 and holds 0x4000 - 0x9001.
  std::vector<uint8_t> lsda = {kPcRelSData4};
  put_u32(lsda, static_cast<uint32_t>(0x4000 - 0x9001));
  lsda.insert(lsda.end(), {kOmit, kULeb128, 4, 0x00, 0x08, 0x30, 0x00});
  EXPECT_EQ(parse_lsda(lsda, 0x9000, 0x1000), (std::vector<uint64_t>{0x4030}));
}

TEST(Lsda, TableLongerThanTheBytesGivesNothingAndReadsNothingPast) {
  std::vector<uint8_t> lsda = {kOmit, kOmit, kULeb128, 100, 0x00, 0x08, 0x30, 0x00};
  EXPECT_TRUE(parse_lsda(lsda, 0x9000, 0x1000).empty());
  EXPECT_TRUE(parse_lsda({}, 0x9000, 0x1000).empty());
  std::vector<uint8_t> cut = {kOmit, kOmit, kUData4, 12, 0x00, 0x00};  // a record cut short
  EXPECT_TRUE(parse_lsda(cut, 0x9000, 0x1000).empty());
}

// Functions of this program with landing pads. The cleanup's destructor runs from its landing pad
// while an exception passes, and notes where it was called from: a few bytes after the pad.
uintptr_t g_called_from_cleanup = 0;
uintptr_t g_called_from_catch = 0;

struct NoteUnwinding {
  __attribute__((noinline)) ~NoteUnwinding() {
    if (std::uncaught_exceptions() > 0)
      g_called_from_cleanup = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
    asm volatile("" ::: "memory");
  }
};

__attribute__((noinline)) void note_catch() {
  g_called_from_catch = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
  asm volatile("" ::: "memory");
}

}  // namespace
}  // namespace usprobe::elf

extern "C" __attribute__((noinline)) void usprobe_lp_throw(int x) {
  if (x != 0) throw x;
  asm volatile("" ::: "memory");
}

extern "C" __attribute__((noinline)) int usprobe_lp_cleanup(int x) {
  usprobe::elf::NoteUnwinding note;
  usprobe_lp_throw(x);
  return x + 1;
}

extern "C" __attribute__((noinline)) int usprobe_lp_catch(int x) {
  try {
    return usprobe_lp_cleanup(x);
  } catch (int e) {
    usprobe::elf::note_catch();
    return e * 2;
  }
}

namespace usprobe::elf {
namespace {

// The nearest landing pad at or below `offset`, and the function that holds it.
struct PadBelow {
  uint64_t pad = 0;
  std::string function;
};

std::optional<PadBelow> pad_below(const ElfFile &file, uint64_t offset) {
  const auto &pads = file.landing_pads();
  auto it = std::upper_bound(pads.begin(), pads.end(), offset);
  if (it == pads.begin()) return std::nullopt;
  --it;
  std::optional<Function> f = file.function_containing(*it);
  return PadBelow{*it, f ? f->name : ""};
}

TEST(LandingPads, CleanupAndCatchOfThisProgramAreWhereTheUnwinderResumedThem) {
  ASSERT_EQ(usprobe_lp_catch(0), 1);
  ASSERT_EQ(usprobe_lp_catch(21), 42);
  ASSERT_NE(g_called_from_cleanup, 0u);
  ASSERT_NE(g_called_from_catch, 0u);

  auto self = file_position(reinterpret_cast<const void *>(&usprobe_lp_cleanup));
  ASSERT_TRUE(self);
  auto file = ElfFile::open(self->path);
  ASSERT_TRUE(file) << file.error().message;
  EXPECT_FALSE((*file)->landing_pads().empty());
  EXPECT_TRUE(std::is_sorted((*file)->landing_pads().begin(), (*file)->landing_pads().end()));

  auto cleanup_call = file_position(reinterpret_cast<const void *>(g_called_from_cleanup));
  auto catch_call = file_position(reinterpret_cast<const void *>(g_called_from_catch));
  ASSERT_TRUE(cleanup_call && catch_call);
  // The call instruction itself (at least 2 bytes) lies between the pad and its return address;
  // the pad's own code before it is a few moves (a selector test for the catch).
  auto pad = pad_below(**file, cleanup_call->offset - 2);
  ASSERT_TRUE(pad);
  EXPECT_LT(cleanup_call->offset - pad->pad, 48u) << "nearest pad too far below the cleanup";
  EXPECT_TRUE(pad->function.starts_with("usprobe_lp_cleanup")) << pad->function;
  pad = pad_below(**file, catch_call->offset - 2);
  ASSERT_TRUE(pad);
  EXPECT_LT(catch_call->offset - pad->pad, 96u) << "nearest pad too far below the catch";
  EXPECT_TRUE(pad->function.starts_with("usprobe_lp_catch")) << pad->function;
}

TEST(LandingPads, FunctionWithoutCleanupsHasNone) {
  auto self = file_position(reinterpret_cast<const void *>(&usprobe_lp_throw));
  ASSERT_TRUE(self);
  auto file = ElfFile::open(self->path);
  ASSERT_TRUE(file) << file.error().message;
  std::optional<Function> f = (*file)->function_containing(self->offset);
  ASSERT_TRUE(f);
  const auto &pads = (*file)->landing_pads();
  auto in = std::lower_bound(pads.begin(), pads.end(), f->file_offset);
  EXPECT_TRUE(in == pads.end() || *in >= f->file_offset + f->size);
}

TEST(UnwindRanges, FdeBoundsAreTheSymbolsBounds) {
  auto self = file_position(reinterpret_cast<const void *>(&usprobe_lp_throw));
  ASSERT_TRUE(self);
  auto file = ElfFile::open(self->path);
  ASSERT_TRUE(file) << file.error().message;
  std::optional<Function> f = (*file)->function_containing(self->offset);
  ASSERT_TRUE(f);
  auto range = (*file)->unwind_range_containing(self->offset + 1);
  ASSERT_TRUE(range);
  EXPECT_EQ(range->file_offset, f->file_offset);
  EXPECT_EQ(range->size, f->size);
  EXPECT_FALSE((*file)->unwind_range_containing(0));  // the ELF header
  const auto &all = (*file)->unwind_ranges();
  EXPECT_TRUE(std::is_sorted(all.begin(), all.end(), [](const auto &a, const auto &b) {
    return a.file_offset < b.file_offset;
  }));
  EXPECT_TRUE(std::any_of(all.begin(), all.end(), [&](const auto &r) {
    return r.file_offset == f->file_offset && r.size == f->size;
  }));
}

constexpr char kTwoFunctions[] = R"(
__attribute__((noipa)) long work(long x) { return x * 7 + 3; }
__attribute__((noipa)) long more(long x) { return work(x) ^ (x << 3); }
int main(int argc, char **argv) { (void)argv; return (int)more(argc); }
)";

TEST(UnwindRanges, StrippedProgramGetsItsFunctionBoundsFromEhFrame) {
  REQUIRE_GCC();
  std::string exe = build_with_gcc("fde_bounds", "-O2", kTwoFunctions);
  ASSERT_FALSE(exe.empty());
  std::string stripped = exe + "_stripped";
  ASSERT_EQ(std::system(("strip -o " + stripped + " " + exe).c_str()), 0);
  auto full = ElfFile::open(exe);
  ASSERT_TRUE(full) << full.error().message;
  for (const char *name : {"work", "more"}) {
    auto fn = (*full)->find_function(name);
    ASSERT_TRUE(fn) << fn.error().message;
    // An offset one byte in: no symbol covers it in the stripped file, its FDE does.
    char spec[64];
    std::snprintf(spec, sizeof spec, ":0x%llx",
                  static_cast<unsigned long long>(fn->file_offset + 1));
    auto loc = resolve_location(stripped + spec);
    ASSERT_TRUE(loc) << loc.error().message;
    EXPECT_TRUE(loc->symbol.empty()) << loc->symbol;
    EXPECT_EQ(loc->func_offset, fn->file_offset) << name;
    EXPECT_EQ(loc->func_size, fn->size) << name;
    // At the FDE's first byte the bounds stay unknown (it could be a cold part, not an entry).
    std::snprintf(spec, sizeof spec, ":0x%llx", static_cast<unsigned long long>(fn->file_offset));
    auto start = resolve_location(stripped + spec);
    ASSERT_TRUE(start) << start.error().message;
    EXPECT_EQ(start->func_size, 0u) << name;
  }
}

}  // namespace
}  // namespace usprobe::elf
