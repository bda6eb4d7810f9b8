// usprobe_attach_bench: what attaching to a running process costs (`usprobe count -p PID`,
// tools/usprobe/target/attached.cc and inject.cc), measured from outside on a running
// bench/attach_bench_target (DESIGN.md, "Measuring"; scripts/bench runs it).
//
// 1. Time to probe in place. Start the command, then read the target's code through /proc/PID/mem
//    every 250 us until the first byte of the probed function changes: bench_fn for one probe
//    (`usprobe count -p PID exe:bench_fn`), malloc and free for `libc:*` (both must change). The
//    engine first writes int3 on every site of the batch (the probe is live from then on) and
//    then the jumps: "live" is the first change, "jump" the first byte 0xe9. The same for
//    `bpftrace -p PID` with one uprobe on bench_fn (the kernel's uprobe shows as int3).
//    Goals: 1 probe <= 100 ms, libc:* <= 1 s.
// 2. The longest stop of a target thread. The target's main thread (the one the injector seizes)
//    and another thread each sleep 200 us in a loop and keep their largest gap beyond the sleep;
//    read from the command's start until 20 ms after the probe is in place, then, as a baseline,
//    for as long again with nothing attaching, then during the detach (SIGINT to the command).
//    Goal: the attach adds <= 5 ms. The main thread's largest gap also dates the seize, which
//    splits the time to live into: command start to seize (the CLI: checks, probe resolution,
//    reading the agent), the seize itself, and from its end to live (the bootstrap thread's dlopen
//    of the agent and its batch attach, which the agent reports as "N probes attached in X ms").
// 3. Per-hit cost. A thread of the target calls bench_fn in a loop for a window (0.5 s): plain,
//    under `usprobe count -p PID exe:bench_fn`, and in a copy launched by
//    `usprobe count exe:bench_fn -- attach_bench_target`, ns per call in the calling thread's CPU
//    time (a busy machine's preemptions left out); rounds alternate, medians are printed,
//    and every count is checked against the calls made. Goal: attached / launched about 1.0.
//
//   usprobe_attach_bench USPROBE TARGET [--runs=N] [--rounds=N] [--window-ms=MS] [--no-bpftrace]
//
// Every process it starts is stopped before it exits (and killed with it: PR_SET_PDEATHSIG).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr uint8_t kJmp = 0xe9, kInt3 = 0xcc;

long long now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}
double ms_since(long long t0) {
  return static_cast<double>(now_ns() - t0) / 1e6;
}
void sleep_us(long us) {
  timespec ts{us / 1000000, (us % 1000000) * 1000};
  nanosleep(&ts, nullptr);
}

std::vector<pid_t> g_children;  // started and not yet reaped
std::string g_dir;              // the temporary folder, removed at the end, also by die()

void remove_dir() {
  if (g_dir.empty()) return;
  for (const char *name : {"/stderr", "/report.json"}) std::remove((g_dir + name).c_str());
  ::rmdir(g_dir.c_str());
}

void reap(pid_t pid) {
  g_children.erase(std::remove(g_children.begin(), g_children.end(), pid), g_children.end());
}

void kill_all() {
  for (pid_t pid : g_children) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  g_children.clear();
}

[[noreturn]] __attribute__((format(printf, 1, 2))) void die(const char *format, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "usprobe_attach_bench: ");
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fprintf(stderr, "\n");
  kill_all();
  remove_dir();
  std::exit(1);
}

