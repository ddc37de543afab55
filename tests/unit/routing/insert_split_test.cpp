#include "routing/insert_split.h"

#include <gtest/gtest.h>

#include "routing/shard_map.h"

namespace pgvalve::routing {
namespace {

ShardingPolicy two_shards() {
  ShardingPolicy p;
  p.tables = {"telemetry"};
  p.map = ShardMap(ShardHash::Md5Mod, KeyType::Bigint, 2, {});
  p.shard_names = {"s0", "s1"};
  return p;
}

class Params final : public ParamSource {
 public:
  explicit Params(std::vector<std::string> values) : values_(std::move(values)) {}
  std::optional<BoundParam> param(int number) const override {
    if (number < 1 || static_cast<std::size_t>(number) > values_.size()) return std::nullopt;
    return BoundParam{std::string_view(values_[static_cast<std::size_t>(number - 1)])};
  }

 private:
  std::vector<std::string> values_;
};

// md5("1") % 2 == 1, md5("2") % 2 == 0, md5("3") % 2 == 1 (the app-side scheme).
InsertSplit split(std::string_view sql, const ParamSource* params = nullptr) {
  const ShardingPolicy policy = two_shards();
  return split_insert(sql, plan_shards(sql, policy), policy, params);
}

TEST(InsertSplit, EachShardGetsOnlyItsOwnRows) {
  const InsertSplit s =
      split("INSERT INTO telemetry (device_id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')");
  ASSERT_TRUE(s.ok) << s.refusal;
  ASSERT_EQ(s.parts.size(), 2u);
  EXPECT_EQ(s.parts[0].shard, 0);
  EXPECT_EQ(s.parts[0].sql, "INSERT INTO telemetry (device_id, v) VALUES (2, 'b')");
  EXPECT_EQ(s.parts[1].shard, 1);
  EXPECT_EQ(s.parts[1].sql, "INSERT INTO telemetry (device_id, v) VALUES (1, 'a'), (3, 'c')");
  EXPECT_TRUE(s.parts[0].params.empty());
}

TEST(InsertSplit, ParametersAreNumberedAgainPerShard) {
  const Params p({"1", "x", "2", "y", "3", "z", "9"});
  const InsertSplit s = split(
      "INSERT INTO telemetry (device_id, v) VALUES ($1, $2), ($3, $4), ($5, $6) "
      "ON CONFLICT DO NOTHING RETURNING device_id, $7::int",
      &p);
  ASSERT_TRUE(s.ok) << s.refusal;
  ASSERT_EQ(s.parts.size(), 2u);
  EXPECT_EQ(s.parts[1].sql,
            "INSERT INTO telemetry (device_id, v) VALUES ($1, $2), ($3, $4) "
            "ON CONFLICT DO NOTHING RETURNING device_id, $5::int");
  EXPECT_EQ(s.parts[1].params, (std::vector<std::uint16_t>{1, 2, 5, 6, 7}));
  EXPECT_EQ(s.parts[0].sql,
            "INSERT INTO telemetry (device_id, v) VALUES ($1, $2) "
            "ON CONFLICT DO NOTHING RETURNING device_id, $3::int");
  EXPECT_EQ(s.parts[0].params, (std::vector<std::uint16_t>{3, 4, 7}));
}

TEST(InsertSplit, StringsAndCommentsAreCopiedAsTheyAre) {
  const InsertSplit s = split(
      "/* batch */ INSERT INTO telemetry (v, device_id) VALUES ('($9), x', 2), "
      "('it''s', 1) -- end");
  ASSERT_TRUE(s.ok) << s.refusal;
  ASSERT_EQ(s.parts.size(), 2u);
  EXPECT_EQ(s.parts[0].sql,
            "/* batch */ INSERT INTO telemetry (v, device_id) VALUES ('($9), x', 2) -- end");
  EXPECT_EQ(s.parts[1].sql,
            "/* batch */ INSERT INTO telemetry (v, device_id) VALUES ('it''s', 1) -- end");
}

TEST(InsertSplit, RowsPgvalveCannotTellApartAreRefused) {
  // The key of the second row is an expression, not a value pgvalve reads.
  EXPECT_FALSE(split("INSERT INTO telemetry (device_id) VALUES (1), (1 + 1)").ok);
}

}  // namespace
}  // namespace pgvalve::routing
