// What pgvalve knows about one PostgreSQL host from its health checks, and the rule that turns
// check results into up and down (DESIGN.md §4.5): `failures_before_down` missed checks in a row
// mark a host down, one success marks it up. Pure: results and times in, figures out; the checks
// themselves run in proxy/health_checker.cpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "protocol/lsn.h"

namespace pgvalve::health {

using Clock = std::chrono::steady_clock;
using protocol::format_lsn;
using protocol::Lsn;
using protocol::parse_lsn;

// The part a host plays in its shard, as pgvalve routes to it.
enum class Role : std::uint8_t {
  Primary,  // takes writes
  Replica,  // takes reads
  Retired,  // takes nothing: a former primary after a switchover or failover, until an operator
            // puts it back in the configuration
};
std::string_view role_name(Role role);

// What one successful check read from the host.
struct Probe {
  bool in_recovery = false;  // pg_is_in_recovery(): a standby
  // Primary: pg_current_wal_lsn(). Standby: pg_last_wal_replay_lsn().
  Lsn lsn = 0;
  // Standby: pg_last_wal_receive_lsn() (0 when it streams nothing).
  Lsn receive_lsn = 0;
  // Primary: the timeline it writes; standby: the timeline it receives, or with no WAL receiver
  // the newest of the WAL segments in its pg_wal (0 when not visible to the health check's role,
  // which then needs pg_monitor).
  std::uint32_t timeline = 0;
  // Transactions of pgvalve's two-phase commits prepared there (gid 'pgvalve:...'): a write to
  // several shards cut short between PREPARE TRANSACTION and COMMIT PREPARED, or, for a moment,
  // one still in progress.
  std::uint32_t prepared = 0;
  // When the check was sent: the host had these figures at a moment after it (zero: unknown).
  Clock::time_point asked{};
};

// The figures SHOW HOSTS and the routing decisions read.
struct HostFigures {
  bool checked = false;  // at least one check has finished (either way)
  bool up = false;
  bool in_recovery = false;  // as of the last successful check
  Lsn lsn = 0;
  Lsn receive_lsn = 0;
  std::uint32_t timeline = 0;
  std::uint32_t prepared = 0;  // Probe::prepared, as of the last successful check
  int failures = 0;            // checks failed in a row
  // The last check reached the server but it refused the check's login (wrong health.user /
  // password / dbname, pg_hba.conf): the host is not known to be down, nor up.
  bool refused = false;
  Clock::time_point last_check{};
  Clock::time_point last_success{};
  Clock::time_point last_asked{};  // Probe::asked of the last successful check
  // `lsn` as of the successful check before the last one, and when that one ended.
  Lsn previous_lsn = 0;
  Clock::time_point previous_success{};
  Clock::time_point down_since{};  // meaningful while !up
  std::string last_error;          // of the last failed check
};

class HostHealth {
 public:
  // Returns true when the host went from down (or never checked) to up.
  bool succeeded(const Probe& probe, Clock::time_point now);
  // Returns true when this failure marks the host down.
  bool failed(std::string_view error, Clock::time_point now, int failures_before_down);
  // The server answered but refused the check (its login, or the query's privileges): says
  // nothing of up or down — a misconfigured check must not take a working primary out of
  // service — and nothing new of its role or position.
  void refused(std::string_view error, Clock::time_point now);

  const HostFigures& figures() const { return figures_; }

 private:
  HostFigures figures_;
};

}  // namespace pgvalve::health
