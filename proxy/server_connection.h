// One connection from pgvalve to a PostgreSQL server: opening and logging in, and running
// pgvalve's own short queries on it (clean-up before it goes back to the pool, the listen hub's
// LISTENs). What a client session knows about it (settings, prepared statements, transaction
// status) is its session::ServerState; forwarding client traffic is the client session's job.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include "config/config.h"
#include "pool/server_pool.h"
#include "protocol/messages.h"
#include "proxy/io_util.h"
#include "proxy/stream.h"
#include "session/input_buffer.h"
#include "session/server_state.h"

namespace pgvalve::proxy {

struct ServerLogin {
  config::Endpoint host;
  std::string user;
  std::string password;  // empty: the server must not ask for one
  std::string dbname;
  std::chrono::milliseconds timeout{10000};
  std::size_t max_message_bytes = 1 << 20;
  // server_allow_insecure_auth: answer a cleartext or md5 password request on a link without
  // TLS (all of them until server_tls works).
  bool allow_insecure_auth = false;
  // server_tls (null: disable).
  std::shared_ptr<const TlsClientContext> tls;
};

// Why an open or an internal query failed, in words for the client.
struct ServerFailure {
  std::string sqlstate = "08006";
  std::string message;
  // pgvalve itself is out of file descriptors (EMFILE/ENFILE): nothing is wrong with the host.
  bool out_of_files = false;
  // The host answered, and would answer so again (TLS failed or is missing, not PostgreSQL):
  // waiting does not help.
  bool lasting = false;

  // The host cannot be reached, or refuses logins while it starts up, shuts down or recovers
  // (57P03): what a failover hold (failover.hold_writes_ms) rides over.
  bool host_unavailable() const {
    return !out_of_files && !lasting && (sqlstate.starts_with("08") || sqlstate == "57P03");
  }
};

class ServerConnection : public pool::Connection {
 public:
  explicit ServerConnection(asio::io_context& context) : stream(context) {}

  // Re-registers the socket with `ctx` when it belongs to another worker's event loop. False
  // when that failed (the connection is unusable: discard it); never throws.
  bool adopt(asio::io_context& ctx, int worker);

  // False when the server has closed the connection or sent something while idle (PostgreSQL
  // says goodbye with a FATAL ErrorResponse, e.g. after pg_terminate_backend or a restart).
  // One non-blocking peek.
  bool idle_and_open();

  // Runs `sql` as a simple query and reads through to ReadyForQuery, keeping ParameterStatus
  // values and the transaction status in `state`. False on I/O failure or an ErrorResponse.
  asio::awaitable<bool> run_query(std::string_view sql, ServerFailure& failure);

  Stream stream;  // TLS over the socket when server_tls negotiated it
  session::InputBuffer in;
  config::Endpoint host;
  std::uint32_t host_index = 0;  // in the cancel registry's host table
  protocol::BackendKeyData key;
  session::ServerState state;
  std::size_t max_message_bytes = 1 << 20;
};

// Connects and logs in (SCRAM-SHA-256, md5, cleartext or trust, whatever the server asks).
// Returns null and fills `failure` when it cannot.
asio::awaitable<std::unique_ptr<ServerConnection>> open_server_connection(const ServerLogin& login,
                                                                          ServerFailure& failure);

}  // namespace pgvalve::proxy
