// One walk over the program types it; it runs until the map table stops growing with errors about
// undefined maps held back (a map may be read above the line that assigns it, as in bpftrace),
// then once more with every error reported. Errors unwind as a Failure to check().
#include "bt/check.h"

#include <fmt/format.h>

#include <algorithm>

namespace usprobe::bt {

namespace {

struct Failure {
  Diagnostic diagnostic;
};
// A read of a map not (yet) assigned, in a collecting walk: the statement is left for later.
struct Deferred {};

[[noreturn]] void fail_at(SourceLoc loc, std::string message) {
  throw Failure{{loc, std::move(message)}};
}

constexpr uint32_t kStrSize = 64;        // bpftrace's BPFTRACE_STRLEN default
constexpr uint32_t kCommSize = 16;       // TASK_COMM_LEN
constexpr uint32_t kUstackFrames = 127;  // bpftrace's default (perf_event_max_stack)
constexpr uint32_t kUstackMaxFrames = 1024;

bool is_aggregation(Func f) {
  return f >= Func::kCount;
}

ValueKind aggregation_kind(Func f) {
  switch (f) {
    case Func::kCount:
      return ValueKind::kCount;
    case Func::kSum:
      return ValueKind::kSum;
    case Func::kAvg:
      return ValueKind::kAvg;
    case Func::kMin:
      return ValueKind::kMin;
    case Func::kMax:
      return ValueKind::kMax;
    case Func::kStats:
      return ValueKind::kStats;
    case Func::kHist:
      return ValueKind::kHist;
    case Func::kLhist:
      return ValueKind::kLhist;
    default:
      return ValueKind::kScalar;
  }
}

// How printf's messages name a type: "integer", "string", "buffer", "count".
std::string printf_type_name(const Type &t) {
  switch (t.kind) {
    case TypeKind::kInt:
      return "integer";
    case TypeKind::kString:
    case TypeKind::kUsym:
      return "string";
    case TypeKind::kBuf:
      return "buffer";
    default:
      return t.name();
  }
}

// Maps store integers 64 bits wide, keeping their signedness (bpftrace's).
Type stored(Type t) {
  if (t.is_int()) t.bits = 64;
  return t;
}

// Whether a value of type `b` may go where `a` went before (the same kind; ints of any width, the
// first's signedness kept; strings, buffers and stacks of any size, the largest kept).
bool same_kind(const Type &a, const Type &b) {
  return a.kind == b.kind && (a.kind != TypeKind::kAggregation || a.aggregation == b.aggregation);
}
void widen(Type &into, const Type &t) {
  into.size = std::max(into.size, t.size);
}

// A map's keys as bpftrace 0.17's "Argument mismatch" names them: every integer key is "unsigned
// int64" there, whatever its sign (the sign still decides how the key prints: @[-5]).
std::string key_list(const std::vector<Type> &types) {
  std::string out = "[";
  for (size_t i = 0; i < types.size(); ++i)
    out += (i ? ", " : "") + (types[i].is_int() ? std::string("unsigned int64") : types[i].name());
  return out + "]";
}

// "one argument", "2 arguments": bpftrace's words in its argument-count errors.
std::string arguments(size_t n) {
  return n == 1 ? std::string("one argument") : fmt::format("{} arguments", n);
}

bool is_int_literal(const Expr &e, int64_t *value) {
  if (e.kind == ExprKind::kInt) {
    *value = static_cast<int64_t>(e.int_value);
    return true;
  }
  if (e.kind == ExprKind::kUnary && e.op == Op::kNeg && e.args[0]->kind == ExprKind::kInt) {
    *value = -static_cast<int64_t>(e.args[0]->int_value);
    return true;
  }
  return false;
}

class Checker {
 public:
  explicit Checker(Program &program) : prog_(program) {}

