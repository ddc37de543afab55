// Client requests: framing and validation of the client's bytes, what needs a server and which
// one (the Route), what is answered without one, and — on a linked server — what each message
// becomes: forwarded in place, rewritten for transaction pooling (named prepared statements:
// prepared_flight.cpp), or replaced by an error the server raises so that an open transaction
// fails as it would on any error. What a statement's text changes: statement_review.cpp.
#include <algorithm>
#include <limits>

#include <xxhash.h>

#include "routing/sql_lexer.h"
#include "routing/sql_text.h"
#include "session/limits.h"
#include "session/session_internal.h"

namespace pgvalve::session {

namespace pr = protocol;
using Kind = pr::PendingResponse::Kind;
using routing::StatementKind;

namespace {

// The messages a client may send after login (protocol 3.0). Anything else is refused on its
// first byte, before its announced length is waited for.
bool client_may_send(char tag) {
  switch (tag) {
    case 'B':
    case 'C':
    case 'D':
    case 'E':
    case 'F':
    case 'H':
    case 'P':
    case 'Q':
    case 'S':
    case 'X':
    case 'c':
    case 'd':
    case 'f':
      return true;
    default:
      return false;
  }
}

// What a server taking COPY data reads as such; it ignores Flush and Sync there.
bool copy_in_message(char tag) {
  return tag == 'd' || tag == 'c' || tag == 'f' || tag == 'H' || tag == 'S';
}

}  // namespace

// ---- Chunks --------------------------------------------------------------------------------

void Session::pass_client(Flight& flight, std::size_t offset, std::size_t size) {
  auto& spans = *flight.spans;
  if (!spans.empty() && !spans.back().scratch &&
      spans.back().offset + spans.back().size == offset) {
    spans.back().size += size;
  } else {
    spans.push_back({false, offset, size});
  }
}

void Session::mark_scratch(Flight& flight, std::size_t from) {
  const std::size_t size = flight.scratch->size() - from;
  if (size == 0) return;
  auto& spans = *flight.spans;
  if (!spans.empty() && spans.back().scratch && spans.back().offset + spans.back().size == from) {
    spans.back().size += size;
  } else {
    spans.push_back({true, from, size});
  }
}

// ---- Entry points --------------------------------------------------------------------------

const Actions& Session::on_client_data(std::string_view input, Clock::time_point now) {
  now_ = now;
  Actions& out = client_actions();
  if (!wants_client_input()) return out;
  client_activity_ = now;
  if (state_ == SessionState::Holding) held_since_ = now;
  return plan_client(input, now);
}

const Actions& Session::on_linked(ServerState& server, Clock::time_point now) {
  now_ = now;
  Actions& out = client_actions();
  if (state_ != SessionState::WaitingForServer) return out;
  Link& l = link(work().pending_link);
  l.reset();
  l.server = &server;
  l.route = work().pending_route;
  l.last_activity = now;
  if (scattering()) {
    link_scatter(l, out);
    return out;
  }
  if (work().tx().joining) {
    link_join(l, out);
    return out;
  }
  l.first_routed = router_.sharded() && !work().tx().route_again;
  l.may_write = router_.splits() && work().pending_route.kind == routing::Route::Kind::Primary &&
                work().pending_route.write;
  l.last_activity = now;
  l.reserved = true;
  Workspace& w = work();
  w.client_scratch.clear();
  bool wait = start_sync(l, w.client_scratch, now);
  if (!extras().deferred_begin.empty() && !w.flush_as_sync) {
    // The BEGIN answered earlier runs first; the client's request waits for its answer, so
    // that nothing of the transaction runs outside it.
    pr::append_query(w.client_scratch, extras_->deferred_begin);
    w.change_tx().begin = std::move(extras_->deferred_begin);  // a shard joining later runs it too
    forget_deferred_begin();
    expect_own_answer(l, kActionBegin);
    l.begin_pending = true;
    l.syncing = true;
    l.sync_started = now;
    wait = true;
  }
  if (wait) {
    out.to_server.push_back({w.client_scratch.data(), w.client_scratch.size()});
    out.server_link = work().pending_link;
    enter(SessionState::Syncing);
    return out;
  }
  enter(SessionState::Holding);
  out.resume_client = true;
  return out;
}

const Actions& Session::on_checkout_failed(std::string_view sqlstate, std::string_view message,
                                           Clock::time_point now) {
  now_ = now;
  Actions& out = client_actions();
  if (state_ != SessionState::WaitingForServer) return out;
  if (scattering()) {
    scatter_checkout_failed(sqlstate, message, out);
    return out;
  }
  Workspace& w = work();
  if (w.tx().abandoned) {
    w.change_tx() = {};
    enter(SessionState::Idle);
    out.resume_client = true;
    return out;
  }
  if (w.tx().joining) {
    // A shard that was to join the client's transaction: the transaction goes on where it was,
    // and the statement for that shard is refused there.
    std::string_view why = message;
    if (why.starts_with("pgvalve: ")) why.remove_prefix(std::string_view("pgvalve: ").size());
    if (sqlstate.empty()) {
      // "Use your own server" is for a session-mode read; a shard joining has none.
      sqlstate = "08006";
      why = "no server could be linked";
    }
    join_failed(sqlstate, "could not join it: " + std::string(why), out);
    return out;
  }
  // A BEGIN pgvalve answered and held back for this request: the client is in a transaction
  // block, which fails with the request (ReadyForQuery 'E', then 25P02 until it ends the block),
  // or its next statement would run on its own, outside the block it believes it is in.
  if (!extras().deferred_begin.empty() && !w.retry_pending) lost_block_ = LostBlock::Untold;
  forget_deferred_begin();
  w.change_tx().route_again = false;
  if (work().pending_link != 0 && linked(0)) {
    // A session-mode read meant for a replica: the client's own server answers it (a read
    // being retried too).
    work().pending_link = 0;
    stay_on_own_server_ = true;
    enter(SessionState::Holding);
    out.resume_client = true;
    return out;
  }
  work().pending_link = 0;
  if (w.retry_pending) {
    // The read being retried was consumed long ago: it is answered now.
    w.retry_pending = false;
    fail_requests(w.retry_request, sqlstate, message, out.outbox);
    enter(SessionState::Idle);
    out.resume_client = true;
    if (drain_requested_) close_with("57P01", drain_message(), out);
    return out;
  }
  w.change_rare().failure_sqlstate = std::string(sqlstate);
  w.change_rare().failure = std::string(message);
  enter_between_requests();
  out.resume_client = true;
  if (drain_requested_) close_with("57P01", drain_message(), out);
  return out;
}

// ---- Framing -------------------------------------------------------------------------------

// Looks at a trailing partial message: its type is checked on its first byte, its length on its
// header; it starts the message deadline. False when the client is refused.
bool Session::check_partial(std::string_view rest, Actions& out, Clock::time_point now) {
  if (rest.empty()) {
    partial_ = false;
    return true;
  }
  if (!client_may_send(rest[0])) {
    const auto byte = static_cast<unsigned char>(rest[0]);
    const char hex[] = {'0', 'x', "0123456789abcdef"[byte >> 4], "0123456789abcdef"[byte & 15],
                        '\0'};
    close_with("08P01",
               std::string("pgvalve: unexpected message type ") + hex +
                   " from the client; after login a client must send PostgreSQL protocol 3.0 "
                   "messages",
               out);
    return false;
  }
  auto r = pr::decode_frame(rest, options_.max_message_bytes);
  if (r.status == pr::DecodeStatus::Invalid) {
    close_with("08P01",
               std::string("pgvalve: ") + r.error +
                   "; raise limits.max_message_bytes if such messages are expected",
               out);
    return false;
  }
  if (!partial_) {
    partial_ = true;
    partial_since_ = now;
  }
  return true;
}

const Actions& Session::plan_client(std::string_view input, Clock::time_point now) {
  Actions& out = work().client_actions;
  Workspace& w = work();
  if (w.retry_pending) {
    // A read whose replica died runs again on the server linked for it; the client's input
    // waits its turn.
    Link* l = linked_link();
    if (!l || l->syncing) return out;
    w.retry_pending = false;
    plan_on_link(*l, w.retry_request, false, out, now, true);
    return out;
  }
  // Whole messages at the front; each validated once here.
  std::size_t end = 0;
  bool terminate = false;
  while (end < input.size()) {
    const std::string_view rest = input.substr(end);
    if (!client_may_send(rest[0])) break;  // refused below, by check_partial
    auto r = pr::decode_frame(rest, options_.max_message_bytes);
    if (r.status != pr::DecodeStatus::Ok) break;
    if (r.frame.tag == 'X') {
      terminate = true;
      break;
    }
    end += r.frame.whole.size();
  }
  // The partial message the deadline was for is complete: a partial one after it is a new
  // message with a deadline of its own (a client streaming COPY data is making progress).
  if (end > 0) partial_ = false;
  if (!terminate && !check_partial(input.substr(end), out, now)) return out;
  if (terminate) partial_ = false;
  const std::string_view frames = input.substr(0, end);
  if (frames.empty()) {
    if (terminate) leave(out);
    return out;
  }

  if (state_ == SessionState::Copying) {
    copy_client_data(frames, out);
    if (terminate && out.consumed == end) leave(out);
    return out;
  }
  if (state_ == SessionState::PortalSuspended) {
    fetch_from_portal(frames, out);
    if (terminate && out.consumed == end) close_with({}, {}, out);
    return out;
  }
  if (const std::size_t leftover = leftover_copy_messages(frames); leftover > 0) {
    // The rest of a COPY that failed, on its way when the error came: PostgreSQL ignores
    // CopyData, CopyDone and CopyFail outside a COPY, and so does pgvalve, also when the next
    // request came in the same read (routed with them in front, it was refused, or failed as
    // part of an aborted transaction).
    out.consumed = leftover;
    if (leftover < frames.size()) {
      out.resume_client = true;  // the rest is seen again
    } else if (terminate) {
      leave(out);
    }
    return out;
  }

  // Requests that can only fail: a waiting request whose checkout or sync failed, a transaction
  // block lost with its server, the rest of an extended flight after a local error.
  if (!work().rare().failure.empty() || lost_block_ != LostBlock::None || skip_until_sync_) {
    std::string sqlstate = "08006";
    std::string message = "pgvalve: the server connection was lost during this transaction";
    if (lost_block_ == LostBlock::Untold && !extras().lost_goodbye.empty()) {
      message += " (the server said: " + extras().lost_goodbye + ")";
      extras_to_change().lost_goodbye.clear();
    }
    const bool checkout_failed = !work().rare().failure.empty();
    if (checkout_failed) {
      sqlstate = std::move(work().change_rare().failure_sqlstate);
      message = std::move(work().change_rare().failure);
      work().change_rare().failure.clear();
      work().change_rare().failure_sqlstate.clear();
    }
    // Only the rest of a failed flight, up to its Sync: what the client pipelined behind it is
    // planned as usual (or, in a lost block, as the block's next request).
    const bool rest_of_flight =
        skip_until_sync_ && !checkout_failed && lost_block_ != LostBlock::Untold;
    std::string_view failed = frames;
    const auto first = [&] {
      const std::string_view request = first_request(frames, options_.max_message_bytes);
      return request.empty() ? frames : request;  // its end is still to come
    };
    if (rest_of_flight || (!checkout_failed && lost_block_ == LostBlock::None)) {
      pr::FrameReader reader(frames, options_.max_message_bytes);
      for (pr::Frame f; reader.next(f);) {
        if (f.tag == 'S') {
          failed = frames.substr(0, reader.offset());
          break;
        }
      }
    }
    if (lost_block_ != LostBlock::None && !rest_of_flight) {
      failed = first();
      answer_in_lost_block(failed, sqlstate, message, !checkout_failed, out);
    } else {
      if (!checkout_failed) message += "; the transaction was rolled back, run it again";
      fail_requests(failed, sqlstate, message, out.outbox, {},
                    lost_block_ == LostBlock::Failed ? 'E' : 'I');
    }
    out.consumed = failed.size();
    const bool more = failed.size() < frames.size();
    if (!linked_link()) {
      // Answered: the client is between requests again (its checkout or sync had failed).
      deliver_queued_notifications(out.outbox);
      if (drain_requested_ && !terminate) {
        close_with("57P01", drain_message(), out);
        return out;
      }
    }
    if (more) {
      out.resume_client = true;  // seen again with the rest
    } else if (terminate) {
      close_with({}, {}, out);
    }
    return out;
  }

  Link* l = linked_link();
  if (!l && reload_change_ != config::ReloadChange::None) {
    // Routed now, it would follow the rules a reload replaced.
    close_with("57P01", drain_message(), out);
    return out;
  }
  if (!l) {
    Flight flight{frames, &w.reply_scratch, &w.reply_spans, &out};
    if (answer_route_setting(frames, client_tx_status(), out) ||
        answer_parse_locally(flight, out) || answer_listen_locally(flight, out)) {
      out.consumed = end;
      if (terminate) close_with({}, {}, out);
      return out;
    }
    if (closed_portal() && refuse_closed_portal(frames, out)) return out;
    const RequestText request = request_text(flight);
    if (router_.sharded() && !request.bound && !request.ended) {
      // The Bind still on its way may hold the key (a Parse and its Bind can arrive in separate
      // reads): the request is routed once it is here, or once the client asks for answers
      // (Sync, Flush), which a server would wait for too.
      return out;
    }
    if (!extras().deferred_begin.empty() && end_deferred_transaction(frames, out)) {
      out.consumed = end;
      if (terminate) close_with({}, {}, out);
      return out;
    }
    routing::Route route = route_request(request);
    work().flush_as_sync = false;  // not left over from a request whose checkout failed
    if (route.kind != routing::Route::Kind::Refuse && describes_statements(frames)) {
      // Any shard knows the answer; the server goes back once it gave it (flush_as_sync). A
      // BEGIN pgvalve holds back stays held: a description runs nothing, and the transaction
      // starts where the statement's Bind goes (asyncpg prepares each new statement so, also
      // inside transactions).
      if (route.kind == routing::Route::Kind::Shards) route = on_any_of(request.sql, route.shards);
      route.any_shard = true;
      work().flush_as_sync = true;
    } else if (route.kind == routing::Route::Kind::Shards && route.copy_rows) {
      if (start_copy(frames, request, route, out) == ScatterStart::Started) return out;
    } else if (route.kind == routing::Route::Kind::Shards &&
               start_scatter(frames, request, route, out) != ScatterStart::NotScattered) {
      return out;
    }
    if (route.kind == routing::Route::Kind::Refuse) {
      // Only the refused request fails (a Query, or extended messages up to their Sync, which
      // PostgreSQL skips to after an error). After a BEGIN pgvalve answered (nothing ran on any
      // server) the client's block fails with it, as on PostgreSQL: ReadyForQuery 'E', and what
      // it pipelined or sends next gets 25P02 until it ends the block (LostBlock::Failed), so
      // none of it runs on its own.
      const bool in_block = !extras().deferred_begin.empty();
      forget_deferred_begin();
      if (in_block) lost_block_ = LostBlock::Failed;
      const std::string_view refused = refused_request(frames);
      fail_requests(refused, route.refusal->sqlstate, route.refusal->message, out.outbox,
                    route.refusal->hint, in_block ? 'E' : 'I');
      out.consumed = refused.size();
      if (refused.size() < frames.size()) {
        out.resume_client = true;
      } else if (terminate) {
        close_with({}, {}, out);
      }
      return out;
    }
    if (defer_begin(frames, route, out)) {
      out.consumed = end;
      if (terminate) close_with({}, {}, out);
      return out;
    }
    work().pending_route = route;
    work().pending_link = 0;
    out.check_out = true;
    out.route = std::move(route);
    enter(SessionState::WaitingForServer);
    return out;
  }
  if (l->syncing) return out;
  if (!l->busy() && answer_route_setting(frames, l->server->tx_status, out)) {
    out.consumed = end;
    if (terminate) close_with({}, {}, out);
    return out;
  }
  if (router_.sharded() && !scattering() && !l->busy() && (!l->reserved || w.tx().route_again) &&
      l->server->tx_status != 'I' && route_in_transaction(frames, l, out)) {
    return out;
  }
  if (l->only_own_query() && l->server->tx_status == 'I' &&
      (router_.splits() || !settings_match(*l->server, true))) {
    // pgvalve's own query runs after the transaction: the next request waits for it rather than
    // follow on this server. After a write it is the WAL position query, and the request is
    // routed afresh (a read may go to a replica). After a request that also changed the
    // server's settings away from the client's (RESET ALL puts them back to the server's
    // defaults, not to the client's startup values: asyncpg's Pool.release) it is the pin
    // check; pipelined behind it, the request would run without them: it waits for the check,
    // then for the sync on this server (plan_on_link) or on the server a release of this one
    // lets it link.
    input_waits_for_link_ = true;
    return out;
  }
  if (options_.mode == config::PoolMode::Session && l->id == 0 &&
      route_away_from_own_server(frames, *l, out)) {
    return out;
  }
  plan_on_link(*l, frames, terminate, out, now, false);
  return out;
}

namespace {

// The first request of `frames` names no prepared statement or portal (session mode keeps the
// client's names on its own server, where a replica would not know them). The request ends at
// its first Query or Sync.
bool self_contained_request(std::string_view frames, std::size_t max_message_bytes) {
  pr::FrameReader reader(frames, max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    switch (f.tag) {
      case 'Q':
      case 'S':
        return true;
      case 'H':
        break;
      case 'P': {
        auto p = pr::read_parse(f);
        if (!p || !p->statement.empty()) return false;
        break;
      }
      case 'B': {
        auto b = pr::read_bind_head(f);
        if (!b || !b->statement.empty() || !b->portal.empty()) return false;
        break;
      }
      case 'D': {
        auto d = pr::read_describe(f);
        if (!d || !d->name.empty()) return false;
        break;
      }
      case 'E': {
        auto e = pr::read_execute(f);
        if (!e || !e->portal.empty()) return false;
        break;
      }
      default:
        return false;
    }
  }
  return false;  // not a whole request yet
}

// `frames` hold exactly one request: one Query, or extended messages up to one final Sync.
bool single_request(std::string_view frames, std::size_t max_message_bytes) {
  int ends = 0;
  char last = 0;
  pr::FrameReader reader(frames, max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    last = f.tag;
    if (last == 'Q' || last == 'S' || last == 'F') ++ends;
  }
  return reader.at_end() && ends == 1 && (last == 'Q' || last == 'S' || last == 'F');
}

}  // namespace

// How many bytes at the front of `frames` are CopyData, CopyDone and CopyFail that no COPY takes:
// 0 while a COPY may take them (a server takes COPY data, or has a request outstanding that may
// be a COPY: it gets them, and PostgreSQL ignores them outside one).
std::size_t Session::leftover_copy_messages(std::string_view frames) const {
  const char first = frames.empty() ? '\0' : frames[0];
  if (first != 'd' && first != 'c' && first != 'f') return 0;
  if (work_ && std::any_of(work_->links.begin(), work_->links.end(), [](const Link& l) {
        return l.server && (l.copy_in || l.in_flight > 0);
      })) {
    return 0;
  }
  std::size_t end = 0;
  pr::FrameReader reader(frames, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    if (f.tag != 'd' && f.tag != 'c' && f.tag != 'f') break;
    end = reader.offset();
  }
  return end;
}

// The request at the front of `frames`: a Query (or FunctionCall), or extended messages up to
// and including the first Sync; all of `frames` when no Sync is there yet (fail_requests() then
// has the rest dropped up to the Sync).
std::string_view Session::refused_request(std::string_view frames) const {
  pr::FrameReader reader(frames, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    if (f.tag == 'S' || ((f.tag == 'Q' || f.tag == 'F') && reader.offset() == f.whole.size())) {
      return frames.substr(0, reader.offset());
    }
  }
  return frames;
}

// A statement after the first of the request at the front of `frames` (up to its Sync) must run
// on the primary: the request, routed by its first statement, stays there.
bool Session::writes_further_on(std::string_view frames) {
  bool first = true;
  pr::FrameReader reader(frames, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    if (f.tag == 'S' || f.tag == 'Q') return false;
    if (f.tag != 'P') continue;
    const auto parse = pr::read_parse(f);
    if (!parse || std::exchange(first, false)) continue;
    if (needs_primary(parse->query, BindParams({}, parse->param_types))) return true;
  }
  return false;
}

bool Session::route_away_from_own_server(std::string_view frames, Link& own, Actions& out) {
  const bool stay = stay_on_own_server_;
  stay_on_own_server_ = false;
  if (!router_.splits()) return false;
  // In a transaction, or with requests outstanding, everything goes where the rest went; what
  // runs there may write.
  if (own.busy() || own.reserved || own.server->tx_status != 'I') {
    own.may_write = true;
    return false;
  }
  Workspace& w = work();
  Flight flight{frames, &w.reply_scratch, &w.reply_spans, &out};
  routing::RouteContext context = route_context();
  const RequestText request = request_text(flight);
  const std::string_view text = request.sql;
  if (!text.empty()) context.fingerprint = fingerprint_of(text);
  routing::Route route = router_.route(text, context);
  // A single read on the own server moves no read-your-writes mark; anything else may write.
  const bool read = route.kind == routing::Route::Kind::Replica ||
                    (route.kind == routing::Route::Kind::Primary && !route.write);
  own.may_write = !(read && single_request(frames, options_.max_message_bytes));
  if (route.kind != routing::Route::Kind::Replica) return false;
  // What only the own server has: temporary tables, settings pgvalve could not follow, the
  // client's prepared statements and portals.
  if (stay || own.server->touched_temp || own.server->settings_unknown || pinned_ ||
      !self_contained_request(frames, options_.max_message_bytes) || writes_further_on(frames)) {
    return false;
  }
  // A transaction (BEGIN READ ONLY) stays too: the statements the client names in it, and its
  // cursors and settings, would be left on a replica connection other clients use.
  if (routing::classify(text).kind == StatementKind::Begin) return false;
  // pg_backend_pid(), pg_listening_channels(), pg_cursors, ...: about the client's session only
  // on its own server.
  if (route.own_backend) return false;
  if (options_.read_your_writes == config::ReadYourWrites::Lsn) {
    route.after_lsn = read_your_writes_lsn(route.shard);
  }
  own.may_write = false;
  work().pending_route = route;
  work().pending_link = 1;
  out.check_out = true;
  out.route = std::move(route);
  enter(SessionState::WaitingForServer);
  return true;
}

// Plans `frames` (the client's input, or a read being retried) on the linked server `l`.
void Session::plan_on_link(Link& link, std::string_view frames, bool terminate, Actions& out,
                           Clock::time_point now, bool retry) {
  Link* l = &link;
  Workspace& w = work();
  const LinkId id = l->id;
  // Sharded databases route each request afresh too: the next may need another shard.
  const bool one_request = l->route.kind == routing::Route::Kind::Replica || router_.sharded();
  // (A server taking COPY data takes the client's data before it answers.)
  if (((one_request || reading_may_change_) && l->in_flight > 0 && !l->copy_in) ||
      l->checking_shape) {
    input_waits_for_link_ = true;
    return;
  }
  // Answered: the settings it changed (ParameterStatus) decide how what follows is read.
  if (l->in_flight == 0) reading_may_change_ = false;
  if (!l->busy() && l->server->tx_status == 'I' && !l->reserved &&
      !settings_match(*l->server, true)) {
    // Settings changed on this server since it was linked (a RESET back to startup values in
    // session mode): make them the client's again before its next request. The server has
    // been this client's since (session mode, or pinned): what it changed in ways pgvalve
    // cannot follow (set_config with computed arguments, ...) is its own and stays.
    w.client_scratch.clear();
    if (start_sync(*l, w.client_scratch, now, true)) {
      out.to_server.push_back({w.client_scratch.data(), w.client_scratch.size()});
      out.server_link = id;
      l->reserved = true;
      enter(SessionState::Syncing);
      return;
    }
  }
  l->reserved = false;
  // A request pipelined behind pgvalve's WAL position query may write too: asked again after it.
  // (Session mode decides per request, in route_away_from_own_server.)
  if (router_.splits() && options_.mode != config::PoolMode::Session &&
      l->route.kind == routing::Route::Kind::Primary && l->route.write) {
    l->may_write = true;
  }
  w.client_scratch.clear();
  w.client_spans.clear();
  Flight flight{frames, &w.client_scratch, &w.client_spans, &out};
  flight.link_was_idle = !l->busy();
  flight.replay = retry;
  std::size_t planned = 0;
  while (planned < frames.size()) {
    // A client that pipelines without reading answers waits here (not inside a flight whose
    // rest is being dropped: that needs the flight's state).
    if (l->pending.size() >= kMaxRequestsInFlight && !flight.drop_until_sync) {
      pipeline_full_ = true;
      terminate = false;  // seen again with the rest
      // The server sends what it holds only at a Sync or Flush, which may be among the bytes
      // left unread: a Flush of pgvalve's own makes the answers come, so the pipeline drains.
      const std::size_t from = flight.scratch->size();
      pr::append_flush(*flight.scratch);
      mark_scratch(flight, from);
      l->flushed = true;
      break;
    }
    auto r = pr::decode_frame(frames.substr(planned), options_.max_message_bytes);
    if (l->copy_in && !copy_in_message(r.frame.tag)) {
      refuse_request_during_copy(out);
      return;
    }
    plan_frame(r.frame, planned, *l, flight);
    if (flight.stop) {
      // The rest of the request goes to another shard once this one has answered (hop), or
      // here once pgvalve's own request is (check_shape).
      input_waits_for_link_ = true;
      terminate = false;  // seen again with the rest
      break;
    }
    planned += r.frame.whole.size();
    // On a replica, the request ends here; what follows is routed once it is answered. So it
    // does after a request that may change how the client's text reads: the server reads what
    // follows with the new settings, and pgvalve must too.
    const bool request_end = r.frame.tag == 'Q' || r.frame.tag == 'S';
    if ((one_request || (reading_may_change_ && request_end)) && l->in_flight > 0 && !l->copy_in &&
        planned < frames.size()) {
      input_waits_for_link_ = true;
      terminate = false;  // seen again with the rest
      break;
    }
  }
  for (const Span& s : w.client_spans) {
    const char* base = s.scratch ? w.client_scratch.data() : frames.data();
    out.to_server.push_back({base + s.offset, s.size});
  }
  out.server_link = id;
  out.consumed = retry ? 0 : planned;
  // An autocommit read on a replica is kept until answered: if the replica dies before any of
  // the answer reached the client, it runs once more elsewhere (on_server_lost).
  // Only a replica's read may run again elsewhere (retryable()): only it is kept.
  if (l->route.kind == routing::Route::Kind::Replica && !retry) {
    w.retry_used = false;
    if (planned <= kMaxRetriedRequestBytes && l->server->tx_status == 'I') {
      w.retry_request.assign(frames.data(), planned);
    } else {
      w.retry_request.clear();
    }
  }
  // A ParseComplete pgvalve answers itself is due now when nothing before it is outstanding:
  // the server may send nothing more for a while (Parse then Flush).
  if (l->stream_remaining == 0) {
    while (!l->pending.empty() && l->pending.front().kind == Kind::Synthetic) {
      if (l->pending.front().action == kActionSynthParseComplete) {
        pr::append_parse_complete(out.outbox);
      }
      l->pending.pop();
    }
  }
  // The server is timed from the last request sent to it: a client streaming COPY data keeps
  // it legitimately silent.
  l->last_activity = now;
  l->first_routed = false;  // only the flight the checkout was for
  settle(*l, id, out);
  if (terminate) leave(out);
  return;
}

// Whether the first request of `frames` is Parses and Describes of statements, ended by a
// Flush (asyncpg's prepare(), postgres.js). The statements are the client's from then on:
// pgvalve prepares them on whichever server a later Bind goes to (the unnamed one too, kept
// since no Bind follows its Parse here), so the server need not wait for that Bind.
bool Session::describes_statements(std::string_view frames) const {
  pr::FrameReader reader(frames, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    switch (f.tag) {
      case 'P': {
        if (!pr::read_parse(f)) return false;
        break;
      }
      case 'D': {
        const auto d = pr::read_describe(f);
        if (!d || d->kind != 'S') return false;
        break;
      }
      case 'H':
        return reader.offset() > f.whole.size();  // something before it
      default:
        return false;
    }
  }
  return false;
}

// The SQL that decides the route of a request: the first Query's text, or the text of the
// statement the first Parse or Bind names.
namespace {

// A BEGIN or START TRANSACTION: the lexer only for a text that may start with one.
bool is_begin(std::string_view sql) {
  return routing::may_start_with(sql, {"begin", "start"}) &&
         routing::classify(sql).kind == StatementKind::Begin;
}

}  // namespace

RequestText Session::request_text(Flight& flight) {
  RequestText request;
  std::string_view begin;  // a BEGIN passed over, the request's text when nothing follows it
  const bool sharded = router_.sharded();
  pr::FrameReader reader(flight.input, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    if (f.tag == 'Q' || f.tag == 'S' || f.tag == 'H') request.ended = true;
    if (f.tag == 'Q') {
      if (request.sql.empty()) request.sql = pr::read_query(f).value_or(std::string_view{});
      break;
    }
    if (f.tag == 'P') {
      auto p = pr::read_parse(f);
      if (!p) continue;
      // JDBC sends BEGIN in the flight of the transaction's first statement: that one routes.
      if (sharded && !reader.at_end() && is_begin(p->query)) {
        if (begin.empty()) begin = p->query;
        continue;
      }
      if (!request.sql.empty()) break;
      request.sql = p->query;
      request.param_types = p->param_types;
      continue;
    }
    if (f.tag == 'B') {
      auto b = pr::read_bind_head(f);
      if (!b) continue;
      if (request.sql.empty() && b->statement.empty() && extras().unnamed_kept) {
        request.sql = extras().unnamed_query;
        request.param_types = extras().unnamed_types;
      } else if (request.sql.empty() && statements_) {
        if (const auto* s = statements_->find(b->statement)) {
          if (sharded && !reader.at_end() && is_begin(s->query)) {
            if (begin.empty()) begin = s->query;
            continue;
          }
          request.sql = s->query;
          request.param_types = s->param_types;
        }
      }
      if (!request.sql.empty()) {
        request.bound = true;
        request.bind_rest = b->rest;
        break;
      }
      continue;
    }
    if (f.tag == 'S' && !request.sql.empty()) break;
  }
  if (request.sql.empty()) request.sql = begin;
  return request;
}

namespace {

std::uint64_t request_identity(std::string_view sql, std::string_view bind_rest) {
  return XXH3_64bits(sql.data(), sql.size()) ^
         (XXH3_64bits(bind_rest.data(), bind_rest.size()) * 0x9e3779b97f4a7c15ull);
}

}  // namespace

routing::RouteContext Session::route_context() const {
  routing::RouteContext context;
  context.preference = preference_;
  context.serializable = serializable_default_;
  context.recent_write = options_.read_your_writes == config::ReadYourWrites::Time &&
                         last_write_at_ != Clock::time_point{} &&
                         now_ - last_write_at_ < options_.read_your_writes_window;
  context.device_id = extras().device_id;
  context.reading = text_reading();
  return context;
}

bool Session::needs_primary(std::string_view sql, const BindParams& params) {
  if (sql.empty()) return false;
  if (!plain_statement(sql) && !routing::touches_data(routing::classify(sql).kind)) return false;
  routing::RouteContext context = route_context();
  context.fingerprint = fingerprint_of(sql);
  context.params = &params;
  return router_.route(sql, context).kind == routing::Route::Kind::Primary;
}

routing::Route Session::route_request(const RequestText& request) {
  routing::RouteContext context = route_context();
  if ((router_.splits() || router_.sharded()) && !request.sql.empty()) {
    context.fingerprint = fingerprint_of(request.sql);
  }
  const BindParams params(request.bind_rest, request.param_types);
  if (request.bound) context.params = &params;
  routing::Route route = router_.route(request.sql, context);
  if (route.kind == routing::Route::Kind::Replica &&
      options_.read_your_writes == config::ReadYourWrites::Lsn) {
    route.after_lsn = read_your_writes_lsn(route.shard);
  }
  if (router_.sharded()) {
    routed_request_ = request_identity(request.sql, request.bound ? request.bind_rest : "");
  }
  return route;
}

std::optional<routing::BoundParam> BindParams::param(int number) const {
  if (number < 1) return std::nullopt;
  const auto index = static_cast<std::size_t>(number - 1);
  auto p = pr::read_bind_parameter(rest_, index);
  if (!p) return std::nullopt;
  routing::BoundParam out;
  out.value = p->value;
  out.binary = p->format == 1;
  if (4 * index + 4 <= types_.size()) out.type_oid = pr::read_u32(types_.data() + 4 * index);
  return out;
}

bool Session::defer_begin(std::string_view frames, const routing::Route& route, Actions& out) {
  // Statement mode refuses BEGIN (statement review), sharded or not.
  if (!router_.sharded() || !route.any_shard || options_.mode == config::PoolMode::Statement) {
    return false;
  }
  std::string_view sql;
  HubReply reply;
  if (!local_flight(frames, sql, reply)) return false;  // one request: a Query, or P/B/(D)/E/S
  const routing::StatementInfo info = routing::classify(sql);
  if (info.kind != StatementKind::Begin || info.multiple_statements ||
      sql.size() > kMaxDeferredBegin) {
    return false;
  }
  // A BEGIN PostgreSQL would refuse must fail now, not at the first statement (the router
  // parsed its shape once).
  if (!router_.valid_begin(fingerprint_of(sql))) return false;
  extras_to_change().deferred_begin.assign(without_hint(sql));
  std::string& r = out.outbox;
  append_local_heads(reply, r);
  pr::append_command_complete(r, "BEGIN");
  pr::append_ready_for_query(r, 'T');
  return true;
}

// PgJDBC outside autocommit sends its BEGIN (Parse, Bind, Execute of an unnamed statement) in
// the flight of the transaction's first statement. When that statement needs several shards,
// the BEGIN is taken off the flight and held back as a BEGIN of its own would be; the rest then
// runs in the client's transaction, on every shard's part of it (route_in_transaction).
bool Session::defer_leading_begin(std::string_view frames, Actions& out) {
  if (options_.mode == config::PoolMode::Statement || !extras().deferred_begin.empty()) {
    return false;
  }
  std::string_view sql;
  HubReply reply;
  std::size_t end = 0;
  // PgJDBC runs its BEGIN as a named statement once it was used prepareThreshold times: its
  // Parse (defined for the client, as any) or a Bind of it alone.
  std::optional<pr::ParseMessage> named;
  pr::FrameReader reader(frames, options_.max_message_bytes);
  for (pr::Frame f; end == 0 && reader.next(f);) {
    if (f.tag == 'E') {
      if (!reply.bind) return false;
      end = reader.offset();
      continue;
    }
    if (f.tag == 'P' && !reply.parse) {
      if (auto p = pr::read_parse(f); p && !p->statement.empty()) {
        named = p;
        sql = p->query;
        reply.parse = true;
        continue;
      }
    }
    if (f.tag == 'B' && !reply.bind) {
      const auto b = pr::read_bind_head(f);
      const pr::PreparedStatement* known = !reply.parse ? bound_statement(f) : nullptr;
      if (b && b->portal.empty() && ((named && b->statement == named->statement) || known)) {
        if (known) sql = known->query;
        reply.bind = true;
        continue;
      }
    }
    if (named || !read_local_head(f, sql, reply)) return false;
  }
  if (end == 0 || end >= frames.size() || frames[end] == 'S') return false;
  const routing::StatementInfo info = routing::classify(sql);
  if (info.kind != StatementKind::Begin || info.multiple_statements ||
      sql.size() > kMaxDeferredBegin) {
    return false;
  }
  // Routed like a BEGIN of its own, which parses its shape once: one PostgreSQL would refuse
  // is sent on, to fail where the client expects it.
  routing::RouteContext context;
  context.fingerprint = fingerprint_of(sql);
  if (router_.route(sql, context).kind == routing::Route::Kind::Refuse ||
      !router_.valid_begin(context.fingerprint)) {
    return false;
  }
  if (named) {
    if (prepared_statement_count() >= kMaxClientStatements ||
        statement_bytes_ + named->query.size() > kMaxClientStatementBytes) {
      return false;  // the server path raises the error where the client expects it
    }
    define_statement(named->statement, named->query, named->param_types);
  }
  extras_to_change().deferred_begin.assign(without_hint(sql));
  append_local_heads(reply, out.outbox);
  pr::append_command_complete(out.outbox, "BEGIN");
  out.consumed = end;
  out.resume_client = true;  // the rest of the flight, now in the client's transaction
  return true;
}

bool Session::end_deferred_transaction(std::string_view frames, Actions& out) {
  std::string_view sql;
  HubReply reply;
  if (!local_flight(frames, sql, reply)) return false;
  const routing::StatementInfo info = routing::classify(sql);
  const bool commit = info.kind == StatementKind::Commit;
  if ((!commit && info.kind != StatementKind::Rollback) || info.and_chain ||
      info.multiple_statements) {
    return false;
  }
  if (recorder_ && extras().deferred_read_at != Clock::time_point{}) {
    count_transaction(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(now_ - extras().deferred_read_at)
            .count()));
  }
  forget_deferred_begin();
  std::string& r = out.outbox;
  append_local_heads(reply, r);
  pr::append_command_complete(r, commit ? "COMMIT" : "ROLLBACK");
  pr::append_ready_for_query(r, 'I');
  return true;
}

