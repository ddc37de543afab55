#include "proxy/health_checker.h"

#include <libpq-fe.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>
#include <set>

#include "proxy/log.h"

namespace pgvalve::proxy {

namespace {

using Clock = std::chrono::steady_clock;
using error_code = boost::system::error_code;

// One round trip answers every question. On a standby the timeline it receives is only shown
// to pg_read_all_stats (pg_monitor) members; without it the column is NULL and timelines are
// not compared. pg_walfile_name() names the primary's current timeline without any privilege.
constexpr const char* kCheckSql =
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, "
    "pg_last_wal_receive_lsn(), "
    "CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver) "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END";

// Debian's bundle of the system's CA certificates: what OpenSSL's default verify paths (and so
// pgvalve's own server links) trust when server_tls_ca is not set. libpq 15 has no such default.
constexpr const char* kSystemCaFile = "/etc/ssl/certs/ca-certificates.crt";

const char* sslmode(config::ServerTlsMode mode) {
  switch (mode) {
    case config::ServerTlsMode::Disable:
      return "disable";
    case config::ServerTlsMode::Prefer:
      return "prefer";
    case config::ServerTlsMode::Require:
      return "require";
    case config::ServerTlsMode::VerifyCa:
      return "verify-ca";
    case config::ServerTlsMode::VerifyFull:
      return "verify-full";
  }
  return "prefer";
}

std::string trimmed(const char* message) {
  std::string s = message ? message : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
    s.pop_back();
  for (char& c : s) {
    if (c == '\n') c = ' ';
  }
  return s;
}

std::string key_of(const config::Endpoint& e) {
  return e.to_string();
}

}  // namespace

const std::vector<ShardTopology>* Topology::find(std::string_view database) const {
  auto it = databases.find(database);
  return it == databases.end() ? nullptr : &it->second;
}

// One host's checking connection and its loop.
struct HealthChecker::Host {
  explicit Host(asio::io_context& io, config::Endpoint e) : endpoint(std::move(e)), pause(io) {}
  ~Host() { close(); }
  void close() {
    if (conn) PQfinish(conn);
    conn = nullptr;
  }

  config::Endpoint endpoint;
  PGconn* conn = nullptr;
  bool stopped = false;
  bool timed_out = false;
  asio::posix::stream_descriptor* waiting = nullptr;  // the wait a deadline cancels
  asio::steady_timer pause;                           // between checks
};

struct HealthChecker::Monitor {
  std::string database;
  std::string shard;
  std::vector<config::Endpoint> hosts;
  health::ShardHealth health;
  std::shared_ptr<health::ShardStatus> status;
  // What was last logged, so that only changes are.
  std::optional<std::size_t> logged_primary;
  bool logged_split_brain = false;
  std::vector<char> logged_up;
  std::vector<char> logged_readable;

