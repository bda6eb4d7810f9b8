// `usprobe stacks --pprof` and `usprobe latency --pprof`: the file is gunzipped and decoded here
// with a wire-format reader of its own (not the CLI's encoder), then checked as pprof would read
// it: string_table[0] is "", every string index is in the table, every id that a sample, location
// or line names resolves, the sample values add up to the hits the text report counts for the
// same run (and to the calls the target is known to make), the probed function's callers come out
// above main, the leaf's mapping names the target's file, its build-id and the offset at which
// it was probed, and the profile says when it started and how long it ran.
#include <zlib.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "e2e_support.h"
#include "elf/elf_file.h"

namespace {

using e2e::Json;
using e2e::Output;
using e2e::run;

const char *stacks_target() {
  return STACKS_TARGET;
}
const char *stacks_target_cc() {
  return STACKS_TARGET_CC;
}
const char *latency_target() {
  return LATENCY_TARGET;
}

// ---- The protobuf wire format, read back ----

// One field of a message: its number and either a varint or a length-delimited payload.
struct Field {
  uint32_t number = 0;
  uint32_t wire = 0;  // 0: varint, 2: length-delimited (the only two profile.proto uses)
  uint64_t varint = 0;
  std::string_view bytes;
};

std::optional<uint64_t> read_varint(std::string_view &in) {
  uint64_t value = 0;
  for (int shift = 0; shift < 64 && !in.empty(); shift += 7) {
    auto byte = static_cast<uint8_t>(in.front());
    in.remove_prefix(1);
    value |= uint64_t{byte & 0x7fu} << shift;
    if ((byte & 0x80) == 0) return value;
  }
  return std::nullopt;  // cut short, or longer than ten bytes
}

// The fields of a message, in order; nullopt when it is malformed.
std::optional<std::vector<Field>> read_fields(std::string_view in) {
  std::vector<Field> out;
  while (!in.empty()) {
    auto key = read_varint(in);
    if (!key) return std::nullopt;
    Field f;
    f.number = static_cast<uint32_t>(*key >> 3);
    f.wire = static_cast<uint32_t>(*key & 7);
    if (f.number == 0) return std::nullopt;
    if (f.wire == 0) {
      auto v = read_varint(in);
      if (!v) return std::nullopt;
      f.varint = *v;
    } else if (f.wire == 2) {
      auto size = read_varint(in);
      if (!size || *size > in.size()) return std::nullopt;
      f.bytes = in.substr(0, *size);
      in.remove_prefix(*size);
    } else {
      return std::nullopt;
    }
    out.push_back(f);
  }
  return out;
}

// A repeated integer field's values: packed (length-delimited) or one varint a field.
bool append_repeated(const Field &f, std::vector<uint64_t> &out) {
  if (f.wire == 0) {
    out.push_back(f.varint);
    return true;
  }
  std::string_view in = f.bytes;
  while (!in.empty()) {
    auto v = read_varint(in);
    if (!v) return false;
    out.push_back(*v);
  }
  return true;
}

struct Label {
  int64_t key = 0, str = 0, num = 0, num_unit = 0;
};
struct Sample {
  std::vector<uint64_t> location_ids;
  std::vector<int64_t> values;
  std::vector<Label> labels;
};
struct Mapping {
  uint64_t id = 0, memory_start = 0, memory_limit = 0, file_offset = 0;
  int64_t filename = 0, build_id = 0;
  bool has_functions = false;
};
struct Location {
  uint64_t id = 0, mapping_id = 0, address = 0;
  std::vector<uint64_t> function_ids;  // one per Line
};
struct Function {
  uint64_t id = 0;
  int64_t name = 0, system_name = 0, filename = 0;
};
struct Profile {
  std::vector<std::pair<int64_t, int64_t>> sample_types;
  std::vector<Sample> samples;
  std::vector<Mapping> mappings;
  std::vector<Location> locations;
  std::vector<Function> functions;
  std::vector<std::string> strings;
  int64_t time_nanos = 0, duration_nanos = 0;
  std::vector<uint64_t> comments;

