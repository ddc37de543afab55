// The decisions of one client session, without I/O: fed the client's bytes, the linked servers'
// bytes and events (a server linked, a timer, a notification, the client gone), it returns
// Actions for the I/O layer (proxy/client_session.cpp) to carry out. Everything a session
// decides lives here:
//  - framing of client input: a message type the client may not send is refused on its first
//    byte, an invalid length on its header, a partial message gets a deadline;
//  - what each pool mode makes of a request: forwarded in place, rewritten (named prepared
//    statements get shared server-side names and are prepared again where the client lands),
//    answered without a server (Parse between transactions, LISTEN through the shared listening
//    connection, refusals), or refused;
//  - which server a request needs (the Route a routing::Router returns) and when a server is
//    given back;
//  - following session settings (SET, RESET, set_config, SET ROLE, ... through either protocol,
//    inside transactions and savepoints) and turning the difference between a client's settings
//    and a server's into SQL; session state that cannot be replayed pins the server;
//  - matching each server message with the request it answers, to drop pgvalve's own answers
//    and insert the ones it made;
//  - per-client caps, and the deadlines of a partial message, a silent server, a client idle in
//    a transaction.
// The state (state.h) is one value changed in one place, enter().
#pragma once

#include <cassert>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "config/config.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "protocol/pending_responses.h"
#include "protocol/prepared_statements.h"
#include "routing/client_text.h"
#include "routing/router.h"
#include "routing/statement.h"
#include "session/actions.h"
#include "session/server_state.h"
#include "session/settings.h"
#include "session/settings_sync.h"
#include "session/state.h"
#include "session/statement_changes.h"
#include "stats/query_stats.h"

namespace pgvalve::session {

using Clock = std::chrono::steady_clock;

// What a session needs from the configuration; copied at login.
struct SessionOptions {
  config::PoolMode mode = config::PoolMode::Transaction;
  // This pgvalve process, in the names of its two-phase commits (two_phase.h).
  std::uint32_t instance = 0;
  std::size_t max_message_bytes = 256u << 20;
  std::size_t max_prepared_statements = 500;  // per server connection (LRU)
  bool pin_session_state = true;
  std::chrono::milliseconds query_timeout{0};             // 0: off
  std::chrono::milliseconds idle_transaction_timeout{0};  // 0: off
  std::chrono::milliseconds message_timeout{10000};       // 0: off
  std::chrono::milliseconds sync_timeout{5000};
  // A server message larger than this that pgvalve needs only the type of (a row, COPY data, a
  // notice) passes through as it arrives instead of being held whole. Smaller ones are held,
  // so a server dying in the middle of one still leaves a clean stream for an error.
  std::size_t stream_server_messages_above = 1u << 20;
  // routing.read_your_writes (only when the router splits reads from writes).
  config::ReadYourWrites read_your_writes = config::ReadYourWrites::Lsn;
  std::chrono::milliseconds read_your_writes_window{2000};

  static SessionOptions from(const config::Config& config);
};

// Transient memory a session uses only while it has work: scratch for messages pgvalve writes,
// the chunk lists of Actions, the per-server bookkeeping. Borrowed from a per-worker pool while
// the session is busy and given back when it is idle, so an idle client holds none of it and a
// busy worker allocates nothing per message.
struct Workspace;
// Defined in session_internal.h.
struct Note;
struct Link;
struct Flight;
struct Review;
struct HubReply;
struct RequestText;
class Scatter;
class BindParams;

// One workspace pool per worker thread; not thread-safe. It also keeps one copy of each set of
// startup settings its sessions share (most clients of an application log in with the same).
class WorkspacePool {
 public:
  WorkspacePool();
  ~WorkspacePool();
  WorkspacePool(const WorkspacePool&) = delete;
  WorkspacePool& operator=(const WorkspacePool&) = delete;
  std::unique_ptr<Workspace> take();
  void give_back(std::unique_ptr<Workspace> workspace);
  std::size_t spare() const { return spare_.size(); }
  // Once a second or so: spares beyond what the last two periods used at their busiest go.
  void sweep();
  // The shared copy of `settings`.
  std::shared_ptr<const Settings> share(Settings settings);
  std::size_t shared_settings_known() const { return shared_settings_.size(); }

  // A server refused to bind a shared server-side statement because a table it reads changed
  // its result type since it was prepared (0A000, "cached plan must not change result type"):
  // the statements of that hash prepared until `at` on every server are stale too, and each is
  // prepared again at its next use by a client that prepared it after `at`; a client that
  // prepared it before gets the error at each Bind, as on PostgreSQL. Told to `shared` too.
  void statement_changed(std::uint64_t hash, std::int64_t at);
  // When a statement of `hash` was last found stale, here or by another worker (0: never).
  std::int64_t statement_changed_at(std::uint64_t hash) {
    if (shared_changes_ && shared_changes_->generation() != shared_generation_) {
      shared_generation_ = shared_changes_->copy_to(changed_statements_);
    }
    if (changed_statements_.empty()) return 0;
    auto it = changed_statements_.find(hash);
    return it == changed_statements_.end() ? 0 : it->second;
  }
  // The process's record, which outlives this pool (App's); none: this worker's only.
  void share_statement_changes(StatementChanges* shared) { shared_changes_ = shared; }

 private:
  StatementChangeTimes changed_statements_;
  StatementChanges* shared_changes_ = nullptr;
  std::uint64_t shared_generation_ = 0;
  static constexpr std::size_t kFirstSweep = 256;
  // As many workspaces are kept as sessions held at once lately (at least kMinSpares, at most
  // kMaxSpares): under steady load every request finds one, and none is built and freed per
  // transaction; after the load drops they go within two sweeps.
  static constexpr std::size_t kMinSpares = 8;
  static constexpr std::size_t kMaxSpares = 256;
  std::size_t keep() const;
  std::vector<std::unique_ptr<Workspace>> spare_;
  std::size_t in_use_ = 0;
  std::size_t peak_ = 0;           // most in use at once since the last sweep
  std::size_t previous_peak_ = 0;  // ... in the period before
  std::unordered_map<std::uint64_t, std::weak_ptr<const Settings>> shared_settings_;
  std::size_t next_sweep_ = kFirstSweep;
};

class Session {
 public:
  // `options` and `recorder` (may be null: no statistics) outlive the session.
  Session(const SessionOptions& options, const routing::Router& router, WorkspacePool& workspaces,
          const stats::Recorder* recorder = nullptr);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  SessionState state() const { return state_; }
  config::PoolMode mode() const { return options_.mode; }

