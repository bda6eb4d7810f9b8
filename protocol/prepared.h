// The probed files, prepared once by the CLI for every process of a command: each file's index
// (elf::ElfFile::index_image), its bytes, its branch targets, and the code ranges that decoded
// completely (at whose function entries prepare_site need not decode again).
//
// Opening and indexing a file (libc: 6 ms) and decoding it for the direct branch targets it holds
// (core/site_analysis.h, file_branch_targets: no window may cover one; libc: 60 ms) was paid again
// by every process that a probed command execs (a shell script's every command). The CLI does both
// once, writes the results into a memfd that it seals against any change (F_SEAL_WRITE, _GROW,
// _SHRINK, _SEAL), and names it to the command in USPROBE_AGENT_PREPARED as
// /proc/<CLI pid>/fd/<fd>. Each agent opens it read-only, checks the seals, the layout and every
// count, keeps it mapped, and hands each file to the engine: its index and bytes to
// elf::ElfFile::provide_prepared, taken by an open() of a file of the same identity and version
// (device, inode, size, mtime); its targets to provide_file_branch_targets, taken for a file of
// the same identity and build id. A process that cannot open it (another user, a closed /proc),
// or finds anything wrong, reads and decodes as before: the table saves time, never decides
// anything alone.
//
// A running process (usprobe -p) gets the same memfd as a descriptor of its own: the injector
// hands it over (SCM_RIGHTS) while it holds the thread it runs its calls in, and the agent's
// usprobe_agent_attach takes it by its name (kPreparedMemfdName, as /proc/self/fd shows it), maps
// it and closes every such descriptor before it attaches, so that the decoding is the CLI's and
// not the service's (PostgreSQL's binary: 300 ms of the target's time).
//
// Layout: PreparedHead, then `files` PreparedFile records, then `words` uint64_t words, then the
// files' bytes and images wherever their records say. A file's targets are words[first, first +
// count), sorted file offsets; its complete ranges are `ranges` (offset, size) pairs from
// words[ranges_first] on, sorted. Its bytes are [bytes_at, bytes_at + size) of the memfd, its
// index image [image_at, image_at + image_size); image_size 0: none.
#pragma once

#include <cstdint>

namespace usprobe::agent {

inline constexpr const char *kEnvPrepared = "USPROBE_AGENT_PREPARED";
inline constexpr const char *kPreparedMemfdName = "usprobe-prepared";
inline constexpr uint64_t kPreparedMagic = 0x3150'5250'5450'5355ull;  // "USPTPRP1", little-endian
inline constexpr uint32_t kPreparedVersion = 3;
inline constexpr uint32_t kPreparedMaxFiles = 4096;

struct PreparedHead {
  uint64_t magic;
  uint32_t version;
  uint32_t files;
  uint64_t words;
};

struct PreparedFile {
  uint64_t dev;
  uint64_t ino;
  char build_id[128];  // hex, NUL-terminated
  uint64_t first;
  uint64_t count;
  uint64_t ranges_first;
  uint64_t ranges;
  // The file's version (elf::FileVersion), and where its bytes and index are.
  uint64_t size;
  int64_t mtime_sec;
  int64_t mtime_nsec;
  uint64_t bytes_at;
  uint64_t image_at;
  uint64_t image_size;
};

static_assert(sizeof(PreparedHead) == 24 && sizeof(PreparedFile) == 224);

}  // namespace usprobe::agent
