// Probes follow the address space: a probe attached to a library that is not mapped yet is placed
// when the library comes (dlopen, dlmopen, or mmap by hand followed by usprobe_notify_mapping),
// leaves with it when it is unmapped (a dlclose that drops the last reference, munmap + notify),
// and comes back when it is mapped again, at whatever address.
//
// The libraries (tests/targets/follow_lib.c, follow_lib_b.c) are not linked into this test: it
// opens them by absolute path (FOLLOW_LIB, FOLLOW_LIB_B, set by tests/CMakeLists.txt) and checks
// with dlopen(RTLD_NOLOAD) that each dlclose really unmapped them. Each has a function long enough
// for a jump (follow_add, follow_b_mul) and one of 4 bytes that takes the int3 path (follow_tiny,
// follow_b_tiny); all are pure leaf code, so they also run from a copy of the file mapped by hand.
//
//   - AttachBeforeDlopen: attach with the library absent (0 sites), dlopen (1 site when dlopen
//     returns, every call counted), dlclose (0 sites), again, and once more with the old address
//     kept out so that the library comes back elsewhere; a link detached while the library is
//     absent leaves the code as the file has it.
//   - AttachToAnAbsentLibraryStillChecksTheLocation: a missing function or file still fails.
//   - DetachWhileMapped...: detach restores the file's bytes; the next dlopen finds no probe.
//   - Dlmopen: a second copy in a new namespace gets its own site; calls through both are counted.
//   - NotifyMapping: the file mapped by hand gets its site at usprobe_notify_mapping(), not before,
//     and loses it at the notification after munmap.
//   - CxxApi: Link::sites() and usprobe::notify_mapping().
//   - DlopenDlcloseStress: callers hammer a probed function of L1, a thread dlopens and dlcloses L1
//     (a reference only: the callers hold it) and L2 (mapped and unmapped every round) and calls
//     L2, while the main thread attaches and detaches callback probes on both. No handler runs
//     after its detach returned, calls made while a probe is attached are counted (see there for
//     the exact bounds), and nothing crashes.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "support/child_process.h"
#include "support/test_link.h"
#include "support/watchdog.h"
#include "usprobe/usprobe.h"
#include "usprobe/usprobe.hpp"

#if !defined(FOLLOW_LIB) || !defined(FOLLOW_LIB_B)
#error "FOLLOW_LIB and FOLLOW_LIB_B (the test libraries' paths) come from tests/CMakeLists.txt"
#endif

namespace {

using usprobe::test::strf;
using Clock = std::chrono::steady_clock;

constexpr const char *kLib = FOLLOW_LIB;     // L1: follow_add, follow_tiny
constexpr const char *kLibB = FOLLOW_LIB_B;  // L2: follow_b_mul, follow_b_tiny

using AddFn = int (*)(int, int);  // follow_add(a, b) == a + b, follow_b_mul(a, b) == a * b
using TinyFn = int (*)(int);      // follow_tiny(x) == x + 1, follow_b_tiny(x) == x + 2

// Results in wrapping arithmetic, as the libraries compute them (no signed overflow for UBSan).
int wrap_add(int a, int b) {
  return static_cast<int>(static_cast<unsigned>(a) + static_cast<unsigned>(b));
}
int wrap_mul(int a, int b) {
  return static_cast<int>(static_cast<unsigned>(a) * static_cast<unsigned>(b));
}

std::string location(const char *lib, const char *function) {
  return std::string(lib) + ":" + function;
}

int sites(const usprobe::test::Link &link) {
  return usprobe_link_sites(link.get());
}

// Whether `path` is loaded in the default namespace. RTLD_NOLOAD takes a reference when it finds
// the library: it is given back at once.
bool loaded(const char *path) {
  void *h = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
  if (h) dlclose(h);
  return h != nullptr;
}

// A dlopen (or dlmopen) handle, closed when it goes out of scope, so that a failed assertion does
// not leave the library mapped for the next test.
class Lib {
 public:
  explicit Lib(const char *path) : h_(dlopen(path, RTLD_NOW | RTLD_LOCAL)) {}
  explicit Lib(void *handle) : h_(handle) {}
  Lib(const Lib &) = delete;
  Lib &operator=(const Lib &) = delete;
  ~Lib() { close(); }

  void close() {
    if (h_) dlclose(std::exchange(h_, nullptr));
  }
  template <typename F>
  F sym(const char *name) const {
    return reinterpret_cast<F>(dlsym(h_, name));
  }
  explicit operator bool() const { return h_ != nullptr; }

