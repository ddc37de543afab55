#include "proxy/client_session.h"

#include <array>
#include <atomic>
#include <cstdint>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>

#include "protocol/frame.h"
#include "proxy/app.h"
#include "proxy/arrival_wait.h"
#include "proxy/handler_memory.h"
#include "proxy/listen_hub.h"
#include "proxy/log.h"
#include "proxy/socket_options.h"
#include "routing/replica_choice.h"
#include "session/limits.h"

namespace pgvalve::proxy {

using session::Actions;
using session::LinkOp;
using namespace std::chrono_literals;

namespace {

// A pooled connection idle at least this long is peeked at before use (it may have been closed
// by the server meanwhile); one reused at once under load is not, to save the system call.
constexpr auto kPeekIdleAfter = 10ms;

std::unique_ptr<ServerConnection> as_server(std::unique_ptr<pool::Connection> conn) {
  return std::unique_ptr<ServerConnection>(static_cast<ServerConnection*>(conn.release()));
}

// Server reads in a row for one link before the session lets the worker's other sessions run.
constexpr int kServerReadsPerTurn = 16;

// Plain TCP: a read is one recvmsg that says whether the kernel holds more, which arrival waits
// need. A TLS stream keeps plaintext and records of its own, so it waits as Asio does.
bool uses_arrival_wait(const Stream& stream) {
  return kArrivalWaitAvailable && !stream.tls();
}

// Opening failed for lack of room (the server's max_connections, or pgvalve's own descriptors),
// not because of the host: the client waits for a pooled connection to come back.
pool::OpenRefusal refusal_of(const ServerFailure& failure) {
  if (failure.out_of_files) return pool::OpenRefusal::OutOfFiles;
  if (failure.sqlstate == "53300") return pool::OpenRefusal::ServerFull;
  return pool::OpenRefusal::None;
}

// What a client whose request was cancelled in the queue for a server is told (57014).
constexpr std::string_view kCancelledWhileWaiting =
    "pgvalve: canceling statement due to user request (it was waiting for a server connection "
    "and did not run)";

// What a client that waited checkout_timeout_ms for a server connection is told (53300).
std::string checkout_timeout_message(const pool::ServerPool& pool, int timeout_ms) {
  std::string message =
      "pgvalve: no server connection became available within "
      "pool.checkout_timeout_ms (" +
      std::to_string(timeout_ms) + " ms)";
  switch (pool.open_refusal()) {
    case pool::OpenRefusal::ServerFull:
      return message + ", and server " + pool.key().host.to_string() +
             " refuses new connections (53300: its max_connections is reached); retry, and "
             "lower pool_size and max_overflow to fit PostgreSQL's max_connections (or raise it)";
    case pool::OpenRefusal::OutOfFiles:
      return message +
             ", and pgvalve is out of file descriptors, so it cannot open another; raise "
             "pgvalve's open-files limit (LimitNOFILE / ulimit -n; see the open_files_limit "
             "event in its log) or lower pool.max_client_connections";
    case pool::OpenRefusal::None:
      break;
  }
  return message + "; the pool is busy — retry, or raise pool_size or max_overflow";
}

void log_failure(std::uint64_t id, std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    PGV_LOG(Error, "session_failed", {"client", id}, {"error", ex.what()});
  }
}

}  // namespace

// Delivers the listen hub's notifications on the session's own thread. Every listener shares
// one buffer per notification; what waits for the session's worker counts against the client's
// cap when it is handed over, so a burst to many clients holds at most that much each.
class ClientSession::Sink final : public NotificationSink,
                                  public std::enable_shared_from_this<ClientSession::Sink> {
 public:
  Sink(std::weak_ptr<ClientSession> session, Socket::executor_type executor)
      : session_(std::move(session)), executor_(executor) {}
  void deliver(std::shared_ptr<const std::string> message) override {
    const std::size_t size = message->size();
    if (waiting_ + size > session::kMaxQueuedNotificationBytes) {
      // Closed with 53400 by the core, as when its own queue is full.
      if (overflowed_) return;
      overflowed_ = true;
      asio::post(executor_, [s = session_] {
        if (auto session = s.lock()) session->deliver_notification({});
      });
      return;
    }
    waiting_ += size;
    asio::post(executor_, [self = shared_from_this(), message = std::move(message)] {
      self->waiting_ -= message->size();
      if (auto session = self->session_.lock()) session->deliver_notification(*message);
    });
  }
  void lost() override {
    asio::post(executor_, [s = session_] {
      if (auto session = s.lock()) session->hub_lost();
    });
  }

 private:
  std::weak_ptr<ClientSession> session_;
  Socket::executor_type executor_;
  std::atomic<std::size_t> waiting_{0};  // posted, not yet taken by the session
  bool overflowed_ = false;              // the hub's thread only
};

ClientSession::Step::Step(Worker& worker) : worker_(worker) {
  if (worker_.steps++ == 0) worker_.clock.begin();
}

ClientSession::Step::~Step() {
  if (worker_.steps == 1) {
    // Still counted as inside a step: grants these make join the list and are carried out here.
    for (std::size_t i = 0; i < worker_.grants.size(); ++i) {
      Grant grant = std::move(worker_.grants[i]);
      grant.session->on_granted(std::move(grant.conn));
    }
    worker_.grants.clear();
    worker_.clock.end();
  }
  --worker_.steps;
}

void ClientSession::CheckoutWaiter::grant(std::unique_ptr<pool::Connection> conn) {
  // Called from inside another session's check-in, on this session's worker: the grant is
  // carried out when that session's step ends.
  if (Worker& w = *session_->worker_; w.steps > 0) {
    w.grants.push_back({session_->shared_from_this(), std::move(conn)});
    return;
  }
  // Outside a step (a pool's timer, a server sent over from another worker): on our own turn.
  asio::post(session_->client_.get_executor(),
             [self = session_->shared_from_this(), conn = std::move(conn)]() mutable {
               self->on_granted(std::move(conn));
             });
}

void ClientSession::CheckoutWaiter::pool_retired() {
  asio::post(session_->client_.get_executor(),
             [self = session_->shared_from_this()] { self->route_waiting_request_again(); });
}

void ClientSession::CheckoutWaiter::on_checkout_deadline() {
  session_->checkout_timed_out();
}

void ClientSession::CheckoutWaiter::on_long_wait() {
  session_->look_for_hang_up();
}

ClientSession::Checkout& ClientSession::start_checkout() {
  auto& spares = worker_->spare_checkouts;
  if (spares.empty()) {
    checkout_ = std::make_unique<Checkout>();
  } else {
    checkout_ = std::move(spares.back());
    spares.pop_back();
  }
  checkout_->waiter.session_ = this;
  return *checkout_;
}

void ClientSession::end_checkout() {
  if (!checkout_ || !checkout_->done()) return;
  checkout_->pool.reset();
  checkout_->started = {};
  checkout_->deadline = {};
  checkout_->cancelled = false;
  checkout_->pool_retired = false;
  if (worker_->spare_checkouts.size() < Worker::kSpareCheckouts) {
    worker_->spare_checkouts.push_back(std::move(checkout_));
  }
  checkout_.reset();
}

ClientSession::ClientSession(App& app, Worker& worker, Socket socket, std::uint64_t id,
                             const admission::Address& from, admission::Verdict verdict)
    : app_(app),
      worker_(&worker),
      client_(std::move(socket)),
      id_(id),
      from_(from),
      door_(verdict) {
  worker_->add_session(this);
  client_in_.set_budget(&app_.message_memory());
}

ClientSession::~ClientSession() {
  app_.cancels().remove(cancel_);  // before any member goes: a cancel may be reading it
  // close() normally leaves nothing behind. A session that ends without it (shutdown destroys
  // the handlers that hold it) must not take places in its pools with it.
  if (checkout_) {
    Checkout& c = *checkout_;
    worker_->checkout_deadlines.remove(c.waiter);
    if (c.wait_pool) {
      if (!c.granted) {
        c.wait_pool->cancel_wait(worker_->index, &c.waiter);
      } else if (c.grant) {
        c.wait_pool->discard(worker_->index, std::move(c.grant));
      } else {
        c.wait_pool->create_failed(worker_->index);
      }
    }
  }
  for (auto& io : links_) {
    io.writer.abandon();
    if (io.conn && io.pool) io.pool->discard(worker_->index, std::move(io.conn));
  }
  if (pinned_ && pool_) pool_->client_unpinned();
  worker_->remove_session(this);
  if (pool_) pool_->client_left();
  if (counted_) app_.remove_client();
  if (door_ == admission::Verdict::Admit) app_.leave(from_);
}

session::Clock::time_point ClientSession::now() const {
  return worker_->clock.now();
}

// ---- Carrying out actions ------------------------------------------------------------------

