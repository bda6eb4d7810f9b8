#include "bt/host.h"

#include <unistd.h>

#include <fmt/format.h>

#include "bt/print.h"

// GCC 12 sees a moved std::variant as maybe uninitialized (a known false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace usprobe::bt {

namespace {

bool is_cli_block(const ProbeBlock &b) {
  for (const AttachPoint &p : b.attach_points)
    if (p.type != ProbeType::kBegin && p.type != ProbeType::kEnd && p.type != ProbeType::kInterval)
      return false;
  return true;
}

std::expected<void, Diagnostic> validate_expr(const Expr &e) {
  auto refuse = [&](std::string what) {
    return std::unexpected(Diagnostic{
        e.loc, what + " in BEGIN, END or interval: not yet (usprobe runs these in the CLI)"});
  };
  switch (e.kind) {
    case ExprKind::kMap:
      return refuse("reading a map's value");
    case ExprKind::kBuiltin:
      if (e.builtin != Builtin::kPid && e.builtin != Builtin::kNsecs &&
          e.builtin != Builtin::kElapsed && e.builtin != Builtin::kUid &&
          e.builtin != Builtin::kGid && e.builtin != Builtin::kCpid)
        return refuse(fmt::format("'{}'", builtin_name(e.builtin)));
      break;
    case ExprKind::kCall:
      if (e.func != Func::kPrintf && e.func != Func::kPrint && e.func != Func::kClear &&
          e.func != Func::kExit)
        return refuse(fmt::format("{}()", func_name(e.func)));
      // print(@m) and clear(@m) name a map; the rest are values.
      for (size_t i = 0; i < e.args.size(); ++i) {
        if ((e.func == Func::kPrint || e.func == Func::kClear) && i == 0 &&
            e.args[0]->kind == ExprKind::kMap) {
          if (!e.args[0]->args.empty()) return refuse("print() of one map entry");
          continue;
        }
        if (auto ok = validate_expr(*e.args[i]); !ok) return ok;
      }
      return {};
    default:
      break;
  }
  for (const auto &a : e.args)
    if (auto ok = validate_expr(*a); !ok) return ok;
  return {};
}

std::expected<void, Diagnostic> validate_stmts(const std::vector<Stmt> &body) {
  for (const Stmt &s : body) {
    if (s.kind == StmtKind::kAssign) {
      if (s.target->kind == ExprKind::kMap)
        return std::unexpected(Diagnostic{
            s.loc,
            "writing a map in BEGIN, END or interval: not yet (usprobe runs these in the "
            "CLI)"});
      if (auto ok = validate_expr(*s.value); !ok) return ok;
    } else if (s.kind == StmtKind::kIf) {
      if (auto ok = validate_expr(*s.expr); !ok) return ok;
      if (auto ok = validate_stmts(s.then_body); !ok) return ok;
      if (auto ok = validate_stmts(s.else_body); !ok) return ok;
    } else if (auto ok = validate_expr(*s.expr); !ok) {
      return ok;
    }
  }
  return {};
}

}  // namespace

Host::Host(const Program &program, const Compiled &code, bool json, FILE *out, int64_t start_ns)
    : program_(program), code_(code), json_(json), out_(out), start_ns_(start_ns) {
  for (const ProbeBlock &b : program.probes) {
    int64_t next = 0;
    for (const AttachPoint &p : b.attach_points)
      if (p.type == ProbeType::kInterval) next = start_ns + static_cast<int64_t>(p.interval_ns);
    next_interval_.push_back(next);
  }
}

std::expected<void, Diagnostic> Host::validate(const Program &program) {
  for (const ProbeBlock &b : program.probes) {
    if (!is_cli_block(b)) continue;
    if (b.predicate)
      if (auto ok = validate_expr(*b.predicate); !ok) return ok;
    if (auto ok = validate_stmts(b.body); !ok) return ok;
  }
  return {};
}

void Host::write(const std::string &text) {
  std::fwrite(text.data(), 1, text.size(), out_);
}

void Host::attaching(size_t probes) {
  write(json_ ? attached_probes_json(probes) : attaching_line(probes));
}

void Host::printf(const std::string &format, const std::vector<Scalar> &args) {
  std::string text = format_printf(format, args);
  write(json_ ? printf_json(text) : text);
}

void Host::set_maps(MapReader *reader, MapReader::LiveTables live) {
  reader_ = reader;
  live_ = std::move(live);
}

std::vector<Map> Host::maps() const {
  std::vector<Map> all;
  if (!reader_) {
    for (const MapDef &d : code_.maps) all.push_back({d.name, d.kind, d.is_signed, {}});
  } else {
    all = reader_->read(live_);
  }
  // bpftrace 0.17 prints a count() without keys that counted nothing (or was cleared) as 0
  // ("@c: 0"), where every other empty map prints as nothing.
  for (size_t i = 0; i < all.size() && i < program_.maps.size(); ++i)
    if (all[i].kind == ValueKind::kCount && all[i].entries.empty() && program_.maps[i].keys.empty())
      all[i].entries.push_back({{}, Value{int64_t{0}}});
  return all;
}

