// Parts of two-phase commits left prepared on a shard whose server was lost mid-commit
// (session::PreparedPart): the decision the other parts got (COMMIT PREPARED or ROLLBACK
// PREPARED) is carried out there by pgvalve, as the client's own user, once the shard has a host
// taking writes again (the same host back, or a promoted replica, which has the prepared part
// from the WAL). Until then a prepared part holds its locks and SHOW SHARDS counts it.
//
// add() is called from any worker; run() loops on the control thread. What is waiting lives in
// pgvalve's memory only: a pgvalve that stops first logs each part with the command that
// finishes it (leave_to_operator(), docs/sharding.md), and the next pgvalve finds it (below).
//
// Parts whose pgvalve is gone (killed, or another instance's) are found too: every few seconds
// each sharded database's primaries are asked for pgvalve's prepared parts, and a part another
// process left is finished as its decider's transaction ended (session/two_phase.h): committed,
// it commits; aborted, it rolls back; the decider's own part, still prepared after
// kDeciderGrace, rolls back (nothing committed before it, and no pgvalve decides that long).
#pragma once

#include <chrono>
#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include "config/config.h"
#include "session/two_phase.h"

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
    bool follow = false;  // as the deciding shard's transaction ended, once it is known
  };

  // Parts waiting at once; beyond, a part is logged and left to an operator.
  static constexpr std::size_t kMaxWaiting = 4096;
  // A part another process left is looked at once it has been prepared this long (a live
  // pgvalve finishes its own within milliseconds)...
  static constexpr std::chrono::seconds kForeignGrace{5};
  // ... and a decider's own part, whose commit may still be coming, this long.
  static constexpr std::chrono::seconds kDeciderGrace{30};
  // How often the primaries are asked.
  static constexpr std::chrono::seconds kRecoveryEvery{5};

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
  // Parts other processes left, on every sharded database's primaries.
  boost::asio::awaitable<void> recover();
  // How the transaction that decides `part` ended (session/two_phase.h); nullopt while its
  // shard cannot be asked.
  boost::asio::awaitable<std::optional<session::DeciderState>> decider_state(
      const Part& part, const config::Config& config);

  App& app_;
  boost::asio::io_context& control_;
  mutable std::mutex mutex_;  // add() from workers; not on the query path
  std::vector<Part> waiting_;
  std::vector<std::string> reported_;  // gids left to an operator by recover(), logged once
};

}  // namespace pgvalve::proxy
