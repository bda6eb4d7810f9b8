// The CLI's side of the shared region, with the test playing the agent: it claims slots, counts
// hits and writes trace records the way protocol/protocol.h says, and the region must read back
// exactly that, free the slots of dead threads without losing a count, and pass on notices.
#include "session/region.h"

#include "session/session.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <random>

namespace usprobe::cli {
namespace {

using namespace usprobe::agent;

// What one agent thread does with its slot.
struct FakeThread {
  Header *h;
  SlotHeader *s;

  static FakeThread claim(Header *h, uint32_t index, int32_t pid, int32_t tid) {
    SlotHeader *s = slot_at(h, index);
    uint32_t expected = kSlotFree;
    EXPECT_TRUE(s->state.compare_exchange_strong(expected, kSlotOwned));
    s->pid = pid;
    s->tid = tid;
    return {h, s};
  }
  void name(const char *comm) {  // what the agent stores from PR_GET_NAME
    char bytes[16] = {};
    std::strncpy(bytes, comm, 15);
    uint64_t words[2];
    std::memcpy(words, bytes, sizeof words);
    s->comm[0] = words[0];
    s->comm[1] = words[1];
  }
  void hit(uint32_t probe, uint64_t n = 1) { slot_hits(s)[probe] += n; }
  void miss(uint32_t probe) { slot_missed(s, h->probe_count)[probe] += 1; }

