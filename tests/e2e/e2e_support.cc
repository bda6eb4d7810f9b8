#include "e2e_support.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "elf/elf_file.h"

namespace e2e {

const char *cli() {
  return USPROBE_CLI;
}
const char *target() {
  return E2E_TARGET;
}
const char *other() {
  return E2E_OTHER;
}
const char *static_target() {
  return E2E_STATIC;
}
const char *workload_sql() {
  return E2E_WORKLOAD_SQL;
}

bool Output::exited() const {
  return !timed_out && WIFEXITED(wait_status);
}

int Output::exit_code() const {
  return exited() ? WEXITSTATUS(wait_status) : -1;
}

std::string Output::describe() const {
  std::string how;
  if (timed_out)
    how = "timed out and was killed";
  else if (WIFEXITED(wait_status))
    how = "exit status " + std::to_string(WEXITSTATUS(wait_status));
  else if (WIFSIGNALED(wait_status))
    how = "killed by signal " + std::to_string(WTERMSIG(wait_status)) + " (" +
          strsignal(WTERMSIG(wait_status)) + ")";
  else
    how = "wait status " + std::to_string(wait_status);
  return how + "\n--- stderr ---\n" + err + "--- stdout ---\n" + out;
}

Process::Process(const std::vector<std::string> &argv) {
  std::vector<char *> args;
  for (const std::string &a : argv) args.push_back(const_cast<char *>(a.c_str()));
  args.push_back(nullptr);
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    result_.err = std::string("pipe2: ") + std::strerror(errno);
    return;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  start_ = std::chrono::steady_clock::now();
  pid_ = fork();
  if (pid_ == 0) {
    // The child: only async-signal-safe calls until exec.
    setpgid(0, 0);
    int in = open("/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0) _exit(126);
    // A shell that starts the test binary in the background leaves SIGINT ignored, and an ignored
    // signal stays ignored across exec: the SIGINT test needs the default action back.
    for (int sig = 1; sig < NSIG; ++sig)
      if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(args[0], args.data());
    const char *msg = "e2e: execv failed\n";
    (void)!write(2, msg, std::strlen(msg));
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  out_fd_ = out[0];
  err_fd_ = err[0];
  if (pid_ < 0) {
    result_.err = std::string("fork: ") + std::strerror(errno);
    close(out_fd_);
    close(err_fd_);
    out_fd_ = err_fd_ = -1;
    return;
  }
  setpgid(pid_, pid_);  // also here: no race with the kill of the group
}

Process::~Process() {
  if (pid_ > 0 && !reaped_) {
    kill(-pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) close(out_fd_);
  if (err_fd_ >= 0) close(err_fd_);
}

bool Process::pump(int timeout_ms) {
  pollfd fds[2];
  int n = 0;
  if (out_fd_ >= 0) fds[n++] = {out_fd_, POLLIN, 0};
  if (err_fd_ >= 0) fds[n++] = {err_fd_, POLLIN, 0};
  if (n == 0) return false;
  if (poll(fds, n, timeout_ms) <= 0) return true;
  for (int i = 0; i < n; ++i) {
    if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    char buf[65536];
    ssize_t got = read(fds[i].fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    bool is_out = fds[i].fd == out_fd_;
    if (got <= 0) {
      close(fds[i].fd);
      (is_out ? out_fd_ : err_fd_) = -1;
      continue;
    }
    (is_out ? result_.out : result_.err).append(buf, static_cast<size_t>(got));
  }
  return out_fd_ >= 0 || err_fd_ >= 0;
}

bool Process::wait_for_stdout(std::string_view needle, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (result_.out.find(needle) == std::string::npos) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    if (!pump(20) && result_.out.find(needle) == std::string::npos) return false;
  }
  return true;
}

bool Process::wait_for_stderr(std::string_view needle, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (result_.err.find(needle) == std::string::npos) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    if (!pump(20) && result_.err.find(needle) == std::string::npos) return false;
  }
  return true;
}

Output Process::finish(std::chrono::milliseconds limit) {
  if (pid_ <= 0 || reaped_) return result_;
  const auto deadline = start_ + limit;
  // Wait for the exit without reaping (WNOWAIT): while the program is a zombie its pid, and so
  // its process group's id, cannot be reused, and killing the group stays safe.
  for (;;) {
    pump(10);
    siginfo_t info{};
    if (waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        info.si_pid == pid_) {
      result_.seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(-pid_, SIGKILL);
      result_.timed_out = true;
      result_.seconds = std::chrono::duration<double>(limit).count();
      break;
    }
  }
  // What is still in the pipes. A grandchild that outlived the program may hold them open: give it
  // a moment, not forever; then end whatever is left of the group, and reap.
  const auto drain_until = std::chrono::steady_clock::now() + 500ms;
  while (std::chrono::steady_clock::now() < drain_until && pump(20)) {
  }
  kill(-pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  reaped_ = true;
  result_.wait_status = status;
  return result_;
}

Output run(const std::vector<std::string> &argv, std::chrono::milliseconds limit) {
  Process p(argv);
  return p.finish(limit);
}

TempDir::TempDir() {
  const char *base = std::getenv("TMPDIR");
  std::string templ = std::string(base && *base ? base : "/tmp") + "/usprobe-e2e-XXXXXX";
  if (mkdtemp(templ.data())) path_ = templ;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

bool file_exists(const std::string &path) {
  return access(path.c_str(), F_OK) == 0;
}

std::string read_file(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> lines(std::string_view text) {
  std::vector<std::string> all;
  while (!text.empty()) {
    size_t end = text.find('\n');
    all.emplace_back(text.substr(0, end));
    if (end == std::string_view::npos) break;
    text.remove_prefix(end + 1);
  }
  return all;
}

std::vector<std::string> words(std::string_view line) {
  std::vector<std::string> all;
  std::istringstream in{std::string(line)};
  for (std::string w; in >> w;) all.push_back(w);
  return all;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.starts_with(prefix);
}

void expect_refused(const Output &r, const std::string &mentions, const std::string &ran_marker) {
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  std::vector<std::string> err = lines(r.err);
  ASSERT_EQ(err.size(), 1u) << r.describe();
  EXPECT_NE(err[0].find(mentions), std::string::npos) << err[0];
  EXPECT_EQ(r.out.find(ran_marker), std::string::npos) << "the command ran\n" << r.describe();
}

std::string realpath_of(const std::string &path) {
  char *resolved = ::realpath(path.c_str(), nullptr);
  if (!resolved) return "";
  std::string result(resolved);
  std::free(resolved);
  return result;
}

std::vector<Json> json_lines(std::string_view text) {
  std::vector<Json> all;
  for (const std::string &line : lines(text)) {
    if (!starts_with(line, "{")) continue;
    Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    all.push_back(j.is_discarded() ? Json("unparsable: " + line) : j);
  }
  return all;
}

std::vector<Json> reports(std::string_view text) {
  std::vector<Json> all;
  for (Json &j : json_lines(text))
    if (j.is_object() && j.contains("type") && j.contains("probes")) all.push_back(std::move(j));
  return all;
}

std::optional<Json> probe_in(const Json &report, std::string_view name) {
  if (!report.is_object() || !report.contains("probes") || !report["probes"].is_array())
    return std::nullopt;
  for (const Json &p : report["probes"])
    if (p.is_object() && p.value("probe", "") == name) return p;
  return std::nullopt;
}

std::vector<Json> reports_of(const Output &r) {
  std::vector<Json> all = reports(r.out);
  for (Json &j : reports(r.err)) all.push_back(std::move(j));
  return all;
}

Json only_total(const Output &r) {
  std::vector<Json> all = reports_of(r);
  EXPECT_EQ(all.size(), 1u) << r.describe();
  if (all.empty()) return Json::object();
  EXPECT_EQ(all.back().value("type", ""), "total") << all.back().dump();
  return all.back();
}

uint64_t hits_of(const Json &report, std::string_view name) {
  auto p = probe_in(report, name);
  EXPECT_TRUE(p.has_value()) << "no probe " << name << " in " << report.dump();
  return p ? p->value("hits", uint64_t{~0ull}) : ~0ull;
}

std::optional<FunctionInfo> function_in(const std::string &path, const std::string &name) {
  auto file = usprobe::elf::ElfFile::open(path);
  if (!file) return std::nullopt;
  auto fn = (*file)->find_function(name);
  if (!fn) return std::nullopt;
  return FunctionInfo{fn->file_offset, fn->size};
}

}  // namespace e2e
