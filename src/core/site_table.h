// The table of patched sites: site address -> trampoline, and the file location the site was made
// for. The trap handler reads it to send a thread that hit an int3 (an int3-path site, or a jump
// site while its patch is half written) to the site's trampoline. Readers take an RCU read section
// and never lock: they run in signal handlers. Writers hold the registry mutex.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <ucontext.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace usprobe::site_table {

struct Entry {
  uint64_t site = 0, trampoline = 0;
  // Where the site lies in its file (the probe's location): a trap is sent to the trampoline only
  // while the mapping table says this file and offset are mapped at `site`.
  dev_t dev = 0;
  ino_t ino = 0;
  uint64_t file_offset = 0;
};

// Writers (registry mutex held). Each publishes a new table and retires the old one, inside a
// write section of MappingTable::process() (see lookup()).
void insert(const std::vector<Entry> &entries);
void remove(const std::vector<uint64_t> &sites);
// The tables retired so far, as deleters to run after an rcu::synchronize() that began after this
// call (registry mutex held for the call, not for the deleters).
std::vector<std::function<void()>> take_retired();

// Async-signal-safe: the trampoline of the site at `addr`, or 0.
uint64_t lookup(uint64_t addr);
// Async-signal-safe (the trap handler's arch::TrapRedirect): when `addr` is a site, store its
// trampoline into the 8 bytes at `pc` before the read section ends, and return true.
bool redirect(uint64_t addr, void *pc);
// Async-signal-safe: what the OS's SIGTRAP handler asks first (os::TrapTake, connected by the
// registry's init). The core knows both sides: the architecture reads the trap (arch::take_trap)
// and this table says where a site's trampoline is.
bool take_trap(const siginfo_t *info, ucontext_t *uc);

}  // namespace usprobe::site_table
