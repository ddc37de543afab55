// Invalid files: every kind of error names its key path and 1-based line/column, and all of
// them are reported together.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config/config.h"
#include "config_test_util.h"
#include "protocol/auth.h"

namespace pgvalve::config {
namespace {

using test::dump;
using test::has_error;
using test::kMinimal;
using test::load_design;

// kMinimal is 7 lines; sections appended to it start on line 8.
LoadResult load_with(const std::string& extra) {
  LoadResult result = load_design(std::string(kMinimal) + extra);
  EXPECT_EQ(result.config, nullptr) << "expected errors";
  EXPECT_FALSE(result.errors.empty());
  return result;
}

TEST(Errors, YamlSyntaxErrorIsOneErrorWithPosition) {
  const LoadResult result = load_design("users:\n  - name: app\n    password: [pw\n");
  EXPECT_EQ(result.config, nullptr);
  ASSERT_EQ(result.errors.size(), 1u) << dump(result);
  EXPECT_EQ(result.errors[0].path, "");
  EXPECT_GT(result.errors[0].line, 0);
  EXPECT_GT(result.errors[0].column, 0);
  EXPECT_NE(result.errors[0].message.find("YAML syntax error"), std::string::npos);
}

TEST(Errors, TabIndentationIsASyntaxError) {
  const LoadResult result = load_design("listen: 0.0.0.0:6432\n\tworkers: 2\n");
  ASSERT_EQ(result.errors.size(), 1u) << dump(result);
  EXPECT_EQ(result.errors[0].line, 2);
  EXPECT_EQ(result.errors[0].column, 1);
}

TEST(Errors, EmptyAndNonMapDocuments) {
  EXPECT_TRUE(has_error(load_design(""), "", 0, "empty"));
  EXPECT_TRUE(has_error(load_design("# only a comment\n"), "", 0, "empty"));
  EXPECT_TRUE(has_error(load_design("- a\n- b\n"), "", 1, "expected a map"));
  EXPECT_TRUE(has_error(load_design("just text\n"), "", 1, "expected a map"));
  EXPECT_TRUE(has_error(load_design(std::string(kMinimal) + "---\nworkers: 1\n"), "", 0,
                        "only one YAML document"));
}

// yaml-cpp 0.7's LoadAll loops for ever, allocating, on these (upstream issue #1040); found by
// tests/fuzz/config_fuzz. They are syntax errors at the token no value can start with.
TEST(Errors, ADocumentStartingWithACommaIsASyntaxErrorNotAHang) {
  EXPECT_TRUE(has_error(load_design(",\n"), "", 1, "YAML syntax error"));
  EXPECT_TRUE(has_error(load_design(",sers:\n  - name: app\n"), "", 1, "YAML syntax error"));
  const LoadResult indented = load_design("# users first\n  , x\n");
  ASSERT_EQ(indented.errors.size(), 1u) << dump(indented);
  EXPECT_EQ(indented.errors[0].line, 2);
  EXPECT_EQ(indented.errors[0].column, 3);
  EXPECT_TRUE(has_error(load_design("workers: 1\n---\n,\n"), "", 2, "only one YAML document"));
}

TEST(Errors, UsersAndDatabasesAreRequired) {
  const LoadResult missing = load_design("workers: 2\n");
  EXPECT_TRUE(has_error(missing, "users", 1, "required"));
  EXPECT_TRUE(has_error(missing, "databases", 1, "required"));

  const LoadResult empty = load_design("users: []\ndatabases: {}\n");
  EXPECT_TRUE(has_error(empty, "users", 1, "at least one user"));
  EXPECT_TRUE(has_error(empty, "databases", 2, "at least one database"));
}

TEST(Errors, UnknownKeysWithHint) {
  const LoadResult result = load_with("pool:\n  pool_sise: 5\n  colour: red\nlisten_addr: x\n");
  EXPECT_TRUE(has_error(result, "pool.pool_sise", 9, "did you mean \"pool_size\""));
  EXPECT_TRUE(has_error(result, "pool.colour", 10, "unknown key \"colour\""));
  EXPECT_TRUE(has_error(result, "listen_addr", 11, "unknown key"));
  EXPECT_EQ(result.errors[0].column, 3);
}

TEST(Errors, UnknownKeysInNestedSections) {
  const LoadResult result = load_design(R"(users:
  - name: app
    password: pw
    role: admin
databases:
  telemetry:
    dbnmae: x
    shards:
      - primary: 127.0.0.1:5432
        weight: 2
    sharding:
      keys: device_id
)");
  EXPECT_TRUE(has_error(result, "users[0].role", 4, "unknown key"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.dbnmae", 7, "did you mean \"dbname\""));
  EXPECT_TRUE(has_error(result, "databases.telemetry.shards[0].weight", 10, "unknown key"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.sharding.keys", 12, "did you mean \"key\""));
}

TEST(Errors, DuplicateKey) {
  const LoadResult result = load_with("workers: 1\nworkers: 2\n");
  EXPECT_TRUE(has_error(result, "workers", 9, "duplicate key"));
}

TEST(Errors, WrongTypes) {
  const LoadResult result = load_with(R"(pool:
  pool_size: twenty
  pre_ping: maybe
  mode: [transaction]
limits: 5
stats:
  slow_query_ms: 1.5
health: [1, 2]
)");
  EXPECT_TRUE(has_error(result, "pool.pool_size", 9, "expected an integer, got \"twenty\""));
  EXPECT_TRUE(has_error(result, "pool.pre_ping", 10, "expected true or false"));
  EXPECT_TRUE(has_error(result, "pool.mode", 11, "got a list"));
  EXPECT_TRUE(has_error(result, "limits", 12, "expected a map"));
  EXPECT_TRUE(has_error(result, "stats.slow_query_ms", 14, "expected an integer"));
  EXPECT_TRUE(has_error(result, "health", 15, "got a list"));
}

TEST(Errors, MapWhereAListIsExpected) {
  const LoadResult result = load_design(R"(users:
  name: app
  password: pw
databases:
  telemetry:
    shards:
      primary: 127.0.0.1:5432
)");
  EXPECT_TRUE(has_error(result, "users", 2, "expected a list, got a map"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.shards", 7, "expected a list, got a map"));
}

TEST(Errors, ListWhereAMapIsExpected) {
  const LoadResult result = load_design(R"(users:
  - app
databases:
  - telemetry
)");
  EXPECT_TRUE(has_error(result, "users[0]", 2, "expected a map"));
  EXPECT_TRUE(has_error(result, "databases", 4, "expected a map of database name"));
}

TEST(Errors, ImpossibleNumbers) {
  const LoadResult result = load_with(R"(workers: -1
shutdown_timeout_s: -5
pool:
  pool_size: 0
  max_overflow: -1
  checkout_timeout_ms: 0
limits:
  connections_per_ip: -1
  max_message_bytes: 99999999999
health:
  failures_before_down: 0
stats:
  max_fingerprints: 99999999999999999999999
)");
  EXPECT_TRUE(has_error(result, "workers", 8, "between 0 and 1024, got -1"));
  EXPECT_TRUE(has_error(result, "shutdown_timeout_s", 9, "at least 0"));
  EXPECT_TRUE(has_error(result, "pool.pool_size", 11, "must be at least 1, got 0"));
  EXPECT_TRUE(has_error(result, "pool.max_overflow", 12, "at least 0"));
  EXPECT_TRUE(has_error(result, "pool.checkout_timeout_ms", 13, "at least 1"));
  EXPECT_TRUE(has_error(result, "limits.connections_per_ip", 15, "at least 0"));
  EXPECT_TRUE(has_error(result, "limits.max_message_bytes", 16, "between 1024 and 2147483647"));
  EXPECT_TRUE(has_error(result, "health.failures_before_down", 18, "at least 1"));
  EXPECT_TRUE(has_error(result, "stats.max_fingerprints", 20, "too large"));
  EXPECT_EQ(result.errors.size(), 9u) << dump(result);
}

TEST(Errors, APoolOfMoreThanAHundredThousandConnectionsIsRefused) {
  // The sum would overflow an int (a pool that never opens a connection).
  LoadResult result = load_with("pool:\n  pool_size: 2147483647\n");
  EXPECT_TRUE(has_error(result, "pool.pool_size", 9,
                        "pool_size (2147483647) + max_overflow (30) is 2147483677, more than the "
                        "100000 server connections a pool may have"));
  EXPECT_EQ(result.errors.size(), 1u) << dump(result);
  result = load_with("pool:\n  pool_size: 2147483647\n  max_overflow: 2147483647\n");
  EXPECT_TRUE(has_error(result, "pool.pool_size", 9, "is 4294967294"));
  // At the larger of the two, and named by both.
  result = load_with("pool:\n  pool_size: 10\n  max_overflow: 99991\n");
  EXPECT_TRUE(
      has_error(result, "pool.max_overflow", 10, "lower pool.pool_size or pool.max_overflow"));
  // The bound itself is accepted.
  test::load_ok(std::string(kMinimal) + "pool:\n  pool_size: 50000\n  max_overflow: 50000\n");
}

TEST(Errors, SessionPinningTimeoutsAndMessageLimitsWrongTypes) {
  const LoadResult result = load_with(R"(pool:
  pin_session_state: sometimes
  query_timeout_ms: 5s
  idle_transaction_timeout_ms: [1]
limits:
  message_timeout_ms: ten
  message_memory_bytes: 256MiB
)");
  EXPECT_TRUE(
      has_error(result, "pool.pin_session_state", 9, "expected true or false, got \"sometimes\""));
  EXPECT_TRUE(has_error(result, "pool.query_timeout_ms", 10, "expected an integer, got \"5s\""));
  EXPECT_TRUE(
      has_error(result, "pool.idle_transaction_timeout_ms", 11, "expected an integer, got a list"));
  EXPECT_TRUE(
      has_error(result, "limits.message_timeout_ms", 13, "expected an integer, got \"ten\""));
  EXPECT_TRUE(
      has_error(result, "limits.message_memory_bytes", 14, "expected an integer, got \"256MiB\""));
  EXPECT_EQ(result.errors.size(), 5u) << dump(result);  // all of them, not just the first
}

TEST(Errors, SessionPinningTimeoutsAndMessageLimitsNegative) {
  const LoadResult result = load_with(R"(pool:
  pin_session_state: -1
  query_timeout_ms: -1
  idle_transaction_timeout_ms: -5
limits:
  message_timeout_ms: -1
  message_memory_bytes: -1
)");
  EXPECT_TRUE(has_error(result, "pool.pin_session_state", 9, "expected true or false, got \"-1\""));
  EXPECT_TRUE(has_error(result, "pool.query_timeout_ms", 10, "must be at least 0, got -1"));
  EXPECT_TRUE(
      has_error(result, "pool.idle_transaction_timeout_ms", 11, "must be at least 0, got -5"));
  EXPECT_TRUE(has_error(result, "limits.message_timeout_ms", 13, "must be at least 0, got -1"));
  EXPECT_TRUE(
      has_error(result, "limits.message_memory_bytes", 14, "must be at least 65536, got -1"));
  EXPECT_EQ(result.errors.size(), 5u) << dump(result);
}

TEST(Errors, SessionPinningTimeoutsAndMessageLimitsOutOfRange) {
  const LoadResult result = load_with(R"(pool:
  query_timeout_ms: 2147483648
limits:
  message_memory_bytes: 65535
  message_timeout_ms: 99999999999999999999
)");
  EXPECT_TRUE(has_error(result, "pool.query_timeout_ms", 9, "between 0 and 2147483647"));
  EXPECT_TRUE(
      has_error(result, "limits.message_memory_bytes", 11, "must be at least 65536, got 65535"));
  EXPECT_TRUE(has_error(result, "limits.message_timeout_ms", 12, "too large"));
  EXPECT_EQ(result.errors.size(), 3u) << dump(result);
  // file:line:column: key.path: message
  EXPECT_EQ(result.errors[1].to_string("/etc/pgvalve.yaml"),
            "/etc/pgvalve.yaml:11:25: limits.message_memory_bytes: must be at least 65536, got "
            "65535");
}

TEST(Errors, BadEndpoints) {
  const LoadResult result = load_design(R"(listen: 0.0.0.0
admin_listen: 127.0.0.1:70000
users: [{name: app, password: pw}]
databases:
  telemetry:
    shards:
      - primary: ::1:5432
        replicas: ["[::1]", "host:abc", ":5432", "bad host:1"]
)");
  EXPECT_TRUE(has_error(result, "listen", 1, "missing port"));
  EXPECT_TRUE(has_error(result, "admin_listen", 2, "out of range 1-65535"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.shards[0].primary", 7, "needs brackets"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.shards[0].replicas[0]", 8, "missing port"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.shards[0].replicas[1]", 8, "invalid port"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.shards[0].replicas[2]", 8, "missing host"));
  EXPECT_TRUE(
      has_error(result, "databases.telemetry.shards[0].replicas[3]", 8, "invalid host name"));
  EXPECT_TRUE(has_error(load_with("listen: 0.0.0.0:0\n"), "listen", 8, "out of range"));
  EXPECT_TRUE(has_error(load_with("listen: [::1]\n"), "listen", 8, "quote IPv6"));
}

TEST(Errors, ListenAndAdminListenMustNotCollide) {
  EXPECT_TRUE(has_error(load_with("admin_listen: 127.0.0.1:6432\n"), "admin_listen", 8,
                        "conflicts with listen"));
  // Both doors share their ports (SO_REUSEPORT): a name that resolves to the other's address
  // would have the kernel split connections between them.
  for (const char* other : {"localhost:6432", "0.0.0.0:6432", "127.0.0.1:6432"}) {
    EXPECT_TRUE(
        has_error(load_with(std::string("listen: 127.0.0.1:6432\nadmin_listen: ") + other + "\n"),
                  "admin_listen", 9, "conflicts with listen"))
        << other;
  }
  for (const char* other : {"127.0.0.2:6432", "\"[::1]:6432\""}) {
    const LoadResult result = load_design(std::string(kMinimal) +
                                          "listen: 127.0.0.1:6432\nadmin_listen: " + other + "\n");
    EXPECT_TRUE(result.errors.empty()) << dump(result);
  }
}

TEST(Errors, EmptyNamesAreRefusedNotReadAsAbsent) {
  const LoadResult result = load_with("tls: {cert: \"\", key: \"\", mode: require}\n");
  EXPECT_TRUE(has_error(result, "tls.cert", 8, "must not be empty"));
  EXPECT_TRUE(has_error(result, "tls.key", 8, "must not be empty"));
  EXPECT_TRUE(has_error(load_with("health: {user: \"\"}\n"), "health.user", 8,
                        "leave it out to use the first user"));
}

TEST(Errors, CertificateFilesOnlyWhereAModeReadsThem) {
  for (const char* mode : {"disable", "prefer", "require"}) {
    EXPECT_TRUE(
        has_error(load_with(std::string("server_tls: ") + mode + "\nserver_tls_ca: /etc/ca.crt\n"),
                  "server_tls_ca", 9, "verify-ca or verify-full"))
        << mode;
  }
  for (const char* mode : {"disable", "prefer"}) {
    EXPECT_TRUE(has_error(load_with(std::string("tls: {cert: a.crt, key: a.key, mode: ") + mode +
                                    ", client_ca: ca.crt}\n"),
                          "tls.client_ca", 8, "needs mode: require"))
        << mode;
  }
}

TEST(Errors, UnknownEnumWords) {
  const LoadResult result = load_with(R"(log_level: verbose
server_tls: always
tls: {cert: a.crt, key: a.key, mode: optional}
pool: {mode: txn}
routing: {reads: replica, load_balance: fastest, read_your_writes: yes}
failover: {mode: auto}
)");
  EXPECT_TRUE(has_error(result, "log_level", 8,
                        "unknown value \"verbose\", expected debug, info, warn or error"));
  EXPECT_TRUE(has_error(result, "server_tls", 9,
                        "expected disable, prefer, require, verify-ca or verify-full"));
  EXPECT_TRUE(has_error(result, "tls.mode", 10, "unknown value \"optional\""));
  EXPECT_TRUE(has_error(result, "pool.mode", 11, "expected session, transaction or statement"));
  EXPECT_TRUE(has_error(result, "routing.reads", 12, "expected replicas, primary or any"));
  EXPECT_TRUE(has_error(result, "routing.load_balance", 12, "least_connections"));
  EXPECT_TRUE(has_error(result, "routing.read_your_writes", 12, "expected off, lsn or time"));
  EXPECT_TRUE(has_error(result, "failover.mode", 13, "expected off, follow or promote"));
}

TEST(Errors, TlsNeedsCertAndKeyUnlessDisabled) {
  const LoadResult result = load_with("tls:\n  mode: require\n");
  EXPECT_TRUE(has_error(result, "tls.cert", 9, "required"));
  EXPECT_TRUE(has_error(result, "tls.key", 9, "required"));
  EXPECT_EQ(load_design(std::string(kMinimal) + "tls:\n  mode: disable\n").errors.size(), 0u);
}

TEST(Errors, Users) {
  const LoadResult result = load_design(std::string(R"(users:
  - name: app
    password: pw
  - password: pw2
  - name: app
    password: pw3
  - name: nopass
  - name: ""
    password: x
  - name: badscram
    password: "SCRAM-SHA-256$4096:..."
  - name: badmd5
    password: md5zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz
  - name: upstream
    password: pw
    server_password: ")") + test::kScramVerifier +
                                        R"("
  - name: notbool
    password: pw
    admin: sometimes
databases:
  telemetry:
    shards:
      - primary: 127.0.0.1:5432
)");
  EXPECT_TRUE(has_error(result, "users[1].name", 4, "required"));
  EXPECT_TRUE(has_error(result, "users[2].name", 5, "duplicate user name \"app\" (also users[0])"));
  EXPECT_TRUE(has_error(result, "users[3].password", 7, "required"));
  EXPECT_TRUE(has_error(result, "users[4].name", 8, "must not be empty"));
  EXPECT_TRUE(has_error(result, "users[5].password", 11, "malformed SCRAM verifier"));
  EXPECT_TRUE(has_error(result, "users[6].password", 13, "malformed md5 hash"));
  EXPECT_TRUE(has_error(result, "users[7].server_password", 16, "cannot be used to log in"));
  EXPECT_TRUE(has_error(result, "users[8].admin", 19, "expected true or false"));
  EXPECT_EQ(result.errors.size(), 8u) << dump(result);
}

// Found by a review: --check accepted these, and then the right password always got 28P01 (the
// login's parse of the verifier refused it; PostgreSQL takes an upper-case md5 hash for a plain
// password, and a client's md5 response is lower case).
TEST(Errors, PasswordsThatCouldNeverMatchAreRefused) {
  const std::string good = test::kScramVerifier;
  // The StoredKey's '=' replaced: 44 base64 characters that decode to 33 bytes.
  std::string unpadded = good;
  unpadded[unpadded.find("=:")] = 'A';
  // The StoredKey's last character before '=' with bits set that the padding drops.
  std::string stray_bits = good;
  const std::size_t before_pad = stray_bits.find("=:") - 1;
  stray_bits[before_pad] = static_cast<char>(stray_bits[before_pad] + 1);
  ASSERT_TRUE(protocol::ScramVerifier::parse(good));
  const LoadResult result = load_design(R"(users:
  - name: unpadded
    password: ")" + unpadded + R"("
  - name: stray
    password: ")" + stray_bits + R"("
  - name: upper
    password: md50B2C9E0D9E1A3F4B5C6D7E8F9A0B1C2D
  - name: lower
    password: md50b2c9e0d9e1a3f4b5c6d7e8f9a0b1c2d
  - name: good
    password: ")" + good + R"("
databases:
  telemetry:
    shards:
      - primary: 127.0.0.1:5432
)");
  EXPECT_TRUE(has_error(result, "users[0].password", 3, "malformed SCRAM verifier"))
      << dump(result);
  EXPECT_TRUE(has_error(result, "users[1].password", 5, "malformed SCRAM verifier"));
  EXPECT_TRUE(has_error(result, "users[2].password", 7, "32 lower-case hex digits"));
  EXPECT_EQ(result.errors.size(), 3u) << dump(result);
}

TEST(Errors, Databases) {
  const LoadResult result = load_design(R"(users: [{name: app, password: pw}]
databases:
  pgvalve:
    shards:
      - primary: 127.0.0.1:5432
  empty:
  noshards:
    dbname: x
  zeroshards:
    shards: []
  blankdb:
    dbname: ""
    shards:
      - primary: 127.0.0.1:5432
)");
  EXPECT_TRUE(has_error(result, "databases.pgvalve", 3, "reserved for the admin console"));
  EXPECT_TRUE(has_error(result, "databases.empty.shards", 6, "required"));
  EXPECT_TRUE(has_error(result, "databases.noshards.shards", 8, "required"));
  EXPECT_TRUE(has_error(result, "databases.zeroshards.shards", 10, "at least one shard"));
  EXPECT_TRUE(has_error(result, "databases.blankdb.dbname", 12, "must not be empty"));
  EXPECT_EQ(result.errors.size(), 5u) << dump(result);
}

TEST(Errors, Shards) {
  const LoadResult result = load_design(R"(users: [{name: app, password: pw}]
databases:
  telemetry:
    shards:
      - name: s0
        primary: 127.0.0.1:5432
        replicas: [127.0.0.1:5433]
      - name: s0
        primary: 127.0.0.1:5442
      - name: s2
        replicas: [127.0.0.1:5453]
      - name: s3
        primary: 127.0.0.1:5433
      - name: s4
        primary: 127.0.0.1:5462
        replicas: 127.0.0.1:5463
    sharding:
      key: device_id
)");
  EXPECT_TRUE(has_error(result, "databases.telemetry.shards[1].name", 8,
                        "duplicate shard name \"s0\" (also databases.telemetry.shards[0])"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.shards[2].primary", 10, "required"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.shards[3].primary", 13,
                        "already used by databases.telemetry.shards[0].replicas[0]"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.shards[4].replicas", 16, "expected a list"));
  EXPECT_EQ(result.errors.size(), 4u) << dump(result);
}

TEST(Errors, OneServerWrittenTwoWaysIsStillOneServer) {
  const LoadResult result = load_design(R"(users: [{name: app, password: pw}]
databases:
  telemetry:
    shards:
      - primary: 127.0.0.1:5432
        replicas: ["[::1]:5433", 10.0.0.7:5432, "[2001:db8::1]:5432", DB1.example:5432]
      - primary: localhost:5432
        replicas: [127.0.0.2:5433, 127.0.0.01:5434, "[::ffff:10.0.0.7]:5432"]
      - primary: "[2001:DB8:0::1]:5432"
        replicas: [db1.example.:5432, LOCALHOST:5434, 127.1:5435]
      - primary: 10.0.0.8:5432
        replicas: [10.0.0.7:5433, db2.example:5432, 127.0.0.1:5435, 10.0.0.010:5432, 10.0.0.10:5432]
    sharding:
      key: device_id
)");
  const std::string s = "databases.telemetry.shards";
  EXPECT_TRUE(has_error(
      result, s + "[1].primary", 7,
      "localhost:5432 is the same server as 127.0.0.1:5432, already used by " + s + "[0].primary"));
  EXPECT_TRUE(has_error(
      result, s + "[1].replicas[0]", 8,
      "127.0.0.2:5433 is the same server as [::1]:5433, already used by " + s + "[0].replicas[0]"));
  EXPECT_TRUE(has_error(result, s + "[1].replicas[2]", 8,
                        "[::ffff:10.0.0.7]:5432 is the same server as 10.0.0.7:5432"));
  EXPECT_TRUE(has_error(result, s + "[2].primary", 9,
                        "[2001:DB8:0::1]:5432 is the same server as [2001:db8::1]:5432"));
  EXPECT_TRUE(has_error(result, s + "[2].replicas[0]", 10,
                        "db1.example.:5432 is the same server as DB1.example:5432"));
  EXPECT_TRUE(has_error(result, s + "[2].replicas[1]", 10,
                        "LOCALHOST:5434 is the same server as 127.0.0.01:5434, already used by " +
                            s + "[1].replicas[1]"));
  EXPECT_TRUE(has_error(result, s + "[3].replicas[2]", 12,
                        "127.0.0.1:5435 is the same server as 127.1:5435"));
  // A leading 0 is octal to the resolver: 10.0.0.8.
  EXPECT_TRUE(has_error(result, s + "[3].replicas[3]", 12,
                        "10.0.0.010:5432 is the same server as 10.0.0.8:5432"));
  // Other ports, addresses and names are other servers.
  EXPECT_EQ(result.errors.size(), 8u) << dump(result);
}

TEST(Errors, SeveralShardsNeedASharding) {
  const LoadResult result = load_design(R"(users: [{name: app, password: pw}]
databases:
  telemetry:
    shards:
      - primary: 127.0.0.1:5432
      - primary: 127.0.0.1:5442
)");
  EXPECT_TRUE(has_error(result, "databases.telemetry.sharding", 4, "2 shards need a sharding"));
}

std::string sharded(const std::string& sharding) {
  return R"(users: [{name: app, password: pw}]
databases:
  telemetry:
    shards:
      - {name: s0, primary: "127.0.0.1:5432"}
      - {name: s1, primary: "127.0.0.1:5442"}
    sharding:
)" + sharding;
}

TEST(Errors, BucketMapOverlap) {
  const LoadResult result = load_design(sharded(R"(      buckets: 1024
      bucket_map:
        s0: 0-511
        s1: 500-1023
)"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.sharding.bucket_map.s1", 11,
                        "range 500-1023 overlaps 0-511 of shard s0"));
  EXPECT_EQ(result.errors.size(), 1u) << dump(result);
}

TEST(Errors, BucketMapGaps) {
  const LoadResult result = load_design(sharded(R"(      buckets: 1024
      bucket_map:
        s0: ["1-100", "200-511"]
        s1: 512-1000
)"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.sharding.bucket_map", 10,
                        "buckets 0-0, 101-199, 1001-1023 are not assigned to any shard"));
  EXPECT_EQ(result.errors.size(), 1u) << dump(result);
}

TEST(Errors, BucketMapExceedsBuckets) {
  const LoadResult result = load_design(sharded(R"(      buckets: 16
      bucket_map:
        s0: 0-7
        s1: [8-15, 16-31]
)"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.sharding.bucket_map.s1[1]", 11,
                        "exceeds buckets (16): the last bucket is 15"));
}

TEST(Errors, BucketMapBadEntries) {
  const LoadResult result = load_design(sharded(R"(      bucket_map:
        s0: 0-511
        s1: 1023-512
        s9: 512-1023
        s0: 5
)"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.sharding.bucket_map.s1", 10, "is backwards"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.sharding.bucket_map.s0", 12, "duplicate"));

  const LoadResult unknown = load_design(sharded(R"(      bucket_map:
        s0: 0-511
        s9: 512-1023
)"));
  EXPECT_TRUE(
      has_error(unknown, "databases.telemetry.sharding.bucket_map.s9", 10, "no shard named"));

  const LoadResult garbage = load_design(sharded(R"(      bucket_map:
        s0: all
        s1: {from: 1}
)"));
  EXPECT_TRUE(has_error(garbage, "databases.telemetry.sharding.bucket_map.s0", 9,
                        "expected a bucket range"));
  EXPECT_TRUE(has_error(garbage, "databases.telemetry.sharding.bucket_map.s1", 10, "got a map"));
  EXPECT_EQ(garbage.errors.size(), 2u) << dump(garbage);  // no follow-on gap error
}

TEST(Errors, BucketMapNeedsXxh3AndEnoughBuckets) {
  const LoadResult md5 = load_design(sharded(R"(      hash: md5_mod
      bucket_map: {s0: 0-511, s1: 512-1023}
)"));
  EXPECT_TRUE(has_error(md5, "databases.telemetry.sharding.bucket_map", 9, "only applies to"));

  // buckets would be accepted and ignored: refused.
  const LoadResult md5_buckets = load_design(sharded("      hash: md5_mod\n      buckets: 64\n"));
  EXPECT_TRUE(has_error(md5_buckets, "databases.telemetry.sharding.buckets", 9,
                        "buckets only applies to hash: xxh3"))
      << dump(md5_buckets);

  const LoadResult few = load_design(sharded("      buckets: 1\n"));
  EXPECT_TRUE(has_error(few, "databases.telemetry.sharding.buckets", 8, "at least the number"));

  const LoadResult bad_hash = load_design(sharded("      hash: crc32\n"));
  EXPECT_TRUE(has_error(bad_hash, "databases.telemetry.sharding.hash", 8,
                        "expected xxh3, md5_mod or pg_partition"));
}

TEST(Errors, ShardingTables) {
  const LoadResult result = load_design(sharded(R"(      key: ""
      tables: [telemetry, telemetry]
      reference_tables: [device_types, telemetry]
)"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.sharding.key", 8, "must not be empty"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.sharding.tables[1]", 9, "is listed twice"));
  EXPECT_TRUE(has_error(result, "databases.telemetry.sharding.reference_tables[1]", 10,
                        "also listed in tables"));
}

TEST(Errors, AllErrorsAreReportedInFileOrder) {
  const LoadResult result = load_design(R"(workers: many
log_level: loud
users:
  - name: app
databases:
  telemetry:
    shards:
      - primary: nowhere
pool:
  pool_size: -3
)");
  EXPECT_EQ(result.config, nullptr);
  ASSERT_EQ(result.errors.size(), 5u) << dump(result);
  EXPECT_EQ(result.errors[0].path, "workers");
  EXPECT_EQ(result.errors[1].path, "log_level");
  EXPECT_EQ(result.errors[2].path, "users[0].password");
  EXPECT_EQ(result.errors[3].path, "databases.telemetry.shards[0].primary");
  EXPECT_EQ(result.errors[4].path, "pool.pool_size");
  for (std::size_t i = 1; i < result.errors.size(); ++i) {
    EXPECT_LE(result.errors[i - 1].line, result.errors[i].line);
  }
}

TEST(Errors, ToStringFormat) {
  const LoadResult result = load_with("pool:\n  pool_size: 0\n");
  ASSERT_EQ(result.errors.size(), 1u) << dump(result);
  EXPECT_EQ(result.errors[0].to_string("/etc/pgvalve.yaml"),
            "/etc/pgvalve.yaml:9:14: pool.pool_size: must be at least 1, got 0");
  const ConfigError no_position{"", 0, 0, "cannot open the file"};
  EXPECT_EQ(no_position.to_string("f.yaml"), "f.yaml: cannot open the file");
}

TEST(Errors, OddInputsNeverThrow) {
  const std::vector<std::string> inputs = {
      "{",
      "[[[[[[[[",
      std::string(5000, '['),
      "users: &u [*u]\ndatabases: &d {a: *d}\n",
      "? [complex, key]\n: value\n",
      "users: [{name: [a], password: {x: 1}}]\ndatabases: {db: {shards: [[]]}}\n",
      std::string("\0\xff\xfe garbage", 11),
      "databases:\n  ? [x]\n  : {}\n",
      "listen: !!binary aGVsbG8=\n",
      "users: 'x'\ndatabases: 3\n",
  };
  for (const std::string& input : inputs) {
    LoadResult result;
    EXPECT_NO_THROW(result = load_design(input)) << input;
    EXPECT_EQ(result.config, nullptr) << input;
    EXPECT_FALSE(result.errors.empty()) << input;
  }
}

}  // namespace
}  // namespace pgvalve::config