  // ---- Login -------------------------------------------------------------------------------
  // Authentication succeeded. `startup` holds the client's startup parameters (user, database
  // and options -c included; they are sorted out here), `defaults` the pool's server parameters,
  // `key` the BackendKeyData pgvalve gives the client. When `server` is given (session mode, or
  // the pool's first connection), it is linked as link 0 and its settings made the client's
  // before the login reply; otherwise the reply goes out at once.
  const Actions& start(const std::vector<std::pair<std::string, std::string>>& startup,
                       std::shared_ptr<const ServerParameters> defaults,
                       protocol::BackendKeyData key, ServerState* server, Clock::time_point now);

  // ---- Client input ------------------------------------------------------------------------
  // `input` is everything received from the client and not yet consumed. Call again with the
  // same input after resume_client.
  const Actions& on_client_data(std::string_view input, Clock::time_point now);
  // The checkout asked for by `check_out` found `server`; it is linked as pending_link().
  const Actions& on_linked(ServerState& server, Clock::time_point now);
  // It did not: the waiting request gets this error; the client stays connected. In session
  // mode a read that was to go to a replica runs on the client's own server instead (the I/O
  // layer says so this way too when no replica can take it).
  const Actions& on_checkout_failed(std::string_view sqlstate, std::string_view message,
                                    Clock::time_point now);
  // The client's buffer may not grow now (limits.message_memory_bytes is held by messages still
  // being received). `may_fit_later`: the message would fit once others give memory back; the
  // client is then not read until it does (retried every kMemoryRetry), up to
  // limits.message_timeout_ms, then refused (53400). Otherwise it is refused at once.
  const Actions& on_client_memory_refused(bool may_fit_later, Clock::time_point now);
  // The buffer grew: the client is read as before, and the time it waited for memory does not
  // count against its message's deadline.
  void on_client_memory_granted(Clock::time_point now) {
    if (!memory_wait_) return;
    if (partial_) partial_since_ += now - memory_wait_since_;
    memory_wait_ = false;
    memory_retry_due_ = false;
  }
  bool waits_for_memory() const { return memory_wait_; }
  static constexpr std::chrono::milliseconds kMemoryRetry{20};

  // ---- Server input ------------------------------------------------------------------------
  // `input`: everything received from the link's server and not yet consumed.
  const Actions& on_server_data(LinkId link, std::string_view input, Clock::time_point now);

  // ---- Events (their client bytes come in `outbox`) ----------------------------------------
  const Actions& on_server_lost(LinkId link, Clock::time_point now);
  // The shared listening connection answered the hub request (an error message, or none).
  // `sqlstate`: the server's, when it refused the LISTEN; 08006 when the connection failed.
  const Actions& on_hub_done(std::optional<std::string_view> error,
                             std::string_view sqlstate = "08006");
  // The hub lost its connection to the server while the client listened: closed with FATAL
  // 08006 `message` (notifications may have been missed).
  const Actions& on_hub_lost(std::string_view message);
  // A NotificationResponse for the client from the listen hub; `unsent` is what the client
  // has not read yet of what was written to it.
  const Actions& on_notification(std::string_view message, std::size_t unsent);
  const Actions& on_timer(Clock::time_point now);
  // The client closed its connection or the I/O layer lost it: give every server back.
  const Actions& on_client_gone();
  // Shutdown: leave at the next transaction boundary (now, when between transactions).
  const Actions& on_drain();
  // A reload changed the client's login in a way its session cannot follow (`change`: where its
  // keys live, its database on the servers, or the database or user is gone): it leaves at the next
  // transaction boundary, and a request that has not reached any server is not run — now, or
  // when it would be routed.
  const Actions& on_reload_change(config::ReloadChange change);
  // An operator disconnects the client (KILL, KILL_CLIENT): it is told `message` (57P01) and
  // its servers are given back or closed as when a client leaves mid-transaction.
  const Actions& on_kill(std::string_view message);

  // pgvalve stops reading the link's server while the client has not read what it got (and
  // starts again once it has): that time is not the server's silence (query_timeout). A client
  // that takes nothing of it for limits.message_timeout_ms is disconnected (08P01) and the
  // server cancelled and closed: it would hold the server for as long as it liked.
  void set_server_paused(LinkId link, bool paused, Clock::time_point now);
  // How many bytes written to the client it has taken so far (any count that grows as it reads:
  // the I/O layer's TCP_INFO bytes_acked), told when a link is paused and when a timer fires
  // while one is: a count that moved restarts the links' message_timeout clock.
  void client_progress(std::uint64_t taken, Clock::time_point now);
  // pgvalve stops reading the client while a server has not taken what it was sent (and starts
  // again once it has): that time is not the client's silence (idle_transaction_timeout).
  void set_client_held(bool held, Clock::time_point now) {
    if (client_held_ && !held) client_activity_ = now;
    client_held_ = held;
  }

