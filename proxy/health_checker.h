// The health checker (DESIGN.md §4.5): one libpq connection per PostgreSQL host, driven without
// blocking from the control thread's event loop, that every health.interval_ms asks the host
// whether it is in recovery, where its WAL is and which timeline it is on. The results go to
// the pure health::ShardHealth of every shard the host belongs to, whose verdict (the primary,
// readable replicas, their replay positions) is published in health::ShardStatus for the
// sessions of every worker. Promotions (failover: promote) are run from here too.
//
// Everything here runs on the control thread, except hosts() (any thread, for SHOW HOSTS and
// /status) and the published statuses (lock-free reads).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include "config/config.h"
#include "health/shard_health.h"
#include "health/shard_status.h"
#include "routing/text_order.h"

namespace pgvalve::proxy {

namespace asio = boost::asio;

// One shard's hosts as sessions route to them: host 0 is the configured primary, then the
// replicas; `status` says which takes writes and which may take reads now.
struct ShardTopology {
  std::string name;
  std::vector<config::Endpoint> hosts;
  std::shared_ptr<const health::ShardStatus> status;
};

// Every database's shards, as of one configuration. Replaced (never modified) on reload.
struct Topology {
  std::uint64_t generation = 0;
  std::map<std::string, std::vector<ShardTopology>, std::less<>> databases;
  // Each database's text order, as the checks read it from its servers (kept across reloads).
  std::map<std::string, std::shared_ptr<routing::TextOrderSlot>, std::less<>> text_orders;
  const std::vector<ShardTopology>* find(std::string_view database) const;
};

// A row of SHOW HOSTS.
struct HostRow {
  std::string database;
  std::string shard;
  config::Endpoint host;
  health::Role role = health::Role::Replica;
  bool up = false;
  bool checked = false;
  bool refused = false;  // the last check reached the server and was refused (misconfigured)
  bool readable = false;
  bool writable = false;     // takes writes now (the shard's primary, up, no switchover pause)
  bool split_brain = false;  // of its shard: two hosts claim the primary role on one timeline
  std::int64_t lag_ms = -1;
  std::int64_t lag_bytes = -1;
  health::Lsn lsn = 0;
  std::uint32_t timeline = 0;
  std::uint32_t prepared = 0;  // pgvalve's two-phase parts prepared there (health::Probe)
  std::chrono::system_clock::time_point last_check{};  // epoch when never checked
  int failures = 0;
  std::string last_error;
};

// What a drill (SWITCHOVER, FAILOVER from the admin console) reports when it ends.
struct DrillResult {
  bool ok = false;
  std::string message;  // what happened, or why it did not
};

class HealthChecker {
 public:
  // Server connections lent out now to clients on a host (all pools of it): a switchover waits
  // for the old primary's to come back before it promotes.
  using LentCounter = std::function<int(const config::Endpoint&)>;
  using DrillDone = std::function<void(DrillResult)>;
  // A shard's writes go to `primary` now, or will once `moved` runs: the LISTEN connections
  // move there (`moved` runs on the control thread once they listen).
  using PrimaryMoved =
      std::function<void(const std::string& database, const std::string& shard,
                         const config::Endpoint& primary, std::function<void()> moved)>;

  // A switchover or failover retired `host` (the former primary): nothing is sent there any
  // more, and its idle server connections may close.
  using HostRetired =
      std::function<void(const std::string& database, const config::Endpoint& host)>;

  HealthChecker(asio::io_context& control, LentCounter lent, PrimaryMoved primary_moved = {},
                HostRetired retired = {});
  ~HealthChecker();
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Starts checking the hosts of `config` and returns the topology sessions route by. On a
  // reload: shards whose host list is unchanged keep their state (a replica keeps taking reads),
  // new hosts take reads after their first healthy check, removed hosts stop being checked.
  std::shared_ptr<const Topology> configure(const config::ConfigPtr& config);
  void stop();

  // Any thread.
  std::vector<HostRow> hosts() const;
  // Times a shard's writes moved to another host (followed, promoted, switched over).
  std::uint64_t failovers() const { return failovers_.load(std::memory_order_relaxed); }

  // A session could not reach replica `host` (its connection died, or opening one failed): no
  // reads go there until a check, run at once, finds it healthy.
  void suspect(const config::Endpoint& host);

  // SWITCHOVER <database> [shard] [TO host:port]: pauses writes, waits for the primary's lent
  // connections to come back and for the target replica to replay everything the primary
  // wrote, promotes it, routes writes there, resumes; the old primary is retired. `shard`
  // empty: the first; `to` empty: the most advanced healthy replica. `done` runs on the control
  // thread. Both drills, and failover.mode: promote, act on the servers: every database's shard
  // over the same hosts pauses and moves with it; one sharing only some of them refuses the
  // drill (health/shared_hosts.h).
  void switchover(const std::string& database, const std::string& shard,
                  std::optional<config::Endpoint> to, DrillDone done);
  // FAILOVER <database> [shard]: promotes the most advanced healthy replica at once (the
  // primary is dead; if it is not, it is retired and takes no more traffic).
  void failover(const std::string& database, const std::string& shard, DrillDone done);

 private:
  struct Host;
  struct Monitor;
  using Monitors = std::vector<std::shared_ptr<Monitor>>;
  struct Sharing {
    Monitors together;   // the shards over the same hosts, `m` first
    Monitors entangled;  // the shards sharing only some of them
  };

  asio::awaitable<void> watch(std::shared_ptr<Host> host);
  // `refused`: the server answered but refused the check (HostHealth::refused).
  void report(Host& host, bool ok, const health::Probe& probe, const std::string& error,
              bool refused);
  void assess(Monitor& m, std::chrono::steady_clock::time_point now);
  void snapshot();
  void learn_text_orders();
  std::shared_ptr<Monitor> find(const std::string& database, const std::string& shard) const;
  // The shards of the configuration that share hosts with `m`.
  Sharing sharing_of(const std::shared_ptr<Monitor>& m) const;
  // Runs `drill` on the shard unless it is unknown or a promotion is already under way.
  void start_drill(const std::string& database, const std::string& shard, DrillDone done,
                   std::function<asio::awaitable<DrillResult>(std::shared_ptr<Monitor>)> drill);
  // Promotes `host` of `m` and makes it the primary of every shard over the same hosts; "" on
  // success, else why not.
  asio::awaitable<std::string> promote(std::shared_ptr<Monitor> m, std::size_t host);
  // Before a promoted host takes writes: waits (at most `limit`) until the listeners of every
  // shard of `group` listen there, so no notification sent there is missed.
  asio::awaitable<void> move_listeners(const Monitors& group, const config::Endpoint& primary,
                                       std::chrono::milliseconds limit);
  asio::awaitable<DrillResult> run_switchover(std::shared_ptr<Monitor> m,
                                              std::optional<config::Endpoint> to);
  asio::awaitable<DrillResult> run_failover(std::shared_ptr<Monitor> m, std::string why);

  asio::io_context& control_;
  LentCounter lent_;
  PrimaryMoved primary_moved_;
  HostRetired retired_;
  config::ConfigPtr config_;
  std::uint64_t generation_ = 0;
  std::map<std::string, std::shared_ptr<Host>> hosts_;  // by "host:port"
  std::vector<std::shared_ptr<Monitor>> monitors_;
  std::map<std::string, std::shared_ptr<routing::TextOrderSlot>> text_orders_;  // by database
  std::atomic<std::uint64_t> failovers_{0};
  mutable std::mutex rows_mutex_;  // SHOW HOSTS and /status read; not on the query path
  std::vector<HostRow> rows_;
};

}  // namespace pgvalve::proxy
