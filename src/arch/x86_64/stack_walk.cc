// The x86-64 frame-pointer walk (core/stack.h): the %rbp chain.
//
// A frame built with frame pointers starts `push %rbp; mov %rsp,%rbp`: %rbp points at the saved
// %rbp of the caller, with the return address just above it. Walking the chain is two loads per
// frame; the bounds checks are what keep a broken chain (code built without frame pointers uses
// %rbp as an ordinary register) from reading memory that is not there.
#include "arch/x86_64/regs.h"
#include "core/arch.h"
#include "core/stack.h"

namespace usprobe::arch {

uint64_t frame_pointer(const Regs &r) {
  return r.rbp;
}

// Reads other frames' memory on purpose, wherever a (checked) chain leads: not for AddressSanitizer
// to judge.
__attribute__((no_sanitize("address"))) size_t frame_pointer_walk(uint64_t fp, uint64_t lo,
                                                                  uint64_t hi, uint64_t *ips,
                                                                  size_t max, ReturnFixup fixup,
                                                                  const void *ctx) {
  size_t n = 0;
  // Each frame reads 16 bytes at fp: the saved %rbp, then the return address.
  while (n < max && hi >= 16 && fp >= lo && fp <= hi - 16 && fp % 8 == 0) {
    const auto *frame = reinterpret_cast<const uint64_t *>(fp);
    const uint64_t ret = fixup(ctx, fp + 8, frame[1]);
    if (ret == 0) break;  // the outermost frame
    ips[n++] = ret;
    const uint64_t next = frame[0];
    if (next <= fp) break;  // 0 ends the chain (_start, a thread's start); down or flat is broken
    fp = next;
  }
  return n;
}

}  // namespace usprobe::arch
