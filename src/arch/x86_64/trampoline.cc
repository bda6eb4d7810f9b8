// Site analysis and trampolines for x86-64.
//
// Every site gets a trampoline, on either path: the jump path enters it by `jmp rel32` at the site,
// the int3 path by the trap handler setting %rip to it. A trampoline:
//
//     lea -128(%rsp),%rsp          step over the red zone of the probed code
//     pushfq; push %rax .. %r15    the Regs view (arch/x86_64/regs.h), the site's %rsp, the site
//                                  (entry flavour: room for the flags, which are dead, no pushfq)
//     mov %rsp,%rbx                %rbx keeps the view across the call (callee-saved)
//     <save vector state>          entry flavour: x/y/zmm0-7 (arguments); instruction: xsavec
//                                  (skipped while the probe has no callbacks: see below)
//     mov %rbx,%rdi; movabs $probe,%rsi; call usprobe_dispatch (rel32, or through %rax)
//     <restore vector state>; mov %rbx,%rsp
//     pop ...; popfq (entry flavour: flags are dead, skipped); lea 128(%rsp),%rsp
//   window:
//     <the displaced instructions, relocated>
//     jmp site+length               (absent when the last one never falls through)
//
// A function-entry trampoline starts with two shorter paths. The counter path (emit_counter_path)
// counts a probe whose only consumer is one built-in entry counter in a handful of instructions,
// calling nothing. The fast path, for probes whose consumers are all built-in counters, saves only
// the caller-saved registers and calls usprobe_entry_fast, which needs no Regs view. Anything that
// needs more falls through to the full path above. The shared return code
// (make_return_trampoline) has the fast path and the full path.
//
// Flavours: at a function entry the System V ABI says what is live: argument registers, %rax
// (vararg count), %r10 (static chain), %r11, xmm0-7; flags and the other vector registers are
// dead. Anywhere else everything is live, so the instruction flavour keeps the flags, clears DF
// for the call (the ABI requires it) and saves the whole extended state with xsavec.
#include <cpuid.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>

#include <fmt/format.h>

#include "arch/x86_64/code_writer.h"
#include "arch/x86_64/regs.h"
#include "arch/x86_64/relocator.h"
#include "core/arch.h"
#include "core/dispatch.h"
#include "core/probe.h"
#include "core/rcu.h"
#include "core/thread_record.h"

namespace usprobe::arch {
namespace {

// The shared return code's two entries: `counted` tries usprobe_return_fast first (returns taken
// by built-in counters only), `full` builds the Regs view for return handlers.
struct ReturnCode {
  uint64_t full = 0, counted = 0;
  // The return counter path's returns (emit_return_counter_path): a built-in counter's, a timer's,
  // an external counter's.
  uint64_t counter_return = 0, timer_return = 0, external_counter_return = 0;
};
Result<ReturnCode> return_code_made(CodeSpace &space);

constexpr size_t kJumpLength = 5;  // e9 rel32
// A trampoline's block: the fast paths, prologue, epilogue, window and jump back; a function entry
// with a return path (Probe::return_path) has about 300 bytes more.
constexpr size_t kTrampolineSize = 768, kReturnPathTrampolineSize = 1088;
size_t block_size(const Probe *probe) {
  return probe && probe->return_path != Probe::kNoReturnPath ? kReturnPathTrampolineSize
                                                             : kTrampolineSize;
}
constexpr int32_t kRedZone = 128;

struct XsaveInfo {
  uint32_t size = 0;     // bytes of the xsave area for the enabled features
  uint64_t mask = 0;     // XCR0 without AMX tile data (its 8 KB would be first-use-trapped anyway)
  bool compact = false;  // xsavec available
};

const XsaveInfo &xsave_info() {
  static const XsaveInfo info = [] {
    XsaveInfo i;
    unsigned a, b, c, d;
    __cpuid_count(0xD, 0, a, b, c, d);
    i.size = b;
    uint32_t lo, hi;
    asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    i.mask = ((uint64_t{hi} << 32) | lo) & ~(uint64_t{3} << 17);
    __cpuid_count(0xD, 1, a, b, c, d);
    i.compact = (a & 2) != 0;
    return i;
  }();
  return info;
}

// The width of the vector argument registers: at a function entry xmm0-7 may carry __m256 or
// __m512 arguments, so their whole enabled width is live.
enum class VecWidth { kXmm, kYmm, kZmm };
VecWidth argument_width() {
  const uint64_t xcr0 = xsave_info().mask;
  if ((xcr0 & 0xE6) == 0xE6) return VecWidth::kZmm;  // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
  if ((xcr0 & 0x6) == 0x6) return VecWidth::kYmm;
  return VecWidth::kXmm;
}
size_t width_bytes(VecWidth v) {
  return v == VecWidth::kZmm ? 64 : v == VecWidth::kYmm ? 32 : 16;
}

// Store (or load) vector register n < 8 at n * width(%rsp); %rsp is 64-byte aligned.
void put_vec_move(x86::CodeWriter &w, VecWidth v, int n, bool store) {
  const uint8_t modrm_disp32 = static_cast<uint8_t>(0x84 | (n << 3));
  const uint32_t disp = static_cast<uint32_t>(n * width_bytes(v));
  switch (v) {
    case VecWidth::kZmm: {
      // vmovdqu64 %zmmN,disp8*64(%rsp) / vmovdqu64 disp8*64(%rsp),%zmmN: EVEX.512.F3.0F.W1 7F/6F,
      // disp8 compressed by 64.
      const uint8_t b[] = {0x62,
                           0xF1,
                           0xFE,
                           0x48,
                           static_cast<uint8_t>(store ? 0x7F : 0x6F),
                           static_cast<uint8_t>(0x44 | (n << 3)),
                           0x24,
                           static_cast<uint8_t>(n)};
      w.put_bytes(b, sizeof b);
      return;
    }
    case VecWidth::kYmm: {
      // vmovdqu %ymmN,disp32(%rsp) / vmovdqu disp32(%rsp),%ymmN: VEX.256.F3.0F 7F/6F
      const uint8_t b[] = {0xC5, 0xFE, static_cast<uint8_t>(store ? 0x7F : 0x6F), modrm_disp32,
                           0x24};
      w.put_bytes(b, sizeof b);
      w.put_u32(disp);
      return;
    }
    case VecWidth::kXmm: {
      // movaps %xmmN,disp32(%rsp) / movaps disp32(%rsp),%xmmN: 0F 29/28
      const uint8_t b[] = {0x0F, static_cast<uint8_t>(store ? 0x29 : 0x28), modrm_disp32, 0x24};
      w.put_bytes(b, sizeof b);
      w.put_u32(disp);
      return;
    }
  }
}
void put_mov_eax_edx_mask(x86::CodeWriter &w, uint64_t mask) {
  w.put_mov_reg32_imm32(x86::RAX, static_cast<uint32_t>(mask));
  w.put_mov_reg32_imm32(x86::RDX, static_cast<uint32_t>(mask >> 32));
}

// Make room below %rsp and save the whole extended state there (%rsp ends 64-byte aligned and
// points at the area). Clobbers %eax, %edx.
void put_xsave(x86::CodeWriter &w) {
  const XsaveInfo &x = xsave_info();
  w.put_lea_rsp_rsp(-static_cast<int32_t>(x.size + 64));
  w.put_and_rsp_imm8(-64);
  // xrstor faults unless header bytes 16..63 are zero, and neither xsave nor xsavec writes
  // them (xsavec writes bytes 0..15): clear the whole 64-byte header first.
  for (int off = 512; off < 512 + 64; off += 8) w.put_movq_mem_imm32(x86::RSP, off, 0);
  put_mov_eax_edx_mask(w, x.mask);
  const uint8_t save_c[] = {0x48, 0x0F, 0xC7, 0x24, 0x24};  // xsavec64 (%rsp)
  const uint8_t save[] = {0x48, 0x0F, 0xAE, 0x24, 0x24};    // xsave64 (%rsp)
  w.put_bytes(x.compact ? save_c : save, 5);
}
// Restore what put_xsave saved at (%rsp). Clobbers %eax, %edx.
void put_xrstor(x86::CodeWriter &w) {
  put_mov_eax_edx_mask(w, xsave_info().mask);
  const uint8_t rstor[] = {0x48, 0x0F, 0xAE, 0x2C, 0x24};  // xrstor64 (%rsp)
  w.put_bytes(rstor, sizeof rstor);
}

// The Regs view's push order (regs.h): the registers a C function may change first, which is all
// the fast paths save around usprobe_entry_fast and usprobe_return_fast (callers built with
// -fipa-ra may rely on any of them being kept), then the ones it keeps.
constexpr x86::Reg kCallerSaved[] = {x86::RAX, x86::RCX, x86::RDX, x86::RSI, x86::RDI,
                                     x86::R8,  x86::R9,  x86::R10, x86::R11};
constexpr x86::Reg kCalleeSaved[] = {x86::RBX, x86::RBP, x86::R12, x86::R13, x86::R14, x86::R15};
constexpr int32_t kCallerSavedBytes = 8 * std::size(kCallerSaved);
constexpr int32_t kCalleeSavedBytes = 8 * std::size(kCalleeSaved);

void push_caller_saved(x86::CodeWriter &w) {
  for (x86::Reg r : kCallerSaved) w.put_push_reg(r);
}
void pop_caller_saved(x86::CodeWriter &w) {
  for (size_t i = std::size(kCallerSaved); i-- > 0;) w.put_pop_reg(kCallerSaved[i]);
}
void push_callee_saved(x86::CodeWriter &w) {
  for (x86::Reg r : kCalleeSaved) w.put_push_reg(r);
}
void pop_callee_saved(x86::CodeWriter &w) {
  for (size_t i = std::size(kCalleeSaved); i-- > 0;) w.put_pop_reg(kCalleeSaved[i]);
}

// Sanitizer runtimes behind dispatch's instrumentation use vector registers, so in those builds
// every hit saves the vector state.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kDispatchIsGprOnly = false;
#else
constexpr bool kDispatchIsGprOnly = true;
#endif

// The two landings of a function-entry trampoline (arch.h, return probes): the return addresses of
// its two `call window`s.
struct Landings {
  x86::Label full, counted;
};

// dispatch(regs, probe, vector_saved, landing, landing_counted)
void put_call_dispatch(x86::CodeWriter &w, const Probe *probe, bool vector_saved,
                       Landings &landings) {
  w.put_mov_reg_reg(x86::RDI, x86::RBX);
  w.put_mov_reg_imm64(x86::RSI, reinterpret_cast<uint64_t>(probe));
  if (vector_saved)
    w.put_mov_reg32_imm32(x86::RDX, 1);
  else
    w.put_xor_reg32_reg32(x86::RDX, x86::RDX);
  w.put_mov_reg_address(x86::RCX, landings.full);
  w.put_mov_reg_address(x86::R8, landings.counted);
  w.put_call(reinterpret_cast<uint64_t>(&usprobe_dispatch), x86::RAX);
}

// %fs-relative offset of t_thread.counter_path.base (core/thread_record.h), the same in every
// thread: initial-exec TLS lies in the static TLS block, at a fixed distance below the thread
// pointer. nullopt when it is farther than a disp32 reaches (the trampolines then have no counter
// path).
std::optional<int32_t> counter_base_offset() {
  uint64_t tp;
  asm("mov %%fs:0,%0" : "=r"(tp));  // the TCB's self pointer: the thread pointer
  const int64_t off =
      static_cast<int64_t>(reinterpret_cast<uint64_t>(&t_thread.counter_path.base) - tp);
  if (off < INT32_MIN || off > INT32_MAX) return std::nullopt;
  return static_cast<int32_t>(off);
}

// The map of a counter window, kept for the process's life: one per distinct map (the maps of
// trampolines written from one template are the same).
std::span<const std::pair<uint32_t, uint32_t>> kept_map(
    std::vector<std::pair<uint32_t, uint32_t>> map) {
  static std::mutex mutex;
  static auto *kept = new std::vector<std::unique_ptr<std::vector<std::pair<uint32_t, uint32_t>>>>;
  std::lock_guard lock(mutex);
  for (const auto &m : *kept)
    if (*m == map) return *m;
  kept->push_back(std::make_unique<std::vector<std::pair<uint32_t, uint32_t>>>(std::move(map)));
  return *kept->back();
}

// Notes a counter window (arch.h, CounterWindow) in `window` as its instructions are written:
// next() before each, end() after the increment.
class CounterWindowWriter {
 public:
  CounterWindowWriter(x86::CodeWriter &w, CounterWindow &window)
      : w_(w), window_(window), start_(w.size()) {
    window_.start = w.pc();
  }
  void next() { map_.emplace_back(static_cast<uint32_t>(w_.size() - start_), 0); }
  void end() {
    window_.length = static_cast<uint32_t>(w_.size() - start_);
    window_.map = kept_map(std::move(map_));
  }

