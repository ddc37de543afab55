// LISTEN/NOTIFY under transaction pooling. Clients hold no server between transactions, so one
// listening server connection per (database, user) runs LISTEN/UNLISTEN for the union of its
// clients' channels and fans each NotificationResponse out to the clients that listen on it.
// Runs on one event loop (the control thread); clients talk to it from their own workers.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include "proxy/server_connection.h"

namespace pgvalve::proxy {

// A client that receives notifications. deliver() is called on the hub's thread with a whole
// NotificationResponse message; the client hands it over to its own thread.
class NotificationSink {
 public:
  virtual ~NotificationSink() = default;
  virtual void deliver(std::string message) = 0;
};

class ListenHub : public std::enable_shared_from_this<ListenHub> {
 public:
  // `done` gets an error message, or nullopt once the server listens (so no notification sent
  // after the client's LISTEN returns can be missed). Called on the hub's thread.
  using Done = std::function<void(std::optional<std::string> error)>;

  // `primary` names the host to (re)connect to at each connection: the shard's primary as the
  // health checks see it, so the hub follows a failover.
  ListenHub(asio::io_context& context, ServerLogin login,
            std::function<config::Endpoint()> primary = {});

  // From any thread.
  void listen(std::shared_ptr<NotificationSink> sink, std::string channel, Done done);
  // channel "*" = every channel of this sink.
  void unlisten(NotificationSink* sink, std::string channel, Done done);
  void forget(NotificationSink* sink);

  std::size_t channel_count() const { return channels_.size(); }
  // Shutdown, with the hub's loop stopped: closes the listening connection while its loop
  // still exists.
  void close() { server_.reset(); }

 private:
  struct Command {
    std::string sql;  // empty: nothing to send, answer at once (already listening)
    Done done;
  };
  void submit(Command command);
  void flush_queue();
  static asio::awaitable<void> write_outbox(std::shared_ptr<ListenHub> self);
  asio::awaitable<void> run();
  asio::awaitable<void> serve_one_connection();
  void fail_all(const std::string& error);

  asio::io_context& context_;
  const ServerLogin login_;
  const std::function<config::Endpoint()> primary_;
  std::unique_ptr<ServerConnection> server_;
  bool running_ = false;
  std::map<std::string, std::set<NotificationSink*>> channels_;
  std::map<NotificationSink*, std::weak_ptr<NotificationSink>> sinks_;
  std::deque<Command> queued_;  // waiting for the connection
  std::deque<Done> in_flight_;  // sent, waiting for ReadyForQuery
  std::string outbox_;
  bool writing_ = false;
};

}  // namespace pgvalve::proxy
