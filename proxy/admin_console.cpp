#include "proxy/admin_console.h"

#include <poll.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "protocol/messages.h"
#include "protocol/utf8.h"
#include "proxy/app.h"
#include "proxy/io_util.h"
#include "proxy/log.h"
#include "proxy/metrics.h"

namespace pgvalve::proxy {

namespace pr = protocol;

namespace {

using Row = std::vector<std::string>;

// Every row the console sends is written here. The console announces client_encoding UTF8, and
// a driver decodes every value as such (psycopg fails the whole result on one bad byte), but
// names in startup packets and statement texts are kept as the bytes clients sent: invalid
// sequences are shown as U+FFFD.
void append_row(std::string& out, std::vector<std::optional<std::string_view>>& values) {
  std::vector<std::string> fixed;
  fixed.reserve(values.size());  // views into it stay put
  for (auto& v : values) {
    if (v && !pr::is_valid_utf8(*v)) v = fixed.emplace_back(pr::to_valid_utf8(*v));
  }
  pr::append_data_row(out, values);
}

void append_result(std::string& out, const std::vector<std::string_view>& columns,
                   const std::vector<Row>& rows, std::string_view tag_prefix = "SHOW") {
  pr::append_row_description(out, columns);
  std::vector<std::optional<std::string_view>> values;
  for (const auto& row : rows) {
    values.assign(row.begin(), row.end());
    append_row(out, values);
  }
  std::string tag(tag_prefix);
  if (tag_prefix == "SHOW") tag = "SHOW";
  pr::append_command_complete(out, tag);
}

// A command's words: whitespace and ';' separate them, except inside double quotes, which make
// a name of anything ("my db;x", with "" for a quote in it), as an identifier in SQL.
struct Word {
  std::string text;
  bool quoted = false;
};

// Sets `error` when the words cannot be read (a quote not closed, an empty quoted name).
std::vector<Word> split_words(std::string_view sql, std::string* error = nullptr) {
  std::vector<Word> words;
  Word word;
  bool in_word = false;
  for (std::size_t i = 0; i < sql.size(); ++i) {
    const char c = sql[i];
    if (c == '"') {
      in_word = true;
      word.quoted = true;
      const std::size_t start = word.text.size();
      for (++i;; ++i) {
        if (i >= sql.size()) {
          if (error)
            *error = "a double-quoted name is not closed; write a quote inside one as \"\"";
          return words;
        }
        if (sql[i] != '"') {
          word.text += sql[i];
        } else if (i + 1 < sql.size() && sql[i + 1] == '"') {
          word.text += '"';
          ++i;
        } else {
          break;
        }
      }
      if (word.text.size() == start && error) *error = "a double-quoted name is empty";
    } else if (std::isspace(static_cast<unsigned char>(c)) || c == ';') {
      if (in_word) words.push_back(std::move(word));
      word = {};
      in_word = false;
    } else {
      word.text += c;
      in_word = true;
    }
  }
  if (in_word) words.push_back(std::move(word));
  return words;
}

// The words as written (names keep their case; quotes undone).
std::vector<std::string> raw_words(std::string_view sql) {
  std::vector<std::string> words;
  for (auto& w : split_words(sql))
    words.push_back(std::move(w.text));
  return words;
}

// Upper-cased, to match command words; a quoted word is a name and matches none (it keeps a
// leading quote).
std::vector<std::string> words_of(std::string_view sql) {
  std::vector<std::string> words;
  for (auto& w : split_words(sql)) {
    if (w.quoted) {
      words.push_back('"' + w.text);
      continue;
    }
    std::transform(w.text.begin(), w.text.end(), w.text.begin(),
                   [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    words.push_back(std::move(w.text));
  }
  return words;
}

void show_pools(App& app, const std::vector<ClientSession::ConnectionRow>& connections,
                std::string& out) {
  std::vector<Row> rows;
  const auto config = app.config();
  const auto mode = config::to_string(config->pool.mode);
  const auto hosts = app.hosts();
  const auto pools = app.pools();
  const auto clients_of = App::clients_by_pool(pools, hosts);
  for (std::size_t i = 0; i < pools.size(); ++i) {
    const auto& pool = pools[i];
    const auto s = pool->stats();
    const auto& key = pool->key();
    // The host's shard as configured, and its role now (after a failover the health checks'
    // view, not the file's).
    const HostPlace place = place_of(*config, key.database, key.host);
    std::string shard = place.shard;
    std::string role = place.role.empty() ? "unknown" : place.role;
    for (const auto& h : hosts) {
      if (h.database == key.database && h.host == key.host) {
        shard = h.shard;
        role = std::string(health::role_name(h.role));
      }
    }
    const int active = clients_of[i].active;
    // sv_used: idle connections pre_ping will check before their next lend (idle at least
    // pre_ping_idle_s); none without pre_ping.
    int needs_test = 0;
    const auto settings = pool->settings();
    if (settings.pre_ping) {
      const auto limit =
          std::chrono::system_clock::now() - std::chrono::seconds(settings.pre_ping_idle_s);
      for (const auto& c : connections) {
        if (c.type == 'S' && c.state == "idle" && c.database == key.database &&
            c.user == key.user && c.host == key.host.to_string() && c.request_time <= limit) {
          ++needs_test;
        }
      }
    }
    rows.push_back({key.database,
                    key.user,
                    shard,
                    key.host.to_string(),
                    role,
                    std::to_string(active),
                    std::to_string(s.waiting),
                    std::to_string(s.checked_out),
                    std::to_string(s.checked_in),
                    std::to_string(needs_test),
                    std::to_string(s.testing),
                    std::to_string(s.opening),
                    std::to_string(s.max_wait_us),
                    mode,
                    std::to_string(s.size),
                    std::to_string(s.checked_in),
                    std::to_string(s.checked_out),
                    std::to_string(s.overflow),
                    std::to_string(s.total_invalid),
                    std::to_string(s.pinned)});
  }
  append_result(out, {"database",   "user",        "shard",      "host",      "role",
                      "cl_active",  "cl_waiting",  "sv_active",  "sv_idle",   "sv_used",
                      "sv_tested",  "sv_login",    "maxwait_us", "pool_mode", "size",
                      "checked_in", "checked_out", "overflow",   "invalid",   "pinned"},
                rows);
}

std::string iso_time(std::chrono::system_clock::time_point t) {
  if (t == std::chrono::system_clock::time_point{}) return "";
  const std::time_t secs = std::chrono::system_clock::to_time_t(t);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()) % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(ms.count()));
  return buffer;
}

void show_hosts(App& app, std::string& out) {
  static constexpr std::string_view kColumns[] = {
      "database", "shard",     "host", "port",     "role",       "state",    "readable",
      "lag_ms",   "lag_bytes", "lsn",  "timeline", "last_check", "failures", "last_error"};
  pr::append_row_description(out, kColumns);
  std::vector<std::optional<std::string_view>> values;
  std::vector<std::string> cells;
  for (const HostRow& h : app.hosts()) {
    const auto figure = [](std::int64_t v) { return v < 0 ? std::string() : std::to_string(v); };
    cells = {h.database,
             h.shard,
             h.host.host,
             std::to_string(h.host.port),
             std::string(health::role_name(h.role)),
             h.refused    ? "refused"
             : !h.checked ? "unknown"
                          : (h.up ? "up" : "down"),
             h.readable ? "yes" : "no",
             figure(h.lag_ms),
             figure(h.lag_bytes),
             h.checked && h.lsn ? health::format_lsn(h.lsn) : "",
             h.timeline ? std::to_string(h.timeline) : "",
             iso_time(h.last_check),
             std::to_string(h.failures),
             h.last_error};
    values.clear();
    for (std::size_t i = 0; i < cells.size(); ++i) {
      // Unknown figures are NULL, as psql shows them: empty.
      const bool null =
          cells[i].empty() && (i == 7 || i == 8 || i == 9 || i == 10 || i == 11 || i == 13);
      values.push_back(null ? std::nullopt : std::optional<std::string_view>(cells[i]));
    }
    append_row(out, values);
  }
  pr::append_command_complete(out, "SHOW");
}

std::string millis_text(double micros) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.3f", micros / 1000.0);
  return buffer;
}

std::string fingerprint_text(std::uint64_t fingerprint) {
  char buffer[17];
  std::snprintf(buffer, sizeof buffer, "%016llx", static_cast<unsigned long long>(fingerprint));
  return buffer;
}

// The names of the shards a statement ran on, each resolved in the database it ran in: bit i of
// a database's mask is shard i of that database's configuration. A name listed once.
std::string shard_names(const config::Config& config,
                        const std::vector<stats::DatabaseShards>& shards) {
  std::vector<std::string_view> names;
  for (const auto& d : shards) {
    const auto* db = config.find_database(d.database);
    if (!db) continue;
    for (std::size_t i = 0; i < db->shards.size() && i < 64; ++i) {
      const std::string_view name = db->shards[i].name;
      if (d.shards >> i & 1 && std::find(names.begin(), names.end(), name) == names.end()) {
        names.push_back(name);
      }
    }
  }
  std::string out;
  for (const auto name : names) {
    if (!out.empty()) out += ",";
    out += name;
  }
  return out;
}

void show_queries(App& app, const stats::Snapshot& snap, std::string& out) {
  std::vector<Row> rows;
  const auto config = app.config();
  for (const auto& q : snap.queries) {
    const double calls = static_cast<double>(q.calls);
    char share[32];
    std::snprintf(share, sizeof share, "%.2f", calls > 0 ? q.replica_calls / calls : 0.0);
    rows.push_back({fingerprint_text(q.fingerprint), q.text, std::to_string(q.calls),
                    std::to_string(q.rows), std::to_string(q.errors),
                    millis_text(static_cast<double>(q.total_micros)),
                    millis_text(calls > 0 ? q.total_micros / calls : 0),
                    millis_text(static_cast<double>(q.min_micros)),
                    millis_text(static_cast<double>(q.max_micros)),
                    millis_text(static_cast<double>(q.percentile_micros(0.50))),
                    millis_text(static_cast<double>(q.percentile_micros(0.95))),
                    millis_text(static_cast<double>(q.percentile_micros(0.99))), share,
                    shard_names(*config, q.shards)});
  }
  append_result(out,
                {"fingerprint", "query", "calls", "rows", "errors", "total_ms", "mean_ms", "min_ms",
                 "max_ms", "p50_ms", "p95_ms", "p99_ms", "replica_share", "shards"},
                rows);
}

void show_slow_queries(App& app, const stats::Snapshot& snap, std::string& out) {
  const auto config = app.config();
  std::vector<Row> rows;
  for (const auto& s : snap.slow) {
    std::string shard;
    if (const auto* db = config->find_database(s.database); db && s.shards != 0) {
      shard = shard_names(*config, {{s.database, s.shards}});  // over several shards: each
    } else if (db && s.shard < db->shards.size()) {
      shard = db->shards[s.shard].name;
    }
    rows.push_back({iso_time(s.at), s.database, s.user, shard, s.host,
                    millis_text(static_cast<double>(s.micros)), fingerprint_text(s.fingerprint),
                    s.text, s.advice});
  }
  append_result(out,
                {"time", "database", "user", "shard", "host", "duration_ms", "fingerprint", "query",
                 "advice"},
                rows);
}

// Every command, for SHOW HELP and the error for an unknown one.
constexpr std::pair<std::string_view, std::string_view> kCommands[] = {
    {"SHOW HELP", "this list"},
    {"SHOW POOLS", "pools per database, user and host: clients, server connections, waits"},
    {"SHOW HOSTS", "every host of every shard: role, state, lag, LSN, timeline"},
    {"SHOW SHARDS", "each database's shards: primary now, replicas, statements and rows"},
    {"SHOW STATS", "per database: transactions, statements, bytes, time in each, waits"},
    {"SHOW CLIENTS", "one row per client connection: state, address, times, its server"},
    {"SHOW SERVERS", "one row per server connection: lent (active, and to whom) or idle"},
    {"SHOW QUERIES", "statistics per statement fingerprint, by total time"},
    {"SHOW SLOW_QUERIES", "recent executions over stats.slow_query_ms"},
    {"SHOW CONFIG", "the effective configuration"},
    {"SHOW VERSION", "the pgvalve version"},
    {"RELOAD", "re-read the configuration file"},
    {"PAUSE [database]", "new transactions wait; returns once no server connection is lent"},
    {"RESUME [database]", "end a PAUSE"},
    {"RESET QUERIES", "forget SHOW QUERIES and SHOW SLOW_QUERIES figures"},
    {"SHUTDOWN", "stop as SIGTERM does: clients leave at their next transaction boundary"},
    {"SWITCHOVER <database> [shard] [TO host:port]", "planned change of primary"},
    {"FAILOVER <database> [shard]", "promote a replica now (dead primary)"},
    {"SHOW DATABASES", "every host of every database: server database, pool limits, connections"},
    {"SHOW USERS", "the configured users"},
    {"SHOW LISTS", "how many databases, users, pools, clients and server connections"},
    {"SHOW STATE", "paused, disabled, draining"},
    {"RECONNECT [database]", "close server connections as they come back; new ones open"},
    {"WAIT_CLOSE [database]", "return once the connections RECONNECT or KILL closes are gone"},
    {"KILL [database]", "disconnect its clients and servers now; new requests wait for RESUME"},
    {"KILL_CLIENT <id>", "disconnect one client (id from SHOW CLIENTS)"},
    {"DISABLE <database>", "refuse new logins to it"},
    {"ENABLE <database>", "end a DISABLE"},
};

// The usage of the command `words` names, when it is one of kCommands (its words up to the first
// <name> or [name]) given a wrong list of names; empty when it is none.
std::string_view usage_of(const std::vector<std::string>& words) {
  for (const auto& [command, _] : kCommands) {
    std::size_t matched = 0;
    bool all = true;
    for (std::size_t at = 0; at < command.size();) {
      std::size_t end = command.find(' ', at);
      if (end == std::string_view::npos) end = command.size();
      const std::string_view key = command.substr(at, end - at);
      at = end + 1;
      if (key.front() == '<' || key.front() == '[') break;
      if (matched >= words.size() || words[matched] != key) {
        all = false;
        break;
      }
      ++matched;
    }
    if (all && matched > 0) return command;
  }
  return {};
}

std::string command_list() {
  std::string out;
  for (const auto& [command, _] : kCommands) {
    if (!out.empty()) out += ", ";
    out += command;
  }
  return out;
}

void show_stats(const std::vector<App::DatabaseStats>& stats, std::string& out) {
  std::vector<Row> rows;
  for (const auto& d : stats) {
    const auto avg = [](std::uint64_t total, std::uint64_t n) {
      return std::to_string(n ? total / n : 0);
    };
    rows.push_back({d.database, std::to_string(d.transactions), std::to_string(d.queries),
                    std::to_string(d.bytes_received), std::to_string(d.bytes_sent),
                    std::to_string(d.transaction_micros), std::to_string(d.query_micros),
                    std::to_string(d.wait_micros), avg(d.transaction_micros, d.transactions),
                    avg(d.query_micros, d.queries)});
  }
  append_result(
      out,
      {"database", "total_xact_count", "total_query_count", "total_received", "total_sent",
       "total_xact_time", "total_query_time", "total_wait_time", "avg_xact_time", "avg_query_time"},
      rows);
}

void show_help(std::string& out) {
  std::vector<Row> rows;
  for (const auto& [command, what] : kCommands)
    rows.push_back({std::string(command), std::string(what)});
  append_result(out, {"command", "description"}, rows);
}

void show_shards(App& app, const stats::Snapshot& snap, std::string& out) {
  const auto config = app.config();
  const auto hosts = app.hosts();
  std::vector<Row> rows;
  for (const auto& db : config->databases) {
    // The collation text merged across its shards follows; empty until the checks read it.
    std::string collation;
    if (const auto slot = app.text_order(db.name); slot && slot->get() != nullptr) {
      const routing::TextOrder& order = *slot->get();
      collation = order.usable() ? order.name() : order.name() + " (not followed)";
    }
    for (std::size_t i = 0; i < db.shards.size(); ++i) {
      const auto& shard = db.shards[i];
      std::string primary;
      // A replica holds its primary's prepared transactions too: the most any host reports, of
      // those up now and not retired (a dead or retired host keeps what its last check saw,
      // while pgvalve decides its parts on the new primary); of all, when none is up.
      std::uint32_t prepared_up = 0;
      std::uint32_t prepared_known = 0;
      bool any_up = false;
      for (const auto& h : hosts) {
        if (h.database != db.name || h.shard != shard.name) continue;
        if (h.writable) primary = h.host.to_string();
        if (h.role == health::Role::Retired) continue;
        prepared_known = std::max(prepared_known, h.prepared);
        if (h.up) {
          any_up = true;
          prepared_up = std::max(prepared_up, h.prepared);
        }
      }
      const std::uint32_t prepared = any_up ? prepared_up : prepared_known;
      std::string replicas;
      for (const auto& r : shard.replicas) {
        if (!replicas.empty()) replicas += ",";
        replicas += r.to_string();
      }
      std::uint64_t statements = 0;
      std::uint64_t rows_routed = 0;
      for (const auto& q : snap.queries_by_label) {
        if (q.database == db.name && q.shard == i) {
          statements += q.queries;
          rows_routed += q.rows;
        }
      }
      // What the shard owns: its xxh3 bucket ranges, or its remainder of md5_mod / pg_partition.
      std::string buckets = "all";
      if (db.sharding && db.sharding->hash == config::HashFunction::Xxh3) {
        const auto it = db.sharding->bucket_map.find(shard.name);
        buckets = it == db.sharding->bucket_map.end() ? "" : config::ranges_to_string(it->second);
      } else if (db.sharding) {
        buckets = std::string(config::to_string(db.sharding->hash)) + " remainder " +
                  std::to_string(i) + " of " + std::to_string(db.shards.size());
      }
      rows.push_back({db.name, shard.name, buckets, primary, replicas, std::to_string(statements),
                      std::to_string(rows_routed), std::to_string(prepared), collation});
    }
  }
  // prepared: pgvalve's parts prepared on the shard's hosts (pg_prepared_xacts, gid pgvalve:...):
  // those of two-phase commits cut short, and for a moment those of commits in progress
  // (docs/operations.md; docs/sharding.md says how the left ones are resolved).
  append_result(out,
                {"database", "shard", "buckets", "primary", "replicas", "statements", "rows_routed",
                 "prepared", "collation"},
                rows);
}

using ConnectionRow = ClientSession::ConnectionRow;

// Every worker lists its own sessions and idle server connections on its thread; the console
// waits for them here, at most App::kWorkerAnswerMs (a worker that no longer runs answers
// nothing): then WorkerSilent, as a list without that worker's rows would pass for the whole.
boost::asio::awaitable<std::vector<ConnectionRow>> collect_connections(App& app, Stream& client) {
  struct Shared {
    std::mutex mutex;
    std::vector<ConnectionRow> rows;
    std::vector<bool> answered;
  };
  auto shared = std::make_shared<Shared>();
  shared->answered.assign(static_cast<std::size_t>(app.worker_count()), false);
  const auto config = app.config();
  for (int i = 0; i < app.worker_count(); ++i) {
    boost::asio::post(app.worker(i).context, [shared, &app, i, config] {
      std::vector<ConnectionRow> rows;
      app.worker(i).for_each_session([&](ClientSession& s) { s.describe(rows); });
      const auto steady_now = pool::Clock::now();
      const auto wall = [&](pool::Clock::time_point t) {
        return std::chrono::system_clock::now() -
               std::chrono::duration_cast<std::chrono::system_clock::duration>(steady_now - t);
      };
      for (const auto& pool : app.pools()) {
        pool->for_each_idle(i, [&](const pool::Connection& c) {
          ConnectionRow r;
          r.type = 'S';
          r.id = c.id;
          r.user = pool->key().user;
          r.database = pool->key().database;
          r.state = "idle";
          r.addr = pool->key().host.host;
          r.port = pool->key().host.port;
          r.connect_time = wall(c.created_at);
          r.request_time = wall(c.last_used_at);
          r.shard = place_of(*config, r.database, pool->key().host).shard;
          r.host = pool->key().host.to_string();
          // Every connection a pool holds is a ServerConnection (ClientSession::as_server).
          if (const TlsChannel* tls = static_cast<const ServerConnection&>(c).stream.tls()) {
            r.tls = tls->describe();
          }
          rows.push_back(std::move(r));
        });
      }
      std::lock_guard lock(shared->mutex);
      for (auto& r : rows)
        shared->rows.push_back(std::move(r));
      shared->answered[static_cast<std::size_t>(i)] = true;
    });
  }
  const auto silent = [&shared] {
    std::lock_guard lock(shared->mutex);
    const auto it = std::find(shared->answered.begin(), shared->answered.end(), false);
    return it == shared->answered.end() ? -1 : static_cast<int>(it - shared->answered.begin());
  };
  boost::asio::steady_timer timer(client.get_executor());
  for (int waited = 0; waited < App::kWorkerAnswerMs / 5 && silent() >= 0; ++waited) {
    timer.expires_after(std::chrono::milliseconds(5));
    co_await timer.async_wait(boost::asio::use_awaitable);
  }
  if (const int worker = silent(); worker >= 0) throw WorkerSilent(worker);
  std::lock_guard lock(shared->mutex);
  std::vector<ConnectionRow> rows = std::move(shared->rows);
  std::sort(rows.begin(), rows.end(),
            [](const ConnectionRow& a, const ConnectionRow& b) { return a.id < b.id; });
  co_return rows;
}

void show_connections(App& app, const std::vector<ConnectionRow>& all, char type,
                      std::string& out) {
  std::vector<Row> rows;
  for (const auto& r : all) {
    if (r.type != type) continue;
    rows.push_back({std::string(1, type), std::to_string(r.id), r.user, r.database, r.state, r.addr,
                    std::to_string(r.port), iso_time(r.connect_time), iso_time(r.request_time),
                    r.shard, r.host, r.peer ? std::to_string(r.peer) : ""});
    if (type == 'S') rows.back().push_back(r.id < app.reconnect_below(r.database) ? "1" : "0");
    rows.back().push_back(r.tls);
  }
  if (type == 'C') {
    append_result(out,
                  {"type", "id", "user", "database", "state", "addr", "port", "connect_time",
                   "request_time", "shard", "host", "server", "tls"},
                  rows);
  } else {
    append_result(out,
                  {"type", "id", "user", "database", "state", "addr", "port", "connect_time",
                   "request_time", "shard", "host", "client", "close_needed", "tls"},
                  rows);
  }
}

// WAIT_CLOSE: server connections RECONNECT or KILL marked, still open.
int connections_to_close(App& app, const std::vector<ConnectionRow>& all,
                         const std::string& database) {
  int left = 0;
  for (const auto& r : all) {
    if (r.type == 'S' && (database.empty() || r.database == database) &&
        r.id < app.reconnect_below(r.database)) {
      ++left;
    }
  }
  return left;
}

void show_databases(App& app, std::string& out) {
  const auto config = app.config();
  const auto pools = app.pools();
  std::vector<Row> rows;
  for (const HostRow& h : app.hosts()) {
    const config::Database* db = config->find_database(h.database);
    if (!db) continue;
    int connections = 0;
    for (const auto& pool : pools) {
      if (pool->key().database == h.database && pool->key().host == h.host) {
        connections += pool->stats().size;
      }
    }
    rows.push_back({h.database, h.shard, h.host.host, std::to_string(h.host.port),
                    std::string(health::role_name(h.role)), db->dbname,
                    std::to_string(config->pool.pool_size),
                    std::to_string(config->pool.max_overflow),
                    std::string(config::to_string(config->pool.mode)), std::to_string(connections),
                    app.paused(h.database) ? "1" : "0", app.disabled(h.database) ? "1" : "0"});
  }
  append_result(out,
                {"name", "shard", "host", "port", "role", "database", "pool_size", "max_overflow",
                 "pool_mode", "current_connections", "paused", "disabled"},
                rows);
}

void show_users(App& app, std::string& out) {
  const auto config = app.config();
  std::vector<Row> rows;
  for (const auto& u : config->users) {
    rows.push_back(
        {u.name, u.admin ? "yes" : "no", std::string(config::to_string(config->pool.mode))});
  }
  append_result(out, {"name", "admin", "pool_mode"}, rows);
}

void show_lists(App& app, std::string& out) {
  const auto config = app.config();
  int servers = 0;
  int idle = 0;
  int waiting = 0;
  const auto pools = app.pools();
  for (const auto& pool : pools) {
    const auto s = pool->stats();
    servers += s.size;
    idle += s.checked_in;
    waiting += s.waiting;
  }
  const int clients = app.client_count();
  std::vector<Row> rows = {
      {"databases", std::to_string(config->databases.size())},
      {"users", std::to_string(config->users.size())},
      {"pools", std::to_string(pools.size())},
      {"used_clients", std::to_string(clients)},
      {"waiting_clients", std::to_string(waiting)},
      {"login_clients", std::to_string(std::max(0, app.open_sockets() - clients))},
      {"used_servers", std::to_string(servers)},
      {"idle_servers", std::to_string(idle)},
  };
  append_result(out, {"list", "items"}, rows);
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) {
    if (!out.empty()) out += ",";
    out += n.empty() ? "*" : n;
  }
  return out;
}

