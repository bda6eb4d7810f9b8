// USDT probes through the C API (issue 15): "usdt:FILE:PROVIDER:NAME" attaches one link at every
// site of the probe, each hit reads its own site's argument specs (usprobe_usdt_arg), and the
// probe's semaphore is raised while it is attached and lowered after, shared with whoever else
// raised it. The probes are libusprobe_usdt_targets.so's (tests/targets/usdt_targets.h), which
// this test does not link: it dlopens the library, so that one test can attach before the library
// is there and see the probe placed, and its semaphore raised, when it is loaded.
#include <dlfcn.h>

#include <cerrno>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <vector>

#include <gtest/gtest.h>

#include "support/test_link.h"
#include "usprobe/usprobe.h"

namespace {

using usprobe::test::Link;

const std::string kLib = USDT_TARGETS_LIB;

// The library's functions and its semaphore, through dlopen.
struct Targets {
  void *handle = nullptr;
  void (*fire_regs)() = nullptr;
  void (*fire_memory)(const long *, long) = nullptr;
  long (*fire_values)(signed char, unsigned char, short, unsigned short, int, unsigned, long,
                      unsigned long, const int *) = nullptr;
  void (*fire_twice)(int) = nullptr;
  int (*fire_gated)(long) = nullptr;
  unsigned short *semaphore = nullptr;

