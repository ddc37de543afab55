// A statement over several shards (sharded databases): one server per shard is checked out,
// one after the other in shard order (so two clients never wait for each other's shards), and
// each is sent its part as soon as it is linked, so the shards run it in parallel. A read's link
// goes back to the pool when its answer is in; after the last one the client gets the gathered
// answer (scatter.h), or the rest of it when its rows stream as they come. A write's parts are
// prepared on each shard and committed, one shard after the other, only once every shard
// prepared its part (else rolled back). A read while the client's transaction has run nothing
// yet runs outside it; inside a transaction over shards, each part runs on that shard's part of
// the transaction (shard_transaction.cpp). An error from any shard, a lost shard or a shard
// without a server is the client's one error.
#include <algorithm>
#include <bit>
#include <cassert>

#include "protocol/messages.h"
#include "session/limits.h"
#include "session/session_internal.h"

namespace pgvalve::session {

namespace pr = protocol;

const routing::ScatterPlan& concatenated() {
  static const routing::ScatterPlan plan = [] {
    routing::ScatterPlan p;
    p.ok = true;
    return p;
  }();
  return plan;
}

const routing::ScatterPlan& first_shards_answer() {
  static const routing::ScatterPlan plan = [] {
    routing::ScatterPlan p;
    p.ok = true;
    p.same_on_every_shard = true;
    return p;
  }();
  return plan;
}

// A request that runs nothing (a Parse, a Describe) of a statement for `shards`: the first of
// them answers it as any would.
routing::Route Session::on_any_of(std::string_view sql, std::uint64_t shards) const {
  routing::RouteContext context;
  context.preference = preference_;
  context.serializable = serializable_default_;
  routing::Route route =
      router_.on_shard(sql, context, static_cast<std::uint16_t>(std::countr_zero(shards)));
  route.any_shard = true;
  return route;
}

Session::ScatterStart Session::start_scatter(std::string_view frames, const RequestText& request,
                                             routing::Route& route, Actions& out,
                                             bool in_transaction) {
  const routing::ShardingPolicy& sharding = *router_.sharding();
  const std::string hint = "name one " + sharding.key + " (WHERE " + sharding.key +
                           " = ...), or add /* pgvalve: " + sharding.key +
                           "=<value> */ or /* pgvalve: shard=<name> */";
  auto refuse = [&](std::string_view sqlstate, std::string why) {
    route = routing::Route::refuse(
        sqlstate, "pgvalve: this statement needs several shards, and " + std::move(why), hint);
    return ScatterStart::NotScattered;
  };
  // The request: up to its Query or Sync.
  std::size_t end = 0;
  bool executes = false;
  bool binds = false;
  bool ended = false;
  pr::FrameReader reader(frames, options_.max_message_bytes);
  for (pr::Frame f; !ended && reader.next(f);) {
    const char tag = f.tag;
    end = reader.offset();
    if (tag == 'E' || tag == 'Q') executes = true;
    if (tag == 'B') binds = true;
    if (tag == 'Q' || tag == 'S') ended = true;
    if (tag == 'H') {
      return refuse("0A000",
                    "pgvalve gathers the shards' answers for a whole request: send its Sync "
                    "instead of a Flush");
    }
  }
  if (!ended) return ScatterStart::Waiting;
  if (!in_transaction && defer_leading_begin(frames, out)) return ScatterStart::Started;
  // A portal fetched in parts (PgJDBC's fetch size, asyncpg's cursors) lives until the end of
  // its transaction: kept while that transaction has run nothing on a server, so that the
  // shards' servers, which wait for the client between its Executes, are the read's own.
  const bool may_keep_portal = !in_transaction && !extras().deferred_begin.empty() &&
                               !route.write && deferred_read_committed();
  if (!executes && binds && !may_keep_portal &&
      (in_transaction || !extras().deferred_begin.empty())) {
    // Its later Execute would run on one shard's server only.
    return refuse("0A000",
                  "pgvalve runs a portal over several shards in the request that binds it, "
                  "except as the first statement of a transaction at READ COMMITTED; send the "
                  "Execute with its Bind");
  }
  if (!executes && !(binds && may_keep_portal)) {
    // A Parse or Describe alone: any shard knows the answer. (Outside a transaction a portal
    // bound alone ends with its Sync, as on one server.)
    route = on_any_of(request.sql, route.shards);
    return ScatterStart::NotScattered;
  }
  // A transaction whose BEGIN pgvalve holds back has run nothing on any server yet. A read
  // then runs on the shards outside it: at READ COMMITTED each statement takes a snapshot of its
  // own and the transaction has no writes of its own to see, so the answer is the one it would
  // get inside. (REPEATABLE READ and SERIALIZABLE share one snapshot between statements.)
  if (!in_transaction && !extras().deferred_begin.empty() &&
      (route.write || !deferred_read_committed())) {
    // A write, or a read that must share the transaction's snapshot: the transaction starts on
    // the first shard the statement needs, and the statement is routed again there, to run on
    // every shard's part of it (route_in_transaction).
    route = routing::Route::primary(static_cast<std::uint16_t>(std::countr_zero(route.shards)));
    work().change_tx().route_again = true;
    return ScatterStart::NotScattered;
  }
  const std::uint64_t fingerprint = fingerprint_of(request.sql);
  // A write's answers are its row counts (and rows it RETURNs): concatenated and added up, but
  // once for a write to reference tables, which every shard answers alike.
  const routing::ScatterPlan& plan = !route.write ? router_.scatter_plan(request.sql, fingerprint)
                                     : route.same_on_every_shard ? first_shards_answer()
                                                                 : concatenated();
  if (!plan.ok) return refuse("0A000", "pgvalve cannot combine its answers: " + plan.refusal);
  const BindParams params(request.bind_rest, request.param_types);
  const routing::ShardStatement statement =
      routing::shard_statement(request.sql, plan, request.bound ? &params : nullptr);
  if (!statement.ok) {
    return refuse("0A000", "pgvalve cannot combine its answers: " + statement.refusal);
  }
  auto scatter = std::make_unique<Scatter>();
  const int shards = std::popcount(route.shards);
  // A write runs in a transaction on each shard, prepared there, and committed on all of them
  // only when every shard prepared it (two-phase commit, named after the first shard's
  // transaction: two_phase.h).
  // (Inside the client's transaction, its parts are the transaction's, committed with it.)
  const bool two_phase = route.write && !in_transaction;
  // An INSERT whose rows belong to several shards: each shard gets its own rows.
  std::vector<Scatter::Part> parts;
  if (route.split_rows) {
    routing::RouteContext context;
    context.fingerprint = fingerprint;
    context.params = request.bound ? &params : nullptr;
    const routing::InsertSplit split = router_.split_insert(request.sql, context);
    if (!split.ok) return refuse("0A000", split.refusal);
    for (const routing::InsertPart& part : split.parts) {
      Scatter::Part p;
      p.sql = part.sql;
      for (std::uint16_t n : part.params) {
        const std::size_t at = 4u * (n - 1u);
        p.param_types.append(at + 4 <= request.param_types.size()
                                 ? request.param_types.substr(at, 4)
                                 : std::string_view("\0\0\0\0", 4));
      }
      if (request.bound && !pr::bind_rest_subset(request.bind_rest, part.params, p.bind_rest)) {
        return refuse("0A000", "pgvalve could not read this INSERT's Bind to split it");
      }
      parts.push_back(std::move(p));
    }
    if (static_cast<int>(parts.size()) != shards) {
      return refuse("0A000", "pgvalve could not place this INSERT's rows on their shards");
    }
  }
  const std::string why = scatter->start(
      frames.substr(0, end), request.sql, request.param_types, plan, statement, shards,
      kMaxGatheredBytes, options_.max_message_bytes, two_phase, route.split_rows ? &parts : nullptr,
      route.write, sharding.text_order.get(), may_keep_portal);
  if (!why.empty()) return refuse("0A000", "pgvalve cannot run it across shards: " + why);

  // A Parse of a named statement defines it for the client's later Binds, as on one shard;
  // once request.sql is no longer read: it may be the text of the statement it replaces.
  Workspace& w = work();
  std::optional<pr::ParseMessage> define;
  if (auto head = pr::decode_frame(frames, options_.max_message_bytes);
      head.status == pr::DecodeStatus::Ok && head.frame.tag == 'P') {
    const auto parse = pr::read_parse(head.frame);
    if (parse && parse->statement.empty()) {
      w.unnamed_statement_text.assign(parse->query);
      w.unnamed_statement_types.assign(parse->param_types);
      if (keeps_literals()) [[unlikely]] {
        w.change_rare().unnamed_statement_sample.assign(
            parse->query.substr(0, stats::QueryStats::kMaxTextBytes + 4));
      }
      w.unnamed_statement_note = {};
      w.unnamed_statement_pins = false;
      w.unnamed_statement_fingerprint = fingerprint;
    } else if (parse) {
      const bool known = statements_ && statements_->find(parse->statement);
      if (!known && prepared_statement_count() >= kMaxClientStatements) {
        route = routing::Route::refuse(
            "53400", "pgvalve: a client may have at most " + std::to_string(kMaxClientStatements) +
                         " named prepared statements; close (DEALLOCATE) the ones it no longer "
                         "uses");
        return ScatterStart::NotScattered;
      }
      if (statement_bytes_ + parse->query.size() > kMaxClientStatementBytes) {
        route = routing::Route::refuse(
            "54000",
            "pgvalve: the named prepared statements of this client hold more than 32 MiB of "
            "text; close (DEALLOCATE) the ones it no longer uses");
        return ScatterStart::NotScattered;
      }
      define = parse;
    }
  }

  if (in_transaction) {
    open_scatter_run(std::move(scatter), {}, fingerprint, false);
    if (keeps_literals()) [[unlikely]] {
      describe_sample(w.change_scatter().sample, request.sql,
                      request.bound ? request.bind_rest : std::string_view{}, request.param_types);
    }
    send_to_transaction_parts(route.shards, kActionScatter, out);
    if (recorder_) recorder_->stats->prepare(fingerprint, request.sql, recorder_->labels);
    if (define) define_statement(define->statement, define->query, define->param_types);
    out.consumed = end;
    enter(SessionState::Scattering);
    return ScatterStart::Started;
  }

  std::vector<routing::Route> routes;
  routing::RouteContext context;
  context.preference = preference_;
  context.serializable = serializable_default_;
  context.fingerprint = fingerprint;
  context.recent_write = options_.read_your_writes == config::ReadYourWrites::Time &&
                         last_write_at_ != Clock::time_point{} &&
                         now_ - last_write_at_ < options_.read_your_writes_window;
  for (std::uint64_t rest = route.shards; rest != 0; rest &= rest - 1) {
    const auto shard = static_cast<std::uint16_t>(std::countr_zero(rest));
    // A write's parts go to the primaries; a read's follow the replica rules of each shard.
    routing::Route part = route.write ? routing::Route::primary(shard)
                                      : router_.on_shard(request.sql, context, shard);
    if (part.kind == routing::Route::Kind::Replica &&
        options_.read_your_writes == config::ReadYourWrites::Lsn) {
      part.after_lsn = read_your_writes_lsn(shard);
    }
    routes.push_back(std::move(part));
  }
  open_scatter_run(std::move(scatter), std::move(routes), fingerprint, two_phase);
  if (keeps_literals()) [[unlikely]] {
    describe_sample(w.change_scatter().sample, request.sql,
                    request.bound ? request.bind_rest : std::string_view{}, request.param_types);
  }
  if (recorder_) recorder_->stats->prepare(fingerprint, request.sql, recorder_->labels);
  if (define) define_statement(define->statement, define->query, define->param_types);
  out.consumed = end;
  check_out_next_shard(out);
  return ScatterStart::Started;
}

// The name of a two-phase commit's prepared parts: pgvalve's, this process's, this client's,
// unique, and naming the part that decides it (two_phase.h).
std::string Session::two_phase_gid(std::uint16_t decider, std::uint64_t xid) {
  TwoPhaseName name;
  name.instance = options_.instance;
  name.client = static_cast<std::uint32_t>(key_.process_id);
  name.count = ++scatter_writes_;
  name.decider = decider;
  name.xid = xid;
  return session::two_phase_gid(name);
}

void Session::open_scatter_run(std::unique_ptr<Scatter> scatter, std::vector<routing::Route> routes,
                               std::uint64_t fingerprint, bool two_phase) {
  auto& run = work().change_scatter();
  run = {};
  run.scatter = std::move(scatter);
  run.routes = std::move(routes);
  run.fingerprint = fingerprint;
  run.started = now_;
  run.two_phase = two_phase;
}

// A part of a two-phase write is prepared once the decider told its xid (the gid is known then);
// until then it waits (prepare_due). Without an xid every part rolls back instead: ROLLBACK,
// answered as a PREPARE of a failed transaction is (not prepared).
void Session::prepare_part(Link& l, Actions& out) {
  auto& run = work().change_scatter();
  if (run.xid == Workspace::XidState::Asked) {
    l.prepare_due = true;
    return;
  }
  l.prepare_due = false;
  const std::string& sql = run.xid == Workspace::XidState::Known ? run.prepare : rollback_message();
  out.to_links.push_back({l.id, {sql.data(), sql.size()}});
  expect_own_answer(l, kActionScatterPrepare);
  l.last_activity = now_;
}

void Session::prepare_due_parts(Actions& out) {
  for (Link& o : work().links) {
    if (o.server && o.scatter_shard >= 0 && o.prepare_due) prepare_part(o, out);
  }
}

// The decider's xid came (or could not): the gid is known, and the parts waiting for it are
// prepared (or rolled back).
void Session::decider_answered(std::optional<std::uint64_t> xid, Actions& out) {
  auto& run = work().change_scatter();
  if (run.xid != Workspace::XidState::Asked) return;
  if (xid && !run.scatter->failed()) {
    run.xid = Workspace::XidState::Known;
    run.gid = two_phase_gid(run.routes.front().shard, *xid);
    run.prepare.clear();
    pr::append_query(run.prepare, "PREPARE TRANSACTION '" + run.gid + "'");
  } else {
    run.xid = Workspace::XidState::Failed;
  }
  prepare_due_parts(out);
}

bool Session::scattering() const {
  return work_ && work_->scatter().scatter != nullptr;
}

bool Session::copying_from_client() const {
  if (state_ == SessionState::Copying) return true;
  if (!work_) return false;
  return std::any_of(work_->links.begin(), work_->links.end(),
                     [](const Link& l) { return l.server && l.copy_in; });
}

// What a write's prepared parts are told: COMMIT PREPARED once the commit was decided (every
// part prepared), else ROLLBACK PREPARED.
std::string_view Session::scatter_decision_sql() {
  auto& run = work().change_scatter();
  return decision_sql(run.gid, run.deciding && run.commit, run.decision_sql);
}

std::string_view decision_sql(std::string_view gid, bool commit, std::string& kept) {
  std::string sql =
      std::string(commit ? "COMMIT" : "ROLLBACK") + " PREPARED '" + std::string(gid) + "'";
  // Views of it may be in this step's actions already (a part per link): changed only when the
  // decision is.
  if (sql != kept) kept = std::move(sql);
  return kept;
}

void Session::check_out_next_shard(Actions& out) {
  auto& run = work().change_scatter();
  run.waiting = true;
  if (run.next < run.routes.size()) {
    work().pending_link = static_cast<LinkId>(run.next);
    ++run.next;
  } else {
    work().pending_link = run.again.back();
    run.again.pop_back();
  }
  work().pending_route = run.routes[work().pending_link];
  out.check_out = true;
  out.route = work().pending_route;
  enter(SessionState::WaitingForServer);
}

// A shard's server was linked: its settings are made the client's and the request sent, in one
// write; the next shard is checked out meanwhile.
void Session::link_scatter(Link& l, Actions& out) {
  auto& run = work().change_scatter();
  Workspace& w = work();
  run.waiting = false;
  l.scatter_shard = l.id;
  if (run.scatter->failed()) {
    // Another shard's answer already decided the client's (an error): this one is not asked.
    unlink(l.id, LinkOp::Kind::Release, out);
    if (run.open == 0) {
      settle_scatter(out.outbox, out);
    } else {
      enter(SessionState::Scattering);
    }
    return;
  }
  w.client_scratch.clear();
  start_sync(l, w.client_scratch, now_);
  if (!w.client_scratch.empty()) {
    out.to_server.push_back({w.client_scratch.data(), w.client_scratch.size()});
  }
  const std::string_view request = run.scatter->request(l.scatter_shard);
  out.to_server.push_back({request.data(), request.size()});
  out.server_link = l.id;
  if (run.copy) {
    // BEGIN (the decider's xid); the COPY, whose data and PREPARE TRANSACTION follow
    // (copy_flight.cpp).
    expect_own_answer(l, kActionScatterBegin);
    if (l.scatter_shard == 0) expect_own_answer(l, kActionScatterXid);
    expect_own_answer(l, kActionScatterCopy);
  } else if (run.scatter->write()) {
    // BEGIN (the decider's xid); the statement; PREPARE TRANSACTION once the gid is known: each
    // answer up to a ReadyForQuery.
    expect_own_answer(l, kActionScatterBegin);
    if (l.scatter_shard == 0) expect_own_answer(l, kActionScatterXid);
    expect_own_answer(l, kActionScatter);
    prepare_part(l, out);
  } else {
    expect_own_answer(l, kActionScatter);
  }
  ++run.open;
  if (run.next < run.routes.size() || !run.again.empty()) {
    check_out_next_shard(out);
  } else {
    enter(SessionState::Scattering);
  }
}

bool Session::retry_scatter_part(Link& l, Actions& out) {
  if (!scattering() || l.scatter_shard < 0 || drain_requested_ ||
      l.route.kind != routing::Route::Kind::Replica || l.answered) {
    return false;
  }
  auto& run = work().change_scatter();
  if (run.in_transaction || run.two_phase || run.copy || run.scatter->write() ||
      run.scatter->failed()) {
    return false;
  }
  const auto part = static_cast<std::size_t>(l.scatter_shard);
  if (part >= run.routes.size()) return false;
  if (run.rerun.empty()) run.rerun.assign(run.routes.size(), false);
  if (run.rerun[part]) return false;
  run.rerun[part] = true;
  unlink(l.id, LinkOp::Kind::Close, out);
  --run.open;
  run.again.push_back(static_cast<LinkId>(part));
  if (!run.waiting) check_out_next_shard(out);
  return true;
}

// Every shard the run needs has joined the client's transaction (route_in_transaction): each
// part runs on its shard's server, all at once, and the servers stay the transaction's.
void Session::send_to_transaction_parts(std::uint64_t shards, std::uint8_t action, Actions& out) {
  Workspace& w = work();
  auto& run = w.change_scatter();
  run.in_transaction = true;
  int index = 0;
  for (std::uint64_t rest = shards; rest != 0; rest &= rest - 1) {
    const auto shard = static_cast<std::uint16_t>(std::countr_zero(rest));
    Link* part = nullptr;
    for (Link& o : w.links) {
      if (o.server && o.route.shard == shard) part = &o;
    }
    assert(part != nullptr);
    part->scatter_shard = index++;
    part->last_activity = now_;
    const std::string_view sent = run.scatter->request(part->scatter_shard);
    out.to_links.push_back({part->id, {sent.data(), sent.size()}});
    expect_own_answer(*part, action);
    ++run.open;
  }
}

void Session::transaction_part_answered(Link& l, std::string& into, Actions& out) {
  auto& run = work().change_scatter();
  record_scatter_part(l);
  l.scatter_shard = -1;
  if (--run.open == 0) finish_scatter(into, out);
}

void Session::scatter_checkout_failed(std::string_view sqlstate, std::string_view message,
                                      Actions& out) {
  auto& run = work().change_scatter();
  run.waiting = false;
  fail_scatter(sqlstate, message, out);
  // The decider's own checkout failed: no xid will come, and the parts roll back.
  if (run.two_phase && run.next == 1) decider_answered(std::nullopt, out);
  run.next = run.routes.size();
  run.again.clear();
  if (run.copy) end_copy(out);
  if (run.open == 0) {
    settle_scatter(out.outbox, out);
  } else {
    enter(SessionState::Scattering);
  }
}

void Session::scatter_frame(Link& l, const pr::Frame& f, Actions& out) {
  auto& run = work().change_scatter();
  const std::uint8_t action = l.pending.front().action;
  l.answered = true;  // its part can no longer run elsewhere (retry_scatter_part)
  if (f.tag == 'Z') {
    complete_front(l, f.tag, out);
    return;
  }
  switch (action) {
    case kActionScatterXid:
      if (f.tag == 'D') run.decider_xid = xid_in_row(f);
      if (f.tag == 'E') {
        run.scatter->fail("XX000", "pgvalve: server " + l.server->name +
                                       " could not begin its part of a write to several shards");
      }
      return;
    case kActionScatter: {
      // A streamed read's rows (and what comes before them) reach the client as they come.
      const std::size_t from = l.scratch.size();
      run.scatter->add(l.scatter_shard, f, l.scratch);
      // A kept portal's Execute that got its rows is answered; the shards' rest waits.
      if (state_ == SessionState::Scattering && run.scatter->piece_full()) {
        suspend_portal(l.scratch, out);
      }
      if (l.scratch.size() > from) {
        if (!l.spans.empty() && l.spans.back().scratch &&
            l.spans.back().offset + l.spans.back().size == from) {
          l.spans.back().size += l.scratch.size() - from;
        } else {
          l.spans.push_back({true, from, l.scratch.size() - from});
        }
      }
      hold_back_shards(out);
      return;
    }
    case kActionScatterCopy:
      if (f.tag == 'G') {
        copy_shard_ready(l, f, out);
        return;
      }
      run.scatter->add(l.scatter_shard, f, l.scratch);
      if (f.tag == 'E') {
        l.copy_in = false;  // the server left COPY; the others are told to leave it too
        end_copy(out);
      }
      return;
    case kActionScatterPrepare:
      if (f.tag == 'C') {
        // An aborted transaction answers PREPARE TRANSACTION with ROLLBACK (its error is the
        // client's already); any other answer means the part ran outside a transaction.
        l.prepared = pr::read_command_complete(f).value_or("") == "PREPARE TRANSACTION";
        if (!l.prepared) {
          run.scatter->fail("XX000", "pgvalve: server " + l.server->name +
                                         " did not prepare its part of a write to several "
                                         "shards; the write was rolled back where it was prepared");
        }
      } else if (f.tag == 'E') {
        const auto e = pr::read_error_response(f);
        if (e && e->sqlstate == "55000") {
          run.scatter->fail("55000",
                            "pgvalve: a write to several shards commits with two-phase commit, "
                            "which server " +
                                l.server->name +
                                " does not allow; set max_prepared_transactions above 0 on every "
                                "shard, or write to one shard at a time");
        } else {
          run.scatter->add(l.scatter_shard, f, l.scratch);
        }
      }
      return;
    case kActionScatterFinish:
      if (f.tag == 'E') l.discard = true;  // the COMMIT/ROLLBACK PREPARED failed
      return;
    case kActionScatterWal:
      if (f.tag == 'D') read_wal_position(l, f);
      return;
    default:
      // BEGIN's answer: without its transaction the part could not be rolled back.
      if (f.tag == 'E') {
        run.scatter->fail("XX000", "pgvalve: server " + l.server->name +
                                       " could not begin its part of a write to several shards");
      }
      return;
  }
}

// A streamed read's merge waits for one shard's next row: shards with rows enough waiting are
// not read meanwhile (their servers wait in TCP), and are read again once the merge took them.
void Session::hold_back_shards(Actions& out) {
  if (!scattering()) return;
  const Scatter& scatter = *work().scatter().scatter;
  for (Link& o : work().links) {
    if (!o.server || o.scatter_shard < 0) continue;
    const bool hold = scatter.waits(o.scatter_shard);
    if (hold == o.held_back) continue;
    o.held_back = hold;
    if (!hold) {
      o.last_activity = now_;  // its silence counts again from now
      out.link_ops.push_back({LinkOp::Kind::Read, o.id, {}});
    }
  }
}

// The client's answer is this error: shards held back for the merge are read again (the rest
// of their answers is dropped).
void Session::fail_scatter(std::string_view sqlstate, std::string_view message, Actions& out) {
  work().scatter().scatter->fail(sqlstate, message);
  hold_back_shards(out);
}

void Session::scatter_answered(Link& l, std::uint8_t action, std::string& into, Actions& out) {
  auto& run = work().change_scatter();
  switch (action) {
    case kActionScatterXid:
      decider_answered(run.decider_xid, out);
      return;
    case kActionScatter:
      if (run.in_transaction) {
        // Its part is answered; the server stays the transaction's.
        transaction_part_answered(l, into, out);
        return;
      }
      if (!run.scatter->write()) end_scatter_link(l, LinkOp::Kind::Release, into, out);
      return;
    case kActionScatterCopy:
      if (run.in_transaction) {
        // Its COPY is over; it commits with the transaction.
        l.copy_in = false;
        if (run.scatter->failed()) end_copy(out);
        transaction_part_answered(l, into, out);
        return;
      }
      copy_part_answered(l, out);
      return;
    case kActionScatterPrepare:
      record_scatter_part(l);
      l.part_answered = true;
      --run.open;
      if (run.open == 0 && !run.waiting) settle_scatter(into, out);
      return;
    case kActionScatterFinish:
    case kActionScatterWal: {
      if (!l.pending.empty()) return;  // the WAL position after the commit comes next
      if (l.discard && run.commit && !run.committed_some) {
        // The first COMMIT PREPARED failed: no shard committed, so none does. The others are
        // rolled back, and so is this part once pgvalve finds it still prepared.
        run.commit = false;
        run.wal_after = false;
        // A message of its own: the COMMIT PREPARED sent by an earlier step stays as it was.
        pr::append_query(run.undo, scatter_decision_sql());
        out.prepared_parts.push_back({l.route.shard, run.gid, false});
        run.scatter->fail("40000", "pgvalve: COMMIT PREPARED '" + run.gid + "' failed on server " +
                                       l.server->name +
                                       " before any shard committed the write; it was rolled "
                                       "back on every shard, run it again");
      } else if (l.discard && run.commit) {
        out.prepared_parts.push_back({l.route.shard, run.gid, true});
        run.scatter->fail("XX000", "pgvalve: COMMIT PREPARED '" + run.gid + "' failed on server " +
                                       l.server->name +
                                       " after other shards committed the write; it stays "
                                       "prepared there until " +
                                       kLeftPartCommitted);
      } else if (run.commit) {
        run.committed_some = true;
      }
      const bool clean = !l.discard && l.server->tx_status == 'I';
      unlink(l.id, clean ? LinkOp::Kind::Release : LinkOp::Kind::Close, out);
      settle_scatter(into, out);
      return;
    }
    default:
      return;
  }
}

// The statistics of a statement over several shards, for one shard's part or for the client's
// one answer (`scope`).
stats::Execution Session::scatter_execution(stats::Execution::Scope scope) {
  const auto& run = work().scatter();
  stats::Execution e;
  e.fingerprint = run.fingerprint;
  e.micros = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(now_ - run.started).count());
  e.error = run.scatter->failed();
  e.kind = run.copy               ? stats::StatementKind::Copy
           : run.scatter->write() ? stats::StatementKind::Other
                                  : stats::StatementKind::Select;
  e.scope = scope;
  return e;
}

