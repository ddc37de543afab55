// Server answers: each message is matched with the request it answers (protocol/
// pending_responses), forwarded in place, dropped (answers to pgvalve's own requests) or joined
// by pgvalve's own (a ParseComplete for a statement the server already had). Command completions
// settle the notes that follow session settings through transactions and savepoints. After the
// last answer the session decides what happens to the server: released, kept, or asked first
// whether state pins it.
#include <algorithm>
#include <vector>

#include "protocol/lsn.h"
#include "protocol/wire.h"
#include "routing/sql_lexer.h"
#include "session/limits.h"
#include "session/session_internal.h"
#include "session/settings_sync.h"

namespace pgvalve::session {

namespace pr = protocol;
using Kind = pr::PendingResponse::Kind;

namespace {

// After a failed flight: what the server really holds of each statement whose Parse or Close by
// pgvalve it skipped. A request still on its way that parses or closes the same statement
// decides it (its Parse is preceded by a Close: Session::prepare_on_server). Otherwise the state
// before the skipped messages stands, which the first of them tells: a Parse was sent for a
// statement the server did not have; an eviction Close for one it had (its Parse answered); a
// Close sent while that was not known leaves it unknown.
void settle_skipped_statements(Link& l, std::vector<Workspace::Rare::SkippedStatement>& skipped,
                               std::vector<std::uint64_t>& pending) {
  if (skipped.empty()) return;
  // Sorted, not scanned per statement: a flight of thousands of Parses costs a sort. Each
  // statement's group keeps the order its messages were sent in.
  std::stable_sort(skipped.begin(), skipped.end(),
                   [](const auto& a, const auto& b) { return a.hash < b.hash; });
  pending.clear();
  for (std::size_t i = 0; i < l.pending.size(); ++i) {
    const pr::PendingResponse& p = l.pending.at(i);
    if (p.statement_hash != 0 && moves_statement(p)) pending.push_back(p.statement_hash);
  }
  std::sort(pending.begin(), pending.end());
  for (std::size_t i = 0; i < skipped.size(); ++i) {
    const std::uint64_t hash = skipped[i].hash;
    if (i > 0 && skipped[i - 1].hash == hash) continue;  // settled by its first
    if (std::binary_search(pending.begin(), pending.end(), hash)) continue;
    switch (skipped[i].action) {
      case kActionEvictClose:
        l.server->statements.add(hash, 0);
        break;
      case kActionRecloseStatement:
        l.server->statements.forget_uncertain(hash);
        break;
      default:
        l.server->statements.erase(hash);
        break;
    }
  }
}

// Messages pgvalve only needs the type of.
bool streamable(char tag) {
  return tag == 'D' || tag == 'd' || tag == 'N' || tag == 'T' || tag == 'A';
}

// What pgvalve asks a server that may hold session state: each a count, zero when none.
constexpr std::string_view kPinCheckSql =
    "SELECT (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = "
    "pg_catalog.pg_backend_pid()), (SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace "
    "= pg_catalog.pg_my_temp_schema()), (SELECT count(*) FROM pg_catalog.pg_proc WHERE "
    "pronamespace = pg_catalog.pg_my_temp_schema()), (SELECT count(*) FROM pg_catalog.pg_type "
    "WHERE typnamespace = pg_catalog.pg_my_temp_schema()), (SELECT count(*) FROM "
    "pg_catalog.pg_cursors WHERE "
    "is_holdable), (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql), "
    "(SELECT count(*) FROM pg_catalog.pg_listening_channels())";

const std::string& pin_check_message() {
  static const std::string message = pr::query_message(kPinCheckSql);
  return message;
}

}  // namespace

// The insert position, not pg_current_wal_lsn(): a commit with synchronous_commit = off may be
// only in the WAL buffers, past the written position, and a replica that replayed up to that
// would not have it.
const std::string& wal_position_message() {
  static const std::string message =
      pr::query_message("SELECT pg_catalog.pg_current_wal_insert_lsn()");
  return message;
}

const Actions& Session::on_server_data(LinkId id, std::string_view input, Clock::time_point now) {
  now_ = now;
  if (!linked(id) || state_ == SessionState::Closing) {
    Actions& out = link(id).actions;
    out.clear();
    out.consumed = input.size();
    return out;
  }
  Link& l = link(id);
  l.actions.clear();
  l.last_activity = now;
  return plan_server(l, id, input);
}

void Session::emit_synthetic_heads(Link& l) {
  // Never inside a message that is still passing through.
  if (l.stream_remaining > 0) return;
  while (!l.pending.empty() && l.pending.front().kind == Kind::Synthetic) {
    const std::size_t from = l.scratch.size();
    if (l.pending.front().action == kActionSynthParseComplete) pr::append_parse_complete(l.scratch);
    l.spans.push_back({true, from, l.scratch.size() - from});
    l.pending.pop();
  }
}

// What server_frame() does with a DataRow or CopyData while the client's request (not one of
// pgvalve's, which may read or gather its rows) waits for the rest of its answer: pass it on.
bool Session::rows_pass_through(const Link& l) const {
  return l.server && l.stream_remaining == 0 && !l.pending.empty() && !l.pending.front().internal &&
         l.pending.front().kind != Kind::Synthetic;
}

const Actions& Session::plan_server(Link& l, LinkId id, std::string_view input) {
  Actions& out = l.actions;
  l.scratch.clear();
  l.spans.clear();
  l.answered_earlier = l.answered;
  auto pass = [&](std::size_t offset, std::size_t size) {
    if (size == 0) return;
    if (!l.spans.empty() && !l.spans.back().scratch &&
        l.spans.back().offset + l.spans.back().size == offset) {
      l.spans.back().size += size;
    } else {
      l.spans.push_back({false, offset, size});
    }
  };
  std::size_t pos = 0;
  if (l.stream_remaining > 0) {
    const std::size_t n = std::min(l.stream_remaining, input.size());
    if (l.stream_forward) pass(0, n);
    l.stream_remaining -= n;
    pos = n;
  }
  bool saw_ready = false;
  while (pos < input.size() && l.stream_remaining == 0 && l.server) {
    const std::string_view rest = input.substr(pos);
    auto r = pr::decode_frame(rest, options_.max_message_bytes);
    if (r.status == pr::DecodeStatus::Invalid) {
      give_up_link(l, id,
                   "pgvalve: server " + l.server->name +
                       " sent an invalid message; the transaction was rolled back, run it again",
                   LinkOp::Kind::Close, out);
      pos = input.size();
      break;
    }
    if (r.status == pr::DecodeStatus::NeedMoreData) {
      // A large message pgvalve needs only the type of passes through as it arrives, so a
      // client asking for a huge row never makes pgvalve hold it whole.
      if (l.scatter_shard >= 0 && r.needed > options_.stream_server_messages_above) {
        // A row of a statement over several shards is held whole (to be merged, combined, or
        // until every shard described its rows); one this large is dropped as it arrives.
        fail_scatter("54000",
                     "pgvalve: a row of this statement is larger than pgvalve holds for a "
                     "statement over several shards; name one device_id to read it",
                     out);
        l.stream_remaining = r.needed - rest.size();
        l.stream_forward = false;
        pos = input.size();
        break;
      }
      if (r.needed > options_.stream_server_messages_above && streamable(rest[0])) {
        pr::Frame head;
        head.tag = rest[0];
        head.whole = rest;
        // pgvalve's own answers due before this message go first; then nothing may be added
        // inside it (what the message completes waits for its end).
        emit_synthetic_heads(l);
        l.stream_remaining = r.needed - rest.size();
        l.stream_forward = server_frame(l, head, pos, out, saw_ready);
        pos = input.size();
      }
      break;
    }
    server_frame(l, r.frame, pos, out, saw_ready);
    pos += r.frame.whole.size();
    if ((r.frame.tag == 'D' || r.frame.tag == 'd') && rows_pass_through(l)) {
      // The rows after it (or COPY data) in this read would each be passed on like this one:
      // only their lengths are read.
      const std::size_t run =
          pr::frame_run(input.substr(pos), r.frame.tag, options_.max_message_bytes, &l.data_rows);
      pass(pos, run);
      pos += run;
    }
  }
  if (!l.server) {
    // Unlinked while answering (a failed sync): the rest is of no use.
    pos = input.size();
    saw_ready = false;
  } else {
    emit_synthetic_heads(l);
    if (!l.busy() && l.stream_remaining == 0 && !work().rare().notifications.empty()) {
      // Notifications that came during the request (or inside a message passing through), now
      // that the client is between requests.
      const std::size_t from = l.scratch.size();
      deliver_queued_notifications(l.scratch);
      l.spans.push_back({true, from, l.scratch.size() - from});
    }
  }
  for (const Span& s : l.spans) {
    const char* base = s.scratch ? l.scratch.data() : input.data();
    out.to_client.push_back({base + s.offset, s.size});
  }
  out.consumed = pos;
  if (pipeline_full_ && l.pending.size() <= kMaxRequestsInFlight / 2) {
    pipeline_full_ = false;
    out.resume_client = true;
  }
  if (l.server && saw_ready) settle(l, id, out);
  return out;
}

// COPY FROM STDIN: the client's data is for this server until its CopyDone or CopyFail. What
// the client sent behind the COPY before the server asked for data, the server reads as COPY
// data too: it ignores a Sync or Flush there (their answers never come), and any other request
// would end the COPY with an error and never be answered. False when the client is refused.
bool Session::copy_started(Link& l, Actions& out) {
  emit_synthetic_heads(l);  // the front is then the COPY's own request
  bool ended = l.copy_end_sent;
  std::size_t ignored_syncs = 0;
  for (std::size_t i = 1; i < l.pending.size() && !ended; ++i) {
    const pr::PendingResponse& request = l.pending.at(i);
    if (request.after_copy_end) {
      ended = true;
    } else if (request.sync) {
      ++ignored_syncs;
    } else {
      refuse_request_during_copy(out);
      return false;
    }
  }
  if (ignored_syncs > 0) {
    l.pending.drop_behind_front(ignored_syncs);
    l.in_flight -= static_cast<int>(ignored_syncs);
    // An extended-protocol COPY still needs a Sync to end it.
    if (l.pending.front().kind != Kind::ReadyForQuery) l.open_extended = true;
  }
  l.copy_end_sent = false;
  l.copy_in = !ended;
  return true;
}

// A replica going down flushes what it held of the read it was running (PostgreSQL buffers a
// RowDescription until rows fill its buffer or the query ends) together with its goodbye: none of
// it has left pgvalve yet, so it is dropped and the read can still run elsewhere
// (retry_elsewhere) once the connection closes. True when it was.
bool Session::unsend_cut_read(Link& l) {
  if (l.answered_earlier || !l.answered || !work_) return false;
  l.answered = false;  // as it was before this step, if what it sent goes
  if (!retryable(l)) {
    l.answered = true;
    return false;
  }
  l.spans.clear();
  l.scratch.clear();
  return true;
}

// Decides what the client gets for one server message.
bool Session::server_frame(Link& l, const pr::Frame& f, std::size_t offset, Actions& out,
                           bool& saw_ready) {
  bool passed = false;
  auto pass = [&] {
    const std::size_t size = f.whole.size();
    passed = true;
    l.answered = true;
    if (!l.spans.empty() && !l.spans.back().scratch &&
        l.spans.back().offset + l.spans.back().size == offset) {
      l.spans.back().size += size;
    } else {
      l.spans.push_back({false, offset, size});
    }
  };
  switch (f.tag) {
    case 'G':
      if (l.scatter_shard < 0 && !copy_started(l, out)) return passed;
      break;
    case 'Z':
      l.copy_in = false;
      l.copy_answer_due = false;
      saw_ready = true;
      if (auto status = pr::read_ready_for_query(f)) l.server->tx_status = *status;
      if (l.in_flight > 0) --l.in_flight;
      break;
    case 'S':
      // Reported settings follow the server. The client hears of its session's settings from
      // report_settings() before its ReadyForQuery; other values (is_superuser, in_hot_standby)
      // are the server's and pass as they come.
      if (auto ps = pr::read_parameter_status(f)) {
        l.server->settings.set(ps->name, ps->value, true);
        if (is_synced_setting(ps->name)) {
          client_settings_.set(ps->name, ps->value, true);
          return passed;
        }
      }
      if (logged_in_) pass();
      return passed;
    default:
      break;
  }
  emit_synthetic_heads(l);
  // A shard's server waiting for the commit decision sends nothing the client asked for (a
  // FATAL as it goes down is followed by on_server_lost); nor does a part of the client's
  // transaction that answered while the others still gather: nothing may come between the
  // gathered answer's messages.
  if (l.pending.empty() && (l.scatter_shard >= 0 || scattering())) return passed;
  if (f.tag == 'E') {
    // A server going away (postmaster gone, shutdown, terminated backend) says so with a FATAL
    // error and closes, also while its client sits in a transaction between requests. That
    // ends the server connection, not the client's: the client gets 08006 when the close
    // arrives (on_server_lost), or its read runs elsewhere, and keeps its connection.
    // Forwarded, a FATAL would tell drivers to drop theirs. A client whose session the server
    // held (session mode, a pinned client) is closed then, with the server's words: passed on
    // now, the FATAL would be read as the answer to its next request.
    if (auto e = pr::read_error_response(f); e && e->severity == "FATAL") {
      Workspace::Rare& rare = work().change_rare();
      rare.server_goodbye.assign(e->message.substr(0, Workspace::Rare::kMaxGoodbyeBytes));
      rare.server_goodbye_sqlstate.assign(e->sqlstate.substr(0, 5));
      if (options_.mode != config::PoolMode::Session) unsend_cut_read(l);
      return passed;
    }
  }
  if (f.tag == 'N' && l.route.kind == routing::Route::Kind::Replica &&
      options_.mode != config::PoolMode::Session) {
    // An immediate shutdown or a crash says goodbye with a WARNING (57P01, 57P02) instead, and
    // the process exits. Before any of the read's answer (a backend that was between requests
    // when the shutdown came, and had not read this one yet) it is dropped too: passed on as a
    // notice, it would count as the read's answer, and the read could not run elsewhere.
    if (auto e = pr::read_error_response(f); e && e->sqlstate.starts_with("57P")) {
      if (!l.answered || unsend_cut_read(l)) {
        work().change_rare().server_goodbye.assign(
            e->message.substr(0, Workspace::Rare::kMaxGoodbyeBytes));
        return passed;
      }
    }
  }
  if (l.pending.empty()) {
    pass();  // a notice or notification between requests
    return passed;
  }
  auto& head = l.pending.front();
  if (head.internal && is_scatter_action(head.action)) {
    // A shard's part of a statement over several shards: gathered, sent to the client at the end.
    scatter_frame(l, f, out);
    return passed;
  }
  if (head.internal && is_tx_action(head.action) && f.tag != 'Z') {
    tx_frame(l, f);
    return passed;
  }
  switch (pr::match_response(head.kind, f.tag)) {
    case pr::ResponseMatch::Async:
      if (!head.internal || f.tag == 'A') pass();
      return passed;
    case pr::ResponseMatch::Intermediate:
      if (f.tag == 'E') head.failed = true;
      if (head.internal) {
        if (head.action == kActionSync && f.tag == 'E') {
          if (auto e = pr::read_error_response(f)) {
            Workspace::Rare& rare = work().change_rare();
            rare.sync_error_sqlstate.assign(e->sqlstate);
            rare.sync_error.assign(e->message);
          }
        }
        if (head.action == kActionPinCheck && f.tag == 'D') read_pin_check(l, f);
        if (head.action == kActionWalPosition && f.tag == 'D') read_wal_position(l, f);
        return passed;
      }
      if (head.action == kActionRaised && f.tag == 'E') {
        pass_raised_error(l, f);
        return passed;
      }
      if ((head.action == kActionEmptyAsTag || head.action == kActionDeallocate) && f.tag == 'I') {
        answer_empty_query(l, head);
        return passed;
      }
      if (head.action == kActionShapeCheck) return passed;  // pgvalve's own Describe
      if (f.tag == 'C' && head.note_count > 0) {
        settle_statement(l, head, pr::read_command_complete(f).value_or(""), out);
      }
      if (head.fingerprint) note_answer(l, f);
      pass();
      return passed;
    case pr::ResponseMatch::Completes:
      if (head.action == kActionFirstParse && f.tag == '1' && statements_) {
        statements_->confirm(head.statement_hash);
      }
      if (head.action == kActionClientClose && f.tag == '3' && statements_) {
        statement_bytes_ -= statements_->erase_closing(head.statement_hash);
      }
      if (head.action == kActionNoteShape || head.action == kActionShapeCheck) {
        note_shape(l, head, f);
      }
      if (f.tag == 'C' && head.note_count > 0) {
        settle_statement(l, head, pr::read_command_complete(f).value_or(""), out);
      }
      if (head.fingerprint) {
        note_answer(l, f);
        if (f.tag == 's') {
          suspend_execution(l, head);
        } else {
          record_execution(l, head, head.failed);
        }
      }
      // Whatever statement ended (also one not counted, or pgvalve's own), the next answer on
      // this server is timed from here, not from when it was sent.
      if (f.tag == 'C' || f.tag == 'E' || f.tag == 's' || f.tag == 'I') l.answered_at = now_;
      l.rows = 0;
      l.data_rows = 0;
      if (!head.swallow && !head.internal) {
        if (f.tag == 'Z') {
          // What the request did to settings is settled first (complete_front would, after
          // the ReadyForQuery), so that the client hears of it before.
          end_request(l, head, l.server->tx_status);
          const std::size_t from = l.scratch.size();
          report_settings(l.scratch);
          if (l.scratch.size() > from) l.spans.push_back({true, from, l.scratch.size() - from});
        }
        if ((head.action == kActionEmptyAsTag || head.action == kActionDeallocate) &&
            f.tag == 'I') {
          answer_empty_query(l, head);
        } else {
          pass();
        }
      }
      complete_front(l, f.tag, out);
      return passed;
    case pr::ResponseMatch::Error:
      // The server skips what follows up to the Sync, a Parse of the unnamed statement among
      // them: whose unnamed statement it holds is no longer known.
      l.server->unnamed_statement_of = 0;
      if (head.action == kActionFirstParse && statements_) {
        // PostgreSQL keeps no statement whose Parse failed for what it says (a syntax error, a
        // missing table: class 42, or a bad constant: class 22): neither does the client, which
        // may prepare another under the name. A failure of the moment (an aborted transaction,
        // a lock timeout, a cancel) leaves it to be prepared again.
        const auto e = pr::read_error_response(f);
        if (e && (e->sqlstate.starts_with("42") || e->sqlstate.starts_with("22"))) {
          statement_bytes_ -= statements_->forget_unconfirmed(head.statement_hash);
        }
      }
      if ((head.kind == Kind::BindComplete || head.action == kActionNoteShape ||
           head.action == kActionShapeCheck) &&
          head.statement_hash != 0) {
        // A table the shared statement reads changed its result type since it was prepared (its
        // Bind or Describe says so): the statement is prepared again, here and on every other
        // server, at its next use by a client that prepared it after now; for those that
        // prepared it before, each Bind fails as on PostgreSQL (plan_bind) until they prepare it
        // again.
        const auto e = pr::read_error_response(f);
        if (e && e->sqlstate == "0A000" && e->message == kChangedResultType) {
          l.server->statements.forget_uncertain(head.statement_hash);
          // Not for a client pinned to its server: its own temporary table of the name may be
          // what changed, which is no other client's.
          if (!pinned_) {
            workspaces_->statement_changed(statement_change_key(head.statement_hash),
                                           now_.time_since_epoch().count());
          } else if (statements_) {
            statements_->stale(head.statement_hash);
          }
        } else if (e && e->sqlstate == "26000") {
          // Gone from the server though pgvalve prepared it there (dropped by a name pgvalve
          // did not see coming: a DEALLOCATE inside a longer query): prepared again at its next
          // use instead of failing every client's Bind of it on this server.
          l.server->statements.erase(head.statement_hash);
        }
      }
      if (head.action == kActionRaised) {
        pass_raised_error(l, f);
      } else if (!head.internal) {
        pass();
      }
      if (recorder_) note_answer(l, f);  // its SQLSTATE class, for the counted request it ends
      // An extended-protocol message failed (a Query's error is Intermediate): the server
      // ignores every message up to the next Sync, a simple Query or a function call among them
      // included, and none gets an answer.
      {
        // The Parses and eviction Closes the server skipped: the statement set planned them as
        // done.
        std::vector<Workspace::Rare::SkippedStatement>& skipped =
            work().change_rare().skipped_statements;
        skipped.clear();
        // The first statement among them is the one that failed (in its Parse, Bind or
        // Execute); the server skipped the others, which ran nothing and are not counted.
        bool failed_statement = true;
        while (!l.pending.empty() &&
               !(l.pending.front().kind == Kind::ReadyForQuery && l.pending.front().sync)) {
          auto& dropped = l.pending.front();
          if (failed_statement && dropped.fingerprint) {
            record_execution(l, dropped, true);
            failed_statement = false;
          }
          if (dropped.kind == Kind::ReadyForQuery && l.in_flight > 0) --l.in_flight;
          l.rows = 0;
          l.data_rows = 0;
          if (dropped.statement_hash != 0 &&
              (dropped.action == kActionEvictClose || dropped.action == kActionRecloseStatement ||
               dropped.kind == Kind::ParseComplete)) {
            skipped.push_back({dropped.statement_hash, dropped.kind == Kind::ParseComplete
                                                           ? std::uint8_t{0}
                                                           : dropped.action});
          }
          if (dropped.action == kActionClientClose && statements_) {
            statements_->closed_skipped(dropped.statement_hash);
          }
          end_request(l, dropped, 'E');
          l.pending.pop();
        }
        settle_skipped_statements(l, skipped, work().change_rare().pending_statements);
        if (l.pending.empty()) l.skipping_until_sync = true;
      }
      if (!l.pending.empty()) l.pending.front().failed = true;
      return passed;
  }
  return passed;
}

void Session::pass_raised_error(Link& l, const pr::Frame& f) {
  auto e = pr::read_error_response(f);
  if (!e) return;
  // asyncpg and PgJDBC know this error by the routine PostgreSQL raises it in, not by its words.
  if (e->sqlstate == "0A000" && e->message == kChangedResultType) {
    e->routine = kChangedResultTypeRoutine;
  }
  if (recorder_) recorder_->stats->count_error(e->sqlstate);
  const std::size_t from = l.scratch.size();
  pr::append_error_response(l.scratch, *e);
  l.spans.push_back({true, from, l.scratch.size() - from});
}

void Session::complete_front(Link& l, char tag, Actions& out) {
  auto head = l.pending.front();
  l.pending.pop();
  if (tag == 'Z') {
    end_request(l, head, l.server->tx_status);
    l.answered_at = now_;  // what the server was asked before is done (statistics)
    // Its portals ended with it.
    if (l.server->tx_status == 'I') end_suspended_portal(l);
    // A transaction a client request began ended (not one of a refusal pgvalve had the server
    // raise, which ran nothing of the client's).
    if (recorder_ && !head.internal && l.server->tx_status == 'I' &&
        l.transaction_started != Clock::time_point{}) {
      count_transaction(static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::microseconds>(now_ - l.transaction_started)
              .count()));
      l.transaction_started = {};
    }
    if (head.internal && head.action == kActionSync) finish_sync(l, !head.failed, out);
    if (head.internal && head.action == kActionBegin) finish_begin(l, !head.failed, out);
    if (head.internal && head.action == kActionPinCheck) finish_pin_check(l, head.failed, out);
    if (head.internal && head.action == kActionHop) finish_hop(l, head.failed);
    if (head.internal && head.action == kActionShapeCheck) finish_shape_check(l, head.failed, out);
    if (head.internal && head.action == kActionImplicitEnd) {
      end_parts(true, {}, out, true);
      return;
    }
    if (head.internal && is_scatter_action(head.action)) {
      const std::size_t from = l.scratch.size();
      scatter_answered(l, head.action, l.scratch, out);
      if (l.scratch.size() > from) l.spans.push_back({true, from, l.scratch.size() - from});
      return;
    }
    if (head.internal && is_tx_action(head.action)) {
      const std::size_t from = l.scratch.size();
      tx_answered(l, head.action, head.failed, l.scratch, out);
      if (l.scratch.size() > from) l.spans.push_back({true, from, l.scratch.size() - from});
      return;
    }
  }
  if (l.pending.empty()) {
    l.notes.clear();
    l.tags.clear();
    l.pending_setting_notes = 0;
  }
  if (l.server) emit_synthetic_heads(l);
}

