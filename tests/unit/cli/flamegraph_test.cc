// Folded stacks and the SVG flame graph: the folded lines flame graph tools read, and an SVG that
// is well-formed XML, draws every frame that is wide enough exactly as wide as its share, and
// escapes every name.
#include "output/flamegraph.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "support/text_match.h"

namespace rx = usprobe::test;

namespace usprobe::cli {
namespace {

std::vector<CountedStack> stacks_of(std::string_view folded) {
  auto stacks = parse_folded(folded);
  EXPECT_TRUE(stacks) << stacks.error().message;
  return stacks ? *stacks : std::vector<CountedStack>{};
}

FlameGraphOptions titled(std::string title, std::string subtitle = "") {
  FlameGraphOptions options;
  options.title = std::move(title);
  options.subtitle = std::move(subtitle);
  return options;
}

std::string svg_of(std::string_view folded, const FlameGraphOptions &options = {}) {
  auto stacks = stacks_of(folded);
  return render_flame_graph(build_flame_tree(stacks), options);
}

// Empty when `xml` is well formed as far as this cares: one root element, tags that balance,
// every '&' an entity, no raw '<' or '>' in text or attribute values. Names what is wrong
// otherwise.
std::string xml_problem(std::string_view xml) {
  static const rx::regex entity("^&(amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);");
  auto bad_ampersand = [&](size_t at) {
    std::string rest(xml.substr(at, 12));
    return !rx::regex_search(rest, entity);
  };
  std::vector<std::string> open;
  int roots = 0;
  for (size_t i = 0; i < xml.size();) {
    char c = xml[i];
    if (c == '&') {
      if (bad_ampersand(i)) return "bare & at " + std::to_string(i);
      ++i;
    } else if (c == '>') {
      return "raw > in text at " + std::to_string(i);
    } else if (c != '<') {
      if (open.empty() && c != ' ' && c != '\n') return "text outside the root element";
      ++i;
    } else if (xml.substr(i, 2) == "<?" || xml.substr(i, 4) == "<!--" ||
               xml.substr(i, 9) == "<![CDATA[") {
      std::string_view close = xml[i + 1] == '?' ? "?>" : xml[i + 2] == '-' ? "-->" : "]]>";
      size_t end = xml.find(close, i);
      if (end == std::string_view::npos) return "unterminated " + std::string(xml.substr(i, 9));
      i = end + close.size();
    } else {
      // A tag: scan to its '>' outside quoted attribute values.
      size_t j = i + 1;
      char quote = 0;
      for (; j < xml.size() && (quote || xml[j] != '>'); ++j) {
        if (quote && xml[j] == quote)
          quote = 0;
        else if (!quote && (xml[j] == '"' || xml[j] == '\''))
          quote = xml[j];
        else if (quote && xml[j] == '<')
          return "raw < in an attribute at " + std::to_string(j);
        else if (quote && xml[j] == '&' && bad_ampersand(j))
          return "bare & in an attribute at " + std::to_string(j);
      }
      if (j == xml.size()) return "unterminated tag at " + std::to_string(i);
      std::string_view tag = xml.substr(i + 1, j - i - 1);
      bool closing = tag.starts_with('/');
      bool empty = tag.ends_with('/');
      std::string_view name = tag.substr(closing ? 1 : 0);
      name = name.substr(0, name.find_first_of(" \t\n/"));
      if (name.empty()) return "tag without a name at " + std::to_string(i);
      if (closing) {
        if (open.empty() || open.back() != name)
          return "</" + std::string(name) + "> closes " + (open.empty() ? "nothing" : open.back());
        open.pop_back();
      } else {
        if (open.empty() && ++roots > 1) return "more than one root element";
        if (!empty) open.emplace_back(name);
      }
      i = j + 1;
    }
  }
  if (!open.empty()) return "<" + open.back() + "> is never closed";
  if (roots != 1) return "no root element";
  return "";
}

struct DrawnFrame {
  std::string title;  // as in the file, escaped
  double x = 0, y = 0, width = 0;
  std::string fill, text;
};

// Every frame of a rendered flame graph, in document order.
std::vector<DrawnFrame> frames_of(const std::string &svg) {
  static const rx::regex frame(
      "<g class=\"f\"><title>([^<]*)</title><rect x=\"([0-9.]+)\" y=\"([0-9.]+)\" "
      "width=\"([0-9.]+)\" height=\"[0-9]+\" fill=\"([^\"]+)\"[^>]*/><text "
      "[^>]*>([^<]*)</text></g>");
  std::vector<DrawnFrame> out;
  for (const rx::smatch &m : rx::regex_find_all(svg, frame))
    out.push_back({m[1], std::stod(m[2]), std::stod(m[3]), std::stod(m[4]), m[5], m[6]});
  return out;
}

// The frame whose title starts with `name (`; fails the test when there is not exactly one.
DrawnFrame frame_named(const std::vector<DrawnFrame> &frames, const std::string &name) {
  std::vector<DrawnFrame> found;
  for (const DrawnFrame &f : frames)
    if (f.title.starts_with(name + " (")) found.push_back(f);
  EXPECT_EQ(found.size(), 1u) << "frames named " << name;
  return found.empty() ? DrawnFrame{} : found.front();
}

bool has_frame(const std::vector<DrawnFrame> &frames, const std::string &name) {
  for (const DrawnFrame &f : frames)
    if (f.title.starts_with(name + " (")) return true;
  return false;
}

TEST(Fold, LinesAreSortedOutermostFirstWithCounts) {
  std::vector<CountedStack> stacks = {
      {{"main", "parse", "malloc"}, 12},
      {{"main", "alloc_table"}, 3},
      {{"_start", "main"}, 1},
  };
  EXPECT_EQ(fold(stacks), (std::vector<std::string>{"_start;main 1", "main;alloc_table 3",
                                                    "main;parse;malloc 12"}));
}

TEST(Fold, StacksThatFoldAlikeAreAdded) {
  // Two call sites in `parse` are two captured stacks but one named stack.
  std::vector<CountedStack> stacks = {
      {{"main", "parse", "malloc"}, 5},
      {{"main", "parse", "malloc"}, 7},
      {{"main", "a;b"}, 1},
      {{"main", "a:b"}, 2},
  };
  EXPECT_EQ(fold(stacks), (std::vector<std::string>{"main;a:b 3", "main;parse;malloc 12"}));
}

TEST(Fold, FrameNamesCannotBreakTheFormat) {
  std::vector<CountedStack> stacks = {
      {{"main", "std::map<int, int>::operator[](int const&)", "weird;name\nwith\rbreaks", ""}, 4},
  };
  EXPECT_EQ(fold(stacks),
            (std::vector<std::string>{"main;std::map<int, int>::operator[](int const&);"
                                      "weird:name with breaks;[unknown] 4"}));
}

TEST(Fold, EmptyStacksAndZeroCountsAreLeftOut) {
  std::vector<CountedStack> stacks = {{{}, 5}, {{"main"}, 0}, {{"main"}, 1}};
  EXPECT_EQ(fold(stacks), (std::vector<std::string>{"main 1"}));
  EXPECT_TRUE(fold({}).empty());
}

TEST(FoldParse, ReadsWhatFoldWrites) {
  std::vector<CountedStack> stacks = {{{"main", "operator new(unsigned long)", "malloc"}, 9},
                                      {{"main"}, 2}};
  std::string text;
  for (const std::string &line : fold(stacks)) text += line + "\n";
  auto back = parse_folded(text);
  ASSERT_TRUE(back) << back.error().message;
  ASSERT_EQ(back->size(), 2u);
  EXPECT_EQ((*back)[0].frames, (std::vector<std::string>{"main"}));
  EXPECT_EQ((*back)[0].count, 2u);
  EXPECT_EQ((*back)[1].frames, stacks[0].frames);
  EXPECT_EQ((*back)[1].count, 9u);
}

TEST(FoldParse, RejectsALineWithoutACountNamingIt) {
  auto parsed = parse_folded("main;a 1\n\nmain;b\n");
  ASSERT_FALSE(parsed);
  EXPECT_NE(parsed.error().message.find("line 3"), std::string::npos) << parsed.error().message;
  EXPECT_FALSE(parse_folded("main;a 12x\n"));
  EXPECT_FALSE(parse_folded(" 12\n"));
}

TEST(FlameTree, TotalsAddUpFromTheRoot) {
  FlameNode root = build_flame_tree(stacks_of("main;a;x 30\nmain;a;y 20\nmain;b 45\nmain 5\n"));
  EXPECT_EQ(root.name, "all");
  EXPECT_EQ(root.total, 100u);
  ASSERT_EQ(root.children.size(), 1u);
  const FlameNode &main = root.children[0];
  EXPECT_EQ(main.total, 100u);
  EXPECT_EQ(main.self(), 5u);
  ASSERT_EQ(main.children.size(), 2u);
  EXPECT_EQ(main.children[0].name, "a");
  EXPECT_EQ(main.children[0].total, 50u);
  EXPECT_EQ(main.children[1].name, "b");
  EXPECT_EQ(main.children[1].total, 45u);
}

TEST(FlameSvg, IsWellFormedAndTitlesEveryFrame) {
  std::string svg = svg_of("main;parse;malloc 60\nmain;parse;free 20\nmain;run 20\n",
                           titled("usprobe stacks libc:malloc"));
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_TRUE(svg.starts_with("<?xml"));
  EXPECT_NE(svg.find("width=\"1200\""), std::string::npos);
  EXPECT_NE(svg.find("usprobe stacks libc:malloc"), std::string::npos);
  EXPECT_NE(svg.find(">100 samples<"), std::string::npos) << "the total is shown";

  std::vector<DrawnFrame> frames = frames_of(svg);
  ASSERT_EQ(frames.size(), 6u);
  EXPECT_EQ(frame_named(frames, "all").title, "all (100 samples, 100.00%)");
  EXPECT_EQ(frame_named(frames, "malloc").title, "malloc (60 samples, 60.00%)");
  EXPECT_EQ(frame_named(frames, "free").title, "free (20 samples, 20.00%)");
  EXPECT_EQ(frame_named(frames, "run").title, "run (20 samples, 20.00%)");
  EXPECT_EQ(frame_named(frames, "all").text, "all");
}

TEST(FlameSvg, RootIsAtTheBottomAndCalleesAbove) {
  std::vector<DrawnFrame> frames = frames_of(svg_of("main;parse;malloc 1\n"));
  double all = frame_named(frames, "all").y, main = frame_named(frames, "main").y;
  double parse = frame_named(frames, "parse").y, malloc = frame_named(frames, "malloc").y;
  EXPECT_EQ(all - main, 16);
  EXPECT_EQ(main - parse, 16);
  EXPECT_EQ(parse - malloc, 16);
  EXPECT_DOUBLE_EQ(frame_named(frames, "malloc").width, frame_named(frames, "all").width);
}

TEST(FlameSvg, SiblingsAreAsWideAsTheirParentSideBySide) {
  std::vector<DrawnFrame> frames =
      frames_of(svg_of("main;a;x 30\nmain;a;y 20\nmain;b 37\nmain;c 13\n"));
  DrawnFrame all = frame_named(frames, "all"), main = frame_named(frames, "main");
  DrawnFrame a = frame_named(frames, "a"), b = frame_named(frames, "b");
  DrawnFrame c = frame_named(frames, "c");
  DrawnFrame x = frame_named(frames, "x"), y = frame_named(frames, "y");
  EXPECT_NEAR(all.width, 1180, 0.01) << "the image is 1200 wide, less the side padding";
  EXPECT_NEAR(main.width, all.width, 0.01);
  EXPECT_NEAR(a.width + b.width + c.width, main.width, 0.03);
  EXPECT_NEAR(x.width + y.width, a.width, 0.02);
  EXPECT_NEAR(a.width / main.width, 0.50, 0.001);
  EXPECT_NEAR(b.width / main.width, 0.37, 0.001);
  // Side by side, in name order, starting at the parent's left edge.
  EXPECT_NEAR(a.x, main.x, 0.01);
  EXPECT_NEAR(b.x, a.x + a.width, 0.02);
  EXPECT_NEAR(c.x, b.x + b.width, 0.02);
  EXPECT_NEAR(y.x, x.x + x.width, 0.02);
}

TEST(FlameSvg, FramesNarrowerThanATenthOfAPercentAreDropped) {
  std::vector<DrawnFrame> frames =
      frames_of(svg_of("main;big 99800\nmain;small 150\nmain;tiny;deeper 50\n"));
  EXPECT_TRUE(has_frame(frames, "big"));
  EXPECT_TRUE(has_frame(frames, "small")) << "0.15% is kept";
  EXPECT_FALSE(has_frame(frames, "tiny")) << "0.05% is dropped";
  EXPECT_FALSE(has_frame(frames, "deeper")) << "and so is everything above it";
  // The root still counts the dropped samples.
  EXPECT_EQ(frame_named(frames, "all").title, "all (100000 samples, 100.00%)");
}

TEST(FlameSvg, NamesAreEscapedEverywhere) {
  std::string name = "operator<< <A&B>(\"q\", 'c')";
  std::string svg = render_flame_graph(
      build_flame_tree(std::vector<CountedStack>{{{"main", name}, 3}, {{"main", "x"}, 1}}),
      titled("<T&T>", "run \"it\" & 'see'"));
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_EQ(svg.find(name), std::string::npos);
  EXPECT_EQ(svg.find("<T&T>"), std::string::npos);
  std::string escaped = "operator&lt;&lt; &lt;A&amp;B&gt;(&quot;q&quot;, &apos;c&apos;)";
  std::vector<DrawnFrame> frames = frames_of(svg);
  EXPECT_EQ(frame_named(frames, escaped).title, escaped + " (3 samples, 75.00%)");
  EXPECT_EQ(frame_named(frames, escaped).text, escaped);
  EXPECT_NE(svg.find("&lt;T&amp;T&gt;"), std::string::npos);
  EXPECT_NE(svg.find("run &quot;it&quot; &amp; &apos;see&apos;"), std::string::npos);
}

TEST(FlameSvg, BadBytesBecomeQuestionMarks) {
  EXPECT_EQ(xml_escape("a\x01"
                       "b\xff"
                       "c\xc3"),
            "a?b?c?");
  EXPECT_EQ(xml_escape("caf\xc3\xa9 \xe2\x82\xac"), "caf\xc3\xa9 \xe2\x82\xac") << "UTF-8 is kept";
  EXPECT_EQ(xml_escape("\xed\xa0\x80"), "???") << "a surrogate is not a character";
  EXPECT_EQ(xml_escape("&<>\"'"), "&amp;&lt;&gt;&quot;&apos;");
}

TEST(FlameSvg, LongNamesAreCutToFitTheirFrame) {
  std::string long_name(300, 'n');
  std::vector<DrawnFrame> frames = frames_of(svg_of("main;" + long_name + " 1\nmain;other 9\n"));
  DrawnFrame f = frame_named(frames, long_name);
  ASSERT_FALSE(f.text.empty()) << "a 118px frame has room for a label";
  EXPECT_TRUE(f.text.ends_with("..")) << f.text;
  EXPECT_LE(f.text.size() * 7.0, f.width) << "about 7px per character";
  EXPECT_TRUE(f.title.starts_with(long_name)) << "the title keeps the whole name";

  // A frame with no room for three characters has no label at all.
  std::vector<DrawnFrame> narrow = frames_of(svg_of("main;wide 990\nmain;slim 10\n"));
  EXPECT_EQ(frame_named(narrow, "slim").text, "");
  EXPECT_EQ(frame_named(narrow, "wide").text, "wide");
}

TEST(FlameSvg, MultiByteNamesAreCutBetweenCharacters) {
  std::string name;
  for (int i = 0; i < 100; ++i) name += "\xc3\xa9";  // é
  std::string svg = svg_of("main;" + name + " 1\nmain;other 9\n");
  EXPECT_EQ(xml_problem(svg), "");
  DrawnFrame f = frame_named(frames_of(svg), name);
  ASSERT_TRUE(f.text.ends_with("..")) << f.text;
  EXPECT_EQ((f.text.size() - 2) % 2, 0u) << "no character is split";
}

TEST(FlameSvg, ColoursAreWarmAndFollowTheName) {
  std::string svg = svg_of("a;shared 5\nb;shared 5\nb;other 5\n");
  std::vector<DrawnFrame> frames = frames_of(svg);
  std::vector<std::string> shared;
  for (const DrawnFrame &f : frames) {
    if (f.title.starts_with("shared (")) shared.push_back(f.fill);
    int r = 0, g = 0, b = 0;
    ASSERT_EQ(std::sscanf(f.fill.c_str(), "rgb(%d,%d,%d)", &r, &g, &b), 3) << f.fill;
    EXPECT_GE(r, 200) << f.fill;
    EXPECT_GT(r, g) << f.fill;
    EXPECT_GT(g, b) << f.fill;
  }
  ASSERT_EQ(shared.size(), 2u);
  EXPECT_EQ(shared[0], shared[1]);
  EXPECT_EQ(svg, svg_of("a;shared 5\nb;shared 5\nb;other 5\n")) << "the same input, the same file";
}

TEST(FlameSvg, NoSamplesIsStillADocument) {
  std::string svg = render_flame_graph(build_flame_tree({}));
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_TRUE(frames_of(svg).empty());
  EXPECT_NE(svg.find(">0 samples<"), std::string::npos);
}

TEST(FlameSvg, TheCheckerCatchesBrokenXml) {
  // The checker above must be able to fail, or the tests using it prove nothing.
  EXPECT_NE(xml_problem("<svg><g></svg>"), "");
  EXPECT_NE(xml_problem("<svg>a & b</svg>"), "");
  EXPECT_NE(xml_problem("<svg><text x=\"<\">a</text></svg>"), "");
  EXPECT_NE(xml_problem("<svg/><svg/>"), "");
  EXPECT_EQ(xml_problem("<?xml version=\"1.0\"?>\n<svg><g a=\"&amp;\"/>&lt;<![CDATA[<&>]]></svg>"),
            "");
}

TEST(FlameSvg, PythonsXmlParserAcceptsIt) {
  const char *python = "/usr/bin/python3";
  if (::access(python, X_OK) != 0) GTEST_SKIP() << python << " is not installed";
  std::string svg =
      render_flame_graph(build_flame_tree(std::vector<CountedStack>{
                             {{"main", "operator<< <A&B>(\"q\", 'c')", "caf\xc3\xa9"}, 3},
                             {{"main",
                               "bad\xff\x01"
                               "bytes"},
                              2},
                             {{"main", std::string(500, 'z')}, 40},
                         }),
                         titled("<T&T> \"flames\"", "a ]]> b"));
  std::string command = std::string(python) +
                        " -c 'import sys, xml.etree.ElementTree as E; E.parse(sys.stdin.buffer)'";
  FILE *pipe = ::popen(command.c_str(), "w");
  ASSERT_NE(pipe, nullptr);
  EXPECT_EQ(std::fwrite(svg.data(), 1, svg.size(), pipe), svg.size());
  int status = ::pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "python3 could not parse:\n" << svg;
}

}  // namespace
}  // namespace usprobe::cli
