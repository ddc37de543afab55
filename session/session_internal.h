// The parts of Session only its own .cpp files see: notes that follow settings through a
// transaction, the bookkeeping of one linked server, the planning state of one client step, and
// the workspace that holds them while the session is busy.
#pragma once

#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "routing/copy_rows.h"
#include "session/scatter.h"
#include "session/session.h"
#include "session/settings_sync.h"
#include "session/two_phase.h"

namespace pgvalve::session {

// What a statement means for the session's settings or transaction bookkeeping, settled when
// its CommandComplete arrives.
struct Note {
  enum class Kind : std::uint8_t {
    None,
    Set,            // name = value (form)
    Reset,          // name back to its startup value
    ResetAll,       // every setting back to startup values
    Discard,        // DISCARD ALL: settings, prepared statements, LISTENs
    Unknown,        // settings changed in a way pgvalve cannot follow: reset before the next lender
    Commit,         // COMMIT / END (its tag says whether it committed)
    Rollback,       // ROLLBACK / ABORT
    Savepoint,      // name
    Release,        // RELEASE name
    RollbackTo,     // ROLLBACK TO name
    DeallocateAll,  // DEALLOCATE ALL (not transactional)
    // DEALLOCATE name of a client's protocol-level statement (kActionDeallocate): sent as an
    // empty query; `statements_before` holds the statement's `defined`, forgotten when the
    // server answers (a Parse pipelined behind it may define the name again)
    Deallocate,
    // LISTEN, UNLISTEN name, UNLISTEN * run on a server for a channel the client listens on
    // through the listen hub (transactional): once committed, the hub stops delivering it to the
    // client (after LISTEN the server delivers it; after UNLISTEN nobody does).
    Listen,
    Unlisten,
    UnlistenAll,
  };
  Kind kind = Kind::None;
  SettingForm form = SettingForm::Literal;
  std::string name;
  std::string value;
  // Discard, DeallocateAll: the client's statements defined before it was sent
  // (ClientStatements::last_defined then). Those defined after it, pipelined behind it, stay.
  std::uint64_t statements_before = 0;
  // Set by set_config($1, $2, false): `name` or `value` is still a parameter reference ("$2"),
  // filled in from the Bind (Session::bind_setting).
  bool bound = false;
};
using NoteKind = Note::Kind;

inline bool is_listen_note(NoteKind k) {
  return k == NoteKind::Listen || k == NoteKind::Unlisten || k == NoteKind::UnlistenAll;
}

inline bool is_setting_note(NoteKind k) {
  return k == NoteKind::Set || k == NoteKind::Reset || k == NoteKind::ResetAll ||
         k == NoteKind::Discard;
}

// Where a chunk of bytes for a server comes from while a step is planned: the client's input
// (forwarded in place) or the scratch buffer (rewritten or pgvalve's own). Offsets, because the
// scratch may grow.
struct Span {
  bool scratch = false;
  std::size_t offset = 0;
  std::size_t size = 0;
};

// Pending-response actions (protocol::PendingResponse::action).
enum : std::uint8_t {
  kActionNone = 0,
  kActionEmptyAsTag = 1,      // sent as an empty query: answer CommandComplete `note`'s tag
  kActionSynthParseComplete,  // answered by pgvalve: ParseComplete
  kActionSync,                // pgvalve's settings query
  kActionPinCheck,            // pgvalve's query about session state that pins the server
  kActionEvictClose,          // pgvalve's Close of `statement_hash` for the LRU cap
  // pgvalve's Close of `statement_hash` before parsing it, or for the cap, while whether the
  // server has it depends on answers still to come or is unknown.
  kActionRecloseStatement,
  kActionWalPosition,     // pgvalve's query for the primary's WAL position (read-your-writes)
  kActionBegin,           // the client's BEGIN, held back until its shard was known
  kActionScatter,         // the shard's part of a statement over several shards (scatter.h)
  kActionScatterBegin,    // ... a write's BEGIN before it
  kActionScatterXid,      // ... the decider's pg_current_xact_id() after its BEGIN (two_phase.h)
  kActionScatterCopy,     // ... a COPY FROM STDIN, whose rows pgvalve routes (copy_flight.cpp)
  kActionScatterPrepare,  // ... its PREPARE TRANSACTION after it
  kActionScatterFinish,   // ... its COMMIT PREPARED or ROLLBACK PREPARED
  kActionScatterWal,      // ... the primary's WAL position after the commit (lsn)
  kActionTxJoin,          // a shard joining the client's transaction: its BEGIN, and whether its
                          // server allows two-phase commit (shard_transaction.cpp)
  kActionTxXid,           // the decider part's pg_current_xact_id() at COMMIT (two_phase.h)
  kActionTxPrepare,       // the transaction's PREPARE TRANSACTION on one of its shards
  kActionTxFinish,        // ... its COMMIT PREPARED, ROLLBACK PREPARED or ROLLBACK there
  kActionTxWal,           // ... the primary's WAL position after the commit (lsn)
  // pgvalve's own error, raised by the server so that the client's transaction fails as it would
  // (raise_on_server): the client gets it without the server's PL/pgSQL context and source.
  kActionRaised,
  // The Parse of a client's statement no server has prepared yet (PreparedStatement::confirmed).
  kActionFirstParse,
  // DEALLOCATE name, sent as an empty query: once the server answers it, the statement of the
  // Deallocate note `note` is forgotten and the client gets CommandComplete DEALLOCATE.
  kActionDeallocate,
  // The Sync pgvalve ends a request's part on one shard with, when the request's next statement
  // needs another shard (Session::hop): once answered, the rest of the request goes there.
  kActionHop,
  // The client's Sync ending a request that pgvalve made a transaction over several shards
  // (ShardTransaction::implicit): once answered, every part commits or rolls back.
  kActionImplicitEnd,
  // The client's Describe of its statement `statement_hash`, or of the unnamed portal bound from
  // it: the shape of its rows, which the client decodes them by from then on, is noted
  // (PreparedStatement::shape).
  kActionNoteShape,
  // pgvalve's Describe (and Sync) of statement `statement_hash` before the client's Bind of it,
  // whose rows the client decodes by a shape this server has not described (Session::check_shape).
  kActionShapeCheck,
  // The client's Close of its statement of `statement_hash`: the name is forgotten once the
  // server answers it; skipped after an error earlier in its flight, the statement stays, as on
  // PostgreSQL (PreparedStatement::closing).
  kActionClientClose,
};

// A pending action of a shard's part of a statement over several shards (scatter_flight.cpp).
inline bool is_scatter_action(std::uint8_t action) {
  return action >= kActionScatter && action <= kActionScatterWal;
}
// A pending action of a transaction over several shards (shard_transaction.cpp).
inline bool is_tx_action(std::uint8_t action) {
  return action >= kActionTxJoin && action <= kActionTxWal;
}

// An answer still to come that changes whether its server has statement `statement_hash`: the
// statement's Parse, or pgvalve's Close of it.
inline bool moves_statement(const protocol::PendingResponse& p) {
  return p.kind == protocol::PendingResponse::Kind::ParseComplete ||
         p.action == kActionEvictClose || p.action == kActionRecloseStatement;
}

struct Link {
  LinkId id = 0;
  ServerState* server = nullptr;
  routing::Route route;
  protocol::PendingResponses pending;
  std::vector<Note> notes;        // notes of outstanding requests (PendingResponse::note ranges)
  std::vector<std::string> tags;  // command tags answered for empty queries (kActionEmptyAsTag)
  int in_flight = 0;              // Query/Sync/FunctionCall forwarded, ReadyForQuery not yet seen
  int pending_setting_notes = 0;  // setting notes of outstanding requests, not yet settled
  bool open_extended = false;     // extended-protocol messages forwarded since the last Sync
  bool flushed = false;           // ... and a Flush among them: the server owes their answers
  bool check_pins = false;        // ask the server about pinned state when its transaction ends
  bool login = false;             // linked at login: the login reply waits for the sync
  bool begin_pending = false;     // the client's deferred BEGIN runs first (sharded databases)
  // Sharded databases: the first statement planned on this link may be the one its checkout was
  // routed by (Session::routed_request_), which need not be routed again.
  bool first_routed = false;
  // Linked for a read over several shards: its index there (Scatter::add), -1 otherwise.
  int scatter_shard = -1;
  bool discard = false;        // closed, not released, once it has answered (its sync failed)
  bool prepared = false;       // a write's part is prepared on it (two-phase commit)
  bool finishing = false;      // ... and its COMMIT / ROLLBACK PREPARED was sent
  bool part_answered = false;  // its part of a write was answered up to PREPARE TRANSACTION
  bool prepare_due = false;    // ... its PREPARE waits for the decider's xid (two_phase.h)
  bool copy_in = false;  // its server takes COPY data (CopyInResponse came, CopyDone not sent)
  bool copy_end_sent = false;  // a CopyDone/CopyFail went to it after its last answered request
  // The client's CopyDone/CopyFail went to it and the COPY's ReadyForQuery has not come: a
  // Terminate now waits for that answer (Session::leave).
  bool copy_answer_due = false;
  // An extended-protocol request failed with no Sync behind it: the server discards whatever
  // comes before the client's next Sync, so pgvalve does not send it.
  bool skipping_until_sync = false;
  // Every statement bound on it since the last Sync was a plain one (routing::plain_statement):
  // nothing that would behave otherwise inside a transaction block (Session::hop).
  bool flight_plain = true;
  // pgvalve's Describe of a statement runs before the client's Bind of it (check_shape): the
  // client's input waits. `shape_checked`: the statement last checked, whose Bind then goes on
  // with what the check found (or without it, when the check failed).
  bool checking_shape = false;
  std::uint64_t shape_checked = 0;
  std::size_t stream_remaining = 0;  // bytes of a large server message still passing through
  bool stream_forward = true;        // ... forwarded to the client (false: dropped)
  Clock::time_point last_activity{};
  Clock::time_point sync_started{};
  bool syncing = false;
  std::string scratch;  // bytes pgvalve writes to the client from this link's step
  std::vector<Span> spans;
  Actions actions;
  SyncPlan sync_plan;            // of the sync running now
  bool reserved = false;         // linked for a request that is not planned yet: not released
  bool pin_check_holds = false;  // the running pin check found state
  bool paused = false;           // not read while the client catches up
  // While paused: when the client last took output (or the pause began), and how much it had
  // taken then (Session::client_progress).
  Clock::time_point client_behind_since{};
  std::uint64_t client_taken = 0;
  bool held_back = false;  // not read while a streamed merge waits for other shards
  // Linked for a route that may write while reads go to replicas: at the end of its transaction
  // the client's read-your-writes mark moves (routing.read_your_writes).
  bool may_write = false;
  bool answered = false;          // a message of the server's went to the client
  bool answered_earlier = false;  // ... before the step planning its server's bytes now
  std::uint64_t rows = 0;         // rows of the front request's statements so far (statistics)
  // DataRows since the last CommandComplete: what an Execute suspended at its row limit sent,
  // since its PortalSuspended has no tag to count from.
  std::uint64_t data_rows = 0;
  // A portal read in chunks (Executes with a row limit, as JDBC with a fetch size and cursors
  // of postgres.js send) counts as one execution, as in pg_stat_statements: the chunks so far
  // of the statement `fingerprint`, recorded when its last chunk completes, or when the portal
  // ends unfinished (its transaction ends, or another statement's portal is suspended).
  struct SuspendedPortal {
    std::uint64_t fingerprint = 0;
    std::uint64_t rows = 0;
    std::uint64_t micros = 0;  // the chunks' time on the server, not the client's between them
  };
  SuspendedPortal suspended;
  stats::StatementKind kind = stats::StatementKind::Other;  // ... its last command tag's
  char error_class[2] = {};                                 // ... its error's SQLSTATE class
  Clock::time_point transaction_started{};  // a client request began a transaction (statistics)
  // When the server last finished a statement or a Sync's answer: a request pipelined behind
  // others is timed from then, not from its sending, since the server ran them one at a time.
  Clock::time_point answered_at{};
  // stats.redact_literals: false: the texts of its outstanding requests for slow-query samples
  // (PendingResponse::sample_at / sample_size), at most kMaxSampleBytes; emptied when a request
  // is kept while none is outstanding (keep_sample).
  std::string samples;