// ---- Following settings through transactions ------------------------------------------------

// The empty query standing in for a statement pgvalve answers (kActionEmptyAsTag,
// kActionDeallocate) ran: the client gets its statement's CommandComplete.
void Session::answer_empty_query(Link& l, const pr::PendingResponse& head) {
  std::string_view tag;
  if (head.action == kActionDeallocate) {
    const Note& note = l.notes[head.note];
    // Not if a Parse pipelined behind the DEALLOCATE defined the name again.
    const pr::PreparedStatement* stmt = statements_ ? statements_->find(note.name) : nullptr;
    if (stmt && stmt->defined == note.statements_before) forget_statement(note.name);
    tag = "DEALLOCATE";
  } else {
    tag = l.tags[head.note];
  }
  const std::size_t from = l.scratch.size();
  pr::append_command_complete(l.scratch, tag);
  l.spans.push_back({true, from, l.scratch.size() - from});
}

// A statement of `request` completed with `tag`: its note is settled.
void Session::settle_statement(Link& l, pr::PendingResponse& request, std::string_view tag,
                               Actions& out) {
  if (request.notes_done >= request.note_count) return;
  Note& note = l.notes[request.note + request.notes_done];
  ++request.notes_done;
  Workspace& w = work();
  if (note.bound) note.kind = NoteKind::Unknown;  // never bound (a Query cannot bind $n)
  switch (note.kind) {
    case NoteKind::Set:
    case NoteKind::Reset:
    case NoteKind::ResetAll:
    case NoteKind::Discard:
      // Transactional: takes effect when the transaction commits.
      if (l.pending_setting_notes > 0) --l.pending_setting_notes;
      add_tx_note(std::move(note));
      break;
    case NoteKind::Listen:
    case NoteKind::Unlisten:
    case NoteKind::UnlistenAll:
      add_tx_note(std::move(note));  // takes effect when the transaction commits
      break;
    case NoteKind::Unknown:
      l.server->settings_unknown = true;
      break;
    case NoteKind::DeallocateAll:
      // Not transactional: the server forgot every prepared statement, the client too.
      forget_statements_before(note.statements_before, l);
      if (extras_) extras_->named_statements.clear();
      break;
    case NoteKind::Deallocate:  // forgotten when its Execute was planned; never a pending note
      break;
    case NoteKind::Commit:
      if (tag == "COMMIT") {
        commit_notes(l, out);
      } else {
        drop_notes();  // COMMIT of a failed transaction answers ROLLBACK
      }
      break;
    case NoteKind::Rollback:
      drop_notes();
      break;
    case NoteKind::Savepoint: {
      Workspace::Rare& rare = w.change_rare();
      rare.savepoints.emplace_back(note.name, rare.tx_notes.size());
      break;
    }
    case NoteKind::Release: {
      auto& savepoints = w.change_rare().savepoints;
      for (auto it = savepoints.rbegin(); it != savepoints.rend(); ++it) {
        if (it->first == note.name) {
          savepoints.erase(std::next(it).base(), savepoints.end());
          break;
        }
      }
      break;
    }
    case NoteKind::RollbackTo: {
      Workspace::Rare& rare = w.change_rare();
      std::size_t keep = 0;  // a savepoint pgvalve did not see predates every note
      for (auto it = rare.savepoints.rbegin(); it != rare.savepoints.rend(); ++it) {
        if (it->first == note.name) {
          keep = it->second;
          rare.savepoints.erase(it.base(), rare.savepoints.end());
          break;
        }
      }
      if (keep < rare.tx_notes.size()) rare.tx_notes.resize(keep);
      break;
    }
    case NoteKind::None:
      break;
  }
}

