// The plan: the probes the CLI asks for, as text in the region (protocol/protocol.h, "Plan text").
#pragma once

#include <cstdint>
#include <expected>
#include <string>
#include <string_view>
#include <vector>

namespace usprobe::agent {

struct PlannedProbe {
  uint32_t string_mask;  // bit n: argn is a `%s` argument
  uint32_t flags;        // kPlanMoreArgs, kPlanEntryArgs, kPlanEntryTime (protocol.h)
  std::string location;  // as usprobe_attach takes it
};

// Parses the plan text. Probes come back in index order; the message of a malformed plan names the
// line. `probe_count` is the header's: a plan that lists a different number is refused.
std::expected<std::vector<PlannedProbe>, std::string> parse_plan(std::string_view text,
                                                                 uint32_t probe_count);

}  // namespace usprobe::agent
