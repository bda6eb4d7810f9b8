// Following the dynamic linker.
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
// mappings (follow_locked) and lets go. Lock order: the linker's lock, then the registry's mutex.
// Nothing that holds the registry's mutex calls into the dynamic linker (symbol resolution, IFUNCs
// and dlopen happen before attach() takes it); where it would, on this thread, the hook stands
// aside (Locked::held_by_this_thread()).
#include "core/registry_internal.h"

#include <link.h>

#include <atomic>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "core/registry.h"

namespace usprobe::registry::internal {
namespace {

// Set while this thread holds the registry's mutex on the linker's behalf, from RT_ADD/RT_DELETE
// until RT_CONSISTENT.
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

// What the linker has loaded, every namespace's objects in list order: a follow that finds the
// same list as the last one has nothing to do (a dlopen of a loaded library, RTLD_NOLOAD, or a
// dlclose that unloads nothing: each calls the hook all the same). An object unloaded and loaded
// again in between shows as two changes, each at its own RT_CONSISTENT.
using LoadedList = std::vector<std::tuple<const link_map *, uint64_t, const char *, const void *>>;
LoadedList loaded_list() {
  LoadedList out;
  const r_debug *r = &_r_debug;
  for (int guard = 0; guard < 64; ++guard) {
    for (const link_map *m = r->r_map; m && out.size() < 65536; m = m->l_next)
      out.emplace_back(m, m->l_addr, m->l_name, m->l_ld);
    if (r->r_version < 2) break;
    const r_debug_extended *next = reinterpret_cast<const r_debug_extended *>(r)->r_next;
    if (!next || &next->base == &_r_debug) break;
    r = &next->base;
    out.emplace_back(nullptr, 0, nullptr, nullptr);  // between namespaces
  }
  return out;
}

// The list as the last follow saw it.
LoadedList &followed(const Locked &) {
  static auto *list = new LoadedList;  // never destroyed: hooks may fire during exit
  return *list;
}

void on_loader_event(usprobe_hit *, void *) {
  InternalWork internal;
  // This thread is inside the registry itself (it made the linker load something): nothing can be
  // done here, and waiting for the mutex would wait for ourselves.
  if (Locked::held_by_this_thread() && !t_loader_change) return;
  if (!loader_consistent()) {
    if (!t_loader_change) {
      Locked::hold_across_calls();
      t_loader_change = true;
    }
    return;
  }
  if (!t_loader_change) Locked::hold_across_calls();
  t_loader_change = false;
  std::vector<std::function<void()>> garbage;
  Listener copy;
  {
    Locked lock(Locked::kTakeOver);
    LoadedList now = loaded_list();
    if (now == followed(lock)) return;
    (void)follow_locked(lock, garbage);
    followed(lock).swap(now);
    copy = listener(lock);
  }
  if (copy.fn) copy.fn(copy.user);
  // This thread is inside a read section (dispatch's) and other threads' read sections may wait
  // for the linker's lock it holds: free later, without waiting (rcu::defer).
  free_later(std::move(garbage), /*self_quiescent=*/true);
}

}  // namespace

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
  // Through the linker's link map first: a launched command's every process places this probe, and
  // reading /proc/self/maps costs more than the rest of it.
  if (auto object = os::loaded_object_at(brk))
    if (auto file = elf::ElfFile::open(object->path))
      if (auto off = (*file)->vaddr_to_offset(brk - object->bias);
          off && (*file)->offset_is_executable(*off))
        where = fmt::format("{}:{:#x}", object->path, *off);
  if (where.empty())
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
  // No other probe exists yet (this is the first attach): what is loaded now has nothing to follow.
  Locked lock;
  followed(lock) = loaded_list();
}

}  // namespace usprobe::registry::internal
