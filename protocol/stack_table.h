// A slot's stack table (protocol/protocol.h, "Stack tables"): the distinct stacks one thread has
// taken, each with its count, like a BPF stack map but with one writer and no atomic
// read-modify-write. The owner's side (stack_table_count) runs on the hit path; the reader's side
// (stack_table_read) and the reset (stack_table_reset) are the CLI's. Header-only and free of the
// agent's globals, so that the unit tests (tests/unit/agent/stack_table_test.cc) run it as is.
//
// The owner's code must never lock, allocate, make a system call or call libc: not even memcpy or
// memcmp, which may themselves be probed. Its loops are written by hand, and the file that uses it
// on the hit path is built with -fno-tree-loop-distribute-patterns (agent/CMakeLists.txt), so that
// GCC does not turn a copy loop back into a memcpy call.
#pragma once

#include <atomic>
#include <cstdint>

#include "protocol/protocol.h"

namespace usprobe::agent {

// A table's parts, found from the start of its area (stack_table_view).
struct StackTable {
  StackTableHeader *header = nullptr;
  uint64_t *scratch = nullptr;  // kStackScratchWords: where the walk writes the stack
  StackEntry *entries = nullptr;
  uint32_t *index = nullptr;  // 2 * capacity buckets: entry + 1, or 0
  uint64_t *arena = nullptr;
  uint32_t capacity = 0;  // entries; a power of two, or 0 (no table)
  uint32_t arena_words = 0;
};

// The table whose area (stack_table_bytes(capacity, arena_words) bytes, 64-byte aligned) starts at
// `area`.
inline StackTable stack_table_view(char *area, uint32_t capacity, uint32_t arena_words) {
  StackTable t;
  t.header = reinterpret_cast<StackTableHeader *>(area);
  t.scratch = reinterpret_cast<uint64_t *>(t.header + 1);
  t.entries = reinterpret_cast<StackEntry *>(t.scratch + kStackScratchWords);
  t.index = reinterpret_cast<uint32_t *>(t.entries + capacity);
  t.arena = reinterpret_cast<uint64_t *>(t.index + 2 * uint64_t{capacity});
  t.capacity = capacity;
  t.arena_words = arena_words;
  return t;
}

// The key's hash: every address mixed in with a multiply and a shift. (An empty bucket is told by
// the index, so any value, 0 included, is a hash.)
inline uint32_t stack_hash(uint32_t probe, uint32_t image, const uint64_t *ips, uint32_t frames) {
  uint64_t h = 0x9e37'79b9'7f4a'7c15ull ^ (uint64_t{probe} << 32 | image);
  for (uint32_t i = 0; i < frames; ++i) {
    h = (h ^ ips[i]) * 0xff51'afd7'ed55'8ccdull;
    h ^= h >> 32;
  }
  h ^= frames;
  h *= 0xc4ce'b9fe'1a85'ec53ull;
  return static_cast<uint32_t>(h ^ (h >> 29));
}

// Counts one hit of the stack ips[0, frames) of `probe` in image `image` (frames: 1 ..
// kMaxStackFrames). Returns false, having written nothing, when the stack is new and the table or
// its arena has no room for it: the caller records it elsewhere.
//
// Owner only, on the hit path: no lock, no atomic read-modify-write, no allocation, no system call,
// no libc. `ips` may be the table's own scratch words.
inline bool stack_table_count(const StackTable &t, uint32_t probe, uint32_t image,
                              const uint64_t *ips, uint32_t frames) {
  if (t.capacity == 0) return false;
  StackTableHeader &h = *t.header;
  // Relaxed: this thread is the only writer of used and arena_used while it owns the slot (the
  // CLI's reset happened before its claim, which acquired the slot).
  uint32_t used = h.used.load(std::memory_order_relaxed);
  uint32_t hash = stack_hash(probe, image, ips, frames);
  uint32_t mask = 2 * t.capacity - 1;
  uint32_t bucket = hash & mask;
  // At most `used` buckets are taken out of 2 * capacity, so an empty one ends the search; the
  // bound only guards against a corrupted index.
  bool empty = false;
  for (uint32_t probes = 0; probes <= mask; ++probes, bucket = (bucket + 1) & mask) {
    uint32_t slot = t.index[bucket];
    // 0 is empty. An entry number above `used` cannot be (the bucket is written after its entry is
    // published): it is taken as empty too. So is one beyond the table: the region is shared with
    // every process of the command, and one of them may have written over it (`used` included);
    // nothing read from it sends this thread outside the table.
    if (slot == 0 || slot > used || slot > t.capacity) {
      empty = true;
      break;
    }
    StackEntry &e = t.entries[slot - 1];
    if (e.hash != hash || e.probe != probe || e.image != image || e.frames != frames) continue;
    if (e.arena_offset > t.arena_words || frames > t.arena_words - e.arena_offset) continue;
    const uint64_t *known = t.arena + e.arena_offset;
    uint32_t i = 0;
    while (i < frames && known[i] == ips[i]) ++i;
    if (i != frames) continue;
    // Relaxed load + store, as the slot's counters: the CLI reads it with a relaxed load.
    e.count.store(e.count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return true;
  }
  // A new stack, to be inserted at `bucket` (empty).
  if (!empty || used >= t.capacity) return false;
  uint32_t at = h.arena_used.load(std::memory_order_relaxed);
  if (at > t.arena_words || frames > t.arena_words - at) return false;
  uint64_t *dst = t.arena + at;
  for (uint32_t i = 0; i < frames; ++i) dst[i] = ips[i];
  StackEntry &e = t.entries[used];
  e.count.store(1, std::memory_order_relaxed);
  e.hash = hash;
  e.bucket = bucket;
  e.probe = probe;
  e.image = image;
  e.frames = frames;
  e.arena_offset = at;
  h.arena_used.store(at + frames, std::memory_order_relaxed);
  // Release pairs with the reader's used.load(acquire) (stack_table_read): the entry and its frames
  // are written before it can read them.
  h.used.store(used + 1, std::memory_order_release);
  // Last: a thread that dies before this leaves no bucket the CLI does not know of.
  t.index[bucket] = used + 1;
  return true;
}

// Calls fn(entry_number, entry, count, ips) for each published entry of a live or dead table, with
// its count now (a relaxed load: a live owner may still be adding to it). Entries whose fields do
// not make sense (a corrupted table) are skipped, and bad(entry_number) is called for each, and
// bad(capacity) for a `used` larger than the table. Never writes.
template <typename Fn, typename Bad>
void stack_table_read(const StackTable &t, uint32_t probe_count, Fn &&fn, Bad &&bad) {
  if (t.capacity == 0) return;
  // Acquire pairs with the owner's used.store(release) in stack_table_count.
  uint32_t used = t.header->used.load(std::memory_order_acquire);
  if (used > t.capacity) {
    bad(t.capacity);
    used = t.capacity;
  }
  for (uint32_t n = 0; n < used; ++n) {
    const StackEntry &e = t.entries[n];
    if (e.probe >= probe_count || e.frames == 0 || e.frames > kMaxStackFrames ||
        e.arena_offset > t.arena_words || e.frames > t.arena_words - e.arena_offset) {
      bad(n);
      continue;
    }
    fn(n, e, e.count.load(std::memory_order_relaxed), t.arena + e.arena_offset);
  }
}

template <typename Fn>
void stack_table_read(const StackTable &t, uint32_t probe_count, Fn &&fn) {
  stack_table_read(t, probe_count, fn, [](uint32_t) {});
}

// Empties the table of a slot whose owner is gone, touching only what it used (the rest of the
// area may never have been faulted in). The caller then frees the slot with a release store, which
// the next owner's claim acquires.
inline void stack_table_reset(const StackTable &t) {
  if (t.capacity == 0) return;
  uint32_t used = t.header->used.load(std::memory_order_relaxed);
  if (used > t.capacity) used = t.capacity;
  for (uint32_t n = 0; n < used; ++n) {
    uint32_t bucket = t.entries[n].bucket;
    if (bucket < 2 * t.capacity) t.index[bucket] = 0;
  }
  t.header->arena_used.store(0, std::memory_order_relaxed);
  t.header->used.store(0, std::memory_order_relaxed);
}

}  // namespace usprobe::agent
