// How far apart two names are, for "did you mean" suggestions: the ELF reader's for function
// names, the command line's for options and subcommands.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <string_view>
#include <vector>

namespace usprobe {

// Edit distance counting a swap of two neighbours as one edit (the "optimal string alignment"
// variant of Damerau-Levenshtein: "prinft" is one edit from "printf") and ignoring case ("Malloc"
// is "malloc", not "calloc"), or `limit + 1` as soon as it is known to exceed `limit`.
inline size_t bounded_edit_distance(std::string_view a, std::string_view b, size_t limit) {
  auto same = [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  };
  if ((a.size() > b.size() ? a.size() - b.size() : b.size() - a.size()) > limit) return limit + 1;
  std::vector<size_t> before(b.size() + 1), prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  size_t prev_min = 0;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    size_t row_min = cur[0];
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t subst = prev[j - 1] + (same(a[i - 1], b[j - 1]) ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, subst});
      if (i > 1 && j > 1 && same(a[i - 1], b[j - 2]) && same(a[i - 2], b[j - 1]))
        cur[j] = std::min(cur[j], before[j - 2] + 1);
      row_min = std::min(row_min, cur[j]);
    }
    // Every cell of the next row is at least min(this row's minimum, the previous row's + 1)
    // (a swap reaches two rows back), so once both are over the limit, the distance is too.
    if (row_min > limit && prev_min >= limit) return limit + 1;
    prev_min = row_min;
    std::swap(before, prev);
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace usprobe
