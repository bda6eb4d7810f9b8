// What the tests of `usprobe ... -p PID` share (attach_test.cc, attach_errors_test.cc): the target
// (attach_target.c) with its control FIFOs, its code bytes read from outside, and waiting for the
// probe to be in place or gone again.
//
//   e2e::TempDir dir;
//   e2e::AttachTarget target(dir);
//   e2e::Process usprobe({e2e::cli(), "count", "-p", std::to_string(target.pid()),
//   "exe:attach_driven"}); ASSERT_TRUE(e2e::wait_patched(target.pid(), target.driven(), usprobe,
//   20s)); target.send("call 100");
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "e2e_support.h"
#include "support/text_match.h"

namespace e2e {

// attach_driven's address and its first 16 bytes before anything was probed (hex), as the target
// read them itself.
struct Driven {
  uint64_t address = 0;
  std::string bytes;
};

// The target, with its two FIFOs: the control lines it reads, and the pipe its reader thread
// blocks on. The FIFOs' write ends are held here; closing the read FIFO's at quit ends that thread.
// `prefix` runs before the program and must exec it in the same process (env VAR=1, unshare -m, a
// shell's exec): the target's pid is the one started here.
class AttachTarget {
 public:
  explicit AttachTarget(const TempDir &dir, const std::string &program = ATTACH_TARGET,
                        const std::vector<std::string> &prefix = {})
      : control_path_(dir.file("control")), read_path_(dir.file("read")) {
    ::mkfifo(control_path_.c_str(), 0600);
    ::mkfifo(read_path_.c_str(), 0600);
    std::vector<std::string> argv = prefix;
    argv.insert(argv.end(), {program, control_path_, read_path_});
    process_ = std::make_unique<Process>(argv);
    // Opening a FIFO for writing waits for its reader: the target opens both at its start (a
    // prefix that fails before the exec leaves it waiting; the open is then given up on).
    read_ = open_writer(read_path_);
    if (read_ < 0 || !process_->wait_for_stdout("\n", 10s)) return;
    usprobe::test::smatch m;
    const std::string &out = process_->out_so_far();
    if (usprobe::test::regex_search(
            out, m,
            usprobe::test::regex(
                R"(ready pid=([0-9]+) driven=0x([0-9a-f]+) bytes=([0-9a-f]{32}))")) &&
        std::stol(m[1]) == process_->pid()) {
      driven_.address = std::stoull(m[2], nullptr, 16);
      driven_.bytes = m[3];
    }
    control_ = open_writer(control_path_);
  }
  ~AttachTarget() {
    if (control_ >= 0) ::close(control_);
    if (read_ >= 0) ::close(read_);
  }

  bool ready() const { return driven_.address != 0 && control_ >= 0 && read_ >= 0; }
  pid_t pid() const { return process_->pid(); }
  const Driven &driven() const { return driven_; }
  Process &process() { return *process_; }

  void send(const std::string &line) {
    std::string text = line + "\n";
    ASSERT_EQ(::write(control_, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  }
  void poke() { ASSERT_EQ(::write(read_, "x", 1), 1); }
  // Has the target call attach_driven n times and waits (bounded) for its "called n"; n differs
  // from the earlier calls' (their lines are still there).
  bool call(int n) {
    std::string line = "call " + std::to_string(n);
    send(line);
    return process_->wait_for_stdout("called " + std::to_string(n) + "\n", 10s);
  }
  // Stops the target: its last line says whether any of its threads saw EINTR or slept short.
  Output quit() {
    send("quit");
    ::close(read_);
    read_ = -1;
    return process_->finish(30s);
  }

 private:
  // O_NONBLOCK opens of a FIFO for writing fail (ENXIO) until it has a reader: retried, bounded,
  // so that a target that never starts fails the test instead of hanging it.
  int open_writer(const std::string &path) {
    for (int i = 0; i < 1000; ++i) {
      int fd = ::open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) {
        ::fcntl(fd, F_SETFL, 0);
        return fd;
      }
      if (::kill(process_->pid(), 0) != 0) break;
      std::this_thread::sleep_for(10ms);
    }
    return -1;
  }

  std::string control_path_, read_path_;
  std::unique_ptr<Process> process_;
  int control_ = -1, read_ = -1;
  Driven driven_;
};

// 16 code bytes of `pid` at `address`, as hex, read through /proc/PID/mem ("" when unreadable).
inline std::string code_bytes(pid_t pid, uint64_t address) {
  int fd = ::open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  unsigned char buf[16];
  ssize_t n = ::pread(fd, buf, sizeof buf, static_cast<off_t>(address));
  ::close(fd);
  if (n != sizeof buf) return "";
  std::string hex;
  char two[3];
  for (unsigned char b : buf) {
    std::snprintf(two, sizeof two, "%02x", b);
    hex += two;
  }
  return hex;
}

// Whether `p` has exited (left for finish() to reap: WNOWAIT).
inline bool exited(Process &p) {
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(p.pid()), &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
         info.si_pid != 0;
}

// Waits until the code at the driven function differs from the original (the probe is in place),
// while the CLI still runs.
inline bool wait_patched(pid_t pid, const Driven &d, Process &cli,
                         std::chrono::milliseconds limit) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    std::string now = code_bytes(pid, d.address);
    if (!now.empty() && now != d.bytes) return true;
    if (exited(cli)) return false;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

// Waits until the code at the driven function is the original again (the probe is gone).
inline bool wait_restored(pid_t pid, const Driven &d, std::chrono::milliseconds limit) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (code_bytes(pid, d.address) == d.bytes) return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

// Ends a session as Ctrl-C would (SIGINT to the CLI alone) and collects its output.
inline Output end_session(Process &cli) {
  ::kill(cli.pid(), SIGINT);
  return cli.finish(30s);
}

}  // namespace e2e
