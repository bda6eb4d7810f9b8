// libusprobe-agent.so: what the usprobe CLI preloads into the command it runs
// (protocol/protocol.h).
//
// Before main, the constructor maps the region named by USPROBE_AGENT_FD, reads the plan and
// attaches every probe in one batch, with the count, trace or latency handlers (handlers.h) or the
// stacks handler (stack_handler.h) as the consumer. In stacks mode it also writes the process's
// mappings into the region before attaching, and again at exit if they changed (maps.h). From then
// on each thread of the process counts its hits into a slot of its own. The agent follows the
// command: a forked child keeps the patched probes and counts into slots tagged with its own pid
// (fork handlers below); an exec'd image loads the agent again through the inherited environment
// and fd, and attaches again. At exit the engine's missed counts (hits it skipped to avoid
// recursion) are added to the region. Probes are never detached: the process is leaving, and its
// other threads may still be running.
//
// Nothing here writes to stdout: the command's output is the user's.
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "agent/agent_scope.h"
#include "agent/fault_fixup.h"
#include "agent/handlers.h"
#include "agent/maps.h"
#include "agent/notices.h"
#include "agent/plan.h"
#include "agent/region.h"
#include "agent/slots.h"
#include "agent/stack_handler.h"
#include "elf/elf_file.h"
#include "protocol/protocol.h"
#include "usprobe/usprobe.h"

