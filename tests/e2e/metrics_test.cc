// usprobe count --serve HOST:PORT: the counts at /metrics while the session runs, in Prometheus's
// text format; what it serves equals the final report, an address that is taken is refused before
// the command starts, and a real Prometheus server (Debian's) scrapes it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "e2e_support.h"

namespace {

using namespace std::chrono_literals;
using e2e::Json;
using e2e::Output;
using e2e::Process;

// A port nothing listens on now (the kernel's choice for port 0, given back).
int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

struct Response {
  int status = 0;  // 0: no answer
  std::string head, body;
};

// GET http://127.0.0.1:port/path, the whole answer (the server closes the connection).
Response http_get(int port, const std::string &path) {
  Response r;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval timeout{2, 0};  // a server that accepts and then says nothing: no answer
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0) {
    close(fd);
    return r;
  }
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  (void)!write(fd, request.data(), request.size());
  std::string all;
  char buffer[4096];
  for (ssize_t n; (n = read(fd, buffer, sizeof buffer)) > 0;) all.append(buffer, n);
  close(fd);
  const size_t end = all.find("\r\n\r\n");
  if (all.rfind("HTTP/1.1 ", 0) != 0 || end == std::string::npos) return r;
  r.status = std::stoi(all.substr(9, 3));
  r.head = all.substr(0, end);
  r.body = all.substr(end + 4);
  return r;
}

// The series of metric `name` on a page: labels -> value.
std::map<std::string, uint64_t> series(const std::string &page, const std::string &name) {
  std::map<std::string, uint64_t> out;
  for (const std::string &line : e2e::lines(page))
    if (line.rfind(name + "{", 0) == 0) {
      const size_t close = line.rfind('}'), space = line.rfind(' ');
      out[line.substr(name.size(), close + 1 - name.size())] = std::stoull(line.substr(space + 1));
    }
  return out;
}

// A command that calls e2e_work N times, prints "calls N", then waits until `flag` exists: the
// test scrapes while it waits.
std::vector<std::string> waiting_command(int calls, const std::string &flag) {
  return {"/bin/sh", "-c",
          fmt::format("{} calls {}; while [ ! -e {} ]; do sleep 0.05; done", e2e::target(), calls,
                      flag)};
}