void Session::answer_in_lost_block(std::string_view request, std::string_view sqlstate,
                                   std::string_view message, bool server_lost, Actions& out) {
  std::string_view sql;
  HubReply reply;
  bool ends_block = false;
  if (local_flight(request, sql, reply, true)) {
    const routing::StatementInfo info = routing::classify(sql);
    ends_block = (info.kind == StatementKind::Commit || info.kind == StatementKind::Rollback) &&
                 !info.and_chain && !info.multiple_statements;
  }
  if (lost_block_ == LostBlock::Failed) {
    if (ends_block) {
      // As PostgreSQL ends a transaction it aborted: ROLLBACK, also for a COMMIT.
      lost_block_ = LostBlock::None;
      append_local_heads(reply, out.outbox);
      pr::append_command_complete(out.outbox, "ROLLBACK");
      pr::append_ready_for_query(out.outbox, 'I');
      return;
    }
    fail_requests(request, "25P02",
                  "pgvalve: this transaction block was lost with its server connection; commands "
                  "are ignored until the block ends: ROLLBACK, then run the transaction again",
                  out.outbox, {}, 'E');
    return;
  }
  // Told now. A COMMIT or ROLLBACK ends the block with the error; anything else leaves the
  // client in a failed block, as an error inside one does on PostgreSQL, which it must end first.
  lost_block_ = ends_block ? LostBlock::None : LostBlock::Failed;
  std::string told(message);
  if (server_lost) {
    told += ends_block ? "; the transaction was rolled back, run it again"
                       : "; the transaction was rolled back: end the block with ROLLBACK, then "
                         "run it again";
  }
  fail_requests(request, sqlstate, told, out.outbox, {}, ends_block ? 'I' : 'E');
}

