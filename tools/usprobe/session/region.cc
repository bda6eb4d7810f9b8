#include "session/region.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <new>
#include <type_traits>

#include "os/linux/high_descriptor.h"

namespace usprobe::cli {
namespace {

using agent::Header;
using agent::SlotHeader;

constexpr uint64_t align_up(uint64_t v, uint64_t a) {
  return (v + a - 1) & ~(a - 1);
}

// No pid or tid is larger (PID_MAX_LIMIT on 64-bit Linux).
constexpr int32_t kPidLimit = 4 * 1024 * 1024;

bool id_in_range(int32_t id) {
  return id >= 0 && id <= kPidLimit;
}

// Why a configuration is refused, naming the field: "bad region configuration: ring_size 100
// (...)".
Error bad_config(std::string_view field, uint64_t value, std::string_view rule) {
  return Error{EINVAL, fmt::format("bad region configuration: {} {} ({})", field, value, rule)};
}

Result<void> check_config(const RegionConfig &config) {
  bool latency = config.mode == agent::kModeLatency;
  bool stacks = config.mode == agent::kModeStacks;
  auto refuse = [](std::string_view field, uint64_t value, std::string_view rule) -> Result<void> {
    return std::unexpected(bad_config(field, value, rule));
  };
  if (config.max_slots < 2)
    return refuse("max_slots", config.max_slots, "at least 2: one for a thread, one for overflow");
  if (latency && config.ring_size != 0)
    return refuse("ring_size", config.ring_size, "latency mode has no ring");
  if (config.ring_size != 0 &&
      (config.ring_size < sizeof(agent::Event) || std::popcount(config.ring_size) != 1))
    return refuse("ring_size", config.ring_size, "a power of two that holds an event, or 0");
  if (config.comm.size() >= sizeof(agent::Header::comm_filter))
    return refuse("comm", config.comm.size(), "a process name holds at most 15 bytes");
  if (latency && config.tsc_to_ns_mult == 0)
    return refuse("tsc_to_ns_mult", 0, "latency mode needs the TSC rate");
  if (stacks) {
    if (config.ring_size < agent::kMaxStackRecord)
      return refuse("ring_size", config.ring_size,
                    fmt::format("stacks mode needs room for the deepest stack, {} bytes",
                                agent::kMaxStackRecord));
    if (config.max_maps == 0) return refuse("max_maps", 0, "stacks mode needs maps entries");
    if (config.maps_text_size == 0)
      return refuse("maps_text_size", 0, "stacks mode needs room for maps text");
    if (config.table_entries > (1u << 24) || std::popcount(config.table_entries) > 1)
      return refuse("table_entries", config.table_entries, "a power of two up to 2^24, or 0");
  }
  if (config.mode == agent::kModeRun && (config.program.size() < sizeof(agent::bt::ProgramHeader) ||
                                         config.tsc_to_ns_mult == 0 || config.ring_size < 4096))
    return refuse("program", config.program.size(),
                  "run mode needs a program, the TSC rate and a ring of at least 4096 bytes");
  if (config.mode == agent::kModeTrace && config.trace_stacks &&
      (config.max_maps == 0 || config.maps_text_size == 0))
    return refuse("maps_text_size", config.maps_text_size, "trace stacks need the maps area");
  return {};
}

}  // namespace

std::string plan_text(const std::vector<PlanEntry> &plan) {
  std::string text = std::string(agent::kPlanFirstLine) + "\n";
  for (size_t i = 0; i < plan.size(); ++i)
    text += fmt::format("{}\t{}\t{}\n", i, plan[i].string_mask | plan[i].flags, plan[i].location);
  return text;
}

bool thread_alive(int32_t pid, int32_t tid) {
  return ::syscall(SYS_tgkill, pid, tid, 0) == 0 || errno != ESRCH;
}

uint64_t tsc_to_ns_mult(double ticks_per_ns) {
  if (!(ticks_per_ns > 0)) return 0;
  double mult = std::round(std::ldexp(1.0, agent::kTscShift) / ticks_per_ns);
  return mult >= 1 && mult < 0x1p63 ? static_cast<uint64_t>(mult) : 0;
}

Result<Region> Region::create(const RegionConfig &config, const std::vector<PlanEntry> &plan) {
  if (auto ok = check_config(config); !ok) return std::unexpected(ok.error());
  // Not close-on-exec: the command inherits it (USPROBE_AGENT_FD), and so do its children.
  int fd = ::memfd_create("usprobe", 0);
  if (fd < 0) return fail(errno, fmt::format("memfd_create: {}", std::strerror(errno)));
  // Near the top of the descriptor numbers (high_descriptor.h): the command's own first open()
  // gets 3, as it does unprobed.
  fd = os::move_descriptor_high(fd, false);
  // Never one of the standard descriptors (the CLI holds them, see cli.cc; this is for any other
  // caller): a command started without stdin would find the region on its fd 0.
  if (fd <= 2) {
    int high = ::fcntl(fd, F_DUPFD, 3);
    int err = errno;
    ::close(fd);
    if (high < 0) return fail(err, fmt::format("fcntl(F_DUPFD): {}", std::strerror(err)));
    fd = high;
  }
  return create(config, plan, fd);
}

Result<Region> Region::create(const RegionConfig &config, const std::vector<PlanEntry> &plan,
                              int fd) {
  if (auto ok = check_config(config); !ok) {
    ::close(fd);
    return std::unexpected(ok.error());
  }
  // A file that already holds something (or is not one at all) is not ours to fill.
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return fail(err, fmt::format("the shared region's file: {}", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode) || st.st_size != 0) {
    ::close(fd);
    return fail(EINVAL, fmt::format("the shared region's file is not an empty regular file ({})",
                                    S_ISREG(st.st_mode) ? fmt::format("{} bytes", st.st_size)
                                                        : std::string("not a file")));
  }
  bool latency = config.mode == agent::kModeLatency;
  bool stacks = config.mode == agent::kModeStacks;
  bool run = config.mode == agent::kModeRun;
  bool maps = stacks || ((config.mode == agent::kModeTrace || run) && config.trace_stacks);
  std::string text = plan_text(plan);
  auto probe_count = static_cast<uint32_t>(plan.size());
  uint64_t plan_offset = align_up(sizeof(Header), 64);
  uint64_t program_offset = align_up(plan_offset + text.size() + 1, 64);
  uint64_t placed_offset = align_up(program_offset + (run ? config.program.size() : 0), 64);
  uint64_t notice_offset = align_up(placed_offset + probe_count, 64);
  uint64_t slot_offset =
      align_up(notice_offset + uint64_t{config.max_notices} * sizeof(agent::Notice), 4096);
  // Run mode: the table area where stacks mode has its stack table.
  uint64_t stride = latency  ? agent::latency_stride_for(probe_count)
                    : stacks ? agent::stacks_stride_for(probe_count, config.table_entries,
                                                        config.table_arena_words, config.ring_size)
                    : run    ? agent::stack_table_offset(probe_count) +
                                align_up(config.tables_bytes, 64) + config.ring_size
                          : agent::slot_stride_for(probe_count, config.ring_size);
  uint64_t size = slot_offset + uint64_t{config.max_slots} * stride;
  uint64_t shared_offset = 0;
  if (run) {
    shared_offset = align_up(size, 4096);
    size = shared_offset + config.shared_bytes;
  }
  uint64_t maps_offset = 0, maps_text_offset = 0;
  if (maps) {
    maps_offset = align_up(size, 64);
    maps_text_offset =
        align_up(maps_offset + uint64_t{config.max_maps} * sizeof(agent::MapsEntry), 4096);
    size = maps_text_offset + config.maps_text_size;
  }
  uint64_t process_offset = 0;
  if (config.max_processes > 0) {
    process_offset = align_up(size, 64);
    size = process_offset + uint64_t{config.max_processes} * sizeof(agent::ProcessRecord);
  }

  // Sparse: the pages of slots and rings no thread uses are never allocated.
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int err = errno;
    ::close(fd);
    return fail(
        err, fmt::format("cannot size the shared region ({} bytes): {}", size, std::strerror(err)));
  }
  void *map = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) {
    int err = errno;
    ::close(fd);
    return fail(err, fmt::format("cannot map the shared region: {}", std::strerror(err)));
  }
  auto *hdr = new (map) Header{};
  hdr->magic = agent::kMagic;
  hdr->version = agent::kVersion;
  hdr->mode = config.mode;
  hdr->region_size = size;
  hdr->probe_count = probe_count;
  hdr->string_size = config.string_size;
  hdr->plan_offset = plan_offset;
  hdr->plan_size = text.size() + 1;
  hdr->placed_offset = placed_offset;
  hdr->notice_offset = notice_offset;
  hdr->max_notices = config.max_notices;
  hdr->max_slots = config.max_slots;
  hdr->slot_offset = slot_offset;
  hdr->slot_stride = stride;
  hdr->ring_offset = stride - config.ring_size;
  hdr->ring_size = config.ring_size;
  hdr->hist_offset = latency ? agent::latency_hist_offset(probe_count) : 0;
  hdr->tsc_to_ns_mult = latency || run ? config.tsc_to_ns_mult : 0;
  if (run) {
    hdr->table_offset = agent::stack_table_offset(probe_count);
    hdr->program_offset = program_offset;
    hdr->program_size = config.program.size();
    char *program = static_cast<char *>(map) + program_offset;
    std::memcpy(program, config.program.data(), config.program.size());
    agent::bt::ProgramHeader ph;
    std::memcpy(&ph, program, sizeof ph);
    ph.shared_offset = shared_offset;
    ph.shared_size = config.shared_bytes;
    ph.tables_bytes = config.tables_bytes;
    std::memcpy(program, &ph, sizeof ph);
  }
  if (maps) {
    hdr->trace_stacks = stacks ? 0 : 1;
    hdr->stack_flags = config.stack_flags;
    hdr->max_maps = config.max_maps;
    hdr->maps_offset = maps_offset;
    hdr->maps_text_offset = maps_text_offset;
    hdr->maps_text_size = config.maps_text_size;
  }
  if (stacks) {
    hdr->table_entries = config.table_entries;
    hdr->table_offset = agent::stack_table_offset(probe_count);
    hdr->table_arena_words = config.table_arena_words;
  }
  hdr->process_offset = process_offset;
  hdr->max_processes = config.max_processes;
  std::memcpy(hdr->comm_filter, config.comm.data(),
              std::min(config.comm.size(), sizeof hdr->comm_filter - 1));
  std::memcpy(static_cast<char *>(map) + plan_offset, text.c_str(), text.size() + 1);
  // What the CLI follows from now on: its own copy, not the header the command can rewrite.
  RegionLayout layout;
  layout.mode = config.mode;
  layout.region_size = size;
  layout.probe_count = probe_count;
  layout.string_size = hdr->string_size;
  layout.placed_offset = hdr->placed_offset;
  layout.notice_offset = hdr->notice_offset;
  layout.max_notices = hdr->max_notices;
  layout.max_slots = hdr->max_slots;
  layout.slot_offset = hdr->slot_offset;
  layout.slot_stride = hdr->slot_stride;
  layout.ring_offset = hdr->ring_offset;
  layout.ring_size = hdr->ring_size;
  layout.hist_offset = hdr->hist_offset;
  layout.max_maps = hdr->max_maps;
  layout.maps_offset = hdr->maps_offset;
  layout.maps_text_offset = hdr->maps_text_offset;
  layout.maps_text_size = hdr->maps_text_size;
  layout.table_entries = hdr->table_entries;
  layout.table_offset = hdr->table_offset;
  layout.table_arena_words = hdr->table_arena_words;
  layout.process_offset = hdr->process_offset;
  layout.max_processes = hdr->max_processes;
  layout.comm_filter = config.comm;
  if (run) {
    layout.table_offset = hdr->table_offset;
    layout.tables_bytes = config.tables_bytes;
    layout.shared_offset = shared_offset;
    layout.shared_bytes = config.shared_bytes;
  }
  // No barrier needed for the agents: they map the region after fork and exec (or, attached, after
  // the CLI has written it and made the remote call that hands it over), which order these writes
  // before anything they read.
  std::vector<uint32_t> masks;
  for (const PlanEntry &e : plan) masks.push_back(e.string_mask);
  return Region(fd, hdr, layout, std::move(masks));
}

