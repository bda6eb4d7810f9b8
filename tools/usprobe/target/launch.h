// Starting the command with usprobe's agent in it: LD_PRELOAD loads libusprobe-agent.so into the
// command (and into everything it runs that inherits the environment), and USPROBE_AGENT_FD names
// the inherited shared-memory region that holds the plan and receives the counts.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "base/error.h"
#include "target/command.h"

namespace usprobe::cli {

// libusprobe-agent.so: $USPROBE_AGENT, else beside the usprobe executable, else in the library
// directory of its installation. Error: "agent library not found (looked in A, B, C)".
Result<std::string> find_agent();

struct Child {
  pid_t pid = -1;
  std::chrono::steady_clock::time_point started;
};

// The environment the command gets: `env` with LD_PRELOAD=<agent>[:<old LD_PRELOAD>],
// USPROBE_AGENT_FD=<fd> and, with prepared_fd >= 0, USPROBE_AGENT_PREPARED naming that memfd
// (protocol/prepared.h).
std::vector<std::string> command_environment(char **env, const std::string &agent, int region_fd,
                                             int prepared_fd = -1);

// Every file that `locations` (the plan's) probe, and `files` (the dynamic linker, where the
// engine places its own probe), prepared here once for all the processes of the command (its
// index, bytes and branch targets), in a memfd sealed against any change (protocol/prepared.h);
// -1 when there is nothing to share or it could not be made (each process reads and decodes its
// files then).
int prepared_files_memfd(const std::vector<std::string> &locations,
                         const std::vector<std::string> &files = {});

// Forks and executes the command in usprobe's process group (it keeps the terminal), with
// `child_mask` as its signal mask and, when `stdout_fd` >= 0, a copy of that as its stdout (its
// stdin and stderr are usprobe's). Errors: the exec failed (with the reason).
//
// First it starts the watchdog: a process of its own (its own session, no terminal, nothing open
// but a pipe whose other end only usprobe holds) that waits for usprobe to end. When usprobe
// returns from main or calls exit, it dismisses the watchdog (atexit). When usprobe dies any other
// way (SIGKILL, a crash), the pipe reads as closed without the dismissal, and the watchdog kills
// (SIGKILL) every process that still has the shared region mapped, over and over until none is
// left (a forking command), so that no process of the command is left running probed with
// nobody reading what its probes write.
Result<Child> launch(const Command &command, const std::string &agent, int region_fd,
                     const sigset_t &child_mask, int stdout_fd = -1, int prepared_fd = -1);

// The processes other than `self` that map the memfd of device `dev` and inode `ino` (from
// /proc/PID/maps): the processes of the command, for the watchdog.
std::vector<pid_t> processes_mapping(dev_t dev, ino_t ino, pid_t self);
// Kills (SIGKILL) every process of the command that maps the region behind `region_fd`: usprobe's
// own watchdog, which maps it too (forked after the region was made), is left alone.
void kill_command_processes(int region_fd);
// Whether process `pid` maps that memfd.
bool maps_memfd(pid_t pid, dev_t dev, ino_t ino);

}  // namespace usprobe::cli