void Session::record_scatter_part(Link& l, bool stopped) {
  if (!recorder_) return;
  stats::Execution e = scatter_execution(stats::Execution::Scope::ShardPart);
  const Scatter& scatter = *work().scatter().scatter;
  e.rows = stopped ? scatter.rows_read(l.scatter_shard) : scatter.rows(l.scatter_shard);
  e.replica = l.server->replica;
  e.shard = l.route.shard;
  e.host = l.server->name;
  recorder_->stats->record(e, recorder_->labels);
  // Where the parts ran, for the client's statement (record_gathered).
  auto& run = work().change_scatter();
  std::string& hosts = work().gathered_hosts;
  if (run.parts_on == 0) hosts.clear();
  if (e.shard < 64) run.parts_on |= std::uint64_t{1} << e.shard;
  run.parts_on_replicas = run.parts_on_replicas && e.replica;
  bool listed = false;  // whole names: 10.0.0.1:5432 is not a part of 10.0.0.11:5432
  for (std::size_t at = 0; at < hosts.size() && !listed;) {
    const std::size_t end = std::min(hosts.find(',', at), hosts.size());
    listed = std::string_view(hosts).substr(at, end - at) == e.host;
    at = end + 1;
  }
  if (!listed) {
    if (!hosts.empty()) hosts += ',';
    hosts += e.host;
  }
}

