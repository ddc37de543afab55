#include "proxy/listen_hub.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>

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
    Command c{first ? "LISTEN " + quoted(channel) : std::string(), std::move(done), sink.get(),
              std::move(channel), first};
    self->submit(std::move(c));
  });
}

void ListenHub::unlisten(NotificationSink* sink, std::string channel, Done done) {
  asio::post(context_, [self = shared_from_this(), sink, channel = std::move(channel),
                        done = std::move(done)]() mutable {
    std::string sql;
    if (auto it = self->channels_.find(channel); it != self->channels_.end()) {
      it->second.erase(sink);
      if (it->second.empty()) {
        sql = "UNLISTEN " + quoted(it->first);
        self->channels_.erase(it);
      }
    }
    self->submit({std::move(sql), std::move(done)});
  });
}

std::string ListenHub::leave_every_channel(NotificationSink* sink) {
  std::string sql;
  for (auto it = channels_.begin(); it != channels_.end();) {
    it->second.erase(sink);
    if (it->second.empty()) {
      sql += "UNLISTEN " + quoted(it->first) + ";";
      it = channels_.erase(it);
    } else {
      ++it;
    }
  }
  return sql;
}

void ListenHub::unlisten_all(NotificationSink* sink, Done done) {
  asio::post(context_, [self = shared_from_this(), sink, done = std::move(done)]() mutable {
    std::string sql = self->leave_every_channel(sink);
    self->submit({std::move(sql), std::move(done)});
  });
}

