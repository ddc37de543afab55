// libFuzzer target for shard-key extraction (routing/shard_plan.h): the parse-tree plan of a
// statement and the lexer's reading of its key values, with $n bound from fuzzed bytes in text
// or binary format. Run by `tests/run` as fuzz.shard_key_fuzz; by hand: tests/fuzz/run
// shard_key_fuzz. Seeds: tests/fuzz/corpus/shard_key_fuzz/.
//
// Input: byte 0 picks the parameter format and type, bytes 1-16 are the parameter value, the rest
// is the statement. Besides crashes it checks that the plan read slot by slot (the cached path)
// and the plan's slots found afresh (the re-parse path) agree, that shards stay in range, that a
// scatter plan is either made or refused with a reason, and that what a scatter plan has each
// shard run for averages, variances and deviations (sums, and counts and population variances
// after the output) is SQL PostgreSQL's parser takes.
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string_view>

#include "routing/parse_tree.h"
#include "routing/scatter_plan.h"
#include "routing/shard_plan.h"

namespace {

using namespace pgvalve::routing;

void check(bool ok) {
  if (!ok) std::abort();
}

class FuzzParams final : public ParamSource {
 public:
  FuzzParams(std::uint8_t mode, std::string_view value) : mode_(mode), value_(value) {}
  std::optional<BoundParam> param(int number) const override {
    if (number < 1 || number > 8) return std::nullopt;
    BoundParam p;
    if (mode_ & 0x80) return p;  // NULL
    p.value = value_;
    p.binary = mode_ & 1;
    static constexpr std::uint32_t kOids[] = {20, 21, 23, 25, 1043, 1700, 2950, 0};
    p.type_oid = kOids[(mode_ >> 1) & 7];
    return p;
  }

 private:
  std::uint8_t mode_;
  std::string_view value_;
};

const ShardingPolicy& policy() {
  static const ShardingPolicy p = [] {
    ShardingPolicy s;
    s.tables = {"telemetry"};
    s.reference_tables = {"device_types"};
    s.shard_names = {"s0", "s1", "s2", "s3"};
    std::vector<std::uint16_t> owner(64);
    for (std::size_t b = 0; b < owner.size(); ++b)
      owner[b] = static_cast<std::uint16_t>(b % 4);
    s.map = ShardMap(ShardHash::Xxh3, KeyType::Auto, 4, owner);
    return s;
  }();
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 17) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const FuzzParams params(data[0], bytes.substr(1, data[0] & 0x40 ? 8 : 16));
  const std::string_view sql = bytes.substr(17);
  const ShardPlan plan = plan_shards(sql, policy());
  const ShardKeys keys = shard_keys(sql, plan, policy(), &params);
  check(keys.shards < (1u << 4));
  check((keys.status == ShardKeys::Status::Found) == (keys.shards != 0));
  if (plan.key == ShardPlan::Key::Slots) {
    check(plan.count > 0 && plan.stride > 0);
    ShardPlan reparse = plan;
    reparse.key = ShardPlan::Key::Reparse;
    const ShardKeys again = shard_keys(sql, reparse, policy(), &params);
    check(again.status == keys.status && again.shards == keys.shards);
  }
  const ScatterPlan scatter = plan_scatter(sql, policy());
  check(scatter.ok != !scatter.refusal.empty());
  if (scatter.ok) {
    const ShardStatement statement = shard_statement(sql, scatter, &params);
    check(statement.ok != !statement.refusal.empty());
    if (statement.ok && !scatter.averages.empty()) {
      check(!statement.sql.empty() && parse_tree(statement.sql).has_value());
    }
  }
  return 0;
}
