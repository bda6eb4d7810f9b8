#include "core/retire.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "core/arch.h"
#include "core/os.h"
#include "core/return_stack.h"
#include "core/thread_record.h"

namespace usprobe::retire {
namespace {

bool in(uint64_t x, const std::vector<Range> &code) {
  return std::any_of(code.begin(), code.end(),
                     [x](const Range &r) { return x >= r.first && x < r.second; });
}

struct Round {
  const std::vector<Range> *code;
  std::atomic<bool> inside{false};  // a signalled thread stopped inside `code`
};

uint64_t look(ucontext_t *uc, void *arg) {
  auto *r = static_cast<Round *>(arg);
  if (in(arch::interrupted_pc(uc), *r->code)) r->inside.store(true, std::memory_order_relaxed);
  return arch::interrupted_sp(uc);
}
bool outside(uint64_t pc, void *arg) {
  return !in(pc, *static_cast<Round *>(arg)->code);
}

// Point 1. Return stacks are written by their owners only, in their TLS (ThreadReturns), read
// here by a copy that fails safely where the owner has just exited. A stale read can only show an
// instance that is gone (the caller waits for nothing), never hide one pushed before the grace
// period (the grace period's barriers order it before this read).
bool return_stacks_clear(const std::vector<Range> &code, const std::vector<const Probe *> &probes) {
  for (ThreadRecord *r = all_records(); r; r = r->next) {
    const pid_t tid = r->tid.load(std::memory_order_acquire);
    if (tid == 0 || os::thread_exited(tid)) continue;
    const ThreadReturns *owner = r->owner_returns.load(std::memory_order_acquire);
    if (!owner) continue;
    const std::vector<uint8_t> top_bytes =
        os::read_memory(reinterpret_cast<uint64_t>(&owner->return_top), sizeof(uint32_t));
    if (top_bytes.size() != sizeof(uint32_t)) continue;  // the owner is gone
    uint32_t top;
    std::memcpy(&top, top_bytes.data(), sizeof top);
    for (uint32_t i = 0; i < top && i < r->return_depth; ++i) {
      const ReturnInstance &inst = r->returns[i];
      const uint64_t landing =
          std::atomic_ref<const uint64_t>(inst.landing).load(std::memory_order_relaxed);
      const Probe *p =
          std::atomic_ref<const Probe *const>(inst.probe).load(std::memory_order_relaxed);
      if (in(landing, code) || std::find(probes.begin(), probes.end(), p) != probes.end())
        return false;
    }
  }
  return true;
}

// Threads' stacks (from each stack pointer up, as far as its mapping goes, kStackScan at most),
// as os::read_memory gives them: (address, bytes).
std::vector<std::pair<uint64_t, std::vector<uint8_t>>> read_stacks(
    const std::vector<uint64_t> &stack_pointers) {
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> stacks;
  auto maps = os::read_mappings();
  for (uint64_t sp : stack_pointers) {
    size_t len = kStackScan;
    if (maps)
      for (const os::Mapping &m : *maps)
        if (sp >= m.start && sp < m.end) len = std::min<size_t>(kStackScan, m.end - sp);
    const uint64_t at = sp & ~uint64_t{7};
    stacks.emplace_back(at, os::read_memory(at, len));
  }
  return stacks;
}

// Point 3.
bool stacks_clear(const std::vector<uint64_t> &stack_pointers, const std::vector<Range> &code) {
  for (const auto &[at, stack] : read_stacks(stack_pointers))
    for (size_t off = 0; off + 8 <= stack.size(); off += 8) {
      uint64_t word;
      std::memcpy(&word, stack.data() + off, 8);
      if (in(word, code)) return false;
    }
  return true;
}

uint64_t restart_counter_window(ucontext_t *uc, void *arg) {
  return arch::move_out_of_windows(uc, *static_cast<std::span<const arch::WindowMove> *>(arg));
}
bool outside_counter_windows(uint64_t pc, void *arg) {
  return arch::pc_outside_windows(pc, *static_cast<std::span<const arch::WindowMove> *>(arg));
}

}  // namespace

bool counter_windows_clear(std::span<const arch::WindowMove> windows) {
  if (windows.empty()) return true;
  auto r = os::run_thread_round(restart_counter_window, outside_counter_windows, &windows);
  if (!r || r->unreached > 0) return false;
  for (const auto &[at, stack] : read_stacks(r->stack_pointers))
    if (arch::signal_frame_in_windows(stack, at, windows, os::signal_return_address()))
      return false;
  return true;
}

bool idle(const std::vector<Range> &code, const std::vector<const Probe *> &probes) {
  if (!return_stacks_clear(code, probes)) return false;
  Round round{&code};
  auto r = os::run_thread_round(look, outside, &round);
  if (!r || r->unreached > 0 || round.inside.load(std::memory_order_relaxed)) return false;
  return stacks_clear(r->stack_pointers, code);
}

}  // namespace usprobe::retire
