// Probe arguments: every spelling the CLI accepts, the ones it refuses, and how globs expand.
#include "resolve/probe_spec.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "resolve/library_finder.h"

namespace usprobe::cli {
namespace {

using Kind = ProbeSpec::Kind;

bool readable(const char *path) {
  return ::access(path, R_OK) == 0;
}

ProbeSpec parsed(std::string_view text) {
  auto spec = parse_probe(text);
  EXPECT_TRUE(spec.has_value()) << text << ": " << (spec ? "" : spec.error().message);
  return spec.value_or(ProbeSpec{});
}

TEST(ParseProbe, FileAndSymbol) {
  ProbeSpec s = parsed("libc:malloc");
  EXPECT_EQ(s.file, "libc");
  EXPECT_EQ(s.target, "malloc");
  EXPECT_EQ(s.kind, Kind::kSymbol);
  EXPECT_EQ(s.symbol, "malloc");
}

TEST(ParseProbe, SymbolPlusDecimalAndHexOffset) {
  ProbeSpec dec = parsed("exe:parse+18");
  EXPECT_EQ(dec.kind, Kind::kSymbolOffset);
  EXPECT_EQ(dec.symbol, "parse");
  EXPECT_EQ(dec.offset, 18u);
  ProbeSpec hex = parsed("exe:parse+0x12");
  EXPECT_EQ(hex.kind, Kind::kSymbolOffset);
  EXPECT_EQ(hex.offset, 0x12u);
  EXPECT_EQ(hex.target, "parse+0x12");
}

TEST(ParseProbe, FileOffset) {
  ProbeSpec s = parsed("/usr/bin/prog:0x1139");
  EXPECT_EQ(s.kind, Kind::kOffset);
  EXPECT_EQ(s.file, "/usr/bin/prog");
  EXPECT_EQ(s.offset, 0x1139u);
}

TEST(ParseProbe, GlobOnlyInThePlainForm) {
  EXPECT_EQ(parsed("libc:str*").kind, Kind::kGlob);
  EXPECT_EQ(parsed("libc:mall?c").kind, Kind::kGlob);
  EXPECT_EQ(parsed("libc:[mc]alloc").kind, Kind::kGlob);
  EXPECT_FALSE(parse_probe("libc:str*+4").has_value());
}

TEST(ParseProbe, BpftraceUprobePrefixIsStripped) {
  ProbeSpec s = parsed("uprobe:/lib/x86_64-linux-gnu/libc.so.6:malloc");
  EXPECT_EQ(s.file, "/lib/x86_64-linux-gnu/libc.so.6");
  EXPECT_EQ(s.symbol, "malloc");
  EXPECT_EQ(s.text, "uprobe:/lib/x86_64-linux-gnu/libc.so.6:malloc");
  EXPECT_EQ(parsed("uprobe:libc:free").file, "libc");
}

TEST(ParseProbe, SplitsAtTheLastColon) {
  ProbeSpec s = parsed("/odd:dir/lib.so:fn");
  EXPECT_EQ(s.file, "/odd:dir/lib.so");
  EXPECT_EQ(s.symbol, "fn");
}

TEST(ParseProbe, DemangledCxxNamesStayWholeAfterTheFile) {
  ProbeSpec s = parsed("exe:ns::func");
  EXPECT_EQ(s.file, "exe");
  EXPECT_EQ(s.kind, Kind::kSymbol);
  EXPECT_EQ(s.symbol, "ns::func");
  ProbeSpec params = parsed("/odd:dir/app:ns::A::func(int, char const*) const");
  EXPECT_EQ(params.file, "/odd:dir/app");
  EXPECT_EQ(params.kind, Kind::kSymbol);  // the '*' is a pointer, not a wildcard
  EXPECT_EQ(params.symbol, "ns::A::func(int, char const*) const");
  ProbeSpec tag = parsed("libstdc++:std::locale::name[abi:cxx11]() const");
  EXPECT_EQ(tag.file, "libstdc++");
  EXPECT_EQ(tag.kind, Kind::kSymbol);
  ProbeSpec lambda = parsed("exe:main::{lambda(int)#1}::operator()(int) const");
  EXPECT_EQ(lambda.file, "exe");
  EXPECT_EQ(lambda.symbol, "main::{lambda(int)#1}::operator()(int) const");
  ProbeSpec off = parsed("uretprobe:exe:ns::func");
  EXPECT_TRUE(off.returns);
  EXPECT_EQ(off.symbol, "ns::func");
  ProbeSpec plus = parsed("uprobe:exe:ns::func(int)+0x10");
  EXPECT_EQ(plus.file, "exe");
  EXPECT_EQ(plus.kind, Kind::kSymbolOffset);
  EXPECT_EQ(plus.symbol, "ns::func(int)");
  EXPECT_EQ(plus.offset, 0x10u);
  ProbeSpec op = parsed("exe:ns::operator+(ns::V, ns::V)");
  EXPECT_EQ(op.kind, Kind::kSymbol);
  EXPECT_EQ(parsed("exe:ns::operator*").kind, Kind::kSymbol);
  EXPECT_EQ(parsed("exe:ns::operator[](unsigned long)").kind, Kind::kSymbol);
  ProbeSpec glob = parsed("exe:ns::*");
  EXPECT_EQ(glob.kind, Kind::kGlob);
  EXPECT_EQ(glob.symbol, "ns::*");
  EXPECT_FALSE(parse_probe("libc:ma lloc"));  // a blank outside a C++ name is a typo
}

TEST(DemangledNames, ReturnTypeAndParametersComeOff) {
  EXPECT_EQ(without_return_type("void ns::run<int>(int)"), "ns::run<int>(int)");
  EXPECT_EQ(without_parameters("void ns::run<int>(int)"), "ns::run<int>");
  EXPECT_EQ(without_parameters("ns::A::size() const"), "ns::A::size");
  EXPECT_EQ(without_parameters("ns::A::operator unsigned long() const"),
            "ns::A::operator unsigned long");
  EXPECT_EQ(without_parameters("std::map<int, int>::find(int const&)"), "std::map<int, int>::find");
  EXPECT_EQ(without_parameters("(anonymous namespace)::f(int)"), "(anonymous namespace)::f");
  EXPECT_EQ(without_parameters("plain"), "plain");
}

elf::Function named(std::string name, uint64_t offset) {
  elf::Function f;
  f.name = std::move(name);
  f.file_offset = offset;
  f.size = 16;
  return f;
}

TEST(DemangledNames, OverloadsWithoutParametersAllMatchAndWithThemOne) {
  std::vector<elf::Function> fns = {named("_ZN2ns5scaleEi", 0x10), named("_ZN2ns5scaleEd", 0x20),
                                    named("_ZN2ns5scaleEi.cold", 0x90),
                                    named("_ZN11stacks_demo3runIiEEvT_", 0x30),
                                    named("scale", 0x40)};
  auto both = match_demangled(fns, "ns::scale");
  ASSERT_EQ(both.size(), 2u);
  EXPECT_EQ(both[0].name, "_ZN2ns5scaleEi");
  EXPECT_EQ(both[0].shown, "ns::scale(int)");
  EXPECT_EQ(both[1].shown, "ns::scale(double)");
  auto one = match_demangled(fns, "ns::scale(double)");
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].offset, 0x20u);
  ASSERT_EQ(match_demangled(fns, "stacks_demo::run<int>").size(), 1u);
  ASSERT_EQ(match_demangled(fns, "void stacks_demo::run<int>(int)").size(), 1u);
  EXPECT_EQ(match_demangled(fns, "stacks_demo::run<int>")[0].shown, "stacks_demo::run<int>(int)");
  EXPECT_TRUE(match_demangled(fns, "scale").empty());  // a C name is not a demangled one
  auto glob = expand_glob(fns, "ns::*");
  ASSERT_EQ(glob.size(), 3u);  // both overloads and the cold part
  EXPECT_EQ(glob[0].shown, "ns::scale(int)");
}

