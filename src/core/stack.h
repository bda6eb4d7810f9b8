// Stack traces for handlers (usprobe_hit_stack): the user stack at a hit, as the return addresses
// of the callers, with the original return address wherever a pending return probe has put its
// trampoline's landing in its place (DESIGN.md, "Return probes").
//
// Two walkers. The frame-pointer walk follows the %rbp chain with no allocation, no lock and no
// system call (but the first one on each thread, which reads /proc/self/maps once to learn the
// bounds of the thread's stack). The DWARF walk asks libunwind, which reads .eh_frame and so sees
// through code built without frame pointers (all of Debian); it falls back on frame pointers where
// no unwind information exists.
//
// libunwind is loaded with dlopen(RTLD_LOCAL), never linked: libunwind.so.8 exports _Unwind_*
// symbols that, linked normally, would take over the C++ runtime's (libgcc_s) for the whole
// process, and libusprobe lives in arbitrary programs (the CLI's agent). load_unwinder() does it,
// outside the hit path (the C API calls it on every attach; only the first one loads). Without
// libunwind (not installed, or built without its header) the DWARF walk is the frame-pointer walk.
#pragma once

#include <ucontext.h>

#include <cstddef>
#include <cstdint>

struct usprobe_hit;

namespace usprobe::stack {

// Load libunwind for the DWARF walk, once per process; later calls return at once. May allocate
// and take the dynamic loader's lock: never call it from a handler. True when it is loaded.
bool load_unwinder();

// usprobe_hit_stack: fill ips[0..max) with the stack at `hit` (a handler's hit, on the handler's
// thread). Returns the number of frames or a negative errno. USPROBE_STACK_FP in flags: frame
// pointers only.
int walk(const usprobe_hit *hit, uint64_t *ips, size_t max, unsigned flags);

}  // namespace usprobe::stack

// The architecture's half of the stack walk (src/arch/<arch>/stack_walk.cc).
namespace usprobe::arch {

struct Regs;

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

// A machine context for libunwind's local unwinder (unw_context_t is ucontext_t on x86-64): the
// hit's general-purpose registers with the instruction pointer `ip` and stack pointer `sp`.
void unwind_context(const Regs &r, uint64_t ip, uint64_t sp, ucontext_t *uc);

}  // namespace usprobe::arch
