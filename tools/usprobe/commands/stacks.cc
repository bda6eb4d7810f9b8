// usprobe stacks PROBE... [--fp] [-i S] [-d S] [-o FILE] [-f] [--svg FILE] [--pprof FILE] [--top N]
// [-P] [-v] -- COMMAND:
// the distinct user stacks that reach the probed instructions in every process of the command,
// counted, symbolized and demangled (BCC's stackcount), as text, as folded stacks, as an SVG
// flame graph or as a pprof profile.
//
// The agent takes each hit's stack with usprobe_hit_stack (agent/stack_handler.cc) and counts it
// in its thread's stack table (protocol/stack_table.h), tagged with its process image; a new stack
// that a full table cannot take goes to the thread's ring. It also writes its own mappings into the
// region (agent/maps.h). Every tick the CLI drains the rings and what the tables counted since the
// last tick, and counts the raw stacks by (process, image, probe, addresses); a new stack with an
// address that no mapping of its process covers makes it read /proc/PID/maps while the process
// lives (a library loaded with dlopen). Names are given once, at the end (image_maps.h), and stacks
// with the same names are one stack.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "commands/commands.h"
#include "output/flamegraph.h"
#include "output/pprof.h"
#include "output/report.h"
#include "protocol/maps_lines.h"
#include "resolve/image_maps.h"
#include "session/region.h"
#include "session/session.h"
#include "session/supervisor.h"
#include "usprobe/usprobe.h"

namespace usprobe::cli {
namespace {

// Each thread counts up to 4,096 distinct stacks in its table, whose arena holds 131,072 addresses
// (32 a stack on average): a BPF stack map's job, in about 1.2 MiB a slot of which only what a
// thread touches takes memory. Its ring (2 MiB: 11,000 stacks of 20 frames) takes the new stacks
// that a full table cannot, and is drained every tick.
constexpr std::chrono::milliseconds kTick{10};
constexpr uint32_t kTableEntries = 4096;
constexpr uint32_t kTableArenaWords = 131072;
constexpr uint64_t kRingSize = 2 << 20;
// Mappings written by the agents: a few KiB per process image (two when it loaded a library).
// Sparse: only what is written takes memory.
constexpr uint64_t kMapsTextSize = uint64_t{64} << 20;
constexpr uint32_t kMaxMaps = 16384;
// The flame graph's subtitle shows the command, cut to this many characters.
constexpr size_t kMaxSubtitle = 160;

struct RawKey {
  int32_t pid;
  uint32_t image;
  uint32_t probe;
  std::vector<uint64_t> ips;
  auto operator<=>(const RawKey &) const = default;
};

// A stack as reported: names, innermost first.
struct NamedKey {
  uint32_t probe;
  int32_t pid;  // with -P; 0 otherwise
  std::string comm;
  std::vector<std::string> frames;
  auto operator<=>(const NamedKey &) const = default;
};

struct NamedStack {
  NamedKey key;
  uint64_t count = 0;
};

// The text of /proc/PID/maps's naming lines; nullopt when the process is gone.
std::optional<std::string> read_live_maps(int32_t pid) {
  std::ifstream in(fmt::format("/proc/{}/maps", pid));
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) return std::nullopt;
  return agent::naming_lines(text.str());
}

// Counts the raw stacks as they are drained, and keeps every image's mappings.
class Collector {
 public:
  Collector(Region &region, bool per_pid) : region_(region), per_pid_(per_pid) {}

  void tick() {
    region_.drain(batch_);
    region_.reclaim(batch_);
    // After the drain: the mappings of an image are written before its first stack.
    for (const MapsMessage &m : region_.new_maps()) maps_.add(m.pid, m.image, m.comm, m.text);
    std::set<std::pair<int32_t, uint32_t>> unnamed;
    for (StackEvent &e : batch_) {
      auto [it, inserted] =
          raw_.try_emplace(RawKey{e.pid, e.image, e.probe, std::move(e.ips)}, uint64_t{0});
      it->second += e.count;
      since_report_[it->first] += e.count;
      if (inserted && !maps_.covers(e.pid, e.image, it->first.ips))
        unnamed.insert({e.pid, e.image});
    }
    batch_.clear();
    // What /proc/PID/maps shows now is the newest image's mappings only.
    for (const auto &[pid, image] : unnamed) {
      if (maps_.latest_image(pid) != image) continue;
      if (auto text = read_live_maps(pid)) maps_.add_live(pid, image, *text);
    }
  }

