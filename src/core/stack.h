// Stack traces for handlers (usprobe_hit_stack): the user stack at a hit, as the return addresses
// of the callers, with the original return address wherever a pending return probe has put its
// trampoline's landing in its place (DESIGN.md, "Return probes").
//
// Two walkers, both without allocation, lock or system call (but the first walk on each thread,
// which reads /proc/self/maps once to learn the bounds of the thread's stack), so both are usable
// from any handler, inside malloc or the dynamic loader included:
//
// - The DWARF walk (the default) reads the code's own call frame information: the object holding
//   a pc comes from glibc's _dl_find_object (lock-free), its FDE from a binary search of its
//   .eh_frame_hdr, and the CFA program (elf/cfi.h) says where the caller's return address and
//   registers are. Rows are kept in a process-wide cache of sequence-checked entries, so a frame
//   seen before costs a few loads. It sees through code built without frame pointers (all of
//   Debian). A frame without usable CFI (JIT code, a PLT entry's CFA expression) takes one
//   frame-pointer step instead.
// - The frame-pointer walk (USPROBE_STACK_FP) follows the %rbp chain.
//
// Every read of the stack stays inside the thread's stack, above the hit's stack pointer; every
// read of CFI stays inside the object _dl_find_object names. A walk stops at anything it cannot
// trust (a CFA that does not go up the stack, a return address of 0, an unknown opcode).
#pragma once

#include <cstddef>
#include <cstdint>

struct usprobe_hit;

namespace usprobe::stack {

// usprobe_hit_stack: fill ips[0..max) with the stack at `hit` (a handler's hit, on the handler's
// thread). Returns the number of frames or a negative errno. USPROBE_STACK_FP in flags: frame
// pointers only.
int walk(const usprobe_hit *hit, uint64_t *ips, size_t max, unsigned flags);

}  // namespace usprobe::stack
