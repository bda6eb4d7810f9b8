// `usprobe run`: the syntax tree of a bpftrace program, as the parser (bt/parser.h) builds it and
// the checker (bt/check.h) completes it. After check() succeeds every expression has its Type,
// every map use its index into Program::maps, every scratch variable its index into its probe
// block's `variables`, and every printf its index into Program::printfs: the compiler that
// follows walks this tree and never looks a name up.
//
// Plain structs with unique_ptr/vector children: one Expr struct for every kind of expression
// (its `kind` says which fields mean something), so a walk is a switch, not a visitor.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bt/diagnostic.h"
#include "bt/value.h"

namespace usprobe::bt {

// What an expression's value is. bpftrace's names for each (Type::name) are those its error
// messages print: "int64", "unsigned int8", "string[16]", "ustack", "usym", "buffer[9]".
enum class TypeKind {
  kNone,    // a statement-like call: printf(), print(), exit()...; also "not yet known"
  kInt,     // bits 8/16/32/64, is_signed
  kString,  // size: the most bytes it holds, its NUL included (a literal: length + 1; comm: 16)
  kUstack,  // size: the most frames kept (ustack: 127, ustack(N): N)
  kUsym,    // usym(addr), func: an address printed as its symbol
  kBuf,     // buf(p, n): size = n + 1 (bpftrace's: a length byte and the bytes, printed as hex)
  // A map holding an aggregation (count(), hist()...) named where a value was expected. Only
  // print(), clear(), delete() and has_key() take one; anywhere else check() refuses it.
  kAggregation,
};

struct Type {
  TypeKind kind = TypeKind::kNone;
  int bits = 64;          // kInt
  bool is_signed = true;  // kInt; decides how a value prints (-1 or 18446744073709551615)
  uint32_t size = 0;      // kString, kBuf: bytes; kUstack: frames
  ValueKind aggregation = ValueKind::kScalar;  // kAggregation: which one

  static Type none() { return {}; }
  static Type integer(int bits, bool is_signed) { return {TypeKind::kInt, bits, is_signed, 0}; }
  static Type string(uint32_t size) { return {TypeKind::kString, 64, true, size}; }

  bool is_int() const { return kind == TypeKind::kInt; }
  bool is_string() const { return kind == TypeKind::kString; }
  // bpftrace's spelling, for messages: "unsigned int64", "string[3]", "count".
  std::string name() const;
  friend bool operator==(const Type &, const Type &) = default;
};

// The bpftrace name of an aggregation ("count", "lhist"); "" for kScalar.
const char *aggregation_name(ValueKind kind);

// Builtin variables usprobe supports. kArg carries its number in Expr::int_value.
enum class Builtin {
  kPid,
  kTid,
  kUid,
  kGid,
  kComm,
  kCpu,
  kNsecs,
  kElapsed,
  kArg,
  kRetval,
  kFunc,
  kProbe,
  kCpid,  // the command's process (the first that ran the session's agent); 0 with -p
};

// Functions usprobe supports. kUstack is also the bare `ustack` (no arguments).
enum class Func {
  kPrintf,
  kPrint,
  kClear,
  kDelete,
  kHasKey,
  kExit,
  kStr,
  kBuf,
  kUsym,
  kUstack,
  // Aggregations: only as the whole right side of a map assignment.
  kCount,
  kSum,
  kAvg,
  kMin,
  kMax,
  kStats,
  kHist,
  kLhist,
};
const char *func_name(Func f);
const char *builtin_name(Builtin b);  // "arg" for kArg

enum class Op {
  // binary
  kOr,
  kAnd,
  kBitOr,
  kBitXor,
  kBitAnd,
  kEq,
  kNe,
  kLt,
  kLe,
  kGt,
  kGe,
  kShl,
  kShr,
  kAdd,
  kSub,
  kMul,
  kDiv,
  kMod,
  // unary
  kNot,
  kBitNot,
  kNeg,
};
const char *op_text(Op op);  // "||", "<<", "!"

enum class ExprKind {
  kInt,      // int_value
  kString,   // text: the bytes, escapes decoded
  kBuiltin,  // builtin (kArg: int_value = N)
  kScratch,  // text: name without '$'; index: into ProbeBlock::variables
  kMap,      // text: name with '@' ("@", "@bytes"); args: the keys; index: into Program::maps
  kCall,     // func; args; name_loc: the function's name. printf: index into Program::printfs
  kUnary,    // op; args[0]
  kBinary,   // op; args[0] op args[1]
  kTernary,  // args[0] ? args[1] : args[2]
  kCast,     // cast_to (kInt); args[0]
};

struct Expr {
  ExprKind kind = ExprKind::kInt;
  SourceLoc loc;  // the whole expression (a call: from its name to its ')')
  Type type;      // filled by check()

