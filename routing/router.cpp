#include "routing/router.h"

#include "routing/client_text.h"
#include "routing/fingerprint.h"
#include "routing/parse_tree.h"
#include "routing/sql_lexer.h"
#include "routing/statement.h"

namespace pgvalve::routing {

std::string_view route_kind_name(Route::Kind kind) {
  switch (kind) {
    case Route::Kind::Primary:
      return "primary";
    case Route::Kind::Replica:
      return "replica";
    case Route::Kind::Shards:
      return "shards";
    case Route::Kind::Local:
      return "local";
    case Route::Kind::Refuse:
      return "refuse";
  }
  return "?";
}

namespace {

Route read_on_primary(std::uint16_t shard) {
  Route r = Route::primary(shard);
  r.write = false;
  return r;
}

bool starts_with_ci(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && iequals(text.substr(0, prefix.size()), prefix);
}

std::string_view trimmed(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\'' || s.front() == '"'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\'' || s.back() == '"'))
    s.remove_suffix(1);
  return s;
}

}  // namespace

// Whether a statement may run on a replica: a read the parse tree proves, or BEGIN READ ONLY.
// Cached per fingerprint (which keeps every keyword, so BEGIN and BEGIN READ ONLY differ), so
// a statement seen before costs one lexer pass and a lookup.
bool Router::replica_eligible(std::string_view sql, std::uint64_t known, AccessReason* why,
                              bool* own_backend) const {
  const std::uint64_t fp = known ? known : fingerprint(sql);
  if (const StatementAccess* known = cache_->lookup(decision_key(fp))) {
    if (why) *why = known->reason;
    if (own_backend) *own_backend = known->own_backend;
    return known->read;
  }
  const StatementInfo info = classify(sql);
  StatementAccess verdict;
  switch (info.kind) {
    case StatementKind::Begin:
      // Parsed once per shape too: a sharded database answers a valid BEGIN itself (valid_begin).
      verdict.parsed = is_valid_sql(sql);
      if (!verdict.parsed) return false;
      // A hot standby refuses a serializable or read-write mode anywhere in the list, even one a
      // later mode overrides (BEGIN READ WRITE READ ONLY).
      verdict.read = info.read_only && !info.standby_refused_mode && !info.multiple_statements;
      verdict.reason = verdict.read ? AccessReason::Read : AccessReason::NotRead;
      break;
    case StatementKind::Select:
    case StatementKind::Show:
    case StatementKind::Explain:
    case StatementKind::Copy:
      verdict = decide_access(sql, *policy_.write_functions);
      // A statement that does not parse is not cached: its literal may be what broke it.
      if (!verdict.parsed) return false;
      break;
    default:
      verdict.parsed = true;
      verdict.reason = AccessReason::NotRead;
      break;
  }
  cache_->insert(decision_key(fp), verdict);
  if (why) *why = verdict.reason;
  if (own_backend) *own_backend = verdict.own_backend;
  return verdict.read;
}

Route Router::role(std::string_view sql, std::string_view hint, const RouteContext& context,
                   std::uint16_t shard) const {
  if (!policy_.split) return Route::primary(shard);
  // A hint on the statement, then the session's preference.
  if (!hint.empty()) {
    if (iequals(hint, "primary")) return Route::primary(shard);
    if (iequals(hint, "replica")) return Route::replica(shard);
  }
  if (context.preference == RouteContext::Preference::Primary) return Route::primary(shard);
  if (context.preference == RouteContext::Preference::Replica) return Route::replica(shard);
  if (sql.empty() || !cache_ || !policy_.write_functions) return Route::primary(shard);
  AccessReason why = AccessReason::Read;
  bool own_backend = false;
  if (!replica_eligible(sql, context.fingerprint, &why, &own_backend)) {
    // SHOW transaction_read_only: the primary's answer, and no write.
    return why == AccessReason::ServerRole ? read_on_primary(shard) : Route::primary(shard);
  }
  if (context.recent_write || context.serializable) return read_on_primary(shard);
  Route r = Route::replica(shard);
  r.own_backend = own_backend;
  return r;
}

bool Router::valid_begin(std::uint64_t fingerprint) const {
  const StatementAccess* known = cache_ ? cache_->lookup(decision_key(fingerprint)) : nullptr;
  return known != nullptr && known->parsed;
}

