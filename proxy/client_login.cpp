// Client login: the startup packet (SSL/GSS refusal, CancelRequest forwarding), password
// authentication by the form of the user's configured password, and the session's start: its
// pool, its settings and the ParameterStatus list of a real server.
#include <algorithm>

#include "protocol/auth.h"
#include "protocol/messages.h"
#include "protocol/secure_random.h"
#include "protocol/startup.h"
#include "proxy/admin_console.h"
#include "proxy/app.h"
#include "proxy/arrival_wait.h"
#include "proxy/client_session.h"
#include "proxy/io_util.h"
#include "proxy/log.h"

namespace pgvalve::proxy {

namespace pr = protocol;

// ---- The session from login to logout ------------------------------------------------------

const std::string ClientSession::kNoName;

asio::awaitable<void> ClientSession::serve() {
  auto login = std::make_shared<ClientProfile>();
  login->config = app_.config();
  login->users = app_.users();
  profile_ = login;
  if (door_ != admission::Verdict::Admit) {
    co_await refuse_at_door();
    co_return;
  }
  {
    // The login's reads and writes then complete without a turn of the event loop (Stream);
    // the session's event handlers need it anyway.
    error_code ec;
    client_.socket().non_blocking(true, ec);
  }
  bool ok;
  StartupParameters startup;  // the login's only: a logged-in client does not keep them
  {
    const std::chrono::milliseconds auth_timeout(config().limits.auth_timeout_ms);
    login_until_ = std::chrono::steady_clock::now() + auth_timeout;
    Deadline auth_deadline(client_, auth_timeout);
    ok = co_await read_startup(*login, startup);
    if (ok) ok = co_await authenticate(*login, login_until_);
    if (!ok && auth_deadline.expired() && !fatal_sent_) {
      co_await send_fatal("08P01",
                          "pgvalve: authentication timed out; the client must complete login "
                          "within limits.auth_timeout_ms");
    }
  }
  if (!ok) co_return;
  if (database() == "pgvalve") {
    client_in_.shrink_if_empty();
    co_await serve_admin_console(app_, client_, client_in_, user(), id_);
    co_return;
  }
  co_await start_session(startup);
}

// Refused at accept (App::admit()). The client is told why in answer to its startup packet, as
// PostgreSQL does, so that libpq and drivers show the message; a cancel request is still
// forwarded, so queries can be cancelled while the door is full. Nothing more is spent on it:
// an SSLRequest gets 'N' (no TLS handshake: libpq with sslmode=prefer then reads the refusal in
// plaintext, with require it reports that the server offers no TLS), and the StartupMessage is
// read past, never parsed.
asio::awaitable<void> ClientSession::refuse_at_door() {
  app_.begin_refusal();
  struct EndRefusal {
    App& app;
    ~EndRefusal() { app.end_refusal(); }
  } end{app_};
  {
    Deadline deadline(client_,
                      std::chrono::milliseconds(std::min(config().limits.auth_timeout_ms, 2000)));
    // Until `need` bytes are buffered; false when the client is gone or the deadline passed.
    auto fill = [this](std::size_t need) -> asio::awaitable<bool> {
      while (client_in_.readable().size() < need) {
        auto space = client_in_.prepare();
        if (space.empty()) co_return false;
        error_code ec;
        const std::size_t n = co_await client_.async_read_some(
            asio::buffer(space.data(), space.size()), await_ec(ec));
        if (ec) co_return false;
        client_in_.commit(n);
      }
      co_return true;
    };
    // At most an SSLRequest and a GSSENCRequest before the packet that is answered.
    for (int asked = 0;; ++asked) {
      if (!co_await fill(8)) co_return;
      const char* head = client_in_.readable().data();
      const std::uint32_t length = pr::read_u32(head);
      const std::uint32_t code = pr::read_u32(head + 4);
      if (length == 8 && (code == pr::kSslRequestCode || code == pr::kGssEncRequestCode) &&
          asked < 2) {
        client_in_.consume(8);
        if (!co_await write_all(client_, "N")) co_return;
        continue;
      }
      if (length == 16 && code == pr::kCancelRequestCode) {
        if (!co_await fill(16)) co_return;
        auto r = pr::decode_startup(client_in_.readable());
        if (auto* cancel = std::get_if<pr::CancelRequest>(&r.packet);
            cancel && r.status == pr::DecodeStatus::Ok) {
          co_await forward_cancel(cancel->process_id, cancel->secret_key);
        }
        co_return;
      }
      // Read past (not parsed): closing with unread bytes would reset the connection, and the
      // client could lose the refusal.
      if (length >= 8 && length <= pr::kMaxStartupPacketBytes && !co_await fill(length)) {
        co_return;
      }
      break;
    }
  }
  const std::string from = from_.to_string();
  std::string message;
  switch (door_) {
    case admission::Verdict::TooManyClients:
      message = "pgvalve: too many client connections (pool.max_client_connections = " +
                std::to_string(config().pool.max_client_connections) +
                "); try again later, or raise the limit";
      break;
    case admission::Verdict::TooManyFromAddress:
      message = "pgvalve: too many connections from " + from + " (limits.connections_per_ip = " +
                std::to_string(config().limits.connections_per_ip) +
                "); close some, or raise the limit";
      break;
    case admission::Verdict::TooFastFromAddress:
      message = "pgvalve: connecting too fast from " + from + " (limits.connect_rate_per_ip = " +
                std::to_string(config().limits.connect_rate_per_ip) +
                " per second, limits.connect_burst_per_ip = " +
                std::to_string(config().limits.connect_burst_per_ip) +
                "); retry after a pause, or reuse connections";
      break;
    case admission::Verdict::Admit:
      co_return;
  }
  co_await send_fatal("53300", message);
}

// A wrong password or unknown user: 28P01, answered later and later as failures of the user
// from the same address pile up (admission::Admission::login_failed), the same way for both.
asio::awaitable<void> ClientSession::refuse_login(const std::string& message) {
  // Never past the login's deadline: the client got 28P01 and then 08P01 for its timeout.
  const auto delay = std::min<std::chrono::steady_clock::duration>(
      app_.login_failed(from_, user()), login_until_ - std::chrono::steady_clock::now());
  if (delay.count() > 0) {
    asio::steady_timer wait(client_.get_executor(), delay);
    error_code ignored;
    co_await wait.async_wait(await_ec(ignored));
  }
  co_await send_fatal("28P01", message);
}

asio::awaitable<void> ClientSession::send_fatal(std::string_view sqlstate,
                                                std::string_view message) {
  std::string out;
  pr::ErrorFields e;
  e.severity = "FATAL";
  e.sqlstate = sqlstate;
  e.message = message;
  pr::append_error_response(out, e);
  fatal_sent_ = true;
  co_await write_all(client_, out);
  PGV_LOG(Info, "client_refused", {"client", id_}, {"user", user()}, {"database", database()},
          {"sqlstate", sqlstate}, {"reason", message});
}

asio::awaitable<bool> ClientSession::read_startup(ClientProfile& login,
                                                  StartupParameters& startup_params) {
  // Each may be asked once, as PostgreSQL allows: a client looping on them gets an error.
  bool ssl_asked = false;
  bool gss_asked = false;
  for (;;) {
    auto r = pr::decode_startup(client_in_.readable());
    if (r.status == pr::DecodeStatus::NeedMoreData) {
      auto space = client_in_.prepare();
      if (space.empty()) {
        co_await refuse_for_memory();
        co_return false;
      }
      error_code ec;
      std::size_t n =
          co_await client_.async_read_some(asio::buffer(space.data(), space.size()), await_ec(ec));
      if (ec) co_return false;
      client_in_.commit(n);
      continue;
    }
    if (r.status == pr::DecodeStatus::Invalid) {
      co_await send_fatal("08P01", "pgvalve: invalid startup packet: " + r.error);
      co_return false;
    }
    client_in_.consume(r.consumed);
    const bool ssl = std::holds_alternative<pr::SslRequest>(r.packet);
    const bool gss = std::holds_alternative<pr::GssEncRequest>(r.packet);
    if ((ssl && ssl_asked) || (gss && gss_asked)) {
      co_await send_fatal("08P01", std::string("pgvalve: invalid startup packet: ") +
                                       (ssl ? "SSLRequest" : "GSSENCRequest") +
                                       " sent twice; send the StartupMessage after the answer");
      co_return false;
    }
    ssl_asked = ssl_asked || ssl;
    gss_asked = gss_asked || gss;
    if (std::holds_alternative<pr::GssEncRequest>(r.packet)) {
      if (!co_await write_all(client_, "N")) co_return false;  // GSSAPI is not offered
      ++auth_bytes_sent_;                                      // counted as the request was
      continue;
    }
    if (std::holds_alternative<pr::SslRequest>(r.packet)) {
      if (client_.tls()) {
        co_await send_fatal("08P01", "pgvalve: SSLRequest received inside TLS");
        co_return false;
      }
      auto tls = app_.tls();
      if (!tls) {
        if (!co_await write_all(client_, "N")) co_return false;  // not offered
        ++auth_bytes_sent_;
        continue;
      }
      if (!client_in_.empty()) {
        // Bytes sent before the answer would be read as if they had come through TLS
        // (CVE-2021-23214 in PostgreSQL): refused, in plaintext.
        co_await send_fatal("08P01",
                            "pgvalve: data received after SSLRequest before the TLS handshake; "
                            "the client must wait for the server's answer");
        co_return false;
      }
      if (!co_await write_all(client_, "S")) co_return false;
      ++auth_bytes_sent_;
      std::string error;
      if (!co_await client_.start_tls(std::move(tls), error)) {
        PGV_LOG(Info, "client_tls_failed", {"client", id_}, {"reason", error});
        co_return false;
      }
      PGV_LOG(Debug, "client_tls", {"client", id_}, {"version", client_.tls()->version()},
              {"cipher", client_.tls()->cipher()});
      continue;
    }
    if (auto* cancel = std::get_if<pr::CancelRequest>(&r.packet)) {
      // Allowed in plaintext whatever tls.mode says: libpq sends cancels without TLS.
      co_await forward_cancel(cancel->process_id, cancel->secret_key);
      co_return false;
    }
    if (auto tls = app_.tls(); tls && tls->mode() == config::TlsMode::Require && !client_.tls()) {
      co_await send_fatal("28000",
                          "pgvalve: TLS is required (tls.mode = require); connect with "
                          "sslmode=require (or verify-ca / verify-full)");
      co_return false;
    }
    auto& startup = std::get<pr::StartupMessage>(r.packet);
    if (const std::string negotiate = pr::negotiate_protocol(startup); !negotiate.empty()) {
      if (!co_await write_all(client_, negotiate)) co_return false;
      auth_bytes_sent_ += static_cast<std::uint32_t>(negotiate.size());
    }
    login.user_name = std::string(startup.get("user"));
    login.database_name = std::string(startup.get("database"));
    if (login.database_name.empty()) login.database_name = login.user_name;
    startup_params = std::move(startup.parameters);
    if (!client_in_.empty()) {
      co_await send_fatal("08P01", "pgvalve: unexpected data after the startup packet");
      co_return false;
    }
    client_in_.release();
    co_return true;
  }
}

asio::awaitable<void> ClientSession::forward_cancel(std::int32_t process_id,
                                                    std::int32_t secret_key) {
  // Counted against the connect rate; one refused is closed unanswered, as PostgreSQL answers
  // no cancel request.
  if (!app_.cancel_admitted(from_, door_)) {
    app_.count_cancel(App::CancelOutcome::TooFast);
    co_return;
  }
  auto dest = app_.cancels().find(process_id, secret_key);
  if (!dest) {
    // A stale key, or a guess: counted, as a flood of them shows only there.
    app_.count_cancel(App::CancelOutcome::UnknownKey);
    PGV_LOG(Debug, "cancel_ignored", {"pid", process_id});
    co_return;
  }
  app_.count_cancel(App::CancelOutcome::Matched);
  if (dest->carried_by) {
    dest->carried_by->cancel_request(dest->several);
    co_return;
  }
  // Until PostgreSQL has taken the cancel (it closes the connection once it has), the server
  // stays with the client it was meant for; released before, it would wait (give_back).
  struct Done {
    CancelRegistry& registry;
    std::uint64_t key;
    ~Done() { registry.cancel_done(key); }
  } done{app_.cancels(), dest->server_key};
  co_await send_cancel(*dest);
}

asio::awaitable<bool> ClientSession::send_auth(const std::string& message) {
  auth_bytes_sent_ += static_cast<std::uint32_t>(message.size());
  co_return co_await write_all(client_, message);
}

asio::awaitable<bool> ClientSession::read_password_frame(pr::Frame& frame) {
  auto st = co_await read_frame(client_, client_in_, pr::kMaxStartupPacketBytes, frame);
  if (st == ReadStatus::Invalid || (st == ReadStatus::Ok && frame.tag != 'p')) {
    co_await send_fatal("08P01", "pgvalve: expected a password message during authentication");
    co_return false;
  }
  if (st == ReadStatus::NoMemory) co_await refuse_for_memory();
  co_return st == ReadStatus::Ok;
}

// A login's messages are small (at most 10,000 bytes) and may use the budget's reserve, so this
// happens only while many clients are in the middle of messages at once; the client is told why
// rather than dropped without a word.
asio::awaitable<void> ClientSession::refuse_for_memory() {
  co_await send_fatal("53400",
                      "pgvalve: too much memory is held for messages still being received "
                      "(limits.message_memory_bytes); retry the connection later, or raise "
                      "limits.message_memory_bytes");
}

ClientSession::LoginTurn::~LoginTurn() {
  if (taken) app.login_ended(from, user, turn);
}

asio::awaitable<bool> ClientSession::take_login_turn(LoginTurn& turn) {
  turn.turn = app_.login_begins(turn.from, turn.user);
  turn.taken = true;
  // Asked again until the turn comes (a failing login's late answer, or its user's success),
  // or until the login's time is up.
  constexpr auto kAgain = std::chrono::milliseconds(50);
  asio::steady_timer wait(client_.get_executor());
  while (!turn.turn.go) {
    if (std::chrono::steady_clock::now() + kAgain >= turn.until) {
      co_await send_fatal("53300", "pgvalve: logins as user \"" + user() + "\" from " +
                                       from_.to_string() +
                                       " failed recently and are checked one at a time; none "
                                       "came free within limits.auth_timeout_ms; try again "
                                       "later");
      co_return false;
    }
    wait.expires_after(kAgain);
    error_code ignored;
    co_await wait.async_wait(await_ec(ignored));
    turn.turn = app_.login_begins(turn.from, turn.user);
  }
  co_return true;
}

asio::awaitable<bool> ClientSession::authenticate(ClientProfile& login,
                                                  std::chrono::steady_clock::time_point until) {
  LoginTurn turn{app_, from_, login.user_name, until};
  const UserAuth* auth = login.users->find(login.user_name);
  if (!auth) {
    // The same exchange as most known users', failing at the proof with the same message.
    const UserAuth unknown = login.users->unknown(login.user_name);
    if (unknown.method == AuthMethod::Md5) {
      co_await authenticate_md5(unknown, turn);
    } else {
      co_await authenticate_scram(unknown, turn);
    }
    co_return false;
  }
  login.user = auth->user;
  bool ok = auth->method == AuthMethod::Md5 ? co_await authenticate_md5(*auth, turn)
                                            : co_await authenticate_scram(*auth, turn);
  if (!ok) co_return false;
  app_.login_succeeded(from_, login.user_name);
  if (login.database_name == "pgvalve" && !login.user->admin) {
    co_await send_fatal("28000", "pgvalve: user \"" + user() +
                                     "\" may not use the admin console; set admin: true for "
                                     "this user in the config");
    co_return false;
  }
  co_return true;
}

asio::awaitable<bool> ClientSession::authenticate_scram(const UserAuth& auth, LoginTurn& turn) {
  const std::string failed = "pgvalve: password authentication failed for user \"" + user() + "\"";
  std::string out;
  const std::string_view mechanisms[] = {pr::kScramSha256};
  pr::append_authentication_sasl(out, mechanisms);
  if (!co_await send_auth(out)) co_return false;

  pr::Frame f;
  if (!co_await read_password_frame(f)) co_return false;
  auto initial = pr::read_sasl_initial_response(f);
  if (!initial) {  // a broken client, not a mechanism it chose: PostgreSQL's 08P01 too
    client_in_.consume(f.whole.size());
    co_await send_fatal("08P01",
                        "pgvalve: malformed SASLInitialResponse message (expected a mechanism "
                        "name, then the length of the data and the data)");
    co_return false;
  }
  if (initial->mechanism != pr::kScramSha256) {
    client_in_.consume(f.whole.size());
    co_await send_fatal("28000", "pgvalve: unsupported SASL mechanism; use SCRAM-SHA-256");
    co_return false;
  }
  if (!auth.verifier) {
    co_await refuse_login(failed);
    co_return false;
  }
  pr::ScramServer scram(*auth.verifier, pr::random_bytes(18));
  std::string error;
  auto server_first = scram.handle_client_first(initial->data, error);
  client_in_.consume(f.whole.size());
  if (!server_first) {
    co_await send_fatal("08P01", "pgvalve: malformed SCRAM message: " + error);
    co_return false;
  }
  out.clear();
  pr::append_authentication_sasl_continue(out, *server_first);
  if (!co_await send_auth(out)) co_return false;

  if (!co_await read_password_frame(f)) co_return false;
  if (!co_await take_login_turn(turn)) co_return false;
  auto server_final = scram.handle_client_final(pr::read_sasl_response(f), error);
  client_in_.consume(f.whole.size());
  if (!server_final) {
    co_await refuse_login(failed);
    co_return false;
  }
  out.clear();
  pr::append_authentication_sasl_final(out, *server_final);
  co_return co_await send_auth(out);
}

asio::awaitable<bool> ClientSession::authenticate_md5(const UserAuth& auth, LoginTurn& turn) {
  const std::string salt = pr::random_bytes(4);
  std::string out;
  pr::append_authentication_md5(out, salt);
  if (!co_await send_auth(out)) co_return false;
  pr::Frame f;
  if (!co_await read_password_frame(f)) co_return false;
  if (!co_await take_login_turn(turn)) co_return false;
  auto password = pr::read_password(f);
  const bool ok =
      password && pr::equal_secret(*password, pr::md5_salted_response(auth.md5_hash, salt));
  client_in_.consume(f.whole.size());
  if (!ok) {
    co_await refuse_login("pgvalve: password authentication failed for user \"" + user() + "\"");
  }
  co_return ok;
}

asio::awaitable<bool> ClientSession::start_session(const StartupParameters& startup_params) {
  for (const auto& [name, value] : startup_params) {
    if (name == "replication" && !pr::replication_off(value)) {
      co_await send_fatal("0A000",
                          "pgvalve: replication connections are not supported; connect to "
                          "PostgreSQL directly for replication");
      co_return false;
    }
  }
  const config::Database* db = config().find_database(database());
  if (!db) {
    std::string names;
    for (const auto& db : config().databases)
      names += (names.empty() ? "" : ", ") + db.name;
    co_await send_fatal("3D000", "pgvalve: database \"" + database() +
                                     "\" is not configured; use one of: " + names);
    co_return false;
  }
  if (app_.disabled(database())) {
    co_await send_fatal("55000", "pgvalve: database \"" + database() +
                                     "\" is disabled by an administrator (DISABLE); connect "
                                     "again once it is enabled (ENABLE " +
                                     database() + ")");
    co_return false;
  }
  // The worker's own flag may be set first (SHUTDOWN drains each worker before it answers).
  if (app_.draining() || worker_->draining) {
    co_await send_fatal("57P01", "pgvalve: shutting down; connect again shortly");
    co_return false;
  }
  // A reload since this login began may have changed the database in a way a session cannot
  // follow; from here to the session's start nothing waits, so a later reload reaches the
  // session itself.
  if (const auto now = app_.config(); now != profile_->config) {
    switch (config::reload_change(*db, user(), *now)) {
      case config::ReloadChange::None:
        break;
      case config::ReloadChange::ShardMap:
        co_await send_fatal("57P01",
                            "pgvalve: a reload changed this database's shards while you logged "
                            "in; connect again");
        co_return false;
      case config::ReloadChange::Dbname:
        co_await send_fatal("57P01",
                            "pgvalve: a reload changed the database on the servers (dbname) that "
                            "this database leads to while you logged in; connect again");
        co_return false;
      case config::ReloadChange::DatabaseRemoved:
        co_await send_fatal("3D000", "pgvalve: a reload removed database \"" + database() +
                                         "\" from the configuration while you logged in");
        co_return false;
      case config::ReloadChange::UserRemoved:
        co_await send_fatal("28000", "pgvalve: a reload removed user \"" + user() +
                                         "\" from the configuration while you logged in");
        co_return false;
    }
  }
  profile_ = app_.shared_profile(*profile_, *db);
  app_.add_client();
  counted_ = true;
  pools_ = app_.user_pools(*db, user());
  reads_ = config().routing.reads;
  load_balance_ = config().routing.load_balance;
  pool_ = login_pool();
  pool_->client_joined();
  app_.cancels().add(*this, cancel_, *worker_);
  {
    const auto& r = config().routing;
    bool replicas = false;
    for (const auto& shard : db->shards)
      replicas = replicas || !shard.replicas.empty();
    routing::RoutingPolicy policy;
    policy.split = r.read_write_split && r.reads != config::ReadsTo::Primary && replicas;
    policy.write_functions = &r.write_functions;
    policy.write_functions_id = profile_->write_functions_id;
    if (const auto& sharding = profile_->sharding) {
      policy.sharding = &sharding->policy;
      policy.sharding_id = sharding->id;
    }
    router_ = routing::Router(static_cast<int>(db->shards.size()), policy, &worker_->decisions);
  }
  recorder_ = {&worker_->query_stats, {&profile_->database_name, &profile_->user_name}};
  database_counters_ = &worker_->database_counters.of(database());
  // The bytes of the login: what the client sent (startup, password or SASL messages, and
  // anything it pipelined after them) and the authentication requests it was sent.
  worker_->counters.add_received(client_in_.committed_total());
  database_counters_->bytes_received.fetch_add(client_in_.committed_total(),
                                               std::memory_order_relaxed);
  worker_->counters.add_sent(auth_bytes_sent_);
  database_counters_->bytes_sent.fetch_add(auth_bytes_sent_, std::memory_order_relaxed);
  core_.emplace(*profile_->options, router_, worker_->workspaces, &recorder_);

  // The client is told the parameters of a real server, so one must have been seen; session
  // mode keeps its server from the start.
  std::unique_ptr<ServerConnection> server;
  if (config().pool.mode == config::PoolMode::Session || !pool_->has_server_parameters()) {
    // Nothing reads the client meanwhile: one that hangs up leaves the queue (and its client
    // slot) at once, as a waiting request does, instead of being served a server later.
    watch_for_hang_up();
    ServerFailure failure;
    server = co_await acquire(pool_, checkout_from(pool_), failure);
    if (!server && !closed_ && failure.host_unavailable()) {
      server = co_await hold_login(failure);
    }
    if (closed_) {  // shutdown closed the session meanwhile, or the client hung up
      if (server) give_back(std::move(server), true, *pool_);
      co_return false;
    }
    if (!server &&
        (config().pool.mode == config::PoolMode::Session || !pool_->has_server_parameters())) {
      co_await send_fatal(failure.sqlstate, failure.message);
      co_return false;
    }
  }
  session::ServerState* state = nullptr;
  if (server) {
    links_.resize(1);
    links_[0].conn = std::move(server);
    links_[0].pool = pool_;
    ++links_[0].generation;
    state = &links_[0].conn->state;
    state->replica = lent_by_replica(*pool_, 0);
    cancel_.link(links_[0].conn->host_index, links_[0].conn->key.process_id,
                 links_[0].conn->key.secret_key);
  }
  PGV_LOG(Info, "client_login", {"client", id_}, {"user", user()}, {"database", database()},
          {"mode", config::to_string(config().pool.mode)});
  const auto& actions =
      core_->start(startup_params, pool_->server_parameters(),
                   {cancel_.process_id, cancel_.secret_key}, state, session::Clock::now());
  carry_out(actions, Source::Client);
  if (!closed_ && !links_.empty() && links_[0].conn) watch_server(0);
  co_return true;
}

std::shared_ptr<pool::ServerPool> ClientSession::login_pool() {
  // The primary as the health checks see it (after a failover, not the configured one); a
  // replica while there is none, so clients can still log in and read. Session mode keeps its
  // login server for writes: never a replica.
  auto pool = pool_for(routing::Route::primary(0));
  if (!pool && config().pool.mode != config::PoolMode::Session) {
    pool = pool_for(routing::Route::replica(0));
  }
  if (!pool) {
    pool = app_.pool_for(*profile_->database, user(), profile_->database->shards.front().primary);
  }
  return pool;
}

asio::awaitable<std::unique_ptr<ServerConnection>> ClientSession::hold_login(
    ServerFailure& failure) {
  // The login's server is down, starting up or shutting down (a restart, a failover): the login
  // waits for it or for another primary as a write does (failover.hold_writes_ms), instead of
  // failing a client that a moment later would have been served.
  const auto until = now() + std::chrono::milliseconds(config().failover.hold_writes_ms);
  if (now() >= until) co_return nullptr;
  PGV_LOG(Info, "login_held", {"client", id_}, {"database", database()},
          {"host", pool_->key().host.to_string()}, {"sqlstate", failure.sqlstate},
          {"hold_writes_ms", config().failover.hold_writes_ms});
  app_.report_unreachable(pool_->key().host);
  asio::steady_timer timer(client_.get_executor());
  auto tried_at = now();
  while (!closed_ && now() < until) {
    timer.expires_after(std::chrono::milliseconds(20));
    error_code ec;
    co_await timer.async_wait(await_ec(ec));
    if (closed_) break;
    auto next = login_pool();
    const bool moved = next != pool_;
    if (moved) {
      pool_->client_left();
      pool_ = std::move(next);
      pool_->client_joined();
    }
    // A pool whose parameters are known serves a transaction-mode login without a server.
    if (config().pool.mode != config::PoolMode::Session && pool_->has_server_parameters()) {
      co_return nullptr;
    }
    // The same host is tried again twice a second: each try may log a failed connect.
    if (!moved && now() - tried_at < std::chrono::milliseconds(500)) continue;
    tried_at = now();
    ServerFailure again;
    auto server = co_await acquire(pool_, checkout_from(pool_), again);
    if (server || closed_ || !again.host_unavailable()) {
      failure = std::move(again);
      co_return server;
    }
    failure = std::move(again);
    app_.report_unreachable(pool_->key().host);
  }
  co_return nullptr;
}

}  // namespace pgvalve::proxy
