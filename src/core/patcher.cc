#include "core/patcher.h"

#include <signal.h>
#include <time.h>

#include <algorithm>

#include <fmt/format.h>

#include "core/site_table.h"
#include "os/linux/code_memory.h"
#include "os/linux/membarrier.h"
#include "os/linux/proc_maps.h"
#include "os/linux/thread_round.h"

namespace usprobe::patcher {
namespace {

Result<void> write_all(const std::vector<Site *> &sites, size_t from, size_t to,
                       const std::vector<uint8_t> arch::SitePlan::*bytes) {
  for (Site *s : sites) {
    const std::vector<uint8_t> &b = s->plan.*bytes;
    size_t end = std::min(to, b.size());
    if (from >= end) continue;
    auto ok = os::write_code(s->addr + from, std::span(b).subspan(from, end - from));
    if (!ok) return ok;
  }
  return {};
}

uint64_t round_move(ucontext_t *uc, void *arg) {
  auto *moves = static_cast<std::vector<arch::WindowMove> *>(arg);
  return arch::move_out_of_windows(uc, *moves);
}

// A thread interrupted inside a window by a signal whose handler is still running resumes from
// the context saved in that handler's signal frame, which the round did not see (it saw the
// handler). Look for such frames on every thread's stack, above where it stands now.
bool some_thread_returns_into_a_window(const std::vector<uint64_t> &stack_pointers,
                                       const std::vector<arch::WindowMove> &moves) {
  constexpr size_t kScan = 64 * 1024;  // a handler's own frames, then its signal frame
  auto maps = os::read_mappings();
  for (uint64_t sp : stack_pointers) {
    size_t len = kScan;
    if (maps)
      for (const auto &m : *maps)
        if (sp >= m.start && sp < m.end) len = std::min<size_t>(kScan, m.end - sp);
    auto stack = os::read_memory(sp, len);
    if (arch::signal_frame_in_windows(stack, sp, moves)) return true;
  }
  return false;
}
bool round_pc_safe(uint64_t pc, void *arg) {
  return arch::pc_outside_windows(pc, *static_cast<std::vector<arch::WindowMove> *>(arg));
}

}  // namespace

Result<void> install(const std::vector<Site *> &sites) {
  if (sites.empty()) return {};
  // Every patch starts with an int3, and a thread that executes an int3 while it blocks SIGTRAP
  // is killed by the kernel (a blocked synchronous trap is fatal). Refuse rather than risk it.
  // glibc blocks every signal for a moment in pthread_create and while a thread exits, so only a
  // thread that keeps SIGTRAP blocked across 20 ms of looking counts.
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
  std::vector<std::pair<uint64_t, uint64_t>> entries;
  for (Site *s : sites) entries.emplace_back(s->addr, s->plan.trampoline);
  site_table::insert(entries);

  std::vector<uint8_t> trap(1, arch::trap_byte());
  for (Site *s : sites)
    if (auto ok = os::write_code(s->addr, trap); !ok) return ok;
  os::membarrier_sync_core();

  std::vector<Site *> jumps;
  for (Site *s : sites)
    if (s->plan.jump) jumps.push_back(s);
  if (!jumps.empty()) {
    // No thread can enter a window now (its first byte traps), but one may be stopped inside it.
    std::vector<arch::WindowMove> moves;
    for (Site *s : jumps)
      moves.push_back({s->addr, s->plan.window_length, s->plan.window_copy,
                       s->plan.window_map.data(), s->plan.window_map.size()});
    auto round = os::run_thread_round(round_move, round_pc_safe, &moves);
    std::string why;
    if (!round)
      why = round.error().message;
    else if (round->unreached > 0)
      why = fmt::format(
          "{} thread(s) did not answer usprobe's signal, so the window could not be "
          "checked",
          round->unreached);
    else if (some_thread_returns_into_a_window(round->stack_pointers, moves))
      why = "a thread's signal handler interrupted it inside the window and has not returned";
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
    std::vector<uint8_t> trap(1, arch::trap_byte());
    for (Site *s : jumps)
      if (auto ok = os::write_code(s->addr, trap); !ok) return ok;
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
