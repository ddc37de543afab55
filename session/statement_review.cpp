// Reviewing a statement's text before it goes to a server: what it changes in the session
// (settings, prepared statements, savepoints — a Note each, settled when the server answers),
// what may pin the server to the client, and what is refused (by pool mode or a per-client cap).
#include <algorithm>
#include <charconv>
#include <optional>

#include "routing/sql_lexer.h"
#include "routing/sql_text.h"
#include "session/limits.h"
#include "session/session_internal.h"

namespace pgvalve::session {

using routing::StatementKind;

namespace {

// The text inside a plain '...' literal, with '' unescaped.
std::string unquote(std::string_view literal) {
  std::string out;
  if (literal.size() < 2) return out;
  const std::string_view body = literal.substr(1, literal.size() - 2);
  for (std::size_t i = 0; i < body.size(); ++i) {
    out += body[i];
    if (body[i] == '\'' && i + 1 < body.size() && body[i + 1] == '\'') ++i;
  }
  return out;
}

// Parameters of the current transaction only: set outside a transaction block they are gone at
// the next statement's start, so they are no session setting to replay (and a hot standby
// refuses a replay of transaction_isolation = serializable or transaction_read_only = off).
bool transaction_parameter(std::string_view name) {
  return name == "transaction_isolation" || name == "transaction_read_only" ||
         name == "transaction_deferrable";
}

}  // namespace

// SET SESSION CHARACTERISTICS AS TRANSACTION sets the default_transaction_* parameter of its
// one mode (pgjdbc's setReadOnly with readOnlyMode=always, and setTransactionIsolation, send
// one). Several modes at once are not followed.
void Session::session_characteristics_note(const routing::StatementInfo& info, Note& note) {
  using Flag = routing::StatementInfo::Flag;
  using Isolation = routing::StatementInfo::Isolation;
  note.kind = NoteKind::Unknown;
  if (info.transaction_modes != 1) return;
  auto on_off = [](Flag f) { return std::string(f == Flag::On ? "on" : "off"); };
  if (info.access_read_only != Flag::Unset) {
    note.name = "default_transaction_read_only";
    note.value = on_off(info.access_read_only);
  } else if (info.deferrable != Flag::Unset) {
    note.name = "default_transaction_deferrable";
    note.value = on_off(info.deferrable);
  } else {
    switch (info.isolation) {
      case Isolation::Unset:
        return;
      case Isolation::ReadUncommitted:
        note.value = "read uncommitted";
        break;
      case Isolation::ReadCommitted:
        note.value = "read committed";
        break;
      case Isolation::RepeatableRead:
        note.value = "repeatable read";
        break;
      case Isolation::Serializable:
        note.value = "serializable";
        break;
    }
    note.name = "default_transaction_isolation";
  }
  note.kind = NoteKind::Set;
  note.form = SettingForm::Literal;
}

// set_config($1, $2, false) through the extended protocol: the name and value its Bind gives.
// A value pgvalve cannot read as text (NULL, binary), a long one, or one past the client's
// caps (counted here: the review saw only the placeholders) leaves the setting unknown, which
// is safe: the server is reset before its next lender.
void Session::bind_setting(Note& note, std::string_view bind_rest, const Link& l) const {
  const BindParams params(bind_rest, {});
  auto text_of = [&](std::string_view ref) -> std::optional<std::string_view> {
    int number = 0;
    const auto [end, ec] = std::from_chars(ref.data() + 1, ref.data() + ref.size(), number);
    if (ec != std::errc() || end != ref.data() + ref.size()) return std::nullopt;
    const auto p = params.param(number);
    if (!p || !p->value || p->binary) return std::nullopt;
    return p->value;
  };
  note.bound = false;
  if (note.name.starts_with('$')) {
    const auto name = text_of(note.name);
    if (!name || name->empty()) {
      note.kind = NoteKind::Unknown;
      return;
    }
    note.name = lower(*name);
    if (transaction_parameter(note.name)) {
      note = Note{};
      return;
    }
  }
  if (note.value.starts_with('$')) {
    const auto value = text_of(note.value);
    if (!value) {
      note.kind = NoteKind::Unknown;
      return;
    }
    std::string literal;
    routing::append_literal(literal, *value);
    note.value = std::move(literal);
  }
  const std::size_t bytes = note.name.size() + note.value.size();
  const bool new_name = !client_settings_.find(note.name);
  if (bytes > kMaxBoundSettingBytes ||
      l.pending_setting_notes >= static_cast<int>(kMaxClientSettings) ||
      (new_name && client_settings_.size() >= kMaxClientSettings) ||
      client_settings_.bytes() + bytes > kMaxClientSettingBytes) {
    note = Note{};
    note.kind = NoteKind::Unknown;
  }
}

void Session::note_for(const routing::StatementInfo& info, Note& note) const {
  using SC = routing::StatementInfo::SetConfig;
  note = {};
  if (info.set_config == SC::Unknown || info.body_sets || info.opaque) {
    note.kind = NoteKind::Unknown;
    return;
  }
  if (info.set_config == SC::Session || info.set_config == SC::SessionBound) {
    note.kind = NoteKind::Set;
    note.form = SettingForm::Function;
    const bool name_bound = info.set_config_name.starts_with('$');
    note.name =
        name_bound ? std::string(info.set_config_name) : lower(unquote(info.set_config_name));
    note.value = std::string(info.set_config_value);
    note.bound = info.set_config == SC::SessionBound;
    if (transaction_parameter(note.name)) note = {};
    return;
  }
  switch (info.kind) {
    case StatementKind::Set: {
      if (info.name_unsupported || info.name.empty()) {
        note.kind = NoteKind::Unknown;
        return;
      }
      const std::string_view name = info.name.view();
      const std::string_view value = info.value;
      if (transaction_parameter(name)) return;
      if (name == "session_characteristics") {
        session_characteristics_note(info, note);
        return;
      }
      if (value.size() >= 4 && routing::iequals(value.substr(0, 4), "from")) {
        note.kind = NoteKind::Unknown;  // SET ... FROM CURRENT
        return;
      }
      note.name = std::string(name);
      if (info.value_is_default || (name == "role" && routing::iequals(value, "none"))) {
        note.kind = NoteKind::Reset;
        return;
      }
      note.kind = NoteKind::Set;
      note.form = SettingForm::Raw;
      note.value = std::string(value);
      return;
    }
    case StatementKind::Reset:
      if (info.name_unsupported || info.name.empty()) {
        note.kind = NoteKind::Unknown;
        return;
      }
      if (transaction_parameter(info.name.view())) return;
      note.kind = NoteKind::Reset;
      note.name = std::string(info.name.view());
      return;
    case StatementKind::ResetAll:
      note.kind = NoteKind::ResetAll;
      return;
    case StatementKind::Discard:
      if (info.discard_all) note.kind = NoteKind::Discard;
      note.statements_before = statements_ ? statements_->last_defined() : 0;
      return;
    case StatementKind::Deallocate:
      if (info.all) note.kind = NoteKind::DeallocateAll;
      note.statements_before = statements_ ? statements_->last_defined() : 0;
      return;
    case StatementKind::Listen:
    case StatementKind::Unlisten: {
      // Only what concerns a channel of the hub's: the rest is the server's own.
      const auto& hub = extras().listen_channels;
      if (hub.empty()) return;
      if (info.all) {
        note.kind = NoteKind::UnlistenAll;
        return;
      }
      const std::string_view channel = info.name.view();
      if (info.name.empty() || std::find(hub.begin(), hub.end(), channel) == hub.end()) return;
      note.kind = info.kind == StatementKind::Listen ? NoteKind::Listen : NoteKind::Unlisten;
      note.name = std::string(channel);
      return;
    }
    case StatementKind::Commit:
      note.kind = NoteKind::Commit;
      return;
    case StatementKind::Rollback:
      note.kind = NoteKind::Rollback;
      return;
    case StatementKind::Savepoint:
      note.kind = NoteKind::Savepoint;
      note.name = std::string(info.name.view());
      return;
    case StatementKind::Release:
      note.kind = NoteKind::Release;
      note.name = std::string(info.name.view());
      return;
    case StatementKind::RollbackToSavepoint:
      note.kind = NoteKind::RollbackTo;
      note.name = std::string(info.name.view());
      return;
    default:
      return;
  }
}

// Transaction mode: a statement that leaves state pinning its server, on a replica (BEGIN READ
// ONLY, a replica hint, pgvalve.route = replica). Pinned there, every later statement of the
// client would run on the replica and each write fail (25006), so it is refused, as with
// pool.pin_session_state: false. State only the server's pin check finds (a function pgvalve
// cannot read) still pins.
bool Session::refuse_state_on_replica(const Review& r, Link& l, bool extended, Flight& flight) {
  if (!r.leaves_state || l.route.kind != routing::Route::Kind::Replica) return false;
  raise_on_server("0A000", kStateOnReplica, extended, l, flight);
  return true;
}

// LISTEN/UNLISTEN that run on the client's own (pinned) server, for the channel cap.
void Session::count_server_listens(const Review& r) {
  if (r.unlisten_all && extras_) extras_->server_listens.clear();
  for (const auto& name : r.unlistened)
    std::erase(extras_to_change().server_listens, name);
  for (const auto& name : r.listened)
    extras_to_change().server_listens.push_back(name);
}

// Settings set by requests not yet answered (or by a transaction not yet committed) that the
// client does not have yet: their names (each once) and bytes.
void Session::in_flight_settings(std::vector<std::string>& names, std::size_t& bytes,
                                 std::size_t& pending) const {
  if (!work_) return;
  auto add = [&](const Note& n) {
    if (n.kind != NoteKind::Set || n.name.empty()) return;
    pending += n.name.size() + n.value.size();
    if (client_settings_.find(n.name)) return;
    bytes += n.name.size() + n.value.size();
    if (std::find(names.begin(), names.end(), n.name) == names.end()) names.push_back(n.name);
  };
  for (const auto& l : work_->links) {
    for (const auto& n : l.notes)
      add(n);
  }
  for (const auto& n : work_->rare().tx_notes)
    add(n);
}

// Whether the client's text may no longer read as written once `note`'s statement ran
// (text_reading()): settings pgvalve cannot follow, or standard_conforming_strings or
// client_encoding set, reset or restored to values under which it would not.
bool Session::may_change_reading(const Note& note) const {
  switch (note.kind) {
    case NoteKind::Unknown:
      return true;
    case NoteKind::ResetAll:
    case NoteKind::Discard:
      return !routing::text_reading(startup_value("client_encoding"),
                                    startup_value("standard_conforming_strings"))
                  .plain();
    case NoteKind::Set:
    case NoteKind::Reset: {
      const bool encoding = note.name == "client_encoding" || note.name == "names";
      if (!encoding && note.name != "standard_conforming_strings") return false;
      if (note.bound) return true;  // set_config($1, $2, false): the value comes with the Bind
      const std::string_view name = encoding ? "client_encoding" : note.name;
      const std::string_view value =
          note.kind == NoteKind::Reset ? startup_value(name) : std::string_view(note.value);
      routing::TextReading after = text_reading();
      const routing::TextReading changed =
          encoding ? routing::text_reading(value, "on") : routing::text_reading("", value);
      if (encoding) {
        after.encoding = changed.encoding;
      } else {
        after.backslash_escapes = changed.backslash_escapes;
      }
      return !after.plain();
    }
    default:
      return false;
  }
}

// Classifies every statement of `sql`: refusals by pool mode and per-client caps, state that may
// pin the server, temporary objects, and one note per statement when any statement needs one.
// `settling_transaction`: notes of settings wait for the end of the transaction, so its
// COMMIT/ROLLBACK needs a note too.
Review Session::review(std::string_view sql, bool settling_transaction,
                       std::vector<Note>& notes) const {
  Review r;
  const bool translate = options_.mode != config::PoolMode::Session;
  const std::size_t first_note = notes.size();
  // Settings and channels of requests still in flight count too: a client that pipelines
  // thousands of SETs or LISTENs must not pass the caps before the first answer comes back.
  // Names, each once; copies, as the notes they come from move while the review adds notes.
  std::vector<std::string> new_settings;
  std::size_t new_setting_bytes = 0;
  std::size_t pending_setting_bytes = 0;
  bool counted_in_flight = false;
  std::size_t open_savepoints = work_ ? work_->rare().savepoints.size() : 0;
  // What pgvalve reads of the text may not be what the server runs (routing/client_text.h):
  // whatever it seems to do, its settings are unknown and the server is asked afterwards what
  // session state it holds, as after a DO block.
  const bool readable = reads_as_written(sql);
  int count = 0;
  for (std::size_t offset = 0; offset < sql.size();) {
    auto info = routing::classify(sql.substr(offset));
    if (info.kind == StatementKind::Empty) break;
    if (count++ == 0) {
      r.first = info;
    } else {
      r.single = false;
    }
    Note note;
    note_for(info, note);
    if (!readable && (note.kind == NoteKind::None || is_setting_note(note.kind))) {
      note = Note{};
      note.kind = NoteKind::Unknown;
    }
    if (!r.changes_reading) r.changes_reading = may_change_reading(note);
    if (note.kind == NoteKind::Commit || note.kind == NoteKind::Rollback) {
      // Nothing to settle at the end of a transaction that changed no setting.
      if (!settling_transaction && !r.has_notes) note.kind = NoteKind::None;
    }
    if (info.temporary && !info.on_commit_drop) r.temporary = true;
    if (translate) {
      const char* why = nullptr;
      const bool listens = info.kind == StatementKind::Listen || info.body_listens;
      const bool state_that_pins = info.calls_advisory_session_lock ||
                                   (info.kind == StatementKind::Declare && info.with_hold) ||
                                   (info.temporary && !info.on_commit_drop) || listens ||
                                   info.kind == StatementKind::Prepare;
      if (options_.mode == config::PoolMode::Statement && info.kind == StatementKind::Begin) {
        why =
            "pgvalve: transaction blocks are not allowed in statement pool mode; use pool mode "
            "transaction for multi-statement transactions";
      } else if (info.kind == StatementKind::PrepareTransaction) {
        why =
            "pgvalve: PREPARE TRANSACTION is not supported through transaction pooling; use a "
            "session pool";
      } else if (state_that_pins && !options_.pin_session_state) {
        if (info.calls_advisory_session_lock) {
          why =
              "pgvalve: session-level advisory locks cannot work in transaction pooling (the "
              "lock would stay on a server other clients use); use pg_advisory_xact_lock, a "
              "session pool, or pool.pin_session_state: true";
        } else if (info.kind == StatementKind::Declare) {
          why =
              "pgvalve: WITH HOLD cursors cannot outlive a transaction in transaction pooling; "
              "use a session pool or pool.pin_session_state: true";
        } else if (listens) {
          why =
              "pgvalve: LISTEN inside a transaction or with other statements is not supported "
              "in transaction pooling; send LISTEN on its own, use a session pool, or "
              "pool.pin_session_state: true";
        } else if (info.kind == StatementKind::Prepare) {
          why =
              "pgvalve: SQL PREPARE would leave the statement on a server other clients use in "
              "transaction pooling; use your driver's protocol-level prepared statements, a "
              "session pool, or pool.pin_session_state: true";
        } else {
          why =
              "pgvalve: temporary objects (tables, views, sequences, functions, types) "
              "outlive the transaction and would be seen by other clients in transaction "
              "pooling; add ON COMMIT DROP to a table, use a session pool, or "
              "pool.pin_session_state: true";
        }
      }
      if (why) {
        r.refusal_sqlstate = "0A000";
        r.refusal = why;
        return r;
      }
      if (state_that_pins) r.leaves_state = true;
      // What may release pinning state is worth a check only when the client is pinned: a
      // DROP or DEALLOCATE of an unpinned client would otherwise cost a round trip each.
      const bool may_unpin =
          info.calls_advisory_unlock || info.kind == StatementKind::Drop ||
          info.kind == StatementKind::Close || info.kind == StatementKind::Discard ||
          info.kind == StatementKind::Deallocate || info.kind == StatementKind::Unlisten;
      // A temporary object can be made without TEMP in the text: a CREATE or SELECT … INTO
      // with pg_temp first in search_path (set by SET, the login's options or ALTER ROLE),
      // EXPLAIN ANALYZE of either. The server is asked afterwards, as after a DO block.
      const bool may_make_temporary =
          (info.kind == StatementKind::Create && !info.on_commit_drop) ||
          info.kind == StatementKind::Explain || info.selects_into;
      if (state_that_pins || info.opaque || may_make_temporary || (pinned_ && may_unpin) ||
          !readable) {
        r.check_pins = true;
      }
      if (info.kind == StatementKind::Listen && !info.name.empty()) {
        const std::string_view channel = info.name.view();
        auto has = [channel](const std::vector<std::string>& v) {
          return std::find(v.begin(), v.end(), channel) != v.end();
        };
        if (!has(extras().listen_channels) && !has(extras().server_listens) && !has(r.listened)) {
          if (extras().listen_channels.size() + extras().server_listens.size() +
                  r.listened.size() >=
              kMaxClientListenChannels) {
            r.refusal_sqlstate = "53400";
            r.refusal = "pgvalve: a client may listen on at most " +
                        std::to_string(kMaxClientListenChannels) +
                        " channels; UNLISTEN channels it no longer needs";
            return r;
          }
          r.listened.emplace_back(channel);
        }
      }
      if (info.kind == StatementKind::Unlisten) {
        if (info.all) {
          r.unlisten_all = true;
        } else if (!info.name.empty()) {
          r.unlistened.emplace_back(info.name.view());
        }
      }
      if (note.kind == NoteKind::Set) {
        if (!counted_in_flight) {
          counted_in_flight = true;
          in_flight_settings(new_settings, new_setting_bytes, pending_setting_bytes);
        }
        pending_setting_bytes += note.name.size() + note.value.size();
        if (pending_setting_bytes > kMaxClientSettingBytes) {
          r.refusal_sqlstate = "54000";
          r.refusal =
              "pgvalve: the settings this client changed and has not committed hold more than "
              "64 KiB; commit or roll back its transaction, or set smaller values";
          return r;
        }
      }
      if (note.kind == NoteKind::Set && !is_synced_setting(note.name)) {
        if (!client_settings_.find(note.name) &&
            std::find(new_settings.begin(), new_settings.end(), note.name) == new_settings.end()) {
          new_settings.push_back(note.name);
        }
        new_setting_bytes += note.name.size() + note.value.size();
        if (client_settings_.size() + new_settings.size() > kMaxClientSettings) {
          r.refusal_sqlstate = "53400";
          r.refusal = "pgvalve: a client may change at most " + std::to_string(kMaxClientSettings) +
                      " session settings; RESET the ones it no longer needs";
          return r;
        }
        if (client_settings_.bytes() + new_setting_bytes > kMaxClientSettingBytes) {
          r.refusal_sqlstate = "54000";
          r.refusal =
              "pgvalve: the session settings of this client hold more than 64 KiB; RESET the "
              "ones it no longer needs";
          return r;
        }
      }
    }
    if (note.kind == NoteKind::Savepoint && ++open_savepoints > kMaxTransactionSavepoints) {
      r.refusal_sqlstate = "53400";
      r.refusal = "pgvalve: a transaction may hold at most " +
                  std::to_string(kMaxTransactionSavepoints) +
                  " savepoints at once; RELEASE the ones it no longer needs";
      return r;
    }
    if (note.kind != NoteKind::None) r.has_notes = true;
    notes.push_back(std::move(note));
    if (info.next_offset == 0 || !info.multiple_statements) break;
    offset += info.next_offset;
  }
  if (!r.has_notes) notes.resize(first_note);
  r.first_note = first_note;
  r.note_count = notes.size() - first_note;
  return r;
}

}  // namespace pgvalve::session