// Writes, then consumes the input the step read, then does what the actions ask. Bytes the
// kernel does not take at once are copied by the writers, so the session's view of its servers
// and the core's never differ; reading stops instead while a writer has a backlog.
void ClientSession::carry_out(const Actions& actions, Source source, session::LinkId link) {
  if (closed_) return;
  if (!actions.to_server.empty() && actions.server_link < links_.size() &&
      links_[actions.server_link].conn) {
    LinkIO& io = links_[actions.server_link];
    if (write_to(io.conn->stream, io.writer, actions.to_server, {}) ==
        SocketWriter::Result::Backlog) {
      io.writer.on_drained(drained_callback());
    }
  }
  // Chunks for several servers (COPY rows routed by shard). A writer with a backlog queues what
  // follows it, so chunks of one link may go one by one.
  for (const session::LinkChunk& c : actions.to_links) {
    if (c.link >= links_.size() || !links_[c.link].conn) continue;
    LinkIO& io = links_[c.link];
    if (write_to(io.conn->stream, io.writer, std::span(&c.chunk, 1), {}) ==
        SocketWriter::Result::Backlog) {
      io.writer.on_drained(drained_callback());
    }
  }
  if (!actions.to_client.empty() || !actions.outbox.empty()) {
    std::size_t bytes = actions.outbox.size();
    for (const auto& c : actions.to_client)
      bytes += c.size;
    worker_->counters.add_sent(bytes);
    if (database_counters_) {
      database_counters_->bytes_sent.fetch_add(bytes, std::memory_order_relaxed);
    }
    if (write_client(actions.to_client, actions.outbox) == SocketWriter::Result::Backlog) {
      client_writer_.on_drained(drained_callback());
    }
  }
  // After the writes, so statistics never delay them; before the input they read is dropped.
  core_->account();
  if (source == Source::Client) {
    client_in_.consume(actions.consumed);
    // A pinned or in-transaction client keeps no large buffer after a large message.
    client_in_.shrink_if_empty();
  } else if (source == Source::Server && link < links_.size() && links_[link].conn) {
    links_[link].conn->in.consume(actions.consumed);
  }
  if (actions.pinned_change > 0) {
    pool_->client_pinned();
    pinned_ = true;
  }
  if (actions.pinned_change < 0) {
    pool_->client_unpinned();
    pinned_ = false;
  }
  for (int i = 0; i < actions.statement_evictions; ++i)
    pool_->note_statement_eviction();
  if (!actions.prepared_parts.empty()) [[unlikely]] {
    hand_over(actions.prepared_parts);
  }
  if (!actions.server_given_up.empty()) {
    PGV_LOG(Warn, "server_given_up", {"client", id_}, {"user", user()}, {"database", database()},
            {"reason", actions.server_given_up});
  }
  if (!actions.replica_refused_settings.empty()) [[unlikely]] {
    PGV_LOG(Warn, "replica_refused_settings", {"client", id_}, {"user", user()},
            {"database", database()}, {"reason", actions.replica_refused_settings});
  }
  // Neither reaches back into the core, so `actions` stays as it is meanwhile.
  for (const auto& op : actions.link_ops)
    carry_out_link_op(op);
  if (actions.hub.kind != session::HubRequest::Kind::None || !actions.hub.dropped.empty()) {
    hub_request(actions.hub);
  }
  if (actions.close_client) {
    if (!actions.close_sqlstate.empty()) {
      // What the client was told as pgvalve closed it (a timeout, a setting its server refused).
      PGV_LOG(Info, "client_closed", {"client", id_}, {"user", user()}, {"database", database()},
              {"sqlstate", actions.close_sqlstate}, {"reason", actions.close_reason});
    }
    close();
    return;
  }
  // What follows may take further steps of the core, which reuse `actions`: read it first.
  const bool resume = actions.resume_client;
  if (actions.check_out) {
    const routing::Route route = actions.route;
    check_out(route);
  }
  if (resume) feed_client();
  if (closed_) return;
  // A server step returns to read_server(), which reads on.
  watch_client();
  arm_timer();
}

SocketWriter::Result ClientSession::write_client(std::span<const session::Chunk> chunks,
                                                 std::string_view tail) {
  return write_to(client_, client_writer_, chunks, tail);
}

SocketWriter::Result ClientSession::write_to(Stream& stream, SocketWriter& writer,
                                             std::span<const session::Chunk> chunks,
                                             std::string_view tail) {
  if (!stream.tls()) return writer.write(stream.socket(), chunks, tail);
  std::string_view sealed;
  if (!stream.seal(chunks, tail, sealed)) return SocketWriter::Result::Failed;
  return writer.write(stream.socket(), {}, sealed);
}

// Holds the session: while a writer has a backlog nothing else may (no read is armed). The
// writer drops it as it runs it, and on abandon() (close(), a server given back).
std::function<void()> ClientSession::drained_callback() {
  return [self = shared_from_this()] { self->on_drained(); };
}

// A writer's backlog drained: what stopped for it reads again.
void ClientSession::on_drained() {
  if (closed_) return;
  Step step(*worker_);
  if (core_) core_->set_client_held(false, now());
  for (std::size_t i = 0; i < links_.size(); ++i) {
    if (!links_[i].conn) continue;
    const auto id = static_cast<session::LinkId>(i);
    core_->set_server_paused(id, false, now());
    watch_server(id);
  }
  feed_client();
}

bool ClientSession::writers_busy() const {
  if (client_writer_.busy()) return true;
  for (const auto& io : links_) {
    if (io.conn && io.writer.busy()) return true;
  }
  return false;
}

// ---- The client's socket -------------------------------------------------------------------

void ClientSession::watch_client() {
  if (closed_ || moving_to_) return;
  // A socket whose write failed may have nothing more to announce: its read tells what happened.
  if (client_writer_.failed()) client_drained_ = false;
  // Bytes that arrive from here on must not go unnoticed, whatever stops the read below.
  if (client_drained_ && !client_arrival_armed_) arm_client_arrival();
  if (writers_busy()) {
    if (core_) core_->set_client_held(true, now());
    return;
  }
  if (core_->idle() && client_in_.empty()) {
    // Between transactions: nothing held but this object and a wait for the client's socket.
    core_->trim();
    end_checkout();
    client_in_.release();
    client_writer_.trim();
    client_.trim();
    if (links_.size() > 1) {
      links_.resize(1);  // after a read over several shards
      links_.shrink_to_fit();
    }
    if (timer_ && core_->next_deadline() == session::Clock::time_point::max()) {
      // A deadline of the last request (a settings sync's) would keep the timer, its wait and
      // this session alive until it passed.
      timer_.reset();
      timer_at_ = session::Clock::time_point::max();
    }
    // A client connected for less than a second may be one of a transaction (pgbench -C, a
    // script): moving it would cost more than it saves.
    if (worker_->shed_left > 0 &&
        std::chrono::system_clock::now() - connected_at_ >= std::chrono::seconds(1) && movable()) {
      start_move();
      return;
    }
  }
  if (!watching_client_ && !core_->wants_client_input() && watches_for_hang_up()) {
    watch_for_hang_up();
    return;
  }
  if (watching_client_ || !core_->wants_client_input()) return;
  watching_client_ = true;
  if (client_.buffered() || (uses_arrival_wait(client_) && !client_drained_)) {
    // TLS holds plaintext (or a record) already read from the socket, which will not become
    // readable for it; or the kernel holds more (bytes, or the client's end) that no arrival
    // will announce: read on the next turn.
    post_read_client();
    return;
  }
  if (uses_arrival_wait(client_)) return;  // the armed arrival reads
  client_.socket().async_wait(
      Socket::wait_read, with_exact_size_memory([self = shared_from_this()](const error_code& ec) {
        self->watching_client_ = false;
        if (self->moving_to_) {
          self->finish_move();
          return;
        }
        if (self->closed_) return;
        if (ec) {
          if (ec != asio::error::operation_aborted) self->client_gone();
          return;
        }
        self->read_client();
      }));
}

void ClientSession::watch_for_hang_up() {
  if (uses_arrival_wait(client_)) {
    // Bytes the kernel may hold already (the end among them) no arrival will announce: asked
    // now. Nor a reset that came with the bytes last read (TCP_INQ tells of bytes and a FIN
    // only): asked once after each read, not at every step of a read over several shards — and
    // for a request in a pool's queue only once it has waited kHangUpLookAfter
    // (look_for_hang_up()), a system call most waits end before.
    if (!client_drained_ || (!hang_up_asked_ && !in_pool_queue())) {
      hang_up_asked_ = true;
      if (hung_up_while_waiting()) return;
    }
    // Edge-triggered: armed with bytes unread, it still reports the end when it comes.
    if (!client_arrival_armed_) arm_client_arrival();
    return;
  }
  if (watching_hang_up_) return;
  if (hung_up_while_waiting()) return;
  watch_tls_hang_up(false);
}

// A TLS client's socket, waited on for its end only (its bytes are read once it has a server):
// level-triggered while nothing is unread; once bytes came first (more requests, the
// close_notify before a FIN) that wait would fire again at once, so the watch goes on
// edge-triggered, for the next arrival, the end among them.
void ClientSession::watch_tls_hang_up(bool bytes_came) {
  watching_hang_up_ = true;
  auto done = [self = shared_from_this()](const error_code& ec) {
    self->watching_hang_up_ = false;
    if (self->closed_ || ec == asio::error::operation_aborted) return;
    if (self->hung_up_while_waiting()) return;
    if (kArrivalWaitAvailable && !ec && self->watches_for_hang_up()) {
      self->watch_tls_hang_up(true);
    }
  };
  if (bytes_came) {
    async_wait_for_arrival(client_.socket(), worker_->reactor, with_exact_size_memory(done));
  } else {
    client_.socket().async_wait(Socket::wait_read, with_exact_size_memory(done));
  }
}

// Waiting for a server, or for the shards of a statement over several: the client is not read
// meanwhile, and one that left must not keep servers (or a place in the queue) until then.
// LoggingIn: watched only while its login waits for a server (start_session()).
bool ClientSession::watches_for_hang_up() const {
  // A COPY the client ended runs to its end (and commits) as on PostgreSQL: libpq's
  // PQputCopyEnd then PQfinish leaves without waiting for its answer.
  if (core_->finishing_copy()) return false;
  const auto state = core_->state();
  return state == session::SessionState::WaitingForServer ||
         state == session::SessionState::Scattering || state == session::SessionState::LoggingIn;
}

bool ClientSession::in_pool_queue() const {
  return checkout_ && checkout_->waiter.queued();
}

// The request has waited kHangUpLookAfter in a pool's queue: a reset that came with it, which
// no arrival announces, is looked for now.
void ClientSession::look_for_hang_up() {
  if (closed_ || hang_up_asked_ || !uses_arrival_wait(client_)) return;
  const auto self = shared_from_this();  // leaving ends the wait that holds the session
  hang_up_asked_ = true;
  hung_up_while_waiting();
}

