// CodeWriter: appends x86-64 machine code to a buffer that will live at a known address.
// Function names spell the instruction they emit (put_jmp_rel32, put_push_reg), so a trampoline
// template reads like its disassembly. Branch targets are absolute addresses; the writer knows
// where each byte will sit (base + offset) and computes displacements itself.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace usprobe::x86 {

// Register numbers as the hardware encodes them (ModRM.reg / REX.B).
// clang-format off
enum Reg : uint8_t {
  RAX = 0, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15
};
// clang-format on

// Condition codes (the low nibble of jcc's opcode); they come in pairs that differ in bit 0.
enum Cond : uint8_t {
  kBelow = 0x2,         // jb / jc
  kAboveOrEqual = 0x3,  // jae / jnc
  kEqual = 0x4,         // je / jz
  kNotEqual = 0x5,      // jne / jnz
};

// A place in the code that branches (and 64-bit immediates) may name before it is bound: each use
// is filled in when bind() gives the label its place, or at once when it has one already (Frida's
// x86 writer has the same). A label is bound once, in the writer whose code uses it.
class Label {
 public:
  Label() = default;
  Label(const Label &) = delete;
  Label &operator=(const Label &) = delete;
  bool bound() const { return at_ != kUnbound; }

 private:
  friend class CodeWriter;
  static constexpr size_t kUnbound = ~size_t{0};
  // Uses made before the label is bound: a trampoline template has a few per label, and a batch
  // writes thousands of trampolines, so they are kept in place rather than allocated.
  static constexpr size_t kMaxUses = 8;
  struct Uses {
    uint32_t at[kMaxUses];
    uint32_t count = 0;
    void add(size_t offset) {
      if (count == kMaxUses) __builtin_trap();  // a template with more: raise kMaxUses
      at[count++] = static_cast<uint32_t>(offset);
    }
  };
  size_t at_ = kUnbound;  // offset in the writer's buffer
  Uses rel32_;            // rel32 fields to fill (relative to the end of each field)
  Uses abs64_;            // 64-bit immediates to fill with the label's address
};

// What a writer that records (CodeWriter::record) notes of the code it writes, for code that is
// written once and copied to other places with its addresses fixed up (a trampoline template):
// every 64-bit immediate (movabs, and a label's address), every rel32 to an absolute target, and
// every choice between a rel32 form and an absolute one, which holds at another place only when
// the same choice would be made there.
struct WrittenAddresses {
  std::vector<uint32_t> imm64;  // offsets of 64-bit immediates
  struct Rel32 {
    uint32_t at;  // offset of the field; the displacement counts from at + 4
    uint64_t target;
  };
  std::vector<Rel32> rel32;
  struct Choice {
    uint32_t next;  // the offset that reach was judged from (the end of the rel32 form)
    uint64_t target;
    bool rel32;
  };
  std::vector<Choice> choices;
};

class CodeWriter {
 public:
  explicit CodeWriter(uint64_t base) : base_(base) {}

  // Note what later code writes into `into` (null: stop).
  void record(WrittenAddresses *into) { record_ = into; }

  uint64_t base() const { return base_; }
  uint64_t pc() const { return base_ + size_; }  // address of the next byte
  size_t size() const { return size_; }
  // The code written so far. The buffer runs ahead of the code (a trampoline is written a byte at
  // a time, thousands per batch: an append is a store, not a vector's push_back); this trims it,
  // and writing on afterwards is fine.
  std::vector<uint8_t> &bytes() {
    buf_.resize(size_);
    return buf_;
  }
  // Room for n bytes of code in one allocation.
  void reserve(size_t n) {
    if (buf_.size() < n) buf_.resize(n);
  }

  static bool fits_rel32(uint64_t from_next, uint64_t target) {
    int64_t d = static_cast<int64_t>(target - from_next);
    return d >= std::numeric_limits<int32_t>::min() && d <= std::numeric_limits<int32_t>::max();
  }