// The request is answered (ReadyForQuery with `tx_status`, or skipped after an error): notes of
// statements that never completed are dropped; at the end of a transaction its notes apply if
// it committed.
void Session::end_request(Link& l, pr::PendingResponse& request, char tx_status) {
  for (std::uint16_t i = request.notes_done; i < request.note_count; ++i) {
    const auto k = l.notes[request.note + i].kind;
    if ((k == NoteKind::Set || k == NoteKind::Reset || k == NoteKind::ResetAll ||
         k == NoteKind::Discard) &&
        l.pending_setting_notes > 0) {
      --l.pending_setting_notes;
    }
  }
  request.notes_done = request.note_count;
  if (tx_status != 'I' || request.kind != Kind::ReadyForQuery || request.internal) return;
  Workspace& w = work();
  if (!w.rare().tx_notes.empty()) {
    if (request.failed) {
      drop_notes();
    } else {
      commit_notes(l, l.actions);
    }
  }
  if (!w.rare().savepoints.empty()) w.change_rare().savepoints.clear();
  // A transaction's end closes its portals.
  if (!w.rare().named_portals.empty()) w.change_rare().named_portals.clear();
}

// Keeps what a transaction did to settings in as few notes as say the same: within one savepoint
// level a later SET or RESET of a name replaces the earlier one, and RESET ALL replaces all. A
// transaction repeating `SET x = ...` thus holds one note, not one per statement.
void Session::add_tx_note(Note&& note) {
  Workspace& w = work();
  auto& notes = w.change_rare().tx_notes;
  if (is_listen_note(note.kind)) {
    notes.push_back(std::move(note));
    return;
  }
  const std::size_t level = w.rare().savepoints.empty() ? 0 : w.rare().savepoints.back().second;
  if (note.kind == NoteKind::ResetAll || note.kind == NoteKind::Discard) {
    // The channels' notes stay: RESET ALL does not unlisten.
    std::size_t kept = level;
    for (std::size_t i = level; i < notes.size(); ++i) {
      if (is_listen_note(notes[i].kind)) notes[kept++] = std::move(notes[i]);
    }
    notes.resize(kept);
    notes.push_back(std::move(note));
    return;
  }
  bool named_before = false;
  for (std::size_t i = notes.size(); i > 0; --i) {
    Note& earlier = notes[i - 1];
    if (earlier.kind == NoteKind::ResetAll || earlier.kind == NoteKind::Discard) break;
    if (is_listen_note(earlier.kind) || earlier.name != note.name) continue;
    if (i - 1 >= level) {
      earlier = std::move(note);
      return;
    }
    named_before = true;
    break;
  }
  // RESET of a name that neither the client nor this transaction set changes nothing.
  if (note.kind == NoteKind::Reset && !named_before && !client_settings_.find(note.name)) return;
  notes.push_back(std::move(note));
}

