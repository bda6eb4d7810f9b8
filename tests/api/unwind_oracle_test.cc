// usprobe_hit_stack's DWARF walk against libunwind, the oracle: in real code built without frame
// pointers (libc, libstdc++) and in the targets' chains, every stack a handler takes with usprobe
// must hold, frame for frame, at least the frames libunwind finds from the same registers.
//
// libunwind is dlopen'ed here (RTLD_LOCAL: linked, its _Unwind_* would replace the C++ runtime's),
// as libusprobe once did; the test skips where libunwind.so.8 or its header is missing.
#include <dlfcn.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "support/test_link.h"
#include "targets/stack_targets.h"
#include "usprobe/usprobe.h"

#if __has_include(<libunwind.h>)
#define UNW_LOCAL_ONLY
#include <libunwind.h>
#define HAVE_LIBUNWIND_H 1
#endif

#define OPAQUE(x) __asm__ volatile("" : "+r"(x))

namespace {

#if HAVE_LIBUNWIND_H

#define ORACLE_STRINGIFY_(x) #x
#define ORACLE_STRINGIFY(x) ORACLE_STRINGIFY_(x)  // unw_step -> "_ULx86_64_step"

struct Libunwind {
  decltype(&unw_init_local2) init_local2 = nullptr;
  decltype(&unw_step) step = nullptr;
  decltype(&unw_get_reg) get_reg = nullptr;
};

const Libunwind *libunwind() {
  static const Libunwind *loaded = []() -> const Libunwind * {
    void *lib = dlopen("libunwind.so.8", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return nullptr;
    static Libunwind u;
    u.init_local2 =
        reinterpret_cast<decltype(&unw_init_local2)>(dlsym(lib, ORACLE_STRINGIFY(unw_init_local2)));
    u.step = reinterpret_cast<decltype(&unw_step)>(dlsym(lib, ORACLE_STRINGIFY(unw_step)));
    u.get_reg = reinterpret_cast<decltype(&unw_get_reg)>(dlsym(lib, ORACLE_STRINGIFY(unw_get_reg)));
    if (!u.init_local2 || !u.step || !u.get_reg) return nullptr;
    return &u;
  }();
  return loaded;
}

constexpr size_t kMax = 64;

// libunwind's stack from the hit's registers: ips[0] the hit's instruction, then return addresses.
size_t oracle_stack(const Libunwind &u, usprobe_hit *hit, uint64_t *ips) {
  ucontext_t uc;
  std::memset(&uc, 0, sizeof uc);
  greg_t *g = uc.uc_mcontext.gregs;
  const struct {
    int greg;
    usprobe_reg reg;
  } map[] = {{REG_RAX, USPROBE_RAX}, {REG_RBX, USPROBE_RBX}, {REG_RCX, USPROBE_RCX},
             {REG_RDX, USPROBE_RDX}, {REG_RSI, USPROBE_RSI}, {REG_RDI, USPROBE_RDI},
             {REG_RBP, USPROBE_RBP}, {REG_RSP, USPROBE_RSP}, {REG_R8, USPROBE_R8},
             {REG_R9, USPROBE_R9},   {REG_R10, USPROBE_R10}, {REG_R11, USPROBE_R11},
             {REG_R12, USPROBE_R12}, {REG_R13, USPROBE_R13}, {REG_R14, USPROBE_R14},
             {REG_R15, USPROBE_R15}, {REG_RIP, USPROBE_RIP}};
  for (const auto &m : map) g[m.greg] = static_cast<greg_t>(usprobe_hit_reg(hit, m.reg));
  g[REG_RIP] = static_cast<greg_t>(usprobe_hit_ip(hit));
  ips[0] = usprobe_hit_ip(hit);
  size_t n = 1;
  unw_cursor_t cursor;
  // UNW_INIT_SIGNAL_FRAME: the first ip is the next instruction to run, not a return address.
  if (u.init_local2(&cursor, &uc, UNW_INIT_SIGNAL_FRAME) != 0) return n;
  while (n < kMax && u.step(&cursor) > 0) {
    unw_word_t ip = 0;
    if (u.get_reg(&cursor, UNW_REG_IP, &ip) < 0 || ip == 0) break;
    ips[n++] = ip;
  }
  return n;
}

// What the comparisons found; filled in handlers, so fixed-size and without allocation.
struct Verdict {
  pid_t tid = 0;             // only hits on this thread are compared
  volatile bool on = false;  // only while the workload runs
  int compared = 0, mismatched = 0, deepest = 0;
  // The first mismatch.
  uint64_t ours[kMax] = {}, theirs[kMax] = {};
  int n_ours = 0, n_theirs = 0;
};

void compare(usprobe_hit *hit, void *user) {
  auto *v = static_cast<Verdict *>(user);
  if (!v->on || gettid() != v->tid) return;
  uint64_t ours[kMax], theirs[kMax];
  const int n = usprobe_hit_stack(hit, ours, kMax, 0);
  const size_t m = oracle_stack(*libunwind(), hit, theirs);
  ++v->compared;
  v->deepest = std::max(v->deepest, static_cast<int>(m));
  bool same = n >= static_cast<int>(m);
  for (size_t i = 0; same && i < m; ++i) same = ours[i] == theirs[i];
  if (!same && v->mismatched++ == 0) {
    std::memcpy(v->ours, ours, sizeof ours);
    std::memcpy(v->theirs, theirs, sizeof theirs);
    v->n_ours = n;
    v->n_theirs = static_cast<int>(m);
  }
}

std::string name_of(uint64_t ip) {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void *>(ip), &info) && info.dli_sname) return info.dli_sname;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%#lx", static_cast<unsigned long>(ip));
  return buf;
}

