#include "resolve/probe_spec.h"

#include <fmt/format.h>
#include <fnmatch.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <optional>
#include <set>

#include "arch/x86_64/relocator.h"
#include "core/edit_distance.h"
#include "elf/location.h"
#include "resolve/debug_package.h"
#include "resolve/library_finder.h"
#include "resolve/site_check.h"
#include "resolve/symbolizer.h"

namespace usprobe::cli {
using elf::file_colon;
namespace {

std::unexpected<Error> bad_probe(std::string_view text) {
  return fail(EINVAL, fmt::format("bad probe '{}': expected FILE:SYMBOL, FILE:SYMBOL+OFF or "
                                  "FILE:0xOFF",
                                  text));
}

// Whether `s` ends with the keyword "operator" (an operator's name follows it).
bool ends_with_operator(std::string_view s) {
  return s.ends_with("operator") || s.ends_with("operator-") || s.ends_with("operator->");
}

// A pattern has a '*', '?' or '[' as a wildcard. In a demangled C++ name they are also plain
// characters: a pointer in a parameter list ("f(char const*)"), an operator ("operator*",
// "operator[]"), an ABI tag ("name[abi:cxx11]"). Those do not make a glob.
bool is_glob(std::string_view s) {
  int parens = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '(') {
      ++parens;
    } else if (c == ')') {
      parens = std::max(parens - 1, 0);
    } else if ((c == '*' || c == '?' || c == '[') && parens == 0) {
      if (ends_with_operator(s.substr(0, i))) continue;
      if (c == '[' && s.substr(i).starts_with("[abi:")) continue;
      return true;
    }
  }
  return false;
}

// A C++ name may hold blanks ("f(int, char)", "operator new", "unsigned long"): they are allowed
// where the target is one (it has a "::" or a parameter list); elsewhere a blank is a typo.
bool blanks_allowed(std::string_view target) {
  return target.find("::") != std::string_view::npos || target.find('(') != std::string_view::npos;
}

// "SYMBOL+OFF": the '+' that starts an offset (decimal or 0x-hex). "operator+" and
// "operator+=(...)" have a '+' that is part of the name.
size_t offset_plus(std::string_view target) {
  size_t plus = target.rfind('+');
  if (plus == std::string_view::npos) return plus;
  std::string_view after = target.substr(plus + 1);
  if (ends_with_operator(target.substr(0, plus)) || target.substr(0, plus).ends_with('+'))
    return std::string_view::npos;
  if (after.find_first_of("()=,<> ") != std::string_view::npos) return std::string_view::npos;
  return plus;
}

// Which of two aliases at one offset a user would rather read: "malloc" over "__libc_malloc".
bool better_alias(const std::string &a, const std::string &b) {
  bool a_plain = !a.starts_with('_'), b_plain = !b.starts_with('_');
  if (a_plain != b_plain) return a_plain;
  if (a.size() != b.size()) return a.size() < b.size();
  return a < b;
}

}  // namespace

std::string callable_name(const elf::Function &f) {
  return f.hidden_version ? f.name + "@" + f.version : f.name;
}

std::string shown_name(const elf::Function &f) {
  std::string name(f.name.starts_with("_Z") ? without_return_type(demangle(f.name)) : f.name);
  return f.hidden_version ? name + "@" + f.version : name;
}

namespace {
bool g_regex_symbols = false;
}  // namespace

void set_regex_symbols(bool regex) {
  g_regex_symbols = regex;
}

Result<Regex> compile_regex(const std::string &pattern) {
  Regex re(new regex_t);
  if (int rc = ::regcomp(re.get(), pattern.c_str(), REG_EXTENDED | REG_NOSUB); rc != 0) {
    char why[256];
    ::regerror(rc, re.get(), why, sizeof why);
    delete re.release();  // regcomp failed: nothing to regfree
    return fail(EINVAL, fmt::format("invalid regular expression '{}': {}", pattern, why));
  }
  return re;
}

bool regex_search(const Regex &re, const std::string &text) {
  return ::regexec(re.get(), text.c_str(), 0, nullptr, 0) == 0;
}

