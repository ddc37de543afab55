// Valid files: the DESIGN.md §3 example, defaults, ${VAR} expansion, files on disk.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "config/config.h"
#include "config_test_util.h"

namespace pgvalve::config {
namespace {

using test::dump;
using test::has_error;
using test::kMinimal;
using test::load_design;
using test::load_ok;

// The §3 example with every key, values changed from the defaults where possible so that a key
// that is silently ignored shows up; the SCRAM verifier is a real one instead of "...".
std::string full_example() {
  return std::string(R"(listen: 0.0.0.0:7432
admin_listen: 127.0.0.1:9931        # HTTP: /metrics /health /ready /status
workers: 4
log_level: debug
shutdown_timeout_s: 45
tls:
  cert: server.crt
  key: server.key
  mode: require
server_tls: disable

users:
  - name: app
    password: ")") +
         test::kScramVerifier + R"("
    server_password: ${PGVALVE_TEST_APP_DB_PASSWORD}
  - name: ops
    password: ${PGVALVE_TEST_OPS_PASSWORD}
    admin: true

pool:
  mode: session
  pool_size: 21
  max_overflow: 31
  overflow_idle_s: 11
  checkout_timeout_ms: 5001
  idle_timeout_s: 601
  recycle_s: 3601
  pre_ping: true
  pre_ping_idle_s: 31
  max_client_connections: 10001
  max_prepared_statements: 501
  pin_session_state: false
  query_timeout_ms: 30000
  idle_transaction_timeout_ms: 60000

limits:
  connections_per_ip: 5
  connect_rate_per_ip: 7
  connect_burst_per_ip: 21
  auth_timeout_ms: 10001
  max_message_bytes: 1048576
  message_timeout_ms: 10001
  message_memory_bytes: 536870912

databases:
  telemetry:
    dbname: telemetry_prod
    shards:
      - name: s0
        primary: 127.0.0.1:5432
        replicas: [127.0.0.1:5433]
      - name: s1
        primary: 127.0.0.1:5442
        replicas: [127.0.0.1:5443, "[::1]:5444"]
    sharding:
      key: device_id
      hash: xxh3
      buckets: 1024
      bucket_map: {}
      tables: [telemetry, device_events]
      reference_tables: [device_types]
  billing:
    shards:
      - primary: db.example.com:5432

routing:
  read_write_split: false
  reads: any
  load_balance: round_robin
  max_replica_lag_ms: 5001
  read_your_writes: time
  read_your_writes_window_ms: 2001
  write_functions: [nextval, my_write_fn]

health:
  interval_ms: 1001
  timeout_ms: 2001
  failures_before_down: 4

failover:
  mode: promote
  promote_after_ms: 5001
  hold_writes_ms: 10001

stats:
  slow_query_ms: 101
  slow_query_samples: 1001
  max_fingerprints: 5001
  explain_slow: true
  redact_literals: false
)";
}

class EnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("PGVALVE_TEST_APP_DB_PASSWORD", "app-db-pw", 1);
    setenv("PGVALVE_TEST_OPS_PASSWORD", "ops-pw", 1);
    unsetenv("PGVALVE_TEST_UNSET");
  }
  void TearDown() override {
    unsetenv("PGVALVE_TEST_APP_DB_PASSWORD");
    unsetenv("PGVALVE_TEST_OPS_PASSWORD");
  }
};

