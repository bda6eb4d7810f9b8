#include "output/flamegraph.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>

namespace usprobe::cli {

std::string folded_frame_name(std::string_view name) {
  if (name.empty()) return "[unknown]";
  std::string out(name);
  for (char &c : out) {
    if (c == ';')
      c = ':';
    else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      c = ' ';
  }
  return out;
}

namespace {

// The folded form of a stack's frames, "a;b;c", without the count.
std::string join_frames(const std::vector<std::string> &frames) {
  std::string out;
  for (const std::string &f : frames) {
    if (!out.empty()) out += ';';
    out += folded_frame_name(f);
  }
  return out;
}

}  // namespace

std::vector<std::string> fold(std::span<const CountedStack> stacks) {
  std::map<std::string, uint64_t> counts;  // sorted, and merges stacks that fold alike
  for (const CountedStack &s : stacks)
    if (!s.frames.empty() && s.count > 0) counts[join_frames(s.frames)] += s.count;
  std::vector<std::string> lines;
  lines.reserve(counts.size());
  for (const auto &[stack, count] : counts) lines.push_back(fmt::format("{} {}", stack, count));
  return lines;
}

Result<std::vector<CountedStack>> parse_folded(std::string_view text) {
  std::vector<CountedStack> out;
  size_t line_no = 0;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    ++line_no;
    if (line.ends_with('\r')) line.remove_suffix(1);
    if (line.find_first_not_of(' ') == std::string_view::npos) continue;
    size_t space = line.rfind(' ');
    CountedStack s;
    std::string_view count = space == std::string_view::npos ? "" : line.substr(space + 1);
    auto [end, ec] = std::from_chars(count.data(), count.data() + count.size(), s.count);
    if (count.empty() || ec != std::errc() || end != count.data() + count.size() || space == 0)
      return fail(EINVAL, fmt::format("folded stacks, line {}: expected `frame;frame;... COUNT`, "
                                      "got `{}`",
                                      line_no, line));
    std::string_view stack = line.substr(0, space);
    for (size_t start = 0;;) {
      size_t semi = stack.find(';', start);
      s.frames.emplace_back(stack.substr(start, semi - start));
      if (semi == std::string_view::npos) break;
      start = semi + 1;
    }
    out.push_back(std::move(s));
  }
  return out;
}

uint64_t FlameNode::self() const {
  uint64_t below = 0;
  for (const FlameNode &c : children) below += c.total;
  return total > below ? total - below : 0;
}

FlameNode build_flame_tree(std::span<const CountedStack> stacks) {
  FlameNode root;
  root.name = "all";
  for (const CountedStack &s : stacks) {
    if (s.frames.empty() || s.count == 0) continue;
    root.total += s.count;
    FlameNode *node = &root;
    for (const std::string &frame : s.frames) {
      std::string name = folded_frame_name(frame);
      auto &kids = node->children;
      auto it =
          std::lower_bound(kids.begin(), kids.end(), name,
                           [](const FlameNode &n, const std::string &v) { return n.name < v; });
      if (it == kids.end() || it->name != name) {
        FlameNode child;
        child.name = std::move(name);
        it = kids.insert(it, std::move(child));
      }
      it->total += s.count;
      node = &*it;
    }
  }
  return root;
}

namespace {

// The length of the UTF-8 sequence starting at `s[i]` when it is one valid code point that XML
// allows in text, else 0. Control characters other than tab, and U+FFFE/U+FFFF, are not allowed
// in XML 1.0 even as character references; they are replaced, as bad UTF-8 is.
size_t xml_code_point_length(std::string_view s, size_t i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char b0 = byte(i);
  if (b0 < 0x80) return (b0 >= 0x20 && b0 != 0x7f) || b0 == '\t' ? 1 : 0;
  size_t len = b0 >= 0xc2 && b0 <= 0xdf   ? 2
               : b0 >= 0xe0 && b0 <= 0xef ? 3
               : b0 >= 0xf0 && b0 <= 0xf4 ? 4
                                          : 0;
  if (len == 0 || i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k)
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
  unsigned char b1 = byte(i + 1);
  if (b0 == 0xe0 && b1 < 0xa0) return 0;  // overlong
  if (b0 == 0xed && b1 > 0x9f) return 0;  // a UTF-16 surrogate
  if (b0 == 0xf0 && b1 < 0x90) return 0;  // overlong
  if (b0 == 0xf4 && b1 > 0x8f) return 0;  // above U+10FFFF
  if (b0 == 0xef && b1 == 0xbf && (byte(i + 2) == 0xbe || byte(i + 2) == 0xbf)) return 0;
  if (b0 == 0xc2 && b1 < 0xa0) return 0;  // C1 control characters
  return len;
}

// `text` as XML-safe code points, unescaped: every byte that is not part of an allowed code point
// becomes '?'. Each element is one code point, so a name can be cut without splitting one.
std::vector<std::string_view> code_points(std::string_view text) {
  std::vector<std::string_view> out;
  for (size_t i = 0; i < text.size();) {
    size_t len = xml_code_point_length(text, i);
    out.push_back(len ? text.substr(i, len) : std::string_view("?"));
    i += len ? len : 1;
  }
  return out;
}

void append_escaped(std::string &out, std::string_view code_point) {
  if (code_point.size() != 1) {
    out += code_point;
    return;
  }
  switch (code_point[0]) {
    case '&':
      out += "&amp;";
      break;
    case '<':
      out += "&lt;";
      break;
    case '>':
      out += "&gt;";
      break;
    case '"':
      out += "&quot;";
      break;
    case '\'':
      out += "&apos;";
      break;
    default:
      out += code_point[0];
  }
}

}  // namespace

