#include "bt/compile.h"

#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <span>

namespace usprobe::bt {

namespace ab = agent::bt;

namespace {

using Fail = std::unexpected<Diagnostic>;

uint32_t align8(uint32_t n) {
  return (n + 7) & ~7u;
}

// Where a string of this type lives in a key or a printf record: its size rounded up to words.
uint32_t string_bytes(const Type &t, uint32_t string_size) {
  return align8(std::max<uint32_t>(t.size ? t.size : string_size, 1));
}

// One block's code for one kind of probe. Registers: the block's scratch variables first, then
// a stack of temporaries; scratch memory: the key area, then strings, bump-allocated.
class BlockCompiler {
 public:
  BlockCompiler(const Program &program, const ProbeBlock &block, Compiled &out, uint32_t flags)
      : program_(program), block_(block), out_(out), flags_(flags) {}

  std::expected<void, Diagnostic> run() {
    if (block_.variables.size() > 16)
      return Fail(Diagnostic{block_.loc, "more than 16 scratch variables in one probe"});
    top_ = static_cast<uint8_t>(block_.variables.size());
    const size_t first = out_.insns.size();
    std::vector<size_t> to_end;
    if (block_.predicate) {
      if (auto ok = jump_unless(*block_.predicate, top_, to_end); !ok) return ok;
    }
    if (auto ok = body(block_.body); !ok) return ok;
    for (size_t at : to_end) patch(at);
    emit(ab::kEnd, 0, 0, 0, 0);
    // A fused jump with an immediate has 16 bits for its offset (protocol/bt.h).
    if (out_.insns.size() - first > 0xffff)
      return Fail(Diagnostic{block_.loc,
                             "the probe's action compiles to more than 65535 "
                             "instructions"});
    return {};
  }

 private:
  size_t emit(ab::Op op, uint8_t dst, uint8_t a, uint8_t b, int64_t imm) {
    out_.insns.push_back({op, dst, a, b, static_cast<int32_t>(imm)});
    return out_.insns.size() - 1;
  }
  // Makes the jump at `at` land on the next instruction emitted.
  void patch(size_t at) {
    ab::Insn &in = out_.insns[at];
    const size_t offset = out_.insns.size() - at - 1;
    if (ab::is_fused_jump(in.op) && (in.op & ab::kImmOperand)) {
      in.dst = static_cast<uint8_t>(offset);  // run() refuses code too long for 16 bits
      in.b = static_cast<uint8_t>(offset >> 8);
    } else {
      in.imm = static_cast<int32_t>(offset);
    }
  }
  // Jumps to be patched unless `cond` holds: one fused compare-and-jump for an integer
  // comparison, one per side of an `&&`, else the value and a jump if zero. `dst` and the
  // registers above it are free.
  std::expected<void, Diagnostic> jump_unless(const Expr &cond, uint8_t dst,
                                              std::vector<size_t> &jumps) {
    if (cond.kind == ExprKind::kBinary && cond.op == Op::kAnd) {
      if (auto ok = jump_unless(*cond.args[0], dst, jumps); !ok) return ok;
      return jump_unless(*cond.args[1], dst, jumps);
    }
    const bool compare = cond.kind == ExprKind::kBinary &&
                         (cond.op == Op::kEq || cond.op == Op::kNe || cond.op == Op::kLt ||
                          cond.op == Op::kLe || cond.op == Op::kGt || cond.op == Op::kGe) &&
                         cond.args[0]->type.is_int() && cond.args[1]->type.is_int();
    if (!compare) {
      if (auto ok = expr(cond, dst); !ok) return ok;
      jumps.push_back(emit(ab::kJz, 0, dst, 0, 0));
      return {};
    }
    const Expr &left = *cond.args[0], &right = *cond.args[1];
    const bool is_signed = left.type.is_signed && right.type.is_signed;
    ab::Op op{};
    switch (cond.op) {
      case Op::kEq:
        op = ab::kEq;
        break;
      case Op::kNe:
        op = ab::kNe;
        break;
      case Op::kLt:
        op = is_signed ? ab::kLtS : ab::kLtU;
        break;
      case Op::kLe:
        op = is_signed ? ab::kLeS : ab::kLeU;
        break;
      case Op::kGt:
        op = is_signed ? ab::kGtS : ab::kGtU;
        break;
      default:
        op = is_signed ? ab::kGeS : ab::kGeU;
        break;
    }
    const auto jf = static_cast<ab::Op>(ab::fused_jump_of(op));
    if (auto ok = expr(left, dst); !ok) return ok;
    if (const auto imm = immediate(right)) {
      jumps.push_back(emit(static_cast<ab::Op>(jf | ab::kImmOperand), 0, dst, 0, *imm));
      return {};
    }
    auto r = temp(cond.loc, dst + 1);
    if (!r) return Fail(r.error());
    if (auto ok = expr(right, *r); !ok) return ok;
    jumps.push_back(emit(jf, 0, dst, *r, 0));
    return {};
  }
  // An integer literal that fits an instruction's immediate.
  static std::optional<int32_t> immediate(const Expr &e) {
    if (e.kind == ExprKind::kInt && e.type.is_int() &&
        static_cast<int64_t>(e.int_value) >= INT32_MIN &&
        static_cast<int64_t>(e.int_value) <= INT32_MAX)
      return static_cast<int32_t>(static_cast<int64_t>(e.int_value));
    return std::nullopt;
  }
  std::expected<uint8_t, Diagnostic> temp(const SourceLoc &loc, uint8_t at) {
    if (at >= ab::kRegisters - 1)
      return Fail(Diagnostic{loc, "the expression is too deep for usprobe's registers"});
    return static_cast<uint8_t>(at);
  }
  std::expected<uint32_t, Diagnostic> scratch(const SourceLoc &loc, uint32_t bytes) {
    uint32_t at = next_scratch_;
    if (at + bytes > ab::kScratchBytes)
      return Fail(Diagnostic{loc, "the probe's strings take more than usprobe's scratch memory"});
    next_scratch_ += align8(bytes);
    return at;
  }
  void constant(uint8_t dst, uint64_t v) {
    auto s = static_cast<int64_t>(v);
    if (s >= INT32_MIN && s <= INT32_MAX) {
      emit(ab::kConstSmall, dst, 0, 0, s);
      return;
    }
    out_.constants.push_back(v);
    emit(ab::kConst, dst, 0, 0, static_cast<int64_t>(out_.constants.size() - 1));
  }
  uint32_t pool_string(const std::string &text) {
    auto at = static_cast<uint32_t>(out_.pool.size());
    out_.pool += text;
    out_.pool += '\0';
    return at;
  }

