// What one step of a client session asks the I/O layer to carry out. A step is the answer to
// one event (client bytes, server bytes, a server linked, a timer, ...). The I/O layer does, in
// this order: write `to_server` to the server of `server_link`, `to_links` to theirs, and
// `to_client` (plus `outbox`) to the client — the writes are independent — then calls
// Session::account() (statistics left until the bytes are on their way), then drops `consumed`
// bytes from the front of the input the step read, then carries out the commands. Chunks point into
// that input or into the session's own scratch memory and stay valid until the next step from the
// same source (client input, one server link, or events); `outbox` is the I/O layer's to take.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "routing/route.h"

namespace pgvalve::session {

using LinkId = std::uint8_t;

struct Chunk {
  const char* data = nullptr;
  std::size_t size = 0;
  std::string_view view() const { return {data, size}; }
};

// What to do with a linked server.
struct LinkOp {
  enum class Kind : std::uint8_t {
    Release,          // back to the pool, clean
    Close,            // close it (and return its place in the pool)
    CancelAndClose,   // a query may still run on it: send a CancelRequest, then close
    CleanAndRelease,  // run `sql` (each a simple query, in order); release if all succeed,
                      // else close
    Read,             // keep it; read it again (it was not wanted for a while)
  };
  Kind kind = Kind::Release;
  LinkId link = 0;
  std::string_view sql[2];  // CleanAndRelease: up to two statements; copied when carried out
};

// A LISTEN or UNLISTEN pgvalve runs on the shared listening connection for the client.
struct HubRequest {
  enum class Kind : std::uint8_t { None, Listen, Unlisten, UnlistenAll };
  Kind kind = Kind::None;
  std::string channel;
  // Channels the hub is to stop delivering to the client, unanswered: a LISTEN or UNLISTEN of
  // them committed on a server (the client's hub subscription follows it).
  std::vector<std::string> dropped;
};

// A part of a two-phase commit (a write or a transaction over several shards) left prepared on
// a shard whose server was lost, and the decision the other parts got: the I/O layer has it
// carried out there once the shard takes writes again (proxy/prepared_part_resolver.h). `follow`:
// while the deciding part's COMMIT PREPARED is unconfirmed, the part is finished as that shard's
// transaction ended (two_phase.h), not as `commit` says.
// Trivially destructible, so that clearing Actions each step costs one store: the gid is kept
// inline (pgvalve's own, session/two_phase.h, take at most 77 bytes).
class PreparedPart {
 public:
  PreparedPart(std::uint16_t shard, std::string_view gid, bool commit, bool follow = false)
      : shard(shard),
        commit(commit),
        follow(follow),
        size_(static_cast<std::uint8_t>(std::min(gid.size(), kMax))) {
    std::memcpy(gid_, gid.data(), size_);
  }
  std::string_view gid() const { return {gid_, size_}; }

  std::uint16_t shard = 0;
  bool commit = false;  // else rolled back
  bool follow = false;  // as the deciding shard's transaction ended

 private:
  static constexpr std::size_t kMax = 80;
  std::uint8_t size_ = 0;
  char gid_[kMax] = {};
};

// Bytes for one of several servers written in one step (COPY rows routed to their shards).
struct LinkChunk {
  LinkId link = 0;
  Chunk chunk;
};

struct Actions {
  std::vector<Chunk> to_client;
  std::string outbox;  // bytes for the client owned by the I/O layer once taken (events)
  std::vector<Chunk> to_server;
  LinkId server_link = 0;
  std::vector<LinkChunk> to_links;  // each link's chunks in order, after `to_server`
  std::size_t consumed = 0;

  bool check_out = false;  // find a server for `route`; then on_linked() or on_checkout_failed()
  routing::Route route;
  std::vector<LinkOp> link_ops;
  bool resume_client = false;  // a request that waited can go on: call on_client_data() again
  bool close_client = false;   // close the client once the writes are done
  // ... and the error it is told, for the log (empty when it left, or was told nothing).
  std::string close_sqlstate;
  std::string close_reason;
  // A server given up for its silence (pool.query_timeout_ms, the settings sync's deadline): why,
  // for the log.
  std::string server_given_up;
  // A replica refused the client's settings, so its read ran on the primary: which replica and
  // what it said, for the log (once per client).
  std::string replica_refused_settings;
  HubRequest hub;
  int pinned_change = 0;        // +1: the client became pinned to its server, -1: unpinned
  int statement_evictions = 0;  // prepared statements closed on a server for its LRU cap
  std::vector<PreparedPart> prepared_parts;

  bool writes() const {
    return !to_client.empty() || !outbox.empty() || !to_server.empty() || !to_links.empty();
  }
  void clear() {
    to_client.clear();
    outbox.clear();
    to_server.clear();
    server_link = 0;
    to_links.clear();
    consumed = 0;
    check_out = false;
    link_ops.clear();
    resume_client = false;
    close_client = false;
    close_sqlstate.clear();
    close_reason.clear();
    server_given_up.clear();
    replica_refused_settings.clear();
    hub.kind = HubRequest::Kind::None;
    hub.channel.clear();
    hub.dropped.clear();
    pinned_change = 0;
    statement_evictions = 0;
    prepared_parts.clear();
  }
};

}  // namespace pgvalve::session
