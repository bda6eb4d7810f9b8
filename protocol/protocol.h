// The shared-memory region between the usprobe CLI and the agent it loads into a command.
//
// The CLI creates a memfd (no file in /tmp), sizes it, writes the Header and the plan, and starts
// the command with the fd inherited (not close-on-exec) and two environment variables:
//   LD_PRELOAD=<path of libusprobe-agent.so>   (prepended to any LD_PRELOAD already there)
//   USPROBE_AGENT_FD=<fd number>
//   USPROBE_AGENT_REGION=/proc/<CLI pid>/fd/<fd number>   (when the fd was closed on the way)
// Every process of the command (the command itself, its forked children, the images it execs)
// maps the same region MAP_SHARED and writes its hits there; the CLI reads it while they run.
// A running process (usprobe -p) gets the region another way: the CLI has the target create the
// memfd, fills it the same way, and hands it to the agent it injects (protocol/attach.h); the
// processes of such a session claim the ProcessRecords below.
//
//   offset 0               Header
//   header.plan_offset     the plan: NUL-terminated text, written once by the CLI before the start
//   header.placed_offset   header.probe_count bytes: which probes were ever placed (see Header)
//   header.notice_offset   header.max_notices Notices (messages from the agent, e.g. a probe that
//                          did not resolve after an exec)
//   header.slot_offset     header.max_slots Slots, header.slot_stride bytes apart; the last one
//                          (index max_slots - 1) is the shared overflow slot
//   header.maps_offset     (stacks mode) header.max_maps MapsEntry records, then
//                          header.maps_text_size bytes of maps text (see "Stacks mode")
//   header.process_offset  header.max_processes ProcessRecords (protocol/attach.h): one per process
//                          that carries the probes of a session on a running process (usprobe -p)
//
// Plan text (lines end with '\n'):
//   usprobe-plan 1
//   <index>\t<string_mask>\t<location>
//   ...
// index: 0..probe_count-1, in order. string_mask: decimal; bit n set = argn is a `%s` argument
// whose string the trace handler copies (trace mode only; bit kRetvalArg: the return value of a
// return probe), and the probe's kPlan* flags (kPlanMoreArgs, kPlanEntryArgs, kPlanEntryTime).
// location: what usprobe_attach takes, with
// FILE an absolute path
// ("/usr/lib/x86_64-linux-gnu/libc.so.6:malloc", "/usr/bin/prog:0x1139",
// "/usr/bin/prog:parse+0x12"); symbols are names, not offsets, so that IFUNCs resolve in the
// process that runs them. The location's prefix says what kind of probe it is, and so which
// handler the agent attaches: "uretprobe:" a function's returns; "usdt:" a USDT probe
// ("usdt:/usr/bin/python3.11:python:audit", one link for all its sites), whose trace handler reads
// argn with usprobe_usdt_arg (the note's argument n of the site hit) instead of the registers; no
// prefix, an instruction.
//
// Slots. A thread takes a slot on its first hit (compare-and-swap of state kSlotFree -> kSlotOwned,
// then it writes pid and tid) and keeps it for its life; it alone writes the slot's counters and
// its ring's head, with plain (relaxed load + relaxed store) increments: no atomic
// read-modify-write on the hit path. A forked child starts with no slot (pthread_atfork), so every
// count is tagged with the pid that made it. When no slot is free, hits go to the overflow slot
// with atomic fetch_add (exact, slower; never lost). The CLI frees slots whose thread has exited
// (tgkill(pid, tid, 0) fails with ESRCH) or that are kSlotOrphan (the agent marks the slot of the
// thread that called exec when the new image starts): it drains the ring and (stacks mode) the
// stack table, folds the counters into its totals, zeroes them, empties the table, and stores
// kSlotFree with release order.
//
// Latency mode (histograms; ring_size 0). Each probe gets an entry handler that stores rdtsc in
// the call's session (usprobe_session) and a return handler that adds the call's duration, in
// nanoseconds, to this thread's slot: returns[probe] += 1, then histogram[probe].sum_ns += ns and
// histogram[probe].buckets[latency_bucket(ns)] += 1, with the same owned increments as hits (the
// overflow slot: fetch_add). The engine does the same itself, without calling the handlers, for a
// thread whose slot is its own for good (the entry handler sets its counter home, as count mode's
// handler does; agent.cc, latency_timers). hits[probe] counts entries; missed[probe] gets, at exit,
// the engine's missed count (usprobe_link_missed: calls skipped as recursion and returns not seen,
// through return-depth overflow, longjmp or an exception), as in count mode. returns[] sits with
// the other counters so that the CLI reads a histogram (about a page each) only when its returns
// count is nonzero, and never faults in the pages of histograms no thread touched. Ticks become
// nanoseconds with integer math only: ns = (ticks * header.tsc_to_ns_mult) >> kTscShift, the
// multiplier calibrated by the CLI against CLOCK_MONOTONIC (2^32 / ticks per ns).
//
// Buckets are log-linear: 8 sub-buckets per power of two of nanoseconds, so a bucket is at most
// 1/8 of its lower bound wide (12.5%), and a percentile read from them is within about 6% of the
// truth. Values 0..15 get a bucket each (index = value); from 16 on, a value whose highest set bit
// is p (2^p <= v < 2^(p+1)) goes to 8 * (p - 2) + (the three bits below bit p). The 496 buckets
// cover all of uint64_t; a bucket lies inside one power of two, so the CLI's log2 table is exact.
//
// Rings (trace and stacks modes; ring_size 0 in count and latency modes): single producer (the
// slot's thread), single consumer (the CLI). head and tail count bytes since the start and never
// wrap; the record at head & (ring_size - 1) is contiguous: when it would cross the end, the
// producer first writes a padding record (probe = kPadProbe) up to the end. A record that does not
// fit in the free space (ring_size - (head - tail)) is not written: the producer adds 1 to
// missed[probe] in its slot. The producer publishes with head.store(release) after writing the
// record; the consumer reads head with acquire, and releases the space with tail.store(release).
//
// Stacks mode. Each hit's handler takes the user stack with usprobe_hit_stack (header.stack_flags:
// 0 for DWARF unwinding, USPROBE_STACK_FP for frame pointers), at most kMaxStackFrames addresses,
// into the scratch words of its slot's stack table (below), and counts it there, as a BPF stack
// map would: a stack seen before costs one hash, one compare and one increment, and writes nothing
// else. Only when the table (or its frame arena) is full does the stack go to the thread's ring as
// a StackRecord, as trace mode writes an Event (same padding, same "full ring: missed[probe] +=
// 1"). The overflow slot counts hits and misses but keeps no stacks (neither table nor records).
// Its probes are attached without USPROBE_GENERAL_REGS_ONLY: the unwinder may use any register.
//
// Stack tables (stacks mode; a slot's area at header.table_offset, stack_table_bytes() long).
// header.table_entries (a power of two, or 0 for no table) StackEntries, appended in order, each
// naming its frames in the arena (header.table_arena_words addresses, taken in order); an
// open-addressing index of 2 * table_entries buckets (entry + 1, 0 = empty; linear probing from
// hash & (buckets - 1)) that only the owner reads; and kStackScratchWords scratch words for the
// walk. The slot's thread alone writes it, with no atomic read-modify-write: a known stack's count
// is a relaxed load + store; a new stack gets the next entry and arena words, its key and frames
// written, then used.store(n + 1, release) publishes it, and only then is its bucket written. The
// CLI reads used with acquire, each entry below it (immutable but its count) and its count with a
// relaxed load, and adds what the counts grew by since it last looked to its totals. When it frees
// the slot it reads the final counts, zeroes the buckets of the used entries (each entry records
// its bucket), arena_used and used, and only then stores kSlotFree (release). Sizes chosen by the
// CLI (tools/usprobe/commands/stacks.cc): 4096 entries, 131072 arena words (1 MiB: 32 frames a
// stack on average); the area is about 1.2 MiB a slot, of which only the pages a thread touches
// take memory.
//
// A stack is a list of addresses; naming them needs the mappings of the process that recorded it,
// and a short-lived process is gone before the CLI could read its /proc/PID/maps. So every agent
// instance (a process image: the constructor runs again after an exec) takes an image number
// (header.images.fetch_add(1) + 1) that its stack records carry, and writes its own mappings into
// the region: once before it attaches, and again at exit when they changed (a dlopen). A forked
// child keeps its parent's image number, so the parent's mappings name its stacks when it left
// none of its own (it called _exit). A MapsEntry is claimed with maps_cursor.fetch_add(1), its text
// with maps_text_cursor.fetch_add(size); an entry whose text does not fit is posted with
// text_size 0 and counted in maps_dropped (the CLI reads /proc/PID/maps instead while the process
// lives). The text is /proc/self/maps with only the lines that name a file or [vdso]/[vsyscall]:
// anonymous memory names nothing. Entries are written outside the hit path.
//
// Times are TSC ticks (rdtsc): the handlers make no system call. The CLI converts them to time
// since it started the command by calibrating the TSC against CLOCK_MONOTONIC itself.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "base/log_linear.h"
#include "protocol/attach.h"

