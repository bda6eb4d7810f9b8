// The hit path of `usprobe run` (protocol/bt.h). Nothing here may lock, allocate, make a system
// call (a thread's first hit excepted, see slots.cc), call libc (memcpy and memcmp included: they
// may be probed; this file is built with -fno-tree-loop-distribute-patterns so that the loops below
// stay loops) or touch a vector register.
#include "agent/bt_vm.h"

#include "agent/agent_scope.h"
#include "agent/region.h"
#include "agent/ring.h"
#include "agent/safe_copy.h"
#include "agent/slots.h"

namespace usprobe::agent {

using namespace bt;

namespace {

SharedHead *shared_head() {
  return reinterpret_cast<SharedHead *>(g_bt.shared);
}
std::atomic<uint32_t> &generation(uint32_t map) {
  return (&shared_head()->generation[0])[map];
}

// One 64-bit key word's hash (an integer key, the common one): a multiply, its high half.
inline uint32_t hash_word(uint64_t w) {
  return static_cast<uint32_t>((w * 0x9e37'79b9'7f4a'7c15ull) >> 32) | 1u;  // never 0
}

// A key's hash: an 8-byte key's as hash_word (a key looked up from a register or from the key
// area must land in the same bucket), longer ones FNV-1a over 64-bit words, then a final mix.
// Keys are whole words (key_size % 8 == 0). Only the agents hash: the CLI reads entries in order.
inline uint32_t hash_key(const char *key, uint32_t size) {
  if (size == 8) {
    uint64_t w;
    __builtin_memcpy(&w, key, 8);
    return hash_word(w);
  }
  uint64_t h = 0xcbf2'9ce4'8422'2325ull;
  for (uint32_t i = 0; i < size; i += 8) {
    uint64_t w;
    __builtin_memcpy(&w, key + i, 8);  // one load: not a call
    h = (h ^ w) * 0x100'0000'01b3ull;
  }
  h ^= h >> 29;
  h *= 0xbf58'476d'1ce4'e5b9ull;
  h ^= h >> 32;
  return static_cast<uint32_t>(h) | 1u;  // never 0
}

inline bool same_key(const char *a, const char *b, uint32_t size) {
  for (uint32_t i = 0; i < size; i += 8) {
    uint64_t x, y;
    __builtin_memcpy(&x, a + i, 8);
    __builtin_memcpy(&y, b + i, 8);
    if (x != y) return false;
  }
  return true;
}

inline void copy_words(char *dst, const char *src, uint32_t size) {
  for (uint32_t i = 0; i < size; i += 8) {
    uint64_t w;
    __builtin_memcpy(&w, src + i, 8);
    __builtin_memcpy(dst + i, &w, 8);
  }
}

inline std::atomic<uint64_t> *words(char *p) {
  return reinterpret_cast<std::atomic<uint64_t> *>(p);
}
inline void owned_set(std::atomic<uint64_t> &w, uint64_t v) {
  w.store(v, std::memory_order_relaxed);
}
inline uint64_t owned_get(std::atomic<uint64_t> &w) {
  return w.load(std::memory_order_relaxed);
}

// This thread's last plain-map entry found, per map (modulo kCachedMaps): an entry keeps its key
// for good (SharedEntryHeader), so a cached one whose key still equals the one looked up is the
// entry, with no hash and no probing (`@start[tid]` is looked up three or four times a call). The
// session number invalidates entries of an earlier session's region (attach mode).
constexpr uint32_t kCachedMaps = 4;
struct CachedEntry {
  char *entry;
  uint32_t map;
  uint32_t session;
};
constinit thread_local CachedEntry t_cached[kCachedMaps]
    __attribute__((tls_model("initial-exec"))) = {};

// A table of the shared area: a plain map's (table id: the map's index) or an aggregation's
// tombstones (map_count + the map's index); both are SharedEntryHeader tables.
struct SharedTable {
  char *base;
  uint32_t key_size, entry_size, max_entries;
};
inline SharedTable table_of(uint32_t id) {
  const uint32_t n = g_bt.head.map_count;
  if (id < n) {
    const MapInfo &m = g_bt.maps[id];
    return {g_bt.shared + m.table_offset, m.key_size, m.entry_size, m.max_entries};
  }
  const MapInfo &m = g_bt.maps[id - n];
  return {g_bt.shared + m.tomb_offset, m.key_size, shared_entry_size(m.key_size), m.max_entries};
}

char *shared_find_slow(uint32_t map_index, const char *key, bool claim);

// A plain map's entry for `key` (protocol/bt.h, SharedEntryHeader), or nullptr; map_index is a
// table id (table_of). With `claim`, a key not there yet gets an entry (state kSharedAbsent until
// the caller stores). kWordKey: the key is the 8 bytes of `key_word` (held in a register), else
// the map's key_size bytes at `key`.
template <bool kWordKey>
inline char *shared_find(uint32_t map_index, const char *key, uint64_t key_word, bool claim) {
  CachedEntry &c = t_cached[map_index % kCachedMaps];
  if (c.entry && c.map == map_index && c.session == g_region.session) {
    const char *cached_key = c.entry + sizeof(SharedEntryHeader);
    if constexpr (kWordKey) {
      uint64_t w;
      __builtin_memcpy(&w, cached_key, 8);
      if (w == key_word) return c.entry;
    } else if (same_key(cached_key, key, table_of(map_index).key_size)) {
      return c.entry;
    }
  }
  char word[8];
  if constexpr (kWordKey) {
    __builtin_memcpy(word, &key_word, 8);
    key = word;
  }
  char *e = shared_find_slow(map_index, key, claim);
  if (e) c = {e, map_index, g_region.session};
  return e;
}
// The plain map's entry for an instruction's key (kLoad..kHas: in register b, or the key area).
inline char *shared_find_for(uint32_t map_index, uint8_t key_reg, const uint64_t *r,
                             const char *scratch, bool claim) {
  return key_reg != kNoReg ? shared_find<true>(map_index, nullptr, r[key_reg], claim)
                           : shared_find<false>(map_index, scratch, 0, claim);
}

char *shared_find_slow(uint32_t map_index, const char *key, bool claim) {
  const SharedTable m = table_of(map_index);
  char *table = m.base;
  const uint32_t mask = m.max_entries - 1;
  const uint32_t hash = hash_key(key, m.key_size);
  for (uint32_t i = 0, b = hash & mask; i <= mask; ++i, b = (b + 1) & mask) {
    char *e = table + uint64_t{b} * m.entry_size;
    auto *h = reinterpret_cast<SharedEntryHeader *>(e);
    // Acquire pairs with the claimer's release store of kSharedAbsent/kSharedLive: its hash and
    // key are written.
    uint32_t state = h->state.load(std::memory_order_acquire);
    if (state == kSharedEmpty) {
      if (!claim) return nullptr;
      if (h->state.compare_exchange_strong(state, kSharedClaiming, std::memory_order_acquire)) {
        h->hash = hash;
        copy_words(e + sizeof(SharedEntryHeader), key, m.key_size);
        h->value.store(0, std::memory_order_relaxed);
        h->state.store(kSharedAbsent, std::memory_order_release);
        return e;
      }
      // Another thread claimed it a moment ago: look at what it wrote.
    }
    // A claim in progress takes a few stores; wait that long, and no longer (a claimer stopped
    // for good, killed by a signal, must not stall every other thread).
    for (int spin = 0; state == kSharedClaiming && spin < 1000; ++spin) {
      __builtin_ia32_pause();
      state = h->state.load(std::memory_order_acquire);
    }
    if (state == kSharedClaiming) continue;
    if (h->hash == hash && same_key(e + sizeof(SharedEntryHeader), key, m.key_size)) return e;
  }
  if (claim) shared_head()->dropped.fetch_add(1, std::memory_order_relaxed);
  return nullptr;
}

// An aggregation's update of this thread's table (protocol/bt.h, "Tables"). kWordKey: the key is
// the 8 bytes of `key_word` (an 8-byte key held in a register), else the map's key_size bytes at
// `key`; kKeyless: the map has no key (`@h = hist(x)`), so its one entry is the table's first.
// kMayDelete: the map may have tombstones (the specialised operations are for maps without).
template <bool kWordKey, uint32_t kKind = kMapKindCount, bool kKeyless = false,
          bool kMayDelete = true>
inline void aggregate(SlotHeader *s, uint32_t map_index, const char *key, uint64_t key_word,
                      uint64_t v) {
  const AggTable &m = g_bt.agg[map_index];
  char *slot = reinterpret_cast<char *>(s);
  auto *t = reinterpret_cast<TableHeader *>(slot + m.header);
  auto *buckets = reinterpret_cast<uint32_t *>(t + 1);
  char *entries = slot + m.entries;
  const uint32_t key_size = kWordKey ? 8 : kKeyless ? 0 : m.key_size;
  const uint32_t hash = kWordKey ? hash_word(key_word) : hash_key(key, key_size);
  const auto matches = [&](const char *entry_key) {
    if constexpr (kWordKey) {
      uint64_t w;
      __builtin_memcpy(&w, entry_key, 8);
      return w == key_word;
    } else {
      return same_key(entry_key, key, key_size);
    }
  };
  const uint32_t gen = generation(map_index).load(std::memory_order_relaxed);
  char *e = nullptr;
  if constexpr (kKeyless)
    if (__builtin_expect(t->used.load(std::memory_order_relaxed) != 0, 1)) e = entries;
  for (uint32_t i = 0, b = hash & m.mask; !e && i <= m.mask; ++i, b = (b + 1) & m.mask) {
    const uint32_t n = buckets[b];
    if (__builtin_expect(n != 0 && n <= m.max_entries, 1)) {
      char *c = entries + uint64_t{n - 1} * m.entry_size;
      if (reinterpret_cast<AggEntryHeader *>(c)->hash == hash &&
          matches(c + sizeof(AggEntryHeader))) {
        e = c;
        break;
      }
      continue;
    }
    // A new key: the next entry, published before its bucket is written.
    const uint32_t used =
        t->used.load(std::memory_order_relaxed);  // this thread is the only writer
    if (used >= m.max_entries) {
      t->dropped.store(t->dropped.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      return;
    }
    e = entries + uint64_t{used} * m.entry_size;
    auto *h = reinterpret_cast<AggEntryHeader *>(e);
    h->hash = hash;
    h->bucket = b;
    h->generation.store(gen, std::memory_order_relaxed);
    h->deleted_seen.store(0, std::memory_order_relaxed);
    if constexpr (kWordKey)
      __builtin_memcpy(e + sizeof(AggEntryHeader), &key_word, 8);
    else
      copy_words(e + sizeof(AggEntryHeader), key, key_size);
    std::atomic<uint64_t> *value = words(e + sizeof(AggEntryHeader) + key_size);
    for (uint32_t w = 0; w < m.value_words; ++w) owned_set(value[w], 0);
    t->used.store(used + 1, std::memory_order_release);  // pairs with the CLI's acquire
    buckets[b] = used + 1;
    break;
  }
  if (!e) return;
  auto *h = reinterpret_cast<AggEntryHeader *>(e);
  std::atomic<uint64_t> *value = words(e + sizeof(AggEntryHeader) + key_size);
  if (__builtin_expect(h->generation.load(std::memory_order_relaxed) != gen, 0)) {
    // Cleared since: start again from nothing.
    for (uint32_t w = 0; w < m.value_words; ++w) owned_set(value[w], 0);
    h->generation.store(gen, std::memory_order_relaxed);
  }
  if (kMayDelete && __builtin_expect(m.tombs, 0)) {
    // Deleted since (protocol/bt.h, "delete()"): start again from nothing.
    const char *tomb =
        shared_find<false>(g_bt.head.map_count + map_index, e + sizeof(AggEntryHeader), 0, false);
    if (tomb) {
      const auto *th = reinterpret_cast<const SharedEntryHeader *>(tomb);
      if (th->state.load(std::memory_order_acquire) == kSharedLive) {
        const auto stamp = static_cast<uint32_t>(th->value.load(std::memory_order_relaxed));
        if (stamp != h->deleted_seen.load(std::memory_order_relaxed)) {
          for (uint32_t w = 0; w < m.value_words; ++w) owned_set(value[w], 0);
          h->deleted_seen.store(stamp, std::memory_order_relaxed);
        }
      }
    }
  }
  const auto sv = static_cast<int64_t>(v);
  // kKind: the map's kind known where the operation was chosen (kMapKindCount: read it here).
  switch (kKind != kMapKindCount ? kKind : m.kind) {
    case kMapCount:
      owned_set(value[0], owned_get(value[0]) + 1);
      break;
    case kMapSum:
      owned_set(value[0], owned_get(value[0]) + v);
      break;
    case kMapAvg:
    case kMapStats:
      owned_set(value[0], owned_get(value[0]) + 1);
      owned_set(value[1], owned_get(value[1]) + v);
      break;
    case kMapMin:
    case kMapMax: {
      const MapInfo &info = g_bt.maps[map_index];
      uint64_t old = owned_get(value[0]);
      bool less = info.is_signed ? sv < static_cast<int64_t>(old) : v < old;
      bool better = m.kind == kMapMin ? less : (!less && v != old);
      if (owned_get(value[1]) == 0 || better) {
        owned_set(value[0], v);
        owned_set(value[1], 1);
      }
      break;
    }
    case kMapHist: {
      std::atomic<uint64_t> &c = value[hist_bucket(sv)];
      owned_set(c, owned_get(c) + 1);
      break;
    }
    case kMapLhist: {
      const MapInfo &info = g_bt.maps[map_index];
      std::atomic<uint64_t> &c =
          value[lhist_bucket(sv, info.lhist_min, info.lhist_max, info.lhist_step)];
      owned_set(c, owned_get(c) + 1);
      break;
    }
    default:
      break;
  }
}

// A string value: an offset into scratch, or past it into the pool (protocol/bt.h). Returns where
// its bytes are and how many may be read.
inline const char *string_at(const char *scratch, uint64_t v, uint32_t *room) {
  if (v < kScratchBytes) {
    *room = kScratchBytes - static_cast<uint32_t>(v);
    return scratch + v;
  }
  v -= kScratchBytes;
  if (v >= g_bt.head.pool_size) {
    *room = 1;
    return "";
  }
  *room = g_bt.head.pool_size - static_cast<uint32_t>(v);
  return g_bt.pool + v;
}

// Copies a string of at most `size` - 1 bytes and its NUL, zero-padding to `size`.
inline void copy_string(char *dst, const char *src, uint32_t room, uint32_t size) {
  uint32_t i = 0;
  for (; i + 1 < size && i < room && src[i] != '\0'; ++i) dst[i] = src[i];
  for (; i < size; ++i) dst[i] = '\0';
}

inline uint64_t ns_of(uint64_t ticks) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(ticks) * g_region.tsc_to_ns_mult) >>
                               kTscShift);
}

__attribute__((noinline)) void emit_printf(SlotHeader *s, uint32_t probe, uint32_t index,
                                           const uint64_t *r, const char *scratch) {
  const PrintfInfo &p = g_bt.printfs[index];
  uint64_t next_head = 0;
  char *record = ring_reserve(s, p.record_size, &next_head);
  if (!record) {
    std::atomic<uint64_t> &missed = slot_missed(s, g_region.probe_count)[probe];
    owned_add(missed, 1);
    return;
  }
  auto *rec = reinterpret_cast<PrintfRecord *>(record);
  rec->size = p.record_size;
  rec->probe = probe;
  rec->tsc = __builtin_ia32_rdtsc();
  rec->tid = s->tid.load(std::memory_order_relaxed);
  rec->printf_index = index;
  char *out = record + sizeof(PrintfRecord);
  for (uint32_t i = 0; i < p.arg_count; ++i) {
    const PrintfArg &a = g_bt.printf_args[p.first_arg + i];
    if (a.kind == kPrintfInt) {
      __builtin_memcpy(out, &r[i], 8);
      out += 8;
    } else if (a.kind == kPrintfBytes) {
      if (r[i] <= kScratchBytes - a.size)
        copy_words(out, scratch + r[i], a.size);
      else
        for (uint32_t k = 0; k < a.size; ++k) out[k] = 0;
      out += a.size;
    } else {
      uint32_t room = 0;
      const char *str = string_at(scratch, r[i], &room);
      copy_string(out, str, room, a.size);
      out += a.size;
    }
  }
  ring_publish(s, next_head);
}

}  // namespace

// The interpreter is laid out as a table of its operations, one line each where it fits:
// clang-format off
void bt_handler(usprobe_hit *hit, void *user) {
  // Direct threading: each operation jumps straight to the next one's code, whose address its
  // ThreadedInsn holds (one indirect jump per operation, predicted per site). The table is enum
  // Op's order, then the binary operations that take an immediate operand (bt_load rewrites
  // op | kImmOperand to op + kOpCount); bt_load reads it through bt_operations, which calls this
  // with no hit.
#define PLAIN(name) &&op_##name,
#define BIN(name) &&op_##name,
  static constexpr const void *kOps[] = {
      BT_OPS(PLAIN, BIN)
#undef PLAIN
#undef BIN
#define PLAIN(name) &&op_end,
#define BIN(name) &&op_##name##_i,
      BT_OPS(PLAIN, BIN)
#undef PLAIN
#undef BIN
  };
  static_assert(sizeof kOps / sizeof kOps[0] == 2 * kOpCount);
  if (t_in_agent) {
    // bt_operations asks for the table this way (from the agent's own code, t_in_agent set).
    if (hit == nullptr) *static_cast<const void *const **>(user) = kOps;
    return;
  }
  const auto probe = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(user));
  SlotHeader *s = thread_slot();
  std::atomic<uint64_t> &hits = slot_hits(s)[probe];
  std::atomic<uint64_t> &missed = slot_missed(s, g_region.probe_count)[probe];
  // The overflow slot has no tables of its own and no ring: the hit is counted, not run.
  if (overflow_hit(s, hits, missed)) return;
  owned_add(hits, 1);

