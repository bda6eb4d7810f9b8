#include "target/inject.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "elf/elf_file.h"
#include "os/linux/high_descriptor.h"
#include "os/linux/proc_maps.h"
#include "protocol/attach.h"
#include "resolve/paths.h"
#include "target/attach_block.h"
#include "target/bootstrap_code.h"
#include "target/launch.h"
#include "target/ptrace.h"

namespace usprobe::cli {

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kPage = 4096;
constexpr unsigned kPfKthread = 0x00200000;  // PF_KTHREAD in /proc/PID/stat's flags
constexpr int kCapSysPtrace = 19;
// How long a process may take to remove the probes of a session whose usprobe was killed (the
// agent sees its pipe's end of file) before a new session is refused.
constexpr std::chrono::seconds kEndedSessionWait{3};

uint64_t page_up(uint64_t n) {
  return (n + kPage - 1) & ~(kPage - 1);
}

std::string read_text(const std::string &path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string comm_of(pid_t pid) {
  std::string c = read_text(fmt::format("/proc/{}/comm", pid));
  while (!c.empty() && c.back() == '\n') c.pop_back();
  return c.empty() ? "?" : c;
}

// What /proc/PID/status says that decides whether ptrace may attach, and the size of the
// descriptor table (Injection::raise_fd).
struct Status {
  char state = '?';
  pid_t tgid = 0, ppid = 0, tracer = 0;
  uid_t uid[4] = {};  // real, effective, saved, fs
  gid_t gid[4] = {};
  uint64_t cap_eff = 0;
  rlim_t fd_size = 0;  // the slots of its descriptor table
};

std::optional<Status> read_status(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  if (!in) return std::nullopt;
  Status s;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line.substr(line.find(':') + 1));
    if (line.starts_with("State:"))
      f >> s.state;
    else if (line.starts_with("Tgid:"))
      f >> s.tgid;
    else if (line.starts_with("PPid:"))
      f >> s.ppid;
    else if (line.starts_with("TracerPid:"))
      f >> s.tracer;
    else if (line.starts_with("Uid:"))
      f >> s.uid[0] >> s.uid[1] >> s.uid[2] >> s.uid[3];
    else if (line.starts_with("Gid:"))
      f >> s.gid[0] >> s.gid[1] >> s.gid[2] >> s.gid[3];
    else if (line.starts_with("CapEff:"))
      f >> std::hex >> s.cap_eff;
    else if (line.starts_with("FDSize:"))
      f >> s.fd_size;
  }
  return s;
}

// /proc/PID/stat's flags (field 9), after the parenthesized comm, which may hold anything.
unsigned stat_flags(pid_t pid) {
  std::string stat = read_text(fmt::format("/proc/{}/stat", pid));
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream f(stat.substr(close + 2));
  std::string field;
  for (int i = 3; i < 9 && f >> field; i++) {
  }
  unsigned flags = 0;
  f >> flags;
  return flags;
}

char thread_state(pid_t pid, pid_t tid) {
  std::string stat = read_text(fmt::format("/proc/{}/task/{}/stat", pid, tid));
  size_t close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? '?' : stat[close + 2];
}

bool descends_from(pid_t pid, pid_t ancestor) {
  for (int depth = 0; pid > 1 && depth < 1024; depth++) {
    auto s = read_status(pid);
    if (!s) return false;
    if (s->ppid == ancestor) return true;
    pid = s->ppid;
  }
  return false;
}

bool is_descendant(pid_t pid) {
  return descends_from(pid, ::getpid());
}

int yama_scope() {
  std::ifstream in("/proc/sys/kernel/yama/ptrace_scope");
  int scope = -1;
  if (in) in >> scope;
  return scope;
}

std::string basename_of(const std::string &path) {
  return path.substr(path.rfind('/') + 1);
}

bool is_libc(const std::string &path) {
  std::string base = basename_of(path);
  return base == "libc.so.6" || (base.starts_with("libc-2.") && base.ends_with(".so")) ||
         base.starts_with("ld-musl-");
}

// The load bias of the file mapped by `maps` at `path`: its lowest mapping's address less the
// virtual address its file offset has.
std::optional<uint64_t> load_bias(const std::vector<os::Mapping> &maps, const std::string &path,
                                  const elf::ElfFile &file) {
  for (const os::Mapping &m : maps) {
    if (m.path != path) continue;
    auto vaddr = file.offset_to_vaddr(m.offset);
    if (!vaddr) return std::nullopt;
    return m.start - (*vaddr & ~(kPage - 1));
  }
  return std::nullopt;
}

// The file behind a mapping of the target, opened as the target sees it: by its path, through the
// target's root when that is not ours (process_root), else through map_files (a deleted file, a
// memfd). By the same path as the probes' resolution opens it, so that a library both need (libc)
// is indexed once.
Result<std::shared_ptr<const elf::ElfFile>> open_mapped(pid_t pid,
                                                        const std::vector<os::Mapping> &maps,
                                                        const std::string &path) {
  if (path.starts_with("/") && !path.starts_with("/memfd:"))
    if (auto f = elf::ElfFile::open(process_root(pid) + path)) return f;
  for (const os::Mapping &m : maps)
    if (m.path == path)
      return elf::ElfFile::open(fmt::format("/proc/{}/map_files/{:x}-{:x}", pid, m.start, m.end));
  return fail(ENOENT, fmt::format("pid {}: {} is not mapped", pid, path));
}

