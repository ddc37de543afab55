// A bounded LRU of read/write decisions (and, for sharded databases, shard plans) keyed by
// statement fingerprint, so that libpg_query parses each statement shape once. One per worker
// thread: NOT thread-safe, no locking.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "routing/fingerprint.h"
#include "routing/read_write.h"
#include "routing/scatter_plan.h"
#include "routing/shard_plan.h"

namespace pgvalve::routing {

// A decision depends on the statement's shape and on the routing.write_functions list it was
// made under: sessions of two lists (before and after a reload) never share one. The list's id
// is its owner's (RoutingPolicy::write_functions_id): one id per distinct list.
struct DecisionKey {
  std::uint64_t fingerprint = 0;
  std::uint32_t write_functions = 0;
  DecisionKey(std::uint64_t fp, std::uint32_t list = 0) : fingerprint(fp), write_functions(list) {}
  bool operator==(const DecisionKey&) const = default;
};

class DecisionCache {
 public:
  static constexpr std::size_t kDefaultCapacity = 4096;

  struct Stats {
    std::uint64_t hits = 0;
    std::uint64_t misses = 0;
    std::uint64_t evictions = 0;
  };

  // All memory is taken here (capacity >= 1; 0 is taken as 1); lookups and inserts never
  // allocate.
  explicit DecisionCache(std::size_t capacity = kDefaultCapacity);

  // The cached decision for `key`, made the most recently used; nullptr on a miss.
  // Counts a hit or a miss. The pointer is valid until the next insert() or clear().
  const StatementAccess* lookup(DecisionKey key);

  // Stores (or replaces) the decision, evicting the least recently used entry when full.
  void insert(DecisionKey key, const StatementAccess& value);

  // fingerprint(sql), then lookup, and on a miss decide_access() and insert. A statement that
  // does not parse is answered but not cached: its literal may be what broke it (an
  // unterminated string has the fingerprint of a terminated one), and the next statement of that
  // shape deserves a parse of its own. The reference is valid until the next call of any
  // non-const member.
  // `list` is the id of `write_functions` (DecisionKey).
  const StatementAccess& decide(std::string_view sql,
                                const std::vector<std::string>& write_functions,
                                std::uint32_t list = 0);
  // The same with fingerprint(sql) already at hand (statistics compute it for every statement);
  // a hit then costs one table probe.
  const StatementAccess& decide(DecisionKey key, std::string_view sql,
                                const std::vector<std::string>& write_functions);

  // The shard plan cached with `fingerprint`'s decision for the sharding policy `policy`
  // (RoutingPolicy::sharding_id); nullptr when there is none. set_shard_plan stores one next to
  // an entry insert() made (nothing when the entry is gone). One statement shape in two sharded
  // databases keeps the plan of the last one asked.
  const ShardPlan* shard_plan(DecisionKey key, std::uint32_t policy) const;
  void set_shard_plan(DecisionKey key, std::uint32_t policy, const ShardPlan& plan);
  // The scatter plan of a statement over several shards, kept with its shard plan (the same
  // policy); nullptr when none was stored.
  const ScatterPlan* scatter_plan(DecisionKey key, std::uint32_t policy) const;
  void set_scatter_plan(DecisionKey key, std::uint32_t policy, ScatterPlan plan);

  // Where a plan no entry could keep is made (its decision was not cached): valid until the next
  // such plan. Here, per worker, rather than in every client's Router.
  ShardPlan& scratch_shard_plan() { return scratch_shard_plan_; }
  ScatterPlan& scratch_scatter_plan() { return scratch_scatter_plan_; }

  // The worker's fingerprints of statement texts it saw before (Parse texts).
  FingerprintCache& fingerprints() { return fingerprints_; }

  // Where the key values of the exact text `sql` are under the sharding policy `policy`, when a
  // walk of it found them all in $n (shard_keys()); nullptr when not known. Bound statements
  // come back with the same text at every Bind: their keys are then read without a walk. Texts
  // up to kMaxKeyParamsText bytes, in kKeyParamsSlots places (a place keeps its text's memory).
  static constexpr std::size_t kKeyParamsSlots = 256;
  static constexpr std::size_t kMaxKeyParamsText = 1024;
  const KeyParams* key_params(std::string_view sql, std::uint32_t policy) const;
  void set_key_params(std::string_view sql, std::uint32_t policy, const KeyParams& layout);

  // Forgets every entry (e.g. after a configuration reload); the statistics stay.
  void clear();

  std::size_t size() const { return size_; }
  std::size_t capacity() const { return entries_.size(); }
  const Stats& stats() const { return stats_; }

 private:
  static constexpr std::uint32_t kNone = UINT32_MAX;

  struct Entry {
    DecisionKey key{0};
    std::uint32_t prev = kNone;  // towards the most recently used
    std::uint32_t next = kNone;  // towards the least recently used
    StatementAccess value;
    ShardPlan shard_plan;
    std::uint32_t shard_plan_for = 0;  // RoutingPolicy::sharding_id; 0: no plan
    // Only statements that ran over several shards have one (allocated then, once per shape).
    std::unique_ptr<ScatterPlan> scatter_plan;
  };

  std::size_t home_slot(DecisionKey key) const;
  std::size_t find_slot(DecisionKey key) const;  // slots_.size() when absent
  void erase_slot(std::size_t slot);
  void unlink(std::uint32_t index);
  void push_front(std::uint32_t index);

  std::vector<Entry> entries_;        // fixed at capacity
  std::vector<std::uint32_t> slots_;  // open addressing, linear probing: entry index or kNone
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
  std::uint32_t head_ = kNone;  // most recently used
  std::uint32_t tail_ = kNone;  // least recently used
  Stats stats_;
  StatementAccess uncached_;  // decide()'s answer for a statement that does not parse
  ShardPlan scratch_shard_plan_;
  ScatterPlan scratch_scatter_plan_;
  FingerprintCache fingerprints_;
  struct KeyParamsSlot {
    std::uint64_t text_hash = 0;
    std::uint32_t policy = 0;  // 0: empty
    KeyParams layout;
    std::string text;
  };
  std::vector<KeyParamsSlot> key_params_;  // kKeyParamsSlots once the first is set
};

}  // namespace pgvalve::routing
