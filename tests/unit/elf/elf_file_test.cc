// ElfFile against real files of this machine: this process's libc, /bin/true (a PIE), programs
// and a library built here with gcc (static, static-pie, non-PIE, symbol versions), a text file
// and a missing one. Offsets are checked against where the dynamic linker really put things, read
// from /proc/self/maps by this file's own small parser.
#include "elf/elf_file.h"

#include <dlfcn.h>
#include <elf.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>

#include "elf/location.h"
#include "elf_test_util.h"

namespace usprobe::elf {
namespace {

using namespace test_util;

namespace fs = std::filesystem;

constexpr char kMain[] = "int main(void) { return 0; }\n";

const std::string &libc_path() {
  static const std::string path = resolve_file("libc").value_or("");
  return path;
}

// libc opened once: most tests read it. Nothing here can run without it.
const ElfFile &libc() {
  static const std::shared_ptr<const ElfFile> file = [] {
    auto f = ElfFile::open(libc_path());
    if (!f) {
      std::fprintf(stderr, "cannot open this process's libc (%s): %s\n", libc_path().c_str(),
                   f.error().message.c_str());
      std::abort();
    }
    return *f;
  }();
  return *file;
}

// The address of `name` in libc as this process's dynamic linker sees it. Through libc's own
// handle rather than RTLD_DEFAULT, so that a sanitizer's interposed malloc does not answer.
void *libc_symbol(const char *name) {
  void *handle = ::dlopen(libc_path().c_str(), RTLD_NOLOAD | RTLD_LAZY);
  if (!handle) return nullptr;
  void *addr = ::dlsym(handle, name);
  ::dlclose(handle);
  return addr;
}

TEST(ElfFile, MissingFileIsNoSuchFile) {
  auto f = ElfFile::open("/nonexistent/libnothing.so");
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().code, ENOENT);
  EXPECT_EQ(f.error().message, "/nonexistent/libnothing.so: no such file");
}

TEST(ElfFile, TextFileIsNotAnElfFile) {
  std::string path = write_file("notes.txt", "hello, this is not an ELF file at all\n");
  auto f = ElfFile::open(path);
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().code, ENOEXEC);
  EXPECT_EQ(f.error().message, path + ": not an ELF file");
}

TEST(ElfFile, OtherArchitectureIsRefused) {
  std::ifstream in("/bin/true", std::ios::binary);
  std::string image((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(image.size(), sizeof(Elf64_Ehdr));
  uint16_t aarch64 = EM_AARCH64;
  std::memcpy(image.data() + offsetof(Elf64_Ehdr, e_machine), &aarch64, sizeof aarch64);
  std::string path = write_file("true-aarch64", image);
  auto f = ElfFile::open(path);
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().code, ENOEXEC);
  EXPECT_EQ(f.error().message, path + ": not an x86-64 ELF file");
}

TEST(ElfFile, IdIsTheDeviceAndInodeOfTheFile) {
  struct stat st;
  ASSERT_EQ(::stat(libc_path().c_str(), &st), 0);
  EXPECT_EQ(libc().id(), (FileId{st.st_dev, st.st_ino}));
  EXPECT_EQ(libc().path(), libc_path());
}

TEST(ElfFile, LibcListsOverAThousandFunctionsSortedByOffset) {
  const auto &fns = libc().functions();
  EXPECT_GT(fns.size(), 1000u);
  for (size_t i = 1; i < fns.size(); ++i)
    ASSERT_LE(fns[i - 1].file_offset, fns[i].file_offset) << fns[i].name;
  for (const Function &f : fns) {
    ASSERT_GT(f.size, 0u) << f.name;
    ASSERT_EQ(f.name.find('@'), std::string::npos) << "version left in the name: " << f.name;
  }
}

TEST(ElfFile, MallocOffsetMatchesWhereTheDynamicLinkerMappedIt) {
  auto malloc_fn = libc().find_function("malloc");
  ASSERT_TRUE(malloc_fn) << malloc_fn.error().message;
  void *addr = libc_symbol("malloc");
  ASSERT_NE(addr, nullptr);
  auto pos = file_position(addr);
  ASSERT_TRUE(pos);
  EXPECT_EQ(pos->path, libc_path());
  EXPECT_EQ(malloc_fn->file_offset, pos->offset);
  EXPECT_EQ(malloc_fn->version, "GLIBC_2.2.5");
  EXPECT_FALSE(malloc_fn->ifunc);
  EXPECT_TRUE(malloc_fn->exported);
}

TEST(ElfFile, VersionedNameFindsDefaultVersion) {
  auto plain = libc().find_function("memcpy");
  auto def = libc().find_function("memcpy@@GLIBC_2.14");
  auto any = libc().find_function("memcpy@GLIBC_2.14");
  auto old = libc().find_function("memcpy@GLIBC_2.2.5");
  ASSERT_TRUE(plain) << plain.error().message;
  ASSERT_TRUE(def) << def.error().message;
  ASSERT_TRUE(any) << any.error().message;
  ASSERT_TRUE(old) << old.error().message;
  EXPECT_EQ(plain->file_offset, def->file_offset);
  EXPECT_EQ(any->file_offset, def->file_offset);
  EXPECT_EQ(plain->name, "memcpy");
  EXPECT_EQ(plain->version, "GLIBC_2.14");
  EXPECT_FALSE(plain->hidden_version);
  EXPECT_NE(old->file_offset, def->file_offset);
  EXPECT_EQ(old->version, "GLIBC_2.2.5");
  EXPECT_TRUE(old->hidden_version);
}

// Lookups by name: a binary search for the first ones, a hash table made for the rest (a
// `libc:*` session looks up every name). Every function of libc, looked up by name thousands of
// times over, is found under that name, and a name that is not there is not found.
TEST(ElfFile, EveryFunctionIsFoundByItsNameLookupAfterLookup) {
  size_t looked = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (const Function &f : libc().functions()) {
      auto found = libc().find_function(f.name);
      ++looked;
      ASSERT_TRUE(found) << f.name << ": " << found.error().message;
      ASSERT_EQ(found->name, f.name);
      if (f.name == "memcpy") {
        EXPECT_EQ(found->version, "GLIBC_2.14");
      }
    }
  }
  EXPECT_GT(looked, 2000u);
  auto missing = libc().find_function("malloc_not_in_libc");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ENOENT);
  auto old = libc().find_function("memcpy@GLIBC_2.2.5");
  ASSERT_TRUE(old) << old.error().message;
  EXPECT_TRUE(old->hidden_version);
}