TEST(ParseProbe, VersionedSymbolIsAPlainSymbol) {
  ProbeSpec s = parsed("libc:memcpy@GLIBC_2.2.5");
  EXPECT_EQ(s.kind, Kind::kSymbol);
  EXPECT_EQ(s.symbol, "memcpy@GLIBC_2.2.5");
}

TEST(ParseProbe, BadSpecsNameTheSpecAndTheForms) {
  for (const char *bad : {"xyz", ":malloc", "libc:", "libc:0xzz", "libc:0x", "libc:f+", "libc:+4",
                          "libc:f+4x", "libc:ma lloc", "uprobe:", ""}) {
    auto spec = parse_probe(bad);
    ASSERT_FALSE(spec.has_value()) << bad;
    EXPECT_EQ(spec.error().message, std::string("bad probe '") + bad +
                                        "': expected FILE:SYMBOL, FILE:SYMBOL+OFF or FILE:0xOFF");
  }
}

elf::Function fn(std::string name, uint64_t offset, std::string version = "", bool hidden = false) {
  elf::Function f;
  f.name = std::move(name);
  f.version = std::move(version);
  f.hidden_version = hidden;
  f.file_offset = offset;
  f.size = 16;
  return f;
}

TEST(ExpandGlob, OneMatchPerOffsetPreferringThePlainName) {
  std::vector<elf::Function> fns = {fn("__libc_malloc", 0x100), fn("malloc", 0x100),
                                    fn("__malloc", 0x100),      fn("__mallinfo", 0x200),
                                    fn("__mallinfo2", 0x200),   fn("free", 0x300)};
  auto m = expand_glob(fns, "*mall*");
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].name, "malloc");
  EXPECT_EQ(m[0].offset, 0x100u);
  // No alias without '_': the shortest.
  EXPECT_EQ(m[1].name, "__mallinfo");
  EXPECT_FALSE(m[0].by_offset);
}

