// libFuzzer target for the session core (session/): a script of steps — client bytes, server
// bytes, a server linked when a checkout is asked for, a server lost, timers, notifications, the
// listen hub's answers, the client leaving, shutdown — played against one Session as the I/O
// layer (proxy/client_session.cpp) would, checking after every step the invariants the I/O layer
// relies on. Built and run by tests/fuzz/run; by hand, from the repository root:
//
//   FUZZ_SECONDS=60 tests/fuzz/run session_fuzz
//   build-fuzz/session_fuzz <crash-file>             # replay a reproducer it reported
//   SESSION_FUZZ_TRACE=1 build-fuzz/session_fuzz <file>   # ... printing every step
//
// Input: byte 0 picks the options (pool mode, pin_session_state, timeouts, caps), byte 1 the
// client's startup parameters; then steps, each an opcode byte and its operands (see play()).
// Seeds: tests/fuzz/corpus/session_fuzz/ (from tests/fuzz/make_corpus.py).
//
// Invariants (a violation aborts with its name):
//  - consumed <= the input of the step; events consume nothing;
//  - chunks are readable, and those pointing into the session's own memory keep their bytes
//    until the next step from the same source (client, server link, events);
//  - every state change is allowed by session/state.h's table;
//  - bytes for a server are whole frontend messages, for a linked server only; bytes for the
//    client parse as a stream of backend messages (nothing lands inside a message);
//  - link operations name linked servers only, a server is released only outside a transaction,
//    and what the session says is linked matches the operations it asked for;
//  - a checkout is asked for only when the session waits for a server;
//  - after close_client nothing more is written or asked; after on_client_gone no server is held;
//  - pinned_change keeps pinned() and the pool's count equal;
//  - a request that waited resumes in a bounded number of steps.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/frame.h"
#include "protocol/messages.h"
#include "routing/router.h"
#include "session/session.h"
#include "session/state.h"
#include "tests/support/fresh_server.h"

namespace {

using namespace pgvalve;
using session::Actions;
using session::Chunk;
using session::Clock;
using session::LinkId;
using session::LinkOp;
using session::ServerState;
using session::Session;
using session::SessionState;

[[noreturn]] void violated(const char* what, int line) {
  std::fprintf(stderr, "session_fuzz: invariant violated (line %d): %s\n", line, what);
  std::abort();
}
#define CHECK(cond)                         \
  do {                                      \
    if (!(cond)) violated(#cond, __LINE__); \
  } while (0)

class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : p_(data), n_(size) {}
  bool empty() const { return n_ == 0; }
  std::uint8_t byte() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }
  std::string_view bytes(std::size_t want) {
    const std::size_t k = want < n_ ? want : n_;
    std::string_view out(reinterpret_cast<const char*>(p_), k);
    p_ += k;
    n_ -= k;
    return out;
  }

 private:
  const std::uint8_t* p_;
  std::size_t n_;
};

// ---- Canned messages, so the fuzzer reaches deep states quickly -------------------------------

