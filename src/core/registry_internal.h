// What the files of the registry share (registry.cc: attach and detach; consumer_array.cc,
// site_overlap.cc, site_placement.cc, mapping_refresh.cc, follow_loader.cc, reclamation.cc). Not
// for use outside them.
//
// The registry's mutex guards the probes (their sites, plans and links), the live links, the
// index of patched sites, the unpatch generation, the mapping listener, and every write of a
// probe's consumer array. A function that reads or writes any of these takes a `const Locked &`:
// the proof that its caller holds the mutex. Only a Locked can make one, so calling such a
// function without the lock does not compile (GCC cannot check Clang's -Wthread-safety; this it
// checks).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/arch.h"
#include "core/counters.h"
#include "core/os.h"
#include "core/probe.h"
#include "core/thread_record.h"
#include "elf/location.h"

namespace usprobe::registry::internal {

// Holds the registry's mutex for its lifetime (registry.cc). Everything the mutex guards is built
// on first use and never destroyed: trampolines have their Probe's address built in, and threads
// keep hitting patched sites until the process is gone (in exit handlers, in static destructors,
// on other threads); a map destroyed by exit() would turn those hits into use-after-free. Built
// on first use, not at load: the CLI's agent attaches from a constructor that may run before
// static initializers.
class Locked {
 public:
  Locked();
  ~Locked();
  Locked(const Locked &) = delete;
  Locked &operator=(const Locked &) = delete;

  // The dynamic linker's hook holds the mutex from RT_ADD/RT_DELETE to RT_CONSISTENT, across two
  // calls of the hook (follow_loader.cc): hold_across_calls() takes it, and a Locked made with
  // kTakeOver at RT_CONSISTENT proves it and lets it go.
  static void hold_across_calls();
  struct TakeOver {};
  static constexpr TakeOver kTakeOver{};
  explicit Locked(TakeOver);

  // Whether this thread holds the mutex. A run-time flag, not a Locked: a handler that runs while
  // its thread is inside the registry (it made the dynamic linker load something, or it was hit
  // inside an attach) has no Locked in hand, and must stand aside instead of waiting for itself
  // (self_deadlock(), on_loader_event).
  static bool held_by_this_thread();
};

using Key = std::pair<elf::FileId, uint64_t>;
// The probes by location, and every link that attach() returned and detach() has not freed yet
// (guarded by the mutex): detach looks a link up there before it touches it, so a link detached
// twice, or a pointer that never was one, is refused instead of followed.
std::map<Key, std::unique_ptr<Probe>> &probes(const Locked &);
std::unordered_set<const usprobe_link *> &live_links(const Locked &);

using Garbage = std::vector<std::function<void()>>;

// registry.cc
Result<void> init();
Result<void> ensure_return_trampoline(const Locked &lock);
void guard_unwinders();
void refresh_views(const Locked &lock);

// consumer_array.cc: a probe's consumers, published for dispatch.
// What the counter path may still count with after a publish (a word read before it).
struct Published {
  bool engine_slot = false;  // an old word named a slot of the engine's: `slot`
  uint32_t slot = 0;
  bool external = false;  // the old word named an external counter
  bool stale() const { return engine_slot || external; }
};
Published publish(const Locked &lock, Probe *p, std::vector<ConsumerEntry> entries,
                  Garbage &garbage);
std::vector<ConsumerEntry> entries_of(const Locked &lock, const Probe *p);

// site_overlap.cc: which sites a patch would overlap.
using SiteIndex = std::map<uint64_t, const Site *>;
void note_unpatched(const Locked &lock, const std::vector<Site *> &sites);
void note_patched(const Locked &lock, const std::vector<Site *> &sites);
uint64_t unpatch_generation(const Locked &lock);
uint64_t footprint(const arch::SitePlan &plan);
const Site *overlapping(const Locked &lock, uint64_t addr, uint64_t len, const SiteIndex &pending);
std::string site_owner(const Site *s);

// site_placement.cc: a probe's sites chosen and checked.
const std::string &forced_reason();
Result<Site *> plan_for(const Locked &lock, Probe *p, const elf::ResolvedLocation &loc,
                        uint64_t addr, bool forced);
Result<void> place(const Locked &lock, Probe *p, const elf::ResolvedLocation &loc,
                   const std::vector<uint64_t> &addrs, unsigned flags, std::vector<Site *> &pending,
                   SiteIndex &pending_index);
void adjust_semaphores(const Locked &lock, const std::vector<Site *> &sites, bool raise);

// mapping_refresh.cc: probes brought in line with the process's mappings.
using FileMappings = std::map<elf::FileId, std::vector<os::Mapping>>;
Result<FileMappings> refresh_mappings(const Locked &lock, Garbage &garbage);
std::vector<uint64_t> wanted_addresses(const Probe *p, const FileMappings &by_file);
void forget(const Locked &lock, const std::vector<Site *> &lost);
Result<void> follow_locked(const Locked &lock, Garbage &garbage);
// usprobe_on_mapping_change's listener: the function and its argument, replaced together under
// the mutex and read under it (a copy is called after the lock is released).
struct Listener {
  void (*fn)(void *) = nullptr;
  void *user = nullptr;
};
Listener &listener(const Locked &lock);

// follow_loader.cc: the dynamic linker's hook.
std::string &loader_hook_error();
void ensure_loader_hook();

// reclamation.cc: what writers leave behind, freed when no thread can use it.
void run(Garbage &garbage);
void free_later(Garbage garbage, bool self_quiescent);
void retire_idle(uint64_t unpatched_before);

// While usprobe's own work runs on this thread inside a handler, the probed functions it calls
// (libc's, under `usprobe count 'libc:*'`) are not the program's calls: neither counted nor missed.
class InternalWork {
 public:
  InternalWork() : rec_(current_record()) {
    if (!rec_) return;
    saved_ = t_thread.returns.depth.load(std::memory_order_relaxed);
    t_thread.returns.depth.store(kDepthInternal, std::memory_order_relaxed);
  }
  ~InternalWork() {
    if (rec_) t_thread.returns.depth.store(saved_, std::memory_order_relaxed);
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

}  // namespace usprobe::registry::internal