  // A record with `strings` copied after the header; padding first when it would wrap. Args past
  // the sixth go after the header, as a USDT probe's with kPlanMoreArgs (kEventMoreArgs).
  void event(uint32_t probe, uint64_t tsc, std::initializer_list<uint64_t> args,
             std::initializer_list<std::string> strings = {}, uint32_t bad = 0) {
    const bool more = args.size() > kMaxArgs;
    uint64_t size = event_size(static_cast<uint32_t>(strings.size()), h->string_size) +
                    (more ? kMoreArgsBytes : 0);
    uint64_t head = s->head.load();
    uint64_t pos = head % h->ring_size;
    char *ring = ring_of(h, s);
    if (h->ring_size - pos < size) {
      auto *pad = reinterpret_cast<Event *>(ring + pos);
      pad->size = static_cast<uint32_t>(h->ring_size - pos);
      pad->probe = kPadProbe;
      head += h->ring_size - pos;
      pos = 0;
    }
    ASSERT_LE(head + size - s->tail.load(), h->ring_size) << "ring full";
    auto *e = reinterpret_cast<Event *>(ring + pos);
    e->size = static_cast<uint32_t>(size);
    e->probe = probe;
    e->tsc = tsc;
    e->tid = s->tid;
    e->bad_strings = bad | (more ? kEventMoreArgs : 0);
    char *str = reinterpret_cast<char *>(e + 1);
    uint64_t values[kMaxUsdtArgs] = {};
    std::copy(args.begin(), args.end(), values);
    std::memcpy(e->args, values, sizeof e->args);
    if (more) {
      std::memcpy(str, values + kMaxArgs, kMoreArgsBytes);
      str += kMoreArgsBytes;
    }
    for (const std::string &text : strings) {
      std::memset(str, 0, h->string_size);
      std::memcpy(str, text.data(), std::min<size_t>(text.size(), h->string_size - 1));
      str += h->string_size;
    }
    s->head.store(head + size, std::memory_order_release);
  }
};

Region make_region(Mode mode, std::vector<PlanEntry> plan, uint64_t ring_size = 0) {
  RegionConfig config;
  config.mode = mode;
  config.max_slots = 4;
  config.max_notices = 4;
  config.ring_size = ring_size;
  auto region = Region::create(config, plan);
  EXPECT_TRUE(region.has_value()) << region.error().message;
  return std::move(*region);
}

const std::vector<PlanEntry> kPlan = {{"/usr/lib/libc.so.6:malloc", 0},
                                      {"/usr/bin/prog:greet", 0b101}};

TEST(Region, HeaderAndPlanAreWhatTheAgentExpects) {
  Region region = make_region(kModeTrace, kPlan, 4096);
  Header *h = region.header();
  EXPECT_EQ(h->magic, kMagic);
  EXPECT_EQ(h->version, kVersion);
  EXPECT_EQ(h->mode, kModeTrace);
  EXPECT_EQ(h->probe_count, 2u);
  EXPECT_EQ(h->max_slots, 4u);
  EXPECT_EQ(h->ring_size, 4096u);
  EXPECT_EQ(h->slot_stride, slot_stride_for(2, 4096));
  EXPECT_EQ(h->ring_offset + h->ring_size, h->slot_stride);
  EXPECT_GE(h->region_size, h->slot_offset + 4 * h->slot_stride);
  const char *plan = reinterpret_cast<const char *>(h) + h->plan_offset;
  EXPECT_STREQ(plan,
               "usprobe-plan 1\n"
               "0\t0\t/usr/lib/libc.so.6:malloc\n"
               "1\t5\t/usr/bin/prog:greet\n");
  EXPECT_EQ(h->plan_size, std::strlen(plan) + 1);
  // The command inherits it: not close-on-exec.
  EXPECT_GE(region.fd(), 0);
}

TEST(Region, CountsSumLiveSlotsPerProcessAndTheOverflowSlotAsPidZero) {
  Region region = make_region(kModeCount, kPlan);
  Header *h = region.header();
  FakeThread a = FakeThread::claim(h, 0, 100, 100), b = FakeThread::claim(h, 1, 100, 101),
             c = FakeThread::claim(h, 2, 200, 200);
  a.hit(0, 5);
  b.hit(0, 2);
  b.miss(0);
  c.hit(1, 7);
  slot_hits(slot_at(h, 3))[0] += 3;  // overflow: fetch_add, no owner
  Counts counts = region.counts();
  EXPECT_EQ(counts.at({100, 0}), (Count{7, 1}));
  EXPECT_EQ(counts.at({200, 1}), (Count{7, 0}));
  EXPECT_EQ(counts.at({0, 0}), (Count{3, 0}));
  EXPECT_EQ(counts.size(), 3u);
}

TEST(Region, ReclaimFreesDeadThreadsSlotsAndKeepsTheirCounts) {
  Region region = make_region(kModeCount, kPlan);
  Header *h = region.header();
  FakeThread dead = FakeThread::claim(h, 0, 100, 101), live = FakeThread::claim(h, 1, 100, 100);
  dead.hit(0, 4);
  live.hit(0, 1);
  TraceBatch batch;
  region.reclaim(batch, [](int32_t, int32_t tid) { return tid != 101; });
  EXPECT_EQ(dead.s->state.load(), kSlotFree);
  EXPECT_EQ(live.s->state.load(), kSlotOwned);
  EXPECT_EQ(slot_hits(dead.s)[0].load(), 0u);
  EXPECT_EQ(region.counts().at({100, 0}), (Count{5, 0}));

  // The freed slot serves another thread; the folded count stays.
  FakeThread next = FakeThread::claim(h, 0, 300, 300);
  next.hit(0, 2);
  Counts counts = region.counts();
  EXPECT_EQ(counts.at({100, 0}), (Count{5, 0}));
  EXPECT_EQ(counts.at({300, 0}), (Count{2, 0}));
}

TEST(Region, ThreadNamesOutliveTheirSlotsAndUnprintableBytesReadAsQuestionMarks) {
  Region region = make_region(kModeCount, kPlan);
  Header *h = region.header();
  FakeThread main_thread = FakeThread::claim(h, 0, 100, 100),
             worker = FakeThread::claim(h, 1, 100, 101), odd = FakeThread::claim(h, 2, 200, 200);
  main_thread.name("sqlite3");
  worker.name("worker-1");
  odd.name(
      "a\tb\x80"
      "c");
  worker.hit(0);
  EXPECT_EQ(region.comm(100), "");  // no slot read yet
  (void)region.counts();
  EXPECT_EQ(region.comm(100, 101), "worker-1");
  EXPECT_EQ(region.comm(100), "sqlite3");  // the main thread's
  EXPECT_EQ(region.comm(200), "a?b?c");
  EXPECT_EQ(region.comm(300), "");
  TraceBatch batch;
  region.reclaim(batch, [](int32_t, int32_t tid) { return tid != 101; });
  EXPECT_EQ(worker.s->state.load(), kSlotFree);
  EXPECT_EQ(worker.s->comm[0].load(), 0u);
  EXPECT_EQ(region.comm(100, 101), "worker-1");
}

TEST(Region, ReclaimFreesOrphanedSlotsOfAnExec) {
  Region region = make_region(kModeCount, kPlan);
  Header *h = region.header();
  FakeThread before_exec = FakeThread::claim(h, 0, 100, 100);
  before_exec.hit(1, 9);
  before_exec.s->state.store(kSlotOrphan);  // what the new image's agent does
  TraceBatch batch;
  region.reclaim(batch, [](int32_t, int32_t) { return true; });  // same pid and tid live on
  EXPECT_EQ(before_exec.s->state.load(), kSlotFree);
  EXPECT_EQ(region.counts().at({100, 1}), (Count{9, 0}));
}

TEST(Region, SlotsWithoutIdsYetAreLeftAlone) {
  Region region = make_region(kModeCount, kPlan);
  Header *h = region.header();
  FakeThread claiming = FakeThread::claim(h, 0, 0, 0);
  TraceBatch batch;
  region.reclaim(batch, [](int32_t, int32_t) { return false; });
  EXPECT_EQ(claiming.s->state.load(), kSlotOwned);
}

TEST(Region, DrainCopiesRecordsWithTheirStringsAndSkipsPadding) {
  Region region = make_region(kModeTrace, kPlan, 1024);
  Header *h = region.header();
  FakeThread t = FakeThread::claim(h, 0, 100, 101);
  TraceBatch batch;
  // Fill and drain repeatedly so that records wrap around the ring's end (padding).
  uint64_t tsc = 0;
  for (int round = 0; round < 10; ++round) {
    t.event(0, ++tsc, {16});
    t.event(1, ++tsc, {0x1000, 2, 0x2000},
            {"alice",
             "a string longer than sixty-four bytes, "
             "cut to fit the copy the agent makes"});
    region.drain(batch);
  }
  ASSERT_EQ(batch.size(), 20u);
  for (size_t i = 0; i < batch.size(); ++i) EXPECT_EQ(batch.event(i).tsc, i + 1);
  const TraceEvent e = batch.event(1);
  EXPECT_EQ(e.pid, 100);
  EXPECT_EQ(e.tid, 101);
  EXPECT_EQ(e.probe, 1u);
  EXPECT_EQ(e.args[1], 2u);
  EXPECT_EQ(e.strings[0], "alice");
  EXPECT_EQ(e.strings[2].size(), 63u);
  EXPECT_TRUE(e.strings[1].empty());
  EXPECT_EQ(t.s->tail.load(), t.s->head.load());
}

TEST(Region, DrainPassesOnWhichStringsWereCut) {
  Region region = make_region(kModeTrace, kPlan, 1024);
  FakeThread t = FakeThread::claim(region.header(), 0, 100, 101);
  // arg0 cut (longer than the copy), arg2 unreadable.
  t.event(1, 1, {0x1000, 2, 0x10}, {"the first 63 bytes", ""}, (1u << kStringCutShift) | (1u << 2));
  TraceBatch batch;
  region.drain(batch);
  ASSERT_EQ(batch.size(), 1u);
  TraceEvent e = batch.event(0);
  EXPECT_EQ(e.strings[0], "the first 63 bytes");
  EXPECT_EQ(e.cut_strings, 1u << 0);
  EXPECT_EQ(e.bad_strings, 1u << 2);
}

TEST(Region, AUsdtProbesEventCarriesItsNotesTwelveArguments) {
  // arg1 and arg9 are strings; the probe's plan asks for the arguments past the sixth.
  const std::vector<PlanEntry> plan = {
      {"usdt:/usr/bin/prog:prov:many", 1u << 1 | 1u << 9, kPlanMoreArgs}};
  Region region = make_region(kModeTrace, plan, 1024);
  const char *text = reinterpret_cast<const char *>(region.header()) + region.header()->plan_offset;
  EXPECT_NE(std::strstr(text, "\n0\t8706\tusdt:/usr/bin/prog:prov:many\n"), nullptr) << text;
  FakeThread t = FakeThread::claim(region.header(), 0, 100, 101);
  TraceBatch batch;
  for (int round = 0; round < 8; ++round) {  // around the ring's end, and back
    t.event(0, 1, {10, 0x1000, 12, 13, 14, 15, 16, 17, 18, 0x2000, 20, 0xffff'ffff'ffff'fff5},
            {"one", "nine"});
    region.drain(batch);
  }
  ASSERT_EQ(batch.size(), 8u);
  EXPECT_EQ(region.corrupt(), 0u);
  for (size_t i = 0; i < batch.size(); ++i) {
    TraceEvent e = batch.event(i);
    EXPECT_EQ(e.args[0], 10u);
    EXPECT_EQ(e.args[5], 15u);
    EXPECT_EQ(e.args[6], 16u);
    EXPECT_EQ(e.args[8], 18u);
    EXPECT_EQ(e.args[11], 0xffff'ffff'ffff'fff5u);
    EXPECT_EQ(e.strings[1], "one");
    EXPECT_EQ(e.strings[9], "nine");
    EXPECT_FALSE(e.returning);
  }
}

TEST(Region, ReclaimDrainsTheRingOfADeadThreadFirst) {
  Region region = make_region(kModeTrace, kPlan, 1024);
  FakeThread t = FakeThread::claim(region.header(), 0, 100, 101);
  t.event(0, 1, {8});
  t.hit(0);
  TraceBatch batch;
  region.reclaim(batch, [](int32_t, int32_t) { return false; });
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_EQ(t.s->state.load(), kSlotFree);
  EXPECT_EQ(t.s->head.load(), 0u);  // a new owner starts with an empty ring
  EXPECT_EQ(t.s->tail.load(), 0u);
}

TEST(Region, ACorruptRecordDoesNotStallTheRing) {
  Region region = make_region(kModeTrace, kPlan, 1024);
  FakeThread t = FakeThread::claim(region.header(), 0, 100, 101);
  t.event(0, 1, {8});
  reinterpret_cast<Event *>(ring_of(region.header(), t.s))->size = 0;
  TraceBatch batch;
  region.drain(batch);
  EXPECT_TRUE(batch.empty());
  EXPECT_EQ(t.s->tail.load(), t.s->head.load());
}

TEST(Region, NoticesComeInOrderOnceReady) {
  Region region = make_region(kModeCount, kPlan);
  Header *h = region.header();
  auto post = [&](uint32_t i, NoticeKind kind, int32_t probe, const char *text, bool ready) {
    Notice *n = notice_at(h, i);
    n->kind = kind;
    n->pid = 42;
    n->probe = probe;
    std::strcpy(n->text, text);
    if (ready) n->ready.store(1);
  };
  h->notice_cursor = 2;
  post(0, kNoticeProbe, 1, "not mapped", true);
  post(1, kNoticeInfo, -1, "attached", false);  // claimed, still being written
  auto first = region.new_notices();
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].text, "not mapped");
  EXPECT_EQ(first[0].probe, 1);
  notice_at(h, 1)->ready.store(1);
  auto second = region.new_notices();
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].kind, kNoticeInfo);
  EXPECT_TRUE(region.new_notices().empty());
}