  // The stacks of the whole run by their names, most frequent first within each probe (and with
  // -P each process).
  std::vector<NamedStack> named() const { return named(raw_); }
  // The same as a pprof profile (stacks_profile below says what is in it).
  PprofProfile profile(const std::vector<Probe> &probes) const;
  // Those since the last call (-i).
  std::vector<NamedStack> named_since_report() {
    std::vector<NamedStack> out = named(since_report_);
    since_report_.clear();
    return out;
  }

 private:
  std::vector<NamedStack> named(const std::map<RawKey, uint64_t> &raw) const {
    std::vector<RawStack> raws;
    for (const auto &[key, count] : raw) raws.push_back({key.pid, key.image, key.ips});
    StackNamer namer(maps_, raws);
    std::map<NamedKey, uint64_t> merged;
    size_t i = 0;
    for (const auto &[key, count] : raw) {
      NamedKey named{key.probe, per_pid_ ? key.pid : 0, maps_.comm(key.pid, key.image), {}};
      for (const Frame &f : namer.name(raws[i++])) named.frames.push_back(f.name());
      if (named.comm.empty()) named.comm = "[unknown]";
      // stackcount -P's "comm-PID", as flame graph tools name a process.
      if (per_pid_) named.comm += fmt::format("-{}", key.pid);
      merged[std::move(named)] += count;
    }
    std::vector<NamedStack> out;
    for (auto &[key, count] : merged) out.push_back({key, count});
    std::stable_sort(out.begin(), out.end(), [](const NamedStack &a, const NamedStack &b) {
      return std::tie(a.key.probe, a.key.pid, b.count) < std::tie(b.key.probe, b.key.pid, a.count);
    });
    return out;
  }