void Session::end_scatter_link(Link& l, LinkOp::Kind how, std::string& into, Actions& out,
                               std::string_view lost) {
  auto& run = work().change_scatter();
  const bool answering = l.in_flight > 0 || !l.pending.empty();
  if (run.in_transaction) {
    // A part of the client's transaction is lost (or silent): the transaction is over on every
    // part once the others have answered (finish_scatter).
    run.lost = true;
    fail_scatter("08006",
                 lost.empty() ? std::string_view("pgvalve: a shard's server was "
                                                 "lost; the transaction was rolled "
                                                 "back, run it again")
                              : lost,
                 out);
    const bool unanswered = l.scatter_shard >= 0;
    unlink(l.id, how, out);
    if (unanswered && --run.open == 0) finish_scatter(into, out);
    return;
  }
  if (how != LinkOp::Kind::Release && run.scatter->write() && (l.prepared || l.finishing)) {
    // Lost with its part prepared (or being committed): the transaction stays prepared there
    // until the decision the other parts got reaches it. While the deciding part's COMMIT
    // PREPARED is unconfirmed, the write is that shard's to decide: the parts follow it.
    const bool commit = run.deciding && run.commit;
    const bool unconfirmed = commit && !run.committed_some;
    out.prepared_parts.push_back({l.route.shard, run.gid, commit, unconfirmed && !l.finishing});
    if (unconfirmed && l.finishing) {
      // The decider itself: whether its COMMIT PREPARED ran is unknown. No other part commits
      // before it has; each follows how its transaction ended (two_phase.h).
      run.scatter->fail("40003", "pgvalve: lost server " + l.server->name +
                                     " while committing a write to several shards, whose "
                                     "outcome that shard decides; pgvalve finishes every shard "
                                     "the same way once it takes writes again (SHOW SHARDS "
                                     "counts the parts until then)");
      for (Link& o : work().links) {
        if (!o.server || o.id == l.id || o.scatter_shard < 0 || !o.prepared || o.finishing) {
          continue;
        }
        out.prepared_parts.push_back({o.route.shard, run.gid, true, true});
        unlink(o.id, o.server->tx_status == 'I' ? LinkOp::Kind::Release : LinkOp::Kind::Close, out);
      }
    } else if (!run.deciding) {
      run.scatter->fail("08006", "pgvalve: lost server " + l.server->name +
                                     " before a write to several shards committed; it was rolled "
                                     "back on the other shards, and stays prepared there as '" +
                                     run.gid + "' until " + kLeftPartRolledBack);
    } else if (run.commit) {
      run.scatter->fail("08006", "pgvalve: lost server " + l.server->name +
                                     " while committing a write to several shards; other shards "
                                     "committed it, and it stays prepared there as '" +
                                     run.gid + "' until " + kLeftPartCommitted);
    }
    const bool was_finishing = l.finishing;
    unlink(l.id, how, out);
    if (was_finishing) settle_scatter(into, out);
    return;
  }
  // A part is sent its PREPARE TRANSACTION once the gid is known (and a COPY's once the COPY
  // ended): only then may it have run.
  bool prepare_sent = false;
  for (std::size_t i = 0; i < l.pending.size(); ++i)
    prepare_sent |= l.pending.at(i).action == kActionScatterPrepare;
  // The decider lost before it told its xid: no gid, and every part rolls back.
  const bool decider_lost =
      run.two_phase && run.xid == Workspace::XidState::Asked && l.scatter_shard == 0;
  l.prepare_due = false;  // this part is over
  if (how != LinkOp::Kind::Release && !run.gid.empty() && !l.part_answered && prepare_sent) {
    // Its PREPARE TRANSACTION may have run before the server was lost: the part is rolled back
    // there too, once the shard is back.
    out.prepared_parts.push_back({l.route.shard, run.gid, false});
  }
  if (!lost.empty() && !run.scatter->write()) {
    // A read: say where, and that nothing is to be rolled back.
    std::string why = "pgvalve: lost server " + l.server->name;
    if (const auto* sharding = router_.sharding();
        sharding && l.route.shard < sharding->shard_names.size()) {
      why += " of shard " + sharding->shard_names[l.route.shard];
    }
    why += " during a read over several shards; run it again";
    fail_scatter("08006", why, out);
  } else if (!lost.empty()) {
    fail_scatter("08006", lost, out);
  }
  if (decider_lost) {
    if (!run.scatter->failed()) {
      fail_scatter("08006",
                   "pgvalve: a shard's server was lost before a write to several shards "
                   "committed; it was rolled back on every shard, run it again",
                   out);
    }
    decider_answered(std::nullopt, out);
  }
  if (run.copy && run.scatter->failed()) {
    l.copy_in = false;
    end_copy(out);
  }
  if (l.part_answered) {
    // Its part was answered (and counted) already; nothing of the write is prepared there.
    unlink(l.id, how, out);
    return;
  }
  if (answering || how == LinkOp::Kind::Release) record_scatter_part(l);
  if (how == LinkOp::Kind::Release && (l.discard || l.server->tx_status != 'I')) {
    how = LinkOp::Kind::Close;
  }
  unlink(l.id, how, out);
  --run.open;
  if (run.open == 0 && !run.waiting) settle_scatter(into, out);
}

