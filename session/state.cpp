#include "session/state.h"

namespace pgvalve::session {

std::string_view state_name(SessionState state) {
  switch (state) {
    case SessionState::LoggingIn:
      return "logging_in";
    case SessionState::Idle:
      return "idle";
    case SessionState::WaitingForServer:
      return "waiting_for_server";
    case SessionState::Syncing:
      return "syncing";
    case SessionState::Active:
      return "active";
    case SessionState::Holding:
      return "holding";
    case SessionState::Scattering:
      return "scattering";
    case SessionState::PortalSuspended:
      return "portal_suspended";
    case SessionState::Copying:
      return "copying";
    case SessionState::Ending:
      return "ending";
    case SessionState::WaitingForHub:
      return "waiting_for_hub";
    case SessionState::Closing:
      return "closing";
  }
  return "?";
}

bool transition_allowed(SessionState from, SessionState to) {
  using S = SessionState;
  if (from == to) return true;
  if (to == S::Closing) return true;
  switch (from) {
    case S::LoggingIn:
      return to == S::Syncing || to == S::Idle || to == S::Holding;
    case S::Idle:
      return to == S::WaitingForServer || to == S::WaitingForHub || to == S::Active;
    case S::WaitingForServer:
      // Holding: linked with nothing to sync; the waiting request is planned next.
      // Scattering: the last shard of a read over several shards was linked.
      return to == S::Syncing || to == S::Holding || to == S::Active || to == S::Idle ||
             to == S::Scattering;
    case S::Scattering:
      // Idle: every shard answered. WaitingForServer: (while shards answer) the next shard's
      // server is checked out. Copying: every shard of a COPY FROM STDIN takes its data.
      // Holding: a statement over the shards of the client's transaction was answered.
      // PortalSuspended: the client's Execute of a kept portal got its rows.
      return to == S::Idle || to == S::WaitingForServer || to == S::Copying || to == S::Holding ||
             to == S::PortalSuspended;
    case S::PortalSuspended:
      // Scattering: the portal's next Execute. Idle: it ended, or the client moved on.
      return to == S::Scattering || to == S::Idle;
    case S::Copying:
      return to == S::Scattering;
    case S::Ending:
      return to == S::Idle;
    case S::Syncing:
      // WaitingForServer: a replica refused the client's settings; the read's server is checked
      // out on the primary instead (Session::read_on_primary_instead()).
      return to == S::Active || to == S::Idle || to == S::Holding || to == S::WaitingForServer;
    case S::Active:
      // WaitingForServer: the replica of an autocommit read died before answering; the read
      // runs again elsewhere. Ending: the Sync of a request that ran as one transaction over
      // several shards was answered (ShardTransaction::implicit).
      return to == S::Idle || to == S::Holding || to == S::WaitingForServer || to == S::Ending;
    case S::Holding:
      // Syncing: the linked server's settings changed since the last request (session mode
      // RESET back to startup values) and are made the client's again. WaitingForServer: a
      // session-mode client's read goes to a replica while it keeps its own server, or a shard
      // joins the client's transaction. Ending: a transaction over several shards ends.
      return to == S::Active || to == S::Idle || to == S::Syncing || to == S::WaitingForServer ||
             to == S::Ending || to == S::Scattering;
    case S::WaitingForHub:
      return to == S::Idle;
    case S::Closing:
      return false;
  }
  return false;
}

}  // namespace pgvalve::session
