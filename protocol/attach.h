// Attaching to a running process: how the CLI hands a session to the agent it injects.
//
// The CLI (tools/usprobe/target/) seizes one thread of the target with ptrace and, by remote system
// calls in it, has the target create everything the session needs, so that nothing has to cross
// from the CLI's mount or pid namespace into the target's:
//   - a memfd for the agent (named kAgentMemfdName), which the CLI fills through
//     /proc/PID/fd/N; the target loads it as "/proc/self/fd/N";
//   - a memfd for the shared region (named kRegionMemfdName), which the CLI opens through
//     /proc/PID/fd/N, sizes and fills with the Header and plan (protocol.h) before the agent runs;
//     or, in a session of several processes (-p given several times), every process after the
//     first is handed the first one's region instead: a socketpair it creates, one end taken by
//     the CLI with pidfd_getfd, the region's descriptor sent with SCM_RIGHTS and received by a
//     recvmsg in the target. Its agent claims a ProcessRecord and slots there as a forked child's
//     does, and counts into the same region;
//   - a pipe (close-on-exec): the CLI opens its write end through /proc/PID/fd/W and the target
//     closes its own, so the CLI holds the only write end. The session ends when that write end
//     is closed: by the CLI at the end of the session, or by the kernel when the CLI dies.
// Then, in the seized thread, one remote call: pthread_create() of a small bootstrap (an
// AttachBlock in the target's memory, target/bootstrap.c) and the thread is released. The
// bootstrap's thread, not the seized one, loads the agent with the target's own dlopen() (a thread
// interrupted while it held the loader or malloc lock carries on and releases it) and calls
//
//   int usprobe_agent_attach(int region_fd, int control_fd, char *message, size_t size);
//
// which maps the region, attaches the plan's probes in one batch on the running process, claims a
// ProcessRecord, starts a watcher thread that reads control_fd, closes region_fd (the mapping
// stays; control_fd is the watcher's) and returns 0; or refuses with a negative errno and a
// one-line reason in `message` (NUL-terminated): -EBUSY when another session holds this process
// ("pid N is probed by another usprobe session"; also when the process carries another copy of
// the agent, preloaded by a usprobe that launched it), -EPROTO for a region it cannot use (bad
// header, plan or layout, or no process records), another errno when the engine refuses the whole
// batch. On a refusal it closes region_fd and control_fd, and the process is as it was. Per-probe
// failures are notices in the region, as in a launched command. The agent's constructor does
// nothing when USPROBE_AGENT_FD is not set: it is silent until this call.
//
// When control_fd reads end of file, the watcher detaches every probe of the session (the
// engine's live patching: the original bytes are back, no thread is left in a trampoline), adds
// the engine's missed counts to the region, marks the process's ProcessRecord kProcessDetached,
// unmaps the region and closes control_fd. The agent stays loaded, dormant: a later session finds
// it in /proc/PID/maps (kAgentMemfdName) and calls usprobe_agent_attach again at its address,
// without a second dlopen. A child forked during the session inherits the session (its probes, a
// watcher of its own on the inherited control_fd, a ProcessRecord); an exec ends it for that
// process (the new image has no agent) but not its record, which stays kProcessAttached while the
// pid lives: the CLI tells such a process by its /proc/PID/maps, which no longer map the region.
// Any bytes written to the pipe are ignored. A process that exits during the session just exits
// (its probes go with it; its record names a dead pid).
#pragma once

#include <atomic>
#include <cstdint>

namespace usprobe::agent {

inline constexpr const char *kAgentMemfdName = "usprobe-agent";
inline constexpr const char *kRegionMemfdName = "usprobe-region";
inline constexpr const char *kAttachSymbol = "usprobe_agent_attach";
// int usprobe_agent_prepare(void): called by the bootstrap after the load and before the attach;
// installs the engine's thread-round handler and returns its signal (or a negative errno). The
// CLI, which holds ptrace, unblocks that signal and SIGTRAP in the threads of the target that block
// them (a thread that blocks SIGTRAP dies at an int3; one that blocks the round's signal cannot
// answer a round), for the session, before it lets the bootstrap go on to the attach.
inline constexpr const char *kPrepareSymbol = "usprobe_agent_prepare";

using AttachFunction = int (*)(int region_fd, int control_fd, char *message, unsigned long size);

// The process records of a session (Header::process_offset, Header::max_processes of them): one
// per process that carries the session's probes (the target, and children it forks). An agent
// claims a free record (compare-and-swap of pid 0 -> its pid) when its probes are attached, then
// stores state kProcessAttached (release; a record whose state is still 0 is being claimed), and
// stores kProcessDetached (release) once they are all removed and its last counts written. The
// CLI waits, at the end of a session, until every record whose process is alive says detached. A
// child claims its record in the agent's fork handler, before fork() returns in it: a child forked
// just as the CLI closed its end may claim one after the CLI last looked (its watcher still reads
// the end of file and detaches). A child that finds no free record keeps the session without one
// (a notice says so).
inline constexpr uint32_t kProcessAttached = 1;
inline constexpr uint32_t kProcessDetached = 2;

struct ProcessRecord {
  std::atomic<int32_t> pid;
  std::atomic<uint32_t> state;
};

}  // namespace usprobe::agent
