// One client connection: the I/O that carries out what its session core decides.
//
// Login (client_login.cpp) is a coroutine read top to bottom: startup packet, authentication,
// the first server when one is needed, then session::Session::start(). After login the session
// is driven by events on the client's worker thread, one small handler each (client_session.cpp):
//
//   client readable ─► read what is there ─► core.on_client_data() ─► carry_out(actions)
//   server readable ─► read what is there ─► core.on_server_data()  ─► carry_out(actions)
//   checkout done, timer, notification, hub answer ─► core.on_...()  ─► carry_out(actions)
//
// carry_out() writes (at once when the kernel takes the bytes, which is the usual case), then
// drops the consumed input, then does what the actions ask: check out a server, give one back,
// ask the listen hub, close. Every decision — what to forward, rewrite, answer or refuse, when a
// server is needed and when it goes back — is the core's; nothing here looks inside a message.
//
// Between transactions a client holds no buffer, no workspace and no coroutine frame: only this
// object and one wait for its socket to become readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include "admission/admission.h"
#include "config/config.h"
#include "pool/server_pool.h"
#include "proxy/cancel_registry.h"
#include "proxy/checkout_deadlines.h"
#include "proxy/client_profile.h"
#include "proxy/io_util.h"
#include "proxy/server_connection.h"
#include "proxy/socket_writer.h"
#include "proxy/stream.h"
#include "proxy/users.h"
#include "routing/router.h"
#include "session/input_buffer.h"
#include "session/session.h"
#include "session/sharding_policy.h"
#include "stats/worker_counters.h"

namespace pgvalve::proxy {

class App;
struct UserPools;
struct Worker;
class ListenHub;
class NotificationSink;

class ClientSession : public std::enable_shared_from_this<ClientSession> {
 public:
  // `verdict` is the door's (App::admit()) for this socket: an admitted one is counted until
  // this session ends; a refused one is told why after its startup packet.
  ClientSession(App& app, Worker& worker, Socket socket, std::uint64_t id,
                const admission::Address& from, admission::Verdict verdict);
  ~ClientSession();

  // Login, then hands the connection over to the event handlers. The caller keeps the session
  // alive until this completes; the handlers keep it alive afterwards.
  asio::awaitable<void> serve();
  // Shutdown began: leave at the next transaction boundary (now, if between transactions).
  void on_drain();
  // A reload (`next`) changed where keys live in the client's database, or its dbname, or
  // removed the database or the user (config::reload_change): unless what the client logged in
  // with is so again, it leaves at its next transaction boundary
  // (session::Session::on_reload_change).
  void on_reload_change(const config::ConfigPtr& next);
  // KILL / KILL_CLIENT from the admin console: the client is disconnected now with `message`.
  void on_kill(std::string_view message);
  // A switchover or failover retired `host`, the former primary, which may still run: the
  // client's server connections there are cut now, as if the server had gone, so that nothing
  // more of its (a session-mode client's, a pinned one's, a transaction's) is written there.
  void on_host_retired(const config::Endpoint& host);
  // An application client past its login (not an admin console, not logging in).
  bool serves_clients() const { return core_.has_value(); }
  // A CancelRequest the session carries out itself (on its thread; callable from any): a
  // request still waiting for a server fails with 57014 without running; for a statement
  // running on several shards (`several`) each linked server gets one.
  void cancel_request(bool several);
  // The loops have stopped: drops what is still to be written, whose callbacks hold the session,
  // so that the session is destroyed with its loop's handlers.
  void on_stopped();

  // The worker's sessions, for shutdown and SHOW CLIENTS: an intrusive list, so a session costs
  // no allocation of its own there.
  ClientSession* next_on_worker = nullptr;
  ClientSession* prev_on_worker = nullptr;

  // One row for SHOW CLIENTS (type 'C') and one per linked server for SHOW SERVERS ('S');
  // on the session's worker thread.
  struct ConnectionRow {
    char type = 'C';
    std::uint64_t id = 0;
    std::string user;
    std::string database;
    std::string state;
    std::string addr;
    int port = 0;
    std::chrono::system_clock::time_point connect_time{};
    std::chrono::system_clock::time_point request_time{};  // last client bytes / last use
    std::string shard;
    std::string host;        // the server (C: the one linked now, if any)
    std::uint64_t peer = 0;  // C: its linked server's id; S: the client it serves (0: idle)
    std::string tls;         // "TLSv1.3/TLS_AES_256_GCM_SHA384"; empty: plaintext
  };
  void describe(std::vector<ConnectionRow>& rows);

