// .eh_frame and LSDA readers over a bounds-checked cursor: every read either succeeds inside the
// given bytes or fails the cursor, so a truncated or corrupt section ends the walk instead of
// reading past it.
#include "elf/eh_frame.h"

#include <cstring>
#include <map>
#include <optional>
#include <string>

namespace usprobe::elf {
namespace {

// DW_EH_PE_*: the low four bits give the format, the next three how to apply it, 0x80 indirection.
constexpr uint8_t kOmit = 0xff;
constexpr uint8_t kAbsPtr = 0x00, kULeb128 = 0x01, kUData2 = 0x02, kUData4 = 0x03, kUData8 = 0x04,
                  kSLeb128 = 0x09, kSData2 = 0x0a, kSData4 = 0x0b, kSData8 = 0x0c;
constexpr uint8_t kPcRel = 0x10, kIndirect = 0x80;

class Cursor {
 public:
  Cursor(std::span<const uint8_t> bytes, uint64_t vaddr) : bytes_(bytes), vaddr_(vaddr) {}

  bool ok() const { return ok_; }
  size_t pos() const { return pos_; }
  uint64_t vaddr() const { return vaddr_ + pos_; }  // of the next byte
  bool at_end() const { return pos_ >= bytes_.size(); }
  void seek(size_t pos) {
    if (pos > bytes_.size()) ok_ = false;
    pos_ = pos;
  }

