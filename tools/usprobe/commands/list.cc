// usprobe list FILE [PATTERN] [--json]: the functions a probe can name in an ELF file. PATTERN
// matches a C++ function's mangled or demangled name. usprobe list usdt:FILE[:PROVIDER:NAME]
// [-v]: its USDT probes.
#include <fmt/format.h>
#include <fnmatch.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "commands/commands.h"
#include "core/site_analysis.h"
#include "elf/elf_file.h"
#include "output/report.h"
#include "resolve/debug_package.h"
#include "resolve/library_finder.h"
#include "resolve/probe_spec.h"
#include "session/session.h"

namespace usprobe::cli {
namespace {

// -r's PATTERN compiled; an empty Regex without -r or without a pattern.
Result<Regex> pattern_regex(const ListOptions &options) {
  if (!options.regex || options.pattern.empty()) return Regex();
  auto re = compile_regex(options.pattern);
  if (!re) return fail(re.error().code, "list: " + re.error().message);
  return re;
}

// usprobe list usdt:FILE[:PROVIDER[:NAME]] [PATTERN]: a line per USDT probe, as bpftrace -l names
// it; -v (as tplist -v) adds its semaphore and a line per site with the note's argument specs.
int list_usdt(const ListOptions &options) {
  auto spec = parse_usdt_listing(options.file);
  if (!spec) return report_error(spec.error());
  if (spec->file == "exe")
    return report_error({EINVAL,
                         "list: 'exe' is the command a session starts; give its path: "
                         "usprobe list usdt:/usr/bin/python3.11"});
  auto compiled = pattern_regex(options);
  if (!compiled) return report_error(compiled.error());
  Regex regex = std::move(*compiled);
  LibraryFinder finder = LibraryFinder::for_listing();
  auto path = finder.find(spec->file);
  if (!path) return report_error(path.error());
  auto file = elf::ElfFile::open(*path);
  if (!file) return report_error(file.error());
  auto notes = elf::read_usdt_probes(**file);
  if (!notes) return report_error(notes.error());
  auto found = match_usdt(*notes, *spec, *path);
  if (!found) return report_error(found.error());
  // PATTERN, when given, filters further: on NAME or PROVIDER:NAME.
  std::vector<UsdtMatch> probes;
  for (UsdtMatch &m : *found) {
    std::string full = m.provider + ":" + m.name;
    auto matches = [&](const std::string &text) {
      return regex ? regex_search(regex, text)
                   : ::fnmatch(options.pattern.c_str(), text.c_str(), 0) == 0;
    };
    if (options.pattern.empty() || matches(m.name) || matches(full)) probes.push_back(std::move(m));
  }
  if (probes.empty())
    return report_error(
        {ENOENT, fmt::format("no USDT probe in {} matches {}'{}'", *path,
                             regex ? "the regular expression " : "", options.pattern)});

  // With -v and --json, the path the engine would give each site (jump, or int3 and why), judged
  // in this process's address space (core/site_analysis.h says what that cannot know).
  std::map<uint64_t, SiteVerdict> verdicts;
  if (options.verbose || options.json) {
    if (auto v = analyse_usdt_sites(*path))
      for (UsdtSiteVerdict &u : *v) verdicts[u.verdict.file_offset] = std::move(u.verdict);
    // An attach places a probe's sites highest first, and a lower site whose window would cover
    // a higher one steps aside to the int3 path (registry.cc); the analysis saw each site alone.
    for (const UsdtMatch &m : probes) {
      std::vector<uint64_t> offsets;
      for (size_t i : m.sites) offsets.push_back((*notes)[i].file_offset);
      std::sort(offsets.begin(), offsets.end());
      for (size_t k = 0; k + 1 < offsets.size(); ++k) {
        auto it = verdicts.find(offsets[k]);
        if (it == verdicts.end() || !it->second.jump) continue;
        SiteVerdict &v = it->second;
        if (v.patch_offset + v.footprint > offsets[k + 1]) {
          v.jump = false;
          v.path = "int3";
          v.reason = "another probe's site lies within the 5-byte window";
        }
      }
    }
  }
  auto path_of = [&](uint64_t offset) -> std::string {
    auto it = verdicts.find(offset);
    if (it == verdicts.end()) return "";
    return it->second.jump ? it->second.path : it->second.path + ": " + it->second.reason;
  };

  if (options.json) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const UsdtMatch &m : probes) {
      const elf::UsdtProbe &first = (*notes)[m.sites.front()];
      nlohmann::ordered_json sites = nlohmann::ordered_json::array();
      for (size_t i : m.sites) {
        const elf::UsdtProbe &n = (*notes)[i];
        nlohmann::ordered_json args = nlohmann::ordered_json::array();
        for (const elf::UsdtArg &a : n.args) args.push_back(a.text);
        nlohmann::ordered_json site = {{"offset", n.file_offset}, {"args", std::move(args)}};
        if (!n.args_error.empty()) {
          site["args_text"] = n.args_text;
          site["args_error"] = n.args_error;
        }
        if (auto it = verdicts.find(n.file_offset); it != verdicts.end()) {
          site["path"] = it->second.path;
          if (!it->second.jump) site["reason"] = it->second.reason;
        }
        sites.push_back(std::move(site));
      }
      nlohmann::ordered_json entry = {
          {"probe", fmt::format("usdt:{}:{}:{}", *path, m.provider, m.name)},
          {"provider", m.provider},
          {"name", m.name}};
      entry["semaphore"] = first.semaphore_vaddr ? nlohmann::ordered_json(first.semaphore_vaddr)
                                                 : nlohmann::ordered_json(nullptr);
      entry["sites"] = std::move(sites);
      list.push_back(std::move(entry));
    }
    nlohmann::ordered_json j;
    j["file"] = *path;
    j["usdt"] = std::move(list);
    fmt::print("{}\n", dump_line(j));
    return 0;
  }
  for (const UsdtMatch &m : probes) {
    std::string name = fmt::format("usdt:{}:{}:{}", *path, m.provider, m.name);
    if (!options.verbose) {
      fmt::print("{}\n", name);
      continue;
    }
    // The semaphore is the probe's (every note of a probe names the same one).
    const elf::UsdtProbe &first = (*notes)[m.sites.front()];
    fmt::print("{}  {} site{}, {}\n", name, m.sites.size(), m.sites.size() == 1 ? "" : "s",
               first.semaphore_vaddr ? fmt::format("semaphore {:#x}", first.semaphore_vaddr)
                                     : std::string("no semaphore"));
    // A site a line: its file offset, then the note's argument specs (what argN reads), then the
    // path the engine would give it.
    for (size_t i : m.sites) {
      const elf::UsdtProbe &n = (*notes)[i];
      std::string args;
      if (!n.args_error.empty()) {
        args = fmt::format("{}  (not understood: {})", n.args_text, n.args_error);
      } else if (n.args.empty()) {
        args = "(no arguments)";
      } else {
        for (size_t k = 0; k < n.args.size(); ++k)
          args += fmt::format("{}arg{}={}", k ? " " : "", k, n.args[k].text);
      }
      std::string how = path_of(n.file_offset);
      fmt::print("    0x{:016x}  {}{}\n", n.file_offset, args,
                 how.empty() ? "" : "  [" + how + "]");
    }
  }
  return 0;
}

}  // namespace

int run_list(const ListOptions &options) {
  if (options.file.starts_with("usdt:")) return list_usdt(options);
  // "exe" is the program a session starts, which list does not know of.
  if (options.file == "exe")
    return report_error({EINVAL,
                         "list: 'exe' is the command a session starts; give its path: "
                         "usprobe list /usr/bin/sqlite3"});
  auto compiled = pattern_regex(options);
  if (!compiled) return report_error(compiled.error());
  Regex regex = std::move(*compiled);
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