 private:
  x86::CodeWriter &w_;
  CounterWindow &window_;
  size_t start_;
  std::vector<std::pair<uint32_t, uint32_t>> map_;
};

// The counter path, first in a function-entry trampoline (core/thread_record.h says what the two
// words hold). It counts a probe whose only consumer is one built-in entry counter, saving nothing
// but %r11, in the slot below %rsp (at a function's entry nothing lives below %rsp, and signal
// frames skip the red zone); %r11 is free by the ABI, but callers built with -fipa-ra may keep a
// value in it across a call to a function that leaves it alone:
//
//     mov %r11,-8(%rsp)
//   counter window:
//     movabs $&probe->counter_word,%r11
//     mov (%r11),%r11
//     add %fs:t_thread.counter_path.base,%r11  carries when both words are set
//     jnc full
//     incq kCounterBias(%r11)           this thread's hits of the slot
//   (end of the window)
//     mov -8(%rsp),%r11
//     jmp window                        the relocated instructions
//   full:
//     mov -8(%rsp),%r11
//
// A thread stopped inside the counter window when the probe's slot goes is sent back to its start
// (SitePlan::counter_windows[0]), where it reads the word again.
void emit_counter_path(x86::CodeWriter &w, const Probe *probe, int32_t base_offset, SitePlan &plan,
                       x86::Label &window, x86::Label &full) {
  w.put_mov_mem_reg(x86::RSP, -8, x86::R11);
  CounterWindowWriter cw(w, plan.counter_windows[0]);
  cw.next();
  w.put_mov_reg_imm64(x86::R11, reinterpret_cast<uint64_t>(&probe->counter_word));
  cw.next();
  w.put_mov_reg_mem(x86::R11, x86::R11, 0);
  cw.next();
  w.put_add_reg_fs_abs(x86::R11, base_offset);
  cw.next();
  w.put_jcc(x86::kAboveOrEqual, full);  // no carry
  cw.next();
  w.put_incq_mem(x86::R11, static_cast<int32_t>(kCounterBias));
  cw.end();
  w.put_mov_reg_mem(x86::R11, x86::RSP, -8);
  w.put_jmp(window);
}

// %fs-relative offsets of t_thread.record and t_thread.returns (core/thread_record.h), as
// counter_base_offset's.
std::optional<int32_t> tls_offset(const void *p) {
  uint64_t tp;
  asm("mov %%fs:0,%0" : "=r"(tp));
  const int64_t off = static_cast<int64_t>(reinterpret_cast<uint64_t>(p) - tp);
  if (off < INT32_MIN || off > INT32_MAX) return std::nullopt;
  return static_cast<int32_t>(off);
}
std::optional<int32_t> record_offset() {
  return tls_offset(&t_thread.record);
}
std::optional<int32_t> returns_offset() {
  return tls_offset(&t_thread.returns);
}

// Fields of ThreadReturns, from t_thread.returns.
constexpr int32_t kDepth = offsetof(ThreadReturns, depth);
// return_top and depth, one word (thread_record.h): below return_depth outside handlers with room.
constexpr int32_t kTopAndDepth = offsetof(ThreadReturns, return_top);
static_assert(offsetof(ThreadReturns, depth) == offsetof(ThreadReturns, return_top) + 4 &&
              sizeof(ThreadReturns::return_depth) == 8);
constexpr int32_t kInstances = offsetof(ThreadReturns, returns);
constexpr int32_t kReturnDepth = offsetof(ThreadReturns, return_depth);
constexpr int32_t kStackKey = offsetof(ThreadReturns, stack_key);
static_assert(sizeof(ReturnInstance) < INT32_MAX);

// A landing of the return counter path is followed, at this distance, by its site's address
// (landing_entry_ip): an instance that path wrote keeps no entry_ip of its own.
constexpr int32_t kLandingEntryIp = 16;

// The return counter path, first in a function-entry trampoline whose probe was made for it
// (Probe::return_path), for a probe whose only consumer is one built-in counter that is a return
// probe (Probe::return_word). What entry_counters and return_counters (core/dispatch.cc) do for
// it, calling nothing, with %r11, %rcx and %rdx kept below %rsp, where nothing lives at a
// function's entry, nor at a return. The thread's return stack is its t_thread.returns
// (ThreadReturns), reached at %fs-relative offsets:
//
//     mov %r11,-8(%rsp)                     (written by the caller)
//   window 0:
//     %r11 = probe->return_word + base; if no carry goto fast   no such consumer, or no home here
//     save %rcx %rdx
//     %rcx = t_thread.returns.return_top|depth                restart: stub A
//     if (%rcx >= t_thread.returns.return_depth) goto restore inside a handler, or no room: one
//     compare t_thread.returns.depth = 1                              the recursion guard, as
//     handler_section's:
//                                                      a signal handler's hits count as missed
//     incq kCounterBias(%r11)                          restart: stub B; the slot's hits
//   (end of window 0)
//     inst = &t_thread.returns.returns[top]: array_id = %r11 (the sum: never a ConsumerArray's id),
//       return_address, sp, stack_key, landing, probe (sessions, entry_ip: core/dispatch.cc
//       completes them from array_id and the landing where it needs them)
//     t_thread.returns.return_top|depth = top + 1             one store (the word's), the guard off
//     restore; lea 8(%rsp),%rsp; call window           as the other returns taken (emit_epilogue)
//   landing:                                   the function returned: %rax, %rdx hold its result
//     jmp return_code.counter_return             shared (emit_counter_return):
//       lea -8(%rsp),%rsp; save %rsi %rdi %r11 below it
//       if (t_thread.returns.return_top|depth - 1 >= return_depth) goto back      one compare
//       inst = &returns[top - 1]; if (inst->sp != %rsp) goto back          not this call's
//       t_thread.returns.depth = 1
//     return window:
//       if (inst->probe->return_word + base != inst->array_id) goto unguard  detached since
//       incq returns (of the sum)
//       the original return address into (%rsp); t_thread.returns.return_top|depth = top - 1 (one
//       store) restore; ret                             predicted: the caller's own return
//     back: restore; lea 8(%rsp),%rsp; jmp return_code.counted   the C++ return path does the rest
//   .quad site                                 at landing + kLandingEntryIp
//   window 1 (stubs A and B: where a thread stopped in window 0 after its saves restarts when the
//   word's slot goes):
//     A: %r11 = probe->return_word + base; if no carry goto restore; jmp (the return_top load)
//     B: %r11 = probe->return_word + base; if no carry goto unguard; jmp (the incq)
//
// With the timer's path (Probe::return_path), the word is the timer's, %rax is saved too, the
// instance gets its session (the timer consumer's slot) and entry_ip, the entry ends keeping rdtsc
// in the session, and the landing jumps to return_code.timer_return (emit_timer_return). With the
// external return counter's, the word is Probe::external_return_word, the entry counts nothing
// (no window, no stubs: nothing to restart) and the landing jumps to
// return_code.external_counter_return, which counts the return at the word's counter.
void emit_return_counter_path(x86::CodeWriter &w, const Probe *probe, int32_t base_offset,
                              int32_t returns, uint64_t site, const ReturnCode &return_code,
                              SitePlan &plan, x86::Label &window) {
  using namespace x86;
  Label restore, unguard, landing, fast, check, inc, stub_a, stub_b;
  const auto bias = static_cast<int32_t>(kCounterBias);
  const bool timer = probe->return_path == Probe::kReturnTimerPath;
  const bool external = probe->return_path == Probe::kReturnExternalCounterPath;
  const auto word = reinterpret_cast<uint64_t>(timer      ? &probe->timer_word
                                               : external ? &probe->external_return_word
                                                          : &probe->return_word);
  // Window 0's instructions: (offset from its start, restart 0 / stub A / stub B).
  enum Restart : uint8_t { kStart, kStubA, kStubB };
  const uint64_t start = w.pc();
  std::vector<std::pair<uint32_t, Restart>> marks;
  auto mark = [&](Restart r) { marks.emplace_back(static_cast<uint32_t>(w.pc() - start), r); };
  constexpr int32_t kRcx = -16, kRdx = -24, kRax = -32;
  mark(kStart), w.put_mov_reg_imm64(R11, word);
  mark(kStart), w.put_mov_reg_mem(R11, R11, 0);
  mark(kStart), w.put_add_reg_fs_abs(R11, base_offset);
  mark(kStart), w.put_jcc(kAboveOrEqual, fast);
  mark(kStart), w.put_mov_mem_reg(RSP, kRcx, RCX);
  mark(kStart), w.put_mov_mem_reg(RSP, kRdx, RDX);
  if (timer) mark(kStart), w.put_mov_mem_reg(RSP, kRax, RAX);
  w.bind(check);
  mark(kStubA), w.put_mov_reg_fs_abs(RCX, returns + kTopAndDepth);
  mark(kStubA), w.put_cmp_reg_fs_abs(RCX, returns + kReturnDepth);
  mark(kStubA), w.put_jcc(kAboveOrEqual, restore);  // inside a handler, or no room
  mark(kStubA), w.put_movl_fs_abs_imm32(returns + kDepth, 1);
  w.bind(inc);
  if (!external) mark(kStubB), w.put_incq_mem(R11, bias);
  const auto length = static_cast<uint32_t>(w.pc() - start);
  // The instance (%rdx), complete before return_top counts it: a signal handler's readers see it
  // whole.
  w.put_imul_reg_reg_imm32(RDX, RCX, static_cast<int32_t>(sizeof(ReturnInstance)));
  w.put_add_reg_fs_abs(RDX, returns + kInstances);
  w.put_mov_mem_reg(RDX, offsetof(ReturnInstance, array_id), R11);
  w.put_mov_reg_mem(R11, RSP, 0);
  w.put_mov_mem_reg(RDX, offsetof(ReturnInstance, return_address), R11);
  w.put_mov_mem_reg(RDX, offsetof(ReturnInstance, sp), RSP);
  w.put_mov_reg_fs_abs(R11, returns + kStackKey);
  w.put_mov_mem_reg(RDX, offsetof(ReturnInstance, stack_key), R11);
  w.put_lea_reg_rip(R11, landing);
  w.put_mov_mem_reg(RDX, offsetof(ReturnInstance, landing), R11);
  w.put_mov_reg_imm64(R11, reinterpret_cast<uint64_t>(probe));
  w.put_mov_mem_reg(RDX, offsetof(ReturnInstance, probe), R11);
  if (timer) {  // the consumer's slot, the word's field; the site
    static_assert(offsetof(ReturnSession, skip) == offsetof(ReturnSession, slot) + 4);
    constexpr int32_t kSession = offsetof(ReturnInstance, session) + offsetof(ReturnSession, slot);
    w.put_mov_reg_mem(R11, R11, offsetof(Probe, timer_session));
    w.put_mov_mem_reg(RDX, kSession, R11);
    w.put_movl_mem_imm32(RDX, offsetof(ReturnInstance, sessions), 1);
    w.put_mov_reg_imm64(R11, site);
    w.put_mov_mem_reg(RDX, offsetof(ReturnInstance, entry_ip), R11);
  }
  // return_top + 1 and depth 0 in one store: the next 64-bit load of the word (this call's return,
  // the next entry) is then forwarded from it, where two 32-bit stores would stall it.
  w.put_add_reg_imm32(RCX, 1);
  w.put_mov_fs_abs_reg(returns + kTopAndDepth, RCX);
  if (timer) {
    // The time, last: the engine's own work is not the call's. In session word 0, where
    // time_return (core/dispatch.cc) and the timer's return handler read it.
    w.put_mov_reg_reg(RCX, RDX);
    w.put_rdtsc();
    w.put_shl_reg_imm8(RDX, 32);
    w.put_or_reg_reg(RAX, RDX);
    w.put_mov_mem_reg(RCX, offsetof(ReturnInstance, session) + offsetof(ReturnSession, data), RAX);
    w.put_mov_reg_mem(RAX, RSP, kRax);
  }
  w.put_mov_reg_mem(RCX, RSP, kRcx);
  w.put_mov_reg_mem(RDX, RSP, kRdx);
  w.put_mov_reg_mem(R11, RSP, -8);
  w.put_lea_rsp_rsp(8);  // the original return address: the instance keeps it
  w.put_call(window);

  // The return: the shared return code (return_code_made) counts it. The site follows at
  // kLandingEntryIp, after the jump (14 bytes at most) and int3 padding.
  w.bind(landing);
  const uint64_t landed = w.pc();
  w.put_jmp(timer      ? return_code.timer_return
            : external ? return_code.external_counter_return
                       : return_code.counter_return);
  while (w.pc() < landed + kLandingEntryIp) w.put_u8(0xCC);
  w.put_data_u64(site);

  if (!external) {
    // Window 1: the stubs, each restarting at its own start.
    const uint64_t stubs = w.pc();
    std::vector<std::pair<uint32_t, uint32_t>> stub_map;
    auto stub_mark = [&](uint64_t restart) {
      stub_map.emplace_back(static_cast<uint32_t>(w.pc() - stubs),
                            static_cast<uint32_t>(restart - stubs));
    };
    uint64_t stub_at[2];
    for (Label *stub : {&stub_a, &stub_b}) {
      w.bind(*stub);
      const uint64_t at = stub_at[stub == &stub_b] = w.pc();
      stub_mark(at), w.put_mov_reg_imm64(R11, word);
      stub_mark(at), w.put_mov_reg_mem(R11, R11, 0);
      stub_mark(at), w.put_add_reg_fs_abs(R11, base_offset);
      stub_mark(at), w.put_jcc(kAboveOrEqual, stub == &stub_a ? restore : unguard);
      stub_mark(at), w.put_jmp(stub == &stub_a ? check : inc);
    }
    plan.counter_windows[1] = {stubs, static_cast<uint32_t>(w.pc() - stubs), kept_map(stub_map)};
    std::vector<std::pair<uint32_t, uint32_t>> map;
    for (const auto &[off, r] : marks)
      map.emplace_back(off, r == kStart ? 0 : static_cast<uint32_t>(stub_at[r == kStubB] - start));
    plan.counter_windows[0] = {start, length, kept_map(map)};
  }

  w.bind(unguard);
  w.put_movl_fs_abs_imm32(returns + kDepth, 0);
  w.bind(restore);
  w.put_mov_reg_mem(RCX, RSP, kRcx);
  w.put_mov_reg_mem(RDX, RSP, kRdx);
  if (timer) w.put_mov_reg_mem(RAX, RSP, kRax);
  w.bind(fast);
  w.put_mov_reg_mem(R11, RSP, -8);
}

// Everything up to the window, which follows at w.pc().
//
//   save GPRs and flags (the Regs view); %rbx = Regs*; align the stack
//   if (!probe->wants_vector_state)             fast path: the built-in counter needs no
//     r = dispatch(regs, probe, 0, landing)     vector state (dispatch is GPR-only)
//     if (r != needs vector state) goto restore
//   save vector state; r = dispatch(regs, probe, 1, landing); restore vector state
// restore:
//   restore GPRs (and flags)
//
// At a function entry, when dispatch took a return probe for this call (r = kDispatchReturnProbe,
// kept in the Regs view's flags slot, dead there), the function is called rather than jumped to:
//
//     lea 8(%rsp),%rsp             drop the return address (dispatch kept it in the instance)
//     call window                  the function runs; its `ret` comes back to the landing
//   landing:
//     jmp return_code              the shared return code (make_return_trampoline) runs the
//                                  return probes and `ret`s to the original return address
//
// Both returns are then predicted by the CPU's return stack: the function's comes back to the
// `call` that made it, and the return code's `ret` pops the caller's own entry. (Writing another
// address over the return address instead costs a mispredicted `ret` on every return, about as
// much as the rest of the return probe.)
void emit_prologue_and_epilogue(x86::CodeWriter &w, uint64_t site, const Probe *probe, bool entry,
                                const ReturnCode &return_code, SitePlan &plan, x86::Label &window) {
  Landings landings;
  x86::Label full, tail;
  static const std::optional<int32_t> base_offset = counter_base_offset();
  static const std::optional<int32_t> returns = returns_offset();
  if (entry && base_offset && returns) {
    // A probe made for a return path has it instead of the counter path: its consumers are return
    // probes (a later entry-only counter goes through dispatch).
    if (probe->return_path != Probe::kNoReturnPath && return_code.counter_return &&
        return_code.timer_return && return_code.external_counter_return) {
      w.put_mov_mem_reg(x86::RSP, -8, x86::R11);
      emit_return_counter_path(w, probe, *base_offset, *returns, site, return_code, plan, window);
    } else {
      x86::Label not_counted;
      emit_counter_path(w, probe, *base_offset, plan, window, not_counted);
      w.bind(not_counted);
      w.put_mov_reg_mem(x86::R11, x86::RSP, -8);
    }
  }
  if (entry) {
    // Flags are dead at a function entry (usprobe_hit_flags says so): their slot is only made
    // room for, and later holds dispatch's result. pushfq costs more than a store.
    w.put_lea_rsp_rsp(-kRedZone - 8);
  } else {
    w.put_lea_rsp_rsp(-kRedZone);
    w.put_pushfq();
  }
  push_caller_saved(w);
  // The result's slot (the flags' in the Regs view), above the caller-saved registers.
  constexpr int32_t kResultSlot = kCallerSavedBytes;
  if (entry && kDispatchIsGprOnly) {
    // The fast path, for probes with built-in counters, or entry handlers that read no register
    // (Probe::no_entry_handlers): no more
    // of a Regs view than the caller-saved registers just pushed, which is all usprobe_entry_fast
    // can change (it keeps the others and calls nothing). The call is aligned: red zone, result
    // slot and nine registers.
    //
    //     if (!probe->no_entry_handlers) goto full
    //     r = usprobe_entry_fast(probe, site rsp, site, landing_counted, landing)
    //     if (r == kDispatchFull) goto full          nothing done; the saved registers are intact
    //     mov r,result; pop %r11 .. %rax; jmp tail
    //   full: <the rest of the Regs view, dispatch, ...; then tail>
    w.put_mov_reg_imm64(x86::RAX, reinterpret_cast<uint64_t>(&probe->no_entry_handlers));
    w.put_cmpb_mem_imm8(x86::RAX, 0, 0);
    w.put_jcc(x86::kEqual, full);
    w.put_mov_reg_imm64(x86::RDI, reinterpret_cast<uint64_t>(probe));
    w.put_lea_reg_rsp(x86::RSI, kCallerSavedBytes + kRedZone + 8);
    w.put_mov_reg_imm64(x86::RDX, site);
    w.put_mov_reg_address(x86::RCX, landings.counted);
    w.put_mov_reg_address(x86::R8, landings.full);
    w.put_call(reinterpret_cast<uint64_t>(&usprobe_entry_fast), x86::RAX);
    w.put_cmp_reg32_imm8(x86::RAX, kDispatchFull);
    w.put_jcc(x86::kEqual, full);
    w.put_mov_mem_reg(x86::RSP, kResultSlot, x86::RAX);
    pop_caller_saved(w);
    w.put_jmp(tail);
    w.bind(full);
  }
  push_callee_saved(w);
  // The site's %rsp: above the registers, the flags slot and the red zone.
  w.put_lea_reg_rsp(x86::RAX, kCalleeSavedBytes + kCallerSavedBytes + 8 + kRedZone);
  w.put_push_reg(x86::RAX);
  w.put_mov_reg_imm64(x86::RAX, site);
  w.put_push_reg(x86::RAX);
  w.put_mov_reg_reg(x86::RBX, x86::RSP);  // %rbx = Regs*, callee-saved across the calls
  if (!entry) w.put_cld();                // the ABI wants DF clear at a call; popfq restores it
  w.put_and_rsp_imm8(-16);

  x86::Label save, restore;
  if (kDispatchIsGprOnly) {
    w.put_mov_reg_imm64(x86::RAX, reinterpret_cast<uint64_t>(&probe->wants_vector_state));
    w.put_cmpb_mem_imm8(x86::RAX, 0, 0);
    w.put_jcc(x86::kNotEqual, save);
    put_call_dispatch(w, probe, false, landings);
    w.put_cmp_reg32_imm8(x86::RAX, kDispatchNeedsVectorSave);
    w.put_jcc(x86::kNotEqual, restore);
    w.bind(save);
  }

  // The saving path.
  const VecWidth vw = argument_width();
  if (entry) {
    w.put_lea_rsp_rsp(-static_cast<int32_t>(8 * width_bytes(vw)));
    w.put_and_rsp_imm8(-64);
    for (int n = 0; n < 8; ++n) put_vec_move(w, vw, n, true);
  } else {
    put_xsave(w);
  }
  put_call_dispatch(w, probe, true, landings);
  if (entry) {
    for (int n = 0; n < 8; ++n) put_vec_move(w, vw, n, false);
  } else {
    put_xrstor(w);
  }

  if (kDispatchIsGprOnly) w.bind(restore);
  if (entry) w.put_mov_mem_reg(x86::RBX, offsetof(Regs, rflags), x86::RAX);  // the result
  w.put_mov_reg_reg(x86::RSP, x86::RBX);
  w.put_lea_rsp_rsp(16);  // the site and %rsp slots: handlers cannot move them
  pop_callee_saved(w);
  pop_caller_saved(w);
  if (!entry) {
    w.put_popfq();
    w.put_lea_rsp_rsp(kRedZone);
    return;
  }
  // Flags are dead at a function entry (popfq costs ~20 cycles): the slot holds dispatch's result.
  w.bind(tail);
  static_assert(kDispatchDone < kDispatchReturnProbe &&
                kDispatchReturnCounted > kDispatchReturnProbe);
  w.put_cmpq_mem_imm8(x86::RSP, 0, kDispatchReturnProbe);
  w.put_lea_rsp_rsp(8 + kRedZone);
  w.put_jcc(x86::kBelow, window);  // no return taken
  x86::Label counted;
  w.put_jcc(x86::kNotEqual, counted);  // kDispatchReturnCounted
  // Each landing is the return address of its own `call window`, and jumps to its return code.
  auto put_call_window = [&](uint64_t code, x86::Label &landing) {
    w.put_lea_rsp_rsp(8);  // the original return address: dispatch keeps it in the instance
    w.put_call(window);
    w.bind(landing);
    w.put_jmp(code);
  };
  put_call_window(return_code.full, landings.full);
  w.bind(counted);
  put_call_window(return_code.counted, landings.counted);
}

// The code before a function entry's window is the same for every function entry of the process
// but for the addresses in it: the probe's fields, the site, the trampoline's own landings (each a
// 64-bit immediate), and the rel32s of its calls and jumps to code outside it. So the first one is
// written out with the writer noting those places (x86::WrittenAddresses), and later ones copy it
// and write their own addresses there. A libc:* batch writes 3,656 of them: about 5,600
// instructions each written out, 770 copied (callgrind). A copy is only made where every choice
// between a rel32 and an absolute form comes out as it did for the template; otherwise the code is
// written out.
class EntryTemplate {
 public:
  // Writes `w`'s code up to the window (empty so far) from the template, and the counter window's
  // part of `plan`; false (nothing written) where the template does not hold there.
  bool copy(x86::CodeWriter &w, uint64_t site, const Probe *probe, const ReturnCode &return_code,
            SitePlan &plan) const {
    if (code_.empty() || return_code.full != return_code_.full ||
        return_code.counted != return_code_.counted || probe->return_path != return_path_ ||
        w.size() != 0)
      return false;
    for (const auto &c : written_.choices)
      if (x86::CodeWriter::fits_rel32(w.base() + c.next, c.target) != c.rel32) return false;
    w.put_bytes(code_.data(), code_.size());
    for (const Address &a : addresses_) {
      const uint64_t v = a.kind == kProbe  ? reinterpret_cast<uint64_t>(probe) + a.offset
                         : a.kind == kSite ? site
                                           : w.base() + a.offset;
      w.patch_u64(a.at, v);
    }
    for (const auto &r : written_.rel32)
      w.patch_u32(r.at, static_cast<uint32_t>(r.target - (w.base() + r.at + 4)));
    plan.counter_windows = counter_windows_;
    for (CounterWindow &cw : plan.counter_windows)
      if (cw.length) cw.start += w.base();
    return true;
  }
  // Writes `w`'s code up to the window afresh, and keeps it as the template.
  void write(x86::CodeWriter &w, uint64_t site, const Probe *probe, const ReturnCode &return_code,
             SitePlan &plan);