Route Router::route(std::string_view sql, const RouteContext& context) const {
  // Whether it only reads cannot be told: the primary. Over shards, route_sharded refuses it
  // unless a hint places it.
  if (!policy_.sharding && !context.reading.plain() && !reads_as_written(sql, context.reading)) {
    return Route::primary(0);
  }
  if (policy_.sharding) return route_sharded(sql, context);
  return role(sql, leading_hint(sql), context, 0);
}

const ShardPlan& Router::shard_plan(std::string_view sql, std::uint64_t fp) const {
  if (sql.size() > kMaxParsedStatementBytes) {
    // Not parsed, so not kept for the shape: its short statements are planned as usual.
    static const ShardPlan too_long = [] {
      ShardPlan p;
      p.key = ShardPlan::Key::TooLong;
      return p;
    }();
    return too_long;
  }
  if (const ShardPlan* known = cache_->shard_plan(decision_key(fp), policy_.sharding_id))
    return *known;
  // The plan is stored next to the read/write decision, which replica_eligible() cached.
  ShardPlan& plan = cache_->scratch_shard_plan();
  plan = plan_shards(sql, *policy_.sharding);
  cache_->set_shard_plan(decision_key(fp), policy_.sharding_id, plan);
  return plan;
}

Route Router::on_shard(std::string_view sql, const RouteContext& context,
                       std::uint16_t shard) const {
  return role(sql, leading_hint(sql), context, shard);
}

InsertSplit Router::split_insert(std::string_view sql, const RouteContext& context) const {
  const std::uint64_t fp = context.fingerprint ? context.fingerprint : fingerprint(sql);
  replica_eligible(sql, fp);  // the shard plan is kept with this decision
  return routing::split_insert(sql, shard_plan(sql, fp), *policy_.sharding, context.params);
}

const ScatterPlan& Router::scatter_plan(std::string_view sql, std::uint64_t fp) const {
  if (cache_ != nullptr) {
    if (const ScatterPlan* known = cache_->scatter_plan(decision_key(fp), policy_.sharding_id))
      return *known;
  }
  if (cache_ == nullptr) {
    thread_local ScatterPlan uncached;
    uncached = plan_scatter(sql, *policy_.sharding);
    return uncached;
  }
  ScatterPlan& plan = cache_->scratch_scatter_plan();
  plan = plan_scatter(sql, *policy_.sharding);
  cache_->set_scatter_plan(decision_key(fp), policy_.sharding_id, plan);
  if (const ScatterPlan* kept = cache_->scatter_plan(decision_key(fp), policy_.sharding_id))
    return *kept;
  return plan;
}