  Region &region_;
  bool per_pid_;
  std::vector<StackEvent> batch_;
  std::map<RawKey, uint64_t> raw_;
  std::map<RawKey, uint64_t> since_report_;  // -i: what the next interval report shows
  ImageMaps maps_;
};

// One sample per distinct stack and probe (with -P, per process too), its value the count; the
// stacks with the same addresses, not the same names: a profiler may name them again. A location
// is an address in the process's own mapping of a file (its real addresses, file offset, path and
// build-id, so that pprof can symbolize it from the file), named by usprobe's symbolizer: the
// probed instruction's address for the leaf, a return address - 1 for its callers, inside the call
// instruction as profile.proto expects of a caller's address and where the symbolizer looks it up
// (a call that ends a function returns to the next function's first byte).
//
// Labels: "comm", the process's name (the root frame of folded stacks); "probe" with several
// probes (their leaf frame); with -P "pid", a number. A label rather than a frame per process
// because pprof selects and groups by labels (-tagfocus pid=1234, -tags, -tagroot pid) and the
// continuous profilers make series of them, where a root frame would split every call tree.
PprofProfile Collector::profile(const std::vector<Probe> &probes) const {
  PprofProfile profile({{"calls", "count"}});
  std::vector<RawStack> raws;
  for (const auto &[key, count] : raw_) raws.push_back({key.pid, key.image, key.ips});
  StackNamer namer(maps_, raws);
  auto mapping_id = [&](const Module *m) -> uint64_t {
    if (!m) return 0;
    return profile.add_mapping({m->start, m->end, m->offset, m->path, namer.build_id(*m)});
  };
  // pprof takes the first mapping for the program's (its "File:"): the outermost frame's file,
  // _start's.
  for (const RawStack &r : raws)
    if (!r.ips.empty()) mapping_id(namer.module_of(r, r.ips.size() - 1));
  size_t i = 0;
  for (const auto &[key, count] : raw_) {
    const RawStack &r = raws[i++];
    std::vector<Frame> frames = namer.name(r);
    std::vector<uint64_t> locations;
    for (size_t f = 0; f < frames.size(); ++f) {
      uint64_t address = f > 0 && r.ips[f] > 0 ? r.ips[f] - 1 : r.ips[f];
      uint64_t function = frames[f].function.empty()
                              ? 0
                              : profile.add_function(frames[f].function, frames[f].symbol);
      locations.push_back(
          profile.add_location(mapping_id(namer.module_of(r, f)), address, function));
    }
    std::string comm = maps_.comm(key.pid, key.image);
    std::vector<PprofLabel> labels{{.key = "comm", .str = comm.empty() ? "[unknown]" : comm}};
    if (probes.size() > 1 && key.probe < probes.size())
      labels.push_back({.key = "probe", .str = probes[key.probe].display});
    if (per_pid_) labels.push_back({.key = "pid", .num = key.pid});
    const int64_t value = static_cast<int64_t>(count);
    profile.add_sample(std::move(locations), {&value, 1}, std::move(labels));
  }
  return profile;
}

// --top N: the first N stacks of each probe (and process, with -P); how many were left out.
size_t keep_top(std::vector<NamedStack> &stacks, size_t top) {
  if (top == 0) return 0;
  std::vector<NamedStack> kept;
  size_t in_group = 0, left_out = 0;
  for (size_t i = 0; i < stacks.size(); ++i) {
    bool same = i > 0 && stacks[i].key.probe == stacks[i - 1].key.probe &&
                stacks[i].key.pid == stacks[i - 1].key.pid;
    in_group = same ? in_group + 1 : 0;
    if (in_group < top)
      kept.push_back(std::move(stacks[i]));
    else
      ++left_out;
  }
  stacks = std::move(kept);
  return left_out;
}

struct Totals {
  uint64_t stacks = 0, distinct = 0, lost = 0;
  std::string summary() const {
    return fmt::format("{} stacks, {} distinct, {} lost", stacks, distinct, lost);
  }
};

// stackcount's layout: per probe, each stack innermost frame first, its process's name, its
// count; a blank line between stacks. The probe's line counts every stack, --top or not.
void print_text(FILE *out, const std::vector<Probe> &probes, std::vector<NamedStack> stacks,
                const Totals &totals, size_t top) {
  std::vector<uint64_t> count(probes.size()), distinct(probes.size());
  for (const NamedStack &s : stacks)
    if (s.key.probe < probes.size()) count[s.key.probe] += s.count, ++distinct[s.key.probe];
  size_t left_out = keep_top(stacks, top);
  for (uint32_t p = 0; p < probes.size(); ++p) {
    fmt::print(out, "{}: {} stacks, {} distinct\n",
               name_with_aliases(probes[p].display, probes[p].aliases), count[p], distinct[p]);
    for (const NamedStack &s : stacks) {
      if (s.key.probe != p) continue;
      fmt::print(out, "\n");
      for (const std::string &f : s.key.frames) fmt::print(out, "    {}\n", f);
      fmt::print(out, "    - {}\n", s.key.comm);
      fmt::print(out, "        {}\n", s.count);
    }
    fmt::print(out, "\n");
  }
  if (left_out != 0)
    fmt::print(out, "({} less frequent stacks left out by --top {})\n", left_out, top);
  fmt::print(out, "{}\n", totals.summary());
}

// Outermost first, as folded stacks and flame graphs have them: the process's name, the frames,
// and the probe when there are several (they would otherwise be mixed in one tree).
std::vector<CountedStack> counted(const std::vector<Probe> &probes,
                                  const std::vector<NamedStack> &stacks) {
  std::vector<CountedStack> out;
  for (const NamedStack &s : stacks) {
    CountedStack &c = out.emplace_back();
    c.frames.push_back(s.key.comm);
    c.frames.insert(c.frames.end(), s.key.frames.rbegin(), s.key.frames.rend());
    if (probes.size() > 1) c.frames.push_back(probes[s.key.probe].display);
    c.count = s.count;
  }
  return out;
}

std::string joined(const std::vector<std::string> &words) {
  std::string out;
  for (const std::string &w : words) out += (out.empty() ? "" : " ") + w;
  return out;
}

}  // namespace

