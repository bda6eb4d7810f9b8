// The CLI's side of the shared-memory region (protocol/protocol.h): it creates the memfd, writes
// the header and the plan, and while the command runs reads what the agents write: counters, trace
// records, stack records and stack tables, process mappings (stacks mode), latency histograms and
// notices. It also frees the slots of threads that have exited, folding their counters, histograms
// and stack tables into its own totals first, so a command that runs through thousands of threads
// does not run out of slots and no hit is lost on the way.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/error.h"
#include "output/histogram.h"
#include "protocol/bt.h"
#include "protocol/protocol.h"
#include "protocol/stack_table.h"

namespace usprobe::cli {

struct RegionConfig {
  agent::Mode mode = agent::kModeCount;
  uint32_t max_slots = 512;
  uint32_t max_notices = 256;
  uint32_t string_size = 64;
  uint64_t ring_size = 0;       // per slot; 0 in count mode, a multiple of 8
  uint64_t tsc_to_ns_mult = 0;  // latency mode (required): ns = (ticks * mult) >> kTscShift
  // Trace mode: each event carries its user stack (trace -U); stack_flags and the maps as in
  // stacks mode.
  bool trace_stacks = false;
  // Stacks mode (ring_size: a power of two >= agent::kMaxStackRecord):
  uint32_t stack_flags = 0;     // for usprobe_hit_stack: 0 (DWARF) or USPROBE_STACK_FP
  uint32_t max_maps = 4096;     // MapsEntry records
  uint64_t maps_text_size = 0;  // bytes for their text (required)
  // Each slot's stack table (protocol.h, "Stack tables"): entries (a power of two; 0 for none,
  // every stack then goes through the ring) and the addresses its arena holds.
  uint32_t table_entries = 0;
  uint32_t table_arena_words = 0;
  // ProcessRecords (protocol/attach.h): one per process of a session on a running process. A
  // launched command's agents claim none.
  uint32_t max_processes = 256;
  // -n: only processes whose name contains it place their probes (at most 15 bytes; "" = all).
  std::string comm;
  // Run mode (tsc_to_ns_mult and ring_size required): the compiled program (protocol/bt.h), whose
  // ProgramHeader::shared_offset create() fills in, each slot's table area and the shared area.
  std::string program;
  uint64_t tables_bytes = 0;
  uint64_t shared_bytes = 0;
};

// The fixed-point multiplier for RegionConfig::tsc_to_ns_mult: 2^kTscShift / ticks_per_ns.
uint64_t tsc_to_ns_mult(double ticks_per_ns);

struct PlanEntry {
  std::string location;      // "/usr/lib/x86_64-linux-gnu/libc.so.6:malloc"
  uint32_t string_mask = 0;  // bit n: argn is copied as a string (trace mode; kRetvalArg: retval)
  // trace mode: a return probe's kPlanEntry* bits, a USDT probe's kPlanMoreArgs
  uint32_t flags = 0;
};

// A trace record, copied out of a ring. Its strings are views into the TraceBatch that holds it.
struct TraceEvent {
  int32_t pid = 0;  // the slot's; 0 for the shared overflow slot (unknown)
  int32_t tid = 0;
  uint32_t probe = 0;
  uint32_t bad_strings = 0;  // bit n: argn's string could not be read
  uint64_t tsc = 0;
  // arg0..arg5 (a return probe's: as they were at the call's entry), arg6..arg11 (a USDT probe's
  // event with kEventMoreArgs), then retval (agent::kRetvalArg) in a return probe's event.
  std::array<uint64_t, agent::kMaxValues> args{};
  uint32_t cut_strings = 0;  // bit n: argn's string was longer than the copy (cut short)
  std::array<std::string_view, agent::kMaxValues>
      strings;                  // by argument number, for string_mask bits
  bool returning = false;       // a return probe's event: retval and entry_tsc are known
  uint64_t entry_tsc = 0;       // the call's entry (a return probe's event); 0: not known
  std::vector<uint64_t> stack;  // trace -U: usprobe_hit_stack's addresses, innermost first
  uint32_t image = 0;           // trace -U: the recording agent's image number
};

// Trace records drained from the rings, in drain order: the bytes copied out of the rings, and
// where each record lies in them. Draining copies a ring's new bytes in one go and gives the ring's
// space back at once; a record is taken apart only when it is printed (event()). clear() keeps the
// memory for the next drain (up to a limit), so a steady trace allocates nothing.
class TraceBatch {
 public:
  // A record in the copied bytes (checked when it was drained), and the pid of its slot.
  struct Ref {
    const char *record;
    int32_t pid;
    uint32_t string_mask;
  };

