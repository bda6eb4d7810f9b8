// `usprobe run`: a bpftrace program compiled by the CLI (tools/usprobe/bt/compile.cc) into a
// bytecode that the agent runs on each hit (agent/bt_vm.cc), and the maps it writes, in the shared
// region (protocol/protocol.h, mode kModeRun).
//
// The program (header.program_offset, program_size bytes) is ProgramHeader, then its tables at the
// offsets it gives: one ProbeCode per probe of the plan (its instructions), the instructions, the
// 64-bit constants, the string pool (NUL-terminated literals), one MapInfo per map, one
// PrintfInfo per printf and the PrintfArg lists. The agent checks all of it once, before it
// attaches (bt_verify: every jump lands inside its probe's code, every register, map, printf, pool
// and scratch offset is in range), so that the hit path checks nothing.
//
// The machine: kRegisters 64-bit registers, zero at the start of each hit, and kScratchBytes of
// scratch memory on the handler's stack (strings that str() and comm copy, map keys being built).
// A string value is a register that holds where its NUL-terminated bytes are: an offset below
// kScratchBytes into scratch, or kScratchBytes + an offset into the pool (so that a string is
// never an address the hit path would follow unchecked). Arithmetic is 64-bit and wraps; division
// and remainder by zero give 0, as in BPF.
//
// Maps. An aggregation map (count sum avg min max stats hist lhist) is per thread: each slot holds
// a table for it (see "Tables") that only the slot's thread writes, and the CLI merges the tables
// of all slots when it prints, as it sums counters. A plain map (`@m[k] = v`, read back with
// `@m[k]`, deleted with delete()) is shared by every thread, since a hit reads what another wrote:
// one table in the region (SharedEntry), entries claimed with a compare-and-swap.
//
// Tables (aggregation maps; the slot's area at header.table_offset, MapInfo::table_offset within
// it): TableHeader, then an open-addressing index of 2 * max_entries uint32 buckets (entry + 1, 0
// = empty; linear probing from hash & (buckets - 1)) that only the owner reads, then max_entries
// entries of entry_size bytes appended in order: AggEntryHeader, the key (key_size bytes), the
// value (value_size bytes). A new key takes entry `used`: the owner writes its key and a zero
// value, stores used + 1 with release, and then writes its bucket. Values change with relaxed
// stores of 64-bit words (the owner's only), read by the CLI with relaxed loads. A map full (all
// max_entries used) counts the update in TableHeader::dropped.
//
// clear(@m) in the CLI (END, interval) bumps the map's generation (ProgramHeader's shared area,
// GenerationWords); an entry stamped with an older generation counts as empty: the owner resets its
// value before updating it, and the CLI leaves it out when it merges.
//
// delete(@m[k]) of an aggregation in a probe takes a stamp from the shared delete clock
// (SharedHead::delete_clock) and writes it as k's tombstone (MapInfo::tomb_offset). Every entry
// remembers the newest tombstone of its key that it has seen (AggEntryHeader::deleted_seen): an
// owner that finds a newer one resets the value before updating it, and the CLI leaves out an
// entry (or a folded value) that has not seen its key's tombstone. So a delete takes the key's
// values out of every thread's table at once, as bpftrace's delete of a per-CPU map's key does.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace usprobe::agent::bt {

inline constexpr uint32_t kProgramMagic = 0x3142'5355;  // "USB1"
inline constexpr uint32_t kRegisters = 32;
inline constexpr uint32_t kScratchBytes = 4096;
inline constexpr uint32_t kMaxKeyBytes = 1536;  // room for a ustack of 127 frames
// A user stack as ustack writes it into scratch, and as it sits in a key: the pid and the agent's
// image number (pid | image << 32, for the CLI to name the frames with the right mappings), the
// number of frames, then the frames (usprobe_hit_stack's order), zero past the count.
inline constexpr uint32_t kMaxUstackFrames = 127;
inline constexpr uint32_t ustack_bytes(uint32_t frames) {
  return 16 + 8 * frames;
}
inline constexpr uint32_t kMaxPrintfArgs = 16;
inline constexpr uint32_t kMaxBufBytes = 64;  // buf(p, n): bpftrace's limit