const char* const kSql[] = {
    "select 1",
    "begin",
    "commit",
    "rollback",
    "SET statement_timeout = '5s'",
    "SET application_name = 'x'",
    "SET LOCAL work_mem = '1MB'",
    "RESET statement_timeout",
    "RESET ALL",
    "DISCARD ALL",
    "LISTEN jobs",
    "UNLISTEN *",
    "UNLISTEN jobs",
    "select pg_advisory_lock(1)",
    "select pg_advisory_unlock(1)",
    "create temp table t (a int)",
    "create temp table t (a int) on commit drop",
    "declare c cursor with hold for select 1",
    "close c",
    "drop table t",
    "PREPARE q AS select 1",
    "DEALLOCATE s1",
    "DEALLOCATE q",
    "DEALLOCATE ALL",
    "PREPARE TRANSACTION 'x'",
    "SAVEPOINT a",
    "ROLLBACK TO a",
    "RELEASE a",
    "select set_config('search_path', 'a', false)",
    "select set_config('search_path', 'a', true)",
    "select set_config('x.y', current_user, false)",
    "SET ROLE r",
    "RESET ROLE",
    "SET ROLE NONE",
    "SET SESSION AUTHORIZATION u",
    "SET SESSION AUTHORIZATION DEFAULT",
    "SET statement_timeout FROM CURRENT",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "SET statement_timeout = '1s'; SET lock_timeout = '2s'",
    "BEGIN; SET work_mem = '2MB'; COMMIT",
    "copy t from stdin",
    "select 1 into temp t2",
    "",
    "LISTEN a; select 1",
    "SET TimeZone = 'Europe/Paris'",
    "DO $$BEGIN SET search_path = x; END$$",
    "DO $$BEGIN CREATE TEMP TABLE t (a int); END$$",
    "select 1/0",
};
constexpr std::size_t kSqlCount = sizeof kSql / sizeof kSql[0];

const char* const kNames[] = {"", "s1", "s2", "p"};

std::string client_message(Reader& in) {
  std::string out;
  const std::uint8_t kind = in.byte();
  const std::string_view sql = kSql[in.byte() % kSqlCount];
  const std::string_view name = kNames[(kind >> 5) & 3];
  switch (kind % 16) {
    case 0:
    case 1:
      protocol::append_query(out, sql);
      break;
    case 2:
      protocol::append_parse(out, name, sql, {});
      break;
    case 3:
      protocol::append_bind(out, kind & 0x80 ? "p" : "", name, protocol::kBindWithoutParameters);
      break;
    case 4:
      protocol::append_describe(out, kind & 0x80 ? 'P' : 'S', name);
      break;
    case 5:
      protocol::append_execute(out, kind & 0x80 ? "p" : "", kind & 0x10 ? 1 : 0);
      break;
    case 6:
    case 7:
      protocol::append_sync(out);
      break;
    case 8:
      protocol::append_flush(out);
      break;
    case 9:
      protocol::append_close(out, kind & 0x80 ? 'P' : 'S', name);
      break;
    case 10:
      protocol::append_terminate(out);
      break;
    case 11:
      out = std::string("d\0\0\0\6a\n", 7);  // CopyData
      break;
    case 12:
      out = std::string("c\0\0\0\4", 5);  // CopyDone
      break;
    case 13:
      out = std::string("F\0\0\0\x0e\0\0\0\x10\0\0\0\0\0\0", 15);  // FunctionCall
      break;
    case 14:
      // A whole extended flight of one statement.
      protocol::append_parse(out, name, sql, {});
      protocol::append_bind(out, "", name, protocol::kBindWithoutParameters);
      if (kind & 0x10) protocol::append_describe(out, 'P', "");
      protocol::append_execute(out, "", 0);
      protocol::append_sync(out);
      break;
    default:
      protocol::append_parse(out, name, sql, {});
      protocol::append_sync(out);
      break;
  }
  return out;
}

