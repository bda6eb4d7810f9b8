// Location specs resolved in this very process: libc by its short name, this test program as
// "exe", IFUNCs through the dynamic linker, and programs and libraries built here with gcc. Every
// offset is checked against where the code really is, read from /proc/self/maps.
#include "elf/location.h"
#include "elf_test_util.h"

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>

namespace usprobe::elf {
namespace {

using namespace test_util;

namespace fs = std::filesystem;

struct FilePosition {
  std::string path;
  uint64_t offset = 0;
};

const std::string &libc_path() {
  static const std::string path = resolve_file("libc").value_or("");
  return path;
}

// `name` in libc as this process's dynamic linker resolves it (for an IFUNC: the resolver's
// choice). Through libc's own handle, so that a sanitizer's interposers do not answer instead.
void *libc_symbol(const char *name, const char *version = nullptr) {
  void *handle = ::dlopen(libc_path().c_str(), RTLD_NOLOAD | RTLD_LAZY);
  if (!handle) return nullptr;
  void *addr = version ? ::dlvsym(handle, name, version) : ::dlsym(handle, name);
  ::dlclose(handle);
  return addr;
}

extern "C" [[gnu::noinline]] int usprobe_location_test_target(int x) {
  return x * 3 + 1;
}

// The one parser of bpftrace's probe types, which the engine and the CLI share.
TEST(ProbeType, PrefixesCountOnlyBeforeAWholeLocation) {
  struct Case {
    const char *spec;
    bool returns;
    const char *location;
  } cases[] = {
      {"libc:malloc", false, "libc:malloc"},
      {"uprobe:libc:malloc", false, "libc:malloc"},
      {"uretprobe:libc:malloc", true, "libc:malloc"},
      {"uretprobe:/usr/bin/odd:dir/prog:main", true, "/usr/bin/odd:dir/prog:main"},
      {"uprobe:libstdc++:std::ostream::flush()", false, "libstdc++:std::ostream::flush()"},
      {"uprobe:usdt:libpq:query__start", false, "usdt:libpq:query__start"},
      // No FILE: after the prefix: the prefix is the file's name.
      {"uprobe:malloc", false, "uprobe:malloc"},
      {"uretprobe:std::vector<int>::size()", false, "uretprobe:std::vector<int>::size()"},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(c.spec);
    const ProbeType t = split_probe_type(c.spec);
    EXPECT_EQ(t.returns, c.returns);
    EXPECT_EQ(t.location, c.location);
  }
}

TEST(ProbeType, FileColonSkipsCxxNamesAndBrackets) {
  EXPECT_EQ(file_colon("libc:malloc"), 4u);
  EXPECT_EQ(file_colon("libstdc++:std::vector<int>::push_back(int const&)"), 9u);
  EXPECT_EQ(file_colon("app:f[abi:cxx11]()"), 3u);
  EXPECT_EQ(file_colon("app:{lambda()#1}::operator()"), 3u);
  EXPECT_EQ(file_colon("std::string::size()"), std::string_view::npos);
}

TEST(Location, ShortNameFindsTheMappedLibrary) {
  auto libc = resolve_file("libc");
  ASSERT_TRUE(libc) << libc.error().message;
  EXPECT_TRUE(fs::path(*libc).filename().string().starts_with("libc.so")) << *libc;
  EXPECT_TRUE(fs::path(*libc).is_absolute());
  auto libstdcxx = resolve_file("libstdc++");
  ASSERT_TRUE(libstdcxx) << libstdcxx.error().message;
  EXPECT_TRUE(fs::path(*libstdcxx).filename().string().starts_with("libstdc++.so")) << *libstdcxx;
}

TEST(Location, LibraryNameMatchesOnlyAWholeName) {
  EXPECT_TRUE(library_name_matches("libc", "libc.so.6"));
  EXPECT_TRUE(library_name_matches("libc", "libc-2.31.so"));
  EXPECT_FALSE(library_name_matches("libc", "libcrypt.so.1"));
  EXPECT_FALSE(library_name_matches("libc", "libc_nonshared.a"));
  EXPECT_TRUE(library_name_matches("libstdc++", "libstdc++.so.6"));
  EXPECT_TRUE(library_name_matches("libfoo.so", "libfoo.so"));
  EXPECT_TRUE(library_name_matches("libfoo.so", "libfoo.so.1"));
  EXPECT_TRUE(library_name_matches("libc.so.6", "libc.so.6"));
  EXPECT_FALSE(library_name_matches("libm", "libmvec.so.1"));
}

TEST(Location, UnmappedLibraryIsNotFound) {
  auto f = resolve_file("libfoo");
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().code, ENOENT);
  EXPECT_EQ(f.error().message, "libfoo: no such library mapped in this process");
}

TEST(Location, ExeAndSelfAreThisProgram) {
  auto exe = resolve_file("exe");
  ASSERT_TRUE(exe) << exe.error().message;
  EXPECT_EQ(*exe, fs::read_symlink("/proc/self/exe").string());
  auto self = resolve_file("self");
  ASSERT_TRUE(self);
  EXPECT_EQ(*self, *exe);
}

TEST(Location, MissingPathIsNoSuchFile) {
  auto loc = resolve_location("/nonexistent/libx.so:malloc");
  ASSERT_FALSE(loc);
  EXPECT_EQ(loc.error().code, ENOENT);
  EXPECT_EQ(loc.error().message, "/nonexistent/libx.so: no such file");
}

TEST(Location, MalformedSpecsAreRefused) {
  for (const char *spec : {"libc", "libc:", ":malloc", "libc:malloc+", "libc:malloc+zz", "libc:+4",
                           "libc:0xzz", "libc:0x", "libc:mal loc"}) {
    auto loc = resolve_location(spec);
    ASSERT_FALSE(loc) << spec;
    EXPECT_EQ(loc.error().code, EINVAL) << spec;
    EXPECT_EQ(loc.error().message,
              std::string("bad location `") + spec +
                  "`: expected FILE:SYMBOL, FILE:SYMBOL+OFFSET or FILE:0xOFFSET");
  }
}

TEST(Location, MallocResolvesToWhereTheDynamicLinkerMappedIt) {
  auto loc = resolve_location("libc:malloc");
  ASSERT_TRUE(loc) << loc.error().message;
  auto pos = file_position(libc_symbol("malloc"));
  ASSERT_TRUE(pos);
  EXPECT_EQ(loc->file->path(), pos->path);
  EXPECT_EQ(loc->file_offset, pos->offset);
  EXPECT_EQ(loc->symbol, "malloc");
  EXPECT_EQ(loc->func_offset, loc->file_offset);
  EXPECT_GT(loc->func_size, 0u);
  EXPECT_FALSE(loc->ifunc_resolved);
  EXPECT_EQ(loc->describe(), fs::path(libc_path()).filename().string() + ":malloc");
}

TEST(Location, StrlenResolvesToTheImplementationThisProcessUses) {
  auto loc = resolve_location("libc:strlen");
  ASSERT_TRUE(loc) << loc.error().message;
  auto pos = file_position(libc_symbol("strlen"));
  ASSERT_TRUE(pos);
  EXPECT_TRUE(loc->ifunc_resolved);
  EXPECT_EQ(loc->file->path(), pos->path);
  EXPECT_EQ(loc->file_offset, pos->offset);
  if (loc->file->symtab_path().empty())
    GTEST_SKIP() << "implementation found at " << loc->describe()
                 << ", but libc has no .symtab to name it (libc6-dbg not installed?)";
  EXPECT_TRUE(loc->symbol.starts_with("__strlen")) << loc->symbol;
  EXPECT_EQ(loc->offset_in_function(), 0u);
  EXPECT_GT(loc->func_size, 0u);
}

TEST(Location, IfuncResolvedIntoTheVdsoHasNoFileToProbe) {
  auto pos = file_position(libc_symbol("time"));
  if (!pos || pos->path != "[vdso]") GTEST_SKIP() << "this libc's time() is not the vDSO's";
  auto loc = resolve_location("libc:time");
  ASSERT_FALSE(loc);
  EXPECT_EQ(loc.error().code, ENOENT);
  EXPECT_NE(loc.error().message.find("`time` resolves to 0x"), std::string::npos)
      << loc.error().message;
  EXPECT_NE(loc.error().message.find(" in [vdso], which is not a mapped file"), std::string::npos)
      << loc.error().message;
}

TEST(Location, VersionedSymbolsResolveToTheirOwnVersion) {
  auto def = resolve_location("libc:memcpy@@GLIBC_2.14");
  ASSERT_TRUE(def) << def.error().message;
  EXPECT_TRUE(def->ifunc_resolved);  // memcpy@@GLIBC_2.14 is an IFUNC
  auto def_pos = file_position(libc_symbol("memcpy", "GLIBC_2.14"));
  ASSERT_TRUE(def_pos);
  EXPECT_EQ(def->file_offset, def_pos->offset);
  EXPECT_EQ(resolve_location("libc:memcpy")->file_offset, def->file_offset);

  auto old = resolve_location("libc:memcpy@GLIBC_2.2.5");
  ASSERT_TRUE(old) << old.error().message;
  auto old_pos = file_position(libc_symbol("memcpy", "GLIBC_2.2.5"));
  ASSERT_TRUE(old_pos);
  EXPECT_EQ(old->file_offset, old_pos->offset);
  EXPECT_EQ(old->symbol, "memcpy@GLIBC_2.2.5");
}

TEST(Location, SymbolPlusOffsetPointsInsideTheFunction) {
  auto entry = resolve_location("libc:malloc");
  auto hex = resolve_location("libc:malloc+0x4");
  auto dec = resolve_location("libc:malloc+4");
  ASSERT_TRUE(entry && hex && dec);
  EXPECT_EQ(hex->file_offset, entry->file_offset + 4);
  EXPECT_EQ(dec->file_offset, hex->file_offset);
  EXPECT_EQ(hex->offset_in_function(), 4u);
  EXPECT_EQ(hex->describe(), fs::path(libc_path()).filename().string() + ":malloc+0x4");
}

TEST(Location, OffsetBeyondTheFunctionIsRefused) {
  auto entry = resolve_location("libc:malloc");
  ASSERT_TRUE(entry);
  char spec[64];
  std::snprintf(spec, sizeof spec, "libc:malloc+%llu",
                static_cast<unsigned long long>(entry->func_size));
  auto loc = resolve_location(spec);
  ASSERT_FALSE(loc);
  EXPECT_EQ(loc.error().code, EINVAL);
  char size[32];
  std::snprintf(size, sizeof size, "0x%llx", static_cast<unsigned long long>(entry->func_size));
  EXPECT_NE(loc.error().message.find("`malloc`"), std::string::npos) << loc.error().message;
  EXPECT_NE(loc.error().message.find(size), std::string::npos) << loc.error().message;
}

TEST(Location, RawOffsetNamesTheEnclosingFunction) {
  auto entry = resolve_location("libc:malloc");
  ASSERT_TRUE(entry);
  char spec[64];
  std::snprintf(spec, sizeof spec, "libc:0x%llx",
                static_cast<unsigned long long>(entry->file_offset + 2));
  auto loc = resolve_location(spec);
  ASSERT_TRUE(loc) << loc.error().message;
  EXPECT_EQ(loc->file_offset, entry->file_offset + 2);
  EXPECT_EQ(loc->symbol, "malloc");
  EXPECT_EQ(loc->offset_in_function(), 2u);
  EXPECT_EQ(loc->func_size, entry->func_size);
}

TEST(Location, RawOffsetOutsideCodeIsRefused) {
  auto loc = resolve_location("libc:0x0");
  ASSERT_FALSE(loc);
  EXPECT_EQ(loc.error().code, EINVAL);
  EXPECT_EQ(loc.error().message, libc_path() + ": offset 0x0 is not in an executable segment");
}

TEST(Location, UnknownSymbolComesWithASuggestion) {
  auto loc = resolve_location("libc:mallok");
  ASSERT_FALSE(loc);
  EXPECT_EQ(loc.error().code, ENOENT);
  EXPECT_EQ(loc.error().message, libc_path() + ": no function `mallok` (did you mean `malloc`?)");
}

TEST(Location, DescribeWithoutASymbolShowsTheOffset) {
  auto entry = resolve_location("libc:malloc");
  ASSERT_TRUE(entry);
  ResolvedLocation loc;
  loc.file = entry->file;
  loc.file_offset = loc.func_offset = 0x1234;
  EXPECT_EQ(loc.describe(), fs::path(libc_path()).filename().string() + ":0x1234");
}

TEST(Location, FunctionOfThisProgramMatchesItsMappedAddress) {
  auto loc = resolve_location("exe:usprobe_location_test_target");
  ASSERT_TRUE(loc) << loc.error().message;
  auto pos = file_position(reinterpret_cast<const void *>(&usprobe_location_test_target));
  ASSERT_TRUE(pos);
  EXPECT_EQ(loc->file->path(), pos->path);
  EXPECT_EQ(loc->file_offset, pos->offset);
  EXPECT_EQ(loc->symbol, "usprobe_location_test_target");
}

TEST(Location, FileNameMayContainAColon) {
  std::string link = scratch_dir() + "/odd:name.so";
  fs::remove(link);
  fs::create_symlink(libc_path(), link);
  auto plain = resolve_location("libc:malloc");
  auto odd = resolve_location(link + ":malloc");
  ASSERT_TRUE(plain && odd) << (odd ? "" : odd.error().message);
  EXPECT_EQ(odd->file->path(), link);
  EXPECT_EQ(odd->file_offset, plain->file_offset);
  // The dynamic linker recognises the loaded libc behind another name by its inode.
  auto ifunc = resolve_location(link + ":strlen");
  ASSERT_TRUE(ifunc) << ifunc.error().message;
  EXPECT_TRUE(ifunc->ifunc_resolved);
  EXPECT_EQ(ifunc->file_offset, resolve_location("libc:strlen")->file_offset);
}

TEST(Location, StaticExecutableIsRefused) {
  REQUIRE_GCC();
  std::string exe = build_with_gcc("static-main", "-static", "int main(void) { return 0; }\n");
  if (exe.empty()) GTEST_SKIP() << "gcc -static failed (no static libc?)";
  auto loc = resolve_location(exe + ":main");
  ASSERT_FALSE(loc);
  EXPECT_EQ(loc.error().code, ENOEXEC);
  EXPECT_TRUE(loc.error().message.starts_with(exe + ": statically linked; "))
      << loc.error().message;
}

// An IFUNC whose resolver picks the second of two implementations.
constexpr char kIfuncLibrary[] = R"(
__attribute__((noinline)) static int usprobe_pick_a(void) { return 1; }
__attribute__((noinline)) static int usprobe_pick_b(void) { return 2; }
static void *usprobe_resolve_pick(void) { return (void *)usprobe_pick_b; }
int usprobe_pick(void) __attribute__((ifunc("usprobe_resolve_pick")));
)";