std::string xml_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::string_view cp : code_points(text)) append_escaped(out, cp);
  return out;
}

namespace {

// Layout, in pixels. Text is 12px Verdana, whose characters average about 7px wide: a frame
// shows as many as fit and ends in ".." when the name is longer. The script repeats both rules.
constexpr double kSidePad = 10;
constexpr double kCharWidth = 7;
constexpr double kTextInset = 3;
constexpr int kFontSize = 12;

// The label of a frame `width` pixels wide: the name, cut to fit and ending in "..", or nothing
// when not even three characters fit.
std::string frame_label(std::string_view name, double width) {
  double fits = std::floor((width - 2 * kTextInset) / kCharWidth);
  if (fits < 3) return "";
  std::vector<std::string_view> cps = code_points(name);
  auto max_chars = static_cast<size_t>(fits);
  bool cut = cps.size() > max_chars;
  if (cut) cps.resize(max_chars - 2);
  std::string out;
  for (std::string_view cp : cps) append_escaped(out, cp);
  if (cut) out += "..";
  return out;
}

// A warm flame colour picked by a hash of the name (FNV-1a), the same for the same name every
// time: red high, green anywhere from dark orange to yellow, little blue.
std::string frame_colour(std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  auto part = [&](int shift) { return static_cast<double>((h >> shift) & 0xffff) / 65535.0; };
  int r = 205 + static_cast<int>(50 * part(0));
  int g = 50 + static_cast<int>(170 * part(16));
  int b = static_cast<int>(45 * part(32));
  return fmt::format("rgb({},{},{})", r, g, b);
}

struct Box {
  const FlameNode *node;
  double x, width;
  int depth;  // 0: the root
};

// Every frame wide enough to draw, parents before children. A frame too narrow is dropped with
// everything above it, as those are narrower still.
void lay_out(const FlameNode &node, double x, double width, int depth, double scale,
             double min_width, std::vector<Box> &out) {
  out.push_back({&node, x, width, depth});
  double child_x = x;
  for (const FlameNode &child : node.children) {
    double w = static_cast<double>(child.total) * scale;
    if (w >= min_width) lay_out(child, child_x, w, depth + 1, scale, min_width, out);
    child_x += w;
  }
}

// Click a frame: it fills the width, what it called is widened with it, its callers stay
// (dimmed) below it, and everything else is hidden. "Reset Zoom" undoes it. Hovering a frame
// shows its title at the bottom.
constexpr std::string_view kZoomScript = R"(
var W = __WIDTH__, PAD = __PAD__, CW = __CW__, INSET = __INSET__, EPS = 0.02;
function fit(name, w) {
  var n = Math.floor((w - 2 * INSET) / CW);
  if (n < 3) return "";
  var cps = Array.from(name);
  return cps.length <= n ? name : cps.slice(0, n - 2).join("") + "..";
}
function nameOf(g) {
  var t = g.querySelector("title").textContent;
  return t.substring(0, t.lastIndexOf(" ("));
}
function place(g, x, w) {
  var r = g.querySelector("rect"), t = g.querySelector("text");
  r.setAttribute("x", x.toFixed(2));
  r.setAttribute("width", w.toFixed(2));
  t.setAttribute("x", (x + INSET).toFixed(2));
  t.textContent = fit(nameOf(g), w);
}
function frames() {
  var all = document.querySelectorAll("g.f");
  all.forEach(function (g) {
    if (g.ox === undefined) {
      var r = g.querySelector("rect");
      g.ox = +r.getAttribute("x");
      g.ow = +r.getAttribute("width");
      g.oy = +r.getAttribute("y");
    }
  });
  return all;
}
function zoom(z) {
  var all = frames(), s = (W - 2 * PAD) / z.ow;
  all.forEach(function (g) {
    var inside = g.ox >= z.ox - EPS && g.ox + g.ow <= z.ox + z.ow + EPS;
    var around = g.ox <= z.ox + EPS && g.ox + g.ow >= z.ox + z.ow - EPS;
    if (g.oy <= z.oy && inside) {
      g.style.display = ""; g.style.opacity = "";
      place(g, PAD + (g.ox - z.ox) * s, g.ow * s);
    } else if (g.oy > z.oy && around) {
      g.style.display = ""; g.style.opacity = "0.6";
      place(g, PAD, W - 2 * PAD);
    } else {
      g.style.display = "none";
    }
  });
  document.getElementById("unzoom").style.display = "";
}
function unzoom() {
  frames().forEach(function (g) {
    g.style.display = ""; g.style.opacity = "";
    place(g, g.ox, g.ow);
  });
  document.getElementById("unzoom").style.display = "none";
}
window.addEventListener("load", function () {
  var box = document.getElementById("frames"), details = document.getElementById("details");
  box.addEventListener("click", function (e) {
    var g = e.target.closest("g.f");
    if (g) { frames(); zoom(g); }
  });
  box.addEventListener("mouseover", function (e) {
    var g = e.target.closest("g.f");
    details.textContent = g ? g.querySelector("title").textContent : " ";
  });
  document.getElementById("unzoom").addEventListener("click", unzoom);
});
)";

