#include "protocol/prepared_statements.h"

#include <vector>

#include <gtest/gtest.h>

#include "protocol/messages.h"
#include "protocol/wire.h"

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

// Two names of one text closed in one flight: the server may answer the first Close and skip
// the second after an error between them; each Close settles its own name.
TEST(PreparedStatements, EachCloseSettlesItsOwnNameAlsoForTheSameText) {
  ClientStatements s;
  s.define("s1", "select 1", "");
  s.define("s2", "select 1", "");
  const std::uint64_t first = s.close("s1");
  const std::uint64_t second = s.close("s2");
  ASSERT_NE(first, 0u);
  ASSERT_NE(second, 0u);
  EXPECT_NE(first, second);
  EXPECT_EQ(s.close("s1"), 0u) << "already being closed";
  EXPECT_EQ(s.close("nope"), 0u);
  EXPECT_EQ(s.erase_closing(first), std::string_view("select 1").size());
  EXPECT_EQ(s.find_any("s1"), nullptr);
  EXPECT_EQ(s.find("s2"), nullptr) << "still being closed";
  s.closed_skipped(second);
  ASSERT_NE(s.find("s2"), nullptr);
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

// A RowDescription's body with `fields`.
std::string row_description_body(const std::vector<RowField>& fields) {
  std::string out;
  append_i16(out, static_cast<std::int16_t>(fields.size()));
  for (const RowField& f : fields)
    append_row_field(out, f);
  return out;
}

std::uint64_t shape_of(const std::vector<RowField>& fields) {
  const std::string body = row_description_body(fields);
  return result_shape(Frame{'T', body, {}});
}

// What PostgreSQL compares before it refuses a cached plan (names, types, sizes, modifiers, in
// order), and nothing else: where the columns come from and their format are not the rows' shape.
TEST(PreparedStatements, AResultShapeIsTheColumnsNamesAndTypes) {
  const RowField id{"id", 16384, 1, 23, 4, -1, 0};
  const RowField name{"name", 16384, 2, 1043, -1, 36, 0};  // varchar(32)
  const std::uint64_t shape = shape_of({id, name});
  EXPECT_GT(shape, kDescribedPerPortal);
  RowField moved = id;
  moved.table = 16999;  // the table made again alike
  moved.column = 3;
  moved.format = 1;  // a portal's binary format
  EXPECT_EQ(shape_of({moved, name}), shape);
  EXPECT_NE(shape_of({id}), shape) << "a column fewer";
  EXPECT_NE(shape_of({id, name, id}), shape) << "a column more";
  EXPECT_NE(shape_of({name, id}), shape) << "another order";
  RowField wider = name;
  wider.modifier = 68;  // varchar(64)
  EXPECT_NE(shape_of({id, wider}), shape);
  RowField bigint = id;
  bigint.type = 20;
  bigint.size = 8;
  EXPECT_NE(shape_of({bigint, name}), shape);
  RowField renamed = id;
  renamed.name = "device_id";
  EXPECT_NE(shape_of({renamed, name}), shape);
  // No rows, something else, or a malformed description: no shape.
  EXPECT_EQ(result_shape(Frame{'n', {}, {}}), 0u);
  EXPECT_EQ(result_shape(Frame{'C', "SELECT 1", {}}), 0u);
  EXPECT_EQ(result_shape(Frame{'T', std::string_view("\0\2", 2), {}}), 0u);
}

TEST(PreparedStatements, AShapeBelongsToADefinitionAndAPreparation) {
  ClientStatements client;
  client.define("a", "select * from t", "");
  client.define("b", "select * from t", "");
  const std::uint64_t hash = client.find("a")->hash;
  client.described(hash, 42);
  EXPECT_EQ(client.find("a")->shape, 42u);
  EXPECT_EQ(client.find("b")->shape, 42u) << "the same statement";
  client.define("a", "select * from t", "");  // defined again: not described since
  EXPECT_EQ(client.find("a")->shape, 0u);

  ServerStatements server;
  server.add(hash, 10);
  EXPECT_EQ(server.touch(hash), 0u);
  server.described(hash, 42);
  EXPECT_EQ(server.touch(hash), 42u);
  server.add(hash, 10);  // prepared again (after it was found stale)
  EXPECT_EQ(server.touch(hash), 0u);
  EXPECT_EQ(server.touch(hash + 1), 0u);
}

}  // namespace
}  // namespace pgvalve::protocol
