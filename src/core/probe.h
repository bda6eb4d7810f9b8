// Probes, consumers and links (vocabulary: DESIGN.md).
//
// Lifetimes. A trampoline has its Probe's address built in, and a thread may sit inside one (before
// or after its call to dispatch) for as long as the scheduler leaves it there, with no read
// section to wait for; a function entered through a return probe returns into one. So a Site's
// trampoline, and a Probe with no links, are freed only once core/retire.h has shown that no
// thread can use them; until then (and while the probe is attached) they are reused when the same
// location is probed again. ConsumerArrays are immutable once published and freed after an RCU
// grace period (core/rcu.h).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/arch.h"
#include "core/return_stack.h"
#include "elf/elf_file.h"
#include "elf/location.h"
#include "usprobe/usprobe.h"

namespace usprobe {

// A consumer whose entry hits count into a counter kept outside the engine (the agent's `usprobe
// count`, registry::attach): `offset` bytes from each thread's counter home (core/thread_record.h,
// set_counter_home; counter_path_external() first), homes and words carrying its owner's `tag`
// (tagged_counter_word). Where the consumer is its probe's only one, the counter path increments
// that counter on entry hits without calling on_entry, and on_entry counts the full path's hits
// (it sets the thread's home); the engine's own hits of the slot then count the full path's only.
//
// With `timer.used` the consumer is a return probe that times its calls (the agent's `usprobe
// latency`): its handlers still count whatever the engine does not, but where it is its probe's
// only consumer, its handlers read no register (USPROBE_NO_REGS and USPROBE_GENERAL_REGS_ONLY: the
// fast paths run them) and the thread's home carries `tag` (core/thread_record.h,
// t_thread.counter_path), the fast paths count without calling them. The entry adds one to the
// counter at `offset` and keeps the time (arch::timestamp) in the call's session, word 0, where
// on_entry keeps it too; the return adds one at `timer.returns`, the call's duration in
// nanoseconds, ns = (ticks * timer.tsc_to_ns_mult) >> 32, at `timer.sum`, and one to
// buckets[log_linear_bucket<kTimerSubBits>( ns)] of the 64-bit words at `timer.buckets`
// (base/log_linear.h). A session word 0 of 0 (the entry not timed) or a skipped return
// (usprobe_session_skip_return) counts nothing, as on_return would. Offsets are from the home, as
// `offset` is; the engine's own counters of the consumer count the handlers' hits only.
struct ExternalTimer {
  bool used = false;
  uint32_t returns = 0, sum = 0, buckets = 0;
  uint64_t tsc_to_ns_mult = 0;
};
constexpr uint32_t kTimerSubBits = 3;

struct ExternalCounter {
  bool used = false;
  uint32_t offset = 0;
  uint64_t tag = 0;
  ExternalTimer timer;
  // The consumer is a return probe whose returns count at `offset` (`usprobe count`'s uretprobes),
  // its entries nowhere: on_return counts the full path's returns (and sets the thread's home);
  // where it is its probe's only consumer, the return path (Probe::external_return_word) counts
  // the others without calling it.
  bool at_return = false;
};

struct ConsumerEntry {
  uint32_t slot;  // counters (core/counters.h)
  void (*on_entry)(usprobe_hit *, void *);
  void *user;
  bool wants_vector_state;  // its handlers may touch vector registers (not GENERAL_REGS_ONLY)
  void (*on_return)(usprobe_hit *, void *);
  bool count_returns;  // a return probe: on_return set, or "uretprobe:" with the built-in counter
  bool without_regs = false;  // USPROBE_NO_REGS: its handlers read no register
  ExternalCounter external;   // used: its entry hits count outside the engine
};

// ConsumerArray::id's first value: above any address (core/return_stack.h, ReturnInstance).
constexpr uint64_t kFirstConsumerArrayId = uint64_t{1} << 63;

// Immutable once published; replaced whole, old copies freed after a grace period.
struct ConsumerArray {
  // Unique for the life of the process (arrays are never reused under the same id): a return
  // instance keeps the id of the array its entry saw, and its return, finding the same id, knows
  // every session's consumer is still attached without searching the array. From
  // kFirstConsumerArrayId on: an instance that a return path wrote keeps a sum below it instead.
  uint64_t id = 0;
  uint32_t count = 0;
  // The return instance's sessions as begin_return sets them up: one per return probe (the first
  // kMaxSessions), in entry order. return_overflow: more return probes than that (they count
  // misses).
  uint32_t return_sessions = 0;
  bool return_overflow = false;
  bool has_callbacks = false;  // some entry has on_entry
  // Simple handlers (below) whose on_entry reads no register and no vector state
  // (USPROBE_NO_REGS with GENERAL_REGS_ONLY): the fast path (usprobe_entry_fast) runs them.
  bool fast_callbacks = false;
  // Likewise for the return handler (usprobe_return_fast runs it): the entry then takes the
  // return from landing_counted, whose return tries the fast path first.
  bool fast_return_callbacks = false;
  bool wants_vector_state = false;         // some entry's on_entry may touch vector registers
  bool has_returns = false;                // some entry is a return probe (count_returns)
  bool has_return_callbacks = false;       // some entry has on_return
  bool return_wants_vector_state = false;  // some on_return may touch vector registers
  // At most one entry handler, at most one return probe (which alone may have a return handler),
  // none beyond an instance's sessions: usprobe_dispatch and the common return run the handlers
  // straight, without the general path's loops (the case of every `usprobe run` and `trace` probe
  // alone at its site, of a `run` program's uprobe and uretprobe on one function, of `latency`).
  // entry_handler / return_handler: the index in `entries` of the consumer with on_entry /
  // on_return, or kNoHandler; entry_session: whether the entry handler's consumer is the return
  // probe (its hit gets the instance's only session).
  static constexpr uint32_t kNoHandler = ~0u;
  bool simple_handlers = false;
  bool entry_session = false;
  uint32_t entry_handler = kNoHandler;
  uint32_t return_handler = kNoHandler;
  // Of those, one consumer with an entry handler and no return probe: the commonest, which
  // usprobe_dispatch runs in the fewest instructions.
  bool single_entry_callback = false;
  // One consumer alone, an external timer (ExternalTimer) with a session: the fast paths time its
  // calls without calling its handlers where the thread's home allows.
  bool timer_only = false;
  // The sessions as the entry handlers find them, return_sessions of them, after `entries` (an
  // array without return probes has none: `usprobe count 'libc:*'` makes 3,656 arrays). Copied
  // whole: zeroing an instance's words in place compiles to `rep stos`, a string instruction, which
  // the hit path keeps out (tests/code/hit_path_code_test.sh).
  const ReturnSession *return_template = nullptr;
  ConsumerEntry entries[];  // NOLINT: flexible array member (GNU extension)

