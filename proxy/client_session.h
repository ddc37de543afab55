// One client connection, top to bottom: startup and authentication (client_login.cpp), then the
// relay that lends it server connections by pool mode and forwards frames in place both ways
// (client_session.cpp), with transaction pooling's bookkeeping in transaction_pooling.cpp.
//
// Two coroutines run on the client's worker while a server is linked: the client loop
// (client -> server, and every decision to link) and the server loop (server -> client, and
// the decision to give the server back at a transaction boundary). Both run on one thread, so
// they share the session's fields without locks.
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
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include "config/config.h"
#include "pool/server_pool.h"
#include "protocol/frame.h"
#include "protocol/pending_responses.h"
#include "protocol/prepared_statements.h"
#include "proxy/byte_buffer.h"
#include "proxy/cancel_registry.h"
#include "proxy/listen_hub.h"
#include "proxy/server_connection.h"
#include "proxy/users.h"
#include "routing/statement.h"

namespace pgvalve::proxy {

namespace asio = boost::asio;
using asio::ip::tcp;
using error_code = boost::system::error_code;

class App;
struct Worker;

// The session settings PostgreSQL reports with ParameterStatus that pgvalve keeps equal between
// a client and whichever server it is lent (case-insensitive).
bool is_synced_setting(std::string_view name);

// Extra work attached to a pending response (PendingResponse::note).
struct Note {
  enum Kind : std::uint8_t { Set, Reset, ResetAll, Discard, CommandTag };
  std::uint8_t kind = Set;
  std::string name;   // Set/Reset: the parameter; CommandTag: the tag
  std::string value;  // Set: the value as written
};

class ClientSession : public std::enable_shared_from_this<ClientSession> {
 public:
  ClientSession(App& app, Worker& worker, tcp::socket socket, std::uint64_t id);
  ~ClientSession();

  // Runs the session to its end. The caller keeps the session alive until it completes (e.g.
  // in co_spawn's completion handler).
  asio::awaitable<void> serve();
  // Shutdown began: leave at the next transaction boundary (now, if between transactions).
  void on_drain();

  // For SHOW CLIENTS.
  std::uint64_t id() const { return id_; }
  const std::string& user() const { return user_name_; }
  const std::string& database() const { return database_name_; }
  bool linked() const { return server_ != nullptr; }

 private:
  class CheckoutWaiter final : public pool::Waiter {
   public:
    explicit CheckoutWaiter(ClientSession& session) : session_(session) {}
    void grant(std::unique_ptr<pool::Connection> conn) override;
    bool granted = false;
    std::unique_ptr<pool::Connection> conn;

   private:
    ClientSession& session_;
  };

  // Login
  asio::awaitable<bool> read_startup();
  asio::awaitable<bool> authenticate();
  asio::awaitable<bool> authenticate_scram(const UserAuth& auth);
  asio::awaitable<bool> authenticate_md5(const UserAuth& auth);
  asio::awaitable<bool> read_password_frame(protocol::Frame& frame);
  asio::awaitable<bool> start_session();
  void init_client_settings();
  asio::awaitable<void> forward_cancel(std::int32_t process_id, std::int32_t secret_key);

  // Relay
  void wait_until_readable();
  asio::awaitable<void> relay(error_code woke_with);
  // True when `ec` ended a client read only to deliver notifications.
  bool woken(const error_code& ec);
  asio::awaitable<bool> on_client_bytes();
  asio::awaitable<bool> link_server(ServerFailure& failure, bool sync);
  asio::awaitable<std::unique_ptr<ServerConnection>> checkout(ServerFailure& failure);
  asio::awaitable<bool> sync_settings(ServerConnection& server, ServerFailure& failure);
  std::uint64_t settings_fingerprint() const;
  // True when `server` was last synced to settings equal to this client's and has not changed.
  bool settings_match(const ServerConnection& server) const;
  void start_server_loop();
  asio::awaitable<void> relay_server_to_client();
  bool releasable() const;
  void release_server();
  void server_lost(std::string& out);
  void drop_failed_server();
  asio::awaitable<void> fail_requests(std::string_view frames, const ServerFailure& failure);
  asio::awaitable<void> finish();

  // LISTEN/UNLISTEN between transactions go to the (database, user)'s listen hub.
  asio::awaitable<bool> listen_via_hub(std::string_view frames);
  void deliver_notification(std::string message);
  asio::awaitable<bool> write_notifications();

