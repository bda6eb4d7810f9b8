// What the unwinder knows about a file's code, read from .eh_frame and the LSDAs it points to
// (.gcc_except_table): the bounds of every function with unwind information (an FDE's pc_begin and
// pc_range), and every landing pad, the addresses where the unwinder resumes a frame to run a
// catch or a cleanup. Both hold in a stripped file: .eh_frame is loaded, so strip keeps it.
//
// A landing pad is a branch target that no branch instruction names: a jump window covering one
// sends a thread that unwinds there (a C++ exception, a cancelled thread) into the middle of the
// jump.
//
// Formats: the LSB's "Exception Frames" (.eh_frame: CIEs and FDEs, pointer encodings DW_EH_PE_*)
// and GCC's LSDA layout read by __gcc_personality_v0 and __gxx_personality_v0:
//   LPStart encoding (u8), [LPStart], TType encoding (u8), [TType offset (uleb128)],
//   call-site encoding (u8), call-site table length (uleb128),
//   call sites: start, length, landing pad (each in the call-site encoding), action (uleb128).
// A landing pad is LPStart + its offset; LPStart is the function's start unless given; offset 0
// means "no landing pad".
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace usprobe::elf {

// One FDE, in virtual addresses. lsda is 0 when the FDE has none.
struct FrameDescription {
  uint64_t begin = 0;
  uint64_t size = 0;
  uint64_t lsda = 0;
};

// The FDEs of an .eh_frame section whose first byte is at virtual address `vaddr`. A malformed
// record ends the walk (what came before it is kept); FDEs with a pointer encoding that cannot be
// read without relocation (indirect, data- or text-relative) are skipped.
std::vector<FrameDescription> parse_eh_frame(std::span<const uint8_t> section, uint64_t vaddr);

// The landing pads (virtual addresses, in call-site order, repeats kept) of the LSDA whose first
// byte is `lsda[0]`, at virtual address `lsda_vaddr`, for the function starting at `function`.
// `lsda` may run past the LSDA's end (the rest of the section): the table's length bounds the
// walk. A malformed LSDA gives what was read before the fault.
std::vector<uint64_t> parse_lsda(std::span<const uint8_t> lsda, uint64_t lsda_vaddr,
                                 uint64_t function);

}  // namespace usprobe::elf
