// The checks made before a command is started, the libraries its dynamic linker would load, and
// the environment it gets.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/site_analysis.h"
#include "elf/location.h"
#include "protocol/prepared.h"
#include "resolve/library_finder.h"
#include "target/command.h"
#include "target/launch.h"

namespace usprobe::cli {
namespace {

namespace fs = std::filesystem;

std::string scratch_file(const std::string &name, const std::string &text, bool executable) {
  std::string path =
      fs::temp_directory_path() / ("usprobe-cli-test-" + std::to_string(getpid()) + "-" + name);
  std::ofstream(path) << text;
  ::chmod(path.c_str(), executable ? 0755 : 0644);
  return path;
}

std::string error_of(const std::vector<std::string> &argv) {
  auto c = check_command(argv);
  EXPECT_FALSE(c.has_value()) << argv[0];
  return c ? "" : c.error().message;
}

TEST(CheckCommand, FindsItInPathAndItsDynamicLinker) {
  auto c = check_command({"true", "--version"});
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_TRUE(c->path.ends_with("/true")) << c->path;
  EXPECT_EQ(c->argv[0], "true");
  EXPECT_TRUE(c->elf.starts_with("/"));
  EXPECT_NE(c->interp.find("ld-linux"), std::string::npos) << c->interp;
}

TEST(CheckCommand, ScriptRunsItsInterpreter) {
  std::string script = scratch_file("script", "#!/bin/sh -e\necho hi\n", true);
  auto c = check_command({script});
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->path, script);
  char real[PATH_MAX];
  ASSERT_NE(::realpath("/bin/sh", real), nullptr);
  EXPECT_EQ(c->elf, real);
  fs::remove(script);
}

TEST(CheckCommand, RefusalsNameTheFileAndTheReason) {
  EXPECT_EQ(error_of({"no-such-command-42"}), "command 'no-such-command-42' not found in PATH");
  EXPECT_EQ(error_of({"/no/such/file"}), "/no/such/file: no such file");
  EXPECT_EQ(error_of({"/tmp"}), "/tmp: is a directory");
  std::string plain = scratch_file("plain", "#!/bin/sh\n", false);
  EXPECT_EQ(error_of({plain}), plain + ": not executable");
  std::string text = scratch_file("text", "echo hi\n", true);
  EXPECT_EQ(error_of({text}), text + ": neither an ELF executable nor a '#!' script");
  std::string nested = scratch_file("nested", "#!" + plain + "\n", true);
  ::chmod(plain.c_str(), 0755);
  EXPECT_EQ(error_of({nested}), nested + ": its interpreter " + plain + " is not an ELF file");
  for (const std::string &f : {plain, text, nested}) fs::remove(f);
}

TEST(CheckCommand, StaticExecutableIsRefused) {
  if (std::system("gcc --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "no gcc";
  std::string src = scratch_file("static.c", "int main(void) { return 0; }\n", false);
  std::string bin = src + ".bin";
  if (std::system(("gcc -static -o " + bin + " " + src + " >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << "no static libc";
  EXPECT_EQ(error_of({bin}),
            bin + " is statically linked: LD_PRELOAD cannot load usprobe's agent into it");
  fs::remove(src);
  fs::remove(bin);
}

TEST(LibraryFinder, ParsesTheDynamicLinkersList) {
  auto libs = parse_ld_list(
      "\tlinux-vdso.so.1 (0x00007ffc8a5f2000)\n"
      "\tlibsqlite3.so.0 => /lib/x86_64-linux-gnu/libsqlite3.so.0 (0x00007f3a1c000000)\n"
      "\tlibmissing.so.2 => not found\n"
      "\t/lib64/ld-linux-x86-64.so.2 (0x00007f3a1c5b1000)\n");
  ASSERT_EQ(libs.size(), 2u);
  EXPECT_EQ(libs[0].name, "libsqlite3.so.0");
  EXPECT_EQ(libs[0].path, "/lib/x86_64-linux-gnu/libsqlite3.so.0");
  EXPECT_EQ(libs[1].name, "ld-linux-x86-64.so.2");
  EXPECT_EQ(libs[1].path, "/lib64/ld-linux-x86-64.so.2");
}

TEST(LibraryFinder, ParsesTheCacheKeepingX8664Only) {
  auto libs = parse_ldconfig(
      "671 libs found in cache `/etc/ld.so.cache'\n"
      "\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1\n"
      "\tlibz.so.1 (libc6) => /lib32/libz.so.1\n"
      "\tlibfoo.so (libc6,x86-64, OS ABI: Linux 3.2.0) => /usr/lib/libfoo.so\n");
  ASSERT_EQ(libs.size(), 2u);
  EXPECT_EQ(libs[0].name, "libz.so.1");
  EXPECT_EQ(libs[0].path, "/lib/x86_64-linux-gnu/libz.so.1");
  EXPECT_EQ(libs[1].path, "/usr/lib/libfoo.so");
}

TEST(LibraryFinder, ShortNamesResolveAsTheCommandsDynamicLinkerWould) {
  auto c = check_command({"true"});
  ASSERT_TRUE(c.has_value());
  LibraryFinder finder = LibraryFinder::for_command(c->elf, c->interp);
  auto libc = finder.find("libc");
  ASSERT_TRUE(libc.has_value()) << libc.error().message;
  EXPECT_TRUE(libc->ends_with("/libc.so.6")) << *libc;
  EXPECT_EQ(*finder.find("exe"), c->elf);
  // Not among true's libraries, but in the cache: one it could dlopen.
  auto libm = finder.find("libm");
  ASSERT_TRUE(libm.has_value()) << libm.error().message;
  EXPECT_TRUE(libm->ends_with("/libm.so.6")) << *libm;
  auto missing = finder.find("libdoesnotexist42");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().message, "library 'libdoesnotexist42' not found for " + c->elf +
                                         " (not a path, not among its libraries, not in its "
                                         "library path, not in the ld.so cache)");
}

TEST(LibraryFinder, DlopenSearchesRpathThenLdLibraryPathThenRunpath) {
  // DT_RPATH counts only without DT_RUNPATH; $ORIGIN is the program's directory.
  EXPECT_EQ(dlopen_search_dirs("$ORIGIN/../lib:/opt/r", "", "/ld1;/ld2:/opt/r", "/app/bin"),
            (std::vector<std::string>{"/app/bin/../lib", "/opt/r", "/ld1", "/ld2"}));
  EXPECT_EQ(dlopen_search_dirs("/ignored", "${ORIGIN}/lib", "/ld", "/app"),
            (std::vector<std::string>{"/ld", "/app/lib"}));
  // An empty element is the current directory.
  EXPECT_EQ(dlopen_search_dirs("", "", ":/x", "/app"), (std::vector<std::string>{".", "/x"}));
  EXPECT_TRUE(dlopen_search_dirs("", "", "", "/app").empty());
}

TEST(Launch, EnvironmentPreloadsTheAgentFirstAndNamesTheRegion) {
  std::vector<std::string> env_text = {"PATH=/bin", "LD_PRELOAD=/lib/libother.so",
                                       "USPROBE_AGENT_FD=99", "USPROBE_AGENT_REGION=/old"};
  std::vector<char *> env;
  for (std::string &s : env_text) env.push_back(s.data());
  env.push_back(nullptr);
  auto out = command_environment(env.data(), "/opt/libusprobe-agent.so", 7);
  EXPECT_EQ(out, (std::vector<std::string>{
                     "PATH=/bin", "LD_PRELOAD=/opt/libusprobe-agent.so:/lib/libother.so",
                     "USPROBE_AGENT_FD=7",
                     "USPROBE_AGENT_REGION=/proc/" + std::to_string(getpid()) + "/fd/7"}));
}

TEST(Launch, EnvironmentNamesThePreparedFilesAndDropsAnOldOne) {
  std::vector<std::string> env_text = {"PATH=/bin", "USPROBE_AGENT_PREPARED=/old"};
  std::vector<char *> env;
  for (std::string &s : env_text) env.push_back(s.data());
  env.push_back(nullptr);
  const std::string here = "/proc/" + std::to_string(getpid()) + "/fd/";
  EXPECT_EQ(command_environment(env.data(), "/a.so", 7, 9),
            (std::vector<std::string>{"PATH=/bin", "LD_PRELOAD=/a.so", "USPROBE_AGENT_FD=7",
                                      "USPROBE_AGENT_REGION=" + here + "7",
                                      "USPROBE_AGENT_PREPARED=" + here + "9"}));
  EXPECT_EQ(command_environment(env.data(), "/a.so", 7),
            (std::vector<std::string>{"PATH=/bin", "LD_PRELOAD=/a.so", "USPROBE_AGENT_FD=7",
                                      "USPROBE_AGENT_REGION=" + here + "7"}));
}

// The probed files, prepared (protocol/prepared.h): libc once for an entry and a return probe on
// it, its targets and complete ranges as the engine computes them, its bytes, and an index image
// from which an ElfFile answers as the opened one; and no process can change any of it.
TEST(Launch, PreparedFilesAreSealedAndHoldEachProbedFileOnce) {
  auto libc = elf::resolve_location("libc:malloc");
  ASSERT_TRUE(libc) << libc.error().message;
  if (libc->file->build_id().empty()) GTEST_SKIP() << "libc has no build id";
  const std::string path = libc->file->path();
  const int fd = prepared_files_memfd({path + ":malloc", "uretprobe:" + path + ":free"});
  ASSERT_GE(fd, 0);
  const int seals = fcntl(fd, F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL),
            F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
  EXPECT_EQ(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), MAP_FAILED);
  struct stat st {};
  ASSERT_EQ(fstat(fd, &st), 0);
  const auto size = static_cast<size_t>(st.st_size);
  void *mem = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ASSERT_NE(mem, MAP_FAILED);
  const auto *base = static_cast<const uint8_t *>(mem);
  const auto *head = static_cast<const agent::PreparedHead *>(mem);
  EXPECT_EQ(head->magic, agent::kPreparedMagic);
  ASSERT_EQ(head->files, 1u);
  const auto *file = reinterpret_cast<const agent::PreparedFile *>(head + 1);
  EXPECT_EQ(file->dev, libc->file->id().dev);
  EXPECT_EQ(file->ino, libc->file->id().ino);
  EXPECT_EQ(std::string(file->build_id), libc->file->build_id());
  const std::vector<uint64_t> *expected = file_branch_targets(*libc->file);
  ASSERT_NE(expected, nullptr);
  ASSERT_EQ(file->count, expected->size());
  const auto &ranges = *file_complete_ranges(*libc->file);
  ASSERT_EQ(file->ranges, ranges.size());
  const auto *words = reinterpret_cast<const uint64_t *>(file + 1);
  EXPECT_TRUE(std::equal(expected->begin(), expected->end(), words + file->first));
  for (size_t k = 0; k < ranges.size(); ++k) {
    EXPECT_EQ(words[file->ranges_first + 2 * k], ranges[k].first);
    EXPECT_EQ(words[file->ranges_first + 2 * k + 1], ranges[k].second);
  }
  // The bytes are the file's, and the image the index's, where the record says.
  const elf::FileVersion version = libc->file->version();
  EXPECT_EQ(file->size, version.size);
  EXPECT_EQ(file->mtime_sec, version.mtime_sec);
  EXPECT_EQ(file->mtime_nsec, version.mtime_nsec);
  ASSERT_LE(file->bytes_at + file->size, size);
  ASSERT_LE(file->image_at + file->image_size, size);
  std::span<const uint8_t> bytes = libc->file->bytes(0, file->size);
  EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), base + file->bytes_at));
  const std::vector<uint8_t> image = libc->file->index_image();
  ASSERT_EQ(file->image_size, image.size());
  EXPECT_TRUE(std::equal(image.begin(), image.end(), base + file->image_at));
  munmap(mem, size);
  close(fd);
  EXPECT_EQ(prepared_files_memfd({}), -1);
}

// The watchdog's search (launch.h): the processes that map the region, found by its inode.
TEST(Launch, ProcessesMappingFindsTheOnesThatMapTheMemfd) {
  int fd = ::memfd_create("usprobe", 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 4096), 0);
  void *map = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(map, MAP_FAILED);
  struct stat st;
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_TRUE(processes_mapping(st.st_dev, st.st_ino, getpid()).empty());
  EXPECT_EQ(processes_mapping(st.st_dev, st.st_ino, 0), std::vector<pid_t>{getpid()});
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  pid_t child = ::fork();
  if (child == 0) {  // keeps the mapping until the pipe closes
    char c;
    ::close(go[1]);
    [[maybe_unused]] ssize_t n = ::read(go[0], &c, 1);
    ::_exit(0);
  }
  ::close(go[0]);
  EXPECT_EQ(processes_mapping(st.st_dev, st.st_ino, getpid()), std::vector<pid_t>{child});
  ::close(go[1]);
  ::waitpid(child, nullptr, 0);
  ::munmap(map, 4096);
  ::close(fd);
}

}  // namespace
}  // namespace usprobe::cli
