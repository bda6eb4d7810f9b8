// core/patcher.h on code this test owns: functions of this binary (below), planned with
// arch::prepare_site as the registry plans a site, installed and removed by the patcher alone (no
// registry). What a user would notice: while installed, the site holds exactly the plan's patch
// (on the int3 path, the trap byte) and the function still computes its result, through its
// trampoline, which counts each call; once removed, the original bytes are back byte for byte and
// nothing counts; a batch patches and unpatches every site; and a batch refused (a thread blocks
// SIGTRAP, which an int3 would kill) writes nothing at all.
#include "core/patcher.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/arch.h"
#include "core/code_space.h"
#include "core/counters.h"
#include "core/mapping_table.h"
#include "core/os.h"
#include "core/probe.h"
#include "core/rcu.h"
#include "core/site_table.h"

// pt_add_one(x) = x + 1 and pt_times_two(x) = 2x, with exact bytes: a 5-byte jump at the entry
// covers push, mov and the lea (whole instructions), and nothing branches into them.
asm(R"(
  .text
  .globl pt_add_one
  .type pt_add_one, @function
  .p2align 4
pt_add_one:
  push %rbp
  mov %rsp, %rbp
  lea 1(%rdi), %rax
  pop %rbp
  ret
  .globl pt_add_one_end
pt_add_one_end:
  .size pt_add_one, .-pt_add_one
  int3; int3; int3; int3; int3; int3; int3; int3

  .globl pt_times_two
  .type pt_times_two, @function
  .p2align 4
pt_times_two:
  push %rbp
  mov %rsp, %rbp
  lea (%rdi,%rdi), %rax
  pop %rbp
  ret
  .globl pt_times_two_end
pt_times_two_end:
  .size pt_times_two, .-pt_times_two
  int3; int3; int3; int3; int3; int3; int3; int3
)");
extern "C" {
long pt_add_one(long x);
long pt_times_two(long x);
extern const uint8_t pt_add_one_end[], pt_times_two_end[];
}

namespace usprobe {
namespace {

// Calls through a volatile pointer: the compiler can neither inline nor fold them.
long (*volatile g_add_one)(long) = pt_add_one;
long (*volatile g_times_two)(long) = pt_times_two;

using Code = std::array<uint8_t, 16>;
Code code_at(const void *fn) {
  Code c;
  std::memcpy(c.data(), fn, c.size());
  return c;
}

// What the registry does once before its first patch: the core sync and the trap handler (an int3
// site sends its trap to the trampoline through the site table), and a mapping table that says
// where this binary is mapped (the site table answers only for a file mapped at the site).
void prepare_process() {
  ASSERT_TRUE(os::membarrier_init());
  ASSERT_TRUE(os::install_trap_handler(site_table::take_trap));
  ASSERT_TRUE(MappingTable::process().update_from_proc());
}

// One probed function: its probe (one built-in counter), its site and plan.
class ProbedFunction {
 public:
  ProbedFunction(const void *fn, const uint8_t *end, bool force_int3)
      : addr_(reinterpret_cast<uint64_t>(fn)),
        bytes_(static_cast<const uint8_t *>(fn), end),
        before_(bytes_) {
    auto slot = counters::alloc_slot();
    if (!slot) {
      error_ = "no counter slot";
      return;
    }
    slot_ = *slot;
    probe_.function_entry = true;
    probe_.no_entry_handlers.store(1);
    probe_.consumers.store(
        ConsumerArray::make({{slot_, nullptr, nullptr, false, nullptr, false, false, {}}}));

    auto maps = os::read_mappings();
    if (!maps) {
      error_ = maps.error().message;
      return;
    }
    for (const os::Mapping &m : *maps)
      if (addr_ >= m.start && addr_ < m.end) {
        site_.file = {m.dev, m.ino};
        site_.file_offset = addr_ - m.start + m.offset;
      }
    arch::SiteRequest req;
    req.site = req.function_addr = addr_;
    req.function = bytes_;
    req.bounds_known = true;
    req.probe = &probe_;
    req.describe = "patcher_test";
    req.file_branch_targets = &no_targets_;
    req.site_file_offset = site_.file_offset;
    req.function_file_offset = site_.file_offset;
    req.force_int3 = force_int3;
    req.force_reason = "forced by the test";
    auto plan = arch::prepare_site(req, code_space());
    if (!plan) {
      error_ = plan.error().message;
      return;
    }
    site_.addr = addr_;
    site_.owner = &probe_;
    site_.plan = std::move(*plan);
    planned_ = true;
  }
  ~ProbedFunction() {
    if (site_.patched) (void)patcher::remove({&site_});
    auto garbage = site_table::take_retired();
    rcu::synchronize();
    for (auto &g : garbage) g();
    if (planned_) arch::release_trampoline(site_.plan, code_space());
    ConsumerArray::destroy(probe_.consumers.load());
    if (error_.empty()) counters::free_slot(slot_);
  }
  ProbedFunction(const ProbedFunction &) = delete;
  ProbedFunction &operator=(const ProbedFunction &) = delete;

