// plan_scatter: how the answers of several shards combine, or why they cannot.
#include "routing/scatter_plan.h"

#include <gtest/gtest.h>

#include "routing/fingerprint.h"

namespace pgvalve::routing {
namespace {

using Combine = ScatterPlan::Combine;
using SortKey = ScatterPlan::SortKey;

ShardingPolicy policy() {
  ShardingPolicy p;
  p.tables = {"telemetry", "device_events"};
  p.reference_tables = {"device_types"};
  return p;
}

ScatterPlan plan(std::string_view sql) {
  return plan_scatter(sql, policy());
}

void expect_refused(std::string_view sql, std::string_view why) {
  const ScatterPlan p = plan(sql);
  EXPECT_FALSE(p.ok) << sql;
  EXPECT_NE(p.refusal.find(why), std::string::npos) << sql << ": " << p.refusal;
}

TEST(ScatterPlan, RowsWithoutOrderAreConcatenated) {
  const ScatterPlan p = plan("SELECT * FROM telemetry WHERE value > 3");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_TRUE(p.order.empty());
  EXPECT_TRUE(p.combine.empty());
  EXPECT_FALSE(p.distinct);
  EXPECT_EQ(p.limit_slot, -1);
  EXPECT_EQ(p.offset_slot, -1);
}

TEST(ScatterPlan, OrderByResolvesToOutputColumns) {
  ScatterPlan p = plan("SELECT device_id, ts, value FROM telemetry ORDER BY ts DESC, 1");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.order, (std::vector<SortKey>{{1, true, true}, {0, false, false}}));
  p = plan("SELECT value AS v, note FROM telemetry ORDER BY v NULLS FIRST, note DESC NULLS LAST");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.order, (std::vector<SortKey>{{0, false, true}, {1, true, false}}));
  p = plan("SELECT lower(note), value FROM telemetry ORDER BY lower( note )");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.order, (std::vector<SortKey>{{0, false, false}}));
  p = plan("SELECT t.device_id FROM telemetry t ORDER BY t.device_id");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.order, (std::vector<SortKey>{{0, false, false}}));
}

TEST(ScatterPlan, OrderByOutsideTheOutputIsRefused) {
  expect_refused("SELECT device_id FROM telemetry ORDER BY ts", "not an output column");
  expect_refused("SELECT * FROM telemetry ORDER BY ts", "not an output column");
  expect_refused("SELECT device_id FROM telemetry ORDER BY 2", "not an output column");
  expect_refused("SELECT device_id FROM telemetry ORDER BY device_id USING >", "USING");
}

TEST(ScatterPlan, LimitAndOffsetAreLiteralSlots) {
  ScatterPlan p =
      plan("SELECT device_id FROM telemetry WHERE value > 3 ORDER BY 1 LIMIT 10 OFFSET 5");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.limit_slot, 1);  // slot 0 is the 3; ORDER BY 1 names a column, not a slot
  EXPECT_EQ(p.offset_slot, 2);
  p = plan("SELECT device_id FROM telemetry ORDER BY 1 OFFSET $2 LIMIT $1");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.limit_slot, 1);
  EXPECT_EQ(p.offset_slot, 0);
  p = plan("SELECT device_id FROM telemetry ORDER BY 1 FETCH FIRST 3 ROWS ONLY");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.limit_slot, 0);
  expect_refused("SELECT device_id FROM telemetry ORDER BY 1 LIMIT 1 + 1", "LIMIT");
  expect_refused("SELECT device_id FROM telemetry ORDER BY 1 FETCH FIRST 3 ROWS WITH TIES",
                 "WITH TIES");
}

TEST(ScatterPlan, SlotsOfOneShapeAreTheSameForEveryStatementOfIt) {
  const char* a = "SELECT device_id FROM telemetry WHERE note IN ('a', 'b') ORDER BY 1 LIMIT 7";
  const char* b = "SELECT device_id FROM telemetry WHERE note IN ('x') ORDER BY 1 LIMIT 70";
  ASSERT_EQ(fingerprint(a), fingerprint(b));
  EXPECT_EQ(plan(a).limit_slot, plan(b).limit_slot);
  EXPECT_EQ(plan(a).limit_slot, 1);
}

TEST(ScatterPlan, CountSumMinMaxCombine) {
  ScatterPlan p = plan("SELECT count(*), sum(value), min(ts), max(ts), count(note) FROM telemetry");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.combine, (std::vector<Combine>{Combine::Sum, Combine::Sum, Combine::Min, Combine::Max,
                                             Combine::Sum}));
  p = plan("SELECT count(*) FILTER (WHERE value > 1) FROM telemetry");
  ASSERT_TRUE(p.ok) << p.refusal;
  p = plan("SELECT pg_catalog.count(*) FROM telemetry");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.combine, (std::vector<Combine>{Combine::Sum}));
}