 private:
  enum Kind : uint8_t { kProbe, kSite, kTrampoline };
  struct Address {
    uint32_t at;
    Kind kind;
    uint64_t offset;  // from the probe's address, or the trampoline's
  };
  std::vector<uint8_t> code_;
  ReturnCode return_code_;
  x86::WrittenAddresses written_;
  std::vector<Address> addresses_;  // the 64-bit immediates that change; the others are constants
  std::array<CounterWindow, 2> counter_windows_;  // starts from the trampoline's start
  uint8_t return_path_ = Probe::kNoReturnPath;    // the return path's kind (Probe::return_path)
};

void EntryTemplate::write(x86::CodeWriter &w, uint64_t site, const Probe *probe,
                          const ReturnCode &return_code, SitePlan &plan) {
  x86::WrittenAddresses written;
  w.record(&written);
  x86::Label window;
  emit_prologue_and_epilogue(w, site, probe, true, return_code, plan, window);
  w.bind(window);
  w.record(nullptr);
  code_ = w.bytes();
  return_code_ = return_code;
  return_path_ = probe->return_path;
  addresses_.clear();
  const uint64_t p = reinterpret_cast<uint64_t>(probe);
  for (uint32_t at : written.imm64) {
    uint64_t v;
    std::memcpy(&v, code_.data() + at, sizeof v);
    // A probe's field, the site, a place in this trampoline; anything else (code outside it, the
    // return code) is the same for every trampoline.
    if (v >= p && v < p + sizeof(Probe))
      addresses_.push_back({at, kProbe, v - p});
    else if (v == site)
      addresses_.push_back({at, kSite, 0});
    else if (v >= w.base() && v <= w.pc())
      addresses_.push_back({at, kTrampoline, v - w.base()});
  }
  written_ = std::move(written);
  counter_windows_ = plan.counter_windows;
  for (CounterWindow &cw : counter_windows_)
    if (cw.length) cw.start -= w.base();
}

std::mutex g_entry_template_mutex;
// Never destroyed: an attach may run from an exit handler, after static destructors.
EntryTemplate *g_entry_template = new EntryTemplate;

// The code up to the window: a function entry's from the template where it holds.
void write_prologue(x86::CodeWriter &w, uint64_t site, const Probe *probe, bool entry,
                    const ReturnCode &return_code, SitePlan &plan) {
  if (!entry) {
    x86::Label window;
    emit_prologue_and_epilogue(w, site, probe, false, return_code, plan, window);
    w.bind(window);
    return;
  }
  std::lock_guard lock(g_entry_template_mutex);
  if (!g_entry_template->copy(w, site, probe, return_code, plan))
    g_entry_template->write(w, site, probe, return_code, plan);
}

// Whether a window of `len` bytes at `off` may run past the function's end into the padding that
// follows it (SiteRequest::after, which never reaches into the next function): the function's
// last instruction must never fall through (ret, jmp, ud2), so nothing runs the bytes after it,
// and those the window covers must be whole padding instructions (nops, int3), which nothing
// branches to (the file's branch targets are checked against the whole window as usual). Such
// windows are common where a USDT site's nop ends a function: `call f; nop; pop %rbp; ret`.
// Returns "" when it may, else why not.
std::string padding_refusal(const SiteRequest &req, const x86::FunctionScan &scan, uint64_t off,
                            size_t len) {
  const size_t size = req.function.size();
  if (scan.boundaries.empty()) return "a 5-byte window would run past the function's end";
  const uint32_t last = scan.boundaries.back();  // the function's last instruction
  if (x86::falls_through(req.function.subspan(last)))
    return "a 5-byte window would run past the function's end";
  size_t at = 0;  // into `after`
  while (size + at < off + len) {
    const size_t n = x86::instruction_length(req.after.subspan(at));
    if (n == 0 || at + n > req.after.size() || !x86::is_padding(req.after.subspan(at, n)))
      return "a 5-byte window would run past the function's end, and not into padding";
    at += n;
  }
  return "";
}

// Why the jump path cannot be used at this site, or "" when it can (relocation still decides).
std::string jump_refusal(const SiteRequest &req, const x86::FunctionScan &scan, uint64_t off) {
  if (!req.bounds_known) return "no enclosing function bounds to check a 5-byte window against";
  if (!scan.complete) return "the function does not decode completely";
  if (scan.has_indirect_jump && off != 0)
    return "the function jumps indirectly and the site is not its entry";
  if (off + kJumpLength > req.function.size()) {
    std::string why = padding_refusal(req, scan, off, kJumpLength);
    if (off == 0 && !why.empty())
      return fmt::format(
          "the function is {} bytes, shorter than a 5-byte jump, and not followed by padding",
          req.function.size());
    return why;
  }
  return "";
}

// The first direct branch target (of the function, or of the whole file) strictly inside
// (site, site + len), as an offset from the site; nullopt when none.
std::optional<uint64_t> target_inside(const SiteRequest &req, const x86::FunctionScan &scan,
                                      uint64_t len) {
  std::optional<uint64_t> first;
  auto it = std::upper_bound(scan.branch_targets.begin(), scan.branch_targets.end(), req.site);
  if (it != scan.branch_targets.end() && *it < req.site + len) first = *it - req.site;
  if (req.file_branch_targets) {
    const auto &ft = *req.file_branch_targets;
    auto f = std::upper_bound(ft.begin(), ft.end(), req.site_file_offset);
    if (f != ft.end() && *f < req.site_file_offset + len) {
      const uint64_t d = *f - req.site_file_offset;
      if (!first || d < *first) first = d;
    }
  }
  return first;
}

// Instruction punning (E9Patch, PLDI 2020): a jmp rel32 over an instruction shorter than 5 bytes
// writes the instruction's own bytes only (some prefixes, e9, the displacement's low bytes); the
// displacement's high bytes are the bytes that follow, which stay as they are, so the following
// instruction (and every other instruction start) remains valid for any branch into it. The jump's
// target then lies in a range those borrowed bytes fix: a small stub there jumps on to the
// trampoline. With p prefixes (p < length) the jump is p + 5 bytes long and borrows p + 5 - length
// bytes; p = 0 (the widest range) is tried first.
//
//   length 3, `mov %rdi,%rax` (48 89 f8) followed by `cmp $0x20,%rdx` (48 83 fa 20):
//     p = 0:  e9 LL HH | 48 83        jmp to next + 0x8348HHLL: a 64 KB range 2 GB ahead
//     p = 1:  48 e9 LL | 48 83 fa     rex.W jmp to next + 0xfa8348LL: 256 bytes, 91 MB behind
//     p = 2:  26 48 e9 | 48 83 fa 20  es rex.W jmp to next + 0x20fa8348: one address
constexpr size_t kStubSize = 16;  // jmp rel32, or the 14-byte absolute jmp
constexpr uint8_t kPunPrefixes[3][3] = {{0x48}, {0x26, 0x48}, {0x26, 0x36, 0x48}};

struct Stub {
  uint64_t addr = 0;
  std::vector<uint8_t> code;
};
struct Pun {
  std::vector<uint8_t> patch;  // the instruction's new bytes
  uint32_t footprint = 0;      // written and borrowed bytes
  Stub stub;
};

std::optional<Pun> punned_jump(uint64_t site, std::span<const uint8_t> insn,
                               std::span<const uint8_t> following, uint64_t trampoline,
                               CodeSpace &space, std::string &why) {
  const size_t len = insn.size();
  why = "no byte follows it";
  for (size_t p = 0; p < len; ++p) {
    const size_t borrowed = p + kJumpLength - len, chosen = len - 1 - p;
    if (following.size() < borrowed) {
      why = fmt::format("{} byte(s) follow it in the function, the jump needs {}", following.size(),
                        borrowed);
      break;
    }
    uint32_t high = 0;
    for (size_t i = 0; i < borrowed; ++i) high |= uint32_t{following[i]} << (8 * (chosen + i));
    const uint64_t next = site + p + kJumpLength;
    const uint64_t lo =
        next + static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(high)));
    const uint64_t width = uint64_t{1} << (8 * chosen);
    auto at = space.alloc_within(lo, lo + width, kStubSize);
    if (!at) {
      why = fmt::format("no free memory at the {}-byte range {:#x} its borrowed bytes fix", width,
                        lo);
      continue;
    }
    Pun pun;
    for (size_t i = 0; i < p; ++i) pun.patch.push_back(kPunPrefixes[p - 1][i]);
    pun.patch.push_back(0xE9);
    const uint64_t low = *at - lo;
    for (size_t i = 0; i < chosen; ++i) pun.patch.push_back(static_cast<uint8_t>(low >> (8 * i)));
    // What a thread will decode there: the patch, then the borrowed bytes.
    std::vector<uint8_t> seen = pun.patch;
    seen.insert(seen.end(), following.begin(), following.begin() + borrowed);
    auto j = x86::decode_jump(seen, site);
    if (!j || j->length != p + kJumpLength || j->target != *at) {
      space.free_within(*at, kStubSize);
      why = "the punned bytes do not decode as the jump";
      continue;
    }
    x86::CodeWriter sw(*at);
    sw.reserve(kStubSize);
    sw.put_jmp(trampoline);
    pun.stub.addr = *at;
    pun.stub.code.swap(sw.bytes());
    pun.footprint = static_cast<uint32_t>(p + kJumpLength);
    return pun;
  }
  return std::nullopt;
}

}  // namespace

