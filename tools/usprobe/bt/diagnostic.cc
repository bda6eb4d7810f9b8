#include "bt/diagnostic.h"

#include <fmt/format.h>

namespace usprobe::bt {

namespace {

// Line `n` (1-based) of `source`, without its newline; "" past the end.
std::string_view line_of(std::string_view source, int n) {
  size_t start = 0;
  for (int i = 1; i < n; ++i) {
    size_t nl = source.find('\n', start);
    if (nl == std::string_view::npos) return {};
    start = nl + 1;
  }
  size_t end = source.find('\n', start);
  return source.substr(start, end == std::string_view::npos ? source.size() - start : end - start);
}

}  // namespace

std::string format_diagnostic(std::string_view source_name, std::string_view source,
                              const Diagnostic &d) {
  const SourceLoc &loc = d.loc;
  if (loc.line == 0) return fmt::format("{}: ERROR: {}\n", source_name, d.message);
  if (loc.end_line > loc.line)
    return fmt::format("{}:{}-{}: ERROR: {}\n", source_name, loc.line, loc.end_line, d.message);
  std::string out = fmt::format("{}:{}:{}-{}: ERROR: {}\n", source_name, loc.line, loc.column,
                                loc.end_column, d.message);
  std::string_view text = line_of(source, loc.line);
  out.append(text);
  out += '\n';
  // The marker row keeps the line's tabs, so that the '~' sit under the text in any terminal.
  for (int c = 1; c < loc.column; ++c) {
    size_t i = static_cast<size_t>(c - 1);
    out += i < text.size() && text[i] == '\t' ? '\t' : ' ';
  }
  for (int c = loc.column; c < loc.end_column; ++c) out += '~';
  out += '\n';
  return out;
}

}  // namespace usprobe::bt