  // ---- What the I/O layer waits for ---------------------------------------------------------
  // The earliest deadline (partial message, silent server, idle in transaction, settings sync);
  // Clock::time_point::max() when none.
  Clock::time_point next_deadline() const;
  bool wants_client_input() const;
  // The core has a request of its own to plan (a read being retried): call on_client_data()
  // even when the client sent nothing new.
  bool has_own_input() const;
  bool wants_server_input(LinkId link) const;
  // The link's server owes answers to requests already sent to it.
  bool answer_due(LinkId link) const;
  bool linked(LinkId link) const;
  std::size_t link_count() const;
  bool pinned() const { return pinned_; }
  // The route of the request waiting for a checkout (WaitingForServer), and the link its
  // server becomes: 0, or 1 for a read a session-mode client sends to a replica while it keeps
  // its own server as link 0.
  const routing::Route& pending_route() const;
  LinkId pending_link() const;
  // A read over several shards is being carried out: links 0 .. n-1 are its shards' servers.
  bool scattering() const;
  // The client streams COPY data to a server or to the shards: pgvalve writes it nothing until
  // the COPY ends.
  bool copying_from_client() const;
  // The client ended a COPY FROM STDIN (CopyDone or CopyFail) and its answer, over several
  // shards its commit, is still to come; or it sent Terminate behind such a COPY. The COPY runs
  // to its end as on PostgreSQL, which finishes a COPY before it reads what follows: the I/O
  // layer does not take the client's hang-up meanwhile for a client gone mid-request.
  bool finishing_copy() const { return close_when_answered_ || copy_being_answered(); }
  // The client's request may run on any of several linked servers (a statement over several
  // shards, a transaction that spans shards): a cancel goes to each of them.
  bool several_servers() const;
  // A read-your-writes mark no replica reaches: the server was lost before it told pgvalve the
  // WAL position after the client's write, so only the primary is known to have that write.
  static constexpr std::uint64_t kUnknownWriteLsn = ~std::uint64_t{0};
  // The WAL position the client's reads of `shard` must see (read_your_writes = lsn); 0 before
  // any write there, kUnknownWriteLsn after a write whose position was never learnt.
  std::uint64_t read_your_writes_lsn(std::uint16_t shard = 0) const {
    const auto& lsns = extras().write_lsns;
    return shard < lsns.size() ? lsns[shard] : 0;
  }
  // Nothing is in flight and no server is linked: the session holds only its durable state.
  bool idle() const { return state_ == SessionState::Idle; }
  // Gives transient memory back to the worker's pool; call when the I/O layer has finished
  // every write of the last Actions and parks the client.
  void trim();
  // Statistics a step left until its writes were done (a statement's fingerprint, an execution
  // and a transaction to record), so that they never delay the bytes. The I/O layer calls it
  // after a step's writes and before it drops the bytes the step consumed: the fingerprint reads
  // the statement there.
  void account() {
    if (accounting_due_) settle_accounting();
  }
  // Between transactions, after trim(), a session holds nothing of its worker's: it may move to
  // another worker, whose workspace pool it borrows from from then on.
  bool holds_workspace() const { return work_ != nullptr; }
  void move_to(WorkspacePool& workspaces) {
    assert(!work_);
    workspaces_ = &workspaces;
  }

  // For SHOW CLIENTS and tests.
  const Settings& client_settings() const { return client_settings_; }
  std::size_t prepared_statement_count() const;
  // Unique in the process: marks what this session left on a server (ServerState).
  std::uint64_t identity() const { return identity_; }
  std::size_t listen_channel_count() const { return extras().listen_channels.size(); }

 private:
  // ---- state ----
  void enter(SessionState next);
  // Inline: the everyday transaction asks for it a score of times.
  Workspace& work() { return work_ ? *work_ : take_workspace(); }
  Workspace& take_workspace();
  Actions& client_actions();
  Actions& event_actions();
  Link& link(LinkId id);
  Link* linked_link();
  LinkId id_of(const Link& l);
  void settle(Link& l, LinkId id, Actions& out);

  // ---- login and settings ----
  // False when the login sets more than kMaxClientSettings (it stops there: each setting is
  // looked for among those before it).
  bool absorb_startup(const std::vector<std::pair<std::string, std::string>>& startup);
  void append_login_reply(std::string& out);
  // ParameterStatus for each reported setting the client's session changed since it was told.
  void report_settings(std::string& out);
  // `own_changes`: the server has been this client's since its last sync (session mode, or
  // pinned), so what the client changed in ways pgvalve cannot follow is the client's own.
  bool settings_match(const ServerState& server, bool own_changes = false) const;
  std::uint64_t settings_fingerprint() const;
  // Queues pgvalve's own query making the link's server settings the client's into `out`;
  // false when none is needed.
  bool start_sync(Link& l, std::string& out, Clock::time_point now, bool own_changes = false);
  void finish_sync(Link& l, bool ok, Actions& out);
  void read_on_primary_instead(Link& l, std::string_view refused, Actions& out);
  void restore_startup_settings();

