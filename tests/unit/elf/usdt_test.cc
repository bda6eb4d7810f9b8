// USDT notes and their arguments: the operand parser against every form compilers emit (and the
// errors for what they do not), the note walk against damaged bytes, the notes of
// libusprobe_usdt_targets.so (tests/targets/usdt_targets.c) and of real programs of this
// machine, and the evaluator against known registers and memory, this process's own included.
#include "elf/usdt.h"

#include <dlfcn.h>
#include <elf.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/usdt_arg.h"
#include "elf_test_util.h"
#include "usprobe/usprobe.h"

namespace usprobe::elf {
namespace {

using Kind = UsdtArg::Kind;

// The fields of one parsed operand, for tables.
struct Expected {
  Kind kind;
  uint8_t size;
  bool is_signed;
  int base, index;
  uint8_t scale, shift;
  int64_t offset;
};

void expect_arg(const UsdtArg &a, const Expected &e, const std::string &text) {
  SCOPED_TRACE(text);
  EXPECT_EQ(a.text, text);
  EXPECT_EQ(a.kind, e.kind);
  EXPECT_EQ(a.size, e.size);
  EXPECT_EQ(a.is_signed, e.is_signed);
  EXPECT_EQ(a.base, e.base);
  EXPECT_EQ(a.index, e.index);
  EXPECT_EQ(a.scale, e.scale);
  EXPECT_EQ(a.shift, e.shift);
  EXPECT_EQ(a.offset, e.offset);
}

constexpr int kNone = -1;

TEST(UsdtArgs, EveryRegisterFormAndWidth) {
  const std::pair<const char *, Expected> table[] = {
      {"8@%rax", {Kind::kRegister, 8, false, USPROBE_RAX, kNone, 1, 0, 0}},
      {"-8@%r15", {Kind::kRegister, 8, true, USPROBE_R15, kNone, 1, 0, 0}},
      {"-4@%eax", {Kind::kRegister, 4, true, USPROBE_RAX, kNone, 1, 0, 0}},
      {"4@%r14d", {Kind::kRegister, 4, false, USPROBE_R14, kNone, 1, 0, 0}},
      {"-4@%esp", {Kind::kRegister, 4, true, USPROBE_RSP, kNone, 1, 0, 0}},
      {"2@%ax", {Kind::kRegister, 2, false, USPROBE_RAX, kNone, 1, 0, 0}},
      {"-2@%r8w", {Kind::kRegister, 2, true, USPROBE_R8, kNone, 1, 0, 0}},
      {"2@%bp", {Kind::kRegister, 2, false, USPROBE_RBP, kNone, 1, 0, 0}},
      {"-1@%al", {Kind::kRegister, 1, true, USPROBE_RAX, kNone, 1, 0, 0}},
      {"1@%dil", {Kind::kRegister, 1, false, USPROBE_RDI, kNone, 1, 0, 0}},
      {"1@%sil", {Kind::kRegister, 1, false, USPROBE_RSI, kNone, 1, 0, 0}},
      {"1@%bpl", {Kind::kRegister, 1, false, USPROBE_RBP, kNone, 1, 0, 0}},
      {"1@%spl", {Kind::kRegister, 1, false, USPROBE_RSP, kNone, 1, 0, 0}},
      {"1@%r8b", {Kind::kRegister, 1, false, USPROBE_R8, kNone, 1, 0, 0}},
      {"1@%r15b", {Kind::kRegister, 1, false, USPROBE_R15, kNone, 1, 0, 0}},
      {"1@%ah", {Kind::kRegister, 1, false, USPROBE_RAX, kNone, 1, 8, 0}},
      {"-1@%bh", {Kind::kRegister, 1, true, USPROBE_RBX, kNone, 1, 8, 0}},
      {"1@%ch", {Kind::kRegister, 1, false, USPROBE_RCX, kNone, 1, 8, 0}},
      {"1@%dh", {Kind::kRegister, 1, false, USPROBE_RDX, kNone, 1, 8, 0}},
      {"1@%dl", {Kind::kRegister, 1, false, USPROBE_RDX, kNone, 1, 0, 0}},
      // Old toolchains: no size; a register's own width, unsigned.
      {"%rdi", {Kind::kRegister, 8, false, USPROBE_RDI, kNone, 1, 0, 0}},
      {"%esi", {Kind::kRegister, 4, false, USPROBE_RSI, kNone, 1, 0, 0}},
      {"%r9w", {Kind::kRegister, 2, false, USPROBE_R9, kNone, 1, 0, 0}},
  };
  for (const auto &[text, expected] : table) {
    auto args = parse_usdt_args(text, nullptr, 0);
    ASSERT_TRUE(args) << text << ": " << args.error().message;
    ASSERT_EQ(args->size(), 1u);
    expect_arg((*args)[0], expected, text);
  }
}

TEST(UsdtArgs, MemoryAndConstantForms) {
  const std::pair<const char *, Expected> table[] = {
      {"8@-16(%rbp)", {Kind::kMemory, 8, false, USPROBE_RBP, kNone, 1, 0, -16}},
      {"-4@112(%rsp)", {Kind::kMemory, 4, true, USPROBE_RSP, kNone, 1, 0, 112}},
      {"8@(%rdi)", {Kind::kMemory, 8, false, USPROBE_RDI, kNone, 1, 0, 0}},
      {"8@0x10(%r12)", {Kind::kMemory, 8, false, USPROBE_R12, kNone, 1, 0, 16}},
      {"8@-0x8(%rbx,%rcx,4)", {Kind::kMemory, 8, false, USPROBE_RBX, USPROBE_RCX, 4, 0, -8}},
      {"8@(%r8,%rdx,8)", {Kind::kMemory, 8, false, USPROBE_R8, USPROBE_RDX, 8, 0, 0}},
      {"2@(%r8,%r9)", {Kind::kMemory, 2, false, USPROBE_R8, USPROBE_R9, 1, 0, 0}},
      {"4@24(%rax,%r13,2)", {Kind::kMemory, 4, false, USPROBE_RAX, USPROBE_R13, 2, 0, 24}},
      {"4@(,%rax,2)", {Kind::kMemory, 4, false, kNone, USPROBE_RAX, 2, 0, 0}},
      {"-8@16(,%r9,8)", {Kind::kMemory, 8, true, kNone, USPROBE_R9, 8, 0, 16}},
      {"-8(%rbp)", {Kind::kMemory, 8, false, USPROBE_RBP, kNone, 1, 0, -8}},
      {"4@0x601040", {Kind::kMemory, 4, false, kNone, kNone, 1, 0, 0x601040}},
      {"-4@$5", {Kind::kConstant, 4, true, kNone, kNone, 1, 0, 5}},
      {"-4@$-5", {Kind::kConstant, 4, true, kNone, kNone, 1, 0, -5}},
      {"8@$0x10", {Kind::kConstant, 8, false, kNone, kNone, 1, 0, 16}},
      {"8@$-9223372036854775808", {Kind::kConstant, 8, false, kNone, kNone, 1, 0, INT64_MIN}},
      {"8@$18446744073709551615", {Kind::kConstant, 8, false, kNone, kNone, 1, 0, -1}},
      {"1@$255", {Kind::kConstant, 1, false, kNone, kNone, 1, 0, 255}},
      {"$5", {Kind::kConstant, 8, false, kNone, kNone, 1, 0, 5}},
  };
  for (const auto &[text, expected] : table) {
    auto args = parse_usdt_args(text, nullptr, 0);
    ASSERT_TRUE(args) << text << ": " << args.error().message;
    ASSERT_EQ(args->size(), 1u);
    expect_arg((*args)[0], expected, text);
  }
}

TEST(UsdtArgs, ManyOperandsInOrderWithTheirText) {
  auto args = parse_usdt_args("  -4@%eax 8@-16(%rbp)\t8@(%r8,%rdx,8)  -4@$5 ", nullptr, 0);
  ASSERT_TRUE(args) << args.error().message;
  ASSERT_EQ(args->size(), 4u);
  EXPECT_EQ((*args)[0].text, "-4@%eax");
  EXPECT_EQ((*args)[1].text, "8@-16(%rbp)");
  EXPECT_EQ((*args)[2].text, "8@(%r8,%rdx,8)");
  EXPECT_EQ((*args)[3].text, "-4@$5");
  auto none = parse_usdt_args("", nullptr, 0);
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

TEST(UsdtArgs, BadOperandsNameTheOperandAndTheReason) {
  const std::pair<const char *, const char *> table[] = {
      {"3@%eax", "operand 1 `3@%eax`: size 3 is not 1, 2, 4 or 8 (negative for signed)"},
      {"8@%rax -16@%rax",
       "operand 2 `-16@%rax`: size -16 is not 1, 2, 4 or 8 (negative for signed)"},
      {"0@%eax", "operand 1 `0@%eax`: size 0 is not 1, 2, 4 or 8 (negative for signed)"},
      {"8f@%xmm0", "operand 1 `8f@%xmm0`: floating-point arguments are not supported"},
      {"8@%xmm0", "operand 1 `8@%xmm0`: unknown register `%xmm0`"},
      {"8@%r16", "operand 1 `8@%r16`: unknown register `%r16`"},
      {"8@%rip", "operand 1 `8@%rip`: %rip holds no argument"},
      {"8@", "operand 1 `8@`: no operand after the size"},
      {"8@(%eax)", "operand 1 `8@(%eax)`: the address register %eax is not 64-bit"},
      {"8@(%rax,%rbx,3)", "operand 1 `8@(%rax,%rbx,3)`: scale `3` is not 1, 2, 4 or 8"},
      {"8@(%rax,%rbx,2,1)",
       "operand 1 `8@(%rax,%rbx,2,1)`: more than base, index and scale in `(%rax,%rbx,2,1)`"},
      {"8@()", "operand 1 `8@()`: no register in `()`"},
      {"8@8(%rax", "operand 1 `8@8(%rax`: expected `)` at the end"},
      {"8@(%rax,%rip,1)", "operand 1 `8@(%rax,%rip,1)`: %rip cannot be an index"},
      {"8@16(%rip)", "operand 1 `8@16(%rip)`: a %rip-relative operand without a symbol"},
      {"8@$", "operand 1 `8@$`: no value after `$`"},
      {"8@$1z", "operand 1 `8@$1z`: cannot read the number `1z`"},
      {"8@$99999999999999999999",
       "operand 1 `8@$99999999999999999999`: cannot read the number "
       "`99999999999999999999`"},
      {"8@-foo(%rip)", "operand 1 `8@-foo(%rip)`: a negated symbol in `-foo`"},
      {"8@a+b(%rip)", "operand 1 `8@a+b(%rip)`: two symbols in `a+b`"},
      {"8@foo(%rip)", "operand 1 `8@foo(%rip)`: no file to look up the symbol `foo` in"},
      {"1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%bl",
       "operand 13 `1@%bl`: more than 12 arguments"},
  };
  for (const auto &[text, message] : table) {
    auto args = parse_usdt_args(text, nullptr, 0);
    ASSERT_FALSE(args) << text;
    EXPECT_EQ(args.error().message, message);
    EXPECT_EQ(args.error().code, EINVAL);
  }
  // Twelve is the most, and allowed.
  auto twelve = parse_usdt_args(
      "1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%al 1@%al", nullptr, 0);
  ASSERT_TRUE(twelve);
  EXPECT_EQ(twelve->size(), 12u);
}

// --- The note walk, on hand-made and damaged bytes.

void put32(std::vector<uint8_t> &out, uint32_t v) {
  out.insert(out.end(), reinterpret_cast<uint8_t *>(&v), reinterpret_cast<uint8_t *>(&v) + 4);
}
void put64(std::vector<uint8_t> &out, uint64_t v) {
  out.insert(out.end(), reinterpret_cast<uint8_t *>(&v), reinterpret_cast<uint8_t *>(&v) + 8);
}
void pad4(std::vector<uint8_t> &out) {
  while (out.size() % 4) out.push_back(0);
}

// One note as <sys/sdt.h> lays it out; `strings` is provider\0name\0args\0.
std::vector<uint8_t> note(uint64_t pc, uint64_t base, uint64_t sem, const std::string &strings,
                          const char *owner = "stapsdt", uint32_t type = 3) {
  std::vector<uint8_t> out;
  put32(out, static_cast<uint32_t>(std::strlen(owner) + 1));
  put32(out, static_cast<uint32_t>(24 + strings.size()));
  put32(out, type);
  out.insert(out.end(), owner, owner + std::strlen(owner) + 1);
  pad4(out);
  put64(out, pc);
  put64(out, base);
  put64(out, sem);
  out.insert(out.end(), strings.begin(), strings.end());
  pad4(out);
  return out;
}

std::string strings(const char *provider, const char *name, const char *args) {
  return std::string(provider) + '\0' + name + '\0' + args + '\0';
}

TEST(UsdtNotes, ReadsEveryFieldAndSkipsOtherNotes) {
  std::vector<uint8_t> bytes = note(0x1130, 0x2000, 0x404c, strings("prov", "name", "-4@%eax"));
  auto gnu = note(1, 2, 3, strings("x", "y", ""), "GNU");
  bytes.insert(bytes.end(), gnu.begin(), gnu.end());
  auto other_type = note(1, 2, 3, strings("x", "y", ""), "stapsdt", 4);
  bytes.insert(bytes.end(), other_type.begin(), other_type.end());
  auto second = note(0x1140, 0x2000, 0, strings("prov", "empty", ""));
  bytes.insert(bytes.end(), second.begin(), second.end());

  auto notes = parse_stapsdt_notes(bytes);
  ASSERT_EQ(notes.size(), 2u);
  EXPECT_EQ(notes[0].pc, 0x1130u);
  EXPECT_EQ(notes[0].base, 0x2000u);
  EXPECT_EQ(notes[0].semaphore, 0x404cu);
  EXPECT_EQ(notes[0].provider, "prov");
  EXPECT_EQ(notes[0].name, "name");
  EXPECT_EQ(notes[0].args, "-4@%eax");
  EXPECT_EQ(notes[1].name, "empty");
  EXPECT_EQ(notes[1].args, "");
  EXPECT_EQ(notes[1].semaphore, 0u);
}

TEST(UsdtNotes, DamagedNotesAreSkippedNeverReadPast) {
  // Strings without their NUL, a descriptor too short for its three addresses, empty names.
  std::vector<uint8_t> bytes = note(1, 0, 0, std::string("prov\0name\0no-nul", 16));
  auto short_desc = note(1, 0, 0, "");
  short_desc[4] = 16;  // descsz 16 < 24: (its padding still keeps the walk in step)
  bytes.insert(bytes.end(), short_desc.begin(), short_desc.end());
  auto empty = note(1, 0, 0, strings("", "", ""));
  bytes.insert(bytes.end(), empty.begin(), empty.end());
  auto good = note(0x10, 0, 0, strings("p", "good", "8@%rdi"));
  bytes.insert(bytes.end(), good.begin(), good.end());
  auto notes = parse_stapsdt_notes(bytes);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_EQ(notes[0].name, "good");

  // Cut anywhere: the whole note or nothing. Each cut copy is exactly as long as the cut, so that a
  // read past it would be out of the vector (and caught under ASan).
  std::vector<uint8_t> one = note(0x10, 0, 0, strings("p", "n", "8@%rdi -4@$5"));
  for (size_t cut = 0; cut <= one.size(); ++cut) {
    std::vector<uint8_t> part(one.begin(), one.begin() + static_cast<ptrdiff_t>(cut));
    size_t n = parse_stapsdt_notes(part).size();
    EXPECT_EQ(n, cut >= one.size() - 3 ? 1u : 0u) << "cut at " << cut;
  }

  // Sizes that overflow 32-bit sums.
  std::vector<uint8_t> huge = one;
  huge[0] = huge[1] = huge[2] = huge[3] = 0xff;
  EXPECT_TRUE(parse_stapsdt_notes(huge).empty());
  huge = one;
  huge[4] = huge[5] = huge[6] = huge[7] = 0xff;
  EXPECT_TRUE(parse_stapsdt_notes(huge).empty());

  // Random damage: no crash, no read outside (ASan), every note found is whole.
  std::mt19937 rng(12345);
  for (int round = 0; round < 2000; ++round) {
    std::vector<uint8_t> damaged = one;
    damaged.insert(damaged.end(), good.begin(), good.end());
    for (int flips = 1 + static_cast<int>(rng() % 4); flips > 0; --flips)
      damaged[rng() % damaged.size()] = static_cast<uint8_t>(rng());
    damaged.resize(rng() % (damaged.size() + 1));
    for (const UsdtNote &n : parse_stapsdt_notes(damaged)) {
      EXPECT_FALSE(n.provider.empty());
      EXPECT_FALSE(n.name.empty());
      (void)parse_usdt_args(n.args, nullptr, n.pc);  // any text: an error at worst
    }
  }
}

// --- The evaluator, against known registers and memory.

struct FakeMemory {
  static inline uint64_t base = 0x7000;
  static inline uint8_t bytes[64];
  static bool read(uint64_t addr, void *dst, size_t len) {
    if (addr < base || addr - base > sizeof bytes || len > sizeof bytes - (addr - base))
      return false;
    std::memcpy(dst, bytes + (addr - base), len);
    return true;
  }
};

arch::Regs sample_regs() {
  arch::Regs r{};
  r.rip = 0x401000;
  r.rsp = 0x7010;
  r.rax = 0x0123456789abcdef;
  r.rbx = 0x7000;
  r.rcx = 3;
  r.rdx = 0xfffffffffffffff6;  // -10
  r.rdi = 0xff;
  r.r8 = 0x7f85;
  r.r15 = 0xfffffffffffffffe;
  return r;
}

uint64_t value_of(const char *text, const arch::Regs &regs, uint64_t pc_vaddr = 0) {
  auto args = parse_usdt_args(text, nullptr, pc_vaddr);
  EXPECT_TRUE(args) << text;
  if (!args || args->empty()) return 0xdead;
  uint64_t v = 0xdead;
  EXPECT_TRUE(usdt_arg_value((*args)[0], regs, &FakeMemory::read, &v)) << text;
  return v;
}

TEST(UsdtArgValue, RegistersTruncateThenExtendBySign) {
  arch::Regs r = sample_regs();
  EXPECT_EQ(value_of("8@%rax", r), 0x0123456789abcdefu);
  EXPECT_EQ(value_of("-4@%eax", r), 0xffffffff89abcdefu);
  EXPECT_EQ(value_of("4@%eax", r), 0x89abcdefu);
  EXPECT_EQ(value_of("2@%ax", r), 0xcdefu);
  EXPECT_EQ(static_cast<int64_t>(value_of("-2@%ax", r)), static_cast<int16_t>(0xcdef));
  EXPECT_EQ(static_cast<int64_t>(value_of("-1@%al", r)), -17);
  EXPECT_EQ(value_of("1@%ah", r), 0xcdu);
  EXPECT_EQ(static_cast<int64_t>(value_of("-1@%ah", r)), -51);
  EXPECT_EQ(static_cast<int64_t>(value_of("-8@%r15", r)), -2);
  EXPECT_EQ(static_cast<int64_t>(value_of("-4@%edx", r)), -10);
  EXPECT_EQ(value_of("4@%edx", r), 0xfffffff6u);
  EXPECT_EQ(value_of("-2@%r8w", r), 0x7f85u);
  EXPECT_EQ(value_of("1@%r8b", r), 0x85u);
  EXPECT_EQ(static_cast<int64_t>(value_of("-1@%dil", r)), -1);
  EXPECT_EQ(value_of("%edi", r), 0xffu);
  EXPECT_EQ(value_of("8@%rsp", r), 0x7010u);
}

TEST(UsdtArgValue, MemoryAtBaseIndexScaleAndRipRelative) {
  int64_t words[8] = {-1, 2, -3, 4, -5, 6, -7, 0x1122334455667788};
  std::memcpy(FakeMemory::bytes, words, sizeof words);
  arch::Regs r = sample_regs();
  EXPECT_EQ(static_cast<int64_t>(value_of("-8@(%rbx)", r)), -1);
  EXPECT_EQ(value_of("8@(%rbx)", r), UINT64_MAX);
  EXPECT_EQ(value_of("4@(%rbx)", r), 0xffffffffu);
  EXPECT_EQ(static_cast<int64_t>(value_of("-8@8(%rbx,%rcx,8)", r)), -5);    // words[(8 + 24) / 8]
  EXPECT_EQ(static_cast<int64_t>(value_of("-8@-24(%rsp,%rcx,8)", r)), -3);  // 0x7010 - 24 + 24
  EXPECT_EQ(static_cast<int64_t>(value_of("-8@0x6ffc(,%rcx,4)", r)), 2);    // 0x6ffc + 12
  EXPECT_EQ(value_of("2@56(%rbx)", r), 0x7788u);
  EXPECT_EQ(value_of("-1@63(%rbx)", r), 0x11u);
  EXPECT_EQ(static_cast<int64_t>(value_of("-4@$-5", r)), -5);
  EXPECT_EQ(value_of("4@$-5", r), 0xfffffffbu);
  EXPECT_EQ(value_of("1@$0x1ff", r), 0xffu);

  // %rip-relative: the offset is from the probed instruction; regs.rip is where it runs.
  UsdtArg rip;
  rip.kind = Kind::kMemory;
  rip.size = 8;
  rip.is_signed = true;
  rip.base = USPROBE_RIP;
  rip.offset = static_cast<int64_t>(0x7000 + 48) - static_cast<int64_t>(r.rip);
  uint64_t v = 0;
  ASSERT_TRUE(usdt_arg_value(rip, r, &FakeMemory::read, &v));
  EXPECT_EQ(static_cast<int64_t>(v), -7);
}

TEST(UsdtArgValue, UnreadableMemoryIsFalse) {
  arch::Regs r = sample_regs();
  auto args = parse_usdt_args("8@(%rdi) 8@60(%rbx) 4@60(%rbx)", nullptr, 0);
  ASSERT_TRUE(args);
  uint64_t v = 0;
  EXPECT_FALSE(usdt_arg_value((*args)[0], r, &FakeMemory::read, &v));  // 0xff: outside
  EXPECT_FALSE(usdt_arg_value((*args)[1], r, &FakeMemory::read, &v));  // straddles the end
  EXPECT_TRUE(usdt_arg_value((*args)[2], r, &FakeMemory::read, &v));   // the last 4 bytes
}

// --- libusprobe_usdt_targets.so (tests/targets/usdt_targets.c).

#ifdef USDT_TARGETS_LIB
#define REQUIRE_USDT_TARGETS() (void)0
#else
#define USDT_TARGETS_LIB ""
#define REQUIRE_USDT_TARGETS() GTEST_SKIP() << "<sys/sdt.h> missing: no usdt targets built"
#endif

std::shared_ptr<const ElfFile> targets_file() {
  auto file = ElfFile::open(USDT_TARGETS_LIB);
  EXPECT_TRUE(file) << file.error().message;
  return file ? *file : nullptr;
}

std::map<std::string, std::vector<UsdtProbe>> by_name(const std::vector<UsdtProbe> &probes) {
  std::map<std::string, std::vector<UsdtProbe>> out;
  for (const UsdtProbe &p : probes) out[p.name].push_back(p);
  return out;
}

TEST(UsdtProbes, TargetLibraryNotesSitesAndSemaphore) {
  REQUIRE_USDT_TARGETS();
  auto file = targets_file();
  ASSERT_TRUE(file);
  auto probes = read_usdt_probes(*file);
  ASSERT_TRUE(probes) << probes.error().message;
  // Note order is the order of the code in the files.
  std::vector<std::string> names;
  for (const UsdtProbe &p : *probes) {
    names.push_back(p.name);
    EXPECT_EQ(p.provider, "usprobe_test");
    // The site is a nop in the code, where the file's own pc says.
    auto byte = file->bytes(p.file_offset, 1);
    ASSERT_EQ(byte.size(), 1u);
    EXPECT_EQ(byte[0], 0x90) << p.name;
    EXPECT_TRUE(file->offset_is_executable(p.file_offset));
    EXPECT_EQ(file->offset_to_vaddr(p.file_offset), p.pc_vaddr);
  }
  EXPECT_EQ(names, (std::vector<std::string>{"regs", "string", "memory", "forms", "float", "values",
                                             "twice", "twice", "gated"}));
  auto probe = by_name(*probes);
  EXPECT_NE(probe["twice"][0].pc_vaddr, probe["twice"][1].pc_vaddr);

  // Only "gated" has a semaphore: in .probes, written by the program, 0 in the file.
  for (const UsdtProbe &p : *probes) {
    if (p.name == "gated") continue;
    EXPECT_EQ(p.semaphore_vaddr, 0u) << p.name;
    EXPECT_EQ(p.semaphore_offset, 0u) << p.name;
  }
  const UsdtProbe &gated = probe["gated"][0];
  ASSERT_NE(gated.semaphore_vaddr, 0u);
  EXPECT_EQ(file->offset_to_vaddr(gated.semaphore_offset), gated.semaphore_vaddr);
  EXPECT_FALSE(file->offset_is_executable(gated.semaphore_offset));
  const ElfFile::Section *probes_section = file->find_section(".probes");
  ASSERT_NE(probes_section, nullptr);
  EXPECT_TRUE(probes_section->flags & SHF_WRITE);
  EXPECT_GE(gated.semaphore_vaddr, probes_section->vaddr);
  EXPECT_LT(gated.semaphore_vaddr, probes_section->vaddr + probes_section->size);
  auto sem = file->bytes(gated.semaphore_offset, 2);
  ASSERT_EQ(sem.size(), 2u);
  EXPECT_EQ(sem[0] | sem[1], 0);

  // Arguments: exact strings where written by hand, parsed; the float one refused.
  EXPECT_EQ(probe["regs"][0].args_text,
            "8@%rax -4@%eax 2@%ax -1@%al 1@%ah -8@%r15 -4@%r14d -2@%r8w 1@%r8b -1@%dil 1@%sil "
            "2@%cx");
  EXPECT_EQ(probe["regs"][0].args.size(), 12u);
  EXPECT_EQ(probe["memory"][0].args.size(), 9u);
  EXPECT_EQ(probe["values"][0].args.size(), 11u) << probe["values"][0].args_error;
  EXPECT_EQ(probe["twice"][0].args.size(), 1u);
  EXPECT_EQ(probe["gated"][0].args.size(), 1u);
  const UsdtProbe &forms = probe["forms"][0];
  ASSERT_EQ(forms.args.size(), 9u) << forms.args_error;
  EXPECT_EQ(forms.args[0].text, "%rdi");
  EXPECT_EQ(forms.args[4].text, "4@(,%rax,2)");
  EXPECT_EQ(forms.args[8].shift, 8);  // 1@%bh
  // -4@-4+ust_counter(%rip): the symbol's vaddr - 4, from the nop.
  auto counter = file->symbol_vaddr("ust_counter");
  ASSERT_TRUE(counter);
  EXPECT_EQ(forms.args[7].base, USPROBE_RIP);
  EXPECT_EQ(forms.args[7].offset,
            static_cast<int64_t>(*counter - 4) - static_cast<int64_t>(forms.pc_vaddr));
  EXPECT_TRUE(probe["float"][0].args.empty());
  EXPECT_EQ(probe["float"][0].args_error,
            "operand 1 `8f@%xmm0`: floating-point arguments are not supported");
  for (const UsdtProbe &p : *probes)
    if (p.name != "float") {
      EXPECT_EQ(p.args_error, "") << p.name;
    }
}

TEST(UsdtProbes, SymbolsResolveAgainstTheFileAndUnknownOnesAreNamed) {
  REQUIRE_USDT_TARGETS();
  auto file = targets_file();
  ASSERT_TRUE(file);
  auto table = file->symbol_vaddr("ust_table");
  ASSERT_TRUE(table);
  auto args =
      parse_usdt_args("-8@ust_table+16(%rip) 8@8+ust_table(%rip) 8@$ust_table", file.get(), 0x1000);
  ASSERT_TRUE(args) << args.error().message;
  EXPECT_EQ((*args)[0].offset, static_cast<int64_t>(*table + 16 - 0x1000));
  EXPECT_EQ((*args)[1].offset, static_cast<int64_t>(*table + 8 - 0x1000));
  EXPECT_EQ((*args)[2].kind, Kind::kConstant);  // an address as an immediate: non-PIE code only
  EXPECT_EQ((*args)[2].offset, static_cast<int64_t>(*table));
  // Functions have addresses too.
  EXPECT_EQ(file->symbol_vaddr("ust_fire_regs"), file->find_function("ust_fire_regs")->vaddr);
  auto bad = parse_usdt_args("8@%rax -4@$1 8@foo(%rip)", file.get(), 0x1000);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message, "operand 3 `8@foo(%rip)`: the file defines no symbol `foo`");
}

// A copy of the library whose notes say it was linked elsewhere: each note's base 0x10 below
// .stapsdt.base's address now, as after prelink; the third one's base 0 (no correction).
TEST(UsdtProbes, StapsdtBaseMovesPcAndSemaphore) {
  REQUIRE_USDT_TARGETS();
  auto file = targets_file();
  ASSERT_TRUE(file);
  auto original = read_usdt_probes(*file);
  ASSERT_TRUE(original);
  const ElfFile::Section *notes = file->find_section(".note.stapsdt");
  const ElfFile::Section *base = file->find_section(".stapsdt.base");
  ASSERT_TRUE(notes && base);
  std::ifstream in(USDT_TARGETS_LIB, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Walk the notes as they lie: 12-byte header, "stapsdt\0", then pc, base, semaphore.
  size_t index = 0;
  for (uint64_t off = notes->file_offset; off < notes->file_offset + notes->size; ++index) {
    uint32_t namesz, descsz;
    std::memcpy(&namesz, &bytes[off], 4);
    std::memcpy(&descsz, &bytes[off + 4], 4);
    uint64_t desc = off + 12 + ((namesz + 3) & ~3u);
    uint64_t moved = index == 2 ? 0 : base->vaddr - 0x10;
    std::memcpy(&bytes[desc + 8], &moved, 8);
    off = desc + ((descsz + 3) & ~3u);
  }
  std::string path = test_util::scratch_dir() + "/usdt_prelinked.so";
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  auto moved_file = ElfFile::open(path);
  ASSERT_TRUE(moved_file);
  auto moved = read_usdt_probes(**moved_file);
  ASSERT_TRUE(moved);
  // A site moved 0x10 on is no longer a nop, yet still in the code: kept, with its new place.
  ASSERT_EQ(moved->size(), original->size());
  for (size_t i = 0; i < moved->size(); ++i) {
    uint64_t delta = i == 2 ? 0 : 0x10;
    EXPECT_EQ((*moved)[i].pc_vaddr, (*original)[i].pc_vaddr + delta) << i;
    if ((*original)[i].semaphore_vaddr) {
      EXPECT_EQ((*moved)[i].semaphore_vaddr, (*original)[i].semaphore_vaddr + delta);
      EXPECT_EQ((*moved)[i].semaphore_offset,
                (*moved_file)->vaddr_to_offset((*moved)[i].semaphore_vaddr).value_or(0));
    }
  }
}

bool read_here(uint64_t addr, void *dst, size_t len) {
  std::memcpy(dst, reinterpret_cast<const void *>(addr), len);
  return true;
}

// The library loaded in this process: the %rip-relative arguments at the site's run-time address
// read the library's globals, and the semaphore's run-time address is the program's variable.
TEST(UsdtProbes, RipRelativeArgumentsAndSemaphoreAtRunTime) {
  REQUIRE_USDT_TARGETS();
  void *handle = dlopen(USDT_TARGETS_LIB, RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(handle, nullptr) << dlerror();
  auto file = targets_file();
  ASSERT_TRUE(file);
  auto probes = read_usdt_probes(*file);
  ASSERT_TRUE(probes);
  auto probe = by_name(*probes);
  void *fire_regs = dlsym(handle, "ust_fire_regs");
  ASSERT_NE(fire_regs, nullptr);
  uint64_t bias =
      reinterpret_cast<uint64_t>(fire_regs) - file->find_function("ust_fire_regs")->vaddr;

  const UsdtProbe &memory = probe["memory"][0];
  long array[3] = {-11, 22, -33};
  arch::Regs regs{};
  regs.rip = bias + memory.pc_vaddr;
  regs.rdi = reinterpret_cast<uint64_t>(array);
  regs.rdx = 2;
  std::vector<int64_t> values;
  for (const UsdtArg &a : memory.args) {
    uint64_t v = 0;
    ASSERT_TRUE(usdt_arg_value(a, regs, &read_here, &v)) << a.text;
    values.push_back(static_cast<int64_t>(v));
  }
  EXPECT_EQ(values, (std::vector<int64_t>{-11, 22, -33, 22, -7, -100, 200, -5, 16}));

  const UsdtProbe &gated = probe["gated"][0];
  auto *semaphore = static_cast<unsigned short *>(dlsym(handle, "usprobe_test_gated_semaphore"));
  ASSERT_NE(semaphore, nullptr);
  uint64_t site = bias + gated.pc_vaddr;
  EXPECT_EQ(gated.runtime_address(gated.semaphore_vaddr, site),
            reinterpret_cast<uint64_t>(semaphore));
  auto fire_gated = reinterpret_cast<int (*)(long)>(dlsym(handle, "ust_fire_gated"));
  ASSERT_NE(fire_gated, nullptr);
  EXPECT_EQ(fire_gated(1), 0);
  ++*reinterpret_cast<unsigned short *>(gated.runtime_address(gated.semaphore_vaddr, site));
  EXPECT_EQ(fire_gated(1), 1);
  --*semaphore;
  // The other probes run through without harm (their sites are nops).
  reinterpret_cast<void (*)(void)>(fire_regs)();
  reinterpret_cast<void (*)(int)>(dlsym(handle, "ust_fire_twice"))(1);
  reinterpret_cast<void (*)(void)>(dlsym(handle, "ust_forms"))();
  dlclose(handle);
}

// --- Real programs of this machine, when installed.

std::shared_ptr<const ElfFile> open_or_null(const char *path) {
  if (::access(path, R_OK) != 0) return nullptr;
  auto file = ElfFile::open(path);
  EXPECT_TRUE(file) << file.error().message;
  return file ? *file : nullptr;
}

TEST(UsdtProbes, PostgresHas71ProbesWithSemaphoresAndEveryArgumentParses) {
  auto file = open_or_null("/usr/lib/postgresql/15/bin/postgres");
  if (!file) GTEST_SKIP() << "postgresql-15 is not installed";
  auto probes = read_usdt_probes(*file);
  ASSERT_TRUE(probes);
  EXPECT_EQ(probes->size(), 71u);
  bool saw_nbuffers = false;
  for (const UsdtProbe &p : *probes) {
    EXPECT_EQ(p.provider, "postgresql");
    EXPECT_EQ(p.args_error, "") << p.name << ": " << p.args_text;
    EXPECT_NE(p.semaphore_vaddr, 0u) << p.name;
    EXPECT_NE(p.semaphore_offset, 0u) << p.name;
    EXPECT_EQ(file->bytes(p.file_offset, 1)[0], 0x90) << p.name;
    for (const UsdtArg &a : p.args) {
      if (a.text != "-4@NBuffers(%rip)") continue;
      saw_nbuffers = true;
      EXPECT_EQ(a.base, USPROBE_RIP);
      EXPECT_EQ(static_cast<uint64_t>(a.offset) + p.pc_vaddr, file->symbol_vaddr("NBuffers"));
    }
  }
  EXPECT_TRUE(saw_nbuffers);
  auto probe = by_name(*probes);
  // A probe the compiler placed at several sites has one note each, all with one semaphore.
  ASSERT_EQ(probe["sort__start"].size(), 4u);
  for (const UsdtProbe &p : probe["sort__start"])
    EXPECT_EQ(p.semaphore_vaddr, probe["sort__start"][0].semaphore_vaddr);
  EXPECT_NE(probe["sort__start"][0].pc_vaddr, probe["sort__start"][1].pc_vaddr);
  ASSERT_EQ(probe.count("clog__checkpoint__start"), 1u);
  EXPECT_EQ(probe["clog__checkpoint__start"][0].args_text, "-4@$1");
}

TEST(UsdtProbes, Python311HasEightProbesWithSemaphores) {
  auto file = open_or_null("/usr/bin/python3.11");
  if (!file) GTEST_SKIP() << "python3.11 is not installed";
  auto probes = read_usdt_probes(*file);
  ASSERT_TRUE(probes);
  EXPECT_EQ(probes->size(), 8u);
  auto probe = by_name(*probes);
  for (const char *name : {"function__entry", "function__return", "line", "gc__start", "gc__done",
                           "import__find__load__start", "import__find__load__done", "audit"}) {
    ASSERT_EQ(probe.count(name), 1u) << name;
    const UsdtProbe &p = probe[name][0];
    EXPECT_EQ(p.provider, "python");
    EXPECT_NE(p.semaphore_vaddr, 0u) << name;
    EXPECT_EQ(file->offset_to_vaddr(p.semaphore_offset), p.semaphore_vaddr) << name;
    EXPECT_EQ(p.args_error, "") << name;
  }
  EXPECT_EQ(probe["function__entry"][0].args.size(), 3u);
}

TEST(UsdtProbes, LibstdcxxThrowRethrowCatch) {
  auto file = open_or_null("/usr/lib/x86_64-linux-gnu/libstdc++.so.6");
  if (!file) GTEST_SKIP() << "libstdc++.so.6 is not at the Debian path";
  auto probes = read_usdt_probes(*file);
  ASSERT_TRUE(probes);
  auto probe = by_name(*probes);
  for (const char *name : {"throw", "rethrow", "catch"}) {
    ASSERT_EQ(probe.count(name), 1u) << name;
    EXPECT_EQ(probe[name][0].provider, "libstdcxx");
    EXPECT_EQ(probe[name][0].semaphore_vaddr, 0u);
    EXPECT_EQ(probe[name][0].args.size(), 2u) << probe[name][0].args_error;
  }
}

TEST(UsdtProbes, FileWithoutNotesHasNone) {
  auto file = ElfFile::open("/proc/self/exe");
  ASSERT_TRUE(file);
  auto probes = read_usdt_probes(**file);
  ASSERT_TRUE(probes);
  EXPECT_TRUE(probes->empty());
}

}  // namespace
}  // namespace usprobe::elf