  // For SHOW CLIENTS.
  std::uint64_t id() const { return id_; }
  const std::string& user() const { return profile_ ? profile_->user_name : kNoName; }
  const std::string& database() const { return profile_ ? profile_->database_name : kNoName; }

  // (Public for the worker, which keeps spare Checkouts.)
  // In a pool's queue while waiting for a server, and in the worker's list of checkout
  // deadlines meanwhile.
  class CheckoutWaiter final : public pool::Waiter, public CheckoutDeadlines::Entry {
   public:
    void grant(std::unique_ptr<pool::Connection> conn) override;
    void pool_retired() override;
    void on_checkout_deadline() override;
    void on_long_wait() override;

   private:
    friend class ClientSession;
    ClientSession* session_ = nullptr;
  };
  // A server (or a permit to open one: null) granted to a waiting client while another of the
  // worker's clients carries out a step; the worker keeps it until that step ends (Step).
  struct Grant {
    std::shared_ptr<ClientSession> session;
    std::unique_ptr<pool::Connection> conn;
  };
  // A checkout under way: from which pool, until when, and the place in the pool's queue. A
  // client has one only while it asks for servers; between transactions it goes back to the
  // worker's spares (Worker::spare_checkouts), so an idle client holds none.
  struct Checkout {
    std::shared_ptr<pool::ServerPool> pool;
    session::Clock::time_point deadline{};
    // When the request waiting for a server asked for one (pool_checkout_wait_seconds); zero
    // when none waits.
    session::Clock::time_point started{};
    // Writes wait for a primary until then (failover.hold_writes_ms); max(): not holding.
    session::Clock::time_point hold_until = session::Clock::time_point::max();
    // The event handlers wait for a grant (on_granted() -> take()); the worker's
    // CheckoutDeadlines times the wait.
    bool waiting = false;
    std::shared_ptr<ClientSession> waiting_self;  // holds the session while `waiting`
    // The pool in whose queue `waiter` is (or whose grant has not been taken yet); null
    // otherwise. close() and the destructor cancel the wait there.
    std::shared_ptr<pool::ServerPool> wait_pool;
    // acquire() (login's checkout, and check_out_slowly()) waits as a coroutine; a grant wakes
    // it through this timer.
    bool granted = false;
    std::unique_ptr<pool::Connection> grant;
    asio::steady_timer* wait_timer = nullptr;
    // A CancelRequest came for the request while it waited for a server: whichever wait holds
    // it (acquire(), check_out_slowly(), hold_for_primary(), wait_while_paused()) fails it with
    // 57014.
    bool cancelled = false;
    // A reload removed the host of the pool acquire() waited in: it routes the request again.
    bool pool_retired = false;
    CheckoutWaiter waiter;
    // Nothing refers to it any more: it may serve another client.
    bool done() const {
      return !waiting && !waiting_self && !wait_pool && !granted && !grant && !wait_timer &&
             !waiter.queued() && hold_until == session::Clock::time_point::max();
    }
  };

 private:
  class Sink;