bool branch_targets(std::span<const uint8_t> code, uint64_t base, std::vector<uint64_t> &out) {
  x86::FunctionScan scan = x86::scan_function(code, base);
  out.insert(out.end(), scan.branch_targets.begin(), scan.branch_targets.end());
  return scan.complete;
}

uint8_t trap_byte() {
  return 0xCC;
}

void release_trampoline(const SitePlan &plan, CodeSpace &space) {
  if (plan.trampoline) space.free_near(plan.trampoline, plan.trampoline_block);
  if (plan.stub) space.free_within(plan.stub, plan.stub_size);
}

namespace {

// The scan of the function a site is in, decoded once for all the sites of that function that are
// prepared one after another (a batch of instruction probes in one function, the sites of a
// function's several probes): the scans of the last few functions are kept, each with a copy of
// the bytes it decoded, and a request finds its function's scan when the address and the bytes
// are the same. Without it, every site re-decoded its whole function (1.4 ms a site in
// __vfscanf_internal's 35 KB).
std::shared_ptr<const x86::FunctionScan> function_scan(std::span<const uint8_t> code,
                                                       uint64_t addr) {
  struct Entry {
    uint64_t addr;
    std::vector<uint8_t> bytes;
    std::shared_ptr<const x86::FunctionScan> scan;
  };
  static constexpr size_t kKept = 8;
  static std::mutex mutex;
  static std::vector<Entry> *kept = new std::vector<Entry>;  // never destroyed: see registry.cc
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t i = 0; i < kept->size(); ++i) {
      Entry &e = (*kept)[i];
      if (e.addr == addr && e.bytes.size() == code.size() &&
          std::memcmp(e.bytes.data(), code.data(), code.size()) == 0) {
        std::rotate(kept->begin(), kept->begin() + static_cast<ptrdiff_t>(i),
                    kept->begin() + static_cast<ptrdiff_t>(i) + 1);  // to the front
        return kept->front().scan;
      }
    }
  }
  auto scan = std::make_shared<const x86::FunctionScan>(x86::scan_function(code, addr));
  std::lock_guard<std::mutex> lock(mutex);
  if (kept->size() == kKept) kept->pop_back();
  kept->insert(kept->begin(), Entry{addr, std::vector<uint8_t>(code.begin(), code.end()), scan});
  return scan;
}

}  // namespace

