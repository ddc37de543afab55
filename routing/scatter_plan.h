// How the answers of a read that runs on several shards combine into the one answer a single
// database would give (DESIGN.md §4.4), decided from PostgreSQL's parse tree once per statement
// shape, or why they cannot. Pure; allocates (call once per fingerprint and keep the plan).
//
// The session carries it out: it sends each shard the statement shard_statement() writes and
// feeds their answers to a Gather (gather.h).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "routing/shard_plan.h"

namespace pgvalve::routing {

struct ScatterPlan {
  // One ORDER BY item, resolved to an output column (0-based).
  struct SortKey {
    std::uint16_t column = 0;
    bool descending = false;
    bool nulls_first = false;  // PostgreSQL's default: NULLS LAST ascending, FIRST descending
    // Non-empty: a column of `SELECT *`, found by this name in the shards' RowDescription
    // (`column` is then meaningless).
    std::string name;
    // COLLATE "C" (or "POSIX", ucs_basic) on the item or its output column: text by the bytes,
    // not in the database's collation.
    bool bytes = false;
    bool operator==(const SortKey&) const = default;
  };
  // What each output column of an aggregate query does when rows of several shards meet.
  enum class Combine : std::uint8_t {
    Group,  // a GROUP BY value: rows with equal values in every Group column are one row
    Sum,    // count(...) and sum(...): added
    Min,    // min(...), and bool_and(...) and every(...): false before true
    Max,    // max(...) and bool_or(...)
    Avg,    // avg(...), stddev(...), variance(...) and the like: see `averages`
    BitAnd,
    BitOr,
    BitXor,
  };
  // An avg(...) output column, or one of the variances and standard deviations. Each shard runs
  // sum(...) in its place and, as extra output columns after the statement's own (in the order
  // of `averages`), count(...) of the same argument and, for a variance or deviation,
  // var_pop(...). The gather adds the sums and counts up and divides as PostgreSQL's avg()
  // does; it combines variances as PostgreSQL combines the partial states of a parallel plan.
  enum class Statistic : std::uint8_t { Avg, VarPop, VarSamp, StddevPop, StddevSamp };
  struct Average {
    std::uint16_t column = 0;  // the output column
    std::uint32_t call = 0;    // which of the statement's calls ScatterPlan rewrites (0: first)
    bool named = false;        // AS alias: else the client's column is named after the function
    Statistic statistic = Statistic::Avg;
    std::string function;     // as PostgreSQL names the column: avg, stddev, var_samp, ...
    std::uint16_t extra = 0;  // its first extra column, counted after the statement's own
    bool operator==(const Average&) const = default;
  };

  bool ok = false;
  std::string refusal;  // !ok: why the shards' answers cannot be combined correctly (for 0A000)

  std::vector<SortKey> order;    // merge-sort the shards' sorted rows by these; empty: concatenate
  std::vector<Combine> combine;  // empty: rows are not combined
  // Output columns of min()/max() whose argument has COLLATE "C": text compared by the bytes.
  std::vector<std::uint16_t> bytes_combined;
  std::vector<Average> averages;
  std::uint16_t extra_columns = 0;  // what `averages` add to each shard's output columns
  bool distinct = false;            // SELECT DISTINCT: equal rows from different shards are one
  // Every shard holds the same rows for the statement (a write to reference tables): the shards
  // answer alike, and the client gets the first shard's rows and command tag, as one database
  // would answer; the others' are checked only for an error and the same columns.
  bool same_on_every_shard = false;
  // LIMIT / OFFSET as literal slots (normalized_walk.h) of the statement, -1 when absent: their
  // values come from each statement. They apply after the merge; a shard is asked for
  // LIMIT + OFFSET rows when nothing is combined.
  std::int32_t limit_slot = -1;
  std::int32_t offset_slot = -1;
};

// Tables of the plan are the policy's: `tables` are split by key (the router has refused tables
// in neither list before a statement gets here).
ScatterPlan plan_scatter(std::string_view sql, const ShardingPolicy& policy);

// What each shard runs for one statement of `plan`'s shape, and the LIMIT/OFFSET applied after
// the merge. Averages run as sums, with their counts as extra columns (ScatterPlan::Average). A
// shard cannot apply an OFFSET (the rows it skips may be the ones the merge keeps), nor a LIMIT on
// rows that are combined afterwards (a group's part on another shard would be cut), so those are
// rewritten: LIMIT n OFFSET m runs as LIMIT n+m OFFSET 0, and combined rows run without a limit. A
// $n keeps its place (its value comes with the Bind): `LIMIT $1 OFFSET $2` runs as `LIMIT ($1::int8
// + $2::int8) OFFSET (0 * $2::int8)`.
struct ShardStatement {
  bool ok = true;
  std::string refusal;      // !ok: why (for 0A000)
  std::string sql;          // empty: the statement runs as the client wrote it
  std::int64_t limit = -1;  // after the merge; -1: none
  std::int64_t offset = 0;
};
ShardStatement shard_statement(std::string_view sql, const ScatterPlan& plan,
                               const ParamSource* params);

// `name` is one of PostgreSQL 15's built-in aggregate functions.
bool is_builtin_aggregate(std::string_view name);

}  // namespace pgvalve::routing
