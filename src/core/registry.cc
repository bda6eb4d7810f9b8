#include "core/registry.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>

#include <fmt/format.h>

#include "core/counters.h"
#include "core/patcher.h"
#include "core/rcu.h"
#include "core/site_table.h"
#include "elf/location.h"
#include "os/linux/membarrier.h"
#include "os/linux/proc_maps.h"

namespace usprobe {

ConsumerArray *ConsumerArray::make(const std::vector<ConsumerEntry> &v) {
  void *mem = ::operator new(sizeof(ConsumerArray) + v.size() * sizeof(ConsumerEntry));
  auto *a = new (mem) ConsumerArray;
  a->count = static_cast<uint32_t>(v.size());
  a->has_callbacks = std::any_of(v.begin(), v.end(), [](auto &e) { return e.on_entry != nullptr; });
  a->wants_vector_state = std::any_of(
      v.begin(), v.end(), [](auto &e) { return e.on_entry != nullptr && e.wants_vector_state; });
  a->has_returns = std::any_of(v.begin(), v.end(), [](auto &e) { return e.count_returns; });
  a->has_return_callbacks =
      std::any_of(v.begin(), v.end(), [](auto &e) { return e.on_return != nullptr; });
  a->return_wants_vector_state = std::any_of(
      v.begin(), v.end(), [](auto &e) { return e.on_return != nullptr && e.wants_vector_state; });
  for (const ConsumerEntry &e : v) {
    if (!e.count_returns) continue;
    if (a->return_sessions == kMaxSessions) {
      a->return_overflow = true;
    } else {
      a->return_template[a->return_sessions++] = {e.slot, 0, {0, 0}};
    }
  }
  static std::atomic<uint64_t> next_id{1};
  a->id = next_id.fetch_add(1, std::memory_order_relaxed);
  std::copy(v.begin(), v.end(), a->entries);
  return a;
}
void ConsumerArray::destroy(const ConsumerArray *a) {
  ::operator delete(const_cast<ConsumerArray *>(a));
}

namespace registry {
namespace {

using Key = std::pair<elf::FileId, uint64_t>;

// Everything below is built on first use and never destroyed. Trampolines have their Probe's
// address built in, and threads keep hitting patched sites until the process is gone: in exit
// handlers, in static destructors, on other threads. A map destroyed by exit() would turn those
// hits into use-after-free. Built on first use, not at load: the CLI's agent attaches from a
// constructor that may run before this file's static initializers.
std::mutex g_mutex;  // (constant-initialized) guards everything below, probes' sites and links
std::map<Key, std::unique_ptr<Probe>> &probes() {
  static auto *map = new std::map<Key, std::unique_ptr<Probe>>;
  return *map;
}
const std::string &empty_reason() {
  static const auto *s = new std::string;
  return *s;
}
const std::string &forced_reason() {
  static const auto *s = new std::string("the int3 path was asked for (USPROBE_FORCE_INT3)");
  return *s;
}

Result<void> init() {
  static Result<void> result = []() -> Result<void> {
    if (auto ok = os::membarrier_init(); !ok) return ok;
    return arch::install_trap_handler(site_table::lookup);
  }();
  return result;
}

// The return trampoline, made by the first attach of a return probe (under g_mutex). Stored before
// any consumer array that needs it is published: dispatch's acquire load of the array orders it.
Result<void> ensure_return_trampoline() {
  if (g_return_trampoline.load(std::memory_order_relaxed)) return {};
  auto t = arch::make_return_trampoline();
  if (!t) return std::unexpected(t.error());
  g_return_trampoline.store(*t, std::memory_order_relaxed);
  return {};
}

// Stack unwinders read return addresses: a hijacked one (the return trampoline's) ends their walk,
// and a C++ exception thrown through a return-probed frame would terminate the program. Once
// return probes exist, the unwinder's entry points of libgcc (the shared library, or a copy
// linked into the executable) get an entry probe of ours that puts the thread's original return
// addresses back first (return_stack.h: restore_pending_returns). Where the unwinder is not
// mapped yet, nothing can be done before it is (README, caveats). libc's context switches get one
// too (note_context_switch).
void guard_unwinders() {
  // Once; not std::call_once: the guards' own attach comes back here.
  static std::atomic<bool> guarded{false};
  if (guarded.exchange(true)) return;
  {
    const char *const kEntries[] = {"_Unwind_RaiseException", "_Unwind_Resume_or_Rethrow",
                                    "_Unwind_ForcedUnwind", "_Unwind_Backtrace"};
    std::vector<std::string> where;
    for (const char *file : {"libgcc_s", "exe"})
      for (const char *fn : kEntries) where.push_back(fmt::format("{}:{}", file, fn));
    const usprobe_consumer guard{restore_pending_returns, nullptr, nullptr};
    // Locations that do not resolve (no such library, no such function) are simply not guarded.
    (void)attach(where, std::span(&guard, 1), USPROBE_GENERAL_REGS_ONLY);
  }
  // Coroutines: calls pending on a stack the thread switched away from are not judged by the
  // stack pointer of another (return_stack.h, "Stacks").
  for (auto [fn, kind] : {std::pair{"libc:swapcontext", kSwapContext},
                          std::pair{"libc:setcontext", kSetContext}}) {
    const usprobe_consumer guard{note_context_switch, kind, nullptr};
    const std::string where[] = {fn};
    (void)attach(where, std::span(&guard, 1), USPROBE_GENERAL_REGS_ONLY);
  }
}

// Replace a probe's consumer array; the old one goes to `garbage`.
void publish(Probe *p, std::vector<ConsumerEntry> entries,
             std::vector<std::function<void()>> &garbage) {
  const ConsumerArray *next = entries.empty() ? nullptr : ConsumerArray::make(entries);
  // The trampoline's hint first when callbacks arrive, last when they go; a trampoline that reads
  // it stale is corrected by dispatch (kDispatchNeedsVectorSave).
  if (next && next->wants_vector_state) p->wants_vector_state.store(1, std::memory_order_relaxed);
  // Release: dispatch's acquire load sees a fully built array.
  const ConsumerArray *old = p->consumers.exchange(next, std::memory_order_acq_rel);
  if (!next || !next->wants_vector_state) p->wants_vector_state.store(0, std::memory_order_relaxed);
  p->no_entry_handlers.store(!next || !next->has_callbacks, std::memory_order_relaxed);
  if (old) garbage.emplace_back([old] { ConsumerArray::destroy(old); });
}

std::vector<ConsumerEntry> entries_of(const Probe *p) {
  std::vector<ConsumerEntry> v;
  if (const ConsumerArray *a = p->consumers.load(std::memory_order_relaxed))
    v.assign(a->entries, a->entries + a->count);
  return v;
}

// Sites by address: the patched ones (g_patched, kept by note_patched after every install and
// remove), and a batch's pending ones. A window is at most kMaxWindow bytes (whole instructions
// covering a 5-byte jump), so the sites that can overlap [addr, addr + len) start within
// kMaxWindow below addr: a lookup costs a logarithm, not a scan of every probe (a batch of 10,000
// probes would otherwise cost 10,000 scans of 10,000 sites).
using SiteIndex = std::map<uint64_t, const Site *>;
constexpr uint64_t kMaxWindow = 64;
SiteIndex &g_patched() {  // guarded by g_mutex; never destroyed (see probes())
  static auto *index = new SiteIndex;
  return *index;
}

void note_patched(const std::vector<Site *> &sites) {
  SiteIndex &index = g_patched();
  for (const Site *s : sites) {
    if (s->patched) {
      index[s->addr] = s;
    } else if (auto it = index.find(s->addr); it != index.end() && it->second == s) {
      index.erase(it);
    }
  }
}

const Site *overlapping_in(const SiteIndex &index, uint64_t addr, uint64_t len) {
  for (auto it = index.lower_bound(addr > kMaxWindow ? addr - kMaxWindow : 0);
       it != index.end() && it->first < addr + len; ++it) {
    const Site *s = it->second;
    if (addr < s->addr + std::max<uint64_t>(s->plan.window_length, 1)) return s;
  }
  return nullptr;
}

// Every site (patched or about to be) whose window overlaps [addr, addr + len).
const Site *overlapping(uint64_t addr, uint64_t len, const SiteIndex &pending) {
  if (const Site *s = overlapping_in(pending, addr, len)) return s;
  return overlapping_in(g_patched(), addr, len);
}

std::string site_owner(const Site *s) {
  for (auto &[key, p] : probes())
    for (Site *x : p->sites)
      if (x == s) return p->name;
  return fmt::format("{:#x}", s->addr);
}

// Direct branch targets of every function of a file, in file offsets, sorted; computed once per
// file (about 40 ms for libc) and kept for the life of the process.
const std::vector<uint64_t> *file_branch_targets(const elf::ElfFile &file) {
  static auto *by_file = new std::map<elf::FileId, std::unique_ptr<std::vector<uint64_t>>>;
  auto &slot = (*by_file)[file.id()];
  if (!slot) {
    slot = std::make_unique<std::vector<uint64_t>>();
    uint64_t last_offset = ~0ull;
    for (const elf::Function &f : file.functions()) {
      if (f.file_offset == last_offset) continue;  // aliases
      last_offset = f.file_offset;
      auto code = file.bytes(f.file_offset, f.size);
      if (!code.empty()) arch::branch_targets(code, f.file_offset, *slot);
    }
    std::sort(slot->begin(), slot->end());
    slot->erase(std::unique(slot->begin(), slot->end()), slot->end());
  }
  return slot.get();
}

// Make (or reuse) the sites of probe `p` for the current mappings. New sites go to `pending`.
// The site plan of `p` at `addr` for one path (natural: whatever analysis chose; or a forced
// int3), made once and kept: its trampoline stays valid for threads that may still be in it.
Result<Site *> plan_for(Probe *p, const elf::ResolvedLocation &loc, uint64_t addr, bool forced) {
  for (auto &s : p->plans)
    if (s->addr == addr && s->forced_int3 == forced) return s.get();
  arch::SiteRequest req;
  req.site = addr;
  req.bounds_known = loc.func_size > 0;
  if (req.bounds_known) {
    req.function = loc.file->bytes(loc.func_offset, loc.func_size);
    req.function_addr = addr - loc.offset_in_function();
  } else {
    req.function = loc.file->bytes(loc.file_offset, 32);
    req.function_addr = addr;
  }
  if (req.function.empty())
    return fail(EINVAL, fmt::format("{}: offset is past the end of the file", loc.describe()));
  req.probe = p;
  req.describe = p->name;
  req.file_branch_targets = file_branch_targets(*loc.file);
  req.site_file_offset = loc.file_offset;
  req.force_int3 = forced;
  req.force_reason = forced_reason();
  auto plan = arch::prepare_site(req);
  if (!plan) return std::unexpected(plan.error());
  auto site = std::make_unique<Site>();
  site->addr = addr;
  site->forced_int3 = forced;
  site->plan = std::move(*plan);
  p->plans.push_back(std::move(site));
  return p->plans.back().get();
}

// Choose the sites of probe `p` for the current mappings (it has no links, so none is patched)
// and check them against every other patched or pending site. Chosen sites go to `pending`.
Result<void> place(Probe *p, const elf::ResolvedLocation &loc, const std::vector<os::Mapping> &maps,
                   unsigned flags, std::vector<Site *> &pending, SiteIndex &pending_index) {
  std::vector<uint64_t> addrs;
  for (const auto &m : maps) {
    if (!m.exec || m.dev != p->file.dev || m.ino != p->file.ino) continue;
    if (loc.file_offset < m.offset || loc.file_offset >= m.offset + (m.end - m.start)) continue;
    addrs.push_back(m.start + (loc.file_offset - m.offset));
  }
  if (addrs.empty())
    return fail(ENOENT, fmt::format("{}: {} is not mapped executable in this process",
                                    loc.describe(), loc.file->path()));

  std::vector<Site *> chosen;
  for (uint64_t addr : addrs) {
    auto natural = plan_for(p, loc, addr, false);  // also checks the instruction boundary
    if (!natural) return std::unexpected(natural.error());
    if (const Site *o = overlapping(addr, 1, pending_index))
      return fail(EBUSY,
                  fmt::format("{}: inside the patched window of probe {}", p->name, site_owner(o)));
    Site *site = *natural;
    std::string reason;
    if (site->plan.jump && (flags & USPROBE_FORCE_INT3))
      reason = forced_reason();
    else if (site->plan.jump && overlapping(addr, site->plan.window_length, pending_index))
      reason = "another probe's site lies within the 5-byte window";
    if (!reason.empty()) {
      auto forced = plan_for(p, loc, addr, true);
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
    // The patch overwrites exactly these bytes; they must be the file's. A debugger's breakpoint
    // or a kernel uprobe's int3 (or another tool's patch) shows up as a difference.
    const auto &orig = s->plan.original;
    if (std::memcmp(reinterpret_cast<const void *>(s->addr), orig.data(), orig.size()) != 0)
      return fail(EBUSY, fmt::format("{}: the code at {:#x} differs from the file (a breakpoint, "
                                     "a kernel uprobe or another tool's patch is there)",
                                     p->name, s->addr));
  }
  p->sites = chosen;
  pending.insert(pending.end(), chosen.begin(), chosen.end());
  for (Site *s : chosen) pending_index[s->addr] = s;
  return {};
}

void run(std::vector<std::function<void()>> &garbage) {
  for (auto &g : garbage) g();
  garbage.clear();
}

}  // namespace

std::vector<Result<usprobe_link *>> attach(std::span<const std::string> locations,
                                           std::span<const usprobe_consumer> consumers,
                                           unsigned flags) {
  std::vector<Result<usprobe_link *>> out(locations.size(), nullptr);
  auto consumer_of = [&](size_t i) {
    if (consumers.empty()) return usprobe_consumer{};
    return consumers.size() == locations.size() ? consumers[i] : consumers[0];
  };
  if (auto ok = init(); !ok) {
    for (auto &r : out) r = std::unexpected(ok.error());
    return out;
  }
  // bpftrace's prefixes: "uprobe:" says nothing more; "uretprobe:" makes the built-in counter
  // count returns.
  std::vector<std::string> specs(locations.begin(), locations.end());
  std::vector<bool> uretprobe(specs.size(), false);
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].starts_with("uretprobe:")) {
      specs[i].erase(0, 10);
      uretprobe[i] = true;
    } else if (specs[i].starts_with("uprobe:")) {
      specs[i].erase(0, 7);
    }
  }
  auto resolved = elf::resolve_locations(specs);