  bool busy() const { return in_flight > 0 || open_extended || !pending.empty(); }
  // A Parse of statement `hash`, or pgvalve's eviction Close of it, is still to be answered.
  bool statement_pending(std::uint64_t hash) const;
  // The latest Parse of `hash` is still to be answered in an earlier flight (a Sync is pending
  // behind it): if that flight fails the server will not have it, though the statement set says
  // so.
  bool parse_unconfirmed(std::uint64_t hash) const;
  // A Parse of `hash` is still to be answered (in this flight or an earlier one): until it is,
  // the server has not accepted the statement.
  bool parse_pending(std::uint64_t hash) const;
  // Only pgvalve's own query is outstanding (a WAL position, a pin check).
  bool only_own_query() const {
    return in_flight == 1 && !open_extended && pending.size() == 1 && pending.front().internal;
  }
  // The server has been asked to answer (a Query, Sync, Flush or function call): its silence
  // counts against pool.query_timeout_ms. Parse/Bind/Execute alone are not sent until then.
  // A server taking COPY data owes nothing until the data ends.
  bool owes_answer() const {
    return !copy_in && !held_back && (in_flight > 0 || (flushed && !pending.empty()));
  }
  void reset() {
    server = nullptr;
    pending.clear();
    notes.clear();
    tags.clear();
    in_flight = 0;
    pending_setting_notes = 0;
    open_extended = false;
    flushed = false;
    check_pins = false;
    login = false;
    begin_pending = false;
    first_routed = false;
    scatter_shard = -1;
    discard = false;
    prepared = false;
    finishing = false;
    part_answered = false;
    prepare_due = false;
    copy_in = false;
    copy_end_sent = false;
    copy_answer_due = false;
    skipping_until_sync = false;
    flight_plain = true;
    checking_shape = false;
    shape_checked = 0;
    stream_remaining = 0;
    stream_forward = true;
    syncing = false;
    reserved = false;
    pin_check_holds = false;
    paused = false;
    held_back = false;
    may_write = false;
    answered = false;
    rows = 0;
    data_rows = 0;
    suspended = {};
    kind = stats::StatementKind::Other;
    transaction_started = {};
    answered_at = {};
  }
};

// The $n values of a Bind, for the router of a sharded database.
class BindParams final : public routing::ParamSource {
 public:
  BindParams(std::string_view bind_rest, std::string_view param_types)
      : rest_(bind_rest), types_(param_types) {}
  std::optional<routing::BoundParam> param(int number) const override;
  std::string_view rest() const { return rest_; }

