// A client's transaction on a sharded database that runs on several shards. It starts on the
// shard its first statement names (client_flight.cpp). A later request for another shard makes
// that shard join: a server of its own is checked out, runs the transaction's BEGIN (and the SET
// TRANSACTION / SET LOCAL the client sent before) and says whether it allows prepared
// transactions; then the request runs there. Each request goes to the shard it names, on the
// server that shard's part of the transaction runs on. COMMIT prepares every part (PREPARE
// TRANSACTION, all at once) and, only once every part is prepared, commits them one shard after
// the other in shard order (COMMIT PREPARED); otherwise the prepared parts are rolled back. A
// ROLLBACK, or a COMMIT after an error, rolls back every part.
//
// What would apply to one part only is refused while the transaction spans shards: settings
// (SET, SET LOCAL, set_config), savepoints, several statements in one Query, and session state
// (advisory locks, temporary objects, cursors WITH HOLD, SQL PREPARE, LISTEN). A transaction that
// changed settings, made a savepoint or holds such state does not take a second shard.
#include <algorithm>
#include <bit>
#include <charconv>
#include <optional>

#include "protocol/messages.h"
#include "protocol/wire.h"
#include "session/limits.h"
#include "session/session_internal.h"

namespace pgvalve::session {

namespace pr = protocol;
using Kind = pr::PendingResponse::Kind;
using routing::StatementKind;

namespace {

constexpr std::string_view kTwoPhaseCheck =
    "SELECT pg_catalog.current_setting('max_prepared_transactions')";

}  // namespace

const std::string& rollback_message() {
  static const std::string message = pr::query_message("ROLLBACK");
  return message;
}

const std::string& xid_message() {
  static const std::string message = pr::query_message(kXidQuery);
  return message;
}

std::string_view first_request(std::string_view frames, std::size_t max_message_bytes) {
  pr::FrameReader reader(frames, max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    if (f.tag == 'Q' || f.tag == 'S') return frames.substr(0, reader.offset());
  }
  return {};
}

bool Session::several_servers() const {
  return scattering() ||
         (work_ && (work_->tx().spans || work_->tx().joining || work_->tx().implicit));
}

bool Session::route_in_transaction(std::string_view frames, Link*& l, Actions& out) {
  Workspace& w = work();
  auto& tx = w.change_tx();
  if (tx.joining) return false;
  if (tx.route_again) {
    tx.route_again = false;
    l->reserved = false;
  }
  if (tx.spans) {
    if (end_shard_transaction(frames, out)) return true;
    // After an error PostgreSQL answers everything but the transaction's end with 25P02: the
    // part that failed does so for the whole transaction.
    for (Link& o : w.links) {
      if (o.server && o.server->tx_status == 'E') {
        tx.current = o.id;
        l = &o;
        return false;
      }
    }
  }
  if (l->server->tx_status != 'T') return false;
  Flight flight{frames, &w.reply_scratch, &w.reply_spans, &out};
  const RequestText request = request_text(flight);
  if (request.sql.empty()) return false;
  if (!request.bound && !request.ended)
    return true;  // its Bind, still on its way, may hold the key
  // Statements described alone (asyncpg prepares each new one so): the current shard answers,
  // its Flush sent as a Sync (the transaction goes on) so that their Binds, which may need
  // other shards, come as requests of their own.
  if (describes_statements(frames)) {
    w.flush_as_sync = true;
    return false;
  }
  routing::RouteContext context;
  context.device_id = extras().device_id;
  context.reading = text_reading();
  const BindParams params(request.bind_rest, request.param_types);
  context.params = request.bound ? &params : nullptr;
  context.fingerprint = fingerprint_of(request.sql);
  routing::Route route = router_.route(request.sql, context);
  auto part_of = [&](std::uint16_t shard) -> Link* {
    for (Link& o : w.links) {
      if (o.server && o.route.shard == shard) return &o;
    }
    return nullptr;
  };
  if (route.kind == routing::Route::Kind::Shards) {
    // A statement over several shards, or a COPY routed row by row: each shard it needs joins
    // first, one after the other; then it runs on their parts of the transaction. (What cannot
    // is refused on the current shard, as an error would end the transaction: shard_conflict().)
    if (!tx.refusal.empty() || !tx.scatter_refusal.empty()) return false;
    for (std::uint64_t rest = route.shards; rest != 0; rest &= rest - 1) {
      const auto shard = static_cast<std::uint16_t>(std::countr_zero(rest));
      if (!part_of(shard)) return join_shard(shard, *l, out);
    }
    const ScatterStart started = route.copy_rows ? start_copy(frames, request, route, out, true)
                                                 : start_scatter(frames, request, route, out, true);
    switch (started) {
      case ScatterStart::Started:
      case ScatterStart::Waiting:
        return true;
      case ScatterStart::NotScattered:
        if (route.kind == routing::Route::Kind::Refuse) {
          tx.refusal_sqlstate = route.refusal->sqlstate;
          tx.scatter_refusal = route.refusal->message;
        }
        return false;  // a refusal, or a Parse or Describe alone: on the current shard
    }
    return false;
  }
  const bool one_shard =
      route.kind == routing::Route::Kind::Primary || route.kind == routing::Route::Kind::Replica;
  if (!one_shard || route.any_shard || route.shard == l->route.shard) return false;
  if (Link* o = part_of(route.shard)) {
    tx.current = o->id;
    l = o;
    return false;
  }
  if (!tx.refusal.empty()) return false;
  return join_shard(route.shard, *l, out);
}

// `shard` joins the transaction on `l`, unless it cannot: then the request is refused on the
// current shard, which ends the transaction as an error would (shard_conflict()). True when
// its server is being checked out.
bool Session::join_shard(std::uint16_t shard, Link& l, Actions& out) {
  Workspace& w = work();
  auto& tx = w.change_tx();
  if (std::string why = join_obstacle(l); !why.empty()) {
    tx.refusal_sqlstate = "0A000";
    tx.refusal = std::move(why);
    tx.refused_shard = shard;
    return false;
  }
  LinkId id = 0;
  while (id < w.links.size() && w.links[id].server)
    ++id;
  tx.joining = true;
  tx.join_allowed = false;
  tx.refused_shard = shard;  // named in the refusal if it cannot join
  if (!tx.spans) tx.current = l.id;
  work().pending_route = routing::Route::primary(shard);
  work().pending_link = id;
  out.check_out = true;
  out.route = work().pending_route;
  enter(SessionState::WaitingForServer);
  return true;
}

std::string Session::join_obstacle(const Link& l) const {
  const Workspace& w = *work_;
  if (l.pending_setting_notes > 0 ||
      std::any_of(w.rare().tx_notes.begin(), w.rare().tx_notes.end(),
                  [](const Note& n) { return is_setting_note(n.kind); })) {
    return "cannot join it: the transaction changed session settings (SET, set_config), which "
           "would apply to one shard's part only; change them before BEGIN";
  }
  if (!w.rare().savepoints.empty()) {
    return "cannot join it: the transaction has a savepoint, which pgvalve does not carry "
           "across shards; release it first, or commit and start another transaction";
  }
  if (pinned_ || l.check_pins) {
    return "cannot join it: the transaction may hold session state (an advisory lock, a "
           "temporary table, a cursor WITH HOLD) that lives on one shard's server";
  }
  if (w.tx().begin_too_long) {
    return "cannot join it: the transaction's BEGIN, SET TRANSACTION and SET LOCAL statements "
           "are longer than pgvalve keeps for a joining shard (1 KiB)";
  }
  return {};
}

// Whatever in `sql` would apply to one part of a transaction over several shards: refused.
std::string Session::spanning_refusal(std::string_view sql) const {
  const routing::StatementInfo info = routing::classify(sql);
  const auto refuse = [](std::string_view what) {
    return "pgvalve: " + std::string(what) +
           " does not run in a transaction over several shards, since each shard runs its own "
           "part of the transaction; run it before the transaction touches a second shard, or "
           "outside the transaction";
  };
  if (info.multiple_statements) {
    return "pgvalve: a transaction over several shards takes one statement per Query, each "
           "sent to its shard; send the statements one at a time";
  }
  switch (info.kind) {
    case StatementKind::Commit:
    case StatementKind::Rollback:
      return refuse("COMMIT or ROLLBACK AND CHAIN, or pipelined with other statements,");
    case StatementKind::Savepoint:
    case StatementKind::Release:
    case StatementKind::RollbackToSavepoint:
      return refuse("a savepoint");
    case StatementKind::PrepareTransaction:
    case StatementKind::CommitPrepared:
    case StatementKind::RollbackPrepared:
      return refuse("a prepared transaction statement");
    case StatementKind::Set:
    case StatementKind::SetLocal:
    case StatementKind::SetTransaction:
    case StatementKind::Reset:
    case StatementKind::ResetAll:
    case StatementKind::Discard:
      return refuse("changing a setting");
    case StatementKind::Prepare:
    case StatementKind::Deallocate:
      return refuse("SQL PREPARE or DEALLOCATE");
    case StatementKind::Listen:
    case StatementKind::Unlisten:
      return refuse("LISTEN or UNLISTEN");
    default:
      break;
  }
  if (info.set_config != routing::StatementInfo::SetConfig::None || info.body_sets) {
    return refuse("set_config()");
  }
  if (info.temporary || info.with_hold || info.calls_advisory_session_lock ||
      info.calls_advisory_unlock || info.body_listens) {
    return refuse(
        "a statement that leaves session state (a temporary object, a cursor WITH "
        "HOLD, an advisory lock)");
  }
  return {};
}

// A statement the client ran inside its transaction on a sharded database that a joining shard
// must run too, after the BEGIN: SET TRANSACTION and SET LOCAL.
void Session::note_transaction_statement(const routing::StatementInfo& info, const Link& l) {
  auto& tx = work().change_tx();
  if (info.kind == StatementKind::Begin) {
    tx.begin_too_long = info.text.size() > kMaxDeferredBegin;
    tx.begin.assign(tx.begin_too_long ? std::string_view("BEGIN") : info.text);
    return;
  }
  const bool local = info.kind == StatementKind::SetTransaction ||
                     info.kind == StatementKind::SetLocal ||
                     info.set_config == routing::StatementInfo::SetConfig::Local;
  if (!local || l.server->tx_status == 'I') return;
  if (tx.begin.empty()) tx.begin = "BEGIN";
  // Kept only up to a bound: past it, the transaction takes no other shard (join_obstacle()).
  if (tx.begin_too_long || tx.begin.size() + 2 + info.text.size() > kMaxDeferredBegin) {
    tx.begin_too_long = true;
    return;
  }
  tx.begin.append("; ").append(info.text);
}

// The shard's server was linked: its settings are made the client's, and it runs the
// transaction's BEGIN and tells whether it allows prepared transactions, in one write.
void Session::link_join(Link& l, Actions& out) {
  Workspace& w = work();
  auto& tx = w.change_tx();
  if (tx.abandoned) {
    unlink(l.id, LinkOp::Kind::Release, out);
    tx = {};
    enter(SessionState::Idle);
    out.resume_client = true;
    return;
  }
  l.reserved = true;
  w.client_scratch.clear();
  start_sync(l, w.client_scratch, now_);
  std::string sql = tx.begin.empty() ? std::string("BEGIN") : tx.begin;
  sql.append("; ").append(kTwoPhaseCheck);
  pr::append_query(w.client_scratch, sql);
  expect_own_answer(l, kActionTxJoin);
  l.begin_pending = true;
  l.syncing = true;
  l.sync_started = now_;
  out.to_server.push_back({w.client_scratch.data(), w.client_scratch.size()});
  out.server_link = l.id;
  enter(SessionState::Syncing);
}

void Session::finish_join(Link& l, bool ok, Actions& out) {
  auto& tx = work().change_tx();
  l.begin_pending = false;
  l.syncing = false;
  l.reserved = false;
  if (!ok || !tx.join_allowed) {
    const std::string why =
        ok ? "cannot join it: a transaction over several shards commits with two-phase commit, "
             "which server " +
                 l.server->name +
                 " does not allow (max_prepared_transactions = 0); set max_prepared_transactions "
                 "above 0 on every shard, or commit and start another transaction"
           : "could not begin its part of the transaction on server " + l.server->name;
    unlink(l.id, LinkOp::Kind::CleanAndRelease, out, "ROLLBACK");
    join_failed("0A000", why, out);
    return;
  }
  tx.joining = false;
  tx.spans = true;
  tx.current = l.id;
  enter(SessionState::Holding);
  out.resume_client = true;
}

void Session::join_failed(std::string_view sqlstate, std::string why, Actions& out) {
  auto& tx = work().change_tx();
  tx.joining = false;
  tx.refusal_sqlstate.assign(sqlstate);
  tx.refusal = std::move(why);
  work().pending_link = 0;
  enter(SessionState::Holding);
  out.resume_client = true;
}

// ---- A request whose statements name several shards ------------------------------------------
// Drivers send a batch of statements up to one Sync (psycopg's executemany(), PgJDBC's
// executeBatch(), pgx's SendBatch), and a batch of readings names many devices. The request's
// part on one shard ends before the Bind of the first statement for another with a Sync of
// pgvalve's, whose ReadyForQuery the client does not get; once that shard has answered, the
// rest of the request goes to the next statement's shard (route_in_transaction), which joins
// the transaction as it would for a request of its own, and so on. Outside a transaction of the
// client's, PostgreSQL runs the request as one implicit transaction: a BEGIN before that Sync
// makes what ran so far on the first shard part of a transaction block, and the client's Sync
// ends the transaction on every shard (ShardTransaction::implicit). A replica's part only
// reads: it ends with the Sync alone and its server goes back, and the rest is routed afresh.
// The parts run one after the other, so the client gets its answers in order.

bool Session::may_hop(const Link& l, const BindParams* params) const {
  if (!params || options_.mode != config::PoolMode::Transaction) return false;
  // Only plain statements ran in the request so far: a BEGIN, COMMIT or setting among them
  // would not run as it did once the request is a transaction block.
  const char status = l.server->tx_status;
  const bool plain = status == 'I' && l.flight_plain && !l.check_pins;
  if (l.route.kind == routing::Route::Kind::Replica) return plain && !work_->tx().implicit;
  return l.route.kind == routing::Route::Kind::Primary && (status == 'T' || plain);
}

void Session::hop(Link& l, Flight& flight, bool unnamed) {
  Workspace& w = work();
  if (unnamed && !extras().unnamed_kept) {
    // The Bind's unnamed statement is prepared again on the next shard's server.
    const std::string& query = w.unnamed_statement_text;
    const std::string& types = w.unnamed_statement_types;
    if (query.size() + types.size() > kMaxKeptUnnamedBytes) {
      raise_on_server("54000",
                      "pgvalve: this request's statements need several shards, and its unnamed "
                      "statement is longer than pgvalve keeps to prepare on the next shard (1 "
                      "MiB); send a Sync after each statement, or use a named statement",
                      true, l, flight);
      return;
    }
    Extras& e = extras_to_change();
    e.unnamed_query.assign(query);
    e.unnamed_types.assign(types);
    e.unnamed_kept = true;
  }
  const std::size_t from = flight.scratch->size();
  // A replica's part only read: it needs no transaction of its own, and the rest of the request
  // is routed afresh once it is answered (to a replica, or to a primary for a write).
  if (l.server->tx_status == 'I' && l.route.kind == routing::Route::Kind::Primary) {
    // An unnamed statement and portal: the client's Bind being planned replaces its portal,
    // and its statement is prepared again here if a later Bind of it comes back.
    pr::append_parse_raw(*flight.scratch, {}, "BEGIN", {});
    pr::append_bind(*flight.scratch, {}, {}, pr::kBindWithoutParameters);
    pr::append_execute(*flight.scratch, {}, 0);
    l.pending.push({Kind::ParseComplete, true});
    l.pending.push({Kind::BindComplete, true});
    l.pending.push({Kind::Execute, true});
    l.server->unnamed_statement_of = 0;
    w.change_tx().implicit = true;
  }
  pr::append_sync(*flight.scratch);
  mark_scratch(flight, from);
  pr::PendingResponse ready{.kind = Kind::ReadyForQuery, .internal = true, .sync = true};
  ready.action = kActionHop;
  l.pending.push(ready);
  ++l.in_flight;
  l.open_extended = false;
  l.flushed = false;
  flight.stop = true;
}

// The part before the hop was answered (`failed`: with an error). settle() then has the
// client's input planned again: its rest goes to the next statement's shard, or, after an error,
// up to the client's Sync is not run (PostgreSQL skips it).
void Session::finish_hop(Link& l, bool failed) {
  switch (l.server->tx_status) {
    case 'T':
      return;
    case 'E':
      l.skipping_until_sync = true;
      return;
    default:
      // A replica's reads: the server goes back, and the rest is routed afresh.
      if (!failed && !work().tx().implicit) return;
      // A statement before pgvalve's BEGIN failed (or a replica's read): the implicit
      // transaction is over, and the rest of the request is answered by pgvalve up to its Sync,
      // as the server would.
      work().change_tx().implicit = false;
      skip_until_sync_ = true;
      error_sent_in_flight_ = true;
      return;
  }
}

// COMMIT or ROLLBACK of a transaction over several shards, alone in its request: every part
// ends. False when the request is something else.
bool Session::end_shard_transaction(std::string_view frames, Actions& out) {
  const std::string_view request = first_request(frames, options_.max_message_bytes);
  if (request.empty()) return false;
  // A Query, or Parse / Bind / Describe portal / Execute / Sync of one statement, named or not
  // (PgJDBC prepares its COMMIT once it has sent it a few times); postgres.js describes the
  // statement between its Parse and Bind.
  std::string_view sql;
  HubReply reply;
  std::optional<pr::ParseMessage> parse;
  bool executed = false;
  pr::FrameReader reader(request, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    switch (f.tag) {
      case 'Q':
        if (!reader.at_end() || reply.parse) return false;
        sql = pr::read_query(f).value_or("");
        executed = true;
        break;
      case 'P':
        parse = pr::read_parse(f);
        if (!parse || reply.parse) return false;
        sql = parse->query;
        reply.parse = true;
        break;
      case 'B': {
        const auto b = pr::read_bind_head(f);
        if (!b || reply.bind || !b->portal.empty()) return false;
        if (parse && b->statement != parse->statement) return false;
        if (!parse) {
          const pr::PreparedStatement* named =
              statements_ && !b->statement.empty() ? statements_->find(b->statement) : nullptr;
          if (!named) return false;
          sql = named->query;
        }
        reply.bind = true;
        break;
      }
      case 'D': {
        const auto d = pr::read_describe(f);
        if (!d) return false;
        if (d->kind == 'S' && reply.parse && !reply.bind && !reply.statement_described &&
            d->name == parse->statement) {
          reply.statement_described = true;
          break;
        }
        if (!reply.bind || reply.describe || d->kind != 'P' || !d->name.empty()) return false;
        reply.describe = true;
        break;
      }
      case 'E':
        if (!reply.bind || executed) return false;
        executed = true;
        break;
      case 'S':
        break;
      default:
        return false;
    }
  }
  if (!executed || !reader.at_end()) return false;
  const routing::StatementInfo info = routing::classify(sql);
  const bool commit = info.kind == StatementKind::Commit;
  if ((!commit && info.kind != StatementKind::Rollback) || info.and_chain ||
      info.multiple_statements) {
    return false;
  }
  if (parse && !parse->statement.empty()) {
    if (!statements_ || !statements_->find(parse->statement)) {
      if (prepared_statement_count() >= kMaxClientStatements) return false;  // refused on a shard
    }
    define_statement(parse->statement, parse->query, parse->param_types);
  }
  out.consumed = request.size();
  end_parts(commit, reply, out);
  return true;
}

void Session::end_parts(bool commit, const HubReply& reply, Actions& out, bool at_sync) {
  Workspace& w = work();
  auto& tx = w.change_tx();
  const bool failed = std::any_of(w.links.begin(), w.links.end(), [](const Link& o) {
    return o.server && o.server->tx_status == 'E';
  });
  tx.ending = true;
  tx.reply = reply;
  tx.error.clear();
  tx.started = now_;
  // PostgreSQL answers COMMIT of a failed transaction with ROLLBACK.
  tx.commit = commit && !failed;
  tx.tag = at_sync ? "" : (tx.commit ? "COMMIT" : "ROLLBACK");
  enter(SessionState::Ending);
  if (tx.commit) {
    // The decider, the lowest shard's part (committed first), names the commit with its xid
    // (two_phase.h); every part is prepared under that name once it is told.
    Link* decider = nullptr;
    for (Link& o : w.links) {
      if (o.server && (!decider || o.route.shard < decider->route.shard)) decider = &o;
    }
    tx.xid = Workspace::XidState::Asked;
    decider->last_activity = now_;
    out.to_links.push_back({decider->id, {xid_message().data(), xid_message().size()}});
    expect_own_answer(*decider, kActionTxXid);
    return;
  }
  for (Link& o : w.links) {
    if (!o.server) continue;
    o.last_activity = now_;
    out.to_links.push_back({o.id, {rollback_message().data(), rollback_message().size()}});
    expect_own_answer(o, kActionTxFinish);
    o.finishing = true;
  }
}

// The decider told its xid (or could not): every part is asked to prepare under the name it
// makes, or, without one, the transaction rolls back everywhere.
void Session::prepare_transaction_parts(Link& decider, bool ok, std::string& into, Actions& out) {
  Workspace& w = work();
  auto& tx = w.change_tx();
  if (!ok || !tx.decider_xid || !tx.error.empty()) {
    tx.xid = Workspace::XidState::Failed;
    if (tx.error.empty()) {
      set_tx_error("XX000", "pgvalve: server " + decider.server->name +
                                " could not name the transaction's commit; it was rolled back "
                                "on every shard, run it again");
    }
    decide_shard_transaction(into, out);
    return;
  }
  tx.xid = Workspace::XidState::Known;
  tx.gid = two_phase_gid(decider.route.shard, *tx.decider_xid);
  tx.prepare.clear();
  pr::append_query(tx.prepare, "PREPARE TRANSACTION '" + tx.gid + "'");
  for (Link& o : w.links) {
    if (!o.server) continue;
    o.last_activity = now_;
    out.to_links.push_back({o.id, {tx.prepare.data(), tx.prepare.size()}});
    expect_own_answer(o, kActionTxPrepare);
    ++tx.open;
  }
}

void Session::set_tx_error(std::string_view sqlstate, std::string_view message) {
  auto& tx = work().change_tx();
  if (tx.error.empty()) append_error(tx.error, sqlstate, message);
}

// A message of pgvalve's own query on a part of a transaction over several shards, before its
// ReadyForQuery.
void Session::tx_frame(Link& l, const pr::Frame& f) {
  auto& tx = work().change_tx();
  auto& head = l.pending.front();
  if (f.tag == 'E') head.failed = true;
  switch (head.action) {
    case kActionTxXid:
      if (f.tag == 'D') tx.decider_xid = xid_in_row(f);
      return;
    case kActionTxJoin:
      if (f.tag == 'D') {
        pr::Cursor c(f.body);
        const auto columns = c.u16();
        const auto len = c.i32();
        if (!columns || *columns != 1 || !len || *len < 0) return;
        const auto value = c.bytes(static_cast<std::size_t>(*len));
        int n = 0;
        if (value &&
            std::from_chars(value->data(), value->data() + value->size(), n).ec == std::errc{}) {
          tx.join_allowed = n > 0;
        }
      }
      return;
    case kActionTxPrepare:
      if (f.tag == 'C') {
        l.prepared = pr::read_command_complete(f).value_or("") == "PREPARE TRANSACTION";
        if (!l.prepared) {
          set_tx_error("XX000", "pgvalve: server " + l.server->name +
                                    " did not prepare its part of the transaction; the "
                                    "transaction was rolled back on every shard");
        }
      } else if (f.tag == 'E') {
        const auto e = pr::read_error_response(f);
        if (e && e->sqlstate == "55000" &&
            e->message.find("prepared transactions are disabled") != std::string_view::npos) {
          set_tx_error("55000",
                       "pgvalve: a transaction over several shards commits with "
                       "two-phase commit, which server " +
                           l.server->name +
                           " does not allow; set max_prepared_transactions above 0 on "
                           "every shard. The transaction was rolled back on every shard");
        } else if (tx.error.empty()) {
          tx.error.assign(f.whole);  // the server's own reason (a deferred constraint, ...)
        }
      }
      return;
    case kActionTxFinish:
      if (f.tag == 'E') l.discard = true;
      return;
    case kActionTxWal:
      if (f.tag == 'D') read_wal_position(l, f);
      return;
    default:
      return;
  }
}

// pgvalve's own query on a part answered up to its ReadyForQuery.
void Session::tx_answered(Link& l, std::uint8_t action, bool failed, std::string& into,
                          Actions& out) {
  auto& tx = work().change_tx();
  switch (action) {
    case kActionTxJoin:
      finish_join(l, !failed, out);
      return;
    case kActionTxXid:
      prepare_transaction_parts(l, !failed, into, out);
      return;
    case kActionTxPrepare:
      l.part_answered = true;
      if (--tx.open == 0) decide_shard_transaction(into, out);
      return;
    case kActionTxFinish:
    case kActionTxWal: {
      if (!l.pending.empty()) return;  // the WAL position after the commit comes next
      if (l.discard && tx.deciding && tx.commit && !tx.committed_some) {
        // The first COMMIT PREPARED failed: no part committed, so none does. The others are
        // rolled back, and so is this part once pgvalve finds it still prepared.
        tx.commit = false;
        tx.wal_after = false;
        // A message of its own: the COMMIT PREPARED sent by an earlier step stays as it was.
        pr::append_query(tx.undo, tx_decision_sql());
        out.prepared_parts.push_back({l.route.shard, tx.gid, false});
        set_tx_error("40000", "pgvalve: COMMIT PREPARED '" + tx.gid + "' failed on server " +
                                  l.server->name +
                                  " before any shard committed the transaction; it was rolled "
                                  "back on every shard, run it again");
      } else if (l.discard && tx.deciding && tx.commit) {
        out.prepared_parts.push_back({l.route.shard, tx.gid, true});
        set_tx_error("XX000", "pgvalve: COMMIT PREPARED '" + tx.gid + "' failed on server " +
                                  l.server->name +
                                  " after other shards committed the transaction; it stays "
                                  "prepared there until " +
                                  kLeftPartCommitted);
      } else if (tx.deciding && tx.commit) {
        tx.committed_some = true;
      }
      const bool clean = !l.discard && l.server->tx_status == 'I';
      unlink(l.id, clean ? LinkOp::Kind::Release : LinkOp::Kind::Close, out);
      next_decision(into, out);
      return;
    }
    default:
      return;
  }
}

// Every part answered its PREPARE TRANSACTION: the transaction commits when each one prepared.
void Session::decide_shard_transaction(std::string& into, Actions& out) {
  Workspace& w = work();
  auto& tx = w.change_tx();
  tx.deciding = true;
  tx.commit = tx.commit && tx.error.empty() &&
              std::all_of(w.links.begin(), w.links.end(),
                          [](const Link& o) { return !o.server || o.prepared; });
  tx.decision.clear();
  pr::append_query(tx.decision, tx_decision_sql());
  // read_your_writes = lsn: each primary's WAL position once it committed.
  tx.wal_after =
      tx.commit && router_.splits() && options_.read_your_writes == config::ReadYourWrites::Lsn;
  if (tx.wal_after) tx.decision.append(wal_position_message());
  // A part whose PREPARE TRANSACTION failed was rolled back by it.
  for (Link& o : w.links) {
    if (!o.server || o.prepared) continue;
    if (o.server->tx_status == 'I') {
      unlink(o.id, LinkOp::Kind::Release, out);
    } else {
      unlink(o.id, LinkOp::Kind::CleanAndRelease, out, "ROLLBACK");
    }
  }
  next_decision(into, out);
}

// The decision goes to the prepared parts one at a time in shard order (the first COMMIT
// PREPARED decides); the client is answered once no part is left.
void Session::next_decision(std::string& into, Actions& out) {
  Workspace& w = work();
  auto& tx = w.change_tx();
  if (tx.deciding) {
    Link* next = nullptr;
    for (Link& o : w.links) {
      if (!o.server) continue;
      if (o.finishing) return;  // its answer comes first
      if (o.prepared && (!next || o.route.shard < next->route.shard)) next = &o;
    }
    if (next) {
      next->finishing = true;
      next->last_activity = now_;
      const std::string& decision = tx.undo.empty() ? tx.decision : tx.undo;
      out.to_links.push_back({next->id, {decision.data(), decision.size()}});
      expect_own_answer(*next, kActionTxFinish);
      if (tx.wal_after) expect_own_answer(*next, kActionTxWal);
      return;
    }
  }
  if (link_count() > 0) return;  // ROLLBACKs still answering
  finish_shard_transaction(into, out);
}

std::string_view Session::tx_decision_sql() {
  auto& tx = work().change_tx();
  return decision_sql(tx.gid, tx.deciding && tx.commit, tx.decision_sql);
}

void Session::finish_shard_transaction(std::string& into, Actions& out) {
  Workspace& w = work();
  auto& tx = w.change_tx();
  const bool committed = tx.deciding && tx.commit;
  append_local_heads(tx.reply, into);
  if (!tx.error.empty()) {
    into.append(tx.error);
  } else if (!tx.tag.empty()) {
    pr::append_command_complete(into, tx.tag);
  }
  report_settings(into);
  pr::append_ready_for_query(into, 'I');
  // read_your_writes = time: the client's reads go to primaries for the window after it.
  if (committed) last_write_at_ = now_;
  if (recorder_) {
    const auto took = std::chrono::duration_cast<std::chrono::microseconds>(now_ - tx.started);
    recorder_->stats->count_transaction(recorder_->labels,
                                        static_cast<std::uint64_t>(took.count()));
  }
  tx = {};
  deliver_queued_notifications(into);
  work().pending_link = 0;
  enter(SessionState::Idle);
  out.resume_client = true;
  if (drain_requested_) close_with("57P01", drain_message(), out);
}

// A part's server is lost (or silent past its deadline) while the transaction spans shards,
// joins one, or ends. True when handled here.
bool Session::shard_transaction_link_lost(Link& l, LinkOp::Kind kind, Actions& out) {
  auto& tx = work().change_tx();
  const std::string name = l.server->name;
  if (tx.joining && l.begin_pending) {
    unlink(l.id, kind, out);
    join_failed("08006", "could not join it: lost server " + name + " while it began its part",
                out);
    return true;
  }
  if (!tx.ending) return false;
  std::string& into = out.outbox;
  if (!tx.deciding && tx.commit && tx.xid == Workspace::XidState::Asked) {
    // Lost before the commit was named (two_phase.h): nothing is prepared anywhere yet.
    set_tx_error("08006", "pgvalve: lost server " + name +
                              " before the transaction committed on every shard; it was "
                              "rolled back on every shard");
    bool decider = false;
    for (std::size_t i = 0; i < l.pending.size(); ++i)
      decider |= l.pending.at(i).action == kActionTxXid;
    unlink(l.id, kind, out);
    if (decider) {
      tx.xid = Workspace::XidState::Failed;
      decide_shard_transaction(into, out);
    }
    return true;
  }
  if (!tx.deciding && tx.commit) {
    // Its PREPARE TRANSACTION may or may not have run: the others roll back, and so does it
    // once its shard is back, if it did.
    const bool awaited = !l.part_answered;
    if (awaited || l.prepared) out.prepared_parts.push_back({l.route.shard, tx.gid, false});
    set_tx_error("08006",
                 "pgvalve: lost server " + name +
                     " before the transaction committed on every shard; it was rolled back on "
                     "the other shards" +
                     (awaited || l.prepared ? ", and may stay prepared there as '" + tx.gid +
                                                  "' until " + kLeftPartRolledBack
                                            : std::string()));
    unlink(l.id, kind, out);
    if (awaited && --tx.open == 0) decide_shard_transaction(into, out);
    return true;
  }
  if (tx.deciding && l.prepared) {
    // While the deciding part's COMMIT PREPARED is unconfirmed, the transaction is that shard's
    // to decide: the parts follow it (two_phase.h).
    const bool unconfirmed = tx.commit && !tx.committed_some;
    out.prepared_parts.push_back({l.route.shard, tx.gid, tx.commit, unconfirmed && !l.finishing});
    if (unconfirmed && l.finishing) {
      set_tx_error("40003", "pgvalve: lost server " + name +
                                " while committing a transaction over several shards, whose "
                                "outcome that shard decides; pgvalve finishes every shard the "
                                "same way once it takes writes again (SHOW SHARDS counts the "
                                "parts until then)");
      for (Link& o : work().links) {
        if (!o.server || o.id == l.id || !o.prepared || o.finishing) continue;
        out.prepared_parts.push_back({o.route.shard, tx.gid, true, true});
        unlink(o.id, o.server->tx_status == 'I' ? LinkOp::Kind::Release : LinkOp::Kind::Close, out);
      }
    } else if (tx.commit) {
      set_tx_error("08006", "pgvalve: lost server " + name +
                                " while committing a transaction over several shards; other "
                                "shards committed it, and it stays prepared there as '" +
                                tx.gid + "' until " + kLeftPartCommitted);
    }
  }
  const bool was_finishing = l.finishing;
  unlink(l.id, kind, out);
  if (was_finishing) next_decision(into, out);
  return true;
}

// A part was lost while the client works in the transaction: every other part is rolled back,
// and the client learns its transaction is over (the request waiting on a part gets the error,
// else its next request does).
void Session::abandon_shard_transaction(std::string_view message, Actions& out, bool block_fails) {
  Workspace& w = work();
  for (Link& o : w.links) {
    if (!o.server) continue;
    if (o.busy()) {
      if (o.in_flight > 0) lost_block_ = block_fails ? LostBlock::Failed : LostBlock::None;
      fail_pending(o, "08006", message, out.outbox, block_fails ? 'E' : 'I');
      unlink(o.id, LinkOp::Kind::CancelAndClose, out);
    } else if (o.server->tx_status == 'I') {
      unlink(o.id, LinkOp::Kind::Release, out);
    } else {
      unlink(o.id, LinkOp::Kind::CleanAndRelease, out, "ROLLBACK");
    }
  }
  const bool checking_out = w.tx().joining && state_ == SessionState::WaitingForServer;
  auto& tx = w.change_tx();
  tx = {};
  tx.joining = tx.abandoned = checking_out;
  out.resume_client = true;
}

}  // namespace pgvalve::session
