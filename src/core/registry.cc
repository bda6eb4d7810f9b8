// The probe registry's transactions: attach and detach (registry.h), the registry's mutex, and the
// queries that take no lock. The ideas they use live in the files registry_internal.h lists.
#include "core/registry.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "core/code_space.h"
#include "core/counters.h"
#include "core/mapping_table.h"
#include "core/os.h"
#include "core/patcher.h"
#include "core/rcu.h"
#include "core/registry_internal.h"
#include "core/retire.h"
#include "core/site_table.h"
#include "elf/location.h"

namespace usprobe::registry {
namespace internal {
namespace {

std::mutex g_mutex;  // (constant-initialized) the registry's mutex (registry_internal.h)
// Whether this thread holds g_mutex; written only by Locked and hold_across_calls.
constinit thread_local bool t_holding = false;

}  // namespace

Locked::Locked() {
  g_mutex.lock();
  t_holding = true;
}
Locked::Locked(TakeOver) {}
Locked::~Locked() {
  t_holding = false;
  g_mutex.unlock();
}
void Locked::hold_across_calls() {
  g_mutex.lock();
  t_holding = true;
}
bool Locked::held_by_this_thread() {
  return t_holding;
}

std::map<Key, std::unique_ptr<Probe>> &probes(const Locked &) {
  static auto *map = new std::map<Key, std::unique_ptr<Probe>>;
  return *map;
}
std::unordered_set<const usprobe_link *> &live_links(const Locked &) {
  static auto *set = new std::unordered_set<const usprobe_link *>;
  return *set;
}

Result<void> init() {
  static Result<void> result = []() -> Result<void> {
    if (auto ok = os::membarrier_init(); !ok) return ok;
    return os::install_trap_handler(site_table::take_trap);
  }();
  return result;
}

// The return trampoline, made by the first attach of a return probe (under the registry's mutex).
// Stored before any consumer array that needs it is published: dispatch's acquire load of the array
// orders it.
Result<void> ensure_return_trampoline(const Locked &) {
  if (g_return_trampoline.load(std::memory_order_relaxed)) return {};
  auto t = arch::make_return_trampoline(code_space());
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
  for (auto [fn, kind] :
       {std::pair{"libc:swapcontext", kSwapContext}, std::pair{"libc:setcontext", kSetContext}}) {
    const usprobe_consumer guard{note_context_switch, kind, nullptr};
    const std::string where[] = {fn};
    (void)attach(where, std::span(&guard, 1), USPROBE_GENERAL_REGS_ONLY);
  }
}

// The few names of a site's path ("jump", "jump (punned)", "int3", ...), one immutable copy each
// for every probe, never freed: a `libc:*` batch no longer makes two allocations a probe for its
// "jump". Guarded by the registry's mutex, as refresh_views.
namespace {
const std::string *path_name(const std::string &text) {
  static auto *names = new std::set<std::string, std::less<>>;
  return &*names->insert(text).first;
}
}  // namespace

// Brings what the lock-free queries read (Probe::placed_sites, Probe::int3_reason) in line with
// every probe's sites. Called by each writer before it lets go of the mutex.
void refresh_views(const Locked &lock) {
  for (auto &[key, up] : probes(lock)) {
    Probe *p = up.get();
    int placed = 0;
    const std::string *why = nullptr, *path = nullptr;
    for (const Site *s : p->sites) {
      placed += s->patched ? 1 : 0;
      if (!s->plan.jump && !why) why = &s->plan.int3_reason, path = &s->plan.path;
      if (!path) path = &s->plan.path;
    }
    // Relaxed: a count read on its own; the queries promise nothing more.
    p->placed_sites.store(placed, std::memory_order_relaxed);
    // A plan's strings can be rewritten (a later placement that falls back to the int3 path), so
    // the queries get the probe's own immutable copy, made once per distinct string.
    auto intern = [p](const std::string *text) -> const std::string * {
      if (!text) return nullptr;
      for (const auto &r : p->reasons)
        if (*r == *text) return r.get();
      p->reasons.push_back(std::make_unique<const std::string>(*text));
      return p->reasons.back().get();
    };
    // Release: pairs with the acquire loads in int3_reason() and path(), which then read a
    // complete string.
    p->int3_reason.store(intern(why), std::memory_order_release);
    p->path.store(path ? path_name(*path) : nullptr, std::memory_order_release);
  }
}

}  // namespace internal

using namespace internal;

namespace {
// A detach could not show the counter path out of an external counter (counter_windows_clear).
std::atomic<bool> g_external_in_use{false};
}  // namespace

std::vector<Result<usprobe_link *>> attach(std::span<const std::string> locations,
                                           std::span<const usprobe_consumer> consumers,
                                           unsigned flags,
                                           std::span<const ExternalCounter> external) {
  std::vector<Result<usprobe_link *>> out(locations.size(), nullptr);
  auto consumer_of = [&](size_t i) {
    if (consumers.empty()) return usprobe_consumer{};
    return consumers.size() == locations.size() ? consumers[i] : consumers[0];
  };
  if (auto ok = init(); !ok) {
    for (auto &r : out) r = std::unexpected(ok.error());
    return out;
  }
  ensure_loader_hook();
  // bpftrace's prefixes (elf::split_probe_type): "uprobe:" says nothing more; "uretprobe:" makes
  // the built-in counter count returns.
  std::vector<std::string> specs(locations.size());
  std::vector<bool> uretprobe(specs.size(), false);
  for (size_t i = 0; i < specs.size(); ++i) {
    const elf::ProbeType type = elf::split_probe_type(locations[i]);
    specs[i] = type.location;
    uretprobe[i] = type.returns;
  }
  // Each location's sites: one for FILE:SYMBOL and its kin, one per note for a USDT probe (its
  // inlined copies), all under one link.
  std::vector<Result<std::vector<elf::ResolvedLocation>>> resolved(specs.size());
  {
    // The plain locations are resolved together, the USDT probes one by one. A batch without
    // USDT probes (most) passes its specs as they are, not copied.
    const bool any_usdt = std::any_of(specs.begin(), specs.end(),
                                      [](const std::string &s) { return elf::is_usdt_spec(s); });
    std::vector<std::string> plain;
    std::vector<size_t> plain_index;
    for (size_t i = 0; i < specs.size(); ++i) {
      if (any_usdt && elf::is_usdt_spec(specs[i])) {
        resolved[i] = elf::resolve_usdt(specs[i]);
        continue;
      }
      if (any_usdt) plain.push_back(specs[i]);
      plain_index.push_back(i);
    }
    auto r = elf::resolve_locations(any_usdt ? plain : specs);
    for (size_t k = 0; k < r.size(); ++k) {
      auto &into = resolved[plain_index[k]];
      if (r[k])
        into->push_back(std::move(*r[k]));  // a Result made by default holds an empty vector
      else
        into = std::unexpected(r[k].error());
    }
  }

  std::vector<std::function<void()>> garbage;
  {
    Locked lock;
    counters::reclaim_dead_threads();
    auto maps = refresh_mappings(lock, garbage);
    std::vector<Site *> pending;
    SiteIndex pending_index;
    std::unordered_map<Probe *, std::vector<ConsumerEntry>> added;
    added.reserve(locations.size());
    std::vector<std::pair<size_t, usprobe_link *>> made;
    // Each location's, emptied for the next (a batch of thousands: not three allocations each).
    std::vector<Probe *> group, placed_here;
    std::vector<const elf::ResolvedLocation *> sites;

    for (size_t i = 0; i < locations.size(); ++i) {
      if (!resolved[i]) {
        out[i] = std::unexpected(resolved[i].error());
        continue;
      }
      if (!maps) {
        out[i] = std::unexpected(maps.error());
        continue;
      }
      const usprobe_consumer consumer = consumer_of(i);
      const bool returns = uretprobe[i] || consumer.on_return;
      // The probes of this location's sites. Placing them is all or nothing: when one fails, the
      // sites the others got in this call are given up again (pending loses them).
      group.clear();
      placed_here.clear();
      const size_t pending_mark = pending.size();
      bool failed = false;
      auto give_up = [&](Error e) {
        failed = true;
        for (size_t k = pending_mark; k < pending.size(); ++k)
          pending_index.erase(pending[k]->addr);
        pending.resize(pending_mark);
        for (Probe *q : placed_here) q->sites.clear();
        out[i] = std::unexpected(std::move(e));
      };
      // Highest address first: where two sites of one USDT probe lie closer than a jump (a probe
      // inlined twice in a row), the lower one's window would cover the higher one, and placing the
      // higher one first makes the lower one step aside (place(): the int3 path), rather than fail.
      sites.clear();
      for (const elf::ResolvedLocation &loc : *resolved[i]) sites.push_back(&loc);
      std::sort(sites.begin(), sites.end(),
                [](auto *a, auto *b) { return a->file_offset > b->file_offset; });
      for (const elf::ResolvedLocation *site_loc : sites) {
        const elf::ResolvedLocation &loc = *site_loc;
        if (returns) {
          if (loc.usdt) {
            give_up(fail(EINVAL, fmt::format("{}: a USDT probe marks a point in the code, not a "
                                             "function: it has no return to probe",
                                             loc.describe()))
                        .error());
            break;
          }
          if (loc.func_size == 0 || loc.offset_in_function() != 0) {
            give_up(fail(EINVAL, fmt::format("{}: a return probe needs a function's entry, and "
                                             "this is not one",
                                             loc.describe()))
                        .error());
            break;
          }
          // The kernel enters the ELF entry point (_start) with argc at [rsp]: no return address
          // to take, and taking argc for one would break the program.
          if (loc.file->entry_offset() == loc.file_offset) {
            give_up(fail(EINVAL, fmt::format("{} is the file's entry point: it is entered, not "
                                             "called, so it has no return to probe",
                                             loc.describe()))
                        .error());
            break;
          }
          if (elf::returns_twice(*loc.file, loc.file_offset)) {
            give_up(fail(EINVAL, elf::returns_twice_refusal(loc.describe())).error());
            break;
          }
          if (auto ok = ensure_return_trampoline(lock); !ok) {
            give_up(ok.error());
            break;
          }
        }
        Key key{loc.file->id(), loc.file_offset};
        auto &slot_in_map = probes(lock)[key];
        bool created = !slot_in_map;
        if (created) {
          slot_in_map = std::make_unique<Probe>();
          slot_in_map->name = loc.describe();
          slot_in_map->file = key.first;
          slot_in_map->file_offset = key.second;
          // A USDT site is a point inside a function (its arguments are wherever the compiler
          // left them, callee-saved registers included): the instruction flavour, which saves
          // every register.
          slot_in_map->function_entry =
              !loc.usdt && loc.func_size != 0 && loc.offset_in_function() == 0;
          // Its trampolines' return path (Probe::return_path), for what this attach puts there.
          if (returns && consumer.on_entry && i < external.size() && external[i].timer.used)
            slot_in_map->return_path = Probe::kReturnTimerPath;
          else if (returns && !consumer.on_entry && i < external.size() && external[i].used &&
                   external[i].at_return)
            slot_in_map->return_path = Probe::kReturnExternalCounterPath;
          else if (returns && !consumer.on_entry && !consumer.on_return)
            slot_in_map->return_path = Probe::kReturnCounterPath;
        }
        Probe *p = slot_in_map.get();
        auto drop_created = [&] {
          if (created && p->plans.empty()) probes(lock).erase(key);
        };
        if (p->links.empty() && !added.count(p) &&
            std::find(group.begin(), group.end(), p) == group.end()) {
          // A probe without links has no sites. Its file may not be mapped yet: it then waits
          // for the dynamic linker (or usprobe_notify_mapping) to map it (follow_locked).
          p->sites.clear();
          p->follow_error.clear();
          placed_here.push_back(p);
          if (auto ok =
                  place(lock, p, loc, wanted_addresses(p, *maps), flags, pending, pending_index);
              !ok) {
            give_up(ok.error());  // before the probe may go: it clears the sites of placed_here
            drop_created();
            break;
          }
          if (p->sites.empty() && loc.file->is_program()) {
            give_up(fail(ENOENT, fmt::format("{}: {} is a program this process does not run "
                                             "(only a library can be loaded later)",
                                             loc.describe(), loc.file->path()))
                        .error());
            drop_created();
            break;
          }
          if (p->sites.empty() && !loader_hook_error().empty()) {
            // (drop_created below, once give_up has cleared the sites of placed_here)
            give_up(fail(ENOENT, fmt::format("{}: {} is not mapped in this process, and probes "
                                             "cannot wait for it: {}",
                                             loc.describe(), loc.file->path(), loader_hook_error()))
                        .error());
            drop_created();
            break;
          }
          p->location = std::make_shared<const elf::ResolvedLocation>(loc);
          p->place_flags = flags;
        }
        // Set once, before this attach publishes consumers that may read it (usprobe_usdt_arg).
        if (loc.usdt && !p->usdt.load(std::memory_order_relaxed)) {
          p->usdt_owner = loc.usdt;
          p->usdt.store(p->usdt_owner.get(), std::memory_order_release);
        }
        group.push_back(p);
      }
      if (failed) continue;
      auto slot = counters::alloc_slot();
      if (!slot) {
        give_up(fail(ENOSPC, fmt::format("{}: too many consumers", group.front()->name)).error());
        continue;
      }
      auto *link = new usprobe_link{group.front(), *slot, consumer, group};
      // An external counter counts entries alone, or returns alone (at_return: with its return
      // handler and no entry handler); a timer needs the return.
      const bool counts =
          i < external.size() &&
          (external[i].at_return
               ? returns && !consumer.on_entry && consumer.on_return && !external[i].timer.used
               : consumer.on_entry && returns == external[i].timer.used);
      const ExternalCounter counter = counts ? external[i] : ExternalCounter{};
      for (Probe *p : group)
        added[p].push_back({*slot, consumer.on_entry, consumer.user,
                            !(flags & USPROBE_GENERAL_REGS_ONLY), consumer.on_return, returns,
                            (flags & USPROBE_NO_REGS) != 0, counter});
      made.emplace_back(i, link);
    }

    // Consumers first, so that hits are counted from the first patched byte on.
    for (auto &[p, add] : added) {
      auto entries = entries_of(lock, p);
      entries.insert(entries.end(), add.begin(), add.end());
      publish(lock, p, std::move(entries), garbage);
    }
    auto installed = patcher::install(pending);
    note_patched(lock, pending);
    if (installed) adjust_semaphores(lock, pending, true);
    live_links(lock).reserve(live_links(lock).size() + made.size());
    for (auto &[i, link] : made) {
      if (!installed) {
        out[i] = std::unexpected(installed.error());
        continue;
      }
      for (Probe *p : link->probes) p->links.push_back(link);
      live_links(lock).insert(link);
      out[i] = link;
    }
    if (!installed) {
      // Should not happen (writes to our own memory); undo what was published.
      (void)patcher::remove(pending);
      note_patched(lock, pending);
      note_unpatched(lock, pending);
      bool counted = false;  // the counter path counted into them: they are kept (detach)
      for (auto &[p, add] : added) {
        auto entries = entries_of(lock, p);
        std::erase_if(entries, [&](const ConsumerEntry &e) {
          return std::any_of(add.begin(), add.end(), [&](auto &a) { return a.slot == e.slot; });
        });
        counted |= publish(lock, p, std::move(entries), garbage).stale();
      }
      for (auto &[i, link] : made) {
        uint32_t s = link->slot;
        delete link;
        if (!counted) garbage.emplace_back([s] { counters::free_slot(s); });
      }
    }
    for (auto &g : site_table::take_retired()) garbage.push_back(std::move(g));
    refresh_views(lock);
  }
  free_later(std::move(garbage), false);
  if (g_return_trampoline.load(std::memory_order_relaxed)) guard_unwinders();
  return out;
}

Result<void> detach(std::span<usprobe_link *const> links) {
  std::vector<std::function<void()>> garbage;
  uint64_t unpatched_before = 0;
  std::vector<usprobe_link *> gone;
  Result<void> result;
  {
    Locked lock;
    // All or nothing: a batch with a link that is not attached (detached already, twice in the
    // batch, or never returned by an attach) detaches none of them.
    {
      std::unordered_set<const usprobe_link *> seen;
      for (usprobe_link *l : links) {
        if (!l) continue;
        if (!live_links(lock).count(l))
          return fail(EINVAL, fmt::format("usprobe_detach: {} is not an attached link (detached "
                                          "already, or not returned by usprobe_attach)",
                                          static_cast<const void *>(l)));
        if (!seen.insert(l).second)
          return fail(EINVAL, fmt::format("usprobe_detach_batch: link {} is in the batch twice",
                                          static_cast<const void *>(l)));
      }
    }
    std::map<Probe *, std::vector<uint32_t>> removed;
    std::vector<uint32_t> freed_slots;
    for (usprobe_link *l : links) {
      if (!l) continue;
      live_links(lock).erase(l);
      for (Probe *p : l->probes) {
        auto &v = p->links;
        auto it = std::find(v.begin(), v.end(), l);
        if (it != v.end()) v.erase(it);
        removed[p].push_back(l->slot);
      }
      gone.push_back(l);
      freed_slots.push_back(l->slot);
    }
    // A site whose mapping went away without a word to usprobe (code unmapped by hand, no
    // usprobe_notify_mapping) is forgotten, not written: the original bytes would land on
    // whatever is mapped there now. Where the same file is mapped again at the same place, the
    // bytes written are the file's own.
    std::optional<FileMappings> by_file;
    if (std::any_of(removed.begin(), removed.end(),
                    [](const auto &kv) { return kv.first->links.empty(); }))
      if (auto m = refresh_mappings(lock, garbage)) by_file = std::move(*m);
    std::vector<Site *> unpatch, lost;
    std::vector<uint32_t> counted_slots;  // slots the counter path may still count into
    bool external_counted = false;        // and external counters
    std::vector<arch::WindowMove> counter_windows;
    for (auto &[p, slots] : removed) {
      auto entries = entries_of(lock, p);
      std::erase_if(entries, [&](const ConsumerEntry &e) {
        return std::find(slots.begin(), slots.end(), e.slot) != slots.end();
      });
      if (const Published was = publish(lock, p, std::move(entries), garbage); was.stale()) {
        if (was.engine_slot) counted_slots.push_back(was.slot);
        external_counted |= was.external;
        for (const auto &plan : p->plans)
          for (const arch::CounterWindow &w : plan->plan.counter_windows)
            if (w.length)
              counter_windows.push_back({w.start, w.length, w.start, w.map.data(), w.map.size()});
        for (const bool external : {false, true})
          if (const arch::CounterWindow *w = arch::counter_return_window(external);
              w && (external ? was.external : was.engine_slot))
            counter_windows.push_back(
                {w->start, w->length, w->start, w->map.data(), w->map.size()});
      }
      if (!p->links.empty()) continue;
      const std::vector<uint64_t> mapped =
          by_file ? wanted_addresses(p, *by_file) : std::vector<uint64_t>();
      for (Site *s : p->sites) {
        if (!s->patched) continue;
        const bool there =
            !by_file || std::find(mapped.begin(), mapped.end(), s->addr) != mapped.end();
        (there ? unpatch : lost).push_back(s);
      }
    }
    forget(lock, lost);
    adjust_semaphores(lock, unpatch, false);
    if (auto ok = patcher::remove(unpatch); !ok) result = ok;
    note_patched(lock, unpatch);
    note_unpatched(lock, unpatch);
    for (auto &g : site_table::take_retired()) garbage.push_back(std::move(g));
    refresh_views(lock);
    unpatched_before = unpatch_generation(lock);
    // A slot the counter path counted into is reused only once no thread can still increment it
    // with a word it read before (retire.h); otherwise it is kept, unused, for the process's life.
    // An external counter's memory is its owner's to keep in that case
    // (external_counters_maybe_in_use).
    if ((!counted_slots.empty() || external_counted) &&
        !retire::counter_windows_clear(counter_windows)) {
      std::erase_if(freed_slots, [&](uint32_t s) {
        return std::find(counted_slots.begin(), counted_slots.end(), s) != counted_slots.end();
      });
      if (external_counted) g_external_in_use.store(true, std::memory_order_relaxed);
    }
    for (uint32_t slot : freed_slots) garbage.emplace_back([slot] { counters::free_slot(slot); });
  }
  // After this grace period no thread runs (or will run) a handler of the detached consumers.
  rcu::synchronize();
  run(garbage);
  for (usprobe_link *l : gone) delete l;
  retire_idle(unpatched_before);
  return result;
}

bool external_counters_maybe_in_use() {
  return g_external_in_use.load(std::memory_order_relaxed);
}

namespace {

// How many of the links have probes, every one of which `every_probe` says yes to (the mutex held).
template <typename Pred>
size_t links_whose_probes(std::span<usprobe_link *const> links, Pred every_probe) {
  Locked lock;
  size_t n = 0;
  for (const usprobe_link *link : links)
    if (link && !link->probes.empty())
      n += std::all_of(link->probes.begin(), link->probes.end(), every_probe);
  return n;
}

}  // namespace

size_t on_counter_path(std::span<usprobe_link *const> links) {
  return links_whose_probes(links, [](const Probe *p) {
    return p->counter_word.load(std::memory_order_relaxed) != 0 &&
           p->return_path == Probe::kNoReturnPath && !p->sites.empty() &&
           std::all_of(p->sites.begin(), p->sites.end(),
                       [](const Site *s) { return s->plan.counter_windows[0].length != 0; });
  });
}

size_t on_return_path(std::span<usprobe_link *const> links) {
  return links_whose_probes(links, [](const Probe *p) {
    return p->external_return_word.load(std::memory_order_relaxed) != 0 &&
           p->return_path == Probe::kReturnExternalCounterPath && arch::return_paths() &&
           !p->sites.empty() && std::all_of(p->sites.begin(), p->sites.end(), [](const Site *s) {
             return s->plan.function_entry;
           });
  });
}

size_t timed_by_engine(std::span<usprobe_link *const> links) {
  return links_whose_probes(links, [](const Probe *p) {
    return p->fast_entry_handlers.load(std::memory_order_relaxed) == Probe::kTimedHandlers &&
           p->fast_return_handlers.load(std::memory_order_relaxed) == Probe::kTimedHandlers;
  });
}

Result<void> notify_mapping() {
  if (auto ok = init(); !ok) return ok;
  std::vector<std::function<void()>> garbage;
  Result<void> result;
  Listener listener;
  {
    Locked lock;
    result = follow_locked(lock, garbage);
    listener = internal::listener(lock);
  }
  // The trampolines of sites whose mappings went away are retired by a later detach.
  free_later(std::move(garbage), false);
  if (listener.fn) {
    InternalWork internal;
    listener.fn(listener.user);
  }
  return result;
}

void set_mapping_listener(void (*fn)(void *), void *user) {
  Locked lock;
  listener(lock) = {fn, user};
}

// A link on several probes (a USDT probe's sites) answers for all of them: every site counts, and
// an int3 site of any of them is the one reported (as Probe::path does for one probe's sites).

int site_count(const usprobe_link *link) {
  int n = 0;
  for (const Probe *p : link->probes) n += p->placed_sites.load(std::memory_order_relaxed);
  return n;
}

bool uses_int3(const usprobe_link *link) {
  return std::any_of(link->probes.begin(), link->probes.end(), [](const Probe *p) {
    return p->int3_reason.load(std::memory_order_acquire) != nullptr;
  });
}

const char *path(const usprobe_link *link) {
  // Acquire: pairs with refresh_views()' release store.
  const std::string *first = nullptr;
  for (const Probe *p : link->probes) {
    if (p->int3_reason.load(std::memory_order_acquire)) {
      const std::string *path = p->path.load(std::memory_order_acquire);
      if (path) return path->c_str();
    }
    if (!first) first = p->path.load(std::memory_order_acquire);
  }
  return first ? first->c_str() : "";
}

const char *int3_reason(const usprobe_link *link) {
  // Acquire: pairs with refresh_views()' release store.
  for (const Probe *p : link->probes)
    if (const std::string *why = p->int3_reason.load(std::memory_order_acquire))
      return why->c_str();
  return "";
}

const char *self_deadlock(bool waits_for_readers) {
  if (Locked::held_by_this_thread())
    return "called on a thread that is inside usprobe's registry (from a handler that runs inside "
           "an attach, a detach or a dlopen that usprobe follows), which would wait for itself; "
           "call it after the handler returns";
  const ThreadRecord *rec = t_thread.record;
  if (waits_for_readers && rec && rec->rcu_word.load(std::memory_order_relaxed) != 0)
    return "called from a handler (or a signal handler that interrupted one): detaching waits "
           "until no handler of the link runs, this one included, so it would wait for itself; "
           "detach after the handler returns";
  return nullptr;
}

}  // namespace usprobe::registry
