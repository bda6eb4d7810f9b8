// --serve HOST:PORT: the counts of a running session as Prometheus metrics (the text exposition
// format, version 0.0.4), served at /metrics while the session runs, for a Prometheus server (or
// anything that reads its format) to scrape.
//
//   # TYPE usprobe_hits_total counter
//   usprobe_hits_total{probe="libc:malloc",pid="4242"} 1234
//
// Labels name the probe as the user spelled it and the process. The server is small and bounded:
// one connection at a time (the kernel queues a few more), a request read for at most a second,
// no buffering beyond the page it serves; it listens before the command starts, so that an address
// that is taken is an error before anything runs.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "output/histogram.h"
#include "output/report.h"

namespace usprobe::cli {

// usprobe_hits_total and usprobe_missed_total, one series per (probe, process) that was hit.
std::string count_metrics(const std::vector<ProbeTotal> &rows);

// latency --serve: usprobe_latency_seconds, a histogram per probe (`_bucket{le}` cumulative, at
// each power of two of nanoseconds up to the slowest call, then +Inf; `_sum`, `_count`), and
// usprobe_latency_missed_total. `rows`: (probe as spelled, its histogram, its missed calls).
struct LatencyMetricsRow {
  std::string probe;
  const Histogram *histogram;
  uint64_t missed;
};
std::string latency_metrics(const std::vector<LatencyMetricsRow> &rows);

// A label value as the text format writes it: backslash, double quote and newline escaped.
std::string metric_label_value(std::string_view value);

class MetricsServer {
 public:
  // Listens on HOST:PORT (an IPv4 address, or "localhost"); errors name the address and the reason
  // ("--serve 127.0.0.1:9100: Address already in use").
  static Result<std::unique_ptr<MetricsServer>> listen(const std::string &host_port);
  // --serve as the commands take it: no server for "", else listen(host_port). Called before
  // anything starts, so that an address that is taken is an error before the command runs.
  static Result<std::unique_ptr<MetricsServer>> for_option(const std::string &serve) {
    if (serve.empty()) return std::unique_ptr<MetricsServer>();
    return listen(serve);
  }
  ~MetricsServer();
  MetricsServer(const MetricsServer &) = delete;
  MetricsServer &operator=(const MetricsServer &) = delete;

  // What /metrics answers from now on.
  void publish(std::string page);
  // The port it listens on (the one asked for, or the kernel's choice for port 0).
  int port() const { return port_; }

 private:
  MetricsServer(int fd, int wake_read, int wake_write, int port);
  void serve();
  void answer(int client);

  int fd_, wake_read_, wake_write_, port_;
  std::mutex mutex_;
  std::string page_;  // guarded by mutex_
  std::thread thread_;
};

}  // namespace usprobe::cli
