// The region in stacks mode, with the test playing the agent (protocol/protocol.h, "Stacks mode"):
// stack records come back with their process, image and addresses, across the end of the ring and
// from the slot of a thread that died; mappings entries come back once each, even when an earlier
// entry is never published.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "protocol/stack_table.h"

#include "session/region.h"
#include "stacks_region_support.h"

namespace usprobe::cli {
namespace {

using namespace usprobe::agent;
using test::claim;
using test::stacks_region;

// As the agent's stack handler: padding to the end first when the record would not fit there.
void write_stack(Header *h, SlotHeader *s, uint32_t probe, uint32_t image,
                 const std::vector<uint64_t> &ips) {
  uint64_t size = sizeof(StackRecord) + 8 * ips.size();
  uint64_t head = s->head.load();
  uint64_t pos = head % h->ring_size;
  char *ring = ring_of(h, s);
  if (h->ring_size - pos < size) {
    auto *pad = reinterpret_cast<StackRecord *>(ring + pos);
    pad->size = static_cast<uint32_t>(h->ring_size - pos);
    pad->probe = kPadProbe;
    head += h->ring_size - pos;
    pos = 0;
  }
  ASSERT_LE(head + size - s->tail.load(), h->ring_size) << "ring full";
  auto *r = reinterpret_cast<StackRecord *>(ring + pos);
  r->size = static_cast<uint32_t>(size);
  r->probe = probe;
  r->tid = s->tid;
  r->frames = static_cast<uint32_t>(ips.size());
  r->image = image;
  std::memcpy(r + 1, ips.data(), 8 * ips.size());
  s->head.store(head + size, std::memory_order_release);
}

TEST(StacksRegion, HeaderDescribesTheMapsAreaInsideTheRegion) {
  Region region = stacks_region();
  Header *h = region.header();
  EXPECT_EQ(h->mode, kModeStacks);
  EXPECT_EQ(h->max_maps, 4u);
  EXPECT_GE(h->maps_offset, h->slot_offset + uint64_t{h->max_slots} * h->slot_stride);
  EXPECT_GE(h->maps_text_offset, h->maps_offset + 4 * sizeof(MapsEntry));
  EXPECT_LE(h->maps_text_offset + h->maps_text_size, h->region_size);
}

// A configuration that every rule accepts; each refusal test breaks one field of it and checks
// that the error names that field, so that no test passes because another rule refused.
RegionConfig good_stacks_config() {
  RegionConfig config;
  config.mode = kModeStacks;
  config.ring_size = 2048;
  config.maps_text_size = 4096;
  return config;
}

std::string refusal(const RegionConfig &config) {
  auto region = Region::create(config, {{"/bin/app:f", 0}});
  return region ? "accepted" : region.error().message;
}

TEST(StacksRegion, TheBaseConfigurationOfTheRefusalTestsIsAccepted) {
  EXPECT_EQ(refusal(good_stacks_config()), "accepted");
}

TEST(StacksRegion, RefusesARingThatCannotHoldTheDeepestStack) {
  RegionConfig config = good_stacks_config();
  config.ring_size = 512;
  EXPECT_EQ(refusal(config),
            "bad region configuration: ring_size 512 (stacks mode needs room for the deepest "
            "stack, 1040 bytes)");
}

TEST(StacksRegion, RefusesARingThatIsNotAPowerOfTwo) {
  RegionConfig config = good_stacks_config();
  config.ring_size = 3000;
  EXPECT_EQ(refusal(config),
            "bad region configuration: ring_size 3000 (a power of two that holds an event, or 0)");
}

TEST(StacksRegion, RefusesNoMapsEntries) {
  RegionConfig config = good_stacks_config();
  config.max_maps = 0;
  EXPECT_EQ(refusal(config),
            "bad region configuration: max_maps 0 (stacks mode needs maps entries)");
}

TEST(StacksRegion, RefusesNoRoomForMapsText) {
  RegionConfig config = good_stacks_config();
  config.maps_text_size = 0;
  EXPECT_EQ(refusal(config),
            "bad region configuration: maps_text_size 0 (stacks mode needs room for maps text)");
}

TEST(StacksRegion, RefusesFewerThanTwoSlots) {
  RegionConfig config = good_stacks_config();
  config.max_slots = 1;
  EXPECT_EQ(refusal(config),
            "bad region configuration: max_slots 1 (at least 2: one for a thread, one for "
            "overflow)");
}

TEST(StacksRegion, DrainsStacksAcrossTheEndOfTheRing) {
  Region region = stacks_region(2048);
  Header *h = region.header();
  SlotHeader *s = claim(h, 0, 42, 43);
  std::vector<StackEvent> out;
  uint64_t expected = 0;
  // 30 records of 24 + 8 * 20 bytes go round a 2048-byte ring several times.
  for (uint32_t i = 0; i < 30; ++i) {
    std::vector<uint64_t> ips(20);
    for (size_t k = 0; k < ips.size(); ++k) ips[k] = 0x1000 * (i + 1) + k;
    write_stack(h, s, i % 2, 5, ips);
    region.drain(out);
    ASSERT_EQ(out.size(), ++expected);
    const StackEvent &e = out.back();
    EXPECT_EQ(e.pid, 42);
    EXPECT_EQ(e.tid, 43);
    EXPECT_EQ(e.probe, i % 2);
    EXPECT_EQ(e.image, 5u);
    EXPECT_EQ(e.ips, ips);
  }
  // The trace-record overload reads nothing in stacks mode.
  TraceBatch trace;
  region.drain(trace);
  EXPECT_TRUE(trace.empty());
}

TEST(StacksRegion, ReclaimDrainsTheStacksOfADeadThread) {
  Region region = stacks_region();
  Header *h = region.header();
  SlotHeader *s = claim(h, 1, 7, 8);
  write_stack(h, s, 1, 2, {0xa, 0xb, 0xc});
  slot_hits(s)[1] = 1;
  std::vector<StackEvent> out;
  region.reclaim(out, [](int32_t, int32_t) { return false; });
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ips, (std::vector<uint64_t>{0xa, 0xb, 0xc}));
  EXPECT_EQ(s->state.load(), kSlotFree);
  EXPECT_EQ((region.counts()[{7, 1}].hits), 1u);
}

TEST(StacksRegion, MapsEntriesComeBackOnceEachInAnyOrder) {
  Region region = stacks_region();
  Header *h = region.header();
  auto post = [&](uint32_t index, int32_t pid, uint32_t image, const std::string &text) {
    MapsEntry *e = maps_entry_at(h, index);
    uint64_t offset = h->maps_text_cursor.fetch_add(text.size());
    std::memcpy(maps_text(h) + offset, text.data(), text.size());
    e->kind = kMapsAttach;
    e->pid = pid;
    e->image = image;
    e->text_offset = offset;
    e->text_size = text.size();
    std::strcpy(e->comm, "app");
    e->ready.store(1, std::memory_order_release);
  };
  // Entry 0 is claimed but its agent never publishes it; entry 1 is published.
  h->maps_cursor.store(2);
  post(1, 10, 1, "1000-2000 r-xp 00000000 fe:01 1 /bin/app\n");
  std::vector<MapsMessage> got = region.new_maps();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].pid, 10);
  EXPECT_EQ(got[0].image, 1u);
  EXPECT_EQ(got[0].comm, "app");
  EXPECT_EQ(got[0].text, "1000-2000 r-xp 00000000 fe:01 1 /bin/app\n");
  EXPECT_TRUE(region.new_maps().empty());
  // Now entry 0 is published too: it comes back, entry 1 does not again.
  post(0, 11, 2, "x");
  got = region.new_maps();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].pid, 11);
}

