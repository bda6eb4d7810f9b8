// usprobe_bench: what one probe hit costs, every path side by side in one run (DESIGN.md,
// "Measuring"). Each benchmark is a loop calling a tiny function of libusprobe_targets.so through a
// volatile function pointer; its time per iteration is the ns per call. Probes are attached once
// per benchmark run (before the timed loop) and their counts checked after it.
//
//   raw_trap/own_handler       `int3; lea 1(%rdi),%rax; ret` with a do-nothing SA_SIGINFO SIGTRAP
//                              handler of ours: the floor of any int3 scheme. Runs before usprobe
//                              installs its own SIGTRAP handler (our handler is restored after).
//   kernel_uprobe/tgt_counted  the kernel's uprobe on tgt_counted via perf_event_open (skipped,
//                              with the reason, when the kernel refuses). Never at the same time as
//                              a usprobe probe on that site.
//   plain/tgt_counted          no probe: the baseline of the entry probes
//   usprobe/entry_counter      entry probe on tgt_counted, built-in counter (consumer NULL)
//   usprobe/entry_callback     entry probe on tgt_counted, a C callback summing usprobe_arg(hit, 0)
//   usprobe/entry_callback_gpr the same callback attached with USPROBE_GENERAL_REGS_ONLY (no vector
//                              save; what the CLI's agent uses)
//   plain/tgt_counted_mid      no probe: the baseline of the instruction probe
//   usprobe/insn_counter       instruction-flavour probe at tgt_counted_mid+0x7, built-in counter
//   usprobe/int3_entry_counter usprobe_attach_ex(USPROBE_FORCE_INT3) on tgt_counted, counter
//   plain/bench_punned, usprobe/punned_entry_counter   an entry probe on a punned jump (its
//                              displacement borrows the next instruction's bytes; the jump enters a
//                              stub, which jumps on to the trampoline), built-in counter
//   plain/bench_indirect, usprobe/one_insn_counter     an instruction probe whose jump covers the
//                              probed instruction alone (the function jumps indirectly)
//   raw_trap/under_remap       the raw trap (own handler, before usprobe) while another thread
//                              maps this program's file executable and unmaps it, 2,000 times a
//                              second: what such a writer costs any trapping thread
//   usprobe/int3_under_remap   the int3 path under the same writer, which also calls
//                              usprobe_notify_mapping() after each map and unmap (each call
//                              republishes the mapping table the trap handler reads)
//   usprobe/int3_under_remap_flat_out  the same with the writer never pausing
//   usprobe/return_counter     return probe on tgt_counted ("uretprobe:" prefix, consumer NULL):
//                              the built-in counter counts returns
//   usprobe/entry_return_session  entry and return probe on tgt_counted, plain C callbacks: the
//                              entry handler stores rdtsc in usprobe_session(), the return handler
//                              adds the cycles since to a sum
//   kernel_uretprobe/tgt_counted  the kernel's uretprobe on tgt_counted via perf_event_open
//   raw_trap/via_usprobe       the raw trap again, now that usprobe's handler sits in front of ours
//                              and forwards it (not a usprobe site): the toll on foreign traps
//   plain/usdt_tick            no probe: usdt_tick (bench/usdt_tick.c: nop, lea 1(%rdi),%rax, ret),
//                              whose nop is the one site of the USDT probe usprobe_bench:tick
//   usprobe/usdt_counter       "usdt:exe:usprobe_bench:tick", built-in counter (consumer NULL)
//   usprobe/usdt_arg           the same probe, a C callback summing usprobe_usdt_arg(hit, 0) (the
//                              argument's spec, -8@%rdi, evaluated at each hit: what `usprobe trace
//                              '... "%d", arg0'` reads)
//   usprobe/usdt_arg_gpr       the same callback attached with USPROBE_GENERAL_REGS_ONLY (what the
//                              CLI's agent uses)
//   kernel_uprobe/usdt_tick    the kernel's uprobe at the file offset of the USDT site's nop (what
//                              bpftrace's usdt: probe places)
//   (the usdt rows are left out when the build had no <sys/sdt.h>)
//
// Each probe case is first tried in a forked child (1000 calls on a dirty stack): a case that
// crashes or miscounts there is skipped here, with the reason, instead of killing the run.
//
// Then a table: median ns/call over the repetitions, ns added over the plain call, and the goals.
// Our own flags (everything else goes to Google Benchmark):
//   --out=FILE   also write the table there: JSON if FILE ends in .json, else markdown
//   --wall       the table uses real time per call; by default it uses the thread's CPU time
//                (user + kernel time of the calling thread, so traps count in full), which on a
//                shared 2-core VM varies far less than wall time (cv ~1% vs ~7-10%)
// Defaults unless given: --benchmark_repetitions=7 --benchmark_min_time=0.2.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <map>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "targets/targets.h"
#include "usprobe/usprobe.h"
#ifdef USPROBE_BENCH_USDT
#include "usdt_tick.h"
#endif
#ifdef USPROBE_BENCH_KERNEL_UPROBE
#include "support/kernel_uprobe.h"
#endif

// The raw trap: same shape as tgt_counted (returns x + 1) with an int3 first. Hidden, so the
// address is the code itself, never a PLT stub.
extern "C" long bench_raw_trap(long x);
asm(R"(
  .text
  .p2align 4
  .globl bench_raw_trap
  .hidden bench_raw_trap
  .type bench_raw_trap, @function
bench_raw_trap:
  int3
  lea 1(%rdi), %rax
  ret
  .size bench_raw_trap, .-bench_raw_trap
)");

