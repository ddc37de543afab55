#include "stats/query_stats.h"

#include <pg_query.h>

#include <algorithm>
#include <cctype>
#include <utility>

#include "routing/fingerprint.h"
#include "routing/sql_lexer.h"

namespace pgvalve::stats {

void QueryFigures::merge(const QueryFigures& other) {
  if (calls == 0 || (other.calls > 0 && other.min_micros < min_micros)) {
    min_micros = other.min_micros;
  }
  if (text.empty()) text = other.text;
  if (advice.empty()) advice = other.advice;
  calls += other.calls;
  rows += other.rows;
  errors += other.errors;
  total_micros += other.total_micros;
  max_micros = std::max(max_micros, other.max_micros);
  replica_calls += other.replica_calls;
  for (const DatabaseShards& d : other.shards) {
    for (int i = 0; i < 64; ++i) {
      if (d.shards >> i & 1) add_shard(d.database, static_cast<std::uint16_t>(i));
    }
  }
  durations.merge(other.durations);
}

void QueryFigures::add_shard(const std::string& database, std::uint16_t shard) {
  if (shard >= 64) return;
  const std::uint64_t bit = std::uint64_t{1} << shard;
  // Few entries, usually one: a shape runs in one database.
  for (DatabaseShards& d : shards) {
    if (d.database == database) {
      d.shards |= bit;
      return;
    }
  }
  shards.push_back({database, bit});
}

std::uint64_t QueryFigures::percentile_micros(double q) const {
  if (calls == 0) return 0;
  return std::clamp(durations.quantile_micros(q), min_micros, max_micros);
}

QueryStats::QueryStats(Limits limits) : limits_(limits) {}

namespace {

// Whether `sql` still holds a string constant, which may be a value a client sent.
bool holds_string_constant(std::string_view sql) {
  routing::SqlLexer lexer(sql, 0, routing::SqlLexer::Keywords::NotLookedUp);
  routing::Token token;
  while (lexer.next(token)) {
    if (token.kind == routing::TokenKind::String ||
        token.kind == routing::TokenKind::DollarString ||
        token.kind == routing::TokenKind::Unterminated) {
      return true;
    }
  }
  return false;
}

// Whether `sql` has true, false or null as a value (not in `IS [NOT] NULL`, `IS TRUE` or a
// NOT NULL constraint). They are part of a statement's fingerprint, since they can change
// where it goes (EXPLAIN (ANALYZE true) runs what it explains), but PostgreSQL's normaliser
// makes them `$n` like any constant: shapes that differ only in them would look alike.
bool holds_keyword_constant(std::string_view sql) {
  routing::SqlLexer lexer(sql, 0, routing::SqlLexer::Keywords::NotLookedUp);
  routing::Token token;
  routing::Token before;
  while (lexer.next(token)) {
    if ((token.is_word("true") || token.is_word("false") || token.is_word("null")) &&
        !before.is_word("is") && !before.is_word("not")) {
      return true;
    }
    before = token;
  }
  return false;
}

// `sql` without its comments, each replaced by a space: a comment carries a request's own
// values (sqlcommenter's traceparent, a tenant), which are not its shape's and are not shown.
std::string without_comments(std::string_view sql) {
  routing::SqlLexer lexer(sql, 0, routing::SqlLexer::Keywords::NotLookedUp);
  routing::Token token;
  std::string out;
  out.reserve(sql.size());
  std::size_t end = 0;  // where the token before ends
  while (lexer.next(token)) {
    const std::string_view gap = sql.substr(end, token.offset - end);
    const bool comment =
        gap.find("--") != std::string_view::npos || gap.find("/*") != std::string_view::npos;
    if (!comment) {
      out += gap;
    } else if (!out.empty()) {
      out += ' ';
    }
    out += token.text;
    end = token.offset + token.text.size();
  }
  return out;
}

}  // namespace

std::string QueryStats::normalized_text(std::string_view sql) {
  std::string text;
  if (sql.size() > kMaxParsedTextBytes) {
    // PostgreSQL's parser would hold thousands of times what it keeps (a 0.4 MiB SELECT of
    // 200,000 constants took 1.6 GiB): the lexer's form of the start is enough for 2 KiB.
    text = routing::normalize(sql.substr(0, kMaxParsedTextBytes));
    cut_to_max(text);
    return text;
  }
  const std::string input(sql);
  PgQueryNormalizeResult r = pg_query_normalize(input.c_str());
  if (!r.error && r.normalized_query && !holds_string_constant(r.normalized_query) &&
      !holds_keyword_constant(sql)) {
    text = without_comments(r.normalized_query);
  } else {
    // Not parsed, a constant PostgreSQL's normaliser keeps (a NOTIFY payload), or one it takes
    // out that the fingerprint keeps (true, false, null): the form the fingerprint hashes.
    text = routing::normalize(sql);
  }
  pg_query_free_normalize_result(r);
  cut_to_max(text);
  return text;
}

void QueryStats::cut_to_max(std::string& text) {
  if (text.size() <= kMaxTextBytes) return;
  // Cut on a character boundary (UTF-8 continuation bytes are 10xxxxxx).
  std::size_t cut = kMaxTextBytes;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80)
    --cut;
  text.resize(cut);
  text += "...";
}