  std::vector<std::function<void()>> garbage;
  {
    std::lock_guard lock(g_mutex);
    counters::reclaim_dead_threads();
    auto maps = os::read_mappings();
    std::vector<Site *> pending;
    SiteIndex pending_index;
    std::map<Probe *, std::vector<ConsumerEntry>> added;
    std::vector<std::pair<size_t, usprobe_link *>> made;

    for (size_t i = 0; i < locations.size(); ++i) {
      if (!resolved[i]) {
        out[i] = std::unexpected(resolved[i].error());
        continue;
      }
      if (!maps) {
        out[i] = std::unexpected(maps.error());
        continue;
      }
      const elf::ResolvedLocation &loc = *resolved[i];
      const usprobe_consumer consumer = consumer_of(i);
      const bool returns = uretprobe[i] || consumer.on_return;
      if (returns) {
        if (loc.func_size == 0 || loc.offset_in_function() != 0) {
          out[i] = fail(EINVAL, fmt::format("{}: a return probe needs a function's entry, and this "
                                            "is not one",
                                            loc.describe()));
          continue;
        }
        if (auto ok = ensure_return_trampoline(); !ok) {
          out[i] = std::unexpected(ok.error());
          continue;
        }
      }
      Key key{loc.file->id(), loc.file_offset};
      auto &slot_in_map = probes()[key];
      bool created = !slot_in_map;
      if (created) {
        slot_in_map = std::make_unique<Probe>();
        slot_in_map->name = loc.describe();
        slot_in_map->file = key.first;
        slot_in_map->file_offset = key.second;
        slot_in_map->function_entry = loc.func_size != 0 && loc.offset_in_function() == 0;
      }
      Probe *p = slot_in_map.get();
      if (p->links.empty() && !added.count(p)) {
        if (auto ok = place(p, loc, *maps, flags, pending, pending_index); !ok) {
          if (created && p->plans.empty()) probes().erase(key);
          out[i] = std::unexpected(ok.error());
          continue;
        }
      }
      auto slot = counters::alloc_slot();
      if (!slot) {
        out[i] = fail(ENOSPC, fmt::format("{}: too many consumers", p->name));
        continue;
      }
      auto *link = new usprobe_link{p, *slot, consumer};
      added[p].push_back({*slot, consumer.on_entry, consumer.user,
                          !(flags & USPROBE_GENERAL_REGS_ONLY), consumer.on_return, returns});
      made.emplace_back(i, link);
    }

    // Consumers first, so that hits are counted from the first patched byte on.
    for (auto &[p, add] : added) {
      auto entries = entries_of(p);
      entries.insert(entries.end(), add.begin(), add.end());
      publish(p, std::move(entries), garbage);
    }
    auto installed = patcher::install(pending);
    note_patched(pending);
    for (auto &[i, link] : made) {
      if (!installed) {
        out[i] = std::unexpected(installed.error());
        continue;
      }
      link->probe->links.push_back(link);
      out[i] = link;
    }
    if (!installed) {
      // Should not happen (writes to our own memory); undo what was published.
      (void)patcher::remove(pending);
      note_patched(pending);
      for (auto &[p, add] : added) {
        auto entries = entries_of(p);
        std::erase_if(entries, [&](const ConsumerEntry &e) {
          return std::any_of(add.begin(), add.end(), [&](auto &a) { return a.slot == e.slot; });
        });
        publish(p, std::move(entries), garbage);
      }
      for (auto &[i, link] : made) {
        uint32_t s = link->slot;
        delete link;
        garbage.emplace_back([s] { counters::free_slot(s); });
      }
    }
    for (auto &g : site_table::take_retired()) garbage.push_back(std::move(g));
  }
  if (!garbage.empty()) {
    rcu::synchronize();
    run(garbage);
  }
  if (g_return_trampoline.load(std::memory_order_relaxed)) guard_unwinders();
  return out;
}

