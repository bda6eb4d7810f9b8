// The shared region (protocol/protocol.h) as this process sees it: found through USPROBE_AGENT_FD,
// checked, mapped, and the few numbers the hit path needs copied out of its header once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <string>

#include "protocol/protocol.h"

namespace usprobe::agent {

// What the hit path needs to know about one probe, worked out once from the plan.
struct ProbeInfo {
  uint32_t string_mask;  // bit n: argn is a `%s` argument (trace mode; bit kRetvalArg: retval)
  // event_size(popcount(string_mask), string_size), and a ReturnTail for a return probe or
  // kMoreArgsBytes for a USDT probe with kPlanMoreArgs; without the stack of trace_stacks.
  uint32_t record_size;
  // A return probe's kPlanEntry* bits (what its entry handler keeps); a USDT probe's
  // kPlanMoreArgs (its events carry arg6..arg11).
  uint32_t flags;
};

// Written by the start of a session (agent.cc) before any probe is attached, read-only afterwards
// (pid excepted, see below). Handlers see the written values because attaching publishes a probe's
// consumers with a release store that dispatch reads with acquire (src/core/registry.cc,
// publish()). A session on a running process (attach mode) ends: its probes are detached, which
// returns only once no handler runs, and only then is this reset for the next session.
struct Region {
  // Whether this session records stacks (stacks mode, or trace mode with trace_stacks): the agent
  // then numbers its image and writes its mappings into the region.
  bool records_stacks() const { return mode == kModeStacks || trace_stacks != 0; }

  // Which session this is: 1 for the first, one more for each session after it (never reset).
  // The hit path compares it with the session of the thread's cached slot (slots.h).
  uint32_t session = 0;
  Header *header = nullptr;
  size_t mapped_length = 0;  // of the mapping at header
  uint32_t mode = kModeCount;
  uint32_t probe_count = 0;
  uint32_t string_size = 0;
  uint32_t max_slots = 0;
  uint64_t ring_size = 0;
  uint64_t hist_offset = 0;        // latency mode: where a slot's histograms start
  uint64_t tsc_to_ns_mult = 0;     // latency mode: ns = (ticks * tsc_to_ns_mult) >> kTscShift
  SlotHeader *overflow = nullptr;  // slot max_slots - 1, shared by threads that found none free
  const ProbeInfo *probes = nullptr;
  uint32_t stack_flags = 0;   // stacks mode and trace_stacks: for usprobe_hit_stack
  uint32_t image = 0;         // stacks mode and trace_stacks: this image's number
  uint32_t trace_stacks = 0;  // trace mode: each event carries its user stack (Header)
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
  uint64_t process_offset = 0;  // attach mode: the ProcessRecords
  uint32_t max_processes = 0;
};

extern Region g_region;

// A region mapped and checked (map_region), not yet taken.
struct Mapping {
  Header *header = nullptr;
  size_t length = 0;
};

// Sets g_region.header to the mapping's and copies where things are.
void take_layout(const Mapping &m);

// Unmaps the region and resets g_region for the next session (its session number stays). Only
// once no handler can run (every probe detached).
void drop_region();

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
std::expected<Mapping, std::string> map_region(const char *fd_text, const char *path);

// The same checks for the region behind `fd` (attach mode: the memfd the CLI filled); `where`
// names it in messages. The mapping outlives the descriptor.
std::expected<Mapping, std::string> map_region_fd(int fd, const std::string &where);

}  // namespace usprobe::agent