  Monitor(std::string db, std::string name, std::vector<config::Endpoint> h,
          health::ShardRules rules)
      : database(std::move(db)),
        shard(std::move(name)),
        hosts(std::move(h)),
        health(hosts.size(), rules),
        status(std::make_shared<health::ShardStatus>(hosts.size())),
        logged_primary(0),
        logged_up(hosts.size(), 1),
        logged_readable(hosts.size(), 0) {}
};

HealthChecker::HealthChecker(asio::io_context& control) : control_(control) {}

HealthChecker::~HealthChecker() {
  stop();
}

void HealthChecker::stop() {
  for (auto& [key, host] : hosts_) {
    host->stopped = true;
    host->pause.cancel();
    if (host->waiting) host->waiting->cancel();
  }
  hosts_.clear();
}

namespace {

health::ShardRules rules_of(const config::Config& c) {
  health::ShardRules r;
  r.failover = c.failover.mode;
  r.failures_before_down = c.health.failures_before_down;
  r.max_replica_lag_ms = c.routing.max_replica_lag_ms;
  r.promote_after_ms = c.failover.promote_after_ms;
  return r;
}

std::string monitor_key(const std::string& db, const config::Shard& shard) {
  std::string key = db + "/" + shard.name + "/" + shard.primary.to_string();
  for (const auto& r : shard.replicas)
    key += "," + r.to_string();
  return key;
}

}  // namespace

std::shared_ptr<const Topology> HealthChecker::configure(const config::ConfigPtr& config) {
  config_ = config;
  const health::ShardRules rules = rules_of(*config);
  const auto now = Clock::now();

  std::map<std::string, std::shared_ptr<Monitor>> old;
  for (auto& m : monitors_) {
    std::string key = m->database + "/" + m->shard + "/";
    for (std::size_t i = 0; i < m->hosts.size(); ++i)
      key += (i ? "," : "") + m->hosts[i].to_string();
    old.emplace(std::move(key), m);
  }
  // Figures of every host known before, to carry into shards whose host list changed.
  std::map<std::string, health::HostHealth> known;
  for (auto& m : monitors_) {
    for (std::size_t i = 0; i < m->hosts.size(); ++i)
      known.emplace(key_of(m->hosts[i]), m->health.host(i));
  }

  auto topology = std::make_shared<Topology>();
  topology->generation = ++generation_;
  std::vector<std::shared_ptr<Monitor>> monitors;
  std::set<std::string> endpoints;
  for (const config::Database& db : config->databases) {
    auto& shards = topology->databases[db.name];
    for (const config::Shard& shard : db.shards) {
      std::vector<config::Endpoint> hosts{shard.primary};
      hosts.insert(hosts.end(), shard.replicas.begin(), shard.replicas.end());
      std::shared_ptr<Monitor> m;
      if (auto it = old.find(monitor_key(db.name, shard)); it != old.end()) {
        m = it->second;
        m->health.set_rules(rules);
      } else {
        m = std::make_shared<Monitor>(db.name, shard.name, hosts, rules);
        for (std::size_t i = 0; i < hosts.size(); ++i) {
          if (auto k = known.find(key_of(hosts[i])); k != known.end()) {
            m->health.seed(i, k->second);
          }
        }
      }
      m->health.assess(now);
      m->status->publish(m->health);
      monitors.push_back(m);
      shards.push_back(ShardTopology{shard.name, hosts, m->status});
      for (const auto& h : hosts)
        endpoints.insert(key_of(h));
    }
  }
  monitors_ = std::move(monitors);

  // Hosts no shard lists any more stop being checked; new ones start.
  for (auto it = hosts_.begin(); it != hosts_.end();) {
    if (!endpoints.contains(it->first)) {
      it->second->stopped = true;
      it->second->pause.cancel();
      if (it->second->waiting) it->second->waiting->cancel();
      PGV_LOG(Info, "health_check_stopped", {"host", it->first});
      it = hosts_.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& m : monitors_) {
    for (const auto& e : m->hosts) {
      const std::string key = key_of(e);
      if (hosts_.contains(key)) continue;
      auto host = std::make_shared<Host>(control_, e);
      hosts_.emplace(key, host);
      asio::co_spawn(control_, watch(host), asio::detached);
    }
  }
  snapshot();
  return topology;
}

namespace {

// Waits for libpq's socket (without taking it: libpq owns and may replace it) until it is
// ready or the check's deadline cancels the wait.
template <typename HostT>
asio::awaitable<bool> wait_socket(asio::io_context& io, HostT& h, bool for_write) {
  const int fd = PQsocket(h.conn);
  if (fd < 0) co_return false;
  // Released, never closed, however the wait ends (also when the loop is destroyed with it).
  struct Borrowed {
    asio::posix::stream_descriptor d;
    HostT& h;
    ~Borrowed() {
      h.waiting = nullptr;
      d.release();
    }
  } borrowed{asio::posix::stream_descriptor(io, fd), h};
  h.waiting = &borrowed.d;
  error_code ec;
  co_await borrowed.d.async_wait(for_write ? asio::posix::stream_descriptor::wait_write
                                           : asio::posix::stream_descriptor::wait_read,
                                 asio::redirect_error(asio::use_awaitable, ec));
  co_return !ec && !h.timed_out && !h.stopped;
}

}  // namespace

asio::awaitable<void> HealthChecker::watch(std::shared_ptr<Host> host) {
  Host& h = *host;
  while (!h.stopped) {
    const config::ConfigPtr config = config_;
    const auto started = Clock::now();
    const auto timeout = std::chrono::milliseconds(config->health.timeout_ms);
    h.timed_out = false;
    asio::steady_timer deadline(control_);
    deadline.expires_after(timeout);
    deadline.async_wait([host](const error_code& ec) {
      if (ec) return;
      host->timed_out = true;
      if (host->waiting) host->waiting->cancel();
    });

    std::string error;
    health::Probe probe;
    bool ok = true;
    if (!h.conn) {
      const std::string port = std::to_string(h.endpoint.port);
      const std::string& ca = config->server_tls_ca;
      const char* keys[] = {"host",    "port",        "dbname",           "user", "password",
                            "sslmode", "sslrootcert", "application_name", nullptr};
      const char* values[] = {h.endpoint.host.c_str(),
                              port.c_str(),
                              config->health.dbname.c_str(),
                              config->health.user.c_str(),
                              config->health.password.c_str(),
                              sslmode(config->server_tls),
                              ca.empty() ? kSystemCaFile : ca.c_str(),
                              "pgvalve health check",
                              nullptr};
      h.conn = PQconnectStartParams(keys, values, 0);
      if (!h.conn || PQstatus(h.conn) == CONNECTION_BAD) {
        ok = false;
        error = h.conn ? trimmed(PQerrorMessage(h.conn)) : "out of memory";
      }
      PostgresPollingStatusType st = PGRES_POLLING_WRITING;
      while (ok && st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED) {
          ok = false;
          error = trimmed(PQerrorMessage(h.conn));
          break;
        }
        if (!co_await wait_socket(control_, h, st == PGRES_POLLING_WRITING)) {
          ok = false;
          break;
        }
        st = PQconnectPoll(h.conn);
      }
      if (ok) PQsetnonblocking(h.conn, 1);
    }
    if (ok && !PQsendQuery(h.conn, kCheckSql)) {
      ok = false;
      error = trimmed(PQerrorMessage(h.conn));
    }
    while (ok) {
      const int flushed = PQflush(h.conn);
      if (flushed == 0) break;
      if (flushed < 0 || !co_await wait_socket(control_, h, true)) ok = false;
    }
    bool have_row = false;
    while (ok) {
      if (!PQconsumeInput(h.conn)) {
        ok = false;
        error = trimmed(PQerrorMessage(h.conn));
        break;
      }
      bool done = false;
      while (!PQisBusy(h.conn)) {
        PGresult* r = PQgetResult(h.conn);
        if (!r) {
          done = true;
          break;
        }
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQnfields(r) == 4) {
          probe.in_recovery = PQgetvalue(r, 0, 0)[0] == 't';
          health::parse_lsn(PQgetvalue(r, 0, 1), probe.lsn);
          if (!PQgetisnull(r, 0, 2)) health::parse_lsn(PQgetvalue(r, 0, 2), probe.receive_lsn);
          if (!PQgetisnull(r, 0, 3)) {
            const char* t = PQgetvalue(r, 0, 3);
            std::from_chars(t, t + std::char_traits<char>::length(t), probe.timeline);
          }
          have_row = true;
        } else if (PQresultStatus(r) != PGRES_TUPLES_OK) {
          error = trimmed(PQresultErrorMessage(r));
        }
        PQclear(r);
      }
      if (done) break;
      if (!co_await wait_socket(control_, h, false)) ok = false;
    }
    if (ok && !have_row) {
      ok = false;
      if (error.empty()) error = "the health check query returned no row";
    }
    deadline.cancel();
    if (h.stopped) break;
    if (!ok) {
      if (error.empty()) {
        error = h.timed_out ? "no answer within health.timeout_ms (" +
                                  std::to_string(config->health.timeout_ms) + " ms)"
                            : "connection lost";
      }
      h.close();  // the next check starts from a new connection
    }
    report(h, ok, probe, error);

    h.pause.expires_at(started + std::chrono::milliseconds(config_->health.interval_ms));
    error_code ec;
    co_await h.pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  h.close();
}

void HealthChecker::report(Host& host, bool ok, const health::Probe& probe,
                           const std::string& error) {
  const auto now = Clock::now();
  for (auto& m : monitors_) {
    for (std::size_t i = 0; i < m->hosts.size(); ++i) {
      if (!(m->hosts[i] == host.endpoint)) continue;
      if (ok) {
        m->health.succeeded(i, probe, now);
      } else {
        m->health.failed(i, error, now);
      }
    }
    assess(*m, now);
  }
  snapshot();
}

void HealthChecker::assess(Monitor& m, Clock::time_point now) {
  m.health.assess(now);
  m.status->publish(m.health);
  for (std::size_t i = 0; i < m.hosts.size(); ++i) {
    const auto& f = m.health.figures(i);
    const auto& a = m.health.assessment(i);
    const std::string host = m.hosts[i].to_string();
    if (f.checked && static_cast<bool>(m.logged_up[i]) != f.up) {
      m.logged_up[i] = f.up;
      if (f.up) {
        PGV_LOG(Info, "host_up", {"database", m.database}, {"shard", m.shard}, {"host", host},
                {"role", health::role_name(a.role)});
      } else {
        PGV_LOG(Warn, "host_down", {"database", m.database}, {"shard", m.shard}, {"host", host},
                {"role", health::role_name(a.role)}, {"failures", f.failures},
                {"error", f.last_error});
      }
    }
    if (static_cast<bool>(m.logged_readable[i]) != a.readable && a.role == health::Role::Replica) {
      m.logged_readable[i] = a.readable;
      if (a.readable) {
        PGV_LOG(Info, "replica_takes_reads", {"database", m.database}, {"shard", m.shard},
                {"host", host}, {"lag_ms", a.lag_ms});
      } else if (f.up) {
        PGV_LOG(Warn, "replica_takes_no_reads", {"database", m.database}, {"shard", m.shard},
                {"host", host}, {"lag_ms", a.lag_ms}, {"lag_bytes", a.lag_bytes},
                {"in_recovery", f.in_recovery ? "true" : "false"});
      }
    }
  }
  const auto primary = m.health.writable_primary();
  if (primary != m.logged_primary) {
    if (primary) {
      PGV_LOG(Warn, "primary", {"database", m.database}, {"shard", m.shard},
              {"host", m.hosts[*primary].to_string()},
              {"timeline", m.health.figures(*primary).timeline});
    } else {
      PGV_LOG(Warn, "no_primary", {"database", m.database}, {"shard", m.shard},
              {"last_primary", m.hosts[m.health.primary()].to_string()},
              {"split_brain", m.health.split_brain() ? "true" : "false"});
    }
    m.logged_primary = primary;
  }
}

void HealthChecker::snapshot() {
  const auto steady_now = Clock::now();
  const auto wall_now = std::chrono::system_clock::now();
  std::vector<HostRow> rows;
  for (const auto& m : monitors_) {
    for (std::size_t i = 0; i < m->hosts.size(); ++i) {
      const auto& f = m->health.figures(i);
      const auto& a = m->health.assessment(i);
      HostRow row;
      row.database = m->database;
      row.shard = m->shard;
      row.host = m->hosts[i];
      row.role = a.role;
      row.up = f.up;
      row.checked = f.checked;
      row.readable = a.readable;
      row.lag_ms = a.lag_ms;
      row.lag_bytes = a.lag_bytes;
      row.lsn = f.lsn;
      row.timeline = f.timeline;
      if (f.checked) {
        row.last_check = wall_now - std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                        steady_now - f.last_check);
      }
      row.failures = f.failures;
      row.last_error = f.last_error;
      rows.push_back(std::move(row));
    }
  }
  std::lock_guard lock(rows_mutex_);
  rows_ = std::move(rows);
}

std::vector<HostRow> HealthChecker::hosts() const {
  std::lock_guard lock(rows_mutex_);
  return rows_;
}

}  // namespace pgvalve::proxy
