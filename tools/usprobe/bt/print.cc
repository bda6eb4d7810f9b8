#include "bt/print.h"

#include <algorithm>
#include <iterator>
#include <numeric>
#include <optional>

namespace usprobe::bt {

namespace {

using Buffer = fmt::memory_buffer;

void put(Buffer &out, std::string_view text) {
  out.append(text.data(), text.data() + text.size());
}

template <typename... T>
void put_format(Buffer &out, fmt::format_string<T...> format, T &&...args) {
  fmt::format_to(std::back_inserter(out), format, std::forward<T>(args)...);
}

// A stack as bpftrace prints it: a newline, then one indented frame a line. Keys indent by 4,
// values (and printf's %s) by 8.
std::string stack_text(const Stack &stack, size_t indent) {
  std::string out = "\n";
  for (const std::string &frame : stack.frames) {
    out.append(indent, ' ');
    out += frame;
    out += '\n';
  }
  return out;
}

std::string int_text(const Int &i) {
  return i.is_signed ? fmt::format("{}", static_cast<int64_t>(i.bits)) : fmt::format("{}", i.bits);
}

// A part of a key. bpftrace reads every 64-bit integer of a key as signed, whatever its type.
std::string key_part_text(const Scalar &part) {
  if (const Int *i = std::get_if<Int>(&part))
    return fmt::format("{}", static_cast<int64_t>(i->bits));
  if (const Str *s = std::get_if<Str>(&part)) return s->text;
  if (const Sym *s = std::get_if<Sym>(&part)) return s->text;
  return stack_text(std::get<Stack>(part), 4);
}

std::string scalar_text(const Scalar &value) {
  if (const Int *i = std::get_if<Int>(&value)) return int_text(*i);
  if (const Str *s = std::get_if<Str>(&value)) return s->text;
  if (const Sym *s = std::get_if<Sym>(&value)) return s->text;
  return stack_text(std::get<Stack>(value), 8);
}

std::string join_key(const std::vector<Scalar> &key, std::string_view separator) {
  std::string out;
  for (size_t i = 0; i < key.size(); ++i) {
    if (i != 0) out += separator;
    out += key_part_text(key[i]);
  }
  return out;
}

// "@name" or "@name[1, a]".
std::string name_and_key(const Map &map, const MapEntry &entry) {
  if (entry.key.empty()) return map.name;
  return map.name + "[" + join_key(entry.key, ", ") + "]";
}

int64_t average(const Stats &s) {
  return s.count == 0 ? 0 : s.total / static_cast<int64_t>(s.count);
}

uint64_t bucket_total(const MapEntry &e) {
  const std::vector<uint64_t> &b = std::holds_alternative<Hist>(e.value)
                                       ? std::get<Hist>(e.value).buckets
                                       : std::get<Lhist>(e.value).buckets;
  return std::accumulate(b.begin(), b.end(), uint64_t{0});
}

// The sort key of an entry's value, as bpftrace compares them (see print.h). A signed number is
// moved to unsigned order by flipping its sign bit, so one comparison serves both.
std::optional<uint64_t> value_order(const Map &map, const MapEntry &e) {
  constexpr uint64_t kSignBit = uint64_t{1} << 63;
  auto as_order = [](uint64_t bits, bool is_signed) { return is_signed ? bits ^ kSignBit : bits; };
  switch (map.kind) {
    case ValueKind::kScalar:
      if (const Int *i = std::get_if<Int>(&std::get<Scalar>(e.value)))
        return as_order(i->bits, i->is_signed);
      return std::nullopt;
    case ValueKind::kCount:
      return static_cast<uint64_t>(std::get<int64_t>(e.value));
    case ValueKind::kSum:
    case ValueKind::kMin:
    case ValueKind::kMax:
      return as_order(static_cast<uint64_t>(std::get<int64_t>(e.value)), map.is_signed);
    case ValueKind::kAvg:
    case ValueKind::kStats:
      return as_order(static_cast<uint64_t>(average(std::get<Stats>(e.value))), true);
    case ValueKind::kHist:
    case ValueKind::kLhist:
      return bucket_total(e);
  }
  return std::nullopt;
}

// The entries in bpftrace's order, less those that print(@m, top) leaves out.
std::vector<const MapEntry *> ordered(const Map &map, uint64_t top) {
  std::vector<const MapEntry *> rows;
  for (const MapEntry &e : map.entries) rows.push_back(&e);
  if (rows.empty()) return rows;

  // By key, last part first, so that the first part decides. Only integer and string parts sort;
  // a part of another type (usym, stack) keeps the order it has.
  size_t parts = rows.front()->key.size();
  for (size_t p = parts; p-- > 0;) {
    auto all = [&](auto type_tag) {
      using T = decltype(type_tag);
      return std::all_of(rows.begin(), rows.end(), [&](const MapEntry *e) {
        return p < e->key.size() && std::holds_alternative<T>(e->key[p]);
      });
    };
    if (all(Int{}))
      std::stable_sort(rows.begin(), rows.end(), [p](const MapEntry *a, const MapEntry *b) {
        return std::get<Int>(a->key[p]).bits < std::get<Int>(b->key[p]).bits;
      });
    else if (all(Str{}))
      std::stable_sort(rows.begin(), rows.end(), [p](const MapEntry *a, const MapEntry *b) {
        return std::get<Str>(a->key[p]).text < std::get<Str>(b->key[p]).text;
      });
  }

  // Then by value, where the value has an order; ties stay in key order.
  if (value_order(map, *rows.front()))
    std::stable_sort(rows.begin(), rows.end(), [&map](const MapEntry *a, const MapEntry *b) {
      return value_order(map, *a).value_or(0) < value_order(map, *b).value_or(0);
    });

  if (top != 0 && map.kind != ValueKind::kStats && rows.size() > top)
    rows.erase(rows.begin(), rows.end() - static_cast<ptrdiff_t>(top));
  return rows;
}

// A number of a count/sum/min/max/avg map, or a plain value, divided by print()'s div. A signed
// value divides as signed (toward zero), as bpftrace's int64 / uint32 does.
std::string value_text(const Map &map, const MapEntry &e, uint64_t div) {
  auto divided = [div](uint64_t bits, bool is_signed) {
    return is_signed ? fmt::format("{}", static_cast<int64_t>(bits) / static_cast<int64_t>(div))
                     : fmt::format("{}", bits / div);
  };
  switch (map.kind) {
    case ValueKind::kScalar: {
      const Scalar &s = std::get<Scalar>(e.value);
      if (const Int *i = std::get_if<Int>(&s)) return divided(i->bits, i->is_signed);
      return scalar_text(s);
    }
    case ValueKind::kCount:
      return divided(static_cast<uint64_t>(std::get<int64_t>(e.value)), false);
    case ValueKind::kSum:
    case ValueKind::kMin:
    case ValueKind::kMax:
      return divided(static_cast<uint64_t>(std::get<int64_t>(e.value)), map.is_signed);
    case ValueKind::kAvg:
      return divided(static_cast<uint64_t>(average(std::get<Stats>(e.value))), true);
    case ValueKind::kStats: {
      const Stats &s = std::get<Stats>(e.value);
      return fmt::format("count {}, average {}, total {}", static_cast<int64_t>(s.count),
                         average(s), s.total);
    }
    case ValueKind::kHist:
    case ValueKind::kLhist:
      break;
  }
  return {};
}

// The buckets a histogram prints: from the first non-empty one to the last (none: an empty range).
std::pair<size_t, size_t> printed_range(const std::vector<uint64_t> &buckets) {
  size_t first = buckets.size(), last = 0;
  for (size_t i = 0; i < buckets.size(); ++i) {
    if (buckets[i] == 0) continue;
    first = std::min(first, i);
    last = i;
  }
  return {first, first == buckets.size() ? first : last + 1};
}

// "1", "512", "1K", "2G": 2^power with bpftrace's binary suffixes.
std::string power_label(size_t power) {
  static constexpr std::string_view kSuffixes[] = {"", "K", "M", "G", "T"};
  size_t unit = std::min<size_t>(power / 10, 4);
  return fmt::format("{}{}", uint64_t{1} << (power - unit * 10), kSuffixes[unit]);
}

std::string hist_label(size_t i) {
  if (i == 0) return "(..., 0)";
  if (i == 1) return "[0]";
  if (i == 2) return "[1]";
  return "[" + power_label(i - 2) + ", " + power_label(i - 1) + ")";
}

// An lhist bound: "0", "3M", "2K" or the number.
std::string lhist_bound(int64_t n) {
  constexpr int64_t kKilo = 1024, kMega = 1024 * 1024;
  if (n != 0 && n % kMega == 0) return fmt::format("{}M", n / kMega);
  if (n != 0 && n % kKilo == 0) return fmt::format("{}K", n / kKilo);
  return fmt::format("{}", n);
}

std::string lhist_label(const Lhist &l, size_t i) {
  int64_t inner = l.step == 0 ? 0 : (l.max - l.min) / l.step;
  if (i == 0) return "(..., " + lhist_bound(l.min) + ")";
  if (static_cast<int64_t>(i) == inner + 1) return "[" + lhist_bound(l.max) + ", ...)";
  int64_t low = static_cast<int64_t>(i - 1) * l.step + l.min;
  return "[" + lhist_bound(low) + ", " + lhist_bound(low + l.step) + ")";
}

// The rows of a hist or lhist: "[4, 8)   <count> |@@@...   |". The bar is 52 columns for the
// largest bucket; the others are scaled in float and truncated, as bpftrace computes them, from
// the counts before print()'s div.
template <typename Label>
void histogram_rows(Buffer &out, const std::vector<uint64_t> &buckets, uint64_t div, Label label) {
  constexpr int kBarWidth = 52;
  auto [first, end] = printed_range(buckets);
  uint64_t max = first == end ? 0 : *std::max_element(buckets.begin(), buckets.end());
  for (size_t i = first; i < end; ++i) {
    int bar = static_cast<int>(static_cast<float>(buckets[i]) / static_cast<float>(max) *
                               static_cast<float>(kBarWidth));
    put_format(out, "{:<16}{:>8} |{:<52}|\n", label(i), buckets[i] / div, std::string(bar, '@'));
  }
}

void hist_text(Buffer &out, const Map &map, const MapEntry &e, uint64_t div) {
  if (map.kind == ValueKind::kHist) {
    histogram_rows(out, std::get<Hist>(e.value).buckets, div, hist_label);
  } else {
    const Lhist &l = std::get<Lhist>(e.value);
    histogram_rows(out, l.buckets, 1, [&l](size_t i) { return lhist_label(l, i); });
  }
}

bool is_histogram(ValueKind kind) {
  return kind == ValueKind::kHist || kind == ValueKind::kLhist;
}
bool is_stats(ValueKind kind) {
  return kind == ValueKind::kAvg || kind == ValueKind::kStats;
}

// hist() buckets in json: {"min": 4, "max": 7, "count": 1}. bpftrace computes the bounds with a
// 32-bit int shift, so [2G, 4G) reads min -2147483648, max 0; usprobe computes them the same way
// (x86's shift takes the count modulo 32) so that both print the same.
std::string hist_bucket_json(size_t i, uint64_t count) {
  if (i == 0) return fmt::format("{{\"max\": -1, \"count\": {}}}", count);
  if (i == 1) return fmt::format("{{\"min\": 0, \"max\": 0, \"count\": {}}}", count);
  if (i == 2) return fmt::format("{{\"min\": 1, \"max\": 1, \"count\": {}}}", count);
  auto shift = [](size_t n) { return static_cast<int32_t>(uint32_t{1} << (n % 32)); };
  int32_t low = shift(i - 2);
  int32_t high = static_cast<int32_t>(static_cast<uint32_t>(shift(i - 1)) - 1);
  return fmt::format("{{\"min\": {}, \"max\": {}, \"count\": {}}}", low, high, count);
}

std::string lhist_bucket_json(const Lhist &l, size_t i, uint64_t count) {
  int64_t inner = l.step == 0 ? 0 : (l.max - l.min) / l.step;
  if (i == 0) return fmt::format("{{\"max\": {}, \"count\": {}}}", l.min - 1, count);
  if (static_cast<int64_t>(i) == inner + 1)
    return fmt::format("{{\"min\": {}, \"count\": {}}}", l.max, count);
  int64_t low = static_cast<int64_t>(i - 1) * l.step + l.min;
  return fmt::format("{{\"min\": {}, \"max\": {}, \"count\": {}}}", low, low + l.step - 1, count);
}

std::string histogram_json(const Map &map, const MapEntry &e, uint64_t div) {
  const bool hist = map.kind == ValueKind::kHist;
  const std::vector<uint64_t> &buckets =
      hist ? std::get<Hist>(e.value).buckets : std::get<Lhist>(e.value).buckets;
  auto [first, end] = printed_range(buckets);
  std::string out = "[";
  for (size_t i = first; i < end; ++i) {
    if (i != first) out += ", ";
    out += hist ? hist_bucket_json(i, buckets[i] / div)
                : lhist_bucket_json(std::get<Lhist>(e.value), i, buckets[i]);
  }
  return out + "]";
}

std::string quoted(std::string_view text) {
  return "\"" + json_escape(text) + "\"";
}

std::string value_json_text(const Map &map, const MapEntry &e, uint64_t div) {
  if (is_histogram(map.kind)) return histogram_json(map, e, div);
  if (map.kind == ValueKind::kStats) {
    const Stats &s = std::get<Stats>(e.value);
    return fmt::format("{{\"count\": {}, \"average\": {}, \"total\": {}}}",
                       static_cast<int64_t>(s.count), average(s), s.total);
  }
  if (map.kind == ValueKind::kScalar && !std::holds_alternative<Int>(std::get<Scalar>(e.value)))
    return quoted(scalar_text(std::get<Scalar>(e.value)));
  return value_text(map, e, div);
}

// ---- printf ----

// One conversion of a printf format: "%-08.3lx" and what it asks for.
struct Conversion {
  size_t begin = 0, end = 0;  // in the format, '%' to just past the type letter
  bool left = false, zero = false;
  size_t width = 0;
  std::optional<size_t> precision;
  unsigned bits = 32;  // how much of the argument the length lets C read
  char type = 'd';
};

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// bpftrace's pattern: % [-] [0-9]* [.[0-9]+] [length] type, where a length goes with d u x X o p
// only and c s r take none.
std::optional<Conversion> match_conversion(std::string_view f, size_t at) {
  Conversion c;
  c.begin = at;
  size_t i = at + 1;
  auto digits = [&](size_t &value) {
    size_t start = i;
    for (value = 0; i < f.size() && is_digit(f[i]); ++i) value = value * 10 + (f[i] - '0');
    return i - start;
  };
  if (i < f.size() && f[i] == '-') c.left = true, ++i;
  c.zero = i < f.size() && f[i] == '0';
  digits(c.width);
  if (i + 1 < f.size() && f[i] == '.' && is_digit(f[i + 1])) {
    ++i;
    size_t precision = 0;
    digits(precision);
    c.precision = precision;
  }
  bool has_length = true;
  std::string_view rest = f.substr(i);
  if (rest.starts_with("hh"))
    c.bits = 8, i += 2;
  else if (rest.starts_with("ll"))
    c.bits = 64, i += 2;
  else if (rest.starts_with("h"))
    c.bits = 16, ++i;
  else if (!rest.empty() && (rest[0] == 'l' || rest[0] == 'j' || rest[0] == 'z' || rest[0] == 't'))
    c.bits = 64, ++i;
  else
    has_length = false;
  if (i >= f.size()) return std::nullopt;
  std::string_view types = has_length ? "duxXop" : "duxXopcsr";
  if (types.find(f[i]) == std::string_view::npos) return std::nullopt;
  c.type = f[i];
  c.end = i + 1;
  return c;
}

std::string pad(std::string text, const Conversion &c) {
  if (text.size() >= c.width) return text;
  return c.left ? text + std::string(c.width - text.size(), ' ')
                : std::string(c.width - text.size(), ' ') + text;
}

// An integer conversion, as glibc's snprintf prints it given the argument C's varargs would read.
std::string integer_conversion(const Conversion &c, uint64_t bits) {
  const uint64_t mask = c.bits == 64 ? ~uint64_t{0} : (uint64_t{1} << c.bits) - 1;
  std::string prefix;
  uint64_t magnitude = 0;
  if (c.type == 'p') {
    if (bits == 0) return pad("(nil)", c);
    prefix = "0x";
    magnitude = bits;
  } else if (c.type == 'd') {
    // Sign-extend the low c.bits bits.
    const uint64_t sign = uint64_t{1} << (c.bits - 1);
    int64_t v = static_cast<int64_t>(((bits & mask) ^ sign) - sign);
    if (v < 0) prefix = "-";
    magnitude = v < 0 ? uint64_t{0} - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
  } else {
    magnitude = bits & mask;
  }
  std::string digits;
  switch (c.type) {
    case 'o':
      digits = fmt::format("{:o}", magnitude);
      break;
    case 'x':
    case 'p':
      digits = fmt::format("{:x}", magnitude);
      break;
    case 'X':
      digits = fmt::format("{:X}", magnitude);
      break;
    default:
      digits = fmt::format("{}", magnitude);
      break;
  }
  if (c.precision) {
    if (*c.precision == 0 && magnitude == 0) digits.clear();
    if (digits.size() < *c.precision) digits.insert(0, *c.precision - digits.size(), '0');
  } else if (c.zero && !c.left && prefix.size() + digits.size() < c.width) {
    digits.insert(0, c.width - prefix.size() - digits.size(), '0');
  }
  return pad(prefix + digits, c);
}

std::string conversion_text(const Conversion &c, const Scalar &arg) {
  const Int *i = std::get_if<Int>(&arg);
  if (i != nullptr && c.type == 'c') return pad(std::string(1, static_cast<char>(i->bits)), c);
  if (i != nullptr && c.type != 's' && c.type != 'r') return integer_conversion(c, i->bits);
  std::string text = scalar_text(arg);
  if (c.precision && text.size() > *c.precision) text.resize(*c.precision);
  return pad(std::move(text), c);
}

}  // namespace

std::string attaching_line(size_t probes) {
  return fmt::format("Attaching {} probe{}...\n", probes, probes == 1 ? "" : "s");
}

void print_map(Buffer &out, const Map &map, uint64_t top, uint64_t div) {
  if (div == 0) div = 1;
  std::vector<const MapEntry *> rows = ordered(map, top);
  if (map.kind == ValueKind::kStats) div = 1;
  // Entries are joined by a newline, except where the value already ends in one (a stack) or,
  // bpftrace's quirk, is a usym; the map ends with one more.
  std::string_view separator = "\n";
  if (is_histogram(map.kind)) {
    for (size_t i = 0; i < rows.size(); ++i) {
      if (i != 0) put(out, "\n");
      put(out, name_and_key(map, *rows[i]));
      put(out, ": \n");
      hist_text(out, map, *rows[i], div);
    }
    put(out, "\n");
    return;
  }
  if (map.kind == ValueKind::kScalar && !rows.empty()) {
    const Scalar &first = std::get<Scalar>(rows.front()->value);
    if (std::holds_alternative<Stack>(first) || std::holds_alternative<Sym>(first)) separator = "";
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i != 0) put(out, separator);
    put(out, name_and_key(map, *rows[i]));
    put(out, ": ");
    put(out, value_text(map, *rows[i], div));
  }
  put(out, is_stats(map.kind) ? "\n\n" : "\n");
}

