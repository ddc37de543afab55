#include "proxy/client_session.h"

#include <algorithm>
#include <array>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>

#include "protocol/messages.h"
#include "proxy/app.h"
#include "proxy/io_util.h"
#include "proxy/log.h"
#include "routing/sql_text.h"
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

}  // namespace

bool is_synced_setting(std::string_view name) {
  return std::any_of(kSyncedReported.begin(), kSyncedReported.end(), [&](std::string_view s) {
    return s.size() == name.size() &&
           std::equal(s.begin(), s.end(), name.begin(), [](char a, char b) {
             return a == std::tolower(static_cast<unsigned char>(b));
           });
  });
}

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

// ---- Relay: the client loop and the server loop -----------------------------------------

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
    // The settings read above decide: no second trip through the pool's lock per checkout.
    if (settings.pre_ping && pool::Clock::now() - server->last_used_at >=
                                 std::chrono::seconds(settings.pre_ping_idle_s)) {
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
    routing::append_identifier(sql, name);
    sql += " TO ";
    if (raw) {
      sql += value;
    } else {
      routing::append_literal(sql, value);
    }
    sql += ';';
  };
  // Reported settings the client never changed must equal the server defaults it was told.
  for (const auto& [name, value] : *defaults_) {
    if (!is_synced_setting(name) || client_settings_.find(lower(name))) continue;
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
      routing::append_identifier(sql, s.name);
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
    if (!is_synced_setting(key)) continue;
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
        if (auto ps = pr::read_parameter_status(f); ps && is_synced_setting(ps->name)) {
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