TEST_F(EnvTest, FullExampleLoadsEveryKey) {
  const LoadResult result = load_ok(full_example());
  ASSERT_NE(result.config, nullptr);
  const Config& c = *result.config;
  EXPECT_EQ(c.source_path, "");
  EXPECT_EQ(c.listen, (Endpoint{"0.0.0.0", 7432}));
  EXPECT_EQ(c.admin_listen, (Endpoint{"127.0.0.1", 9931}));
  EXPECT_EQ(c.workers, 4);
  EXPECT_EQ(c.log_level, LogLevel::Debug);
  EXPECT_EQ(c.shutdown_timeout_s, 45);
  ASSERT_TRUE(c.tls.has_value());
  EXPECT_EQ(c.tls->cert, "server.crt");
  EXPECT_EQ(c.tls->key, "server.key");
  EXPECT_EQ(c.tls->mode, TlsMode::Require);
  EXPECT_EQ(c.server_tls, ServerTlsMode::Disable);

  ASSERT_EQ(c.users.size(), 2u);
  EXPECT_EQ(c.users[0].name, "app");
  EXPECT_EQ(c.users[0].password, test::kScramVerifier);
  EXPECT_EQ(c.users[0].server_password, "app-db-pw");
  EXPECT_FALSE(c.users[0].admin);
  EXPECT_EQ(c.users[1].name, "ops");
  EXPECT_EQ(c.users[1].password, "ops-pw");
  EXPECT_EQ(c.users[1].server_password, "ops-pw");  // plain text: defaults to password
  EXPECT_TRUE(c.users[1].admin);

  const PoolSettings& p = c.pool;
  EXPECT_EQ(p.mode, PoolMode::Session);
  EXPECT_EQ(p.pool_size, 21);
  EXPECT_EQ(p.max_overflow, 31);
  EXPECT_EQ(p.overflow_idle_s, 11);
  EXPECT_EQ(p.checkout_timeout_ms, 5001);
  EXPECT_EQ(p.idle_timeout_s, 601);
  EXPECT_EQ(p.recycle_s, 3601);
  EXPECT_TRUE(p.pre_ping);
  EXPECT_EQ(p.pre_ping_idle_s, 31);
  EXPECT_EQ(p.max_client_connections, 10001);
  EXPECT_EQ(p.max_prepared_statements, 501);
  EXPECT_FALSE(p.pin_session_state);
  EXPECT_EQ(p.query_timeout_ms, 30000);
  EXPECT_EQ(p.idle_transaction_timeout_ms, 60000);

  EXPECT_EQ(c.limits.connections_per_ip, 5);
  EXPECT_EQ(c.limits.connect_rate_per_ip, 7);
  EXPECT_EQ(c.limits.connect_burst_per_ip, 21);
  EXPECT_EQ(c.limits.auth_timeout_ms, 10001);
  EXPECT_EQ(c.limits.max_message_bytes, 1048576);
  EXPECT_EQ(c.limits.message_timeout_ms, 10001);
  EXPECT_EQ(c.limits.message_memory_bytes, 536870912);

  ASSERT_EQ(c.databases.size(), 2u);
  const Database& t = c.databases[0];  // file order
  EXPECT_EQ(t.name, "telemetry");
  EXPECT_EQ(t.dbname, "telemetry_prod");
  ASSERT_EQ(t.shards.size(), 2u);
  EXPECT_EQ(t.shards[0].name, "s0");
  EXPECT_EQ(t.shards[0].primary, (Endpoint{"127.0.0.1", 5432}));
  ASSERT_EQ(t.shards[0].replicas.size(), 1u);
  EXPECT_EQ(t.shards[0].replicas[0], (Endpoint{"127.0.0.1", 5433}));
  EXPECT_EQ(t.shards[1].name, "s1");
  ASSERT_EQ(t.shards[1].replicas.size(), 2u);
  EXPECT_EQ(t.shards[1].replicas[1], (Endpoint{"::1", 5444}));
  EXPECT_EQ(t.shards[1].replicas[1].to_string(), "[::1]:5444");
  ASSERT_TRUE(t.sharding.has_value());
  EXPECT_EQ(t.sharding->key, "device_id");
  EXPECT_EQ(t.sharding->hash, HashFunction::Xxh3);
  EXPECT_EQ(t.sharding->buckets, 1024);
  // bucket_map: {} means the even split, filled in.
  ASSERT_EQ(t.sharding->bucket_map.size(), 2u);
  ASSERT_EQ(t.sharding->bucket_map.at("s0").size(), 1u);
  EXPECT_EQ(t.sharding->bucket_map.at("s0")[0].first, 0);
  EXPECT_EQ(t.sharding->bucket_map.at("s0")[0].last, 511);
  EXPECT_EQ(t.sharding->bucket_map.at("s1")[0].first, 512);
  EXPECT_EQ(t.sharding->bucket_map.at("s1")[0].last, 1023);
  EXPECT_EQ(t.sharding->tables, (std::vector<std::string>{"telemetry", "device_events"}));
  EXPECT_EQ(t.sharding->reference_tables, (std::vector<std::string>{"device_types"}));

  const Database& b = c.databases[1];
  EXPECT_EQ(b.name, "billing");
  EXPECT_EQ(b.dbname, "billing");
  ASSERT_EQ(b.shards.size(), 1u);
  EXPECT_EQ(b.shards[0].name, "s0");
  EXPECT_EQ(b.shards[0].primary, (Endpoint{"db.example.com", 5432}));
  EXPECT_TRUE(b.shards[0].replicas.empty());
  EXPECT_FALSE(b.sharding.has_value());

  EXPECT_FALSE(c.routing.read_write_split);
  EXPECT_EQ(c.routing.reads, ReadsTo::Any);
  EXPECT_EQ(c.routing.load_balance, LoadBalance::RoundRobin);
  EXPECT_EQ(c.routing.max_replica_lag_ms, 5001);
  EXPECT_EQ(c.routing.read_your_writes, ReadYourWrites::Time);
  EXPECT_EQ(c.routing.read_your_writes_window_ms, 2001);
  EXPECT_EQ(c.routing.write_functions, (std::vector<std::string>{"nextval", "my_write_fn"}));

  EXPECT_EQ(c.health.interval_ms, 1001);
  EXPECT_EQ(c.health.timeout_ms, 2001);
  EXPECT_EQ(c.health.failures_before_down, 4);
  EXPECT_EQ(c.failover.mode, FailoverMode::Promote);
  EXPECT_EQ(c.failover.promote_after_ms, 5001);
  EXPECT_EQ(c.failover.hold_writes_ms, 10001);
  EXPECT_EQ(c.stats.slow_query_ms, 101);
  EXPECT_EQ(c.stats.slow_query_samples, 1001);
  EXPECT_EQ(c.stats.max_fingerprints, 5001);
  EXPECT_TRUE(c.stats.explain_slow);
  EXPECT_FALSE(c.stats.redact_literals);

  EXPECT_EQ(c.find_user("ops"), &c.users[1]);
  EXPECT_EQ(c.find_user("nobody"), nullptr);
  EXPECT_EQ(c.find_database("billing"), &c.databases[1]);
  EXPECT_EQ(c.find_database("Billing"), nullptr);
  EXPECT_EQ(c.find_database("pgvalve"), nullptr);
}

