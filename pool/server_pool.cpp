#include "pool/server_pool.h"

#include <algorithm>

namespace pgvalve::pool {

namespace {
std::chrono::seconds secs(int s) {
  return std::chrono::seconds(s);
}
}  // namespace

ServerPool::ServerPool(PoolKey key, config::PoolSettings settings, int workers)
    : key_(std::move(key)),
      settings_(settings),
      idle_(static_cast<std::size_t>(std::max(1, workers))) {}

CheckoutResult ServerPool::checkout(int worker, Waiter* waiter) {
  std::lock_guard lock(mutex_);
  if (idle_count_ > 0) {
    auto own =
        static_cast<std::size_t>(worker) < idle_.size() ? static_cast<std::size_t>(worker) : 0;
    auto* list = &idle_[own];
    if (list->empty()) {
      for (auto& other : idle_) {
        if (!other.empty()) {
          list = &other;
          break;
        }
      }
    }
    auto conn = std::move(list->back());
    list->pop_back();
    --idle_count_;
    ++checked_out_;
    ++total_checkouts_;
    return {CheckoutKind::Idle, std::move(conn)};
  }
  if (idle_count_ + checked_out_ + opening_ < limit()) {
    ++opening_;
    return {CheckoutKind::Create, nullptr};
  }
  waiters_.push_back(waiter);
  ++total_waits_;
  return {CheckoutKind::Wait, nullptr};
}

bool ServerPool::cancel_wait(Waiter* waiter) {
  std::lock_guard lock(mutex_);
  auto it = std::find(waiters_.begin(), waiters_.end(), waiter);
  if (it == waiters_.end()) return false;
  waiters_.erase(it);
  return true;
}

void ServerPool::note_timeout() {
  std::lock_guard lock(mutex_);
  ++total_timeouts_;
}

Waiter* ServerPool::pop_waiter() {
  if (waiters_.empty()) return nullptr;
  Waiter* w = waiters_.front();
  waiters_.pop_front();
  return w;
}

void ServerPool::created() {
  std::lock_guard lock(mutex_);
  --opening_;
  ++checked_out_;
  ++total_created_;
  ++total_checkouts_;
}

void ServerPool::create_failed() {
  std::unique_lock lock(mutex_);
  --opening_;
  // The freed slot goes to the next waiter, who then tries to open a connection itself.
  Waiter* next = nullptr;
  if (idle_count_ + checked_out_ + opening_ < limit()) next = pop_waiter();
  if (next) ++opening_;
  lock.unlock();
  if (next) next->grant(nullptr);
}

std::unique_ptr<Connection> ServerPool::checkin(std::unique_ptr<Connection> conn,
                                                Clock::time_point now) {
  std::unique_lock lock(mutex_);
  --checked_out_;
  conn->last_used_at = now;
  const bool too_old =
      settings_.recycle_s > 0 && now - conn->created_at >= secs(settings_.recycle_s);
  const bool too_many = idle_count_ + checked_out_ + opening_ + 1 > limit();
  if (too_old || too_many) {
    ++total_closed_;
    Waiter* next = nullptr;
    if (idle_count_ + checked_out_ + opening_ < limit()) next = pop_waiter();
    if (next) ++opening_;
    lock.unlock();
    if (next) next->grant(nullptr);
    return conn;
  }
  if (Waiter* next = pop_waiter()) {
    ++checked_out_;
    ++total_checkouts_;
    lock.unlock();
    next->grant(std::move(conn));
    return nullptr;
  }
  auto home = static_cast<std::size_t>(conn->home_worker);
  if (home >= idle_.size()) home = 0;
  idle_[home].push_back(std::move(conn));
  ++idle_count_;
  return nullptr;
}

void ServerPool::discard(std::unique_ptr<Connection> conn) {
  std::unique_lock lock(mutex_);
  --checked_out_;
  ++total_closed_;
  Waiter* next = nullptr;
  if (idle_count_ + checked_out_ + opening_ < limit()) next = pop_waiter();
  if (next) ++opening_;
  lock.unlock();
  conn.reset();  // closes the socket outside the lock
  if (next) next->grant(nullptr);
}

std::vector<std::unique_ptr<Connection>> ServerPool::collect_expired(Clock::time_point now) {
  std::vector<std::unique_ptr<Connection>> expired;
  std::lock_guard lock(mutex_);
  // Oldest-used first across all workers' lists, so overflow shrinks by closing the coldest
  // connections. Each list is LIFO, so its front is its coldest: merge the lists by front.
  std::vector<std::size_t> next(idle_.size(), 0);  // per list: first entry not yet visited
  for (;;) {
    std::size_t pick = idle_.size();
    for (std::size_t l = 0; l < idle_.size(); ++l) {
      if (next[l] < idle_[l].size() &&
          (pick == idle_.size() ||
           idle_[l][next[l]]->last_used_at < idle_[pick][next[pick]]->last_used_at)) {
        pick = l;
      }
    }
    if (pick == idle_.size()) break;
    auto& list = idle_[pick];
    auto it = list.begin() + static_cast<std::ptrdiff_t>(next[pick]);
    const auto idle_for = now - (*it)->last_used_at;
    const int size = idle_count_ + checked_out_ + opening_;
    const bool idle_too_long =
        settings_.idle_timeout_s > 0 && idle_for >= secs(settings_.idle_timeout_s);
    const bool too_old =
        settings_.recycle_s > 0 && now - (*it)->created_at >= secs(settings_.recycle_s);
    const bool overflow = size > settings_.pool_size && idle_for >= secs(settings_.overflow_idle_s);
    const bool over_limit = size > limit();
    if (idle_too_long || too_old || overflow || over_limit) {
      expired.push_back(std::move(*it));
      list.erase(it);
      --idle_count_;
      ++total_closed_;
    } else {
      ++next[pick];
    }
  }
  return expired;
}

std::vector<std::unique_ptr<Connection>> ServerPool::take_all_idle() {
  std::vector<std::unique_ptr<Connection>> all;
  std::lock_guard lock(mutex_);
  for (auto& list : idle_) {
    for (auto& conn : list)
      all.push_back(std::move(conn));
    list.clear();
  }
  total_closed_ += all.size();
  idle_count_ = 0;
  return all;
}

bool ServerPool::should_pre_ping(const Connection& conn, Clock::time_point now) const {
  std::lock_guard lock(mutex_);
  return settings_.pre_ping && now - conn.last_used_at >= secs(settings_.pre_ping_idle_s);
}

void ServerPool::update_settings(const config::PoolSettings& settings) {
  std::vector<Waiter*> permitted;
  {
    std::lock_guard lock(mutex_);
    settings_ = settings;
    // A larger pool lets queued clients open connections now.
    while (!waiters_.empty() && idle_count_ + checked_out_ + opening_ < limit()) {
      permitted.push_back(pop_waiter());
      ++opening_;
    }
  }
  for (Waiter* w : permitted)
    w->grant(nullptr);
}

config::PoolSettings ServerPool::settings() const {
  std::lock_guard lock(mutex_);
  return settings_;
}

PoolStats ServerPool::stats() const {
  std::lock_guard lock(mutex_);
  PoolStats s;
  s.size = idle_count_ + checked_out_ + opening_;
  s.checked_in = idle_count_;
  s.checked_out = checked_out_;
  s.opening = opening_;
  s.overflow = std::max(0, s.size - settings_.pool_size);
  s.waiting = static_cast<int>(waiters_.size());
  s.total_checkouts = total_checkouts_;
  s.total_waits = total_waits_;
  s.total_timeouts = total_timeouts_;
  s.total_created = total_created_;
  s.total_closed = total_closed_;
  s.total_statement_evictions = evictions_.load(std::memory_order_relaxed);
  return s;
}

void ServerPool::set_server_parameters(ServerParameters params) {
  auto shared = std::make_shared<const ServerParameters>(std::move(params));
  std::lock_guard lock(mutex_);
  server_parameters_ = std::move(shared);
  has_server_parameters_ = true;
}

std::shared_ptr<const ServerPool::ServerParameters> ServerPool::server_parameters() const {
  std::lock_guard lock(mutex_);
  return server_parameters_;
}

bool ServerPool::has_server_parameters() const {
  std::lock_guard lock(mutex_);
  return has_server_parameters_;
}

}  // namespace pgvalve::pool
