#include "bt/ast.h"

#include <fmt/format.h>

namespace usprobe::bt {

std::string Type::name() const {
  switch (kind) {
    case TypeKind::kNone:
      return "none";
    case TypeKind::kInt:
      return fmt::format("{}int{}", is_signed ? "" : "unsigned ", bits);
    case TypeKind::kString:
      return fmt::format("string[{}]", size);
    case TypeKind::kUstack:
      return "ustack";
    case TypeKind::kUsym:
      return "usym";
    case TypeKind::kBuf:
      return fmt::format("buffer[{}]", size);
    case TypeKind::kAggregation:
      return aggregation_name(aggregation);
  }
  return "?";
}

const char *aggregation_name(ValueKind kind) {
  switch (kind) {
    case ValueKind::kScalar:
      return "";
    case ValueKind::kCount:
      return "count";
    case ValueKind::kSum:
      return "sum";
    case ValueKind::kAvg:
      return "avg";
    case ValueKind::kMin:
      return "min";
    case ValueKind::kMax:
      return "max";
    case ValueKind::kStats:
      return "stats";
    case ValueKind::kHist:
      return "hist";
    case ValueKind::kLhist:
      return "lhist";
  }
  return "?";
}

const char *func_name(Func f) {
  switch (f) {
    case Func::kPrintf:
      return "printf";
    case Func::kPrint:
      return "print";
    case Func::kClear:
      return "clear";
    case Func::kDelete:
      return "delete";
    case Func::kHasKey:
      return "has_key";
    case Func::kExit:
      return "exit";
    case Func::kStr:
      return "str";
    case Func::kBuf:
      return "buf";
    case Func::kUsym:
      return "usym";
    case Func::kUstack:
      return "ustack";
    case Func::kCount:
      return "count";
    case Func::kSum:
      return "sum";
    case Func::kAvg:
      return "avg";
    case Func::kMin:
      return "min";
    case Func::kMax:
      return "max";
    case Func::kStats:
      return "stats";
    case Func::kHist:
      return "hist";
    case Func::kLhist:
      return "lhist";
  }
  return "?";
}

const char *builtin_name(Builtin b) {
  switch (b) {
    case Builtin::kPid:
      return "pid";
    case Builtin::kTid:
      return "tid";
    case Builtin::kUid:
      return "uid";
    case Builtin::kGid:
      return "gid";
    case Builtin::kComm:
      return "comm";
    case Builtin::kCpu:
      return "cpu";
    case Builtin::kNsecs:
      return "nsecs";
    case Builtin::kElapsed:
      return "elapsed";
    case Builtin::kArg:
      return "arg";
    case Builtin::kRetval:
      return "retval";
    case Builtin::kFunc:
      return "func";
    case Builtin::kProbe:
      return "probe";
    case Builtin::kCpid:
      return "cpid";
  }
  return "?";
}

const char *op_text(Op op) {
  switch (op) {
    case Op::kOr:
      return "||";
    case Op::kAnd:
      return "&&";
    case Op::kBitOr:
      return "|";
    case Op::kBitXor:
      return "^";
    case Op::kBitAnd:
      return "&";
    case Op::kEq:
      return "==";
    case Op::kNe:
      return "!=";
    case Op::kLt:
      return "<";
    case Op::kLe:
      return "<=";
    case Op::kGt:
      return ">";
    case Op::kGe:
      return ">=";
    case Op::kShl:
      return "<<";
    case Op::kShr:
      return ">>";
    case Op::kAdd:
      return "+";
    case Op::kSub:
      return "-";
    case Op::kMul:
      return "*";
    case Op::kDiv:
      return "/";
    case Op::kMod:
      return "%";
    case Op::kNot:
      return "!";
    case Op::kBitNot:
      return "~";
    case Op::kNeg:
      return "-";
  }
  return "?";
}

const char *probe_type_name(ProbeType t) {
  switch (t) {
    case ProbeType::kBegin:
      return "BEGIN";
    case ProbeType::kEnd:
      return "END";
    case ProbeType::kUprobe:
      return "uprobe";
    case ProbeType::kUretprobe:
      return "uretprobe";
    case ProbeType::kUsdt:
      return "usdt";
    case ProbeType::kInterval:
      return "interval";
  }
  return "?";
}

namespace {

std::string quoted(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f)
          out += fmt::format("\\x{:02x}", static_cast<uint8_t>(c));
        else
          out += c;
    }
  }
  return out + '"';
}