  std::expected<void, Diagnostic> body(const std::vector<Stmt> &stmts) {
    for (const Stmt &s : stmts)
      if (auto ok = stmt(s); !ok) return ok;
    return {};
  }

  std::expected<void, Diagnostic> stmt(const Stmt &s) {
    switch (s.kind) {
      case StmtKind::kExpr:
        return call_stmt(*s.expr);
      case StmtKind::kIf: {
        std::vector<size_t> to_else;
        if (auto ok = jump_unless(*s.expr, top_, to_else); !ok) return ok;
        if (auto ok = body(s.then_body); !ok) return ok;
        if (s.else_body.empty()) {
          for (size_t at : to_else) patch(at);
          return {};
        }
        size_t to_end = emit(ab::kJmp, 0, 0, 0, 0);
        for (size_t at : to_else) patch(at);
        if (auto ok = body(s.else_body); !ok) return ok;
        patch(to_end);
        return {};
      }
      case StmtKind::kAssign:
        return assign(s);
    }
    return {};
  }

  // The value of `s.value`, or of `target op value` for a compound assignment, into `dst`.
  std::expected<void, Diagnostic> assigned_value(const Stmt &s, uint8_t dst) {
    if (!s.compound) return expr(*s.value, dst);
    if (auto ok = expr(*s.target, dst); !ok) return ok;
    auto t = temp(s.loc, dst + 1);
    if (!t) return Fail(t.error());
    if (auto ok = expr(*s.value, *t); !ok) return ok;
    return binary_op(s.op, s.target->type, s.value->type, dst, dst, *t, s.loc);
  }

  std::expected<void, Diagnostic> assign(const Stmt &s) {
    const Expr &target = *s.target;
    if (target.kind == ExprKind::kScratch) {
      auto reg = static_cast<uint8_t>(target.index);
      if (auto ok = assigned_value(s, top_); !ok) return ok;
      emit(ab::kMov, reg, top_, 0, 0);
      return {};
    }
    // A map.
    const MapInfo &m = program_.maps.at(static_cast<size_t>(target.index));
    const auto map = static_cast<int64_t>(target.index);
    if (m.kind != ValueKind::kScalar) {
      // An aggregation: count() takes no value; lhist's bounds are the map's.
      const Expr &call = *s.value;
      uint8_t v = top_;
      if (!call.args.empty()) {
        if (auto ok = expr(*call.args[0], v); !ok) return ok;
      }
      auto k = map_key(target, top_ + 1);
      if (!k) return Fail(k.error());
      emit(ab::kAgg, 0, v, *k, map);
      return {};
    }
    if (m.value.is_string()) {
      if (auto ok = expr(*s.value, top_); !ok) return ok;
      if (auto ok = key(target, top_ + 1); !ok) return ok;
      emit(ab::kStoreStr, 0, top_, 0, map);
      return {};
    }
    if (m.value.kind != TypeKind::kInt)
      return Fail(Diagnostic{s.loc, fmt::format("{}: usprobe keeps integers and strings as map "
                                                "values, not {} (not yet)",
                                                m.name, m.value.name())});
    if (auto ok = assigned_value(s, top_); !ok) return ok;
    auto k = map_key(target, top_ + 1);
    if (!k) return Fail(k.error());
    emit(ab::kStore, 0, top_, *k, map);
    return {};
  }

