// usprobe list FILE [PATTERN] [--json]: the functions a probe can name in an ELF file.
#include <fmt/format.h>
#include <fnmatch.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "elf/elf_file.h"
#include "library_finder.h"
#include "probe_spec.h"
#include "report.h"
#include "session.h"

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
    if (options.pattern.empty() || ::fnmatch(options.pattern.c_str(), f.name.c_str(), 0) == 0)
      selected.push_back(&f);
  if (selected.empty() && !options.pattern.empty())
    return report_error(
        {ENOENT, fmt::format("no function in {} matches '{}'", *path, options.pattern)});

  if (options.json) {
    nlohmann::ordered_json functions = nlohmann::ordered_json::array();
    for (const elf::Function *f : selected)
      functions.push_back(
          {{"name", callable_name(*f)}, {"offset", f->file_offset}, {"size", f->size}});
    nlohmann::ordered_json j;
    j["file"] = *path;
    j["functions"] = std::move(functions);
    fmt::print("{}\n", dump_line(j));
  } else {
    for (const elf::Function *f : selected)
      fmt::print("0x{:016x} {:>8}  {}\n", f->file_offset, f->size, callable_name(*f));
  }
  return 0;
}

}  // namespace usprobe::cli
