// The branch targets of the probed files, computed once by the CLI for every process of a command,
// and the code ranges that decoded completely (at whose function entries prepare_site need not
// decode again).
//
// Before a probe's first site in a file is placed, the engine decodes the whole file for the
// direct branch targets it holds (core/site_analysis.h, file_branch_targets): no window may cover
// one. For libc that is about 60 ms of CPU, and it was paid again by every process that a probed
// command execs (a shell script's every command). The CLI computes the targets of each probed
// file once, writes them into a memfd that it seals against any change (F_SEAL_WRITE, _GROW,
// _SHRINK, _SEAL), and names it to the command in USPROBE_AGENT_TARGETS as /proc/<CLI pid>/fd/<fd>.
// Each agent opens it read-only, checks the seals, the layout and every count, and gives each
// file's targets to the engine (provide_file_branch_targets), which takes them for a file of the
// same identity and build id. A process that cannot open it (another user, a closed /proc), or
// finds anything wrong, decodes as before: the table saves time, never decides anything alone.
//
// Layout: TargetsHead, then `files` TargetsFile records, then `words` uint64_t words. A file's
// targets are words[first, first + count), sorted file offsets; the code ranges that decoded
// completely (core/site_analysis.h, file_complete_ranges) are `ranges` (offset, size) pairs from
// words[ranges_first] on, sorted.
#pragma once

#include <cstdint>

namespace usprobe::agent {

inline constexpr const char *kEnvTargets = "USPROBE_AGENT_TARGETS";
inline constexpr uint64_t kTargetsMagic = 0x3154'4752'5450'5355ull;  // "USPTRGT1", little-endian
inline constexpr uint32_t kTargetsVersion = 2;
inline constexpr uint32_t kTargetsMaxFiles = 4096;

struct TargetsHead {
  uint64_t magic;
  uint32_t version;
  uint32_t files;
  uint64_t words;
};

struct TargetsFile {
  uint64_t dev;
  uint64_t ino;
  char build_id[128];  // hex, NUL-terminated
  uint64_t first;
  uint64_t count;
  uint64_t ranges_first;
  uint64_t ranges;
};

static_assert(sizeof(TargetsHead) == 24 && sizeof(TargetsFile) == 176);

}  // namespace usprobe::agent