// Every shard has answered its part (or failed): a read is answered; a write is committed or
// rolled back on each shard that prepared it, one shard after the other in shard order (the
// first COMMIT PREPARED decides), then answered.
void Session::settle_scatter(std::string& into, Actions& out) {
  auto& run = work().change_scatter();
  if (!run.scatter->write()) {
    finish_scatter(into, out);
    return;
  }
  if (!run.deciding) {
    run.deciding = true;
    run.commit = !run.scatter->failed();
    run.decision.clear();
    pr::append_query(run.decision, scatter_decision_sql());
    // read_your_writes = lsn: where each primary's WAL is once it committed, so that the
    // client's next reads of that shard wait for a replica that has the write.
    run.wal_after =
        run.commit && router_.splits() && options_.read_your_writes == config::ReadYourWrites::Lsn;
    if (run.wal_after) run.decision.append(wal_position_message());
  }
  // Shards where nothing is prepared are done.
  for (Link& l : work().links) {
    if (!l.server || l.scatter_shard < 0 || l.finishing || l.prepared) continue;
    unlink(l.id, l.server->tx_status == 'I' ? LinkOp::Kind::Release : LinkOp::Kind::Close, out);
  }
  for (Link& l : work().links) {
    if (!l.server || l.scatter_shard < 0 || l.finishing) continue;
    l.finishing = true;
    const std::string& decision = run.undo.empty() ? run.decision : run.undo;
    out.to_server.push_back({decision.data(), decision.size()});
    out.server_link = l.id;
    expect_own_answer(l, kActionScatterFinish);
    if (run.wal_after) expect_own_answer(l, kActionScatterWal);
    l.last_activity = now_;
    return;
  }
  finish_scatter(into, out);
}

