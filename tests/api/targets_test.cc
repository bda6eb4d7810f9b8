// Every tricky function of libusprobe_targets.so probed for real through the public C API: exact
// hit counts with the built-in counter and with a C callback, results unchanged while probed and
// after detach, the code bytes patched while attached and restored exactly after, and the path
// (jump or int3) each site takes, with its reason. Then what a handler sees (arguments, ip, return
// address, names), usprobe_set_arg, shared patches, the recursion guard, forced int3, windows that
// overlap. Threads counting at once and live attach/detach under callers are tortured in
// tests/stress/targets_test.cc.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <array>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "support/code_bytes.h"
#include "support/test_link.h"
#include "targets/targets.h"
#include "usprobe/usprobe.h"

namespace {

constexpr const char *kLib = "libusprobe_targets.so";

using usprobe::test::loc;

template <typename F>
const uint8_t *code(F *fn) {
  return reinterpret_cast<const uint8_t *>(fn);
}

using Bytes = std::array<uint8_t, 16>;
Bytes bytes_at(const void *p) {
  Bytes b;
  std::memcpy(b.data(), p, b.size());
  return b;
}
std::string hex(const Bytes &b) {
  std::string s;
  char buf[4];
  for (uint8_t x : b) {
    std::snprintf(buf, sizeof buf, "%02x ", x);
    s += buf;
  }
  return s;
}

using usprobe::test::Link;

// ---- The tricky functions, one table ------------------------------------------------------------

// One checked call; adds the hits it should produce to *hits. Returns false on a wrong result.
using CallFn = bool (*)(unsigned i, uint64_t *hits);

struct Case {
  const char *name;  // also what gtest prints for the parameter (PrintTo below)
  const void *fn;
  bool int3;           // the expected path
  const char *reason;  // a part of the int3 reason (nullptr: the jump path)
  CallFn call;
  const char *path = "jump";  // usprobe_link_path
  size_t written = 5;         // bytes the patch writes
};

// Results checked against the documented formulas in targets.h.
bool call_endbr64(unsigned i, uint64_t *h) {
  ++*h;
  return tgt_endbr64(i, 2l * i) == 3l * i;
}
bool call_rip_first(unsigned, uint64_t *h) {
  ++*h;
  return tgt_rip_first() == TGT_RIP_DATA_INITIAL;
}
bool call_rip_cmp_imm(unsigned, uint64_t *h) {
  ++*h;
  return tgt_rip_cmp_imm() == 1;
}
bool call_jcc_in_window(unsigned i, uint64_t *h) {
  ++*h;
  int x = static_cast<int>(i % 3);  // both sides of the je
  return tgt_jcc_in_window(x) == (x == 0 ? 100 : 2 * x);
}
bool call_loop_to_entry2(unsigned i, uint64_t *h) {
  ++*h;  // the back edge goes to entry+2, not to the probed entry
  int n = static_cast<int>(i % 10);
  return tgt_loop_to_entry2(n) == n * (n + 1) / 2;
}
bool call_one_byte(unsigned, uint64_t *h) {
  ++*h;
  tgt_one_byte();
  return true;
}
bool call_three_byte(unsigned i, uint64_t *h) {
  ++*h;
  return tgt_three_byte(static_cast<int>(i)) == static_cast<int>(i);
}
bool call_xmm_args(unsigned i, uint64_t *h) {
  ++*h;
  double a = i, b = 1, c = 2, d = 3, e = 4, f = 5, g = 6, k = 7;
  return tgt_xmm_args(a, b, c, d, e, f, g, k) ==
         a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * k;
}
bool call_mixed_args(unsigned i, uint64_t *h) {
  ++*h;
  int a = static_cast<int>(i), e = -3, k9 = 5;
  double b = 0.5, d = -1.25, f = 2, hh = 3.5, j = -4, l = 8;
  long c = 7, g = -11, k = 13;
  double expect = 1.0 * a + 2 * b + 3.0 * c + 4 * d + 5.0 * e + 6 * f + 7.0 * g + 8 * hh +
                  9.0 * k9 + 10 * j + 11.0 * k + 12 * l;
  return tgt_mixed_args(a, b, c, d, e, f, g, hh, k9, j, k, l) == expect;
}
bool call_helper(unsigned i, uint64_t *h) {
  ++*h;
  return tgt_helper(i) == 3l * i + 7;
}
bool call_call_first(unsigned i, uint64_t *h) {
  ++*h;
  return tgt_call_first(i) == 3l * i + 8;
}
bool call_tail_call(unsigned i, uint64_t *h) {
  ++*h;
  return tgt_tail_call(i) == static_cast<long>(i) + 1;
}
bool call_six_args(unsigned i, uint64_t *h) {
  ++*h;
  long a = i;
  return tgt_six_args(a, 2, 3, 4, 5, 6) == a + 4 + 9 + 16 + 25 + 36;
}
bool call_stack_arg(unsigned i, uint64_t *h) {
  ++*h;
  return tgt_stack_arg(1, 2, 3, 4, 5, 6, 1000l + i) == 1000l + i;
}
bool call_indirect_jump(unsigned i, uint64_t *h) {
  ++*h;
  int x = static_cast<int>(i % 6) - 1;  // -1 .. 4: the table and both defaults
  int expect = x >= 0 && x <= 3 ? 10 * (x + 1) : -1;
  return tgt_indirect_jump(x) == expect;
}
bool call_recurse(unsigned i, uint64_t *h) {
  long n = i % 5;
  *h += n + 1;  // the recursive call goes to the (probed) entry
  return tgt_recurse(n) == n;
}
bool call_counted(unsigned i, uint64_t *h) {
  ++*h;
  return tgt_counted(i) == static_cast<long>(i) + 1;
}

const Case kCases[] = {
    {"tgt_endbr64", reinterpret_cast<const void *>(&tgt_endbr64), false, nullptr, call_endbr64},
    {"tgt_rip_first", reinterpret_cast<const void *>(&tgt_rip_first), false, nullptr,
     call_rip_first},
    {"tgt_rip_cmp_imm", reinterpret_cast<const void *>(&tgt_rip_cmp_imm), false, nullptr,
     call_rip_cmp_imm},
    // `test; je +4; lea; ret`: the je (rel8) is inside the 7-byte window [0,7), but its target
    // (entry+8, `mov $100`) is outside it and nothing branches into the window: the relocator
    // widens the je to rel32, so the jump path is right here.
    {"tgt_jcc_in_window", reinterpret_cast<const void *>(&tgt_jcc_in_window), false, nullptr,
     call_jcc_in_window},
    // The back edge targets entry+2, inside a 5-byte window: a punned jump writes only the first
    // instruction (2 bytes) and borrows the loop head's bytes, unchanged, as its displacement's.
    {"tgt_loop_to_entry2", reinterpret_cast<const void *>(&tgt_loop_to_entry2), false, nullptr,
     call_loop_to_entry2, "jump (punned)", 2},
    // Shorter than a jump: the window runs on over the padding after their `ret`, which nothing
    // executes (a plain jump: its 5 bytes cover the function and the nops after it).
    {"tgt_one_byte", reinterpret_cast<const void *>(&tgt_one_byte), false, nullptr, call_one_byte},
    {"tgt_three_byte", reinterpret_cast<const void *>(&tgt_three_byte), false, nullptr,
     call_three_byte},
    {"tgt_xmm_args", reinterpret_cast<const void *>(&tgt_xmm_args), false, nullptr, call_xmm_args},
    {"tgt_mixed_args", reinterpret_cast<const void *>(&tgt_mixed_args), false, nullptr,
     call_mixed_args},
    {"tgt_helper", reinterpret_cast<const void *>(&tgt_helper), false, nullptr, call_helper},
    {"tgt_call_first", reinterpret_cast<const void *>(&tgt_call_first), false, nullptr,
     call_call_first},
    {"tgt_tail_call", reinterpret_cast<const void *>(&tgt_tail_call), false, nullptr,
     call_tail_call},
    {"tgt_six_args", reinterpret_cast<const void *>(&tgt_six_args), false, nullptr, call_six_args},
    {"tgt_stack_arg", reinterpret_cast<const void *>(&tgt_stack_arg), false, nullptr,
     call_stack_arg},
    // An indirect jump in the function, but the site is its entry: jump path.
    {"tgt_indirect_jump", reinterpret_cast<const void *>(&tgt_indirect_jump), false, nullptr,
     call_indirect_jump},
    {"tgt_recurse", reinterpret_cast<const void *>(&tgt_recurse), false, nullptr, call_recurse},
    {"tgt_counted", reinterpret_cast<const void *>(&tgt_counted), false, nullptr, call_counted},
};

struct CallbackCount {
  uint64_t calls = 0;
  uint64_t wrong_ip = 0;
  uint64_t expect_ip = 0;
  std::string wrong_name;
  std::string expect_name;
};
void count_hit(usprobe_hit *hit, void *user) {
  auto *c = static_cast<CallbackCount *>(user);
  ++c->calls;
  if (usprobe_hit_ip(hit) != c->expect_ip) ++c->wrong_ip;
  if (c->expect_name != usprobe_hit_probe_name(hit)) c->wrong_name = usprobe_hit_probe_name(hit);
}

TEST(TargetsSanity, FunctionAddressesAreInTheTargetsLibrary) {
  // A non-PIE test binary would give canonical PLT addresses here, and every byte check below
  // would look at the wrong code.
  for (const Case &c : kCases) {
    Dl_info info{};
    ASSERT_NE(dladdr(c.fn, &info), 0) << c.name;
    ASSERT_NE(info.dli_fname, nullptr);
    EXPECT_NE(std::strstr(info.dli_fname, kLib), nullptr) << c.name << " is in " << info.dli_fname;
    ASSERT_NE(info.dli_sname, nullptr) << c.name;
    EXPECT_STREQ(info.dli_sname, c.name);
  }
}

void PrintTo(const Case &c, std::ostream *os) {
  *os << c.name;
}

class ProbedTarget : public ::testing::TestWithParam<std::tuple<Case, bool>> {};

std::string case_name(const ::testing::TestParamInfo<std::tuple<Case, bool>> &p) {
  return std::string(std::get<0>(p.param).name) + (std::get<1>(p.param) ? "_callback" : "_counter");
}

TEST_P(ProbedTarget, CountsExactlyKeepsResultsAndRestoresBytes) {
  const Case &c = std::get<0>(GetParam());
  const bool callback = std::get<1>(GetParam());
  constexpr unsigned kCalls = 1000;

  // Unprobed: the results are right to begin with.
  uint64_t ignored = 0;
  for (unsigned i = 0; i < 20; ++i) ASSERT_TRUE(c.call(i, &ignored)) << c.name << " unprobed";

  const Bytes before = bytes_at(c.fn);
  CallbackCount cb;
  cb.expect_ip = reinterpret_cast<uint64_t>(c.fn);
  cb.expect_name = loc(c.name);
  usprobe_consumer consumer{count_hit, &cb, nullptr};
  Link link;
  ASSERT_ATTACHED(link.attach(loc(c.name), callback ? &consumer : nullptr));

  EXPECT_EQ(link.name(), loc(c.name));
  EXPECT_EQ(link.int3(), c.int3) << c.name << ": int3 reason: `" << link.reason() << "`";
  if (c.int3) {
    EXPECT_NE(link.reason().find(c.reason), std::string::npos)
        << c.name << ": int3 reason `" << link.reason() << "` does not mention `" << c.reason
        << "`";
  } else {
    EXPECT_EQ(link.reason(), "");
  }

  const Bytes during = bytes_at(c.fn);
  EXPECT_NE(during, before) << c.name << ": nothing patched";
  const size_t patch_len = c.int3 ? 1 : c.written;
  EXPECT_EQ(usprobe_link_path(link.get()), std::string(c.int3 ? "int3" : c.path)) << c.name;
  if (c.int3 || std::string(c.path) == "jump") {
    EXPECT_EQ(during[0], c.int3 ? 0xCC : 0xE9) << hex(during);
  } else {
    EXPECT_NE(during[0], 0xCC) << hex(during);
  }
  EXPECT_EQ(0, std::memcmp(during.data() + patch_len, before.data() + patch_len,
                           before.size() - patch_len))
      << c.name << ": bytes beyond the patch changed: " << hex(before) << " -> " << hex(during);

  uint64_t expect_hits = 0;
  unsigned wrong = 0;
  for (unsigned i = 0; i < kCalls; ++i)
    if (!c.call(i, &expect_hits)) ++wrong;
  EXPECT_EQ(wrong, 0u) << c.name << ": wrong results while probed";
  EXPECT_EQ(link.hits(), expect_hits) << c.name;
  EXPECT_EQ(link.missed(), 0u) << c.name;
  if (callback) {
    EXPECT_EQ(cb.calls, expect_hits) << c.name;
    EXPECT_EQ(cb.wrong_ip, 0u) << c.name;
    EXPECT_EQ(cb.wrong_name, "") << c.name;
  }

  ASSERT_EQ(link.detach(), 0) << usprobe_last_error();
  EXPECT_EQ(bytes_at(c.fn), before) << c.name << ": not restored";
  wrong = 0;
  for (unsigned i = 0; i < 100; ++i)
    if (!c.call(i, &ignored)) ++wrong;
  EXPECT_EQ(wrong, 0u) << c.name << ": wrong results after detach";
  if (callback) {
    EXPECT_EQ(cb.calls, expect_hits) << c.name << ": handler ran after detach";
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, ProbedTarget,
                         ::testing::Combine(::testing::ValuesIn(kCases), ::testing::Bool()),
                         case_name);

// ---- An instruction-flavour site ----------------------------------------------------------------

struct MidSeen {
  uint64_t calls = 0;
  uint64_t bad_rax = 0;
  uint64_t expect_rax = 0;
  uint64_t ip = 0;
};
void on_mid(usprobe_hit *hit, void *user) {
  auto *s = static_cast<MidSeen *>(user);
  ++s->calls;
  // At tgt_counted_mid+7 (`add $1,%rax`) %rax holds x.
  if (usprobe_hit_reg(hit, USPROBE_RAX) != s->expect_rax) ++s->bad_rax;
  s->ip = usprobe_hit_ip(hit);
}

TEST(ProbedTargets, CountedMidSiteUsesTheJumpPathAndSeesRegisters) {
  ASSERT_EQ(tgt_counted_mid_site_offset, uint64_t{TGT_COUNTED_MID_SITE_OFFSET});
  const uint8_t *site = code(&tgt_counted_mid) + tgt_counted_mid_site_offset;
  const Bytes before = bytes_at(site);
  for (bool callback : {false, true}) {
    SCOPED_TRACE(callback ? "callback" : "counter");
    MidSeen seen;
    usprobe_consumer consumer{on_mid, &seen, nullptr};
    Link link;
    ASSERT_ATTACHED(link.attach(loc("tgt_counted_mid", tgt_counted_mid_site_offset),
                                callback ? &consumer : nullptr));
    EXPECT_EQ(link.name(), "libusprobe_targets.so:tgt_counted_mid+0x7");
    // `add $1,%rax; pop %rbp` is exactly 5 bytes; nothing branches: a jump fits.
    EXPECT_FALSE(link.int3()) << link.reason();
    EXPECT_EQ(site[0], 0xE9);
    for (long i = 0; i < 1000; ++i) {
      seen.expect_rax = static_cast<uint64_t>(i * 7);
      ASSERT_EQ(tgt_counted_mid(i * 7), i * 7 + 1);
    }
    EXPECT_EQ(link.hits(), 1000u);
    if (callback) {
      EXPECT_EQ(seen.calls, 1000u);
      EXPECT_EQ(seen.bad_rax, 0u);
      EXPECT_EQ(seen.ip, reinterpret_cast<uint64_t>(site));
    }
    ASSERT_EQ(link.detach(), 0);
    EXPECT_EQ(bytes_at(site), before);
    EXPECT_EQ(tgt_counted_mid(41), 42);
  }
}

// ---- The relocated copy reads live data ---------------------------------------------------------

TEST(ProbedTargets, RipRelativeLoadReadsLiveDataWhileProbed) {
  Link link;
  ASSERT_ATTACHED(link.attach(loc("tgt_rip_first")));
  ASSERT_FALSE(link.int3()) << link.reason();
  EXPECT_EQ(tgt_rip_first(), uint64_t{TGT_RIP_DATA_INITIAL});
  const uint64_t values[] = {0, 1, 0xfedcba9876543210, 0x8000000000000000};
  for (uint64_t v : values) {
    tgt_set_rip_data(v);
    EXPECT_EQ(tgt_rip_first(), v);
  }
  EXPECT_EQ(link.hits(), 5u);
  tgt_set_rip_data(TGT_RIP_DATA_INITIAL);
  ASSERT_EQ(link.detach(), 0);
  EXPECT_EQ(tgt_rip_first(), uint64_t{TGT_RIP_DATA_INITIAL});
}

// ---- What a handler sees at a function entry ----------------------------------------------------

struct SixSeen {
  uint64_t calls = 0;
  uint64_t args[6] = {};
  uint64_t ip = 0, sp = 0, ret = 0;
  std::string name;
};
void on_six(usprobe_hit *hit, void *user) {
  auto *s = static_cast<SixSeen *>(user);
  ++s->calls;
  for (unsigned n = 0; n < 6; ++n) s->args[n] = usprobe_arg(hit, n);
  s->ip = usprobe_hit_ip(hit);
  s->sp = usprobe_hit_sp(hit);
  s->ret = usprobe_hit_return_address(hit);
  s->name = usprobe_hit_probe_name(hit);
}

long (*volatile g_six)(long, long, long, long, long, long) = tgt_six_args;

// The call whose return address the handler must report: it lies inside this function. The asm
// after the call keeps GCC from turning it into a tail call.
__attribute__((noinline)) long call_six_from_here(long a, long b, long c, long d, long e, long f) {
  long r = g_six(a, b, c, d, e, f);
  asm volatile("" ::: "memory");
  return r;
}

TEST(ProbedTargets, HandlerSeesArgumentsIpReturnAddressAndName) {
  for (unsigned flags : {0u, unsigned{USPROBE_FORCE_INT3}}) {
    SCOPED_TRACE(flags ? "int3 path" : "jump path");
    SixSeen seen;
    usprobe_consumer consumer{on_six, &seen, nullptr};
    Link link;
    ASSERT_ATTACHED(link.attach(loc("tgt_six_args"), &consumer, flags));
    EXPECT_EQ(link.int3(), flags != 0) << link.reason();
    const long args[6] = {-1, 0x7fffffffffffffff, 3, -0x123456789a, 5, 0x5555aaaa5555aaaa};
    long r = call_six_from_here(args[0], args[1], args[2], args[3], args[4], args[5]);
    uint64_t expect = 0;  // the assembly wraps: compute it unsigned
    for (unsigned n = 0; n < 6; ++n) expect += (n + 1) * static_cast<uint64_t>(args[n]);
    EXPECT_EQ(static_cast<uint64_t>(r), expect);
    ASSERT_EQ(seen.calls, 1u);
    for (unsigned n = 0; n < 6; ++n)
      EXPECT_EQ(seen.args[n], static_cast<uint64_t>(args[n])) << "argument " << n;
    EXPECT_EQ(seen.ip, reinterpret_cast<uint64_t>(&tgt_six_args));
    const auto caller = reinterpret_cast<uint64_t>(&call_six_from_here);
    EXPECT_GT(seen.ret, caller);
    EXPECT_LT(seen.ret, caller + 256) << std::hex << "return address " << seen.ret
                                      << " is not inside call_six_from_here at " << caller;
    Dl_info ret_info{}, self_info{};
    ASSERT_NE(dladdr(reinterpret_cast<void *>(seen.ret), &ret_info), 0);
    ASSERT_NE(dladdr(reinterpret_cast<void *>(&call_six_from_here), &self_info), 0);
    EXPECT_EQ(ret_info.dli_fbase, self_info.dli_fbase) << "not in the test binary";
    // At the entry %rsp + 8 is 16-aligned (the call pushed the return address).
    EXPECT_EQ((seen.sp + 8) % 16, 0u) << std::hex << seen.sp;
    EXPECT_EQ(seen.name, "libusprobe_targets.so:tgt_six_args");
    EXPECT_EQ(link.name(), "libusprobe_targets.so:tgt_six_args");
  }
}

void set_two_args(usprobe_hit *hit, void *) {
  usprobe_set_arg(hit, 0, 100);
  usprobe_set_arg(hit, 5, 1000);
}

TEST(ProbedTargets, SetArgChangesWhatTheFunctionComputes) {
  for (unsigned flags : {0u, unsigned{USPROBE_FORCE_INT3}}) {
    SCOPED_TRACE(flags ? "int3 path" : "jump path");
    usprobe_consumer consumer{set_two_args, nullptr, nullptr};
    Link link;
    ASSERT_ATTACHED(link.attach(loc("tgt_six_args"), &consumer, flags));
    EXPECT_EQ(link.int3(), flags != 0) << link.reason();
    // 1a + 2b + ... + 6f with a = 100 and f = 1000 instead of 1 and 6.
    EXPECT_EQ(g_six(1, 2, 3, 4, 5, 6), 100 + 4 + 9 + 16 + 25 + 6000);
    EXPECT_EQ(tgt_six_args(1, 2, 3, 4, 5, 6), 100 + 4 + 9 + 16 + 25 + 6000);
    EXPECT_EQ(link.hits(), 2u);
    ASSERT_EQ(link.detach(), 0);
    EXPECT_EQ(g_six(1, 2, 3, 4, 5, 6), 1 + 4 + 9 + 16 + 25 + 36);
  }
}

// ---- Two consumers on one location --------------------------------------------------------------

TEST(ProbedTargets, TwoConsumersShareOnePatch) {
  const Bytes before = bytes_at(code(&tgt_counted));
  CallbackCount cb;
  cb.expect_ip = reinterpret_cast<uint64_t>(&tgt_counted);
  cb.expect_name = loc("tgt_counted");
  usprobe_consumer consumer{count_hit, &cb, nullptr};

  Link first, second;
  ASSERT_ATTACHED(first.attach(loc("tgt_counted")));
  const Bytes single = bytes_at(code(&tgt_counted));
  ASSERT_ATTACHED(second.attach(loc("tgt_counted"), &consumer));
  EXPECT_EQ(bytes_at(code(&tgt_counted)), single) << "the second attach changed the patch";
  EXPECT_EQ(first.int3(), second.int3());

  for (long i = 0; i < 500; ++i) ASSERT_EQ(tgt_counted(i), i + 1);
  EXPECT_EQ(first.hits(), 500u);
  EXPECT_EQ(second.hits(), 500u);
  EXPECT_EQ(cb.calls, 500u);

  ASSERT_EQ(first.detach(), 0);
  EXPECT_EQ(bytes_at(code(&tgt_counted)), single) << "detaching one link removed the patch";
  for (long i = 0; i < 300; ++i) ASSERT_EQ(tgt_counted(i), i + 1);
  EXPECT_EQ(second.hits(), 800u);
  EXPECT_EQ(cb.calls, 800u);
  EXPECT_EQ(cb.wrong_ip, 0u);

  ASSERT_EQ(second.detach(), 0);
  EXPECT_EQ(bytes_at(code(&tgt_counted)), before);
  EXPECT_EQ(tgt_counted(1), 2);
  EXPECT_EQ(cb.calls, 800u);
}

TEST(ProbedTargets, SecondAttachInOneBatchSharesThePatch) {
  const Bytes before = bytes_at(code(&tgt_counted));
  const std::string where = loc("tgt_counted");
  const char *locations[] = {where.c_str(), where.c_str()};
  usprobe_link *links[2] = {};
  int errors[2] = {1, 1};
  ASSERT_EQ(usprobe_attach_batch(locations, 2, nullptr, links, errors), 2) << usprobe_last_error();
  EXPECT_EQ(errors[0], 0);
  EXPECT_EQ(errors[1], 0);
  for (long i = 0; i < 10; ++i) ASSERT_EQ(tgt_counted(i), i + 1);
  EXPECT_EQ(usprobe_link_hits(links[0]), 10u);
  EXPECT_EQ(usprobe_link_hits(links[1]), 10u);
  EXPECT_EQ(usprobe_detach_batch(links, 2), 0) << usprobe_last_error();
  EXPECT_EQ(bytes_at(code(&tgt_counted)), before);
}

__attribute__((target("general-regs-only"))) void count_into(usprobe_hit *, void *user) {
  ++*static_cast<uint64_t *>(user);
}

TEST(ProbedTargets, BatchWithOneConsumerPerLocationCallsEachItsOwn) {
  const std::string counted = loc("tgt_counted"), other = loc("tgt_six_args");
  const char *locations[] = {counted.c_str(), other.c_str()};
  uint64_t counted_calls = 0, other_calls = 0;
  const usprobe_consumer consumers[] = {{count_into, &counted_calls, nullptr},
                                        {count_into, &other_calls, nullptr}};
  usprobe_link *links[2] = {};
  ASSERT_EQ(
      usprobe_attach_batch_ex(locations, 2, consumers, USPROBE_GENERAL_REGS_ONLY, links, nullptr),
      2)
      << usprobe_last_error();
  for (long i = 0; i < 7; ++i) ASSERT_EQ(tgt_counted(i), i + 1);
  for (long i = 0; i < 3; ++i) ASSERT_EQ(tgt_six_args(i, 0, 0, 0, 0, 0), i);
  EXPECT_EQ(counted_calls, 7u);
  EXPECT_EQ(other_calls, 3u);
  EXPECT_EQ(usprobe_link_hits(links[0]), 7u);
  EXPECT_EQ(usprobe_link_hits(links[1]), 3u);
  EXPECT_EQ(usprobe_detach_batch(links, 2), 0) << usprobe_last_error();
}

// ---- Recursion guard ----------------------------------------------------------------------------

long (*volatile g_counted)(long) = tgt_counted;
long (*volatile g_counted_mid)(long) = tgt_counted_mid;

struct Reentry {
  uint64_t calls = 0;
  uint64_t wrong_inner = 0;
};
void call_counted_again(usprobe_hit *, void *user) {
  auto *r = static_cast<Reentry *>(user);
  ++r->calls;
  if (g_counted(41) != 42) ++r->wrong_inner;
}

TEST(ProbedTargets, RecursionGuardCountsInnerHitsAsMissed) {
  for (unsigned flags : {0u, unsigned{USPROBE_FORCE_INT3}}) {
    SCOPED_TRACE(flags ? "int3 path" : "jump path");
    Reentry r;
    usprobe_consumer consumer{call_counted_again, &r, nullptr};
    Link link;
    ASSERT_ATTACHED(link.attach(loc("tgt_counted"), &consumer, flags));
    EXPECT_EQ(link.int3(), flags != 0) << link.reason();
    for (long i = 0; i < 200; ++i) ASSERT_EQ(g_counted(i), i + 1);
    EXPECT_EQ(link.hits(), 200u);
    EXPECT_EQ(link.missed(), 200u);
    EXPECT_EQ(r.calls, 200u) << "the handler ran for its own inner call";
    EXPECT_EQ(r.wrong_inner, 0u) << "the inner call returned a wrong result";
  }
}

void call_six_inside(usprobe_hit *, void *user) {
  if (g_six(1, 1, 1, 1, 1, 1) != 21) ++*static_cast<uint64_t *>(user);
}

TEST(ProbedTargets, HitOfAnotherProbeInsideAHandlerIsMissedThere) {
  uint64_t wrong = 0;
  usprobe_consumer outer_consumer{call_six_inside, &wrong, nullptr};
  CallbackCount cb;
  cb.expect_ip = reinterpret_cast<uint64_t>(&tgt_six_args);
  cb.expect_name = loc("tgt_six_args");
  usprobe_consumer inner_consumer{count_hit, &cb, nullptr};
  Link outer, inner;
  ASSERT_ATTACHED(outer.attach(loc("tgt_counted"), &outer_consumer));
  ASSERT_ATTACHED(inner.attach(loc("tgt_six_args"), &inner_consumer));
  for (long i = 0; i < 100; ++i) ASSERT_EQ(g_counted(i), i + 1);
  EXPECT_EQ(g_six(1, 1, 1, 1, 1, 1), 21);  // a direct call is a hit
  EXPECT_EQ(outer.hits(), 100u);
  EXPECT_EQ(inner.hits(), 1u);
  EXPECT_EQ(inner.missed(), 100u);
  EXPECT_EQ(cb.calls, 1u) << "the inner probe's handler ran inside another handler";
  EXPECT_EQ(wrong, 0u);
}

// ---- Forced int3 --------------------------------------------------------------------------------

TEST(ProbedTargets, ForcedInt3CountsExactly) {
  struct Site {
    std::string where;
    const uint8_t *addr;
    long (*volatile *fn)(long);
  };
  const Site sites[] = {
      {loc("tgt_counted"), code(&tgt_counted), &g_counted},
      {loc("tgt_counted_mid", tgt_counted_mid_site_offset),
       code(&tgt_counted_mid) + tgt_counted_mid_site_offset, &g_counted_mid},
  };
  for (const Site &s : sites) {
    SCOPED_TRACE(s.where);
    const Bytes before = bytes_at(s.addr);
    Link link;
    ASSERT_ATTACHED(link.attach(s.where, nullptr, USPROBE_FORCE_INT3));
    EXPECT_TRUE(link.int3());
    EXPECT_NE(link.reason().find("USPROBE_FORCE_INT3"), std::string::npos) << link.reason();
    const Bytes during = bytes_at(s.addr);
    EXPECT_EQ(during[0], 0xCC);
    EXPECT_EQ(0, std::memcmp(during.data() + 1, before.data() + 1, before.size() - 1))
        << hex(before) << " -> " << hex(during);
    for (long i = 0; i < 2000; ++i) ASSERT_EQ((*s.fn)(i), i + 1);
    EXPECT_EQ(link.hits(), 2000u);
    ASSERT_EQ(link.detach(), 0);
    EXPECT_EQ(bytes_at(s.addr), before);
  }
}

TEST(ProbedTargets, PathFollowsTheFlagsOfEachNewPatch) {
  // The flags apply when the patch is placed: a later plain attach (after detach) gets the jump
  // back, and a forced attach after a plain one gets int3.
  Link link;
  ASSERT_ATTACHED(link.attach(loc("tgt_counted"), nullptr, USPROBE_FORCE_INT3));
  EXPECT_TRUE(link.int3());
  ASSERT_EQ(link.detach(), 0);
  ASSERT_ATTACHED(link.attach(loc("tgt_counted")));
  EXPECT_FALSE(link.int3()) << link.reason();
  EXPECT_EQ(code(&tgt_counted)[0], 0xE9);
  EXPECT_EQ(tgt_counted(1), 2);
  EXPECT_EQ(link.hits(), 1u);
  ASSERT_EQ(link.detach(), 0);
  ASSERT_ATTACHED(link.attach(loc("tgt_counted"), nullptr, USPROBE_FORCE_INT3));
  EXPECT_TRUE(link.int3());
  EXPECT_EQ(code(&tgt_counted)[0], 0xCC);
  EXPECT_EQ(tgt_counted(1), 2);
  EXPECT_EQ(link.hits(), 1u);
}

// ---- Windows that overlap -----------------------------------------------------------------------

TEST(ProbedTargets, SiteInsideAProbedWindowIsRefusedWithEbusy) {
  // tgt_counted: +0 push %rbp; +1 mov %rsp,%rbp; +4 lea 1(%rdi),%rax; +8 pop %rbp; +9 ret.
  // The entry's jump displaces [0, 8): sites +1 and +4 are inside it.
  Link entry;
  ASSERT_ATTACHED(entry.attach(loc("tgt_counted")));
  ASSERT_FALSE(entry.int3()) << entry.reason();
  const Bytes patched = bytes_at(code(&tgt_counted));
  for (uint64_t off : {1, 4}) {
    SCOPED_TRACE(off);
    for (unsigned flags : {0u, unsigned{USPROBE_FORCE_INT3}}) {
      usprobe_link *link = reinterpret_cast<usprobe_link *>(0x1);
      int rc = usprobe_attach_ex(loc("tgt_counted", off).c_str(), nullptr, flags, &link);
      EXPECT_EQ(rc, -EBUSY) << usprobe_last_error();
      EXPECT_EQ(link, nullptr);
      std::string msg = usprobe_last_error();
      EXPECT_NE(msg.find("tgt_counted"), std::string::npos) << msg;
      EXPECT_NE(msg.find("window"), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      EXPECT_EQ(bytes_at(code(&tgt_counted)), patched) << "something was patched";
    }
  }
  for (long i = 0; i < 10; ++i) ASSERT_EQ(tgt_counted(i), i + 1);
  EXPECT_EQ(entry.hits(), 10u);
}

TEST(ProbedTargets, SiteAfterAProbedWindowCanBeProbed) {
  Link entry;
  ASSERT_ATTACHED(entry.attach(loc("tgt_counted")));
  for (long i = 0; i < 10; ++i) ASSERT_EQ(tgt_counted(i), i + 1);
  // +8 (`pop %rbp; ret`) lies after the entry's window [0, 8): it can be probed, by a punned jump
  // over `pop %rbp` alone (only 2 bytes are left in the function; it borrows `ret` and the padding
  // after the function).
  Link tail;
  ASSERT_ATTACHED(tail.attach(loc("tgt_counted", 8)));
  EXPECT_FALSE(tail.int3()) << tail.reason();
  for (long i = 0; i < 10; ++i) ASSERT_EQ(tgt_counted(i), i + 1);
  EXPECT_EQ(entry.hits(), 20u);
  EXPECT_EQ(tail.hits(), 10u);
}

TEST(ProbedTargets, DifferentWindowsCanBeProbedTogether) {
  const Bytes counted_before = bytes_at(code(&tgt_counted));
  const Bytes mid_before = bytes_at(code(&tgt_counted_mid));
  Link entry, mid, mid_entry;
  ASSERT_ATTACHED(entry.attach(loc("tgt_counted")));
  ASSERT_ATTACHED(mid.attach(loc("tgt_counted_mid", tgt_counted_mid_site_offset)));
  // tgt_counted_mid's own entry: its window [0, 7) ends where the +7 site begins.
  ASSERT_ATTACHED(mid_entry.attach(loc("tgt_counted_mid")));
  EXPECT_FALSE(entry.int3()) << entry.reason();
  EXPECT_FALSE(mid.int3()) << mid.reason();
  EXPECT_FALSE(mid_entry.int3()) << mid_entry.reason();
  for (long i = 0; i < 100; ++i) {
    ASSERT_EQ(tgt_counted(i), i + 1);
    ASSERT_EQ(tgt_counted_mid(i), i + 1);
  }
  EXPECT_EQ(entry.hits(), 100u);
  EXPECT_EQ(mid.hits(), 100u);
  EXPECT_EQ(mid_entry.hits(), 100u);
  ASSERT_EQ(mid.detach(), 0);
  ASSERT_EQ(mid_entry.detach(), 0);
  ASSERT_EQ(entry.detach(), 0);
  EXPECT_EQ(bytes_at(code(&tgt_counted)), counted_before);
  EXPECT_EQ(bytes_at(code(&tgt_counted_mid)), mid_before);
}

TEST(ProbedTargets, EntryNextToAProbedSiteTakesInt3AndCountsBoth) {
  // tgt_clobber_mid: +0 push %rbp; +1 push %rbx; +2 push %r12; +4 push %r13; +6 push %r14 ...
  // The +2 site takes a jump over [2, 8); the entry's window [0, 6) would overlap it: the entry
  // takes int3. (tgt_clobber_mid is in no other test of this file: these probes leave state.)
  const Bytes before = bytes_at(code(&tgt_clobber_mid));
  Link inner, entry;
  ASSERT_ATTACHED(inner.attach(loc("tgt_clobber_mid", 2)));
  EXPECT_FALSE(inner.int3()) << inner.reason();
  ASSERT_ATTACHED(entry.attach(loc("tgt_clobber_mid")));
  EXPECT_TRUE(entry.int3());
  EXPECT_NE(entry.reason().find("window"), std::string::npos) << entry.reason();
  for (int i = 0; i < 20; ++i) ASSERT_EQ(tgt_clobber_mid(), 0u);
  EXPECT_EQ(entry.hits(), 20u);
  EXPECT_EQ(inner.hits(), 20u);
  ASSERT_EQ(inner.detach(), 0);
  ASSERT_EQ(entry.detach(), 0);
  EXPECT_EQ(bytes_at(code(&tgt_clobber_mid)), before);
}

TEST(ProbedTargets, EntryGetsTheJumpBackOnceTheNeighbourIsGone) {
  // As above, then both detached: the entry alone has no reason for int3 any more, and DESIGN.md
  // wants the jump path for function entries wherever it is safe.
  {
    Link inner, entry;
    ASSERT_ATTACHED(inner.attach(loc("tgt_clobber_mid", 2)));
    ASSERT_ATTACHED(entry.attach(loc("tgt_clobber_mid")));
    ASSERT_TRUE(entry.int3());
  }
  Link entry;
  ASSERT_ATTACHED(entry.attach(loc("tgt_clobber_mid")));
  EXPECT_FALSE(entry.int3()) << "still int3, because of a neighbour detached before: `"
                             << entry.reason() << "`";
  EXPECT_EQ(tgt_clobber_mid(), 0u);
  EXPECT_EQ(entry.hits(), 1u);
}

TEST(ProbedTargets, SiteInsideAProbedWindowNamesTheWindowEvenWhenProbedBefore) {
  // tgt_endbr64: +0 endbr64; +4 push %rbp; +5 mov ... The +4 site was probed once (and detached),
  // so its probe is remembered. Probing it again while the entry's jump covers [0, 5) must be
  // refused for the window, like a first attach is: the message must say so.
  Link once;
  ASSERT_ATTACHED(once.attach(loc("tgt_endbr64", 4)));
  ASSERT_EQ(once.detach(), 0);

  Link entry;
  ASSERT_ATTACHED(entry.attach(loc("tgt_endbr64")));
  ASSERT_FALSE(entry.int3()) << entry.reason();
  const Bytes patched = bytes_at(code(&tgt_endbr64));
  usprobe_link *link = nullptr;
  int rc = usprobe_attach(loc("tgt_endbr64", 4).c_str(), nullptr, &link);
  EXPECT_EQ(rc, -EBUSY);
  EXPECT_EQ(link, nullptr);
  std::string msg = usprobe_last_error();
  EXPECT_NE(msg.find("window"), std::string::npos)
      << "the message blames something else than the entry probe's window: " << msg;
  EXPECT_EQ(bytes_at(code(&tgt_endbr64)), patched);
  if (link) usprobe_detach(link);
  EXPECT_EQ(tgt_endbr64(1, 2), 3);
}

TEST(ProbedTargets, OneBatchNeverPatchesOverlappingWindows) {
  // tgt_mixed_args: +0 movslq %edi,%rax (3); +3 lea (%rsi,%rsi,2),%r10 (4); +7 add ... The entry's
  // jump covers [0, 5) and the +3 site's jump [3, 8). In one batch, the second must be refused
  // (EBUSY) or take int3 outside the first's patch; it must never overwrite the first's jump.
  // Both were probed before (each alone), so both probes are remembered from that.
  const uint8_t *fn = code(&tgt_mixed_args);
  const Bytes before = bytes_at(fn);
  const std::string entry_loc = loc("tgt_mixed_args"), inner_loc = loc("tgt_mixed_args", 3);
  for (const std::string &l : {entry_loc, inner_loc}) {
    Link once;
    ASSERT_ATTACHED(once.attach(l));
    EXPECT_FALSE(once.int3()) << l << ": " << once.reason();
  }
  ASSERT_EQ(bytes_at(fn), before);

  const char *locations[] = {entry_loc.c_str(), inner_loc.c_str()};
  usprobe_link *links[2] = {};
  int errors[2] = {};
  int attached = usprobe_attach_batch(locations, 2, nullptr, links, errors);
  const Bytes during = bytes_at(fn);
  int32_t rel = 0;
  std::memcpy(&rel, during.data() + 1, 4);
  const uint64_t target = reinterpret_cast<uint64_t>(fn) + 5 + static_cast<int64_t>(rel);
  EXPECT_EQ(attached, 1) << "both overlapping windows were patched: " << hex(before) << " -> "
                         << hex(during) << "; the entry's jump now goes to 0x" << std::hex << target
                         << " (its rel32 was overwritten by the +3 site's jump)";
  EXPECT_NE(links[0], nullptr) << usprobe_last_error();
  EXPECT_EQ(links[1], nullptr);
  EXPECT_EQ(errors[1], -EBUSY);
  const std::string msg = usprobe_last_error();
  EXPECT_NE(msg.find("window"), std::string::npos) << msg;
  if (attached == 1 && links[0]) {
    // Only with a sound patch: a torn jump would crash the test binary.
    uint64_t expect_hits = 0;
    for (unsigned i = 0; i < 10; ++i) ASSERT_TRUE(call_mixed_args(i, &expect_hits));
    EXPECT_EQ(usprobe_link_hits(links[0]), expect_hits);
  }
  for (usprobe_link *l : links)
    if (l) {
      EXPECT_EQ(usprobe_detach(l), 0) << usprobe_last_error();
    }
  EXPECT_EQ(bytes_at(fn), before) << "not restored";
  uint64_t ignored = 0;
  EXPECT_TRUE(call_mixed_args(2, &ignored));
}

}  // namespace