  size_t size() const { return refs_.size(); }
  bool empty() const { return refs_.empty(); }
  uint64_t tsc(size_t i) const;
  // What every line shows of record i, without taking the rest apart.
  struct Head {
    uint64_t tsc;
    int32_t pid, tid;
    uint32_t probe;
  };
  Head head(size_t i) const;
  // Record i, taken apart; its strings point into this batch.
  TraceEvent event(size_t i) const;
  // Bytes held by copies since the last clear().
  size_t bytes() const { return bytes_; }
  void clear();

  // For Region::drain: room for n bytes that lives until clear(); a record found in it.
  char *storage(size_t n);
  void add(const Ref &ref) { refs_.push_back(ref); }
  uint32_t string_size = 0;

 private:
  struct Chunk {
    std::unique_ptr<char[]> data;
    size_t size = 0, used = 0;
  };
  std::vector<Ref> refs_;
  std::vector<Chunk> chunks_;
  size_t current_ = 0;  // the chunk storage() takes from
  size_t bytes_ = 0;
};

// Hits of one stack (stacks mode): a record copied out of a ring (count 1), or what a stack
// table's entry counted since it was last read (count >= 1).
struct StackEvent {
  int32_t pid = 0;  // the slot's
  int32_t tid = 0;
  uint32_t probe = 0;
  uint32_t image = 0;         // the recording agent's image number (protocol.h, "Stacks mode")
  std::vector<uint64_t> ips;  // innermost first: the probed instruction, then return addresses
  uint64_t count = 1;         // hits of this stack
};

// A process image's mappings as its agent wrote them (stacks mode).
struct MapsMessage {
  agent::MapsKind kind = agent::kMapsAttach;
  int32_t pid = 0;
  uint32_t image = 0;
  std::string comm;  // the process's name
  std::string text;  // /proc/PID/maps lines that name files; "" when it found no room
};

struct Count {
  uint64_t hits = 0;
  uint64_t missed = 0;  // skipped by the engine (recursion) or, in trace mode, records dropped
  bool operator==(const Count &) const = default;
};
// Per (pid, probe index); pid 0 is the overflow slot, whose hits come from unknown processes.
using Counts = std::map<std::pair<int32_t, uint32_t>, Count>;

struct NoticeMessage {
  agent::NoticeKind kind = agent::kNoticeInfo;
  int32_t pid = 0;
  int32_t probe = -1;
  std::string text;
};

// The plan text the agent parses (protocol.h: "usprobe-plan 1", then index, mask, location).
std::string plan_text(const std::vector<PlanEntry> &plan);

// Whether the thread `tid` of process `pid` still exists (tgkill with signal 0).
bool thread_alive(int32_t pid, int32_t tid);

// Where things are in the region, copied from the header when the CLI wrote it and never read
// from the region again: any process of the command can map the region and rewrite the header, so
// every offset, size and count the CLI follows comes from here (see Region).
struct RegionLayout {
  agent::Mode mode = agent::kModeCount;
  uint64_t region_size = 0;
  uint32_t probe_count = 0;
  uint32_t string_size = 0;
  uint64_t placed_offset = 0;
  uint64_t notice_offset = 0;
  uint32_t max_notices = 0;
  uint32_t max_slots = 0;
  uint64_t slot_offset = 0;
  uint64_t slot_stride = 0;
  uint64_t ring_offset = 0;  // within a slot
  uint64_t ring_size = 0;
  uint64_t hist_offset = 0;  // within a slot
  uint32_t max_maps = 0;
  uint64_t maps_offset = 0;
  uint64_t maps_text_offset = 0;
  uint64_t maps_text_size = 0;
  uint32_t table_entries = 0;
  uint64_t table_offset = 0;  // within a slot
  uint32_t table_arena_words = 0;
  uint64_t process_offset = 0;
  uint32_t max_processes = 0;
  std::string comm_filter;     // RegionConfig::comm
  uint64_t tables_bytes = 0;   // run mode: a slot's table area (at table_offset)
  uint64_t shared_offset = 0;  // run mode: the shared area
  uint64_t shared_bytes = 0;
};

// A process that carries a session's probes (attach mode), as its ProcessRecord says.
struct ProcessEntry {
  int32_t pid = 0;
  uint32_t state = 0;  // agent::kProcessAttached, kProcessDetached, or 0 while being claimed
  bool operator==(const ProcessEntry &) const = default;
};

// The CLI reads what processes of the command write, and they may write anything: a slot whose
// state is not one the protocol has, or whose ids are out of range, a ring whose head and tail are
// further apart than the ring is long, a record that does not fit or names no probe, a stack table
// entry that points outside its arena. None of these is followed: such a slot is left alone for
// good, such a record or entry is skipped (a ring is skipped up to its head), and each is counted
// once in corrupt(), which the commands report ("usprobe: N corrupt records ignored").
class Region {
 public:
  // Makes a memfd of its own (not close-on-exec, for a command to inherit).
  static Result<Region> create(const RegionConfig &config, const std::vector<PlanEntry> &plan);
  // Sizes and fills `fd`, an empty memfd that the target created (attach mode: protocol/attach.h).
  // Takes the descriptor: it is closed with the Region, or at once when this fails.
  static Result<Region> create(const RegionConfig &config, const std::vector<PlanEntry> &plan,
                               int fd);
  Region(Region &&other) noexcept;
  Region &operator=(Region &&) = delete;
  ~Region();