  void run() {
    // bpftrace takes one BEGIN and one END (its underline starts where the previous token ends).
    bool seen[2] = {false, false};
    for (const ProbeBlock &p : prog_.probes)
      for (const AttachPoint &ap : p.attach_points) {
        if (ap.type != ProbeType::kBegin && ap.type != ProbeType::kEnd) continue;
        bool &s = seen[ap.type == ProbeType::kEnd];
        if (s)
          fail_at(ap.loc, fmt::format("More than one {} probe defined", probe_type_name(ap.type)));
        s = true;
      }
    // Collect: until no statement defines a new map.
    collecting_ = true;
    for (size_t before = SIZE_MAX; before != prog_.maps.size();) {
      before = prog_.maps.size();
      walk();
    }
    collecting_ = false;
    prog_.printfs.clear();
    walk();
  }

 private:
  void walk() {
    for (ProbeBlock &p : prog_.probes) {
      probe_ = &p;
      p.variables.clear();
      if (p.predicate) {
        guarded([&] { condition(*p.predicate, "predicate"); });
      }
      body(p.body);
    }
  }

  template <class F>
  void guarded(F f) {
    try {
      f();
    } catch (Deferred &) {
      if (!collecting_) throw;
    }
  }

  void body(std::vector<Stmt> &stmts) {
    for (Stmt &s : stmts) guarded([&] { statement(s); });
  }

  void condition(Expr &e, const char *what) {
    Type t = value(e);
    if (!t.is_int())
      fail_at(e.loc, fmt::format("the {} must be an integer ({} given)", what, t.name()));
  }

  void statement(Stmt &s) {
    switch (s.kind) {
      case StmtKind::kExpr:
        expr(*s.expr);
        return;
      case StmtKind::kIf:
        condition(*s.expr, "condition of if");
        body(s.then_body);
        body(s.else_body);
        return;
      case StmtKind::kAssign:
        if (s.target->kind == ExprKind::kMap)
          assign_map(s);
        else
          assign_scratch(s);
        return;
    }
  }

  // The type of an expression used as a value: not void, not an aggregation.
  Type value(Expr &e) {
    Type t = expr(e);
    if (t.kind == TypeKind::kNone)
      fail_at(e.loc, fmt::format("{}() returns no value", func_name(e.func)));
    if (t.kind == TypeKind::kAggregation)
      fail_at(e.loc, fmt::format("{} holds {}() values, which usprobe reads only through print(), "
                                 "clear(), delete() and has_key(): each thread keeps its own part "
                                 "of them until they are printed",
                                 e.text, aggregation_name(t.aggregation)));
    return t;
  }

  void assign_scratch(Stmt &s) {
    Expr &target = *s.target;
    Type t = value(*s.value);
    auto &vars = probe_->variables;
    auto it = std::find_if(vars.begin(), vars.end(),
                           [&](const Variable &v) { return v.name == target.text; });
    if (s.compound) {
      if (it == vars.end())
        fail_at(target.loc, fmt::format("Undefined or undeclared variable: ${}", target.text));
      compound_operands(s, it->type, t);
    } else if (it == vars.end()) {
      vars.push_back({target.text, t});
      it = vars.end() - 1;
    } else if (!same_kind(it->type, t)) {
      fail_at(s.op_loc, fmt::format("Type mismatch for ${}: trying to assign value of type '{}' "
                                    "when variable already contains a value of type '{}'",
                                    target.text, t.name(), it->type.name()));
    } else {
      widen(it->type, t);
    }
    target.index = static_cast<int>(it - vars.begin());
    target.type = it->type;
  }

  void compound_operands(const Stmt &s, const Type &current, const Type &operand) {
    std::string op =
        s.increment ? (s.op == Op::kAdd ? "++" : "--") : std::string(op_text(s.op)) + "=";
    SourceLoc loc = s.increment ? s.loc : s.op_loc;
    if (!current.is_int())
      fail_at(loc, fmt::format("The {} operator can not be used on expressions of type '{}'", op,
                               current.name()));
    if (!operand.is_int())
      fail_at(s.value->loc, fmt::format("The {} operator needs an integer on its right ({} given)",
                                        op, operand.name()));
  }

