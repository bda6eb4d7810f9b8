// A slot's stack table (protocol/stack_table.h) on its own: one owner counting stacks, a reader
// seeing only whole entries and counts that only grow, a full table or arena refusing new stacks
// while still counting known ones, and a reset that leaves nothing behind. Pure data-structure
// tests, fit for ThreadSanitizer (suite StackTable).
#include "protocol/stack_table.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <thread>
#include <tuple>
#include <vector>

namespace usprobe::agent {
namespace {

// A zeroed table area, as a fresh slot of the region has it.
class TableArea {
 public:
  TableArea(uint32_t capacity, uint32_t arena_words)
      : words_((stack_table_bytes(capacity, arena_words) + 7) / 8),
        memory_(new uint64_t[words_ + 8]()) {
    // 64-byte aligned, as in a slot.
    auto at = (reinterpret_cast<uintptr_t>(memory_.get()) + 63) & ~uintptr_t{63};
    table_ = stack_table_view(reinterpret_cast<char *>(at), capacity, arena_words);
  }
  const StackTable &table() const { return table_; }

 private:
  size_t words_;
  std::unique_ptr<uint64_t[]> memory_;
  StackTable table_;
};

struct Key {
  uint32_t probe;
  uint32_t image;
  std::vector<uint64_t> ips;
  auto operator<=>(const Key &) const = default;
};

bool count(const StackTable &t, const Key &k) {
  return stack_table_count(t, k.probe, k.image, k.ips.data(), static_cast<uint32_t>(k.ips.size()));
}

// Everything the reader side sees: key -> count.
std::map<Key, uint64_t> read_all(const StackTable &t, uint32_t probe_count = 16) {
  std::map<Key, uint64_t> out;
  stack_table_read(t, probe_count,
                   [&](uint32_t, const StackEntry &e, uint64_t c, const uint64_t *ips) {
                     out[{e.probe, e.image, std::vector<uint64_t>(ips, ips + e.frames)}] += c;
                   });
  return out;
}

TEST(StackTable, CountsARepeatedStackInOneEntry) {
  TableArea area(16, 256);
  const StackTable &t = area.table();
  Key k{1, 7, {0x401000, 0x401234, 0x7f00'0000'1000}};
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(count(t, k));
  EXPECT_EQ(t.header->used.load(), 1u);
  EXPECT_EQ(t.header->arena_used.load(), 3u);
  EXPECT_EQ(read_all(t), (std::map<Key, uint64_t>{{k, 5}}));
}

TEST(StackTable, ProbeImageAndEveryAddressAreAllPartOfTheKey) {
  TableArea area(16, 256);
  const StackTable &t = area.table();
  std::vector<Key> keys = {
      {0, 1, {10, 20, 30}}, {1, 1, {10, 20, 30}},  // another probe
      {0, 2, {10, 20, 30}},                        // another image
      {0, 1, {10, 20}},                            // a prefix
      {0, 1, {10, 20, 31}},                        // the last address differs
      {0, 1, {11, 20, 30}},                        // the first address differs
  };
  for (size_t i = 0; i < keys.size(); ++i)
    for (size_t n = 0; n <= i; ++n) ASSERT_TRUE(count(t, keys[i]));
  std::map<Key, uint64_t> want;
  for (size_t i = 0; i < keys.size(); ++i) want[keys[i]] = i + 1;
  EXPECT_EQ(read_all(t), want);
}

// Two stacks whose hashes pick the same bucket: the second is found past the first, by its frames.
TEST(StackTable, StacksInTheSameBucketAreToldApartByTheirFrames) {
  TableArea area(4, 64);  // 8 buckets
  const StackTable &t = area.table();
  Key first{0, 0, {0x1000}};
  uint32_t bucket = stack_hash(0, 0, first.ips.data(), 1) & 7;
  Key second{0, 0, {0}};
  for (uint64_t ip = 0x1001;; ++ip) {
    if ((stack_hash(0, 0, &ip, 1) & 7) == bucket) {
      second.ips[0] = ip;
      break;
    }
  }
  ASSERT_TRUE(count(t, first));
  ASSERT_TRUE(count(t, second));
  ASSERT_TRUE(count(t, second));
  ASSERT_TRUE(count(t, first));
  ASSERT_TRUE(count(t, second));
  EXPECT_EQ(t.header->used.load(), 2u);
  EXPECT_EQ(t.entries[1].bucket, (bucket + 1) & 7);
  EXPECT_EQ(read_all(t), (std::map<Key, uint64_t>{{first, 2}, {second, 3}}));
}

TEST(StackTable, AFullTableRefusesNewStacksButStillCountsKnownOnes) {
  TableArea area(4, 256);
  const StackTable &t = area.table();
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(count(t, {0, 0, {i, i + 1}}));
  EXPECT_FALSE(count(t, {0, 0, {99, 100}}));
  EXPECT_EQ(t.header->used.load(), 4u);
  EXPECT_EQ(t.header->arena_used.load(), 8u);  // the refused stack took no arena words
  for (uint64_t i = 0; i < 4; ++i) EXPECT_TRUE(count(t, {0, 0, {i, i + 1}}));
  std::map<Key, uint64_t> got = read_all(t);
  EXPECT_EQ(got.size(), 4u);
  for (const auto &[key, c] : got) EXPECT_EQ(c, 2u);
}

TEST(StackTable, AFullArenaRefusesANewStackThatDoesNotFit) {
  TableArea area(16, 10);
  const StackTable &t = area.table();
  ASSERT_TRUE(count(t, {0, 0, std::vector<uint64_t>(8, 5)}));
  EXPECT_FALSE(count(t, {0, 0, std::vector<uint64_t>(3, 6)}));  // 8 + 3 > 10
  EXPECT_TRUE(count(t, {0, 0, std::vector<uint64_t>(2, 6)}));   // 8 + 2 fits exactly
  EXPECT_FALSE(count(t, {0, 0, {7}}));
  EXPECT_TRUE(count(t, {0, 0, std::vector<uint64_t>(8, 5)}));
  EXPECT_EQ(t.header->used.load(), 2u);
}

TEST(StackTable, NoTableRefusesEverything) {
  TableArea area(0, 0);
  const StackTable &t = area.table();
  EXPECT_FALSE(count(t, {0, 0, {1}}));
  EXPECT_TRUE(read_all(t).empty());
}

// The walk writes into the scratch words and the stack is counted from there.
TEST(StackTable, CountsAStackWrittenInItsScratchWords) {
  TableArea area(16, 1024);
  const StackTable &t = area.table();
  for (uint32_t i = 0; i < kMaxStackFrames; ++i) t.scratch[i] = 0x1000 + i;
  ASSERT_TRUE(stack_table_count(t, 2, 3, t.scratch, kMaxStackFrames));
  ASSERT_TRUE(stack_table_count(t, 2, 3, t.scratch, kMaxStackFrames));
  std::map<Key, uint64_t> got = read_all(t);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got.begin()->first.ips.size(), kMaxStackFrames);
  EXPECT_EQ(got.begin()->first.ips.back(), 0x1000u + kMaxStackFrames - 1);
  EXPECT_EQ(got.begin()->second, 2u);
}

// The reader skips what it cannot trust: a probe it does not know, a frame count out of range.
TEST(StackTable, ReaderSkipsEntriesThatMakeNoSense) {
  TableArea area(16, 256);
  const StackTable &t = area.table();
  ASSERT_TRUE(count(t, {5, 0, {1, 2}}));
  ASSERT_TRUE(count(t, {1, 0, {3}}));
  t.entries[1].frames = 200;
  EXPECT_TRUE(read_all(t, 2).empty());  // probe 5 >= 2 probes; entry 1's frames are corrupt
}

// The owner's side over a table another process of the command wrote over: an index and a
// `used` beyond the table, an entry whose frames lie outside the arena. Nothing it reads sends it
// outside the table (the ASan build checks), and it goes on counting.
TEST(StackTable, OwnerStaysInsideATableWrittenOver) {
  TableArea area(4, 64);
  const StackTable &t = area.table();
  ASSERT_TRUE(count(t, {1, 0, {7}}));
  uint32_t bucket = t.entries[0].bucket;
  t.entries[0].arena_offset = 1u << 30;  // the known stack's frames, far outside the arena
  EXPECT_TRUE(count(t, {1, 0, {7}}));    // not found there: counted as a new entry
  t.header->used.store(1u << 30);
  for (uint32_t b = 0; b < 8; ++b) t.index[b] = 1u << 29;  // every bucket names a far entry
  EXPECT_FALSE(count(t, {2, 0, {8}}));                     // no room (used says full): refused
  t.index[bucket] = 0;
  EXPECT_FALSE(count(t, {1, 0, {7}}));
}

TEST(StackTable, ResetEmptiesTheTableForTheNextOwner) {
  TableArea area(4, 64);
  const StackTable &t = area.table();
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(count(t, {0, 0, {i}}));
  stack_table_reset(t);
  EXPECT_EQ(t.header->used.load(), 0u);
  EXPECT_EQ(t.header->arena_used.load(), 0u);
  for (uint32_t b = 0; b < 8; ++b) EXPECT_EQ(t.index[b], 0u) << "bucket " << b;
  EXPECT_TRUE(read_all(t).empty());
  // A new owner's stacks start from 1, in a table with room for four again.
  for (uint64_t i = 10; i < 14; ++i) ASSERT_TRUE(count(t, {0, 0, {i}}));
  ASSERT_TRUE(count(t, {0, 0, {10}}));
  std::map<Key, uint64_t> got = read_all(t);
  EXPECT_EQ(got.size(), 4u);
  EXPECT_EQ((got[{0, 0, {10}}]), 2u);
}

// One owner counts while another thread reads, as the agent's thread and the CLI do: the reader
// sees only whole entries (their key and frames agree with each other) and counts that never go
// back; at the end it sees every hit.
TEST(StackTable, ConcurrentReaderSeesOnlyWholeEntriesAndGrowingCounts) {
  constexpr uint32_t kStacks = 200, kRounds = 2000;
  TableArea area(256, 256 * 8);
  const StackTable &t = area.table();
  // Stack k: probe k % 3, image k, 1 + k % 7 frames, frame i = (k << 8) | i.
  auto key_of = [](uint32_t k) {
    Key key{k % 3, k, {}};
    for (uint32_t i = 0; i < 1 + k % 7; ++i) key.ips.push_back(uint64_t{k} << 8 | i);
    return key;
  };
  std::vector<Key> keys;
  for (uint32_t k = 0; k < kStacks; ++k) keys.push_back(key_of(k));
  std::atomic<bool> done{false};
  std::atomic<bool> failed{false};
  std::thread owner([&] {
    for (uint32_t r = 0; r < kRounds; ++r)
      for (const Key &k : keys)
        if (!count(t, k)) failed = true;
    done.store(true, std::memory_order_release);
  });
  std::vector<uint64_t> last(kStacks, 0);
  std::vector<uint32_t> image_of(256, ~0u);
  uint64_t reads = 0, bad = 0;
  auto check = [&] {
    stack_table_read(t, 3, [&](uint32_t n, const StackEntry &e, uint64_t c, const uint64_t *ips) {
      ++reads;
      uint32_t k = e.image;
      if (k >= kStacks || e.probe != k % 3 || e.frames != 1 + k % 7) {
        ++bad;
        return;
      }
      for (uint32_t i = 0; i < e.frames; ++i)
        if (ips[i] != (uint64_t{k} << 8 | i)) ++bad;
      if (image_of[n] != ~0u && image_of[n] != k) ++bad;  // an entry never changes its key
      image_of[n] = k;
      if (c == 0 || c < last[k]) ++bad;
      last[k] = c;
    });
  };
  while (!done.load(std::memory_order_acquire)) check();
  owner.join();
  check();
  EXPECT_FALSE(failed);
  EXPECT_EQ(bad, 0u) << "of " << reads << " entries read";
  uint64_t total = 0;
  for (uint32_t k = 0; k < kStacks; ++k) {
    EXPECT_EQ(last[k], kRounds) << "stack " << k;
    total += last[k];
  }
  EXPECT_EQ(total, uint64_t{kStacks} * kRounds);
}

}  // namespace
}  // namespace usprobe::agent
