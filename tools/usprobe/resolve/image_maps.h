// The mappings of every process image a stacks run has seen, kept after the processes are gone,
// and the naming of recorded stacks with them.
//
// A stack recorded by the agent is a list of addresses of one process image: (pid, image number;
// protocol/protocol.h, "Stacks mode"). Its addresses mean something only with that image's
// mappings. Those come from three places, and a stack's address is looked up in this order:
//
//   1. what the image's agent wrote for this pid (at attach, and at exit when a dlopen changed
//      them), newest first, together with what the CLI read from /proc/PID/maps itself while the
//      process lived (an address no snapshot covered: a library loaded since);
//   2. what the same image wrote in other processes: a forked child keeps its parent's image
//      number and mappings, and often exits without writing its own (_exit).
//
// Naming: every address is turned into (file, file offset) with the mapping that holds it, then
// named by one Symbolizer over a "file space", an address space invented here in which each file
// has a range of its own at a fixed base (file offset 0 at the base). So any number of processes,
// with their different load addresses, share one Symbolizer and its cache of opened ELF files.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "resolve/symbolizer.h"

namespace usprobe::cli {

class ImageMaps {
 public:
  // An agent's MapsEntry: (pid, image)'s mappings and the process's name.
  void add(int32_t pid, uint32_t image, std::string_view comm, std::string_view maps_text);
  // Read by the CLI from /proc/PID/maps while (pid, image) ran; ignored when it is the text last
  // added for that process.
  void add_live(int32_t pid, uint32_t image, std::string_view maps_text);

  // The newest image number seen for pid (0 when none): the one /proc/PID/maps shows now, unless
  // it exec'd again a moment ago.
  uint32_t latest_image(int32_t pid) const;
  // The process's name, from its image's agent ("" when none wrote one).
  std::string comm(int32_t pid, uint32_t image) const;
  // The mapping that holds `address` in (pid, image), by the order at the top of the file.
  const Module *find(int32_t pid, uint32_t image, uint64_t address) const;
  // Whether every address of a stack (ips[0] exact, the rest return addresses) is in a mapping
  // known for (pid, image) itself.
  bool covers(int32_t pid, uint32_t image, std::span<const uint64_t> ips) const;

 private:
  struct Snapshot {
    int32_t pid = 0;
    uint32_t image = 0;
    ModuleMap modules;
    size_t text_hash = 0;
  };
  const Module *find_own(int32_t pid, uint32_t image, uint64_t address) const;

  std::vector<Snapshot> snapshots_;  // in the order they were added
  std::map<std::pair<int32_t, uint32_t>, std::vector<size_t>> by_process_;  // oldest first
  std::map<uint32_t, std::vector<size_t>> by_image_;                        // oldest first
  std::map<std::pair<int32_t, uint32_t>, std::string> comms_;
  std::map<int32_t, uint32_t> latest_image_;
};

// A recorded stack to name: whose it is and its addresses, innermost first.
struct RawStack {
  int32_t pid = 0;
  uint32_t image = 0;
  std::span<const uint64_t> ips;
};

// Names stacks through one Symbolizer over file space (see the top of the file). Build it with
// every stack it will name (it needs to know all files first), then call name() for each.
class StackNamer {
 public:
  StackNamer(const ImageMaps &maps, std::span<const RawStack> stacks);
  // Frames innermost first, as Symbolizer::symbolize_stack gives them, with the real addresses.
  std::vector<Frame> name(const RawStack &stack);
  // The process's mapping that names ips[i] (return addresses are looked up at address - 1), with
  // its real addresses; nullptr when none does.
  const Module *module_of(const RawStack &stack, size_t i) const;
  // The build-id of a module's file, in hex ("" when none: Symbolizer::build_id).
  std::string build_id(const Module &module) { return symbolizer_.build_id(module); }

 private:  // The base of a module's file (or pseudo mapping) in file space.
  uint64_t base_of(const Module &m) const;

  const ImageMaps &maps_;
  std::map<std::pair<std::string, bool>, uint64_t> bases_;  // (path, deleted) -> base
  Symbolizer symbolizer_;
};

}  // namespace usprobe::cli
