#include "proxy/listen_hub.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "protocol/messages.h"
#include "proxy/io_util.h"
#include "proxy/log.h"
#include "routing/sql_text.h"

namespace pgvalve::proxy {

namespace pr = protocol;

namespace {
std::string quoted(std::string_view channel) {
  std::string out;
  routing::append_identifier(out, channel);
  return out;
}
}  // namespace

ListenHub::ListenHub(asio::io_context& context, std::string database, std::string shard,
                     ServerLogin login, Primary primary, Rules rules)
    : context_(context),
      database_(std::move(database)),
      shard_(std::move(shard)),
      login_(std::move(login)),
      primary_(std::move(primary)),
      rules_(std::move(rules)),
      target_(login_.host) {}

void ListenHub::listen(std::shared_ptr<NotificationSink> sink, std::string channel, Done done) {
  asio::post(context_, [self = shared_from_this(), sink = std::move(sink),
                        channel = std::move(channel), done = std::move(done)]() mutable {
    auto& listeners = self->channels_[channel];
    const bool first = listeners.empty();
    listeners.insert(sink.get());
    self->sinks_[sink.get()] = sink;
    self->submit({first ? "LISTEN " + quoted(channel) : std::string(), std::move(done)});
  });
}

void ListenHub::unlisten(NotificationSink* sink, std::string channel, Done done) {
  asio::post(context_, [self = shared_from_this(), sink, channel = std::move(channel),
                        done = std::move(done)]() mutable {
    std::string sql;
    for (auto it = self->channels_.begin(); it != self->channels_.end();) {
      if (channel == "*" || it->first == channel) {
        it->second.erase(sink);
        if (it->second.empty()) {
          sql += "UNLISTEN " + quoted(it->first) + ";";
          it = self->channels_.erase(it);
          continue;
        }
      }
      ++it;
    }
    self->submit({std::move(sql), std::move(done)});
  });
}

void ListenHub::forget(NotificationSink* sink) {
  asio::post(context_, [self = shared_from_this(), sink] {
    self->sinks_.erase(sink);
    std::string sql;
    for (auto it = self->channels_.begin(); it != self->channels_.end();) {
      it->second.erase(sink);
      if (it->second.empty()) {
        sql += "UNLISTEN " + quoted(it->first) + ";";
        it = self->channels_.erase(it);
      } else {
        ++it;
      }
    }
    if (!sql.empty()) self->submit({std::move(sql), nullptr});
  });
}

void ListenHub::move_to(std::optional<config::Endpoint> primary, std::function<void()> moved) {
  asio::post(context_, [self = shared_from_this(), primary = std::move(primary),
                        moved = std::move(moved)]() mutable {
    if (primary) {
      self->target_ = std::move(*primary);
      self->told_target_ = true;
    } else {
      self->next_host();
    }
    if (moved) self->move_waiters_.push_back(std::move(moved));
    if (!self->running_) {
      self->answer_move_waiters();
      return;
    }
    if (self->pause_) self->pause_->cancel();  // waiting to retry a lost server: try now
    self->follow_target();
  });
}

// On the hub's thread from here on.
const config::Endpoint& ListenHub::next_host() {
  if (primary_) {
    // A host move_to() named wins until the health checks name it too: a promotion moves the
    // listeners before it publishes the new primary.
    if (auto p = primary_(); p && (!told_target_ || *p == target_)) {
      told_target_ = false;
      target_ = std::move(*p);
    }
  }
  return target_;
}

void ListenHub::follow_target() {
  if (!server_ || !subscribed_ || moving_) return;
  if (server_->host == target_) {
    answer_move_waiters();
    return;
  }
  // The answer to this query comes after every notification the old server has queued for
  // the hub; then the hub leaves it.
  moving_ = true;
  submit({";", [self = shared_from_this(), id = connection_](const std::optional<std::string>&) {
            if (self->connection_ == id) self->drained_ = true;
          }});
}

void ListenHub::answer_move_waiters() {
  auto waiters = std::move(move_waiters_);
  move_waiters_.clear();
  for (auto& moved : waiters)
    moved();
}

void ListenHub::submit(Command command) {
  if (command.sql.empty() && in_flight_.empty() && queued_.empty()) {
    if (command.done) command.done(std::nullopt);
    return;
  }
  queued_.push_back(std::move(command));
  if (!running_) {
    running_ = true;
    asio::co_spawn(context_, run(), asio::detached);
    return;
  }
  if (!server_) return;  // still connecting: run() sends the queue once logged in
  flush_queue();
}

// Moves queued commands to the outbox and makes sure one writer sends it, in order.
void ListenHub::flush_queue() {
  while (!queued_.empty()) {
    auto c = std::move(queued_.front());
    queued_.pop_front();
    // An empty command still waits its turn, so its answer comes after earlier LISTENs.
    pr::append_query(outbox_, c.sql.empty() ? ";" : c.sql);
    in_flight_.push_back(std::move(c.done));
  }
  if (writing_ || outbox_.empty()) return;
  writing_ = true;
  asio::co_spawn(context_, write_outbox(shared_from_this()), asio::detached);
}

asio::awaitable<void> ListenHub::write_outbox(std::shared_ptr<ListenHub> self) {
  while (!self->outbox_.empty() && self->server_) {
    std::string out = std::move(self->outbox_);
    self->outbox_.clear();
    if (!co_await write_all(self->server_->stream, out)) break;
  }
  self->writing_ = false;
}

void ListenHub::fail_all(const std::string& error) {
  for (auto& done : in_flight_) {
    if (done) done(error);
  }
  in_flight_.clear();
  for (auto& c : queued_) {
    if (c.done) c.done(error);
  }
  queued_.clear();
}

asio::awaitable<void> ListenHub::run() {
  auto self = shared_from_this();
  // Clients keep their channels across a lost or refused connection: the hub tries again each
  // pause while any client still listens, so notifications resume once a primary answers
  // (after a failover, the new one).
  for (;;) {
    const bool moved = co_await serve_one_connection();
    if (channels_.empty() && queued_.empty()) break;
    if (moved) continue;
    asio::steady_timer pause(context_, std::chrono::seconds(1));
    pause_ = &pause;
    error_code ignored;
    co_await pause.async_wait(await_ec(ignored));
    pause_ = nullptr;
    if (channels_.empty() && queued_.empty()) break;
  }
  running_ = false;
  answer_move_waiters();
}

asio::awaitable<bool> ListenHub::serve_one_connection() {
  ServerFailure failure;
  ServerLogin login = login_;
  login.host = next_host();
  if (rules_) rules_(login);
  ++connection_;
  subscribed_ = moving_ = drained_ = false;
  server_ = co_await open_server_connection(login, failure);
  if (!server_) {
    PGV_LOG(Warn, "listen_connection_failed", {"host", login.host.to_string()},
            {"reason", failure.message});
    fail_all(failure.message);
    co_return false;
  }
  PGV_LOG(Info, "listen_connection_open", {"host", login.host.to_string()},
          {"database", login_.dbname}, {"user", login_.user});
  // Listen again on every channel clients still want (after a reconnect or a move), then the
  // queue. Once the server listens, the hub is where it should be, or moves on.
  std::string resubscribe;
  for (const auto& [channel, _] : channels_)
    resubscribe += "LISTEN " + quoted(channel) + ";";
  queued_.push_front(
      {resubscribe.empty() ? ";" : resubscribe,
       [self = shared_from_this(), id = connection_](const std::optional<std::string>&) {
         if (self->connection_ != id) return;
         self->subscribed_ = true;
         self->follow_target();
       }});
  flush_queue();
  std::optional<std::string> error;
  while (!drained_) {
    pr::Frame f;
    if (co_await read_frame(server_->stream, server_->in, login_.max_message_bytes, f) !=
        ReadStatus::Ok) {
      break;
    }
    switch (f.tag) {
      case 'A': {
        std::string message(f.whole);
        if (auto n = pr::read_notification_response(f)) {
          auto it = channels_.find(std::string(n->channel));
          if (it != channels_.end()) {
            for (auto* sink : it->second) {
              auto owner = sinks_[sink].lock();
              if (owner) owner->deliver(message);
            }
          }
        }
        break;
      }
      case 'E':
        if (auto e = pr::read_error_response(f)) error = "pgvalve: " + std::string(e->message);
        break;
      case 'Z':
        if (!in_flight_.empty()) {
          auto done = std::move(in_flight_.front());
          in_flight_.pop_front();
          if (done) done(error);
        }
        error.reset();
        break;
      default:
        break;
    }
    server_->in.consume(f.whole.size());
  }
  server_.reset();
  outbox_.clear();
  if (moving_) {
    PGV_LOG(Info, "listen_connection_moved", {"from", login.host.to_string()},
            {"to", target_.to_string()}, {"database", login_.dbname}, {"user", login_.user});
    // Commands sent after the drain are answered on the next server, after its LISTENs, which
    // cover them (a new server listens on exactly the channels clients want).
    for (auto it = in_flight_.rbegin(); it != in_flight_.rend(); ++it)
      queued_.push_front({std::string(), std::move(*it)});
    in_flight_.clear();
    co_return true;
  }
  PGV_LOG(Warn, "listen_connection_lost", {"host", login.host.to_string()});
  fail_all("pgvalve: the listening server connection was lost; LISTEN again");
  co_return false;
}

}  // namespace pgvalve::proxy
