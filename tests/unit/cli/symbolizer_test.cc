// The symbolizer on hand-written maps text (which mappings can name an address, and how) and on
// this test binary itself: addresses of functions defined here must come back as their names.
#include "resolve/symbolizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <optional>
#include <string>

#include "elf/elf_file.h"

// Functions with known names to look up. noinline and used, so each has its own bytes; the C++
// one has a mangled name in the symbol table.
extern "C" [[gnu::noinline, gnu::used]] int usprobe_symbolizer_test_leaf(int x) {
  asm volatile("" : "+r"(x));
  return x + 1;
}

namespace usprobe_symbolizer_test {

[[gnu::noinline, gnu::used]] long twice(long x, const char *why);
long twice(long x, const char *why) {
  asm volatile("" : "+r"(x) : "r"(why));
  return 2 * x;
}

// Returns the address its caller will return to, so the test has a real return address.
[[gnu::noinline]] uintptr_t return_address_of_this_call();
uintptr_t return_address_of_this_call() {
  auto ra = reinterpret_cast<uintptr_t>(__builtin_extract_return_addr(__builtin_return_address(0)));
  asm volatile("" : "+r"(ra));
  return ra;
}

// Calls the function above (not as a tail call: the result is used after it) and hands back
// the return address that call pushed, which lies inside this function.
[[gnu::noinline]] uintptr_t caller_of_return_address(int *sink);
uintptr_t caller_of_return_address(int *sink) {
  uintptr_t ra = return_address_of_this_call();
  *sink += 1;
  asm volatile("" ::: "memory");
  return ra;
}

}  // namespace usprobe_symbolizer_test