namespace {

// usdt:FILE:PROVIDER:NAME or usdt:FILE:NAME; with `file_only` (list), usdt:FILE too. Provider and
// probe names never hold a ':' (they are C identifiers), so the last fields are split off from
// the right and FILE keeps any ':' of its path.
Result<ProbeSpec> parse_usdt(std::string_view text, bool file_only) {
  auto bad = [&] {
    return fail(EINVAL, fmt::format("bad probe '{}': expected usdt:FILE:PROVIDER:NAME or "
                                    "usdt:FILE:NAME{}",
                                    text, file_only ? ", or usdt:FILE" : ""));
  };
  ProbeSpec spec;
  spec.text = std::string(text);
  spec.kind = ProbeSpec::Kind::kUsdt;
  std::string_view s = text.substr(5);  // after "usdt:"
  if (s.find_first_of(" \t\n\r\f\v") != std::string_view::npos) return bad();
  std::vector<std::string_view> fields;
  for (size_t colon; (colon = s.find(':')) != std::string_view::npos;) {
    fields.push_back(s.substr(0, colon));
    s.remove_prefix(colon + 1);
  }
  fields.push_back(s);
  if (fields.size() == 1 && !file_only) return bad();
  auto last = [&](size_t k) { return fields[fields.size() - k]; };
  std::string_view file = fields[0];
  if (fields.size() == 1) {
    spec.provider = "*";
    spec.symbol = "*";
  } else if (fields.size() == 2) {
    spec.symbol = std::string(last(1));
  } else {
    spec.provider = std::string(last(2));
    spec.symbol = std::string(last(1));
    // A FILE with ':' in its path: all the fields before PROVIDER.
    file = std::string_view(fields[0].data(),
                            static_cast<size_t>(last(2).data() - 1 - fields[0].data()));
    if (spec.provider.empty()) return bad();
  }
  if (file.empty() || spec.symbol.empty()) return bad();
  spec.file = std::string(file);
  spec.target = spec.provider.empty() ? spec.symbol : spec.provider + ":" + spec.symbol;
  return spec;
}

}  // namespace

Result<ProbeSpec> parse_usdt_listing(std::string_view text) {
  if (!text.starts_with("usdt:")) return fail(EINVAL, fmt::format("'{}' is no usdt: spec", text));
  return parse_usdt(text, true);
}

Result<ProbeSpec> parse_probe(std::string_view text) {
  ProbeSpec spec;
  spec.text = std::string(text);
  const elf::ProbeType type = elf::split_probe_type(text);
  std::string_view s = type.location;
  spec.returns = type.returns;
  if (s.starts_with("usdt:")) {
    if (spec.returns)
      return fail(EINVAL, fmt::format("bad probe '{}': a USDT probe is a point in the code, not a "
                                      "function: it has no return to probe",
                                      text));
    if (g_regex_symbols)
      return fail(EINVAL, fmt::format("bad probe '{}': -r takes regular expressions for function "
                                      "names; a USDT probe takes globs (usdt:FILE:PROVIDER:NAME*)",
                                      text));
    return parse_usdt(text, false);
  }
  size_t colon = file_colon(s);
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == s.size())
    return bad_probe(text);
  spec.file = std::string(s.substr(0, colon));
  std::string_view target = s.substr(colon + 1);
  spec.target = std::string(target);
  if (target.find_first_of("\t\n\r\f\v") != std::string_view::npos || target.starts_with(' ') ||
      target.ends_with(' ') ||
      (target.find(' ') != std::string_view::npos && !blanks_allowed(target) && !g_regex_symbols))
    return bad_probe(text);

  if (g_regex_symbols && !target.starts_with("0x") && !target.starts_with("0X")) {
    // A regex may hold '+', blanks and parentheses: all of it is the pattern.
    if (auto re = compile_regex(spec.target); !re)
      return fail(EINVAL, fmt::format("bad probe '{}': {}", text, re.error().message));
    spec.kind = ProbeSpec::Kind::kGlob;
    spec.symbol = spec.target;
    spec.regex = true;
  } else if (target.starts_with("0x") || target.starts_with("0X")) {
    auto off = elf::parse_offset(target);
    if (!off) return bad_probe(text);
    spec.kind = ProbeSpec::Kind::kOffset;
    spec.offset = *off;
  } else if (size_t plus = offset_plus(target); plus != std::string_view::npos) {
    auto off = elf::parse_offset(target.substr(plus + 1));
    std::string_view symbol = target.substr(0, plus);
    // A glob with an offset would put a probe at an arbitrary byte of every match.
    if (!off || symbol.empty() || is_glob(symbol)) return bad_probe(text);
    spec.kind = ProbeSpec::Kind::kSymbolOffset;
    spec.symbol = std::string(symbol);
    spec.offset = *off;
  } else {
    spec.kind = is_glob(target) ? ProbeSpec::Kind::kGlob : ProbeSpec::Kind::kSymbol;
    spec.symbol = std::string(target);
  }
  if (spec.returns && spec.kind != ProbeSpec::Kind::kSymbol && spec.kind != ProbeSpec::Kind::kGlob)
    return fail(
        EINVAL,
        fmt::format("bad probe '{}': a return probe takes a function, not an offset", text));
  return spec;
}