  const uint64_t *regs = usprobe_hit_regs(hit);
  const ThreadedInsn *pc = g_bt.starts[probe];
  uint64_t r[kRegisters];
  char scratch[kScratchBytes];  // not initialised: the compiler writes before it reads

  const ThreadedInsn *in = nullptr;
#define D r[in->dst]
#define A r[in->a]
#define B r[in->b]
#define NEXT()              \
  do {                      \
    in = pc++;              \
    goto *in->code;         \
  } while (0)
// A binary operation, on a register (op_name) or on the instruction's immediate (op_name_i).
#define BINARY(name, expr)                                                \
  op_##name : {                                                           \
    const uint64_t a = A, b = B;                                          \
    D = (expr);                                                           \
    NEXT();                                                               \
  }                                                                       \
  op_##name##_i : {                                                       \
    const uint64_t a = A, b = static_cast<uint64_t>(int64_t{in->imm});     \
    D = (expr);                                                           \
    NEXT();                                                               \
  }
// A fused compare-and-jump: unless the comparison holds, jump (bt.h, kJfEq).
#define JUMP_UNLESS(name, expr)                                          \
  op_jf_##name : {                                                      \
    const uint64_t a = A, b = B;                                        \
    if (!(expr)) pc += in->imm;                                          \
    NEXT();                                                             \
  }                                                                     \
  op_jf_##name##_i : {                                                  \
    const uint64_t a = A, b = static_cast<uint64_t>(int64_t{in->imm});   \
    if (!(expr)) pc += in->dst | in->b << 8;                              \
    NEXT();                                                             \
  }
  NEXT();