// The jump paths that write only the probed instruction (issue 12), each x + 1 like tgt_counted:
// bench_punned's entry window would cover the branch target at +3, so its 3-byte first
// instruction gets a punned jump (which enters a stub that jumps on to the trampoline);
// bench_indirect jumps indirectly, so its instruction at +9 (lea with a disp32, 7 bytes) gets a
// jmp rel32 over that instruction alone. Their own plain calls are the baselines.
extern "C" long bench_punned(long x);
extern "C" long bench_indirect(long x);
extern "C" const char bench_indirect_site[];
asm(R"(
  .text
  .p2align 4
  .globl bench_punned
  .hidden bench_punned
  .type bench_punned, @function
bench_punned:
  mov %rdi, %rax
1:
  add $1, %rax
  ret
  jmp 1b
  .size bench_punned, .-bench_punned
  int3; int3; int3; int3; int3; int3; int3; int3

  .p2align 4
  .globl bench_indirect
  .hidden bench_indirect
  .type bench_indirect, @function
bench_indirect:
  lea 2f(%rip), %rcx
  jmp *%rcx
2:
  .globl bench_indirect_site
  .hidden bench_indirect_site
bench_indirect_site:
  .byte 0x48, 0x8d, 0x87, 0x01, 0x00, 0x00, 0x00   # lea 0x1(%rdi),%rax with a disp32
  ret
  .size bench_indirect, .-bench_indirect
)");

namespace {

using Fn = long (*)(long);

constexpr const char *kLib = "libusprobe_targets.so";

// ---- Problems found while running, repeated under the table -------------------------------------

std::vector<std::string> g_warnings;
const char *g_current = "";  // the benchmark running (State::name() is newer than 1.7.1)

__attribute__((format(printf, 1, 2))) void warn(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "WARNING: %s\n", buf);
  if (std::find(g_warnings.begin(), g_warnings.end(), buf) == g_warnings.end())
    g_warnings.emplace_back(buf);
}

// ---- The timed loop -----------------------------------------------------------------------------

// One warm-up call (the thread's first hit registers it with usprobe: a few system calls), then
// one call per iteration, each taking the previous result: f(1), f(2), ..., f(N). So a probe sees
// N + 1 hits and its first arguments sum to 0 + 1 + ... + N.
constexpr uint64_t kWarmup = 1;

void call_loop(benchmark::State &state, Fn f) {
  Fn volatile vf = f;
  long x = vf(0);
  for (auto _ : state) x = vf(x);
  benchmark::DoNotOptimize(x);
  if (static_cast<uint64_t>(x) != state.iterations() + kWarmup)
    warn("%s: the probed function returned %ld, expected %" PRIu64, g_current, x,
         static_cast<uint64_t>(state.iterations() + kWarmup));
}

void check_count(benchmark::State &state, const char *what, uint64_t got,
                 const char *counter = "hits/call") {
  uint64_t want = static_cast<uint64_t>(state.iterations()) + kWarmup;
  state.counters[counter] =
      benchmark::Counter(static_cast<double>(got) / static_cast<double>(want));
  if (got != want) warn("%s: %s %" PRIu64 " != calls %" PRIu64, g_current, what, got, want);
}

// ---- Raw trap -----------------------------------------------------------------------------------

volatile uint64_t g_raw_traps = 0;

void raw_trap_handler(int, siginfo_t *, void *) {
  g_raw_traps = g_raw_traps + 1;  // an int3 leaves %rip after itself: returning continues
}

bool install_raw_trap_handler(struct sigaction *previous) {
  struct sigaction sa {};
  sa.sa_sigaction = raw_trap_handler;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  return sigaction(SIGTRAP, &sa, previous) == 0;
}

