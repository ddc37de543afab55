// Helpers for driving a session::Session with message transcripts: client messages built with
// protocol/'s builders, server answers as PostgreSQL sends them, and readers for what the session
// asks the I/O layer to write. Every step is copied into a Step (the core reuses its Actions) and
// checked against session/state.h's transition table.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/messages.h"
#include "protocol/prepared_statements.h"
#include "protocol/wire.h"
#include "routing/router.h"
#include "session/session.h"
#include "tests/support/fresh_server.h"

namespace pgvalve::session::testing {

using namespace std::chrono_literals;

inline const Clock::time_point T0 = Clock::time_point{} + std::chrono::hours(1);

// ---- Client messages -------------------------------------------------------------------------

inline std::string query(std::string_view sql) {
  std::string out;
  protocol::append_query(out, sql);
  return out;
}

inline std::string parse(std::string_view statement, std::string_view sql) {
  std::string out;
  protocol::append_parse(out, statement, sql, {});
  return out;
}

inline std::string bind_to(std::string_view portal, std::string_view statement) {
  std::string out;
  protocol::append_bind(out, portal, statement, protocol::kBindWithoutParameters);
  return out;
}

// A Bind of `statement` to the unnamed portal with `values` as text parameters.
inline std::string bind_values(std::string_view statement, const std::vector<std::string>& values) {
  std::string rest;
  protocol::append_i16(rest, 0);
  protocol::append_i16(rest, static_cast<std::int16_t>(values.size()));
  for (const std::string& v : values) {
    protocol::append_i32(rest, static_cast<std::int32_t>(v.size()));
    rest += v;
  }
  protocol::append_i16(rest, 0);
  std::string out;
  protocol::append_bind(out, "", statement, rest);
  return out;
}

inline std::string describe(char kind, std::string_view name) {
  std::string out;
  protocol::append_describe(out, kind, name);
  return out;
}

inline std::string close_message(char kind, std::string_view name) {
  std::string out;
  protocol::append_close(out, kind, name);
  return out;
}

inline std::string execute(std::string_view portal = "", std::int32_t max_rows = 0) {
  std::string out;
  protocol::append_execute(out, portal, max_rows);
  return out;
}

inline std::string sync() {
  std::string out;
  protocol::append_sync(out);
  return out;
}

inline std::string flush() {
  std::string out;
  protocol::append_flush(out);
  return out;
}

inline std::string terminate() {
  std::string out;
  protocol::append_terminate(out);
  return out;
}

// A tagged message with any body.
inline std::string message(char tag, std::string_view body) {
  std::string out(1, tag);
  const auto n = static_cast<std::uint32_t>(body.size() + 4);
  out += static_cast<char>(n >> 24);
  out += static_cast<char>(n >> 16);
  out += static_cast<char>(n >> 8);
  out += static_cast<char>(n);
  out += body;
  return out;
}

// ---- Server messages -------------------------------------------------------------------------

inline std::string ready(char status = 'I') {
  std::string out;
  protocol::append_ready_for_query(out, status);
  return out;
}

inline std::string complete(std::string_view tag) {
  std::string out;
  protocol::append_command_complete(out, tag);
  return out;
}

inline std::string parse_complete() {
  std::string out;
  protocol::append_parse_complete(out);
  return out;
}

inline std::string bind_complete() {
  std::string out;
  protocol::append_bind_complete(out);
  return out;
}

inline std::string close_complete() {
  std::string out;
  protocol::append_close_complete(out);
  return out;
}

inline std::string no_data() {
  std::string out;
  protocol::append_no_data(out);
  return out;
}

inline std::string row_description(std::size_t columns = 1) {
  std::vector<std::string_view> names(columns, "c");
  std::string out;
  protocol::append_row_description(out, names);
  return out;
}

// A RowDescription of one int8 column (what count(*) answers).
inline std::string int8_description(std::string_view name = "count") {
  std::string out;
  const std::size_t at = protocol::begin_message(out, 'T');
  protocol::append_i16(out, 1);
  protocol::append_cstr(out, name);
  protocol::append_i32(out, 0);
  protocol::append_i16(out, 0);
  protocol::append_i32(out, 20);  // int8
  protocol::append_i16(out, 8);
  protocol::append_i32(out, -1);
  protocol::append_i16(out, 0);
  protocol::end_message(out, at);
  return out;
}

inline std::string data_row(const std::vector<std::string>& values) {
  std::vector<std::optional<std::string_view>> v(values.begin(), values.end());
  std::string out;
  protocol::append_data_row(out, v);
  return out;
}

inline std::string error_message(std::string_view sqlstate, std::string_view severity = "ERROR",
                                 std::string_view message = "boom") {
  std::string out;
  protocol::ErrorFields e;
  e.severity = severity;
  e.sqlstate = sqlstate;
  e.message = message;
  protocol::append_error_response(out, e);
  return out;
}

inline std::string notice(std::string_view severity = "NOTICE", std::string_view sqlstate = "00000",
                          std::string_view message = "note") {
  std::string out;
  protocol::ErrorFields e;
  e.severity = severity;
  e.sqlstate = sqlstate;
  e.message = message;
  protocol::append_notice_response(out, e);
  return out;
}

inline std::string parameter_status(std::string_view name, std::string_view value) {
  std::string out;
  protocol::append_parameter_status(out, name, value);
  return out;
}

inline std::string notification(std::string_view channel, std::string_view payload) {
  std::string out;
  protocol::append_notification_response(out, {42, channel, payload});
  return out;
}

// A server's answer to a simple query that returns one row of one text column.
inline std::string row_result(std::string_view value, std::string_view tag, char status = 'I') {
  return row_description() + data_row({std::string(value)}) + complete(tag) + ready(status);
}

// The decider part's answer to pg_current_xact_id() (two_phase.h), inside its transaction.
inline std::string xid_result(std::string_view xid = "4242", char status = 'T') {
  return row_description() + data_row({std::string(xid)}) + complete("SELECT 1") + ready(status);
}

inline std::string command_result(std::string_view tag, char status = 'I') {
  return complete(tag) + ready(status);
}

inline std::string error_result(std::string_view sqlstate, char status = 'I') {
  return error_message(sqlstate) + ready(status);
}

// The pin-check query's answer: one row of five counts.
inline std::string pin_check_result(bool holds) {
  const std::string n = holds ? "1" : "0";
  return row_description(5) + data_row({"0", "0", n, "0", "0"}) + complete("SELECT 1") + ready('I');
}

// ---- Reading byte streams ----------------------------------------------------------------------

inline std::string bytes_of(const std::vector<Chunk>& chunks) {
  std::string out;
  for (const auto& c : chunks)
    out.append(c.data, c.size);
  return out;
}

struct Msg {
  char tag = 0;
  std::string body;
  std::string whole;
};

inline std::vector<Msg> messages_of(std::string_view stream) {
  std::vector<Msg> out;
  while (!stream.empty()) {
    auto r = protocol::decode_frame(stream, 1u << 30);
    if (r.status != protocol::DecodeStatus::Ok) break;
    out.push_back({r.frame.tag, std::string(r.frame.body), std::string(r.frame.whole)});
    stream.remove_prefix(r.frame.whole.size());
  }
  return out;
}

// Message types of a byte stream, e.g. "TDCZ".
inline std::string tags_of(std::string_view stream) {
  std::string tags;
  for (const auto& m : messages_of(stream))
    tags += m.tag;
  return tags;
}

inline protocol::Frame frame_of(const Msg& m) {
  return protocol::decode_frame(m.whole, 1u << 30).frame;
}

// Simple query texts in a byte stream sent to a server.
inline std::vector<std::string> queries_in(std::string_view stream) {
  std::vector<std::string> out;
  for (const auto& m : messages_of(stream)) {
    if (auto q = protocol::read_query(frame_of(m))) out.emplace_back(*q);
  }
  return out;
}

// The statement texts of the Parse messages of a byte stream, in order.
inline std::vector<std::string> parsed_in(std::string_view stream) {
  std::vector<std::string> out;
  for (const auto& m : messages_of(stream)) {
    if (m.tag != 'P') continue;
    if (auto p = protocol::read_parse(frame_of(m))) out.emplace_back(p->query);
  }
  return out;
}

struct ErrorSeen {
  std::string severity;
  std::string sqlstate;
  std::string message;
};

// The ErrorResponses of a byte stream, in order.
inline std::vector<ErrorSeen> errors_in(std::string_view stream) {
  std::vector<ErrorSeen> out;
  for (const auto& m : messages_of(stream)) {
    if (m.tag != 'E') continue;
    if (auto e = protocol::read_error_response(frame_of(m))) {
      out.push_back({std::string(e->severity), std::string(e->sqlstate), std::string(e->message)});
    }
  }
  return out;
}

// The SQLSTATEs of a stream's ErrorResponses, e.g. "08006,08006".
inline std::string sqlstates_in(std::string_view stream) {
  std::string out;
  for (const auto& e : errors_in(stream)) {
    if (!out.empty()) out += ',';
    out += e.sqlstate;
  }
  return out;
}

// The ReadyForQuery statuses of a stream, e.g. "IT".
inline std::string statuses_in(std::string_view stream) {
  std::string out;
  for (const auto& m : messages_of(stream)) {
    if (auto s = protocol::read_ready_for_query(frame_of(m))) out += *s;
  }
  return out;
}

// Parse messages of a stream: (statement, query).
inline std::vector<std::pair<std::string, std::string>> parses_in(std::string_view stream) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& m : messages_of(stream)) {
    if (auto p = protocol::read_parse(frame_of(m))) {
      out.emplace_back(std::string(p->statement), std::string(p->query));
    }
  }
  return out;
}

