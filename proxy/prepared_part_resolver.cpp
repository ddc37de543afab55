#include "proxy/prepared_part_resolver.h"

#include <optional>

#include <boost/asio/steady_timer.hpp>

#include "proxy/app.h"
#include "proxy/io_util.h"
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

}  // namespace

void PreparedPartResolver::add(Part part) {
  std::unique_lock lock(mutex_);
  if (waiting_.size() >= kMaxWaiting) {
    lock.unlock();
    PGV_LOG(Error, "prepared_part_not_resolved", {"database", part.database}, {"shard", part.shard},
            {"gid", part.gid}, {"decision", part.commit ? "commit" : "rollback"},
            {"reason", "too many parts are waiting"},
            {"action", std::string(part.commit ? "COMMIT" : "ROLLBACK") + " PREPARED " +
                           quoted(part.gid) + " on the shard's primary"});
    return;
  }
  PGV_LOG(Info, "prepared_part_waiting", {"database", part.database}, {"shard", part.shard},
          {"gid", part.gid}, {"decision", part.commit ? "commit" : "rollback"});
  waiting_.push_back(std::move(part));
}

std::size_t PreparedPartResolver::waiting() const {
  std::lock_guard lock(mutex_);
  return waiting_.size();
}

boost::asio::awaitable<void> PreparedPartResolver::run() {
  boost::asio::steady_timer timer(control_);
  for (;;) {
    timer.expires_after(std::chrono::seconds(1));
    boost::system::error_code ec;
    co_await timer.async_wait(await_ec(ec));
    if (ec || app_.draining()) co_return;
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
    PGV_LOG(Error, "prepared_part_not_resolved", {"database", part.database}, {"shard", part.shard},
            {"gid", part.gid}, {"decision", part.commit ? "commit" : "rollback"},
            {"reason", "its user is no longer in the configuration"},
            {"action", std::string(part.commit ? "COMMIT" : "ROLLBACK") + " PREPARED " +
                           quoted(part.gid) + " on the shard's primary"});
    co_return true;
  }
  auto link = std::make_shared<PgLink>();
  const PgLogin login{user->name, user->server_password, part.dbname, "pgvalve resolve"};
  const std::string decision =
      std::string(part.commit ? "COMMIT" : "ROLLBACK") + " PREPARED " + quoted(part.gid);
  // A command returns no row, so only its error says anything; whether the part is still
  // prepared afterwards is what counts (another pgvalve or an operator may have decided it).
  const QueryOutcome done =
      co_await query(control_, link, *config, *primary, login, decision, kTimeout, true);
  const QueryOutcome left = co_await query(
      control_, link, *config, *primary, login,
      "SELECT count(*) FROM pg_catalog.pg_prepared_xacts WHERE gid = " + quoted(part.gid), kTimeout,
      true);
  if (!left.ok || left.row.empty() || !left.row[0] || *left.row[0] != "0") {
    PGV_LOG(Warn, "prepared_part_retry", {"database", part.database}, {"shard", part.shard},
            {"host", primary->to_string()}, {"gid", part.gid},
            {"error", left.ok ? done.error : left.error});
    co_return false;
  }
  PGV_LOG(Info, "prepared_part_resolved", {"database", part.database}, {"shard", part.shard},
          {"host", primary->to_string()}, {"gid", part.gid},
          {"decision", part.commit ? "commit" : "rollback"});
  co_return true;
}

}  // namespace pgvalve::proxy
