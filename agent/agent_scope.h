// Marks the agent's own code on a thread (its constructor, fork handlers and exit handler), so that
// the handlers do not count the probed functions the agent itself calls: with libc:malloc probed,
// the agent's own allocations are not the command's.
#pragma once

#include "core/thread_record.h"

namespace usprobe::agent {

// True while agent code runs on this thread; the handlers test it first. Initial-exec TLS: one
// %fs-relative load on the hit path.
extern constinit thread_local bool t_in_agent __attribute__((tls_model("initial-exec")));

// The engine's counter path, which counts without calling the handlers, is off meanwhile too.
class AgentScope {
 public:
  AgentScope() : saved_(t_in_agent) { t_in_agent = true; }
  ~AgentScope() { t_in_agent = saved_; }
  AgentScope(const AgentScope &) = delete;
  AgentScope &operator=(const AgentScope &) = delete;

 private:
  bool saved_;
  CounterPathOff counter_path_off_;
};

}  // namespace usprobe::agent