// Short type names for dumps: s64, u8, str16, ustack127, usym, buf9, count.
std::string short_type(const Type &t) {
  switch (t.kind) {
    case TypeKind::kNone:
      return "";
    case TypeKind::kInt:
      return fmt::format("{}{}", t.is_signed ? 's' : 'u', t.bits);
    case TypeKind::kString:
      return fmt::format("str{}", t.size);
    case TypeKind::kUstack:
      return fmt::format("ustack{}", t.size);
    case TypeKind::kUsym:
      return "usym";
    case TypeKind::kBuf:
      return fmt::format("buf{}", t.size);
    case TypeKind::kAggregation:
      return aggregation_name(t.aggregation);
  }
  return "?";
}

class Dumper {
 public:
  explicit Dumper(bool types) : types_(types) {}
  std::string out;

  void expr(const Expr &e) {
    switch (e.kind) {
      case ExprKind::kInt:
        out += std::to_string(e.int_value);
        break;
      case ExprKind::kString:
        out += quoted(e.text);
        break;
      case ExprKind::kBuiltin:
        out += e.builtin == Builtin::kArg ? fmt::format("arg{}", e.int_value)
                                          : std::string(builtin_name(e.builtin));
        break;
      case ExprKind::kScratch:
        out += "$" + e.text;
        break;
      case ExprKind::kMap:
        if (e.args.empty()) {
          out += e.text;
        } else {
          out += "(" + e.text;
          children(e);
          out += ")";
        }
        break;
      case ExprKind::kCall:
        out += "(";
        out += func_name(e.func);
        children(e);
        out += ")";
        break;
      case ExprKind::kUnary:
      case ExprKind::kBinary:
        out += "(";
        out += op_text(e.op);
        children(e);
        out += ")";
        break;
      case ExprKind::kTernary:
        out += "(?";
        children(e);
        out += ")";
        break;
      case ExprKind::kCast:
        out += fmt::format("({}int{}", e.cast_to.is_signed ? "" : "u", e.cast_to.bits);
        children(e);
        out += ")";
        break;
    }
    if (types_ && e.type.kind != TypeKind::kNone) out += ":" + short_type(e.type);
  }

  void stmt(const Stmt &s) {
    switch (s.kind) {
      case StmtKind::kExpr:
        expr(*s.expr);
        break;
      case StmtKind::kAssign:
        out += "(";
        if (s.increment)
          out += s.op == Op::kAdd ? "++" : "--";
        else
          out += s.compound ? std::string(op_text(s.op)) + "=" : "=";
        out += " ";
        expr(*s.target);
        if (!s.increment) {
          out += " ";
          expr(*s.value);
        }
        out += ")";
        break;
      case StmtKind::kIf:
        out += "(if ";
        expr(*s.expr);
        out += " (then";
        body(s.then_body);
        out += ")";
        if (!s.else_body.empty()) {
          out += " (else";
          body(s.else_body);
          out += ")";
        }
        out += ")";
        break;
    }
  }

  void body(const std::vector<Stmt> &stmts) {
    for (const Stmt &s : stmts) {
      out += " ";
      stmt(s);
    }
  }

  void attach(const AttachPoint &ap) {
    switch (ap.type) {
      case ProbeType::kBegin:
      case ProbeType::kEnd:
        out += probe_type_name(ap.type);
        return;
      case ProbeType::kUprobe:
      case ProbeType::kUretprobe:
        out += fmt::format("({} {} {}", probe_type_name(ap.type), quoted(ap.target),
                           quoted(ap.function));
        if (ap.offset) out += fmt::format(" +{}", *ap.offset);
        out += ")";
        return;
      case ProbeType::kUsdt:
        out +=
            fmt::format("(usdt {} {} {})", quoted(ap.target), quoted(ap.provider), quoted(ap.name));
        return;
      case ProbeType::kInterval:
        out += fmt::format("(interval {}ns)", ap.interval_ns);
        return;
    }
  }

 private:
  void children(const Expr &e) {
    for (const ExprPtr &a : e.args) {
      out += " ";
      expr(*a);
    }
  }
  bool types_;
};

}  // namespace

std::string dump(const Expr &expr, bool types) {
  Dumper d(types);
  d.expr(expr);
  return d.out;
}

std::string dump(const Program &program, bool types) {
  Dumper d(types);
  for (const ProbeBlock &p : program.probes) {
    d.out += "(probe";
    for (const AttachPoint &ap : p.attach_points) {
      d.out += " ";
      d.attach(ap);
    }
    if (p.predicate) {
      d.out += " (pred ";
      d.expr(*p.predicate);
      d.out += ")";
    }
    d.body(p.body);
    d.out += ")\n";
  }
  return d.out;
}

}  // namespace usprobe::bt
