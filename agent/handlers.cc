// The hit path. Nothing here may lock, allocate, make a system call (the first hit of a thread
// excepted, see slots.cc), call libc, or touch a vector register. Every shared write goes to this
// thread's own slot, except in the overflow slot, which threads share with fetch_add.
#include "agent/handlers.h"

#include <cstdint>

#include "agent/agent_scope.h"
#include "agent/region.h"
#include "agent/ring.h"
#include "agent/safe_copy.h"
#include "agent/slots.h"
#include "core/thread_record.h"

namespace usprobe::agent {

constinit thread_local bool t_in_agent __attribute__((tls_model("initial-exec"))) = false;

namespace {

uint32_t probe_of(void *user) {
  return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(user));
}

enum class Copy { kWhole, kCut, kBad };

// Copies the string argument at `addr` into dst (string_size bytes). kBad when it could not be
// read: dst then holds "". kCut when it is longer than the copy (the byte after the copy is not
// its end). Null and low pointers (< 4096, never mapped) and addresses no user mapping can have
// (>= 2^56, including non-canonical ones) are refused without trying.
Copy copy_string(char *dst, uint64_t addr, uint32_t string_size) {
  if (addr < 4096 || addr >= (uint64_t{1} << 56)) {
    dst[0] = '\0';
    return Copy::kBad;
  }
  const char *src = reinterpret_cast<const char *>(addr);
  long n = usprobe_agent_safe_copy(dst, src, string_size);
  if (n < 0) return Copy::kBad;
  if (static_cast<uint64_t>(n) + 1 < string_size) return Copy::kWhole;
  // The copy is full: one more byte says whether the string goes on. Unreadable: it ended there.
  char next[2];
  return usprobe_agent_safe_copy(next, src + n, sizeof next) == 1 ? Copy::kCut : Copy::kWhole;
}

}  // namespace

std::atomic<bool> g_counter_path_homes{false};
std::atomic<uint64_t> g_counter_tag{0};

// Must never lock, allocate, make a system call (but once per thread) or call libc.
namespace {

// Sets this thread's counter home to its slot's hits when the slot is its own for good. After
// thread_slot(), which ends a vfork's marking in the parent.
inline void set_home(SlotHeader *s) {
  if (g_counter_path_homes.load(std::memory_order_relaxed) && s == t_slot && !t_forking &&
      t_vfork_parent == 0 && s != g_region.overflow)
    set_counter_home(tagged_counter_home(reinterpret_cast<uint64_t>(slot_hits(s)),
                                         g_counter_tag.load(std::memory_order_relaxed)));
}

}  // namespace

void count_handler(usprobe_hit *, void *user) {
  if (t_in_agent) return;
  SlotHeader *s = thread_slot();
  slot_add(s, slot_hits(s)[probe_of(user)], 1);
  set_home(s);
}

