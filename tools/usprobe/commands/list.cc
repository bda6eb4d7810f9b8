// usprobe list FILE [PATTERN] [--json]: the functions a probe can name in an ELF file. PATTERN
// matches a C++ function's mangled or demangled name.
#include <fmt/format.h>
#include <fnmatch.h>

#include <nlohmann/json.hpp>
#include <optional>

#include "commands/commands.h"
#include "elf/elf_file.h"
#include "output/report.h"
#include "resolve/debug_package.h"
#include "resolve/library_finder.h"
#include "resolve/probe_spec.h"
#include "session/session.h"

namespace usprobe::cli {

int run_list(const ListOptions &options) {
  // "exe" is the program a session starts, which list does not know of.
  if (options.file == "exe")
    return report_error({EINVAL,
                         "list: 'exe' is the command a session starts; give its path: "
                         "usprobe list /usr/bin/sqlite3"});
  Regex regex;
  if (options.regex && !options.pattern.empty()) {
    auto re = compile_regex(options.pattern);
    if (!re) return report_error({re.error().code, "list: " + re.error().message});
    regex = std::move(*re);
  }
  LibraryFinder finder = LibraryFinder::for_listing();
  auto path = finder.find(options.file);
  if (!path) return report_error(path.error());
  auto file = elf::ElfFile::open(*path);
  if (!file) return report_error(file.error());

  // Already sorted by offset; aliases at one offset are all listed, as each can be probed.
  std::vector<const elf::Function *> selected;
  auto matches = [&](const std::string &name) {
    return regex ? regex_search(regex, name)
                 : ::fnmatch(options.pattern.c_str(), name.c_str(), 0) == 0;
  };
  for (const elf::Function &f : (*file)->functions())
    if (options.pattern.empty() || matches(f.name) ||
        (f.name.starts_with("_Z") && matches(shown_name(f))))
      selected.push_back(&f);
  std::string hint = stripped_hint(**file);
  if (selected.empty() && !options.pattern.empty())
    return report_error(
        {ENOENT,
         fmt::format("no function in {} matches {}'{}'{}", *path,
                     regex ? "the regular expression " : "", options.pattern,
                     hint.empty() ? "" : fmt::format(" ({} is stripped: {})", *path, hint))});
  // A stripped file lists only what .dynsym has: a missing function may just be internal.
  if (!hint.empty())
    fmt::print(stderr,
               "usprobe: note: {} is stripped: only its exported functions are listed; {}\n", *path,
               hint);

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