// The operations, in enum Op's order: PLAIN(name) for one, BIN(name) for a binary one (which may
// take an immediate operand). agent/bt_vm.cc builds its dispatch table from this list. The list
// and the enum keep their hand layout:
// clang-format off
#define BT_OPS(PLAIN, BIN)                                                                       \
  PLAIN(end) PLAIN(mov) PLAIN(const) PLAIN(const_small) PLAIN(arg) PLAIN(usdt_arg) PLAIN(retval) \
  PLAIN(builtin) PLAIN(comm) PLAIN(pool_string) PLAIN(str) BIN(add) BIN(sub) BIN(mul)           \
  BIN(div_u) BIN(div_s) BIN(mod_u) BIN(mod_s) BIN(and) BIN(or) BIN(xor) BIN(shl) BIN(shr_u)     \
  BIN(shr_s) BIN(eq) BIN(ne) BIN(lt_s) BIN(le_s) BIN(lt_u) BIN(le_u) BIN(gt_s) BIN(ge_s)        \
  BIN(gt_u) BIN(ge_u) BIN(jf_eq) BIN(jf_ne) BIN(jf_lt_s) BIN(jf_le_s) BIN(jf_lt_u) BIN(jf_le_u) \
  BIN(jf_gt_s) BIN(jf_ge_s) BIN(jf_gt_u) BIN(jf_ge_u) PLAIN(add_imm) PLAIN(neg) PLAIN(not) PLAIN(lnot) PLAIN(ext) PLAIN(str_eq) \
  PLAIN(jmp) PLAIN(jz) PLAIN(jnz) PLAIN(key_int) PLAIN(key_str) PLAIN(agg) PLAIN(load)          \
  PLAIN(store) PLAIN(delete) PLAIN(has) PLAIN(printf) PLAIN(exit) PLAIN(ustack) PLAIN(key_bytes) \
  PLAIN(load_str) PLAIN(store_str) PLAIN(usym) PLAIN(buf) PLAIN(agg_delete) PLAIN(reg) PLAIN(tid) PLAIN(pid) PLAIN(nsecs)   \
  PLAIN(elapsed) PLAIN(probe_index) PLAIN(agg_count_word) PLAIN(agg_keyless)

