#include "proxy/slow_query_explainer.h"

#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "proxy/app.h"
#include "proxy/log.h"
#include "proxy/pg_link.h"
#include "routing/statement.h"
#include "stats/plan_advice.h"

namespace pgvalve::proxy {

namespace {

constexpr std::chrono::milliseconds kTimeout{5000};

}  // namespace

boost::asio::awaitable<void> SlowQueryExplainer::run() {
  boost::asio::steady_timer timer(control_);
  while (co_await app_.next_second(timer)) {
    // Each worker's statistics are its own thread's: the requests are taken there.
    struct Taken {
      std::mutex mutex;
      std::vector<stats::ExplainRequest> requests;
    };
    auto taken = std::make_shared<Taken>();
    const auto take = [taken](Worker& w) {
      auto mine = w.query_stats.take_explain_requests();
      std::lock_guard lock(taken->mutex);
      for (auto& r : mine)
        taken->requests.push_back(std::move(r));
    };
    co_await app_.on_every_worker(take);
    std::vector<stats::ExplainRequest> requests;
    std::set<std::uint64_t> seen;
    {
      std::lock_guard lock(taken->mutex);
      for (auto& r : taken->requests) {
        if (seen.insert(r.fingerprint).second) requests.push_back(std::move(r));
      }
    }
    for (const auto& r : requests)
      co_await explain(r);
  }
}

boost::asio::awaitable<void> SlowQueryExplainer::explain(const stats::ExplainRequest& r) {
  std::string advice;
  std::string error;
  const auto config = app_.config();
  const config::User* user = config->find_user(r.user);
  // Only what the parse shows to be one SELECT is EXPLAINed: EXPLAIN of anything else could
  // run it (EXPLAIN ANALYZE is never sent; the extended protocol refuses a second statement).
  const routing::StatementInfo info = routing::classify(r.sql);
  // A replica of the first shard that takes reads, else the host taking writes.
  std::optional<config::Endpoint> host;
  for (const HostRow& h : app_.hosts()) {
    if (h.database != r.database) continue;
    if (h.readable) {
      host = h.host;
      break;
    }
    if (h.writable && !host) host = h.host;
  }
  if (!user) {
    error = "the user is no longer in the configuration";
  } else if (info.kind != routing::StatementKind::Select || info.multiple_statements) {
    error = "not a single SELECT";
  } else if (!host) {
    error = "no host of the database is up";
  } else {
    auto link = std::make_shared<PgLink>();
    // The database as the servers name it, which may differ from the clients' name for it.
    const config::Database* db = config->find_database(r.database);
    const PgLogin login{user->name, user->server_password, db ? db->dbname : r.database,
                        "pgvalve explain_slow"};
    stats::PlanSettings settings;
    QueryOutcome q =
        co_await query(control_, link, *config, *host, login,
                       "SELECT current_setting('work_mem'), current_setting('hash_mem_multiplier')",
                       kTimeout, true);
    std::string_view step = "reading work_mem";
    if (q.ok && q.row.size() == 2 && q.row[0] && q.row[1]) {
      if (auto bytes = stats::parse_memory_setting(*q.row[0])) settings.work_mem_bytes = bytes;
      settings.hash_mem_multiplier = std::atof(q.row[1]->c_str());
      step = "EXPLAIN";
      q = co_await query(control_, link, *config, *host, login, "EXPLAIN (FORMAT JSON) " + r.sql,
                         kTimeout, true);
    }
    if (q.ok && !q.row.empty() && q.row[0]) {
      advice = stats::plan_advice(*q.row[0], settings);
    } else if (!q.sqlstate.empty()) {
      // The server's text of the error quotes the statement (LINE 1: ... where id = 'secret').
      error = stats::refusal_reason(step, q.sqlstate, q.message, config->stats.redact_literals);
    } else {
      error = q.error.empty() ? "no plan" : q.error;
    }
  }
  for (int i = 0; i < app_.worker_count(); ++i) {
    Worker& w = app_.worker(i);
    boost::asio::post(w.context, [&w, fingerprint = r.fingerprint, advice] {
      w.query_stats.set_advice(fingerprint, advice);
    });
  }
  char fingerprint[17];
  std::snprintf(fingerprint, sizeof fingerprint, "%016llx",
                static_cast<unsigned long long>(r.fingerprint));
  if (error.empty()) {
    PGV_LOG(Info, "slow_query_explained", {"fingerprint", fingerprint},
            {"host", host ? host->to_string() : ""}, {"advice", advice.empty() ? "none" : advice});
  } else {
    PGV_LOG(Warn, "slow_query_not_explained", {"fingerprint", fingerprint}, {"reason", error});
  }
}

}  // namespace pgvalve::proxy