bool ClientSession::hung_up_while_waiting() {
  if (closed_ || !watches_for_hang_up() || !peer_hung_up(client_.socket())) return false;
  PGV_LOG(
      Info, "client_left_while_waiting", {"client", id_}, {"database", database()},
      {"waiting_for", core_->state() == session::SessionState::Scattering ? "shards" : "a server"});
  if (core_->state() == session::SessionState::LoggingIn) {
    close();  // nothing started yet: the login's wait ends (start_session() sees closed_)
    return true;
  }
  client_gone();
  return true;
}

void ClientSession::arm_client_arrival() {
  client_arrival_armed_ = true;
  async_wait_for_arrival(client_.socket(), worker_->reactor,
                         with_exact_size_memory([self = shared_from_this()](const error_code& ec) {
                           self->client_arrival_armed_ = false;
                           if (self->moving_to_) {
                             self->watching_client_ = false;  // it was this wait that watched
                             self->finish_move();
                             return;
                           }
                           if (self->closed_ || ec == asio::error::operation_aborted) return;
                           self->client_drained_ = false;
                           // Not wanted now: the next watch_client() reads.
                           if (!self->watching_client_) {
                             if (!self->hung_up_while_waiting() && self->watches_for_hang_up()) {
                               self->arm_client_arrival();  // for the end, behind these bytes
                             }
                             return;
                           }
                           self->watching_client_ = false;
                           self->read_client();  // an error shows there
                         }));
}

bool ClientSession::movable() const {
  if (closed_ || !core_ || !core_->idle() || core_->holds_workspace()) return false;
  if (!client_in_.empty() || writers_busy() || client_writer_.failed()) return false;
  // What watches the client may only be a wait for its socket, which start_move() cancels: the
  // arrival wait on a drained plain socket, or Asio's wait on a TLS one (not a posted read).
  if (watching_client_ && uses_arrival_wait(client_) && !(client_arrival_armed_ && client_drained_))
    return false;
  if (client_.buffered() || client_.has_output()) return false;
  if (checkout_ || listening_ || pinned_ || timer_ || cleaning_ > 0) return false;
  for (const auto& io : links_) {
    if (io.conn) return false;
  }
  return true;
}

void ClientSession::start_move() {
  --worker_->shed_left;
  moving_to_ = worker_->shed_to;
  if (client_arrival_armed_ || watching_client_) {
    error_code ignored;
    client_.socket().cancel(ignored);  // the wait's handler calls finish_move()
    return;
  }
  asio::post(client_.get_executor(), [self = shared_from_this()] { self->finish_move(); });
}

void ClientSession::finish_move() {
  Worker* to = std::exchange(moving_to_, nullptr);
  if (!movable()) {
    // Something came first (a timer's step, a drain): the session stays. A wait cancelled
    // above may have missed an arrival, so the socket is read before it is waited on again.
    client_drained_ = false;
    watching_client_ = false;
    watch_client();
    return;
  }
  error_code ec;
  client_.move_to(to->context, ec);
  if (ec) {
    PGV_LOG(Warn, "client_move_failed", {"client", id_}, {"error", ec.message()});
    client_gone();
    return;
  }
  worker_->remove_session(this);
  worker_->counters.add_client_move();
  worker_ = to;
  app_.cancels().moved(cancel_, *to);
  asio::post(to->context, [self = shared_from_this()] { self->arrive(); });
}

void ClientSession::arrive() {
  worker_->add_session(this);
  router_.use_cache(&worker_->decisions);
  recorder_.stats = &worker_->query_stats;
  database_counters_ = &worker_->database_counters.of(database());
  core_->move_to(worker_->workspaces);
  if (worker_->draining) {
    on_drain();
    if (closed_) return;
  }
  // A reload's word to the workers may have passed both while the session was on its way.
  if (const auto now = app_.config(); now != profile_->config) {
    on_reload_change(now);
    if (closed_) return;
  }
  // What arrived meanwhile waits in the kernel: read before waiting on this worker's loop.
  client_drained_ = false;
  watching_client_ = false;
  read_client();
}

void ClientSession::post_read_client() {
  asio::post(client_.get_executor(), [self = shared_from_this()] {
    self->watching_client_ = false;
    if (!self->closed_) self->read_client();
  });
}

void ClientSession::read_client() {
  if (closed_) return;
  Step step(*worker_);
  // A buffer full of one message grows to that message's size at most, once its header is in.
  const std::size_t message_bytes =
      client_in_.full() ? protocol::decode_frame(client_in_.readable(), SIZE_MAX).needed : 0;
  auto space = client_in_.prepare(message_bytes);
  if (space.empty()) {
    // Not read meanwhile: one that hangs up is not noticed by a read.
    if (peer_hung_up(client_.socket())) {
      client_gone();
      return;
    }
    const bool may_fit_later = client_in_.refusal() == session::MemoryBudget::Take::Wait;
    if (!core_->waits_for_memory()) {
      PGV_LOG(Info, "client_waits_for_memory", {"client", id_}, {"user", user()},
              {"database", database()}, {"held", client_in_.capacity()},
              {"message_bytes", message_bytes}, {"may_fit_later", may_fit_later});
    }
    carry_out(core_->on_client_memory_refused(may_fit_later, now()), Source::Event);
    return;
  }
  core_->on_client_memory_granted(now());
  error_code ec;
  bool rest = true;
  const bool plain = uses_arrival_wait(client_);
  const auto into = asio::buffer(space.data(), space.size());
  const std::size_t n =
      plain ? read_some_noting_rest(client_.socket(), into, ec, rest) : client_.read_some(into, ec);
  if (client_.has_output()) {
    // TLS answered something while reading (an alert, a key update): it goes out first.
    const auto out = client_.take_output();
    if (client_writer_.write(client_.socket(), {}, out) == SocketWriter::Result::Backlog) {
      client_writer_.on_drained(drained_callback());
    }
  }
  if (ec == asio::error::would_block || ec == asio::error::try_again) {
    client_drained_ = plain;
    watch_client();
    return;
  }
  if (ec) {
    client_gone();
    return;
  }
  if (plain) {
    // The kernel holds nothing more (no bytes, not the client's end): only an arrival brings
    // more, and the wait for it is armed before anything else runs. A reset that came with these
    // bytes shows when the answer is written to the client (a failed write reads again); during
    // COPY FROM STDIN nothing is written to it until the end, so it is asked for here (TCP_INQ
    // tells of bytes and a FIN only), and a further read finds it.
    client_drained_ = !rest;
    hang_up_asked_ = false;
    if (client_drained_ && core_->copying_from_client() && peer_hung_up(client_.socket())) {
      client_drained_ = false;
    }
    if (client_drained_ && !client_arrival_armed_) arm_client_arrival();
  }
  client_in_.commit(n);
  worker_->counters.add_received(n);
  if (database_counters_)
    database_counters_->bytes_received.fetch_add(n, std::memory_order_relaxed);
  last_request_ = now();
  feed_client();
}

void ClientSession::feed_client() {
  if (closed_) return;
  if ((client_in_.empty() && !core_->has_own_input()) || !core_->wants_client_input() ||
      writers_busy()) {
    watch_client();
    return;
  }
  carry_out(core_->on_client_data(client_in_.readable(), now()), Source::Client);
}

void ClientSession::client_gone() {
  if (closed_) return;
  carry_out(core_->on_client_gone(), Source::Event);
  close();
}

void ClientSession::on_drain() {
  if (closed_ || !core_) return;
  // Reached through the worker's list: closing drops the writers' callbacks, which may be all
  // that holds the session.
  const auto self = shared_from_this();
  carry_out(core_->on_drain(), Source::Event);
}

void ClientSession::on_reload_change(const config::ConfigPtr& next) {
  if (closed_ || !core_) return;
  // Compared with its login: a later reload may have undone the change.
  const config::ReloadChange change = config::reload_change(*profile_->database, user(), *next);
  if (change == config::ReloadChange::None) return;
  const auto self = shared_from_this();
  carry_out(core_->on_reload_change(change), Source::Event);
}

void ClientSession::on_kill(std::string_view message) {
  if (closed_ || !core_) return;
  const auto self = shared_from_this();
  carry_out(core_->on_kill(message), Source::Event);
}

void ClientSession::on_host_retired(const config::Endpoint& host) {
  if (closed_ || !core_) return;
  const auto self = shared_from_this();
  Step step(*worker_);
  for (std::size_t id = 0; id < links_.size() && !closed_; ++id) {
    LinkIO& io = links_[id];
    if (!io.conn || !io.pool || io.pool->key().host != host) continue;
    PGV_LOG(Warn, "server_retired", {"client", id_}, {"server", io.conn->id},
            {"host", io.conn->state.name});
    carry_out(core_->on_server_lost(static_cast<session::LinkId>(id), now()), Source::Event);
  }
}

void ClientSession::on_stopped() {
  const auto self = shared_from_this();  // destroyed, if at all, once this returns
  checkout().waiting_self.reset();
  client_writer_.abandon();
  for (auto& io : links_)
    io.writer.abandon();
}

void ClientSession::close() {
  if (closed_) return;
  closed_ = true;
  // Callers hold the session too (every event handler does); this only stops the cycle.
  std::shared_ptr<ClientSession> waited;
  // The bytes held for its messages go back to the process-wide budget before the client can
  // see the close: a client that reconnects at once finds them available.
  client_in_.release();
  error_code ignored;
  client_.close(ignored);
  client_writer_.abandon();
  if (timer_) timer_->cancel();
  // False: a grant is on its way; on_granted() or acquire() gives it back.
  if (checkout_) {
    Checkout& c = *checkout_;
    if (c.wait_pool && !c.granted && c.wait_pool->cancel_wait(worker_->index, &c.waiter)) {
      c.wait_pool.reset();
      c.waiting = false;
      waited = std::move(c.waiting_self);
    }
    worker_->checkout_deadlines.remove(c.waiter);
    if (c.wait_timer) c.wait_timer->cancel();
  }
  for (auto& io : links_) {
    io.writer.abandon();
    // The core gave every server back before asking to close; anything left is closed.
    if (io.conn) give_back(std::move(io.conn), false, *io.pool);
  }
  if (listening_) {
    for (const auto& hub : listening_->hubs)
      hub->forget(listening_->sink.get());
    listening_->waiting.reset();
  }
  PGV_LOG(Info, "client_logout", {"client", id_}, {"user", user()}, {"database", database()});
}

