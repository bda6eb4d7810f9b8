// The region's stack tables (protocol/protocol.h, "Stack tables"), with the test playing the agent
// through protocol/stack_table.h: each drain hands back what each table counted since the last one,
// exactly once; freeing a slot folds its final counts and leaves an empty table for the next
// thread; a full table sends new stacks to the ring.
#include <gtest/gtest.h>

#include <map>
#include <tuple>

#include "protocol/stack_table.h"
#include "session/region.h"
#include "stacks_region_support.h"

namespace usprobe::cli {
namespace {

using namespace usprobe::agent;
using test::claim;

Region table_region(uint32_t entries = 8, uint32_t arena_words = 64) {
  return test::stacks_region(4096, entries, arena_words);
}

StackTable table_of(Header *h, SlotHeader *s) {
  return stack_table_view(reinterpret_cast<char *>(s) + h->table_offset, h->table_entries,
                          h->table_arena_words);
}

// As the agent's stack handler does on a hit, without the walk.
bool hit(Header *h, SlotHeader *s, uint32_t probe, uint32_t image, std::vector<uint64_t> ips) {
  return stack_table_count(table_of(h, s), probe, image, ips.data(),
                           static_cast<uint32_t>(ips.size()));
}

using Totals = std::map<std::tuple<int32_t, uint32_t, uint32_t, std::vector<uint64_t>>, uint64_t>;

// (pid, probe, image, ips) -> the sum of the events' counts.
Totals totals(const std::vector<StackEvent> &events) {
  Totals out;
  for (const StackEvent &e : events) out[{e.pid, e.probe, e.image, e.ips}] += e.count;
  return out;
}

TEST(StacksTableRegion, TheTableLiesBetweenTheCountersAndTheRing) {
  Region region = table_region(4096, 131072);
  Header *h = region.header();
  EXPECT_EQ(h->table_entries, 4096u);
  EXPECT_EQ(h->table_arena_words, 131072u);
  EXPECT_EQ(h->table_offset % 64, 0u);
  EXPECT_GE(h->table_offset, slot_counters_end(h->probe_count));
  EXPECT_LE(h->table_offset + stack_table_bytes(4096, 131072), h->ring_offset);
  EXPECT_EQ(h->ring_offset + h->ring_size, h->slot_stride);
}

TEST(StacksTableRegion, RefusesATableSizeThatIsNotAPowerOfTwo) {
  RegionConfig config;
  config.mode = kModeStacks;
  config.ring_size = 4096;
  config.maps_text_size = 4096;
  config.table_entries = 100;
  config.table_arena_words = 1000;
  auto region = Region::create(config, {{"/bin/app:f", 0}});
  ASSERT_FALSE(region.has_value());
  EXPECT_EQ(region.error().message,
            "bad region configuration: table_entries 100 (a power of two up to 2^24, or 0)");
  config.table_entries = 128;  // and with a power of two, the same configuration is accepted
  EXPECT_TRUE(Region::create(config, {{"/bin/app:f", 0}}).has_value());
}

// A table entry that points outside its arena, or names no probe, and a `used` larger than the
// table: each is skipped, counted once however often the table is read, and the sound entries
// still come back.
TEST(StacksTableRegion, ImpossibleEntriesAreCountedOnceAndSkipped) {
  Region region = table_region();
  Header *h = region.header();
  SlotHeader *s = claim(h, 0, 42, 43);
  ASSERT_TRUE(hit(h, s, 0, 1, {0x1}));
  ASSERT_TRUE(hit(h, s, 0, 1, {0x2}));
  ASSERT_TRUE(hit(h, s, 1, 1, {0x3}));
  StackTable t = table_of(h, s);
  t.entries[0].arena_offset = 1u << 30;
  t.entries[1].probe = 77;
  std::vector<StackEvent> out;
  region.drain(out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ips, std::vector<uint64_t>{0x3});
  EXPECT_EQ(region.corrupt(), 2u);
  // More than the table's 8 entries: that, and the 5 entries never written (no frames), once.
  t.header->used.store(1000);
  region.drain(out);
  region.drain(out);
  EXPECT_EQ(out.size(), 1u);
  EXPECT_EQ(region.corrupt(), 2u + 1u + 5u);
}

TEST(StacksTableRegion, EachDrainHandsBackWhatTheTableCountedSinceTheLastOne) {
  Region region = table_region();
  Header *h = region.header();
  SlotHeader *s = claim(h, 0, 42, 43);
  std::vector<uint64_t> a = {0x1000, 0x2000, 0x3000}, b = {0x1000, 0x2500};
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(hit(h, s, 1, 5, a));
  ASSERT_TRUE(hit(h, s, 0, 5, b));
  std::vector<StackEvent> out;
  region.drain(out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].pid, 42);
  EXPECT_EQ(out[0].tid, 43);
  EXPECT_EQ(out[0].probe, 1u);
  EXPECT_EQ(out[0].image, 5u);
  EXPECT_EQ(out[0].ips, a);
  EXPECT_EQ(out[0].count, 3u);
  EXPECT_EQ(out[1].ips, b);
  EXPECT_EQ(out[1].count, 1u);
  // Only what grew comes back, by what it grew.
  ASSERT_TRUE(hit(h, s, 1, 5, a));
  ASSERT_TRUE(hit(h, s, 1, 5, a));
  out.clear();
  region.drain(out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ips, a);
  EXPECT_EQ(out[0].count, 2u);
  out.clear();
  region.drain(out);
  EXPECT_TRUE(out.empty());
}

TEST(StacksTableRegion, FreeingASlotFoldsItsLastCountsAndEmptiesItsTable) {
  Region region = table_region();
  Header *h = region.header();
  SlotHeader *s = claim(h, 1, 7, 8);
  std::vector<uint64_t> a = {0xa, 0xb};
  ASSERT_TRUE(hit(h, s, 0, 1, a));
  std::vector<StackEvent> out;
  region.drain(out);
  ASSERT_TRUE(hit(h, s, 0, 1, a));
  ASSERT_TRUE(hit(h, s, 0, 1, {0xc}));
  region.reclaim(out, [](int32_t, int32_t) { return false; });
  EXPECT_EQ(totals(out), (Totals{{{7, 0, 1, a}, 2}, {{7, 0, 1, {0xc}}, 1}}));
  EXPECT_EQ(s->state.load(), kSlotFree);
  StackTable t = table_of(h, s);
  EXPECT_EQ(t.header->used.load(), 0u);
  EXPECT_EQ(t.header->arena_used.load(), 0u);
  for (uint32_t b = 0; b < 2 * t.capacity; ++b) EXPECT_EQ(t.index[b], 0u) << "bucket " << b;
  // The next thread in this slot starts from nothing: its first hit is counted once, not hidden
  // by what the last thread's entry 0 had counted.
  s = claim(h, 1, 9, 10);
  ASSERT_TRUE(hit(h, s, 1, 2, {0xd}));
  out.clear();
  region.drain(out);
  EXPECT_EQ(totals(out), (Totals{{{9, 1, 2, {0xd}}, 1}}));
}

// The agent's fallback: a new stack that the full table cannot take goes to the ring, and the CLI
// counts both.
TEST(StacksTableRegion, StacksThatAFullTableRefusesComeThroughTheRing) {
  Region region = table_region(2, 64);
  Header *h = region.header();
  SlotHeader *s = claim(h, 0, 42, 43);
  ASSERT_TRUE(hit(h, s, 0, 1, {1}));
  ASSERT_TRUE(hit(h, s, 0, 1, {2}));
  ASSERT_FALSE(hit(h, s, 0, 1, {3}));
  // As stack_handler's record_stack.
  auto *rec = reinterpret_cast<StackRecord *>(ring_of(h, s));
  rec->size = sizeof(StackRecord) + 8;
  rec->probe = 0;
  rec->tid = 43;
  rec->frames = 1;
  rec->image = 1;
  reinterpret_cast<uint64_t *>(rec + 1)[0] = 3;
  s->head.store(rec->size, std::memory_order_release);
  ASSERT_TRUE(hit(h, s, 0, 1, {1}));
  std::vector<StackEvent> out;
  region.drain(out);
  EXPECT_EQ(totals(out),
            (Totals{{{42, 0, 1, {1}}, 2}, {{42, 0, 1, {2}}, 1}, {{42, 0, 1, {3}}, 1}}));
}

// Without a table (table_entries 0) every stack goes through the ring, as before tables.
TEST(StacksTableRegion, NoTableDrainsNothingButTheRing) {
  Region region = table_region(0, 0);
  Header *h = region.header();
  SlotHeader *s = claim(h, 0, 42, 43);
  EXPECT_FALSE(hit(h, s, 0, 1, {1}));
  std::vector<StackEvent> out;
  region.drain(out);
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace usprobe::cli
