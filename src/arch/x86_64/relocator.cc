// The x86-64 decoder and relocator on Zydis 4. See relocator.h for the contract.
//
// relocate() handles one instruction at a time and picks its treatment from what the instruction
// refers to, not from a list of opcodes:
//
//   refers to nothing position-dependent   copied byte for byte (endbr64, push, mov, sub, ...)
//   RIP-relative memory operand            copied, disp32 rewritten for the new address
//   jmp rel8/rel32                         jmp rel32, or the 14-byte absolute jmp when far
//   jcc rel8/rel32                         jcc rel32, or the inverted jcc over an absolute jmp
//   call of any near form, when last       push of the ORIGINAL return address, then jmp
//   call not last, loop/jrcxz, xbegin,     refused, with the reason
//   xabort, bytes that do not decode
//
// Calls are emulated rather than copied so that the callee returns straight to the original code
// after the window. The return address a callee sees is then one the rest of the process knows:
// the unwinder finds its CFI when a C++ exception crosses it, and stack traces taken by handlers
// show it. A copied call would return into the trampoline, which has no unwind information.
// (The price: in a process that runs with CET shadow stacks the callee's `ret` would disagree
// with its shadow stack. Such processes would need calls copied instead; not done yet.)
#include "arch/x86_64/relocator.h"

#include <Zydis/Zydis.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>

#include "arch/x86_64/code_writer.h"