 private:
  std::string_view rest_;
  std::string_view types_;  // raw n * int32 OIDs, as in Parse
};

// What routes a request: its first statement's text and, when a Bind follows, its values.
struct RequestText {
  std::string_view sql;
  bool bound = false;
  bool ended = false;  // a Query, Sync or Flush is among the frames: nothing more is awaited
  std::string_view bind_rest;
  std::string_view param_types;
};

// Planning state of one client step.
struct Flight {
  std::string_view input;
  std::string* scratch = nullptr;
  std::vector<Span>* spans = nullptr;
  Actions* out = nullptr;
  bool drop_until_sync = false;
  // Planning stops before the frame being planned: it goes to another server (Session::hop), or
  // waits for pgvalve's own request sent in its place (Session::check_shape).
  bool stop = false;
  // The link had nothing outstanding when the flight began (not even messages before a Flush).
  bool link_was_idle = false;
  // The request is sent again (a replica's read retried elsewhere), not read from the client.
  bool replay = false;
};

// What review() found in the statements of one query text.
struct Review {
  std::string_view refusal_sqlstate;
  std::string refusal;        // non-empty: raise this instead of running the text
  bool check_pins = false;    // may create or release state that pins the server
  bool leaves_state = false;  // a statement that creates such state, by its text (transaction mode)
  bool temporary = false;     // creates temporary objects
  bool has_notes = false;     // `notes` hold one note per statement
  std::vector<Note>* notes = nullptr;
  std::size_t first_note = 0;
  std::size_t note_count = 0;
  routing::StatementInfo first;       // the first statement
  bool single = true;                 // exactly one statement
  std::vector<std::string> listened;  // channels of its LISTENs the client did not listen on
  std::vector<std::string> unlistened;
  bool unlisten_all = false;
  // May change how the client's next statements read (standard_conforming_strings,
  // client_encoding, or settings pgvalve cannot follow): what the client pipelines behind it is
  // planned once it is answered (Session::reading_may_change_).
  bool changes_reading = false;
};

// How to answer a LISTEN/UNLISTEN sent through the extended protocol.
struct HubReply {
  bool parse = false;
  bool statement_described = false;  // Describe of the statement, between Parse and Bind
  bool bind = false;
  bool describe = false;
};
// ParseComplete, [ParameterDescription and NoData,] BindComplete and NoData for the messages of a
// flight pgvalve answers itself (a statement without parameters or rows).
void append_local_heads(const HubReply& reply, std::string& out);
// A Parse, Bind or Describe of such a flight (one unnamed statement and portal, in this order):
// noted in `reply`, the Parse's text in `sql`. False for anything else.
bool read_local_head(const protocol::Frame& f, std::string_view& sql, HubReply& reply);

// pgvalve's query for a primary's WAL position (read_your_writes = lsn), as a Query message.
const std::string& wal_position_message();
// A Query of ROLLBACK.
const std::string& rollback_message();
// The decider part's question for its xid (two_phase.h), as a Query message.
const std::string& xid_message();
// The first request of `frames`: up to and including its Query or Sync; empty when it has not
// ended yet.
std::string_view first_request(std::string_view frames, std::size_t max_message_bytes);

// How a client's error ends about a part of a two-phase commit left prepared on a lost server
// (Actions::prepared_parts).
inline constexpr const char* kLeftPartRolledBack =
    "pgvalve rolls it back there once the shard takes writes again (SHOW SHARDS counts it until "
    "then)";
inline constexpr const char* kLeftPartCommitted =
    "pgvalve commits it there once the shard takes writes again (SHOW SHARDS counts it until "
    "then)";

// Transaction mode refuses state that would pin a client to a replica (refuse_state_on_replica).
inline constexpr std::string_view kStateOnReplica =
    "pgvalve: this statement runs on a replica (a BEGIN READ ONLY transaction, a replica hint or "
    "pgvalve.route = replica) and would leave session state there (a session advisory lock, a "
    "WITH HOLD cursor, SQL PREPARE, LISTEN or a temporary object) that keeps the client on that "
    "replica, where its writes would fail; run it on the primary: /* pgvalve: primary */ BEGIN "
    "READ ONLY, or a read-write transaction";

// PostgreSQL's words when a table a prepared statement reads changed its result type (0A000),
// raised in RevalidateCachedQuery: drivers take them as their cue to prepare it again.
inline constexpr std::string_view kChangedResultType = "cached plan must not change result type";
inline constexpr std::string_view kChangedResultTypeRoutine = "RevalidateCachedQuery";

// What the prepared parts of a two-phase commit named `gid` are told (COMMIT PREPARED when
// `commit`, else ROLLBACK PREPARED), kept in `kept`.
std::string_view decision_sql(std::string_view gid, bool commit, std::string& kept);

// How a write's answers over several shards combine: rows concatenated (RETURNING), counts
// added up; or, for a write whose rows are the same on every shard (reference tables), the first
// shard's rows and count, as one database answers.
const routing::ScatterPlan& concatenated();
const routing::ScatterPlan& first_shards_answer();

struct Workspace {
 private:
  // Whether change_rare() / change_scatter() or change_tx() was called since the last clear():
  // read by every request, so in the first cache line, next to the route.
  bool rare_touched_ = false;
  bool shard_work_touched_ = false;
  bool fingerprint_kept_ = false;

