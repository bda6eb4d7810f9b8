// The mapping table: address -> (file, offset) at boundaries and in holes, files mapped more than
// once, this process's own mappings, and readers that race a writer replacing the whole layout.
#include "core/mapping_table.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "core/os.h"

namespace usprobe {
namespace {

os::Mapping file_map(uint64_t start, uint64_t end, uint64_t offset, dev_t dev, ino_t ino,
                     bool exec = true, std::string path = "/lib/x.so") {
  os::Mapping m;
  m.start = start;
  m.end = end;
  m.read = true;
  m.exec = exec;
  m.priv = true;
  m.offset = offset;
  m.dev = dev;
  m.ino = ino;
  m.path = std::move(path);
  return m;
}

FileLocation at(const os::Mapping &m, uint64_t addr) {
  return FileLocation{m.dev, m.ino, m.offset + (addr - m.start), m.start, m.end, m.exec};
}

// The answer a layout gives for `addr`, by a linear scan: what lookup() must agree with.
std::optional<FileLocation> reference(const std::vector<os::Mapping> &layout, uint64_t addr) {
  for (const os::Mapping &m : layout)
    if (m.ino != 0 && addr >= m.start && addr < m.end) return at(m, addr);
  return std::nullopt;
}

TEST(MappingTable, EmptyTableFindsNothing) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  MappingTable table;
  EXPECT_EQ(table.lookup(0x1000), std::nullopt);
  EXPECT_EQ(table.size(), 0u);
  EXPECT_TRUE(table.ranges_of(1, 2).empty());
  table.replace({});
  EXPECT_EQ(table.lookup(0), std::nullopt);
}

TEST(MappingTable, LooksUpBoundariesAndHoles) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  MappingTable table;
  auto a = file_map(0x1000, 0x3000, 0x0, 8, 10);
  auto b = file_map(0x3000, 0x4000, 0x2000, 8, 11, false);  // adjacent to a
  auto c = file_map(0x8000, 0x9000, 0x5000, 9, 12);         // after a hole
  table.replace({a, b, c});
  EXPECT_EQ(table.size(), 3u);

  EXPECT_EQ(table.lookup(0), std::nullopt);
  EXPECT_EQ(table.lookup(0x0fff), std::nullopt);
  EXPECT_EQ(table.lookup(0x1000), at(a, 0x1000));
  EXPECT_EQ(table.lookup(0x1000)->file_offset, 0x0u);
  EXPECT_EQ(table.lookup(0x2fff)->file_offset, 0x1fffu);
  EXPECT_EQ(table.lookup(0x2fff)->ino, 10u);
  EXPECT_EQ(table.lookup(0x3000), at(b, 0x3000));
  EXPECT_EQ(table.lookup(0x3000)->file_offset, 0x2000u);
  EXPECT_FALSE(table.lookup(0x3000)->exec);
  EXPECT_EQ(table.lookup(0x3fff), at(b, 0x3fff));
  EXPECT_EQ(table.lookup(0x4000), std::nullopt);
  EXPECT_EQ(table.lookup(0x7fff), std::nullopt);
  EXPECT_EQ(table.lookup(0x8000), at(c, 0x8000));
  EXPECT_EQ(table.lookup(0x8abc)->file_offset, 0x5abcu);
  EXPECT_EQ(table.lookup(0x8abc)->dev, 9u);
  EXPECT_EQ(table.lookup(0x8fff), at(c, 0x8fff));
  EXPECT_EQ(table.lookup(0x9000), std::nullopt);
  EXPECT_EQ(table.lookup(UINT64_MAX), std::nullopt);
}

TEST(MappingTable, LeavesOutAnonymousMappings) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  MappingTable table;
  auto heap = file_map(0x1000, 0x2000, 0, 0, 0, false, "[heap]");
  auto anon = file_map(0x2000, 0x3000, 0, 0, 0, false, "");
  auto file = file_map(0x3000, 0x4000, 0x1000, 8, 77);
  table.replace({heap, anon, file});
  EXPECT_EQ(table.size(), 1u);
  EXPECT_EQ(table.lookup(0x1800), std::nullopt);
  EXPECT_EQ(table.lookup(0x2800), std::nullopt);
  EXPECT_EQ(table.lookup(0x3800), at(file, 0x3800));
}

