#include "proxy/pg_link.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "protocol/messages.h"
#include "proxy/io_util.h"

namespace pgvalve::proxy {

namespace {

using error_code = boost::system::error_code;

// Debian's bundle of the system's CA certificates: what OpenSSL's default verify paths (and so
// pgvalve's own server links) trust when server_tls_ca is not set. libpq 15 has no such default.
constexpr const char* kSystemCaFile = "/etc/ssl/certs/ca-certificates.crt";
// libpq checks the server's certificate against any root certificate file it finds, also for
// sslmode=prefer and require (which pgvalve's own server connections do not check). A path
// that cannot exist (/dev/null is no directory) keeps the health checks as trusting as they.
constexpr const char* kNoRootCertificate = "/dev/null/pgvalve-checks-no-certificate";

bool verifies(config::ServerTlsMode mode) {
  return mode == config::ServerTlsMode::VerifyCa || mode == config::ServerTlsMode::VerifyFull;
}

const char* sslmode(config::ServerTlsMode mode) {
  switch (mode) {
    case config::ServerTlsMode::Disable:
      return "disable";
    case config::ServerTlsMode::Prefer:
      return "prefer";
    case config::ServerTlsMode::Require:
      return "require";
    case config::ServerTlsMode::VerifyCa:
      return "verify-ca";
    case config::ServerTlsMode::VerifyFull:
      return "verify-full";
  }
  return "prefer";
}

std::string trimmed(const char* message) {
  std::string s = message ? message : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
    s.pop_back();
  for (char& c : s) {
    if (c == '\n') c = ' ';
  }
  return s;
}

// Waits for libpq's socket (without taking it: libpq owns and may replace it) until it is
// ready or the deadline cancels the wait.
asio::awaitable<bool> wait_socket(asio::io_context& io, PgLink& link, bool for_write) {
  const int fd = PQsocket(link.conn);
  if (fd < 0) co_return false;
  // Released, never closed, however the wait ends (also when the loop is destroyed with it).
  struct Borrowed {
    asio::posix::stream_descriptor d;
    PgLink& link;
    ~Borrowed() {
      link.waiting = nullptr;
      d.release();
    }
  } borrowed{asio::posix::stream_descriptor(io, fd), link};
  link.waiting = &borrowed.d;
  error_code ec;
  co_await borrowed.d.async_wait(for_write ? asio::posix::stream_descriptor::wait_write
                                           : asio::posix::stream_descriptor::wait_read,
                                 asio::redirect_error(asio::use_awaitable, ec));
  co_return !ec && !link.timed_out && !link.stopped;
}

// What a probe connection saw of a server's login (insecure_auth_probe).
enum class ProbeSeen {
  Tls,       // it answered SSLRequest with 'S'
  Plain,     // without TLS, no cleartext or md5 request (SCRAM, trust, or an error libpq reports)
  Insecure,  // without TLS, a cleartext or md5 request
  Unknown,   // no answer (cannot connect, closed, timed out)
};

// libpq 15 answers whatever password request a server makes (require_auth came in 16). Where
// pgvalve's own server links would refuse — cleartext or md5 over a link without TLS, unless
// server_allow_insecure_auth — the checks must too: before libpq gets the password, a probe
// connection asks for TLS (when `ask_tls`) and, when there is none, reads which password request
// the server makes. `refusal` says why the password must not be sent (ProbeSeen::Insecure).
asio::awaitable<ProbeSeen> insecure_auth_probe(asio::io_context& io, const config::Endpoint& host,
                                               const PgLogin& login, bool ask_tls,
                                               std::chrono::milliseconds timeout,
                                               std::string& refusal) {
  using asio::ip::tcp;
  tcp::socket socket(io);
  asio::steady_timer deadline(io);
  deadline.expires_after(timeout);
  deadline.async_wait([&socket](const error_code& ec) {
    if (!ec) socket.close();
  });
  error_code ec;
  tcp::resolver resolver(io);
  auto found = co_await resolver.async_resolve(host.host, std::to_string(host.port), await_ec(ec));
  if (!ec) co_await asio::async_connect(socket, found, await_ec(ec));
  if (ec) co_return ProbeSeen::Unknown;
  std::string out;
  char answer = 'N';
  if (ask_tls) {
    protocol::append_ssl_request(out);
    co_await asio::async_write(socket, asio::buffer(out), await_ec(ec));
    if (!ec) co_await asio::async_read(socket, asio::buffer(&answer, 1), await_ec(ec));
    if (ec) co_return ProbeSeen::Unknown;
    if (answer == 'S') co_return ProbeSeen::Tls;
  }
  out.clear();
  const std::pair<std::string_view, std::string_view> params[] = {{"user", login.user},
                                                                  {"database", login.dbname}};
  protocol::append_startup_message(out, params);
  co_await asio::async_write(socket, asio::buffer(out), await_ec(ec));
  char head[9];
  if (!ec) co_await asio::async_read(socket, asio::buffer(head, sizeof head), await_ec(ec));
  deadline.cancel();
  if (ec) co_return ProbeSeen::Unknown;
  if (head[0] != 'R') co_return ProbeSeen::Plain;
  const auto byte = [&](int i) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(head[i]));
  };
  const auto code = static_cast<protocol::AuthCode>(
      static_cast<std::int32_t>((byte(5) << 24) | (byte(6) << 16) | (byte(7) << 8) | byte(8)));
  if (code != protocol::AuthCode::CleartextPassword && code != protocol::AuthCode::Md5Password) {
    co_return ProbeSeen::Plain;
  }
  refusal = std::string("the server asks for a ") +
            (code == protocol::AuthCode::Md5Password ? "md5" : "cleartext") +
            " password over a connection without TLS; pgvalve did not send it (enable TLS on the "
            "server, use SCRAM, or set server_allow_insecure_auth: true)";
  co_return ProbeSeen::Insecure;
}