op_arg:     // bt_load rewrites an argument and the return value to kReg: never reached
op_retval:  // (their labels keep the table in enum Op's order)
op_end:
  return;
op_mov: D = A; NEXT();
op_const: D = g_bt.constants[in->imm]; NEXT();
op_const_small: D = static_cast<uint64_t>(static_cast<int64_t>(in->imm)); NEXT();
op_usdt_arg: D = usprobe_usdt_arg(hit, static_cast<unsigned>(in->imm)); NEXT();
op_builtin:
  switch (in->imm) {
    case kPid: D = static_cast<uint64_t>(s->pid.load(std::memory_order_relaxed)); break;
    case kTid: D = static_cast<uint64_t>(s->tid.load(std::memory_order_relaxed)); break;
    case kUid: D = static_cast<uint64_t>(g_bt.uid); break;
    case kGid: D = static_cast<uint64_t>(g_bt.gid); break;
    case kCpu: {
      unsigned aux = 0;
      __builtin_ia32_rdtscp(&aux);  // IA32_TSC_AUX: Linux keeps the CPU number there
      D = aux & 0xfff;
      break;
    }
    case kNsecs: D = g_bt.head.nsecs_base + ns_of(__builtin_ia32_rdtsc()); break;
    case kElapsed: D = ns_of(__builtin_ia32_rdtsc() - g_bt.head.start_tsc); break;
    case kProbeIndex: D = probe; break;
    case kCpid: D = static_cast<uint64_t>(shared_head()->cpid.load(std::memory_order_relaxed)); break;
    default: D = 0; break;
  }
  NEXT();