TEST(ExpandGlob, NothingMatches) {
  EXPECT_TRUE(expand_glob({fn("free", 1)}, "zzz*").empty());
}

TEST(ExpandGlob, HiddenVersionKeepsItsVersionAndDuplicateNamesGoByOffset) {
  std::vector<elf::Function> fns = {fn("memcpy", 0x10, "GLIBC_2.14"),
                                    fn("memcpy", 0x20, "GLIBC_2.2.5", true), fn("init", 0x30),
                                    fn("init", 0x40)};
  auto m = expand_glob(fns, "memcpy");
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].name, "memcpy");
  EXPECT_EQ(m[1].name, "memcpy@GLIBC_2.2.5");
  EXPECT_FALSE(m[0].by_offset);
  auto inits = expand_glob(fns, "ini?");
  ASSERT_EQ(inits.size(), 2u);
  EXPECT_TRUE(inits[0].by_offset);
  EXPECT_TRUE(inits[1].by_offset);
}

TEST(ResolveProbes, DisplayNamesKeepTheUsersFileAndLocationsAreAbsolute) {
  LibraryFinder finder = LibraryFinder::for_listing();
  std::vector<ProbeSpec> specs = {parsed("libc:malloc"), parsed("libc:free+0")};
  auto probes = resolve_probes(specs, finder);
  ASSERT_TRUE(probes.has_value()) << probes.error().message;
  ASSERT_EQ(probes->size(), 2u);
  EXPECT_EQ((*probes)[0].display, "libc:malloc");
  EXPECT_TRUE((*probes)[0].location.starts_with("/")) << (*probes)[0].location;
  EXPECT_TRUE((*probes)[0].location.ends_with("libc.so.6:malloc")) << (*probes)[0].location;
  EXPECT_EQ((*probes)[1].display, "libc:free+0");
  EXPECT_EQ((*probes)[1].spec_index, 1u);
}

TEST(ResolveProbes, GlobExpandsToNamedProbes) {
  LibraryFinder finder = LibraryFinder::for_listing();
  auto probes = resolve_probes({parsed("libc:strl*")}, finder);
  ASSERT_TRUE(probes.has_value()) << probes.error().message;
  bool strlen = false;
  for (const Probe &p : *probes) {
    EXPECT_TRUE(p.display.starts_with("libc:strl")) << p.display;
    strlen |= p.display == "libc:strlen" && p.location.ends_with(":strlen");
  }
  EXPECT_TRUE(strlen);
}

TEST(ResolveProbes, GlobMatchingNothingIsAnError) {
  LibraryFinder finder = LibraryFinder::for_listing();
  auto probes = resolve_probes({parsed("libc:zzz*")}, finder);
  ASSERT_FALSE(probes.has_value());
  EXPECT_TRUE(probes.error().message.starts_with("no function in /")) << probes.error().message;
  EXPECT_TRUE(probes.error().message.ends_with("libc.so.6 matches 'zzz*'"))
      << probes.error().message;
}

TEST(ResolveProbes, UnknownSymbolSuggestsTheRightOne) {
  LibraryFinder finder = LibraryFinder::for_listing();
  auto probes = resolve_probes({parsed("libc:mallok")}, finder);
  ASSERT_FALSE(probes.has_value());
  EXPECT_NE(probes.error().message.find("no function `mallok` (did you mean `malloc`?)"),
            std::string::npos)
      << probes.error().message;
}

