#include "output/pprof.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

namespace usprobe::cli {
namespace {

// profile.proto's field numbers, by message.
namespace profile_field {
constexpr uint32_t kSampleType = 1, kSample = 2, kMapping = 3, kLocation = 4, kFunction = 5,
                   kStringTable = 6, kTimeNanos = 9, kDurationNanos = 10, kPeriodType = 11,
                   kPeriod = 12, kComment = 13;
}
namespace value_type_field {
constexpr uint32_t kType = 1, kUnit = 2;
}
namespace sample_field {
constexpr uint32_t kLocationId = 1, kValue = 2, kLabel = 3;
}
namespace label_field {
constexpr uint32_t kKey = 1, kStr = 2, kNum = 3, kNumUnit = 4;
}
namespace mapping_field {
constexpr uint32_t kId = 1, kMemoryStart = 2, kMemoryLimit = 3, kFileOffset = 4, kFilename = 5,
                   kBuildId = 6, kHasFunctions = 7;
}
namespace location_field {
constexpr uint32_t kId = 1, kMappingId = 2, kAddress = 3, kLine = 4;
}
namespace line_field {
constexpr uint32_t kFunctionId = 1;
}
namespace function_field {
constexpr uint32_t kId = 1, kName = 2, kSystemName = 3;
}

// The wire types of a field's key (its number << 3 | the type).
constexpr uint32_t kVarint = 0, kLengthDelimited = 2;

// A scalar field at its default (0) is left out, as proto3 encoders do; readers take it as 0.
void varint_unless_zero(ProtoWriter &w, uint32_t field, uint64_t value) {
  if (value != 0) w.varint(field, value);
}

ProtoWriter value_type(int64_t type, int64_t unit) {
  ProtoWriter w;
  varint_unless_zero(w, value_type_field::kType, static_cast<uint64_t>(type));
  varint_unless_zero(w, value_type_field::kUnit, static_cast<uint64_t>(unit));
  return w;
}

}  // namespace

void append_varint(std::string &out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void ProtoWriter::varint(uint32_t field, uint64_t value) {
  append_varint(out_, uint64_t{field} << 3 | kVarint);
  append_varint(out_, value);
}

void ProtoWriter::bytes(uint32_t field, std::string_view data) {
  append_varint(out_, uint64_t{field} << 3 | kLengthDelimited);
  append_varint(out_, data.size());
  out_.append(data);
}

void ProtoWriter::packed(uint32_t field, std::span<const uint64_t> values) {
  if (values.empty()) return;
  std::string payload;
  for (uint64_t v : values) append_varint(payload, v);
  bytes(field, payload);
}

PprofProfile::PprofProfile(
    std::initializer_list<std::pair<std::string_view, std::string_view>> sample_types) {
  for (const auto &[type, unit] : sample_types) {
    int64_t t = string_index(type);  // before the unit's: the table's order is the order of use
    sample_types_.emplace_back(t, string_index(unit));
  }
}

int64_t PprofProfile::string_index(std::string_view text) {
  auto [it, inserted] =
      string_ids_.try_emplace(std::string(text), static_cast<int64_t>(strings_.size()));
  if (inserted) strings_.emplace_back(text);
  return it->second;
}

uint64_t PprofProfile::add_mapping(const PprofMapping &mapping) {
  auto [it, inserted] = mapping_ids_.try_emplace(mapping, mappings_.size() + 1);
  if (inserted) {
    mappings_.push_back(mapping);
    // Interned now, so that the string table's order follows the order things were added.
    string_index(mapping.filename);
    string_index(mapping.build_id);
  }
  return it->second;
}

uint64_t PprofProfile::add_function(std::string_view name, std::string_view system_name) {
  Function f{string_index(name), string_index(system_name)};
  auto [it, inserted] = function_ids_.try_emplace({f.name, f.system_name}, functions_.size() + 1);
  if (inserted) functions_.push_back(f);
  return it->second;
}

uint64_t PprofProfile::add_location(uint64_t mapping_id, uint64_t address, uint64_t function_id) {
  auto [it, inserted] = location_ids_.try_emplace({mapping_id, address}, locations_.size() + 1);
  if (inserted) locations_.push_back({mapping_id, address, function_id});
  return it->second;
}

void PprofProfile::add_sample(std::vector<uint64_t> location_ids, std::span<const int64_t> values,
                              std::vector<PprofLabel> labels) {
  for (const PprofLabel &l : labels) {
    string_index(l.key);
    string_index(l.str);
    string_index(l.num_unit);
  }
  SampleKey key{std::move(location_ids), std::move(labels)};
  auto [it, inserted] = sample_index_.try_emplace(key, samples_.size());
  if (inserted) samples_.emplace_back(std::move(key), std::vector<int64_t>(sample_types_.size()));
  std::vector<int64_t> &sum = samples_[it->second].second;
  for (size_t i = 0; i < sum.size() && i < values.size(); ++i) sum[i] += values[i];
}

void PprofProfile::set_time(int64_t time_nanos, int64_t duration_nanos) {
  time_nanos_ = time_nanos;
  duration_nanos_ = duration_nanos;
}

void PprofProfile::add_comment(std::string_view text) {
  comments_.push_back(string_index(text));
}

std::string PprofProfile::encode() const {
  // Every string is in strings_ by now: encode() only looks indexes up (the const strings_ below).
  auto index = [this](std::string_view text) -> uint64_t {
    auto it = string_ids_.find(std::string(text));
    return it == string_ids_.end() ? 0 : static_cast<uint64_t>(it->second);
  };
  ProtoWriter profile;
  for (const auto &[type, unit] : sample_types_)
    profile.message(profile_field::kSampleType, value_type(type, unit));

  for (const auto &[key, values] : samples_) {
    ProtoWriter sample;
    sample.packed(sample_field::kLocationId, key.first);
    std::vector<uint64_t> raw(values.begin(), values.end());  // int64 as its two's complement
    sample.packed(sample_field::kValue, raw);
    for (const PprofLabel &l : key.second) {
      ProtoWriter label;
      varint_unless_zero(label, label_field::kKey, index(l.key));
      varint_unless_zero(label, label_field::kStr, index(l.str));
      varint_unless_zero(label, label_field::kNum, static_cast<uint64_t>(l.num));
      varint_unless_zero(label, label_field::kNumUnit, index(l.num_unit));
      sample.message(sample_field::kLabel, label);
    }
    profile.message(profile_field::kSample, sample);
  }

  // A mapping whose locations all have a function needs no symbolization.
  std::vector<bool> named(mappings_.size(), true);
  for (const Location &l : locations_)
    if (l.mapping_id != 0 && l.function_id == 0) named[l.mapping_id - 1] = false;
  for (size_t i = 0; i < mappings_.size(); ++i) {
    const PprofMapping &m = mappings_[i];
    ProtoWriter mapping;
    mapping.varint(mapping_field::kId, i + 1);
    varint_unless_zero(mapping, mapping_field::kMemoryStart, m.memory_start);
    varint_unless_zero(mapping, mapping_field::kMemoryLimit, m.memory_limit);
    varint_unless_zero(mapping, mapping_field::kFileOffset, m.file_offset);
    varint_unless_zero(mapping, mapping_field::kFilename, index(m.filename));
    varint_unless_zero(mapping, mapping_field::kBuildId, index(m.build_id));
    varint_unless_zero(mapping, mapping_field::kHasFunctions, named[i]);
    profile.message(profile_field::kMapping, mapping);
  }

  for (size_t i = 0; i < locations_.size(); ++i) {
    const Location &l = locations_[i];
    ProtoWriter location;
    location.varint(location_field::kId, i + 1);
    varint_unless_zero(location, location_field::kMappingId, l.mapping_id);
    varint_unless_zero(location, location_field::kAddress, l.address);
    if (l.function_id != 0) {
      ProtoWriter line;
      line.varint(line_field::kFunctionId, l.function_id);
      location.message(location_field::kLine, line);
    }
    profile.message(profile_field::kLocation, location);
  }

  for (size_t i = 0; i < functions_.size(); ++i) {
    ProtoWriter function;
    function.varint(function_field::kId, i + 1);
    varint_unless_zero(function, function_field::kName, static_cast<uint64_t>(functions_[i].name));
    varint_unless_zero(function, function_field::kSystemName,
                       static_cast<uint64_t>(functions_[i].system_name));
    profile.message(profile_field::kFunction, function);
  }

  // Entry 0 is "" (profile.proto requires it): the constructor put it there.
  for (const std::string &s : strings_) profile.bytes(profile_field::kStringTable, s);
  varint_unless_zero(profile, profile_field::kTimeNanos, static_cast<uint64_t>(time_nanos_));
  varint_unless_zero(profile, profile_field::kDurationNanos,
                     static_cast<uint64_t>(duration_nanos_));
  // Every sample counts what happened, unsampled: a period of 1 of the first sample type.
  if (!sample_types_.empty()) {
    profile.message(profile_field::kPeriodType,
                    value_type(sample_types_[0].first, sample_types_[0].second));
    profile.varint(profile_field::kPeriod, 1);
  }
  std::vector<uint64_t> comments(comments_.begin(), comments_.end());
  profile.packed(profile_field::kComment, comments);
  return profile.data();
}

Result<std::string> gzip(std::string_view data) {
  z_stream z{};
  // windowBits 15 + 16: a gzip header and trailer around the deflate stream.
  if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    return fail(ENOMEM, "gzip: cannot start zlib's deflate");
  std::string out;
  z.next_in = reinterpret_cast<Bytef *>(const_cast<char *>(data.data()));
  int rc = Z_OK;
  char buffer[64 * 1024];
  // uInt counts at most 4 GiB: give the input in pieces that fit.
  size_t left = data.size();
  do {
    uInt piece = static_cast<uInt>(std::min<size_t>(left, UINT_MAX));
    z.avail_in = piece;
    left -= piece;
    int flush = left == 0 ? Z_FINISH : Z_NO_FLUSH;
    do {
      z.next_out = reinterpret_cast<Bytef *>(buffer);
      z.avail_out = sizeof buffer;
      rc = deflate(&z, flush);
      out.append(buffer, sizeof buffer - z.avail_out);
    } while (z.avail_out == 0);
  } while (left != 0);
  deflateEnd(&z);
  if (rc != Z_STREAM_END) return fail(EIO, fmt::format("gzip: deflate failed ({})", rc));
  return out;
}

Result<void> write_pprof(FILE *file, std::string_view path, const PprofProfile &profile) {
  auto compressed = gzip(profile.encode());
  if (!compressed)
    return fail(compressed.error().code, fmt::format("{}: {}", path, compressed.error().message));
  if (std::fwrite(compressed->data(), 1, compressed->size(), file) != compressed->size() ||
      std::fflush(file) != 0)
    return fail(errno, fmt::format("cannot write {}: {}", path, std::strerror(errno)));
  return {};
}

int64_t unix_nanos(std::chrono::steady_clock::time_point t) {
  auto ago = std::chrono::steady_clock::now() - t;
  auto wall = std::chrono::system_clock::now() - ago;
  return std::chrono::duration_cast<std::chrono::nanoseconds>(wall.time_since_epoch()).count();
}

}  // namespace usprobe::cli