enum Op : uint8_t {
  kEnd = 0,     // the hit is done
  kMov,         // dst = a
  kConst,       // dst = constants[imm]
  kConstSmall,  // dst = imm (sign-extended)
  kArg,         // dst = argument imm of the call (usprobe_arg)
  kUsdtArg,     // dst = the USDT note's argument imm (usprobe_usdt_arg)
  kRetval,      // dst = the return value
  kBuiltin,     // dst = builtin imm (Builtin)
  kComm,        // dst = scratch offset imm: the thread's name copied there, 16 bytes
  kPoolString,  // dst = the pool's string at imm
  kStr,         // dst = scratch offset imm: the string at address a copied there, at most
                //       min(b's value, string_size - 1) bytes (b = kNoReg: string_size - 1)
  // dst = a OP b; comparisons give 0 or 1. With kImmOperand: b is imm (sign-extended).
  kAdd, kSub, kMul, kDivU, kDivS, kModU, kModS, kAnd, kOr, kXor, kShl, kShrU, kShrS,
  kEq, kNe, kLtS, kLeS, kLtU, kLeU, kGtS, kGeS, kGtU, kGeU,
  // A comparison and a conditional jump in one (a predicate, an if): unless a OP b, jump forward
  // (jump_offset: imm; with kImmOperand b is imm and the offset is dst | b << 8).
  kJfEq, kJfNe, kJfLtS, kJfLeS, kJfLtU, kJfLeU, kJfGtS, kJfGeS, kJfGtU, kJfGeU,
  kAddImm,      // dst = a + imm
  kNeg,         // dst = -a
  kNot,         // dst = ~a
  kLNot,        // dst = !a
  kExt,         // dst = a's low (imm & 0xff) bits, sign-extended when imm & 0x100, else zero-
  kStrEq,       // dst = the strings at a and b are equal in their first imm bytes (or to their NULs)
  kJmp,         // pc += imm (relative to the next instruction)
  kJz,          // if a == 0: pc += imm
  kJnz,         // if a != 0: pc += imm
  kKeyInt,      // key[imm .. imm + 8) = a (little-endian), key being &scratch[0]
  kKeyStr,      // key[imm & 0xffff ...] = the string at a, (imm >> 16) bytes, zero-padded
  kAgg,         // maps[imm] (an aggregation) at key: update with a's value; b: kNoReg, or the
                // register that holds the whole key (an 8-byte key: one integer)
  // kLoad..kHas: b is kNoReg (the key is in the key area) or, as for kAgg, the register that holds
  // the whole 8-byte key.
  kLoad,        // dst = maps[imm] (plain) at key, 0 when absent
  kStore,       // maps[imm] (plain) at key = a
  kDelete,      // delete maps[imm] at key
  kHas,         // dst = maps[imm] (plain) has key
  kPrintf,      // printf imm with b registers from a on
  kExit,        // ask the CLI to end the session (header exit flag)
  kUstack,      // dst = scratch offset imm & 0xffff: the user stack written there, at most imm >> 16
                // frames (see ustack_bytes); the program has kProgramStacks
  kKeyBytes,    // key[imm & 0xffff ...] = imm >> 16 bytes from scratch offset a
  kLoadStr,     // dst = scratch offset imm >> 16: the string value of maps[imm & 0xffff] (a plain
                // string map) at key copied there, "" when absent
  kStoreStr,    // maps[imm] (a plain string map) at key = the string a
  kUsym,        // dst = scratch offset imm: usym(a) written there, 16 bytes: pid | image << 32,
                // then the address (the CLI names it with that image's mappings); kProgramMaps
  kBuf,         // dst = scratch offset imm & 0xffff: imm >> 16 bytes (at most kMaxBufBytes) copied
                // there from address a, zero-padded to a word; all zero when a is not readable
  kAggDelete,   // delete maps[imm] (an aggregation with tombstones) at key (b as for kLoad)
  // From here on, operations that only the agent's loader writes (never in a program from the CLI).
  kReg,         // dst = the hit's saved register word imm (usprobe_hit_regs): the agent's loader
                // writes it for kArg and kRetval; a program from the CLI never has it
  // dst = one builtin, without kBuiltin's switch: the loader's rewrite of kBuiltin (never from
  // the CLI either).
  kTidOp, kPidOp, kNsecsOp, kElapsedOp, kProbeIndexOp,
  kAggCountWord,  // kAgg of a count() whose key is in a register: the commonest update, alone
  kAggKeyless,    // kAgg of a map without a key (`@h = hist(x)`): its one entry, no lookup
  kOpCount
};
// clang-format on

inline constexpr uint8_t kNoReg = 0xff;
// Or'ed into a binary operation (kAdd..kGeU): its right operand is the instruction's imm.
inline constexpr uint8_t kImmOperand = 0x80;
inline constexpr bool is_binary(uint8_t op) {
  return op >= kAdd && op <= kJfGeU;
}
inline constexpr bool is_fused_jump(uint8_t op) {
  return (op & ~kImmOperand) >= kJfEq && (op & ~kImmOperand) <= kJfGeU;
}
// The comparison's fused jump: kEq..kGeU to kJfEq..kJfGeU.
inline constexpr uint8_t fused_jump_of(uint8_t compare) {
  return static_cast<uint8_t>(compare - kEq + kJfEq);
}
#define BT_COUNT(name) +1
static_assert(0 BT_OPS(BT_COUNT, BT_COUNT) == kOpCount, "BT_OPS lists every operation");
#undef BT_COUNT

// kProbeIndex: the probe's index in the plan, which the CLI names (func, probe).
enum Builtin : uint32_t {
  kPid,
  kTid,
  kUid,
  kGid,
  kCpu,
  kNsecs,
  kElapsed,
  kProbeIndex,
  kCpid,
  kBuiltinCount
};

struct Insn {
  uint8_t op;
  uint8_t dst;
  uint8_t a;
  uint8_t b;
  int32_t imm;
};
static_assert(sizeof(Insn) == 8);
// Where a jump lands, relative to the next instruction.
inline int64_t jump_offset(const Insn &in) {
  if (is_fused_jump(in.op) && (in.op & kImmOperand)) return in.dst | in.b << 8;
  return in.imm;
}

