// The mapping table: this process's file mappings, address range -> file identity (st_dev, st_ino)
// and file offset. The int3 path turns a trap address into a location with it; the registry uses
// it to find every site of a location (one per mapping of the file).
//
// Readers never lock: the SIGTRAP handler reads the table, and it may interrupt the writer itself.
// The discipline is the kernel's speculative uprobe lookup (DESIGN.md, "The mapping table and the
// lockless lookup"):
//
//  writer (one at a time, under mutex_): build a new sorted, immutable Table; seq_ += 1 (odd);
//          publish it with a release store; seq_ += 1 (even); then rcu::synchronize() and free
//          the old Table.
//  reader: inside an rcu::ReadGuard: s = seq_ (acquire); t = table_ (acquire); binary search t;
//          copy the answer out; retry while s was odd or seq_ moved, at most kReadRetries times.
//
// Why a reader's answer is always one consistent mapping, never a mix of two layouts:
//  - A Table is never written after it is published, and everything in it is written before the
//    release store that publishes it; the reader's acquire load of table_ pairs with that store,
//    so the reader sees the whole Table as its writer built it.
//  - The reader takes every field of its answer from the one Table it loaded, and RCU keeps that
//    Table alive until the read section ends: the writer frees it only after an
//    rcu::synchronize() that began after it was unpublished. So a lookup that loses a race with
//    a writer answers from the old layout, complete, and never reads freed memory.
//  - That alone makes every single lookup consistent; the sequence count is what extends it to a
//    pair of lookups (below), and it also tells a reader that the answer it got is still current
//    when it checks. The bounded retry matters in a signal handler that interrupted the writer
//    between its two increments: seq_ stays odd for the whole handler, so after kReadRetries the
//    reader answers from the Table it loaded (old or new, each a layout that really existed)
//    instead of spinning forever or blocking on mutex_, which its own thread holds.
//
// The (mapping, probe) pair of the int3 path (core/site_table.cc, lookup): the trap handler takes
// one rcu::ReadGuard, s = read_begin(), find(addr) here -> location, looks the address up in the
// site table, whose entry names the location its site was made for, then read_retry(s) and
// retries on a change. Every writer that can change the answer for an
// address -- a mapping replaced here, or probe sites added and removed for a mapping that appeared
// or went away -- publishes between write_begin()/write_end() of this sequence count (or calls
// replace(), which does). An unchanged count from read_begin() to read_retry() then means no such
// change was published while the handler looked, so the probe it found belongs to the file that
// was mapped at the trap address for the whole lookup; both objects stay alive for the section.
//
// Read side (lookup, find, read_begin, read_retry): no lock, no allocation, no system call, no
// write to shared memory (a thread's first read section registers its ThreadRecord, a few system
// calls once, async-signal-safe: core/thread_record.h). Write side: may allocate and block.
// rcu::synchronize() needs os::membarrier_init() to have succeeded.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "core/os.h"

namespace usprobe {

// Where an address lies in a mapped file.
struct FileLocation {
  dev_t dev = 0;
  ino_t ino = 0;
  uint64_t file_offset = 0;     // of the address looked up
  uint64_t start = 0, end = 0;  // the mapping that holds it, [start, end)
  bool exec = false;            // the mapping is executable
  bool operator==(const FileLocation &) const = default;
};

class MappingTable {
 public:
  // This process's table, kept by the registry (core/registry.cc) and read by the int3 path;
  // never destroyed (threads trap until the process is gone).
  static MappingTable &process();

  // How often a reader retries when the sequence count moves before it answers from the table it
  // loaded anyway (see the comment at the top).
  static constexpr unsigned kReadRetries = 64;

  MappingTable() = default;
  // No reader may be using the table any more.
  ~MappingTable();
  MappingTable(const MappingTable &) = delete;
  MappingTable &operator=(const MappingTable &) = delete;

  // --- Writers: block, allocate; never from a signal handler or an RCU read section. ---

  // Replace the whole table with the file mappings among `mappings` (those with an inode;
  // anonymous ones, [heap], [stack], [vdso] are left out). Returns after the old table is freed.
  // Overlapping input keeps the lowest-starting mapping of each overlap.
  void replace(std::vector<os::Mapping> mappings);
  // The same, for a writer that frees later: returns the old table's deleter, to run after a
  // grace period that begins after this call (rcu::synchronize, or rcu::defer), or null.
  [[nodiscard]] std::function<void()> replace_later(std::vector<os::Mapping> mappings);
  // replace() from /proc/self/maps (or `maps_path`, for tests).
  Result<void> update_from_proc(const char *maps_path = "/proc/self/maps");
  // For writers of other tables whose answers depend on the mappings (the probe table's sites):
  // bump the sequence count around their publish, as replace() does (see the comment at the top).
  // write_begin() takes the writer mutex and write_end() releases it, on the same thread; no
  // replace() or other write_begin() in between.
  void write_begin();
  void write_end();

  // --- Queries for writers and messages: lock, allocate; not between write_begin/end. ---

  // Every mapping of the file (dev, ino), by address: where a probe on that file gets a site.
  std::vector<os::Mapping> ranges_of(dev_t dev, ino_t ino) const;
  // The mapping that holds `addr`, with its path, for messages.
  std::optional<os::Mapping> mapping_at(uint64_t addr) const;
  size_t size() const;

  // --- Readers: async-signal-safe, lock-free. ---

  // Where `addr` lies, or nullopt when no file is mapped there. Takes its own read section.
  std::optional<FileLocation> lookup(uint64_t addr) const;

  // For a reader that combines a lookup with others (the int3 path): inside one rcu::ReadGuard,
  // s = read_begin(); ...find()s and other lookups...; if read_retry(s), start over.
  uint64_t read_begin() const {
    // Acquire: pairs with the release store in write_end(); a reader that sees the even count
    // also sees the table published before it.
    return seq_.load(std::memory_order_acquire);
  }
  bool read_retry(uint64_t s) const {
    // The loads of the section are acquire loads (table_ and the caller's), so this load cannot
    // move before them; it sees write_begin()'s increment if they saw anything published after.
    return (s & 1) != 0 || seq_.load(std::memory_order_acquire) != s;
  }
  // Where `addr` lies according to the current table; the caller holds an rcu::ReadGuard.
  std::optional<FileLocation> find(uint64_t addr) const;

 private:
  struct Entry {
    uint64_t end, offset;
    dev_t dev;
    ino_t ino;
    bool exec;
  };
  // Immutable once published.
  struct Table {
    std::vector<uint64_t> starts;       // sorted; starts[i] is the start of entries[i]
    std::vector<Entry> entries;         // the search touches starts, then one entry
    std::vector<os::Mapping> mappings;  // the same mappings in full, for the writer-side queries
  };

  static std::optional<FileLocation> find_in(const Table *t, uint64_t addr);

  mutable std::mutex mutex_;  // one writer at a time; guards nothing a reader reads
  // Odd while a writer publishes. Written under mutex_ only.
  std::atomic<uint64_t> seq_{0};
  // Release on publish (replace) pairs with the acquire in find().
  std::atomic<const Table *> table_{nullptr};
};

}  // namespace usprobe