namespace usprobe::cli {
namespace {

constexpr std::string_view kSampleMaps =
    "55d0c8a00000-55d0c8a02000 r--p 00000000 fe:01 1234                       /usr/bin/app\n"
    "55d0c8a02000-55d0c8a05000 r-xp 00002000 fe:01 1234                       /usr/bin/app\n"
    "55d0c8c00000-55d0c8c21000 rw-p 00000000 00:00 0                          [heap]\n"
    "7f10a0000000-7f10a0021000 rw-p 00000000 00:00 0 \n"
    "7f10a1000000-7f10a1028000 r--p 00000000 fe:01 5678                       "
    "/usr/lib/x86_64-linux-gnu/libc.so.6\n"
    "7f10a1028000-7f10a119d000 r-xp 00028000 fe:01 5678                       "
    "/usr/lib/x86_64-linux-gnu/libc.so.6\n"
    "7f10a2000000-7f10a2001000 r-xp 00001000 fe:01 9999                       "
    "/tmp/my plugins/libplug in.so\n"
    "7f10a3000000-7f10a3004000 r-xp 00000000 fe:01 4242                       "
    "/tmp/old.so (deleted)\n"
    "7ffd5e9f0000-7ffd5ea11000 rw-p 00000000 00:00 0                          [stack]\n"
    "7ffd5eb2c000-7ffd5eb2e000 r-xp 00000000 00:00 0                          [vdso]\n"
    "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";

TEST(SymbolizerModuleMap, KeepsFilesAndNamedMappingsButNotAnonymousMemory) {
  auto map = parse_module_map(kSampleMaps);
  ASSERT_TRUE(map) << map.error().message;
  std::vector<std::string> paths;
  for (const Module &m : map->modules()) paths.push_back(m.path);
  EXPECT_EQ(paths,
            (std::vector<std::string>{
                "/usr/bin/app", "/usr/bin/app", "[heap]", "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_64-linux-gnu/libc.so.6", "/tmp/my plugins/libplug in.so",
                "/tmp/old.so", "[stack]", "[vdso]", "[vsyscall]"}));
  EXPECT_EQ(map->find(0x7f10a0000010), nullptr) << "anonymous memory has no name";
}

TEST(SymbolizerModuleMap, FindsTheMappingAndItsFileOffset) {
  auto map = parse_module_map(kSampleMaps);
  ASSERT_TRUE(map) << map.error().message;
  const Module *app = map->find(0x55d0c8a02010);
  ASSERT_NE(app, nullptr);
  EXPECT_EQ(app->path, "/usr/bin/app");
  EXPECT_TRUE(app->exec);
  EXPECT_EQ(app->file_offset(0x55d0c8a02010), 0x2010u);

  const Module *libc = map->find(0x7f10a1030000);
  ASSERT_NE(libc, nullptr);
  EXPECT_EQ(libc->file_offset(0x7f10a1030000), 0x30000u);

  EXPECT_EQ(map->find(0x55d0c8a05000), nullptr) << "end is exclusive";
  EXPECT_EQ(map->find(0x1000), nullptr);
  EXPECT_EQ(map->find(0xffffffffffffffff), nullptr);
}

TEST(SymbolizerModuleMap, KeepsSpacesInPathsAndMarksDeletedFiles) {
  auto map = parse_module_map(kSampleMaps);
  ASSERT_TRUE(map) << map.error().message;
  const Module *plugin = map->find(0x7f10a2000100);
  ASSERT_NE(plugin, nullptr);
  EXPECT_EQ(plugin->path, "/tmp/my plugins/libplug in.so");
  EXPECT_FALSE(plugin->deleted);
  const Module *old = map->find(0x7f10a3000100);
  ASSERT_NE(old, nullptr);
  EXPECT_EQ(old->path, "/tmp/old.so");
  EXPECT_TRUE(old->deleted);
}

TEST(SymbolizerModuleMap, RejectsMalformedTextNamingTheLine) {
  auto map = parse_module_map(
      "55d0c8a00000-55d0c8a02000 r--p 00000000 fe:01 1234 /usr/bin/app\n"
      "this is not a maps line\n");
  ASSERT_FALSE(map);
  EXPECT_NE(map.error().message.find(":2:"), std::string::npos) << map.error().message;
  EXPECT_NE(map.error().message.find("this is not a maps line"), std::string::npos);
  EXPECT_EQ(map.error().message.find("/proc/self/fd"), std::string::npos) << map.error().message;
}

TEST(SymbolizerModuleMap, EmptyTextIsAnEmptyMap) {
  auto map = parse_module_map("");
  ASSERT_TRUE(map) << map.error().message;
  EXPECT_TRUE(map->modules().empty());
}

TEST(SymbolizerFallback, NamesAddressesOutsideAnyFunction) {
  auto map = parse_module_map(kSampleMaps);
  ASSERT_TRUE(map) << map.error().message;
  Symbolizer symbolizer(std::move(*map));

  Frame anon = symbolizer.symbolize(0x7f10a0000010);
  EXPECT_EQ(anon.name(), "[unknown]");
  EXPECT_EQ(anon.name_with_offset(), "[unknown] 0x7f10a0000010");

  Frame vdso = symbolizer.symbolize(0x7ffd5eb2c123);
  EXPECT_EQ(vdso.name(), "[vdso]");
  EXPECT_EQ(vdso.name_with_offset(), "[vdso]+0x123");

  // A deleted file's path may name another file now: only its offset is trusted.
  Frame old = symbolizer.symbolize(0x7f10a3000100);
  EXPECT_EQ(old.name(), "old.so+0x100");
  EXPECT_TRUE(old.function.empty());

  // A file that does not exist (the sample paths are made up): module and offset.
  Frame plugin = symbolizer.symbolize(0x7f10a2000100);
  EXPECT_EQ(plugin.name(), "libplug in.so+0x1100");
  EXPECT_EQ(plugin.name_with_offset(), "libplug in.so+0x1100 [/tmp/my plugins/libplug in.so]");

  EXPECT_EQ(symbolizer.symbolize(0).name(), "[unknown]");
  EXPECT_EQ(symbolizer.symbolize(0, /*return_address=*/true).name(), "[unknown]");
}

TEST(SymbolizerDemangle, DemanglesCxxNamesAndLeavesOthersAlone) {
  EXPECT_EQ(demangle("_ZN2ns5parseEPKc"), "ns::parse(char const*)");
  EXPECT_EQ(demangle("malloc"), "malloc");
  EXPECT_EQ(demangle("i"), "i") << "a plain C name that is also a type code";
  EXPECT_EQ(demangle("_Znot_a_mangled_name"), "_Znot_a_mangled_name");
}

// This process, named from its own /proc/self/maps.
class SymbolizerSelf : public ::testing::Test {
 protected:
  void SetUp() override {
    auto map = read_module_map(::getpid());
    ASSERT_TRUE(map) << map.error().message;
    symbolizer_.emplace(std::move(*map));
  }
  static uint64_t address_of(const void *p) { return reinterpret_cast<uint64_t>(p); }

