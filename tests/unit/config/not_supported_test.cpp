// pgvalve's own loads refuse every key of the design it does not carry out yet, at the key's
// line, so that no file means more than pgvalve does. One test per key; when a capability lands
// its test here turns into a test that the key works.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "config/config.h"
#include "config_test_util.h"

namespace pgvalve::config {
namespace {

using test::dump;
using test::has_error;
using test::kMinimal;

// kMinimal is 7 lines: what follows starts on line 8.
LoadResult load_working(const std::string& extra) {
  return load_config_string(std::string(kMinimal) + extra);
}

TEST(NotSupportedYet, TheMinimalFileLoads) {
  const LoadResult result = load_working("");
  EXPECT_TRUE(result.errors.empty()) << dump(result);
}

TEST(NotSupportedYet, ClientTlsWorks) {
  const LoadResult result =
      load_working("tls:\n  cert: a.crt\n  key: a.key\n  mode: require\n  client_ca: ca.crt\n");
  ASSERT_TRUE(result.errors.empty()) << dump(result);
  ASSERT_TRUE(result.config->tls.has_value());
  EXPECT_EQ(result.config->tls->mode, TlsMode::Require);
  EXPECT_EQ(result.config->tls->client_ca, "ca.crt");
}

TEST(NotSupportedYet, ServerTlsWorks) {
  for (const auto& [word, mode] :
       {std::pair{"disable", ServerTlsMode::Disable}, std::pair{"prefer", ServerTlsMode::Prefer},
        std::pair{"require", ServerTlsMode::Require},
        std::pair{"verify-ca", ServerTlsMode::VerifyCa},
        std::pair{"verify-full", ServerTlsMode::VerifyFull}}) {
    const bool verifies = mode == ServerTlsMode::VerifyCa || mode == ServerTlsMode::VerifyFull;
    const LoadResult result = load_working(std::string("server_tls: ") + word +
                                           (verifies ? "\nserver_tls_ca: /etc/ca.crt\n" : "\n"));
    ASSERT_TRUE(result.errors.empty()) << dump(result);
    EXPECT_EQ(result.config->server_tls, mode);
    EXPECT_EQ(result.config->server_tls_ca, verifies ? "/etc/ca.crt" : "");
  }
}

TEST(NotSupportedYet, PerAddressConnectionLimitsWork) {
  const LoadResult result = load_working(
      "limits:\n  connections_per_ip: 10\n  connect_rate_per_ip: 5\n  connect_burst_per_ip: 8\n");
  ASSERT_TRUE(result.errors.empty()) << dump(result);
  EXPECT_EQ(result.config->limits.connections_per_ip, 10);
  EXPECT_EQ(result.config->limits.connect_rate_per_ip, 5);
  EXPECT_EQ(result.config->limits.connect_burst_per_ip, 8);
}

TEST(NotSupportedYet, ReplicasRoutingAndHealthWork) {
  const std::string file = std::string(R"(users:
  - name: app
    password: secret
databases:
  telemetry:
    shards:
      - primary: 127.0.0.1:5432
        replicas: [127.0.0.1:5433, 127.0.0.1:5434]
routing:
  reads: any
  load_balance: round_robin
  max_replica_lag_ms: 250
  read_your_writes: time
  read_your_writes_window_ms: 900
  write_functions: [nextval, bump_counter]
health:
  interval_ms: 500
  timeout_ms: 700
  failures_before_down: 2
  user: monitor
  password: watch
  dbname: ops
)");
  const LoadResult result = load_config_string(file);
  ASSERT_TRUE(result.errors.empty()) << dump(result);
  const Config& c = *result.config;
  ASSERT_EQ(c.databases[0].shards[0].replicas.size(), 2u);
  EXPECT_EQ(c.databases[0].shards[0].replicas[1].port, 5434);
  EXPECT_EQ(c.routing.reads, ReadsTo::Any);
  EXPECT_EQ(c.routing.load_balance, LoadBalance::RoundRobin);
  EXPECT_EQ(c.routing.max_replica_lag_ms, 250);
  EXPECT_EQ(c.routing.read_your_writes, ReadYourWrites::Time);
  EXPECT_EQ(c.routing.read_your_writes_window_ms, 900);
  EXPECT_EQ(c.routing.write_functions, (std::vector<std::string>{"nextval", "bump_counter"}));
  EXPECT_EQ(c.health.interval_ms, 500);
  EXPECT_EQ(c.health.timeout_ms, 700);
  EXPECT_EQ(c.health.failures_before_down, 2);
  EXPECT_EQ(c.health.user, "monitor");
  EXPECT_EQ(c.health.password, "watch");
  EXPECT_EQ(c.health.dbname, "ops");
}

TEST(NotSupportedYet, HealthChecksLogInAsTheFirstUserByDefault) {
  const LoadResult result = load_working("");
  ASSERT_TRUE(result.errors.empty()) << dump(result);
  EXPECT_EQ(result.config->health.user, result.config->users.front().name);
  EXPECT_EQ(result.config->health.password, result.config->users.front().server_password);
  EXPECT_EQ(result.config->health.dbname, "postgres");
}

TEST(NotSupportedYet, ShardsWorkInTransactionModeNotInSessionMode) {
  const std::string shards = R"(users:
  - name: app
    password: secret
databases:
  telemetry:
    shards:
      - primary: 127.0.0.1:5432
      - primary: 127.0.0.1:5442
    sharding:
      key: device_id
      key_type: bigint
      hash: md5_mod
      tables: [telemetry]
)";
  const LoadResult ok = load_config_string(shards);
  ASSERT_TRUE(ok.errors.empty()) << dump(ok);
  const Sharding& s = *ok.config->databases[0].sharding;
  EXPECT_EQ(s.hash, HashFunction::Md5Mod);
  EXPECT_EQ(s.key_type, ShardKeyType::Bigint);

