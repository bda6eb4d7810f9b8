// A C++ program for `usprobe stacks` (tests/e2e/stacks_test.cc): its frames must come out
// demangled. stacks_demo::Parser::parse is called 4 times from stacks_demo::run<int>.
#include <cstdio>

namespace stacks_demo {

volatile int sink;

struct Parser {
  __attribute__((noipa)) void parse(int value);
};

void Parser::parse(int value) {
  sink = sink + value;
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
  return 0;
}
