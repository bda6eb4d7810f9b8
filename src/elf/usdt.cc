// USDT notes and their argument strings. The operand grammar is the AT&T syntax that GCC and
// Clang print for an "nor" (register, memory or immediate) asm operand on x86-64:
//   %reg                              a register of any width
//   $imm  $sym  $sym+imm              an immediate
//   disp(base) disp(base,index,scale) disp(,index,scale) (base)  memory, disp: number and/or symbol
//   disp                              an absolute address
// each behind "N@" (size N bytes, negative for signed) or, from older toolchains, alone.
#include "elf/usdt.h"

#include <elf.h>

#include <array>
#include <cstring>
#include <optional>

#include "usprobe/usprobe.h"

namespace usprobe::elf {
namespace {

struct RegisterName {
  const char *name;
  int8_t reg;     // usprobe_reg
  uint8_t width;  // bytes
  uint8_t shift;  // 8 for the high-byte registers
};

// Every general-purpose register name of x86-64 at every width, and %rip.
constexpr RegisterName kRegisters[] = {
    {"rax", USPROBE_RAX, 8, 0}, {"eax", USPROBE_RAX, 4, 0}, {"ax", USPROBE_RAX, 2, 0},
    {"al", USPROBE_RAX, 1, 0},  {"ah", USPROBE_RAX, 1, 8},  {"rbx", USPROBE_RBX, 8, 0},
    {"ebx", USPROBE_RBX, 4, 0}, {"bx", USPROBE_RBX, 2, 0},  {"bl", USPROBE_RBX, 1, 0},
    {"bh", USPROBE_RBX, 1, 8},  {"rcx", USPROBE_RCX, 8, 0}, {"ecx", USPROBE_RCX, 4, 0},
    {"cx", USPROBE_RCX, 2, 0},  {"cl", USPROBE_RCX, 1, 0},  {"ch", USPROBE_RCX, 1, 8},
    {"rdx", USPROBE_RDX, 8, 0}, {"edx", USPROBE_RDX, 4, 0}, {"dx", USPROBE_RDX, 2, 0},
    {"dl", USPROBE_RDX, 1, 0},  {"dh", USPROBE_RDX, 1, 8},  {"rsi", USPROBE_RSI, 8, 0},
    {"esi", USPROBE_RSI, 4, 0}, {"si", USPROBE_RSI, 2, 0},  {"sil", USPROBE_RSI, 1, 0},
    {"rdi", USPROBE_RDI, 8, 0}, {"edi", USPROBE_RDI, 4, 0}, {"di", USPROBE_RDI, 2, 0},
    {"dil", USPROBE_RDI, 1, 0}, {"rbp", USPROBE_RBP, 8, 0}, {"ebp", USPROBE_RBP, 4, 0},
    {"bp", USPROBE_RBP, 2, 0},  {"bpl", USPROBE_RBP, 1, 0}, {"rsp", USPROBE_RSP, 8, 0},
    {"esp", USPROBE_RSP, 4, 0}, {"sp", USPROBE_RSP, 2, 0},  {"spl", USPROBE_RSP, 1, 0},
    {"rip", USPROBE_RIP, 8, 0},
};

// %r8..%r15 and their %rNd, %rNw, %rNb forms.
std::optional<RegisterName> numbered_register(std::string_view name) {
  if (name.size() < 2 || name[0] != 'r') return std::nullopt;
  size_t digits = 1;
  while (digits < name.size() && name[digits] >= '0' && name[digits] <= '9') ++digits;
  std::string_view number = name.substr(1, digits - 1), suffix = name.substr(digits);
  if (number.empty() || number.size() > 2 || number[0] == '0') return std::nullopt;
  int n = number[0] - '0';
  if (number.size() == 2) n = n * 10 + (number[1] - '0');
  if (n < 8 || n > 15) return std::nullopt;
  uint8_t width = suffix.empty()  ? 8
                  : suffix == "d" ? 4
                  : suffix == "w" ? 2
                  : suffix == "b" ? 1
                                  : 0;
  if (width == 0) return std::nullopt;
  return RegisterName{nullptr, static_cast<int8_t>(USPROBE_R8 + (n - 8)), width, 0};
}

// `text` without its leading '%'.
std::optional<RegisterName> find_register(std::string_view text) {
  for (const RegisterName &r : kRegisters)
    if (text == r.name) return r;
  return numbered_register(text);
}

// A decimal or 0x-hexadecimal number, optionally negative, that fits in 64 bits (unsigned
// values up to 2^64-1 wrap to their int64 bit pattern, as the assembler takes them).
std::optional<int64_t> parse_number(std::string_view text) {
  bool negative = !text.empty() && text[0] == '-';
  if (negative) text.remove_prefix(1);
  unsigned radix = 10;
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    radix = 16;
    text.remove_prefix(2);
  }
  if (text.empty()) return std::nullopt;
  uint64_t value = 0;
  for (char c : text) {
    unsigned digit;
    if (c >= '0' && c <= '9')
      digit = static_cast<unsigned>(c - '0');
    else if (radix == 16 && c >= 'a' && c <= 'f')
      digit = static_cast<unsigned>(c - 'a' + 10);
    else if (radix == 16 && c >= 'A' && c <= 'F')
      digit = static_cast<unsigned>(c - 'A' + 10);
    else
      return std::nullopt;
    if (value > (UINT64_MAX - digit) / radix) return std::nullopt;
    value = value * radix + digit;
  }
  if (negative) {
    if (value > uint64_t{1} << 63) return std::nullopt;
    value = 0 - value;
  }
  return static_cast<int64_t>(value);
}

bool is_symbol_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '.';
}
bool is_symbol_char(char c) {
  return is_symbol_start(c) || (c >= '0' && c <= '9') || c == '$';
}

