// Sessions on a running process (protocol/attach.h), agent side, without ptrace: the test plays the
// CLI (its Region, filled into a memfd it hands over, and the control pipe's write end) and the
// target (agent_session_target.c) plays the injector, loading the agent with its own dlopen() and
// calling usprobe_agent_attach from a new thread while its other threads sleep, wait in read() and
// call a probed function without pause. Checked: exact counts, a child forked during the session
// counted under its own pid and unpatched at the end like its parent (the code bytes in memory are
// the file's again), a second session on the same process counting exactly into a region of its
// own, and a second attach while a session is active refused.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "e2e_support.h"
#include "protocol/attach.h"
#include "session/region.h"

namespace {

using namespace std::chrono_literals;
using usprobe::cli::ProcessEntry;
using usprobe::cli::Region;
using usprobe::cli::RegionConfig;

// Generous: these are limits for a broken agent, never what decides a pass.
constexpr auto kLimit = 30s;

// A pipe whose two ends the test holds (close-on-exec, so that the target inherits only what it is
// given).
struct Pipe {
  int read = -1, write = -1;
  Pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) == 0) read = fds[0], write = fds[1];
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  void close_read() {
    if (read >= 0) ::close(read);
    read = -1;
  }
  void close_write() {
    if (write >= 0) ::close(write);
    write = -1;
  }
};

// A region as usprobe -p makes one: the CLI's Region filled into a memfd that "the target"
// created (here the test, which gives it to the target).
Region make_region() {
  int fd = ::memfd_create(usprobe::agent::kRegionMemfdName, MFD_CLOEXEC);
  EXPECT_GE(fd, 0);
  std::string target = AGENT_SESSION_TARGET;
  auto region =
      Region::create(RegionConfig{}, {{target + ":session_work"}, {target + ":session_spin"}}, fd);
  if (!region) {
    ADD_FAILURE() << region.error().message;
    std::abort();
  }
  return std::move(*region);
}

std::string proc_fd(int fd) {
  return fmt::format("/proc/{}/fd/{}", ::getpid(), fd);
}

