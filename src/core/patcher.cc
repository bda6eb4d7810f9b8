#include "core/patcher.h"

#include <signal.h>

#include <fmt/format.h>

#include "core/site_table.h"
#include "os/linux/code_memory.h"
#include "os/linux/membarrier.h"
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

void round_move(ucontext_t *uc, void *arg) {
  auto *moves = static_cast<std::vector<arch::WindowMove> *>(arg);
  arch::move_out_of_windows(uc, *moves);
}
bool round_pc_safe(uint64_t pc, void *arg) {
  return arch::pc_outside_windows(pc, *static_cast<std::vector<arch::WindowMove> *>(arg));
}

}  // namespace

Result<void> install(const std::vector<Site *> &sites) {
  if (sites.empty()) return {};
  // Every patch starts with an int3, and a thread that executes an int3 while it blocks SIGTRAP
  // is killed by the kernel (a blocked synchronous trap is fatal). Refuse rather than risk it.
  if (auto blocking = os::threads_blocking(SIGTRAP); !blocking.empty())
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
    if (!round || round->unreached > 0) {
      std::string why = round ? fmt::format(
                                    "{} thread(s) did not answer usprobe's signal, so the "
                                    "window could not be checked",
                                    round->unreached)
                              : round.error().message;
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