enum MapKind : uint32_t {
  kMapPlain = 0,  // shared: `@m[k] = v`
  kMapCount,
  kMapSum,
  kMapAvg,
  kMapMin,
  kMapMax,
  kMapStats,
  kMapHist,
  kMapLhist,
  // Shared, with string values (`@name[tid] = str(arg0)`): value_size bytes after the key, NUL-
  // terminated. Written in place, so a reader may see a string torn by a writer of the same key
  // at the same moment (keys are usually the writer's own: tid).
  kMapPlainString,
  kMapKindCount
};

struct MapInfo {
  uint32_t kind;          // MapKind
  uint32_t key_size;      // bytes, a multiple of 8, at most kMaxKeyBytes (0: no key)
  uint32_t value_size;    // bytes, a multiple of 8 (map_value_size)
  uint32_t max_entries;   // a power of two
  uint32_t entry_size;    // aggregation: AggEntryHeader + key + value; plain: SharedEntry's size
  uint32_t is_signed;     // values are signed (sum min max avg stats, plain)
  uint64_t table_offset;  // aggregation: within a slot's table area; plain: within the region
  int64_t lhist_min, lhist_max, lhist_step;
  // An aggregation whose entries a probe deletes (kAggDelete): its tombstones, a table of the
  // shared area laid out as a plain map's (same key, max_entries entries), each entry's value the
  // delete clock's stamp when the key was last deleted; 0: none. See "delete()" below.
  uint64_t tomb_offset;
};
static_assert(sizeof(MapInfo) == 64);

inline constexpr uint32_t kHistBuckets = 66;  // bt/value.h's Hist

// The bytes of one value of a map of this kind.
inline uint32_t map_value_size(uint32_t kind, int64_t lhist_min, int64_t lhist_max,
                               int64_t lhist_step) {
  switch (kind) {
    case kMapAvg:
    case kMapStats:
    case kMapMin:
    case kMapMax:
      return 16;  // avg/stats: count, total; min/max: value, and whether there is one
    case kMapHist:
      return 8 * kHistBuckets;
    case kMapLhist:
      return static_cast<uint32_t>(8 * ((lhist_max - lhist_min) / lhist_step + 2));
    default:
      return 8;
  }
}

// The hist() bucket of v (bt/value.h): bpftrace 0.17's, whose log2 stops at 31 (every value from
// 2^31 up counts in bucket 33, [2G, 4G)).
inline uint32_t hist_bucket(int64_t v) {
  if (v < 0) return 0;
  if (v == 0) return 1;
  const auto log2 = static_cast<uint32_t>(63 - __builtin_clzll(static_cast<uint64_t>(v)));
  return 2 + (log2 < 31 ? log2 : 31);
}
// The lhist() bucket of v: 0 below min, 1.. inside, the last at or above max.
inline uint32_t lhist_bucket(int64_t v, int64_t min, int64_t max, int64_t step) {
  if (v < min) return 0;
  if (v >= max) return static_cast<uint32_t>((max - min) / step + 1);
  return static_cast<uint32_t>((v - min) / step + 1);
}

struct TableHeader {
  std::atomic<uint32_t> used;     // entries published (owner: release; CLI: acquire)
  std::atomic<uint32_t> dropped;  // updates that found the table full (owner: relaxed add)
  uint32_t reserved[14];
};
static_assert(sizeof(TableHeader) == 64);

struct AggEntryHeader {
  uint32_t hash;
  uint32_t bucket;  // its index bucket, for the CLI to clear when it frees the slot
  // The map's generation when the value was last reset (see clear() above); owner writes, CLI
  // reads (relaxed).
  std::atomic<uint32_t> generation;
  // The newest tombstone stamp of this key the owner has seen (see delete() above); same rules.
  std::atomic<uint32_t> deleted_seen;
};
static_assert(sizeof(AggEntryHeader) == 16);

inline uint64_t table_bytes(const MapInfo &m) {
  return sizeof(TableHeader) + ((8 * uint64_t{m.max_entries} + 63) & ~uint64_t{63}) +
         uint64_t{m.entry_size} * m.max_entries;
}