  bool open() {
    handle = dlopen(kLib.c_str(), RTLD_NOW);
    if (!handle) return false;
    fire_regs = reinterpret_cast<void (*)()>(dlsym(handle, "ust_fire_regs"));
    fire_memory = reinterpret_cast<void (*)(const long *, long)>(dlsym(handle, "ust_fire_memory"));
    fire_values = reinterpret_cast<decltype(fire_values)>(dlsym(handle, "ust_fire_values"));
    fire_twice = reinterpret_cast<void (*)(int)>(dlsym(handle, "ust_fire_twice"));
    fire_gated = reinterpret_cast<int (*)(long)>(dlsym(handle, "ust_fire_gated"));
    semaphore = static_cast<unsigned short *>(dlsym(handle, "usprobe_test_gated_semaphore"));
    return fire_regs && fire_memory && fire_values && fire_twice && fire_gated && semaphore;
  }
};

// Every argument of every hit, in order.
struct Recorded {
  std::vector<std::vector<uint64_t>> hits;
  std::vector<int> counts;
};

void record(usprobe_hit *hit, void *user) {
  auto *r = static_cast<Recorded *>(user);
  int n = usprobe_usdt_arg_count(hit);
  r->counts.push_back(n);
  std::vector<uint64_t> args;
  for (int i = 0; i < n; ++i) args.push_back(usprobe_usdt_arg(hit, static_cast<unsigned>(i)));
  r->hits.push_back(args);
}

std::string probe(const std::string &name) {
  return "usdt:" + kLib + ":usprobe_test:" + name;
}

uint64_t u(int64_t v) {
  return static_cast<uint64_t>(v);
}

TEST(Usdt, RegistersOfEveryWidthReadAsTheirSpecsSay) {
  Targets t;
  ASSERT_TRUE(t.open()) << dlerror();
  Recorded r;
  usprobe_consumer c = {record, &r, nullptr};
  Link link;
  ASSERT_EQ(link.attach(probe("regs"), &c), 0) << usprobe_last_error();
  EXPECT_EQ(link.name(), "usdt:libusprobe_usdt_targets.so:usprobe_test:regs");
  EXPECT_EQ(usprobe_link_sites(link.get()), 1);
  t.fire_regs();
  t.fire_regs();
  ASSERT_EQ(r.hits.size(), 2u);
  const std::vector<uint64_t> want = {0x0123456789abcdefull,
                                      u(static_cast<int32_t>(0x89abcdef)),
                                      0xcdef,
                                      u(-17),
                                      0xcd,
                                      u(-2),
                                      u(-10),
                                      0x7f85,
                                      0x85,
                                      u(-1),
                                      0xff,
                                      0x2345};
  EXPECT_EQ(r.hits[0], want);
  EXPECT_EQ(r.hits[1], want);
  EXPECT_EQ(r.counts[0], 12);
  EXPECT_EQ(link.hits(), 2u);
}

TEST(Usdt, MemoryAndConstantOperands) {
  Targets t;
  ASSERT_TRUE(t.open()) << dlerror();
  Recorded r;
  usprobe_consumer c = {record, &r, nullptr};
  Link link;
  ASSERT_EQ(link.attach(probe("memory"), &c), 0) << usprobe_last_error();
  const long array[] = {-1, 2, -3, 4, -5};
  t.fire_memory(array, 3);
  ASSERT_EQ(r.hits.size(), 1u);
  EXPECT_EQ(r.hits[0], (std::vector<uint64_t>{u(-1), 2, 4, u(-3), u(-7), u(-100), 200, u(-5), 16}));
}

TEST(Usdt, CompilerChosenOperandsOfEverySizeAndSign) {
  Targets t;
  ASSERT_TRUE(t.open()) << dlerror();
  Recorded r;
  usprobe_consumer c = {record, &r, nullptr};
  Link link;
  ASSERT_EQ(link.attach(probe("values"), &c), 0) << usprobe_last_error();
  const int pointed = -123456;
  long result = t.fire_values(-3, 250, -300, 60000, -70000, 4000000000u, -5000000000L,
                              9000000000000000000ul, &pointed);
  ASSERT_EQ(r.hits.size(), 1u);
  EXPECT_EQ(r.hits[0], (std::vector<uint64_t>{u(-3), 250, u(-300), 60000, u(-70000), 4000000000u,
                                              u(-5000000000L), 9000000000000000000ul, u(-123456),
                                              u(-3), u(-7)}));
  // The program computes what it computes unprobed (the same call after detach).
  ASSERT_EQ(link.detach(), 0);
  EXPECT_EQ(t.fire_values(-3, 250, -300, 60000, -70000, 4000000000u, -5000000000L,
                          9000000000000000000ul, &pointed),
            result);
}

TEST(Usdt, OneLinkCoversEverySiteEachWithItsOwnArguments) {
  Targets t;
  ASSERT_TRUE(t.open()) << dlerror();
  Recorded r;
  usprobe_consumer c = {record, &r, nullptr};
  Link link;
  ASSERT_EQ(link.attach(probe("twice"), &c), 0) << usprobe_last_error();
  EXPECT_EQ(usprobe_link_sites(link.get()), 2);
  t.fire_twice(5);
  t.fire_twice(40);
  ASSERT_EQ(r.hits.size(), 4u);
  EXPECT_EQ(r.hits[0], std::vector<uint64_t>{5});
  EXPECT_EQ(r.hits[1], std::vector<uint64_t>{6});
  EXPECT_EQ(r.hits[2], std::vector<uint64_t>{40});
  EXPECT_EQ(r.hits[3], std::vector<uint64_t>{41});
  EXPECT_EQ(link.hits(), 4u);
  // The built-in counter of a second link counts every site too.
  Link counter;
  ASSERT_EQ(counter.attach(probe("twice")), 0) << usprobe_last_error();
  t.fire_twice(1);
  EXPECT_EQ(counter.hits(), 2u);
}

TEST(Usdt, SemaphoreRaisedWhileAttachedAddedToNotOverwritten) {
  Targets t;
  ASSERT_TRUE(t.open()) << dlerror();
  EXPECT_EQ(*t.semaphore, 0);
  EXPECT_EQ(t.fire_gated(1), 0) << "nobody traces: the program skips the probe";
  Recorded r;
  usprobe_consumer c = {record, &r, nullptr};
  {
    Link link;
    ASSERT_EQ(link.attach(probe("gated"), &c), 0) << usprobe_last_error();
    EXPECT_EQ(*t.semaphore, 1);
    EXPECT_EQ(t.fire_gated(7), 1);
    EXPECT_EQ(t.fire_gated(8), 1);
    // A second link on the placed probe changes nothing.
    Link second;
    ASSERT_EQ(second.attach(probe("gated")), 0) << usprobe_last_error();
    EXPECT_EQ(*t.semaphore, 1);
  }
  EXPECT_EQ(*t.semaphore, 0) << "lowered when the last link went";
  EXPECT_EQ(t.fire_gated(9), 0);
  ASSERT_EQ(r.hits.size(), 2u);
  EXPECT_EQ(r.hits[0], std::vector<uint64_t>{7});
  EXPECT_EQ(r.hits[1], std::vector<uint64_t>{8});

  // Another tracer (the kernel's ref_ctr_offset, another session) holds it raised: usprobe adds
  // its one and takes only that back.
  *t.semaphore = 3;
  {
    Link link;
    ASSERT_EQ(link.attach(probe("gated")), 0) << usprobe_last_error();
    EXPECT_EQ(*t.semaphore, 4);
  }
  EXPECT_EQ(*t.semaphore, 3);
  *t.semaphore = 0;
}

TEST(Usdt, AttachedBeforeTheLibraryIsLoadedPlacedAndRaisedWhenItIs) {
  // ctest runs each test in a process of its own; run together, an earlier test loaded it.
  if (void *loaded = dlopen(kLib.c_str(), RTLD_NOW | RTLD_NOLOAD)) {
    dlclose(loaded);
    GTEST_SKIP() << kLib << " is loaded already (an earlier test in this process): run alone";
  }
  Recorded r;
  usprobe_consumer c = {record, &r, nullptr};
  Link link;
  ASSERT_EQ(link.attach(probe("gated"), &c), 0) << usprobe_last_error();
  EXPECT_EQ(usprobe_link_sites(link.get()), 0) << "not mapped yet";
  Targets t;
  ASSERT_TRUE(t.open()) << dlerror();
  EXPECT_EQ(usprobe_link_sites(link.get()), 1);
  EXPECT_EQ(*t.semaphore, 1);
  EXPECT_EQ(t.fire_gated(11), 1);
  ASSERT_EQ(r.hits.size(), 1u);
  EXPECT_EQ(r.hits[0], std::vector<uint64_t>{11});
  ASSERT_EQ(link.detach(), 0);
  EXPECT_EQ(*t.semaphore, 0);
}

TEST(Usdt, NameAloneWhenOneProviderHasIt) {
  Targets t;
  ASSERT_TRUE(t.open()) << dlerror();
  Link link;
  ASSERT_EQ(link.attach("usdt:" + kLib + ":twice"), 0) << usprobe_last_error();
  t.fire_twice(1);
  EXPECT_EQ(link.hits(), 2u);
  Link by_short_name;
  ASSERT_EQ(by_short_name.attach("usdt:libusprobe_usdt_targets:usprobe_test:twice"), 0)
      << usprobe_last_error();
}

TEST(Usdt, BadRequestsAreRefusedWithTheirReason) {
  Targets t;
  ASSERT_TRUE(t.open()) << dlerror();
  Link link;
  EXPECT_EQ(link.attach(probe("twise")), -ENOENT);
  EXPECT_NE(std::string(usprobe_last_error())
                .find("no USDT probe `usprobe_test:twise` (did you "
                      "mean `usprobe_test:twice`?)"),
            std::string::npos)
      << usprobe_last_error();
  EXPECT_EQ(link.attach(probe("float")), -EINVAL);
  EXPECT_NE(std::string(usprobe_last_error()).find("floating-point"), std::string::npos)
      << usprobe_last_error();
  EXPECT_EQ(link.attach("uretprobe:" + probe("twice")), -EINVAL);
  EXPECT_NE(std::string(usprobe_last_error()).find("no return"), std::string::npos)
      << usprobe_last_error();
  EXPECT_EQ(link.attach("usdt:/bin/true:x:y"), -ENOENT);
  EXPECT_NE(std::string(usprobe_last_error()).find("no USDT probes"), std::string::npos)
      << usprobe_last_error();
  EXPECT_EQ(link.attach("usdt:" + kLib), -EINVAL);
  // A failed attach changed nothing.
  EXPECT_EQ(*t.semaphore, 0);
}

// Not a USDT probe: no USDT arguments.
int g_count_seen = -2;
void note_count(usprobe_hit *hit, void *) {
  g_count_seen = usprobe_usdt_arg_count(hit);
}

TEST(Usdt, OtherProbesHaveNoUsdtArguments) {
  Targets t;
  ASSERT_TRUE(t.open()) << dlerror();
  usprobe_consumer c = {note_count, nullptr, nullptr};
  Link link;
  ASSERT_EQ(link.attach(kLib + ":ust_fire_gated", &c), 0) << usprobe_last_error();
  t.fire_gated(1);
  EXPECT_EQ(g_count_seen, -1);
}

// libstdc++'s own probes (libstdcxx:throw, :catch; no semaphore): counted exactly in this
// program, which throws a known number of exceptions, each throw with the thrown type's typeinfo as
// its second argument.
struct CountedError : std::runtime_error {
  CountedError() : std::runtime_error("counted") {}
};

__attribute__((noinline)) void throw_counted(int i) {
  if (i >= 0) throw CountedError();
}

TEST(Usdt, LibstdcxxThrowAndCatchCountedExactly) {
  Recorded thrown;
  usprobe_consumer c = {record, &thrown, nullptr};
  Link throw_link, catch_link;
  ASSERT_EQ(throw_link.attach("usdt:libstdc++:libstdcxx:throw", &c), 0) << usprobe_last_error();
  ASSERT_EQ(catch_link.attach("usdt:libstdc++:catch"), 0) << usprobe_last_error();
  int caught = 0;
  for (int i = 0; i < 250; ++i) {
    try {
      throw_counted(i);
    } catch (const CountedError &) {
      ++caught;
    }
  }
  EXPECT_EQ(caught, 250);
  EXPECT_EQ(throw_link.hits(), 250u);
  EXPECT_EQ(catch_link.hits(), 250u);
  ASSERT_EQ(thrown.hits.size(), 250u);
  const auto type = reinterpret_cast<uint64_t>(&typeid(CountedError));
  for (const auto &args : thrown.hits) {
    ASSERT_EQ(args.size(), 2u);
    EXPECT_EQ(args[1], type) << "throw's second argument: the thrown type's typeinfo";
  }
}

}  // namespace