// ---- Servers' sockets ------------------------------------------------------------------------

void ClientSession::watch_server(session::LinkId id) {
  LinkIO& io = links_[id];
  if (closed_ || !io.conn) return;
  // A socket whose write failed (a server that reset the connection while idle in the pool)
  // may have nothing more to announce: its read tells what happened.
  if (io.writer.failed()) io.drained = false;
  // Bytes that arrive from here on must not go unnoticed, whatever stops the read below.
  if (io.drained && !io.arrival_armed) arm_server_arrival(id);
  if (io.watching || !core_->wants_server_input(id)) return;
  // While the client has a backlog, the server's answers wait in the kernel.
  if (client_writer_.busy()) {
    pause_server(id);
    return;
  }
  io.watching = true;
  if (io.conn->stream.buffered() || (uses_arrival_wait(io.conn->stream) && !io.drained)) {
    // TLS holds a record already read from the socket, which will not become readable for it;
    // or the kernel may hold bytes no arrival will announce: read on the next turn.
    post_read_server(id);
    return;
  }
  if (uses_arrival_wait(io.conn->stream)) return;  // the armed arrival reads
  io.conn->stream.socket().async_wait(
      Socket::wait_read,
      [self = shared_from_this(), id, generation = io.generation](const error_code& ec) {
        if (id >= self->links_.size()) return;
        LinkIO& io = self->links_[id];
        if (io.generation != generation) return;  // that server was given back meanwhile
        io.watching = false;
        if (self->closed_ || !io.conn || ec == asio::error::operation_aborted) return;
        // Another error: the read sees it and reports the server lost.
        self->read_server(id);
      });
}

void ClientSession::arm_server_arrival(session::LinkId id) {
  LinkIO& io = links_[id];
  io.arrival_armed = true;
  async_wait_for_arrival(io.conn->stream.socket(), worker_->reactor,
                         with_exact_size_memory([self = shared_from_this(), id,
                                                 generation = io.generation](const error_code& ec) {
                           if (id >= self->links_.size()) return;
                           LinkIO& io = self->links_[id];
                           // Given back meanwhile (its wait was cancelled then): the link is
                           // another server's now.
                           if (io.generation != generation) return;
                           io.arrival_armed = false;
                           if (self->closed_ || !io.conn || ec == asio::error::operation_aborted)
                             return;
                           io.drained = false;
                           // Not wanted now: the next watch_server() reads.
                           if (!io.watching) return;
                           io.watching = false;
                           self->read_server(id);  // an error shows there
                         }));
}

void ClientSession::post_read_server(session::LinkId id) {
  asio::post(client_.get_executor(),
             [self = shared_from_this(), id, generation = links_[id].generation] {
               if (id >= self->links_.size() || self->links_[id].generation != generation) return;
               self->links_[id].watching = false;
               if (!self->closed_ && self->links_[id].conn) self->read_server(id);
             });
}

// Reads and carries out what the server sent while it has more, up to kServerReadsPerTurn reads
// (then the wait lets the worker's other sessions run first). Stops when the link's server is
// given back (after its ReadyForQuery in transaction pooling: no further read), when the client
// has a backlog (on_drained() comes back), or when the kernel has nothing more (a short read or
// would_block: a wait).
void ClientSession::read_server(session::LinkId id) {
  Step step(*worker_);
  const std::uint32_t generation = links_[id].generation;
  for (int reads = 0;; ++reads) {
    if (closed_ || id >= links_.size()) return;
    LinkIO& io = links_[id];
    if (io.generation != generation || !io.conn || !core_->wants_server_input(id)) return;
    if (client_writer_.busy()) {  // on_drained() comes back
      pause_server(id);
      return;
    }
    if (reads == kServerReadsPerTurn) {
      watch_server(id);
      return;
    }
    auto space = io.conn->in.prepare();
    error_code ec;
    std::size_t n = 0;
    bool rest = true;
    const bool plain = uses_arrival_wait(io.conn->stream);
    if (!space.empty()) {
      const auto into = asio::buffer(space.data(), space.size());
      n = plain ? read_some_noting_rest(io.conn->stream.socket(), into, ec, rest)
                : io.conn->stream.read_some(into, ec);
    }
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      io.drained = plain;
      watch_server(id);
      return;
    }
    if (ec || space.empty()) {
      // Server buffers have no memory budget, so they always grow; kept for safety.
      PGV_LOG(Warn, "server_lost", {"client", id_}, {"server", io.conn->id},
              {"host", io.conn->state.name},
              {"reason", space.empty() ? "no buffer space" : ec.message()});
      if (io.pool) distrust(*io.pool);
      carry_out(core_->on_server_lost(id, now()), Source::Event);
      return;
    }
    // Over TLS, a read that did not fill the space found the socket drained (an Asio wait
    // follows, which finds anything left). A plain read says whether the kernel holds more bytes
    // or the server's end (epoll reported that end together with these bytes and will not
    // report it again); a reset that came with them it does not count. So unless these bytes
    // completed the answer the server owed, the next read finds out (usually would_block,
    // which proves the kernel empty); bytes the server sent unasked (a FATAL before it hangs
    // up) are read again this way too.
    const bool was_due = core_->answer_due(id);
    io.conn->in.commit(n);
    carry_out(core_->on_server_data(id, io.conn->in.readable(), now()), Source::Server, id);
    if (plain ? rest : n == space.size()) continue;
    if (closed_ || id >= links_.size() || links_[id].generation != generation || !links_[id].conn) {
      return;
    }
    if (plain) {
      if (!was_due || core_->answer_due(id)) continue;
      // The answer is complete: a server reset right after it is found by the peek before its
      // next lend or when the next request reaches it (a failed write, or the reset's report).
      links_[id].drained = true;
    }
    watch_server(id);
    return;
  }
}

// The client has not taken what it was written: the server is not read until it has, and it
// must take some within limits.message_timeout_ms (the core's clock, restarted by progress).
void ClientSession::pause_server(session::LinkId id) {
  core_->set_server_paused(id, true, now());
  core_->client_progress(bytes_acked_by_peer(client_.socket().native_handle()), now());
  arm_timer();
}

// ---- Deadlines -------------------------------------------------------------------------------

void ClientSession::arm_timer() {
  if (closed_ || !core_) return;
  const auto at = core_->next_deadline();
  // Moved-later deadlines are found when the timer fires; only an earlier one re-arms it.
  if (at == session::Clock::time_point::max() || at >= timer_at_) return;
  if (!timer_) timer_ = std::make_unique<asio::steady_timer>(client_.get_executor());
  timer_at_ = at;
  timer_->expires_at(at);
  timer_->async_wait([self = shared_from_this()](const error_code& ec) {
    if (ec || self->closed_) return;
    Step step(*self->worker_);
    self->timer_at_ = session::Clock::time_point::max();
    if (self->client_writer_.busy()) {
      // What the client took since the last look restarts the clock of its paused servers.
      self->core_->client_progress(bytes_acked_by_peer(self->client_.socket().native_handle()),
                                   self->now());
    }
    self->carry_out(self->core_->on_timer(self->now()), Source::Event);
    self->arm_timer();
    // Nothing left to time (a client gone idle): it keeps no timer.
    if (self->timer_at_ == session::Clock::time_point::max()) self->timer_.reset();
  });
}

// ---- Checking out and giving back ------------------------------------------------------------

std::shared_ptr<pool::ServerPool> ClientSession::pool_for(const routing::Route& route) {
  if (pools_->generation != app_.topology_generation()) {
    // A reload changed the hosts: the database as the new configuration has it. Not when the
    // client cannot follow the reload (it leaves at the end of its transaction, on the pools
    // of its login): pools of another dbname, of a removed database or user, are not its.
    const auto now = app_.config();
    if (const auto* db = now->find_database(database());
        db &&
        config::reload_change(*profile_->database, user(), *now) == config::ReloadChange::None) {
      pools_ = app_.user_pools(*db, user());
    }
    // How reads are spread follows the reload too, for clients already connected.
    reads_ = now->routing.reads;
    load_balance_ = now->routing.load_balance;
  }
  const auto index = static_cast<std::size_t>(route.shard);
  if (index >= pools_->shards.size()) return nullptr;
  const UserPools::Shard& shard = pools_->shards[index];
  const health::ShardStatus& status = *shard.status;
  const int primary = status.primary();
  if (route.kind == routing::Route::Kind::Replica && reads_ != config::ReadsTo::Primary) {
    std::array<routing::ReplicaCandidate, 16> storage;
    std::size_t count = 0;
    for (std::size_t i = 0; i < shard.hosts.size() && i < status.size() && count < storage.size();
         ++i) {
      const health::HostStatus& host = status.host(i);
      const bool candidate = static_cast<int>(i) == primary
                                 ? reads_ == config::ReadsTo::Any
                                 : host.readable.load(std::memory_order_relaxed) &&
                                       host.lsn.load(std::memory_order_relaxed) >= route.after_lsn;
      if (!candidate) continue;
      const int in_use = load_balance_ == config::LoadBalance::LeastConnections
                             ? shard.hosts[i]->in_use(worker_->index)
                             : 0;
      storage[count++] = {i, in_use};
    }
    // xorshift64: a draw per read, no shared state.
    std::uint64_t& x = worker_->random_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const auto policy =
        load_balance_ == config::LoadBalance::RoundRobin ? routing::LoadBalance::RoundRobin
        : load_balance_ == config::LoadBalance::Random   ? routing::LoadBalance::Random
                                                         : routing::LoadBalance::LeastConnections;
    if (auto chosen =
            routing::choose_replica({storage.data(), count}, policy, worker_->replica_turn, x)) {
      return shard.hosts[*chosen];
    }
    // No replica can take it: the primary does (routing.reads = replicas falls back).
  }
  if (primary < 0 || static_cast<std::size_t>(primary) >= shard.hosts.size()) return nullptr;
  return shard.hosts[static_cast<std::size_t>(primary)];
}

