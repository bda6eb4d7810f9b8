// Naming recorded stacks after their processes are gone (tools/usprobe/resolve/image_maps.h): which
// snapshot of mappings names an address of which process image, and one symbolizer over "file
// space" naming the same function the same way in processes that loaded it at different addresses.
#include "resolve/image_maps.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "protocol/maps_lines.h"

extern "C" [[gnu::noinline, gnu::used]] int usprobe_image_maps_test_leaf(int x) {
  asm volatile("" : "+r"(x));
  return x + 3;
}

namespace usprobe::cli {
namespace {

// A maps line for [start, end) of `path` at file offset `offset`.
std::string line(uint64_t start, uint64_t end, uint64_t offset, const std::string &path) {
  return fmt::format("{:x}-{:x} r-xp {:08x} fe:01 1234                       {}\n", start, end,
                     offset, path);
}

TEST(ImageMaps, NewestSnapshotOfTheProcessImageWins) {
  ImageMaps maps;
  maps.add(100, 1, "app", line(0x1000, 0x2000, 0, "/usr/bin/app"));
  // The same pid after an exec: another image, another file at the same address.
  maps.add(100, 2, "other", line(0x1000, 0x2000, 0, "/usr/bin/other"));
  // Image 1 again, at exit, after a dlopen.
  maps.add(100, 1, "app",
           line(0x1000, 0x2000, 0, "/usr/bin/app") + line(0x5000, 0x6000, 0, "/usr/lib/plugin.so"));
  ASSERT_NE(maps.find(100, 1, 0x1800), nullptr);
  EXPECT_EQ(maps.find(100, 1, 0x1800)->path, "/usr/bin/app");
  EXPECT_EQ(maps.find(100, 2, 0x1800)->path, "/usr/bin/other");
  ASSERT_NE(maps.find(100, 1, 0x5800), nullptr);
  EXPECT_EQ(maps.find(100, 1, 0x5800)->path, "/usr/lib/plugin.so");
  EXPECT_EQ(maps.find(100, 2, 0x5800), nullptr);
  EXPECT_EQ(maps.latest_image(100), 2u);
  EXPECT_EQ(maps.comm(100, 1), "app");
  EXPECT_EQ(maps.comm(100, 2), "other");
}

TEST(ImageMaps, ForkedChildFallsBackOnItsImageInOtherProcesses) {
  ImageMaps maps;
  maps.add(100, 7, "app", line(0x1000, 0x2000, 0, "/usr/bin/app"));
  // pid 101 was forked from 100 (image 7) and wrote nothing of its own.
  ASSERT_NE(maps.find(101, 7, 0x1800), nullptr);
  EXPECT_EQ(maps.find(101, 7, 0x1800)->path, "/usr/bin/app");
  EXPECT_EQ(maps.comm(101, 7), "app");
  EXPECT_EQ(maps.find(101, 8, 0x1800), nullptr);
  // covers() is about the process's own mappings: the CLI reads /proc/101/maps when it can.
  std::vector<uint64_t> ips = {0x1800};
  EXPECT_FALSE(maps.covers(101, 7, ips));
  EXPECT_TRUE(maps.covers(100, 7, ips));
  maps.add_live(101, 7, line(0x1000, 0x2000, 0, "/usr/bin/app"));
  EXPECT_TRUE(maps.covers(101, 7, ips));
}

TEST(ImageMaps, ReturnAddressesAreCoveredAtAddressMinusOne) {
  ImageMaps maps;
  maps.add(1, 1, "app", line(0x1000, 0x2000, 0, "/usr/bin/app"));
  // A call that ends the mapping returns to its end: still this mapping's instruction.
  std::vector<uint64_t> ips = {0x1800, 0x2000};
  EXPECT_TRUE(maps.covers(1, 1, ips));
  ips = {0x2000};  // the probed instruction itself: exact
  EXPECT_FALSE(maps.covers(1, 1, ips));
}

// This test binary, as mapped here and as if mapped 16 MiB higher in another process: the same
// function is named the same in both, and an address outside every mapping is "[unknown]".
TEST(StackNamer, NamesTheSameFunctionInProcessesWithDifferentLayouts) {
  std::string text = agent::naming_lines([] {
    std::string t;
    FILE *f = std::fopen("/proc/self/maps", "r");
    char buf[4096];
    size_t n;
    while (f && (n = std::fread(buf, 1, sizeof buf, f)) > 0) t.append(buf, n);
    if (f) std::fclose(f);
    return t;
  }());
  ASSERT_FALSE(text.empty());
  auto own = parse_module_map(text);
  ASSERT_TRUE(own.has_value());
  auto leaf = reinterpret_cast<uint64_t>(&usprobe_image_maps_test_leaf);
  const Module *m = own->find(leaf);
  ASSERT_NE(m, nullptr);
  constexpr uint64_t kShift = 16 << 20;
  std::string shifted = line(m->start + kShift, m->end + kShift, m->offset, m->path);

  ImageMaps maps;
  maps.add(1, 1, "self", text);
  maps.add(2, 2, "shifted", shifted);
  std::vector<uint64_t> here = {leaf + 1, 0x10}, there = {leaf + kShift + 1};
  std::vector<RawStack> stacks = {{1, 1, here}, {2, 2, there}};
  StackNamer namer(maps, stacks);
  std::vector<Frame> a = namer.name(stacks[0]), b = namer.name(stacks[1]);
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(a[0].name(), "usprobe_image_maps_test_leaf");
  EXPECT_EQ(a[0].address, leaf + 1);  // the real address, not the one in file space
  EXPECT_EQ(a[0].function_offset, 1u);
  EXPECT_EQ(a[0].module, m->path);
  EXPECT_EQ(b[0].name(), "usprobe_image_maps_test_leaf");
  EXPECT_EQ(b[0].address, leaf + kShift + 1);
  EXPECT_EQ(a[1].name(), "[unknown]");
  EXPECT_EQ(a[1].address, 0x10u);
}

}  // namespace
}  // namespace usprobe::cli