void show_state(App& app, std::string& out) {
  const auto paused = app.paused_databases();
  const bool all_paused = std::find(paused.begin(), paused.end(), "") != paused.end();
  std::vector<Row> rows = {
      {"active", all_paused || app.draining() ? "no" : "yes"},
      {"paused", joined(paused)},
      {"disabled", joined(app.disabled_databases())},
      {"draining", app.draining() ? "yes" : "no"},
  };
  append_result(out, {"key", "value"}, rows);
}

// SHOW QUERIES / SLOW_QUERIES / SHARDS / STATS: the figures are gathered on the worker threads.
boost::asio::awaitable<void> answer_statistics(App& app, std::string command, std::string& out) {
  if (command == "STATS") {
    std::vector<App::DatabaseStats> per_database = co_await app.database_stats();
    show_stats(per_database, out);
    co_return;
  }
  // SHOW SHARDS needs only the counters; the other two every statement or sample.
  const auto detail = command == "SHARDS" ? stats::Detail::Totals : stats::Detail::All;
  stats::Snapshot snapshot = co_await app.query_stats(detail);
  if (command == "QUERIES") {
    show_queries(app, snapshot, out);
  } else if (command == "SLOW_QUERIES") {
    show_slow_queries(app, snapshot, out);
  } else {
    show_shards(app, snapshot, out);
  }
}

