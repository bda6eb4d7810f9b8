// DWARF call frame information (elf/cfi.h). Never allocates, locks or makes a system call: it
// runs on the hit path of usprobe_hit_stack, from any handler.
#include "elf/cfi.h"

#include <dlfcn.h>

#include <cstring>

namespace usprobe::cfi {

// ---- Reading bytes --------------------------------------------------------------------------

bool Reader::skip(uint64_t n) {
  if (n > left()) {
    ok = false;
    return false;
  }
  p += n;
  return true;
}

namespace {

template <typename T>
T read_raw(Reader &r) {
  T v{};
  if (r.left() < sizeof v) {
    r.ok = false;
    return T{};
  }
  std::memcpy(&v, r.p, sizeof v);  // .eh_frame is packed: fields are not aligned
  r.p += sizeof v;
  return v;
}

}  // namespace

uint8_t Reader::u8() {
  return read_raw<uint8_t>(*this);
}
uint16_t Reader::u16() {
  return read_raw<uint16_t>(*this);
}
uint32_t Reader::u32() {
  return read_raw<uint32_t>(*this);
}
uint64_t Reader::u64() {
  return read_raw<uint64_t>(*this);
}

uint64_t Reader::uleb128() {
  uint64_t v = 0;
  for (unsigned shift = 0;; shift += 7) {
    const uint8_t b = u8();
    if (!ok) return 0;
    if (shift < 64) v |= uint64_t{b & 0x7fu} << shift;
    if (!(b & 0x80)) return v;
    if (shift > 70) {  // longer than any 64-bit value: malformed
      ok = false;
      return 0;
    }
  }
}

int64_t Reader::sleb128() {
  uint64_t v = 0;
  unsigned shift = 0;
  uint8_t b = 0;
  do {
    b = u8();
    if (!ok || shift > 70) {
      ok = false;
      return 0;
    }
    if (shift < 64) v |= uint64_t{b & 0x7fu} << shift;
    shift += 7;
  } while (b & 0x80);
  if (shift < 64 && (b & 0x40)) v |= ~uint64_t{0} << shift;  // sign-extend
  return static_cast<int64_t>(v);
}

// ---- Pointers -------------------------------------------------------------------------------

namespace {

// The stored value of a pointer in `encoding`'s format (its low nibble), not yet relocated.
bool read_format(Reader &r, uint8_t format, uint64_t &v) {
  switch (format) {
    case kPeAbsptr:
    case kPeUdata8:
    case kPeSdata8:
      v = r.u64();
      break;
    case kPeUdata2:
      v = r.u16();
      break;
    case kPeSdata2:
      v = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int16_t>(r.u16())));
      break;
    case kPeUdata4:
      v = r.u32();
      break;
    case kPeSdata4:
      v = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(r.u32())));
      break;
    case kPeUleb128:
      v = r.uleb128();
      break;
    case kPeSleb128:
      v = static_cast<uint64_t>(r.sleb128());
      break;
    default:
      return false;
  }
  return r.ok;
}

}  // namespace

bool read_pointer(Reader &r, uint8_t encoding, uint64_t data_base, uint64_t &out) {
  if (encoding == kPeOmit || (encoding & kPeIndirect)) return false;
  const uint64_t at = r.address();
  uint64_t v = 0;
  if (!read_format(r, encoding & 0x0f, v)) return false;
  switch (encoding & 0x70) {
    case 0:
      break;
    case kPePcrel:
      v += at;
      break;
    case kPeDatarel:
      if (data_base == 0) return false;
      v += data_base;
      break;
    default:  // textrel, funcrel, aligned: not used by x86-64 toolchains, and no base known here
      return false;
  }
  out = v;
  return true;
}

bool skip_pointer(Reader &r, uint8_t encoding) {
  if (encoding == kPeOmit || (encoding & 0x70) == 0x50) return false;  // aligned: position-bound
  uint64_t v = 0;
  return read_format(r, encoding & 0x0f, v);
}

// ---- CIEs and FDEs --------------------------------------------------------------------------