bool ClientSession::lent_by_replica(const pool::ServerPool& pool, std::size_t shard) const {
  // The route's shard first: a lend looks at that shard's few hosts only.
  const auto of_shard = [&](const UserPools::Shard& s) -> std::optional<bool> {
    for (std::size_t i = 0; i < s.hosts.size(); ++i) {
      if (s.hosts[i].get() == &pool) return static_cast<int>(i) != s.status->checked_primary();
    }
    return std::nullopt;
  };
  if (shard < pools_->shards.size()) {
    if (const auto found = of_shard(pools_->shards[shard])) return *found;
  }
  for (const auto& s : pools_->shards) {
    if (const auto found = of_shard(s)) return *found;
  }
  return false;
}

std::unique_ptr<ServerConnection> ClientSession::usable(std::unique_ptr<pool::Connection> conn,
                                                        pool::ServerPool& pool) {
  auto server = as_server(std::move(conn));
  // A connection another worker handed over is still registered with that worker's loop.
  if (!server->adopt(worker_->context, worker_->index)) {
    PGV_LOG(Warn, "server_adopt_failed", {"server", server->id}, {"host", server->state.name});
    pool.discard(worker_->index, std::move(server));
    return nullptr;
  }
  if (now() - server->last_used_at >= kPeekIdleAfter && !server->idle_and_open()) {
    PGV_LOG(Info, "server_gone_while_idle", {"server", server->id}, {"host", server->state.name});
    pool.note_invalid();
    pool.discard(worker_->index, std::move(server));
    return nullptr;
  }
  return server;
}

// A server for the core's request. The usual answers come at once (an idle connection of this
// worker) or as a grant from the pool while the session waits; only opening a new connection or a
// pre-ping runs a coroutine.
void ClientSession::check_out(const routing::Route& route) {
  // The wait ends when a server is linked (link()) or the request fails (on_checkout_failed).
  if (Checkout& c = checkout(); c.started == session::Clock::time_point{}) c.started = now();
  if (app_.paused(database())) {
    asio::co_spawn(
        client_.get_executor(), wait_while_paused(route),
        [self = shared_from_this()](std::exception_ptr e) { log_failure(self->id_, e); });
    return;
  }
  checkout().pool = pool_for(route);
  if (runs_on_own_server(checkout().pool)) return;
  if (!checkout().pool) {
    hold(route);
    return;
  }
  check_out_from_pool();
}

asio::awaitable<void> ClientSession::wait_while_paused(routing::Route route) {
  auto self = shared_from_this();
  const auto deadline = now() + std::chrono::milliseconds(config().pool.checkout_timeout_ms);
  asio::steady_timer timer(client_.get_executor());
  while (!closed_ && app_.paused(database())) {
    if (checkout().cancelled) {
      fail_cancelled_request();
      co_return;
    }
    if (now() >= deadline) {
      end_checkout_wait();
      carry_out(
          core_->on_checkout_failed(
              "53300",
              "pgvalve: database \"" + database() +
                  "\" is paused (PAUSE or KILL on the admin console) for longer than "
                  "pool.checkout_timeout_ms (" +
                  std::to_string(config().pool.checkout_timeout_ms) + " ms); retry after RESUME",
              now()),
          Source::Client);
      co_return;
    }
    timer.expires_after(std::chrono::milliseconds(10));
    error_code ec;
    co_await timer.async_wait(await_ec(ec));
  }
  if (closed_) co_return;
  if (checkout().cancelled) {
    fail_cancelled_request();
    co_return;
  }
  check_out(route);
}

void ClientSession::hold(const routing::Route& route, std::shared_ptr<pool::ServerPool> failed) {
  if (Checkout& c = checkout(); c.hold_until == session::Clock::time_point::max()) {
    c.hold_until = now() + std::chrono::milliseconds(config().failover.hold_writes_ms);
    PGV_LOG(Info, "writes_held", {"client", id_}, {"database", database()},
            {"hold_writes_ms", config().failover.hold_writes_ms});
  }
  asio::co_spawn(client_.get_executor(), hold_for_primary(route, std::move(failed)),
                 [self = shared_from_this()](std::exception_ptr e) { log_failure(self->id_, e); });
}

asio::awaitable<void> ClientSession::hold_for_primary(routing::Route route,
                                                      std::shared_ptr<pool::ServerPool> failed) {
  auto self = shared_from_this();
  const auto failed_at = now();
  asio::steady_timer timer(client_.get_executor());
  for (;;) {
    if (closed_) co_return;
    // The client cancelled (Ctrl-C, a driver's timeout): the request never runs, as one
    // waiting in a pool's queue (a driver that retries would write twice).
    if (checkout().cancelled) {
      fail_cancelled_request();
      co_return;
    }
    auto pool = pool_for(route);
    if (pool && (pool != failed || now() - failed_at >= std::chrono::milliseconds(500))) {
      checkout().pool = std::move(pool);
      check_out_from_pool();
      co_return;
    }
    if (now() >= checkout().hold_until) break;
    timer.expires_after(std::chrono::milliseconds(20));
    error_code ec;
    co_await timer.async_wait(await_ec(ec));
  }
  checkout().hold_until = session::Clock::time_point::max();
  end_checkout_wait();
  carry_out(core_->on_checkout_failed(
                "57P03",
                "pgvalve: no primary is available for database \"" + database() +
                    "\" (down, or a failover or switchover is under way) after waiting " +
                    std::to_string(config().failover.hold_writes_ms) +
                    " ms (failover.hold_writes_ms); retry shortly, and see SHOW HOSTS",
                now()),
            Source::Client);
}

void ClientSession::distrust(const pool::ServerPool& pool) {
  for (const auto& shard : pools_->shards) {
    for (std::size_t i = 0; i < shard.hosts.size(); ++i) {
      if (shard.hosts[i].get() != &pool || static_cast<int>(i) == shard.status->primary()) continue;
      shard.status->distrust(i);
      app_.report_unreachable(pool.key().host);
    }
  }
}

bool ClientSession::retry_on_another_host(pool::ServerPool& failed) {
  const routing::Route& route = core_->pending_route();
  if (route.kind != routing::Route::Kind::Replica) return false;
  distrust(failed);
  auto next = pool_for(route);  // the replica is no longer a candidate
  if (runs_on_own_server(next)) return true;
  if (!next || next.get() == &failed) return false;
  PGV_LOG(Info, "read_moved", {"client", id_}, {"from", failed.key().host.to_string()},
          {"to", next->key().host.to_string()});
  checkout().pool = std::move(next);
  take(checkout_from(checkout().pool));
  return true;
}

void ClientSession::resume_own_server(std::uint32_t generation) {
  if (closed_ || links_.empty() || links_[0].generation != generation || !links_[0].conn) return;
  if (!core_->wants_server_input(0)) return;
  LinkIO& io = links_[0];
  if (!io.conn->in.readable().empty()) {
    carry_out(core_->on_server_data(0, io.conn->in.readable(), now()), Source::Server, 0);
  }
  if (!closed_ && links_[0].generation == generation) watch_server(0);
}

void ClientSession::describe(std::vector<ConnectionRow>& rows) {
  const auto wall = [](session::Clock::time_point t) {
    if (t == session::Clock::time_point{}) return std::chrono::system_clock::time_point{};
    return std::chrono::system_clock::now() -
           std::chrono::duration_cast<std::chrono::system_clock::duration>(session::Clock::now() -
                                                                           t);
  };
  ConnectionRow c;
  c.type = 'C';
  c.id = id_;
  c.user = user();
  c.database = database();
  c.state = core_                     ? std::string(session::state_name(core_->state()))
            : database() == "pgvalve" ? "admin_console"
                                      : "logging_in";
  c.addr = from_.to_string();
  error_code ec;
  const auto remote = client_.socket().remote_endpoint(ec);
  if (!ec) c.port = remote.port();
  c.connect_time = connected_at_;
  c.request_time = wall(last_request_);
  if (const TlsChannel* tls = client_.tls()) c.tls = tls->describe();
  for (const auto& io : links_) {
    if (!io.conn) continue;
    ConnectionRow s;
    s.type = 'S';
    s.id = io.conn->id;
    s.user = user();
    s.database = database();
    s.state = "active";
    s.addr = io.conn->host.host;
    s.port = io.conn->host.port;
    s.connect_time = wall(io.conn->created_at);
    s.request_time = c.request_time;
    s.host = io.conn->host.to_string();
    s.peer = id_;
    if (const TlsChannel* tls = io.conn->stream.tls()) s.tls = tls->describe();
    if (io.pool) {
      if (const auto* db = config().find_database(database())) {
        for (const auto& shard : db->shards) {
          if (shard.primary == io.conn->host ||
              std::find(shard.replicas.begin(), shard.replicas.end(), io.conn->host) !=
                  shard.replicas.end()) {
            s.shard = shard.name;
          }
        }
      }
    }
    c.host = s.host;
    c.shard = s.shard;
    c.peer = s.id;
    rows.push_back(std::move(s));
  }
  rows.push_back(std::move(c));
}

void ClientSession::end_checkout_wait() {
  if (!checkout_ || checkout_->started == session::Clock::time_point{}) return;
  const auto micros = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(now() - checkout().started).count());
  worker_->counters.record_checkout_wait(micros);
  if (database_counters_) {
    database_counters_->checkout_wait_micros.fetch_add(micros, std::memory_order_relaxed);
  }
  checkout().started = {};
}

bool ClientSession::runs_on_own_server(const std::shared_ptr<pool::ServerPool>& pool) {
  // Only session mode has a server of its own: in transaction mode another link is another
  // shard's part of the client's transaction, which waits for that shard's primary.
  if (config().pool.mode != config::PoolMode::Session) return false;
  const session::LinkId id = core_->pending_link();
  if (id == 0 || links_.empty() || !links_[0].conn) return false;
  if (pool && pool != links_[0].pool) return false;
  checkout().pool.reset();
  end_checkout_wait();
  carry_out(core_->on_checkout_failed({}, {}, now()), Source::Client);
  return true;
}

