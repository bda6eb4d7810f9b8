// A probe's sites: a plan per address and path, chosen against the sites around it, and the
// USDT semaphores of the placed ones.
#include "core/registry_internal.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "core/code_space.h"
#include "core/site_analysis.h"

namespace usprobe::registry::internal {

const std::string &forced_reason() {
  static const auto *s = new std::string("the int3 path was asked for (USPROBE_FORCE_INT3)");
  return *s;
}

// Make (or reuse) the sites of probe `p` for the current mappings. New sites go to `pending`.
// The site plan of `p` at `addr` for one path (natural: whatever analysis chose; or a forced
// int3), made once and kept: its trampoline stays valid for threads that may still be in it.
Result<Site *> plan_for(const Locked &, Probe *p, const elf::ResolvedLocation &loc, uint64_t addr,
                        bool forced) {
  for (auto &s : p->plans)
    if (s->addr == addr && s->forced_int3 == forced) return s.get();
  auto req = site_request(loc, addr);  // core/site_analysis.h: what a report says it would do
  if (!req) return std::unexpected(req.error());
  req->probe = p;
  req->describe = p->name;
  req->force_int3 = forced;
  req->force_reason = forced_reason();
  auto plan = arch::prepare_site(*req, code_space());
  if (!plan) return std::unexpected(plan.error());
  auto site = std::make_unique<Site>();
  site->addr = addr;
  site->owner = p;
  site->file = p->file;
  site->file_offset = p->file_offset;
  site->forced_int3 = forced;
  if (loc.usdt && loc.usdt->semaphore_vaddr)
    site->semaphore = loc.usdt->runtime_address(loc.usdt->semaphore_vaddr, addr);
  site->plan = std::move(*plan);
  p->plans.push_back(std::move(site));
  return p->plans.back().get();
}

// Choose the sites of probe `p` at `addrs` (addresses where its location is mapped and it has no
// site yet) and check them against every other patched or pending site. The chosen sites are
// appended to p->sites and to `pending`.
Result<void> place(const Locked &lock, Probe *p, const elf::ResolvedLocation &loc,
                   const std::vector<uint64_t> &addrs, unsigned flags, std::vector<Site *> &pending,
                   SiteIndex &pending_index) {
  std::vector<Site *> chosen;
  for (uint64_t addr : addrs) {
    auto natural = plan_for(lock, p, loc, addr, false);  // also checks the instruction boundary
    if (!natural) return std::unexpected(natural.error());
    if (const Site *o = overlapping(lock, addr, 1, pending_index))
      return fail(EBUSY,
                  fmt::format("{}: inside the patched window of probe {}", p->name, site_owner(o)));
    Site *site = *natural;
    std::string reason;
    if (site->plan.jump && (flags & USPROBE_FORCE_INT3))
      reason = forced_reason();
    else if (site->plan.jump && overlapping(lock, addr, footprint(site->plan), pending_index))
      reason = "another probe's site lies within the 5-byte window";
    if (!reason.empty()) {
      auto forced = plan_for(lock, p, loc, addr, true);
      if (!forced) return std::unexpected(forced.error());
      site = *forced;
      site->plan.int3_reason = reason;
    }
    site->stale_trampolines.clear();
    if (site->plan.jump)
      for (const auto &other : p->plans) {
        const arch::SitePlan &o = other->plan;
        uint64_t back = other->addr + o.window_length;
        if (other.get() != site && other->addr == addr && back < addr + site->plan.patch.size())
          site->stale_trampolines.emplace_back(o.trampoline, o.trampoline + o.trampoline_size);
      }
    chosen.push_back(site);
  }
  for (Site *s : chosen) {
    // The patch overwrites exactly these bytes (and relies on the borrowed ones after them); they
    // must be the file's. A debugger's breakpoint
    // or a kernel uprobe's int3 (or another tool's patch) shows up as a difference. The mapping
    // cannot go away meanwhile: the dynamic linker changes mappings only while the registry is
    // locked for it (on_loader_event), and code mapped by hand is unmapped only after it is no
    // longer probed or with a usprobe_notify_mapping() to follow (README).
    const auto &orig = s->plan.original;
    const auto &borrowed = s->plan.jump ? s->plan.borrowed : std::vector<uint8_t>();
    if (std::memcmp(reinterpret_cast<const void *>(s->addr), orig.data(), orig.size()) != 0 ||
        (!borrowed.empty() && std::memcmp(reinterpret_cast<const void *>(s->addr + orig.size()),
                                          borrowed.data(), borrowed.size()) != 0))
      return fail(EBUSY, fmt::format("{}: the code at {:#x} differs from the file (a breakpoint, "
                                     "a kernel uprobe or another tool's patch is there)",
                                     p->name, s->addr));
  }
  p->sites.insert(p->sites.end(), chosen.begin(), chosen.end());
  pending.insert(pending.end(), chosen.begin(), chosen.end());
  for (Site *s : chosen) pending_index[s->addr] = s;
  return {};
}

// USDT semaphores (elf/usdt.h): the unsigned short a program tests before it computes a probe's
// arguments, so that it pays for them only while somebody traces. Raised (one added) for each
// patched site of a probe that has one, in its mapping, and lowered when the site is unpatched.
// Other tracers share the counter (the kernel's uprobes add one per probe through ref_ctr_offset,
// another usprobe session its own): add and subtract, never store. Only a counter in writable
// memory is touched; one that is not (a file that does not follow the convention) is left as it
// is, and the program does not fire that probe.
void adjust_semaphores(const Locked &, const std::vector<Site *> &sites, bool raise) {
  std::optional<std::vector<os::Mapping>> maps;
  for (Site *s : sites) {
    if (!s->semaphore || s->semaphore_raised == raise) continue;
    if (!maps) {
      auto m = os::read_mappings();
      maps = m ? std::move(*m) : std::vector<os::Mapping>();
    }
    bool writable = std::any_of(maps->begin(), maps->end(), [&](const os::Mapping &m) {
      return m.write && s->semaphore >= m.start && s->semaphore + 2 <= m.end;
    });
    if (!writable) continue;
    auto *counter = reinterpret_cast<uint16_t *>(s->semaphore);
    if (raise)
      __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
    else
      __atomic_fetch_sub(counter, 1, __ATOMIC_RELAXED);
    s->semaphore_raised = raise;
  }
}

}  // namespace usprobe::registry::internal
