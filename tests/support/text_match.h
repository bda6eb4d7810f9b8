// Regular expressions for tests, compiled in one file: <regex> is the slowest header the tests
// include (a one-line std::regex_search costs a test file about as much to compile as GoogleTest
// itself, under -O3 and the sanitizers more), so test files use these instead of instantiating
// std::regex each. The names follow <regex> (regex, smatch, regex_match, regex_search), with
// ECMAScript syntax as std::regex has it ("\\n" is a newline, "[0-9]{3}", "\\(" a parenthesis);
// a match's groups are plain strings.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace usprobe::test {

using smatch = std::vector<std::string>;  // [0]: the whole match, then each group ("" if unset)

class regex {
 public:
  regex(const std::string &pattern);  // NOLINT: implicit, as std::regex from a string
  regex(const char *pattern);         // NOLINT
  ~regex();
  regex(const regex &) = delete;
  regex &operator=(const regex &) = delete;

  struct Impl;
  const Impl &impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// The whole text matches.
bool regex_match(const std::string &text, const regex &re);
bool regex_match(const std::string &text, smatch &m, const regex &re);
// Some part of the text matches (m: the first match).
bool regex_search(const std::string &text, const regex &re);
bool regex_search(const std::string &text, smatch &m, const regex &re);
// Every non-overlapping match, in order.
std::vector<smatch> regex_find_all(const std::string &text, const regex &re);

}  // namespace usprobe::test