 public:
  // The request waiting for a server: its route, and the link the server is for.
  LinkId pending_link = 0;
  routing::Route pending_route;

  std::string client_scratch;
  std::vector<Span> client_spans;
  std::vector<Span> reply_spans;  // local answers (to the client), from client_scratch
  std::string reply_scratch;
  Actions client_actions;
  Actions event_actions;
  // A deque: adding a link never moves the others (their scratch backs chunks in flight).
  std::deque<Link> links;
  // The unnamed statement and portal, as far as settings are concerned.
  Note unnamed_statement_note;
  Note unnamed_portal_note;
  bool unnamed_statement_pins = false;
  // The unnamed statement's note, pins and fingerprint above are this request's: set at its
  // Parse here, or from the statement kept since an earlier request (Session::Extras).
  bool unnamed_statement_noted = false;
  bool unnamed_portal_pins = false;
  std::string unhinted;  // a statement's text without its pgvalve hint comment
  // Sharded databases: this request's unnamed statement's text and parameter types, to route
  // its Binds (set at every such Parse: kept here, not in rare(), so that it allocates nothing).
  std::string unnamed_statement_text;
  std::string unnamed_statement_types;
  // Statistics: the fingerprints of the unnamed statement and portal.
  std::uint64_t unnamed_statement_fingerprint = 0;
  std::uint64_t unnamed_portal_fingerprint = 0;
  // The client's statement the unnamed portal was bound from, when the shape of its rows is not
  // known yet: a Describe of the portal tells it (PgJDBC describes the portal once, then keeps
  // the columns; PreparedStatement::shape).
  std::uint64_t unnamed_portal_unshaped_statement = 0;
  // The last text fingerprinted (a copy, compared byte for byte) with its value: routing and
  // the statistics of a request ask for the same text, in different steps.
  static constexpr std::size_t kMaxFingerprintedText = 1024;
  bool fingerprinted(std::string_view sql) const {
    return fingerprint_kept_ && std::string_view(fingerprinted_text_) == sql;
  }
  std::uint64_t fingerprinted_value() const { return fingerprinted_value_; }
  void keep_fingerprint(std::string_view sql, std::uint64_t value) {
    fingerprint_kept_ = sql.size() <= kMaxFingerprintedText;
    if (!fingerprint_kept_) return;
    fingerprinted_text_.assign(sql);
    fingerprinted_value_ = value;
  }
  void forget_fingerprint() { fingerprint_kept_ = false; }
  // Statistics left for Session::account(), after the step's writes: the text of one Query
  // whose fingerprint is due (for the newest request on `link` marked fingerprint_later; links
  // stay in place), one execution and one transaction to record. Further ones in the same step
  // are recorded at once.
  struct Accounting {
    const char* text = nullptr;
    std::size_t size = 0;
    Link* link = nullptr;
    bool execution_due = false;
    bool transaction_due = false;
    std::uint64_t transaction_micros = 0;
    stats::Execution execution;
    std::string sample;  // ... and its slow-query sample (keep_sample), if it has one
  };
  Accounting accounting;
  // The hosts a statement over several shards ran its parts on ("host:port,host:port"), for its
  // slow sample: kept here, not in the ScatterRun, so that its memory serves the next one.
  std::string gathered_hosts;
  // The last request sent to a replica (at most kMaxRetriedRequestBytes), to run again
  // elsewhere if the replica dies before answering; retry_pending: linked for that.
  std::string retry_request;
  bool retry_pending = false;
  bool retry_used = false;
  // Sharded databases: the request routed last is named statements' Parse and Describe ended by
  // a Flush (postgres.js asks a statement's parameter types before it binds them). Its Flush
  // goes to the server as a Sync, whose ReadyForQuery the client does not get, so that the
  // server goes back to the pool and the Bind that follows is routed by its values.
  bool flush_as_sync = false;

