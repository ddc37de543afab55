// One connection from pgvalve to a PostgreSQL server: opening and logging in, the settings the
// server is known to have, and running pgvalve's own short queries on it (parameter sync,
// reset, rollback). Forwarding client traffic is the client session's job.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "config/config.h"
#include "pool/server_pool.h"
#include "protocol/messages.h"
#include "protocol/prepared_statements.h"
#include "proxy/byte_buffer.h"

namespace pgvalve::proxy {

namespace asio = boost::asio;
using asio::ip::tcp;

// A run-time setting (GUC) by lower-case name. `reported` ones are those PostgreSQL announces
// with ParameterStatus; the others are only known because pgvalve set them.
struct Setting {
  std::string name;  // lower case
  std::string value;
  bool reported = false;
  bool raw = false;  // `value` is SQL as the client wrote it in SET (e.g. `a, "B"`), not a literal
};

class Settings {
 public:
  const Setting* find(std::string_view lower_name) const;
  // Sets `value`; returns true when it changed.
  bool set(std::string_view name, std::string_view value, bool reported, bool raw = false);
  void erase(std::string_view lower_name);
  // Keeps only the settings PostgreSQL reports (after DISCARD ALL / RESET ALL).
  void keep_reported_only();
  const std::vector<Setting>& all() const { return items_; }
  // Changes whenever the settings do.
  std::uint64_t version() const { return version_; }
  // A hash of the content, recomputed only after a change.
  std::uint64_t fingerprint() const;

 private:
  std::vector<Setting> items_;
  std::uint64_t version_ = 1;
  mutable std::uint64_t fingerprint_ = 0;
  mutable std::uint64_t fingerprint_version_ = 0;
};

std::string lower(std::string_view s);

struct ServerLogin {
  config::Endpoint host;
  std::string user;
  std::string password;  // empty: the server must not ask for one
  std::string dbname;
  std::chrono::milliseconds timeout{10000};
  std::size_t max_message_bytes = 1 << 20;
};

// Why an open or an internal query failed, in words for the client.
struct ServerFailure {
  std::string sqlstate = "08006";
  std::string message;
};

class ServerConnection : public pool::Connection {
 public:
  explicit ServerConnection(tcp::socket socket) : socket(std::move(socket)) {}

  // Re-registers the socket with `ctx` when it belongs to another worker's event loop.
  void adopt(asio::io_context& ctx, int worker);

  // False when the server has closed the connection or sent something while idle (PostgreSQL
  // says goodbye with a FATAL ErrorResponse, e.g. after pg_terminate_backend or a restart).
  // One non-blocking peek: cheap enough for every checkout.
  bool idle_and_open();

  // Runs `sql` as a simple query and reads through to ReadyForQuery, keeping ParameterStatus
  // values in `settings`. Reported settings that changed are appended (as ParameterStatus
  // messages) to `changed_out`, when given. Returns false on I/O failure or an ErrorResponse.
  asio::awaitable<bool> run_query(std::string_view sql, ServerFailure& failure,
                                  std::string* changed_out = nullptr);

  tcp::socket socket;
  ByteBuffer in;
  config::Endpoint host;
  std::uint32_t host_index = 0;  // in the cancel registry's host table
  protocol::BackendKeyData key;
  Settings settings;
  // A client ran a SET pgvalve could not track here: the next sync starts with RESET ALL.
  bool settings_unknown = false;
  // The client settings (by fingerprint) this server's settings were last made equal to, and
  // the version of `settings` then: while both hold, the next such client needs no sync.
  std::uint64_t synced_fingerprint = 0;
  std::uint64_t synced_version = 0;
  protocol::ServerStatements statements;  // transaction pooling's shared prepared statements
  std::vector<std::pair<std::string, std::string>> startup_parameters;  // as reported, in order
  char tx_status = 'I';
  std::size_t max_message_bytes = 1 << 20;
};

// Connects and logs in (SCRAM-SHA-256, md5, cleartext or trust, whatever the server asks).
// Returns null and fills `failure` when it cannot.
asio::awaitable<std::unique_ptr<ServerConnection>> open_server_connection(const ServerLogin& login,
                                                                          ServerFailure& failure);

}  // namespace pgvalve::proxy
