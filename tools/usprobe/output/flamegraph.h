// Counted stacks as folded lines and as an SVG flame graph.
//
// Folded stacks are the text that flame graph tools read and write, one stack per line,
// outermost frame first, frames joined by ';', then a space and the count:
//
//   main;parse_request;malloc 12
//
// A flame graph draws the same data as a tree: the root "all" at the bottom, each frame's callees
// stacked on top of it, every frame as wide as the share of samples that passed through it.
// Siblings are ordered by name, so the x axis means nothing but the width does.
//
// Usage:
//
//   std::vector<CountedStack> stacks = ...;             // names from Symbolizer, outermost first
//   for (const std::string &line : fold(stacks)) fmt::print("{}\n", line);
//   FlameGraphOptions options;
//   options.title = "usprobe stacks libc:malloc";
//   std::string svg = render_flame_graph(build_flame_tree(stacks), options);
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace usprobe::cli {

struct CountedStack {
  std::vector<std::string> frames;  // outermost first
  uint64_t count = 0;
};

// A frame name that fits in a folded line: ';' (the frame separator) becomes ':', line breaks
// and other control characters become ' '. Empty names become "[unknown]".
std::string folded_frame_name(std::string_view name);

// One folded line per distinct stack, sorted as strings. Stacks whose names are equal after
// folded_frame_name() are one stack: their counts are added. Stacks with no frames or a zero
// count are left out.
std::vector<std::string> fold(std::span<const CountedStack> stacks);

// Folded lines back into stacks (as flame graph tools read them): the count is after the last
// space, the frames before it split at ';'. Blank lines are skipped. Errors name the line that
// has no count.
Result<std::vector<CountedStack>> parse_folded(std::string_view text);

// A frame of the flame graph and the frames called from it.
struct FlameNode {
  std::string name;
  uint64_t total = 0;               // samples in this frame and everything it called
  std::vector<FlameNode> children;  // sorted by name; their totals add up to at most `total`

  uint64_t self() const;  // samples in this frame itself
};

// The tree of `stacks` under a root named "all" whose total is the sum of all counts. Frame
// names go through folded_frame_name(), so the tree and fold() agree.
FlameNode build_flame_tree(std::span<const CountedStack> stacks);

struct FlameGraphOptions {
  std::string title = "Flame Graph";
  std::string subtitle;   // a second line under the title, e.g. the command; empty for none
  int width = 1200;       // of the image, pixels
  int frame_height = 16;  // pixels per stack level
  // Frames narrower than this share of the image are not drawn, nor anything above them.
  double min_width_fraction = 0.001;
  bool zoom_script = true;  // a small inline script: click a frame to zoom into it
};

// One self-contained SVG document (XML, no external references) drawing `root`. Every name is
// XML-escaped; bytes that are not valid UTF-8 or are control characters become '?'. Colours come
// from a hash of each frame's name, in warm flame hues, so the same input gives the same file.
std::string render_flame_graph(const FlameNode &root, const FlameGraphOptions &options = {});

// `text` escaped for XML character data or an attribute value: & < > " ' as entities, control
// characters and invalid UTF-8 as '?'.
std::string xml_escape(std::string_view text);

}  // namespace usprobe::cli
