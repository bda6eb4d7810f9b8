// The index of patched sites, and which sites a new patch would overlap.
#include "core/registry_internal.h"

#include <algorithm>

#include <fmt/format.h>

namespace usprobe::registry::internal {

// Sites by address: the patched ones (g_patched, kept by note_patched after every install and
// remove), and a batch's pending ones. A window is at most kMaxWindow bytes (whole instructions
// covering a 5-byte jump), so the sites that can overlap [addr, addr + len) start within
// kMaxWindow below addr: a lookup costs a logarithm, not a scan of every probe (a batch of 10,000
// probes would otherwise cost 10,000 scans of 10,000 sites).
namespace {

constexpr uint64_t kMaxWindow = 64;
SiteIndex &g_patched() {  // guarded by the registry's mutex; never destroyed (see probes())
  static auto *index = new SiteIndex;
  return *index;
}

// Counts unpatches (guarded by the registry's mutex): Site::idle_since.
uint64_t g_unpatch_gen = 0;

}  // namespace

uint64_t unpatch_generation(const Locked &) {
  return g_unpatch_gen;
}

void note_unpatched(const Locked &, const std::vector<Site *> &sites) {
  for (Site *s : sites)
    if (!s->patched) s->idle_since = ++g_unpatch_gen;
}

void note_patched(const Locked &, const std::vector<Site *> &sites) {
  SiteIndex &index = g_patched();
  for (const Site *s : sites) {
    if (s->patched) {
      index[s->addr] = s;
    } else if (auto it = index.find(s->addr); it != index.end() && it->second == s) {
      index.erase(it);
    }
  }
}

// The bytes from a site on that its patch writes or relies on (a punned jump borrows the bytes
// after its window): no other probe may write there.
uint64_t footprint(const arch::SitePlan &plan) {
  return std::max<uint64_t>({plan.window_length, plan.jump ? plan.footprint : 0, 1});
}

namespace {

const Site *overlapping_in(const SiteIndex &index, uint64_t addr, uint64_t len) {
  for (auto it = index.lower_bound(addr > kMaxWindow ? addr - kMaxWindow : 0);
       it != index.end() && it->first < addr + len; ++it) {
    const Site *s = it->second;
    if (addr < s->addr + footprint(s->plan)) return s;
  }
  return nullptr;
}

}  // namespace

// Every site (patched or about to be) whose window overlaps [addr, addr + len).
const Site *overlapping(const Locked &, uint64_t addr, uint64_t len, const SiteIndex &pending) {
  if (const Site *s = overlapping_in(pending, addr, len)) return s;
  return overlapping_in(g_patched(), addr, len);
}

std::string site_owner(const Site *s) {
  return s->owner ? s->owner->name : fmt::format("{:#x}", s->addr);
}

}  // namespace usprobe::registry::internal
