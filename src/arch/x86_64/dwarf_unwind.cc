// The x86-64 DWARF walk (core/stack.h): from the hit's registers, each frame's CFI row (elf/cfi.h)
// gives its caller's stack pointer (the CFA), return address and callee-saved registers.
//
// DWARF numbers the x86-64 registers rax 0, rdx 1, rcx 2, rbx 3, rsi 4, rdi 5, rbp 6, rsp 7,
// r8-r15 8-15, and the return address is column 16. A caller's caller-saved registers are lost at
// its call; only rbx, rbp and r12-r15 (and the return address) carry over from frame to frame, and
// they are what a caller's CFA may be defined through (%rbp above all).
//
// Rows are cached process-wide, by pc, in a direct-mapped table of sequence-checked entries (a
// seqlock per entry): a reader that hits writes nothing shared, so walks on many threads scale; a
// miss computes the row (a binary search of .eh_frame_hdr, then the CIE's and FDE's programs) and
// publishes it only if it wins the entry's sequence with one CAS. A reader that finds an entry
// being written treats it as a miss; a writer that loses computes without caching: nobody ever
// waits, which is what lets a signal handler walk while its thread was in the middle of a write. (A
// per-thread table would need kilobytes of static TLS, which a dlopen'ed libusprobe cannot have.)
//
// Entries are tagged with the object's .eh_frame_hdr address as well as the pc, both known before
// the cache is read (_dl_find_object, ~3 ns, runs whenever a frame's pc leaves the previous
// frame's object): a row cached for an object that was unloaded is not used for code mapped later
// at the same address, unless that has its .eh_frame_hdr at the very same address too (in
// practice: the same library loaded again). A stale row can only give a wrong frame, never a
// fault: every stack read is bounds-checked all the same.
//
// Signal frames (CIE augmentation 'S', glibc's __restore_rt) restore every register from the
// saved context, not only the kept ones: their rows are not compacted but recomputed on each
// visit, and the walk goes on into the interrupted code with all its registers.
#include <atomic>
#include <cstring>
#include <utility>

#include "arch/x86_64/regs.h"
#include "core/arch.h"
#include "core/stack.h"
#include "elf/cfi.h"

namespace usprobe::arch {
namespace {

constexpr unsigned kRsp = 7, kRbp = 6, kRa = 16;
// The columns that survive a call and go into a cached row, in this order.
constexpr unsigned kKept[] = {3, kRbp, 12, 13, 14, 15, kRa};
constexpr unsigned kNumKept = sizeof kKept / sizeof kKept[0];

// A cached CFI row: four words, so that the cache copies it with four word loads (and a row read
// back right after being written is forwarded from the stores, word for word).
//   w[0]: CFA offset (bits 0-31), CFA register (32-39), flags (40-47)
//   w[1]: the kept columns' rules, a byte each: cfi::Rule (bits 0-3), kAtRegister's register (4-7)
//   w[2], w[3]: their values, 16 bits each (w[2]: columns 0-3, w[3]: 4-6)
struct Row {
  uint64_t w[4];

