// What a client session knows about one server connection, kept with the connection while it
// sits in the pool so the next client's session can compare it with its own: the transaction
// status, the session settings the server has, the prepared statements it holds. The proxy owns
// it (inside its server connection); a session reads and changes it only while linked.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "protocol/prepared_statements.h"
#include "session/settings.h"

namespace pgvalve::session {

struct ServerState {
  char tx_status = 'I';  // from the last ReadyForQuery
  Settings settings;
  // Something ran that pgvalve could not follow (a set_config with computed arguments, ...): the
  // next sync starts from RESET ALL, RESET ROLE and RESET SESSION AUTHORIZATION.
  bool settings_unknown = false;
  // The client settings (by fingerprint) this server's settings were last made equal to, and
  // the version of `settings` then: while both hold, the next such client needs no sync.
  std::uint64_t synced_fingerprint = 0;
  std::uint64_t synced_version = 0;
  protocol::ServerStatements statements;  // transaction pooling's shared prepared statements
  ServerParameters startup_parameters;    // reported at login, in order
  // Session mode: the session created temporary objects; the connection is closed at release
  // instead of being reused, since PostgreSQL remembers a backend's temporary namespace.
  bool touched_temp = false;
  // Transaction pooling: the session (Session::identity()) whose Parse made the server's unnamed
  // statement, and which of that session's unnamed statements it is; 0 when that is no
  // client's (none yet, or a simple query destroyed it). A Bind or Describe of the unnamed
  // statement must not reach a server holding another one as it is.
  std::uint64_t unnamed_statement_of = 0;
  std::uint64_t unnamed_statement_version = 0;
  std::string name;  // "host:port", for messages
  // Lent from a host that was not its shard's primary when checked out: where a statement ran
  // (statistics), which the route (what was asked for) does not say when reads fall back to
  // the primary or `routing.reads: any` chose it. Set by the proxy at each lend.
  bool replica = false;
};

}  // namespace pgvalve::session
