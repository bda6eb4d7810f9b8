// The shared region (protocol/protocol.h) as this process sees it: found through USPROBE_AGENT_FD,
// checked, mapped, and the few numbers the hit path needs copied out of its header once.
#pragma once

#include <cstdint>
#include <expected>
#include <string>

#include "protocol/protocol.h"

namespace usprobe::agent {

// What the hit path needs to know about one probe, worked out once from the plan.
struct ProbeInfo {
  uint32_t string_mask;  // bit n: argn is a `%s` argument (trace mode)
  uint32_t record_size;  // event_size(popcount(string_mask), string_size)
};

// Written by the constructor before any probe is attached, read-only afterwards (pid excepted, see
// below). Handlers see the written values because attaching publishes a probe's consumers with a
// release store that dispatch reads with acquire (src/core/registry.cc, publish()).
struct Region {
  Header *header = nullptr;
  uint32_t mode = kModeCount;
  uint32_t probe_count = 0;
  uint32_t string_size = 0;
  uint32_t max_slots = 0;
  uint64_t ring_size = 0;
  uint64_t hist_offset = 0;        // latency mode: where a slot's histograms start
  uint64_t tsc_to_ns_mult = 0;     // latency mode: ns = (ticks * tsc_to_ns_mult) >> kTscShift
  SlotHeader *overflow = nullptr;  // slot max_slots - 1, shared by threads that found none free
  const ProbeInfo *probes = nullptr;
  uint32_t stack_flags = 0;  // stacks mode: for usprobe_hit_stack
  uint32_t image = 0;        // stacks mode: this image's number, in every stack it counts
  // Stacks mode: each slot's stack table (protocol.h, "Stack tables").
  uint64_t table_offset = 0;  // within a slot
  uint32_t table_entries = 0;
  uint32_t table_arena_words = 0;
  // This process's pid, so that claiming a slot needs no getpid(). Rewritten by the fork child
  // handler, when the child has a single thread.
  int32_t pid = 0;
  // Where things are, copied from the header once it checked out (take_layout) and never read from
  // it again: every process of the command can write the header, and a process that dropped its
  // privileges must not be able to send the agent of one that kept them outside the region.
  uint64_t slot_offset = 0;
  uint64_t slot_stride = 0;
  uint64_t ring_offset = 0;  // within a slot
  uint64_t notice_offset = 0;
  uint32_t max_notices = 0;
  uint32_t max_maps = 0;  // stacks mode
  uint64_t maps_offset = 0;
  uint64_t maps_text_offset = 0;
  uint64_t maps_text_size = 0;
};

extern Region g_region;

// Sets g_region.header to `h` (mapped and checked by map_region) and copies where things are.
void take_layout(Header *h);

inline SlotHeader *region_slot(uint32_t i) {
  return reinterpret_cast<SlotHeader *>(reinterpret_cast<char *>(g_region.header) +
                                        g_region.slot_offset + uint64_t{i} * g_region.slot_stride);
}
inline char *region_ring(SlotHeader *s) {
  return reinterpret_cast<char *>(s) + g_region.ring_offset;
}

// Maps the region named by the USPROBE_AGENT_FD value `fd_text` or, when that descriptor is not
// (or no longer) the region, by the path in USPROBE_AGENT_REGION (`path`, may be null), after
// checking that the header's magic, version and size match and that every area it describes lies
// inside the region. Reads nothing but the header before those checks pass: an fd number reused
// for some other file (the command closed ours) is never written to. The message names what was
// wrong.
std::expected<Header *, std::string> map_region(const char *fd_text, const char *path);

}  // namespace usprobe::agent