 private:
  void *h_;
};

// Where a function lies in the library's file (usprobe_list_functions), and its first bytes as the
// file has them, to compare with the code in memory.
struct FileFunction {
  uint64_t offset = 0;
  uint64_t size = 0;
  std::array<uint8_t, 16> bytes{};
};

FileFunction file_function(const char *path, const char *name) {
  struct Find {
    const char *name;
    FileFunction f;
  } find{name, {}};
  usprobe_list_functions(
      path,
      [](const char *n, uint64_t offset, uint64_t size, void *user) {
        auto *found = static_cast<Find *>(user);
        if (std::strcmp(n, found->name) == 0) {
          found->f.offset = offset;
          found->f.size = size;
        }
      },
      &find);
  if (find.f.offset != 0) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      if (pread(fd, find.f.bytes.data(), find.f.bytes.size(), static_cast<off_t>(find.f.offset)) !=
          static_cast<ssize_t>(find.f.bytes.size()))
        find.f.offset = 0;
      ::close(fd);
    } else {
      find.f.offset = 0;
    }
  }
  return find.f;
}

// Whether the first `n` bytes of the code at `code` are the file's (no patch there).
bool as_in_file(const void *code, const FileFunction &f, size_t n) {
  return std::memcmp(code, f.bytes.data(), n) == 0;
}

// An anonymous PROT_NONE page at a fixed address (when that address is free), to keep a library
// from being mapped there again.
class KeepOut {
 public:
  explicit KeepOut(const void *at) {
    const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    void *want = reinterpret_cast<void *>(reinterpret_cast<uintptr_t>(at) & ~(page - 1));
    void *got =
        mmap(want, page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (got == want) {
      p_ = got;
      n_ = page;
    } else if (got != MAP_FAILED) {
      munmap(got, page);  // a kernel without MAP_FIXED_NOREPLACE took it for a hint
    }
  }
  KeepOut(const KeepOut &) = delete;
  KeepOut &operator=(const KeepOut &) = delete;
  ~KeepOut() {
    if (p_) munmap(p_, n_);
  }
  bool held() const { return p_ != nullptr; }

 private:
  void *p_ = nullptr;
  size_t n_ = 0;
};

constexpr int kCalls = 1000;

TEST(FollowDlopen, AttachToAnAbsentLibraryStillChecksTheLocation) {
  ASSERT_FALSE(loaded(kLib)) << kLib << " is loaded already";
  usprobe::test::Link link;
  int rc = link.attach(location(kLib, "follow_addd"));
  EXPECT_EQ(rc, -ENOENT) << "a function the file does not have";
  EXPECT_NE(std::string(usprobe_last_error()).find("follow_add"), std::string::npos)
      << usprobe_last_error();
  rc = link.attach("/no/such/dir/libusprobe_nothing.so:f");
  EXPECT_LT(rc, 0) << "a file that does not exist";
  EXPECT_FALSE(loaded(kLib)) << "a failed attach loads nothing";
}

TEST(FollowDlopen, AttachBeforeDlopen) {
  ASSERT_FALSE(loaded(kLib)) << kLib << " is loaded already";
  const FileFunction add_file = file_function(kLib, "follow_add");
  const FileFunction tiny_file = file_function(kLib, "follow_tiny");
  ASSERT_NE(add_file.offset, 0u) << "follow_add not found in " << kLib;
  ASSERT_NE(tiny_file.offset, 0u) << "follow_tiny not found in " << kLib;
  ASSERT_GE(add_file.size, 16u);
  ASSERT_EQ(tiny_file.size, 4u);

  usprobe::test::Link add, tiny;
  ASSERT_ATTACHED(add.attach(location(kLib, "follow_add")));
  // follow_tiny would take a punned jump: the int3 path is asked for, so that both paths are
  // followed through dlopen.
  ASSERT_ATTACHED(tiny.attach(location(kLib, "follow_tiny"), nullptr, USPROBE_FORCE_INT3));
  EXPECT_EQ(sites(add), 0) << "the library is not mapped";
  EXPECT_EQ(sites(tiny), 0);
  EXPECT_EQ(add.hits(), 0u);
  EXPECT_FALSE(loaded(kLib)) << "attach does not load the library itself";

  const void *previous = nullptr;
  uint64_t expected = 0;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(strf("round %d", round));
    // The last round keeps the old address of follow_add out, so the library comes back elsewhere.
    std::unique_ptr<KeepOut> keep_out;
    if (round == 2) keep_out = std::make_unique<KeepOut>(previous);

    Lib lib(kLib);
    ASSERT_TRUE(lib) << dlerror();
    // Placed before dlopen returned: nothing else ran in between.
    EXPECT_EQ(sites(add), 1);
    EXPECT_EQ(sites(tiny), 1);
    auto add_fn = lib.sym<AddFn>("follow_add");
    auto tiny_fn = lib.sym<TinyFn>("follow_tiny");
    ASSERT_TRUE(add_fn && tiny_fn) << dlerror();
    if (keep_out && keep_out->held()) {
      EXPECT_NE(reinterpret_cast<const void *>(add_fn), previous) << "the library moved";
    }
    EXPECT_FALSE(as_in_file(reinterpret_cast<const void *>(add_fn), add_file, 5))
        << "follow_add is patched";
    EXPECT_FALSE(as_in_file(reinterpret_cast<const void *>(tiny_fn), tiny_file, 1))
        << "follow_tiny is patched";
    EXPECT_EQ(usprobe_link_uses_int3(tiny.get()), 1) << "the int3 path was asked for";
    EXPECT_EQ(usprobe_link_uses_int3(add.get()), 0) << usprobe_link_int3_reason(add.get());

    int wrong = 0;
    for (int i = 0; i < kCalls; ++i) {
      wrong += add_fn(i, 3 * i) != 4 * i;
      wrong += tiny_fn(i) != i + 1;
    }
    EXPECT_EQ(wrong, 0);
    expected += kCalls;
    EXPECT_EQ(add.hits(), expected);
    EXPECT_EQ(tiny.hits(), expected);
    previous = reinterpret_cast<const void *>(add_fn);

    lib.close();
    ASSERT_FALSE(loaded(kLib)) << "something else holds the library: dlclose did not unmap it";
    EXPECT_EQ(sites(add), 0) << "the site went with the library";
    EXPECT_EQ(sites(tiny), 0);
    EXPECT_EQ(add.hits(), expected);
    EXPECT_EQ(tiny.hits(), expected);
  }