namespace {

// The body of the entry at `at`: after its length (and for a 64-bit entry, the 0xffffffff escape),
// up to its end. `wide` is set for 64-bit DWARF, whose CIE pointer / id is 8 bytes. False for the
// terminator (length 0) or an entry that does not fit in [at, hi).
bool entry_body(const uint8_t *at, const uint8_t *lo, const uint8_t *hi, Reader &body, bool &wide) {
  if (at < lo || at >= hi) return false;
  Reader r{at, hi};
  uint64_t length = r.u32();
  wide = length == 0xffffffffu;
  if (wide) length = r.u64();
  if (!r.ok || length == 0 || length > r.left()) return false;
  body = Reader{r.p, r.p + length};
  return true;
}

}  // namespace

bool parse_cie(const uint8_t *at, const uint8_t *lo, const uint8_t *hi, Cie &cie) {
  Reader c{nullptr, nullptr};
  bool wide = false;
  if (!entry_body(at, lo, hi, c, wide)) return false;
  const uint64_t id = wide ? c.u64() : c.u32();
  if (!c.ok || id != 0) return false;  // .eh_frame's CIEs have id 0
  const uint8_t version = c.u8();
  if (version != 1 && version != 3) return false;
  char aug[8];
  size_t aug_len = 0;
  for (;;) {
    const uint8_t ch = c.u8();
    if (!c.ok) return false;
    if (ch == 0) break;
    if (aug_len == sizeof aug) return false;
    aug[aug_len++] = static_cast<char>(ch);
  }
  cie = Cie{};
  cie.code_align = c.uleb128();
  cie.data_align = c.sleb128();
  cie.ra_column = version == 1 ? c.u8() : static_cast<uint32_t>(c.uleb128());
  if (!c.ok) return false;
  if (aug_len > 0) {
    // Without 'z' first, an augmentation cannot be skipped ("eh" and the like): refuse.
    if (aug[0] != 'z') return false;
    cie.augmentation_data = true;
    const uint64_t data_len = c.uleb128();
    if (!c.ok || data_len > c.left()) return false;
    Reader data{c.p, c.p + data_len};
    for (size_t i = 1; i < aug_len; ++i) {
      switch (aug[i]) {
        case 'R':
          cie.fde_encoding = data.u8();
          break;
        case 'P':  // the personality routine: not needed to unwind
          if (!skip_pointer(data, data.u8())) return false;
          break;
        case 'L':  // the FDEs' LSDA encoding: the LSDA is in their augmentation data, skipped
          data.u8();
          break;
        case 'S':
          cie.signal_frame = true;
          break;
        default:  // an unknown letter may change how FDEs are read: refuse
          return false;
      }
      if (!data.ok) return false;
    }
    c.p += data_len;
  }
  cie.insns = c.p;
  cie.insns_end = c.end;
  return true;
}

bool parse_fde(const uint8_t *at, const uint8_t *lo, const uint8_t *hi, Fde &fde) {
  Reader f{nullptr, nullptr};
  bool wide = false;
  if (!entry_body(at, lo, hi, f, wide)) return false;
  const uint8_t *const id_at = f.p;
  const uint64_t cie_offset = wide ? f.u64() : f.u32();
  // 0 marks a CIE; otherwise the distance back from this field to the FDE's CIE.
  if (!f.ok || cie_offset == 0 || cie_offset > static_cast<uint64_t>(id_at - lo)) return false;
  if (!parse_cie(id_at - cie_offset, lo, hi, fde.cie)) return false;
  uint64_t begin = 0, range = 0;
  if (!read_pointer(f, fde.cie.fde_encoding, 0, begin)) return false;
  // The range is a length: the same format, never relocated.
  if (!read_pointer(f, fde.cie.fde_encoding & 0x0f, 0, range)) return false;
  if (fde.cie.augmentation_data && !f.skip(f.uleb128())) return false;
  if (!f.ok || begin + range < begin) return false;
  fde.pc_begin = begin;
  fde.pc_end = begin + range;
  fde.insns = f.p;
  fde.insns_end = f.end;
  return true;
}

// ---- The CFA program ------------------------------------------------------------------------

