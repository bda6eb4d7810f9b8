#include "output/format.h"

#include <fmt/format.h>
#include <fmt/printf.h>

#include <algorithm>
#include <cctype>
#include <charconv>

#include "elf/location.h"

namespace usprobe::cli {
namespace {

constexpr std::string_view kBlanks = " \t\n\r\f\v";

std::string_view trim(std::string_view s) {
  size_t b = s.find_first_not_of(kBlanks);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kBlanks) - b + 1);
}

std::unexpected<Error> bad_format(std::string_view text, std::string_view why) {
  return fail(EINVAL, fmt::format("bad format in '{}': {}", text, why));
}

// As glibc's printf shows a null %s; any other unreadable pointer by its address.
std::string bad_string(uint64_t address) {
  if (address == 0) return "(null)";
  return fmt::format("<bad {:#x}>", address);
}

// Pads `text` with blanks to the conversion's width: on the left, or on the right with '-'.
void append_padded(fmt::memory_buffer &out, const Conversion &c, std::string_view text) {
  size_t pad = c.width > text.size() ? c.width - text.size() : 0;
  constexpr std::string_view kBlanks64 =
      "                                                                ";
  auto blanks = [&] {
    for (size_t left = pad; left > 0;) {
      size_t n = std::min(left, kBlanks64.size());
      out.append(kBlanks64.substr(0, n));
      left -= n;
    }
  };
  if (!c.left) blanks();
  out.append(text);
  if (c.left) blanks();
}

// A %s: the copied string, cut by the precision as in C, then kCutMarker when the agent's copy
// stopped before the string's end; an unreadable one as its placeholder, whole. Then the width.
void append_string(fmt::memory_buffer &out, const Conversion &c, const TraceEvent &e) {
  uint32_t bit = 1u << c.arg;
  if (e.bad_strings & bit) {
    append_padded(out, c, bad_string(e.args[c.arg]));
    return;
  }
  std::string_view s = e.strings[c.arg];
  bool cut = (e.cut_strings & bit) != 0;
  if (c.precision >= 0 && static_cast<size_t>(c.precision) < s.size()) {
    s = s.substr(0, static_cast<size_t>(c.precision));
    cut = false;  // the user asked for fewer bytes than were copied
  }
  if (!cut) {
    append_padded(out, c, s);
    return;
  }
  std::string marked;
  marked.reserve(s.size() + kCutMarker.size());
  marked.append(s).append(kCutMarker);
  append_padded(out, c, marked);
}

// One conversion. Strings are padded here; the others are rendered through fmt's printf so that
// flags, width and precision mean what they mean in C. Values are cut to the conversion's size
// first: %d of 0xffffffff is -1.
void append_one(fmt::memory_buffer &out, const Conversion &c, const TraceEvent &e) {
  uint64_t v = e.args[c.arg];
  if (c.plain) {
    // No flag, width or precision: what printf prints, without parsing the spec per event.
    switch (c.type) {
      case 'd':
      case 'i': {
        fmt::format_int text(c.wide ? static_cast<int64_t>(v) : int64_t{static_cast<int32_t>(v)});
        out.append(text.data(), text.data() + text.size());
        return;
      }
      case 'u': {
        fmt::format_int text(c.wide ? v : uint64_t{static_cast<uint32_t>(v)});
        out.append(text.data(), text.data() + text.size());
        return;
      }
      case 'x':
      case 'X': {
        if (!c.wide) v = static_cast<uint32_t>(v);
        const char *digits = c.type == 'x' ? "0123456789abcdef" : "0123456789ABCDEF";
        char text[16];
        char *p = text + sizeof text;
        do {
          *--p = digits[v & 15];
          v >>= 4;
        } while (v != 0);
        out.append(p, text + sizeof text);
        return;
      }
    }
  }
  std::string text;
  switch (c.type) {
    case 'd':
    case 'i':
      text = c.wide ? fmt::sprintf(c.spec, static_cast<int64_t>(v))
                    : fmt::sprintf(c.spec, static_cast<int32_t>(v));
      break;
    case 'u':
    case 'x':
    case 'X':
      text = c.wide ? fmt::sprintf(c.spec, v) : fmt::sprintf(c.spec, static_cast<uint32_t>(v));
      break;
    case 'p':
      text = fmt::sprintf(c.spec, reinterpret_cast<const void *>(static_cast<uintptr_t>(v)));
      break;
    case 'c':
      text = fmt::sprintf(c.spec, static_cast<char>(v));
      break;
    case 's':
      append_string(out, c, e);
      return;
  }
  out.append(std::string_view(text));
}