// Runs a drill on the control thread and waits for its outcome here.
boost::asio::awaitable<DrillResult> await_drill(
    Stream& client, const std::function<void(HealthChecker::DrillDone)>& start) {
  struct Shared {
    std::mutex mutex;
    bool done = false;
    DrillResult result;
  };
  auto shared = std::make_shared<Shared>();
  start([shared](DrillResult r) {
    std::lock_guard lock(shared->mutex);
    shared->result = std::move(r);
    shared->done = true;
  });
  boost::asio::steady_timer timer(client.get_executor());
  for (;;) {
    {
      std::lock_guard lock(shared->mutex);
      if (shared->done) co_return shared->result;
    }
    timer.expires_after(std::chrono::milliseconds(20));
    error_code ec;
    co_await timer.async_wait(await_ec(ec));
  }
}

std::optional<config::Endpoint> parse_endpoint(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return std::nullopt;
  int port = 0;
  const auto digits = text.substr(colon + 1);
  auto r = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  if (r.ec != std::errc() || r.ptr != digits.data() + digits.size() || port <= 0 || port > 65535) {
    return std::nullopt;
  }
  std::string host(text.substr(0, colon));
  for (char& c : host)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return config::Endpoint{host, static_cast<std::uint16_t>(port)};
}

void show_config(App& app, std::string& out) {
  std::vector<Row> rows;
  for (auto& [k, v] : config::describe(*app.config()))
    rows.push_back({k, v});
  append_result(out, {"key", "value"}, rows);
}

