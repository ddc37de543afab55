#include "routing/sql_text.h"

#include <gtest/gtest.h>

namespace pgvalve::routing {
namespace {

TEST(SqlText, LiteralDoublesQuotes) {
  std::string out;
  append_literal(out, "it's");
  EXPECT_EQ(out, "'it''s'");
}

TEST(SqlText, IdentifierDoublesQuotesAndKeepsCase) {
  std::string out;
  append_identifier(out, "Time\"Zone");
  EXPECT_EQ(out, "\"Time\"\"Zone\"");
}

TEST(SqlText, RaiseStatementQuotesTheMessage) {
  EXPECT_EQ(raise_error_statement("0A000", "pgvalve: don't"),
            "DO $pgvalve$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = "
            "'pgvalve: don''t'; END$pgvalve$");
}

}  // namespace
}  // namespace pgvalve::routing
