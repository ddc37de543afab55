#include "routing/router.h"
#include "routing/sql_lexer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace pgvalve::routing {
namespace {

using Kind = Route::Kind;

class RouterTest : public ::testing::Test {
 protected:
  std::vector<std::string> write_functions{"nextval", "setval", "pg_notify"};
  DecisionCache cache{16};
  Router router{1, RoutingPolicy{true, &write_functions}, &cache};

  Kind kind(std::string_view sql, RouteContext context = {}) {
    return router.route(sql, context).kind;
  }
};

TEST_F(RouterTest, ProvenReadsGoToAReplicaEverythingElseToThePrimary) {
  EXPECT_EQ(kind("select avg(value) from readings where device_id = 7"), Kind::Replica);
  EXPECT_EQ(kind("SHOW work_mem"), Kind::Replica);
  EXPECT_EQ(kind("explain select 1"), Kind::Replica);
  EXPECT_EQ(kind("copy readings to stdout"), Kind::Replica);
  EXPECT_EQ(kind("insert into readings values (1)"), Kind::Primary);
  EXPECT_EQ(kind("select nextval('s')"), Kind::Primary);
  EXPECT_EQ(kind("select * from readings for update"), Kind::Primary);
  EXPECT_EQ(kind("select 1; delete from readings"), Kind::Primary);
  EXPECT_EQ(kind("set work_mem = '1MB'"), Kind::Primary);
  EXPECT_EQ(kind("select from"), Kind::Primary);  // does not parse
  EXPECT_EQ(kind(""), Kind::Primary);
}

TEST_F(RouterTest, WritesAreMarkedAsWrites) {
  EXPECT_TRUE(router.route("insert into t values (1)", {}).write);
}

TEST_F(RouterTest, TransactionsGoToThePrimaryUnlessReadOnly) {
  EXPECT_EQ(kind("begin"), Kind::Primary);
  EXPECT_EQ(kind("START TRANSACTION ISOLATION LEVEL REPEATABLE READ"), Kind::Primary);
  EXPECT_EQ(kind("begin read only"), Kind::Replica);
  EXPECT_EQ(kind("START TRANSACTION READ ONLY"), Kind::Replica);
  EXPECT_EQ(kind("begin read only; insert into t values (1)"), Kind::Primary);
  // A hot standby refuses serializable transactions.
  EXPECT_EQ(kind("begin isolation level serializable read only deferrable"), Kind::Primary);
  EXPECT_EQ(kind("start transaction read only, isolation level repeatable read"), Kind::Replica);
  EXPECT_EQ(kind("begin read write"), Kind::Primary);
}

// PostgreSQL applies the modes in order: a hot standby refuses a read-write or serializable mode
// even when a later mode overrides it ("cannot set transaction read-write mode during
// recovery", "cannot use serializable mode in a hot standby"). The primary takes them.
TEST_F(RouterTest, ATransactionWithAnyModeAStandbyRefusesGoesToThePrimary) {
  EXPECT_EQ(kind("BEGIN READ WRITE READ ONLY"), Kind::Primary);
  EXPECT_EQ(kind("start transaction read write, read only"), Kind::Primary);
  EXPECT_EQ(kind("BEGIN READ ONLY ISOLATION LEVEL SERIALIZABLE, ISOLATION LEVEL READ COMMITTED"),
            Kind::Primary);
  EXPECT_EQ(kind("begin isolation level serializable, isolation level repeatable read read only"),
            Kind::Primary);
  // Modes a standby takes, repeated or not.
  EXPECT_EQ(kind("begin read only read only"), Kind::Replica);
  EXPECT_EQ(kind("begin isolation level repeatable read, isolation level read committed, read "
                 "only"),
            Kind::Replica);
}

TEST_F(RouterTest, HintsWin) {
  EXPECT_EQ(kind("/* pgvalve: primary */ select 1"), Kind::Primary);
  EXPECT_EQ(kind("/* pgvalve: replica */ insert into t values (1)"), Kind::Replica);
  EXPECT_EQ(kind("/* PGVALVE: Replica */ select 1"), Kind::Replica);
  RouteContext primary;
  primary.preference = RouteContext::Preference::Primary;
  EXPECT_EQ(kind("/* pgvalve: replica */ select 1", primary), Kind::Replica);
}

TEST_F(RouterTest, TheSessionsPreference) {
  RouteContext c;
  c.preference = RouteContext::Preference::Primary;
  EXPECT_EQ(kind("select 1", c), Kind::Primary);
  c.preference = RouteContext::Preference::Replica;
  EXPECT_EQ(kind("insert into t values (1)", c), Kind::Replica);
}

TEST_F(RouterTest, MayIWriteIsAskedOfThePrimaryAsARead) {
  // pgjdbc's targetServerType=primary asks it of every new connection: no read-your-writes mark.
  for (const char* sql : {"show transaction_read_only", "SHOW in_hot_standby"}) {
    const Route r = router.route(sql, {});
    EXPECT_EQ(r.kind, Kind::Primary) << sql;
    EXPECT_FALSE(r.write) << sql;
  }
}

TEST_F(RouterTest, AClientWhoseTransactionsAreSerializableReadsOnThePrimary) {
  RouteContext serializable;
  serializable.serializable = true;
  EXPECT_EQ(kind("select 1", serializable), Kind::Primary);
  EXPECT_EQ(kind("begin read only", serializable), Kind::Primary);
  EXPECT_FALSE(router.route("select 1", serializable).write);
  EXPECT_EQ(kind("/* pgvalve: replica */ select 1", serializable), Kind::Replica);  // as asked
}

TEST_F(RouterTest, ARecentWriteSendsReadsToThePrimaryAsReads) {
  RouteContext c;
  c.recent_write = true;
  const Route r = router.route("select 1", c);
  EXPECT_EQ(r.kind, Kind::Primary);
  EXPECT_FALSE(r.write);
  EXPECT_TRUE(router.route("insert into t values (1)", c).write);
}

TEST_F(RouterTest, EachShapeIsParsedOnce) {
  kind("select * from readings where device_id = 1");
  const auto misses = cache.stats().misses;
  EXPECT_EQ(kind("select * from readings where device_id = 2"), Kind::Replica);
  EXPECT_EQ(kind("SELECT *   FROM readings WHERE device_id = 99"), Kind::Replica);
  EXPECT_EQ(cache.stats().misses, misses);
  EXPECT_GE(cache.stats().hits, 2u);
  // BEGIN and BEGIN READ ONLY are different shapes.
  EXPECT_EQ(kind("begin"), Kind::Primary);
  EXPECT_EQ(kind("begin read only"), Kind::Replica);
}

TEST_F(RouterTest, ANonParsingStatementIsNotCached) {
  EXPECT_EQ(kind("select 'abc"), Kind::Primary);
  EXPECT_EQ(kind("select 'abc'"), Kind::Replica);
}

TEST(Router, FindsTheHintCommentItRoutesBy) {
  const std::string sql = "  -- a\n/* other */ /* pgvalve: replica */ select 1";
  const HintComment hint = find_leading_hint(sql);
  EXPECT_EQ(hint.text, "replica");
  EXPECT_EQ(sql.substr(hint.begin, hint.end - hint.begin), "/* pgvalve: replica */");
  EXPECT_EQ(find_leading_hint("select 1 /* pgvalve: replica */").end, 0u);
  EXPECT_EQ(find_leading_hint("/* pgvalve: replica").end, 0u);
}

TEST(Router, RoutersOfTwoWriteFunctionsListsShareACacheButNotItsDecisions) {
  // One worker's cache, the sessions of before and after a reload that made random() a write.
  DecisionCache cache{16};
  std::vector<std::string> before{"nextval"};
  std::vector<std::string> after{"nextval", "random"};
  RoutingPolicy old_policy{true, &before};
  old_policy.write_functions_id = 1;
  RoutingPolicy new_policy{true, &after};
  new_policy.write_functions_id = 2;
  const Router old_router(1, old_policy, &cache);
  const Router new_router(1, new_policy, &cache);
  const std::string sql = "select pg_is_in_recovery(), random() > 2";
  EXPECT_EQ(old_router.route(sql, {}).kind, Kind::Replica);
  EXPECT_EQ(new_router.route(sql, {}).kind, Kind::Primary);
  EXPECT_EQ(old_router.route(sql, {}).kind, Kind::Replica);
  // The other order, with a shape neither has seen.
  const std::string other = "select random() as r";
  EXPECT_EQ(new_router.route(other, {}).kind, Kind::Primary);
  EXPECT_EQ(old_router.route(other, {}).kind, Kind::Replica);
  EXPECT_EQ(new_router.route(other, {}).kind, Kind::Primary);
}

TEST(Router, WithoutSplittingEveryRouteIsThePrimaryAndNothingIsParsed) {
  DecisionCache cache{4};
  std::vector<std::string> wf;
  Router off(1, RoutingPolicy{false, &wf}, &cache);
  EXPECT_EQ(off.route("select 1", {}).kind, Kind::Primary);
  EXPECT_EQ(off.route("/* pgvalve: replica */ select 1", {}).kind, Kind::Primary);
  EXPECT_EQ(cache.stats().misses, 0u);
  Router none;
  EXPECT_EQ(none.route("select 1", {}).kind, Kind::Primary);
}

}  // namespace
}  // namespace pgvalve::routing