Region::Region(int fd, Header *hdr, const RegionLayout &layout, std::vector<uint32_t> masks)
    : fd_(fd), hdr_(hdr), masks_(std::move(masks)), layout_(layout) {
  if (layout_.mode == agent::kModeLatency) folded_histograms_.resize(layout_.probe_count);
  if (layout_.mode == agent::kModeStacks) table_seen_.resize(layout_.max_slots);
  bad_slots_.resize(layout_.max_slots);
  bad_processes_.resize(layout_.max_processes);
}

Region::Region(Region &&other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      hdr_(std::exchange(other.hdr_, nullptr)),
      masks_(std::move(other.masks_)),
      folded_(std::move(other.folded_)),
      folded_histograms_(std::move(other.folded_histograms_)),
      next_notice_(other.next_notice_),
      next_maps_(other.next_maps_),
      pending_maps_(std::move(other.pending_maps_)),
      table_seen_(std::move(other.table_seen_)),
      layout_(other.layout_),
      corrupt_(other.corrupt_),
      bad_slots_(std::move(other.bad_slots_)),
      bad_processes_(std::move(other.bad_processes_)) {}

Region::~Region() {
  if (hdr_) ::munmap(hdr_, layout_.region_size);
  if (fd_ >= 0) ::close(fd_);
}

SlotHeader *Region::slot_at(uint32_t index) const {
  return reinterpret_cast<SlotHeader *>(reinterpret_cast<char *>(hdr_) + layout_.slot_offset +
                                        uint64_t{index} * layout_.slot_stride);
}

bool Region::slot_sane(uint32_t index) const {
  if (bad_slots_[index]) return false;
  SlotHeader *slot = slot_at(index);
  uint32_t state = slot->state.load(std::memory_order_relaxed);
  if (state <= agent::kSlotOrphan && id_in_range(slot->pid.load(std::memory_order_relaxed)) &&
      id_in_range(slot->tid.load(std::memory_order_relaxed)))
    return true;
  bad_slots_[index] = true;
  ++corrupt_;
  return false;
}

// Single consumer of the slot's ring (protocol.h): records in [tail, head) are complete.
void Region::drain_ring(SlotHeader *slot,
                        const std::function<bool(const char *record, uint32_t size)> &record) {
  uint64_t ring_size = layout_.ring_size;
  if (ring_size == 0) return;
  // Acquire: pairs with the producer's head.store(release) after it wrote the record, and so
  // also makes the pid it wrote when it claimed the slot visible: callers read pid after this.
  uint64_t head = slot->head.load(std::memory_order_acquire);
  uint64_t tail = slot->tail.load(std::memory_order_relaxed);
  const char *ring = reinterpret_cast<const char *>(slot) + layout_.ring_offset;
  // More published than the ring holds, or a head behind the tail: not a producer's doing.
  if (head < tail || head - tail > ring_size) {
    ++corrupt_;
    tail = head;
  }
  while (tail < head) {
    uint64_t pos = tail & (ring_size - 1);
    const char *r = ring + pos;
    uint32_t size = 0, probe = 0;
    std::memcpy(&size, r, sizeof size);
    // A record that breaks the format (a producer gone wrong) would otherwise stall the ring
    // forever: skip everything published so far.
    if (size < 8 || size % 8 != 0 || pos + size > ring_size || tail + size > head) {
      ++corrupt_;
      tail = head;
      break;
    }
    tail += size;
    std::memcpy(&probe, r + sizeof size, sizeof probe);
    if (probe != agent::kPadProbe && !record(r, size)) ++corrupt_;
  }
  // Release: the producer reads tail (acquire) before reusing the space we copied out of.
  slot->tail.store(tail, std::memory_order_release);
}

char *TraceBatch::storage(size_t n) {
  // Chunks of at least 4 MiB: one drain of a busy ring fits in one, and a quiet one shares it.
  constexpr size_t kChunk = 4 << 20;
  for (; current_ < chunks_.size(); ++current_) {
    Chunk &c = chunks_[current_];
    if (c.size - c.used >= n) {
      char *p = c.data.get() + c.used;
      c.used += n;
      bytes_ += n;
      return p;
    }
  }
  Chunk &c = chunks_.emplace_back();
  c.size = std::max(n, kChunk);
  c.data.reset(new char[c.size]);
  c.used = n;
  bytes_ += n;
  return c.data.get();
}

namespace {
// The values an event carries but for a USDT note's arg6..arg11: arg0..arg5 and retval.
constexpr uint32_t kFunctionValues = ((1u << agent::kMaxArgs) - 1) | (1u << agent::kRetvalArg);
}  // namespace

uint64_t TraceBatch::tsc(size_t i) const {
  uint64_t t = 0;
  std::memcpy(&t, refs_[i].record + offsetof(agent::Event, tsc), sizeof t);
  return t;
}

TraceBatch::Head TraceBatch::head(size_t i) const {
  const Ref &ref = refs_[i];
  Head h{0, ref.pid, 0, 0};
  std::memcpy(&h.tsc, ref.record + offsetof(agent::Event, tsc), sizeof h.tsc);
  std::memcpy(&h.tid, ref.record + offsetof(agent::Event, tid), sizeof h.tid);
  std::memcpy(&h.probe, ref.record + offsetof(agent::Event, probe), sizeof h.probe);
  return h;
}

TraceEvent TraceBatch::event(size_t i) const {
  const Ref &ref = refs_[i];
  agent::Event ev;
  std::memcpy(&ev, ref.record, sizeof ev);
  TraceEvent e;
  e.pid = ref.pid;
  e.tid = ev.tid;
  e.probe = ev.probe;
  e.tsc = ev.tsc;
  e.bad_strings = ev.bad_strings & agent::kStringBadMask;
  e.cut_strings = (ev.bad_strings >> agent::kStringCutShift) & agent::kStringBadMask;
  std::copy(std::begin(ev.args), std::end(ev.args), e.args.begin());
  const char *s = ref.record + sizeof ev;
  uint32_t mask = ref.string_mask;
  if (ev.bad_strings & agent::kEventReturn) {
    agent::ReturnTail tail;
    std::memcpy(&tail, s, sizeof tail);
    e.returning = true;
    e.args[agent::kRetvalArg] = tail.retval;
    e.entry_tsc = tail.entry_tsc;
    s += sizeof tail;
  } else {
    mask &= ~(1u << agent::kRetvalArg);  // as the agent has it: no return value at an entry
  }
  if ((ev.bad_strings & (agent::kEventReturn | agent::kEventMoreArgs)) == agent::kEventMoreArgs) {
    std::memcpy(&e.args[agent::kMaxArgs], s, agent::kMoreArgsBytes);
    s += agent::kMoreArgsBytes;
  } else {
    mask &= kFunctionValues;  // as the agent has it
  }
  for (uint32_t m = mask; m != 0; m &= m - 1) {
    auto arg = static_cast<unsigned>(std::countr_zero(m));
    // A copy ends with its NUL within string_size bytes; one without (written over) is cut there.
    e.strings[arg] = std::string_view(s, ::strnlen(s, string_size > 0 ? string_size - 1 : 0));
    s += string_size;
  }
  if (ev.bad_strings & agent::kEventStack) {  // checked when drained: the words are there
    s = ref.record + (((s - ref.record) + 7) & ~size_t{7});
    uint64_t frames = 0;
    std::memcpy(&frames, s, sizeof frames);
    e.image = static_cast<uint32_t>(frames >> 32);
    frames &= 0xffff'ffffu;
    e.stack.resize(frames);
    std::memcpy(e.stack.data(), s + 8, 8 * frames);
  }
  return e;
}

void TraceBatch::clear() {
  refs_.clear();
  // Keep up to 64 MiB for the next drains: a steady trace reuses them, a burst gives back the rest.
  constexpr size_t kKeep = 64 << 20;
  size_t kept = 0, n = 0;
  for (; n < chunks_.size() && kept + chunks_[n].size <= kKeep; ++n) {
    kept += chunks_[n].size;
    chunks_[n].used = 0;
  }
  chunks_.resize(n);
  current_ = 0;
  bytes_ = 0;
}

void Region::drain_slot(uint32_t index, TraceBatch &out) {
  uint64_t ring_size = layout_.ring_size;
  if (ring_size == 0) return;
  SlotHeader *slot = slot_at(index);
  // Acquire: pairs with the producer's head.store(release) after it wrote the record, and so also
  // makes the pid it wrote when it claimed the slot visible: pid is read after this.
  uint64_t head = slot->head.load(std::memory_order_acquire);
  uint64_t tail = slot->tail.load(std::memory_order_relaxed);
  if (head == tail) return;
  if (head < tail || head - tail > ring_size) {
    // Not what a producer writes: drop everything, or the ring stalls forever.
    ++corrupt_;
    slot->tail.store(head, std::memory_order_release);
    return;
  }
  // One copy (two where the bytes wrap around the ring's end), then the space goes back to the
  // producer at once: it waits for nothing while the records are taken apart, and what the command
  // writes into the ring meanwhile cannot change what is checked below.
  uint64_t n = head - tail;
  uint64_t pos = tail & (ring_size - 1);
  uint64_t first = std::min(n, ring_size - pos);
  char *copy = out.storage(n);
  const char *ring = reinterpret_cast<const char *>(slot) + layout_.ring_offset;
  std::memcpy(copy, ring + pos, first);
  std::memcpy(copy + first, ring, n - first);
  // Release: the producer reads tail (acquire) before reusing the space we copied out of.
  slot->tail.store(head, std::memory_order_release);

  int32_t pid = index == overflow_index() ? 0 : slot->pid.load(std::memory_order_relaxed);
  if (index != overflow_index()) note_comm(index);
  const uint32_t string_size = layout_.string_size;
  out.string_size = string_size;
  for (uint64_t at = 0; at < n;) {
    const char *r = copy + at;
    uint32_t size = 0;
    std::memcpy(&size, r, sizeof size);
    // A record that breaks the format (a producer gone wrong): skip the rest of this copy.
    if (size < 8 || size % 8 != 0 || ((pos + at) & (ring_size - 1)) + size > ring_size ||
        size > n - at) {
      ++corrupt_;
      break;
    }
    at += size;
    uint32_t probe = 0;
    std::memcpy(&probe, r + offsetof(agent::Event, probe), sizeof probe);
    // Padding (which may be short) is skipped; unknown and short records too, counted as corrupt.
    if (probe == agent::kPadProbe) continue;
    if (size < sizeof(agent::Event) || probe >= masks_.size()) {
      ++corrupt_;
      continue;
    }
    uint32_t mask = masks_[probe], flags = 0;
    std::memcpy(&flags, r + offsetof(agent::Event, bad_strings), sizeof flags);
    const bool returning = (flags & agent::kEventReturn) != 0;
    const bool more = !returning && (flags & agent::kEventMoreArgs) != 0;
    if (!returning) mask &= ~(1u << agent::kRetvalArg);
    if (!more) mask &= kFunctionValues;
    uint64_t need = agent::event_size(static_cast<uint32_t>(std::popcount(mask)), string_size) +
                    (returning ? sizeof(agent::ReturnTail) : 0) +
                    (more ? agent::kMoreArgsBytes : 0);
    if (size >= need + 8 && (flags & agent::kEventStack)) {
      uint64_t frames = 0;
      std::memcpy(&frames, r + need, sizeof frames);
      frames &= 0xffff'ffffu;  // the high half: the image
      need = frames == 0 || frames > agent::kMaxStackFrames ? size + 1 : need + 8 * (1 + frames);
    } else if (flags & agent::kEventStack) {
      need = size + 1;
    }
    if (size < need) {
      ++corrupt_;
      continue;
    }
    out.add({r, pid, mask});
  }
}

void Region::drain_slot(uint32_t index, std::vector<StackEvent> &out) {
  SlotHeader *slot = slot_at(index);
  bool overflow = index == overflow_index();
  int32_t pid = -1;  // as above
  if (!overflow) note_comm(index);
  drain_ring(slot, [&](const char *record, uint32_t size) {
    agent::StackRecord rec;
    if (size < sizeof rec) return false;
    std::memcpy(&rec, record, sizeof rec);
    if (rec.probe >= masks_.size() || rec.frames == 0 || rec.frames > agent::kMaxStackFrames ||
        size < sizeof rec + 8 * uint64_t{rec.frames})
      return false;
    if (pid < 0) pid = overflow ? 0 : slot->pid.load(std::memory_order_relaxed);
    StackEvent &e = out.emplace_back();
    e.pid = pid;
    e.tid = rec.tid;
    e.probe = rec.probe;
    e.image = rec.image;
    e.ips.resize(rec.frames);
    std::memcpy(e.ips.data(), record + sizeof rec, 8 * size_t{rec.frames});
    return true;
  });
  if (!overflow) drain_table(index, out);  // the overflow slot has no table
}

agent::StackTable Region::stack_table(uint32_t index) {
  return agent::stack_table_view(reinterpret_cast<char *>(slot_at(index)) + layout_.table_offset,
                                 layout_.table_entries, layout_.table_arena_words);
}

void Region::drain_table(uint32_t index, std::vector<StackEvent> &out) {
  if (layout_.table_entries == 0) return;
  SlotHeader *slot = slot_at(index);
  std::vector<uint64_t> &seen = table_seen_[index];
  // seen[n] of a corrupt entry (seen[table_entries]: a corrupt `used`), counted once.
  constexpr uint64_t kCorrupt = ~uint64_t{0};
  int32_t pid = -1, tid = -1;
  agent::stack_table_read(
      stack_table(index), layout_.probe_count,
      [&](uint32_t n, const agent::StackEntry &entry, uint64_t count, const uint64_t *ips) {
        if (n >= seen.size()) seen.resize(n + 1, 0);
        // A count only grows while the slot is owned; it starts again from 0 in a freed slot,
        // whose `seen` is cleared with it.
        if (count <= seen[n] || seen[n] == kCorrupt) return;
        // After stack_table_read's acquire load of `used`, which the owner stored after its pid
        // and tid.
        if (pid < 0) {
          pid = slot->pid.load(std::memory_order_relaxed);
          tid = slot->tid.load(std::memory_order_relaxed);
        }
        StackEvent &e = out.emplace_back();
        e.pid = pid;
        e.tid = tid;
        e.probe = entry.probe;
        e.image = entry.image;
        e.ips.assign(ips, ips + entry.frames);
        e.count = count - seen[n];
        seen[n] = count;
      },
      [&](uint32_t n) {
        if (n >= seen.size()) seen.resize(n + 1, 0);
        if (seen[n] != kCorrupt) ++corrupt_;
        seen[n] = kCorrupt;
      });
}

template <typename Out>
void Region::drain_all(Out &out) {
  if (layout_.ring_size == 0) return;
  for (uint32_t i = 0; i < layout_.max_slots; ++i) {
    SlotHeader *slot = slot_at(i);
    bool overflow = i == overflow_index();
    if (!overflow &&
        (!slot_sane(i) || slot->state.load(std::memory_order_acquire) == agent::kSlotFree))
      continue;
    drain_slot(i, out);
  }
}

void Region::drain(TraceBatch &out) {
  if (layout_.mode == agent::kModeTrace) drain_all(out);
}

void Region::drain(std::vector<StackEvent> &out) {
  if (layout_.mode == agent::kModeStacks) drain_all(out);
}

template <typename Out>
void Region::reclaim_slots(Out &out, const std::function<bool(int32_t, int32_t)> &alive) {
  for (uint32_t i = 0; i < overflow_index(); ++i) {
    SlotHeader *slot = slot_at(i);
    if (!slot_sane(i)) continue;
    uint32_t state = slot->state.load(std::memory_order_acquire);
    if (state == agent::kSlotFree) continue;
    int32_t pid = slot->pid.load(std::memory_order_relaxed),
            tid = slot->tid.load(std::memory_order_relaxed);
    if (state != agent::kSlotOrphan) {
      // pid 0: claimed a moment ago, its owner has not written its ids yet.
      if (pid <= 0 || tid <= 0 || alive(pid, tid)) continue;
    }
    // Nobody writes this slot any more: its thread is gone, or exec replaced its image.
    note_comm(i);
    drain_slot(i, out);
    add_counts(slot, pid, folded_, true);
    if (layout_.mode == agent::kModeLatency) add_histograms(slot, folded_histograms_, true);
    if constexpr (std::is_same_v<Out, RunOut>)
      if (out.fold) out.fold(reinterpret_cast<char *>(slot) + layout_.table_offset);
    if (layout_.mode == agent::kModeStacks) {
      // Its final counts were drained just above (in stacks mode; reclaim's other overload drops
      // them, as it drops the ring's records).
      agent::stack_table_reset(stack_table(i));
      table_seen_[i].clear();
    }
    slot->head.store(0, std::memory_order_relaxed);
    slot->tail.store(0, std::memory_order_relaxed);
    slot->pid.store(0, std::memory_order_relaxed);
    slot->tid.store(0, std::memory_order_relaxed);
    for (std::atomic<uint64_t> &word : slot->comm) word.store(0, std::memory_order_relaxed);
    // Release: pairs with the claiming thread's compare-and-swap, which then sees zeroed
    // counters and an empty ring.
    slot->state.store(agent::kSlotFree, std::memory_order_release);
  }
}

void Region::reclaim(TraceBatch &out, const std::function<bool(int32_t, int32_t)> &alive) {
  if (layout_.mode == agent::kModeStacks) {
    std::vector<StackEvent> dropped;  // the caller asked for trace records: there are none
    reclaim_slots(dropped, alive);
    return;
  }
  reclaim_slots(out, alive);
}

void Region::reclaim(std::vector<StackEvent> &out,
                     const std::function<bool(int32_t, int32_t)> &alive) {
  if (layout_.mode != agent::kModeStacks) {
    TraceBatch dropped;
    reclaim_slots(dropped, alive);
    return;
  }
  reclaim_slots(out, alive);
}

void Region::drain_slot(uint32_t index, RunOut &out) {
  SlotHeader *slot = slot_at(index);
  int32_t pid = index == overflow_index() ? 0 : -1;
  drain_ring(slot, [&](const char *record, uint32_t size) {
    if (pid < 0) pid = slot->pid.load(std::memory_order_relaxed);  // after drain_ring's acquire
    return out.record(pid, record, size);
  });
}

void Region::drain_records(const RecordSink &record) {
  if (layout_.mode != agent::kModeRun) return;
  std::function<void(char *)> none;
  RunOut out{record, none};
  drain_all(out);
}

void Region::reclaim_run(const RecordSink &record, const std::function<void(char *tables)> &fold,
                         const std::function<bool(int32_t, int32_t)> &alive) {
  if (layout_.mode != agent::kModeRun) return;
  RunOut out{record, fold};
  reclaim_slots(out, alive);
}

void Region::for_each_live_table(const std::function<void(const char *tables)> &tables) const {
  if (layout_.mode != agent::kModeRun) return;
  for (uint32_t i = 0; i < overflow_index(); ++i) {
    SlotHeader *slot = slot_at(i);
    if (!slot_sane(i) || slot->state.load(std::memory_order_acquire) == agent::kSlotFree) continue;
    tables(reinterpret_cast<const char *>(slot) + layout_.table_offset);
  }
}

void Region::note_comm(uint32_t index) const {
  SlotHeader *slot = slot_at(index);
  // Acquire: pairs with the owner's release store of its pid, made after it wrote its name.
  int32_t pid = slot->pid.load(std::memory_order_acquire);
  int32_t tid = slot->tid.load(std::memory_order_relaxed);
  if (pid <= 0 || tid <= 0) return;
  uint64_t words[2] = {slot->comm[0].load(std::memory_order_relaxed),
                       slot->comm[1].load(std::memory_order_relaxed)};
  char bytes[sizeof words];
  std::memcpy(bytes, words, sizeof bytes);
  std::string name;
  for (size_t i = 0; i + 1 < sizeof bytes && bytes[i] != '\0'; ++i)
    name += bytes[i] >= 0x20 && bytes[i] < 0x7f ? bytes[i] : '?';
  if (!name.empty()) comms_[{pid, tid}] = std::move(name);
}

std::string Region::comm(int32_t pid, int32_t tid) const {
  if (tid != 0) {
    auto it = comms_.find({pid, tid});
    return it == comms_.end() ? std::string() : it->second;
  }
  if (auto it = comms_.find({pid, pid}); it != comms_.end()) return it->second;
  auto it = comms_.lower_bound({pid, 0});
  return it != comms_.end() && it->first.first == pid ? it->second : std::string();
}

void Region::add_counts(SlotHeader *slot, int32_t pid, Counts &out, bool zero) const {
  uint32_t n = layout_.probe_count;
  std::atomic<uint64_t> *hits = agent::slot_hits(slot);
  std::atomic<uint64_t> *missed = agent::slot_missed(slot, n);
  for (uint32_t p = 0; p < n; ++p) {
    // Relaxed: a live slot's counts are a snapshot; a freed slot's writer is gone.
    uint64_t h = hits[p].load(std::memory_order_relaxed);
    uint64_t m = missed[p].load(std::memory_order_relaxed);
    if (h == 0 && m == 0) continue;
    Count &c = out[{pid, p}];
    c.hits += h;
    c.missed += m;
    if (zero) {
      hits[p].store(0, std::memory_order_relaxed);
      missed[p].store(0, std::memory_order_relaxed);
    }
  }
}

Counts Region::counts() const {
  Counts out = folded_;
  for (uint32_t i = 0; i < layout_.max_slots; ++i) {
    SlotHeader *slot = slot_at(i);
    int32_t pid = 0;
    if (i != overflow_index()) {
      if (!slot_sane(i) || slot->state.load(std::memory_order_acquire) == agent::kSlotFree)
        continue;
      pid = slot->pid.load(std::memory_order_relaxed);
      // Its owner has not written its pid yet; next time its counts go to the right process.
      if (pid <= 0) continue;
      note_comm(i);
    }
    add_counts(slot, pid, out, false);
  }
  return out;
}

void Region::add_histograms(SlotHeader *slot, std::vector<Histogram> &out, bool zero) const {
  uint32_t n = layout_.probe_count;
  std::atomic<uint64_t> *returns = agent::slot_returns(slot, n);
  agent::LatencyHistogram *hists = agent::slot_histograms(slot, layout_.hist_offset);
  for (uint32_t p = 0; p < n && p < out.size(); ++p) {
    // Relaxed, as in add_counts. A histogram whose returns count is 0 was never written (the agent
    // stores returns first): it is not read, so its pages are never faulted in.
    uint64_t count = returns[p].load(std::memory_order_relaxed);
    if (count == 0) continue;
    agent::LatencyHistogram &h = hists[p];
    Histogram &o = out[p];
    if (o.buckets.empty()) o.buckets.assign(agent::kLatencyBuckets, 0);
    o.count += count;
    o.sum_ns += h.sum_ns.load(std::memory_order_relaxed);
    for (uint32_t b = 0; b < agent::kLatencyBuckets; ++b)
      o.buckets[b] += h.buckets[b].load(std::memory_order_relaxed);
    if (zero) {
      returns[p].store(0, std::memory_order_relaxed);
      h.sum_ns.store(0, std::memory_order_relaxed);
      for (std::atomic<uint64_t> &b : h.buckets) b.store(0, std::memory_order_relaxed);
    }
  }
}

std::vector<Histogram> Region::histograms() const {
  std::vector<Histogram> out = folded_histograms_;
  if (layout_.mode != agent::kModeLatency) return out;
  for (uint32_t i = 0; i < layout_.max_slots; ++i) {
    SlotHeader *slot = slot_at(i);
    // Histograms are not by process: a slot whose owner has not written its pid yet counts too.
    if (i != overflow_index() &&
        (!slot_sane(i) || slot->state.load(std::memory_order_acquire) == agent::kSlotFree))
      continue;
    add_histograms(slot, out, false);
  }
  return out;
}

std::vector<NoticeMessage> Region::new_notices() {
  std::vector<NoticeMessage> out;
  // Acquire: a claimed index may still be being written; its `ready` says when it is complete.
  uint32_t claimed =
      std::min(hdr_->notice_cursor.load(std::memory_order_acquire), layout_.max_notices);
  while (next_notice_ < claimed) {
    agent::Notice *n =
        reinterpret_cast<agent::Notice *>(reinterpret_cast<char *>(hdr_) + layout_.notice_offset) +
        next_notice_;
    // Acquire: pairs with the agent's ready.store(1, release) after it wrote the text.
    uint32_t ready = n->ready.load(std::memory_order_acquire);
    if (ready == 0) break;  // keep the order: next time
    ++next_notice_;
    // What no agent writes: skipped, counted.
    if (ready != 1 || n->kind > agent::kNoticeInt3 || !id_in_range(n->pid) || n->probe < -1 ||
        (n->probe >= 0 && static_cast<uint32_t>(n->probe) >= layout_.probe_count) ||
        ::strnlen(n->text, sizeof n->text) == sizeof n->text) {
      ++corrupt_;
      continue;
    }
    NoticeMessage &m = out.emplace_back();
    m.kind = static_cast<agent::NoticeKind>(n->kind);
    m.pid = n->pid;
    m.probe = n->probe;
    m.text.assign(n->text, ::strnlen(n->text, sizeof n->text));
  }
  return out;
}

uint32_t Region::notices_dropped() const {
  return hdr_->notices_dropped.load(std::memory_order_relaxed);
}

std::vector<MapsMessage> Region::new_maps() {
  std::vector<MapsMessage> out;
  if (layout_.max_maps == 0) return out;  // stacks mode, and trace mode with its stacks (-U)
  // Acquire: a claimed index may still be being written; its `ready` says when it is complete.
  uint32_t claimed = std::min(hdr_->maps_cursor.load(std::memory_order_acquire), layout_.max_maps);
  auto *entries =
      reinterpret_cast<agent::MapsEntry *>(reinterpret_cast<char *>(hdr_) + layout_.maps_offset);
  const char *text = reinterpret_cast<const char *>(hdr_) + layout_.maps_text_offset;
  for (; next_maps_ < claimed; ++next_maps_) pending_maps_.push_back(next_maps_);
  // Unlike notices, order does not matter (each entry says which image it is), and an agent that
  // died between claiming an entry and publishing it must not hide the entries after it.
  std::erase_if(pending_maps_, [&](uint32_t i) {
    agent::MapsEntry *e = entries + i;
    // Acquire: pairs with the agent's ready.store(1, release) after it wrote the entry and text.
    uint32_t ready = e->ready.load(std::memory_order_acquire);
    if (ready == 0) return false;
    // What no agent writes: skipped, counted. (A text that does not fit is one an agent can
    // write: it is left out, as when it found no room.)
    if (ready != 1 || e->kind > agent::kMapsChange || !id_in_range(e->pid) ||
        ::strnlen(e->comm, sizeof e->comm) == sizeof e->comm) {
      ++corrupt_;
      return true;
    }
    MapsMessage &m = out.emplace_back();
    m.kind = static_cast<agent::MapsKind>(e->kind);
    m.pid = e->pid;
    m.image = e->image;
    m.comm.assign(e->comm, ::strnlen(e->comm, sizeof e->comm));
    if (e->text_size > 0 && e->text_offset <= layout_.maps_text_size &&
        e->text_size <= layout_.maps_text_size - e->text_offset)
      m.text.assign(text + e->text_offset, e->text_size);
    return true;
  });
  return out;
}

uint32_t Region::maps_dropped() const {
  return hdr_->maps_dropped.load(std::memory_order_relaxed);
}

namespace {

// Which probes have `bit` in their placed flags.
std::vector<bool> placed_bit(const agent::Header *hdr, const RegionLayout &layout, uint8_t bit) {
  // The layout snapshot, never the header's fields: the command can rewrite those.
  std::vector<bool> out(layout.probe_count);
  const auto *flags = reinterpret_cast<const std::atomic<uint8_t> *>(
      reinterpret_cast<const char *>(hdr) + layout.placed_offset);
  for (uint32_t i = 0; i < layout.probe_count; ++i)
    out[i] = (flags[i].load(std::memory_order_relaxed) & bit) != 0;
  return out;
}

}  // namespace

std::vector<bool> Region::placed() const {
  return placed_bit(hdr_, layout_, agent::kPlacedSite);
}

std::vector<bool> Region::on_int3() const {
  return placed_bit(hdr_, layout_, agent::kPlacedInt3);
}

std::vector<ProcessEntry> Region::processes() const {
  std::vector<ProcessEntry> out;
  // The layout snapshot, never the header's fields: the target can rewrite those.
  auto *records = reinterpret_cast<agent::ProcessRecord *>(reinterpret_cast<char *>(hdr_) +
                                                           layout_.process_offset);
  for (uint32_t i = 0; i < layout_.max_processes; ++i) {
    int32_t pid = records[i].pid.load(std::memory_order_relaxed);
    if (pid == 0) continue;  // free
    // Acquire: pairs with the agent's release store of kProcessDetached, made once its probes were
    // all removed and its last counts written.
    uint32_t state = records[i].state.load(std::memory_order_acquire);
    // What no agent writes: skipped, counted once. State 0: claimed a moment ago, its agent has
    // not stored kProcessAttached yet.
    if (!id_in_range(pid) || state > agent::kProcessDetached) {
      if (!bad_processes_[i]) ++corrupt_;
      bad_processes_[i] = true;
      continue;
    }
    out.push_back({pid, state});
  }
  return out;
}

uint32_t Region::agents_started() const {
  return hdr_->agents_started.load(std::memory_order_relaxed);
}

}  // namespace usprobe::cli

namespace usprobe::cli {

uint32_t Region::agents_filtered() const {
  return hdr_->agents_filtered.load(std::memory_order_relaxed);
}

}  // namespace usprobe::cli