std::pair<std::string_view, std::string> Session::shard_conflict(Link& l, std::string_view sql,
                                                                 const BindParams* params,
                                                                 bool* hop) {
  if (!router_.sharded() || sql.empty()) return {};
  // Read only (the everyday Bind changes nothing here, so clear() has nothing to reset); a
  // refusal said once is taken out of it below, when it was set.
  const auto& tx = work().tx();
  if (tx.spans) {
    if (std::string why = spanning_refusal(sql); !why.empty()) return {"0A000", std::move(why)};
  }
  if (l.first_routed) {
    l.first_routed = false;
    if (request_identity(sql, params ? params->rest() : "") == routed_request_) return {};
  }
  constexpr std::string_view kNotSupported = "0A000";
  routing::RouteContext context;
  context.device_id = extras().device_id;
  context.params = params;
  context.reading = text_reading();
  // A Bind's statement text comes again and again: found in the worker's cache of texts.
  context.fingerprint = fingerprint_of(sql);
  const routing::Route route = router_.route(sql, context);
  const routing::ShardingPolicy& sharding = *router_.sharding();
  if (route.kind == routing::Route::Kind::Refuse) {
    return {route.refusal->sqlstate, route.refusal->message};
  }
  if (route.any_shard) return {};
  if (route.kind != routing::Route::Kind::Shards && route.shard == l.route.shard) return {};
  const std::string& here = sharding.shard_names.at(l.route.shard);
  if (route.kind == routing::Route::Kind::Shards) {
    // Why it could not run on the transaction's parts (route_in_transaction), said once.
    if (!tx.scatter_refusal.empty()) {
      std::string message = std::move(work().change_tx().scatter_refusal);
      work().change_tx().scatter_refusal.clear();
      return {tx.refusal_sqlstate, std::move(message)};
    }
    if (!tx.refusal.empty()) {
      std::string message = "pgvalve: this transaction runs on shard " + here +
                            ", and this statement needs shard " +
                            sharding.shard_names.at(tx.refused_shard) + " too, which " + tx.refusal;
      work().change_tx().refusal.clear();
      return {tx.refusal_sqlstate, std::move(message)};
    }
    return {kNotSupported,
            "pgvalve: this statement needs several shards and comes in one request with "
            "statements for shard " +
                here + "; send it in a Query, or with a Sync, of its own"};
  }
  if (hop && tx.refusal.empty() && may_hop(l, params)) {
    *hop = true;
    return {};
  }
  const std::string& there = sharding.shard_names.at(route.shard);
  if (l.server->tx_status == 'I') {
    // No transaction of the client's: the statements came in one flight (psycopg's executemany,
    // JDBC's executeBatch), which PostgreSQL runs as one implicit transaction.
    return {kNotSupported,
            "pgvalve: statements sent together up to one Sync run as one transaction, here on "
            "shard " +
                here + ", and this statement's " + sharding.key + " lives on shard " + there +
                "; send each with a Sync of its own, or the rows as one multi-row INSERT, which "
                "pgvalve splits between shards"};
  }
  if (!tx.refusal.empty()) {
    // The shard could not join the transaction (route_in_transaction): said once.
    std::string message = "pgvalve: this transaction runs on shard " + here + ", and this " +
                          "statement's " + sharding.key + " lives on shard " + there + ", which " +
                          tx.refusal;
    work().change_tx().scatter_refusal.clear();
    work().change_tx().refusal.clear();
    return {tx.refusal_sqlstate, std::move(message)};
  }
  return {kNotSupported,
          "pgvalve: this transaction runs on shard " + here + ", and this statement's " +
              sharding.key + " lives on shard " + there +
              "; a transaction moves to another shard only with a request of its own: send this "
              "statement in a Query, or with a Sync, of its own"};
}