void print_maps_at_exit(Buffer &out, std::vector<Map> maps) {
  std::stable_sort(maps.begin(), maps.end(),
                   [](const Map &a, const Map &b) { return a.name < b.name; });
  put(out, "\n\n");
  for (const Map &m : maps) print_map(out, m);
}

void print_value(Buffer &out, const Scalar &value) {
  put(out, scalar_text(value));
  put(out, "\n");
}

std::string format_printf(std::string_view format, const std::vector<Scalar> &args) {
  std::string out;
  size_t start = 0, next_arg = 0;
  for (size_t at = format.find('%'); at != std::string_view::npos; at = format.find('%', at + 1)) {
    std::optional<Conversion> c = match_conversion(format, at);
    if (!c) continue;
    // The piece from the end of the previous conversion to the end of this one, as snprintf
    // prints it: "%%" is '%', and a "%%" may swallow the conversion's own '%' ("%%d").
    std::string piece;
    for (size_t i = start; i < c->end; ++i) {
      if (format[i] == '%' && i + 1 < c->end && format[i + 1] == '%') {
        piece += '%';
        ++i;
      } else if (i == c->begin) {
        piece += next_arg < args.size() ? conversion_text(*c, args[next_arg])
                                        : std::string(format.substr(i, c->end - i));
        break;
      } else {
        piece += format[i];
      }
    }
    ++next_arg;
    // bpftrace keeps snprintf's output as a C string: a NUL (from %c of 0) ends the piece.
    if (size_t nul = piece.find('\0'); nul != std::string::npos) piece.resize(nul);
    out += piece;
    start = c->end;
    at = c->end - 1;
  }
  out += format.substr(start);
  return out;
}

