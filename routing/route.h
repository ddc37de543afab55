// Where one statement (or the transaction it starts) goes: the value a Router returns and a
// client session carries out.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace pgvalve::routing {

// Why a statement is refused, in words for the client.
struct Refusal {
  std::string_view sqlstate;
  std::string message;
  std::string hint;
};

struct Route {
  enum class Kind : std::uint8_t {
    Primary,  // the primary of `shard`
    Replica,  // a replica of `shard` (the pool picks which)
    Shards,   // every shard in `shards`, in parallel; the answers are merged
    Local,    // pgvalve answers without a server
    Refuse,   // an error for the client: `refusal`
  };

  Kind kind = Kind::Primary;
  std::uint16_t shard = 0;
  std::uint64_t shards = 0;  // Shards: bit i set = shard i takes part
  // Primary: the statement may write (false: a read sent to the primary by a hint, a setting or
  // read_your_writes), so with read_your_writes = lsn the session learns the primary's WAL
  // position when the transaction ends.
  bool write = true;
  // Replica: only a replica that has replayed at least this far (the client's last write) may
  // take it; else the primary does. 0: any.
  std::uint64_t after_lsn = 0;
  // Replica: a read of the state of the backend that runs it (StatementAccess::own_backend),
  // which a session-mode client's own server answers.
  bool own_backend = false;
  // Sharded databases: the statement needs no particular shard (no table, only reference tables
  // read, a Parse/Describe of a statement whose key is a $n): `shard` is a default, and a
  // transaction already on another shard may run it there.
  bool any_shard = false;
  // Shards: an INSERT whose rows belong to different shards; each shard gets only its own rows
  // (Router::split_insert).
  bool split_rows = false;
  // Shards: COPY ... FROM STDIN into a sharded or reference table; every shard runs the COPY and
  // each row goes to its key's shard (routing/copy_rows.h).
  bool copy_rows = false;
  // Shards: a write that names only reference tables (and catalogs), whose rows are the same on
  // every shard: each shard answers alike, and the client gets one shard's answer, as one
  // database would give it (ScatterPlan::same_on_every_shard).
  bool same_on_every_shard = false;
  // Refuse only; shared so that a Route stays small and cheap to copy.
  std::shared_ptr<const Refusal> refusal;

  static Route primary(std::uint16_t shard) { return Route{Kind::Primary, shard}; }
  static Route replica(std::uint16_t shard) { return Route{Kind::Replica, shard}; }
  static Route local() { return Route{Kind::Local}; }
  static Route refuse(std::string_view sqlstate, std::string message, std::string hint = {}) {
    Route r{Kind::Refuse};
    r.refusal =
        std::make_shared<const Refusal>(Refusal{sqlstate, std::move(message), std::move(hint)});
    return r;
  }

  // Two routes reach the same servers (what a session compares with the links it holds).
  bool same_target(const Route& other) const {
    return kind == other.kind && shard == other.shard && shards == other.shards &&
           after_lsn == other.after_lsn;
  }
};

std::string_view route_kind_name(Route::Kind kind);

}  // namespace pgvalve::routing