std::string read_text(const std::string &path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string last_lines(const std::string &text, int n) {
  size_t at = text.size();
  for (int i = 0; i <= n; ++i) {
    if (at == 0) return text;
    at = text.rfind('\n', at - 1);
    if (at == std::string::npos) return text;
  }
  return text.substr(at + 1);
}

// A process this benchmark started: with pipes on its stdin and stdout when it is driven.
struct Child {
  pid_t pid = -1;
  int in = -1, out = -1;
  std::string buffered;
  std::string stderr_path;
};

Child spawn(const std::vector<std::string> &argv, bool driven, const std::string &stderr_path) {
  int to[2] = {-1, -1}, from[2] = {-1, -1};
  if (driven && (::pipe2(to, O_CLOEXEC) != 0 || ::pipe2(from, O_CLOEXEC) != 0))
    die("pipe2: %s", std::strerror(errno));
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) die("fork: %s", std::strerror(errno));
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    int null = ::open("/dev/null", O_RDWR);
    int err = stderr_path.empty() ? null
                                  : ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(driven ? to[0] : null, 0);
    ::dup2(driven ? from[1] : null, 1);
    ::dup2(err, 2);
    std::vector<char *> args;
    for (const std::string &a : argv) args.push_back(const_cast<char *>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  g_children.push_back(pid);
  Child c;
  c.pid = pid;
  c.stderr_path = stderr_path;
  if (driven) {
    ::close(to[0]);
    ::close(from[1]);
    c.in = to[1];
    c.out = from[0];
  }
  return c;
}

// Whether the child has exited (reaped then); waits up to timeout_ms.
bool wait_exit(Child &c, int timeout_ms, int *status = nullptr) {
  long long deadline = now_ns() + timeout_ms * 1000000LL;
  for (;;) {
    int st = 0;
    pid_t r = ::waitpid(c.pid, &st, WNOHANG);
    if (r == c.pid) {
      reap(c.pid);
      if (status) *status = st;
      if (c.in >= 0) ::close(c.in);
      if (c.out >= 0) ::close(c.out);
      c.in = c.out = -1;
      return true;
    }
    if (now_ns() >= deadline) return false;
    sleep_us(1000);
  }
}

// Sends `sig` and waits for the exit; SIGKILL after timeout_ms.
void stop(Child &c, int sig, int timeout_ms) {
  if (c.pid < 0) return;
  ::kill(c.pid, sig);
  if (!wait_exit(c, timeout_ms)) {
    std::fprintf(stderr,
                 "usprobe_attach_bench: pid %d did not exit within %d ms of signal %d; "
                 "killed\n",
                 c.pid, timeout_ms, sig);
    ::kill(c.pid, SIGKILL);
    wait_exit(c, 10000);
  }
  c.pid = -1;
}

std::string read_line(Child &c, int timeout_ms, const char *what) {
  long long deadline = now_ns() + timeout_ms * 1000000LL;
  for (;;) {
    size_t eol = c.buffered.find('\n');
    if (eol != std::string::npos) {
      std::string line = c.buffered.substr(0, eol);
      c.buffered.erase(0, eol + 1);
      return line;
    }
    long long left = (deadline - now_ns()) / 1000000;
    pollfd p{c.out, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0)
      die("no answer from pid %d within %d ms (%s)", c.pid, timeout_ms, what);
    char buf[4096];
    ssize_t n = ::read(c.out, buf, sizeof buf);
    if (n <= 0) die("pid %d closed its output (%s)", c.pid, what);
    c.buffered.append(buf, static_cast<size_t>(n));
  }
}

// Sends one command line and returns the answer that starts with `answer`.
std::string ask(Child &c, const std::string &line, const char *answer, int timeout_ms = 5000) {
  std::string sent = line + "\n";
  if (::write(c.in, sent.data(), sent.size()) != static_cast<ssize_t>(sent.size()))
    die("writing to pid %d: %s", c.pid, std::strerror(errno));
  for (;;) {
    std::string got = read_line(c, timeout_ms, line.c_str());
    if (got.rfind(answer, 0) == 0) return got;
    if (got.rfind("error", 0) == 0) die("pid %d: %s", c.pid, got.c_str());
  }
}

// The running target, its addresses and their original first bytes.
struct Target {
  Child child;
  int mem = -1;  // /proc/PID/mem
  uint64_t bench_fn = 0, malloc_fn = 0, free_fn = 0;
  uint8_t bench_byte = 0, malloc_byte = 0, free_byte = 0;
  std::string exe;  // its /proc/PID/exe

  uint8_t byte(uint64_t address) const {
    uint8_t b = 0;
    if (::pread(mem, &b, 1, static_cast<off_t>(address)) != 1)
      die("reading pid %d's code at 0x%" PRIx64 ": %s", child.pid, address, std::strerror(errno));
    return b;
  }
};

struct Ready {
  pid_t pid = -1;
  uint64_t bench_fn = 0, malloc_fn = 0, free_fn = 0;
};
Ready parse_ready(const std::string &line) {
  Ready r;
  if (std::sscanf(line.c_str(),
                  "ready pid=%d bench_fn=%" SCNx64 " malloc=%" SCNx64 " free=%" SCNx64, &r.pid,
                  &r.bench_fn, &r.malloc_fn, &r.free_fn) != 4)
    die("unexpected first line from the target: %s", line.c_str());
  return r;
}

// Whether `address` lies in a mapping of pid whose path contains `name`.
bool mapped_in(pid_t pid, uint64_t address, const char *name) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  while (std::getline(maps, line)) {
    uint64_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%" SCNx64 "-%" SCNx64, &lo, &hi) == 2 && address >= lo &&
        address < hi)
      return line.find(name) != std::string::npos;
  }
  return false;
}

