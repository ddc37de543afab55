// An INSERT ... VALUES whose rows belong to several shards, cut into one INSERT per shard that
// holds only that shard's rows (DESIGN.md §4.4). Each part is a statement of its own: its $n are
// numbered from $1 again, and it says which of the client's parameters they stand for, so that
// the session can send each shard a Bind with just those values. Pure; allocates.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "routing/shard_plan.h"

namespace pgvalve::routing {

struct InsertPart {
  std::uint16_t shard = 0;
  std::string sql;
  // params[i] is the client's parameter number (from 1) that the part's $(i+1) stands for.
  std::vector<std::uint16_t> params;
};

struct InsertSplit {
  bool ok = false;
  std::string refusal;            // !ok: why (for 0A000)
  std::vector<InsertPart> parts;  // in shard order
};

// `plan` is the statement's shard plan (Key::Slots, one key slot per row); `params` the Bind's
// values when the statement is bound.
InsertSplit split_insert(std::string_view sql, const ShardPlan& plan, const ShardingPolicy& policy,
                         const ParamSource* params);

}  // namespace pgvalve::routing
