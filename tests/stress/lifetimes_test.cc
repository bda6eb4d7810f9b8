// Lifetimes under attach/detach cycles: 1,000 cycles (100 under the sanitizers) of attaching
// 1,000 probes of libusprobe_many.so in one batch, calling each probed function once, and detaching
// them. The heap in use and the trampoline memory (anonymous executable mappings) end where they
// started: the heap within kHeapSlack bytes, the trampolines exactly.
//
// Bound: the cycle count (about 10 s in the Release build on two cores).
#include <malloc.h>
#include <stdio.h>

#include <cinttypes>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "support/code_bytes.h"

#if defined(__SANITIZE_ADDRESS__)
// From the sanitizer runtime (<sanitizer/allocator_interface.h>, which GCC 12 does not install).
extern "C" size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#include "usprobe/usprobe.h"

extern "C" {
extern const uint64_t many_count;         // tests/targets/many_functions.S
extern long (*const many_table[])(long);  // many_fn_0 .. many_fn_9999, each x -> x + 1
}

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr int kCycles = 100;
size_t heap_in_use() {
  return __sanitizer_get_current_allocated_bytes();
}
#else
constexpr int kCycles = 1000;
size_t heap_in_use() {
  return mallinfo2().uordblks;
}
#endif
constexpr size_t kProbes = 1000;
// What the heap may keep after the cycles: the allocator's own rounding and whatever libstdc++
// or glibc cache on the way (stdio buffers, a locale facet); far below one cycle's worth.
constexpr size_t kHeapSlack = 64 * 1024;

using usprobe::test::anonymous_code_bytes;

// many_fn_<first> .. many_fn_<first + kProbes - 1>.
std::vector<std::string> many_locations(size_t first) {
  std::vector<std::string> v;
  for (size_t i = first; i < first + kProbes; ++i)
    v.push_back("libusprobe_many.so:many_fn_" + std::to_string(i));
  return v;
}

// Attach many_fn_<first>.. in one batch, call each once, check each count, detach.
void cycle(size_t first, size_t *code_while_attached = nullptr) {
  const std::vector<std::string> names = many_locations(first);
  std::vector<const char *> where;
  for (const std::string &n : names) where.push_back(n.c_str());
  std::vector<usprobe_link *> links(where.size());
  const int attached =
      usprobe_attach_batch(where.data(), where.size(), nullptr, links.data(), nullptr);
  ASSERT_EQ(attached, static_cast<int>(where.size())) << usprobe_last_error();
  if (code_while_attached) *code_while_attached = anonymous_code_bytes();
  for (size_t i = 0; i < where.size(); ++i) ASSERT_EQ(many_table[first + i](41), 42);
  for (size_t i = 0; i < where.size(); ++i) ASSERT_EQ(usprobe_link_hits(links[i]), 1u) << where[i];
  ASSERT_EQ(usprobe_detach_batch(links.data(), links.size()), 0) << usprobe_last_error();
}

TEST(Lifetimes, MemoryReturnsAfterAttachDetachCycles) {
  ASSERT_GE(many_count, 2 * kProbes);
  // One cycle first, on other functions of the same file: what lives as long as the process comes
  // into being here (the dynamic linker's hook and its trampoline, the file's parsed ELF and branch
  // targets, the thread's record), and so do the allocator's and stdio's own caches. Nothing of
  // the probes measured below exists yet: the cycles must give back all they take.
  ASSERT_NO_FATAL_FAILURE(cycle(kProbes));
  const size_t heap_before = heap_in_use();
  const size_t code_before = anonymous_code_bytes();

  size_t code_attached = 0;
  for (int c = 0; c < kCycles; ++c)
    ASSERT_NO_FATAL_FAILURE(cycle(0, c == 0 ? &code_attached : nullptr)) << "cycle " << c;

  const size_t heap_after = heap_in_use();
  const size_t code_after = anonymous_code_bytes();
  // The measure sees what an attach takes: 1,000 trampolines are tens of slabs.
  EXPECT_GT(code_attached, code_before + 100 * 1024);
  EXPECT_EQ(code_after, code_before) << "trampoline memory after " << kCycles << " cycles";
  EXPECT_LE(heap_after, heap_before + kHeapSlack)
      << "heap in use: " << heap_before << " bytes before " << kCycles << " cycles of " << kProbes
      << " probes, " << heap_after << " after";
  std::printf(
      "[ lifetimes ] %d cycles of %zu probes: heap in use %zu -> %zu bytes, trampoline "
      "memory %zu -> %zu bytes (%zu while attached)\n",
      kCycles, kProbes, heap_before, heap_after, code_before, code_after, code_attached);
}

}  // namespace