// Statement names of the Bind messages of a stream.
inline std::vector<std::string> bound_statements_in(std::string_view stream) {
  std::vector<std::string> out;
  for (const auto& m : messages_of(stream)) {
    if (auto b = protocol::read_bind_head(frame_of(m))) out.emplace_back(b->statement);
  }
  return out;
}

// "S:name" / "P:name" of the Close (or Describe, with tag 'D') messages of a stream.
inline std::vector<std::string> targets_in(std::string_view stream, char tag) {
  std::vector<std::string> out;
  for (const auto& m : messages_of(stream)) {
    if (m.tag != tag) continue;
    auto d = tag == 'C' ? protocol::read_close(frame_of(m)) : protocol::read_describe(frame_of(m));
    if (d) out.push_back(std::string(1, d->kind) + ":" + std::string(d->name));
  }
  return out;
}

inline std::string server_name_of(std::string_view sql) {
  return std::string(
      std::string_view(protocol::server_statement_name(protocol::statement_hash(sql, {}))));
}

// ---- One step of the core, copied ------------------------------------------------------------

struct Op {
  LinkOp::Kind kind = LinkOp::Kind::Release;
  LinkId link = 0;
  std::string sql1;
  std::string sql2;
};

struct Step {
  std::string to_client;  // to_client chunks, then outbox
  std::string outbox;
  std::string to_server;
  LinkId server_link = 0;
  std::map<LinkId, std::string> to_links;  // to_links chunks, by link
  std::size_t consumed = 0;
  bool check_out = false;
  routing::Route route;
  std::vector<Op> ops;
  bool resume_client = false;
  bool close_client = false;
  HubRequest hub;
  int pinned_change = 0;
  int statement_evictions = 0;
  std::vector<PreparedPart> prepared_parts;
  std::string replica_refused_settings;