TEST(ElfFile, HiddenVersionIsNotTheDefault) {
  auto f = libc().find_function("memcpy@@GLIBC_2.2.5");
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().code, ENOENT);
  EXPECT_NE(f.error().message.find("GLIBC_2.14"), std::string::npos) << f.error().message;
}

TEST(ElfFile, UnknownNameSuggestsTheNearestFunction) {
  auto f = libc().find_function("mallok");
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().code, ENOENT);
  EXPECT_EQ(f.error().message, libc_path() + ": no function `mallok` (did you mean `malloc`?)");
}

TEST(ElfFile, SwappedLettersAndWrongCaseAreTyposToo) {
  auto swapped = libc().find_function("prinft");
  ASSERT_FALSE(swapped);
  EXPECT_EQ(swapped.error().message,
            libc_path() + ": no function `prinft` (did you mean `printf`?)");
  auto upper = libc().find_function("Malloc");
  ASSERT_FALSE(upper);
  EXPECT_EQ(upper.error().message, libc_path() + ": no function `Malloc` (did you mean `malloc`?)");
}

TEST(ElfFile, FarFetchedNameGetsNoSuggestion) {
  auto f = libc().find_function("zqxjvwkpy_usprobe");
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().message, libc_path() + ": no function `zqxjvwkpy_usprobe`");
}

TEST(ElfFile, DataSymbolIsNotAFunction) {
  auto f = libc().find_function("environ");
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().message, libc_path() + ": `environ` is a data symbol, not a function");
}

TEST(ElfFile, StrlenIsAnIfuncAndMallocIsNot) {
  auto strlen_fn = libc().find_function("strlen");
  ASSERT_TRUE(strlen_fn) << strlen_fn.error().message;
  EXPECT_TRUE(strlen_fn->ifunc);
  EXPECT_FALSE(libc().find_function("malloc")->ifunc);
}

TEST(ElfFile, FunctionContainingNamesTheEnclosingFunction) {
  auto malloc_fn = libc().find_function("malloc");
  ASSERT_TRUE(malloc_fn);
  // malloc has aliases at its address (__libc_malloc, ...): the shortest global name wins.
  std::optional<Function> inside = libc().function_containing(malloc_fn->file_offset + 1);
  ASSERT_TRUE(inside);
  EXPECT_EQ(inside->name, "malloc");
  EXPECT_EQ(inside->file_offset, malloc_fn->file_offset);
  std::optional<Function> last =
      libc().function_containing(malloc_fn->file_offset + malloc_fn->size - 1);
  ASSERT_TRUE(last);
  EXPECT_EQ(last->file_offset, malloc_fn->file_offset);
  EXPECT_FALSE(libc().function_containing(0));  // the ELF header
}