// Whether a process other than `pid` and the children it forked maps `region`: the usprobe of a
// live session (or whatever stands in for it).
bool region_held(pid_t pid, const os::Mapping &region) {
  for (pid_t p : processes_mapping(region.dev, region.ino, ::getpid()))
    if (p != pid && !descends_from(p, pid)) return true;
  return false;
}

// The usprobe process that holds the region memfd the target maps, for the message.
std::string region_holder(pid_t pid, const os::Mapping &region) {
  pid_t other = 0;
  for (pid_t p : processes_mapping(region.dev, region.ino, ::getpid())) {
    if (p == pid) continue;
    if (comm_of(p) == "usprobe") return fmt::format(" (usprobe pid {})", p);
    if (!other) other = p;
  }
  return other ? fmt::format(" (pid {}, {}, maps its region)", other, comm_of(other)) : "";
}

// Text the target wrote: up to its NUL, printable ASCII only, bounded.
std::string untrusted_text(const char *text, size_t size) {
  std::string out;
  for (size_t i = 0; i < size && text[i] && out.size() < 300; i++) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    out.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
  }
  return out;
}

}  // namespace

Result<AttachPoint> check_attachable(pid_t pid) {
  if (pid <= 0) return fail(ESRCH, fmt::format("pid {}: no such process", pid));
  if (pid == ::getpid())
    return fail(EINVAL,
                fmt::format("pid {} is usprobe itself: it cannot attach to its own process", pid));
  auto status = read_status(pid);
  if (!status) return fail(ESRCH, fmt::format("pid {}: no such process", pid));
  AttachPoint point;
  point.pid = pid;
  point.comm = comm_of(pid);
  std::string who = fmt::format("pid {} ({})", pid, point.comm);
  if (status->tgid != pid)
    return fail(EINVAL, fmt::format("{} is a thread of process {}: attach to the process", who,
                                    status->tgid));
  if (status->tgid == ::getpid())
    return fail(EINVAL,
                fmt::format("{} is usprobe itself: it cannot attach to its own process", who));
  if (stat_flags(pid) & kPfKthread)
    return fail(EINVAL, fmt::format("{} is a kernel thread: it has no user space to probe", who));
  if (status->state == 'Z' || status->state == 'X')
    return fail(ESRCH, fmt::format("{} is a zombie: it has exited and waits for its parent to "
                                   "reap it",
                                   who));
  if (status->tracer != 0)
    return fail(EBUSY, fmt::format("{} is already traced by pid {} ({}): a process has one tracer "
                                   "at a time; detach that one first",
                                   who, status->tracer, comm_of(status->tracer)));
  if (status->state == 'T')
    return fail(EINVAL, fmt::format("{} is stopped: continue it first (kill -CONT {})", who, pid));

  // ptrace's own checks (ptrace_may_access and Yama), so that a refusal names its cause.
  auto self = read_status(::getpid());
  bool cap_ptrace = self && (self->cap_eff >> kCapSysPtrace) & 1;
  uid_t euid = ::geteuid();
  gid_t egid = ::getegid();
  if (!cap_ptrace) {
    bool same_user = true;
    for (int i = 0; i < 3; i++)
      same_user = same_user && status->uid[i] == euid && status->gid[i] == egid;
    if (!same_user)
      return fail(EPERM, fmt::format("{} belongs to uid {} and usprobe runs as uid {} without "
                                     "CAP_SYS_PTRACE: run usprobe as that user or as root",
                                     who, status->uid[0], euid));
    struct stat st {};
    if (::stat(fmt::format("/proc/{}", pid).c_str(), &st) == 0 && st.st_uid != euid)
      return fail(EPERM, fmt::format("{} is not dumpable (a set-user-ID program, or "
                                     "prctl(PR_SET_DUMPABLE, 0)): only a process with "
                                     "CAP_SYS_PTRACE may attach to it; run usprobe as root",
                                     who));
  }
  int scope = yama_scope();
  if (scope == 3)
    return fail(EPERM, fmt::format("{}: kernel.yama.ptrace_scope is 3: no process may attach with "
                                   "ptrace (until a reboot sets it lower)",
                                   who));
  if (scope == 2 && !cap_ptrace)
    return fail(EPERM, fmt::format("{}: kernel.yama.ptrace_scope is 2: only a process with "
                                   "CAP_SYS_PTRACE may attach; run usprobe as root",
                                   who));
  if (scope == 1 && !cap_ptrace && !is_descendant(pid))
    return fail(EPERM, fmt::format("{}: kernel.yama.ptrace_scope is 1: only an ancestor of a "
                                   "process may attach to it; run usprobe as root (CAP_SYS_PTRACE) "
                                   "or set kernel.yama.ptrace_scope to 0",
                                   who));

  auto maps = os::read_mappings(fmt::format("/proc/{}/maps", pid).c_str());
  if (!maps) return fail(maps.error().code, fmt::format("{}: {}", who, maps.error().message));
  if (maps->empty())
    return fail(EINVAL, fmt::format("{} has no memory mapped: a kernel thread, or exiting", who));

  // A session holds the process: it maps a region memfd (attached: usprobe-region; launched:
  // the CLI's "usprobe").
  const std::string attached_region = std::string("/memfd:") + agent::kRegionMemfdName;
  auto region_of = [&](const std::vector<os::Mapping> &ms) -> std::optional<os::Mapping> {
    for (const os::Mapping &m : ms)
      if (m.path == attached_region || m.path == "/memfd:usprobe") return m;
    return std::nullopt;
  };
  if (auto region = region_of(*maps)) {
    // An attached session's region that only this process (and the children it forked during the
    // session) maps is one whose usprobe is gone (killed): the agent has read the end of its pipe
    // and is removing the probes, and unmaps the region last. That takes milliseconds; wait for
    // it (bounded) rather than refuse.
    if (region->path == attached_region && !region_held(pid, *region)) {
      auto until = std::chrono::steady_clock::now() + kEndedSessionWait;
      while (region && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        auto again = os::read_mappings(fmt::format("/proc/{}/maps", pid).c_str());
        if (!again)
          return fail(again.error().code, fmt::format("{}: {}", who, again.error().message));
        maps = std::move(again);
        region = region_of(*maps);
      }
      if (region)
        return fail(EBUSY, fmt::format("{} still carries the probes of a usprobe session whose "
                                       "usprobe has exited: its agent did not remove them within "
                                       "{} s; try again later",
                                       who, kEndedSessionWait.count()));
    } else {
      return fail(EBUSY, fmt::format("{} is probed by another usprobe session{}: end that session "
                                     "first",
                                     who, region_holder(pid, *region)));
    }
  }

  std::string exe_link(4096, '\0');
  ssize_t n =
      ::readlink(fmt::format("/proc/{}/exe", pid).c_str(), exe_link.data(), exe_link.size() - 1);
  exe_link.resize(n > 0 ? n : 0);
  if (auto exe = elf::ElfFile::open(fmt::format("/proc/{}/exe", pid));
      exe && (*exe)->is_static_executable())
    return fail(ENOEXEC, fmt::format("{} runs a statically linked program ({}): it has no dynamic "
                                     "linker, so usprobe's agent cannot be loaded into it; only "
                                     "dynamically linked programs can be probed",
                                     who, exe_link));

  const os::Mapping *libc = nullptr;
  for (const os::Mapping &m : *maps)
    if (m.exec && is_libc(m.path)) libc = &m;
  if (!libc)
    return fail(ENOEXEC, fmt::format("{} has no libc mapped: usprobe's agent is loaded with the "
                                     "target's own dlopen",
                                     who));
  point.libc_path = libc->path;
  auto libc_elf = open_mapped(pid, *maps, libc->path);
  if (!libc_elf)
    return fail(libc_elf.error().code, fmt::format("{}: {}", who, libc_elf.error().message));
  auto bias = load_bias(*maps, libc->path, **libc_elf);
  if (!bias)
    return fail(ENOEXEC,
                fmt::format("{}: {} is not mapped as its ELF headers say", who, libc->path));
  point.libc_bias = *bias;
  struct Wanted {
    const char *name;
    uint64_t *address;
  };
  const Wanted wanted[] = {
      {"dlopen", &point.dlopen},
      {"dlsym", &point.dlsym},
      {"dlerror", &point.dlerror},
      {"close", &point.close},
      {"nanosleep", &point.nanosleep},
      {"munmap", &point.munmap},
      {"pthread_create", &point.pthread_create},
      {"pthread_self", &point.pthread_self},
      {"pthread_detach", &point.pthread_detach},
  };
  for (const Wanted &w : wanted) {
    auto f = (*libc_elf)->find_function(w.name);
    if (!f || !f->exported || f->ifunc) {
      if (std::string_view(w.name).starts_with("dl") ||
          std::string_view(w.name) == "pthread_create")
        return fail(ENOEXEC,
                    fmt::format("{}: its libc ({}) exports no {}: glibc exports dlopen and "
                                "pthread_create from libc.so.6 since 2.34; an older "
                                "libc cannot load usprobe's agent this way",
                                who, libc->path, w.name));
      return fail(ENOEXEC, fmt::format("{}: its libc ({}) exports no {}", who, libc->path, w.name));
    }
    *w.address = *bias + f->vaddr;
  }
  // A `syscall` instruction: the one in libc's syscall(); a step over it checks it really is one.
  if (auto f = (*libc_elf)->find_function("syscall")) {
    auto bytes = (*libc_elf)->bytes(f->file_offset, f->size);
    for (size_t i = 0; i + 1 < bytes.size(); i++)
      if (bytes[i] == 0x0f && bytes[i + 1] == 0x05) {
        point.syscall_insn = *bias + f->vaddr + i;
        break;
      }
  }
  if (!point.syscall_insn)
    return fail(ENOEXEC, fmt::format("{}: no system call instruction found in syscall() of {}", who,
                                     libc->path));

  // An agent loaded by an earlier session: by memfd (attached) or by file (launched).
  for (const os::Mapping &m : *maps) {
    if (m.path != std::string("/memfd:") + agent::kAgentMemfdName &&
        basename_of(m.path) != "libusprobe-agent.so")
      continue;
    point.agent_mapping = m.path;
    auto agent = open_mapped(pid, *maps, m.path);
    if (!agent)
      return fail(agent.error().code, fmt::format("{}: cannot read the usprobe agent it has "
                                                  "loaded: {}",
                                                  who, agent.error().message));
    point.agent_build_id = (*agent)->build_id();
    if (point.agent_build_id.empty()) point.agent_build_id = "none";
    auto agent_bias = load_bias(*maps, m.path, **agent);
    auto attach = (*agent)->find_function(agent::kAttachSymbol);
    if (agent_bias && attach) point.agent_attach = *agent_bias + attach->vaddr;
    auto prepare = (*agent)->find_function(agent::kPrepareSymbol);
    if (agent_bias && prepare) point.agent_prepare = *agent_bias + prepare->vaddr;
    break;
  }

  point.tid = pid;
  if (thread_state(pid, pid) == 'Z') {  // the main thread has called pthread_exit
    point.tid = -1;
    for (const auto &entry :
         std::filesystem::directory_iterator(fmt::format("/proc/{}/task", pid))) {
      pid_t tid = std::atoi(entry.path().filename().c_str());
      if (tid > 0 && thread_state(pid, tid) != 'Z') {
        point.tid = tid;
        break;
      }
    }
    if (point.tid < 0) return fail(ESRCH, fmt::format("{} has no live thread", who));
  }
  return point;
}