// Larger console messages end the console session (08P01).
constexpr std::size_t kMaxCommandBytes = 1 << 20;

// Messages quote names as the console client wrote them, and servers' errors: UTF-8 as rows.
void error(std::string& out, std::string_view sqlstate, std::string_view message,
           bool fatal = false) {
  pr::ErrorFields e;
  e.severity = fatal ? "FATAL" : "ERROR";
  e.sqlstate = sqlstate;
  const std::string text = pr::to_valid_utf8(message);
  e.message = text;
  pr::append_error_response(out, e);
}

// What is wrong with a Query message's body, or empty: it must be one NUL-terminated string.
std::string malformed_query(std::string_view body) {
  const std::size_t nul = body.find('\0');
  if (nul == std::string_view::npos) {
    return "its text does not end with a NUL byte; send one NUL-terminated string";
  }
  if (nul + 1 != body.size()) {
    return "its text has a NUL byte at offset " + std::to_string(nul) + " of " +
           std::to_string(body.size()) + " bytes; send one NUL-terminated string";
  }
  return {};
}

void notice(std::string& out, std::string_view message) {
  pr::ErrorFields n;
  n.severity = "NOTICE";
  n.sqlstate = "00000";
  const std::string text = pr::to_valid_utf8(message);
  n.message = text;
  pr::append_notice_response(out, n);
}

