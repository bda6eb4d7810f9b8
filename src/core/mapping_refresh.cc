// Probes brought in line with the process's mappings: sites for new mappings of a probed file,
// none for mappings that went away (after the dynamic linker's hook, or usprobe_notify_mapping).
#include "core/registry_internal.h"

#include <algorithm>

#include "core/mapping_table.h"
#include "core/patcher.h"
#include "core/site_table.h"

namespace usprobe::registry::internal {

Listener &listener(const Locked &) {
  static Listener l;  // guarded by the registry's mutex
  return l;
}

// Read /proc/self/maps into the process's mapping table (the old table's deleter goes to
// `garbage`) and group its executable file mappings by file.
Result<FileMappings> refresh_mappings(const Locked &, std::vector<std::function<void()>> &garbage) {
  auto maps = os::read_mappings();
  if (!maps) return std::unexpected(maps.error());
  FileMappings by_file;
  for (const os::Mapping &m : *maps)
    if (m.exec && m.ino != 0 && !m.deleted) by_file[{m.dev, m.ino}].push_back(m);
  if (auto free_old = MappingTable::process().replace_later(std::move(*maps)))
    garbage.push_back(std::move(free_old));
  return by_file;
}

// Where probe `p` belongs now: one address per executable mapping of its file that holds its
// offset (none while the file is not mapped; two for a library loaded in two namespaces).
std::vector<uint64_t> wanted_addresses(const Probe *p, const FileMappings &by_file) {
  std::vector<uint64_t> addrs;
  auto it = by_file.find(p->file);
  if (it == by_file.end()) return addrs;
  for (const os::Mapping &m : it->second)
    if (p->file_offset >= m.offset && p->file_offset < m.offset + (m.end - m.start))
      addrs.push_back(m.start + (p->file_offset - m.offset));
  return addrs;
}

// Sites whose memory is gone (their library was unmapped) leave their probe without a write: the
// site table and the index of patched sites forget them. Their trampolines stay (Lifetimes).
void forget(const Locked &lock, const std::vector<Site *> &lost) {
  if (lost.empty()) return;
  std::vector<uint64_t> addrs;
  for (Site *s : lost) {
    s->patched = false;
    s->semaphore_raised = false;  // gone with its mapping
    addrs.push_back(s->addr);
  }
  for (auto &[key, p] : probes(lock))
    std::erase_if(p->sites,
                  [&](Site *s) { return std::find(lost.begin(), lost.end(), s) != lost.end(); });
  site_table::remove(addrs);
  note_patched(lock, lost);
  note_unpatched(lock, lost);
}

// Bring every attached probe in line with the mappings (the mutex held; blocks, but never waits for
// a grace period: the dynamic linker's hook calls it from inside a read section). Sites of
// mappings that went away are forgotten; mappings of a probed file that appeared get sites.
// Placement problems are kept per probe (Probe::follow_error), not returned.
Result<void> follow_locked(const Locked &lock, std::vector<std::function<void()>> &garbage) {
  auto by_file = refresh_mappings(lock, garbage);
  if (!by_file) return std::unexpected(by_file.error());
  std::vector<Site *> lost;
  std::vector<std::pair<Probe *, std::vector<uint64_t>>> missing;
  for (auto &[key, up] : probes(lock)) {
    Probe *p = up.get();
    if (p->links.empty()) continue;
    std::vector<uint64_t> wanted = wanted_addresses(p, *by_file);
    std::vector<uint64_t> have;
    for (Site *s : p->sites) {
      if (std::find(wanted.begin(), wanted.end(), s->addr) != wanted.end())
        have.push_back(s->addr);
      else
        lost.push_back(s);
    }
    std::erase_if(wanted,
                  [&](uint64_t a) { return std::find(have.begin(), have.end(), a) != have.end(); });
    if (!wanted.empty() && p->location) missing.emplace_back(p, std::move(wanted));
  }
  forget(lock, lost);
  std::vector<Site *> pending;
  SiteIndex pending_index;
  for (auto &[p, addrs] : missing) {
    auto ok = place(lock, p, *p->location, addrs, p->place_flags, pending, pending_index);
    p->follow_error = ok ? std::string() : ok.error().message;
  }
  auto installed = patcher::install(pending);
  if (installed) adjust_semaphores(lock, pending, true);
  if (!installed) {
    (void)patcher::remove(pending);
    for (auto &[p, addrs] : missing) {
      std::erase_if(p->sites, [&](Site *s) { return !s->patched; });
      p->follow_error = installed.error().message;
    }
  }
  note_patched(lock, pending);
  for (auto &g : site_table::take_retired()) garbage.push_back(std::move(g));
  refresh_views(lock);
  return {};
}

}  // namespace usprobe::registry::internal
