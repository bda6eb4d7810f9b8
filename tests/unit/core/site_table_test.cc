// The site table: lookups by exact site address, concurrent with a writer that republishes.
#include "core/site_table.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "core/mapping_table.h"
#include "core/os.h"
#include "core/rcu.h"

namespace usprobe {
namespace {

void collect() {
  auto garbage = site_table::take_retired();
  rcu::synchronize();
  for (auto &g : garbage) g();
}

constexpr dev_t kDev = 8;
constexpr ino_t kIno = 42;

// The process's mapping table says file (kDev, kIno) is mapped at [0x1000, 0x4000) from file
// offset 0x10000 and at [0x500000, 0x700000) from offset 0; lookups are checked against it.
void map_fake_file() {
  os::Mapping a{.start = 0x1000,
                .end = 0x4000,
                .read = true,
                .exec = true,
                .offset = 0x10000,
                .dev = kDev,
                .ino = kIno,
                .path = "/fake"};
  os::Mapping b = a;
  b.start = 0x500000;
  b.end = 0x700000;
  b.offset = 0;
  MappingTable::process().replace({a, b});
}

// A site of the fake file at `site` (its file offset follows from the mappings above).
site_table::Entry at(uint64_t site, uint64_t trampoline) {
  uint64_t offset = site < 0x4000 ? site - 0x1000 + 0x10000 : site - 0x500000;
  return {site, trampoline, kDev, kIno, offset};
}

TEST(SiteTable, LooksUpExactSitesOnly) {
  ASSERT_TRUE(os::membarrier_init());
  map_fake_file();
  site_table::insert({at(0x1000, 0xa000), at(0x3000, 0xc000), at(0x2000, 0xb000)});
  EXPECT_EQ(site_table::lookup(0x2000), 0xb000u);
  EXPECT_EQ(site_table::lookup(0x1000), 0xa000u);
  EXPECT_EQ(site_table::lookup(0x2001), 0u);
  EXPECT_EQ(site_table::lookup(0x0fff), 0u);
  site_table::remove({0x2000});
  EXPECT_EQ(site_table::lookup(0x2000), 0u);
  EXPECT_EQ(site_table::lookup(0x3000), 0xc000u);
  site_table::remove({0x1000, 0x3000});
  collect();
}

TEST(SiteTable, ReadersSeeEachSiteWhileAWriterChurnsOthers) {
  ASSERT_TRUE(os::membarrier_init());
  map_fake_file();
  site_table::insert({at(0x500000, 0x900000)});
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> wrong{0}, lookups{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t)
    readers.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        if (site_table::lookup(0x500000) != 0x900000) wrong.fetch_add(1);
        lookups.fetch_add(1, std::memory_order_relaxed);
      }
    });
  while (lookups.load() < 1000) std::this_thread::yield();  // readers are running
  for (uint64_t i = 0; i < 500; ++i) {
    site_table::insert({at(0x600000 + i * 16, 0xa00000 + i)});
    if (i % 7 == 0) map_fake_file();  // the mapping table republished: readers may retry
    if (i % 2) site_table::remove({0x600000 + (i - 1) * 16});
    if (i % 50 == 0) collect();
  }
  stop = true;
  for (auto &t : readers) t.join();
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_GT(lookups.load(), 0u);
  std::vector<uint64_t> all{0x500000};
  for (uint64_t i = 0; i < 500; ++i) all.push_back(0x600000 + i * 16);
  site_table::remove(all);
  collect();
}

// A site whose file is no longer what is mapped at its address (the library was unmapped and
// something else took the address) is not a site any more: the trap goes to the application.
TEST(SiteTable, IgnoresSitesOfAFileNoLongerMappedThere) {
  ASSERT_TRUE(os::membarrier_init());
  map_fake_file();
  site_table::Entry other_file = at(0x2000, 0xb000);
  other_file.ino = kIno + 1;
  site_table::Entry wrong_offset = at(0x3000, 0xc000);
  wrong_offset.file_offset += 0x1000;
  site_table::insert({other_file, wrong_offset, at(0x510000, 0xd000), at(0x800000, 0xe000)});
  EXPECT_EQ(site_table::lookup(0x2000), 0u);
  EXPECT_EQ(site_table::lookup(0x3000), 0u);
  EXPECT_EQ(site_table::lookup(0x510000), 0xd000u);
  EXPECT_EQ(site_table::lookup(0x800000), 0u);  // not mapped at all
  MappingTable::process().replace({});          // the file goes away
  EXPECT_EQ(site_table::lookup(0x510000), 0u);
  site_table::remove({0x2000, 0x3000, 0x510000, 0x800000});
  collect();
}

}  // namespace
}  // namespace usprobe