  // What only some requests need: a failure to report, LISTEN, settings changed inside a
  // transaction, notifications, tracked portals, a failed flight, a sharded database's unnamed
  // statement.
  struct Rare {
    // A waiting request whose checkout or settings sync failed gets this error.
    std::string failure_sqlstate;
    std::string failure;
    // The server's error for pgvalve's settings sync: the client's settings are refused.
    std::string sync_error_sqlstate;
    std::string sync_error;
    // The FATAL message a server said goodbye with (not passed on): the client's 08006 quotes
    // it, cut to kMaxGoodbyeBytes.
    static constexpr std::size_t kMaxGoodbyeBytes = 200;
    std::string server_goodbye;
    std::string server_goodbye_sqlstate;  // its SQLSTATE (57P01, 57P05, ...)
    // stats.redact_literals: false: the unnamed statement's text, and the unnamed portal's
    // statement with its Bind parameters, for the slow-query sample of its Execute.
    std::string unnamed_statement_sample;
    std::string unnamed_portal_sample;
    // A LISTEN/UNLISTEN waiting for the listen hub, and how to answer it.
    HubRequest::Kind hub_request = HubRequest::Kind::None;
    std::string hub_channel;
    HubReply hub_reply;
    std::vector<Note> tx_notes;  // settled in the open transaction, applied at commit
    std::vector<std::pair<std::string, std::size_t>> savepoints;  // name, tx_notes size then
    std::string notifications;  // waiting for the client to be between requests
    // Named portals (they live until the transaction ends) whose statement changes settings or
    // may pin the server: their Execute settles the note. Only such portals are kept, at most
    // kMaxTrackedPortals; past that, what they do is treated as unknown.
    struct PortalNote {
      std::string portal;
      Note note;
      bool pins = false;
      std::uint64_t fingerprint = 0;  // of its statement, for the statistics of its Executes
    };
    static constexpr std::size_t kMaxTrackedPortals = 64;
    std::vector<PortalNote> named_portals;
    std::vector<Note> review_notes;
    // A failed flight's Parses and eviction Closes, which the server skipped
    // (server_flight.cpp).
    struct SkippedStatement {
      std::uint64_t hash = 0;
      std::uint8_t action = 0;  // kActionEvictClose, kActionRecloseStatement, or 0: its Parse
    };
    std::vector<SkippedStatement> skipped_statements;
    std::vector<std::uint64_t> pending_statements;  // ... and those still on their way behind
  };
  // The decider's xid of a two-phase commit (two_phase.h): asked, told (the gid is known), or
  // not to be had (the decider failed or was lost first: every part rolls back).
  enum class XidState : std::uint8_t { Asked, Known, Failed };
  // A read over several shards being carried out (null: none).
  struct ScatterRun {
    std::unique_ptr<Scatter> scatter;
    std::vector<routing::Route> routes;  // one per shard taking part, in checkout order
    std::size_t next = 0;                // routes[next] is checked out next
    int open = 0;                        // links that have not answered yet
    bool waiting = false;                // a checkout for routes[next - 1] is under way
    // Parts of a read that run again (retry_scatter_part): checked out after routes[next..],
    // each at most once (`rerun`, by index in routes).
    std::vector<LinkId> again;
    std::vector<bool> rerun;
    // A write: its two-phase commit's transaction name (known once the decider, the first
    // shard's part, told its xid: two_phase.h), and once every part was answered whether it
    // commits, with the message that says so to each shard.
    bool two_phase = false;
    XidState xid = XidState::Asked;
    std::optional<std::uint64_t> decider_xid;  // read from its answer, used at its end
    std::string prepare;  // Query: PREPARE TRANSACTION 'gid', once the gid is known
    std::string gid;
    bool deciding = false;
    bool commit = false;
    bool committed_some = false;  // a part's COMMIT PREPARED succeeded: the commit is decided
    std::string decision;         // a Query message of decision_sql (and of wal_position_message)
    std::string undo;             // ... ROLLBACK PREPARED once the first COMMIT PREPARED failed
    bool wal_after = false;       // the commit is followed by the primary's WAL position
    std::string decision_sql;     // COMMIT PREPARED or ROLLBACK PREPARED 'gid'
    // Run on the servers of the client's transaction over several shards (shard_transaction.cpp):
    // nothing is checked out or given back; `lost`: one of them was lost meanwhile.
    bool in_transaction = false;
    bool lost = false;
    std::uint64_t fingerprint = 0;
    std::string sample;  // stats.redact_literals: false: the client's statement as sent
    Clock::time_point started{};
    // The parts recorded so far (statistics): bit i, shard i ran one; whether all ran on replicas.
    std::uint64_t parts_on = 0;
    bool parts_on_replicas = true;
    // COPY FROM STDIN over several shards (copy_flight.cpp): the client's rows cut and routed,
    // each shard's CopyData message being filled this step, the first shard's CopyInResponse
    // for the client, how many shards are ready for data, and the PREPARE TRANSACTION each
    // shard is sent after its CopyDone or CopyFail.
    std::unique_ptr<routing::CopyRows> copy;
    std::vector<std::string> copy_out;
    std::string copy_in_response;
    int copy_ready = 0;
  };

