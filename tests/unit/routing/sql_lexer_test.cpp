#include "routing/sql_lexer.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace pgvalve::routing {
namespace {

using K = TokenKind;
using Tokens = std::vector<std::pair<TokenKind, std::string>>;

Tokens lex(std::string_view sql) {
  Tokens out;
  SqlLexer lexer(sql);
  Token t;
  while (lexer.next(t)) {
    EXPECT_EQ(sql.substr(t.offset, t.text.size()), t.text);
    out.emplace_back(t.kind, std::string(t.text));
    if (out.size() > sql.size() + 1) {
      ADD_FAILURE() << "lexer does not advance";
      break;
    }
  }
  return out;
}

std::string show(const Tokens& tokens) {
  std::string s;
  for (const auto& [kind, text] : tokens) {
    s += std::string(token_kind_name(kind)) + "[" + text + "] ";
  }
  return s;
}

#define EXPECT_TOKENS(sql, ...)                  \
  do {                                           \
    const Tokens expected = __VA_ARGS__;         \
    const Tokens actual = lex(sql);              \
    EXPECT_EQ(actual, expected) << show(actual); \
  } while (0)

TEST(SqlLexer, EmptyAndBlankInput) {
  EXPECT_TOKENS("", {});
  EXPECT_TOKENS(" \t\r\n\f\v ", {});
}

TEST(SqlLexer, KeywordsAndIdentifiers) {
  EXPECT_TOKENS("SELECT device_id, Foo$1 FROM t_2", {{K::Keyword, "SELECT"},
                                                     {K::Identifier, "device_id"},
                                                     {K::Punct, ","},
                                                     {K::Identifier, "Foo$1"},
                                                     {K::Keyword, "FROM"},
                                                     {K::Identifier, "t_2"}});
}

TEST(SqlLexer, WithoutTheKeywordLookupEveryWordIsAnIdentifier) {
  SqlLexer lexer("SELECT x FROM t", 0, SqlLexer::Keywords::NotLookedUp);
  Token t;
  int words = 0;
  while (lexer.next(t)) {
    EXPECT_EQ(t.kind, K::Identifier) << t.text;
    ++words;
  }
  EXPECT_EQ(words, 4);
}

TEST(SqlLexer, UnreservedKeywordsAreKeywords) {
  EXPECT_TOKENS("begin Zone names",
                {{K::Keyword, "begin"}, {K::Keyword, "Zone"}, {K::Keyword, "names"}});
}

TEST(SqlLexer, NonAsciiBytesAreIdentifierCharacters) {
  EXPECT_TOKENS("select größe", {{K::Keyword, "select"}, {K::Identifier, "größe"}});
}

TEST(SqlLexer, IsKeywordIgnoresCase) {
  EXPECT_TRUE(is_keyword("select"));
  EXPECT_TRUE(is_keyword("SeLeCt"));
  EXPECT_TRUE(is_keyword("abort"));
  EXPECT_TRUE(is_keyword("zone"));
  EXPECT_TRUE(is_keyword("current_timestamp"));
  EXPECT_FALSE(is_keyword("device_id"));
  EXPECT_FALSE(is_keyword(""));
  EXPECT_FALSE(is_keyword("a_very_long_identifier_name"));
}

TEST(SqlLexer, IequalsAndIsWord) {
  EXPECT_TRUE(iequals("Begin", "bEGIN"));
  EXPECT_FALSE(iequals("begin", "begins"));
  Token t;
  SqlLexer lexer("BeGiN");
  ASSERT_TRUE(lexer.next(t));
  EXPECT_TRUE(t.is_word("begin"));
  EXPECT_FALSE(t.is_word("end"));
  SqlLexer quoted("\"begin\"");
  ASSERT_TRUE(quoted.next(t));
  EXPECT_FALSE(t.is_word("begin"));  // a quoted identifier is not a keyword
}

TEST(SqlLexer, QuotedIdentifiers) {
  EXPECT_TOKENS(R"(select "a""b", "Weird Name", U&"d\0061t")",
                {{K::Keyword, "select"},
                 {K::QuotedIdentifier, R"("a""b")"},
                 {K::Punct, ","},
                 {K::QuotedIdentifier, R"("Weird Name")"},
                 {K::Punct, ","},
                 {K::QuotedIdentifier, R"(U&"d\0061t")"}});
}

TEST(SqlLexer, PlainStringsDoubleQuotesAndKeepBackslashes) {
  EXPECT_TOKENS(R"('it''s' 'a\' 'b')",
                {{K::String, R"('it''s')"}, {K::String, R"('a\')"}, {K::String, "'b'"}});
  EXPECT_TOKENS("''", {{K::String, "''"}});
}

TEST(SqlLexer, EscapeStrings) {
  EXPECT_TOKENS(R"(E'it\'s' e'a\\' x)",
                {{K::String, R"(E'it\'s')"}, {K::String, R"(e'a\\')"}, {K::Identifier, "x"}});
  EXPECT_TOKENS(R"(E'a''b\n')", {{K::String, R"(E'a''b\n')"}});
}

TEST(SqlLexer, PrefixedStrings) {
  EXPECT_TOKENS(R"(U&'d\0061t' N'x' B'1010' X'1F' b'01')", {{K::String, R"(U&'d\0061t')"},
                                                            {K::String, "N'x'"},
                                                            {K::String, "B'1010'"},
                                                            {K::String, "X'1F'"},
                                                            {K::String, "b'01'"}});
}

TEST(SqlLexer, BitStringsDoNotDoubleQuotes) {
  EXPECT_TOKENS("B'10''01'", {{K::String, "B'10'"}, {K::String, "'01'"}});
}

TEST(SqlLexer, PrefixLetterWithoutQuoteIsAWord) {
  EXPECT_TOKENS("e x u&y", {{K::Identifier, "e"},
                            {K::Identifier, "x"},
                            {K::Identifier, "u"},
                            {K::Operator, "&"},
                            {K::Identifier, "y"}});
}

TEST(SqlLexer, StringsSeparatedByNewlineAreOneLiteral) {
  EXPECT_TOKENS("'a'\n  'b'", {{K::String, "'a'\n  'b'"}});
  EXPECT_TOKENS("'a' -- note\n 'b'", {{K::String, "'a' -- note\n 'b'"}});
  EXPECT_TOKENS("'a' 'b'", {{K::String, "'a'"}, {K::String, "'b'"}});
  EXPECT_TOKENS("'a' /* c */\n'b'", {{K::String, "'a'"}, {K::String, "'b'"}});
}

TEST(SqlLexer, DollarStrings) {
  EXPECT_TOKENS("$$it's$$ $fn$ a $$ b $fn$ $a$x$ab$y$a$", {{K::DollarString, "$$it's$$"},
                                                           {K::DollarString, "$fn$ a $$ b $fn$"},
                                                           {K::DollarString, "$a$x$ab$y$a$"}});
}

TEST(SqlLexer, DollarInsideIdentifierIsNotAQuote) {
  EXPECT_TOKENS("a$b$ c", {{K::Identifier, "a$b$"}, {K::Identifier, "c"}});
}

TEST(SqlLexer, LoneDollarIsOther) {
  EXPECT_TOKENS("$ $x", {{K::Other, "$"}, {K::Other, "$"}, {K::Identifier, "x"}});
}

TEST(SqlLexer, Params) {
  EXPECT_TOKENS("$1,$23", {{K::Param, "$1"}, {K::Punct, ","}, {K::Param, "$23"}});
}

TEST(SqlLexer, Numbers) {
  EXPECT_TOKENS("42 4.2 .5 5. 1e10 2.5E-3 7e+2", {{K::Number, "42"},
                                                  {K::Number, "4.2"},
                                                  {K::Number, ".5"},
                                                  {K::Number, "5."},
                                                  {K::Number, "1e10"},
                                                  {K::Number, "2.5E-3"},
                                                  {K::Number, "7e+2"}});
}

TEST(SqlLexer, NumberEdgeCases) {
  EXPECT_TOKENS("1..5", {{K::Number, "1"}, {K::Operator, ".."}, {K::Number, "5"}});
  EXPECT_TOKENS("1e", {{K::Number, "1"}, {K::Identifier, "e"}});
  EXPECT_TOKENS("1e+x",
                {{K::Number, "1"}, {K::Identifier, "e"}, {K::Operator, "+"}, {K::Identifier, "x"}});
  EXPECT_TOKENS("123abc", {{K::Number, "123"}, {K::Identifier, "abc"}});
  EXPECT_TOKENS("t.a", {{K::Identifier, "t"}, {K::Punct, "."}, {K::Identifier, "a"}});
}

TEST(SqlLexer, MultiCharOperators) {
  EXPECT_TOKENS("a<=b >= <> != :: ->> || := => @> ~~*", {{K::Identifier, "a"},
                                                         {K::Operator, "<="},
                                                         {K::Identifier, "b"},
                                                         {K::Operator, ">="},
                                                         {K::Operator, "<>"},
                                                         {K::Operator, "!="},
                                                         {K::Operator, "::"},
                                                         {K::Operator, "->>"},
                                                         {K::Operator, "||"},
                                                         {K::Operator, ":="},
                                                         {K::Operator, "=>"},
                                                         {K::Operator, "@>"},
                                                         {K::Operator, "~~*"}});
}

TEST(SqlLexer, CastAndSliceColon) {
  EXPECT_TOKENS("'1'::int a[1:2]", {{K::String, "'1'"},
                                    {K::Operator, "::"},
                                    {K::Keyword, "int"},
                                    {K::Identifier, "a"},
                                    {K::Punct, "["},
                                    {K::Number, "1"},
                                    {K::Operator, ":"},
                                    {K::Number, "2"},
                                    {K::Punct, "]"}});
}

TEST(SqlLexer, TrailingSignSplitsOffOperator) {
  EXPECT_TOKENS("a=-1",
                {{K::Identifier, "a"}, {K::Operator, "="}, {K::Operator, "-"}, {K::Number, "1"}});
  EXPECT_TOKENS("a<-1",
                {{K::Identifier, "a"}, {K::Operator, "<"}, {K::Operator, "-"}, {K::Number, "1"}});
  EXPECT_TOKENS("a@-1", {{K::Identifier, "a"}, {K::Operator, "@-"}, {K::Number, "1"}});
}

TEST(SqlLexer, CommentStartEndsOperator) {
  EXPECT_TOKENS("a=/*c*/b", {{K::Identifier, "a"}, {K::Operator, "="}, {K::Identifier, "b"}});
  EXPECT_TOKENS("a+--c\nb", {{K::Identifier, "a"}, {K::Operator, "+"}, {K::Identifier, "b"}});
}

TEST(SqlLexer, Punctuation) {
  EXPECT_TOKENS("(),;[].", {{K::Punct, "("},
                            {K::Punct, ")"},
                            {K::Punct, ","},
                            {K::Punct, ";"},
                            {K::Punct, "["},
                            {K::Punct, "]"},
                            {K::Punct, "."}});
}

TEST(SqlLexer, OtherBytes) {
  EXPECT_TOKENS("\\x {", {{K::Other, "\\"}, {K::Identifier, "x"}, {K::Other, "{"}});
}

TEST(SqlLexer, LineComments) {
  EXPECT_TOKENS("select -- a comment 'x\n 1 --tail", {{K::Keyword, "select"}, {K::Number, "1"}});
}

TEST(SqlLexer, NestedBlockComments) {
  EXPECT_TOKENS("a /* outer /* inner */ still comment */ b",
                {{K::Identifier, "a"}, {K::Identifier, "b"}});
  EXPECT_TOKENS("a /*/ x */ b", {{K::Identifier, "a"}, {K::Identifier, "b"}});
  EXPECT_TOKENS("a /**/b", {{K::Identifier, "a"}, {K::Identifier, "b"}});
}

TEST(SqlLexer, OffsetsPointIntoInput) {
  const std::string_view sql = "  select /* c */ 'x'";
  SqlLexer lexer(sql);
  Token t;
  ASSERT_TRUE(lexer.next(t));
  EXPECT_EQ(t.offset, 2u);
  ASSERT_TRUE(lexer.next(t));
  EXPECT_EQ(t.offset, 17u);
  EXPECT_EQ(t.end(), sql.size());
  EXPECT_EQ(t.text.data(), sql.data() + 17);
}

TEST(SqlLexer, StartOffset) {
  SqlLexer lexer("select 1; select 2", 9);
  Token t;
  ASSERT_TRUE(lexer.next(t));
  EXPECT_TRUE(t.is_word("select"));
  EXPECT_EQ(t.offset, 10u);
}

TEST(SqlLexer, UnterminatedStringEndsStream) {
  EXPECT_TOKENS("select 'abc", {{K::Keyword, "select"}, {K::Unterminated, "'abc"}});
  EXPECT_TOKENS("select E'abc\\", {{K::Keyword, "select"}, {K::Unterminated, "E'abc\\"}});
  EXPECT_TOKENS("select E'a\\'", {{K::Keyword, "select"}, {K::Unterminated, "E'a\\'"}});
  EXPECT_TOKENS("'a''", {{K::Unterminated, "'a''"}});
  EXPECT_TOKENS("'a'''", {{K::String, "'a'''"}});
  EXPECT_TOKENS("B'01", {{K::Unterminated, "B'01"}});
}

TEST(SqlLexer, UnterminatedQuotedIdentifier) {
  EXPECT_TOKENS("select \"abc", {{K::Keyword, "select"}, {K::Unterminated, "\"abc"}});
}

TEST(SqlLexer, UnterminatedDollarString) {
  EXPECT_TOKENS("do $x$ begin $$ end", {{K::Keyword, "do"}, {K::Unterminated, "$x$ begin $$ end"}});
  EXPECT_TOKENS("$$", {{K::Unterminated, "$$"}});
}

TEST(SqlLexer, UnterminatedComment) {
  EXPECT_TOKENS("select 1 /* a /* b */",
                {{K::Keyword, "select"}, {K::Number, "1"}, {K::Unterminated, "/* a /* b */"}});
  EXPECT_TOKENS("/*", {{K::Unterminated, "/*"}});
}

TEST(SqlLexer, NextAfterEndStaysFalse) {
  SqlLexer lexer("'open");
  Token t;
  ASSERT_TRUE(lexer.next(t));
  EXPECT_EQ(t.kind, K::Unterminated);
  EXPECT_FALSE(lexer.next(t));
  EXPECT_FALSE(lexer.next(t));
}

TEST(SqlLexer, TruncatedPrefixesAtEndOfInput) {
  EXPECT_TOKENS("E", {{K::Identifier, "E"}});
  EXPECT_TOKENS("U&", {{K::Identifier, "U"}, {K::Operator, "&"}});
  EXPECT_TOKENS("E'", {{K::Unterminated, "E'"}});
  EXPECT_TOKENS("U&'", {{K::Unterminated, "U&'"}});
  EXPECT_TOKENS("$", {{K::Other, "$"}});
  EXPECT_TOKENS("$a", {{K::Other, "$"}, {K::Identifier, "a"}});
  EXPECT_TOKENS(":", {{K::Operator, ":"}});
  EXPECT_TOKENS("-", {{K::Operator, "-"}});
  EXPECT_TOKENS(".", {{K::Punct, "."}});
  EXPECT_TOKENS("'a'\n", {{K::String, "'a'"}});
  EXPECT_TOKENS("'a'\n--x", {{K::String, "'a'"}});
}

TEST(SqlLexer, LexesEmbeddedNulBytes) {
  const std::string sql("select\0'a\0b'", 12);
  EXPECT_TOKENS(sql, {{K::Keyword, "select"},
                      {K::Other, std::string("\0", 1)},
                      {K::String, std::string("'a\0b'", 5)}});
}

TEST(LeadingHint, FindsPgvalveHint) {
  EXPECT_EQ(leading_hint("/* pgvalve: primary */ select 1"), "primary");
  EXPECT_EQ(leading_hint("  /*pgvalve:shard=s1*/select 1"), "shard=s1");
  EXPECT_EQ(leading_hint("/*  PGVALVE:  device_id=42  \n */ select 1"), "device_id=42");
}

TEST(LeadingHint, SkipsOtherLeadingComments) {
  EXPECT_EQ(leading_hint("-- app: x\n/* trace */ /* pgvalve: replica */ select 1"), "replica");
}

TEST(LeadingHint, OnlyBeforeTheFirstToken) {
  EXPECT_EQ(leading_hint("select /* pgvalve: primary */ 1"), "");
  EXPECT_EQ(leading_hint("select 1"), "");
  EXPECT_EQ(leading_hint(""), "");
}

TEST(LeadingHint, NotAHint) {
  EXPECT_EQ(leading_hint("/* pgvalvex: primary */ select 1"), "");
  EXPECT_EQ(leading_hint("/* route pgvalve: primary */ select 1"), "");
  EXPECT_EQ(leading_hint("-- pgvalve: primary\nselect 1"), "");
}

TEST(LeadingHint, NestedAndUnterminated) {
  EXPECT_EQ(leading_hint("/* pgvalve: all_shards /* why */ */ select 1"), "all_shards /* why */");
  EXPECT_EQ(leading_hint("/* pgvalve: primary"), "");
  EXPECT_EQ(leading_hint("/* pgvalve: */ select 1"), "");
}

}  // namespace
}  // namespace pgvalve::routing
