#include "bt/lexer.h"

#include <fmt/format.h>

#include <array>
#include <cctype>

namespace usprobe::bt {

namespace {

bool is_ident_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_ident_char(char c) {
  return is_ident_start(c) || is_digit(c);
}
bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

// Longest first, so that "<<=" is not read as "<<" and "=".
constexpr std::array<std::string_view, 20> kMultiPunct = {
    "<<=", ">>=", "<=", ">=", "==", "!=", "<<", ">>", "&&", "||",
    "+=",  "-=",  "*=", "/=", "%=", "&=", "|=", "^=", "++", "--"};
constexpr std::string_view kSinglePunct = "(){}[],;?:/+-*%&|^!~<>=";

Diagnostic error(SourceLoc loc, std::string message) {
  return {loc, std::move(message)};
}

}  // namespace

std::string Token::describe() const {
  switch (kind) {
    case TokenKind::kEnd:
      return "end of file";
    case TokenKind::kIdent:
      return fmt::format("identifier '{}'", text);
    case TokenKind::kInt:
      return fmt::format("integer {}", text);
    case TokenKind::kString:
      return "string literal";
    case TokenKind::kScratch:
      return fmt::format("variable '${}'", text);
    case TokenKind::kMap:
      return fmt::format("map '{}'", text);
    case TokenKind::kPunct:
      return fmt::format("'{}'", text);
    case TokenKind::kAttach:
      return fmt::format("attach point '{}'", text);
  }
  return "?";
}

void Lexer::advance() {
  if (src_[pos_] == '\n') {
    ++line_;
    col_ = 1;
  } else {
    ++col_;
  }
  ++pos_;
}

void Lexer::skip_space() {
  for (;;) {
    if (pos_ >= src_.size()) return;
    char c = src_[pos_];
    if (is_space(c)) {
      advance();
    } else if (c == '/' && peek(1) == '/') {
      while (pos_ < src_.size() && src_[pos_] != '\n') advance();
    } else if (c == '/' && peek(1) == '*') {
      SourceLoc start = here();
      advance();
      advance();
      while (pos_ < src_.size() && !(src_[pos_] == '*' && peek(1) == '/')) advance();
      if (pos_ >= src_.size()) {
        start.end_column = start.column + 2;
        pending_ = std::unexpected(error(start, "unterminated comment"));
        return;
      }
      advance();
      advance();
    } else {
      return;
    }
  }
}

std::expected<Token, Diagnostic> Lexer::next() {
  skip_space();
  if (!pending_) return std::unexpected(pending_.error());
  Token tok;
  tok.loc = here();
  auto finish = [&](TokenKind kind) -> std::expected<Token, Diagnostic> {
    tok.kind = kind;
    tok.loc.end_line = line_;
    tok.loc.end_column = col_;
    return tok;
  };
  if (pos_ >= src_.size()) return finish(TokenKind::kEnd);
  char c = src_[pos_];
  if (is_ident_start(c)) {
    size_t start = pos_;
    while (pos_ < src_.size() && is_ident_char(src_[pos_])) advance();
    tok.text = src_.substr(start, pos_ - start);
    return finish(TokenKind::kIdent);
  }
  if (is_digit(c)) return number();
  if (c == '"') return string_literal();
  if (c == '$' || c == '@') {
    size_t start = pos_;
    advance();
    while (pos_ < src_.size() && is_ident_char(src_[pos_])) advance();
    if (c == '$') {
      tok.text = src_.substr(start + 1, pos_ - start - 1);
      if (tok.text.empty()) {
        tok.loc.end_column = col_;
        return std::unexpected(error(tok.loc, "expected a variable name after '$'"));
      }
      return finish(TokenKind::kScratch);
    }
    tok.text = src_.substr(start, pos_ - start);
    return finish(TokenKind::kMap);
  }
  for (std::string_view p : kMultiPunct) {
    if (src_.substr(pos_, p.size()) == p) {
      for (size_t i = 0; i < p.size(); ++i) advance();
      tok.text = p;
      return finish(TokenKind::kPunct);
    }
  }
  if (kSinglePunct.find(c) != std::string_view::npos) {
    advance();
    tok.text = std::string(1, c);
    return finish(TokenKind::kPunct);
  }
  advance();
  tok.loc.end_column = col_;
  if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f)
    return std::unexpected(
        error(tok.loc, fmt::format("unexpected character 0x{:02x}", static_cast<uint8_t>(c))));
  return std::unexpected(error(tok.loc, fmt::format("unexpected character '{}'", c)));
}

