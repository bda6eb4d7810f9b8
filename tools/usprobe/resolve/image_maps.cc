#include "resolve/image_maps.h"

#include <functional>

namespace usprobe::cli {
namespace {

// File space: file k (in the order first met) holds [(k + 1) << 40, (k + 2) << 40). A terabyte
// per file is more than any file offset or pseudo mapping needs; address 0 stays unmapped.
constexpr int kFileSpaceShift = 40;

// The address that identifies the instruction of ips[i]: a return address is the instruction
// after a call, and when the call ends a function, the next function's first byte.
uint64_t lookup_address(std::span<const uint64_t> ips, size_t i) {
  return i > 0 && ips[i] > 0 ? ips[i] - 1 : ips[i];
}

}  // namespace

void ImageMaps::add(int32_t pid, uint32_t image, std::string_view comm,
                    std::string_view maps_text) {
  if (!comm.empty()) comms_[{pid, image}] = std::string(comm);
  uint32_t &latest = latest_image_[pid];
  if (image > latest) latest = image;
  auto modules = parse_module_map(maps_text);
  if (!modules || modules->modules().empty()) return;
  size_t index = snapshots_.size();
  snapshots_.push_back({pid, image, std::move(*modules), std::hash<std::string_view>{}(maps_text)});
  by_process_[{pid, image}].push_back(index);
  by_image_[image].push_back(index);
}

void ImageMaps::add_live(int32_t pid, uint32_t image, std::string_view maps_text) {
  auto it = by_process_.find({pid, image});
  if (it != by_process_.end() &&
      snapshots_[it->second.back()].text_hash == std::hash<std::string_view>{}(maps_text))
    return;
  add(pid, image, "", maps_text);
}

uint32_t ImageMaps::latest_image(int32_t pid) const {
  auto it = latest_image_.find(pid);
  return it == latest_image_.end() ? 0 : it->second;
}

std::string ImageMaps::comm(int32_t pid, uint32_t image) const {
  if (auto it = comms_.find({pid, image}); it != comms_.end()) return it->second;
  // A forked child that wrote nothing: its parent's name (the same image).
  for (const auto &[key, name] : comms_)
    if (key.second == image) return name;
  return "";
}

const Module *ImageMaps::find_own(int32_t pid, uint32_t image, uint64_t address) const {
  auto it = by_process_.find({pid, image});
  if (it == by_process_.end()) return nullptr;
  for (auto i = it->second.rbegin(); i != it->second.rend(); ++i)
    if (const Module *m = snapshots_[*i].modules.find(address)) return m;
  return nullptr;
}

const Module *ImageMaps::find(int32_t pid, uint32_t image, uint64_t address) const {
  if (const Module *m = find_own(pid, image, address)) return m;
  auto it = by_image_.find(image);
  if (it == by_image_.end()) return nullptr;
  for (auto i = it->second.rbegin(); i != it->second.rend(); ++i)
    if (const Module *m = snapshots_[*i].modules.find(address)) return m;
  return nullptr;
}

bool ImageMaps::covers(int32_t pid, uint32_t image, std::span<const uint64_t> ips) const {
  for (size_t i = 0; i < ips.size(); ++i)
    if (!find_own(pid, image, lookup_address(ips, i))) return false;
  return true;
}

namespace {

// The file space holding every module that names an address of `stacks`; `bases` receives each
// module's base.
ModuleMap file_space(const ImageMaps &maps, std::span<const RawStack> stacks,
                     std::map<std::pair<std::string, bool>, uint64_t> &bases) {
  std::vector<os::Mapping> mappings;
  for (const RawStack &s : stacks) {
    for (size_t i = 0; i < s.ips.size(); ++i) {
      const Module *m = maps.find(s.pid, s.image, lookup_address(s.ips, i));
      if (!m) continue;
      auto [it, inserted] = bases.try_emplace({m->path, m->deleted}, 0);
      if (!inserted) continue;
      it->second = uint64_t{mappings.size() + 1} << kFileSpaceShift;
      os::Mapping &f = mappings.emplace_back();
      f.start = it->second;
      f.end = it->second + (uint64_t{1} << kFileSpaceShift);
      f.read = f.exec = true;
      f.offset = 0;
      f.path = m->path;
      f.deleted = m->deleted;
    }
  }
  return ModuleMap(mappings);
}

}  // namespace

// bases_ is declared before symbolizer_, so it exists when file_space() fills it.
StackNamer::StackNamer(const ImageMaps &maps, std::span<const RawStack> stacks)
    : maps_(maps), symbolizer_(file_space(maps, stacks, bases_)) {}

const Module *StackNamer::module_of(const RawStack &stack, size_t i) const {
  return maps_.find(stack.pid, stack.image, lookup_address(stack.ips, i));
}

uint64_t StackNamer::base_of(const Module &m) const {
  auto it = bases_.find({m.path, m.deleted});
  return it == bases_.end() ? 0 : it->second;
}

std::vector<Frame> StackNamer::name(const RawStack &stack) {
  std::vector<uint64_t> in_file_space(stack.ips.size(), 0);
  for (size_t i = 0; i < stack.ips.size(); ++i) {
    const Module *m = module_of(stack, i);
    uint64_t base = m ? base_of(*m) : 0;
    // A file's address is its file offset; a pseudo mapping's ([vdso]) its offset into it.
    if (base != 0)
      in_file_space[i] =
          base + (m->is_file() ? m->file_offset(stack.ips[i]) : stack.ips[i] - m->start);
  }
  std::vector<Frame> frames = symbolizer_.symbolize_stack(in_file_space);
  for (size_t i = 0; i < frames.size(); ++i) {
    if (in_file_space[i] == 0) frames[i] = Frame();  // in no known mapping: "[unknown]"
    frames[i].address = stack.ips[i];
  }
  return frames;
}

}  // namespace usprobe::cli