TEST(Load, MinimalFileGetsEveryDefault) {
  const LoadResult result = load_ok(kMinimal);
  ASSERT_NE(result.config, nullptr);
  const Config& c = *result.config;
  const Config defaults;
  EXPECT_EQ(c.listen, (Endpoint{"0.0.0.0", 6432}));
  EXPECT_EQ(c.admin_listen, (Endpoint{"127.0.0.1", 9930}));
  EXPECT_EQ(c.workers, 0);
  EXPECT_EQ(c.log_level, LogLevel::Info);
  EXPECT_EQ(c.shutdown_timeout_s, 30);
  EXPECT_FALSE(c.tls.has_value());
  EXPECT_EQ(c.server_tls, ServerTlsMode::Prefer);
  EXPECT_EQ(c.pool, PoolSettings{});
  EXPECT_EQ(c.pool.mode, PoolMode::Transaction);
  EXPECT_EQ(c.pool.pool_size, 20);
  EXPECT_EQ(c.pool.max_overflow, 30);
  EXPECT_EQ(c.limits.connect_burst_per_ip, 20);
  EXPECT_EQ(c.limits.max_message_bytes, 268435456);
  EXPECT_TRUE(c.pool.pin_session_state);
  EXPECT_EQ(c.pool.query_timeout_ms, 0);
  EXPECT_EQ(c.pool.idle_transaction_timeout_ms, 0);
  EXPECT_EQ(c.limits.message_timeout_ms, 10000);
  EXPECT_EQ(c.limits.message_memory_bytes, 402653184);
  EXPECT_EQ(c.routing.write_functions, defaults.routing.write_functions);
  EXPECT_EQ(c.routing.write_functions.size(), 6u);
  EXPECT_EQ(c.routing.reads, ReadsTo::Replicas);
  EXPECT_EQ(c.routing.read_your_writes, ReadYourWrites::Lsn);
  EXPECT_EQ(c.health.failures_before_down, 3);
  EXPECT_EQ(c.failover.mode, FailoverMode::Follow);
  EXPECT_EQ(c.stats.slow_query_ms, 100);
  EXPECT_TRUE(c.stats.redact_literals);

  ASSERT_EQ(c.users.size(), 1u);
  EXPECT_EQ(c.users[0].server_password, "secret");
  EXPECT_FALSE(c.users[0].admin);
  ASSERT_EQ(c.databases.size(), 1u);
  EXPECT_EQ(c.databases[0].dbname, "telemetry");
  EXPECT_EQ(c.databases[0].shards[0].name, "s0");
  EXPECT_FALSE(c.databases[0].sharding.has_value());
}

