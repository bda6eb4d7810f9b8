// libusprobe-agent.so: what the usprobe CLI loads into the processes it probes
// (protocol/protocol.h, protocol/attach.h).
//
// A session starts in one of two ways, through one sequence (start_session):
//  - launched: the CLI preloads the agent into the command it runs; before main, the constructor
//    maps the region named by USPROBE_AGENT_FD and starts the session, for the life of the
//    process;
//  - attached (usprobe -p): the CLI's injector dlopens the agent into a running process and calls
//    usprobe_agent_attach (protocol/attach.h), which maps the region it is given and starts the
//    session on the live process. A watcher thread reads the control pipe; at its end of file the
//    session ends (end_session): every probe is detached, the region unmapped, and the agent stays
//    loaded, dormant, for a later session. Without USPROBE_AGENT_FD the constructor does nothing.
//
// Starting reads the plan and attaches every probe in one batch, with the count, trace or latency
// handlers (handlers.h) or the stacks handler (stack_handler.h) as the consumer. In stacks mode it
// also writes the process's mappings into the region before attaching, and again at exit if they
// changed (maps.h). From then on each thread of the process counts its hits into a slot of its
// own. The agent follows the process: a forked child keeps the patched probes and counts into
// slots tagged with its own pid (fork handlers below; attached, it also claims a ProcessRecord and
// watches the control pipe itself); an exec'd image loads the agent again through the inherited
// environment and fd, and attaches again (launched only: an attached session ends at an exec). At
// exit the engine's missed counts (hits it skipped to avoid recursion) are added to the region.
// Probes are never detached at exit: the process is leaving, and its other threads may still be
// running.
//
// usprobe -n (the region's comm_filter): a launched process whose name does not match starts no
// session at all, so it places no probe and pays nothing per call; its exec'd images decide again.
//
// What is once per process (the fork handlers, the exit handler, the engine's mapping listener,
// the fault fixup) is registered by the first session and does nothing while none is active.
//
// Nothing here writes to stdout: the command's output is the user's.
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "agent/agent_scope.h"
#include "agent/bt_vm.h"
#include "agent/fault_fixup.h"
#include "agent/handlers.h"
#include "agent/maps.h"
#include "agent/notices.h"
#include "agent/plan.h"
#include "agent/region.h"
#include "agent/slots.h"
#include "agent/stack_handler.h"
#include "api/attach_batch.h"
#include "core/registry.h"
#include "core/site_analysis.h"
#include "core/thread_record.h"
#include "elf/elf_file.h"
#include "os/linux/signal_guard.h"
#include "os/linux/thread_round.h"
#include "protocol/attach.h"
#include "protocol/prepared.h"
#include "protocol/protocol.h"
#include "usprobe/usprobe.h"

namespace usprobe::agent {
namespace {

// A session's state. Written under g_session_mutex by the start and end of a session, with no
// handler running (before the probes are attached, after they are detached).
usprobe_link **g_links = nullptr;  // by probe index; nullptr where the probe did not attach
// The engine's missed count of each link when this process was forked: counted by the parent,
// which reports it itself. Zero in the process that attached.
uint64_t *g_missed_baseline = nullptr;
uint64_t *g_missed_at_fork = nullptr;  // filled by before_fork, under g_session_mutex

// Held by the start and the end of a session, and from the fork prepare handler to the parent or
// child handler: one fork at a time fills g_missed_at_fork, and no session starts or ends inside
// fork(), so each side of the split sees a whole session or none.
std::mutex g_session_mutex;
// Whether a session is active: set by its start (before the probes are attached), cleared by its
// end (before they are detached). Written under g_session_mutex; atomic because the mapping
// listener of a launched session reads it without the lock.
std::atomic<bool> g_active{false};
// The session of this process came through usprobe_agent_attach: it ends when control_fd says so.
bool g_attached = false;            // under g_session_mutex
int g_control_fd = -1;              // attached: the read end of the CLI's pipe
ProcessRecord *g_record = nullptr;  // attached: this process's record, in the region
bool g_exiting = false;  // under g_session_mutex: exit() has begun, the session is left as it is
// The constructor started a session: it lasts as long as the process, so that nothing of it ever
// needs the lock to be read (the mapping listener).
std::atomic<bool> g_launched{false};
// Set on the thread that holds g_session_mutex for a start or an end, which may itself make the
// engine call the mapping listener (a dlopen while attaching).
constinit thread_local bool t_session_owner = false;

// g_session_mutex, held by a session's start or end on this thread.
class SessionLock {
 public:
  SessionLock() : lock_(g_session_mutex) { t_session_owner = true; }
  ~SessionLock() { t_session_owner = false; }
  SessionLock(const SessionLock &) = delete;
  SessionLock &operator=(const SessionLock &) = delete;

