#include "agent/plan.h"

#include <charconv>

#include <fmt/format.h>

#include "protocol/protocol.h"

namespace usprobe::agent {
namespace {

template <typename T>
bool parse_decimal(std::string_view s, T &out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size() && !s.empty();
}

}  // namespace

std::expected<std::vector<PlannedProbe>, std::string> parse_plan(std::string_view text,
                                                                 uint32_t probe_count) {
  std::vector<PlannedProbe> plan;
  unsigned line_no = 0;
  while (!text.empty()) {
    ++line_no;
    size_t eol = text.find('\n');
    if (eol == std::string_view::npos)
      return std::unexpected(fmt::format("plan line {}: no newline at its end", line_no));
    std::string_view line = text.substr(0, eol);
    text.remove_prefix(eol + 1);
    auto bad = [&](std::string_view why) {
      return std::unexpected(fmt::format("plan line {}: {}: \"{}\"", line_no, why, line));
    };
    if (line_no == 1) {
      if (line != kPlanFirstLine) return bad(fmt::format("expected \"{}\"", kPlanFirstLine));
      continue;
    }
    size_t tab1 = line.find('\t');
    size_t tab2 = tab1 == std::string_view::npos ? tab1 : line.find('\t', tab1 + 1);
    if (tab2 == std::string_view::npos) return bad("expected index<TAB>string_mask<TAB>location");
    uint32_t index = 0, mask = 0;
    if (!parse_decimal(line.substr(0, tab1), index) || index != plan.size())
      return bad(fmt::format("expected index {}", plan.size()));
    if (!parse_decimal(line.substr(tab1 + 1, tab2 - tab1 - 1), mask) ||
        (mask & ~(kStringBadMask | kPlanFlags)) != 0)
      return bad(fmt::format("string_mask is not a number below {} (and bits {:#x})",
                             1u << kMaxValues, kPlanFlags));
    std::string_view location = line.substr(tab2 + 1);
    if (location.empty()) return bad("empty location");
    plan.push_back({mask & ~kPlanFlags, mask & kPlanFlags, std::string(location)});
  }
  if (line_no == 0) return std::unexpected("the plan is empty");
  if (plan.size() != probe_count)
    return std::unexpected(
        fmt::format("the plan lists {} probes, the header says {}", plan.size(), probe_count));
  return plan;
}

}  // namespace usprobe::agent
