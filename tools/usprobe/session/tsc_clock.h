// Trace records carry TSC ticks: the agent's handlers read rdtsc and make no system call. The CLI
// turns ticks into seconds since the command started by measuring the TSC against
// CLOCK_MONOTONIC itself: one sample at startup, another at least 10 ms later, and a fresh one at
// every drain, so the rate gets more exact the longer the trace runs.
#pragma once

#include <cstdint>

namespace usprobe::cli {

class TscClock {
 public:
  // Takes the first two samples (sleeps about 10 ms between them).
  void calibrate();
  // Time 0: now, when the command is started.
  void mark_start();
  // A new sample to measure the rate against the first one.
  void refine();
  // Seconds from time 0 to `tsc`.
  double seconds(uint64_t tsc) const;
  // The measured rate (latency mode hands it to the agent as a fixed-point multiplier).
  double ticks_per_ns() const { return ticks_per_ns_; }

 private:
  struct Sample {
    uint64_t tsc = 0;
    int64_t ns = 0;  // CLOCK_MONOTONIC
  };
  static Sample sample();

  Sample first_, last_, start_;
  double ticks_per_ns_ = 1.0;
};

}  // namespace usprobe::cli
