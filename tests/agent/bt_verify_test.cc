// The agent's check of a `usprobe run` program (agent/bt_load.cc), before anything is attached: a
// program the CLI compiled loads, and each way a region scribbled on (by a process of the command,
// which can write it) or a CLI gone wrong could break it is refused with its reason. Also the
// loader's rewrites that the interpreter relies on. Built with agent/bt_load.cc itself, and a
// stand-in for the interpreter's table of operations (bt_vm.cc is the agent's hit path).
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/bt_vm.h"
#include "bt/check.h"
#include "bt/compile.h"
#include "bt/parser.h"
#include "bt/program.h"
#include "session/region.h"

namespace usprobe::agent {

// bt_vm.cc's table, as bt_load reads it: here each operation's "code address" is its own slot, so
// that a test can tell which operation the loader chose.
const void *const *bt_operations() {
  static const void *table[2 * bt::kOpCount];
  for (uint32_t i = 0; i < 2 * bt::kOpCount; ++i) table[i] = &table[i];
  return table;
}

namespace {

using namespace bt;
using cli::PlanEntry;
using cli::Region;
using cli::RegionConfig;

// Three probes: an entry with a fused && predicate, integer keys in registers, a keyless hist, a
// plain map, a delete of an aggregation's key (tombstones), printf with a buf; a return probe; and
// a second entry.
constexpr const char *kProgram =
    "uprobe:/bin/true:main /arg0 > 1 && arg1 != 0/ { @c[arg0 % 8] = count(); @h = hist(arg0); "
    "@s[tid] = nsecs; if (arg0 == 3) { delete(@c[1]); } printf(\"%d %r\\n\", arg0, buf(arg1, 4)); "
    "} "
    "uretprobe:/bin/true:main /@s[tid]/ { @lat = sum(nsecs - @s[tid]); delete(@s[tid]); } "
    "uprobe:/bin/true:exit { @e[comm] = count(); }";

class BtVerify : public ::testing::Test {
 protected:
  void TearDown() override { bt_unload(); }
  void SetUp() override {
    auto program = usprobe::bt::parse(kProgram);
    ASSERT_TRUE(program.has_value()) << program.error().message;
    ASSERT_TRUE(usprobe::bt::check(*program).has_value());
    auto compiled = usprobe::bt::compile(*program);
    ASSERT_TRUE(compiled.has_value()) << compiled.error().message;
    std::vector<PlanEntry> plan;
    std::vector<uint32_t> block_of_probe;
    for (const usprobe::bt::CompiledProbe &p : compiled->probes) {
      plan.push_back({p.spec, 0, 0});
      block_of_probe.push_back(p.block);
    }
    usprobe::bt::Laid laid = usprobe::bt::lay_out(compiled->code, block_of_probe, 0, 0);
    RegionConfig config;
    config.mode = kModeRun;
    config.max_slots = 4;
    config.max_notices = 4;
    config.ring_size = 1 << 16;
    config.tsc_to_ns_mult = 1;
    config.program = laid.program;
    config.tables_bytes = laid.tables_bytes;
    config.shared_bytes = laid.shared_bytes;
    auto region = Region::create(config, plan);
    ASSERT_TRUE(region.has_value()) << region.error().message;
    region_ = std::make_unique<Region>(std::move(*region));
    h_ = region_->header();
    program_ = reinterpret_cast<char *>(h_) + h_->program_offset;
    std::memcpy(&ph_, program_, sizeof ph_);
    pristine_.assign(program_, h_->program_size);
  }

  // Loads the region's program (the one loaded before is freed first), then puts the pristine
  // bytes back for the next case.
  std::string load() {
    bt_unload();
    std::string why = bt_load(h_, true);
    std::memcpy(program_, pristine_.data(), pristine_.size());  // for the next case
    return why;
  }
  Insn &insn(uint32_t k) { return reinterpret_cast<Insn *>(program_ + ph_.insns_offset)[k]; }
  MapInfo &map(uint32_t i) { return reinterpret_cast<MapInfo *>(program_ + ph_.maps_offset)[i]; }
  ProbeCode &probe(uint32_t i) {
    return reinterpret_cast<ProbeCode *>(program_ + ph_.probes_offset)[i];
  }
  // The first instruction with this operation (immediate form included), or -1.
  int find(uint8_t op) {
    for (uint32_t k = 0; k < ph_.insn_count; ++k)
      if ((insn(k).op & ~kImmOperand) == op) return static_cast<int>(k);
    return -1;
  }
  int map_of_kind(uint32_t kind, bool with_tombs = false) {
    for (uint32_t i = 0; i < ph_.map_count; ++i)
      if (map(i).kind == kind && (map(i).tomb_offset != 0) == with_tombs)
        return static_cast<int>(i);
    return -1;
  }