  // The map `e` names, created if `create` and unknown. Checks its keys against its earlier uses.
  // `whole`: the map itself (print(@m), has_key(@m, k)), whatever its keys.
  MapInfo *map_of(Expr &e, bool create, bool whole = false) {
    std::vector<Type> keys;
    for (ExprPtr &k : e.args) {
      Type t = value(*k);
      if (t.kind == TypeKind::kNone || t.kind == TypeKind::kAggregation)
        fail_at(k->loc, fmt::format("a map key can not be of type {}", t.name()));
      keys.push_back(stored(t));
    }
    auto it = std::find_if(prog_.maps.begin(), prog_.maps.end(),
                           [&](const MapInfo &m) { return m.name == e.text; });
    if (it == prog_.maps.end()) {
      if (!create) {
        if (collecting_) throw Deferred{};
        fail_at(e.loc, fmt::format("Undefined map: {}", e.text));
      }
      MapInfo m;
      m.name = e.text;
      m.keys = keys;
      m.loc = e.loc;
      prog_.maps.push_back(std::move(m));
      it = prog_.maps.end() - 1;
    } else if (!whole) {
      bool match = it->keys.size() == keys.size();
      for (size_t i = 0; match && i < keys.size(); ++i) match = same_kind(it->keys[i], keys[i]);
      if (!match)
        fail_at(e.loc, fmt::format("Argument mismatch for {}: trying to access with arguments: {} "
                                   "when map expects arguments: {}",
                                   e.text, key_list(keys), key_list(it->keys)));
      for (size_t i = 0; i < keys.size(); ++i) widen(it->keys[i], keys[i]);
    }
    e.index = static_cast<int>(it - prog_.maps.begin());
    return &*it;
  }

  // A map's value as an expression gives it: plain values as stored, aggregations as kAggregation.
  static Type aggregation_type(ValueKind kind) {
    Type t;
    t.kind = TypeKind::kAggregation;
    t.aggregation = kind;
    return t;
  }
  static Type map_value_type(const MapInfo &m) {
    return m.kind == ValueKind::kScalar ? m.value : aggregation_type(m.kind);
  }

  void assign_map(Stmt &s) {
    Expr &target = *s.target;
    Expr &v = *s.value;
    ValueKind kind = ValueKind::kScalar;
    Type t;
    int64_t lhist[3] = {0, 0, 1};
    if (v.kind == ExprKind::kCall && is_aggregation(v.func)) {
      if (s.compound)
        fail_at(v.loc, fmt::format("{}() should be directly assigned to a map", func_name(v.func)));
      kind = aggregation_kind(v.func);
      t = aggregation(v, lhist);
    } else {
      t = stored(value(v));
    }
    // The map is looked up after its value, as bpftrace does: `@x = @x + 1` reads an undefined @x.
    MapInfo *m = map_of(target, true);
    bool fresh = m->value.kind == TypeKind::kNone && m->kind == ValueKind::kScalar;
    Type incoming = kind == ValueKind::kScalar ? t : aggregation_type(kind);
    if (s.compound) {
      compound_operands(s, fresh ? Type::integer(64, true) : map_value_type(*m), t);
      incoming = fresh ? Type::integer(64, true) : map_value_type(*m);
    }
    if (fresh) {
      m->kind = kind;
      m->value = t;
      m->is_signed =
          kind == ValueKind::kCount || kind == ValueKind::kHist || kind == ValueKind::kLhist
              ? false
              : t.kind != TypeKind::kInt || t.is_signed;
      m->lhist_min = lhist[0];
      m->lhist_max = lhist[1];
      m->lhist_step = lhist[2];
    } else {
      Type have = map_value_type(*m);
      if (!same_kind(have, incoming))
        fail_at(target.loc,
                fmt::format("Type mismatch for {}: trying to assign value of type '{}' when map "
                            "already contains a value of type '{}'",
                            m->name, incoming.name(), have.name()));
      if (kind == ValueKind::kLhist &&
          (lhist[0] != m->lhist_min || lhist[1] != m->lhist_max || lhist[2] != m->lhist_step))
        fail_at(v.loc, fmt::format("lhist() of {} was given min {}, max {}, step {} before",
                                   m->name, m->lhist_min, m->lhist_max, m->lhist_step));
      if (kind == ValueKind::kScalar) widen(m->value, t);
    }
    target.type = map_value_type(*m);
  }