namespace {

// DW_CFA_*: the primary opcodes keep their operand in the low 6 bits.
constexpr uint8_t kAdvanceLoc = 0x40, kOffset = 0x80, kRestore = 0xc0;
enum : uint8_t {
  kNop = 0x00,
  kSetLoc = 0x01,
  kAdvanceLoc1 = 0x02,
  kAdvanceLoc2 = 0x03,
  kAdvanceLoc4 = 0x04,
  kOffsetExtended = 0x05,
  kRestoreExtended = 0x06,
  kUndefined = 0x07,
  kSameValue = 0x08,
  kRegister = 0x09,
  kRememberState = 0x0a,
  kRestoreState = 0x0b,
  kDefCfa = 0x0c,
  kDefCfaRegister = 0x0d,
  kDefCfaOffset = 0x0e,
  kDefCfaExpression = 0x0f,
  kExpression = 0x10,
  kOffsetExtendedSf = 0x11,
  kDefCfaSf = 0x12,
  kDefCfaOffsetSf = 0x13,
  kValOffset = 0x14,
  kValOffsetSf = 0x15,
  kValExpression = 0x16,
  kGnuArgsSize = 0x2e,
  kGnuNegativeOffsetExtended = 0x2f,
};

// factor * align, or false when it overflows (a malformed entry).
bool scaled(int64_t factor, int64_t align, int64_t &out) {
  return !__builtin_mul_overflow(factor, align, &out);
}

// A DWARF expression of the one form evaluated: DW_OP_breg<reg> offset, then DW_OP_deref if
// `deref` is given (which then says whether it was there). Reads the block's length first.
bool breg_expression(Reader &r, uint32_t &reg, int64_t &offset, bool *deref) {
  constexpr uint8_t kOpBreg0 = 0x70, kOpBreg31 = 0x8f, kOpDeref = 0x06;
  const uint64_t len = r.uleb128();
  if (!r.ok || len > r.left()) {
    r.ok = false;
    return false;
  }
  Reader e{r.p, r.p + len};
  r.p += len;
  const uint8_t op = e.u8();
  if (!e.ok || op < kOpBreg0 || op > kOpBreg31) return false;
  reg = op - kOpBreg0;
  offset = e.sleb128();
  if (deref) {
    *deref = e.left() == 1 && *e.p == kOpDeref;
    if (*deref) e.u8();
  }
  return e.ok && e.left() == 0 && reg < kColumns;
}

bool to_signed(uint64_t v, int64_t &out) {
  if (v > static_cast<uint64_t>(INT64_MAX)) return false;
  out = static_cast<int64_t>(v);
  return true;
}

}  // namespace

