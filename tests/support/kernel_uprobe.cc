#include "support/kernel_uprobe.h"

#include <linux/perf_event.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <utility>

namespace usprobe::test {
namespace {

constexpr const char *kUprobePmu = "/sys/bus/event_source/devices/uprobe";

std::expected<std::string, std::string> read_line(const std::string &path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return std::unexpected("cannot read " + path);
  return line;
}

// The PMU's type number, for perf_event_attr.type.
std::expected<uint32_t, std::string> uprobe_pmu_type() {
  auto line = read_line(std::string(kUprobePmu) + "/type");
  if (!line) return std::unexpected("no uprobe PMU (" + line.error() + ")");
  unsigned long type = 0;
  if (std::sscanf(line->c_str(), "%lu", &type) != 1)
    return std::unexpected(std::string("no uprobe PMU (bad ") + kUprobePmu + "/type)");
  return static_cast<uint32_t>(type);
}

// The config bit that makes a uretprobe: format/retprobe reads "config:N".
std::expected<unsigned, std::string> retprobe_bit() {
  auto line = read_line(std::string(kUprobePmu) + "/format/retprobe");
  if (!line) return std::unexpected("uprobe PMU has no retprobe format (" + line.error() + ")");
  unsigned bit = 0;
  if (std::sscanf(line->c_str(), "config:%u", &bit) != 1 || bit > 63)
    return std::unexpected("uprobe PMU: unexpected retprobe format \"" + *line + "\"");
  return bit;
}

long perf_event_open(perf_event_attr *attr, pid_t pid, int cpu, int group_fd, unsigned long flags) {
  return syscall(SYS_perf_event_open, attr, pid, cpu, group_fd, flags);
}

}  // namespace

std::expected<FileLocation, std::string> file_location_of(const void *addr) {
  const auto where = reinterpret_cast<uintptr_t>(addr);
  std::ifstream maps("/proc/self/maps");
  if (!maps) return std::unexpected("cannot read /proc/self/maps");
  // "start-end perms offset dev inode   path"
  for (std::string line; std::getline(maps, line);) {
    uint64_t start = 0, end = 0, offset = 0;
    char perms[8] = {};
    int path_at = 0;
    if (std::sscanf(line.c_str(), "%" SCNx64 "-%" SCNx64 " %7s %" SCNx64 " %*s %*u %n", &start,
                    &end, perms, &offset, &path_at) != 4)
      continue;
    if (where < start || where >= end) continue;
    std::string path = line.substr(static_cast<size_t>(path_at));
    if (path.empty() || path[0] != '/') {
      char text[160];
      std::snprintf(text, sizeof text, "%#" PRIxPTR " is not in a file mapping (%s)", where,
                    path.empty() ? "anonymous" : path.c_str());
      return std::unexpected(std::string(text));
    }
    return FileLocation{std::move(path), where - start + offset};
  }
  char text[80];
  std::snprintf(text, sizeof text, "%#" PRIxPTR " is not mapped", where);
  return std::unexpected(std::string(text));
}

std::expected<KernelUprobe, std::string> KernelUprobe::open(const std::string &path,
                                                            uint64_t offset, bool ret) {
  auto type = uprobe_pmu_type();
  if (!type) return std::unexpected(type.error());
  perf_event_attr attr;
  std::memset(&attr, 0, sizeof attr);
  attr.size = sizeof attr;
  attr.type = *type;
  if (ret) {
    auto bit = retprobe_bit();
    if (!bit) return std::unexpected(bit.error());
    attr.config |= uint64_t{1} << *bit;
  }
  // Not path.c_str(): the kernel reads the path again whenever a new thread inherits the event,
  // so it lives, at a fixed address, as long as the event (see the header).
  auto stable_path = std::make_unique<char[]>(path.size() + 1);
  std::memcpy(stable_path.get(), path.c_str(), path.size() + 1);
  attr.uprobe_path = reinterpret_cast<uint64_t>(stable_path.get());
  attr.probe_offset = offset;
  attr.sample_period = 0;  // counting, not sampling
  attr.inherit = 1;        // threads created later count too; read() sums them
  const long fd =
      perf_event_open(&attr, /*pid=*/0, /*cpu=*/-1, /*group_fd=*/-1, PERF_FLAG_FD_CLOEXEC);
  if (fd < 0) return std::unexpected(std::string("perf_event_open: ") + std::strerror(errno));
  return KernelUprobe(static_cast<int>(fd), std::move(stable_path));
}

std::expected<KernelUprobe, std::string> KernelUprobe::open_at(const void *addr, bool ret) {
  auto where = file_location_of(addr);
  if (!where) return std::unexpected(where.error());
  return open(where->path, where->offset, ret);
}

KernelUprobe::KernelUprobe(KernelUprobe &&other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)) {}

KernelUprobe &KernelUprobe::operator=(KernelUprobe &&other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
  }
  return *this;
}

KernelUprobe::~KernelUprobe() {
  if (fd_ >= 0) ::close(fd_);
}

bool KernelUprobe::enable() {
  return ioctl(fd_, PERF_EVENT_IOC_ENABLE, 0) == 0;
}

bool KernelUprobe::disable() {
  return ioctl(fd_, PERF_EVENT_IOC_DISABLE, 0) == 0;
}

uint64_t KernelUprobe::count() const {
  uint64_t value = 0;
  if (::read(fd_, &value, sizeof value) != static_cast<ssize_t>(sizeof value)) return 0;
  return value;
}

}  // namespace usprobe::test