void ClientSession::check_out_from_pool() {
  const auto& settings = checkout().pool->settings(worker_->index);
  checkout().deadline = now() + std::chrono::milliseconds(settings.checkout_timeout_ms);
  take(checkout_from(checkout().pool));
}

pool::CheckoutResult ClientSession::checkout_from(const std::shared_ptr<pool::ServerPool>& pool) {
  checkout().waiter.home = pool_.get();  // counts this client as waiting, not active
  auto result = pool->checkout(worker_->index, &checkout().waiter, now());
  if (result.kind == pool::CheckoutKind::Wait) checkout().wait_pool = pool;
  return result;
}

void ClientSession::give_up(pool::ServerPool& pool, pool::CheckoutResult result) {
  switch (result.kind) {
    case pool::CheckoutKind::Idle:
      if (result.conn) give_back(as_server(std::move(result.conn)), true, pool);
      return;
    case pool::CheckoutKind::Create:
      pool.create_failed(worker_->index);
      return;
    case pool::CheckoutKind::Wait:
      // False: a grant is already on its way, and on_granted() gives it back.
      if (Checkout& c = checkout();
          c.wait_pool && !c.granted && c.wait_pool->cancel_wait(worker_->index, &c.waiter)) {
        c.wait_pool.reset();
      }
      return;
  }
}

// Carries out the pool's answer to a checkout.
void ClientSession::take(pool::CheckoutResult result) {
  pool::ServerPool& pool = *checkout().pool;
  for (;;) {
    switch (result.kind) {
      case pool::CheckoutKind::Idle: {
        const auto& settings = pool.settings(worker_->index);
        if (settings.pre_ping &&
            now() - result.conn->last_used_at >= std::chrono::seconds(settings.pre_ping_idle_s)) {
          asio::co_spawn(
              client_.get_executor(), check_out_slowly(checkout().pool, std::move(result)),
              [self = shared_from_this()](std::exception_ptr e) { log_failure(self->id_, e); });
          return;
        }
        if (auto server = usable(std::move(result.conn), pool)) {
          link(std::move(server), checkout().pool);
          return;
        }
        // It died while idle; the next one (each try discards one, so this ends).
        result = checkout_from(checkout().pool);
        continue;
      }
      case pool::CheckoutKind::Create:
        asio::co_spawn(
            client_.get_executor(), check_out_slowly(checkout().pool, std::move(result)),
            [self = shared_from_this()](std::exception_ptr e) { log_failure(self->id_, e); });
        return;
      case pool::CheckoutKind::Wait: {
        // on_granted(), or checkout_timed_out() at the deadline, ends it. Nothing else holds
        // the session meanwhile (the pool and the deadline list know it by address).
        Checkout& c = checkout();
        c.waiting = true;
        c.waiting_self = shared_from_this();
        worker_->checkout_deadlines.add(c.waiter, c.deadline, now() + kHangUpLookAfter);
        return;
      }
    }
  }
}

void ClientSession::on_granted(std::unique_ptr<pool::Connection> conn) {
  Step step(*worker_);
  Checkout& c = checkout();
  if (c.wait_timer) {  // acquire() waits; it takes the grant (and clears wait_pool)
    c.grant = std::move(conn);
    c.granted = true;
    c.wait_timer->cancel();
    return;
  }
  auto pool = std::move(c.wait_pool);
  if (!pool) pool = c.pool ? c.pool : pool_;
  pool::CheckoutResult result;
  result.kind = conn ? pool::CheckoutKind::Idle : pool::CheckoutKind::Create;
  result.conn = std::move(conn);
  if (closed_ || !c.waiting) {
    // Nobody waits any more: the connection (or the permit) goes straight back.
    const auto self = std::move(c.waiting_self);
    give_up(*pool, std::move(result));
    return;
  }
  c.waiting = false;
  const auto self = std::move(c.waiting_self);
  worker_->checkout_deadlines.remove(c.waiter);
  take(std::move(result));
}

// A CancelRequest for a request waiting for a server: it fails as PostgreSQL fails a cancelled
// statement, without running, wherever it waits (a pool's queue, a hold for a primary, a paused
// database, a server connection being opened or pre-pinged).
void ClientSession::cancel_waiting_request() {
  Step step(*worker_);
  Checkout& c = checkout();
  PGV_LOG(Info, "cancel_while_waiting", {"client", id_});
  // Whichever coroutine holds the request (acquire(), check_out_slowly(), hold_for_primary(),
  // wait_while_paused()) fails it with 57014 when it looks next.
  c.cancelled = true;
  if (c.wait_timer) {  // acquire() waits in the queue: woken, it fails the request
    c.wait_timer->cancel();
    return;
  }
  if (!c.waiting || !c.wait_pool || !c.wait_pool->cancel_wait(worker_->index, &c.waiter)) return;
  c.cancelled = false;
  const auto pool = std::move(c.wait_pool);
  c.waiting = false;
  const auto self = std::move(c.waiting_self);
  worker_->checkout_deadlines.remove(c.waiter);
  end_checkout_wait();
  carry_out(core_->on_checkout_failed("57014", kCancelledWhileWaiting, now()), Source::Client);
}

void ClientSession::fail_cancelled_request() {
  checkout().cancelled = false;
  checkout().hold_until = session::Clock::time_point::max();
  end_checkout_wait();
  carry_out(core_->on_checkout_failed("57014", kCancelledWhileWaiting, now()), Source::Client);
}

// A reload removed the host whose pool the request waited in (no longer queued there): the
// request has not started, so it is routed again, among the hosts the configuration lists now.
void ClientSession::route_waiting_request_again() {
  if (closed_ || !checkout_) return;
  Step step(*worker_);
  Checkout& c = checkout();
  if (c.wait_timer) {  // acquire() waits: it fails over to another host (check_out_slowly)
    c.pool_retired = true;
    c.wait_timer->cancel();
    return;
  }
  if (!c.waiting) return;
  c.waiting = false;
  c.wait_pool.reset();
  const auto self = std::move(c.waiting_self);
  worker_->checkout_deadlines.remove(c.waiter);
  PGV_LOG(Info, "request_rerouted", {"client", id_}, {"reason", "pool_retired"});
  check_out(core_->pending_route());
}

// The checkout deadline passed while waiting: the request gets 53300, the connection stays.
void ClientSession::checkout_timed_out() {
  Checkout& c = checkout();
  if (!c.waiting || !c.wait_pool || !c.wait_pool->cancel_wait(worker_->index, &c.waiter)) return;
  const auto pool = std::move(c.wait_pool);
  c.waiting = false;
  const auto self = std::move(c.waiting_self);
  pool->note_timeout(worker_->index);
  const auto& settings = pool->settings(worker_->index);
  end_checkout_wait();
  carry_out(core_->on_checkout_failed(
                "53300", checkout_timeout_message(*pool, settings.checkout_timeout_ms), now()),
            Source::Client);
}

// Whatever it does not return (a connection, a permit, a place in a queue) it gives back: when
// the session closes meanwhile, when the attempts run out, when the wait times out.
asio::awaitable<std::unique_ptr<ServerConnection>> ClientSession::acquire(
    std::shared_ptr<pool::ServerPool> pool, pool::CheckoutResult result, ServerFailure& failure) {
  const auto settings = pool->settings();
  // A request that already waited in the queue (check_out_from_pool() set its deadline) waits
  // no longer in all than checkout_timeout_ms.
  const auto deadline = checkout().deadline > now()
                            ? checkout().deadline
                            : now() + std::chrono::milliseconds(settings.checkout_timeout_ms);
  // Every idle connection may have died together (a server restart): try them all.
  const int attempts = settings.pool_size + settings.max_overflow + 2;
  for (int attempt = 0; attempt < attempts && !closed_; ++attempt) {
    if (result.kind == pool::CheckoutKind::Wait) {
      asio::steady_timer timer(client_.get_executor());
      checkout().wait_timer = &timer;
      checkout().granted = false;
      timer.expires_at(deadline);
      error_code ec;
      co_await timer.async_wait(await_ec(ec));
      // (Consumed here: a retry in another pool waits afresh.)
      if (std::exchange(checkout().pool_retired, false) && !checkout().granted) {
        // No longer queued: that pool's host is gone from the configuration.
        checkout().wait_timer = nullptr;
        checkout().wait_pool.reset();
        failure = {"08006", "pgvalve: a reload removed server " + pool->key().host.to_string() +
                                " while the request waited for it"};
        co_return nullptr;
      }
      if (!checkout().granted && !closed_ && checkout().wait_pool &&
          checkout().wait_pool->cancel_wait(worker_->index, &checkout().waiter)) {
        checkout().wait_timer = nullptr;
        checkout().wait_pool.reset();
        if (checkout().cancelled) {
          failure = {"57014", std::string(kCancelledWhileWaiting)};
          co_return nullptr;
        }
        pool->note_timeout(worker_->index);
        failure = {"53300", checkout_timeout_message(*pool, settings.checkout_timeout_ms)};
        co_return nullptr;
      }
      // Granted while timing out: the hand-over is on its way.
      while (!checkout().granted && !closed_) {
        timer.expires_at(session::Clock::time_point::max());
        co_await timer.async_wait(await_ec(ec));
      }
      checkout().wait_timer = nullptr;
      // Closed while queued: close() cancelled the wait, or on_granted() gives back the grant
      // still on its way.
      if (!checkout().granted) break;
      checkout().granted = false;
      checkout().wait_pool.reset();
      result.conn = std::move(checkout().grant);
      result.kind = result.conn ? pool::CheckoutKind::Idle : pool::CheckoutKind::Create;
      if (closed_) break;
    }
    if (result.kind == pool::CheckoutKind::Create) {
      auto fresh = co_await open_server(*pool, deadline, failure);
      if (!fresh && !closed_) {
        if (const auto why = refusal_of(failure); why != pool::OpenRefusal::None) {
          // No room for another connection: wait in the queue for one to come back (the pool
          // tries opening again later), as PgBouncer does, instead of failing at once.
          pool->create_refused(worker_->index, why, now());
          if (now() >= deadline) {
            pool->note_timeout(worker_->index);
            failure = {"53300", checkout_timeout_message(*pool, settings.checkout_timeout_ms)};
            co_return nullptr;
          }
          result = checkout_from(pool);
          --attempt;  // bounded by the deadline: a refusal holds opening for a while
          continue;
        }
      }
      if (!fresh) {
        pool->create_failed(worker_->index);
        co_return nullptr;
      }
      pool->created(worker_->index);
      co_return fresh;
    }
    auto server = usable(std::move(result.conn), *pool);
    if (server && settings.pre_ping &&
        now() - server->last_used_at >= std::chrono::seconds(settings.pre_ping_idle_s)) {
      // Each ping within the checkout's deadline: servers that never answer (a network black
      // hole, stopped backends) would hold the client 2 s per idle connection.
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now());
      if (left <= 0ms) {
        give_back(std::move(server), true, *pool);
        pool->note_timeout(worker_->index);
        failure = {"53300", checkout_timeout_message(*pool, settings.checkout_timeout_ms)};
        co_return nullptr;
      }
      ServerFailure ping_failure;
      Deadline ping_deadline(server->stream, std::min<std::chrono::milliseconds>(2s, left));
      pool->testing_started();
      const bool alive = co_await server->run_query("", ping_failure);
      pool->testing_ended();
      if (!alive) {
        PGV_LOG(Info, "server_pre_ping_failed", {"server", server->id});
        pool->note_invalid();
        pool->discard(worker_->index, std::move(server));
      }
    }
    if (server) co_return server;
    result = checkout_from(pool);
  }
  give_up(*pool, std::move(result));
  if (failure.message.empty()) {
    failure = {"08006", "pgvalve: could not get a working server connection; try again"};
  }
  co_return nullptr;
}

