// The hit path of stacks mode. Nothing here may lock, allocate, make a system call (the first hit
// of a thread excepted, see slots.cc) or call libc, memcpy included (it may itself be probed: the
// copies are hand-written loops, and agent/CMakeLists.txt keeps GCC from turning them back into
// calls); usprobe_hit_stack may, on a thread's first walk (it reads /proc/self/maps for the
// stack's bounds: see its comment in usprobe.h), which is the unwinder's cost, not ours. Every
// shared write goes to this thread's own slot, except in the overflow slot, which threads share
// with fetch_add.
#include "agent/stack_handler.h"

#include <cstdint>

#include "agent/agent_scope.h"
#include "agent/region.h"
#include "agent/ring.h"
#include "agent/slots.h"
#include "protocol/stack_table.h"

namespace usprobe::agent {

namespace {

// The stack ips[0, frames) as a StackRecord in this thread's ring (s: its own slot). False when the
// ring has no room.
bool record_stack(SlotHeader *s, uint32_t probe, const uint64_t *ips, uint32_t frames) {
  uint64_t size = sizeof(StackRecord) + 8 * uint64_t{frames};
  uint64_t next_head = 0;
  char *record = ring_reserve(s, size, &next_head);
  if (!record) return false;
  auto *rec = reinterpret_cast<StackRecord *>(record);
  rec->size = static_cast<uint32_t>(size);
  rec->probe = probe;
  rec->tid = s->tid.load(std::memory_order_relaxed);  // written by this thread
  rec->frames = frames;
  rec->image = g_region.image;
  rec->reserved = 0;
  auto *dst = reinterpret_cast<uint64_t *>(rec + 1);
  for (uint32_t i = 0; i < frames; ++i) dst[i] = ips[i];  // not memcpy (see above)
  ring_publish(s, next_head);
  return true;
}

}  // namespace

// Must never lock, allocate, make a system call (but once per thread) or call libc.
void stack_handler(usprobe_hit *hit, void *user) {
  if (t_in_agent) return;
  auto probe = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(user));
  SlotHeader *s = thread_slot();
  const Region &r = g_region;
  std::atomic<uint64_t> &hits = slot_hits(s)[probe];
  std::atomic<uint64_t> &missed = slot_missed(s, r.probe_count)[probe];
  if (overflow_hit(s, hits, missed)) return;  // exact counts, no stacks
  // From here on s is this thread's own slot. The walk writes into the table's scratch words, in
  // shared memory (no copy out of a local array, so no memcpy); a stack seen before is then only
  // a count in the table.
  owned_add(hits, 1);
  StackTable table = stack_table_view(reinterpret_cast<char *>(s) + r.table_offset, r.table_entries,
                                      r.table_arena_words);
  uint64_t *ips = table.scratch;
  int n = usprobe_hit_stack(hit, ips, kMaxStackFrames, r.stack_flags);
  if (n <= 0) {  // -EINVAL: a bad hit or flags, the agent's bug; nothing is counted
    owned_add(missed, 1);
    return;
  }
  auto frames = static_cast<uint32_t>(n);
  if (stack_table_count(table, probe, r.image, ips, frames)) return;
  // A new stack and a full table: the ring takes it, or it is lost.
  if (!record_stack(s, probe, ips, frames)) owned_add(missed, 1);
}

}  // namespace usprobe::agent