void Session::fail_requests(std::string_view frames, std::string_view sqlstate,
                            std::string_view message, std::string& out, std::string_view hint,
                            char status) {
  pr::FrameReader reader(frames, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    switch (f.tag) {
      case 'Q':
      case 'F':
        append_error(out, sqlstate, message, hint);
        pr::append_ready_for_query(out, status);
        break;
      case 'S':
        if (!error_sent_in_flight_) append_error(out, sqlstate, message, hint);
        pr::append_ready_for_query(out, status);
        error_sent_in_flight_ = false;
        skip_until_sync_ = false;
        break;
      case 'P':
      case 'B':
      case 'D':
      case 'E':
      case 'C':
      case 'H':
        if (!error_sent_in_flight_) {
          append_error(out, sqlstate, message, hint);
          error_sent_in_flight_ = true;
        }
        skip_until_sync_ = true;
        break;
      default:
        break;
    }
  }
}

// ---- Answers without a server --------------------------------------------------------------
// The flight is one statement pgvalve can answer itself: a Query alone, or an unnamed
// Parse, Bind, optional Describe of the portal, Execute and Sync. `sql` is its text; `reply`
// says which extended-protocol answers precede the result.
void append_local_heads(const HubReply& reply, std::string& out) {
  if (reply.parse) pr::append_parse_complete(out);
  if (reply.statement_described) {
    pr::append_no_parameters(out);
    pr::append_no_data(out);
  }
  if (reply.bind) pr::append_bind_complete(out);
  if (reply.describe) pr::append_no_data(out);
}

