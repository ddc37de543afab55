// A libpq connection driven by an Asio loop (the control thread's): non-blocking connect and
// query with a deadline, TLS as pgvalve's own server links (server_tls, server_tls_ca), and no
// password libpq 15 would send where pgvalve's links would not (cleartext or md5 without TLS,
// unless server_allow_insecure_auth). Used by the health checks, the drills and EXPLAIN of slow
// statements.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include "config/config.h"

namespace pgvalve::proxy {

// One libpq connection: the health checks' (one per host, kept open between checks), a drill's
// or an EXPLAIN's (opened for a step, then closed).
struct PgLink {
  ~PgLink() { close(); }
  void close() {
    if (conn) PQfinish(conn);
    conn = nullptr;
  }
  PGconn* conn = nullptr;
  bool stopped = false;
  bool timed_out = false;
  boost::asio::posix::stream_descriptor* waiting = nullptr;  // the wait a deadline cancels
};

// Who a link logs in as.
struct PgLogin {
  std::string user;
  std::string password;
  std::string dbname;
  std::string application_name;
  static PgLogin health(const config::Config& config);  // health.user / password / dbname
};

struct QueryOutcome {
  bool ok = false;
  std::vector<std::optional<std::string>> row;  // the first row
  std::string error;
  // When the server refused the statement: its SQLSTATE and primary message, without the
  // excerpt of the statement (LINE 1: ...) `error` has.
  std::string sqlstate;
  std::string message;
};

// Connects `link` to `host` when it is not connected, runs `sql` and returns its first row,
// all within `timeout`. On failure the connection is closed (the next call opens a new one).
// `single_statement`: sent through the extended protocol, which runs one statement only.
boost::asio::awaitable<QueryOutcome> query(
    boost::asio::io_context& io, std::shared_ptr<PgLink> keep, const config::Config& config,
    const config::Endpoint& host, const PgLogin& login, const std::string& sql,
    std::chrono::milliseconds timeout, bool single_statement);
// The same, logged in as the health checks are.
boost::asio::awaitable<QueryOutcome> query(boost::asio::io_context& io,
                                           std::shared_ptr<PgLink> keep,
                                           const config::Config& config,
                                           const config::Endpoint& host, const char* sql,
                                           std::chrono::milliseconds timeout);

}  // namespace pgvalve::proxy