  int fd() const { return fd_; }            // inherited by the command (not close-on-exec)
  agent::Header *header() { return hdr_; }  // for tests that play the agent

  // Appends the records written since the last call, every ring, unsorted: trace records in
  // trace mode, stack records in stacks mode (the other kind's vector stays as it is). In stacks
  // mode also what each stack table counted since the last call: one event per entry whose count
  // grew, with what it grew by (a new entry: its whole count), so that summing the counts of
  // everything drained gives every hit counted so far, exactly once.
  void drain(TraceBatch &out);
  void drain(std::vector<StackEvent> &out);
  // Frees the slots of threads that are gone (`alive` says) or orphaned by an exec: their ring and
  // stack table are drained into `out` and their counters folded into the totals first.
  void reclaim(TraceBatch &out, const std::function<bool(int32_t, int32_t)> &alive = thread_alive);
  void reclaim(std::vector<StackEvent> &out,
               const std::function<bool(int32_t, int32_t)> &alive = thread_alive);
  // Every count so far: folded from freed slots plus what live slots hold now.
  Counts counts() const;
  // Latency mode: every probe's histogram so far (all processes), by probe index, the same way.
  std::vector<Histogram> histograms() const;
  // Notices published since the last call, in order.
  std::vector<NoticeMessage> new_notices();
  uint32_t notices_dropped() const;
  // Stacks mode: the mappings the agents published since the last call, in the order they became
  // ready; and how many entries or texts found no room.
  std::vector<MapsMessage> new_maps();
  uint32_t maps_dropped() const;
  uint32_t agents_started() const;
  // Processes that skipped the session: their name did not match RegionConfig::comm.
  uint32_t agents_filtered() const;
  // Slots, ring records and stack table entries that broke the protocol and were ignored.
  uint64_t corrupt() const { return corrupt_; }
  const RegionLayout &layout() const { return layout_; }
  // By probe index: whether the probe has had a site in some process of the command.
  std::vector<bool> placed() const;
  // By probe index: whether one of its sites took the int3 path (a trap per hit).
  std::vector<bool> on_int3() const;
  // The name (comm) thread `tid` of process `pid` had when it claimed its slot, as the slot said
  // when last read (drains, reclaims, counts); tid 0: the process's (its main thread's, else one
  // of its threads'). "" when no slot of it was read. Bytes that are not printable read as '?'.
  std::string comm(int32_t pid, int32_t tid = 0) const;
  // Attach mode: the claimed ProcessRecords, in record order. A record whose pid or state no agent
  // writes is left out and counted in corrupt() (once).
  std::vector<ProcessEntry> processes() const;

