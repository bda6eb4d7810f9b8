#include "agent/maps.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <mutex>
#include <string>

#include "agent/region.h"
#include "protocol/maps_lines.h"

namespace usprobe::agent {
namespace {

// What this image wrote last (inherited by a forked child, whose mappings are its parent's).
// Guarded by g_mutex: post_maps runs in the constructor, after each dlopen and dlclose (on the
// thread that made it) and at exit.
std::mutex g_mutex;
size_t g_last_hash = 0;
bool g_posted = false;
uint32_t g_posted_session = 0;  // a later session (attach mode) has a region of its own

// The whole of a /proc file ("" when it cannot be read). Such files report a size of 0: read until
// the end.
std::string read_proc_file(const char *path) {
  std::string text;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return text;
  char buffer[16384];
  for (;;) {
    ssize_t n = read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return text;
}

}  // namespace

void post_maps(MapsKind kind) {
  Header *h = g_region.header;
  if (!h || !g_region.records_stacks()) return;
  std::lock_guard lock(g_mutex);
  std::string text = naming_lines(read_proc_file("/proc/self/maps"));
  size_t hash = std::hash<std::string>{}(text);
  if (g_posted && g_posted_session == g_region.session && hash == g_last_hash) return;
  g_posted = true;
  g_posted_session = g_region.session;
  g_last_hash = hash;

  // Relaxed: the cursors only hand out distinct indices and bytes; the entry is published by
  // `ready`.
  uint32_t i = h->maps_cursor.fetch_add(1, std::memory_order_relaxed);
  if (i >= g_region.max_maps) {
    h->maps_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  MapsEntry *e =
      reinterpret_cast<MapsEntry *>(reinterpret_cast<char *>(h) + g_region.maps_offset) + i;
  e->kind = kind;
  e->pid = g_region.pid;
  e->image = g_region.image;
  e->text_offset = 0;
  e->text_size = 0;
  uint64_t offset = h->maps_text_cursor.fetch_add(text.size(), std::memory_order_relaxed);
  if (offset <= g_region.maps_text_size && text.size() <= g_region.maps_text_size - offset) {
    std::copy(text.begin(), text.end(),
              reinterpret_cast<char *>(h) + g_region.maps_text_offset + offset);
    e->text_offset = offset;
    e->text_size = text.size();
  } else {
    h->maps_dropped.fetch_add(1, std::memory_order_relaxed);
  }
  std::string comm = read_proc_file("/proc/self/comm");
  if (!comm.empty() && comm.back() == '\n') comm.pop_back();
  size_t len = std::min(comm.size(), sizeof e->comm - 1);
  std::copy_n(comm.data(), len, e->comm);
  e->comm[len] = '\0';
  // Release pairs with the CLI's acquire load of `ready`: it sees the fields and the text.
  e->ready.store(1, std::memory_order_release);
}

}  // namespace usprobe::agent
