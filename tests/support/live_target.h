// For the live-patching tests (tests/api and tests/stress): a function of tests/targets that
// threads call while it is probed, with its location and the result each call must give.
#pragma once

#include <cinttypes>
#include <cstdint>
#include <string>

#include "support/child_process.h"
#include "targets/targets.h"

namespace usprobe::test {

struct LiveTarget {
  const char *name;
  std::string location;
  const void *code;           // first byte of the function, for the byte check
  long (*call)(long i);       // calls the target with an argument derived from i
  long (*expected)(long i);   // what it must return
  uintptr_t site_offset = 0;  // of the probed instruction in the function
};

inline long plus_one(long i) {
  return i + 1;
}

// tgt_counted_mid's instruction site (+0x7): returns i + 1.
inline LiveTarget counted_mid_target() {
  return {"tgt_counted_mid+0x7",
          "libusprobe_targets.so:" + strf("tgt_counted_mid+%#" PRIx64, tgt_counted_mid_site_offset),
          reinterpret_cast<const void *>(&tgt_counted_mid),
          [](long i) { return tgt_counted_mid(i); },
          plus_one,
          static_cast<uintptr_t>(tgt_counted_mid_site_offset)};
}

}  // namespace usprobe::test
