// A real server that runs already: PostgreSQL 15 (Debian's postgresql-15), started here as the
// postgres user in a temporary directory on a Unix socket only, then attached to by
//   usprobe count --json --per-pid -p POSTMASTER postgres:pg_parse_query
// A psql session opened after the attach runs a known number of statements, and its backend
// (forked by the postmaster during the session, so it inherits the probe) counts exactly that
// many; pgbench runs under the probe without a failed transaction; the server log shows no
// crashed backend; and the postmaster's code is restored when the session ends.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <thread>

#include "e2e_support.h"
#include "elf/elf_file.h"
#include "elf/usdt.h"

#include "support/text_match.h"

namespace rx = usprobe::test;

namespace {

using namespace e2e;

constexpr const char *kBin = "/usr/lib/postgresql/15/bin";
constexpr const char *kPort = "5497";
constexpr const char *kRunuser = "/usr/sbin/runuser";

std::string bin(const char *tool) {
  return std::string(kBin) + "/" + tool;
}

// Runs `argv` as the postgres user.
Output as_postgres(std::vector<std::string> argv, std::chrono::milliseconds limit = 120s) {
  argv.insert(argv.begin(), {kRunuser, "-u", "postgres", "--"});
  return run(argv, limit);
}

// The address of `file_offset` of `path` in `pid`, from its maps (0 when not mapped).
uint64_t address_of(pid_t pid, const std::string &path, uint64_t file_offset) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (!line.ends_with(" " + path)) continue;
    unsigned long start = 0, end = 0, offset = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx %*s %lx", &start, &end, &offset) != 3) continue;
    if (file_offset >= offset && file_offset < offset + (end - start))
      return start + (file_offset - offset);
  }
  return 0;
}

std::string code_bytes(pid_t pid, uint64_t address) {
  int fd = ::open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  std::string buf(16, '\0');
  ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(address));
  ::close(fd);
  return n == 16 ? buf : "";
}

// The server: initdb in a temporary directory, then postgres on a socket in it (no TCP), stopped
// (fast shutdown) by the destructor.
class Server {
 public:
  Server() {
    passwd *pw = ::getpwnam("postgres");
    if (!pw) return;
    ::chown(dir_.path().c_str(), pw->pw_uid, pw->pw_gid);
    Output init = as_postgres({bin("initdb"), "-D", data(), "-U", "postgres", "--auth=trust",
                               "--no-sync", "-E", "UTF8", "--locale=C"});
    if (init.exit_code() != 0) {
      problem_ = init.describe();
      return;
    }
    // Its log on its stderr, which the Process captures.
    server_ = std::make_unique<Process>(std::vector<std::string>{
        kRunuser, "-u", "postgres", "--", bin("postgres"), "-D", data(), "-k", dir_.path(), "-p",
        kPort, "-c", "listen_addresses=", "-c", "fsync=off", "-c", "logging_collector=off"});
    for (int i = 0; i < 500 && postmaster_ <= 0; ++i) {
      std::this_thread::sleep_for(20ms);
      std::ifstream pidfile(data() + "/postmaster.pid");
      std::string first;
      if (std::getline(pidfile, first) && file_exists(dir_.file(".s.PGSQL." + std::string(kPort))))
        postmaster_ = static_cast<pid_t>(std::stol(first));
    }
    if (postmaster_ <= 0) problem_ = "postgres did not start";
  }
  ~Server() {
    if (postmaster_ > 0) ::kill(postmaster_, SIGINT);  // fast shutdown
    if (server_) log_ = server_->finish(60s);
  }

  const std::string &problem() const { return problem_; }
  pid_t postmaster() const { return postmaster_; }
  std::string data() const { return dir_.file("data"); }
  std::vector<std::string> client(const char *tool) const {
    return {bin(tool), "-h", dir_.path(), "-p", kPort, "-U", "postgres"};
  }
  // The server's log, once it has stopped (after the destructor ran: callers stop it first).
  Output stop() {
    if (postmaster_ > 0) ::kill(std::exchange(postmaster_, -1), SIGINT);
    if (server_) log_ = server_->finish(60s);
    return log_;
  }

 private:
  TempDir dir_;
  std::unique_ptr<Process> server_;
  pid_t postmaster_ = -1;
  std::string problem_;
  Output log_;
};