std::string server_message(Reader& in) {
  std::string out;
  const std::uint8_t kind = in.byte();
  const std::string_view tags[] = {"SELECT 1", "SET",   "COMMIT",      "ROLLBACK",
                                   "BEGIN",    "RESET", "DISCARD ALL", "LISTEN"};
  const std::string_view columns[] = {"c"};
  switch (kind % 24) {
    case 0:
    case 1:
      protocol::append_ready_for_query(out, 'I');
      break;
    case 2:
      protocol::append_ready_for_query(out, 'T');
      break;
    case 3:
      protocol::append_ready_for_query(out, 'E');
      break;
    case 4:
    case 5:
      protocol::append_command_complete(out, tags[kind >> 5]);
      break;
    case 6:
      protocol::append_parse_complete(out);
      break;
    case 7:
      protocol::append_bind_complete(out);
      break;
    case 8:
      protocol::append_close_complete(out);
      break;
    case 9:
      protocol::append_no_data(out);
      break;
    case 10:
      protocol::append_row_description(out, columns);
      break;
    case 11: {
      const std::optional<std::string_view> values[] = {kind & 0x80 ? "1" : "0"};
      protocol::append_data_row(out, values);
      break;
    }
    case 12: {
      protocol::ErrorFields e;
      e.severity = "ERROR";
      e.sqlstate = "42P01";
      e.message = "boom";
      protocol::append_error_response(out, e);
      break;
    }
    case 13:
      protocol::append_parameter_status(out, kind & 0x80 ? "TimeZone" : "application_name", "v");
      break;
    case 14: {
      protocol::ErrorFields e;
      e.severity = "NOTICE";
      e.sqlstate = "00000";
      e.message = "note";
      protocol::append_notice_response(out, e);
      break;
    }
    case 15:
      protocol::append_notification_response(out, {7, "jobs", "x"});
      break;
    case 16:
      protocol::append_empty_query_response(out);
      break;
    case 17:
      out = std::string("G\0\0\0\7\0\0\0", 8);  // CopyInResponse
      break;
    case 18:
      out = std::string("s\0\0\0\4", 5);  // PortalSuspended
      break;
    case 19:
      out = std::string("t\0\0\0\6\0\0", 7);  // ParameterDescription
      break;
    case 20: {
      // A DataRow larger than pgvalve holds whole (10000 bytes), or only its start.
      const std::uint32_t length = 10000 - 1;
      const std::uint32_t column = length - 4 - 2 - 4;
      out += 'D';
      for (int shift : {24, 16, 8, 0})
        out += static_cast<char>(length >> shift);
      out += std::string("\0\1", 2);
      for (int shift : {24, 16, 8, 0})
        out += static_cast<char>(column >> shift);
      out += std::string(column, 'x');
      if (kind & 0x80) out.resize(100 + (kind & 0x3f) * 100);
      break;
    }
    case 21:
      // The pin check's answer.
      protocol::append_row_description(out, columns);
      {
        const std::optional<std::string_view> values[] = {"0", kind & 0x80 ? "2" : "0", "0", "0",
                                                          "0"};
        protocol::append_data_row(out, values);
      }
      protocol::append_command_complete(out, "SELECT 1");
      protocol::append_ready_for_query(out, 'I');
      break;
    case 22:
      out = std::string("V\0\0\0\x8\xff\xff\xff\xff", 9);  // FunctionCallResponse, NULL
      break;
    default:
      // An answer in one piece.
      protocol::append_parse_complete(out);
      protocol::append_bind_complete(out);
      protocol::append_command_complete(out, tags[kind >> 5]);
      protocol::append_ready_for_query(out, kind & 0x10 ? 'T' : 'I');
      break;
  }
  return out;
}

// ---- The I/O layer, with checks ----------------------------------------------------------------

enum class Source { Client, Server, Event };

// Bytes of a chunk pointing into the session's own memory, to compare later.
struct Kept {
  Source source;
  const char* data;
  std::string copy;
};

class Harness {
 public:
  explicit Harness(std::uint8_t options_byte, std::uint8_t startup_byte)
      : options_(options_for(options_byte)), session_(options_, router_, workspaces_, &recorder_) {
    auto defaults = std::make_shared<const session::ServerParameters>(
        session::ServerParameters{{"DateStyle", "ISO, MDY"},
                                  {"TimeZone", "UTC"},
                                  {"client_encoding", "UTF8"},
                                  {"application_name", ""},
                                  {"server_version", "15.0"}});
    std::vector<std::pair<std::string, std::string>> startup = {{"user", "u"}, {"database", "d"}};
    if (startup_byte & 1) startup.emplace_back("DateStyle", "ISO");
    if (startup_byte & 2) startup.emplace_back("options", "-c statement_timeout=5s");
    if (startup_byte & 4) startup.emplace_back("application_name", "fuzz");
    ServerState* server = nullptr;
    if (options_.mode == config::PoolMode::Session || (startup_byte & 8)) {
      server = new_server();
      linked_[0] = server;
    }
    step(session_.start(startup, defaults, {1, 2}, server, now_), Source::Client, {}, server);
  }

