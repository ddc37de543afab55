#include "proxy/health_checker.h"

#include <libpq-fe.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>
#include <set>

#include "health/shared_hosts.h"
#include "protocol/messages.h"
#include "proxy/io_util.h"
#include "proxy/log.h"
#include "proxy/pg_link.h"

namespace pgvalve::proxy {

namespace {

using Clock = std::chrono::steady_clock;
using error_code = boost::system::error_code;

// One round trip answers every question. On a standby the timeline it receives is only shown
// to pg_read_all_stats (pg_monitor) members; without it the column is NULL and timelines are
// not compared. A standby with no WAL receiver (one left following a dead primary) shows none
// either: then the newest timeline of a WAL segment in its pg_wal is its timeline (pg_monitor
// may list it), else a replica left on a timeline the primary left would take reads. That
// listing runs through query_to_xml() because PostgreSQL checks the EXECUTE privilege of a
// function the query names when the query starts, even in a branch never taken.
// pg_walfile_name() names the primary's current timeline without any privilege.
// The last column lists the databases pgvalve serves from the host with the collation each
// orders text in, which a sharded database's sessions need to merge text the shards sorted
// (routing/text_order.h); read through to_jsonb, whose keys name the columns of PostgreSQL
// 15/16 (daticulocale) and 17 (datlocale) alike, and are absent before 15 (libc only).
// Up to the list of database names check_sql() appends.
constexpr const char* kCheckSqlHead =
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, "
    "pg_last_wal_receive_lsn(), "
    "CASE WHEN pg_is_in_recovery() THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), "
    "CASE WHEN has_function_privilege('pg_catalog.pg_ls_waldir()', 'EXECUTE') THEN "
    "('x' || (pg_catalog.xpath('/row/t/text()', pg_catalog.query_to_xml("
    "'SELECT max(substr(name, 1, 8)) AS t FROM pg_catalog.pg_ls_waldir() "
    "WHERE name ~ ''^[0-9A-F]{24}$''', false, true, '')))[1]::text)::bit(32)::int END) "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, "
    "(SELECT count(*) FROM pg_catalog.pg_prepared_xacts WHERE gid LIKE 'pgvalve:%'), "
    "(SELECT string_agg(datname || chr(9) || coalesce(j->>'datlocprovider', 'c') || chr(9) || "
    "coalesce(j->>'daticulocale', j->>'datlocale', datcollate), chr(10)) "
    "FROM (SELECT datname, datcollate, to_jsonb(d) AS j FROM pg_catalog.pg_database d "
    "WHERE datname IN (";

// The check for a host that serves `dbnames` (none: no collations are read).
std::string check_sql(const std::set<std::string>& dbnames) {
  std::string sql = kCheckSqlHead;
  if (dbnames.empty()) sql += "NULL";
  for (const std::string& name : dbnames) {
    if (sql.back() != '(') sql += ", ";
    sql += '\'';
    for (char c : name) {
      if (c == '\'') sql += '\'';
      sql += c;
    }
    sql += '\'';
  }
  return sql + ")) x)";
}

std::string key_of(const config::Endpoint& e) {
  return e.to_string();
}

}  // namespace

const std::vector<ShardTopology>* Topology::find(std::string_view database) const {
  auto it = databases.find(database);
  return it == databases.end() ? nullptr : &it->second;
}

namespace {

// The server answered the check, but refused it: its login (password, pg_hba.conf, a database
// that does not exist), the query's privileges, or a password pgvalve would not send. The host
// is alive; the check is misconfigured. "the database system is starting up / shutting down /
// in recovery mode" and terminated connections are the host not serving: failures.
bool answered_but_refused(std::string_view error) {
  if (error.find("the database system is") != std::string_view::npos ||
      error.find("terminating connection") != std::string_view::npos) {
    return false;
  }
  return error.find("FATAL:") != std::string_view::npos || error.starts_with("ERROR:") ||
         error.starts_with("the server asks for a");
}

// The health check's row (check_sql()) as a probe.
bool read_probe(const QueryOutcome& q, health::Probe& probe, std::string& error) {
  if (q.row.size() != 6 || !q.row[0] || !q.row[1]) {
    error = "the health check query returned an unexpected row";
    return false;
  }
  probe.in_recovery = (*q.row[0])[0] == 't';
  health::parse_lsn(*q.row[1], probe.lsn);
  if (q.row[2]) health::parse_lsn(*q.row[2], probe.receive_lsn);
  if (q.row[3]) {
    const std::string& t = *q.row[3];
    std::from_chars(t.data(), t.data() + t.size(), probe.timeline);
  }
  if (q.row[4]) {
    const std::string& n = *q.row[4];
    std::from_chars(n.data(), n.data() + n.size(), probe.prepared);
  }
  return true;
}

}  // namespace

// One host's checking connection and its loop.
struct HealthChecker::Host {
  Host(asio::io_context& io, config::Endpoint e)
      : endpoint(std::move(e)), link(std::make_shared<PgLink>()), pause(io) {}