  // A map access's key: one integer (`@start[tid]`, `@[arg0 % 8]`) in register `at` (returned),
  // anything else built in the key area (kNoReg returned).
  std::expected<uint8_t, Diagnostic> map_key(const Expr &m, uint8_t at) {
    return map_key_of(m.index, std::span(m.args), m.loc, at);
  }
  std::expected<uint8_t, Diagnostic> map_key_of(int map, std::span<const ExprPtr> parts,
                                                const SourceLoc &loc, uint8_t at) {
    const MapDef &def = out_.maps.at(static_cast<size_t>(map));
    if (parts.size() == 1 && def.key.size() == 1 && def.key[0].is_integer()) {
      auto r = temp(loc, at);
      if (!r) return Fail(r.error());
      if (auto ok = expr(*parts[0], *r); !ok) return Fail(ok.error());
      return *r;
    }
    if (auto ok = key_of(map, parts, loc, at); !ok) return Fail(ok.error());
    return ab::kNoReg;
  }

  // Builds the key of map expression `m` (its args) in the key area; `at`: the first free register.
  // Builds the key of map expression `m` (its args) in the key area; `at`: the first free register.
  std::expected<void, Diagnostic> key(const Expr &m, uint8_t at) {
    return key_of(m.index, std::span(m.args), m.loc, at);
  }

  // Builds map `map`'s key from `parts` in the key area (the map expression's args, or has_key's
  // after the map).
  std::expected<void, Diagnostic> key_of(int map, std::span<const ExprPtr> parts,
                                         const SourceLoc &loc, uint8_t at) {
    const MapDef &def = out_.maps.at(static_cast<size_t>(map));
    uint32_t offset = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      const Expr &k = *parts[i];
      auto r = temp(k.loc, at);
      if (!r) return Fail(r.error());
      if (auto ok = expr(k, *r); !ok) return ok;
      const KeyPart &part = def.key.at(i);
      const ab::Op op = part.is_integer() ? ab::kKeyInt
                        : part.is_string  ? ab::kKeyStr
                                          : ab::kKeyBytes;
      emit(op, 0, *r, 0,
           op == ab::kKeyInt ? offset : static_cast<int64_t>(offset | (part.size << 16)));
      offset += part.size;
      if (offset > ab::kMaxKeyBytes)
        return Fail(Diagnostic{
            loc, fmt::format("{}: its key takes more than {} bytes", def.name, ab::kMaxKeyBytes)});
    }
    return {};
  }

