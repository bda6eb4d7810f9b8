// Trace specs in BCC trace's spelling: a probe, then optionally a printf-like format and the
// arguments it prints, all in one argument:
//
//   exe:greet "%s has %d", arg0, arg1
//
// The format is checked when it is parsed (conversions against arguments, every conversion
// known), so a mistake is reported before the command starts, not as garbage at the first hit.
// %s arguments are strings the agent copies at hit time: the format's string_mask tells it which.
// In a return probe's spec (uretprobe:) retval is the return value and arg0..arg5 are the
// arguments the call was made with, kept at its entry: a %s of one is copied at the return, from
// the pointer the call was given. In a USDT probe's spec (usdt:) argN is the note's argument N
// (arg0..arg5 for now), read as the note's spec says, sign- or zero-extended.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "session/region.h"

namespace usprobe::cli {

// Widths and precisions above this are refused when the format is parsed: no message needs more,
// and a bigger one (up to 2^31 and beyond) would only print nothing or exhaust memory.
inline constexpr unsigned kMaxFieldWidth = 4096;

// What a %s shows after a string the agent could not copy whole (longer than --strlen).
inline constexpr std::string_view kCutMarker = "...";

struct Conversion {
  std::string spec;    // for fmt::sprintf, flags, width and length included: "%-8s", "%08lx"
  char type = 'd';     // d i u x X p c s
  bool wide = false;   // l or ll: 64 bits; otherwise d i u x X c read the low 32 (8 for c)
  unsigned arg = 0;    // which value: arg0..arg5 (arg11 at a USDT probe), or agent::kRetvalArg
                       // (retval)
  bool left = false;   // the '-' flag
  unsigned width = 0;  // 0: none
  int precision = -1;  // -1: none
  bool plain = false;  // no flag, width or precision: d i u x X take a fast path
};

struct Format {
  // Literal text and conversions in order: a piece is either text (conversion < 0) or the index
  // of a conversion.
  struct Piece {
    std::string text;
    int conversion = -1;
  };
  std::vector<Piece> pieces;
  std::vector<Conversion> conversions;

  // Bit n set when argn is printed with %s (bit agent::kRetvalArg: retval).
  uint32_t string_mask() const;
};

struct TraceSpec {
  std::string text;   // the whole argument, for messages
  std::string probe;  // "exe:greet"
  std::optional<Format> format;
};

// Errors: "bad format in '<text>': <reason>".
Result<TraceSpec> parse_trace_spec(std::string_view text);

// The message for one event ("alice has 3"); empty without a format. An unreadable string is
// shown as (null) or <bad 0xADDRESS>, padded to the conversion's width like a string (never cut by
// its precision); a string longer than the agent's copy is followed by kCutMarker.
std::string render_message(const std::optional<Format> &format, const TraceEvent &event);
// The same, appended to `out` (the trace printer's line buffer).
void append_message(fmt::memory_buffer &out, const std::optional<Format> &format,
                    const TraceEvent &event);
// One JSON value per conversion: strings for %s and %c, numbers otherwise (signed for %d %i); a
// %s whose string could not be read is null, and render_errors says why.
nlohmann::ordered_json render_args(const std::optional<Format> &format, const TraceEvent &event);
// The strings that could not be read, by the value's name: {"arg0": "bad address 0x10"},
// {"retval": "null pointer"}; {} when every one was.
nlohmann::ordered_json render_errors(const std::optional<Format> &format, const TraceEvent &event);
// "arg0".."arg5", "retval".
std::string value_name(unsigned arg);

}  // namespace usprobe::cli
