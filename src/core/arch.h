// The one contract between the core and an architecture (implemented in src/arch/<arch>/).
//
// The core speaks in probes, sites and consumers; the architecture speaks in instructions. For a
// site it decides between the jump path and the int3 path, relocates the instructions the patch
// displaces, emits the site's trampoline, says which bytes make the patch, reads a trap, and owns
// the register view of a hit. The architecture and the OS never meet: it takes its code memory
// from the core (CodeSpace, core/code_space.h), and the traps the OS's handler catches through the
// core (take_trap).
#pragma once

#include <signal.h>
#include <ucontext.h>

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"
#include "core/code_space.h"
#include "usprobe/usprobe.h"

namespace usprobe {
struct Probe;
}

namespace usprobe::arch {

// The registers of one hit as the trampoline saved them (layout: arch/<arch>/regs.h).
struct Regs;
uint64_t reg(const Regs &r, usprobe_reg which);
// Where reg(r, which) reads: a word index into the Regs seen as uint64_t words; -1 for a value
// that is no usprobe_reg.
int reg_index(usprobe_reg which);
uint64_t arg(const Regs &r, unsigned n);
void set_arg(Regs &r, unsigned n, uint64_t value);

}  // namespace usprobe::arch

// The accessors every return probe uses twice, inline: arch_inline.h is the chosen
// architecture's, included here, the one place core names an architecture. It defines
//   uint64_t hit_ip(const Regs &r), hit_sp(const Regs &r)   the probed instruction, its %rsp
//   uint64_t *return_address_slot(const Regs &r)  at a function's entry: where its return
//                                                 address is on the stack
//   uint64_t returned_from_sp(const Regs &r)      in the return trampoline's view: where the
//                                                 return address was (the function's entry %rsp)
//   void increment_own_word(uint64_t &w)          w += 1, and add_own_word(w, n): w += n, each
//                                                 one instruction that a signal handler of the
//                                                 same thread cannot split (w: this thread's own)
//   uint64_t timestamp()                          a clock that the cores share, in ticks
#if defined(__x86_64__)
#include "arch/x86_64/arch_inline.h"
#else
#error "usprobe has an architecture for x86-64 only (src/arch/)"
#endif

