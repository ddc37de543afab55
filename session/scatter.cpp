#include "session/scatter.h"

#include "protocol/messages.h"
#include "protocol/wire.h"
#include "routing/sql_lexer.h"
#include "routing/statement.h"
#include "session/two_phase.h"
#include "stats/query_stats.h"

namespace pgvalve::session {

namespace pr = protocol;

namespace {

// Notices of the first shard that reach the client; more are dropped.
constexpr std::size_t kMaxNoticeBytes = 64 * 1024;

// PostgreSQL's identifiers are at most NAMEDATALEN - 1 bytes; a kept portal's name is no longer.
constexpr std::size_t kMaxPortalName = 63;

// A kept portal's row limit before its first Execute: no row may go.
constexpr std::int64_t kNotExecuted = -1;

// Whether `sql` is a statement that never returns rows (a write without RETURNING, a schema
// change): an Execute row limit, which PgJDBC sends with every executeUpdate(), changes nothing
// about how it runs, so it need not be refused.
bool returns_no_rows(std::string_view sql) {
  switch (routing::classify(sql).kind) {
    case routing::StatementKind::Create:
    case routing::StatementKind::Alter:
    case routing::StatementKind::Drop:
      return true;
    case routing::StatementKind::Insert:
    case routing::StatementKind::Update:
    case routing::StatementKind::Delete: {
      routing::SqlLexer lexer(sql, 0, routing::SqlLexer::Keywords::NotLookedUp);
      routing::Token token;
      while (lexer.next(token)) {
        if (token.is_word("returning")) return false;
      }
      return true;
    }
    default:
      return false;
  }
}

}  // namespace

std::string Scatter::start(std::string_view frames, std::string_view sql,
                           std::string_view param_types, const routing::ScatterPlan& plan,
                           const routing::ShardStatement& statement, int shards,
                           std::size_t max_bytes, std::size_t max_message_bytes, bool two_phase,
                           const std::vector<Part>* parts, bool write,
                           const routing::TextOrderSlot* text_order, bool may_keep_portal) {
  const std::string_view text = statement.sql.empty() ? sql : std::string_view(statement.sql);
  std::string_view bind_rest;
  std::string_view bound_portal;
  std::int64_t fetch_limit = 0;
  bool keep_portal = false;
  // A read's named portal that may be kept for the client's later Executes.
  auto keepable = [&](std::string_view portal) {
    return may_keep_portal && !portal.empty() && portal.size() <= kMaxPortalName && !write &&
           !two_phase;
  };
  bool synced = false;
  pr::FrameReader reader(frames, max_message_bytes);
  for (pr::Frame f; reader.next(f);) {
    // Closes of portals may come first (PgJDBC closes a finished cursor's with its next query).
    const bool first = steps_.find_first_not_of('3') == std::string::npos;
    auto once = [&](char step) { return steps_.find(step) == std::string::npos; };
    switch (f.tag) {
      case 'Q':
        if (!first) return "a Query inside an extended-protocol request";
        steps_.push_back('Q');
        synced = true;
        break;
      case 'P':
        if (!first) return "a Parse after other messages of the request";
        steps_.push_back('P');
        break;
      case 'D': {
        const auto d = pr::read_describe(f);
        const char step = d && d->kind == 'S' ? 'S' : 'D';
        if (!d || !once(step)) return "more than one Describe of a kind in one request";
        steps_.push_back(step);
        break;
      }
      case 'B': {
        const auto b = pr::read_bind_head(f);
        if (!b || !once('B')) return "more than one Bind in one request";
        bind_rest = b->rest;
        bound_portal = b->portal;
        steps_.push_back('B');
        break;
      }
      case 'E': {
        const auto e = pr::read_execute(f);
        if (!e || !once('E') || once('B')) return "an Execute without its own Bind";
        // A read's row limit (asyncpg's fetchrow()) is kept for the gathered rows; a write's
        // RETURNING rows would need the portal kept. (Below zero PostgreSQL reads none.)
        if (e->max_rows > 0 && !returns_no_rows(text)) {
          if (write || two_phase) {
            return "fetching rows in parts (Execute with a row limit) of a write's RETURNING is "
                   "not done across shards; fetch them all at once";
          }
          fetch_limit = e->max_rows;
          keep_portal = keepable(e->portal);
          if (keep_portal) portal_.assign(e->portal);
        }
        steps_.push_back('E');
        break;
      }
      case 'S':
        synced = true;
        break;
      case 'C': {
        // No shard holds a portal of a read over several shards, nor one of a transaction
        // whose BEGIN pgvalve holds: answered without them, as PostgreSQL closes a portal it
        // does not have. (One a transaction's server holds ends with the transaction.)
        const auto c = pr::read_close(f);
        if (!c || c->kind != 'P' || !first) {
          return "a Close other than of portals before the statement";
        }
        steps_.push_back('3');
        break;
      }
      default:
        return "this request has messages other than Close, Parse, Bind, Describe, Execute and "
               "Sync";
    }
    if (synced) break;
  }
  if (!synced) return "the request has no Sync";
  if (steps_ != "Q" && steps_.find('B') != std::string::npos &&
      steps_.find('E') == std::string::npos && keepable(bound_portal)) {
    // A portal bound now and executed by later requests (asyncpg's Cursor.fetch()): the
    // shards run it now, and its rows wait for the first Execute.
    keep_portal = true;
    fetch_limit = kNotExecuted;
    portal_.assign(bound_portal);
  }
  if (steps_ != "Q" && (steps_.find('B') == std::string::npos ||
                        (steps_.find('E') == std::string::npos && !keep_portal))) {
    return "the request does not execute a statement";
  }
  write_ = write || two_phase;
  // Averages add a count column per average to what each shard answers (ScatterPlan::Average).
  std::string counted_rest;
  if (!plan.averages.empty() && !bind_rest.empty()) {
    if (!pr::bind_rest_with_extra_columns(bind_rest, plan.extra_columns, counted_rest)) {
      return "the Bind message is malformed";
    }
    bind_rest = counted_rest;
  }
  const bool statement_described = steps_.find('S') != std::string::npos;
  auto build = [&](std::string& out, std::string_view statement_text, std::string_view types,
                   std::string_view rest, bool decider) {
    // The hint comment is pgvalve's, not PostgreSQL's.
    std::string unhinted;
    std::string_view text = statement_text;
    if (const routing::HintComment hint = routing::find_leading_hint(text); hint.end != 0) {
      unhinted.assign(text.substr(0, hint.begin)).append(text.substr(hint.end));
      text = unhinted;
    }
    if (two_phase) pr::append_query(out, "BEGIN");
    if (two_phase && decider) pr::append_query(out, kXidQuery);
    if (steps_ == "Q") {
      pr::append_query(out, text);
    } else {
      pr::append_parse_raw(out, "", text, types);
      if (statement_described) pr::append_describe(out, 'S', "");
      pr::append_bind(out, "", "", rest);
      pr::append_describe(out, 'P', "");
      pr::append_execute(out, "", 0);
      pr::append_sync(out);
    }
  };
  if (parts != nullptr) {
    for (const Part& part : *parts) {
      requests_.emplace_back();
      build(requests_.back(), part.sql, part.param_types, part.bind_rest, requests_.size() == 1);
    }
  } else {
    build(request_, text, param_types, bind_rest, false);
    if (two_phase) build(decider_request_, text, param_types, bind_rest, true);
  }
  gather_.emplace(plan, shards, statement.limit, statement.offset, max_bytes, !write_, text_order);
  if (keep_portal) {
    gather_->keep_portal(fetch_limit);
  } else {
    gather_->set_fetch_limit(fetch_limit);
  }
  rows_.assign(static_cast<std::size_t>(shards), 0);
  unended_rows_.assign(static_cast<std::size_t>(shards), 0);
  bound_.assign(static_cast<std::size_t>(shards), false);
  return {};
}

void Scatter::add(int shard, const pr::Frame& f, std::string& client) {
  if (!gather_ || shard < 0 || shard >= shards()) return;
  if (gather_->streaming()) {
    // The client is getting rows: they, a notice of the first shard and the end may follow.
    if (f.tag == 'D') {
      ++unended_rows_[static_cast<std::size_t>(shard)];
      gather_->add(shard, f, &client);
    } else if (f.tag == 'N') {
      if (shard == 0 && notices_.size() + f.whole.size() <= kMaxNoticeBytes) {
        notices_.append(f.whole);  // counted against the cap; sent now
        client.append(f.whole);
      }
    } else if (f.tag == 's') {
      fail("08P01", "pgvalve: a shard suspended a portal pgvalve asked for in full");
    } else if (f.tag == 'C' || f.tag == 'E' || f.tag == 'T' || f.tag == 'I') {
      end_rows(shard, f);
      gather_->add(shard, f, &client);
    }
    return;
  }
  add_held(shard, f);
  if (gather_->ready_to_stream()) start_rows(client);
}

void Scatter::start_rows(std::string& out) {
  out.append(notices_);
  if (steps_ == "Q") {
    gather_->start_stream(out, true);
    return;
  }
  for (char step : steps_) {
    if (step == '3') {
      pr::append_close_complete(out);
    } else if (step == 'P') {
      pr::append_parse_complete(out);
    } else if (step == 'S' && statement_described_) {
      out.append(*statement_description_);
    } else if (step == 'B') {
      pr::append_bind_complete(out);
    } else if (step == 'D' && portal_description_) {
      out.append(*portal_description_);
    } else if (step == 'E') {
      break;
    }
  }
  gather_->start_stream(out, false);
}

void Scatter::add_held(int shard, const pr::Frame& f) {
  const auto i = static_cast<std::size_t>(shard);
  const bool first = shard == 0;
  switch (f.tag) {
    case '1':
      parsed_ |= first;
      return;
    case '2':
      bound_[i] = true;
      bound_first_ |= first;
      return;
    case 't':
      if (first) statement_description_.emplace(f.whole);
      return;
    case 'n':
    case 'T':
      if (steps_ != "Q" && !bound_[i]) {
        // The answer to Describe statement, sent before the Bind.
        if (first && statement_description_) {
          statement_described_ = as_client_gets(f, *statement_description_);
        }
        return;
      }
      if (first && steps_ != "Q") {
        portal_description_.emplace();
        if (!as_client_gets(f, *portal_description_)) portal_description_.reset();
      }
      if (f.tag == 'T') gather_->add(shard, f);
      return;
    case 'D':
      if (!write_) ++unended_rows_[i];  // a write's rows are its tag's (RETURNING rows included)
      gather_->add(shard, f);
      return;
    case 'N':
      if (first && notices_.size() + f.whole.size() <= kMaxNoticeBytes) notices_.append(f.whole);
      return;
    case 's':
      fail("08P01", "pgvalve: a shard suspended a portal pgvalve asked for in full");
      return;
    default:
      end_rows(shard, f);
      gather_->add(shard, f);  // CommandComplete, EmptyQueryResponse, ErrorResponse
      return;
  }
}

void Scatter::end_rows(int shard, const pr::Frame& f) {
  const auto i = static_cast<std::size_t>(shard);
  if (f.tag == 'C') {
    rows_[i] += write_ ? stats::read_command_tag(pr::read_command_complete(f).value_or("")).rows
                       : unended_rows_[i];
    unended_rows_[i] = 0;
  } else if (f.tag == 'E') {
    // A failed part reported no rows, as a failed statement on one server does (its rows
    // before the error count nowhere).
    unended_rows_[i] = 0;
  }
}

bool Scatter::as_client_gets(const pr::Frame& f, std::string& out) {
  if (f.tag != 'T') {
    out.append(f.whole);
    return true;
  }
  routing::ClientDescription client = routing::client_description(gather_->plan(), f.body);
  if (!client.refusal.empty()) {
    fail("0A000", "pgvalve: " + client.refusal);
    return false;
  }
  const std::size_t at = pr::begin_message(out, 'T');
  out.append(client.body);
  pr::end_message(out, at);
  return true;
}

void Scatter::suspend(std::string& out) {
  if (executes()) pr::append_portal_suspended(out);
}

void Scatter::fetch(std::int64_t rows, bool describe, std::string& out) {
  // The first Execute's answer carried what came before its rows; this one's is its own (the
  // description, when asked, goes now).
  steps_ = "E";
  notices_.clear();
  if (describe) describe_portal(out);
  gather_->fetch(rows, out);
}

void Scatter::describe_portal(std::string& out) const {
  if (portal_description_) {
    out.append(*portal_description_);
  } else {
    pr::append_no_data(out);
  }
}

void Scatter::fail(std::string_view sqlstate, std::string_view message) {
  if (!gather_ || gather_->failed()) return;
  pr::ErrorFields e;
  e.severity = "ERROR";
  e.sqlstate = sqlstate;
  e.message = message;
  std::string body;
  pr::append_error_response(body, e);
  pr::Frame f;
  f.tag = 'E';
  f.whole = body;
  f.body = std::string_view(body).substr(5);
  gather_->add(0, f);
}

void Scatter::finish(std::string& out, char tx_status) {
  if (gather_->streaming()) {
    // A portal bound and not executed yet gets its rows at its first Execute.
    if (executes() || gather_->failed()) gather_->finish(out, false);
    pr::append_ready_for_query(out, tx_status);
    return;
  }
  out.append(notices_);
  if (steps_ == "Q") {
    gather_->finish(out, true);
    pr::append_ready_for_query(out, tx_status);
    return;
  }
  const bool ok = !gather_->failed();
  for (char step : steps_) {
    // After an error, only what the first shard answered before it.
    if (step == '3') {
      pr::append_close_complete(out);
    } else if (step == 'P' && (ok || parsed_)) {
      pr::append_parse_complete(out);
    } else if (step == 'S' && statement_described_) {
      out.append(*statement_description_);
    } else if (step == 'B' && (ok || bound_first_)) {
      pr::append_bind_complete(out);
    } else if (step == 'D' && portal_description_) {
      out.append(*portal_description_);
    } else if (step == 'E' && ok) {
      gather_->finish(out, false);
    } else {
      break;
    }
  }
  if (!ok) gather_->finish(out);
  pr::append_ready_for_query(out, tx_status);
}

}  // namespace pgvalve::session
