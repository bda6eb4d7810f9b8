// `usprobe run`: the tokens of a bpftrace program. The parser pulls them one at a time, and asks
// for an attach point (`uprobe:/usr/bin/bash:readline`, `u:libc:str*+4`) where one may start:
// its characters ('/', ':', '*', '+') mean something else inside a block, so only the parser
// knows which reading applies.
#pragma once

#include <cstdint>
#include <expected>
#include <string>
#include <string_view>
#include <vector>

#include "bt/diagnostic.h"

namespace usprobe::bt {

enum class TokenKind {
  kEnd,      // end of the source
  kIdent,    // pid, printf, if, BEGIN
  kInt,      // 42, 0x2a, 052 (value in Token::value)
  kString,   // "..." (Token::text: escapes decoded)
  kScratch,  // $name (text: "name")
  kMap,      // @name or @ (text: "@name" / "@")
  kPunct,    // operators and punctuation (text: "(", "<<=", "++", ...)
  kAttach,   // an attach point, only from Lexer::attach_point (text: as written)
};

struct Token {
  TokenKind kind = TokenKind::kEnd;
  std::string text;
  uint64_t value = 0;
  SourceLoc loc;
  // For messages: "'}'", "identifier 'foo'", "integer 42", "string \"a\"", "end of file".
  std::string describe() const;
};

class Lexer {
 public:
  explicit Lexer(std::string_view source) : src_(source) {}

  // The next token, after white space and comments. Errors: an unterminated string or comment,
  // an invalid escape, an integer that does not fit 64 bits, a character no token starts with.
  std::expected<Token, Diagnostic> next();

  // The next attach point: the characters up to white space, ',', '{' or, in one without a ':'
  // (BEGIN/1/), a '/'. A kEnd token at the end of the source.
  std::expected<Token, Diagnostic> attach_point();

 private:
  void skip_space();
  SourceLoc here() const { return {line_, col_, line_, col_}; }
  void advance();
  char peek(size_t ahead = 0) const {
    return pos_ + ahead < src_.size() ? src_[pos_ + ahead] : '\0';
  }
  std::expected<Token, Diagnostic> string_literal();
  std::expected<Token, Diagnostic> number();

  std::string_view src_;
  size_t pos_ = 0;
  int line_ = 1, col_ = 1;
  std::expected<void, Diagnostic> pending_ = {};  // an unterminated comment, found by skip_space
};

// Every token of `source` read as a block's content (for tests).
std::expected<std::vector<Token>, Diagnostic> tokenize(std::string_view source);

}  // namespace usprobe::bt
