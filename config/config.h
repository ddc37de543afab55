// The validated, immutable configuration (DESIGN.md §3). Built by load_config(); shared
// read-only by everything else (std::shared_ptr<const Config>).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgvalve::config {

struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string to_string() const;  // "host:port"
  bool operator==(const Endpoint&) const = default;
};

enum class LogLevel { Debug, Info, Warn, Error };
enum class PoolMode { Session, Transaction, Statement };
enum class TlsMode { Disable, Prefer, Require };
// TLS to PostgreSQL, with libpq's sslmode meanings.
enum class ServerTlsMode { Disable, Prefer, Require, VerifyCa, VerifyFull };

struct TlsConfig {
  std::string cert;
  std::string key;
  TlsMode mode = TlsMode::Prefer;
  std::string client_ca;  // set: clients must present a certificate this CA signed
  bool operator==(const TlsConfig&) const = default;
};

struct User {
  std::string name;
  std::string password;         // as written: SCRAM verifier, md5 hash, or plain text
  std::string server_password;  // for logging in to PostgreSQL; empty if none (trust)
  bool admin = false;
};

// The most server connections one pool may have (pool_size + max_overflow): far more than a
// PostgreSQL server accepts, and small enough that the pool's counts never overflow an int.
inline constexpr int kMaxPoolConnections = 100000;

struct PoolSettings {
  PoolMode mode = PoolMode::Transaction;
  int pool_size = 20;
  int max_overflow = 30;
  int overflow_idle_s = 10;
  int checkout_timeout_ms = 5000;
  int idle_timeout_s = 600;
  int recycle_s = 3600;
  bool pre_ping = false;
  int pre_ping_idle_s = 30;
  int max_client_connections = 10000;
  int max_prepared_statements = 500;
  // Transaction mode: a client whose session state cannot move to another server (session
  // advisory lock, temp table, WITH HOLD cursor, SQL PREPARE, LISTEN in a transaction) keeps its
  // server until that state is gone. false: such statements are refused (0A000).
  bool pin_session_state = true;
  int query_timeout_ms = 0;             // server silent this long while a client waits; 0 = off
  int idle_transaction_timeout_ms = 0;  // client idle inside a transaction this long; 0 = off
  bool operator==(const PoolSettings&) const = default;
};

struct Limits {
  int connections_per_ip = 0;
  int connect_rate_per_ip = 0;
  int connect_burst_per_ip = 20;
  int auth_timeout_ms = 10000;
  std::int64_t max_message_bytes = 268435456;
  int message_timeout_ms = 10000;  // a begun message must be complete within this; 0 = no limit
  // Process-wide memory for client messages still being received, beyond the first 4 KiB of
  // each client's buffer.
  std::int64_t message_memory_bytes = 402653184;
};

struct Shard {
  std::string name;
  Endpoint primary;
  std::vector<Endpoint> replicas;
};

enum class HashFunction { Xxh3, Md5Mod, PgPartition };
// How a shard-key value is read: auto (integers as integers, the rest as text), or the column's
// type, which pg_partition needs to hash as PostgreSQL does.
enum class ShardKeyType { Auto, Bigint, Text, Uuid };

struct BucketRange {
  int first = 0;
  int last = 0;  // inclusive
  bool operator==(const BucketRange&) const = default;
};

struct Sharding {
  std::string key = "device_id";
  HashFunction hash = HashFunction::Xxh3;
  ShardKeyType key_type = ShardKeyType::Auto;
  int buckets = 1024;
  std::map<std::string, std::vector<BucketRange>> bucket_map;  // shard name -> ranges
  std::vector<std::string> tables;
  std::vector<std::string> reference_tables;
  bool operator==(const Sharding&) const = default;
};

struct Database {
  std::string name;    // what clients put in their DSN
  std::string dbname;  // database name on the servers (default: name)
  std::vector<Shard> shards;
  std::optional<Sharding> sharding;  // absent = a single shard
};

// True when every statement of `a` and `b` would go to the same shard: the same shards, in the
// same order, and the same sharding rules (hosts may differ).
bool same_placement(const Database& a, const Database& b);

// What a reload changed that the clients logged in before cannot follow: they leave at their
// next transaction boundary. Hosts may change under them (None), and so may passwords.
enum class ReloadChange : std::uint8_t {
  None,
  ShardMap,         // where keys live: the sharding rules, or the shards' names and order
  Dbname,           // the database on the servers that its name leads to
  DatabaseRemoved,  // the database is no longer in the file
  UserRemoved,      // the user is no longer in the file
};
// What became of database `before`; `after` is null when the reloaded file has no database of
// its name.
ReloadChange database_change(const Database& before, const Database* after);
struct Config;
// What became of a login to database `db` as user `user` under the reloaded `next`: the
// database's change first, then whether the user is still there.
ReloadChange reload_change(const Database& db, std::string_view user, const Config& next);

enum class ReadsTo { Replicas, Primary, Any };
enum class LoadBalance { LeastConnections, RoundRobin, Random };
enum class ReadYourWrites { Off, Lsn, Time };