  std::unique_ptr<Region> region_;
  Header *h_ = nullptr;
  char *program_ = nullptr;
  ProgramHeader ph_{};
  std::string pristine_;
};

TEST_F(BtVerify, TheCompiledProgramLoadsWithTheRewritesTheInterpreterRunsOn) {
  ASSERT_EQ(load(), "");
  const void *const *ops = bt_operations();
  auto runs = [&](uint32_t k) {
    return static_cast<uint32_t>(static_cast<const void *const *>(g_bt.threaded[k].code) - ops);
  };
  uint32_t regs = 0, fused = 0, count_word = 0, keyless = 0, builtins = 0;
  for (uint32_t k = 0; k < g_bt.head.insn_count; ++k) {
    const Insn &in = g_bt.insns[k];
    EXPECT_EQ(runs(k), in.op) << "instruction " << k << ": its code is its operation's";
    EXPECT_NE(in.op, kArg) << "arguments are register words after the load";
    EXPECT_NE(in.op, kRetval);
    regs += in.op == kReg;
    fused += in.op >= kJfEq + kOpCount && in.op <= kJfGeU + kOpCount;  // immediate forms
    count_word += in.op == kAggCountWord;
    keyless += in.op == kAggKeyless;
    builtins += in.op == kTidOp || in.op == kNsecsOp;
  }
  EXPECT_GE(regs, 3u);        // arg0 (several times), arg1, retval is not used
  EXPECT_EQ(fused, 3u);       // arg0 > 1, arg1 != 0, arg0 == 3
  EXPECT_EQ(count_word, 0u);  // @c has tombstones: the generic update checks them
  EXPECT_EQ(keyless, 2u);     // @h, and @lat (a sum without a key) in the return probe
  EXPECT_GE(builtins, 4u);    // tid and nsecs
  for (uint32_t p = 0; p < g_bt.head.probe_count; ++p)
    EXPECT_EQ(g_bt.starts[p], g_bt.threaded + g_bt.probes[p].first);
}

TEST_F(BtVerify, EachBrokenPartIsRefusedWithItsReason) {
  ASSERT_EQ(load(), "");
  struct Case {
    const char *what;
    std::function<void()> breaks;
    const char *reason;
  };
  const int jf = find(kJfGtU);
  const int jmp = find(kJz) >= 0 ? find(kJz) : find(kJmp);
  int keyless_agg = -1;  // @h's update: its key (none) is in the key area
  for (uint32_t k = 0; k < ph_.insn_count && keyless_agg < 0; ++k)
    if (insn(k).op == kAgg && map(insn(k).imm).key_size == 0) keyless_agg = static_cast<int>(k);
  const int del = find(kAggDelete);
  const int buf = find(kBuf);
  const int arg = find(kArg);
  const int printf_op = find(kPrintf);
  const int plain = map_of_kind(kMapPlain);
  const int tombs = map_of_kind(kMapCount, true);
  ASSERT_GE(jf, 0);
  ASSERT_GE(jmp, 0);
  ASSERT_GE(keyless_agg, 0);
  ASSERT_GE(del, 0);
  ASSERT_GE(buf, 0);
  ASSERT_GE(arg, 0);
  ASSERT_GE(printf_op, 0);
  ASSERT_GE(plain, 0);
  ASSERT_GE(tombs, 0);
  const std::vector<Case> cases = {
      {"magic", [&] { reinterpret_cast<ProgramHeader *>(program_)->magic = 0; }, "bad magic"},
      {"a register", [&] { insn(0).dst = kRegisters; }, "register out of range"},
      {"a fused jump's offset (16 bits in dst and b)",
       [&] {
         insn(jf).dst = 0xff;
         insn(jf).b = 0xff;
       },
       "jump out of the probe's code"},
      {"a jump", [&] { insn(jmp).imm = 1 << 20; }, "jump out of the probe's code"},
      {"a backward jump", [&] { insn(jmp).imm = -(1 << 20); }, "jump out of the probe's code"},
      {"an operation only the loader writes", [&] { insn(0).op = kReg; }, "unknown operation"},
      {"an operation past the last", [&] { insn(0).op = kOpCount + 1; }, "unknown operation"},
      {"an immediate on a unary operation",
       [&] { insn(arg).op = static_cast<uint8_t>(kArg | kImmOperand); }, "an immediate operand"},
      {"an argument number", [&] { insn(arg).imm = 6; }, "argument out of range"},
      {"an argument at a return probe", [&] { probe(0).flags |= kProbeReturn; }, "at a return"},
      {"a key in a register for a map whose key is not one word", [&] { insn(keyless_agg).b = 0; },
       "a key in a register"},
      {"a delete of a map without tombstones", [&] { map(insn(del).imm).tomb_offset = 0; },
       "not an aggregation map with tombstones"},
      {"tombstones outside the shared area", [&] { map(tombs).tomb_offset = uint64_t{1} << 40; },
       "tombstones lie outside the shared area"},
      {"tombstones on a plain map", [&] { map(plain).tomb_offset = 4096; },
       "tombstones lie outside the shared area"},
      {"a plain map's table outside the shared area",
       [&] { map(plain).table_offset = uint64_t{1} << 40; },
       "its table lies outside the shared area"},
      {"a buf's length", [&] { insn(buf).imm = static_cast<int32_t>(insn(buf).imm | (65 << 16)); },
       "bad buf"},
      {"a printf's argument count", [&] { insn(printf_op).b = 7; }, "bad printf"},
      {"a probe's code that does not end",
       [&] { insn(probe(0).first + probe(0).count - 1).op = kMov; }, "does not end"},
      {"a probe count other than the plan's",
       [&] { reinterpret_cast<ProgramHeader *>(program_)->probe_count = 9; },
       "probe count differs"},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(c.what);
    c.breaks();
    const std::string why = load();
    EXPECT_NE(why.find(c.reason), std::string::npos) << "refused with: \"" << why << "\"";
    EXPECT_EQ(why.rfind("bad program: ", 0), 0u) << why;
  }
  EXPECT_EQ(load(), "") << "the pristine program still loads";
}

}  // namespace
}  // namespace usprobe::agent
