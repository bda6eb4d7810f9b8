#include "resolve/symbolizer.h"

#include <cxxabi.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace usprobe::cli {

ModuleMap::ModuleMap(const std::vector<os::Mapping> &mappings) {
  for (const os::Mapping &m : mappings) {
    if (m.path.empty() || m.end <= m.start) continue;  // anonymous memory: nothing to name it by
    modules_.push_back({.start = m.start,
                        .end = m.end,
                        .offset = m.offset,
                        .path = m.path,
                        .exec = m.exec,
                        .deleted = m.deleted});
  }
  // The kernel lists mappings in address order already; sorting keeps find() right for any text.
  std::sort(modules_.begin(), modules_.end(),
            [](const Module &a, const Module &b) { return a.start < b.start; });
}

const Module *ModuleMap::find(uint64_t address) const {
  auto it = std::upper_bound(modules_.begin(), modules_.end(), address,
                             [](uint64_t a, const Module &m) { return a < m.start; });
  if (it == modules_.begin()) return nullptr;
  --it;
  return address < it->end ? &*it : nullptr;
}

Result<ModuleMap> parse_module_map(std::string_view maps_text) {
  auto mappings = os::parse_mappings(maps_text, "maps text");
  if (!mappings) return std::unexpected(mappings.error());
  return ModuleMap(*mappings);
}

Result<ModuleMap> read_module_map(pid_t pid) {
  auto mappings = os::read_mappings(fmt::format("/proc/{}/maps", pid).c_str());
  if (!mappings) return std::unexpected(mappings.error());
  return ModuleMap(*mappings);
}

namespace {
bool g_demangle_names = true;
}  // namespace

void set_demangle_names(bool demangle) {
  g_demangle_names = demangle;
}

bool demangle_names() {
  return g_demangle_names;
}

std::string demangle(const std::string &name) {
  // Itanium-ABI names start with _Z; anything else (a C function, "main") is left alone, also
  // because __cxa_demangle would read a plain "i" as the type name "int".
  if (!name.starts_with("_Z")) return name;
  int status = 0;
  char *out = abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status);
  if (status != 0 || !out) return name;
  std::string result(out);
  std::free(out);
  return result;
}

namespace {

std::string_view base_name(std::string_view path) {
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

}  // namespace

std::string Frame::name() const {
  if (!function.empty()) return function;
  if (module.empty()) return "[unknown]";
  if (module.front() != '/') return module;  // "[vdso]"
  return fmt::format("{}+0x{:x}", base_name(module), file_offset);
}

std::string Frame::name_with_offset() const {
  if (!function.empty()) return fmt::format("{}+0x{:x} [{}]", function, function_offset, module);
  if (module.empty()) return fmt::format("[unknown] 0x{:x}", address);
  if (module.front() != '/') return fmt::format("{}+0x{:x}", module, file_offset);
  return fmt::format("{} [{}]", name(), module);
}

Symbolizer::Symbolizer(ModuleMap modules) : modules_(std::move(modules)) {}

const elf::ElfFile *Symbolizer::elf_for(const Module &module) {
  auto [it, inserted] = files_.try_emplace(module.path);
  if (inserted) {
    auto file = elf::ElfFile::open(module.path);
    if (file) it->second = std::move(*file);
  }
  return it->second.get();
}

std::string Symbolizer::build_id(const Module &module) {
  if (!module.is_file() || module.deleted) return {};
  const elf::ElfFile *elf = elf_for(module);
  return elf ? elf->build_id() : std::string();
}

const std::string &Symbolizer::demangled(const std::string &name) {
  auto [it, inserted] = demangled_.try_emplace(name);
  if (inserted) it->second = demangle_names() ? demangle(name) : name;
  return it->second;
}

Frame Symbolizer::symbolize(uint64_t address, bool return_address) {
  Frame frame;
  frame.address = address;
  // The address that identifies the instruction: the call itself for a return address.
  uint64_t lookup = return_address && address > 0 ? address - 1 : address;
  const Module *module = modules_.find(lookup);
  if (!module) return frame;
  frame.module = module->path;
  if (!module->is_file()) {
    frame.file_offset = address - module->start;  // offset into the pseudo mapping
    return frame;
  }
  frame.file_offset = module->file_offset(address);
  // The path of an unlinked file names another file now, or none: its symbols would lie.
  if (module->deleted) return frame;
  const elf::ElfFile *elf = elf_for(*module);
  if (!elf) return frame;
  if (std::optional<elf::Function> f = elf->function_containing(module->file_offset(lookup))) {
    frame.function = demangled(f->name);
    frame.symbol = f->name;
    frame.function_offset = frame.file_offset - f->file_offset;
  }
  return frame;
}

std::vector<Frame> Symbolizer::symbolize_stack(std::span<const uint64_t> ips) {
  std::vector<Frame> frames;
  frames.reserve(ips.size());
  for (size_t i = 0; i < ips.size(); ++i) frames.push_back(symbolize(ips[i], i > 0));
  return frames;
}

}  // namespace usprobe::cli
