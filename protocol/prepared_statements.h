// Named prepared statements under transaction pooling. A client's statement names mean
// nothing on the server it is lent next, so pgvalve keeps each client's definitions and gives
// every distinct (query, parameter types) one server-side name derived from its hash; clients
// that prepare the same text share it, and it can be prepared again on any server.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "protocol/frame.h"

namespace pgvalve::protocol {

struct PreparedStatement {
  std::string query;
  std::string param_types;  // raw int32 OIDs, as in Parse
  std::uint64_t hash = 0;
  std::uint64_t fingerprint = 0;  // of the query's shape (statistics); 0: not computed
  std::uint64_t defined = 0;      // the client's definition order (ClientStatements)
  // When the client defined it (its session clock's ticks): a table it reads that changed its
  // result type later makes it stale for this client (PostgreSQL's "cached plan must not change
  // result type") until the client prepares it again.
  std::int64_t defined_at = 0;
  // Found so on this client's own server only (it is pinned there, and its own temporary table
  // may be what changed): stale for this client alone, until it prepares it again.
  bool stale = false;
  // The client closed it in a request the server has not answered yet (the number of that
  // Close, from 1; 0: not being closed): the name counts as free (find() does not return it)
  // until the server's answer drops it, or a failure of the request before its Close brings it
  // back.
  std::uint64_t closing = 0;
  // A server has prepared it once: PostgreSQL accepted it. Until then a failed Parse of it means
  // the client has no such statement, as on PostgreSQL.
  bool confirmed = false;
  // The result_shape() a server described it with to the client, which drivers decode its rows
  // by from then on (asyncpg, pgx, PgJDBC, postgres.js); 0: the client never asked;
  // kDescribedPerPortal: the client describes each portal it binds (libpq, psycopg).
  std::uint64_t shape = 0;
};
inline constexpr std::uint64_t kDescribedPerPortal = 1;

// The shape of the rows a Describe of a statement announced (RowDescription), as PostgreSQL
// compares it before it refuses to run a cached plan (0A000): each column's name, type, size and
// modifier, in order. A hash above kDescribedPerPortal; 0 for NoData (a statement without rows:
// nothing to decode) or any other message.
std::uint64_t result_shape(const Frame& f);

// The prefix of the names pgvalve gives statements on servers.
inline constexpr std::string_view kServerStatementPrefix = "pgv_";

// "pgv_" + 16 hex digits of the hash, without allocating.
class ServerStatementName {
 public:
  explicit ServerStatementName(std::uint64_t hash);
  operator std::string_view() const { return {text_, kLength}; }

 private:
  static constexpr std::size_t kLength = 20;
  char text_[kLength];
};
inline ServerStatementName server_statement_name(std::uint64_t hash) {
  return ServerStatementName(hash);
}
// Keyed (protocol/keyed_hash.h): a client cannot make its statement's name equal another's.
// `context`: a hash of the client's settings that PostgreSQL reads a statement's text by when it
// prepares it (search_path resolves its names; TimeZone, DateStyle, standard_conforming_strings,
// ... read and fold its literals), 0 when the client set none: the same text under other such
// settings is another statement (Settings::statement_context).
std::uint64_t statement_hash(std::string_view query, std::string_view param_types,
                             std::uint64_t context = 0);

// One client's statements by the names it gave them.
class ClientStatements {
 public:
  // The statement of `name`, unless it is being closed.
  const PreparedStatement* find(std::string_view name) const;
  // Also one being closed.
  const PreparedStatement* find_any(std::string_view name) const;
  // The client closed `name`: the number of this Close, 0 when it had no such statement
  // (find()).
  std::uint64_t close(std::string_view name);
  // The server answered Close number `close`: its statement is forgotten; returns the bytes of
  // text it held. closed_skipped() brings it back instead (the server skipped the Close after
  // an error before it). Each Close is its own: statements of the same text are apart.
  std::size_t erase_closing(std::uint64_t close);
  void closed_skipped(std::uint64_t close);
  const PreparedStatement& define(std::string_view name, std::string_view query,
                                  std::string_view param_types, std::uint64_t fingerprint = 0,
                                  std::uint64_t context = 0, std::int64_t at = 0);
  bool erase(std::string_view name);
  // A server prepared statements of `hash`: each is confirmed.
  void confirm(std::uint64_t hash);
  // A server found statements of `hash` stale for this client alone (PreparedStatement::stale).
  void stale(std::uint64_t hash);
  // A server described statements of `hash` to the client with `shape` (result_shape).
  void described(std::uint64_t hash, std::uint64_t shape);
  // A server refused to prepare statements of `hash`: those not confirmed are forgotten. Returns
  // the bytes of text they held.
  std::size_t forget_unconfirmed(std::uint64_t hash);
  void clear() { by_name_.clear(); }
  std::size_t size() const { return by_name_.size(); }
  // The `defined` order of the latest definition (0: none yet).
  std::uint64_t last_defined() const { return defined_; }
  // Forgets the statements defined up to `defined` (DISCARD ALL / DEALLOCATE ALL sent then: the
  // ones the client defined after it, pipelined behind it, outlive it); returns the bytes of
  // text they held.
  std::size_t erase_defined_up_to(std::uint64_t defined);

 private:
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, PreparedStatement, Hash, std::equal_to<>> by_name_;
  std::uint64_t defined_ = 0;
  std::uint64_t closes_ = 0;  // Closes numbered so far
};

// The statements prepared on one server connection, least recently used first out.
class ServerStatements {
 public:
  bool contains(std::uint64_t hash) const { return used_.count(hash) != 0; }
  // Marks `hash` used now; returns the result_shape() it was described with (0: unknown).
  std::uint64_t touch(std::uint64_t hash) {
    auto it = used_.find(hash);
    if (it == used_.end()) return 0;
    it->second.last_use = ++clock_;
    return it->second.shape;
  }
  // Records `hash`, prepared at `prepared_at` (the caller's clock; 0: unknown); when that makes
  // more than `capacity`, returns the evicted statement's hash (the caller closes it on the
  // server), else 0.
  std::uint64_t add(std::uint64_t hash, std::size_t capacity, std::int64_t prepared_at = 0);
  // When `hash` was prepared here (0: unknown, or not prepared).
  std::int64_t prepared_at(std::uint64_t hash) const {
    auto it = used_.find(hash);
    return it == used_.end() ? 0 : it->second.prepared_at;
  }
  void erase(std::uint64_t hash) { used_.erase(hash); }
  // This server described `hash` with `shape` (result_shape) since it prepared it.
  void described(std::uint64_t hash, std::uint64_t shape) {
    if (auto it = used_.find(hash); it != used_.end()) it->second.shape = shape;
  }
  // `hash` may or may not be prepared on the server (a Close of it failed with its flight after
  // an earlier one may have closed it): it counts as absent, and from now on every statement is
  // closed before it is parsed on this server, which is right either way.
  void forget_uncertain(std::uint64_t hash) {
    used_.erase(hash);
    close_before_parse_ = true;
  }
  bool close_before_parse() const { return close_before_parse_; }
  // The server holds none of them any more (DEALLOCATE ALL, DISCARD ALL).
  void clear() {
    used_.clear();
    close_before_parse_ = false;
  }
  std::size_t size() const { return used_.size(); }

 private:
  struct Entry {
    std::uint64_t last_use = 0;
    std::int64_t prepared_at = 0;
    std::uint64_t shape = 0;
  };
  std::unordered_map<std::uint64_t, Entry> used_;
  std::uint64_t clock_ = 0;
  bool close_before_parse_ = false;
};

}  // namespace pgvalve::protocol
