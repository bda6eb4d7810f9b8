// Exception landing pads are branch targets: a probe whose 5-byte jump window would cover one must
// not take that window (the unwinder would resume in the middle of the jump). The program's
// exceptions still go through the pad, its results do not change, and every hit is counted.
#include <algorithm>
#include <optional>
#include <string>

#include <gtest/gtest.h>

#include "arch/x86_64/relocator.h"
#include "e2e_support.h"
#include "elf/elf_file.h"
#include "elf/location.h"

namespace {

using e2e::Output;

// The offset in `function` of an instruction just before one of its landing pads, close enough
// that a 5-byte window there covers the pad (the pad lies strictly inside [site, site + 5)).
std::optional<uint64_t> site_before_landing_pad(const std::string &path,
                                                const std::string &function) {
  auto file = usprobe::elf::ElfFile::open(path);
  if (!file) return std::nullopt;
  auto fn = (*file)->find_function(function);
  if (!fn) return std::nullopt;
  auto code = (*file)->bytes(fn->file_offset, fn->size);
  auto scan = usprobe::x86::scan_function(code, fn->file_offset);
  for (uint64_t pad : (*file)->landing_pads()) {
    if (pad <= fn->file_offset || pad >= fn->file_offset + fn->size) continue;
    for (auto b = scan.boundaries.rbegin(); b != scan.boundaries.rend(); ++b) {
      uint64_t site = fn->file_offset + *b;
      if (site < pad && pad - site < 5) return *b;
    }
  }
  return std::nullopt;
}

TEST(LandingPads, ProbeBeforeALandingPadLeavesTheProgramsExceptionsAlone) {
  const std::string target = LANDING_PAD_TARGET;
  auto offset = site_before_landing_pad(target, "lp_run");
  ASSERT_TRUE(offset) << "no instruction of lp_run within 4 bytes before one of its landing pads";
  Output plain = e2e::run({target, "1000"});
  ASSERT_EQ(plain.exit_code(), 0) << plain.describe();
  ASSERT_EQ(plain.out, "caught 500 sum 501000\n");

  const std::string probe = "exe:lp_run+" + std::to_string(*offset);
  Output r = e2e::run({e2e::cli(), "count", "--json", probe, "--", target, "1000"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find(plain.out), std::string::npos) << r.describe();
  // The 500 calls that do not throw pass there; the 500 that do pass too when the compiler joined
  // the catch's path to the normal one before that instruction (-O2 without frame pointers).
  uint64_t hits = e2e::hits_of(e2e::only_total(r), probe);
  EXPECT_TRUE(hits == 500 || hits == 1000) << r.describe();
}

// The case in libstdc++: operator new(size, nothrow) catches the bad_alloc of operator
// new(size) at a landing pad right after its `ret` (on Debian 12's libstdc++ 6.0.30, at +0x12 for
// a probe at +0x11). Without the pad among the branch targets, the program died of SIGILL.
TEST(LandingPads, ProbeBeforeTheLandingPadOfNothrowNewInLibstdcxx) {
  const std::string target = LANDING_PAD_TARGET;
  auto lib = usprobe::elf::resolve_file("libstdc++");
  ASSERT_TRUE(lib) << lib.error().message;
  const std::string fn = "_ZnwmRKSt9nothrow_t";
  auto offset = site_before_landing_pad(*lib, fn);
  if (!offset) GTEST_SKIP() << "no instruction within 4 bytes before a landing pad of " << fn;
  Output plain = e2e::run({target, "nothrow", "100"});
  ASSERT_EQ(plain.exit_code(), 0) << plain.describe();
  ASSERT_EQ(plain.out, "ok 100 null 100\n");

  const std::string probe = "libstdc++:" + fn + "+" + std::to_string(*offset);
  Output r = e2e::run({e2e::cli(), "count", "--json", probe, "--", target, "nothrow", "100"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find(plain.out), std::string::npos) << r.describe();
  EXPECT_GE(e2e::hits_of(e2e::only_total(r), probe), 100u) << r.describe();
}

}  // namespace