void Session::record_gathered(std::string_view answer) {
  if (!recorder_) return;
  const auto& run = work().scatter();
  // The client's one statement, once for its fingerprint.
  stats::Execution e = scatter_execution(stats::Execution::Scope::Gathered);
  e.rows = run.scatter->rows_answered();
  e.shard = run.routes.empty() ? 0 : run.routes.front().shard;
  // A replica read only when every part ran on a replica.
  e.replica = run.parts_on != 0 && run.parts_on_replicas;
  e.shards = run.parts_on;
  e.host = work().gathered_hosts;
  if (e.error) {
    // The SQLSTATE class of the client's error.
    pr::FrameReader reader(answer, options_.max_message_bytes);
    for (pr::Frame f; reader.next(f);) {
      if (f.tag != 'E') continue;
      if (const auto err = pr::read_error_response(f); err && err->sqlstate.size() >= 2) {
        e.sqlstate_class[0] = err->sqlstate[0];
        e.sqlstate_class[1] = err->sqlstate[1];
      }
      break;
    }
  }
  recorder_->stats->record(e, recorder_->labels, run.sample);
  work().gathered_hosts.clear();
}

// The first Execute of a kept portal got its rows before every shard answered (or a later one
// did): the client is answered, and may send its next Execute. The shards' servers stay, read
// only until the gather holds its share of their rows (hold_back_shards).
void Session::suspend_portal(std::string& into, Actions& out) {
  work().change_scatter().scatter->suspend(into);
  pr::append_ready_for_query(into, client_tx_status());
  enter(SessionState::PortalSuspended);
  deliver_queued_notifications(into);
  out.resume_client = true;
}

