// Code memory (core/os.h) on Linux: slabs mapped near the code they serve. A slab mapped for a
// batch is written in place while nothing refers to it (read+write, not executable) and made
// read+execute at the batch's flush, before any site can jump there; every later write of code
// goes through /proc/self/mem (the kernel writes with FOLL_FORCE: pages stay read+execute).
#include "core/os.h"
#include "os/linux/high_descriptor.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "os/linux/os_inline.h"
#include "os/linux/proc_maps.h"

namespace usprobe::os {
namespace {

constexpr size_t kSlabSize = 64 * 1024;
constexpr uint64_t kPage = 4096;

struct Slab {
  uint64_t start, used;  // [start, start + used) has been handed out at some time
  size_t live = 0;       // blocks handed out and not freed
  // Freed blocks, by size, for reuse: (address, size).
  std::vector<std::pair<uint64_t, size_t>> free;
  // Mapped read+write since the last flush, and never executable yet: written in place.
  bool open = false;
};

std::mutex g_mutex;
std::vector<Slab> g_slabs;  // guarded by g_mutex
uint64_t g_last_slab = 0;   // the slab mapped last (guarded by g_mutex): the next one goes after it

// write_code_later's runs, guarded by g_mutex: `bytes` go to `start`; the block after the last one
// in the run starts at `next_block`.
struct Run {
  uint64_t start, next_block;
  std::vector<uint8_t> bytes;
};
std::vector<Run> g_runs;

bool within(uint64_t a, uint64_t b, uint64_t reach) {
  return (a > b ? a - b : b - a) <= reach;
}

// The address space as the allocator judges it: every mapping, and the main stack's growth room
// (its rlimit below it: a page there would stop the stack from growing), as [start, end) sorted by
// start. A batch asks for slabs and stubs site after site, so a view read in the last 100 ms is
// used again: a page it calls free that has been mapped since only makes the MAP_FIXED_NOREPLACE
// mmap fail and the search go on, and one unmapped since by the program is only not used (our own
// unmaps, free_code_within, drop the view). Every read of /proc/self/maps (the registry's, at each
// attach) leaves its view here (note_address_space).
using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;

uint64_t now_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1000000000u + static_cast<uint64_t>(now.tv_nsec);
}

Ranges ranges_of(const std::vector<Mapping> &maps) {
  Ranges out;
  out.reserve(maps.size());
  for (const auto &m : maps) {
    uint64_t start = m.start;
    if (m.path == "[stack]") {
      rlimit rl{};
      uint64_t room = 8ull << 20;
      if (getrlimit(RLIMIT_STACK, &rl) == 0)
        room = rl.rlim_cur == RLIM_INFINITY ? 1ull << 30 : std::max<uint64_t>(room, rl.rlim_cur);
      start = start > room ? start - room : 0;
    }
    out.emplace_back(start & ~(kPage - 1), m.end);
  }
  std::sort(out.begin(), out.end());
  return out;
}

constexpr uint64_t kViewLife = 100'000'000;  // ns
// The last view noted by a read of the mappings, under its own lock (the reads come from anywhere,
// g_mutex held or not).
std::mutex g_noted_mutex;
Ranges *g_noted = new Ranges;  // never destroyed, as the slabs
uint64_t g_noted_at = 0;       // 0: none

// The view, guarded by g_mutex.
uint64_t g_taken_read_at = 0;  // 0: no view
Result<const Ranges *> taken_ranges() {
  static Ranges *taken = new Ranges;  // never destroyed, as the slabs
  const uint64_t ns = now_ns();
  if (g_taken_read_at != 0 && ns - g_taken_read_at < kViewLife) return taken;
  {
    std::lock_guard noted(g_noted_mutex);
    if (g_noted_at != 0 && ns - g_noted_at < kViewLife) {
      *taken = *g_noted;
      g_taken_read_at = g_noted_at;
      return taken;
    }
  }
  // The read leaves its view (note_address_space): taken from there, not made again.
  if (auto maps = read_mappings(); !maps) return std::unexpected(maps.error());
  std::lock_guard noted(g_noted_mutex);
  *taken = *g_noted;
  g_taken_read_at = g_noted_at;
  return taken;
}

// Our own unmap: neither view holds any more.
void drop_views() {
  g_taken_read_at = 0;
  std::lock_guard noted(g_noted_mutex);
  g_noted_at = 0;
}

// Map a new slab in a free gap of the address space near `near`.
void *map_slab_at(uint64_t addr) {
  void *p = mmap(reinterpret_cast<void *>(addr), kSlabSize, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  if (reinterpret_cast<uint64_t>(p) != addr) {  // very old kernels ignore MAP_FIXED_NOREPLACE
    munmap(p, kSlabSize);
    return nullptr;
  }
  return p;
}

Result<uint64_t> map_slab_near(uint64_t near, uint64_t reach) {
  // A batch fills slab after slab near one library: first try right after the last one, which
  // needs no look at the address space.
  if (uint64_t next = g_last_slab + kSlabSize; g_last_slab && within(next, near, reach) &&
                                               within(next + kSlabSize, near, reach) &&
                                               next + kSlabSize <= 0x7ffffffff000ull)
    if (map_slab_at(next)) return next;
  auto taken = taken_ranges();
  if (!taken) return std::unexpected(taken.error());
  // Candidate addresses: just after and just before every mapping within reach, closest first.
  std::vector<uint64_t> candidates;
  for (const auto &[start, end] : **taken) {
    candidates.push_back((end + kPage - 1) & ~(kPage - 1));
    if (start >= kSlabSize) candidates.push_back((start - kSlabSize) & ~(kPage - 1));
  }
  std::sort(candidates.begin(), candidates.end(), [near](uint64_t a, uint64_t b) {
    return (a > near ? a - near : near - a) < (b > near ? b - near : near - b);
  });
  for (uint64_t addr : candidates) {
    if (!within(addr, near, reach) || !within(addr + kSlabSize, near, reach)) continue;
    if (addr < 0x10000 || addr + kSlabSize > 0x7ffffffff000ull) continue;
    if (map_slab_at(addr)) return addr;
  }
  return fail(ENOMEM,
              fmt::format("no free address space within 2 GB of {:#x} for a trampoline", near));
}

// Pages of constrained blocks (alloc_code_within), guarded by g_mutex: page -> the blocks handed
// out in it, (address, size), sorted by address.
std::map<uint64_t, std::vector<std::pair<uint64_t, size_t>>> g_constrained;
constexpr uint64_t kUserTop = 0x7ffffffff000ull;

uint64_t mmap_min_addr() {
  static const uint64_t value = [] {
    uint64_t v = 65536;
    if (FILE *f = fopen("/proc/sys/vm/mmap_min_addr", "re")) {
      unsigned long long x;
      if (fscanf(f, "%llu", &x) == 1) v = x;
      fclose(f);
    }
    return std::max<uint64_t>((v + kPage - 1) & ~(kPage - 1), kPage);
  }();
  return value;
}

// The lowest address a in [lo, hi) with [a, a + size) inside the page at `page` and clear of
// `used`; 0 when none.
uint64_t fit_in_page(uint64_t page, const std::vector<std::pair<uint64_t, size_t>> &used,
                     uint64_t lo, uint64_t hi, size_t size) {
  uint64_t a = std::max(lo, page);
  for (const auto &[at, n] : used) {
    if (a + size <= at) break;
    a = std::max(a, at + n);
  }
  if (a >= hi || a + size > page + kPage) return 0;
  return a;
}

// /proc/self/mem, opened once per process: a descriptor inherited over fork() still names the
// parent's memory, so a child opens its own (told by an atfork handler: getpid() is a system call,
// and this runs once per write). Callers hold the registry mutex.
std::atomic<bool> g_forked{false};
int mem_fd() {
  static int fd = -1;
  static const bool registered = pthread_atfork(nullptr, nullptr, [] {
                                   g_forked.store(true, std::memory_order_relaxed);
                                 }) == 0;
  if (fd < 0 || g_forked.exchange(false, std::memory_order_relaxed) || !registered) {
    if (fd >= 0) close(fd);
    fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
    // Out of the program's way (high_descriptor.h): its next open() gets the number it gets
    // unprobed. Never on 0, 1 or 2 in any case: a program started with one of them closed (`prog
    // 0<&-`) must find it closed, not reading or writing its own memory.
    fd = move_descriptor_high(fd, true);
    if (fd >= 0 && fd <= 2) {
      int high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
      close(fd);
      fd = high;
    }
  }
  return fd;
}

Result<void> flush_locked() {
  for (Slab &s : g_slabs) {
    if (!s.open) continue;
    if (mprotect(reinterpret_cast<void *>(s.start), kSlabSize, PROT_READ | PROT_EXEC) != 0)
      return fail(errno, fmt::format("mprotect of a trampoline slab at {:#x}: {}", s.start,
                                     std::strerror(errno)));
    s.open = false;
  }
  std::vector<Run> runs = std::move(g_runs);
  g_runs.clear();
  for (const Run &r : runs)
    if (auto ok = write_code(r.start, r.bytes); !ok) return ok;
  return {};
}

}  // namespace

Result<uint64_t> alloc_code_near(uint64_t near, size_t size, uint64_t reach) {
  size = (size + 15) & ~size_t{15};
  if (size > kSlabSize) return fail(EINVAL, "trampoline too large");
  std::lock_guard lock(g_mutex);
  for (auto &s : g_slabs) {
    for (auto it = s.free.begin(); it != s.free.end(); ++it)
      if (it->second == size && within(it->first, near, reach) &&
          within(it->first + size, near, reach)) {
        uint64_t at = it->first;
        s.free.erase(it);
        ++s.live;
        return at;
      }
    if (s.used + size <= kSlabSize && within(s.start + s.used, near, reach) &&
        within(s.start + s.used + size, near, reach)) {
      uint64_t at = s.start + s.used;
      s.used += size;
      ++s.live;
      return at;
    }
  }
  auto slab = map_slab_near(near, reach);
  if (!slab) return slab;
  g_slabs.push_back({*slab, size, 1, {}, true});
  g_last_slab = *slab;
  return *slab;
}

void write_code_later(uint64_t addr, std::span<const uint8_t> bytes, size_t block_size) {
  std::lock_guard lock(g_mutex);
  // A block of a slab mapped since the last flush: in place (the block's unused tail: int3s). The
  // newest slab first: a batch fills one slab after another.
  for (auto it = g_slabs.rbegin(); it != g_slabs.rend(); ++it)
    if (const Slab &s = *it; s.open && addr >= s.start &&
                             addr + block_size <= s.start + kSlabSize &&
                             bytes.size() <= block_size) {
      auto *at = reinterpret_cast<uint8_t *>(addr);
      std::memcpy(at, bytes.data(), bytes.size());
      std::memset(at + bytes.size(), 0xcc, block_size - bytes.size());
      return;
    }
  if (!g_runs.empty() && g_runs.back().next_block == addr) {
    Run &r = g_runs.back();
    r.bytes.resize(addr - r.start, 0xcc);  // the previous block's unused tail: int3s
    r.bytes.insert(r.bytes.end(), bytes.begin(), bytes.end());
    r.next_block = addr + block_size;
    return;
  }
  g_runs.push_back({addr, addr + block_size, std::vector<uint8_t>(bytes.begin(), bytes.end())});
}

Result<void> flush_code() {
  std::lock_guard lock(g_mutex);
  return flush_locked();
}

void free_code(uint64_t addr, size_t size) {
  size = (size + 15) & ~size_t{15};
  std::lock_guard lock(g_mutex);
  (void)flush_locked();  // nothing pending may land in a block after it is freed
  for (auto it = g_slabs.begin(); it != g_slabs.end(); ++it) {
    if (addr < it->start || addr >= it->start + kSlabSize) continue;
    if (--it->live == 0) {
      munmap(reinterpret_cast<void *>(it->start), kSlabSize);
      g_slabs.erase(it);
    } else {
      it->free.emplace_back(addr, size);
    }
    return;
  }
}

// Maps a page of [lo, hi) that `taken` leaves free and returns the address of a `size`-byte block
// in it within [lo, hi); 0 when none could be mapped.
uint64_t map_free_page(const Ranges &taken, uint64_t lo, uint64_t hi, size_t size) {
  auto is_taken = [&](uint64_t page) {
    auto it = std::upper_bound(taken.begin(), taken.end(),
                               std::pair<uint64_t, uint64_t>(page, ~uint64_t{0}));
    // Ranges may overlap (the stack's room): look back over every earlier start.
    for (auto j = taken.begin(); j != it; ++j)
      if (page < j->second && page + kPage > j->first) return true;
    return false;
  };
  for (uint64_t page = lo & ~(kPage - 1), tries = 0; page < hi && tries < 64; page += kPage) {
    if (is_taken(page)) {
      // Skip to the end of the mapping that holds it.
      for (const auto &[b, e] : taken)
        if (page >= b && page < e) page = std::max(page, ((e + kPage - 1) & ~(kPage - 1)) - kPage);
      continue;
    }
    const uint64_t a = fit_in_page(page, {}, lo, hi, size);
    if (!a) continue;
    ++tries;
    void *p = mmap(reinterpret_cast<void *>(page), kPage, PROT_READ | PROT_EXEC,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED) continue;
    if (reinterpret_cast<uint64_t>(p) != page) {
      munmap(p, kPage);
      continue;
    }
    return a;
  }
  return 0;
}

Result<uint64_t> alloc_code_within(uint64_t lo, uint64_t hi, size_t size) {
  if (size == 0 || size > 64) return fail(EINVAL, "constrained code block too large");
  lo = std::max(lo, mmap_min_addr());
  hi = std::min(hi, kUserTop - size);
  if (lo >= hi || hi < lo) return fail(ENOMEM, "the range is outside user space");
  std::lock_guard lock(g_mutex);
  auto take = [&](uint64_t page, uint64_t a) {
    auto &used = g_constrained[page];
    used.emplace_back(a, size);
    std::sort(used.begin(), used.end());
    return a;
  };
  // Pages already mapped for other blocks first.
  for (auto it = g_constrained.lower_bound((lo & ~(kPage - 1)));
       it != g_constrained.end() && it->first < hi; ++it)
    if (uint64_t a = fit_in_page(it->first, it->second, lo, hi, size)) return take(it->first, a);
  // Then free pages of the range, found from the mappings.
  auto taken = taken_ranges();
  if (!taken) return std::unexpected(taken.error());
  if (uint64_t a = map_free_page(**taken, lo, hi, size)) return take(a & ~(kPage - 1), a);
  return fail(ENOMEM, fmt::format("no free address space in [{:#x}, {:#x})", lo, hi));
}

void free_code_within(uint64_t addr, size_t size) {
  std::lock_guard lock(g_mutex);
  (void)flush_locked();
  auto it = g_constrained.find(addr & ~(kPage - 1));
  if (it == g_constrained.end()) return;
  std::erase(it->second, std::pair<uint64_t, size_t>(addr, size));
  if (it->second.empty()) {
    munmap(reinterpret_cast<void *>(it->first), kPage);
    drop_views();
    g_constrained.erase(it);
  }
}

std::vector<uint8_t> read_memory(uint64_t addr, size_t len) {
  std::vector<uint8_t> out(len);
  int fd = mem_fd();
  ssize_t n = fd < 0 ? -1 : pread(fd, out.data(), len, static_cast<off_t>(addr));
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

Result<void> write_code(uint64_t addr, std::span<const uint8_t> bytes) {
  int fd = mem_fd();
  if (fd < 0) return fail(errno, std::string("/proc/self/mem: ") + strerror(errno));
  // Not libc's pwrite: it may be among the functions a batch patches (patcher.cc, copy_bytes).
  long n = raw_syscall6(SYS_pwrite64, fd, reinterpret_cast<long>(bytes.data()),
                        static_cast<long>(bytes.size()), static_cast<long>(addr));
  if (n < 0) errno = static_cast<int>(-n);
  if (n != static_cast<long>(bytes.size()))
    return fail(n < 0 ? errno : EIO,
                fmt::format("writing {} bytes of code at {:#x}: {}", bytes.size(), addr,
                            n < 0 ? strerror(errno) : "short write"));
  return {};
}

Result<uint64_t> reserve_addresses(uint64_t at, size_t size) {
  void *want = reinterpret_cast<void *>(at);
  void *p =
      mmap(want, size, PROT_NONE,
           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (at ? MAP_FIXED_NOREPLACE : 0), -1, 0);
  if (p == MAP_FAILED || (at && p != want)) {
    const int e = p == MAP_FAILED ? errno : EEXIST;
    if (p != MAP_FAILED) munmap(p, size);
    return fail(e == EEXIST ? ENOMEM : e, strerror(e));
  }
  // A view of the address space read before this (a read of the mappings leaves one, and the
  // caller has just made one) would not see these addresses taken, nor search for slabs near them.
  std::lock_guard lock(g_mutex);
  drop_views();
  return reinterpret_cast<uint64_t>(p);
}

void release_addresses(uint64_t addr, size_t size) {
  munmap(reinterpret_cast<void *>(addr), size);
  std::lock_guard lock(g_mutex);
  drop_views();
}

void note_address_space(const std::vector<Mapping> &maps) {
  Ranges ranges = ranges_of(maps);
  std::lock_guard noted(g_noted_mutex);
  g_noted->swap(ranges);
  g_noted_at = now_ns();
}

}  // namespace usprobe::os
