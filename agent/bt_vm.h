// `usprobe run`: the agent's half. The program the CLI compiled (protocol/bt.h) is checked once,
// before the probes are attached (bt_load), and then run on every hit (bt_handler): no lock, no
// allocation, no system call (a thread's first hit excepted, as for every handler), no libc.
#pragma once

#include <cstdint>
#include <string>

#include "protocol/bt.h"
#include "protocol/protocol.h"
#include "usprobe/usprobe.h"

namespace usprobe::agent {

// What the hit path needs of an aggregation map's table in a slot, worked out once (protocol/bt.h,
// "Tables"): offsets from the slot's start.
struct AggTable {
  uint64_t header;   // its TableHeader
  uint64_t entries;  // its first entry (the buckets lie between)
  uint32_t mask;     // buckets - 1
  uint32_t max_entries;
  uint32_t entry_size;
  uint32_t key_size;
  uint32_t value_words;
  uint32_t kind;   // MapKind
  uint32_t tombs;  // nonzero: a probe deletes its entries (MapInfo::tomb_offset)
  uint32_t reserved;
};

// An instruction as bt_handler runs it: the checked Insn with the address of its operation's code
// (direct threading: one load and one jump from an operation to the next). bt_load writes them.
struct ThreadedInsn {
  const void *code;
  uint8_t op, dst, a, b;
  int32_t imm;
};
static_assert(sizeof(ThreadedInsn) == 16);

// The program, copied out of the region once it checked out: a process of the command can rewrite
// the region, and the hit path follows only what was checked.
struct BtProgram {
  bt::ProgramHeader head;
  const bt::ProbeCode *probes = nullptr;
  const bt::Insn *insns = nullptr;
  const ThreadedInsn *threaded = nullptr;       // [insn_count]: insns, ready to run
  const ThreadedInsn *const *starts = nullptr;  // [probe_count]: each probe's first
  const uint64_t *constants = nullptr;
  const char *pool = nullptr;
  const bt::MapInfo *maps = nullptr;
  const AggTable *agg = nullptr;  // [map_count]; only the aggregations' are used
  const bt::PrintfInfo *printfs = nullptr;
  const bt::PrintfArg *printf_args = nullptr;
  char *shared = nullptr;  // the region's shared area
  char *copy = nullptr;    // the private copy the tables above point into (malloc'd)
  int32_t uid = 0, gid = 0;
};
extern BtProgram g_bt;

// Checks the program at header.program_offset against the region and keeps what the hit path
// needs. Returns "" or why the program was refused (a CLI gone wrong, or a region scribbled on),
// having kept nothing. `launched`: a command usprobe started, whose first process to get here is
// its cpid. A later load replaces the program and keeps the earlier one's memory, which a handler
// of the earlier session may still be reading.
std::string bt_load(Header *h, bool launched);
// Frees the loaded program: for tests, where no handler can be running it.
void bt_unload();

// The consumer of probe `user` (its index): runs its code. Attached with
// USPROBE_GENERAL_REGS_ONLY.
void bt_handler(usprobe_hit *hit, void *user);
// The code address of each operation in bt_handler (indexed as ThreadedInsn::op after bt_load's
// rewrites: the immediate forms at op + kOpCount).
const void *const *bt_operations();

}  // namespace usprobe::agent