void Host::print_map(size_t map, uint64_t top, uint64_t div) {
  std::vector<Map> all = maps();
  if (map >= all.size()) return;
  fmt::memory_buffer buf;
  if (json_)
    print_map_json(buf, all[map], top, div);
  else
    bt::print_map(buf, all[map], top, div);
  write(fmt::to_string(buf));
}

void Host::clear_map(size_t map) {
  if (reader_ && map < code_.maps.size()) reader_->clear(static_cast<uint32_t>(map));
}

void Host::print_value(const Scalar &value) {
  if (json_) {
    write(value_json(value));
    return;
  }
  fmt::memory_buffer buf;
  bt::print_value(buf, value);
  write(fmt::to_string(buf));
}

void Host::print_maps_at_exit() {
  fmt::memory_buffer buf;
  if (json_)
    bt::print_maps_at_exit_json(buf, maps());
  else
    bt::print_maps_at_exit(buf, maps());
  write(fmt::to_string(buf));
}

void Host::run_blocks(ProbeType type) {
  for (const ProbeBlock &b : program_.probes)
    for (const AttachPoint &p : b.attach_points)
      if (p.type == type) {
        block(b);
        break;
      }
}

void Host::run_intervals(int64_t now_ns) {
  for (size_t i = 0; i < program_.probes.size(); ++i) {
    if (next_interval_[i] == 0 || now_ns < next_interval_[i]) continue;
    const ProbeBlock &b = program_.probes[i];
    for (const AttachPoint &p : b.attach_points)
      if (p.type == ProbeType::kInterval) next_interval_[i] += static_cast<int64_t>(p.interval_ns);
    block(b);
  }
}

void Host::block(const ProbeBlock &b) {
  // After exit() only END blocks run: they are how a program ends (`interval:s:5 { exit(); }
  // END { ... }`), in bpftrace whichever block called exit().
  bool end = false;
  for (const AttachPoint &p : b.attach_points) end = end || p.type == ProbeType::kEnd;
  if (exit_ && !end) return;
  std::vector<Val> vars(b.variables.size(), Int{0, true});
  if (b.predicate) {
    Val v = eval(*b.predicate, vars);
    if (const Int *i = std::get_if<Int>(&v); i && i->bits == 0) return;
  }
  stmts(b.body, vars);
}

bool Host::stmts(const std::vector<Stmt> &body, std::vector<Val> &vars) {
  for (const Stmt &s : body) {
    switch (s.kind) {
      case StmtKind::kAssign: {
        Val v = eval(*s.value, vars);
        Val &var = vars.at(static_cast<size_t>(s.target->index));
        if (s.compound) {
          const auto *a = std::get_if<Int>(&var), *b = std::get_if<Int>(&v);
          if (a && b) {
            uint64_t x = a->bits, y = b->bits;
            uint64_t r = s.op == Op::kAdd   ? x + y
                         : s.op == Op::kSub ? x - y
                         : s.op == Op::kMul ? x * y
                                            : x;
            var = Int{r, a->is_signed};
          }
        } else {
          var = v;
        }
        break;
      }
      case StmtKind::kIf: {
        Val c = eval(*s.expr, vars);
        const Int *i = std::get_if<Int>(&c);
        if (!stmts(i && i->bits != 0 ? s.then_body : s.else_body, vars)) return false;
        break;
      }
      case StmtKind::kExpr: {
        const Expr &e = *s.expr;
        if (e.kind != ExprKind::kCall) break;
        if (e.func == Func::kExit) {
          exit_ = true;
          return false;
        }
        if (e.func == Func::kPrintf) {
          std::vector<Scalar> args;
          for (size_t i = 1; i < e.args.size(); ++i) {
            Val v = eval(*e.args[i], vars);
            if (auto *n = std::get_if<Int>(&v))
              args.push_back(*n);
            else
              args.push_back(std::get<Str>(v));
          }
          printf(e.args[0]->text, args);
        } else if ((e.func == Func::kPrint || e.func == Func::kClear) &&
                   e.args[0]->kind == ExprKind::kMap) {
          auto index = static_cast<size_t>(e.args[0]->index);
          if (e.func == Func::kClear) {
            clear_map(index);
            break;
          }
          uint64_t top = 0, div = 1;
          if (e.args.size() > 1) {
            Val v = eval(*e.args[1], vars);
            if (auto *n = std::get_if<Int>(&v)) top = n->bits;
          }
          if (e.args.size() > 2) {
            Val v = eval(*e.args[2], vars);
            if (auto *n = std::get_if<Int>(&v)) div = n->bits;
          }
          print_map(index, top, div);
        } else if (e.func == Func::kPrint) {
          Val v = eval(*e.args[0], vars);
          print_value(std::holds_alternative<Int>(v) ? Scalar{std::get<Int>(v)}
                                                     : Scalar{std::get<Str>(v)});
        }
        break;
      }
    }
  }
  return true;
}