  // Detached while the library is absent: when it comes back, its code is the file's.
  EXPECT_EQ(add.detach(), 0) << usprobe_last_error();
  EXPECT_EQ(tiny.detach(), 0) << usprobe_last_error();
  Lib lib(kLib);
  ASSERT_TRUE(lib) << dlerror();
  auto add_fn = lib.sym<AddFn>("follow_add");
  auto tiny_fn = lib.sym<TinyFn>("follow_tiny");
  ASSERT_TRUE(add_fn && tiny_fn) << dlerror();
  EXPECT_TRUE(as_in_file(reinterpret_cast<const void *>(add_fn), add_file, 16));
  EXPECT_TRUE(as_in_file(reinterpret_cast<const void *>(tiny_fn), tiny_file, 4));
  EXPECT_EQ(add_fn(2, 3), 5);
}

TEST(FollowDlopen, DetachWhileMappedRestoresTheCodeAndTheLibraryLeavesCleanly) {
  ASSERT_FALSE(loaded(kLib)) << kLib << " is loaded already";
  const FileFunction add_file = file_function(kLib, "follow_add");
  ASSERT_NE(add_file.offset, 0u);
  usprobe::test::Link add;
  ASSERT_ATTACHED(add.attach(location(kLib, "follow_add")));
  Lib lib(kLib);
  ASSERT_TRUE(lib) << dlerror();
  auto add_fn = lib.sym<AddFn>("follow_add");
  ASSERT_TRUE(add_fn) << dlerror();
  EXPECT_EQ(sites(add), 1);
  EXPECT_EQ(add_fn(20, 22), 42);
  EXPECT_EQ(add.hits(), 1u);
  EXPECT_EQ(add.detach(), 0) << usprobe_last_error();
  EXPECT_TRUE(as_in_file(reinterpret_cast<const void *>(add_fn), add_file, 16))
      << "detach restored the bytes";
  lib.close();
  EXPECT_FALSE(loaded(kLib));
  // A later dlopen finds no probe left behind.
  Lib again(kLib);
  ASSERT_TRUE(again) << dlerror();
  add_fn = again.sym<AddFn>("follow_add");
  ASSERT_TRUE(add_fn) << dlerror();
  EXPECT_TRUE(as_in_file(reinterpret_cast<const void *>(add_fn), add_file, 16));
}

TEST(FollowDlopen, Dlmopen) {
  ASSERT_FALSE(loaded(kLib)) << kLib << " is loaded already";
  usprobe::test::Link add;
  ASSERT_ATTACHED(add.attach(location(kLib, "follow_add")));
  EXPECT_EQ(sites(add), 0);

  Lib first(kLib);
  ASSERT_TRUE(first) << dlerror();
  EXPECT_EQ(sites(add), 1);
  Lib second(dlmopen(LM_ID_NEWLM, kLib, RTLD_NOW | RTLD_LOCAL));
  if (!second) GTEST_SKIP() << "dlmopen(LM_ID_NEWLM): " << dlerror();
  EXPECT_EQ(sites(add), 2) << "the copy in the new namespace has a site of its own";

  auto fn1 = first.sym<AddFn>("follow_add");
  auto fn2 = second.sym<AddFn>("follow_add");
  ASSERT_TRUE(fn1 && fn2) << dlerror();
  ASSERT_NE(fn1, fn2) << "two copies";

  // A link attached while both copies are mapped is placed in both at once.
  usprobe::test::Link add2;
  ASSERT_ATTACHED(add2.attach(location(kLib, "follow_add")));
  EXPECT_EQ(usprobe_link_sites(add2.get()), 2);

  constexpr int kFirst = 700, kSecond = 300;
  int wrong = 0;
  for (int i = 0; i < kFirst; ++i) wrong += fn1(i, 1) != i + 1;
  for (int i = 0; i < kSecond; ++i) wrong += fn2(i, 2) != i + 2;
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(add.hits(), static_cast<uint64_t>(kFirst + kSecond));
  EXPECT_EQ(add2.hits(), static_cast<uint64_t>(kFirst + kSecond));

  // Closing the second namespace unmaps its copy only.
  second.close();
  EXPECT_EQ(sites(add), 1);
  EXPECT_EQ(usprobe_link_sites(add2.get()), 1);
  for (int i = 0; i < kFirst; ++i) wrong += fn1(i, 1) != i + 1;
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(add.hits(), static_cast<uint64_t>(2 * kFirst + kSecond));

  first.close();
  EXPECT_FALSE(loaded(kLib));
  EXPECT_EQ(sites(add), 0);
  EXPECT_EQ(usprobe_link_sites(add2.get()), 0);
}