Target start_target(const std::string &program) {
  Target t;
  t.child = spawn({program}, true, "");
  Ready r = parse_ready(read_line(t.child, 5000, "ready"));
  if (r.pid != t.child.pid) die("the target says pid %d, not %d", r.pid, t.child.pid);
  t.bench_fn = r.bench_fn;
  t.malloc_fn = r.malloc_fn;
  t.free_fn = r.free_fn;
  if (!mapped_in(r.pid, t.malloc_fn, "libc.so") || !mapped_in(r.pid, t.free_fn, "libc.so"))
    die("the target's malloc (0x%" PRIx64 ") or free (0x%" PRIx64 ") is not in its libc",
        t.malloc_fn, t.free_fn);
  char path[4096];
  ssize_t n =
      ::readlink(("/proc/" + std::to_string(r.pid) + "/exe").c_str(), path, sizeof path - 1);
  if (n <= 0) die("readlink /proc/%d/exe: %s", r.pid, std::strerror(errno));
  t.exe.assign(path, static_cast<size_t>(n));
  std::string mem = "/proc/" + std::to_string(r.pid) + "/mem";
  t.mem = ::open(mem.c_str(), O_RDONLY | O_CLOEXEC);
  if (t.mem < 0) die("%s: %s", mem.c_str(), std::strerror(errno));
  t.bench_byte = t.byte(t.bench_fn);
  t.malloc_byte = t.byte(t.malloc_fn);
  t.free_byte = t.byte(t.free_fn);
  for (uint8_t b : {t.bench_byte, t.malloc_byte, t.free_byte})
    if (b == kJmp || b == kInt3) die("the target's code is patched before anything attached");
  return t;
}

// The state letter of /proc/PID/task/TID/stat ('t': stopped by a tracer); 0 when unreadable.
char thread_state(const std::string &stat_path) {
  std::string stat = read_text(stat_path);
  size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() ? stat[paren + 2] : 0;
}

// Asks the target to exit (killed if it does not within 5 s).
void quit(Target &t) {
  const std::string line = "quit\n";
  if (::write(t.child.in, line.data(), line.size()) < 0 || !wait_exit(t.child, 5000))
    stop(t.child, SIGKILL, 5000);
  ::close(t.mem);
  t.mem = -1;
}

struct Gaps {
  double main_us = 0, other_us = 0;
  long long main_at = 0;
};
Gaps read_gaps(Target &t) {
  std::string line = ask(t.child, "gaps", "gaps ");
  Gaps g;
  long long other_at = 0;
  if (std::sscanf(line.c_str(), "gaps main=%lf at=%lld other=%lf at=%lld", &g.main_us, &g.main_at,
                  &g.other_us, &other_at) != 4)
    die("unexpected answer from the target: %s", line.c_str());
  return g;
}
void reset_gaps(Target &t) {
  ask(t.child, "reset", "ok");
}

// One attach, as the target sees it.
struct Run {
  double live_ms = -1, jump_ms = -1;  // from the command's start; -1: not seen
  Gaps during, baseline, detach;
  // When the injector's stop of the main thread began and ended ('t' in /proc/PID/task/PID/stat,
  // polled with the code), from the command's start; -1: not seen between two polls.
  double seize_ms = -1, released_ms = -1;
  double agent_ms = -1;  // the agent's "N probes attached in X ms"
  long probes = -1, int3 = -1;
};

