// Gather: the answers of several shards combined as one database would answer.
#include "routing/gather.h"

#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "protocol/binary_values.h"
#include "protocol/frame.h"
#include "protocol/wire.h"

namespace pgvalve::routing {
namespace {

namespace pr = protocol;
using Value = std::optional<std::string>;
using Rows = std::vector<std::vector<Value>>;

constexpr std::uint32_t kInt8 = 20, kText = 25, kFloat8 = 701, kNumeric = 1700, kInterval = 1186;

// A slot that holds `order`, as the health checks publish one (kept for the test's life).
const TextOrderSlot* slot(const TextOrder* order) {
  static std::map<const TextOrder*, TextOrderSlot> slots;
  TextOrderSlot& s = slots[order];
  s.set(order);
  return &s;
}

// A whole backend message, kept alive with its Frame.
struct Message {
  std::string bytes;
  pr::Frame frame() const {
    pr::Frame f;
    f.tag = bytes[0];
    f.body = std::string_view(bytes).substr(5);
    f.whole = bytes;
    return f;
  }
};

// `table`: the OID of the columns' table, which differs between shards.
Message description(const std::vector<std::uint32_t>& types, std::int16_t format = 0,
                    std::int32_t table = 0) {
  Message m;
  const std::size_t at = pr::begin_message(m.bytes, 'T');
  pr::append_i16(m.bytes, static_cast<std::int16_t>(types.size()));
  for (std::size_t i = 0; i < types.size(); ++i) {
    pr::append_cstr(m.bytes, "c" + std::to_string(i));
    pr::append_i32(m.bytes, table);
    pr::append_i16(m.bytes, static_cast<std::int16_t>(table != 0 ? i + 1 : 0));
    pr::append_i32(m.bytes, static_cast<std::int32_t>(types[i]));
    pr::append_i16(m.bytes, -1);
    pr::append_i32(m.bytes, -1);
    pr::append_i16(m.bytes, format);
  }
  pr::end_message(m.bytes, at);
  return m;
}

Message row(const std::vector<Value>& values) {
  Message m;
  const std::size_t at = pr::begin_message(m.bytes, 'D');
  pr::append_i16(m.bytes, static_cast<std::int16_t>(values.size()));
  for (const Value& v : values) {
    if (!v) {
      pr::append_i32(m.bytes, -1);
      continue;
    }
    pr::append_i32(m.bytes, static_cast<std::int32_t>(v->size()));
    m.bytes.append(*v);
  }
  pr::end_message(m.bytes, at);
  return m;
}

Message complete(std::string_view tag) {
  Message m;
  const std::size_t at = pr::begin_message(m.bytes, 'C');
  pr::append_cstr(m.bytes, tag);
  pr::end_message(m.bytes, at);
  return m;
}

Message error(std::string_view sqlstate, std::string_view text) {
  Message m;
  const std::size_t at = pr::begin_message(m.bytes, 'E');
  m.bytes += 'S';
  pr::append_cstr(m.bytes, "ERROR");
  m.bytes += 'C';
  pr::append_cstr(m.bytes, sqlstate);
  m.bytes += 'M';
  pr::append_cstr(m.bytes, text);
  m.bytes += '\0';
  pr::end_message(m.bytes, at);
  return m;
}

// What the client gets: the rows, the command tag, or the error's SQLSTATE.
struct Answer {
  Rows rows;
  std::string tag;
  std::string sqlstate;
  std::string message;
};

Answer read_answer(const std::string& out) {
  Answer a;
  std::size_t pos = 0;
  while (pos < out.size()) {
    auto r = pr::decode_frame(std::string_view(out).substr(pos), 1 << 30);
    EXPECT_EQ(r.status, pr::DecodeStatus::Ok);
    const pr::Frame& f = r.frame;
    pr::Cursor c(f.body);
    if (f.tag == 'D') {
      std::vector<Value> values;
      const auto n = c.i16();
      for (std::int16_t i = 0; i < *n; ++i) {
        const auto size = c.i32();
        values.push_back(*size < 0 ? Value{} : Value{std::string(*c.bytes(*size))});
      }
      a.rows.push_back(values);
    } else if (f.tag == 'C') {
      a.tag = std::string(*c.cstr());
    } else if (f.tag == 'E') {
      while (true) {
        const auto code = c.u8();
        if (!code || *code == 0) break;
        const std::string value(*c.cstr());
        if (*code == 'C') a.sqlstate = value;
        if (*code == 'M') a.message = value;
      }
    }
    pos += f.whole.size();
  }
  return a;
}

// Each shard: its RowDescription (the same for all), its rows, then SELECT n.
Answer gather(const ScatterPlan& plan, const std::vector<std::uint32_t>& types,
              const std::vector<Rows>& shards, std::int64_t limit = -1, std::int64_t offset = 0,
              std::size_t max_bytes = 1 << 20, const TextOrder* text = &TextOrder::bytes()) {
  Gather g(plan, static_cast<int>(shards.size()), limit, offset, max_bytes, false, slot(text));
  for (std::size_t s = 0; s < shards.size(); ++s) {
    g.add(static_cast<int>(s), description(types, 0, static_cast<std::int32_t>(16384 + s)).frame());
    for (const auto& r : shards[s])
      g.add(static_cast<int>(s), row(r).frame());
    g.add(static_cast<int>(s), complete("SELECT " + std::to_string(shards[s].size())).frame());
  }
  std::string out;
  g.finish(out);
  return read_answer(out);
}

ScatterPlan ordered(std::vector<ScatterPlan::SortKey> keys) {
  ScatterPlan p;
  p.ok = true;
  p.order = std::move(keys);
  return p;
}

ScatterPlan combined(std::vector<ScatterPlan::Combine> ops,
                     std::vector<ScatterPlan::SortKey> keys = {}) {
  ScatterPlan p = ordered(std::move(keys));
  p.combine = std::move(ops);
  return p;
}

using C = ScatterPlan::Combine;

TEST(Gather, RowsAreConcatenatedWithOneDescriptionAndTheTotal) {
  const Answer a =
      gather(ordered({}), {kInt8, kText}, {{{"1", "a"}, {"2", "b"}}, {{"3", std::nullopt}}});
  EXPECT_EQ(a.rows, (Rows{{"1", "a"}, {"2", "b"}, {"3", std::nullopt}}));
  EXPECT_EQ(a.tag, "SELECT 3");
}

TEST(Gather, OrderByMergesByValueWithNullsWhereAsked) {
  // ORDER BY 1 DESC (NULLS FIRST by default): integers by value, not by their text.
  Answer a = gather(ordered({{0, true, true}}), {kInt8},
                    {{{"9"}, {"-3"}}, {{std::nullopt}, {"10"}, {"2"}}});
  EXPECT_EQ(a.rows, (Rows{{std::nullopt}, {"10"}, {"9"}, {"2"}, {"-3"}}));
  a = gather(ordered({{0, false, false}}), {kNumeric},
             {{{"10.5"}, {"NaN"}}, {{"9.75"}, {"-1"}, {std::nullopt}, {"-1.50"}}});
  EXPECT_EQ(a.rows, (Rows{{"-1.50"}, {"-1"}, {"9.75"}, {"10.5"}, {"NaN"}, {std::nullopt}}));
  a = gather(ordered({{0, false, true}, {1, true, false}}), {kText, kFloat8},
             {{{"b", "1.5"}, {"a", "-Infinity"}}, {{"a", "NaN"}, {std::nullopt, "0"}}});
  EXPECT_EQ(a.rows, (Rows{{std::nullopt, "0"}, {"a", "NaN"}, {"a", "-Infinity"}, {"b", "1.5"}}));
}

TEST(Gather, LimitAndOffsetApplyAfterTheMerge) {
  const Answer a = gather(ordered({{0, false, false}}), {kInt8},
                          {{{"1"}, {"4"}, {"5"}}, {{"2"}, {"3"}, {"6"}}}, 2, 2);
  EXPECT_EQ(a.rows, (Rows{{"3"}, {"4"}}));
  EXPECT_EQ(a.tag, "SELECT 2");
}

// An Execute row limit (asyncpg's fetchrow() sends 1): the first rows, then PortalSuspended
// when there were more, as a server answers; the tag when there were not.
TEST(Gather, AnExecuteRowLimitSuspendsAfterItsRows) {
  for (const auto& [fetch, rows, suspended] : std::vector<std::tuple<std::int64_t, Rows, bool>>{
           {2, Rows{{"1"}, {"2"}}, true}, {9, Rows{{"1"}, {"2"}, {"3"}}, false}}) {
    Gather g(ordered({{0, false, false}}), 2, -1, 0, 1 << 20, false, slot(&TextOrder::bytes()));
    g.set_fetch_limit(fetch);
    const std::vector<Rows> shards = {{{"1"}, {"3"}}, {{"2"}}};
    for (std::size_t s = 0; s < shards.size(); ++s) {
      g.add(static_cast<int>(s), description({kInt8}, 0, 16384).frame());
      for (const auto& r : shards[s])
        g.add(static_cast<int>(s), row(r).frame());
      g.add(static_cast<int>(s), complete("SELECT " + std::to_string(shards[s].size())).frame());
    }
    std::string out;
    g.finish(out);
    const Answer a = read_answer(out);
    EXPECT_EQ(a.rows, rows) << fetch;
    EXPECT_EQ(out.ends_with(std::string("s\0\0\0\4", 5)), suspended) << fetch;
    EXPECT_EQ(a.tag, suspended ? "" : "SELECT 3") << fetch;
  }
}

TEST(Gather, CountSumMinMaxCombineIntoOneRow) {
  const Answer a = gather(combined({C::Sum, C::Sum, C::Min, C::Max, C::Sum}),
                          {kInt8, kNumeric, kText, kText, kNumeric},
                          {{{"3", "1.50", "b", "x", std::nullopt}},
                           {{"0", std::nullopt, std::nullopt, std::nullopt, std::nullopt}},
                           {{"4", "2.5", "a", "y", "-0.75"}}});
  EXPECT_EQ(a.rows, (Rows{{"7", "4.00", "a", "y", "-0.75"}}));
  EXPECT_EQ(a.tag, "SELECT 1");
}

TEST(Gather, NumericSumsKeepPostgresScaleAndSign) {
  auto sum = [](std::string a, std::string b) {
    return gather(combined({C::Sum}), {kNumeric}, {{{a}}, {{b}}}).rows.at(0).at(0).value();
  };
  EXPECT_EQ(sum("9.99", "0.01"), "10.00");
  EXPECT_EQ(sum("-3.25", "1"), "-2.25");
  EXPECT_EQ(sum("-1", "1"), "0");
  EXPECT_EQ(sum("0.5", "-0.75"), "-0.25");
  EXPECT_EQ(sum("123456789012345678901234567890", "1"), "123456789012345678901234567891");
  EXPECT_EQ(sum("-0.001", "-0.0020"), "-0.0030");
}

TEST(Gather, FloatSumsPrintAsPostgresDoes) {
  const Answer a = gather(combined({C::Sum}), {kFloat8}, {{{"0.1"}}, {{"0.2"}}});
  EXPECT_EQ(a.rows, (Rows{{"0.30000000000000004"}}));
}

TEST(Gather, GroupsFromDifferentShardsBecomeOneRow) {
  // SELECT note, count(*), max(v) ... GROUP BY note ORDER BY 2 DESC
  const Answer a =
      gather(combined({C::Group, C::Sum, C::Max}, {{1, true, true}}), {kText, kInt8, kInt8},
             {{{"ok", "2", "5"}, {std::nullopt, "1", "1"}},
              {{"warn", "1", "9"}, {"ok", "2", "3"}, {std::nullopt, "4", "2"}}});
  EXPECT_EQ(a.rows, (Rows{{std::nullopt, "5", "2"}, {"ok", "4", "5"}, {"warn", "1", "9"}}));
}

TEST(Gather, DistinctRowsAppearOnce) {
  ScatterPlan p = ordered({{0, false, false}});
  p.distinct = true;
  const Answer a = gather(p, {kText}, {{{"b"}, {"a"}}, {{"a"}, {std::nullopt}}, {{"b"}}});
  EXPECT_EQ(a.rows, (Rows{{"a"}, {"b"}, {std::nullopt}}));
}

TEST(Gather, AnErrorOfOneShardIsTheAnswer) {
  Gather g(ordered({}), 2, -1, 0, 1 << 20);
  g.add(0, description({kInt8}).frame());
  g.add(0, row({"1"}).frame());
  g.add(0, complete("SELECT 1").frame());
  EXPECT_FALSE(g.add(1, error("57014", "canceling statement due to statement timeout").frame()));
  std::string out;
  g.finish(out);
  const Answer a = read_answer(out);
  EXPECT_TRUE(a.rows.empty());
  EXPECT_EQ(a.sqlstate, "57014");
  EXPECT_EQ(a.tag, "");
}

// Binary int8 values, as JDBC asks for them once a statement is prepared.
std::string int8_bytes(std::int64_t v) {
  std::string out(8, '\0');
  auto u = static_cast<std::uint64_t>(v);
  for (int i = 7; i >= 0; --i) {
    out[static_cast<std::size_t>(i)] = static_cast<char>(u & 0xff);
    u >>= 8;
  }
  return out;
}

TEST(Gather, BinaryIntegersAreOrderedAndAddedByValue) {
  Gather g(combined({C::Sum}), 2, -1, 0, 1 << 20);
  g.add(0, description({kInt8}, 1).frame());
  g.add(0, row({int8_bytes(300)}).frame());
  g.add(1, description({kInt8}, 1).frame());
  g.add(1, row({int8_bytes(-44)}).frame());
  std::string out;
  g.finish(out);
  Answer a = read_answer(out);
  ASSERT_EQ(a.rows.size(), 1u) << a.message;
  EXPECT_EQ(a.rows[0][0], int8_bytes(256));

  Gather sorted(ordered({{0, true, false}}), 2, -1, 0, 1 << 20);
  sorted.add(0, description({kInt8}, 1).frame());
  sorted.add(0, row({int8_bytes(-5)}).frame());
  sorted.add(0, row({int8_bytes(70000)}).frame());
  sorted.add(1, description({kInt8}, 1).frame());
  sorted.add(1, row({int8_bytes(3)}).frame());
  out.clear();
  sorted.finish(out);
  a = read_answer(out);
  EXPECT_EQ(a.rows, (Rows{{int8_bytes(70000)}, {int8_bytes(3)}, {int8_bytes(-5)}}));
}

// A binary numeric: ndigits, weight, sign, dscale, base-10000 digits.
std::string numeric_bytes(std::int16_t weight, std::int16_t dscale,
                          std::vector<std::uint16_t> digits, bool negative = false) {
  std::string out;
  pr::append_i16(out, static_cast<std::int16_t>(digits.size()));
  pr::append_i16(out, weight);
  pr::append_u16(out, negative ? 0x4000 : 0);
  pr::append_i16(out, dscale);
  for (std::uint16_t d : digits)
    pr::append_u16(out, d);
  return out;
}

TEST(Gather, BinaryNumericsAreAddedExactlyAndCompared) {
  Gather g(combined({C::Sum, C::Max}), 2, -1, 0, 1 << 20);
  g.add(0, description({kNumeric, kNumeric}, 1).frame());
  g.add(0,
        row({numeric_bytes(0, 2, {12, 5000}), numeric_bytes(1, 0, {1})}).frame());  // 12.50, 10000
  g.add(1, description({kNumeric, kNumeric}, 1).frame());
  g.add(1, row({numeric_bytes(-1, 4, {5005}), numeric_bytes(0, 1, {9999, 9000})}).frame());
  std::string out;
  g.finish(out);
  const Answer a = read_answer(out);
  ASSERT_EQ(a.rows.size(), 1u) << a.message;
  EXPECT_EQ(a.rows[0][0], numeric_bytes(0, 4, {13, 5}));  // 13.0005
  EXPECT_EQ(a.rows[0][1], numeric_bytes(1, 0, {1}));      // 10000 > 9999.9
}

TEST(Gather, ColumnsOfSelectStarAreOrderedByName) {
  ScatterPlan p = ordered({{0, true, false, "c1"}});
  Answer a = gather(p, {kText, kInt8}, {{{"a", "1"}, {"b", "5"}}, {{"c", "3"}}});
  EXPECT_EQ(a.rows, (std::vector<std::vector<Value>>{{"b", "5"}, {"c", "3"}, {"a", "1"}}));
  a = gather(ordered({{0, false, false, "nope"}}), {kText}, {{{"a"}}, {{"b"}}});
  EXPECT_EQ(a.sqlstate, "0A000");
  EXPECT_NE(a.message.find("names no output column"), std::string::npos) << a.message;
}

TEST(Gather, WhatCannotBeCombinedIsAClearError) {
  Answer a = gather(ordered({}), {kText}, {{{"0123456789"}}, {{"0123456789"}}}, -1, 0, 60);
  EXPECT_EQ(a.sqlstate, "54000");
  EXPECT_EQ(a.message.rfind("pgvalve:", 0), 0u) << a.message;
  a = gather(combined({C::Sum}), {kInt8}, {{{"9223372036854775807"}}, {{"1"}}});
  EXPECT_EQ(a.sqlstate, "22003");
  a = gather(ordered({{0, false, false}}), {kInterval}, {{{"1 day"}}, {{"2 hours"}}});
  EXPECT_EQ(a.sqlstate, "0A000");

  // A binary interval cannot be compared; rows that are only concatenated pass in any format.
  Gather g(ordered({{0, false, false}}), 2, -1, 0, 1 << 20);
  g.add(0, description({kInterval}, 1).frame());
  std::string out;
  g.finish(out);
  EXPECT_EQ(read_answer(out).sqlstate, "0A000");
  Gather binary(ordered({}), 2, -1, 0, 1 << 20);
  EXPECT_TRUE(binary.add(0, description({kInt8}, 1).frame()));
  EXPECT_TRUE(binary.add(1, description({kInt8}, 1).frame()));
  EXPECT_TRUE(binary.add(1, row({std::string("\0\0\0\0\0\0\0\x07", 8)}).frame()));
  out.clear();
  binary.finish(out);
  EXPECT_EQ(read_answer(out).rows.size(), 1u);

  Gather mismatch(ordered({}), 2, -1, 0, 1 << 20);
  mismatch.add(0, description({kInt8}).frame());
  EXPECT_FALSE(mismatch.add(1, description({kText}).frame()));
}

// The client's RowDescription: (name, type, size, format) per column.
struct Described {
  std::string name;
  std::int32_t type;
  std::int16_t size;
  std::int16_t format;
  bool operator==(const Described&) const = default;
};

std::vector<Described> described(const std::string& out) {
  std::vector<Described> columns;
  auto r = pr::decode_frame(out, 1 << 30);
  EXPECT_EQ(r.frame.tag, 'T');
  pr::Cursor c(r.frame.body);
  const auto n = c.i16();
  for (std::int16_t i = 0; i < *n; ++i) {
    Described d;
    d.name = std::string(*c.cstr());
    c.i32();
    c.i16();
    d.type = *c.i32();
    d.size = *c.i16();
    c.i32();
    d.format = *c.i16();
    columns.push_back(d);
  }
  return columns;
}

ScatterPlan averaged(std::vector<ScatterPlan::Combine> ops,
                     std::vector<ScatterPlan::Average> averages,
                     std::vector<ScatterPlan::SortKey> keys = {}) {
  ScatterPlan p = combined(std::move(ops), std::move(keys));
  p.averages = std::move(averages);
  // As plan_scatter() numbers them: one extra column for an average, two for a variance.
  for (ScatterPlan::Average& a : p.averages) {
    if (a.function.empty()) a.function = "avg";
    a.extra = p.extra_columns;
    p.extra_columns += a.statistic == ScatterPlan::Statistic::Avg ? 1 : 2;
  }
  return p;
}

using S = ScatterPlan::Statistic;

TEST(Gather, VariancesCombineAsPostgresCombinesParallelPartsAndAreDescribedAsTheirFunction) {
  // SELECT stddev(x), var_pop(x) AS v: each shard answers sum, sum, count, var_pop, count,
  // var_pop. Shard values {1, 2, 3} and {10, 20}: PostgreSQL over all five answers stddev
  // 7.981227975693966 and var_pop 50.96.
  const ScatterPlan plan = averaged({C::Avg, C::Avg}, {{0, 0, false, S::StddevSamp, "stddev"},
                                                       {1, 1, true, S::VarPop, "var_pop"}});
  const std::vector<std::uint32_t> types = {kFloat8, kFloat8, kInt8, kFloat8, kInt8, kFloat8};
  Gather g(plan, 3, -1, 0, 1 << 20);
  const std::vector<Rows> shards = {
      {{"6", "6", "3", "0.6666666666666666", "3", "0.6666666666666666"}},
      {{"30", "30", "2", "25", "2", "25"}},
      {{std::nullopt, std::nullopt, "0", std::nullopt, "0", std::nullopt}}};
  for (int s = 0; s < 3; ++s) {
    g.add(s, description(types).frame());
    for (const auto& r : shards[static_cast<std::size_t>(s)])
      g.add(s, row(r).frame());
    g.add(s, complete("SELECT 1").frame());
  }
  std::string out;
  g.finish(out);
  const Answer a = read_answer(out);
  ASSERT_EQ(a.rows.size(), 1u) << a.message;
  ASSERT_EQ(a.rows[0].size(), 2u);
  EXPECT_NEAR(std::stod(*a.rows[0][0]), 7.981227975693966, 1e-12);
  EXPECT_NEAR(std::stod(*a.rows[0][1]), 50.96, 1e-12);
  EXPECT_EQ(described(out), (std::vector<Described>{{"stddev", 701, 8, 0}, {"c1", 701, 8, 0}}));
  // One value: a sample has no variance (NULL); the population's is 0.
  const Answer one = gather(plan, types,
                            {{{"4", "4", "1", "0", "1", "0"}},
                             {{std::nullopt, std::nullopt, "0", std::nullopt, "0", std::nullopt}}});
  EXPECT_EQ(one.rows, (Rows{{std::nullopt, "0"}}));
  // Of integers or numeric PostgreSQL computes in numeric: refused, with the cast to use.
  const ClientDescription integers = client_description(
      plan, description({kNumeric, kNumeric, kInt8, kNumeric, kInt8, kNumeric}).frame().body);
  EXPECT_NE(integers.refusal.find("cast the argument to double precision"), std::string::npos)
      << integers.refusal;
}

constexpr std::uint32_t kFloat4 = 700;

TEST(Gather, AveragesAreTheSumOverTheCountAsPostgresDividesThem) {
  // Each expected value is what PostgreSQL 15 answers for sum::numeric / count::numeric.
  const struct {
    const char* sum;
    const char* count;
    const char* average;
  } cases[] = {
      {"15", "4", "3.7500000000000000"},
      {"1", "3", "0.33333333333333333333"},
      {"2", "3", "0.66666666666666666667"},
      {"-2", "3", "-0.66666666666666666667"},
      {"0", "5", "0.00000000000000000000"},
      {"123456789012345678901234567890", "7", "17636684144620811271604938270"},
      {"0.000012345", "3", "0.000004115000000000000000"},
      {"99999.99", "1", "99999.990000000000"},
      {"12.30", "7", "1.7571428571428571"},
      {"1000000", "3", "333333.333333333333"},
      {"9999", "10000", "0.99990000000000000000"},
      {"10000", "10000", "1.00000000000000000000"},
      {"-0.001", "2", "-0.00050000000000000000"},
      {"1", "30000", "0.000033333333333333333333"},
      {"7", "9223372036854775807", "0.000000000000000000758941520739853104"},
      {"19999", "2", "9999.5000000000000000"},
      {"2", "20000", "0.000100000000000000000000"},
  };
  const ScatterPlan plan = averaged({C::Avg}, {{0, 0, false}});
  for (const auto& c : cases) {
    // One shard has every row, another none (its sum is NULL, its count 0).
    const Answer a = gather(plan, {kNumeric, kInt8}, {{{c.sum, c.count}}, {{std::nullopt, "0"}}});
    EXPECT_EQ(a.rows, (Rows{{c.average}})) << c.sum << " / " << c.count;
  }
  // Sums and counts of several shards add up first: (10 + 5) / (3 + 1).
  Answer a = gather(plan, {kInt8, kInt8}, {{{"10", "3"}}, {{"5", "1"}}});
  EXPECT_EQ(a.rows, (Rows{{"3.7500000000000000"}}));
  EXPECT_EQ(a.tag, "SELECT 1");
  // No value anywhere: NULL, as avg() answers.
  a = gather(plan, {kNumeric, kInt8}, {{{std::nullopt, "0"}}, {{std::nullopt, "0"}}});
  EXPECT_EQ(a.rows, (Rows{{std::nullopt}}));
}

TEST(Gather, AveragesOfDoublePrecisionDivideInDoublePrecision) {
  const ScatterPlan plan = averaged({C::Avg}, {{0, 0, false}});
  const struct {
    const char* a;
    const char* b;
    const char* average;
  } cases[] = {
      {"0.5", "1", "0.5"},                    // (0.5 + 1) / 3
      {"0.1", "0.2", "0.10000000000000002"},  // (0.1 + 0.2) / 3, PostgreSQL's shortest digits
      {"1e+15", "2e+15", "1e+15"},
      {"100000000000000", "200000000000000", "100000000000000"},
      {"0.00003", "0", "1e-05"},
      {"0.0003", "0", "9.999999999999999e-05"},
      {"0.0015", "0", "0.0005"},
      {"0.0012", "0", "0.00039999999999999996"},
      {"-Infinity", "1", "-Infinity"},
  };
  for (const auto& c : cases) {
    const Answer a = gather(plan, {kFloat8, kInt8}, {{{c.a, "1"}}, {{c.b, "2"}}});
    EXPECT_EQ(a.rows, (Rows{{c.average}})) << c.a << " + " << c.b;
  }
}

TEST(Gather, AveragesAreDescribedAsAvgAndTheirCountsDropped) {
  const ScatterPlan plan = averaged({C::Group, C::Avg, C::Avg}, {{1, 0, true}, {2, 1, false}});
  Gather g(plan, 1, -1, 0, 1 << 20);
  g.add(0, description({kText, kInt8, kFloat8, kInt8, kInt8}).frame());
  g.add(0, complete("SELECT 0").frame());
  std::string out;
  g.finish(out);
  // The aliased average keeps its name (c1 here); the other is "avg".
  EXPECT_EQ(described(out), (std::vector<Described>{{"c0", static_cast<std::int32_t>(kText), -1, 0},
                                                    {"c1", 1700, -1, 0},
                                                    {"avg", 701, 8, 0}}));
  const ClientDescription real =
      client_description(plan, description({kText, kFloat4, kFloat8, kInt8, kInt8}).frame().body);
  EXPECT_NE(real.refusal.find("double precision"), std::string::npos) << real.refusal;
  const ClientDescription interval =
      client_description(plan, description({kText, kInterval, kFloat8, kInt8, kInt8}).frame().body);
  EXPECT_NE(interval.refusal.find("does not combine"), std::string::npos) << interval.refusal;
}

TEST(Gather, AveragesAreGroupedAndSortedByTheirValue) {
  // SELECT note, avg(x) AS mean ... GROUP BY note ORDER BY mean DESC
  const ScatterPlan plan = averaged({C::Group, C::Avg}, {{1, 0, true}}, {{1, true, true}});
  const Answer a = gather(
      plan, {kText, kNumeric, kInt8},
      {{{"a", "10", "4"}, {"b", "3", "1"}, {"c", "-1", "1"}}, {{"a", "2", "2"}, {"c", "21", "1"}}});
  EXPECT_EQ(a.rows, (Rows{{"c", "10.0000000000000000"},
                          {"b", "3.0000000000000000"},
                          {"a", "2.0000000000000000"}}));
}

TEST(Gather, AnAverageOfRealIsRefused) {
  const Answer a =
      gather(averaged({C::Avg}, {{0, 0, false}}), {kFloat4, kInt8}, {{{"1.5", "1"}}, {{"2", "1"}}});
  EXPECT_EQ(a.sqlstate, "0A000");
  EXPECT_EQ(a.message.rfind("pgvalve: avg() of real", 0), 0u) << a.message;
  EXPECT_TRUE(a.rows.empty());
}

TEST(Gather, BinaryAveragesAreBinaryNumerics) {
  const ScatterPlan plan = averaged({C::Avg}, {{0, 0, false}});
  Gather g(plan, 2, -1, 0, 1 << 20);
  const std::string ten = pr::big_endian(10, 8), five = pr::big_endian(5, 8);
  const std::string three = pr::big_endian(3, 8), one = pr::big_endian(1, 8);
  for (int s = 0; s < 2; ++s) {
    g.add(s, description({kInt8, kInt8}, 1).frame());
    g.add(s, row({s == 0 ? ten : five, s == 0 ? three : one}).frame());
    g.add(s, complete("SELECT 1").frame());
  }
  std::string out;
  g.finish(out);
  EXPECT_EQ(described(out), (std::vector<Described>{{"avg", 1700, -1, 1}}));
  // 3.7500000000000000: digits 3 and 7500 (base 10000), weight 0, positive, scale 16.
  std::string want;
  for (int v : {2, 0, 0, 16, 3, 7500})
    pr::append_i16(want, static_cast<std::int16_t>(v));
  EXPECT_EQ(read_answer(out).rows, (Rows{{want}}));
}

TEST(Gather, SumsOfRealAddInSinglePrecision) {
  // sum(real) of 0.1 and 0.2 is 0.3 in single precision (0.30000000000000004 in double).
  const Answer a = gather(combined({C::Sum}), {kFloat4}, {{{"0.1"}}, {{"0.2"}}});
  EXPECT_EQ(a.rows, (Rows{{"0.3"}}));
  const Answer big = gather(combined({C::Sum}), {kFloat4}, {{{"600000"}}, {{"600000"}}});
  EXPECT_EQ(big.rows, (Rows{{"1.2e+06"}}));
}

TEST(Gather, BooleansAndBitsCombineAsBoolAndOrAndBitwiseOperators) {
  constexpr std::uint32_t kBool = 16, kInt4 = 23;
  const Answer a = gather(combined({C::Min, C::Max, C::BitAnd, C::BitOr, C::BitXor}),
                          {kBool, kBool, kInt4, kInt4, kInt8},
                          {{{"t", "f", "12", "12", "12"}},
                           {{std::nullopt, std::nullopt, std::nullopt, std::nullopt, std::nullopt}},
                           {{"f", "t", "10", "3", "-1"}}});
  EXPECT_EQ(a.rows, (Rows{{"f", "t", "8", "15", "-13"}}));
  // In binary: booleans as bytes, integers by value at their width.
  ScatterPlan plan = combined({C::Min, C::BitOr});
  Gather g(plan, 2, -1, 0, 1 << 20);
  for (int s = 0; s < 2; ++s) {
    g.add(s, description({kBool, kInt4}, 1).frame());
    g.add(s, row({std::string(1, static_cast<char>(s == 0)), pr::big_endian(s == 0 ? 5 : 8, 4)})
                 .frame());
    g.add(s, complete("SELECT 1").frame());
  }
  std::string out;
  g.finish(out);
  EXPECT_EQ(read_answer(out).rows, (Rows{{std::string(1, '\0'), pr::big_endian(13, 4)}}));
  // Bit strings (bit, varbit) are not integers.
  const Answer bits = gather(combined({C::BitAnd}), {1560}, {{{"101"}}, {{"110"}}});
  EXPECT_EQ(bits.sqlstate, "0A000");
}

// ---- Streamed reads: rows that need no combining go out as they come ------------------------

constexpr std::uint32_t kTimestamptz = 1184;

// A streamed gather over two shards, fed message by message; `out` is what the client got.
struct Stream {
  Gather g;
  std::string out;
  Stream(const ScatterPlan& plan, std::int64_t limit = -1, std::int64_t offset = 0,
         std::size_t max_bytes = 1 << 20, int shards = 2,
         const TextOrder* text = &TextOrder::bytes())
      : g(plan, shards, limit, offset, max_bytes, true, slot(text)) {}
  void add(int shard, const Message& m) {
    g.add(shard, m.frame(), &out);
    if (g.ready_to_stream()) g.start_stream(out, true);
  }
  // What the client got since the last call.
  Answer take() {
    Answer a = read_answer(out);
    out.clear();
    return a;
  }
  // Every shard has answered: the rest of the answer.
  Answer finished() {
    g.finish(out, false);
    return take();
  }
};

TEST(Gather, ConcatenatedRowsGoOutAsTheyComeOnceEveryShardDescribedThem) {
  Stream st(ordered({}));
  st.add(0, description({kInt8}));
  st.add(0, row({"1"}));
  EXPECT_EQ(st.out, "") << "another shard may yet describe other columns";
  st.add(1, description({kInt8}));
  EXPECT_EQ(st.take().rows, (Rows{{"1"}}));
  st.add(1, row({"2"}));
  EXPECT_EQ(st.take().rows, (Rows{{"2"}})) << "passed on at once";
  st.add(0, row({"3"}));
  st.add(0, complete("SELECT 2"));
  st.add(1, complete("SELECT 1"));
  EXPECT_EQ(st.take().rows, (Rows{{"3"}}));
  const Answer end = st.finished();
  EXPECT_TRUE(end.rows.empty());
  EXPECT_EQ(end.tag, "SELECT 3");
  EXPECT_EQ(st.g.rows_answered(), 3u);
}

TEST(Gather, AStreamedMergeSendsARowOnceEveryShardStillAnsweringHasOne) {
  Stream st(ordered({{0, false, false}}));
  st.add(0, description({kInt8}));
  st.add(1, description({kInt8}));
  st.add(0, row({"1"}));
  st.add(0, row({"4"}));
  EXPECT_TRUE(st.take().rows.empty()) << "shard 1's first row may be smaller";
  st.add(1, row({"2"}));
  EXPECT_EQ(st.take().rows, (Rows{{"1"}, {"2"}}));
  st.add(1, row({"3"}));
  st.add(1, row({"6"}));
  EXPECT_EQ(st.take().rows, (Rows{{"3"}, {"4"}}));
  st.add(0, row({"5"}));
  st.add(0, complete("SELECT 3"));
  EXPECT_EQ(st.take().rows, (Rows{{"5"}, {"6"}})) << "shard 0 has no more rows";
  st.add(1, complete("SELECT 3"));
  EXPECT_EQ(st.finished().tag, "SELECT 6");
}

TEST(Gather, AShardWhoseRowsWaitForTheMergeIsNotReadUntilTheyGo) {
  // 64 KiB of rows per shard may wait; a shard past that is not read (waits()).
  Stream st(ordered({{0, false, false}}), -1, 0, 256 << 10);
  st.add(0, description({kInt8, kText}));
  st.add(1, description({kInt8, kText}));
  const std::string payload(1000, 'x');
  int sent = 0;
  while (!st.g.waits(0))
    st.add(0, row({std::to_string(2 * ++sent), payload}));
  EXPECT_GE(sent, 60);
  EXPECT_LE(sent, 70);
  EXPECT_FALSE(st.g.waits(1));
  EXPECT_TRUE(st.take().rows.empty());
  st.add(1, row({"1", "y"}));
  st.add(1, row({std::to_string(2 * sent + 1), "y"}));
  EXPECT_EQ(st.take().rows.size(), static_cast<std::size_t>(sent) + 1);
  EXPECT_FALSE(st.g.waits(0)) << "the merge took them";
  // A streamed read holds what waits, not what went: many times the bound goes through.
  for (int i = 0; i < 1000; ++i) {
    st.add(0, row({std::to_string(10000 + 2 * i), payload}));
    st.add(1, row({std::to_string(10001 + 2 * i), payload}));
  }
  st.add(0, complete("SELECT n"));
  st.add(1, complete("SELECT n"));
  const Answer a = st.finished();
  EXPECT_EQ(a.sqlstate, "");
  EXPECT_EQ(a.rows.size(), 2001u);
  EXPECT_EQ(a.rows.back()[0], "11999");
}

// A portal the client fetches in parts (PgJDBC's fetch size): each Execute gets its rows, then
// PortalSuspended, and the rows after them wait for the next Execute instead of being dropped.
TEST(Gather, AKeptPortalGivesEachExecuteItsRowsAndKeepsTheRest) {
  Stream st(ordered({}));
  st.g.keep_portal(2);
  st.add(0, description({kInt8}));
  st.add(1, description({kInt8}));
  st.add(0, row({"1"}));
  st.add(1, row({"2"}));
  EXPECT_EQ(st.take().rows, (Rows{{"1"}, {"2"}}));
  EXPECT_TRUE(st.g.piece_full());
  st.add(0, row({"3"}));
  st.add(1, row({"4"}));
  st.add(0, row({"5"}));
  EXPECT_EQ(st.out, "") << "past the Execute's rows, nothing goes out";
  st.g.fetch(2, st.out);
  EXPECT_EQ(st.take().rows, (Rows{{"3"}, {"5"}})) << "a shard's rows in their order";
  EXPECT_TRUE(st.g.piece_full());
  st.add(0, complete("SELECT 3"));
  st.add(1, complete("SELECT 2"));
  st.g.fetch(5, st.out);
  const Answer a = st.finished();
  EXPECT_EQ(a.rows, (Rows{{"4"}}));
  EXPECT_EQ(a.tag, "SELECT 1") << "the last Execute's own rows, as a server counts them";
  EXPECT_EQ(st.g.rows_answered(), 5u);
}

TEST(Gather, AKeptPortalMergesInOrderAcrossExecutes) {
  Stream st(ordered({{0, false, false}}));
  st.g.keep_portal(3);
  st.add(0, description({kInt8}));
  st.add(1, description({kInt8}));
  for (const char* v : {"1", "4", "5", "8"})
    st.add(0, row({v}));
  for (const char* v : {"2", "3", "6"})
    st.add(1, row({v}));
  EXPECT_EQ(st.take().rows, (Rows{{"1"}, {"2"}, {"3"}}));
  st.g.fetch(3, st.out);
  EXPECT_EQ(st.take().rows, (Rows{{"4"}, {"5"}, {"6"}}));
  st.g.fetch(3, st.out);
  EXPECT_EQ(st.take().rows, Rows{}) << "shard 1's next row may come before 8";
  st.add(1, row({"7"}));
  st.add(1, complete("SELECT 4"));
  st.add(0, complete("SELECT 4"));
  const Answer a = st.finished();
  EXPECT_EQ(a.rows, (Rows{{"7"}, {"8"}}));
  EXPECT_EQ(a.tag, "SELECT 2");
}

// As a server's portal: an Execute that got exactly its rows is suspended even when none are
// left; the next gets none, and the tag.
TEST(Gather, AKeptPortalEndsWithAnEmptyExecuteAfterExactlyItsRows) {
  Stream st(ordered({}));
  st.g.keep_portal(2);
  st.add(0, description({kInt8}));
  st.add(1, description({kInt8}));
  st.add(0, row({"1"}));
  st.add(1, row({"2"}));
  st.add(0, complete("SELECT 1"));
  st.add(1, complete("SELECT 1"));
  st.g.finish(st.out, false);
  EXPECT_TRUE(st.out.ends_with(std::string("s\0\0\0\4", 5)));
  EXPECT_EQ(st.take().rows, (Rows{{"1"}, {"2"}}));
  st.g.fetch(2, st.out);
  const Answer a = st.finished();
  EXPECT_EQ(a.rows, Rows{});
  EXPECT_EQ(a.tag, "SELECT 0");
}

// Rows held until every shard answered (aggregates) go out an Execute's worth at a time.
TEST(Gather, AKeptPortalOfHeldRowsSendsThemInParts) {
  Gather g(combined({C::Group, C::Sum}, {{0, false, false}}), 2, -1, 0, 1 << 20, true,
           slot(&TextOrder::bytes()));
  g.keep_portal(2);
  const std::vector<Rows> shards = {{{"1", "10"}, {"3", "30"}}, {{"2", "20"}, {"3", "3"}}};
  for (std::size_t s = 0; s < shards.size(); ++s) {
    g.add(static_cast<int>(s), description({kInt8, kInt8}).frame());
    for (const auto& r : shards[s])
      g.add(static_cast<int>(s), row(r).frame());
    g.add(static_cast<int>(s), complete("SELECT 2").frame());
  }
  std::string out;
  g.finish(out, false);
  EXPECT_EQ(read_answer(out).rows, (Rows{{"1", "10"}, {"2", "20"}}));
  EXPECT_TRUE(out.ends_with(std::string("s\0\0\0\4", 5)));
  out.clear();
  g.fetch(0, out);
  EXPECT_EQ(out, "") << "held rows go at finish()";
  g.finish(out, false);
  const Answer a = read_answer(out);
  EXPECT_EQ(a.rows, (Rows{{"3", "33"}})) << "0: all the rest";
  EXPECT_EQ(a.tag, "SELECT 1");
  EXPECT_EQ(g.rows_answered(), 3u);
}

TEST(Gather, LimitAndOffsetCutAStreamedRead) {
  Stream st(ordered({{0, true, false}}), 2, 1);  // ORDER BY 1 DESC LIMIT 2 OFFSET 1
  st.add(0, description({kNumeric}));
  st.add(1, description({kNumeric}));
  for (const char* v : {"9.5", "3", "-1"})
    st.add(0, row({v}));
  for (const char* v : {"10", "4.25", "0"})
    st.add(1, row({v}));
  st.add(0, complete("SELECT 3"));
  st.add(1, complete("SELECT 3"));
  const Answer a = st.finished();
  EXPECT_EQ(a.rows, (Rows{{"9.5"}, {"4.25"}}));
  EXPECT_EQ(a.tag, "SELECT 2");
}

TEST(Gather, AnErrorAfterRowsWentOutEndsTheAnswer) {
  Stream st(ordered({}));
  st.add(0, description({kInt8}));
  st.add(1, description({kInt8}));
  st.add(0, row({"1"}));
  EXPECT_EQ(st.take().rows, (Rows{{"1"}}));
  st.add(1, error("57014", "canceling statement due to statement timeout"));
  EXPECT_FALSE(st.g.waits(0));
  st.add(0, row({"2"}));
  const Answer a = st.finished();
  EXPECT_TRUE(a.rows.empty()) << "nothing after the error";
  EXPECT_EQ(a.sqlstate, "57014");
  EXPECT_EQ(a.tag, "");
}

TEST(Gather, OrdersThatCombineAreHeldWholeAndOthersStream) {
  // Text sorts in the database's collation: the shards' sorted rows merge as they come.
  Stream text(ordered({{0, false, false}}));
  text.add(0, description({kText}));
  text.add(1, description({kText}));
  EXPECT_TRUE(text.g.streaming());
  // Time with a time zone sorts by its ISO text: streamed.
  Stream times(ordered({{0, false, false}}));
  times.add(0, description({kTimestamptz}));
  times.add(1, description({kTimestamptz}));
  EXPECT_TRUE(times.g.streaming());
  // Sums: held until every shard answered.
  Stream sums(combined({C::Sum}));
  sums.add(0, description({kInt8}));
  sums.add(1, description({kInt8}));
  EXPECT_FALSE(sums.g.streaming());
  // A write's answer (RETURNING rows) waits for every part to prepare.
  Gather write(ordered({}), 2, -1, 0, 1 << 20, false);
  std::string out;
  write.add(0, description({kInt8}).frame(), &out);
  write.add(1, description({kInt8}).frame(), &out);
  EXPECT_FALSE(write.ready_to_stream());
}

// A write's answer: one tag with every shard's rows added up, and every shard's RETURNING rows.
Answer write_answer(const ScatterPlan& plan, const std::vector<Rows>& returned,
                    const std::vector<std::string>& tags, std::uint64_t* rows_answered = nullptr) {
  Gather g(plan, static_cast<int>(tags.size()), -1, 0, 1 << 20, false);
  for (std::size_t s = 0; s < tags.size(); ++s) {
    const int shard = static_cast<int>(s);
    if (!returned.empty()) g.add(shard, description({kInt8, kText}).frame());
    for (const auto& r : returned.empty() ? Rows{} : returned[s])
      g.add(shard, row(r).frame());
    g.add(shard, complete(tags[s]).frame());
  }
  std::string out;
  g.finish(out);
  if (rows_answered != nullptr) *rows_answered = g.rows_answered();
  return read_answer(out);
}

TEST(Gather, AWriteOverSeveralShardsAddsTheirCountsAndRows) {
  std::uint64_t rows = 0;
  Answer a = write_answer(ordered({}), {}, {"UPDATE 2", "UPDATE 3"}, &rows);
  EXPECT_EQ(a.tag, "UPDATE 5");
  EXPECT_EQ(rows, 5u);
  a = write_answer(ordered({}), {{{"1", "a"}}, {{"2", "b"}}}, {"INSERT 0 1", "INSERT 0 1"});
  EXPECT_EQ(a.rows, (Rows{{"1", "a"}, {"2", "b"}}));
  EXPECT_EQ(a.tag, "INSERT 0 2");
  EXPECT_EQ(write_answer(ordered({}), {}, {"CREATE TABLE", "CREATE TABLE"}).tag, "CREATE TABLE");
  // CREATE TABLE AS describes no rows; its tag counts them.
  EXPECT_EQ(write_answer(ordered({}), {}, {"SELECT 2", "SELECT 3"}).tag, "SELECT 5");
}

// A write to reference tables changes the same rows on every shard: the client gets one
// shard's answer, as one database would give it.
TEST(Gather, AWriteOfTheSameRowsOnEveryShardAnswersAsOneShard) {
  ScatterPlan same = ordered({});
  same.same_on_every_shard = true;
  std::uint64_t rows = 0;
  Answer a = write_answer(same, {}, {"UPDATE 1", "UPDATE 1"}, &rows);
  EXPECT_EQ(a.tag, "UPDATE 1");
  EXPECT_EQ(rows, 1u);
  a = write_answer(same, {{{"1", "sensor"}, {"2", "gauge"}}, {{"1", "sensor"}, {"2", "gauge"}}},
                   {"DELETE 2", "DELETE 2"}, &rows);
  EXPECT_EQ(a.rows, (Rows{{"1", "sensor"}, {"2", "gauge"}}));
  EXPECT_EQ(a.tag, "DELETE 2");
  EXPECT_EQ(rows, 2u);
  EXPECT_EQ(write_answer(same, {}, {"COPY 3", "COPY 3"}).tag, "COPY 3");
  EXPECT_EQ(write_answer(same, {}, {"SELECT 4", "SELECT 4"}).tag, "SELECT 4");
  EXPECT_EQ(write_answer(same, {}, {"ALTER TABLE", "ALTER TABLE"}).tag, "ALTER TABLE");
  // An error of any shard is still the answer.
  Gather g(same, 2, -1, 0, 1 << 20, false);
  g.add(0, complete("UPDATE 1").frame());
  g.add(1, error("23514", "check").frame());
  std::string out;
  g.finish(out);
  EXPECT_EQ(read_answer(out).sqlstate, "23514");
}

// tests/run builds en_US.UTF-8 on the test host; without it the tests that need it say so.
const TextOrder* english() {
  const TextOrder* order = TextOrder::of('c', "en_US.UTF-8");
  return order->usable() ? order : nullptr;
}

TEST(Gather, TextMergesInTheDatabasesCollation) {
  const TextOrder* en = english();
  if (en == nullptr) GTEST_SKIP() << "en_US.UTF-8 is not installed on this host";
  // Each shard sorted its rows in en_US order; byte order would put the capitals first.
  Stream st(ordered({{0, false, false}}), -1, 0, 1 << 20, 2, en);
  st.add(0, description({kText}));
  st.add(1, description({kText}));
  ASSERT_TRUE(st.g.streaming());
  for (const char* v : {"apple", "banana", "zebra"})
    st.add(0, row({v}));
  for (const char* v : {"Apple", "Banana", "Zebra"})
    st.add(1, row({v}));
  st.add(0, complete("SELECT 3"));
  st.add(1, complete("SELECT 3"));
  EXPECT_EQ(st.finished().rows,
            (Rows{{"apple"}, {"Apple"}, {"banana"}, {"Banana"}, {"zebra"}, {"Zebra"}}));
  // min() and max() of text combine in the same order.
  const Answer a = gather(combined({C::Min, C::Max}), {kText, kText},
                          {{{"apple", "Zebra"}}, {{"Banana", "zebra"}}}, -1, 0, 1 << 20, en);
  EXPECT_EQ(a.rows, (Rows{{"apple", "Zebra"}}));
}

TEST(Gather, ACollationLearnedAfterTheReadStartedIsFollowed) {
  TextOrderSlot learned;  // empty when the read starts
  Gather g(ordered({{0, false, false}}), 2, -1, 0, 1 << 20, true, &learned);
  learned.set(&TextOrder::bytes());  // the health check answers before the shards do
  std::string out;
  for (int s = 0; s < 2; ++s)
    g.add(s, description({kText}).frame(), &out);
  EXPECT_FALSE(g.failed());
  EXPECT_TRUE(g.ready_to_stream());
}

TEST(Gather, CollateCOrdersByTheBytesWhateverTheDatabasesCollation) {
  ScatterPlan plan = ordered({{0, false, false}});
  plan.order[0].bytes = true;
  const Answer a = gather(plan, {kText}, {{{"B"}, {"a"}}, {{"A"}, {"b"}}}, -1, 0, 1 << 20, nullptr);
  EXPECT_EQ(a.rows, (Rows{{"A"}, {"B"}, {"a"}, {"b"}}));
}

TEST(Gather, MinAndMaxOfTextCollateCCombineByTheBytes) {
  ScatterPlan plan = combined({C::Min, C::Max});
  plan.bytes_combined = {0, 1};
  const Answer a = gather(plan, {kText, kText}, {{{"a", "Z"}}, {{"B", "b"}}}, -1, 0, 1 << 20,
                          TextOrder::of('c', "xx_NOWHERE.UTF-8"));
  EXPECT_EQ(a.sqlstate, "") << a.message;
  EXPECT_EQ(a.rows, (Rows{{"B", "b"}}));
}

TEST(Gather, CharComparesWithoutItsTrailingSpaces) {
  constexpr std::uint32_t kBpchar = 1042;
  // char(3): PostgreSQL compares 'a  ' as 'a' (bpcharcmp drops trailing spaces), which sorts
  // before 'a\t'; with its spaces, the tab (0x09) would sort before the space (0x20).
  const Answer a = gather(ordered({{0, false, false}}), {kBpchar}, {{{"a\t "}}, {{"a  "}}});
  EXPECT_EQ(a.rows, (Rows{{"a  "}, {"a\t "}}));
}

TEST(Gather, TextComparisonsWaitForAKnownCollationThatPgvalveCanFollow) {
  // Not read yet: the statement is refused, saying so.
  Answer a =
      gather(ordered({{0, false, false}}), {kText}, {{{"a"}}, {{"b"}}}, -1, 0, 1 << 20, nullptr);
  EXPECT_EQ(a.sqlstate, "0A000");
  EXPECT_NE(a.message.find("has not read yet"), std::string::npos) << a.message;
  a = gather(combined({C::Max}), {kText}, {{{"a"}}, {{"b"}}}, -1, 0, 1 << 20, nullptr);
  EXPECT_EQ(a.sqlstate, "0A000");
  EXPECT_NE(a.message.find("min() and max() of text"), std::string::npos) << a.message;
  // A locale missing on pgvalve's host: refused with the reason.
  a = gather(ordered({{0, true, true}}), {kText}, {{{"a"}}, {{"b"}}}, -1, 0, 1 << 20,
             TextOrder::of('c', "xx_NOWHERE.UTF-8"));
  EXPECT_EQ(a.sqlstate, "0A000");
  EXPECT_NE(a.message.find("\"xx_NOWHERE.UTF-8\" is not installed"), std::string::npos)
      << a.message;
  EXPECT_NE(a.message.find("COLLATE \"C\""), std::string::npos) << a.message;
  // Numbers, and text only concatenated or counted, need no collation.
  a = gather(ordered({{0, false, false}}), {kInt8, kText}, {{{"2", "x"}}, {{"1", "y"}}}, -1, 0,
             1 << 20, nullptr);
  EXPECT_EQ(a.rows, (Rows{{"1", "y"}, {"2", "x"}}));
}

TEST(Gather, TimestampsWithTimeZonesMergeByTheInstant) {
  // Berlin's autumn change repeats 02:00-03:00: 02:30+02 (00:30 UTC) comes before 02:10+01
  // (01:10 UTC), though its text sorts after.
  Answer a = gather(
      ordered({{0, false, false}}), {kTimestamptz},
      {{{"2026-10-25 02:30:00+02"}, {"2026-10-25 02:40:00+01"}}, {{"2026-10-25 02:10:00+01"}}});
  EXPECT_EQ(
      a.rows,
      (Rows{{"2026-10-25 02:30:00+02"}, {"2026-10-25 02:10:00+01"}, {"2026-10-25 02:40:00+01"}}));
  // Offsets with minutes, fractions, years BC and the infinities, held and sorted.
  ScatterPlan plan = combined({C::Group}, {{0, false, false}});
  a = gather(plan, {kTimestamptz},
             {{{"infinity"}, {"2000-01-01 05:29:59.5+05:30"}, {"0044-03-15 12:00:00+00 BC"}},
              {{"2000-01-01 00:00:00+00"}, {"-infinity"}, {"0010-01-01 00:00:00+00 BC"}}});
  EXPECT_EQ(a.rows, (Rows{{"-infinity"},
                          {"0044-03-15 12:00:00+00 BC"},
                          {"0010-01-01 00:00:00+00 BC"},
                          {"2000-01-01 05:29:59.5+05:30"},
                          {"2000-01-01 00:00:00+00"},
                          {"infinity"}}));
  // PostgreSQL's last year, where microseconds since 1970 would not fit in 64 bits.
  a = gather(ordered({{0, true, true}}), {kTimestamptz},
             {{{"294276-12-31 23:59:59+00"}}, {{"294276-12-31 23:59:59.999999+00"}}});
  EXPECT_EQ(a.rows, (Rows{{"294276-12-31 23:59:59.999999+00"}, {"294276-12-31 23:59:59+00"}}));
}

TEST(Gather, AShardSortedOtherwiseThanPgvalveComparesIsAnErrorNotAWrongOrder) {
  // Rows of a column declared COLLATE "C" in a database whose collation puts "a" first: the
  // shard sent "B" before "a", which the merge would misplace.
  const TextOrder* en = english();
  if (en == nullptr) GTEST_SKIP() << "en_US.UTF-8 is not installed on this host";
  Stream st(ordered({{0, false, false}}), -1, 0, 1 << 20, 2, en);
  st.add(0, description({kText}));
  st.add(1, description({kText}));
  st.add(0, row({"B"}));
  st.add(0, row({"a"}));
  EXPECT_TRUE(st.g.failed());
  st.add(1, row({"c"}));
  const Answer a = st.finished();
  EXPECT_EQ(a.sqlstate, "0A000");
  EXPECT_NE(a.message.find("does not reproduce"), std::string::npos) << a.message;
  // Equal keys in a row are in order.
  Stream ties(ordered({{0, false, false}}));
  ties.add(0, description({kInt8, kText}));
  ties.add(1, description({kInt8, kText}));
  for (const char* v : {"x", "y"})
    ties.add(0, row({"1", v}));
  ties.add(0, complete("SELECT 2"));
  ties.add(1, complete("SELECT 0"));
  ties.g.finish(ties.out, false);
  EXPECT_EQ(ties.take().rows, (Rows{{"1", "x"}, {"1", "y"}}));
}

TEST(Gather, ShardsThatDoNotAllDescribeRowsAreAnError) {
  Stream st(ordered({}));
  st.add(0, description({kInt8}));
  st.add(0, row({"1"}));
  st.add(0, complete("SELECT 1"));
  st.add(1, complete("SELECT 0"));
  st.g.finish(st.out);
  EXPECT_EQ(st.take().sqlstate, "0A000");
}

constexpr std::uint32_t kBpchar = 1042, kDate = 1082, kTimestamp = 1114;

TEST(Gather, GroupsAndDistinctRowsAreEqualByValueNotByText) {
  // SELECT amount, count(*) ... GROUP BY amount: numeric 1.5 on one shard, 1.50 on the other.
  Answer a = gather(combined({C::Group, C::Sum}), {kNumeric, kInt8},
                    {{{"1.5", "30"}}, {{"1.50", "30"}, {"-0.0", "1"}}, {{"0", "2"}}});
  ASSERT_EQ(a.rows.size(), 2u) << a.message;
  EXPECT_EQ(a.rows[0], (std::vector<Value>{"1.5", "60"}));
  EXPECT_EQ(a.rows[1], (std::vector<Value>{"-0.0", "3"}));
  ScatterPlan distinct = ordered({});
  distinct.distinct = true;
  a = gather(distinct, {kNumeric}, {{{"1.5"}}, {{"1.50"}}, {{"2"}}, {{"2.000"}}});
  EXPECT_EQ(a.rows, (Rows{{"1.5"}, {"2"}}));
  // float 0 and -0 are equal; char(n) without its trailing spaces.
  a = gather(distinct, {kFloat8}, {{{"0"}}, {{"-0"}}, {{"NaN"}}, {{"NaN"}}});
  EXPECT_EQ(a.rows, (Rows{{"0"}, {"NaN"}}));
  a = gather(distinct, {kBpchar}, {{{"ab"}}, {{"ab  "}}});
  EXPECT_EQ(a.rows.size(), 1u);
  // A timestamptz is its instant, whatever offset its text shows.
  a = gather(combined({C::Group, C::Sum}), {kTimestamptz, kInt8},
             {{{"2024-01-01 10:00:00+00", "1"}}, {{"2024-01-01 11:00:00+01", "2"}}});
  EXPECT_EQ(a.rows, (Rows{{"2024-01-01 10:00:00+00", "3"}}));
  // Binary numerics: 1.5 (dscale 1) and 1.50 (dscale 2).
  const std::string one_five("\0\x02\0\0\0\0\0\x01\0\x01\x13\x88", 12);
  const std::string one_fifty("\0\x02\0\0\0\0\0\x02\0\x01\x13\x88", 12);
  Gather g(distinct, 2, -1, 0, 1 << 20);
  for (int s = 0; s < 2; ++s) {
    g.add(s, description({kNumeric}, 1).frame());
    g.add(s, row({s == 0 ? one_five : one_fifty}).frame());
    g.add(s, complete("SELECT 1").frame());
  }
  std::string out;
  g.finish(out);
  EXPECT_EQ(read_answer(out).rows.size(), 1u);
}

TEST(Gather, GroupsAndDistinctRowsOfValuesWhoseTextIsNotOnePerValueAreRefused) {
  ScatterPlan distinct = ordered({});
  distinct.distinct = true;
  auto refused = [](const Answer& a) {
    EXPECT_EQ(a.sqlstate, "0A000");
    EXPECT_EQ(a.message.rfind("pgvalve:", 0), 0u) << a.message;
    EXPECT_NE(a.message.find("name one device_id"), std::string::npos) << a.message;
  };
  // interval '1 day' equals '24:00:00'.
  refused(gather(combined({C::Group, C::Sum}), {kInterval, kInt8},
                 {{{"1 day", "1"}}, {{"24:00:00", "1"}}}));
  refused(gather(distinct, {kInterval}, {{{"1 day"}}, {{"24:00:00"}}}));
  // Dates and timestamps outside DateStyle ISO.
  refused(gather(distinct, {kTimestamptz}, {{{"01/01/2024 10:00:00 CET"}}, {{"x"}}}));
  refused(gather(distinct, {kDate}, {{{"25/12/2023"}}, {{"05/01/2024"}}}));
  refused(gather(distinct, {kTimestamp}, {{{"Mon Dec 25 10:00:00 2023"}}, {{"y"}}}));
  // In DateStyle ISO they group by their text.
  Answer a =
      gather(distinct, {kDate, kTimestamp},
             {{{"2024-01-05", "2024-01-05 10:00:00"}}, {{"2024-01-05", "2024-01-05 10:00:00"}}});
  EXPECT_EQ(a.rows.size(), 1u) << a.message;
  // Over one shard, or rows the same on every shard, the rows are already one per value.
  a = gather(distinct, {kInterval}, {{{"1 day"}, {"24:00:00"}}});
  EXPECT_EQ(a.rows.size(), 2u) << a.message;
  ScatterPlan same = distinct;
  same.same_on_every_shard = true;
  a = gather(same, {kInterval}, {{{"1 day"}}, {{"1 day"}}});
  EXPECT_EQ(a.rows.size(), 1u) << a.message;
}

TEST(Gather, MinAndMaxOfDatesOutsideDateStyleIsoAreRefused) {
  // SET DateStyle = 'SQL, DMY'; SELECT min(d), max(d): "25/12/2023" is before "05/01/2024".
  Answer a = gather(combined({C::Min, C::Max}), {kDate, kDate},
                    {{{"05/01/2024", "20/01/2024"}}, {{"25/12/2023", "13/09/2024"}}});
  EXPECT_EQ(a.sqlstate, "0A000");
  EXPECT_EQ(a.message.rfind("pgvalve: min() and max()", 0), 0u) << a.message;
  EXPECT_NE(a.message.find("DateStyle"), std::string::npos) << a.message;
  a = gather(combined({C::Min}), {kTimestamp},
             {{{"25/12/2023 10:00:00"}}, {{"05/01/2024 10:00:00"}}});
  EXPECT_EQ(a.sqlstate, "0A000");
  a = gather(combined({C::Max}), {kTimestamptz},
             {{{"25/12/2023 10:00:00 CET"}}, {{"05/01/2024 10:00:00 CET"}}});
  EXPECT_EQ(a.sqlstate, "0A000");
  a = gather(combined({C::Min}), {kDate}, {{{"0002-01-01 BC"}}, {{"0001-01-01 BC"}}});
  EXPECT_EQ(a.sqlstate, "0A000");
  // In DateStyle ISO they combine; a value from one shard alone needs no comparison.
  a = gather(combined({C::Min, C::Max}), {kDate, kTimestamp},
             {{{"2024-01-05", "2024-01-20 00:00:00"}}, {{"2023-12-25", "2024-09-13 10:00:00.5"}}});
  EXPECT_EQ(a.rows, (Rows{{"2023-12-25", "2024-09-13 10:00:00.5"}})) << a.message;
  a = gather(combined({C::Min}), {kDate}, {{{"25/12/2023"}}, {{std::nullopt}}});
  EXPECT_EQ(a.rows, (Rows{{"25/12/2023"}})) << a.message;
}

TEST(Gather, HeldRowsOrderedByDatesOutsideDateStyleIsoAreRefused) {
  // SELECT d, count(*) ... GROUP BY d ORDER BY d: held, not merged, so not order-checked.
  const Answer a = gather(combined({C::Group, C::Sum}, {{0, false, false}}), {kDate, kInt8},
                          {{{"2024-01-05", "1"}}, {{"2023-12-25", "1"}}});
  EXPECT_EQ(a.rows, (Rows{{"2023-12-25", "1"}, {"2024-01-05", "1"}})) << a.message;
  // SELECT note, min(d) ... GROUP BY note ORDER BY 2: each min from one shard, then sorted.
  const Answer b = gather(combined({C::Group, C::Min}, {{1, false, false}}), {kText, kDate},
                          {{{"a", "05/01/2024"}}, {{"b", "25/12/2023"}}});
  EXPECT_EQ(b.sqlstate, "0A000") << b.message;
}

}  // namespace
}  // namespace pgvalve::routing