// Opens link.conn with libpq in `mode` (an sslmode); false with `error` when it fails. The
// caller's deadline ends the waits (link.timed_out).
asio::awaitable<bool> libpq_connect(asio::io_context& io, PgLink& link,
                                    const config::Config& config, const config::Endpoint& host,
                                    const PgLogin& login, const char* mode, std::string& error) {
  const std::string port = std::to_string(host.port);
  const std::string& ca = config.server_tls_ca;
  const char* keys[] = {"host",    "port",        "dbname",           "user", "password",
                        "sslmode", "sslrootcert", "application_name", nullptr};
  const char* values[] = {host.host.c_str(),
                          port.c_str(),
                          login.dbname.c_str(),
                          login.user.c_str(),
                          login.password.c_str(),
                          mode,
                          !verifies(config.server_tls) ? kNoRootCertificate
                          : ca.empty()                 ? kSystemCaFile
                                                       : ca.c_str(),
                          login.application_name.c_str(),
                          nullptr};
  link.conn = PQconnectStartParams(keys, values, 0);
  if (!link.conn || PQstatus(link.conn) == CONNECTION_BAD) {
    error = link.conn ? trimmed(PQerrorMessage(link.conn)) : "out of memory";
    co_return false;
  }
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  while (st != PGRES_POLLING_OK) {
    if (st == PGRES_POLLING_FAILED) {
      error = trimmed(PQerrorMessage(link.conn));
      co_return false;
    }
    if (!co_await wait_socket(io, link, st == PGRES_POLLING_WRITING)) co_return false;
    st = PQconnectPoll(link.conn);
  }
  PQsetnonblocking(link.conn, 1);
  co_return true;
}

// Logs link.conn in. Where a password could go out without TLS (server_tls disable or prefer,
// server_allow_insecure_auth off), libpq is never let to choose: after a failed TLS handshake
// its sslmode=prefer falls back to plaintext and answers md5 unasked. It gets sslmode=require
// when the server offers TLS and, as pgvalve's own server links do for prefer, when that fails
// a new connection without TLS (sslmode=disable) only after a probe saw it ask for no cleartext
// or md5 password.
asio::awaitable<bool> log_in(asio::io_context& io, PgLink& link, const config::Config& config,
                             const config::Endpoint& host, const PgLogin& login,
                             std::chrono::steady_clock::time_point until, std::string& error) {
  const bool guarded = !config.server_allow_insecure_auth && !login.password.empty() &&
                       (config.server_tls == config::ServerTlsMode::Disable ||
                        config.server_tls == config::ServerTlsMode::Prefer);
  if (!guarded)
    co_return co_await libpq_connect(io, link, config, host, login, sslmode(config.server_tls),
                                     error);
  const auto left = [&] {
    return std::max(std::chrono::milliseconds(1),
                    std::chrono::duration_cast<std::chrono::milliseconds>(
                        until - std::chrono::steady_clock::now()));
  };
  const bool prefer = config.server_tls == config::ServerTlsMode::Prefer;
  std::string refusal;
  ProbeSeen seen = co_await insecure_auth_probe(io, host, login, prefer, left(), refusal);
  if (seen == ProbeSeen::Insecure) {
    error = refusal;
    co_return false;
  }
  if (seen == ProbeSeen::Plain) {
    co_return co_await libpq_connect(io, link, config, host, login, "disable", error);
  }
  if (!prefer) {  // Unknown, with server_tls disable
    error =
        "cannot reach the server at " + host.to_string() + " (the probe connection got no answer)";
    co_return false;
  }
  // Tls, or Unknown (libpq then says why it cannot connect).
  if (co_await libpq_connect(io, link, config, host, login, "require", error)) co_return true;
  if (link.timed_out || link.stopped || seen == ProbeSeen::Unknown) co_return false;
  link.close();
  const std::string tls_error = error;
  seen = co_await insecure_auth_probe(io, host, login, false, left(), refusal);
  if (seen == ProbeSeen::Insecure) {
    error = refusal + "; TLS with it failed: " + tls_error;
    co_return false;
  }
  if (seen != ProbeSeen::Plain) co_return false;  // libpq's TLS error stands
  error.clear();
  co_return co_await libpq_connect(io, link, config, host, login, "disable", error);
}

