#include "agent/region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <charconv>
#include <cstring>

#include <fmt/format.h>

#include "usprobe/usprobe.h"

namespace usprobe::agent {

Region g_region;

namespace {

using u128 = unsigned __int128;

// Every area the header describes lies inside the region, aligned for the atomics it holds.
std::expected<void, std::string> check_layout(const Header &h) {
  auto fail = [](std::string why) { return std::unexpected("bad region header: " + why); };
  if (h.mode != kModeCount && h.mode != kModeTrace && h.mode != kModeLatency &&
      h.mode != kModeStacks && h.mode != kModeRun)
    return fail(fmt::format("mode {}", h.mode));
  if (h.plan_size == 0 || u128{h.plan_offset} + h.plan_size > h.region_size)
    return fail("the plan lies outside the region");
  if (u128{h.placed_offset} + h.probe_count > h.region_size)
    return fail("the placed flags lie outside the region");
  if (h.notice_offset % alignof(Notice) != 0 ||
      u128{h.notice_offset} + u128{h.max_notices} * sizeof(Notice) > h.region_size)
    return fail("the notices lie outside the region");
  if (h.max_slots == 0) return fail("no slots");
  if (h.slot_offset % alignof(SlotHeader) != 0 || h.slot_stride % alignof(SlotHeader) != 0 ||
      u128{h.slot_offset} + u128{h.max_slots} * h.slot_stride > h.region_size)
    return fail("the slots lie outside the region");
  if (h.ring_offset % 8 != 0 || h.ring_size % 8 != 0 ||
      h.ring_offset < slot_counters_end(h.probe_count) ||
      u128{h.ring_offset} + h.ring_size > h.slot_stride)
    return fail("a slot's counters and ring do not fit in its stride");
  if (h.mode == kModeTrace && (h.ring_size < sizeof(Event) || std::popcount(h.ring_size) != 1))
    return fail(fmt::format(
        "trace mode with a {}-byte ring (not a power of two that holds an event)", h.ring_size));
  if (h.mode == kModeStacks) {
    if (h.ring_size < kMaxStackRecord || std::popcount(h.ring_size) != 1)
      return fail(fmt::format(
          "stacks mode with a {}-byte ring (not a power of two that holds a whole stack)",
          h.ring_size));
    // The table lies between the counters and the ring; it always holds the walk's scratch words.
    if (h.table_entries > (1u << 24) || (h.table_entries & (h.table_entries - 1)) != 0 ||
        h.table_offset % 64 != 0 || h.table_offset < slot_counters_end(h.probe_count) ||
        u128{h.table_offset} + stack_table_bytes(h.table_entries, h.table_arena_words) >
            h.ring_offset)
      return fail("a slot's stack table does not fit between its counters and its ring");
  }
  if (h.mode == kModeStacks ||
      ((h.mode == kModeTrace || h.mode == kModeRun) && h.trace_stacks != 0)) {
    // A trace record with its stack: the largest Event, strings and the stack's words.
    if (h.mode == kModeTrace &&
        h.ring_size < max_event_size(h.string_size) + 8 * (1 + uint64_t{kMaxStackFrames}))
      return fail(fmt::format("trace stacks with a {}-byte ring", h.ring_size));
    if ((h.stack_flags & ~USPROBE_STACK_FP) != 0)
      return fail(fmt::format("stack flags {:#x}", h.stack_flags));
    if (h.max_maps == 0 || h.maps_offset % alignof(MapsEntry) != 0 ||
        u128{h.maps_offset} + u128{h.max_maps} * sizeof(MapsEntry) > h.maps_text_offset ||
        u128{h.maps_text_offset} + h.maps_text_size > h.region_size)
      return fail("the maps area lies outside the region");
  }
  if (h.process_offset % alignof(ProcessRecord) != 0 ||
      u128{h.process_offset} + u128{h.max_processes} * sizeof(ProcessRecord) > h.region_size)
    return fail("the process records lie outside the region");
  if (h.mode == kModeRun) {
    // The program and the tables are checked by bt_load, which knows their sizes.
    if (h.ring_size < 4096 || std::popcount(h.ring_size) != 1)
      return fail(fmt::format("run mode with a {}-byte ring", h.ring_size));
    if (h.tsc_to_ns_mult == 0) return fail("run mode without a TSC rate");
    if (h.table_offset < slot_counters_end(h.probe_count) || h.table_offset > h.ring_offset)
      return fail("a slot's table area does not fit between its counters and its ring");
  }
  if (h.mode == kModeLatency) {
    if (h.ring_size != 0) return fail("latency mode with a ring");
    if (h.tsc_to_ns_mult == 0) return fail("latency mode without a TSC rate");
    if (h.hist_offset % alignof(LatencyHistogram) != 0 ||
        h.hist_offset < latency_counters_end(h.probe_count) ||
        u128{h.hist_offset} + u128{h.probe_count} * sizeof(LatencyHistogram) > h.ring_offset)
      return fail("a slot's histograms do not fit in its stride");
  }
  return {};
}

}  // namespace

std::expected<Mapping, std::string> map_region_fd(int fd, const std::string &where) {
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    // Typically a parent process closed every descriptor but the standard ones before an exec.
    return std::unexpected(where + ": " + strerror(err) +
                           (err == EBADF ? " (closed before this program started)" : ""));
  }
  // Only a regular file can be our memfd; anything else (the command closed our fd and the number
  // now names a pipe or socket) is left alone.
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) < sizeof(Header))
    return std::unexpected(where + ": not a usprobe region");
  size_t length = static_cast<size_t>(st.st_size);
  // Read-only until the header checks out, so that a file that merely reuses the number is never
  // written; mprotect to read-write fails (EACCES) unless the descriptor allows writing.
  void *mem = mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, 0);
  if (mem == MAP_FAILED) return std::unexpected(where + ": mmap: " + strerror(errno));
  auto *h = static_cast<Header *>(mem);
  auto refuse = [&](std::string why) -> std::expected<Mapping, std::string> {
    munmap(mem, length);
    return std::unexpected(where + ": " + why);
  };
  if (h->magic != kMagic) return refuse("not a usprobe region (bad magic)");
  if (h->version != kVersion)
    return refuse(fmt::format("region version {}, this agent speaks {}", h->version, kVersion));
  if (h->region_size < sizeof(Header) || h->region_size > length)
    return refuse(
        fmt::format("region_size {} but the file holds {} bytes", h->region_size, length));
  if (auto ok = check_layout(*h); !ok) return refuse(ok.error());
  if (mprotect(mem, length, PROT_READ | PROT_WRITE) != 0)
    return refuse(std::string("mprotect: ") + strerror(errno));
  return Mapping{h, length};
}

