// read_mappings() on hand-written maps files (every shape of line the kernel prints) and on this
// process's own /proc/self/maps.
#include "os/linux/proc_maps.h"

#include "os/linux/maps_line.h"

#include <gtest/gtest.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace usprobe::os {
namespace {

// A maps file with `text` in it, removed when the test ends.
class MapsFile {
 public:
  explicit MapsFile(const std::string &text) {
    char tmpl[] = "/tmp/usprobe-maps-XXXXXX";
    int fd = ::mkstemp(tmpl);
    path_ = tmpl;
    if (fd >= 0) ::close(fd);
    std::ofstream(path_) << text;
  }
  ~MapsFile() { std::remove(path_.c_str()); }
  const char *path() const { return path_.c_str(); }

 private:
  std::string path_;
};

TEST(ProcMaps, ParsesEveryFieldOfAFileMapping) {
  MapsFile f(
      "7f6adcaaf000-7f6adcc05000 r-xp 00026000 fe:01 332835                     "
      "/usr/lib/x86_64-linux-gnu/libc.so.6\n");
  auto maps = read_mappings(f.path());
  ASSERT_TRUE(maps) << maps.error().message;
  ASSERT_EQ(maps->size(), 1u);
  const Mapping &m = maps->front();
  EXPECT_EQ(m.start, 0x7f6adcaaf000u);
  EXPECT_EQ(m.end, 0x7f6adcc05000u);
  EXPECT_TRUE(m.read);
  EXPECT_FALSE(m.write);
  EXPECT_TRUE(m.exec);
  EXPECT_TRUE(m.priv);
  EXPECT_EQ(m.offset, 0x26000u);
  EXPECT_EQ(m.dev, makedev(0xfe, 0x01));
  EXPECT_EQ(m.ino, 332835u);
  EXPECT_EQ(m.path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
  EXPECT_FALSE(m.deleted);
}

TEST(ProcMaps, DeviceNumbersAreHex) {
  MapsFile f("1000-2000 r--s 00000000 103:0a 7 /dev/shm/x\n");
  auto maps = read_mappings(f.path());
  ASSERT_TRUE(maps) << maps.error().message;
  EXPECT_EQ(maps->front().dev, makedev(0x103, 0x0a));
  EXPECT_FALSE(maps->front().priv);  // 's': shared
}

TEST(ProcMaps, PathMayContainSpaces) {
  MapsFile f("1000-2000 r--p 00001000 08:01 42    /opt/my app/lib x.so\n");
  auto maps = read_mappings(f.path());
  ASSERT_TRUE(maps) << maps.error().message;
  EXPECT_EQ(maps->front().path, "/opt/my app/lib x.so");
}

TEST(ProcMaps, DeletedSuffixIsRemovedAndFlagged) {
  MapsFile f("1000-2000 r-xp 00000000 08:01 42    /usr/lib/libfoo.so.1 (deleted)\n");
  auto maps = read_mappings(f.path());
  ASSERT_TRUE(maps) << maps.error().message;
  EXPECT_EQ(maps->front().path, "/usr/lib/libfoo.so.1");
  EXPECT_TRUE(maps->front().deleted);
}

TEST(ProcMaps, AnonymousAndPseudoMappingsAreKept) {
  MapsFile f(
      "1000-2000 rw-p 00000000 00:00 0 \n"
      "3000-4000 rw-p 00000000 00:00 0\n"
      "5000-6000 rw-p 00000000 00:00 0                          [heap]\n"
      "7000-8000 r-xp 00000000 00:00 0                          [vdso]\n");
  auto maps = read_mappings(f.path());
  ASSERT_TRUE(maps) << maps.error().message;
  ASSERT_EQ(maps->size(), 4u);
  EXPECT_EQ((*maps)[0].path, "");
  EXPECT_EQ((*maps)[1].path, "");
  EXPECT_EQ((*maps)[2].path, "[heap]");
  EXPECT_EQ((*maps)[3].path, "[vdso]");
  EXPECT_TRUE((*maps)[3].exec);
}

TEST(ProcMaps, MalformedLineIsAnErrorNamingTheLine) {
  MapsFile f(
      "1000-2000 r--p 00000000 08:01 42 /a\n"
      "1000-2000 rq-p 00000000 08:01 42 /b\n");
  auto maps = read_mappings(f.path());
  ASSERT_FALSE(maps);
  EXPECT_EQ(maps.error().code, EINVAL);
  EXPECT_NE(maps.error().message.find(std::string(f.path()) + ":2: "), std::string::npos)
      << maps.error().message;
}

TEST(ProcMaps, InodeRunningIntoThePathIsMalformed) {
  MapsFile f("1000-2000 r--p 00000000 08:01 42/a\n");
  EXPECT_FALSE(read_mappings(f.path()));
}

TEST(ProcMaps, MissingFileIsAnError) {
  auto maps = read_mappings("/nonexistent/maps");
  ASSERT_FALSE(maps);
  EXPECT_EQ(maps.error().code, ENOENT);
}

extern "C" [[gnu::noinline]] int usprobe_proc_maps_test_marker() {
  return 42;
}

TEST(ProcMaps, OwnMapsListThisCodeAsAnExecutableMappingOfTheProgram) {
  auto maps = read_mappings();
  ASSERT_TRUE(maps) << maps.error().message;
  char exe[4096];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  ASSERT_GT(n, 0);
  exe[n] = 0;
  auto addr = reinterpret_cast<uintptr_t>(&usprobe_proc_maps_test_marker);
  const Mapping *found = nullptr;
  for (const Mapping &m : *maps)
    if (addr >= m.start && addr < m.end) found = &m;
  ASSERT_NE(found, nullptr);
  EXPECT_TRUE(found->exec);
  EXPECT_EQ(found->path, exe);
  EXPECT_NE(found->ino, 0u);
}

}  // namespace
}  // namespace usprobe::os

