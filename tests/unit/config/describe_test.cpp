// describe() (`--check`, SHOW CONFIG) and diff() (reload).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "config/config.h"
#include "config_test_util.h"

namespace pgvalve::config {
namespace {

using test::kMinimal;
using test::load_ok;

std::map<std::string, std::string> as_map(const Config& c) {
  const auto pairs = describe(c);
  return {pairs.begin(), pairs.end()};
}

const char* kSharded = R"(users:
  - name: app
    password: plain-secret
  - name: ops
    password: md581ad3d00fcdf98fbc5f8f9a859590b46
    admin: true
databases:
  telemetry:
    shards:
      - name: s0
        primary: 127.0.0.1:5432
        replicas: [127.0.0.1:5433, 127.0.0.1:5434]
      - name: s1
        primary: 127.0.0.1:5442
    sharding:
      tables: [telemetry]
)";

TEST(Describe, HidesPasswords) {
  const LoadResult result = load_ok(kSharded);
  ASSERT_NE(result.config, nullptr);
  const auto pairs = describe(*result.config);
  for (const auto& [key, value] : pairs) {
    EXPECT_EQ(value.find("plain-secret"), std::string::npos) << key;
    EXPECT_EQ(value.find("81ad3d00"), std::string::npos) << key;
  }
  const auto m = as_map(*result.config);
  EXPECT_EQ(m.at("users.app.password"), "<hidden>");
  EXPECT_EQ(m.at("users.app.server_password"), "<hidden>");
  EXPECT_EQ(m.at("users.ops.password"), "<hidden>");
  EXPECT_EQ(m.at("health.password"), "<hidden>");        // the first user's server password
  EXPECT_EQ(m.at("users.ops.server_password"), "\"\"");  // none: shown as empty
  EXPECT_EQ(m.at("users.ops.admin"), "true");
}

TEST(Describe, ListsEveryKeyWithDefaults) {
  const LoadResult result = load_ok(kSharded);
  ASSERT_NE(result.config, nullptr);
  const auto m = as_map(*result.config);
  const std::map<std::string, std::string> expected = {
      {"listen", "0.0.0.0:6432"},
      {"admin_listen", "127.0.0.1:9930"},
      {"workers", "0"},
      {"log_level", "info"},
      {"shutdown_timeout_s", "30"},
      {"tls", "none"},
      {"server_tls", "prefer"},
      {"pool.mode", "transaction"},
      {"pool.pool_size", "20"},
      {"pool.max_overflow", "30"},
      {"pool.overflow_idle_s", "10"},
      {"pool.checkout_timeout_ms", "5000"},
      {"pool.idle_timeout_s", "600"},
      {"pool.recycle_s", "3600"},
      {"pool.pre_ping", "false"},
      {"pool.pre_ping_idle_s", "30"},
      {"pool.max_client_connections", "10000"},
      {"pool.max_prepared_statements", "500"},
      {"pool.pin_session_state", "true"},
      {"pool.query_timeout_ms", "0"},
      {"pool.idle_transaction_timeout_ms", "0"},
      {"limits.connections_per_ip", "0"},
      {"limits.connect_rate_per_ip", "0"},
      {"limits.connect_burst_per_ip", "20"},
      {"limits.auth_timeout_ms", "10000"},
      {"limits.max_message_bytes", "268435456"},
      {"limits.message_timeout_ms", "10000"},
      {"limits.message_memory_bytes", "402653184"},
      {"databases.telemetry.dbname", "telemetry"},
      {"databases.telemetry.shards.s0.primary", "127.0.0.1:5432"},
      {"databases.telemetry.shards.s0.replicas", "127.0.0.1:5433,127.0.0.1:5434"},
      {"databases.telemetry.shards.s1.primary", "127.0.0.1:5442"},
      {"databases.telemetry.shards.s1.replicas", "\"\""},
      {"databases.telemetry.sharding.key", "device_id"},
      {"databases.telemetry.sharding.hash", "xxh3"},
      {"databases.telemetry.sharding.buckets", "1024"},
      {"databases.telemetry.sharding.bucket_map.s0", "0-511"},
      {"databases.telemetry.sharding.bucket_map.s1", "512-1023"},
      {"databases.telemetry.sharding.tables", "telemetry"},
      {"databases.telemetry.sharding.reference_tables", "\"\""},
      {"routing.read_write_split", "true"},
      {"routing.reads", "replicas"},
      {"routing.load_balance", "least_connections"},
      {"routing.max_replica_lag_ms", "5000"},
      {"routing.read_your_writes", "lsn"},
      {"routing.read_your_writes_window_ms", "2000"},
      {"routing.write_functions",
       "nextval,setval,pg_advisory_lock,pg_advisory_xact_lock,pg_notify,txid_current"},
      {"health.interval_ms", "1000"},
      {"health.timeout_ms", "2000"},
      {"health.failures_before_down", "3"},
      {"health.dbname", "postgres"},
      {"failover.mode", "follow"},
      {"failover.promote_after_ms", "5000"},
      {"failover.hold_writes_ms", "10000"},
  };
  for (const auto& [key, value] : expected) {
    ASSERT_TRUE(m.contains(key)) << key;
    EXPECT_EQ(m.at(key), value) << key;
  }
  EXPECT_EQ(m.at("stats.slow_query_ms"), "100");
  EXPECT_EQ(m.at("stats.max_fingerprints"), "5000");
  EXPECT_EQ(describe(*result.config).front().first, "listen");  // file order, not sorted
}

TEST(Describe, NewPoolAndLimitsKeysFollowTheirSection) {
  const LoadResult result = load_ok(std::string(kMinimal) + R"(pool:
  pin_session_state: false
  query_timeout_ms: 30000
  idle_transaction_timeout_ms: 60000
limits:
  message_timeout_ms: 0
  message_memory_bytes: 1073741824
)");
  ASSERT_NE(result.config, nullptr);
  const auto pairs = describe(*result.config);
  std::vector<std::string> keys;
  for (const auto& [key, value] : pairs)
    keys.push_back(key);
  auto at = [&](const std::string& key) {
    return std::find(keys.begin(), keys.end(), key) - keys.begin();
  };
  const auto m = as_map(*result.config);
  EXPECT_EQ(m.at("pool.pin_session_state"), "false");
  EXPECT_EQ(m.at("pool.query_timeout_ms"), "30000");
  EXPECT_EQ(m.at("pool.idle_transaction_timeout_ms"), "60000");
  EXPECT_EQ(m.at("limits.message_timeout_ms"), "0");
  EXPECT_EQ(m.at("limits.message_memory_bytes"), "1073741824");
  // Same order as the struct and the docs: after the section's older keys, before the next one.
  EXPECT_EQ(at("pool.pin_session_state"), at("pool.max_prepared_statements") + 1);
  EXPECT_EQ(at("pool.query_timeout_ms"), at("pool.pin_session_state") + 1);
  EXPECT_EQ(at("pool.idle_transaction_timeout_ms"), at("pool.query_timeout_ms") + 1);
  EXPECT_EQ(at("limits.connections_per_ip"), at("pool.idle_transaction_timeout_ms") + 1);
  EXPECT_EQ(at("limits.message_timeout_ms"), at("limits.max_message_bytes") + 1);
  EXPECT_EQ(at("limits.message_memory_bytes"), at("limits.message_timeout_ms") + 1);
}

TEST(Describe, TlsAndUnshardedDatabase) {
  const LoadResult result =
      load_ok(std::string(kMinimal) + "tls: {cert: /etc/s.crt, key: /etc/s.key}\n");
  ASSERT_NE(result.config, nullptr);
  const auto m = as_map(*result.config);
  EXPECT_EQ(m.at("tls.cert"), "/etc/s.crt");
  EXPECT_EQ(m.at("tls.mode"), "prefer");
  EXPECT_FALSE(m.contains("tls"));
  EXPECT_EQ(m.at("databases.telemetry.sharding"), "none");
}

TEST(Describe, EnumNames) {
  EXPECT_STREQ(to_string(PoolMode::Statement), "statement");
  EXPECT_STREQ(to_string(LogLevel::Warn), "warn");
  EXPECT_STREQ(to_string(HashFunction::PgPartition), "pg_partition");
  EXPECT_STREQ(to_string(LoadBalance::RoundRobin), "round_robin");
}

TEST(Diff, ReportsChangesHidesSecretsAndFlagsRestartKeys) {
  const LoadResult before = load_ok(kMinimal);
  const LoadResult after = load_ok(R"(listen: 0.0.0.0:7432
pool:
  pool_size: 50
users:
  - name: app
    password: new-secret
  - name: extra
    password: pw
databases:
  telemetry:
    shards:
      - primary: 127.0.0.1:5432
)");
  ASSERT_NE(before.config, nullptr);
  ASSERT_NE(after.config, nullptr);
  EXPECT_TRUE(diff(*before.config, *before.config).empty());

  const auto changes = diff(*before.config, *after.config);
  auto find = [&](const std::string& key) -> const ConfigChange* {
    for (const ConfigChange& c : changes) {
      if (c.key == key) return &c;
    }
    return nullptr;
  };
  const ConfigChange* listen = find("listen");
  ASSERT_NE(listen, nullptr);
  EXPECT_EQ(listen->old_value, "0.0.0.0:6432");
  EXPECT_EQ(listen->new_value, "0.0.0.0:7432");
  EXPECT_TRUE(listen->needs_restart);

  const ConfigChange* pool_size = find("pool.pool_size");
  ASSERT_NE(pool_size, nullptr);
  EXPECT_EQ(pool_size->new_value, "50");
  EXPECT_FALSE(pool_size->needs_restart);

  const ConfigChange* password = find("users.app.password");
  ASSERT_NE(password, nullptr);  // noticed although both sides are hidden
  EXPECT_EQ(password->old_value, "<hidden>");
  EXPECT_EQ(password->new_value, "<hidden>");

  const ConfigChange* added = find("users.extra.admin");
  ASSERT_NE(added, nullptr);
  EXPECT_EQ(added->old_value, "");
  EXPECT_EQ(added->new_value, "false");

  EXPECT_EQ(find("workers"), nullptr);
  EXPECT_TRUE(needs_restart("admin_listen"));
  EXPECT_TRUE(needs_restart("workers"));
  EXPECT_FALSE(needs_restart("pool.mode"));
}

TEST(Diff, ReportsSessionPinningTimeoutsAndMessageLimits) {
  const LoadResult before = load_ok(kMinimal);
  const LoadResult after = load_ok(std::string(kMinimal) + R"(pool:
  pin_session_state: false
  query_timeout_ms: 30000
  idle_transaction_timeout_ms: 60000
limits:
  message_timeout_ms: 0
  message_memory_bytes: 1073741824
)");
  ASSERT_NE(before.config, nullptr);
  ASSERT_NE(after.config, nullptr);
  const auto changes = diff(*before.config, *after.config);
  const std::vector<ConfigChange> expected = {
      {"pool.pin_session_state", "true", "false", false},
      {"pool.query_timeout_ms", "0", "30000", false},
      {"pool.idle_transaction_timeout_ms", "0", "60000", false},
      {"limits.message_timeout_ms", "10000", "0", false},
      {"limits.message_memory_bytes", "402653184", "1073741824", false},
  };
  ASSERT_EQ(changes.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(changes[i].key, expected[i].key);
    EXPECT_EQ(changes[i].old_value, expected[i].old_value) << expected[i].key;
    EXPECT_EQ(changes[i].new_value, expected[i].new_value) << expected[i].key;
    EXPECT_EQ(changes[i].needs_restart, expected[i].needs_restart) << expected[i].key;
  }
  EXPECT_NE(before.config->pool, after.config->pool);  // the pools are told on reload
}

TEST(Diff, RemovedKeysComeLast) {
  const LoadResult before = load_ok(kSharded);
  const LoadResult after = load_ok(kMinimal);
  ASSERT_NE(before.config, nullptr);
  ASSERT_NE(after.config, nullptr);
  const auto changes = diff(*before.config, *after.config);
  ASSERT_FALSE(changes.empty());
  const auto removed = std::find_if(changes.begin(), changes.end(), [](const ConfigChange& c) {
    return c.key == "databases.telemetry.shards.s1.primary";
  });
  ASSERT_NE(removed, changes.end());
  EXPECT_EQ(removed->old_value, "127.0.0.1:5442");
  EXPECT_EQ(removed->new_value, "");
  EXPECT_EQ(changes.back().new_value, "");
}

TEST(ReloadChange, WhatClientsLoggedInBeforeCannotFollow) {
  const auto database = [](const std::string& yaml) {
    const LoadResult r = load_ok("users: [{name: app, password: pw}]\ndatabases:\n" + yaml);
    return r.config ? r.config->databases.front() : Database{};
  };
  const Database one = database("  t:\n    shards: [{primary: 10.0.0.1:5432}]\n");
  // Other hosts, or another name for the one shard: they go on.
  EXPECT_EQ(database_change(one, &one), ReloadChange::None);
  const Database moved = database("  t:\n    shards: [{name: a, primary: 10.0.0.2:5432}]\n");
  EXPECT_EQ(database_change(one, &moved), ReloadChange::None);
  // The same name on the servers, written out.
  const Database same = database("  t:\n    dbname: t\n    shards: [{primary: 10.0.0.1:5432}]\n");
  EXPECT_EQ(database_change(one, &same), ReloadChange::None);
  const Database renamed =
      database("  t:\n    dbname: t2\n    shards: [{primary: 10.0.0.1:5432}]\n");
  EXPECT_EQ(database_change(one, &renamed), ReloadChange::Dbname);
  EXPECT_EQ(database_change(renamed, &one), ReloadChange::Dbname);
  EXPECT_EQ(database_change(one, nullptr), ReloadChange::DatabaseRemoved);
  const std::string two_shards =
      "    shards: [{name: s0, primary: 10.0.0.1:5432}, {name: s1, primary: 10.0.0.2:5432}]\n";
  const Database sharded = database("  t:\n" + two_shards + "    sharding: {tables: [x]}\n");
  EXPECT_EQ(database_change(one, &sharded), ReloadChange::ShardMap);
  const Database remapped = database("  t:\n    dbname: t2\n" + two_shards +
                                     "    sharding: {tables: [x], hash: md5_mod}\n");
  EXPECT_EQ(database_change(sharded, &remapped), ReloadChange::ShardMap);
  EXPECT_EQ(database_change(sharded, &sharded), ReloadChange::None);
}

TEST(ReloadChange, AUserRemovedByTheReloadLeavesAsARemovedDatabaseDoes) {
  const std::string databases = "databases:\n  t:\n    shards: [{primary: 10.0.0.1:5432}]\n";
  const LoadResult before =
      load_ok("users: [{name: app, password: pw}, {name: report, password: pw}]\n" + databases);
  ASSERT_TRUE(before.config);
  const Database& t = before.config->databases.front();
  EXPECT_EQ(reload_change(t, "app", *before.config), ReloadChange::None);
  const LoadResult after = load_ok("users: [{name: app, password: changed}]\n" + databases);
  ASSERT_TRUE(after.config);
  // A new password is not a reason to leave; a missing user is.
  EXPECT_EQ(reload_change(t, "app", *after.config), ReloadChange::None);
  EXPECT_EQ(reload_change(t, "report", *after.config), ReloadChange::UserRemoved);
  // The database's own change is told first.
  const LoadResult other = load_ok(
      "users: [{name: app, password: pw}]\ndatabases:\n  u:\n    shards: [{primary: "
      "10.0.0.1:5432}]\n");
  ASSERT_TRUE(other.config);
  EXPECT_EQ(reload_change(t, "report", *other.config), ReloadChange::DatabaseRemoved);
}

}  // namespace
}  // namespace pgvalve::config