void ListenHub::forget(NotificationSink* sink) {
  asio::post(context_, [self = shared_from_this(), sink] {
    self->sinks_.erase(sink);
    std::string sql = self->leave_every_channel(sink);
    // Its LISTENs still on their way are not undone on its behalf any more.
    for (auto* commands : {&self->queued_, &self->in_flight_}) {
      for (auto& c : *commands) {
        if (c.sink == sink) c.sink = nullptr, c.done = nullptr;
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
  submit({";", [self = shared_from_this(), id = connection_](const std::optional<HubError>&) {
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
  if (command.sql.empty()) {
    // Nothing to send: answered now unless it joins a channel whose server has yet to listen
    // (it then waits its turn behind that LISTEN, or for a connection).
    const bool listened =
        server_ && subscribed_ && !moving_ && in_flight_.empty() && queued_.empty();
    if (!command.sink || listened) {
      if (command.done) command.done(std::nullopt);
      return;
    }
  } else if (!command.sink && !running_) {
    // An UNLISTEN with no connection: the next connection listens on what is left only.
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
    c.sql.clear();
    in_flight_.push_back(std::move(c));
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

// A command is answered. A failed LISTEN leaves its sink off the channel (so nothing reaches a
// client told it does not listen, and a reconnect does not listen on it again); when it was the
// channel's LISTEN, those who joined the channel behind it fail with it.
void ListenHub::finish(Command& command, std::optional<HubError> error) {
  Done done = std::move(command.done);
  command.done = nullptr;
  // The channel's LISTEN fails those who joined behind it also when its own client has left.
  if (error && (command.sink || command.listens)) {
    if (auto it = channels_.find(command.channel); it != channels_.end()) {
      if (command.listens) {
        for (auto* commands : {&in_flight_, &queued_}) {
          for (auto& c : *commands) {
            if (c.sink && c.channel == command.channel && !c.listens && c.done) {
              auto joined = std::move(c.done);
              c.done = nullptr;
              c.sink = nullptr;
              joined(error);
            }
          }
        }
        channels_.erase(it);
      } else {
        it->second.erase(command.sink);
        if (it->second.empty()) channels_.erase(it);
      }
    }
  }
  if (done) done(std::move(error));
}

void ListenHub::fail_all(const HubError& error) {
  auto in_flight = std::move(in_flight_);
  in_flight_.clear();
  auto queued = std::move(queued_);
  queued_.clear();
  for (auto* commands : {&in_flight, &queued}) {
    for (auto& c : *commands)
      finish(c, error);
  }
}

void ListenHub::lose_listeners() {
  auto sinks = std::move(sinks_);
  sinks_.clear();
  channels_.clear();
  for (auto& [_, weak] : sinks) {
    if (auto sink = weak.lock()) sink->lost();
  }
}

asio::awaitable<void> ListenHub::run() {
  auto self = shared_from_this();
  // One connection after another only to move to another server; a lost or refused one fails
  // what waits for it and tells the listeners. The next LISTEN connects again at once.
  for (;;) {
    const Ended ended = co_await serve_one_connection();
    if (ended != Ended::Moved || (channels_.empty() && queued_.empty())) break;
  }
  running_ = false;
  answer_move_waiters();
}

asio::awaitable<ListenHub::Ended> ListenHub::serve_one_connection() {
  ServerFailure failure;
  ServerLogin login = login_;
  login.host = next_host();
  if (rules_) rules_(login);
  ++connection_;
  subscribed_ = moving_ = drained_ = broken_ = false;
  server_ = co_await open_server_connection(login, failure);
  if (!server_) {
    PGV_LOG(Warn, "listen_connection_failed", {"host", login.host.to_string()},
            {"reason", failure.message});
    // The server's own words (a login refused: 53300 for the role's connection limit, 28P01)
    // are kept, said as pgvalve's.
    fail_all({failure.sqlstate, failure.message.starts_with("pgvalve:")
                                    ? failure.message
                                    : "pgvalve: the shared LISTEN connection could not log in to " +
                                          login.host.to_string() + ": " + failure.message +
                                          "; LISTEN again later"});
    if (!channels_.empty()) lose_listeners();  // listened on the server it was moving from
    co_return Ended::Lost;
  }
  PGV_LOG(Info, "listen_connection_open", {"host", login.host.to_string()},
          {"database", login_.dbname}, {"user", login_.user});
  // Listen again on every channel clients listen on (after a move), then the queue. Once the
  // server listens, the hub is where it should be, or moves on. The connection is idle by
  // design: idle_session_timeout (PostgreSQL 14 on; an older server's error is ignored) must not
  // end it.
  std::string resubscribe;
  for (const auto& [channel, _] : channels_)
    resubscribe += "LISTEN " + quoted(channel) + ";";
  queued_.push_front(
      {resubscribe.empty() ? ";" : resubscribe,
       [self = shared_from_this(), id = connection_](const std::optional<HubError>& error) {
         if (self->connection_ != id) return;
         if (error) {
           self->broken_ = true;  // its clients would not hear their channels
           return;
         }
         self->subscribed_ = true;
         self->follow_target();
       }});
  queued_.push_front({"SET idle_session_timeout = 0", nullptr});
  // Notifications are passed on as they come: in UTF8, the only encoding a client may LISTEN
  // through the hub in (Session::answer_listen_locally).
  queued_.push_front({"SET client_encoding = 'UTF8'", nullptr});
  flush_queue();
  std::optional<HubError> error;
  Ended ended = Ended::Lost;
  while (!drained_ && !broken_) {
    pr::Frame f;
    if (co_await read_frame(server_->stream, server_->in, login_.max_message_bytes, f) !=
        ReadStatus::Ok) {
      break;
    }
    switch (f.tag) {
      case 'A': {
        if (auto n = pr::read_notification_response(f)) {
          auto it = channels_.find(std::string(n->channel));
          if (it != channels_.end()) {
            // One copy for every listener of the channel.
            auto message = std::make_shared<const std::string>(f.whole);
            for (auto* sink : it->second) {
              auto found = sinks_.find(sink);
              if (found == sinks_.end()) continue;
              if (auto owner = found->second.lock()) owner->deliver(message);
            }
          }
        }
        break;
      }
      case 'E':
        if (auto e = pr::read_error_response(f)) {
          error = HubError{std::string(e->sqlstate),
                           "pgvalve: the server refused: " + std::string(e->message)};
        }
        break;
      case 'Z':
        if (!in_flight_.empty()) {
          auto c = std::move(in_flight_.front());
          in_flight_.pop_front();
          finish(c, std::move(error));
        }
        error.reset();
        break;
      default:
        break;
    }
    server_->in.consume(f.whole.size());
    if (f.tag == 'Z' && channels_.empty() && in_flight_.empty() && queued_.empty() &&
        move_waiters_.empty() && !moving_) {
      ended = Ended::Idle;  // nobody listens any more: the connection goes
      break;
    }
  }
  server_.reset();
  outbox_.clear();
  if (ended == Ended::Idle) {
    PGV_LOG(Info, "listen_connection_closed", {"host", login.host.to_string()},
            {"database", login_.dbname}, {"user", login_.user});
    co_return ended;
  }
  if (moving_ && drained_) {
    PGV_LOG(Info, "listen_connection_moved", {"from", login.host.to_string()},
            {"to", target_.to_string()}, {"database", login_.dbname}, {"user", login_.user});
    // Commands sent after the drain are answered on the next server, after its LISTENs, which
    // cover them (a new server listens on exactly the channels clients want).
    for (auto it = in_flight_.rbegin(); it != in_flight_.rend(); ++it) {
      it->sql.clear();
      it->listens = false;
      queued_.push_front(std::move(*it));
    }
    in_flight_.clear();
    co_return Ended::Moved;
  }
  PGV_LOG(Warn, "listen_connection_lost", {"host", login.host.to_string()});
  fail_all({"08006", "pgvalve: the listening server connection was lost; LISTEN again"});
  lose_listeners();
  co_return Ended::Lost;
}

}  // namespace pgvalve::proxy
