// The read/write decision for a statement string, from PostgreSQL 15's own grammar
// (libpg_query). "Read" means: the parse tree proves that the whole string only reads, so a hot
// standby replica may run it. Anything not proven is a write and goes to the primary.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pgvalve::routing {

// Why a statement is not a read (Read when it is one).
enum class AccessReason : std::uint8_t {
  Read,
  SyntaxError,         // libpg_query rejected it (detail: the start of its message)
  Empty,               // only comments / ';'
  MultipleStatements,  // more than one statement in the string
  NotRead,             // a statement kind that never reads only (detail: its parse node)
  DataModifying,       // INSERT/UPDATE/DELETE/MERGE (detail: which)
  WritableCte,         // WITH x AS (INSERT/UPDATE/DELETE/MERGE ...) (detail: which)
  LockingClause,       // FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE anywhere (detail: which)
  SelectInto,          // SELECT ... INTO creates a table
  WriteFunction,       // a call to a write_functions entry (detail: its name)
  UnknownFunction,     // a call to a function not known to be read-only (detail: its name)
  UnknownOperator,     // an operator not known to be read-only (detail: the operator)
  DoBlock,
  Call,
  CopyFrom,
  CopyToFile,           // COPY ... TO 'file' / PROGRAM: the file lands on the server that runs it
  ExplainAnalyzeWrite,  // EXPLAIN ANALYZE runs the statement (detail: which)
  // SHOW transaction_read_only or in_hot_standby: clients ask to learn whether they may write
  // (pgjdbc's targetServerType), and the answer is the primary's. (pg_is_in_recovery() is a
  // read: it tells which server ran it.)
  ServerRole,
  // Proven to read but for pg_notify() calls: a notification, which a hot standby cannot send,
  // and no table written. On a sharded database any one shard's primary sends it.
  Notify,
};

std::string_view access_reason_name(AccessReason reason);

// Small and trivially copyable (a cache entry): no heap, the detail is stored inline.
struct StatementAccess {
  static constexpr std::size_t kDetailCapacity = 63;  // NAMEDATALEN - 1

  bool read = false;    // proven read-only: may run on a hot standby
  bool parsed = false;  // false: not valid SQL (never a read)
  // A read of the state of the backend that runs it: pg_backend_pid(), pg_listening_channels(),
  // pg_my_temp_schema(), pg_is_other_temp_schema(), the views pg_cursors,
  // pg_prepared_statements and pg_backend_memory_contexts. A replica answers about a backend
  // that is not the client's session.
  bool own_backend = false;
  AccessReason reason = AccessReason::SyntaxError;

  // What the reason is about (function or operator name, statement node), cut to
  // kDetailCapacity bytes. Only ever text the statement's fingerprint captures (names, keywords),
  // never a literal, so the value can be cached per fingerprint.
  std::string_view detail() const { return {detail_.data(), detail_size_}; }
  void set_detail(std::string_view text);

  // "write function nextval", "read" (allocates; for logs and tests).
  std::string describe() const;

 private:
  std::array<char, kDetailCapacity> detail_{};
  std::uint8_t detail_size_ = 0;
};

// Parses `sql` once with libpg_query and walks the tree. Reads: SELECT, VALUES, TABLE, SHOW,
// EXPLAIN without ANALYZE (of SELECT/INSERT/UPDATE/DELETE/MERGE: it only plans), EXPLAIN ANALYZE
// of a read, COPY (query or table) TO STDOUT of a read, and WITH without data-modifying CTEs;
// in each, anywhere in the tree: no locking clause, no SELECT INTO, every function called known
// read-only and every operator a built-in one. A function is known read-only when its name
// (qualified with pg_catalog or not) is not in `write_functions` (compared case-insensitively)
// and is in the built-in table (read_only_functions.h). Any ANALYZE option counts as ANALYZE,
// even `ANALYZE false`, because a literal there is invisible to the fingerprint.
// Thread-safe (libpg_query keeps its state per thread). Allocates (parse tree, JSON).
StatementAccess decide_access(std::string_view sql,
                              const std::vector<std::string>& write_functions);

// PostgreSQL 15's grammar accepts `sql` (a libpg_query parse; allocates).
bool is_valid_sql(std::string_view sql);

}  // namespace pgvalve::routing