namespace usprobe::agent {

inline constexpr uint64_t kMagic = 0x3142'4f52'5053'5555ull;  // "UUSPROB1", little-endian
inline constexpr uint32_t kVersion = 11;
inline constexpr const char *kEnvFd = "USPROBE_AGENT_FD";
// "/proc/<CLI pid>/fd/<fd>": a second way to the same memfd, for a process whose parent closed
// the inherited descriptor before running it (Python's subprocess closes every fd by default).
inline constexpr const char *kEnvPath = "USPROBE_AGENT_REGION";
inline constexpr const char *kPlanFirstLine = "usprobe-plan 1";

// kModeRun: `usprobe run`, a bpftrace program (protocol/bt.h): each probe runs its code; rings
// carry printf records, the slots' table areas (table_offset) the aggregation maps.
enum Mode : uint32_t {
  kModeCount = 0,
  kModeTrace = 1,
  kModeLatency = 2,
  kModeStacks = 3,
  kModeRun = 4
};

enum SlotState : uint32_t { kSlotFree = 0, kSlotOwned = 1, kSlotOrphan = 2 };

inline constexpr uint32_t kPadProbe = 0xffff'ffffu;
// The arguments an Event carries: a function's arg0..arg5 (its argument registers), a USDT note's
// first six.
inline constexpr uint32_t kMaxArgs = 6;
// A USDT note's arguments: up to 12 (sys/sdt.h); arg6..arg11 travel after the Event when the
// probe's plan asks for them (kPlanMoreArgs, kEventMoreArgs).
inline constexpr uint32_t kMaxUsdtArgs = 12;

struct Header {
  uint64_t magic;
  uint32_t version;
  uint32_t mode;  // Mode
  uint64_t region_size;
  uint32_t probe_count;
  uint32_t string_size;  // bytes copied per `%s` argument, the NUL included (trace mode)
  uint64_t plan_offset;
  uint64_t plan_size;  // bytes, the NUL included
  uint64_t notice_offset;
  uint32_t max_notices;
  uint32_t max_slots;
  uint64_t slot_offset;
  // SlotHeader, then hits[probe_count], missed[probe_count], (latency mode) returns[probe_count],
  // then (latency mode) the histograms at hist_offset, then the ring at ring_offset.
  uint64_t slot_stride;
  uint64_t ring_offset;     // within a slot
  uint64_t ring_size;       // bytes, a power of two >= sizeof(Event); 0 in count and latency modes
  uint64_t hist_offset;     // within a slot: LatencyHistogram[probe_count] (latency mode; else 0)
  uint64_t tsc_to_ns_mult;  // latency mode: ns = (ticks * tsc_to_ns_mult) >> kTscShift
  // Claimed with fetch_add by agents (not on the hit path); a notice is readable once its
  // `ready` is nonzero. Notices past max_notices are counted here and dropped.
  std::atomic<uint32_t> notice_cursor;
  std::atomic<uint32_t> notices_dropped;
  // Processes that loaded the agent (constructor) and that attached their probes, for the CLI's
  // summary; incremented with fetch_add outside the hit path.
  std::atomic<uint32_t> agents_started;
  std::atomic<uint32_t> agents_attached;
  // Stacks mode (zero otherwise): the flags for usprobe_hit_stack, and the maps area.
  uint32_t stack_flags;
  uint32_t max_maps;          // MapsEntry records at maps_offset
  uint64_t maps_offset;       // 64-byte aligned
  uint64_t maps_text_offset;  // maps_text_size bytes of text, claimed with maps_text_cursor
  uint64_t maps_text_size;
  // Claimed with fetch_add by agents (outside the hit path); see "Stacks mode".
  std::atomic<uint32_t> maps_cursor;
  std::atomic<uint32_t> maps_dropped;  // entries that found no room, or text that found none
  std::atomic<uint64_t> maps_text_cursor;
  std::atomic<uint32_t> images;  // the last image number taken
  // Stacks mode: each slot's stack table (see "Stack tables"); table_entries 0: no table.
  uint32_t table_entries;      // a power of two, or 0
  uint64_t table_offset;       // within a slot, 64-byte aligned
  uint32_t table_arena_words;  // frame addresses the arena holds
  // Trace mode: nonzero when each event carries its user stack (usprobe trace -U, see "Trace
  // records"), taken with usprobe_hit_stack(stack_flags); the agent then writes its mappings into
  // the maps area, as in stacks mode.
  uint32_t trace_stacks;
  // probe_count bytes: placed[i] has kPlacedSite once probe i has had a site in some process of
  // the command, and kPlacedInt3 too once one of its sites took the int3 path. Agents set bits
  // (relaxed fetch_or; never cleared) after attaching and after each change of their mappings (a
  // dlopen); the CLI reads them at the end, to say which libraries were never loaded and which
  // probes paid a trap per hit.
  uint64_t placed_offset;
  // Attach mode (protocol/attach.h): max_processes ProcessRecords at process_offset (8-byte
  // aligned), written by agents outside the hit path. The CLI may leave room for none (0) in a
  // region for a launched command, whose agents never claim one.
  uint64_t process_offset;
  uint32_t max_processes;
  // Processes whose name did not match comm_filter: their agent started no session (relaxed
  // fetch_add, outside the hit path), for the CLI's summary.
  std::atomic<uint32_t> agents_filtered;
  // usprobe -n: a launched command's process places its probes only when its name (comm, as
  // prctl(PR_GET_NAME) gives it, up to 15 bytes) contains this; "" = every process. Each image
  // decides once, in the agent's constructor: a filtered process places nothing and so pays
  // nothing per hit, and an exec'd image (a new comm) decides again.
  char comm_filter[16];
  // Run mode: the program (protocol/bt.h), written once by the CLI before the start.
  uint64_t program_offset;
  uint64_t program_size;
  // One more than the highest slot index an agent has claimed: agents raise it (relaxed CAS, after
  // the claim, outside the hit path but a thread's first hit) and never lower it, and an exec'd
  // image looks for its previous image's slots below it, not through all max_slots headers (a page
  // each: 512 page faults a process).
  std::atomic<uint32_t> slots_bound;
};

enum NoticeKind : uint32_t {
  kNoticeInfo = 0,   // informational, e.g. "attached 12 probes in 3.1 ms"
  kNoticeProbe = 1,  // about probe `probe`: it was not placed (text says why)
  kNoticeError = 2,  // the agent could not run at all in this process (text says why)
  // Probes on a program this process does not run (exe: probes after the command's child exec'd
  // another program): one notice for all of them per program file. `probe` is the first such
  // probe; text is "<count> <path of the program this process runs>".
  kNoticeOtherProgram = 3,
  // Probe `probe` took the int3 path (text: the engine's reason), posted by the agent that first
  // set its kPlacedInt3, for the first few such probes of a process only: a forced int3 path or
  // `libc:*` would otherwise crowd out every other notice.
  kNoticeInt3 = 4,
};

// The bits of a placed flag (Header::placed_offset).
inline constexpr uint8_t kPlacedSite = 1;
inline constexpr uint8_t kPlacedInt3 = 2;

struct Notice {
  std::atomic<uint32_t> ready;  // release-stored 1 when the rest is written
  uint32_t kind;                // NoticeKind
  int32_t pid;
  int32_t probe;   // probe index, or -1
  char text[496];  // NUL-terminated one-line message
};
static_assert(sizeof(Notice) == 512);

struct SlotHeader {
  std::atomic<uint32_t> state;  // SlotState
  // Written by the owner right after it claims the slot, read by the CLI meanwhile: relaxed
  // atomics (nothing is published with them; a slot whose pid is still 0 is left alone).
  std::atomic<int32_t> pid;
  std::atomic<int32_t> tid;
  uint32_t reserved;
  std::atomic<uint64_t> head;  // ring: bytes written (producer)
  std::atomic<uint64_t> tail;  // ring: bytes consumed (CLI)
  // The owning thread's name (its comm, PR_GET_NAME: up to 15 bytes and a NUL) when it claimed the
  // slot, for the reports' COMM columns. Stored before pid (release), read after it (acquire);
  // the CLI takes it as untrusted bytes.
  std::atomic<uint64_t> comm[2];
  uint64_t pad[2];
};
static_assert(sizeof(SlotHeader) == 64);
static_assert(std::atomic<int32_t>::is_always_lock_free);

// Trace records. A record is this header; then, in a return probe's record (kEventReturn), a
// ReturnTail; or, in a USDT probe's record (kEventMoreArgs), the note's arguments 6..11 (six words,
// 0 past the site's count); then one string_size-byte NUL-terminated copy per set bit of the
// probe's string_mask, lowest first (bit kRetvalArg: the return value's string); then, with
// kEventStack, a word that says how many addresses follow (1..kMaxStackFrames; the high 32 bits:
// the agent's image number, as in "Stacks mode") and the addresses (usprobe_hit_stack's order).
// size is the whole record, a multiple of 8. In a return probe's record args are the function's
// arguments as they were at its entry (kept in the call's session).
struct Event {
  uint32_t size;
  uint32_t probe;  // index, or kPadProbe for padding (then only `size` is meaningful)
  uint64_t tsc;
  int32_t tid;
  // Bit n: argn's string could not be read (the copy holds ""). Bit kStringCutShift + n: argn's
  // string was longer than the copy, which holds its first string_size - 1 bytes. n = kRetvalArg:
  // the return value's. And the record's kEvent* flags.
  uint32_t bad_strings;
  uint64_t args[kMaxArgs];
};
static_assert(sizeof(Event) == 72);
// The values a format prints are numbered arg0..arg11 (arg6 on: USDT notes only), then retval.
inline constexpr uint32_t kRetvalArg = kMaxUsdtArgs;
inline constexpr uint32_t kMaxValues = kMaxUsdtArgs + 1;
inline constexpr uint32_t kStringBadMask = (1u << kMaxValues) - 1;
inline constexpr uint32_t kStringCutShift = kMaxValues;
inline constexpr uint32_t kEventReturn = 1u << 26;    // a ReturnTail follows the Event
inline constexpr uint32_t kEventStack = 1u << 27;     // the user stack follows the strings
inline constexpr uint32_t kEventMoreArgs = 1u << 28;  // a USDT note's arg6..arg11 follow the Event
static_assert(kStringCutShift + kMaxValues <= 26);
inline constexpr uint32_t kMoreArgsBytes = 8 * (kMaxUsdtArgs - kMaxArgs);
// In a probe's string_mask in the plan (trace mode), besides the string bits: what its handlers
// keep. A return probe's entry keeps the arguments (kPlanEntryArgs: the format prints an argN) and
// the time (kPlanEntryTime: -D prints the call's duration); a return probe with neither has no
// entry handler (its events' args and entry_tsc are 0), which saves the return probes whose format
// prints only retval about 45 ns a call. A USDT probe whose format prints one of arg6..arg11 reads
// the note's arguments past the sixth (kPlanMoreArgs); without it, only the first six.
inline constexpr uint32_t kPlanMoreArgs = 1u << 13;
inline constexpr uint32_t kPlanEntryArgs = 1u << 14;
inline constexpr uint32_t kPlanEntryTime = 1u << 15;
inline constexpr uint32_t kPlanFlags = kPlanMoreArgs | kPlanEntryArgs | kPlanEntryTime;
static_assert((kPlanFlags & kStringBadMask) == 0);
struct ReturnTail {
  uint64_t retval;     // %rax at the return
  uint64_t entry_tsc;  // rdtsc at the call's entry; 0: not known
};

// Stacks mode: a stack record, this header then `frames` addresses: ips[0] the probed instruction,
// then return addresses, outermost last (usprobe_hit_stack). size = sizeof(StackRecord) + 8 *
// frames.
struct StackRecord {
  uint32_t size;
  uint32_t probe;  // index, or kPadProbe for padding (then only `size` is meaningful)
  int32_t tid;
  uint32_t frames;  // 1..kMaxStackFrames
  uint32_t image;   // the recording agent's image number (see "Stacks mode")
  uint32_t reserved;
};
static_assert(sizeof(StackRecord) == 24);
inline constexpr uint32_t kMaxStackFrames = 127;
inline constexpr uint64_t kMaxStackRecord = sizeof(StackRecord) + 8 * uint64_t{kMaxStackFrames};

// Stacks mode: a slot's stack table, its header (see "Stack tables").
struct StackTableHeader {
  // Entries published. Owner: release store after writing the entry; CLI: acquire load; zeroed by
  // the CLI when it frees the slot.
  std::atomic<uint32_t> used;
  // Arena words taken. Owner only (relaxed), zeroed by the CLI when it frees the slot.
  std::atomic<uint32_t> arena_used;
  uint32_t reserved[14];
};
static_assert(sizeof(StackTableHeader) == 64);

// One distinct stack of a slot's table: (probe, image, frames) and how many hits took it. All but
// count are written once, before the entry is published, and never change until the slot is freed.
struct StackEntry {
  std::atomic<uint64_t> count;  // owner: relaxed load + store; CLI: relaxed load
  uint32_t hash;                // stack_hash() of the key
  uint32_t bucket;              // its index bucket, for the CLI to clear
  uint32_t probe;
  uint32_t image;
  uint32_t frames;        // 1..kMaxStackFrames
  uint32_t arena_offset;  // its addresses: arena[arena_offset, arena_offset + frames)
};
static_assert(sizeof(StackEntry) == 32);

// Where the walk writes a stack before it is counted: room for the deepest one.
inline constexpr uint32_t kStackScratchWords = 128;

enum MapsKind : uint32_t {
  kMapsAttach = 0,  // written by the constructor, before the probes were attached
  kMapsExit = 1,    // written at exit, when the mappings changed since the last entry
  kMapsChange = 2,  // written after a dlopen or dlclose (usprobe_on_mapping_change), when changed
};

// Stacks mode: one process image's mappings at one moment. The text (text_size bytes, no NUL) is at
// maps_text_offset + text_offset.
struct MapsEntry {
  std::atomic<uint32_t> ready;  // release-stored 1 when the rest is written
  uint32_t kind;                // MapsKind
  int32_t pid;
  uint32_t image;
  uint64_t text_offset;
  uint64_t text_size;  // 0 when the text found no room
  char comm[16];       // /proc/self/comm: the process's name, NUL-terminated
};
static_assert(sizeof(MapsEntry) == 48);

// Latency buckets (see "Latency mode" above).
inline constexpr uint32_t kLatencySubBits = 3;  // 2^3 = 8 sub-buckets per power of two
inline constexpr uint32_t kLatencyBuckets = 8 * (63 - 2) + 8;  // up to the highest bit, 63
inline constexpr uint32_t kTscShift = 32;

// The bucket of a duration (base/log_linear.h). On the hit path: no branch but the one for small
// values.
constexpr uint32_t latency_bucket(uint64_t ns) {
  return log_linear_bucket<kLatencySubBits>(ns);
}
static_assert(log_linear_buckets<kLatencySubBits>() == kLatencyBuckets);
// The smallest duration in bucket i (i < kLatencyBuckets).
constexpr uint64_t latency_bucket_low(uint32_t i) {
  if (i < 16) return i;
  uint32_t p = i / 8 + 2;
  return (uint64_t{8} | (i % 8)) << (p - kLatencySubBits);
}
// The largest duration in bucket i (inclusive: the last bucket ends at UINT64_MAX).
constexpr uint64_t latency_bucket_high(uint32_t i) {
  return i + 1 < kLatencyBuckets ? latency_bucket_low(i + 1) - 1 : ~uint64_t{0};
}

static_assert(latency_bucket(15) == 15 && latency_bucket(16) == 16 && latency_bucket(17) == 16);
static_assert(latency_bucket(~uint64_t{0}) == kLatencyBuckets - 1);
static_assert(latency_bucket_low(kLatencyBuckets - 1) == uint64_t{15} << 60);

// One probe's latencies in one slot: the sum and the buckets (the count is returns[probe]).
struct LatencyHistogram {
  std::atomic<uint64_t> sum_ns;
  std::atomic<uint64_t> buckets[kLatencyBuckets];
};

inline std::atomic<uint64_t> *slot_hits(SlotHeader *s) {
  return reinterpret_cast<std::atomic<uint64_t> *>(s + 1);
}
inline std::atomic<uint64_t> *slot_missed(SlotHeader *s, uint32_t probe_count) {
  return slot_hits(s) + probe_count;
}
inline std::atomic<uint64_t> *slot_returns(SlotHeader *s, uint32_t probe_count) {
  return slot_hits(s) + 2 * uint64_t{probe_count};
}
inline LatencyHistogram *slot_histograms(SlotHeader *s, uint64_t hist_offset) {
  return reinterpret_cast<LatencyHistogram *>(reinterpret_cast<char *>(s) + hist_offset);
}
inline uint64_t event_size(uint32_t string_count, uint32_t string_size) {
  return (sizeof(Event) + uint64_t{string_count} * string_size + 7) & ~uint64_t{7};
}
// The largest trace record but its stack: every value a string, and the larger of a ReturnTail
// and a USDT note's further arguments.
inline uint64_t max_event_size(uint32_t string_size) {
  constexpr uint64_t tail =
      kMoreArgsBytes > sizeof(ReturnTail) ? kMoreArgsBytes : sizeof(ReturnTail);
  return event_size(kMaxValues, string_size) + tail;
}

// Layout helpers, used by the CLI to size the region and by both sides to find things.
// Where a slot's counters (hits[probe_count], then missed[probe_count]) end.
inline uint64_t slot_counters_end(uint32_t probe_count) {
  return sizeof(SlotHeader) + 2 * sizeof(uint64_t) * uint64_t{probe_count};
}
inline uint64_t slot_stride_for(uint32_t probe_count, uint64_t ring_size) {
  return ((slot_counters_end(probe_count) + 63) & ~63ull) + ring_size;
}
// Latency mode: hits, missed and returns, then the histograms (64-byte aligned), no ring.
inline uint64_t latency_counters_end(uint32_t probe_count) {
  return slot_counters_end(probe_count) + sizeof(uint64_t) * uint64_t{probe_count};
}
inline uint64_t latency_hist_offset(uint32_t probe_count) {
  return (latency_counters_end(probe_count) + 63) & ~63ull;
}
inline uint64_t latency_stride_for(uint32_t probe_count) {
  return (latency_hist_offset(probe_count) + sizeof(LatencyHistogram) * uint64_t{probe_count} +
          63) &
         ~63ull;
}
// Stacks mode: a slot is SlotHeader, hits and missed, the stack table (64-byte aligned), then the
// ring. The table: StackTableHeader, the scratch words, the entries, the index, the arena.
inline uint64_t stack_table_offset(uint32_t probe_count) {
  return (slot_counters_end(probe_count) + 63) & ~63ull;
}
inline uint64_t stack_table_bytes(uint32_t entries, uint32_t arena_words) {
  uint64_t bytes = sizeof(StackTableHeader) + 8 * uint64_t{kStackScratchWords} +
                   sizeof(StackEntry) * uint64_t{entries} + 2 * 4 * uint64_t{entries} +
                   8 * uint64_t{arena_words};
  return (bytes + 63) & ~63ull;
}
inline uint64_t stacks_stride_for(uint32_t probe_count, uint32_t entries, uint32_t arena_words,
                                  uint64_t ring_size) {
  return stack_table_offset(probe_count) + stack_table_bytes(entries, arena_words) + ring_size;
}
inline SlotHeader *slot_at(Header *h, uint32_t i) {
  return reinterpret_cast<SlotHeader *>(reinterpret_cast<char *>(h) + h->slot_offset +
                                        uint64_t{i} * h->slot_stride);
}
inline std::atomic<uint8_t> *placed_flags(Header *h) {
  return reinterpret_cast<std::atomic<uint8_t> *>(reinterpret_cast<char *>(h) + h->placed_offset);
}
static_assert(sizeof(std::atomic<uint8_t>) == 1 && std::atomic<uint8_t>::is_always_lock_free);
inline Notice *notice_at(Header *h, uint32_t i) {
  return reinterpret_cast<Notice *>(reinterpret_cast<char *>(h) + h->notice_offset) + i;
}
inline char *ring_of(Header *h, SlotHeader *s) {
  return reinterpret_cast<char *>(s) + h->ring_offset;
}
inline ProcessRecord *process_at(Header *h, uint32_t i) {
  return reinterpret_cast<ProcessRecord *>(reinterpret_cast<char *>(h) + h->process_offset) + i;
}
static_assert(sizeof(ProcessRecord) == 8 && std::atomic<int32_t>::is_always_lock_free);
inline MapsEntry *maps_entry_at(Header *h, uint32_t i) {
  return reinterpret_cast<MapsEntry *>(reinterpret_cast<char *>(h) + h->maps_offset) + i;
}
inline char *maps_text(Header *h) {
  return reinterpret_cast<char *>(h) + h->maps_text_offset;
}

}  // namespace usprobe::agent
