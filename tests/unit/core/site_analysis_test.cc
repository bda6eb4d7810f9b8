// core/site_analysis.h: the path an attach would take at each USDT site of a file, without a
// probed process (what `usprobe list -v usdt:FILE` and usprobe_jump_share report).
#include "core/site_analysis.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <string>

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
  provide_file_branch_targets((*taken)->id(), (*taken)->build_id(), fake);
  provide_file_branch_targets((*refused)->id(), "00" + (*refused)->build_id(), fake);
  provide_file_branch_targets((*refused)->id(), "", fake);  // no build id: never taken
  const std::vector<uint64_t> *t = file_branch_targets(**taken);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t, fake);
  const std::vector<uint64_t> *r = file_branch_targets(**refused);
  ASSERT_NE(r, nullptr);
  EXPECT_NE(*r, fake);
  EXPECT_GT(r->size(), 100u);  // decoded: a program has many
  EXPECT_TRUE(std::is_sorted(r->begin(), r->end()));
}

}  // namespace
}  // namespace usprobe