  static ConsumerArray *make(const std::vector<ConsumerEntry> &v);
  static void destroy(const ConsumerArray *a);
};

struct Probe;

struct Site {
  uint64_t addr = 0;
  const Probe *owner = nullptr;  // the probe whose plans hold it
  elf::FileId file;              // the probe's location, mapped at `addr` when the site was made
  uint64_t file_offset = 0;
  arch::SitePlan plan;
  bool forced_int3 = false;  // planned for the int3 path whatever analysis says
  bool patched = false;
  // The registry's unpatch count when this site was last unpatched (or forgotten with its mapping):
  // its trampoline may be retired after a grace period that began after that (core/retire.h).
  uint64_t idle_since = 0;
  // [start, end) of the trampolines of this address's other plans that jump back to an address
  // the jump patch overwrites (an int3 plan relocates one instruction; the jump covers five
  // bytes). Filled when this site is chosen for a jump. A thread still inside one of them (even
  // deep in a handler it called) would come back into the middle of the jump: the patcher waits
  // for such threads to leave before writing the jump (core/patcher.cc).
  std::vector<std::pair<uint64_t, uint64_t>> stale_trampolines;
  // A USDT site's semaphore in this mapping (elf/usdt.h), 0 when it has none; raised (one added)
  // while the site is patched, lowered when it is unpatched (registry.cc, adjust_semaphores).
  uint64_t semaphore = 0;
  bool semaphore_raised = false;
};

struct Probe {
  // Read by dispatch under an RCU read section (acquire pairs with the release in publish).
  std::atomic<const ConsumerArray *> consumers{nullptr};
  // Nonzero while some consumer has a callback that may touch vector registers. The trampoline
  // tests it (at its absolute address) to decide whether to save vector state: the built-in
  // counter and USPROBE_GENERAL_REGS_ONLY callbacks need none, because dispatch is built without
  // vector registers (-mgeneral-regs-only). A stale read is harmless: dispatch asks for a retry
  // with the state saved when it meets a callback that wants it.
  std::atomic<uint8_t> wants_vector_state{0};
  // Nonzero while no consumer has an entry handler that reads registers (none, or all
  // USPROBE_NO_REGS): the function-entry trampoline then tries usprobe_entry_fast first,
  // saving only the caller-saved registers. A stale read is harmless:
  // the fast path refuses (kDispatchFull) what it cannot do, and the full path does everything.
  std::atomic<uint8_t> no_entry_handlers{0};
  // Nonzero while the consumers' entry handlers read no register (ConsumerArray::fast_callbacks):
  // usprobe_entry_fast runs them without a register view; kTimedHandlers while they are one
  // external timer alone (ConsumerArray::timer_only), whose path it tries first. Stale, it costs
  // the full path.
  static constexpr uint8_t kFastHandlers = 1, kTimedHandlers = 2;
  std::atomic<uint8_t> fast_entry_handlers{0};
  // Likewise for its return handler (ConsumerArray::fast_return_callbacks): usprobe_return_fast
  // runs it.
  std::atomic<uint8_t> fast_return_handlers{0};
  // The counter path's word (core/thread_record.h): counter_word(slot) while the consumers are one
  // built-in entry counter alone (no handler, no return probe), counter_word_at(offset) while they
  // are one external counter alone (ConsumerEntry::external_counter), else 0. Written under the
  // registry's mutex, as is counter_word_external (the word names an external counter). A
  // function-entry trampoline reads it at its absolute address and counts without calling anything.
  // Cleared before any other consumer is published (publish()); a thread that read it before that
  // counts one more hit into that slot, which is still the consumer's own: only a slot that is
  // freed needs the threads to be past their increment first (retire::counter_windows_clear).
  std::atomic<uint64_t> counter_word{0};
  bool counter_word_external = false;
  // The return counter path's word (arch/x86_64/trampoline.cc, emit_return_counter_path):
  // counter_word(slot) while the consumers are one built-in counter alone that is a return probe
  // (no handler; the engine's own counters, not counter_path_external()), else 0. A function-entry
  // trampoline then counts the entry at the slot's hits, pushes the return instance and counts the
  // return at the slot's returns itself, calling nothing; the instance keeps the sum of the word
  // and the thread's counter base as its array_id, which no ConsumerArray's id equals, and its
  // return is counted there only while they still add up to it. Written under the registry's
  // mutex, cleared and set as counter_word.
  std::atomic<uint64_t> return_word{0};
  // The return timer path's (the same path, for an external timer alone: ExternalTimer): its word,
  // tagged_counter_word(offset, tag) of the timer's hits counter while the consumers are one
  // external timer alone (ConsumerArray::timer_only), else 0; the session the instance gets (the
  // consumer's slot); and the timer's counters as offsets from the hits counter, with its clock's
  // multiplier. Those are set before the word, and the word is cleared and set as counter_word.
  std::atomic<uint64_t> timer_word{0};
  uint64_t timer_session = 0;
  int64_t timer_returns = 0, timer_sum = 0, timer_buckets = 0;
  uint64_t timer_mult = 0;
  // The external return counter's (the same path, for one external counter at_return alone):
  // tagged_counter_word(offset, tag) of its counter, else 0, and the session its instance gets
  // where the C++ paths complete it (the consumer's slot), set before the word. The entry counts
  // nothing; the return counts at the word's counter. Cleared and set as counter_word.
  std::atomic<uint64_t> external_return_word{0};
  uint32_t external_return_session = 0;
  // A function entry's trampolines have one of the three paths, or none (return_path, set when the
  // probe is made, by the consumer of the attach that made it: a return probe with the built-in
  // counter, an external timer, an external return counter, anything else): a probe whose
  // consumers change to another kind goes through dispatch, and one made without a return probe
  // keeps smaller trampolines.
  static constexpr uint8_t kNoReturnPath = 0, kReturnCounterPath = 1, kReturnTimerPath = 2,
                           kReturnExternalCounterPath = 3;
  uint8_t return_path = kNoReturnPath;
  // Nonzero while the consumers are one entry handler alone (ConsumerArray::single_entry_callback):
  // dispatch takes its shortest handler path straight. Stale: the path it takes refuses, and the
  // next one does it.
  std::atomic<uint8_t> single_entry_callback{0};