  // An aggregation call on the right of a map assignment: its arguments, and the type of the
  // value it aggregates (none for count()).
  Type aggregation(Expr &call, int64_t lhist[3]) {
    const char *name = func_name(call.func);
    size_t n = call.args.size();
    if (call.func == Func::kCount) {
      if (n != 0) fail_at(call.loc, fmt::format("count() requires no arguments ({} provided)", n));
      return Type::none();
    }
    size_t want = call.func == Func::kLhist ? 4 : 1;
    if (n != want)
      fail_at(call.loc, fmt::format("{}() requires {} ({} provided)", name, arguments(want), n));
    Type t = value(*call.args[0]);
    if (!t.is_int())
      fail_at(call.loc, fmt::format("{}() only supports integer arguments ({} provided)", name,
                                    printf_type_name(t)));
    if (call.func == Func::kLhist) {
      for (size_t i = 1; i < 4; ++i) {
        if (!is_int_literal(*call.args[i], &lhist[i - 1]))
          fail_at(call.loc, fmt::format("lhist() expects a integer literal ({} provided)",
                                        printf_type_name(value(*call.args[i]))));
        call.args[i]->type = Type::integer(64, true);
      }
      auto [min, max, step] = std::tuple(lhist[0], lhist[1], lhist[2]);
      if (min < 0)
        fail_at(call.loc, fmt::format("lhist() min must be non-negative (provided min {})", min));
      if (min >= max)
        fail_at(call.loc, fmt::format("lhist() min must be less than max (provided min {} and "
                                      "max {})",
                                      min, max));
      if (step < 1) fail_at(call.loc, fmt::format("lhist() step must be >= 1 ({} provided)", step));
      if (step > max - min)
        fail_at(call.loc, fmt::format("lhist() step is too large for the given range (provided "
                                      "step {} for range {})",
                                      step, max - min));
      // bpftrace's limit on the number of buckets.
      if ((max - min) / step > 1000)
        fail_at(call.loc, fmt::format("lhist() too many buckets, must be <= 1000 (would need {})",
                                      (max - min) / step));
    }
    call.type = t;
    return stored(t);
  }

  Type expr(Expr &e) {
    e.type = expr_type(e);
    return e.type;
  }

  Type expr_type(Expr &e) {
    switch (e.kind) {
      case ExprKind::kInt:
        return Type::integer(64, true);
      case ExprKind::kString:
        return Type::string(static_cast<uint32_t>(e.text.size() + 1));
      case ExprKind::kBuiltin:
        return builtin(e);
      case ExprKind::kScratch: {
        auto &vars = probe_->variables;
        auto it = std::find_if(vars.begin(), vars.end(),
                               [&](const Variable &v) { return v.name == e.text; });
        if (it == vars.end())
          fail_at(e.loc, fmt::format("Undefined or undeclared variable: ${}", e.text));
        e.index = static_cast<int>(it - vars.begin());
        return it->type;
      }
      case ExprKind::kMap:
        return map_value_type(*map_of(e, false));
      case ExprKind::kCall:
        return call(e);
      case ExprKind::kUnary: {
        Type t = value(*e.args[0]);
        if (!t.is_int())
          // At the operator, as bpftrace places it.
          fail_at(e.name_loc,
                  fmt::format("The {} operator can not be used on expressions of type '{}'",
                              op_text(e.op), t.name()));
        return Type::integer(64, t.is_signed);
      }
      case ExprKind::kBinary:
        return binary(e);
      case ExprKind::kTernary: {
        condition(*e.args[0], "condition of ?:");
        Type a = value(*e.args[1]), b = value(*e.args[2]);
        if (a.kind != b.kind)
          fail_at(e.loc, fmt::format("Ternary operator must return the same type: have '{}' and "
                                     "'{}'",
                                     printf_type_name(a), printf_type_name(b)));
        if (a.is_int()) return Type::integer(64, a.is_signed && b.is_signed);
        widen(a, b);
        return a;
      }
      case ExprKind::kCast: {
        Type t = value(*e.args[0]);
        if (!t.is_int())
          fail_at(e.loc, fmt::format("Cannot cast from '{}' to '{}'", t.name(), e.cast_to.name()));
        return e.cast_to;
      }
    }
    return Type::none();
  }