  bool has_op(LinkOp::Kind kind) const {
    for (const auto& op : ops) {
      if (op.kind == kind) return true;
    }
    return false;
  }
};

inline Step copy_step(const Actions& a) {
  Step s;
  s.to_client = bytes_of(a.to_client) + a.outbox;
  s.outbox = a.outbox;
  s.to_server = bytes_of(a.to_server);
  s.server_link = a.server_link;
  for (const auto& c : a.to_links)
    s.to_links[c.link] += c.chunk.view();
  s.consumed = a.consumed;
  s.check_out = a.check_out;
  s.route = a.route;
  for (const auto& op : a.link_ops)
    s.ops.push_back({op.kind, op.link, std::string(op.sql[0]), std::string(op.sql[1])});
  s.resume_client = a.resume_client;
  s.close_client = a.close_client;
  s.hub = a.hub;
  s.pinned_change = a.pinned_change;
  s.statement_evictions = a.statement_evictions;
  s.prepared_parts = a.prepared_parts;
  s.replica_refused_settings = a.replica_refused_settings;
  return s;
}

inline ServerParameters default_parameters() {
  return {{"DateStyle", "ISO, MDY"},
          {"TimeZone", "UTC"},
          {"client_encoding", "UTF8"},
          {"application_name", ""},
          {"server_version", "15.0"}};
}

