// The agent's own operator new and delete: every C++ allocation of the agent, the engine's copy
// in it (usprobe_impl_agent) and the C++ runtime linked into it, none exported (the version script
// in agent/CMakeLists.txt), so the program's own operator new is untouched.
//
// Why: a `usprobe count 'libc:*'` session starts in every process of the command, before its main,
// and makes a few hundred thousand small allocations for its 3,656 probes. Through libc's malloc
// they took a third of the start's instructions (callgrind of /bin/true: malloc and free 36% of
// 95 M), and every one of them was also a call of the probed malloc or free, and a call the
// program never made, in the program's own heap. Here a block is a bump of a pointer or a pop from
// its size's free list, in memory of the agent's own, mapped with raw system calls.
//
// Blocks carry a 16-byte header (the alignment new gives) naming their size class; sizes up to
// 32 KiB (header included) round up to 44 classes, 16 bytes apart up to 256, then four to each
// power of two. Larger ones come from libc's malloc, marked as such. Freed blocks go on their
// class's list and are reused, never given back. One spinlock guards it all: the agent allocates at
// a session's start and end and seldom between, never on the hit path. Around fork the lock is
// taken, so that the child never inherits it held (its fork handlers are registered before any
// other of the agent's: they run last before the fork and first after it).
#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "core/os.h"

namespace {

constexpr size_t kHeader = 16;
constexpr uint32_t kLarge = ~0u;     // the header of a block from libc's malloc
constexpr size_t kMaxSmall = 32768;  // a class's largest block, header included
constexpr uint32_t kClasses = 16 + 7 * 4;
// Mapped at a time: 128 KiB, then twice as much each time, up to 2 MiB.
constexpr size_t kFirstChunk = size_t{128} << 10, kMaxChunk = size_t{2} << 20;

// The class of a block of n bytes (header included, 0 < n <= kMaxSmall), and its size.
constexpr uint32_t class_of(size_t n) {
  if (n <= 256) return static_cast<uint32_t>((n + 15) / 16 - 1);
  const unsigned p = 63 - static_cast<unsigned>(__builtin_clzll(n - 1));  // 2^p < n <= 2^(p+1)
  const size_t step = size_t{1} << (p - 2);
  return static_cast<uint32_t>(16 + (p - 8) * 4 + ((n - 1 - (size_t{1} << p)) / step));
}
constexpr size_t class_size(uint32_t c) {
  if (c < 16) return (size_t{c} + 1) * 16;
  const unsigned p = 8 + (c - 16) / 4;
  return (size_t{1} << p) + ((c - 16) % 4 + 1) * (size_t{1} << (p - 2));
}
static_assert(class_of(16) == 0 && class_size(0) == 16 && class_of(256) == 15);
static_assert(class_of(257) == 16 && class_size(16) == 320 && class_of(512) == 19);
static_assert(class_size(19) == 512 && class_of(513) == 20 && class_size(20) == 640);
static_assert(class_of(kMaxSmall) == kClasses - 1 && class_size(kClasses - 1) == kMaxSmall);

struct Free {
  Free *next;
};

struct Heap {
  std::atomic<bool> locked{false};
  Free *free[kClasses] = {};
  char *bump = nullptr, *end = nullptr;
  uint32_t chunks = 0;  // mapped so far
};
constinit Heap g_heap;

void lock() {
  while (g_heap.locked.exchange(true, std::memory_order_acquire))
    while (g_heap.locked.load(std::memory_order_relaxed)) __builtin_ia32_pause();
}
void unlock() {
  g_heap.locked.store(false, std::memory_order_release);
}

// Registered before any other fork handler of the agent (constructor priority): prepare handlers
// run in the reverse order of registration, the others in order.
__attribute__((constructor(101))) void install_fork_handlers() {
  pthread_atfork(lock, unlock, unlock);
}

// From libc's malloc, marked as such: a block larger than the largest class.
__attribute__((noinline)) void *allocate_large(size_t size) noexcept {
  auto *block = static_cast<char *>(std::malloc(size + kHeader));
  if (!block) return nullptr;
  *reinterpret_cast<uint32_t *>(block) = kLarge;
  return block + kHeader;
}

// Class c's block from a new chunk, with the lock held (it lets go); null when none could be
// mapped. Raw system calls, as the engine's thread records: mmap may itself be probed. Populated:
// the pages are used at once, and one call maps them faster than a fault each (a new process
// under `libc:*`: about 1.5 ms less). Small first, as a session of a few probes needs.
__attribute__((noinline)) void *allocate_from_new_chunk(uint32_t c) noexcept {
  const size_t bytes = std::min(kMaxChunk, kFirstChunk << std::min(g_heap.chunks, 8u));
  void *chunk = usprobe::os::raw_mmap_anon(bytes, PROT_READ | PROT_WRITE, MAP_POPULATE);
  if (!chunk) {
    unlock();
    return nullptr;
  }
  ++g_heap.chunks;
  char *block = static_cast<char *>(chunk);  // the old chunk's rest stays unused
  g_heap.bump = block + class_size(c);
  g_heap.end = block + bytes;
  unlock();
  *reinterpret_cast<uint32_t *>(block) = c;
  return block + kHeader;
}

// The common cases call nothing (the rare ones are tail calls), so that they save no register:
// a session's start makes 140,000 of these for `libc:*`.
void *allocate(size_t size) noexcept {
  if (size > kMaxSmall - kHeader) [[unlikely]]
    return allocate_large(size);
  const uint32_t c = class_of(size + kHeader);
  lock();
  char *block;
  if (Free *f = g_heap.free[c]) {
    g_heap.free[c] = f->next;
    block = reinterpret_cast<char *>(f);
  } else if (const size_t need = class_size(c);
             static_cast<size_t>(g_heap.end - g_heap.bump) >= need) {
    block = g_heap.bump;
    g_heap.bump += need;
  } else {
    return allocate_from_new_chunk(c);
  }
  unlock();
  *reinterpret_cast<uint32_t *>(block) = c;
  return block + kHeader;
}

void release(void *p) noexcept {
  if (!p) return;
  char *block = static_cast<char *>(p) - kHeader;
  const uint32_t c = *reinterpret_cast<const uint32_t *>(block);
  if (c == kLarge) {
    std::free(block);
    return;
  }
  lock();
  auto *f = reinterpret_cast<Free *>(block);
  f->next = g_heap.free[c];
  g_heap.free[c] = f;
  unlock();
}

[[noreturn]] void out_of_memory() {
  static const char kWhy[] = "usprobe agent: out of memory; aborting\n";
  usprobe::os::raw_write(2, kWhy, sizeof kWhy - 1);
  std::abort();
}

void *allocate_or_die(size_t size) {
  void *p = allocate(size);
  if (!p) out_of_memory();
  return p;
}

}  // namespace

void *operator new(size_t size) {
  return allocate_or_die(size);
}
void *operator new[](size_t size) {
  return allocate_or_die(size);
}
void *operator new(size_t size, const std::nothrow_t &) noexcept {
  return allocate(size);
}
void *operator new[](size_t size, const std::nothrow_t &) noexcept {
  return allocate(size);
}
void operator delete(void *p) noexcept {
  release(p);
}
void operator delete[](void *p) noexcept {
  release(p);
}
void operator delete(void *p, size_t) noexcept {
  release(p);
}
void operator delete[](void *p, size_t) noexcept {
  release(p);
}
void operator delete(void *p, const std::nothrow_t &) noexcept {
  release(p);
}
void operator delete[](void *p, const std::nothrow_t &) noexcept {
  release(p);
}