  // Labels: give `l` the next byte's place, and fill every use made so far.
  void bind(Label &l) {
    l.at_ = size();
    for (uint32_t i = 0; i < l.rel32_.count; ++i)
      patch_u32(l.rel32_.at[i], static_cast<uint32_t>(l.at_ - (l.rel32_.at[i] + 4)));
    for (uint32_t i = 0; i < l.abs64_.count; ++i) patch_u64(l.abs64_.at[i], base_ + l.at_);
    l.rel32_.count = l.abs64_.count = 0;
  }
  // jmp rel32 / jcc rel32 / call rel32 to a label (in this buffer: always in range).
  void put_jmp(Label &l) {
    put_u8(0xE9);
    put_rel32(l);
  }
  void put_jcc(Cond cc, Label &l) {
    put_u8(0x0F), put_u8(0x80 | cc);
    put_rel32(l);
  }
  void put_call(Label &l) {
    put_u8(0xE8);
    put_rel32(l);
  }
  // movabs $address of the label, %reg
  void put_mov_reg_address(Reg r, Label &l) {
    put_mov_reg_imm64(r, 0);
    if (l.bound())
      patch_u64(size() - 8, base_ + l.at_);
    else
      l.abs64_.add(size() - 8);
  }

  __attribute__((always_inline)) void put_u8(uint8_t b) {
    if (size_ == buf_.size()) grow(1);
    buf_[size_++] = b;
  }
  __attribute__((always_inline)) void put_bytes(const void *p, size_t n) {
    if (buf_.size() - size_ < n) grow(n);
    std::memcpy(buf_.data() + size_, p, n);
    size_ += n;
  }
  void put_u32(uint32_t v) { put_bytes(&v, 4); }
  void put_u64(uint64_t v) { put_bytes(&v, 8); }
  void patch_u32(size_t at, uint32_t v) { std::memcpy(&buf_[at], &v, 4); }
  void patch_u64(size_t at, uint64_t v) { std::memcpy(&buf_[at], &v, 8); }

