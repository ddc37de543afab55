// Which shards a statement needs (DESIGN.md §4.4). PostgreSQL's parse tree (libpg_query) says,
// once per fingerprint, which literal slots (normalized_walk.h) or $n hold the shard key and which
// tables the statement touches: a ShardPlan, cached next to the read/write decision. Each later
// statement of that shape finds its key values by walking its literal slots with the lexer and
// reading the slots the plan names, or the Bind values they refer to.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "routing/shard_map.h"
#include "routing/text_order.h"

namespace pgvalve::routing {

// sharding.* of one database, mapped by the session's owner (routing/ reads no configuration).
struct ShardingPolicy {
  std::string key = "device_id";  // column name as PostgreSQL folds it
  std::vector<std::string> tables;
  std::vector<std::string> reference_tables;
  ShardMap map;
  std::vector<std::string> shard_names;  // index = shard
  // The collation the shards' databases order text in, as the health checks read it (null in a
  // policy no checker serves: text is then not merged).
  std::shared_ptr<TextOrderSlot> text_order;

  // The shard called `name`, or -1.
  int shard_named(std::string_view name) const;
};

// What the parse tree says about one statement shape. Small and trivially copyable: it lives in
// a DecisionCache entry.
struct ShardPlan {
  enum class Tables : std::uint8_t {
    None,           // no table at all (SELECT 1, SHOW, SET, transaction control)
    ReferenceOnly,  // only reference tables and system catalogs: reads go to any shard, writes
                    // to all
    Sharded,        // a table of sharding.tables (and maybe reference tables)
    Unlisted,       // a table in neither list: where its rows are is unknown (unlisted_table())
  };
  enum class Key : std::uint8_t {
    None,          // no key found: see `tables`
    Slots,         // key values in literal slots first_slot + i * stride, i < count
    Reparse,       // key values found, but not at regular slots: ask the parse tree each time
    InsertNoKey,   // INSERT into a sharded table without the key column in its column list
    InsertSelect,  // INSERT ... SELECT / DEFAULT VALUES into a sharded table
    UpdatesKey,    // UPDATE ... SET key = ...: the row would belong on another shard
    Multiple,      // several statements in one string
    CopyFrom,      // COPY ... FROM: the keys are in the rows of its data (copy_rows.h)
    Unparsed,      // not valid SQL: PostgreSQL will say so, any shard can
    TooLong,       // longer than kMaxParsedStatementBytes: not parsed, so not placed
  };
  Tables tables = Tables::None;
  Key key = Key::None;
  bool ddl = false;  // schema change: every shard
  // Names a table of sharding.reference_tables (not only system catalogs, some of which, such as
  // pg_stat_activity, differ between servers): with Tables::ReferenceOnly, every shard holds
  // the same rows for the statement.
  bool reference_table = false;
  std::uint16_t first_slot = 0;
  std::uint16_t stride = 0;
  std::uint16_t count = 0;

  // Tables::Unlisted: the first such table's name (cut to 63 bytes), for the client's error.
  std::string_view unlisted_table() const { return {unlisted_.data(), unlisted_size_}; }
  void set_unlisted_table(std::string_view name);

 private:
  std::array<char, 63> unlisted_{};
  std::uint8_t unlisted_size_ = 0;
};

// Parses `sql` (allocates; call once per fingerprint), sorts the tables it names (system catalogs,
// pg_catalog.* and information_schema.* and unqualified pg_*, count as reference tables: every
// shard has the same ones) and finds where the key is: in the top-level
// AND chain of a SELECT/UPDATE/DELETE WHERE clause (`key = v`, `v = key`, `t.key = v`,
// `key IN (v, ...)`, casts and a minus sign allowed around v), or in the rows of an
// INSERT ... (..., key, ...) VALUES. v is a constant or a $n.
ShardPlan plan_shards(std::string_view sql, const ShardingPolicy& policy);

// How a binary key parameter is shown in a refusal (it has no text to quote).
inline constexpr std::string_view kBinaryParameter = "(binary parameter)";
inline constexpr std::string_view kUntypedBinaryParameter = "(binary parameter of no given type)";

// A Bind parameter, as the session finds it for a $n.
struct BoundParam {
  std::optional<std::string_view> value;  // nullopt: NULL
  bool binary = false;
  std::uint32_t type_oid = 0;  // from the Parse; 0: unspecified
};

class ParamSource {
 public:
  // $number's value; nullopt when the statement is not bound (a Parse or Describe alone).
  virtual std::optional<BoundParam> param(int number) const = 0;

 protected:
  ~ParamSource() = default;
};

struct ShardKeys {
  enum class Status : std::uint8_t {
    Found,     // `shards` has every shard a key value maps to
    NotBound,  // the key is a $n and no Bind is at hand (Parse/Describe): any shard can answer
    NoKey,     // the plan has no key (or it could not be read)
    Null,      // a key value is NULL
    Invalid,   // a key value is not a value of sharding.key_type (`bad_value` says which)
  };
  Status status = Status::NoKey;
  std::uint64_t shards = 0;  // bit i: shard i
  std::string_view bad_value;
};

// Where the key values of one exact statement text are when every one is a $n: $first,
// $(first + stride), ... (count of them, count > 0). The drivers' statements are of this kind
// (INSERT ... VALUES ($1, $2), WHERE device_id = $1), and send the same text with every Bind.
struct KeyParams {
  std::uint16_t first = 0;
  std::uint16_t stride = 0;
  std::uint16_t count = 0;
};

// The shards of `sql` under `plan` (made from a statement with the same fingerprint). Walks the
// literal slots once; allocates nothing (Reparse plans parse again). With `layout`, a Slots plan
// whose key values were all read from regularly numbered $n sets it (count 0 otherwise).
ShardKeys shard_keys(std::string_view sql, const ShardPlan& plan, const ShardingPolicy& policy,
                     const ParamSource* params, KeyParams* layout = nullptr);
// The same for a text whose layout is known: the Bind values alone, no walk.
ShardKeys shard_keys(const KeyParams& layout, const ShardingPolicy& policy,
                     const ParamSource& params);

// An INSERT ... VALUES planned with Key::Slots: the shard of each row, in row order (one key
// slot per row). Empty when a row's key cannot be read (route() has refused such statements).
std::vector<std::uint16_t> insert_row_shards(std::string_view sql, const ShardPlan& plan,
                                             const ShardingPolicy& policy,
                                             const ParamSource* params);

// The shard of one key value given as text (a hint, SET pgvalve.device_id): -1 when it is not a
// value of sharding.key_type.
int shard_of_text(std::string_view value, const ShardingPolicy& policy);

// The client's error for an integer-looking key value that shard_of_text() refused: an integer
// beyond bigint (22003, as PostgreSQL says it) or, under key_type auto, one with whitespace
// around it (22P02). The message names the value and says what to do, without "pgvalve: ".
// nullopt for other values (the caller's 22P02).
struct KeyError {
  std::string_view sqlstate;
  std::string message;
};
std::optional<KeyError> integer_key_error(std::string_view value, const ShardingPolicy& policy);

}  // namespace pgvalve::routing