// A session logged in (transaction mode unless told otherwise). Every call goes through one of
// the step functions below, which copy the Actions and check the state transition.
class SessionHarness {
 public:
  // `split_reads`: the router sends proven reads to replicas (as with replicas configured).
  explicit SessionHarness(SessionOptions options = {},
                          std::vector<std::pair<std::string, std::string>> startup = {},
                          ServerState* login_server = nullptr, bool split_reads = false,
                          const stats::Recorder* recorder = nullptr)
      : options_(options),
        router_(split_reads ? routing::Router(1, routing::RoutingPolicy{true, &write_functions_},
                                              &decisions_)
                            : routing::Router()),
        session_(options_, router_, workspaces_, recorder) {
    log_in(startup, login_server);
  }
  // A client of a sharded database (`sharding` outlives the harness); `split_reads`: its shards
  // have replicas that take reads.
  explicit SessionHarness(const routing::ShardingPolicy& sharding, SessionOptions options = {},
                          bool split_reads = false, const stats::Recorder* recorder = nullptr,
                          std::vector<std::pair<std::string, std::string>> startup = {})
      : options_(options),
        router_(sharding.map.shard_count(),
                routing::RoutingPolicy{split_reads, &write_functions_, &sharding, 1}, &decisions_),
        session_(options_, router_, workspaces_, recorder) {
    log_in(startup, nullptr);
  }

  static SessionOptions session_mode() {
    SessionOptions o;
    o.mode = config::PoolMode::Session;
    return o;
  }

  Session& session() { return session_; }
  WorkspacePool& workspaces() { return workspaces_; }
  std::shared_ptr<const ServerParameters> defaults() const { return defaults_; }
  SessionState state() const { return session_.state(); }

  // A fresh server connection as the pool would hand it out.
  static std::unique_ptr<ServerState> fresh_server() { return fresh_server_state(); }

