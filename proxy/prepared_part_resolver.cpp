#include "proxy/prepared_part_resolver.h"

#include <algorithm>
#include <optional>
#include <sstream>

#include <boost/asio/steady_timer.hpp>

#include "proxy/app.h"
#include "proxy/log.h"
#include "proxy/pg_link.h"
#include "session/two_phase.h"

namespace pgvalve::proxy {

namespace {

constexpr std::chrono::milliseconds kTimeout{5000};

// A gid as an SQL literal (pgvalve's own are "pgvalve:<digits>:<digits>:<digits>").
std::string quoted(const std::string& gid) {
  std::string out = "'";
  for (char c : gid) {
    if (c == '\'') out.push_back('\'');
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

// A part pgvalve will not decide: the operator is told what to run.
void log_for_operator(const PreparedPartResolver::Part& part, const char* reason) {
  if (part.follow) {
    // Its decision is the deciding shard's transaction's outcome (session/two_phase.h).
    const auto name = session::read_two_phase_gid(part.gid);
    const std::string xid = name ? std::to_string(name->xid) : "?";
    PGV_LOG(Error, "prepared_part_not_resolved", {"database", part.database}, {"shard", part.shard},
            {"gid", part.gid}, {"decision", "as_decided"}, {"reason", reason},
            {"action", "COMMIT PREPARED " + quoted(part.gid) +
                           " on the shard's primary if pg_xact_status('" + xid +
                           "'::xid8) on the deciding shard's primary says committed, else "
                           "ROLLBACK PREPARED " +
                           quoted(part.gid)});
    return;
  }
  PGV_LOG(Error, "prepared_part_not_resolved", {"database", part.database}, {"shard", part.shard},
          {"gid", part.gid}, {"decision", part.commit ? "commit" : "rollback"}, {"reason", reason},
          {"action", std::string(part.commit ? "COMMIT" : "ROLLBACK") + " PREPARED " +
                         quoted(part.gid) + " on the shard's primary"});
}

}  // namespace

void PreparedPartResolver::add(Part part) {
  bool kept = false;
  {
    std::lock_guard lock(mutex_);
    if (waiting_.size() < kMaxWaiting) {
      waiting_.push_back(part);
      kept = true;
    }
  }
  if (!kept) {
    log_for_operator(part, "too many parts are waiting");
    return;
  }
  PGV_LOG(Info, "prepared_part_waiting", {"database", part.database}, {"shard", part.shard},
          {"gid", part.gid},
          {"decision", part.follow   ? "as_decided"
                       : part.commit ? "commit"
                                     : "rollback"});
}

void PreparedPartResolver::leave_to_operator() {
  std::vector<Part> parts;
  {
    std::lock_guard lock(mutex_);
    parts.swap(waiting_);
  }
  for (const Part& part : parts)
    log_for_operator(part, "pgvalve stopped before the shard took writes again");
}

boost::asio::awaitable<void> PreparedPartResolver::run() {
  boost::asio::steady_timer timer(control_);
  for (std::int64_t second = 0; co_await app_.next_second(timer); ++second) {
    if (second % kRecoveryEvery.count() == 0) co_await recover();
    std::vector<Part> parts;
    {
      std::lock_guard lock(mutex_);
      parts = waiting_;
    }
    for (const Part& part : parts) {
      if (!co_await decide(part)) continue;
      std::lock_guard lock(mutex_);
      for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
        if (it->gid == part.gid && it->database == part.database && it->shard == part.shard) {
          waiting_.erase(it);
          break;
        }
      }
    }
  }
}

boost::asio::awaitable<std::optional<session::DeciderState>> PreparedPartResolver::decider_state(
    const Part& part, const config::Config& config) {
  const std::optional<session::TwoPhaseName> name = session::read_two_phase_gid(part.gid);
  const config::Database* db = config.find_database(part.database);
  if (!name || !db || name->decider >= db->shards.size()) {
    co_return session::DeciderState::Unknown;
  }
  std::optional<config::Endpoint> decider;
  for (const HostRow& h : app_.hosts()) {
    if (h.database == part.database && h.shard == db->shards[name->decider].name && h.writable) {
      decider = h.host;
    }
  }
  if (!decider) co_return std::nullopt;  // its shard has no primary now: later
  auto link = std::make_shared<PgLink>();
  const QueryOutcome status =
      co_await query(control_, link, config, *decider, PgLogin::health(config),
                     "SELECT pg_catalog.pg_xact_status('" + std::to_string(name->xid) + "'::xid8)",
                     kTimeout, true);
  if (!status.ok) co_return std::nullopt;
  co_return session::decider_state(status.row.empty() || !status.row[0]
                                       ? std::nullopt
                                       : std::optional<std::string_view>(*status.row[0]));
}

boost::asio::awaitable<void> PreparedPartResolver::recover() {
  const auto config = app_.config();
  const std::vector<HostRow> hosts = app_.hosts();
  auto writable = [&](std::string_view database,
                      std::string_view shard) -> std::optional<config::Endpoint> {
    for (const HostRow& h : hosts) {
      if (h.database == database && h.shard == shard && h.writable) return h.host;
    }
    return std::nullopt;
  };
  auto link = std::make_shared<PgLink>();
  // One row: a line per part of this database (gid, owner, prepared past each grace).
  const std::string list = std::string(
                               "SELECT pg_catalog.string_agg(gid || ' ' || owner || ' ' || "
                               "(prepared < now() - interval '") +
                           std::to_string(kForeignGrace.count()) +
                           " seconds')::text || ' ' || (prepared < now() - interval '" +
                           std::to_string(kDeciderGrace.count()) +
                           " seconds')::text, E'\\n') FROM pg_catalog.pg_prepared_xacts "
                           "WHERE gid LIKE 'pgvalve:%' AND database = ";
  for (const config::Database& db : config->databases) {
    if (db.shards.size() < 2) continue;
    for (std::size_t i = 0; i < db.shards.size(); ++i) {
      const config::Shard& shard = db.shards[i];
      // The health check counts pgvalve's parts on each host: most rounds ask nothing.
      bool any = false;
      for (const HostRow& h : hosts) {
        any |= h.database == db.name && h.shard == shard.name && h.writable && h.prepared > 0;
      }
      const auto primary = writable(db.name, shard.name);
      if (!any || !primary) continue;
      link->close();
      const QueryOutcome parts =
          co_await query(control_, link, *config, *primary, PgLogin::health(*config),
                         list + quoted(db.dbname), kTimeout, true);
      if (!parts.ok || parts.row.empty() || !parts.row[0]) continue;
      std::string_view lines = *parts.row[0];
      while (!lines.empty()) {
        const std::size_t end = lines.find('\n');
        const std::string line(lines.substr(0, end));
        lines.remove_prefix(end == std::string_view::npos ? lines.size() : end + 1);
        std::istringstream fields(line);
        std::string gid, owner, foreign_old, decider_old;
        if (!(fields >> gid >> owner >> foreign_old >> decider_old)) continue;
        const std::optional<session::TwoPhaseName> name = session::read_two_phase_gid(gid);
        // Not of this form (an older pgvalve's, another program's), or this process's own (its
        // sessions and the waiting list decide those), or too fresh to be anyone's leftover.
        if (!name || name->instance == app_.instance() || foreign_old != "true") continue;
        if (std::find(reported_.begin(), reported_.end(), gid) != reported_.end()) continue;
        {
          std::lock_guard lock(mutex_);
          if (std::any_of(waiting_.begin(), waiting_.end(),
                          [&](const Part& p) { return p.gid == gid; })) {
            continue;
          }
        }
        Part part{db.name, db.dbname, owner, shard.name, gid, false, false};
        if (config->find_user(owner) == nullptr) {
          // Only its owner (or a superuser) may finish it: an operator does, once.
          if (reported_.size() < kMaxWaiting) reported_.push_back(gid);
          part.follow = true;
          log_for_operator(part, "its owner is not a user of the configuration");
          continue;
        }
        session::DeciderState state = session::DeciderState::InProgress;
        if (name->decider != i) {
          const std::optional<session::DeciderState> found = co_await decider_state(part, *config);
          if (!found) continue;
          state = *found;
        }
        if (state == session::DeciderState::InProgress &&
            (name->decider != i || decider_old != "true")) {
          continue;  // the decider's part is still prepared, or its commit may still come
        }
        if (state == session::DeciderState::Unknown) {
          if (reported_.size() < kMaxWaiting) reported_.push_back(gid);
          part.follow = true;
          log_for_operator(part,
                           "PostgreSQL no longer knows how the commit ended on its "
                           "deciding shard; finish it as the other shards were");
          continue;
        }
        part.commit = state == session::DeciderState::Committed;
        PGV_LOG(Info, "prepared_part_recovered", {"database", part.database}, {"shard", part.shard},
                {"gid", part.gid}, {"decision", part.commit ? "commit" : "rollback"});
        co_await decide(part);
      }
    }
  }
}

boost::asio::awaitable<bool> PreparedPartResolver::decide(const Part& asked) {
  std::optional<config::Endpoint> primary;
  for (const HostRow& h : app_.hosts()) {
    if (h.database == asked.database && h.shard == asked.shard && h.writable) primary = h.host;
  }
  if (!primary) co_return false;  // the shard is still without a host taking writes
  const auto config = app_.config();
  Part part = asked;
  if (part.follow) {
    // Finished as the deciding shard's transaction ended; until it has, the part waits.
    const std::optional<session::DeciderState> state = co_await decider_state(part, *config);
    if (!state || *state == session::DeciderState::InProgress) co_return false;
    if (*state == session::DeciderState::Unknown) {
      log_for_operator(part,
                       "PostgreSQL no longer knows how the commit ended on its deciding "
                       "shard; finish it as the other shards were");
      co_return true;
    }
    part.commit = *state == session::DeciderState::Committed;
    part.follow = false;
  }
  const config::User* user = config->find_user(part.user);
  if (!user) {
    log_for_operator(part, "its user is no longer in the configuration");
    co_return true;
  }
  auto link = std::make_shared<PgLink>();
  const PgLogin login{user->name, user->server_password, part.dbname, "pgvalve resolve"};
  const std::string count =
      "SELECT count(*) FROM pg_catalog.pg_prepared_xacts WHERE gid = " + quoted(part.gid);
  auto still_prepared = [](const QueryOutcome& q) -> std::optional<bool> {
    if (!q.ok || q.row.empty() || !q.row[0]) return std::nullopt;
    return *q.row[0] != "0";
  };
  auto retry = [&](const std::string& error) {
    PGV_LOG(Warn, "prepared_part_retry", {"database", part.database}, {"shard", part.shard},
            {"host", primary->to_string()}, {"gid", part.gid}, {"error", error});
  };
  const QueryOutcome before =
      co_await query(control_, link, *config, *primary, login, count, kTimeout, true);
  const std::optional<bool> found = still_prepared(before);
  if (!found) {
    retry(before.error);
    co_return false;
  }
  if (!*found) {
    // Its PREPARE never ran (the server was lost first), or someone decided it meanwhile.
    PGV_LOG(Debug, "prepared_part_absent", {"database", part.database}, {"shard", part.shard},
            {"gid", part.gid});
    co_return true;
  }
  // A command returns no row, so only its error says anything: whether the part is still
  // prepared afterwards is what counts.
  const std::string decision =
      std::string(part.commit ? "COMMIT" : "ROLLBACK") + " PREPARED " + quoted(part.gid);
  const QueryOutcome done =
      co_await query(control_, link, *config, *primary, login, decision, kTimeout, true);
  const QueryOutcome after =
      co_await query(control_, link, *config, *primary, login, count, kTimeout, true);
  if (still_prepared(after) != std::optional<bool>(false)) {
    retry(after.ok ? done.error : after.error);
    co_return false;
  }
  PGV_LOG(Info, "prepared_part_resolved", {"database", part.database}, {"shard", part.shard},
          {"host", primary->to_string()}, {"gid", part.gid},
          {"decision", part.commit ? "commit" : "rollback"});
  co_return true;
}

}  // namespace pgvalve::proxy
