// usprobe_hitloop MODE [N]: N calls of a probed function in one loop (hit_loop), for instruction
// counts under valgrind, which are stable where times are not:
//
//   valgrind --tool=callgrind --smc-check=all --toggle-collect=hit_loop
//       --callgrind-out-file=/tmp/cg.MODE build/bench/usprobe_hitloop MODE 100000
//
// Ir(hit_loop, MODE) - Ir(hit_loop, plain or mid_plain) over N = instructions a hit adds (the
// trampoline plus dispatch plus consumers). callgrind_annotate /tmp/cg.MODE splits them by
// function (the trampoline shows as an address in an anonymous mapping).
//
// Modes: plain, entry (built-in counter), callback (C callback), int3 (USPROBE_FORCE_INT3; under
// valgrind the trap is emulated, so only the user-space part counts), mid_plain, mid (instruction
// probe at tgt_counted_mid+0x7), return (return probe, built-in counter: the entry hit that
// hijacks the return plus the return trampoline).
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "targets/targets.h"
#include "usprobe/usprobe.h"

namespace {

using Fn = long (*)(long);

thread_local uint64_t t_arg_sum = 0;

void sum_arg0(usprobe_hit *hit, void *) {
  t_arg_sum += usprobe_arg(hit, 0);
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
    std::fprintf(stderr, "usage: %s plain|entry|callback|int3|mid_plain|mid|return [N]\n", argv[0]);
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
  } else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }

  usprobe_link *link = nullptr;
  usprobe_consumer consumer{sum_arg0, nullptr, nullptr};
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
    usprobe_detach(link);
  } else {
    std::printf("%s: %ld calls\n", mode.c_str(), n);
  }
  return rc;
}