namespace {

// Picks one function per offset among `functions` for which `selected(f, demangled name)` holds
// (aliases: the better name), sorted by offset.
template <typename Selected>
std::vector<GlobMatch> select_functions(const std::vector<elf::Function> &functions,
                                        Selected selected) {
  std::map<std::string, std::set<uint64_t>> offsets_of_name;
  for (const elf::Function &f : functions) offsets_of_name[callable_name(f)].insert(f.file_offset);

  std::map<uint64_t, const elf::Function *> best;  // offset -> chosen function
  for (const elf::Function &f : functions) {
    // Only a C++ name is demangled: __cxa_demangle would read a plain "i" as "int".
    std::string demangled = f.name.starts_with("_Z") ? demangle(f.name) : f.name;
    if (!selected(f, demangled)) continue;
    auto [it, inserted] = best.try_emplace(f.file_offset, &f);
    if (!inserted && better_alias(callable_name(f), callable_name(*it->second))) it->second = &f;
  }
  std::vector<GlobMatch> out;
  out.reserve(best.size());
  for (auto &[offset, f] : best) {
    std::string name = callable_name(*f);
    bool by_offset = offsets_of_name[name].size() > 1;
    out.push_back({std::move(name), offset, by_offset, shown_name(*f), f->ifunc});
  }
  return out;
}

}  // namespace

namespace {

// Where, in a demangled name, the name proper starts (after a template function's return type)
// and where its parameter list starts (npos when it has none).
std::pair<size_t, size_t> demangled_parts(std::string_view demangled) {
  // The parameter list is the last parenthesised group; what follows it is a qualifier
  // (" const", " &&") or a clone's " [clone .cold]".
  size_t close = demangled.rfind(')');
  if (close == std::string_view::npos) return {0, std::string_view::npos};
  int depth = 0;
  for (size_t i = close + 1; i-- > 0;) {
    if (demangled[i] == ')') {
      ++depth;
    } else if (demangled[i] == '(' && --depth == 0) {
      std::string_view name = demangled.substr(0, i);
      // A template function's return type comes first ("void ns::run<int>(int)"): the name is
      // what follows the last blank outside <...> and (...), unless an operator's name has blanks
      // ("ns::A::operator int", "operator new").
      if (name.find("operator") != std::string_view::npos) return {0, i};
      int nested = 0;  // inside <...> or (...): "(anonymous namespace)::f"
      for (size_t j = name.size(); j-- > 0;) {
        if (name[j] == '>' || name[j] == ')')
          ++nested;
        else if ((name[j] == '<' || name[j] == '(') && nested > 0)
          --nested;
        else if (name[j] == ' ' && nested == 0)
          return {j + 1, i};
      }
      return {0, i};
    }
  }
  return {0, std::string_view::npos};
}

}  // namespace

std::string_view without_return_type(std::string_view demangled) {
  return demangled.substr(demangled_parts(demangled).first);
}

