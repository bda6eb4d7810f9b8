// usprobe run [FILE.bt | -e PROGRAM] [-p PID | -c 'CMD' | -- COMMAND ARGS]: a bpftrace program.
// The CLI parses, checks and compiles it (bt/), the agent runs each probe's code on every hit
// (agent/bt_vm.cc), and the CLI prints what bpftrace would: printf lines as they come, maps at the
// end. BEGIN, END and interval blocks run here, in the CLI (bt/host.h).
#include <time.h>

#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "bt/check.h"
#include "bt/compile.h"
#include "bt/host.h"
#include "bt/parser.h"
#include "bt/print.h"
#include "commands/commands.h"
#include "session/region.h"
#include "session/session.h"
#include "session/stack_names.h"
#include "session/supervisor.h"
#include "session/tsc_clock.h"

// GCC 12 sees a moved std::variant (bt::Scalar) as maybe uninitialized (a known false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace usprobe::cli {
namespace {

constexpr std::chrono::milliseconds kTick{50};
constexpr uint64_t kRunRingSize = uint64_t{1} << 20;

int64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// bpftrace's -c 'CMD': the words of one string (no shell: quotes are not interpreted).
std::vector<std::string> split_words(const std::string &text) {
  std::vector<std::string> words;
  std::istringstream in(text);
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// A printf record from a ring: its values as the printer takes them.
bool print_record(const bt::Compiled &code, const bt::ProbeNames &names, bt::Host &host,
                  const char *record, uint32_t size) {
  agent::bt::PrintfRecord rec;
  if (size < sizeof rec) return false;
  std::memcpy(&rec, record, sizeof rec);
  if (rec.printf_index >= code.printfs.size()) return false;
  const bt::PrintfDef &p = code.printfs[rec.printf_index];
  std::vector<bt::Scalar> args;
  const char *at = record + sizeof rec, *end = record + size;
  for (const bt::PrintfDef::Arg &a : p.args) {
    uint32_t n = a.in_bytes() ? a.size : 8;
    if (static_cast<size_t>(end - at) < n) return false;
    if (a.usym) {
      args.push_back(names.usym(at));
    } else if (a.stack_frames != 0) {
      args.push_back(names.ustack(at, a.stack_frames));
    } else if (a.buf_len != 0) {
      args.push_back(bt::Str{bt::buf_text(at, a.buf_len)});
    } else if (a.name != bt::ProbeName::kNone) {
      uint64_t v = 0;
      std::memcpy(&v, at, 8);
      args.push_back(names.name(a.name, v));
    } else if (a.is_string) {
      args.push_back(bt::Str{std::string(at, ::strnlen(at, n))});
    } else {
      uint64_t v = 0;
      std::memcpy(&v, at, 8);
      args.push_back(bt::Int{v, a.is_signed});
    }
    at += n;
  }
  if (p.print_map >= 0)
    host.print_map(static_cast<size_t>(p.print_map), p.top, p.div);
  else if (p.clear_map >= 0)
    host.clear_map(static_cast<size_t>(p.clear_map));
  else if (p.print_value && args.size() == 1)
    host.print_value(args[0]);
  else
    host.printf(p.format, args);
  return true;
}

}  // namespace

int run_run(const RunOptions &options) {
  // The program: parsed, checked and compiled before anything starts.
  std::string source = options.program, name = "stdin";
  if (!options.file.empty()) {
    std::ifstream in(options.file);
    if (!in)
      return report_error({ENOENT, fmt::format("{}: cannot read the program", options.file)});
    std::stringstream text;
    text << in.rdbuf();
    source = text.str();
    name = options.file;
  }
  auto diagnose = [&](const bt::Diagnostic &d) {
    fmt::print(stderr, "{}", bt::format_diagnostic(name, source, d));
    return 2;
  };
  auto program = bt::parse(source);
  if (!program) return diagnose(program.error());
  if (auto ok = bt::check(*program); !ok) return diagnose(ok.error());
  auto compiled = bt::compile(*program);
  if (!compiled) return diagnose(compiled.error());
  if (auto ok = bt::Host::validate(*program); !ok) return diagnose(ok.error());
  if (std::getenv("USPROBE_DUMP_BT")) {  // for the people who work on the compiler
    const bt::Compiled &c = compiled->code;
    for (size_t b = 0; b < c.blocks.size(); ++b)
      for (uint32_t k = 0; k < c.blocks[b].count; ++k) {
        const agent::bt::Insn &in = c.insns[c.blocks[b].first + k];
        fmt::print(stderr, "block {} {:3}: op {:2}{} dst {} a {} b {} imm {}\n", b, k,
                   in.op & ~agent::bt::kImmOperand, in.op & agent::bt::kImmOperand ? "i" : " ",
                   in.dst, in.a, in.b, in.imm);
      }
  }

  std::vector<ProbeSpec> specs;
  for (const bt::CompiledProbe &p : compiled->probes) {
    auto spec = parse_probe(p.spec);
    if (!spec) return report_error(spec.error());
    specs.push_back(std::move(*spec));
  }
  std::vector<std::string> command = options.command;
  if (!options.c_command.empty()) command = split_words(options.c_command);
  if (specs.empty())
    return report_error({EINVAL,
                         "the program has no uprobe, uretprobe or usdt probe: usprobe "
                         "runs programs on the probes of a command or a process"});
  auto session = prepare_session(specs, {command, options.pids, options.comm});
  if (!session) return report_error(session.error());
  const std::vector<Probe> &probes = session->probes;

  FILE *out = stdout;
  std::unique_ptr<FILE, int (*)(FILE *)> file(nullptr, std::fclose);
  if (!options.output.empty()) {
    file.reset(std::fopen(options.output.c_str(), "we"));
    if (!file)
      return report_error({errno, fmt::format("-o {}: {}", options.output, std::strerror(errno))});
    out = file.get();
  }
  std::vector<PlanEntry> plan;
  std::vector<uint32_t> block_of_probe;
  for (const Probe &p : probes) {
    plan.push_back({p.location, 0, 0});
    block_of_probe.push_back(compiled->probes.at(p.spec_index).block);
  }
  TscClock clock;
  clock.calibrate();
  const uint64_t mult = tsc_to_ns_mult(clock.ticks_per_ns());
  const uint64_t now_tsc = __builtin_ia32_rdtsc();
  const int64_t now_ns = monotonic_ns();
  const auto tsc_ns =
      static_cast<uint64_t>((static_cast<unsigned __int128>(now_tsc) * mult) >> agent::kTscShift);
  bt::Laid laid =
      bt::lay_out(compiled->code, block_of_probe, now_tsc, static_cast<uint64_t>(now_ns) - tsc_ns);
  RegionConfig config;
  config.mode = agent::kModeRun;
  config.comm = options.comm;
  config.ring_size = kRunRingSize;
  config.tsc_to_ns_mult = mult;
  config.program = laid.program;
  config.tables_bytes = laid.tables_bytes;
  config.shared_bytes = laid.shared_bytes;
  const bool names_addresses = compiled->code.uses_stacks || compiled->code.uses_symbols;
  if (names_addresses) {
    // ustack, usym: the agents write their mappings, for addresses to be named after they exit.
    config.trace_stacks = true;
    config.max_maps = 16384;
    config.maps_text_size = uint64_t{64} << 20;
  }
  StackNames stack_names;

  bt::Host host(*program, compiled->code, options.json, out, now_ns);
  // bpftrace counts BEGIN, END and interval among the probes it attaches.
  size_t cli_probes = 0;
  for (const bt::ProbeBlock &b : program->probes)
    for (const bt::AttachPoint &p : b.attach_points)
      cli_probes += p.type == bt::ProbeType::kBegin || p.type == bt::ProbeType::kEnd ||
                    p.type == bt::ProbeType::kInterval;
  // "Attaching N probes..." and BEGIN: before a command starts, so that they come before its
  // output (bpftrace holds its command until then); on running processes, once they are attached
  // (nothing is printed when that fails).
  auto begin = [&] {
    host.attaching(probes.size() + cli_probes);
    host.run_blocks(bt::ProbeType::kBegin);
    std::fflush(out);
  };
  if (options.pids.empty()) begin();
  Supervisor supervisor;
  Target &target = *session->target;
  auto started = target.start(config, plan, session->agent, supervisor);
  if (!started) return report_error(started.error());
  Region *region = *started;
  if (!options.pids.empty()) begin();
  std::vector<std::string> locations;
  for (const Probe &p : probes) locations.push_back(p.location);
  bt::ProbeNames names = bt::ProbeNames::of(locations);
  // The mappings the agents wrote since last asked, before an address is named.
  auto take_maps = [&] {
    for (const MapsMessage &m : region->new_maps()) stack_names.add(m);
  };
  names.stack = [&](int32_t pid, uint32_t image, const std::vector<uint64_t> &ips) {
    take_maps();
    return stack_names.name_bpftrace(pid, image, ips);
  };
  names.symbol = [&](int32_t pid, uint32_t image, uint64_t address) {
    take_maps();
    return stack_names.symbol_bpftrace(pid, image, address);
  };
  bt::MapReader reader(compiled->code, laid, region->shared_area(), names);
  auto *shared = reinterpret_cast<agent::bt::SharedHead *>(region->shared_area());
  host.set_cpid([shared] { return shared->cpid.load(std::memory_order_relaxed); });
  host.set_maps(&reader, [region](const std::function<void(const char *)> &each) {
    region->for_each_live_table(each);
  });
  NoticePrinter notices(probes, options.verbose);
  notices.info(target.notes());
  auto record = [&](int32_t, const char *r, uint32_t size) {
    return print_record(compiled->code, names, host, r, size);
  };
  auto tick = [&] {
    region->drain_records(record);
    region->reclaim_run(record, [&](char *tables) { reader.fold(tables); });
    if (names_addresses) take_maps();
    host.run_intervals(monotonic_ns());
    std::fflush(out);
    notices.print(region->new_notices());
    if (shared->exit_requested.load(std::memory_order_relaxed) || host.exit_requested())
      supervisor.stop();
  };
  ExitInfo exit = target.watch(
      supervisor, {kTick, options.duration_s, std::nullopt, nullptr, options.stop_signal}, tick,
      [] {});
  region->drain_records(record);
  region->reclaim_run(record, [&](char *tables) { reader.fold(tables); });
  host.run_blocks(bt::ProbeType::kEnd);
  host.print_maps_at_exit();
  std::fflush(out);
  uint64_t missed = 0;
  for (const auto &[key, c] : region->counts()) missed += c.missed;
  if (missed > 0)
    fmt::print(stderr,
               "usprobe: {} hits not run or printf records lost (no free slot, or a full "
               "ring)\n",
               missed);
  notices.finish(*region, exit, target.noun());
  return exit_status(target, exit);
}

}  // namespace usprobe::cli
