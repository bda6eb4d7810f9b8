#include "target/signal_masks.h"

#include <dirent.h>
#include <fmt/format.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "target/ptrace.h"

namespace usprobe::cli {
namespace {

constexpr std::chrono::milliseconds kSeizeTimeout{2000};

// The SigBlk mask of thread `tid`; nullopt when it is gone.
std::optional<uint64_t> blocked_mask(pid_t pid, pid_t tid) {
  std::ifstream status(fmt::format("/proc/{}/task/{}/status", pid, tid));
  std::string line;
  while (std::getline(status, line))
    if (line.starts_with("SigBlk:")) return std::strtoull(line.c_str() + 7, nullptr, 16);
  return std::nullopt;
}

constexpr std::chrono::milliseconds kHandlerWait{100};

// Seizes `tid` and takes `remove` out of its mask, or puts `add` into it; the signals that changed
// (0 when none did, or the thread is gone). While the thread's mask holds any of `busy` (it runs a
// handler that blocks them), up to kHandlerWait, it is let go and seized again.
Result<uint64_t> change(pid_t pid, pid_t tid, uint64_t remove, uint64_t add, uint64_t busy = 0) {
  const auto give_up = std::chrono::steady_clock::now() + kHandlerWait;
  for (;;) {
    auto thread = SeizedThread::seize(pid, tid, kSeizeTimeout);
    if (!thread) {
      if (thread.error().code == ESRCH) return 0;  // it exited meanwhile
      return std::unexpected(thread.error());
    }
    auto mask = (*thread)->signal_mask();
    if (!mask) return std::unexpected(mask.error());
    if ((*mask & busy) && std::chrono::steady_clock::now() < give_up) {
      if (auto ok = (*thread)->release(); !ok) return std::unexpected(ok.error());
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    uint64_t changed = (*mask & remove) | (~*mask & add);
    if (changed == 0) return 0;  // released by the destructor
    if (auto ok = (*thread)->set_signal_mask((*mask & ~remove) | add); !ok)
      return std::unexpected(ok.error());
    if (auto ok = (*thread)->release(); !ok) return std::unexpected(ok.error());
    return changed;
  }
}

}  // namespace

std::vector<pid_t> threads_blocking(pid_t pid, uint64_t signals) {
  std::vector<pid_t> out;
  DIR *dir = ::opendir(fmt::format("/proc/{}/task", pid).c_str());
  if (!dir) return out;
  while (dirent *e = ::readdir(dir)) {
    char *end = nullptr;
    long tid = std::strtol(e->d_name, &end, 10);
    if (tid <= 0 || *end != '\0') continue;
    auto mask = blocked_mask(pid, static_cast<pid_t>(tid));
    if (mask && (*mask & signals)) out.push_back(static_cast<pid_t>(tid));
  }
  ::closedir(dir);
  return out;
}

Result<std::vector<MaskChange>> unblock_signals(pid_t pid, uint64_t signals) {
  std::vector<MaskChange> changes;
  for (pid_t tid : threads_blocking(pid, signals)) {
    auto changed = change(pid, tid, signals, 0);
    if (!changed) {
      block_again(pid, changes);
      return std::unexpected(changed.error());
    }
    if (*changed) changes.push_back({tid, *changed, signals});
  }
  return changes;
}

size_t block_again(pid_t pid, const std::vector<MaskChange> &changes) {
  size_t n = 0;
  for (const MaskChange &c : changes) {
    auto changed = change(pid, c.tid, 0, c.signals, c.session);
    if (changed && *changed) ++n;
  }
  return n;
}

}  // namespace usprobe::cli