// Whether the console client went away (closed its end, or its connection failed) while a
// command waits for something: PAUSE and WAIT_CLOSE do not read the socket meanwhile, and would
// keep the session, its slot of max_client_connections and its polling, for as long as they
// wait. POLLRDHUP: the client's FIN, also behind bytes not read yet.
bool client_gone(Stream& client) {
  pollfd p{client.socket().native_handle(), POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

bool is_connection_command(const std::vector<std::string>& words) {
  const std::string& w = words[0];
  return w == "RECONNECT" || w == "WAIT_CLOSE" || w == "KILL" || w == "KILL_CLIENT" ||
         w == "DISABLE" || w == "ENABLE";
}

// RECONNECT, WAIT_CLOSE, KILL, KILL_CLIENT, DISABLE, ENABLE: what they do to connections.
// False when the client went away while WAIT_CLOSE waited: the session ends.
boost::asio::awaitable<bool> connection_command(App& app, Stream& client, std::string_view sql,
                                                std::string& out) {
  const auto raw = raw_words(sql);
  const std::string command = words_of(sql)[0];
  const bool needs_name = command == "DISABLE" || command == "ENABLE" || command == "KILL_CLIENT";
  if (raw.size() > 2 || (needs_name && raw.size() != 2)) {
    error(out, "42601",
          "pgvalve: usage: " + command +
              (command == "KILL_CLIENT" ? " <id>"
               : needs_name             ? " <database>"
                                        : " [database]"));
    co_return true;
  }
  const std::string name = raw.size() == 2 ? raw[1] : "";
  if (command == "KILL_CLIENT") {
    std::uint64_t id = 0;
    const auto r = std::from_chars(name.data(), name.data() + name.size(), id);
    if (r.ec != std::errc() || r.ptr != name.data() + name.size()) {
      error(out, "42601", "pgvalve: usage: KILL_CLIENT <id>, the id a row of SHOW CLIENTS shows");
    } else if (!co_await app.kill_client(id)) {
      error(out, "42704",
            "pgvalve: no application client " + name + "; SHOW CLIENTS lists the connected ones");
    } else {
      PGV_LOG(Warn, "client_killed", {"client", id});
      pr::append_command_complete(out, "KILL_CLIENT");
    }
    co_return true;
  }
  if (!name.empty() && !app.config()->find_database(name)) {
    error(out, "3D000", "pgvalve: no database \"" + name + "\" in the configuration");
    co_return true;
  }
  const std::string logged = name.empty() ? "*" : name;
  if (command == "RECONNECT") {
    app.reconnect(name);
    PGV_LOG(Warn, "reconnect", {"database", logged});
  } else if (command == "WAIT_CLOSE") {
    boost::asio::steady_timer timer(client.get_executor());
    while (!app.draining()) {
      // A worker that did not answer may hold some of them: ask again, never conclude.
      int left = 1;
      try {
        left = connections_to_close(app, co_await collect_connections(app, client), name);
      } catch (const WorkerSilent&) {
      }
      if (left == 0) break;
      if (client_gone(client)) co_return false;
      timer.expires_after(std::chrono::milliseconds(50));
      co_await timer.async_wait(boost::asio::use_awaitable);
    }
  } else if (command == "KILL") {
    const int killed = co_await app.kill(name);
    PGV_LOG(Warn, "killed", {"database", logged}, {"clients", killed});
    notice(out, "pgvalve: " + std::to_string(killed) + " client" + (killed == 1 ? "" : "s") +
                    " disconnected; " + (name.empty() ? "every database" : name) +
                    " is paused until RESUME");
  } else if (command == "DISABLE") {
    app.disable(name);
    PGV_LOG(Warn, "disabled", {"database", name});
  } else {
    app.enable(name);
    PGV_LOG(Warn, "enabled", {"database", name});
  }
  pr::append_command_complete(out, command);
  co_return true;
}

}  // namespace

boost::asio::awaitable<void> serve_admin_console(App& app, Stream& client, session::InputBuffer& in,
                                                 const std::string& user, std::uint64_t client_id) {
  std::string out;
  pr::append_authentication_ok(out);
  pr::append_parameter_status(out, "server_version", "15.0 (pgvalve " PGVALVE_VERSION ")");
  pr::append_parameter_status(out, "server_encoding", "UTF8");
  pr::append_parameter_status(out, "client_encoding", "UTF8");
  pr::append_parameter_status(out, "DateStyle", "ISO, MDY");
  pr::append_parameter_status(out, "standard_conforming_strings", "on");
  pr::append_parameter_status(out, "integer_datetimes", "on");
  pr::append_backend_key_data(out, {0, 0});
  pr::append_ready_for_query(out, 'I');
  if (!co_await write_all(client, out)) co_return;
  PGV_LOG(Info, "admin_login", {"client", client_id}, {"user", user});

  bool refused_in_flight = false;  // an extended-protocol flight got its error; up to its Sync
  for (;;) {
    pr::Frame f;
    const int partial_ms = app.config()->limits.message_timeout_ms;
    const ReadStatus read = co_await read_frame(client, in, kMaxCommandBytes, f, nullptr,
                                                std::chrono::milliseconds(partial_ms));
    if (read == ReadStatus::TimedOut) {
      out.clear();
      error(out, "08P01",
            "pgvalve: the console started a message and did not send the rest within "
            "limits.message_timeout_ms (" +
                std::to_string(partial_ms) + " ms); send whole messages",
            true);
      co_await write_all(client, out);
      co_return;
    }
    if (read == ReadStatus::Invalid || read == ReadStatus::NoMemory) {
      // The message can be neither taken nor skipped: the session ends, as in PostgreSQL.
      out.clear();
      if (read == ReadStatus::NoMemory) {
        error(out, "53400",
              "pgvalve: too much memory is held for messages still being received "
              "(limits.message_memory_bytes); send smaller messages or retry later",
              true);
      } else if (const std::uint32_t length = pr::read_u32(in.readable().data() + 1); length < 4) {
        error(out, "08P01",
              "pgvalve: invalid message length " + std::to_string(length) +
                  " (a length counts its own 4 bytes, so it is at least 4); a client must send "
                  "PostgreSQL protocol 3.0 messages",
              true);
      } else {
        error(out, "08P01",
              "pgvalve: a message of " + std::to_string(std::uint64_t{length} + 1) +
                  " bytes is too large: an admin console message may be at most 1 MiB; send "
                  "the command alone",
              true);
      }
      co_await write_all(client, out);
      co_return;
    }
    if (read != ReadStatus::Ok) co_return;
    out.clear();
    if (f.tag == 'X') co_return;
    // A reload may have taken the console from this user since it logged in.
    if (const config::User* now = app.config()->find_user(user); !now || !now->admin) {
      error(out, "28000",
            "pgvalve: a reload " + std::string(now ? "took admin: true from" : "removed") +
                " user \"" + user + "\"; this admin console session ends",
            true);
      co_await write_all(client, out);
      co_return;
    }
    if (f.tag == 'H' && !refused_in_flight) {
      // A Flush: nothing is pending, so nothing to send, and no flight starts (PostgreSQL then
      // answers the next Query).
    } else if (f.tag == 'S' && !refused_in_flight) {
      pr::append_ready_for_query(out, 'I');  // a Sync alone: what PostgreSQL answers
    } else if (f.tag != 'Q' || refused_in_flight) {
      // One error per flight, as PostgreSQL answers a failed extended-protocol request; as it,
      // the console then skips every message up to the Sync, a Query too.
      if (!refused_in_flight) {
        error(out, "0A000", "pgvalve: the admin console accepts simple queries only");
      }
      refused_in_flight = f.tag != 'S';
      if (f.tag == 'S') pr::append_ready_for_query(out, 'I');
    } else if (const auto why = malformed_query(f.body); !why.empty()) {
      // As PostgreSQL: an error, and the session goes on (the framing is intact).
      error(out, "08P01", "pgvalve: malformed Query message: " + why);
      pr::append_ready_for_query(out, 'I');
    } else {
      auto sql = pr::read_query(f).value_or("");
      auto words = words_of(sql);
      std::string unreadable;
      split_words(sql, &unreadable);
      PGV_LOG(Info, "admin_command", {"client", client_id},
              {"command", sql.substr(0, 1024)});  // a command is short; a log line too
      try {
        if (!unreadable.empty()) {
          error(out, "42601", "pgvalve: " + unreadable);
        } else if (words.empty()) {
          pr::append_empty_query_response(out);
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "POOLS") {
          const std::vector<ConnectionRow> pool_connections =
              co_await collect_connections(app, client);
          show_pools(app, pool_connections, out);
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "CONFIG") {
          show_config(app, out);
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "VERSION") {
          append_result(out, {"version"}, {{"pgvalve " PGVALVE_VERSION}});
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "HOSTS") {
          show_hosts(app, out);
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "QUERIES") {
          co_await answer_statistics(app, words[1], out);
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "SLOW_QUERIES") {
          co_await answer_statistics(app, words[1], out);
        } else if (words.size() == 2 && words[0] == "SHOW" &&
                   (words[1] == "CLIENTS" || words[1] == "SERVERS")) {
          const auto rows = co_await collect_connections(app, client);
          show_connections(app, rows, words[1] == "CLIENTS" ? 'C' : 'S', out);
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "STATS") {
          co_await answer_statistics(app, words[1], out);
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "HELP") {
          show_help(out);
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "SHARDS") {
          co_await answer_statistics(app, words[1], out);
        } else if ((words[0] == "PAUSE" || words[0] == "RESUME") && words.size() <= 2) {
          const std::string database = words.size() == 2 ? raw_words(sql)[1] : "";
          if (!database.empty() && !app.config()->find_database(database)) {
            error(out, "3D000", "pgvalve: no database \"" + database + "\" in the configuration");
          } else if (words[0] == "RESUME" && !app.resume(database)) {
            error(out, "55000",
                  "pgvalve: every database is paused (PAUSE without a name), \"" + database +
                      "\" too; RESUME without a name ends that pause");
          } else if (words[0] == "RESUME") {
            PGV_LOG(Warn, "resumed", {"database", database.empty() ? "*" : database});
            pr::append_command_complete(out, "RESUME");
          } else {
            app.pause(database);
            PGV_LOG(Warn, "paused", {"database", database.empty() ? "*" : database});
            // PgBouncer's meaning: PAUSE returns once every server connection is back.
            boost::asio::steady_timer timer(client.get_executor());
            while (app.lent_in(database) > 0 && app.paused(database)) {
              if (client_gone(client)) {
                PGV_LOG(Info, "admin_client_gone", {"client", client_id}, {"command", "PAUSE"},
                        {"action", "the pause stays until RESUME"});
                co_return;
              }
              timer.expires_after(std::chrono::milliseconds(20));
              co_await timer.async_wait(boost::asio::use_awaitable);
            }
            pr::append_command_complete(out, "PAUSE");
          }
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "DATABASES") {
          show_databases(app, out);
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "USERS") {
          show_users(app, out);
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "LISTS") {
          show_lists(app, out);
        } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "STATE") {
          show_state(app, out);
        } else if (is_connection_command(words)) {
          if (!co_await connection_command(app, client, sql, out)) {
            PGV_LOG(Info, "admin_client_gone", {"client", client_id}, {"command", "WAIT_CLOSE"});
            co_return;
          }
        } else if (words.size() == 1 && words[0] == "SHUTDOWN") {
          co_await app.shutdown();
          pr::append_command_complete(out, "SHUTDOWN");
        } else if (words.size() == 2 && words[0] == "RESET" && words[1] == "QUERIES") {
          co_await app.reset_query_stats();
          pr::append_command_complete(out, "RESET");
        } else if (!words.empty() && (words[0] == "SWITCHOVER" || words[0] == "FAILOVER")) {
          // Names as written (databases and shards are case-sensitive), after the command word.
          const auto raw = raw_words(sql);
          const bool switchover = words[0] == "SWITCHOVER";
          std::string database = raw.size() > 1 ? raw[1] : "";
          std::string shard;
          std::optional<config::Endpoint> to;
          bool bad = database.empty();
          std::size_t i = 2;
          if (raw.size() > i && words[i] != "TO") shard = raw[i++];
          if (switchover && raw.size() > i && words[i] == "TO") {
            to = raw.size() > i + 1 ? parse_endpoint(raw[i + 1]) : std::nullopt;
            bad = bad || !to;
            i += 2;
          }
          bad = bad || raw.size() > i;
          if (bad) {
            error(out, "42601",
                  switchover ? "pgvalve: usage: SWITCHOVER <database> [shard] [TO host:port]"
                             : "pgvalve: usage: FAILOVER <database> [shard]");
          } else {
            const DrillResult r = co_await await_drill(client, [&](HealthChecker::DrillDone done) {
              if (switchover) {
                app.switchover(database, shard, to, std::move(done));
              } else {
                app.failover(database, shard, std::move(done));
              }
            });
            if (r.ok) {
              notice(out, r.message);
              pr::append_command_complete(out, words[0]);
            } else {
              error(out, "55000", r.message);
            }
          }
        } else if (words.size() == 1 && words[0] == "RELOAD") {
          if (co_await app.reload_on_control()) {
            pr::append_command_complete(out, "RELOAD");
          } else {
            error(out, "F0000",
                  "pgvalve: the new config file was refused (see the log); the running "
                  "configuration is unchanged");
          }
        } else if (const auto usage = usage_of(words); !usage.empty()) {
          error(out, "42601", "pgvalve: usage: " + std::string(usage));
        } else {
          error(out, "42601", "pgvalve: unknown admin command; available: " + command_list());
        }
      } catch (const WorkerSilent& e) {
        // A worker did not answer: no answer from the others would be whole.
        out.clear();
        error(out, "57014", e.what());
      }
      pr::append_ready_for_query(out, 'I');
    }
    in.consume(f.whole.size());
    if (!out.empty() && !co_await write_all(client, out)) co_return;
  }
}

}  // namespace pgvalve::proxy