enum class Tool { kUsprobe, kBpftrace };

// Starts the command, waits until every watched function's first byte changed (live) and, for
// usprobe, became a jump (at most 3 s more), reads the gaps, measures the baseline, then stops the
// command and checks that the original bytes are back.
Run attach_once(Target &t, Tool tool, const std::vector<std::string> &argv,
                const std::vector<std::pair<uint64_t, uint8_t>> &watched,
                const std::string &stderr_path) {
  Run run;
  reset_gaps(t);
  const long long t0 = now_ns();
  Child c = spawn(argv, false, stderr_path);
  long long jump_deadline = 0;
  const std::string stat_path =
      "/proc/" + std::to_string(t.child.pid) + "/task/" + std::to_string(t.child.pid) + "/stat";
  for (;;) {
    if (run.released_ms < 0) {
      bool traced = thread_state(stat_path) == 't';
      if (traced && run.seize_ms < 0) run.seize_ms = ms_since(t0);
      if (!traced && run.seize_ms >= 0) run.released_ms = ms_since(t0);
    }
    bool changed = true, jumps = true;
    for (auto [address, original] : watched) {
      uint8_t b = t.byte(address);
      changed = changed && b != original;
      jumps = jumps && b == kJmp;
    }
    if (changed && run.live_ms < 0) {
      run.live_ms = ms_since(t0);
      jump_deadline = now_ns() + 3000000000LL;
    }
    if (jumps) run.jump_ms = ms_since(t0);
    if (run.live_ms >= 0 && (tool == Tool::kBpftrace || jumps || now_ns() >= jump_deadline)) break;
    int status = 0;
    if (wait_exit(c, 0, &status))
      die("%s exited (status %d) before its probe was in place:\n%s", argv[0].c_str(), status,
          last_lines(read_text(stderr_path), 8).c_str());
    if (ms_since(t0) > 30000) die("%s: no probe in place after 30 s", argv[0].c_str());
    sleep_us(250);
  }
  sleep_us(20000);
  run.during = read_gaps(t);
  const long long window_us = (now_ns() - t0) / 1000;

  reset_gaps(t);
  sleep_us(window_us);
  run.baseline = read_gaps(t);

  reset_gaps(t);
  stop(c, SIGINT, 15000);
  long long restored_by = now_ns() + 5000000000LL;
  for (;;) {
    bool back = true;
    for (auto [address, original] : watched) back = back && t.byte(address) == original;
    if (back) break;
    if (now_ns() >= restored_by)
      die("%s ended but the target's code is still patched", argv[0].c_str());
    sleep_us(1000);
  }
  run.detach = read_gaps(t);

  if (tool == Tool::kUsprobe) {
    std::string err = read_text(stderr_path);
    static const std::regex notice(
        R"(([0-9]+)(?: of [0-9]+)? probes attached in ([0-9.]+) ms \(([0-9]+) int3\))");
    std::smatch m;
    if (std::regex_search(err, m, notice)) {
      run.probes = std::atol(m[1].str().c_str());
      run.agent_ms = std::atof(m[2].str().c_str());
      run.int3 = std::atol(m[3].str().c_str());
    }
  }
  return run;
}

double median(std::vector<double> v) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}
double maximum(const std::vector<double> &v) {
  return v.empty() ? -1 : *std::max_element(v.begin(), v.end());
}
template <typename F>
std::vector<double> column(const std::vector<Run> &runs, F f) {
  std::vector<double> out;
  for (const Run &r : runs)
    if (double v = f(r); v >= 0) out.push_back(v);
  return out;
}

const char *verdict(double value, double goal) {
  return value <= goal ? "met" : "MISSED";
}

void print_times(const char *label, const std::vector<double> &v, const char *goal_text,
                 double goal) {
  if (v.empty()) {
    std::printf("  %-42s %10s\n", label, "not seen");
    return;
  }
  std::printf("  %-42s %8.1f ms %8.1f ms", label, median(v), maximum(v));
  if (goal_text) std::printf("   goal %s: %s", goal_text, verdict(median(v), goal));
  std::printf("\n");
}

