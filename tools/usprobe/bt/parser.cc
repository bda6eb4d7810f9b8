// Recursive descent, one function per precedence level (C's, as bpftrace's grammar has them).
// Errors unwind as a Failure to parse(), which returns it: every level would otherwise check and
// forward an expected<> of its own, for a parse that stops at the first error anyway.
#include "bt/parser.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <deque>

#include "bt/lexer.h"

namespace usprobe::bt {

namespace {

struct Failure {
  Diagnostic diagnostic;
};

[[noreturn]] void fail_at(SourceLoc loc, std::string message) {
  throw Failure{{loc, std::move(message)}};
}

struct NamedBuiltin {
  std::string_view name;
  Builtin builtin;
};
constexpr std::array<NamedBuiltin, 12> kBuiltins = {{
    {"pid", Builtin::kPid},
    {"tid", Builtin::kTid},
    {"uid", Builtin::kUid},
    {"gid", Builtin::kGid},
    {"comm", Builtin::kComm},
    {"cpu", Builtin::kCpu},
    {"nsecs", Builtin::kNsecs},
    {"elapsed", Builtin::kElapsed},
    {"retval", Builtin::kRetval},
    {"func", Builtin::kFunc},
    {"probe", Builtin::kProbe},
    {"cpid", Builtin::kCpid},
}};

// bpftrace builtins that make no sense, or are not implemented, in user space.
constexpr std::string_view kUnsupportedBuiltins[] = {
    "cgroup", "curtask", "kstack", "rand",  "username", "args",
    "ctx",    "jiffies", "numaid", "sarg0", "sarg1",    "ustack_mode"};

struct NamedFunc {
  std::string_view name;
  Func func;
};
constexpr std::array<NamedFunc, 18> kFuncs = {{
    {"printf", Func::kPrintf},
    {"print", Func::kPrint},
    {"clear", Func::kClear},
    {"delete", Func::kDelete},
    {"has_key", Func::kHasKey},
    {"exit", Func::kExit},
    {"str", Func::kStr},
    {"buf", Func::kBuf},
    {"usym", Func::kUsym},
    {"ustack", Func::kUstack},
    {"count", Func::kCount},
    {"sum", Func::kSum},
    {"avg", Func::kAvg},
    {"min", Func::kMin},
    {"max", Func::kMax},
    {"stats", Func::kStats},
    {"hist", Func::kHist},
    {"lhist", Func::kLhist},
}};

constexpr std::string_view kUnsupportedFuncs[] = {
    "system", "cat",      "join",    "kstack",   "ksym",      "kaddr",    "uaddr",  "ntop",
    "time",   "strftime", "reg",     "cgroupid", "signal",    "override", "sizeof", "offsetof",
    "zero",   "len",      "macaddr", "strncmp",  "path",      "kptr",     "uptr",   "cgroup_path",
    "bswap",  "pton",     "unwatch", "debugf",   "skboutput", "printk"};

// bpftrace's other probe types: all of them probe the kernel or the CPU.
constexpr std::string_view kKernelProbeTypes[] = {
    "kprobe",          "k",  "kretprobe", "kr", "tracepoint", "t",  "rawtracepoint", "rt",
    "software",        "s",  "hardware",  "h",  "profile",    "p",  "watchpoint",    "w",
    "asyncwatchpoint", "aw", "kfunc",     "f",  "kretfunc",   "fr", "iter",          "it"};

struct CastName {
  std::string_view name;
  int bits;
  bool is_signed;
};
constexpr std::array<CastName, 8> kCasts = {{
    {"int8", 8, true},
    {"int16", 16, true},
    {"int32", 32, true},
    {"int64", 64, true},
    {"uint8", 8, false},
    {"uint16", 16, false},
    {"uint32", 32, false},
    {"uint64", 64, false},
}};

const CastName *find_cast(std::string_view name) {
  for (const CastName &c : kCasts)
    if (c.name == name) return &c;
  return nullptr;
}

template <class Array>
bool contains(const Array &names, std::string_view name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

// Binary operators by precedence level, lowest first.
struct BinaryOp {
  std::string_view text;
  Op op;
};
constexpr std::array<std::array<BinaryOp, 4>, 10> kLevels = {{
    {{{"||", Op::kOr}}},
    {{{"&&", Op::kAnd}}},
    {{{"|", Op::kBitOr}}},
    {{{"^", Op::kBitXor}}},
    {{{"&", Op::kBitAnd}}},
    {{{"==", Op::kEq}, {"!=", Op::kNe}}},
    {{{"<", Op::kLt}, {"<=", Op::kLe}, {">", Op::kGt}, {">=", Op::kGe}}},
    {{{"<<", Op::kShl}, {">>", Op::kShr}}},
    {{{"+", Op::kAdd}, {"-", Op::kSub}}},
    {{{"*", Op::kMul}, {"/", Op::kDiv}, {"%", Op::kMod}}},
}};

struct CompoundOp {
  std::string_view text;
  Op op;
};
constexpr std::array<CompoundOp, 10> kCompound = {{
    {"+=", Op::kAdd},
    {"-=", Op::kSub},
    {"*=", Op::kMul},
    {"/=", Op::kDiv},
    {"%=", Op::kMod},
    {"&=", Op::kBitAnd},
    {"|=", Op::kBitOr},
    {"^=", Op::kBitXor},
    {"<<=", Op::kShl},
    {">>=", Op::kShr},
}};

std::optional<uint64_t> parse_uint(std::string_view s) {
  if (s.empty()) return std::nullopt;
  int base = 10;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s.remove_prefix(2);
  }
  unsigned __int128 v = 0;
  for (char c : s) {
    int d = (c >= '0' && c <= '9')   ? c - '0'
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                     : 99;
    if (d >= base) return std::nullopt;
    v = v * static_cast<unsigned>(base) + static_cast<unsigned>(d);
    if (v > UINT64_MAX) return std::nullopt;
  }
  return static_cast<uint64_t>(v);
}

std::vector<std::string> split(std::string_view text, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t at = text.find(sep, start);
    parts.emplace_back(text.substr(start, at == std::string_view::npos ? at : at - start));
    if (at == std::string_view::npos) return parts;
    start = at + 1;
  }
}

AttachPoint parse_attach_point(const Token &tok) {
  AttachPoint ap;
  ap.text = tok.text;
  ap.loc = tok.loc;
  std::vector<std::string> parts = split(tok.text, ':');
  const std::string &type = parts[0];
  auto need = [&](size_t args, const char *name, const char *count) {
    if (parts.size() != args + 1)
      fail_at(tok.loc, fmt::format("{} probe type requires {} arguments", name, count));
    for (size_t i = 1; i < parts.size(); ++i)
      if (parts[i].empty())
        fail_at(tok.loc, fmt::format("{}: part {} of the probe is empty", tok.text, i + 1));
  };
  if (type == "BEGIN" || type == "END") {
    ap.type = type == "BEGIN" ? ProbeType::kBegin : ProbeType::kEnd;
    if (parts.size() != 1) fail_at(tok.loc, fmt::format("{} probe type takes no arguments", type));
  } else if (type == "uprobe" || type == "u" || type == "uretprobe" || type == "ur") {
    ap.type = type.starts_with("uret") || type == "ur" ? ProbeType::kUretprobe : ProbeType::kUprobe;
    need(2, probe_type_name(ap.type), "2");
    ap.target = parts[1];
    ap.function = parts[2];
    if (size_t plus = ap.function.rfind('+'); plus != std::string::npos) {
      std::string off = ap.function.substr(plus + 1);
      ap.offset = parse_uint(off);
      if (!ap.offset)
        fail_at(tok.loc,
                fmt::format("{}: invalid offset '{}' (expected decimal or 0x hex)", tok.text, off));
      if (ap.type == ProbeType::kUretprobe)
        fail_at(tok.loc, fmt::format("{}: a uretprobe takes no offset: it probes the function's "
                                     "returns",
                                     tok.text));
      ap.function.resize(plus);
      if (ap.function.empty())
        fail_at(tok.loc, fmt::format("{}: no function before '+'", tok.text));
    }
  } else if (type == "usdt" || type == "U") {
    ap.type = ProbeType::kUsdt;
    if (parts.size() == 3) {
      need(2, "usdt", "2 or 3");
      ap.name = parts[2];
    } else {
      need(3, "usdt", "2 or 3");
      ap.provider = parts[2];
      ap.name = parts[3];
    }
    ap.target = parts[1];
  } else if (type == "interval" || type == "i") {
    ap.type = ProbeType::kInterval;
    need(2, "interval", "2");
    const std::string &unit = parts[1];
    uint64_t ns_per_unit = unit == "s"    ? 1'000'000'000
                           : unit == "ms" ? 1'000'000
                           : unit == "us" ? 1'000
                                          : 0;
    if (ns_per_unit == 0 && unit != "hz")
      fail_at(tok.loc, fmt::format("{}: invalid interval unit '{}' (expected s, ms, us or hz)",
                                   tok.text, unit));
    std::optional<uint64_t> n = parts[2].find_first_not_of("0123456789") == std::string::npos
                                    ? parse_uint(parts[2])
                                    : std::nullopt;
    if (!n || *n == 0)
      fail_at(tok.loc,
              fmt::format("{}: expected a positive decimal count, got '{}'", tok.text, parts[2]));
    if (unit == "hz") {
      if (*n > 1'000'000'000) fail_at(tok.loc, fmt::format("{}: over 1 GHz", tok.text));
      ap.interval_ns = 1'000'000'000 / *n;
    } else {
      if (*n > UINT64_MAX / ns_per_unit) fail_at(tok.loc, fmt::format("{}: too long", tok.text));
      ap.interval_ns = *n * ns_per_unit;
    }
  } else if (contains(kKernelProbeTypes, type)) {
    fail_at(tok.loc, fmt::format("usprobe does not support {} probes: it traces user space "
                                 "(uprobe, uretprobe, usdt, BEGIN, END, interval)",
                                 type));
  } else {
    fail_at(tok.loc, fmt::format("Invalid probe type: '{}' (expected uprobe, uretprobe, usdt, "
                                 "BEGIN, END or interval)",
                                 type));
  }
  return ap;
}

class Parser {
 public:
  explicit Parser(std::string_view source) : lexer_(source) {}

  Program program() {
    Program prog;
    for (;;) {
      Token tok = unwrap(lexer_.attach_point());
      if (tok.kind == TokenKind::kEnd) break;
      if (tok.kind != TokenKind::kAttach)
        fail_at(tok.loc, fmt::format("syntax error, unexpected {}, expecting an attach point "
                                     "(uprobe:FILE:FUNC, usdt:..., BEGIN...)",
                                     tok.describe()));
      ProbeBlock probe;
      probe.loc = tok.loc;
      probe.attach_points.push_back(parse_attach_point(tok));
      while (is_punct(peek(), ",")) {
        take();
        Token next = unwrap(lexer_.attach_point());
        if (next.kind != TokenKind::kAttach)
          fail_at(next.loc, fmt::format("syntax error, unexpected {}, expecting an attach point",
                                        next.describe()));
        probe.attach_points.push_back(parse_attach_point(next));
      }
      if (is_punct(peek(), "/")) {
        take();
        no_slash_ = true;
        probe.predicate = expression();
        no_slash_ = false;
        expect("/", "the end of the predicate");
      }
      probe.body = block();
      prog.probes.push_back(std::move(probe));
    }
    if (prog.probes.empty())
      fail_at({1, 1, 1, 1}, "the program has no probes (expected e.g. uprobe:FILE:FUNC { ... })");
    return prog;
  }

 private:
  static Token unwrap(std::expected<Token, Diagnostic> t) {
    if (!t) throw Failure{t.error()};
    return std::move(*t);
  }
  const Token &peek(size_t n = 0) {
    while (ahead_.size() <= n) ahead_.push_back(unwrap(lexer_.next()));
    return ahead_[n];
  }
  Token take() {
    peek();
    Token t = std::move(ahead_.front());
    ahead_.pop_front();
    return t;
  }
  static bool is_punct(const Token &t, std::string_view text) {
    return t.kind == TokenKind::kPunct && t.text == text;
  }
  [[noreturn]] void unexpected(const Token &t, std::string_view expecting) {
    fail_at(t.loc,
            fmt::format("syntax error, unexpected {}, expecting {}", t.describe(), expecting));
  }
  Token expect(std::string_view punct, std::string_view what = {}) {
    if (!is_punct(peek(), punct))
      unexpected(peek(),
                 what.empty() ? fmt::format("'{}'", punct) : fmt::format("'{}' ({})", punct, what));
    return take();
  }

  std::vector<Stmt> block() {
    expect("{", "a probe's or if's statements start with '{'");
    std::vector<Stmt> body;
    for (;;) {
      if (is_punct(peek(), "}")) break;
      body.push_back(statement());
      const Stmt &last = body.back();
      if (is_punct(peek(), ";")) {
        take();
      } else if (!is_punct(peek(), "}") && last.kind != StmtKind::kIf) {
        unexpected(peek(), "';' or '}'");
      }
    }
    take();
    return body;
  }

  Stmt statement() {
    const Token &t = peek();
    Stmt s;
    if (t.kind == TokenKind::kIdent && t.text == "if") return if_statement();
    if (t.kind == TokenKind::kMap || t.kind == TokenKind::kScratch) {
      s.kind = StmtKind::kAssign;
      s.target = t.kind == TokenKind::kMap ? map_expr() : scratch_expr();
      const Token &op = peek();
      s.op_loc = op.loc;
      if (is_punct(op, "=")) {
        take();
        s.value = expression();
      } else if (is_punct(op, "++") || is_punct(op, "--")) {
        s.compound = s.increment = true;
        s.op = op.text == "++" ? Op::kAdd : Op::kSub;
        s.value = std::make_unique<Expr>();
        s.value->kind = ExprKind::kInt;
        s.value->int_value = 1;
        s.value->loc = op.loc;
        take();
      } else {
        auto c = std::find_if(kCompound.begin(), kCompound.end(),
                              [&](const CompoundOp &o) { return is_punct(op, o.text); });
        if (c == kCompound.end())
          unexpected(op, fmt::format("'=', an operator such as '+=', or '++' after {}",
                                     s.target->kind == ExprKind::kMap ? "a map" : "a variable"));
        take();
        s.compound = true;
        s.op = c->op;
        s.value = expression();
      }
      s.loc = span(s.target->loc, s.value->loc);
      if (s.increment) s.loc = span(s.target->loc, s.op_loc);
      return s;
    }
    if (t.kind == TokenKind::kEnd || (t.kind == TokenKind::kPunct && t.text != "(" &&
                                      t.text != "-" && t.text != "!" && t.text != "~"))
      unexpected(t, "a statement");
    s.kind = StmtKind::kExpr;
    s.expr = expression();
    s.loc = s.expr->loc;
    if (s.expr->kind != ExprKind::kCall)
      fail_at(s.loc,
              "a statement must be a function call, an assignment or an if: this "
              "expression's value would be unused");
    return s;
  }

  Stmt if_statement() {
    Stmt s;
    s.kind = StmtKind::kIf;
    Token kw = take();
    expect("(", "'if' takes its condition in parentheses");
    s.expr = expression();
    expect(")");
    s.then_body = block();
    s.loc = span(kw.loc, s.expr->loc);
    if (peek().kind == TokenKind::kIdent && peek().text == "else") {
      take();
      if (peek().kind == TokenKind::kIdent && peek().text == "if")
        s.else_body.push_back(if_statement());
      else
        s.else_body = block();
    }
    return s;
  }

  ExprPtr make(ExprKind kind, SourceLoc loc) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->loc = loc;
    return e;
  }

  ExprPtr expression() { return ternary(); }

  ExprPtr ternary() {
    ExprPtr cond = binary(0);
    if (!is_punct(peek(), "?")) return cond;
    take();
    ExprPtr a = expression();
    expect(":", "the ternary operator's ':'");
    ExprPtr b = ternary();
    ExprPtr e = make(ExprKind::kTernary, span(cond->loc, b->loc));
    e->args.push_back(std::move(cond));
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  ExprPtr binary(size_t level) {
    if (level == kLevels.size()) return unary();
    ExprPtr lhs = binary(level + 1);
    for (;;) {
      const Token &t = peek();
      if (t.kind != TokenKind::kPunct) return lhs;
      // Inside a predicate, '/' ends it (parentheses allow a division there: /(a / 2) > 1/).
      if (t.text == "/" && no_slash_) return lhs;
      const BinaryOp *found = nullptr;
      for (const BinaryOp &o : kLevels[level])
        if (!o.text.empty() && o.text == t.text) found = &o;
      if (!found) return lhs;
      SourceLoc op_loc = take().loc;
      ExprPtr rhs = binary(level + 1);
      ExprPtr e = make(ExprKind::kBinary, span(lhs->loc, rhs->loc));
      e->op = found->op;
      e->name_loc = op_loc;
      e->args.push_back(std::move(lhs));
      e->args.push_back(std::move(rhs));
      lhs = std::move(e);
    }
  }

  ExprPtr unary() {
    const Token &t = peek();
    Op op;
    if (is_punct(t, "!"))
      op = Op::kNot;
    else if (is_punct(t, "~"))
      op = Op::kBitNot;
    else if (is_punct(t, "-"))
      op = Op::kNeg;
    else
      return primary();
    Token tok = take();
    ExprPtr operand = unary();
    ExprPtr e = make(ExprKind::kUnary, span(tok.loc, operand->loc));
    e->op = op;
    e->name_loc = tok.loc;
    e->args.push_back(std::move(operand));
    return e;
  }

  // Parses with '/' as division again (inside parentheses, brackets and call arguments).
  template <class F>
  auto nested(F f) {
    bool saved = no_slash_;
    no_slash_ = false;
    auto r = f();
    no_slash_ = saved;
    return r;
  }

  static bool starts_operand(const Token &t) {
    switch (t.kind) {
      case TokenKind::kIdent:
      case TokenKind::kInt:
      case TokenKind::kString:
      case TokenKind::kScratch:
      case TokenKind::kMap:
        return true;
      case TokenKind::kPunct:
        return t.text == "(" || t.text == "!" || t.text == "~";
      default:
        return false;
    }
  }

  ExprPtr primary() {
    const Token &t = peek();
    switch (t.kind) {
      case TokenKind::kInt: {
        Token tok = take();
        ExprPtr e = make(ExprKind::kInt, tok.loc);
        e->int_value = tok.value;
        return e;
      }
      case TokenKind::kString: {
        Token tok = take();
        ExprPtr e = make(ExprKind::kString, tok.loc);
        e->text = std::move(tok.text);
        return e;
      }
      case TokenKind::kScratch:
        return scratch_expr();
      case TokenKind::kMap:
        return map_expr();
      case TokenKind::kIdent:
        return identifier();
      case TokenKind::kPunct:
        if (t.text == "(") return parenthesized();
        break;
      default:
        break;
    }
    unexpected(t, "an expression");
  }

  ExprPtr parenthesized() {
    Token open = take();
    const Token &inner = peek();
    if (inner.kind == TokenKind::kIdent && is_punct(peek(1), ")")) {
      const CastName *cast = find_cast(inner.text);
      bool unknown_type = !cast && !is_builtin_name(inner.text) && starts_operand(peek(2));
      if (unknown_type)
        fail_at(span(open.loc, peek(1).loc),
                fmt::format("Unknown type in cast: '{}' (usprobe casts to int8, int16, int32, "
                            "int64, uint8, uint16, uint32 and uint64)",
                            inner.text));
      if (cast) {
        take();
        take();
        ExprPtr operand = unary();
        ExprPtr e = make(ExprKind::kCast, span(open.loc, operand->loc));
        e->cast_to = Type::integer(cast->bits, cast->is_signed);
        e->args.push_back(std::move(operand));
        return e;
      }
    }
    ExprPtr e = nested([&] { return expression(); });
    Token close = expect(")");
    // The span includes the parentheses, so that a message about `(a + b)` underlines all of it.
    e->loc = span(open.loc, close.loc);
    return e;
  }

  static bool is_builtin_name(std::string_view name) {
    for (const NamedBuiltin &b : kBuiltins)
      if (b.name == name) return true;
    return name.starts_with("arg");
  }

  ExprPtr scratch_expr() {
    Token tok = take();
    if (tok.text[0] >= '0' && tok.text[0] <= '9')
      fail_at(tok.loc,
              fmt::format("usprobe does not support positional parameters (${})", tok.text));
    ExprPtr e = make(ExprKind::kScratch, tok.loc);
    e->text = std::move(tok.text);
    return e;
  }

  ExprPtr map_expr() {
    Token tok = take();
    ExprPtr e = make(ExprKind::kMap, tok.loc);
    e->text = std::move(tok.text);
    if (is_punct(peek(), "[")) {
      take();
      nested([&] {
        for (;;) {
          e->args.push_back(expression());
          if (!is_punct(peek(), ",")) break;
          take();
        }
        return 0;
      });
      Token close = expect("]", "the end of the map's keys");
      e->loc = span(tok.loc, close.loc);
    }
    return e;
  }

  ExprPtr identifier() {
    Token tok = take();
    const std::string &name = tok.text;
    if (is_punct(peek(), "(")) {
      auto f = std::find_if(kFuncs.begin(), kFuncs.end(),
                            [&](const NamedFunc &n) { return n.name == name; });
      if (f == kFuncs.end()) {
        if (contains(kUnsupportedFuncs, name))
          fail_at(tok.loc, fmt::format("usprobe does not support bpftrace's function {}()", name));
        fail_at(tok.loc, fmt::format("Unknown function: {}", name));
      }
      take();
      ExprPtr e = make(ExprKind::kCall, tok.loc);
      e->func = f->func;
      e->name_loc = tok.loc;
      e->text = name;
      nested([&] {
        if (!is_punct(peek(), ")")) {
          for (;;) {
            e->args.push_back(expression());
            if (!is_punct(peek(), ",")) break;
            take();
          }
        }
        return 0;
      });
      Token close = expect(")", fmt::format("the end of {}()'s arguments", name));
      e->loc = span(tok.loc, close.loc);
      return e;
    }
    if (name == "ustack") {
      ExprPtr e = make(ExprKind::kCall, tok.loc);
      e->func = Func::kUstack;
      e->name_loc = tok.loc;
      e->text = name;
      return e;
    }
    for (const NamedBuiltin &b : kBuiltins) {
      if (b.name == name) {
        ExprPtr e = make(ExprKind::kBuiltin, tok.loc);
        e->builtin = b.builtin;
        e->text = name;
        return e;
      }
    }
    if (name.size() >= 4 && name.size() <= 5 && name.starts_with("arg") &&
        name.find_first_not_of("0123456789", 3) == std::string::npos &&
        !(name.size() == 5 && name[3] == '0')) {
      uint64_t n = std::stoull(name.substr(3));
      if (n <= 11) {
        ExprPtr e = make(ExprKind::kBuiltin, tok.loc);
        e->builtin = Builtin::kArg;
        e->int_value = n;
        e->text = name;
        return e;
      }
    }
    if (contains(kUnsupportedBuiltins, name) || name.starts_with("sarg"))
      fail_at(tok.loc, fmt::format("usprobe does not support bpftrace's builtin '{}'", name));
    if (std::any_of(kFuncs.begin(), kFuncs.end(),
                    [&](const NamedFunc &f) { return f.name == name; }))
      fail_at(tok.loc, fmt::format("{}() is a function: call it as {}(...)", name, name));
    fail_at(tok.loc, fmt::format("Unknown identifier: '{}'", name));
  }

  Lexer lexer_;
  std::deque<Token> ahead_;
  bool no_slash_ = false;
};

}  // namespace

std::expected<Program, Diagnostic> parse(std::string_view source) {
  try {
    return Parser(source).program();
  } catch (Failure &f) {
    return std::unexpected(std::move(f.diagnostic));
  }
}

}  // namespace usprobe::bt
