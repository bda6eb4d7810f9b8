// alloc_code_within(): code memory at an address constrained to a range (a punned jump's target).
// alloc_code_near() and write_code_later(): a batch's trampolines, in slabs near the code.
#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <optional>

#include <gtest/gtest.h>

#include "core/os.h"

namespace usprobe::os {
namespace {

// A free stretch of address space: reserved, then given back.
uint64_t free_range(size_t len) {
  void *p = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  EXPECT_NE(p, MAP_FAILED);
  munmap(p, len);
  return reinterpret_cast<uint64_t>(p);
}

bool mapped(uint64_t addr) {
  auto maps = read_mappings();
  if (!maps) return false;
  for (const auto &m : *maps)
    if (addr >= m.start && addr < m.end) return true;
  return false;
}

// The mapping that holds addr, or none.
std::optional<Mapping> mapping_of(uint64_t addr) {
  auto maps = read_mappings();
  if (!maps) return std::nullopt;
  for (const auto &m : *maps)
    if (addr >= m.start && addr < m.end) return m;
  return std::nullopt;
}

// A batch's first trampolines go to a new slab, written in place while nothing can run it: it is
// never writable and executable at once, and the flush makes it read+execute before any site can
// jump there. A block whose slab was flushed already is written through /proc/self/mem, and its
// page stays read+execute.
TEST(CodeMemoryNear, ANewSlabIsWrittenInPlaceAndExecutableOnlyOnceFlushed) {
  // Within 1 MB of a place no slab serves yet: below a page of our own at the top of a free
  // stretch (slabs go next to mappings), a new slab.
  constexpr size_t kStretch = 1 << 24;
  void *stretch = mmap(nullptr, kStretch, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(stretch, MAP_FAILED);
  const uint64_t anchor = reinterpret_cast<uint64_t>(stretch) + kStretch - 4096;
  munmap(stretch, kStretch - 4096);
  ASSERT_TRUE(read_mappings());  // the allocator's view of the address space, with the anchor
  const uint64_t near = anchor - (1 << 18), reach = 1 << 20;
  auto a = alloc_code_near(near, 64, reach);
  ASSERT_TRUE(a) << a.error().message;
  auto before = mapping_of(*a);
  ASSERT_TRUE(before);
  EXPECT_TRUE(before->write && !before->exec) << "a new slab is read+write until the flush";
  const uint8_t mov_ret[] = {0xb8, 0x2a, 0x00, 0x00, 0x00, 0xc3};  // mov $42,%eax; ret
  write_code_later(*a, mov_ret, 64);
  ASSERT_TRUE(flush_code());
  auto after = mapping_of(*a);
  ASSERT_TRUE(after);
  EXPECT_TRUE(after->exec && !after->write) << "not read+execute after the flush";
  EXPECT_EQ(reinterpret_cast<int (*)()>(*a)(), 42);
  const auto *tail = reinterpret_cast<const uint8_t *>(*a) + sizeof mov_ret;
  for (size_t i = 0; i < 64 - sizeof mov_ret; ++i) ASSERT_EQ(tail[i], 0xcc) << "tail byte " << i;

  auto b = alloc_code_near(near, 64, reach);  // in the flushed slab: through /proc/self/mem
  ASSERT_TRUE(b) << b.error().message;
  const uint8_t mov_ret_b[] = {0xb8, 0x07, 0x00, 0x00, 0x00, 0xc3};  // mov $7,%eax; ret
  write_code_later(*b, mov_ret_b, 64);
  ASSERT_TRUE(flush_code());
  EXPECT_EQ(*b & ~uint64_t{0xffff}, *a & ~uint64_t{0xffff}) << "not the same slab";
  auto now = mapping_of(*b);
  ASSERT_TRUE(now);
  EXPECT_TRUE(now->exec && !now->write);
  EXPECT_EQ(reinterpret_cast<int (*)()>(*b)(), 7);
  EXPECT_EQ(reinterpret_cast<int (*)()>(*a)(), 42);
  free_code(*a, 64);
  free_code(*b, 64);
  munmap(reinterpret_cast<void *>(anchor), 4096);
}

// Addresses reserved where a file that is not mapped here would be (the CLI's look at another
// program's sites, core/site_analysis.cc) are taken for the allocator at once, though a read of the
// mappings just before left it a view without them: a slab goes next to them, and the next
// reservation there fails.
TEST(CodeMemoryNear, ASlabGoesNextToAddressesJustReserved) {
  constexpr size_t kStretch = 1 << 26, kReserved = 1 << 20;
  const uint64_t at = free_range(kStretch) + kStretch / 2;  // 32 MB of free space either side
  ASSERT_TRUE(read_mappings());  // the allocator's view, before the reservation
  auto reserved = reserve_addresses(at, kReserved);
  ASSERT_TRUE(reserved) << reserved.error().message;
  EXPECT_EQ(*reserved, at);
  constexpr uint64_t kReach = 1 << 22;  // nothing else within reach
  auto a = alloc_code_near(at + 4096, 64, kReach);
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_TRUE(mapped(at));  // (a read of the mappings, which leaves the allocator a new view)
  EXPECT_LE(*a > at ? *a - at : at - *a, kReach);
  auto again = reserve_addresses(at, 4096);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ENOMEM);
  free_code(*a, 64);
  release_addresses(at, kReserved);
  EXPECT_FALSE(mapped(at));
}

TEST(CodeMemoryWithin, PlacesBlocksInTheRangeAndSharesPages) {
  const uint64_t base = free_range(1 << 20);
  // A 256-byte range in the middle of a page.
  const uint64_t lo = base + 0x40000 + 0x123, hi = lo + 256;
  auto a = alloc_code_within(lo, hi, 16);
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_GE(*a, lo);
  EXPECT_LT(*a, hi);
  auto b = alloc_code_within(lo, hi, 16);
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_GE(*b, lo);
  EXPECT_LT(*b, hi);
  EXPECT_TRUE(*b >= *a + 16 || *b + 16 <= *a) << "blocks overlap";
  EXPECT_EQ(*a & ~0xfffull, *b & ~0xfffull) << "one page for both";
  EXPECT_TRUE(mapped(*a));
  // Executable, and written through write_code.
  const uint8_t ret[] = {0xc3};
  ASSERT_TRUE(write_code(*a, ret));
  reinterpret_cast<void (*)()> (*a)();
  free_code_within(*a, 16);
  EXPECT_TRUE(mapped(*b)) << "the page still holds a block";
  free_code_within(*b, 16);
  EXPECT_FALSE(mapped(*b)) << "the page is given back with its last block";
}

TEST(CodeMemoryWithin, ExactAddress) {
  const uint64_t at = free_range(1 << 16) + 0x2345;
  auto a = alloc_code_within(at, at + 1, 16);
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(*a, at);
  // The same address again: taken.
  auto b = alloc_code_within(at, at + 1, 16);
  EXPECT_FALSE(b);
  free_code_within(*a, 16);
}

TEST(CodeMemoryWithin, NeverOverTakenMemoryOrOutsideUserSpace) {
  void *p = mmap(nullptr, 1 << 16, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  const auto lo = reinterpret_cast<uint64_t>(p);
  auto a = alloc_code_within(lo + 0x100, lo + 0x8000, 16);
  EXPECT_FALSE(a) << "placed inside another mapping";
  if (!a) {
    EXPECT_EQ(a.error().code, ENOMEM);
  }
  munmap(p, 1 << 16);
  EXPECT_FALSE(alloc_code_within(0, 0x1000, 16)) << "below mmap_min_addr";
  EXPECT_FALSE(alloc_code_within(0x800000000000ull, 0x800000001000ull, 16)) << "kernel space";
}

}  // namespace
}  // namespace usprobe::os
