// Config accessors, enum names, describe() and diff().
#include "config/config.h"

#include <set>
#include <string>

namespace pgvalve::config {

bool same_placement(const Database& a, const Database& b) {
  if (a.sharding != b.sharding || a.shards.size() != b.shards.size()) return false;
  for (std::size_t i = 0; i < a.shards.size(); ++i) {
    if (a.shards[i].name != b.shards[i].name) return false;
  }
  return true;
}

ReloadChange database_change(const Database& before, const Database* after) {
  if (!after) return ReloadChange::DatabaseRemoved;
  // One shard without sharding rules places nothing: its shard's name is only a name.
  const auto sharded = [](const Database& db) { return db.sharding && db.shards.size() > 1; };
  if ((sharded(before) || sharded(*after)) && !same_placement(before, *after)) {
    return ReloadChange::ShardMap;
  }
  if (before.dbname != after->dbname) return ReloadChange::Dbname;
  return ReloadChange::None;
}

ReloadChange reload_change(const Database& db, std::string_view user, const Config& next) {
  if (const ReloadChange change = database_change(db, next.find_database(db.name));
      change != ReloadChange::None) {
    return change;
  }
  return next.find_user(user) ? ReloadChange::None : ReloadChange::UserRemoved;
}

std::string Endpoint::to_string() const {
  // An IPv6 literal needs brackets, or its colons would be read as the port separator.
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

const User* Config::find_user(std::string_view name) const {
  for (const User& user : users) {
    if (user.name == name) return &user;
  }
  return nullptr;
}

const Database* Config::find_database(std::string_view name) const {
  for (const Database& database : databases) {
    if (database.name == name) return &database;
  }
  return nullptr;
}

std::string ConfigError::to_string(std::string_view file) const {
  std::string out(file);
  if (line > 0) {
    out += ":" + std::to_string(line);
    if (column > 0) out += ":" + std::to_string(column);
  }
  out += ": ";
  if (!path.empty()) out += path + ": ";
  out += message;
  return out;
}

const char* to_string(PoolMode mode) {
  switch (mode) {
    case PoolMode::Session:
      return "session";
    case PoolMode::Transaction:
      return "transaction";
    case PoolMode::Statement:
      return "statement";
  }
  return "?";
}

const char* to_string(LogLevel level) {
  switch (level) {
    case LogLevel::Debug:
      return "debug";
    case LogLevel::Info:
      return "info";
    case LogLevel::Warn:
      return "warn";
    case LogLevel::Error:
      return "error";
  }
  return "?";
}

const char* to_string(TlsMode mode) {
  switch (mode) {
    case TlsMode::Disable:
      return "disable";
    case TlsMode::Prefer:
      return "prefer";
    case TlsMode::Require:
      return "require";
  }
  return "?";
}

const char* to_string(ServerTlsMode mode) {
  switch (mode) {
    case ServerTlsMode::Disable:
      return "disable";
    case ServerTlsMode::Prefer:
      return "prefer";
    case ServerTlsMode::Require:
      return "require";
    case ServerTlsMode::VerifyCa:
      return "verify-ca";
    case ServerTlsMode::VerifyFull:
      return "verify-full";
  }
  return "?";
}

const char* to_string(HashFunction hash) {
  switch (hash) {
    case HashFunction::Xxh3:
      return "xxh3";
    case HashFunction::Md5Mod:
      return "md5_mod";
    case HashFunction::PgPartition:
      return "pg_partition";
  }
  return "?";
}

const char* to_string(ShardKeyType type) {
  switch (type) {
    case ShardKeyType::Auto:
      return "auto";
    case ShardKeyType::Bigint:
      return "bigint";
    case ShardKeyType::Text:
      return "text";
    case ShardKeyType::Uuid:
      return "uuid";
  }
  return "?";
}

const char* to_string(ReadsTo reads) {
  switch (reads) {
    case ReadsTo::Replicas:
      return "replicas";
    case ReadsTo::Primary:
      return "primary";
    case ReadsTo::Any:
      return "any";
  }
  return "?";
}

const char* to_string(LoadBalance balance) {
  switch (balance) {
    case LoadBalance::LeastConnections:
      return "least_connections";
    case LoadBalance::RoundRobin:
      return "round_robin";
    case LoadBalance::Random:
      return "random";
  }
  return "?";
}

const char* to_string(ReadYourWrites mode) {
  switch (mode) {
    case ReadYourWrites::Off:
      return "off";
    case ReadYourWrites::Lsn:
      return "lsn";
    case ReadYourWrites::Time:
      return "time";
  }
  return "?";
}

const char* to_string(FailoverMode mode) {
  switch (mode) {
    case FailoverMode::Off:
      return "off";
    case FailoverMode::Follow:
      return "follow";
    case FailoverMode::Promote:
      return "promote";
  }
  return "?";
}

namespace {

constexpr const char* kHidden = "<hidden>";

using Pairs = std::vector<std::pair<std::string, std::string>>;

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) {
    if (!out.empty()) out += ",";
    out += item;
  }
  return out;
}

// An empty value is shown as "" so that "unset" is visible in `--check` output.
std::string shown(const std::string& value) {
  return value.empty() ? "\"\"" : value;
}

// `hide_secrets` is false only inside diff(), which must notice password changes.
Pairs describe_impl(const Config& c, bool hide_secrets) {
  Pairs out;
  auto add = [&](std::string key, std::string value) {
    out.emplace_back(std::move(key), std::move(value));
  };
  auto flag = [](bool b) { return std::string(b ? "true" : "false"); };
  auto num = [](auto n) { return std::to_string(n); };
  auto secret = [&](const std::string& value) {
    if (value.empty()) return std::string("\"\"");
    return hide_secrets ? std::string(kHidden) : value;
  };

  add("listen", c.listen.to_string());
  add("admin_listen", c.admin_listen.to_string());
  add("workers", num(c.workers));
  add("log_level", to_string(c.log_level));
  add("shutdown_timeout_s", num(c.shutdown_timeout_s));
  if (c.tls) {
    add("tls.cert", shown(c.tls->cert));
    add("tls.key", shown(c.tls->key));
    add("tls.mode", to_string(c.tls->mode));
    add("tls.client_ca", shown(c.tls->client_ca));
  } else {
    add("tls", "none");
  }
  add("server_tls", to_string(c.server_tls));
  if (!c.server_tls_ca.empty()) add("server_tls_ca", c.server_tls_ca);
  add("server_allow_insecure_auth", flag(c.server_allow_insecure_auth));

  for (const User& user : c.users) {
    const std::string prefix = "users." + user.name + ".";
    add(prefix + "password", secret(user.password));
    add(prefix + "server_password", secret(user.server_password));
    add(prefix + "admin", flag(user.admin));
  }

  const PoolSettings& p = c.pool;
  add("pool.mode", to_string(p.mode));
  add("pool.pool_size", num(p.pool_size));
  add("pool.max_overflow", num(p.max_overflow));
  add("pool.overflow_idle_s", num(p.overflow_idle_s));
  add("pool.checkout_timeout_ms", num(p.checkout_timeout_ms));
  add("pool.idle_timeout_s", num(p.idle_timeout_s));
  add("pool.recycle_s", num(p.recycle_s));
  add("pool.pre_ping", flag(p.pre_ping));
  add("pool.pre_ping_idle_s", num(p.pre_ping_idle_s));
  add("pool.max_client_connections", num(p.max_client_connections));
  add("pool.max_prepared_statements", num(p.max_prepared_statements));
  add("pool.pin_session_state", flag(p.pin_session_state));
  add("pool.query_timeout_ms", num(p.query_timeout_ms));
  add("pool.idle_transaction_timeout_ms", num(p.idle_transaction_timeout_ms));

  const Limits& l = c.limits;
  add("limits.connections_per_ip", num(l.connections_per_ip));
  add("limits.connect_rate_per_ip", num(l.connect_rate_per_ip));
  add("limits.connect_burst_per_ip", num(l.connect_burst_per_ip));
  add("limits.auth_timeout_ms", num(l.auth_timeout_ms));
  add("limits.max_message_bytes", num(l.max_message_bytes));
  add("limits.message_timeout_ms", num(l.message_timeout_ms));
  add("limits.message_memory_bytes", num(l.message_memory_bytes));

  for (const Database& db : c.databases) {
    const std::string prefix = "databases." + db.name + ".";
    add(prefix + "dbname", db.dbname);
    for (const Shard& shard : db.shards) {
      const std::string sp = prefix + "shards." + shard.name + ".";
      add(sp + "primary", shard.primary.to_string());
      std::vector<std::string> replicas;
      for (const Endpoint& r : shard.replicas)
        replicas.push_back(r.to_string());
      add(sp + "replicas", shown(join(replicas)));
    }
    if (db.sharding) {
      const Sharding& s = *db.sharding;
      const std::string sp = prefix + "sharding.";
      add(sp + "key", s.key);
      add(sp + "hash", to_string(s.hash));
      add(sp + "key_type", to_string(s.key_type));
      if (s.hash == HashFunction::Xxh3) add(sp + "buckets", num(s.buckets));
      for (const auto& [shard, ranges] : s.bucket_map) {
        add(sp + "bucket_map." + shard, ranges_to_string(ranges));
      }
      add(sp + "tables", shown(join(s.tables)));
      add(sp + "reference_tables", shown(join(s.reference_tables)));
    } else {
      add(prefix + "sharding", "none");
    }
  }

  const Routing& r = c.routing;
  add("routing.read_write_split", flag(r.read_write_split));
  add("routing.reads", to_string(r.reads));
  add("routing.load_balance", to_string(r.load_balance));
  add("routing.max_replica_lag_ms", num(r.max_replica_lag_ms));
  add("routing.read_your_writes", to_string(r.read_your_writes));
  add("routing.read_your_writes_window_ms", num(r.read_your_writes_window_ms));
  add("routing.write_functions", shown(join(r.write_functions)));

  const Health& h = c.health;
  add("health.interval_ms", num(h.interval_ms));
  add("health.timeout_ms", num(h.timeout_ms));
  add("health.failures_before_down", num(h.failures_before_down));
  add("health.user", shown(h.user));
  add("health.password", secret(h.password));
  add("health.dbname", h.dbname);

  add("failover.mode", to_string(c.failover.mode));
  add("failover.promote_after_ms", num(c.failover.promote_after_ms));
  add("failover.hold_writes_ms", num(c.failover.hold_writes_ms));

  add("stats.slow_query_ms", num(c.stats.slow_query_ms));
  add("stats.slow_query_samples", num(c.stats.slow_query_samples));
  add("stats.max_fingerprints", num(c.stats.max_fingerprints));
  add("stats.explain_slow", c.stats.explain_slow ? "true" : "false");
  add("stats.redact_literals", c.stats.redact_literals ? "true" : "false");
  return out;
}

bool is_secret_key(const std::string& key) {
  return key == "health.password" ||
         (key.starts_with("users.") &&
          (key.ends_with(".password") || key.ends_with(".server_password")));
}

}  // namespace