asio::awaitable<void> ClientSession::check_out_slowly(std::shared_ptr<pool::ServerPool> pool,
                                                      pool::CheckoutResult first) {
  auto self = shared_from_this();
  ServerFailure failure;
  auto server = co_await acquire(pool, std::move(first), failure);
  if (closed_) {
    if (server) give_back(std::move(server), true, *pool);
    co_return;
  }
  if (checkout().cancelled) {
    // Cancelled while a connection was opened or pre-pinged: the request does not run.
    if (server) give_back(std::move(server), true, *pool);
    fail_cancelled_request();
    co_return;
  }
  if (server) {
    link(std::move(server), pool);
    co_return;
  }
  // A replica that cannot serve goes out of the read's choice; not one whose pool merely had
  // no connection free in time (53300).
  if (refusal_of(failure) == pool::OpenRefusal::None && retry_on_another_host(*pool)) {
    co_return;
  }
  if (failure.host_unavailable() && (checkout().hold_until == session::Clock::time_point::max() ||
                                     now() < checkout().hold_until)) {
    // The primary cannot be reached, or is starting up or shutting down: the health checker
    // looks at once, and the request waits (failover.hold_writes_ms) for it to come back or for
    // another primary. So does a read no other host could take (no replica has replayed the
    // client's write yet, and the primary it fell back to is dying): hold_for_primary() routes
    // it afresh, to a replica once one has.
    app_.report_unreachable(pool->key().host);
    hold(core_->pending_route(), pool);
    co_return;
  }
  checkout().hold_until = session::Clock::time_point::max();
  end_checkout_wait();
  carry_out(core_->on_checkout_failed(failure.sqlstate, failure.message, now()), Source::Client);
}

asio::awaitable<std::unique_ptr<ServerConnection>> ClientSession::open_server(
    pool::ServerPool& pool, session::Clock::time_point deadline, ServerFailure& failure) {
  ServerLogin login;
  login.host = pool.key().host;
  login.user = user();
  // The configuration now, not the one of this client's login: the connection joins a pool
  // other clients share, and a reload may have rotated the password (its own login was checked
  // against the old one) or forbidden sending it without TLS.
  const config::ConfigPtr current = app_.config();
  const config::User* rotated = current->find_user(user());
  login.password = rotated ? rotated->server_password : profile_->user->server_password;
  // The pool's, which is the client's as long as it may use the pool (pool_for()).
  login.dbname = pool.key().dbname;
  login.max_message_bytes = static_cast<std::size_t>(current->limits.max_message_bytes);
  login.allow_insecure_auth = current->server_allow_insecure_auth;
  login.tls = app_.server_tls();
  const auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now());
  login.timeout = std::max(std::chrono::milliseconds(1000), remaining);
  auto fresh = co_await open_server_connection(login, failure);
  if (!fresh) {
    if (!failure.out_of_files) pool.note_login_failure(failure.sqlstate);
    PGV_LOG(Warn, "server_connect_failed", {"host", login.host.to_string()}, {"user", user()},
            {"sqlstate", failure.sqlstate}, {"reason", failure.message});
    co_return nullptr;
  }
  fresh->id = app_.next_server_id();
  fresh->home_worker = worker_->index;
  error_code ec;
  auto remote = fresh->stream.socket().remote_endpoint(ec);
  fresh->host_index = app_.cancels().host_index(remote);
  if (!pool.has_server_parameters()) pool.set_server_parameters(fresh->state.startup_parameters);
  PGV_LOG(Debug, "server_connected", {"server", fresh->id}, {"host", login.host.to_string()},
          {"user", user()}, {"database", database()});
  co_return fresh;
}

void ClientSession::link(std::unique_ptr<ServerConnection> server,
                         const std::shared_ptr<pool::ServerPool>& pool) {
  // (`pool` may be the checkout's: used before carry_out() below may end the checkout.)
  if (checkout_) {
    checkout_->hold_until = session::Clock::time_point::max();
    checkout_->cancelled = false;  // too late: the request runs; a cancel from now reaches it
  }
  end_checkout_wait();
  const session::LinkId id = core_->pending_link();
  // A statement or a transaction over several shards links one server per shard: room for all
  // of them at once, so that no LinkIO moves while a writer of another is busy.
  const std::size_t wanted =
      std::max<std::size_t>(id + 1u, core_->several_servers() ? router_.shard_count() : 1u);
  if (links_.size() < wanted) links_.resize(wanted);
  LinkIO& io = links_[id];
  io.conn = std::move(server);
  if (io.pool != pool) io.pool = pool;  // usually the same: no copy per transaction
  io.conn->state.replica = lent_by_replica(*pool, core_->pending_route().shard);
  io.watching = false;
  ++io.generation;
  // An idle server owes nothing: what it says next answers what is sent next, after the wait
  // that watch_server() arms below. (Bytes it sent while idle, if any, are read with that
  // answer; one that hung up while idle is found by the peek before the lend, or by the reset
  // its socket gets once the request reaches it.)
  io.arrival_armed = false;
  io.drained = uses_arrival_wait(io.conn->stream);
  // A cancel reaches the server running the client's request: the newest link, or every shard's
  // while a statement or a transaction runs on several.
  cancel_.link(io.conn->host_index, io.conn->key.process_id, io.conn->key.secret_key);
  cancel_.several.store(core_->several_servers(), std::memory_order_release);
  carry_out(core_->on_linked(io.conn->state, now()), Source::Client);
  if (!closed_ && id < links_.size() && links_[id].conn) watch_server(id);
}

void ClientSession::cancel_request(bool several) {
  // Runs on the session's worker, which this thread (the one that took the cancel) learns from
  // the registry: the socket's executor changes with a move, on the session's own thread.
  Worker* on = app_.cancels().worker_of(cancel_);
  if (!on) return;
  asio::post(on->context, [self = shared_from_this(), several, on] {
    // The session moved on before this ran: the cancel follows it. Once this worker is the
    // one the registry names, only this thread can move the session.
    if (self->app_.cancels().worker_of(self->cancel_) != on) {
      self->cancel_request(several);
      return;
    }
    if (self->closed_ || !self->core_) return;
    if (!several) {
      if (self->checkout_ && self->core_->state() == session::SessionState::WaitingForServer) {
        self->cancel_waiting_request();
      }
      // Otherwise linked since the registry found no server, which may be another client's by
      // the time a cancel reached it: dropped, as it was found.
      return;
    }
    for (const LinkIO& io : self->links_) {
      if (!io.conn) continue;
      // In flight before any of these servers can be given back (on this thread): each stays
      // with this client until PostgreSQL has taken the cancel, as a single server does.
      const std::uint64_t key = server_key_of(io.conn->key.process_id, io.conn->key.secret_key);
      CancelRegistry& cancels = self->app_.cancels();
      cancels.cancel_started(key);
      error_code ignored;
      asio::co_spawn(
          self->client_.get_executor(),
          send_cancel(CancelDestination{io.conn->stream.socket().remote_endpoint(ignored),
                                        io.conn->key.process_id, io.conn->key.secret_key}),
          [&cancels, key](std::exception_ptr) { cancels.cancel_done(key); });
    }
    PGV_LOG(Info, "cancel_forwarded_to_shards", {"client", self->id_});
  });
}

// Parts of two-phase commits left prepared on lost servers go to the process's resolver.
void ClientSession::hand_over(const std::vector<session::PreparedPart>& parts) {
  for (const session::PreparedPart& part : parts) {
    if (!profile_->database || part.shard >= profile_->database->shards.size()) continue;
    app_.prepared_parts().add({database(), profile_->database->dbname, user(),
                               profile_->database->shards[part.shard].name, std::string(part.gid()),
                               part.commit, part.follow});
  }
}

