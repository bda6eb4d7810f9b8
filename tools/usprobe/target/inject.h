// Loading usprobe's agent into a running process and handing it a session (protocol/attach.h).
//
// check_attachable() decides, from /proc and the target's libc alone, whether the process can be
// attached to, and finds what the injection needs in it. inject_agent() then seizes one thread
// (target/ptrace.h) and, by remote system calls in it, has the target create the agent memfd
// (which the CLI fills), the region memfd (which the CLI sizes and fills through fill_region; or
// it hands the target the region of a session that holds other processes already) and the session
// pipe; it copies the bootstrap (target/bootstrap.c) and its AttachBlock into a page the target
// maps, starts the bootstrap with a remote pthread_create, puts the thread back as it
// was and lets it go. The bootstrap's thread loads the agent with the target's own dlopen and calls
// usprobe_agent_attach; the CLI waits for its answer in the block.
//
// Nothing here depends on a path the target can see: it may live in another mount namespace.
// Typical use:
//
//   auto point = check_attachable(pid);               // refusals that touch nothing
//   if (!point) return point.error();
//   auto injected = inject_agent(*point, agent_path, [&](int region_fd) {
//     return fill_the_region(region_fd);  // Region::create on that fd, before the agent runs
//   });
//   ... session ...; ::close(injected->control_fd);  // ends the session in the target
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "base/error.h"

namespace usprobe::cli {

// What check_attachable found; nothing in the target has been touched.
struct AttachPoint {
  pid_t pid = -1;
  pid_t tid = -1;          // the thread to seize: the main thread, or the first live one
  std::string comm;        // the process's name, for messages
  std::string libc_path;   // as the target sees it (its mount namespace)
  uint64_t libc_bias = 0;  // load bias of the target's libc
  // Functions of the target's libc, at their addresses in the target.
  uint64_t dlopen = 0, dlsym = 0, dlerror = 0, close = 0, nanosleep = 0, munmap = 0;
  uint64_t pthread_create = 0, pthread_self = 0, pthread_detach = 0;
  uint64_t syscall_insn = 0;  // a `syscall` instruction in the target's libc
  // The agent a previous session loaded (it stays, dormant): its usprobe_agent_attach and its
  // build-id; 0 and empty when none is loaded.
  uint64_t agent_attach = 0;
  uint64_t agent_prepare = 0;  // its usprobe_agent_prepare (0: dlsym'd, or an agent without one)
  std::string agent_build_id;
  std::string agent_mapping;  // its maps path ("/memfd:usprobe-agent (deleted)"), for messages
};

// Every refusal that can be decided without touching the target, each one line naming the pid and
// the reason and what would allow it: no such process; usprobe itself; a zombie or a kernel
// thread; a stopped process; ptrace not allowed (another user's process without CAP_SYS_PTRACE,
// kernel.yama.ptrace_scope, a process that is not dumpable); already traced (by whom); a static
// executable; a libc without dlopen (glibc before 2.34); another usprobe session holds it (the
// region of a session whose usprobe was killed, which the agent is removing, is waited for first,
// up to 3 s).
Result<AttachPoint> check_attachable(pid_t pid);

struct Injected {
  // The CLI's descriptor of the region memfd that the target created; -1 when the region was
  // handed to the target (the second inject_agent).
  int region_fd = -1;
  int control_fd = -1;   // the CLI's write end of the session pipe: closing it ends the session
  double attach_ms = 0;  // from seize to the agent's answer
  double longest_stop_ms = 0;  // how long the seized thread was held stopped
};

struct InjectOptions {
  // How long the agent may take to answer once the bootstrap runs, and how long one remote call
  // (pthread_create) may take before it is abandoned.
  std::chrono::milliseconds answer_timeout{10000};
  std::chrono::milliseconds call_timeout{2000};
  // Called once the agent is loaded and before it attaches anything, with the signal of its
  // thread round (usprobe_agent_prepare, protocol/attach.h; 0 when unknown): the caller makes it
  // and SIGTRAP deliverable in the threads that block them (signal_masks.h). The agent attaches
  // when this returns.
  std::function<void(int round_signal)> on_prepared;
  // The probed files as the CLI prepared them (prepared_files_memfd, protocol/prepared.h), or -1:
  // handed to the target as a descriptor of its own, which the agent takes at its attach.
  int prepared_fd = -1;
};

// Seizes a thread, has the target create the agent memfd (skipped when the agent is loaded
// already), the region memfd and the pipe (protocol/attach.h), calls fill_region(region_fd) so the
// CLI sizes and fills the region (Region::create on that fd) before the agent runs, starts the
// bootstrap thread, releases the thread and waits for the agent's answer. `agent_path` is the
// agent in the CLI's file system (libusprobe-agent.so; tests give another). Errors: one line; a
// refusal by the agent carries its message; an agent of another build already loaded is refused
// before anything is touched. On every failure the target is left as it was (registers, signal
// mask, pending system call; fds it created closed again where it can be done).
Result<Injected> inject_agent(const AttachPoint &point, const std::string &agent_path,
                              const std::function<Result<void>(int region_fd)> &fill_region,
                              const InjectOptions &options = {});

// The same, for a session whose region exists already (several processes, one region): the
// target creates no region memfd but is handed `region_fd`, the CLI's descriptor of the region,
// filled already. The descriptor crosses namespaces as a message: the target creates a
// socketpair, the CLI takes one end with pidfd_getfd (Linux 5.6; holding ptrace allows it) and
// sends region_fd with SCM_RIGHTS, the target receives it with recvmsg; the socketpair is closed
// in both. The caller keeps region_fd. Errors and undoing as above.
Result<Injected> inject_agent(const AttachPoint &point, const std::string &agent_path,
                              int region_fd, const InjectOptions &options = {});

}  // namespace usprobe::cli