Result<void> detach(std::span<usprobe_link *const> links) {
  std::vector<std::function<void()>> garbage;
  std::vector<usprobe_link *> gone;
  Result<void> result;
  {
    std::lock_guard lock(g_mutex);
    std::map<Probe *, std::vector<uint32_t>> removed;
    for (usprobe_link *l : links) {
      if (!l) continue;
      auto &v = l->probe->links;
      auto it = std::find(v.begin(), v.end(), l);
      if (it == v.end()) {
        result = fail(EINVAL, "detach: not an attached link");
        continue;
      }
      v.erase(it);
      removed[l->probe].push_back(l->slot);
      gone.push_back(l);
      uint32_t slot = l->slot;
      garbage.emplace_back([slot] { counters::free_slot(slot); });
    }
    std::vector<Site *> unpatch;
    for (auto &[p, slots] : removed) {
      auto entries = entries_of(p);
      std::erase_if(entries, [&](const ConsumerEntry &e) {
        return std::find(slots.begin(), slots.end(), e.slot) != slots.end();
      });
      publish(p, std::move(entries), garbage);
      if (p->links.empty())
        for (Site *s : p->sites)
          if (s->patched) unpatch.push_back(s);
    }
    if (auto ok = patcher::remove(unpatch); !ok) result = ok;
    note_patched(unpatch);
    for (auto &g : site_table::take_retired()) garbage.push_back(std::move(g));
  }
  // After this grace period no thread runs (or will run) a handler of the detached consumers.
  rcu::synchronize();
  run(garbage);
  for (usprobe_link *l : gone) delete l;
  return result;
}

bool uses_int3(const usprobe_link *link) {
  std::lock_guard lock(g_mutex);
  for (Site *s : link->probe->sites)
    if (!s->plan.jump) return true;
  return false;
}

const std::string &int3_reason(const usprobe_link *link) {
  std::lock_guard lock(g_mutex);
  for (Site *s : link->probe->sites)
    if (!s->plan.jump) return s->plan.int3_reason;
  return empty_reason();
}

}  // namespace registry
}  // namespace usprobe
