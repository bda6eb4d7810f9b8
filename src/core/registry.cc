#include "core/registry.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_set>

#include <link.h>

#include <fmt/format.h>

#include "core/counters.h"
#include "core/mapping_table.h"
#include "core/os.h"
#include "core/patcher.h"
#include "core/rcu.h"
#include "core/retire.h"
#include "core/site_analysis.h"
#include "core/site_table.h"
#include "elf/location.h"

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
  uint32_t entry_handlers = 0, return_handlers = 0, returns = 0;
  for (uint32_t i = 0; i < a->count; ++i) {
    const ConsumerEntry &e = v[i];
    if (e.on_entry) {
      ++entry_handlers;
      a->entry_handler = i;
      a->entry_session = e.count_returns;
    }
    if (e.on_return) {
      ++return_handlers;
      a->return_handler = i;
    }
    if (!e.count_returns) continue;
    ++returns;
    if (a->return_sessions == kMaxSessions) {
      a->return_overflow = true;
    } else {
      a->return_template[a->return_sessions++] = {e.slot, 0, {}};
    }
  }
  a->simple_handlers = entry_handlers <= 1 && return_handlers <= 1 && returns <= 1 &&
                       entry_handlers + return_handlers > 0;
  if (!a->simple_handlers) a->entry_handler = a->return_handler = kNoHandler;
  a->single_entry_callback = v.size() == 1 && v[0].on_entry != nullptr && !v[0].count_returns;
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
// Whether this thread holds g_mutex: the dynamic linker's hook (on_loader_event) must not wait for
// it on a thread that took it and then, somewhere below, made the dynamic linker load something.
constinit thread_local bool t_holding = false;
class Locked {
 public:
  Locked() : lock_(g_mutex) { t_holding = true; }
  ~Locked() { t_holding = false; }
  Locked(const Locked &) = delete;
  Locked &operator=(const Locked &) = delete;

 private:
  std::lock_guard<std::mutex> lock_;
};
std::map<Key, std::unique_ptr<Probe>> &probes() {
  static auto *map = new std::map<Key, std::unique_ptr<Probe>>;
  return *map;
}
// Every link that attach() returned and detach() has not freed yet (guarded by g_mutex): detach
// looks a link up here before it touches it, so a link detached twice, or a pointer that never was
// one, is refused instead of followed.
std::unordered_set<const usprobe_link *> &live_links() {
  static auto *set = new std::unordered_set<const usprobe_link *>;
  return *set;
}
const std::string &forced_reason() {
  static const auto *s = new std::string("the int3 path was asked for (USPROBE_FORCE_INT3)");
  return *s;
}