 private:
  std::lock_guard<std::mutex> lock_;
};

double ms_since(const timespec &t0) {
  timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return static_cast<double>(t1.tv_sec - t0.tv_sec) * 1e3 +
         static_cast<double>(t1.tv_nsec - t0.tv_nsec) / 1e6;
}

int start_watcher();
ProcessRecord *claim_record();

// Fork handlers. Only the agent's own work in them is the agent's (AgentScope): everything else
// that runs inside fork() is the program's and is counted, on either side of the split: the
// program's fork handlers (prepare handlers run in the reverse order of registration, parent and
// child handlers in order, so those registered before the agent's run between this prepare handler
// and the parent or child handler, and the others outside), libc's own locking of malloc and stdio
// around the split, and _Fork itself. Between the prepare handler and the parent or child handler,
// hits find their slot through t_forking (slots.h). While no session is active they do nothing
// but hold the lock (no handler runs then).
void before_fork() {
  AgentScope scope;
  g_session_mutex.lock();
  if (!g_active.load(std::memory_order_relaxed)) return;
  for (uint32_t i = 0; i < g_region.probe_count; ++i)
    g_missed_at_fork[i] = g_links[i] ? usprobe_link_missed(g_links[i]) : 0;
  // In this order, so that a signal handler that hits a probe in between finds a usable slot. A
  // slot of an earlier session (t_slot_session) is not this session's: a hit takes a new one.
  t_slot_at_fork = thread_slot_current() ? t_slot : nullptr;
  // Hits inside fork() take the full path (its slot is found through t_forking); the next one
  // after it sets the home again, in the parent and in the child (its own slot).
  set_counter_home(0);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_forking = true;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_slot = nullptr;
}

void after_fork_parent() {
  AgentScope scope;
  if (g_active.load(std::memory_order_relaxed)) {
    t_slot = t_slot_at_fork;  // or one that a hit inside fork() took, in this session
    std::atomic_signal_fence(std::memory_order_seq_cst);
    t_forking = false;
    t_slot_at_fork = nullptr;
  }
  g_session_mutex.unlock();
}

// The child's only thread: its slot (the parent thread's, copied by fork) is not its own. A hit
// between the split and here may already have taken one for the child (first_or_fork_slot).
// Attached, the child carries the session's probes (the engine's state was copied with the rest
// of memory): it claims a ProcessRecord and watches the inherited control pipe itself, whose end
// of file reaches every reader when the CLI's write end closes.
void after_fork_child() {
  AgentScope scope;
  if (g_active.load(std::memory_order_relaxed)) {
    const auto pid = static_cast<int32_t>(getpid());
    if (g_region.pid != pid) {
      g_region.pid = pid;
      t_slot = nullptr;
    }
    t_slot_at_fork = nullptr;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    t_forking = false;
    for (uint32_t i = 0; i < g_region.probe_count; ++i) g_missed_baseline[i] = g_missed_at_fork[i];
    if (g_attached) {
      g_record = claim_record();
      if (!g_record)
        post_notice(kNoticeInfo, -1,
                    "no process record left: usprobe does not wait for this child at the end");
      if (int err = start_watcher(); err != 0)
        post_notice(kNoticeError, -1,
                    fmt::format("cannot start the watcher thread: {}: this child keeps its probes",
                                strerror(err)));
    }
  }
  g_session_mutex.unlock();
}

// The engine's missed counts, less what the parent already reported, into this thread's slot.
void add_engine_missed() {
  SlotHeader *s = thread_slot();
  std::atomic<uint64_t> *missed = slot_missed(s, g_region.probe_count);
  for (uint32_t i = 0; i < g_region.probe_count; ++i) {
    if (!g_links[i]) continue;
    uint64_t m = usprobe_link_missed(g_links[i]);
    if (m > g_missed_baseline[i]) slot_add(s, missed[i], m - g_missed_baseline[i]);
  }
}

// At exit: the engine's missed counts go into this thread's slot. An atexit handler, not a
// destructor: destructors run after the engine's own static objects (registered with __cxa_atexit
// before this) have been destroyed.
//
// This thread stops counting here for good. What runs after this handler is mostly the agent's
// own teardown (the engine's static objects free thousands of blocks, which a libc:free probe
// would otherwise report), and the command's .fini_array destructors, whose hits are lost with it.
// An attached session is left as it is from here on (g_exiting): the engine is about to be
// destroyed, and the process is leaving with its probes.
void at_exit() {
  t_in_agent = true;
  set_counter_home(0);
  auto finish = [] {
    post_maps(kMapsExit);  // stacks mode: a library loaded since the start names its addresses
    add_engine_missed();
  };
  // A launched session never ends: nothing to wait for (and no lock that an interrupted fork
  // handler of this thread could hold).
  if (g_launched.load(std::memory_order_relaxed)) {
    finish();
    return;
  }
  std::lock_guard lock(g_session_mutex);
  g_exiting = true;
  if (g_active.load(std::memory_order_relaxed)) finish();
}

// Whether any probe has `%s` arguments for the trace handler to copy.
bool copies_strings(const std::vector<PlannedProbe> &plan) {
  return std::ranges::any_of(plan, [](const PlannedProbe &p) { return p.string_mask != 0; });
}

// Reads the plan and fills g_region's probe table. Returns the probes to attach, with the string
// masks of count mode cleared.
std::expected<std::vector<PlannedProbe>, std::string> load_plan(Header *h) {
  const char *text = reinterpret_cast<const char *>(h) + h->plan_offset;
  if (text[h->plan_size - 1] != '\0') return std::unexpected("the plan is not NUL-terminated");
  auto plan = parse_plan(std::string_view(text, h->plan_size - 1), h->probe_count);
  if (!plan) return plan;
  // String masks matter in trace mode only.
  if (h->mode != kModeTrace)
    for (PlannedProbe &p : *plan) p.string_mask = 0;
  if (copies_strings(*plan) && (h->string_size == 0 || h->string_size > (1u << 16)))
    return std::unexpected(fmt::format("string_size {} with `%s` arguments", h->string_size));
  auto *probes = new ProbeInfo[plan->size()];
  for (size_t i = 0; i < plan->size(); ++i) {
    // Only the values that the probe's handler has: a function's arg0..arg5, a USDT note's
    // arg0..arg11 (arg6 on when asked for), and the return value at a return.
    const PlannedProbe &p = (*plan)[i];
    const bool returning = p.location.starts_with("uretprobe:");
    const bool usdt = p.location.starts_with("usdt:");
    const uint32_t flags = p.flags & (returning ? kPlanEntryArgs | kPlanEntryTime
                                      : usdt    ? kPlanMoreArgs
                                                : 0u);
    uint32_t mask = p.string_mask & ((1u << kMaxArgs) - 1);
    if (returning) mask |= p.string_mask & (1u << kRetvalArg);
    if (flags & kPlanMoreArgs) mask |= p.string_mask & ((1u << kMaxUsdtArgs) - 1);
    auto size = event_size(static_cast<uint32_t>(__builtin_popcount(mask)), h->string_size);
    if (returning) size += sizeof(ReturnTail);
    if (flags & kPlanMoreArgs) size += kMoreArgsBytes;
    probes[i] = {mask, static_cast<uint32_t>(size), flags};
  }
  g_region.probes = probes;
  return plan;
}

// Marks in the region the probes placed in this process (placed_flags), for the CLI to tell a
// library that no process loaded from one whose functions were not called.
// Also which took the int3 path, and why (for the first few, kNoticeInt3), for the CLI to say at
// the end which probes paid a trap per hit.
void mark_placed() {
  if (!g_links) return;
  std::atomic<uint8_t> *placed = placed_flags(g_region.header);
  // This process's; mapping changes of a launched command may run in several threads at once.
  static std::atomic<unsigned> int3_notices{0};
  constexpr unsigned kMaxInt3Notices = 8;
  for (uint32_t i = 0; i < g_region.probe_count; ++i) {
    if (!g_links[i] || usprobe_link_sites(g_links[i]) == 0) continue;
    bool int3 = usprobe_link_uses_int3(g_links[i]);
    uint8_t want = int3 ? kPlacedSite | kPlacedInt3 : kPlacedSite;
    uint8_t had = placed[i].load(std::memory_order_relaxed);
    if ((had & want) == want) continue;
    // Relaxed: nothing is published with it.
    had = placed[i].fetch_or(want, std::memory_order_relaxed);
    if (int3 && !(had & kPlacedInt3) &&
        int3_notices.fetch_add(1, std::memory_order_relaxed) < kMaxInt3Notices) {
      post_notice(kNoticeInt3, static_cast<int32_t>(i), usprobe_link_int3_reason(g_links[i]));
    }
  }
}

// Probes on a program this process does not run: after the command's child exec'd another
// program, each exe: probe fails to attach in it. One notice for all of them, per program file,
// instead of one per probe (`exe:*` would post thousands, crowding out every other notice).
class OtherPrograms {
 public:
  // Takes probe `index` at `location` if its file is a program this process does not run.
  bool add(size_t index, std::string_view location) {
    if (location.starts_with("uretprobe:")) location.remove_prefix(10);
    if (location.starts_with("usdt:")) {  // usdt:PATH:PROVIDER:NAME
      location.remove_prefix(5);
      location = location.substr(0, location.rfind(':'));
    }
    size_t colon = location.rfind(':');  // the target (a name or an offset) has no ':'
    if (colon == std::string_view::npos) return false;
    std::string file(location.substr(0, colon));
    auto it = std::find_if(groups_.begin(), groups_.end(),
                           [&](const Group &g) { return g.file == file; });
    if (it == groups_.end()) {
      if (!is_other_program(file)) return false;
      it = groups_.insert(groups_.end(), Group{file, index, 0});
    }
    ++it->count;
    return true;
  }

