// `usprobe COMMAND -p PID`: attaching to a process that runs already (attach_target.c), counting
// exactly what it does from the moment the probe is in place, and leaving it as it was found: the
// original code bytes back, in it and in the child it forked during the session, no system call
// of any of its threads interrupted, and a second session working as the first did.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <regex>
#include <string>
#include <thread>

#include "attach_support.h"
#include "e2e_support.h"

namespace {

using namespace e2e;

// The pid of the child the target forked, from its "child PID called N" line.
pid_t child_pid(const std::string &out) {
  std::smatch m;
  if (!std::regex_search(out, m, std::regex(R"(child ([0-9]+) called)"))) return -1;
  return static_cast<pid_t>(std::stol(m[1].str()));
}

TEST(Attach, CountsExactlyAndLeavesTheProcessAndItsChildAsTheyWere) {
  TempDir dir;
  AttachTarget target(dir);
  ASSERT_TRUE(target.ready()) << target.process().finish(1s).describe();
  const Driven &d = target.driven();
  pid_t child = -1;
  // Two sessions, one after the other, on the same process: the second finds the process as the
  // first left it.
  for (int session = 1; session <= 2; ++session) {
    SCOPED_TRACE("session " + std::to_string(session));
    const int calls = session == 1 ? 1000 : 600;
    Process usprobe({cli(), "count", "--json", "-p", std::to_string(target.pid()),
                     "exe:attach_driven", "exe:attach_spin"});
    ASSERT_TRUE(wait_patched(target.pid(), d, usprobe, 20s)) << end_session(usprobe).describe();
    target.poke();  // the reader thread's read() returns once, mid-session
    target.send("call " + std::to_string(calls));
    ASSERT_TRUE(target.process().wait_for_stdout("called " + std::to_string(calls), 10s));
    if (session == 1) {
      target.send("fork 250");
      ASSERT_TRUE(target.process().wait_for_stdout("called 250", 10s));
      child = child_pid(target.process().out_so_far());
      ASSERT_GT(child, 0);
      EXPECT_NE(code_bytes(child, d.address), d.bytes) << "the child carries the probe";
    }
    Output r = end_session(usprobe);
    ASSERT_EQ(r.exit_code(), 0) << r.describe();
    Json total = only_total(r);
    EXPECT_EQ(hits_of(total, "exe:attach_driven"), session == 1 ? 1250u : 600u) << r.out;
    EXPECT_GT(hits_of(total, "exe:attach_spin"), 0u) << r.out;
    // Every process that carried the probes has its original code again, and still runs.
    EXPECT_EQ(code_bytes(target.pid(), d.address), d.bytes);
    if (session == 1) {
      EXPECT_EQ(code_bytes(child, d.address), d.bytes) << "the child forked during the session";
      EXPECT_EQ(::kill(child, 0), 0);
    }
  }
  if (child > 0) ::kill(child, SIGKILL);
  Output last = target.quit();
  ASSERT_EQ(last.exit_code(), 0) << last.describe();
  EXPECT_NE(last.out.find("eintr=0 short=0 reads=2 spins>0=1"), std::string::npos) << last.out;
}

}  // namespace
