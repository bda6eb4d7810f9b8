// Profiles in pprof's format (github.com/google/pprof, proto/profile.proto): what `go tool pprof`,
// pprof's web UI and the continuous profilers (Pyroscope, Parca, Cloud Profiler) read. `stacks
// --pprof` writes one sample per distinct stack with its count; `latency --pprof` one per probe
// with its calls and their total time.
//
// A profile is a protobuf message, gzipped on disk. Its samples hold values and a list of location
// ids, leaf first; a location is an address in a mapping (a file mapped at [memory_start,
// memory_limit) from file_offset, with its build-id, so that a profiler can symbolize it again) and
// the functions it is in; every string (names, paths, units) is an index into one string table
// whose entry 0 is "". PprofProfile hands out the ids and the string indexes, and encodes.
//
// The wire format is written here by hand: profile.proto needs varints, length-delimited fields
// (strings and nested messages) and packed repeated integers, a few dozen lines, where the
// protobuf library would bring a code generator and a runtime into the build.
//
// Usage:
//
//   PprofProfile profile({{"calls", "count"}});
//   uint64_t m = profile.add_mapping({start, limit, offset, "/usr/bin/app", build_id});
//   uint64_t f = profile.add_function("ns::parse(char const*)", "_ZN2ns5parseEPKc");
//   uint64_t leaf = profile.add_location(m, address, f);
//   profile.add_sample({leaf, caller, ...}, {count});
//   auto file = gzip(profile.encode());
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/error.h"

namespace usprobe::cli {

// The protobuf wire format's encoding, as much as profile.proto needs. Fields are appended in the
// order they are written; a nested message is written into its own ProtoWriter first, then added
// as a length-delimited field.
class ProtoWriter {
 public:
  // Wire type 0: uint64, and int64 and bool as their two's complement (a negative int64 takes ten
  // bytes, as protobuf encodes it).
  void varint(uint32_t field, uint64_t value);
  // Wire type 2: a string, bytes, or an encoded message.
  void bytes(uint32_t field, std::string_view data);
  void message(uint32_t field, const ProtoWriter &inner) { bytes(field, inner.data()); }
  // A packed repeated uint64 or int64: one length-delimited field holding the varints. Nothing
  // for an empty list (proto3 writes none).
  void packed(uint32_t field, std::span<const uint64_t> values);

  const std::string &data() const { return out_; }

 private:
  std::string out_;
};

// `value` as a base-128 varint (seven bits a byte, least significant group first, the high bit set
// on every byte but the last): 1 byte for 0..127, 10 for values of 2^63 and up.
void append_varint(std::string &out, uint64_t value);

// A mapping as profile.proto has it: addresses [memory_start, memory_limit) of the profile map to
// file offsets from file_offset on.
struct PprofMapping {
  uint64_t memory_start = 0, memory_limit = 0, file_offset = 0;
  std::string filename;  // a path, or a pseudo mapping's name ("[vdso]")
  std::string build_id;  // the GNU build-id in hex; "" when unknown
  auto operator<=>(const PprofMapping &) const = default;
};

// A sample's label: a string (str) or a number (num, with num_unit when not "").
struct PprofLabel {
  std::string key{};
  std::string str{};
  int64_t num = 0;
  std::string num_unit{};
  auto operator<=>(const PprofLabel &) const = default;
};

// One profile being built. Ids start at 1 (0 means "none" in profile.proto) and are handed out in
// the order things are first added; adding the same thing again returns its id.
class PprofProfile {
 public:
  // (type, unit) of each value of a sample, as ("calls", "count") or ("latency", "nanoseconds").
  explicit PprofProfile(
      std::initializer_list<std::pair<std::string_view, std::string_view>> sample_types);

  uint64_t add_mapping(const PprofMapping &mapping);
  // A function by its readable (demangled) name and its name in the file (system_name).
  uint64_t add_function(std::string_view name, std::string_view system_name);
  // The location of `address` in mapping `mapping_id` (0: none known), in function `function_id`
  // (0: not named; the profiler may symbolize it from the mapping). One location per (mapping,
  // address): the function given first stays.
  uint64_t add_location(uint64_t mapping_id, uint64_t address, uint64_t function_id);
  // Adds `values` (one per sample type) to the sample of these locations (leaf first) and labels.
  // A stack added again with the same labels adds to the same sample, value by value.
  void add_sample(std::vector<uint64_t> location_ids, std::span<const int64_t> values,
                  std::vector<PprofLabel> labels = {});

  // When the profile started (nanoseconds since the Unix epoch) and how long it ran.
  void set_time(int64_t time_nanos, int64_t duration_nanos);
  // A line of free text that pprof shows with the profile (the command line).
  void add_comment(std::string_view text);

  size_t sample_count() const { return samples_.size(); }

  // The Profile message, uncompressed. A mapping says has_functions when every location in it is
  // named, so that a profiler does not try to name them again.
  std::string encode() const;

 private:
  struct Location {
    uint64_t mapping_id = 0, address = 0, function_id = 0;
  };
  struct Function {
    int64_t name = 0, system_name = 0;
  };
  using SampleKey = std::pair<std::vector<uint64_t>, std::vector<PprofLabel>>;

  int64_t string_index(std::string_view text);

  std::vector<std::pair<int64_t, int64_t>> sample_types_;  // string indexes
  std::vector<std::string> strings_{""};
  std::unordered_map<std::string, int64_t> string_ids_{{"", 0}};
  std::vector<PprofMapping> mappings_;  // id - 1
  std::map<PprofMapping, uint64_t> mapping_ids_;
  std::vector<Function> functions_;  // id - 1
  std::map<std::pair<int64_t, int64_t>, uint64_t> function_ids_;
  std::vector<Location> locations_;  // id - 1
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> location_ids_;
  std::vector<std::pair<SampleKey, std::vector<int64_t>>> samples_;  // in the order first added
  std::map<SampleKey, size_t> sample_index_;
  std::vector<int64_t> comments_;
  int64_t time_nanos_ = 0, duration_nanos_ = 0;
};

// `data` gzipped (RFC 1952), as pprof files are stored.
Result<std::string> gzip(std::string_view data);

// The profile, gzipped, written to `file` and flushed. Errors name `path`.
Result<void> write_pprof(FILE *file, std::string_view path, const PprofProfile &profile);

// When `t` was on the wall clock, in nanoseconds since the Unix epoch (time_nanos): a session's
// start is kept as a steady_clock time.
int64_t unix_nanos(std::chrono::steady_clock::time_point t);

}  // namespace usprobe::cli
