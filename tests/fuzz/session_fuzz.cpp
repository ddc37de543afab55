// libFuzzer target for the session core (session/): a script of steps — client bytes, server
// bytes, a server linked when a checkout is asked for, a server lost, timers, notifications, the
// listen hub's answers, the client leaving, shutdown — played against one Session as the I/O
// layer (proxy/client_session.cpp) would, checking after every step the invariants the I/O layer
// relies on. Built and run by tests/fuzz/run; by hand, from the repository root:
//
//   FUZZ_SECONDS=60 tests/fuzz/run session_fuzz
//   build-fuzz/session_fuzz <crash-file>             # replay a reproducer it reported
//   SESSION_FUZZ_TRACE=1 build-fuzz/session_fuzz <file>   # ... printing every step
//   SESSION_FUZZ_TRACE=2 build-fuzz/session_fuzz <file>   # ... and what each server is sent
//   SESSION_FUZZ_KNOWN=1 build-fuzz/session_fuzz <file>   # known findings abort too (below)
//
// Input: byte 0 picks the options (pool mode, pin_session_state, timeouts, caps), byte 1 the
// client's startup parameters and the database: bit 0x10 makes it sharded (3 shards, md5_mod,
// tables telemetry and archive, reference table device_types; transaction mode instead of
// session mode), 0x20 then sends its reads to replicas; without 0x10 it is one shard whose reads
// go to replicas; 0x40 keeps slow-query samples unredacted (each request's text kept). Then
// steps, each an opcode byte and its operands (see play()).
// Seeds: tests/fuzz/corpus/session_fuzz/ (from tests/fuzz/make_corpus.py).
//
// Servers are FakeServers: each answers the frontend messages it was sent, in order, as
// PostgreSQL would (transaction status, prepared statements and portals, prepared transactions,
// COPY), when a step says so and with the faults the step picks (an error, an answer cut in two,
// a FATAL and the connection lost). Raw or canned server bytes (opcodes 4, 5) make a server
// unfaithful: the invariants that rely on its answers being PostgreSQL's are not checked on it.
//
// Invariants (a violation aborts with its name):
//  - consumed <= the input of the step; events consume nothing;
//  - chunks are readable, and those pointing into the session's own memory keep their bytes
//    until the next step from the same source (client, one server link, events);
//  - every state change is allowed by session/state.h's table;
//  - bytes for a server are whole frontend messages, for a linked server only: the link whose
//    bytes the step read or, for a statement over several shards, another of its links; bytes
//    for the client parse as a stream of backend messages (nothing lands inside a message);
//  - link operations name linked servers only, a server is released only outside a transaction
//    (and, when it answered faithfully, with nothing left to answer), and what the session says
//    is linked matches the operations it asked for;
//  - a checkout is asked for only when the session waits for a server; over several shards, one
//    per shard in shard order, as links 0, 1, 2, ..., none held before the first;
//  - a faithful server is never sent a Bind or Describe of a pgvalve-named statement it does not
//    have, nor a Parse of one it has;
//  - two-phase commit: a write is committed (COMMIT PREPARED) only when every shard's server
//    prepared it and is still linked, never both committed and rolled back, decided only where
//    it was prepared and on one server at a time; a faithful server keeps nothing prepared once
//    the statement is answered; a rolled-back write is an error for the client, and a statement
//    over several shards is answered with one ReadyForQuery, with no server held after it;
//  - after close_client nothing more is written or asked; after on_client_gone no server is held;
//  - pinned_change keeps pinned() and the pool's count equal;
//  - a request that waited resumes in a bounded number of steps.
//
// Known findings (reported, not fixed yet; see known_finding() calls) end an input quietly, so
// that a run finds the others; SESSION_FUZZ_KNOWN=1 makes them violations. Remove a guard once
// its bug is fixed.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "protocol/frame.h"
#include "protocol/messages.h"
#include "protocol/wire.h"
#include "routing/router.h"
#include "routing/statement.h"
#include "session/session.h"
#include "session/state.h"
#include "tests/support/fresh_server.h"

namespace {

using namespace pgvalve;
using session::Actions;
using session::Chunk;
using session::Clock;
using session::LinkChunk;
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

// Findings reported and not fixed yet: an input that reaches one ends there quietly, so that the
// fuzzer goes on looking for others, unless SESSION_FUZZ_KNOWN=1 makes them violations again.
struct KnownFinding {
  const char* what;
};
[[maybe_unused, noreturn]] void known_finding(const char* what, int line) {
  static const bool report = std::getenv("SESSION_FUZZ_KNOWN") != nullptr;
  if (report) violated(what, line);
  throw KnownFinding{what};
}

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
    // Added after the first ones, so that older inputs keep their statements. For a sharded
    // database: reads and writes over several shards (scatter, two-phase commit), one shard,
    // refusals; on one shard they are plain statements.
    "SELECT count(*) FROM telemetry",
    "SELECT * FROM telemetry ORDER BY device_id LIMIT 2",
    "SELECT device_id, count(*) FROM telemetry GROUP BY device_id",
    "SELECT * FROM telemetry WHERE device_id IN (1, 2, 4)",
    "SELECT * FROM telemetry WHERE device_id = $1",
    "/* pgvalve: all_shards */ DELETE FROM telemetry",
    "INSERT INTO telemetry (device_id, v) VALUES (1, 'a'), (2, 'b')",
    "INSERT INTO telemetry (device_id, v) VALUES ($1, $2), ($3, $4), ($5, $6)",
    "UPDATE archive SET v = 'x' WHERE device_id IN (1, 2, 4)",
    "CREATE TABLE archive (device_id bigint)",
    "INSERT INTO device_types VALUES (1, 'x')",
    "SELECT * FROM device_types",
    "SET pgvalve.device_id = 2",
    "/* pgvalve: shard=s1 */ select 1",
    "SELECT avg(v) FROM telemetry",
    "SELECT count(*) FROM telemetry LIMIT $1",
    "COPY telemetry (device_id, v) FROM STDIN",
    "COPY device_types (id, name) FROM STDIN WITH (FORMAT csv)",
    // One shard each, different ones: a transaction that runs them spans shards.
    "SELECT * FROM telemetry WHERE device_id = 2",
    "INSERT INTO telemetry (device_id, v) VALUES (3, 'c')",
    "UPDATE telemetry SET v = 'y' WHERE device_id = 4",
    "DELETE FROM telemetry WHERE device_id = 1",
    // Text merged and combined in the database's collation (the shards describe text columns).
    "SELECT v FROM telemetry ORDER BY v DESC",
    "SELECT min(v), max(v) FROM telemetry",
    // Settings whose values come from a Bind; transaction modes followed as settings.
    "select set_config('x.y', $1, false)",
    "select set_config($1, $2, false)",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET default_transaction_isolation = 'serializable'",
    "show transaction_read_only",
};
constexpr std::size_t kSqlCount = sizeof kSql / sizeof kSql[0];

const char* const kNames[] = {"", "s1", "s2", "p"};

bool contains_ci(std::string_view hay, std::string_view needle) {
  if (needle.size() > hay.size()) return false;
  for (std::size_t i = 0; i + needle.size() <= hay.size(); ++i) {
    std::size_t k = 0;
    while (k < needle.size() && std::tolower(static_cast<unsigned char>(hay[i + k])) ==
                                    std::tolower(static_cast<unsigned char>(needle[k]))) {
      ++k;
    }
    if (k == needle.size()) return true;
  }
  return false;
}

// The highest $n of `sql` (at most 9).
int max_param(std::string_view sql) {
  int n = 0;
  for (std::size_t i = 0; i + 1 < sql.size(); ++i) {
    if (sql[i] == '$' && sql[i + 1] >= '1' && sql[i + 1] <= '9') n = std::max(n, sql[i + 1] - '0');
  }
  return n;
}

// A Bind's body after its names with a text value for each $n of `sql` (none: the same bytes as
// protocol::kBindWithoutParameters).
std::string bind_rest_for(std::string_view sql) {
  static const char* const values[] = {"1", "a", "2", "b", "4", "c", "3", "d", "5"};
  const int n = max_param(sql);
  std::string rest;
  protocol::append_i16(rest, 0);
  protocol::append_i16(rest, static_cast<std::int16_t>(n));
  for (int i = 0; i < n; ++i) {
    const std::string_view v = values[i];
    protocol::append_i32(rest, static_cast<std::int32_t>(v.size()));
    rest += v;
  }
  protocol::append_i16(rest, 0);
  return rest;
}

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
      protocol::append_bind(out, kind & 0x80 ? "p" : "", name, bind_rest_for(sql));
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
      // CopyData: a row of one column, or two rows of two (of different shards when sharded).
      out = kind & 0x80 ? std::string(
                              "d\0\0\0\x0c"
                              "1\tx\n2\ty\n",
                              13)
                        : std::string("d\0\0\0\6a\n", 7);
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
      protocol::append_bind(out, "", name, bind_rest_for(sql));
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

// ---- Servers that answer as PostgreSQL would ----------------------------------------------------

