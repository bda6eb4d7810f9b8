// The hit path of stacks mode. Nothing here may lock, allocate, make a system call (the first hit
// of a thread excepted, see slots.cc) or call libc; usprobe_hit_stack may, on a thread's first
// walk (libunwind's caches: see its comment in usprobe.h), which is the unwinder's cost, not ours.
// Every shared write goes to this thread's own slot, except in the overflow slot, which threads
// share with fetch_add.
#include "agent/stack_handler.h"

#include <cstdint>

#include "agent/agent_scope.h"
#include "agent/region.h"
#include "agent/ring.h"
#include "agent/slots.h"

namespace usprobe::agent {

// Must never lock, allocate, make a system call (but once per thread) or call libc.
void stack_handler(usprobe_hit *hit, void *user) {
  if (t_in_agent) return;
  auto probe = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(user));
  SlotHeader *s = thread_slot();
  const Region &r = g_region;
  std::atomic<uint64_t> &hits = slot_hits(s)[probe];
  std::atomic<uint64_t> &missed = slot_missed(s, r.probe_count)[probe];
  if (__builtin_expect(s == r.overflow, 0)) {
    // Its ring would have many producers: the overflow slot keeps exact counts, not stacks.
    slot_add(s, hits, 1);
    slot_add(s, missed, 1);
    return;
  }
  // From here on s is this thread's own slot. Room for the deepest stack; the walk writes the
  // addresses in place (no copy, so no memcpy, which may itself be probed), and the record is
  // published with the size it turned out to have. A padding record written for the largest size
  // is harmless for a smaller one: the record starts at the ring's beginning either way.
  uint64_t next_head = 0;
  char *record = ring_reserve(s, kMaxStackRecord, &next_head);
  owned_add(hits, 1);
  if (!record) {
    owned_add(missed, 1);
    return;
  }
  auto *rec = reinterpret_cast<StackRecord *>(record);
  int n =
      usprobe_hit_stack(hit, reinterpret_cast<uint64_t *>(rec + 1), kMaxStackFrames, r.stack_flags);
  if (n <= 0) {  // -EINVAL: a bad hit or flags, the agent's bug; nothing is published
    owned_add(missed, 1);
    return;
  }
  auto frames = static_cast<uint32_t>(n);
  uint64_t size = sizeof(StackRecord) + 8 * uint64_t{frames};
  rec->size = static_cast<uint32_t>(size);
  rec->probe = probe;
  rec->tid = s->tid.load(std::memory_order_relaxed);  // written by this thread
  rec->frames = frames;
  rec->image = r.image;
  rec->reserved = 0;
  ring_publish(s, next_head - kMaxStackRecord + size);
}

}  // namespace usprobe::agent