  std::expected<void, Diagnostic> call_stmt(const Expr &e) {
    if (e.kind != ExprKind::kCall) return expr(e, top_);
    switch (e.func) {
      case Func::kPrintf: {
        const PrintfInfo &p = program_.printfs.at(static_cast<size_t>(e.index));
        const size_t n = e.args.size() - 1;  // after the format
        if (n > ab::kMaxPrintfArgs)
          return Fail(Diagnostic{
              e.loc, fmt::format("printf with more than {} arguments", ab::kMaxPrintfArgs)});
        if (top_ + n >= ab::kRegisters)
          return Fail(Diagnostic{e.loc, "printf with more arguments than usprobe has registers"});
        for (size_t i = 0; i < n; ++i) {
          const Type &t = p.args[i];
          const PrintfDef::Arg &def = out_.printfs.at(static_cast<size_t>(e.index)).args[i];
          if (!t.is_int() && !t.is_string() && def.name == ProbeName::kNone && !def.usym &&
              def.stack_frames == 0 && def.buf_len == 0)
            return Fail(
                Diagnostic{e.args[i + 1]->loc, fmt::format("printf of a {}: not yet", t.name())});
          if (auto ok = expr(*e.args[i + 1], static_cast<uint8_t>(top_ + i)); !ok) return ok;
        }
        emit(ab::kPrintf, 0, top_, static_cast<uint8_t>(n), e.index);
        return {};
      }
      case Func::kExit:
        emit(ab::kExit, 0, 0, 0, 0);
        emit(ab::kEnd, 0, 0, 0, 0);  // bpftrace's exit() ends the action too
        return {};
      case Func::kPrint: {
        // A record that the CLI prints when it reads it (PrintfDef::print_map).
        PrintfDef def;
        const Expr &what = *e.args[0];
        if (what.kind == ExprKind::kMap && what.args.empty()) {
          def.print_map = what.index;
          if (e.args.size() > 1) def.top = e.args[1]->int_value;
          if (e.args.size() > 2) def.div = e.args[2]->int_value;
        } else {
          const Type &t = what.type;
          const bool named = what.kind == ExprKind::kBuiltin &&
                             (what.builtin == Builtin::kFunc || what.builtin == Builtin::kProbe);
          if ((!t.is_int() && !t.is_string()) || named)
            return Fail(Diagnostic{what.loc, fmt::format("print() of a {} in a probe: not yet",
                                                         named ? "probe name" : t.name())});
          def.print_value = true;
          def.args.push_back({t.is_string(), t.is_signed,
                              t.is_string() ? string_bytes(t, out_.string_size) : 0,
                              ProbeName::kNone, false});
          if (auto ok = expr(what, top_); !ok) return ok;
        }
        const auto index = static_cast<int64_t>(out_.printfs.size());
        const auto n = static_cast<uint8_t>(def.args.size());
        out_.printfs.push_back(std::move(def));
        emit(ab::kPrintf, 0, top_, n, index);
        return {};
      }
      case Func::kClear: {
        PrintfDef def;
        def.clear_map = e.args[0]->index;
        const auto index = static_cast<int64_t>(out_.printfs.size());
        out_.printfs.push_back(std::move(def));
        emit(ab::kPrintf, 0, top_, 0, index);
        return {};
      }
      case Func::kDelete: {
        const Expr &m = *e.args[0];
        const MapInfo &info = program_.maps.at(static_cast<size_t>(m.index));
        auto k = map_key(m, top_);
        if (!k) return Fail(k.error());
        if (info.kind != ValueKind::kScalar) {
          // Out of every thread's table at once: a tombstone (protocol/bt.h, "delete()").
          out_.maps.at(static_cast<size_t>(m.index)).deleted_in_probe = true;
          emit(ab::kAggDelete, 0, 0, *k, m.index);
          return {};
        }
        emit(ab::kDelete, 0, 0, *k, m.index);
        return {};
      }
      default:
        return Fail(Diagnostic{e.loc, fmt::format("{}() in a probe: not yet (usprobe runs it in "
                                                  "BEGIN, END and interval blocks)",
                                                  func_name(e.func))});
    }
  }

  // dst = a op b, or a op imm (an integer literal that fits 32 bits).
  std::expected<void, Diagnostic> binary_op(Op op, const Type &lt, const Type &rt, uint8_t dst,
                                            uint8_t a, uint8_t b, const SourceLoc &loc,
                                            std::optional<int32_t> imm = std::nullopt) {
    const bool is_signed = lt.is_signed && rt.is_signed;
    auto emit = [&](ab::Op o, uint8_t d, uint8_t x, uint8_t y, int64_t value) {
      if (!imm) {
        this->emit(o, d, x, y, value);
        return;
      }
      // Unsigned division, remainder and product by a power of two: a shift or a mask, not a
      // divide (tens of cycles: `arg0 % 8` is the common key).
      const auto v = static_cast<uint64_t>(int64_t{*imm});
      if (*imm > 0 && (v & (v - 1)) == 0 && (o == ab::kDivU || o == ab::kModU || o == ab::kMul)) {
        const int log2 = __builtin_ctzll(v);
        if (o == ab::kModU)
          this->emit(static_cast<ab::Op>(ab::kAnd | ab::kImmOperand), d, x, 0,
                     static_cast<int64_t>(v - 1));
        else
          this->emit(static_cast<ab::Op>((o == ab::kDivU ? ab::kShrU : ab::kShl) | ab::kImmOperand),
                     d, x, 0, log2);
        return;
      }
      this->emit(static_cast<ab::Op>(o | ab::kImmOperand), d, x, 0, *imm);
    };
    if (lt.is_string() || rt.is_string()) {
      if (op != Op::kEq && op != Op::kNe)
        return Fail(Diagnostic{loc, fmt::format("'{}' of strings", op_text(op))});
      uint32_t n = std::max(lt.size, rt.size);
      emit(ab::kStrEq, dst, a, b, std::max<uint32_t>(n, 1));
      if (op == Op::kNe) emit(ab::kLNot, dst, dst, 0, 0);
      return {};
    }
    switch (op) {
      case Op::kAdd:
        emit(ab::kAdd, dst, a, b, 0);
        break;
      case Op::kSub:
        emit(ab::kSub, dst, a, b, 0);
        break;
      case Op::kMul:
        emit(ab::kMul, dst, a, b, 0);
        break;
      case Op::kDiv:
        emit(is_signed ? ab::kDivS : ab::kDivU, dst, a, b, 0);
        break;
      case Op::kMod:
        emit(is_signed ? ab::kModS : ab::kModU, dst, a, b, 0);
        break;
      case Op::kBitAnd:
        emit(ab::kAnd, dst, a, b, 0);
        break;
      case Op::kBitOr:
        emit(ab::kOr, dst, a, b, 0);
        break;
      case Op::kBitXor:
        emit(ab::kXor, dst, a, b, 0);
        break;
      case Op::kShl:
        emit(ab::kShl, dst, a, b, 0);
        break;
      case Op::kShr:
        emit(lt.is_signed ? ab::kShrS : ab::kShrU, dst, a, b, 0);
        break;
      case Op::kEq:
        emit(ab::kEq, dst, a, b, 0);
        break;
      case Op::kNe:
        emit(ab::kNe, dst, a, b, 0);
        break;
      case Op::kLt:
        emit(is_signed ? ab::kLtS : ab::kLtU, dst, a, b, 0);
        break;
      case Op::kLe:
        emit(is_signed ? ab::kLeS : ab::kLeU, dst, a, b, 0);
        break;
      case Op::kGt:
        emit(is_signed ? ab::kGtS : ab::kGtU, dst, a, b, 0);
        break;
      case Op::kGe:
        emit(is_signed ? ab::kGeS : ab::kGeU, dst, a, b, 0);
        break;
      default:
        return Fail(Diagnostic{loc, fmt::format("operator '{}'", op_text(op))});
    }
    return {};
  }

