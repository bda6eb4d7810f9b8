// Code memory as the architecture gets it: the core hands a CodeSpace to the functions of
// core/arch.h that make code (arch::prepare_site, arch::release_trampoline,
// arch::make_return_trampoline), so that the architecture and the OS never meet. An architecture
// that called core/os.h itself would be written for one OS; through this interface it asks only
// for what it needs (memory near an address or inside a range, and the writes), and the core,
// which knows both contracts, implements it once over core/os.h (code_space()). Tests may pass one
// of their own. Nothing here is called on the hit path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "base/error.h"

namespace usprobe {

class CodeSpace {
 public:
  // `size` bytes of read+execute memory (16-byte aligned) whose every byte is within reach of a
  // `jmp rel32` at `near` (+-2 GB, less a margin): a trampoline and the code it serves. Given
  // back with free_near once no thread can run it (core/retire.h).
  virtual Result<uint64_t> alloc_near(uint64_t near, size_t size) = 0;
  virtual void free_near(uint64_t addr, size_t size) = 0;
  // `size` bytes of read+execute memory (at most 64) starting at an address in [lo, hi): code
  // whose address is fixed by bytes it does not choose (a punned jump's stub). ENOMEM when the
  // range holds no free memory. Given back with free_within.
  virtual Result<uint64_t> alloc_within(uint64_t lo, uint64_t hi, size_t size) = 0;
  virtual void free_within(uint64_t addr, size_t size) = 0;

  // The code of a block from alloc_near (`block_size` bytes at `addr`), or from alloc_within,
  // written with the batch's other new code before any site is patched (patcher::install flushes
  // the batch): nothing may run it before then. Batched, 10,000 new trampolines cost a few hundred
  // writes.
  virtual void write_later(uint64_t addr, std::span<const uint8_t> bytes, size_t block_size) = 0;
  // Written before the call returns: code that runs before the next batch is flushed.
  virtual Result<void> write_now(uint64_t addr, std::span<const uint8_t> bytes) = 0;

 protected:
  ~CodeSpace() = default;  // not owned through this interface
};

// This process's code memory (core/os.h): what the registry, the site analysis and the tests
// give the architecture.
CodeSpace &code_space();

}  // namespace usprobe