  uint64_t int_value = 0;  // kInt (bits as written: 0xffffffffffffffff stays so); kBuiltin kArg
  std::string text;
  Builtin builtin = Builtin::kPid;
  Func func = Func::kPrintf;
  Op op = Op::kAdd;
  Type cast_to;
  int index = -1;
  SourceLoc name_loc;  // kCall: its name; kUnary, kBinary: the operator
  std::vector<std::unique_ptr<Expr>> args;
};
using ExprPtr = std::unique_ptr<Expr>;

enum class StmtKind {
  kExpr,    // expr: a call (printf, print, clear, delete, exit...)
  kAssign,  // target (kMap or kScratch) op= value
  kIf,      // if (expr) { then_body } else { else_body }; `else if` is an else_body of one kIf
};

// `x = v` is op kNone. `x += v` is op kAdd, and `x++` / `x--` are op kAdd / kSub with value
// the integer 1 and `increment` set (for messages and dumps only: the compiler treats them as
// `x += 1`).
struct Stmt {
  StmtKind kind = StmtKind::kExpr;
  SourceLoc loc;
  ExprPtr expr;            // kExpr: the call; kIf: the condition
  ExprPtr target;          // kAssign
  ExprPtr value;           // kAssign: an aggregation is a kCall of kCount..kLhist
  bool compound = false;   // kAssign: `op=`
  Op op = Op::kAdd;        // kAssign with compound: the operator
  bool increment = false;  // `++`/`--`
  SourceLoc op_loc;        // kAssign: the '=' ('+=', '++') itself
  std::vector<Stmt> then_body, else_body;
};

enum class ProbeType { kBegin, kEnd, kUprobe, kUretprobe, kUsdt, kInterval };
const char *probe_type_name(ProbeType t);  // bpftrace's long names: "uprobe", "usdt", "BEGIN"

// One attach point as written, and its parts. Resolution against files is not done here: a
// glob stays a glob ("libc:str*" is one AttachPoint however many functions it names).
struct AttachPoint {
  ProbeType type = ProbeType::kBegin;
  std::string text;  // as written: "u:libc:malloc", "interval:ms:100"
  SourceLoc loc;
  std::string target;              // uprobe, uretprobe, usdt: a path, "exe" or a short library name
  std::string function;            // uprobe, uretprobe: a name or a glob, without "+OFF"
  std::optional<uint64_t> offset;  // uprobe: "+OFF"
  std::string provider;            // usdt: "" in usdt:TARGET:NAME
  std::string name;                // usdt: the probe's name (or glob)
  uint64_t interval_ns = 0;        // interval
};

// A scratch variable of a probe block: its name (without '$') and the type its first
// assignment gave it.
struct Variable {
  std::string name;
  Type type;
};

struct ProbeBlock {
  std::vector<AttachPoint> attach_points;
  ExprPtr predicate;  // null when absent
  std::vector<Stmt> body;
  std::vector<Variable> variables;  // filled by check()
  SourceLoc loc;                    // its first attach point
};

// A map of the program. Keys and plain values are stored 64 bits wide (bpftrace's): an int
// key or value is int64 or unsigned int64, a string its largest size.
struct MapInfo {
  std::string name;  // "@", "@bytes"
  std::vector<Type> keys;
  ValueKind kind = ValueKind::kScalar;
  Type value;  // kScalar: the value's type; aggregations: their argument's (kNone for count)
  bool is_signed = true;  // as bt::Map::is_signed: how sum/min/max/avg/stats/scalar ints print
  int64_t lhist_min = 0, lhist_max = 0, lhist_step = 1;  // kLhist
  SourceLoc loc;                                         // its first assignment
};

// One printf call: its format as written, escapes decoded, and the types of its arguments after
// the format.
struct PrintfInfo {
  std::string format;
  std::vector<Type> args;
  SourceLoc loc;
};

struct Program {
  std::vector<ProbeBlock> probes;
  std::vector<MapInfo> maps;        // filled by check(), in order of first assignment
  std::vector<PrintfInfo> printfs;  // filled by check(), in source order
};

// A compact S-expression of the tree, for tests and debugging:
//   (probe (uprobe "libc" "malloc") (pred (> arg0 100)) (= @[comm] (count)))
// Types are shown after check() as `:u64`, `:s32`, `:str16`... when `types` is set.
std::string dump(const Program &program, bool types = false);
std::string dump(const Expr &expr, bool types = false);

}  // namespace usprobe::bt