TEST(Load, EmptyValuesMeanDefaults) {
  const LoadResult result = load_ok(std::string(kMinimal) + "pool:\nlimits: ~\ntls:\nlisten:\n");
  ASSERT_NE(result.config, nullptr);
  EXPECT_EQ(result.config->pool, PoolSettings{});
  EXPECT_FALSE(result.config->tls.has_value());
  EXPECT_EQ(result.config->listen.port, 6432);
}

TEST(Load, SessionPinningTimeoutsAndMessageLimits) {
  const LoadResult result = load_ok(std::string(kMinimal) + R"(pool:
  pin_session_state: off
  query_timeout_ms: 0
  idle_transaction_timeout_ms: 1
limits:
  message_timeout_ms: 0
  message_memory_bytes: 65536
)");
  ASSERT_NE(result.config, nullptr);
  const Config& c = *result.config;
  EXPECT_FALSE(c.pool.pin_session_state);
  EXPECT_EQ(c.pool.query_timeout_ms, 0);
  EXPECT_EQ(c.pool.idle_transaction_timeout_ms, 1);
  EXPECT_EQ(c.limits.message_timeout_ms, 0);  // 0 = no limit
  EXPECT_EQ(c.limits.message_memory_bytes, 65536);

  // Beyond a 32-bit int: the budget is a 64-bit integer.
  const LoadResult big =
      load_ok(std::string(kMinimal) + "limits:\n  message_memory_bytes: 17179869184\n");
  ASSERT_NE(big.config, nullptr);
  EXPECT_EQ(big.config->limits.message_memory_bytes, std::int64_t{17179869184});
}

TEST(Load, PoolSettingsEqualityCoversTheNewFields) {
  // The pools are told about a reload only when PoolSettings compare unequal.
  PoolSettings changed;
  changed.pin_session_state = false;
  EXPECT_NE(changed, PoolSettings{});
  changed = PoolSettings{};
  changed.query_timeout_ms = 1;
  EXPECT_NE(changed, PoolSettings{});
  changed = PoolSettings{};
  changed.idle_transaction_timeout_ms = 1;
  EXPECT_NE(changed, PoolSettings{});
  EXPECT_EQ(PoolSettings{}, PoolSettings{});
}

TEST(Load, ServerPasswordDefaultsOnlyForPlainText) {
  const std::string yaml = std::string(R"(users:
  - name: plain
    password: pw
  - name: scram
    password: ")") + test::kScramVerifier +
                           R"("
  - name: md5
    password: )" + test::kMd5Hash +
                           R"(
  - name: explicit
    password: )" + test::kMd5Hash +
                           R"(
    server_password: upstream
  - name: admin
    password: )" + test::kMd5Hash +
                           R"(
    admin: true
databases:
  db:
    shards:
      - primary: localhost:5432
)";
  const LoadResult result = load_ok(yaml);
  ASSERT_NE(result.config, nullptr);
  const Config& c = *result.config;
  EXPECT_EQ(c.find_user("plain")->server_password, "pw");
  EXPECT_EQ(c.find_user("scram")->server_password, "");
  EXPECT_EQ(c.find_user("md5")->server_password, "");
  EXPECT_EQ(c.find_user("explicit")->server_password, "upstream");
  EXPECT_EQ(c.find_user("admin")->server_password, "");
  EXPECT_TRUE(c.find_user("admin")->admin);
}

TEST(Load, EnumWordsAndBooleansAreCaseInsensitive) {
  const LoadResult result = load_ok(std::string(kMinimal) +
                                    "log_level: WARN\npool:\n  mode: Statement\n  pre_ping: yes\n");
  ASSERT_NE(result.config, nullptr);
  EXPECT_EQ(result.config->log_level, LogLevel::Warn);
  EXPECT_EQ(result.config->pool.mode, PoolMode::Statement);
  EXPECT_TRUE(result.config->pool.pre_ping);
}

TEST(Load, QuotedNumbersAreNumbers) {
  const LoadResult result = load_ok(std::string(kMinimal) + "pool:\n  pool_size: \"7\"\n");
  ASSERT_NE(result.config, nullptr);
  EXPECT_EQ(result.config->pool.pool_size, 7);
}