void print_gaps(const char *label, const std::vector<Run> &runs, Gaps Run::*which) {
  std::vector<double> main_us = column(runs, [&](const Run &r) { return (r.*which).main_us; });
  std::vector<double> other_us = column(runs, [&](const Run &r) { return (r.*which).other_us; });
  std::printf("  %-42s %8.2f ms %8.2f ms %8.2f ms %8.2f ms\n", label, median(main_us) / 1e3,
              maximum(main_us) / 1e3, median(other_us) / 1e3, maximum(other_us) / 1e3);
}

struct Rate {
  double ns_per_call = 0;
  long calls = 0;
};
Rate measure_rate(Child &c, int window_ms) {
  std::string line = ask(c, "rate " + std::to_string(window_ms), "rate ", window_ms + 10000);
  Rate r;
  if (std::sscanf(line.c_str(), "rate ns_per_call=%lf calls=%ld", &r.ns_per_call, &r.calls) != 2)
    die("unexpected answer: %s", line.c_str());
  return r;
}

// The first "hits":N of a `usprobe count --json` report.
long report_hits(const std::string &path) {
  std::string text = read_text(path);
  size_t at = text.find("\"hits\":");
  return at == std::string::npos ? -1 : std::atol(text.c_str() + at + 7);
}

void check_hits(const char *what, const std::string &report, long calls) {
  long hits = report_hits(report);
  if (hits != calls)
    die("%s counted %ld hits of bench_fn, not the %ld calls made (%s)", what, hits, calls,
        report.c_str());
}

struct Options {
  std::string usprobe, target;
  int runs = 5, rounds = 3, window_ms = 500;
  bool bpftrace = true;
};

}  // namespace

