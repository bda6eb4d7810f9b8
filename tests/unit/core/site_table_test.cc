// The site table: lookups by exact site address, concurrent with a writer that republishes.
#include "core/site_table.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "core/rcu.h"
#include "os/linux/membarrier.h"

namespace usprobe {
namespace {

void collect() {
  auto garbage = site_table::take_retired();
  rcu::synchronize();
  for (auto &g : garbage) g();
}

TEST(SiteTable, LooksUpExactSitesOnly) {
  ASSERT_TRUE(os::membarrier_init());
  site_table::insert({{0x1000, 0xa000}, {0x3000, 0xc000}, {0x2000, 0xb000}});
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
  site_table::insert({{0x500000, 0x900000}});
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
    site_table::insert({{0x600000 + i * 16, 0xa00000 + i}});
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

}  // namespace
}  // namespace usprobe