void forget_trampoline_template() {
  std::lock_guard lock(g_entry_template_mutex);
  *g_entry_template = EntryTemplate();
}

Result<SitePlan> prepare_site(const SiteRequest &req, CodeSpace &space) {
  const uint64_t off = req.site - req.function_addr;
  static const x86::FunctionScan kNoScan;
  // A function's entry, where the whole file was decoded already and this function with it,
  // completely (SiteRequest::complete_ranges): its own branch targets are among the file's, which
  // every window is checked against, its entry is an instruction's start, and at an entry nothing
  // else of the scan matters when the function holds a whole 5-byte window (the padding rules are
  // for shorter ones). That is what this scan says, without decoding the function again.
  static const x86::FunctionScan kKnownEntry{{0}, {}, false, true};
  const bool known_entry =
      req.bounds_known && off == 0 && req.function.size() >= kJumpLength &&
      req.file_branch_targets && req.complete_ranges &&
      std::binary_search(
          req.complete_ranges->begin(), req.complete_ranges->end(),
          std::pair<uint64_t, uint64_t>(req.function_file_offset, req.function.size()));
  std::shared_ptr<const x86::FunctionScan> scanned;
  if (req.bounds_known && !known_entry) scanned = function_scan(req.function, req.function_addr);
  const x86::FunctionScan &scan = known_entry ? kKnownEntry : scanned ? *scanned : kNoScan;
  if (req.bounds_known) {
    bool decoded_past = !scan.boundaries.empty() && scan.boundaries.back() >= off;
    if (!scan.is_boundary(static_cast<uint32_t>(off)) && (scan.complete || decoded_past))
      return fail(EINVAL,
                  fmt::format("{}: offset {:#x} is inside an instruction", req.describe, off));
  }

  SitePlan plan;
  plan.function_entry = req.bounds_known && off == 0;
  std::string refusal = req.force_int3 ? req.force_reason : jump_refusal(req, scan, off);

  ReturnCode return_code;
  if (plan.function_entry) {
    auto r = return_code_made(space);
    if (!r) return std::unexpected(r.error());
    return_code = *r;
  }
  const size_t block = block_size(req.probe);
  auto mem = space.alloc_near(req.site, block);
  if (!mem) return std::unexpected(mem.error());
  // Given back unless the plan is made (nothing has run or can run it yet).
  struct Unused {
    CodeSpace &space;
    uint64_t at;
    size_t size;
    ~Unused() {
      if (at) space.free_near(at, size);
    }
  } unused{space, *mem, block};
  x86::CodeWriter w(*mem);
  w.reserve(block);  // one allocation, not one per doubling
  write_prologue(w, req.site, req.probe, plan.function_entry, return_code, plan);
  const uint64_t window_copy = w.pc();
  std::span<const uint8_t> from_site = req.function.subspan(off);
  // The bytes from the site on that a window may cover (a window is whole instructions over 5
  // bytes, and a punned jump borrows 4 bytes at most after it), then, when the function ends
  // within them, those after it (padding a window may run into, bytes a punned jump may borrow).
  // Not the rest of the function: copied at every site, that made a batch quadratic in the size of
  // a big function.
  constexpr size_t kCodeReach = 64;
  std::vector<uint8_t> code(from_site.begin(),
                            from_site.begin() + std::min(from_site.size(), kCodeReach));
  if (req.bounds_known && from_site.size() <= kCodeReach)
    code.insert(code.end(), req.after.begin(), req.after.end());

  std::optional<x86::Relocation> rel;
  if (refusal.empty()) {
    auto r = x86::relocate(code, req.site, kJumpLength, window_copy);
    if (!r) {
      refusal = r.error().message;
    } else {
      // A branch into the window's interior would land in the middle of the jump.
      for (uint64_t t : scan.branch_targets)
        if (t > req.site && t < req.site + r->consumed) {
          refusal = fmt::format("a branch in the function targets {:#x}, inside the 5-byte window",
                                t - req.function_addr);
          break;
        }
      if (refusal.empty() && req.file_branch_targets) {
        const auto &ft = *req.file_branch_targets;
        auto it = std::upper_bound(ft.begin(), ft.end(), req.site_file_offset);
        if (it != ft.end() && *it < req.site_file_offset + r->consumed)
          refusal = fmt::format(
              "a branch elsewhere in the file targets +{:#x}, inside the 5-byte "
              "window",
              *it - req.site_file_offset);
      }
      if (refusal.empty()) rel = std::move(*r);
    }
  }
  std::vector<uint8_t> patch;
  Stub stub;
  if (rel) {
    plan.path = "jump";
    plan.footprint = static_cast<uint32_t>(rel->consumed);
  } else {
    // The probed instruction alone: what the int3 path relocates, and what a jump that changes no
    // other instruction start relocates too.
    auto r = x86::relocate(from_site, req.site, 1, window_copy);
    if (!r)
      return fail(r.error().code,
                  fmt::format("{}: cannot be probed: {}", req.describe, r.error().message));
    rel = std::move(*r);
    const size_t len = rel->consumed;
    // Any branch may land on the instruction's start, and on every other instruction start: a jump
    // that writes only this instruction's bytes (and reads, unchanged, those after it) keeps every
    // one of them. It needs the instruction's own bounds to be known.
    const bool single =
        !req.force_int3 && req.bounds_known && scan.is_boundary(static_cast<uint32_t>(off));
    if (single && len >= kJumpLength) {
      x86::CodeWriter jw(req.site);
      jw.put_jmp_rel32(w.base());
      patch = jw.bytes();
      plan.path = "jump (one instruction)";
      plan.footprint = static_cast<uint32_t>(len);
    } else if (single) {
      // Punned windows: the instruction alone, and, where the function may be decoded and no
      // branch lands between them, it and the whole instructions after it up to 4 bytes. A longer
      // window writes more of the displacement: the range its stub may lie in grows 256-fold a
      // byte (one address for a 1-byte nop alone, 64 KB for `nop; jmp rel8`). Widest first.
      std::vector<size_t> lengths = {len};
      while (scan.complete && !(scan.has_indirect_jump && off != 0)) {
        const size_t end = lengths.back();
        if (off + end >= req.function.size()) break;
        const size_t n = x86::instruction_length(from_site.subspan(end));
        if (n == 0 || end + n >= kJumpLength || off + end + n > req.function.size() ||
            target_inside(req, scan, end + n))
          break;
        lengths.push_back(end + n);
      }
      std::string why;
      for (size_t i = lengths.size(); i-- > 0;) {
        const size_t written = lengths[i];
        std::optional<x86::Relocation> wr;
        if (written == len) {
          wr = *rel;
        } else if (auto rw = x86::relocate(from_site, req.site, written, window_copy)) {
          wr = std::move(*rw);
        } else {
          continue;  // the shorter windows may still do
        }
        std::vector<uint8_t> following(code.begin() + written, code.end());
        if (auto pun =
                punned_jump(req.site, from_site.first(written), following, w.base(), space, why)) {
          patch = std::move(pun->patch);
          stub = pun->stub;
          plan.borrowed.assign(following.begin(), following.begin() + (pun->footprint - written));
          plan.path = "jump (punned)";
          plan.footprint = pun->footprint;
          rel = std::move(wr);
          break;
        }
      }
      if (patch.empty())
        refusal += fmt::format(
            "; a punned jump over {}: {}",
            lengths.size() > 1 ? fmt::format("{} bytes", lengths.back()) : "the instruction alone",
            why);
    }
    if (patch.empty()) plan.int3_reason = refusal;
  }
  plan.jump = plan.int3_reason.empty();
  if (!plan.jump) plan.path = "int3";

  w.put_bytes(rel->code.data(), rel->code.size());
  if (rel->falls_through) w.put_jmp(req.site + rel->consumed);
  if (w.size() > block) {
    if (stub.addr) space.free_within(stub.addr, kStubSize);
    return fail(E2BIG, fmt::format("{}: trampoline too large ({} bytes)", req.describe, w.size()));
  }
  // Written with the batch's other trampolines before any site is patched (patcher::install).
  space.write_later(w.base(), w.bytes(), block);
  if (stub.addr) space.write_later(stub.addr, stub.code, kStubSize);
  unused.at = 0;

  plan.trampoline = w.base();
  plan.trampoline_size = static_cast<uint32_t>(w.size());
  plan.trampoline_block = static_cast<uint32_t>(block);
  plan.window_copy = window_copy;
  plan.window_map = rel->map;
  plan.stub = stub.addr;
  plan.stub_size = stub.addr ? static_cast<uint32_t>(kStubSize) : 0;
  if (plan.jump && patch.empty()) {
    x86::CodeWriter jw(req.site);
    jw.put_jmp_rel32(plan.trampoline);
    patch = jw.bytes();
  }
  if (!plan.jump) patch.assign(1, trap_byte());
  plan.original.assign(code.begin(), code.begin() + patch.size());
  plan.patch = std::move(patch);
  plan.window_length = static_cast<uint32_t>(rel->consumed);
  return plan;
}