  // Evaluates `e` into register `dst`; registers above dst are free for its parts.
  std::expected<void, Diagnostic> expr(const Expr &e, uint8_t dst) {
    switch (e.kind) {
      case ExprKind::kInt:
        constant(dst, e.int_value);
        return {};
      case ExprKind::kString:
        emit(ab::kPoolString, dst, 0, 0, pool_string(e.text));
        return {};
      case ExprKind::kScratch:
        emit(ab::kMov, dst, static_cast<uint8_t>(e.index), 0, 0);
        return {};
      case ExprKind::kBuiltin:
        return builtin(e, dst);
      case ExprKind::kMap: {
        const MapInfo &m = program_.maps.at(static_cast<size_t>(e.index));
        if (m.kind != ValueKind::kScalar)
          return Fail(Diagnostic{e.loc, fmt::format("reading {} ({} map) in a probe: not yet",
                                                    m.name, aggregation_name(m.kind))});
        if (m.value.is_string()) {
          if (auto ok = key(e, dst); !ok) return ok;
          auto at = scratch(e.loc, out_.maps.at(static_cast<size_t>(e.index)).string_value);
          if (!at) return Fail(at.error());
          emit(ab::kLoadStr, dst, 0, 0, static_cast<int64_t>(e.index | (*at << 16)));
          return {};
        }
        auto k = map_key(e, dst);
        if (!k) return Fail(k.error());
        emit(ab::kLoad, dst, 0, *k, e.index);
        return {};
      }
      case ExprKind::kCall:
        return call_expr(e, dst);
      case ExprKind::kUnary: {
        if (auto ok = expr(*e.args[0], dst); !ok) return ok;
        emit(e.op == Op::kNot      ? ab::kLNot
             : e.op == Op::kBitNot ? ab::kNot
                                   : ab::kNeg,
             dst, dst, 0, 0);
        return {};
      }
      case ExprKind::kBinary: {
        if (e.op == Op::kAnd || e.op == Op::kOr) {
          // Short-circuit, as C: the right side runs only when it decides.
          if (auto ok = expr(*e.args[0], dst); !ok) return ok;
          size_t skip = emit(e.op == Op::kAnd ? ab::kJz : ab::kJnz, 0, dst, 0, 0);
          if (auto ok = expr(*e.args[1], dst); !ok) return ok;
          patch(skip);
          emit(ab::kNe, dst, dst, kZero(dst), 0);
          return {};
        }
        auto r = temp(e.loc, dst + 1);
        if (!r) return Fail(r.error());
        if (auto ok = expr(*e.args[0], dst); !ok) return ok;
        // An integer literal on the right goes in the instruction itself.
        const Expr &right = *e.args[1];
        const std::optional<int32_t> imm = immediate(right);
        if (!imm)
          if (auto ok = expr(right, *r); !ok) return ok;
        if (auto ok = binary_op(e.op, e.args[0]->type, right.type, dst, dst, *r, e.loc, imm); !ok)
          return ok;
        return narrow(e.type, dst);
      }
      case ExprKind::kTernary: {
        std::vector<size_t> to_else;
        if (auto ok = jump_unless(*e.args[0], dst, to_else); !ok) return ok;
        if (auto ok = expr(*e.args[1], dst); !ok) return ok;
        size_t to_end = emit(ab::kJmp, 0, 0, 0, 0);
        for (size_t at : to_else) patch(at);
        if (auto ok = expr(*e.args[2], dst); !ok) return ok;
        patch(to_end);
        return {};
      }
      case ExprKind::kCast:
        if (auto ok = expr(*e.args[0], dst); !ok) return ok;
        return narrow(e.cast_to, dst);
    }
    return {};
  }

