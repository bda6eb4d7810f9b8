// Bad requests through the public C API. Each one gives a negative errno, a one-line
// usprobe_last_error() that names the file or symbol and the reason, and patches nothing: the
// whole executable segment of libusprobe_targets.so is compared before and after, and the
// targets still compute their results.
#include <elf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <string>
#include <thread>
#include <vector>

#include "support/kernel_uprobe.h"
#include "support/watchdog.h"
#include "targets/targets.h"
#include "usprobe/usprobe.h"
#include "usprobe/usprobe.hpp"

namespace {

constexpr const char *kLib = "libusprobe_targets.so";

std::string lib(const std::string &what) {
  return std::string(kLib) + ":" + what;
}
std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%#" PRIx64, v);
  return buf;
}

// The executable PT_LOAD segments of libusprobe_targets.so as mapped here.
struct TextRange {
  const uint8_t *start = nullptr;
  size_t size = 0;
};
int find_text(dl_phdr_info *info, size_t, void *data) {
  if (!info->dlpi_name || !std::strstr(info->dlpi_name, kLib)) return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr) &ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_LOAD && (ph.p_flags & PF_X)) {
      auto *r = static_cast<TextRange *>(data);
      r->start = reinterpret_cast<const uint8_t *>(info->dlpi_addr + ph.p_vaddr);
      r->size = ph.p_memsz;
      return 1;
    }
  }
  return 0;
}
std::vector<uint8_t> targets_text() {
  TextRange r;
  dl_iterate_phdr(find_text, &r);
  if (!r.start) return {};
  return std::vector<uint8_t>(r.start, r.start + r.size);
}

// Every target still gives its documented result.
bool targets_work() {
  return tgt_counted(41) == 42 && tgt_counted_mid(1) == 2 && tgt_helper(2) == 13 &&
         tgt_call_first(2) == 14 && tgt_six_args(1, 1, 1, 1, 1, 1) == 21 &&
         tgt_rip_first() == TGT_RIP_DATA_INITIAL && tgt_loop_to_entry2(4) == 10;
}

class Errors : public ::testing::Test {
 protected:
  void SetUp() override {
    text_before_ = targets_text();
    ASSERT_FALSE(text_before_.empty()) << "cannot find the text of " << kLib;
  }

  // Attach must fail with `err`; the message must be one line holding every one of `parts`; the
  // targets' code must be untouched. Returns the message.
  std::string expect_refused(const std::string &where, int err,
                             std::initializer_list<const char *> parts, unsigned flags = 0) {
    usprobe_link *link = reinterpret_cast<usprobe_link *>(0x1);
    int rc = usprobe_attach_ex(where.c_str(), nullptr, flags, &link);
    std::string msg = rc == 0 ? std::string("(attached)") : usprobe_last_error();
    EXPECT_EQ(rc, -err) << where << ": got " << rc << " (" << usprobe_strerror(rc) << "): " << msg;
    EXPECT_EQ(link, nullptr) << where;
    if (rc == 0 && link) usprobe_detach(link);
    EXPECT_FALSE(msg.empty()) << where;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << where << ": not one line: " << msg;
    for (const char *p : parts)
      EXPECT_NE(msg.find(p), std::string::npos)
          << where << ": the message does not mention `" << p << "`: " << msg;
    EXPECT_TRUE(targets_text() == text_before_) << where << ": the targets' code changed";
    EXPECT_TRUE(targets_work()) << where;
    std::printf("  %-60s -> %s\n", where.c_str(), msg.c_str());
    return msg;
  }

  std::vector<uint8_t> text_before_;
};

TEST_F(Errors, UnknownFile) {
  expect_refused("/no/such/file:main", ENOENT, {"/no/such/file", "no such file"});
}

TEST_F(Errors, UnknownLibraryShortName) {
  expect_refused("libnosuchlib:main", ENOENT, {"libnosuchlib", "no such library"});
}

TEST_F(Errors, UnknownSymbolSuggestsTheNearestName) {
  expect_refused(lib("tgt_countd"), ENOENT, {kLib, "tgt_countd", "did you mean `tgt_counted`"});
  expect_refused(lib("tgt_no_such_function_at_all"), ENOENT,
                 {kLib, "no function", "tgt_no_such_function_at_all"});
}

TEST_F(Errors, BadSyntax) {
  for (const char *bad : {"tgt_counted", ":tgt_counted",
                          "libusprobe_targets.so:", "libusprobe_targets.so:tgt_counted+",
                          "libusprobe_targets.so:0xzz", "libusprobe_targets.so:tgt_counted+0x2q"})
    expect_refused(bad, EINVAL, {"bad location"});
}