  const std::string &str(int64_t i) const {
    static const std::string out_of_range = "<string index out of range>";
    return i >= 0 && static_cast<size_t>(i) < strings.size() ? strings[i] : out_of_range;
  }
  const Location *location(uint64_t id) const {
    for (const Location &l : locations)
      if (l.id == id) return &l;
    return nullptr;
  }
  const Mapping *mapping(uint64_t id) const {
    for (const Mapping &m : mappings)
      if (m.id == id) return &m;
    return nullptr;
  }
  const Function *function(uint64_t id) const {
    for (const Function &f : functions)
      if (f.id == id) return &f;
    return nullptr;
  }
  // The function names of a sample's stack, leaf first ("" for an unnamed location).
  std::vector<std::string> names(const Sample &s) const {
    std::vector<std::string> out;
    for (uint64_t id : s.location_ids) {
      const Location *l = location(id);
      const Function *f = l && !l->function_ids.empty() ? function(l->function_ids[0]) : nullptr;
      out.push_back(f ? str(f->name) : "");
    }
    return out;
  }
  // A sample's label with this key; nullptr when it has none.
  const Label *label(const Sample &s, std::string_view key) const {
    for (const Label &l : s.labels)
      if (str(l.key) == key) return &l;
    return nullptr;
  }
};

// Adds a gtest failure and returns false when `fields` is nullopt.
#define FIELDS_OR_FAIL(var, bytes)                      \
  auto var = read_fields(bytes);                        \
  if (!var) {                                           \
    ADD_FAILURE() << "malformed message at " << #bytes; \
    return std::nullopt;                                \
  }

std::optional<Profile> decode(std::string_view data) {
  Profile p;
  FIELDS_OR_FAIL(top, data);
  for (const Field &f : *top) {
    switch (f.number) {
      case 1: {  // sample_type
        FIELDS_OR_FAIL(vt, f.bytes);
        std::pair<int64_t, int64_t> t;
        for (const Field &g : *vt)
          (g.number == 1 ? t.first : t.second) = static_cast<int64_t>(g.varint);
        p.sample_types.push_back(t);
        break;
      }
      case 2: {  // sample
        FIELDS_OR_FAIL(sf, f.bytes);
        Sample s;
        std::vector<uint64_t> values;
        for (const Field &g : *sf) {
          if (g.number == 1 && !append_repeated(g, s.location_ids)) return std::nullopt;
          if (g.number == 2 && !append_repeated(g, values)) return std::nullopt;
          if (g.number == 3) {
            FIELDS_OR_FAIL(lf, g.bytes);
            Label l;
            for (const Field &h : *lf) {
              auto v = static_cast<int64_t>(h.varint);
              if (h.number == 1) l.key = v;
              if (h.number == 2) l.str = v;
              if (h.number == 3) l.num = v;
              if (h.number == 4) l.num_unit = v;
            }
            s.labels.push_back(l);
          }
        }
        for (uint64_t v : values) s.values.push_back(static_cast<int64_t>(v));
        p.samples.push_back(std::move(s));
        break;
      }
      case 3: {  // mapping
        FIELDS_OR_FAIL(mf, f.bytes);
        Mapping m;
        for (const Field &g : *mf) {
          if (g.number == 1) m.id = g.varint;
          if (g.number == 2) m.memory_start = g.varint;
          if (g.number == 3) m.memory_limit = g.varint;
          if (g.number == 4) m.file_offset = g.varint;
          if (g.number == 5) m.filename = static_cast<int64_t>(g.varint);
          if (g.number == 6) m.build_id = static_cast<int64_t>(g.varint);
          if (g.number == 7) m.has_functions = g.varint != 0;
        }
        p.mappings.push_back(m);
        break;
      }
      case 4: {  // location
        FIELDS_OR_FAIL(lf, f.bytes);
        Location l;
        for (const Field &g : *lf) {
          if (g.number == 1) l.id = g.varint;
          if (g.number == 2) l.mapping_id = g.varint;
          if (g.number == 3) l.address = g.varint;
          if (g.number == 4) {
            FIELDS_OR_FAIL(line, g.bytes);
            uint64_t function_id = 0;
            for (const Field &h : *line)
              if (h.number == 1) function_id = h.varint;
            l.function_ids.push_back(function_id);
          }
        }
        p.locations.push_back(std::move(l));
        break;
      }
      case 5: {  // function
        FIELDS_OR_FAIL(ff, f.bytes);
        Function fn;
        for (const Field &g : *ff) {
          if (g.number == 1) fn.id = g.varint;
          if (g.number == 2) fn.name = static_cast<int64_t>(g.varint);
          if (g.number == 3) fn.system_name = static_cast<int64_t>(g.varint);
          if (g.number == 4) fn.filename = static_cast<int64_t>(g.varint);
        }
        p.functions.push_back(fn);
        break;
      }
      case 6:  // string_table
        if (f.wire != 2) return std::nullopt;
        p.strings.emplace_back(f.bytes);
        break;
      case 9:
        p.time_nanos = static_cast<int64_t>(f.varint);
        break;
      case 10:
        p.duration_nanos = static_cast<int64_t>(f.varint);
        break;
      case 13:
        if (!append_repeated(f, p.comments)) return std::nullopt;
        break;
      default:
        break;
    }
  }
  return p;
}

// The gunzipped contents of `data`; nullopt when it is not a complete gzip stream.
std::optional<std::string> gunzip(const std::string &data) {
  z_stream z{};
  if (inflateInit2(&z, 15 + 16) != Z_OK) return std::nullopt;  // gzip only, not zlib or raw
  z.next_in = reinterpret_cast<Bytef *>(const_cast<char *>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  std::string out;
  char buffer[16384];
  int rc = Z_OK;
  while (rc == Z_OK) {
    z.next_out = reinterpret_cast<Bytef *>(buffer);
    z.avail_out = sizeof buffer;
    rc = inflate(&z, Z_NO_FLUSH);
    out.append(buffer, sizeof buffer - z.avail_out);
  }
  bool whole = rc == Z_STREAM_END && z.avail_in == 0;
  inflateEnd(&z);
  if (!whole) return std::nullopt;
  return out;
}

// The profile in `path`, read and checked as pprof's own reader would refuse it: string 0 is "",
// every string index is in the table, ids are unique and nonzero, and every id a sample, a
// location or a line names is there; every sample has one value per sample type.
std::optional<Profile> read_profile(const std::string &path) {
  std::string file = e2e::read_file(path);
  if (file.size() < 2 || static_cast<uint8_t>(file[0]) != 0x1f ||
      static_cast<uint8_t>(file[1]) != 0x8b) {
    ADD_FAILURE() << path << " is not gzipped (" << file.size() << " bytes)";
    return std::nullopt;
  }
  auto raw = gunzip(file);
  if (!raw) {
    ADD_FAILURE() << path << ": not a complete gzip stream";
    return std::nullopt;
  }
  auto decoded = decode(*raw);
  if (!decoded) {
    ADD_FAILURE() << path << ": malformed protobuf";
    return std::nullopt;
  }
  const Profile &p = *decoded;
  EXPECT_FALSE(p.strings.empty()) << "no string table";
  if (!p.strings.empty()) {
    EXPECT_EQ(p.strings[0], "") << "string_table[0] must be empty";
  }
  auto in_table = [&](int64_t i, const std::string &what) {
    EXPECT_TRUE(i >= 0 && static_cast<size_t>(i) < p.strings.size())
        << what << ": string index " << i << " of " << p.strings.size();
  };
  EXPECT_FALSE(p.sample_types.empty());
  for (const auto &[type, unit] : p.sample_types) {
    in_table(type, "sample_type.type");
    in_table(unit, "sample_type.unit");
  }
  std::set<uint64_t> ids;
  for (const Mapping &m : p.mappings) {
    EXPECT_NE(m.id, 0u) << "mapping id 0";
    EXPECT_TRUE(ids.insert(m.id).second) << "mapping id " << m.id << " twice";
    in_table(m.filename, "mapping.filename");
    in_table(m.build_id, "mapping.build_id");
  }
  ids.clear();
  for (const Function &f : p.functions) {
    EXPECT_NE(f.id, 0u) << "function id 0";
    EXPECT_TRUE(ids.insert(f.id).second) << "function id " << f.id << " twice";
    in_table(f.name, "function.name");
    in_table(f.system_name, "function.system_name");
    in_table(f.filename, "function.filename");
  }
  ids.clear();
  for (const Location &l : p.locations) {
    EXPECT_NE(l.id, 0u) << "location id 0";
    EXPECT_TRUE(ids.insert(l.id).second) << "location id " << l.id << " twice";
    if (l.mapping_id != 0) {
      EXPECT_NE(p.mapping(l.mapping_id), nullptr)
          << "location " << l.id << ": no mapping " << l.mapping_id;
    }
    for (uint64_t f : l.function_ids)
      EXPECT_NE(p.function(f), nullptr) << "location " << l.id << ": no function " << f;
  }
  for (const Sample &s : p.samples) {
    EXPECT_EQ(s.values.size(), p.sample_types.size()) << "a value per sample type";
    EXPECT_FALSE(s.location_ids.empty()) << "a sample without a stack";
    for (uint64_t id : s.location_ids) EXPECT_NE(p.location(id), nullptr) << "no location " << id;
    for (const Label &l : s.labels) {
      in_table(l.key, "label.key");
      in_table(l.str, "label.str");
      in_table(l.num_unit, "label.num_unit");
    }
  }
  for (uint64_t c : p.comments) in_table(static_cast<int64_t>(c), "comment");
  return decoded;
}

int64_t now_nanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// time_nanos inside [before, after] (the test's own clock around the run), duration_nanos > 0 and
// no longer than the run.
void expect_times(const Profile &p, int64_t before, int64_t after) {
  EXPECT_GE(p.time_nanos, before);
  EXPECT_LE(p.time_nanos, after);
  EXPECT_GT(p.duration_nanos, 0);
  EXPECT_LE(p.duration_nanos, after - before);
}

std::string joined(const std::vector<std::string> &names) {
  std::string out;
  for (const std::string &n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// The count that the text report's summary line ("N stacks, M distinct, K lost") gives.
uint64_t stacks_in_summary(const std::string &text) {
  for (const std::string &line : e2e::lines(text))
    if (line.find(" distinct, ") != std::string::npos && line.ends_with(" lost"))
      return std::stoull(line);
  ADD_FAILURE() << "no summary line in\n" << text;
  return 0;
}

// ---- The tests ----

// stacks_target 7 11: main -> path_a -> shared_leaf 7 times, main -> path_b -> middle ->
// shared_leaf 11 times; one sample for each path, its count, its callers above main.
TEST(Pprof, StacksProfileHasASamplePerCallPathWithItsCount) {
  e2e::TempDir dir;
  const std::string file = dir.file("stacks.pb.gz");
  const int64_t before = now_nanos();
  Output r = run({e2e::cli(), "stacks", "-o", "-", "--pprof", file, "exe:shared_leaf", "--",
                  stacks_target(), "7", "11"});
  const int64_t after = now_nanos();
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.err.find("usprobe: pprof profile written to " + file), std::string::npos) << r.err;
  auto p = read_profile(file);
  ASSERT_TRUE(p);

  ASSERT_EQ(p->sample_types.size(), 1u);
  EXPECT_EQ(p->str(p->sample_types[0].first), "calls");
  EXPECT_EQ(p->str(p->sample_types[0].second), "count");
  expect_times(*p, before, after);

  // The values add up to what the text report counted, and to the calls the target made.
  int64_t sum = 0;
  for (const Sample &s : p->samples) sum += s.values.at(0);
  EXPECT_EQ(static_cast<uint64_t>(sum), stacks_in_summary(r.out)) << r.out;
  EXPECT_EQ(sum, 7 + 11);

  // Each path's callers above the probed function, then main, with its count.
  std::map<std::string, int64_t> by_path;  // the frames up to main
  for (const Sample &s : p->samples) {
    std::vector<std::string> names = p->names(s);
    std::string path;
    for (const std::string &n : names) {
      path += (path.empty() ? "" : ";") + n;
      if (n == "main") break;
    }
    by_path[path] += s.values.at(0);
    const Label *comm = p->label(s, "comm");
    ASSERT_NE(comm, nullptr) << joined(names);
    EXPECT_EQ(p->str(comm->str), "stacks_target");
    EXPECT_EQ(p->label(s, "pid"), nullptr) << "a pid label without -P";
  }
  EXPECT_EQ(by_path["shared_leaf;path_a;main"], 7) << r.out;
  EXPECT_EQ(by_path["shared_leaf;middle;path_b;main"], 11) << r.out;
  EXPECT_EQ(by_path.size(), 2u);

  // The leaf's mapping is the target's file: its path, its build-id, and the probed function's
  // file offset at the leaf's address.
  const std::string target = e2e::realpath_of(stacks_target());
  auto elf = usprobe::elf::ElfFile::open(target);
  ASSERT_TRUE(elf) << target;
  auto leaf_function = e2e::function_in(target, "shared_leaf");
  ASSERT_TRUE(leaf_function);
  for (const Sample &s : p->samples) {
    const Location *leaf = p->location(s.location_ids.at(0));
    ASSERT_NE(leaf, nullptr);
    const Mapping *m = p->mapping(leaf->mapping_id);
    ASSERT_NE(m, nullptr) << "the leaf has no mapping";
    EXPECT_EQ(p->str(m->filename), target);
    EXPECT_FALSE((*elf)->build_id().empty()) << target << " has no build-id to compare";
    EXPECT_EQ(p->str(m->build_id), (*elf)->build_id());
    EXPECT_TRUE(m->has_functions);
    EXPECT_GE(leaf->address, m->memory_start);
    EXPECT_LT(leaf->address, m->memory_limit);
    EXPECT_EQ(leaf->address - m->memory_start + m->file_offset, leaf_function->offset);
    // A C function: its name in the file is its readable name.
    const Function *f = p->function(leaf->function_ids.at(0));
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(p->str(f->system_name), "shared_leaf");
  }
  // pprof takes mapping 1 for the program.
  ASSERT_FALSE(p->mappings.empty());
  EXPECT_EQ(p->str(p->mappings[0].filename), target);
}

// -P: a numeric "pid" label per sample; a forked child's path_a stacks and its parent's path_b
// stacks carry their own processes' PIDs.
TEST(Pprof, PerPidStacksCarryEachProcesssPid) {
  e2e::TempDir dir;
  const std::string file = dir.file("stacks.pb.gz");
  Output r = run({e2e::cli(), "stacks", "-P", "-o", "-", "--pprof", file, "exe:shared_leaf", "--",
                  stacks_target(), "fork"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  auto p = read_profile(file);
  ASSERT_TRUE(p);
  std::map<std::string, int64_t> pid_of;  // the frame above shared_leaf -> its process
  int64_t sum = 0;
  for (const Sample &s : p->samples) {
    std::vector<std::string> names = p->names(s);
    ASSERT_GE(names.size(), 2u);
    const Label *pid = p->label(s, "pid");
    ASSERT_NE(pid, nullptr) << joined(names);
    EXPECT_GT(pid->num, 0);
    EXPECT_EQ(pid->str, 0) << "a number, not a string";
    auto [it, inserted] = pid_of.try_emplace(names[1], pid->num);
    EXPECT_EQ(it->second, pid->num) << names[1] << " in two processes";
    sum += s.values.at(0);
  }
  EXPECT_EQ(sum, 3 + 5);
  ASSERT_EQ(pid_of.count("path_a"), 1u);
  ASSERT_EQ(pid_of.count("middle"), 1u);
  EXPECT_NE(pid_of["path_a"], pid_of["middle"]) << "the child's stacks under the parent's PID";
}

// C++: a function's name is demangled, its system_name the mangled name in the file.
TEST(Pprof, CppFunctionsHaveTheirMangledNameAsSystemName) {
  e2e::TempDir dir;
  const std::string file = dir.file("stacks.pb.gz");
  Output r = run({e2e::cli(), "stacks", "-o", "-", "--pprof", file,
                  "exe:_ZN11stacks_demo6Parser5parseEi", "--", stacks_target_cc()});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  auto p = read_profile(file);
  ASSERT_TRUE(p);
  ASSERT_EQ(p->samples.size(), 1u);
  EXPECT_EQ(p->samples[0].values.at(0), 4);
  const Location *leaf = p->location(p->samples[0].location_ids.at(0));
  ASSERT_NE(leaf, nullptr);
  const Function *f = p->function(leaf->function_ids.at(0));
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(p->str(f->name), "stacks_demo::Parser::parse(int)");
  EXPECT_EQ(p->str(f->system_name), "_ZN11stacks_demo6Parser5parseEi");
  std::vector<std::string> names = p->names(p->samples[0]);
  ASSERT_GE(names.size(), 3u);
  EXPECT_EQ(names[1], "void stacks_demo::run<int>(int)") << joined(names);
  EXPECT_EQ(names[2], "main") << joined(names);
}

// latency_target 2 6 1500 3: 6 calls of latency_sleep (2 ms each), 3 threads x 1500 calls of
// latency_fast. A sample per function: [calls, total nanoseconds], as the JSON report has them.
TEST(Pprof, LatencyProfileHasEachFunctionsCallsAndTotalTime) {
  e2e::TempDir dir;
  const std::string file = dir.file("latency.pb.gz");
  const int64_t before = now_nanos();
  Output r = run({e2e::cli(), "latency", "-o", "-", "--json", "--pprof", file, "exe:latency_sleep",
                  "exe:latency_fast", "--", latency_target(), "2", "6", "1500", "3"});
  const int64_t after = now_nanos();
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  auto p = read_profile(file);
  ASSERT_TRUE(p);
  ASSERT_EQ(p->sample_types.size(), 2u);
  EXPECT_EQ(p->str(p->sample_types[0].first), "calls");
  EXPECT_EQ(p->str(p->sample_types[0].second), "count");
  EXPECT_EQ(p->str(p->sample_types[1].first), "latency");
  EXPECT_EQ(p->str(p->sample_types[1].second), "nanoseconds");
  expect_times(*p, before, after);

  std::map<std::string, const Json *> totals;
  std::vector<Json> reports = e2e::json_lines(r.out);
  for (const Json &j : reports)
    if (j.is_object() && j.value("type", "") == "total") totals[j.value("probe", "")] = &j;
  ASSERT_EQ(totals.size(), 2u) << r.out;

  const std::string target = e2e::realpath_of(latency_target());
  auto elf = usprobe::elf::ElfFile::open(target);
  ASSERT_TRUE(elf) << target;
  ASSERT_EQ(p->samples.size(), 2u);
  std::set<std::string> seen;
  for (const Sample &s : p->samples) {
    ASSERT_EQ(s.location_ids.size(), 1u) << "the probed function alone";
    std::string name = p->names(s).at(0);
    seen.insert(name);
    const Json *total = totals["exe:" + name];
    ASSERT_NE(total, nullptr) << name << "\n" << r.out;
    const auto calls = total->value("count", uint64_t{0});
    EXPECT_EQ(s.values.at(0), static_cast<int64_t>(calls)) << total->dump();
    // avg_ns is rounded to a tenth of a nanosecond.
    const double sum_ns = total->value("avg_ns", 0.0) * static_cast<double>(calls);
    EXPECT_NEAR(static_cast<double>(s.values.at(1)), sum_ns, 0.1 * static_cast<double>(calls) + 1)
        << total->dump();
    // The location is the function's entry in the target's file, by file offset.
    const Location *l = p->location(s.location_ids[0]);
    const Mapping *m = p->mapping(l->mapping_id);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(p->str(m->filename), target);
    EXPECT_EQ(p->str(m->build_id), (*elf)->build_id());
    auto fn = e2e::function_in(target, name);
    ASSERT_TRUE(fn) << name;
    EXPECT_EQ(l->address - m->memory_start + m->file_offset, fn->offset);
  }
  EXPECT_EQ(seen, (std::set<std::string>{"latency_sleep", "latency_fast"}));
  // The known calls: 6 sleeps of at least 2 ms each, 4,500 fast calls.
  for (const Sample &s : p->samples) {
    if (p->names(s).at(0) == "latency_sleep") {
      EXPECT_EQ(s.values.at(0), 6);
      EXPECT_GE(s.values.at(1), 6 * 2'000'000);
    } else {
      EXPECT_EQ(s.values.at(0), 4500);
    }
  }
}

// A file that cannot be created: one line naming it and why, exit status 2, and the command never
// ran.
TEST(Pprof, UncreatableFileIsRefusedBeforeTheCommandStarts) {
  e2e::TempDir dir;
  const std::string file = dir.file("no-such-dir/profile.pb.gz");
  Output s = run({e2e::cli(), "stacks", "--pprof", file, "exe:shared_leaf", "--", stacks_target()});
  e2e::expect_refused(s, file, "a 3 b 5");
  EXPECT_NE(s.err.find("No such file or directory"), std::string::npos) << s.err;
  Output l = run({e2e::cli(), "latency", "--pprof", file, "exe:latency_fast", "--",
                  latency_target(), "0", "0", "10", "1"});
  e2e::expect_refused(l, file, "slept 0");
  EXPECT_NE(l.err.find("No such file or directory"), std::string::npos) << l.err;
}

}  // namespace
