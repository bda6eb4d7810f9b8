// The one contract between the core and the operating system (implemented in src/os/<os>/), as
// core/arch.h is the one with the architecture.
//
// The core speaks in probes, sites and consumers; the OS side knows how this process's memory,
// threads and mappings are reached: code memory written while other threads run it, the barriers
// that make other threads see new code and new pointers, a round over every other thread, the
// SIGTRAP handler, the process's file mappings, and the few system calls a thread makes on its
// first hit (without libc, which a probe may sit on). Core files include this header and never
// os/<os>/*: the build picks the implementation (CMake compiles src/os/linux/*.cc), so core has no
// #ifdef and no Linux system-call number. The OS side may add what only its other users need (the
// agent's signal guard, the CLI's maps text parser) in its own headers, next to its implementation.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/error.h"

namespace usprobe::os {

// ---- Code memory (os/linux/code_memory.cc) ----------------------------------------------------
//
// Executable memory for trampolines, placed within +-2 GB of the code it serves so that a 5-byte
// `jmp rel32` reaches it and RIP-relative operands of relocated instructions still reach their
// targets; and the one way usprobe writes code. Code that may run is written without ever making
// a page writable (on Linux: through /proc/self/mem, which the kernel writes with FOLL_FORCE), so
// page protections end as they were by construction, and no thread ever runs a writable page.
// Only memory mapped for a batch's new trampolines, which nothing refers to yet, is written in
// place: mapped read+write, made read+execute by the flush (never both). The architecture gets
// this memory from the core (core/code_space.h), never from here.

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

// `size` bytes of address space that nothing may use (no access, no memory behind them), at `at`
// exactly, or anywhere for 0: where a file that is not mapped here would be, for the code memory
// near it (core/site_analysis.cc). The trampolines' allocator sees them taken at once. ENOMEM when
// the addresses are not free. Given back with release_addresses.
Result<uint64_t> reserve_addresses(uint64_t at, size_t size);
void release_addresses(uint64_t addr, size_t size);

// Read up to `len` bytes at `addr` of this process: memory that may be unmapped meanwhile
// (another thread's stack) reads short instead of faulting.
std::vector<uint8_t> read_memory(uint64_t addr, size_t len);

// Write `bytes` at `addr` in this process's memory, whatever the page protections.
Result<void> write_code(uint64_t addr, std::span<const uint8_t> bytes);

// Trampolines of a batch, written together: `bytes` go to `addr`, the start of a block of
// `block_size` bytes from alloc_code_near, at the next flush_code(). Blocks that follow each other
// in a slab go out in one write (the unused tail of each block filled with int3), so a batch of
// 10,000 new trampolines costs a few hundred writes instead of 10,000; blocks of memory mapped
// since the last flush are written at once, in place. Nothing may run the code before
// flush_code() returns.
void write_code_later(uint64_t addr, std::span<const uint8_t> bytes, size_t block_size);
Result<void> flush_code();

// ---- Barriers on every thread (os/linux/membarrier.cc) -----------------------------------------
//
//  - membarrier_sync_core(): after cross-modifying code, every thread of this process has executed
//    a serializing instruction before it returns, so no core runs stale bytes of a patched site.
//  - membarrier_memory_barrier(): a full memory barrier on every running thread of this process.
//    RCU uses it so that readers need only compiler barriers (see core/rcu.h).

// Registers this process for both; idempotent; thread-safe.
Result<void> membarrier_init();
void membarrier_sync_core();
void membarrier_memory_barrier();

// ---- Thread rounds (os/linux/thread_round.cc) --------------------------------------------------
//
// A thread round: look at where every other thread of this process is, and let a function move
// it. Patching a 5-byte jump over instructions that another thread may be stopped between is only
// safe if no thread resumes in the middle of the window. The patcher therefore, after the window's
// first byte holds an int3 (so no thread can enter it any more), runs a round: each other thread
// runs `fn` with its interrupted context (from a signal handler), and `fn` moves a thread whose
// instruction pointer lies inside a window to the same instruction in the window's relocated copy.
// A thread blocked in a system call is not interrupted when `pc_is_safe` says its user
// instruction pointer needs no `fn`. A thread that does not answer within the timeout (it blocks
// the round's signal, or it is stopped) is counted as unreached: the caller must then not write
// anything that relies on it.

// Async-signal-safe. Returns the thread's interrupted stack pointer (the caller scans the stack
// above it for signal frames: see RoundResult::stack_pointers).
using RoundFn = uint64_t (*)(ucontext_t *uc, void *arg);
using PcCheck = bool (*)(uint64_t pc, void *arg);  // true when a thread stopped at pc needs no fn

struct RoundResult {
  size_t signalled = 0;  // threads that ran fn
  size_t blocked = 0;    // threads in a system call at a safe pc, left alone
  size_t unreached = 0;  // threads that did not answer in time
  // The stack pointer of every thread looked at (signalled: as fn returned it; blocked: as the
  // OS reports it). A thread may be inside a signal handler whose frame, higher on its stack,
  // holds the context it will return to: only the stack says where that is.
  std::vector<uint64_t> stack_pointers;
};

Result<RoundResult> run_thread_round(RoundFn fn, PcCheck pc_is_safe, void *arg,
                                     int timeout_ms = 2000);

// Threads of this process (the caller included) whose blocked-signal mask holds `sig`.
std::vector<int> threads_blocking(int sig);

// Whether the calling thread is this process's only one (as when a launched command's agent
// starts, before main). No other thread can then appear until this one makes it.
bool only_thread();

// ---- Traps (os/linux/trap_handler.cc) ----------------------------------------------------------
//
// usprobe's SIGTRAP handler, installed when the library is loaded (before the program can block
// SIGTRAP or set its own disposition, both of which the interposed calls then only record:
// os/linux/signal_guard.h). Each trap goes first to `take`, the core's (site_table::take_trap);
// one it does not take goes where it would go without usprobe: to the program's current SIGTRAP
// disposition, or to the kernel's default end.

// Async-signal-safe: true when the trap was usprobe's and `uc` says where the thread resumes.
using TrapTake = bool (*)(const siginfo_t *info, ucontext_t *uc);
// Connects `take` (the handler itself is installed already). Errors: the handler could not be
// installed.
Result<void> install_trap_handler(TrapTake take);

// The address usprobe's signal handlers return through when they are done (on Linux: their
// sa_restorer, glibc's __restore_rt): a signal frame on a thread's stack starts with it
// (arch::signal_frame_in_windows). 0 when it cannot be told.
uint64_t signal_return_address();

// ---- This process's mappings (os/linux/proc_maps.cc) -------------------------------------------

struct Mapping {
  uint64_t start = 0, end = 0;  // [start, end)
  bool read = false, write = false, exec = false, priv = false;
  uint64_t offset = 0;  // file offset of `start`
  dev_t dev = 0;        // the file's device, as stat(2) gives it
  ino_t ino = 0;
  std::string path;      // may be empty or "[heap]", "[vdso]", ...
  bool deleted = false;  // the file was deleted since it was mapped; `path` then names a
                         // different file or none
};

// Every mapping of this process, sorted by address (on Linux: /proc/self/maps, or `maps_path`, for
// tests). Errors: the list cannot be read, or is not in the kernel's format.
Result<std::vector<Mapping>> read_mappings(const char *maps_path = "/proc/self/maps");

// The mapping that holds one address, found without allocation, lock or libc call (a probe may sit
// on any libc function): usable by a handler's stack walk.
struct MappedRange {
  uint64_t start = 0, end = 0;  // [start, end)
  bool readable = false;
  bool main_stack = false;  // the main thread's stack
};
// True when a readable mapping holds `addr`; `out` is then that mapping.
bool find_mapped_range(uint64_t addr, MappedRange &out);

// The object that the dynamic linker loaded and that holds `addr`, as the linker's own link map
// tells it (no /proc/self/maps to read): its path and its load bias (a file's vaddr + bias is
// where it is). nullopt when no object holds it (the vDSO, anonymous code) or the path the linker
// knows is not absolute.
struct LoadedObject {
  std::string path;
  uint64_t bias = 0;
};
std::optional<LoadedObject> loaded_object_at(uint64_t addr);

}  // namespace usprobe::os

// The system calls a thread makes where libc must not be called (its first hit registers it, a
// return with no instance reports itself), inline. This is the one line of core that names an OS:
// the alternative, the directory of the OS's inline part put on the include path by CMake, hides
// which file is read behind the build; an explicit path (as core/arch.h has for the architecture)
// is found by grep and by an editor, and a port to another OS changes this line. It defines, in
// usprobe::os:
//   int  raw_gettid()                          the calling thread's id
//   bool thread_exited(int tid)                thread `tid` of this process no longer exists
//   void *raw_mmap_anon(len, prot, extra_flags, hint = 0)
//                                              anonymous private memory (PROT_*, MAP_* flags);
//                                              nullptr on failure
//   void raw_munmap(void *addr, size_t len)
//   void raw_write(int fd, const void *buf, size_t len)   best effort, for a last message
#include "os/linux/os_inline.h"