  // ---- client requests (client_flight.cpp) ----
  const Actions& plan_client(std::string_view input, Clock::time_point now);
  void plan_on_link(Link& l, std::string_view frames, bool terminate, Actions& out,
                    Clock::time_point now, bool retry);
  // The link's server died with a request that may run again elsewhere (an autocommit read on
  // a replica, nothing of its answer sent yet): it is checked out again.
  bool retry_elsewhere(Link& l, LinkId id, Actions& out);
  bool retryable(const Link& l) const;
  bool unsend_cut_read(Link& l);
  // Session mode: the client's own server (link 0) is between transactions; a read the router
  // sends to a replica is checked out as link 1, when nothing of the session's state is needed
  // to answer it. True when a checkout was asked for.
  bool route_away_from_own_server(std::string_view frames, Link& own, Actions& out);
  // Holding when a server is still linked, else Idle.
  void enter_between_requests();
  bool check_partial(std::string_view rest, Actions& out, Clock::time_point now);
  bool answer_listen_locally(Flight& flight, Actions& out);
  const protocol::PreparedStatement* bound_statement(const protocol::Frame& f) const;
  // `named`: the flight may also bind a named statement the client prepared earlier (asyncpg
  // runs every statement so).
  bool local_flight(std::string_view input, std::string_view& sql, HubReply& reply,
                    bool named = false) const;
  bool answer_route_setting(std::string_view input, char tx_status, Actions& out);
  // The first statement text of the client's next request (a Query, or the text of the
  // statement a Parse/Bind names) and the Bind that follows it; sharded databases skip a BEGIN at
  // the front of an extended flight, since the statement after it names the shard.
  RequestText request_text(Flight& flight);
  bool describes_statements(std::string_view frames) const;
  routing::Route on_any_of(std::string_view sql, std::uint64_t shards) const;
  routing::Route route_request(const RequestText& request);
  // What routes a statement besides its text: the client's preference and defaults, its recent
  // writes, its shard key.
  routing::RouteContext route_context() const;
  // How the client's text reads (routing/client_text.h), from its client_encoding and
  // standard_conforming_strings; worked out again only when its settings changed.
  const routing::TextReading& text_reading() const;
  // `sql` reads as written (routing::reads_as_written): always, for nearly every client.
  bool reads_as_written(std::string_view sql) const {
    const routing::TextReading& reading = text_reading();
    return reading.plain() || routing::reads_as_written(sql, reading);
  }
  // A statement of a request that went to a replica by its first statement must run on the
  // primary (a write after reads up to one Sync: psycopg's pipeline, pgx's SendBatch).
  // Transaction control and settings stay with the reads.
  bool needs_primary(std::string_view sql, const BindParams& params);
  bool writes_further_on(std::string_view frames);
  // Sharded databases: a BEGIN alone, with no shard named yet, is answered here and sent with
  // the transaction's first statement; COMMIT or ROLLBACK of such a transaction is answered here.
  bool defer_begin(std::string_view frames, const routing::Route& route, Actions& out);
  bool defer_leading_begin(std::string_view frames, Actions& out);
  bool end_deferred_transaction(std::string_view frames, Actions& out);
  void finish_begin(Link& l, bool ok, Actions& out);
  // Sharded databases: why `sql` may not run on the shard the link's transaction is on (a
  // refusal's SQLSTATE and message); an empty message when it may. With `hop` given, a Bind of
  // a statement for another shard may instead set it: the rest of the request goes there (hop).
  std::pair<std::string_view, std::string> shard_conflict(Link& l, std::string_view sql,
                                                          const BindParams* params,
                                                          bool* hop = nullptr);
  // ---- a request whose statements name several shards (shard_transaction.cpp) ----
  // Whether the request planned on `l` may go on on another shard from the Bind of `params`.
  bool may_hop(const Link& l, const BindParams* params) const;
  // Ends the request's part on `l` before the Bind being planned (`unnamed`: of the unnamed
  // statement, kept to be prepared where the Bind lands); the rest is planned once `l` answered.
  void hop(Link& l, Flight& flight, bool unnamed);
  void finish_hop(Link& l, bool failed);
  // COMMIT (`commit`) or ROLLBACK of every part of the transaction over several shards; the
  // client is answered `reply`'s heads, then the tag, or (`at_sync`: the client's Sync ended an
  // implicit transaction) only its ReadyForQuery.
  void end_parts(bool commit, const HubReply& reply, Actions& out, bool at_sync = false);
  // Sharded databases: a read the router sends to several shards (Route::Kind::Shards). Started:
  // the shards' servers are being checked out; Waiting: the rest of the request (its Sync) is
  // not here yet; NotScattered: `route` is now a refusal, or one shard (a request that executes
  // nothing).
  enum class ScatterStart : std::uint8_t { Started, Waiting, NotScattered };
  // `in_transaction`: it runs on the servers of the client's transaction, every shard it needs
  // having joined it (route_in_transaction).
  ScatterStart start_scatter(std::string_view frames, const RequestText& request,
                             routing::Route& route, Actions& out, bool in_transaction = false);
  std::string two_phase_gid(std::uint16_t decider, std::uint64_t xid);
  void prepare_part(Link& l, Actions& out);
  void prepare_due_parts(Actions& out);
  void decider_answered(std::optional<std::uint64_t> xid, Actions& out);
  void prepare_transaction_parts(Link& decider, bool ok, std::string& into, Actions& out);
  std::string_view scatter_decision_sql();
  void open_scatter_run(std::unique_ptr<Scatter> scatter, std::vector<routing::Route> routes,
                        std::uint64_t fingerprint, bool two_phase);
  // Inside the client's transaction: the run's request goes to the transaction's part on each
  // shard of `shards` (all of them joined), its answer expected as `action`.
  void send_to_transaction_parts(std::uint64_t shards, std::uint8_t action, Actions& out);
  // A part of a run inside the client's transaction answered; the last one answers the client.
  void transaction_part_answered(Link& l, std::string& into, Actions& out);
  // The next shard's server is checked out: a shard's first, or again for a part that runs
  // elsewhere (retry_scatter_part).
  void check_out_next_shard(Actions& out);
  void link_scatter(Link& l, Actions& out);
  // A read's part died on a replica before the shard answered anything: the part runs once more
  // on another server of that shard, like a read on one shard (retry_elsewhere).
  bool retry_scatter_part(Link& l, Actions& out);
  void scatter_checkout_failed(std::string_view sqlstate, std::string_view message, Actions& out);
  // A message of a shard's part (pending action kActionScatter*); its ReadyForQuery ends the
  // part (scatter_answered).
  void scatter_frame(Link& l, const protocol::Frame& f, Actions& out);
  void hold_back_shards(Actions& out);
  void fail_scatter(std::string_view sqlstate, std::string_view message, Actions& out);
  void scatter_answered(Link& l, std::uint8_t action, std::string& into, Actions& out);
  // The shard's link answered its part (`how` Release), or was lost: it goes; once every shard
  // is done, settle_scatter() answers the client in `into` (a write is committed first).
  // `lost`: why the link went (its server lost or silent), the client's error.
  void end_scatter_link(Link& l, LinkOp::Kind how, std::string& into, Actions& out,
                        std::string_view lost = {});
  void settle_scatter(std::string& into, Actions& out);
  void finish_scatter(std::string& into, Actions& out);
  // A portal kept between the client's Executes (Scatter::keeps_portal): its Execute got its
  // rows, and the answer so far (appended to `into`) ends with PortalSuspended.
  void suspend_portal(std::string& into, Actions& out);
  // The client's request while the portal is suspended: its next Execute goes on; a Close of
  // it, or any other request, ends it first (close_portal), and the other request is planned
  // as usual.
  void fetch_from_portal(std::string_view frames, Actions& out);
  // The suspended portal ends: its shards' servers, mid-answer, are cancelled and closed.
  void close_portal(Actions& out);
  // A request without a server that executes the portal another request closed
  // (Extras::closed_portal): answered with 34000, and true.
  bool refuse_closed_portal(std::string_view frames, Actions& out);
  bool closed_portal() const { return extras_ && !extras_->closed_portal.empty(); }
  std::string closed_portal_message() const;
  stats::Execution scatter_execution(stats::Execution::Scope scope);
  // `stopped`: its read was stopped before its end (a kept portal closed): the rows it sent
  // count, as a suspended portal's do.
  void record_scatter_part(Link& l, bool stopped = false);
  // The client's one statement over several shards, once, with the error its answer (`answer`)
  // may hold.
  void record_gathered(std::string_view answer);
  // Sharded databases: COPY ... FROM STDIN routed row by row (Route::copy_rows,
  // copy_flight.cpp). `in_transaction` as for start_scatter().
  ScatterStart start_copy(std::string_view frames, const RequestText& request,
                          routing::Route& route, Actions& out, bool in_transaction = false);
  void copy_shard_ready(Link& l, const protocol::Frame& f, Actions& out);
  void copy_client_data(std::string_view frames, Actions& out);
  void end_copy(Actions& out);
  void copy_part_answered(Link& l, Actions& out);
  char client_tx_status() const { return extras().deferred_begin.empty() ? 'I' : 'T'; }
  // The transaction whose BEGIN is held back runs at READ COMMITTED (its BEGIN and the client's
  // settings ask for nothing stronger).
  bool deferred_read_committed() const;
  // ---- a transaction over several shards (shard_transaction.cpp) ----
  // The client's transaction is open on `l` and nothing is outstanding: its request goes to the
  // shard it names (`l` becomes that shard's link), which joins the transaction when it is not
  // in it yet. True when the step ends here (the request waits, a shard joins, or the request
  // was the COMMIT or ROLLBACK of a transaction over several shards).
  bool route_in_transaction(std::string_view frames, Link*& l, Actions& out);
  bool join_shard(std::uint16_t shard, Link& l, Actions& out);
  // Why the transaction on `l` cannot take another shard; empty when it can.
  std::string join_obstacle(const Link& l) const;
  // Why `sql` may not run in a transaction over several shards; empty when it may.
  std::string spanning_refusal(std::string_view sql) const;
  void note_transaction_statement(const routing::StatementInfo& info, const Link& l);
  void link_join(Link& l, Actions& out);
  void finish_join(Link& l, bool ok, Actions& out);
  void join_failed(std::string_view sqlstate, std::string why, Actions& out);
  bool end_shard_transaction(std::string_view frames, Actions& out);
  void set_tx_error(std::string_view sqlstate, std::string_view message);
  void tx_frame(Link& l, const protocol::Frame& f);
  void tx_answered(Link& l, std::uint8_t action, bool failed, std::string& into, Actions& out);
  void decide_shard_transaction(std::string& into, Actions& out);
  void next_decision(std::string& into, Actions& out);
  std::string_view tx_decision_sql();
  void finish_shard_transaction(std::string& into, Actions& out);
  bool shard_transaction_link_lost(Link& l, LinkOp::Kind kind, Actions& out);
  // `block_fails`: the client is told its block failed (ReadyForQuery 'E', LostBlock::Failed)
  // rather than ended.
  void abandon_shard_transaction(std::string_view message, Actions& out, bool block_fails = false);
  void plan_frame(const protocol::Frame& f, std::size_t offset, Link& l, Flight& flight);
  void plan_query(const protocol::Frame& f, std::size_t offset, Link& l, Flight& flight);
  void forward_query(const protocol::Frame& f, std::string_view sql, std::size_t offset,
                     Flight& flight);
  // `sql` without a leading pgvalve hint comment (the hint is pgvalve's, not PostgreSQL's);
  // `sql` itself when it has none.
  std::string_view without_hint(std::string_view sql);
  void plan_execute(const protocol::Frame& f, std::size_t offset, Link& l, Flight& flight);
  void remember_portal(std::string_view portal, Note note, bool pins, std::uint64_t fingerprint,
                       Link& l);
  void raise_on_server(std::string_view sqlstate, std::string_view message, bool extended, Link& l,
                       Flight& flight);