TEST_F(Errors, ReturnProbeOnTheProgramsEntryPoint) {
  // _start is entered by the kernel with argc at [rsp], not called: it has no return address.
  expect_refused("uretprobe:exe:_start", EINVAL, {"_start", "entered, not called"});
}

TEST_F(Errors, OffsetInsideAnInstruction) {
  // tgt_counted: +0 push %rbp (55); +1 mov %rsp,%rbp (48 89 e5); +4 lea: 0x2 and 0x3 are inside
  // the mov.
  const uint8_t *fn = reinterpret_cast<const uint8_t *>(&tgt_counted);
  ASSERT_EQ(fn[0], 0x55);
  ASSERT_EQ(fn[1], 0x48);
  ASSERT_EQ(fn[2], 0x89);
  ASSERT_EQ(fn[3], 0xe5);
  for (unsigned flags : {0u, unsigned{USPROBE_FORCE_INT3}}) {
    expect_refused(lib("tgt_counted+0x2"), EINVAL, {"tgt_counted", "0x2", "inside an instruction"},
                   flags);
    expect_refused(lib("tgt_counted+3"), EINVAL, {"tgt_counted", "0x3", "inside an instruction"},
                   flags);
  }
  // The same by file offset.
  auto where = usprobe::test::file_location_of(fn);
  ASSERT_TRUE(where) << where.error();
  expect_refused(lib(hex(where->offset + 2)), EINVAL, {"inside an instruction"});
}

TEST_F(Errors, OffsetBeyondTheFunction) {
  // tgt_counted is 10 bytes long.
  expect_refused(lib("tgt_counted+0x10"), EINVAL, {"tgt_counted", "beyond the end"});
}

TEST_F(Errors, NotAnElfFile) {
  char dir[] = "/tmp/usprobe_errors_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/x.txt";
  {
    std::ofstream f(path);
    for (int i = 0; i < 20; ++i) f << "this is a text file, not an ELF file\n";
  }
  expect_refused(path + ":0x0", ENOEXEC, {path.c_str(), "not an ELF file"});
  expect_refused(path + ":main", ENOEXEC, {path.c_str(), "not an ELF file"});
  // Shorter than an ELF header.
  const std::string tiny = std::string(dir) + "/tiny";
  { std::ofstream(tiny) << "hi\n"; }
  expect_refused(tiny + ":0x0", ENOEXEC, {tiny.c_str(), "not an ELF file"});
  expect_refused(std::string(dir) + ":0x0", EISDIR, {dir, "directory"});
  unlink(path.c_str());
  unlink(tiny.c_str());
  rmdir(dir);
}

TEST_F(Errors, DataSymbols) {
  // tgt_rip_data is a local object (.symtab), tgt_counted_mid_site_offset an exported one.
  expect_refused(lib("tgt_rip_data"), EINVAL, {"tgt_rip_data", "data symbol"});
  expect_refused(lib("tgt_counted_mid_site_offset"), EINVAL,
                 {"tgt_counted_mid_site_offset", "data symbol"});
  expect_refused("libc:environ", EINVAL, {"libc", "environ", "data symbol"});
}

TEST_F(Errors, OffsetInANonExecutableSegment) {
  // A file offset in libusprobe_targets.so's .rodata, where tgt_counted_mid_site_offset lives.
  auto where = usprobe::test::file_location_of(&tgt_counted_mid_site_offset);
  ASSERT_TRUE(where) << where.error();
  expect_refused(lib(hex(where->offset)), EINVAL,
                 {kLib, hex(where->offset).c_str(), "not in an executable segment"});
  // Past the end of the file.
  expect_refused(lib("0x10000000"), EINVAL, {"0x10000000", "not in an executable segment"});
}

// The file offset of e_entry of an ELF file, from its program headers (0 if not found).
uint64_t entry_file_offset(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  Elf64_Ehdr eh{};
  uint64_t result = 0;
  if (pread(fd, &eh, sizeof eh, 0) == sizeof eh && std::memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0) {
    for (unsigned i = 0; i < eh.e_phnum; ++i) {
      Elf64_Phdr ph{};
      if (pread(fd, &ph, sizeof ph, static_cast<off_t>(eh.e_phoff + i * sizeof ph)) != sizeof ph)
        break;
      if (ph.p_type == PT_LOAD && (ph.p_flags & PF_X) && eh.e_entry >= ph.p_vaddr &&
          eh.e_entry < ph.p_vaddr + ph.p_filesz)
        result = eh.e_entry - ph.p_vaddr + ph.p_offset;
    }
  }
  close(fd);
  return result;
}