namespace usprobe::arch {

// The floating-point return value in the vector registers the return trampoline saved.
double return_double(const void *vectors);
// Return probes. A function-entry trampoline has two landings: when dispatch takes the call's
// return (kDispatchReturnProbe, or kDispatchReturnCounted when only built-in counters count it),
// the trampoline drops the return address and calls the function from the matching landing, so
// that the function returns there and goes on to the shared return code. That code (written once,
// on the first function-entry trampoline, and kept for the life of the process) saves the return
// registers (the counted entry first tries usprobe_return_fast with the caller-saved ones only),
// calls usprobe_return_dispatch (core/dispatch.h), restores them and returns to the address
// dispatch returns. make_return_trampoline gives the full entry; `space` gives its memory the first
// time (every call hands the process's one CodeSpace).
Result<uint64_t> make_return_trampoline(CodeSpace &space);

struct SiteRequest {
  uint64_t site = 0;                  // runtime address of the probed instruction
  std::span<const uint8_t> function;  // the enclosing function's original bytes (from the file)
  uint64_t function_addr = 0;         // runtime address of function[0]
  bool bounds_known = false;          // false: `function` is just the bytes from the site on
  const Probe *probe = nullptr;       // passed to dispatch by the trampoline
  std::string describe;               // "libc.so.6:malloc", for messages
  // Direct branch targets anywhere in the file (file offsets, sorted; see branch_targets()), and
  // the site's own file offset: a branch from another function into the window (hand-written
  // assembly does this, e.g. glibc's mempcpy jumping into memcpy) forbids the jump path too.
  const std::vector<uint64_t> *file_branch_targets = nullptr;
  uint64_t site_file_offset = 0;
  // The code ranges (file offset, size), sorted, that file_branch_targets came from and that
  // decoded completely, and the function's own file offset: at the entry of a function listed
  // there with these bounds, the file's targets hold the function's own, and prepare_site need
  // not decode the function again (unless the jump needs more than a plain window).
  const std::vector<std::pair<uint64_t, uint64_t>> *complete_ranges = nullptr;
  uint64_t function_file_offset = 0;
  // The file's bytes right after the function, up to the next function's start (at most 16): a
  // jump at the function's last short instruction may borrow them as its displacement's high
  // bytes (instruction punning), and a window that ends with the function's last instruction
  // (ret, jmp) may run on over the padding there (nops, int3), which nothing executes. Either way
  // no other probe's patch may change them (the registry's overlap check sees the footprint).
  std::span<const uint8_t> after;
  bool force_int3 = false;  // another probe's window is too close for a jump
  std::string force_reason;
};

// Code that loads a probe's counter word and ends with the increment of the counter it names, at
// `start`: `map` has each instruction's offset and where a thread stopped there restarts (an
// offset from `start`: 0, the load, or a stub that loads the word again), which is where a thread
// goes when the word's slot is freed (WindowMove).
// The maps are the same for every trampoline written from one template, and kept for the process's
// life (a plan holds no copy).
struct CounterWindow {
  uint64_t start = 0;
  uint32_t length = 0;  // 0: none
  std::span<const std::pair<uint32_t, uint32_t>> map;
};

// A prepared site: its trampoline is written and executable; nothing at the site is changed yet.
struct SitePlan {
  bool jump = false;        // jump path; false: int3 path
  std::string int3_reason;  // why not the jump path
  // How the site is entered, for reports: "jump", "jump (one instruction)", "jump (punned)",
  // "int3" (int3_reason says why).
  std::string path;
  bool function_entry = false;    // ABI-aware flavour
  std::vector<uint8_t> original;  // the bytes the patch overwrites, as they are in the file
  std::vector<uint8_t> patch;     // the patch: same length; patch[0] is the trap byte
  uint64_t trampoline = 0;        // entry: save, dispatch, restore, window, jump back
  uint32_t trampoline_size = 0;   // bytes from `trampoline` on
  uint32_t trampoline_block = 0;  // bytes of the block it was given (CodeSpace::alloc_near)
  uint64_t window_copy = 0;       // the relocated instructions inside the trampoline
  uint32_t window_length = 0;     // original bytes relocated (whole instructions, >= patch)
  std::vector<std::pair<uint32_t, uint32_t>> window_map;  // (site offset, window_copy offset)
  // Bytes from the site on whose values the patch relies: the written ones and, for a punned jump,
  // the following bytes its displacement borrows (left as they are, so no other probe may change
  // them). At least window_length on the jump path.
  uint32_t footprint = 0;
  // The bytes after `original` that the patch relies on (a punned jump's borrowed bytes), as they
  // are in the file: they must be so in memory too when the patch is written.
  std::vector<uint8_t> borrowed;
  // A function entry's counter windows (core/thread_record.h): the instructions of its counter
  // path, or of its return path's entry and that entry's restart stubs (the return's is shared:
  // counter_return_window()), from the load of a counter word of the probe's to the increment it
  // names; a thread stopped inside one restarts where the window's map says
  // (retire::counter_windows_clear). Length 0 where there is none.
  std::array<CounterWindow, 2> counter_windows;
  // A small piece of code the patch enters first (a punned jump's target must lie in a range its
  // borrowed bytes fix; the stub there jumps on to the trampoline). 0 when none. Released with the
  // trampoline, under the same rules.
  uint64_t stub = 0;
  uint32_t stub_size = 0;
};

// Decide the path, relocate, allocate the trampoline near the site from `space` and write it there
// with the batch (CodeSpace::write_later). Errors: the offset is inside an instruction; the
// instruction cannot be relocated even alone (then no probe can be placed there); no memory within
// reach.
Result<SitePlan> prepare_site(const SiteRequest &req, CodeSpace &space);
// Tests: the next function entry's code is written out afresh (prepare_site copies it from the
// last one written where it can), so that a copy can be compared with it.
void forget_trampoline_template();
// The window of the return counter path's shared return code (arch/x86_64/trampoline.cc), which
// every function-entry trampoline's return counter path returns through, or of its external
// return counter's; null before any.
const CounterWindow *counter_return_window(bool external);
// Whether function-entry trampolines get the return paths their probes were made for
// (Probe::return_path): false in sanitizer builds, whose trampolines have no fast paths.
bool return_paths();
// The probed address whose return counter path's entry took a return with `landing`: an instance
// that path writes keeps no entry_ip (core/dispatch.cc completes it).
uint64_t landing_entry_ip(uint64_t landing);
// Give the plan's trampoline and stub back to the CodeSpace they came from (core/retire.h says
// when no thread can be inside them).
void release_trampoline(const SitePlan &plan, CodeSpace &space);

// Append to `out` the targets of every direct branch in `code`, an instruction stream that starts
// at `base` (any coordinate system: the targets come out in the same one). Returns whether `code`
// decoded completely.
bool branch_targets(std::span<const uint8_t> code, uint64_t base, std::vector<uint64_t> &out);

// A spin-wait hint (x86: pause).
void cpu_relax();

// The byte that makes a trap (x86: 0xCC, int3).
uint8_t trap_byte();

// Trap handling. The SIGTRAP handler is the OS's (core/os.h, install_trap_handler), and the core
// passes each trap it catches to take_trap, which reads what only the architecture knows: whether
// the trap is an int3's, at which site, and where the thread resumes. `redirect(site, pc)`: when
// `site` is a patched site, stores its trampoline's address into *pc (the interrupted context's
// instruction pointer, 8 bytes) and returns true; it is called from the signal handler and must be
// async-signal-safe. It stores inside its read section, so that once a grace period has passed,
// every thread sent to a trampoline has that address in its signal frame, where a retirement check
// sees it (core/retire.cc).
using TrapRedirect = bool (*)(uint64_t site, void *pc);
// True when the trap is usprobe's: an int3 at a site `redirect` knows (uc then resumes at its
// trampoline), or at a site whose int3 is gone (a probe removed while this thread was trapping: uc
// then resumes at the site, to run the original instruction). Async-signal-safe.
bool take_trap(const siginfo_t *info, ucontext_t *uc, TrapRedirect redirect);

// While a patch is half written, move a thread stopped inside a window to the same instruction in
// the window's relocated copy. `windows` lists the sites being patched; called in a signal handler.
struct WindowMove {
  uint64_t site = 0;
  uint32_t length = 0;  // bytes of original instructions the jump replaces
  uint64_t window_copy = 0;
  const std::pair<uint32_t, uint32_t> *map = nullptr;
  size_t map_size = 0;
};
// Returns the interrupted stack pointer.
uint64_t move_out_of_windows(ucontext_t *uc, std::span<const WindowMove> windows);
// The instruction pointer and the stack pointer a signal interrupted.
uint64_t interrupted_pc(const ucontext_t *uc);
uint64_t interrupted_sp(const ucontext_t *uc);
// Scan `stack` (a copy of the memory at stack_addr, above a thread's stack pointer) for signal
// frames whose saved instruction pointer lies strictly inside a window: a thread that will
// sigreturn into the middle of a patch. A frame starts with `signal_return`, the address usprobe's
// signal handlers return through (os::signal_return_address(); none is found when it is 0). Stale
// frames may be reported too; callers must only ever become more careful on a report.
bool signal_frame_in_windows(std::span<const uint8_t> stack, uint64_t stack_addr,
                             std::span<const WindowMove> windows, uint64_t signal_return);
// True when an instruction pointer is not strictly inside any window (a thread there needs no
// move).
bool pc_outside_windows(uint64_t pc, std::span<const WindowMove> windows);

// A signal with a handler that reaches a thread asleep in a wait (nanosleep, poll, select,
// epoll_wait, futex, ...) makes the call fail with EINTR, whatever SA_RESTART says: a thread round
// would make a program see an error that its unprobed run never sees. Both are called from the
// round's signal handler with the interrupted context, which the kernel has already turned into
// the call's EINTR return (the number it was made with is lost by then).
//
// Whether `uc` may be such a return (x86: %rax holds -EINTR, %rcx the pc). The caller then reads
// the code before the pc, as much of the last kWaitCodeBefore bytes as it safely can.
constexpr size_t kWaitCodeBefore = 32;
bool returned_eintr(const ucontext_t *uc);
// Whether system call `nr` only waits (nanosleep, poll, select, epoll_wait, futex and their
// kind): made again with the same arguments, it does what it would have done. For whoever finds
// one that usprobe cut short: the round's handler (restart_wait), the CLI's ptrace interrupt.
bool is_wait_syscall(uint64_t nr);
// When `before` (the bytes up to uc's pc) ends with a system call that the code made with a
// constant number, and that call is a wait, sets uc to make the same call again with the same
// arguments, as the kernel makes it when no handler runs, and returns true. A timeout the call
// does not update in place starts again: the thread waits longer, as it does when it is scheduled
// late, but never returns early.
bool restart_wait(ucontext_t *uc, std::span<const uint8_t> before);
// The same wait's EINTR return, seen by a handler of the program's: that EINTR is the program's
// to see. Sets uc so that it no longer looks like a cut-short wait to returned_eintr (x86: %rcx,
// which the system call wrote, is cleared), and returns true; false when uc is no such return. A
// round's signal delivered as the program's handler returns then leaves the EINTR alone.
bool keep_wait_interrupted(ucontext_t *uc, std::span<const uint8_t> before);

// Stack walks (usprobe_hit_stack, core/stack.h): src/arch/<arch>/stack_walk.cc and
// dwarf_unwind.cc.
//
// Maps a return address read from its stack slot to the one to report: the original where the
// slot holds a pending return's landing, or 0 to end the walk.
using ReturnFixup = uint64_t (*)(const void *ctx, uint64_t slot, uint64_t value);

// The frame pointer of the code that hit the probe.
uint64_t frame_pointer(const Regs &r);

// Follow the frame-pointer chain from `fp`, storing each frame's return address (through `fixup`)
// in ips[0..max); returns how many. Reads memory only inside [lo, hi), at aligned frames that go
// strictly up the stack: a chain broken by code without frame pointers ends the walk, never
// faults. Never allocates, locks or makes a system call.
size_t frame_pointer_walk(uint64_t fp, uint64_t lo, uint64_t hi, uint64_t *ips, size_t max,
                          ReturnFixup fixup, const void *ctx);

// Where a DWARF walk starts: the hit's registers, with the instruction pointer `ip` (the next
// instruction the code runs: looked up as it is, not as a return address) and stack pointer `sp`.
// `entry`: ip is a function's first instruction, whose return address is at sp.
struct WalkStart {
  const Regs *regs;
  uint64_t ip, sp;
  bool entry;
};

// Unwind by the DWARF CFI of each frame's code, storing the callers' return addresses (through
// `fixup`) in ips[0..max); returns how many. Stack reads stay inside [start.sp, hi). Never
// allocates, locks or makes a system call; never faults.
size_t dwarf_walk(const WalkStart &start, uint64_t hi, uint64_t *ips, size_t max, ReturnFixup fixup,
                  const void *ctx);

}  // namespace usprobe::arch