void Session::fetch_from_portal(std::string_view frames, Actions& out) {
  auto& run = work().change_scatter();
  Scatter& scatter = *run.scatter;
  const std::string& portal = scatter.portal();
  // The request up to its Sync: Execute, Describe and Close of the portal, and nothing else.
  std::optional<std::int64_t> rows;
  bool describe = false;
  bool close = false;
  bool other = false;
  bool synced = false;
  std::size_t end = 0;
  pr::FrameReader reader(frames, options_.max_message_bytes);
  for (pr::Frame f; !synced && !other && reader.next(f);) {
    const bool first = !rows && !describe && !close;
    if (f.tag == 'S') {
      synced = true;
    } else if (f.tag == 'E') {
      const auto e = pr::read_execute(f);
      other = !e || e->portal != portal || rows || close;
      if (!other) rows = std::max(e->max_rows, 0);  // below zero PostgreSQL reads none: all
    } else if (f.tag == 'D') {
      const auto d = pr::read_describe(f);
      other = !d || d->kind != 'P' || d->name != portal || !first;
      describe = !other;
    } else if (f.tag == 'C') {
      const auto c = pr::read_close(f);
      other = !c || c->kind != 'P' || c->name != portal || !first;
      close = !other;
    } else {
      other = true;
    }
    if (!other) end = reader.offset();
  }
  if (!other && !synced) return;  // the rest of the request is on its way
  if (other || close) {
    // PostgreSQL keeps a portal until its transaction ends; pgvalve's holds servers, which the
    // client's other statements may need: it ends here, and a later Execute of it fails.
    if (other) extras_to_change().closed_portal = portal;
    close_portal(out);
    if (other) {
      out.resume_client = true;  // the request is planned again, as from Idle
      return;
    }
    pr::append_close_complete(out.outbox);
    pr::append_ready_for_query(out.outbox, client_tx_status());
    out.consumed = end;
    return;
  }
  out.consumed = end;
  if (!rows) {
    // A Describe of the portal, or a Sync, alone.
    if (describe) scatter.describe_portal(out.outbox);
    pr::append_ready_for_query(out.outbox, client_tx_status());
    return;
  }
  scatter.fetch(*rows, describe, out.outbox);
  if (run.open == 0 && !run.waiting) {
    // Every shard answered: the rest is in memory.
    enter(SessionState::Scattering);
    finish_scatter(out.outbox, out);
    return;
  }
  if (scatter.piece_full()) {
    scatter.suspend(out.outbox);
    pr::append_ready_for_query(out.outbox, client_tx_status());
    held_since_ = now_;  // idle in its transaction from now
    return;
  }
  // The shards are read again for the rest of this Execute's rows.
  enter(SessionState::Scattering);
  hold_back_shards(out);
}