bool read_local_head(const pr::Frame& f, std::string_view& sql, HubReply& reply) {
  switch (f.tag) {
    case 'P': {
      auto p = pr::read_parse(f);
      if (reply.parse || !p || !p->statement.empty()) return false;
      sql = p->query;
      reply.parse = true;
      return true;
    }
    case 'B': {
      auto b = pr::read_bind_head(f);
      if (!reply.parse || reply.bind || !b || !b->statement.empty() || !b->portal.empty()) {
        return false;
      }
      reply.bind = true;
      return true;
    }
    case 'D': {
      // Of the portal: answered NoData; of the statement before its Bind (postgres.js): no
      // parameters and NoData.
      auto d = pr::read_describe(f);
      if (d && d->kind == 'S' && d->name.empty() && reply.parse && !reply.bind &&
          !reply.statement_described) {
        reply.statement_described = true;
        return true;
      }
      if (!reply.bind || reply.describe || !d || d->kind != 'P' || !d->name.empty()) return false;
      reply.describe = true;
      return true;
    }
    default:
      return false;
  }
}

// The named statement the client prepared that a Bind (of the unnamed portal) runs, if any.
const pr::PreparedStatement* Session::bound_statement(const pr::Frame& f) const {
  if (f.tag != 'B' || !statements_) return nullptr;
  auto b = pr::read_bind_head(f);
  if (!b || b->statement.empty() || !b->portal.empty()) return nullptr;
  return statements_->find(b->statement);
}