  void play(Reader& in) {
    while (!in.empty()) {
      const std::uint8_t op = in.byte();
      switch (op % 16) {
        case 0:
          client_bytes(in.bytes(in.byte()), in);
          break;
        case 1:
        case 2: {
          std::string m = client_message(in);
          client_bytes(m, in);
          break;
        }
        case 3: {
          // Part of a message: the rest may follow in a later step.
          std::string m = client_message(in);
          m.resize(std::min<std::size_t>(m.size(), in.byte() % 12));
          client_bytes(m, in);
          break;
        }
        case 4:
          server_bytes(in.bytes(in.byte()), in);
          break;
        case 5:
        case 6: {
          std::string m = server_message(in);
          server_bytes(m, in);
          break;
        }
        case 7: {
          // Either linked server may die (session mode holds two while a read runs on a replica).
          const LinkId id = linked_[1] && (in.byte() & 1) ? 1 : 0;
          step(session_.on_server_lost(id, now_), Source::Event, {}, nullptr, in);
          break;
        }
        case 8:
          now_ += std::chrono::milliseconds(in.byte() * 37);
          step(session_.on_timer(now_), Source::Event, {}, nullptr, in);
          break;
        case 9: {
          std::string n;
          const std::string payload(in.byte() * 4, 'p');
          protocol::append_notification_response(n, {9, "jobs", payload});
          const std::size_t unsent = static_cast<std::size_t>(in.byte()) * 8192;
          step(session_.on_notification(n, unsent), Source::Event, {}, nullptr, in);
          break;
        }
        case 10: {
          const bool error = in.byte() & 1;
          if (error) {
            step(session_.on_hub_done(std::string_view("pgvalve: hub down")), Source::Event, {},
                 nullptr, in);
          } else {
            step(session_.on_hub_done(std::nullopt), Source::Event, {}, nullptr, in);
          }
          break;
        }
        case 11:
          client_gone(in);
          break;
        case 12:
          step(session_.on_drain(), Source::Event, {}, nullptr, in);
          break;
        case 13:
          if (in.byte() % 4 == 0) {
            step(session_.on_client_memory_exhausted(), Source::Event, {}, nullptr, in);
          }
          break;
        case 14:
          // The proxy trims a parked session: idle, nothing left to read, writes done.
          if (session_.idle() && client_in_.empty()) {
            session_.trim();
            kept_.clear();
          }
          break;
        default: {
          // Bytes from a server that is not linked (any more): consumed and dropped.
          if (linked_[0]) break;
          const std::string m = server_message(in);
          const Actions& a = session_.on_server_data(0, m, now_);
          CHECK(a.consumed == m.size());
          CHECK(!a.writes());
          CHECK(a.link_ops.empty());
          break;
        }
      }
    }
    if (!gone_) client_gone(in);
    CHECK(session_.link_count() == 0);
  }

 private:
  static session::SessionOptions options_for(std::uint8_t b) {
    session::SessionOptions o;
    switch (b % 3) {
      case 0:
        o.mode = config::PoolMode::Transaction;
        break;
      case 1:
        o.mode = config::PoolMode::Session;
        break;
      default:
        o.mode = config::PoolMode::Statement;
        break;
    }
    o.pin_session_state = (b & 4) == 0;
    if (b & 8) {
      o.query_timeout = std::chrono::milliseconds(1000);
      o.idle_transaction_timeout = std::chrono::milliseconds(2000);
    }
    o.message_timeout = std::chrono::milliseconds(b & 16 ? 500 : 0);
    o.sync_timeout = std::chrono::milliseconds(1500);
    o.max_prepared_statements = b & 32 ? 1 : 500;
    o.max_message_bytes = b & 64 ? 256 : (1u << 20);
    return o;
  }

