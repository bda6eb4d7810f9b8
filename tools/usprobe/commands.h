// The subcommands, one file each (list.cc, count.cc, trace.cc, latency.cc, stacks.cc), behind one
// entry point (cli.cc) that parses the command line. Each returns usprobe's exit status: 2 for its
// own errors, otherwise the command's.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace usprobe::cli {

struct ListOptions {
  std::string file;
  std::string pattern;  // "" = every function
  bool json = false;
};

struct CountOptions {
  std::vector<std::string> probes;
  std::vector<std::string> command;
  std::optional<double> interval_s, duration_s;
  std::string output;  // "" = stdout
  bool json = false, per_pid = false, verbose = false;
};

struct TraceOptions {
  std::vector<std::string> probes;  // probe, then an optional format and its arguments
  std::vector<std::string> command;
  std::string output;
  bool json = false, verbose = false;
};

struct LatencyOptions {
  std::vector<std::string> probes;  // function entries: FILE:SYMBOL or FILE:GLOB
  std::vector<std::string> command;
  std::optional<double> interval_s, duration_s;
  std::string unit = "ns";  // ns, us or ms: the text report's table and numbers
  std::string output;       // "" = stdout
  bool json = false, verbose = false;
};

struct StacksOptions {
  std::vector<std::string> probes;  // FILE:SYMBOL, FILE:GLOB, FILE:SYMBOL+OFF, FILE:0xOFF
  std::vector<std::string> command;
  std::optional<double> duration_s;
  std::string output;  // "" = stdout: the text report, or the folded stacks
  std::string svg;     // "" = none: where the flame graph goes
  bool frame_pointers = false, folded = false, verbose = false;
};

int run_list(const ListOptions &options);
int run_count(const CountOptions &options);
int run_trace(const TraceOptions &options);
int run_latency(const LatencyOptions &options);
int run_stacks(const StacksOptions &options);

// usprobe's main().
int run_cli(int argc, char **argv);

}  // namespace usprobe::cli