void Session::commit_notes(Link& l, Actions& out) {
  Workspace& w = work();
  if (w.rare().tx_notes.empty()) return;
  for (const Note& note : w.rare().tx_notes)
    apply_note(note, l, out);
  w.change_rare().tx_notes.clear();
  note_default_isolation();
}

void Session::note_default_isolation() {
  const Setting* s = client_settings_.find("default_transaction_isolation");
  std::string_view value = s ? std::string_view(s->value) : std::string_view{};
  // As written: 'serializable', serializable, "SERIALIZABLE".
  while (!value.empty() && (value.front() == '\'' || value.front() == '"' || value.front() == ' '))
    value.remove_prefix(1);
  while (!value.empty() && (value.back() == '\'' || value.back() == '"' || value.back() == ' '))
    value.remove_suffix(1);
  serializable_default_ = routing::iequals(value, "serializable");
}

void Session::drop_notes() {
  Workspace& w = work();
  if (!w.rare().tx_notes.empty()) w.change_rare().tx_notes.clear();
}

// The transaction's end without a commit (its server is gone or released): its notes and
// savepoints go.
void Session::forget_tx_notes() {
  if (!work_) return;
  drop_notes();
  if (!work_->rare().savepoints.empty()) work_->change_rare().savepoints.clear();
}