// At the end of a session, what did not happen: the probe the agent could not place, with the
// agent's reason, and the probe on the int3 path, with its hits, reason and cost; the probe placed
// on a jump is in neither line.
TEST(Region, TheEndNamesProbesNeverPlacedAndProbesOnTheInt3Path) {
  const std::vector<PlanEntry> plan = {
      {"/usr/lib/libc.so.6:malloc", 0}, {"/usr/bin/prog:greet", 0}, {"/usr/bin/prog:work", 0}};
  Region region = make_region(kModeCount, plan);
  Header *h = region.header();
  auto post = [&](uint32_t i, NoticeKind kind, int32_t probe, const char *text) {
    Notice *n = notice_at(h, i);
    n->kind = kind;
    n->pid = 42;
    n->probe = probe;
    std::strcpy(n->text, text);
    n->ready.store(1);
  };
  h->notice_cursor = 2;
  post(0, kNoticeInt3, 0, "the function is 4 bytes, shorter than a 5-byte jump");
  post(1, kNoticeProbe, 1, "cannot be probed: an indirect jump");
  h->agents_started = 1;
  placed_flags(h)[0].store(kPlacedSite | kPlacedInt3);
  placed_flags(h)[2].store(kPlacedSite);
  FakeThread::claim(h, 0, 42, 42).hit(0, 5);
  const std::vector<Probe> probes = {{"libc:malloc", plan[0].location, 0},
                                     {"exe:greet", plan[1].location, 1},
                                     {"exe:work", plan[2].location, 2}};
  NoticePrinter notices(probes, false);
  testing::internal::CaptureStderr();
  notices.print(region.new_notices());
  notices.finish(region, ExitInfo{});
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(err,
            "usprobe: pid 42: exe:greet not placed: cannot be probed: an indirect jump\n"
            "usprobe: 1 probe was never placed: exe:greet (cannot be probed: an indirect jump)\n"
            "usprobe: 1 probe is on the int3 path (a trap per hit, ~2 us each; 5 traps in all): "
            "libc:malloc (5 hits; the function is 4 bytes, shorter than a 5-byte jump)\n");
}