  Type binary(Expr &e) {
    Type a = value(*e.args[0]), b = value(*e.args[1]);
    if (a.is_int() && b.is_int()) return Type::integer(64, a.is_signed && b.is_signed);
    if (a.kind != b.kind)
      fail_at(e.loc, fmt::format("Type mismatch for '{}': comparing '{}' with '{}'", op_text(e.op),
                                 a.name(), b.name()));
    if (a.is_string() && (e.op == Op::kEq || e.op == Op::kNe)) return Type::integer(64, true);
    // At the operator, as bpftrace places it (a type mismatch spans both operands, as there).
    fail_at(e.name_loc,
            fmt::format("The {} operator can not be used on expressions of types {}, {}",
                        op_text(e.op), a.name(), b.name()));
  }

  Type builtin(Expr &e) {
    std::string name = e.builtin == Builtin::kArg ? fmt::format("arg{}", e.int_value)
                                                  : std::string(builtin_name(e.builtin));
    for (const AttachPoint &ap : probe_->attach_points) {
      ProbeType t = ap.type;
      switch (e.builtin) {
        case Builtin::kArg:
          if (t != ProbeType::kUprobe && t != ProbeType::kUsdt)
            fail_at(e.loc, fmt::format("The {} builtin can only be used with 'uprobes' and 'usdt' "
                                       "probes",
                                       name));
          // Six argument registers in the x86-64 calling convention; a USDT note has up to 12.
          if (t == ProbeType::kUprobe && e.int_value >= 6)
            fail_at(e.loc, fmt::format("x86_64 doesn't support {}", name));
          break;
        case Builtin::kRetval:
          if (t != ProbeType::kUretprobe)
            fail_at(e.loc, "The retval builtin can only be used with 'uretprobe' probes");
          break;
        case Builtin::kFunc:
          if (t != ProbeType::kUprobe && t != ProbeType::kUretprobe)
            fail_at(e.loc, fmt::format("The func builtin can not be used with '{}' probes",
                                       probe_type_name(t)));
          break;
        default:
          break;
      }
    }
    switch (e.builtin) {
      case Builtin::kComm:
        return Type::string(kCommSize);
      case Builtin::kProbe:
        return Type::string(kStrSize);
      case Builtin::kFunc:
        return {TypeKind::kUsym, 64, false, 0};
      default:
        return Type::integer(64, false);
    }
  }

  [[noreturn]] void arg_count(const Expr &e, const char *how, size_t want) {
    if (want == 0)
      fail_at(e.loc, fmt::format("{}() requires no arguments ({} provided)", func_name(e.func),
                                 e.args.size()));
    fail_at(e.loc, fmt::format("{}() {} {} ({} provided)", func_name(e.func), how, arguments(want),
                               e.args.size()));
  }

  // An integer literal argument (a length, a count).
  int64_t literal_arg(Expr &call, size_t i) {
    int64_t v = 0;
    if (!is_int_literal(*call.args[i], &v))
      fail_at(call.loc, fmt::format("{}() expects a integer literal ({} provided)",
                                    func_name(call.func), printf_type_name(value(*call.args[i]))));
    call.args[i]->type = Type::integer(64, true);
    return v;
  }

  // A map argument of print/clear/has_key: the map alone, no keys.
  MapInfo *whole_map(Expr &call, Expr &arg) {
    if (arg.kind != ExprKind::kMap || !arg.args.empty())
      fail_at(call.loc, fmt::format("{}() expects a map to be provided", func_name(call.func)));
    MapInfo *m = map_of(arg, false, true);
    arg.type = map_value_type(*m);
    return m;
  }

