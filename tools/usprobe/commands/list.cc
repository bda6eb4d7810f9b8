// usprobe list FILE [PATTERN] [--json]: the functions a probe can name in an ELF file. PATTERN
// matches a C++ function's mangled or demangled name.
#include <fmt/format.h>
#include <fnmatch.h>

#include <nlohmann/json.hpp>

#include "commands/commands.h"
#include "elf/elf_file.h"
#include "output/report.h"
#include "resolve/library_finder.h"
#include "resolve/probe_spec.h"
#include "session/session.h"

namespace usprobe::cli {

int run_list(const ListOptions &options) {
  LibraryFinder finder = LibraryFinder::for_listing();
  auto path = finder.find(options.file);
  if (!path) return report_error(path.error());
  auto file = elf::ElfFile::open(*path);
  if (!file) return report_error(file.error());

  // Already sorted by offset; aliases at one offset are all listed, as each can be probed.
  std::vector<const elf::Function *> selected;
  for (const elf::Function &f : (*file)->functions())
    if (options.pattern.empty() || ::fnmatch(options.pattern.c_str(), f.name.c_str(), 0) == 0 ||
        (f.name.starts_with("_Z") &&
         ::fnmatch(options.pattern.c_str(), shown_name(f).c_str(), 0) == 0))
      selected.push_back(&f);
  if (selected.empty() && !options.pattern.empty())
    return report_error(
        {ENOENT, fmt::format("no function in {} matches '{}'", *path, options.pattern)});

  if (options.json) {
    nlohmann::ordered_json functions = nlohmann::ordered_json::array();
    for (const elf::Function *f : selected) {
      nlohmann::ordered_json entry = {
          {"name", callable_name(*f)}, {"offset", f->file_offset}, {"size", f->size}};
      if (f->name.starts_with("_Z")) entry["demangled"] = shown_name(*f);
      functions.push_back(std::move(entry));
    }
    nlohmann::ordered_json j;
    j["file"] = *path;
    j["functions"] = std::move(functions);
    fmt::print("{}\n", dump_line(j));
  } else {
    // A C++ function's demangled name follows its mangled one: either names it in a probe.
    for (const elf::Function *f : selected) {
      std::string name = callable_name(*f);
      if (f->name.starts_with("_Z")) name += "  " + shown_name(*f);
      fmt::print("0x{:016x} {:>8}  {}\n", f->file_offset, f->size, name);
    }
  }
  return 0;
}

}  // namespace usprobe::cli