op_comm:
  for (int w = 0; w < 2; ++w) {
    uint64_t word = s->comm[w].load(std::memory_order_relaxed);
    __builtin_memcpy(scratch + in->imm + 8 * w, &word, 8);
  }
  scratch[in->imm + 15] = '\0';
  D = static_cast<uint64_t>(in->imm);
  NEXT();
op_pool_string: D = kScratchBytes + static_cast<uint64_t>(in->imm); NEXT();
op_str: {
  uint32_t size = g_bt.head.string_size;
  if (in->b != kNoReg && B + 1 < size) size = static_cast<uint32_t>(B + 1);
  char *dst = scratch + in->imm;
  const uint64_t a = A;
  if (a < 4096 || a >= (uint64_t{1} << 56) ||
      usprobe_agent_safe_copy(dst, reinterpret_cast<const char *>(a), size) < 0)
    dst[0] = '\0';
  dst[size - 1] = '\0';
  D = static_cast<uint64_t>(in->imm);
  NEXT();
}
BINARY(add, a + b)
BINARY(sub, a - b)
BINARY(mul, a * b)
BINARY(div_u, b == 0 ? 0 : a / b)
BINARY(div_s, b == 0 || (static_cast<int64_t>(b) == -1 && a == uint64_t{1} << 63) ? 0 : static_cast<uint64_t>(static_cast<int64_t>(a) / static_cast<int64_t>(b)))
BINARY(mod_u, b == 0 ? 0 : a % b)
BINARY(mod_s, b == 0 || static_cast<int64_t>(b) == -1 ? 0 : static_cast<uint64_t>(static_cast<int64_t>(a) % static_cast<int64_t>(b)))
BINARY(and, a & b)
BINARY(or, a | b)
BINARY(xor, a ^ b)
BINARY(shl, b >= 64 ? 0 : a << b)
BINARY(shr_u, b >= 64 ? 0 : a >> b)
BINARY(shr_s, static_cast<uint64_t>(static_cast<int64_t>(a) >> (b >= 64 ? 63 : b)))
// The comparisons, as values (op_eq) and as fused jumps (op_jf_eq): one list.
#define COMPARISONS(X)                                              \
  X(eq, a == b)                                                     \
  X(ne, a != b)                                                     \
  X(lt_s, static_cast<int64_t>(a) < static_cast<int64_t>(b))        \
  X(le_s, static_cast<int64_t>(a) <= static_cast<int64_t>(b))       \
  X(lt_u, a < b)                                                    \
  X(le_u, a <= b)                                                   \
  X(gt_s, static_cast<int64_t>(a) > static_cast<int64_t>(b))        \
  X(ge_s, static_cast<int64_t>(a) >= static_cast<int64_t>(b))       \
  X(gt_u, a > b)                                                    \
  X(ge_u, a >= b)