  // ---- named prepared statements in transaction pooling (prepared_flight.cpp) ----
  bool answer_parse_locally(Flight& flight, Actions& out);
  void plan_parse(const protocol::Frame& f, std::size_t offset, Link& l, Flight& flight);
  void plan_bind(const protocol::Frame& f, std::size_t offset, Link& l, Flight& flight);
  void plan_describe(const protocol::Frame& f, std::size_t offset, Link& l, Flight& flight);
  void plan_close(const protocol::Frame& f, std::size_t offset, Link& l, Flight& flight);
  // What the client's unnamed statement (Parse of `query`) does, for its Binds; and, when no
  // Bind of it follows in `rest` (the request after its Parse), its text kept for a later one.
  void note_unnamed_statement(std::string_view query, std::string_view param_types, Note note,
                              bool pins, std::string_view rest);
  // Before a Bind or Describe of the unnamed statement: true when the server holds the client's
  // (its kept Parse goes first to one that does not, and what it does is noted again for a
  // request that did not parse it); false, with 26000 raised as on a server without one, when
  // nothing is kept. Another client's unnamed statement is never bound.
  bool unnamed_statement_on_server(Link& l, Flight& flight);
  void forget_unnamed_statement() {
    if (!extras_ || !extras_->unnamed_kept) return;
    extras_->unnamed_kept = false;
    extras_->unnamed_query = {};
    extras_->unnamed_types = {};
  }
  void prepare_on_server(const protocol::PreparedStatement& stmt, bool swallow, Link& l,
                         Flight& flight);
  // Whether the client's Bind of `stmt` at `offset`, whose shape the server has not described
  // as the client's (`server_shape`; 0: unknown, or `on_server` false), waits for pgvalve to ask
  // the server (prepared_flight.cpp says when); if so, asks.
  bool check_shape(const protocol::PreparedStatement& stmt, bool on_server,
                   std::uint64_t server_shape, std::size_t offset, Link& l, Flight& flight);
  bool only_begin(std::string_view frames) const;
  bool describes_portal(std::string_view frames) const;
  void finish_shape_check(Link& l, bool failed, Actions& out);
  // A Describe of a client's statement, or of a portal of it, was answered with `f`: the shape of
  // its rows (check_shape).
  void note_shape(Link& l, const protocol::PendingResponse& describe, const protocol::Frame& f);
  const protocol::PreparedStatement& define_statement(std::string_view name, std::string_view query,
                                                      std::string_view param_types);
  bool forget_statement(std::string_view name);
  bool close_statement(std::string_view name, protocol::PendingResponse& close);
  // pgvalve's own names of statements on servers (pgv_...), which no client may name itself.
  static bool is_shared_statement_name(std::string_view name);
  static std::string no_such_statement(std::string_view name);
  // The link's server has `hash` prepared, and not since before a server found statements of
  // that hash stale (WorkspacePool::statement_changed).
  bool server_has_statement(Link& l, std::uint64_t hash);
  // What the staleness of statement `hash` is recorded under (WorkspacePool::statement_changed):
  // the statement in this client's database and for its user; a table changed in one database
  // says nothing of another's.
  std::uint64_t statement_change_key(std::uint64_t hash) const { return hash ^ pool_key_; }
  // A DISCARD ALL or DEALLOCATE ALL sent on `l` and not answered yet forgets the client's
  // statements defined up to `defined`.
  bool forgotten_before_this(const Link& l, std::uint64_t defined) const;
  // DISCARD ALL / DEALLOCATE ALL answered on `l`: the statements defined before it are gone, on
  // the client's side and on the server's.
  void forget_statements_before(std::uint64_t defined, Link& l);