void Session::restore_startup_settings() {
  if (!startup_settings_) return;
  for (const auto& s : startup_settings_->all())
    client_settings_.set(s.name, s.value, s.reported, s.form);
}

void Session::apply_note(const Note& note, Link& l, Actions& out) {
  ServerState& server = *l.server;
  switch (note.kind) {
    case NoteKind::Set:
      // Reported settings follow ParameterStatus; the rest are remembered as written.
      if (is_synced_setting(note.name)) return;
      client_settings_.set(note.name, note.value, false, note.form);
      server.settings.set(note.name, note.value, false, note.form);
      return;
    case NoteKind::Reset:
      if (!is_synced_setting(note.name)) server.settings.erase(note.name);
      if (const Setting* s = startup_settings_ ? startup_settings_->find(note.name) : nullptr) {
        client_settings_.set(s->name, s->value, s->reported, s->form);
      } else {
        client_settings_.erase(note.name);
      }
      return;
    case NoteKind::ResetAll: {
      // RESET ALL keeps the role and the session authorization.
      auto kept = [](const Settings& from, Settings& to) {
        for (const char* name : {"role", "session_authorization"}) {
          if (const Setting* s = from.find(name)) to.set(s->name, s->value, false, s->form);
        }
      };
      Settings server_kept;
      Settings client_kept;
      kept(server.settings, server_kept);
      kept(client_settings_, client_kept);
      server.settings.keep_reported_only();
      for (const auto& s : server_kept.all())
        server.settings.set(s.name, s.value, false, s.form);
      client_settings_.clear();
      for (const auto& s : client_kept.all())
        client_settings_.set(s.name, s.value, false, s.form);
      restore_startup_settings();
      return;
    }
    case NoteKind::Discard:
      server.settings.keep_reported_only();
      server.settings_unknown = false;
      client_settings_.clear();
      restore_startup_settings();
      forget_statements_before(note.statements_before, l);
      if (extras_) {
        extras_->server_listens.clear();
        extras_->named_statements.clear();
      }
      if (!extras().listen_channels.empty()) {
        extras_->listen_channels.clear();
        out.hub.kind = HubRequest::Kind::UnlistenAll;
      }
      return;
    case NoteKind::Listen:
    case NoteKind::Unlisten: {
      // One place delivers each channel: after a committed LISTEN on its own server, that
      // server; after UNLISTEN, nobody.
      auto& channels = extras_to_change().listen_channels;
      const auto it = std::find(channels.begin(), channels.end(), note.name);
      if (it == channels.end()) return;
      channels.erase(it);
      out.hub.dropped.push_back(note.name);
      return;
    }
    case NoteKind::UnlistenAll:
      if (!extras().listen_channels.empty()) {
        for (auto& channel : extras_->listen_channels)
          out.hub.dropped.push_back(std::move(channel));
        extras_->listen_channels.clear();
      }
      return;
    default:
      return;
  }
}