  // A USDT site's note (its arguments for usprobe_usdt_arg, its semaphore): set once, by the first
  // attach that names the location as a USDT probe, before that attach publishes its consumers
  // (release; the hit path's acquire load pairs with it), and never changed while the probe lives.
  std::atomic<const elf::UsdtProbe *> usdt{nullptr};
  std::shared_ptr<const elf::UsdtProbe> usdt_owner;

  std::string name;             // "libc.so.6:malloc" (after IFUNC resolution)
  bool function_entry = false;  // the location is a function's first instruction (immutable)
  elf::FileId file;
  uint64_t file_offset = 0;
  // What the first attach resolved, kept to place sites in mappings of the file that appear later
  // (dlopen, usprobe_notify_mapping), with that attach's flags (USPROBE_FORCE_INT3).
  std::shared_ptr<const elf::ResolvedLocation> location;
  unsigned place_flags = 0;
  // Why the last placement in a new mapping failed (empty: it did not); the probe stays placed in
  // the other mappings.
  std::string follow_error;
  std::vector<Site *> sites;                 // chosen from plans: one per mapping of the file
  std::vector<std::unique_ptr<Site>> plans;  // every plan made, kept with its trampoline
  std::vector<usprobe_link *> links;         // guarded by the registry mutex

  // What usprobe_link_sites, usprobe_link_uses_int3 and usprobe_link_int3_reason answer, kept up to
  // date by the registry under its mutex whenever the sites change, and read without it: those
  // calls take no lock, so a handler may make them, even on a thread that holds the mutex (a
  // handler running inside an attach). Relaxed / release-acquire as noted at the stores.
  std::atomic<int> placed_sites{0};
  // Null while every site is on the jump path (or there is none); else why a site is not. Points
  // into `reasons`, whose strings are immutable and live as long as the probe (so at least until
  // its last link is detached): a pointer handed out stays valid however the sites change.
  std::atomic<const std::string *> int3_reason{nullptr};
  // How the probe is entered (SitePlan::path): an int3 site's when it has one, else its first
  // site's; null while it has no site. Points to one of a few names shared by every probe and
  // never freed (registry.cc, path_name).
  std::atomic<const std::string *> path{nullptr};
  std::vector<std::unique_ptr<const std::string>> reasons;  // append-only; guarded by the mutex
};

}  // namespace usprobe

struct usprobe_link {
  usprobe::Probe *probe = nullptr;  // probes.front()
  uint32_t slot = 0;
  usprobe_consumer consumer{};
  // Every probe the link's consumer is on, all with the same counter slot: one, or one per site
  // of a USDT probe (its inlined copies), so that the link's hits are all of theirs.
  std::vector<usprobe::Probe *> probes;
};

// What a handler receives: a view of the trampoline's saved registers and the probe hit. At a
// return, `regs` holds the return registers (%rax, %rdx) and `vectors` the vector return registers
// (usprobe_retval_double reads %xmm0 there), or null when the trampoline did not save them.
struct usprobe_hit {
  usprobe::arch::Regs *regs;
  const usprobe::Probe *probe;
  usprobe::ReturnSession *session = nullptr;           // this consumer's, or null
  const usprobe::ReturnInstance *returning = nullptr;  // set in return handlers
  const void *vectors = nullptr;
};
