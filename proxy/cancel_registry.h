// Maps the BackendKeyData pgvalve gave each client to the server connection that currently
// runs its query, so a CancelRequest reaches the right PostgreSQL backend on whatever host.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include <boost/asio/ip/tcp.hpp>

namespace pgvalve::proxy {

class ClientSession;
struct Worker;

// A server connection's BackendKeyData as one value (0 = none).
inline std::uint64_t server_key_of(std::int32_t pid, std::int32_t secret) {
  return (std::uint64_t(std::uint32_t(pid)) << 32) | std::uint32_t(secret);
}

// Part of the client's session (no allocation of its own): written by the client's own worker
// on every link/unlink (two relaxed atomics, no lock); read, under the registry's lock, by
// whichever worker receives the CancelRequest.
struct CancelTarget {
  std::int32_t process_id = 0;
  std::int32_t secret_key = 0;
  std::atomic<std::uint64_t> server_key{0};  // (server pid << 32) | server secret; 0 = none
  std::atomic<std::uint32_t> host_index{0};
  // A statement runs on several shards: a cancel goes to each of their servers, which only the
  // session knows (set while it scatters).
  std::atomic<bool> several{false};
  ClientSession* session = nullptr;  // the session this is part of, set at registration
  // The worker the session runs on: where a cancel it carries out must run. Read and written
  // under the registry's lock only (add(), moved(), worker_of()): a move changes it on the
  // worker the session leaves while another worker may be taking a cancel for it.
  Worker* worker = nullptr;

  void link(std::uint32_t host, std::int32_t pid, std::int32_t secret) {
    host_index.store(host, std::memory_order_relaxed);
    server_key.store(server_key_of(pid, secret), std::memory_order_release);
  }
  // Sequentially consistent with CancelRegistry::find(): a cancel either sees the server
  // unlinked, or the session sees the cancel in flight when it gives the server back.
  void unlink() { server_key.store(0, std::memory_order_seq_cst); }
};

struct CancelDestination {
  boost::asio::ip::tcp::endpoint host;
  std::int32_t process_id = 0;
  std::int32_t secret_key = 0;
  // As CancelTarget::server_key; the registry counts the cancel in flight until cancel_done().
  std::uint64_t server_key = 0;
  // Set instead when the session carries the cancel out: its statement runs on several shards
  // (`several`), or it has no server (its request may be waiting for one).
  std::shared_ptr<ClientSession> carried_by;
  bool several = false;
};

// The process id a new client gets after `previous`: the next one up, after INT32_MAX 1 again
// (clients take 0 and negative ids for none), skipping the ids `taken(id)` says a client holds,
// so that a long-lived client's key is never given to another. At most as many are skipped as
// clients are connected.
template <typename Taken>
std::int32_t next_process_id(std::int32_t previous, const Taken& taken) {
  std::int32_t pid = previous;
  do {
    pid = pid == INT32_MAX || pid <= 0 ? 1 : pid + 1;
  } while (taken(pid));
  return pid;
}

class CancelRegistry {
 public:
  // Gives a new client its key (unique pid, random secret). `target` is part of `session`,
  // whose destructor calls remove() first: the registry reads the target only under its lock.
  void add(ClientSession& session, CancelTarget& target, Worker& worker);
  // The session is moving to `to`: called on the worker it leaves, before the session is
  // handed over, so a cancel posted to that worker after this finds it gone and follows.
  void moved(CancelTarget& target, Worker& to);
  Worker* worker_of(const CancelTarget& target);
  void remove(const CancelTarget& target);
  // Where to send a cancel for this client key, if the key is valid and the client is running
  // something on a server. Such a cancel is in flight until cancel_done(): meanwhile the server
  // is not lent to another client (being_cancelled()), whose query it could otherwise stop.
  std::optional<CancelDestination> find(std::int32_t process_id, std::int32_t secret_key);
  // A cancel the session sends itself (to each shard's server) is in flight from here on.
  void cancel_started(std::uint64_t server_key);
  void cancel_done(std::uint64_t server_key);
  // A cancel is on its way to the server with this key (CancelTarget::server_key). No lock
  // while no cancel is in flight.
  bool being_cancelled(std::uint64_t server_key);
  // Host table: stable small numbers for server addresses.
  std::uint32_t host_index(const boost::asio::ip::tcp::endpoint& host);

 private:
  std::mutex mutex_;
  std::int32_t last_pid_ = 0;
  std::unordered_map<std::int32_t, const CancelTarget*> targets_;
  std::atomic<int> in_flight_{0};
  std::unordered_multiset<std::uint64_t> cancelling_;
  std::deque<boost::asio::ip::tcp::endpoint> hosts_;
};

}  // namespace pgvalve::proxy

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>

namespace pgvalve::proxy {
// Opens a connection to the server and sends it a CancelRequest.
boost::asio::awaitable<void> send_cancel(CancelDestination dest);
}  // namespace pgvalve::proxy
