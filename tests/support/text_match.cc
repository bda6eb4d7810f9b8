#include "support/text_match.h"

#include <regex>

namespace usprobe::test {

struct regex::Impl {
  std::regex re;
};

regex::regex(const std::string &pattern) : impl_(new Impl{std::regex(pattern)}) {}
regex::regex(const char *pattern) : impl_(new Impl{std::regex(pattern)}) {}
regex::~regex() = default;

namespace {
smatch groups_of(const std::smatch &m) {
  smatch out;
  for (const auto &g : m) out.push_back(g.str());
  return out;
}
}  // namespace

bool regex_match(const std::string &text, const regex &re) {
  return std::regex_match(text, re.impl().re);
}
bool regex_match(const std::string &text, smatch &m, const regex &re) {
  std::smatch found;
  if (!std::regex_match(text, found, re.impl().re)) return false;
  m = groups_of(found);
  return true;
}
bool regex_search(const std::string &text, const regex &re) {
  return std::regex_search(text, re.impl().re);
}
bool regex_search(const std::string &text, smatch &m, const regex &re) {
  std::smatch found;
  if (!std::regex_search(text, found, re.impl().re)) return false;
  m = groups_of(found);
  return true;
}
std::vector<smatch> regex_find_all(const std::string &text, const regex &re) {
  std::vector<smatch> out;
  for (std::sregex_iterator it(text.begin(), text.end(), re.impl().re), end; it != end; ++it)
    out.push_back(groups_of(*it));
  return out;
}

}  // namespace usprobe::test