// A plain map's entry (shared by all threads): state, hash, the key, the value. Entries are
// claimed once and keep their key for good: delete() marks one absent, and a later store of the
// same key makes it live again, so a key never moves and readers need no lock.
enum SharedState : uint32_t {
  kSharedEmpty = 0,
  kSharedClaiming = 1,
  kSharedLive = 2,
  kSharedAbsent = 3
};
struct SharedEntryHeader {
  std::atomic<uint32_t> state;
  uint32_t hash;
  std::atomic<uint64_t> value;
};
static_assert(sizeof(SharedEntryHeader) == 16);
// Padded to 64 bytes: threads that own different keys (@start[tid]) never share a cache line.
inline uint32_t shared_entry_size(uint32_t key_size, uint32_t string_value_size = 0) {
  return (sizeof(SharedEntryHeader) + key_size + string_value_size + 63) & ~63u;
}
inline bool is_shared(uint32_t kind) {
  return kind == kMapPlain || kind == kMapPlainString;
}

struct ProbeCode {
  uint32_t first;  // instruction index
  uint32_t count;  // instructions; the last is kEnd
  uint32_t flags;  // kProbeUsdt, kProbeReturn
  uint32_t reserved;
};
inline constexpr uint32_t kProbeUsdt = 1;
inline constexpr uint32_t kProbeReturn = 2;

// kPrintfBytes: size bytes copied as they are from the scratch offset the register holds (a usym).
enum PrintfArgKind : uint32_t { kPrintfInt = 0, kPrintfString = 1, kPrintfBytes = 2 };
struct PrintfArg {
  uint32_t kind;  // PrintfArgKind
  uint32_t size;  // a string's bytes in the record (its NUL included), a multiple of 8
};
struct PrintfInfo {
  uint32_t first_arg;    // index into the PrintfArg table
  uint32_t arg_count;    // at most kMaxPrintfArgs
  uint32_t record_size;  // PrintfRecord + 8 per int + the strings' sizes
  uint32_t reserved;
};

// A printf's record in the thread's ring: this, then the arguments in order, an int as 8 bytes and
// a string as its PrintfArg::size bytes (NUL-terminated, zero-padded). The first two fields are
// those of every ring record (protocol.h: size, then probe or kPadProbe).
struct PrintfRecord {
  uint32_t size;
  uint32_t probe;
  uint64_t tsc;
  int32_t tid;
  uint32_t printf_index;
};
static_assert(sizeof(PrintfRecord) == 24);

struct ProgramHeader {
  uint32_t magic;
  uint32_t probe_count;  // = the plan's
  uint32_t insn_count, constant_count, pool_size, map_count, printf_count, printf_arg_count;
  uint64_t probes_offset, insns_offset, constants_offset, pool_offset, maps_offset, printfs_offset,
      printf_args_offset;  // within the program
  uint32_t string_size;    // str()'s default size, the NUL included (bpftrace's 64)
  uint32_t flags;          // kProgramStacks
  uint64_t tables_bytes;   // a slot's table area: every aggregation map's table
  // Within the region: the shared area, GenerationWords, then the plain maps' tables.
  uint64_t shared_offset, shared_size;
  uint64_t start_tsc;   // elapsed = (rdtsc - start_tsc) * tsc_to_ns_mult >> kTscShift
  uint64_t nsecs_base;  // nsecs = nsecs_base + rdtsc * tsc_to_ns_mult >> kTscShift
};

// The program takes user stacks (ustack): its probes are attached with the vector state saved
// (the unwinder may use any register), and its agents write their mappings (header.trace_stacks).
inline constexpr uint32_t kProgramStacks = 1;
// The program names addresses (usym): its agents write their mappings (header.trace_stacks).
inline constexpr uint32_t kProgramMaps = 2;
inline constexpr uint32_t kUsymBytes = 16;

// The shared area's first words: exit requested (kExit), then one generation per map.
struct SharedHead {
  std::atomic<uint32_t> exit_requested;
  std::atomic<uint32_t> dropped;  // plain-map stores that found their table full
  // cpid: the first process whose agent loaded the program (compare-and-swap from 0, outside the
  // hit path): a launched command's own process, which starts before any it creates. 0 with -p.
  std::atomic<int32_t> cpid;
  std::atomic<uint32_t> delete_clock;   // the last stamp given to a tombstone (kAggDelete)
  std::atomic<uint32_t> generation[1];  // [map_count]
};
inline uint64_t shared_head_bytes(uint32_t map_count) {
  return (offsetof(SharedHead, generation) + 4 * uint64_t{map_count} + 63) & ~uint64_t{63};
}

}  // namespace usprobe::agent::bt