  template <typename T>
  T fixed() {
    T v{};
    if (!ok_ || bytes_.size() - pos_ < sizeof v) {
      ok_ = false;
      return v;
    }
    std::memcpy(&v, bytes_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }

  uint64_t uleb128() {
    uint64_t v = 0;
    for (unsigned shift = 0;; shift += 7) {
      auto b = fixed<uint8_t>();
      if (!ok_) return 0;
      if (shift < 64) v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
  }

  int64_t sleb128() {
    uint64_t v = 0;
    unsigned shift = 0;
    uint8_t b = 0;
    do {
      b = fixed<uint8_t>();
      if (!ok_) return 0;
      if (shift < 64) v |= static_cast<uint64_t>(b & 0x7f) << shift;
      shift += 7;
    } while (b & 0x80);
    if (shift < 64 && (b & 0x40)) v |= ~0ull << shift;
    return static_cast<int64_t>(v);
  }

  std::string cstring() {
    std::string s;
    while (true) {
      auto c = fixed<uint8_t>();
      if (!ok_ || c == 0) return s;
      s += static_cast<char>(c);
    }
  }

  // A value in `encoding`'s format (its low four bits), without applying it.
  std::optional<uint64_t> raw(uint8_t encoding) {
    switch (encoding & 0x0f) {
      case kAbsPtr:
      case kUData8:
      case kSData8:
        return fixed<uint64_t>();
      case kULeb128:
        return uleb128();
      case kUData2:
        return fixed<uint16_t>();
      case kUData4:
        return fixed<uint32_t>();
      case kSLeb128:
        return static_cast<uint64_t>(sleb128());
      case kSData2:
        return static_cast<uint64_t>(static_cast<int64_t>(fixed<int16_t>()));
      case kSData4:
        return static_cast<uint64_t>(static_cast<int64_t>(fixed<int32_t>()));
      default:
        ok_ = false;
        return std::nullopt;
    }
  }

  // A pointer in `encoding`: absolute or relative to its own address. The others (text-, data-,
  // function-relative, indirect) need what only the loaded process knows: nullopt, read past.
  std::optional<uint64_t> pointer(uint8_t encoding) {
    const uint64_t at = vaddr();
    auto v = raw(encoding);
    if (!v) return std::nullopt;
    if (encoding & kIndirect) return std::nullopt;
    switch (encoding & 0x70) {
      case 0:
        return *v;
      case kPcRel:
        return at + *v;
      default:
        return std::nullopt;
    }
  }

 private:
  std::span<const uint8_t> bytes_;
  uint64_t vaddr_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// What an FDE needs from its CIE.
struct CieInfo {
  bool has_augmentation_data = false;  // 'z'
  uint8_t fde_encoding = kAbsPtr;      // 'R'
  uint8_t lsda_encoding = kOmit;       // 'L'
};

std::optional<CieInfo> parse_cie(Cursor c) {
  CieInfo info;
  auto version = c.fixed<uint8_t>();
  std::string aug = c.cstring();
  if (!c.ok() || (version != 1 && version != 3)) return std::nullopt;
  if (aug.find("eh") != std::string::npos) c.fixed<uint64_t>();  // old GCC's eh_ptr
  c.uleb128();                                                   // code alignment
  c.sleb128();                                                   // data alignment
  if (version == 1)
    c.fixed<uint8_t>();  // return address register
  else
    c.uleb128();
  if (aug.empty() || aug[0] != 'z') return c.ok() ? std::optional(info) : std::nullopt;
  info.has_augmentation_data = true;
  c.uleb128();  // augmentation data length
  for (char ch : aug.substr(1)) {
    switch (ch) {
      case 'R':
        info.fde_encoding = c.fixed<uint8_t>();
        break;
      case 'L':
        info.lsda_encoding = c.fixed<uint8_t>();
        break;
      case 'P': {
        auto enc = c.fixed<uint8_t>();
        c.raw(enc);  // the personality routine: not needed here
        break;
      }
      case 'S':  // signal frame
      case 'B':  // AArch64 BTI
      case 'G':  // MTE tagged frame
        break;
      default:
        return std::nullopt;  // unknown: the rest of the data cannot be parsed
    }
    if (!c.ok()) return std::nullopt;
  }
  return info;
}

}  // namespace

std::vector<FrameDescription> parse_eh_frame(std::span<const uint8_t> section, uint64_t vaddr) {
  std::vector<FrameDescription> out;
  std::map<size_t, std::optional<CieInfo>> cies;  // by the CIE's offset in the section
  Cursor c(section, vaddr);
  while (!c.at_end()) {
    uint64_t length = c.fixed<uint32_t>();
    if (!c.ok() || length == 0) break;  // the terminator
    if (length == 0xffffffff) length = c.fixed<uint64_t>();
    const size_t body = c.pos();
    if (!c.ok() || length > section.size() - body) break;
    const size_t next = body + length;
    const uint32_t id = c.fixed<uint32_t>();
    if (!c.ok()) break;
    if (id != 0) {
      // An FDE: `id` is the distance back from this field to its CIE.
      if (id > body) break;
      const size_t cie_at = body - id;
      auto it = cies.find(cie_at);
      if (it == cies.end()) {
        Cursor cc(section, vaddr);
        cc.seek(cie_at);
        cc.fixed<uint32_t>();  // length (a 64-bit CIE is not produced by any x86-64 toolchain)
        cc.fixed<uint32_t>();  // id
        it = cies.emplace(cie_at, cc.ok() ? parse_cie(cc) : std::nullopt).first;
      }
      if (it->second) {
        const CieInfo &cie = *it->second;
        auto begin = c.pointer(cie.fde_encoding);
        auto size = c.raw(cie.fde_encoding & 0x0f);
        FrameDescription fde;
        if (begin && size && c.ok()) {
          fde.begin = *begin;
          fde.size = *size;
          if (cie.has_augmentation_data) {
            const uint64_t aug_length = c.uleb128();
            const size_t aug_end = c.pos() + aug_length;
            if (cie.lsda_encoding != kOmit) {
              auto lsda = c.pointer(cie.lsda_encoding);
              if (lsda && c.ok()) fde.lsda = *lsda;
            }
            if (aug_length <= next - c.pos()) c.seek(aug_end);
          }
          if (fde.size != 0) out.push_back(fde);
        }
      }
    }
    c.seek(next);
    if (!c.ok()) break;
  }
  return out;
}

std::vector<uint64_t> parse_lsda(std::span<const uint8_t> lsda, uint64_t lsda_vaddr,
                                 uint64_t function) {
  std::vector<uint64_t> pads;
  Cursor c(lsda, lsda_vaddr);
  uint64_t lp_start = function;
  const uint8_t lp_start_encoding = c.fixed<uint8_t>();
  if (c.ok() && lp_start_encoding != kOmit) {
    auto v = c.pointer(lp_start_encoding);
    if (!v) return pads;
    lp_start = *v;
  }
  const uint8_t ttype_encoding = c.fixed<uint8_t>();
  if (c.ok() && ttype_encoding != kOmit) c.uleb128();  // offset to the type table: not needed
  const uint8_t call_site_encoding = c.fixed<uint8_t>();
  const uint64_t table_length = c.uleb128();
  if (!c.ok() || table_length > lsda.size() - c.pos()) return pads;
  const size_t end = c.pos() + table_length;
  while (c.ok() && c.pos() < end) {
    c.raw(call_site_encoding);  // start of the call site
    c.raw(call_site_encoding);  // its length
    auto pad = c.raw(call_site_encoding);
    c.uleb128();  // action
    if (!c.ok() || !pad || c.pos() > end) break;
    if (*pad != 0) pads.push_back(lp_start + *pad);
  }
  return pads;
}

}  // namespace usprobe::elf