  void post() const {
    if (groups_.empty()) return;
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    std::string_view own = n > 0 ? std::string_view(self, static_cast<size_t>(n)) : "?";
    for (const Group &g : groups_)
      post_notice(kNoticeOtherProgram, static_cast<int32_t>(g.first),
                  fmt::format("{} {}", g.count, own));
  }

 private:
  struct Group {
    std::string file;
    size_t first;
    size_t count;
  };

  static bool is_other_program(const std::string &file) {
    struct stat here, there;
    if (stat("/proc/self/exe", &here) != 0 || stat(file.c_str(), &there) != 0) return false;
    if (here.st_dev == there.st_dev && here.st_ino == there.st_ino) return false;
    auto elf = elf::ElfFile::open(file);
    return elf && (*elf)->is_program();
  }

  std::vector<Group> groups_;
};

// One batch for all probes; a notice for each that failed and one that sums up. A probe on a
// library this process has not loaded (yet) attaches with no site: the engine places it when the
// library is dlopened, so it is not a failure, and only the verbose summary counts it. (A probe
// on a program this process does not run, exe:func after an exec of another, fails to attach.)
// A session that could not start: the errno for usprobe_agent_attach and the reason.
struct Failure {
  int error;
  std::string message;
};

// Latency mode's timers, one per probe (core/probe.h, ExternalTimer): offsets from a slot's hits,
// the home that latency_entry_handler sets, of the probe's hits, returns and histogram. None when
// a slot is larger than 32-bit offsets reach.
static_assert(kTscShift == 32 && kLatencySubBits == kTimerSubBits);
std::vector<ExternalCounter> latency_timers(size_t n) {
  SlotHeader *s = g_region.overflow;  // every slot has the same layout
  const char *home = reinterpret_cast<const char *>(slot_hits(s));
  auto offset = [&](const void *p) {
    return static_cast<uint64_t>(static_cast<const char *>(p) - home);
  };
  std::vector<ExternalCounter> timers(n);
  for (size_t i = 0; i < n; ++i) {
    const LatencyHistogram &h = slot_histograms(s, g_region.hist_offset)[i];
    const uint64_t hits = offset(&slot_hits(s)[i]),
                   returns = offset(&slot_returns(s, g_region.probe_count)[i]),
                   sum = offset(&h.sum_ns), buckets = offset(&h.buckets[0]);
    if (std::max({hits, returns, sum, buckets}) + sizeof h > UINT32_MAX) return {};
    timers[i] = {true,
                 static_cast<uint32_t>(hits),
                 g_region.session,
                 {true, static_cast<uint32_t>(returns), static_cast<uint32_t>(sum),
                  static_cast<uint32_t>(buckets), g_region.tsc_to_ns_mult}};
  }
  g_counter_tag.store(g_region.session, std::memory_order_relaxed);
  return timers;
}

std::expected<void, Failure> attach_all(const std::vector<PlannedProbe> &plan) {
  size_t n = plan.size();
  bool trace = g_region.mode == kModeTrace;
  bool stacks = g_region.mode == kModeStacks;
  std::vector<const char *> locations(n);
  std::vector<usprobe_consumer> consumers(n);
  std::vector<int> errors(n);
  for (size_t i = 0; i < n; ++i) {
    locations[i] = plan[i].location.c_str();
    void *index = reinterpret_cast<void *>(static_cast<uintptr_t>(i));
    if (stacks)  // probed instructions: the CLI plans no return probe
      consumers[i] = {stack_handler, index, nullptr};
    else if (g_region.mode == kModeRun && plan[i].location.starts_with("uretprobe:"))
      consumers[i] = {nullptr, index, bt_handler};
    else if (g_region.mode == kModeRun)
      consumers[i] = {bt_handler, index, nullptr};
    else if (g_region.mode == kModeLatency)  // function entries: the CLI plans nothing else
      consumers[i] = {latency_entry_handler, index, latency_return_handler};
    else if (plan[i].location.starts_with("uretprobe:") && trace)  // the CLI's return probe
      consumers[i] = {g_region.probes[i].flags != 0 ? trace_return_entry_handler : nullptr, index,
                      trace_return_handler};
    else if (plan[i].location.starts_with("uretprobe:"))
      consumers[i] = {nullptr, index, count_handler};
    else if (plan[i].location.starts_with("usdt:") && trace)  // argN: the note's argument N
      consumers[i] = {trace_usdt_handler, index, nullptr};
    else
      consumers[i] = {trace ? trace_handler : count_handler, index, nullptr};
  }
  g_links = new usprobe_link *[n]();
  timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  // The stacks handler and the trace handlers with trace_stacks call the unwinder, which may use
  // any register: the trampoline saves the vector state for them. The handlers are built with
  // -mgeneral-regs-only.
  unsigned flags = g_region.records_stacks() ? 0u : unsigned{USPROBE_GENERAL_REGS_ONLY};
  if (g_region.mode == kModeRun && (g_bt.head.flags & bt::kProgramStacks)) flags = 0;
  // count_handler and latency_entry_handler read no register: the trampoline's fast path runs
  // them (a latency hit: 20 ns less).
  if (g_region.mode == kModeCount || g_region.mode == kModeLatency) flags |= USPROBE_NO_REGS;
  // USPROBE_FORCE_INT3=1 in the command's environment puts every probe on the int3 path: tests of
  // that path on real programs, whatever jump the engine could place.
  if (const char *force = getenv("USPROBE_FORCE_INT3"); force && std::string_view(force) == "1")
    flags |= USPROBE_FORCE_INT3;
  // `usprobe count`: each entry probe counts on the counter path where it can
  // (count_in_the_engine below), set up with the consumers: no second publication of each probe;
  // each return probe on the return path, its returns into the same counter (at_return).
  std::vector<ExternalCounter> external;
  if (g_region.mode == kModeCount && g_region.session <= kMaxCounterTag) {
    g_counter_tag.store(g_region.session, std::memory_order_relaxed);
    external.resize(n);
    for (size_t i = 0; i < n; ++i)
      external[i] = {true,
                     static_cast<uint32_t>(i * sizeof(std::atomic<uint64_t>)),
                     g_region.session,
                     {},
                     plan[i].location.starts_with("uretprobe:")};
  }
  // `usprobe latency`: the engine times each call itself (ExternalTimer) into the thread's slot,
  // the counters and histogram the handlers add to, where the thread's home is set.
  if (g_region.mode == kModeLatency && g_region.session <= kMaxCounterTag)
    external = latency_timers(n);
  // Once the first sites are patched, the agent's own calls of probed functions (its allocations
  // and frees, 130,000 in a libc:* attach) hit them. They are not the program's: count_handler
  // drops them (t_in_agent), at the cost of the full path each. In count mode they take the counter
  // path into a sink instead (CounterPathSink). Mapped: a home lies above kCounterBias, which a
  // non-PIE program's heap does not.
  const size_t sink_size = (n + 1) * sizeof(uint64_t);
  void *sink =
      external.empty() || g_region.mode != kModeCount
          ? MAP_FAILED
          : mmap(nullptr, sink_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  int attached;
  {
    CounterPathSink sunk(sink == MAP_FAILED ? 0
                                            : tagged_counter_home(reinterpret_cast<uint64_t>(sink),
                                                                  g_region.session));
    attached = api::attach_batch(locations.data(), n, consumers.data(), flags, g_links,
                                 errors.data(), external);
  }
  if (sink != MAP_FAILED) munmap(sink, sink_size);
  double ms = ms_since(t0);
  if (attached < 0)
    return std::unexpected(
        Failure{-attached, fmt::format("attaching the probes failed: {}", usprobe_last_error())});

  // The engine's messages for the failed locations, one line each, in order.
  std::string_view messages = usprobe_last_error();
  OtherPrograms other_programs;
  int int3 = 0;
  size_t placed = 0, waiting = 0;
  for (size_t i = 0; i < n; ++i) {
    if (g_links[i]) {
      if (usprobe_link_sites(g_links[i]) > 0) {
        ++placed;
        int3 += usprobe_link_uses_int3(g_links[i]);
      } else {
        ++waiting;
      }
      continue;
    }
    size_t eol = messages.find('\n');
    std::string_view line = messages.substr(0, eol);
    messages = eol == std::string_view::npos ? std::string_view() : messages.substr(eol + 1);
    if (line.empty()) line = usprobe_strerror(errors[i]);
    if (!other_programs.add(i, plan[i].location))
      post_notice(kNoticeProbe, static_cast<int32_t>(i), line);
  }
  other_programs.post();
  // Relaxed, as agents_started.
  if (attached > 0) g_region.header->agents_attached.fetch_add(1, std::memory_order_relaxed);
  std::string count = placed == n ? fmt::format("{}", placed) : fmt::format("{} of {}", placed, n);
  post_notice(kNoticeInfo, -1,
              fmt::format("{} probes attached in {:.1f} ms ({} int3)", count, ms, int3));
  if (waiting > 0)
    post_notice(kNoticeInfo, -1,
                waiting == 1
                    ? std::string("1 probe waits for its library to be loaded")
                    : fmt::format("{} probes wait for their library to be loaded", waiting));
  return {};
}

// `usprobe count`: each entry probe alone at its function is counted by the engine's counter path
// (core/thread_record.h) straight into the hitting thread's slot, the counter count_handler adds
// to, in a few instructions and no call. count_handler counts what the full path sees and sets
// each thread's home to its slot (g_counter_path_homes), where the slot is the thread's own for
// good: not the overflow slot, not inside fork() or a vfork child. Homes and words carry the
// session's number as their tag: a session that ends (attached, -p) leaves threads' homes pointing
// into a region that is unmapped, and other threads' TLS cannot be reached to clear them; with the
// next session's tag the counter path does not take such a home, and the thread's next hit, on the
// full path, sets its home in the new region.
//
// `usprobe latency` likewise: each probe alone at its function is timed by the engine
// (latency_timers) into the thread's slot, where latency_entry_handler has set its home; the
// handlers time the rest.
void count_in_the_engine(const std::vector<PlannedProbe> &plan) {
  if (g_region.session > kMaxCounterTag) return;  // tags used up: the handlers count alone
  const bool latency = g_region.mode == kModeLatency;
  size_t placed = 0;
  std::vector<usprobe_link *> links, returns;  // count mode's return probes: the return path
  for (size_t i = 0; i < plan.size(); ++i) {
    if (!g_links[i] || usprobe_link_sites(g_links[i]) == 0) continue;
    ++placed;
    (latency || !plan[i].location.starts_with("uretprobe:") ? links : returns)
        .push_back(g_links[i]);
  }
  const size_t n = latency ? registry::timed_by_engine(links)
                           : registry::on_counter_path(links) + registry::on_return_path(returns);
  g_counter_path_homes.store(true, std::memory_order_relaxed);
  const char *how = latency ? "are timed by the engine (no handler call a hit)"
                            : "count on the counter path or the return path (no call a hit)";
  post_notice(kNoticeInfo, -1, fmt::format("{} of {} placed probes {}", n, placed, how));
}

// The engine's mapping listener (registered once): after a dlopen, the probes on the library it
// loaded are placed now; and (stacks mode) a library loaded later, and unloaded before the process
// ends, is named from the mappings written right after its dlopen. It runs inside the engine's
// handler of the dynamic linker's hook, so it must never wait for the start or end of a session,
// which wait for handlers to finish: it only tries the lock, and when a start holds it the start
// marks what was placed itself, after attaching.
void on_mapping_change(void *) {
  AgentScope in_agent;
  auto mark = [] {
    if (!g_active.load(std::memory_order_relaxed)) return;
    mark_placed();
    if (g_region.records_stacks()) post_maps(kMapsChange);
  };
  // A launched session never ends; and the thread that starts or ends one holds the lock already.
  if (g_launched.load(std::memory_order_relaxed) || t_session_owner) {
    mark();
    return;
  }
  std::unique_lock lock(g_session_mutex, std::try_to_lock);
  if (lock.owns_lock()) mark();
}

// What is registered once per process, by the first session that needs it, and does nothing while
// no session is active. Under g_session_mutex.
std::expected<void, Failure> install_once(bool fault_fixup) {
  static bool fixup_installed = false;
  static bool registered = false;
  if (fault_fixup && !fixup_installed) {
    if (auto ok = install_fault_fixup(); !ok) return std::unexpected(Failure{EINVAL, ok.error()});
    fixup_installed = true;
  }
  if (!registered) {
    if (int err = pthread_atfork(before_fork, after_fork_parent, after_fork_child); err != 0)
      return std::unexpected(
          Failure{err, fmt::format("pthread_atfork: {}", usprobe_strerror(-err))});
    usprobe_on_mapping_change(on_mapping_change, nullptr);
    registered = true;
  }
  return {};
}

// Frees what a session allocated, unmaps its region and closes its control pipe. Only once no
// handler of it can run.
void forget_session() {
  delete[] g_links;  // the links themselves were freed by usprobe_detach_batch
  delete[] g_missed_baseline;
  delete[] g_missed_at_fork;
  g_links = nullptr;
  g_missed_baseline = g_missed_at_fork = nullptr;
  g_record = nullptr;
  g_attached = false;
  drop_region();
  if (g_control_fd >= 0) close(g_control_fd);
  g_control_fd = -1;
}

// The start of a session, launched or attached, with g_session_mutex held and the region mapped
// and checked. On failure nothing is attached and the region is still g_region's: the launched
// path posts the reason there, the attached one unmaps it (forget_session).
std::expected<void, Failure> start_session(const Mapping &m, bool attached) {
  Header *h = m.header;
  // A new number before anything of this session is used: threads' slots of an earlier session
  // (attach mode) are stale from here on (slots.h).
  ++g_region.session;
  take_layout(m);
  g_region.pid = static_cast<int32_t>(getpid());
  // Relaxed: a counter for the CLI's summary; nothing is published with it.
  h->agents_started.fetch_add(1, std::memory_order_relaxed);

  auto plan = load_plan(h);
  if (!plan) return std::unexpected(Failure{EPROTO, plan.error()});
  g_region.mode = h->mode;
  g_region.probe_count = h->probe_count;
  g_region.string_size = h->string_size;
  g_region.max_slots = h->max_slots;
  g_region.ring_size = h->ring_size;
  g_region.hist_offset = h->hist_offset;
  g_region.tsc_to_ns_mult = h->tsc_to_ns_mult;
  g_region.stack_flags = h->stack_flags;
  g_region.trace_stacks = h->mode == kModeTrace || h->mode == kModeRun ? h->trace_stacks : 0;
  g_region.table_offset = h->table_offset;
  g_region.table_entries = h->table_entries;
  g_region.table_arena_words = h->table_arena_words;
  g_region.overflow = region_slot(g_region.max_slots - 1);
  if (h->mode == kModeRun)
    if (std::string why = bt_load(h, !attached); !why.empty())
      return std::unexpected(Failure{EPROTO, why});
  g_missed_baseline = new uint64_t[h->probe_count]();
  g_missed_at_fork = new uint64_t[h->probe_count]();

  mark_exec_orphans(g_region.pid, static_cast<int32_t>(gettid()));
  if (auto ok = install_once(copies_strings(*plan)); !ok) return ok;
  if (g_region.records_stacks()) {
    // Relaxed: only distinct numbers are needed; before any probe of this image is attached.
    g_region.image = h->images.fetch_add(1, std::memory_order_relaxed) + 1;
    post_maps(kMapsAttach);  // before any stack of this image can be recorded
  }
  g_attached = attached;
  if (!attached) g_launched.store(true, std::memory_order_relaxed);
  g_active.store(true, std::memory_order_relaxed);
  if (auto ok = attach_all(*plan); !ok) {
    g_active.store(false, std::memory_order_relaxed);
    return ok;
  }
  if (h->mode == kModeCount || h->mode == kModeLatency) count_in_the_engine(*plan);
  mark_placed();
  // A library that another thread loaded while this one attached (its listener found the lock
  // taken): named now.
  if (attached && g_region.records_stacks()) post_maps(kMapsChange);
  // Once, after the first attach: the engine's statics that attaching constructs are destroyed
  // after this handler runs (exit handlers run in the reverse order of their registration).
  static bool exit_registered = false;
  if (!exit_registered) {
    atexit(at_exit);
    exit_registered = true;
  }
  return {};
}

// Claims a free ProcessRecord for this process (protocol/attach.h); nullptr when none is left.
ProcessRecord *claim_record() {
  auto *records = reinterpret_cast<ProcessRecord *>(reinterpret_cast<char *>(g_region.header) +
                                                    g_region.process_offset);
  for (uint32_t i = 0; i < g_region.max_processes; ++i) {
    ProcessRecord &r = records[i];
    int32_t expected = 0;
    // Relaxed: the pid only hands out distinct records; the state publishes.
    if (r.pid.load(std::memory_order_relaxed) != 0 ||
        !r.pid.compare_exchange_strong(expected, g_region.pid, std::memory_order_relaxed))
      continue;
    r.state.store(kProcessAttached, std::memory_order_release);
    return &r;
  }
  return nullptr;
}

// Ends the attached session of this process, with g_session_mutex held: the engine's missed
// counts into the region, every probe detached, the record marked, the region unmapped and the
// control pipe closed. False when the engine could not detach: the probes then stay, and so does
// everything their handlers use (the session stays active).
bool stop_session() {
  // Now: detaching frees the links. Hits skipped between here and the detach are not counted.
  add_engine_missed();
  g_active.store(false, std::memory_order_relaxed);
  if (usprobe_detach_batch(g_links, g_region.probe_count) < 0) {
    g_active.store(true, std::memory_order_relaxed);
    post_notice(kNoticeError, -1,
                fmt::format("detaching the probes failed: {}", usprobe_last_error()));
    return false;
  }
  // usprobe_detach_batch returns only once no handler of these links runs or will run (and no
  // thread is left in a trampoline): from here on nothing but this thread touches the region, and
  // unmapping it is safe. Release: the CLI reads the state with acquire, and then sees every count
  // this process wrote.
  if (g_record) g_record->state.store(kProcessDetached, std::memory_order_release);
  g_counter_path_homes.store(false, std::memory_order_relaxed);
  // A thread that could not be shown past the counter path's increment may still write into this
  // region's slots (registry::external_counters_maybe_in_use): the mapping stays, unused.
  if (registry::external_counters_maybe_in_use()) g_region.header = nullptr;
  forget_session();
  return true;
}

// The watcher's thread: it waits for the end of file on the control pipe (the CLI closed its
// write end, or died), then ends the session. The CLI writes nothing: any bytes are ignored.
void *watch(void *arg) {
  AgentScope in_agent;  // the whole thread is the agent's
  // Signals sent to the process are the program's, for its own threads (usprobe's own stay
  // unblocked: the engine's thread rounds need every thread).
  sigset_t all;
  sigfillset(&all);
  os::strip_guarded(&all);
  os::real_sigmask(SIG_SETMASK, &all, nullptr);
  const int fd = static_cast<int>(reinterpret_cast<intptr_t>(arg));
  char buffer[64];
  for (;;) {
    ssize_t n = read(fd, buffer, sizeof buffer);
    if (n > 0 || (n < 0 && errno == EINTR)) continue;
    break;  // end of file, or the descriptor is gone (the program closed it): the end either way
  }
  SessionLock lock;
  // g_exiting: the process is leaving with its probes, and the engine is being destroyed.
  if (g_active.load(std::memory_order_relaxed) && g_attached && !g_exiting) stop_session();
  return nullptr;
}

// Starts this process's watcher, with g_session_mutex held. 0 or an errno.
int start_watcher() {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t thread;
  int err = pthread_create(&thread, &attr, watch,
                           reinterpret_cast<void *>(static_cast<intptr_t>(g_control_fd)));
  pthread_attr_destroy(&attr);
  if (err == 0) pthread_setname_np(thread, "usprobe-watch");
  return err;
}

// Whether this process's name (its comm, which the kernel sets at exec to the program's file name,
// cut to 15 bytes) contains the region's comm_filter; true when there is none.
bool name_matches(const Header &h) {
  std::string_view filter(h.comm_filter, strnlen(h.comm_filter, sizeof h.comm_filter));
  if (filter.empty()) return true;
  char comm[17] = {};
  if (prctl(PR_GET_NAME, comm) != 0) return true;  // cannot tell: probed, as without -n
  return std::string_view(comm).find(filter) != std::string_view::npos;
}

// The probed files as the CLI prepared them (protocol/prepared.h), handed to the engine, so that
// this process neither reads and indexes nor decodes those files again. Anything unexpected (no
// such memfd, its seals missing, a count or a place beyond its size) and that file, or all, is not
// handed: the engine reads and decodes the files itself, as it would without the table. The
// memfd stays mapped (read-only, pages shared with every other process of the command) for as long
// as an ElfFile made from it lives.
void take_prepared_files(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  constexpr int kSeals = F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK;
  struct stat st {};
  const int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & kSeals) != kSeals || fstat(fd, &st) != 0 ||
      st.st_size < static_cast<off_t>(sizeof(PreparedHead))) {
    close(fd);
    return;
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  void *mem = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (mem == MAP_FAILED) return;
  std::shared_ptr<const void> keep(mem,
                                   [size](const void *p) { munmap(const_cast<void *>(p), size); });
  const auto *base = static_cast<const uint8_t *>(mem);
  const auto *head = static_cast<const PreparedHead *>(mem);
  const uint64_t records = sizeof(PreparedHead) + uint64_t{head->files} * sizeof(PreparedFile);
  if (head->magic != kPreparedMagic || head->version != kPreparedVersion ||
      head->files > kPreparedMaxFiles || records > size ||
      head->words > (size - records) / sizeof(uint64_t))
    return;
  const auto *files = reinterpret_cast<const PreparedFile *>(head + 1);
  const auto *words = reinterpret_cast<const uint64_t *>(base + records);
  auto inside = [size](uint64_t at, uint64_t n) { return at <= size && n <= size - at; };
  for (uint32_t i = 0; i < head->files; ++i) {
    const PreparedFile &f = files[i];
    const size_t id_length = strnlen(f.build_id, sizeof f.build_id);
    if (id_length == sizeof f.build_id || f.first > head->words ||
        f.count > head->words - f.first || f.ranges_first > head->words ||
        f.ranges > (head->words - f.ranges_first) / 2)
      continue;
    const elf::FileId id{static_cast<dev_t>(f.dev), static_cast<ino_t>(f.ino)};
    if (f.image_size != 0 && inside(f.bytes_at, f.size) && inside(f.image_at, f.image_size))
      elf::ElfFile::provide_prepared({f.dev, f.ino, f.size, f.mtime_sec, f.mtime_nsec},
                                     {base + f.bytes_at, f.size}, {base + f.image_at, f.image_size},
                                     keep);
    std::vector<std::pair<uint64_t, uint64_t>> ranges(f.ranges);
    for (uint64_t k = 0; k < f.ranges; ++k)
      ranges[k] = {words[f.ranges_first + 2 * k], words[f.ranges_first + 2 * k + 1]};
    // The engine binary-searches both: a table that is not sorted is not used.
    if (!std::is_sorted(ranges.begin(), ranges.end()) ||
        !std::is_sorted(words + f.first, words + f.first + f.count))
      continue;
    provide_file_branch_targets(id, std::string(f.build_id, id_length),
                                std::vector<uint64_t>(words + f.first, words + f.first + f.count),
                                std::move(ranges));
  }
}

// usprobe -p: the prepared files, handed over by the injector as a descriptor of this process
// whose memfd is named kPreparedMemfdName (protocol/prepared.h). The newest such descriptor is
// taken; every one is closed (one left by an injection that failed after handing it over, too).
void take_handed_prepared_files() {
  DIR *dir = opendir("/proc/self/fd");
  if (!dir) return;
  const std::string name = fmt::format("/memfd:{} (deleted)", kPreparedMemfdName);
  std::vector<int> handed;
  while (dirent *e = readdir(dir)) {
    char *end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    char link[128];
    const ssize_t n = readlink(fmt::format("/proc/self/fd/{}", fd).c_str(), link, sizeof link - 1);
    if (n > 0 && std::string_view(link, static_cast<size_t>(n)) == name)
      handed.push_back(static_cast<int>(fd));
  }
  closedir(dir);
  if (handed.empty()) return;
  std::sort(handed.begin(), handed.end());
  take_prepared_files(fmt::format("/proc/self/fd/{}", handed.back()).c_str());
  for (int fd : handed) close(fd);
}

// Runs before main, and after the engine's static objects are constructed (agent/CMakeLists.txt
// links the engine first for that). A launched command: any problem is one line on stderr (and a
// notice when the region is mapped), and the process runs as if the agent were not there.
// Without USPROBE_AGENT_FD the agent was loaded some other way, normally by usprobe -p's injector,
// which starts a session with usprobe_agent_attach: it stays silent and dormant until then.
__attribute__((constructor)) void agent_start() {
  // The engine's counters in this process are the agent's slots (count_in_the_engine).
  counter_path_external();
  AgentScope scope;
  const char *fd = getenv(kEnvFd);
  if (!fd) return;
  auto mapping = map_region(fd, getenv(kEnvPath));
  if (!mapping) {
    report_error(mapping.error());
    return;
  }
  // usprobe -n: a process of another name takes no part (protocol.h, comm_filter). Its children
  // inherit the fd and the environment, and an exec'd image decides again with its new name.
  if (!name_matches(*mapping->header)) {
    // Relaxed: a counter for the CLI's summary; nothing is published with it.
    mapping->header->agents_filtered.fetch_add(1, std::memory_order_relaxed);
    munmap(mapping->header, mapping->length);
    return;
  }
  if (const char *prepared = getenv(kEnvPrepared)) take_prepared_files(prepared);
  SessionLock lock;
  if (auto ok = start_session(*mapping, false); !ok) report_error(ok.error().message);
}

}  // namespace
}  // namespace usprobe::agent

