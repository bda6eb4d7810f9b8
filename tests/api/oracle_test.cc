// The kernel as an oracle: the same deterministic workload is counted once by a kernel uprobe
// (perf_event_open on the "uprobe" PMU) and once by usprobe's built-in counter, on the same
// instruction, and the counts must be equal. Never both at once on one site: a kernel uprobe's
// int3 is in the code while it is open, and usprobe refuses code that differs from the file.
//
// What the oracle adds over "N calls, N hits": for a libc function the count includes the calls
// libc makes internally (atoi calls strtol, snprintf's %s calls strlen), which no test can predict
// but both counters must agree on; and a kernel uprobe, opened again after usprobe detached, checks
// that usprobe left the code exactly as the kernel expects it.
//
// Skipped, with the reason, where perf_event_open is refused (perf_event_paranoid, seccomp, no
// uprobe PMU).
#include <dlfcn.h>

#include <atomic>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "support/kernel_uprobe.h"
#include "targets/targets.h"
#include "usprobe/usprobe.h"

namespace {

using usprobe::test::file_location_of;
using usprobe::test::KernelUprobe;

// The counts are read while the workload's threads are still alive (`measure` runs after they
// finished their calls but before they exit): a kernel counter inherited by a thread is folded into
// its parent's only late in the thread's exit, after pthread_join has already returned, so a
// count read right after join can miss part of an exiting thread's hits.
using Measure = std::function<void()>;
using Workload = std::function<void(const Measure &)>;

void in_threads(int nthreads, const std::function<void(int)> &body, const Measure &measure) {
  std::atomic<int> done{0};
  std::atomic<bool> release{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < nthreads; ++t)
    threads.emplace_back([&, t] {
      body(t);
      done.fetch_add(1);
      release.wait(false);
    });
  while (done.load() < nthreads) std::this_thread::yield();
  measure();
  release.store(true);
  release.notify_all();
  for (auto &th : threads) th.join();
}

// A deterministic workload: `calls` calls of fn(i) spread over `nthreads` new threads (the last
// takes the remainder). Adds the number of wrong results to `wrong`.
void counted_workload(long (*fn)(long), long calls, int nthreads, std::atomic<long> &wrong,
                      const Measure &measure) {
  const long each = calls / nthreads;
  in_threads(
      nthreads,
      [&](int t) {
        const long n = t == nthreads - 1 ? calls - each * (nthreads - 1) : each;
        for (long i = 0; i < n; ++i)
          if (fn(i) != i + 1) ++wrong;
      },
      measure);
}

struct Counts {
  uint64_t kernel = 0;        // kernel uprobe, first run
  uint64_t usprobe = 0;       // usprobe's counter
  uint64_t kernel_after = 0;  // kernel uprobe again, after usprobe detached
  std::string usprobe_name;
  bool int3 = false;
};

// Counts `workload` with a kernel uprobe at (path, offset), then with usprobe at `location`, then
// with the kernel again. Skips the test (returns false) when the kernel refuses the uprobe.
bool count_both_ways(const std::string &path, uint64_t offset, const std::string &location,
                     unsigned flags, const Workload &workload, Counts &out,
                     std::string &skip_reason) {
  {
    auto kernel = KernelUprobe::open(path, offset);
    if (!kernel) {
      skip_reason = kernel.error();
      return false;
    }
    const uint64_t before = kernel->count();
    workload([&] { out.kernel = kernel->count() - before; });
  }  // closed: the kernel's int3 is gone

  usprobe_link *link = nullptr;
  if (usprobe_attach_ex(location.c_str(), nullptr, flags, &link) < 0) {
    ADD_FAILURE() << "usprobe_attach_ex(" << location << "): " << usprobe_last_error();
    return true;
  }
  out.usprobe_name = usprobe_link_name(link);
  out.int3 = usprobe_link_uses_int3(link) != 0;
  const uint64_t before = usprobe_link_hits(link);
  workload([&] { out.usprobe = usprobe_link_hits(link) - before; });
  EXPECT_EQ(usprobe_detach(link), 0) << usprobe_last_error();

  auto kernel = KernelUprobe::open(path, offset);
  if (!kernel) {
    ADD_FAILURE() << "the kernel uprobe worked before usprobe attached, not after: "
                  << kernel.error();
    return true;
  }
  const uint64_t again = kernel->count();
  workload([&] { out.kernel_after = kernel->count() - again; });
  std::printf("%s (%s path): kernel uprobe %" PRIu64 ", usprobe %" PRIu64
              ", kernel uprobe after detach %" PRIu64 "\n",
              out.usprobe_name.c_str(), out.int3 ? "int3" : "jump", out.kernel, out.usprobe,
              out.kernel_after);
  return true;
}

// The file and offset of a function of this process, for the kernel uprobe.
usprobe::test::FileLocation location_of(const void *addr) {
  auto where = file_location_of(addr);
  EXPECT_TRUE(where.has_value()) << (where ? "" : where.error());
  return where ? *where : usprobe::test::FileLocation{};
}

constexpr long kCountedCalls = 12345;
constexpr int kThreads = 3;

TEST(Oracle, CountedAcrossThreadsMatchesKernelUprobe) {
  auto where = location_of(reinterpret_cast<const void *>(&tgt_counted));
  std::atomic<long> wrong{0};
  Counts c;
  std::string skip;
  if (!count_both_ways(
          where.path, where.offset, "libusprobe_targets.so:tgt_counted", 0,
          [&](const Measure &m) {
            counted_workload(tgt_counted, kCountedCalls, kThreads, wrong, m);
          },
          c, skip))
    GTEST_SKIP() << "kernel uprobes unavailable: " << skip;
  EXPECT_EQ(wrong, 0);
  EXPECT_FALSE(c.int3);
  EXPECT_EQ(c.kernel, static_cast<uint64_t>(kCountedCalls));
  EXPECT_EQ(c.usprobe, c.kernel);
  EXPECT_EQ(c.kernel_after, c.kernel);
}

TEST(Oracle, Int3PathMatchesKernelUprobe) {
  auto where = location_of(reinterpret_cast<const void *>(&tgt_counted));
  std::atomic<long> wrong{0};
  Counts c;
  std::string skip;
  if (!count_both_ways(
          where.path, where.offset, "libusprobe_targets.so:tgt_counted", USPROBE_FORCE_INT3,
          [&](const Measure &m) {
            counted_workload(tgt_counted, kCountedCalls, kThreads, wrong, m);
          },
          c, skip))
    GTEST_SKIP() << "kernel uprobes unavailable: " << skip;
  EXPECT_EQ(wrong, 0);
  EXPECT_TRUE(c.int3) << "USPROBE_FORCE_INT3 was not honoured";
  EXPECT_EQ(c.kernel, static_cast<uint64_t>(kCountedCalls));
  EXPECT_EQ(c.usprobe, c.kernel);
  EXPECT_EQ(c.kernel_after, c.kernel);
}

// An instruction probe: the kernel uprobe at the file offset of tgt_counted_mid+0x7.
TEST(Oracle, InstructionSiteMatchesKernelUprobe) {
  const auto *site =
      reinterpret_cast<const uint8_t *>(&tgt_counted_mid) + tgt_counted_mid_site_offset;
  auto where = location_of(site);
  char location[128];
  std::snprintf(location, sizeof location, "libusprobe_targets.so:tgt_counted_mid+%#" PRIx64,
                tgt_counted_mid_site_offset);
  std::atomic<long> wrong{0};
  Counts c;
  std::string skip;
  if (!count_both_ways(
          where.path, where.offset, location, 0,
          [&](const Measure &m) {
            counted_workload(tgt_counted_mid, kCountedCalls, kThreads, wrong, m);
          },
          c, skip))
    GTEST_SKIP() << "kernel uprobes unavailable: " << skip;
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(c.kernel, static_cast<uint64_t>(kCountedCalls));
  EXPECT_EQ(c.usprobe, c.kernel);
  EXPECT_EQ(c.kernel_after, c.kernel);
}

// libc functions through the same path the program uses: dlsym gives the address a call reaches
// (for an IFUNC, the implementation the dynamic linker chose), file_location_of its file offset.
void *libc_symbol(const char *name) {
  void *handle = dlopen("libc.so.6", RTLD_NOLOAD | RTLD_LAZY);
  void *addr = handle ? dlsym(handle, name) : nullptr;
  if (handle) dlclose(handle);
  return addr;
}

// strtol called directly, and through atoi (which calls strtol inside libc), in two threads.
TEST(Oracle, LibcStrtolWithInternalCallersMatchesKernelUprobe) {
  void *strtol_addr = libc_symbol("strtol");
  ASSERT_NE(strtol_addr, nullptr);
  auto where = location_of(strtol_addr);
  long (*volatile strtol_fn)(const char *, char **, int) = &strtol;
  int (*volatile atoi_fn)(const char *) = &atoi;
  std::atomic<long> wrong{0};
  auto workload = [&](const Measure &measure) {
    in_threads(
        2,
        [&](int t) {
          const int base = t == 0 ? 1000 : 50000;
          char text[32];
          for (int i = 0; i < 1000; ++i) {
            std::snprintf(text, sizeof text, "%d", base + i);
            if (strtol_fn(text, nullptr, 10) != base + i) ++wrong;
            if (i % 2 == 0 && atoi_fn(text) != base + i) ++wrong;
          }
        },
        measure);
  };
  Counts c;
  std::string skip;
  if (!count_both_ways(where.path, where.offset, "libc:strtol", 0, workload, c, skip))
    GTEST_SKIP() << "kernel uprobes unavailable: " << skip;
  EXPECT_EQ(wrong, 0);
  EXPECT_GE(c.kernel, 3000u) << "2 threads x (1000 strtol + 500 atoi)";
  EXPECT_EQ(c.usprobe, c.kernel);
  EXPECT_EQ(c.kernel_after, c.kernel);
}

// strlen is an IFUNC: both probes go on the implementation this process calls. snprintf's %s and
// strdup call it from inside libc.
TEST(Oracle, LibcStrlenImplementationMatchesKernelUprobe) {
  void *strlen_addr = libc_symbol("strlen");
  ASSERT_NE(strlen_addr, nullptr);
  auto where = location_of(strlen_addr);
  size_t (*volatile strlen_fn)(const char *) = &strlen;
  long wrong = 0;
  auto workload = [&](const Measure &measure) {
    char text[64];
    for (int i = 0; i < 2000; ++i) {
      std::snprintf(text, sizeof text, "%s-%d", "word", i);
      if (strlen_fn(text) != std::strlen(text)) ++wrong;
      char *copy = strdup(text);
      free(copy);
    }
    measure();
  };
  Counts c;
  std::string skip;
  if (!count_both_ways(where.path, where.offset, "libc:strlen", 0, workload, c, skip))
    GTEST_SKIP() << "kernel uprobes unavailable: " << skip;
  EXPECT_EQ(wrong, 0);
  EXPECT_GE(c.kernel, 2000u);
  EXPECT_EQ(c.usprobe, c.kernel);
  EXPECT_EQ(c.kernel_after, c.kernel);
}

}  // namespace