namespace usprobe::x86 {
namespace {

constexpr size_t kMaxInsnLen = ZYDIS_MAX_INSTRUCTION_LENGTH;  // 15

struct Insn {
  ZydisDecodedInstruction ins;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
};

const ZydisDecoder &decoder() {
  static const ZydisDecoder d = [] {
    ZydisDecoder dec;
    ZydisDecoderInit(&dec, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
    return dec;
  }();
  return d;
}

ZyanStatus decode(std::span<const uint8_t> code, Insn &out) {
  return ZydisDecoderDecodeFull(&decoder(), code.data(), std::min(code.size(), kMaxInsnLen),
                                &out.ins, out.ops);
}

// decode(), but the operands only where relocating reads them: branches and calls, and RIP- (or
// EIP-) relative memory, which ModRM encodes as mod 0, r/m 5. Any other instruction is copied as
// it is, and decoding its operands was most of the cost of a batch's windows. Without them,
// operand_count is 0: messages decode again (disassemble needs them).
ZyanStatus decode_for_copy_uncached(std::span<const uint8_t> code, Insn &out) {
  ZydisDecoderContext ctx;
  const ZyanStatus st = ZydisDecoderDecodeInstruction(&decoder(), &ctx, code.data(),
                                                      std::min(code.size(), kMaxInsnLen), &out.ins);
  if (!ZYAN_SUCCESS(st)) return st;
  const ZydisDecodedInstruction &i = out.ins;
  const bool ip_relative =
      (i.attributes & ZYDIS_ATTRIB_HAS_MODRM) && i.raw.modrm.mod == 0 && i.raw.modrm.rm == 5;
  if (ip_relative || (i.attributes & ZYDIS_ATTRIB_IS_RELATIVE) ||
      i.meta.branch_type != ZYDIS_BRANCH_TYPE_NONE || i.mnemonic == ZYDIS_MNEMONIC_CALL)
    return ZydisDecoderDecodeOperands(&decoder(), &ctx, &out.ins, out.ops, i.operand_count);
  out.ins.operand_count = out.ins.operand_count_visible = 0;
  return ZYAN_STATUS_SUCCESS;
}

// decode_for_copy's instructions, kept by their bytes: a batch decodes the same few instructions at
// function entries thousands of times (endbr64, push %rbp, mov %rsp,%rbp, sub $n,%rsp), most of the
// cost of relocating its windows. An instruction decodes from its own bytes alone, so code that
// starts with a kept instruction's bytes starts with that instruction. Kept in the slot of its
// first byte, first two or first three (its length, up to three); a miss decodes and takes the
// slot.
class DecodeCache {
 public:
  ZyanStatus decode(std::span<const uint8_t> code, Insn &out) {
    std::lock_guard lock(mutex_);
    for (size_t n = 1; n <= std::min<size_t>(code.size(), 3); ++n) {
      const Entry &e = entries_[slot(code, n)];
      if (e.length != 0 && e.length <= code.size() &&
          std::memcmp(e.bytes, code.data(), e.length) == 0) {
        out.ins = e.insn.ins;  // the operands only as far as decoded
        std::copy_n(e.insn.ops, e.insn.ins.operand_count, out.ops);
        return ZYAN_STATUS_SUCCESS;
      }
    }
    const ZyanStatus st = decode_for_copy_uncached(code, out);
    if (ZYAN_SUCCESS(st)) {
      Entry &e = entries_[slot(code, std::min<size_t>(out.ins.length, 3))];
      e.length = out.ins.length;
      std::memcpy(e.bytes, code.data(), e.length);
      e.insn.ins = out.ins;
      std::copy_n(out.ops, out.ins.operand_count, e.insn.ops);
    }
    return st;
  }

 private:
  static constexpr size_t kEntries = 256;
  static size_t slot(std::span<const uint8_t> code, size_t n) {
    uint32_t key = static_cast<uint32_t>(n);
    for (size_t i = 0; i < n; ++i) key = key * 131 + code[i];
    return key % kEntries;
  }
  struct Entry {
    uint8_t length = 0;  // 0: empty
    uint8_t bytes[kMaxInsnLen];
    Insn insn;
  };
  std::mutex mutex_;
  Entry entries_[kEntries];
};

ZyanStatus decode_for_copy(std::span<const uint8_t> code, Insn &out) {
  static DecodeCache *cache = new DecodeCache;  // never destroyed: an exit handler may relocate
  return cache->decode(code, out);
}

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

// AT&T disassembly for messages: branch targets as absolute addresses, RIP-relative operands as
// written (`lea 0x2f3c(%rip), %rdi`).
std::string disassemble(const Insn &d, uint64_t addr) {
  static const ZydisFormatter fmt = [] {
    ZydisFormatter f;
    ZydisFormatterInit(&f, ZYDIS_FORMATTER_STYLE_ATT);
    ZydisFormatterSetProperty(&f, ZYDIS_FORMATTER_PROP_FORCE_RELATIVE_RIPREL, ZYAN_TRUE);
    ZydisFormatterSetProperty(&f, ZYDIS_FORMATTER_PROP_HEX_UPPERCASE, ZYAN_FALSE);
    ZydisFormatterSetProperty(&f, ZYDIS_FORMATTER_PROP_ADDR_PADDING_ABSOLUTE,
                              ZYDIS_PADDING_DISABLED);
    return f;
  }();
  char buf[128];
  if (!ZYAN_SUCCESS(ZydisFormatterFormatInstruction(
          &fmt, &d.ins, d.ops, d.ins.operand_count_visible, buf, sizeof buf, addr, nullptr)))
    return "(unformattable instruction)";
  return buf;
}

// "`instruction` at address", for messages: the instruction that starts `code`.
std::string describe(std::span<const uint8_t> code, uint64_t addr) {
  Insn d;
  if (!ZYAN_SUCCESS(decode(code, d))) return "the instruction at " + hex(addr);
  return "`" + disassemble(d, addr) + "` at " + hex(addr);
}

std::string bytes_text(std::span<const uint8_t> b) {
  std::string s;
  for (uint8_t x : b) {
    char buf[4];
    std::snprintf(buf, sizeof buf, "%s%02x", s.empty() ? "" : " ", x);
    s += buf;
  }
  return s;
}

const ZydisDecodedOperand *relative_imm(const Insn &d) {
  for (uint8_t i = 0; i < d.ins.operand_count; ++i)
    if (d.ops[i].type == ZYDIS_OPERAND_TYPE_IMMEDIATE && d.ops[i].imm.is_relative) return &d.ops[i];
  return nullptr;
}

// The memory operand addressed relative to the instruction pointer (RIP or, with a 0x67 prefix,
// EIP). x86-64 allows at most one per instruction: it is encoded in ModRM.
const ZydisDecodedOperand *ip_relative_mem(const Insn &d) {
  for (uint8_t i = 0; i < d.ins.operand_count; ++i) {
    const auto &op = d.ops[i];
    if (op.type == ZYDIS_OPERAND_TYPE_MEMORY &&
        (op.mem.base == ZYDIS_REGISTER_RIP || op.mem.base == ZYDIS_REGISTER_EIP))
      return &op;
  }
  return nullptr;
}

bool is_jcc(const Insn &d) {
  // jcc rel8 is 70..7F in the one-byte map, jcc rel32 is 0F 80..8F; loop and jrcxz share the
  // COND_BR category but have other opcodes.
  if (d.ins.meta.category != ZYDIS_CATEGORY_COND_BR) return false;
  if (d.ins.opcode_map == ZYDIS_OPCODE_MAP_DEFAULT) return (d.ins.opcode & 0xF0) == 0x70;
  return d.ins.opcode_map == ZYDIS_OPCODE_MAP_0F && (d.ins.opcode & 0xF0) == 0x80;
}

// A near call through a register or memory (FF /2).
bool is_indirect_near_call(const Insn &d) {
  return d.ins.mnemonic == ZYDIS_MNEMONIC_CALL && d.ins.opcode_map == ZYDIS_OPCODE_MAP_DEFAULT &&
         d.ins.opcode == 0xFF && d.ins.raw.modrm.reg == 2;
}

bool uses_rsp(const ZydisDecodedOperand &op) {
  if (op.type == ZYDIS_OPERAND_TYPE_REGISTER) return op.reg.value == ZYDIS_REGISTER_RSP;
  if (op.type == ZYDIS_OPERAND_TYPE_MEMORY)
    return op.mem.base == ZYDIS_REGISTER_RSP || op.mem.index == ZYDIS_REGISTER_RSP;
  return false;
}

// Why an instruction that otherwise would be handled cannot be relocated, or nullopt.
std::optional<std::string> refusal(const Insn &d) {
  switch (d.ins.mnemonic) {
    case ZYDIS_MNEMONIC_LOOP:
    case ZYDIS_MNEMONIC_LOOPE:
    case ZYDIS_MNEMONIC_LOOPNE:
    case ZYDIS_MNEMONIC_JRCXZ:
    case ZYDIS_MNEMONIC_JECXZ:
    case ZYDIS_MNEMONIC_JCXZ:
      // Only a rel8 form exists, so the branch cannot reach its target from the trampoline; an
      // emulation would need a scratch sequence whose flags and %rcx behaviour must match exactly.
      return "has only an 8-bit displacement and cannot reach its target from the trampoline";
    case ZYDIS_MNEMONIC_XBEGIN:
    case ZYDIS_MNEMONIC_XABORT:
      // A probe hit inside a transaction runs handlers (and maybe syscalls) that abort it: every
      // transaction would take its fallback path while the probe is installed.
      return "is part of a hardware transaction, which a probe hit would abort every time";
    default:
      return std::nullopt;
  }
}

bool never_falls_through(const Insn &d) {
  switch (d.ins.mnemonic) {
    case ZYDIS_MNEMONIC_RET:
    case ZYDIS_MNEMONIC_JMP:
    case ZYDIS_MNEMONIC_UD0:
    case ZYDIS_MNEMONIC_UD1:
    case ZYDIS_MNEMONIC_UD2:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool FunctionScan::is_boundary(uint32_t off) const {
  return std::binary_search(boundaries.begin(), boundaries.end(), off);
}

FunctionScan scan_function(std::span<const uint8_t> code, uint64_t runtime_addr) {
  FunctionScan scan;
  size_t off = 0;
  while (off < code.size()) {
    Insn d;
    if (!ZYAN_SUCCESS(decode(code.subspan(off), d))) {
      scan.complete = false;  // undecodable, or cut off by the end of `code`
      break;
    }
    scan.boundaries.push_back(static_cast<uint32_t>(off));
    if (const auto *rel = relative_imm(d)) {
      uint64_t target = 0;
      if (ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&d.ins, rel, runtime_addr + off, &target)))
        scan.branch_targets.push_back(target);
    } else if (d.ins.mnemonic == ZYDIS_MNEMONIC_JMP) {
      scan.has_indirect_jump = true;  // jmp *%reg, jmp *mem (jump tables, tail calls)
    }
    off += d.ins.length;
  }
  std::sort(scan.branch_targets.begin(), scan.branch_targets.end());
  scan.branch_targets.erase(std::unique(scan.branch_targets.begin(), scan.branch_targets.end()),
                            scan.branch_targets.end());
  return scan;
}

size_t instruction_length(std::span<const uint8_t> code) {
  ZydisDecodedInstruction ins;
  if (!ZYAN_SUCCESS(ZydisDecoderDecodeInstruction(&decoder(), nullptr, code.data(),
                                                  std::min(code.size(), kMaxInsnLen), &ins)))
    return 0;
  return ins.length;
}

bool is_padding(std::span<const uint8_t> code) {
  Insn d;
  if (!ZYAN_SUCCESS(decode(code, d))) return false;
  return d.ins.mnemonic == ZYDIS_MNEMONIC_NOP || d.ins.mnemonic == ZYDIS_MNEMONIC_INT3;
}

bool falls_through(std::span<const uint8_t> code) {
  Insn d;
  return ZYAN_SUCCESS(decode(code, d)) && !never_falls_through(d);
}

std::optional<DecodedJump> decode_jump(std::span<const uint8_t> code, uint64_t addr) {
  Insn d;
  if (!ZYAN_SUCCESS(decode(code, d)) || d.ins.mnemonic != ZYDIS_MNEMONIC_JMP) return std::nullopt;
  const ZydisDecodedOperand *imm = relative_imm(d);
  if (!imm) return std::nullopt;
  return DecodedJump{d.ins.length, addr + d.ins.length + static_cast<uint64_t>(imm->imm.value.s)};
}

std::optional<uint32_t> constant_syscall_number(std::span<const uint8_t> before) {
  const size_t n = before.size();
  if (n < 2 || before[n - 2] != 0x0f || before[n - 1] != 0x05) return std::nullopt;
  const size_t syscall_at = n - 2;
  // The nearest load wins: walking back, each candidate `mov $imm32, %eax` (b8) or `mov $imm32,
  // %rax` (48 c7 c0) must decode, with what follows it, exactly up to the syscall.
  for (size_t back = 5; back <= syscall_at; ++back) {
    const size_t at = syscall_at - back;
    size_t mov_len = 0;
    if (before[at] == 0xb8)
      mov_len = 5;
    else if (at + 3 <= syscall_at && before[at] == 0x48 && before[at + 1] == 0xc7 &&
             before[at + 2] == 0xc0)
      mov_len = 7;
    if (mov_len == 0 || at + mov_len > syscall_at) continue;
    uint32_t nr;
    std::memcpy(&nr, &before[at + mov_len - 4], 4);
    size_t pos = at + mov_len;
    bool clean = true;
    while (clean && pos < syscall_at) {
      Insn d;
      if (!ZYAN_SUCCESS(decode(before.subspan(pos, syscall_at - pos), d)) ||
          d.ins.meta.branch_type != ZYDIS_BRANCH_TYPE_NONE) {
        clean = false;
        break;
      }
      for (unsigned i = 0; i < d.ins.operand_count; ++i) {
        const ZydisDecodedOperand &op = d.ops[i];
        if (op.type == ZYDIS_OPERAND_TYPE_REGISTER &&
            (op.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) &&
            ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, op.reg.value) ==
                ZYDIS_REGISTER_RAX)
          clean = false;
      }
      pos += d.ins.length;
    }
    if (clean && pos == syscall_at) return nr;
  }
  return std::nullopt;
}

namespace {

// Appends an instruction with a RIP-relative operand, its disp32 rewritten so that the absolute
// target stays `target`. The displacement is relative to the END
// of the instruction (an immediate may follow it: `cmpl $1, x(%rip)`).
Result<void> put_rip_relative(CodeWriter &w, std::span<const uint8_t> bytes, const Insn &d,
                              uint64_t target, uint64_t addr) {
  size_t at = w.size();
  w.put_bytes(bytes.data(), bytes.size());
  uint64_t next = w.pc();
  if (!CodeWriter::fits_rel32(next, target))
    return fail(ERANGE, "`" + disassemble(d, addr) + "` at " + hex(addr) +
                            ": RIP-relative target " + hex(target) +
                            " is beyond +-2 GB of the trampoline at " + hex(w.base()));
  w.patch_u32(at + d.ins.raw.disp.offset, static_cast<uint32_t>(target - next));
  return {};
}

// Emits the jump half of an emulated indirect call: the same instruction with ModRM.reg turned
// from /2 (call) into /4 (jmp). It runs after the return address was pushed, so an operand that
// reads %rsp would see it 8 lower than the call did: such operands get their displacement raised
// by 8 through the encoder.
Result<void> put_indirect_jump_of_call(CodeWriter &w, std::span<const uint8_t> bytes, const Insn &d,
                                       uint64_t addr) {
  const ZydisDecodedOperand &op = d.ops[0];
  auto what = "`" + disassemble(d, addr) + "` at " + hex(addr);
  if (op.type == ZYDIS_OPERAND_TYPE_REGISTER && op.reg.value == ZYDIS_REGISTER_RSP)
    return fail(EINVAL, what + ": a call through %rsp cannot be relocated");
  if (const auto *rip = ip_relative_mem(d)) {
    uint64_t target = 0;
    if (rip->mem.base != ZYDIS_REGISTER_RIP ||
        !ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&d.ins, rip, addr, &target)))
      return fail(EINVAL, what + ": EIP-relative addressing cannot be relocated");
    size_t at = w.size();
    if (auto r = put_rip_relative(w, bytes, d, target, addr); !r) return r;
    w.bytes()[at + d.ins.raw.modrm.offset] ^= (2 ^ 4) << 3;
    return {};
  }
  if (!uses_rsp(op)) {
    size_t at = w.size();
    w.put_bytes(bytes.data(), bytes.size());
    w.bytes()[at + d.ins.raw.modrm.offset] ^= (2 ^ 4) << 3;
    return {};
  }
  ZydisEncoderRequest req;
  if (!ZYAN_SUCCESS(ZydisEncoderDecodedInstructionToEncoderRequest(
          &d.ins, d.ops, d.ins.operand_count_visible, &req)))
    return fail(EINVAL, what + ": cannot re-encode this stack-relative call");
  req.mnemonic = ZYDIS_MNEMONIC_JMP;
  req.operands[0].mem.displacement += 8;
  uint8_t buf[kMaxInsnLen];
  ZyanUSize len = sizeof buf;
  if (!ZYAN_SUCCESS(ZydisEncoderEncodeInstruction(&req, buf, &len)))
    return fail(EINVAL, what + ": cannot re-encode this stack-relative call");
  w.put_bytes(buf, len);
  return {};
}

}  // namespace