// ---- After the last answer ------------------------------------------------------------------

// What happens to a link once a request is answered: nothing while more is outstanding; at the
// end of a transaction the server goes back to the pool unless the pool mode, pinned state or a
// waiting request keeps it.
void Session::settle(Link& l, LinkId id, Actions& out) {
  if (l.syncing || l.reserved || state_ == SessionState::Closing) return;
  if (l.scatter_shard >= 0) return;  // goes when its part is answered (end_scatter_link)
  if (scattering()) return;          // a part of the client's transaction: the gather decides
  if (work().tx().ending) return;    // goes once the transaction's end is decided
  if (work().tx().joining) {
    // Another part answered while a shard joins the transaction (its server sent what nobody
    // asked for): the join's end decides what comes next, unless that part's transaction ended.
    if (l.server->tx_status == 'I') {
      abandon_shard_transaction(
          "pgvalve: a shard's part of this transaction ended on its own; the transaction was "
          "rolled back on the other shards",
          out);
      // (While the joining shard's checkout is under way, the session still waits for it.)
      if (state_ != SessionState::WaitingForServer) enter_between_requests();
    }
    return;
  }
  if (l.busy()) {
    enter(SessionState::Active);
    return;
  }
  if (input_waits_for_link_ || close_when_answered_) {
    input_waits_for_link_ = false;
    out.resume_client = true;  // (the Terminate behind a COPY: once between requests)
  }
  if (l.server->tx_status != 'I') {
    enter(SessionState::Holding);
    return;
  }
  if (router_.sharded()) {
    // Read first: the everyday request leaves nothing here for clear() to reset.
    const auto& tx = work().tx();
    // A part of a transaction over several shards ended on its own (its server ended it): the
    // others cannot commit without it.
    if (tx.spans || tx.joining) {
      abandon_shard_transaction(
          "pgvalve: a shard's part of this transaction ended on its own; the transaction was "
          "rolled back on the other shards",
          out);
      enter_between_requests();
      return;
    }
    if (!tx.begin.empty() || !tx.refusal.empty() || tx.begin_too_long || tx.implicit) {
      work().change_tx() = {};
    }
  }
  const bool translate = options_.mode != config::PoolMode::Session;
  // With pin_session_state false the statements that pin are refused; what still asks for a
  // check (a function called by OID) pins if it left state: losing it would be worse.
  if (translate && l.check_pins) {
    l.check_pins = false;
    start_pin_check(l, id, out);
    enter(SessionState::Active);
    return;
  }
  if (l.may_write) {
    l.may_write = false;
    if (options_.read_your_writes == config::ReadYourWrites::Time) last_write_at_ = now_;
    if (options_.read_your_writes == config::ReadYourWrites::Lsn) {
      start_wal_position(l, id, out);
      enter(SessionState::Active);
      return;
    }
  }
  // A session-mode client keeps its own server (link 0); a replica it borrowed for a read goes
  // back.
  if ((!translate && id == 0) || pinned_) {
    enter(SessionState::Holding);
    if (drain_requested_) close_with("57P01", drain_message(), out);
    return;
  }
  unlink(id, LinkOp::Kind::Release, out);
  enter_between_requests();
  if (drain_requested_) close_with("57P01", drain_message(), out);
}

