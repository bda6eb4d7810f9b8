// The agent's operator new and delete (agent/alloc.cc), linked into this binary as into the agent:
// every allocation of these tests, GoogleTest's included, goes through it. Blocks of every class
// and of malloc's size keep what was written to them while others come and go, in four threads at
// once and across a fork made while they allocate.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

// Allocates and frees blocks of random sizes (up to 40 KiB: past the largest class), each filled
// with a pattern of its own; returns how many blocks had lost their pattern when freed.
int churn(uint32_t seed, int rounds) {
  std::mt19937 rng(seed);
  std::vector<std::pair<std::unique_ptr<uint8_t[]>, size_t>> live;
  int wrong = 0;
  auto check_and_drop = [&](size_t i) {
    auto &[p, n] = live[i];
    for (size_t k = 0; k < n; ++k)
      if (p[k] != static_cast<uint8_t>(n + k)) {
        ++wrong;
        break;
      }
    live[i] = std::move(live.back());
    live.pop_back();
  };
  for (int r = 0; r < rounds; ++r) {
    if (!live.empty() && rng() % 3 == 0) {
      check_and_drop(rng() % live.size());
      continue;
    }
    const size_t n = rng() % 8 == 0 ? rng() % 40000 : rng() % 600;
    std::unique_ptr<uint8_t[]> p(new uint8_t[n]);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p.get()) % 16, 0u);
    for (size_t k = 0; k < n; ++k) p[k] = static_cast<uint8_t>(n + k);
    live.emplace_back(std::move(p), n);
  }
  while (!live.empty()) check_and_drop(live.size() - 1);
  return wrong;
}

TEST(AgentAlloc, BlocksKeepTheirContentsAcrossThreads) {
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < 4; ++t)
    threads.emplace_back([&wrong, t] { wrong += churn(t + 1, 200000); });
  for (auto &t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

// A fork while other threads allocate: the child allocates and frees in turn (it would hang on a
// lock inherited held), and its blocks keep their contents.
TEST(AgentAlloc, AForkWhileOthersAllocateLeavesTheChildAllocating) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < 3; ++t)
    threads.emplace_back([&stop, t] {
      for (uint32_t r = 0; !stop.load(); ++r) churn(100 + t + r, 2000);
    });
  for (int f = 0; f < 50; ++f) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const int wrong = churn(7, 5000);
      std::string s(100, 'x');
      s += std::to_string(wrong);
      _exit(wrong == 0 && s.size() == 101 ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "fork " << f;
  }
  stop = true;
  for (auto &t : threads) t.join();
}

}  // namespace