  // ---- Login (client_login.cpp) ----
  asio::awaitable<void> refuse_at_door();
  using StartupParameters = std::vector<std::pair<std::string, std::string>>;
  // Both fill in `login`, the profile_ of the login.
  asio::awaitable<bool> read_startup(ClientProfile& login, StartupParameters& startup_params);
  // `until`: limits.auth_timeout_ms from the connection's start.
  asio::awaitable<bool> authenticate(ClientProfile& login,
                                     std::chrono::steady_clock::time_point until);
  // A user failing from this address is checked one login at a time
  // (admission::Admission::login_begins): from the moment a login's proof has arrived to its
  // answer, so that a client sending nothing holds no turn. Given back when it goes.
  struct LoginTurn {
    App& app;
    const admission::Address& from;
    const std::string& user;
    std::chrono::steady_clock::time_point until;  // the login's deadline
    admission::Admission::LoginTurn turn{};
    bool taken = false;
    ~LoginTurn();
  };
  // False (the client was answered 53300) when no turn came before the login's deadline.
  asio::awaitable<bool> take_login_turn(LoginTurn& turn);
  asio::awaitable<bool> authenticate_scram(const UserAuth& auth, LoginTurn& turn);
  asio::awaitable<bool> authenticate_md5(const UserAuth& auth, LoginTurn& turn);
  asio::awaitable<bool> read_password_frame(protocol::Frame& frame);
  // An authentication request to the client; its bytes count once the login succeeds.
  asio::awaitable<bool> send_auth(const std::string& message);
  asio::awaitable<bool> start_session(const StartupParameters& startup_params);
  const config::Config& config() const { return *profile_->config; }
  static const std::string kNoName;  // user() and database() before the startup packet
  // The pool a login takes its first server from (and a session-mode client keeps).
  std::shared_ptr<pool::ServerPool> login_pool();
  // The login's server cannot be reached or refuses logins (57P03): waits up to
  // failover.hold_writes_ms for it or for another primary. Null, with `failure` the last try's,
  // when none came, or when pool_ (moved to a new primary) no longer needs a server for a
  // transaction-mode login.
  asio::awaitable<std::unique_ptr<ServerConnection>> hold_login(ServerFailure& failure);
  asio::awaitable<void> forward_cancel(std::int32_t process_id, std::int32_t secret_key);
  asio::awaitable<void> send_fatal(std::string_view sqlstate, std::string_view message);
  asio::awaitable<void> refuse_login(const std::string& message);
  // The login's buffer may not grow (limits.message_memory_bytes): FATAL 53400.
  asio::awaitable<void> refuse_for_memory();

  // ---- Events (client_session.cpp) ----
  // The time of the event being carried out (Worker::clock).
  session::Clock::time_point now() const;
  // One step of the worker's client sessions: an event carried out at one time (EventClock).
  // Grants made during it are carried out as the outermost step ends, not inside the check-in
  // that made them, and without a turn of the worker's loop each.
  class Step {
   public:
    explicit Step(Worker& worker);
    ~Step();
    Step(const Step&) = delete;
    Step& operator=(const Step&) = delete;

   private:
    Worker& worker_;
  };
  enum class Source : std::uint8_t { Client, Server, Event };
  void carry_out(const session::Actions& actions, Source source, session::LinkId link = 0);
  // Plaintext to the client, through TLS when it is on.
  SocketWriter::Result write_client(std::span<const session::Chunk> chunks, std::string_view tail);
  static SocketWriter::Result write_to(Stream& stream, SocketWriter& writer,
                                       std::span<const session::Chunk> chunks,
                                       std::string_view tail);
  void on_drained();
  std::function<void()> drained_callback();
  bool writers_busy() const;
  void watch_client();
  // A client waiting for a server (or for the shards of a read) is not read, but its end is
  // watched: one that hangs up leaves the queue, and its request is dropped instead of running
  // later for nobody; the shards' servers are cancelled.
  void watch_for_hang_up();
  void watch_tls_hang_up(bool bytes_came);
  bool watches_for_hang_up() const;
  bool in_pool_queue() const;
  // A request in a pool's queue this long is looked at for a reset that came with it; most
  // waits end before (a client that reset keeps its place in the queue this long at most).
  static constexpr std::chrono::milliseconds kHangUpLookAfter{50};
  bool hung_up_while_waiting();
  void look_for_hang_up();
  void arm_client_arrival();
  void read_client();
  void post_read_client();
  void feed_client();
  void watch_server(session::LinkId id);
  void arm_server_arrival(session::LinkId id);
  void read_server(session::LinkId id);
  void pause_server(session::LinkId id);
  void post_read_server(session::LinkId id);
  void arm_timer();
  // ---- Moving to another worker (worker_balance.h) ----
  // Between transactions with nothing of this worker's held or awaited.
  bool movable() const;
  // The worker was asked to give clients away: the wait for the client's socket is cancelled,
  // and when its handler (or, without one, a posted step) runs, finish_move() carries the
  // session over — at the top of the stack, so nothing on this thread touches it afterwards.
  void start_move();
  void finish_move();
  // On the new worker's thread: its lists, caches and statistics; then the client is read.
  void arrive();
  void client_gone();
  void close();

