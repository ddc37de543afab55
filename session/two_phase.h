// The names (gids) pgvalve gives the parts of a two-phase commit over several shards, and what a
// part left prepared is told once its coordinator is gone.
//
// Every part of one commit is named `pgvalve:<instance>:<client>:<n>:<decider>:<xid>`: the pgvalve
// process that ran it (a number drawn at start), the client and its count of such commits, and
// the part that decides: the transaction `xid` (pg_current_xact_id(), a full 64-bit id) on shard
// number `decider`. pgvalve commits the decider's part first and the others only once it has
// committed; if it fails, every part is rolled back. So the decider's transaction, which
// PostgreSQL remembers as committed or aborted (pg_xact_status()), says for any part left
// prepared how its commit ended, even after the pgvalve that ran it is gone: committed, the part
// commits; aborted, it rolls back; in progress, the decider's own part is still prepared and
// nothing has committed, so it may be rolled back (first), once no pgvalve can still be deciding.
// Pure.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "protocol/frame.h"

namespace pgvalve::session {

// What the decider part asks its server once its transaction began.
inline constexpr std::string_view kXidQuery = "SELECT pg_catalog.pg_current_xact_id()";

struct TwoPhaseName {
  std::uint32_t instance = 0;
  std::uint32_t client = 0;
  std::uint64_t count = 0;
  std::uint16_t decider = 0;  // shard number (0 is the first in the configuration)
  std::uint64_t xid = 0;      // the decider's transaction
  bool operator==(const TwoPhaseName&) const = default;
};

std::string two_phase_gid(const TwoPhaseName& name);
// nullopt for a gid that is not of this form (another program's, or an older pgvalve's).
std::optional<TwoPhaseName> read_two_phase_gid(std::string_view gid);
// The xid in the text of pg_current_xact_id()'s answer (decimal digits); nullopt otherwise.
std::optional<std::uint64_t> read_xid(std::string_view text);
// The same, from the DataRow of its answer (text format, one column).
std::optional<std::uint64_t> xid_in_row(const protocol::Frame& row);

// How the decider's transaction ended, from pg_xact_status()'s answer ("committed", "aborted",
// "in progress"; NULL when PostgreSQL no longer knows the xid).
enum class DeciderState : std::uint8_t { Committed, Aborted, InProgress, Unknown };
DeciderState decider_state(std::optional<std::string_view> xact_status);

}  // namespace pgvalve::session