  // The client's transaction on a sharded database (shard_transaction.cpp). It runs on the shard
  // its first statement names; a statement for another shard makes that shard join it (its own
  // server, the same BEGIN), and COMMIT then prepares the transaction on every shard and commits
  // the prepared parts (two-phase commit).
  struct ShardTransaction {
    std::string begin;  // the BEGIN (and SET TRANSACTION) that opened it, for joining shards
    bool begin_too_long = false;  // ... past kMaxDeferredBegin: not kept, no shard joins
    // The request the transaction's first server was checked out for needs several shards: it
    // is routed again once that server runs the BEGIN.
    bool route_again = false;
    bool joining = false;  // a shard's server is being checked out or runs the BEGIN
    // The transaction was abandoned (a part lost) while that checkout was under way: the server
    // it brings goes straight back.
    bool abandoned = false;
    bool join_allowed = false;  // ... and it reported max_prepared_transactions above 0
    bool spans = false;         // a second shard joined: `current` is where requests go
    // The client sent no BEGIN: its request up to one Sync, which PostgreSQL runs as one
    // implicit transaction, reached a second shard (psycopg's executemany(), PgJDBC's
    // executeBatch(), pgx's SendBatch). pgvalve began a transaction on the first shard and ends
    // it at that Sync: committed on every shard with two-phase commit, or rolled back on all
    // after an error. The client sees the answers of one implicit transaction.
    bool implicit = false;
    LinkId current = 0;
    // COMMIT or ROLLBACK of a transaction that spans shards, being carried out (read by every
    // request's settle(), so next to the flags above, in the first cache line).
    bool ending = false;
    // Why the shard the client's next statement needs could not join (a 0A000 or the
    // checkout's error), for the refusal that statement gets on the current shard.
    std::string refusal_sqlstate;
    std::string refusal;
    std::uint16_t refused_shard = 0;  // the shard that could not join
    // A statement over several shards that cannot run on the transaction's parts: its refusal.
    std::string scatter_refusal;
    bool commit = false;             // the client committed and no part had failed
    bool deciding = false;           // every part answered its PREPARE TRANSACTION
    bool committed_some = false;     // a part's COMMIT PREPARED succeeded: the commit is decided
    int open = 0;                    // parts whose PREPARE TRANSACTION is not answered yet
    XidState xid = XidState::Asked;  // COMMIT asks the decider, the lowest shard's part
    std::optional<std::uint64_t> decider_xid;
    std::string gid;
    std::string prepare;   // Query: PREPARE TRANSACTION 'gid'
    std::string decision;  // Query: COMMIT PREPARED / ROLLBACK PREPARED 'gid' (+ WAL position)
    std::string undo;      // ... ROLLBACK PREPARED once the first COMMIT PREPARED failed
    std::string decision_sql;
    bool wal_after = false;
    HubReply reply;     // the client's extended messages to answer before the tag
    std::string tag;    // COMMIT or ROLLBACK
    std::string error;  // an ErrorResponse for the client instead of the tag
    Clock::time_point started{};
  };

