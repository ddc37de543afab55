// The HTTP endpoint on admin_listen (DESIGN.md §6): /health, /ready, /status, /metrics.
// HTTP/1.1 with keep-alive (Boost.Beast), one coroutine per connection, all on the control
// io_context (the main thread): it never touches a worker's loop, only App's thread-safe
// accessors. Requests are small and bounded in time: an idle or slow client is dropped.
#pragma once

#include <memory>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/io_context.hpp>

#include "config/config.h"

namespace pgvalve::proxy {

class App;

class HttpServer {
 public:
  HttpServer(App& app, boost::asio::io_context& context);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and listens on `endpoint`, then accepts on the context. Throws
  // boost::system::system_error (or std::exception) when the address cannot be bound.
  void start(const config::Endpoint& endpoint);
  // Stops accepting and closes every open HTTP connection. Idempotent. Call on the context's
  // thread, or while the context is not running.
  void close();

  struct State;  // shared with the connection coroutines, which may outlive this object

 private:
  std::shared_ptr<State> state_;
};

}  // namespace pgvalve::proxy