bool raw_trap_handler_is_current() {
  struct sigaction cur {};
  sigaction(SIGTRAP, nullptr, &cur);
  return (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == raw_trap_handler;
}

void BM_RawTrapOwnHandler(benchmark::State &state) {
  struct sigaction previous {};
  if (!install_raw_trap_handler(&previous)) {
    state.SkipWithError("sigaction(SIGTRAP) failed");
    return;
  }
  uint64_t before = g_raw_traps;
  call_loop(state, bench_raw_trap);
  check_count(state, "traps", g_raw_traps - before);
  sigaction(SIGTRAP, &previous, nullptr);
}

// Before usprobe installs its SIGTRAP handler (at its first attach), put ours in place, so that
// usprobe chains to it: raw_trap/via_usprobe then measures a foreign trap through usprobe's
// handler. Our handler stays installed behind usprobe's for the rest of the process.
bool g_chain_ready = false;

void prepare_usprobe() {
  static bool done = false;
  if (done) return;
  done = true;
  struct sigaction previous {};
  if (!install_raw_trap_handler(&previous)) return;
  // Make usprobe initialise (and install its handler) now, whatever benchmark comes first.
  usprobe_link *link = nullptr;
  char loc[128];
  std::snprintf(loc, sizeof loc, "%s:tgt_helper", kLib);
  if (usprobe_attach(loc, nullptr, &link) != 0) {
    warn("usprobe_attach(%s): %s", loc, usprobe_last_error());
    return;
  }
  usprobe_detach(link);
  // usprobe's handler is in front now, unless it had been installed before ours.
  g_chain_ready = !raw_trap_handler_is_current();
}

void BM_RawTrapViaUsprobe(benchmark::State &state) {
  prepare_usprobe();
  if (!g_chain_ready) {
    state.SkipWithError("usprobe's SIGTRAP handler does not chain to ours");
    return;
  }
  uint64_t before = g_raw_traps;
  call_loop(state, bench_raw_trap);
  check_count(state, "traps", g_raw_traps - before);
}

// ---- Plain calls and usprobe probes -------------------------------------------------------------

void BM_Plain(benchmark::State &state, Fn f) {
  call_loop(state, f);
}

thread_local uint64_t t_arg_sum = 0;

// Built general-regs-only so that it may also be attached with USPROBE_GENERAL_REGS_ONLY.
__attribute__((target("general-regs-only"))) void sum_arg0(usprobe_hit *hit, void *) {
  t_arg_sum += usprobe_arg(hit, 0);
}

// The same sum from a USDT probe's argument 0, as its note's spec says where it is.
__attribute__((target("general-regs-only"))) void sum_usdt_arg0(usprobe_hit *hit, void *) {
  t_arg_sum += usprobe_usdt_arg(hit, 0);
}

// An entry handler that stamps the call with the TSC, and a return handler that adds the cycles
// since: the shape of a latency histogram. Plain callbacks (they may use any register).
thread_local uint64_t t_session_cycles = 0;
thread_local uint64_t t_session_returns = 0;

void session_stamp(usprobe_hit *hit, void *) {
  if (uint64_t *s = usprobe_session(hit)) s[0] = __rdtsc();
}
void session_delta(usprobe_hit *hit, void *) {
  if (uint64_t *s = usprobe_session(hit)) {
    t_session_cycles += __rdtsc() - s[0];
    ++t_session_returns;
  }
}

// What a probe case sees returning: nothing (entry probes), returns only ("uretprobe:" with the
// built-in counter) or both, through the session callbacks.
enum class Returns { none, counter, session };

struct ProbeCase {
  std::string location;
  Fn fn;
  unsigned flags;
  bool callback;
  bool expect_int3;
  Returns returns = Returns::none;
  bool usdt_arg = false;  // with callback: sum usprobe_usdt_arg(hit, 0), not usprobe_arg(hit, 0)
};

const usprobe_consumer *consumer_of(const ProbeCase &pc) {
  static const usprobe_consumer kSumArg0{sum_arg0, nullptr, nullptr};
  static const usprobe_consumer kSumUsdtArg0{sum_usdt_arg0, nullptr, nullptr};
  static const usprobe_consumer kSession{session_stamp, nullptr, session_delta};
  if (pc.returns == Returns::session) return &kSession;
  if (pc.callback && pc.usdt_arg) return &kSumUsdtArg0;
  return pc.callback ? &kSumArg0 : nullptr;
}

// Whether `calls` calls left the counts they should on `link`: entries in hits (except for a
// returns-only probe, which counts returns instead), returns in return_hits.
bool counts_right(const ProbeCase &pc, usprobe_link *link, uint64_t calls) {
  bool ok = true;
  if (pc.returns != Returns::counter) ok = ok && usprobe_link_hits(link) == calls;
  if (pc.returns != Returns::none) ok = ok && usprobe_link_return_hits(link) == calls;
  return ok;
}

// Scribble on the stack below the caller, so that whatever the trampoline reads there without
// having written it first is garbage, not the zeroes of a fresh stack.
__attribute__((noinline)) void dirty_stack() {
  volatile unsigned char buf[16384];
  for (size_t i = 0; i < sizeof buf; ++i) buf[i] = static_cast<unsigned char>(0xa5 ^ i);
  asm volatile("" ::"r"(buf) : "memory");
}

// A probe that crashes the process would take the whole run, and its table, with it: each case
// is tried first in a forked child (1000 calls on a dirty stack), and a case that crashes or
// miscounts there is skipped here, with the reason. All children are forked at start-up, before
// this process uses usprobe at all: usprobe keeps /proc/self/mem open once opened, and a child
// writing through that inherited descriptor would patch this process, not itself.
std::map<std::string, std::string> g_verdicts;  // case key -> "" (ok) or why it is skipped

std::string case_key(const ProbeCase &pc) {
  return pc.location + (pc.flags & USPROBE_FORCE_INT3 ? " (int3)" : "") +
         (pc.flags & USPROBE_GENERAL_REGS_ONLY ? " (general regs)" : "") +
         (pc.callback ? (pc.usdt_arg ? " (usdt arg callback)" : " (callback)") : "") +
         (pc.returns == Returns::session ? " (session)" : "");
}

void try_in_child(const ProbeCase &pc) {
  std::string key = case_key(pc);
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    const struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    alarm(20);
    usprobe_link *link = nullptr;
    if (usprobe_attach_ex(pc.location.c_str(), consumer_of(pc), pc.flags, &link) != 0) _exit(3);
    Fn volatile vf = pc.fn;
    long x = 0;
    for (int i = 0; i < 1000; ++i) {
      dirty_stack();
      x = vf(x);
    }
    bool counted = counts_right(pc, link, 1000);
    usprobe_detach(link);
    _exit(x == 1000 && counted ? 0 : 4);
  }
  std::string verdict;
  int st = 0;
  if (pid > 0 && waitpid(pid, &st, 0) == pid) {
    if (WIFSIGNALED(st)) {
      char b[256];
      std::snprintf(b, sizeof b,
                    "%s: 1000 calls with the probe in a forked child died of "
                    "signal %d (%s); not run here",
                    key.c_str(), WTERMSIG(st), strsignal(WTERMSIG(st)));
      verdict = b;
    } else if (WEXITSTATUS(st) == 4) {
      verdict = key + ": wrong results or hit count in a forked check; not run here";
    }
    // Exit status 3 (attach failed): the benchmark reports usprobe's message itself.
  }
  if (!verdict.empty()) warn("%s", verdict.c_str());
  g_verdicts[key] = verdict;
}

void BM_Probe(benchmark::State &state, const ProbeCase &pc) {
  prepare_usprobe();
  if (const std::string &why = g_verdicts[case_key(pc)]; !why.empty()) {
    state.SkipWithError(why.c_str());
    return;
  }
  usprobe_link *link = nullptr;
  int rc = usprobe_attach_ex(pc.location.c_str(), consumer_of(pc), pc.flags, &link);
  if (rc != 0) {
    std::string why = "usprobe_attach_ex(" + pc.location + "): " + usprobe_last_error();
    state.SkipWithError(why.c_str());
    return;
  }
  if (usprobe_link_uses_int3(link) != (pc.expect_int3 ? 1 : 0))
    warn("%s: the probe took the %s path (%s)", g_current,
         usprobe_link_uses_int3(link) ? "int3" : "jump", usprobe_link_int3_reason(link));

  t_arg_sum = 0;
  t_session_cycles = 0;
  t_session_returns = 0;
  call_loop(state, pc.fn);

  if (pc.returns != Returns::counter) check_count(state, "hits", usprobe_link_hits(link));
  if (pc.returns != Returns::none)
    check_count(state, "returns", usprobe_link_return_hits(link), "returns/call");
  if (pc.returns == Returns::session) {
    check_count(state, "session returns", t_session_returns, "session returns/call");
    state.counters["cycles/call"] =
        benchmark::Counter(static_cast<double>(t_session_cycles) /
                           static_cast<double>(std::max<uint64_t>(t_session_returns, 1)));
  }
  if (uint64_t missed = usprobe_link_missed(link))
    warn("%s: %" PRIu64 " hits missed", g_current, missed);
  if (pc.callback) {
    uint64_t n = static_cast<uint64_t>(state.iterations());
    if (t_arg_sum != n * (n + 1) / 2)
      warn("%s: the callback summed %" PRIu64 ", expected %" PRIu64, g_current, t_arg_sum,
           n * (n + 1) / 2);
  }
  usprobe_detach(link);
}

