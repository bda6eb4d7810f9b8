#include "core/site_table.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <set>

#include "core/arch.h"
#include "core/mapping_table.h"
#include "core/rcu.h"

namespace usprobe::site_table {
namespace {

struct Table {
  std::vector<Entry> entries;  // sorted by site
};

// Release on publish pairs with the acquire in lookup(): a reader sees a complete table.
std::atomic<const Table *> g_table{nullptr};
std::vector<const Table *> g_retired;  // registry mutex

bool by_site(const Entry &e, uint64_t site) {
  return e.site < site;
}

void publish(Table *t) {
  // The sequence count of the mapping table covers both tables: a reader that looked up the
  // mapping and the site while this ran sees the count move (lookup()).
  MappingTable &maps = MappingTable::process();
  maps.write_begin();
  const Table *old = g_table.exchange(t, std::memory_order_acq_rel);
  maps.write_end();
  if (old) g_retired.push_back(old);
}

const Entry *find(const Table *t, uint64_t addr) {
  if (!t) return nullptr;
  auto it = std::lower_bound(t->entries.begin(), t->entries.end(), addr, by_site);
  return it != t->entries.end() && it->site == addr ? &*it : nullptr;
}

}  // namespace

void insert(const std::vector<Entry> &add) {
  auto *t = new Table;
  if (const Table *cur = g_table.load(std::memory_order_relaxed)) t->entries = cur->entries;
  for (const Entry &e : add) {
    auto it = std::lower_bound(t->entries.begin(), t->entries.end(), e.site, by_site);
    if (it != t->entries.end() && it->site == e.site)
      *it = e;
    else
      t->entries.insert(it, e);
  }
  publish(t);
}

void remove(const std::vector<uint64_t> &sites) {
  auto *t = new Table;
  std::set<uint64_t> gone(sites.begin(), sites.end());
  if (const Table *cur = g_table.load(std::memory_order_relaxed))
    for (const Entry &e : cur->entries)
      if (!gone.count(e.site)) t->entries.push_back(e);
  publish(t);
}

std::vector<std::function<void()>> take_retired() {
  std::vector<std::function<void()>> out;
  for (const Table *t : g_retired) out.emplace_back([t] { delete t; });
  g_retired.clear();
  return out;
}

// Why the answer is a consistent (mapping, probe) pair: both lookups run in one read section, so
// neither table can be freed under them, and each table is immutable once published. The
// sequence count of MappingTable::process() moves around every publish of either table (publish()
// above; MappingTable::replace_later), so an unchanged count means the mapping found at `addr` and
// the site entry found for `addr` were both current together. The entry names the file and offset
// its site was made for; the trampoline is used only when that is what is mapped at `addr`. A
// site left behind by a library that was unmapped (and its address reused by another file) is
// thereby never taken for a probe of the new file. When the count keeps moving (a signal handler
// that interrupted the writer on its own thread), the last try's pair is judged the same way.
namespace {

uint64_t lookup_in_section(uint64_t addr) {
  const MappingTable &maps = MappingTable::process();
  for (unsigned attempt = 1;; ++attempt) {
    const uint64_t s = maps.read_begin();
    const Entry *e = find(g_table.load(std::memory_order_acquire), addr);
    std::optional<FileLocation> where;
    if (e) where = maps.find(addr);
    if (maps.read_retry(s) && attempt < MappingTable::kReadRetries) {
      arch::cpu_relax();
      continue;
    }
    if (!e || !where || where->dev != e->dev || where->ino != e->ino ||
        where->file_offset != e->file_offset)
      return 0;
    return e->trampoline;
  }
}

}  // namespace

uint64_t lookup(uint64_t addr) {
  ThreadRecord *rec = current_record();
  if (!rec) return 0;
  rcu::ReadGuard guard(rec);
  return lookup_in_section(addr);
}

bool redirect(uint64_t addr, void *pc) {
  ThreadRecord *rec = current_record();
  if (!rec) return false;
  rcu::ReadGuard guard(rec);
  const uint64_t trampoline = lookup_in_section(addr);
  if (trampoline) std::memcpy(pc, &trampoline, sizeof trampoline);
  return trampoline != 0;
}

bool take_trap(const siginfo_t *info, ucontext_t *uc) {
  return arch::take_trap(info, uc, redirect);
}

}  // namespace usprobe::site_table