// A server as the session sees it through its link: it answers the frontend messages it was sent,
// in order, following what PostgreSQL does with them (transaction status, prepared statements and
// portals, prepared transactions, COPY from stdin), with the faults a step asks for. The answers
// are shaped so that a statement over several shards can be gathered: the same columns on every
// shard for the same statement, count(*) as one int8, rows in device_id order.
class FakeServer {
 public:
  // False once bytes that are not this model's answers reached the session for this server (raw
  // or canned server bytes): the session's view of it may then differ from the model's.
  bool faithful = true;
  char tx = 'I';
  std::deque<std::string> queue;    // frontend messages not answered yet
  std::string unsent;               // answer bytes made but not delivered yet (an answer cut)
  std::set<std::string> prepared;   // prepared transactions, by their gid literal ('...')
  std::set<std::string> committed;  // ... and those it committed
  bool begin_failed = false;        // the last BEGIN was answered with an error

  void receive(std::string_view bytes) {
    while (!bytes.empty()) {
      auto r = protocol::decode_frame(bytes, 1u << 30);
      if (r.status != protocol::DecodeStatus::Ok) return;  // checked whole by the caller
      queue.emplace_back(r.frame.whole);
      bytes.remove_prefix(r.frame.whole.size());
    }
  }

  // Nothing left to answer: what is queued gets no answer (Flush, Terminate, COPY messages
  // outside COPY, which PostgreSQL ignores).
  bool idle() const {
    if (!unsent.empty() || copy_in_) return false;
    for (const std::string& m : queue) {
      if (m[0] != 'H' && m[0] != 'X' && m[0] != 'd' && m[0] != 'c' && m[0] != 'f') return false;
    }
    return true;
  }

  // A COMMIT PREPARED or ROLLBACK PREPARED waits for its answer here.
  bool decision_queued() const {
    for (const std::string& m : queue) {
      if (m[0] != 'Q') continue;
      const auto k = routing::classify(std::string_view(m).substr(5)).kind;
      if (k == routing::StatementKind::CommitPrepared ||
          k == routing::StatementKind::RollbackPrepared) {
        return true;
      }
    }
    return false;
  }

  // Given back to the pool (the pool drops what it was not sent).
  void released() {
    queue.clear();
    unsent.clear();
    copy_in_ = false;
    skipping_ = false;
  }
  // What LinkOp::CleanAndRelease's statement leaves.
  void clean(std::string_view sql) {
    released();
    if (sql.empty()) return;
    tx = 'I';
    portals_.clear();
    if (sql == "DISCARD ALL") forget_statements();
    // COMMIT / ROLLBACK PREPARED 'gid' of a write whose client left.
    if (const std::size_t at = sql.find(" PREPARED '"); at != std::string_view::npos) {
      prepared.erase(std::string(sql.substr(at + 10)));
    }
  }

  // Answers the next messages: `unit` 0: up to the end of the next request (a Query, Sync or
  // FunctionCall answered with ReadyForQuery); else that many messages. `fail`: the first
  // statement (or Parse, Bind, Execute) that can fail does. `v` shapes the answers.
  std::string answer(int unit, bool fail, std::uint8_t v) {
    std::string out;
    int answered = 0;
    while (!queue.empty()) {
      const std::string m = std::move(queue.front());
      queue.pop_front();
      if (one(m, fail, v, out)) fail = false;
      ++answered;
      const char tag = m[0];
      if (unit == 0 ? (tag == 'Q' || tag == 'S' || tag == 'F' || tag == 'c' || tag == 'f')
                    : answered >= unit) {
        break;
      }
    }
    return out;
  }

 private:
  struct Statement {
    std::string sql;
    int params = 0;
  };
  struct Portal {
    std::string sql;
    bool done = false;  // suspended and resumed: nothing left
  };
  struct Column {
    std::string_view name;
    std::int32_t type;
    std::int16_t size;
  };

  static void error(std::string& out, std::string_view sqlstate, std::string_view message,
                    std::string_view severity = "ERROR") {
    protocol::ErrorFields e;
    e.severity = severity;
    e.sqlstate = sqlstate;
    e.message = message;
    protocol::append_error_response(out, e);
  }
  // An error inside a statement: an open transaction is aborted.
  bool fail_statement(std::string& out, std::string_view sqlstate, std::string_view message) {
    error(out, sqlstate, message);
    if (tx == 'T') tx = 'E';
    return false;
  }
  // An error of an extended-protocol message: the rest up to Sync is skipped.
  void fail_extended(std::string& out, std::string_view sqlstate, std::string_view message) {
    fail_statement(out, sqlstate, message);
    skipping_ = true;
  }
  void ready(std::string& out) {
    protocol::append_ready_for_query(out, tx);
    if (tx == 'I') portals_.clear();  // the transaction's end closes its portals
  }
  static bool exits_transaction(routing::StatementKind k) {
    return k == routing::StatementKind::Commit || k == routing::StatementKind::Rollback ||
           k == routing::StatementKind::RollbackToSavepoint;
  }
  static bool returns_rows(routing::StatementKind k) {
    return k == routing::StatementKind::Select || k == routing::StatementKind::Show ||
           k == routing::StatementKind::Explain || k == routing::StatementKind::Execute;
  }

  // The columns of a statement's rows, the same for the same text on every server.
  static std::vector<Column> columns_for(std::string_view sql) {
    if (contains_ci(sql, "pg_locks")) {  // the pin check: five counts
      return std::vector<Column>(5, Column{"count", 20, 8});
    }
    if (contains_ci(sql, "pg_current_wal_lsn")) return {{"pg_current_wal_lsn", 3220, 8}};
    if (contains_ci(sql, "pg_current_xact_id")) return {{"pg_current_xact_id", 5069, 8}};
    if (contains_ci(sql, "count(")) {
      if (contains_ci(sql, "device_id,")) return {{"device_id", 20, 8}, {"count", 20, 8}};
      return {{"count", 20, 8}};
    }
    if (contains_ci(sql, "avg(")) return {{"avg", 1700, -1}};
    if (contains_ci(sql, "telemetry") || contains_ci(sql, "archive") ||
        contains_ci(sql, "device_types")) {
      return {{"device_id", 20, 8}, {"v", 25, -1}};
    }
    if (routing::classify(sql).kind == routing::StatementKind::Show) return {{"setting", 25, -1}};
    return {{"?column?", 23, 4}};
  }
  static void describe_rows(std::string_view sql, std::string& out) {
    if (!returns_rows(routing::classify(sql).kind)) {
      protocol::append_no_data(out);
      return;
    }
    const std::size_t at = protocol::begin_message(out, 'T');
    const auto columns = columns_for(sql);
    protocol::append_i16(out, static_cast<std::int16_t>(columns.size()));
    for (const Column& c : columns) {
      protocol::append_cstr(out, c.name);
      protocol::append_i32(out, 0);
      protocol::append_i16(out, 0);
      protocol::append_i32(out, c.type);
      protocol::append_i16(out, c.size);
      protocol::append_i32(out, -1);
      protocol::append_i16(out, 0);
    }
    protocol::end_message(out, at);
  }
  // The rows of a statement that returns rows, and its CommandComplete (or PortalSuspended when
  // `max_rows` cuts them).
  void rows(std::string_view sql, std::string_view tag, bool describe, std::uint8_t v,
            std::int32_t max_rows, Portal* portal, std::string& out) {
    if (describe) describe_rows(sql, out);
    const auto columns = columns_for(sql);
    const bool one_row = columns.size() == 5 || columns[0].type == 3220 ||
                         (columns.size() == 1 && columns[0].name != "v");
    int n = one_row ? 1 : (v >> 3) % 4;
    if (portal && portal->done) n = 0;
    bool suspended = false;
    if (max_rows > 0 && n > max_rows) {
      n = max_rows;
      suspended = true;
    }
    for (int i = 0; i < n; ++i) {
      std::vector<std::string> text;
      for (std::size_t c = 0; c < columns.size(); ++c) {
        const Column& col = columns[c];
        if (columns.size() == 5) {
          text.emplace_back(c == 0 && (v & 0x40) ? "1" : "0");
        } else if (col.type == 3220) {
          text.emplace_back("0/" + std::to_string(1000 + v));
        } else if (col.type == 5069) {
          text.emplace_back(std::to_string(700 + v));
        } else if (col.name == "device_id") {
          text.emplace_back(std::to_string(v % 5 + 2 * i));
        } else if (col.name == "count") {
          text.emplace_back(std::to_string(v % 7));
        } else if (col.type == 1700) {
          text.emplace_back("1.5");
        } else if (col.type == 23) {
          text.emplace_back("1");
        } else {
          text.emplace_back(v & 0x80 ? "" : "x");
        }
      }
      std::vector<std::optional<std::string_view>> values;
      for (const std::string& t : text) {
        if (t.empty()) {
          values.emplace_back(std::nullopt);
        } else {
          values.emplace_back(t);
        }
      }
      protocol::append_data_row(out, values);
    }
    if (suspended) {
      if (portal) portal->done = true;
      out += std::string("s\0\0\0\4", 5);
      return;
    }
    protocol::append_command_complete(
        out, tag.empty() ? "SELECT " + std::to_string(n) : std::string(tag));
  }

