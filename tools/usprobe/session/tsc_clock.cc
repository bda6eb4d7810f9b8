#include "session/tsc_clock.h"

#include <time.h>
#include <x86intrin.h>

namespace usprobe::cli {

TscClock::Sample TscClock::sample() {
  // The clock read sits between two rdtsc: their midpoint is the tick count at that moment, to
  // within half the (short) time clock_gettime takes through the vDSO.
  uint64_t before = __rdtsc();
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t after = __rdtsc();
  return {before + (after - before) / 2, int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec};
}

void TscClock::calibrate() {
  first_ = sample();
  timespec pause{0, 10'000'000};
  while (::nanosleep(&pause, &pause) != 0) {
  }
  refine();
  start_ = last_;
}

void TscClock::mark_start() {
  start_ = sample();
}

void TscClock::refine() {
  last_ = sample();
  if (last_.ns > first_.ns && last_.tsc > first_.tsc)
    ticks_per_ns_ =
        static_cast<double>(last_.tsc - first_.tsc) / static_cast<double>(last_.ns - first_.ns);
}

double TscClock::seconds(uint64_t tsc) const {
  double ticks = tsc >= start_.tsc ? static_cast<double>(tsc - start_.tsc)
                                   : -static_cast<double>(start_.tsc - tsc);
  return ticks / ticks_per_ns_ / 1e9;
}

}  // namespace usprobe::cli
