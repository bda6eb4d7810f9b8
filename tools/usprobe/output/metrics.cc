#include "output/metrics.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>

#include <fmt/format.h>

#include "protocol/protocol.h"

namespace usprobe::cli {

std::string metric_label_value(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string count_metrics(const std::vector<ProbeTotal> &rows) {
  std::string hits =
      "# HELP usprobe_hits_total Hits of a probe by a process.\n"
      "# TYPE usprobe_hits_total counter\n";
  std::string missed =
      "# HELP usprobe_missed_total Hits of a probe a process made while usprobe could not count "
      "them (inside a handler).\n"
      "# TYPE usprobe_missed_total counter\n";
  for (const ProbeTotal &row : rows)
    for (const auto &[pid, count] : row.pids) {
      const std::string labels =
          fmt::format("{{probe=\"{}\",pid=\"{}\"}}", metric_label_value(row.probe), pid);
      hits += fmt::format("usprobe_hits_total{} {}\n", labels, count.hits);
      missed += fmt::format("usprobe_missed_total{} {}\n", labels, count.missed);
    }
  return hits + missed;
}

std::string latency_metrics(const std::vector<LatencyMetricsRow> &rows) {
  std::string out =
      "# HELP usprobe_latency_seconds Time from a function's entry to its return.\n"
      "# TYPE usprobe_latency_seconds histogram\n";
  std::string missed =
      "# HELP usprobe_latency_missed_total Calls that were not timed (recursion, returns not "
      "seen).\n"
      "# TYPE usprobe_latency_missed_total counter\n";
  for (const LatencyMetricsRow &row : rows) {
    const std::string probe = metric_label_value(row.probe);
    const Histogram &h = *row.histogram;
    // The buckets' boundaries fall on powers of two of nanoseconds: bucket i holds the calls of
    // [low(i), high(i)], so the calls of at most 2^k - 1 ns are those of every bucket below 2^k.
    uint32_t last = 0;  // one past the last nonempty bucket
    for (uint32_t i = 0; i < h.buckets.size(); ++i)
      if (h.buckets[i]) last = i + 1;
    uint64_t cumulative = 0;
    uint32_t i = 0;
    for (uint32_t k = 1; k < 64; ++k) {
      const uint64_t le_ns = (uint64_t{1} << k) - 1;
      for (; i < h.buckets.size() && agent::latency_bucket_high(i) <= le_ns; ++i)
        cumulative += h.buckets[i];
      out += fmt::format("usprobe_latency_seconds_bucket{{probe=\"{}\",le=\"{:.9f}\"}} {}\n", probe,
                         static_cast<double>(le_ns) / 1e9, cumulative);
      if (i >= last) break;  // every call counted: the next boundaries say nothing new
    }
    out += fmt::format("usprobe_latency_seconds_bucket{{probe=\"{}\",le=\"+Inf\"}} {}\n", probe,
                       h.count);
    out += fmt::format("usprobe_latency_seconds_sum{{probe=\"{}\"}} {:.9f}\n", probe,
                       static_cast<double>(h.sum_ns) / 1e9);
    out += fmt::format("usprobe_latency_seconds_count{{probe=\"{}\"}} {}\n", probe, h.count);
    missed += fmt::format("usprobe_latency_missed_total{{probe=\"{}\"}} {}\n", probe, row.missed);
  }
  return out + missed;
}

namespace {

constexpr int kBacklog = 4;              // connections the kernel keeps waiting
constexpr int kRequestTimeoutMs = 1000;  // a client that says nothing for this long is dropped
constexpr size_t kMaxRequest = 8192;     // bytes of a request read, at most

Result<sockaddr_in> parse_address(const std::string &host_port) {
  const size_t colon = host_port.rfind(':');
  auto bad = [&](std::string_view why) {
    return fail(EINVAL, fmt::format("--serve {}: {}", host_port, why));
  };
  if (colon == std::string::npos) return bad("expected HOST:PORT, as 127.0.0.1:9100");
  std::string host = host_port.substr(0, colon);
  const std::string port_text = host_port.substr(colon + 1);
  int port = -1;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 0 || port > 65535)
    return bad("the port is not a number from 0 to 65535");
  if (host == "localhost") host = "127.0.0.1";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1)
    return bad("the host is not an IPv4 address (or localhost)");
  return addr;
}

void write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace

Result<std::unique_ptr<MetricsServer>> MetricsServer::listen(const std::string &host_port) {
  auto addr = parse_address(host_port);
  if (!addr) return std::unexpected(addr.error());
  auto failed = [&](const char *what) {
    const int err = errno;
    return fail(err, fmt::format("--serve {}: {}: {}", host_port, what, std::strerror(err)));
  };
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return failed("socket");
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<const sockaddr *>(&*addr), sizeof *addr) != 0 ||
      ::listen(fd, kBacklog) != 0) {
    auto error = failed("cannot listen there");
    ::close(fd);
    return error;
  }
  sockaddr_in bound{};
  socklen_t len = sizeof bound;
  ::getsockname(fd, reinterpret_cast<sockaddr *>(&bound), &len);
  int wake[2];
  if (::pipe2(wake, O_CLOEXEC) != 0) {
    auto error = failed("pipe");
    ::close(fd);
    return error;
  }
  std::unique_ptr<MetricsServer> server(
      new MetricsServer(fd, wake[0], wake[1], ntohs(bound.sin_port)));
  server->thread_ = std::thread([s = server.get()] { s->serve(); });
  return server;
}