  static std::string upper_word(std::string_view text) {
    std::string w;
    for (char c : text) {
      if (!std::isalpha(static_cast<unsigned char>(c))) break;
      w += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    return w.empty() ? "OK" : w;
  }

  // One statement; false when it failed (its ErrorResponse is in `out`). `simple`: of a Query
  // (its rows have a RowDescription).
  bool statement(const routing::StatementInfo& info, bool simple, bool fail, std::uint8_t v,
                 std::string& out, std::int32_t max_rows = 0, Portal* portal = nullptr) {
    using K = routing::StatementKind;
    const K k = info.kind;
    if (tx == 'E' && !exits_transaction(k)) {
      return fail_statement(out, "25P02",
                            "current transaction is aborted, commands ignored until end of "
                            "transaction block");
    }
    if (fail || contains_ci(info.text, "1/0")) {
      std::string_view sqlstate = "22012";
      if (fail) {
        sqlstate = k == K::PrepareTransaction ? (v & 0x20 ? "55000" : "40001")
                   : (k == K::Insert || k == K::Update || k == K::Delete) ? "23505"
                                                                          : "42P01";
      }
      if (k == K::Begin) begin_failed = true;
      if (k == K::PrepareTransaction) {
        // A PREPARE TRANSACTION that fails rolls the transaction back.
        error(out, sqlstate, "prepared transactions are disabled");
        tx = 'I';
        return false;
      }
      return fail_statement(out, sqlstate, "fault");
    }
    auto tag = [&](std::string_view t) {
      protocol::append_command_complete(out, t);
      return true;
    };
    const std::string name(info.name.view());
    const std::string value(info.value);
    switch (k) {
      case K::Begin:
        if (tx == 'I') tx = 'T';
        begin_failed = false;
        return tag("BEGIN");
      case K::Commit: {
        const bool failed = tx == 'E';
        tx = 'I';
        return tag(failed ? "ROLLBACK" : "COMMIT");
      }
      case K::Rollback:
        tx = 'I';
        return tag("ROLLBACK");
      case K::RollbackToSavepoint:
        if (tx == 'I') return fail_statement(out, "25P01", "no transaction block");
        tx = 'T';
        return tag("ROLLBACK");
      case K::Savepoint:
        if (tx == 'I') return fail_statement(out, "25P01", "no transaction block");
        return tag("SAVEPOINT");
      case K::Release:
        if (tx == 'I') return fail_statement(out, "25P01", "no transaction block");
        return tag("RELEASE");
      case K::PrepareTransaction:
        if (tx == 'T') {
          prepared.insert(value);
          tx = 'I';
          return tag("PREPARE TRANSACTION");
        }
        if (tx == 'I') {
          protocol::ErrorFields w;
          w.severity = "WARNING";
          w.sqlstate = "25P01";
          w.message = "there is no transaction in progress";
          protocol::append_notice_response(out, w);
        }
        tx = 'I';
        return tag("ROLLBACK");
      case K::CommitPrepared:
      case K::RollbackPrepared:
        if (tx != 'I') {
          return fail_statement(out, "25001", "cannot run inside a transaction block");
        }
        if (prepared.erase(value) == 0) {
          return fail_statement(out, "42704", "prepared transaction does not exist");
        }
        if (k == K::CommitPrepared) committed.insert(value);
        return tag(k == K::CommitPrepared ? "COMMIT PREPARED" : "ROLLBACK PREPARED");
      case K::Set: {
        static const std::pair<std::string_view, std::string_view> reported[] = {
            {"application_name", "application_name"},
            {"timezone", "TimeZone"},
            {"datestyle", "DateStyle"},
            {"client_encoding", "client_encoding"}};
        for (const auto& [lower, canonical] : reported) {
          if (name != lower) continue;
          std::string_view text = info.value;
          if (text.size() >= 2 && text.front() == '\'' && text.back() == '\'') {
            text = text.substr(1, text.size() - 2);
          }
          protocol::append_parameter_status(out, canonical, text);
        }
        return tag("SET");
      }
      case K::SetLocal:
      case K::SetTransaction:
        return tag("SET");
      case K::Reset:
      case K::ResetAll:
        return tag("RESET");
      case K::Discard:
        if (!info.discard_all) return tag("DISCARD");
        if (tx != 'I') {
          return fail_statement(out, "25001", "DISCARD ALL cannot run inside a transaction block");
        }
        forget_statements();
        portals_.clear();
        return tag("DISCARD ALL");
      case K::Deallocate:
        if (info.all) {
          auto unnamed = statements_.find("");
          std::optional<Statement> keep;
          if (unnamed != statements_.end()) keep = unnamed->second;
          forget_statements();
          if (keep) statements_[""] = *keep;
          return tag("DEALLOCATE ALL");
        }
        if (statements_.erase(name) == 0) {
          return fail_statement(out, "26000", "prepared statement does not exist");
        }
        return tag("DEALLOCATE");
      case K::Prepare: {
        if (statements_.count(name)) {
          return fail_statement(out, "42P05", "prepared statement already exists");
        }
        std::string_view text = info.text;
        std::size_t as = 0;
        for (std::size_t i = 0; i + 4 <= text.size(); ++i) {
          if (contains_ci(text.substr(i, 4), " AS ")) {
            as = i + 4;
            break;
          }
        }
        statements_[name] = {std::string(text.substr(as)), 0};
        return tag("PREPARE");
      }
      case K::Execute: {
        auto it = statements_.find(name);
        if (it == statements_.end()) {
          return fail_statement(out, "26000", "prepared statement does not exist");
        }
        const std::string sql = it->second.sql;
        rows(sql, {}, simple, v, max_rows, portal, out);
        return true;
      }
      case K::Listen:
        return tag("LISTEN");
      case K::Unlisten:
        return tag("UNLISTEN");
      case K::Notify:
        return tag("NOTIFY");
      case K::Show:
        rows(info.text, "SHOW", simple, v, max_rows, portal, out);
        return true;
      case K::Select:
      case K::Explain:
        rows(info.text, k == K::Explain ? "EXPLAIN" : "", simple, v, max_rows, portal, out);
        return true;
      case K::Insert:
        return tag("INSERT 0 " + std::to_string(1 + v % 3));
      case K::Update:
        return tag("UPDATE " + std::to_string(v % 4));
      case K::Delete:
        return tag("DELETE " + std::to_string(v % 4));
      case K::Copy:
        if (contains_ci(info.text, "stdin")) {
          out += std::string("G\0\0\0\7\0\0\0", 8);  // CopyInResponse, text, no columns
          copy_in_ = true;
          copy_simple_ = simple;
          return true;
        }
        out += std::string("H\0\0\0\7\0\0\0", 8);  // CopyOutResponse
        out += std::string("d\0\0\0\6a\n", 7);
        out += std::string("c\0\0\0\4", 5);
        return tag("COPY 1");
      case K::Declare:
        return tag("DECLARE CURSOR");
      case K::Close:
        return tag("CLOSE CURSOR");
      case K::Create:
        return tag("CREATE TABLE");
      case K::Alter:
        return tag("ALTER TABLE");
      case K::Drop:
        return tag("DROP TABLE");
      default:
        return tag(upper_word(info.text));
    }
  }

  // A simple Query; true when it used `fail`.
  bool query(std::string_view sql, bool fail, std::uint8_t v, std::string& out) {
    bool any = false;
    bool used = false;
    for (std::size_t pos = 0; pos < sql.size();) {
      const routing::StatementInfo info = routing::classify(sql.substr(pos));
      if (info.kind == routing::StatementKind::Empty) break;
      used = used || fail;
      any = true;
      const bool ok = statement(info, true, fail, v, out);
      fail = false;
      if (!ok || copy_in_ || info.next_offset == 0) break;
      pos += info.next_offset;
    }
    if (!any) protocol::append_empty_query_response(out);
    if (!copy_in_) ready(out);
    return used;
  }

  // A message the model cannot read: PostgreSQL would end the connection; the session is not
  // expected to follow.
  bool unreadable(std::string& out) {
    faithful = false;
    fail_extended(out, "08P01", "invalid message");
    return false;
  }

  static bool pgvalve_named(std::string_view name) { return name.starts_with("pgv_"); }

  void forget_statements() {
    for (const auto& [name, statement] : statements_)
      unparsed_.insert(name);
    statements_.clear();
  }

  // Answers one message; true when it used `fail`.
  bool one(const std::string& m, bool fail, std::uint8_t v, std::string& out) {
    const auto r = protocol::decode_frame(m, 1u << 30);
    const protocol::Frame& f = r.frame;
    if (copy_in_) {
      switch (f.tag) {
        case 'd':
        case 'H':
        case 'S':
          return false;  // ignored during COPY from stdin
        case 'c':
          copy_in_ = false;
          protocol::append_command_complete(out, "COPY 1");
          if (copy_simple_) ready(out);
          return false;
        default:
          copy_in_ = false;
          if (f.tag == 'P') {  // ends the COPY with an error instead of preparing anything
            if (const auto p = protocol::read_parse(f)) unparsed_.insert(std::string(p->statement));
          }
          if (f.tag == 'C') {  // ... or closing anything
            if (const auto c = protocol::read_close(f); c && c->kind == 'S') {
              unclosed_.insert(std::string(c->name));
            }
          }
          if (f.tag == 'f') {
            error(out, "57014", "COPY from stdin failed");
          } else {
            error(out, "08P01", "unexpected message type during COPY from stdin");
          }
          if (tx == 'T') tx = 'E';
          if (copy_simple_) {
            ready(out);
          } else {
            skipping_ = true;
          }
          return false;
      }
    }
    if (skipping_ && f.tag != 'S') {
      if (f.tag == 'P') {
        if (const auto p = protocol::read_parse(f)) unparsed_.insert(std::string(p->statement));
      }
      return false;
    }
    switch (f.tag) {
      case 'Q': {
        const auto sql = protocol::read_query(f);
        if (!sql) return unreadable(out);
        return query(*sql, fail, v, out);
      }
      case 'P': {
        const auto p = protocol::read_parse(f);
        if (!p) return unreadable(out);
        const std::string name(p->statement);
        unparsed_.insert(name);  // until it succeeds
        const routing::StatementInfo info = routing::classify(p->query);
        if (tx == 'E' && !exits_transaction(info.kind)) {
          fail_extended(out, "25P02", "current transaction is aborted");
          return false;
        }
        if (fail) {
          fail_extended(out, "42601", "syntax error");
          return true;
        }
        if (info.multiple_statements) {
          fail_extended(out, "42601", "cannot insert multiple commands into a prepared statement");
          return false;
        }
        if (!name.empty() && statements_.count(name)) {
          if (faithful && pgvalve_named(name) && !unclosed_.count(name)) {
            violated("pgvalve prepares a statement the server already has", __LINE__);
          }
          fail_extended(out, "42P05", "prepared statement already exists");
          return false;
        }
        statements_[name] = {std::string(p->query),
                             std::max<int>(max_param(p->query), p->param_count())};
        unparsed_.erase(name);
        protocol::append_parse_complete(out);
        return false;
      }
      case 'B': {
        const auto b = protocol::read_bind(f);
        if (!b) return unreadable(out);
        const auto it = statements_.find(std::string(b->statement));
        if (it == statements_.end()) {
          if (faithful && pgvalve_named(b->statement) &&
              !unparsed_.count(std::string(b->statement))) {
            violated("pgvalve binds a statement the server does not have", __LINE__);
          }
          fail_extended(out, "26000", "prepared statement does not exist");
          return false;
        }
        if (tx == 'E' && !exits_transaction(routing::classify(it->second.sql).kind)) {
          fail_extended(out, "25P02", "current transaction is aborted");
          return false;
        }
        if (fail) {
          fail_extended(out, "22P02", "invalid input syntax");
          return true;
        }
        if (static_cast<int>(b->params.size()) != it->second.params) {
          fail_extended(out, "08P01", "bind message supplies the wrong number of parameters");
          return false;
        }
        const std::string portal(b->portal);
        if (!portal.empty() && portals_.count(portal)) {
          fail_extended(out, "42P03", "portal already exists");
          return false;
        }
        portals_[portal] = {it->second.sql};
        protocol::append_bind_complete(out);
        return false;
      }
      case 'D': {
        const auto d = protocol::read_describe(f);
        if (!d) return unreadable(out);
        if (d->kind == 'S') {
          const auto it = statements_.find(std::string(d->name));
          if (it == statements_.end()) {
            if (faithful && pgvalve_named(d->name) && !unparsed_.count(std::string(d->name))) {
              violated("pgvalve describes a statement the server does not have", __LINE__);
            }
            fail_extended(out, "26000", "prepared statement does not exist");
            return false;
          }
          const std::size_t at = protocol::begin_message(out, 't');
          protocol::append_i16(out, static_cast<std::int16_t>(it->second.params));
          for (int i = 0; i < it->second.params; ++i)
            protocol::append_i32(out, 25);
          protocol::end_message(out, at);
          describe_rows(it->second.sql, out);
          return false;
        }
        const auto it = portals_.find(std::string(d->name));
        if (it == portals_.end()) {
          fail_extended(out, "34000", "portal does not exist");
          return false;
        }
        describe_rows(it->second.sql, out);
        return false;
      }
      case 'E': {
        const auto e = protocol::read_execute(f);
        if (!e) return unreadable(out);
        const auto it = portals_.find(std::string(e->portal));
        if (it == portals_.end()) {
          fail_extended(out, "34000", "portal does not exist");
          return false;
        }
        const std::string sql = it->second.sql;
        const routing::StatementInfo info = routing::classify(sql);
        if (info.kind == routing::StatementKind::Empty) {
          protocol::append_empty_query_response(out);
          return false;
        }
        if (!statement(info, false, fail, v, out, e->max_rows, &it->second)) skipping_ = true;
        return fail;
      }
      case 'C': {
        const auto c = protocol::read_close(f);
        if (!c) return unreadable(out);
        if (c->kind == 'S') {
          statements_.erase(std::string(c->name));
          unclosed_.erase(std::string(c->name));
        } else {
          portals_.erase(std::string(c->name));
        }
        protocol::append_close_complete(out);
        return false;
      }
      case 'S':
        skipping_ = false;
        ready(out);
        return false;
      case 'F':
        if (tx == 'E') {
          error(out, "25P02", "current transaction is aborted");
        } else {
          out += std::string("V\0\0\0\x8\xff\xff\xff\xff", 9);  // FunctionCallResponse, NULL
        }
        ready(out);
        return false;
      case 'H':  // Flush: what is due was sent
      case 'X':
      case 'd':  // COPY messages outside COPY are ignored
      case 'c':
      case 'f':
        return false;
      default:
        return unreadable(out);
    }
  }

  // The statements it has ("" is the unnamed one), and those it was asked to prepare without
  // success, or had until DISCARD ALL / DEALLOCATE ALL: a Bind the session pipelined after such a
  // Parse fails as it would for a client of PostgreSQL itself, which is not the session's fault.
  std::map<std::string, Statement> statements_;
  std::set<std::string> unparsed_;
  // Statements whose Close came during COPY FROM STDIN and ended it instead (a request sent
  // during COPY, which the session refuses once it sees the COPY begin): still prepared here.
  std::set<std::string> unclosed_;
  std::map<std::string, Portal> portals_;
  bool skipping_ = false;  // an extended-protocol message failed: the rest up to Sync is skipped
  bool copy_in_ = false;
  bool copy_simple_ = false;
};

// ---- The I/O layer, with checks ----------------------------------------------------------------

enum class Source { Client, Server, Event };

constexpr LinkId kMaxLinks = 4;
constexpr LinkId kAnyLink = 0xff;  // a client step that may write to any linked server
constexpr int kShardCount = 3;

// Bytes of a chunk pointing into the session's own memory, to compare later.
struct Kept {
  Source source;
  LinkId link;  // of a server step
  const char* data;
  std::string copy;
  // Sent to a server while a statement ran over several shards: the session keeps such bytes
  // (the shards' request, the commit decision) while the statement runs, and frees them with it
  // in the step that answers it, whichever source that is. The I/O layer has copied what the
  // kernel did not take by then (proxy/socket_writer.cpp).
  bool scatter = false;
};

class Harness {
 public:
  explicit Harness(std::uint8_t options_byte, std::uint8_t startup_byte)
      : sharded_((startup_byte & 0x10) != 0),
        options_(options_for(options_byte, sharded_)),
        router_(make_router(startup_byte)),
        session_(options_, router_, workspaces_, &recorder_) {
    auto defaults = std::make_shared<const session::ServerParameters>(
        session::ServerParameters{{"DateStyle", "ISO, MDY"},
                                  {"TimeZone", "UTC"},
                                  {"client_encoding", "UTF8"},
                                  {"application_name", ""},
                                  {"server_version", "15.0"}});
    if (startup_byte & 0x40) {  // stats.redact_literals: false: samples kept per request
      stats::Limits limits{8, std::chrono::milliseconds(1), 4};
      limits.redact_literals = false;
      query_stats_.set_limits(limits);
    }
    std::vector<std::pair<std::string, std::string>> startup = {{"user", "u"}, {"database", "d"}};
    if (startup_byte & 1) startup.emplace_back("DateStyle", "ISO");
    if (startup_byte & 2) startup.emplace_back("options", "-c statement_timeout=5s");
    if (startup_byte & 4) startup.emplace_back("application_name", "fuzz");
    ServerState* server = nullptr;
    if (options_.mode == config::PoolMode::Session || (startup_byte & 8)) {
      server = new_server();
      linked_[0] = server;
    }
    Reader none(nullptr, 0);
    step(session_.start(startup, defaults, {1, 2}, server, now_), Source::Client, {}, none, 0);
  }