  ServerState* new_server() {
    servers_.push_back(session::testing::fresh_server_state());
    return servers_.back().get();
  }

  void client_bytes(std::string_view bytes, Reader& in) {
    client_in_.append(bytes);
    feed_client(in);
  }

  void feed_client(Reader& in) {
    if (client_in_.empty() || !session_.wants_client_input()) return;
    const std::string input = client_in_;  // the step's input stays put while it is read
    const Actions& a = session_.on_client_data(input, now_);
    step(a, Source::Client, input, nullptr, in);
  }

  // The bytes come from the server the session reads: its replica link while it has one.
  void server_bytes(std::string_view bytes, Reader& in) {
    const LinkId id = linked_[1] ? 1 : 0;
    if (!linked_[id]) return;  // nobody reads a server that is not linked
    CHECK(session_.wants_server_input(id) || session_.state() == SessionState::Closing);
    if (linked_[1]) CHECK(!session_.wants_server_input(0));
    server_in_[id].append(bytes);
    const std::string input = server_in_[id];
    server_link_ = id;
    const Actions& a = session_.on_server_data(id, input, now_);
    step(a, Source::Server, input, nullptr, in);
  }

  void client_gone(Reader& in) {
    step(session_.on_client_gone(), Source::Event, {}, nullptr, in);
    CHECK(session_.state() == SessionState::Closing);
    CHECK(session_.link_count() == 0);
    gone_ = true;
  }

  // Checks one step's Actions and carries them out. `linked_now`: a server this step linked.
  void step(const Actions& a, Source source, std::string_view input, ServerState* linked_now) {
    Reader none(nullptr, 0);
    step(a, source, input, linked_now, none);
  }

