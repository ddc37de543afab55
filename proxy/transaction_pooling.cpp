// Transaction and statement pooling: the parts of a client session that make a server lent
// for one transaction look like the client's own. Named prepared statements are renamed to
// shared server-side names and prepared again wherever the client lands; Close and DEALLOCATE
// are answered without touching other clients' statements; SET/RESET outside transactions is
// remembered for replay; what cannot survive a transaction boundary is refused.
//
// Client side: plan_client_frames() turns a run of client frames into spans of the client's
// own bytes and rewritten bytes, and queues the response each request expects. Server side:
// plan_server_frame() matches each server message with the front of that queue to forward,
// drop or replace it, and adds pgvalve's own answers at their place in the stream.
#include <algorithm>
#include <array>
#include <cctype>

#include <boost/asio/post.hpp>
#include "protocol/messages.h"

#include "proxy/app.h"
#include "proxy/client_session.h"
#include "proxy/io_util.h"
#include "proxy/log.h"
#include "routing/sql_lexer.h"
#include "routing/sql_text.h"
#include "routing/statement.h"

namespace pgvalve::proxy {

namespace pr = protocol;
using Kind = pr::PendingResponse::Kind;

namespace {

enum Action : std::uint8_t {
  kNone = 0,
  kApplyNote = 1,           // at ReadyForQuery, if the request succeeded: apply the note
  kEmptyAsNote = 2,         // the request was sent as an empty query: replace its answer
  kSynthParseComplete = 3,  // Synthetic: ParseComplete
};

// Parse with the parameter types kept as raw bytes.
void append_parse_raw(std::string& out, std::string_view name, std::string_view query,
                      std::string_view raw_types) {
  const std::size_t start = out.size();
  out += 'P';
  out.append(4, '\0');
  out.append(name);
  out += '\0';
  out.append(query);
  out += '\0';
  const auto n = static_cast<std::uint16_t>(raw_types.size() / 4);
  out += static_cast<char>(n >> 8);
  out += static_cast<char>(n & 0xff);
  out.append(raw_types);
  const auto len = static_cast<std::uint32_t>(out.size() - start - 1);
  out[start + 1] = static_cast<char>(len >> 24);
  out[start + 2] = static_cast<char>(len >> 16);
  out[start + 3] = static_cast<char>(len >> 8);
  out[start + 4] = static_cast<char>(len);
}

// The NUL-terminated string at `pos` in `body`, or nullopt.
std::optional<std::string_view> cstring_at(std::string_view body, std::size_t pos) {
  if (pos > body.size()) return std::nullopt;
  auto end = body.find('\0', pos);
  if (end == std::string_view::npos) return std::nullopt;
  return body.substr(pos, end - pos);
}

constexpr std::string_view kNoStatement = "pgv_none";

// True for the everyday statement that needs no closer look: it starts with a plain DML/query
// keyword and mentions neither advisory locks nor temporary objects. Anything else (comments,
// SET, BEGIN, ...) goes through the classifier.
bool plainly_harmless(std::string_view sql) {
  std::size_t i = 0;
  while (i < sql.size() && (sql[i] == ' ' || sql[i] == '\n' || sql[i] == '\t' || sql[i] == '\r'))
    ++i;
  std::size_t j = i;
  while (j < sql.size() && std::isalpha(static_cast<unsigned char>(sql[j])))
    ++j;
  const std::string_view word = sql.substr(i, j - i);
  static constexpr std::string_view kPlain[] = {"select", "insert", "update",
                                                "delete", "with",   "values"};
  bool plain = false;
  for (auto k : kPlain) {
    if (routing::iequals(word, k)) plain = true;
  }
  if (!plain) return false;
  // Another statement may follow a ';' (only a trailing one is harmless).
  std::size_t end = sql.size();
  while (end > j && (sql[end - 1] == ' ' || sql[end - 1] == '\n' || sql[end - 1] == ';'))
    --end;
  if (sql.substr(j, end - j).find(';') != std::string_view::npos) return false;
  for (std::string_view needle : {std::string_view("advisory"), std::string_view("temp")}) {
    for (std::size_t p = j; p + needle.size() <= sql.size(); ++p) {
      std::size_t k = 0;
      while (k < needle.size() && (sql[p + k] | 0x20) == needle[k])
        ++k;
      if (k == needle.size()) return false;
    }
  }
  return true;
}

// Cheap test before classifying: LISTEN and UNLISTEN both contain the word.
bool mentions_listen(std::string_view sql) {
  constexpr std::string_view word = "listen";
  for (std::size_t i = 0; i + word.size() <= sql.size(); ++i) {
    std::size_t j = 0;
    while (j < word.size() && (sql[i + j] | 0x20) == word[j])
      ++j;
    if (j == word.size()) return true;
  }
  return false;
}

}  // namespace

class ClientSession::Sink final : public NotificationSink {
 public:
  explicit Sink(std::weak_ptr<ClientSession> session, asio::any_io_executor executor)
      : session_(std::move(session)), executor_(std::move(executor)) {}
  void deliver(std::string message) override {
    asio::post(executor_, [s = session_, message = std::move(message)]() mutable {
      if (auto session = s.lock()) session->deliver_notification(std::move(message));
    });
  }