  const std::string &error() const { return error_; }
  Site *site() { return &site_; }
  const arch::SitePlan &plan() const { return site_.plan; }
  uint64_t hits() const { return counters::read(slot_).hits; }
  // The bytes at the site now, as many as the patch has.
  std::vector<uint8_t> at_site() const {
    const auto *p = reinterpret_cast<const uint8_t *>(addr_);
    return {p, p + site_.plan.patch.size()};
  }
  bool restored() const {
    const auto *p = reinterpret_cast<const uint8_t *>(addr_);
    return std::equal(before_.begin(), before_.end(), p);
  }

 private:
  uint64_t addr_;
  std::vector<uint8_t> bytes_;
  std::vector<uint8_t> before_;
  std::vector<uint64_t> no_targets_;
  uint32_t slot_ = 0;
  Probe probe_;
  Site site_;
  bool planned_ = false;
  std::string error_;
};

TEST(Patcher, InstalledJumpHoldsThePatchAndTheFunctionComputesThroughItsTrampoline) {
  ASSERT_NO_FATAL_FAILURE(prepare_process());
  ProbedFunction f(reinterpret_cast<const void *>(&pt_add_one), pt_add_one_end, false);
  ASSERT_EQ(f.error(), "");
  ASSERT_TRUE(f.plan().jump) << f.plan().int3_reason;
  EXPECT_EQ(f.plan().patch.size(), 5u);

  ASSERT_TRUE(patcher::install({f.site()}));
  EXPECT_TRUE(f.site()->patched);
  EXPECT_EQ(f.at_site()[0], 0xe9) << "a jmp rel32 at the site";
  EXPECT_EQ(f.at_site(), f.plan().patch);
  EXPECT_EQ(site_table::lookup(f.site()->addr), f.plan().trampoline);
  for (long i = 0; i < 100; ++i) ASSERT_EQ(g_add_one(i), i + 1);
  EXPECT_EQ(f.hits(), 100u) << "each call went through the trampoline";

  ASSERT_TRUE(patcher::remove({f.site()}));
  EXPECT_FALSE(f.site()->patched);
  EXPECT_TRUE(f.restored()) << "the original bytes are back";
  EXPECT_EQ(site_table::lookup(f.site()->addr), 0u);
  for (long i = 0; i < 10; ++i) ASSERT_EQ(g_add_one(i), i + 1);
  EXPECT_EQ(f.hits(), 100u) << "counted after the patch was removed";
}

TEST(Patcher, Int3SiteHoldsTheTrapByteAndTheTrapRunsTheTrampoline) {
  ASSERT_NO_FATAL_FAILURE(prepare_process());
  ProbedFunction f(reinterpret_cast<const void *>(&pt_add_one), pt_add_one_end, true);
  ASSERT_EQ(f.error(), "");
  ASSERT_FALSE(f.plan().jump);
  ASSERT_EQ(f.plan().patch.size(), 1u);

  const Code before = code_at(reinterpret_cast<const void *>(&pt_add_one));
  ASSERT_TRUE(patcher::install({f.site()}));
  const Code now = code_at(reinterpret_cast<const void *>(&pt_add_one));
  EXPECT_EQ(now[0], arch::trap_byte());
  EXPECT_TRUE(std::equal(now.begin() + 1, now.end(), before.begin() + 1))
      << "the int3 path writes one byte";
  for (long i = 0; i < 20; ++i) ASSERT_EQ(g_add_one(i), i + 1);
  EXPECT_EQ(f.hits(), 20u);

  ASSERT_TRUE(patcher::remove({f.site()}));
  EXPECT_TRUE(f.restored());
  ASSERT_EQ(g_add_one(41), 42);
  EXPECT_EQ(f.hits(), 20u);
}

TEST(Patcher, OneBatchPatchesEverySiteAndRemovesThemAll) {
  ASSERT_NO_FATAL_FAILURE(prepare_process());
  ProbedFunction jump(reinterpret_cast<const void *>(&pt_add_one), pt_add_one_end, false);
  ProbedFunction trap(reinterpret_cast<const void *>(&pt_times_two), pt_times_two_end, true);
  ASSERT_EQ(jump.error(), "");
  ASSERT_EQ(trap.error(), "");
  ASSERT_TRUE(patcher::install({jump.site(), trap.site()}));
  EXPECT_EQ(jump.at_site(), jump.plan().patch);
  EXPECT_EQ(trap.at_site(), std::vector<uint8_t>{arch::trap_byte()});
  for (long i = 0; i < 10; ++i) {
    ASSERT_EQ(g_add_one(i), i + 1);
    ASSERT_EQ(g_times_two(i), 2 * i);
  }
  EXPECT_EQ(jump.hits(), 10u);
  EXPECT_EQ(trap.hits(), 10u);
  ASSERT_TRUE(patcher::remove({jump.site(), trap.site()}));
  EXPECT_TRUE(jump.restored());
  EXPECT_TRUE(trap.restored());
}

// Sites close together go out in one write, with the code between them written back as it was;
// but never across a page with no site in it, which may be a hole between two mappings (reading
// it to write it back would fault). Here the first site's piece ends where a page ends, the page
// after it is a hole, and the second site starts the page after that, 4096 bytes on.
TEST(Patcher, OneWriteNeverSpansAHoleBetweenTwoSites) {
  ASSERT_NO_FATAL_FAILURE(prepare_process());
  constexpr size_t kPage = 4096;
  auto *pages = static_cast<uint8_t *>(
      mmap(nullptr, 3 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(pages, MAP_FAILED);
  pages[kPage - 1] = 0xc3;  // ret, the last byte of the first page: its int3 piece ends there
  const auto *add_one = reinterpret_cast<const uint8_t *>(&pt_add_one);
  std::copy(add_one, pt_add_one_end, pages + 2 * kPage);
  ASSERT_EQ(mprotect(pages, 3 * kPage, PROT_READ | PROT_EXEC), 0);
  ASSERT_EQ(munmap(pages + kPage, kPage), 0);
  {
    ProbedFunction last(pages + kPage - 1, pages + kPage, true);
    ProbedFunction next(pages + 2 * kPage, pages + 2 * kPage + (pt_add_one_end - add_one), false);
    ASSERT_EQ(last.error(), "");
    ASSERT_EQ(next.error(), "");
    ASSERT_TRUE(patcher::install({last.site(), next.site()}));
    EXPECT_EQ(last.at_site(), std::vector<uint8_t>{arch::trap_byte()});
    EXPECT_EQ(next.at_site(), next.plan().patch);
    ASSERT_TRUE(patcher::remove({last.site(), next.site()}));
    EXPECT_TRUE(last.restored());
    EXPECT_TRUE(next.restored());
  }
  munmap(pages, kPage);
  munmap(pages + 2 * kPage, kPage);
}

// A thread that blocks SIGTRAP behind usprobe's back (a raw system call: the interposed mask calls
// would keep SIGTRAP out of the mask) would be killed by the kernel at any int3, and every patch
// starts with one: the batch is refused before anything is written.
TEST(Patcher, ABatchRefusedForAThreadBlockingSigtrapWritesNothing) {
  ASSERT_NO_FATAL_FAILURE(prepare_process());
  ProbedFunction jump(reinterpret_cast<const void *>(&pt_add_one), pt_add_one_end, false);
  ProbedFunction trap(reinterpret_cast<const void *>(&pt_times_two), pt_times_two_end, true);
  ASSERT_EQ(jump.error(), "");
  ASSERT_EQ(trap.error(), "");

  std::atomic<int> state{0};  // 1: SIGTRAP blocked; 2: the test is done with the thread
  std::thread blocker([&] {
    sigset_t trap_only;
    sigemptyset(&trap_only);
    sigaddset(&trap_only, SIGTRAP);
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, &trap_only, nullptr, sizeof(uint64_t));
    state.store(1);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (state.load() != 2 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (state.load() != 1) std::this_thread::yield();
  auto refused = patcher::install({jump.site(), trap.site()});
  state.store(2);
  blocker.join();

  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, EAGAIN);
  EXPECT_NE(refused.error().message.find("blocks SIGTRAP"), std::string::npos)
      << refused.error().message;
  EXPECT_FALSE(jump.site()->patched);
  EXPECT_FALSE(trap.site()->patched);
  EXPECT_TRUE(jump.restored()) << "a refused batch wrote a site";
  EXPECT_TRUE(trap.restored()) << "a refused batch wrote a site";
  EXPECT_EQ(site_table::lookup(jump.site()->addr), 0u);
  EXPECT_EQ(g_add_one(1), 2);
  EXPECT_EQ(jump.hits(), 0u);

  // The thread is gone: the same batch goes in.
  ASSERT_TRUE(patcher::install({jump.site(), trap.site()}));
  EXPECT_EQ(g_add_one(1), 2);
  EXPECT_EQ(g_times_two(3), 6);
  EXPECT_EQ(jump.hits(), 1u);
  EXPECT_EQ(trap.hits(), 1u);
}

}  // namespace
}  // namespace usprobe