// The running target: commands on its stdin, one answer line each on its stdout. Killed with its
// process group (its forked child too) at the end.
class Target {
 public:
  // `agent`: the agent the target loads; `preload`: one preloaded as well (no USPROBE_AGENT_FD:
  // dormant), or null.
  Target(int region_fd, int control_fd, const char *agent = AGENT_PATH,
         const char *preload = nullptr) {
    Pipe in, out;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::setpgid(0, 0);
      ::dup2(in.read, 0);
      ::dup2(out.write, 1);
      // dup2 clears close-on-exec: these two are inherited (first out of the way of 10 and 11).
      int region = ::fcntl(region_fd, F_DUPFD, 100), control = ::fcntl(control_fd, F_DUPFD, 100);
      ::dup2(region, 10);
      ::dup2(control, 11);
      if (preload) ::setenv("LD_PRELOAD", preload, 1);
      ::execl(AGENT_SESSION_TARGET, AGENT_SESSION_TARGET, agent, "10", "11", nullptr);
      ::_exit(127);
    }
    ::setpgid(pid_, pid_);
    in_ = ::fcntl(in.write, F_DUPFD_CLOEXEC, 3);
    out_ = ::fcntl(out.read, F_DUPFD_CLOEXEC, 3);
  }
  ~Target() {
    if (pid_ > 0) {
      ::kill(-pid_, SIGKILL);
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    ::close(in_);
    ::close(out_);
  }

  // The next line the target prints ("" when it printed none within the limit).
  std::string line() {
    auto deadline = std::chrono::steady_clock::now() + kLimit;
    for (;;) {
      if (size_t eol = buffer_.find('\n'); eol != std::string::npos) {
        std::string l = buffer_.substr(0, eol);
        buffer_.erase(0, eol + 1);
        return l;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{out_, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return "";
      char chunk[4096];
      ssize_t n = ::read(out_, chunk, sizeof chunk);
      if (n <= 0) return "";
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }
  std::string command(const std::string &text) {
    std::string l = text + "\n";
    EXPECT_EQ(::write(in_, l.data(), l.size()), static_cast<ssize_t>(l.size()));
    return line();
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string buffer_;
};

// `size` bytes of process `pid`'s memory at `address`.
std::string memory_of(pid_t pid, uint64_t address, size_t size) {
  std::string bytes(size, '\0');
  int fd = ::open(fmt::format("/proc/{}/mem", pid).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  ssize_t n = ::pread(fd, bytes.data(), size, static_cast<off_t>(address));
  ::close(fd);
  return n == static_cast<ssize_t>(size) ? bytes : "";
}

// A probed function: where the target has it, and its bytes in the file.
struct Function {
  uint64_t address = 0;
  std::string file_bytes;
};

Function function(const std::string &name, uint64_t address) {
  auto info = e2e::function_in(AGENT_SESSION_TARGET, name);
  EXPECT_TRUE(info) << name;
  if (!info) return {};
  std::string file = e2e::read_file(AGENT_SESSION_TARGET);
  EXPECT_LE(info->offset + info->size, file.size());
  return {address, file.substr(info->offset, info->size)};
}

// Whether process `pid` runs the file's own code at f (no probe patched in).
bool unpatched(pid_t pid, const Function &f) {
  return memory_of(pid, f.address, f.file_bytes.size()) == f.file_bytes;
}

bool alive(pid_t pid) {
  return ::kill(pid, 0) == 0;
}

// Waits until the record of every live process says detached; returns the records.
std::vector<ProcessEntry> wait_detached(const Region &region) {
  auto deadline = std::chrono::steady_clock::now() + kLimit;
  for (;;) {
    std::vector<ProcessEntry> records = region.processes();
    bool done = true;
    for (const ProcessEntry &p : records)
      if (p.state != usprobe::agent::kProcessDetached && alive(p.pid)) done = false;
    if (done || std::chrono::steady_clock::now() > deadline) return records;
    std::this_thread::sleep_for(5ms);
  }
}

uint64_t hits(const Region &region, pid_t pid, uint32_t probe) {
  auto counts = region.counts();
  auto it = counts.find({pid, probe});
  return it == counts.end() ? 0 : it->second.hits;
}

// Waits until probe `probe` has hits of process `pid`: a thread that runs on its own (the spinner)
// may not have been scheduled yet on a busy machine.
uint64_t wait_hits(const Region &region, pid_t pid, uint32_t probe) {
  auto deadline = std::chrono::steady_clock::now() + kLimit;
  uint64_t n = 0;
  while ((n = hits(region, pid, probe)) == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  return n;
}

TEST(AgentSession, AttachCountForkDetachAndAgain) {
  Region first = make_region();
  Pipe control;
  Target target(first.fd(), control.read);
  control.close_read();  // the target holds the only read end, the test the only write end

  std::string ready = target.line();
  unsigned long work_address = 0, spin_address = 0;
  int pid = 0;
  ASSERT_EQ(std::sscanf(ready.c_str(), "ready %d %lx %lx", &pid, &work_address, &spin_address), 3)
      << ready;
  ASSERT_EQ(pid, target.pid());
  Function work = function("session_work", work_address);
  Function spin = function("session_spin", spin_address);
  ASSERT_TRUE(unpatched(pid, work) && unpatched(pid, spin)) << "the file is not what runs";

  // The first session: the agent dlopened, attached on the running process.
  ASSERT_EQ(target.command("attach 10 11"), "attach 0 0 ");
  EXPECT_FALSE(unpatched(pid, work));
  EXPECT_FALSE(unpatched(pid, spin));
  EXPECT_EQ(first.processes(),
            (std::vector<ProcessEntry>{{pid, usprobe::agent::kProcessAttached}}));
  ASSERT_EQ(target.command("calls 1000"), "calls 1000");
  EXPECT_EQ(hits(first, pid, 0), 1000u);
  EXPECT_GT(wait_hits(first, pid, 1), 0u);  // the spinning thread, patched under its feet

  // A second session while this one is active: refused, its descriptors closed, and this one goes
  // on counting.
  {
    Region other = make_region();
    Pipe other_control;
    EXPECT_EQ(target.command(
                  fmt::format("attach {} {}", proc_fd(other.fd()), proc_fd(other_control.read))),
              fmt::format("attach {} 1 pid {} is probed by another usprobe session", -EBUSY, pid));
    EXPECT_TRUE(other.processes().empty());
  }
  ASSERT_EQ(target.command("calls 500"), "calls 500");
  EXPECT_EQ(hits(first, pid, 0), 1500u);

  // A child forked during the session keeps the probes and counts under its own pid.
  std::string forked = target.command("fork 300");
  int child = 0;
  ASSERT_EQ(std::sscanf(forked.c_str(), "fork %d", &child), 1) << forked;
  EXPECT_EQ(hits(first, child, 0), 300u);
  EXPECT_EQ(hits(first, pid, 0), 1500u);
  EXPECT_FALSE(unpatched(child, work));
  {
    auto records = first.processes();
    EXPECT_EQ(records.size(), 2u);
    for (const ProcessEntry &p : records) {
      EXPECT_TRUE(p.pid == pid || p.pid == child) << p.pid;
      EXPECT_EQ(p.state, usprobe::agent::kProcessAttached) << p.pid;
    }
  }

  // The end: the CLI's write end closes. Both processes detach and run the file's code again.
  control.close_write();
  auto records = wait_detached(first);
  ASSERT_EQ(records.size(), 2u);
  for (const ProcessEntry &p : records)
    EXPECT_EQ(p.state, usprobe::agent::kProcessDetached) << "pid " << p.pid;
  EXPECT_TRUE(unpatched(pid, work));
  EXPECT_TRUE(unpatched(pid, spin));
  EXPECT_TRUE(unpatched(child, work));
  EXPECT_TRUE(unpatched(child, spin));
  EXPECT_TRUE(alive(pid) && alive(child));
  EXPECT_EQ(hits(first, pid, 0), 1500u);
  EXPECT_EQ(hits(first, child, 0), 300u);
  // No longer counted.
  ASSERT_EQ(target.command("calls 200"), "calls 200");
  EXPECT_EQ(hits(first, pid, 0), 1500u);

  // A second session on the same process: the agent is still loaded (no second dlopen), the
  // region and the pipe new (opened through /proc, as usprobe -p hands them over).
  Region second = make_region();
  Pipe second_control;
  ASSERT_EQ(target.command(
                fmt::format("attach {} {}", proc_fd(second.fd()), proc_fd(second_control.read))),
            "attach 0 0 ");
  second_control.close_read();
  EXPECT_FALSE(unpatched(pid, work));
  EXPECT_TRUE(unpatched(child, work));  // not part of this session
  ASSERT_EQ(target.command("calls 700"), "calls 700");
  EXPECT_EQ(hits(second, pid, 0), 700u);
  EXPECT_GT(wait_hits(second, pid, 1), 0u);
  EXPECT_EQ(hits(first, pid, 0), 1500u);
  EXPECT_EQ(second.processes(),
            (std::vector<ProcessEntry>{{pid, usprobe::agent::kProcessAttached}}));

  second_control.close_write();
  EXPECT_EQ(wait_detached(second),
            (std::vector<ProcessEntry>{{pid, usprobe::agent::kProcessDetached}}));
  EXPECT_TRUE(unpatched(pid, work));
  EXPECT_TRUE(unpatched(pid, spin));
  EXPECT_EQ(hits(second, pid, 0), 700u);
  EXPECT_EQ(first.corrupt(), 0u);
  EXPECT_EQ(second.corrupt(), 0u);
}

// A process that carries another copy of the agent (preloaded by a usprobe that launched it) is
// refused: two engines would patch the same code.
TEST(AgentSession, AProcessWithAnotherCopyOfTheAgentIsRefused) {
  e2e::TempDir dir;
  std::string copy = dir.file("libusprobe-agent-copy.so");
  {
    std::string bytes = e2e::read_file(AGENT_PATH);
    ASSERT_FALSE(bytes.empty());
    FILE *f = std::fopen(copy.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
    std::fclose(f);
  }
  Region region = make_region();
  Pipe control;
  Target target(region.fd(), control.read, copy.c_str(), AGENT_PATH);
  control.close_read();
  std::string ready = target.line();
  unsigned long work_address = 0, spin_address = 0;
  int pid = 0;
  ASSERT_EQ(std::sscanf(ready.c_str(), "ready %d %lx %lx", &pid, &work_address, &spin_address), 3)
      << ready;
  Function work = function("session_work", work_address);
  EXPECT_EQ(target.command("attach 10 11"),
            fmt::format("attach {} 1 pid {} is probed by another usprobe session (it was started "
                        "by usprobe, whose agent it carries)",
                        -EBUSY, pid));
  EXPECT_TRUE(unpatched(pid, work));
  EXPECT_TRUE(region.processes().empty());
}

}  // namespace