std::string_view without_parameters(std::string_view demangled) {
  auto [start, params] = demangled_parts(demangled);
  return demangled.substr(start, params == std::string_view::npos ? params : params - start);
}

std::vector<GlobMatch> expand_glob(const std::vector<elf::Function> &functions,
                                   std::string_view pattern) {
  std::string pat(pattern);
  return select_functions(functions, [&](const elf::Function &f, const std::string &demangled) {
    if (::fnmatch(pat.c_str(), f.name.c_str(), 0) == 0) return true;
    if (demangled == f.name) return false;
    std::string name(without_return_type(demangled));
    return ::fnmatch(pat.c_str(), name.c_str(), 0) == 0;
  });
}

std::vector<GlobMatch> expand_pattern(const std::vector<elf::Function> &functions,
                                      const ProbeSpec &spec) {
  if (!spec.regex) return expand_glob(functions, spec.symbol);
  auto re = compile_regex(spec.symbol);
  if (!re) return {};  // parse_probe refused it already
  return select_functions(functions, [&](const elf::Function &f, const std::string &demangled) {
    if (regex_search(*re, f.name)) return true;
    if (demangled == f.name) return false;
    return regex_search(*re, std::string(without_return_type(demangled)));
  });
}

std::vector<GlobMatch> match_demangled(const std::vector<elf::Function> &functions,
                                       std::string_view name) {
  bool with_parameters = name.find('(') != std::string_view::npos;
  return select_functions(functions, [&](const elf::Function &f, const std::string &demangled) {
    if (f.hidden_version || demangled == f.name) return false;  // not a C++ name
    if (demangled == name || without_return_type(demangled) == name) return true;
    // Without a parameter list the name means every overload, as in bpftrace; a clone (a
    // function's cold part, "f(int) [clone .cold]") is not one.
    return !with_parameters && demangled.find(" [clone ") == std::string::npos &&
           without_parameters(demangled) == name;
  });
}