void take_layout(const Mapping &m) {
  Header *h = m.header;
  g_region.header = h;
  g_region.mapped_length = m.length;
  g_region.slot_offset = h->slot_offset;
  g_region.slot_stride = h->slot_stride;
  g_region.ring_offset = h->ring_offset;
  g_region.notice_offset = h->notice_offset;
  g_region.max_notices = h->max_notices;
  g_region.max_maps = h->max_maps;
  g_region.maps_offset = h->maps_offset;
  g_region.maps_text_offset = h->maps_text_offset;
  g_region.maps_text_size = h->maps_text_size;
  g_region.process_offset = h->process_offset;
  g_region.max_processes = h->max_processes;
}

void drop_region() {
  if (g_region.header) munmap(g_region.header, g_region.mapped_length);
  delete[] g_region.probes;
  uint32_t session = g_region.session;
  g_region = Region{};
  g_region.session = session;
}

std::expected<Mapping, std::string> map_region(const char *fd_text, const char *path) {
  auto where = fmt::format("{}={}", kEnvFd, fd_text);
  int fd = -1;
  const char *end = fd_text + strlen(fd_text);
  if (auto [p, ec] = std::from_chars(fd_text, end, fd); ec != std::errc() || p != end || fd < 0)
    return std::unexpected(where + ": not a file descriptor number");
  auto mapped = map_region_fd(fd, where);
  if (mapped || !path) return mapped;
  // The inherited descriptor is gone: open the CLI's own through /proc. The mapping outlives the
  // descriptor, which is closed again so that the command never sees a new one.
  int own = open(path, O_RDWR | O_CLOEXEC);
  if (own < 0) {
    return std::unexpected(
        fmt::format("{}, and {}={}: {}", mapped.error(), kEnvPath, path, strerror(errno)));
  }
  auto again = map_region_fd(own, fmt::format("{}={}", kEnvPath, path));
  close(own);
  return again;
}

}  // namespace usprobe::agent