  std::optional<Symbolizer> symbolizer_;
};

TEST_F(SymbolizerSelf, NamesAFunctionOfThisBinaryAtItsEntryAndInside) {
  uint64_t entry = address_of(reinterpret_cast<const void *>(&usprobe_symbolizer_test_leaf));
  Frame f = symbolizer_->symbolize(entry);
  EXPECT_EQ(f.function, "usprobe_symbolizer_test_leaf");
  EXPECT_EQ(f.function_offset, 0u);
  EXPECT_EQ(f.name(), "usprobe_symbolizer_test_leaf");

  char exe[4096];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  ASSERT_GT(n, 0);
  EXPECT_EQ(f.module, std::string(exe, static_cast<size_t>(n)));
  EXPECT_EQ(f.name_with_offset(), "usprobe_symbolizer_test_leaf+0x0 [" + f.module + "]");

  Frame inside = symbolizer_->symbolize(entry + 1);
  EXPECT_EQ(inside.function, "usprobe_symbolizer_test_leaf");
  EXPECT_EQ(inside.function_offset, 1u);
  EXPECT_EQ(inside.file_offset, f.file_offset + 1);
}

TEST_F(SymbolizerSelf, DemanglesCxxFunctionNames) {
  Frame f = symbolizer_->symbolize(
      address_of(reinterpret_cast<const void *>(&usprobe_symbolizer_test::twice)));
  EXPECT_EQ(f.function, "usprobe_symbolizer_test::twice(long, char const*)");
  EXPECT_EQ(f.function_offset, 0u);
}

TEST_F(SymbolizerSelf, ReturnAddressNamesTheCaller) {
  int sink = 0;
  uint64_t ra = usprobe_symbolizer_test::caller_of_return_address(&sink);
  Frame f = symbolizer_->symbolize(ra, /*return_address=*/true);
  EXPECT_EQ(f.function, "usprobe_symbolizer_test::caller_of_return_address(int*)");
  EXPECT_GT(f.function_offset, 0u) << "the offset is the return address's, after the call";
}

// A call that is the last instruction of a function (to a noreturn function) pushes a return
// address that is the first byte after the function. The end of a function stands in for it.
TEST_F(SymbolizerSelf, ReturnAddressAtTheEndOfAFunctionNamesThatFunction) {
  char exe[4096];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  ASSERT_GT(n, 0);
  auto elf = elf::ElfFile::open(std::string(exe, static_cast<size_t>(n)));
  ASSERT_TRUE(elf) << elf.error().message;
  auto leaf = (*elf)->find_function("usprobe_symbolizer_test_leaf");
  ASSERT_TRUE(leaf) << leaf.error().message;
  ASSERT_GT(leaf->size, 0u);

  uint64_t end =
      address_of(reinterpret_cast<const void *>(&usprobe_symbolizer_test_leaf)) + leaf->size;
  Frame as_return = symbolizer_->symbolize(end, /*return_address=*/true);
  EXPECT_EQ(as_return.function, "usprobe_symbolizer_test_leaf");
  EXPECT_EQ(as_return.function_offset, leaf->size);

  Frame as_exact = symbolizer_->symbolize(end, /*return_address=*/false);
  EXPECT_NE(as_exact.function, "usprobe_symbolizer_test_leaf")
      << "the exact address is past the function's last byte";

  // In a stack, only ips[0] is an exact address.
  uint64_t ips[] = {end, end};
  std::vector<Frame> frames = symbolizer_->symbolize_stack(ips);
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].function, as_exact.function);
  EXPECT_EQ(frames[1].function, "usprobe_symbolizer_test_leaf");
}

TEST_F(SymbolizerSelf, NamesAFunctionOfASharedLibrary) {
  // getpid through a function pointer: its address in libc, not a PLT stub of this binary.
  auto *volatile fn = &::getpid;
  Frame f = symbolizer_->symbolize(address_of(reinterpret_cast<const void *>(fn)));
  EXPECT_NE(f.module.find("libc"), std::string::npos) << f.module;
  EXPECT_TRUE(f.function == "getpid" || f.function == "__getpid") << f.function;
  EXPECT_EQ(f.function_offset, 0u);
}

}  // namespace
}  // namespace usprobe::cli
