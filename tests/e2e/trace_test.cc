// `usprobe trace`: the arguments of real calls, printed through BCC-style formats, as text and as
// JSON; strings and integers exactly as the program passed them, in order; a bad string pointer
// neither crashes the command nor shows garbage; events name the thread that made them.
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "e2e_support.h"

#include "support/text_match.h"

namespace rx = usprobe::test;

namespace {

using e2e::Json;
using e2e::Output;
using e2e::run;

// One line of text output: "[<time>] <pid> <tid> <comm> <probe> <message>" (the time with -t).
// Columns may be padded, so the message is taken from its first non-blank character.
struct Event {
  std::string time;
  long pid = 0, tid = 0;
  std::string probe, message;
  std::string comm;
};

// The events and the header of the text output, from stdout (and stderr, wherever they are).
struct TextTrace {
  bool header = false;  // a line starting "TIME(s)" or "PID" came before the first event
  std::vector<Event> events;
};

TextTrace parse_text(const Output &r) {
  static const rx::regex event_line(
      R"(^\s*(?:([0-9]+\.[0-9]{6})\s+)?([0-9]+)\s+([0-9]+)\s+(\S+)\s+(\S+)\s*(.*)$)");
  TextTrace trace;
  for (const std::string *text : {&r.out, &r.err}) {
    for (const std::string &line : e2e::lines(*text)) {
      if (e2e::starts_with(line, "TIME(s)") || e2e::starts_with(line, "PID")) {
        if (trace.events.empty()) trace.header = true;
        continue;
      }
      rx::smatch m;
      if (!rx::regex_match(line, m, event_line)) continue;
      trace.events.push_back(Event{m[1], std::stol(m[2]), std::stol(m[3]), m[5], m[6], m[4]});
    }
  }
  return trace;
}

std::string summary_line(size_t events) {
  return "usprobe: " + std::to_string(events) + " events, 0 lost";
}

bool has_line(const std::string &text, const std::string &want) {
  for (const std::string &line : e2e::lines(text))
    if (line == want) return true;
  return false;
}

// The %s rendering of a string that could not be read must not be bytes from anywhere: no other
// call's string, nothing unprintable, nothing long.
void expect_placeholder(const std::string &shown) {
  EXPECT_LT(shown.size(), 40u) << shown;
  for (char c : shown)
    EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "unprintable byte in \"" << shown << '"';
  for (const char *other : {"alice", "bob", "carol", "dave"})
    EXPECT_EQ(shown.find(other), std::string::npos) << "stale string in \"" << shown << '"';
}

const char *kGreetOutput =
    "hello alice 1\nhello bob 22\nhello carol -3\nhello (bad pointer) 4\nhello dave 5\n";

TEST(CliTrace, TextShowsStringsAndIntegersAsCalledInOrder) {
  Output r = run({e2e::cli(), "trace", "-t", R"(exe:e2e_greet "%s %d", arg0, arg1)", "--",
                  e2e::target(), "greet"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  for (const std::string &line : e2e::lines(kGreetOutput))
    EXPECT_TRUE(has_line(r.out, line)) << line << "\n" << r.describe();
  TextTrace trace = parse_text(r);
  EXPECT_TRUE(trace.header) << "no TIME(s) header before the events\n" << r.describe();
  ASSERT_EQ(trace.events.size(), 5u) << r.describe();
  const std::vector<std::string> want = {"alice 1", "bob 22", "carol -3", "", "dave 5"};
  for (size_t i = 0; i < 5; ++i) {
    const Event &e = trace.events[i];
    EXPECT_EQ(e.probe, "exe:e2e_greet");
    EXPECT_EQ(e.comm, "e2e_target") << "the COMM column names the thread";
    EXPECT_EQ(e.pid, trace.events[0].pid);
    EXPECT_EQ(e.tid, e.pid) << "the main thread made every call";
    if (i > 0) {
      EXPECT_LE(std::stod(trace.events[i - 1].time), std::stod(e.time));
    }
    if (i == 3) {
      // "<placeholder> 4", or "4" when the placeholder is empty.
      ASSERT_TRUE(e.message.ends_with("4")) << e.message;
      std::string shown = e.message.substr(0, e.message.size() - 1);
      while (!shown.empty() && shown.back() == ' ') shown.pop_back();
      expect_placeholder(shown);
    } else {
      EXPECT_EQ(e.message, want[i]);
    }
  }
  EXPECT_TRUE(has_line(r.err, summary_line(5))) << r.describe();
}

TEST(CliTrace, JsonEventsCarryArgsAndMessage) {
  e2e::TempDir dir;
  const std::string file = dir.file("trace.json");
  Output r = run({e2e::cli(), "trace", "--json", "-o", file, R"(exe:e2e_greet "%s %d", arg0, arg1)",
                  "--", e2e::target(), "greet"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out, kGreetOutput) << "the command's output must be unchanged";
  EXPECT_TRUE(has_line(r.err, summary_line(5))) << r.describe();
  std::vector<Json> events = e2e::json_lines(e2e::read_file(file));
  ASSERT_EQ(events.size(), 5u) << e2e::read_file(file);
  const std::vector<std::string> names = {"alice", "bob", "carol", "", "dave"};
  const std::vector<int> numbers = {1, 22, -3, 4, 5};
  double last_time = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    const Json &e = events[i];
    ASSERT_TRUE(e.is_object()) << e.dump();
    EXPECT_EQ(e.value("probe", ""), "exe:e2e_greet") << e.dump();
    ASSERT_TRUE(e.contains("time_s") && e["time_s"].is_number()) << e.dump();
    EXPECT_GE(e["time_s"].get<double>(), last_time) << e.dump();
    last_time = e["time_s"].get<double>();
    ASSERT_TRUE(e.contains("pid") && e.contains("tid")) << e.dump();
    EXPECT_EQ(e["pid"], events[0]["pid"]) << e.dump();
    EXPECT_EQ(e["tid"], e["pid"]) << e.dump();
    ASSERT_TRUE(e.contains("args") && e["args"].is_array() && e["args"].size() == 2) << e.dump();
    ASSERT_TRUE(e["args"][1].is_number_integer()) << "%d arguments are numbers: " << e.dump();
    EXPECT_EQ(e["args"][1].get<int>(), numbers[i]) << e.dump();
    EXPECT_EQ(e.value("comm", ""), "e2e_target") << e.dump();
    if (i == 3) {
      // A string that could not be read is no string: null, and the reason beside it.
      EXPECT_TRUE(e["args"][0].is_null()) << e.dump();
      ASSERT_TRUE(e.contains("errors") && e["errors"].is_object()) << e.dump();
      EXPECT_EQ(e["errors"].value("arg0", ""), "bad address 0x10") << e.dump();
      const std::string message = e.value("message", "");
      ASSERT_TRUE(message.ends_with(" 4")) << e.dump();
      expect_placeholder(message.substr(0, message.size() - 2));
      continue;
    }
    EXPECT_FALSE(e.contains("errors")) << e.dump();
    ASSERT_TRUE(e["args"][0].is_string()) << "%s arguments are strings: " << e.dump();
    EXPECT_EQ(e["args"][0].get<std::string>(), names[i]) << e.dump();
    EXPECT_EQ(e.value("message", ""), names[i] + " " + std::to_string(numbers[i])) << e.dump();
  }
  // Every line is JSON as another tool reads it, not only as this test's parser does.
  if (e2e::file_exists("/usr/bin/python3")) {
    Output parsed = run({"/usr/bin/python3", "-c",
                         "import json, sys\n"
                         "events = [json.loads(l) for l in open(sys.argv[1])]\n"
                         "print(len(events), events[3]['args'][0], events[3]['errors']['arg0'])",
                         file});
    EXPECT_EQ(parsed.out, "5 None bad address 0x10\n") << parsed.describe();
  }
}

TEST(CliTrace, ReturnProbePrintsEachReturnValue) {
  // e2e_work(i) returns i + 1.
  e2e::TempDir dir;
  const std::string file = dir.file("trace.json");
  Output r = run({e2e::cli(), "trace", "--json", "-o", file,
                  R"(uretprobe:exe:e2e_work "got %d", retval)", "--", e2e::target(), "calls", "5"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> events = e2e::json_lines(e2e::read_file(file));
  ASSERT_EQ(events.size(), 5u) << e2e::read_file(file) << r.describe();
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(events[i].value("probe", ""), "uretprobe:exe:e2e_work");
    EXPECT_EQ(events[i].value("message", ""), "got " + std::to_string(i + 1)) << events[i].dump();
  }
}

// A return probe prints what the call was given beside what it returned, on one line: cat
// opens the file by its path (open or openat, by libc's choice), and the descriptor comes back.
// -t, -T and -D add their columns in front, and COMM names the command.
TEST(CliTrace, ReturnProbeShowsItsCallsArgumentsBesideRetvalWithTimesAndDuration) {
  e2e::TempDir dir;
  const std::string report = dir.file("trace.txt"), input = dir.file("input.txt");
  { std::ofstream(input) << "some text\n"; }
  auto seconds_of_day = [] {
    time_t now = ::time(nullptr);
    tm local;
    ::localtime_r(&now, &local);
    return local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec;
  };
  const int before = seconds_of_day();
  Output r = run({e2e::cli(), "trace", "-t", "-T", "-D", "-o", report,
                  R"(uretprobe:libc:open "%s -> %d", arg0, retval)",
                  R"(uretprobe:libc:openat "%s -> %d", arg1, retval)", "--", "cat", input});
  const int after = seconds_of_day();
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out, "some text\n") << "the command's output must be unchanged";
  const std::string text = e2e::read_file(report);
  std::vector<std::string> lines = e2e::lines(text);
  ASSERT_FALSE(lines.empty()) << text;
  EXPECT_TRUE(rx::regex_match(lines[0], rx::regex(R"(TIME +TIME\(s\) +PID +TID +COMM +)"
                                                  R"(DURATION\(us\) +PROBE +MESSAGE)")))
      << lines[0];
  static const rx::regex event_line(R"(^([0-9]{2}):([0-9]{2}):([0-9]{2}) +([0-9]+\.[0-9]{6}) +)"
                                    R"(([0-9]+) +([0-9]+) +(\S+) +([0-9]+\.[0-9]{3}) +)"
                                    R"((uretprobe:libc:open(?:at)?) +(.*)$)");
  int seen = 0;
  for (const std::string &line : lines) {
    rx::smatch m;
    if (!rx::regex_match(line, m, event_line)) continue;
    const std::string message = m[10];
    if (!message.starts_with(input + " -> ")) continue;  // the loader's and libc's own opens
    ++seen;
    long fd = std::stol(message.substr(input.size() + 4));
    EXPECT_GE(fd, 3) << "a descriptor after stdin, stdout and stderr: " << line;
    EXPECT_EQ(m[7], "cat") << line;
    EXPECT_GT(std::stod(m[8]), 0.0) << "DURATION(us): " << line;
    EXPECT_GT(std::stod(m[4]), 0.0) << "TIME(s): " << line;
    const int wall = std::stoi(m[1]) * 3600 + std::stoi(m[2]) * 60 + std::stoi(m[3]);
    if (before <= after) {  // not across midnight
      EXPECT_TRUE(wall >= before && wall <= after) << "TIME: " << line;
    }
  }
  EXPECT_EQ(seen, 1) << text;
}

// The same in JSON, on the program's own function: e2e_work(i) returns i + 1; -U gives each
// event its user stack, down to main, and -D the call's duration_ns.
TEST(CliTrace, JsonReturnEventsCarryArgumentsRetvalDurationAndStack) {
  e2e::TempDir dir;
  const std::string file = dir.file("trace.json");
  Output r = run({e2e::cli(), "trace", "--json", "-D", "-U", "-o", file,
                  R"(uretprobe:exe:e2e_work "%d -> %d", arg0, retval)", "--", e2e::target(),
                  "calls", "3"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> events = e2e::json_lines(e2e::read_file(file));
  ASSERT_EQ(events.size(), 3u) << e2e::read_file(file);
  for (int i = 0; i < 3; ++i) {
    const Json &e = events[i];
    EXPECT_EQ(e.value("message", ""), std::to_string(i) + " -> " + std::to_string(i + 1))
        << e.dump();
    EXPECT_EQ(e["args"], Json::array({i, i + 1})) << e.dump();
    ASSERT_TRUE(e.contains("duration_ns") && e["duration_ns"].is_number_unsigned()) << e.dump();
    EXPECT_GT(e["duration_ns"].get<uint64_t>(), 0u) << e.dump();
    ASSERT_TRUE(e.contains("stack") && e["stack"].is_array()) << e.dump();
    bool main_seen = false;
    for (const Json &frame : e["stack"]) main_seen |= frame.get<std::string>().starts_with("main+");
    EXPECT_TRUE(main_seen) << e.dump();
  }
}

// -U in text: each event's frames under its line, indented, innermost first.
TEST(CliTrace, UserStacksFollowEachEventInText) {
  e2e::TempDir dir;
  const std::string file = dir.file("trace.txt");
  Output r = run(
      {e2e::cli(), "trace", "-U", "-o", file, "exe:e2e_work", "--", e2e::target(), "calls", "2"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const std::string text = e2e::read_file(file);
  std::vector<std::vector<std::string>> stacks;
  for (const std::string &line : e2e::lines(text)) {
    if (line.find("exe:e2e_work") != std::string::npos)
      stacks.emplace_back();
    else if (line.starts_with("        ") && !stacks.empty())
      stacks.back().push_back(line.substr(8));
  }
  ASSERT_EQ(stacks.size(), 2u) << text;
  for (const std::vector<std::string> &frames : stacks) {
    ASSERT_GE(frames.size(), 2u) << text;
    EXPECT_TRUE(frames[0].starts_with("e2e_work+0x0 [")) << text;
    EXPECT_TRUE(std::ranges::any_of(frames, [](const std::string &f) {
      return f.starts_with("main+");
    })) << text;
  }
}

// -M N: exactly N events, then the session ends as -d ends it, however long the command would run.
TEST(CliTrace, MaxEventsPrintsThatManyAndEndsTheSession) {
  e2e::TempDir dir;
  const std::string file = dir.file("trace.txt");
  Output r = run({e2e::cli(), "trace", "-M", "3", "-o", file, "exe:e2e_work", "--", e2e::target(),
                  "ticks", "3000", "10"},
                 std::chrono::seconds(20));
  ASSERT_FALSE(r.timed_out) << r.describe();
  EXPECT_EQ(r.exit_code(), 0) << "usprobe ended the run itself\n" << r.describe();
  EXPECT_EQ(r.out.find("ticks 3000"), std::string::npos) << "the command ran to its end\n"
                                                         << r.describe();
  std::vector<std::string> lines = e2e::lines(e2e::read_file(file));
  ASSERT_EQ(lines.size(), 4u) << e2e::read_file(file);  // the header and 3 events
  for (size_t i = 1; i < lines.size(); ++i)
    EXPECT_NE(lines[i].find("exe:e2e_work"), std::string::npos) << lines[i];
  EXPECT_TRUE(has_line(r.err, summary_line(3))) << r.describe();
}

TEST(CliTrace, RetvalAtAFunctionsEntryIsRefused) {
  Output r =
      run({e2e::cli(), "trace", R"(exe:e2e_work "%d", retval)", "--", e2e::target(), "calls", "5"});
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  EXPECT_NE(r.err.find("'retval' is known at a return only"), std::string::npos) << r.describe();
  EXPECT_TRUE(r.out.empty()) << "the command ran: " << r.describe();
}

TEST(CliTrace, EveryConversionPrintsTheArgumentAsCProgramsWould) {
  // e2e_args("xyz", -5, 3000000000u, -1234567890123L, 0xdeadbeefcafeUL, 'Q')
  e2e::TempDir dir;
  const std::string file = dir.file("trace.json");
  Output r =
      run({e2e::cli(), "trace", "--json", "-o", file,
           R"(exe:e2e_args "s=%s i=%d u=%u l=%ld ul=%lu c=%c", arg0, arg1, arg2, arg3, arg4, arg5)",
           "--", e2e::target(), "args"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  std::vector<Json> events = e2e::json_lines(e2e::read_file(file));
  ASSERT_EQ(events.size(), 1u) << e2e::read_file(file) << r.describe();
  EXPECT_EQ(events[0].value("message", ""),
            "s=xyz i=-5 u=3000000000 l=-1234567890123 ul=244837814094590 c=Q")
      << events[0].dump();
  // %s and %c are JSON strings, the integer conversions numbers.
  EXPECT_EQ(events[0]["args"], Json::parse(R"(["xyz", -5, 3000000000, -1234567890123,
                                                244837814094590, "Q"])"))
      << events[0].dump();
}

TEST(CliTrace, WidthsHexAndPointersFormatLikePrintf) {
  Output r = run(
      {e2e::cli(), "trace",
       R"(exe:e2e_args "[%5s] [%4d] [%x] [%lx] [%p] [%3c]", arg0, arg1, arg2, arg4, arg4, arg5)",
       "--", e2e::target(), "args"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  TextTrace trace = parse_text(r);
  ASSERT_EQ(trace.events.size(), 1u) << r.describe();
  EXPECT_EQ(trace.events[0].message,
            "[  xyz] [  -5] [b2d05e00] [deadbeefcafe] [0xdeadbeefcafe] [  Q]")
      << r.describe();
  EXPECT_TRUE(has_line(r.err, summary_line(1))) << r.describe();
}

TEST(CliTrace, ABadStringPointerDoesNotCrashTheCommand) {
  Output r =
      run({e2e::cli(), "trace", R"(exe:e2e_greet "%s", arg0)", "--", e2e::target(), "greet"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_TRUE(has_line(r.out, "hello dave 5")) << "the command stopped at the bad pointer\n"
                                               << r.describe();
  TextTrace trace = parse_text(r);
  ASSERT_EQ(trace.events.size(), 5u) << r.describe();
  EXPECT_EQ(trace.events[2].message, "carol");
  expect_placeholder(trace.events[3].message);
  EXPECT_EQ(trace.events[4].message, "dave");
}

// Each thread's events carry the command's pid and that thread's own tid, and come in the order
// the thread made the calls.
void expect_threads(const std::vector<Event> &events, size_t threads, int calls) {
  ASSERT_EQ(events.size(), threads * calls);
  std::map<long, std::vector<int>> by_tid;
  for (const Event &e : events) {
    EXPECT_EQ(e.pid, events[0].pid);
    EXPECT_NE(e.tid, e.pid) << "the main thread made no call";
    by_tid[e.tid].push_back(std::stoi(e.message));
  }
  EXPECT_EQ(by_tid.size(), threads);
  std::vector<int> in_order;
  for (int i = 0; i < calls; ++i) in_order.push_back(i);
  for (const auto &[tid, values] : by_tid) EXPECT_EQ(values, in_order) << "tid " << tid;
}

TEST(CliTrace, TextEventsCarryTheirThreadsPidAndTid) {
  Output r = run({e2e::cli(), "trace", R"(exe:e2e_work "%d", arg0)", "--", e2e::target(), "threads",
                  "4", "50"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  TextTrace trace = parse_text(r);
  for (const Event &e : trace.events) EXPECT_EQ(e.probe, "exe:e2e_work");
  expect_threads(trace.events, 4, 50);
  EXPECT_TRUE(has_line(r.err, summary_line(200))) << r.describe();
}

TEST(CliTrace, JsonEventsCarryTheirThreadsPidAndTid) {
  e2e::TempDir dir;
  const std::string file = dir.file("trace.json");
  Output r = run({e2e::cli(), "trace", "--json", "-o", file, R"(exe:e2e_work "%d", arg0)", "--",
                  e2e::target(), "threads", "4", "50"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out, "threads 4 x 50\n");
  std::vector<Event> events;
  for (const Json &j : e2e::json_lines(e2e::read_file(file))) {
    ASSERT_TRUE(j.is_object() && j.contains("pid") && j.contains("tid") && j.contains("args"))
        << j.dump();
    ASSERT_EQ(j["args"].size(), 1u) << j.dump();
    events.push_back(Event{"", j["pid"].get<long>(), j["tid"].get<long>(), j.value("probe", ""),
                           std::to_string(j["args"][0].get<long>()), j.value("comm", "")});
  }
  expect_threads(events, 4, 50);
  EXPECT_TRUE(has_line(r.err, summary_line(200))) << r.describe();
}

TEST(CliTrace, ProbeWithoutFormatPrintsOneLinePerCall) {
  Output r = run({e2e::cli(), "trace", "exe:e2e_work", "--", e2e::target(), "calls", "3"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  TextTrace trace = parse_text(r);
  ASSERT_EQ(trace.events.size(), 3u) << r.describe();
  for (const Event &e : trace.events) EXPECT_EQ(e.probe, "exe:e2e_work");
  EXPECT_TRUE(has_line(r.err, summary_line(3))) << r.describe();
}

// Rates and buffers
// --------------------------------------------------------------------------------

const char *trace_target() {
  return TRACE_TARGET;
}

// The events of a text trace written to a file, taken apart without a regex (there are many):
// by tid, the messages in the order printed.
std::map<long, std::vector<std::string>> messages_by_tid(const std::string &path, size_t &events) {
  std::map<long, std::vector<std::string>> by_tid;
  std::ifstream in(path);
  std::string line;
  events = 0;
  while (std::getline(in, line)) {
    if (e2e::starts_with(line, "PID")) continue;
    // PID TID COMM PROBE MESSAGE
    std::vector<std::string> fields;
    size_t at = 0;
    while (fields.size() < 5) {
      size_t b = line.find_first_not_of(' ', at);
      if (b == std::string::npos) break;
      size_t e = fields.size() == 4 ? line.size() : line.find(' ', b);
      if (e == std::string::npos) e = line.size();
      fields.push_back(line.substr(b, e - b));
      at = e;
    }
    if (fields.size() != 5) continue;
    by_tid[std::atol(fields[1].c_str())].push_back(fields[4]);
    ++events;
  }
  return by_tid;
}

TEST(CliTrace, BufferSizeOptionTakesAMillionCallsOfATightLoopWhole) {
  // A tight loop hits the probe tens of millions of times a second, faster than any reader: with a
  // buffer that holds all of them, none may be lost, however late the CLI gets to run.
  Output r = run({e2e::cli(), "trace", "--buffer-size", "128M", "-o", "/dev/null", "exe:e2e_work",
                  "--", e2e::target(), "calls", "1000000"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out, "calls 1000000\n");
  EXPECT_TRUE(has_line(r.err, summary_line(1000000))) << r.describe();
}

TEST(CliTrace, DefaultBuffersLoseNothingAtHalfAMillionCallsASecondPerThread) {
  // 2 threads x 200,000 calls at 500,000 a second each: 14.4 MB of records per thread, which the
  // default buffer holds whole even if the CLI never ran before the command ended (so the result
  // does not depend on the machine's load). The old 256 KiB buffers lost most of them.
  e2e::TempDir dir;
  const std::string file = dir.file("trace.txt");
  Output r = run({e2e::cli(), "trace", "-o", file, R"(exe:trace_work "%ld", arg0)", "--",
                  trace_target(), "loop", "2", "200000", "500000"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_TRUE(has_line(r.err, summary_line(400000))) << r.describe();
  size_t events = 0;
  auto by_tid = messages_by_tid(file, events);
  EXPECT_EQ(events, 400000u);
  ASSERT_EQ(by_tid.size(), 2u);
  for (const auto &[tid, messages] : by_tid) {
    ASSERT_EQ(messages.size(), 200000u) << "tid " << tid;
    for (size_t i = 0; i < messages.size(); ++i)
      if (messages[i] != std::to_string(i)) {
        ADD_FAILURE() << "tid " << tid << ": event " << i << " is \"" << messages[i] << '"';
        break;
      }
  }
}

TEST(CliTrace, DemoWorkloadTracesEveryMallocThatCountSees) {
  const char *sqlite = "/usr/bin/sqlite3";
  if (!e2e::file_exists(sqlite)) GTEST_SKIP() << sqlite << " is not installed (apt sqlite3)";
  const std::vector<std::string> command = {sqlite, ":memory:", std::string(".read ") + DEMO_SQL};
  std::vector<std::string> count = {e2e::cli(), "count", "--json", "libc:malloc", "--"};
  count.insert(count.end(), command.begin(), command.end());
  Output counted = run(count);
  ASSERT_EQ(counted.exit_code(), 0) << counted.describe();
  uint64_t hits = e2e::hits_of(e2e::only_total(counted), "libc:malloc");
  ASSERT_GT(hits, 1000u) << counted.describe();

  std::vector<std::string> trace = {e2e::cli(), "trace", "-o", "/dev/null", "libc:malloc", "--"};
  trace.insert(trace.end(), command.begin(), command.end());
  Output traced = run(trace);
  ASSERT_EQ(traced.exit_code(), 0) << traced.describe();
  EXPECT_TRUE(has_line(traced.err, summary_line(hits))) << "count saw " << hits << " calls\n"
                                                        << traced.describe();
}

// Strings ----------------------------------------------------------------------------------------

std::string traced_name(const std::string &name, std::vector<std::string> options = {}) {
  std::vector<std::string> argv = {e2e::cli(), "trace"};
  argv.insert(argv.end(), options.begin(), options.end());
  for (const char *a : {R"(exe:trace_name "[%s]", arg0)", "--", trace_target(), "name"})
    argv.push_back(a);
  argv.push_back(name);
  Output r = run(argv);
  EXPECT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_TRUE(has_line(r.err, summary_line(1))) << r.describe();
  TextTrace trace = parse_text(r);
  if (trace.events.size() != 1) {
    ADD_FAILURE() << r.describe();
    return "";
  }
  return trace.events[0].message;
}

TEST(CliTrace, ALongStringEndsInAMarkerAndStrlenKeepsMore) {
  std::string name;
  for (int i = 0; i < 10; ++i) name += "0123456789";  // 100 bytes
  // Cut at 63 bytes (the default), and said so.
  EXPECT_EQ(traced_name(name), "[" + name.substr(0, 63) + "...]");
  // 63 bytes exactly: whole, no marker.
  EXPECT_EQ(traced_name(name.substr(0, 63)), "[" + name.substr(0, 63) + "]");
  EXPECT_EQ(traced_name(name, {"--strlen", "100"}), "[" + name + "]");
  EXPECT_EQ(traced_name(name, {"--strlen", "99"}), "[" + name.substr(0, 99) + "...]");
}

TEST(CliTrace, BadBufferSizeStrlenAndWidthsAreRefusedBeforeTheCommandStarts) {
  const std::vector<std::vector<std::string>> bad = {
      {"--buffer-size", "1K"}, {"--buffer-size", "2G"}, {"--buffer-size", "lots"},
      {"-b", "16Q"},           {"--strlen", "0"},       {"--strlen", "5000"},
      {"--max-events", "0"},   {"--max-events", "x"},
  };
  for (const std::vector<std::string> &options : bad) {
    std::vector<std::string> argv = {e2e::cli(), "trace"};
    argv.insert(argv.end(), options.begin(), options.end());
    for (const char *a : {"exe:trace_name", "--", trace_target(), "name", "x"}) argv.push_back(a);
    Output r = run(argv);
    EXPECT_EQ(r.exit_code(), 2) << options[0] << " " << options[1] << "\n" << r.describe();
    EXPECT_EQ(e2e::lines(r.err).size(), 1u) << r.describe();
    EXPECT_NE(r.err.find(options[0]), std::string::npos) << "names the option\n" << r.describe();
    EXPECT_TRUE(r.out.empty()) << "the command ran: " << r.describe();
  }
  Output r = run({e2e::cli(), "trace", R"(exe:trace_name "%.2147483648s", arg0)", "--",
                  trace_target(), "name", "x"});
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  EXPECT_EQ(e2e::lines(r.err),
            std::vector<std::string>{
                R"(usprobe: bad format in 'exe:trace_name "%.2147483648s", arg0': precision )"
                R"(2147483648 in '%.2147483648s' is over the limit of 4096)"})
      << r.describe();
  EXPECT_TRUE(r.out.empty()) << "the command ran: " << r.describe();
}

// USDT: python3.11 fires python:audit only while the probe's semaphore is raised (CPython's
// PyDTrace_AUDIT_ENABLED()), with the event's name as arg0. The script's own audit hook records the
// same events from the moment it is installed: between the script's two marker events, the names
// traced equal the hook's, in order (before the hook, only the probe sees python's startup).
TEST(CliTrace, UsdtPythonAuditNamesEqualThoseOfTheScriptsOwnHookInOrder) {
  const std::string python = "/usr/bin/python3.11";
  if (!e2e::file_exists(python)) GTEST_SKIP() << python << " is not installed";
  e2e::TempDir dir;
  const std::string script = dir.file("audit.py"), hooked = dir.file("hooked"),
                    file = dir.file("trace.json");
  {
    std::ofstream(script) << R"(import os, sys
events = []
sys.addaudithook(lambda event, args: events.append(event))
sys.audit("usprobe.begin")
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write("x")
exec(compile("y = 6 * 7", "<usprobe>", "exec"))
os.listdir(os.path.dirname(sys.argv[1]))
import json
sys.audit("usprobe.end")
with open(sys.argv[1], "w") as f:
    f.write("\n".join(events) + "\n")
)";
  }
  Output r = run({e2e::cli(), "trace", "--json", "-o", file,
                  "usdt:" + python + R"(:python:audit "%s", arg0)", "--", python, "-I", "-S",
                  script, hooked});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  // Between the markers, both included.
  auto between = [](const std::vector<std::string> &names) {
    auto begin = std::find(names.begin(), names.end(), "usprobe.begin");
    auto end = std::find(begin, names.end(), "usprobe.end");
    return std::vector<std::string>(begin, end == names.end() ? end : end + 1);
  };
  std::vector<std::string> traced;
  for (const Json &e : e2e::json_lines(e2e::read_file(file))) {
    EXPECT_EQ(e.value("probe", ""), "usdt:" + python + ":python:audit") << e.dump();
    traced.push_back(e.value("message", "?"));
  }
  std::vector<std::string> hook = between(e2e::lines(e2e::read_file(hooked)));
  ASSERT_GE(hook.size(), 6u) << e2e::read_file(hooked);
  for (const char *event : {"open", "compile", "exec", "os.listdir"})
    EXPECT_NE(std::find(hook.begin(), hook.end(), event), hook.end()) << event;
  EXPECT_EQ(between(traced), hook) << r.describe();
  // Python's startup, before the hook: seen by the probe alone.
  auto begin = std::find(traced.begin(), traced.end(), "usprobe.begin");
  EXPECT_NE(std::find(traced.begin(), begin, "sys.addaudithook"), begin) << r.describe();
}

#ifdef USDT_TARGET
// USDT arguments of the forms bpftrace 0.17 gets wrong: a string through base+index*scale
// (8@(%r8,%rdx,8), which bpftrace prints as an empty string) and a signed register; and a probe
// behind a semaphore, which the program fires only while it is raised: under the trace it fires
// every time, with its argument, and the program's own count says so; unprobed, never.
TEST(CliTrace, UsdtStringsThroughBaseIndexAndAProbeBehindItsSemaphore) {
  const std::string lib = USDT_TARGETS_LIB;
  e2e::TempDir dir;
  const std::string report = dir.file("trace.txt");
  Output r = run({e2e::cli(), "trace", "-o", report,
                  "usdt:" + lib + R"(:usprobe_test:string "%s %d", arg0, arg1)", "--", USDT_TARGET,
                  "strings"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out, "strings 3\n");
  std::vector<std::string> messages;
  for (const std::string &line : e2e::lines(e2e::read_file(report)))
    for (const char *m : {"alpha 0", "beta 1", "gamma 2"})
      if (line.ends_with(std::string(" ") + m)) messages.push_back(m);
  EXPECT_EQ(messages, (std::vector<std::string>{"alpha 0", "beta 1", "gamma 2"}))
      << e2e::read_file(report);

  Output plain = run({USDT_TARGET, "gated", "40"});
  ASSERT_EQ(plain.exit_code(), 0) << plain.describe();
  EXPECT_EQ(plain.out, "gated 40 fired 0\n") << "nobody traces: the semaphore is down";
  const std::string gated = dir.file("gated.txt");
  Output traced =
      run({e2e::cli(), "trace", "-o", gated, "usdt:" + lib + R"(:usprobe_test:gated "%d", arg0)",
           "--", USDT_TARGET, "gated", "40"});
  ASSERT_EQ(traced.exit_code(), 0) << traced.describe();
  EXPECT_EQ(traced.out, "gated 40 fired 40\n") << traced.describe();
  std::vector<std::string> args;
  for (const std::string &line : e2e::lines(e2e::read_file(gated))) {
    size_t at = line.find("usprobe_test:gated ");
    if (at != std::string::npos) args.push_back(line.substr(line.rfind(' ') + 1));
  }
  ASSERT_EQ(args.size(), 40u) << e2e::read_file(gated);
  for (size_t i = 0; i < args.size(); ++i) EXPECT_EQ(args[i], std::to_string(i));
}

// A note has up to twelve arguments: usdt_targets.h's "regs" has twelve, registers of every width
// with known values, each printed with the sign its spec gives it.
TEST(CliTrace, UsdtTwelveArgumentsOfEveryRegisterWidth) {
  const std::string lib = USDT_TARGETS_LIB;
  e2e::TempDir dir;
  const std::string report = dir.file("trace.txt");
  Output r = run({e2e::cli(), "trace", "-o", report,
                  "usdt:" + lib +
                      R"(:usprobe_test:regs "%lx %d %u %d %u %ld | %d %d %u %d %u %x", )"
                      "arg0, arg1, arg2, arg3, arg4, arg5, arg6, arg7, arg8, arg9, arg10, arg11",
                  "--", USDT_TARGET, "regs", "3"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(r.out, "regs 3\n");
  const std::string want =
      "123456789abcdef -1985229329 52719 -17 205 -2 | -10 32645 133 -1 255 2345";
  size_t seen = 0;
  for (const std::string &line : e2e::lines(e2e::read_file(report))) {
    if (line.find("usprobe_test:regs") == std::string::npos) continue;
    ++seen;
    EXPECT_TRUE(line.ends_with(" " + want)) << line;
  }
  EXPECT_EQ(seen, 3u) << e2e::read_file(report);
}
#endif

}  // namespace