TEST(Load, EndpointForms) {
  const LoadResult result = load_ok(
      std::string(kMinimal) + "listen: \"[::]:6432\"\nadmin_listen: \"[fe80::1%eth0]:9930\"\n");
  ASSERT_NE(result.config, nullptr);
  EXPECT_EQ(result.config->listen, (Endpoint{"::", 6432}));
  EXPECT_EQ(result.config->admin_listen.host, "fe80::1%eth0");
  EXPECT_EQ(result.config->listen.to_string(), "[::]:6432");
  EXPECT_EQ((Endpoint{"db-1.internal", 65535}).to_string(), "db-1.internal:65535");
}

TEST(Load, ShardingWithOneShardAndExplicitBucketMap) {
  const LoadResult one = load_ok(R"(users: [{name: app, password: pw}]
databases:
  telemetry:
    shards:
      - primary: 127.0.0.1:5432
    sharding:
      tables: [telemetry]
)");
  ASSERT_NE(one.config, nullptr);
  const Sharding& s1 = *one.config->databases[0].sharding;
  EXPECT_EQ(s1.key, "device_id");
  ASSERT_EQ(s1.bucket_map.at("s0").size(), 1u);
  EXPECT_EQ(s1.bucket_map.at("s0")[0].last, 1023);

  const LoadResult three = load_ok(R"(users: [{name: app, password: pw}]
databases:
  telemetry:
    shards:
      - {name: a, primary: "10.0.0.1:5432"}
      - {name: b, primary: "10.0.0.2:5432"}
      - {name: c, primary: "10.0.0.3:5432"}
    sharding:
      buckets: 16
      bucket_map:
        a: ["0-3", "12-15"]
        b: 4-9
        c: "10 - 11"
)");
  ASSERT_NE(three.config, nullptr);
  const Sharding& s3 = *three.config->databases[0].sharding;
  ASSERT_EQ(s3.bucket_map.at("a").size(), 2u);
  EXPECT_EQ(s3.bucket_map.at("a")[1].first, 12);
  EXPECT_EQ(s3.bucket_map.at("b")[0].last, 9);
  EXPECT_EQ(s3.bucket_map.at("c")[0].first, 10);
}

TEST(Load, EvenSplitWhenBucketsDoNotDivide) {
  const LoadResult result = load_ok(R"(users: [{name: app, password: pw}]
databases:
  t:
    shards:
      - primary: "10.0.0.1:5432"
      - primary: "10.0.0.2:5432"
      - primary: "10.0.0.3:5432"
    sharding:
      buckets: 10
)");
  ASSERT_NE(result.config, nullptr);
  const auto& map = result.config->databases[0].sharding->bucket_map;
  EXPECT_EQ(map.at("s0")[0].first, 0);
  EXPECT_EQ(map.at("s0")[0].last, 2);
  EXPECT_EQ(map.at("s1")[0].first, 3);
  EXPECT_EQ(map.at("s1")[0].last, 5);
  EXPECT_EQ(map.at("s2")[0].first, 6);
  EXPECT_EQ(map.at("s2")[0].last, 9);
}

TEST(Load, Md5ModLeavesBucketMapEmpty) {
  const LoadResult result = load_ok(R"(users: [{name: app, password: pw}]
databases:
  t:
    shards:
      - primary: "10.0.0.1:5432"
      - primary: "10.0.0.2:5432"
    sharding:
      hash: md5_mod
)");
  ASSERT_NE(result.config, nullptr);
  EXPECT_EQ(result.config->databases[0].sharding->hash, HashFunction::Md5Mod);
  EXPECT_TRUE(result.config->databases[0].sharding->bucket_map.empty());
}

TEST_F(EnvTest, ExpandsVariablesInAnyScalar) {
  setenv("PGVALVE_TEST_PORT", "7000", 1);
  setenv("PGVALVE_TEST_DB", "fleet", 1);
  setenv("PGVALVE_TEST_WEIRD", "a: b # not yaml", 1);
  const LoadResult result = load_ok(R"(listen: 0.0.0.0:${PGVALVE_TEST_PORT}
pool:
  pool_size: ${PGVALVE_TEST_PORT}
users:
  - name: u-${PGVALVE_TEST_DB}
    password: "$${PGVALVE_TEST_WEIRD}$x"
databases:
  ${PGVALVE_TEST_DB}:
    shards:
      - primary: db:${PGVALVE_TEST_PORT}
)");
  ASSERT_NE(result.config, nullptr);
  const Config& c = *result.config;
  EXPECT_EQ(c.listen.port, 7000);
  EXPECT_EQ(c.pool.pool_size, 7000);
  EXPECT_EQ(c.users[0].name, "u-fleet");
  // The value is taken literally; "$$" is not an escape, a "$" not followed by "{" stays.
  EXPECT_EQ(c.users[0].password, "$a: b # not yaml$x");
  EXPECT_EQ(c.databases[0].name, "fleet");
  EXPECT_EQ(c.databases[0].shards[0].primary, (Endpoint{"db", 7000}));
  unsetenv("PGVALVE_TEST_PORT");
  unsetenv("PGVALVE_TEST_DB");
  unsetenv("PGVALVE_TEST_WEIRD");
}