TEST(MappingTable, ManyMappingsInAnyOrder) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  std::vector<os::Mapping> layout;
  for (uint64_t i = 0; i < 1000; ++i) {
    uint64_t start = 0x7f0000000000 + i * 0x10000, len = 0x1000 * (1 + i % 7);
    layout.push_back(file_map(start, start + len, i * 0x3000, 8, 100 + i % 13, i % 2));
  }
  std::shuffle(layout.begin(), layout.end(), std::mt19937(42));
  MappingTable table;
  table.replace(layout);
  EXPECT_EQ(table.size(), 1000u);
  for (const os::Mapping &m : layout) {
    EXPECT_EQ(table.lookup(m.start), at(m, m.start));
    EXPECT_EQ(table.lookup(m.end - 1), at(m, m.end - 1));
    EXPECT_EQ(table.lookup(m.start - 1), std::nullopt);  // holes on both sides
    EXPECT_EQ(table.lookup(m.end), std::nullopt);
  }
}

TEST(MappingTable, ReplaceForgetsTheOldLayout) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  MappingTable table;
  auto old_lib = file_map(0x10000, 0x20000, 0, 8, 1);
  table.replace({old_lib});
  EXPECT_EQ(table.lookup(0x10000), at(old_lib, 0x10000));
  auto new_lib = file_map(0x18000, 0x30000, 0x4000, 8, 2);  // dlclose + dlopen, overlapping
  table.replace({new_lib});
  EXPECT_EQ(table.lookup(0x10000), std::nullopt);
  EXPECT_EQ(table.lookup(0x18000), at(new_lib, 0x18000));
  EXPECT_TRUE(table.ranges_of(8, 1).empty());
  EXPECT_EQ(table.ranges_of(8, 2).size(), 1u);
}

TEST(MappingTable, OverlappingInputKeepsTheLowerMapping) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  MappingTable table;
  auto low = file_map(0x1000, 0x3000, 0, 8, 1);
  auto overlapping = file_map(0x2000, 0x4000, 0, 8, 2);
  table.replace({overlapping, low});
  EXPECT_EQ(table.size(), 1u);
  EXPECT_EQ(table.lookup(0x2800), at(low, 0x2800));
  EXPECT_EQ(table.lookup(0x3800), std::nullopt);
}

TEST(MappingTable, SameFileMappedTwiceHasARangeForEachMapping) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  // One library loaded twice (dlmopen), text and data each, with an unrelated file between.
  std::vector<os::Mapping> layout = {
      file_map(0x400000, 0x402000, 0x0, 8, 42, true, "/lib/twice.so"),
      file_map(0x402000, 0x403000, 0x3000, 8, 42, false, "/lib/twice.so"),
      file_map(0x500000, 0x501000, 0x0, 8, 43, true, "/lib/other.so"),
      file_map(0x600000, 0x602000, 0x0, 8, 42, true, "/lib/twice.so"),
      file_map(0x602000, 0x603000, 0x3000, 8, 42, false, "/lib/twice.so"),
  };
  MappingTable table;
  table.replace(layout);

  // The same instruction (file offset 0x1234) answers as the same location at both sites.
  auto first = table.lookup(0x401234), second = table.lookup(0x601234);
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->file_offset, 0x1234u);
  EXPECT_EQ(second->file_offset, 0x1234u);
  EXPECT_EQ(first->ino, second->ino);
  EXPECT_EQ(first->start, 0x400000u);
  EXPECT_EQ(second->start, 0x600000u);

  std::vector<os::Mapping> ranges = table.ranges_of(8, 42);
  ASSERT_EQ(ranges.size(), 4u);
  EXPECT_EQ(ranges[0].start, 0x400000u);
  EXPECT_EQ(ranges[1].start, 0x402000u);
  EXPECT_EQ(ranges[2].start, 0x600000u);
  EXPECT_EQ(ranges[3].start, 0x602000u);
  EXPECT_EQ(ranges[3].offset, 0x3000u);
  EXPECT_EQ(ranges[0].path, "/lib/twice.so");
  EXPECT_TRUE(table.ranges_of(9, 42).empty());  // same inode number, other device
}