// The return code, shared by every function-entry trampoline: their landings jump here when the
// probed function has returned, with the caller's %rsp and the return registers live; every
// register is kept (callers built with -fipa-ra may rely on more than the ABI promises).
//
// Two entries, one per landing of the trampolines. `counted` first tries the fast path, for returns
// counted by built-in counters only, with no more of a Regs view than the caller-saved registers
// (usprobe_return_fast keeps the others):
//
//   counted:
//     lea -24(%rsp),%rsp           slot for the original return address, a pad (the call below
//     push %rax .. %r11             is aligned), the flags slot (dead at a return)
//     r = usprobe_return_fast(caller's %rsp - 8)     the slot the return address was in
//     if (r == 0) goto rest        nothing done
//     mov r,slot; pop %r11 .. %rax; lea 16(%rsp),%rsp; ret
//   full:
//     lea -24(%rsp),%rsp; push %rax .. %r11
//   rest:
//     push %rbx .. %r15             the rest of the Regs view, the caller's %rsp, rip = 0
//     mov %rsp,%rbx; and $-16,%rsp
//     r = usprobe_return_dispatch(regs, NULL)        GPR-only: counters and GPR-only handlers
//     if (r == needs vector state)
//       save x/y/zmm0-1; r = usprobe_return_dispatch(regs, area); restore them
//     mov r,slot; mov %rbx,%rsp; pop ...
//     lea 16(%rsp),%rsp; ret        to the original return address
// Made once, on the first function-entry trampoline, and kept for the life of the process.
Result<uint64_t> make_return_trampoline(CodeSpace &space) {
  auto r = return_code_made(space);
  if (!r) return std::unexpected(r.error());
  return r->full;
}

