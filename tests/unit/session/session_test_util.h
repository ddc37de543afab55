// Helpers for driving a session::Session with message transcripts: client messages built with
// protocol/'s builders, server answers as PostgreSQL sends them, and readers for what the session
// asks the I/O layer to write.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/messages.h"
#include "routing/router.h"
#include "session/session.h"

namespace pgvalve::session::testing {

inline const Clock::time_point T0 = Clock::time_point{} + std::chrono::hours(1);

inline std::string query(std::string_view sql) {
  std::string out;
  protocol::append_query(out, sql);
  return out;
}

inline std::string bytes_of(const std::vector<Chunk>& chunks) {
  std::string out;
  for (const auto& c : chunks)
    out.append(c.data, c.size);
  return out;
}

// Message types of a byte stream, e.g. "TDCZ".
inline std::string tags_of(std::string_view stream) {
  std::string tags;
  while (stream.size() >= 5) {
    auto r = protocol::decode_frame(stream, 1 << 30);
    if (r.status != protocol::DecodeStatus::Ok) break;
    tags += r.frame.tag;
    stream.remove_prefix(r.frame.whole.size());
  }
  return tags;
}

// Simple query texts in a byte stream sent to a server.
inline std::vector<std::string> queries_in(std::string_view stream) {
  std::vector<std::string> out;
  while (!stream.empty()) {
    auto r = protocol::decode_frame(stream, 1 << 30);
    if (r.status != protocol::DecodeStatus::Ok) break;
    if (auto q = protocol::read_query(r.frame)) out.emplace_back(*q);
    stream.remove_prefix(r.frame.whole.size());
  }
  return out;
}

// A server's answer to a simple query that returns one row of one text column.
inline std::string row_result(std::string_view value, std::string_view tag, char status = 'I') {
  std::string out;
  const std::string_view columns[] = {"c"};
  protocol::append_row_description(out, columns);
  const std::optional<std::string_view> values[] = {value};
  protocol::append_data_row(out, values);
  protocol::append_command_complete(out, tag);
  protocol::append_ready_for_query(out, status);
  return out;
}

inline std::string command_result(std::string_view tag, char status = 'I') {
  std::string out;
  protocol::append_command_complete(out, tag);
  protocol::append_ready_for_query(out, status);
  return out;
}

inline std::string error_result(std::string_view sqlstate, char status = 'I') {
  std::string out;
  protocol::ErrorFields e;
  e.severity = "ERROR";
  e.sqlstate = sqlstate;
  e.message = "boom";
  protocol::append_error_response(out, e);
  protocol::append_ready_for_query(out, status);
  return out;
}

// A session in transaction mode (unless told otherwise), logged in, no server linked.
class SessionHarness {
 public:
  explicit SessionHarness(SessionOptions options = {},
                          std::vector<std::pair<std::string, std::string>> startup = {})
      : router_(1), session_(options, router_, workspaces_) {
    defaults_ = std::make_shared<const ServerParameters>(ServerParameters{
        {"DateStyle", "ISO, MDY"}, {"TimeZone", "UTC"}, {"client_encoding", "UTF8"},
        {"application_name", ""}, {"server_version", "15.0"}});
    const Actions& a = session_.start(startup, defaults_, {1, 2}, nullptr, T0);
    login_reply = a.outbox;
  }

  Session& session() { return session_; }
  std::shared_ptr<const ServerParameters> defaults() const { return defaults_; }

  // A fresh server connection as the pool would hand it out.
  static std::unique_ptr<ServerState> fresh_server() {
    auto s = std::make_unique<ServerState>();
    s->name = "db:5432";
    s->settings.set("DateStyle", "ISO, MDY", true);
    s->settings.set("TimeZone", "UTC", true);
    s->settings.set("client_encoding", "UTF8", true);
    s->settings.set("application_name", "", true);
    s->startup_parameters = {{"DateStyle", "ISO, MDY"}, {"TimeZone", "UTC"},
                             {"client_encoding", "UTF8"}, {"application_name", ""}};
    return s;
  }

  // Sends `input` from the client; when the session asks for a server, links `server` (running
  // its settings sync against `sync_answer` if it asks for one) and feeds the input again.
  // Returns what went to the server for the client's request.
  std::string send(std::string_view input, ServerState& server, bool* synced = nullptr) {
    const Actions* a = &session_.on_client_data(input, T0);
    if (a->check_out) {
      a = &session_.on_linked(server, T0);
      if (!a->to_server.empty()) {
        if (synced) *synced = true;
        last_sync = bytes_of(a->to_server);
        a = &session_.on_server_data(0, command_result("SET"), T0);
        EXPECT_TRUE(a->resume_client);
      }
      a = &session_.on_client_data(input, T0);
    }
    EXPECT_EQ(a->consumed, input.size());
    to_client_local = bytes_of(a->to_client) + a->outbox;
    return bytes_of(a->to_server);
  }

  // The server answers; returns what the client gets.
  std::string answer(std::string_view server_bytes) {
    const Actions& a = session_.on_server_data(0, server_bytes, T0);
    EXPECT_EQ(a.consumed, server_bytes.size());
    last_ops = a.link_ops;
    return bytes_of(a.to_client) + a.outbox;
  }

  std::string login_reply;
  std::string last_sync;
  std::string to_client_local;
  std::vector<LinkOp> last_ops;

 private:
  WorkspacePool workspaces_;
  routing::Router router_;
  std::shared_ptr<const ServerParameters> defaults_;
  Session session_;
};

}  // namespace pgvalve::session::testing