namespace {

bool g_unsafe_offsets = false;

// Checks a non-glob location the way the engine will resolve it in the command; the resolved
// location when this process could resolve it (an IFUNC of a library the CLI does not load is
// left to the command).
Result<std::optional<elf::ResolvedLocation>> check_location(const std::string &location,
                                                            const std::string &path,
                                                            const ProbeSpec &spec) {
  auto resolved = elf::resolve_location(location);
  if (resolved) return std::optional(std::move(*resolved));
  if (spec.kind == ProbeSpec::Kind::kSymbol || spec.kind == ProbeSpec::Kind::kSymbolOffset) {
    // The engine resolves an IFUNC (strlen, memcpy) by asking the dynamic linker of the process
    // that has the library loaded, which fails here for a library usprobe itself does not load.
    // The command will resolve it; here it is enough that the symbol exists.
    auto file = elf::ElfFile::open(path);
    if (file) {
      auto fn = (*file)->find_function(spec.symbol);
      if (fn && fn->ifunc) return std::optional<elf::ResolvedLocation>();
    }
  }
  return std::unexpected(resolved.error());
}

// A FILE:SYMBOL or FILE:SYMBOL+OFF whose SYMBOL is no name of the file but a demangled C++ one:
// its probes (several for an overloaded name without parameters), each checked as any other.
// Empty when SYMBOL is a name of the file (or the spec is another kind): resolved as usual.
Result<std::vector<Probe>> resolve_demangled(const ProbeSpec &spec, const std::string &path,
                                             size_t index) {
  std::vector<Probe> out;
  if (spec.kind != ProbeSpec::Kind::kSymbol && spec.kind != ProbeSpec::Kind::kSymbolOffset)
    return out;
  auto file = elf::ElfFile::open(path);
  if (!file) return out;  // resolved as usual, which says why
  auto found = (*file)->find_function(spec.symbol);
  if (found) return out;
  auto matches = match_demangled((*file)->functions(), spec.symbol);
  if (matches.empty()) {
    bool cxx =
        spec.symbol.find("::") != std::string::npos || spec.symbol.find('(') != std::string::npos;
    if (!cxx) return out;  // the usual error, with its suggestion
    return fail(ENOENT, fmt::format("{}: no function `{}`, by its mangled or demangled C++ name",
                                    path, spec.symbol));
  }
  if (spec.kind == ProbeSpec::Kind::kSymbolOffset && matches.size() > 1) {
    std::string names;
    for (const GlobMatch &m : matches) names += (names.empty() ? "" : ", ") + m.shown;
    return fail(EINVAL, fmt::format("bad probe '{}': `{}` names {} functions ({}): give the "
                                    "parameters of one",
                                    spec.text, spec.symbol, matches.size(), names));
  }
  const std::string prefix = spec.returns ? "uretprobe:" : "";
  const uint64_t offset = spec.kind == ProbeSpec::Kind::kSymbolOffset ? spec.offset : 0;
  for (const GlobMatch &m : matches) {
    std::string target = m.by_offset ? fmt::format("{:#x}", m.offset + offset)
                         : offset != 0 || spec.kind == ProbeSpec::Kind::kSymbolOffset
                             ? fmt::format("{}+{:#x}", m.name, offset)
                             : m.name;
    std::string location = path + ":" + target;
    auto resolved = elf::resolve_location(location);
    if (!resolved) return std::unexpected(resolved.error());
    if (auto ok = check_site(*resolved, spec.file + ":" + spec.target); !ok)
      return std::unexpected(ok.error());
    // The user's spelling when it names one function; each overload's own name otherwise.
    std::string shown = matches.size() == 1 ? spec.target : demangle_names() ? m.shown : m.name;
    Probe probe{prefix + spec.file + ":" + shown, prefix + location, index};
    probe.site_file = path;
    probe.site_offset = resolved->file_offset;
    out.push_back(std::move(probe));
  }
  return out;
}

// A raw offset must start an instruction: a probe in the middle of one would relocate its tail as
// another instruction. check_site decodes the enclosing function (its symbol, or in a stripped
// file its FDE) from its start; where nothing gives the bounds, only --unsafe lets the offset
// through. (SYMBOL+OFF always has bounds.)
Result<void> check_instruction_start(const elf::ResolvedLocation &loc, const ProbeSpec &spec) {
  const std::string name = spec.file + ":" + spec.target;
  if (spec.kind == ProbeSpec::Kind::kOffset && loc.func_size == 0 && !g_unsafe_offsets &&
      !loc.file->unwind_range_containing(loc.file_offset))
    return fail(EINVAL, fmt::format("{}: no symbol or unwind information (.eh_frame) gives the "
                                    "bounds of the code at offset {:#x}, so usprobe cannot check "
                                    "that an instruction starts there; --unsafe probes it anyway",
                                    name, loc.file_offset));
  return check_site(loc, name);
}

}  // namespace

void set_unsafe_offsets(bool unsafe) {
  g_unsafe_offsets = unsafe;
}

Error entered_not_called(const Probe &probe) {
  std::string name = probe.display;
  if (name.starts_with("uretprobe:")) name.erase(0, 10);
  return Error{EINVAL, fmt::format("{} is the program's entry point: it is entered, not called, so "
                                   "it has no return to probe",
                                   name)};
}

Error returned_twice(const Probe &probe) {
  std::string name = probe.display;
  if (name.starts_with("uretprobe:")) name.erase(0, 10);
  return Error{EINVAL, elf::returns_twice_refusal(name)};
}

