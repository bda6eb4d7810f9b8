#include "launch.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "agent/protocol.h"
#include "paths.h"

extern char **environ;

namespace usprobe::cli {
namespace {

constexpr const char *kAgentName = "libusprobe-agent.so";

bool readable(const std::string &path) {
  return ::access(path.c_str(), R_OK) == 0;
}

}  // namespace

Result<std::string> find_agent() {
  std::vector<std::string> candidates;
  if (const char *env = std::getenv("USPROBE_AGENT"); env && *env) {
    candidates.push_back(env);  // set on purpose: no other place is tried
  } else {
    if (auto self = real_path("/proc/self/exe")) {
      std::string dir = self->substr(0, self->rfind('/'));
      candidates.push_back(dir + "/" + kAgentName);                          // the build tree
      candidates.push_back(dir + "/../lib/x86_64-linux-gnu/" + kAgentName);  // Debian layout
    }
    candidates.push_back(std::string(USPROBE_INSTALL_LIBDIR) + "/" + kAgentName);
  }
  std::string looked;
  for (const std::string &c : candidates) {
    if (readable(c))
      if (auto abs = real_path(c)) return *abs;  // LD_PRELOAD wants it absolute
    looked += (looked.empty() ? "" : ", ") + c;
  }
  return fail(ENOENT, "agent library not found (looked in " + looked + ")");
}

std::vector<std::string> command_environment(char **env, const std::string &agent, int region_fd) {
  std::string preload = agent;
  std::vector<std::string> out;
  for (char **e = env; e && *e; ++e) {
    std::string_view var(*e);
    if (var.starts_with("LD_PRELOAD=")) {
      std::string_view old = var.substr(11);
      if (!old.empty()) preload += ":" + std::string(old);
      continue;
    }
    if (var.starts_with(std::string(agent::kEnvFd) + "=")) continue;
    if (var.starts_with(std::string(agent::kEnvPath) + "=")) continue;
    out.emplace_back(var);
  }
  out.push_back("LD_PRELOAD=" + preload);
  out.push_back(std::string(agent::kEnvFd) + "=" + std::to_string(region_fd));
  out.push_back(fmt::format("{}=/proc/{}/fd/{}", agent::kEnvPath, getpid(), region_fd));
  return out;
}

Result<Child> launch(const Command &command, const std::string &agent, int region_fd,
                     const sigset_t &child_mask) {
  // Everything the child needs is built before fork: between fork and exec it may only make
  // async-signal-safe calls.
  std::vector<std::string> env = command_environment(environ, agent, region_fd);
  std::vector<char *> envp, argv;
  for (std::string &e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  for (const std::string &a : command.argv) argv.push_back(const_cast<char *>(a.c_str()));
  argv.push_back(nullptr);
  // The exec's failure comes back through this pipe; its close-on-exec end reads as EOF when the
  // exec succeeded.
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0)
    return fail(errno, std::string("pipe: ") + std::strerror(errno));

  Child child;
  child.started = std::chrono::steady_clock::now();
  child.pid = ::fork();
  if (child.pid < 0) {
    int err = errno;
    ::close(report[0]);
    ::close(report[1]);
    return fail(err, std::string("fork: ") + std::strerror(err));
  }
  if (child.pid == 0) {
    ::close(report[0]);
    ::sigprocmask(SIG_SETMASK, &child_mask, nullptr);
    ::execve(command.path.c_str(), argv.data(), envp.data());
    int err = errno;
    [[maybe_unused]] ssize_t n = ::write(report[1], &err, sizeof err);
    ::_exit(127);
  }
  ::close(report[1]);
  int err = 0;
  ssize_t n;
  while ((n = ::read(report[0], &err, sizeof err)) < 0 && errno == EINTR) {
  }
  ::close(report[0]);
  if (n == static_cast<ssize_t>(sizeof err)) {
    while (::waitpid(child.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return fail(err, "cannot execute " + command.path + ": " + std::strerror(err));
  }
  return child;
}

}  // namespace usprobe::cli