  // Transaction pooling bookkeeping (transaction_pooling.cpp): what the server gets for the
  // client's frames, and what the client gets for the server's.
  void plan_client_frames(std::string_view frames);
  // A flight of named Parse messages and Sync/Flush only: defines the statements and puts the
  // answers in client_scratch_. False (nothing changed) for anything else.
  bool answer_parse_locally(std::string_view frames);
  void plan_parse(const protocol::Frame& f, std::size_t offset);
  void plan_bind(const protocol::Frame& f, std::size_t offset);
  void plan_describe(const protocol::Frame& f, std::size_t offset);
  void plan_close(const protocol::Frame& f, std::size_t offset);
  void plan_query(const protocol::Frame& f, std::size_t offset);
  void prepare_on_server(const protocol::PreparedStatement& stmt, bool swallow);
  void pass_client(std::size_t offset, std::size_t size);
  void mark_client_scratch(std::size_t from);
  std::uint32_t add_note(std::uint8_t kind, std::string a, std::string b = {});
  // Returns the refusal message when `sql` cannot work in this pool mode.
  // Sets *changes_settings when a statement is SET/RESET (not SET LOCAL).
  // `first` receives the first statement's classification.
  std::optional<std::string> refusal(std::string_view sql, bool* changes_settings = nullptr,
                                     routing::StatementInfo* first = nullptr) const;
  void plan_server_frame(const protocol::Frame& f, std::size_t offset);
  void emit_synthetic_heads();
  void complete_front(char tx_status);
  void apply_note(const struct Note& note);

  // Errors to the client: `fatal` ones close the connection.
  asio::awaitable<void> send_fatal(std::string_view sqlstate, std::string_view message);
  void append_error(std::string& out, std::string_view sqlstate, std::string_view message,
                    std::string_view hint = {});

  App& app_;
  Worker& worker_;
  tcp::socket client_;
  const std::uint64_t id_;
  config::ConfigPtr config_;
  std::shared_ptr<const UserDirectory> users_;
  const config::User* user_ = nullptr;
  const config::Database* database_ = nullptr;
  std::string user_name_;
  std::string database_name_;
  std::vector<std::pair<std::string, std::string>> startup_params_;
  config::PoolMode mode_ = config::PoolMode::Transaction;
  std::size_t max_message_bytes_ = 0;
  bool counted_ = false;
  bool logged_in_ = false;  // AuthenticationOk and the login ParameterStatus list were sent

  ByteBuffer client_in_;
  std::size_t pending_frame_bytes_ = 0;  // size of the partial frame at the buffer's end

  std::shared_ptr<pool::ServerPool> pool_;
  std::shared_ptr<CancelTarget> cancel_;
  // The client's session settings where they differ from the pool's server defaults.
  Settings client_settings_;
  std::shared_ptr<const pool::ServerPool::ServerParameters> defaults_;
  CheckoutWaiter waiter_{*this};

  // The linked server and the work outstanding on it.
  std::unique_ptr<ServerConnection> server_;
  int in_flight_ = 0;           // Query/Sync/FunctionCall forwarded, ReadyForQuery not yet seen
  bool open_extended_ = false;  // extended-protocol messages forwarded since the last Sync
  bool server_loop_running_ = false;
  bool server_write_pending_ = false;
  bool server_failed_ = false;
  bool stopping_ = false;          // finish() asked the server loop to stop
  bool lost_transaction_ = false;  // the server died while this client was in a transaction
  bool skip_until_sync_ = false;   // an extended flight failed; drop messages until Sync
  bool error_sent_in_flight_ = false;
  bool client_gone_ = false;
  // Wakes the client loop: a checkout grant, the end of the server loop, a hub answer. Every
  // wait re-checks its own condition, so a wake meant for another wait is harmless.
  asio::steady_timer wake_timer_;

  // Transaction and statement mode only (session mode forwards everything unchanged).
  bool track_ = false;
  Settings startup_settings_;  // what RESET returns a non-reported setting to
  struct Span {
    bool scratch;
    std::size_t offset;
    std::size_t size;
  };
  class Sink;
  // Made when the client first sends something, so a client that only logged in stays small.
  struct TransactionState {
    protocol::ClientStatements statements;
    protocol::PendingResponses pending;
    std::vector<Span> client_spans;
    std::string client_scratch;
    std::vector<Span> server_spans;
    std::string server_scratch;
    std::vector<asio::const_buffer> write_buffers;
    std::vector<Note> notes;
    bool drop_until_sync = false;  // a refused Parse: the rest of the flight is not sent
    // Notifications from the listen hub, waiting for the client to be between commands.
    std::shared_ptr<ListenHub> hub;
    std::shared_ptr<NotificationSink> sink;
    std::string notifications;
  };
  std::unique_ptr<TransactionState> tx_;
  bool notify_wakeup_ = false;
  bool reading_client_ = false;  // the client loop waits for the client: cancelling it is safe
};

}  // namespace pgvalve::proxy