namespace {

// A function not found in a stripped file may be one of its internal functions, which only its
// debug symbols name: the error says which package has them.
Error with_stripped_hint(Error error, const std::string &path) {
  if (error.code != ENOENT) return error;
  auto file = elf::ElfFile::open(path);
  if (!file) return error;
  if (std::string hint = stripped_hint(**file); !hint.empty())
    error.message +=
        fmt::format(" ({} is stripped: only its exported functions are known; {})", path, hint);
  return error;
}

}  // namespace
std::vector<Probe> merge_same_sites(std::vector<Probe> probes) {
  // The symbol part of a display name ("libc:memcpy" -> "memcpy"), for better_alias.
  auto symbol = [](const Probe &p) { return p.display.substr(file_colon(p.display) + 1); };
  std::vector<Probe> out;
  std::map<std::string, size_t> by_location, by_site;
  for (Probe &p : probes) {
    const bool returns = p.location.starts_with("uretprobe:");
    std::string site = p.site_offset ? fmt::format("{}{}:{:#x}", returns ? "uretprobe:" : "",
                                                   p.site_file, *p.site_offset)
                                     : std::string();
    size_t at = out.size();
    if (auto it = by_location.find(p.location); it != by_location.end())
      at = it->second;
    else if (auto s = by_site.find(site); !site.empty() && s != by_site.end())
      at = s->second;
    by_location.try_emplace(p.location, at);
    if (!site.empty()) by_site.try_emplace(site, at);
    if (at == out.size()) {
      out.push_back(std::move(p));
      continue;
    }
    Probe &first = out[at];
    if (p.spec_index == first.spec_index && better_alias(symbol(p), symbol(first))) {
      // The plainer name of one spec leads; the probe keeps its place.
      std::swap(first.display, p.display);
      std::swap(first.location, p.location);
      std::swap(first.entry_point, p.entry_point);
      std::swap(first.returns_twice, p.returns_twice);
    }
    if (p.display != first.display &&
        std::find(first.aliases.begin(), first.aliases.end(), p.display) == first.aliases.end())
      first.aliases.push_back(std::move(p.display));
  }
  for (Probe &p : out) {
    std::sort(p.aliases.begin(), p.aliases.end(), [&](const std::string &a, const std::string &b) {
      return better_alias(a.substr(file_colon(a) + 1), b.substr(file_colon(b) + 1));
    });
    std::erase(p.aliases, p.display);
  }
  return out;
}

std::string name_with_aliases(const std::string &name, const std::vector<std::string> &aliases) {
  if (aliases.empty()) return name;
  const std::string file = name.substr(0, file_colon(name) + 1);
  std::string out = name + " (also ";
  for (size_t i = 0; i < aliases.size(); ++i) {
    std::string_view a = aliases[i];
    if (a.starts_with(file)) a.remove_prefix(file.size());
    out += fmt::format("{}{}", i ? ", " : "", a);
  }
  return out + ")";
}

