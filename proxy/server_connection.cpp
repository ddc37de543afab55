#include "proxy/server_connection.h"

#include <algorithm>
#include <cctype>
#include <cerrno>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/this_coro.hpp>

#include "protocol/auth.h"
#include "protocol/secure_random.h"
#include "proxy/arrival_wait.h"
#include "proxy/io_util.h"
#include "proxy/log.h"
#include "proxy/socket_options.h"

namespace pgvalve::proxy {

namespace pr = protocol;

bool ServerConnection::adopt(asio::io_context& ctx, int worker) {
  home_worker = worker;
  if (&stream.socket().get_executor().context() == &ctx) return true;
  // Runs inside a handler of the loop: nothing here may throw.
  error_code ec;
  stream.move_to(ctx, ec);
  return !ec;
}

bool ServerConnection::idle_and_open() {
  if (!in.empty()) return false;
  char byte;
  if (stream.buffered()) return false;  // TLS holds something the server sent while idle
  const auto n = ::recv(stream.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

asio::awaitable<bool> ServerConnection::run_query(std::string_view sql, ServerFailure& failure) {
  state.unnamed_statement_of = 0;  // a simple query ends the unnamed statement
  std::string out;
  pr::append_query(out, sql);
  if (!co_await write_all(stream, out)) {
    failure = {"08006",
               "pgvalve: lost the connection to server " + host.to_string() + "; try again"};
    co_return false;
  }
  bool ok = true;
  for (;;) {
    pr::Frame f;
    if (co_await read_frame(stream, in, max_message_bytes, f) != ReadStatus::Ok) {
      failure = {"08006",
                 "pgvalve: lost the connection to server " + host.to_string() + "; try again"};
      co_return false;
    }
    const std::size_t size = f.whole.size();
    switch (f.tag) {
      case 'S':
        if (auto ps = pr::read_parameter_status(f)) {
          state.settings.set(ps->name, ps->value, true);
        }
        break;
      case 'E':
        if (auto e = pr::read_error_response(f)) {
          failure = {std::string(e->sqlstate), std::string(e->message)};
        }
        ok = false;
        break;
      case 'Z':
        state.tx_status = pr::read_ready_for_query(f).value_or('E');
        in.consume(size);
        co_return (ok && state.tx_status == 'I');
      default:
        break;
    }
    in.consume(size);
  }
}

namespace {

asio::awaitable<bool> connect_socket(Socket& socket, const config::Endpoint& host,
                                     ServerFailure& failure) {
  error_code ec;
  auto address = asio::ip::make_address(host.host, ec);
  if (!ec) {
    co_await socket.async_connect(tcp::endpoint(address, host.port), await_ec(ec));
  } else {
    tcp::resolver resolver(socket.get_executor());
    auto results =
        co_await resolver.async_resolve(host.host, std::to_string(host.port), await_ec(ec));
    if (!ec) co_await asio::async_connect(socket, results, await_ec(ec));
  }
  if (ec) {
    if (ec.category() == boost::system::system_category() &&
        (ec.value() == EMFILE || ec.value() == ENFILE)) {
      // The socket could not even be created: pgvalve's shortage, not the server's.
      failure = {"53300",
                 "pgvalve: cannot open a connection to server " + host.to_string() +
                     ": pgvalve is out of file descriptors (" + ec.message() +
                     "); raise its open-files limit (see the open_files_limit event in its log)",
                 true};
      co_return false;
    }
    failure = {"08006", "pgvalve: cannot connect to server " + host.to_string() + " (" +
                            ec.message() + "); check that PostgreSQL runs there"};
    co_return false;
  }
  socket.set_option(tcp::no_delay(true), ec);
  set_keepalive(socket.native_handle());
  enable_rest_hint(socket);
  co_return true;
}

}  // namespace

asio::awaitable<std::unique_ptr<ServerConnection>> open_server_connection(const ServerLogin& login,
                                                                          ServerFailure& failure) {
  auto executor = co_await asio::this_coro::executor;
  auto& context = static_cast<asio::io_context&>(asio::query(executor, asio::execution::context));
  auto conn = std::make_unique<ServerConnection>(context);
  conn->host = login.host;
  conn->state.name = login.host.to_string();
  conn->max_message_bytes = login.max_message_bytes;
  Deadline deadline(conn->stream, login.timeout);
  auto timed_out = [&] {
    failure = {"08006", "pgvalve: timed out logging in to server " + login.host.to_string() +
                            "; check that PostgreSQL is running and not overloaded"};
    return nullptr;
  };

  std::string out;
  bool ask_for_tls = login.tls != nullptr;
  for (;;) {
    if (!co_await connect_socket(conn->stream.socket(), login.host, failure)) {
      if (deadline.expired()) co_return timed_out();
      co_return nullptr;
    }
    if (!ask_for_tls) break;
    // server_tls: ask for TLS the way libpq does (SSLRequest, one byte back).
    const auto mode = login.tls->mode();
    pr::append_ssl_request(out);
    if (!co_await write_all(conn->stream, out)) co_return timed_out();
    out.clear();
    char answer = 0;
    error_code ec;
    co_await asio::async_read(conn->stream.socket(), asio::buffer(&answer, 1), await_ec(ec));
    if (ec) co_return timed_out();
    if (answer == 'S') {
      std::string error;
      if (!co_await conn->stream.start_tls_client(login.tls, login.host.host, error)) {
        if (deadline.expired()) co_return timed_out();
        const bool fall_back = mode == config::ServerTlsMode::Prefer;
        PGV_LOG(Warn, "server_tls_failed", {"host", login.host.to_string()},
                {"server_tls", config::to_string(mode)}, {"reason", error},
                {"then", fall_back ? "plaintext" : "refused"});
        if (fall_back) {
          // As libpq does for sslmode=prefer: a new connection without TLS.
          conn->stream.reset(ec);
          ask_for_tls = false;
          continue;
        }
        failure = {"08006", "pgvalve: TLS with server " + login.host.to_string() +
                                " failed (server_tls = " + config::to_string(mode) + "): " + error};
        failure.lasting = true;
        co_return nullptr;
      }
    } else if (answer != 'N') {
      failure = {"08006", "pgvalve: server " + login.host.to_string() +
                              " answered SSLRequest with neither S nor N; is it PostgreSQL?"};
      failure.lasting = true;
      co_return nullptr;
    } else if (mode != config::ServerTlsMode::Prefer) {
      failure = {"08006", "pgvalve: server " + login.host.to_string() +
                              " does not offer TLS, and server_tls = " + config::to_string(mode) +
                              " requires it; enable ssl on the server, or lower server_tls"};
      failure.lasting = true;
      co_return nullptr;
    }
    break;
  }
  // The login's reads and writes then complete without a turn of the event loop (Stream), and
  // the sessions read and write the connection without blocking.
  {
    error_code ec;
    conn->stream.socket().non_blocking(true, ec);
  }
  const std::pair<std::string_view, std::string_view> params[] = {{"user", login.user},
                                                                  {"database", login.dbname}};
  pr::append_startup_message(out, params);
  if (!co_await write_all(conn->stream, out)) co_return timed_out();

  std::optional<pr::ScramClient> scram;
  const std::string server = login.host.to_string();
  auto need_password = [&]() -> bool {
    if (!login.password.empty()) return true;
    failure = {"28P01", "pgvalve: server " + server + " asks for a password for user \"" +
                            login.user + "\"; set users[].server_password in the config"};
    return false;
  };
  // The password itself (cleartext), or a hash anyone who sees it can attack offline (md5),
  // would cross a link without TLS.
  auto insecure_allowed = [&](const char* method) -> bool {
    if (login.allow_insecure_auth || conn->stream.tls()) return true;
    failure = {"28000", "pgvalve: server " + server + " asks for " + method +
                            " password authentication, which would send the password (or a "
                            "hash of it) without TLS; use scram-sha-256 on the server, or set "
                            "server_allow_insecure_auth: true"};
    return false;
  };
  // AuthenticationOk is believed only once the server proved, with its SCRAM signature, that
  // it knows the password: a server that skips the signature is an impostor.
  bool scram_verified = false;

  for (;;) {
    pr::Frame f;
    auto st = co_await read_frame(conn->stream, conn->in, login.max_message_bytes, f);
    if (st != ReadStatus::Ok) {
      if (deadline.expired()) co_return timed_out();
      failure = {"08006", "pgvalve: server " + server +
                              " closed the connection during login; check the server's log"};
      co_return nullptr;
    }
    const std::size_t size = f.whole.size();
    out.clear();
    switch (f.tag) {
      case 'R': {
        auto req = pr::read_authentication(f);
        if (!req) {
          failure = {"08P01", "pgvalve: malformed authentication request from " + server};
          co_return nullptr;
        }
        switch (static_cast<pr::AuthCode>(req->code)) {
          case pr::AuthCode::Ok:
            if (scram && !scram_verified) {
              failure = {"28000", "pgvalve: server " + server +
                                      " ended the SCRAM exchange without proving it knows the "
                                      "password (no server signature)"};
              co_return nullptr;
            }
            break;
          case pr::AuthCode::CleartextPassword:
            if (!need_password() || !insecure_allowed("cleartext")) co_return nullptr;
            pr::append_password(out, login.password);
            break;
          case pr::AuthCode::Md5Password: {
            if (!need_password() || !insecure_allowed("md5")) co_return nullptr;
            auto stored = pr::md5_password_hash(login.user, login.password);
            pr::append_password(out, pr::md5_salted_response(stored, req->data));
            break;
          }
          case pr::AuthCode::Sasl: {
            if (!need_password()) co_return nullptr;
            auto mechs = pr::sasl_mechanisms(req->data);
            if (std::find(mechs.begin(), mechs.end(), pr::kScramSha256) == mechs.end()) {
              failure = {"28000", "pgvalve: server " + server +
                                      " offers no SASL mechanism pgvalve supports"};
              co_return nullptr;
            }
            scram.emplace(login.password, pr::random_bytes(18));
            pr::append_sasl_initial_response(out, pr::kScramSha256, scram->client_first());
            break;
          }
          case pr::AuthCode::SaslContinue: {
            std::string error;
            auto final_msg = scram ? scram->handle_server_first(req->data, error) : std::nullopt;
            if (!final_msg) {
              failure = {"28000", "pgvalve: SCRAM exchange with " + server + " failed: " + error};
              co_return nullptr;
            }
            pr::append_sasl_response(out, *final_msg);
            break;
          }
          case pr::AuthCode::SaslFinal: {
            std::string error;
            if (!scram || !scram->verify_server_final(req->data, error)) {
              failure = {"28000",
                         "pgvalve: server " + server + " failed SCRAM verification: " + error};
              co_return nullptr;
            }
            scram_verified = true;
            break;
          }
          default:
            failure = {"28000", "pgvalve: server " + server +
                                    " asks for an authentication method pgvalve does not "
                                    "support (code " +
                                    std::to_string(req->code) + "); use scram-sha-256 or md5"};
            co_return nullptr;
        }
        if (!out.empty() && !co_await write_all(conn->stream, out)) co_return timed_out();
        break;
      }
      case 'E': {
        auto e = pr::read_error_response(f);
        failure = {e ? std::string(e->sqlstate) : "08006",
                   "pgvalve: server " + server + " refused login: " +
                       (e ? std::string(e->message) : std::string("unknown error"))};
        co_return nullptr;
      }
      case 'S':
        if (auto ps = pr::read_parameter_status(f)) {
          conn->state.settings.set(ps->name, ps->value, true);
          conn->state.startup_parameters.emplace_back(ps->name, ps->value);
        }
        break;
      case 'K':
        if (auto k = pr::read_backend_key_data(f)) conn->key = *k;
        break;
      case 'Z':
        conn->in.consume(size);
        deadline.disarm();
        conn->state.tx_status = 'I';
        conn->created_at = conn->last_used_at = pool::Clock::now();
        co_return conn;
      default:  // NoticeResponse, NegotiateProtocolVersion: nothing to do
        break;
    }
    conn->in.consume(size);
  }
}

}  // namespace pgvalve::proxy