int main(int argc, char **argv) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--runs=", 0) == 0)
      o.runs = std::atoi(a.c_str() + 7);
    else if (a.rfind("--rounds=", 0) == 0)
      o.rounds = std::atoi(a.c_str() + 9);
    else if (a.rfind("--window-ms=", 0) == 0)
      o.window_ms = std::atoi(a.c_str() + 12);
    else if (a == "--no-bpftrace")
      o.bpftrace = false;
    else if (a.rfind("--", 0) == 0)
      positional.clear(), positional.resize(3);  // unknown: usage
    else
      positional.push_back(a);
  }
  if (positional.size() != 2 || o.runs < 1 || o.rounds < 1 || o.window_ms < 1) {
    std::fprintf(stderr,
                 "usage: usprobe_attach_bench USPROBE TARGET [--runs=N] [--rounds=N] "
                 "[--window-ms=MS] [--no-bpftrace]\n");
    return 64;
  }
  o.usprobe = positional[0];
  o.target = positional[1];
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, [](int) { kill_all(), _exit(130); });

  char dir_template[] = "/tmp/usprobe-attach-bench.XXXXXX";
  if (!::mkdtemp(dir_template)) die("mkdtemp: %s", std::strerror(errno));
  g_dir = dir_template;
  const std::string err_path = g_dir + "/stderr", report = g_dir + "/report.json";

  // 1 and 2: each run on fresh processes, as a user's first attach finds them: one probe, then
  // one probe again (the agent stays loaded, dormant, between sessions: protocol/attach.h), then
  // bpftrace; libc:* on another fresh process.
  std::vector<Run> one, again, all, bpf;
  bool bpftrace = o.bpftrace && std::system("command -v bpftrace >/dev/null 2>&1") == 0;
  auto usprobe = [&](const Target &t, const char *probe) {
    return std::vector<std::string>{
        o.usprobe, "count", "-v", "-o", report, "-p", std::to_string(t.child.pid), probe};
  };
  for (int i = 0; i < o.runs; ++i) {
    Target t = start_target(o.target);
    one.push_back(attach_once(t, Tool::kUsprobe, usprobe(t, "exe:bench_fn"),
                              {{t.bench_fn, t.bench_byte}}, err_path));
    again.push_back(attach_once(t, Tool::kUsprobe, usprobe(t, "exe:bench_fn"),
                                {{t.bench_fn, t.bench_byte}}, err_path));
    if (bpftrace)
      bpf.push_back(attach_once(t, Tool::kBpftrace,
                                {"bpftrace", "-p", std::to_string(t.child.pid), "-e",
                                 "uprobe:" + t.exe + ":bench_fn { @ = count(); }"},
                                {{t.bench_fn, t.bench_byte}}, err_path));
    quit(t);
    Target l = start_target(o.target);
    all.push_back(attach_once(l, Tool::kUsprobe, usprobe(l, "libc:*"),
                              {{l.malloc_fn, l.malloc_byte}, {l.free_fn, l.free_byte}}, err_path));
    quit(l);
  }

  auto live = [](const Run &r) { return r.live_ms; };
  auto jump = [](const Run &r) { return r.jump_ms; };
  std::printf(
      "Attach: `usprobe count -p PID` into a running process (bench/attach_bench.cc; %d runs, each "
      "on fresh processes)\n",
      o.runs);
  std::printf("Time from the command's start until the probe is in place (/proc/PID/mem)\n");
  std::printf("  %-42s %11s %11s\n", "", "median", "max");
  print_times("usprobe exe:bench_fn, live (first byte)", column(one, live), "<= 100 ms", 100);
  print_times("usprobe exe:bench_fn, jump", column(one, jump), nullptr, 0);
  print_times("  again, agent already loaded, live", column(again, live), nullptr, 0);
  std::string all_label = "usprobe libc:*, live (malloc, free)";
  long probes =
      static_cast<long>(median(column(all, [](const Run &r) { return double(r.probes); })));
  if (probes > 0) all_label = "usprobe libc:* (" + std::to_string(probes) + " probes), live";
  print_times(all_label.c_str(), column(all, live), "<= 1 s", 1000);
  print_times("usprobe libc:*, jump (malloc, free)", column(all, jump), nullptr, 0);
  if (bpftrace)
    print_times("bpftrace -p, 1 uprobe on bench_fn (int3)", column(bpf, live), nullptr, 0);
  else
    std::printf("  bpftrace: not installed or --no-bpftrace; skipped\n");

  std::printf("\nWhere usprobe's time to live goes (median)\n");
  std::printf("  %-34s %11s %11s %11s %11s\n", "", "to seize", "seized", "to live", "agent batch");
  for (auto [label, runs] : {std::pair{"exe:bench_fn", &one}, std::pair{"bench_fn again", &again},
                             std::pair{"libc:*", &all}}) {
    double seize = median(column(*runs, [](const Run &r) { return r.seize_ms; }));
    double held = median(column(
        *runs, [](const Run &r) { return r.released_ms < 0 ? -1 : r.released_ms - r.seize_ms; }));
    double to_live = median(column(
        *runs, [](const Run &r) { return r.released_ms < 0 ? -1 : r.live_ms - r.released_ms; }));
    double agent = median(column(*runs, [](const Run &r) { return r.agent_ms; }));
    std::printf("  %-34s %8.1f ms %8.1f ms %8.1f ms %8.1f ms\n", label, seize, held, to_live,
                agent);
  }
  std::printf(
      "  (to seize: the CLI's checks, probe resolution, reading the agent; seized: the injector's\n"
      "   ptrace stop of the main thread, polled every 250 us; to live: the bootstrap thread, its\n"
      "   dlopen of the agent and the batch attach up to the first byte; agent batch: the agent's\n"
      "   own \"probes attached in\" figure, which runs on to the last jump)\n");

  std::printf(
      "\nLongest stop of a target thread, beyond a 200 us sleep (goal: the attach adds <= 5 ms)\n");
  std::printf("  %-42s %11s %11s %11s %11s\n", "", "main med", "main max", "other med",
              "other max");
  std::vector<std::pair<const char *, std::vector<Run> *>> sets = {
      {"usprobe exe:bench_fn", &one}, {"usprobe bench_fn again", &again}, {"usprobe libc:*", &all}};
  if (bpftrace) sets.push_back({"bpftrace -p", &bpf});
  for (auto [label, runs] : sets) {
    print_gaps((std::string(label) + ", during the attach").c_str(), *runs, &Run::during);
    print_gaps("  baseline, as long, no attach", *runs, &Run::baseline);
    print_gaps("  during the detach", *runs, &Run::detach);
  }
  std::printf("  %-42s %11s %11s\n", "added by the attach (during - baseline)", "median", "max");
  for (auto [label, runs] : sets) {
    std::vector<double> added = column(*runs, [](const Run &r) {
      return std::max({0.0, r.during.main_us - r.baseline.main_us,
                       r.during.other_us - r.baseline.other_us}) /
             1e3;
    });
    std::printf("  %-42s %8.2f ms %8.2f ms", label, median(added), maximum(added));
    if (std::string_view(label).starts_with("usprobe"))
      std::printf("   goal <= 5 ms: %s", verdict(median(added), 5));
    std::printf("\n");
  }

  Target t = start_target(o.target);
  const std::string pid = std::to_string(t.child.pid);
  // 3: per-hit cost, plain / attached / launched, rounds alternating.
  std::vector<double> plain, attached, launched;
  for (int i = 0; i < o.rounds; ++i) {
    plain.push_back(measure_rate(t.child, o.window_ms).ns_per_call);

    Child c = spawn({o.usprobe, "count", "--json", "-o", report, "-p", pid, "exe:bench_fn"}, false,
                    err_path);
    long long deadline = now_ns() + 30000000000LL;
    while (t.byte(t.bench_fn) != kJmp) {
      if (wait_exit(c, 0) || now_ns() >= deadline)
        die("usprobe count -p did not place its jump on bench_fn:\n%s",
            last_lines(read_text(err_path), 8).c_str());
      sleep_us(1000);
    }
    Rate r = measure_rate(t.child, o.window_ms);
    stop(c, SIGINT, 15000);
    check_hits("usprobe count -p", report, r.calls);
    attached.push_back(r.ns_per_call);
    while (t.byte(t.bench_fn) != t.bench_byte) sleep_us(1000);

    Child l = spawn({o.usprobe, "count", "--json", "-o", report, "exe:bench_fn", "--", o.target},
                    true, err_path);
    Ready ready = parse_ready(read_line(l, 10000, "ready, launched"));
    Target view;
    view.child.pid = ready.pid;
    std::string mem = "/proc/" + std::to_string(ready.pid) + "/mem";
    view.mem = ::open(mem.c_str(), O_RDONLY | O_CLOEXEC);
    if (view.mem < 0 || view.byte(ready.bench_fn) == t.bench_byte)
      die("the launched target's bench_fn is not patched");
    ::close(view.mem);
    r = measure_rate(l, o.window_ms);
    const std::string bye = "quit\n";
    if (::write(l.in, bye.data(), bye.size()) != static_cast<ssize_t>(bye.size()))
      die("writing to usprobe count: %s", std::strerror(errno));
    if (!wait_exit(l, 15000)) stop(l, SIGINT, 15000);
    check_hits("usprobe count -- attach_bench_target", report, r.calls);
    launched.push_back(r.ns_per_call);
  }
  double p = median(plain), a = median(attached), l = median(launched);
  std::printf(
      "\nPer-hit cost: bench_fn called in a loop by a target thread, %d ms windows, thread CPU "
      "time, median of %d (counts checked)\n",
      o.window_ms, o.rounds);
  std::printf("  %-42s %8.2f ns/call\n", "plain", p);
  std::printf("  %-42s %8.2f ns/call %+8.2f ns per hit\n", "attached (usprobe count -p)", a, a - p);
  std::printf("  %-42s %8.2f ns/call %+8.2f ns per hit\n", "launched (usprobe count -- target)", l,
              l - p);
  std::printf("  %-42s %8.2f        goal about 1.0: %s\n", "attached / launched, per call", a / l,
              (a / l >= 0.9 && a / l <= 1.1) ? "met" : "MISSED");

  quit(t);
  kill_all();
  remove_dir();
  return 0;
}