// What a process of the command can do to the header: the CLI never follows what it finds there.
// Each field in turn is set to values that would send a reader that believed it far outside the
// region; what the CLI reads back is what it would have read without the scribbling.
// Attach mode: the target made the memfd; the CLI sizes and fills it, and the agent claims records.
TEST(Region, FillsAGivenMemfdAndReadsTheProcessRecords) {
  int fd = ::memfd_create("usprobe-region", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  RegionConfig config;
  config.max_slots = 4;
  config.max_processes = 3;
  auto created = Region::create(config, kPlan, fd);
  ASSERT_TRUE(created.has_value()) << created.error().message;
  Region region = std::move(*created);
  EXPECT_EQ(region.fd(), fd);
  Header *h = region.header();
  struct stat st;
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), h->region_size);
  EXPECT_EQ(h->max_processes, 3u);
  EXPECT_EQ(h->process_offset % alignof(ProcessRecord), 0u);
  EXPECT_LE(h->process_offset + 3 * sizeof(ProcessRecord), h->region_size);
  EXPECT_GE(h->process_offset, h->slot_offset + 4 * h->slot_stride);
  EXPECT_TRUE(region.processes().empty());

  process_at(h, 0)->pid = 100;
  process_at(h, 0)->state = kProcessAttached;
  process_at(h, 2)->pid = 200;  // claimed, its state not stored yet
  EXPECT_EQ(region.processes(), (std::vector<ProcessEntry>{{100, kProcessAttached}, {200, 0}}));
  process_at(h, 0)->state.store(kProcessDetached, std::memory_order_release);
  process_at(h, 2)->state = kProcessAttached;
  EXPECT_EQ(region.processes(),
            (std::vector<ProcessEntry>{{100, kProcessDetached}, {200, kProcessAttached}}));
  EXPECT_EQ(region.corrupt(), 0u);
}