TEST(ElfFile, OffsetsAndAddressesTranslateThroughLoadSegments) {
  auto malloc_fn = libc().find_function("malloc");
  ASSERT_TRUE(malloc_fn);
  EXPECT_EQ(libc().vaddr_to_offset(malloc_fn->vaddr), malloc_fn->file_offset);
  EXPECT_EQ(libc().offset_to_vaddr(malloc_fn->file_offset), malloc_fn->vaddr);
  EXPECT_TRUE(libc().offset_is_executable(malloc_fn->file_offset));
  EXPECT_FALSE(libc().offset_is_executable(0));  // the headers are in a read-only segment
  EXPECT_EQ(libc().offset_to_vaddr(uint64_t{1} << 40), std::nullopt);
  EXPECT_EQ(libc().vaddr_to_offset(uint64_t{1} << 40), std::nullopt);
}

TEST(ElfFile, BytesAreTheFileContents) {
  auto malloc_fn = libc().find_function("malloc");
  ASSERT_TRUE(malloc_fn);
  auto bytes = libc().bytes(malloc_fn->file_offset, 16);
  ASSERT_EQ(bytes.size(), 16u);
  std::ifstream in(libc_path(), std::ios::binary);
  in.seekg(static_cast<std::streamoff>(malloc_fn->file_offset));
  char expected[16];
  ASSERT_TRUE(in.read(expected, sizeof expected));
  EXPECT_EQ(std::memcmp(bytes.data(), expected, 16), 0);
  // The bytes are those the process executes.
  EXPECT_EQ(std::memcmp(bytes.data(), libc_symbol("malloc"), 16), 0);
  EXPECT_TRUE(libc().bytes(uint64_t{1} << 40, 1).empty());
  EXPECT_TRUE(libc().bytes(fs::file_size(libc_path()) - 2, 4).empty());
}

TEST(ElfFile, StrippedLibraryTakesItsSymtabFromTheBuildIdDebugFile) {
  if (libc().symtab_path().empty())
    GTEST_SKIP() << "no .symtab for " << libc_path() << " (libc6-dbg not installed?)";
  if (libc().symtab_path() == libc_path()) GTEST_SKIP() << "this libc is not stripped";
  ASSERT_FALSE(libc().build_id().empty());
  EXPECT_NE(libc().symtab_path().find(libc().build_id().substr(2)), std::string::npos);
  // A static function, known only to .symtab: an implementation behind the strlen IFUNC.
  bool found = false;
  for (const Function &f : libc().functions()) found |= f.name.starts_with("__strlen_");
  EXPECT_TRUE(found);
}

TEST(ElfFile, SharedLibraryAndPieAreNotStaticExecutables) {
  EXPECT_FALSE(libc().is_static_executable());  // libc.so.6 has a PT_INTERP, yet is a library
  auto bin_true = ElfFile::open("/bin/true");
  ASSERT_TRUE(bin_true) << bin_true.error().message;
  EXPECT_FALSE((*bin_true)->is_static_executable());
  EXPECT_EQ((*bin_true)->interpreter(), "/lib64/ld-linux-x86-64.so.2");
}

TEST(ElfFile, GccStaticProgramIsAStaticExecutable) {
  REQUIRE_GCC();
  std::string exe = build_with_gcc("static-main", "-static", kMain);
  if (exe.empty()) GTEST_SKIP() << "gcc -static failed (no static libc?)";
  auto f = ElfFile::open(exe);
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_TRUE((*f)->is_static_executable());
  EXPECT_EQ((*f)->interpreter(), "");
  EXPECT_TRUE((*f)->find_function("main"));
}

TEST(ElfFile, GccStaticPieProgramIsAStaticExecutable) {
  REQUIRE_GCC();
  std::string exe = build_with_gcc("static-pie-main", "-static-pie", kMain);
  if (exe.empty()) GTEST_SKIP() << "gcc -static-pie failed";
  auto f = ElfFile::open(exe);
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_TRUE((*f)->is_static_executable());
}

