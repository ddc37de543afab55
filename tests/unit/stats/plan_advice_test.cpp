#include "stats/plan_advice.h"

#include <gtest/gtest.h>

namespace pgvalve::stats {
namespace {

// EXPLAIN (FORMAT JSON) SELECT * FROM readings WHERE device_id = 7, on PostgreSQL 15 with 200k
// rows and no index (trimmed to the fields PostgreSQL prints).
constexpr std::string_view kSeqScan = R"J([
  {
    "Plan": {
      "Node Type": "Gather", "Parallel Aware": false, "Startup Cost": 1000.00,
      "Total Cost": 3721.43, "Plan Rows": 20, "Plan Width": 20, "Workers Planned": 1,
      "Plans": [
        {
          "Node Type": "Seq Scan", "Parent Relationship": "Outer", "Parallel Aware": true,
          "Relation Name": "readings", "Alias": "readings", "Startup Cost": 0.00,
          "Total Cost": 2719.43, "Plan Rows": 12, "Plan Width": 20,
          "Filter": "(device_id = 7)"
        }
      ]
    }
  }
])J";

TEST(PlanAdvice, ASeqScanWithAFilterOnALargeTableSuggestsAnIndex) {
  const std::string a = plan_advice(kSeqScan);
  EXPECT_NE(a.find("sequential scan of readings"), std::string::npos) << a;
  EXPECT_NE(a.find("an index on readings (device_id)"), std::string::npos) << a;
}

TEST(PlanAdvice, SeveralFilteredColumnsAreNamedOnceEach) {
  const std::string plan = R"J([{"Plan": {"Node Type": "Seq Scan", "Relation Name": "t",
    "Total Cost": 5000, "Plan Rows": 3, "Plan Width": 8,
    "Filter": "((t.a = 1) AND (b > '2026-01-01'::date) AND (a < 9) AND (c ~~ 'x%'::text))"}}])J";
  const std::string a = plan_advice(plan);
  EXPECT_NE(a.find("an index on t (a, b, c)"), std::string::npos) << a;
}

TEST(PlanAdvice, AnIndexLeadsWithTheColumnsComparedForEquality) {
  // PostgreSQL prints `id > 5 AND grp = 7` in its own order; an index on (id, grp) would not
  // be used for it, one on (grp, id) would.
  const std::string plan = R"J([{"Plan": {"Node Type": "Seq Scan", "Relation Name": "big",
    "Total Cost": 8000, "Plan Rows": 30, "Plan Width": 8,
    "Filter": "((id > 5) AND (grp = 7) AND (kind = ANY ('{1,2}'::integer[])) AND (note IS NULL))"}}])J";
  const std::string a = plan_advice(plan);
  EXPECT_NE(a.find("an index on big (grp, kind, note, id)"), std::string::npos) << a;
}

// Words inside a string constant are a client's value, not columns: they are neither named
// (the advice is shown beside every sample of the shape) nor advised as an index.
TEST(PlanAdvice, AFiltersConstantsAreNotTakenForColumns) {
  const auto scan = [](std::string_view filter) {
    return plan_advice(R"J([{"Plan": {"Node Type": "Seq Scan", "Relation Name": "big",
      "Total Cost": 8000, "Plan Rows": 30, "Plan Width": 8, "Filter": )J" +
                       std::string(filter) + "}}]");
  };
  std::string a = scan(R"J("(note = 'hello LEAKWORD = 1'::text)")J");
  EXPECT_EQ(a.find("LEAKWORD"), std::string::npos) << a;
  EXPECT_NE(a.find("an index on big (note) would"), std::string::npos) << a;
  // A doubled quote inside does not end the constant; E'' strings are read alike.
  a = scan(R"J("((note = 'it''s x = 1 AND y < 2'::text) AND (grp > E'\\ z = 3'::text))")J");
  EXPECT_NE(a.find("an index on big (note, grp) would"), std::string::npos) << a;
  // Numbers, arrays and quoted column names.
  a = scan(R"J("((id > 1e5) AND (kind = ANY ('{a = 1,b}'::text[])) AND (\"Big Col\" = 2))")J");
  EXPECT_NE(a.find(R"(an index on big (kind, "Big Col", id) would)"), std::string::npos) << a;
  // A cast's type is not a column; a column cast to the type compared is one.
  a = scan(
      R"J("(((name)::text = 'a = b'::character varying[]) AND ((ts)::timestamp without time zone > '2026-01-01 00:00:00'::timestamp without time zone))")J");
  EXPECT_NE(a.find("an index on big (name, ts) would"), std::string::npos) << a;
  // Only a constant compared to a column: the columns are not known.
  a = scan(R"J("('LEAKWORD = x'::text = note)")J");
  EXPECT_EQ(a.find("LEAKWORD"), std::string::npos) << a;
  EXPECT_NE(a.find("an index on the filtered columns"), std::string::npos) << a;
}

TEST(PlanAdvice, SmallTablesAndIndexScansNeedNothing) {
  EXPECT_EQ(plan_advice(R"J([{"Plan": {"Node Type": "Seq Scan", "Relation Name": "t",
    "Total Cost": 12.5, "Plan Rows": 1, "Plan Width": 8, "Filter": "(a = 1)"}}])J"),
            "");
  EXPECT_EQ(plan_advice(R"J([{"Plan": {"Node Type": "Index Scan", "Relation Name": "t",
    "Index Name": "t_a", "Total Cost": 8.3, "Plan Rows": 1, "Plan Width": 8}}])J"),
            "");
  // A seq scan without a filter reads everything on purpose.
  EXPECT_EQ(plan_advice(R"J([{"Plan": {"Node Type": "Seq Scan", "Relation Name": "t",
    "Total Cost": 99999, "Plan Rows": 100000, "Plan Width": 8}}])J"),
            "");
}