// The whole file mapped by hand, read and execute, from offset 0: file offset o lies at base + o.
class HandMapping {
 public:
  explicit HandMapping(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st {};
    if (fstat(fd, &st) == 0) {
      void *p =
          mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
      if (p != MAP_FAILED) {
        base_ = static_cast<uint8_t *>(p);
        size_ = static_cast<size_t>(st.st_size);
      }
    }
    close(fd);
  }
  HandMapping(const HandMapping &) = delete;
  HandMapping &operator=(const HandMapping &) = delete;
  ~HandMapping() { unmap(); }

  void unmap() {
    if (base_) munmap(std::exchange(base_, nullptr), size_);
  }
  template <typename F>
  F at(uint64_t offset) const {
    return reinterpret_cast<F>(base_ + offset);
  }
  explicit operator bool() const { return base_ != nullptr; }

 private:
  uint8_t *base_ = nullptr;
  size_t size_ = 0;
};

TEST(FollowMmap, NotifyMapping) {
  ASSERT_FALSE(loaded(kLib)) << kLib << " is loaded already";
  const FileFunction add_file = file_function(kLib, "follow_add");
  const FileFunction tiny_file = file_function(kLib, "follow_tiny");
  ASSERT_NE(add_file.offset, 0u);
  ASSERT_NE(tiny_file.offset, 0u);

  usprobe::test::Link add, tiny;
  ASSERT_ATTACHED(add.attach(location(kLib, "follow_add")));
  ASSERT_ATTACHED(tiny.attach(location(kLib, "follow_tiny")));
  EXPECT_EQ(sites(add), 0);

  HandMapping map(kLib);
  ASSERT_TRUE(map) << "mmap " << kLib << ": " << std::strerror(errno);
  auto add_fn = map.at<AddFn>(add_file.offset);
  auto tiny_fn = map.at<TinyFn>(tiny_file.offset);
  EXPECT_EQ(sites(add), 0) << "no notification yet";
  EXPECT_TRUE(as_in_file(reinterpret_cast<const void *>(add_fn), add_file, 16));

  EXPECT_EQ(usprobe_notify_mapping(), 0) << usprobe_last_error();
  EXPECT_EQ(sites(add), 1);
  EXPECT_EQ(sites(tiny), 1);
  EXPECT_EQ(usprobe_notify_mapping(), 0) << "nothing changed: nothing to do";
  EXPECT_EQ(sites(add), 1) << "still one site, not two";

  int wrong = 0;
  for (int i = 0; i < kCalls; ++i) {
    wrong += add_fn(i, 5) != i + 5;
    wrong += tiny_fn(i) != i + 1;
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(add.hits(), static_cast<uint64_t>(kCalls));
  EXPECT_EQ(tiny.hits(), static_cast<uint64_t>(kCalls));

  // A link attached while the hand mapping is there finds it without a notification.
  {
    usprobe::test::Link add2;
    ASSERT_ATTACHED(add2.attach(location(kLib, "follow_add")));
    EXPECT_EQ(usprobe_link_sites(add2.get()), 1);
    EXPECT_EQ(add_fn(1, 1), 2);
    EXPECT_EQ(add2.hits(), 1u);
  }

  map.unmap();
  EXPECT_EQ(usprobe_notify_mapping(), 0) << usprobe_last_error();
  EXPECT_EQ(sites(add), 0) << "the notification after munmap took the site away";
  EXPECT_EQ(sites(tiny), 0);
  EXPECT_EQ(add.hits(), static_cast<uint64_t>(kCalls + 1));

  // Mapped again, wherever the kernel puts it: the site comes back at the next notification, and
  // detaching while it is there restores the file's bytes.
  HandMapping again(kLib);
  ASSERT_TRUE(again) << "mmap " << kLib << ": " << std::strerror(errno);
  EXPECT_EQ(usprobe_notify_mapping(), 0) << usprobe_last_error();
  EXPECT_EQ(sites(add), 1);
  add_fn = again.at<AddFn>(add_file.offset);
  EXPECT_EQ(add_fn(40, 2), 42);
  EXPECT_EQ(add.hits(), static_cast<uint64_t>(kCalls + 2));
  EXPECT_EQ(add.detach(), 0) << usprobe_last_error();
  EXPECT_EQ(tiny.detach(), 0) << usprobe_last_error();
  EXPECT_TRUE(as_in_file(reinterpret_cast<const void *>(add_fn), add_file, 16));
  EXPECT_TRUE(as_in_file(again.at<const void *>(tiny_file.offset), tiny_file, 4));
  again.unmap();
  EXPECT_EQ(usprobe_notify_mapping(), 0) << usprobe_last_error();
}

// usprobe_on_mapping_change: called after each dlopen and dlclose that changed the mappings, once
// the probes are in line with them (the listener sees the site placed, then gone).
std::vector<int> g_sites_seen;
const usprobe::test::Link *g_listened = nullptr;

// usprobe_link_int3_reason's string stays valid and unchanged until the link is detached: the site
// it described going away with its library (dlclose), and the trampoline of that site being
// retired by a later detach, do not take the string with them.
TEST(FollowDlopen, Int3ReasonLivesUntilTheLinkIsDetached) {
  ASSERT_FALSE(loaded(kLib)) << kLib << " is loaded already";
  usprobe::test::Link tiny;
  // On the int3 path, where the reason is a string of the site's plan.
  ASSERT_ATTACHED(tiny.attach(location(kLib, "follow_tiny"), nullptr, USPROBE_FORCE_INT3));
  Lib lib(kLib);
  ASSERT_TRUE(lib) << dlerror();
  ASSERT_EQ(usprobe_link_uses_int3(tiny.get()), 1) << "forced to the int3 path";
  const char *reason = usprobe_link_int3_reason(tiny.get());
  const std::string copy = reason;
  ASSERT_FALSE(copy.empty());
  lib.close();
  ASSERT_FALSE(loaded(kLib)) << "something else holds the library: dlclose did not unmap it";
  EXPECT_EQ(sites(tiny), 0);
  // A detach retires the trampolines of sites that are gone (the dlclosed one among them).
  {
    usprobe::test::Link other;
    ASSERT_ATTACHED(other.attach("libc:getpgrp"));
    EXPECT_EQ(other.detach(), 0) << usprobe_last_error();
  }
  EXPECT_EQ(std::string(reason), copy) << "the string changed while the link was attached";
  // And through another dlopen, where the probe is placed anew.
  Lib again(kLib);
  ASSERT_TRUE(again) << dlerror();
  EXPECT_EQ(sites(tiny), 1);
  EXPECT_EQ(std::string(reason), copy);
  EXPECT_EQ(std::string(usprobe_link_int3_reason(tiny.get())), copy);
  again.close();
}

TEST(FollowDlopen, MappingListenerRunsOnceTheProbesFollowed) {
  ASSERT_FALSE(loaded(kLib)) << kLib << " is loaded already";
  usprobe::test::Link add;
  ASSERT_ATTACHED(add.attach(location(kLib, "follow_add")));
  g_sites_seen.clear();
  g_listened = &add;
  ASSERT_EQ(usprobe_on_mapping_change([](void *) { g_sites_seen.push_back(sites(*g_listened)); },
                                      nullptr),
            0);
  {
    Lib lib(kLib);
    ASSERT_TRUE(lib) << dlerror();
    ASSERT_FALSE(g_sites_seen.empty()) << "no call after dlopen";
    EXPECT_EQ(g_sites_seen.back(), 1);
  }
  ASSERT_FALSE(loaded(kLib));
  ASSERT_GE(g_sites_seen.size(), 2u) << "no call after dlclose";
  EXPECT_EQ(g_sites_seen.back(), 0);
  const size_t calls = g_sites_seen.size();
  EXPECT_EQ(usprobe_on_mapping_change(nullptr, nullptr), 0);
  { Lib lib(kLib); }
  EXPECT_EQ(g_sites_seen.size(), calls) << "called after it was removed";
}

// Code unmapped by hand without a notification, its address then reused by other memory: the
// detach must not write the file's bytes back over what is there now.
TEST(FollowMmap, DetachAfterAnUnannouncedUnmapLeavesTheNewMemoryAlone) {
  ASSERT_FALSE(loaded(kLib)) << kLib << " is loaded already";
  const FileFunction add_file = file_function(kLib, "follow_add");
  ASSERT_NE(add_file.offset, 0u);
  usprobe::test::Link add;
  ASSERT_ATTACHED(add.attach(location(kLib, "follow_add")));
  HandMapping map(kLib);
  ASSERT_TRUE(map) << "mmap " << kLib << ": " << std::strerror(errno);
  ASSERT_EQ(usprobe_notify_mapping(), 0) << usprobe_last_error();
  ASSERT_EQ(sites(add), 1);
  auto *site = map.at<uint8_t *>(add_file.offset);
  auto *page = reinterpret_cast<uint8_t *>(reinterpret_cast<uintptr_t>(site) & ~uintptr_t{4095});

  map.unmap();  // no usprobe_notify_mapping()
  void *reused =
      mmap(page, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  ASSERT_EQ(reused, page) << std::strerror(errno);
  std::memset(page, 0x5a, 4096);
  EXPECT_EQ(add.detach(), 0) << usprobe_last_error();
  size_t changed = 0;
  for (size_t i = 0; i < 4096; ++i) changed += page[i] != 0x5a;
  EXPECT_EQ(changed, 0u) << "the detach wrote into memory that is no longer the library's";
  munmap(page, 4096);
  EXPECT_EQ(usprobe_notify_mapping(), 0) << usprobe_last_error();
}

TEST(FollowDlopen, CxxApi) {
  ASSERT_FALSE(loaded(kLib)) << kLib << " is loaded already";
  auto link = usprobe::attach(location(kLib, "follow_add"));
  ASSERT_TRUE(link) << link.error().message;
  EXPECT_EQ(link->sites(), 0);
  {
    Lib lib(kLib);
    ASSERT_TRUE(lib) << dlerror();
    EXPECT_EQ(link->sites(), 1);
    EXPECT_EQ(lib.sym<AddFn>("follow_add")(1, 2), 3);
    EXPECT_EQ(link->hits(), 1u);
  }
  EXPECT_FALSE(loaded(kLib));
  EXPECT_EQ(link->sites(), 0);
  EXPECT_TRUE(usprobe::notify_mapping()) << "nothing to do is no error";
}

// --- DlopenDlcloseStress -----------------------------------------------------------------------

using usprobe::test::Watchdog;

// A counter of completed calls, on its own cache line. Written by one thread only (a release store
// of load + 1): a reader that sees a count also sees the hits of the calls it counts.
struct alignas(64) Completed {
  std::atomic<uint64_t> calls{0};

  void add() { calls.store(calls.load(std::memory_order_relaxed) + 1, std::memory_order_release); }
  uint64_t get() const { return calls.load(std::memory_order_acquire); }
};

// One attach's state, seen by its callback; kept alive until the end of the test (a late hit
// would otherwise touch freed memory instead of being reported).
constexpr uint64_t kMagic = 0x464f4c4c4f570000;
struct AttachState {
  std::atomic<bool> detached{false};  // set by the main thread right after detach returned
  std::atomic<uint64_t> calls{0};
  uint64_t magic = kMagic;
};
std::atomic<uint64_t> g_late{0};  // callbacks that started after their detach returned
std::atomic<uint64_t> g_bad{0};   // callbacks with a wrong user pointer

void on_stress_entry(usprobe_hit *, void *user) {
  auto *state = static_cast<AttachState *>(user);
  // Acquire pairs with the main thread's release store after detach.
  if (state->detached.load(std::memory_order_acquire))
    g_late.fetch_add(1, std::memory_order_relaxed);
  if (state->magic != kMagic) g_bad.fetch_add(1, std::memory_order_relaxed);
  state->calls.fetch_add(1, std::memory_order_relaxed);
}

// Per-cycle bounds of one probe, accumulated over the cycles.
struct Bounds {
  explicit Bounds(const char *w) : what(w) {}

  const char *what;
  uint64_t cycles = 0, covered_calls = 0, violations = 0;
  std::string first;

  void check(bool ok, const std::string &why) {
    if (!ok && violations++ == 0) first = strf("%s, cycle %" PRIu64 ": ", what, cycles) + why;
  }
};

constexpr int kCallers = 2;
constexpr int kCycles = 150;
// Only shortens a run on a slow or loaded machine (sanitizers); never decides the result.
constexpr auto kBudget = std::chrono::seconds(4);
constexpr int kRoundCalls = 4;  // calls of each of L2's functions per dlopen/dlclose round

TEST(FollowStress, DlopenDlcloseStress) {
  ASSERT_FALSE(loaded(kLib)) << kLib << " is loaded already";
  ASSERT_FALSE(loaded(kLibB)) << kLibB << " is loaded already";
  Watchdog watchdog("FollowStress.DlopenDlcloseStress");
  g_late = 0;
  g_bad = 0;

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> wrong{0};  // wrong results, failed dlopen/dlsym
  std::atomic<int> ready{0};
  std::array<Completed, kCallers> completed;
  auto callers_total = [&] {
    uint64_t sum = 0;
    for (const auto &c : completed) sum += c.get();
    return sum;
  };

  // Callers: each holds L1 with its own handle and calls follow_add until told to stop.
  std::vector<std::thread> threads;
  for (int t = 0; t < kCallers; ++t)
    threads.emplace_back([&, t] {
      Lib lib(kLib);
      auto fn = lib ? lib.sym<AddFn>("follow_add") : nullptr;
      if (!fn) wrong.fetch_add(1);
      ready.fetch_add(1);
      for (unsigned i = static_cast<unsigned>(t) * 1000003u;
           fn && !stop.load(std::memory_order_relaxed); ++i) {
        int x = static_cast<int>(i);
        if (fn(x, 7) != wrap_add(x, 7)) wrong.fetch_add(1, std::memory_order_relaxed);
        completed[static_cast<size_t>(t)].add();
        // On two cores, callers that never yield starve the mapper, which holds usprobe's lock
        // from the loader's RT_ADD/RT_DELETE to RT_CONSISTENT: every attach and detach would wait
        // for it for milliseconds. A yield every 256 calls keeps the test short.
        if ((i & 255) == 0) std::this_thread::yield();
      }
    });
  while (ready.load() < kCallers) std::this_thread::yield();

  // The mapper: round r takes and gives back a reference to L1 (the callers keep it mapped), then
  // maps L2, calls each of its functions kRoundCalls times and unmaps it. rounds_started is r + 1
  // from before round r's dlopen of L2, rounds_finished r + 1 from after its last call.
  std::atomic<uint64_t> rounds_started{0}, rounds_finished{0}, still_loaded{0};
  std::array<Completed, 2> b_calls;  // completed calls of follow_b_mul, follow_b_tiny
  threads.emplace_back([&] {
    for (uint64_t r = 0; !stop.load(std::memory_order_relaxed); ++r) {
      if (void *h = dlopen(kLib, RTLD_NOW | RTLD_LOCAL))
        dlclose(h);
      else
        wrong.fetch_add(1);
      rounds_started.store(r + 1);
      Lib lib(kLibB);
      auto mul = lib ? lib.sym<AddFn>("follow_b_mul") : nullptr;
      auto tiny = lib ? lib.sym<TinyFn>("follow_b_tiny") : nullptr;
      if (!mul || !tiny) {
        wrong.fetch_add(1);
        break;
      }
      for (int k = 0; k < kRoundCalls; ++k) {
        int x = static_cast<int>(r) + k;
        if (mul(x, 3) != wrap_mul(x, 3)) wrong.fetch_add(1, std::memory_order_relaxed);
        b_calls[0].add();
        if (tiny(x) != wrap_add(x, 2)) wrong.fetch_add(1, std::memory_order_relaxed);
        b_calls[1].add();
      }
      rounds_finished.store(r + 1);
      lib.close();
      if (loaded(kLibB)) still_loaded.fetch_add(1);
    }
  });

  // The main thread attaches and detaches one callback probe on L1's follow_add and one on one of
  // L2's functions (follow_b_mul, jump path, and follow_b_tiny, int3 path, in turn), in alternating
  // orders. Per cycle, for L1, with S0 the callers' completed calls read before attach, S1 right
  // after attach returned, S2 right before detach (H the link's hits read after S2) and S3 right
  // after detach returned:
  //   H >= (S2 - S1) - kCallers: a caller may have had one call in flight when attach returned,
  //     which passed the site before it was patched but completed after S1 was read;
  //   the callback's final count <= (S3 - S0) + kCallers: a caller may be inside a counted call
  //     when S3 is read.
  // For L2, with A = rounds_started read after attach returned and B = rounds_finished read before
  // detach: rounds A..B-1 mapped L2 after attach returned and made their last call before detach
  // was called, so every one of their calls is counted: H >= kRoundCalls * (B - A), exactly; and
  // the callback's final count <= the mapper's calls from before attach to after detach, + 1.
  std::vector<std::unique_ptr<AttachState>> states;
  Bounds l1{"follow_add"}, l2{"L2"};
  uint64_t attach_failures = 0, detach_failures = 0, l1_sites_wrong = 0;
  std::string first_error;
  const auto start = Clock::now();
  for (int c = 0; c < kCycles && Clock::now() - start < kBudget; ++c) {
    const bool tiny = c % 2 == 1;
    const bool l1_first = (c / 2) % 2 == 0;
    const std::string l2_where = location(kLibB, tiny ? "follow_b_tiny" : "follow_b_mul");
    Completed &l2_calls = b_calls[tiny ? 1 : 0];
    states.push_back(std::make_unique<AttachState>());
    AttachState *s1_state = states.back().get();
    states.push_back(std::make_unique<AttachState>());
    AttachState *s2_state = states.back().get();
    const usprobe_consumer c1{on_stress_entry, s1_state, nullptr};
    const usprobe_consumer c2{on_stress_entry, s2_state, nullptr};

    const uint64_t s0 = callers_total(), b0 = l2_calls.get();
    usprobe_link *link1 = nullptr, *link2 = nullptr;
    auto attach = [&](const std::string &where, const usprobe_consumer *cons, usprobe_link **out) {
      if (int rc = usprobe_attach(where.c_str(), cons, out); rc < 0) {
        *out = nullptr;
        if (attach_failures++ == 0) first_error = where + ": " + usprobe_last_error();
      }
    };
    if (l1_first) attach(location(kLib, "follow_add"), &c1, &link1);
    attach(l2_where, &c2, &link2);
    if (!l1_first) attach(location(kLib, "follow_add"), &c1, &link1);
    const uint64_t s1 = callers_total();
    const uint64_t a = rounds_started.load();
    if (!link1 || !link2) {
      if (link1) usprobe_detach(link1);
      if (link2) usprobe_detach(link2);
      if (attach_failures > 10) break;
      continue;
    }
    l1_sites_wrong += usprobe_link_sites(link1) != 1;

    // Let the callers call and the mapper complete a round with the probes attached (bounded).
    const auto until = Clock::now() + std::chrono::milliseconds(5);
    while ((rounds_finished.load() <= a || callers_total() - s1 < 8) && Clock::now() < until)
      std::this_thread::yield();

    const uint64_t b = rounds_finished.load();
    const uint64_t s2 = callers_total();
    const uint64_t h1 = usprobe_link_hits(link1), h2 = usprobe_link_hits(link2);
    auto detach = [&](usprobe_link *link, AttachState *state) {
      if (usprobe_detach(link) < 0 && detach_failures++ == 0)
        first_error = std::string("usprobe_detach: ") + usprobe_last_error();
      // Release: pairs with the callback's acquire load.
      state->detached.store(true, std::memory_order_release);
    };
    if (l1_first) detach(link1, s1_state);
    detach(link2, s2_state);
    if (!l1_first) detach(link1, s1_state);
    const uint64_t s3 = callers_total(), b3 = l2_calls.get();

    ++l1.cycles;
    l1.covered_calls += s2 - s1;
    l1.check(h1 + kCallers >= s2 - s1,
             strf("H=%" PRIu64 " but S2-S1=%" PRIu64 ": calls made while attached were lost", h1,
                  s2 - s1));
    const uint64_t cb1 = s1_state->calls.load();
    l1.check(
        cb1 <= s3 - s0 + kCallers,
        strf("%" PRIu64 " callbacks but S3-S0=%" PRIu64 ": more hits than calls", cb1, s3 - s0));
    l1.check(cb1 >= h1, strf("%" PRIu64 " callbacks after detach, H=%" PRIu64, cb1, h1));

    ++l2.cycles;
    const uint64_t covered = b > a ? kRoundCalls * (b - a) : 0;
    l2.covered_calls += covered;
    l2.check(h2 >= covered, strf("%s: H=%" PRIu64 " but rounds %" PRIu64 "..%" PRIu64
                                 " made %" PRIu64 " calls while attached",
                                 tiny ? "follow_b_tiny" : "follow_b_mul", h2, a, b, covered));
    const uint64_t cb2 = s2_state->calls.load();
    l2.check(cb2 <= b3 - b0 + 1, strf("%s: %" PRIu64 " callbacks but %" PRIu64 " calls",
                                      tiny ? "follow_b_tiny" : "follow_b_mul", cb2, b3 - b0));
    l2.check(cb2 >= h2, strf("%" PRIu64 " callbacks after detach, H=%" PRIu64, cb2, h2));
  }
  const double took = std::chrono::duration<double>(Clock::now() - start).count();

  stop = true;
  for (auto &t : threads) t.join();
  std::printf("%" PRIu64 " attach/detach cycles in %.2f s; %" PRIu64
              " dlopen/dlclose rounds; calls covered: %" PRIu64 " of L1's, %" PRIu64 " of L2's\n",
              l1.cycles, took, rounds_finished.load(), l1.covered_calls, l2.covered_calls);

  EXPECT_EQ(attach_failures, 0u) << first_error;
  EXPECT_EQ(detach_failures, 0u) << first_error;
  EXPECT_EQ(wrong.load(), 0u) << "wrong results or failed dlopen/dlsym";
  EXPECT_EQ(g_late.load(), 0u) << "callbacks ran after their detach returned";
  EXPECT_EQ(g_bad.load(), 0u);
  EXPECT_EQ(l1_sites_wrong, 0u) << "follow_add's link did not have exactly one site";
  EXPECT_EQ(still_loaded.load(), 0u) << "dlclose did not unmap L2 in some rounds";
  EXPECT_EQ(l1.violations, 0u) << l1.first;
  EXPECT_EQ(l2.violations, 0u) << l2.first;
  EXPECT_GE(l1.cycles, 20u) << "too few cycles to mean anything";
  EXPECT_GT(l2.covered_calls, 0u) << "no dlopen round ran wholly while L2's probe was attached";
  EXPECT_FALSE(loaded(kLib));
  EXPECT_FALSE(loaded(kLibB));
}

}  // namespace