bool execute(const uint8_t *p, const uint8_t *end, const Cie &cie, uint64_t loc, uint64_t target,
             const Rules *initial, Rules &rules) {
  Rules states[kMaxStates];
  unsigned depth = 0;
  Reader r{p, end};
  int64_t code_align = 0;
  if (!to_signed(cie.code_align, code_align)) return false;
  // Sets column `reg`'s rule; columns past those tracked are read and dropped.
  auto set = [&](uint64_t reg, Rule rule, int64_t value) {
    if (reg < kColumns) rules.regs[reg] = {rule, 0, value};
  };
  // Moves to the next row; true when it starts after `target`, which the current row then holds.
  auto advance = [&](uint64_t delta, bool &past) {
    int64_t bytes = 0;
    uint64_t next = 0;
    if (!scaled(static_cast<int64_t>(delta), code_align, bytes) ||
        __builtin_add_overflow(loc, static_cast<uint64_t>(bytes), &next))
      return false;
    past = next > target;
    loc = next;
    return true;
  };
  while (r.left() > 0) {
    const uint8_t op = r.u8();
    const uint8_t low = op & 0x3f;
    bool past = false;
    int64_t v = 0;
    switch (op & 0xc0) {
      case kAdvanceLoc:
        if (!advance(low, past)) return false;
        if (past) return true;
        continue;
      case kOffset:
        if (!to_signed(r.uleb128(), v) || !scaled(v, cie.data_align, v)) return false;
        set(low, Rule::kOffset, v);
        continue;
      case kRestore:
        if (!initial) return false;
        if (low < kColumns) rules.regs[low] = initial->regs[low];
        continue;
      default:
        break;
    }
    switch (op) {
      case kNop:
      case kGnuArgsSize:  // the callee pops arguments: the CFA rules already say where it is
        if (op == kGnuArgsSize) r.uleb128();
        break;
      case kSetLoc: {
        uint64_t next = 0;
        if (!read_pointer(r, cie.fde_encoding, 0, next)) return false;
        if (next > target) return true;
        loc = next;
        break;
      }
      case kAdvanceLoc1:
      case kAdvanceLoc2:
      case kAdvanceLoc4: {
        const uint64_t delta = op == kAdvanceLoc1 ? r.u8() : op == kAdvanceLoc2 ? r.u16() : r.u32();
        if (!r.ok || !advance(delta, past)) return false;
        if (past) return true;
        break;
      }
      case kOffsetExtended:
      case kValOffset: {
        const uint64_t reg = r.uleb128();
        if (!to_signed(r.uleb128(), v) || !scaled(v, cie.data_align, v)) return false;
        set(reg, op == kOffsetExtended ? Rule::kOffset : Rule::kValOffset, v);
        break;
      }
      case kOffsetExtendedSf:
      case kValOffsetSf: {
        const uint64_t reg = r.uleb128();
        if (!scaled(r.sleb128(), cie.data_align, v)) return false;
        set(reg, op == kOffsetExtendedSf ? Rule::kOffset : Rule::kValOffset, v);
        break;
      }
      case kGnuNegativeOffsetExtended: {
        const uint64_t reg = r.uleb128();
        if (!to_signed(r.uleb128(), v) || !scaled(-v, cie.data_align, v)) return false;
        set(reg, Rule::kOffset, v);
        break;
      }
      case kRestoreExtended: {
        const uint64_t reg = r.uleb128();
        if (!initial) return false;
        if (reg < kColumns) rules.regs[reg] = initial->regs[reg];
        break;
      }
      case kUndefined:
        set(r.uleb128(), Rule::kUndefined, 0);
        break;
      case kSameValue:
        set(r.uleb128(), Rule::kSame, 0);
        break;
      case kRegister: {
        const uint64_t reg = r.uleb128();
        const uint64_t from = r.uleb128();
        // A register held in an untracked one is as good as lost.
        set(reg, from < kColumns ? Rule::kRegister : Rule::kUndefined, static_cast<int64_t>(from));
        break;
      }
      case kRememberState:
        if (depth == kMaxStates) return false;
        states[depth++] = rules;
        break;
      case kRestoreState:  // the whole row, CFA included
        if (depth == 0) return false;
        rules = states[--depth];
        break;
      case kDefCfa:
      case kDefCfaSf: {
        const uint64_t reg = r.uleb128();
        if (op == kDefCfa ? !to_signed(r.uleb128(), v) : !scaled(r.sleb128(), cie.data_align, v))
          return false;
        if (reg >= kColumns) return false;
        rules.cfa = {false, false, static_cast<uint32_t>(reg), v};
        break;
      }
      case kDefCfaRegister: {
        const uint64_t reg = r.uleb128();
        if (reg >= kColumns || rules.cfa.expression || rules.cfa.deref) return false;
        rules.cfa.reg = static_cast<uint32_t>(reg);
        break;
      }
      case kDefCfaOffset:
      case kDefCfaOffsetSf:
        if (op == kDefCfaOffset ? !to_signed(r.uleb128(), v)
                                : !scaled(r.sleb128(), cie.data_align, v))
          return false;
        if (rules.cfa.expression || rules.cfa.deref) return false;
        rules.cfa.offset = v;
        break;
      case kDefCfaExpression: {
        // Only {breg; deref} and {breg} are evaluated; any other expression may read any memory:
        // the row then has no usable CFA.
        uint32_t reg = 0;
        bool deref = false;
        if (breg_expression(r, reg, v, &deref) && reg < kColumns) {
          rules.cfa = {false, deref, reg, v};
        } else {
          rules.cfa = {true, false, 0, 0};
        }
        break;
      }
      case kExpression: {
        const uint64_t col = r.uleb128();
        uint32_t reg = 0;
        if (breg_expression(r, reg, v, nullptr)) {
          if (col < kColumns) rules.regs[col] = {Rule::kAtRegister, static_cast<uint8_t>(reg), v};
        } else {
          set(col, Rule::kExpression, 0);
        }
        break;
      }
      case kValExpression:
        set(r.uleb128(), Rule::kExpression, 0);
        r.skip(r.uleb128());
        break;
      default:  // unknown, or a vendor extension this unwinder does not know: stop
        return false;
    }
    if (!r.ok) return false;
  }
  return r.ok;
}

