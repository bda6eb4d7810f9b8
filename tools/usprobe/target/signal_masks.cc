#include "target/signal_masks.h"

#include <dirent.h>
#include <fmt/format.h>
#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>

#include "target/ptrace.h"

namespace usprobe::cli {
namespace {

constexpr uint64_t kTrapBit = uint64_t{1} << (SIGTRAP - 1);
constexpr std::chrono::milliseconds kSeizeTimeout{2000};

// The SigBlk mask of thread `tid`; nullopt when it is gone.
std::optional<uint64_t> blocked_mask(pid_t pid, pid_t tid) {
  std::ifstream status(fmt::format("/proc/{}/task/{}/status", pid, tid));
  std::string line;
  while (std::getline(status, line))
    if (line.starts_with("SigBlk:")) return std::strtoull(line.c_str() + 7, nullptr, 16);
  return std::nullopt;
}

// Seizes `tid` and, if its mask has SIGTRAP as `blocked` says it should not, flips that bit.
// True when the mask was changed; false when there was nothing to change or the thread is gone.
Result<bool> flip(pid_t pid, pid_t tid, bool block) {
  auto thread = SeizedThread::seize(pid, tid, kSeizeTimeout);
  if (!thread) {
    if (thread.error().code == ESRCH) return false;  // it exited meanwhile
    return std::unexpected(thread.error());
  }
  auto mask = (*thread)->signal_mask();
  if (!mask) return std::unexpected(mask.error());
  bool has = (*mask & kTrapBit) != 0;
  if (has == block) return false;
  if (auto ok = (*thread)->set_signal_mask(block ? *mask | kTrapBit : *mask & ~kTrapBit); !ok)
    return std::unexpected(ok.error());
  if (auto ok = (*thread)->release(); !ok) return std::unexpected(ok.error());
  return true;
}

}  // namespace

std::vector<pid_t> threads_blocking_sigtrap(pid_t pid) {
  std::vector<pid_t> out;
  DIR *dir = ::opendir(fmt::format("/proc/{}/task", pid).c_str());
  if (!dir) return out;
  while (dirent *e = ::readdir(dir)) {
    char *end = nullptr;
    long tid = std::strtol(e->d_name, &end, 10);
    if (tid <= 0 || *end != '\0') continue;
    auto mask = blocked_mask(pid, static_cast<pid_t>(tid));
    if (mask && (*mask & kTrapBit)) out.push_back(static_cast<pid_t>(tid));
  }
  ::closedir(dir);
  return out;
}

Result<std::vector<pid_t>> unblock_sigtrap(pid_t pid) {
  std::vector<pid_t> changed;
  for (pid_t tid : threads_blocking_sigtrap(pid)) {
    auto flipped = flip(pid, tid, false);
    if (!flipped) {
      block_sigtrap_again(pid, changed);
      return std::unexpected(flipped.error());
    }
    if (*flipped) changed.push_back(tid);
  }
  return changed;
}

size_t block_sigtrap_again(pid_t pid, const std::vector<pid_t> &tids) {
  size_t n = 0;
  for (pid_t tid : tids) {
    auto flipped = flip(pid, tid, true);
    if (flipped && *flipped) ++n;
  }
  return n;
}

}  // namespace usprobe::cli
