// core/site_analysis.h: the path an attach would take at each USDT site of a file, without a
// probed process (what `usprobe list -v usdt:FILE` and usprobe_jump_share report).
#include "core/site_analysis.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include "core/code_space.h"
#include "core/probe.h"
#include "elf/location.h"
#include "elf/usdt.h"

namespace usprobe {
namespace {

// tests/targets/libusprobe_usdt_targets.so of this build tree (unit_tests is in build/tests).
std::string usdt_targets() {
  std::string exe(4096, '\0');
  ssize_t n = readlink("/proc/self/exe", exe.data(), exe.size());
  if (n <= 0) return "";
  exe.resize(static_cast<size_t>(n));
  std::string lib = exe.substr(0, exe.rfind('/')) + "/targets/libusprobe_usdt_targets.so";
  return access(lib.c_str(), R_OK) == 0 ? lib : "";
}

TEST(SiteAnalysis, EveryUsdtSiteOfTheTestLibraryInNoteOrderOnAJump) {
  const std::string lib = usdt_targets();
  if (lib.empty()) GTEST_SKIP() << "libusprobe_usdt_targets.so is not built";
  auto file = elf::ElfFile::open(lib);
  ASSERT_TRUE(file) << file.error().message;
  auto notes = elf::read_usdt_probes(**file);
  ASSERT_TRUE(notes) << notes.error().message;
  auto sites = analyse_usdt_sites(lib);
  ASSERT_TRUE(sites) << sites.error().message;
  ASSERT_EQ(sites->size(), notes->size());
  ASSERT_FALSE(sites->empty());
  bool saw_memory = false;
  for (size_t i = 0; i < sites->size(); ++i) {
    const UsdtSiteVerdict &s = (*sites)[i];
    const std::string name = s.provider + ":" + s.name;
    EXPECT_EQ(s.provider, (*notes)[i].provider);
    EXPECT_EQ(s.name, (*notes)[i].name);
    EXPECT_EQ(s.verdict.file_offset, (*notes)[i].file_offset) << name;
    EXPECT_EQ(s.verdict.patch_offset, s.verdict.file_offset) << name;
    // Punned sites depend on free memory in a small range (`float`: a nop before a branch target,
    // one address; `forms`: two nops, 256 bytes).
    if (s.name == "float" || s.name == "forms") continue;
    EXPECT_TRUE(s.verdict.jump) << name << ": " << s.verdict.path << ": " << s.verdict.reason;
    EXPECT_EQ(s.verdict.reason, "") << name;
    EXPECT_GE(s.verdict.footprint, 5u) << name;
    if (s.name == "memory") {
      // `mov %rsi,%rdx; nop; ret` and padding: a plain jump over the nop, the ret and the padding.
      saw_memory = true;
      EXPECT_EQ(s.verdict.path, "jump") << s.verdict.reason;
      EXPECT_EQ(s.verdict.written, 5u);
    }
  }
  EXPECT_TRUE(saw_memory);
}

TEST(SiteAnalysis, MissingFileIsAnError) {
  auto sites = analyse_usdt_sites("/nonexistent/libnothing.so");
  ASSERT_FALSE(sites);
  EXPECT_NE(sites.error().message.find("/nonexistent/libnothing.so"), std::string::npos)
      << sites.error().message;
}

TEST(SiteAnalysis, FileWithoutNotesHasNoSites) {
  auto sites = analyse_usdt_sites("/proc/self/exe");
  ASSERT_TRUE(sites) << sites.error().message;
  EXPECT_TRUE(sites->empty());
}

// Branch targets that another process computed (the CLI's table, protocol/targets.h) are taken for
// the file they name, and only for a file of that identity and build id. Two files that no other
// test of this binary asks about: a file's targets are computed once per process.
TEST(SiteAnalysis, ProvidedBranchTargetsAreTakenOnlyForTheSameFileAndBuildId) {
  auto taken = elf::ElfFile::open("/usr/bin/true");
  auto refused = elf::ElfFile::open("/usr/bin/false");
  if (!taken || !refused || (*taken)->build_id().empty() || (*refused)->build_id().empty() ||
      (*taken)->id() == (*refused)->id())
    GTEST_SKIP() << "needs /usr/bin/true and /usr/bin/false, two files with build ids";
  const std::vector<uint64_t> fake = {0x11, 0x22, 0x33};
  const std::vector<std::pair<uint64_t, uint64_t>> fake_ranges = {{0x10, 0x40}};
  provide_file_branch_targets((*taken)->id(), (*taken)->build_id(), fake, fake_ranges);
  provide_file_branch_targets((*refused)->id(), "00" + (*refused)->build_id(), fake, fake_ranges);
  provide_file_branch_targets((*refused)->id(), "", fake, fake_ranges);  // no build id: never
  const std::vector<uint64_t> *t = file_branch_targets(**taken);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t, fake);
  EXPECT_EQ(*file_complete_ranges(**taken), fake_ranges);
  EXPECT_NE(*file_complete_ranges(**refused), fake_ranges);
  const std::vector<uint64_t> *r = file_branch_targets(**refused);
  ASSERT_NE(r, nullptr);
  EXPECT_NE(*r, fake);
  EXPECT_GT(r->size(), 100u);  // decoded: a program has many
  EXPECT_TRUE(std::is_sorted(r->begin(), r->end()));
}

// A function entry whose function the file's decoding covered completely is planned without
// decoding the function again (arch.h, SiteRequest::complete_ranges): the plan must be the one the
// function's own decoding gives, for every function entry of libc (jump or int3, the reason, the
// bytes written and relied on).
TEST(SiteAnalysis, EntriesOfCompletelyDecodedFunctionsArePlannedAsADecodingPlansThem) {
  auto libc = elf::resolve_location("libc:malloc");
  ASSERT_TRUE(libc) << libc.error().message;
  auto image = CodeImage::map(libc->file);
  ASSERT_TRUE(image) << image.error().message;
  const elf::ElfFile &file = image->file();
  ASSERT_FALSE(file_complete_ranges(file)->empty());
  static Probe probe;
  size_t compared = 0, known = 0;
  uint64_t last = ~0ull;
  for (const elf::Function &f : file.functions()) {
    if (f.file_offset == last || f.size == 0) continue;
    last = f.file_offset;
    auto loc = elf::resolve_location(fmt::format("{}:{:#x}", file.path(), f.file_offset));
    if (!loc) continue;
    auto addr = image->runtime(loc->file_offset);
    if (!addr) continue;
    auto req = site_request(*loc, *addr);
    ASSERT_TRUE(req) << req.error().message;
    req->probe = &probe;
    req->describe = loc->describe();
    known += std::binary_search(req->complete_ranges->begin(), req->complete_ranges->end(),
                                std::pair<uint64_t, uint64_t>(loc->func_offset, loc->func_size));
    auto with = arch::prepare_site(*req, code_space());
    // Given back before the second plan is made: a punned jump's stub may have to lie at one
    // address (the range its borrowed bytes fix), which the first plan's stub would still hold.
    if (with) arch::release_trampoline(*with, code_space());
    req->complete_ranges = nullptr;  // the function decoded again
    auto without = arch::prepare_site(*req, code_space());
    ASSERT_EQ(bool(with), bool(without)) << loc->describe();
    if (!with) continue;
    EXPECT_EQ(with->path, without->path) << loc->describe();
    EXPECT_EQ(with->int3_reason, without->int3_reason) << loc->describe();
    // The patch bytes name each plan's own trampoline or stub: their length and what they replace.
    EXPECT_EQ(with->patch.size(), without->patch.size()) << loc->describe();
    EXPECT_EQ(with->original, without->original) << loc->describe();
    EXPECT_EQ(with->footprint, without->footprint) << loc->describe();
    EXPECT_EQ(with->window_length, without->window_length) << loc->describe();
    EXPECT_EQ(with->borrowed, without->borrowed) << loc->describe();
    arch::release_trampoline(*without, code_space());
    ++compared;
  }
  EXPECT_GT(compared, 1000u);
  EXPECT_GT(known, compared / 2);  // most take the path without decoding
}

}  // namespace
}  // namespace usprobe