  void step(const Actions& a, Source source, std::string_view input, ServerState* linked_now,
            Reader& in) {
    if (++depth_ > 32) violated("a waiting request does not resume in bounded steps", __LINE__);
    check_kept(source);
    const SessionState now_state = session_.state();
    if (trace_) print_step(a, source, now_state);
    CHECK(session::transition_allowed(state_, now_state));
    state_ = now_state;

    CHECK(a.consumed <= input.size());
    if (source == Source::Event) CHECK(a.consumed == 0);
    if (after_close_) {
      CHECK(!a.writes());
      CHECK(a.link_ops.empty());
      CHECK(!a.check_out);
    }

    // Writes: every chunk readable; those in the session's memory remembered.
    const char* in_begin = input.data();
    const char* in_end = input.data() + input.size();
    std::string to_server;
    for (const Chunk& c : a.to_server) {
      CHECK(c.data != nullptr || c.size == 0);
      to_server.append(c.data, c.size);
      if (!(c.data >= in_begin && c.data + c.size <= in_end)) {
        kept_.push_back({source, c.data, std::string(c.data, c.size)});
      }
    }
    for (const Chunk& c : a.to_client) {
      CHECK(c.data != nullptr || c.size == 0);
      const bool in_input = c.data >= in_begin && c.data + c.size <= in_end;
      if (!in_input) kept_.push_back({source, c.data, std::string(c.data, c.size)});
      // Only the server's own bytes may continue a message of the server.
      read_client_stream({c.data, c.size}, source == Source::Server && in_input);
    }
    read_client_stream(a.outbox, false);
    if (!to_server.empty()) {
      CHECK(a.server_link <= 1);
      CHECK(linked_[a.server_link] != nullptr || linked_now != nullptr);
      check_whole_frontend_messages(to_server);
    }

    // Consumed input.
    if (source == Source::Client) {
      CHECK(input == std::string_view(client_in_).substr(0, input.size()));
      client_in_.erase(0, a.consumed);
    } else if (source == Source::Server) {
      server_in_[server_link_].erase(0, a.consumed);
    }

    // Commands.
    int ops_on[2] = {0, 0};
    for (const LinkOp& op : a.link_ops) {
      CHECK(op.link <= 1);
      ServerState*& server = linked_[op.link];
      CHECK(server != nullptr);
      CHECK(++ops_on[op.link] == 1);
      if (op.kind == LinkOp::Kind::Release) {
        CHECK(server->tx_status == 'I');
        idle_.push_back(server);
      } else if (op.kind == LinkOp::Kind::CleanAndRelease) {
        CHECK(!op.sql[0].empty());
        server->tx_status = 'I';  // what the clean-up leaves
        idle_.push_back(server);
      }
      server = nullptr;
      server_in_[op.link].clear();
    }
    // Link 1 only in session mode (its own server, link 0, may have died meanwhile).
    if (linked_[1]) CHECK(options_.mode == config::PoolMode::Session);
    CHECK(session_.linked(0) == (linked_[0] != nullptr));
    CHECK(session_.linked(1) == (linked_[1] != nullptr));
    CHECK(session_.link_count() == (linked_[0] ? 1u : 0u) + (linked_[1] ? 1u : 0u));

    pinned_ += a.pinned_change;
    CHECK(pinned_ == (session_.pinned() ? 1 : 0));
    CHECK(a.statement_evictions >= 0);

    if (a.close_client) {
      CHECK(session_.state() == SessionState::Closing);
      CHECK(session_.link_count() == 0);
      after_close_ = true;
      --depth_;
      return;
    }
    const bool resume = a.resume_client;
    const bool check_out = a.check_out;
    if (check_out) CHECK(session_.state() == SessionState::WaitingForServer);
    if (check_out) {
      // The pool answers: a server (a fresh one or one given back earlier), or none.
      const std::uint8_t b = in.byte();
      if (b % 8 == 7) {
        const Actions& failed =
            session_.on_checkout_failed("53300", "pgvalve: no server within the timeout", now_);
        step(failed, Source::Client, {}, nullptr, in);
      } else {
        ServerState* server = nullptr;
        if ((b & 8) && !idle_.empty()) {
          server = idle_[b / 16 % idle_.size()];
          idle_.erase(idle_.begin() + static_cast<long>(b / 16 % idle_.size()));
        } else {
          server = new_server();
        }
        const LinkId id = session_.pending_link();
        CHECK(id <= 1);
        CHECK(linked_[id] == nullptr);
        linked_[id] = server;
        const Actions& got = session_.on_linked(*server, now_);
        step(got, Source::Client, {}, server, in);
      }
    }
    if (resume) feed_client(in);
    --depth_;
  }

  static std::string tags_of(std::string_view bytes) {
    std::string tags;
    while (bytes.size() >= protocol::kFrameHeaderSize) {
      auto r = protocol::decode_frame(bytes, 1u << 30);
      tags += bytes[0];
      if (r.status != protocol::DecodeStatus::Ok) return tags + "...";
      bytes.remove_prefix(r.frame.whole.size());
    }
    return tags;
  }

  void print_step(const Actions& a, Source source, SessionState now_state) const {
    std::string to_client;
    for (const Chunk& c : a.to_client)
      to_client.append(c.data, c.size);
    to_client += a.outbox;
    std::string to_server;
    for (const Chunk& c : a.to_server)
      to_server.append(c.data, c.size);
    const char* names[] = {"client", "server", "event"};
    std::fprintf(stderr,
                 "%-6s %-18s consumed=%zu to_client=%s to_server=%s ops=%zu checkout=%d "
                 "resume=%d close=%d pinned%+d\n",
                 names[static_cast<int>(source)],
                 std::string(session::state_name(now_state)).c_str(), a.consumed,
                 tags_of(to_client).c_str(), tags_of(to_server).c_str(), a.link_ops.size(),
                 a.check_out, a.resume_client, a.close_client, a.pinned_change);
  }