namespace {

// The injection's steps in the target, each recorded with its undoing, so that a failure at any
// step leaves the target as it was.
class Injection {
 public:
  Injection(const AttachPoint &point, SeizedThread &thread)
      : point_(point), thread_(thread), who_(fmt::format("pid {} ({})", point.pid, point.comm)) {}

  ~Injection() {
    for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) (*it)();
  }
  // The target keeps what was done: the bootstrap owns it now.
  void commit() { undo_.clear(); }

  Result<int64_t> syscall(const char *name, long nr, std::array<uint64_t, 6> args) {
    auto r = thread_.syscall(point_.syscall_insn, nr, args);
    if (!r) return std::unexpected(r.error());
    if (*r < 0 && *r > -4096)
      return fail(static_cast<int>(-*r), fmt::format("{}: {} in the target: {}", who_, name,
                                                     std::strerror(static_cast<int>(-*r))));
    return *r;
  }

  // A descriptor the target just opened for usprobe (close-on-exec, not owned yet), moved near the
  // top of its numbers (os/linux/high_descriptor.h), the old number closed: the program's own next
  // open() gets the number it would have got without usprobe. Stays where it is where the target
  // has no room up there, or the move fails.
  //
  // Near the top of the descriptor table the target has now (FDSize in its status, 64 slots in a
  // small process), when that is below the usual place: a table that grows while the thread is
  // held makes it wait for an RCU grace period (the kernel's expand_fdtable, in a process of more
  // than one thread: 10 to 15 ms on these VMs, the attach's whole stop before). The program's own
  // numbers stay as they are unprobed up to the last 16 slots of the table it has.
  int raise_fd(int fd) {
    rlimit limit{};
    if (::prlimit(point_.pid, RLIMIT_NOFILE, nullptr, &limit) != 0) return fd;
    rlim_t floor = os::high_descriptor_floor(limit.rlim_cur);
    if (table_size_ == 0)
      if (auto status = read_status(point_.pid)) table_size_ = status->fd_size;
    if (table_size_ >= 32 && floor + os::kHighDescriptorRoom > table_size_)
      floor = table_size_ - 16;
    if (floor == 0 || static_cast<rlim_t>(fd) >= floor) return fd;
    auto high = thread_.syscall(point_.syscall_insn, SYS_fcntl,
                                {uint64_t(fd), F_DUPFD_CLOEXEC, uint64_t{floor}});
    if (!high || *high < 0) return fd;
    (void)thread_.syscall(point_.syscall_insn, SYS_close, {uint64_t(fd)});
    return static_cast<int>(*high);
  }
  // A descriptor the target opened: closed again on failure.
  void own_fd(int fd) {
    undo_.push_back(
        [this, fd] { (void)thread_.syscall(point_.syscall_insn, SYS_close, {uint64_t(fd)}); });
  }
  void own_mapping(uint64_t address, uint64_t size) {
    undo_.push_back([this, address, size] {
      (void)thread_.syscall(point_.syscall_insn, SYS_munmap, {address, size});
    });
  }
  // The target's descriptor `fd`, opened by the CLI through /proc/PID/fd.
  Result<int> open_fd(int fd, int flags) {
    int mine = ::open(fmt::format("/proc/{}/fd/{}", point_.pid, fd).c_str(), flags | O_CLOEXEC);
    if (mine < 0)
      return fail(errno,
                  fmt::format("{}: opening its descriptor {}: {}", who_, fd, std::strerror(errno)));
    return mine;
  }
  const std::string &who() const { return who_; }