namespace {

// The words a return probe's entry keeps in the call's session (USPROBE_SESSION_WORDS): the six
// argument registers, then the time of the entry.
constexpr unsigned kSessionTsc = kMaxArgs;
static_assert(kSessionTsc < USPROBE_SESSION_WORDS);

// The event of one hit in this thread's ring: `values` are arg0..arg5, then a USDT note's
// arg6..arg11 (read only with kPlanMoreArgs), then (kReturn) the return value at kRetvalArg; `tsc`
// the time of the hit (0: read here) and `entry_tsc` that of the call's entry. The probe's
// string_mask names only values that its handler has (load_plan).
// Must never lock, allocate, make a system call (but once per thread) or call libc (the stack walk
// of trace_stacks excepted: see usprobe_hit_stack).
template <bool kReturn, bool kUsdt = false>
__attribute__((always_inline)) inline void record_event(usprobe_hit *hit, uint32_t probe,
                                                        const uint64_t *values, uint64_t tsc,
                                                        uint64_t entry_tsc) {
  SlotHeader *s = thread_slot();
  const Region &r = g_region;
  std::atomic<uint64_t> &hits = slot_hits(s)[probe];
  std::atomic<uint64_t> &missed = slot_missed(s, r.probe_count)[probe];
  if (overflow_hit(s, hits, missed)) return;  // exact counts, no events

  const ProbeInfo &info = r.probes[probe];
  uint64_t size = info.record_size;
  // With a stack, room for the longest one; the record is then published with its real size.
  const uint64_t stack_room = r.trace_stacks ? 8 * (1 + uint64_t{kMaxStackFrames}) : 0;
  uint64_t next_head = 0;
  // From here on s is this thread's own slot (the overflow slot returned above).
  char *record = ring_reserve(s, size + stack_room, &next_head);
  if (!record) {
    owned_add(hits, 1);
    owned_add(missed, 1);
    return;
  }
  auto *e = reinterpret_cast<Event *>(record);
  e->probe = probe;
  e->tsc = kReturn ? tsc : __builtin_ia32_rdtsc();
  e->tid = s->tid.load(std::memory_order_relaxed);  // written by this thread
  uint32_t bad = kReturn ? kEventReturn : 0;
  for (unsigned n = 0; n < kMaxArgs; ++n) e->args[n] = values[n];
  char *str = reinterpret_cast<char *>(e + 1);
  if constexpr (kReturn) {
    auto *tail = reinterpret_cast<ReturnTail *>(str);
    tail->retval = values[kRetvalArg];
    tail->entry_tsc = entry_tsc;
    str += sizeof(ReturnTail);
  } else if (kUsdt && (info.flags & kPlanMoreArgs)) {
    auto *more = reinterpret_cast<uint64_t *>(str);
    for (unsigned n = kMaxArgs; n < kMaxUsdtArgs; ++n) more[n - kMaxArgs] = values[n];
    str += kMoreArgsBytes;
    bad |= kEventMoreArgs;
  }
  for (uint32_t mask = info.string_mask; mask != 0; mask &= mask - 1) {
    unsigned n = static_cast<unsigned>(__builtin_ctz(mask));
    switch (copy_string(str, values[n], r.string_size)) {
      case Copy::kWhole:
        break;
      case Copy::kCut:
        bad |= 1u << (kStringCutShift + n);
        break;
      case Copy::kBad:
        bad |= 1u << n;
        break;
    }
    str += r.string_size;
  }
  if (stack_room != 0) {
    // Straight into the ring, after the strings (event_size's padding: at record + size).
    auto *words = reinterpret_cast<uint64_t *>(record + size);
    int n = usprobe_hit_stack(hit, words + 1, kMaxStackFrames, r.stack_flags);
    if (n > 0) {
      words[0] = static_cast<uint64_t>(n) | uint64_t{r.image} << 32;
      size += 8 * (1 + static_cast<uint64_t>(n));
      bad |= kEventStack;
    }
    next_head -= stack_room + info.record_size - size;  // what the record does not use
  }
  e->size = static_cast<uint32_t>(size);
  e->bad_strings = bad;
  owned_add(hits, 1);
  ring_publish(s, next_head);
}

}  // namespace

void trace_handler(usprobe_hit *hit, void *user) {
  if (t_in_agent) return;
  uint64_t args[kMaxArgs];
  for (unsigned n = 0; n < kMaxArgs; ++n) args[n] = usprobe_arg(hit, n);
  record_event<false>(hit, probe_of(user), args, 0, 0);
}

// The arguments are the note's, read where its spec says (a register, the stack, a global):
// only as many as the hit site's note has, the others 0; past the sixth only when the format
// prints one of them (kPlanMoreArgs).
void trace_usdt_handler(usprobe_hit *hit, void *user) {
  if (t_in_agent) return;
  const uint32_t probe = probe_of(user);
  const unsigned wanted = g_region.probes[probe].flags & kPlanMoreArgs ? kMaxUsdtArgs : kMaxArgs;
  uint64_t args[kMaxUsdtArgs];
  const int count = usprobe_usdt_arg_count(hit);
  unsigned n = 0;
  for (; n < wanted && static_cast<int>(n) < count; ++n) args[n] = usprobe_usdt_arg(hit, n);
  for (; n < kMaxUsdtArgs; ++n) args[n] = 0;
  record_event<false, true>(hit, probe, args, 0, 0);
}