TEST(MappingTable, MappingAtGivesThePathForMessages) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  MappingTable table;
  table.replace({file_map(0x1000, 0x2000, 0, 8, 5, true, "/usr/lib/libfoo.so")});
  auto m = table.mapping_at(0x1fff);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->path, "/usr/lib/libfoo.so");
  EXPECT_EQ(table.mapping_at(0x2000), std::nullopt);
}

__attribute__((noinline)) int probed_function(int x) {
  return x * 3 + 1;
}

TEST(MappingTable, FindsThisProcesssOwnCodeFromProc) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  MappingTable table;
  ASSERT_TRUE(table.update_from_proc());
  uint64_t addr = reinterpret_cast<uint64_t>(&probed_function);
  auto loc = table.lookup(addr);
  ASSERT_TRUE(loc) << std::hex << addr;
  EXPECT_TRUE(loc->exec);
  EXPECT_NE(loc->ino, 0u);
  auto m = table.mapping_at(addr);
  ASSERT_TRUE(m);
  // The test binary itself (unit_tests, or tsan_tests under ThreadSanitizer).
  EXPECT_EQ(m->path, std::filesystem::read_symlink("/proc/self/exe").string()) << m->path;
  // Every mapping of the test binary, and the one holding the function among them.
  auto ranges = table.ranges_of(loc->dev, loc->ino);
  EXPECT_GE(ranges.size(), 2u);  // text and at least one data or read-only segment
  EXPECT_TRUE(std::any_of(ranges.begin(), ranges.end(),
                          [&](const os::Mapping &r) { return r.start == loc->start && r.exec; }));
  EXPECT_EQ(probed_function(1), 4);
}

TEST(MappingTable, UpdateFromAnUnreadableFileFailsAndKeepsTheTable) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  MappingTable table;
  auto lib = file_map(0x1000, 0x2000, 0, 8, 5);
  table.replace({lib});
  auto r = table.update_from_proc("/nonexistent/maps");
  EXPECT_FALSE(r);
  EXPECT_EQ(table.lookup(0x1000), at(lib, 0x1000));
}

TEST(MappingTable, ReadRetrySeesAWriterInProgress) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  MappingTable table;
  auto lib = file_map(0x1000, 0x2000, 0, 8, 5);
  table.replace({lib});
  uint64_t s = table.read_begin();
  EXPECT_FALSE(table.read_retry(s));
  table.write_begin();
  EXPECT_TRUE(table.read_retry(s));
  EXPECT_TRUE(table.read_retry(table.read_begin()));  // odd: a writer is publishing
  // A reader on the writer's own thread (a signal handler that interrupted it) still answers.
  EXPECT_EQ(table.lookup(0x1000), at(lib, 0x1000));
  table.write_end();
  EXPECT_TRUE(table.read_retry(s));
  EXPECT_FALSE(table.read_retry(table.read_begin()));
}

MappingTable *g_signal_table;
std::optional<FileLocation> g_signal_answer;

TEST(MappingTable, LookupWorksInASignalHandler) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  MappingTable table;
  auto lib = file_map(0x1000, 0x2000, 0x700, 8, 5);
  table.replace({lib});
  g_signal_table = &table;
  struct sigaction sa {
  }, old{};
  sa.sa_handler = [](int) { g_signal_answer = g_signal_table->lookup(0x1010); };
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  ASSERT_EQ(raise(SIGUSR1), 0);
  ASSERT_EQ(sigaction(SIGUSR1, &old, nullptr), 0);
  EXPECT_EQ(g_signal_answer, at(lib, 0x1010));
}

// Two layouts of the same address range that disagree almost everywhere: different boundaries,
// holes in different places, different files, offsets and permissions. A reader that mixed them
// (the bounds of one with the file of the other, a freed table, a half-built one) would give an
// answer that neither layout gives.
std::vector<os::Mapping> layout_a(uint64_t base) {
  std::vector<os::Mapping> v;
  for (uint64_t i = 0; i < 100; ++i)  // 3 pages mapped, 1 page hole
    v.push_back(file_map(base + i * 0x4000, base + i * 0x4000 + 0x3000, i * 0x10000, 1, 1000 + i));
  return v;
}
std::vector<os::Mapping> layout_b(uint64_t base) {
  std::vector<os::Mapping> v;
  for (uint64_t i = 0; i < 150; ++i)  // 2 pages, no holes, half a page off a's boundaries
    v.push_back(file_map(base + 0x800 + i * 0x2000, base + 0x800 + (i + 1) * 0x2000,
                         i * 0x20000 + 0x800, 2, 2000 + i, false));
  return v;
}