namespace {

bool has_glob(std::string_view s) {
  return s.find_first_of("*?[") != std::string_view::npos;
}

bool glob_matches(const std::string &pattern, const std::string &name) {
  return ::fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

}  // namespace

Result<std::vector<UsdtMatch>> match_usdt(const std::vector<elf::UsdtProbe> &notes,
                                          const ProbeSpec &spec, const std::string &path) {
  if (notes.empty())
    return fail(ENOENT,
                fmt::format("{}: no USDT probes (the file has no .note.stapsdt notes)", path));
  std::vector<UsdtMatch> out;
  std::map<std::pair<std::string, std::string>, size_t> index;  // (provider, name) -> out
  for (size_t i = 0; i < notes.size(); ++i) {
    const elf::UsdtProbe &n = notes[i];
    if (!spec.provider.empty() && !glob_matches(spec.provider, n.provider)) continue;
    if (!glob_matches(spec.symbol, n.name)) continue;
    auto [it, added] = index.try_emplace({n.provider, n.name}, out.size());
    if (added) out.push_back({n.provider, n.name, {}});
    out[it->second].sites.push_back(i);
  }
  const bool glob = has_glob(spec.provider) || has_glob(spec.symbol);
  if (out.empty()) {
    if (glob) return fail(ENOENT, fmt::format("{}: no USDT probe matches '{}'", path, spec.target));
    // The nearest PROVIDER:NAME (or NAME, as it was written), as for a misspelt function.
    std::string near;
    size_t best = std::max<size_t>(2, spec.target.size() / 3);
    for (const elf::UsdtProbe &n : notes) {
      std::string candidate = spec.provider.empty() ? n.name : n.provider + ":" + n.name;
      size_t d = bounded_edit_distance(spec.target, candidate, best);
      if (d <= best && (near.empty() || d < best)) {
        near = candidate;
        best = d;
      }
    }
    return fail(ENOENT,
                fmt::format("{}: no USDT probe `{}`{}", path, spec.target,
                            near.empty() ? "" : fmt::format(" (did you mean `{}`?)", near)));
  }
  // usdt:FILE:NAME names one probe: a NAME of several providers needs its PROVIDER.
  if (spec.provider.empty() && !glob && out.size() > 1) {
    std::string providers;
    for (const UsdtMatch &m : out) providers += (providers.empty() ? "" : ", ") + m.provider;
    return fail(EINVAL, fmt::format("{}: USDT probe `{}` is in several providers ({}): write "
                                    "usdt:{}:PROVIDER:{}",
                                    path, spec.symbol, providers, spec.file, spec.symbol));
  }
  return out;
}

namespace {

// A USDT spec's probes: one per PROVIDER:NAME, with every site. The engine refuses a probe with a
// site whose argument specs it cannot read (a floating-point operand, "8f@%xmm0"): named alone, it
// is refused here; a glob leaves it out (list -v shows why). Each site's note must also have the
// arguments the trace format prints (spec.usdt_args_used).
Result<std::vector<Probe>> resolve_usdt(const ProbeSpec &spec, const std::string &path,
                                        size_t index) {
  auto file = elf::ElfFile::open(path);
  if (!file) return std::unexpected(file.error());
  if ((*file)->is_static_executable())
    return fail(ENOEXEC, path + ": statically linked: usprobe's agent cannot be loaded there");
  auto notes = elf::read_usdt_probes(**file);
  if (!notes) return std::unexpected(notes.error());
  auto matches = match_usdt(*notes, spec, path);
  if (!matches) return std::unexpected(matches.error());
  const bool glob = has_glob(spec.provider) || has_glob(spec.symbol);
  std::vector<Probe> out;
  std::optional<Error> unreadable;  // the first probe a glob left out
  for (const UsdtMatch &m : *matches) {
    const std::string name = m.provider + ":" + m.name;
    const std::string shown = "usdt:" + spec.file + ":" + name;
    auto bad = std::find_if(m.sites.begin(), m.sites.end(),
                            [&](size_t i) { return !(*notes)[i].args_error.empty(); });
    if (bad != m.sites.end()) {
      const elf::UsdtProbe &n = (*notes)[*bad];
      Error e{EINVAL, fmt::format("{}: the note at offset {:#x} has arguments `{}` that usprobe "
                                  "cannot read: {}",
                                  shown, n.file_offset, n.args_text, n.args_error)};
      if (!glob) return std::unexpected(e);
      if (!unreadable) unreadable = std::move(e);
      continue;
    }
    for (size_t site : m.sites) {
      const elf::UsdtProbe &n = (*notes)[site];
      for (uint32_t used = spec.usdt_args_used; used != 0; used &= used - 1) {
        unsigned arg = static_cast<unsigned>(__builtin_ctz(used));
        if (arg >= n.args.size())
          return fail(
              EINVAL,
              fmt::format("{}: the format prints arg{}, but the note at offset "
                          "{:#x} has {} argument{}{}",
                          shown, arg, n.file_offset, n.args.size(), n.args.size() == 1 ? "" : "s",
                          n.args.empty() ? "" : fmt::format(" (`{}`)", n.args_text)));
      }
    }
    Probe probe{shown, "usdt:" + path + ":" + name, index};
    probe.site_file = path;  // several sites: merge_same_sites goes by location
    out.push_back(std::move(probe));
  }
  if (out.empty() && unreadable) return std::unexpected(*unreadable);
  return out;
}

}  // namespace

Result<std::vector<Probe>> resolve_probes(const std::vector<ProbeSpec> &specs,
                                          LibraryFinder &finder) {
  std::vector<Probe> out;
  for (size_t i = 0; i < specs.size(); ++i) {
    const ProbeSpec &spec = specs[i];
    // Return probes keep bpftrace's prefix in reports and pass it to the engine in the plan.
    const std::string prefix = spec.returns ? "uretprobe:" : "";
    auto found = finder.find(spec.file);
    if (!found) return std::unexpected(found.error());
    // Checked through the path usprobe opens; the plan gets the path the process sees.
    const std::string host = finder.host_path(*found);
    const std::string *path = &host;
    const size_t first = out.size();
    auto as_seen = [&] {
      for (size_t k = first; k < out.size(); ++k)
        out[k].location = finder.target_location(out[k].location);
    };
    if (spec.kind == ProbeSpec::Kind::kUsdt) {
      auto usdt = resolve_usdt(spec, *path, i);
      if (!usdt) return std::unexpected(usdt.error());
      out.insert(out.end(), usdt->begin(), usdt->end());
      as_seen();
      continue;
    }
    auto by_demangled = resolve_demangled(spec, *path, i);
    if (!by_demangled) return std::unexpected(by_demangled.error());
    if (!by_demangled->empty()) {
      out.insert(out.end(), by_demangled->begin(), by_demangled->end());
      as_seen();
      continue;
    }
    if (spec.kind != ProbeSpec::Kind::kGlob) {
      std::string location = *path + ":" + spec.target;
      auto loc = check_location(location, *path, spec);
      if (!loc) return std::unexpected(with_stripped_hint(loc.error(), *path));
      Probe probe{prefix + spec.file + ":" + spec.target, prefix + location, i};
      probe.site_file = *path;
      if (*loc) {
        probe.site_offset = (*loc)->file_offset;
        if (auto ok = check_instruction_start(**loc, spec); !ok) return std::unexpected(ok.error());
        probe.entry_point = (*loc)->file->entry_offset() == (*loc)->file_offset;
        probe.returns_twice = elf::returns_twice(*(*loc)->file, (*loc)->file_offset);
      }
      if (probe.entry_point && spec.returns) return std::unexpected(entered_not_called(probe));
      if (probe.returns_twice && spec.returns) return std::unexpected(returned_twice(probe));
      out.push_back(std::move(probe));
      as_seen();
      continue;
    }
    auto file = elf::ElfFile::open(*path);
    if (!file) return std::unexpected(file.error());
    if ((*file)->is_static_executable())
      return fail(ENOEXEC, *path + ": statically linked: usprobe's agent cannot be loaded there");
    auto matches = expand_pattern((*file)->functions(), spec);
    // The entry point (_start) is entered, not called: a glob leaves it out, as it would be
    // refused for latency and for return probes, and is of no interest counted (once).
    std::erase_if(matches, [&](const GlobMatch &m) { return (*file)->entry_offset() == m.offset; });
    // So are the functions that return twice from a glob of return probes (setjmp, vfork).
    if (spec.returns)
      std::erase_if(matches,
                    [&](const GlobMatch &m) { return elf::returns_twice(**file, m.offset); });
    if (matches.empty())
      return std::unexpected(with_stripped_hint(
          Error{ENOENT, fmt::format("no function in {} matches {}'{}'", *path,
                                    spec.regex ? "the regular expression " : "", spec.symbol)},
          *path));
    // Where its IFUNCs land, as the dynamic linker of this process (the same libc, on the same
    // CPU, as the command's) resolves them: memcpy and memmove are one site with their
    // implementation. An IFUNC that cannot be resolved here keeps a site of its own.
    std::vector<std::string> ifunc_specs;
    for (const GlobMatch &m : matches)
      if (m.ifunc && !m.by_offset) ifunc_specs.push_back(*path + ":" + m.name);
    std::vector<Result<elf::ResolvedLocation>> ifuncs = elf::resolve_locations(ifunc_specs);
    size_t next_ifunc = 0;
    for (const GlobMatch &m : matches) {
      std::string target = m.by_offset ? fmt::format("{:#x}", m.offset) : m.name;
      Probe probe{prefix + spec.file + ":" + (demangle_names() ? m.shown : m.name),
                  prefix + *path + ":" + target, i};
      probe.site_file = *path;
      probe.returns_twice = elf::returns_twice(**file, m.offset);
      if (!m.ifunc || m.by_offset) {
        probe.site_offset = m.offset;
      } else if (const auto &r = ifuncs[next_ifunc++]; r) {
        probe.site_offset = r->file_offset;
      }
      out.push_back(std::move(probe));
    }
    as_seen();
  }
  return out;
}

}  // namespace usprobe::cli