int run_stacks(const StacksOptions &options) {
  auto refuse_returns = [](const ProbeSpec &spec) -> Result<void> {
    if (spec.returns)
      return fail(EINVAL, fmt::format("stacks: '{}': return probes are not supported (name the "
                                      "function: its stack is taken at entry)",
                                      spec.text));
    return {};
  };
  auto session =
      prepare_probes(options.probes, {options.command, options.pids, options.comm}, refuse_returns);
  if (!session) return report_error(session.error());
  const std::vector<Probe> &probes = session->probes;

  auto output = Output::open(options.output, options.cmd_output, *session->target);
  if (!output) return report_error(output.error());
  // Created before the command starts, so that a bad path is reported before anything runs.
  std::optional<Output> svg;
  if (!options.svg.empty()) {
    auto opened = Output::create(options.svg);
    if (!opened) return report_error(opened.error());
    svg.emplace(std::move(*opened));
  }
  std::optional<Output> pprof;
  if (!options.pprof.empty()) {
    auto opened = Output::create(options.pprof);
    if (!opened) return report_error({opened.error().code, "--pprof: " + opened.error().message});
    pprof.emplace(std::move(*opened));
  }
  std::vector<PlanEntry> plan;
  for (const Probe &p : probes) plan.push_back({p.location, 0});
  RegionConfig config;
  config.mode = agent::kModeStacks;
  config.comm = options.comm;
  config.ring_size = kRingSize;
  config.table_entries = kTableEntries;
  config.table_arena_words = kTableArenaWords;
  config.stack_flags = options.frame_pointers ? USPROBE_STACK_FP : 0;
  config.max_maps = kMaxMaps;
  config.maps_text_size = kMapsTextSize;
  Supervisor supervisor;
  Target &target = *session->target;
  auto started = target.start(config, plan, session->agent, supervisor);
  if (!started) return report_error(started.error());
  Region *region = *started;

  NoticePrinter notices(probes, options.verbose);
  notices.info(target.notes());
  Collector collector(*region, options.per_pid);
  auto tick = [&] {
    collector.tick();
    notices.print(region->new_notices());
  };
  FILE *out = output->file();
  auto lost_so_far = [&] {
    uint64_t lost = 0;
    for (const auto &[key, c] : region->counts()) lost += c.missed;
    return lost;
  };
  // A report: the text (with its heading) or the folded lines of `stacks`.
  auto report = [&](std::vector<NamedStack> stacks, uint64_t lost, const std::string &heading) {
    Totals totals;
    totals.distinct = stacks.size();
    for (const NamedStack &s : stacks) totals.stacks += s.count;
    totals.lost = lost;
    if (options.folded) {
      keep_top(stacks, options.top);
      for (const std::string &line : fold(counted(probes, stacks))) fmt::print(out, "{}\n", line);
    } else {
      fmt::print(out, "{}", heading);
      print_text(out, probes, std::move(stacks), totals, options.top);
    }
    std::fflush(out);
    return totals;
  };
  uint64_t lost_reported = 0;
  // -i: the stacks of each interval, as count's interval reports (folded: the lines alone), a
  // blank line after each.
  auto interval = [&] {
    tick();
    double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - target.started()).count();
    uint64_t lost = lost_so_far();
    report(collector.named_since_report(), lost - std::min(lost, lost_reported),
           report_heading(elapsed, false, ""));
    fmt::print(out, "\n");
    lost_reported = lost;
  };
  ExitInfo exit = target.watch(
      supervisor, {kTick, options.duration_s, options.interval_s, out, options.stop_signal}, tick,
      interval);
  // Grandchildren may still run: what they recorded so far is in their rings.
  tick();

  std::vector<NamedStack> stacks = collector.named();
  // The flame graph draws every stack: --top is for the lists.
  std::vector<CountedStack> folded_input = counted(probes, stacks);
  Totals totals =
      report(std::move(stacks), lost_so_far(),
             options.interval_s ? report_heading(exit.elapsed_s, true, exit.ending) : "");
  std::fflush(out);
  if (svg) {
    std::vector<std::string> names;
    for (const Probe &p : probes) names.push_back(p.display);
    FlameGraphOptions graph;
    graph.title = "usprobe stacks " + joined(names);
    graph.subtitle = target.description();
    if (graph.subtitle.size() > kMaxSubtitle)
      graph.subtitle = graph.subtitle.substr(0, kMaxSubtitle - 3) + "...";
    std::string document = render_flame_graph(build_flame_tree(folded_input), graph);
    if (std::fwrite(document.data(), 1, document.size(), svg->file()) != document.size() ||
        std::fflush(svg->file()) != 0)
      return report_error({EIO, fmt::format("cannot write {}", options.svg)});
  }
  if (pprof) {
    PprofProfile profile = collector.profile(probes);
    profile.set_time(unix_nanos(target.started()), static_cast<int64_t>(exit.elapsed_s * 1e9));
    std::vector<std::string> names;
    for (const Probe &p : probes) names.push_back(p.display);
    profile.add_comment("usprobe stacks " + joined(names));
    profile.add_comment(target.description());
    if (auto written = write_pprof(pprof->file(), options.pprof, profile); !written)
      return report_error(written.error());
  }
  // The text report ends with the summary; folded stacks are for programs, the summary is not.
  if (options.folded) fmt::print(stderr, "usprobe: {}\n", totals.summary());
  if (svg) fmt::print(stderr, "usprobe: flame graph written to {}\n", options.svg);
  if (pprof) fmt::print(stderr, "usprobe: pprof profile written to {}\n", options.pprof);
  if (uint32_t dropped = region->maps_dropped())
    fmt::print(stderr, "usprobe: {} mapping snapshots found no room: some frames may be unnamed\n",
               dropped);
  notices.finish(*region, exit, target.noun());
  return exit_status(target, exit);
}

}  // namespace usprobe::cli
