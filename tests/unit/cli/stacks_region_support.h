// What the stacks-mode region tests share: a small region, and claiming a slot as an agent thread
// does (protocol/protocol.h, "Slots").
#pragma once

#include <gtest/gtest.h>

#include "session/region.h"

namespace usprobe::cli::test {

// A stacks-mode region of four slots for two probes; table_entries 0: no stack tables.
inline Region stacks_region(uint64_t ring_size = 4096, uint32_t table_entries = 0,
                            uint32_t table_arena_words = 0) {
  RegionConfig config;
  config.mode = agent::kModeStacks;
  config.max_slots = 4;
  config.max_notices = 4;
  config.ring_size = ring_size;
  config.max_maps = 4;
  config.maps_text_size = 4096;
  config.table_entries = table_entries;
  config.table_arena_words = table_arena_words;
  auto region = Region::create(config, {{"/usr/lib/libc.so.6:malloc", 0}, {"/bin/app:f", 0}});
  EXPECT_TRUE(region.has_value()) << region.error().message;
  return std::move(*region);
}

inline agent::SlotHeader *claim(agent::Header *h, uint32_t index, int32_t pid, int32_t tid) {
  agent::SlotHeader *s = agent::slot_at(h, index);
  uint32_t expected = agent::kSlotFree;
  EXPECT_TRUE(s->state.compare_exchange_strong(expected, agent::kSlotOwned));
  s->pid = pid;
  s->tid = tid;
  return s;
}

}  // namespace usprobe::cli::test