namespace {

// Written once, before any return probe is published.
CounterWindow g_counter_return_window, g_external_return_window;

// The start of a return path's shared return, with %rsp lowered onto the slot the landing's
// address was in: where the thread is outside any handler and the newest instance of its return
// stack is this call's (its return address lived at %rsp), %rsi = return_top - 1, %r11 = that
// instance, and the recursion guard set (the return path's one store of return_top and depth
// clears it); else `back`, having written nothing.
void put_this_calls_instance(x86::CodeWriter &w, int32_t returns, x86::Label &back) {
  using namespace x86;
  w.put_mov_reg_fs_abs(RSI, returns + kTopAndDepth);
  w.put_sub_reg_imm8(RSI, 1);
  w.put_cmp_reg_fs_abs(RSI, returns + kReturnDepth);
  w.put_jcc(kAboveOrEqual, back);  // inside a handler, or none
  w.put_imul_reg_reg_imm32(R11, RSI, static_cast<int32_t>(sizeof(ReturnInstance)));
  w.put_add_reg_fs_abs(R11, returns + kInstances);
  w.put_cmp_mem_reg(R11, offsetof(ReturnInstance, sp), RSP);
  w.put_jcc(kNotEqual, back);  // not this call's
  w.put_movl_fs_abs_imm32(returns + kDepth, 1);
}

// The return counter path's return (emit_return_counter_path): the function returned to its
// trampoline's landing, which jumped here. %rax and %rdx hold its result; below %rsp, the slot the
// landing's address was in, which %rsp is lowered onto (the registers kept below it stay in the
// red zone, which signal frames skip). Counts the return at its slot's returns where the newest
// instance is this call's and its probe's return word, added to the thread's base, is still the
// sum its entry kept; else `counted`, the C++ return path, does what is to be done.
uint64_t emit_counter_return(x86::CodeWriter &w, int32_t returns, int32_t base_offset,
                             bool external, x86::Label &counted) {
  using namespace x86;
  // The built-in counter's returns lie kReturns words past its hits; an external return counter's
  // is the word's own counter.
  const auto at = static_cast<int32_t>(kCounterBias + (external ? 0 : sizeof(uint64_t) * kReturns));
  const uint64_t start = w.pc();
  Label back, unguard;
  auto restore = [&] {
    w.put_mov_reg_mem(RSI, RSP, -8);
    w.put_mov_reg_mem(RDI, RSP, -16);
    w.put_mov_reg_mem(R11, RSP, -24);
  };
  w.put_lea_rsp_rsp(-8);
  w.put_mov_mem_reg(RSP, -8, RSI);
  w.put_mov_mem_reg(RSP, -16, RDI);
  w.put_mov_mem_reg(RSP, -24, R11);
  put_this_calls_instance(w, returns, back);
  {
    CounterWindowWriter cw(w, external ? g_external_return_window : g_counter_return_window);
    cw.next();
    w.put_mov_reg_mem(RDI, R11, offsetof(ReturnInstance, probe));
    cw.next();
    w.put_mov_reg_mem(
        RDI, RDI, external ? offsetof(Probe, external_return_word) : offsetof(Probe, return_word));
    cw.next();
    w.put_add_reg_fs_abs(RDI, base_offset);
    cw.next();
    w.put_cmp_mem_reg(R11, offsetof(ReturnInstance, array_id), RDI);
    cw.next();
    w.put_jcc(kNotEqual, unguard);
    cw.next();
    w.put_incq_mem(RDI, at);
    cw.end();
  }
  w.put_mov_reg_mem(R11, R11, offsetof(ReturnInstance, return_address));
  w.put_mov_mem_reg(RSP, 0, R11);
  w.put_mov_fs_abs_reg(returns + kTopAndDepth, RSI);  // popped, depth 0: one store (the entry's)
  restore();
  w.put_ret();  // predicted: the caller's own return
  w.bind(unguard);
  w.put_movl_fs_abs_imm32(returns + kDepth, 0);
  w.bind(back);
  restore();
  w.put_lea_rsp_rsp(8);
  w.put_jmp(counted);
  return start;
}

// The return timer path's return (emit_return_counter_path, a probe whose trampolines have the
// timer's path): what time_return (core/dispatch.cc) does, calling nothing. The clock first (the
// engine's own work is not the call's); then, where the newest instance is this call's and its
// probe's timer word is still the one its entry saw and the thread's home carries its tag, one
// return, the call's duration in nanoseconds, and one in its log-linear bucket, at the home. An
// RCU read section around the counts (not a counter window: three increments cannot restart), as
// the C++ path holds one: the timer's owner detaches, which waits for it, before unmapping them.
// Seven registers below %rsp, %rax and %rdx among them (the result, and rdtsc's).
uint64_t emit_timer_return(x86::CodeWriter &w, int32_t record, int32_t returns, int32_t base_offset,
                           x86::Label &counted) {
  using namespace x86;
  const uint64_t start = w.pc();
  const auto bias = static_cast<int32_t>(kCounterBias);
  constexpr Reg kSaved[] = {RAX, RDX, RCX, RSI, RDI, R8, R11};
  auto save = [&] {
    for (size_t i = 0; i < std::size(kSaved); ++i)
      w.put_mov_mem_reg(RSP, -8 - 8 * static_cast<int32_t>(i), kSaved[i]);
  };
  auto restore = [&] {
    for (size_t i = 0; i < std::size(kSaved); ++i)
      w.put_mov_reg_mem(kSaved[i], RSP, -8 - 8 * static_cast<int32_t>(i));
  };
  Label back, unguard, nested, entered, not_late, small;
  w.put_lea_rsp_rsp(-8);  // onto the landing's slot, as emit_counter_return
  save();
  w.put_rdtsc();
  w.put_shl_reg_imm8(RDX, 32);
  w.put_or_reg_reg(RAX, RDX);  // now
  put_this_calls_instance(w, returns, back);
  // The read section (rcu::ReadGuard): %r8 keeps the word to put back.
  static_assert(offsetof(ThreadRecord, rcu_word) == 0);
  w.put_mov_reg_fs_abs(RCX, record);
  w.put_mov_reg_mem(R8, RCX, 0);
  w.put_test_reg_reg(R8, R8);
  w.put_jcc(kNotEqual, nested);
  w.put_mov_reg_imm64(RDI, reinterpret_cast<uint64_t>(&rcu::g_epoch));
  w.put_mov_reg_mem(RDI, RDI, 0);
  w.put_shl_reg_imm8(RDI, 8);
  w.put_add_reg_imm32(RDI, 1);
  w.put_jmp(entered);
  w.bind(nested);
  w.put_lea_reg_mem(RDI, R8, 1);
  w.bind(entered);
  w.put_mov_mem_reg(RCX, 0, RDI);
  w.put_mov_reg_mem(RDI, R11, offsetof(ReturnInstance, probe));
  w.put_mov_reg_mem(RDX, RDI, offsetof(Probe, timer_word));
  w.put_add_reg_fs_abs(RDX, base_offset);
  w.put_jcc(kAboveOrEqual, unguard);  // no home of the timer's here: %rdx = hits - kCounterBias
  w.put_cmp_mem_reg(R11, offsetof(ReturnInstance, array_id), RDX);
  w.put_jcc(kNotEqual, unguard);  // another consumer or home since the entry
  // ticks = now - entered, 0 where a thread that moved read a clock a few ticks behind
  w.put_sub_reg_mem(RAX, R11, offsetof(ReturnInstance, session) + offsetof(ReturnSession, data));
  w.put_jcc(kAboveOrEqual, not_late);
  w.put_xor_reg32_reg32(RAX, RAX);
  w.bind(not_late);
  w.put_mov_reg_mem(R11, R11, offsetof(ReturnInstance, return_address));
  w.put_mov_mem_reg(RSP, 0, R11);  // into its slot (the C++ path writes it again if it runs)
  w.put_mov_reg_reg(R11, RDX);
  w.put_mul_mem(RDI, offsetof(Probe, timer_mult));
  w.put_shrd_reg_reg_imm8(RAX, RDX, 32);  // ns = ticks * mult >> 32
  w.put_mov_reg_mem(RDX, RDI, offsetof(Probe, timer_returns));
  w.put_incq_sib(R11, RDX, 1, bias);
  w.put_mov_reg_mem(RDX, RDI, offsetof(Probe, timer_sum));
  w.put_add_sib_reg(R11, RDX, bias, RAX);
  // The bucket (base/log_linear.h): ns below 2 << kTimerSubBits is its own; else, its highest bit
  // p, 2^kTimerSubBits * (p - kTimerSubBits + 1) + the kTimerSubBits bits below p.
  static_assert(kTimerSubBits == 3);
  w.put_mov_reg_reg(RDX, RAX);
  w.put_cmp_reg_imm8(RAX, 2 << kTimerSubBits);
  w.put_jcc(kBelow, small);
  w.put_bsr_reg_reg(RCX, RAX);
  w.put_sub_reg_imm8(RCX, kTimerSubBits);
  w.put_shr_reg_cl(RDX);
  w.put_and_reg32_imm8(RDX, (1 << kTimerSubBits) - 1);
  w.put_lea_sib(RDX, RDX, RCX, 1 << kTimerSubBits, 1 << kTimerSubBits);
  w.bind(small);
  w.put_add_reg_mem(R11, RDI, offsetof(Probe, timer_buckets));
  w.put_incq_sib(R11, RDX, 8, bias);
  w.put_mov_reg_fs_abs(RCX, record);
  w.put_mov_mem_reg(RCX, 0, R8);                      // the read section's end
  w.put_mov_fs_abs_reg(returns + kTopAndDepth, RSI);  // popped, depth 0: one store
  restore();
  w.put_ret();  // predicted: the caller's own return
  w.bind(unguard);
  w.put_mov_mem_reg(RCX, 0, R8);
  w.put_movl_fs_abs_imm32(returns + kDepth, 0);
  w.bind(back);
  restore();
  w.put_lea_rsp_rsp(8);
  w.put_jmp(counted);
  return start;
}

}  // namespace