// A library that is not mapped is not an error: its probe waits for a dlopen
// (tests/api/follow_test.cc). A program that this process does not run can never be loaded.
TEST_F(Errors, ProgramNotRunByThisProcess) {
  const char *path = "/bin/true";
  uint64_t off = entry_file_offset(path);
  if (off == 0) GTEST_SKIP() << path << ": no executable entry point found";
  expect_refused(std::string(path) + ":" + hex(off), ENOENT,
                 {"/bin/true", "is a program this process does not run"});
}

TEST_F(Errors, StaticExecutable) {
  char dir[] = "/tmp/usprobe_static_XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string src = std::string(dir) + "/prog.c", exe = std::string(dir) + "/prog";
  { std::ofstream(src) << "int main(void) { return 0; }\n"; }
  const std::string cmd = "gcc -static -o '" + exe + "' '" + src + "' > '" + dir + "/log' 2>&1";
  int rc = std::system(cmd.c_str());
  struct stat st {};
  const bool built = rc == 0 && stat(exe.c_str(), &st) == 0;
  if (built) {
    expect_refused(exe + ":main", ENOEXEC, {exe.c_str(), "statically linked"});
    expect_refused(exe + ":" + hex(entry_file_offset(exe.c_str())), ENOEXEC, {"statically linked"});
  }
  int cleaned = std::system(("rm -rf '" + std::string(dir) + "'").c_str());
  (void)cleaned;
  if (!built)
    GTEST_SKIP() << "cannot build a static executable (`" << cmd << "` exited with " << rc
                 << "): gcc or libc.a missing";
}

