// For API tests: one attachment, detached when it goes out of scope, and an assertion that an
// attach worked that prints usprobe's message when it did not.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "usprobe/usprobe.h"

namespace usprobe::test {

class Link {
 public:
  Link() = default;
  Link(const Link &) = delete;
  Link &operator=(const Link &) = delete;
  ~Link() { detach(); }

  int attach(const std::string &where, const usprobe_consumer *c = nullptr, unsigned flags = 0) {
    detach();
    return usprobe_attach_ex(where.c_str(), c, flags, &link_);
  }
  int detach() {
    int r = link_ ? usprobe_detach(link_) : 0;
    link_ = nullptr;
    return r;
  }
  usprobe_link *get() const { return link_; }
  uint64_t hits() const { return usprobe_link_hits(link_); }
  uint64_t missed() const { return usprobe_link_missed(link_); }
  uint64_t return_hits() const { return usprobe_link_return_hits(link_); }
  bool int3() const { return usprobe_link_uses_int3(link_) == 1; }
  std::string reason() const { return usprobe_link_int3_reason(link_); }
  std::string name() const { return usprobe_link_name(link_); }

 private:
  usprobe_link *link_ = nullptr;
};

}  // namespace usprobe::test

#define ASSERT_ATTACHED(expr)                                                         \
  do {                                                                                \
    int attach_rc_ = (expr);                                                          \
    ASSERT_EQ(attach_rc_, 0) << #expr << ": " << usprobe_strerror(attach_rc_) << ": " \
                             << usprobe_last_error();                                 \
  } while (0)