struct Routing {
  bool read_write_split = true;
  ReadsTo reads = ReadsTo::Replicas;
  LoadBalance load_balance = LoadBalance::LeastConnections;
  int max_replica_lag_ms = 5000;
  ReadYourWrites read_your_writes = ReadYourWrites::Lsn;
  int read_your_writes_window_ms = 2000;
  std::vector<std::string> write_functions = {"nextval",          "setval",
                                              "pg_advisory_lock", "pg_advisory_xact_lock",
                                              "pg_notify",        "txid_current"};
};

struct Health {
  int interval_ms = 1000;
  int timeout_ms = 2000;
  int failures_before_down = 3;
  // The role the checks (and promotions) log in as; empty: the first user, with its
  // server_password.
  std::string user;
  std::string password;
  std::string dbname = "postgres";
};

enum class FailoverMode { Off, Follow, Promote };

struct Failover {
  FailoverMode mode = FailoverMode::Follow;
  int promote_after_ms = 5000;
  int hold_writes_ms = 10000;
};

struct Stats {
  int slow_query_ms = 100;
  int slow_query_samples = 1000;
  int max_fingerprints = 5000;
  bool explain_slow = false;
  bool redact_literals = true;
};

struct Config {
  std::string source_path;  // the file it was read from ("" for a string)
  Endpoint listen{"0.0.0.0", 6432};
  Endpoint admin_listen{"127.0.0.1", 9930};
  int workers = 0;  // 0 = one per CPU core (resolved by the proxy, not here)
  LogLevel log_level = LogLevel::Info;
  int shutdown_timeout_s = 30;
  std::optional<TlsConfig> tls;
  // As libpq's default sslmode: TLS when the server offers it, plaintext otherwise.
  ServerTlsMode server_tls = ServerTlsMode::Prefer;
  std::string server_tls_ca;
  // Whether pgvalve answers PostgreSQL's cleartext or md5 password requests over a link without
  // TLS; false: only SCRAM-SHA-256 (or trust).
  bool server_allow_insecure_auth = false;
  std::vector<User> users;
  PoolSettings pool;
  Limits limits;
  std::vector<Database> databases;  // in file order
  Routing routing;
  Health health;
  Failover failover;
  Stats stats;

  const User* find_user(std::string_view name) const;
  const Database* find_database(std::string_view name) const;
};

using ConfigPtr = std::shared_ptr<const Config>;

// One problem found in a file: where, and what.
struct ConfigError {
  std::string
      path;      // YAML key path, e.g. "pool.pool_size" or "databases.telemetry.shards[0].primary"
  int line = 0;  // 1-based; 0 when unknown
  int column = 0;  // 1-based; 0 when unknown
  std::string message;
  // "file:line:column: path: message"
  std::string to_string(std::string_view file) const;
};

struct LoadResult {
  ConfigPtr config;                 // set when errors is empty
  std::vector<ConfigError> errors;  // every problem found, not just the first
};

// Reads and validates a YAML document. `${VAR}` in scalar values expands from the environment
// (an unset variable is an error). Never throws.
// Which keys a load accepts. pgvalve itself loads with Working: keys of DESIGN.md §3 it does
// not carry out yet are refused ("not supported yet"). WholeDesign reads and validates them
// too; only the validators' unit tests use it, ahead of the issues that make the keys work.
enum class Keys { Working, WholeDesign };

// Files larger than this are refused unread.
inline constexpr std::size_t kMaxConfigFileBytes = 1 << 20;
LoadResult load_config_file(const std::string& path);
LoadResult load_config_string(const std::string& yaml, const std::string& source_name = "<string>",
                              Keys keys = Keys::Working);

// The effective configuration as "key = value" lines for `--check` and SHOW CONFIG; passwords
// are shown as "<hidden>".
std::vector<std::pair<std::string, std::string>> describe(const Config& config);

const char* to_string(PoolMode mode);
const char* to_string(LogLevel level);
// The YAML words for the other enums ("prefer", "xxh3", "least_connections", ...).
const char* to_string(TlsMode mode);
const char* to_string(ServerTlsMode mode);
const char* to_string(HashFunction hash);
const char* to_string(ShardKeyType type);
// "0-511,768-1023": bucket ranges as bucket_map writes them.
std::string ranges_to_string(const std::vector<BucketRange>& ranges);
const char* to_string(ReadsTo reads);
const char* to_string(LoadBalance balance);
const char* to_string(ReadYourWrites mode);
const char* to_string(FailoverMode mode);

// One difference between two configs, by describe() key (passwords stay "<hidden>").
struct ConfigChange {
  std::string key;
  std::string old_value;       // "" when the key is new
  std::string new_value;       // "" when the key is gone
  bool needs_restart = false;  // listen, admin_listen, workers: a reload cannot apply them
};
// What a reload from `before` to `after` changes, in describe() order of `after`, then removed
// keys. Empty when nothing changed.
std::vector<ConfigChange> diff(const Config& before, const Config& after);
// True for the keys only a restart applies (listen, admin_listen, workers).
bool needs_restart(std::string_view describe_key);

}  // namespace pgvalve::config