void expect_agreement(const Verdict &v, int at_least) {
  std::printf("compared %d stacks, libunwind's deepest %d frames\n", v.compared, v.deepest);
  EXPECT_GE(v.compared, at_least);
  EXPECT_GE(v.deepest, 4) << "libunwind found too short stacks to compare";
  EXPECT_EQ(v.mismatched, 0) << "of " << v.compared << " stacks";
  if (v.mismatched) {
    for (int i = 0; i < std::max(v.n_ours, v.n_theirs); ++i)
      std::printf("  %2d  usprobe %-40s libunwind %s\n", i,
                  i < v.n_ours ? name_of(v.ours[i]).c_str() : "-",
                  i < v.n_theirs ? name_of(v.theirs[i]).c_str() : "-");
  }
}

#define SKIP_WITHOUT_LIBUNWIND() \
  if (!libunwind()) GTEST_SKIP() << "libunwind.so.8 cannot be loaded"

// A few levels of libstdc++ (sort through a std::function comparator, string building) that
// allocate and free: libc and libstdc++ are built without frame pointers.
__attribute__((noinline)) size_t cxx_workload(int rounds) {
  size_t total = 0;
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::string> words;
    for (int i = 0; i < 40; ++i)
      words.push_back(std::string("word-") + std::to_string((i * 7919 + round) % 97) +
                      std::string(static_cast<size_t>(i % 23), 'x'));
    std::function<bool(const std::string &, const std::string &)> less = [](const std::string &a,
                                                                            const std::string &b) {
      std::string ka = a + "|", kb = b + "|";  // allocates inside the comparator
      return ka < kb;
    };
    std::sort(words.begin(), words.end(), less);
    for (const auto &w : words) total += w.size();
  }
  OPAQUE(total);
  return total;
}

TEST(UnwindOracle, MallocAndFreeInLibstdcxx) {
  SKIP_WITHOUT_LIBUNWIND();
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer replaces malloc and free: libc's are never called";
#endif
  Verdict v;
  v.tid = gettid();
  usprobe_consumer consumer{compare, &v, nullptr};
  usprobe::test::Link on_malloc, on_free;
  ASSERT_ATTACHED(on_malloc.attach("libc:malloc", &consumer));
  ASSERT_ATTACHED(on_free.attach("libc:free", &consumer));
  v.on = true;
  EXPECT_GT(cxx_workload(20), 0u);
  v.on = false;
  expect_agreement(v, 100);
}