void Session::close_portal(Actions& out) {
  Workspace& w = work();
  for (Link& l : w.links) {
    if (!l.server || l.scatter_shard < 0) continue;
    record_scatter_part(l, true);
    // Its read may run on for a long time: stopped, not read to its end.
    unlink(l.id, LinkOp::Kind::CancelAndClose, out);
  }
  record_gathered({});
  w.change_scatter() = {};
  enter(SessionState::Idle);
}

bool Session::refuse_closed_portal(std::string_view frames, Actions& out) {
  const std::string& portal = extras().closed_portal;
  std::size_t end = 0;
  bool executes = false;
  pr::FrameReader reader(frames, options_.max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    end = reader.offset();
    if (f.tag == 'B') {
      if (const auto b = pr::read_bind_head(f); b && b->portal == portal) {
        extras_to_change().closed_portal.clear();  // a portal of the same name, afresh
        return false;
      }
    } else if (f.tag == 'E') {
      const auto e = pr::read_execute(f);
      executes |= e && e->portal == portal;
    } else if (f.tag == 'Q') {
      // SQL's FETCH and MOVE name a portal as a cursor (asyncpg's Cursor.forward()).
      const std::string_view sql = pr::read_query(f).value_or("");
      executes |=
          routing::may_start_with(sql, {"fetch", "move"}) && routing::fetched_cursor(sql) == portal;
    }
    if (f.tag == 'S' || f.tag == 'Q') break;
  }
  if (!executes) return false;
  // As any refusal in a block pgvalve holds the BEGIN of: the block fails (LostBlock::Failed).
  const bool in_block = !extras().deferred_begin.empty();
  forget_deferred_begin();
  if (in_block) lost_block_ = LostBlock::Failed;
  fail_requests(frames.substr(0, end), "34000", closed_portal_message(), out.outbox, {},
                in_block ? 'E' : 'I');
  out.consumed = end;
  return true;
}