// A thread that keeps changing the address space for as long as it lives: it maps this program's
// own file (executable, so usprobe's mapping table lists it), unmaps it, and so on, `per_second`
// times a second (0: without pause). With `notify`, it calls usprobe_notify_mapping() after each
// map and each unmap, and every call publishes a new mapping table under the sequence count the
// trap handler validates against. The file is not probed, so the site table stays as it is.
class Remapper {
 public:
  Remapper(bool notify, unsigned per_second) {
    thread_ = std::thread([this, notify, per_second] {
      started_ = true;
      const int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
      if (fd < 0) return;
      const auto period = per_second ? std::chrono::nanoseconds(1000000000 / per_second)
                                     : std::chrono::nanoseconds(0);
      auto next = std::chrono::steady_clock::now();
      while (!stop_.load(std::memory_order_relaxed)) {
        void *m = mmap(nullptr, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) break;
        if (notify) usprobe_notify_mapping();
        munmap(m, 4096);
        if (notify) usprobe_notify_mapping();
        remaps_.fetch_add(1, std::memory_order_relaxed);
        if (per_second) {
          next += period;
          std::this_thread::sleep_until(next);
        }
      }
      close(fd);
    });
    // A thread that has not run yet still has every signal blocked (pthread_create), and usprobe
    // refuses to place an int3 while a thread blocks SIGTRAP.
    while (!started_.load()) std::this_thread::yield();
    start_ = std::chrono::steady_clock::now();
  }
  Remapper(const Remapper &) = delete;
  Remapper &operator=(const Remapper &) = delete;
  ~Remapper() {
    stop_ = true;
    thread_.join();
  }
  double per_second() const {
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    return static_cast<double>(remaps_.load()) / secs;
  }

 private:
  std::atomic<bool> stop_{false}, started_{false};
  std::atomic<uint64_t> remaps_{0};
  std::chrono::steady_clock::time_point start_;
  std::thread thread_;
};

// The remapping writer of the two "under_remap" cases that are compared: 2,000 map/unmap cycles a
// second (with usprobe, 4,000 mapping tables published a second), far more than any program's
// dlopen and dlclose.
constexpr unsigned kRemapsPerSecond = 2000;

// The raw trap under the same writer, without usprobe: what the writer costs every trapping
// thread (its munmaps shoot down this thread's TLB), the baseline of usprobe/int3_under_remap.
void BM_RawTrapUnderRemap(benchmark::State &state) {
  struct sigaction previous {};
  if (!install_raw_trap_handler(&previous)) {
    state.SkipWithError("sigaction(SIGTRAP) failed");
    return;
  }
  uint64_t before = g_raw_traps;
  {
    Remapper writer(false, kRemapsPerSecond);
    call_loop(state, bench_raw_trap);
    state.counters["remaps/s"] = writer.per_second();
  }
  check_count(state, "traps", g_raw_traps - before);
  sigaction(SIGTRAP, &previous, nullptr);
}

// The int3 path while the writer maps, unmaps and notifies usprobe: `per_second` as Remapper.
void BM_Int3UnderRemap(benchmark::State &state, const ProbeCase &pc, unsigned per_second) {
  Remapper writer(true, per_second);
  BM_Probe(state, pc);
  state.counters["remaps/s"] = writer.per_second();
}

// ---- Kernel uprobe ------------------------------------------------------------------------------

// ret: the kernel's uretprobe (counts returns) instead of its uprobe. The probe goes on `site`
// (tgt_counted's entry, or the nop of usdt_tick's USDT site); `f` is the function called.
void BM_KernelUprobe(benchmark::State &state, bool ret, const void *site = nullptr,
                     Fn f = tgt_counted) {
#ifdef USPROBE_BENCH_KERNEL_UPROBE
  using usprobe::test::KernelUprobe;
  if (!site) site = reinterpret_cast<const void *>(&tgt_counted);
  auto where = usprobe::test::file_location_of(site);
  if (!where) {
    state.SkipWithError((std::string(g_current) + ": " + where.error()).c_str());
    return;
  }
  auto probe = KernelUprobe::open(where->path, where->offset, ret);
  if (!probe) {
    state.SkipWithError(
        ((ret ? "kernel uretprobe refused: " : "kernel uprobe refused: ") + probe.error()).c_str());
    return;
  }
  call_loop(state, f);
  check_count(state, ret ? "kernel uretprobe hits" : "kernel uprobe hits", probe->count());
#else
  (void)ret, (void)site, (void)f;
  state.SkipWithError("built without tests/support (kernel_uprobe.h)");
#endif
}

// ---- Collecting the results ---------------------------------------------------------------------

struct Result {
  std::vector<double> ns;   // one per repetition
  double median_agg = NAN;  // benchmark's own median aggregate, when only aggregates came
  std::string error;
  double median() const {
    if (ns.empty()) return median_agg;
    std::vector<double> v = ns;
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  }
  double min() const { return ns.empty() ? median_agg : *std::min_element(ns.begin(), ns.end()); }
  double max() const { return ns.empty() ? median_agg : *std::max_element(ns.begin(), ns.end()); }
};

std::map<std::string, Result> g_results;
bool g_wall = false;  // --wall: real time per call instead of the thread's CPU time