// ---- json ----

std::string json_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default: {
        // bpftrace tests `c <= '\x1f'` on x86's signed char, and prints the int it widens to in
        // hex: bytes from 0x80 come out as \uffffff80..\uffffffff.
        int widened = static_cast<signed char>(c);
        if (widened <= 0x1f)
          out += fmt::format("\\u{:04x}", static_cast<uint32_t>(widened));
        else
          out += c;
      }
    }
  }
  return out;
}

std::string attached_probes_json(size_t probes) {
  return fmt::format("{{\"type\": \"attached_probes\", \"data\": {{\"probes\": {}}}}}\n", probes);
}

std::string printf_json(std::string_view text) {
  return "{\"type\": \"printf\", \"data\": " + quoted(text) + "}\n";
}

std::string value_json(const Scalar &value) {
  std::string data = std::holds_alternative<Int>(value) ? int_text(std::get<Int>(value))
                                                        : quoted(scalar_text(value));
  return "{\"type\": \"value\", \"data\": " + data + "}\n";
}

void print_map_json(Buffer &out, const Map &map, uint64_t top, uint64_t div) {
  if (div == 0) div = 1;
  std::vector<const MapEntry *> rows = ordered(map, top);
  if (rows.empty()) return;
  if (map.kind == ValueKind::kStats) div = 1;
  std::string_view type = is_histogram(map.kind) ? "hist" : is_stats(map.kind) ? "stats" : "map";
  const bool keyed = !rows.front()->key.empty();
  put_format(out, "{{\"type\": \"{}\", \"data\": {{{}: ", type, quoted(map.name));
  if (keyed) put(out, "{");
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i != 0) put(out, ", ");
    if (keyed) put_format(out, "{}: ", quoted(join_key(rows[i]->key, ",")));
    put(out, value_json_text(map, *rows[i], div));
  }
  if (keyed) put(out, "}");
  put(out, "}}\n");
}

void print_maps_at_exit_json(Buffer &out, std::vector<Map> maps) {
  std::stable_sort(maps.begin(), maps.end(),
                   [](const Map &a, const Map &b) { return a.name < b.name; });
  put(out, "\n\n");
  for (const Map &m : maps) print_map_json(out, m);
}

}  // namespace usprobe::bt