std::string Session::closed_portal_message() const {
  return "pgvalve: portal \"" + extras().closed_portal +
         "\" read several shards and was closed when the client sent another request before "
         "its last row (pgvalve keeps such a portal only while it is fetched); read its rows to "
         "the end before other statements, or fetch them all at once (no fetch size)";
}

bool Session::deferred_read_committed() const {
  const auto stronger = [](std::string_view text) {
    const std::string folded = lower(text);
    return folded.find("repeatable") != std::string::npos ||
           folded.find("serializable") != std::string::npos;
  };
  if (stronger(extras().deferred_begin)) return false;
  for (const char* name :
       {"default_transaction_isolation", "transaction_isolation", "session_characteristics"}) {
    if (const Setting* s = client_settings_.find(name); s && stronger(s->value)) return false;
  }
  return true;
}

void Session::finish_scatter(std::string& into, Actions& out) {
  // A suspended portal's shards all answered: what is left waits for its next Execute.
  if (state_ == SessionState::PortalSuspended) return;
  Workspace& w = work();
  // read_your_writes = time: the client's reads go to primaries for the window after a write
  // (with lsn, each committed shard's mark moved as its WAL position came).
  if (w.scatter().scatter->write() && w.scatter().commit) last_write_at_ = now_;
  const std::size_t answer_from = into.size();
  const bool in_transaction = w.scatter().in_transaction;
  char status = 'I';
  bool abandon = false;
  if (in_transaction) {
    // Inside the client's transaction: a part's error aborted it ('E'), as on one server. A
    // failure no server saw (a part lost, rows past pgvalve's bound) ends it on every part.
    const bool part_failed = std::any_of(w.links.begin(), w.links.end(), [](const Link& o) {
      return o.server && o.server->tx_status == 'E';
    });
    abandon = w.scatter().scatter->failed() && (!part_failed || w.scatter().lost);
    // Abandoned, every part is rolled back, but the client's block has failed as after any
    // error in it: 'E', then 25P02 until it ends the block (LostBlock::Failed).
    if (abandon) lost_block_ = LostBlock::Failed;
    status = part_failed || abandon ? 'E' : 'T';
  } else {
    // A read inside a transaction pgvalve holds the BEGIN of: the client stays in it; when the
    // read failed its block failed, as any refusal there makes it (nothing ran on a server).
    status = client_tx_status();
    if (w.scatter().scatter->failed() && status != 'I') {
      forget_deferred_begin();
      lost_block_ = LostBlock::Failed;
      status = 'E';
    }
    // The client's transaction: this statement alone, or one whose BEGIN pgvalve holds.
    if (status == 'I' && recorder_) {
      count_transaction(static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::microseconds>(now_ - w.scatter().started)
              .count()));
    } else if (status == 'T' && extras().deferred_read_at == Clock::time_point{}) {
      extras_to_change().deferred_read_at = w.scatter().started;
    }
  }
  // A shard's part may have synced the client's settings (normalised values): the client hears of
  // them before the gathered answer's ReadyForQuery.
  report_settings(into);
  w.scatter().scatter->finish(into, status);
  if (w.scatter().scatter->portal_goes_on()) {
    // A kept portal's Execute got its rows (every shard has answered): the rest waits for
    // the next.
    enter(SessionState::PortalSuspended);
    deliver_queued_notifications(into);
    out.resume_client = true;
    return;
  }
  record_gathered(std::string_view(into).substr(answer_from));
  w.change_scatter() = {};
  if (in_transaction && !abandon) {
    enter(SessionState::Holding);
    out.resume_client = true;
    return;
  }
  if (in_transaction) {
    for (Link& o : w.links) {
      if (o.server) unlink(o.id, LinkOp::Kind::CleanAndRelease, out, "ROLLBACK");
    }
    w.change_tx() = {};
  }
  deliver_queued_notifications(into);
  work().pending_link = 0;
  enter(SessionState::Idle);
  out.resume_client = true;
  if (drain_requested_) close_with("57P01", drain_message(), out);
}

}  // namespace pgvalve::session
