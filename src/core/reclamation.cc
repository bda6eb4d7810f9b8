// What the registry's writers leave behind (old consumer arrays and mapping tables, unpatched
// trampolines, probes without links), freed when no thread can still use it.
#include "core/registry_internal.h"

#include <algorithm>

#include "core/code_space.h"
#include "core/rcu.h"
#include "core/retire.h"

namespace usprobe::registry::internal {

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

// Free the trampolines unpatched up to `unpatched_before` (a grace period has passed since) that no
// thread can still use (core/retire.h), and the probes left with no links and no trampolines.
// Trampolines still in use stay for a later detach to try again.
void retire_idle(uint64_t unpatched_before) {
  Locked lock;
  std::vector<std::pair<Probe *, Site *>> plans;
  std::vector<retire::Range> code;
  std::vector<const Probe *> unlinked;
  for (auto &[key, p] : probes(lock)) {
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
    arch::release_trampoline(s->plan, code_space());
    std::erase(p->sites, s);
    std::erase_if(p->plans, [s = s](const std::unique_ptr<Site> &x) { return x.get() == s; });
  }
  std::erase_if(probes(lock), [](const auto &kv) {
    return kv.second->links.empty() && kv.second->plans.empty();
  });
  refresh_views(lock);
}

}  // namespace usprobe::registry::internal