// Console output as usual, but with repetitions only the aggregates are shown; every run is kept.
class Collector : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run> &runs) override {
    std::vector<Run> shown;
    for (const Run &r : runs) {
      Result &res = g_results[r.run_name.function_name];
      double t = g_wall ? r.GetAdjustedRealTime() : r.GetAdjustedCPUTime();
      double ns = t * 1e9 / benchmark::GetTimeUnitMultiplier(r.time_unit);
      if (r.error_occurred) {
        res.error = r.error_message;
      } else if (r.run_type == Run::RT_Iteration) {
        res.ns.push_back(ns);
      } else if (r.aggregate_name == "median") {
        res.median_agg = ns;
      }
      if (r.error_occurred || r.run_type == Run::RT_Aggregate || r.repetitions <= 1)
        shown.push_back(r);
    }
    if (!shown.empty()) ConsoleReporter::ReportRuns(shown);
  }
};

// ---- The table ----------------------------------------------------------------------------------

struct Row {
  std::string name;
  std::string what;
  std::string baseline;  // name of the row this one adds to ("" = none)
};

const std::vector<Row> kRows = {
    {"plain/tgt_counted", "plain call of tgt_counted (no probe)", ""},
    {"usprobe/entry_counter", "entry probe, built-in counter", "plain/tgt_counted"},
    {"usprobe/entry_callback", "entry probe, C callback", "plain/tgt_counted"},
    {"usprobe/entry_callback_gpr", "entry probe, C callback, USPROBE_GENERAL_REGS_ONLY",
     "plain/tgt_counted"},
    {"plain/tgt_counted_mid", "plain call of tgt_counted_mid (no probe)", ""},
    {"usprobe/insn_counter", "instruction probe tgt_counted_mid+0x7, built-in counter",
     "plain/tgt_counted_mid"},
    {"plain/bench_punned", "plain call of bench_punned (no probe)", ""},
    {"usprobe/punned_entry_counter", "entry probe, punned jump + stub, built-in counter",
     "plain/bench_punned"},
    {"plain/bench_indirect", "plain call of bench_indirect (no probe)", ""},
    {"usprobe/one_insn_counter", "instruction probe, jump over one instruction, counter",
     "plain/bench_indirect"},
    {"raw_trap/own_handler", "raw int3 + SIGTRAP round trip (own handler only)",
     "plain/tgt_counted"},
    {"raw_trap/via_usprobe", "raw int3 + SIGTRAP, forwarded by usprobe's handler",
     "plain/tgt_counted"},
    {"usprobe/int3_entry_counter", "int3 path (USPROBE_FORCE_INT3) entry, built-in counter",
     "plain/tgt_counted"},
    {"raw_trap/under_remap", "raw int3 + SIGTRAP, another thread mapping and unmapping 2,000/s",
     "plain/tgt_counted"},
    {"usprobe/int3_under_remap", "int3 path, the same writer also notifying usprobe",
     "plain/tgt_counted"},
    {"usprobe/int3_under_remap_flat_out", "int3 path, a writer remapping and notifying flat out",
     "plain/tgt_counted"},
    {"kernel_uprobe/tgt_counted", "kernel uprobe (perf_event_open)", "plain/tgt_counted"},
    {"usprobe/return_counter", "return probe (uretprobe:), built-in counter", "plain/tgt_counted"},
    {"usprobe/entry_return_session", "entry + return probe, session: rdtsc delta",
     "plain/tgt_counted"},
    {"kernel_uretprobe/tgt_counted", "kernel uretprobe (perf_event_open)", "plain/tgt_counted"},
    {"plain/usdt_tick", "plain call of usdt_tick (USDT site, no probe)", ""},
    {"usprobe/usdt_counter", "USDT probe usprobe_bench:tick, built-in counter", "plain/usdt_tick"},
    {"usprobe/usdt_arg", "USDT probe, C callback reading usprobe_usdt_arg(hit, 0)",
     "plain/usdt_tick"},
    {"usprobe/usdt_arg_gpr", "USDT probe, the same callback, USPROBE_GENERAL_REGS_ONLY",
     "plain/usdt_tick"},
    {"kernel_uprobe/usdt_tick", "kernel uprobe on the USDT site's nop (perf_event_open)",
     "plain/usdt_tick"},
};

struct Goal {
  std::string name;
  std::string unit;  // "ns" or "x"
  double value = NAN;
  bool at_most = true;  // goal: value <= limit (else >=)
  double limit = 0;
  std::string note;  // why there is no value
  bool met() const { return !std::isnan(value) && (at_most ? value <= limit : value >= limit); }
};

double median_of(const std::string &name) {
  auto it = g_results.find(name);
  if (it == g_results.end() || !it->second.error.empty()) return NAN;
  return it->second.median();
}

double added(const std::string &name, const std::string &base) {
  return median_of(name) - median_of(base);
}

std::string why_missing(std::initializer_list<const char *> names) {
  for (const char *n : names) {
    auto it = g_results.find(n);
    if (it == g_results.end()) return std::string(n) + " did not run";
    if (!it->second.error.empty()) return std::string(n) + " skipped: " + it->second.error;
  }
  return "";
}