 private:
  std::weak_ptr<ClientSession> session_;
  asio::any_io_executor executor_;
};

void ClientSession::deliver_notification(std::string message) {
  tx_->notifications += message;
  if (!server_ && reading_client_) {
    // Wake the client loop, which is waiting for the client to send something.
    notify_wakeup_ = true;
    error_code ignored;
    client_.cancel(ignored);
  }
}

asio::awaitable<bool> ClientSession::write_notifications() {
  std::string out = std::move(tx_->notifications);
  tx_->notifications.clear();
  co_return co_await write_all(client_, out);
}

// A simple query that is exactly one LISTEN or UNLISTEN, between transactions: answered after
// the hub's server connection has run it.
asio::awaitable<bool> ClientSession::listen_via_hub(std::string_view frames) {
  auto r = pr::decode_frame(frames, max_message_bytes_);
  if (r.frame.tag != 'Q' || r.frame.whole.size() != frames.size()) co_return false;
  auto sql = pr::read_query(r.frame);
  if (!sql || !mentions_listen(*sql)) co_return false;
  auto info = routing::classify(*sql);
  const bool listen = info.kind == routing::StatementKind::Listen;
  if ((!listen && info.kind != routing::StatementKind::Unlisten) || info.multiple_statements ||
      (info.name.empty() && !info.all)) {
    co_return false;
  }
  if (!tx_->hub) tx_->hub = app_.listen_hub_for(*database_, *user_);
  if (!tx_->sink) tx_->sink = std::make_shared<Sink>(weak_from_this(), client_.get_executor());
  std::optional<std::string> error;
  bool done = false;
  auto finished = [self = shared_from_this(), &error, &done](std::optional<std::string> e) {
    asio::post(self->client_.get_executor(), [self, e = std::move(e), &error, &done] {
      error = e;
      done = true;
      self->wake_timer_.cancel();
    });
  };
  const std::string channel = info.all ? "*" : std::string(info.name.view());
  if (listen) {
    tx_->hub->listen(tx_->sink, channel, finished);
  } else {
    tx_->hub->unlisten(tx_->sink.get(), channel, finished);
  }
  while (!done) {
    error_code ignored;
    wake_timer_.expires_at(asio::steady_timer::time_point::max());
    co_await wake_timer_.async_wait(await_ec(ignored));
  }
  std::string out;
  if (error) {
    append_error(out, "08006", *error);
  } else {
    pr::append_command_complete(out, listen ? "LISTEN" : "UNLISTEN");
  }
  pr::append_ready_for_query(out, 'I');
  if (!co_await write_all(client_, out)) client_gone_ = true;
  co_return true;
}

std::uint32_t ClientSession::add_note(std::uint8_t kind, std::string a, std::string b) {
  tx_->notes.push_back({kind, std::move(a), std::move(b)});
  return static_cast<std::uint32_t>(tx_->notes.size() - 1);
}

std::optional<std::string> ClientSession::refusal(std::string_view sql, bool* changes_settings,
                                                  routing::StatementInfo* first) const {
  using routing::StatementKind;
  if (!first && plainly_harmless(sql)) return std::nullopt;
  const char* why = nullptr;
  for (std::size_t offset = 0; offset < sql.size();) {
    auto info = routing::classify(sql.substr(offset));
    if (first && offset == 0) *first = info;
    if (info.kind == StatementKind::Empty) break;
    if (changes_settings && (info.kind == StatementKind::Set || info.kind == StatementKind::Reset ||
                             info.kind == StatementKind::ResetAll)) {
      *changes_settings = true;
    }
    if (mode_ == config::PoolMode::Statement && info.kind == StatementKind::Begin) {
      why =
          "pgvalve: transaction blocks are not allowed in statement pool mode; use pool mode "
          "transaction for multi-statement transactions";
    } else if (info.calls_advisory_session_lock) {
      why =
          "pgvalve: session-level advisory locks cannot work in transaction pooling (the lock "
          "would stay on a server other clients use); use pg_advisory_xact_lock, or a session "
          "pool";
    } else if (info.kind == StatementKind::Declare && info.with_hold) {
      why =
          "pgvalve: WITH HOLD cursors cannot outlive a transaction in transaction pooling; "
          "use a session pool for them";
    } else if ((info.kind == StatementKind::Create || info.kind == StatementKind::Select) &&
               info.temporary && !info.on_commit_drop) {
      why =
          "pgvalve: temporary tables outlive the transaction and would be seen by other "
          "clients in transaction pooling; add ON COMMIT DROP or use a session pool";
    } else if (info.kind == StatementKind::PrepareTransaction) {
      why =
          "pgvalve: PREPARE TRANSACTION is not supported through transaction pooling; use a "
          "session pool";
    } else if (info.kind == StatementKind::Listen) {
      why =
          "pgvalve: LISTEN is not supported in transaction pooling yet; use a session pool for "
          "listening clients";
    }
    if (why) return std::string(why);
    if (info.next_offset == 0 || !info.multiple_statements) break;
    offset += info.next_offset;
  }
  return std::nullopt;
}

void ClientSession::pass_client(std::size_t offset, std::size_t size) {
  if (!tx_->client_spans.empty() && !tx_->client_spans.back().scratch &&
      tx_->client_spans.back().offset + tx_->client_spans.back().size == offset) {
    tx_->client_spans.back().size += size;
  } else {
    tx_->client_spans.push_back({false, offset, size});
  }
}

void ClientSession::mark_client_scratch(std::size_t from) {
  const std::size_t size = tx_->client_scratch.size() - from;
  if (size == 0) return;
  if (!tx_->client_spans.empty() && tx_->client_spans.back().scratch &&
      tx_->client_spans.back().offset + tx_->client_spans.back().size == from) {
    tx_->client_spans.back().size += size;
  } else {
    tx_->client_spans.push_back({true, from, size});
  }
}

void ClientSession::plan_client_frames(std::string_view frames) {
  tx_->client_spans.clear();
  tx_->client_scratch.clear();
  for (std::size_t pos = 0; pos < frames.size();) {
    auto r = pr::decode_frame(frames.substr(pos), max_message_bytes_);
    const pr::Frame& f = r.frame;
    const std::size_t size = f.whole.size();
    if (tx_->drop_until_sync && f.tag != 'S') {
      pos += size;
      continue;
    }
    switch (f.tag) {
      case 'P':
        plan_parse(f, pos);
        break;
      case 'B':
        plan_bind(f, pos);
        break;
      case 'D':
        plan_describe(f, pos);
        break;
      case 'C':
        plan_close(f, pos);
        break;
      case 'E':
        pass_client(pos, size);
        tx_->pending.push({Kind::Execute});
        break;
      case 'S':
        tx_->drop_until_sync = false;
        pass_client(pos, size);
        tx_->pending.push({Kind::ReadyForQuery});
        break;
      case 'Q':
        plan_query(f, pos);
        break;
      case 'F':
        pass_client(pos, size);
        tx_->pending.push({Kind::ReadyForQuery});
        break;
      default:  // Flush, CopyData, CopyDone, CopyFail: no answer of their own
        pass_client(pos, size);
        break;
    }
    pos += size;
  }
}

bool ClientSession::answer_parse_locally(std::string_view frames) {
  bool any_parse = false;
  for (std::size_t pos = 0; pos < frames.size();) {
    auto r = pr::decode_frame(frames.substr(pos), max_message_bytes_);
    const pr::Frame& f = r.frame;
    if (f.tag == 'P') {
      auto parse = pr::read_parse(f);
      if (!parse || parse->statement.empty() || refusal(parse->query)) return false;
      any_parse = true;
    } else if (f.tag != 'S' && f.tag != 'H') {
      return false;
    }
    pos += f.whole.size();
  }
  if (!any_parse || tx_->drop_until_sync) return false;
  tx_->client_scratch.clear();
  for (std::size_t pos = 0; pos < frames.size();) {
    auto r = pr::decode_frame(frames.substr(pos), max_message_bytes_);
    const pr::Frame& f = r.frame;
    if (f.tag == 'P') {
      auto parse = pr::read_parse(f);
      tx_->statements.define(parse->statement, parse->query, parse->param_types);
      pr::append_parse_complete(tx_->client_scratch);
    } else if (f.tag == 'S') {
      pr::append_ready_for_query(tx_->client_scratch, 'I');
    }
    pos += f.whole.size();
  }
  return true;
}

void ClientSession::prepare_on_server(const pr::PreparedStatement& stmt, bool swallow) {
  const std::size_t from = tx_->client_scratch.size();
  const auto capacity =
      static_cast<std::size_t>(std::max(1, config_->pool.max_prepared_statements));
  if (auto evicted = server_->statements.add(stmt.hash, capacity)) {
    pr::append_close(tx_->client_scratch, 'S', pr::server_statement_name(evicted));
    tx_->pending.push({Kind::CloseComplete, true});
    pool_->note_statement_eviction();
  }
  append_parse_raw(tx_->client_scratch, pr::server_statement_name(stmt.hash), stmt.query,
                   stmt.param_types);
  pr::PendingResponse parse{Kind::ParseComplete, swallow};
  parse.statement_hash = stmt.hash;
  tx_->pending.push(parse);
  mark_client_scratch(from);
}

void ClientSession::plan_parse(const pr::Frame& f, std::size_t offset) {
  auto parse = pr::read_parse(f);
  if (parse) {
    bool changes_settings = false;
    if (auto why = refusal(parse->query, &changes_settings)) {
      // The server raises the error itself, so a transaction in progress fails as it would
      // for any error; then, as after any error, nothing more is sent until Sync.
      const std::size_t from = tx_->client_scratch.size();
      append_parse_raw(tx_->client_scratch, "", routing::raise_error_statement("0A000", *why), {});
      // Bind: unnamed portal and statement, no parameter formats, parameters or result formats.
      static constexpr char kEmptyBind[] = {'B', 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0};
      tx_->client_scratch.append(kEmptyBind, sizeof kEmptyBind);
      pr::append_execute(tx_->client_scratch, "", 0);
      mark_client_scratch(from);
      tx_->pending.push({Kind::ParseComplete, true});
      tx_->pending.push({Kind::BindComplete, true});
      tx_->pending.push({Kind::Execute});
      tx_->drop_until_sync = true;
      return;
    }
    if (changes_settings) server_->settings_unknown = true;
  }
  if (!parse || parse->statement.empty()) {
    pass_client(offset, f.whole.size());
    tx_->pending.push({Kind::ParseComplete});
    return;
  }
  const auto& stmt = tx_->statements.define(parse->statement, parse->query, parse->param_types);
  if (server_->statements.contains(stmt.hash)) {
    server_->statements.touch(stmt.hash);
    pr::PendingResponse done{Kind::Synthetic};
    done.action = kSynthParseComplete;
    tx_->pending.push(done);
    return;
  }
  prepare_on_server(stmt, false);
}

void ClientSession::plan_bind(const pr::Frame& f, std::size_t offset) {
  auto portal = cstring_at(f.body, 0);
  auto name = portal ? cstring_at(f.body, portal->size() + 1) : std::nullopt;
  const pr::PreparedStatement* stmt =
      name && !name->empty() ? tx_->statements.find(*name) : nullptr;
  if (!stmt) {
    pass_client(offset, f.whole.size());
    tx_->pending.push({Kind::BindComplete});
    return;
  }
  if (server_->statements.contains(stmt->hash)) {
    server_->statements.touch(stmt->hash);
  } else {
    prepare_on_server(*stmt, true);
  }
  // Same Bind with the server-side name spliced in; parameters are copied unchanged.
  const std::size_t from = tx_->client_scratch.size();
  const std::string server_name = pr::server_statement_name(stmt->hash);
  const std::string_view rest = f.body.substr(portal->size() + 1 + name->size() + 1);
  const auto len =
      static_cast<std::uint32_t>(4 + portal->size() + 1 + server_name.size() + 1 + rest.size());
  tx_->client_scratch += 'B';
  tx_->client_scratch += static_cast<char>(len >> 24);
  tx_->client_scratch += static_cast<char>(len >> 16);
  tx_->client_scratch += static_cast<char>(len >> 8);
  tx_->client_scratch += static_cast<char>(len);
  tx_->client_scratch.append(*portal);
  tx_->client_scratch += '\0';
  tx_->client_scratch.append(server_name);
  tx_->client_scratch += '\0';
  tx_->client_scratch.append(rest);
  mark_client_scratch(from);
  tx_->pending.push({Kind::BindComplete});
}

void ClientSession::plan_describe(const pr::Frame& f, std::size_t offset) {
  auto d = pr::read_describe(f);
  const pr::PreparedStatement* stmt =
      d && d->kind == 'S' && !d->name.empty() ? tx_->statements.find(d->name) : nullptr;
  if (!stmt) {
    pass_client(offset, f.whole.size());
  } else {
    if (server_->statements.contains(stmt->hash)) {
      server_->statements.touch(stmt->hash);
    } else {
      prepare_on_server(*stmt, true);
    }
    const std::size_t from = tx_->client_scratch.size();
    pr::append_describe(tx_->client_scratch, 'S', pr::server_statement_name(stmt->hash));
    mark_client_scratch(from);
  }
  tx_->pending.push({Kind::Describe});
}

void ClientSession::plan_close(const pr::Frame& f, std::size_t offset) {
  auto c = pr::read_close(f);
  if (c && c->kind == 'S' && !c->name.empty() && tx_->statements.erase(c->name)) {
    // The server-side statement may be shared and stays prepared. Closing a name that does
    // not exist is not an error, so the server still answers CloseComplete in its place.
    const std::size_t from = tx_->client_scratch.size();
    pr::append_close(tx_->client_scratch, 'S', kNoStatement);
    mark_client_scratch(from);
  } else {
    pass_client(offset, f.whole.size());
  }
  tx_->pending.push({Kind::CloseComplete});
}

void ClientSession::plan_query(const pr::Frame& f, std::size_t offset) {
  using routing::StatementKind;
  auto sql = pr::read_query(f);
  pr::PendingResponse rfq{Kind::ReadyForQuery};
  bool changes_settings = false;
  auto send_empty_query = [&](std::uint8_t note_kind, std::string text) {
    const std::size_t from = tx_->client_scratch.size();
    pr::append_query(tx_->client_scratch, "");
    mark_client_scratch(from);
    rfq.action = kEmptyAsNote;
    rfq.note = add_note(note_kind, std::move(text));
    tx_->pending.push(rfq);
  };
  if (sql && plainly_harmless(*sql)) sql.reset();  // forwarded as it is
  if (sql) {
    routing::StatementInfo info;
    if (auto why = refusal(*sql, &changes_settings, &info)) {
      // Raised by the server, so a transaction in progress fails as with any error.
      const std::size_t from = tx_->client_scratch.size();
      pr::append_query(tx_->client_scratch, routing::raise_error_statement("0A000", *why));
      mark_client_scratch(from);
      tx_->pending.push(rfq);
      return;
    }
    const bool idle = server_->tx_status == 'I';
    if (changes_settings && (info.multiple_statements || !idle || info.name.empty())) {
      // Not one SET between transactions: pgvalve cannot follow it, so the server is reset
      // before anyone's next transaction on it.
      server_->settings_unknown = true;
    }
    if (!info.multiple_statements) {
      switch (info.kind) {
        case StatementKind::Deallocate:
          if (info.all) {
            tx_->statements.clear();
            send_empty_query(Note::CommandTag, "DEALLOCATE ALL");
            return;
          }
          if (tx_->statements.erase(info.name.view())) {
            send_empty_query(Note::CommandTag, "DEALLOCATE");
            return;
          }
          break;  // an SQL-level PREPAREd statement: the server's business
        case StatementKind::Discard:
          if (info.discard_all) {
            tx_->statements.clear();
            server_->statements.clear();
            rfq.action = kApplyNote;
            rfq.note = add_note(Note::Discard, "");
          }
          break;
        case StatementKind::Set:
          if (idle && !info.name.empty()) {
            rfq.action = kApplyNote;
            rfq.note = info.value_is_default ? add_note(Note::Reset, std::string(info.name.view()))
                                             : add_note(Note::Set, std::string(info.name.view()),
                                                        std::string(info.value));
          }
          break;
        case StatementKind::Reset:
          if (idle && !info.name.empty()) {
            rfq.action = kApplyNote;
            rfq.note = add_note(Note::Reset, std::string(info.name.view()));
          }
          break;
        case StatementKind::ResetAll:
          if (idle) {
            rfq.action = kApplyNote;
            rfq.note = add_note(Note::ResetAll, "");
          }
          break;
        default:
          break;
      }
    }
  }
  pass_client(offset, f.whole.size());
  tx_->pending.push(rfq);
}

void ClientSession::apply_note(const Note& note) {
  switch (note.kind) {
    case Note::Set:
      // Reported parameters follow ParameterStatus; the rest are remembered as written.
      if (is_synced_setting(note.name)) return;
      client_settings_.set(note.name, note.value, false, true);
      server_->settings.set(note.name, note.value, false, true);
      return;
    case Note::Reset:
      if (is_synced_setting(note.name)) return;
      server_->settings.erase(note.name);
      if (const Setting* s = startup_settings_.find(note.name)) {
        client_settings_.set(s->name, s->value, false, s->raw);
      } else {
        client_settings_.erase(note.name);
      }
      return;
    case Note::Discard:
      if (tx_->hub && tx_->sink) tx_->hub->unlisten(tx_->sink.get(), "*", nullptr);
      [[fallthrough]];
    case Note::ResetAll:
      server_->settings.keep_reported_only();
      client_settings_.keep_reported_only();
      for (const auto& s : startup_settings_.all()) {
        client_settings_.set(s.name, s.value, false, s.raw);
      }
      return;
    default:
      return;
  }
}

void ClientSession::emit_synthetic_heads() {
  while (!tx_->pending.empty() && tx_->pending.front().kind == Kind::Synthetic) {
    const auto& head = tx_->pending.front();
    const std::size_t from = tx_->server_scratch.size();
    if (head.action == kSynthParseComplete) {
      pr::append_parse_complete(tx_->server_scratch);
    }
    tx_->server_spans.push_back({true, from, tx_->server_scratch.size() - from});
    tx_->pending.pop();
  }
}

void ClientSession::complete_front(char tx_status) {
  auto& head = tx_->pending.front();
  if (head.kind == Kind::ReadyForQuery && head.action == kApplyNote && !head.failed &&
      tx_status == 'I') {
    apply_note(tx_->notes[head.note]);
  }
  tx_->pending.pop();
  if (tx_->pending.empty()) tx_->notes.clear();
}

// Decides what the client gets for one server message (appends to tx_->server_spans).
void ClientSession::plan_server_frame(const pr::Frame& f, std::size_t offset) {
  auto pass = [&] {
    if (!tx_->server_spans.empty() && !tx_->server_spans.back().scratch &&
        tx_->server_spans.back().offset + tx_->server_spans.back().size == offset) {
      tx_->server_spans.back().size += f.whole.size();
    } else {
      tx_->server_spans.push_back({false, offset, f.whole.size()});
    }
  };
  emit_synthetic_heads();
  if (tx_->pending.empty()) {
    pass();  // e.g. a notice after the last ReadyForQuery
    return;
  }
  auto& head = tx_->pending.front();
  switch (pr::match_response(head.kind, f.tag)) {
    case pr::ResponseMatch::Async:
      pass();
      return;
    case pr::ResponseMatch::Intermediate:
      if (f.tag == 'E') head.failed = true;
      if (head.action == kEmptyAsNote && f.tag == 'I') {
        const Note& note = tx_->notes[head.note];
        const std::size_t from = tx_->server_scratch.size();
        pr::append_command_complete(tx_->server_scratch, note.name);
        tx_->server_spans.push_back({true, from, tx_->server_scratch.size() - from});
        return;
      }
      pass();
      return;
    case pr::ResponseMatch::Completes:
      if (!head.swallow) pass();
      complete_front(f.tag == 'Z' ? server_->tx_status : 'I');
      emit_synthetic_heads();
      return;
    case pr::ResponseMatch::Error:
      pass();
      // The failed request and everything up to the next Sync get no answer of their own.
      while (!tx_->pending.empty() && tx_->pending.front().kind != Kind::ReadyForQuery) {
        if (tx_->pending.front().statement_hash) {
          server_->statements.erase(tx_->pending.front().statement_hash);
        }
        tx_->pending.pop();
      }
      if (!tx_->pending.empty()) tx_->pending.front().failed = true;
      return;
  }
}

}  // namespace pgvalve::proxy
