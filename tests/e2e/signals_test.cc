// Commands whose threads block every signal, run under the CLI with probes on the int3 path
// (USPROBE_FORCE_INT3=1 in the command's environment: whatever jump the engine could place, these
// test the int3 path, and the dynamic linker's hook is an int3 anyway). The kernel kills a thread
// that reaches an int3 while it blocks SIGTRAP; usprobe keeps SIGTRAP deliverable for them
// (src/os/linux/signal_guard.h), and says why when a command dies of SIGTRAP all the same.
#include <unistd.h>

#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "e2e_support.h"

namespace {

using e2e::hits_of;
using e2e::only_total;
using e2e::run;

constexpr const char *kForceInt3 = "USPROBE_FORCE_INT3=1";

// The threads of e2e_target block every signal (the creator with sigprocmask around
// pthread_create, each thread with pthread_sigmask), then call e2e_work: every call is counted.
TEST(CliSignals, ThreadsBlockingEverySignalAreCountedOnTheInt3Path) {
  auto r = run({"/usr/bin/env", kForceInt3, e2e::cli(), "count", "--json", "exe:e2e_work", "--",
                e2e::target(), "blocked-threads", "3", "1000"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("blocked-threads 3 x 1000"), std::string::npos) << r.out;
  EXPECT_EQ(hits_of(only_total(r), "exe:e2e_work"), 3000u) << r.out;
}

// liblzma starts its encoder threads with every signal blocked, and they call memcpy.
TEST(CliSignals, XzWithWorkerThreadsSurvivesAnInt3OnMemcpy) {
  if (access("/usr/bin/xz", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/xz (Debian xz-utils)";
  e2e::TempDir dir;
  const std::string input = dir.file("data.txt");
  {
    std::ofstream f(input);
    for (int i = 0; i < 120000; ++i)
      f << "line " << i << " of the data xz compresses in blocks, " << (i * 7919) % 1000 << "\n";
  }
  const std::vector<std::string> xz = {"/usr/bin/xz", "-1", "-T2", "--block-size=1MiB", "-k"};
  std::vector<std::string> probed = {"/usr/bin/env", kForceInt3,    e2e::cli(), "count",
                                     "--json",       "libc:memcpy", "--"};
  probed.insert(probed.end(), xz.begin(), xz.end());
  probed.push_back(input);
  auto r = run(probed);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_GT(hits_of(only_total(r), "libc:memcpy"), 0u) << r.out;

  std::vector<std::string> plain = xz;
  plain.push_back("-c");
  plain.push_back(input);
  auto expected = run(plain);
  ASSERT_EQ(expected.exit_code(), 0) << expected.describe();
  const std::string got = e2e::read_file(input + ".xz");
  EXPECT_GT(got.size(), 0u);
  EXPECT_TRUE(got == expected.out) << "the .xz differs from xz's own: " << got.size() << " vs "
                                   << expected.out.size() << " bytes";
}

// util-linux's runuser blocks every signal while PAM unloads its modules (dlclose: the dynamic
// linker's hook), and calls malloc and free meanwhile.
TEST(CliSignals, RunuserSurvivesTheLinkerHookWithEverySignalBlocked) {
  if (geteuid() != 0) GTEST_SKIP() << "runuser needs root";
  if (access("/usr/sbin/runuser", X_OK) != 0) GTEST_SKIP() << "no /usr/sbin/runuser (util-linux)";
  auto r = run({"/usr/bin/env", kForceInt3, e2e::cli(), "count", "--json", "libc:malloc", "--",
                "/usr/sbin/runuser", "-u", "nobody", "--", "/bin/true"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_GT(hits_of(only_total(r), "libc:malloc"), 0u) << r.out;
}

// A program with its own SIGTRAP handler (crash reporters install one), which later ignores
// SIGTRAP: it gets its own raises, each once, and the int3 sites and the dynamic linker's hook
// (dlopen, dlclose) keep working.
TEST(CliSignals, ProgramsOwnSigtrapHandlerDoesNotTakeOverTheInt3Path) {
  auto r = run({"/usr/bin/env", kForceInt3, e2e::cli(), "count", "--json", "exe:e2e_work", "--",
                e2e::target(), "own-trap", "500", DLOPEN_LIB});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("own-trap handled 3\n"), std::string::npos) << r.out;
  EXPECT_EQ(hits_of(only_total(r), "exe:e2e_work"), 1000u) << r.out;
}

// What usprobe cannot see: SIGTRAP blocked by a raw system call. The thread dies at the int3, and
// the CLI says why instead of ending silently.
TEST(CliSignals, DeathBySigtrapIsExplained) {
  auto r = run({"/usr/bin/env", kForceInt3, e2e::cli(), "count", "exe:e2e_work", "--",
                e2e::target(), "raw-blocked", "10"});
  EXPECT_EQ(r.exit_code(), 128 + SIGTRAP) << r.describe();
  EXPECT_NE(r.err.find("usprobe: the command was killed by SIGTRAP: unless it raised that itself, "
                       "a thread reached an int3 probe site while it blocked SIGTRAP"),
            std::string::npos)
      << r.err;
}

}  // namespace
