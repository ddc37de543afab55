#include "proxy/cancel_registry.h"

#include "protocol/secure_random.h"
#include "proxy/client_session.h"

namespace pgvalve::proxy {

void CancelRegistry::add(ClientSession& session, CancelTarget& target, Worker& worker) {
  std::int32_t secret = 0;
  protocol::fill_random({reinterpret_cast<unsigned char*>(&secret), sizeof secret});
  std::lock_guard lock(mutex_);
  const std::int32_t pid = last_pid_ =
      next_process_id(last_pid_, [this](std::int32_t id) { return targets_.contains(id); });
  target.process_id = pid;
  target.secret_key = secret;
  target.session = &session;
  target.worker = &worker;
  targets_[pid] = &target;
}

void CancelRegistry::moved(CancelTarget& target, Worker& to) {
  std::lock_guard lock(mutex_);
  target.worker = &to;
}

Worker* CancelRegistry::worker_of(const CancelTarget& target) {
  std::lock_guard lock(mutex_);
  return target.worker;
}

void CancelRegistry::remove(const CancelTarget& target) {
  if (target.process_id == 0) return;
  std::lock_guard lock(mutex_);
  targets_.erase(target.process_id);
}

std::optional<CancelDestination> CancelRegistry::find(std::int32_t process_id,
                                                      std::int32_t secret_key) {
  std::lock_guard lock(mutex_);
  auto it = targets_.find(process_id);
  if (it == targets_.end()) return std::nullopt;
  const CancelTarget* target = it->second;
  if (target->secret_key != secret_key) return std::nullopt;
  // The session carries the cancel out, if it is not being destroyed (before its remove()).
  const auto carried_by = [&](bool several) -> std::optional<CancelDestination> {
    auto session = target->session->weak_from_this().lock();
    if (!session) return std::nullopt;
    return CancelDestination{{}, 0, 0, 0, std::move(session), several};
  };
  if (target->several.load(std::memory_order_acquire)) return carried_by(true);
  // Counted before the key is read: a session that unlinks after this read sees the count
  // when it gives the server back (being_cancelled), and holds it until cancel_done().
  in_flight_.fetch_add(1, std::memory_order_seq_cst);
  const auto key = target->server_key.load(std::memory_order_seq_cst);
  const auto host = target->host_index.load(std::memory_order_relaxed);
  if (key == 0 || host >= hosts_.size()) {
    in_flight_.fetch_sub(1, std::memory_order_seq_cst);
    // No server yet: the request may be waiting for one.
    return carried_by(false);
  }
  cancelling_.insert(key);
  return CancelDestination{hosts_[host], static_cast<std::int32_t>(key >> 32),
                           static_cast<std::int32_t>(key & 0xffffffffu), key};
}

void CancelRegistry::cancel_started(std::uint64_t server_key) {
  std::lock_guard lock(mutex_);
  cancelling_.insert(server_key);
  in_flight_.fetch_add(1, std::memory_order_seq_cst);
}

void CancelRegistry::cancel_done(std::uint64_t server_key) {
  std::lock_guard lock(mutex_);
  if (auto it = cancelling_.find(server_key); it != cancelling_.end()) {
    cancelling_.erase(it);
    in_flight_.fetch_sub(1, std::memory_order_seq_cst);
  }
}

bool CancelRegistry::being_cancelled(std::uint64_t server_key) {
  if (in_flight_.load(std::memory_order_seq_cst) == 0) return false;
  std::lock_guard lock(mutex_);
  return cancelling_.contains(server_key);
}

std::uint32_t CancelRegistry::host_index(const boost::asio::ip::tcp::endpoint& host) {
  std::lock_guard lock(mutex_);
  for (std::uint32_t i = 0; i < hosts_.size(); ++i) {
    if (hosts_[i] == host) return i;
  }
  hosts_.push_back(host);
  return static_cast<std::uint32_t>(hosts_.size() - 1);
}

}  // namespace pgvalve::proxy

#include <chrono>

#include <boost/asio/this_coro.hpp>

#include "protocol/messages.h"
#include "proxy/io_util.h"
#include "proxy/log.h"

namespace pgvalve::proxy {

boost::asio::awaitable<void> send_cancel(CancelDestination dest) {
  auto executor = co_await boost::asio::this_coro::executor;
  tcp::socket server(executor);
  Deadline deadline(server, std::chrono::seconds(5));
  error_code ec;
  co_await server.async_connect(dest.host, await_ec(ec));
  if (ec) {
    PGV_LOG(Warn, "cancel_failed", {"host", dest.host.address().to_string()},
            {"error", ec.message()});
    co_return;
  }
  std::string out;
  protocol::append_cancel_request(out, dest.process_id, dest.secret_key);
  co_await write_all(server, out);
  // PostgreSQL closes the connection once it has handled the request.
  char byte;
  co_await server.async_read_some(boost::asio::buffer(&byte, 1), await_ec(ec));
  PGV_LOG(Info, "cancel_forwarded", {"server_pid", dest.process_id});
}

}  // namespace pgvalve::proxy