  // Hands the CLI's descriptor `mine` to the target, as a descriptor of its own (close-on-exec;
  // closed again on failure), whatever its mount and pid namespaces: the target creates a
  // socketpair, the CLI takes one end with pidfd_getfd (which holding ptrace allows) and sends
  // `mine` over it with SCM_RIGHTS, and the target receives it with recvmsg into `scratch`, a
  // Passing in its memory. The socketpair is closed in both, whatever happens. `what` names the
  // descriptor in messages.
  Result<int> give_fd(int mine, uint64_t scratch, const char *what);

 private:
  const AttachPoint &point_;
  SeizedThread &thread_;
  std::string who_;
  rlim_t table_size_ = 0;  // the target's descriptor table when first asked (0: unknown)
  std::vector<std::function<void()>> undo_;
};

Result<std::string> read_file(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail(errno ? errno : ENOENT, fmt::format("{}: {}", path, std::strerror(errno)));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// What Injection::give_fd needs in the target's memory: recvmsg's arguments (pointers into the
// target's copy of this struct) and the socketpair's descriptors.
struct Passing {
  int32_t sockets[2];
  char byte;
  iovec iov;
  msghdr message;
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int))];
};

struct Scratch {  // after the AttachBlock in its page
  char agent_name[32];
  char region_name[32];
  int32_t pipe_fds[2];
  Passing passing;
};