// protocol/attach.h: the thread round's signal, its handler installed, for the CLI to unblock in
// the threads that block it before the attach.
extern "C" __attribute__((visibility("default"))) int usprobe_agent_prepare() {
  usprobe::agent::AgentScope scope;
  auto sig = usprobe::os::round_signal();
  return sig ? *sig : -sig.error().code;
}

// protocol/attach.h. Runs on a thread of the injector's (not the program's), while the program's
// threads run.
extern "C" __attribute__((visibility("default"))) int usprobe_agent_attach(int region_fd,
                                                                           int control_fd,
                                                                           char *message,
                                                                           unsigned long size) {
  using namespace usprobe::agent;
  static_assert(std::is_same_v<decltype(&usprobe_agent_attach), AttachFunction>);
  AgentScope in_agent;
  auto say = [&](std::string_view why) {
    if (!message || size == 0) return;
    size_t n = std::min<size_t>(why.size(), size - 1);
    std::memcpy(message, why.data(), n);
    message[n] = '\0';
  };
  auto refuse = [&](int err, std::string_view why) {
    say(why);
    if (region_fd >= 0) close(region_fd);
    if (control_fd >= 0) close(control_fd);
    return -err;
  };
  say("");
  if (region_fd < 0 || control_fd < 0)
    return refuse(EBADF,
                  fmt::format("bad descriptors: region {}, control {}", region_fd, control_fd));
  SessionLock lock;
  if (g_active.load(std::memory_order_relaxed) || g_exiting)
    return refuse(EBUSY, fmt::format("pid {} is probed by another usprobe session", getpid()));
  // Another copy of the agent in the global scope (preloaded by a usprobe command that launched
  // this process) has an engine of its own: two engines patching the same code would break it.
  // Told apart by the object that defines the symbol (&usprobe_agent_attach itself would resolve
  // to the first definition, theirs).
  Dl_info mine{}, theirs{};
  if (void *other = dlsym(RTLD_DEFAULT, kAttachSymbol);
      other && dladdr(reinterpret_cast<void *>(&watch), &mine) != 0 &&
      dladdr(other, &theirs) != 0 && mine.dli_fbase != theirs.dli_fbase)
    return refuse(EBUSY, fmt::format("pid {} is probed by another usprobe session (it was started "
                                     "by usprobe, whose agent it carries)",
                                     getpid()));
  take_handed_prepared_files();
  auto mapping = map_region_fd(region_fd, fmt::format("region fd {}", region_fd));
  if (!mapping) return refuse(EPROTO, mapping.error());
  if (mapping->header->max_processes == 0) {
    munmap(mapping->header, mapping->length);
    return refuse(EPROTO, fmt::format("region fd {}: no process records", region_fd));
  }
  g_control_fd = control_fd;
  auto fail = [&](int err, std::string_view why) {
    g_control_fd = -1;  // refuse closes it
    forget_session();
    return refuse(err, why);
  };
  if (auto ok = start_session(*mapping, true); !ok)
    return fail(ok.error().error, ok.error().message);
  g_record = claim_record();
  int err = g_record ? start_watcher() : EPROTO;
  if (err != 0) {
    std::string why = g_record ? fmt::format("cannot start the watcher thread: {}", strerror(err))
                               : std::string("no free process record in the region");
    g_control_fd = -1;  // refuse closes it (forget_session must not close it first)
    if (!stop_session()) {
      // The probes stay, with their region: nothing to close here.
      say(why);
      return -err;
    }
    return refuse(err, why);
  }
  close(region_fd);  // the mapping stays
  return 0;
}
