// Starting the command with usprobe's agent in it: LD_PRELOAD loads libusprobe-agent.so into the
// command (and into everything it runs that inherits the environment), and USPROBE_AGENT_FD names
// the inherited shared-memory region that holds the plan and receives the counts.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "command.h"
#include "core/error.h"

namespace usprobe::cli {

// libusprobe-agent.so: $USPROBE_AGENT, else beside the usprobe executable, else in the library
// directory of its installation. Error: "agent library not found (looked in A, B, C)".
Result<std::string> find_agent();

struct Child {
  pid_t pid = -1;
  std::chrono::steady_clock::time_point started;
};

// The environment the command gets: `env` with LD_PRELOAD=<agent>[:<old LD_PRELOAD>] and
// USPROBE_AGENT_FD=<fd>.
std::vector<std::string> command_environment(char **env, const std::string &agent, int region_fd);

// Forks and executes the command in usprobe's process group (it keeps the terminal), with
// `child_mask` as its signal mask. Errors: the exec failed (with the reason).
Result<Child> launch(const Command &command, const std::string &agent, int region_fd,
                     const sigset_t &child_mask);

}  // namespace usprobe::cli