  Type call(Expr &e) {
    size_t n = e.args.size();
    switch (e.func) {
      case Func::kPrintf:
        printf_call(e);
        return Type::none();
      case Func::kPrint: {
        if (n == 0) arg_count(e, "requires at least", 1);
        if (n > 3) arg_count(e, "takes up to", 3);
        if (e.args[0]->kind == ExprKind::kMap && e.args[0]->args.empty()) {
          whole_map(e, *e.args[0]);
          // print(@m, top, div): the top entries, values divided by div (bpftrace's).
          for (size_t i = 1; i < n; ++i)
            if (literal_arg(e, i) < 0)
              fail_at(e.args[i]->loc, "print()'s top and divisor can not be negative");
        } else {
          if (n != 1) arg_count(e, "takes, for a value,", 1);
          value(*e.args[0]);
        }
        return Type::none();
      }
      case Func::kClear:
        if (n != 1) arg_count(e, "requires", 1);
        whole_map(e, *e.args[0]);
        return Type::none();
      case Func::kDelete: {
        if (n != 1) arg_count(e, "requires", 1);
        Expr &m = *e.args[0];
        if (m.kind != ExprKind::kMap)
          fail_at(e.loc, "delete() expects a map element to be provided");
        m.type = map_value_type(*map_of(m, false));
        return Type::none();
      }
      case Func::kHasKey: {
        // Not in bpftrace 0.17 (later versions have it): usprobe's, with their meaning.
        if (n < 2) arg_count(e, "requires at least", 2);
        MapInfo *m = whole_map(e, *e.args[0]);
        std::vector<Type> keys;
        for (size_t i = 1; i < n; ++i) keys.push_back(stored(value(*e.args[i])));
        bool match = keys.size() == m->keys.size();
        for (size_t i = 0; match && i < keys.size(); ++i) match = same_kind(m->keys[i], keys[i]);
        if (!match)
          fail_at(e.loc, fmt::format("Argument mismatch for {}: trying to access with arguments: "
                                     "{} when map expects arguments: {}",
                                     m->name, key_list(keys), key_list(m->keys)));
        return Type::integer(64, true);
      }
      case Func::kExit:
        if (n != 0) arg_count(e, "requires no", 0);
        return Type::none();
      case Func::kStr: {
        if (n == 0) arg_count(e, "requires at least", 1);
        if (n > 2) arg_count(e, "takes up to", 2);
        for (ExprPtr &a : e.args)
          if (!value(*a).is_int())
            fail_at(e.loc, fmt::format("str() expects an integer (an address or a length), got {}",
                                       a->type.name()));
        return Type::string(kStrSize);
      }
      case Func::kBuf: {
        if (n == 1)
          fail_at(e.loc, fmt::format("buf() expects a length argument for non-array type {}",
                                     printf_type_name(value(*e.args[0]))));
        if (n != 2) arg_count(e, "requires", 2);
        if (!value(*e.args[0]).is_int())
          fail_at(e.loc, fmt::format("buf() expects an address, got {}", e.args[0]->type.name()));
        int64_t len = literal_arg(e, 1);
        if (len < 1) fail_at(e.loc, "buf() length must be at least 1");
        // bpftrace shortens a longer buffer to 64 bytes (with a warning).
        return {TypeKind::kBuf, 64, false, static_cast<uint32_t>(std::min<int64_t>(len, 64) + 1)};
      }
      case Func::kUsym:
        if (n != 1) arg_count(e, "requires", 1);
        if (!value(*e.args[0]).is_int())
          fail_at(e.loc,
                  fmt::format("usym() expects an integer address, got {}", e.args[0]->type.name()));
        return {TypeKind::kUsym, 64, false, 0};
      case Func::kUstack: {
        if (n > 1)
          fail_at(e.loc, fmt::format("ustack() takes at most 1 argument, the number of frames, in "
                                     "usprobe ({} provided)",
                                     n));
        int64_t frames = n == 0 ? kUstackFrames : literal_arg(e, 0);
        if (frames < 1 || frames > kUstackMaxFrames)
          fail_at(e.loc, fmt::format("ustack() frames must be between 1 and {} ({} provided)",
                                     kUstackMaxFrames, frames));
        return {TypeKind::kUstack, 64, false, static_cast<uint32_t>(frames)};
      }
      default:
        // An aggregation anywhere but the right side of a map assignment (which assign_map
        // handles without coming here).
        fail_at(e.loc, fmt::format("{}() should be directly assigned to a map", func_name(e.func)));
    }
  }