Result<Relocation> relocate(std::span<const uint8_t> src, uint64_t src_addr, size_t min_len,
                            uint64_t dst_addr) {
  Relocation out;
  out.map.reserve(4);  // a window is a few instructions: one allocation, not one per doubling
  CodeWriter w(dst_addr);
  struct Branch {
    uint64_t target;
    size_t off;  // of the instruction, described only if it is refused
  };
  std::vector<Branch> branches;  // checked against the window once its end is known

  size_t off = 0;
  while (off < min_len) {
    uint64_t addr = src_addr + off;
    auto rest = src.subspan(std::min(off, src.size()));
    auto too_short = [&] {
      return fail(EINVAL, "only " + std::to_string(src.size()) + " bytes of code at " +
                              hex(src_addr) + ": the window needs " + std::to_string(min_len) +
                              " bytes of whole instructions");
    };
    if (rest.empty()) return too_short();
    Insn d;
    ZyanStatus st = decode_for_copy(rest, d);
    if (!ZYAN_SUCCESS(st)) {
      if (st == ZYDIS_STATUS_NO_MORE_DATA && rest.size() < kMaxInsnLen) return too_short();
      return fail(EINVAL, "bytes `" + bytes_text(rest.first(std::min(rest.size(), size_t{8}))) +
                              "` at " + hex(addr) + " do not decode as an x86-64 instruction");
    }
    auto bytes = rest.first(d.ins.length);
    uint64_t next = addr + d.ins.length;
    bool last = off + d.ins.length >= min_len;
    auto what = [rest, addr] { return describe(rest, addr); };

    if (auto why = refusal(d)) return fail(EINVAL, what() + ": " + *why);
    bool is_call = d.ins.mnemonic == ZYDIS_MNEMONIC_CALL;
    if (is_call && !last)
      return fail(EINVAL, what() +
                              ": a call that is not the last instruction of the window would "
                              "return into the patched window");
    if (is_call && d.ins.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR)
      return fail(EINVAL, what() + ": far calls cannot be relocated");

    out.map.emplace_back(static_cast<uint32_t>(off), static_cast<uint32_t>(w.size()));
    out.falls_through = !never_falls_through(d);

    if (const auto *rel = relative_imm(d)) {
      uint64_t target = 0;
      if (!ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&d.ins, rel, addr, &target)))
        return fail(EINVAL, what() + ": cannot compute the branch target");
      branches.push_back({target, off});
      if (d.ins.mnemonic == ZYDIS_MNEMONIC_JMP) {
        w.put_jmp(target);
      } else if (is_jcc(d)) {
        w.put_jcc(d.ins.opcode & 0xF, target);
      } else if (is_call) {
        // Push the original return address, then jump: the callee returns to the original code
        // right after the window, so no jump back is needed.
        w.put_push_imm64(next);
        w.put_jmp(target);
        out.falls_through = false;
      } else {
        return fail(EINVAL, what() + ": relative branch of a kind the relocator does not know");
      }
    } else if (is_call) {
      if (!is_indirect_near_call(d))
        return fail(EINVAL, what() + ": call of a kind the relocator does not know");
      w.put_push_imm64(next);
      if (auto r = put_indirect_jump_of_call(w, bytes, d, addr); !r)
        return std::unexpected(std::move(r.error()));
      out.falls_through = false;
    } else if (const auto *mem = ip_relative_mem(d)) {
      uint64_t target = 0;
      if (mem->mem.base != ZYDIS_REGISTER_RIP ||
          !ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&d.ins, mem, addr, &target)))
        return fail(EINVAL, what() + ": EIP-relative addressing cannot be relocated");
      if (auto r = put_rip_relative(w, bytes, d, target, addr); !r)
        return std::unexpected(std::move(r.error()));
    } else {
      w.put_bytes(bytes.data(), bytes.size());
    }
    off += d.ins.length;
  }
  out.consumed = off;

  // A branch back into the window would land on the patch (the jmp to the trampoline), not on
  // the instruction that was there.
  for (const auto &b : branches)
    if (b.target >= src_addr && b.target < src_addr + out.consumed)
      return fail(EINVAL, describe(src.subspan(b.off), src_addr + b.off) +
                              ": branches into the patched window " + hex(src_addr) + ".." +
                              hex(src_addr + out.consumed));
  out.code = std::move(w.bytes());
  return out;
}

}  // namespace usprobe::x86