COMPARISONS(BINARY)

COMPARISONS(JUMP_UNLESS)

op_reg: D = regs[in->imm]; NEXT();
op_tid: D = static_cast<uint64_t>(s->tid.load(std::memory_order_relaxed)); NEXT();
op_pid: D = static_cast<uint64_t>(s->pid.load(std::memory_order_relaxed)); NEXT();
op_nsecs: D = g_bt.head.nsecs_base + ns_of(__builtin_ia32_rdtsc()); NEXT();
op_elapsed: D = ns_of(__builtin_ia32_rdtsc() - g_bt.head.start_tsc); NEXT();
op_probe_index: D = probe; NEXT();
op_add_imm: D = A + static_cast<uint64_t>(static_cast<int64_t>(in->imm)); NEXT();
op_neg: D = -A; NEXT();
op_not: D = ~A; NEXT();
op_lnot: D = A == 0; NEXT();
op_ext: {
  const unsigned bits = static_cast<unsigned>(in->imm) & 0xff;
  const uint64_t a = A;
  if (bits >= 64)
    D = a;
  else if (in->imm & 0x100)
    D = static_cast<uint64_t>(static_cast<int64_t>(a << (64 - bits)) >> (64 - bits));
  else
    D = a & ((uint64_t{1} << bits) - 1);
  NEXT();
}
op_str_eq: {
  uint32_t room_a = 0, room_b = 0;
  const char *x = string_at(scratch, A, &room_a), *y = string_at(scratch, B, &room_b);
  const auto n = static_cast<uint32_t>(in->imm);
  bool eq = true;
  for (uint32_t i = 0; i < n; ++i) {
    char cx = i < room_a ? x[i] : '\0', cy = i < room_b ? y[i] : '\0';
    if (cx != cy) {
      eq = false;
      break;
    }
    if (cx == '\0') break;
  }
  D = eq;
  NEXT();
}
op_jmp: pc += in->imm; NEXT();
op_jz: if (A == 0) pc += in->imm; NEXT();
op_jnz: if (A != 0) pc += in->imm; NEXT();
op_key_int: __builtin_memcpy(scratch + in->imm, &A, 8); NEXT();
op_key_str: {
  uint32_t room = 0;
  const char *str = string_at(scratch, A, &room);
  const auto at = static_cast<uint32_t>(in->imm) & 0xffff;
  copy_string(scratch + at, str, room, static_cast<uint32_t>(in->imm) >> 16);
  NEXT();
}
op_agg:
  if (in->b != kNoReg)
    aggregate<true>(s, static_cast<uint32_t>(in->imm), nullptr, B, A);
  else
    aggregate<false>(s, static_cast<uint32_t>(in->imm), scratch, 0, A);
  NEXT();
