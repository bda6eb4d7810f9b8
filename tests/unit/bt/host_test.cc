// The CLI side of `usprobe run` (bt/host.cc), without a command: BEGIN and END blocks run on maps
// that nothing has written, printed as bpftrace 0.17 prints them.
#include "bt/host.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "bt/check.h"
#include "bt/compile.h"
#include "bt/parser.h"

namespace usprobe::bt {
namespace {

// Runs the BEGIN blocks of `src`, then its END blocks, then prints the maps as at exit: the text
// written.
std::string end_output(std::string_view src, bool json = false) {
  auto p = parse(src);
  EXPECT_TRUE(p) << p.error().message;
  auto c = check(*p);
  EXPECT_TRUE(c) << c.error().message;
  auto code = compile(*p);
  EXPECT_TRUE(code) << code.error().message;
  char *data = nullptr;
  size_t size = 0;
  FILE *out = open_memstream(&data, &size);
  {
    Host host(*p, code->code, json, out, 0);
    host.run_blocks(ProbeType::kBegin);
    host.run_blocks(ProbeType::kEnd);
    host.print_maps_at_exit();
  }
  std::fclose(out);
  std::string text(data, size);
  std::free(data);
  return text;
}

// bpftrace 0.17 prints a count() without keys that counted nothing as 0, in print() and at exit,
// in text and in json; every other empty map (keyed counts, sums, plain values) as nothing.
TEST(BtHost, AnEmptyCountWithoutKeysPrintsAsZero) {
  const char *src =
      "u:a:b /arg0 > 100/ { @c = count(); @k[arg0] = count(); @s = sum(arg0); @x = arg0; } "
      "END { print(@c); print(@k); print(@s); printf(\"--\\n\"); }";
  EXPECT_EQ(end_output(src), "@c: 0\n\n\n--\n\n\n@c: 0\n\n\n\n");
  EXPECT_EQ(end_output(src, true),
            "{\"type\": \"map\", \"data\": {\"@c\": 0}}\n"
            "{\"type\": \"printf\", \"data\": \"--\\n\"}\n"
            "\n\n"
            "{\"type\": \"map\", \"data\": {\"@c\": 0}}\n");
}

// exit() in BEGIN (or interval) ends the program: what follows it in the block does not run, END
// does, as in bpftrace.
TEST(BtHost, EndRunsAfterExitInBegin) {
  EXPECT_EQ(end_output("BEGIN { printf(\"begin\\n\"); exit(); printf(\"no\\n\"); } "
                       "u:a:b { @c[1] = count(); } END { printf(\"end\\n\"); }"),
            "begin\nend\n\n\n\n");
}

}  // namespace
}  // namespace usprobe::bt
