// Executable memory for trampolines, placed within +-2 GB of the code it serves so that a
// 5-byte `jmp rel32` reaches it and RIP-relative operands of relocated instructions still reach
// their targets; and the one way usprobe writes code: through /proc/self/mem.
//
// Writing through /proc/self/mem lets the kernel do the write with FOLL_FORCE: pages stay
// read+execute the whole time, so page protections end as they were by construction, and no other
// thread ever sees a writable code page.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/error.h"

namespace usprobe::os {

// `size` bytes of read+execute memory (16-byte aligned) whose every byte is within
// `reach` bytes of `near`. Freed with free_code once no thread can run it (core/retire.h).
Result<uint64_t> alloc_code_near(uint64_t near, size_t size,
                                 uint64_t reach = (1ull << 31) - (1ull << 24));
// Give back what alloc_code_near(., size) returned. A block is reused for a later allocation of the
// same size; a slab whose every block is free is unmapped.
void free_code(uint64_t addr, size_t size);
// `size` bytes of read+execute memory (at most 64) starting at an address in [lo, hi): for code
// whose address is constrained to a range (a punned jump's target). Pages are taken from free
// address space (never below vm.mmap_min_addr or above user space) and shared between such
// blocks; a range that holds only other mappings fails with ENOMEM. Freed with free_code_within.
Result<uint64_t> alloc_code_within(uint64_t lo, uint64_t hi, size_t size);
void free_code_within(uint64_t addr, size_t size);

// Read up to `len` bytes at `addr` of this process through /proc/self/mem: memory that may be
// unmapped meanwhile (another thread's stack) reads short instead of faulting.
std::vector<uint8_t> read_memory(uint64_t addr, size_t len);

// Write `bytes` at `addr` in this process's memory, whatever the page protections.
Result<void> write_code(uint64_t addr, std::span<const uint8_t> bytes);

// Trampolines of a batch, written together: `bytes` go to `addr`, the start of a block of
// `block_size` bytes from alloc_code_near, at the next flush_code(). Blocks that follow each other
// in a slab go out in one write (the unused tail of each block filled with int3), so a batch of
// 10,000 new trampolines costs a few hundred writes through /proc/self/mem instead of 10,000.
// Nothing may run the code before flush_code() returns.
void write_code_later(uint64_t addr, std::span<const uint8_t> bytes, size_t block_size);
Result<void> flush_code();

}  // namespace usprobe::os
