// Log-linear histogram buckets: 2^kSubBits buckets per power of two, so that a bucket is at most
// 1/2^kSubBits of its lower bound wide. Values below 2^(kSubBits + 1) get a bucket each (index =
// value); from there on, a value whose highest set bit is p (2^p <= v < 2^(p+1)) goes to
// 2^kSubBits * (p - kSubBits + 1) + (the kSubBits bits below bit p). Every uint64_t has a bucket,
// and a bucket lies inside one power of two.
//
// The engine's timers (core/probe.h, ExternalTimer) and `usprobe latency`'s histograms
// (protocol/protocol.h) both count into these buckets.
#pragma once

#include <cstdint>

namespace usprobe {

// The bucket of v. On a hit path: no branch but the one for small values.
template <uint32_t kSubBits>
constexpr uint32_t log_linear_bucket(uint64_t v) {
  static_assert(kSubBits >= 1 && kSubBits < 8);
  if (v < (uint64_t{2} << kSubBits)) return static_cast<uint32_t>(v);
  const uint32_t p = 63u - static_cast<uint32_t>(__builtin_clzll(v));
  return (1u << kSubBits) * (p - kSubBits + 1) +
         static_cast<uint32_t>((v >> (p - kSubBits)) & ((1u << kSubBits) - 1));
}

// How many buckets cover every uint64_t.
template <uint32_t kSubBits>
constexpr uint32_t log_linear_buckets() {
  return log_linear_bucket<kSubBits>(~uint64_t{0}) + 1;
}

}  // namespace usprobe