Result<int> Injection::give_fd(int mine, uint64_t scratch, const char *what) {
  auto failed = [&](int code, const std::string &why) -> Result<int> {
    return fail(code, fmt::format("{}: handing it {}: {}", who_, what, why));
  };
  auto pair =
      syscall("socketpair", SYS_socketpair,
              {AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, scratch + offsetof(Passing, sockets)});
  if (!pair) return std::unexpected(pair.error());
  int32_t sockets[2];
  if (auto r = read_memory(point_.pid, scratch + offsetof(Passing, sockets),
                           {reinterpret_cast<uint8_t *>(sockets), sizeof sockets});
      !r)
    return std::unexpected(r.error());
  // The socketpair is the target's only for the length of this call.
  int pidfd = -1, sender = -1;
  struct Cleanup {
    Injection &self;
    const int32_t (&sockets)[2];
    int &pidfd, &sender;
    ~Cleanup() {
      for (int32_t fd : sockets)
        (void)self.thread_.syscall(self.point_.syscall_insn, SYS_close, {uint64_t(fd)});
      if (sender >= 0) ::close(sender);
      if (pidfd >= 0) ::close(pidfd);
    }
  } cleanup{*this, sockets, pidfd, sender};

  pidfd = static_cast<int>(::syscall(SYS_pidfd_open, point_.pid, 0));
  if (pidfd < 0) return failed(errno, fmt::format("pidfd_open: {}", std::strerror(errno)));
  sender = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, sockets[0], 0));
  if (sender < 0)
    return failed(errno, fmt::format("pidfd_getfd: {}{}", std::strerror(errno),
                                     errno == ENOSYS ? " (Linux 5.6 or later is needed)" : ""));

  // Sent first, so that the target's recvmsg finds it and does not block.
  char byte = 'r';
  iovec iov{&byte, 1};
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  message.msg_control = control;
  message.msg_controllen = sizeof control;
  cmsghdr *c = CMSG_FIRSTHDR(&message);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &mine, sizeof mine);
  if (::sendmsg(sender, &message, MSG_DONTWAIT | MSG_NOSIGNAL) != 1)
    return failed(errno, fmt::format("sendmsg: {}", std::strerror(errno)));

  // recvmsg's arguments in the target: every pointer is an address there.
  Passing passing{};
  std::memcpy(passing.sockets, sockets, sizeof sockets);
  passing.iov.iov_base = reinterpret_cast<void *>(scratch + offsetof(Passing, byte));
  passing.iov.iov_len = 1;
  passing.message.msg_iov = reinterpret_cast<iovec *>(scratch + offsetof(Passing, iov));
  passing.message.msg_iovlen = 1;
  passing.message.msg_control = reinterpret_cast<void *>(scratch + offsetof(Passing, control));
  passing.message.msg_controllen = sizeof passing.control;
  if (auto w = write_memory(point_.pid, scratch,
                            {reinterpret_cast<const uint8_t *>(&passing), sizeof passing});
      !w)
    return std::unexpected(w.error());
  auto received = syscall("recvmsg", SYS_recvmsg,
                          {uint64_t(sockets[1]), scratch + offsetof(Passing, message),
                           MSG_DONTWAIT | MSG_CMSG_CLOEXEC});
  if (!received) return std::unexpected(received.error());
  Passing back{};
  if (auto r = read_memory(point_.pid, scratch, {reinterpret_cast<uint8_t *>(&back), sizeof back});
      !r)
    return std::unexpected(r.error());
  // What the kernel wrote, checked as untrusted: the control buffer is read here, at its copy.
  if (*received != 1 || (back.message.msg_flags & MSG_CTRUNC) ||
      back.message.msg_controllen < CMSG_LEN(sizeof(int)) ||
      back.message.msg_controllen > sizeof back.control)
    return failed(EPROTO, fmt::format("recvmsg in the target received {} bytes and {} bytes of "
                                      "control data{} instead of one descriptor",
                                      *received, back.message.msg_controllen,
                                      back.message.msg_flags & MSG_CTRUNC
                                          ? " (truncated: no descriptor left, RLIMIT_NOFILE?)"
                                          : ""));
  cmsghdr header;
  std::memcpy(&header, back.control, sizeof header);
  int fd = -1;
  std::memcpy(&fd, back.control + CMSG_LEN(0), sizeof fd);
  if (header.cmsg_level != SOL_SOCKET || header.cmsg_type != SCM_RIGHTS ||
      header.cmsg_len != CMSG_LEN(sizeof(int)) || fd < 0)
    return failed(EPROTO, "recvmsg in the target received no descriptor");
  fd = raise_fd(fd);
  own_fd(fd);
  return fd;
}

}  // namespace