// Connects `link` to `host` when it is not connected, runs `sql` and returns its first row,
// all within `timeout`. On failure the connection is closed (the next call opens a new one).
// The same TLS settings as pgvalve's own server links (server_tls, server_tls_ca).
}  // namespace

PgLogin PgLogin::health(const config::Config& config) {
  return {config.health.user, config.health.password, config.health.dbname, "pgvalve health check"};
}

asio::awaitable<QueryOutcome> query(asio::io_context& io, std::shared_ptr<PgLink> keep,
                                    const config::Config& config, const config::Endpoint& host,
                                    const char* sql, std::chrono::milliseconds timeout) {
  co_return co_await query(io, std::move(keep), config, host, PgLogin::health(config), sql, timeout,
                           false);
}

asio::awaitable<QueryOutcome> query(asio::io_context& io, std::shared_ptr<PgLink> keep,
                                    const config::Config& config, const config::Endpoint& host,
                                    const PgLogin& login, const std::string& sql,
                                    std::chrono::milliseconds timeout, bool single_statement) {
  PgLink& link = *keep;
  QueryOutcome out;
  link.timed_out = false;
  asio::steady_timer deadline(io);
  deadline.expires_after(timeout);
  deadline.async_wait([keep](const error_code& ec) {
    if (ec) return;
    keep->timed_out = true;
    if (keep->waiting) keep->waiting->cancel();
  });
  bool ok = true;
  if (!link.conn) {
    ok = co_await log_in(io, link, config, host, login, std::chrono::steady_clock::now() + timeout,
                         out.error);
  }
  // The extended protocol refuses a string of several statements: pgvalve runs what it means.
  const int sent = !ok                ? 1
                   : single_statement ? PQsendQueryParams(link.conn, sql.c_str(), 0, nullptr,
                                                          nullptr, nullptr, nullptr, 0)
                                      : PQsendQuery(link.conn, sql.c_str());
  if (ok && !sent) {
    ok = false;
    out.error = trimmed(PQerrorMessage(link.conn));
  }
  while (ok) {
    const int flushed = PQflush(link.conn);
    if (flushed == 0) break;
    if (flushed < 0 || !co_await wait_socket(io, link, true)) ok = false;
  }
  bool have_row = false;
  while (ok) {
    if (!PQconsumeInput(link.conn)) {
      ok = false;
      out.error = trimmed(PQerrorMessage(link.conn));
      break;
    }
    bool done = false;
    while (!PQisBusy(link.conn)) {
      PGresult* r = PQgetResult(link.conn);
      if (!r) {
        done = true;
        break;
      }
      if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) >= 1 && !have_row) {
        for (int i = 0; i < PQnfields(r); ++i) {
          if (PQgetisnull(r, 0, i)) {
            out.row.emplace_back();
          } else {
            out.row.emplace_back(PQgetvalue(r, 0, i));
          }
        }
        have_row = true;
      } else if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        out.error = trimmed(PQresultErrorMessage(r));
        const char* sqlstate = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        const char* message = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
        out.sqlstate = sqlstate ? sqlstate : "";
        out.message = message ? message : "";
      }
      PQclear(r);
    }
    if (done) break;
    if (!co_await wait_socket(io, link, false)) ok = false;
  }
  if (ok && !have_row) {
    ok = false;
    if (out.error.empty()) out.error = "the query returned no row";
  }
  deadline.cancel();
  if (!ok) {
    if (out.error.empty()) {
      out.error = link.timed_out ? "no answer within " + std::to_string(timeout.count()) + " ms"
                                 : "connection lost";
    }
    link.close();
  }
  out.ok = ok;
  co_return out;
}

}  // namespace pgvalve::proxy
