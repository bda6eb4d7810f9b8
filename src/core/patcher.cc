#include "core/patcher.h"

#include <signal.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include <fmt/format.h>

#include "core/os.h"
#include "core/site_table.h"

namespace usprobe::patcher {
namespace {

// One phase of a batch writes a piece of code at each site (an int3; the tail or the first byte
// of a patch or of the original). Pieces that lie within kMergeGap bytes of each other go out in
// one write through /proc/self/mem, with the code between them written back as it is: each write
// costs a system call and a page-table walk, and a batch of 10,000 sites in one library would
// otherwise make 30,000 of them to install and as many to remove (a new process under libc:*,
// 3,656 sites: 1,047 writes of code in all with a gap of 256 bytes, 70 now). Rewriting a byte with
// its own value changes nothing a thread can execute, and nothing else writes this process's code
// meanwhile (the registry mutex is held; DESIGN.md: never a kernel uprobe on the same code at
// once). A write never spans a page without a piece: that page could be a hole between two
// mappings. Nor more than kMaxWrite bytes: the buffer it is built in is fresh memory, a page fault
// a page.
constexpr uint64_t kMergeGap = 4096;
constexpr uint64_t kPageShift = 12;
constexpr uint64_t kMaxWrite = 64 * 1024;

struct Piece {
  uint64_t addr;
  std::span<const uint8_t> data;
};

// Copies n bytes without calling libc: memcpy and memmove may be among the functions a batch
// patches, and a call into one of them while its int3 stands costs a trap (about 5 us; a batch
// over libc's string functions made tens of thousands). The volatile store keeps the compiler from
// turning the loop back into a call; words where they fit (a write spans up to a few pages).
typedef uint64_t UnalignedWord __attribute__((aligned(1), may_alias));
void copy_bytes(uint8_t *dst, const uint8_t *src, size_t n) {
  size_t i = 0;
  for (volatile UnalignedWord *d = reinterpret_cast<UnalignedWord *>(dst); i + 8 <= n; i += 8)
    d[i / 8] = *reinterpret_cast<const UnalignedWord *>(src + i);
  volatile uint8_t *d = dst;
  for (; i < n; ++i) d[i] = src[i];
}

Result<void> write_pieces(std::vector<Piece> pieces) {
  std::sort(pieces.begin(), pieces.end(),
            [](const Piece &a, const Piece &b) { return a.addr < b.addr; });
  struct Run {
    size_t first, last;  // pieces [first, last)
    uint64_t start, end;
  };
  std::vector<Run> runs;
  size_t longest = 0;
  for (size_t i = 0; i < pieces.size();) {
    size_t j = i + 1;
    uint64_t end = pieces[i].addr + pieces[i].data.size();
    while (j < pieces.size() && pieces[j].addr >= end && pieces[j].addr <= end + kMergeGap &&
           pieces[j].addr >> kPageShift <= ((end - 1) >> kPageShift) + 1 &&
           pieces[j].addr + pieces[j].data.size() - pieces[i].addr <= kMaxWrite) {
      end = pieces[j].addr + pieces[j].data.size();
      ++j;
    }
    runs.push_back({i, j, pieces[i].addr, end});
    longest = std::max<size_t>(longest, end - pieces[i].addr);
    i = j;
  }
  std::vector<uint8_t> buffer(longest);
  for (const Run &r : runs) {
    copy_bytes(buffer.data(), reinterpret_cast<const uint8_t *>(r.start), r.end - r.start);
    for (size_t k = r.first; k < r.last; ++k)
      copy_bytes(buffer.data() + (pieces[k].addr - r.start), pieces[k].data.data(),
                 pieces[k].data.size());
    if (auto ok = os::write_code(r.start, std::span(buffer).first(r.end - r.start)); !ok) return ok;
  }
  return {};
}

// Bytes [from, to) of each site's `bytes` (patch or original), at the site.
Result<void> write_all(const std::vector<Site *> &sites, size_t from, size_t to,
                       const std::vector<uint8_t> arch::SitePlan::*bytes) {
  std::vector<Piece> pieces;
  for (Site *s : sites) {
    const std::vector<uint8_t> &b = s->plan.*bytes;
    size_t end = std::min(to, b.size());
    if (from < end) pieces.push_back({s->addr + from, std::span(b).subspan(from, end - from)});
  }
  return write_pieces(std::move(pieces));
}

// An int3 on the first byte of each site.
Result<void> write_traps(const std::vector<Site *> &sites) {
  static const uint8_t kTrap[1] = {arch::trap_byte()};
  std::vector<Piece> pieces;
  for (Site *s : sites) pieces.push_back({s->addr, kTrap});
  return write_pieces(std::move(pieces));
}

using Range = std::pair<uint64_t, uint64_t>;  // [start, end)

bool in_ranges(uint64_t x, const std::vector<Range> &ranges) {
  return std::any_of(ranges.begin(), ranges.end(),
                     [x](const Range &r) { return x >= r.first && x < r.second; });
}

// What a thread round works with while jumps are being written.
struct RoundContext {
  std::vector<arch::WindowMove> moves;
  std::vector<Range> stale;  // Site::stale_trampolines of every jump being written
  // Set by a signalled thread that stopped inside one of `stale` (relaxed: read after the round,
  // whose acknowledgements order it).
  std::atomic<bool> thread_in_stale{false};
};

uint64_t round_move(ucontext_t *uc, void *arg) {
  auto *c = static_cast<RoundContext *>(arg);
  if (in_ranges(arch::interrupted_pc(uc), c->stale))
    c->thread_in_stale.store(true, std::memory_order_relaxed);
  return arch::move_out_of_windows(uc, c->moves);
}
bool round_pc_safe(uint64_t pc, void *arg) {
  auto *c = static_cast<RoundContext *>(arg);
  return arch::pc_outside_windows(pc, c->moves) && !in_ranges(pc, c->stale);
}

enum class StackFinding { kNothing, kSignalFrameIntoWindow, kReturnIntoStaleTrampoline };

// What the threads' stacks hold, above where each stands now:
// - a thread interrupted inside a window by a signal whose handler is still running resumes from
//   the context saved in that handler's signal frame, which the round did not see (it saw the
//   handler);
// - a thread running a handler called from a stale trampoline (Site::stale_trampolines) has a
//   return address into it. A stale word that merely looks like one only makes us wait.
// `maps`: the mappings as read before the batch's int3s went in (parsing them now would call
// libc functions that may trap); read again only for a stack pointer that none of them holds.
StackFinding scan_stacks(const std::vector<uint64_t> &stack_pointers, const RoundContext &c,
                         Result<std::vector<os::Mapping>> maps) {
  constexpr size_t kScan = 64 * 1024;  // a handler's own frames, then its signal frame
  auto holds = [&](uint64_t sp) {
    return maps && std::any_of(maps->begin(), maps->end(),
                               [&](const os::Mapping &m) { return sp >= m.start && sp < m.end; });
  };
  if (!std::all_of(stack_pointers.begin(), stack_pointers.end(), holds)) maps = os::read_mappings();
  for (uint64_t sp : stack_pointers) {
    size_t len = kScan;
    if (maps)
      for (const auto &m : *maps)
        if (sp >= m.start && sp < m.end) len = std::min<size_t>(kScan, m.end - sp);
    auto stack = os::read_memory(sp, len);
    if (arch::signal_frame_in_windows(stack, sp, c.moves, os::signal_return_address()))
      return StackFinding::kSignalFrameIntoWindow;
    if (!c.stale.empty())
      for (size_t off = 0; off + 8 <= stack.size(); off += 8) {
        uint64_t word;
        std::memcpy(&word, stack.data() + off, 8);
        if (in_ranges(word, c.stale)) return StackFinding::kReturnIntoStaleTrampoline;
      }
  }
  return StackFinding::kNothing;
}

}  // namespace

Result<void> install(const std::vector<Site *> &sites) {
  // The batch's new trampolines (arch::prepare_site wrote them with code_space()'s write_later:
  // os::write_code_later).
  if (auto ok = os::flush_code(); !ok) return ok;
  if (sites.empty()) return {};
  // Every patch starts with an int3, and a thread that executes an int3 while it blocks SIGTRAP
  // is killed by the kernel (a blocked synchronous trap is fatal). The interposed mask calls keep
  // SIGTRAP unblocked for the program (os/linux/signal_guard.h), so a thread found blocking it
  // here did so where usprobe could not see: before libusprobe was loaded into a running
  // process, by a raw system call, or inside glibc (which blocks every signal for a moment in
  // pthread_create and while a thread exits). Refuse rather than risk it; only a thread that
  // keeps SIGTRAP blocked across 20 ms of looking counts. Threads created later start with
  // SIGTRAP unblocked (they inherit the real mask), and their mask calls go through the
  // interposer, so this check need not follow them.
  auto blocking = os::threads_blocking(SIGTRAP);
  for (int tries = 0; !blocking.empty() && tries < 20; ++tries) {
    timespec ms{0, 1000 * 1000};
    nanosleep(&ms, nullptr);
    auto again = os::threads_blocking(SIGTRAP);
    std::erase_if(blocking, [&](int tid) {
      return std::find(again.begin(), again.end(), tid) == again.end();
    });
  }
  if (!blocking.empty())
    return fail(EAGAIN, fmt::format("thread {} of this process blocks SIGTRAP, and placing a probe "
                                    "needs an int3 (which would kill that thread); not patching",
                                    blocking.front()));
  std::vector<site_table::Entry> entries;
  for (Site *s : sites)
    entries.push_back({s->addr, s->plan.trampoline, s->file.dev, s->file.ino, s->file_offset});
  site_table::insert(entries);

  // Alone in the process (a launched command's agent, before main), nothing can see a site
  // half-written but this thread, and it is in the kernel while each write lands: every patch goes
  // out whole, with no int3 first, no thread round and no call trapping meanwhile (the int3s would
  // stand while this thread runs libc, whose functions may be among the probed: a trap each).
  if (os::only_thread()) {
    if (auto ok = write_all(sites, 0, SIZE_MAX, &arch::SitePlan::patch); !ok) return ok;
    os::membarrier_sync_core();
    for (Site *s : sites) s->patched = true;
    return {};
  }

  std::vector<Site *> jumps;
  for (Site *s : sites)
    if (s->plan.jump) jumps.push_back(s);
  Result<std::vector<os::Mapping>> maps_before =
      jumps.empty() ? Result<std::vector<os::Mapping>>() : os::read_mappings();

  if (auto ok = write_traps(sites); !ok) return ok;
  os::membarrier_sync_core();

  if (!jumps.empty()) {
    // No thread can enter a window now (its first byte traps), but one may be stopped inside it.
    RoundContext ctx;
    for (Site *s : jumps) {
      ctx.moves.push_back({s->addr, s->plan.window_length, s->plan.window_copy,
                           s->plan.window_map.data(), s->plan.window_map.size()});
      ctx.stale.insert(ctx.stale.end(), s->stale_trampolines.begin(), s->stale_trampolines.end());
    }
    std::string why;
    // A thread inside a stale trampoline leaves it within a handler's run; wait for that (new
    // threads cannot enter one: the site table already sends traps to the new trampoline), up to
    // about 50 ms before settling for the int3 path.
    for (int attempt = 0;; ++attempt) {
      ctx.thread_in_stale.store(false, std::memory_order_relaxed);
      auto round = os::run_thread_round(round_move, round_pc_safe, &ctx);
      if (!round) {
        why = round.error().message;
        break;
      }
      if (round->unreached > 0) {
        why = fmt::format(
            "{} thread(s) did not answer usprobe's signal, so the window could not be checked",
            round->unreached);
        break;
      }
      StackFinding found = scan_stacks(round->stack_pointers, ctx, maps_before);
      if (found == StackFinding::kSignalFrameIntoWindow) {
        why = "a thread's signal handler interrupted it inside the window and has not returned";
        break;
      }
      bool stale = ctx.thread_in_stale.load(std::memory_order_relaxed) ||
                   found == StackFinding::kReturnIntoStaleTrampoline;
      if (!stale) break;
      if (attempt == 200) {
        why =
            "a thread stayed inside the trampoline of this site's previous int3 patch, which "
            "returns into the jump's window";
        break;
      }
      timespec wait{0, 250 * 1000};
      nanosleep(&wait, nullptr);
    }
    if (!why.empty()) {
      for (Site *s : jumps) {
        s->plan.jump = false;
        s->plan.int3_reason = why;
        s->plan.patch.assign(1, arch::trap_byte());
        s->plan.original.resize(1);
      }
      jumps.clear();
    }
  }
  if (!jumps.empty()) {
    if (auto ok = write_all(jumps, 1, SIZE_MAX, &arch::SitePlan::patch); !ok) return ok;
    os::membarrier_sync_core();
    if (auto ok = write_all(jumps, 0, 1, &arch::SitePlan::patch); !ok) return ok;
    os::membarrier_sync_core();
  }
  for (Site *s : sites) s->patched = true;
  return {};
}

Result<void> remove(const std::vector<Site *> &all) {
  std::vector<Site *> sites;
  for (Site *s : all)
    if (s->patched) sites.push_back(s);
  if (sites.empty()) return {};
  std::vector<Site *> jumps;
  std::vector<uint64_t> addrs;
  for (Site *s : sites) {
    addrs.push_back(s->addr);
    if (s->plan.jump) jumps.push_back(s);
  }
  if (!jumps.empty()) {
    if (auto ok = write_traps(jumps); !ok) return ok;
    os::membarrier_sync_core();
    if (auto ok = write_all(jumps, 1, SIZE_MAX, &arch::SitePlan::original); !ok) return ok;
    os::membarrier_sync_core();
  }
  if (auto ok = write_all(sites, 0, 1, &arch::SitePlan::original); !ok) return ok;
  os::membarrier_sync_core();
  for (Site *s : sites) s->patched = false;
  site_table::remove(addrs);
  return {};
}

}  // namespace usprobe::patcher