std::vector<Goal> goals() {
  std::vector<Goal> g;
  auto add = [&](std::string name, std::string unit, double v, bool at_most, double limit,
                 std::initializer_list<const char *> inputs) {
    Goal x{std::move(name), std::move(unit), v, at_most, limit, ""};
    if (std::isnan(v)) x.note = why_missing(inputs);
    g.push_back(std::move(x));
  };
  add("entry probe, built-in counter: ns added", "ns",
      added("usprobe/entry_counter", "plain/tgt_counted"), true, 5,
      {"usprobe/entry_counter", "plain/tgt_counted"});
  add("entry probe, C callback: ns added", "ns",
      added("usprobe/entry_callback", "plain/tgt_counted"), true, 10,
      {"usprobe/entry_callback", "plain/tgt_counted"});
  add("instruction probe, built-in counter: ns added", "ns",
      added("usprobe/insn_counter", "plain/tgt_counted_mid"), true, 30,
      {"usprobe/insn_counter", "plain/tgt_counted_mid"});
  add("int3 path / raw int3+SIGTRAP (ns per call)", "x",
      median_of("usprobe/int3_entry_counter") / median_of("raw_trap/own_handler"), true, 1.10,
      {"usprobe/int3_entry_counter", "raw_trap/own_handler"});
  add("int3 path / raw int3+SIGTRAP, both under a remapping writer", "x",
      median_of("usprobe/int3_under_remap") / median_of("raw_trap/under_remap"), true, 1.10,
      {"usprobe/int3_under_remap", "raw_trap/under_remap"});
  // ns per hit = ns added over the plain call. A usprobe hit too cheap to measure (<= 0.1 ns
  // after noise) is counted as 0.1 ns, which understates the ratio.
  double kernel = added("kernel_uprobe/tgt_counted", "plain/tgt_counted");
  double ours = added("usprobe/entry_counter", "plain/tgt_counted");
  add("kernel uprobe / usprobe entry probe (ns per hit)", "x", kernel / std::max(ours, 0.1), false,
      100, {"kernel_uprobe/tgt_counted", "usprobe/entry_counter", "plain/tgt_counted"});
  add("return probe, built-in counter: ns added", "ns",
      added("usprobe/return_counter", "plain/tgt_counted"), true, 15,
      {"usprobe/return_counter", "plain/tgt_counted"});
  double kernel_ret = added("kernel_uretprobe/tgt_counted", "plain/tgt_counted");
  double ours_ret = added("usprobe/return_counter", "plain/tgt_counted");
  add("kernel uretprobe / usprobe return probe (ns per hit)", "x",
      kernel_ret / std::max(ours_ret, 0.1), false, 80,
      {"kernel_uretprobe/tgt_counted", "usprobe/return_counter", "plain/tgt_counted"});
  // USDT (issue 15): the same few ns as a function-entry probe.
  if (g_results.count("plain/usdt_tick")) {
    add("USDT probe, built-in counter: ns added", "ns",
        added("usprobe/usdt_counter", "plain/usdt_tick"), true, 5,
        {"usprobe/usdt_counter", "plain/usdt_tick"});
    add("USDT probe, usprobe_usdt_arg(hit, 0) callback: ns added", "ns",
        added("usprobe/usdt_arg", "plain/usdt_tick"), true, 10,
        {"usprobe/usdt_arg", "plain/usdt_tick"});
    double kernel_usdt = added("kernel_uprobe/usdt_tick", "plain/usdt_tick");
    double ours_usdt = added("usprobe/usdt_counter", "plain/usdt_tick");
    add("kernel uprobe / usprobe USDT probe (ns per hit)", "x",
        kernel_usdt / std::max(ours_usdt, 0.1), false, 100,
        {"kernel_uprobe/usdt_tick", "usprobe/usdt_counter", "plain/usdt_tick"});
  }
  return g;
}

std::string fmt_num(double v, int prec = 2) {
  if (std::isnan(v)) return "-";
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

std::string fmt_goal_value(const Goal &g) {
  if (std::isnan(g.value)) return "n/a";
  return g.unit == "x" ? fmt_num(g.value, g.value >= 100 ? 0 : 2) + "x" : fmt_num(g.value) + " ns";
}

std::string fmt_goal_limit(const Goal &g) {
  std::string lim =
      g.unit == "x" ? fmt_num(g.limit, g.limit >= 100 ? 0 : 2) + "x" : fmt_num(g.limit, 0) + " ns";
  return (g.at_most ? "<= " : ">= ") + lim;
}

std::string status(const Goal &g) {
  if (std::isnan(g.value)) return "n/a (" + g.note + ")";
  return g.met() ? "met" : "MISSED";
}

std::string row_note(const Row &r) {
  auto it = g_results.find(r.name);
  if (it == g_results.end()) return "not run";
  if (!it->second.error.empty()) return "skipped: " + it->second.error;
  return "";
}

void print_table(std::FILE *out) {
  std::fprintf(out, "\n%-28s %-56s %10s %10s %10s %10s\n", "benchmark", "what", "ns/call",
               "added ns", "min", "max");
  std::fprintf(out, "%s\n", std::string(129, '-').c_str());
  for (const Row &r : kRows) {
    std::string note = row_note(r);
    if (note == "not run") continue;
    if (!note.empty()) {
      std::fprintf(out, "%-28s %-56s %s\n", r.name.c_str(), r.what.c_str(), note.c_str());
      continue;
    }
    const Result &res = g_results[r.name];
    double add = r.baseline.empty() ? NAN : added(r.name, r.baseline);
    std::fprintf(out, "%-28s %-56s %10s %10s %10s %10s\n", r.name.c_str(), r.what.c_str(),
                 fmt_num(res.median()).c_str(), fmt_num(add).c_str(), fmt_num(res.min()).c_str(),
                 fmt_num(res.max()).c_str());
  }
  std::fprintf(out, "\n%-52s %12s %10s  %s\n", "goal", "value", "goal", "status");
  std::fprintf(out, "%s\n", std::string(90, '-').c_str());
  for (const Goal &g : goals())
    std::fprintf(out, "%-52s %12s %10s  %s\n", g.name.c_str(), fmt_goal_value(g).c_str(),
                 fmt_goal_limit(g).c_str(), status(g).c_str());
  if (!g_warnings.empty()) {
    std::fprintf(out, "\nwarnings:\n");
    for (const auto &w : g_warnings) std::fprintf(out, "  %s\n", w.c_str());
  }
  std::fprintf(out,
               "\n(ns/call: %s per call, median over repetitions; added: over the plain call "
               "of the same function; ratios from this run only)\n",
               g_wall ? "real time" : "thread CPU time");
}

std::string json_str(const std::string &s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += c;
    }
  }
  return o + "\"";
}

std::string json_num(double v) {
  return std::isnan(v) || std::isinf(v) ? "null" : fmt_num(v, 3);
}