bool return_paths() {
  return kDispatchIsGprOnly && counter_base_offset() && returns_offset() && record_offset();
}

uint64_t landing_entry_ip(uint64_t landing) {
  uint64_t site;
  std::memcpy(&site, reinterpret_cast<const void *>(landing + kLandingEntryIp), sizeof site);
  return site;
}

const CounterWindow *counter_return_window(bool external) {
  const CounterWindow &w = external ? g_external_return_window : g_counter_return_window;
  return w.length ? &w : nullptr;
}

namespace {

Result<ReturnCode> return_code_made(CodeSpace &space) {
  static ReturnCode made;  // callers hold the registry's lock
  if (made.full) return made;
  constexpr size_t kReturnCodeSize = 2048;  // the five entries' code
  auto mem =
      space.alloc_near(reinterpret_cast<uint64_t>(&usprobe_return_dispatch), kReturnCodeSize);
  if (!mem) return std::unexpected(mem.error());
  x86::CodeWriter w(*mem);
  ReturnCode code;
  // Above the caller-saved registers: the flags slot, the pad, the original return address's slot.
  constexpr int32_t kReturnSlot = kCallerSavedBytes + 16;
  x86::Label rest, counted;
  if (kDispatchIsGprOnly) {
    w.bind(counted);
    code.counted = w.pc();
    w.put_lea_rsp_rsp(-24);
    push_caller_saved(w);
    w.put_lea_reg_rsp(x86::RDI, kReturnSlot);  // caller's %rsp - 8
    w.put_call(reinterpret_cast<uint64_t>(&usprobe_return_fast), x86::RAX);
    w.put_test_reg_reg(x86::RAX, x86::RAX);
    w.put_jcc(x86::kEqual, rest);
    w.put_mov_mem_reg(x86::RSP, kReturnSlot, x86::RAX);  // the original return address
    pop_caller_saved(w);
    w.put_lea_rsp_rsp(16);
    w.put_ret();
  }
  static const std::optional<int32_t> record = record_offset();
  static const std::optional<int32_t> returns = returns_offset();
  static const std::optional<int32_t> base_offset = counter_base_offset();
  if (kDispatchIsGprOnly && record && returns && base_offset) {
    code.counter_return = emit_counter_return(w, *returns, *base_offset, false, counted);
    code.external_counter_return = emit_counter_return(w, *returns, *base_offset, true, counted);
    code.timer_return = emit_timer_return(w, *record, *returns, *base_offset, counted);
  }
  code.full = w.pc();
  if (!kDispatchIsGprOnly) code.counted = code.full;
  w.put_lea_rsp_rsp(-24);
  push_caller_saved(w);
  if (kDispatchIsGprOnly) w.bind(rest);
  push_callee_saved(w);
  // The caller's %rsp: above the registers, the flags slot, the pad, the return address's slot.
  w.put_lea_reg_rsp(x86::RAX, kCalleeSavedBytes + kReturnSlot + 8);
  w.put_push_reg(x86::RAX);
  w.put_push_imm8(0);  // Regs::rip
  w.put_mov_reg_reg(x86::RBX, x86::RSP);
  w.put_and_rsp_imm8(-16);
  auto put_call = [&](bool with_area) {
    w.put_mov_reg_reg(x86::RDI, x86::RBX);
    if (with_area)
      w.put_mov_reg_reg(x86::RSI, x86::RSP);
    else
      w.put_xor_reg32_reg32(x86::RSI, x86::RSI);
    w.put_call(reinterpret_cast<uint64_t>(&usprobe_return_dispatch), x86::RAX);
  };
  x86::Label done;
  if (kDispatchIsGprOnly) {
    put_call(false);
    w.put_cmp_reg_imm8(x86::RAX, kDispatchNeedsVectorSave);
    w.put_jcc(x86::kNotEqual, done);
  }
  // The vector return registers, xmm0-1 at their full width (a __m512 comes back in zmm0); the
  // others are dead at a return, as the entry flavour treats all but the argument registers.
  const VecWidth vw = argument_width();
  w.put_lea_rsp_rsp(-static_cast<int32_t>(2 * width_bytes(vw)));
  w.put_and_rsp_imm8(-64);
  for (int n = 0; n < 2; ++n) put_vec_move(w, vw, n, true);
  put_call(true);
  for (int n = 0; n < 2; ++n) put_vec_move(w, vw, n, false);
  if (kDispatchIsGprOnly) w.bind(done);
  // The original return address, into its slot above the Regs view and the pad.
  w.put_mov_mem_reg(x86::RBX, sizeof(Regs) + 8, x86::RAX);
  w.put_mov_reg_reg(x86::RSP, x86::RBX);
  w.put_lea_rsp_rsp(16);
  pop_callee_saved(w);
  pop_caller_saved(w);
  // Skip the flags slot and the pad, and return through the original address's slot: the return
  // stack's top entry is the caller's own (the probed function's `ret` used the landing's), so
  // this `ret` is predicted.
  w.put_lea_rsp_rsp(16);
  w.put_ret();
  if (w.size() > kReturnCodeSize)
    return fail(E2BIG, fmt::format("the shared return code is {} bytes, its block {}", w.size(),
                                   kReturnCodeSize));
  if (auto ok = space.write_now(w.base(), w.bytes()); !ok) return std::unexpected(ok.error());
  made = code;
  return made;
}

}  // namespace
}  // namespace usprobe::arch
