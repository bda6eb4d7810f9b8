// Self-check of libusprobe_targets.so: every target, called without probes, gives its documented
// result, has the documented bytes and ELF symbol bounds, and the clobber checkers report a clean
// run as 0 (and a broken callee as broken); the compiled return-probe targets (ret_targets.h) give
// theirs. With the test support library, it also counts a kernel uprobe on tgt_counted, and kernel
// uprobes and uretprobes on ret_fib (the call counts that ret_targets.h states), or says why it
// cannot.
#include <dlfcn.h>
#include <elf.h>
#include <link.h>

#include <bit>
#include <cinttypes>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <thread>

#include "targets/ret_targets.h"
#include "targets/targets.h"

#if USPROBE_HAVE_TEST_SUPPORT
#include "support/kernel_uprobe.h"
#endif

namespace {

int failures = 0;

void check(bool ok, const char *what, int line) {
  if (!ok) {
    std::fprintf(stderr, "FAIL line %d: %s\n", line, what);
    ++failures;
  }
}
#define CHECK(expr) check((expr), #expr, __LINE__)

template <typename F>
const uint8_t *code(F *fn) {
  return reinterpret_cast<const uint8_t *>(fn);
}

bool bytes_are(const uint8_t *at, std::initializer_list<uint8_t> expected) {
  return std::memcmp(at, expected.begin(), expected.size()) == 0;
}

// The dynamic symbol of a function: exported, STT_FUNC, default visibility, `size` bytes long.
template <typename F>
void check_symbol(F *fn, const char *name, uint64_t size, int line) {
  Dl_info info{};
  void *entry = nullptr;  // dladdr1 stores a const ElfW(Sym) * here
  const bool found = dladdr1(reinterpret_cast<void *>(fn), &info, &entry, RTLD_DL_SYMENT) != 0 &&
                     entry != nullptr && info.dli_sname != nullptr;
  const auto *sym = static_cast<const ElfW(Sym) *>(entry);
  check(found, name, line);
  if (!found) return;
  char what[160];
  std::snprintf(what, sizeof what, "%s: symbol %s, type %u, visibility %u, size %" PRIu64, name,
                info.dli_sname, ELF64_ST_TYPE(sym->st_info), ELF64_ST_VISIBILITY(sym->st_other),
                static_cast<uint64_t>(sym->st_size));
  check(std::strcmp(info.dli_sname, name) == 0 && info.dli_saddr == reinterpret_cast<void *>(fn) &&
            ELF64_ST_TYPE(sym->st_info) == STT_FUNC &&
            ELF64_ST_VISIBILITY(sym->st_other) == STV_DEFAULT &&
            (size == 0 || sym->st_size == size),
        what, line);
}
#define CHECK_SYMBOL(fn, size) check_symbol(fn, #fn, size, __LINE__)

void describe(const char *who, uint64_t mask) {
  if (mask == 0) return;
  std::fprintf(stderr, "%s: corrupted:", who);
  for (unsigned bit = 0; bit < 64; ++bit)
    if (mask & (uint64_t{1} << bit)) std::fprintf(stderr, " %s", tgt_bit_name(bit));
  std::fprintf(stderr, "\n");
}

// A callee that ignores its arguments and returns no magic: the caller must notice.
uint64_t broken_callee(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, double,
                       double, double, double, double, double, double, double) {
  return 0;
}

void check_targets() {
  // endbr64, then a prologue
  CHECK(tgt_endbr64(2, 3) == 5);
  CHECK(tgt_endbr64(-10, 4) == -6);
  CHECK(bytes_are(code(tgt_endbr64), {0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5}));

  // RIP-relative first instruction reads live data
  CHECK(bytes_are(code(tgt_rip_first), {0x48, 0x8b, 0x05}));
  CHECK(tgt_rip_first() == TGT_RIP_DATA_INITIAL);
  CHECK(tgt_set_rip_data(42) == TGT_RIP_DATA_INITIAL);
  CHECK(tgt_rip_first() == 42);
  CHECK(tgt_set_rip_data(TGT_RIP_DATA_INITIAL) == 42);
  CHECK(tgt_rip_first() == TGT_RIP_DATA_INITIAL);
  CHECK(bytes_are(code(tgt_rip_cmp_imm), {0x83, 0x3d}) && code(tgt_rip_cmp_imm)[6] == 0x2a);
  CHECK(tgt_rip_cmp_imm() == 1);

  // jcc inside the first 5 bytes
  CHECK(bytes_are(code(tgt_jcc_in_window), {0x85, 0xff, 0x74}));
  CHECK(tgt_jcc_in_window(0) == 100);
  CHECK(tgt_jcc_in_window(5) == 10);
  CHECK(tgt_jcc_in_window(-3) == -6);

  // loop whose back edge is entry+2
  CHECK(
      bytes_are(code(tgt_loop_to_entry2), {0x31, 0xc0, 0x01, 0xf8, 0xff, 0xcf, 0x7f, 0xfa, 0xc3}));
  CHECK(tgt_loop_to_entry2(0) == 0);
  CHECK(tgt_loop_to_entry2(1) == 1);
  CHECK(tgt_loop_to_entry2(10) == 55);
  CHECK(tgt_loop_to_entry2(100) == 5050);

  // tiny functions
  CHECK(bytes_are(code(tgt_one_byte), {0xc3}));
  tgt_one_byte();
  CHECK(bytes_are(code(tgt_three_byte), {0x89, 0xf8, 0xc3}));
  CHECK(tgt_three_byte(42) == 42);
  CHECK(tgt_three_byte(-7) == -7);

  // vector and mixed arguments
  CHECK(tgt_xmm_args(1, 2, 3, 4, 5, 6, 7, 8) == 204.0);
  CHECK(tgt_xmm_args(0.5, -1, 0, 0, 0, 0, 0, 0.25) == 0.5 - 2 + 2);
  CHECK(tgt_mixed_args(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12) == 650.0);
  CHECK(tgt_mixed_args(-1, 0.5, -3, 0, 0, 0, 1L << 40, 0, -2, 0, 0, -0.25) ==
        -1 + 1 - 9 + 7.0 * (1L << 40) - 18 - 3);

  // call as the first instruction
  CHECK(code(tgt_call_first)[0] == 0xe8);
  CHECK(tgt_helper(5) == 22);
  CHECK(tgt_call_first(5) == 23);
  CHECK(tgt_call_first(-4) == -4);

  // tail call
  CHECK(code(tgt_tail_call)[0] == 0xe9);
  CHECK(tgt_tail_call(41) == 42);

  CHECK(tgt_six_args(1, 2, 3, 4, 5, 6) == 91);
  CHECK(tgt_six_args(1, 0, 0, 0, 0, 0) == 1 && tgt_six_args(0, 0, 0, 0, 0, 1) == 6);
  CHECK(tgt_six_args(0, 0, 1, 0, 0, 0) == 3 && tgt_six_args(0, 0, 0, 1, 0, 0) == 4);
  CHECK(tgt_six_args(0, 1, 0, 0, 0, 0) == 2 && tgt_six_args(0, 0, 0, 0, 1, 0) == 5);

  CHECK(bytes_are(code(tgt_stack_arg), {0x48, 0x8b, 0x44, 0x24, 0x08, 0xc3}));
  CHECK(tgt_stack_arg(1, 2, 3, 4, 5, 6, 77) == 77);

  // jump table
  CHECK(tgt_indirect_jump(0) == 10);
  CHECK(tgt_indirect_jump(1) == 20);
  CHECK(tgt_indirect_jump(2) == 30);
  CHECK(tgt_indirect_jump(3) == 40);
  CHECK(tgt_indirect_jump(4) == -1);
  CHECK(tgt_indirect_jump(-1) == -1);

  CHECK(tgt_recurse(0) == 0);
  CHECK(tgt_recurse(1000) == 1000);

  // counting workhorses
  CHECK(bytes_are(code(tgt_counted), {0x55, 0x48, 0x89, 0xe5, 0x48, 0x8d, 0x47, 0x01, 0x5d, 0xc3}));
  CHECK(tgt_counted(41) == 42);
  CHECK(tgt_counted_mid(41) == 42);
  CHECK(tgt_counted_mid(-1) == 0);
  CHECK(tgt_counted_mid_site_offset == TGT_COUNTED_MID_SITE_OFFSET);
  CHECK(bytes_are(code(tgt_counted_mid) + tgt_counted_mid_site_offset, {0x48, 0x83, 0xc0, 0x01}));

  // clobber checkers: a clean run is 0
  CHECK(tgt_clobber_site_offset == TGT_CLOBBER_SITE_OFFSET);
  CHECK(bytes_are(code(tgt_clobber_mid) + tgt_clobber_site_offset, {0x4d, 0x8d, 0x9b}));
  const uint64_t mid = tgt_clobber_mid();
  describe("tgt_clobber_mid", mid);
  CHECK(mid == 0);
  const uint64_t entry = tgt_clobber_check_entry();
  describe("tgt_clobber_check_entry", entry);
  CHECK(entry == 0);
  const uint64_t via_pointer = tgt_call_with_canaries(tgt_entry_callee);
  describe("tgt_call_with_canaries(tgt_entry_callee)", via_pointer);
  CHECK(via_pointer == 0);
  // ... and can fail: a callee that returns the wrong registers is caught
  const uint64_t broken = tgt_call_with_canaries(broken_callee);
  CHECK((broken & (uint64_t{1} << TGT_BIT_RETVAL)) != 0);
  CHECK((broken & (uint64_t{1} << TGT_BIT_RET_RDX)) != 0);
  // The callee called from C: %rax, %r10, %r11 are the compiler's, the rest must match.
  const uint64_t direct = tgt_entry_callee(
      TGT_ENTRY_ARG0, TGT_ENTRY_ARG1, TGT_ENTRY_ARG2, TGT_ENTRY_ARG3, TGT_ENTRY_ARG4,
      TGT_ENTRY_ARG5, TGT_ENTRY_ARG6, TGT_ENTRY_X0, TGT_ENTRY_X1, TGT_ENTRY_X2, TGT_ENTRY_X3,
      TGT_ENTRY_X4, TGT_ENTRY_X5, TGT_ENTRY_X6, TGT_ENTRY_X7);
  const uint64_t ignored =
      (uint64_t{1} << TGT_BIT_RAX) | (uint64_t{1} << TGT_BIT_R10) | (uint64_t{1} << TGT_BIT_R11);
  CHECK((direct >> 48) == (TGT_ENTRY_MAGIC >> 48));
  CHECK((direct & ~ignored & 0xffffffffffff) == 0);
  // A wrong argument and a wrong vector argument are reported as such.
  const uint64_t wrong = tgt_entry_callee(
      TGT_ENTRY_ARG0, TGT_ENTRY_ARG1 + 1, TGT_ENTRY_ARG2, TGT_ENTRY_ARG3, TGT_ENTRY_ARG4,
      TGT_ENTRY_ARG5, TGT_ENTRY_ARG6 + 1, TGT_ENTRY_X0, TGT_ENTRY_X1, TGT_ENTRY_X2, TGT_ENTRY_X3,
      TGT_ENTRY_X4, TGT_ENTRY_X5, 0.0, TGT_ENTRY_X7);
  CHECK((wrong & ~ignored & 0xffffffffffff) ==
        ((uint64_t{1} << TGT_BIT_RSI) | (uint64_t{1} << TGT_BIT_STACK) |
         (uint64_t{1} << (TGT_BIT_XMM0 + 6))));

  // exact, exported ELF symbols
  CHECK_SYMBOL(tgt_endbr64, 0);
  CHECK_SYMBOL(tgt_rip_first, 8);
  CHECK_SYMBOL(tgt_jcc_in_window, 0);
  CHECK_SYMBOL(tgt_loop_to_entry2, 9);
  CHECK_SYMBOL(tgt_one_byte, 1);
  CHECK_SYMBOL(tgt_three_byte, 3);
  CHECK_SYMBOL(tgt_xmm_args, 0);
  CHECK_SYMBOL(tgt_mixed_args, 0);
  CHECK_SYMBOL(tgt_helper, 0);
  CHECK_SYMBOL(tgt_call_first, 10);
  CHECK_SYMBOL(tgt_tail_call, 5);
  CHECK_SYMBOL(tgt_six_args, 0);
  CHECK_SYMBOL(tgt_stack_arg, 6);
  CHECK_SYMBOL(tgt_indirect_jump, 0);
  CHECK_SYMBOL(tgt_recurse, 0);
  CHECK_SYMBOL(tgt_counted, 10);
  CHECK_SYMBOL(tgt_counted_mid, 13);
  CHECK_SYMBOL(tgt_clobber_mid, 0);
  CHECK_SYMBOL(tgt_entry_callee, 0);
  CHECK_SYMBOL(tgt_call_with_canaries, 0);
  CHECK_SYMBOL(tgt_clobber_check_entry, 0);
}

#if USPROBE_HAVE_TEST_SUPPORT
// Kernel uprobes on tgt_counted count exactly the calls of this process, its threads included.
void check_kernel_uprobe() {
  using usprobe::test::KernelUprobe;
  const auto where = usprobe::test::file_location_of(reinterpret_cast<const void *>(&tgt_counted));
  CHECK(where.has_value());
  if (!where) {
    std::fprintf(stderr, "%s\n", where.error().c_str());
    return;
  }
  std::printf("tgt_counted is %s:%#" PRIx64 "\n", where->path.c_str(), where->offset);
  auto entry = KernelUprobe::open(where->path, where->offset);
  if (!entry) {
    std::printf("SKIP kernel uprobe: %s\n", entry.error().c_str());
    return;
  }
  auto ret = KernelUprobe::open_at(reinterpret_cast<const void *>(&tgt_counted), /*ret=*/true);
  if (!ret) {
    std::printf("SKIP kernel uretprobe: %s\n", ret.error().c_str());
    return;
  }
  long sum = 0;
  for (long i = 0; i < 1000; ++i) sum += tgt_counted(i);
  CHECK(sum == 1000 * 1001 / 2);
  const uint64_t entries = entry->count(), returns = ret->count();
  std::printf("kernel uprobe on tgt_counted: %" PRIu64 " hits, uretprobe: %" PRIu64
              " hits, for 1000 calls\n",
              entries, returns);
  CHECK(entries == 1000);
  CHECK(returns == 1000);

  // Disabled, nothing counts; threads created after open count (inherit).
  CHECK(entry->disable());
  for (long i = 0; i < 100; ++i) sum += tgt_counted(i);
  CHECK(entry->count() == 1000);
  CHECK(entry->enable());
  std::thread worker([] {
    for (long i = 0; i < 500; ++i) tgt_counted(i);
  });
  worker.join();
  std::printf("after a thread's 500 calls: %" PRIu64 " hits\n", entry->count());
  CHECK(entry->count() == 1500);
}

// The kernel's count of ret_fib's entries and returns: the number of calls ret_targets.h states.
void check_kernel_uretprobe_on_ret_fib() {
  using usprobe::test::KernelUprobe;
  auto entry = KernelUprobe::open_at(reinterpret_cast<const void *>(&ret_fib));
  auto ret = KernelUprobe::open_at(reinterpret_cast<const void *>(&ret_fib), /*ret=*/true);
  if (!entry || !ret) {
    std::printf("SKIP kernel uprobes on ret_fib: %s\n",
                (!entry ? entry.error() : ret.error()).c_str());
    return;
  }
  CHECK(ret_fib(20) == 6765);
  std::printf("kernel uprobe on ret_fib(20): %" PRIu64 " entries, %" PRIu64 " returns\n",
              entry->count(), ret->count());
  CHECK(entry->count() == 21891);
  CHECK(ret->count() == 21891);
}
#endif

// Results of the compiled targets for return probes, as ret_targets.h documents them.
__attribute__((noinline)) long ret_jump_odd(long n) {
  jmp_buf env;
  int v = setjmp(env);
  if (v == 0) {
    ret_jump_outer(&env, n);
    return -1;
  }
  return v;
}

long plus_one(long x) {
  return x + 1;
}

void check_ret_targets() {
  CHECK(ret_fib(0) == 0);
  CHECK(ret_fib(1) == 1);
  CHECK(ret_fib(20) == 6765);
  CHECK(ret_depth(1) == 1);
  CHECK(ret_depth(100) == 100);
  CHECK(ret_int(-5) == -14);
  CHECK(ret_int(7) == 22);
  char buf[16];
  CHECK(ret_ptr(buf) == buf + 8);
  CHECK(ret_leaf(41) == 42);
  CHECK(ret_double(-3.0) == -7.5);
  const ret_two p = ret_pair(10, 3);
  CHECK(p.a == 13 && p.b == 7);
  CHECK(ret_tail(20) == 41);
  CHECK(ret_jump_odd(7) == 7);
  jmp_buf unused;
  CHECK(ret_jump_outer(&unused, 8) == 8 + 111);
  CHECK(ret_call(plus_one, 5) == 7);
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // keep what was printed if a check crashes
  check_targets();
  check_ret_targets();
#if USPROBE_HAVE_TEST_SUPPORT
  check_kernel_uprobe();
  check_kernel_uretprobe_on_ret_fib();
#endif
  if (failures != 0) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("targets_selfcheck: all checks passed\n");
  return 0;
}