bool write_out(const std::string &path) {
  std::FILE *f = std::fopen(path.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "cannot write %s: %s\n", path.c_str(), std::strerror(errno));
    return false;
  }
  bool json = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  auto gs = goals();
  if (json) {
    std::fprintf(f, "{\n  \"time\": %s,\n  \"benchmarks\": [\n",
                 g_wall ? "\"real\"" : "\"thread_cpu\"");
    bool first = true;
    for (const Row &r : kRows) {
      std::string note = row_note(r);
      if (note == "not run") continue;
      const Result &res = g_results[r.name];
      bool ok = note.empty();
      std::fprintf(f,
                   "%s    {\"name\": %s, \"what\": %s, \"ns_per_call\": %s, \"added_ns\": %s, "
                   "\"min_ns\": %s, \"max_ns\": %s, \"repetitions\": %zu, \"skipped\": %s}",
                   first ? "" : ",\n", json_str(r.name).c_str(), json_str(r.what).c_str(),
                   json_num(ok ? res.median() : NAN).c_str(),
                   json_num(ok && !r.baseline.empty() ? added(r.name, r.baseline) : NAN).c_str(),
                   json_num(ok ? res.min() : NAN).c_str(), json_num(ok ? res.max() : NAN).c_str(),
                   res.ns.size(), ok ? "null" : json_str(res.error).c_str());
      first = false;
    }
    std::fprintf(f, "\n  ],\n  \"goals\": [\n");
    for (size_t i = 0; i < gs.size(); ++i) {
      const Goal &g = gs[i];
      std::fprintf(
          f, "    {\"name\": %s, \"unit\": %s, \"value\": %s, \"goal\": %s, \"met\": %s%s%s}%s\n",
          json_str(g.name).c_str(), json_str(g.unit).c_str(), json_num(g.value).c_str(),
          json_str(fmt_goal_limit(g)).c_str(),
          std::isnan(g.value) ? "null"
          : g.met()           ? "true"
                              : "false",
          g.note.empty() ? "" : ", \"note\": ", g.note.empty() ? "" : json_str(g.note).c_str(),
          i + 1 < gs.size() ? "," : "");
    }
    std::fprintf(f, "  ],\n  \"warnings\": [");
    for (size_t i = 0; i < g_warnings.size(); ++i)
      std::fprintf(f, "%s%s", i ? ", " : "", json_str(g_warnings[i]).c_str());
    std::fprintf(f, "]\n}\n");
  } else {
    std::fprintf(f, "| benchmark | ns/call (median) | ns added | min | max |\n");
    std::fprintf(f, "|---|---:|---:|---:|---:|\n");
    for (const Row &r : kRows) {
      std::string note = row_note(r);
      if (note == "not run") continue;
      if (!note.empty()) {
        std::fprintf(f, "| %s | %s | | | |\n", r.what.c_str(), note.c_str());
        continue;
      }
      const Result &res = g_results[r.name];
      std::fprintf(f, "| %s | %s | %s | %s | %s |\n", r.what.c_str(), fmt_num(res.median()).c_str(),
                   r.baseline.empty() ? "" : fmt_num(added(r.name, r.baseline)).c_str(),
                   fmt_num(res.min()).c_str(), fmt_num(res.max()).c_str());
    }
    std::fprintf(f, "\n| goal | value | target | status |\n|---|---:|---:|---|\n");
    for (const Goal &g : gs)
      std::fprintf(f, "| %s | %s | %s | %s |\n", g.name.c_str(), fmt_goal_value(g).c_str(),
                   fmt_goal_limit(g).c_str(), status(g).c_str());
    std::fprintf(f,
                 "\nns/call: %s per call, median over the repetitions of one run; ns added: "
                 "over the plain call of the same function.\n",
                 g_wall ? "real time" : "thread CPU time");
    if (!g_warnings.empty()) {
      std::fprintf(f, "\nWarnings:\n\n");
      for (const auto &w : g_warnings) std::fprintf(f, "- %s\n", w.c_str());
    }
  }
  std::fclose(f);
  return true;
}

// Whether Google Benchmark's --benchmark_filter (a regex, "-" in front to negate) selects `name`.
bool selected(const std::vector<std::string> &args, const std::string &name) {
  std::string filter;
  for (const auto &a : args)
    if (a.rfind("--benchmark_filter=", 0) == 0) filter = a.substr(19);
  if (filter.empty() || filter == "all") return true;
  bool negate = filter[0] == '-';
  if (negate) filter.erase(0, 1);
  try {
    return std::regex_search(name, std::regex(filter, std::regex::extended)) != negate;
  } catch (const std::regex_error &) {
    return true;
  }
}

bool has_flag(const std::vector<std::string> &args, const char *prefix) {
  return std::any_of(args.begin(), args.end(),
                     [&](const std::string &a) { return a.rfind(prefix, 0) == 0; });
}

}  // namespace