TEST_F(EnvTest, UnsetVariableIsAnErrorNamingIt) {
  const LoadResult result = load_design(R"(users:
  - name: app
    password: ${PGVALVE_TEST_UNSET}
    server_password: ${PGVALVE_TEST_UNSET_TOO}
databases:
  telemetry:
    shards:
      - primary: 127.0.0.1:${}
)");
  EXPECT_EQ(result.config, nullptr);
  EXPECT_TRUE(has_error(result, "users[0].password", 3, "PGVALVE_TEST_UNSET is not set"));
  EXPECT_TRUE(has_error(result, "users[0].server_password", 4, "PGVALVE_TEST_UNSET_TOO"));
  // No follow-on "must not be empty" for the value that could not be expanded.
  EXPECT_EQ(std::count_if(result.errors.begin(), result.errors.end(),
                          [](const ConfigError& e) { return e.path == "users[0].password"; }),
            1)
      << dump(result);
  EXPECT_TRUE(has_error(result, "databases.telemetry.shards[0].primary", 8, "invalid"));
}

TEST_F(EnvTest, UnterminatedVariable) {
  const LoadResult result =
      load_design(std::string(kMinimal) + "log_level: ${PGVALVE_TEST_OPS_PASSWORD\n");
  EXPECT_TRUE(has_error(result, "log_level", 8, "unterminated"));
}

TEST(LoadFile, ReadsAFileAndRecordsItsPath) {
  const std::string path = ::testing::TempDir() + "pgvalve_config_test.yaml";
  {
    std::ofstream out(path);
    out << kMinimal;
  }
  const LoadResult result = load_config_file(path);
  ASSERT_TRUE(result.errors.empty()) << dump(result);
  ASSERT_NE(result.config, nullptr);
  EXPECT_EQ(result.config->source_path, path);
  std::remove(path.c_str());
}

TEST(LoadFile, AFileLargerThanAnyConfigurationIsRefusedUnparsed) {
  const std::string path = ::testing::TempDir() + "pgvalve_config_large.yaml";
  {
    std::ofstream out(path);
    out << kMinimal << "# " << std::string(kMaxConfigFileBytes, 'x') << "\n";
  }
  const LoadResult result = load_config_file(path);
  EXPECT_EQ(result.config, nullptr);
  ASSERT_EQ(result.errors.size(), 1u) << dump(result);
  EXPECT_NE(result.errors[0].message.find("larger than 1 MiB"), std::string::npos);
  std::remove(path.c_str());
}

TEST(LoadFile, ADirectoryIsSaidToBeOne) {
  const LoadResult result = load_config_file(::testing::TempDir());
  ASSERT_EQ(result.errors.size(), 1u) << dump(result);
  EXPECT_NE(result.errors[0].message.find("is a directory"), std::string::npos);
}

TEST(LoadFile, AnEmptyFileIsRefusedAtItsFirstLine) {
  const LoadResult result = load_config_string("# nothing but a comment\n");
  ASSERT_EQ(result.errors.size(), 1u) << dump(result);
  EXPECT_EQ(result.errors[0].to_string("p.yaml"),
            "p.yaml:1:1: the configuration is empty: users and databases are required");
}

TEST(LoadFile, MissingFileIsOneError) {
  const LoadResult result = load_config_file("/nonexistent/pgvalve.yaml");
  EXPECT_EQ(result.config, nullptr);
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_NE(result.errors[0].message.find("cannot open"), std::string::npos);
  EXPECT_EQ(result.errors[0].to_string("/nonexistent/pgvalve.yaml"),
            "/nonexistent/pgvalve.yaml: " + result.errors[0].message);
}

}  // namespace
}  // namespace pgvalve::config