  // Registers are 64 bits: a narrower int type keeps its low bits, sign-extended or not.
  std::expected<void, Diagnostic> narrow(const Type &t, uint8_t dst) {
    if (t.is_int() && t.bits < 64) emit(ab::kExt, dst, dst, 0, t.bits | (t.is_signed ? 0x100 : 0));
    return {};
  }

  // A register that holds 0 for `x != 0` after a short-circuit: the one after dst, zeroed here.
  uint8_t kZero(uint8_t dst) {
    auto z = static_cast<uint8_t>(std::min<int>(dst + 1, ab::kRegisters - 1));
    emit(ab::kConstSmall, z, 0, 0, 0);
    return z;
  }

  std::expected<void, Diagnostic> builtin(const Expr &e, uint8_t dst) {
    auto simple = [&](ab::Builtin b) {
      emit(ab::kBuiltin, dst, 0, 0, b);
      return std::expected<void, Diagnostic>{};
    };
    switch (e.builtin) {
      case Builtin::kPid:
        return simple(ab::kPid);
      case Builtin::kTid:
        return simple(ab::kTid);
      case Builtin::kUid:
        return simple(ab::kUid);
      case Builtin::kGid:
        return simple(ab::kGid);
      case Builtin::kCpu:
        return simple(ab::kCpu);
      case Builtin::kNsecs:
        return simple(ab::kNsecs);
      case Builtin::kElapsed:
        return simple(ab::kElapsed);
      case Builtin::kCpid:
        return simple(ab::kCpid);
      case Builtin::kArg:
        emit(flags_ & ab::kProbeUsdt ? ab::kUsdtArg : ab::kArg, dst, 0, 0,
             static_cast<int64_t>(e.int_value));
        return {};
      case Builtin::kRetval:
        emit(ab::kRetval, dst, 0, 0, 0);
        return {};
      case Builtin::kFunc:
      case Builtin::kProbe:
        // The probe's index, which the CLI names where the value is printed (a key, a printf).
        emit(ab::kBuiltin, dst, 0, 0, ab::kProbeIndex);
        return {};
      case Builtin::kComm: {
        auto at = scratch(e.loc, 16);
        if (!at) return Fail(at.error());
        emit(ab::kComm, dst, 0, 0, *at);
        return {};
      }
      default:
        return Fail(
            Diagnostic{e.loc, fmt::format("'{}' in a probe: not yet", builtin_name(e.builtin))});
    }
  }

  std::expected<void, Diagnostic> call_expr(const Expr &e, uint8_t dst) {
    switch (e.func) {
      case Func::kUsym: {
        if (auto ok = expr(*e.args[0], dst); !ok) return ok;
        auto at = scratch(e.loc, ab::kUsymBytes);
        if (!at) return Fail(at.error());
        emit(ab::kUsym, dst, dst, 0, *at);
        out_.uses_symbols = true;
        return {};
      }
      case Func::kUstack: {
        const uint32_t frames =
            e.type.size ? std::min(e.type.size, ab::kMaxUstackFrames) : ab::kMaxUstackFrames;
        auto at = scratch(e.loc, ab::ustack_bytes(frames));
        if (!at) return Fail(at.error());
        emit(ab::kUstack, dst, 0, 0, static_cast<int64_t>(*at | (frames << 16)));
        out_.uses_stacks = true;
        return {};
      }
      case Func::kBuf: {
        if (auto ok = expr(*e.args[0], dst); !ok) return ok;
        const uint32_t n = e.type.size - 1;  // a buf type's size is n + 1 (at most 64)
        auto at = scratch(e.loc, align8(n));
        if (!at) return Fail(at.error());
        emit(ab::kBuf, dst, dst, 0, static_cast<int64_t>(*at | (n << 16)));
        return {};
      }
      case Func::kStr: {
        if (auto ok = expr(*e.args[0], dst); !ok) return ok;
        uint8_t len = ab::kNoReg;
        if (e.args.size() > 1) {
          auto r = temp(e.loc, dst + 1);
          if (!r) return Fail(r.error());
          if (auto ok = expr(*e.args[1], *r); !ok) return ok;
          len = *r;
        }
        auto at = scratch(e.loc, out_.string_size);
        if (!at) return Fail(at.error());
        emit(ab::kStr, dst, dst, len, *at);
        return {};
      }
      case Func::kHasKey: {
        const Expr &m = *e.args[0];
        const MapInfo &info = program_.maps.at(static_cast<size_t>(m.index));
        if (info.kind != ValueKind::kScalar)
          return Fail(Diagnostic{e.loc, "has_key() of an aggregation map in a probe: not yet"});
        // has_key(@m, k1, k2): the keys follow the map.
        auto k = map_key_of(m.index, std::span(e.args).subspan(1), e.loc, dst);
        if (!k) return Fail(k.error());
        emit(ab::kHas, dst, 0, *k, m.index);
        return {};
      }
      default:
        return Fail(Diagnostic{
            e.loc, fmt::format("{}() as a value in a probe: not yet", func_name(e.func))});
    }
  }

