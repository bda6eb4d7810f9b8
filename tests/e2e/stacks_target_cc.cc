// A C++ program for `usprobe stacks` (tests/e2e/stacks_test.cc): its frames must come out
// demangled. stacks_demo::Parser::parse is called 4 times from stacks_demo::run<int>. For
// `usprobe count` by demangled names (tests/e2e/count_test.cc): the overloads
// stacks_demo::scale(int), called 3 times, and stacks_demo::scale(double), called twice.
#include <cstdio>

namespace stacks_demo {

volatile int sink;

struct Parser {
  __attribute__((noipa)) void parse(int value);
};

void Parser::parse(int value) {
  sink = sink + value;
}

__attribute__((noipa)) int scale(int value) {
  return value * 3;
}

__attribute__((noipa)) double scale(double value) {
  return value * 2.5;
}

template <typename T>
__attribute__((noipa)) void run(T count) {
  Parser parser;
  for (T i = 0; i < count; ++i) parser.parse(static_cast<int>(i));
  sink = sink + 1;
}

}  // namespace stacks_demo

int main() {
  stacks_demo::run<int>(4);
  std::printf("parsed 4\n");
  int scaled = 0;
  for (int i = 0; i < 3; ++i) scaled += stacks_demo::scale(i);
  double scaled_d = stacks_demo::scale(1.0) + stacks_demo::scale(2.0);
  std::printf("scaled %d %.1f\n", scaled, scaled_d);
  return 0;
}
