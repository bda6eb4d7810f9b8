// The C++ API: RAII links detach when they go, errors come back as std::expected.
#include <gtest/gtest.h>

#include <cstring>

#include "targets/targets.h"
#include "usprobe/usprobe.hpp"

namespace {

TEST(CxxApi, LinkCountsAndDetachesWhenItGoesOutOfScope) {
  uint8_t before[8];
  std::memcpy(before, reinterpret_cast<const void *>(&tgt_counted), sizeof before);
  {
    auto link = usprobe::attach("libusprobe_targets.so:tgt_counted");
    ASSERT_TRUE(link) << link.error().message;
    for (long i = 0; i < 100; ++i) EXPECT_EQ(tgt_counted(i), i + 1);
    EXPECT_EQ(link->hits(), 100u);
    EXPECT_FALSE(link->uses_int3()) << link->int3_reason();
    EXPECT_EQ(link->path(), "jump");
    EXPECT_EQ(link->name(), "libusprobe_targets.so:tgt_counted");
    EXPECT_NE(std::memcmp(before, reinterpret_cast<const void *>(&tgt_counted), 5), 0);
  }
  EXPECT_EQ(std::memcmp(before, reinterpret_cast<const void *>(&tgt_counted), sizeof before), 0)
      << "the patch is gone when the last link is destroyed";
}

TEST(CxxApi, HandlerSeesArgumentsThroughTheUserPointer) {
  long sum = 0;
  auto link = usprobe::attach(
      "libusprobe_targets.so:tgt_counted",
      [](usprobe_hit *hit, void *user) { *static_cast<long *>(user) += usprobe_arg(hit, 0); },
      &sum);
  ASSERT_TRUE(link) << link.error().message;
  for (long i = 1; i <= 10; ++i) tgt_counted(i);
  EXPECT_EQ(sum, 55);
  ASSERT_TRUE(link->detach());
  tgt_counted(100);
  EXPECT_EQ(sum, 55) << "no handler runs after detach()";
}

TEST(CxxApi, ErrorsComeBackAsUnexpected) {
  auto link = usprobe::attach("libusprobe_targets.so:tgt_countd");
  ASSERT_FALSE(link);
  EXPECT_EQ(link.error().code, ENOENT);
  EXPECT_NE(link.error().message.find("did you mean `tgt_counted`"), std::string::npos)
      << link.error().message;
}

}  // namespace

namespace {

TEST(ListFunctions, ListsTheTargetsWithTheirOffsetsAndSizes) {
  struct Seen {
    bool counted = false;
    uint64_t size = 0;
    int n = 0;
  } seen;
  int n = usprobe_list_functions(
      "libusprobe_targets.so",
      [](const char *name, uint64_t, uint64_t size, void *user) {
        auto *s = static_cast<Seen *>(user);
        ++s->n;
        if (std::strcmp(name, "tgt_one_byte") == 0) s->size = size;
        if (std::strcmp(name, "tgt_counted") == 0) s->counted = true;
      },
      &seen);
  EXPECT_EQ(n, seen.n);
  EXPECT_GT(n, 15);
  EXPECT_TRUE(seen.counted);
  EXPECT_EQ(seen.size, 1u) << "tgt_one_byte is a lone ret";
  EXPECT_LT(usprobe_list_functions(
                "/no/such/lib.so", [](const char *, uint64_t, uint64_t, void *) {}, nullptr),
            0);
  EXPECT_NE(std::string(usprobe_last_error()).find("/no/such/lib.so"), std::string::npos);
}

}  // namespace