Host::Val Host::eval(const Expr &e, std::vector<Val> &vars) {
  auto as_int = [&](const Expr &x) {
    Val v = eval(x, vars);
    const Int *i = std::get_if<Int>(&v);
    return i ? *i : Int{0, true};
  };
  switch (e.kind) {
    case ExprKind::kInt:
      return Int{e.int_value, e.type.is_signed};
    case ExprKind::kString:
      return Str{e.text};
    case ExprKind::kScratch:
      return vars.at(static_cast<size_t>(e.index));
    case ExprKind::kBuiltin: {
      timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      int64_t now = int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
      switch (e.builtin) {
        case Builtin::kPid:
          return Int{static_cast<uint64_t>(getpid()), true};
        case Builtin::kUid:
          return Int{getuid(), true};
        case Builtin::kGid:
          return Int{getgid(), true};
        case Builtin::kNsecs:
          return Int{static_cast<uint64_t>(now), false};
        case Builtin::kElapsed:
          return Int{static_cast<uint64_t>(now - start_ns_), false};
        case Builtin::kCpid:
          return Int{static_cast<uint64_t>(cpid_ ? cpid_() : 0), false};
        default:
          return Int{0, true};
      }
    }
    case ExprKind::kUnary: {
      Int a = as_int(*e.args[0]);
      uint64_t r = e.op == Op::kNot ? a.bits == 0 : e.op == Op::kBitNot ? ~a.bits : -a.bits;
      return Int{r, e.type.is_signed};
    }
    case ExprKind::kTernary: {
      Int c = as_int(*e.args[0]);
      return eval(*e.args[c.bits != 0 ? 1 : 2], vars);
    }
    case ExprKind::kCast: {
      Int a = as_int(*e.args[0]);
      const Type &t = e.cast_to;
      uint64_t v = a.bits;
      if (t.bits < 64) {
        v &= (uint64_t{1} << t.bits) - 1;
        if (t.is_signed && (v >> (t.bits - 1)) & 1) v |= ~((uint64_t{1} << t.bits) - 1);
      }
      return Int{v, t.is_signed};
    }
    case ExprKind::kBinary: {
      Val lv = eval(*e.args[0], vars), rv = eval(*e.args[1], vars);
      if (std::holds_alternative<Str>(lv) || std::holds_alternative<Str>(rv)) {
        bool eq = lv == rv;
        return Int{e.op == Op::kNe ? !eq : eq, true};
      }
      Int a = std::get<Int>(lv), b = std::get<Int>(rv);
      const bool s = a.is_signed && b.is_signed;
      const auto sa = static_cast<int64_t>(a.bits), sb = static_cast<int64_t>(b.bits);
      uint64_t x = a.bits, y = b.bits, r = 0;
      switch (e.op) {
        case Op::kAdd:
          r = x + y;
          break;
        case Op::kSub:
          r = x - y;
          break;
        case Op::kMul:
          r = x * y;
          break;
        case Op::kDiv:
          r = y == 0 ? 0 : s && !(sb == -1) ? static_cast<uint64_t>(sa / sb) : x / y;
          break;
        case Op::kMod:
          r = y == 0 ? 0 : s && !(sb == -1) ? static_cast<uint64_t>(sa % sb) : x % y;
          break;
        case Op::kBitAnd:
          r = x & y;
          break;
        case Op::kBitOr:
          r = x | y;
          break;
        case Op::kBitXor:
          r = x ^ y;
          break;
        case Op::kShl:
          r = y >= 64 ? 0 : x << y;
          break;
        case Op::kShr:
          r = y >= 64 ? 0 : a.is_signed ? static_cast<uint64_t>(sa >> y) : x >> y;
          break;
        case Op::kEq:
          r = x == y;
          break;
        case Op::kNe:
          r = x != y;
          break;
        case Op::kLt:
          r = s ? sa < sb : x < y;
          break;
        case Op::kLe:
          r = s ? sa <= sb : x <= y;
          break;
        case Op::kGt:
          r = s ? sa > sb : x > y;
          break;
        case Op::kGe:
          r = s ? sa >= sb : x >= y;
          break;
        case Op::kAnd:
          r = x != 0 && y != 0;
          break;
        case Op::kOr:
          r = x != 0 || y != 0;
          break;
        default:
          break;
      }
      return Int{r, e.type.is_signed};
    }
    default:
      return Int{0, true};
  }
}

}  // namespace usprobe::bt
