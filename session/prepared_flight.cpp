// Named prepared statements in transaction pooling. A client's statement names are its own:
// each maps to a shared server-side statement named after a hash of its text (pgv_<hash>),
// prepared on whichever server the client lands on, before the first Bind or Describe that needs
// it there. Close is answered for the client; the server-side statement stays for the others.
#include "session/limits.h"
#include "session/session_internal.h"

namespace pgvalve::session {

namespace pr = protocol;
using Kind = pr::PendingResponse::Kind;

namespace {

// A closed statement name no client statement maps to: closing it makes the server answer
// CloseComplete where a client's Close of its own name is expected.
constexpr std::string_view kNoStatement = "pgv_none";

}  // namespace

// The names of the statements pgvalve prepares on servers for its clients (pgv_<hash>), shared
// by every client of the pool: one a client has not prepared itself is none of its own. A
// client that read them from pg_prepared_statements could otherwise close them under every
// other client of the server.
bool Session::is_shared_statement_name(std::string_view name) {
  return name.starts_with(pr::kServerStatementPrefix);
}

std::string Session::no_such_statement(std::string_view name) {
  return "pgvalve: prepared statement \"" + std::string(name) +
         "\" does not exist; names that start with " + std::string(pr::kServerStatementPrefix) +
         " are pgvalve's own statements on the server, shared by its clients";
}

// A flight of named Parse messages and Sync/Flush only, between transactions: the statements
// are defined and prepared where they are first used. A client that prepares synchronously while
// its own other connections hold every server (pgbench -M prepared does) then cannot deadlock a
// full pool. A syntax error surfaces at the first Bind. A Sync or Flush alone is answered the
// same way (ReadyForQuery 'I', or nothing): it needs no server between transactions; so is COPY
// data still coming after its COPY failed and the server went back (PostgreSQL ignores it
// outside COPY).
bool Session::answer_parse_locally(Flight& flight, Actions& out) {
  // The usual flight starts with a Query or a Bind: no closer look.
  const char first = flight.input.empty() ? '\0' : flight.input[0];
  if (options_.mode == config::PoolMode::Session ||
      (first != 'P' && first != 'S' && first != 'H' && first != 'd' && first != 'c' &&
       first != 'f')) {
    return false;
  }
  std::size_t new_statements = 0;
  std::size_t new_bytes = 0;
  pr::FrameReader reader(flight.input, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    if (f.tag == 'P') {
      auto parse = pr::read_parse(f);
      if (!parse || parse->statement.empty()) return false;
      std::vector<Note> ignored;
      if (!review(parse->query, false, ignored).refusal.empty()) return false;
      const pr::PreparedStatement* known =
          statements_ ? statements_->find(parse->statement) : nullptr;
      if (known && known->confirmed &&
          (known->query != parse->query || known->param_types != parse->param_types)) {
        return false;  // the server path says it exists (42P05)
      }
      if (!known) ++new_statements;
      new_bytes += parse->query.size() + parse->param_types.size();
    } else if (f.tag != 'S' && f.tag != 'H' && f.tag != 'd' && f.tag != 'c' && f.tag != 'f') {
      return false;
    }
  }
  if (!reader.at_end()) return false;
  // Over a cap: the server path raises the error where the client expects it.
  if (prepared_statement_count() + new_statements > kMaxClientStatements ||
      statement_bytes_ + new_bytes > kMaxClientStatementBytes) {
    return false;
  }
  if (!statements_) statements_ = std::make_unique<pr::ClientStatements>();
  std::string& reply = out.outbox;
  pr::FrameReader again(flight.input, options_.max_message_bytes);
  for (pr::Frame f; again.next(f);) {
    if (f.tag == 'P') {
      auto parse = pr::read_parse(f);
      define_statement(parse->statement, parse->query, parse->param_types);
      pr::append_parse_complete(reply);
    } else if (f.tag == 'S') {
      pr::append_ready_for_query(reply, client_tx_status());
    }
  }
  return true;
}

const pr::PreparedStatement& Session::define_statement(std::string_view name,
                                                       std::string_view query,
                                                       std::string_view param_types) {
  if (!statements_) statements_ = std::make_unique<pr::ClientStatements>();
  if (const auto* old = statements_->find_any(name)) {
    statement_bytes_ -= old->query.size() + old->param_types.size();
  }
  statement_bytes_ += query.size() + param_types.size();
  const std::uint64_t fingerprint = recorder_ ? fingerprint_of(query) : 0;
  if (fingerprint) recorder_->stats->prepare(fingerprint, query, recorder_->labels);
  return statements_->define(name, query, param_types, fingerprint,
                             client_settings_.statement_context(), now_.time_since_epoch().count());
}

bool Session::forget_statement(std::string_view name) {
  if (!statements_) return false;
  if (const auto* old = statements_->find(name)) {
    statement_bytes_ -= old->query.size() + old->param_types.size();
    return statements_->erase(name);
  }
  return false;
}

void Session::forget_statements_before(std::uint64_t defined, Link& l) {
  if (statements_) statement_bytes_ -= statements_->erase_defined_up_to(defined);
  // The server forgot its statements too, except those whose Parse, sent after the request
  // that made it forget, is still to be answered — and not closed again (an eviction) after it.
  l.server->statements.clear();
  for (std::size_t i = 0; i < l.pending.size(); ++i) {
    const pr::PendingResponse& p = l.pending.at(i);
    if (p.statement_hash == 0) continue;
    if (p.kind == Kind::ParseComplete) {
      l.server->statements.add(p.statement_hash, 0);
    } else if (p.action == kActionEvictClose || p.action == kActionRecloseStatement) {
      l.server->statements.erase(p.statement_hash);
    }
  }
}

void Session::prepare_on_server(const pr::PreparedStatement& stmt, bool swallow, Link& l,
                                Flight& flight) {
  const std::size_t from = flight.scratch->size();
  if (auto evicted = l.server->statements.add(stmt.hash, options_.max_prepared_statements,
                                              now_.time_since_epoch().count())) {
    pr::append_close(*flight.scratch, 'S', pr::server_statement_name(evicted));
    pr::PendingResponse close{Kind::CloseComplete, true};
    close.action = l.statement_pending(evicted) ? kActionRecloseStatement : kActionEvictClose;
    close.statement_hash = evicted;
    l.pending.push(close);
    ++flight.out->statement_evictions;
  }
  // Whether the server has the statement now may depend on answers still to come (its eviction
  // Close or an earlier Parse, in a flight that may fail), or be unknown after such a failure:
  // it is closed first (closing a statement the server does not have is no error), so that the
  // Parse succeeds either way.
  if (l.statement_pending(stmt.hash) || l.server->statements.close_before_parse()) {
    pr::append_close(*flight.scratch, 'S', pr::server_statement_name(stmt.hash));
    pr::PendingResponse close{Kind::CloseComplete, true};
    close.action = kActionRecloseStatement;
    close.statement_hash = stmt.hash;
    l.pending.push(close);
  }
  pr::append_parse_raw(*flight.scratch, pr::server_statement_name(stmt.hash),
                       without_hint(stmt.query), stmt.param_types);
  pr::PendingResponse parse{Kind::ParseComplete, swallow};
  parse.statement_hash = stmt.hash;
  if (!stmt.confirmed) parse.action = kActionFirstParse;
  l.pending.push(parse);
  mark_scratch(flight, from);
}

void Session::plan_parse(const pr::Frame& f, std::size_t offset, Link& l, Flight& flight) {
  auto parse = pr::read_parse(f);
  Workspace& w = work();
  if (!parse) {
    pass_client(flight, offset, f.whole.size());
    l.pending.push({Kind::ParseComplete});
    return;
  }
  const bool translate = options_.mode != config::PoolMode::Session;
  Note note;
  bool pins = false;
  bool deallocates = false;
  if (!plain_statement(parse->query)) {
    std::vector<Note>& notes = w.change_rare().review_notes;
    notes.clear();
    Review r = review(parse->query, true, notes);
    if (!r.refusal.empty()) {
      raise_on_server(r.refusal_sqlstate, r.refusal, true, l, flight);
      return;
    }
    if (refuse_state_on_replica(r, l, true, flight)) return;
    if (r.changes_reading) reading_may_change_ = true;
    if (r.temporary && !translate) l.server->touched_temp = true;
    count_server_listens(r);
    if (!notes.empty()) note = notes.front();
    pins = r.check_pins;
    // psycopg 3 closes the statements it evicts from its cache with `DEALLOCATE name` sent
    // this way. A name of the client's protocol-level statements is one no server knows: an
    // empty query stands in, and the client's statement is forgotten once the server has run
    // it (deallocate_when_answered). Other
    // names (SQL PREPARE, which pins the server) go to the server, as does any DEALLOCATE in a
    // failed transaction, which PostgreSQL refuses (25P02).
    if (translate && parse->statement.empty() && r.single &&
        r.first.kind == routing::StatementKind::Deallocate && !r.first.all &&
        l.server->tx_status != 'E' && statements_ && statements_->find(r.first.name.view())) {
      note = Note{};
      note.kind = NoteKind::Deallocate;
      note.name.assign(r.first.name.view());
      deallocates = true;
    }
  }
  if (!translate || parse->statement.empty()) {
    if (!translate && !parse->statement.empty()) {
      note_session_statement(parse->statement, parse->query, note.kind != NoteKind::None, pins);
    }
    if (parse->statement.empty()) {
      if (translate) {
        l.server->unnamed_statement_of = identity_;
        l.server->unnamed_statement_version = ++unnamed_version_;
      }
      note_unnamed_statement(parse->query, parse->param_types, std::move(note), pins,
                             flight.input.substr(offset + f.whole.size()));
    }
    const std::string_view text = deallocates ? std::string_view{} : without_hint(parse->query);
    if (text.size() == parse->query.size()) {
      pass_client(flight, offset, f.whole.size());
    } else {
      const std::size_t from = flight.scratch->size();
      pr::append_parse_raw(*flight.scratch, parse->statement, text, parse->param_types);
      mark_scratch(flight, from);
    }
    l.pending.push({Kind::ParseComplete});
    return;
  }
  // (Only when nothing sent before it is unanswered: a ROLLBACK on its way would end the failed
  // transaction first.)
  if (l.server->tx_status == 'E' && l.pending.empty()) {
    // What PostgreSQL still parses there (its IsTransactionExitStmt, and an empty query) is
    // translated as usual: passed on under the client's name, it would stay on a shared server.
    using routing::StatementKind;
    const StatementKind kind = routing::classify(parse->query).kind;
    if (kind != StatementKind::Rollback && kind != StatementKind::Commit &&
        kind != StatementKind::RollbackToSavepoint && kind != StatementKind::PrepareTransaction &&
        kind != StatementKind::Empty) {
      // PostgreSQL refuses it in a failed transaction (25P02) and the name keeps what it had:
      // the server says so, and the client's statements stay as they are.
      pass_client(flight, offset, f.whole.size());
      l.pending.push({Kind::ParseComplete});
      return;
    }
  }
  const pr::PreparedStatement* existing =
      statements_ ? statements_->find(parse->statement) : nullptr;
  if (existing && existing->confirmed &&
      (existing->query != parse->query || existing->param_types != parse->param_types) &&
      !forgotten_before_this(l, existing->defined)) {
    // As PostgreSQL says, of a statement a server accepted. One no server has prepared yet may
    // be one PostgreSQL never got (its Parse answered by pgvalve, or skipped after an error
    // earlier in its flight): it is replaced, as the driver means; so is one a DISCARD ALL or
    // DEALLOCATE ALL sent before this Parse forgets.
    raise_on_server("42P05",
                    "pgvalve: prepared statement \"" + std::string(parse->statement) +
                        "\" already exists; close it (Close or DEALLOCATE) before preparing "
                        "another statement under its name",
                    true, l, flight);
    return;
  }
  const bool known = existing != nullptr;
  if (!known && prepared_statement_count() >= kMaxClientStatements) {
    raise_on_server("53400",
                    "pgvalve: a client may have at most " + std::to_string(kMaxClientStatements) +
                        " named prepared statements; close (DEALLOCATE) the ones it no longer "
                        "uses",
                    true, l, flight);
    return;
  }
  if (statement_bytes_ + parse->query.size() > kMaxClientStatementBytes) {
    raise_on_server("54000",
                    "pgvalve: the named prepared statements of this client hold more than 32 MiB "
                    "of text; close (DEALLOCATE) the ones it no longer uses",
                    true, l, flight);
    return;
  }
  const auto& stmt = define_statement(parse->statement, parse->query, parse->param_types);
  if (server_has_statement(l, stmt.hash)) {
    // The server prepared it, unless its Parse is still to be answered (in this flight): the
    // answer confirms it then (a failed one leaves the client without it, as on PostgreSQL).
    if (!stmt.confirmed && !l.parse_pending(stmt.hash)) statements_->confirm(stmt.hash);
    l.server->statements.touch(stmt.hash);
    pr::PendingResponse done{Kind::Synthetic};
    done.action = kActionSynthParseComplete;
    l.pending.push(done);
    return;
  }
  prepare_on_server(stmt, false, l, flight);
}

void Session::note_unnamed_statement(std::string_view query, std::string_view param_types,
                                     Note note, bool pins, std::string_view rest) {
  Workspace& w = work();
  // Routed again at its Bind: for the shard it names, or, on a replica, for a write.
  if (router_.sharded() || router_.splits()) {
    w.unnamed_statement_text.assign(query);
    w.unnamed_statement_types.assign(param_types);
  }
  w.unnamed_statement_note = std::move(note);
  w.unnamed_statement_pins = pins;
  w.unnamed_statement_noted = true;
  w.unnamed_statement_fingerprint = 0;
  if (recorder_ && !query.empty()) {
    w.unnamed_statement_fingerprint = fingerprint_of(query);
    recorder_->stats->prepare(w.unnamed_statement_fingerprint, query, recorder_->labels);
  }
  if (keeps_literals()) [[unlikely]] {
    w.change_rare().unnamed_statement_sample.assign(
        query.substr(0, stats::QueryStats::kMaxTextBytes + 4));
    w.unnamed_statement_types.assign(param_types);
  }
  if (options_.mode == config::PoolMode::Session) return;
  // Drivers bind the unnamed statement right after its Parse (the usual case: nothing kept), or
  // describe it first and bind it in a later request, which may reach another server.
  pr::FrameReader reader(rest, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    const char tag = f.tag;
    if (tag == 'B') {
      const auto b = pr::read_bind_head(f);
      if (b && b->statement.empty()) {
        forget_unnamed_statement();
        return;
      }
    } else if (tag == 'S' || tag == 'H' || tag == 'Q' || tag == 'P') {
      break;
    }
  }
  if (query.size() + param_types.size() > kMaxKeptUnnamedBytes) {
    forget_unnamed_statement();
    return;
  }
  Extras& e = extras_to_change();
  e.unnamed_query.assign(query);
  e.unnamed_types.assign(param_types);
  e.unnamed_kept = true;
}

bool Session::unnamed_statement_on_server(Link& l, Flight& flight) {
  const bool on_server = l.server->unnamed_statement_of == identity_ &&
                         l.server->unnamed_statement_version == unnamed_version_;
  if (on_server && (work().unnamed_statement_noted || !extras().unnamed_kept)) return true;
  if (!on_server && !extras().unnamed_kept) {
    raise_on_server("26000",
                    "pgvalve: unnamed prepared statement does not exist on this server: with "
                    "transaction pooling a Bind of the unnamed statement goes with its Parse, "
                    "and pgvalve keeps a Parse for a later request only when no Bind followed "
                    "it and its text is at most 1 MiB; send the Parse again with the Bind, or "
                    "use a named statement",
                    true, l, flight);
    return false;
  }
  const std::string& query = extras_->unnamed_query;
  Note note;
  bool pins = false;
  if (!plain_statement(query)) {
    std::vector<Note>& notes = work().change_rare().review_notes;
    notes.clear();
    Review r = review(query, true, notes);
    if (!r.refusal.empty()) {
      raise_on_server(r.refusal_sqlstate, r.refusal, true, l, flight);
      return false;
    }
    if (refuse_state_on_replica(r, l, true, flight)) return false;
    if (r.changes_reading) reading_may_change_ = true;
    if (!notes.empty()) note = notes.front();
    pins = r.check_pins;
  }
  if (!on_server) {
    const std::size_t from = flight.scratch->size();
    pr::append_parse_raw(*flight.scratch, {}, without_hint(query), extras_->unnamed_types);
    mark_scratch(flight, from);
    l.pending.push({Kind::ParseComplete, true});
    l.server->unnamed_statement_of = identity_;
    l.server->unnamed_statement_version = unnamed_version_;
  }
  // Kept still (assigned from itself): PostgreSQL's unnamed statement lasts until the next one.
  note_unnamed_statement(query, extras_->unnamed_types, std::move(note), pins, {});
  return true;
}

void Session::plan_bind(const pr::Frame& f, std::size_t offset, Link& l, Flight& flight) {
  auto head = pr::read_bind_head(f);
  if (closed_portal() && head && head->portal == extras_->closed_portal) {
    extras_to_change().closed_portal.clear();  // a portal of that name, afresh
  }
  Workspace& w = work();
  const bool translate = options_.mode != config::PoolMode::Session;
  const pr::PreparedStatement* stmt = head && !head->statement.empty() && statements_ && translate
                                          ? statements_->find(head->statement)
                                          : nullptr;
  if (head && translate && !stmt && is_shared_statement_name(head->statement)) {
    raise_on_server("26000", no_such_statement(head->statement), true, l, flight);
    return;
  }
  if (head && translate && head->statement.empty() && !unnamed_statement_on_server(l, flight)) {
    return;
  }
  // What the portal's statement means for settings and pinning, remembered for its Execute.
  if (head && router_.sharded()) {
    const bool unnamed = head->statement.empty();
    const pr::PreparedStatement* named =
        unnamed || !statements_ ? nullptr : statements_->find(head->statement);
    const std::string_view sql =
        unnamed ? std::string_view(w.unnamed_statement_text)
                : (named ? std::string_view(named->query) : std::string_view{});
    const BindParams params(
        head->rest, unnamed ? std::string_view(w.unnamed_statement_types)
                            : (named ? std::string_view(named->param_types) : std::string_view{}));
    if (!plain_statement(sql)) l.flight_plain = false;
    bool to_another_shard = false;
    if (const auto [sqlstate, why] = shard_conflict(l, sql, &params, &to_another_shard);
        !why.empty()) {
      raise_on_server(sqlstate, why, true, l, flight);
      return;
    }
    if (to_another_shard) {
      hop(l, flight, unnamed);
      return;
    }
  }
  if (head && l.route.kind == routing::Route::Kind::Replica && (head->statement.empty() || stmt)) {
    // The request went to a replica by its first statement; a write further on ends the
    // replica's part there, and the rest is routed afresh (to the primary).
    const bool unnamed = head->statement.empty();
    const std::string_view sql =
        unnamed ? std::string_view(w.unnamed_statement_text) : std::string_view(stmt->query);
    const BindParams params(head->rest, unnamed ? std::string_view(w.unnamed_statement_types)
                                                : std::string_view(stmt->param_types));
    if (needs_primary(sql, params)) {
      if (may_hop(l, &params)) {
        hop(l, flight, unnamed);
      } else {
        raise_on_server("25006",
                        "pgvalve: this request's first statement went to a replica, and this "
                        "one writes; send it with a Sync of its own, or SET pgvalve.route = "
                        "primary",
                        true, l, flight);
      }
      return;
    }
    if (!router_.sharded() && !plain_statement(sql)) l.flight_plain = false;
  }
  if (head) {
    Note note;
    bool pins = false;
    std::uint64_t fingerprint = 0;
    if (head->statement.empty()) {
      note = w.unnamed_statement_note;
      pins = w.unnamed_statement_pins;
      fingerprint = w.unnamed_statement_fingerprint;
    } else if (stmt) {
      fingerprint = stmt->fingerprint;
      if (!plain_statement(stmt->query)) {
        std::vector<Note>& notes = w.change_rare().review_notes;
        notes.clear();
        Review r = review(stmt->query, true, notes);
        if (r.changes_reading) reading_may_change_ = true;
        if (!notes.empty()) note = notes.front();
        pins = r.check_pins;
      }
    } else if (!translate) {
      // Session mode: the statement's name reached the server as it is; what its text does was
      // noted at its Parse. A setting it changes is not followed: the client's reads then stay
      // on its own server, where the setting is.
      const Extras::NamedStatement named = session_statement(head->statement);
      fingerprint = named.fingerprint;
      if (named.changes_settings) note.kind = NoteKind::Unknown;
      pins = named.pins;
    }
    if (note.bound) bind_setting(note, head->rest, l);
    if (head->portal.empty()) {
      w.unnamed_portal_note = std::move(note);
      w.unnamed_portal_pins = pins;
      w.unnamed_portal_fingerprint = fingerprint;
      w.unnamed_portal_unshaped_statement = stmt && stmt->shape == 0 ? stmt->hash : 0;
      if (keeps_literals()) [[unlikely]] {
        Workspace::Rare& rare = w.change_rare();
        if (head->statement.empty()) {
          describe_sample(rare.unnamed_portal_sample, rare.unnamed_statement_sample, head->rest,
                          w.unnamed_statement_types);
        } else if (stmt) {
          describe_sample(rare.unnamed_portal_sample, stmt->query, head->rest, stmt->param_types);
        } else {
          rare.unnamed_portal_sample.clear();
        }
      }
    } else {
      remember_portal(head->portal, std::move(note), pins, fingerprint, l);
    }
  }
  if (!stmt) {
    pass_client(flight, offset, f.whole.size());
    l.pending.push({Kind::BindComplete});
    return;
  }
  // A table the statement reads changed its result type since the client prepared it (a Bind of
  // it failed so on some server since): as on PostgreSQL, each Bind fails until the client
  // prepares it again, so that no row of the new shape reaches a client that reads the old one.
  // PostgreSQL's own words: drivers drop their cached statement when they see them.
  const std::int64_t changed =
      stmt->stale ? 0 : workspaces_->statement_changed_at(statement_change_key(stmt->hash));
  if (stmt->stale || (changed != 0 && stmt->defined_at <= changed)) {
    raise_on_server("0A000", kChangedResultType, true, l, flight);
    return;
  }
  const bool on_server = server_has_statement(l, stmt->hash);
  const std::uint64_t server_shape = on_server ? l.server->statements.touch(stmt->hash) : 0;
  if (stmt->shape > pr::kDescribedPerPortal && server_shape != stmt->shape &&
      check_shape(*stmt, on_server, server_shape, offset, l, flight)) {
    return;
  }
  if (on_server) {
    // (Not while its Parse is still to be answered: see plan_parse.)
    if (!stmt->confirmed && !l.parse_pending(stmt->hash)) statements_->confirm(stmt->hash);
  } else {
    prepare_on_server(*stmt, true, l, flight);
  }
  // The same Bind with the server-side name; parameters are copied unchanged.
  const std::size_t from = flight.scratch->size();
  pr::append_bind(*flight.scratch, head->portal, pr::server_statement_name(stmt->hash), head->rest);
  mark_scratch(flight, from);
  pr::PendingResponse bound{Kind::BindComplete};
  bound.statement_hash = stmt->hash;  // found stale if its Bind fails with 0A000
  l.pending.push(bound);
}

// The client decodes the rows of its statement by the shape a server described them with when
// it prepared it (asyncpg, pgx, PgJDBC and postgres.js do). After a table the statement reads
// changed, PostgreSQL refuses to run such a cached plan (0A000), but a server that prepares the
// statement afresh, or did since the change, runs it with the new shape. So before the Bind of a
// statement whose shape this server has not described, pgvalve asks it (Describe, after the
// Parse if it lacks the statement, and a Sync: one round trip per statement and server), and a
// shape other than the client's fails the Bind as PostgreSQL would. An error of the Parse or
// Describe is the Bind's, as it would have been had the Bind prepared the statement: the client
// gets it, and the rest of its request up to its Sync is skipped. Only for a Bind that starts the
// client's request, or follows only its BEGIN, on a server with nothing outstanding: pgvalve's
// Sync there ends nothing of the client's.
bool Session::check_shape(const pr::PreparedStatement& stmt, bool on_server,
                          std::uint64_t server_shape, std::size_t offset, Link& l, Flight& flight) {
  if (l.shape_checked == stmt.hash) {
    // Just asked: a shape other than the client's is refused.
    l.shape_checked = 0;
    if (server_shape == 0) return false;
    raise_on_server("0A000", kChangedResultType, true, l, flight);
    return true;
  }
  // (A shape the server described before may be of a plan PostgreSQL now refuses itself: the
  // Describe says which.)
  if (describes_portal(flight.input.substr(offset))) {
    // As the first time, when its shape was noted: it decodes each portal by its description.
    statements_->described(stmt.hash, pr::kDescribedPerPortal);
    return false;
  }
  if (!flight.link_was_idle || flight.replay ||
      (offset != 0 &&
       (l.server->tx_status != 'I' || !only_begin(flight.input.substr(0, offset))))) {
    return false;
  }
  if (!on_server) prepare_on_server(stmt, true, l, flight);
  const std::size_t from = flight.scratch->size();
  pr::append_describe(*flight.scratch, 'S', pr::server_statement_name(stmt.hash));
  pr::append_sync(*flight.scratch);
  mark_scratch(flight, from);
  pr::PendingResponse describe{Kind::Describe, true};
  describe.action = kActionShapeCheck;
  describe.statement_hash = stmt.hash;
  l.pending.push(describe);
  pr::PendingResponse ready{.kind = Kind::ReadyForQuery, .internal = true, .sync = true};
  ready.action = kActionShapeCheck;
  l.pending.push(ready);
  ++l.in_flight;
  l.open_extended = false;  // the Bind is not sent yet
  l.checking_shape = true;
  l.shape_checked = stmt.hash;
  l.reserved = true;  // kept for the Bind
  flight.stop = true;
  enter(SessionState::Active);
  return true;
}

// The request that starts with `frames` describes its unnamed portal (libpq's PQexecPrepared,
// psycopg, node-postgres): its client decodes the rows by that description.
bool Session::describes_portal(std::string_view frames) const {
  pr::FrameReader reader(frames, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    if (f.tag == 'S' || f.tag == 'Q') return false;
    if (f.tag == 'D') {
      const auto d = pr::read_describe(f);
      if (d && d->kind == 'P' && d->name.empty()) return true;
    }
  }
  return false;
}

// `frames` are a BEGIN and nothing else (PgJDBC sends it with a transaction's first statement):
// once they ran the server is in a transaction block, which a Sync does not end.
bool Session::only_begin(std::string_view frames) const {
  const auto is_begin = [](std::string_view sql) {
    const routing::StatementInfo info = routing::classify(sql);
    return info.kind == routing::StatementKind::Begin && !info.multiple_statements;
  };
  std::string_view unnamed;
  bool ran = false;
  pr::FrameReader reader(frames, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    switch (f.tag) {
      case 'P': {
        const auto parse = pr::read_parse(f);
        if (!parse || !is_begin(parse->query)) return false;
        if (parse->statement.empty()) unnamed = parse->query;
        break;
      }
      case 'B': {
        const auto bind = pr::read_bind_head(f);
        if (!bind || !bind->portal.empty()) return false;
        const pr::PreparedStatement* named =
            bind->statement.empty() || !statements_ ? nullptr : statements_->find(bind->statement);
        if (!is_begin(bind->statement.empty() ? unnamed
                                              : (named ? std::string_view(named->query) : ""))) {
          return false;
        }
        break;
      }
      case 'E': {
        const auto execute = pr::read_execute(f);
        if (!execute || !execute->portal.empty()) return false;
        ran = true;
        break;
      }
      case 'D':
        break;
      default:
        return false;
    }
  }
  return ran && reader.at_end();
}

void Session::finish_shape_check(Link& l, bool failed, Actions& out) {
  l.checking_shape = false;
  // The client got the error as its Bind's: the server skipped the rest up to its Sync.
  if (failed) l.skipping_until_sync = true;
  enter(SessionState::Holding);
  if (input_waits_for_link_) {
    input_waits_for_link_ = false;
    out.resume_client = true;
  }
}

void Session::note_shape(Link& l, const pr::PendingResponse& describe, const pr::Frame& f) {
  const std::uint64_t shape = pr::result_shape(f);
  if (shape == 0) return;
  l.server->statements.described(describe.statement_hash, shape);
  if (describe.action == kActionNoteShape && statements_) {
    statements_->described(describe.statement_hash, shape);
  }
}

// Session mode passes the client's statement names through; what their texts do is noted at
// Parse, for their Binds.
void Session::note_session_statement(std::string_view name, std::string_view query,
                                     bool changes_settings, bool pins) {
  auto& known = extras_to_change().named_statements;
  if (name.size() > Extras::kMaxTrackedNameBytes) {
    if (auto it = known.find(name); it != known.end()) known.erase(it);
    return;
  }
  Extras::NamedStatement s;
  s.changes_settings = changes_settings;
  s.pins = pins;
  if (recorder_ && !query.empty()) {
    s.fingerprint = fingerprint_of(query);
    recorder_->stats->prepare(s.fingerprint, query, recorder_->labels);
  }
  if (auto it = known.find(name); it != known.end()) {
    it->second = s;
  } else if (known.size() < kMaxClientStatements) {
    known.emplace(name, s);
  }
}

Session::Extras::NamedStatement Session::session_statement(std::string_view name) const {
  if (extras_) {
    const auto& known = extras_->named_statements;
    if (const auto it = known.find(name); it != known.end()) return it->second;
  }
  Extras::NamedStatement unknown;
  unknown.changes_settings = true;
  return unknown;
}

bool Session::forgotten_before_this(const Link& l, std::uint64_t defined) const {
  for (const Note& n : l.notes) {
    if ((n.kind == NoteKind::Discard || n.kind == NoteKind::DeallocateAll) &&
        n.statements_before >= defined) {
      return true;
    }
    if (n.kind == NoteKind::Deallocate && n.statements_before == defined) return true;
  }
  return false;
}

bool Session::server_has_statement(Link& l, std::uint64_t hash) {
  if (!l.server->statements.contains(hash) || l.parse_unconfirmed(hash)) return false;
  if (const std::int64_t changed = workspaces_->statement_changed_at(statement_change_key(hash));
      changed != 0 && l.server->statements.prepared_at(hash) <= changed) {
    l.server->statements.forget_uncertain(hash);  // closed before it is prepared again
    return false;
  }
  return true;
}

void Session::plan_describe(const pr::Frame& f, std::size_t offset, Link& l, Flight& flight) {
  auto d = pr::read_describe(f);
  if (d && d->kind == 'S' && d->name.empty() && options_.mode != config::PoolMode::Session &&
      !unnamed_statement_on_server(l, flight)) {
    return;
  }
  const pr::PreparedStatement* stmt = d && d->kind == 'S' && !d->name.empty() && statements_ &&
                                              options_.mode != config::PoolMode::Session
                                          ? statements_->find(d->name)
                                          : nullptr;
  if (!stmt && d && d->kind == 'S' && options_.mode != config::PoolMode::Session &&
      is_shared_statement_name(d->name)) {
    raise_on_server("26000", no_such_statement(d->name), true, l, flight);
    return;
  }
  if (!stmt) {
    pass_client(flight, offset, f.whole.size());
  } else {
    if (server_has_statement(l, stmt->hash)) {
      l.server->statements.touch(stmt->hash);
    } else {
      prepare_on_server(*stmt, true, l, flight);
    }
    const std::size_t from = flight.scratch->size();
    pr::append_describe(*flight.scratch, 'S', pr::server_statement_name(stmt->hash));
    mark_scratch(flight, from);
  }
  pr::PendingResponse describe{Kind::Describe};
  if (stmt) {
    describe.action = kActionNoteShape;
    describe.statement_hash = stmt->hash;
  } else if (d && d->kind == 'P' && d->name.empty() && work().unnamed_portal_unshaped_statement) {
    describe.action = kActionNoteShape;
    describe.statement_hash = std::exchange(work().unnamed_portal_unshaped_statement, 0);
  }
  l.pending.push(describe);
}

void Session::plan_close(const pr::Frame& f, std::size_t offset, Link& l, Flight& flight) {
  auto c = pr::read_close(f);
  pr::PendingResponse close{Kind::CloseComplete};
  if (c && c->kind == 'P' && !c->name.empty() && !work().rare().named_portals.empty()) {
    std::erase_if(work().change_rare().named_portals,
                  [&](const Workspace::Rare::PortalNote& p) { return p.portal == c->name; });
  }
  if (c && c->kind == 'S' && !c->name.empty() && extras_ &&
      options_.mode == config::PoolMode::Session) {
    if (auto it = extras_->named_statements.find(c->name); it != extras_->named_statements.end())
      extras_->named_statements.erase(it);
  }
  const bool closes_unnamed =
      c && c->kind == 'S' && c->name.empty() && options_.mode != config::PoolMode::Session;
  if (closes_unnamed) forget_unnamed_statement();
  if (closes_unnamed && l.server->unnamed_statement_of == identity_ &&
      l.server->unnamed_statement_version == unnamed_version_) {
    l.server->unnamed_statement_of = 0;
    pass_client(flight, offset, f.whole.size());
  } else if (closes_unnamed ||
             (c && c->kind == 'S' && !c->name.empty() &&
              options_.mode != config::PoolMode::Session &&
              (close_statement(c->name, close) || is_shared_statement_name(c->name)))) {
    // The server-side statement may be shared (or, unnamed, another client's) and stays
    // prepared; so do pgvalve's own, which no client closes. Closing a name that does not exist
    // is not an error, so the server still answers CloseComplete in its place.
    const std::size_t from = flight.scratch->size();
    pr::append_close(*flight.scratch, 'S', kNoStatement);
    mark_scratch(flight, from);
  } else {
    pass_client(flight, offset, f.whole.size());
  }
  l.pending.push(close);
}

// Forgotten when the server answers the Close: PostgreSQL skips a Close after an error earlier in
// its request, and the statement stays.
bool Session::close_statement(std::string_view name, pr::PendingResponse& close) {
  if (!statements_) return false;
  const pr::PreparedStatement* stmt = statements_->find(name);
  if (!stmt) return false;
  close.action = kActionClientClose;
  // For a client's Close, statement_hash holds the number of the Close: statements of one text
  // under two names are closed apart.
  close.statement_hash = statements_->close(name);
  return close.statement_hash != 0;
}

}  // namespace pgvalve::session
