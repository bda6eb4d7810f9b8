// `usprobe run`: what runs in the CLI rather than on a hit. BEGIN blocks before the command starts,
// interval blocks on their period, END blocks after it ended; the output of them all and of the
// hits' printf records, in bpftrace's text or NDJSON (bt/print.h); the maps at exit.
//
// BEGIN, END and interval blocks are evaluated from the syntax tree: integers, strings, scratch
// variables, printf, print(@m[, top[, div]]), print(value), clear(@m), exit() and if/else.
// validate() refuses anything else (maps written or read by value there) before the start.
#pragma once

#include <cstdio>
#include <expected>
#include <functional>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "bt/ast.h"
#include "bt/diagnostic.h"
#include "bt/program.h"

namespace usprobe::bt {

class Host {
 public:
  Host(const Program &program, const Compiled &code, bool json, FILE *out, int64_t start_ns);

  // What BEGIN, END and interval blocks use that the CLI does not run: the first such construct.
  static std::expected<void, Diagnostic> validate(const Program &program);

  void attaching(size_t probes);
  // Runs every block of this type (BEGIN or END), in source order.
  void run_blocks(ProbeType type);
  // Runs the interval blocks whose period has come (now: CLOCK_MONOTONIC ns).
  void run_intervals(int64_t now_ns);
  // A hit's printf, its values decoded.
  void printf(const std::string &format, const std::vector<Scalar> &args);
  // print(@m, top, div) and print(value), from a block here or a hit's record.
  void print_map(size_t map, uint64_t top, uint64_t div);
  void print_value(const Scalar &value);
  void clear_map(size_t map);
  void set_maps(MapReader *reader, MapReader::LiveTables live);
  void print_maps_at_exit();
  bool exit_requested() const { return exit_; }
  // cpid in BEGIN, END and interval: the command's process, once it started (0 before, and with
  // -p).
  void set_cpid(std::function<int32_t()> cpid) { cpid_ = std::move(cpid); }

 private:
  using Val = std::variant<Int, Str>;
  void block(const ProbeBlock &b);
  bool stmts(const std::vector<Stmt> &body, std::vector<Val> &vars);  // false: exit() ran
  Val eval(const Expr &e, std::vector<Val> &vars);
  std::vector<Map> maps() const;
  void write(const std::string &text);

  const Program &program_;
  const Compiled &code_;
  bool json_;
  FILE *out_;
  int64_t start_ns_;
  MapReader *reader_ = nullptr;
  MapReader::LiveTables live_;
  bool exit_ = false;
  std::function<int32_t()> cpid_;
  std::vector<int64_t> next_interval_;  // by probe block: when it runs next (0: not an interval)
};

}  // namespace usprobe::bt