TEST_F(Errors, SomeoneElsesBreakpointAtTheSite) {
  // A debugger's int3 on tgt_helper's first byte, written the way debuggers and usprobe write
  // code: through /proc/self/mem.
  auto *site = reinterpret_cast<const uint8_t *>(&tgt_helper);
  const uint8_t original = site[0];
  ASSERT_NE(original, 0xCC);
  int fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
  if (fd < 0) GTEST_SKIP() << "/proc/self/mem: " << std::strerror(errno);
  const uint8_t trap = 0xCC;
  ASSERT_EQ(pwrite(fd, &trap, 1, static_cast<off_t>(reinterpret_cast<uintptr_t>(site))), 1)
      << std::strerror(errno);
  ASSERT_EQ(site[0], 0xCC);
  text_before_ = targets_text();  // with the breakpoint: that is what must not change now

  // Not through expect_refused: tgt_helper must not be called while the int3 is there.
  for (unsigned flags : {0u, unsigned{USPROBE_FORCE_INT3}}) {
    usprobe_link *link = nullptr;
    int rc = usprobe_attach_ex(lib("tgt_helper").c_str(), nullptr, flags, &link);
    std::string msg = usprobe_last_error();
    EXPECT_EQ(rc, -EBUSY) << msg;
    EXPECT_EQ(link, nullptr);
    if (link) usprobe_detach(link);
    EXPECT_NE(msg.find("tgt_helper"), std::string::npos) << msg;
    EXPECT_NE(msg.find("differs from the file"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_TRUE(targets_text() == text_before_) << "the targets' code changed";
    std::printf("  breakpoint at tgt_helper -> %s\n", msg.c_str());
  }

  ASSERT_EQ(pwrite(fd, &original, 1, static_cast<off_t>(reinterpret_cast<uintptr_t>(site))), 1);
  close(fd);
  EXPECT_EQ(tgt_helper(2), 13);
  // With the breakpoint gone, the probe can be placed.
  usprobe_link *link = nullptr;
  ASSERT_EQ(usprobe_attach(lib("tgt_helper").c_str(), nullptr, &link), 0) << usprobe_last_error();
  EXPECT_EQ(tgt_helper(2), 13);
  EXPECT_EQ(usprobe_link_hits(link), 1u);
  EXPECT_EQ(usprobe_detach(link), 0);
  EXPECT_EQ(site[0], original);
}

TEST_F(Errors, KernelUprobeAtTheSite) {
  auto where = usprobe::test::file_location_of(reinterpret_cast<const void *>(&tgt_six_args));
  ASSERT_TRUE(where) << where.error();
  auto kprobe = usprobe::test::KernelUprobe::open(where->path, where->offset);
  if (!kprobe) GTEST_SKIP() << "no kernel uprobe: " << kprobe.error();
  ASSERT_TRUE(kprobe->enable());
  auto *site = reinterpret_cast<const uint8_t *>(&tgt_six_args);
  EXPECT_EQ(site[0], 0xCC) << "the kernel's breakpoint is not visible in this process";
  text_before_ = targets_text();

  // The kernel also writes its breakpoint into every other mapping of the file that may execute,
  // including a PROT_READ mmap of it: such a mapping does not show the file's bytes. (If usprobe
  // takes its "original bytes" from one, its check against the live code cannot see the kernel's
  // int3, and its relocated window starts with that int3.)
  {
    int fd = open(where->path.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    uint8_t from_read = 0;
    ASSERT_EQ(pread(fd, &from_read, 1, static_cast<off_t>(where->offset)), 1);
    const size_t len = where->offset + 1;
    void *m = mmap(nullptr, len, PROT_READ, MAP_PRIVATE, fd, 0);
    ASSERT_NE(m, MAP_FAILED);
    const uint8_t from_mmap = static_cast<const uint8_t *>(m)[where->offset];
    munmap(m, len);
    close(fd);
    EXPECT_NE(from_read, 0xCC);
    std::printf("  tgt_six_args's first byte: live %#x, read(2) %#x, PROT_READ mmap %#x\n", site[0],
                from_read, from_mmap);
  }

  for (unsigned flags : {0u, unsigned{USPROBE_FORCE_INT3}}) {
    // On success expect_refused detaches at once: tgt_six_args is not called in between (its
    // relocated window may hold the kernel's int3, which would kill the process with SIGTRAP).
    std::string msg = expect_refused(lib("tgt_six_args"), EBUSY, {"tgt_six_args"}, flags);
    EXPECT_NE(msg.find("kernel uprobe"), std::string::npos) << msg;
  }
  EXPECT_EQ(tgt_six_args(1, 2, 3, 4, 5, 6), 91);
  EXPECT_GE(kprobe->count(), 1u) << "the kernel uprobe did not see the calls";

  kprobe = std::unexpected(std::string("closed"));  // closes the event: the kernel removes it
  EXPECT_NE(site[0], 0xCC);
  usprobe_link *link = nullptr;
  ASSERT_EQ(usprobe_attach(lib("tgt_six_args").c_str(), nullptr, &link), 0) << usprobe_last_error();
  EXPECT_EQ(tgt_six_args(1, 2, 3, 4, 5, 6), 91);
  EXPECT_EQ(usprobe_link_hits(link), 1u);
  EXPECT_EQ(usprobe_detach(link), 0);
}

TEST_F(Errors, BatchWithGoodAndBadLocations) {
  const std::string locs[] = {
      lib("tgt_counted"),          // good
      lib("tgt_countd"),           // no such symbol
      lib("tgt_six_args"),         // good
      "/no/such/file:main",        // no such file
      lib("tgt_counted_mid+0x2"),  // inside an instruction
      lib("tgt_rip_data"),         // data
      lib("tgt_helper"),           // good
  };
  constexpr size_t n = std::size(locs);
  const bool good[n] = {true, false, true, false, false, false, true};
  const int expect_err[n] = {0, -ENOENT, 0, -ENOENT, -EINVAL, -EINVAL, 0};
  const char *ptrs[n];
  for (size_t i = 0; i < n; ++i) ptrs[i] = locs[i].c_str();
  usprobe_link *links[n];
  int errors[n];
  for (size_t i = 0; i < n; ++i) {
    links[i] = reinterpret_cast<usprobe_link *>(0x1);
    errors[i] = 12345;
  }
  int attached = usprobe_attach_batch(ptrs, n, nullptr, links, errors);
  const std::string msg = usprobe_last_error();
  EXPECT_EQ(attached, 3) << msg;
  for (size_t i = 0; i < n; ++i) {
    SCOPED_TRACE(locs[i]);
    EXPECT_EQ(links[i] != nullptr, good[i]);
    EXPECT_EQ(errors[i], expect_err[i]);
  }
  // One line per failure, naming it.
  std::vector<std::string> lines;
  for (size_t start = 0; start <= msg.size();) {
    size_t nl = msg.find('\n', start);
    if (nl == std::string::npos) nl = msg.size();
    lines.push_back(msg.substr(start, nl - start));
    start = nl + 1;
  }
  ASSERT_EQ(lines.size(), 4u) << msg;
  EXPECT_NE(lines[0].find("did you mean `tgt_counted`"), std::string::npos) << lines[0];
  EXPECT_NE(lines[1].find("/no/such/file"), std::string::npos) << lines[1];
  EXPECT_NE(lines[2].find("inside an instruction"), std::string::npos) << lines[2];
  EXPECT_NE(lines[3].find("data symbol"), std::string::npos) << lines[3];
  std::printf("%s\n", msg.c_str());

  // The good ones count.
  EXPECT_EQ(tgt_counted(1), 2);
  EXPECT_EQ(tgt_six_args(1, 1, 1, 1, 1, 1), 21);
  EXPECT_EQ(tgt_helper(1), 10);
  for (size_t i = 0; i < n; ++i)
    if (good[i] && links[i]) {
      EXPECT_EQ(usprobe_link_hits(links[i]), 1u) << locs[i];
    }
  std::vector<usprobe_link *> attached_links;
  for (size_t i = 0; i < n; ++i)
    if (links[i]) attached_links.push_back(links[i]);
  EXPECT_EQ(usprobe_detach_batch(attached_links.data(), attached_links.size()), 0)
      << usprobe_last_error();
  EXPECT_TRUE(targets_text() == text_before_) << "not restored after the batch";
  EXPECT_TRUE(targets_work());
}

TEST_F(Errors, NullArguments) {
  EXPECT_EQ(usprobe_detach(nullptr), -EINVAL);
  EXPECT_FALSE(std::string(usprobe_last_error()).empty());

  usprobe_link *link = nullptr;
  EXPECT_EQ(usprobe_attach(nullptr, nullptr, &link), -EINVAL);
  EXPECT_EQ(link, nullptr);
  EXPECT_FALSE(std::string(usprobe_last_error()).empty());
  EXPECT_EQ(usprobe_attach(lib("tgt_counted").c_str(), nullptr, nullptr), -EINVAL);
  EXPECT_FALSE(std::string(usprobe_last_error()).empty());
  EXPECT_TRUE(targets_text() == text_before_);

  // Accessors on a NULL link answer without crashing.
  EXPECT_EQ(usprobe_link_hits(nullptr), 0u);
  EXPECT_EQ(usprobe_link_missed(nullptr), 0u);
  EXPECT_EQ(usprobe_link_uses_int3(nullptr), 0);
  EXPECT_STREQ(usprobe_link_int3_reason(nullptr), "");
  EXPECT_STREQ(usprobe_link_name(nullptr), "");
}

TEST_F(Errors, Strerror) {
  for (int err : {ENOENT, EINVAL, EBUSY, ENOEXEC}) {
    const char *s = usprobe_strerror(-err);
    ASSERT_NE(s, nullptr);
    EXPECT_GT(std::strlen(s), 0u) << err;
  }
  EXPECT_STREQ(usprobe_strerror(-ENOENT), std::strerror(ENOENT));
}

TEST_F(Errors, LastErrorIsPerThread) {
  usprobe_link *link = nullptr;
  EXPECT_EQ(usprobe_attach("/no/such/file:main", nullptr, &link), -ENOENT);
  const std::string mine = usprobe_last_error();
  std::string theirs;
  std::thread([&] {
    usprobe_link *l = nullptr;
    EXPECT_EQ(usprobe_attach(lib("tgt_countd").c_str(), nullptr, &l), -ENOENT);
    theirs = usprobe_last_error();
  }).join();
  EXPECT_EQ(usprobe_last_error(), mine);
  EXPECT_NE(theirs.find("tgt_countd"), std::string::npos) << theirs;
}

TEST_F(Errors, UnknownFlagBitsAreRefused) {
  const std::string msg = expect_refused(lib("tgt_counted"), EINVAL, {"unknown flag", "0x100"},
                                         0x100u | USPROBE_FORCE_INT3);
  // The known flags are named, so that the reader sees what was meant.
  EXPECT_NE(msg.find("USPROBE_FORCE_INT3"), std::string::npos) << msg;

  const char *locs[] = {"libusprobe_targets.so:tgt_counted", "libusprobe_targets.so:tgt_helper"};
  usprobe_link *links[2] = {reinterpret_cast<usprobe_link *>(0x1),
                            reinterpret_cast<usprobe_link *>(0x1)};
  int errors[2] = {1, 1};
  EXPECT_EQ(usprobe_attach_batch_ex(locs, 2, nullptr, 0x80000000u, links, errors), -EINVAL);
  EXPECT_NE(std::string(usprobe_last_error()).find("0x80000000"), std::string::npos)
      << usprobe_last_error();
  EXPECT_EQ(links[0], nullptr);
  EXPECT_EQ(links[1], nullptr);
  EXPECT_EQ(errors[0], -EINVAL);
  EXPECT_EQ(errors[1], -EINVAL);
  EXPECT_TRUE(targets_text() == text_before_);
}

TEST_F(Errors, BatchArgumentsAreChecked) {
  // No array where n says there are links: refused, not followed.
  EXPECT_EQ(usprobe_detach_batch(nullptr, 3), -EINVAL);
  EXPECT_NE(std::string(usprobe_last_error()).find("NULL"), std::string::npos)
      << usprobe_last_error();
  EXPECT_EQ(usprobe_detach_batch(nullptr, 0), 0);
  usprobe_link *links[3] = {};
  EXPECT_EQ(usprobe_attach_batch(nullptr, 3, nullptr, links, nullptr), -EINVAL);
  const char *one[] = {"libusprobe_targets.so:tgt_counted"};
  EXPECT_EQ(usprobe_attach_batch(one, 1, nullptr, nullptr, nullptr), -EINVAL);

  // A NULL location fails alone; the others attach.
  const char *locs[] = {"libusprobe_targets.so:tgt_counted", nullptr,
                        "libusprobe_targets.so:tgt_helper"};
  int errors[3] = {1, 1, 1};
  const usprobe_consumer counter{nullptr, nullptr, nullptr};
  EXPECT_EQ(usprobe_attach_batch(locs, 3, &counter, links, errors), 2) << usprobe_last_error();
  EXPECT_NE(links[0], nullptr);
  EXPECT_EQ(links[1], nullptr);
  EXPECT_NE(links[2], nullptr);
  EXPECT_EQ(errors[0], 0);
  EXPECT_EQ(errors[1], -EINVAL);
  EXPECT_EQ(errors[2], 0);
  EXPECT_NE(std::string(usprobe_last_error()).find("locations[1] is NULL"), std::string::npos)
      << usprobe_last_error();
  EXPECT_EQ(tgt_counted(1), 2);
  EXPECT_EQ(usprobe_link_hits(links[0]), 1u);

  // A link twice in a batch: refused, and nothing is detached.
  usprobe_link *twice[] = {links[0], links[2], links[0]};
  EXPECT_EQ(usprobe_detach_batch(twice, 3), -EINVAL);
  EXPECT_NE(std::string(usprobe_last_error()).find("twice"), std::string::npos)
      << usprobe_last_error();
  EXPECT_EQ(tgt_counted(1), 2);
  EXPECT_EQ(usprobe_link_hits(links[0]), 2u) << "the refused batch detached the link";
  // NULL entries are skipped: the batch's own result can be passed back as it is.
  EXPECT_EQ(usprobe_detach_batch(links, 3), 0) << usprobe_last_error();
  EXPECT_TRUE(targets_text() == text_before_);
  EXPECT_TRUE(targets_work());
}

TEST_F(Errors, DetachingALinkTwiceIsRefused) {
  usprobe_link *link = nullptr;
  ASSERT_EQ(usprobe_attach(lib("tgt_counted").c_str(), nullptr, &link), 0) << usprobe_last_error();
  ASSERT_EQ(usprobe_detach(link), 0) << usprobe_last_error();
  // The link is freed: the second detach must find out without reading it (ASan would say).
  EXPECT_EQ(usprobe_detach(link), -EINVAL);
  EXPECT_NE(std::string(usprobe_last_error()).find("not an attached link"), std::string::npos)
      << usprobe_last_error();
  usprobe_link *batch[] = {link};
  EXPECT_EQ(usprobe_detach_batch(batch, 1), -EINVAL);
  EXPECT_TRUE(targets_text() == text_before_);
  EXPECT_TRUE(targets_work());
}

TEST_F(Errors, HitAccessorsAnswerANullHit) {
  EXPECT_EQ(usprobe_arg(nullptr, 0), 0u);
  usprobe_set_arg(nullptr, 0, 1);
  EXPECT_EQ(usprobe_hit_reg(nullptr, USPROBE_RAX), 0u);
  EXPECT_EQ(usprobe_hit_regs(nullptr), nullptr);
  EXPECT_EQ(usprobe_reg_index(static_cast<usprobe_reg>(99)), -1);
  EXPECT_EQ(usprobe_hit_ip(nullptr), 0u);
  EXPECT_EQ(usprobe_hit_sp(nullptr), 0u);
  EXPECT_EQ(usprobe_hit_flags(nullptr), 0u);
  EXPECT_EQ(usprobe_hit_return_address(nullptr), 0u);
  EXPECT_EQ(usprobe_retval(nullptr), 0u);
  EXPECT_EQ(usprobe_retval_high(nullptr), 0u);
  EXPECT_TRUE(std::isnan(usprobe_retval_double(nullptr)));
  EXPECT_EQ(usprobe_session(nullptr), nullptr);
  usprobe_session_skip_return(nullptr);
  EXPECT_STREQ(usprobe_hit_probe_name(nullptr), "");
  uint64_t ips[4];
  EXPECT_EQ(usprobe_hit_stack(nullptr, ips, 4, 0), -EINVAL);
  EXPECT_EQ(usprobe_link_sites(nullptr), 0);
  EXPECT_EQ(usprobe_link_return_hits(nullptr), 0u);
  EXPECT_EQ(usprobe_list_functions(nullptr, nullptr, nullptr), -EINVAL);
  EXPECT_NE(usprobe_strerror(INT_MIN), nullptr);
}

// --- Calls from a handler (usprobe.h, "Calls from a handler") ---

// A handler that detaches its own link: the detach would wait for a grace period that this very
// handler holds open. It must be refused at once, and the program go on.
struct SelfDetach {
  usprobe_link *link = nullptr;
  int calls = 0;
  int detach_rc = 1, batch_rc = 1;
  const char *why = nullptr;
};

void detach_own_link(usprobe_hit *, void *user) {
  auto *s = static_cast<SelfDetach *>(user);
  if (s->calls++ > 0) return;
  s->detach_rc = usprobe_detach(s->link);
  s->why = usprobe_last_error();  // a static string for this refusal
  s->batch_rc = usprobe_detach_batch(&s->link, 1);
}

TEST_F(Errors, DetachInsideAHandlerIsRefusedWithEdeadlk) {
  usprobe::test::Watchdog watchdog("usprobe_detach from a handler", std::chrono::seconds(30));
  SelfDetach state;
  const usprobe_consumer c{detach_own_link, &state, nullptr};
  ASSERT_EQ(usprobe_attach(lib("tgt_counted").c_str(), &c, &state.link), 0) << usprobe_last_error();
  EXPECT_EQ(tgt_counted(41), 42);  // returns: the handler was not stuck in the detach
  EXPECT_EQ(state.detach_rc, -EDEADLK);
  EXPECT_EQ(state.batch_rc, -EDEADLK);
  ASSERT_NE(state.why, nullptr);
  EXPECT_NE(std::string(state.why).find("handler"), std::string::npos) << state.why;
  EXPECT_NE(std::string(usprobe_strerror(-EDEADLK)).find("handler"), std::string::npos)
      << usprobe_strerror(-EDEADLK);
  // The link is still attached and counts.
  EXPECT_EQ(tgt_counted(1), 2);
  EXPECT_EQ(usprobe_link_hits(state.link), 2u);
  EXPECT_EQ(state.calls, 2);
  // Once the handler has returned, it detaches as usual.
  EXPECT_EQ(usprobe_detach(state.link), 0) << usprobe_last_error();
  EXPECT_EQ(tgt_counted(1), 2);
  EXPECT_EQ(state.calls, 2);
  EXPECT_TRUE(targets_text() == text_before_);
  EXPECT_TRUE(targets_work());
}

// The same through the C++ API: Link::detach() in a handler reports EDEADLK and keeps the link.
struct CxxSelfDetach {
  usprobe::Link link;
  int code = 0;
  bool attached_after = false;
};

void cxx_detach_own_link(usprobe_hit *, void *user) {
  auto *s = static_cast<CxxSelfDetach *>(user);
  if (s->code != 0) return;
  auto r = s->link.detach();
  s->code = r ? -1 : r.error().code;
  s->attached_after = static_cast<bool>(s->link);
}

TEST_F(Errors, CxxLinkDetachInsideAHandlerKeepsTheLink) {
  usprobe::test::Watchdog watchdog("Link::detach from a handler", std::chrono::seconds(30));
  CxxSelfDetach state;
  auto link = usprobe::attach(lib("tgt_counted"), cxx_detach_own_link, &state);
  ASSERT_TRUE(link) << link.error().message;
  state.link = std::move(*link);
  EXPECT_EQ(tgt_counted(41), 42);
  EXPECT_EQ(state.code, EDEADLK);
  EXPECT_TRUE(state.attached_after);
  EXPECT_EQ(state.link.hits(), 1u);
  EXPECT_TRUE(state.link.detach());
  EXPECT_TRUE(targets_text() == text_before_);
}

// A handler that runs while its thread is inside usprobe's registry: here a probe on getpid, which
// an attach calls while it holds the registry's lock (the thread round that checks the other
// threads before a jump is written; libc's, so a sanitizer's interceptors do not hide it).
// Attaching from that handler would wait for the lock its own thread holds: refused with EDEADLK.
// The queries take no lock and answer there too.
struct NestedAttach {
  usprobe_link *getpid_link = nullptr;
  int attempts = 0, refused = 0, other = 0, other_rc = 0;
  int wrong_sites = 0;
  const char *why = nullptr;
};
thread_local NestedAttach *t_nested = nullptr;  // armed on the test's thread only

void attach_from_getpid(usprobe_hit *, void *) {
  NestedAttach *s = t_nested;
  if (!s) return;
  ++s->attempts;
  if (usprobe_link_sites(s->getpid_link) != 1 || usprobe_link_uses_int3(s->getpid_link) < 0 ||
      usprobe_link_int3_reason(s->getpid_link) == nullptr)
    ++s->wrong_sites;
  usprobe_link *l = nullptr;
  const int rc = usprobe_attach("libusprobe_targets.so:tgt_helper", nullptr, &l);
  if (rc == -EDEADLK) {
    ++s->refused;
    s->why = usprobe_last_error();
  } else {
    ++s->other;
    s->other_rc = rc;
    if (l) usprobe_detach(l);  // (refused too: a handler)
  }
}

TEST_F(Errors, AttachFromAHandlerInsideAnAttachIsRefusedWithEdeadlk) {
  usprobe::test::Watchdog watchdog("usprobe_attach from a handler inside an attach",
                                   std::chrono::seconds(40));
  NestedAttach state;
  const usprobe_consumer c{attach_from_getpid, nullptr, nullptr};
  ASSERT_EQ(usprobe_attach("libc:getpid", &c, &state.getpid_link), 0) << usprobe_last_error();
  usprobe_link *outer = nullptr;
  t_nested = &state;
  const int rc = usprobe_attach(lib("tgt_counted").c_str(), nullptr, &outer);
  t_nested = nullptr;
  EXPECT_EQ(rc, 0) << usprobe_last_error();
  EXPECT_GT(state.attempts, 0) << "the attach did not call getpid";
  EXPECT_EQ(state.refused, state.attempts);
  EXPECT_EQ(state.other, 0) << usprobe_strerror(state.other_rc);
  EXPECT_EQ(state.wrong_sites, 0);
  if (state.why) {
    EXPECT_NE(std::string(state.why).find("inside usprobe's registry"), std::string::npos)
        << state.why;
  }
  EXPECT_EQ(usprobe_detach(state.getpid_link), 0) << usprobe_last_error();
  EXPECT_EQ(tgt_counted(1), 2);
  EXPECT_EQ(usprobe_link_hits(outer), 1u);
  EXPECT_EQ(usprobe_detach(outer), 0) << usprobe_last_error();
  EXPECT_TRUE(targets_text() == text_before_);
  EXPECT_TRUE(targets_work());
}

// Outside the registry, a handler may attach: the new probe counts from then on.
struct AttachInHandler {
  usprobe_link *attached = nullptr;
  int rc = 1;
};

void attach_tgt_helper(usprobe_hit *, void *user) {
  auto *s = static_cast<AttachInHandler *>(user);
  if (s->rc == 1) s->rc = usprobe_attach("libusprobe_targets.so:tgt_helper", nullptr, &s->attached);
}

TEST_F(Errors, AttachFromAHandlerWorks) {
  usprobe::test::Watchdog watchdog("usprobe_attach from a handler", std::chrono::seconds(30));
  AttachInHandler state;
  const usprobe_consumer c{attach_tgt_helper, &state, nullptr};
  usprobe_link *link = nullptr;
  ASSERT_EQ(usprobe_attach(lib("tgt_counted").c_str(), &c, &link), 0) << usprobe_last_error();
  EXPECT_EQ(tgt_counted(41), 42);
  EXPECT_EQ(state.rc, 0) << usprobe_last_error();
  ASSERT_NE(state.attached, nullptr);
  EXPECT_EQ(tgt_helper(2), 13);
  EXPECT_EQ(usprobe_link_hits(state.attached), 1u);
  usprobe_link *both[] = {link, state.attached};
  EXPECT_EQ(usprobe_detach_batch(both, 2), 0) << usprobe_last_error();
  EXPECT_TRUE(targets_text() == text_before_);
  EXPECT_TRUE(targets_work());
}

}  // namespace
