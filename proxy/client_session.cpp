#include "proxy/client_session.h"

#include <openssl/rand.h>

#include <algorithm>
#include <array>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>

#include "protocol/auth.h"
#include "protocol/messages.h"
#include "protocol/startup.h"
#include "proxy/admin_console.h"
#include "proxy/app.h"
#include "proxy/io_util.h"
#include "proxy/log.h"
#include "routing/statement.h"

namespace pgvalve::proxy {

namespace pr = protocol;
using namespace std::chrono_literals;

namespace {

// Session settings PostgreSQL reports with ParameterStatus that pgvalve keeps equal between a
// client and whichever server it is lent. Other reported values (server_version, ...) are the
// server's, not the session's.
constexpr std::array<std::string_view, 6> kSyncedReported = {
    "client_encoding", "datestyle", "timezone", "intervalstyle", "standard_conforming_strings",
    "application_name"};

bool is_synced_reported(std::string_view name) {
  return std::any_of(kSyncedReported.begin(), kSyncedReported.end(), [&](std::string_view s) {
    return s.size() == name.size() &&
           std::equal(s.begin(), s.end(), name.begin(), [](char a, char b) {
             return a == std::tolower(static_cast<unsigned char>(b));
           });
  });
}

std::string random_bytes(std::size_t n) {
  std::string s(n, '\0');
  RAND_bytes(reinterpret_cast<unsigned char*>(s.data()), static_cast<int>(n));
  return s;
}

void append_quoted_literal(std::string& out, std::string_view value) {
  out += '\'';
  for (char c : value) {
    if (c == '\'') out += '\'';
    out += c;
  }
  out += '\'';
}

void append_quoted_ident(std::string& out, std::string_view name) {
  out += '"';
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
}

// "-c name=value --name=value" as libpq sends PGOPTIONS; backslash escapes a space.
std::vector<std::pair<std::string, std::string>> parse_options(std::string_view options) {
  std::vector<std::string> words;
  std::string word;
  bool escaped = false;
  for (char c : options) {
    if (escaped) {
      word += c;
      escaped = false;
    } else if (c == '\\') {
      escaped = true;
    } else if (c == ' ' || c == '\t') {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    } else {
      word += c;
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  std::vector<std::pair<std::string, std::string>> out;
  for (std::size_t i = 0; i < words.size(); ++i) {
    std::string_view w = words[i];
    std::string_view kv;
    if (w == "-c" && i + 1 < words.size()) {
      kv = words[++i];
    } else if (w.starts_with("-c")) {
      kv = w.substr(2);
    } else if (w.starts_with("--")) {
      kv = w.substr(2);
    } else {
      continue;
    }
    auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    std::string name(kv.substr(0, eq));
    std::replace(name.begin(), name.end(), '-', '_');
    out.emplace_back(std::move(name), std::string(kv.substr(eq + 1)));
  }
  return out;
}

}  // namespace

void ClientSession::CheckoutWaiter::grant(std::unique_ptr<pool::Connection> granted_conn) {
  // Runs on the thread that freed the slot: hand over to the session's own thread.
  auto self = session_.shared_from_this();
  asio::post(session_.client_.get_executor(), [self, raw = granted_conn.release()] {
    auto& w = self->waiter_;
    w.conn.reset(raw);
    w.granted = true;
    self->wake_timer_.cancel();
  });
}

ClientSession::ClientSession(App& app, Worker& worker, tcp::socket socket, std::uint64_t id)
    : app_(app),
      worker_(worker),
      client_(std::move(socket)),
      id_(id),
      wake_timer_(client_.get_executor()) {
  worker_.sessions.insert(this);
}

ClientSession::~ClientSession() {
  worker_.sessions.erase(this);
  if (pool_) pool_->client_left();
  if (counted_) app_.remove_client();
}

void ClientSession::append_error(std::string& out, std::string_view sqlstate,
                                 std::string_view message, std::string_view hint) {
  pr::ErrorFields e;
  e.severity = "ERROR";
  e.sqlstate = sqlstate;
  e.message = message;
  e.hint = hint;
  pr::append_error_response(out, e);
}

asio::awaitable<void> ClientSession::send_fatal(std::string_view sqlstate,
                                                std::string_view message) {
  std::string out;
  pr::ErrorFields e;
  e.severity = "FATAL";
  e.sqlstate = sqlstate;
  e.message = message;
  pr::append_error_response(out, e);
  co_await write_all(client_, out);
  PGV_LOG(Info, "client_refused", {"client", id_}, {"user", user_name_},
          {"database", database_name_}, {"sqlstate", sqlstate}, {"reason", message});
}

// ---- Login ----------------------------------------------------------------------------------

asio::awaitable<void> ClientSession::serve() {
  config_ = app_.config();
  users_ = app_.users();
  max_message_bytes_ = static_cast<std::size_t>(config_->limits.max_message_bytes);
  mode_ = config_->pool.mode;
  track_ = mode_ != config::PoolMode::Session;

  bool ok;
  {
    Deadline auth_deadline(client_, std::chrono::milliseconds(config_->limits.auth_timeout_ms));
    ok = co_await read_startup();
    if (ok) ok = co_await authenticate();
    if (!ok && auth_deadline.expired()) {
      co_await send_fatal("08P01",
                          "pgvalve: authentication timed out; the client must complete login "
                          "within limits.auth_timeout_ms");
    }
  }
  if (!ok) co_return;
  if (database_name_ == "pgvalve") {
    client_in_.shrink_if_empty();
    co_await serve_admin_console(app_, client_, client_in_, user_name_, id_);
    co_return;
  }
  if (!co_await start_session()) co_return;
  if (server_) {
    co_await relay(error_code{});  // session mode: the server stays linked
  } else {
    wait_until_readable();
  }
}

asio::awaitable<bool> ClientSession::read_startup() {
  for (;;) {
    auto r =
        pr::decode_startup(client_in_.has_storage() ? client_in_.readable() : std::string_view{});
    if (r.status == pr::DecodeStatus::NeedMoreData) {
      error_code ec;
      std::size_t n = co_await client_.async_read_some(client_in_.prepare(), await_ec(ec));
      if (ec) co_return false;
      client_in_.commit(n);
      continue;
    }
    if (r.status == pr::DecodeStatus::Invalid) {
      co_await send_fatal("08P01", "pgvalve: invalid startup packet: " + r.error);
      co_return false;
    }
    client_in_.consume(r.consumed);
    if (std::holds_alternative<pr::SslRequest>(r.packet) ||
        std::holds_alternative<pr::GssEncRequest>(r.packet)) {
      if (!co_await write_all(client_, "N")) co_return false;  // not offered
      continue;
    }
    if (auto* cancel = std::get_if<pr::CancelRequest>(&r.packet)) {
      co_await forward_cancel(cancel->process_id, cancel->secret_key);
      co_return false;
    }
    auto& startup = std::get<pr::StartupMessage>(r.packet);
    user_name_ = std::string(startup.get("user"));
    database_name_ = std::string(startup.get("database"));
    if (database_name_.empty()) database_name_ = user_name_;
    startup_params_ = std::move(startup.parameters);
    if (!client_in_.empty()) {
      co_await send_fatal("08P01", "pgvalve: unexpected data after the startup packet");
      co_return false;
    }
    co_return true;
  }
}

asio::awaitable<void> ClientSession::forward_cancel(std::int32_t process_id,
                                                    std::int32_t secret_key) {
  auto dest = app_.cancels().find(process_id, secret_key);
  if (!dest) {
    PGV_LOG(Debug, "cancel_ignored", {"pid", process_id});
    co_return;
  }
  co_await send_cancel(*dest);
}

asio::awaitable<bool> ClientSession::read_password_frame(pr::Frame& frame) {
  auto st = co_await read_frame(client_, client_in_, pr::kMaxStartupPacketBytes, frame);
  if (st == ReadStatus::Invalid || (st == ReadStatus::Ok && frame.tag != 'p')) {
    co_await send_fatal("08P01", "pgvalve: expected a password message during authentication");
    co_return false;
  }
  co_return st == ReadStatus::Ok;
}

asio::awaitable<bool> ClientSession::authenticate() {
  const std::string failed =
      "pgvalve: password authentication failed for user \"" + user_name_ + "\"";
  const UserAuth* auth = users_->find(user_name_);
  if (!auth) {
    co_await send_fatal("28P01", failed);
    co_return false;
  }
  user_ = auth->user;
  bool ok = auth->method == AuthMethod::Md5 ? co_await authenticate_md5(*auth)
                                            : co_await authenticate_scram(*auth);
  if (!ok) co_return false;
  if (database_name_ == "pgvalve" && !user_->admin) {
    co_await send_fatal("28000", "pgvalve: user \"" + user_name_ +
                                     "\" may not use the admin console; set admin: true for "
                                     "this user in the config");
    co_return false;
  }
  co_return true;
}

asio::awaitable<bool> ClientSession::authenticate_scram(const UserAuth& auth) {
  const std::string failed =
      "pgvalve: password authentication failed for user \"" + user_name_ + "\"";
  std::string out;
  const std::string_view mechanisms[] = {pr::kScramSha256};
  pr::append_authentication_sasl(out, mechanisms);
  if (!co_await write_all(client_, out)) co_return false;

  pr::Frame f;
  if (!co_await read_password_frame(f)) co_return false;
  auto initial = pr::read_sasl_initial_response(f);
  if (!initial || initial->mechanism != pr::kScramSha256) {
    client_in_.consume(f.whole.size());
    co_await send_fatal("28000", "pgvalve: unsupported SASL mechanism; use SCRAM-SHA-256");
    co_return false;
  }
  if (!auth.verifier) {
    co_await send_fatal("28P01", failed);
    co_return false;
  }
  pr::ScramServer scram(*auth.verifier, random_bytes(18));
  std::string error;
  auto server_first = scram.handle_client_first(initial->data, error);
  client_in_.consume(f.whole.size());
  if (!server_first) {
    co_await send_fatal("08P01", "pgvalve: malformed SCRAM message: " + error);
    co_return false;
  }
  out.clear();
  pr::append_authentication_sasl_continue(out, *server_first);
  if (!co_await write_all(client_, out)) co_return false;

  if (!co_await read_password_frame(f)) co_return false;
  auto server_final = scram.handle_client_final(pr::read_sasl_response(f), error);
  client_in_.consume(f.whole.size());
  if (!server_final) {
    co_await send_fatal("28P01", failed);
    co_return false;
  }
  out.clear();
  pr::append_authentication_sasl_final(out, *server_final);
  co_return co_await write_all(client_, out);
}

asio::awaitable<bool> ClientSession::authenticate_md5(const UserAuth& auth) {
  const std::string salt = random_bytes(4);
  std::string out;
  pr::append_authentication_md5(out, salt);
  if (!co_await write_all(client_, out)) co_return false;
  pr::Frame f;
  if (!co_await read_password_frame(f)) co_return false;
  auto password = pr::read_password(f);
  const bool ok = password && *password == pr::md5_salted_response(auth.md5_hash, salt);
  client_in_.consume(f.whole.size());
  if (!ok) {
    co_await send_fatal("28P01",
                        "pgvalve: password authentication failed for user \"" + user_name_ + "\"");
  }
  co_return ok;
}

void ClientSession::init_client_settings() {
  defaults_ = pool_->server_parameters();
  auto apply = [&](std::string_view name, std::string_view value) {
    const std::string key = lower(name);
    const bool reported = is_synced_reported(key);
    client_settings_.set(key, value, reported);
    if (!reported) startup_settings_.set(key, value, false);
  };
  for (const auto& [name, value] : startup_params_) {
    if (name == "user" || name == "database" || name == "replication") continue;
    if (name == "options") {
      for (const auto& [k, v] : parse_options(value))
        apply(k, v);
      continue;
    }
    apply(name, value);
  }
}

asio::awaitable<bool> ClientSession::start_session() {
  for (const auto& [name, value] : startup_params_) {
    if (name == "replication" && value != "false" && value != "0" && value != "off") {
      co_await send_fatal("0A000",
                          "pgvalve: replication connections are not supported; connect to "
                          "PostgreSQL directly for replication");
      co_return false;
    }
  }
  database_ = config_->find_database(database_name_);
  if (!database_) {
    std::string names;
    for (const auto& db : config_->databases)
      names += (names.empty() ? "" : ", ") + db.name;
    co_await send_fatal("3D000", "pgvalve: database \"" + database_name_ +
                                     "\" is not configured; use one of: " + names);
    co_return false;
  }
  if (app_.draining()) {
    co_await send_fatal("57P01", "pgvalve: shutting down; connect again shortly");
    co_return false;
  }
  if (!app_.try_add_client()) {
    co_await send_fatal("53300",
                        "pgvalve: too many client connections (pool.max_client_connections"
                        " = " +
                            std::to_string(config_->pool.max_client_connections) +
                            "); try again later or raise the limit");
    co_return false;
  }
  counted_ = true;
  pool_ = app_.pool_for(*database_, user_name_, database_->shards.front().primary);
  pool_->client_joined();
  cancel_ = app_.cancels().register_client();

  // The client is told the parameters of a real server, so one must have been seen.
  ServerFailure failure;
  const bool need_server = mode_ == config::PoolMode::Session || !pool_->has_server_parameters();
  if (need_server && !co_await link_server(failure, false)) {
    co_await send_fatal(failure.sqlstate, failure.message);
    co_return false;
  }
  init_client_settings();
  if (server_ && !co_await sync_settings(*server_, failure)) {
    co_await send_fatal(failure.sqlstate, failure.message);
    co_return false;
  }
  if (server_ && mode_ != config::PoolMode::Session) release_server();

  std::string out;
  pr::append_authentication_ok(out);
  for (const auto& [name, value] : *defaults_) {
    const Setting* mine = client_settings_.find(lower(name));
    pr::append_parameter_status(out, name, mine ? std::string_view(mine->value) : value);
  }
  pr::append_backend_key_data(out, {cancel_->process_id, cancel_->secret_key});
  pr::append_ready_for_query(out, 'I');
  if (!co_await write_all(client_, out)) co_return false;
  logged_in_ = true;
  std::vector<std::pair<std::string, std::string>>().swap(startup_params_);
  PGV_LOG(Info, "client_login", {"client", id_}, {"user", user_name_}, {"database", database_name_},
          {"mode", config::to_string(mode_)});
  if (server_) {
    start_server_loop();
  }
  co_return true;
}

// ---- Relay ----------------------------------------------------------------------------------

// Between transactions a client holds no coroutine frame and no buffer, only this wait; the
// handler starts the relay again when the client sends something (or is woken).
void ClientSession::wait_until_readable() {
  client_in_.release();
  reading_client_ = true;
  client_.async_wait(tcp::socket::wait_read, [self = shared_from_this()](const error_code& ec) {
    self->reading_client_ = false;
    asio::co_spawn(self->client_.get_executor(), self->relay(ec), [self](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        PGV_LOG(Error, "session_failed", {"client", self->id_}, {"error", ex.what()});
      }
    });
  });
}

bool ClientSession::woken(const error_code& ec) {
  if (ec == asio::error::operation_aborted && notify_wakeup_ && !app_.draining()) {
    notify_wakeup_ = false;
    return true;
  }
  return false;
}

// The client loop: runs while the client is active, returns to wait_until_readable() when it
// is between transactions, and ends the session when the client leaves.
asio::awaitable<void> ClientSession::relay(error_code woke_with) {
  bool client_ended = false;
  // Woken by readable data: read it before anything else.
  bool readable = !woke_with;
  if (woke_with && !woken(woke_with)) {
    client_ended = !app_.draining();
  } else {
    for (;;) {
      error_code ec;
      if (!server_ && tx_ && !tx_->notifications.empty()) {
        if (!co_await write_notifications()) break;
      }
      if (!readable && client_in_.empty() && !server_) {
        if (app_.draining()) break;
        wait_until_readable();
        co_return;
      }
      readable = false;
      reading_client_ = true;
      std::size_t n =
          co_await client_.async_read_some(client_in_.prepare(pending_frame_bytes_), await_ec(ec));
      reading_client_ = false;
      if (woken(ec)) continue;
      if (ec) {
        client_ended = !app_.draining();
        break;
      }
      client_in_.commit(n);
      if (!co_await on_client_bytes()) {
        client_ended = true;
        break;
      }
    }
  }
  if (app_.draining() && !client_ended && !client_gone_) {
    co_await send_fatal("57P01", "pgvalve: shutting down; reconnect to continue");
  }
  co_await finish();
}

// Scans the complete frames at the front of the client buffer, then forwards them in one
// write. Returns false when the session must end (Terminate, protocol violation, lost client).
asio::awaitable<bool> ClientSession::on_client_bytes() {
  if (track_ && !tx_) tx_ = std::make_unique<TransactionState>();
  const std::string_view data = client_in_.readable();
  std::size_t end = 0;
  int requests = 0;
  bool extended = open_extended_;
  bool terminate = false;
  pending_frame_bytes_ = 0;
  while (end < data.size()) {
    auto r = pr::decode_frame(data.substr(end), max_message_bytes_);
    if (r.status == pr::DecodeStatus::NeedMoreData) {
      pending_frame_bytes_ = r.needed;
      break;
    }
    if (r.status == pr::DecodeStatus::Invalid) {
      co_await send_fatal("08P01", std::string("pgvalve: ") + r.error +
                                       "; raise limits.max_message_bytes if this is expected");
      co_return false;
    }
    const pr::Frame& f = r.frame;
    switch (f.tag) {
      case 'X':
        terminate = true;
        break;
      case 'Q':
      case 'F':
        ++requests;
        break;
      case 'S':
        ++requests;
        extended = false;
        break;
      case 'P':
      case 'B':
      case 'D':
      case 'E':
      case 'C':
      case 'H':
        extended = true;
        break;
      case 'd':
      case 'c':
      case 'f':
        break;
      default:
        co_await send_fatal(
            "08P01", std::string("pgvalve: unexpected message type '") + f.tag + "' from client");
        co_return false;
    }
    if (terminate) break;
    end += f.whole.size();
  }
  if (end == 0) {
    if (terminate) client_gone_ = true;
    co_return !terminate;
  }
  const std::string_view frames = data.substr(0, end);

  if (skip_until_sync_ || lost_transaction_) {
    ServerFailure failure{"08006",
                          "pgvalve: the server connection was lost during this transaction; "
                          "the transaction was rolled back, run it again"};
    co_await fail_requests(frames, failure);
    lost_transaction_ = false;
    client_in_.consume(end);
    co_return !terminate && !client_gone_;
  }
  if (!server_ && track_ && co_await listen_via_hub(frames)) {
    client_in_.consume(end);
    co_return !terminate && !client_gone_;
  }
  if (!server_ && track_ && answer_parse_locally(frames)) {
    // Between transactions a named Parse needs no server: it is prepared where it is first
    // used. A client that prepares synchronously while its own other connections hold every
    // server (pgbench -M prepared does) then cannot deadlock the pool.
    client_in_.consume(end);
    if (!tx_->client_scratch.empty() && !co_await write_all(client_, tx_->client_scratch))
      co_return false;
    co_return !terminate;
  }
  if (!server_) {
    ServerFailure failure;
    if (!co_await link_server(failure, true)) {
      co_await fail_requests(frames, failure);
      client_in_.consume(end);
      co_return !terminate && !client_gone_;
    }
  }
  in_flight_ += requests;
  open_extended_ = extended;
  server_write_pending_ = true;
  error_code ec;
  if (track_) {
    plan_client_frames(frames);
    tx_->write_buffers.clear();
    for (const auto& span : tx_->client_spans) {
      const char* base = span.scratch ? tx_->client_scratch.data() : frames.data();
      tx_->write_buffers.push_back(asio::buffer(base + span.offset, span.size));
    }
    co_await asio::async_write(server_->socket, tx_->write_buffers, await_ec(ec));
  } else {
    co_await asio::async_write(server_->socket, asio::buffer(frames.data(), frames.size()),
                               await_ec(ec));
  }
  server_write_pending_ = false;
  client_in_.consume(end);
  if (ec) {
    server_failed_ = true;
    error_code ignored;
    server_->socket.cancel(ignored);
    drop_failed_server();
  }
  if (terminate) client_gone_ = true;
  co_return !terminate;
}

asio::awaitable<void> ClientSession::fail_requests(std::string_view frames,
                                                   const ServerFailure& failure) {
  std::string out;
  std::size_t pos = 0;
  while (pos < frames.size()) {
    auto r = pr::decode_frame(frames.substr(pos), max_message_bytes_);
    if (r.status != pr::DecodeStatus::Ok) break;
    switch (r.frame.tag) {
      case 'Q':
      case 'F':
        append_error(out, failure.sqlstate, failure.message);
        pr::append_ready_for_query(out, 'I');
        break;
      case 'S':
        if (!error_sent_in_flight_) append_error(out, failure.sqlstate, failure.message);
        pr::append_ready_for_query(out, 'I');
        error_sent_in_flight_ = false;
        skip_until_sync_ = false;
        break;
      case 'P':
      case 'B':
      case 'D':
      case 'E':
      case 'C':
      case 'H':
        if (!error_sent_in_flight_) {
          append_error(out, failure.sqlstate, failure.message);
          error_sent_in_flight_ = true;
        }
        skip_until_sync_ = true;
        break;
      default:
        break;
    }
    pos += r.frame.whole.size();
  }
  if (!out.empty() && !co_await write_all(client_, out)) client_gone_ = true;
}

asio::awaitable<std::unique_ptr<ServerConnection>> ClientSession::checkout(ServerFailure& failure) {
  const auto settings = pool_->settings();
  const auto deadline =
      pool::Clock::now() + std::chrono::milliseconds(settings.checkout_timeout_ms);
  // Every idle connection may have died together (a server restart): try them all.
  const int attempts = settings.pool_size + settings.max_overflow + 2;
  for (int attempt = 0; attempt < attempts; ++attempt) {
    auto result = pool_->checkout(worker_.index, &waiter_);
    std::unique_ptr<pool::Connection> conn = std::move(result.conn);
    bool create = result.kind == pool::CheckoutKind::Create;
    if (result.kind == pool::CheckoutKind::Wait) {
      waiter_.granted = false;
      error_code ec;
      while (!waiter_.granted && pool::Clock::now() < deadline) {
        wake_timer_.expires_at(deadline);
        co_await wake_timer_.async_wait(await_ec(ec));
      }
      if (!waiter_.granted) {
        if (pool_->cancel_wait(&waiter_)) {
          pool_->note_timeout();
          failure = {"53300",
                     "pgvalve: no server connection available within "
                     "pool.checkout_timeout_ms (" +
                         std::to_string(settings.checkout_timeout_ms) +
                         " ms); the pool is busy — retry, or raise pool_size or "
                         "max_overflow"};
          co_return nullptr;
        }
        // Granted while timing out: the hand-over is already on its way.
        while (!waiter_.granted) {
          wake_timer_.expires_at(asio::steady_timer::time_point::max());
          co_await wake_timer_.async_wait(await_ec(ec));
        }
      }
      conn = std::move(waiter_.conn);
      create = conn == nullptr;
    }
    if (create) {
      ServerLogin login;
      login.host = pool_->key().host;
      login.user = user_name_;
      login.password = user_->server_password;
      login.dbname = database_->dbname;
      login.max_message_bytes = max_message_bytes_;
      const auto remaining =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - pool::Clock::now());
      login.timeout = std::max(std::chrono::milliseconds(1000), remaining);
      auto fresh = co_await open_server_connection(login, failure);
      if (!fresh) {
        pool_->create_failed();
        PGV_LOG(Warn, "server_connect_failed", {"host", login.host.to_string()},
                {"user", user_name_}, {"reason", failure.message});
        co_return nullptr;
      }
      fresh->id = app_.next_server_id();
      fresh->home_worker = worker_.index;
      error_code ec;
      auto remote = fresh->socket.remote_endpoint(ec);
      fresh->host_index = app_.cancels().host_index(remote);
      if (!pool_->has_server_parameters()) pool_->set_server_parameters(fresh->startup_parameters);
      pool_->created();
      PGV_LOG(Debug, "server_connected", {"server", fresh->id}, {"host", login.host.to_string()},
              {"user", user_name_}, {"database", database_name_});
      co_return fresh;
    }
    auto server = std::unique_ptr<ServerConnection>(static_cast<ServerConnection*>(conn.release()));
    if (!server->idle_and_open()) {
      PGV_LOG(Info, "server_gone_while_idle", {"server", server->id},
              {"host", server->host.to_string()});
      pool_->discard(std::move(server));
      continue;
    }
    server->adopt(worker_.context, worker_.index);
    if (pool_->should_pre_ping(*server, pool::Clock::now())) {
      ServerFailure ping_failure;
      Deadline ping_deadline(server->socket, 2s);
      if (!co_await server->run_query("", ping_failure)) {
        PGV_LOG(Info, "server_pre_ping_failed", {"server", server->id});
        pool_->discard(std::move(server));
        continue;
      }
    }
    co_return server;
  }
  failure = {"08006", "pgvalve: could not get a working server connection; try again"};
  co_return nullptr;
}

asio::awaitable<bool> ClientSession::link_server(ServerFailure& failure, bool sync) {
  auto server = co_await checkout(failure);
  if (!server) co_return false;
  if (sync && !settings_match(*server) && !co_await sync_settings(*server, failure)) {
    pool_->discard(std::move(server));
    co_return false;
  }
  server_ = std::move(server);
  server_failed_ = false;
  cancel_->link(server_->host_index, server_->key.process_id, server_->key.secret_key);
  if (sync) {
    start_server_loop();
  }
  co_return true;
}

std::uint64_t ClientSession::settings_fingerprint() const {
  // The defaults are shared per pool: their address stands for their content.
  return client_settings_.fingerprint() ^ reinterpret_cast<std::uintptr_t>(defaults_.get());
}

bool ClientSession::settings_match(const ServerConnection& server) const {
  return !server.settings_unknown && server.synced_fingerprint == settings_fingerprint() &&
         server.synced_version == server.settings.version();
}

// Makes the server's session settings equal to the client's before its transaction runs.
asio::awaitable<bool> ClientSession::sync_settings(ServerConnection& server,
                                                   ServerFailure& failure) {
  std::string sql;
  std::vector<std::string> reset;
  // A SET pgvalve could not follow (inside a transaction, among other statements) may have
  // left anything on this server: start from its defaults and apply every client setting.
  const bool from_defaults = server.settings_unknown;
  if (from_defaults) sql += "RESET ALL;";
  auto add_set = [&sql](std::string_view name, std::string_view value, bool raw) {
    sql += "SET ";
    append_quoted_ident(sql, name);
    sql += " TO ";
    if (raw) {
      sql += value;
    } else {
      append_quoted_literal(sql, value);
    }
    sql += ';';
  };
  // Reported settings the client never changed must equal the server defaults it was told.
  for (const auto& [name, value] : *defaults_) {
    if (!is_synced_reported(name) || client_settings_.find(lower(name))) continue;
    const Setting* have = server.settings.find(lower(name));
    if (from_defaults || !have || have->value != value) add_set(name, value, false);
  }
  for (const auto& s : client_settings_.all()) {
    const Setting* have = server.settings.find(s.name);
    if (!from_defaults && have && have->value == s.value && have->raw == s.raw) continue;
    add_set(s.name, s.value, s.raw);
  }
  for (const auto& s : server.settings.all()) {
    if (!from_defaults && !s.reported && !client_settings_.find(s.name)) {
      sql += "RESET ";
      append_quoted_ident(sql, s.name);
      sql += ';';
      reset.push_back(s.name);
    }
  }
  if (from_defaults) {
    server.settings.keep_reported_only();
    server.settings_unknown = false;
  }
  if (sql.empty()) {
    server.synced_fingerprint = settings_fingerprint();
    server.synced_version = server.settings.version();
    co_return true;
  }
  if (!co_await server.run_query(sql, failure)) {
    if (failure.message.rfind("pgvalve:", 0) != 0) {
      failure.message = "pgvalve: could not apply session settings: " + failure.message;
    }
    co_return false;
  }
  for (const auto& name : reset)
    server.settings.erase(name);
  for (const auto& s : client_settings_.all()) {
    if (!s.reported) server.settings.set(s.name, s.value, false, s.raw);
  }
  // PostgreSQL may report a normalised form ("ISO" -> "ISO, MDY"); the client learns it.
  std::string out;
  for (const auto& [name, value] : server.startup_parameters) {
    const std::string key = lower(name);
    if (!is_synced_reported(key)) continue;
    const Setting* have = server.settings.find(key);
    const Setting* mine = client_settings_.find(key);
    if (have && mine && client_settings_.set(key, have->value, true)) {
      pr::append_parameter_status(out, name, have->value);
    }
  }
  server.synced_fingerprint = settings_fingerprint();
  server.synced_version = server.settings.version();
  // At login the values reach the client in the ParameterStatus list after AuthenticationOk.
  if (logged_in_ && !out.empty() && !co_await write_all(client_, out)) client_gone_ = true;
  co_return true;
}

bool ClientSession::releasable() const {
  return mode_ != config::PoolMode::Session && server_ && in_flight_ == 0 && !open_extended_ &&
         server_->tx_status == 'I' && server_->in.empty() && !server_write_pending_;
}

void ClientSession::release_server() {
  cancel_->unlink();
  auto server = std::move(server_);
  server->in.shrink_if_empty();
  auto closed = pool_->checkin(std::move(server), pool::Clock::now());
  if (closed) PGV_LOG(Debug, "server_recycled", {"server", closed->id});
}

void ClientSession::start_server_loop() {
  server_loop_running_ = true;
  asio::co_spawn(client_.get_executor(), relay_server_to_client(),
                 [self = shared_from_this()](std::exception_ptr) {});
}

asio::awaitable<void> ClientSession::relay_server_to_client() {
  ServerConnection* server = server_.get();
  bool lost = false;
  for (;;) {
    error_code ec;
    std::size_t n = co_await server->socket.async_read_some(server->in.prepare(), await_ec(ec));
    if (ec || server_failed_) {
      lost = !stopping_;
      break;
    }
    server->in.commit(n);
    const std::string_view data = server->in.readable();
    std::size_t end = 0;
    bool invalid = false;
    if (track_) {
      tx_->server_spans.clear();
      tx_->server_scratch.clear();
    }
    bool saw_ready = false;
    while (end < data.size()) {
      auto r = pr::decode_frame(data.substr(end), server->max_message_bytes);
      if (r.status == pr::DecodeStatus::NeedMoreData) {
        // A large message: make room for all of it before the next read.
        if (r.needed > 0) server->in.prepare(r.needed);
        break;
      }
      if (r.status == pr::DecodeStatus::Invalid) {
        invalid = true;
        break;
      }
      const pr::Frame& f = r.frame;
      if (f.tag == 'Z') {
        saw_ready = true;
        server->tx_status = pr::read_ready_for_query(f).value_or('E');
        if (in_flight_ > 0) --in_flight_;
      } else if (f.tag == 'S') {
        if (auto ps = pr::read_parameter_status(f); ps && is_synced_reported(ps->name)) {
          server->settings.set(ps->name, ps->value, true);
          client_settings_.set(ps->name, ps->value, true);
        }
      }
      if (track_) plan_server_frame(f, end);
      end += f.whole.size();
    }
    if (invalid) {
      PGV_LOG(Warn, "server_protocol_error", {"server", server->id});
      lost = true;
      break;
    }
    if (track_) {
      emit_synthetic_heads();
      if (!tx_->notifications.empty() && saw_ready) {
        const std::size_t from = tx_->server_scratch.size();
        tx_->server_scratch += tx_->notifications;
        tx_->notifications.clear();
        tx_->server_spans.push_back({true, from, tx_->server_scratch.size() - from});
      }
    }
    if (end > 0 || (track_ && !tx_->server_spans.empty())) {
      // data may have moved if prepare() grew the buffer: take the view again.
      const std::string_view frames = server->in.readable().substr(0, end);
      if (track_) {
        tx_->write_buffers.clear();
        for (const auto& span : tx_->server_spans) {
          const char* base = span.scratch ? tx_->server_scratch.data() : frames.data();
          tx_->write_buffers.push_back(asio::buffer(base + span.offset, span.size));
        }
        co_await asio::async_write(client_, tx_->write_buffers, await_ec(ec));
      } else {
        co_await asio::async_write(client_, asio::buffer(frames.data(), frames.size()),
                                   await_ec(ec));
      }
      server->in.consume(end);
      if (ec) {
        client_gone_ = true;
        break;  // the client loop sees the closed socket and cleans up
      }
    }
    if (stopping_) break;
    if (releasable()) {
      release_server();
      if (app_.draining() && reading_client_) {
        error_code ignored;
        client_.cancel(ignored);
      }
      break;
    }
    if (app_.draining() && reading_client_ && mode_ == config::PoolMode::Session &&
        in_flight_ == 0 && server->tx_status == 'I') {
      error_code ignored;
      client_.cancel(ignored);
    }
  }
  if (lost) {
    server_failed_ = true;
    std::string out;
    server_lost(out);
    if (!out.empty() && !client_gone_) {
      error_code ec;
      co_await asio::async_write(client_, asio::buffer(out), await_ec(ec));
    }
  }
  server_loop_running_ = false;
  drop_failed_server();
  wake_timer_.cancel();
}

// The linked server died: every request still waiting gets an error, and a transaction the
// client had open is reported lost at its next request.
void ClientSession::server_lost(std::string& out) {
  PGV_LOG(Warn, "server_lost", {"client", id_},
          {"server", server_ ? server_->id : std::uint64_t{0}}, {"in_flight", in_flight_});
  const char* message =
      "pgvalve: the server connection was lost; the transaction was rolled back, run it again";
  const bool in_transaction = server_ && server_->tx_status != 'I';
  for (int i = 0; i < in_flight_; ++i) {
    append_error(out, "08006", message);
    pr::append_ready_for_query(out, 'I');
  }
  if (in_flight_ == 0 && in_transaction) lost_transaction_ = true;
  if (open_extended_ && in_flight_ == 0) {
    append_error(out, "08006", message);
    error_sent_in_flight_ = true;
    skip_until_sync_ = true;
  }
  in_flight_ = 0;
  open_extended_ = false;
  if (tx_) {
    tx_->pending.clear();
    tx_->notes.clear();
    tx_->drop_until_sync = false;
  }
}

void ClientSession::drop_failed_server() {
  if (!server_ || !server_failed_ || server_loop_running_ || server_write_pending_) return;
  cancel_->unlink();
  pool_->discard(std::move(server_));
}

void ClientSession::on_drain() {
  const bool idle = !server_ || (mode_ == config::PoolMode::Session && in_flight_ == 0 &&
                                 !open_extended_ && server_->tx_status == 'I');
  if (idle && reading_client_) {
    error_code ignored;
    client_.cancel(ignored);
  }
}

// The client left: stop the server loop, then give the server back clean or close it.
asio::awaitable<void> ClientSession::finish() {
  if (server_loop_running_) {
    stopping_ = true;
    error_code ignored;
    if (server_) server_->socket.cancel(ignored);
    client_.cancel(ignored);
    while (server_loop_running_) {
      wake_timer_.expires_at(asio::steady_timer::time_point::max());
      co_await wake_timer_.async_wait(await_ec(ignored));
    }
  }
  if (server_) {
    ServerConnection& server = *server_;
    bool clean = !server_failed_ && server.in.empty() && !open_extended_ && in_flight_ == 0;
    if (!clean && !server_failed_ && in_flight_ > 0) {
      // A query is still running for a client that is gone: stop it before closing.
      if (auto dest = app_.cancels().find(cancel_->process_id, cancel_->secret_key)) {
        asio::co_spawn(client_.get_executor(), send_cancel(*dest), asio::detached);
      }
    }
    if (clean) {
      Deadline deadline(server.socket, 5s);
      ServerFailure failure;
      if (server.tx_status != 'I') {
        clean = co_await server.run_query("ROLLBACK", failure);
        PGV_LOG(Info, "server_rolled_back", {"client", id_}, {"server", server.id});
      }
      if (clean && mode_ == config::PoolMode::Session) {
        clean = co_await server.run_query("DISCARD ALL", failure);
        server.settings.keep_reported_only();
        server.statements.clear();
      }
      clean = clean && !deadline.expired();
    }
    cancel_->unlink();
    if (clean) {
      release_server();
    } else {
      PGV_LOG(Info, "server_closed_dirty", {"client", id_}, {"server", server.id});
      pool_->discard(std::move(server_));
    }
  }
  if (tx_ && tx_->hub && tx_->sink) tx_->hub->forget(tx_->sink.get());
  PGV_LOG(Info, "client_logout", {"client", id_}, {"user", user_name_},
          {"database", database_name_});
}

}  // namespace pgvalve::proxy