TEST(ResolveProbes, IfuncIsNamedNotResolvedHere) {
  LibraryFinder finder = LibraryFinder::for_listing();
  auto probes = resolve_probes({parsed("libc:strlen")}, finder);
  ASSERT_TRUE(probes.has_value()) << probes.error().message;
  // The command resolves it with its own CPU features: the plan carries the name.
  EXPECT_TRUE((*probes)[0].location.ends_with("libc.so.6:strlen"));
}

TEST(ResolveProbes, UnknownLibraryIsAnError) {
  LibraryFinder finder = LibraryFinder::for_listing();
  auto probes = resolve_probes({parsed("libdoesnotexist42:f")}, finder);
  ASSERT_FALSE(probes.has_value());
  EXPECT_TRUE(probes.error().message.starts_with("library 'libdoesnotexist42' not found"))
      << probes.error().message;
}

}  // namespace
}  // namespace usprobe::cli

namespace usprobe::cli {
namespace {

TEST(ProbeSpec, UretprobePrefixMarksAReturnProbe) {
  auto spec = parse_probe("uretprobe:libc:malloc");
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_TRUE(spec->returns);
  EXPECT_EQ(spec->file, "libc");
  EXPECT_EQ(spec->symbol, "malloc");
  auto plain = parse_probe("uprobe:libc:malloc");
  ASSERT_TRUE(plain);
  EXPECT_FALSE(plain->returns);
}

TEST(ProbeSpec, ReturnProbeAtAnOffsetIsRefused) {
  auto spec = parse_probe("uretprobe:libc:malloc+4");
  ASSERT_FALSE(spec);
  EXPECT_NE(spec.error().message.find("return probe"), std::string::npos) << spec.error().message;
  EXPECT_FALSE(parse_probe("uretprobe:/bin/true:0x1000"));
}

// bpftrace's USDT spellings: usdt:FILE:PROVIDER:NAME, usdt:FILE:NAME, globs in both.
TEST(ParseUsdt, ProviderAndNameOrNameAlone) {
  ProbeSpec full = parsed("usdt:/usr/bin/python3.11:python:audit");
  EXPECT_EQ(full.kind, Kind::kUsdt);
  EXPECT_EQ(full.file, "/usr/bin/python3.11");
  EXPECT_EQ(full.provider, "python");
  EXPECT_EQ(full.symbol, "audit");
  EXPECT_EQ(full.target, "python:audit");
  EXPECT_FALSE(full.returns);

  ProbeSpec short_form = parsed("usdt:exe:function__entry");
  EXPECT_EQ(short_form.kind, Kind::kUsdt);
  EXPECT_EQ(short_form.file, "exe");
  EXPECT_EQ(short_form.provider, "");
  EXPECT_EQ(short_form.symbol, "function__entry");

  ProbeSpec globs = parsed("usdt:libstdc++:*:*throw");
  EXPECT_EQ(globs.file, "libstdc++");
  EXPECT_EQ(globs.provider, "*");
  EXPECT_EQ(globs.symbol, "*throw");
  EXPECT_EQ(parsed("usdt:libc:*").symbol, "*");

  // A ':' in the path stays in FILE: PROVIDER and NAME are the last two fields.
  ProbeSpec odd = parsed("usdt:/odd:dir/prog:p:n");
  EXPECT_EQ(odd.file, "/odd:dir/prog");
  EXPECT_EQ(odd.provider, "p");
  EXPECT_EQ(odd.symbol, "n");
}

TEST(ParseUsdt, BadSpellingsAndRefusedCombinations) {
  for (const char *bad : {"usdt:", "usdt:libc", "usdt::audit", "usdt:libc:", "usdt:libc::audit",
                          "usdt:libc:python:", "usdt:libc:py thon:audit"}) {
    auto spec = parse_probe(bad);
    ASSERT_FALSE(spec.has_value()) << bad;
    EXPECT_EQ(spec.error().message, std::string("bad probe '") + bad +
                                        "': expected usdt:FILE:PROVIDER:NAME or usdt:FILE:NAME");
  }
  auto ret = parse_probe("uretprobe:usdt:/usr/bin/python3.11:python:audit");
  ASSERT_FALSE(ret.has_value());
  EXPECT_NE(ret.error().message.find("has no return to probe"), std::string::npos)
      << ret.error().message;
  set_regex_symbols(true);
  auto regex = parse_probe("usdt:/usr/bin/python3.11:python:audit");
  set_regex_symbols(false);
  ASSERT_FALSE(regex.has_value());
  EXPECT_NE(regex.error().message.find("a USDT probe takes globs"), std::string::npos)
      << regex.error().message;
}

TEST(ParseUsdt, ListingTakesTheFileAlone) {
  auto all = parse_usdt_listing("usdt:/usr/bin/python3.11");
  ASSERT_TRUE(all.has_value()) << all.error().message;
  EXPECT_EQ(all->file, "/usr/bin/python3.11");
  EXPECT_EQ(all->provider, "*");
  EXPECT_EQ(all->symbol, "*");
  auto some = parse_usdt_listing("usdt:/usr/bin/python3.11:python:gc*");
  ASSERT_TRUE(some.has_value());
  EXPECT_EQ(some->symbol, "gc*");
  EXPECT_FALSE(parse_usdt_listing("usdt:"));
}

elf::UsdtProbe note(std::string provider, std::string name, uint64_t offset) {
  elf::UsdtProbe n;
  n.provider = std::move(provider);
  n.name = std::move(name);
  n.file_offset = offset;
  return n;
}

// One match per PROVIDER:NAME, in the order of first notes, with all of its sites.
TEST(MatchUsdt, OneProbePerProviderAndNameWithEverySite) {
  std::vector<elf::UsdtProbe> notes = {
      note("app", "query__start", 0x10), note("app", "query__done", 0x20),
      note("app", "query__start", 0x30), note("lib", "query__start", 0x40)};
  auto m = match_usdt(notes, parsed("usdt:f:app:query__*"), "/f");
  ASSERT_TRUE(m.has_value()) << m.error().message;
  ASSERT_EQ(m->size(), 2u);
  EXPECT_EQ((*m)[0].name, "query__start");
  EXPECT_EQ((*m)[0].sites, (std::vector<size_t>{0, 2}));
  EXPECT_EQ((*m)[1].name, "query__done");
  // A glob on the name alone takes every provider.
  auto all = match_usdt(notes, parsed("usdt:f:*start"), "/f");
  ASSERT_TRUE(all.has_value());
  EXPECT_EQ(all->size(), 2u);
  // A unique name needs no provider.
  auto done = match_usdt(notes, parsed("usdt:f:query__done"), "/f");
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ((*done)[0].provider, "app");
}

TEST(MatchUsdt, ErrorsNameTheFileAndWhatIsWrong) {
  std::vector<elf::UsdtProbe> notes = {note("app", "query__start", 0x10),
                                       note("lib", "query__start", 0x40)};
  auto ambiguous = match_usdt(notes, parsed("usdt:f:query__start"), "/f");
  ASSERT_FALSE(ambiguous.has_value());
  EXPECT_EQ(ambiguous.error().message,
            "/f: USDT probe `query__start` is in several providers (app, lib): write "
            "usdt:f:PROVIDER:query__start");
  auto typo = match_usdt(notes, parsed("usdt:f:app:query_start"), "/f");
  ASSERT_FALSE(typo.has_value());
  EXPECT_EQ(typo.error().message,
            "/f: no USDT probe `app:query_start` (did you mean `app:query__start`?)");
  auto glob = match_usdt(notes, parsed("usdt:f:app:zz*"), "/f");
  ASSERT_FALSE(glob.has_value());
  EXPECT_EQ(glob.error().message, "/f: no USDT probe matches 'app:zz*'");
  auto none = match_usdt({}, parsed("usdt:f:app:x"), "/f");
  ASSERT_FALSE(none.has_value());
  EXPECT_EQ(none.error().message, "/f: no USDT probes (the file has no .note.stapsdt notes)");
}

// python3.11 (Debian's) has 8 USDT probes, one site each, behind semaphores.
TEST(ResolveProbes, UsdtProbeIsOnePlanProbeNamedAsBpftraceNamesIt) {
  if (!readable("/usr/bin/python3.11")) GTEST_SKIP() << "no /usr/bin/python3.11";
  LibraryFinder finder = LibraryFinder::for_listing();
  auto probes = resolve_probes({parsed("usdt:/usr/bin/python3.11:audit"),
                                parsed("usdt:/usr/bin/python3.11:python:function__*")},
                               finder);
  ASSERT_TRUE(probes.has_value()) << probes.error().message;
  ASSERT_EQ(probes->size(), 3u);
  EXPECT_EQ((*probes)[0].display, "usdt:/usr/bin/python3.11:python:audit");
  EXPECT_EQ((*probes)[0].location, "usdt:/usr/bin/python3.11:python:audit");
  EXPECT_EQ((*probes)[1].display, "usdt:/usr/bin/python3.11:python:function__entry");
  EXPECT_EQ((*probes)[2].display, "usdt:/usr/bin/python3.11:python:function__return");
  EXPECT_EQ((*probes)[2].spec_index, 1u);

  // The format's arguments must be the note's: gc__start has one.
  ProbeSpec gc = parsed("usdt:/usr/bin/python3.11:python:gc__start");
  gc.usdt_args_used = 0b11;
  auto refused = resolve_probes({gc}, finder);
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message.find("the format prints arg1, but the note at offset"),
            std::string::npos)
      << refused.error().message;
}

#ifdef USDT_TARGETS_LIB
// tests/targets/usdt_targets.c: "twice" is one probe inlined at two sites; "float" has an argument
// usprobe cannot read (8f@%xmm0): named alone it is refused, a glob leaves it out.
TEST(ResolveProbes, UsdtSitesAreOneProbeAndAnUnreadableOneIsRefusedOrLeftOut) {
  LibraryFinder finder = LibraryFinder::for_listing();
  const std::string lib = USDT_TARGETS_LIB;
  auto twice = resolve_probes({parsed("usdt:" + lib + ":twice")}, finder);
  ASSERT_TRUE(twice.has_value()) << twice.error().message;
  ASSERT_EQ(twice->size(), 1u);
  EXPECT_EQ((*twice)[0].location, "usdt:" + lib + ":usprobe_test:twice");

  auto refused = resolve_probes({parsed("usdt:" + lib + ":usprobe_test:float")}, finder);
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message.find("has arguments `8f@%xmm0` that usprobe cannot read: "),
            std::string::npos)
      << refused.error().message;
  EXPECT_NE(refused.error().message.find("floating-point"), std::string::npos)
      << refused.error().message;
  auto all = resolve_probes({parsed("usdt:" + lib + ":*")}, finder);
  ASSERT_TRUE(all.has_value()) << all.error().message;
  EXPECT_GE(all->size(), 5u);
  for (const Probe &p : *all) EXPECT_FALSE(p.location.ends_with(":float")) << p.location;
}
#endif