TEST(MappingTable, ReadersSeeOneWholeLayoutWhileAWriterReplacesIt) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  const uint64_t base = 0x7f1200000000;
  const auto a = layout_a(base), b = layout_b(base);
  // Addresses every 0x100 bytes over both layouts and past them, with each layout's answer.
  struct Point {
    uint64_t addr;
    std::optional<FileLocation> in_a, in_b;
  };
  std::vector<Point> points;
  for (uint64_t addr = base - 0x1000; addr < base + 0x4000 * 101; addr += 0x100)
    points.push_back({addr, reference(a, addr), reference(b, addr)});
  size_t differing = 0;
  for (auto &p : points) differing += p.in_a != p.in_b;
  ASSERT_GT(differing, points.size() / 2);

  MappingTable table;
  table.replace(a);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> wrong{0}, saw_a_only{0}, saw_b_only{0}, lookups{0};
  std::vector<std::thread> readers;
  for (unsigned r = 0; r < 2; ++r)
    readers.emplace_back([&, r] {
      uint64_t n = 0, only_a = 0, only_b = 0, bad = 0;
      size_t i = r * 7;
      while (!stop.load(std::memory_order_relaxed)) {
        i = (i + 97) %
            points.size();  // 97 is prime to the count: every probe, in a scattered order
        const Point &p = points[i];
        auto got = table.lookup(p.addr);
        if (got == p.in_a && got == p.in_b) {
        } else if (got == p.in_a) {
          ++only_a;
        } else if (got == p.in_b) {
          ++only_b;
        } else if (++bad <= 5) {
          ADD_FAILURE() << std::hex << "0x" << p.addr << ": an answer from neither layout";
        }
        ++n;
      }
      wrong += bad;
      saw_a_only += only_a;
      saw_b_only += only_b;
      lookups += n;
    });

  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1000);
  uint64_t replacements = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    table.replace(++replacements % 2 ? b : a);
    // Also the other kind of writer: a publish that changes no mapping still moves the count.
    table.write_begin();
    table.write_end();
  }
  stop = true;
  for (auto &t : readers) t.join();
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_GT(replacements, 10u);
  EXPECT_GT(saw_a_only.load(), 0u);  // the readers really raced both layouts
  EXPECT_GT(saw_b_only.load(), 0u);
  std::printf("[ info ] %llu replacements, %llu lookups (%llu answered from a, %llu from b)\n",
              static_cast<unsigned long long>(replacements),
              static_cast<unsigned long long>(lookups.load()),
              static_cast<unsigned long long>(saw_a_only.load()),
              static_cast<unsigned long long>(saw_b_only.load()));
}

// Not a timed assertion: prints the read side's cost for the record (benchmarks hold the goals).
TEST(MappingTable, PrintsTheReadSideCost) {
  ASSERT_TRUE(os::membarrier_init());  // for the writers' grace periods
  for (uint64_t count : {16u, 1024u}) {
    std::vector<os::Mapping> layout;
    for (uint64_t i = 0; i < count; ++i)
      layout.push_back(file_map(0x10000000 + i * 0x10000, 0x10000000 + i * 0x10000 + 0x8000,
                                i * 0x8000, 8, 1 + i));
    MappingTable table;
    table.replace(layout);
    const uint64_t iterations = 200000;
    uint64_t found = 0, addr = 0x10000000;
    table.lookup(addr);  // registers this thread's record outside the timing
    auto t0 = std::chrono::steady_clock::now();
    for (uint64_t i = 0; i < iterations; ++i) {
      // Scattered over all mappings (and their holes) so the search does not hit one path only.
      addr = 0x10000000 + ((i * 0x9e3779b97f4a7c15ull) >> 20) % (count * 0x10000);
      auto loc = table.lookup(addr);
      found += loc ? loc->file_offset & 1 ? 2 : 1 : 0;
    }
    double ns =
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() /
        iterations;
    std::printf("[ info ] lookup, %llu mappings: %.1f ns (%llu found)\n",
                static_cast<unsigned long long>(count), ns, static_cast<unsigned long long>(found));
    EXPECT_GT(found, 0u);
  }
}

}  // namespace
}  // namespace usprobe