  void printf_call(Expr &e) {
    if (e.args.empty()) arg_count(e, "requires at least", 1);
    Expr &fmt_arg = *e.args[0];
    if (fmt_arg.kind != ExprKind::kString)
      fail_at(e.loc, fmt::format("printf() expects a string literal ({} provided)",
                                 printf_type_name(value(fmt_arg))));
    fmt_arg.type = Type::string(static_cast<uint32_t>(fmt_arg.text.size() + 1));
    auto specs = parse_format(fmt_arg.text);
    if (!specs) fail_at(e.loc, specs.error());
    PrintfInfo info{fmt_arg.text, {}, e.loc};
    for (size_t i = 1; i < e.args.size(); ++i) info.args.push_back(value(*e.args[i]));
    size_t supplied = info.args.size();
    if (supplied < specs->size())
      fail_at(e.loc, fmt::format("printf: Not enough arguments for format string ({} supplied, {} "
                                 "expected)",
                                 supplied, specs->size()));
    if (supplied > specs->size())
      fail_at(e.loc, fmt::format("printf: Too many arguments for format string ({} supplied, {} "
                                 "expected)",
                                 supplied, specs->size()));
    for (size_t i = 0; i < supplied; ++i) {
      const Type &t = info.args[i];
      char c = (*specs)[i].conversion;
      const char *want = nullptr;
      if (c == 's') {
        if (t.kind != TypeKind::kString && t.kind != TypeKind::kUsym && t.kind != TypeKind::kUstack)
          want = "string";
      } else if (c == 'r') {
        if (t.kind != TypeKind::kBuf) want = "buffer";
      } else if (!t.is_int()) {
        want = "integer";
      }
      if (want)
        fail_at(e.loc, fmt::format("printf: %{} specifier expects a value of type {} ({} "
                                   "supplied)",
                                   c, want, printf_type_name(t)));
    }
    e.index = static_cast<int>(prog_.printfs.size());
    prog_.printfs.push_back(std::move(info));
  }

  Program &prog_;
  ProbeBlock *probe_ = nullptr;
  bool collecting_ = false;
};

}  // namespace

std::expected<std::vector<FormatSpec>, std::string> parse_format(std::string_view format) {
  std::vector<FormatSpec> specs;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%') continue;
    size_t start = i++;
    if (i < format.size() && format[i] == '%') continue;
    while (i < format.size() && std::string_view("-+ #0").find(format[i]) != std::string_view::npos)
      ++i;
    while (i < format.size() && format[i] >= '0' && format[i] <= '9') ++i;
    if (i < format.size() && format[i] == '.') {
      ++i;
      while (i < format.size() && format[i] >= '0' && format[i] <= '9') ++i;
    }
    for (std::string_view len : {"hh", "ll", "h", "l", "z", "j", "t"}) {
      if (format.substr(i, len.size()) == len) {
        i += len.size();
        break;
      }
    }
    if (i >= format.size())
      return std::unexpected(
          fmt::format("printf: incomplete conversion '{}' at the end of the "
                      "format (write %% for a '%')",
                      format.substr(start)));
    char c = format[i];
    if (std::string_view("diuxXocspr").find(c) == std::string_view::npos)
      return std::unexpected(
          fmt::format("printf: unknown conversion '{}' (expected one of "
                      "d i u x X o c s p r, or %% for a '%')",
                      format.substr(start, i + 1 - start)));
    specs.push_back({std::string(format.substr(start, i + 1 - start)), c});
  }
  return specs;
}

std::expected<void, Diagnostic> check(Program &program) {
  try {
    Checker(program).run();
    return {};
  } catch (Failure &f) {
    return std::unexpected(std::move(f.diagnostic));
  }
}

}  // namespace usprobe::bt