op_agg_keyless:
  aggregate<false, kMapKindCount, true, false>(s, static_cast<uint32_t>(in->imm), nullptr, 0, A);
  NEXT();
op_agg_count_word:
  aggregate<true, kMapCount, false, false>(s, static_cast<uint32_t>(in->imm), nullptr, B, 0);
  NEXT();
op_load: {
  char *e = shared_find_for(static_cast<uint32_t>(in->imm), in->b, r, scratch, false);
  auto *h = reinterpret_cast<SharedEntryHeader *>(e);
  D = h && h->state.load(std::memory_order_acquire) == kSharedLive
          ? h->value.load(std::memory_order_relaxed)
          : 0;
  NEXT();
}
op_has: {
  char *e = shared_find_for(static_cast<uint32_t>(in->imm), in->b, r, scratch, false);
  auto *h = reinterpret_cast<SharedEntryHeader *>(e);
  D = h && h->state.load(std::memory_order_acquire) == kSharedLive;
  NEXT();
}
op_store:
  if (char *e = shared_find_for(static_cast<uint32_t>(in->imm), in->b, r, scratch, true)) {
    auto *h = reinterpret_cast<SharedEntryHeader *>(e);
    h->value.store(A, std::memory_order_relaxed);
    // Release: a reader that sees it live (acquire) sees the value.
    h->state.store(kSharedLive, std::memory_order_release);
  }
  NEXT();
