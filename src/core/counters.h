// Consumer counter slots. Each consumer owns a slot; each thread record holds kCounterWords words
// per slot (core/thread_record.h): hits, missed, returns. Counts are summed when read: the live
// threads' pairs plus the retired totals of threads that have died.
#pragma once

#include <cstdint>
#include <optional>

namespace usprobe::counters {

struct Totals {
  uint64_t hits = 0, missed = 0, returns = 0;
};

// A fresh slot whose counters are zero in every record. nullopt when all slots are in use.
std::optional<uint32_t> alloc_slot();
// Return a slot. The caller has waited for a grace period: no thread still writes it.
void free_slot(uint32_t slot);
Totals read(uint32_t slot);

// Fold the records of threads that have exited into the retired totals and free those records
// for reuse. Writers call it from time to time (attach, detach).
void reclaim_dead_threads();

}  // namespace usprobe::counters
