// `usprobe run`: a compiled bpftrace program as the CLI holds it (bt/compile.h makes it from the
// checked AST): the code of each probe block, the maps and printfs it uses; laid out into the
// region's program (protocol/bt.h) once the probes are resolved; and the maps read back from the
// region, merged over every thread, as the printer takes them (bt/value.h).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "bt/value.h"
#include "protocol/bt.h"

namespace usprobe::bt {

// What an integer that names the probe hit (its index in the plan) stands for: its function
// (bpftrace's func, printed as a symbol) or the probe's whole name (probe).
enum class ProbeName : uint8_t { kNone, kFunc, kProbe };

// A part of a map's key: an integer (8 bytes) or a string (size bytes, NUL-padded).
struct KeyPart {
  bool is_string = false;
  bool is_signed = true;
  uint32_t size = 8;
  ProbeName name = ProbeName::kNone;
  uint32_t stack_frames = 0;  // a ustack (size: agent::bt::ustack_bytes of it), named by the CLI
  bool usym = false;          // usym(addr) (size: agent::bt::kUsymBytes), named by the CLI
  uint32_t buf_len = 0;       // buf(p, n): n bytes (size: n rounded up to words)
  // An integer (a probe name too): 8 bytes, the register's value; the others are bytes in scratch.
  bool is_integer() const { return !is_string && stack_frames == 0 && !usym && buf_len == 0; }
};

// A buf's bytes as bpftrace prints them: printable ASCII as it is, any other byte as \xNN.
std::string buf_text(const char *bytes, uint32_t n);

// The names of the resolved probes, by plan index: func ("malloc") and probe
// ("uprobe:/usr/lib/x86_64-linux-gnu/libc.so.6:malloc").
struct ProbeNames {
  std::vector<std::string> funcs, probes;
  // From the plan's locations ("/path:func", "uretprobe:/path:func", "usdt:/path:prov:name").
  static ProbeNames of(const std::vector<std::string> &locations);
  Scalar name(ProbeName kind, uint64_t index) const;
  // Names a ustack's frames ("func+off", innermost first) with the mappings of process `pid`'s
  // image `image`; without it, frames are their addresses.
  std::function<std::vector<std::string>(int32_t pid, uint32_t image,
                                         const std::vector<uint64_t> &ips)>
      stack;
  // Names one address (usym) as bpftrace does: the function's name, or the address in hex.
  std::function<std::string(int32_t pid, uint32_t image, uint64_t address)> symbol;
  Scalar usym(const char *bytes) const;  // the kUsymBytes of a usym value
  // A ustack value of at most `frames` frames (agent::bt::ustack_bytes(frames) bytes), named.
  Scalar ustack(const char *bytes, uint32_t frames) const;
};

struct MapDef {
  std::string name;  // "@", "@bytes"
  ValueKind kind = ValueKind::kScalar;
  bool is_signed = true;  // of the values (plain, sum min max avg stats)
  std::vector<KeyPart> key;
  int64_t lhist_min = 0, lhist_max = 0, lhist_step = 1;
  uint32_t max_entries = 4096;    // bpftrace's default map size
  uint32_t string_value = 0;      // a plain map of strings: their bytes (a multiple of 8)
  bool deleted_in_probe = false;  // an aggregation a probe deletes entries of: it has tombstones
  uint32_t key_bytes() const;
};

struct PrintfDef {
  std::string format;  // as written, escapes resolved
  struct Arg {
    bool is_string = false;
    bool is_signed = true;
    uint32_t size = 0;  // a string's bytes in the record (a multiple of 8)
    ProbeName name = ProbeName::kNone;
    bool usym = false;          // kUsymBytes in the record, named by the CLI
    uint32_t stack_frames = 0;  // a ustack: ustack_bytes of it in the record, named by the CLI
    uint32_t buf_len = 0;       // a buf(p, n): n bytes (size: n rounded up to words), as %r
    // In the record as `size` bytes; else an 8-byte integer.
    bool in_bytes() const { return is_string || usym || stack_frames != 0 || buf_len != 0; }
  };
  std::vector<Arg> args;
  // Not a printf: a probe's print(@m, top, div) (print_map >= 0; no arguments in the record), its
  // print(value) (one argument) or its clear(@m) (clear_map >= 0), which the CLI carries out when
  // it reads the record, in the order of the thread's records (bpftrace's are asynchronous too).
  int print_map = -1;
  uint64_t top = 0, div = 1;
  bool print_value = false;
  int clear_map = -1;
};

// One block's code for one kind of probe (argN reads differ between uprobes and USDT probes).
struct CodeBlock {
  uint32_t first = 0;
  uint32_t count = 0;
  uint32_t flags = 0;  // agent::bt::kProbeUsdt, kProbeReturn
};

struct Compiled {
  std::vector<MapDef> maps;
  std::vector<PrintfDef> printfs;
  std::vector<agent::bt::Insn> insns;
  std::vector<uint64_t> constants;
  std::string pool;  // NUL-terminated literals
  std::vector<CodeBlock> blocks;
  uint32_t string_size = 64;
  bool uses_stacks = false;   // ustack somewhere: agent::bt::kProgramStacks
  bool uses_symbols = false;  // usym somewhere: agent::bt::kProgramMaps
};

// The region's program for the resolved probes: probe i runs blocks[block_of_probe[i]].
struct Laid {
  std::string program;  // ProgramHeader and its tables; shared_offset is the region's to fill
  std::vector<agent::bt::MapInfo> maps;
  uint64_t tables_bytes = 0;  // a slot's table area
  uint64_t shared_bytes = 0;  // the shared area
};
Laid lay_out(const Compiled &c, const std::vector<uint32_t> &block_of_probe, uint64_t start_tsc,
             uint64_t nsecs_base);

// The maps' values, merged: what the slots that were freed held (fold), plus what live slots and
// the shared area (`shared`, the region's) hold when read.
class MapReader {
 public:
  MapReader(const Compiled &c, const Laid &laid, char *shared, ProbeNames names = {})
      : compiled_(c),
        laid_(laid),
        shared_(shared),
        names_(std::move(names)),
        folded_(c.maps.size()),
        folded_seen_(c.maps.size()) {}
  // Takes (and then empties) a freed slot's tables.
  void fold(char *tables);
  // Every map now, in the program's order: folded values, plus those of the live slots' tables
  // (`live` calls its argument with each), plus the shared area's plain maps. `dropped`: updates
  // that found their table full, over all slots.
  using LiveTables = std::function<void(const std::function<void(const char *)> &)>;
  std::vector<Map> read(const LiveTables &live, uint64_t *dropped = nullptr) const;
  // clear(@m): an aggregation's generation goes up (every thread's entries count as empty from
  // then on) and its folded values are forgotten; a plain map's entries all become absent.
  void clear(uint32_t map);

 private:
  using Words = std::vector<uint64_t>;
  using Acc = std::map<std::string, Words>;        // by key bytes
  using Stamps = std::map<std::string, uint32_t>;  // by key bytes: tombstones (protocol/bt.h)
  // Merges a slot's table of `map` into `into`, leaving out the entries its tombstones deleted;
  // `seen`: the newest tombstone each merged key had seen, kept where given.
  void merge_table(uint32_t map, const char *tables, const Stamps &tombs, Acc &into,
                   uint64_t &dropped, Stamps *seen = nullptr) const;
  Stamps tombstones(uint32_t map) const;
  void merge_words(const MapDef &m, const uint64_t *from, Words &into) const;
  uint32_t generation_of(uint32_t map) const;

  const Compiled &compiled_;
  const Laid &laid_;
  char *shared_;
  ProbeNames names_;
  std::vector<Acc> folded_;
  std::vector<Stamps> folded_seen_;  // by map: the newest tombstone each folded key had seen
  uint64_t folded_dropped_ = 0;
};

// The Scalars of a key's bytes.
std::vector<Scalar> decode_key(const MapDef &m, const char *bytes, const ProbeNames &names = {});

}  // namespace usprobe::bt