namespace {

// A `$n` parameter outside quotes: the statement cannot be EXPLAINed without its values.
bool has_parameters(std::string_view sql) {
  char quote = 0;
  for (std::size_t i = 0; i + 1 < sql.size(); ++i) {
    const char c = sql[i];
    if (quote) {
      if (c == quote) quote = 0;
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if (c == '$' && sql[i + 1] >= '0' && sql[i + 1] <= '9') {
      return true;
    }
  }
  return false;
}

constexpr std::size_t kMaxExplainedBytes = 16384;
// Requests waiting for the explainer (it takes them every second): past this, a shape stays
// wanted and is sampled at a later execution.
constexpr std::size_t kMaxExplainRequests = 32;

}  // namespace

void QueryStats::prepare(std::uint64_t fingerprint, std::string_view sql, const ClientLabels& who) {
  if (limits_.max_fingerprints == 0) return;
  if (auto it = index_.find(fingerprint); it != index_.end()) {
    QueryFigures& f = entries_[it->second];
    if (f.explain == QueryFigures::Explain::Wanted) {
      // A slow SELECT seen again: this execution's text is EXPLAINed (once per shape).
      if (has_parameters(sql) || sql.size() > kMaxExplainedBytes || !who.database || !who.user) {
        f.explain = QueryFigures::Explain::Done;
      } else if (explain_requests_.size() < kMaxExplainRequests) {
        f.explain = QueryFigures::Explain::Requested;
        explain_requests_.push_back({fingerprint, std::string(sql), *who.database, *who.user});
      }
    }
    return;
  }
  // A new shape: its text is normalised by PostgreSQL's parser, once.
  std::string text = normalized_text(sql);
  while (entries_.size() >= limits_.max_fingerprints)
    evict_one();
  QueryFigures& f = entries_.emplace_back();
  f.fingerprint = fingerprint;
  f.text = std::move(text);
  index_.emplace(fingerprint, static_cast<std::uint32_t>(entries_.size() - 1));
}

// The least called of a few entries drawn at random: no order to keep on the hot path, and a
// statement called often survives a flood of one-off shapes. An entry never called yet is
// taken last: its first execution is most likely still running (a long statement), and would
// find its entry gone.
void QueryStats::evict_one() {
  if (entries_.empty()) return;
  std::size_t victim = 0;
  std::uint64_t fewest = UINT64_MAX;
  bool first = true;
  for (int draw = 0; draw < 8; ++draw) {
    random_ ^= random_ << 13;
    random_ ^= random_ >> 7;
    random_ ^= random_ << 17;
    const std::size_t i = random_ % entries_.size();
    const std::uint64_t calls = entries_[i].calls == 0 ? UINT64_MAX : entries_[i].calls;
    if (first || calls < fewest) {
      fewest = calls;
      victim = i;
      first = false;
    }
  }
  index_.erase(entries_[victim].fingerprint);
  if (victim != entries_.size() - 1) {
    entries_[victim] = std::move(entries_.back());
    index_[entries_[victim].fingerprint] = static_cast<std::uint32_t>(victim);
  }
  entries_.pop_back();
  ++evictions_;
}

std::string_view kind_name(StatementKind kind) {
  switch (kind) {
    case StatementKind::Select:
      return "select";
    case StatementKind::Insert:
      return "insert";
    case StatementKind::Update:
      return "update";
    case StatementKind::Delete:
      return "delete";
    case StatementKind::Copy:
      return "copy";
    case StatementKind::Other:
      return "other";
  }
  return "other";
}

CommandTag read_command_tag(std::string_view tag) {
  // Read for every statement's answer: the verb is told by its length, then compared whole.
  std::size_t verb_end = 0;
  while (verb_end < tag.size() && tag[verb_end] != ' ')
    ++verb_end;
  const std::string_view verb = tag.substr(0, verb_end);
  CommandTag out;
  bool counted = true;
  if (verb == "SELECT" || verb == "FETCH") {
    out.kind = StatementKind::Select;
  } else if (verb == "INSERT") {
    out.kind = StatementKind::Insert;
  } else if (verb == "UPDATE" || verb == "MERGE") {
    out.kind = StatementKind::Update;
  } else if (verb == "DELETE") {
    out.kind = StatementKind::Delete;
  } else if (verb == "COPY") {
    out.kind = StatementKind::Copy;
  } else {
    counted = verb == "MOVE";
  }
  if (!counted) return out;
  // The count is the last word ("INSERT 0 5"): digits only, after a space.
  std::size_t digits = tag.size();
  while (digits > verb_end && tag[digits - 1] >= '0' && tag[digits - 1] <= '9')
    --digits;
  if (digits == tag.size() || tag[digits - 1] != ' ') return out;
  for (std::size_t i = digits; i < tag.size(); ++i)
    out.rows = out.rows * 10 + static_cast<std::uint64_t>(tag[i] - '0');
  return out;
}

DatabaseTotals& QueryStats::database_totals(const std::string& database) {
  for (auto& d : databases_) {
    if (d.database == database) return d;
  }
  DatabaseTotals& d = databases_.emplace_back();
  d.database = database;
  return d;
}

void QueryStats::count_transaction(const ClientLabels& who, std::uint64_t micros) {
  static const std::string kNone;
  DatabaseTotals& d = database_totals(who.database ? *who.database : kNone);
  ++d.transactions;
  d.transaction_micros += micros;
}

void QueryStats::add_error(char c0, char c1) {
  for (auto& x : errors_) {
    if (x.sqlstate_class[0] == c0 && x.sqlstate_class[1] == c1) {
      ++x.errors;
      return;
    }
  }
  ErrorTotals& err = errors_.emplace_back();
  err.sqlstate_class[0] = c0;
  err.sqlstate_class[1] = c1;
  err.errors = 1;
}

void QueryStats::count_error(std::string_view sqlstate) {
  if (sqlstate.size() >= 2) add_error(sqlstate[0], sqlstate[1]);
}

void QueryStats::record(const Execution& e, const ClientLabels& who, std::string_view sample) {
  static const std::string kNone;
  const std::string& database = who.database ? *who.database : kNone;
  using Scope = Execution::Scope;
  // Totals for /metrics: every execution, tracked fingerprint or not.
  if (e.scope != Scope::Gathered) {
    QueryTotals* t = nullptr;
    for (auto& q : queries_by_label_) {
      if (q.shard == e.shard && q.replica == e.replica && q.kind == e.kind &&
          q.database == database) {
        t = &q;
        break;
      }
    }
    if (!t) {
      t = &queries_by_label_.emplace_back();
      t->database = database;
      t->shard = e.shard;
      t->replica = e.replica;
      t->kind = e.kind;
    }
    ++t->queries;
    t->rows += e.rows;
  }
  if (e.scope != Scope::ShardPart) {
    DatabaseTotals& d = database_totals(database);
    const double seconds = static_cast<double>(e.micros) / 1e6;
    std::size_t b = 0;
    while (b < std::size(kDurationBounds) && seconds > kDurationBounds[b])
      ++b;
    ++d.duration_counts[b];
    d.duration_sum_seconds += seconds;
    if (e.error) add_error(e.sqlstate_class[0], e.sqlstate_class[1]);
  }
  // Its shape's figures; none when the entry was evicted or RESET QUERIES ran meanwhile, which
  // costs the figures only: the slow-query counter and sample do not need them.
  const auto it = index_.find(e.fingerprint);
  QueryFigures* const f = it == index_.end() ? nullptr : &entries_[it->second];
  if (f) f->add_shard(database, e.shard);
  if (e.scope == Scope::ShardPart) return;
  const bool slow = limits_.slow_query.count() > 0 &&
                    e.micros > static_cast<std::uint64_t>(limits_.slow_query.count());
  if (f) {
    if (f->calls == 0 || e.micros < f->min_micros) f->min_micros = e.micros;
    ++f->calls;
    f->rows += e.rows;
    if (e.error) ++f->errors;
    if (limits_.explain_slow && f->explain == QueryFigures::Explain::No && !e.error &&
        e.kind == StatementKind::Select && slow) {
      f->explain = QueryFigures::Explain::Wanted;
    }
    f->total_micros += e.micros;
    f->max_micros = std::max(f->max_micros, e.micros);
    if (e.replica) ++f->replica_calls;
    f->durations.record(e.micros);
  }
  if (!slow) return;
  ++slow_total_;
  if (limits_.slow_samples == 0) return;
  // Written in place: once the ring is full, a slot's strings keep their memory for the next.
  SlowQuery& s =
      slow_.size() < limits_.slow_samples ? slow_.emplace_back() : slow_[slow_next_ % slow_.size()];
  s.at = std::chrono::system_clock::now();
  s.database.assign(who.database ? *who.database : kNone);
  s.user.assign(who.user ? *who.user : kNone);
  s.shard = e.shard;
  s.shards = e.shards;
  s.host.assign(e.host);
  s.micros = e.micros;
  s.fingerprint = e.fingerprint;
  if (!sample.empty() && !limits_.redact_literals) {
    s.text.assign(sample.substr(0, kMaxTextBytes + 4));
    cut_to_max(s.text);
  } else if (f) {
    s.text.assign(f->text);
  } else {
    s.text.clear();  // its shape's text went with its entry
  }
  if (f) {
    s.advice.assign(f->advice);
  } else {
    s.advice.clear();
  }
  slow_next_ = (slow_next_ + 1) % limits_.slow_samples;
}

namespace {

// Adds `part`'s counters to `into`'s, label by label.
void add_totals(Snapshot& into, const Snapshot& part) {
  into.evictions += part.evictions;
  into.slow_total += part.slow_total;
  for (const auto& q : part.queries_by_label) {
    auto it = std::find_if(into.queries_by_label.begin(), into.queries_by_label.end(),
                           [&](const QueryTotals& t) {
                             return t.database == q.database && t.shard == q.shard &&
                                    t.replica == q.replica && t.kind == q.kind;
                           });
    if (it == into.queries_by_label.end()) {
      into.queries_by_label.push_back(q);
    } else {
      it->queries += q.queries;
      it->rows += q.rows;
    }
  }
  for (const auto& d : part.databases) {
    auto it = std::find_if(into.databases.begin(), into.databases.end(),
                           [&](const DatabaseTotals& t) { return t.database == d.database; });
    if (it == into.databases.end()) {
      into.databases.push_back(d);
      continue;
    }
    it->transactions += d.transactions;
    it->transaction_micros += d.transaction_micros;
    for (std::size_t b = 0; b < kDurationBuckets; ++b)
      it->duration_counts[b] += d.duration_counts[b];
    it->duration_sum_seconds += d.duration_sum_seconds;
  }
  for (const auto& e : part.errors) {
    auto it = std::find_if(into.errors.begin(), into.errors.end(), [&](const ErrorTotals& t) {
      return t.sqlstate_class[0] == e.sqlstate_class[0] &&
             t.sqlstate_class[1] == e.sqlstate_class[1];
    });
    if (it == into.errors.end()) {
      into.errors.push_back(e);
    } else {
      it->errors += e.errors;
    }
  }
}

}  // namespace

void QueryStats::collect_totals(Snapshot& part) const {
  part.evictions += evictions_;
  part.slow_total += slow_total_;
  // Labels repeated across calls are summed by merge().
  part.queries_by_label.insert(part.queries_by_label.end(), queries_by_label_.begin(),
                               queries_by_label_.end());
  part.databases.insert(part.databases.end(), databases_.begin(), databases_.end());
  part.errors.insert(part.errors.end(), errors_.begin(), errors_.end());
}

void QueryStats::collect_all(Snapshot& part) const {
  collect_totals(part);
  for (const auto& f : entries_) {
    if (f.calls > 0) part.queries.push_back(f);
  }
  part.slow.insert(part.slow.end(), slow_.begin(), slow_.end());
}

void QueryStats::collect_latest_slow(std::size_t n, Snapshot& part) const {
  // By time rather than by place in the ring, which a smaller stats.slow_samples reorders.
  std::vector<const SlowQuery*> newest;
  newest.reserve(slow_.size());
  for (const auto& s : slow_)
    newest.push_back(&s);
  const std::size_t k = std::min(n, newest.size());
  std::partial_sort(newest.begin(), newest.begin() + static_cast<std::ptrdiff_t>(k), newest.end(),
                    [](const SlowQuery* a, const SlowQuery* b) { return a->at > b->at; });
  for (std::size_t i = 0; i < k; ++i)
    part.slow.push_back(*newest[i]);
}

void QueryStats::collect_times(std::vector<FingerprintTime>& out) const {
  out.reserve(out.size() + entries_.size());
  for (const auto& f : entries_) {
    if (f.calls > 0) out.push_back({f.fingerprint, f.total_micros});
  }
}

void QueryStats::collect_figures(const std::vector<std::uint64_t>& fingerprints,
                                 Snapshot& part) const {
  for (const std::uint64_t fingerprint : fingerprints) {
    const auto it = index_.find(fingerprint);
    if (it != index_.end() && entries_[it->second].calls > 0) {
      part.queries.push_back(entries_[it->second]);
    }
  }
}

std::vector<ExplainRequest> QueryStats::take_explain_requests() {
  return std::exchange(explain_requests_, {});
}

void QueryStats::set_advice(std::uint64_t fingerprint, const std::string& advice) {
  if (auto it = index_.find(fingerprint); it != index_.end()) {
    QueryFigures& f = entries_[it->second];
    f.advice = advice;
    f.explain = QueryFigures::Explain::Done;
    for (auto& s : slow_) {
      if (s.fingerprint == fingerprint) s.advice = advice;
    }
  }
}

void QueryStats::reset() {
  entries_.clear();
  index_.clear();
  slow_.clear();
  slow_next_ = 0;
  // The /metrics counters (slow_total_, evictions_, the totals) never go back.
}

void QueryStats::set_limits(const Limits& limits) {
  // Samples taken with their constants lose them when redaction is turned back on.
  if (limits.redact_literals && !limits_.redact_literals) {
    for (SlowQuery& s : slow_) {
      const auto it = index_.find(s.fingerprint);
      s.text = it != index_.end() ? entries_[it->second].text : std::string();
    }
  }
  limits_ = limits;
  while (entries_.size() > limits_.max_fingerprints)
    evict_one();
  // The ring in order, oldest first (a full ring's oldest is at slow_next_), then the newest
  // samples kept: the next one goes after them, and once full replaces the oldest, at 0.
  if (slow_next_ < slow_.size()) {
    std::rotate(slow_.begin(), slow_.begin() + static_cast<std::ptrdiff_t>(slow_next_),
                slow_.end());
  }
  if (slow_.size() > limits_.slow_samples) {
    slow_.erase(slow_.begin(),
                slow_.begin() + static_cast<std::ptrdiff_t>(slow_.size() - limits_.slow_samples));
  }
  slow_next_ = limits_.slow_samples > 0 ? slow_.size() % limits_.slow_samples : 0;
}

void QueryStats::remap_shards(const std::string& database, const std::vector<std::uint16_t>& to) {
  const auto map = [&](std::uint16_t shard) { return shard < to.size() ? to[shard] : kNoShard; };
  for (QueryTotals& q : queries_by_label_) {
    if (q.database == database) q.shard = map(q.shard);
  }
  std::erase_if(queries_by_label_, [](const QueryTotals& q) { return q.shard == kNoShard; });
  for (QueryFigures& f : entries_) {
    for (DatabaseShards& d : f.shards) {
      if (d.database != database) continue;
      std::uint64_t moved = 0;
      for (std::uint16_t i = 0; i < 64; ++i) {
        const std::uint16_t now = map(i);
        if (d.shards >> i & 1 && now < 64) moved |= std::uint64_t{1} << now;
      }
      d.shards = moved;
    }
  }
  for (SlowQuery& s : slow_) {
    if (s.database != database) continue;
    s.shard = map(s.shard);
    std::uint64_t moved = 0;
    for (std::uint16_t i = 0; i < 64; ++i) {
      const std::uint16_t now = map(i);
      if (s.shards >> i & 1 && now < 64) moved |= std::uint64_t{1} << now;
    }
    s.shards = moved;
  }
}

Snapshot QueryStats::snapshot(const std::vector<const QueryStats*>& workers,
                              std::size_t max_fingerprints, Detail detail) {
  std::vector<Snapshot> parts(workers.size());
  if (detail == Detail::Top) {
    std::vector<std::vector<FingerprintTime>> times(workers.size());
    for (std::size_t i = 0; i < workers.size(); ++i)
      workers[i]->collect_times(times[i]);
    const auto top = top_by_time(times, std::min(kTopShown, max_fingerprints));
    for (std::size_t i = 0; i < workers.size(); ++i) {
      workers[i]->collect_totals(parts[i]);
      workers[i]->collect_figures(top, parts[i]);
      workers[i]->collect_latest_slow(kTopShown, parts[i]);
    }
  } else {
    for (std::size_t i = 0; i < workers.size(); ++i) {
      if (detail == Detail::All) {
        workers[i]->collect_all(parts[i]);
      } else {
        workers[i]->collect_totals(parts[i]);
      }
    }
  }
  Snapshot out = merge(std::move(parts), max_fingerprints);
  if (detail == Detail::Top && out.slow.size() > kTopShown) out.slow.resize(kTopShown);
  return out;
}

Snapshot QueryStats::merge(std::vector<Snapshot>&& parts, std::size_t max_fingerprints) {
  Snapshot out;
  std::unordered_map<std::uint64_t, QueryFigures> by_fingerprint;
  for (Snapshot& part : parts) {
    add_totals(out, part);
    for (QueryFigures& f : part.queries) {
      auto [it, added] = by_fingerprint.try_emplace(f.fingerprint);
      if (added) {
        it->second = std::move(f);
      } else {
        it->second.merge(f);
      }
    }
    out.slow.insert(out.slow.end(), std::make_move_iterator(part.slow.begin()),
                    std::make_move_iterator(part.slow.end()));
  }
  out.queries.reserve(by_fingerprint.size());
  for (auto& [fingerprint, f] : by_fingerprint)
    out.queries.push_back(std::move(f));
  std::sort(out.queries.begin(), out.queries.end(), [](const auto& a, const auto& b) {
    return a.total_micros != b.total_micros ? a.total_micros > b.total_micros
                                            : a.fingerprint < b.fingerprint;
  });
  if (out.queries.size() > max_fingerprints) out.queries.resize(max_fingerprints);
  std::sort(out.slow.begin(), out.slow.end(),
            [](const SlowQuery& a, const SlowQuery& b) { return a.at > b.at; });
  return out;
}

std::vector<std::uint64_t> QueryStats::top_by_time(
    const std::vector<std::vector<FingerprintTime>>& parts, std::size_t n) {
  std::unordered_map<std::uint64_t, std::uint64_t> sums;
  for (const auto& part : parts) {
    for (const auto& t : part)
      sums[t.fingerprint] += t.total_micros;
  }
  std::vector<FingerprintTime> all;
  all.reserve(sums.size());
  for (const auto& [fingerprint, total] : sums)
    all.push_back({fingerprint, total});
  const std::size_t k = std::min(n, all.size());
  std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(k), all.end(),
                    [](const FingerprintTime& a, const FingerprintTime& b) {
                      return a.total_micros != b.total_micros ? a.total_micros > b.total_micros
                                                              : a.fingerprint < b.fingerprint;
                    });
  std::vector<std::uint64_t> top;
  top.reserve(k);
  for (std::size_t i = 0; i < k; ++i)
    top.push_back(all[i].fingerprint);
  return top;
}

}  // namespace pgvalve::stats