  // Opcodes (op % 16): 0 raw client bytes, 1-2 a canned client message, 3 part of one, 4 raw
  // server bytes, 5 a canned server message (4 and 5: from the last linked server, or for a
  // sharded database the one op >> 4 picks), 6 a FakeServer answers (answer()), 7 a server lost,
  // 8 time passes, 9 a notification, 10 the listen hub answers, 11 the client leaves, 12 drain,
  // 13 client memory exhausted, 14 trim (op >> 4 != 0: the pool answers a checkout it made wait),
  // 15 bytes from a server that is not linked.
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
        case 4: {
          const LinkId id = server_to_read(op);
          server_bytes(id, in.bytes(in.byte()), in, false);
          break;
        }
        case 5: {
          const LinkId id = server_to_read(op);
          std::string m = server_message(in);
          server_bytes(id, m, in, false);
          break;
        }
        case 6:
          answer(in);
          break;
        case 7:
          lose_server(in);
          break;
        case 8:
          now_ += std::chrono::milliseconds(in.byte() * 37);
          step(session_.on_timer(now_), Source::Event, {}, in);
          break;
        case 9: {
          std::string n;
          const std::string payload(in.byte() * 4, 'p');
          protocol::append_notification_response(n, {9, "jobs", payload});
          const std::size_t unsent = static_cast<std::size_t>(in.byte()) * 8192;
          step(session_.on_notification(n, unsent), Source::Event, {}, in);
          break;
        }
        case 10: {
          const bool error = in.byte() & 1;
          if (error) {
            step(session_.on_hub_done(std::string_view("pgvalve: hub down")), Source::Event, {},
                 in);
          } else {
            step(session_.on_hub_done(std::nullopt), Source::Event, {}, in);
          }
          break;
        }
        case 11:
          client_gone(in);
          break;
        case 12: {
          const auto what = in.byte();
          if (what & 1) {
            step(session_.on_drain(), Source::Event, {}, in);
          } else {
            // ShardMap, Dbname, DatabaseRemoved or UserRemoved.
            step(session_.on_reload_change(static_cast<config::ReloadChange>(1 + (what >> 1) % 4)),
                 Source::Event, {}, in);
          }
          break;
        }
        case 13:
          if (const auto b = in.byte(); b % 4 == 0) {
            // The client's buffer may not grow: it waits for memory, or is refused at once.
            step(session_.on_client_memory_refused((b & 4) != 0, now_), Source::Event, {}, in);
          } else if (b % 4 == 1) {
            session_.on_client_memory_granted(now_);
          } else if (b % 4 == 2) {
            session_.client_progress(b, now_);
          }
          break;
        case 14:
          if (op >> 4) {
            // The pool answers a checkout it made wait.
            answer_checkout(in);
            break;
          }
          // The proxy trims a parked session: idle, nothing left to read, writes done.
          if (session_.idle() && client_in_.empty()) {
            session_.trim();
            kept_.clear();
          }
          break;
        default: {
          // Bytes from a server that is not linked (any more): consumed and dropped.
          const LinkId id = sharded_ ? static_cast<LinkId>((op >> 4) % kMaxLinks) : 0;
          if (linked_[id]) break;
          const std::string m = server_message(in);
          const Actions& a = session_.on_server_data(id, m, now_);
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
  static session::SessionOptions options_for(std::uint8_t b, bool sharded) {
    session::SessionOptions o;
    switch (b % 3) {
      case 0:
        o.mode = config::PoolMode::Transaction;
        break;
      case 1:
        // A sharded database cannot be used in session mode (config/load.cpp refuses it).
        o.mode = sharded ? config::PoolMode::Transaction : config::PoolMode::Session;
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

  static routing::ShardingPolicy sharding_policy() {
    routing::ShardingPolicy p;
    p.tables = {"telemetry", "archive"};
    p.reference_tables = {"device_types"};
    p.map = routing::ShardMap(routing::ShardHash::Md5Mod, routing::KeyType::Auto, kShardCount, {});
    p.shard_names = {"s0", "s1", "s2"};
    // Text merged through strcoll_l (C.UTF-8 is on every glibc host), as a libc collation is.
    p.text_order = std::make_shared<routing::TextOrderSlot>();
    p.text_order->set(routing::TextOrder::of('c', "C.UTF-8"));
    return p;
  }

  // One shard whose reads go to replicas; or three shards (reads to replicas with 0x20).
  routing::Router make_router(std::uint8_t startup_byte) {
    if (!sharded_) {
      return routing::Router{1, routing::RoutingPolicy{true, &write_functions_}, &decisions_};
    }
    const bool split = (startup_byte & 0x20) != 0;
    return routing::Router{
        kShardCount, routing::RoutingPolicy{split, &write_functions_, &sharding_, 1}, &decisions_};
  }

  ServerState* new_server() {
    servers_.push_back(session::testing::fresh_server_state());
    return servers_.back().get();
  }

  FakeServer& fake(const ServerState* server) { return fakes_[server]; }

  bool is_linked(const ServerState* server) const {
    return std::find(std::begin(linked_), std::end(linked_), server) != std::end(linked_);
  }

  int linked_ids(LinkId (&ids)[kMaxLinks]) const {
    int n = 0;
    for (LinkId i = 0; i < kMaxLinks; ++i) {
      if (linked_[i]) ids[n++] = i;
    }
    return n;
  }

  // The link whose server sends bytes: one shard's replica link while it has one (as before
  // sharding); for a sharded database the high bits of the opcode pick one (0: the last).
  LinkId server_to_read(std::uint8_t op) const {
    if (!sharded_) return linked_[1] ? 1 : 0;
    LinkId ids[kMaxLinks];
    const int n = linked_ids(ids);
    if (n == 0) return 0;
    return (op >> 4) == 0 ? ids[n - 1] : ids[(op >> 4) % n];
  }

  void lose_server(Reader& in) {
    const std::uint8_t b = in.byte();
    LinkId id = 0;
    if (!sharded_) {
      // Either linked server may die (session mode holds two while a read runs on a replica).
      id = linked_[1] && (b & 1) ? 1 : 0;
    } else {
      LinkId ids[kMaxLinks];
      const int n = linked_ids(ids);
      id = n == 0 ? 0 : ids[b % n];
    }
    step(session_.on_server_lost(id, now_), Source::Event, {}, in);
  }

  // A server answers what it was sent, as PostgreSQL would. Operands: `sel` picks the server
  // (bits 0-1: among the linked servers the session reads), how much it answers (bits 2-4: 0 the
  // next request up to its ReadyForQuery, else that many messages) and the fault (bits 5-7: 4 an
  // error, 5 the answer cut in two, the rest sent by a later answer, 6 a FATAL after part of it
  // and the connection lost, 7 an error and a cut); `v` shapes the answer (rows, values, which
  // error).
  void answer(Reader& in) {
    const std::uint8_t sel = in.byte();
    const std::uint8_t v = in.byte();
    LinkId ids[kMaxLinks];
    int n = 0;
    for (LinkId i = 0; i < kMaxLinks; ++i) {
      if (linked_[i] && session_.wants_server_input(i)) ids[n++] = i;
    }
    if (n == 0) return;
    const LinkId id = ids[(sel & 3) % n];
    ServerState* server = linked_[id];
    FakeServer& f = fake(server);
    const int unit = (sel >> 2) & 7;
    const int fault = sel >> 5;
    // What an earlier answer cut in two left goes first.
    std::string bytes = std::move(f.unsent);
    f.unsent.clear();
    const std::size_t carried = bytes.size();
    bytes += f.answer(unit, fault == 4 || fault == 7, v);
    if (fault >= 5) {
      std::size_t cut = bytes.size() * v / 256;
      if (fault == 6) {
        // A server going down ends its last whole message first.
        std::size_t whole = carried;
        while (whole < cut) {
          const auto r = protocol::decode_frame(std::string_view(bytes).substr(whole), 1u << 30);
          if (r.status != protocol::DecodeStatus::Ok || whole + r.frame.whole.size() > cut) break;
          whole += r.frame.whole.size();
        }
        cut = whole;
      } else {
        f.unsent = bytes.substr(cut);
      }
      bytes.resize(cut);
    }
    if (fault == 6) {
      protocol::ErrorFields e;
      e.severity = "FATAL";
      e.sqlstate = "57P01";
      e.message = "terminating connection due to administrator command";
      protocol::append_error_response(bytes, e);
    }
    if (trace_) {
      std::fprintf(stderr, "answer link %d: %s%s\n", id, tags_of(bytes).c_str(),
                   fault == 6 ? " (then lost)" : "");
    }
    if (!bytes.empty()) server_bytes(id, bytes, in, true);
    if (fault == 6 && linked_[id] == server) {
      step(session_.on_server_lost(id, now_), Source::Event, {}, in);
    }
  }

  void client_bytes(std::string_view bytes, Reader& in) {
    client_in_.append(bytes);
    feed_client(in);
  }

  void feed_client(Reader& in) {
    if (client_in_.empty() || !session_.wants_client_input()) return;
    const std::string input = client_in_;  // the step's input stays put while it is read
    if (trace_ > 1) std::fprintf(stderr, "client sends:\n%s", frontend_detail(input).c_str());
    const Actions& a = session_.on_client_data(input, now_);
    step(a, Source::Client, input, in, kAnyLink);
  }

  // Bytes from the server of link `id` (`faithful`: the FakeServer's own answers).
  void server_bytes(LinkId id, std::string_view bytes, Reader& in, bool faithful) {
    if (!linked_[id]) return;  // nobody reads a server that is not linked
    CHECK(session_.wants_server_input(id) || session_.state() == SessionState::Closing);
    if (!sharded_ && linked_[1]) CHECK(!session_.wants_server_input(0));
    if (!faithful) {
      fake(linked_[id]).faithful = false;
      unfaithful_seen_ = true;
    }
    server_in_[id].append(bytes);
    const std::string input = server_in_[id];
    const Actions& a = session_.on_server_data(id, input, now_);
    step(a, Source::Server, input, in, id);
  }

  void client_gone(Reader& in) {
    step(session_.on_client_gone(), Source::Event, {}, in);
    CHECK(session_.state() == SessionState::Closing);
    CHECK(session_.link_count() == 0);
    gone_ = true;
  }

  void begin_scatter() {
    // A statement over the shards of the client's transaction runs on the servers it holds.
    scatter_held_ = std::any_of(std::begin(linked_), std::end(linked_),
                                [](const ServerState* s) { return s != nullptr; });
    scatter_next_ = 0;
    scatter_last_shard_ = -1;
    scatter_checkouts_ = 0;
    scatter_rerun_ = 0;
    scatter_checkout_failed_ = false;
    scatter_tags_.clear();
    portal_answered_ = false;
    scatter_gid_.clear();
  }

  // A statement over several shards was answered.
  void end_scatter() {
    if (session_.state() == SessionState::Closing) return;
    if (scatter_held_) {
      // On the client's transaction's servers: they stay, unless the transaction ended.
      CHECK(session_.state() == SessionState::Holding ||
            (session_.state() == SessionState::Idle && session_.link_count() == 0));
    } else {
      CHECK(session_.state() == SessionState::Idle);
      CHECK(session_.link_count() == 0);
    }
    // One answer, ending with its ReadyForQuery (unless a server that is not PostgreSQL sent
    // a ReadyForQuery of its own, before or during the scatter: it reaches the client). A
    // suspended portal that another request ended has no answer of its own.
    const bool portal_ended = portal_answered_ && scatter_tags_.empty();
    portal_answered_ = false;
    if (!unfaithful_seen_ && !portal_ended) {
      CHECK(std::count(scatter_tags_.begin(), scatter_tags_.end(), 'Z') == 1);
    }
    if (scatter_gid_.empty()) return;
    // A write rolled back is an error for the client.
    if (commit_decisions_[scatter_gid_] == 'R') CHECK(scatter_tags_.find('E') != std::string::npos);
    // Nothing stays prepared on a server that answered faithfully and is still there (unless
    // the parts were left to follow the decider).
    if (followed_.count(scatter_gid_) != 0) return;
    for (const ServerState* s : prepares_[scatter_gid_]) {
      auto it = fakes_.find(s);
      if (it == fakes_.end() || !it->second.faithful) continue;
      CHECK(it->second.prepared.count(scatter_gid_) == 0);
    }
  }

  // A transaction over several shards ended: nothing of it stays prepared on a server that
  // answered faithfully and is still there.
  void end_shard_transaction() {
    if (scatter_gid_.empty() || followed_.count(scatter_gid_) != 0) return;
    for (const ServerState* s : prepares_[scatter_gid_]) {
      auto it = fakes_.find(s);
      if (it == fakes_.end() || !it->second.faithful) continue;
      CHECK(it->second.prepared.count(scatter_gid_) == 0);
    }
    scatter_gid_.clear();
  }

  // The client left (or was closed) while a write over several shards ran: no server that
  // answered faithfully went back to the pool with its part still prepared, undecided.
  void check_left_prepared() {
    if (scatter_gid_.empty() || followed_.count(scatter_gid_) != 0) return;
    for (const ServerState* s : prepares_[scatter_gid_]) {
      auto it = fakes_.find(s);
      if (it == fakes_.end() || !it->second.faithful) continue;
      if (it->second.prepared.count(scatter_gid_) != 0) {
        violated("a write's prepared part is left undecided when the client leaves", __LINE__);
      }
    }
  }

  bool closing(const ServerState* server, const std::vector<LinkOp>& ops) const {
    for (const LinkOp& op : ops) {
      if (op.link < kMaxLinks && linked_[op.link] == server &&
          (op.kind == LinkOp::Kind::Close || op.kind == LinkOp::Kind::CancelAndClose)) {
        return true;
      }
    }
    return false;
  }

  void check_two_phase(std::string_view to_server, const ServerState* target,
                       const std::vector<LinkOp>& ops) {
    while (!to_server.empty()) {
      const auto r = protocol::decode_frame(to_server, 1u << 30);
      to_server.remove_prefix(r.frame.whole.size());
      if (r.frame.tag != 'Q') continue;
      const auto sql = protocol::read_query(r.frame);
      if (!sql) continue;
      const routing::StatementInfo info = routing::classify(*sql);
      const std::string gid(info.value);
      if (!gid.starts_with("'pgvalve:")) continue;
      using K = routing::StatementKind;
      if (info.kind == K::PrepareTransaction) {
        CHECK(session_.several_servers());
        // A transaction over several shards asks each of its parts at once.
        if (!session_.scattering()) transaction_parts_[gid] = session_.link_count();
        prepares_[gid].push_back(target);
        scatter_gid_ = gid;
        continue;
      }
      if (info.kind != K::CommitPrepared && info.kind != K::RollbackPrepared) continue;
      const char decision = info.kind == K::CommitPrepared ? 'C' : 'R';
      char& decided = commit_decisions_[gid];
      // A first COMMIT PREPARED that failed committed nothing (no server whose answers are this
      // model's committed it; another says what it likes): the others may be rolled back.
      if (decided == 'C' && decision == 'R' && commits_sent_[gid] == 1 &&
          std::none_of(fakes_.begin(), fakes_.end(), [&](const auto& f) {
            return f.second.faithful && f.second.committed.count(gid) != 0;
          })) {
        decided = 0;
      }
      // Never committed on some shards and rolled back on others.
      CHECK(decided == 0 || decided == decision);
      // Decided only where it was prepared...
      const auto& sent = prepares_[gid];
      CHECK(std::find(sent.begin(), sent.end(), target) != sent.end());
      // ... on one server after the other (a server this step closes no longer counts).
      for (const auto& [server, f] : fakes_) {
        if (f.faithful && !closing(server, ops)) CHECK(!f.decision_queued());
      }
      if (decided == 0 && decision == 'C') {
        // Committed only when every shard's server prepared it and is still there.
        if (const auto parts = transaction_parts_.find(gid); parts != transaction_parts_.end()) {
          CHECK(sent.size() == parts->second);
        } else {
          CHECK(!scatter_checkout_failed_);
          CHECK(sent.size() == scatter_checkouts_);
        }
        for (const ServerState* s : sent) {
          CHECK(is_linked(s));
          const FakeServer& f = fake(s);
          if (f.faithful) CHECK(f.prepared.count(gid) == 1);
        }
      }
      if (decision == 'C') ++commits_sent_[gid];
      decided = decision;
    }
  }

  // The pool's answer `b` to the checkout the session waits for.
  void give_checkout(std::uint8_t b, bool scatter, Reader& in) {
    if (b % 8 == 7) {
      if (scatter) scatter_checkout_failed_ = true;
      const Actions& failed =
          session_.on_checkout_failed("53300", "pgvalve: no server within the timeout", now_);
      step(failed, Source::Client, {}, in);
      return;
    }
    ServerState* server = nullptr;
    if ((b & 8) && !idle_.empty()) {
      server = idle_[b / 16 % idle_.size()];
      idle_.erase(idle_.begin() + static_cast<long>(b / 16 % idle_.size()));
    } else {
      server = new_server();
    }
    const LinkId id = session_.pending_link();
    CHECK(id < kMaxLinks);
    CHECK(linked_[id] == nullptr);
    linked_[id] = server;
    scatter_link_[id] = scatter;
    const Actions& got = session_.on_linked(*server, now_);
    step(got, Source::Client, {}, in, id);
  }

  void answer_checkout(Reader& in) {
    const std::uint8_t b = in.byte();
    if (!pending_checkout_) return;
    pending_checkout_ = false;
    // A session that no longer waits (it closed) is not answered: the proxy gave up the wait.
    if (session_.state() != SessionState::WaitingForServer) return;
    give_checkout(b % 8 == 6 ? 0 : b, pending_scatter_, in);
  }

  // Checks one step's Actions and carries them out. `link`: the link whose bytes a server step
  // read, or the link an on_linked step linked (kAnyLink: a client step).
  void step(const Actions& a, Source source, std::string_view input, Reader& in,
            LinkId link = kAnyLink) {
    // Steps nested in one another (a checkout answered, the client resumed) without reading any
    // input: a request that waited resumes in a bounded number of them. A step that reads input
    // starts the count again for the steps nested in it (a pipeline of requests, each read in
    // its turn, nests as deep as it is long).
    struct Nesting {
      int& depth;
      int saved;
      ~Nesting() { depth = saved; }
    } nesting{unproductive_depth_, unproductive_depth_};
    unproductive_depth_ = a.consumed == 0 ? unproductive_depth_ + 1 : 0;
    // Parts left to follow the deciding shard's outcome stay prepared by design: the resolver
    // finishes them (two_phase.h).
    for (const pgvalve::session::PreparedPart& p : a.prepared_parts) {
      if (trace_) {
        std::fprintf(stderr, "  part left prepared: shard %d %s commit %d follow %d\n", p.shard,
                     std::string(p.gid()).c_str(), p.commit, p.follow);
      }
      if (p.follow) followed_.insert("'" + std::string(p.gid()) + "'");
    }
    if (unproductive_depth_ > 32) {
      violated("a waiting request does not resume in bounded steps", __LINE__);
    }
    const bool scattering = session_.scattering();
    // A statement or a transaction over several shards.
    const bool several = session_.several_servers();
    if ((several_ && !several) || (scattering_ && !scattering)) {
      std::erase_if(kept_, [](const Kept& k) { return k.scatter; });
    }
    check_kept(source, link);
    const SessionState now_state = session_.state();
    if (trace_) print_step(a, source, link, now_state);
    CHECK(session::transition_allowed(state_, now_state));
    state_ = now_state;
    if (pending_checkout_ && now_state != SessionState::WaitingForServer) {
      // The session stops waiting for the server it asked for only when it closes (the I/O layer
      // then gives up the wait); else the server the pool finds would be linked to nothing. (A
      // ReadyForQuery nobody asked for, from a server that is not PostgreSQL, does end a
      // session-mode client's wait for a replica: not checked.)
      const bool unfaithful = source == Source::Server && link < kMaxLinks && linked_[link] &&
                              !fake(linked_[link]).faithful;
      if (!unfaithful) CHECK(now_state == SessionState::Closing);
      pending_checkout_ = false;
    }
    if (scattering && !scattering_) begin_scatter();
    if (several && !several_ && !scattering) scatter_gid_.clear();

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
    const LinkId kept_link = source == Source::Server ? link : 0;
    std::string to_server;
    for (const Chunk& c : a.to_server) {
      CHECK(c.data != nullptr || c.size == 0);
      to_server.append(c.data, c.size);
      if (!(c.data >= in_begin && c.data + c.size <= in_end)) {
        kept_.push_back({source, kept_link, c.data, std::string(c.data, c.size), several});
      }
    }
    for (const Chunk& c : a.to_client) {
      CHECK(c.data != nullptr || c.size == 0);
      const bool in_input = c.data >= in_begin && c.data + c.size <= in_end;
      if (!in_input) kept_.push_back({source, kept_link, c.data, std::string(c.data, c.size)});
      // Only the server's own bytes may continue a message of the server.
      read_client_stream({c.data, c.size}, source == Source::Server && in_input);
    }
    read_client_stream(a.outbox, false);
    if (!to_server.empty()) {
      CHECK(a.server_link < kMaxLinks);
      ServerState* target = linked_[a.server_link];
      CHECK(target != nullptr);
      check_whole_frontend_messages(to_server);
      // A server step writes to the server it read; an event or a step for another link only
      // to a shard's server while a statement runs over several shards (its commit decision).
      if (source == Source::Event) {
        CHECK(scatter_link_[a.server_link]);
      } else if (link != kAnyLink && a.server_link != link) {
        CHECK(scatter_link_[a.server_link]);
        CHECK(link < kMaxLinks && scatter_link_[link]);
      }
      check_two_phase(to_server, target, a.link_ops);
      fake(target).receive(to_server);
    }
    // Bytes for several shards' servers in one step (COPY rows routed to their shards), each
    // link's in order.
    for (LinkId id = 0; id < kMaxLinks; ++id) {
      std::string bytes;
      for (const LinkChunk& c : a.to_links) {
        CHECK(c.link < kMaxLinks);
        CHECK(c.chunk.data != nullptr || c.chunk.size == 0);
        if (c.link != id) continue;
        bytes.append(c.chunk.data, c.chunk.size);
        if (!(c.chunk.data >= in_begin && c.chunk.data + c.chunk.size <= in_end)) {
          kept_.push_back({source, kept_link, c.chunk.data, std::string(c.chunk.view()), true});
        }
      }
      if (bytes.empty()) continue;
      CHECK(linked_[id] != nullptr);
      CHECK(scatter_link_[id] || several || several_);
      check_whole_frontend_messages(bytes);
      check_two_phase(bytes, linked_[id], a.link_ops);
      fake(linked_[id]).receive(bytes);
    }

    // Statistics left until the writes are done: they may read the step's input.
    session_.account();

    // Consumed input.
    if (source == Source::Client) {
      CHECK(input == std::string_view(client_in_).substr(0, input.size()));
      client_in_.erase(0, a.consumed);
    } else if (source == Source::Server) {
      server_in_[link].erase(0, a.consumed);
    }

    // Commands.
    int ops_on[kMaxLinks] = {};
    for (const LinkOp& op : a.link_ops) {
      CHECK(op.link < kMaxLinks);
      ServerState*& server = linked_[op.link];
      CHECK(server != nullptr);
      // A shard a streamed merge held back is read again: nothing changes hands.
      if (op.kind == LinkOp::Kind::Read) continue;
      CHECK(++ops_on[op.link] == 1);
      FakeServer& f = fake(server);
      if (op.kind == LinkOp::Kind::Release) {
        CHECK(server->tx_status == 'I');
        // A server that answered as PostgreSQL would owes nothing more and is outside a
        // transaction.
        if (f.faithful) {
          CHECK(f.tx == 'I');
          CHECK(f.idle());
        }
        f.released();
        idle_.push_back(server);
      } else if (op.kind == LinkOp::Kind::CleanAndRelease) {
        CHECK(!op.sql[0].empty());
        if (const std::size_t at = op.sql[0].find(" PREPARED '"); at != std::string_view::npos) {
          // The decision for a part whose client left: the same as the other shards'.
          const std::string gid(op.sql[0].substr(at + 10));
          const char decision = op.sql[0].starts_with("COMMIT") ? 'C' : 'R';
          const char decided = commit_decisions_[gid];
          CHECK(decided == decision || (decided == 0 && decision == 'R'));
          const auto& sent = prepares_[gid];
          CHECK(std::find(sent.begin(), sent.end(), server) != sent.end());
        }
        if (f.faithful) CHECK(f.idle());
        server->tx_status = 'I';  // what the clean-up leaves
        f.clean(op.sql[0]);
        f.clean(op.sql[1]);
        idle_.push_back(server);
      } else {
        fakes_.erase(server);  // closed
      }
      server = nullptr;
      server_in_[op.link].clear();
      scatter_link_[op.link] = false;
    }
    if (!sharded_) {
      // Link 1 only in session mode (its own server, link 0, may have died meanwhile).
      if (linked_[1]) CHECK(options_.mode == config::PoolMode::Session);
      for (LinkId i = 2; i < kMaxLinks; ++i)
        CHECK(linked_[i] == nullptr);
    } else {
      // Links past 0 only for a statement or a transaction over several shards.
      for (LinkId i = 1; i < kMaxLinks; ++i) {
        if (linked_[i]) CHECK(several);
      }
    }
    std::size_t count = 0;
    for (LinkId i = 0; i < kMaxLinks; ++i) {
      CHECK(session_.linked(i) == (linked_[i] != nullptr));
      if (linked_[i]) ++count;
    }
    CHECK(session_.link_count() == count);
    if (scattering) {
      CHECK(now_state == SessionState::WaitingForServer || now_state == SessionState::Scattering ||
            now_state == SessionState::Copying || now_state == SessionState::PortalSuspended ||
            now_state == SessionState::Closing);
      if (now_state == SessionState::PortalSuspended && !scatter_tags_.empty()) {
        // A portal fetched in parts: each Execute's answer ends with its ReadyForQuery (and
        // the notifications that waited for it); between them only notifications come.
        const auto ends = std::count(scatter_tags_.begin(), scatter_tags_.end(), 'Z');
        if (!unfaithful_seen_) {
          CHECK(ends == 1 || scatter_tags_.find_first_not_of('A') == std::string::npos);
        }
        scatter_tags_.clear();
        portal_answered_ |= ends > 0;
      }
      if (!scatter_held_) {
        for (LinkId i = scatter_next_; i < kMaxLinks; ++i)
          CHECK(linked_[i] == nullptr);
      }
    }
    if (!scattering && scattering_) end_scatter();
    if (!several && several_ && !scattering_) end_shard_transaction();
    scattering_ = scattering;
    several_ = several;

    pinned_ += a.pinned_change;
    CHECK(pinned_ == (session_.pinned() ? 1 : 0));
    CHECK(a.statement_evictions >= 0);

    if (a.close_client) {
      CHECK(session_.state() == SessionState::Closing);
      CHECK(session_.link_count() == 0);
      after_close_ = true;
      if (several_ || several) check_left_prepared();
      return;
    }
    const bool resume = a.resume_client;
    const bool check_out = a.check_out;
    if (check_out) {
      CHECK(session_.state() == SessionState::WaitingForServer);
      CHECK(a.route.kind == routing::Route::Kind::Primary ||
            a.route.kind == routing::Route::Kind::Replica);
      CHECK(a.route.shard < (sharded_ ? kShardCount : 1));
      const LinkId id = session_.pending_link();
      CHECK(id < kMaxLinks);
      CHECK(linked_[id] == nullptr);
      const bool scatter = session_.scattering();
      if (scatter) {
        if (id < scatter_next_) {
          // A read's part cut on a replica runs again, once, on its shard, under its link.
          CHECK(a.route.kind == routing::Route::Kind::Replica);
          CHECK(a.route.shard == scatter_shard_of_[id]);
          CHECK((scatter_rerun_ & (1u << id)) == 0);
          scatter_rerun_ |= 1u << id;
        } else {
          // One server per shard, in shard order, as links 0, 1, 2, ...; none held before.
          CHECK(id == scatter_next_);
          if (id == 0) CHECK(session_.link_count() == 0);
          CHECK(static_cast<int>(a.route.shard) > scatter_last_shard_);
          scatter_last_shard_ = a.route.shard;
          scatter_shard_of_[id] = a.route.shard;
          ++scatter_next_;
          ++scatter_checkouts_;
        }
      }
      // The pool answers: a server (a fresh one or one given back earlier), none, or later (the
      // session waits meanwhile: its linked servers answer, the client leaves, time passes).
      CHECK(!pending_checkout_);
      const std::uint8_t b = in.byte();
      if (b % 8 == 6) {
        pending_checkout_ = true;
        pending_scatter_ = scatter;
      } else {
        give_checkout(b, scatter, in);
      }
    }
    if (resume) feed_client(in);
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

  void print_step(const Actions& a, Source source, LinkId link, SessionState now_state) const {
    std::string to_client;
    for (const Chunk& c : a.to_client)
      to_client.append(c.data, c.size);
    to_client += a.outbox;
    std::string to_server;
    for (const Chunk& c : a.to_server)
      to_server.append(c.data, c.size);
    std::string to_links;
    for (const LinkChunk& c : a.to_links)
      to_links += " " + std::to_string(c.link) + ":" + std::to_string(c.chunk.size);
    const char* names[] = {"client", "server", "event"};
    std::string from = names[static_cast<int>(source)];
    if (link != kAnyLink && source != Source::Event) from += std::to_string(link);
    std::string ops;
    for (const LinkOp& op : a.link_ops) {
      static const char* const kinds[] = {"release", "close", "cancel+close", "clean+release"};
      ops += " " + std::string(kinds[static_cast<int>(op.kind)]) + ":" + std::to_string(op.link);
    }
    std::fprintf(stderr,
                 "%-7s %-16s consumed=%zu to_client=%s to_server%s=%s ops=[%s ] checkout=%d%s "
                 "resume=%d close=%d pinned%+d%s%s%s\n",
                 from.c_str(), std::string(session::state_name(now_state)).c_str(), a.consumed,
                 tags_of(to_client).c_str(),
                 to_server.empty() ? "" : std::to_string(a.server_link).c_str(),
                 tags_of(to_server).c_str(), ops.c_str(), a.check_out,
                 a.check_out ? (" link" + std::to_string(session_.pending_link()) + " shard" +
                                std::to_string(a.route.shard))
                                   .c_str()
                             : "",
                 a.resume_client, a.close_client, a.pinned_change,
                 session_.scattering() ? " scattering" : "", to_links.empty() ? "" : " to_links",
                 to_links.c_str());
    if (trace_ > 1) std::fprintf(stderr, "%s", frontend_detail(to_server).c_str());
    for (const LinkChunk& c : a.to_links) {
      if (trace_ > 1) {
        std::string hex;
        for (char ch : c.chunk.view()) {
          char b[4];
          std::snprintf(b, sizeof b, "%02x", static_cast<unsigned char>(ch));
          hex += b;
        }
        std::fprintf(stderr, "  to link %d: %s\n", c.link, hex.c_str());
      }
    }
  }

  // SESSION_FUZZ_TRACE=2: what the frontend messages for a server say.
  static std::string frontend_detail(std::string_view bytes) {
    std::string out;
    while (!bytes.empty()) {
      const auto r = protocol::decode_frame(bytes, 1u << 30);
      if (r.status != protocol::DecodeStatus::Ok) break;
      const protocol::Frame& f = r.frame;
      bytes.remove_prefix(f.whole.size());
      std::string d(1, f.tag);
      if (f.tag == 'Q') {
        d += " " + std::string(protocol::read_query(f).value_or("?"));
      } else if (f.tag == 'P') {
        if (auto p = protocol::read_parse(f)) {
          d += " " + std::string(p->statement) + ": " + std::string(p->query);
        }
      } else if (f.tag == 'B') {
        if (auto b = protocol::read_bind_head(f)) {
          d += " " + std::string(b->portal) + " <- " + std::string(b->statement);
        }
      } else if (f.tag == 'D' || f.tag == 'C') {
        if (auto c = f.tag == 'D' ? protocol::read_describe(f) : protocol::read_close(f)) {
          d += std::string(" ") + c->kind + " " + std::string(c->name);
        }
      } else if (f.tag == 'E') {
        if (auto e = protocol::read_execute(f)) d += " " + std::string(e->portal);
      }
      if (d.size() > 90) d = d.substr(0, 87) + "...";
      out += "    > " + d + "\n";
    }
    return out;
  }

  // Chunks kept from earlier steps of other sources still hold their bytes.
  void check_kept(Source source, LinkId link) {
    std::vector<Kept> still;
    for (auto& k : kept_) {
      // The new step of that source may reuse it.
      if (k.source == source && (source != Source::Server || k.link == link)) continue;
      if (std::memcmp(k.data, k.copy.data(), k.copy.size()) != 0 && trace_) {
        std::fprintf(stderr, "kept changed: source %d link %d scatter %d bytes %s\n",
                     static_cast<int>(k.source), k.link, k.scatter, tags_of(k.copy).c_str());
      }
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
      if (scattering_ || session_.scattering()) scatter_tags_ += client_header_[0];
      client_remaining_ = length - 4;
      client_header_.clear();
      // A message that does not end in this chunk: only a server's can (pgvalve writes its own
      // whole).
      mid_server_message_ = client_remaining_ > bytes.size();
      CHECK(!mid_server_message_ || server_bytes);
    }
    if (client_remaining_ == 0) mid_server_message_ = false;
  }

  const bool sharded_;
  session::SessionOptions options_;
  session::WorkspacePool workspaces_;
  // Reads go to replicas, so the fuzzer also drives the router, its decision cache and the
  // one-request-at-a-time planning of replica links; sharded, also the shard plans, scatter
  // plans and INSERT splits.
  std::vector<std::string> write_functions_{"nextval", "setval"};
  routing::DecisionCache decisions_{64};
  const routing::ShardingPolicy sharding_ = sharding_policy();
  routing::Router router_;
  // Statements are counted too (a small cap, so eviction runs).
  const std::string database_ = "d";
  const std::string user_ = "u";
  stats::QueryStats query_stats_{stats::Limits{8, std::chrono::milliseconds(1), 4}};
  stats::Recorder recorder_{&query_stats_, {&database_, &user_}};
  Session session_;
  Clock::time_point now_ = Clock::time_point{} + std::chrono::hours(1);
  std::vector<std::unique_ptr<ServerState>> servers_;
  std::vector<ServerState*> idle_;
  std::unordered_map<const ServerState*, FakeServer> fakes_;
  ServerState* linked_[kMaxLinks] = {};
  bool scatter_link_[kMaxLinks] = {};  // linked for a statement over several shards
  // A checkout the pool answers later (opcode 14), and whether it is a shard's.
  bool pending_checkout_ = false;
  bool pending_scatter_ = false;
  std::string client_in_;
  std::string server_in_[kMaxLinks];
  std::string client_header_;
  std::size_t client_remaining_ = 0;
  bool mid_server_message_ = false;
  std::vector<Kept> kept_;
  SessionState state_ = SessionState::LoggingIn;
  // The statement over several shards running now (session_.scattering()).
  bool scattering_ = false;
  bool several_ = false;       // session_.several_servers() after the last step
  bool scatter_held_ = false;  // the statement over several shards runs on held servers
  // A transaction over several shards: how many parts its PREPARE TRANSACTION went to, by gid.
  std::map<std::string, std::size_t> transaction_parts_;
  LinkId scatter_next_ = 0;      // the link its next checkout is for
  int scatter_last_shard_ = -1;  // the shard of its last checkout
  std::size_t scatter_checkouts_ = 0;
  std::uint16_t scatter_shard_of_[kMaxLinks] = {};  // the shard each link's part is for
  std::uint32_t scatter_rerun_ = 0;                 // links whose part ran again
  bool scatter_checkout_failed_ = false;
  bool unfaithful_seen_ = false;  // a server of this session sent bytes of the fuzzer's
  std::string scatter_tags_;      // the types of the messages the client got since it started
  bool portal_answered_ = false;  // ... and it is a portal fetched in parts, whose part ended
  std::string scatter_gid_;       // a write's prepared transaction
  // Writes over several shards: where each gid was prepared, and how it was decided.
  std::map<std::string, std::vector<const ServerState*>> prepares_;
  std::map<std::string, char> commit_decisions_;
  std::map<std::string, int> commits_sent_;  // COMMIT PREPAREDs, per gid
  std::set<std::string> followed_;           // gids whose parts follow their decider
  int pinned_ = 0;
  int unproductive_depth_ = 0;
  bool gone_ = false;
  bool after_close_ = false;
  // SESSION_FUZZ_TRACE=1: every step; 2: also what each server is sent.
  int trace_ = std::getenv("SESSION_FUZZ_TRACE")
                   ? std::max(1, std::atoi(std::getenv("SESSION_FUZZ_TRACE")))
                   : 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  Reader in(data + 2, size - 2);
  Harness h(data[0], data[1]);
  try {
    h.play(in);
  } catch (const KnownFinding& k) {
    if (std::getenv("SESSION_FUZZ_TRACE")) std::fprintf(stderr, "known finding: %s\n", k.what);
  }
  return 0;
}