// The width or precision at f[i] (i is advanced past its digits; none: 0), refused beyond
// kMaxFieldWidth. `start` is where the conversion starts, for the message.
Result<unsigned> parse_field(std::string_view text, std::string_view f, size_t &i, size_t start,
                             std::string_view what) {
  size_t begin = i;
  while (i < f.size() && std::isdigit(static_cast<unsigned char>(f[i]))) ++i;
  std::string_view digits = f.substr(begin, i - begin);
  uint64_t value = 0;
  for (char d : digits) {
    value = value * 10 + static_cast<unsigned>(d - '0');
    if (value > kMaxFieldWidth) {
      // Name the whole conversion: up to its type letter.
      size_t end = f.find_first_of("diuxXpcs", i);
      end = end == std::string_view::npos ? f.size() : end + 1;
      return bad_format(text, fmt::format("{} {} in '{}' is over the limit of {}", what, digits,
                                          f.substr(start, end - start), kMaxFieldWidth));
    }
  }
  return static_cast<unsigned>(value);
}

// Parses the conversion starting at fmt[i] == '%'; advances i past it.
Result<Conversion> parse_conversion(std::string_view text, std::string_view f, size_t &i) {
  size_t start = i++;
  auto at = [&](size_t k) { return k < f.size() ? f[k] : '\0'; };
  Conversion c;
  while (std::string_view("-+ #0").find(at(i)) != std::string_view::npos) {
    if (at(i) == '-') c.left = true;
    ++i;
  }
  auto width = parse_field(text, f, i, start, "width");
  if (!width) return std::unexpected(width.error());
  c.width = *width;
  if (at(i) == '.') {
    ++i;
    auto precision = parse_field(text, f, i, start, "precision");
    if (!precision) return std::unexpected(precision.error());
    c.precision = static_cast<int>(*precision);  // "%.s": 0, as in C
  }
  if (at(i) == 'l') {
    c.wide = true;
    if (at(++i) == 'l') ++i;
  }
  char type = at(i);
  if (type == '\0')
    return bad_format(text, fmt::format("incomplete conversion '{}'", f.substr(start)));
  ++i;
  if (std::string_view("diuxXpcs").find(type) == std::string_view::npos ||
      (c.wide && (type == 'p' || type == 'c' || type == 's')))
    return bad_format(text, fmt::format("unknown conversion '{}'", f.substr(start, i - start)));
  c.type = type;
  c.spec = std::string(f.substr(start, i - start));
  // "%d", "%lx", ...: nothing between '%' and the length and type letters.
  c.plain = c.spec.find_first_of("-+ #0123456789.") == std::string::npos;
  return c;
}

// The quoted format at the start of `s` (double or single quotes, C escapes); `s` is left after
// the closing quote.
Result<std::string> parse_quoted(std::string_view text, std::string_view &s) {
  char quote = s.front();
  std::string out;
  for (size_t i = 1; i < s.size(); ++i) {
    char ch = s[i];
    if (ch == quote) {
      s.remove_prefix(i + 1);
      return out;
    }
    if (ch == '\\' && i + 1 < s.size()) {
      char next = s[++i];
      switch (next) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case '\\':
        case '"':
        case '\'':
          out += next;
          break;
        default:
          out += '\\';
          out += next;
      }
      continue;
    }
    out += ch;
  }
  return bad_format(text, fmt::format("no closing {} quote", quote));
}

}  // namespace

uint32_t Format::string_mask() const {
  uint32_t mask = 0;
  for (const Conversion &c : conversions)
    if (c.type == 's') mask |= 1u << c.arg;
  return mask;
}

