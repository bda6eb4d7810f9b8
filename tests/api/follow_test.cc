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
//
// Attach and detach while threads dlopen, dlclose and call the libraries are tortured in
// tests/stress/follow_test.cc.
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
#include "support/dl_lib.h"
#include "support/test_link.h"
#include "usprobe/usprobe.h"
#include "usprobe/usprobe.hpp"

#if !defined(FOLLOW_LIB) || !defined(FOLLOW_LIB_B)
#error "FOLLOW_LIB and FOLLOW_LIB_B (the test libraries' paths) come from tests/CMakeLists.txt"
#endif

namespace {

using usprobe::test::strf;

constexpr const char *kLib = FOLLOW_LIB;     // L1: follow_add, follow_tiny
constexpr const char *kLibB = FOLLOW_LIB_B;  // L2: follow_b_mul, follow_b_tiny

using AddFn = int (*)(int, int);  // follow_add(a, b) == a + b, follow_b_mul(a, b) == a * b
using TinyFn = int (*)(int);      // follow_tiny(x) == x + 1, follow_b_tiny(x) == x + 2

std::string location(const char *lib, const char *function) {
  return std::string(lib) + ":" + function;
}

int sites(const usprobe::test::Link &link) {
  return usprobe_link_sites(link.get());
}

using usprobe::test::Lib;
using usprobe::test::loaded;

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

}  // namespace