  config::Endpoint endpoint;
  std::shared_ptr<PgLink> link;
  bool stopped = false;
  std::string check_sql;     // check_sql() of the databases it serves
  std::string databases;     // the check's list of databases and their collations, as last read
  asio::steady_timer pause;  // between checks; cancelled to check at once
  Clock::time_point last_started{};
};

struct HealthChecker::Monitor {
  std::string database;
  std::string shard;
  std::vector<config::Endpoint> hosts;
  health::ShardHealth health;
  std::shared_ptr<health::ShardStatus> status;
  bool writes_paused = false;  // a switchover or a promotion is under way
  bool drill_running = false;  // a promotion (automatic or a drill) is under way
  // What was last logged, so that only changes are.
  std::optional<std::size_t> logged_primary;
  std::size_t last_writable = 0;  // the host that last took writes (failovers_total)
  std::string_view logged_blocked;
  std::vector<char> logged_up;
  std::vector<char> logged_readable;
  std::vector<char> logged_retired;

  Monitor(std::string db, std::string name, std::vector<config::Endpoint> h,
          health::ShardRules rules)
      : database(std::move(db)),
        shard(std::move(name)),
        hosts(std::move(h)),
        health(hosts.size(), rules),
        status(std::make_shared<health::ShardStatus>(hosts.size())),
        logged_primary(0),
        logged_up(hosts.size(), 1),
        logged_readable(hosts.size(), 0),
        logged_retired(hosts.size(), 0) {}
};

namespace {

// ": host: why; host: why" for each replica a promotion may not choose (empty when none).
std::string why_not_promotable(const std::vector<config::Endpoint>& hosts,
                               const health::ShardHealth& health) {
  std::string out;
  for (std::size_t i = 0; i < hosts.size(); ++i) {
    if (i == health.primary()) continue;
    const auto why = health.not_promotable(i);
    if (why.empty()) continue;
    out += out.empty() ? ": " : "; ";
    out += hosts[i].to_string() + ": " + std::string(why);
  }
  return out;
}

// "other/s0, billing/s0": the shards of `group` from `from` on, for messages and the log.
template <typename Group>
std::string shard_names(const Group& group, std::size_t from) {
  std::string out;
  for (std::size_t i = from; i < group.size(); ++i) {
    if (!out.empty()) out += ", ";
    out += group[i]->database + "/" + group[i]->shard;
  }
  return out;
}

constexpr std::string_view kEntangled =
    "another database's shard shares some of these hosts but not all";

// A drill may not choose for shards that share only some hosts: the other could lose its
// primary, or get one it does not list.
template <typename Monitor, typename Group>
std::string entangled_refusal(const Monitor& m, const Group& entangled) {
  return "pgvalve: shard " + m.shard + " of database " + m.database +
         " shares some of its hosts, but not all, with " + shard_names(entangled, 0) +
         "; a promotion would move only some of them. List the same hosts in both (or none in "
         "common) and RELOAD, or promote by hand (pg_ctl promote; pgvalve follows)";
}

}  // namespace

HealthChecker::HealthChecker(asio::io_context& control, LentCounter lent,
                             PrimaryMoved primary_moved, HostRetired retired)
    : control_(control),
      lent_(std::move(lent)),
      primary_moved_(std::move(primary_moved)),
      retired_(std::move(retired)) {}

HealthChecker::~HealthChecker() {
  stop();
}

void HealthChecker::stop() {
  for (auto& [key, host] : hosts_) {
    host->stopped = true;
    host->link->stopped = true;
    host->pause.cancel();
    if (host->link->waiting) host->link->waiting->cancel();
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
  Monitors fresh;
  std::set<std::string> endpoints;
  for (const config::Database& db : config->databases) {
    auto& slot = text_orders_[db.name];
    if (!slot) slot = std::make_shared<routing::TextOrderSlot>();
    topology->text_orders.emplace(db.name, slot);
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
        fresh.push_back(m);
        for (std::size_t i = 0; i < hosts.size(); ++i) {
          if (auto k = known.find(key_of(hosts[i])); k != known.end()) {
            m->health.seed(i, k->second);
          }
        }
      }
      m->health.assess(now);
      m->status->publish(m->health, m->writes_paused);
      monitors.push_back(m);
      shards.push_back(ShardTopology{shard.name, hosts, m->status});
      for (const auto& h : hosts)
        endpoints.insert(key_of(h));
    }
  }
  monitors_ = std::move(monitors);
  // A shard added over servers a drill is moving now pauses with the others until it ends.
  for (const auto& f : fresh) {
    for (const auto& g : sharing_of(f).together) {
      if (g == f || !g->drill_running) continue;
      f->drill_running = true;
      f->writes_paused = f->writes_paused || g->writes_paused;
      f->status->publish(f->health, f->writes_paused);
    }
  }
  learn_text_orders();