namespace usprobe::agent {
namespace {

// Set once by the constructor, never freed (the probes stay attached for the life of the process;
// plain pointers, so that nothing is destroyed at exit while threads still count).
usprobe_link **g_links = nullptr;  // by probe index; nullptr where the probe did not attach
// The engine's missed count of each link when this process was forked: counted by the parent,
// which reports it itself. Zero in the process that attached.
uint64_t *g_missed_baseline = nullptr;
uint64_t *g_missed_at_fork = nullptr;  // filled by before_fork, under g_fork_mutex
std::mutex g_fork_mutex;               // one fork at a time fills g_missed_at_fork

double ms_since(const timespec &t0) {
  timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return static_cast<double>(t1.tv_sec - t0.tv_sec) * 1e3 +
         static_cast<double>(t1.tv_nsec - t0.tv_nsec) / 1e6;
}

// Fork handlers. Only the agent's own work in them is the agent's (AgentScope): everything else
// that runs inside fork() is the program's and is counted, on either side of the split: the
// program's fork handlers (prepare handlers run in the reverse order of registration, parent and
// child handlers in order, so those registered before the agent's constructor run between this
// prepare handler and the parent or child handler, and the others outside), libc's own locking of
// malloc and stdio around the split, and _Fork itself. Between the prepare handler and the parent
// or child handler, hits find their slot through t_forking (slots.h).
void before_fork() {
  AgentScope scope;
  g_fork_mutex.lock();
  for (uint32_t i = 0; i < g_region.probe_count; ++i)
    g_missed_at_fork[i] = g_links[i] ? usprobe_link_missed(g_links[i]) : 0;
  // In this order, so that a signal handler that hits a probe in between finds a usable slot.
  t_slot_at_fork = t_slot;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_forking = true;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_slot = nullptr;
}

void after_fork_parent() {
  AgentScope scope;
  t_slot = t_slot_at_fork;  // or one that a hit inside fork() took
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_forking = false;
  t_slot_at_fork = nullptr;
  g_fork_mutex.unlock();
}

// The child's only thread: its slot (the parent thread's, copied by fork) is not its own. A hit
// between the split and here may already have taken one for the child (first_or_fork_slot).
void after_fork_child() {
  AgentScope scope;
  const auto pid = static_cast<int32_t>(getpid());
  if (g_region.pid != pid) {
    g_region.pid = pid;
    t_slot = nullptr;
  }
  t_slot_at_fork = nullptr;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_forking = false;
  for (uint32_t i = 0; i < g_region.probe_count; ++i) g_missed_baseline[i] = g_missed_at_fork[i];
  g_fork_mutex.unlock();
}

// At exit: the engine's missed counts, less what the parent already reported, go into this
// thread's slot. An atexit handler, not a destructor: destructors run after the engine's own static
// objects (registered with __cxa_atexit before this) have been destroyed.
//
// This thread stops counting here for good. What runs after this handler is mostly the agent's
// own teardown (the engine's static objects free thousands of blocks, which a libc:free probe
// would otherwise report), and the command's .fini_array destructors, whose hits are lost with it.
void add_engine_missed() {
  t_in_agent = true;
  post_maps(kMapsExit);  // stacks mode: a library loaded since the start names its addresses
  SlotHeader *s = thread_slot();
  std::atomic<uint64_t> *missed = slot_missed(s, g_region.probe_count);
  for (uint32_t i = 0; i < g_region.probe_count; ++i) {
    if (!g_links[i]) continue;
    uint64_t m = usprobe_link_missed(g_links[i]);
    if (m > g_missed_baseline[i]) slot_add(s, missed[i], m - g_missed_baseline[i]);
  }
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
    uint32_t mask = (*plan)[i].string_mask;
    auto size = event_size(static_cast<uint32_t>(__builtin_popcount(mask)), h->string_size);
    probes[i] = {mask, static_cast<uint32_t>(size)};
  }
  g_region.probes = probes;
  return plan;
}

// Marks in the region the probes placed in this process (placed_flags), for the CLI to tell a
// library that no process loaded from one whose functions were not called.
void mark_placed() {
  if (!g_links) return;
  std::atomic<uint8_t> *placed = placed_flags(g_region.header);
  for (uint32_t i = 0; i < g_region.probe_count; ++i)
    if (g_links[i] && placed[i].load(std::memory_order_relaxed) == 0 &&
        usprobe_link_sites(g_links[i]) > 0)
      placed[i].store(1, std::memory_order_relaxed);  // nothing is published with it
}

// Probes on a program this process does not run: after the command's child exec'd another
// program, each exe: probe fails to attach in it. One notice for all of them, per program file,
// instead of one per probe (`exe:*` would post thousands, crowding out every other notice).
class OtherPrograms {
 public:
  // Takes probe `index` at `location` if its file is a program this process does not run.
  bool add(size_t index, std::string_view location) {
    if (location.starts_with("uretprobe:")) location.remove_prefix(10);
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
void attach_all(const std::vector<PlannedProbe> &plan) {
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
    else if (g_region.mode == kModeLatency)  // function entries: the CLI plans nothing else
      consumers[i] = {latency_entry_handler, index, latency_return_handler};
    else if (plan[i].location.starts_with("uretprobe:"))  // the CLI's spelling of a return probe
      consumers[i] = {nullptr, index, trace ? trace_return_handler : count_handler};
    else
      consumers[i] = {trace ? trace_handler : count_handler, index, nullptr};
  }
  g_links = new usprobe_link *[n]();
  timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  // The stacks handler calls the unwinder, which may use any register: the trampoline saves the
  // vector state for it. The other handlers are built with -mgeneral-regs-only.
  unsigned flags = stacks ? 0u : unsigned{USPROBE_GENERAL_REGS_ONLY};
  // USPROBE_FORCE_INT3=1 in the command's environment puts every probe on the int3 path: tests of
  // that path on real programs, whatever jump the engine could place.
  if (const char *force = getenv("USPROBE_FORCE_INT3"); force && std::string_view(force) == "1")
    flags |= USPROBE_FORCE_INT3;
  int attached =
      usprobe_attach_batch_ex(locations.data(), n, consumers.data(), flags, g_links, errors.data());
  double ms = ms_since(t0);
  if (attached < 0) {
    report_error(fmt::format("attaching the probes failed: {}", usprobe_last_error()));
    return;
  }

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
}

// Runs before main, and after the engine's static objects are constructed (agent/CMakeLists.txt
// links the engine first for that). Any problem: one line on stderr (and a notice when the region
// is mapped), and the process runs as if the agent were not there.
__attribute__((constructor)) void agent_start() {
  AgentScope scope;
  const char *fd = getenv(kEnvFd);
  if (!fd) {
    report_error(fmt::format("{} is not set: this process is not probed", kEnvFd));
    return;
  }
  auto header = map_region(fd, getenv(kEnvPath));
  if (!header) {
    report_error(header.error());
    return;
  }
  Header *h = *header;
  take_layout(h);
  g_region.pid = static_cast<int32_t>(getpid());
  // Relaxed: a counter for the CLI's summary; nothing is published with it.
  h->agents_started.fetch_add(1, std::memory_order_relaxed);

  auto plan = load_plan(h);
  if (!plan) {
    report_error(plan.error());
    return;
  }
  g_region.mode = h->mode;
  g_region.probe_count = h->probe_count;
  g_region.string_size = h->string_size;
  g_region.max_slots = h->max_slots;
  g_region.ring_size = h->ring_size;
  g_region.hist_offset = h->hist_offset;
  g_region.tsc_to_ns_mult = h->tsc_to_ns_mult;
  g_region.stack_flags = h->stack_flags;
  g_region.table_offset = h->table_offset;
  g_region.table_entries = h->table_entries;
  g_region.table_arena_words = h->table_arena_words;
  g_region.overflow = region_slot(g_region.max_slots - 1);
  g_missed_baseline = new uint64_t[h->probe_count]();
  g_missed_at_fork = new uint64_t[h->probe_count]();

  mark_exec_orphans(g_region.pid, static_cast<int32_t>(gettid()));
  if (copies_strings(*plan)) {
    if (auto ok = install_fault_fixup(); !ok) {
      report_error(ok.error());
      return;
    }
  }
  if (int err = pthread_atfork(before_fork, after_fork_parent, after_fork_child); err != 0) {
    report_error(fmt::format("pthread_atfork: {}", usprobe_strerror(-err)));
    return;
  }
  if (h->mode == kModeStacks) {
    // Relaxed: only distinct numbers are needed; before any probe of this image is attached.
    g_region.image = h->images.fetch_add(1, std::memory_order_relaxed) + 1;
    post_maps(kMapsAttach);  // before any stack of this image can be recorded
  }
  // After a dlopen: the probes on the library it loaded are placed now. And (stacks mode) a
  // library loaded later, and unloaded before the process ends, is named from the mappings
  // written right after its dlopen.
  usprobe_on_mapping_change(
      [](void *) {
        AgentScope in_agent;
        mark_placed();
        if (g_region.mode == kModeStacks) post_maps(kMapsChange);
      },
      nullptr);
  attach_all(*plan);
  mark_placed();
  atexit(add_engine_missed);
}

}  // namespace
}  // namespace usprobe::agent