  // ---- Servers ----
  // The checkout under way, taken from the worker's spares when there is none.
  Checkout& checkout() { return checkout_ ? *checkout_ : start_checkout(); }
  Checkout& start_checkout();
  // Between transactions: a checkout nothing refers to any more goes back to the spares.
  void end_checkout();
  // The pool of the host `route` goes to now; null when the shard has no usable primary.
  std::shared_ptr<pool::ServerPool> pool_for(const routing::Route& route);
  // Whether `pool` is not the primary of its shard now (`shard`: where to look first): a
  // statement run on its server counts as run on a replica.
  bool lent_by_replica(const pool::ServerPool& pool, std::size_t shard) const;
  void check_out(const routing::Route& route);
  // Checks out from checkout_pool_ (set), with the deadline of pool.checkout_timeout_ms.
  void check_out_from_pool();
  // The shard has no usable primary (down, failing over, a switchover pausing writes): the
  // request waits up to failover.hold_writes_ms for one, then gets 57P03.
  // `failed`: the primary that could not be reached just now; it is tried again every 500 ms
  // until the health checks move writes elsewhere.
  void hold(const routing::Route& route, std::shared_ptr<pool::ServerPool> failed = nullptr);
  asio::awaitable<void> hold_for_primary(routing::Route route,
                                         std::shared_ptr<pool::ServerPool> failed);
  // The client's database is paused (PAUSE): the checkout waits for RESUME, at most
  // pool.checkout_timeout_ms, then the request gets 53300.
  asio::awaitable<void> wait_while_paused(routing::Route route);
  // `pool`'s host could not be reached (a connection died, or opening one failed): a replica
  // takes no reads until the health checker finds it healthy again.
  void distrust(const pool::ServerPool& pool);
  // Opening a server for a read failed on a replica: another host takes the read.
  bool retry_on_another_host(pool::ServerPool& failed);
  // A session-mode client's read meant for a replica, when `pool` (the one pool_for chose) is
  // none or its own server's: the core runs it on that server. True when so.
  bool runs_on_own_server(const std::shared_ptr<pool::ServerPool>& pool);
  // A server was linked, or the request waiting for one failed: how long it waited is counted.
  void end_checkout_wait();
  // Reads the client's own server (link 0) again after a read on a replica: what it sent
  // meanwhile was held.
  void resume_own_server(std::uint32_t generation);
  // pool->checkout(); a Wait is recorded in wait_pool_.
  pool::CheckoutResult checkout_from(const std::shared_ptr<pool::ServerPool>& pool);
  // Gives back whatever `result` holds: an idle connection, a permit to open one, or the place
  // in the queue of wait_pool_ (a grant already on its way is given back by on_granted()).
  void give_up(pool::ServerPool& pool, pool::CheckoutResult result);
  void take(pool::CheckoutResult result);
  void checkout_timed_out();
  void cancel_waiting_request();
  // The request fails with 57014 without having run (the client cancelled it while it waited).
  void fail_cancelled_request();
  // The pool the request waited in was retired (CheckoutWaiter::pool_retired).
  void route_waiting_request_again();
  asio::awaitable<void> check_out_slowly(std::shared_ptr<pool::ServerPool> pool,
                                         pool::CheckoutResult first);
  // Waits, opens or validates until a server is ready on this worker; null with `failure` set
  // when none is within pool.checkout_timeout_ms.
  asio::awaitable<std::unique_ptr<ServerConnection>> acquire(std::shared_ptr<pool::ServerPool> pool,
                                                             pool::CheckoutResult result,
                                                             ServerFailure& failure);
  // An idle connection from the pool that is still usable, ready on this worker; else null.
  std::unique_ptr<ServerConnection> usable(std::unique_ptr<pool::Connection> conn,
                                           pool::ServerPool& pool);
  asio::awaitable<std::unique_ptr<ServerConnection>> open_server(
      pool::ServerPool& pool, session::Clock::time_point deadline, ServerFailure& failure);
  void on_granted(std::unique_ptr<pool::Connection> conn);
  void link(std::unique_ptr<ServerConnection> server,
            const std::shared_ptr<pool::ServerPool>& pool);
  void carry_out_link_op(const session::LinkOp& op);
  void hand_over(const std::vector<session::PreparedPart>& parts);
  asio::awaitable<void> clean_and_release(std::unique_ptr<ServerConnection> server,
                                          std::shared_ptr<pool::ServerPool> pool, std::string sql1,
                                          std::string sql2);
  void give_back(std::unique_ptr<ServerConnection> server, bool clean, pool::ServerPool& pool);
  void hub_request(const session::HubRequest& request);
  void deliver_notification(std::string_view message);
  void hub_lost();