TEST(Region, RefusesAGivenFileThatIsNotEmpty) {
  int fd = ::memfd_create("usprobe-region", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 4096), 0);
  auto created = Region::create(RegionConfig{}, kPlan, fd);
  ASSERT_FALSE(created.has_value());
  EXPECT_NE(created.error().message.find("not an empty regular file"), std::string::npos)
      << created.error().message;
  EXPECT_EQ(::fcntl(fd, F_GETFD), -1) << "the descriptor was taken, and closed";
}

TEST(RegionHostile, ProcessRecordsNoAgentWritesAreLeftOutAndCountedOnce) {
  RegionConfig config;
  config.max_slots = 4;
  config.max_processes = 4;
  auto created = Region::create(config, kPlan);
  ASSERT_TRUE(created.has_value());
  Region region = std::move(*created);
  Header *h = region.header();
  process_at(h, 0)->pid = -5;
  process_at(h, 1)->pid = 300;
  process_at(h, 1)->state = 77;
  process_at(h, 2)->pid = 0x7fff'ffff;
  process_at(h, 3)->pid = 400;
  process_at(h, 3)->state = kProcessAttached;
  // The records as the CLI laid them out, whatever the header now says.
  h->max_processes = 1'000'000;
  h->process_offset = ~uint64_t{0} - 4;
  EXPECT_EQ(region.processes(), (std::vector<ProcessEntry>{{400, kProcessAttached}}));
  EXPECT_EQ(region.processes(), (std::vector<ProcessEntry>{{400, kProcessAttached}}));
  EXPECT_EQ(region.corrupt(), 3u);
}