// The line parser itself (os/linux/maps_line.h), which the stack walk and the symbolizer's maps
// lines use without read_mappings: the path as the kernel printed it, a line cut short after its
// fields, and numbers that do not fit.
TEST(MapsLine, ParsesAFileLineAndKeepsThePathAsPrinted) {
  usprobe::os::MapsLine l;
  ASSERT_TRUE(usprobe::os::parse_maps_line(
      "7f6adcaaf000-7f6adcc05000 r-xp 00026000 fe:0a 332835      /tmp/a b (deleted)", l));
  EXPECT_EQ(l.start, 0x7f6adcaaf000u);
  EXPECT_EQ(l.end, 0x7f6adcc05000u);
  EXPECT_TRUE(l.read && l.exec && l.priv && !l.write);
  EXPECT_EQ(l.offset, 0x26000u);
  EXPECT_EQ(l.major, 0xfeu);
  EXPECT_EQ(l.minor, 0x0au);
  EXPECT_EQ(l.ino, 332835u);
  EXPECT_EQ(l.path, "/tmp/a b (deleted)");
  ASSERT_TRUE(usprobe::os::parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0", l));
  EXPECT_EQ(l.path, "");
  ASSERT_TRUE(usprobe::os::parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0   [sta", l));
  EXPECT_EQ(l.path, "[sta");  // cut short by a reader's buffer: the fields before it are whole
}

TEST(MapsLine, RefusesWhatIsNotTheKernelsFormat) {
  usprobe::os::MapsLine l;
  for (const char *bad :
       {"", "7f00-", "7f00-7e00 r-xp 0 fe:00 1", "7f00-7f10 rxp 0 fe:00 1",
        "7f00-7f10 r-xq 0 fe:00 1", "7f00-7f10 r-xp 0 fe00 1", "7f00-7f10 r-xp 0 fe:00 1x",
        "7f00-17f10000000000000 r-xp 0 fe:00 1", "7f00-7f10 r-xp 0 fe:00"})
    EXPECT_FALSE(usprobe::os::parse_maps_line(bad, l)) << bad;
}