  App& app_;
  Worker* worker_;  // changes only when the session moves (finish_move)
  Stream client_;
  const std::uint64_t id_;
  const admission::Address from_;
  const admission::Verdict door_;
  std::uint32_t auth_bytes_sent_ = 0;  // during login, for the byte statistics
  // The end of the login (limits.auth_timeout_ms): a failed login's delay ends there, and a
  // login refused with a FATAL gets no second one for its timeout.
  std::chrono::steady_clock::time_point login_until_ = std::chrono::steady_clock::time_point::max();
  bool fatal_sent_ = false;
  // The login's own while it runs (serve()); from the session's start the one it shares with
  // the clients that logged in the same way. Outlives core_, which refers into it.
  std::shared_ptr<const ClientProfile> profile_;
  std::chrono::system_clock::time_point connected_at_ = std::chrono::system_clock::now();
  session::Clock::time_point last_request_{};             // last bytes read from the client
  stats::DatabaseCounters* database_counters_ = nullptr;  // the worker's, of this database

  session::InputBuffer client_in_{session::InputBuffer::kClientBytes};
  routing::Router router_;    // points into the profile's sharding
  stats::Recorder recorder_;  // the worker's statement statistics, with this client's names
  std::optional<session::Session> core_;
  SocketWriter client_writer_;

  std::shared_ptr<pool::ServerPool> pool_;  // the primary of the first shard at login (counts)
  std::shared_ptr<const UserPools> pools_;  // every host's pool, as of a topology generation
  // routing.reads and routing.load_balance as of that generation.
  config::ReadsTo reads_ = config::ReadsTo::Replicas;
  config::LoadBalance load_balance_ = config::LoadBalance::LeastConnections;
  CancelTarget cancel_;  // registered at login, removed first thing in the destructor

  struct LinkIO {
    std::unique_ptr<ServerConnection> conn;
    std::shared_ptr<pool::ServerPool> pool;
    SocketWriter writer;
    bool watching = false;         // an arrival (or a wait) is to read the server's socket
    std::uint32_t generation = 0;  // changes whenever the link's server changes
    // An arrival wait (arrival_wait.h) is armed on the server's socket; `drained`: the kernel
    // held nothing more (no bytes, not the server's end) at the last read and a wait has been
    // armed since, so only an arrival brings more.
    bool arrival_armed = false;
    bool drained = false;
  };
  std::vector<LinkIO> links_;

  bool watching_client_ = false;   // an arrival (or a wait) is to read the client's socket
  bool watching_hang_up_ = false;  // a TLS client's socket is waited on for its end only
  // The same as LinkIO's, for the client's socket.
  bool client_arrival_armed_ = false;
  bool client_drained_ = false;
  bool hang_up_asked_ = false;  // the socket was polled for a hang-up since the last read
  bool closed_ = false;
  // What the pool was last told by pinned_change: undone at destruction if still set.
  bool pinned_ = false;
  bool counted_ = false;  // App::add_client() at the session's start
  // The worker the session is on its way to (start_move() to finish_move()); null otherwise.
  Worker* moving_to_ = nullptr;
  // Servers being cleaned after their release (clean_and_release): they run on this worker.
  int cleaning_ = 0;

  std::unique_ptr<Checkout> checkout_;  // while asking for servers (checkout())

  std::unique_ptr<asio::steady_timer> timer_;  // made the first time the core has a deadline
  session::Clock::time_point timer_at_ = session::Clock::time_point::max();

  // LISTEN/NOTIFY through the hub (transaction pooling), from the client's first LISTEN on.
  struct Listening {
    std::vector<std::shared_ptr<ListenHub>> hubs;  // one per shard
    std::shared_ptr<NotificationSink> sink;
    std::shared_ptr<ClientSession> waiting;  // keeps the session while the hub answers
  };
  std::unique_ptr<Listening> listening_;
};

}  // namespace pgvalve::proxy
