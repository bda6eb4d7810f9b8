// `usprobe run`: errors in a bpftrace program, reported as bpftrace reports them: the place, the
// message, the line and a row of '~' under the offending text.
//
//   stdin:1:55-59: ERROR: x86_64 doesn't support arg7
//   usdt:/usr/bin/python3.11:python:line { printf("%d\n", arg7); exit(); }
//                                                         ~~~~
#pragma once

#include <string>
#include <string_view>

namespace usprobe::bt {

// A span of the source. Lines and columns count from 1; end_column is exclusive (bpftrace's
// "1:55-59" is columns 55 to 58). A span over several lines (end_line > line) is printed as
// bpftrace does, "stdin:1-2:", without the source line.
struct SourceLoc {
  int line = 0, column = 0;
  int end_line = 0, end_column = 0;
  friend bool operator==(const SourceLoc &, const SourceLoc &) = default;
};

// The span from the start of `a` to the end of `b`.
inline SourceLoc span(const SourceLoc &a, const SourceLoc &b) {
  return {a.line, a.column, b.end_line, b.end_column};
}

struct Diagnostic {
  SourceLoc loc;
  std::string message;
};

// "NAME:L:C1-C2: ERROR: MESSAGE\nLINE\n   ~~~~\n". `source_name` is "stdin" for a program given
// with -e, else its file's name.
std::string format_diagnostic(std::string_view source_name, std::string_view source,
                              const Diagnostic &diagnostic);

}  // namespace usprobe::bt
