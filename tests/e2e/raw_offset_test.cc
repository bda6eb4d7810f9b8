// Raw file offsets (FILE:0xOFF) in stripped programs: the bounds of the code around the offset
// come from .eh_frame, so an offset inside an instruction is refused as in an unstripped file, and
// one at an instruction start counts exactly. Where nothing gives the bounds, the offset is
// refused unless --unsafe says to take it as given.
#include <optional>
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "arch/x86_64/relocator.h"
#include "e2e_support.h"
#include "elf/elf_file.h"

namespace {

using e2e::Output;

// entry_work's first and second instruction starts, read in the unstripped file.
struct Offsets {
  uint64_t start = 0, second = 0;
};

std::optional<Offsets> offsets_of(const std::string &unstripped) {
  auto f = e2e::function_in(unstripped, "entry_work");
  if (!f) return std::nullopt;
  auto file = usprobe::elf::ElfFile::open(unstripped);
  if (!file) return std::nullopt;
  auto scan = usprobe::x86::scan_function((*file)->bytes(f->offset, f->size), f->offset);
  if (scan.boundaries.size() < 2 || scan.boundaries[1] < 2) return std::nullopt;
  return Offsets{f->offset, f->offset + scan.boundaries[1]};
}

std::string hex(uint64_t v) {
  return fmt::format("{:#x}", v);
}

// 1000 calls: sum of 7i + 3.
constexpr const char *kSum = "sum 3499500\n";

// entry_target prints its argc when it runs.
void expect_refused(const Output &r, const std::string &mentions) {
  e2e::expect_refused(r, mentions, "argc");
}

TEST(RawOffset, InsideAnInstructionOfAStrippedProgramIsRefused) {
  auto off = offsets_of(ENTRY_TARGET);
  ASSERT_TRUE(off);
  const std::string stripped = std::string(ENTRY_TARGET) + "_stripped";
  ASSERT_FALSE(e2e::function_in(stripped, "entry_work")) << "not stripped";
  Output r = e2e::run({e2e::cli(), "count", "exe:" + hex(off->start + 1), "--", stripped, "1000"});
  expect_refused(r, "offset " + hex(off->start + 1) + " is inside an instruction");
}

TEST(RawOffset, InstructionStartOfAStrippedProgramCountsExactly) {
  auto off = offsets_of(ENTRY_TARGET);
  ASSERT_TRUE(off);
  const std::string stripped = std::string(ENTRY_TARGET) + "_stripped";
  const std::string probe = "exe:" + hex(off->second);
  Output r = e2e::run({e2e::cli(), "count", "--json", probe, "--", stripped, "1000"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find(kSum), std::string::npos) << r.describe();
  EXPECT_EQ(e2e::hits_of(e2e::only_total(r), probe), 1000u) << r.describe();
}

TEST(RawOffset, WithoutAnyBoundsOnlyUnsafeTakesTheOffset) {
  auto off = offsets_of(ENTRY_TARGET_BARE);
  ASSERT_TRUE(off);
  const std::string bare = std::string(ENTRY_TARGET_BARE) + "_stripped";
  const std::string probe = "exe:" + hex(off->second);
  Output refused = e2e::run({e2e::cli(), "count", probe, "--", bare, "1000"});
  expect_refused(refused, "--unsafe");
  Output r = e2e::run({e2e::cli(), "count", "--unsafe", "--json", probe, "--", bare, "1000"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find(kSum), std::string::npos) << r.describe();
  EXPECT_EQ(e2e::hits_of(e2e::only_total(r), probe), 1000u) << r.describe();
}

}  // namespace
