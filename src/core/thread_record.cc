#include "core/thread_record.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <new>

#include "core/os.h"
#include "core/return_stack.h"

namespace usprobe {

constinit thread_local ThreadLocals t_thread __attribute__((tls_model("initial-exec")));
std::atomic<uint32_t> g_return_depth{kDefaultReturnDepth};

namespace {

std::atomic<bool> g_counters_external{false};

// The thread's record is set: the counter path may count into its counters (thread_record.h).
ThreadRecord *adopt(ThreadRecord *r) {
  ThreadReturns &rs = t_thread.returns;
  rs.return_top = 0;  // a dead owner's pending returns will never come
  rs.stack_key = 0;
  rs.returns = r->returns;
  rs.return_depth = r->return_depth;
  r->owner_returns.store(&rs, std::memory_order_release);
  t_thread.record = r;
  if (!g_counters_external.load(std::memory_order_relaxed))
    set_counter_home(reinterpret_cast<uint64_t>(r->counters));
  return r;
}

std::atomic<ThreadRecord *> g_records{nullptr};  // head of the list; pushes only (CAS)

// After fork the child's only thread keeps its record but has a new thread id.
void after_fork_in_child() {
  if (ThreadRecord *r = t_thread.record) r->tid.store(os::raw_gettid(), std::memory_order_relaxed);
}

__attribute__((constructor)) void install_atfork() {
  pthread_atfork(nullptr, nullptr, after_fork_in_child);
}

ThreadRecord *new_record() {
  static_assert(sizeof(ThreadRecord) <= 4096);
  // Raw system calls, not libc's: this runs inside whatever probed function a thread hit first,
  // and that may be mmap itself.
  void *mem = os::raw_mmap_anon(4096, PROT_READ | PROT_WRITE, 0);
  if (!mem) return nullptr;
  // Counters: reserved, not committed; pages appear as slots are first used. Above kCounterBias,
  // for the counter path: where the kernel puts mappings anyway, but not under valgrind, whose
  // own layout starts low (and whose instruction counts measure the counter path).
  constexpr size_t kCounterBytes = sizeof(uint64_t) * kCounterWords * kMaxConsumerSlots;
  void *ctr = os::raw_mmap_anon(kCounterBytes, PROT_READ | PROT_WRITE, MAP_NORESERVE);
  if (ctr && reinterpret_cast<uint64_t>(ctr) < kCounterBias) {
    void *high =
        os::raw_mmap_anon(kCounterBytes, PROT_READ | PROT_WRITE, MAP_NORESERVE, 4 * kCounterBias);
    if (high) {
      os::raw_munmap(ctr, kCounterBytes);
      ctr = high;
    }
  }
  if (!ctr) {
    os::raw_munmap(mem, 4096);
    return nullptr;
  }
  // The return stack: its depth is fixed for the record's life (usprobe_set_return_depth applies
  // to records made afterwards).
  uint32_t depth = g_return_depth.load(std::memory_order_relaxed);
  void *ret =
      os::raw_mmap_anon(sizeof(ReturnInstance) * depth, PROT_READ | PROT_WRITE, MAP_NORESERVE);
  if (!ret) {
    os::raw_munmap(ctr, kCounterBytes);
    os::raw_munmap(mem, 4096);
    return nullptr;
  }
  auto *r = new (mem) ThreadRecord;
  r->counters = static_cast<uint64_t *>(ctr);
  r->returns = static_cast<ReturnInstance *>(ret);
  r->return_depth = depth;
  return r;
}

}  // namespace

void counter_path_external() {
  g_counters_external.store(true, std::memory_order_relaxed);
}
bool counter_path_is_external() {
  return g_counters_external.load(std::memory_order_relaxed);
}

ThreadRecord *all_records() {
  return g_records.load(std::memory_order_acquire);
}

ThreadRecord *register_current_thread() {
  pid_t self = os::raw_gettid();
  // Reuse a record freed by reclaim_dead_threads().
  for (ThreadRecord *r = all_records(); r; r = r->next) {
    pid_t expected = 0;
    if (r->tid.load(std::memory_order_relaxed) == 0 &&
        r->tid.compare_exchange_strong(expected, self, std::memory_order_acquire)) {
      return adopt(r);
    }
  }
  ThreadRecord *r = new_record();
  if (!r) return nullptr;
  r->tid.store(self, std::memory_order_relaxed);
  ThreadRecord *head = g_records.load(std::memory_order_relaxed);
  do {
    r->next = head;
    // Release: a walker that sees r also sees its initialised fields (pairs with all_records()).
  } while (!g_records.compare_exchange_weak(head, r, std::memory_order_release,
                                            std::memory_order_relaxed));
  return adopt(r);
}

}  // namespace usprobe