MetricsServer::MetricsServer(int fd, int wake_read, int wake_write, int port)
    : fd_(fd), wake_read_(wake_read), wake_write_(wake_write), port_(port) {}

MetricsServer::~MetricsServer() {
  const char stop = 0;
  (void)!::write(wake_write_, &stop, 1);
  if (thread_.joinable()) thread_.join();
  ::close(fd_);
  ::close(wake_read_);
  ::close(wake_write_);
}

void MetricsServer::publish(std::string page) {
  std::lock_guard lock(mutex_);
  page_ = std::move(page);
}

// One connection at a time, until the destructor writes to the wake pipe.
void MetricsServer::serve() {
  for (;;) {
    pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_read_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    const int client = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    answer(client);
    ::close(client);
  }
}

// Reads the request head (at most kMaxRequest bytes, kRequestTimeoutMs in all) and answers
// GET /metrics with the page; anything else with 404 or 405.
void MetricsServer::answer(int client) {
  std::string request;
  char buffer[1024];
  while (request.find("\r\n\r\n") == std::string::npos && request.size() < kMaxRequest) {
    pollfd p{client, POLLIN, 0};
    if (::poll(&p, 1, kRequestTimeoutMs) <= 0) return;
    ssize_t n = ::recv(client, buffer, sizeof buffer, 0);
    if (n <= 0) return;
    request.append(buffer, static_cast<size_t>(n));
  }
  const std::string_view line(request.data(), request.find("\r\n") == std::string::npos
                                                  ? request.size()
                                                  : request.find("\r\n"));
  auto respond = [&](std::string_view status, std::string_view type, std::string_view body) {
    write_all(client, fmt::format("HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n"
                                  "Connection: close\r\n\r\n",
                                  status, type, body.size()));
    write_all(client, body);
  };
  if (!line.starts_with("GET ")) {
    respond("405 Method Not Allowed", "text/plain", "only GET\n");
    return;
  }
  std::string_view target = line.substr(4, line.find(' ', 4) - 4);
  if (target != "/metrics" && !target.starts_with("/metrics?")) {
    respond("404 Not Found", "text/plain", "usprobe serves /metrics\n");
    return;
  }
  std::string page;
  {
    std::lock_guard lock(mutex_);
    page = page_;
  }
  respond("200 OK", "text/plain; version=0.0.4; charset=utf-8", page);
}

}  // namespace usprobe::cli
