// What the session core tells the worker's statistics (stats/query_stats.h): each Query and
// each Execute is counted once it completes, with its duration from when it was sent, the rows
// of its CommandComplete tags, whether it failed, and where it ran.
//
// What needs no decision of the step is left until its writes are done (account()): a Query's
// fingerprint, an execution and a transaction to record. A statement is on its way to the server
// before it is fingerprinted, and an answer on its way to the client before it is recorded.
#include "routing/fingerprint.h"
#include "session/limits.h"
#include "session/session_internal.h"

namespace pgvalve::session {

std::uint64_t Session::fingerprint_of(std::string_view sql, bool keep) {
  Workspace& w = work();
  if (w.fingerprinted(sql)) return w.fingerprinted_value();
  const std::uint64_t value = router_.cached_fingerprint(sql);
  if (keep) w.keep_fingerprint(sql, value);
  return value;
}

void Session::count_request(protocol::PendingResponse& request, std::string_view sql, Link& l) {
  if (!recorder_ || sql.empty()) return;
  Workspace& w = work();
  const bool known = w.fingerprinted(sql);
  if (!known && !w.accounting.text) {
    w.accounting.text = sql.data();
    w.accounting.size = sql.size();
    w.accounting.link = &l;
    accounting_due_ = true;
    count_request(request, std::uint64_t{0});  // the transaction it may begin
    request.started = now_.time_since_epoch().count();
    request.fingerprint_later = true;
    if (keeps_literals()) [[unlikely]]
      keep_sample(request, sql, l);
    return;
  }
  const std::uint64_t fingerprint = fingerprint_of(sql);
  recorder_->stats->prepare(fingerprint, sql, recorder_->labels);
  count_request(request, fingerprint);
  if (keeps_literals()) [[unlikely]]
    keep_sample(request, sql, l);
}

void Session::keep_sample(protocol::PendingResponse& request, std::string_view sample, Link& l) {
  request.sample_size = 0;
  if (sample.empty()) return;
  // What the link's earlier requests kept is read when they complete: with none outstanding it
  // is no longer needed (and a buffer a pipeline grew is let go).
  if (l.pending.empty()) {
    if (l.samples.capacity() > 2 * (stats::QueryStats::kMaxTextBytes + 4))
      std::string().swap(l.samples);
    l.samples.clear();
  }
  // Enough for the shown text to be cut with its "..." mark.
  sample = sample.substr(0, stats::QueryStats::kMaxTextBytes + 4);
  if (l.samples.size() + sample.size() > kMaxSampleBytes) return;  // the normalised text, then
  request.sample_at = static_cast<std::uint32_t>(l.samples.size());
  request.sample_size = static_cast<std::uint32_t>(sample.size());
  l.samples.append(sample);
}

namespace {

// A parameter's value as PostgreSQL's log shows it: 'text' with quotes doubled, NULL, and binary
// integers of known types as numbers.
void describe_value(std::string& out, const protocol::BindParameter& p, std::uint32_t type) {
  constexpr std::size_t kMaxValueBytes = 256;
  if (!p.value) {
    out += "NULL";
    return;
  }
  const std::string_view v = *p.value;
  if (p.format == 1) {
    const auto be = [&](std::size_t n) {
      std::uint64_t x = 0;
      for (std::size_t i = 0; i < n; ++i)
        x = x << 8 | static_cast<unsigned char>(v[i]);
      return x;
    };
    if ((type == 20 && v.size() == 8) || (type == 23 && v.size() == 4) ||
        (type == 21 && v.size() == 2)) {
      const std::uint64_t x = be(v.size());
      const int shift = 64 - static_cast<int>(8 * v.size());
      out += std::to_string(static_cast<std::int64_t>(x << shift) >> shift);
    } else {
      out += "(binary, " + std::to_string(v.size()) + " bytes)";
    }
    return;
  }
  out += '\'';
  for (char c : v.substr(0, kMaxValueBytes)) {
    if (c == '\'') out += '\'';
    out += c;
  }
  out += v.size() > kMaxValueBytes ? "...'" : "'";
}

}  // namespace

void Session::describe_sample(std::string& out, std::string_view sql, std::string_view bind_rest,
                              std::string_view param_types) {
  const std::size_t limit = stats::QueryStats::kMaxTextBytes + 4;
  out.assign(sql.substr(0, limit));
  if (out.empty()) return;  // parameters without their statement say nothing
  for (std::size_t i = 0; out.size() < limit; ++i) {
    const auto p = protocol::read_bind_parameter(bind_rest, i);
    if (!p) break;
    out += i == 0 ? " [parameters: $" : ", $";
    out += std::to_string(i + 1);
    out += " = ";
    const std::uint32_t type =
        4 * i + 4 <= param_types.size() ? protocol::read_u32(param_types.data() + 4 * i) : 0;
    describe_value(out, *p, type);
  }
  if (out.size() > sql.size() && out.size() < limit) out += ']';
  if (out.size() > limit) out.resize(limit);
}

void Session::count_request(protocol::PendingResponse& request, std::uint64_t fingerprint) {
  if (!recorder_) return;
  // The first request on a server between transactions begins one (an autocommit statement
  // is one too): counted when a ReadyForQuery 'I' ends it.
  Link* l = linked_link();
  if (l && l->server && l->server->tx_status == 'I' &&
      l->transaction_started == Clock::time_point{}) {
    l->transaction_started = now_;
  }
  if (fingerprint == 0) return;
  request.fingerprint = fingerprint;
  request.started = now_.time_since_epoch().count();
}

void Session::note_answer(Link& l, const protocol::Frame& f) {
  if (f.tag == 'D') {
    ++l.data_rows;
  } else if (f.tag == 'C') {
    const std::string_view tag = protocol::read_command_complete(f).value_or("");
    const stats::CommandTag said = stats::read_command_tag(tag);
    l.rows += said.rows;
    l.kind = said.kind;
    l.data_rows = 0;
  } else if (f.tag == 's') {
    l.rows += l.data_rows;
    l.kind = stats::StatementKind::Select;
    l.data_rows = 0;
  } else if (f.tag == 'E') {
    if (auto e = protocol::read_error_response(f); e && e->sqlstate.size() >= 2) {
      l.error_class[0] = e->sqlstate[0];
      l.error_class[1] = e->sqlstate[1];
    }
  }
}

namespace {

// What keep_sample() kept for `request`.
std::string_view sample_of(const Link& l, const protocol::PendingResponse& request) {
  if (std::size_t{request.sample_at} + request.sample_size > l.samples.size()) return {};
  return std::string_view(l.samples).substr(request.sample_at, request.sample_size);
}

}  // namespace

namespace {

// The time `request` ran: from when it was sent, or, queued behind others on its server, from
// when the answer before it ended.
std::uint64_t micros_since(Clock::time_point now, const protocol::PendingResponse& request,
                           const Link& l) {
  const Clock::time_point started =
      std::max(Clock::time_point{Clock::duration(request.started)}, l.answered_at);
  return now > started
             ? static_cast<std::uint64_t>(
                   std::chrono::duration_cast<std::chrono::microseconds>(now - started).count())
             : 0;
}

}  // namespace

void Session::suspend_execution(Link& l, const protocol::PendingResponse& request) {
  if (!recorder_ || request.fingerprint == 0 || request.internal || !l.server) return;
  if (l.suspended.fingerprint != request.fingerprint) end_suspended_portal(l);
  l.suspended.fingerprint = request.fingerprint;
  l.suspended.rows += l.rows;
  l.suspended.micros += micros_since(now_, request, l);
  l.answered_at = now_;
  l.kind = stats::StatementKind::Other;
}

void Session::end_suspended_portal(Link& l) {
  if (l.suspended.fingerprint == 0) return;
  protocol::PendingResponse portal;
  portal.fingerprint = l.suspended.fingerprint;
  portal.started = now_.time_since_epoch().count();  // its time is in `suspended.micros`
  const std::uint64_t rows = std::exchange(l.rows, 0);
  l.kind = stats::StatementKind::Select;
  record_execution(l, portal, false);
  l.rows = rows;
}

void Session::record_execution(Link& l, const protocol::PendingResponse& request, bool error) {
  if (!recorder_ || request.fingerprint == 0 || request.internal || !l.server) return;
  stats::Execution e;
  e.fingerprint = request.fingerprint;
  e.micros = micros_since(now_, request, l);
  l.answered_at = now_;
  e.rows = l.rows;
  if (l.suspended.fingerprint == request.fingerprint) {
    // The last chunk of a portal read in chunks: one execution with all of them.
    e.micros += l.suspended.micros;
    e.rows += l.suspended.rows;
    l.suspended = {};
  }
  e.error = error;
  e.replica = l.server->replica;
  e.shard = l.route.shard;
  e.host = l.server->name;
  e.kind = l.kind;
  if (error) {
    e.sqlstate_class[0] = l.error_class[0] ? l.error_class[0] : 'X';
    e.sqlstate_class[1] = l.error_class[1] ? l.error_class[1] : 'X';
  }
  if (Workspace::Accounting& a = work().accounting; !a.execution_due) {
    a.execution = e;
    a.execution_due = true;
    accounting_due_ = true;
    // Its sample, if any, waits with it (a.sample is empty otherwise).
    if (request.sample_size > 0) [[unlikely]]
      a.sample.assign(sample_of(l, request));
  } else {
    recorder_->stats->record(e, recorder_->labels,
                             request.sample_size > 0 ? sample_of(l, request) : std::string_view{});
  }
  l.kind = stats::StatementKind::Other;
  l.error_class[0] = l.error_class[1] = 0;
}

void Session::count_transaction(std::uint64_t micros) {
  if (Workspace::Accounting& a = work().accounting; !a.transaction_due) {
    a.transaction_micros = micros;
    a.transaction_due = true;
    accounting_due_ = true;
  } else {
    recorder_->stats->count_transaction(recorder_->labels, micros);
  }
}

void Session::settle_accounting() {
  accounting_due_ = false;
  if (!work_ || !recorder_) return;
  Workspace::Accounting& a = work_->accounting;
  if (a.text) {
    const std::string_view sql(a.text, a.size);
    a.text = nullptr;
    // The request's last use of its text: nothing asks for it again.
    const std::uint64_t fingerprint = fingerprint_of(sql, false);
    recorder_->stats->prepare(fingerprint, sql, recorder_->labels);
    // The request it counts is the newest marked on its link (unless it was refused unqueued).
    protocol::PendingResponses& pending = a.link->pending;
    for (std::size_t i = pending.size(); i-- > 0;) {
      protocol::PendingResponse& p = pending.at(i);
      if (!p.fingerprint_later) continue;
      p.fingerprint_later = false;
      p.fingerprint = fingerprint;
      break;
    }
  }
  if (a.execution_due) {
    a.execution_due = false;
    if (a.sample.empty()) [[likely]] {
      recorder_->stats->record(a.execution, recorder_->labels);
    } else {
      recorder_->stats->record(a.execution, recorder_->labels, a.sample);
      a.sample.clear();
    }
  }
  if (a.transaction_due) {
    a.transaction_due = false;
    recorder_->stats->count_transaction(recorder_->labels, a.transaction_micros);
  }
}

}  // namespace pgvalve::session