  // jmp rel32 to target; the caller checks fits_rel32(pc() + 5, target).
  void put_jmp_rel32(uint64_t target) {
    put_u8(0xE9);
    put_rel32_to(target);
  }
  // jmp *0(%rip); .quad target — reaches anywhere, 14 bytes, clobbers nothing.
  void put_jmp_abs(uint64_t target) {
    put_u8(0xFF), put_u8(0x25), put_u32(0);
    if (record_) record_->imm64.push_back(static_cast<uint32_t>(size()));
    put_u64(target);
  }
  // jmp rel32 when in range, otherwise the absolute form.
  void put_jmp(uint64_t target) {
    if (choose_rel32(5, target))
      put_jmp_rel32(target);
    else
      put_jmp_abs(target);
  }
  // jcc rel32 (cc = low nibble of the condition code, e.g. 0x4 for je).
  void put_jcc_rel32(uint8_t cc, uint64_t target) {
    put_u8(0x0F), put_u8(0x80 | (cc & 0xF));
    put_rel32_to(target);
  }
  // jcc rel8; the caller checks that target lies within -128..127 of pc() + 2.
  void put_jcc_rel8(uint8_t cc, uint64_t target) {
    put_u8(0x70 | (cc & 0xF));
    put_u8(static_cast<uint8_t>(target - (pc() + 1)));
  }
  // jcc rel32 when in range, otherwise the inverted jcc rel8 over the 14-byte absolute jmp
  // (condition codes come in pairs that differ in bit 0: je/jne, jb/jae, ...).
  void put_jcc(uint8_t cc, uint64_t target) {
    if (choose_rel32(6, target)) {
      put_jcc_rel32(cc, target);
    } else {
      put_jcc_rel8(cc ^ 1, pc() + 2 + 14);
      put_jmp_abs(target);
    }
  }
  // push $imm32 (the CPU sign-extends it to 64 bits)
  void put_push_imm32(int32_t imm) {
    put_u8(0x68);
    put_u32(static_cast<uint32_t>(imm));
  }
  // movl $imm32, disp8(%rsp)
  void put_movl_rsp_imm32(int8_t disp, uint32_t imm) {
    put_u8(0xC7), put_u8(0x44), put_u8(0x24), put_u8(static_cast<uint8_t>(disp));
    put_u32(imm);
  }
  // Pushes a 64-bit value without touching any register or flag: `push $imm32` when the value
  // sign-extends from 32 bits, otherwise `lea -8(%rsp),%rsp; movl $lo,0(%rsp); movl $hi,4(%rsp)`
  // (lea leaves the flags alone; a memory xchg would be locked and slow).
  void put_push_imm64(uint64_t v) {
    auto s = static_cast<int64_t>(v);
    if (s >= std::numeric_limits<int32_t>::min() && s <= std::numeric_limits<int32_t>::max()) {
      put_push_imm32(static_cast<int32_t>(s));
      return;
    }
    put_lea_rsp_rsp(-8);
    put_movl_rsp_imm32(0, static_cast<uint32_t>(v));
    put_movl_rsp_imm32(4, static_cast<uint32_t>(v >> 32));
  }
  void put_push_reg(Reg r) {
    if (r >= R8) put_u8(0x41);
    put_u8(0x50 | (r & 7));
  }
  void put_pop_reg(Reg r) {
    if (r >= R8) put_u8(0x41);
    put_u8(0x58 | (r & 7));
  }
  // movabs $imm, %reg
  void put_mov_reg_imm64(Reg r, uint64_t imm) {
    put_u8(0x48 | (r >= R8 ? 1 : 0)), put_u8(0xB8 | (r & 7));
    if (record_) record_->imm64.push_back(static_cast<uint32_t>(size()));
    put_u64(imm);
  }
  // mov %src, %dst (64-bit)
  void put_mov_reg_reg(Reg dst, Reg src) {
    put_u8(0x48 | (src >= R8 ? 4 : 0) | (dst >= R8 ? 1 : 0)), put_u8(0x89);
    put_u8(0xC0 | ((src & 7) << 3) | (dst & 7));
  }
  // lea disp32(%rsp), %rsp
  void put_lea_rsp_rsp(int32_t disp) {
    put_u8(0x48), put_u8(0x8D), put_u8(0xA4), put_u8(0x24);
    put_u32(static_cast<uint32_t>(disp));
  }
  // lea disp32(%rsp), %reg
  void put_lea_reg_rsp(Reg r, int32_t disp) {
    put_u8(0x48 | (r >= R8 ? 4 : 0)), put_u8(0x8D), put_u8(0x84 | ((r & 7) << 3)), put_u8(0x24);
    put_u32(static_cast<uint32_t>(disp));
  }
  // Memory operands disp(%base), 64-bit operations. The shortest displacement that holds `disp`
  // (none for 0, except with %rbp and %r13 as the base, whose no-displacement form means another
  // thing), and the SIB byte that %rsp and %r12 as the base need.
  //
  // mov %src,disp(%base)
  void put_mov_mem_reg(Reg base, int32_t disp, Reg src) { put_op_mem(0x89, src, base, disp); }
  // mov disp(%base),%dst
  void put_mov_reg_mem(Reg dst, Reg base, int32_t disp) { put_op_mem(0x8B, dst, base, disp); }
  // incq disp(%base)
  void put_incq_mem(Reg base, int32_t disp) { put_op_mem(0xFF, RAX, base, disp); }  // FF /0
  // movq $imm32,disp(%base) (sign-extended)
  void put_movq_mem_imm32(Reg base, int32_t disp, int32_t imm) {
    put_op_mem(0xC7, RAX, base, disp);  // C7 /0
    put_u32(static_cast<uint32_t>(imm));
  }
  // cmpq $imm8,disp(%base) (sign-extended)
  void put_cmpq_mem_imm8(Reg base, int32_t disp, int8_t imm) {
    put_op_mem(0x83, RDI, base, disp);  // 83 /7
    put_u8(static_cast<uint8_t>(imm));
  }
  // cmpb $imm8,disp(%base)
  void put_cmpb_mem_imm8(Reg base, int32_t disp, int8_t imm) {
    put_modrm_mem(0x80, RDI, base, disp, false);  // 80 /7
    put_u8(static_cast<uint8_t>(imm));
  }
  // op with a memory operand at %fs:disp32, a word at a fixed distance from the thread pointer
  // (initial-exec TLS); `reg` is the ModRM reg field (a register or an opcode extension).
  void put_op_fs_abs(uint8_t opcode, Reg reg, int32_t disp, bool wide = true) {
    put_u8(0x64);  // %fs
    if (wide || reg >= R8) put_u8((wide ? 0x48 : 0x40) | (reg >= R8 ? 4 : 0));
    put_u8(opcode);
    put_u8(0x04 | ((reg & 7) << 3)), put_u8(0x25);  // SIB: no base, no index: disp32 alone
    put_u32(static_cast<uint32_t>(disp));
  }
  // add %fs:disp32,%dst
  void put_add_reg_fs_abs(Reg dst, int32_t disp) { put_op_fs_abs(0x03, dst, disp); }
  // mov %fs:disp32,%dst; mov %src,%fs:disp32; cmp %fs:disp32,%reg (64-bit);
  // movl $imm32,%fs:disp32
  void put_mov_reg_fs_abs(Reg dst, int32_t disp) { put_op_fs_abs(0x8B, dst, disp); }
  void put_mov_fs_abs_reg(int32_t disp, Reg src) { put_op_fs_abs(0x89, src, disp); }
  void put_cmp_reg_fs_abs(Reg r, int32_t disp) { put_op_fs_abs(0x3B, r, disp); }
  void put_movl_fs_abs_imm32(int32_t disp, uint32_t imm) {
    put_op_fs_abs(0xC7, RAX, disp, false);  // C7 /0
    put_u32(imm);
  }
  // A quadword of data (never executed), noted as a 64-bit immediate when recording.
  void put_data_u64(uint64_t v) {
    if (record_) record_->imm64.push_back(static_cast<uint32_t>(size()));
    put_u64(v);
  }
  // lea label(%rip),%dst
  void put_lea_reg_rip(Reg dst, Label &l) {
    put_u8(0x48 | (dst >= R8 ? 4 : 0)), put_u8(0x8D), put_u8(0x05 | ((dst & 7) << 3));
    put_rel32(l);
  }
  // add disp(%base),%dst / add %src,%dst / add $imm32,%dst (64-bit)
  void put_add_reg_mem(Reg dst, Reg base, int32_t disp) { put_op_mem(0x03, dst, base, disp); }
  void put_add_reg_reg(Reg dst, Reg src) {
    put_u8(0x48 | (src >= R8 ? 4 : 0) | (dst >= R8 ? 1 : 0)), put_u8(0x01);
    put_u8(0xC0 | ((src & 7) << 3) | (dst & 7));
  }
  void put_add_reg_imm32(Reg dst, int32_t imm) {
    put_u8(0x48 | (dst >= R8 ? 1 : 0)), put_u8(0x81), put_u8(0xC0 | (dst & 7));
    put_u32(static_cast<uint32_t>(imm));
  }
  // shr $imm8,%dst (64-bit)
  void put_shr_reg_imm8(Reg dst, uint8_t imm) {
    put_u8(0x48 | (dst >= R8 ? 1 : 0)), put_u8(0xC1), put_u8(0xE8 | (dst & 7));
    put_u8(imm);
  }
  // imul $imm32,%src,%dst (64-bit)
  void put_imul_reg_reg_imm32(Reg dst, Reg src, int32_t imm) {
    put_u8(0x48 | (dst >= R8 ? 4 : 0) | (src >= R8 ? 1 : 0)), put_u8(0x69);
    put_u8(0xC0 | ((dst & 7) << 3) | (src & 7));
    put_u32(static_cast<uint32_t>(imm));
  }
  // cmp %src,disp(%base) (64-bit: flags of disp(%base) - %src)
  void put_cmp_mem_reg(Reg base, int32_t disp, Reg src) { put_op_mem(0x39, src, base, disp); }
  // 32-bit memory operands: movl $imm32; incl; decl
  void put_movl_mem_imm32(Reg base, int32_t disp, uint32_t imm) {
    put_modrm_mem(0xC7, RAX, base, disp, false);  // C7 /0
    put_u32(imm);
  }
  void put_incl_mem(Reg base, int32_t disp) { put_modrm_mem(0xFF, RAX, base, disp, false); }
  void put_decl_mem(Reg base, int32_t disp) { put_modrm_mem(0xFF, RCX, base, disp, false); }
  // cmp disp(%base),%reg (64-bit: flags of %reg - disp(%base))
  void put_cmp_reg_mem(Reg r, Reg base, int32_t disp) { put_op_mem(0x3B, r, base, disp); }
  // rdtsc; shl $imm8,%reg; or %src,%dst; mul disp(%base) (%rdx:%rax = %rax * the word);
  // shrd $imm8,%src,%dst; bsr %src,%dst (64-bit); and $imm8,%reg32
  void put_rdtsc() { put_u8(0x0F), put_u8(0x31); }
  void put_shl_reg_imm8(Reg dst, uint8_t imm) {
    put_u8(0x48 | (dst >= R8 ? 1 : 0)), put_u8(0xC1), put_u8(0xE0 | (dst & 7));
    put_u8(imm);
  }
  void put_or_reg_reg(Reg dst, Reg src) {
    put_u8(0x48 | (src >= R8 ? 4 : 0) | (dst >= R8 ? 1 : 0)), put_u8(0x09);
    put_u8(0xC0 | ((src & 7) << 3) | (dst & 7));
  }
  void put_mul_mem(Reg base, int32_t disp) { put_op_mem(0xF7, RSP, base, disp); }  // F7 /4
  void put_shrd_reg_reg_imm8(Reg dst, Reg src, uint8_t imm) {
    put_u8(0x48 | (src >= R8 ? 4 : 0) | (dst >= R8 ? 1 : 0)), put_u8(0x0F), put_u8(0xAC);
    put_u8(0xC0 | ((src & 7) << 3) | (dst & 7));
    put_u8(imm);
  }
  void put_bsr_reg_reg(Reg dst, Reg src) {
    put_u8(0x48 | (dst >= R8 ? 4 : 0) | (src >= R8 ? 1 : 0)), put_u8(0x0F), put_u8(0xBD);
    put_u8(0xC0 | ((dst & 7) << 3) | (src & 7));
  }
  void put_and_reg32_imm8(Reg r, int8_t imm) {
    if (r >= R8) put_u8(0x41);
    put_u8(0x83), put_u8(0xE0 | (r & 7));
    put_u8(static_cast<uint8_t>(imm));
  }
  // shr %cl,%reg (64-bit)
  void put_shr_reg_cl(Reg r) {
    put_u8(0x48 | (r >= R8 ? 1 : 0)), put_u8(0xD3), put_u8(0xE8 | (r & 7));
  }
  // add %src,disp(%base,%index) / incq disp(%base,%index) / incq disp(%base,%index,8) /
  // lea disp(%base,%index,scale),%dst (64-bit)
  void put_add_sib_reg(Reg base, Reg index, int32_t disp, Reg src) {
    put_sib(0x01, src, base, index, 1, disp);
  }
  void put_incq_sib(Reg base, Reg index, uint8_t scale, int32_t disp) {
    put_sib(0xFF, RAX, base, index, scale, disp);
  }
  void put_lea_sib(Reg dst, Reg base, Reg index, uint8_t scale, int32_t disp) {
    put_sib(0x8D, dst, base, index, scale, disp);
  }
  // lea disp(%base),%dst; sub disp(%base),%dst (64-bit)
  void put_lea_reg_mem(Reg dst, Reg base, int32_t disp) { put_op_mem(0x8D, dst, base, disp); }
  void put_sub_reg_mem(Reg dst, Reg base, int32_t disp) { put_op_mem(0x2B, dst, base, disp); }
  // sub $imm8,%reg (64-bit)
  void put_sub_reg_imm8(Reg r, int8_t imm) {
    put_u8(0x48 | (r >= R8 ? 1 : 0)), put_u8(0x83), put_u8(0xE8 | (r & 7));
    put_u8(static_cast<uint8_t>(imm));
  }
  // cmp $imm8,%reg (64-bit, sign-extended) and the 32-bit form
  void put_cmp_reg_imm8(Reg r, int8_t imm) {
    put_u8(0x48 | (r >= R8 ? 1 : 0)), put_u8(0x83), put_u8(0xF8 | (r & 7));
    put_u8(static_cast<uint8_t>(imm));
  }
  void put_cmp_reg32_imm8(Reg r, int8_t imm) {
    if (r >= R8) put_u8(0x41);
    put_u8(0x83), put_u8(0xF8 | (r & 7));
    put_u8(static_cast<uint8_t>(imm));
  }
  // test %reg,%reg (64-bit)
  void put_test_reg_reg(Reg a, Reg b) {
    put_u8(0x48 | (b >= R8 ? 4 : 0) | (a >= R8 ? 1 : 0)), put_u8(0x85);
    put_u8(0xC0 | ((b & 7) << 3) | (a & 7));
  }
  // xor %reg32,%reg32 (zeroes the whole register) and mov $imm32,%reg32 (zero-extended)
  void put_xor_reg32_reg32(Reg a, Reg b) {
    if (a >= R8 || b >= R8) put_u8(0x40 | (b >= R8 ? 4 : 0) | (a >= R8 ? 1 : 0));
    put_u8(0x31), put_u8(0xC0 | ((b & 7) << 3) | (a & 7));
  }
  void put_mov_reg32_imm32(Reg r, uint32_t imm) {
    if (r >= R8) put_u8(0x41);
    put_u8(0xB8 | (r & 7));
    put_u32(imm);
  }
  // and $imm8,%rsp (sign-extended): aligns the stack down
  void put_and_rsp_imm8(int8_t imm) {
    put_u8(0x48), put_u8(0x83), put_u8(0xE4), put_u8(static_cast<uint8_t>(imm));
  }
  // push $imm8 (sign-extended to 64 bits)
  void put_push_imm8(int8_t imm) { put_u8(0x6A), put_u8(static_cast<uint8_t>(imm)); }
  void put_cld() { put_u8(0xFC); }
  void put_pushfq() { put_u8(0x9C); }
  void put_popfq() { put_u8(0x9D); }
  void put_ret() { put_u8(0xC3); }
  void put_int3() { put_u8(0xCC); }
  // call *%reg
  void put_call_reg(Reg r) {
    if (r >= R8) put_u8(0x41);
    put_u8(0xFF), put_u8(0xD0 | (r & 7));
  }
  // call target: rel32 when in range, otherwise through `scratch` (movabs; call *%scratch).
  void put_call(uint64_t target, Reg scratch) {
    if (choose_rel32(5, target)) {
      put_u8(0xE8);
      put_rel32_to(target);
    } else {
      put_mov_reg_imm64(scratch, target);
      put_call_reg(scratch);
    }
  }

