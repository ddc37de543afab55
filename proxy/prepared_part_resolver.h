// Parts of two-phase commits left prepared on a shard whose server was lost mid-commit
// (session::PreparedPart): the decision the other parts got (COMMIT PREPARED or ROLLBACK
// PREPARED) is carried out there by pgvalve, as the client's own user, once the shard has a host
// taking writes again (the same host back, or a promoted replica, which has the prepared part
// from the WAL). Until then a prepared part holds its locks and SHOW SHARDS counts it.
//
// add() is called from any worker; run() loops on the control thread. What is waiting lives in
// pgvalve's memory only: a pgvalve that stops first logs each part with the command an operator
// must run (leave_to_operator(), docs/sharding.md).
#pragma once

#include <chrono>
#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

namespace pgvalve::proxy {

class App;

class PreparedPartResolver {
 public:
  struct Part {
    std::string database;  // as clients name it
    std::string dbname;    // on the servers
    std::string user;      // who prepared it: only they (or a superuser) may finish it
    std::string shard;
    std::string gid;
    bool commit = false;
  };

  // Parts waiting at once; beyond, a part is logged and left to an operator.
  static constexpr std::size_t kMaxWaiting = 4096;

  PreparedPartResolver(App& app, boost::asio::io_context& control) : app_(app), control_(control) {}

  // Any thread.
  void add(Part part);

  // Runs until the control loop stops: every second, each waiting part whose shard has a host
  // taking writes is decided there.
  boost::asio::awaitable<void> run();

  // pgvalve stops: each part still waiting is logged (prepared_part_not_resolved) with the
  // COMMIT PREPARED or ROLLBACK PREPARED that finishes it, and forgotten.
  void leave_to_operator();

 private:
  // True when the part is settled: decided now, or found decided already.
  boost::asio::awaitable<bool> decide(const Part& part);

  App& app_;
  boost::asio::io_context& control_;
  mutable std::mutex mutex_;  // add() from workers; not on the query path
  std::vector<Part> waiting_;
};

}  // namespace pgvalve::proxy