Result<void> init() {
  static Result<void> result = []() -> Result<void> {
    if (auto ok = os::membarrier_init(); !ok) return ok;
    return arch::install_trap_handler(site_table::redirect);
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
  for (auto [fn, kind] :
       {std::pair{"libc:swapcontext", kSwapContext}, std::pair{"libc:setcontext", kSetContext}}) {
    const usprobe_consumer guard{note_context_switch, kind, nullptr};
    const std::string where[] = {fn};
    (void)attach(where, std::span(&guard, 1), USPROBE_GENERAL_REGS_ONLY);
  }
}

// Brings what the lock-free queries read (Probe::placed_sites, Probe::int3_reason) in line with
// every probe's sites. Called by each writer before it lets go of g_mutex.
void refresh_views() {
  for (auto &[key, up] : probes()) {
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
    p->path.store(intern(path), std::memory_order_release);
  }
}

// Replace a probe's consumer array; the old one goes to `garbage`. Returns whether the counter
// path may still count into an engine slot it counted into before (it did, and counts no more, or
// into another): a slot of those that is freed must wait for retire::counter_windows_clear. An
// external counter's owner keeps its counters as long as its threads may count into them.
bool publish(Probe *p, std::vector<ConsumerEntry> entries,
             std::vector<std::function<void()>> &garbage) {
  const ConsumerArray *next = entries.empty() ? nullptr : ConsumerArray::make(entries);
  uint64_t word = 0;
  bool external = false;
  if (next && next->count == 1 && !next->has_returns) {
    const ConsumerEntry &e = next->entries[0];
    if (e.external_counter) {
      word = counter_word_at(e.external_offset);
      external = true;
    } else if (!next->has_callbacks && !counter_path_is_external()) {
      word = counter_word(e.slot);
    }
  }
  // Off before the array changes (relaxed: the exchange's release orders it first; a thread that
  // read the word before counts a hit that the old array's consumer would count too), on once the
  // new array is published.
  const uint64_t old_word = p->counter_word.load(std::memory_order_relaxed);
  if (old_word != word) p->counter_word.store(0, std::memory_order_relaxed);
  // The trampoline's hint first when callbacks arrive, last when they go; a trampoline that reads
  // it stale is corrected by dispatch (kDispatchNeedsVectorSave).
  if (next && next->wants_vector_state) p->wants_vector_state.store(1, std::memory_order_relaxed);
  // Release: dispatch's acquire load sees a fully built array.
  const ConsumerArray *old = p->consumers.exchange(next, std::memory_order_acq_rel);
  if (!next || !next->wants_vector_state) p->wants_vector_state.store(0, std::memory_order_relaxed);
  p->no_entry_handlers.store(!next || !next->has_callbacks, std::memory_order_relaxed);
  p->single_entry_callback.store(next && next->single_entry_callback, std::memory_order_relaxed);
  const bool old_external = p->counter_word_external;
  p->counter_word_external = external;
  if (word != old_word) p->counter_word.store(word, std::memory_order_relaxed);
  if (old) garbage.emplace_back([old] { ConsumerArray::destroy(old); });
  return old_word != 0 && old_word != word && !old_external;
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

// Counts unpatches (guarded by g_mutex): Site::idle_since.
uint64_t g_unpatch_gen = 0;

void note_unpatched(const std::vector<Site *> &sites) {
  for (Site *s : sites)
    if (!s->patched) s->idle_since = ++g_unpatch_gen;
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

// The bytes from a site on that its patch writes or relies on (a punned jump borrows the bytes
// after its window): no other probe may write there.
uint64_t footprint(const arch::SitePlan &plan) {
  return std::max<uint64_t>({plan.window_length, plan.jump ? plan.footprint : 0, 1});
}

const Site *overlapping_in(const SiteIndex &index, uint64_t addr, uint64_t len) {
  for (auto it = index.lower_bound(addr > kMaxWindow ? addr - kMaxWindow : 0);
       it != index.end() && it->first < addr + len; ++it) {
    const Site *s = it->second;
    if (addr < s->addr + footprint(s->plan)) return s;
  }
  return nullptr;
}

// Every site (patched or about to be) whose window overlaps [addr, addr + len).
const Site *overlapping(uint64_t addr, uint64_t len, const SiteIndex &pending) {
  if (const Site *s = overlapping_in(pending, addr, len)) return s;
  return overlapping_in(g_patched(), addr, len);
}

std::string site_owner(const Site *s) {
  return s->owner ? s->owner->name : fmt::format("{:#x}", s->addr);
}

// Make (or reuse) the sites of probe `p` for the current mappings. New sites go to `pending`.
// The site plan of `p` at `addr` for one path (natural: whatever analysis chose; or a forced
// int3), made once and kept: its trampoline stays valid for threads that may still be in it.
Result<Site *> plan_for(Probe *p, const elf::ResolvedLocation &loc, uint64_t addr, bool forced) {
  for (auto &s : p->plans)
    if (s->addr == addr && s->forced_int3 == forced) return s.get();
  auto req = site_request(loc, addr);  // core/site_analysis.h: what a report says it would do
  if (!req) return std::unexpected(req.error());
  req->probe = p;
  req->describe = p->name;
  req->force_int3 = forced;
  req->force_reason = forced_reason();
  auto plan = arch::prepare_site(*req);
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

// The executable mappings of each file, from the mapping table's latest snapshot.
using FileMappings = std::map<elf::FileId, std::vector<os::Mapping>>;

// Read /proc/self/maps into the process's mapping table (the old table's deleter goes to
// `garbage`) and group its executable file mappings by file.
Result<FileMappings> refresh_mappings(std::vector<std::function<void()>> &garbage) {
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

// Choose the sites of probe `p` at `addrs` (addresses where its location is mapped and it has no
// site yet) and check them against every other patched or pending site. The chosen sites are
// appended to p->sites and to `pending`.
Result<void> place(Probe *p, const elf::ResolvedLocation &loc, const std::vector<uint64_t> &addrs,
                   unsigned flags, std::vector<Site *> &pending, SiteIndex &pending_index) {
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
    else if (site->plan.jump && overlapping(addr, footprint(site->plan), pending_index))
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
void adjust_semaphores(const std::vector<Site *> &sites, bool raise) {
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

// Sites whose memory is gone (their library was unmapped) leave their probe without a write: the
// site table and the index of patched sites forget them. Their trampolines stay (Lifetimes).
void forget(const std::vector<Site *> &lost) {
  if (lost.empty()) return;
  std::vector<uint64_t> addrs;
  for (Site *s : lost) {
    s->patched = false;
    s->semaphore_raised = false;  // gone with its mapping
    addrs.push_back(s->addr);
  }
  for (auto &[key, p] : probes())
    std::erase_if(p->sites,
                  [&](Site *s) { return std::find(lost.begin(), lost.end(), s) != lost.end(); });
  site_table::remove(addrs);
  note_patched(lost);
  note_unpatched(lost);
}

// Bring every attached probe in line with the mappings (g_mutex held; blocks, but never waits for
// a grace period: the dynamic linker's hook calls it from inside a read section). Sites of
// mappings that went away are forgotten; mappings of a probed file that appeared get sites.
// Placement problems are kept per probe (Probe::follow_error), not returned.
Result<void> follow_locked(std::vector<std::function<void()>> &garbage) {
  auto by_file = refresh_mappings(garbage);
  if (!by_file) return std::unexpected(by_file.error());
  std::vector<Site *> lost;
  std::vector<std::pair<Probe *, std::vector<uint64_t>>> missing;
  for (auto &[key, up] : probes()) {
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
  forget(lost);
  std::vector<Site *> pending;
  SiteIndex pending_index;
  for (auto &[p, addrs] : missing) {
    auto ok = place(p, *p->location, addrs, p->place_flags, pending, pending_index);
    p->follow_error = ok ? std::string() : ok.error().message;
  }
  auto installed = patcher::install(pending);
  if (installed) adjust_semaphores(pending, true);
  if (!installed) {
    (void)patcher::remove(pending);
    for (auto &[p, addrs] : missing) {
      std::erase_if(p->sites, [&](Site *s) { return !s->patched; });
      p->follow_error = installed.error().message;
    }
  }
  note_patched(pending);
  for (auto &g : site_table::take_retired()) garbage.push_back(std::move(g));
  refresh_views();
  return {};
}

void run(std::vector<std::function<void()>> &garbage) {
  for (auto &g : garbage) g();
  garbage.clear();
}

// Old tables and consumer arrays of a writer that promises nothing about when they go (attach, the
// dynamic linker's hook, usprobe_notify_mapping): freed after a grace period, a batch at a time,
// so that a program that loads libraries (or attaches) often does not interrupt every running
// thread twice per change (rcu::reclaim's membarriers). Detach, whose caller is promised that no
// handler runs once it returns, waits for its grace period instead.
constexpr size_t kDeferredBatch = 32;
void free_later(std::vector<std::function<void()>> garbage, bool self_quiescent) {
  if (!garbage.empty())
    rcu::defer([g = std::move(garbage)]() mutable {
      for (auto &f : g) f();
    });
  if (rcu::pending() >= kDeferredBatch) rcu::reclaim(self_quiescent);
}

// --- Following the dynamic linker ---
//
// The dynamic linker calls the function at _r_debug.r_brk (_dl_debug_state, a lone `ret`) with
// r_state = RT_ADD before it maps objects, RT_DELETE before it unmaps them, and RT_CONSISTENT once
// the namespace is whole again: after a dlopen's objects are mapped and before they are relocated
// and their initializers run, so before dlopen returns; after a dlclose's objects are gone.
// Debuggers put a breakpoint there; usprobe puts an entry probe there (on_loader_event).
//
// At RT_ADD and RT_DELETE the hook takes the registry's mutex and keeps it until RT_CONSISTENT:
// while the linker changes the address space, no attach or detach reads a mapping list that is
// going stale or writes code that is being unmapped (or worse, writes a removed probe's bytes over
// whatever was mapped in its place). At RT_CONSISTENT it brings every probe in line with the new
// mappings (follow_locked) and lets go. Lock order: the linker's lock, then g_mutex. Nothing that
// holds g_mutex calls into the dynamic linker (symbol resolution, IFUNCs and dlopen happen before
// attach() takes it); where it would, on this thread, the hook stands aside (t_holding).

// usprobe_on_mapping_change's listener: the function and its argument, replaced together under
// g_mutex and read under it (a copy is called after the lock is released).
struct Listener {
  void (*fn)(void *) = nullptr;
  void *user = nullptr;
};
Listener g_listener;  // guarded by g_mutex

// Set while this thread holds g_mutex on the linker's behalf, from RT_ADD/RT_DELETE until
// RT_CONSISTENT.
constinit thread_local bool t_loader_change = false;

// Whether every link-map namespace is consistent (glibc >= 2.35 chains one r_debug per namespace
// through r_next when r_version >= 2).
bool loader_consistent() {
  const r_debug *r = &_r_debug;
  for (int guard = 0; guard < 64; ++guard) {
    if (r->r_state != r_debug::RT_CONSISTENT) return false;
    if (r->r_version < 2) break;
    const r_debug_extended *next = reinterpret_cast<const r_debug_extended *>(r)->r_next;
    if (!next || &next->base == &_r_debug) break;
    r = &next->base;
  }
  return true;
}

// While usprobe's own work runs on this thread inside a handler, the probed functions it calls
// (libc's, under `usprobe count 'libc:*'`) are not the program's calls: neither counted nor missed.
class InternalWork {
 public:
  InternalWork() : rec_(current_record()) {
    if (!rec_) return;
    saved_ = rec_->depth.load(std::memory_order_relaxed);
    rec_->depth.store(kDepthInternal, std::memory_order_relaxed);
  }
  ~InternalWork() {
    if (rec_) rec_->depth.store(saved_, std::memory_order_relaxed);
  }
  InternalWork(const InternalWork &) = delete;
  InternalWork &operator=(const InternalWork &) = delete;

 private:
  ThreadRecord *rec_;
  uint32_t saved_ = 0;
  // Made after the record (a first registration turns the counter path on), undone after the
  // depth is restored (members go after the destructor's body), as handler sections do.
  CounterPathOff counter_path_off_;
};

void on_loader_event(usprobe_hit *, void *) {
  InternalWork internal;
  // This thread is inside the registry itself (it made the linker load something): nothing can be
  // done here, and waiting for g_mutex would wait for ourselves.
  if (t_holding && !t_loader_change) return;
  if (!loader_consistent()) {
    if (!t_loader_change) {
      g_mutex.lock();
      t_holding = t_loader_change = true;
    }
    return;
  }
  if (!t_loader_change) {
    g_mutex.lock();
    t_holding = true;
  }
  t_loader_change = false;
  std::vector<std::function<void()>> garbage;
  (void)follow_locked(garbage);
  const Listener listener = g_listener;
  t_holding = false;
  g_mutex.unlock();
  if (listener.fn) listener.fn(listener.user);
  // This thread is inside a read section (dispatch's) and other threads' read sections may wait
  // for the linker's lock it holds: free later, without waiting (rcu::defer).
  free_later(std::move(garbage), /*self_quiescent=*/true);
}

// Why probes cannot follow the dynamic linker in this process (empty when they can).
std::string &loader_hook_error() {
  static auto *s = new std::string("the dynamic linker's hook is not placed yet");
  return *s;
}

// The entry probe on the linker's hook, placed by the first attach (before that attach's own
// probes, so that no dlopen between the two is missed).
void ensure_loader_hook() {
  static std::atomic<bool> placed{false};
  if (placed.exchange(true)) return;
  const uint64_t brk = _r_debug.r_brk;
  std::string where;
  if (auto maps = os::read_mappings())
    for (const os::Mapping &m : *maps)
      if (brk >= m.start && brk < m.end && !m.path.empty() && m.path.front() == '/')
        where = fmt::format("{}:{:#x}", m.path, brk - m.start + m.offset);
  if (where.empty()) {
    loader_hook_error() = fmt::format(
        "the dynamic linker's debugger hook (_r_debug.r_brk = {:#x}) is in no mapped file", brk);
    return;
  }
  const usprobe_consumer hook{on_loader_event, nullptr, nullptr};
  auto r = attach(std::span(&where, 1), std::span(&hook, 1));
  loader_hook_error() = r[0] ? std::string() : r[0].error().message;
}

// Free the trampolines unpatched up to `unpatched_before` (a grace period has passed since) that no
// thread can still use (core/retire.h), and the probes left with no links and no trampolines.
// Trampolines still in use stay for a later detach to try again.
void retire_idle(uint64_t unpatched_before) {
  Locked lock;
  std::vector<std::pair<Probe *, Site *>> plans;
  std::vector<retire::Range> code;
  std::vector<const Probe *> unlinked;
  for (auto &[key, p] : probes()) {
    const bool linked = !p->links.empty();
    for (auto &s : p->plans) {
      if (s->patched || s->idle_since > unpatched_before) continue;
      if (linked && std::find(p->sites.begin(), p->sites.end(), s.get()) != p->sites.end())
        continue;
      plans.emplace_back(p.get(), s.get());
      code.emplace_back(s->plan.trampoline, s->plan.trampoline + s->plan.trampoline_size);
      if (s->plan.stub) code.emplace_back(s->plan.stub, s->plan.stub + s->plan.stub_size);
    }
    if (!linked) unlinked.push_back(p.get());
  }
  if (plans.empty() || !retire::idle(code, unlinked)) return;
  for (auto &[p, s] : plans) {
    arch::release_trampoline(s->plan);
    std::erase(p->sites, s);
    std::erase_if(p->plans, [s = s](const std::unique_ptr<Site> &x) { return x.get() == s; });
  }
  std::erase_if(probes(), [](const auto &kv) {
    return kv.second->links.empty() && kv.second->plans.empty();
  });
  refresh_views();
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
    std::vector<std::string> plain;
    std::vector<size_t> plain_index;
    for (size_t i = 0; i < specs.size(); ++i) {
      if (elf::is_usdt_spec(specs[i])) {
        resolved[i] = elf::resolve_usdt(specs[i]);
      } else {
        plain.push_back(specs[i]);
        plain_index.push_back(i);
      }
    }
    auto r = elf::resolve_locations(plain);
    for (size_t k = 0; k < r.size(); ++k) {
      auto &into = resolved[plain_index[k]];
      if (r[k])
        into = std::vector<elf::ResolvedLocation>{std::move(*r[k])};
      else
        into = std::unexpected(r[k].error());
    }
  }

  std::vector<std::function<void()>> garbage;
  {
    Locked lock;
    counters::reclaim_dead_threads();
    auto maps = refresh_mappings(garbage);
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
      const usprobe_consumer consumer = consumer_of(i);
      const bool returns = uretprobe[i] || consumer.on_return;
      // The probes of this location's sites. Placing them is all or nothing: when one fails, the
      // sites the others got in this call are given up again (pending loses them).
      std::vector<Probe *> group;
      std::vector<Probe *> placed_here;
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
      std::vector<const elf::ResolvedLocation *> sites;
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
          if (auto ok = ensure_return_trampoline(); !ok) {
            give_up(ok.error());
            break;
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
          // A USDT site is a point inside a function (its arguments are wherever the compiler
          // left them, callee-saved registers included): the instruction flavour, which saves
          // every register.
          slot_in_map->function_entry =
              !loc.usdt && loc.func_size != 0 && loc.offset_in_function() == 0;
        }
        Probe *p = slot_in_map.get();
        auto drop_created = [&] {
          if (created && p->plans.empty()) probes().erase(key);
        };
        if (p->links.empty() && !added.count(p) &&
            std::find(group.begin(), group.end(), p) == group.end()) {
          // A probe without links has no sites. Its file may not be mapped yet: it then waits
          // for the dynamic linker (or usprobe_notify_mapping) to map it (follow_locked).
          p->sites.clear();
          p->follow_error.clear();
          placed_here.push_back(p);
          if (auto ok = place(p, loc, wanted_addresses(p, *maps), flags, pending, pending_index);
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
      for (Probe *p : group)
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
    if (installed) adjust_semaphores(pending, true);
    for (auto &[i, link] : made) {
      if (!installed) {
        out[i] = std::unexpected(installed.error());
        continue;
      }
      for (Probe *p : link->probes) p->links.push_back(link);
      live_links().insert(link);
      out[i] = link;
    }
    if (!installed) {
      // Should not happen (writes to our own memory); undo what was published.
      (void)patcher::remove(pending);
      note_patched(pending);
      note_unpatched(pending);
      bool counted = false;  // the counter path counted into them: they are kept (detach)
      for (auto &[p, add] : added) {
        auto entries = entries_of(p);
        std::erase_if(entries, [&](const ConsumerEntry &e) {
          return std::any_of(add.begin(), add.end(), [&](auto &a) { return a.slot == e.slot; });
        });
        counted |= publish(p, std::move(entries), garbage);
      }
      for (auto &[i, link] : made) {
        uint32_t s = link->slot;
        delete link;
        if (!counted) garbage.emplace_back([s] { counters::free_slot(s); });
      }
    }
    for (auto &g : site_table::take_retired()) garbage.push_back(std::move(g));
    refresh_views();
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
        if (!live_links().count(l))
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
      live_links().erase(l);
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
      if (auto m = refresh_mappings(garbage)) by_file = std::move(*m);
    std::vector<Site *> unpatch, lost;
    std::vector<uint32_t> counted_slots;  // slots the counter path may still count into
    std::vector<arch::WindowMove> counter_windows;
    for (auto &[p, slots] : removed) {
      auto entries = entries_of(p);
      std::erase_if(entries, [&](const ConsumerEntry &e) {
        return std::find(slots.begin(), slots.end(), e.slot) != slots.end();
      });
      if (const uint64_t word = p->counter_word.load(std::memory_order_relaxed);
          publish(p, std::move(entries), garbage)) {
        counted_slots.push_back(counter_word_slot(word));
        for (const auto &plan : p->plans)
          if (plan->plan.counter_window_length)
            counter_windows.push_back({plan->plan.counter_window, plan->plan.counter_window_length,
                                       plan->plan.counter_window,
                                       plan->plan.counter_window_map.data(),
                                       plan->plan.counter_window_map.size()});
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
    forget(lost);
    adjust_semaphores(unpatch, false);
    if (auto ok = patcher::remove(unpatch); !ok) result = ok;
    note_patched(unpatch);
    note_unpatched(unpatch);
    for (auto &g : site_table::take_retired()) garbage.push_back(std::move(g));
    refresh_views();
    unpatched_before = g_unpatch_gen;
    // A slot the counter path counted into is reused only once no thread can still increment it
    // with a word it read before (retire.h); otherwise it is kept, unused, for the process's life.
    if (!counted_slots.empty() && !retire::counter_windows_clear(counter_windows))
      std::erase_if(freed_slots, [&](uint32_t s) {
        return std::find(counted_slots.begin(), counted_slots.end(), s) != counted_slots.end();
      });
    for (uint32_t slot : freed_slots) garbage.emplace_back([slot] { counters::free_slot(slot); });
  }
  // After this grace period no thread runs (or will run) a handler of the detached consumers.
  rcu::synchronize();
  run(garbage);
  for (usprobe_link *l : gone) delete l;
  retire_idle(unpatched_before);
  return result;
}

Result<bool> count_on_counter_path(usprobe_link *link, uint32_t offset) {
  std::vector<std::function<void()>> garbage;
  bool everywhere = !link->probes.empty();
  {
    Locked lock;
    if (!live_links().count(link))
      return fail(EINVAL, "count_on_counter_path: the link is not attached");
    for (Probe *p : link->probes) {
      auto entries = entries_of(p);
      for (ConsumerEntry &e : entries)
        if (e.slot == link->slot) e.external_counter = true, e.external_offset = offset;
      publish(p, std::move(entries), garbage);
      everywhere &= p->counter_word.load(std::memory_order_relaxed) != 0 && !p->sites.empty() &&
                    std::all_of(p->sites.begin(), p->sites.end(),
                                [](const Site *s) { return s->plan.counter_window_length != 0; });
    }
  }
  free_later(std::move(garbage), false);
  return everywhere;
}

Result<void> notify_mapping() {
  if (auto ok = init(); !ok) return ok;
  std::vector<std::function<void()>> garbage;
  Result<void> result;
  Listener listener;
  {
    Locked lock;
    result = follow_locked(garbage);
    listener = g_listener;
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
  g_listener = {fn, user};
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
  if (t_holding)
    return "called on a thread that is inside usprobe's registry (from a handler that runs inside "
           "an attach, a detach or a dlopen that usprobe follows), which would wait for itself; "
           "call it after the handler returns";
  const ThreadRecord *rec = t_record;
  if (waits_for_readers && rec && rec->rcu_word.load(std::memory_order_relaxed) != 0)
    return "called from a handler (or a signal handler that interrupted one): detaching waits "
           "until no handler of the link runs, this one included, so it would wait for itself; "
           "detach after the handler returns";
  return nullptr;
}

}  // namespace registry
}  // namespace usprobe