TEST(CliServe, MetricsDuringTheRunEqualTheFinalReport) {
  e2e::TempDir dir;
  const int port = free_port();
  const std::string probe = e2e::target() + std::string(":e2e_work");
  std::vector<std::string> argv = {
      e2e::cli(), "count", "--json", "--serve", fmt::format("127.0.0.1:{}", port), probe, "--"};
  for (const std::string &a : waiting_command(1000, dir.file("go"))) argv.push_back(a);
  Process usprobe(argv);
  ASSERT_TRUE(usprobe.wait_for_stdout("calls 1000", 30s)) << usprobe.finish().describe();
  // The page follows the session's ticks (20 a second).
  Response r;
  std::map<std::string, uint64_t> hits;
  for (int i = 0; i < 200; ++i) {
    r = http_get(port, "/metrics");
    hits = series(r.body, "usprobe_hits_total");
    if (!hits.empty() && hits.begin()->second == 1000) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(r.status, 200) << r.head;
  EXPECT_NE(r.head.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << r.head;
  EXPECT_NE(r.body.find("# TYPE usprobe_hits_total counter"), std::string::npos) << r.body;
  ASSERT_EQ(hits.size(), 1u) << r.body;
  EXPECT_EQ(series(r.body, "usprobe_missed_total").size(), 1u) << r.body;
  EXPECT_EQ(http_get(port, "/other").status, 404);
  std::ofstream(dir.file("go")).put('\n');
  Output done = usprobe.finish();
  ASSERT_EQ(done.exit_code(), 0) << done.describe();
  // The final report counts what /metrics served, under the same process.
  Json total = e2e::only_total(done);
  ASSERT_EQ(e2e::hits_of(total, probe), 1000u) << total.dump();
  auto p = e2e::probe_in(total, probe);
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->contains("pids")) << p->dump();
  ASSERT_EQ((*p)["pids"].size(), 1u) << p->dump();
  const std::string pid = (*p)["pids"].begin().key();
  EXPECT_EQ(hits.begin()->first, fmt::format("{{probe=\"{}\",pid=\"{}\"}}", probe, pid));
  EXPECT_EQ(hits.begin()->second, 1000u);
}

// latency --serve: a Prometheus histogram per function, its buckets cumulative at powers of two of
// nanoseconds, equal to the final report's count.
TEST(CliServe, LatencyIsAHistogramWithCumulativeBucketsAndTheReportsCount) {
  e2e::TempDir dir;
  const int port = free_port();
  const std::string target = LATENCY_TARGET;
  const std::string probe = target + ":latency_sleep";
  Process usprobe(
      {e2e::cli(), "latency", "--json", "--serve", fmt::format("127.0.0.1:{}", port), probe, "--",
       "/bin/sh", "-c",
       fmt::format("{} 2 3 0 0; while [ ! -e {} ]; do sleep 0.05; done", target, dir.file("go"))});
  ASSERT_TRUE(usprobe.wait_for_stdout("slept 3", 30s)) << usprobe.finish().describe();
  std::map<std::string, uint64_t> count, buckets;
  std::string page;
  for (int i = 0; i < 200; ++i) {
    page = http_get(port, "/metrics").body;
    count = series(page, "usprobe_latency_seconds_count");
    if (!count.empty() && count.begin()->second == 3) break;
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(count.size(), 1u) << page;
  EXPECT_EQ(count.begin()->second, 3u) << page;
  EXPECT_NE(page.find("# TYPE usprobe_latency_seconds histogram"), std::string::npos) << page;
  // In the page's order: le grows, and so does the count up to it; +Inf last, all 3 calls. Each
  // call slept 2 ms: none is at or under 2^20 - 1 ns.
  double last_le = -1;
  uint64_t last_count = 0;
  bool inf = false;
  for (const std::string &line : e2e::lines(page)) {
    if (line.rfind("usprobe_latency_seconds_bucket{", 0) != 0) continue;
    ASSERT_FALSE(inf) << "a bucket after +Inf: " << page;
    const size_t at = line.find("le=\"") + 4;
    const std::string le = line.substr(at, line.find('"', at) - at);
    const uint64_t n = std::stoull(line.substr(line.rfind(' ') + 1));
    EXPECT_GE(n, last_count) << line;
    last_count = n;
    if (le == "+Inf") {
      inf = true;
      EXPECT_EQ(n, 3u) << line;
      continue;
    }
    const double seconds = std::stod(le);
    EXPECT_GT(seconds, last_le) << line;
    last_le = seconds;
    if (seconds <= 0.001048575) {
      EXPECT_EQ(n, 0u) << line;
    }
  }
  EXPECT_TRUE(inf) << page;
  const auto sum_at = page.find("usprobe_latency_seconds_sum{");
  ASSERT_NE(sum_at, std::string::npos) << page;
  EXPECT_GE(std::stod(page.substr(page.find("} ", sum_at) + 2)), 0.006) << page;
  std::ofstream(dir.file("go")).put('\n');
  Output done = usprobe.finish();
  ASSERT_EQ(done.exit_code(), 0) << done.describe();
  bool reported = false;
  for (const Json &j : e2e::json_lines(done.err))
    if (j.value("probe", "") == probe) {
      EXPECT_EQ(j.value("count", 0u), 3u) << j.dump();
      reported = true;
    }
  EXPECT_TRUE(reported) << done.err;
}

TEST(CliServe, ATakenAddressIsAnErrorBeforeTheCommandStarts) {
  e2e::TempDir dir;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len);
  const std::string where = fmt::format("127.0.0.1:{}", ntohs(addr.sin_port));
  Output r = e2e::run({e2e::cli(), "count", "--serve", where, "libc:malloc", "--", "/usr/bin/touch",
                       dir.file("ran")});
  close(fd);
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  EXPECT_EQ(r.err, "usprobe: --serve " + where + ": cannot listen there: Address already in use\n");
  EXPECT_FALSE(std::filesystem::exists(dir.file("ran"))) << "the command ran";
  Output bad = e2e::run({e2e::cli(), "count", "--serve", "127.0.0.1", "libc:malloc", "--", "true"});
  EXPECT_EQ(bad.exit_code(), 2) << bad.describe();
  EXPECT_EQ(bad.err, "usprobe: --serve 127.0.0.1: expected HOST:PORT, as 127.0.0.1:9100\n");
}

// Debian's prometheus, scraping usprobe every second on the loopback address, answers its query
// API with the count.
TEST(CliServe, APrometheusServerScrapesTheCounts) {
  const char *prometheus = "/usr/bin/prometheus";
  if (access(prometheus, X_OK) != 0)
    GTEST_SKIP() << "prometheus is not installed (scripts/setup installs Debian's)";
  e2e::TempDir dir;
  const int port = free_port(), web = free_port();
  std::ofstream(dir.file("prometheus.yml"))
      << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
      << "scrape_configs:\n  - job_name: usprobe\n    static_configs:\n"
      << "      - targets: ['127.0.0.1:" << port << "']\n";
  // Its log into a file: nothing reads a pipe of it while the test waits.
  Process server({"/bin/sh", "-c",
                  fmt::format("exec {} --config.file={} --storage.tsdb.path={} "
                              "--web.listen-address=127.0.0.1:{} >{} 2>&1",
                              prometheus, dir.file("prometheus.yml"), dir.file("data"), web,
                              dir.file("prometheus.log"))});
  const std::string probe = e2e::target() + std::string(":e2e_work");
  std::vector<std::string> argv = {
      e2e::cli(), "count", "--serve", fmt::format("127.0.0.1:{}", port), probe, "--"};
  for (const std::string &a : waiting_command(1234, dir.file("go"))) argv.push_back(a);
  Process usprobe(argv);
  ASSERT_TRUE(usprobe.wait_for_stdout("calls 1234", 30s)) << usprobe.finish().describe();
  std::string value, answer;
  for (int i = 0; i < 300 && value != "1234"; ++i) {  // 30 s at most
    std::this_thread::sleep_for(100ms);
    Response r = http_get(web, "/api/v1/query?query=usprobe_hits_total");
    if (r.status != 200) continue;
    answer = r.body;
    Json j = Json::parse(r.body, nullptr, false);
    if (j.is_discarded() || j["data"]["result"].empty()) continue;
    const Json &first = j["data"]["result"][0];
    if (first["metric"].value("probe", "") == probe) value = first["value"][1].get<std::string>();
  }
  std::ofstream(dir.file("go")).put('\n');
  Output done = usprobe.finish();
  EXPECT_EQ(done.exit_code(), 0) << done.describe();
  EXPECT_EQ(value, "1234") << "Prometheus's last answer: " << answer;
}

}  // namespace
