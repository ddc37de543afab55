// The difference between a client's session settings and a server's, turned into the SQL that
// removes it. Pure: settings in, SQL out; apply_sync() records the result once the server has
// run the SQL without error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "session/server_state.h"
#include "session/settings.h"

namespace pgvalve::session {

struct SyncPlan {
  std::string sql;                       // empty: the server already has the client's settings
  std::vector<std::string> reset_names;  // settings another client left on the server
  bool from_defaults = false;            // starts with RESET (the server's settings were unknown)
};

// `client`: the client's settings where they differ from `defaults` (the server parameters the
// client was told at login). Reported settings the client never changed are made equal to those
// defaults; the session authorization and role come first (setting the session authorization
// resets the role).
// `reset_unknown`: a server whose settings are unknown is reset first (false when the unknown
// changes are the client's own and must stay).
SyncPlan plan_sync(const Settings& client, const ServerParameters& defaults,
                   const ServerState& server, bool reset_unknown = true);

// The server ran `plan.sql`: record what it now has. `fingerprint` identifies the client
// settings it now matches.
void apply_sync(const SyncPlan& plan, const Settings& client, ServerState& server,
                std::uint64_t fingerprint);

// What makes a server forget every session setting, including the two RESET ALL keeps.
inline constexpr std::string_view kResetEverySetting =
    "RESET SESSION AUTHORIZATION;RESET ROLE;RESET ALL;";

}  // namespace pgvalve::session
