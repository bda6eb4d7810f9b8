#include "format.h"

#include <fmt/format.h>
#include <fmt/printf.h>

#include <cctype>

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

// One conversion, rendered through fmt's printf so that flags, width and precision mean what
// they mean in C. Values are cut to the conversion's size first: %d of 0xffffffff is -1.
std::string render_one(const Conversion &c, const TraceEvent &e) {
  uint64_t v = e.args[c.arg];
  switch (c.type) {
    case 'd':
    case 'i':
      return c.wide ? fmt::sprintf(c.spec, static_cast<int64_t>(v))
                    : fmt::sprintf(c.spec, static_cast<int32_t>(v));
    case 'u':
    case 'x':
    case 'X':
      return c.wide ? fmt::sprintf(c.spec, v) : fmt::sprintf(c.spec, static_cast<uint32_t>(v));
    case 'p':
      return fmt::sprintf(c.spec, reinterpret_cast<const void *>(static_cast<uintptr_t>(v)));
    case 'c':
      return fmt::sprintf(c.spec, static_cast<char>(v));
    case 's':
      if (e.bad_strings & (1u << c.arg)) return bad_string(v);
      return fmt::sprintf(c.spec, e.strings[c.arg]);
  }
  return {};
}

// Parses the conversion starting at fmt[i] == '%'; advances i past it.
Result<Conversion> parse_conversion(std::string_view text, std::string_view f, size_t &i) {
  size_t start = i++;
  auto at = [&](size_t k) { return k < f.size() ? f[k] : '\0'; };
  while (std::string_view("-+ #0").find(at(i)) != std::string_view::npos) ++i;
  while (std::isdigit(static_cast<unsigned char>(at(i)))) ++i;
  if (at(i) == '.') {
    ++i;
    while (std::isdigit(static_cast<unsigned char>(at(i)))) ++i;
  }
  Conversion c;
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
      const bool returning = spec.probe.starts_with("uretprobe:");
      if (returning) {
        // At a return the agent records the return value (%rax) where arg0 would be.
        if (arg != "retval")
          return bad_format(text, fmt::format("'{}' is not known at a return (retval is)", arg));
        args.push_back(0);
      } else {
        if (arg.size() != 4 || !arg.starts_with("arg") || arg[3] < '0' || arg[3] > '5')
          return bad_format(text, fmt::format("'{}' is not an argument (arg0 to arg5)", arg));
        args.push_back(static_cast<unsigned>(arg[3] - '0'));
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
  for (const Conversion &c : f.conversions) {
    try {
      (void)render_one(c, probe_event);
    } catch (const fmt::format_error &e) {
      return bad_format(text, fmt::format("'{}': {}", c.spec, e.what()));
    }
  }
  spec.format = std::move(f);
  return spec;
}

std::string render_message(const std::optional<Format> &format, const TraceEvent &event) {
  if (!format) return {};
  std::string out;
  for (const Format::Piece &p : format->pieces) {
    if (p.conversion < 0) {
      out += p.text;
      continue;
    }
    try {
      out += render_one(format->conversions[static_cast<size_t>(p.conversion)], event);
    } catch (const fmt::format_error &) {
      out += "<?>";  // checked at parse time; never worth losing the whole trace over
    }
  }
  return out;
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
        args.push_back((event.bad_strings & (1u << c.arg)) ? bad_string(v) : event.strings[c.arg]);
        break;
    }
  }
  return args;
}

}  // namespace usprobe::cli