std::string zoom_script(int width) {
  std::string s(kZoomScript);
  auto put = [&](std::string_view key, const std::string &value) {
    s.replace(s.find(key), key.size(), value);
  };
  put("__WIDTH__", std::to_string(width));
  put("__PAD__", fmt::format("{}", kSidePad));
  put("__CW__", fmt::format("{}", kCharWidth));
  put("__INSET__", fmt::format("{}", kTextInset));
  return s;
}

}  // namespace

std::string render_flame_graph(const FlameNode &root, const FlameGraphOptions &options) {
  const int width = std::max(options.width, 100);
  const int fh = std::max(options.frame_height, 4);
  const double usable = width - 2 * kSidePad;
  std::vector<Box> boxes;
  if (root.total > 0)
    lay_out(root, kSidePad, usable, 0, usable / static_cast<double>(root.total),
            options.min_width_fraction * width, boxes);
  int levels = 0;
  for (const Box &b : boxes) levels = std::max(levels, b.depth + 1);

  // Header lines: title, subtitle, total; then the frames; then a line for hover details.
  std::vector<std::pair<std::string, int>> header;  // text (escaped), font size
  header.emplace_back(xml_escape(options.title), 17);
  if (!options.subtitle.empty()) header.emplace_back(xml_escape(options.subtitle), kFontSize);
  header.emplace_back(fmt::format("{} sample{}", root.total, root.total == 1 ? "" : "s"),
                      kFontSize);
  const int top = 24 + 20 * static_cast<int>(header.size());
  const int bottom = 2 * kFontSize + 6;
  const int height = top + levels * fh + bottom;

  std::string out;
  out += "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n";
  out += fmt::format(
      "<svg version=\"1.1\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\">\n",
      width, height);
  out += fmt::format(
      "<style>text {{ font-family: Verdana, sans-serif; font-size: {}px; fill: #000; }} "
      ".f:hover rect {{ stroke: #000; stroke-width: 0.5; cursor: pointer; }} "
      ".h {{ text-anchor: middle; }} #unzoom {{ cursor: pointer; }}</style>\n",
      kFontSize);
  if (options.zoom_script)
    out += fmt::format("<script type=\"text/ecmascript\"><![CDATA[{}]]></script>\n",
                       zoom_script(width));
  out += fmt::format("<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"#fdf6e8\"/>\n", width,
                     height);
  for (size_t i = 0; i < header.size(); ++i)
    out += fmt::format("<text class=\"h\" x=\"{}\" y=\"{}\" style=\"font-size: {}px\">{}</text>\n",
                       width / 2, 24 + 20 * static_cast<int>(i), header[i].second, header[i].first);
  out += fmt::format(
      "<text id=\"unzoom\" x=\"{}\" y=\"24\" style=\"display: none\">Reset Zoom</text>\n",
      kSidePad);
  out += fmt::format("<text id=\"details\" x=\"{}\" y=\"{}\"> </text>\n", kSidePad, height - 10);

  out += "<g id=\"frames\">\n";
  for (const Box &b : boxes) {
    const FlameNode &n = *b.node;
    double y = height - bottom - (b.depth + 1) * fh;
    double percent = 100.0 * static_cast<double>(n.total) / static_cast<double>(root.total);
    out += fmt::format(
        "<g class=\"f\"><title>{} ({} sample{}, {:.2f}%)</title>"
        "<rect x=\"{:.2f}\" y=\"{}\" width=\"{:.2f}\" height=\"{}\" fill=\"{}\" rx=\"2\"/>"
        "<text x=\"{:.2f}\" y=\"{:.1f}\">{}</text></g>\n",
        xml_escape(n.name), n.total, n.total == 1 ? "" : "s", percent, b.x, y, b.width, fh - 1,
        frame_colour(n.name), b.x + kTextInset, y + fh - 4.5, frame_label(n.name, b.width));
  }
  out += "</g>\n</svg>\n";
  return out;
}

}  // namespace usprobe::cli