TEST(ElfFile, NonPieProgramIsDynamicAndItsOffsetsFollowItsSegments) {
  REQUIRE_GCC();
  std::string exe = build_with_gcc("no-pie-main", "-no-pie", kMain);
  ASSERT_FALSE(exe.empty()) << "gcc -no-pie failed";
  auto f = ElfFile::open(exe);
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_FALSE((*f)->is_static_executable());
  auto main_fn = (*f)->find_function("main");
  ASSERT_TRUE(main_fn) << main_fn.error().message;
  // Linked at 0x400000: the address is far from the offset, and the two translate both ways.
  EXPECT_GE(main_fn->vaddr, 0x400000u);
  EXPECT_EQ((*f)->offset_to_vaddr(main_fn->file_offset), main_fn->vaddr);
  EXPECT_TRUE((*f)->offset_is_executable(main_fn->file_offset));
}

// Two versions of `foo`: foo@V1 (old, hidden) and foo@@V2 (default). The unstripped .symtab
// spells the versions into the names; .dynsym keeps them in .gnu.version.
constexpr char kVersionedLibrary[] = R"(
int foo_old(void) { return 1; }
int foo_new(void) { return 2; }
__asm__(".symver foo_old,foo@V1");
__asm__(".symver foo_new,foo@@V2");
int counter = 3;
)";

std::string build_versioned_library() {
  std::string script = write_file("versions.map",
                                  "V1 { global: foo; counter; local: *; };\n"
                                  "V2 { global: foo; } V1;\n");
  return build_with_gcc("libversioned.so", "-shared -fPIC -Wl,--version-script=" + script,
                        kVersionedLibrary);
}

TEST(ElfFile, SymbolVersionsOfALibraryBuiltHere) {
  REQUIRE_GCC();
  std::string lib = build_versioned_library();
  ASSERT_FALSE(lib.empty()) << "gcc -shared failed";
  auto f = ElfFile::open(lib);
  ASSERT_TRUE(f) << f.error().message;
  auto def = (*f)->find_function("foo");
  auto old = (*f)->find_function("foo@V1");
  auto impl_new = (*f)->find_function("foo_new");
  auto impl_old = (*f)->find_function("foo_old");
  ASSERT_TRUE(def && old && impl_new && impl_old);
  EXPECT_EQ(def->version, "V2");
  EXPECT_EQ(def->file_offset, impl_new->file_offset);
  EXPECT_EQ(old->file_offset, impl_old->file_offset);
  EXPECT_TRUE(old->hidden_version);
  // Where a global versioned name and a local one share an address, the global one names it.
  std::optional<Function> at_old = (*f)->function_containing(impl_old->file_offset);
  ASSERT_TRUE(at_old);
  EXPECT_EQ(at_old->name, "foo");
  EXPECT_EQ(at_old->version, "V1");
  for (const Function &fn : (*f)->functions())
    EXPECT_EQ(fn.name.find('@'), std::string::npos) << fn.name;
  auto counter = (*f)->find_function("counter");
  ASSERT_FALSE(counter);
  EXPECT_EQ(counter.error().message, lib + ": `counter` is a data symbol, not a function");
}