TEST(Location, IfuncOfALibraryFollowsWhetherItIsLoaded) {
  REQUIRE_GCC();
  std::string lib = build_with_gcc("libifunc.so", "-shared -fPIC", kIfuncLibrary);
  ASSERT_FALSE(lib.empty()) << "gcc -shared failed";
  auto unloaded = resolve_location(lib + ":usprobe_pick");
  ASSERT_FALSE(unloaded);
  EXPECT_EQ(unloaded.error().code, ENOENT);
  EXPECT_EQ(unloaded.error().message,
            lib + ": `usprobe_pick` is an IFUNC and the library is not loaded in this process");

  void *handle = ::dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(handle, nullptr) << ::dlerror();
  auto loaded = resolve_location(lib + ":usprobe_pick");
  auto pos = file_position(::dlsym(handle, "usprobe_pick"));
  ::dlclose(handle);
  ASSERT_TRUE(loaded) << loaded.error().message;
  ASSERT_TRUE(pos);
  EXPECT_TRUE(loaded->ifunc_resolved);
  EXPECT_EQ(loaded->symbol, "usprobe_pick_b");
  EXPECT_EQ(loaded->file_offset, pos->offset);
}

}  // namespace
}  // namespace usprobe::elf

namespace usprobe::elf {
namespace {

TEST(Location, BatchResolutionMatchesOneByOneIncludingErrors) {
  const std::vector<std::string> specs = {"libc:malloc", "libc:free",          "libc:mallok",
                                          "libc:strlen", "/no/such/file:main", "libc:free+0x1"};
  auto batch = resolve_locations(specs);
  ASSERT_EQ(batch.size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    auto one = resolve_location(specs[i]);
    ASSERT_EQ(batch[i].has_value(), one.has_value()) << specs[i];
    if (one) {
      EXPECT_EQ(batch[i]->file_offset, one->file_offset) << specs[i];
      EXPECT_EQ(batch[i]->describe(), one->describe()) << specs[i];
    } else {
      EXPECT_EQ(batch[i].error().message, one.error().message) << specs[i];
    }
  }
  EXPECT_FALSE(batch[2]) << "an unknown symbol fails alone, not the whole batch";
  EXPECT_TRUE(batch[3]);
}

}  // namespace
}  // namespace usprobe::elf
