#include "bt/program.h"

// GCC 12 sees the std::variant of a moved MapEntry as maybe uninitialized (a known false positive
// of its variant and vector headers).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>

#include <fmt/format.h>

namespace usprobe::bt {

namespace ab = agent::bt;

namespace {

uint64_t align(uint64_t v, uint64_t a) {
  return (v + a - 1) & ~(a - 1);
}

uint32_t map_kind(ValueKind k) {
  switch (k) {
    case ValueKind::kScalar:
      return ab::kMapPlain;
    case ValueKind::kCount:
      return ab::kMapCount;
    case ValueKind::kSum:
      return ab::kMapSum;
    case ValueKind::kAvg:
      return ab::kMapAvg;
    case ValueKind::kMin:
      return ab::kMapMin;
    case ValueKind::kMax:
      return ab::kMapMax;
    case ValueKind::kStats:
      return ab::kMapStats;
    case ValueKind::kHist:
      return ab::kMapHist;
    case ValueKind::kLhist:
      return ab::kMapLhist;
  }
  return ab::kMapPlain;
}

}  // namespace

uint32_t MapDef::key_bytes() const {
  uint32_t n = 0;
  for (const KeyPart &p : key) n += p.size;  // 8 for an integer
  return static_cast<uint32_t>(align(n, 8));
}

Laid lay_out(const Compiled &c, const std::vector<uint32_t> &block_of_probe, uint64_t start_tsc,
             uint64_t nsecs_base) {
  Laid laid;
  const auto map_count = static_cast<uint32_t>(c.maps.size());
  uint64_t shared = ab::shared_head_bytes(map_count);
  for (const MapDef &d : c.maps) {
    ab::MapInfo m{};
    m.kind = d.string_value ? ab::kMapPlainString : map_kind(d.kind);
    m.key_size = d.key_bytes();
    m.value_size = d.string_value
                       ? d.string_value
                       : ab::map_value_size(m.kind, d.lhist_min, d.lhist_max, d.lhist_step);
    m.max_entries = d.max_entries;
    m.is_signed = d.is_signed;
    m.lhist_min = d.lhist_min;
    m.lhist_max = d.lhist_max;
    m.lhist_step = d.lhist_step;
    if (ab::is_shared(m.kind)) {
      m.entry_size = ab::shared_entry_size(m.key_size, d.string_value);
      m.table_offset = align(shared, 64);
      shared = m.table_offset + uint64_t{m.entry_size} * m.max_entries;
    } else {
      m.entry_size = sizeof(ab::AggEntryHeader) + m.key_size + m.value_size;
      m.table_offset = laid.tables_bytes;
      laid.tables_bytes = align(m.table_offset + ab::table_bytes(m), 64);
      if (d.deleted_in_probe) {
        m.tomb_offset = align(shared, 64);
        shared = m.tomb_offset + uint64_t{ab::shared_entry_size(m.key_size)} * m.max_entries;
      }
    }
    laid.maps.push_back(m);
  }
  laid.shared_bytes = align(shared, 4096);

  std::vector<ab::ProbeCode> probes;
  for (uint32_t b : block_of_probe) {
    const CodeBlock &block = c.blocks.at(b);
    probes.push_back({block.first, block.count, block.flags, 0});
  }
  std::vector<ab::PrintfInfo> printfs;
  std::vector<ab::PrintfArg> args;
  for (const PrintfDef &p : c.printfs) {
    ab::PrintfInfo info{static_cast<uint32_t>(args.size()), static_cast<uint32_t>(p.args.size()),
                        sizeof(ab::PrintfRecord), 0};
    for (const PrintfDef::Arg &a : p.args) {
      const bool bytes = a.in_bytes();
      args.push_back({a.is_string ? ab::kPrintfString
                      : bytes     ? ab::kPrintfBytes
                                  : ab::kPrintfInt,
                      bytes ? a.size : 0});
      info.record_size += bytes ? a.size : 8;
    }
    printfs.push_back(info);
  }

  ab::ProgramHeader h{};
  h.magic = ab::kProgramMagic;
  h.probe_count = static_cast<uint32_t>(probes.size());
  h.insn_count = static_cast<uint32_t>(c.insns.size());
  h.constant_count = static_cast<uint32_t>(c.constants.size());
  h.pool_size = static_cast<uint32_t>(c.pool.size());
  h.map_count = map_count;
  h.printf_count = static_cast<uint32_t>(printfs.size());
  h.printf_arg_count = static_cast<uint32_t>(args.size());
  h.string_size = c.string_size;
  h.flags = (c.uses_stacks ? ab::kProgramStacks : 0) | (c.uses_symbols ? ab::kProgramMaps : 0);
  h.tables_bytes = laid.tables_bytes;
  h.shared_size = laid.shared_bytes;
  h.start_tsc = start_tsc;
  h.nsecs_base = nsecs_base;
  uint64_t at = align(sizeof h, 8);
  auto place = [&](uint64_t bytes) {
    uint64_t offset = at;
    at = align(at + bytes, 8);
    return offset;
  };
  h.probes_offset = place(probes.size() * sizeof(ab::ProbeCode));
  h.insns_offset = place(c.insns.size() * sizeof(ab::Insn));
  h.constants_offset = place(c.constants.size() * 8);
  h.pool_offset = place(c.pool.size());
  h.maps_offset = place(laid.maps.size() * sizeof(ab::MapInfo));
  h.printfs_offset = place(printfs.size() * sizeof(ab::PrintfInfo));
  h.printf_args_offset = place(args.size() * sizeof(ab::PrintfArg));
  std::string &out = laid.program;
  out.assign(at, '\0');
  auto put = [&](uint64_t offset, const void *from, size_t bytes) {
    if (bytes) std::memcpy(out.data() + offset, from, bytes);
  };
  put(0, &h, sizeof h);
  put(h.probes_offset, probes.data(), probes.size() * sizeof(ab::ProbeCode));
  put(h.insns_offset, c.insns.data(), c.insns.size() * sizeof(ab::Insn));
  put(h.constants_offset, c.constants.data(), c.constants.size() * 8);
  put(h.pool_offset, c.pool.data(), c.pool.size());
  put(h.maps_offset, laid.maps.data(), laid.maps.size() * sizeof(ab::MapInfo));
  put(h.printfs_offset, printfs.data(), printfs.size() * sizeof(ab::PrintfInfo));
  put(h.printf_args_offset, args.data(), args.size() * sizeof(ab::PrintfArg));
  return laid;
}

ProbeNames ProbeNames::of(const std::vector<std::string> &locations) {
  ProbeNames n;
  for (std::string_view loc : locations) {
    std::string kind = "uprobe:";
    if (loc.starts_with("uretprobe:")) {
      kind = "uretprobe:";
      loc.remove_prefix(kind.size());
    } else if (loc.starts_with("usdt:")) {
      kind = "usdt:";
      loc.remove_prefix(kind.size());
    }
    n.probes.push_back(kind + std::string(loc));
    // The function: after the path's ':' (a path holds none; a USDT probe's name is its last part).
    size_t colon = loc.rfind(':');
    std::string_view func = colon == std::string_view::npos ? loc : loc.substr(colon + 1);
    if (size_t plus = func.find('+'); plus != std::string_view::npos && kind != "usdt:")
      func = func.substr(0, plus);
    n.funcs.emplace_back(func);
  }
  return n;
}

Scalar ProbeNames::name(ProbeName kind, uint64_t index) const {
  const std::vector<std::string> &names = kind == ProbeName::kFunc ? funcs : probes;
  std::string text = index < names.size() ? names[index] : fmt::format("probe {}", index);
  if (kind == ProbeName::kFunc) return Sym{std::move(text)};
  return Str{std::move(text)};
}

Scalar ProbeNames::usym(const char *bytes) const {
  uint64_t w[2] = {};
  std::memcpy(w, bytes, sizeof w);
  if (!symbol) return Sym{fmt::format("{:#x}", w[1])};
  return Sym{
      symbol(static_cast<int32_t>(w[0] & 0xffff'ffffu), static_cast<uint32_t>(w[0] >> 32), w[1])};
}

std::string buf_text(const char *bytes, uint32_t n) {
  std::string out;
  for (uint32_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x20 && c < 0x7f)
      out += static_cast<char>(c);
    else
      out += fmt::format("\\x{:02x}", c);
  }
  return out;
}

Scalar ProbeNames::ustack(const char *bytes, uint32_t frames) const {
  uint64_t head[2] = {};
  std::memcpy(head, bytes, sizeof head);
  std::vector<uint64_t> ips(std::min<uint64_t>(head[1], frames));
  if (!ips.empty()) std::memcpy(ips.data(), bytes + 16, 8 * ips.size());
  Stack st;
  if (stack) {
    st.frames = stack(static_cast<int32_t>(head[0] & 0xffff'ffffu),
                      static_cast<uint32_t>(head[0] >> 32), ips);
  } else {
    for (uint64_t ip : ips) st.frames.push_back(fmt::format("{:#x}", ip));
  }
  return st;
}

std::vector<Scalar> decode_key(const MapDef &m, const char *bytes, const ProbeNames &names) {
  std::vector<Scalar> key;
  for (const KeyPart &p : m.key) {
    if (p.usym) {
      key.push_back(names.usym(bytes));
      bytes += p.size;
    } else if (p.stack_frames != 0) {
      key.push_back(names.ustack(bytes, p.stack_frames));
      bytes += p.size;
    } else if (p.buf_len != 0) {
      key.push_back(Str{buf_text(bytes, p.buf_len)});
      bytes += p.size;
    } else if (p.name != ProbeName::kNone) {
      uint64_t v = 0;
      std::memcpy(&v, bytes, 8);
      key.push_back(names.name(p.name, v));
      bytes += 8;
    } else if (p.is_string) {
      key.push_back(Str{std::string(bytes, ::strnlen(bytes, p.size))});
      bytes += p.size;
    } else {
      uint64_t v = 0;
      std::memcpy(&v, bytes, 8);
      key.push_back(Int{v, p.is_signed});
      bytes += 8;
    }
  }
  return key;
}

void MapReader::merge_words(const MapDef &m, const uint64_t *from, Words &into) const {
  switch (m.kind) {
    case ValueKind::kMin:
    case ValueKind::kMax: {
      if (from[1] == 0) return;
      if (into.empty() || into[1] == 0) {
        into = {from[0], 1};
        return;
      }
      bool less = m.is_signed ? static_cast<int64_t>(from[0]) < static_cast<int64_t>(into[0])
                              : from[0] < into[0];
      if (m.kind == ValueKind::kMin ? less : (!less && from[0] != into[0])) into[0] = from[0];
      return;
    }
    default:
      for (size_t i = 0; i < into.size(); ++i) into[i] += from[i];
  }
}

MapReader::Stamps MapReader::tombstones(uint32_t map) const {
  Stamps tombs;
  const ab::MapInfo &m = laid_.maps[map];
  if (m.tomb_offset == 0) return tombs;
  const uint32_t entry_size = ab::shared_entry_size(m.key_size);
  for (uint32_t k = 0; k < m.max_entries; ++k) {
    const char *e = shared_ + m.tomb_offset + uint64_t{k} * entry_size;
    const auto *h = reinterpret_cast<const ab::SharedEntryHeader *>(e);
    if (h->state.load(std::memory_order_acquire) != ab::kSharedLive) continue;
    tombs[std::string(e + sizeof(ab::SharedEntryHeader), m.key_size)] =
        static_cast<uint32_t>(h->value.load(std::memory_order_relaxed));
  }
  return tombs;
}

void MapReader::merge_table(uint32_t map, const char *tables, const Stamps &tombs, Acc &into,
                            uint64_t &dropped, Stamps *seen) const {
  const ab::MapInfo &m = laid_.maps[map];
  const MapDef &d = compiled_.maps[map];
  const uint32_t generation = generation_of(map);
  const char *base = tables + m.table_offset;
  const auto *t = reinterpret_cast<const ab::TableHeader *>(base);
  // Acquire: pairs with the owner's release store of `used` after it wrote the entry's key.
  uint32_t used = std::min(t->used.load(std::memory_order_acquire), m.max_entries);
  dropped += t->dropped.load(std::memory_order_relaxed);
  const char *entries = base + sizeof(ab::TableHeader) + align(8 * uint64_t{m.max_entries}, 64);
  const uint32_t value_words = m.value_size / 8;
  std::vector<uint64_t> value(value_words);
  for (uint32_t i = 0; i < used; ++i) {
    const char *e = entries + uint64_t{i} * m.entry_size;
    const auto *h = reinterpret_cast<const ab::AggEntryHeader *>(e);
    // An entry of an older generation was cleared since (and not updated after).
    if (h->generation.load(std::memory_order_relaxed) != generation) continue;
    std::string key(e + sizeof(ab::AggEntryHeader), m.key_size);
    // One whose key was deleted since (a tombstone it has not seen) counts as empty too.
    const uint32_t saw = h->deleted_seen.load(std::memory_order_relaxed);
    if (auto tomb = tombs.find(key); tomb != tombs.end() && saw < tomb->second) continue;
    const auto *words = reinterpret_cast<const std::atomic<uint64_t> *>(
        e + sizeof(ab::AggEntryHeader) + m.key_size);
    for (uint32_t w = 0; w < value_words; ++w) value[w] = words[w].load(std::memory_order_relaxed);
    if (seen) {
      uint32_t &s = (*seen)[key];
      s = std::max(s, saw);
    }
    Words &acc = into[std::move(key)];
    if (acc.empty()) acc.assign(value_words, 0);
    merge_words(d, value.data(), acc);
  }
}

uint32_t MapReader::generation_of(uint32_t map) const {
  const auto *head = reinterpret_cast<const ab::SharedHead *>(shared_);
  return (&head->generation[0])[map].load(std::memory_order_relaxed);
}

void MapReader::fold(char *tables) {
  for (uint32_t i = 0; i < laid_.maps.size(); ++i) {
    const ab::MapInfo &m = laid_.maps[i];
    if (ab::is_shared(m.kind)) continue;
    const Stamps tombs = tombstones(i);
    // Folded values of a key deleted since go first.
    for (const auto &[key, stamp] : tombs)
      if (auto s = folded_seen_[i].find(key); s != folded_seen_[i].end() && s->second < stamp) {
        folded_[i].erase(key);
        folded_seen_[i].erase(s);
      }
    merge_table(i, tables, tombs, folded_[i], folded_dropped_, &folded_seen_[i]);
    // Empty it for the slot's next owner: the index buckets of the used entries, then the counts.
    char *base = tables + m.table_offset;
    auto *t = reinterpret_cast<ab::TableHeader *>(base);
    uint32_t used = std::min(t->used.load(std::memory_order_acquire), m.max_entries);
    const char *entries = base + sizeof(ab::TableHeader) + align(8 * uint64_t{m.max_entries}, 64);
    auto *buckets = reinterpret_cast<uint32_t *>(t + 1);
    for (uint32_t k = 0; k < used; ++k) {
      uint32_t b =
          reinterpret_cast<const ab::AggEntryHeader *>(entries + uint64_t{k} * m.entry_size)
              ->bucket;
      if (b < 2 * m.max_entries) buckets[b] = 0;
    }
    t->dropped.store(0, std::memory_order_relaxed);
    t->used.store(0, std::memory_order_relaxed);
  }
}

void MapReader::clear(uint32_t map) {
  auto *head = reinterpret_cast<ab::SharedHead *>(shared_);
  if (ab::is_shared(laid_.maps[map].kind)) {
    // Plain maps: every entry absent (their keys stay where they are, see SharedEntryHeader).
    const ab::MapInfo &m = laid_.maps[map];
    for (uint32_t i = 0; i < m.max_entries; ++i) {
      auto *e = reinterpret_cast<ab::SharedEntryHeader *>(shared_ + m.table_offset +
                                                          uint64_t{i} * m.entry_size);
      uint32_t live = ab::kSharedLive;
      e->state.compare_exchange_strong(live, ab::kSharedAbsent, std::memory_order_release);
    }
    return;
  }
  (&head->generation[0])[map].fetch_add(1, std::memory_order_relaxed);
  folded_[map].clear();
  folded_seen_[map].clear();
}

std::vector<Map> MapReader::read(const LiveTables &live, uint64_t *dropped) const {
  std::vector<Acc> acc = folded_;
  uint64_t lost = folded_dropped_;
  std::vector<Stamps> tombs(laid_.maps.size());
  for (uint32_t i = 0; i < laid_.maps.size(); ++i) {
    if (ab::is_shared(laid_.maps[i].kind)) continue;
    tombs[i] = tombstones(i);
    // Folded values of a key deleted since they were folded are gone.
    for (const auto &[key, stamp] : tombs[i])
      if (auto s = folded_seen_[i].find(key); s != folded_seen_[i].end() && s->second < stamp)
        acc[i].erase(key);
  }
  live([&](const char *tables) {
    for (uint32_t i = 0; i < laid_.maps.size(); ++i)
      if (!ab::is_shared(laid_.maps[i].kind)) merge_table(i, tables, tombs[i], acc[i], lost);
  });
  std::vector<Map> maps;
  for (uint32_t i = 0; i < laid_.maps.size(); ++i) {
    const MapDef &d = compiled_.maps[i];
    const ab::MapInfo &m = laid_.maps[i];
    Map &out = maps.emplace_back();
    out.name = d.name;
    out.kind = d.kind;
    out.is_signed = d.is_signed;
    if (ab::is_shared(m.kind)) {
      for (uint32_t k = 0; k < m.max_entries; ++k) {
        const char *e = shared_ + m.table_offset + uint64_t{k} * m.entry_size;
        const auto *h = reinterpret_cast<const ab::SharedEntryHeader *>(e);
        if (h->state.load(std::memory_order_acquire) != ab::kSharedLive) continue;
        const char *key = e + sizeof(ab::SharedEntryHeader);
        Scalar value = Int{h->value.load(std::memory_order_relaxed), d.is_signed};
        if (m.kind == ab::kMapPlainString)  // bytes any process may write: bounded, never trusted
          value = Str{std::string(key + m.key_size, ::strnlen(key + m.key_size, m.value_size))};
        out.entries.push_back({decode_key(d, key, names_), std::move(value)});
      }
      continue;
    }
    for (const auto &[key, w] : acc[i]) {
      Value v;
      switch (d.kind) {
        case ValueKind::kCount:
        case ValueKind::kSum:
          v = static_cast<int64_t>(w[0]);
          break;
        case ValueKind::kMin:
        case ValueKind::kMax:
          if (w[1] == 0) continue;
          v = static_cast<int64_t>(w[0]);
          break;
        case ValueKind::kAvg:
        case ValueKind::kStats:
          v = Stats{w[0], static_cast<int64_t>(w[1])};
          break;
        case ValueKind::kHist:
          v = Hist{w};
          break;
        case ValueKind::kLhist:
          v = Lhist{d.lhist_min, d.lhist_max, d.lhist_step, w};
          break;
        case ValueKind::kScalar:
          continue;
      }
      out.entries.push_back({decode_key(d, key.data(), names_), std::move(v)});
    }
  }
  if (dropped) *dropped = lost;
  return maps;
}

}  // namespace usprobe::bt