void ClientSession::carry_out_link_op(const LinkOp& op) {
  if (op.link >= links_.size() || !links_[op.link].conn) return;
  if (op.kind == LinkOp::Kind::Read) {
    watch_server(op.link);
    return;
  }
  LinkIO& io = links_[op.link];
  auto server = std::move(io.conn);
  ++io.generation;
  // Bytes not written yet (or a write that failed part-way) would reach whoever uses the server
  // next, or run into pgvalve's own clean-up queries: such a server is closed instead.
  const bool unsent = io.writer.busy() || io.writer.failed();
  // Usually nothing waits on the socket by now (the answer's arrival completed the wait): the
  // cancel, a lock of the reactor's, is then skipped.
  const bool waited_on = io.arrival_armed || io.watching || unsent;
  io.watching = false;
  io.arrival_armed = false;  // cancelled below
  io.drained = false;
  io.writer.abandon();
  cancel_.unlink();
  cancel_.several.store(core_->several_servers(), std::memory_order_release);
  // A session-mode client's own server is the cancel target again once its replica goes, and
  // is read again (after this step: its bytes go to the core then).
  if (op.link != 0 && links_[0].conn) {
    const ServerConnection& own = *links_[0].conn;
    cancel_.link(own.host_index, own.key.process_id, own.key.secret_key);
    asio::post(client_.get_executor(),
               [self = shared_from_this(), generation = links_[0].generation] {
                 self->resume_own_server(generation);
               });
  }
  error_code ignored;
  if (waited_on) server->stream.cancel(ignored);  // the wait armed on it belongs to this link
  LinkOp::Kind kind = op.kind;
  if (unsent && (kind == LinkOp::Kind::Release || kind == LinkOp::Kind::CleanAndRelease)) {
    kind = LinkOp::Kind::Close;
  }
  switch (kind) {
    case LinkOp::Kind::Release:
      give_back(std::move(server), true, *io.pool);
      return;
    case LinkOp::Kind::Close:
      PGV_LOG(Info, kind == op.kind ? "server_closed" : "server_closed_unsent", {"client", id_},
              {"server", server->id});
      give_back(std::move(server), false, *io.pool);
      return;
    case LinkOp::Kind::CancelAndClose:
      // The query may still run: stop it before closing, or it runs on for nobody.
      asio::co_spawn(client_.get_executor(),
                     send_cancel(CancelDestination{server->stream.socket().remote_endpoint(ignored),
                                                   server->key.process_id, server->key.secret_key}),
                     asio::detached);
      PGV_LOG(Info, "server_closed_dirty", {"client", id_}, {"server", server->id});
      give_back(std::move(server), false, *io.pool);
      return;
    case LinkOp::Kind::CleanAndRelease:
      // Runs on after the client left: the completion handler keeps this session alive.
      ++cleaning_;
      asio::co_spawn(client_.get_executor(),
                     clean_and_release(std::move(server), io.pool, std::string(op.sql[0]),
                                       std::string(op.sql[1])),
                     [self = shared_from_this()](std::exception_ptr e) {
                       --self->cleaning_;
                       log_failure(self->id_, e);
                     });
      return;
    case LinkOp::Kind::Read:
      return;  // carried out above
  }
}

asio::awaitable<void> ClientSession::clean_and_release(std::unique_ptr<ServerConnection> server,
                                                       std::shared_ptr<pool::ServerPool> pool,
                                                       std::string sql1, std::string sql2) {
  Deadline deadline(server->stream, 5s);
  ServerFailure failure;
  bool clean = co_await server->run_query(sql1, failure);
  if (clean && !sql2.empty()) clean = co_await server->run_query(sql2, failure);
  clean = clean && !deadline.expired();
  if (sql1 == "ROLLBACK") {
    PGV_LOG(Info, "server_rolled_back", {"client", id_}, {"server", server->id});
  } else if (sql1.ends_with("'") && sql1.find(" PREPARED '") != std::string::npos) {
    // A write over several shards whose client left: its part here was decided after it.
    PGV_LOG(Info, "prepared_part_decided", {"client", id_}, {"server", server->id},
            {"statement", sql1}, {"ok", clean ? "true" : "false"});
  }
  if (!clean) {
    PGV_LOG(Info, "server_closed_dirty", {"client", id_}, {"server", server->id});
  }
  give_back(std::move(server), clean, *pool);
}

namespace {

// A cancel meant for the client that just gave `server` back is still on its way to PostgreSQL:
// lent now, the server could run another client's query when the cancel lands. It goes back to
// the pool once PostgreSQL has taken the cancel (or the cancel gave up, within 5 s).
asio::awaitable<void> release_after_cancel(CancelRegistry& cancels,
                                           std::unique_ptr<ServerConnection> server,
                                           std::shared_ptr<pool::ServerPool> pool, int worker,
                                           std::uint64_t key) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  const auto until = std::chrono::steady_clock::now() + 6s;
  while (cancels.being_cancelled(key) && std::chrono::steady_clock::now() < until) {
    timer.expires_after(1ms);
    error_code ec;
    co_await timer.async_wait(await_ec(ec));
  }
  PGV_LOG(Debug, "server_held_for_cancel", {"server", server->id});
  auto closed = pool->checkin(worker, std::move(server), std::chrono::steady_clock::now());
  if (closed) PGV_LOG(Debug, "server_recycled", {"server", closed->id});
}

}  // namespace

void ClientSession::give_back(std::unique_ptr<ServerConnection> server, bool clean,
                              pool::ServerPool& pool) {
  server->in.shrink_if_empty();
  const std::uint64_t key = server_key_of(server->key.process_id, server->key.secret_key);
  if (clean && server->in.empty() && app_.cancels().being_cancelled(key)) [[unlikely]] {
    asio::co_spawn(client_.get_executor(),
                   release_after_cancel(app_.cancels(), std::move(server), pool.shared_from_this(),
                                        worker_->index, key),
                   [id = id_](std::exception_ptr e) { log_failure(id, e); });
    return;
  }
  if (clean && server->in.empty()) {
    auto closed = pool.checkin(worker_->index, std::move(server), now());
    if (closed) PGV_LOG(Debug, "server_recycled", {"server", closed->id});
  } else {
    pool.discard(worker_->index, std::move(server));
  }
}

// ---- LISTEN through the hub ----------------------------------------------------------------

void ClientSession::hub_request(const session::HubRequest& request) {
  if (request.kind == session::HubRequest::Kind::None && !listening_) return;
  if (!listening_) {
    listening_ = std::make_unique<Listening>();
    // The user as the configuration has it now (a reload may have rotated its password).
    const config::User* rotated = app_.config()->find_user(user());
    listening_->hubs =
        app_.listen_hubs_for(*profile_->database, rotated ? *rotated : *profile_->user);
    listening_->sink = std::make_shared<Sink>(weak_from_this(), client_.get_executor());
  }
  const std::shared_ptr<NotificationSink>& sink = listening_->sink;
  ListenHub::Done done;
  if (core_->state() == session::SessionState::WaitingForHub) {
    // Nothing else holds the session while it waits for the hub's answer.
    listening_->waiting = shared_from_this();
    // Runs on the hub's thread: hold the session only weakly there, so that its last reference
    // (and its destruction) stays on its own worker.
    done = [weak = weak_from_this(),
            executor = client_.get_executor()](std::optional<HubError> error) {
      asio::post(executor, [weak, error = std::move(error)] {
        auto self = weak.lock();
        if (!self) return;
        if (self->listening_) self->listening_->waiting.reset();
        if (self->closed_) return;
        std::optional<std::string_view> e;
        std::string_view sqlstate;
        if (error) {
          e = error->message;
          sqlstate = error->sqlstate;
        }
        self->carry_out(self->core_->on_hub_done(e, sqlstate), Source::Event);
      });
    };
  }
  // Every shard's hub answers (on the control thread); the client hears once all did, with the
  // first error. A LISTEN that failed on one shard is taken back on the others, so that the
  // client, told it does not listen, hears nothing.
  if (done && listening_->hubs.size() > 1) {
    struct Answers {
      std::size_t left;
      std::optional<HubError> error;
      ListenHub::Done done;
    };
    auto answers = std::make_shared<Answers>(Answers{listening_->hubs.size(), {}, std::move(done)});
    const bool listen = request.kind == session::HubRequest::Kind::Listen;
    done = [answers, listen, hubs = listening_->hubs, sink = sink.get(),
            channel = request.channel](std::optional<HubError> error) {
      if (error && !answers->error) answers->error = std::move(error);
      if (--answers->left > 0) return;
      if (listen && answers->error) {
        for (const auto& hub : hubs)
          hub->unlisten(sink, channel, nullptr);
      }
      answers->done(std::move(answers->error));
    };
  }
  for (const auto& hub : listening_->hubs) {
    switch (request.kind) {
      case session::HubRequest::Kind::Listen:
        hub->listen(sink, request.channel, done);
        break;
      case session::HubRequest::Kind::Unlisten:
        hub->unlisten(sink.get(), request.channel, done);
        break;
      case session::HubRequest::Kind::UnlistenAll:
        hub->unlisten_all(sink.get(), done);
        break;
      case session::HubRequest::Kind::None:
        break;
    }
    // LISTEN or UNLISTEN of hub channels committed on a server: the hub stops delivering them.
    for (const auto& channel : request.dropped)
      hub->unlisten(sink.get(), channel, nullptr);
  }
}

// An empty `message`: more than the client's cap waited for its worker (Sink::deliver).
void ClientSession::deliver_notification(std::string_view message) {
  if (closed_ || !core_) return;
  const std::size_t unsent =
      message.empty() ? session::kMaxQueuedNotificationBytes + 1 : client_writer_.backlog();
  carry_out(core_->on_notification(message, unsent), Source::Event);
}

void ClientSession::hub_lost() {
  if (closed_ || !core_) return;
  carry_out(core_->on_hub_lost(
                "pgvalve: the shared LISTEN connection to the server was lost, so notifications "
                "may have been missed; reconnect and LISTEN again"),
            Source::Event);
}

}  // namespace pgvalve::proxy
