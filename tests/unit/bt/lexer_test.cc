// The tokens of bpftrace programs, and the lexer's errors with their places.
#include "bt/lexer.h"

#include <gtest/gtest.h>

namespace usprobe::bt {
namespace {

// "kind:text" per token, space-separated; integers show their value.
std::string tokens(std::string_view src) {
  auto toks = tokenize(src);
  if (!toks)
    return "error " + std::to_string(toks.error().loc.column) + ": " + toks.error().message;
  std::string out;
  for (const Token &t : *toks) {
    if (!out.empty()) out += ' ';
    switch (t.kind) {
      case TokenKind::kEnd:
        out += "END";
        break;
      case TokenKind::kInt:
        out += "int:" + std::to_string(t.value);
        break;
      case TokenKind::kString:
        out += "str:" + t.text;
        break;
      case TokenKind::kIdent:
        out += "id:" + t.text;
        break;
      case TokenKind::kScratch:
        out += "$:" + t.text;
        break;
      case TokenKind::kMap:
        out += "map:" + t.text;
        break;
      default:
        out += t.text;
    }
  }
  return out;
}

TEST(BtLexer, OperatorsLongestFirst) {
  EXPECT_EQ(tokens("a<<=b>>c<=d!=e&&f||g++ --"),
            "id:a <<= id:b >> id:c <= id:d != id:e && id:f || id:g ++ -- END");
}

TEST(BtLexer, IntegersInCsBases) {
  // bpftrace 0.17: `@x = 0x10 + 010` prints 24 (010 is octal).
  EXPECT_EQ(tokens("42 0x2a 052 0 18446744073709551615"),
            "int:42 int:42 int:42 int:0 int:18446744073709551615 END");
  EXPECT_EQ(tokens("18446744073709551616"),
            "error 1: integer '18446744073709551616' does not fit in 64 bits");
  EXPECT_EQ(tokens("09"), "error 1: invalid integer '09'");
}

TEST(BtLexer, StringEscapes) {
  // bpftrace 0.17 takes "a\tb\"c\\d\0e\x41\101" and refuses "\q".
  auto toks = tokenize(R"("a\tb\"c\\d\x41\101\n" "\0")");
  ASSERT_TRUE(toks);
  EXPECT_EQ((*toks)[0].text, "a\tb\"c\\dAA\n");
  EXPECT_EQ((*toks)[1].text, std::string(1, '\0'));
  auto bad = tokenize(R"(@x = "a\qb")");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message, "invalid escape character '\\q'");
  EXPECT_EQ(bad.error().loc, (SourceLoc{1, 6, 1, 10}));
}

TEST(BtLexer, UnterminatedStringAndComment) {
  // bpftrace 0.17: `BEGIN { @x = "abc` -> 1:14-18: ERROR: unterminated string.
  auto s = tokenize("{ @x = \"abc");
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().message, "unterminated string");
  EXPECT_EQ(s.error().loc, (SourceLoc{1, 8, 1, 12}));
  EXPECT_EQ(tokens("a /* b"), "error 3: unterminated comment");
}

TEST(BtLexer, CommentsAndLinesAndColumns) {
  auto toks = tokenize("a // x\n /* y\n */ $b @ @c");
  ASSERT_TRUE(toks);
  ASSERT_EQ(toks->size(), 5u);
  EXPECT_EQ((*toks)[1].text, "b");
  EXPECT_EQ((*toks)[1].loc, (SourceLoc{3, 5, 3, 7}));
  EXPECT_EQ((*toks)[2].text, "@");
  EXPECT_EQ((*toks)[3].text, "@c");
  EXPECT_EQ((*toks)[3].loc, (SourceLoc{3, 10, 3, 12}));
}

TEST(BtLexer, UnknownCharacter) {
  EXPECT_EQ(tokens("@x = 1 # 2"), "error 8: unexpected character '#'");
  EXPECT_EQ(tokens("$ = 1"), "error 1: expected a variable name after '$'");
}

TEST(BtLexer, AttachPointsEndAtSpaceCommaBraceOrPredicate) {
  Lexer lx("uprobe:/usr/bin/bash:readline+0x10,u:libc:str* /pid/ {");
  auto a = lx.attach_point();
  ASSERT_TRUE(a);
  EXPECT_EQ(a->text, "uprobe:/usr/bin/bash:readline+0x10");
  EXPECT_EQ(a->loc, (SourceLoc{1, 1, 1, 35}));
  EXPECT_EQ(lx.next()->text, ",");
  EXPECT_EQ(lx.attach_point()->text, "u:libc:str*");
  EXPECT_EQ(lx.next()->text, "/");
  Lexer begin("BEGIN/1/{");
  EXPECT_EQ(begin.attach_point()->text, "BEGIN");
  EXPECT_EQ(begin.next()->text, "/");
}

}  // namespace
}  // namespace usprobe::bt
