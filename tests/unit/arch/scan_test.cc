// scan_function(): instruction boundaries, direct branch targets and indirect jumps of a whole
// function, as site analysis uses them to decide whether a 5-byte window is safe.
#include <gtest/gtest.h>

#include <vector>

#include "arch/x86_64/relocator.h"

namespace usprobe::x86 {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr uint64_t kFunc = 0x5555'0000'1000;

// int f(int x) { if (x) g(); return 0; } with a frame pointer, more or less.
const Bytes kKnownFunction = {
    0xf3, 0x0f, 0x1e, 0xfa,        //  0: endbr64
    0x55,                          //  4: push %rbp
    0x48, 0x89, 0xe5,              //  5: mov %rsp,%rbp
    0x85, 0xff,                    //  8: test %edi,%edi
    0x74, 0x07,                    // 10: je 19
    0xe8, 0xef, 0x0f, 0x00, 0x00,  // 12: call kFunc+0x1000
    0xeb, 0x03,                    // 17: jmp 22
    0x31, 0xc0,                    // 19: xor %eax,%eax
    0x90,                          // 21: nop
    0x5d,                          // 22: pop %rbp
    0xc3,                          // 23: ret
};

TEST(Scan, BoundariesOfKnownFunction) {
  auto scan = scan_function(kKnownFunction, kFunc);
  EXPECT_TRUE(scan.complete);
  EXPECT_EQ(scan.boundaries, (std::vector<uint32_t>{0, 4, 5, 8, 10, 12, 17, 19, 21, 22, 23}));
  for (uint32_t off : scan.boundaries) EXPECT_TRUE(scan.is_boundary(off)) << off;
  for (uint32_t off : {1u, 2u, 3u, 6u, 7u, 9u, 11u, 13u, 16u, 18u, 20u, 24u, 100u})
    EXPECT_FALSE(scan.is_boundary(off)) << off;
  EXPECT_FALSE(scan.has_indirect_jump);
}

TEST(Scan, BranchTargetsFound) {
  EXPECT_EQ(scan_function(kKnownFunction, kFunc).branch_targets,
            (std::vector<uint64_t>{kFunc + 19, kFunc + 22, kFunc + 0x1000}));

  // Every direct relative form counts, sorted and without duplicates.
  const Bytes all = {
      0xe2, 0xfe,                          //  0: loop 0
      0xe3, 0x02,                          //  2: jrcxz 6
      0x0f, 0x84, 0xf6, 0xff, 0xff, 0xff,  //  4: je 0
      0xc7, 0xf8, 0x00, 0x00, 0x00, 0x00,  // 10: xbegin 16
      0xe8, 0x00, 0x00, 0x00, 0x00,        // 16: call 21
      0xc3,                                // 21: ret
  };
  auto scan = scan_function(all, kFunc);
  EXPECT_TRUE(scan.complete);
  EXPECT_EQ(scan.branch_targets, (std::vector<uint64_t>{kFunc, kFunc + 6, kFunc + 16, kFunc + 21}));
  EXPECT_FALSE(scan.has_indirect_jump);
}

TEST(Scan, IndirectJumpDetected) {
  const Bytes jumps[] = {
      {0xff, 0xe0},                                // jmp *%rax
      {0xff, 0x25, 0x10, 0x00, 0x00, 0x00},        // jmp *0x10(%rip)
      {0x41, 0xff, 0xe3},                          // jmp *%r11
      {0x3e, 0xff, 0xe0},                          // notrack jmp *%rax
      {0xff, 0x24, 0xc5, 0x00, 0x10, 0x00, 0x00},  // jmp *0x1000(,%rax,8)  (jump table)
  };
  for (const auto &jump : jumps) {
    Bytes code = {0x55, 0x48, 0x89, 0xe5};  // push %rbp; mov %rsp,%rbp
    code.insert(code.end(), jump.begin(), jump.end());
    code.push_back(0xc3);  // ret
    auto scan = scan_function(code, kFunc);
    EXPECT_TRUE(scan.complete);
    EXPECT_TRUE(scan.has_indirect_jump) << "jump of " << jump.size() << " bytes";
    EXPECT_EQ(scan.boundaries.size(), 4u);
  }
}

TEST(Scan, RetIsNotIndirect) {
  const Bytes code = {
      0xff, 0xd0,                          // call *%rax
      0xff, 0x15, 0x10, 0x00, 0x00, 0x00,  // call *0x10(%rip)
      0x41, 0xff, 0xd3,                    // call *%r11
      0xc2, 0x08, 0x00,                    // ret $0x8
      0xf3, 0xc3,                          // repz ret
      0xc3,                                // ret
  };
  auto scan = scan_function(code, kFunc);
  EXPECT_TRUE(scan.complete);
  EXPECT_FALSE(scan.has_indirect_jump);
  EXPECT_TRUE(scan.branch_targets.empty());
  EXPECT_EQ(scan.boundaries, (std::vector<uint32_t>{0, 2, 8, 11, 14, 16}));
}

TEST(Scan, UndecodableBytesStopTheScan) {
  const Bytes code = {
      0x55,        // push %rbp
      0x06,        // (push %es: invalid in 64-bit mode)
      0xeb, 0x00,  // jmp 4 (not reached)
  };
  auto scan = scan_function(code, kFunc);
  EXPECT_FALSE(scan.complete);
  EXPECT_EQ(scan.boundaries, (std::vector<uint32_t>{0}));
  EXPECT_TRUE(scan.branch_targets.empty());

  const Bytes truncated = {0x55, 0x48, 0x89};  // push %rbp; (mov %rsp,%rbp cut short)
  auto cut = scan_function(truncated, kFunc);
  EXPECT_FALSE(cut.complete);
  EXPECT_EQ(cut.boundaries, (std::vector<uint32_t>{0}));

  EXPECT_TRUE(scan_function({}, kFunc).complete);
}

}  // namespace
}  // namespace usprobe::x86