bool Session::local_flight(std::string_view input, std::string_view& sql, HubReply& reply,
                           bool named) const {
  bool query = false;
  bool execute = false;
  bool sync = false;
  pr::FrameReader reader(input, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    if (sync) return false;  // more after the Sync
    switch (f.tag) {
      case 'Q': {
        if (query || reply.parse) return false;
        auto q = pr::read_query(f);
        if (!q) return false;
        sql = *q;
        query = true;
        sync = true;
        break;
      }
      case 'P':
        if (query || !read_local_head(f, sql, reply)) return false;
        break;
      case 'B':
        if (named && !reply.parse && !reply.bind) {
          const pr::PreparedStatement* s = bound_statement(f);
          if (!s) return false;
          sql = s->query;
          reply.bind = true;
          break;
        }
        [[fallthrough]];
      case 'D':
        if (!read_local_head(f, sql, reply)) return false;
        break;
      case 'E':
        if (!reply.bind || execute) return false;
        execute = true;
        break;
      case 'S':
        if (!execute) return false;
        sync = true;
        break;
      default:
        return false;
    }
  }
  return sync && reader.at_end();
}

// SET pgvalve.route = primary | replica | auto (and RESET, SET ... TO DEFAULT): the client's
// routing preference, kept by pgvalve and never sent to PostgreSQL.
// Whether the statement of a Query or unnamed Parse at the input's start may be a SET or RESET.
// Every request is asked, so this looks at one byte instead of searching the whole text for
// "pgvalve.".
namespace {
bool may_set_or_reset(std::string_view input) {
  std::size_t at = 5;  // tag, length
  if (input[0] == 'P') {
    if (input.size() <= at || input[at] != '\0') return false;  // named: not answered locally
    ++at;
  }
  return at < input.size() && routing::may_start_with(input.substr(at), {"set", "reset"});
}
}  // namespace

bool Session::answer_route_setting(std::string_view input, char tx_status, Actions& out) {
  if (input.empty() || (input[0] != 'Q' && input[0] != 'P') || !may_set_or_reset(input) ||
      !routing::contains_ci(input, 0, "pgvalve.")) {
    return false;
  }
  std::string_view sql;
  HubReply reply;
  if (!local_flight(input, sql, reply)) return false;
  const auto info = routing::classify(sql);
  const bool set = info.kind == StatementKind::Set || info.kind == StatementKind::SetLocal;
  const bool key = info.name.view() == "pgvalve.device_id" ||
                   (router_.sharded() && info.name.view() == "pgvalve." + router_.sharding()->key);
  if ((!set && info.kind != StatementKind::Reset) || info.multiple_statements ||
      (info.name.view() != "pgvalve.route" && !key)) {
    return false;
  }
  std::string& r = out.outbox;
  append_local_heads(reply, r);
  std::string_view value = info.value;
  if (value.size() >= 2 && value.front() == '\'' && value.back() == '\'') {
    value = value.substr(1, value.size() - 2);
  }
  if (key) {
    // The shard key of this client's next statements; RESET (or DEFAULT) forgets it.
    const std::string_view name = info.name.view();
    std::string refusal;
    if (!router_.sharded()) {
      refusal = "pgvalve: " + std::string(name) + " only applies to a sharded database";
    } else if (set && !info.value_is_default && value.size() > kMaxShardKeyBytes) {
      refusal = "pgvalve: " + std::string(name) + " is longer than " +
                std::to_string(kMaxShardKeyBytes) + " bytes";
    } else if (set && !info.value_is_default &&
               routing::shard_of_text(value, *router_.sharding()) < 0) {
      refusal = "pgvalve: \"" + std::string(value) + "\" is not a valid " +
                router_.sharding()->key + " for sharding.key_type";
    }
    if (!refusal.empty()) {
      append_error(r, "22023", refusal);
      pr::append_ready_for_query(r, tx_status);
      return true;
    }
    if (!set || info.value_is_default) {
      if (extras_) extras_->device_id.clear();
    } else {
      extras_to_change().device_id.assign(value);
    }
    pr::append_command_complete(r, set ? "SET" : "RESET");
    pr::append_ready_for_query(r, tx_status);
    return true;
  }
  using Preference = routing::RouteContext::Preference;
  if (!set || info.value_is_default || routing::iequals(value, "auto")) {
    preference_ = Preference::Auto;
  } else if (routing::iequals(value, "primary")) {
    preference_ = Preference::Primary;
  } else if (routing::iequals(value, "replica")) {
    preference_ = Preference::Replica;
  } else {
    append_error(r, "22023",
                 "pgvalve: invalid value for pgvalve.route: \"" + std::string(value) +
                     "\"; use primary, replica or auto");
    pr::append_ready_for_query(r, tx_status);
    return true;
  }
  pr::append_command_complete(r, set ? "SET" : "RESET");
  pr::append_ready_for_query(r, tx_status);
  return true;
}