  // Chunks kept from earlier steps of other sources still hold their bytes.
  void check_kept(Source source) {
    std::vector<Kept> still;
    for (auto& k : kept_) {
      if (k.source == source) continue;  // the new step of that source may reuse it
      CHECK(std::memcmp(k.data, k.copy.data(), k.copy.size()) == 0);
      still.push_back(std::move(k));
    }
    kept_ = std::move(still);
  }

  static void check_whole_frontend_messages(std::string_view bytes) {
    while (!bytes.empty()) {
      auto r = protocol::decode_frame(bytes, 1u << 30);
      CHECK(r.status == protocol::DecodeStatus::Ok);
      bytes.remove_prefix(r.frame.whole.size());
    }
  }

  // Follows the client's byte stream message by message, across steps. `server_bytes`: the
  // bytes are the linked server's, forwarded in place.
  void read_client_stream(std::string_view bytes, bool server_bytes) {
    while (!bytes.empty()) {
      if (client_remaining_ > 0) {
        // Inside a message: nothing but the rest of it (a server's message passing through,
        // or pgvalve's own message written whole).
        CHECK(server_bytes || !mid_server_message_);
        const std::size_t n = std::min(client_remaining_, bytes.size());
        client_remaining_ -= n;
        bytes.remove_prefix(n);
        continue;
      }
      const std::size_t need = protocol::kFrameHeaderSize - client_header_.size();
      const std::size_t n = std::min(need, bytes.size());
      client_header_.append(bytes.substr(0, n));
      bytes.remove_prefix(n);
      if (client_header_.size() < protocol::kFrameHeaderSize) break;
      const std::uint32_t length = protocol::read_u32(client_header_.data() + 1);
      CHECK(length >= 4);
      client_remaining_ = length - 4;
      client_header_.clear();
      // A message that does not end in this chunk: only a server's can (pgvalve writes its own
      // whole).
      mid_server_message_ = client_remaining_ > bytes.size();
      CHECK(!mid_server_message_ || server_bytes);
    }
    if (client_remaining_ == 0) mid_server_message_ = false;
  }

  session::SessionOptions options_;
  session::WorkspacePool workspaces_;
  // Reads go to replicas, so the fuzzer also drives the router, its decision cache and the
  // one-request-at-a-time planning of replica links.
  std::vector<std::string> write_functions_{"nextval", "setval"};
  routing::DecisionCache decisions_{64};
  routing::Router router_{1, routing::RoutingPolicy{true, &write_functions_}, &decisions_};
  // Statements are counted too (a small cap, so eviction runs).
  const std::string database_ = "d";
  const std::string user_ = "u";
  stats::QueryStats query_stats_{stats::Limits{8, std::chrono::milliseconds(1), 4}};
  stats::Recorder recorder_{&query_stats_, {&database_, &user_}};
  Session session_;
  Clock::time_point now_ = Clock::time_point{} + std::chrono::hours(1);
  std::vector<std::unique_ptr<ServerState>> servers_;
  std::vector<ServerState*> idle_;
  ServerState* linked_[2] = {nullptr, nullptr};
  LinkId server_link_ = 0;  // of the server step being checked
  std::string client_in_;
  std::string server_in_[2];
  std::string client_header_;
  std::size_t client_remaining_ = 0;
  bool mid_server_message_ = false;
  std::vector<Kept> kept_;
  SessionState state_ = SessionState::LoggingIn;
  int pinned_ = 0;
  int depth_ = 0;
  bool gone_ = false;
  bool after_close_ = false;
  bool trace_ = std::getenv("SESSION_FUZZ_TRACE") != nullptr;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  Reader in(data + 2, size - 2);
  Harness h(data[0], data[1]);
  h.play(in);
  return 0;
}