namespace {

// Both forms of inject_agent: with fill_region, the target creates the region memfd; else it is
// handed `given_region` (the CLI's descriptor).
Result<Injected> inject(const AttachPoint &point, const std::string &agent_path,
                        const std::function<Result<void>(int region_fd)> *fill_region,
                        int given_region, const InjectOptions &options) {
  const std::string who = fmt::format("pid {} ({})", point.pid, point.comm);

  // The agent: its build-id against the one loaded already, if any.
  auto agent_elf = elf::ElfFile::open(agent_path);
  if (!agent_elf) return std::unexpected(agent_elf.error());
  auto attach_fn = (*agent_elf)->find_function(agent::kAttachSymbol);
  if (!attach_fn || !attach_fn->exported)
    return fail(ENOEXEC,
                fmt::format("{}: no {} (not a usprobe agent)", agent_path, agent::kAttachSymbol));
  bool loaded = !point.agent_build_id.empty();
  if (loaded && point.agent_build_id != (*agent_elf)->build_id())
    return fail(EBUSY, fmt::format("{} has an agent of another usprobe build loaded ({}, "
                                   "build-id {}; this usprobe's is {}): use the usprobe that "
                                   "loaded it, or restart the process",
                                   who, point.agent_mapping, point.agent_build_id,
                                   (*agent_elf)->build_id()));
  if (loaded && !point.agent_attach)
    return fail(ENOEXEC, fmt::format("{}: the agent it has loaded ({}) has no {}", who,
                                     point.agent_mapping, agent::kAttachSymbol));
  std::string agent_bytes;
  if (!loaded) {
    auto bytes = read_file(agent_path);
    if (!bytes) return std::unexpected(bytes.error());
    agent_bytes = std::move(*bytes);
  }

  auto started = Clock::now();
  auto seized = SeizedThread::seize(point.pid, point.tid, std::chrono::milliseconds(2000));
  if (!seized) return std::unexpected(seized.error());
  SeizedThread &thread = **seized;
  if (auto s = thread.save(); !s) return std::unexpected(s.error());

  int region_fd = -1, control_fd = -1, agent_writer = -1;
  auto close_mine = [&] {
    if (region_fd >= 0) ::close(region_fd);
    if (control_fd >= 0) ::close(control_fd);
    if (agent_writer >= 0) ::close(std::exchange(agent_writer, -1));
  };
  uint64_t block_address = 0;
  uint64_t mapping_size = 0;
  // Everything done in the target while the thread is held; `injection`'s destructor undoes it
  // unless it is committed.
  auto held = [&]() -> Result<void> {
    Injection injection(point, thread);
    const uint64_t code_size = page_up(kBootstrapCodeSize);
    mapping_size = code_size + page_up(sizeof(AttachBlock) + sizeof(Scratch));
    auto mapping = injection.syscall(
        "mmap", SYS_mmap,
        {0, mapping_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, ~0ull, 0});
    if (!mapping) return std::unexpected(mapping.error());
    const uint64_t code = static_cast<uint64_t>(*mapping);
    injection.own_mapping(code, mapping_size);
    block_address = code + code_size;
    const uint64_t scratch_address = block_address + sizeof(AttachBlock);

    Scratch scratch{};
    std::snprintf(scratch.agent_name, sizeof scratch.agent_name, "%s", agent::kAgentMemfdName);
    std::snprintf(scratch.region_name, sizeof scratch.region_name, "%s", agent::kRegionMemfdName);
    if (auto w = write_memory(point.pid, scratch_address,
                              {reinterpret_cast<const uint8_t *>(&scratch), sizeof scratch});
        !w)
      return std::unexpected(w.error());

    AttachBlock block{};
    block.agent_fd = -1;
    if (!loaded) {
      auto fd = injection.syscall("memfd_create", SYS_memfd_create,
                                  {scratch_address + offsetof(Scratch, agent_name), MFD_CLOEXEC});
      if (!fd) return std::unexpected(fd.error());
      block.agent_fd = injection.raise_fd(static_cast<int>(*fd));
      injection.own_fd(block.agent_fd);
      // Its bytes go in once the thread is let go (agent_written): 1.4 ms of the stop, for 2.2 MB.
      auto mine = injection.open_fd(block.agent_fd, O_WRONLY);
      if (!mine) return std::unexpected(mine.error());
      agent_writer = *mine;
      std::snprintf(block.agent_path, sizeof block.agent_path, "/proc/self/fd/%d", block.agent_fd);
    }

    if (fill_region) {
      auto region =
          injection.syscall("memfd_create", SYS_memfd_create,
                            {scratch_address + offsetof(Scratch, region_name), MFD_CLOEXEC});
      if (!region) return std::unexpected(region.error());
      block.region_fd = injection.raise_fd(static_cast<int>(*region));
      injection.own_fd(block.region_fd);
      auto mine_region = injection.open_fd(block.region_fd, O_RDWR);
      if (!mine_region) return std::unexpected(mine_region.error());
      region_fd = *mine_region;
    } else {
      auto given = injection.give_fd(given_region, scratch_address + offsetof(Scratch, passing),
                                     "the session's region");
      if (!given) return std::unexpected(given.error());
      block.region_fd = static_cast<int32_t>(*given);
    }

    // The prepared files: a descriptor in the target, which the agent finds by its memfd's name
    // and closes. Without it the agent reads and decodes the files itself.
    // (A failure here only costs the target that time.)
    if (options.prepared_fd >= 0)
      (void)injection.give_fd(options.prepared_fd, scratch_address + offsetof(Scratch, passing),
                              "the prepared files");

    if (auto p = injection.syscall("pipe2", SYS_pipe2,
                                   {scratch_address + offsetof(Scratch, pipe_fds), O_CLOEXEC});
        !p)
      return std::unexpected(p.error());
    int32_t fds[2];
    if (auto r = read_memory(point.pid, scratch_address + offsetof(Scratch, pipe_fds),
                             {reinterpret_cast<uint8_t *>(fds), sizeof fds});
        !r)
      return std::unexpected(r.error());
    fds[0] = injection.raise_fd(fds[0]);
    injection.own_fd(fds[0]);
    block.control_fd = fds[0];
    // The write end: the CLI's own open of it, then the target's closed, so only the CLI holds one.
    auto mine_control = injection.open_fd(fds[1], O_WRONLY);
    if (!mine_control) {
      (void)injection.syscall("close", SYS_close, {uint64_t(fds[1])});
      return std::unexpected(mine_control.error());
    }
    control_fd = *mine_control;
    if (auto c = injection.syscall("close", SYS_close, {uint64_t(fds[1])}); !c)
      return std::unexpected(c.error());

    if (fill_region)
      if (auto f = (*fill_region)(region_fd); !f) return std::unexpected(f.error());

    if (auto w = write_memory(point.pid, code, {kBootstrapCode, kBootstrapCodeSize}); !w)
      return std::unexpected(w.error());
    if (auto p =
            injection.syscall("mprotect", SYS_mprotect, {code, code_size, PROT_READ | PROT_EXEC});
        !p)
      return std::unexpected(p.error());
    block.dlopen = point.dlopen;
    block.dlsym = point.dlsym;
    block.dlerror = point.dlerror;
    block.attach = loaded ? point.agent_attach : 0;
    block.prepare = loaded ? point.agent_prepare : 0;
    block.close = point.close;
    block.nanosleep = point.nanosleep;
    block.munmap = point.munmap;
    block.pthread_self = point.pthread_self;
    block.pthread_detach = point.pthread_detach;
    block.mapping = code;
    block.mapping_size = mapping_size;
    block.poll_sec = 0;
    block.poll_ns = 1000000;  // 1 ms, for at most 30 s
    block.max_polls = 30000;
    std::snprintf(block.symbol, sizeof block.symbol, "%s", agent::kAttachSymbol);
    std::snprintf(block.prepare_symbol, sizeof block.prepare_symbol, "%s", agent::kPrepareSymbol);
    if (auto w = write_memory(point.pid, block_address,
                              {reinterpret_cast<const uint8_t *>(&block), sizeof block});
        !w)
      return std::unexpected(w.error());

    auto created =
        thread.call(point.pthread_create,
                    {block_address + offsetof(AttachBlock, thread), 0, code, block_address, 0, 0},
                    options.call_timeout);
    if (!created) {
      if (created.error().code == ETIMEDOUT)
        return fail(ETIMEDOUT, fmt::format("{}: pthread_create did not return within {} ms (the "
                                           "thread usprobe stopped may hold a lock it needs); "
                                           "nothing was changed, try again",
                                           who, options.call_timeout.count()));
      return std::unexpected(created.error());
    }
    if (static_cast<int>(*created) != 0)
      return fail(static_cast<int>(*created),
                  fmt::format("{}: pthread_create in the target: {}", who,
                              std::strerror(static_cast<int>(*created))));
    injection.commit();
    return {};
  }();
  // The thread as it was (the undoing above ran in it first), and let go.
  auto restored = thread.restore();
  auto released = thread.release();
  double stop_ms = thread.stopped_ms();
  if (!held) {
    close_mine();
    return std::unexpected(held.error());
  }
  if (!restored || !released) {
    close_mine();
    return std::unexpected(!restored ? restored.error() : released.error());
  }

  // The agent's bytes, the thread running again; then the bootstrap may load them.
  std::optional<Error> write_error;
  if (agent_writer >= 0) {
    for (size_t done = 0; done < agent_bytes.size();) {
      ssize_t w = ::write(agent_writer, agent_bytes.data() + done, agent_bytes.size() - done);
      if (w <= 0) {
        int e = w < 0 ? errno : EIO;
        write_error = Error{
            e, fmt::format("{}: writing the agent into its memfd: {}", who, std::strerror(e))};
        break;
      }
      done += static_cast<size_t>(w);
    }
    ::close(std::exchange(agent_writer, -1));
    const uint32_t written = write_error ? 2 : 1;
    (void)write_memory(point.pid, block_address + offsetof(AttachBlock, agent_written),
                       {reinterpret_cast<const uint8_t *>(&written), sizeof written});
  }

  // The bootstrap's answer. Its block stays mapped until `ack` says the CLI has read it.
  auto deadline = Clock::now() + options.answer_timeout;
  auto interval = std::chrono::microseconds(50);
  AttachBlock answer{};
  const uint32_t ack = 1;
  auto send_ack = [&] {
    (void)write_memory(point.pid, block_address + offsetof(AttachBlock, ack),
                       {reinterpret_cast<const uint8_t *>(&ack), sizeof ack});
  };
  const uint32_t go = 1;
  bool prepared = false;
  for (;;) {
    uint32_t done = 0;
    auto r = read_memory(point.pid, block_address + offsetof(AttachBlock, done),
                         {reinterpret_cast<uint8_t *>(&done), sizeof done});
    // The agent is loaded and waits for `go` (attach_block.h): its round's signal to the caller.
    uint32_t ready = 0;
    if (r && !prepared && done != 1 &&
        read_memory(point.pid, block_address + offsetof(AttachBlock, prepared),
                    {reinterpret_cast<uint8_t *>(&ready), sizeof ready}) &&
        ready == 1) {
      prepared = true;
      int32_t round_signal = 0;
      (void)read_memory(point.pid, block_address + offsetof(AttachBlock, round_signal),
                        {reinterpret_cast<uint8_t *>(&round_signal), sizeof round_signal});
      // Untrusted: a real-time signal or nothing.
      if (round_signal < SIGRTMIN || round_signal > SIGRTMAX) round_signal = 0;
      if (options.on_prepared) options.on_prepared(round_signal);
      (void)write_memory(point.pid, block_address + offsetof(AttachBlock, go),
                         {reinterpret_cast<const uint8_t *>(&go), sizeof go});
      continue;
    }
    if (!r) {
      close_mine();
      if (::kill(point.pid, 0) != 0 || !read_status(point.pid) ||
          read_status(point.pid)->state == 'Z')
        return fail(ESRCH, fmt::format("pid {} exited during the attach", point.pid));
      return fail(r.error().code,
                  fmt::format("{}: the agent's answer cannot be read: {}", who, r.error().message));
    }
    if (done == 1) {
      auto whole = read_memory(point.pid, block_address,
                               {reinterpret_cast<uint8_t *>(&answer), sizeof answer});
      send_ack();
      if (!whole) {
        close_mine();
        return std::unexpected(whole.error());
      }
      break;
    }
    if (Clock::now() >= deadline) {
      send_ack();
      close_mine();
      return fail(ETIMEDOUT, fmt::format("{}: the agent did not answer within {} ms", who,
                                         options.answer_timeout.count()));
    }
    std::this_thread::sleep_for(interval);
    interval = std::min(interval * 2, std::chrono::microseconds(1000));
  }

  std::string message = untrusted_text(answer.message, sizeof answer.message);
  if (write_error && answer.stage == USPROBE_STAGE_DLOPEN) {
    close_mine();
    return std::unexpected(*write_error);
  }
  if (answer.stage == USPROBE_STAGE_DLOPEN || answer.stage == USPROBE_STAGE_DLSYM) {
    close_mine();
    return fail(ENOEXEC, fmt::format("{}: the agent could not be loaded: {}", who,
                                     message.empty() ? "dlopen failed" : message));
  }
  if (answer.stage != USPROBE_STAGE_ATTACH) {
    close_mine();
    return fail(EPROTO,
                fmt::format("{}: the bootstrap answered nonsense (stage {})", who, answer.stage));
  }
  if (answer.result != 0) {
    close_mine();
    int code = answer.result < 0 && answer.result > -4096 ? -answer.result : EPROTO;
    return fail(code, message.empty()
                          ? fmt::format("{}: the agent refused: {}", who, std::strerror(code))
                          : message);
  }
  Injected out;
  out.region_fd = region_fd;
  out.control_fd = control_fd;
  out.attach_ms = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
  out.longest_stop_ms = stop_ms;
  return out;
}

}  // namespace

Result<Injected> inject_agent(const AttachPoint &point, const std::string &agent_path,
                              const std::function<Result<void>(int region_fd)> &fill_region,
                              const InjectOptions &options) {
  return inject(point, agent_path, &fill_region, -1, options);
}

Result<Injected> inject_agent(const AttachPoint &point, const std::string &agent_path,
                              int region_fd, const InjectOptions &options) {
  if (region_fd < 0)
    return fail(EBADF,
                fmt::format("pid {}: no region to hand it (descriptor {})", point.pid, region_fd));
  return inject(point, agent_path, nullptr, region_fd, options);
}

}  // namespace usprobe::cli