  // Hosts no shard lists any more stop being checked; new ones start.
  for (auto it = hosts_.begin(); it != hosts_.end();) {
    if (!endpoints.contains(it->first)) {
      it->second->stopped = true;
      it->second->link->stopped = true;
      it->second->pause.cancel();
      if (it->second->link->waiting) it->second->link->waiting->cancel();
      PGV_LOG(Info, "health_check_stopped", {"host", it->first});
      it = hosts_.erase(it);
    } else {
      ++it;
    }
  }
  std::map<std::string, std::set<std::string>> dbnames;  // by host
  for (const config::Database& db : config->databases) {
    for (const config::Shard& shard : db.shards) {
      dbnames[key_of(shard.primary)].insert(db.dbname);
      for (const auto& r : shard.replicas)
        dbnames[key_of(r)].insert(db.dbname);
    }
  }
  for (const auto& m : monitors_) {
    for (const auto& e : m->hosts) {
      const std::string key = key_of(e);
      auto [it, added] = hosts_.try_emplace(key);
      if (added) it->second = std::make_shared<Host>(control_, e);
      it->second->check_sql = check_sql(dbnames[key]);
      if (added) asio::co_spawn(control_, watch(it->second), asio::detached);
    }
  }
  snapshot();
  return topology;
}

asio::awaitable<void> HealthChecker::watch(std::shared_ptr<Host> host) {
  Host& h = *host;
  while (!h.stopped) {
    const config::ConfigPtr config = config_;
    const auto started = Clock::now();
    h.last_started = started;
    const std::string sql = h.check_sql;  // a reload may replace it meanwhile
    const QueryOutcome q = co_await query(control_, h.link, *config, h.endpoint, sql.c_str(),
                                          std::chrono::milliseconds(config->health.timeout_ms));
    if (h.stopped) break;
    health::Probe probe;
    probe.asked = started;
    std::string error = q.error;
    const bool ok = q.ok && read_probe(q, probe, error);
    report(h, ok, probe, error, !ok && answered_but_refused(error));
    if (ok && q.row[5] && *q.row[5] != h.databases) {
      h.databases = *q.row[5];
      learn_text_orders();
    }

    h.pause.expires_at(started + std::chrono::milliseconds(config_->health.interval_ms));
    error_code ec;
    co_await h.pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  h.link->close();
}

// Each database's text order: its shards' (any host of a shard will do: replicas are copies),
// which must agree. Known once every shard's is.
void HealthChecker::learn_text_orders() {
  for (const config::Database& db : config_->databases) {
    const routing::TextOrder* order = nullptr;
    bool every_shard = true;
    for (const auto& m : monitors_) {
      if (m->database != db.name) continue;
      const routing::TextOrder* shard_order = nullptr;
      for (std::size_t i = 0; i < m->hosts.size() && shard_order == nullptr; ++i) {
        auto it = hosts_.find(key_of(m->hosts[i]));
        if (it != hosts_.end()) {
          shard_order = routing::TextOrder::from_catalog(it->second->databases, db.dbname);
        }
      }
      if (shard_order == nullptr) every_shard = false;
      if (shard_order == nullptr || shard_order == order) continue;
      order = order == nullptr ? shard_order : routing::TextOrder::differing(*order, *shard_order);
    }
    auto slot = text_orders_.find(db.name);
    if (order == nullptr || !every_shard || slot == text_orders_.end() ||
        slot->second->get() == order)
      continue;
    slot->second->set(order);
    if (order->usable()) {
      PGV_LOG(Info, "text_order", {"database", db.name}, {"collation", order->name()});
    } else {
      PGV_LOG(Warn, "text_order", {"database", db.name}, {"collation", order->name()},
              {"problem", order->problem()},
              {"action", "ORDER BY, min() and max() of text over several shards are refused"});
    }
  }
}

void HealthChecker::report(Host& host, bool ok, const health::Probe& probe,
                           const std::string& error, bool refused) {
  const auto now = Clock::now();
  for (auto& m : monitors_) {
    for (std::size_t i = 0; i < m->hosts.size(); ++i) {
      if (!(m->hosts[i] == host.endpoint)) continue;
      if (ok) {
        m->health.succeeded(i, probe, now);
      } else if (refused) {
        if (!m->health.figures(i).refused) {
          PGV_LOG(Error, "health_check_refused", {"database", m->database}, {"shard", m->shard},
                  {"host", host.endpoint.to_string()}, {"error", error},
                  {"action",
                   "the host answers but refuses the check: fix health.user / health.password / "
                   "health.dbname (or pg_hba.conf); until then it is trusted as configured "
                   "(primary) or takes no reads (replica)"});
        }
        m->health.refused(i, error, now);
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
  m.status->publish(m.health, m.writes_paused);
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
    if (const bool retired = a.role == health::Role::Retired;
        static_cast<bool>(m.logged_retired[i]) != retired) {
      m.logged_retired[i] = retired;
      if (retired) {
        PGV_LOG(Warn, "host_retired", {"database", m.database}, {"shard", m.shard}, {"host", host},
                {"action",
                 "takes no work until it follows the primary again; its idle server "
                 "connections close"});
        if (retired_) retired_(m.database, m.hosts[i]);
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
      if (*primary != m.last_writable) {
        failovers_.fetch_add(1, std::memory_order_relaxed);
        m.last_writable = *primary;
      }
      if (primary_moved_) primary_moved_(m.database, m.shard, m.hosts[*primary], {});
    } else {
      PGV_LOG(Warn, "no_primary", {"database", m.database}, {"shard", m.shard},
              {"last_primary", m.hosts[m.health.primary()].to_string()},
              {"split_brain", m.health.split_brain() ? "true" : "false"});
    }
    m.logged_primary = primary;
  }
  if (m.drill_running) return;
  if (auto candidate = m.health.promotion_candidate(now)) {
    for (const auto& shared : monitors_) {
      if (shared.get() != &m) continue;
      // One decision per set of servers: the shards over them are assessed one after another
      // from the same checks, and each would otherwise promote a replica of its own choosing.
      const Sharing sharing = sharing_of(shared);
      if (!sharing.entangled.empty()) {
        if (m.logged_blocked != kEntangled) {
          PGV_LOG(Warn, "promotion_blocked", {"database", m.database}, {"shard", m.shard},
                  {"reason", kEntangled}, {"shares_hosts_with", shard_names(sharing.entangled, 0)});
          m.logged_blocked = kEntangled;
        }
        return;
      }
      for (const auto& g : sharing.together) {
        if (g->drill_running) return;
      }
      for (const auto& g : sharing.together)
        g->drill_running = true;
      asio::co_spawn(control_, run_failover(shared, "failover.mode = promote"),
                     [](std::exception_ptr, DrillResult) {});
    }
  } else if (const auto why = m.health.promotion_blocked(); why != m.logged_blocked) {
    if (!why.empty()) {
      PGV_LOG(Warn, "promotion_blocked", {"database", m.database}, {"shard", m.shard},
              {"reason", why});
    }
    m.logged_blocked = why;
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
      row.refused = f.refused;
      row.readable = a.readable;
      row.writable = m->health.writable_primary() == i && !m->writes_paused;
      row.split_brain = m->health.split_brain();
      row.lag_ms = a.lag_ms;
      row.lag_bytes = a.lag_bytes;
      row.lsn = f.lsn;
      row.timeline = f.timeline;
      row.prepared = f.prepared;
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

std::shared_ptr<HealthChecker::Monitor> HealthChecker::find(const std::string& database,
                                                            const std::string& shard) const {
  for (const auto& m : monitors_) {
    if (m->database == database && (shard.empty() || m->shard == shard)) return m;
  }
  return nullptr;
}

void HealthChecker::suspect(const config::Endpoint& host) {
  for (auto& m : monitors_) {
    for (std::size_t i = 0; i < m->hosts.size(); ++i) {
      if (!(m->hosts[i] == host)) continue;
      m->health.suspect(i);
      m->status->publish(m->health, m->writes_paused);
    }
  }
  // Checked at once — but not more than every 100 ms however many sessions report it.
  if (auto it = hosts_.find(key_of(host));
      it != hosts_.end() &&
      Clock::now() - it->second->last_started >= std::chrono::milliseconds(100)) {
    it->second->pause.cancel();
  }
}

HealthChecker::Sharing HealthChecker::sharing_of(const std::shared_ptr<Monitor>& m) const {
  std::vector<std::vector<config::Endpoint>> lists{m->hosts};
  Monitors others;
  for (const auto& o : monitors_) {
    if (o == m) continue;
    lists.push_back(o->hosts);
    others.push_back(o);
  }
  const health::HostSharing found = health::host_sharing(lists, 0);
  Sharing sharing;
  sharing.together.push_back(m);
  for (const std::size_t i : found.together) {
    if (i > 0) sharing.together.push_back(others[i - 1]);
  }
  for (const std::size_t i : found.entangled)
    sharing.entangled.push_back(others[i - 1]);
  return sharing;
}

asio::awaitable<std::string> HealthChecker::promote(std::shared_ptr<Monitor> m, std::size_t host) {
  const config::ConfigPtr config = config_;
  const config::Endpoint target = m->hosts[host];
  auto link = std::make_shared<PgLink>();
  // pg_promote waits (up to 60 s) until the promotion is complete.
  const QueryOutcome q =
      co_await query(control_, link, *config, target, "SELECT pg_catalog.pg_promote(true, 60)",
                     std::chrono::milliseconds(65000));
  if (!q.ok) co_return "pg_promote() on " + target.to_string() + " failed: " + q.error;
  if (q.row.empty() || !q.row[0] || *q.row[0] != "t") {
    co_return "pg_promote() on " + target.to_string() + " did not finish within 60 s";
  }
  // The server changed for every database over it: another database's shard that kept the old
  // primary until its own next check would take writes there that the new one never sees.
  const Monitors group = sharing_of(m).together;
  co_await move_listeners(group, target, std::chrono::milliseconds(config->health.timeout_ms));
  const auto now = Clock::now();
  for (const auto& g : group) {
    if (const auto i = health::index_of(g->hosts, target)) g->health.promoted(*i, now);
  }
  // Its next check would say so within health.interval_ms; writes resume at once instead.
  const std::string check = check_sql({});
  const QueryOutcome checked = co_await query(control_, link, *config, target, check.c_str(),
                                              std::chrono::milliseconds(config->health.timeout_ms));
  health::Probe probe;
  std::string error;
  const bool probed = checked.ok && read_probe(checked, probe, error);
  for (const auto& g : group) {
    const auto i = health::index_of(g->hosts, target);
    if (probed && i) g->health.succeeded(*i, probe, Clock::now());
    assess(*g, Clock::now());
  }
  snapshot();
  co_return "";
}

asio::awaitable<void> HealthChecker::move_listeners(const Monitors& group,
                                                    const config::Endpoint& primary,
                                                    std::chrono::milliseconds limit) {
  if (!primary_moved_) co_return;
  struct Wait {
    explicit Wait(asio::io_context& context, std::chrono::milliseconds limit, std::size_t n)
        : timer(context, limit), moved(n, false), waiting(n) {}
    asio::steady_timer timer;
    std::vector<bool> moved;
    std::size_t waiting;
  };
  auto wait = std::make_shared<Wait>(control_, limit, group.size());
  for (std::size_t i = 0; i < group.size(); ++i) {
    primary_moved_(group[i]->database, group[i]->shard, primary, [wait, i] {
      if (wait->moved[i]) return;
      wait->moved[i] = true;
      if (--wait->waiting == 0) wait->timer.cancel();
    });
  }
  if (wait->waiting > 0) {
    error_code ec;
    co_await wait->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  for (std::size_t i = 0; i < group.size(); ++i) {
    if (wait->moved[i]) continue;
    PGV_LOG(Warn, "listeners_not_moved", {"database", group[i]->database},
            {"shard", group[i]->shard}, {"primary", primary.to_string()},
            {"waited_ms", limit.count()});
  }
}

namespace {

// A drill under way on shards over the same hosts, or none.
template <typename Group>
void set_drill(const Group& group, bool running) {
  for (const auto& g : group)
    g->drill_running = running;
}

}  // namespace

asio::awaitable<DrillResult> HealthChecker::run_failover(std::shared_ptr<Monitor> m,
                                                         std::string why) {
  const Sharing sharing = sharing_of(m);
  DrillResult result;
  if (!sharing.entangled.empty()) {
    // A reload may have entangled the shards since assess() decided (and marked them).
    set_drill(sharing.together, false);
    result.message = entangled_refusal(*m, sharing.entangled);
    co_return result;
  }
  set_drill(sharing.together, true);
  const std::optional<std::size_t> best = m->health.most_advanced_replica();
  if (!best) {
    result.message = "pgvalve: no replica of shard " + m->shard + " can be promoted" +
                     why_not_promotable(m->hosts, m->health);
  } else {
    const std::string old = m->hosts[m->health.primary()].to_string();
    const std::string target = m->hosts[*best].to_string();
    const std::string with = shard_names(sharing.together, 1);
    if (with.empty()) {
      PGV_LOG(Warn, "failover_started", {"database", m->database}, {"shard", m->shard},
              {"from", old}, {"to", target}, {"reason", why},
              {"replay_lsn", health::format_lsn(m->health.figures(*best).lsn)});
    } else {
      PGV_LOG(Warn, "failover_started", {"database", m->database}, {"shard", m->shard},
              {"from", old}, {"to", target}, {"reason", why},
              {"replay_lsn", health::format_lsn(m->health.figures(*best).lsn)}, {"with", with});
    }
    // Fenced before the promotion: writes pause (an old primary that comes back while the
    // replica is promoted, a paused VM, takes none, nor does the resolver of left parts ask it),
    // and a server lent there (a COMMIT PREPARED in flight, a transaction) is cut now, so that
    // what it may still finish there is never taken for done; its parts go to the resolver,
    // which finishes them on the new primary (found by a code review: a part committed on the
    // retired primary and stayed prepared on the promoted one).
    for (const auto& g : sharing.together) {
      g->writes_paused = true;
      g->status->publish(g->health, true);
    }
    snapshot();
    if (retired_) {
      for (const auto& g : sharing.together)
        retired_(g->database, m->hosts[m->health.primary()]);
    }
    const std::string error = co_await promote(m, *best);
    Monitors resumed = sharing.together;
    for (const auto& g : sharing_of(m).together)
      resumed.push_back(g);
    for (const auto& g : resumed) {
      g->writes_paused = false;
      g->status->publish(g->health, false);
    }
    snapshot();
    if (error.empty()) {
      result.ok = true;
      result.message = "promoted " + target + "; " + old + " is retired";
      if (!with.empty()) result.message += "; moved with it: " + with;
      PGV_LOG(Warn, "failover_done", {"database", m->database}, {"shard", m->shard},
              {"primary", target}, {"retired", old});
    } else {
      result.message = "pgvalve: " + error;
      PGV_LOG(Error, "failover_failed", {"database", m->database}, {"shard", m->shard},
              {"to", target}, {"error", error});
    }
  }
  set_drill(sharing.together, false);
  set_drill(sharing_of(m).together, false);
  co_return result;
}

asio::awaitable<DrillResult> HealthChecker::run_switchover(std::shared_ptr<Monitor> m,
                                                           std::optional<config::Endpoint> to) {
  DrillResult result;
  const Sharing sharing = sharing_of(m);
  // start_drill claimed these hosts; a refusal below frees them again.
  struct Release {
    Monitors claimed;
    ~Release() { set_drill(claimed, false); }
  } release{sharing.together};
  if (!sharing.entangled.empty()) {
    result.message = entangled_refusal(*m, sharing.entangled);
    co_return result;
  }
  const auto primary = m->health.writable_primary();
  if (!primary) {
    result.message = "pgvalve: shard " + m->shard +
                     " has no primary to switch over from; use FAILOVER for a dead primary";
    co_return result;
  }
  // The shards over the same servers move too: they must write to the same primary now.
  for (std::size_t s = 1; s < sharing.together.size(); ++s) {
    const Monitor& g = *sharing.together[s];
    const auto theirs = g.health.writable_primary();
    if (!theirs || g.hosts[*theirs] != m->hosts[*primary]) {
      result.message =
          "pgvalve: shard " + g.shard + " of database " + g.database + ", over the same hosts, " +
          (theirs ? "writes to " + g.hosts[*theirs].to_string() : std::string("has no primary")) +
          ", not " + m->hosts[*primary].to_string() + "; retry when SHOW HOSTS agrees";
      co_return result;
    }
  }
  std::optional<std::size_t> target;
  if (to) {
    for (std::size_t i = 0; i < m->hosts.size(); ++i) {
      if (m->hosts[i] != *to) continue;
      if (const auto why = m->health.not_promotable(i); !why.empty()) {
        result.message = "pgvalve: cannot switch over to " + to->to_string() + ": " +
                         std::string(why) + " (see SHOW HOSTS)";
        co_return result;
      }
      target = i;
    }
  } else {
    target = m->health.most_advanced_replica();
  }
  if (!target) {
    result.message = to ? "pgvalve: " + to->to_string() + " is not a host of shard " + m->shard +
                              " (see SHOW HOSTS)"
                        : "pgvalve: shard " + m->shard + " has no replica to switch to" +
                              why_not_promotable(m->hosts, m->health);
    co_return result;
  }
  for (std::size_t s = 1; s < sharing.together.size(); ++s) {
    const Monitor& g = *sharing.together[s];
    const auto i = health::index_of(g.hosts, m->hosts[*target]);
    if (const auto why = g.health.not_promotable(*i); !why.empty()) {
      result.message = "pgvalve: cannot switch over to " + m->hosts[*target].to_string() +
                       " for shard " + g.shard + " of database " + g.database +
                       ", over the same hosts: " + std::string(why) + " (see SHOW HOSTS)";
      co_return result;
    }
  }
  set_drill(sharing.together, true);
  const config::ConfigPtr config = config_;
  const config::Endpoint old = m->hosts[*primary];
  const config::Endpoint next = m->hosts[*target];
  const auto started = Clock::now();
  const auto limit = std::chrono::milliseconds(std::max(1000, config->failover.hold_writes_ms));
  const std::string with = shard_names(sharing.together, 1);
  if (with.empty()) {
    PGV_LOG(Warn, "switchover_started", {"database", m->database}, {"shard", m->shard},
            {"from", old.to_string()}, {"to", next.to_string()});
  } else {
    PGV_LOG(Warn, "switchover_started", {"database", m->database}, {"shard", m->shard},
            {"from", old.to_string()}, {"to", next.to_string()}, {"with", with});
  }
  // Every database over these servers stops writing to the old primary, not only the one named:
  // a write acknowledged there after the WAL position below was read would be lost.
  for (const auto& g : sharing.together) {
    g->writes_paused = true;
    g->status->publish(g->health, true);
  }
  std::string error;
  asio::steady_timer pause(control_);
  auto sleep = [&](int ms) -> asio::awaitable<void> {
    pause.expires_after(std::chrono::milliseconds(ms));
    error_code ec;
    co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  };
  // 1. Transactions already running on the primary finish there (new ones wait).
  int lent = lent_ ? lent_(old) : 0;
  while (lent > 0 && Clock::now() - started < limit) {
    co_await sleep(10);
    lent = lent_ ? lent_(old) : 0;
  }
  if (lent > 0) {
    error = std::to_string(lent) + " server connection(s) to " + old.to_string() +
            " still lent to clients (open transactions, session mode or pinned clients) after " +
            std::to_string(limit.count()) + " ms";
  }
  // 2. The target replays everything the primary wrote. A commit acknowledged with
  // synchronous_commit = off may be in the WAL buffers only, past pg_current_wal_lsn() (the
  // position written), and a standby gets only what was flushed: pgvalve reads the insert
  // position and commits a transaction of its own with a local flush, which writes and flushes
  // every record before it. Its one record is a logical decoding message (prefix "pgvalve"),
  // the only WAL a role without privileges can write outside a table; a transaction that wrote
  // none would commit without a flush.
  auto old_link = std::make_shared<PgLink>();
  auto next_link = std::make_shared<PgLink>();
  health::Lsn written = 0;
  if (error.empty()) {
    const QueryOutcome q =
        co_await query(control_, old_link, *config, old,
                       "BEGIN; SET LOCAL synchronous_commit = local; SELECT "
                       "pg_catalog.pg_current_wal_insert_lsn(), "
                       "pg_catalog.pg_logical_emit_message(true, 'pgvalve', 'switchover'); COMMIT",
                       std::chrono::milliseconds(config->health.timeout_ms));
    if (!q.ok || q.row.empty() || !q.row[0] || !health::parse_lsn(*q.row[0], written)) {
      error = "could not read the primary's WAL position: " + q.error;
    }
  }
  while (error.empty()) {
    const QueryOutcome q = co_await query(control_, next_link, *config, next,
                                          "SELECT pg_catalog.pg_last_wal_replay_lsn()",
                                          std::chrono::milliseconds(config->health.timeout_ms));
    health::Lsn replayed = 0;
    if (!q.ok || q.row.empty() || !q.row[0] || !health::parse_lsn(*q.row[0], replayed)) {
      error = "could not read " + next.to_string() + "'s replay position: " + q.error;
      break;
    }
    if (replayed >= written) break;
    if (Clock::now() - started >= limit) {
      error = next.to_string() + " replayed only " + health::format_lsn(replayed) + " of " +
              health::format_lsn(written) + " within " + std::to_string(limit.count()) + " ms";
      break;
    }
    co_await sleep(5);
  }
  // 3. Promote; writes go to the new primary.
  if (error.empty()) error = co_await promote(m, *target);
  // With any shard a reload added over these hosts meanwhile (configure() paused it too).
  Monitors resumed = sharing.together;
  for (const auto& g : sharing_of(m).together)
    resumed.push_back(g);
  for (const auto& g : resumed) {
    g->writes_paused = false;
    g->drill_running = false;
    g->status->publish(g->health, false);
  }
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
  if (error.empty()) {
    result.ok = true;
    result.message = "switched over to " + next.to_string() + " in " +
                     std::to_string(took.count()) + " ms; " + old.to_string() + " is retired";
    if (!with.empty()) result.message += "; moved with it: " + with;
    PGV_LOG(Warn, "switchover_done", {"database", m->database}, {"shard", m->shard},
            {"primary", next.to_string()}, {"retired", old.to_string()},
            {"writes_paused_ms", took.count()}, {"lsn", health::format_lsn(written)});
  } else {
    result.message =
        "pgvalve: switchover refused, writes resumed on " + old.to_string() + ": " + error;
    PGV_LOG(Error, "switchover_failed", {"database", m->database}, {"shard", m->shard},
            {"error", error});
  }
  snapshot();
  co_return result;
}

void HealthChecker::start_drill(
    const std::string& database, const std::string& shard, DrillDone done,
    std::function<asio::awaitable<DrillResult>(std::shared_ptr<Monitor>)> drill) {
  auto m = find(database, shard);
  if (!m) {
    done({false, find(database, {}) ? "pgvalve: no shard \"" + shard + "\" in database \"" +
                                          database + "\" (see SHOW SHARDS)"
                                    : "pgvalve: no database \"" + database +
                                          "\" in the configuration (see SHOW DATABASES)"});
    return;
  }
  for (const auto& g : sharing_of(m).together) {
    if (!g->drill_running) continue;
    done({false, g == m ? "pgvalve: a promotion of shard " + m->shard + " is already under way"
                        : "pgvalve: a promotion of shard " + g->shard + " of database " +
                              g->database + ", over the same hosts, is already under way"});
    return;
  }
  // Claimed now, not when the drill's coroutine first runs: a second command (or an automatic
  // promotion) queued behind this one would otherwise pass the check above too, and two drills
  // would pause, promote and resume the same hosts at once.
  set_drill(sharing_of(m).together, true);
  asio::co_spawn(control_, drill(m), [this, m, done](std::exception_ptr e, DrillResult r) {
    if (e) {
      set_drill(sharing_of(m).together, false);
      r = {false, "pgvalve: the drill failed unexpectedly; see the log"};
    }
    done(std::move(r));
  });
}

void HealthChecker::switchover(const std::string& database, const std::string& shard,
                               std::optional<config::Endpoint> to, DrillDone done) {
  start_drill(database, shard, std::move(done),
              [this, to](std::shared_ptr<Monitor> m) { return run_switchover(std::move(m), to); });
}

void HealthChecker::failover(const std::string& database, const std::string& shard,
                             DrillDone done) {
  start_drill(database, shard, std::move(done), [this](std::shared_ptr<Monitor> m) {
    return run_failover(std::move(m), "FAILOVER from the admin console");
  });
}

}  // namespace pgvalve::proxy