  // ---- what a statement's text changes, pins or is refused for (statement_review.cpp) ----
  Review review(std::string_view sql, bool settling_transaction, std::vector<Note>& notes) const;
  // Setting `name` as the client has it now: its own value, else the server's default.
  std::string_view setting_value(std::string_view name) const;
  std::string_view default_value(std::string_view name) const;
  // What RESET returns setting `name` to: its value at login, else the server's default.
  std::string_view startup_value(std::string_view name) const;
  bool may_change_reading(const Note& note) const;
  // routing::plain_statement, for text that reads as written.
  bool plain_statement(std::string_view sql) const {
    return reads_as_written(sql) && routing::plain_statement(sql);
  }
  bool refuse_state_on_replica(const Review& r, Link& l, bool extended, Flight& flight);
  void note_for(const routing::StatementInfo& info, Note& note) const;
  static void session_characteristics_note(const routing::StatementInfo& info, Note& note);
  void note_default_isolation();
  void bind_setting(Note& note, std::string_view bind_rest, const Link& l) const;
  void deallocate_when_answered(std::string_view name, const protocol::PreparedStatement& stmt,
                                protocol::PendingResponse& request, Link& l);
  void answer_empty_query(Link& l, const protocol::PendingResponse& head);
  // `pending`: the bytes of every setting change not yet applied, whatever its name (a
  // transaction's savepoints each keep theirs).
  void in_flight_settings(std::vector<std::string>& names, std::size_t& bytes,
                          std::size_t& pending) const;
  void count_server_listens(const Review& r);

  // ---- client requests, continued (client_flight.cpp) ----
  void pass_client(Flight& flight, std::size_t offset, std::size_t size);
  void mark_scratch(Flight& flight, std::size_t from);
  void fail_requests(std::string_view frames, std::string_view sqlstate, std::string_view message,
                     std::string& out, std::string_view hint = {}, char status = 'I');
  std::size_t leftover_copy_messages(std::string_view frames) const;
  std::string_view refused_request(std::string_view frames) const;

  // ---- server answers (server_flight.cpp) ----
  const Actions& plan_server(Link& l, LinkId id, std::string_view input);
  // Returns true when the message (or the part of it received) is forwarded to the client.
  bool server_frame(Link& l, const protocol::Frame& f, std::size_t offset, Actions& out,
                    bool& saw_ready);
  bool rows_pass_through(const Link& l) const;
  void emit_synthetic_heads(Link& l);
  // The error pgvalve had the server raise (kActionRaised), as pgvalve would send it.
  void pass_raised_error(Link& l, const protocol::Frame& f);
  void complete_front(Link& l, char tag, Actions& out);
  void settle_statement(Link& l, protocol::PendingResponse& request, std::string_view tag,
                        Actions& out);
  void end_request(Link& l, protocol::PendingResponse& request, char tx_status);
  void apply_note(const Note& note, Link& l, Actions& out);
  void add_tx_note(Note&& note);
  void commit_notes(Link& l, Actions& out);
  void drop_notes();
  void forget_tx_notes();
  // pgvalve's own simple query was queued on `l`: its answer, up to ReadyForQuery, is not the
  // client's and ends with `action` (kAction*).
  void expect_own_answer(Link& l, std::uint8_t action);
  void ask_server(Link& l, LinkId id, const std::string& message, std::uint8_t action,
                  Actions& out);
  void start_pin_check(Link& l, LinkId id, Actions& out);
  void read_pin_check(Link& l, const protocol::Frame& f);
  void finish_pin_check(Link& l, bool failed, Actions& out);
  // read_your_writes = lsn: asks the primary for its WAL position once the client's write
  // transaction ended, before the server goes back to the pool.
  void start_wal_position(Link& l, LinkId id, Actions& out);
  void read_wal_position(const Link& l, const protocol::Frame& f);

