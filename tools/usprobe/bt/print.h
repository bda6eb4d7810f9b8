// `usprobe run`: the output of a bpftrace program, byte for byte as bpftrace 0.17 prints it, in
// text and in `-f json`. Everything here was checked against bpftrace v0.17.0 running BEGIN-only
// programs (and a uprobe for stacks); tests/unit/bt/print_test.cc quotes what it printed.
//
// What bpftrace prints, in order, and which function here writes it:
//
//   Attaching 2 probes...                 attaching_line(2)     (json: attached_probes_json)
//   <printf and print() output>           format_printf, print_map, print_value
//   \n\n                                  at exit, then every map by name: print_maps_at_exit
//
// Example, `bpftrace -e 'BEGIN { @c[1] = count(); @x = 5; exit(); }'`:
//
//   fmt::memory_buffer out;
//   fmt::format_to(std::back_inserter(out), "{}", attaching_line(1));
//   print_maps_at_exit(out, {c_map, x_map});
//   // "Attaching 1 probe...\n\n\n@c[1]: 1\n@x: 5\n"
//
// The order of a map's entries (text and json alike; print(@m, top) keeps the last `top`):
//   - count, sum, min, max, and plain integer values: by value, ascending (signed or unsigned as
//     the value is);
//   - avg and stats: by average; hist and lhist: by the total of their buckets;
//   - string, usym and stack values: by key.
//   Sorting by key compares the key's parts first to last: an integer as unsigned 64 bits (so -1
//   comes after 10), a string bytewise; usym and stack parts are left in the order given.
//   Where bpftrace leaves ties in its BPF hash table's order, which nobody can predict, usprobe
//   orders them by key: the same lines, maybe in another order.
//
// Known bpftrace 0.17 quirks reproduced on purpose, so that outputs compare equal:
//   - a map of usym values prints its entries with no newline between them;
//   - an integer key always prints as signed 64 bits: @u[(uint64)-1] prints as @u[-1];
//   - hist's JSON bucket [2G, 4G) reads {"min": -2147483648, "max": 0, ...} (a 32-bit shift);
//   - JSON strings escape each byte >= 0x80 as a sign-extended "\uffffffXX";
//   - printf leaves the text after its last conversion as written ("100%%" stays "100%%"), and a
//     %c of 0 ends its piece of the output (the rest up to the next conversion is lost).
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "bt/value.h"