TEST(RegionHostile, ScribbledHeaderFieldsAreNeverFollowed) {
  struct Field {
    const char *name;
    std::function<void(Header *, uint64_t)> set;
  };
  std::vector<Field> fields = {
      {"max_slots", [](Header *h, uint64_t v) { h->max_slots = static_cast<uint32_t>(v); }},
      {"slot_stride", [](Header *h, uint64_t v) { h->slot_stride = v; }},
      {"slot_offset", [](Header *h, uint64_t v) { h->slot_offset = v; }},
      {"probe_count", [](Header *h, uint64_t v) { h->probe_count = static_cast<uint32_t>(v); }},
      {"ring_offset", [](Header *h, uint64_t v) { h->ring_offset = v; }},
      {"ring_size", [](Header *h, uint64_t v) { h->ring_size = v; }},
      {"string_size", [](Header *h, uint64_t v) { h->string_size = static_cast<uint32_t>(v); }},
      {"region_size", [](Header *h, uint64_t v) { h->region_size = v; }},
      {"notice_offset", [](Header *h, uint64_t v) { h->notice_offset = v; }},
      {"max_notices", [](Header *h, uint64_t v) { h->max_notices = static_cast<uint32_t>(v); }},
      {"hist_offset", [](Header *h, uint64_t v) { h->hist_offset = v; }},
      {"mode", [](Header *h, uint64_t v) { h->mode = static_cast<uint32_t>(v); }},
      {"process_offset", [](Header *h, uint64_t v) { h->process_offset = v; }},
      {"max_processes", [](Header *h, uint64_t v) { h->max_processes = static_cast<uint32_t>(v); }},
  };
  for (const Field &field : fields) {
    for (uint64_t value : {uint64_t{0}, uint64_t{0xffff'ffff}, ~uint64_t{0}, uint64_t{1} << 40}) {
      SCOPED_TRACE(::testing::Message() << field.name << " = " << value);
      Region region = make_region(kModeTrace, kPlan, 1024);
      Header *h = region.header();
      FakeThread t = FakeThread::claim(h, 0, 100, 101);
      t.event(1, 7, {1, 2, 3}, {"alice", "bob"});
      t.hit(1, 3);
      FakeThread dead = FakeThread::claim(h, 1, 200, 201);
      dead.hit(0, 5);
      h->notice_cursor = 1;
      std::strcpy(notice_at(h, 0)->text, "hello");
      notice_at(h, 0)->ready.store(1);
      field.set(h, value);

      TraceBatch events;
      region.drain(events);
      ASSERT_EQ(events.size(), 1u);
      EXPECT_EQ(events.event(0).pid, 100);
      EXPECT_EQ(events.event(0).strings[0], "alice");
      EXPECT_EQ(events.event(0).strings[2], "bob");
      region.reclaim(events, [](int32_t pid, int32_t) { return pid == 100; });
      EXPECT_EQ(events.size(), 1u);
      Counts counts = region.counts();
      EXPECT_EQ((counts[{100, 1}].hits), 3u);
      EXPECT_EQ((counts[{200, 0}].hits), 5u);
      EXPECT_EQ(counts.size(), 2u);
      auto notices = region.new_notices();
      ASSERT_EQ(notices.size(), 1u);
      EXPECT_EQ(notices[0].text, "hello");
      EXPECT_EQ(region.corrupt(), 0u);
    }  // ~Region unmaps what it mapped, not what region_size now says
  }
}

TEST(RegionHostile, ARingPublishedBeyondItsLengthIsSkippedAndCountedOnce) {
  Region region = make_region(kModeTrace, kPlan, 1024);
  FakeThread t = FakeThread::claim(region.header(), 0, 100, 101);
  t.event(0, 1, {8});
  t.s->head.store(t.s->tail.load() + 1024 * 1000);  // more than the ring can hold
  TraceBatch events;
  region.drain(events);
  region.drain(events);
  EXPECT_TRUE(events.empty());
  EXPECT_EQ(region.corrupt(), 1u);
  EXPECT_EQ(t.s->tail.load(), t.s->head.load());
  // A head behind the tail, too.
  t.s->tail.store(t.s->head.load() + 64);
  region.drain(events);
  EXPECT_TRUE(events.empty());
  EXPECT_EQ(region.corrupt(), 2u);
  // From there on, records are read again.
  t.event(0, 2, {8});
  region.drain(events);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events.event(0).tsc, 2u);
}

TEST(RegionHostile, RecordsThatNameNoProbeOrAreTooShortAreCounted) {
  Region region = make_region(kModeTrace, kPlan, 1024);
  FakeThread t = FakeThread::claim(region.header(), 0, 100, 101);
  t.event(0, 1, {8});
  t.event(0, 2, {8});
  t.event(1, 3, {8}, {"a", "b"});
  char *ring = ring_of(region.header(), t.s);
  reinterpret_cast<Event *>(ring)->probe = 9;  // no such probe
  // The third record's probe has two strings, the first has none: a record of the first's size
  // with the third's probe is too short for its strings.
  reinterpret_cast<Event *>(ring + sizeof(Event))->probe = 1;
  TraceBatch events;
  region.drain(events);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events.event(0).tsc, 3u);
  EXPECT_EQ(region.corrupt(), 2u);
}

