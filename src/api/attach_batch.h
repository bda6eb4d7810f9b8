// usprobe_attach_batch_ex with what the C API does not offer: for the agent, which links the
// engine.
#pragma once

#include <cstddef>
#include <span>

#include "core/registry.h"
#include "usprobe/usprobe.h"

namespace usprobe::api {

// usprobe_attach_batch_ex (usprobe.h: results, errors, messages), whose consumers count into
// counters kept outside the engine where `external` says (registry::attach; empty, or one per
// location).
int attach_batch(const char *const *locations, size_t n, const usprobe_consumer *consumers,
                 unsigned flags, usprobe_link **links, int *errors,
                 std::span<const ExternalCounter> external);

}  // namespace usprobe::api
