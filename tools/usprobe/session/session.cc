#include "session/session.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <map>

#include "resolve/library_finder.h"
#include "target/launch.h"

namespace usprobe::cli {

namespace {

// /proc/PID/comm without its newline ("" when it cannot be read).
std::string process_name(pid_t pid) {
  std::ifstream file(fmt::format("/proc/{}/comm", pid));
  std::string name;
  std::getline(file, name);
  return name;
}

}  // namespace

Result<Session> prepare_session(const std::vector<ProbeSpec> &specs, const TargetRequest &request) {
  Session s;
  auto target =
      request.pids.empty() ? Target::launched(request.command) : Target::attached(request.pids);
  if (!target) return std::unexpected(target.error());
  s.target = std::move(*target);
  // -n with -p: a process of another name is refused before anything is touched.
  for (pid_t pid : request.pids) {
    if (request.comm.empty()) break;
    std::string comm = process_name(pid);
    if (comm.find(request.comm) == std::string::npos)
      return fail(EINVAL, fmt::format("-n {}: pid {} is named '{}', which does not contain '{}'",
                                      request.comm, pid, comm, request.comm));
  }
  LibraryFinder finder = s.target->finder();
  auto probes = resolve_probes(specs, finder);
  if (!probes) return std::unexpected(probes.error());
  s.probes = std::move(*probes);
  auto agent = find_agent();
  if (!agent) return std::unexpected(agent.error());
  s.agent = std::move(*agent);
  return s;
}

Result<Session> prepare_probes(const std::vector<std::string> &probe_args,
                               const TargetRequest &request,
                               const std::function<Result<void>(const ProbeSpec &)> &check,
                               std::vector<ProbeSpec> *specs_out) {
  std::vector<ProbeSpec> specs;
  for (const std::string &p : probe_args) {
    auto spec = parse_probe(p);
    if (!spec) return std::unexpected(spec.error());
    if (check)
      if (auto ok = check(*spec); !ok) return std::unexpected(ok.error());
    specs.push_back(std::move(*spec));
  }
  auto session = prepare_session(specs, request);
  if (!session) return std::unexpected(session.error());
  session->probes = merge_same_sites(std::move(session->probes));
  if (specs_out) *specs_out = std::move(specs);
  return session;
}

namespace {

// The file of a probe's location ("[uretprobe:]PATH:TARGET"; TARGET has no ':'; or
// "usdt:PATH:PROVIDER:NAME").
std::string probe_file(const Probe &p) {
  std::string_view loc = p.location;
  if (loc.starts_with("uretprobe:")) loc.remove_prefix(10);
  if (loc.starts_with("usdt:")) {
    loc.remove_prefix(5);
    loc = loc.substr(0, loc.rfind(':'));  // PATH:PROVIDER
  }
  return std::string(loc.substr(0, loc.rfind(':')));
}

}  // namespace

void NoticePrinter::info(const std::vector<std::string> &lines) {
  if (!verbose_) return;
  for (const std::string &line : lines) fmt::print(stderr, "usprobe: {}\n", line);
  std::fflush(stderr);
}

void NoticePrinter::print(const std::vector<NoticeMessage> &notices) {
  for (const NoticeMessage &n : notices) {
    switch (n.kind) {
      case agent::kNoticeProbe: {
        // Every process of the command says it again for the same probe: once is enough.
        if (!reported_probes_.insert(n.probe).second) break;
        std::string name = n.probe >= 0 && static_cast<size_t>(n.probe) < probes_.size()
                               ? probes_[static_cast<size_t>(n.probe)].display
                               : fmt::format("probe {}", n.probe);
        fmt::print(stderr, "usprobe: pid {}: {} not placed: {}\n", n.pid, name, n.text);
        not_placed_why_.try_emplace(n.probe, n.text);
        break;
      }
      case agent::kNoticeInt3:
        // Said at the end, with the others (print_summary); as it comes with verbose.
        int3_why_.try_emplace(n.probe, n.text);
        if (verbose_ && n.probe >= 0 && static_cast<size_t>(n.probe) < probes_.size())
          fmt::print(stderr, "usprobe: pid {}: {} on the int3 path: {}\n", n.pid,
                     probes_[static_cast<size_t>(n.probe)].display, n.text);
        break;
      case agent::kNoticeOtherProgram:
        print_other_program(n);
        break;
      case agent::kNoticeInfo:
        if (verbose_) fmt::print(stderr, "usprobe: pid {}: {}\n", n.pid, n.text);
        break;
      default:
        fmt::print(stderr, "usprobe: pid {}: {}\n", n.pid, n.text);
    }
  }
  std::fflush(stderr);
}

// "usprobe: pid 1234: exe:main and 255 other probes on /usr/bin/python3.11 not placed: the process
// runs /usr/bin/true", or for one probe "usprobe: pid 1234: exe:main not placed: the process runs
// /usr/bin/true, not /usr/bin/python3.11".
void NoticePrinter::print_other_program(const NoticeMessage &n) {
  std::string_view text = n.text;
  size_t blank = text.find(' ');
  std::string_view count = text.substr(0, blank);
  std::string_view runs = blank == std::string_view::npos ? "?" : text.substr(blank + 1);
  bool known = n.probe >= 0 && static_cast<size_t>(n.probe) < probes_.size();
  std::string first =
      known ? probes_[static_cast<size_t>(n.probe)].display : fmt::format("probe {}", n.probe);
  std::string file =
      known ? probe_file(probes_[static_cast<size_t>(n.probe)]) : std::string("another program");
  // The file's probes are left out of the "never loaded" lines: this line said why already.
  other_program_files_.insert(file);
  // Once for each program that ran instead (every `true` of a shell script would say the same);
  // the other processes are counted at the end.
  if (!other_programs_seen_.insert({file, std::string(runs)}).second && !verbose_) {
    ++other_program_hidden_;
    return;
  }
  uint64_t others = 0;
  std::from_chars(count.data(), count.data() + count.size(), others);
  others = others > 0 ? others - 1 : 0;
  if (others == 0)
    fmt::print(stderr, "usprobe: pid {}: {} not placed: the process runs {}, not {}\n", n.pid,
               first, runs, file);
  else
    fmt::print(stderr,
               "usprobe: pid {}: {} and {} other probes on {} not placed: the process runs {}\n",
               n.pid, first, others, file, runs);
}

void NoticePrinter::finish(const Region &region, const ExitInfo &exit, const std::string &noun) {
  if (other_program_hidden_ > 0)
    fmt::print(stderr,
               "usprobe: {} more processes ran one of those programs: their probes were not "
               "placed either (-v lists them)\n",
               other_program_hidden_);
  if (uint32_t dropped = region.notices_dropped())
    fmt::print(stderr, "usprobe: {} more notices from the agent were dropped\n", dropped);
  // Something in the command wrote over the shared region: what broke the protocol was not read,
  // and what was reported may lack what it held.
  if (uint64_t corrupt = region.corrupt())
    fmt::print(stderr,
               "usprobe: {} corrupt records ignored (the shared region was written over; the "
               "report may be incomplete)\n",
               corrupt);
  // Most often a set-user-ID program (the dynamic linker ignores LD_PRELOAD there) or one that
  // replaced its environment before running anything else.
  const std::string &filter = region.layout().comm_filter;
  if (region.agents_started() == 0 && region.agents_filtered() > 0) {
    fmt::print(stderr,
               "usprobe: warning: no process of {} has a name that contains '{}' (-n): nothing "
               "was probed\n",
               noun, filter);
    return;
  }
  if (region.agents_started() == 0) {
    fmt::print(stderr, "usprobe: warning: the agent never started in {}: nothing was probed\n",
               noun);
    return;
  }
  std::vector<uint64_t> hits(probes_.size(), 0);
  for (const auto &[key, count] : region.counts())
    if (key.second < hits.size()) hits[key.second] += count.hits;
  print_summary(probes_, region.placed(), region.on_int3(), hits, not_placed_why_, int3_why_,
                verbose_);
  // -n: the processes of other names placed nothing on purpose; the lines below speak of the
  // others.
  const std::string by = region.agents_filtered() > 0
                             ? fmt::format("the processes of {} named like '{}'", noun, filter)
                             : noun;
  // A library no process of the command loaded: its probes' zeros mean "never there", not "never
  // called". Probes whose failure was reported already are left out. An interrupted command may
  // not have got as far as loading it (or as the agent's placing anything): nothing is said then.
  if (exit.interrupted) return;
  std::vector<bool> placed = region.placed();
  std::map<std::string, std::vector<size_t>> never;  // file -> probe indices
  for (size_t i = 0; i < probes_.size() && i < placed.size(); ++i) {
    if (placed[i] || reported_probes_.count(static_cast<int32_t>(i))) continue;
    std::string file = probe_file(probes_[i]);
    if (!other_program_files_.count(file)) never[file].push_back(i);
  }
  for (const auto &[file, indices] : never) {
    if (indices.size() == 1)
      fmt::print(stderr, "usprobe: {} was never loaded by {}: {} was not placed\n", file, by,
                 probes_[indices[0]].display);
    else
      fmt::print(stderr,
                 "usprobe: {} was never loaded by {}: its {} probes ({}, ...) were not "
                 "placed\n",
                 file, by, indices.size(), probes_[indices[0]].display);
  }
}

void print_summary(const std::vector<Probe> &probes, const std::vector<bool> &placed,
                   const std::vector<bool> &int3, const std::vector<uint64_t> &hits,
                   const std::map<int32_t, std::string> &not_placed,
                   const std::map<int32_t, std::string> &int3_why, bool verbose) {
  auto hits_of = [&](size_t i) { return i < hits.size() ? hits[i] : 0; };
  // "a (why), b (why), c, and 12 more (-v lists them)"
  auto names = [&](const std::vector<size_t> &indices, const std::map<int32_t, std::string> &why) {
    constexpr size_t kShown = 4;
    std::string out;
    size_t shown = verbose ? indices.size() : std::min(indices.size(), kShown);
    // One reason for all of them (USPROBE_FORCE_INT3, a library that failed to load) is said once.
    std::set<std::string> reasons;
    bool all_known = true;
    for (size_t k = 0; k < shown; ++k) {
      auto it = why.find(static_cast<int32_t>(indices[k]));
      if (it == why.end())
        all_known = false;
      else
        reasons.insert(it->second);
    }
    bool one_reason = shown > 1 && all_known && reasons.size() == 1;
    for (size_t k = 0; k < shown; ++k) {
      size_t i = indices[k];
      out += (k ? ", " : "") + probes[i].display;
      std::string notes;
      if (&why == &int3_why && hits_of(i) > 0)
        notes = fmt::format("{} hit{}", hits_of(i), hits_of(i) == 1 ? "" : "s");
      if (auto it = why.find(static_cast<int32_t>(i)); it != why.end() && !one_reason)
        notes += (notes.empty() ? "" : "; ") + it->second;
      if (!notes.empty()) out += " (" + notes + ")";
    }
    if (shown < indices.size())
      out += fmt::format(", and {} more (-v lists them)", indices.size() - shown);
    if (one_reason) out += ": " + *reasons.begin();
    return out;
  };
  // Not placed, with the agent's reason: said as it came, maybe long before the report.
  std::vector<size_t> never, trapped;
  for (size_t i = 0; i < probes.size(); ++i) {
    bool was_placed = i < placed.size() && placed[i];
    if (!was_placed && not_placed.count(static_cast<int32_t>(i))) never.push_back(i);
    if (was_placed && i < int3.size() && int3[i]) trapped.push_back(i);
  }
  if (!never.empty())
    fmt::print(stderr, "usprobe: {} {} never placed: {}\n", never.size(),
               never.size() == 1 ? "probe was" : "probes were", names(never, not_placed));
  if (trapped.empty()) return;
  // The ones that cost something first: by hits, most first.
  std::stable_sort(trapped.begin(), trapped.end(),
                   [&](size_t a, size_t b) { return hits_of(a) > hits_of(b); });
  uint64_t traps = 0;
  for (size_t i : trapped) traps += hits_of(i);
  fmt::print(stderr, "usprobe: {} {} on the int3 path (a trap per hit, {} each; {}): {}\n",
             trapped.size(), trapped.size() == 1 ? "probe is" : "probes are", kInt3Cost,
             traps == 0 ? std::string("not hit") : fmt::format("{} traps in all", traps),
             names(trapped, int3_why));
}

Result<Output> Output::create(const std::string &path) {
  FILE *f = std::fopen(path.c_str(), "we");  // close-on-exec: the command does not need it
  if (!f) return fail(errno, fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  return Output(f);
}

Result<Output> Output::open(const std::string &path, const std::string &cmd_output,
                            Target &target) {
  bool launched = !target.is_attached();
  int command_fd = -1;
  if (!cmd_output.empty()) {
    const std::string file = cmd_output == "null" ? "/dev/null" : cmd_output;
    // Close-on-exec: the command gets its own copy, on its stdout (launch.h).
    command_fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (command_fd < 0)
      return fail(
          errno, fmt::format("--cmd-output {}: cannot open: {}", cmd_output, std::strerror(errno)));
  }
  FILE *report = path == "-" || (path.empty() && !launched) ? stdout
                 : path.empty()                             ? stderr
                                                            : nullptr;
  if (!report) {
    auto file = create(path);
    if (!file) {
      if (command_fd >= 0) ::close(command_fd);
      return std::unexpected(file.error());
    }
    report = std::exchange(file->file_, nullptr);
  }
  if (launched) {
    if (command_fd >= 0)
      target.send_stdout_to(command_fd);
    else if (report == stdout)
      target.send_stdout_to(STDERR_FILENO);  // stdout is the report's alone
  }
  return Output(report, command_fd);
}

Output::~Output() {
  if (file_ && file_ != stdout && file_ != stderr) std::fclose(file_);
  if (command_fd_ >= 0) ::close(command_fd_);
}

int exit_status(const Target &target, const ExitInfo &exit) {
  return target.is_attached() || exit.stopped || exit.killed ? 0 : exit.status.value_or(1);
}

int report_error(const Error &error) {
  fmt::print(stderr, "usprobe: {}\n", error.message);
  return 2;
}

}  // namespace usprobe::cli