Result<TraceSpec> parse_trace_spec(std::string_view text) {
  TraceSpec spec;
  spec.text = std::string(text);
  std::string_view s = trim(text);
  // A demangled C++ name may hold blanks ("exe:ns::f(int, char) "%d", arg0"): with a quoted
  // format, the probe is all that comes before it.
  size_t quote = s.find_first_of("\"'");
  size_t blank = quote == std::string_view::npos ? s.find_first_of(kBlanks)
                                                 : s.substr(0, quote).find_last_not_of(kBlanks) + 1;
  if (blank == 0) blank = s.find_first_of(kBlanks);  // nothing before the quote: as before
  spec.probe = std::string(s.substr(0, blank));
  if (blank == std::string_view::npos) return spec;
  s = trim(s.substr(blank));
  if (s.front() != '"' && s.front() != '\'')
    return bad_format(text, "expected a quoted format after the probe");
  auto quoted = parse_quoted(text, s);
  if (!quoted) return std::unexpected(quoted.error());

  std::vector<unsigned> args;
  s = trim(s);
  if (!s.empty()) {
    if (s.front() != ',') return bad_format(text, "expected ',' and arguments after the format");
    s.remove_prefix(1);
    while (true) {
      size_t comma = s.find(',');
      std::string_view arg = trim(s.substr(0, comma));
      // At a return, arg0..arg5 are the arguments the call was made with (kept at its entry)
      // and retval is what it returned; at an entry there is no return value yet. A USDT note
      // has up to 12 arguments.
      const bool returning = elf::split_probe_type(spec.probe).returns;
      const unsigned count =
          spec.probe.starts_with("usdt:") ? agent::kMaxUsdtArgs : agent::kMaxArgs;
      unsigned n = 0;
      if (arg == "retval") {
        if (!returning)
          return bad_format(text, "'retval' is known at a return only (a uretprobe: probe)");
        args.push_back(agent::kRetvalArg);
      } else if (!arg.starts_with("arg") || arg.size() < 4 || arg.size() > 5 ||
                 (arg.size() == 5 && arg[3] == '0') ||
                 std::from_chars(arg.data() + 3, arg.data() + arg.size(), n).ptr !=
                     arg.data() + arg.size() ||
                 n >= count) {
        return bad_format(text, fmt::format("'{}' is not an argument (arg0 to arg{}{})", arg,
                                            count - 1, returning ? ", or retval" : ""));
      } else {
        args.push_back(n);
      }
      if (comma == std::string_view::npos) break;
      s.remove_prefix(comma + 1);
    }
  }

  Format f;
  const std::string &q = *quoted;
  std::string literal;
  for (size_t i = 0; i < q.size();) {
    if (q[i] != '%') {
      literal += q[i++];
      continue;
    }
    if (i + 1 < q.size() && q[i + 1] == '%') {
      literal += '%';
      i += 2;
      continue;
    }
    auto c = parse_conversion(text, q, i);
    if (!c) return std::unexpected(c.error());
    if (!literal.empty()) f.pieces.push_back({std::exchange(literal, {}), -1});
    f.pieces.push_back({{}, static_cast<int>(f.conversions.size())});
    f.conversions.push_back(std::move(*c));
  }
  if (!literal.empty()) f.pieces.push_back({std::move(literal), -1});
  if (f.conversions.size() != args.size())
    return bad_format(text, fmt::format("{} conversion{} but {} argument{}", f.conversions.size(),
                                        f.conversions.size() == 1 ? "" : "s", args.size(),
                                        args.size() == 1 ? "" : "s"));
  for (size_t k = 0; k < args.size(); ++k) f.conversions[k].arg = args[k];
  // fmt's printf refuses a few flag and type pairs that C accepts; find out now, not per event.
  TraceEvent probe_event;
  fmt::memory_buffer scratch;
  for (const Conversion &c : f.conversions) {
    try {
      append_one(scratch, c, probe_event);
    } catch (const fmt::format_error &e) {
      return bad_format(text, fmt::format("'{}': {}", c.spec, e.what()));
    }
  }
  spec.format = std::move(f);
  return spec;
}

void append_message(fmt::memory_buffer &out, const std::optional<Format> &format,
                    const TraceEvent &event) {
  if (!format) return;
  for (const Format::Piece &p : format->pieces) {
    if (p.conversion < 0) {
      out.append(std::string_view(p.text));
      continue;
    }
    try {
      append_one(out, format->conversions[static_cast<size_t>(p.conversion)], event);
    } catch (const fmt::format_error &) {
      out.append(std::string_view("<?>"));  // checked at parse time; never worth losing the trace
    }
  }
}

std::string render_message(const std::optional<Format> &format, const TraceEvent &event) {
  fmt::memory_buffer out;
  append_message(out, format, event);
  return fmt::to_string(out);
}

nlohmann::ordered_json render_args(const std::optional<Format> &format, const TraceEvent &event) {
  nlohmann::ordered_json args = nlohmann::ordered_json::array();
  if (!format) return args;
  for (const Conversion &c : format->conversions) {
    uint64_t v = event.args[c.arg];
    switch (c.type) {
      case 'd':
      case 'i':
        if (c.wide)
          args.push_back(static_cast<int64_t>(v));
        else
          args.push_back(static_cast<int32_t>(v));
        break;
      case 'u':
      case 'x':
      case 'X':
        if (c.wide)
          args.push_back(v);
        else
          args.push_back(static_cast<uint32_t>(v));
        break;
      case 'p':
        args.push_back(v);
        break;
      case 'c':
        args.push_back(std::string(1, static_cast<char>(v)));
        break;
      case 's':
        if (event.bad_strings & (1u << c.arg))
          args.push_back(nullptr);  // why: render_errors
        else if (event.cut_strings & (1u << c.arg))
          args.push_back(std::string(event.strings[c.arg]) + std::string(kCutMarker));
        else
          args.push_back(std::string(event.strings[c.arg]));
        break;
    }
  }
  return args;
}

std::string value_name(unsigned arg) {
  return arg == agent::kRetvalArg ? "retval" : fmt::format("arg{}", arg);
}

nlohmann::ordered_json render_errors(const std::optional<Format> &format, const TraceEvent &event) {
  nlohmann::ordered_json errors = nlohmann::ordered_json::object();
  if (!format) return errors;
  for (const Conversion &c : format->conversions) {
    if (c.type != 's' || !(event.bad_strings & (1u << c.arg))) continue;
    uint64_t v = event.args[c.arg];
    errors[value_name(c.arg)] =
        v == 0 ? std::string("null pointer") : fmt::format("bad address {:#x}", v);
  }
  return errors;
}

}  // namespace usprobe::cli
