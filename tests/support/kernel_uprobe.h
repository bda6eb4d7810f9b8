// The kernel's own uprobes, for comparison: a KernelUprobe counts the hits of a kernel uprobe (or
// uretprobe) on one instruction of an ELF file, for this process, through perf_event_open(2) on
// the "uprobe" PMU (type from /sys/bus/event_source/devices/uprobe/type).
//
//   auto where = usprobe::test::file_location_of(reinterpret_cast<const void *>(&tgt_counted));
//   auto probe = usprobe::test::KernelUprobe::open(where->path, where->offset);
//   if (!probe) GTEST_SKIP() << probe.error();   // e.g. "perf_event_open: Permission denied"
//   for (int i = 0; i < 1000; ++i) tgt_counted(i);
//   EXPECT_EQ(probe->count(), 1000u);
//
// The event is opened with inherit set, so threads this process creates after open() are
// counted too; count() sums them. Counting starts at open().
//
// The kernel reads the path through attr.uprobe_path again each time a thread inherits the event
// (at clone), from the cloning thread's memory: the path must stay valid for the life of the
// event, or creating a thread fails (ENOENT, or worse). A KernelUprobe keeps its own copy of the
// path at a fixed heap address for that reason.
#ifndef USPROBE_TESTS_SUPPORT_KERNEL_UPROBE_H
#define USPROBE_TESTS_SUPPORT_KERNEL_UPROBE_H

#include <cstdint>
#include <expected>
#include <memory>
#include <string>

namespace usprobe::test {

// Where an address of this process lies in a mapped file.
struct FileLocation {
  std::string path;  // as in /proc/self/maps (absolute)
  uint64_t offset;   // file offset: addr - mapping start + mapping file offset
};

// The file and file offset of `addr`, from the mapping that holds it in /proc/self/maps. Fails
// with a reason when `addr` is not in a file mapping.
std::expected<FileLocation, std::string> file_location_of(const void *addr);

class KernelUprobe {
 public:
  // A uprobe (ret = false) or uretprobe (ret = true) on `path` at file offset `offset`, counting
  // for this process on any CPU. Fails with a reason: "no uprobe PMU (...)",
  // "perf_event_open: Permission denied", ...
  static std::expected<KernelUprobe, std::string> open(const std::string &path, uint64_t offset,
                                                       bool ret = false);
  // The same on the instruction at `addr` in this process (see file_location_of).
  static std::expected<KernelUprobe, std::string> open_at(const void *addr, bool ret = false);

  KernelUprobe(KernelUprobe &&other) noexcept;
  KernelUprobe &operator=(KernelUprobe &&other) noexcept;
  KernelUprobe(const KernelUprobe &) = delete;
  KernelUprobe &operator=(const KernelUprobe &) = delete;
  ~KernelUprobe();

  // Stop and restart counting (PERF_EVENT_IOC_DISABLE/ENABLE, applied to inherited events too).
  bool enable();
  bool disable();
  // Hits so far, all threads (read(2) of the counter); 0 if reading fails.
  uint64_t count() const;
  int fd() const { return fd_; }

 private:
  KernelUprobe(int fd, std::unique_ptr<char[]> path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::unique_ptr<char[]> path_;  // attr.uprobe_path points here while the event lives
};

}  // namespace usprobe::test

#endif  // USPROBE_TESTS_SUPPORT_KERNEL_UPROBE_H