 private:
  // Whether a branch whose rel32 form is `length` bytes reaches `target` from here (noted).
  bool choose_rel32(size_t length, uint64_t target) {
    const bool fits = fits_rel32(pc() + length, target);
    if (record_) record_->choices.push_back({static_cast<uint32_t>(size() + length), target, fits});
    return fits;
  }
  void put_rel32_to(uint64_t target) {
    if (record_) record_->rel32.push_back({static_cast<uint32_t>(size()), target});
    put_u32(static_cast<uint32_t>(target - (pc() + 4)));
  }
  void put_rel32(Label &l) {
    if (l.bound()) {
      put_u32(static_cast<uint32_t>(l.at_ - (size() + 4)));
    } else {
      l.rel32_.add(size());
      put_u32(0);
    }
  }
  // REX.W, `opcode`, ModRM, SIB and a 32-bit displacement for `reg_field` and
  // disp(%base,%index,scale). %rsp cannot be an index; %rbp and %r13 as the base are fine with a
  // displacement, which this always has.
  void put_sib(uint8_t opcode, Reg reg_field, Reg base, Reg index, uint8_t scale, int32_t disp) {
    if (index == RSP) __builtin_trap();
    put_u8(0x48 | (reg_field >= R8 ? 4 : 0) | (index >= R8 ? 2 : 0) | (base >= R8 ? 1 : 0));
    put_u8(opcode);
    put_u8(static_cast<uint8_t>(0x84 | ((reg_field & 7) << 3)));  // mod 10: disp32, rm 100: SIB
    const uint8_t ss = scale == 8 ? 3 : scale == 4 ? 2 : scale == 2 ? 1 : 0;
    put_u8(static_cast<uint8_t>((ss << 6) | ((index & 7) << 3) | (base & 7)));
    put_u32(static_cast<uint32_t>(disp));
  }
  // REX.W, `opcode`, and ModRM (+ SIB, displacement) for `reg_field` and disp(%base).
  void put_op_mem(uint8_t opcode, Reg reg_field, Reg base, int32_t disp) {
    put_modrm_mem(opcode, reg_field, base, disp, true);
  }
  void put_modrm_mem(uint8_t opcode, Reg reg_field, Reg base, int32_t disp, bool wide) {
    const uint8_t rex = (wide ? 0x48 : 0x40) | (reg_field >= R8 ? 4 : 0) | (base >= R8 ? 1 : 0);
    if (rex != 0x40) put_u8(rex);
    put_u8(opcode);
    const bool none = disp == 0 && (base & 7) != RBP;
    const bool short_disp = disp >= -128 && disp <= 127;
    const uint8_t mod = none ? 0x00 : short_disp ? 0x40 : 0x80;
    put_u8(static_cast<uint8_t>(mod | ((reg_field & 7) << 3) | (base & 7)));
    if ((base & 7) == RSP) put_u8(0x24);  // SIB: base only
    if (mod == 0x40) put_u8(static_cast<uint8_t>(disp));
    if (mod == 0x80) put_u32(static_cast<uint32_t>(disp));
  }

  __attribute__((noinline)) void grow(size_t n) {
    buf_.resize(std::max(2 * buf_.size(), size_ + n + 64));
  }

  uint64_t base_;
  std::vector<uint8_t> buf_;  // the code is its first size_ bytes
  size_t size_ = 0;
  WrittenAddresses *record_ = nullptr;
};

}  // namespace usprobe::x86
