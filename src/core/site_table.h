// The table of patched sites: site address -> trampoline. The trap handler reads it to send a
// thread that hit an int3 (an int3-path site, or a jump site while its patch is half written) to
// the site's trampoline. Readers take an RCU read section and never lock: they run in signal
// handlers. Writers hold the registry mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace usprobe::site_table {

// Writers (registry mutex held). Each publishes a new table and retires the old one.
void insert(const std::vector<std::pair<uint64_t, uint64_t>> &site_to_trampoline);
void remove(const std::vector<uint64_t> &sites);
// The tables retired so far, as deleters to run after an rcu::synchronize() that began after this
// call (registry mutex held for the call, not for the deleters).
std::vector<std::function<void()>> take_retired();

// Async-signal-safe: the trampoline of the site at `addr`, or 0.
uint64_t lookup(uint64_t addr);

}  // namespace usprobe::site_table