TEST(PlanAdvice, ASortLargerThanWorkMemSpills) {
  const std::string plan = R"J([{"Plan": {"Node Type": "Sort", "Total Cost": 90000,
    "Plan Rows": 1000000, "Plan Width": 64, "Sort Key": ["readings.value DESC"],
    "Plans": [{"Node Type": "Seq Scan", "Relation Name": "readings", "Total Cost": 20000,
               "Plan Rows": 1000000, "Plan Width": 64}]}}])J";
  PlanSettings s;
  s.work_mem_bytes = 4u << 20;
  const std::string a = plan_advice(plan, s);
  EXPECT_NE(a.find("sort of about 61 MB, more than work_mem (4 MB)"), std::string::npos) << a;
  EXPECT_NE(a.find("index on (readings.value DESC)"), std::string::npos) << a;
  s.work_mem_bytes = 1u << 30;
  EXPECT_EQ(plan_advice(plan, s), "");
}

// The advice is kept for the statement's shape and shown beside every later sample of it:
// a sort key that is an expression may hold one client's constants, so only columns are named.
TEST(PlanAdvice, ASpillingSortNamesItsKeysOnlyWhenTheyAreColumns) {
  const auto sort_by = [](std::string_view keys) {
    return R"J([{"Plan": {"Node Type": "Sort", "Total Cost": 90000, "Plan Rows": 1000000,
      "Plan Width": 64, "Sort Key": [)J" +
           std::string(keys) + "]}}]";
  };
  std::string a = plan_advice(sort_by(R"J("((note || 'SORTSECRET'::text))")J"));
  EXPECT_EQ(a.find("SORTSECRET"), std::string::npos) << a;
  EXPECT_NE(a.find("sort of about 61 MB"), std::string::npos) << a;
  EXPECT_NE(a.find("or add an index on what it sorts by"), std::string::npos) << a;
  // One expression among columns: none is named.
  a = plan_advice(sort_by(R"J("big.grp", "(lower(note) || 'x''y'::text) DESC")J"));
  EXPECT_EQ(a.find("big.grp"), std::string::npos) << a;
  EXPECT_NE(a.find("or add an index on what it sorts by"), std::string::npos) << a;
  // Columns, qualified or quoted, with the order EXPLAIN prints after them.
  a = plan_advice(
      sort_by(R"J("big.grp DESC NULLS LAST", "\"Note \"\"x\"\"\" NULLS FIRST", "s.t.id")J"));
  EXPECT_NE(
      a.find(R"(or add an index on (big.grp DESC NULLS LAST, "Note ""x""" NULLS FIRST, s.t.id))"),
      std::string::npos)
      << a;
  // A constant, a call or a cast is not a column.
  for (std::string_view key : {R"J("'abc'::text")J", R"J("42")J", R"J("lower(note)")J",
                               R"J("(note)::text")J", R"J("note COLLATE \"C\"")J"}) {
    a = plan_advice(sort_by(key));
    EXPECT_NE(a.find("or add an index on what it sorts by"), std::string::npos) << key << a;
  }
}

TEST(PlanAdvice, ASortUnderALimitKeepsOnlyTheRowsTheLimitWants) {
  // SELECT * FROM big ORDER BY note LIMIT 10: a top-N heapsort of 10 rows, 25 kB, never spills,
  // also when a Gather Merge stands between the Limit and the Sort.
  const std::string sort = R"J({"Node Type": "Sort", "Total Cost": 90000, "Plan Rows": 1000000,
    "Plan Width": 64, "Sort Key": ["note"], "Plans": [{"Node Type": "Seq Scan",
    "Relation Name": "big", "Total Cost": 20000, "Plan Rows": 1000000, "Plan Width": 64}]})J";
  const auto under = [&](std::string_view limit_rows, bool gather) {
    const std::string child = gather ? R"J({"Node Type": "Gather Merge", "Total Cost": 90000,
      "Plan Rows": 1000000, "Plan Width": 64, "Plans": [)J" +
                                           sort + "]}"
                                     : sort;
    return R"J([{"Plan": {"Node Type": "Limit", "Total Cost": 90001, "Plan Rows": )J" +
           std::string(limit_rows) + R"J(, "Plan Width": 64, "Plans": [)J" + child + "]}}]";
  };
  PlanSettings s;
  s.work_mem_bytes = 4u << 20;
  EXPECT_EQ(plan_advice(under("10", false), s), "");
  EXPECT_EQ(plan_advice(under("10", true), s), "");
  // A limit of more rows than work_mem holds still spills.
  const std::string a = plan_advice(under("500000", true), s);
  EXPECT_NE(a.find("sort of about 31 MB, more than work_mem (4 MB)"), std::string::npos) << a;
}

TEST(PlanAdvice, AHashLargerThanItsMemorySpills) {
  const std::string plan = R"J([{"Plan": {"Node Type": "Hash Join", "Total Cost": 50000,
    "Plan Rows": 10, "Plan Width": 16, "Plans": [
      {"Node Type": "Hash", "Total Cost": 30000, "Plan Rows": 2000000, "Plan Width": 16}]}}])J";
  EXPECT_NE(plan_advice(plan).find("hash table of about 31 MB"), std::string::npos);
}

TEST(PlanAdvice, WhatIsNotAPlanGivesNoAdvice) {
  EXPECT_EQ(plan_advice(""), "");
  EXPECT_EQ(plan_advice("not json"), "");
  EXPECT_EQ(plan_advice("{}"), "");
  EXPECT_EQ(plan_advice("[{\"Plan\": 3}]"), "");
}

// slow_query_not_explained's reason: PostgreSQL's message may quote the statement's constants
// (22P02 quotes the input), so it is logged only when the samples show them too.
TEST(PlanAdvice, ARefusalIsLoggedWithItsMessageOnlyWhenConstantsMayBeShown) {
  const std::string_view message = "invalid input syntax for type integer: \"MyPassw0rdXYZ\"";
  const std::string redacted = refusal_reason("EXPLAIN", "22P02", message, true);
  EXPECT_EQ(redacted.find("MyPassw0rd"), std::string::npos) << redacted;
  EXPECT_EQ(redacted.rfind("the server refused EXPLAIN with SQLSTATE 22P02", 0), 0u) << redacted;
  EXPECT_NE(redacted.find("stats.redact_literals: false"), std::string::npos) << redacted;
  EXPECT_EQ(refusal_reason("EXPLAIN", "22P02", message, false),
            "the server refused EXPLAIN with SQLSTATE 22P02: invalid input syntax for type "
            "integer: \"MyPassw0rdXYZ\"");
  // One line, never what follows it.
  EXPECT_EQ(refusal_reason("EXPLAIN", "42601", "syntax error\nLINE 1: select 'x'", false),
            "the server refused EXPLAIN with SQLSTATE 42601: syntax error");
}

TEST(PlanAdvice, MemorySettingsAsShowPrintsThem) {
  EXPECT_EQ(parse_memory_setting("4MB"), 4u << 20);
  EXPECT_EQ(parse_memory_setting("64kB"), 64u << 10);
  EXPECT_EQ(parse_memory_setting("1GB"), 1u << 30);
  EXPECT_EQ(parse_memory_setting("x"), 0u);
}

}  // namespace
}  // namespace pgvalve::stats
