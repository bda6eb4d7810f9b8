// libusprobe in a library that a program preloads (LD_PRELOAD): libusprobe is then a dependency of
// a preloaded library, after libc in the dynamic linker's search order, where its signal guard's
// dlsym(RTLD_NEXT, "sigaction") finds nothing. The program must run and exit as it does alone,
// with its probes counting.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <regex>
#include <string>

namespace {

struct Ended {
  int status = -1;
  std::string err;
};

// Runs /usr/bin/false (exit status 1, through exit(), so that the shim's destructor runs) with the
// shim preloaded; its stderr.
Ended run_preloaded() {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(pipe_fds[1], 2);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    setenv("LD_PRELOAD", PRELOAD_SHIM, 1);
    execl("/usr/bin/false", "false", static_cast<char *>(nullptr));
    _exit(127);
  }
  close(pipe_fds[1]);
  Ended e;
  char buf[4096];
  for (ssize_t n; (n = read(pipe_fds[0], buf, sizeof buf)) > 0;) e.err.append(buf, n);
  close(pipe_fds[0]);
  waitpid(pid, &e.status, 0);
  return e;
}

TEST(Preload, AProgramPreloadingALibraryThatLinksUsprobeRunsAndIsProbed) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // An instrumented library preloaded into a program that is not: the sanitizer's runtime refuses
  // to start (it must come first). The Release build runs this test.
  GTEST_SKIP() << "a sanitizer build's libusprobe cannot be preloaded into /usr/bin/false";
#endif
  const Ended e = run_preloaded();
  ASSERT_TRUE(WIFEXITED(e.status)) << "status " << e.status << ": " << e.err;
  EXPECT_EQ(WEXITSTATUS(e.status), 1) << e.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(e.err, m, std::regex("shim: malloc returned ([0-9]+) times")))
      << e.err;
  EXPECT_GT(std::stoull(m[1]), 0u) << e.err;
}

}  // namespace