// One LISTEN or UNLISTEN between transactions — a simple query, or Parse/Bind/[Describe]/
// Execute/Sync of one statement as JDBC and postgres.js send it — goes to the shared listening
// connection of the client's (database, user); the answer comes in on_hub_done().
bool Session::answer_listen_locally(Flight& flight, Actions& out) {
  const char first = flight.input.empty() ? '\0' : flight.input[0];
  if (options_.mode == config::PoolMode::Session ||
      (first != 'Q' && first != 'P' && first != 'B')) {
    return false;
  }
  {
    // The first statement's first word rules out all but LISTEN and UNLISTEN at once.
    auto r = pr::decode_frame(flight.input, options_.max_message_bytes);
    std::string_view text = r.frame.body;
    if (first == 'B') {
      const pr::PreparedStatement* s = bound_statement(r.frame);
      if (!s) return false;
      text = s->query;
    } else if (first == 'P') {
      const auto parse = pr::read_parse(r.frame);
      if (!parse) return false;
      text = parse->query;
    }
    if (!routing::may_start_with(text, {"listen", "unlisten"})) return false;
  }
  std::string_view sql;
  HubReply reply;
  if (!local_flight(flight.input, sql, reply, true)) return false;
  if (!routing::contains_ci(sql, 0, "listen")) return false;
  auto info = routing::classify(sql);
  const bool listen = info.kind == StatementKind::Listen;
  // Anything but exactly one channel name (`LISTEN a b`, `LISTEN a.b`) goes to the server,
  // which answers it as it would a direct client.
  if ((!listen && info.kind != StatementKind::Unlisten) || info.multiple_statements ||
      !info.channel_only || (info.name.empty() && !info.all)) {
    return false;
  }
  const std::string channel(info.name.view());
  if (listen) {
    // The hub's connection speaks UTF8: a client in another encoding (its own, or the
    // database's it never changed) would get names and payloads in the wrong one (PostgreSQL
    // converts them for each listener).
    const std::string_view encoding = setting_value("client_encoding");
    if (!encoding.empty() && !routing::iequals(encoding, "UTF8") &&
        !routing::iequals(encoding, "UTF-8") && !routing::iequals(encoding, "UNICODE")) {
      std::string& r = out.outbox;
      append_local_heads(reply, r);
      append_error(r, "0A000",
                   "pgvalve: LISTEN through transaction pooling delivers notifications in UTF8, "
                   "and this client's client_encoding is " +
                       std::string(encoding) + "; use client_encoding UTF8 or a session pool");
      pr::append_ready_for_query(r, client_tx_status());
      return true;
    }
  }
  if (listen && std::find(extras().listen_channels.begin(), extras().listen_channels.end(),
                          channel) != extras().listen_channels.end()) {
    // Already listening: the hub's server listens on it for this client (a lost hub
    // connection closes the client), so nothing to ask.
    std::string& r = out.outbox;
    append_local_heads(reply, r);
    pr::append_command_complete(r, "LISTEN");
    pr::append_ready_for_query(r, client_tx_status());
    return true;
  }
  if (listen && extras().listen_channels.size() >= kMaxClientListenChannels &&
      std::find(extras().listen_channels.begin(), extras().listen_channels.end(), channel) ==
          extras().listen_channels.end()) {
    std::string& r = out.outbox;
    append_local_heads(reply, r);
    append_error(r, "53400",
                 "pgvalve: a client may listen on at most " +
                     std::to_string(kMaxClientListenChannels) +
                     " channels; UNLISTEN channels it no longer needs");
    pr::append_ready_for_query(r, client_tx_status());
    return true;
  }
  work().change_rare().hub_reply = reply;
  work().change_rare().hub_channel = info.all ? std::string() : channel;
  work().change_rare().hub_request =
      listen ? HubRequest::Kind::Listen
             : (info.all ? HubRequest::Kind::UnlistenAll : HubRequest::Kind::Unlisten);
  out.hub.kind = work().rare().hub_request;
  out.hub.channel = work().rare().hub_channel;
  enter(SessionState::WaitingForHub);
  return true;
}

// ---- On a linked server --------------------------------------------------------------------

void Session::plan_frame(const pr::Frame& f, std::size_t offset, Link& l, Flight& flight) {
  const std::size_t size = f.whole.size();
  if ((flight.drop_until_sync || l.skipping_until_sync) && f.tag != 'S') return;
  if (l.copy_in) {
    // The server takes COPY data: it ignores Flush and Sync until CopyDone or CopyFail
    // (plan_on_link refuses any other message).
    if (f.tag == 'c' || f.tag == 'f') {
      l.copy_in = false;
      l.copy_answer_due = true;
    }
    pass_client(flight, offset, size);
    return;
  }
  const std::size_t requests_before = l.pending.size();
  switch (f.tag) {
    case 'P':
      l.open_extended = true;
      plan_parse(f, offset, l, flight);
      break;
    case 'B':
      l.open_extended = true;
      plan_bind(f, offset, l, flight);
      break;
    case 'D':
      l.open_extended = true;
      plan_describe(f, offset, l, flight);
      break;
    case 'C':
      l.open_extended = true;
      plan_close(f, offset, l, flight);
      break;
    case 'E':
      l.open_extended = true;
      plan_execute(f, offset, l, flight);
      break;
    case 'H':
      if (work().flush_as_sync) {
        work().flush_as_sync = false;
        const std::size_t from = flight.scratch->size();
        pr::append_sync(*flight.scratch);
        mark_scratch(flight, from);
        l.open_extended = false;
        l.flushed = false;
        ++l.in_flight;
        l.pending.push({.kind = Kind::ReadyForQuery, .swallow = true, .sync = true});
        break;
      }
      l.open_extended = true;
      l.flushed = true;
      pass_client(flight, offset, size);
      break;
    case 'S':
      flight.drop_until_sync = false;
      l.skipping_until_sync = false;
      l.open_extended = false;
      l.flushed = false;
      l.flight_plain = true;
      ++l.in_flight;
      pass_client(flight, offset, size);
      if (work().tx().implicit) [[unlikely]] {
        // The end of a request pgvalve runs as a transaction over several shards: its
        // ReadyForQuery is pgvalve's, which then ends every part.
        pr::PendingResponse end{.kind = Kind::ReadyForQuery, .internal = true, .sync = true};
        end.action = kActionImplicitEnd;
        l.pending.push(end);
        break;
      }
      l.pending.push({.kind = Kind::ReadyForQuery, .sync = true});
      break;
    case 'Q':
      ++l.in_flight;
      plan_query(f, offset, l, flight);
      break;
    case 'F':
      // A function called by OID (libpq's large-object calls) is not SQL pgvalve can read: it
      // may set a setting or take a session lock, so assume it did.
      if (options_.mode != config::PoolMode::Session) {
        l.check_pins = true;
        l.server->settings_unknown = true;
      }
      ++l.in_flight;
      pass_client(flight, offset, size);
      l.pending.push({Kind::ReadyForQuery});
      break;
    default:  // CopyData, CopyDone, CopyFail: no answer of their own
      // Sent ahead of the server's CopyInResponse, a CopyDone or CopyFail ends the COPY there
      // (copy_started).
      if (f.tag == 'c' || f.tag == 'f') {
        l.copy_end_sent = true;
        l.copy_answer_due = l.in_flight > 0;
      }
      pass_client(flight, offset, size);
      break;
  }
  if (l.copy_end_sent && l.pending.size() > requests_before) {
    l.pending.at(requests_before).after_copy_end = true;
    l.copy_end_sent = false;
  }
}

// Replaces a refused request with one that makes the server raise the error itself, so a
// transaction in progress fails as on any error. In an extended flight the rest of the flight is
// then not sent (the server would skip it anyway) up to its Sync.
void Session::raise_on_server(std::string_view sqlstate, std::string_view message, bool extended,
                              Link& l, Flight& flight) {
  // A refused request begins no transaction of the client's (statistics).
  if (l.server->tx_status == 'I' && l.pending.empty()) l.transaction_started = {};
  const std::size_t from = flight.scratch->size();
  const std::string statement = routing::raise_error_statement(sqlstate, message);
  if (!extended) {
    pr::append_query(*flight.scratch, statement);
    mark_scratch(flight, from);
    pr::PendingResponse rfq{Kind::ReadyForQuery};
    rfq.action = kActionRaised;
    l.pending.push(rfq);
    return;
  }
  pr::append_parse_raw(*flight.scratch, "", statement, {});
  pr::append_bind(*flight.scratch, "", "", pr::kBindWithoutParameters);
  pr::append_execute(*flight.scratch, "", 0);
  mark_scratch(flight, from);
  l.pending.push({Kind::ParseComplete, true});
  l.pending.push({Kind::BindComplete, true});
  pr::PendingResponse execute{Kind::Execute};
  execute.action = kActionRaised;
  l.pending.push(execute);
  flight.drop_until_sync = true;
}