// A stack record that breaks the format is skipped and counted; the ones around it come back.
TEST(StacksRegionHostile, ImpossibleStackRecordsAreCountedNotRead) {
  Region region = stacks_region();
  Header *h = region.header();
  SlotHeader *s = claim(h, 0, 42, 43);
  write_stack(h, s, 0, 1, {0x1, 0x2});
  write_stack(h, s, 0, 1, {0x3});
  write_stack(h, s, 1, 1, {0x4});
  char *ring = ring_of(h, s);
  reinterpret_cast<StackRecord *>(ring)->frames = 200;  // more than a record can hold
  reinterpret_cast<StackRecord *>(ring + sizeof(StackRecord) + 16)->probe = 5;  // no such probe
  std::vector<StackEvent> out;
  region.drain(out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ips, std::vector<uint64_t>{0x4});
  EXPECT_EQ(region.corrupt(), 2u);
}

// As RegionHostile.RandomBytesNeverCrashTheReaderNorComeBackAsImpossibleData (region_test.cc), in
// stacks mode, with stack tables and maps entries.
TEST(StacksRegionHostile, RandomBytesNeverCrashTheReaderNorComeBackAsImpossibleData) {
  std::mt19937_64 rng(34);
  for (int round = 0; round < 200; ++round) {
    SCOPED_TRACE(round);
    Region region = stacks_region(2048, 8, 64);
    Header *h = region.header();
    const RegionLayout layout = region.layout();
    SlotHeader *s = claim(h, 0, 42, 43);
    write_stack(h, s, 0, 1, {0x1, 0x2});
    StackTable table = stack_table_view(reinterpret_cast<char *>(s) + h->table_offset,
                                        h->table_entries, h->table_arena_words);
    uint64_t ips[] = {0x10, 0x20, 0x30};
    stack_table_count(table, 1, 1, ips, 3);
    h->maps_cursor.store(1);
    maps_entry_at(h, 0)->text_size = 10;
    maps_entry_at(h, 0)->ready.store(1);
    auto *bytes = reinterpret_cast<unsigned char *>(h);
    int scribbles = 1 + static_cast<int>(rng() % 8);
    for (int k = 0; k < scribbles; ++k) {
      // The header, the first slot (its ring and table), or anywhere.
      uint64_t choice = rng() % 3;
      uint64_t base = choice == 1 ? layout.slot_offset : 0;
      uint64_t span = choice == 0 ? 4096 : choice == 1 ? layout.slot_stride : layout.region_size;
      uint64_t at = base + rng() % span;
      uint64_t length = std::min<uint64_t>(1 + rng() % 512, layout.region_size - at);
      for (uint64_t i = 0; i < length; ++i) bytes[at + i] = static_cast<unsigned char>(rng());
    }
    std::vector<StackEvent> out;
    region.drain(out);
    region.reclaim(out, [&](int32_t, int32_t) { return rng() % 2 == 0; });
    region.drain(out);
    for (const StackEvent &e : out) {
      EXPECT_LT(e.probe, 2u);
      EXPECT_GE(e.pid, 0);
      EXPECT_GE(e.ips.size(), 1u);
      EXPECT_LE(e.ips.size(), kMaxStackFrames);
    }
    for (const MapsMessage &m : region.new_maps()) {
      EXPECT_LE(m.text.size(), layout.maps_text_size);
      EXPECT_LT(m.comm.size(), 16u);
    }
    for (const auto &[key, count] : region.counts()) EXPECT_LT(key.second, 2u);
  }
}

}  // namespace
}  // namespace usprobe::cli