  // Run mode. The records (printf) published since the last call, every ring: `record` gets the
  // slot's pid and the record's bytes (at least 8, size first), and returns false for one it
  // cannot take (counted as corrupt).
  using RecordSink = std::function<bool(int32_t pid, const char *record, uint32_t size)>;
  void drain_records(const RecordSink &record);
  // Frees the slots of threads that are gone, as reclaim() does: their records go to `record`, and
  // `fold` is called with each slot's table area before it is freed (to take its maps' values;
  // fold then empties the tables).
  void reclaim_run(const RecordSink &record, const std::function<void(char *tables)> &fold,
                   const std::function<bool(int32_t, int32_t)> &alive = thread_alive);
  // Calls `tables` with the table area of each slot a thread owns now.
  void for_each_live_table(const std::function<void(const char *tables)> &tables) const;
  char *shared_area() { return reinterpret_cast<char *>(hdr_) + layout_.shared_offset; }

 private:
  Region(int fd, agent::Header *hdr, const RegionLayout &layout, std::vector<uint32_t> masks);
  uint32_t overflow_index() const { return layout_.max_slots - 1; }
  agent::SlotHeader *slot_at(uint32_t index) const;
  // Whether slot `index` can be read: its state is one the protocol has and its ids are in range
  // (pid 0 and tid 0 while its owner has not written them yet). A slot that fails is counted in
  // corrupt_ the first time and skipped from then on.
  bool slot_sane(uint32_t index) const;
  // Calls `record` for each record published in the slot's ring since the last call (padding and
  // malformed records skipped), then frees their space. `record` returns false for a record it
  // cannot take (counted as corrupt).
  void drain_ring(agent::SlotHeader *slot,
                  const std::function<bool(const char *record, uint32_t size)> &record);
  // Trace mode: copies the slot's new bytes out in one go, frees them, then takes the copy apart.
  void drain_slot(uint32_t index, TraceBatch &out);
  void drain_slot(uint32_t index, std::vector<StackEvent> &out);
  struct RunOut {
    const RecordSink &record;
    const std::function<void(char *)> &fold;
  };
  void drain_slot(uint32_t index, RunOut &out);
  // Stacks mode: slot `index`'s stack table, a view of it in the region.
  agent::StackTable stack_table(uint32_t index);
  // Appends what slot `index`'s table counted since the last call (table_seen_).
  void drain_table(uint32_t index, std::vector<StackEvent> &out);
  template <typename Out>
  void drain_all(Out &out);
  template <typename Out>
  void reclaim_slots(Out &out, const std::function<bool(int32_t, int32_t)> &alive);
  // Keeps the name of the thread that owns slot `index` (not the overflow slot) for comm().
  void note_comm(uint32_t index) const;
  // Adds a slot's counters to out[{pid, probe}]; `zero` also clears them (the slot is being freed).
  void add_counts(agent::SlotHeader *slot, int32_t pid, Counts &out, bool zero) const;
  // Latency mode: adds a slot's histograms to out[probe]; `zero` also clears them.
  void add_histograms(agent::SlotHeader *slot, std::vector<Histogram> &out, bool zero) const;

  int fd_ = -1;
  agent::Header *hdr_ = nullptr;
  std::vector<uint32_t> masks_;  // string_mask by probe index
  Counts folded_;
  std::vector<Histogram> folded_histograms_;  // latency mode, by probe index
  uint32_t next_notice_ = 0;
  uint32_t next_maps_ = 0;              // entries below it were read or are pending
  std::vector<uint32_t> pending_maps_;  // claimed entries not ready when last looked at
  // Stacks mode, by slot: each table entry's count when it was last drained (cleared when the
  // slot is freed).
  std::vector<std::vector<uint64_t>> table_seen_;
  RegionLayout layout_;
  // Found by const readers too (counts(), histograms()): mutable.
  mutable uint64_t corrupt_ = 0;
  mutable std::vector<bool> bad_slots_;      // by slot: found corrupt, never read again
  mutable std::vector<bool> bad_processes_;  // by process record: found corrupt
  // comm(): by (pid, tid), kept after the slot is freed (its events may be printed later).
  mutable std::map<std::pair<int32_t, int32_t>, std::string> comms_;
};

}  // namespace usprobe::cli
