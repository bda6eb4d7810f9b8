#include "support/child_process.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern char **environ;

namespace usprobe::test {

std::string strf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

std::string run_in_child(const char *env_var, const char *name, std::chrono::seconds limit) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::vector<std::string> env_strings;
  for (char **e = environ; *e; ++e) env_strings.emplace_back(*e);
  env_strings.push_back(std::string(env_var) + "=" + name);
  std::vector<char *> envp;
  for (auto &e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  char self[] = "/proc/self/exe";
  char *argv[] = {self, nullptr};
  pid_t pid = 0;
  if (int err = posix_spawn(&pid, self, nullptr, nullptr, argv, envp.data()); err != 0)
    return strf("posix_spawn: %s", std::strerror(err));
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return strf("the child did not finish within %llds and was killed",
                  static_cast<long long>(limit.count()));
    }
    usleep(10 * 1000);
  }
  if (WIFEXITED(status))
    return WEXITSTATUS(status) == 0 ? ""
                                    : strf("the child exited with status %d", WEXITSTATUS(status));
  return strf("the child was killed by signal %d (%s)", WTERMSIG(status),
              strsignal(WTERMSIG(status)));
}

bool run_scenario_if_child(const char *env_var, std::span<const Scenario> all) {
  const char *want = std::getenv(env_var);
  if (!want) return false;
  for (const Scenario &sc : all) {
    if (std::strcmp(sc.name, want) != 0) continue;
    int rc = sc.body();
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(rc);
  }
  std::fprintf(stderr, "no scenario %s\n", want);
  _exit(2);
}

}  // namespace usprobe::test
