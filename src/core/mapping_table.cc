#include "core/mapping_table.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "core/arch.h"
#include "core/rcu.h"
#include "core/thread_record.h"

namespace usprobe {

MappingTable::~MappingTable() {
  delete table_.load(std::memory_order_relaxed);
}

void MappingTable::write_begin() {
  mutex_.lock();
  // Relaxed: the release store that publishes the writer's state comes after it and orders it.
  seq_.store(seq_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

void MappingTable::write_end() {
  // Release: pairs with the acquire in read_begin(); the published state precedes the even count.
  seq_.store(seq_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  mutex_.unlock();
}

MappingTable &MappingTable::process() {
  static auto *table = new MappingTable;
  return *table;
}

void MappingTable::replace(std::vector<os::Mapping> mappings) {
  // No new reader can load the old table once it returns; wait out those that may have.
  if (auto free_old = replace_later(std::move(mappings))) {
    rcu::synchronize();
    free_old();
  }
}

std::function<void()> MappingTable::replace_later(std::vector<os::Mapping> mappings) {
  std::erase_if(mappings, [](const os::Mapping &m) { return m.ino == 0 || m.end <= m.start; });
  std::stable_sort(mappings.begin(), mappings.end(),
                   [](const os::Mapping &a, const os::Mapping &b) { return a.start < b.start; });
  auto t = std::make_unique<Table>();
  t->starts.reserve(mappings.size());
  t->entries.reserve(mappings.size());
  t->mappings.reserve(mappings.size());
  for (os::Mapping &m : mappings) {
    if (!t->entries.empty() && m.start < t->entries.back().end) continue;  // overlaps the last
    t->starts.push_back(m.start);
    t->entries.push_back(Entry{m.end, m.offset, m.dev, m.ino, m.exec});
    t->mappings.push_back(std::move(m));
  }

  write_begin();
  const Table *old = table_.load(std::memory_order_relaxed);  // mutex_ held
  // Release: pairs with the acquire in find(); a reader sees the Table complete.
  table_.store(t.release(), std::memory_order_release);
  write_end();
  if (!old) return nullptr;
  return [old] { delete old; };
}

Result<void> MappingTable::update_from_proc(const char *maps_path) {
  auto mappings = os::read_mappings(maps_path);
  if (!mappings) return std::unexpected(std::move(mappings.error()));
  replace(std::move(*mappings));
  return {};
}

std::vector<os::Mapping> MappingTable::ranges_of(dev_t dev, ino_t ino) const {
  std::lock_guard lock(mutex_);  // the current Table is freed only after it is replaced
  std::vector<os::Mapping> out;
  if (const Table *t = table_.load(std::memory_order_relaxed))
    for (const os::Mapping &m : t->mappings)
      if (m.dev == dev && m.ino == ino) out.push_back(m);
  return out;
}

std::optional<os::Mapping> MappingTable::mapping_at(uint64_t addr) const {
  std::lock_guard lock(mutex_);
  const Table *t = table_.load(std::memory_order_relaxed);
  if (!t) return std::nullopt;
  auto it = std::upper_bound(t->starts.begin(), t->starts.end(), addr);
  if (it == t->starts.begin()) return std::nullopt;
  const os::Mapping &m = t->mappings[static_cast<size_t>(it - t->starts.begin()) - 1];
  if (addr >= m.end) return std::nullopt;
  return m;
}

size_t MappingTable::size() const {
  std::lock_guard lock(mutex_);
  const Table *t = table_.load(std::memory_order_relaxed);
  return t ? t->starts.size() : 0;
}

// Hot (signal handlers): no lock, no allocation, no system call, no shared write.
std::optional<FileLocation> MappingTable::find_in(const Table *t, uint64_t addr) {
  if (!t) return std::nullopt;
  const uint64_t *first = t->starts.data();
  size_t n = t->starts.size();
  if (n == 0) return std::nullopt;
  // Branch-free binary search for the last start <= addr: it lies in [base, base + n). A
  // conditional move instead of a branch that mispredicts half the time on scattered addresses.
  const uint64_t *base = first;
  while (n > 1) {
    size_t half = n / 2;
    base = base[half] <= addr ? base + half : base;
    n -= half;
  }
  if (*base > addr) return std::nullopt;  // below the first mapping
  size_t i = static_cast<size_t>(base - first);
  const Entry &e = t->entries[i];
  if (addr >= e.end) return std::nullopt;  // a hole after mapping i
  return FileLocation{e.dev, e.ino, e.offset + (addr - first[i]), first[i], e.end, e.exec};
}

std::optional<FileLocation> MappingTable::find(uint64_t addr) const {
  // Acquire: pairs with the release store in replace(); the Table is seen complete. It also keeps
  // the caller's read_retry() load after this one.
  return find_in(table_.load(std::memory_order_acquire), addr);
}

// Hot (signal handlers): no lock, no allocation, no system call, no shared write.
std::optional<FileLocation> MappingTable::lookup(uint64_t addr) const {
  ThreadRecord *rec = current_record();
  if (!rec) return std::nullopt;
  rcu::ReadGuard guard(rec);
  for (unsigned attempt = 1;; ++attempt) {
    uint64_t s = read_begin();
    std::optional<FileLocation> answer = find(addr);
    // Out of retries (say, a handler that interrupted the writer on this thread): the answer
    // still comes from one Table, a layout that was current during this call.
    if (!read_retry(s) || attempt == kReadRetries) return answer;
    arch::cpu_relax();
  }
}

}  // namespace usprobe
