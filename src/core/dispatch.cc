#include "core/dispatch.h"

#include "base/log_linear.h"
#include "core/os.h"
#include "core/probe.h"
#include "core/rcu.h"
#include "core/return_stack.h"
#include "core/thread_record.h"

#include <optional>

using namespace usprobe;

std::atomic<uint64_t> usprobe::g_return_trampoline{0};

namespace {

// The session of the consumer with counter slot `slot` in a return instance, or null.
ReturnSession *session_of(ReturnInstance *inst, uint32_t slot) {
  if (!inst) return nullptr;
  for (uint32_t i = 0; i < inst->sessions; ++i)
    if (inst->session[i].slot == slot) return &inst->session[i];
  return nullptr;
}

bool has_slot(const ConsumerArray *a, uint32_t slot) {
  for (uint32_t i = 0; i < a->count; ++i)
    if (a->entries[i].slot == slot) return true;
  return false;
}

// Runs fn() as this thread's handler section (the thread is outside any handler): the recursion
// guard set, which a signal handler on this thread sees, and an RCU read section held. Returns what
// fn returns.
//
// kHandlers: fn may run handlers, whose calls are not the program's: the counter path is off
// meanwhile (thread_record.h), so that a probed function they call counts a miss there too. A
// section that only counts leaves it on: what runs inside it is usprobe's own code, and a signal
// handler that interrupts it runs the program's (its hits count, into words that bump() changes
// in one instruction each).
template <bool kHandlers = true, typename F>
inline auto handler_section(ThreadRecord *rec, F &&fn) {
  std::optional<CounterPathOff> counter_path_off;  // first on, last off: the depth guards all
  if constexpr (kHandlers) counter_path_off.emplace();
  t_thread.returns.depth.store(1, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  const auto result = [&] {
    rcu::ReadGuard guard(rec);
    return fn();
  }();
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_thread.returns.depth.store(0, std::memory_order_relaxed);
  return result;
}

// An instance that the return counter path wrote (arch/x86_64/trampoline.cc,
// emit_return_counter_path) keeps as its array_id the sum of its probe's return word and this
// thread's counter base, below any ConsumerArray's id, and writes neither sessions nor entry_ip:
// its one session is the built-in counter's, whose hits counter in `counters` (this thread's) the
// sum names less kCounterBias (an external return counter's: its consumer's,
// Probe::external_return_session), and its landing is followed by its site. The C++ paths
// complete it before they read those (the timer's path writes them).
void complete(ReturnInstance &inst, const uint64_t *counters) {
  const uint8_t path = inst.probe->return_path;
  if (inst.array_id >= kFirstConsumerArrayId ||
      (path != Probe::kReturnCounterPath && path != Probe::kReturnExternalCounterPath))
    return;
  const uint64_t hits = inst.array_id + kCounterBias - reinterpret_cast<uint64_t>(counters);
  inst.sessions = 1;
  // An external return counter's session is its consumer's (the sum names its external counter).
  inst.session[0].slot = path == Probe::kReturnExternalCounterPath
                             ? inst.probe->external_return_session
                             : static_cast<uint32_t>(hits / (sizeof(uint64_t) * kCounterWords));
  inst.session[0].skip = 0;
  inst.entry_ip = arch::landing_entry_ip(inst.landing);
}

// An instance whose call will never come back (longjmp left its frame, or the stack lost it):
// its return probes count a miss, for the consumers still attached.
void drop(uint64_t *counters, ReturnInstance &inst) {
  complete(inst, counters);
  const ConsumerArray *a = inst.probe->consumers.load(std::memory_order_acquire);
  if (!a) return;
  for (uint32_t i = 0; i < inst.sessions; ++i)
    if (!inst.session[i].skip && has_slot(a, inst.session[i].slot))
      bump(counters[kCounterWords * inst.session[i].slot + kMissed]);
}

// The newest instance whose return address lived at `sp`, or -1.
int find_instance(uint32_t top, uint64_t sp) {
  for (uint32_t i = top; i-- > 0;)
    if (t_thread.returns.returns[i].sp == sp) return static_cast<int>(i);
  return -1;
}

// A full stack makes room the way the kernel's uretprobes judge liveness: an instance of this
// stack whose return address lived below a new call's (or at it, unless the call is a tail call
// from that very frame, whose slot still holds that frame's landing) was left by longjmp. Only when
// full: a signal handler on a sigaltstack above the thread's stack would break the rule (README).
void make_room(ThreadRecord *rec, uint64_t sp) {
  const int owner = find_instance(t_thread.returns.return_top, sp);
  const bool tail_call = owner >= 0 && *reinterpret_cast<const uint64_t *>(sp) ==
                                           t_thread.returns.returns[owner].landing;
  uint32_t kept = 0;
  for (uint32_t i = 0; i < t_thread.returns.return_top; ++i) {
    ReturnInstance &inst = t_thread.returns.returns[i];
    if (inst.stack_key == t_thread.returns.stack_key &&
        (inst.sp < sp || (inst.sp == sp && !tail_call))) {
      drop(rec->counters, inst);
    } else {
      if (kept != i) t_thread.returns.returns[kept] = inst;
      ++kept;
    }
  }
  t_thread.returns.return_top = kept;
}

// The next instance's sessions, as the consumer array has them ready.
inline void init_sessions(const ConsumerArray *a, ReturnInstance *inst) {
  inst->array_id = a->id;
  inst->stack_key = t_thread.returns.stack_key;
  inst->sessions = a->return_sessions;
  for (uint32_t i = 0; i < a->return_sessions; ++i) inst->session[i] = a->return_template[i];
}

// Return probes beyond the kMaxSessions an instance holds run without one: each counts a miss.
__attribute__((noinline, cold)) void count_overflow_misses(ThreadRecord *rec,
                                                           const ConsumerArray *a) {
  uint32_t seen = 0;
  for (uint32_t i = 0; i < a->count; ++i)
    if (a->entries[i].count_returns && seen++ >= kMaxSessions)
      bump(rec->counters[kCounterWords * a->entries[i].slot + kMissed]);
}

// The next instance of this thread's return stack, its sessions ready for the entry handlers;
// null (each return probe counting a miss) when the stack is full.
ReturnInstance *begin_return(ThreadRecord *rec, const ConsumerArray *a, arch::Regs *regs) {
  if (__builtin_expect(t_thread.returns.return_top == t_thread.returns.return_depth, 0)) {
    make_room(rec, arch::hit_sp(*regs));
    if (t_thread.returns.return_top == t_thread.returns.return_depth) {
      for (uint32_t i = 0; i < a->count; ++i)
        if (a->entries[i].count_returns)
          bump(rec->counters[kCounterWords * a->entries[i].slot + kMissed]);
      return nullptr;
    }
  }
  if (__builtin_expect(a->return_overflow, 0)) count_overflow_misses(rec, a);
  ReturnInstance *inst = &t_thread.returns.returns[t_thread.returns.return_top];
  init_sessions(a, inst);
  return inst;
}

// `slot`: where the return address is; `ip`: the probed function.
inline void push_instance(ReturnInstance *inst, const uint64_t *slot, uint64_t ip,
                          const Probe *probe, uint64_t landing) {
  inst->return_address = *slot;
  inst->sp = reinterpret_cast<uint64_t>(slot);
  inst->landing = landing;
  inst->entry_ip = ip;
  inst->probe = probe;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  ++t_thread.returns.return_top;
}

// Take the return: push the instance, complete, so that a signal handler on this thread never sees
// a half-made one. The trampoline then calls the function from `landing` (arch.h), which replaces
// the return address. A tail call from a function whose return is taken already finds its landing
// in the slot: that is the address this call returns to, and the two return one after the other.
// False when every consumer declined the return.
bool finish_return(ReturnInstance *inst, arch::Regs *regs, const Probe *probe,
                   bool entry_handlers_ran, uint64_t landing) {
  if (entry_handlers_ran) {  // only they can decline (usprobe_session_skip_return)
    bool wanted = false;
    for (uint32_t i = 0; i < inst->sessions; ++i) wanted |= inst->session[i].skip == 0;
    if (!wanted) return false;
  }
  push_instance(inst, arch::return_address_slot(*regs), arch::hit_ip(*regs), probe, landing);
  return true;
}

// Whether the return goes to the full return code (`landing`): return handlers that the fast
// return path cannot run (ConsumerArray::fast_return_callbacks).
inline bool full_return(const ConsumerArray *a) {
  return a->has_return_callbacks && !a->fast_return_callbacks;
}

// Out of line: the indirect calls would otherwise make every hit save callee-saved registers.
__attribute__((noinline)) void run_callbacks(const ConsumerArray *a, arch::Regs *regs,
                                             const Probe *probe, ReturnInstance *inst) {
  usprobe_hit hit{regs, probe};
  for (uint32_t i = 0; i < a->count; ++i) {
    const ConsumerEntry &c = a->entries[i];
    if (!c.on_entry) continue;
    hit.session = session_of(inst, c.slot);
    c.on_entry(&hit, c.user);
  }
}

__attribute__((noinline)) void run_return_callbacks(const ConsumerArray *a, arch::Regs *regs,
                                                    ReturnInstance &inst, const void *vectors) {
  usprobe_hit hit{regs, inst.probe, nullptr, &inst, vectors};
  for (uint32_t i = 0; i < a->count; ++i) {
    const ConsumerEntry &c = a->entries[i];
    if (!c.on_return) continue;
    hit.session = session_of(&inst, c.slot);
    if (hit.session && !hit.session->skip) c.on_return(&hit, c.user);
  }
}

}  // namespace

// A handler (for the unwinder's entry points): no lock, allocation or system call either.
// Only the current stack's instances: the unwinder walks this stack, and a suspended coroutine's
// calls will still return through their instances.
void usprobe::restore_pending_returns(usprobe_hit *hit, void *) {
  ThreadRecord *rec = t_thread.record;  // set: this thread is running a handler
  const uint64_t sp = arch::hit_sp(*hit->regs);
  uint32_t kept = t_thread.returns.return_top;
  for (uint32_t i = t_thread.returns.return_top; i-- > 0;) {
    ReturnInstance &inst = t_thread.returns.returns[i];
    if (inst.stack_key != t_thread.returns.stack_key) continue;
    auto *slot = reinterpret_cast<uint64_t *>(inst.sp);
    // A slot below the unwinder's own frame belongs to a frame that is gone (longjmp): leave it.
    if (inst.sp > sp && *slot == inst.landing) *slot = inst.return_address;
    drop(rec->counters, inst);
    --kept;
    for (uint32_t j = i; j < kept; ++j)
      t_thread.returns.returns[j] = t_thread.returns.returns[j + 1];
  }
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_thread.returns.return_top = kept;
}

// The thread switches stacks. The instances of the stack it leaves take that stack's new key (the
// context it is saved in), so that they are found again when a later switch resumes it.
void usprobe::note_context_switch(usprobe_hit *hit, void *user) {
  ThreadReturns &rs = t_thread.returns;  // this thread is running a handler: it has a record
  if (user == kSwapContext) {
    const uint64_t saved_in = arch::arg(*hit->regs, 0), resumed = arch::arg(*hit->regs, 1);
    if (saved_in != rs.stack_key)
      for (uint32_t i = 0; i < rs.return_top; ++i)
        if (rs.returns[i].stack_key == rs.stack_key) rs.returns[i].stack_key = saved_in;
    rs.stack_key = resumed;
  } else {
    rs.stack_key = arch::arg(*hit->regs, 0);
  }
}

namespace {

// The hit path in general (usprobe_dispatch has the common case): a thread's first hit, a hit
// inside a handler, handlers to run, a full return stack.
__attribute__((noinline)) int dispatch_general(ThreadRecord *rec, arch::Regs *regs,
                                               const Probe *probe, int vector_saved,
                                               uint64_t landing, uint64_t landing_counted) {
  if (__builtin_expect(rec == nullptr, 0)) {
    if (!vector_saved) return kDispatchNeedsVectorSave;  // registering calls into libc
    rec = register_current_thread();
    if (!rec) return kDispatchDone;
  }
  uint64_t *counters = rec->counters;

  if (const uint32_t depth = t_thread.returns.depth.load(std::memory_order_relaxed); depth != 0) {
    // A hit while a handler of this thread runs (the handler, or a signal handler that interrupted
    // it, executed a probed instruction): count it as missed and skip the consumers (and its
    // return probes: the return is not hijacked). usprobe's own calls are not the program's.
    if (depth == kDepthInternal) return kDispatchDone;
    rcu::ReadGuard guard(rec);
    if (const ConsumerArray *a = probe->consumers.load(std::memory_order_acquire))
      for (uint32_t i = 0; i < a->count; ++i)
        bump(counters[kCounterWords * a->entries[i].slot + kMissed]);
    return kDispatchDone;
  }
  return handler_section(rec, [&] {
    // Acquire pairs with the release store that published the array (registry's publish()).
    const ConsumerArray *a = probe->consumers.load(std::memory_order_acquire);
    if (!a) return kDispatchDone;
    if (a->wants_vector_state && !vector_saved)
      return kDispatchNeedsVectorSave;  // nothing counted yet: the retry counts
    for (uint32_t i = 0; i < a->count; ++i)
      bump(counters[kCounterWords * a->entries[i].slot + kHits]);
    ReturnInstance *inst = a->has_returns ? begin_return(rec, a, regs) : nullptr;
    if (a->has_callbacks) run_callbacks(a, regs, probe, inst);
    if (inst && finish_return(inst, regs, probe, a->has_callbacks,
                              full_return(a) ? landing : landing_counted))
      return full_return(a) ? kDispatchReturnProbe : kDispatchReturnCounted;
    return kDispatchDone;
  });
}

}  // namespace

namespace {

// The common case of an entry hit: a thread outside any handler, a probe whose consumers are
// built-in counters only (entry counts, return counts: the return is taken from
// `landing_counted`), and room on the return stack. Needs no
// register but the return address's slot and the probed address, makes no call (the trampolines'
// fast path calls it with only the caller-saved registers saved), and returns kDispatchFull,
// having written nothing, for anything else.
inline int entry_counters(ThreadRecord *rec, const Probe *probe, const uint64_t *slot, uint64_t ip,
                          uint64_t landing_counted) {
  if (__builtin_expect(
          rec == nullptr || t_thread.returns.depth.load(std::memory_order_relaxed) != 0, 0))
    return kDispatchFull;
  return handler_section<false>(rec, [&] {
    const ConsumerArray *a = probe->consumers.load(std::memory_order_acquire);
    if (!a) return kDispatchDone;
    if (a->has_callbacks || a->has_return_callbacks ||
        (a->has_returns &&
         (t_thread.returns.return_top >= t_thread.returns.return_depth || a->return_overflow)))
      return kDispatchFull;
    uint64_t *counters = rec->counters;
    for (uint32_t i = 0; i < a->count; ++i)
      bump(counters[kCounterWords * a->entries[i].slot + kHits]);
    if (!a->has_returns) return kDispatchDone;
    ReturnInstance *inst = &t_thread.returns.returns[t_thread.returns.return_top];
    init_sessions(a, inst);
    push_instance(inst, slot, ip, probe, landing_counted);
    return kDispatchReturnCounted;
  });
}

// The thread's counter home as an external timer with `tag` may count into (ExternalTimer), or
// null: none set, another owner's, or a handler section or sink in the way. `base`: the thread's
// counter base (t_thread.counter_path) as it was before the caller's own handler section began,
// which turns it off.
inline char *timer_home(uint64_t tag, uint64_t base) {
  if (base == 0 || t_thread.counter_path.sink != 0 || (base >> kCounterTagShift) != tag)
    return nullptr;
  return reinterpret_cast<char *>(base & ((uint64_t{1} << kCounterTagShift) - 1));
}

inline uint64_t &word_at(char *home, uint32_t offset) {
  return *reinterpret_cast<uint64_t *>(home + offset);
}

// An entry of a call that an external timer alone times (ConsumerArray::timer_only): what its
// entry handler would do, without calling it. kDispatchFull, having done nothing, for anything
// else. Its handler section only counts, as entry_counters'.
inline int entry_timer(ThreadRecord *rec, const Probe *probe, const uint64_t *slot, uint64_t ip,
                       uint64_t landing_counted) {
  if (__builtin_expect(
          rec == nullptr || t_thread.returns.depth.load(std::memory_order_relaxed) != 0, 0))
    return kDispatchFull;
  return handler_section<false>(rec, [&] {
    const ConsumerArray *a = probe->consumers.load(std::memory_order_acquire);
    if (!a || !a->timer_only || t_thread.returns.return_top >= t_thread.returns.return_depth)
      return kDispatchFull;
    const ExternalCounter &timer = a->entries[0].external;
    // The home's memory stays while the array is published: its owner detaches before it unmaps.
    char *home = timer_home(timer.tag, t_thread.counter_path.base);  // a section that leaves it on
    if (!home) return kDispatchFull;
    bump(word_at(home, timer.offset));
    // init_sessions for the array's one session, written straight: its words zero as an entry
    // handler finds them, but the time.
    ReturnInstance *inst = &t_thread.returns.returns[t_thread.returns.return_top];
    inst->array_id = a->id;
    inst->stack_key = t_thread.returns.stack_key;
    inst->sessions = 1;
    ReturnSession &session = inst->session[0];
    session.slot = a->entries[0].slot;
    session.skip = 0;
    for (uint32_t i = 1; i < USPROBE_SESSION_WORDS; ++i) session.data[i] = 0;
    session.data[0] = arch::timestamp();  // last: the engine's own work is not the call's
    push_instance(inst, slot, ip, probe, landing_counted);
    return kDispatchReturnCounted;
  });
}

// A timed call's return (`a` timer_only, the instance its entry's), at the time `now`: counted at
// the thread's home, as the timer's return handler would count it. False, having counted nothing,
// where the home is not the timer's.
inline bool time_return(const ConsumerArray *a, const ReturnInstance &inst, uint64_t now,
                        uint64_t base) {
  const ExternalCounter &timer = a->entries[0].external;
  char *home = timer_home(timer.tag, base);
  if (!home) return false;
  const uint64_t entered = inst.session[0].data[0];
  if (inst.session[0].skip || entered == 0) return true;  // not timed: nothing to count
  // The cores' clocks agree, but a thread that moved may read one a few ticks behind: such a call
  // took no time rather than 2^64 ticks.
  const uint64_t ticks = now > entered ? now - entered : 0;
  const auto ns = static_cast<uint64_t>(
      (static_cast<unsigned __int128>(ticks) * timer.timer.tsc_to_ns_mult) >> 32);
  bump(word_at(home, timer.timer.returns));
  arch::add_own_word(word_at(home, timer.timer.sum), ns);
  bump(word_at(home, timer.timer.buckets + static_cast<uint32_t>(sizeof(uint64_t)) *
                                               log_linear_bucket<kTimerSubBits>(ns)));
  return true;
}

// The return of a call that an external timer alone times (entry_timer's or its handler's entry):
// what its return handler would do, without calling it, with the time `now`. The original return
// address, or 0, having written nothing, for anything else. As return_counters otherwise, and
// written out as it is: one helper for both, taking the section as a lambda, cost their returns 4
// to 17 more instructions (callgrind).
inline uint64_t return_timer(ThreadRecord *rec, uint64_t slot, uint64_t now) {
  const uint32_t top = t_thread.returns.return_top;
  if (__builtin_expect(top == 0, 0)) return 0;
  ReturnInstance &inst = t_thread.returns.returns[top - 1];
  if (__builtin_expect(
          inst.sp != slot || t_thread.returns.depth.load(std::memory_order_relaxed) != 0, 0))
    return 0;
  const bool counted = handler_section<false>(rec, [&] {
    const ConsumerArray *a = inst.probe->consumers.load(std::memory_order_acquire);
    return a && a->id == inst.array_id && a->timer_only &&
           time_return(a, inst, now, t_thread.counter_path.base);  // a section that leaves it on
  });
  if (!counted) return 0;
  const uint64_t original = inst.return_address;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_thread.returns.return_top = top - 1;
  return original;
}

// The common case of a return: the newest instance is this return's (its return address lived at
// `slot`), and its consumers are the ones its entry saw, with built-in counters only (kHandlers:
// or return handlers too, run with `regs` and `vectors`, when they need no vector state that was
// not saved). Returns the original return address, or 0, having written nothing, for anything
// else. The recursion guard is set: a signal handler that interrupted a counter's load and store
// and counted the same return would lose a count. Such a handler pushes and pops its own instances
// above `top` and leaves it as it was.
template <bool kHandlers>
inline uint64_t return_counters(ThreadRecord *rec, uint64_t slot, arch::Regs *regs = nullptr,
                                const void *vectors = nullptr) {
  const uint32_t top = t_thread.returns.return_top;
  if (__builtin_expect(top == 0, 0)) return 0;
  ReturnInstance &inst = t_thread.returns.returns[top - 1];
  if (__builtin_expect(
          inst.sp != slot || t_thread.returns.depth.load(std::memory_order_relaxed) != 0, 0))
    return 0;
  const uint64_t base =
      t_thread.counter_path.base;  // before the section turns the counter path off
  const bool counted = handler_section<kHandlers>(rec, [&] {
    const ConsumerArray *a = inst.probe->consumers.load(std::memory_order_acquire);
    if (!a || a->id != inst.array_id) return false;
    // An external timer's return where its entry was the handler's (a thread's first call), or on
    // the full path (a sanitizer build's trampolines have none other).
    if (kHandlers && a->timer_only && time_return(a, inst, arch::timestamp(), base)) return true;
    if (!(kHandlers ? (vectors != nullptr || !a->return_wants_vector_state) &&
                          (regs != nullptr || a->fast_return_callbacks)
                    : !a->has_return_callbacks))
      return false;
    for (uint32_t k = 0; k < inst.sessions; ++k)
      if (!inst.session[k].skip)
        bump(rec->counters[kCounterWords * inst.session[k].slot + kReturns]);
    if constexpr (kHandlers) {
      if (a->has_return_callbacks && !a->simple_handlers) {
        run_return_callbacks(a, regs, inst, vectors);
      } else if (a->has_return_callbacks && !inst.session[0].skip) {
        // The instance's only session is the return handler's (simple_handlers, the same array).
        const ConsumerEntry &c = a->entries[a->return_handler];
        usprobe_hit hit{regs, inst.probe, &inst.session[0], &inst, vectors};
        c.on_return(&hit, c.user);
      }
    }
    return true;
  });
  if (!counted) return 0;
  const uint64_t original = inst.return_address;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_thread.returns.return_top = top - 1;
  return original;
}

// The common case of a hit with handlers: a thread outside any handler, consumers with simple
// handlers (ConsumerArray::simple_handlers: one entry handler at most, one return probe at most),
// and room on the return stack. What dispatch_general would do, without its loops over sessions;
// kDispatchFull, having done nothing, for anything else.
// `regs` null: the fast path's call, for handlers that read no register (ConsumerArray::
// fast_callbacks); `slot` and `ip` are the return address's slot and the probed address.
inline int entry_handlers(ThreadRecord *rec, arch::Regs *regs, const uint64_t *slot, uint64_t ip,
                          const Probe *probe, int vector_saved, uint64_t landing,
                          uint64_t landing_counted) {
  if (__builtin_expect(
          rec == nullptr || t_thread.returns.depth.load(std::memory_order_relaxed) != 0, 0))
    return kDispatchFull;
  return handler_section(rec, [&] {
    const ConsumerArray *a = probe->consumers.load(std::memory_order_acquire);
    if (!a || !a->simple_handlers || (!vector_saved && a->wants_vector_state) ||
        (!regs && !a->fast_callbacks) ||
        (a->has_returns && t_thread.returns.return_top >= t_thread.returns.return_depth))
      return kDispatchFull;
    for (uint32_t i = 0; i < a->count; ++i)
      bump(rec->counters[kCounterWords * a->entries[i].slot + kHits]);
    ReturnInstance *inst = nullptr;
    if (a->has_returns) {
      inst = &t_thread.returns.returns[t_thread.returns.return_top];
      init_sessions(a, inst);
    }
    if (a->entry_handler != ConsumerArray::kNoHandler) {
      const ConsumerEntry &c = a->entries[a->entry_handler];
      usprobe_hit hit{regs, probe};
      if (a->entry_session) hit.session = &inst->session[0];
      c.on_entry(&hit, c.user);
      if (a->entry_session && inst->session[0].skip) return kDispatchDone;  // declined the return
    }
    if (!inst) return kDispatchDone;
    push_instance(inst, slot, ip, probe, full_return(a) ? landing : landing_counted);
    return full_return(a) ? kDispatchReturnProbe : kDispatchReturnCounted;
  });
}

// Out of line: the path of entry handlers with a return probe, and the general path.
__attribute__((noinline)) int handlers_path(ThreadRecord *rec, arch::Regs *regs, const Probe *probe,
                                            int vector_saved, uint64_t landing,
                                            uint64_t landing_counted) {
  const int r = entry_handlers(rec, regs, arch::return_address_slot(*regs), arch::hit_ip(*regs),
                               probe, vector_saved, landing, landing_counted);
  if (__builtin_expect(r != kDispatchFull, 1)) return r;
  return dispatch_general(rec, regs, probe, vector_saved, landing, landing_counted);
}

// The commonest hit with a handler: a thread outside any handler, and one consumer with an entry
// handler and no return probe (ConsumerArray::single_entry_callback). What entry_handlers does for
// it, in fewer instructions: no return instance to think of. kDispatchFull, having done nothing,
// for anything else.
inline int entry_callback(ThreadRecord *rec, arch::Regs *regs, const Probe *probe,
                          int vector_saved) {
  if (__builtin_expect(
          rec == nullptr || t_thread.returns.depth.load(std::memory_order_relaxed) != 0, 0))
    return kDispatchFull;
  return handler_section(rec, [&] {
    const ConsumerArray *a = probe->consumers.load(std::memory_order_acquire);
    if (!a || !a->single_entry_callback || (!vector_saved && a->wants_vector_state))
      return kDispatchFull;
    const ConsumerEntry &c = a->entries[0];
    bump(rec->counters[kCounterWords * c.slot + kHits]);
    usprobe_hit hit{regs, probe};
    c.on_entry(&hit, c.user);
    return kDispatchDone;
  });
}

// Out of line, so that usprobe_dispatch saves no register for the counters' path (and this one
// only what the callback needs kept); the rest is a tail call.
__attribute__((noinline)) int callback_path(ThreadRecord *rec, arch::Regs *regs, const Probe *probe,
                                            int vector_saved, uint64_t landing,
                                            uint64_t landing_counted) {
  const int r = entry_callback(rec, regs, probe, vector_saved);
  if (__builtin_expect(r != kDispatchFull, 1)) return r;
  return handlers_path(rec, regs, probe, vector_saved, landing, landing_counted);
}

// Out of line, so that usprobe_dispatch saves no register for its other paths: only tail calls.
__attribute__((noinline)) int counters_path(ThreadRecord *rec, arch::Regs *regs, const Probe *probe,
                                            int vector_saved, uint64_t landing,
                                            uint64_t landing_counted) {
  // An external timer's calls on this path too (a sanitizer build's trampolines have no fast path).
  if (probe->fast_entry_handlers.load(std::memory_order_relaxed) == Probe::kTimedHandlers)
    if (const int r = entry_timer(rec, probe, arch::return_address_slot(*regs), arch::hit_ip(*regs),
                                  landing_counted);
        r != kDispatchFull)
      return r;
  const int r = entry_counters(rec, probe, arch::return_address_slot(*regs), arch::hit_ip(*regs),
                               landing_counted);
  if (__builtin_expect(r != kDispatchFull, 1)) return r;
  // Return handlers only (a uretprobe alone), or the general path.
  return handlers_path(rec, regs, probe, vector_saved, landing, landing_counted);
}

}  // namespace

// The hit path. It must never lock, allocate, make a system call (beyond a thread's first hit,
// which registers the thread), or write memory that another thread writes: every store below goes
// to this thread's own record (and, for a return probe, to its own stack).
extern "C" int usprobe_dispatch(arch::Regs *regs, const Probe *probe, int vector_saved,
                                uint64_t landing, uint64_t landing_counted) {
  ThreadRecord *rec = t_thread.record;
  // Stale hints cost only the next path (in the end, the general path).
  if (!probe->no_entry_handlers.load(std::memory_order_relaxed)) {
    if (probe->single_entry_callback.load(std::memory_order_relaxed))
      return callback_path(rec, regs, probe, vector_saved, landing, landing_counted);
    return handlers_path(rec, regs, probe, vector_saved, landing, landing_counted);
  }
  return counters_path(rec, regs, probe, vector_saved, landing, landing_counted);
}

namespace {

// Out of line, so that usprobe_entry_fast saves no register for the counters: entry handlers that
// read no register (USPROBE_NO_REGS), run by entry_handlers without a register view.
__attribute__((noinline)) int fast_handlers_path(ThreadRecord *rec, const Probe *probe,
                                                 const uint64_t *slot, uint64_t ip,
                                                 uint64_t landing_counted, uint64_t landing) {
  return entry_handlers(rec, nullptr, slot, ip, probe, 0, landing, landing_counted);
}

// Out of line, so that usprobe_entry_fast saves no register for the counters.
__attribute__((noinline)) int timer_path(ThreadRecord *rec, const Probe *probe,
                                         const uint64_t *slot, uint64_t ip,
                                         uint64_t landing_counted, uint64_t landing) {
  const int r = entry_timer(rec, probe, slot, ip, landing_counted);
  if (__builtin_expect(r != kDispatchFull, 1)) return r;
  return fast_handlers_path(rec, probe, slot, ip, landing_counted, landing);
}

}  // namespace

extern "C" int usprobe_entry_fast(const Probe *probe, const uint64_t *slot, uint64_t ip,
                                  uint64_t landing_counted, uint64_t landing) {
  ThreadRecord *rec = t_thread.record;
  // A stale hint costs the full path (each refuses what is not its own).
  if (const uint8_t fast = probe->fast_entry_handlers.load(std::memory_order_relaxed);
      __builtin_expect(fast != 0, 0)) {
    if (fast == Probe::kTimedHandlers)
      return timer_path(rec, probe, slot, ip, landing_counted, landing);
    return fast_handlers_path(rec, probe, slot, ip, landing_counted, landing);
  }
  return entry_counters(rec, probe, slot, ip, landing_counted);
}

namespace {

// Out of line, so that usprobe_return_fast saves no register for the counters: a return handler
// that reads no register (USPROBE_NO_REGS), run by return_counters without a register view.
__attribute__((noinline)) uint64_t fast_return_path(ThreadRecord *rec, uint64_t slot) {
  return return_counters<true>(rec, slot);
}

// Out of line, so that usprobe_return_fast saves no register for the counters.
__attribute__((noinline)) uint64_t timed_return_path(ThreadRecord *rec, uint64_t slot) {
  const uint64_t now = arch::timestamp();  // first: the engine's own work is not the call's
  if (const uint64_t original = return_timer(rec, slot, now); __builtin_expect(original != 0, 1))
    return original;
  return fast_return_path(rec, slot);  // a call: the path above saves no register
}

}  // namespace

extern "C" uint64_t usprobe_return_fast(uint64_t slot) {
  ThreadRecord *rec = t_thread.record;
  // The newest instance's probe says (a stale hint costs the full return code).
  if (const uint32_t top = t_thread.returns.return_top; top != 0)
    if (const uint8_t fast = t_thread.returns.returns[top - 1].probe->fast_return_handlers.load(
            std::memory_order_relaxed);
        __builtin_expect(fast != 0, 0))
      return fast == Probe::kTimedHandlers ? timed_return_path(rec, slot)
                                           : fast_return_path(rec, slot);
  return return_counters<false>(rec, slot);
}

namespace {

// The return path in general: tail-call chains, instances that longjmp left above this one,
// consumers attached or detached since the entry, return handlers.
__attribute__((noinline)) uint64_t return_general(ThreadRecord *rec, arch::Regs *regs,
                                                  const void *vectors, uint64_t sp) {
  const int last = find_instance(t_thread.returns.return_top, sp);
  if (__builtin_expect(last < 0, 0)) {
    // No instance for this return: the stack was corrupted, or lost it (README, caveats). There
    // is no address to go back to.
    static const char kMessage[] =
        "usprobe: a hijacked return has no return instance on this thread's stack; aborting\n";
    os::raw_write(2, kMessage, sizeof kMessage - 1);
    __builtin_trap();
  }
  ReturnInstance &returning = t_thread.returns.returns[last];
  complete(returning, rec->counters);
  const uint64_t original = returning.return_address;
  if (t_thread.returns.depth.load(std::memory_order_relaxed) == 0) {
    const bool need_vector = handler_section(rec, [&] {
      const ConsumerArray *a = returning.probe->consumers.load(std::memory_order_acquire);
      if (!a) return false;
      if (!vectors && a->return_wants_vector_state) return true;
      for (uint32_t k = 0; k < returning.sessions; ++k)
        if (!returning.session[k].skip && has_slot(a, returning.session[k].slot))
          bump(rec->counters[kCounterWords * returning.session[k].slot + kReturns]);
      if (a->has_return_callbacks) run_return_callbacks(a, regs, returning, vectors);
      return false;
    });
    if (need_vector) return kDispatchNeedsVectorSave;  // nothing done yet: the retry does it
  }
  // Pop it. Newer instances of this stack whose return address lived below this frame were left by
  // longjmp: dropped. Newer ones above it belong to another stack (a signal handler's on a
  // sigaltstack), as do those of another stack key (a suspended coroutine's), and stay.
  uint32_t kept = static_cast<uint32_t>(last);
  for (uint32_t i = static_cast<uint32_t>(last) + 1; i < t_thread.returns.return_top; ++i) {
    ReturnInstance &inst = t_thread.returns.returns[i];
    if (inst.stack_key == t_thread.returns.stack_key && inst.sp < sp) {
      drop(rec->counters, inst);
    } else {
      t_thread.returns.returns[kept++] = inst;
    }
  }
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_thread.returns.return_top = kept;
  return original;
}

}  // namespace

// The return path, with the same rules. The thread has a record: it pushed the instance.
extern "C" uint64_t usprobe_return_dispatch(arch::Regs *regs, const void *vectors) {
  ThreadRecord *rec = t_thread.record;
  const uint64_t sp = arch::returned_from_sp(*regs);
  // The common return, handlers and all; return_general for the rest.
  if (const uint64_t original = return_counters<true>(rec, sp, regs, vectors);
      __builtin_expect(original != 0, 1))
    return original;
  return return_general(rec, regs, vectors, sp);
}
