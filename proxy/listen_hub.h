// LISTEN/NOTIFY under transaction pooling. Clients hold no server between transactions, so one
// listening server connection per (database, user, shard) runs LISTEN/UNLISTEN for the union of
// its clients' channels and fans each NotificationResponse out to the clients that listen on it;
// it follows its shard's primary. Runs on one event loop (the control thread); clients talk to it
// from their own workers.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include "proxy/server_connection.h"

namespace pgvalve::proxy {

// A client that receives notifications. Called on the hub's thread; the client hands them over
// to its own thread.
class NotificationSink {
 public:
  virtual ~NotificationSink() = default;
  // A whole NotificationResponse, one immutable buffer shared by every listener.
  virtual void deliver(std::shared_ptr<const std::string> message) = 0;
  // The hub's server connection was lost while the client listened through it: notifications
  // may have been missed (the hub has forgotten the client's channels).
  virtual void lost() = 0;
};

// Why a hub request failed: the server's SQLSTATE when it refused it, 08006 (or the login's)
// when the connection failed.
struct HubError {
  std::string sqlstate;
  std::string message;
};

class ListenHub : public std::enable_shared_from_this<ListenHub> {
 public:
  // `done` gets an error, or nullopt once the server confirmed that it listens (so no
  // notification sent after the client's LISTEN returns can be missed). Called on the hub's
  // thread.
  using Done = std::function<void(std::optional<HubError> error)>;

  // The host the health checks see taking writes now; nullopt while none does (down, or a
  // switchover's pause), when the hub keeps the last one it knew.
  using Primary = std::function<std::optional<config::Endpoint>()>;

  // Sets what the configuration says now in a login (TLS to the server, whether a password may
  // go without it, the user's password), so that a reconnect follows a reload.
  using Rules = std::function<void(ServerLogin&)>;

  // `database` and `shard` are pgvalve's names of what `login` reaches.
  // `primary` names the host to (re)connect to at each connection, so the hub follows a
  // failover; login.host until it names one. `rules` is asked before each connection.
  ListenHub(asio::io_context& context, std::string database, std::string shard, ServerLogin login,
            Primary primary = {}, Rules rules = {});

  // From any thread. A LISTEN is answered once the server confirmed it (the hub connects for it
  // when it has no connection); one that fails leaves the sink off the channel.
  void listen(std::shared_ptr<NotificationSink> sink, std::string channel, Done done);
  void unlisten(NotificationSink* sink, std::string channel, Done done);  // exactly `channel`
  void unlisten_all(NotificationSink* sink, Done done);
  void forget(NotificationSink* sink);

  // Moves the listening connection to `primary` (nullopt: the one `primary` names now) when it
  // is elsewhere: notifications the old server has sent are read first (a query waits for them),
  // then the new server listens on every channel before `moved` runs. `moved` also runs when
  // nobody listens. Any thread; `moved` runs on the hub's.
  void move_to(std::optional<config::Endpoint> primary, std::function<void()> moved);

  const std::string& database() const { return database_; }
  const std::string& shard() const { return shard_; }
  std::size_t channel_count() const { return channels_.size(); }
  // Shutdown, with the hub's loop stopped: closes the listening connection while its loop
  // still exists.
  void close() { server_.reset(); }

 private:
  // Takes `sink` off every channel; the UNLISTENs of the channels nobody listens on any more.
  std::string leave_every_channel(NotificationSink* sink);
  struct Command {
    std::string sql;  // empty: nothing to send (the channel is listened on, or nobody needs it)
    Done done;
    // A LISTEN's sink and channel, taken off again if it fails; `listens`: `sql` is its LISTEN
    // (others joined a channel whose LISTEN was sent before).
    NotificationSink* sink = nullptr;
    std::string channel;
    bool listens = false;
  };
  enum class Ended : std::uint8_t { Moved, Idle, Lost };
  void submit(Command command);
  void flush_queue();
  static asio::awaitable<void> write_outbox(std::shared_ptr<ListenHub> self);
  asio::awaitable<void> run();
  asio::awaitable<Ended> serve_one_connection();
  void finish(Command& command, std::optional<HubError> error);
  void fail_all(const HubError& error);
  // Every listener is told that notifications may have been missed; the hub forgets them.
  void lose_listeners();
  const config::Endpoint& next_host();
  // Once the server listens: moves on if the primary is elsewhere, else answers move_to().
  void follow_target();
  void answer_move_waiters();

  asio::io_context& context_;
  const std::string database_;
  const std::string shard_;
  const ServerLogin login_;
  const Primary primary_;
  const Rules rules_;
  config::Endpoint target_;   // where the hub should listen
  bool told_target_ = false;  // target_ came from move_to(), ahead of the health checks
  std::unique_ptr<ServerConnection> server_;
  std::uint64_t connection_ = 0;  // counts connections, so a late answer finds its own
  bool subscribed_ = false;       // the server listens on every channel
  bool moving_ = false;           // reading what the old server has sent, then leaving it
  bool drained_ = false;
  bool broken_ = false;  // the server refused to listen again after a move
  std::vector<std::function<void()>> move_waiters_;
  bool running_ = false;
  std::map<std::string, std::set<NotificationSink*>> channels_;
  std::map<NotificationSink*, std::weak_ptr<NotificationSink>> sinks_;
  std::deque<Command> queued_;     // waiting for the connection
  std::deque<Command> in_flight_;  // sent, waiting for ReadyForQuery
  std::string outbox_;
  bool writing_ = false;
};

}  // namespace pgvalve::proxy