// The targets' chain without frame pointers, from a frame of this binary.
extern "C" __attribute__((noipa)) long oracle_call(long (*fn)(long), long x) {
  long r = fn(x);
  OPAQUE(r);
  return r;
}

void chain(const char *inner, long (*outer)(long)) {
  Verdict v;
  v.tid = gettid();
  usprobe_consumer consumer{compare, &v, nullptr};
  usprobe::test::Link link;
  ASSERT_ATTACHED(link.attach(std::string("libusprobe_targets.so:") + inner, &consumer));
  v.on = true;
  for (int i = 0; i < 3; ++i) EXPECT_GT(oracle_call(outer, 5), 0);
  v.on = false;
  expect_agreement(v, 3);
}

TEST(UnwindOracle, ChainWithoutFramePointers) {
  SKIP_WITHOUT_LIBUNWIND();
  chain("stk_nofp_inner", stk_nofp_outer);
}

TEST(UnwindOracle, ChainWithFramePointers) {
  SKIP_WITHOUT_LIBUNWIND();
  chain("stk_fp_inner", stk_fp_outer);
}

// The chain called from a qsort comparator: the stack goes through libc's sort (no frame
// pointers) and, in a sanitizer build, through the sanitizer's qsort interceptor.
long (*g_compare_calls)(long) = stk_nofp_outer;
int compare_longs(const void *a, const void *b) {
  const long x = *static_cast<const long *>(a), y = *static_cast<const long *>(b);
  long r = g_compare_calls(x & 7);
  OPAQUE(r);
  return (x > y) - (x < y);
}

TEST(UnwindOracle, QsortComparatorThroughLibc) {
  SKIP_WITHOUT_LIBUNWIND();
  Verdict v;
  v.tid = gettid();
  usprobe_consumer consumer{compare, &v, nullptr};
  usprobe::test::Link link;
  ASSERT_ATTACHED(link.attach("libusprobe_targets.so:stk_nofp_inner", &consumer));
  long values[64];
  for (long i = 0; i < 64; ++i) values[i] = (i * 37) % 64;
  v.on = true;
  qsort(values, 64, sizeof values[0], compare_longs);
  v.on = false;
  EXPECT_TRUE(std::is_sorted(values, values + 64));
  expect_agreement(v, 64);
}

// A probe hit in a signal handler: the walk goes through the kernel's signal frame (libc's
// __restore_rt, a signal frame whose CFI restores every register from the saved context) into
// the interrupted code.
void on_signal(int) {
  long r = stk_nofp_outer(5);
  OPAQUE(r);
}

__attribute__((noinline)) void raise_it() {
  raise(SIGUSR1);
  __asm__ volatile("");
}

TEST(UnwindOracle, ThroughASignalFrame) {
  SKIP_WITHOUT_LIBUNWIND();
  struct sigaction sa {
  }, old{};
  sa.sa_handler = on_signal;
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  Verdict v;
  v.tid = gettid();
  usprobe_consumer consumer{compare, &v, nullptr};
  usprobe::test::Link link;
  ASSERT_ATTACHED(link.attach("libusprobe_targets.so:stk_nofp_inner", &consumer));
  v.on = true;
  raise_it();
  v.on = false;
  sigaction(SIGUSR1, &old, nullptr);
  expect_agreement(v, 1);
  // inner, middle, outer, on_signal, __restore_rt, then the interrupted code: libunwind, and so
  // usprobe, went past the signal frame.
  EXPECT_GE(v.deepest, 8);
}

#else

TEST(UnwindOracle, NeedsLibunwind) {
  GTEST_SKIP() << "built without libunwind.h (libunwind-dev)";
}

#endif  // HAVE_LIBUNWIND_H

}  // namespace
