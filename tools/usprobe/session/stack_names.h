// The names of user stacks recorded by the agents (trace -U, usprobe run's ustack): a Symbolizer
// per process image, over the mappings its agent wrote into the region (or, when it found no
// room, /proc/PID/maps while the process lives).
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "resolve/symbolizer.h"
#include "session/region.h"

namespace usprobe::cli {

class StackNames {
 public:
  void add(const MapsMessage &m) {
    if (m.text.empty()) return;
    if (auto modules = parse_module_map(m.text))
      by_image_.insert_or_assign({m.pid, m.image}, std::make_unique<Symbolizer>(*modules));
  }

  // "func+0x12 [/path/of/file]", innermost first.
  std::vector<std::string> name(int32_t pid, uint32_t image, std::span<const uint64_t> ips) {
    Symbolizer *sym = symbolizer(pid, image);
    std::vector<std::string> out;
    if (!sym) {
      for (uint64_t ip : ips) out.push_back(fmt::format("[unknown] {:#x}", ip));
      return out;
    }
    for (const Frame &f : sym->symbolize_stack(ips)) out.push_back(f.name_with_offset());
    return out;
  }

  // As bpftrace prints ustack's frames: "func+18" (the offset in decimal), or the address in hex
  // where no function holds it.
  std::vector<std::string> name_bpftrace(int32_t pid, uint32_t image,
                                         std::span<const uint64_t> ips) {
    Symbolizer *sym = symbolizer(pid, image);
    std::vector<std::string> out;
    if (!sym) {
      for (uint64_t ip : ips) out.push_back(fmt::format("{:#x}", ip));
      return out;
    }
    for (const Frame &f : sym->symbolize_stack(ips))
      out.push_back(f.function.empty() ? fmt::format("{:#x}", f.address)
                                       : fmt::format("{}+{}", f.function, f.function_offset));
    return out;
  }

  // As bpftrace prints usym(address): the function's name, or the address in hex.
  std::string symbol_bpftrace(int32_t pid, uint32_t image, uint64_t address) {
    Symbolizer *sym = symbolizer(pid, image);
    if (sym) {
      Frame f = sym->symbolize(address);
      if (!f.function.empty()) return f.function;
    }
    return fmt::format("{:#x}", address);
  }

 private:
  Symbolizer *symbolizer(int32_t pid, uint32_t image) {
    auto it = by_image_.find({pid, image});
    if (it == by_image_.end()) {
      std::unique_ptr<Symbolizer> live;
      if (auto modules = read_module_map(pid)) live = std::make_unique<Symbolizer>(*modules);
      it = by_image_.emplace(std::pair{pid, image}, std::move(live)).first;
    }
    return it->second.get();
  }

  std::map<std::pair<int32_t, uint32_t>, std::unique_ptr<Symbolizer>> by_image_;
};

}  // namespace usprobe::cli