TEST(ScatterPlan, GroupByOnOutputColumnsCombinesGroups) {
  ScatterPlan p = plan(
      "SELECT device_id, count(*), max(value) FROM telemetry GROUP BY device_id ORDER BY 2 DESC");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.combine, (std::vector<Combine>{Combine::Group, Combine::Sum, Combine::Max}));
  EXPECT_EQ(p.order, (std::vector<SortKey>{{1, true, true}}));
  p = plan("SELECT date_trunc('hour', ts), count(*) FROM telemetry GROUP BY 1");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.combine, (std::vector<Combine>{Combine::Group, Combine::Sum}));
  p = plan("SELECT note, device_id FROM telemetry GROUP BY device_id, note");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.combine, (std::vector<Combine>{Combine::Group, Combine::Group}));
}

TEST(ScatterPlan, WhatDoesNotCombineIsRefused) {
  expect_refused("SELECT count(*) FROM telemetry GROUP BY device_id", "GROUP BY");
  expect_refused("SELECT avg(value) FROM telemetry", "avg()");
  expect_refused("SELECT string_agg(note, ',') FROM telemetry", "string_agg()");
  expect_refused("SELECT count(DISTINCT note) FROM telemetry", "DISTINCT");
  expect_refused("SELECT sum(DISTINCT value) FROM telemetry", "DISTINCT");
  expect_refused("SELECT count(*) + 1 FROM telemetry", "expression over an aggregate");
  expect_refused("SELECT device_id, count(*) FROM telemetry GROUP BY 1 HAVING count(*) > 2",
                 "HAVING");
  expect_refused("SELECT rank() OVER (ORDER BY ts) FROM telemetry", "window");
  expect_refused("SELECT device_id FROM telemetry UNION SELECT device_id FROM device_events",
                 "UNION");
  expect_refused("WITH r AS (SELECT * FROM telemetry) SELECT * FROM r", "WITH");
  expect_refused("SELECT DISTINCT ON (device_id) device_id, ts FROM telemetry", "DISTINCT ON");
  expect_refused("SELECT device_id, count(*) FROM telemetry GROUP BY ROLLUP (device_id)", "ROLLUP");
  expect_refused("SELECT * FROM telemetry; SELECT 1", "several statements");
  expect_refused("DELETE FROM telemetry", "only a SELECT");
  expect_refused("SELECT * FROM", "not valid SQL");
}

TEST(ScatterPlan, DistinctKeysCountAcrossShards) {
  const ScatterPlan p = plan("SELECT count(DISTINCT device_id) FROM telemetry");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_EQ(p.combine, (std::vector<Combine>{Combine::Sum}));
}

TEST(ScatterPlan, SelectDistinctMergesEqualRows) {
  const ScatterPlan p = plan("SELECT DISTINCT note FROM telemetry ORDER BY 1");
  ASSERT_TRUE(p.ok) << p.refusal;
  EXPECT_TRUE(p.distinct);
}

TEST(ScatterPlan, SubqueriesOverShardedTablesAreRefused) {
  expect_refused("SELECT * FROM device_types WHERE id IN (SELECT type_id FROM telemetry)",
                 "subquery");
  expect_refused("SELECT count(*) FROM (SELECT DISTINCT note FROM telemetry) n", "subquery");
  EXPECT_TRUE(plan("SELECT * FROM telemetry WHERE type_id IN (SELECT id FROM device_types)").ok);
}

TEST(ScatterPlan, ShardedTablesMeetOnlyWhenJoinedOnTheKey) {
  for (const char* sql : {
           "SELECT * FROM telemetry t JOIN device_events e USING (device_id)",
           "SELECT * FROM telemetry t JOIN device_events e ON t.device_id = e.device_id",
           "SELECT * FROM telemetry t LEFT JOIN device_events e ON e.device_id = t.device_id "
           "AND e.ts > t.ts",
           "SELECT * FROM telemetry t, device_events e WHERE t.device_id = e.device_id",
           "SELECT * FROM telemetry t JOIN device_types d ON d.id = t.type_id",
       }) {
    EXPECT_TRUE(plan(sql).ok) << sql << ": " << plan(sql).refusal;
  }
  expect_refused("SELECT * FROM telemetry t JOIN device_events e ON t.ts = e.ts", "joined");
  expect_refused("SELECT * FROM telemetry t, device_events e", "joined");
  expect_refused(
      "SELECT * FROM telemetry t JOIN device_events e ON t.device_id = e.device_id OR t.ts = e.ts",
      "joined");
}

TEST(ScatterPlan, BuiltinAggregatesAreKnownByName) {
  for (const char* name : {"count", "sum", "min", "max", "avg", "string_agg", "percentile_cont"}) {
    EXPECT_TRUE(is_builtin_aggregate(name)) << name;
  }
  for (const char* name : {"lower", "now", "coalesce", ""}) {
    EXPECT_FALSE(is_builtin_aggregate(name)) << name;
  }
}

}  // namespace
}  // namespace pgvalve::routing
