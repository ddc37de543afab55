// The state of a client session: one value, changed only by Session::enter(), which checks the
// edge against the table below. docs/internals.md draws it with the path of one query.
//
//   LoggingIn ──start──► Syncing (a server is linked at login) ──► Idle | Holding
//       │                                                             ▲
//       └───────────────────────────────start (no server)─────────────┘
//
//   Idle ──client bytes need a server──► WaitingForServer ──linked──► Syncing ──► Holding
//     ▲  ──answered without a server (Parse, LISTEN, refusals)──► Idle | WaitingForHub
//     │                                                       WaitingForHub ──answer──► Idle
//     │                                       WaitingForServer ──no server──► Idle
//     │                                       WaitingForServer ──linked, in sync──► Holding
//   Active ──ReadyForQuery 'I', nothing pending──► Idle (server released)
//     │    ──ReadyForQuery 'T'/'E' or session mode or pinned──► Holding
//     │    ──its replica died before answering an autocommit read──► WaitingForServer (retry)
//   Holding ──client bytes──► Active
//           ──session mode: a read for a replica, the own server kept──► WaitingForServer
//           ──client bytes, the server's settings changed since (session mode RESET)──► Syncing
//   Idle ──a read over several shards──► WaitingForServer (shard 1) ──linked, sent──►
//        WaitingForServer (shard 2) ... ──last shard linked──► Scattering ──all answered──► Idle
//   Scattering ──every shard is ready for COPY data──► Copying ──CopyDone, CopyFail, an
//        error──► Scattering (the COPY's parts end and commit together)
//   Holding (a transaction on one shard) ──a statement for another shard──► WaitingForServer
//        ──linked──► Syncing (BEGIN there) ──► Holding (the transaction spans both)
//   Holding (a transaction over several shards) ──COMMIT or ROLLBACK──► Ending ──every part
//        prepared and committed, or rolled back──► Idle
//   Active (a request up to one Sync whose statements name several shards) ──its part on one
//        shard answered──► Holding ──the rest, for another shard──► WaitingForServer ... as
//        above; outside a transaction ──its Sync answered──► Ending ──► Idle
//   Holding ──a statement over the transaction's shards──► Scattering ──gathered──► Holding
//   Scattering (a read whose BEGIN pgvalve holds back, into a named portal with a row limit)
//        ──the client's Execute got its rows──► PortalSuspended ──its next Execute──►
//        Scattering ... ──the last rows──► Idle;  PortalSuspended ──anything else──► Idle
//   any ──client gone, Terminate, fatal error, drained──► Closing
#pragma once

#include <cstdint>
#include <string_view>

namespace pgvalve::session {

enum class SessionState : std::uint8_t {
  LoggingIn,         // startup and authentication (proxy/client_login.cpp)
  Idle,              // logged in, no server linked, nothing pending: holds no buffer
  WaitingForServer,  // the client's next request waits for a checkout
  Syncing,           // a server was linked; pgvalve's own query makes its settings the client's
  Active,            // requests outstanding on the linked server
  Holding,           // server linked, nothing outstanding: a transaction is open, session mode,
                     // or session state pins the server (transaction mode)
  Scattering,        // a read runs on several shards; their answers are gathered (scatter.h)
  PortalSuspended,   // ... into a portal the client fetches in parts: between its Executes
  Copying,           // COPY FROM STDIN over several shards: the client's rows go to their shards
  Ending,            // a transaction over several shards commits (two-phase) or rolls back on each
  WaitingForHub,     // a LISTEN/UNLISTEN waits for the shared listening connection
  Closing,           // the session ends: servers are given back clean or closed
};

std::string_view state_name(SessionState state);

// True when the session may move from `from` to `to` (the table in state.cpp).
bool transition_allowed(SessionState from, SessionState to);

}  // namespace pgvalve::session