  const std::string session = shards + "pool:\n  mode: session\n";
  const LoadResult refused = load_config_string(session);
  EXPECT_TRUE(has_error(refused, "pool.mode", 15, "not supported yet"));
  ASSERT_EQ(refused.errors.size(), 1u);
  EXPECT_EQ(refused.errors[0].to_string("pgvalve.yaml"),
            "pgvalve.yaml:15:9: pool.mode: not supported yet: session mode with a sharded database "
            "(databases.telemetry has 2 shards); use transaction mode");
  // Whatever spelling the value has once read: another case, or from the environment.
  EXPECT_TRUE(has_error(load_config_string(shards + "pool:\n  mode: Session\n"), "pool.mode", 15,
                        "not supported yet"));
  ::setenv("PGVALVE_TEST_POOL_MODE", "session", 1);
  EXPECT_TRUE(has_error(load_config_string(shards + "pool:\n  mode: ${PGVALVE_TEST_POOL_MODE}\n"),
                        "pool.mode", 15, "not supported yet"));
  ::unsetenv("PGVALVE_TEST_POOL_MODE");
  EXPECT_TRUE(test::load_design(session).errors.empty());
}

TEST(NotSupportedYet, FailoverWorks) {
  const LoadResult result = load_working(
      "failover:\n  mode: promote\n  promote_after_ms: 1500\n  hold_writes_ms: 3000\n");
  ASSERT_TRUE(result.errors.empty()) << dump(result);
  EXPECT_EQ(result.config->failover.mode, FailoverMode::Promote);
  EXPECT_EQ(result.config->failover.promote_after_ms, 1500);
  EXPECT_EQ(result.config->failover.hold_writes_ms, 3000);
}

TEST(NotSupportedYet, StatsWorkUnredactedSamplesToo) {
  const LoadResult ok = load_working(
      "stats:\n  slow_query_ms: 50\n  max_fingerprints: 10\n  explain_slow: false\n  "
      "redact_literals: false\n");
  ASSERT_TRUE(ok.errors.empty()) << dump(ok);
  EXPECT_EQ(ok.config->stats.slow_query_ms, 50);
  EXPECT_EQ(ok.config->stats.max_fingerprints, 10);
  EXPECT_FALSE(ok.config->stats.redact_literals);
}

}  // namespace
}  // namespace pgvalve::config
