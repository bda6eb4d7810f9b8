// A thread's ring (protocol/protocol.h, "Rings"): room for one record, and its publication. Used by
// the trace and stacks handlers, on the hit path: no lock, no allocation, no system call, no libc.
#pragma once

#include <atomic>
#include <cstdint>

#include "agent/region.h"
#include "protocol/protocol.h"

namespace usprobe::agent {

// Room for a record of `size` bytes (a multiple of 8, at most ring_size) in the ring of `s`, this
// thread's own slot (never the overflow slot, whose ring would have many producers). When the
// record would cross the end of the ring, a padding record up to the end is written first. Returns
// where to write the record and sets *next_head to the head that publishes it, or returns nullptr
// when the ring has no room (nothing is written then).
inline char *ring_reserve(SlotHeader *s, uint64_t size, uint64_t *next_head) {
  const Region &r = g_region;
  uint64_t head = s->head.load(std::memory_order_relaxed);  // this thread is its only writer
  // Acquire pairs with the CLI's tail.store(release): it has finished reading the space it freed
  // before this thread writes over it.
  uint64_t tail = s->tail.load(std::memory_order_acquire);
  uint64_t pos = head & (r.ring_size - 1);  // a power of two (agent/region.cc checks)
  uint64_t to_end = r.ring_size - pos;
  uint64_t pad = to_end < size ? to_end : 0;  // a record never wraps: pad to the end first
  if (r.ring_size - (head - tail) < pad + size) return nullptr;
  char *ring = region_ring(s);
  if (pad) {
    // Padding: only size and probe are read. Both records are published by the one head store.
    auto *p = reinterpret_cast<uint32_t *>(ring + pos);
    p[0] = static_cast<uint32_t>(pad);
    p[1] = kPadProbe;
    head += pad;
    pos = 0;
  }
  *next_head = head + size;
  return ring + pos;
}

// Publishes the records written since the last call, up to `next_head` (from ring_reserve).
inline void ring_publish(SlotHeader *s, uint64_t next_head) {
  // Release pairs with the CLI's head.load(acquire): the padding and the record are written before
  // it can read them.
  s->head.store(next_head, std::memory_order_release);
}

}  // namespace usprobe::agent