namespace usprobe::bt {

// ---- text (bpftrace's default output) ----

// "Attaching 1 probe...\n", "Attaching 3 probes...\n": what bpftrace prints once its probes are
// attached, before any output of the program.
std::string attaching_line(size_t probes);

// print(@m), print(@m, top), print(@m, top, div); also what the exit prints for each map.
//   top: keep the last `top` entries of the order above (0: all); ignored for stats() maps, as
//        bpftrace does (it warns at parse time).
//   div: divide each printed number by div (integer division, signed values toward zero):
//        count/sum/min/max/avg values and hist bucket counts (the bars keep the undivided counts);
//        lhist and stats ignore it, as bpftrace does. 0 counts as 1.
// An empty map prints a blank line ("\n"; "\n\n" for avg and stats).
// Layout per kind:
//   @c[1]: 5               count sum min max and plain values; keys' parts joined by ", "
//   @x: 5                  a map without keys
//   @h[k]:  (sic, then a newline and the hist's rows; a blank line after each key)
//   [4, 8)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|
//   @st: count 2, average 7, total 14     (then a blank line after the map)
// hist and lhist print the buckets from the first non-empty one to the last, empty ones between
// included; the bar is 52 columns of '@' for the largest bucket, others scaled down and truncated.
void print_map(fmt::memory_buffer &out, const Map &map, uint64_t top = 0, uint64_t div = 1);

// What bpftrace prints when the program ends (exit() or Ctrl-C): "\n\n", then every map of the
// program sorted by name ("@" before "@a"), each as print_map prints it. Empty maps still print
// their blank line: pass every map the program declares, written to or not.
void print_maps_at_exit(fmt::memory_buffer &out, std::vector<Map> maps);

// print(value) of a non-map: the value and a newline ("5\n", "str\n"; a stack as a map value).
void print_value(fmt::memory_buffer &out, const Scalar &value);

// printf(format, args...): the text bpftrace prints (with no newline unless the format has one).
// bpftrace cuts the format after each conversion and gives each piece, with its argument, to C's
// snprintf; the text after the last conversion is copied as written. A conversion is
//     % [-] [width] [.precision] [hh|h|l|ll|j|z|t] (d|u|x|X|o|p)     or     % [-] [width] [.prec]
//     (c|s|r)
// (no '+', ' ', '#' or '*' flags; %i, %f and the like are not conversions and stay as written).
// The length decides how much of the 64-bit argument counts, as C's varargs would read it:
// none: 32 bits, so printf("%d", 4294967296) prints 0 and printf("%u", -1) 4294967295; h: 16; hh:
// 8; l, ll, j, z, t: 64. A leading '0' in the width pads numbers with zeros, '-' aligns left,
// precision is C's (minimum digits for numbers, at most that many characters for %s). %p prints
// "0x" and hex, or "(nil)" for 0; %c the low byte of the argument; %s a Str or Sym's text, a
// Stack as print_value shows it; %r (bpftrace's buffers) is taken as %s. Within a piece, "%%" is
// one '%'.
// usprobe differs only where bpftrace's parser refuses the program (a missing argument leaves
// its conversion as written; an integer given to %s prints in decimal, a string given to %d as
// %s would) or where C's behaviour is undefined (other '%' sequences before a conversion in a
// piece are copied as written).
std::string format_printf(std::string_view format, const std::vector<Scalar> &args);

// ---- json (bpftrace -f json): one object per line, keys and spacing as bpftrace writes them ----
// bpftrace writes these by hand, not with a JSON library, and so does usprobe: the spacing
// ({"type": "map", "data": {...}}) and the escaping of strings are part of what users parse.

// {"type": "attached_probes", "data": {"probes": 3}}\n
std::string attached_probes_json(size_t probes);

// {"type": "printf", "data": "<text, escaped>"}\n  for the text that format_printf made.
std::string printf_json(std::string_view text);

// {"type": "value", "data": 5}\n  (print(value) of a non-map; strings quoted).
std::string value_json(const Scalar &value);

// print(@m, top, div) in json. top and div as in print_map. Nothing at all for an empty map.
//   {"type": "map", "data": {"@c": {"1": 1, "2": 2}}}           count sum min max, plain values
//   {"type": "map", "data": {"@x": 5}}                           a map without keys
//   {"type": "map", "data": {"@s": {"a,5": -3}}}                 key parts joined by "," (no space)
//   {"type": "hist", "data": {"@h": [{"max": -1, "count": 1}, {"min": 0, "max": 0, "count": 1},
//                                    {"min": 4, "max": 7, "count": 1}]}}      hist and lhist
//   {"type": "stats", "data": {"@st": {"count": 2, "average": 7, "total": 14}}}
//   {"type": "stats", "data": {"@a": 7}}                         avg (bpftrace calls it stats too)
// The last bucket of an lhist has only "min", the first (below min) only "max".
void print_map_json(fmt::memory_buffer &out, const Map &map, uint64_t top = 0, uint64_t div = 1);

// The exit in json: "\n\n" (bpftrace prints the two blank lines in json too), then each
// non-empty map by name, one line each.
void print_maps_at_exit_json(fmt::memory_buffer &out, std::vector<Map> maps);

// bpftrace's escaping of a JSON string's contents (without the quotes): \" \\ \n \r \t, other
// bytes below 0x20 as \u00XX, and bytes from 0x80 as \uffffffXX (sic).
std::string json_escape(std::string_view text);

}  // namespace usprobe::bt