Route Router::route_sharded(std::string_view sql, const RouteContext& context) const {
  const ShardingPolicy& sharding = *policy_.sharding;
  const std::uint64_t all =
      shard_count_ >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << shard_count_) - 1;
  auto invalid = [&](std::string_view value) {
    const KeyType type = sharding.map.key_type();
    if (value == kUntypedBinaryParameter && type == KeyType::Auto) {
      // asyncpg sends every value in binary, typed only by the server's description.
      return Route::refuse("22P02", "pgvalve: " + sharding.key +
                                        " came as a binary parameter of no given type, which "
                                        "sharding.key_type: auto cannot read; set key_type to "
                                        "the column's type (bigint, text or uuid)");
    }
    if (auto error = integer_key_error(value, sharding)) {
      return Route::refuse(error->sqlstate, "pgvalve: " + std::move(error->message));
    }
    if (type == KeyType::Auto) {
      // Only an unquoted number that is not an integer is refused under auto (shard_plan.cpp).
      return Route::refuse(
          "22P02", "pgvalve: " + sharding.key + " " + std::string(value) +
                       " is a number but not an integer: a bigint column stores it rounded, a "
                       "text column as written, and sharding.key_type: auto cannot tell which; "
                       "write the integer, quote it if the column is text, or set "
                       "sharding.key_type to the column's type");
    }
    return Route::refuse(
        "22P02", "pgvalve: \"" + std::string(value) + "\" is not a valid " + sharding.key +
                     " (sharding.key_type: " + std::string(key_type_name(type)) + "); pass a " +
                     sharding.key + " of that type to route the statement to its shard");
  };
  auto any = [&](std::string_view hint) {
    Route r = role(sql, hint, context, 0);
    r.any_shard = true;
    return r;
  };
  auto several = [&](std::uint64_t shards, bool write) {
    Route r{Route::Kind::Shards};
    r.shards = shards;
    r.write = write;
    return r;
  };
  auto one = [&](int shard, std::string_view hint) {
    return role(sql, hint, context, static_cast<std::uint16_t>(shard));
  };
  const std::string_view hint = leading_hint(sql);
  if (!hint.empty()) {
    if (starts_with_ci(hint, "shard=")) {
      const std::string_view name = trimmed(hint.substr(6));
      const int shard = sharding.shard_named(name);
      if (shard < 0) {
        return Route::refuse("0A000",
                             "pgvalve: the hint names shard \"" + std::string(name) +
                                 "\", which this database does not have; SHOW SHARDS lists them");
      }
      return one(shard, {});
    }
    if (starts_with_ci(hint, sharding.key) && hint.size() > sharding.key.size() &&
        hint[sharding.key.size()] == '=') {
      const std::string_view value = trimmed(hint.substr(sharding.key.size() + 1));
      const int shard = shard_of_text(value, sharding);
      if (shard < 0) return invalid(value);
      return one(shard, {});
    }
  }
  if (!context.device_id.empty()) {
    const int shard = shard_of_text(context.device_id, sharding);
    if (shard < 0) return invalid(context.device_id);
    return one(shard, hint);
  }
  if (sql.empty() || !cache_ || !policy_.write_functions) return any(hint);
  if (!context.reading.plain() && !reads_as_written(sql, context.reading)) {
    // In E'表' (SJIS \x95\x5C) pgvalve would read an escaped quote, and the key after it from
    // inside the string; so it would in 'a\' with standard_conforming_strings off. PostgreSQL
    // reads characters, with the session's setting.
    return Route::refuse(
        "0A000",
        "pgvalve: this statement does not read byte by byte as PostgreSQL reads it (a "
        "backslash with standard_conforming_strings off, or a character whose bytes include an "
        "ASCII byte in this session's client_encoding), so pgvalve cannot read its " +
            sharding.key +
            " safely; on a sharded database keep standard_conforming_strings on and use "
            "client_encoding UTF8 (or a single-byte encoding), or name the shard",
        "a hint /* pgvalve: " + sharding.key +
            "=<value> */ or /* pgvalve: shard=<name> */ runs it on one shard without reading it");
  }
  if (sql.size() > kMaxParsedStatementBytes) {
    // Before any cached decision: the shape's short statements must not inherit this refusal,
    // nor this statement a plan whose keys only a parse could read.
    return Route::refuse(
        "54000",
        "pgvalve: this statement is longer than " +
            std::to_string(kMaxParsedStatementBytes / 1024) +
            " KiB, and pgvalve reads only shorter ones to find their shard; send fewer rows per "
            "statement (COPY ... FROM STDIN for many), or name the shard",
        "a hint /* pgvalve: " + sharding.key +
            "=<value> */ or /* pgvalve: shard=<name> */ "
            "runs it on one shard without reading it");
  }
  const std::uint64_t fp = context.fingerprint ? context.fingerprint : fingerprint(sql);
  AccessReason access = AccessReason::Read;
  const bool read = replica_eligible(sql, fp, &access);
  const ShardPlan plan = shard_plan(sql, fp);
  // The rows of an INSERT into a sharded table belong to their keys' shards: run everywhere,
  // each shard would get every row.
  auto insert = [&] { return !read && classify(sql).kind == StatementKind::Insert; };
  if (plan.key == ShardPlan::Key::CopyFrom) {
    // Its rows are in the data that follows, each routed by its own key (or refused there).
    Route r = several(all, true);
    r.copy_rows = true;
    return r;
  }
  // A write to reference tables changes the same rows on every shard.
  auto on_every_shard = [&] {
    Route r = several(all, true);
    r.same_on_every_shard = plan.tables == ShardPlan::Tables::ReferenceOnly && plan.reference_table;
    return r;
  };
  if (iequals(hint, "all_shards")) {
    if (insert() && plan.tables != ShardPlan::Tables::ReferenceOnly) {
      return Route::refuse(
          "0A000",
          "pgvalve: rows inserted into a sharded table go to the shards of their " + sharding.key +
              " values, not to every shard",
          "drop the all_shards hint");
    }
    return read ? several(all, false) : on_every_shard();
  }
  if (plan.tables == ShardPlan::Tables::Unlisted) {
    // Split by key, or the same on every shard? Only the configuration can say.
    return Route::refuse(
        "0A000",
        "pgvalve: table \"" + std::string(plan.unlisted_table()) +
            "\" is in neither sharding.tables nor sharding.reference_tables, so pgvalve cannot "
            "tell which shards hold its rows; list it in one of them",
        "a hint /* pgvalve: " + sharding.key +
            "=<value> */ or /* pgvalve: shard=<name> */ "
            "runs the statement on one shard anyway");
  }
  // A bound text seen before: its keys are in the $n the first walk of it found.
  const KeyParams* known = context.params && plan.key == ShardPlan::Key::Slots
                               ? cache_->key_params(sql, policy_.sharding_id)
                               : nullptr;
  ShardKeys keys;
  if (known) {
    keys = shard_keys(*known, sharding, *context.params);
  } else {
    KeyParams layout;
    keys = shard_keys(sql, plan, sharding, context.params, context.params ? &layout : nullptr);
    if (layout.count > 0) cache_->set_key_params(sql, policy_.sharding_id, layout);
  }
  switch (keys.status) {
    case ShardKeys::Status::Found:
      if ((keys.shards & (keys.shards - 1)) == 0) {
        return one(__builtin_ctzll(keys.shards), hint);
      }
      if (insert()) {
        Route r = several(keys.shards, true);
        r.split_rows = true;
        return r;
      }
      return several(keys.shards, !read);
    case ShardKeys::Status::NotBound:
      return any(hint);
    case ShardKeys::Status::Null:
      return Route::refuse("22004", "pgvalve: " + sharding.key +
                                        " is NULL, so no shard holds the row; give every row a " +
                                        sharding.key);
    case ShardKeys::Status::Invalid:
      return invalid(keys.bad_value);
    case ShardKeys::Status::NoKey:
      break;
  }
  const std::string hint_text = "add /* pgvalve: " + sharding.key +
                                "=<value> */ when every row has that " + sharding.key +
                                ", or /* pgvalve: all_shards */ to run it on every shard";
  switch (plan.key) {
    case ShardPlan::Key::InsertNoKey:
      return Route::refuse("0A000",
                           "pgvalve: this INSERT into a sharded table gives no " + sharding.key +
                               " value pgvalve can read; list " + sharding.key +
                               " among the columns with a constant or $n for every row",
                           hint_text);
    case ShardPlan::Key::InsertSelect:
      return Route::refuse("0A000",
                           "pgvalve: INSERT ... SELECT into a sharded table cannot be routed "
                           "row by row; insert with VALUES, or name the shard",
                           hint_text);
    case ShardPlan::Key::UpdatesKey:
      return Route::refuse(
          "0A000", "pgvalve: an UPDATE (or ON CONFLICT DO UPDATE) that sets " + sharding.key +
                       " would move rows to another shard, which pgvalve does not do; "
                       "DELETE the rows and INSERT them with the new " +
                       sharding.key);
    case ShardPlan::Key::Multiple:
      return Route::refuse("0A000",
                           "pgvalve: several statements in one query on a sharded database; "
                           "send them one at a time so each goes to its shard",
                           hint_text);
    case ShardPlan::Key::Unparsed:
      return any(hint);            // PostgreSQL says what is wrong
    case ShardPlan::Key::TooLong:  // refused before the plan was looked up
    default:
      break;
  }
  if (plan.ddl) return on_every_shard();
  switch (plan.tables) {
    case ShardPlan::Tables::None:
      return any(hint);
    case ShardPlan::Tables::ReferenceOnly:
      // pg_notify() in a read of reference tables: one notification, from any shard's primary
      // (every shard would send it, and PostgreSQL cannot prepare a transaction that notified).
      return read || access == AccessReason::Notify ? any(hint) : on_every_shard();
    case ShardPlan::Tables::Sharded:
    case ShardPlan::Tables::Unlisted:
      break;
  }
  if (read) return several(all, false);
  return Route::refuse("0A000",
                       "pgvalve: this statement writes to a sharded table without a " +
                           sharding.key + " pgvalve can read (WHERE " + sharding.key +
                           " = ... at the top level), so it would have to run on every shard",
                       hint_text);
}

}  // namespace pgvalve::routing