// A Query goes on as the client sent it, but without a leading `/* pgvalve: ... */` hint:
// that is pgvalve's, not PostgreSQL's.
std::string_view Session::without_hint(std::string_view sql) {
  const routing::HintComment hint = routing::find_leading_hint(sql);
  if (hint.end == 0) return sql;
  std::string& out = work().unhinted;
  out.assign(sql.substr(0, hint.begin)).append(sql.substr(hint.end));
  return out;
}

void Session::forward_query(const pr::Frame& f, std::string_view sql, std::size_t offset,
                            Flight& flight) {
  const std::string_view text = without_hint(sql);
  if (text.size() == sql.size()) {
    pass_client(flight, offset, f.whole.size());
    return;
  }
  const std::size_t from = flight.scratch->size();
  pr::append_query(*flight.scratch, text);
  mark_scratch(flight, from);
}

void Session::plan_query(const pr::Frame& f, std::size_t offset, Link& l, Flight& flight) {
  auto sql = pr::read_query(f);
  // A simple query ends the unnamed statement, the client's or another's.
  l.server->unnamed_statement_of = 0;
  forget_unnamed_statement();
  if (sql && router_.sharded()) {
    if (const auto [sqlstate, why] = shard_conflict(l, *sql, nullptr); !why.empty()) {
      raise_on_server(sqlstate, why, false, l, flight);
      return;
    }
  }
  pr::PendingResponse rfq{Kind::ReadyForQuery};
  if (sql) count_request(rfq, *sql, l);
  if (!sql || plain_statement(*sql)) {
    if (sql) {
      forward_query(f, *sql, offset, flight);
    } else {
      pass_client(flight, offset, f.whole.size());
    }
    l.pending.push(rfq);
    return;
  }
  const std::size_t first_note = l.notes.size();
  Review r = review(*sql, l.pending_setting_notes > 0 || !work().rare().tx_notes.empty(), l.notes);
  if (!r.refusal.empty()) {
    l.notes.resize(first_note);
    raise_on_server(r.refusal_sqlstate, r.refusal, false, l, flight);
    return;
  }
  if (refuse_state_on_replica(r, l, false, flight)) {
    l.notes.resize(first_note);
    return;
  }
  if (router_.sharded() && (r.single || r.first.kind == StatementKind::Begin)) {
    note_transaction_statement(r.first, l);
  }
  if (r.temporary && options_.mode == config::PoolMode::Session) l.server->touched_temp = true;
  if (r.check_pins) l.check_pins = true;
  if (r.changes_reading) reading_may_change_ = true;
  count_server_listens(r);
  const bool translate = options_.mode != config::PoolMode::Session;
  // In a failed transaction DEALLOCATE fails (25P02) and forgets nothing: it goes to the server
  // as it is, which answers so.
  const pr::PreparedStatement* deallocated =
      translate && r.single && r.first.kind == StatementKind::Deallocate && !r.first.all &&
              l.server->tx_status != 'E' && statements_
          ? statements_->find(r.first.name.view())
          : nullptr;
  if (translate && r.single && r.first.kind == StatementKind::Deallocate && !r.first.all &&
      l.server->tx_status != 'E' && !deallocated && is_shared_statement_name(r.first.name.view())) {
    l.notes.resize(first_note);
    raise_on_server("26000", no_such_statement(r.first.name.view()), false, l, flight);
    return;
  }
  if (deallocated) {
    // The client's own protocol-level statement: the shared server-side one stays prepared.
    // An empty query stands in, so the answer still comes in order.
    l.notes.resize(first_note);
    const std::size_t from = flight.scratch->size();
    pr::append_query(*flight.scratch, "");
    mark_scratch(flight, from);
    deallocate_when_answered(r.first.name.view(), *deallocated, rfq, l);
    l.pending.push(rfq);
    return;
  }
  if (r.has_notes && l.notes.size() - first_note > std::numeric_limits<std::uint16_t>::max()) {
    l.notes.resize(first_note);
    raise_on_server("54000",
                    "pgvalve: a query that changes settings may hold at most 65535 statements; "
                    "split it",
                    false, l, flight);
    return;
  }
  if (r.has_notes) {
    rfq.note = static_cast<std::uint32_t>(first_note);
    rfq.note_count = static_cast<std::uint16_t>(l.notes.size() - first_note);
    for (std::size_t i = first_note; i < l.notes.size(); ++i) {
      if (is_setting_note(l.notes[i].kind)) ++l.pending_setting_notes;
    }
  }
  forward_query(f, *sql, offset, flight);
  l.pending.push(rfq);
}

void Session::plan_execute(const pr::Frame& f, std::size_t offset, Link& l, Flight& flight) {
  pr::PendingResponse execute{Kind::Execute};
  auto e = pr::read_execute(f);
  if (closed_portal() && e && e->portal == extras_->closed_portal) [[unlikely]] {
    // Inside the transaction the statement that closed it began.
    raise_on_server("34000", closed_portal_message(), true, l, flight);
    return;
  }
  Workspace& w = work();
  const Note* note = nullptr;
  bool pins = false;
  if (e && e->portal.empty()) {
    note = &w.unnamed_portal_note;
    pins = w.unnamed_portal_pins;
    count_request(execute, w.unnamed_portal_fingerprint);
    if (execute.fingerprint && keeps_literals()) [[unlikely]] {
      keep_sample(execute, w.rare().unnamed_portal_sample, l);
    }
  } else if (e && !w.rare().named_portals.empty()) {
    for (const auto& p : w.rare().named_portals) {
      if (p.portal == e->portal) {
        note = &p.note;
        pins = p.pins;
        count_request(execute, p.fingerprint);
        break;
      }
    }
  }
  if (note && note->kind == NoteKind::Deallocate) [[unlikely]] {
    const pr::PreparedStatement* stmt = statements_ ? statements_->find(note->name) : nullptr;
    if (!stmt) {  // closed since its Parse
      raise_on_server("26000",
                      "pgvalve: prepared statement \"" + note->name +
                          "\" does not exist; it was closed before this DEALLOCATE ran",
                      true, l, flight);
      return;
    }
    pass_client(flight, offset, f.whole.size());
    deallocate_when_answered(note->name, *stmt, execute, l);
    l.pending.push(execute);
    return;
  }
  pass_client(flight, offset, f.whole.size());
  if (pins) l.check_pins = true;
  if (note && note->kind != NoteKind::None) {
    execute.note = static_cast<std::uint32_t>(l.notes.size());
    execute.note_count = 1;
    if (is_setting_note(note->kind)) ++l.pending_setting_notes;
    l.notes.push_back(*note);
  }
  l.pending.push(execute);
}

// The statement goes when the server has run the empty query standing in for its DEALLOCATE:
// not if an earlier error of the flight makes the server skip it, as PostgreSQL would not.
void Session::deallocate_when_answered(std::string_view name, const pr::PreparedStatement& stmt,
                                       pr::PendingResponse& request, Link& l) {
  Note note;
  note.kind = NoteKind::Deallocate;
  note.name = std::string(name);
  note.statements_before = stmt.defined;
  request.action = kActionDeallocate;
  request.note = static_cast<std::uint32_t>(l.notes.size());
  l.notes.push_back(std::move(note));
}

// A named portal (JDBC with a fetch size binds one) is kept for its Executes: the statement's
// fingerprint, and what it changes in settings or may pin.
void Session::remember_portal(std::string_view portal, Note note, bool pins,
                              std::uint64_t fingerprint, Link& l) {
  if (!work().rare().named_portals.empty()) {
    std::erase_if(work().change_rare().named_portals,
                  [portal](const Workspace::Rare::PortalNote& p) { return p.portal == portal; });
  }
  if (note.kind == NoteKind::None && !pins && fingerprint == 0) return;
  auto& portals = work().change_rare().named_portals;
  if (portals.size() >= Workspace::Rare::kMaxTrackedPortals) {
    // Past the bound: assume the worst of what the portal may do; its Executes go uncounted.
    if (pins) l.check_pins = true;
    if (note.kind != NoteKind::None) l.server->settings_unknown = true;
    return;
  }
  portals.push_back({std::string(portal), std::move(note), pins, fingerprint});
}

}  // namespace pgvalve::session