int main(int argc, char **argv) {
  // Our flags out, defaults in, the rest to Google Benchmark.
  std::string out_path;
  std::vector<std::string> args{argv[0]};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--out=", 0) == 0) {
      out_path = a.substr(6);
    } else if (a == "--out" && i + 1 < argc) {
      out_path = argv[++i];
    } else if (a == "--wall") {
      g_wall = true;
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: %s [--out=FILE.md|FILE.json] [--wall] [Google Benchmark flags]\n"
          "--wall: the table uses real time, not the thread's CPU time\n"
          "defaults: --benchmark_repetitions=7 --benchmark_min_time=0.2\n\n",
          argv[0]);
      args.push_back(a);
    } else {
      args.push_back(a);
    }
  }
  if (!has_flag(args, "--benchmark_repetitions")) args.emplace_back("--benchmark_repetitions=7");
  if (!has_flag(args, "--benchmark_min_time")) args.emplace_back("--benchmark_min_time=0.2");
  std::vector<char *> cargs;
  for (auto &a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  int bargc = static_cast<int>(args.size());
  benchmark::Initialize(&bargc, cargs.data());
  if (benchmark::ReportUnrecognizedArguments(bargc, cargs.data())) return 1;

  char mid[160];
  std::snprintf(mid, sizeof mid, "%s:tgt_counted_mid+%#" PRIx64, kLib, tgt_counted_mid_site_offset);
  const std::string entry = std::string(kLib) + ":tgt_counted";
  static const ProbeCase kEntryCounter{entry, tgt_counted, 0, false, false};
  static const ProbeCase kEntryCallback{entry, tgt_counted, 0, true, false};
  static const ProbeCase kEntryCallbackGpr{entry, tgt_counted, USPROBE_GENERAL_REGS_ONLY, true,
                                           false};
  static const ProbeCase kInsnCounter{mid, tgt_counted_mid, 0, false, false};
  static const ProbeCase kInt3Counter{entry, tgt_counted, USPROBE_FORCE_INT3, false, true};
  static const ProbeCase kPunnedCounter{"exe:bench_punned", bench_punned, 0, false, false};
  char one_insn[160];
  std::snprintf(one_insn, sizeof one_insn, "exe:bench_indirect+%#tx",
                bench_indirect_site - reinterpret_cast<const char *>(&bench_indirect));
  static const ProbeCase kOneInsnCounter{one_insn, bench_indirect, 0, false, false};
  static const ProbeCase kReturnCounter{"uretprobe:" + entry, tgt_counted, 0, false, false,
                                        Returns::counter};
  static const ProbeCase kEntryReturnSession{entry, tgt_counted, 0, false, false, Returns::session};
#ifdef USPROBE_BENCH_USDT
  const std::string usdt = "usdt:exe:usprobe_bench:tick";
  static const ProbeCase kUsdtCounter{usdt, usdt_tick, 0, false, false};
  static const ProbeCase kUsdtArg{usdt, usdt_tick, 0, true, false, Returns::none, true};
  static const ProbeCase kUsdtArgGpr{
      usdt, usdt_tick, USPROBE_GENERAL_REGS_ONLY, true, false, Returns::none, true};
#endif

  const std::pair<const char *, const ProbeCase *> kCases[] = {
      {"usprobe/entry_counter", &kEntryCounter},
      {"usprobe/entry_callback", &kEntryCallback},
      {"usprobe/entry_callback_gpr", &kEntryCallbackGpr},
      {"usprobe/insn_counter", &kInsnCounter},
      {"usprobe/int3_entry_counter", &kInt3Counter},
      {"usprobe/punned_entry_counter", &kPunnedCounter},
      {"usprobe/one_insn_counter", &kOneInsnCounter},
      {"usprobe/return_counter", &kReturnCounter},
      {"usprobe/entry_return_session", &kEntryReturnSession},
#ifdef USPROBE_BENCH_USDT
      {"usprobe/usdt_counter", &kUsdtCounter},
      {"usprobe/usdt_arg", &kUsdtArg},
      {"usprobe/usdt_arg_gpr", &kUsdtArgGpr},
#endif
  };
  for (const auto &[name, pc] : kCases)
    if (selected(args, name)) try_in_child(*pc);

  // Registration order is run order: the raw trap and the kernel uprobe come before usprobe's
  // first attach (before its SIGTRAP handler, and while tgt_counted's page is the file's).
  auto reg = [](const char *name, auto fn) {
    benchmark::RegisterBenchmark(name, [name, fn](benchmark::State &state) {
      g_current = name;
      fn(state);
    });
  };
  reg("raw_trap/own_handler", BM_RawTrapOwnHandler);
  reg("raw_trap/under_remap", BM_RawTrapUnderRemap);
  reg("kernel_uprobe/tgt_counted", [](benchmark::State &s) { BM_KernelUprobe(s, false); });
  reg("kernel_uretprobe/tgt_counted", [](benchmark::State &s) { BM_KernelUprobe(s, true); });
#ifdef USPROBE_BENCH_USDT
  reg("kernel_uprobe/usdt_tick", [](benchmark::State &s) {
    BM_KernelUprobe(s, false, reinterpret_cast<const void *>(usdt_tick_site), usdt_tick);
  });
#endif
  reg("plain/tgt_counted", [](benchmark::State &s) { BM_Plain(s, tgt_counted); });
  reg("usprobe/entry_counter", [](benchmark::State &s) { BM_Probe(s, kEntryCounter); });
  reg("usprobe/entry_callback", [](benchmark::State &s) { BM_Probe(s, kEntryCallback); });
  reg("usprobe/entry_callback_gpr", [](benchmark::State &s) { BM_Probe(s, kEntryCallbackGpr); });
  reg("plain/tgt_counted_mid", [](benchmark::State &s) { BM_Plain(s, tgt_counted_mid); });
  reg("usprobe/insn_counter", [](benchmark::State &s) { BM_Probe(s, kInsnCounter); });
  reg("usprobe/int3_entry_counter", [](benchmark::State &s) { BM_Probe(s, kInt3Counter); });
  reg("plain/bench_punned", [](benchmark::State &s) { BM_Plain(s, bench_punned); });
  reg("usprobe/punned_entry_counter", [](benchmark::State &s) { BM_Probe(s, kPunnedCounter); });
  reg("plain/bench_indirect", [](benchmark::State &s) { BM_Plain(s, bench_indirect); });
  reg("usprobe/one_insn_counter", [](benchmark::State &s) { BM_Probe(s, kOneInsnCounter); });
  reg("usprobe/int3_under_remap",
      [](benchmark::State &s) { BM_Int3UnderRemap(s, kInt3Counter, kRemapsPerSecond); });
  reg("usprobe/int3_under_remap_flat_out",
      [](benchmark::State &s) { BM_Int3UnderRemap(s, kInt3Counter, 0); });
  reg("usprobe/return_counter", [](benchmark::State &s) { BM_Probe(s, kReturnCounter); });
  reg("usprobe/entry_return_session",
      [](benchmark::State &s) { BM_Probe(s, kEntryReturnSession); });
#ifdef USPROBE_BENCH_USDT
  reg("plain/usdt_tick", [](benchmark::State &s) { BM_Plain(s, usdt_tick); });
  reg("usprobe/usdt_counter", [](benchmark::State &s) { BM_Probe(s, kUsdtCounter); });
  reg("usprobe/usdt_arg", [](benchmark::State &s) { BM_Probe(s, kUsdtArg); });
  reg("usprobe/usdt_arg_gpr", [](benchmark::State &s) { BM_Probe(s, kUsdtArgGpr); });
#endif
  reg("raw_trap/via_usprobe", BM_RawTrapViaUsprobe);

  Collector reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  std::fflush(stdout);
  print_table(stdout);
  if (!out_path.empty()) {
    if (!write_out(out_path)) return 1;
    std::printf("table written to %s\n", out_path.c_str());
  }
  return 0;
}