  const Program &program_;
  const ProbeBlock &block_;
  Compiled &out_;
  uint32_t flags_;
  uint8_t top_ = 0;
  uint32_t next_scratch_ = ab::kMaxKeyBytes;
};

bool is_name(const Expr &e) {
  return e.kind == ExprKind::kBuiltin &&
         (e.builtin == Builtin::kFunc || e.builtin == Builtin::kProbe);
}
ProbeName name_of(const Expr &e) {
  if (!is_name(e)) return ProbeName::kNone;
  return e.builtin == Builtin::kFunc ? ProbeName::kFunc : ProbeName::kProbe;
}

// func and probe are the probe's index on the hit path, named by the CLI: they may be a map's key
// or a printf's argument, nothing else yet. Records which key parts and printf arguments they are.
class Names {
 public:
  Names(const Program &p) : keys_(p.maps.size()), args_(p.printfs.size()) {
    for (size_t i = 0; i < p.maps.size(); ++i) keys_[i].assign(p.maps[i].keys.size(), kUnseen);
    for (size_t i = 0; i < p.printfs.size(); ++i) args_[i].assign(p.printfs[i].args.size(), 0);
  }
  std::expected<void, Diagnostic> walk(const std::vector<Stmt> &body) {
    for (const Stmt &s : body) {
      for (const Expr *e : {s.expr.get(), s.target.get(), s.value.get()})
        if (e)
          if (auto ok = expr(*e, false); !ok) return ok;
      if (auto ok = walk(s.then_body); !ok) return ok;
      if (auto ok = walk(s.else_body); !ok) return ok;
    }
    return {};
  }
  std::expected<void, Diagnostic> expr(const Expr &e, bool allowed) {
    if (is_name(e) && !allowed)
      return std::unexpected(Diagnostic{
          e.loc, fmt::format("'{}' other than as a map key or a printf argument: not yet",
                             builtin_name(e.builtin))});
    if (e.kind == ExprKind::kMap) {
      for (size_t i = 0; i < e.args.size(); ++i) {
        uint8_t want = static_cast<uint8_t>(name_of(*e.args[i]));
        uint8_t &seen = keys_.at(static_cast<size_t>(e.index)).at(i);
        if (seen != kUnseen && seen != want)
          return std::unexpected(Diagnostic{
              e.args[i]->loc, fmt::format("{}: a key part that is '{}' in one place must be so "
                                          "everywhere (not yet)",
                                          e.text,
                                          want        ? builtin_name(e.args[i]->builtin)
                                          : seen == 1 ? "func"
                                                      : "probe")});
        seen = want;
        if (auto ok = expr(*e.args[i], true); !ok) return ok;
      }
      return {};
    }
    const bool printf = e.kind == ExprKind::kCall && e.func == Func::kPrintf;
    for (size_t i = 0; i < e.args.size(); ++i) {
      if (printf && i > 0)
        args_.at(static_cast<size_t>(e.index)).at(i - 1) =
            static_cast<uint8_t>(name_of(*e.args[i]));
      if (auto ok = expr(*e.args[i], printf && i > 0); !ok) return ok;
    }
    return {};
  }
  ProbeName key(size_t map, size_t part) const {
    uint8_t v = keys_[map][part];
    return v == kUnseen ? ProbeName::kNone : static_cast<ProbeName>(v);
  }
  ProbeName arg(size_t printf, size_t i) const { return static_cast<ProbeName>(args_[printf][i]); }

