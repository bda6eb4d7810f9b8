// A probe's consumers as dispatch reads them: one immutable array per probe, replaced whole
// (publish) and freed after a grace period.
#include "core/registry_internal.h"

#include <algorithm>
#include <atomic>

#include "core/probe.h"

namespace usprobe {

ConsumerArray *ConsumerArray::make(const std::vector<ConsumerEntry> &v) {
  const size_t sessions = std::min<size_t>(
      kMaxSessions, std::count_if(v.begin(), v.end(), [](auto &e) { return e.count_returns; }));
  static_assert(sizeof(ConsumerEntry) % alignof(ReturnSession) == 0);
  void *mem = ::operator new(sizeof(ConsumerArray) + v.size() * sizeof(ConsumerEntry) +
                             sessions * sizeof(ReturnSession));
  auto *a = new (mem) ConsumerArray;
  auto *sessions_at = reinterpret_cast<ReturnSession *>(a->entries + v.size());
  a->return_template = sessions_at;
  a->count = static_cast<uint32_t>(v.size());
  a->has_callbacks = std::any_of(v.begin(), v.end(), [](auto &e) { return e.on_entry != nullptr; });
  a->wants_vector_state = std::any_of(
      v.begin(), v.end(), [](auto &e) { return e.on_entry != nullptr && e.wants_vector_state; });
  a->has_returns = std::any_of(v.begin(), v.end(), [](auto &e) { return e.count_returns; });
  a->has_return_callbacks =
      std::any_of(v.begin(), v.end(), [](auto &e) { return e.on_return != nullptr; });
  a->return_wants_vector_state = std::any_of(
      v.begin(), v.end(), [](auto &e) { return e.on_return != nullptr && e.wants_vector_state; });
  uint32_t entry_handlers = 0, return_handlers = 0, returns = 0;
  for (uint32_t i = 0; i < a->count; ++i) {
    const ConsumerEntry &e = v[i];
    if (e.on_entry) {
      ++entry_handlers;
      a->entry_handler = i;
      a->entry_session = e.count_returns;
    }
    if (e.on_return) {
      ++return_handlers;
      a->return_handler = i;
    }
    if (!e.count_returns) continue;
    ++returns;
    if (a->return_sessions == kMaxSessions) {
      a->return_overflow = true;
    } else {
      new (&sessions_at[a->return_sessions++]) ReturnSession{e.slot, 0, {}};
    }
  }
  a->simple_handlers = entry_handlers <= 1 && return_handlers <= 1 && returns <= 1 &&
                       entry_handlers + return_handlers > 0;
  if (!a->simple_handlers) a->entry_handler = a->return_handler = kNoHandler;
  a->fast_callbacks =
      a->has_callbacks && a->simple_handlers && !a->wants_vector_state &&
      std::all_of(v.begin(), v.end(), [](auto &e) { return !e.on_entry || e.without_regs; });
  a->fast_return_callbacks =
      a->has_return_callbacks && a->simple_handlers && !a->return_wants_vector_state &&
      std::all_of(v.begin(), v.end(), [](auto &e) { return !e.on_return || e.without_regs; });
  a->single_entry_callback = v.size() == 1 && v[0].on_entry != nullptr && !v[0].count_returns;
  a->timer_only =
      v.size() == 1 && v[0].count_returns && v[0].external.used && v[0].external.timer.used;
  static std::atomic<uint64_t> next_id{kFirstConsumerArrayId};
  a->id = next_id.fetch_add(1, std::memory_order_relaxed);
  std::copy(v.begin(), v.end(), a->entries);
  return a;
}
void ConsumerArray::destroy(const ConsumerArray *a) {
  ::operator delete(const_cast<ConsumerArray *>(a));
}

namespace registry::internal {

// Replace a probe's consumer array; the old one goes to `garbage`. Says whether the counter path
// (or the return counter path) may still count with the word it had before (it did, and counts no
// more, or into another counter): a slot of the engine's that it named is freed, and an external
// counter's memory given back, only once retire::counter_windows_clear has shown no thread can.
Published publish(const Locked &, Probe *p, std::vector<ConsumerEntry> entries,
                  std::vector<std::function<void()>> &garbage) {
  const ConsumerArray *next = entries.empty() ? nullptr : ConsumerArray::make(entries);
  uint64_t word = 0;
  bool external = false;
  if (next && next->count == 1 && !next->has_returns) {
    const ConsumerEntry &e = next->entries[0];
    if (e.external.used) {
      word = tagged_counter_word(e.external.offset, e.external.tag);
      external = true;
    } else if (!next->has_callbacks && !counter_path_is_external()) {
      word = counter_word(e.slot);
    }
  }
  // One return probe alone, without an entry handler: the return paths' case.
  const bool lone_return = next && next->count == 1 && next->has_returns && !next->has_callbacks &&
                           next->return_sessions == 1;
  uint64_t return_word = 0;
  if (lone_return && !next->has_return_callbacks && !next->entries[0].external.used &&
      !counter_path_is_external())
    return_word = counter_word(next->entries[0].slot);
  // Off before the array changes (relaxed: the exchange's release orders it first; a thread that
  // read the word before counts a hit that the old array's consumer would count too), on once the
  // new array is published.
  const uint64_t old_word = p->counter_word.load(std::memory_order_relaxed);
  if (old_word != word) p->counter_word.store(0, std::memory_order_relaxed);
  const uint64_t old_return_word = p->return_word.load(std::memory_order_relaxed);
  if (old_return_word != return_word) p->return_word.store(0, std::memory_order_relaxed);
  uint64_t timer_word = 0;
  if (next && next->timer_only && next->return_sessions == 1) {
    const ExternalCounter &e = next->entries[0].external;
    timer_word = tagged_counter_word(e.offset, e.tag);
  }
  uint64_t external_return_word = 0;
  if (lone_return && next->entries[0].external.used && next->entries[0].external.at_return) {
    const ExternalCounter &e = next->entries[0].external;
    external_return_word = tagged_counter_word(e.offset, e.tag);
  }
  const uint64_t old_external_return_word = p->external_return_word.load(std::memory_order_relaxed);
  if (old_external_return_word != external_return_word) {
    p->external_return_word.store(0, std::memory_order_relaxed);
    if (external_return_word) p->external_return_session = next->entries[0].slot;  // before it
  }
  const uint64_t old_timer_word = p->timer_word.load(std::memory_order_relaxed);
  if (old_timer_word != timer_word) {
    p->timer_word.store(0, std::memory_order_relaxed);
    if (timer_word) {
      // The word's fields, before the word (release below).
      const ConsumerEntry &e = next->entries[0];
      p->timer_session = e.slot;
      p->timer_returns = int64_t{e.external.timer.returns} - e.external.offset;
      p->timer_sum = int64_t{e.external.timer.sum} - e.external.offset;
      p->timer_buckets = int64_t{e.external.timer.buckets} - e.external.offset;
      p->timer_mult = e.external.timer.tsc_to_ns_mult;
    }
  }
  // The trampoline's hint first when callbacks arrive, last when they go; a trampoline that reads
  // it stale is corrected by dispatch (kDispatchNeedsVectorSave).
  if (next && next->wants_vector_state) p->wants_vector_state.store(1, std::memory_order_relaxed);
  // Release: dispatch's acquire load sees a fully built array.
  const ConsumerArray *old = p->consumers.exchange(next, std::memory_order_acq_rel);
  if (!next || !next->wants_vector_state) p->wants_vector_state.store(0, std::memory_order_relaxed);
  p->no_entry_handlers.store(!next || !next->has_callbacks || next->fast_callbacks,
                             std::memory_order_relaxed);
  const uint8_t fast = next && next->timer_only ? Probe::kTimedHandlers : Probe::kFastHandlers;
  p->fast_entry_handlers.store(next && next->fast_callbacks ? fast : 0, std::memory_order_relaxed);
  p->fast_return_handlers.store(next && next->fast_return_callbacks ? fast : 0,
                                std::memory_order_relaxed);
  p->single_entry_callback.store(next && next->single_entry_callback, std::memory_order_relaxed);
  const bool old_external = p->counter_word_external;
  p->counter_word_external = external;
  if (word != old_word) p->counter_word.store(word, std::memory_order_relaxed);
  if (return_word != old_return_word) p->return_word.store(return_word, std::memory_order_relaxed);
  if (timer_word != old_timer_word) p->timer_word.store(timer_word, std::memory_order_release);
  if (external_return_word != old_external_return_word)
    p->external_return_word.store(external_return_word, std::memory_order_release);
  if (old) garbage.emplace_back([old] { ConsumerArray::destroy(old); });
  Published was;
  if (old_word != 0 && old_word != word) {
    was.external = old_external;
    was.engine_slot = !old_external;
    was.slot = counter_word_slot(old_word);
  }
  if (old_return_word != 0 && old_return_word != return_word) {
    was.engine_slot = true;
    was.slot = counter_word_slot(old_return_word);
  }
  if (old_timer_word != 0 && old_timer_word != timer_word) was.external = true;
  if (old_external_return_word != 0 && old_external_return_word != external_return_word)
    was.external = true;
  return was;
}

std::vector<ConsumerEntry> entries_of(const Locked &, const Probe *p) {
  std::vector<ConsumerEntry> v;
  if (const ConsumerArray *a = p->consumers.load(std::memory_order_relaxed))
    v.assign(a->entries, a->entries + a->count);
  return v;
}

}  // namespace registry::internal
}  // namespace usprobe