// A file prepared in another process (index_image, provide_prepared, as the CLI hands libc to
// every process of a command) answers every question as the file opened here does. The bytes
// handed over differ from the file's in one byte, which bytes() shows: proof that the prepared
// file, not the file itself, answered.
TEST(ElfFile, PreparedFileAnswersAsTheOpenedOne) {
  const ElfFile &opened = libc();
  const FileVersion version = opened.version();
  std::span<const uint8_t> file_bytes = opened.bytes(0, version.size);
  ASSERT_EQ(file_bytes.size(), version.size);
  auto bytes = std::make_shared<std::vector<uint8_t>>(file_bytes.begin(), file_bytes.end());
  const uint64_t marked = opened.sections().back().file_offset;  // not code, not the header
  (*bytes)[marked] ^= 0xff;
  auto image = std::make_shared<std::vector<uint8_t>>(opened.index_image());
  ElfFile::provide_prepared(version, *bytes, *image, image);
  // Another path to the same file: the cache of opened files keys on the path too.
  const std::string link = (fs::path(::testing::TempDir()) / "prepared-libc.so.6").string();
  fs::remove(link);
  fs::create_symlink(libc_path(), link);
  auto f = ElfFile::open(link);
  ASSERT_TRUE(f) << f.error().message;
  const ElfFile &prepared = **f;
  ASSERT_EQ(prepared.bytes(marked, 1)[0], (*bytes)[marked]);
  EXPECT_NE(prepared.bytes(marked, 1)[0], opened.bytes(marked, 1)[0]);

  EXPECT_EQ(prepared.path(), link);
  EXPECT_EQ(prepared.id(), opened.id());
  EXPECT_EQ(prepared.build_id(), opened.build_id());
  EXPECT_EQ(prepared.symtab_path(), opened.symtab_path());
  EXPECT_EQ(prepared.is_program(), opened.is_program());
  EXPECT_EQ(prepared.is_static_executable(), opened.is_static_executable());
  EXPECT_EQ(prepared.entry_offset(), opened.entry_offset());
  EXPECT_EQ(prepared.interpreter(), opened.interpreter());
  ASSERT_EQ(prepared.functions().size(), opened.functions().size());
  for (size_t i = 0; i < opened.functions().size(); ++i) {
    const Function &a = prepared.functions()[i], &b = opened.functions()[i];
    ASSERT_EQ(std::tie(a.name, a.version, a.vaddr, a.file_offset, a.size, a.ifunc, a.hidden_version,
                       a.exported),
              std::tie(b.name, b.version, b.vaddr, b.file_offset, b.size, b.ifunc, b.hidden_version,
                       b.exported))
        << i;
    // By name, through the image's hash table from the first lookup.
    auto by_name = prepared.find_function(b.name), there = opened.find_function(b.name);
    ASSERT_TRUE(by_name && there) << b.name;
    ASSERT_EQ(by_name->file_offset, there->file_offset) << b.name;
  }
  for (const char *name : {"malloc", "memcpy", "memcpy@GLIBC_2.2.5", "memcpy@@GLIBC_2.14", "mallok",
                           "environ", "__libc_start_main", "_nl_C_locobj"}) {
    auto a = prepared.find_function(name), b = opened.find_function(name);
    ASSERT_EQ(a.has_value(), b.has_value()) << name;
    if (a) {
      EXPECT_EQ(a->file_offset, b->file_offset) << name;
      EXPECT_EQ(a->version, b->version) << name;
    } else {
      // The same message but for the path it names.
      std::string expected = b.error().message;
      expected.replace(0, libc_path().size(), link);
      EXPECT_EQ(a.error().message, expected) << name;
    }
    EXPECT_EQ(prepared.symbol_vaddr(name), opened.symbol_vaddr(name)) << name;
  }
  for (uint64_t off = 0; off < version.size; off += 997) {
    auto a = prepared.function_containing(off), b = opened.function_containing(off);
    ASSERT_EQ(a.has_value(), b.has_value()) << off;
    if (a) {
      ASSERT_EQ(a->name, b->name) << off;
    }
    ASSERT_EQ(prepared.next_function_start(off), opened.next_function_start(off)) << off;
    ASSERT_EQ(prepared.offset_is_executable(off), opened.offset_is_executable(off)) << off;
  }
  ASSERT_EQ(prepared.sections().size(), opened.sections().size());
  for (size_t i = 0; i < opened.sections().size(); ++i)
    EXPECT_EQ(prepared.sections()[i].name, opened.sections()[i].name);
  EXPECT_EQ(prepared.unwind_ranges().size(), opened.unwind_ranges().size());
  EXPECT_EQ(prepared.landing_pads(), opened.landing_pads());
  fs::remove(link);
}

// An image that does not read back whole (cut short here) is not used: open() reads the file.
TEST(ElfFile, PreparedImageCutShortIsNotUsed) {
  REQUIRE_GCC();
  const std::string lib =
      build_with_gcc("libcut.so", "-shared -fPIC", "int cut_fn(int x) { return x + 1; }\n");
  ASSERT_FALSE(lib.empty());
  auto f = ElfFile::open(lib);
  ASSERT_TRUE(f) << f.error().message;
  auto image = std::make_shared<std::vector<uint8_t>>((*f)->index_image());
  image->resize(image->size() / 2);
  std::span<const uint8_t> bytes = (*f)->bytes(0, (*f)->version().size);
  ElfFile::provide_prepared((*f)->version(), bytes, *image, image);
  const std::string link = lib + ".link";
  fs::remove(link);
  fs::create_symlink(lib, link);
  auto g = ElfFile::open(link);
  ASSERT_TRUE(g) << g.error().message;
  auto fn = (*g)->find_function("cut_fn");
  ASSERT_TRUE(fn) << fn.error().message;
  EXPECT_EQ(fn->file_offset, (*f)->find_function("cut_fn")->file_offset);
}

}  // namespace
}  // namespace usprobe::elf
