// usprobe for C++: RAII links over the C API (usprobe.h), errors as std::expected.
//
//   auto link = usprobe::attach("libc:malloc");                 // built-in counter
//   if (!link) { std::cerr << link.error().message << '\n'; return; }
//   ...
//   std::cout << link->hits() << " calls\n";                    // detached when `link` goes
//
//   auto traced = usprobe::attach("app:parse", [](usprobe_hit *hit, void *) {
//     record(usprobe_arg(hit, 0));
//   });
//
// Handlers are plain functions (or captureless lambdas) with a user pointer: the hit path calls
// them directly, with no std::function in between.
#pragma once

#include <cerrno>
#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "usprobe/error.hpp"
#include "usprobe/usprobe.h"

namespace usprobe {

class Link {
 public:
  Link() = default;
  explicit Link(usprobe_link *raw) : raw_(raw) {}
  Link(Link &&o) noexcept : raw_(std::exchange(o.raw_, nullptr)) {}
  Link &operator=(Link &&o) noexcept {
    if (this != &o) {
      reset();
      raw_ = std::exchange(o.raw_, nullptr);
    }
    return *this;
  }
  Link(const Link &) = delete;
  Link &operator=(const Link &) = delete;
  ~Link() { reset(); }

  uint64_t hits() const { return usprobe_link_hits(raw_); }
  uint64_t missed() const { return usprobe_link_missed(raw_); }
  bool uses_int3() const { return usprobe_link_uses_int3(raw_) == 1; }
  std::string_view int3_reason() const { return usprobe_link_int3_reason(raw_); }
  // "jump", "jump (one instruction)", "jump (punned)" or "int3" (usprobe_link_path).
  std::string_view path() const { return usprobe_link_path(raw_); }
  std::string_view name() const { return usprobe_link_name(raw_); }
  // Mappings the probe is placed in now (usprobe_link_sites).
  int sites() const { return usprobe_link_sites(raw_); }
  usprobe_link *get() const { return raw_; }
  explicit operator bool() const { return raw_ != nullptr; }

  // Detach now; afterwards no handler of this link runs. Also done by the destructor. In a handler
  // it cannot be done (usprobe.h, "Calls from a handler"): the error is EDEADLK, and the Link stays
  // attached, to be detached once the handler has returned.
  std::expected<void, Error> detach() {
    if (!raw_) return {};
    int rc = usprobe_detach(raw_);
    if (rc == -EDEADLK) return std::unexpected(Error{-rc, usprobe_last_error()});
    raw_ = nullptr;
    if (rc < 0) return std::unexpected(Error{-rc, usprobe_last_error()});
    return {};
  }

 private:
  // A Link destroyed in a handler leaves its link attached (usprobe_detach refuses, -EDEADLK):
  // a destructor has no way to report that, so do not let an attached Link die in a handler.
  void reset() {
    if (raw_) usprobe_detach(std::exchange(raw_, nullptr));
  }
  usprobe_link *raw_ = nullptr;
};

using Handler = void (*)(usprobe_hit *hit, void *user);

// In a handler: the user stack at `hit` into `out` (usprobe_hit_stack; flags: USPROBE_STACK_FP or
// 0). Returns the filled part of `out`, which holds at least the hit's address; empty on error (an
// empty `out`, an unknown flag). Allocates nothing.
inline std::span<uint64_t> hit_stack(const usprobe_hit *hit, std::span<uint64_t> out,
                                     unsigned flags = 0) {
  int n = out.empty() ? -EINVAL : usprobe_hit_stack(hit, out.data(), out.size(), flags);
  return n < 0 ? std::span<uint64_t>() : out.first(static_cast<size_t>(n));
}

inline std::expected<Link, Error> attach(const std::string &location, Handler on_entry = nullptr,
                                         void *user = nullptr, unsigned flags = 0) {
  usprobe_consumer c{on_entry, user, nullptr};
  usprobe_link *raw = nullptr;
  int rc = usprobe_attach_ex(location.c_str(), on_entry ? &c : nullptr, flags, &raw);
  if (rc < 0) return std::unexpected(Error{-rc, usprobe_last_error()});
  return Link(raw);
}

// After mapping or unmapping code without the dynamic linker (usprobe_notify_mapping).
inline std::expected<void, Error> notify_mapping() {
  int rc = usprobe_notify_mapping();
  if (rc < 0) return std::unexpected(Error{-rc, usprobe_last_error()});
  return {};
}

}  // namespace usprobe