op_delete:
  if (char *e = shared_find_for(static_cast<uint32_t>(in->imm), in->b, r, scratch, false))
    reinterpret_cast<SharedEntryHeader *>(e)->state.store(kSharedAbsent, std::memory_order_release);
  NEXT();
op_printf: emit_printf(s, probe, static_cast<uint32_t>(in->imm), &r[in->a], scratch); NEXT();
op_exit: shared_head()->exit_requested.store(1, std::memory_order_relaxed); NEXT();
op_ustack: {
  const auto at = static_cast<uint32_t>(in->imm) & 0xffff;
  const auto frames = static_cast<uint32_t>(in->imm) >> 16;
  auto *w = reinterpret_cast<uint64_t *>(scratch + at);
  int n = usprobe_hit_stack(hit, w + 2, static_cast<int>(frames), g_region.stack_flags);
  if (n < 0) n = 0;
  w[0] = static_cast<uint32_t>(s->pid.load(std::memory_order_relaxed)) |
         uint64_t{g_region.image} << 32;
  w[1] = static_cast<uint64_t>(n);
  for (uint32_t i = static_cast<uint32_t>(n); i < frames; ++i) w[2 + i] = 0;
  D = at;
  NEXT();
}
op_load_str: {
  const uint32_t map = static_cast<uint32_t>(in->imm) & 0xffff;
  const uint32_t at = static_cast<uint32_t>(in->imm) >> 16;
  const MapInfo &m = g_bt.maps[map];
  char *e = shared_find<false>(map, scratch, 0, false);
  auto *h = reinterpret_cast<SharedEntryHeader *>(e);
  if (h && h->state.load(std::memory_order_acquire) == kSharedLive)
    copy_string(scratch + at, e + sizeof(SharedEntryHeader) + m.key_size, m.value_size,
                m.value_size);
  else
    scratch[at] = '\0';
  D = at;
  NEXT();
}
op_store_str: {
  const auto map = static_cast<uint32_t>(in->imm);
  if (char *e = shared_find<false>(map, scratch, 0, true)) {
    const MapInfo &m = g_bt.maps[map];
    uint32_t room = 0;
    const char *str = string_at(scratch, A, &room);
    copy_string(e + sizeof(SharedEntryHeader) + m.key_size, str, room, m.value_size);
    // Release: a reader that sees it live (acquire) sees the string (a writer of the same key at
    // the same moment may tear it: see kMapPlainString).
    reinterpret_cast<SharedEntryHeader *>(e)->state.store(kSharedLive, std::memory_order_release);
  }
  NEXT();
}
op_usym: {
  auto *w = reinterpret_cast<uint64_t *>(scratch + in->imm);
  w[0] = static_cast<uint32_t>(s->pid.load(std::memory_order_relaxed)) |
         uint64_t{g_region.image} << 32;
  w[1] = A;
  D = static_cast<uint64_t>(in->imm);
  NEXT();
}
op_agg_delete: {
  // A new stamp, then the key's tombstone carries it: every thread's entry of the key that has not
  // seen it counts as deleted.
  const auto map = static_cast<uint32_t>(in->imm);
  const uint32_t stamp = shared_head()->delete_clock.fetch_add(1, std::memory_order_relaxed) + 1;
  const uint32_t tombs = g_bt.head.map_count + map;
  char *e = in->b != kNoReg ? shared_find<true>(tombs, nullptr, B, true)
                            : shared_find<false>(tombs, scratch, 0, true);
  if (e) {
    auto *t = reinterpret_cast<SharedEntryHeader *>(e);
    t->value.store(stamp, std::memory_order_relaxed);
    t->state.store(kSharedLive, std::memory_order_release);
  }
  NEXT();
}
op_buf: {
  const auto at = static_cast<uint32_t>(in->imm) & 0xffff;
  const auto n = static_cast<uint32_t>(in->imm) >> 16;
  char *dst = scratch + at;
  const uint32_t padded = (n + 7) & ~7u;
  for (uint32_t i = 0; i < padded; ++i) dst[i] = 0;
  // Byte by byte through the string copy (a NUL is a byte here): at most kMaxBufBytes of them.
  // Any fault zeroes the whole buffer, as bpftrace's failed read does.
  const uint64_t a = A;
  bool readable = a >= 4096 && a < (uint64_t{1} << 56);
  for (uint32_t i = 0; readable && i < n; ++i) {
    char byte[2];
    readable = usprobe_agent_safe_copy(byte, reinterpret_cast<const char *>(a + i), 2) >= 0;
    dst[i] = byte[0];
  }
  if (!readable)
    for (uint32_t i = 0; i < n; ++i) dst[i] = 0;
  D = at;
  NEXT();
}
op_key_bytes: {
  const auto at = static_cast<uint32_t>(in->imm) & 0xffff;
  const auto n = static_cast<uint32_t>(in->imm) >> 16;
  const uint64_t from = A;
  if (from <= kScratchBytes - n)
    copy_words(scratch + at, scratch + from, n);
  else
    for (uint32_t i = 0; i < n; ++i) scratch[at + i] = 0;
  NEXT();
}
#undef NEXT
#undef BINARY
#undef JUMP_UNLESS
#undef COMPARISONS
#undef D
#undef A
#undef B
}
// clang-format on

const void *const *bt_operations() {
  AgentScope scope;  // bt_handler answers only the agent's own calls (t_in_agent)
  const void *const *table = nullptr;
  bt_handler(nullptr, &table);
  return table;
}

}  // namespace usprobe::agent
