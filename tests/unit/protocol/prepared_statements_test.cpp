#include "protocol/prepared_statements.h"

#include <gtest/gtest.h>

namespace pgvalve::protocol {
namespace {

TEST(PreparedStatements, ServerNameIsStableAndFixedLength) {
  EXPECT_EQ(std::string_view(server_statement_name(0x1234)), "pgv_0000000000001234");
  EXPECT_EQ(std::string_view(server_statement_name(~std::uint64_t{0})), "pgv_ffffffffffffffff");
  EXPECT_EQ(std::string_view(server_statement_name(0xfedcba9876543210)), "pgv_fedcba9876543210");
}

TEST(PreparedStatements, SameTextAndTypesShareAHash) {
  const std::string types("\0\0\0\x17", 4);  // int4
  EXPECT_EQ(statement_hash("select $1", types), statement_hash("select $1", types));
  EXPECT_NE(statement_hash("select $1", types), statement_hash("select $1", ""));
  EXPECT_NE(statement_hash("select $1", types), statement_hash("select $2", types));
  // The separator keeps text and types apart.
  EXPECT_NE(statement_hash("ab", ""), statement_hash("a", "b"));
  EXPECT_NE(statement_hash("", ""), 0u);
}

TEST(PreparedStatements, ClientNamesMapToDefinitions) {
  ClientStatements s;
  const auto& a = s.define("P_0", "select 1", "");
  EXPECT_EQ(a.hash, statement_hash("select 1", ""));
  ASSERT_NE(s.find("P_0"), nullptr);
  EXPECT_EQ(s.find("P_0")->query, "select 1");
  EXPECT_EQ(s.find("P_1"), nullptr);
  // Redefinition replaces (the client closed and reused the name).
  s.define("P_0", "select 2", "");
  EXPECT_EQ(s.find("P_0")->query, "select 2");
  EXPECT_TRUE(s.erase("P_0"));
  EXPECT_FALSE(s.erase("P_0"));
  EXPECT_EQ(s.size(), 0u);
}

TEST(PreparedStatements, ServerKeepsAtMostCapacityEvictingLeastRecentlyUsed) {
  ServerStatements s;
  EXPECT_EQ(s.add(1, 3), 0u);
  EXPECT_EQ(s.add(2, 3), 0u);
  EXPECT_EQ(s.add(3, 3), 0u);
  s.touch(1);                  // 2 is now the least recently used
  EXPECT_EQ(s.add(4, 3), 2u);  // evicted
  EXPECT_FALSE(s.contains(2));
  EXPECT_TRUE(s.contains(1));
  EXPECT_TRUE(s.contains(3));
  EXPECT_TRUE(s.contains(4));
  EXPECT_EQ(s.size(), 3u);
  EXPECT_EQ(s.add(5, 3), 3u);
}

TEST(PreparedStatements, EraseAndClearForgetStatements) {
  ServerStatements s;
  s.add(7, 10);
  s.add(8, 10);
  s.erase(7);
  EXPECT_FALSE(s.contains(7));
  s.clear();
  EXPECT_EQ(s.size(), 0u);
}

TEST(PreparedStatements, ForgettingUpToADefinitionKeepsTheLaterOnes) {
  ClientStatements c;
  c.define("a", "select 1", "");
  c.define("b", "select 22", "");
  const std::uint64_t before = c.last_defined();
  c.define("c", "select 333", "");
  c.define("a", "select 4444", "");  // defined again: later than the mark
  EXPECT_EQ(c.erase_defined_up_to(before), std::string_view("select 22").size());
  EXPECT_EQ(c.size(), 2u);
  EXPECT_EQ(c.find("b"), nullptr);
  ASSERT_NE(c.find("a"), nullptr);
  EXPECT_EQ(c.find("a")->query, "select 4444");
  EXPECT_NE(c.find("c"), nullptr);
}

}  // namespace
}  // namespace pgvalve::protocol