// memcpy and memmove are IFUNCs that this CPU resolves to one implementation, which a glob also
// names: one patch, so one probe under the plainest name with the others as aliases; a probe
// whose site is unknown stays apart, and a return probe at the same offset is another probe.
TEST(MergeSameSites, OneProbePerSiteUnderItsPlainestName) {
  auto probe = [](std::string name, std::optional<uint64_t> offset, size_t spec) {
    Probe p{"libc:" + name, "/lib/libc.so.6:" + name, spec};
    p.site_file = "/lib/libc.so.6";
    p.site_offset = offset;
    return p;
  };
  std::vector<Probe> in = {probe("__memmove_avx_unaligned_erms", 0x100, 0),
                           probe("memmove", 0x100, 0),
                           probe("strlen", std::nullopt, 0),
                           probe("memcpy", 0x100, 0),
                           probe("malloc", 0x200, 0),
                           probe("memmove", 0x100, 1)};
  Probe ret = probe("memcpy", 0x100, 2);
  ret.display = "uretprobe:" + ret.display;
  ret.location = "uretprobe:" + ret.location;
  in.push_back(ret);
  std::vector<Probe> out = merge_same_sites(in);
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[0].display, "libc:memcpy");
  EXPECT_EQ(out[0].location, "/lib/libc.so.6:memcpy");
  EXPECT_EQ(out[0].aliases,
            (std::vector<std::string>{"libc:memmove", "libc:__memmove_avx_unaligned_erms"}));
  EXPECT_EQ(name_with_aliases(out[0].display, out[0].aliases),
            "libc:memcpy (also memmove, __memmove_avx_unaligned_erms)");
  EXPECT_EQ(out[1].display, "libc:strlen");
  EXPECT_EQ(out[2].display, "libc:malloc");
  EXPECT_TRUE(out[2].aliases.empty());
  EXPECT_EQ(out[3].display, "uretprobe:libc:memcpy");
}

}  // namespace
}  // namespace usprobe::cli