// A displacement or immediate: numbers and at most one symbol, joined by + and -
// ("-16", "0x10", "NBuffers", "40+CheckpointStats", "table+4", "-4+table").
struct Displacement {
  int64_t number = 0;
  std::string symbol;  // empty: none
};

// Returns an error message, empty when `text` parsed.
std::string parse_displacement(std::string_view text, Displacement &out) {
  size_t pos = 0;
  bool first = true;
  while (pos < text.size()) {
    bool negative = false;
    if (text[pos] == '+' || text[pos] == '-') {
      negative = text[pos] == '-';
      ++pos;
    } else if (!first) {
      return "cannot read `" + std::string(text) + "`";
    }
    first = false;
    if (pos >= text.size()) return "cannot read `" + std::string(text) + "`";
    size_t end = pos;
    if (is_symbol_start(text[pos])) {
      while (end < text.size() && is_symbol_char(text[end])) ++end;
      if (negative) return "a negated symbol in `" + std::string(text) + "`";
      if (!out.symbol.empty()) return "two symbols in `" + std::string(text) + "`";
      out.symbol = text.substr(pos, end - pos);
    } else {
      while (end < text.size() && text[end] != '+' && text[end] != '-') ++end;
      auto n = parse_number(text.substr(pos, end - pos));
      if (!n) return "cannot read the number `" + std::string(text.substr(pos, end - pos)) + "`";
      // In unsigned arithmetic, which wraps as the assembler's sum does (and -INT64_MIN is no
      // int64_t).
      const uint64_t magnitude = static_cast<uint64_t>(*n);
      out.number = static_cast<int64_t>(static_cast<uint64_t>(out.number) +
                                        (negative ? 0 - magnitude : magnitude));
    }
    pos = end;
  }
  return {};
}

// A base or index register of an address: 64 bits wide (a 32-bit one needs the addr32 prefix,
// which x32 code uses and x86-64 compilers never emit here).
std::string parse_address_register(std::string_view text, bool allow_rip, int8_t &reg) {
  if (text.empty() || text[0] != '%') return "expected a register, not `" + std::string(text) + "`";
  auto r = find_register(text.substr(1));
  if (!r) return "unknown register `" + std::string(text) + "`";
  if (r->width != 8) return "the address register " + std::string(text) + " is not 64-bit";
  if (r->reg == USPROBE_RIP && !allow_rip) return "%rip cannot be an index";
  reg = r->reg;
  return {};
}

// Resolves `d.symbol` (if any) into an absolute vaddr plus d.number.
std::string resolve(const Displacement &d, const ElfFile *file, int64_t &value) {
  value = d.number;
  if (d.symbol.empty()) return {};
  if (!file) return "no file to look up the symbol `" + d.symbol + "` in";
  auto vaddr = file->symbol_vaddr(d.symbol);
  if (!vaddr) return "the file defines no symbol `" + d.symbol + "`";
  value = static_cast<int64_t>(*vaddr + static_cast<uint64_t>(d.number));
  return {};
}

