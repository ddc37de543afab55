#include "pool/server_pool.h"

#include <algorithm>
#include <cassert>
#include <numeric>

namespace pgvalve::pool {

// Memory order: the budget and the published figures that decide moves (idle_count,
// waiting, oldest_wait_since_ns) use seq_cst. Each side of a race publishes before it looks
// at the other (a waiter: queue, then budget and idle counts; a returner: budget or idle
// list, then waiters), and seq_cst guarantees at least one of the two sees the other, so a
// waiter is never left queued while a connection or budget sits unused. Counters only summed
// by stats() are relaxed.

namespace {

std::chrono::seconds secs(int s) {
  return std::chrono::seconds(s);
}

std::int64_t to_ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// Another worker's waiter must have waited this much longer than four times ours before a
// check-in moves the connection there: under balanced load (where waits fluctuate a lot from one
// check-in to the next) connections stay on their worker, since a move costs a wake-up of the
// other worker and re-registering the socket; a worker that owns too few connections for its
// clients still gets some within a few milliseconds.
constexpr std::int64_t kMoveSlackNs = 5'000'000;

// For atomics only their owner writes: no read-modify-write needed.
template <typename T>
void bump(std::atomic<T>& value, T delta = 1) {
  value.store(value.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}

}  // namespace

ServerPool::ServerPool(PoolKey key, config::PoolSettings settings, int workers, Handoff& handoff)
    : key_(std::move(key)),
      handoff_(handoff),
      settings_(settings),
      budget_(settings.pool_size + settings.max_overflow) {
  const int count = std::max(1, workers);
  workers_.reserve(static_cast<std::size_t>(count));
  for (int i = 0; i < count; ++i) {
    auto w = std::make_unique<WorkerState>();
    w->settings = settings;
    w->settings_version = settings_version_.load(std::memory_order_relaxed);
    workers_.push_back(std::move(w));
  }
}

ServerPool::WorkerState& ServerPool::state(int worker) {
  assert(worker >= 0 && worker < workers());
  return *workers_[static_cast<std::size_t>(worker)];
}

const config::PoolSettings& ServerPool::local_settings(WorkerState& w) {
  if (settings_version_.load(std::memory_order_relaxed) != w.settings_version) [[unlikely]] {
    std::lock_guard lock(settings_mutex_);
    w.settings = settings_;
    w.settings_version = settings_version_.load(std::memory_order_relaxed);
  }
  return w.settings;
}

bool ServerPool::idle_elsewhere(int worker) const {
  for (int i = 0; i < workers(); ++i) {
    if (i != worker && workers_[static_cast<std::size_t>(i)]->idle_count.load() > 0) return true;
  }
  return false;
}

bool ServerPool::take_budget(int worker) {
  // A budget at or below max_overflow means pool_size connections exist: one more is overflow,
  // opened only when none is idle on another worker (asked for instead: a move costs a post and
  // a re-registration; a new connection a server login, and it stays overflow_idle_s).
  const int overflow_at = local_settings(state(worker)).max_overflow;
  int idle_checked = -1;  // not looked at yet
  int b = budget_.load();
  while (b > 0) {
    if (b <= overflow_at) {
      if (idle_checked < 0) idle_checked = idle_elsewhere(worker) ? 1 : 0;
      if (idle_checked == 1) return false;
    }
    if (budget_.compare_exchange_weak(b, b - 1)) return true;
  }
  return false;
}

bool ServerPool::take_open_budget(int worker, Clock::time_point now) {
  if (open_held_until_ns_.load() == 0) [[likely]] {
    return take_budget(worker);
  }
  if (to_ns(now) < open_held_until_ns_.load()) return false;
  // The hold is over: one client tries at a time, so a server still full sees one login per
  // kRetryOpenAfter, not one per waiter.
  if (probing_.exchange(true)) return false;
  if (open_held_until_ns_.load() == 0) probing_.store(false);  // ended meanwhile
  if (take_budget(worker)) return true;
  probing_.store(false);
  return false;
}

void ServerPool::end_open_hold() {
  if (open_held_until_ns_.load() == 0) [[likely]] {
    return;
  }
  open_held_until_ns_.store(0);
  refusal_.store(0, std::memory_order_relaxed);
  probing_.store(false);
}

// Returns one unit only while the budget is below `ceiling`, so workers closing surplus
// connections at the same moment never close more than the surplus between them.
bool ServerPool::release_budget_below(int ceiling) {
  int b = budget_.load();
  while (b < ceiling) {
    if (budget_.compare_exchange_weak(b, b + 1)) return true;
  }
  return false;
}

void ServerPool::publish_waiters(WorkerState& w) {
  w.oldest_wait_since_ns.store(w.waiters.empty() ? 0 : w.waiters.front().since_ns);
  w.waiting.store(static_cast<int>(w.waiters.size()));
}

void ServerPool::count_home_waiting(ServerPool* home, int change) {
  if (home) home->clients_waiting_.fetch_add(change, std::memory_order_relaxed);
}

Waiter* ServerPool::pop_waiter(WorkerState& w) {
  Waiter* first = w.waiters.front().waiter;
  count_home_waiting(w.waiters.front().home, -1);
  w.waiters.pop_front();
  publish_waiters(w);
  return first;
}

void ServerPool::grant_first(WorkerState& w, std::unique_ptr<Connection> conn) {
  Waiter* first = pop_waiter(w);
  bump(w.checkouts);
  first->grant(std::move(conn));
}

std::pair<int, std::int64_t> ServerPool::longest_waiting_other(int worker) const {
  int best = -1;
  std::int64_t best_since = 0;
  for (int i = 0; i < static_cast<int>(workers_.size()); ++i) {
    if (i == worker) continue;
    const std::int64_t since = workers_[static_cast<std::size_t>(i)]->oldest_wait_since_ns.load();
    if (since != 0 && (best < 0 || since < best_since)) {
      best = i;
      best_since = since;
    }
  }
  return {best, best_since};
}

void ServerPool::send(int to, std::unique_ptr<Connection> conn) {
  // std::function must be copyable: the connection travels in a shared box, and is destroyed
  // with the task if the target loop never runs it (shutdown).
  auto box = std::make_shared<std::unique_ptr<Connection>>(std::move(conn));
  handoff_.post(to, [self = shared_from_this(), to, box] { self->receive(to, std::move(*box)); });
}

bool ServerPool::request_steal(int worker) {
  int donor = -1;
  int most = 0;
  for (int i = 0; i < workers(); ++i) {
    if (i == worker) continue;
    const int idle = workers_[static_cast<std::size_t>(i)]->idle_count.load();
    if (idle > most) {
      donor = i;
      most = idle;
    }
  }
  if (donor < 0) return false;
  handoff_.post(donor, [self = shared_from_this(), donor, worker] { self->donate(donor, worker); });
  return true;
}

CheckoutResult ServerPool::checkout(int worker, Waiter* waiter, Clock::time_point now) {
  WorkerState& w = state(worker);
  // Idle connections and queued waiters never coexist on a worker: whatever comes back is
  // granted before it is parked, and a waiter is queued only when the list is empty.
  if (!w.idle.empty()) {
    auto conn = std::move(w.idle.back());
    w.idle.pop_back();
    w.idle_count.store(static_cast<int>(w.idle.size()), std::memory_order_relaxed);
    bump(w.checkouts);
    return {CheckoutKind::Idle, std::move(conn)};
  }
  // Clients queued here before this one get any free budget first.
  while (!w.waiters.empty() && take_open_budget(worker, now)) {
    bump(w.opening);
    pop_waiter(w)->grant(nullptr);
  }
  if (w.waiters.empty() && take_open_budget(worker, now)) {
    bump(w.opening);
    return {CheckoutKind::Create, nullptr};
  }

  w.waiters.push_back({waiter, std::max<std::int64_t>(1, to_ns(now)), waiter->home});
  count_home_waiting(waiter->home, 1);
  publish_waiters(w);
  for (int look = 0; look < 2; ++look) {
    // Budget returned between our first look and publishing was offered to nobody: look again.
    while (take_open_budget(worker, now)) {
      const bool ours = w.waiters.size() == 1;  // ours is the last one queued
      bump(w.opening);
      Waiter* first = pop_waiter(w);
      if (ours) return {CheckoutKind::Create, nullptr};
      first->grant(nullptr);
    }
    // Another worker's idle connection is asked for. One that kept overflow from being opened
    // may have been lent since (none is idle any more): the budget is looked at once more.
    if (look == 0 && request_steal(worker)) break;
  }
  bump(w.waits);
  return {CheckoutKind::Wait, nullptr};
}

bool ServerPool::cancel_wait(int worker, Waiter* waiter) {
  WorkerState& w = state(worker);
  auto it = std::find_if(w.waiters.begin(), w.waiters.end(),
                         [waiter](const WorkerState::Queued& q) { return q.waiter == waiter; });
  if (it == w.waiters.end()) return false;
  count_home_waiting(it->home, -1);
  w.waiters.erase(it);
  publish_waiters(w);
  return true;
}

void ServerPool::release_waiters(int worker) {
  WorkerState& w = state(worker);
  while (!w.waiters.empty())
    pop_waiter(w)->pool_retired();
}

void ServerPool::note_timeout(int worker) {
  bump(state(worker).timeouts);
}

void ServerPool::created(int worker) {
  WorkerState& w = state(worker);
  bump(w.opening, -1);
  bump(w.created);
  bump(w.checkouts);
  if (open_held_until_ns_.load() != 0) {
    // The server took a login again: clients queued during the hold may open theirs.
    end_open_hold();
    offer_permit(worker);
  }
}

void ServerPool::create_failed(int worker) {
  bump(state(worker).opening, -1);
  // A try after a refusal failed otherwise (or its client left): no longer refused for room.
  if (probing_.exchange(false)) end_open_hold();
  budget_.fetch_add(1);
  offer_permit(worker);
}

void ServerPool::create_refused(int worker, OpenRefusal why, Clock::time_point now) {
  bump(state(worker).opening, -1);
  refusal_.store(static_cast<int>(why), std::memory_order_relaxed);
  open_held_until_ns_.store(std::max<std::int64_t>(1, to_ns(now + kRetryOpenAfter)));
  probing_.store(false);
  // Back in the budget, offered to nobody: the hold's end (a checkout, or the sweep's
  // rebalance()) or a connection coming back serves the waiters.
  budget_.fetch_add(1);
}

void ServerPool::note_login_failure(std::string_view sqlstate) {
  std::lock_guard lock(failures_mutex_);
  for (auto& [state, count] : login_failures_) {
    if (state == sqlstate) {
      ++count;
      return;
    }
  }
  login_failures_.emplace_back(std::string(sqlstate), 1);
}

std::unique_ptr<Connection> ServerPool::checkin(int worker, std::unique_ptr<Connection> conn,
                                                Clock::time_point now) {
  WorkerState& w = state(worker);
  const config::PoolSettings& s = local_settings(w);
  conn->last_used_at = now;
  if (retired() || close_needed(*conn) ||
      (s.recycle_s > 0 && now - conn->created_at >= secs(s.recycle_s))) {
    bump(w.closed);
    end_open_hold();
    budget_.fetch_add(1);
    offer_permit(worker, now);
    return conn;
  }
  if (release_budget_below(0)) {  // the pool shrank: this one is surplus
    bump(w.closed);
    return conn;
  }
  if (w.waiters.empty()) {
    park(worker, std::move(conn));
    return nullptr;
  }
  const std::int64_t now_ns = to_ns(now);
  const std::int64_t own_wait = now_ns - w.waiters.front().since_ns;
  const auto [other, other_since] = longest_waiting_other(worker);
  if (other >= 0 && now_ns - other_since > 4 * own_wait + kMoveSlackNs) {
    send(other, std::move(conn));
    return nullptr;
  }
  grant_first(w, std::move(conn));
  return nullptr;
}

void ServerPool::park(int worker, std::unique_ptr<Connection> conn) {
  WorkerState& w = state(worker);
  w.idle.push_back(std::move(conn));
  w.idle_count.store(static_cast<int>(w.idle.size()));
  const int other = longest_waiting_other(worker).first;
  if (other < 0) return;
  auto moved = std::move(w.idle.back());
  w.idle.pop_back();
  w.idle_count.store(static_cast<int>(w.idle.size()), std::memory_order_relaxed);
  send(other, std::move(moved));
}

void ServerPool::discard(int worker,
                         std::unique_ptr<Connection> /*conn: destroyed as the call ends*/) {
  bump(state(worker).closed);
  end_open_hold();
  budget_.fetch_add(1);
  offer_permit(worker);
}

void ServerPool::receive(int worker, std::unique_ptr<Connection> conn) {
  WorkerState& w = state(worker);
  conn->home_worker = worker;
  bump(w.handoffs);
  if (!w.waiters.empty()) {
    grant_first(w, std::move(conn));
  } else {
    park(worker, std::move(conn));
  }
}

void ServerPool::donate(int worker, int to) {
  WorkerState& w = state(worker);
  // The clients that asked were served meanwhile.
  if (state(to).waiting.load() == 0) return;
  if (w.idle.empty()) {
    // Ours were lent meanwhile: the asker, which opened none because of them, may open one now
    // (or ask another worker) instead of waiting for a check-in.
    if (budget_.load() > 0) {
      handoff_.post(to, [self = shared_from_this(), to] { self->try_permits(to); });
    }
    return;
  }
  auto conn = std::move(w.idle.back());
  w.idle.pop_back();
  w.idle_count.store(static_cast<int>(w.idle.size()), std::memory_order_relaxed);
  send(to, std::move(conn));
}

void ServerPool::offer_permit(int worker, Clock::time_point now) {
  if (budget_.load() <= 0) return;
  try_permits(worker, now);
}

void ServerPool::try_permits(int worker, Clock::time_point now) {
  WorkerState& w = state(worker);
  while (!w.waiters.empty() && take_open_budget(worker, now)) {
    bump(w.opening);
    pop_waiter(w)->grant(nullptr);
  }
  if (!w.waiters.empty()) {
    // Refused for overflow while another worker has an idle connection: that one is asked for;
    // lent since, the budget is looked at once more (as in checkout()).
    if (budget_.load() > 0 && !request_steal(worker)) {
      while (!w.waiters.empty() && take_open_budget(worker, now)) {
        bump(w.opening);
        pop_waiter(w)->grant(nullptr);
      }
    }
    return;
  }
  if (budget_.load() <= 0) return;
  // Passed on until it reaches a worker whose clients still wait, or nobody waits any more.
  const int other = longest_waiting_other(worker).first;
  if (other < 0) return;
  handoff_.post(other, [self = shared_from_this(), other] { self->try_permits(other); });
}

// A safety net run periodically: whatever should have moved on an event (budget to waiters,
// idle connections to another worker's waiters) is moved now.
void ServerPool::rebalance(int worker, Clock::time_point now) {
  WorkerState& w = state(worker);
  if (!w.waiters.empty()) {
    try_permits(worker, now);
    if (!w.waiters.empty()) request_steal(worker);
    return;
  }
  if (w.idle.empty()) return;
  auto conn = std::move(w.idle.back());
  w.idle.pop_back();
  park(worker, std::move(conn));
}

void ServerPool::reconnect(std::uint64_t first_fresh_id) {
  std::uint64_t below = reconnect_below_.load(std::memory_order_relaxed);
  while (below < first_fresh_id && !reconnect_below_.compare_exchange_weak(
                                       below, first_fresh_id, std::memory_order_relaxed)) {
  }
}

std::vector<std::unique_ptr<Connection>> ServerPool::collect_expired(int worker,
                                                                     Clock::time_point now) {
  WorkerState& w = state(worker);
  const config::PoolSettings& s = local_settings(w);
  std::vector<std::unique_ptr<Connection>> expired;
  if (!w.idle.empty()) {
    // Coldest first, so overflow and a shrunk limit close the least recently used ones.
    std::vector<std::size_t> order(w.idle.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&w](std::size_t a, std::size_t b) {
      return w.idle[a]->last_used_at < w.idle[b]->last_used_at;
    });
    bool budget_back = false;
    for (std::size_t i : order) {
      const Connection& conn = *w.idle[i];
      const auto idle_for = now - conn.last_used_at;
      bool close = false;
      if (retired() || close_needed(conn) ||
          (s.idle_timeout_s > 0 && idle_for >= secs(s.idle_timeout_s)) ||
          (s.recycle_s > 0 && now - conn.created_at >= secs(s.recycle_s))) {
        budget_.fetch_add(1);
        close = budget_back = true;
      } else if (release_budget_below(0)) {  // beyond a shrunk limit
        close = true;
      } else if (idle_for >= secs(s.overflow_idle_s) && release_budget_below(s.max_overflow)) {
        // budget below max_overflow: more than pool_size connections exist
        close = budget_back = true;
      }
      if (close) expired.push_back(std::move(w.idle[i]));
    }
    std::erase(w.idle, nullptr);
    w.idle_count.store(static_cast<int>(w.idle.size()));
    bump(w.closed, static_cast<std::uint64_t>(expired.size()));
    if (!expired.empty()) end_open_hold();
    if (budget_back) offer_permit(worker, now);
  }
  rebalance(worker, now);
  return expired;
}

std::vector<std::unique_ptr<Connection>> ServerPool::take_all_idle() {
  std::vector<std::unique_ptr<Connection>> all;
  for (auto& w : workers_) {
    const auto count = w->idle.size();
    for (auto& conn : w->idle)
      all.push_back(std::move(conn));
    w->idle.clear();
    w->idle_count.store(0);
    bump(w->closed, static_cast<std::uint64_t>(count));
    budget_.fetch_add(static_cast<int>(count));
  }
  return all;
}

void ServerPool::update_settings(const config::PoolSettings& settings) {
  int grown = 0;
  {
    std::lock_guard lock(settings_mutex_);
    grown = (settings.pool_size + settings.max_overflow) -
            (settings_.pool_size + settings_.max_overflow);
    settings_ = settings;
    // Under the lock so that stats() sees the limit and the budget of the same moment.
    budget_.fetch_add(grown);
    settings_version_.fetch_add(1, std::memory_order_relaxed);
  }
  if (grown <= 0) return;
  for (int i = 0; i < workers(); ++i)
    handoff_.post(i, [self = shared_from_this(), i] { self->try_permits(i); });
}

config::PoolSettings ServerPool::settings() const {
  std::lock_guard lock(settings_mutex_);
  return settings_;
}

int ServerPool::in_use(int worker) {
  const config::PoolSettings& s = local_settings(state(worker));
  int idle = 0;
  for (const auto& w : workers_)
    idle += w->idle_count.load(std::memory_order_relaxed);
  const int size = s.pool_size + s.max_overflow - budget_.load(std::memory_order_relaxed);
  return std::max(0, size - idle);
}

PoolStats ServerPool::stats(Clock::time_point now) const {
  PoolStats s;
  int limit = 0;
  int pool_size = 0;
  int budget = 0;
  {
    std::lock_guard lock(settings_mutex_);
    limit = settings_.pool_size + settings_.max_overflow;
    pool_size = settings_.pool_size;
    budget = budget_.load();
  }
  std::int64_t oldest = 0;
  for (const auto& w : workers_) {
    s.checked_in += w->idle_count.load(std::memory_order_relaxed);
    s.opening += w->opening.load(std::memory_order_relaxed);
    s.waiting += w->waiting.load(std::memory_order_relaxed);
    s.total_checkouts += w->checkouts.load(std::memory_order_relaxed);
    s.total_waits += w->waits.load(std::memory_order_relaxed);
    s.total_timeouts += w->timeouts.load(std::memory_order_relaxed);
    s.total_created += w->created.load(std::memory_order_relaxed);
    s.total_closed += w->closed.load(std::memory_order_relaxed);
    s.total_handoffs += w->handoffs.load(std::memory_order_relaxed);
    const std::int64_t since = w->oldest_wait_since_ns.load(std::memory_order_relaxed);
    if (since != 0 && (oldest == 0 || since < oldest)) oldest = since;
  }
  // The budget is the one exact figure; the per-worker sums may be a few microseconds apart,
  // so checked_out (which includes connections in transit between workers) is what remains.
  s.size = std::max(0, limit - budget);
  s.checked_out = std::max(0, s.size - s.checked_in - s.opening);
  s.overflow = std::max(0, s.size - pool_size);
  s.pinned = pinned_.load(std::memory_order_relaxed);
  s.total_statement_evictions = evictions_.load(std::memory_order_relaxed);
  s.testing = testing_.load(std::memory_order_relaxed);
  s.total_invalid = invalid_.load(std::memory_order_relaxed);
  if (oldest != 0) s.max_wait_us = std::max<std::int64_t>(0, (to_ns(now) - oldest) / 1000);
  {
    std::lock_guard lock(failures_mutex_);
    s.login_failures = login_failures_;
  }
  return s;
}

void ServerPool::set_server_parameters(ServerParameters params) {
  if (server_parameters_.load()) return;
  std::shared_ptr<const ServerParameters> none;
  server_parameters_.compare_exchange_strong(
      none, std::make_shared<const ServerParameters>(std::move(params)));
}

std::shared_ptr<const ServerPool::ServerParameters> ServerPool::server_parameters() const {
  return server_parameters_.load();
}

bool ServerPool::has_server_parameters() const {
  return server_parameters_.load() != nullptr;
}

}  // namespace pgvalve::pool