std::expected<Token, Diagnostic> Lexer::number() {
  Token tok;
  tok.kind = TokenKind::kInt;
  tok.loc = here();
  size_t start = pos_;
  while (pos_ < src_.size() && is_ident_char(src_[pos_])) advance();
  tok.text = src_.substr(start, pos_ - start);
  tok.loc.end_column = col_;
  // C's bases, as bpftrace reads them: 0x2a, 052, 42.
  std::string_view digits = tok.text;
  int base = 10;
  if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
    base = 16;
    digits.remove_prefix(2);
  } else if (digits.size() > 1 && digits[0] == '0') {
    base = 8;
    digits.remove_prefix(1);
  }
  unsigned __int128 v = 0;
  for (char d : digits) {
    int n = is_digit(d)              ? d - '0'
            : (d >= 'a' && d <= 'f') ? d - 'a' + 10
            : (d >= 'A' && d <= 'F') ? d - 'A' + 10
                                     : 99;
    if (n >= base)
      return std::unexpected(error(tok.loc, fmt::format("invalid integer '{}'", tok.text)));
    v = v * static_cast<unsigned>(base) + static_cast<unsigned>(n);
    if (v > UINT64_MAX)
      return std::unexpected(
          error(tok.loc, fmt::format("integer '{}' does not fit in 64 bits", tok.text)));
  }
  tok.value = static_cast<uint64_t>(v);
  return tok;
}

std::expected<Token, Diagnostic> Lexer::string_literal() {
  Token tok;
  tok.kind = TokenKind::kString;
  tok.loc = here();
  advance();  // '"'
  auto until_here = [&] {
    SourceLoc loc = tok.loc;
    loc.end_line = line_;
    loc.end_column = col_;
    return loc;
  };
  for (;;) {
    if (pos_ >= src_.size() || src_[pos_] == '\n')
      return std::unexpected(error(until_here(), "unterminated string"));
    char c = src_[pos_];
    advance();
    if (c == '"') break;
    if (c != '\\') {
      tok.text += c;
      continue;
    }
    if (pos_ >= src_.size()) return std::unexpected(error(until_here(), "unterminated string"));
    char e = src_[pos_];
    advance();
    switch (e) {
      case 'n':
        tok.text += '\n';
        break;
      case 't':
        tok.text += '\t';
        break;
      case 'r':
        tok.text += '\r';
        break;
      case '"':
        tok.text += '"';
        break;
      case '\\':
        tok.text += '\\';
        break;
      case 'x': {
        // \xHH: one or two hex digits.
        int n = 0, v = 0;
        while (n < 2 && std::isxdigit(static_cast<unsigned char>(peek()))) {
          char h = peek();
          v = v * 16 + (is_digit(h) ? h - '0' : (h | 0x20) - 'a' + 10);
          advance();
          ++n;
        }
        if (n == 0)
          return std::unexpected(error(until_here(), "invalid escape: '\\x' needs a hex digit"));
        tok.text += static_cast<char>(v);
        break;
      }
      default:
        if (e >= '0' && e <= '7') {
          // \N, \NN, \NNN: octal, as C (so \0 is a NUL).
          int v = e - '0';
          for (int n = 1; n < 3 && peek() >= '0' && peek() <= '7'; ++n) {
            v = v * 8 + (peek() - '0');
            advance();
          }
          if (v > 255)
            return std::unexpected(error(until_here(), "octal escape out of range (over \\377)"));
          tok.text += static_cast<char>(v);
          break;
        }
        return std::unexpected(
            error(until_here(), fmt::format("invalid escape character '\\{}'", e)));
    }
  }
  tok.loc.end_line = line_;
  tok.loc.end_column = col_;
  return tok;
}

std::expected<Token, Diagnostic> Lexer::attach_point() {
  skip_space();
  if (!pending_) return std::unexpected(pending_.error());
  Token tok;
  tok.loc = here();
  size_t start = pos_;
  bool colon = false;
  while (pos_ < src_.size()) {
    char c = src_[pos_];
    if (is_space(c) || c == ',' || c == '{' || (c == '/' && !colon)) break;
    if (c == '/' && peek(1) == '*') break;
    colon |= c == ':';
    advance();
  }
  tok.text = src_.substr(start, pos_ - start);
  tok.kind = tok.text.empty() ? TokenKind::kEnd : TokenKind::kAttach;
  tok.loc.end_line = line_;
  tok.loc.end_column = col_;
  if (tok.kind == TokenKind::kEnd && pos_ < src_.size()) {
    // Something that cannot start a probe: let next() describe it.
    return next();
  }
  return tok;
}

std::expected<std::vector<Token>, Diagnostic> tokenize(std::string_view source) {
  Lexer lexer(source);
  std::vector<Token> tokens;
  for (;;) {
    auto tok = lexer.next();
    if (!tok) return std::unexpected(tok.error());
    bool end = tok->kind == TokenKind::kEnd;
    tokens.push_back(std::move(*tok));
    if (end) return tokens;
  }
}

}  // namespace usprobe::bt