std::string ranges_to_string(const std::vector<BucketRange>& ranges) {
  std::string out;
  for (const BucketRange& range : ranges) {
    if (!out.empty()) out += ",";
    out += std::to_string(range.first) + "-" + std::to_string(range.last);
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> describe(const Config& config) {
  return describe_impl(config, true);
}

bool needs_restart(std::string_view describe_key) {
  return describe_key == "listen" || describe_key == "admin_listen" || describe_key == "workers";
}

std::vector<ConfigChange> diff(const Config& before, const Config& after) {
  const Pairs old_pairs = describe_impl(before, false);
  const Pairs new_pairs = describe_impl(after, false);
  std::map<std::string, std::string> old_values(old_pairs.begin(), old_pairs.end());
  std::set<std::string> new_keys;
  std::vector<ConfigChange> changes;

  auto mask = [](const std::string& key, const std::string& value) {
    return is_secret_key(key) && !value.empty() && value != "\"\"" ? std::string(kHidden) : value;
  };
  for (const auto& [key, value] : new_pairs) {
    new_keys.insert(key);
    auto it = old_values.find(key);
    if (it != old_values.end() && it->second == value) continue;
    ConfigChange change;
    change.key = key;
    change.old_value = it == old_values.end() ? "" : mask(key, it->second);
    change.new_value = mask(key, value);
    change.needs_restart = needs_restart(key);
    changes.push_back(std::move(change));
  }
  for (const auto& [key, value] : old_pairs) {
    if (new_keys.contains(key)) continue;
    changes.push_back(ConfigChange{key, mask(key, value), "", needs_restart(key)});
  }
  return changes;
}

}  // namespace pgvalve::config