// One operand, size prefix and all. Returns an error message, empty when it parsed.
std::string parse_operand(std::string_view op, const ElfFile *file, uint64_t pc_vaddr,
                          UsdtArg &arg) {
  // "N@": N a nonzero decimal, '-' for signed, "f" after it for floating point.
  bool sized = false;
  if (size_t at = op.find('@'); at != std::string_view::npos) {
    std::string_view prefix = op.substr(0, at);
    bool floating = prefix.ends_with('f');
    if (floating) prefix.remove_suffix(1);
    auto n = parse_number(prefix);
    if (n && prefix.find('x') == std::string_view::npos) {
      if (floating) return "floating-point arguments are not supported";
      if (*n != 1 && *n != 2 && *n != 4 && *n != 8 && *n != -1 && *n != -2 && *n != -4 && *n != -8)
        return "size " + std::to_string(*n) + " is not 1, 2, 4 or 8 (negative for signed)";
      arg.size = static_cast<uint8_t>(*n < 0 ? -*n : *n);
      arg.is_signed = *n < 0;
      sized = true;
      op.remove_prefix(at + 1);
    }
  }
  if (op.empty()) return "no operand after the size";

  if (op[0] == '%') {
    auto r = find_register(op.substr(1));
    if (!r) return "unknown register `" + std::string(op) + "`";
    if (r->reg == USPROBE_RIP) return "%rip holds no argument";
    arg.kind = UsdtArg::Kind::kRegister;
    arg.base = r->reg;
    arg.shift = r->shift;
    // A bare register says its width by its name: the upper bits of %rax beside %eax are not
    // the argument's.
    if (!sized) arg.size = r->width;
    return {};
  }

  if (op[0] == '$') {
    if (op.size() == 1) return "no value after `$`";
    // "$sym": a symbol's address as an immediate, only in non-PIE code (a position-independent
    // file cannot hold an absolute address in an instruction), so its vaddr is its address.
    Displacement d;
    if (std::string e = parse_displacement(op.substr(1), d); !e.empty()) return e;
    arg.kind = UsdtArg::Kind::kConstant;
    return resolve(d, file, arg.offset);
  }

  arg.kind = UsdtArg::Kind::kMemory;
  size_t open = op.find('(');
  Displacement d;
  if (std::string e = parse_displacement(op.substr(0, open), d); !e.empty()) return e;
  if (open == std::string_view::npos) {  // an absolute address (non-PIE code, as above)
    if (d.symbol.empty() && d.number == 0) return "cannot read `" + std::string(op) + "`";
    return resolve(d, file, arg.offset);
  }
  if (!op.ends_with(')')) return "expected `)` at the end";
  std::string_view inside = op.substr(open + 1, op.size() - open - 2);
  std::array<std::string_view, 3> parts;
  size_t count = 0;
  for (size_t start = 0;;) {
    size_t comma = inside.find(',', start);
    if (count == parts.size())
      return "more than base, index and scale in `(" + std::string(inside) + ")`";
    parts[count++] = inside.substr(start, comma == std::string_view::npos ? comma : comma - start);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  if (!parts[0].empty())
    if (std::string e = parse_address_register(parts[0], true, arg.base); !e.empty()) return e;
  if (count >= 2) {
    if (std::string e = parse_address_register(parts[1], false, arg.index); !e.empty()) return e;
  } else if (parts[0].empty()) {
    return "no register in `()`";
  }
  if (count == 3) {
    auto scale = parse_number(parts[2]);
    if (!scale || (*scale != 1 && *scale != 2 && *scale != 4 && *scale != 8))
      return "scale `" + std::string(parts[2]) + "` is not 1, 2, 4 or 8";
    arg.scale = static_cast<uint8_t>(*scale);
  }
  if (arg.base == USPROBE_RIP && arg.index >= 0) return "%rip with an index register";
  if (std::string e = resolve(d, file, arg.offset); !e.empty()) return e;
  // The assembler's %rip is the next instruction's address; a symbol's is absolute and a bare
  // number is relative to that next instruction, which the note does not tell. Only sym(%rip)
  // is what compilers emit; it becomes relative to the probed nop.
  if (arg.base == USPROBE_RIP) {
    if (d.symbol.empty()) return "a %rip-relative operand without a symbol";
    arg.offset = static_cast<int64_t>(static_cast<uint64_t>(arg.offset) - pc_vaddr);
  }
  return {};
}

uint64_t read_u64(const uint8_t *p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
uint32_t read_u32(const uint8_t *p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

uint64_t align4(uint64_t n) {
  return (n + 3) & ~uint64_t{3};
}

}  // namespace

Result<std::vector<UsdtArg>> parse_usdt_args(std::string_view text, const ElfFile *file,
                                             uint64_t pc_vaddr) {
  std::vector<UsdtArg> args;
  size_t pos = 0;
  while (true) {
    while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\t')) ++pos;
    if (pos >= text.size()) break;
    size_t end = pos;
    while (end < text.size() && text[end] != ' ' && text[end] != '\t') ++end;
    std::string_view op = text.substr(pos, end - pos);
    pos = end;
    UsdtArg arg;
    arg.text = op;
    std::string message = "operand " + std::to_string(args.size() + 1) + " `" + arg.text + "`: ";
    if (args.size() == kUsdtMaxArgs)
      return fail(EINVAL, message + "more than " + std::to_string(kUsdtMaxArgs) + " arguments");
    if (std::string e = parse_operand(op, file, pc_vaddr, arg); !e.empty())
      return fail(EINVAL, message + e);
    args.push_back(std::move(arg));
  }
  return args;
}

std::vector<UsdtNote> parse_stapsdt_notes(std::span<const uint8_t> section) {
  std::vector<UsdtNote> notes;
  static constexpr char kOwner[] = "stapsdt";  // with its NUL: namesz 8
  static constexpr uint32_t kType = 3;
  const uint64_t size = section.size();
  for (uint64_t off = 0; size - off >= 12;) {
    uint32_t namesz = read_u32(&section[off]), descsz = read_u32(&section[off + 4]);
    uint32_t type = read_u32(&section[off + 8]);
    uint64_t name_at = off + 12, desc_at = name_at + align4(namesz);
    if (desc_at > size || descsz > size - desc_at) break;  // truncated: nothing after it is sure
    uint64_t next = desc_at + align4(descsz);
    off = next < size ? next : size;
    if (type != kType || namesz != sizeof kOwner ||
        std::memcmp(&section[name_at], kOwner, sizeof kOwner) != 0 || descsz < 3 * 8)
      continue;
    const uint8_t *desc = &section[desc_at];
    UsdtNote note;
    note.pc = read_u64(desc);
    note.base = read_u64(desc + 8);
    note.semaphore = read_u64(desc + 16);
    // Three NUL-terminated strings, inside the descriptor.
    const char *p = reinterpret_cast<const char *>(desc + 24);
    size_t left = descsz - 24;
    std::string *fields[] = {&note.provider, &note.name, &note.args};
    bool ok = true;
    for (std::string *field : fields) {
      const void *nul = std::memchr(p, 0, left);
      if (!nul) {
        ok = false;
        break;
      }
      size_t len = static_cast<size_t>(static_cast<const char *>(nul) - p);
      field->assign(p, len);
      p += len + 1;
      left -= len + 1;
    }
    if (!ok || note.provider.empty() || note.name.empty()) continue;
    notes.push_back(std::move(note));
  }
  return notes;
}

Result<std::vector<UsdtProbe>> read_usdt_probes(const ElfFile &file) {
  std::vector<UsdtProbe> probes;
  // The correction for a file whose addresses moved after the link (prelink), as libbpf applies
  // it: the section's address now minus the one the note recorded.
  const ElfFile::Section *base_section = file.find_section(".stapsdt.base");
  for (const ElfFile::Section &section : file.sections()) {
    if (section.type != SHT_NOTE || section.name != ".note.stapsdt") continue;
    for (UsdtNote &note : parse_stapsdt_notes(file.section_bytes(section))) {
      uint64_t delta = base_section && note.base != 0 ? base_section->vaddr - note.base : 0;
      UsdtProbe probe;
      probe.provider = std::move(note.provider);
      probe.name = std::move(note.name);
      probe.pc_vaddr = note.pc + delta;
      auto offset = file.vaddr_to_offset(probe.pc_vaddr);
      if (!offset || !file.offset_is_executable(*offset)) continue;
      probe.file_offset = *offset;
      if (note.semaphore != 0) {
        probe.semaphore_vaddr = note.semaphore + delta;
        probe.semaphore_offset = file.vaddr_to_offset(probe.semaphore_vaddr).value_or(0);
      }
      probe.args_text = std::move(note.args);
      if (auto args = parse_usdt_args(probe.args_text, &file, probe.pc_vaddr))
        probe.args = std::move(*args);
      else
        probe.args_error = args.error().message;
      probes.push_back(std::move(probe));
    }
  }
  return probes;
}

}  // namespace usprobe::elf