 private:
  static constexpr uint8_t kUnseen = 0xff;
  std::vector<std::vector<uint8_t>> keys_, args_;
};

MapDef map_def(const MapInfo &m, uint32_t string_size) {
  MapDef d;
  d.name = m.name;
  d.kind = m.kind;
  if (m.kind == ValueKind::kScalar && m.value.is_string())
    d.string_value = string_bytes(m.value, string_size);
  d.is_signed = m.is_signed;
  d.lhist_min = m.lhist_min;
  d.lhist_max = m.lhist_max;
  d.lhist_step = m.lhist_step;
  for (const Type &k : m.keys) {
    if (k.kind == TypeKind::kUsym) {  // func is too, but Names makes it the probe's name
      d.key.push_back({false, false, ab::kUsymBytes, ProbeName::kNone, 0, true});
      continue;
    }
    if (k.kind == TypeKind::kUstack) {
      const uint32_t frames =
          k.size ? std::min(k.size, ab::kMaxUstackFrames) : ab::kMaxUstackFrames;
      d.key.push_back({false, false, ab::ustack_bytes(frames), ProbeName::kNone, frames});
      continue;
    }
    if (k.kind == TypeKind::kBuf) {
      const uint32_t n = k.size - 1;  // a buf type's size is n + 1
      d.key.push_back({false, false, align8(n), ProbeName::kNone, 0, false, n});
      continue;
    }
    d.key.push_back({k.is_string(), k.is_signed, k.is_string() ? string_bytes(k, string_size) : 8});
  }
  return d;
}

std::string probe_spec(const AttachPoint &p) {
  switch (p.type) {
    case ProbeType::kUprobe:
      return p.offset ? fmt::format("{}:{}+{:#x}", p.target, p.function, *p.offset)
                      : fmt::format("{}:{}", p.target, p.function);
    case ProbeType::kUretprobe:
      return fmt::format("uretprobe:{}:{}", p.target, p.function);
    case ProbeType::kUsdt:
      return p.provider.empty() ? fmt::format("usdt:{}:{}", p.target, p.name)
                                : fmt::format("usdt:{}:{}:{}", p.target, p.provider, p.name);
    default:
      return "";
  }
}

}  // namespace

std::expected<CompiledProgram, Diagnostic> compile(const Program &program) {
  CompiledProgram out;
  Compiled &c = out.code;
  Names names(program);
  for (const ProbeBlock &block : program.probes) {
    if (block.predicate)
      if (auto ok = names.expr(*block.predicate, false); !ok) return std::unexpected(ok.error());
    if (auto ok = names.walk(block.body); !ok) return std::unexpected(ok.error());
  }
  for (size_t i = 0; i < program.maps.size(); ++i) {
    MapDef d = map_def(program.maps[i], c.string_size);
    for (size_t k = 0; k < d.key.size(); ++k)
      if ((d.key[k].name = names.key(i, k)) != ProbeName::kNone) {
        d.key[k].is_string = false;
        d.key[k].usym = false;
        d.key[k].size = 8;
      }
    c.maps.push_back(std::move(d));
  }
  for (size_t i = 0; i < program.printfs.size(); ++i) {
    const PrintfInfo &p = program.printfs[i];
    PrintfDef d;
    d.format = p.format;
    for (size_t a = 0; a < p.args.size(); ++a) {
      const Type &t = p.args[a];
      ProbeName name = names.arg(i, a);
      bool str = t.is_string() && name == ProbeName::kNone;
      bool usym = t.kind == TypeKind::kUsym && name == ProbeName::kNone;
      const uint32_t frames = t.kind != TypeKind::kUstack ? 0
                              : t.size                    ? std::min(t.size, ab::kMaxUstackFrames)
                                                          : ab::kMaxUstackFrames;
      const uint32_t buf = t.kind == TypeKind::kBuf ? t.size - 1 : 0;  // its size: n + 1
      d.args.push_back({str, t.is_signed,
                        str      ? string_bytes(t, c.string_size)
                        : usym   ? ab::kUsymBytes
                        : frames ? ab::ustack_bytes(frames)
                        : buf    ? align8(buf)
                                 : 0,
                        name, usym, frames, buf});
      if (frames) c.uses_stacks = true;
    }
    c.printfs.push_back(std::move(d));
  }
  for (const ProbeBlock &block : program.probes) {
    // One code block per kind of probe this block is attached to.
    int by_flags[4] = {-1, -1, -1, -1};
    for (const AttachPoint &p : block.attach_points) {
      uint32_t flags = 0;
      if (p.type == ProbeType::kUsdt)
        flags = ab::kProbeUsdt;
      else if (p.type == ProbeType::kUretprobe)
        flags = ab::kProbeReturn;
      else if (p.type != ProbeType::kUprobe)
        continue;  // BEGIN, END, interval: the CLI's
      if (by_flags[flags] < 0) {
        CodeBlock code{static_cast<uint32_t>(c.insns.size()), 0, flags};
        BlockCompiler bc(program, block, c, flags);
        if (auto ok = bc.run(); !ok) return std::unexpected(ok.error());
        code.count = static_cast<uint32_t>(c.insns.size()) - code.first;
        by_flags[flags] = static_cast<int>(c.blocks.size());
        c.blocks.push_back(code);
      }
      out.probes.push_back({probe_spec(p), static_cast<uint32_t>(by_flags[flags]), &p});
    }
  }
  return out;
}

}  // namespace usprobe::bt