  // ---- Raw steps ----
  Step client(std::string_view input, Clock::time_point now = T0) {
    return track(session_.on_client_data(input, now));
  }
  Step linked(ServerState& server, Clock::time_point now = T0) {
    return track(session_.on_linked(server, now));
  }
  Step checkout_failed(std::string_view sqlstate, Clock::time_point now = T0) {
    return track(session_.on_checkout_failed(sqlstate, "pgvalve: no server", now));
  }
  Step server(std::string_view input, Clock::time_point now = T0, LinkId link = 0) {
    return track(session_.on_server_data(link, input, now));
  }
  Step lost(Clock::time_point now = T0, LinkId link = 0) {
    return track(session_.on_server_lost(link, now));
  }
  Step timer(Clock::time_point now) { return track(session_.on_timer(now)); }
  Step gone() { return track(session_.on_client_gone()); }
  Step drain() { return track(session_.on_drain()); }
  Step reload_changed(config::ReloadChange change) {
    return track(session_.on_reload_change(change));
  }
  Step shard_map_changed() { return reload_changed(config::ReloadChange::ShardMap); }
  Step kill(std::string_view message = "pgvalve: disconnected by an administrator") {
    return track(session_.on_kill(message));
  }
  Step hub_done(std::optional<std::string_view> error = std::nullopt,
                std::string_view sqlstate = "08006") {
    return track(session_.on_hub_done(error, sqlstate));
  }
  Step hub_lost() { return track(session_.on_hub_lost("pgvalve: the hub's connection was lost")); }
  Step notify(std::string_view message, std::size_t unsent = 0) {
    return track(session_.on_notification(message, unsent));
  }
  // The client's buffer may not grow: `may_fit_later` as MemoryBudget says (Wait, not Never).
  Step memory_refused(bool may_fit_later = false, Clock::time_point now = T0) {
    return track(session_.on_client_memory_refused(may_fit_later, now));
  }

  // ---- Whole requests ----
  // Sends `input` from the client; when the session asks for a server, links `server` (running
  // its settings sync against `sync_answer` if it asks for one) and feeds the input again.
  // Returns what went to the server for the client's request.
  std::string send(std::string_view input, ServerState& server, bool* synced = nullptr,
                   Clock::time_point now = T0) {
    last_sync.clear();
    Step s = client(input, now);
    checked_out = s.check_out;
    if (s.check_out) {
      s = linked(server, now);
      if (!s.to_server.empty()) {
        if (synced) *synced = true;
        last_sync = s.to_server;
        s = server_step_for_sync(now);
        EXPECT_TRUE(s.resume_client);
      }
      s = client(input, now);
    }
    EXPECT_EQ(s.consumed, input.size());
    to_client_local = s.to_client;
    last = s;
    return s.to_server;
  }

  // The server answers; returns what the client gets.
  std::string answer(std::string_view server_bytes, Clock::time_point now = T0) {
    Step s = server(server_bytes, now);
    EXPECT_EQ(s.consumed, server_bytes.size());
    last_ops = s.ops;
    last = s;
    return s.to_client;
  }

  // What the server answers to pgvalve's settings sync (default: success).
  std::string sync_answer = command_result("SET");

  Step login;
  std::string login_reply;
  std::string last_sync;
  std::string to_client_local;
  std::vector<Op> last_ops;
  bool checked_out = false;
  Step last;
  std::vector<SessionState> states;  // after every step, from the login on

 private:
  Step server_step_for_sync(Clock::time_point now) { return server(sync_answer, now); }

  void log_in(const std::vector<std::pair<std::string, std::string>>& startup,
              ServerState* login_server) {
    defaults_ = std::make_shared<const ServerParameters>(default_parameters());
    login = track(session_.start(startup, defaults_, {1, 2}, login_server, T0));
    login_reply = login.to_client;
  }

  // Carries out a step as the I/O layer does (its statistics after its writes) and keeps it.
  Step track(const Actions& a) {
    session_.account();
    const SessionState now = session_.state();
    EXPECT_TRUE(transition_allowed(previous_, now))
        << "transition " << state_name(previous_) << " -> " << state_name(now);
    previous_ = now;
    states.push_back(now);
    return copy_step(a);
  }

  SessionOptions options_;
  WorkspacePool workspaces_;
  std::vector<std::string> write_functions_{"nextval"};
  routing::DecisionCache decisions_{64};
  routing::Router router_;
  std::shared_ptr<const ServerParameters> defaults_;
  Session session_;
  SessionState previous_ = SessionState::LoggingIn;
};

}  // namespace pgvalve::session::testing