bool rules_at(const Fde &fde, uint64_t pc, Rules &rules) {
  if (pc < fde.pc_begin || pc >= fde.pc_end || fde.cie.ra_column >= kColumns) return false;
  Rules initial{};
  if (!execute(fde.cie.insns, fde.cie.insns_end, fde.cie, fde.pc_begin, pc, nullptr, initial))
    return false;
  rules = initial;
  return execute(fde.insns, fde.insns_end, fde.cie, fde.pc_begin, pc, &initial, rules);
}

// ---- .eh_frame_hdr --------------------------------------------------------------------------

bool find_fde(const uint8_t *hdr, const uint8_t *lo, const uint8_t *hi, uint64_t pc, Fde &fde) {
  if (hdr < lo || hdr >= hi) return false;
  Reader r{hdr, hi};
  const uint8_t version = r.u8();
  const uint8_t frame_ptr_enc = r.u8();
  const uint8_t count_enc = r.u8();
  const uint8_t table_enc = r.u8();
  const uint64_t base = reinterpret_cast<uint64_t>(hdr);  // datarel: from the header's start
  uint64_t frame = 0, count = 0;
  if (!r.ok || version != 1 || !read_pointer(r, frame_ptr_enc, base, frame) ||
      count_enc == kPeOmit || table_enc == kPeOmit || !read_pointer(r, count_enc, base, count))
    return false;
  // The table is sorted (initial location, FDE address) pairs: fixed-size for a binary search.
  size_t size = 0;
  bool is_signed = false;
  switch (table_enc & 0x0f) {
    case kPeUdata2:
    case kPeSdata2:
      size = 2;
      break;
    case kPeUdata4:
    case kPeSdata4:
      size = 4;
      break;
    case kPeAbsptr:
    case kPeUdata8:
    case kPeSdata8:
      size = 8;
      break;
    default:
      return false;
  }
  is_signed = (table_enc & 0x08) != 0;
  uint64_t table_base = 0;
  if ((table_enc & 0x70) == kPeDatarel) {
    table_base = base;
  } else if ((table_enc & 0x70) != 0 || (table_enc & kPeIndirect)) {
    return false;
  }
  if (count == 0 || count > r.left() / (2 * size)) return false;
  const uint8_t *const table = r.p;
  auto field = [&](uint64_t i, unsigned which) {
    const uint8_t *at = table + (2 * i + which) * size;
    uint64_t v = 0;
    if (size == 2) {
      uint16_t x;
      std::memcpy(&x, at, 2);
      v = is_signed ? static_cast<uint64_t>(static_cast<int64_t>(static_cast<int16_t>(x))) : x;
    } else if (size == 4) {
      uint32_t x;
      std::memcpy(&x, at, 4);
      v = is_signed ? static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(x))) : x;
    } else {
      std::memcpy(&v, at, 8);
    }
    return v + table_base;
  };
  // The last entry whose initial location is <= pc.
  uint64_t first = 0, n = count;
  if (field(0, 0) > pc) return false;
  while (n > 1) {
    const uint64_t half = n / 2;
    if (field(first + half, 0) <= pc) {
      first += half;
      n -= half;
    } else {
      n = half;
    }
  }
  const uint64_t fde_at = field(first, 1);
  if (fde_at < reinterpret_cast<uint64_t>(lo) || fde_at >= reinterpret_cast<uint64_t>(hi))
    return false;
  if (!parse_fde(lo + (fde_at - reinterpret_cast<uint64_t>(lo)), lo, hi, fde)) return false;
  return pc >= fde.pc_begin && pc < fde.pc_end;
}

bool find_object(uint64_t pc, Object &object) {
  dl_find_object found;
  if (_dl_find_object(reinterpret_cast<void *>(pc), &found) != 0) return false;
  object.lo = static_cast<const uint8_t *>(found.dlfo_map_start);
  object.hi = static_cast<const uint8_t *>(found.dlfo_map_end);
  object.eh_frame_hdr = static_cast<const uint8_t *>(found.dlfo_eh_frame);
  return true;
}

}  // namespace usprobe::cfi