  // The rare part, work over several shards (scatter) and the client's transaction over them
  // (tx), on sharded databases: changed only through change_rare(), change_scatter() and
  // change_tx(), which mark them for clear() to reset. The everyday request only reads them and
  // never touches (or resets) their cache lines, which a workspace cleared for every transaction
  // would otherwise bring back into the cache each time.
  // An untouched part reads as the shared kUntouched* value (the default), which stays in the
  // cache, rather than as the workspace's own lines. So a const reference taken before a
  // change_*() call may not show that change: take the reference from change_*() instead.
  const Rare& rare() const { return rare_touched_ ? rare_ : kUntouchedRare; }
  Rare& change_rare() {
    rare_touched_ = true;
    return rare_;
  }
  const ScatterRun& scatter() const { return shard_work_touched_ ? scatter_ : kUntouchedScatter; }
  const ShardTransaction& tx() const { return shard_work_touched_ ? tx_ : kUntouchedTx; }
  ScatterRun& change_scatter() {
    shard_work_touched_ = true;
    return scatter_;
  }
  ShardTransaction& change_tx() {
    shard_work_touched_ = true;
    return tx_;
  }

  void clear();

 private:
  static const Rare kUntouchedRare;
  static const ScatterRun kUntouchedScatter;
  static const ShardTransaction kUntouchedTx;
  Rare rare_;
  ScatterRun scatter_;
  ShardTransaction tx_;
  std::string fingerprinted_text_;  // fingerprinted(), with fingerprint_kept_
  std::uint64_t fingerprinted_value_ = 0;
};

}  // namespace pgvalve::session