TEST(RegionHostile, ASlotWithAnImpossibleStateOrIdIsLeftAloneAndCountedOnce) {
  for (int variant = 0; variant < 4; ++variant) {
    SCOPED_TRACE(variant);
    Region region = make_region(kModeTrace, kPlan, 1024);
    FakeThread good = FakeThread::claim(region.header(), 0, 100, 101);
    good.hit(0, 2);
    FakeThread bad = FakeThread::claim(region.header(), 1, 300, 301);
    bad.hit(0, 1'000'000);
    bad.event(0, 1, {8});
    if (variant == 0) bad.s->state.store(7);
    if (variant == 1) bad.s->pid.store(-300);
    if (variant == 2) bad.s->tid.store(0x7fff'ffff);
    if (variant == 3) bad.s->pid.store(5'000'000);
    TraceBatch events;
    for (int round = 0; round < 3; ++round) {
      region.drain(events);
      region.reclaim(events, [](int32_t, int32_t) { return true; });
      Counts counts = region.counts();
      EXPECT_EQ(counts.size(), 1u);
      EXPECT_EQ((counts[{100, 0}].hits), 2u);
    }
    EXPECT_TRUE(events.empty());
    EXPECT_EQ(region.corrupt(), 1u);
  }
}

// Random bytes over random parts of the region, header and slots alike, many times over (a fixed
// seed: the same bytes every run). The reader must not crash (the ASan build checks its reads),
// and what it reports must be what the protocol can say: known probes, ids in range, strings no
// longer than their copy.
TEST(RegionHostile, RandomBytesNeverCrashTheReaderNorComeBackAsImpossibleData) {
  std::mt19937_64 rng(12);
  for (int round = 0; round < 300; ++round) {
    SCOPED_TRACE(round);
    Mode mode = round % 3 == 0 ? kModeCount : round % 3 == 1 ? kModeTrace : kModeLatency;
    RegionConfig config;
    config.mode = mode;
    config.max_slots = 4;
    config.max_notices = 4;
    config.ring_size = mode == kModeTrace ? 1024 : 0;
    config.tsc_to_ns_mult = 1u << 31;
    auto created = Region::create(config, kPlan);
    ASSERT_TRUE(created.has_value());
    Region &region = *created;
    Header *h = region.header();
    const RegionLayout layout = region.layout();
    FakeThread t = FakeThread::claim(h, 0, 100, 101);
    t.hit(1, 4);
    if (mode == kModeTrace) {
      t.event(0, 1, {1});
      t.event(1, 2, {1}, {"x", "y"});
    }
    auto *bytes = reinterpret_cast<unsigned char *>(h);
    int scribbles = 1 + static_cast<int>(rng() % 8);
    for (int k = 0; k < scribbles; ++k) {
      // Half of them in the first 4 KiB (the header and the notices), half anywhere.
      uint64_t span = rng() % 2 ? 4096 : layout.region_size;
      uint64_t at = rng() % span;
      uint64_t length = std::min<uint64_t>(1 + rng() % 256, layout.region_size - at);
      for (uint64_t i = 0; i < length; ++i) bytes[at + i] = static_cast<unsigned char>(rng());
    }
    TraceBatch events;
    region.drain(events);
    region.reclaim(events, [&](int32_t, int32_t) { return rng() % 2 == 0; });
    region.drain(events);
    for (size_t i = 0; i < events.size(); ++i) {
      const TraceEvent e = events.event(i);
      EXPECT_LT(e.probe, kPlan.size());
      EXPECT_GE(e.pid, 0);
      for (const auto &str : e.strings) EXPECT_LT(str.size(), layout.string_size);
    }
    for (const auto &[key, count] : region.counts()) {
      EXPECT_GE(key.first, 0);
      EXPECT_LT(key.second, kPlan.size());
    }
    EXPECT_LE(region.histograms().size(), kPlan.size());
    for (const NoticeMessage &n : region.new_notices()) EXPECT_LT(n.text.size(), 496u);
    // The header's own idea of the layout changed; the region's did not.
    EXPECT_EQ(region.layout().slot_offset, layout.slot_offset);
    EXPECT_EQ(region.layout().region_size, layout.region_size);
  }
}

}  // namespace
}  // namespace usprobe::cli