  int64_t cfa_offset() const { return static_cast<int32_t>(static_cast<uint32_t>(w[0])); }
  unsigned cfa_reg() const { return (w[0] >> 32) & 0xff; }
  uint8_t flags() const { return static_cast<uint8_t>(w[0] >> 40); }
  cfi::Rule rule(unsigned i) const { return static_cast<cfi::Rule>((w[1] >> (8 * i)) & 0xf); }
  unsigned reg(unsigned i) const { return (w[1] >> (8 * i + 4)) & 0xf; }
  int64_t value(unsigned i) const {
    return static_cast<int16_t>(static_cast<uint16_t>(w[2 + i / 4] >> (16 * (i % 4))));
  }
  void set_flags(uint8_t f) { w[0] = (w[0] & ~(uint64_t{0xff} << 40)) | uint64_t{f} << 40; }
};
constexpr uint8_t kUsable = 1;  // a CFA rule this walk can compute; else: a frame-pointer step
constexpr uint8_t kSignal = 2;  // a signal frame ('S'): its caller's pc is exact, not a return
constexpr uint8_t kDeref = 4;   // CFA = *(register + offset)
// A signal frame restores every register, not only the kept ones: its row does not fit, and is
// computed from the CFI on every visit (rare: a stack holds one per signal being handled).
constexpr uint8_t kUncompacted = 8;

// Compacts `rules` into a row; false when something does not fit (then: a frame-pointer step).
bool compact(const cfi::Rules &rules, const cfi::Cie &cie, Row &row) {
  row = Row{};
  if (cie.ra_column != kRa || rules.cfa.expression || rules.cfa.reg >= 16 ||
      rules.cfa.offset < INT32_MIN || rules.cfa.offset > INT32_MAX)
    return false;
  if (cie.signal_frame) {
    row.set_flags(kUsable | kSignal | kUncompacted);
    return true;
  }
  Row r{};
  const uint8_t flags = kUsable | (rules.cfa.deref ? kDeref : 0);
  r.w[0] = static_cast<uint32_t>(static_cast<int32_t>(rules.cfa.offset)) |
           uint64_t{rules.cfa.reg} << 32 | uint64_t{flags} << 40;
  for (unsigned i = 0; i < kNumKept; ++i) {
    const cfi::RegRule &rule = rules.regs[kKept[i]];
    if (rule.value < INT16_MIN || rule.value > INT16_MAX || rule.reg >= 16) return false;
    r.w[1] |= uint64_t{static_cast<uint8_t>(static_cast<uint8_t>(rule.rule) | rule.reg << 4)}
              << (8 * i);
    r.w[2 + i / 4] |= uint64_t{static_cast<uint16_t>(static_cast<int16_t>(rule.value))}
                      << (16 * (i % 4));
  }
  row = r;
  return true;
}

// The cache (see the top of the file). seq is even when the entry is stable, odd while written.
struct alignas(64) Entry {
  std::atomic<uint64_t> seq;
  uint64_t pc;
  uint64_t object;
  uint64_t row[4];
};
constexpr size_t kEntries = 1024;
Entry g_rows[kEntries];

size_t slot_of(uint64_t pc) {
  return ((pc ^ (pc >> 10) ^ (pc >> 20)) * 0x9E3779B97F4A7C15ull) >> (64 - 10);
}
static_assert(kEntries == size_t{1} << 10);

// The fields are read with acquire and written with release (plain moves on x86-64): a reader
// that sees any field a writer stored also sees that writer's odd sequence on its second sequence
// load, without a fence (which ThreadSanitizer cannot follow).
uint64_t acquire_load(const uint64_t &word) {
  return std::atomic_ref<const uint64_t>(word).load(std::memory_order_acquire);
}
void release_store(uint64_t &word, uint64_t v) {
  std::atomic_ref<uint64_t>(word).store(v, std::memory_order_release);
}

bool cache_get(uint64_t pc, uint64_t object, Row &row) {
  Entry &e = g_rows[slot_of(pc)];
  // Acquire: pairs with the writer's release store of the even sequence after its fields.
  const uint64_t s1 = e.seq.load(std::memory_order_acquire);
  if (s1 & 1) return false;
  const uint64_t epc = acquire_load(e.pc), eobj = acquire_load(e.object);
  for (int i = 0; i < 4; ++i) row.w[i] = acquire_load(e.row[i]);
  // After the acquire loads above: a field from a writer that has begun shows its odd sequence.
  return e.seq.load(std::memory_order_relaxed) == s1 && epc == pc && eobj == object;
}

void cache_put(uint64_t pc, uint64_t object, const Row &row) {
  Entry &e = g_rows[slot_of(pc)];
  uint64_t s = e.seq.load(std::memory_order_relaxed);
  // Acquire on success: the field stores below cannot move above taking the entry. A writer that
  // loses (another thread or this thread's interrupted self holds it) leaves the row uncached.
  if ((s & 1) || !e.seq.compare_exchange_strong(s, s + 1, std::memory_order_acquire,
                                                std::memory_order_relaxed))
    return;
  release_store(e.pc, pc);
  release_store(e.object, object);
  for (int i = 0; i < 4; ++i) release_store(e.row[i], row.w[i]);
  e.seq.store(s + 2, std::memory_order_release);  // pairs with cache_get's acquire load
}

// The full rules of `pc` in `obj`, from its .eh_frame.
bool rules_of(uint64_t pc, const cfi::Object &obj, cfi::Rules &rules, cfi::Cie &cie) {
  cfi::Fde fde;
  if (!cfi::find_fde(obj.eh_frame_hdr, obj.lo, obj.hi, pc, fde) || !cfi::rules_at(fde, pc, rules))
    return false;
  cie = fde.cie;
  return true;
}

// The row for `pc`, from the cache or the object's CFI. False where pc is in no loaded object.
// `obj` is the object of the walk's previous frame, reused when it holds pc too (a walk's frames
// are mostly in few objects; they stay mapped while their code is on the stack).
bool row_at(uint64_t pc, cfi::Object &obj, Row &row) {
  const auto *at = reinterpret_cast<const uint8_t *>(pc);
  if (!(at >= obj.lo && at < obj.hi) && !cfi::find_object(pc, obj)) {
    obj = cfi::Object{};
    return false;
  }
  if (!obj.eh_frame_hdr) return false;
  const auto tag = reinterpret_cast<uint64_t>(obj.eh_frame_hdr);
  if (cache_get(pc, tag, row)) return true;
  cfi::Rules rules;
  cfi::Cie cie;
  row = Row{};  // no usable row: a frame-pointer step
  if (rules_of(pc, obj, rules, cie)) compact(rules, cie, row);
  cache_put(pc, tag, row);
  return true;
}

// The registers of one frame, by DWARF number; `known` has a bit per column whose value is.
struct Frame {
  uint64_t reg[17];
  uint32_t known;
  bool has(unsigned col) const { return known & (1u << col); }
  void set(unsigned col, uint64_t v) {
    reg[col] = v;
    known |= 1u << col;
  }
};

// Reads a stack word at `addr` if the 8 bytes lie in [lo, hi). Other frames' memory, stale or
// not: not for AddressSanitizer to judge.
__attribute__((no_sanitize("address"))) bool read_stack(uint64_t addr, uint64_t lo, uint64_t hi,
                                                        uint64_t &v) {
  if (addr < lo || hi < 8 || addr > hi - 8) return false;
  std::memcpy(&v, reinterpret_cast<const void *>(addr), 8);
  return true;
}

// The rules of a cached row: the kept columns only. Every other register is lost at a call.
struct CompactRules {
  const Row &row;
  static constexpr unsigned count = kNumKept;
  unsigned column(unsigned i) const { return kKept[i]; }
  cfi::Rule rule(unsigned i) const { return row.rule(i); }
  unsigned reg(unsigned i) const { return row.reg(i); }
  int64_t value(unsigned i) const { return row.value(i); }
};

// A signal frame's full rules: every column.
struct FullRules {
  const cfi::Rules &rules;
  static constexpr unsigned count = cfi::kColumns;
  unsigned column(unsigned i) const { return i; }
  cfi::Rule rule(unsigned i) const { return rules.regs[i].rule; }
  unsigned reg(unsigned i) const { return rules.regs[i].reg; }
  int64_t value(unsigned i) const { return rules.regs[i].value; }
};

// One step by a CFI row: the caller's frame in `out`. False where the walk must end.
template <typename Rules>
bool cfi_step(const Frame &f, unsigned cfa_reg, int64_t cfa_offset, bool deref, const Rules &rules,
              uint64_t lo, uint64_t hi, ReturnFixup fixup, const void *ctx, Frame &out) {
  if (cfa_reg >= 16 || !f.has(cfa_reg)) return false;
  uint64_t cfa = f.reg[cfa_reg] + static_cast<uint64_t>(cfa_offset);
  if (deref && !read_stack(cfa, lo, hi, cfa)) return false;
  // The caller's stack pointer lies strictly above the callee's: the walk always goes up.
  if (cfa <= f.reg[kRsp] || cfa > hi) return false;
  out.known = 0;
  out.set(kRsp, cfa);
  for (unsigned i = 0; i < Rules::count; ++i) {
    const unsigned col = rules.column(i);
    const int64_t value = rules.value(i);
    uint64_t at = 0, v = 0;
    switch (rules.rule(i)) {
      case cfi::Rule::kSame:  // column 16 holds the callee's pc, not a caller's register
        if (col != kRa && col != kRsp && f.has(col)) out.set(col, f.reg[col]);
        continue;
      case cfi::Rule::kOffset:
        at = cfa + static_cast<uint64_t>(value);
        break;
      case cfi::Rule::kAtRegister:
        if (!f.has(rules.reg(i))) continue;
        at = f.reg[rules.reg(i)] + static_cast<uint64_t>(value);
        break;
      case cfi::Rule::kValOffset:
        if (col != kRsp) out.set(col, cfa + static_cast<uint64_t>(value));
        continue;
      case cfi::Rule::kRegister:
        if (col != kRsp && value >= 0 && value < 17 && f.has(static_cast<unsigned>(value)))
          out.set(col, f.reg[value]);
        continue;
      case cfi::Rule::kUndefined:  // for the return address: the outermost frame
      case cfi::Rule::kExpression:
        continue;
    }
    if (col == kRsp) continue;  // the caller's stack pointer is the CFA
    if (!read_stack(at, lo, hi, v)) return false;
    out.set(col, col == kRa ? fixup(ctx, at, v) : v);
  }
  return out.has(kRa);
}

// One step through a signal frame, by its full rules (kUncompacted). Out of line: its rules take
// a few hundred bytes of stack that the common step does without.
__attribute__((noinline)) bool signal_step(uint64_t pc, const cfi::Object &obj, const Frame &f,
                                           uint64_t lo, uint64_t hi, ReturnFixup fixup,
                                           const void *ctx, Frame &out) {
  cfi::Rules rules;
  cfi::Cie cie;
  return rules_of(pc, obj, rules, cie) && cie.signal_frame && !rules.cfa.expression &&
         cfi_step(f, rules.cfa.reg, rules.cfa.offset, rules.cfa.deref, FullRules{rules}, lo, hi,
                  fixup, ctx, out);
}

// One step by the frame pointer, for a frame without usable CFI. At a function's first
// instruction the return address is at the stack pointer; elsewhere %rbp is assumed to point at
// the saved %rbp, with the return address above it.
bool frame_pointer_step(const Frame &f, bool entry, uint64_t lo, uint64_t hi, ReturnFixup fixup,
                        const void *ctx, Frame &out) {
  out.known = 0;
  uint64_t ra = 0;
  if (entry) {
    const uint64_t sp = f.reg[kRsp];
    if (!read_stack(sp, lo, hi, ra)) return false;
    out = f;
    out.set(kRsp, sp + 8);
    out.set(kRa, fixup(ctx, sp, ra));
    return true;
  }
  if (!f.has(kRbp)) return false;
  const uint64_t fp = f.reg[kRbp];
  uint64_t saved_fp = 0;
  if (fp % 8 != 0 || fp < f.reg[kRsp] || !read_stack(fp, lo, hi, saved_fp) ||
      !read_stack(fp + 8, lo, hi, ra))
    return false;
  out.set(kRsp, fp + 16);
  out.set(kRbp, saved_fp);
  out.set(kRa, fixup(ctx, fp + 8, ra));
  return true;
}

}  // namespace

// Never allocates, locks or makes a system call; reads the stack only through read_stack.
size_t dwarf_walk(const WalkStart &start, uint64_t hi, uint64_t *ips, size_t max, ReturnFixup fixup,
                  const void *ctx) {
  const Regs &r = *start.regs;
  Frame frames[2];  // the current frame and its caller, swapped at each step
  Frame *f = &frames[0], *caller = &frames[1];
  f->known = 0;
  const uint64_t gprs[16] = {r.rax, r.rdx, r.rcx, r.rbx, r.rsi, r.rdi, r.rbp, start.sp,
                             r.r8,  r.r9,  r.r10, r.r11, r.r12, r.r13, r.r14, r.r15};
  for (unsigned i = 0; i < 16; ++i) f->set(i, gprs[i]);
  f->set(kRa, start.ip);  // column 16 holds this frame's pc until the step replaces it
  const uint64_t lo = start.sp;
  cfi::Object obj;
  bool exact = true;  // the first pc is the next instruction to run, not a return address
  size_t n = 0;
  while (n < max) {
    const uint64_t pc = f->reg[kRa];
    Row row{};
    // A return address is looked up one byte back, inside the call: a call may be a function's
    // last instruction (to a noreturn callee), and its return address then starts another one.
    const uint64_t lookup = exact ? pc : pc - 1;
    const bool found = row_at(lookup, obj, row);
    bool stepped;
    if (found && (row.flags() & kUncompacted)) {
      stepped = signal_step(lookup, obj, *f, lo, hi, fixup, ctx, *caller);
    } else if (found && (row.flags() & kUsable)) {
      stepped = cfi_step(*f, row.cfa_reg(), row.cfa_offset(), (row.flags() & kDeref) != 0,
                         CompactRules{row}, lo, hi, fixup, ctx, *caller);
    } else {
      stepped = frame_pointer_step(*f, n == 0 && start.entry, lo, hi, fixup, ctx, *caller);
    }
    if (!stepped || caller->reg[kRsp] <= f->reg[kRsp] || caller->reg[kRa] == 0) break;
    ips[n++] = caller->reg[kRa];
    exact = (row.flags() & kSignal) != 0;
    std::swap(f, caller);
  }
  return n;
}

}  // namespace usprobe::arch