TEST(AttachPostgres, CountsABackendsStatementsExactlyAndPgbenchRunsClean) {
  if (!file_exists(bin("postgres")) || !::getpwnam("postgres"))
    GTEST_SKIP() << "PostgreSQL 15 is not installed (apt postgresql-15)";
  Server server;
  ASSERT_EQ(server.problem(), "");
  const std::string exe = bin("postgres");
  auto fn = function_in(exe, "pg_parse_query");
  ASSERT_TRUE(fn);
  uint64_t address = address_of(server.postmaster(), exe, fn->offset);
  ASSERT_NE(address, 0u);
  const std::string original = code_bytes(server.postmaster(), address);
  ASSERT_EQ(original.size(), 16u);

  // pgbench's tables, before the session.
  auto init = server.client("pgbench");
  init.insert(init.end(), {"-i", "-s", "1", "-q", "postgres"});
  Output initialized = run(init, 120s);
  ASSERT_EQ(initialized.exit_code(), 0) << initialized.describe();

  Process usprobe({cli(), "count", "--json", "--per-pid", "-p", std::to_string(server.postmaster()),
                   "postgres:pg_parse_query"});
  bool patched = false;
  for (int i = 0; i < 2000 && !patched && ::kill(usprobe.pid(), 0) == 0; ++i) {
    patched = code_bytes(server.postmaster(), address) != original;
    if (!patched) std::this_thread::sleep_for(10ms);
  }
  ASSERT_TRUE(patched) << usprobe.finish(1s).describe();

  // One psql session, six statements, one of which names its backend.
  auto psql = server.client("psql");
  psql.insert(psql.end(), {"-X", "-A", "-t", "-d", "postgres", "-c", "select pg_backend_pid()",
                           "-c", "select 1", "-c", "select 2", "-c", "create table t(x int)", "-c",
                           "insert into t values (1)", "-c", "drop table t"});
  Output session = run(psql, 60s);
  ASSERT_EQ(session.exit_code(), 0) << session.describe();
  std::string backend = lines(session.out).empty() ? "" : lines(session.out).front();

  auto bench = server.client("pgbench");
  bench.insert(bench.end(), {"-M", "simple", "-c", "4", "-j", "2", "-t", "250", "postgres"});
  Output benched = run(bench, 300s);
  ASSERT_EQ(benched.exit_code(), 0) << benched.describe();
  EXPECT_NE(benched.out.find("number of failed transactions: 0"), std::string::npos) << benched.out;

  ::kill(usprobe.pid(), SIGINT);
  Output r = usprobe.finish(60s);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(code_bytes(server.postmaster(), address), original) << "the code was not restored";
  Json total = only_total(r);
  auto probe = probe_in(total, "postgres:pg_parse_query");
  ASSERT_TRUE(probe) << r.out;
  // Per pid: the psql backend parsed its six statements; pgbench's four backends each ran 250
  // transactions of 7 statements (BEGIN, 3 UPDATE, SELECT, INSERT, END) in simple mode.
  ASSERT_TRUE(probe->contains("pids")) << probe->dump();
  EXPECT_EQ((*probe)["pids"].value(backend, 0u), 6u) << probe->dump();
  int clients = 0;
  for (const auto &[pid, hits] : (*probe)["pids"].items()) clients += hits.get<uint64_t>() == 1750;
  EXPECT_EQ(clients, 4) << probe->dump();
  EXPECT_GE(probe->value("hits", 0u), 6u + 4u * 250u * 7u) << probe->dump();

  Output log = server.stop();
  EXPECT_EQ(log.err.find("terminated by signal"), std::string::npos) << log.err;
  EXPECT_EQ(log.err.find("server process"), std::string::npos) << log.err;
}

// PostgreSQL's own USDT probe postgresql:query__start (behind a semaphore, its argument the query
// text): traced with the text by attaching to the running postmaster. The semaphore is raised in
// the postmaster while the session lasts (the backends it forks inherit it, so they fire the
// probe) and lowered when it ends.
TEST(AttachPostgres, TracesQueryStartWithItsTextBehindItsSemaphore) {
  if (!file_exists(bin("postgres")) || !::getpwnam("postgres"))
    GTEST_SKIP() << "PostgreSQL 15 is not installed (apt postgresql-15)";
  const std::string exe = bin("postgres");
  auto file = usprobe::elf::ElfFile::open(exe);
  ASSERT_TRUE(file);
  auto notes = usprobe::elf::read_usdt_probes(**file);
  ASSERT_TRUE(notes);
  uint64_t semaphore_offset = 0;
  for (const auto &n : *notes)
    if (n.provider == "postgresql" && n.name == "query__start")
      semaphore_offset = n.semaphore_offset;
  ASSERT_NE(semaphore_offset, 0u) << "query__start has a semaphore";

  Server server;
  ASSERT_EQ(server.problem(), "");
  const uint64_t semaphore = address_of(server.postmaster(), exe, semaphore_offset);
  ASSERT_NE(semaphore, 0u);
  auto semaphore_value = [&] {
    std::string bytes = code_bytes(server.postmaster(), semaphore);
    return bytes.size() < 2 ? -1
                            : static_cast<int>(static_cast<uint8_t>(bytes[0]) |
                                               static_cast<uint8_t>(bytes[1]) << 8);
  };
  ASSERT_EQ(semaphore_value(), 0);

  TempDir dir;
  const std::string report = dir.file("trace.txt");
  Process usprobe({cli(), "trace", "-o", report, "-p", std::to_string(server.postmaster()),
                   "usdt:" + exe + ":postgresql:query__start \"%s\", arg0"});
  for (int i = 0; i < 2000 && semaphore_value() != 1 && ::kill(usprobe.pid(), 0) == 0; ++i)
    std::this_thread::sleep_for(10ms);
  ASSERT_EQ(semaphore_value(), 1) << usprobe.finish(1s).describe();

  auto psql = server.client("psql");
  psql.insert(psql.end(), {"-X", "-A", "-t", "-d", "postgres", "-c", "select 'usprobe-one'", "-c",
                           "select 40 + 2 as usprobe_two", "-c", "select 'usprobe-three'"});
  Output session = run(psql, 60s);
  ASSERT_EQ(session.exit_code(), 0) << session.describe();
  EXPECT_EQ(session.out, "usprobe-one\n42\nusprobe-three\n");

  ::kill(usprobe.pid(), SIGINT);
  Output r = usprobe.finish(60s);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(semaphore_value(), 0) << "lowered when the session ended";
  // The three statements' texts, in order, each once.
  std::vector<std::string> queries;
  for (const std::string &line : lines(read_file(report)))
    for (const char *q :
         {"select 'usprobe-one'", "select 40 + 2 as usprobe_two", "select 'usprobe-three'"})
      if (line.ends_with(q)) queries.push_back(q);
  EXPECT_EQ(queries,
            (std::vector<std::string>{"select 'usprobe-one'", "select 40 + 2 as usprobe_two",
                                      "select 'usprobe-three'"}))
      << read_file(report) << r.describe();
}

}  // namespace
