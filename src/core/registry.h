// The probe registry: attach and detach transactions. Probes are keyed by location (file identity,
// file offset), so a second consumer on a probed location reuses its patch, and the patch goes when
// the last link is detached. Batches patch many sites with one round of syncs.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "base/error.h"
#include "core/probe.h"

namespace usprobe::registry {

// One result per location, in order. `consumers`: empty (built-in counter only), one for every
// location, or one per location. flags: USPROBE_FORCE_INT3, USPROBE_GENERAL_REGS_ONLY.
// `external`: empty, or one per location (its consumer's on_entry set; a return probe exactly when
// it is a timer), published with the consumers, before the first patched byte: no second
// publication of each probe.
std::vector<Result<usprobe_link *>> attach(std::span<const std::string> locations,
                                           std::span<const usprobe_consumer> consumers,
                                           unsigned flags = 0,
                                           std::span<const ExternalCounter> external = {});
// When this returns, no handler of these links runs or will run; the links are freed. Null entries
// are skipped; a link that is not attached fails the whole batch (EINVAL), detaching none.
Result<void> detach(std::span<usprobe_link *const> links);

// How many of the links count on the counter path at every site (each site a function's entry,
// the link's consumer alone at its probe, counting into the engine's counter or an external one).
// Null entries are skipped.
size_t on_counter_path(std::span<usprobe_link *const> links);
// How many of the links count their returns on the return path at every site (each site a
// function's entry whose trampoline has it, the link's consumer an external return counter alone
// at its probe: core/probe.h, ExternalCounter::at_return). Null entries are skipped.
size_t on_return_path(std::span<usprobe_link *const> links);
// How many of the links are timed by the engine wherever the thread's home allows (each the
// external timer alone at its probes: core/probe.h, ExternalTimer; its handlers read no register).
// Null entries are skipped.
size_t timed_by_engine(std::span<usprobe_link *const> links);
// Whether a detach could not show that every thread is past the counter path's increment into an
// external counter it read the word of before the detach (core/retire.h,
// counter_windows_clear): the owner must then keep that counter's memory, never unmap it.
bool external_counters_maybe_in_use();

// Code was mapped or unmapped outside the dynamic linker: bring every probe in line with the
// mappings (sites for new mappings of probed files, none for mappings that are gone).
Result<void> notify_mapping();
// usprobe_on_mapping_change.
void set_mapping_listener(void (*fn)(void *), void *user);
// How many mappings the link's probe is placed in now (0 while its file is not mapped). No lock.
int site_count(const usprobe_link *link);

// These three take no lock (a handler may call them, even one that runs while this thread holds
// the registry's mutex): they read what the writers publish (Probe::placed_sites, int3_reason).
bool uses_int3(const usprobe_link *link);
// Lives as long as the link's probe, so at least until the link is detached.
const char *int3_reason(const usprobe_link *link);

// Why a registry call on this thread would wait for itself, or null when it would not: the thread
// holds the registry's mutex (a handler running inside an attach, a detach or the dynamic linker's
// hook), or, with `waits_for_readers` (detach waits for a grace period), it is inside a read
// section (a handler, or a signal handler that interrupted one). A static string: no allocation.
const char *self_deadlock(bool waits_for_readers);
// How the link's probe is entered ("jump", "jump (punned)", ..., "int3"; core/arch.h,
// SitePlan::path): an int3 site's when it has one, "" while it has no site. Lives as long as the
// link's probe.
const char *path(const usprobe_link *link);

}  // namespace usprobe::registry