// Must never lock, allocate, make a system call or call libc.
void trace_return_entry_handler(usprobe_hit *hit, void *user) {
  if (t_in_agent) {
    // The agent's own call: not the command's, and its return is not traced either.
    usprobe_session_skip_return(hit);
    return;
  }
  uint64_t *session = usprobe_session(hit);
  if (!session) return;
  const uint32_t entry = g_region.probes[probe_of(user)].flags;
  if (entry & kPlanEntryArgs)
    for (unsigned n = 0; n < kMaxArgs; ++n) session[n] = usprobe_arg(hit, n);
  // Last, so that the handler's own work is not part of the call's time (nonzero: see
  // latency_entry_handler).
  if (entry & kPlanEntryTime) session[kSessionTsc] = __builtin_ia32_rdtsc();
}

void trace_return_handler(usprobe_hit *hit, void *user) {
  uint64_t now = __builtin_ia32_rdtsc();  // first: the handler's own work is not the call's
  if (t_in_agent) return;
  // The entry's arguments (zero when the entry kept none), then the return value.
  uint64_t values[kMaxValues] = {};
  uint64_t entry_tsc = 0;
  if (const uint64_t *session = usprobe_session(hit)) {
    for (unsigned n = 0; n < kMaxArgs; ++n) values[n] = session[n];
    entry_tsc = session[kSessionTsc];
  }
  values[kRetvalArg] = usprobe_retval(hit);
  record_event<true>(hit, probe_of(user), values, now, entry_tsc);
}

// Must never lock, allocate, make a system call (but once per thread) or call libc.
void latency_entry_handler(usprobe_hit *hit, void *user) {
  if (t_in_agent) {
    // The agent's own call: not the command's, and its return is not timed either.
    usprobe_session_skip_return(hit);
    return;
  }
  SlotHeader *s = thread_slot();
  slot_add(s, slot_hits(s)[probe_of(user)], 1);
  set_home(s);
  // Last, so that the handler's own work is not part of the call's time. The session is zero at
  // entry (usprobe.h), and rdtsc never reads 0 on a running machine: the return handler takes a
  // zero as "not timed".
  if (uint64_t *session = usprobe_session(hit)) session[0] = __builtin_ia32_rdtsc();
}

// Must never lock, allocate, make a system call (but once per thread), call libc or use a floating
// point register: the conversion to nanoseconds is a fixed-point multiply.
void latency_return_handler(usprobe_hit *hit, void *user) {
  uint64_t now = __builtin_ia32_rdtsc();  // first: the handler's own work is not the call's
  if (t_in_agent) return;
  const uint64_t *session = usprobe_session(hit);
  if (!session || session[0] == 0) return;
  // The TSCs of the cores are synchronised, but a thread that moved to another core may read one
  // a few ticks behind: such a call took no time rather than 2^64 ticks.
  uint64_t ticks = now > session[0] ? now - session[0] : 0;
  const Region &r = g_region;
  auto ns = static_cast<uint64_t>((static_cast<unsigned __int128>(ticks) * r.tsc_to_ns_mult) >>
                                  kTscShift);
  uint32_t probe = probe_of(user);
  SlotHeader *s = thread_slot();
  // returns first: the CLI reads a histogram only when its count is nonzero, so a thread that dies
  // between these stores leaves a slot whose histogram the CLI still sees and zeroes.
  slot_add(s, slot_returns(s, r.probe_count)[probe], 1);
  LatencyHistogram &h = slot_histograms(s, r.hist_offset)[probe];
  slot_add(s, h.sum_ns, ns);
  slot_add(s, h.buckets[latency_bucket(ns)], 1);
}

}  // namespace usprobe::agent
