// The calls that start a child in the caller's memory (CLONE_VM | CLONE_VFORK), interposed so that
// the child's hits carry its own pid and tid (agent/slots.h, "vfork and its kind"): vfork
// (vfork.S) and posix_spawn, posix_spawnp, system and popen, whose glibc versions clone such a
// child internally. Each marks the calling thread, then calls the real function unchanged.
#include <dlfcn.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "agent/agent_scope.h"
#include "agent/slots.h"
#include "core/thread_record.h"
#include "os/linux/os_inline.h"

namespace usprobe::agent {
namespace {

void mark_vfork() {
  // The child runs on this thread's TLS: its hits take the full path (the counter path would count
  // them into this thread's slot), as do the parent's until its next one sets the home again.
  set_counter_home(0);
  t_vfork_parent = os::raw_gettid();
}

// The next definition of `name` (libc's), looked up once per call site; dlsym's own allocations
// are the agent's, not the command's.
template <typename Fn>
Fn next(const char *name, Fn fallback) {
  AgentScope in_agent;
  void *f = dlsym(RTLD_NEXT, name);
  return f ? reinterpret_cast<Fn>(f) : fallback;
}

}  // namespace
}  // namespace usprobe::agent

using usprobe::agent::mark_vfork;
using usprobe::agent::next;

// Called by vfork.S: the real vfork (fork, which is what vfork may be, if it cannot be found).
extern "C" void *usprobe_agent_before_vfork() {
  using Fn = pid_t (*)();
  static Fn real = next<Fn>("vfork", &fork);
  mark_vfork();
  return reinterpret_cast<void *>(real);
}

extern "C" __attribute__((visibility("default"))) int posix_spawn(
    pid_t *pid, const char *path, const posix_spawn_file_actions_t *actions,
    const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
  static auto real = next<decltype(&posix_spawn)>("posix_spawn", nullptr);
  mark_vfork();
  return real(pid, path, actions, attr, argv, envp);
}

extern "C" __attribute__((visibility("default"))) int posix_spawnp(
    pid_t *pid, const char *file, const posix_spawn_file_actions_t *actions,
    const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
  static auto real = next<decltype(&posix_spawnp)>("posix_spawnp", nullptr);
  mark_vfork();
  return real(pid, file, actions, attr, argv, envp);
}

extern "C" __attribute__((visibility("default"))) int system(const char *command) {
  static auto real = next<decltype(&system)>("system", nullptr);
  mark_vfork();
  return real(command);
}

extern "C" __attribute__((visibility("default"))) FILE *popen(const char *command,
                                                              const char *type) {
  static auto real = next<decltype(&popen)>("popen", nullptr);
  mark_vfork();
  return real(command, type);
}
