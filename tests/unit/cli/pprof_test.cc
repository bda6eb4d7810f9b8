// pprof profiles (output/pprof.h): the protobuf wire format byte for byte (varints at their edges,
// length-delimited and packed fields), a small profile encoded exactly as profile.proto lays it
// out, the ids and samples that adding the same thing twice shares, and gzip that zlib reads back.
#include "output/pprof.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdint>
#include <string>
#include <vector>

namespace usprobe::cli {
namespace {

std::string bytes(std::initializer_list<int> values) {
  std::string out;
  for (int v : values) out.push_back(static_cast<char>(v));
  return out;
}

std::string varint_of(uint64_t value) {
  std::string out;
  append_varint(out, value);
  return out;
}

TEST(PprofWire, VarintsAtTheEdgesOfTheirLengths) {
  EXPECT_EQ(varint_of(0), bytes({0x00}));
  EXPECT_EQ(varint_of(1), bytes({0x01}));
  EXPECT_EQ(varint_of(127), bytes({0x7f}));
  EXPECT_EQ(varint_of(128), bytes({0x80, 0x01}));
  EXPECT_EQ(varint_of(300), bytes({0xac, 0x02}));
  EXPECT_EQ(varint_of(16383), bytes({0xff, 0x7f}));
  EXPECT_EQ(varint_of(16384), bytes({0x80, 0x80, 0x01}));
  EXPECT_EQ(varint_of(uint64_t{1} << 63),
            bytes({0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}));
  EXPECT_EQ(varint_of(UINT64_MAX),
            bytes({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}));
}

TEST(PprofWire, FieldsCarryTheirNumberAndWireType) {
  ProtoWriter w;
  w.varint(1, 150);  // key 1 << 3 | 0
  EXPECT_EQ(w.data(), bytes({0x08, 0x96, 0x01}));
  ProtoWriter s;
  s.bytes(6, "ab");  // key 6 << 3 | 2, then the length
  EXPECT_EQ(s.data(), bytes({0x32, 0x02, 'a', 'b'}));
  ProtoWriter big;
  big.varint(16, 1);  // a field number past 15 takes a two-byte key
  EXPECT_EQ(big.data(), bytes({0x80, 0x01, 0x01}));
  ProtoWriter outer;
  outer.message(3, w);
  EXPECT_EQ(outer.data(), bytes({0x1a, 0x03, 0x08, 0x96, 0x01}));
  // A negative int64 is its two's complement: ten bytes.
  ProtoWriter negative;
  negative.varint(2, static_cast<uint64_t>(int64_t{-1}));
  EXPECT_EQ(negative.data().size(), 11u);
}

TEST(PprofWire, PackedFieldIsOneLengthDelimitedRunOfVarints) {
  ProtoWriter w;
  const std::vector<uint64_t> values = {1, 300, 0, UINT64_MAX};
  w.packed(1, values);
  std::string expected = bytes({0x0a, 1 + 2 + 1 + 10, 0x01, 0xac, 0x02, 0x00});
  expected += varint_of(UINT64_MAX);
  EXPECT_EQ(w.data(), expected);
  ProtoWriter empty;
  empty.packed(1, {});
  EXPECT_EQ(empty.data(), "") << "proto3 writes no empty packed field";
}

// The smallest profile: its sample type, the string table ("" first, then in the order of use),
// the times, and the period (1 of the first sample type).
TEST(PprofProfile, EmptyProfileEncodesExactly) {
  PprofProfile p({{"calls", "count"}});
  p.set_time(5, 7);
  std::string expected = bytes({0x0a, 0x04, 0x08, 0x01, 0x10, 0x02});  // sample_type {1, 2}
  expected += bytes({0x32, 0x00});                                     // ""
  expected += bytes({0x32, 0x05}) + "calls";
  expected += bytes({0x32, 0x05}) + "count";
  expected += bytes({0x48, 0x05});                          // time_nanos
  expected += bytes({0x50, 0x07});                          // duration_nanos
  expected += bytes({0x5a, 0x04, 0x08, 0x01, 0x10, 0x02});  // period_type
  expected += bytes({0x60, 0x01});                          // period
  EXPECT_EQ(p.encode(), expected);
}

// One sample of two locations, the leaf named, the caller not: the mapping is not has_functions
// (a profiler should name the caller), labels point into the string table.
TEST(PprofProfile, SampleMappingLocationAndFunctionEncodeExactly) {
  PprofProfile p({{"calls", "count"}});
  uint64_t m = p.add_mapping({0x1000, 0x2000, 0x10, "/a", "ab"});
  uint64_t f = p.add_function("f()", "_Z1fv");
  uint64_t leaf = p.add_location(m, 0x1234, f);
  uint64_t caller = p.add_location(m, 0x1300, 0);
  const int64_t value = 3;
  p.add_sample({leaf, caller}, {&value, 1}, {{.key = "pid", .num = 42}});
  // Strings: "" 0, calls 1, count 2, /a 3, ab 4, f() 5, _Z1fv 6, pid 7.
  std::string expected = bytes({0x0a, 0x04, 0x08, 0x01, 0x10, 0x02});
  // sample: location_id [1, 2] packed, value [3] packed, label {key 7, num 42}
  expected += bytes(
      {0x12, 0x0d, 0x0a, 0x02, 0x01, 0x02, 0x12, 0x01, 0x03, 0x1a, 0x04, 0x08, 0x07, 0x18, 0x2a});
  // mapping: id 1, start 0x1000, limit 0x2000, offset 0x10, filename 3, build_id 4; no
  // has_functions (the caller is not named)
  expected += bytes({0x1a, 0x0e, 0x08, 0x01, 0x10, 0x80, 0x20, 0x18, 0x80, 0x40, 0x20, 0x10, 0x28,
                     0x03, 0x30, 0x04});
  // location 1: mapping 1, address 0x1234, line {function 1}; location 2: no line
  expected += bytes({0x22, 0x0b, 0x08, 0x01, 0x10, 0x01, 0x18, 0xb4, 0x24, 0x22, 0x02, 0x08, 0x01});
  expected += bytes({0x22, 0x07, 0x08, 0x02, 0x10, 0x01, 0x18, 0x80, 0x26});
  // function 1: name 5, system_name 6
  expected += bytes({0x2a, 0x06, 0x08, 0x01, 0x10, 0x05, 0x18, 0x06});
  for (const char *s : {"", "calls", "count", "/a", "ab", "f()", "_Z1fv", "pid"}) {
    expected += bytes({0x32, static_cast<int>(std::string(s).size())});
    expected += s;
  }
  expected += bytes({0x5a, 0x04, 0x08, 0x01, 0x10, 0x02, 0x60, 0x01});
  EXPECT_EQ(p.encode(), expected);
}

TEST(PprofProfile, SameThingAddedTwiceKeepsItsIdAndSamplesAdd) {
  PprofProfile p({{"calls", "count"}, {"latency", "nanoseconds"}});
  uint64_t m = p.add_mapping({0x1000, 0x2000, 0, "/a", ""});
  EXPECT_EQ(m, 1u);
  EXPECT_EQ(p.add_mapping({0x1000, 0x2000, 0, "/a", ""}), m);
  EXPECT_EQ(p.add_mapping({0x3000, 0x4000, 0, "/a", ""}), 2u);
  uint64_t f = p.add_function("f", "f");
  EXPECT_EQ(p.add_function("f", "f"), f);
  EXPECT_NE(p.add_function("g", "g"), f);
  uint64_t l = p.add_location(m, 0x1100, f);
  EXPECT_EQ(p.add_location(m, 0x1100, f), l);
  EXPECT_NE(p.add_location(m, 0x1101, f), l);
  const int64_t a[] = {1, 100}, b[] = {2, 50};
  p.add_sample({l}, a);
  p.add_sample({l}, b);
  EXPECT_EQ(p.sample_count(), 1u);
  p.add_sample({l}, a, {{.key = "pid", .num = 7}});  // the same stack in another process
  EXPECT_EQ(p.sample_count(), 2u);
  // The sums: values 3 and 150 of the first sample, packed.
  const std::string encoded = p.encode();
  EXPECT_NE(encoded.find(bytes({0x12, 0x03, 0x03, 0x96, 0x01})), std::string::npos);
}

TEST(PprofGzip, ZlibReadsBackWhatWasCompressed) {
  std::string data;
  for (int i = 0; i < 100000; ++i) data += static_cast<char>(i * 7 % 251);
  auto compressed = gzip(data);
  ASSERT_TRUE(compressed) << compressed.error().message;
  ASSERT_GE(compressed->size(), 2u);
  EXPECT_EQ(static_cast<uint8_t>((*compressed)[0]), 0x1f);  // gzip's magic
  EXPECT_EQ(static_cast<uint8_t>((*compressed)[1]), 0x8b);
  z_stream z{};
  ASSERT_EQ(inflateInit2(&z, 15 + 16), Z_OK);
  z.next_in = reinterpret_cast<Bytef *>(compressed->data());
  z.avail_in = static_cast<uInt>(compressed->size());
  std::string out(data.size() + 1, '\0');
  z.next_out = reinterpret_cast<Bytef *>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(inflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(out.size() - z.avail_out);
  inflateEnd(&z);
  EXPECT_EQ(out, data);
  auto empty = gzip("");
  ASSERT_TRUE(empty);
  EXPECT_GE(empty->size(), 18u) << "a header and a trailer";
}

}  // namespace
}  // namespace usprobe::cli
