// usprobe_hitloop MODE [N]: N calls of a probed function in one loop (hit_loop), for instruction
// counts under valgrind, which are stable where times are not:
//
//   valgrind --tool=callgrind --smc-check=all --toggle-collect=hit_loop
//       --callgrind-out-file=/tmp/cg.MODE build/bench/usprobe_hitloop MODE 100000
//
// Ir(hit_loop, MODE) - Ir(hit_loop, plain, mid_plain or usdt_plain) over N = instructions a hit
// adds (the trampoline plus dispatch plus consumers). callgrind_annotate /tmp/cg.MODE splits them
// by function (the trampoline shows as an address in an anonymous mapping).
//
// Modes: plain, entry (built-in counter), callback (C callback), int3 (USPROBE_FORCE_INT3; under
// valgrind the trap is emulated, so only the user-space part counts), mid_plain, mid (instruction
// probe at tgt_counted_mid+0x7), return (return probe, built-in counter: the entry hit that
// hijacks the return plus the return trampoline), usdt_plain (usdt_tick, bench/usdt_tick.c, whose
// nop is the site of the USDT probe usprobe_bench:tick), usdt ("usdt:exe:usprobe_bench:tick",
// built-in counter), usdt_arg (the same, a C callback summing usprobe_usdt_arg(hit, 0)). The usdt
// modes are there when the build had <sys/sdt.h>. Per USDT hit:
//
//   for m in usdt_plain usdt usdt_arg; do
//     valgrind --tool=callgrind --smc-check=all --toggle-collect=hit_loop
//         --callgrind-out-file=/tmp/cg.$m build/bench/usprobe_hitloop $m 100000
//   done
//
// and per hit (Ir(usdt) - Ir(usdt_plain)) / 100000, each Ir the PROGRAM TOTALS line of
// `callgrind_annotate /tmp/cg.$m`.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "targets/targets.h"
#include "usprobe/usprobe.h"
#ifdef USPROBE_BENCH_USDT
#include "usdt_tick.h"
#endif

namespace {

using Fn = long (*)(long);

thread_local uint64_t t_arg_sum = 0;

void sum_arg0(usprobe_hit *hit, void *) {
  t_arg_sum += usprobe_arg(hit, 0);
}

void sum_usdt_arg0(usprobe_hit *hit, void *) {
  t_arg_sum += usprobe_usdt_arg(hit, 0);
}

// A timing pair's work without the clock (usprobe latency's handlers read rdtsc): the entry keeps a
// word in the call's session, the return adds it up. Neither reads a register.
thread_local uint64_t t_calls = 0;
void keep_entry(usprobe_hit *hit, void *) {
  if (uint64_t *session = usprobe_session(hit)) session[0] = ++t_calls;
}
void sum_return(usprobe_hit *hit, void *) {
  if (const uint64_t *session = usprobe_session(hit)) t_arg_sum += session[0];
}

}  // namespace

// Not static, not inlined: callgrind's --toggle-collect names it.
extern "C" __attribute__((noinline)) long hit_loop(Fn f, long n) {
  Fn volatile vf = f;
  long x = 0;
  for (long i = 0; i < n; ++i) x = vf(x);
  return x;
}

int main(int argc, char **argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help")) {
    std::fprintf(
        stderr,
        "usage: %s plain|entry|callback|int3|mid_plain|mid|return|pair|pair_regs|usdt_plain|usdt|"
        "usdt_arg [N]\n",
        argv[0]);
    return 2;
  }
  std::string mode = argv[1];
  long n = argc > 2 ? std::strtol(argv[2], nullptr, 0) : 100000;
  char mid[160];
  std::snprintf(mid, sizeof mid, "libusprobe_targets.so:tgt_counted_mid+%#" PRIx64,
                tgt_counted_mid_site_offset);
  const char *entry = "libusprobe_targets.so:tgt_counted";

  Fn fn = tgt_counted;
  const char *loc = nullptr;
  unsigned flags = 0;
  bool callback = false;
  usprobe_consumer consumer{sum_arg0, nullptr, nullptr};
  if (mode == "plain") {
  } else if (mode == "entry") {
    loc = entry;
  } else if (mode == "callback") {
    loc = entry, callback = true;
  } else if (mode == "int3") {
    loc = entry, flags = USPROBE_FORCE_INT3;
  } else if (mode == "mid_plain") {
    fn = tgt_counted_mid;
  } else if (mode == "mid") {
    fn = tgt_counted_mid, loc = mid;
  } else if (mode == "return") {
    loc = "uretprobe:libusprobe_targets.so:tgt_counted";
  } else if (mode == "pair" || mode == "pair_regs") {
    // Entry and return handlers that read no register (pair: USPROBE_NO_REGS, on the fast
    // path; pair_regs: without it, the full path), as usprobe latency's.
    loc = entry, callback = true;
    consumer = {keep_entry, nullptr, sum_return};
    flags = USPROBE_GENERAL_REGS_ONLY | (mode == "pair" ? USPROBE_NO_REGS : 0u);
#ifdef USPROBE_BENCH_USDT
  } else if (mode == "usdt_plain") {
    fn = usdt_tick;
  } else if (mode == "usdt") {
    fn = usdt_tick, loc = "usdt:exe:usprobe_bench:tick";
  } else if (mode == "usdt_arg") {
    fn = usdt_tick, loc = "usdt:exe:usprobe_bench:tick", callback = true;
    consumer.on_entry = sum_usdt_arg0;
#endif
  } else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }

  usprobe_link *link = nullptr;
  if (loc && usprobe_attach_ex(loc, callback ? &consumer : nullptr, flags, &link) != 0) {
    std::fprintf(stderr, "usprobe_attach_ex(%s): %s\n", loc, usprobe_last_error());
    return 1;
  }
  fn(0);  // the thread's first hit registers it: keep that out of the loop
  long x = hit_loop(fn, n);
  int rc = x == n ? 0 : 1;
  if (link) {
    uint64_t hits = mode == "return" ? usprobe_link_return_hits(link) : usprobe_link_hits(link);
    std::printf("%s: %s, %" PRIu64 " hits for %ld calls%s\n", mode.c_str(), usprobe_link_name(link),
                hits, n + 1, usprobe_link_uses_int3(link) ? " (int3 path)" : "");
    if (hits != static_cast<uint64_t>(n) + 1) rc = 1;
    // The callback saw argument 0 = 0 (the first call), then 0, 1, ..., n - 1.
    const bool pair = mode == "pair" || mode == "pair_regs";
    // The pair's entries numbered the calls 1, 2, ..., n + 1; the returns summed those.
    if (pair && t_arg_sum != static_cast<uint64_t>(n + 1) * static_cast<uint64_t>(n + 2) / 2) {
      std::fprintf(stderr, "%s: the returns summed %" PRIu64 ", expected %" PRIu64 "\n",
                   mode.c_str(), t_arg_sum,
                   static_cast<uint64_t>(n + 1) * static_cast<uint64_t>(n + 2) / 2);
      rc = 1;
    }
    if (callback && !pair &&
        t_arg_sum != static_cast<uint64_t>(n) * static_cast<uint64_t>(n - 1) / 2) {
      std::fprintf(stderr, "%s: the callback summed %" PRIu64 ", expected %" PRIu64 "\n",
                   mode.c_str(), t_arg_sum,
                   static_cast<uint64_t>(n) * static_cast<uint64_t>(n - 1) / 2);
      rc = 1;
    }
    usprobe_detach(link);
  } else {
    std::printf("%s: %ld calls\n", mode.c_str(), n);
  }
  return rc;
}
