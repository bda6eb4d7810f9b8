// `usprobe run`: the agent's check of the program the CLI compiled (protocol/bt.h), once per
// session before any probe is attached. Not on the hit path (bt_vm.cc is).
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "agent/bt_vm.h"

namespace usprobe::agent {

using namespace bt;

// constinit: the agent's constructor may load a program before this file's initialisers would run.
constinit BtProgram g_bt{};

namespace {

std::string check_program(const char *p, uint64_t size, const Header &h, BtProgram &out) {
  if (size < sizeof(ProgramHeader)) return "too short for its header";
  ProgramHeader ph;
  std::memcpy(&ph, p, sizeof ph);
  if (ph.magic != kProgramMagic) return "bad magic";
  if (ph.probe_count != h.probe_count) return "probe count differs from the plan's";
  auto table = [&](uint64_t offset, uint64_t count, uint64_t each) {
    return offset % 8 == 0 && count < (uint64_t{1} << 24) && offset <= size &&
           count * each <= size - offset;
  };
  if (!table(ph.probes_offset, ph.probe_count, sizeof(ProbeCode)) ||
      !table(ph.insns_offset, ph.insn_count, sizeof(Insn)) ||
      !table(ph.constants_offset, ph.constant_count, 8) ||
      !table(ph.pool_offset, ph.pool_size, 1) ||
      !table(ph.maps_offset, ph.map_count, sizeof(MapInfo)) ||
      !table(ph.printfs_offset, ph.printf_count, sizeof(PrintfInfo)) ||
      !table(ph.printf_args_offset, ph.printf_arg_count, sizeof(PrintfArg)))
    return "a table lies outside the program";
  if (ph.string_size < 2 || ph.string_size > 4096) return "bad string size";
  if (ph.pool_size > 0 && p[ph.pool_offset + ph.pool_size - 1] != '\0')
    return "the string pool does not end with a NUL";
  // A private copy of everything the hit path reads.
  char *copy = static_cast<char *>(std::malloc(size));
  if (!copy) return "out of memory";
  out.copy = copy;
  std::memcpy(copy, p, size);
  out.head = ph;
  out.probes = reinterpret_cast<const ProbeCode *>(copy + ph.probes_offset);
  out.insns = reinterpret_cast<const Insn *>(copy + ph.insns_offset);
  out.constants = reinterpret_cast<const uint64_t *>(copy + ph.constants_offset);
  out.pool = copy + ph.pool_offset;
  out.maps = reinterpret_cast<const MapInfo *>(copy + ph.maps_offset);
  out.printfs = reinterpret_cast<const PrintfInfo *>(copy + ph.printfs_offset);
  out.printf_args = reinterpret_cast<const PrintfArg *>(copy + ph.printf_args_offset);

  // The shared area and the slots' table areas.
  if (ph.shared_offset % 64 != 0 || ph.shared_offset > h.region_size ||
      ph.shared_size > h.region_size - ph.shared_offset ||
      ph.shared_size < shared_head_bytes(ph.map_count))
    return "the shared area lies outside the region";
  if (h.table_offset % 64 != 0 || h.table_offset + ph.tables_bytes > h.ring_offset)
    return "the table area does not fit in a slot";
  for (uint32_t i = 0; i < ph.map_count; ++i) {
    const MapInfo &m = out.maps[i];
    if (m.kind >= kMapKindCount || m.key_size % 8 != 0 || m.key_size > kMaxKeyBytes ||
        m.max_entries == 0 || (m.max_entries & (m.max_entries - 1)) != 0 ||
        m.max_entries > (1u << 20))
      return fmt::format("map {}: bad kind, key size or entry count", i);
    if (m.kind == kMapLhist && (m.lhist_step <= 0 || m.lhist_max <= m.lhist_min ||
                                (m.lhist_max - m.lhist_min) / m.lhist_step > 10000))
      return fmt::format("map {}: bad lhist bounds", i);
    if (m.kind != kMapPlainString &&
        m.value_size != map_value_size(m.kind, m.lhist_min, m.lhist_max, m.lhist_step))
      return fmt::format("map {}: bad value size", i);
    if (m.kind == kMapPlainString && (m.value_size < 8 || m.value_size > 4096 || m.value_size % 8))
      return fmt::format("map {}: bad string value size", i);
    if (is_shared(m.kind)) {
      if (m.entry_size !=
              shared_entry_size(m.key_size, m.kind == kMapPlainString ? m.value_size : 0) ||
          m.table_offset % 64 != 0 || m.table_offset < shared_head_bytes(ph.map_count) ||
          m.table_offset > ph.shared_size ||
          uint64_t{m.entry_size} * m.max_entries > ph.shared_size - m.table_offset)
        return fmt::format("map {}: its table lies outside the shared area", i);
    } else {
      if (m.entry_size != sizeof(AggEntryHeader) + m.key_size + m.value_size ||
          m.table_offset % 64 != 0 || m.table_offset > ph.tables_bytes ||
          table_bytes(m) > ph.tables_bytes - m.table_offset)
        return fmt::format("map {}: its table lies outside the table area", i);
    }
    if (m.tomb_offset != 0 &&
        (is_shared(m.kind) || m.tomb_offset % 64 != 0 ||
         m.tomb_offset < shared_head_bytes(ph.map_count) || m.tomb_offset > ph.shared_size ||
         uint64_t{shared_entry_size(m.key_size)} * m.max_entries > ph.shared_size - m.tomb_offset))
      return fmt::format("map {}: its tombstones lie outside the shared area", i);
  }
  auto *agg = static_cast<AggTable *>(std::calloc(ph.map_count + 1, sizeof(AggTable)));
  if (!agg) return "out of memory";
  out.agg = agg;
  for (uint32_t i = 0; i < ph.map_count; ++i) {
    const MapInfo &m = out.maps[i];
    const uint64_t header = h.table_offset + m.table_offset;
    agg[i] = {header,
              header + sizeof(TableHeader) + ((8 * uint64_t{m.max_entries} + 63) & ~uint64_t{63}),
              2 * m.max_entries - 1,
              m.max_entries,
              m.entry_size,
              m.key_size,
              m.value_size / 8,
              m.kind,
              m.tomb_offset != 0,
              0};
  }
  out.agg = agg;
  for (uint32_t i = 0; i < ph.printf_count; ++i) {
    const PrintfInfo &f = out.printfs[i];
    if (f.arg_count > kMaxPrintfArgs || f.first_arg > ph.printf_arg_count ||
        f.arg_count > ph.printf_arg_count - f.first_arg)
      return fmt::format("printf {}: bad arguments", i);
    uint64_t bytes = sizeof(PrintfRecord);
    for (uint32_t a = 0; a < f.arg_count; ++a) {
      const PrintfArg &arg = out.printf_args[f.first_arg + a];
      if (arg.kind > kPrintfBytes) return fmt::format("printf {}: bad argument kind", i);
      if (arg.kind != kPrintfInt && (arg.size == 0 || arg.size % 8 != 0 || arg.size > 4096))
        return fmt::format("printf {}: bad string size", i);
      bytes += arg.kind == kPrintfInt ? 8 : arg.size;
    }
    if (bytes != f.record_size || bytes > h.ring_size) return fmt::format("printf {}: bad size", i);
  }
  // Each probe's code: registers, offsets and indices in range, jumps inside, kEnd last.
  for (uint32_t pi = 0; pi < ph.probe_count; ++pi) {
    const ProbeCode &c = out.probes[pi];
    if (c.count == 0 || c.first > ph.insn_count || c.count > ph.insn_count - c.first)
      return fmt::format("probe {}: its code lies outside the program", pi);
    if (out.insns[c.first + c.count - 1].op != kEnd)
      return fmt::format("probe {}: its code does not end", pi);
    for (uint32_t k = 0; k < c.count; ++k) {
      const Insn &in = out.insns[c.first + k];
      auto bad = [&](const char *why) {
        return fmt::format("probe {}, instruction {}: {}", pi, k, why);
      };
      if ((in.op & kImmOperand) != 0 && !is_binary(in.op & ~kImmOperand))
        return bad("an immediate operand to an operation that takes none");
      if ((in.op & ~kImmOperand) >= kReg) return bad("unknown operation");
      // A fused jump with an immediate keeps its offset where dst and b would be.
      const bool offset_in_regs = is_fused_jump(in.op) && (in.op & kImmOperand);
      if (in.a >= kRegisters ||
          (!offset_in_regs && (in.dst >= kRegisters || (in.b >= kRegisters && in.b != kNoReg))))
        return bad("register out of range");
      if (is_fused_jump(in.op)) {
        if (!offset_in_regs && in.b == kNoReg) return bad("register out of range");
        const int64_t offset = jump_offset(in);
        if (static_cast<int64_t>(k) + 1 + offset < 0 ||
            static_cast<int64_t>(k) + 1 + offset >= c.count)
          return bad("jump out of the probe's code");
      }
      const auto imm = static_cast<int64_t>(in.imm);
      // plain: 0 an aggregation, 1 a plain integer map, 2 a plain string map, 3 either plain.
      const auto map_ok = [&](int plain, int64_t index) {
        if (index < 0 || index >= ph.map_count) return false;
        const uint32_t kind = out.maps[index].kind;
        return plain == 0   ? !is_shared(kind)
               : plain == 1 ? kind == kMapPlain
               : plain == 2 ? kind == kMapPlainString
                            : is_shared(kind);
      };
      switch (in.op & ~kImmOperand) {
        case kConst:
          if (imm < 0 || imm >= ph.constant_count) return bad("constant out of range");
          break;
        case kArg:
          if (imm < 0 || imm > 5) return bad("argument out of range");
          if (c.flags & (kProbeUsdt | kProbeReturn))
            return bad("an argument at a return or a USDT probe");
          break;
        case kRetval:
          if (!(c.flags & kProbeReturn)) return bad("a return value at an entry");
          break;
        case kUsdtArg:
          if (imm < 0 || imm > 11) return bad("argument out of range");
          break;
        case kBuiltin:
          if (imm < 0 || imm >= kBuiltinCount) return bad("unknown builtin");
          break;
        case kComm:
          if (imm < kMaxKeyBytes || imm + 16 > kScratchBytes) return bad("scratch out of range");
          break;
        case kPoolString:
          if (imm < 0 || imm >= ph.pool_size) return bad("pool offset out of range");
          break;
        case kStr:
          if (imm < kMaxKeyBytes || imm + ph.string_size > kScratchBytes)
            return bad("scratch out of range");
          break;
        case kJmp:
        case kJz:
        case kJnz:
          if (static_cast<int64_t>(k) + 1 + imm < 0 || static_cast<int64_t>(k) + 1 + imm >= c.count)
            return bad("jump out of the probe's code");
          break;
        case kKeyInt:
          if (imm < 0 || imm + 8 > kMaxKeyBytes) return bad("key offset out of range");
          break;
        case kUstack: {
          const uint32_t at = static_cast<uint32_t>(in.imm) & 0xffff,
                         n = static_cast<uint32_t>(in.imm) >> 16;
          if (!(ph.flags & kProgramStacks) || n == 0 || n > kMaxUstackFrames || at < kMaxKeyBytes ||
              at % 8 != 0 || at + ustack_bytes(n) > kScratchBytes)
            return bad("bad ustack");
          break;
        }
        case kUsym:
          if (!(ph.flags & kProgramMaps) || imm < kMaxKeyBytes || imm % 8 != 0 ||
              imm + kUsymBytes > kScratchBytes)
            return bad("bad usym");
          break;
        case kBuf: {
          const uint32_t at = static_cast<uint32_t>(in.imm) & 0xffff,
                         n = static_cast<uint32_t>(in.imm) >> 16;
          if (n == 0 || n > kMaxBufBytes || at < kMaxKeyBytes || at % 8 != 0 ||
              at + ((n + 7) & ~7u) > kScratchBytes)
            return bad("bad buf");
          break;
        }
        case kKeyBytes: {
          const uint32_t at = static_cast<uint32_t>(in.imm) & 0xffff,
                         n = static_cast<uint32_t>(in.imm) >> 16;
          if (n == 0 || n % 8 != 0 || at + n > kMaxKeyBytes) return bad("key offset out of range");
          break;
        }
        case kKeyStr: {
          const uint32_t at = static_cast<uint32_t>(in.imm) & 0xffff,
                         n = static_cast<uint32_t>(in.imm) >> 16;
          if (n == 0 || at + n > kMaxKeyBytes) return bad("key offset out of range");
          break;
        }
        case kAggDelete:
          if (!map_ok(0, imm) || out.maps[imm].tomb_offset == 0)
            return bad("not an aggregation map with tombstones");
          if (in.b != kNoReg && out.maps[imm].key_size != 8) return bad("a key in a register");
          break;
        case kAgg:
          if (!map_ok(0, imm)) return bad("not an aggregation map");
          if (in.b != kNoReg && out.maps[imm].key_size != 8) return bad("a key in a register");
          break;
        case kLoad:
        case kStore:
          if (!map_ok(1, imm)) return bad("not a plain integer map");
          if (in.b != kNoReg && out.maps[imm].key_size != 8) return bad("a key in a register");
          break;
        case kStoreStr:
          if (!map_ok(2, imm)) return bad("not a plain string map");
          break;
        case kLoadStr: {
          const int64_t map = imm & 0xffff;
          const uint32_t at = static_cast<uint32_t>(in.imm) >> 16;
          if (!map_ok(2, map)) return bad("not a plain string map");
          if (at < kMaxKeyBytes || at + out.maps[map].value_size > kScratchBytes)
            return bad("scratch out of range");
          break;
        }
        case kDelete:
        case kHas:
          if (!map_ok(3, imm)) return bad("not a plain map");
          if (in.b != kNoReg && out.maps[imm].key_size != 8) return bad("a key in a register");
          break;
        case kPrintf:
          if (imm < 0 || imm >= ph.printf_count || in.b != out.printfs[imm].arg_count ||
              in.a + in.b > kRegisters)
            return bad("bad printf");
          break;
        default:
          break;
      }
    }
  }
  // The interpreter's dispatch table has the immediate forms after the others (bt_vm.cc). An
  // argument and the return value are words of the saved registers (usprobe_hit_regs).
  auto *insns = const_cast<Insn *>(out.insns);
  static constexpr usprobe_reg kArgRegs[6] = {USPROBE_RDI, USPROBE_RSI, USPROBE_RDX,
                                              USPROBE_RCX, USPROBE_R8,  USPROBE_R9};
  for (uint32_t k = 0; k < ph.insn_count; ++k) {
    Insn &in = insns[k];
    if (in.op & kImmOperand) in.op = static_cast<uint8_t>((in.op & ~kImmOperand) + kOpCount);
    if (in.op == kArg || in.op == kRetval) {
      in.imm = usprobe_reg_index(in.op == kArg ? kArgRegs[in.imm] : USPROBE_RAX);
      in.op = kReg;
    }
    // The specialised updates are for maps without tombstones (no delete in a probe).
    if (in.op == kAgg && out.maps[in.imm].tomb_offset == 0) {
      if (in.b != kNoReg && out.maps[in.imm].kind == kMapCount) in.op = kAggCountWord;
      if (in.b == kNoReg && out.maps[in.imm].key_size == 0) in.op = kAggKeyless;
    }
    if (in.op == kBuiltin) {
      switch (in.imm) {
        case kTid:
          in.op = kTidOp;
          break;
        case kPid:
          in.op = kPidOp;
          break;
        case kNsecs:
          in.op = kNsecsOp;
          break;
        case kElapsed:
          in.op = kElapsedOp;
          break;
        case kProbeIndex:
          in.op = kProbeIndexOp;
          break;
        default:
          break;
      }
    }
  }
  // Ready to run: each instruction with its operation's code address.
  auto *threaded =
      static_cast<ThreadedInsn *>(std::calloc(ph.insn_count + 1, sizeof(ThreadedInsn)));
  if (!threaded) return "out of memory";
  out.threaded = threaded;
  const void *const *operations = bt_operations();
  for (uint32_t k = 0; k < ph.insn_count; ++k) {
    const Insn &in = insns[k];
    threaded[k] = {operations[in.op], in.op, in.dst, in.a, in.b, in.imm};
  }
  out.threaded = threaded;
  auto *starts =
      static_cast<const ThreadedInsn **>(std::calloc(ph.probe_count + 1, sizeof(ThreadedInsn *)));
  if (!starts) return "out of memory";
  out.starts = starts;
  for (uint32_t pi = 0; pi < ph.probe_count; ++pi) starts[pi] = threaded + out.probes[pi].first;
  out.starts = starts;
  return "";
}

void free_program(BtProgram &p) {
  std::free(p.copy);
  std::free(const_cast<AggTable *>(p.agg));
  std::free(const_cast<ThreadedInsn *>(p.threaded));
  std::free(const_cast<const ThreadedInsn **>(p.starts));
  p = BtProgram{};
}

}  // namespace

void bt_unload() {
  free_program(g_bt);
}

std::string bt_load(Header *h, bool launched) {
  if (h->program_size == 0) return "no program";
  if (h->program_offset % 8 != 0 || h->program_offset > h->region_size ||
      h->program_size > h->region_size - h->program_offset)
    return "the program lies outside the region";
  BtProgram p;
  std::string why =
      check_program(reinterpret_cast<const char *>(h) + h->program_offset, h->program_size, *h, p);
  if (!why.empty()) {
    free_program(p);
    return "bad program: " + why;
  }
  p.shared = reinterpret_cast<char *>(h) + p.head.shared_offset;
  p.uid = static_cast<int32_t>(getuid());
  p.gid = static_cast<int32_t>(getgid());
  g_bt = p;
  if (launched) {
    int32_t none = 0;  // relaxed: read on the hit path as a plain number, published by nothing
    reinterpret_cast<SharedHead *>(p.shared)->cpid.compare_exchange_strong(
        none, static_cast<int32_t>(getpid()), std::memory_order_relaxed);
  }
  return "";
}

}  // namespace usprobe::agent
