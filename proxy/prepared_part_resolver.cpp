#include "proxy/prepared_part_resolver.h"

#include <optional>

#include <boost/asio/steady_timer.hpp>

#include "proxy/app.h"
#include "proxy/log.h"
#include "proxy/pg_link.h"

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
          {"gid", part.gid}, {"decision", part.commit ? "commit" : "rollback"});
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
  while (co_await app_.next_second(timer)) {
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

boost::asio::awaitable<bool> PreparedPartResolver::decide(const Part& part) {
  std::optional<config::Endpoint> primary;
  for (const HostRow& h : app_.hosts()) {
    if (h.database == part.database && h.shard == part.shard && h.writable) primary = h.host;
  }
  if (!primary) co_return false;  // the shard is still without a host taking writes
  const auto config = app_.config();
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
