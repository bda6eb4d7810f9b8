#include "agent/notices.h"

#include <unistd.h>

#include <algorithm>
#include <string>

#include "agent/region.h"

namespace usprobe::agent {

void post_notice(NoticeKind kind, int32_t probe, std::string_view text) {
  Header *h = g_region.header;
  if (!h) return;
  // Relaxed: the cursor only hands out distinct indices; the notice is published by `ready`.
  uint32_t i = h->notice_cursor.fetch_add(1, std::memory_order_relaxed);
  if (i >= g_region.max_notices) {
    h->notices_dropped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  Notice *n = reinterpret_cast<Notice *>(reinterpret_cast<char *>(h) + g_region.notice_offset) + i;
  n->kind = kind;
  n->pid = g_region.pid;
  n->probe = probe;
  size_t len = std::min(text.size(), sizeof n->text - 1);
  std::copy_n(text.data(), len, n->text);
  std::replace(n->text, n->text + len, '\n', ' ');
  n->text[len] = '\0';
  // Release pairs with the CLI's acquire load of `ready`: it sees the fields written above.
  n->ready.store(1, std::memory_order_release);
}

void report_error(std::string_view text) {
  if (g_region.header) {  // the CLI prints it
    post_notice(kNoticeError, -1, text);
    return;
  }
  std::string line = "usprobe-agent: ";
  line += text;
  line += '\n';
  // One write, so that the line is not interleaved with the command's own stderr output.
  ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace usprobe::agent
