#include "core/site_table.h"

#include <algorithm>
#include <atomic>
#include <set>

#include "core/rcu.h"

namespace usprobe::site_table {
namespace {

struct Table {
  std::vector<std::pair<uint64_t, uint64_t>> entries;  // sorted by site
};

// Release on publish pairs with the acquire in lookup(): a reader sees a complete table.
std::atomic<const Table *> g_table{nullptr};
std::vector<const Table *> g_retired;  // registry mutex

void publish(Table *t) {
  const Table *old = g_table.exchange(t, std::memory_order_acq_rel);
  if (old) g_retired.push_back(old);
}

}  // namespace

void insert(const std::vector<std::pair<uint64_t, uint64_t>> &add) {
  auto *t = new Table;
  if (const Table *cur = g_table.load(std::memory_order_relaxed)) t->entries = cur->entries;
  for (auto &e : add) {
    auto it = std::lower_bound(t->entries.begin(), t->entries.end(), std::make_pair(e.first, 0ul));
    if (it != t->entries.end() && it->first == e.first)
      it->second = e.second;
    else
      t->entries.insert(it, e);
  }
  publish(t);
}

void remove(const std::vector<uint64_t> &sites) {
  auto *t = new Table;
  std::set<uint64_t> gone(sites.begin(), sites.end());
  if (const Table *cur = g_table.load(std::memory_order_relaxed))
    for (auto &e : cur->entries)
      if (!gone.count(e.first)) t->entries.push_back(e);
  publish(t);
}

std::vector<std::function<void()>> take_retired() {
  std::vector<std::function<void()>> out;
  for (const Table *t : g_retired) out.emplace_back([t] { delete t; });
  g_retired.clear();
  return out;
}

uint64_t lookup(uint64_t addr) {
  ThreadRecord *rec = current_record();
  if (!rec) return 0;
  rcu::ReadGuard guard(rec);
  const Table *t = g_table.load(std::memory_order_acquire);
  if (!t) return 0;
  auto it = std::lower_bound(t->entries.begin(), t->entries.end(), std::make_pair(addr, 0ul));
  return it != t->entries.end() && it->first == addr ? it->second : 0;
}

}  // namespace usprobe::site_table