  // ---- statistics ----
  // The fingerprint of `sql`, computed once for the same text asked for again (routing and
  // statistics share it; Workspace::fingerprinted()), through the worker's cache of texts
  // seen before (Router::cached_fingerprint). `keep` false: the text's last use, not worth
  // remembering.
  std::uint64_t fingerprint_of(std::string_view sql, bool keep = true);
  // `request`, about to be queued on `l`, runs `sql`: it is counted when it completes. Its
  // fingerprint may be left for account().
  void count_request(protocol::PendingResponse& request, std::string_view sql, Link& l);
  void count_request(protocol::PendingResponse& request, std::uint64_t fingerprint);
  // `request` completed (`error`: with an error); `rows` from its CommandComplete tags.
  void record_execution(Link& l, const protocol::PendingResponse& request, bool error);
  // An Execute ended at its row limit (PortalSuspended): its chunk waits for the portal's end.
  void suspend_execution(Link& l, const protocol::PendingResponse& request);
  // The suspended portal's chunks, recorded as one execution (the portal ended unfinished).
  void end_suspended_portal(Link& l);
  // stats.redact_literals: false — slow-query samples show statements as sent.
  bool keeps_literals() const { return recorder_ && recorder_->stats->keeps_literals(); }
  // `request`, about to be queued on `l`, shows `sample` if it is slow.
  void keep_sample(protocol::PendingResponse& request, std::string_view sample, Link& l);
  // What a slow sample shows of a statement: its text, then its Bind's parameters (if any) as
  // PostgreSQL's log shows them; bounded.
  static void describe_sample(std::string& out, std::string_view sql, std::string_view bind_rest,
                              std::string_view param_types);
  // A counted request's CommandComplete (rows, kind) or ErrorResponse (SQLSTATE class).
  void note_answer(Link& l, const protocol::Frame& f);
  // A transaction ended after `micros`.
  void count_transaction(std::uint64_t micros);
  void settle_accounting();

  // ---- failures and endings ----
  // `status`: the ReadyForQuery each failed request gets ('E' when the client's block failed).
  void fail_pending(Link& l, std::string_view sqlstate, std::string_view message, std::string& out,
                    char status = 'I');
  void lose_link(Link& l, LinkId id, std::string_view message, LinkOp::Kind kind, Actions& out);
  // Losing `l` loses what no other server can give the client back, so the client is closed
  // rather than kept: its session (session mode's own server, or state pinned to it), or a
  // transaction block with a request running, which may or may not have ended the block.
  bool losing_link_closes_client(const Link& l, LinkId id) const;
  // The link holds the client's session: session mode's own server, or state pinned to it.
  bool holds_session(LinkId id) const;
  // `l` is given up by pgvalve (a deadline, an invalid message): its requests fail with
  // `message`, or the client is closed with it (losing_link_closes_client).
  void give_up_link(Link& l, LinkId id, const std::string& message, LinkOp::Kind kind,
                    Actions& out);
  // The first request of `frames` in a lost transaction block (LostBlock): failed with
  // `sqlstate`/`message` (`server_lost`: followed by what the client must do), or answered
  // ROLLBACK when it ends a block the client was told of.
  void answer_in_lost_block(std::string_view frames, std::string_view sqlstate,
                            std::string_view message, bool server_lost, Actions& out);
  void unlink(LinkId id, LinkOp::Kind kind, Actions& out, std::string_view sql1 = {},
              std::string_view sql2 = {});
  void release_all_for_close(Actions& out);
  void append_error(std::string& out, std::string_view sqlstate, std::string_view message,
                    std::string_view hint = {}, bool fatal = false);
  void close_with(std::string_view sqlstate, std::string_view message, Actions& out);
  // Leaves at the next transaction boundary (now, when between transactions).
  void drain(Actions& out);
  // The link's server can go on only once the client sends more (pool.idle_transaction_timeout).
  bool waits_for_client(const Link& l) const;
  bool holds_idle_transaction(const Link& l) const;
  // What a drained client is told as it is closed (57P01).
  std::string_view drain_message() const;
  // A request among the client's COPY data: the server would take it as the end of the COPY
  // and never answer it, so pgvalve could no longer match answers to requests.
  void refuse_request_during_copy(Actions& out);
  // The client's Terminate: closed now, or, behind a COPY it ended whose answer is still to come
  // (copy_being_answered), once that answer is in (close_when_answered_); the Terminate stays
  // unconsumed and is read again then.
  void leave(Actions& out);
  bool copy_being_answered() const;
  bool copy_started(Link& l, Actions& out);
  // Notifications queued while a request was outstanding, once the client is between requests.
  void deliver_queued_notifications(std::string& out);
  // A linked server's message is passing through to the client and has not ended.
  bool client_mid_message() const;

  // What few clients have, out of line so that an ordinary client does not carry it; allocated
  // on first use and kept.
  struct Extras {
    // SET pgvalve.device_id: the shard key of this client's statements (sharded databases).
    std::string device_id;
    // A BEGIN answered by pgvalve and not sent yet: it goes first to the shard the
    // transaction's first statement needs.
    std::string deferred_begin;
    // ... and when the first read over several shards ran inside it: the transaction, which no
    // server sees, is counted when pgvalve answers its COMMIT or ROLLBACK.
    Clock::time_point deferred_read_at{};
    std::vector<std::string> listen_channels;  // through the listen hub
    std::vector<std::string> server_listens;   // LISTENs run on its own pinned server
    // Read-your-writes (lsn): per shard, the primary's WAL position after the client's last
    // write there.
    std::vector<std::uint64_t> write_lsns;
    // A portal over several shards that the client's other request closed while it was
    // suspended (its name, at most 63 bytes): a later Execute of it is refused with 34000
    // saying why, until a Bind names it again.
    std::string closed_portal;
    // What the server of a transaction lost between the client's requests said as it went
    // (its FATAL), quoted in the 08006 of the client's next request.
    std::string lost_goodbye;
    // Session mode: what the client's named statements do, which reach its own server under
    // their names: their fingerprints for the statistics of their Executes, and whether they
    // change settings or may pin (their Executes then keep the client's reads off replicas).
    // At most kMaxClientStatements names of at most kMaxTrackedNameBytes; a Bind of another
    // name is taken as changing settings.
    struct NamedStatement {
      std::uint64_t fingerprint = 0;
      bool changes_settings = false;
      bool pins = false;
    };
    static constexpr std::size_t kMaxTrackedNameBytes = 256;
    struct NameHash {
      using is_transparent = void;
      std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
    };
    std::unordered_map<std::string, NamedStatement, NameHash, std::equal_to<>> named_statements;
    // Transaction pooling: the unnamed statement of a Parse that no Bind followed in its request
    // (pgx's describe-then-execute, postgres.js with prepare: false), prepared again before its
    // Bind when that reaches another server (or the same one after another client's use).
    std::string unnamed_query;
    std::string unnamed_types;
    bool unnamed_kept = false;
  };
  const Extras& extras() const {
    static const Extras none;
    return extras_ ? *extras_ : none;
  }
  Extras& extras_to_change() {
    if (!extras_) extras_ = std::make_unique<Extras>();
    return *extras_;
  }
  void forget_deferred_begin() {
    if (!extras_) return;
    extras_->deferred_begin.clear();
    extras_->deferred_read_at = {};
  }
  void note_session_statement(std::string_view name, std::string_view query, bool changes_settings,
                              bool pins);
  // Session mode: what the client's statement `name` does (an unknown name: it may change
  // settings).
  Extras::NamedStatement session_statement(std::string_view name) const;

