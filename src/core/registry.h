// The probe registry: attach and detach transactions. Probes are keyed by location (file identity,
// file offset), so a second consumer on a probed location reuses its patch, and the patch goes when
// the last link is detached. Batches patch many sites with one round of syncs.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/probe.h"

namespace usprobe::registry {

// One result per location, in order. `consumers`: empty (built-in counter only), one for every
// location, or one per location. flags: USPROBE_FORCE_INT3, USPROBE_GENERAL_REGS_ONLY.
std::vector<Result<usprobe_link *>> attach(std::span<const std::string> locations,
                                           std::span<const usprobe_consumer> consumers,
                                           unsigned flags = 0);
// When this returns, no handler of these links runs or will run; the links are freed.
Result<void> detach(std::span<usprobe_link *const> links);

// Code was mapped or unmapped outside the dynamic linker: bring every probe in line with the
// mappings (sites for new mappings of probed files, none for mappings that are gone).
Result<void> notify_mapping();
// usprobe_on_mapping_change.
void set_mapping_listener(void (*fn)(void *), void *user);
// How many mappings the link's probe is placed in now (0 while its file is not mapped).
int site_count(const usprobe_link *link);

bool uses_int3(const usprobe_link *link);
const std::string &int3_reason(const usprobe_link *link);
// How the link's probe is entered ("jump", "jump (punned)", ..., "int3"; core/arch.h,
// SitePlan::path): an int3 site's when it has one, empty while it has no site.
const std::string &path(const usprobe_link *link);

}  // namespace usprobe::registry