// pgvalve's own simple query on the link, answered to itself (`action` says how).
void Session::ask_server(Link& l, LinkId id, const std::string& message, std::uint8_t action,
                         Actions& out) {
  out.to_server.push_back({message.data(), message.size()});
  out.server_link = id;
  expect_own_answer(l, action);
}

void Session::expect_own_answer(Link& l, std::uint8_t action) {
  l.server->unnamed_statement_of = 0;  // pgvalve's own simple query ends the unnamed statement
  pr::PendingResponse ask{Kind::ReadyForQuery};
  ask.internal = true;
  ask.action = action;
  l.pending.push(ask);
  ++l.in_flight;
}

void Session::start_pin_check(Link& l, LinkId id, Actions& out) {
  ask_server(l, id, pin_check_message(), kActionPinCheck, out);
  l.pin_check_holds = false;
}

void Session::read_pin_check(Link& l, const pr::Frame& f) {
  pr::Cursor c(f.body);
  auto columns = c.u16();
  if (!columns) return;
  for (std::uint16_t i = 0; i < *columns; ++i) {
    auto len = c.i32();
    if (!len || *len < 0) return;
    auto value = c.bytes(static_cast<std::size_t>(*len));
    if (!value) return;
    if (*value != "0") l.pin_check_holds = true;
  }
}

