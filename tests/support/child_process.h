// Scenarios that may crash the process, run in a fresh copy of the test binary.
//
// The parent starts /proc/self/exe again with ENV_VAR=<scenario name>; in the child a static
// initializer (run_scenario_if_child) runs that scenario before GoogleTest's main and exits with
// its status. A fresh process, not a fork: nothing this process did (usprobe state included)
// leaks in, and a crash fails one test with the signal's name instead of ending the binary.
#pragma once

#include <chrono>
#include <span>
#include <string>

namespace usprobe::test {

struct Scenario {
  const char *name;
  int (*body)();  // exit status: 0 = passed
};

// Parent side: "" when the child exited with status 0, else how it ended.
std::string run_in_child(const char *env_var, const char *name, std::chrono::seconds limit);

// Child side: if env_var is set, run the scenario it names and _exit with its status; otherwise
// return false. Call it from a static initializer.
bool run_scenario_if_child(const char *env_var, std::span<const Scenario> all);

// printf into a std::string.
__attribute__((format(printf, 1, 2))) std::string strf(const char *fmt, ...);

}  // namespace usprobe::test