  const SessionOptions& options_;  // outlives the session (shared by a configuration's)
  const std::uint64_t identity_;
  std::uint64_t unnamed_version_ = 0;  // of the client's latest unnamed statement (ServerState)
  const routing::Router& router_;
  WorkspacePool* workspaces_;
  const stats::Recorder* recorder_;
  std::unique_ptr<Workspace> work_;
  std::unique_ptr<Extras> extras_;
  Clock::time_point now_{};  // of the event being handled

  // Durable per-client state (kept while idle).
  Settings client_settings_;  // where they differ from the pool's server defaults
  // client_settings_ as the client last heard of them (ParameterStatus), shared with it.
  std::shared_ptr<const std::vector<Setting>> told_;
  // client_settings_ when text_reading_ was worked out, shared so that a change copies them.
  mutable std::shared_ptr<const std::vector<Setting>> reading_of_;
  std::shared_ptr<const Settings> startup_settings_;  // what RESET returns a setting to
  std::shared_ptr<const ServerParameters> defaults_;
  protocol::BackendKeyData key_;
  std::unique_ptr<protocol::ClientStatements> statements_;
  std::size_t statement_bytes_ = 0;
  // Read-your-writes: when the last write ended (time; the WAL positions are in extras_).
  Clock::time_point last_write_at_{};
  // Sharded databases: what identifies the request the last checkout was routed by (a hash of
  // its text and Bind values), so that it is not routed a second time on the server it got.
  std::uint64_t routed_request_ = 0;
  // The client's user and database, hashed at login: a statement found stale (0A000) in one
  // database or for one user is not stale in another (statement_change_key).
  std::uint64_t pool_key_ = 0;
  std::uint32_t scatter_writes_ = 0;  // numbers the two-phase commits of this client
  // The small fields from here to accounting_due_ sit together, without padding between them:
  // every idle client keeps them.
  SessionState state_ = SessionState::LoggingIn;
  bool logged_in_ = false;
  bool drain_requested_ = false;
  // Drained because of it (on_reload_change): nothing more is routed.
  config::ReloadChange reload_change_ = config::ReloadChange::None;
  bool client_held_ = false;  // set_client_held()
  bool pinned_ = false;
  // The client's transaction block ended without it: its server was lost between its requests,
  // or no server could be had for a statement after a BEGIN pgvalve answered. Untold: its next
  // request gets the error; Failed: it was told (ReadyForQuery 'E') and, as in a transaction
  // PostgreSQL aborted, each request fails (25P02) until the client ends the block, answered
  // ROLLBACK. So a statement after the loss never runs on its own, outside the block the client
  // believes it is in.
  enum class LostBlock : std::uint8_t { None, Untold, Failed };
  LostBlock lost_block_ = LostBlock::None;
  bool skip_until_sync_ = false;  // an extended flight failed: drop its messages until Sync
  // The client sent Terminate behind a COPY still being answered: it is closed once answered.
  bool close_when_answered_ = false;
  bool pipeline_full_ = false;  // kMaxRequestsInFlight unanswered: the client is not read
  bool error_sent_in_flight_ = false;
  // Session mode: the next request runs on the client's own server (no replica could take it).
  bool stay_on_own_server_ = false;
  // A replica refused this client's settings once (Actions::replica_refused_settings, logged).
  bool replica_refusal_told_ = false;
  // SET pgvalve.route: where this client's statements go when no hint says otherwise.
  routing::RouteContext::Preference preference_ = routing::RouteContext::Preference::Auto;
  // The client's default_transaction_isolation is serializable (RouteContext::serializable).
  bool serializable_default_ = false;
  // A request in flight may change how the next ones read (Review::changes_reading): the
  // client's input waits until it is answered.
  bool reading_may_change_ = false;
  mutable routing::TextReading text_reading_;
  mutable bool text_reading_known_ = false;
  // A replica link takes one request at a time (the next may be a write): the rest of the
  // client's input waits, and is planned again once the link has answered.
  bool input_waits_for_link_ = false;
  // A partial message is being received since `partial_since_`.
  bool partial_ = false;
  bool accounting_due_ = false;  // account() has statistics to record
  // Its buffer could not grow: the client is not read (but at `memory_retry_at_`) since
  // `memory_wait_since_` (on_client_memory_refused).
  bool memory_wait_ = false;
  bool memory_retry_due_ = false;
  Clock::time_point partial_since_{};
  Clock::time_point memory_wait_since_{};
  Clock::time_point memory_retry_at_{};
  Clock::time_point client_activity_{};
  Clock::time_point held_since_{};  // entered Holding, or last client bytes while Holding
};

}  // namespace pgvalve::session