void Session::finish_pin_check(Link& l, bool failed, Actions& out) {
  // A failed check (it should not fail) keeps the server: holding it is the safe side.
  const bool holds = failed || l.pin_check_holds;
  if (holds && !pinned_) {
    pinned_ = true;
    out.pinned_change += 1;
  } else if (!holds && pinned_) {
    pinned_ = false;
    out.pinned_change -= 1;
  }
  if (!holds && extras_) extras_->server_listens.clear();
}

void Session::start_wal_position(Link& l, LinkId id, Actions& out) {
  ask_server(l, id, wal_position_message(), kActionWalPosition, out);
}

void Session::read_wal_position(const Link& l, const pr::Frame& f) {
  pr::Cursor c(f.body);
  auto columns = c.u16();
  if (!columns || *columns != 1) return;
  auto len = c.i32();
  if (!len || *len < 0) return;
  auto value = c.bytes(static_cast<std::size_t>(*len));
  pr::Lsn lsn = 0;
  if (!value || !pr::parse_lsn(*value, lsn)) return;
  // WAL positions of different shards' clusters are not comparable: one mark per shard.
  const std::size_t shard = l.route.shard;
  auto& lsns = extras_to_change().write_lsns;
  if (shard >= lsns.size()) lsns.resize(shard + 1, 0);
  // A position learnt replaces an unknown one: the primary that answers has all it holds of
  // the write whose position was lost (or it never survived a failover).
  if (lsn > lsns[shard] || lsns[shard] == kUnknownWriteLsn) lsns[shard] = lsn;
}

}  // namespace pgvalve::session
