// Session lifecycle: login, links, events (timers, lost servers, notifications, the client
// leaving, shutdown) and the one place the state changes. Client requests are planned in
// client_flight.cpp, server answers in server_flight.cpp.
#include <algorithm>
#include <atomic>
#include <cassert>
#include <memory>
#include <type_traits>

#include "protocol/keyed_hash.h"
#include "routing/sql_lexer.h"
#include "routing/sql_text.h"
#include "session/limits.h"
#include "session/session_internal.h"
#include "session/settings_sync.h"

namespace pgvalve::session {

namespace pr = protocol;

namespace {

// Scratch that grew past this for one unusual request is not kept for the next.
constexpr std::size_t kKeptScratchBytes = 64 * 1024;

void shrink(std::string& s) {
  if (s.capacity() > kKeptScratchBytes) std::string().swap(s);
}

// The channel of a whole NotificationResponse ('A', length, process id, channel, payload).
std::string_view notification_channel(std::string_view message) {
  if (message.size() < 10) return {};
  const std::string_view rest = message.substr(9);
  return rest.substr(0, rest.find('\0'));
}

template <typename T>
void shrink(std::vector<T>& v) {
  if (v.capacity() * sizeof(T) > kKeptScratchBytes) std::vector<T>().swap(v);
}

// Back to a default-built value, rebuilt in place: `value = {}` would move-assign each member
// (copying the buffer of every short string), about a third of a workspace's reset. Building
// these allocates nothing (std::chrono's time_point alone keeps the compiler from knowing it
// cannot throw); noexcept makes sure no member is ever left destroyed.
template <typename T>
void rebuild(T& value) noexcept {
  static_assert(std::is_default_constructible_v<T>);
  std::destroy_at(&value);
  std::construct_at(&value);
}

// "-c name=value --name=value" as libpq sends PGOPTIONS; backslash escapes a space.
std::vector<std::pair<std::string, std::string>> parse_options(std::string_view options) {
  std::vector<std::string> words;
  std::string word;
  bool escaped = false;
  for (char c : options) {
    if (escaped) {
      word += c;
      escaped = false;
    } else if (c == '\\') {
      escaped = true;
    } else if (c == ' ' || c == '\t') {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    } else {
      word += c;
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  std::vector<std::pair<std::string, std::string>> out;
  for (std::size_t i = 0; i < words.size(); ++i) {
    std::string_view w = words[i];
    std::string_view kv;
    if (w == "-c" && i + 1 < words.size()) {
      kv = words[++i];
    } else if (w.starts_with("-c")) {
      kv = w.substr(2);
    } else if (w.starts_with("--")) {
      kv = w.substr(2);
    } else {
      continue;
    }
    auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    std::string name(kv.substr(0, eq));
    std::replace(name.begin(), name.end(), '-', '_');
    out.emplace_back(std::move(name), std::string(kv.substr(eq + 1)));
  }
  return out;
}

std::string millis(std::chrono::milliseconds ms) {
  return std::to_string(ms.count()) + " ms";
}

}  // namespace

SessionOptions SessionOptions::from(const config::Config& config) {
  SessionOptions o;
  o.mode = config.pool.mode;
  o.max_message_bytes = static_cast<std::size_t>(config.limits.max_message_bytes);
  o.max_prepared_statements =
      static_cast<std::size_t>(std::max(1, config.pool.max_prepared_statements));
  o.pin_session_state = config.pool.pin_session_state;
  o.query_timeout = std::chrono::milliseconds(config.pool.query_timeout_ms);
  o.idle_transaction_timeout = std::chrono::milliseconds(config.pool.idle_transaction_timeout_ms);
  o.message_timeout = std::chrono::milliseconds(config.limits.message_timeout_ms);
  o.sync_timeout = std::chrono::milliseconds(std::max(1000, config.pool.checkout_timeout_ms));
  o.read_your_writes = config.routing.read_your_writes;
  o.read_your_writes_window = std::chrono::milliseconds(config.routing.read_your_writes_window_ms);
  return o;
}

// ---- Workspaces ----------------------------------------------------------------------------

const Workspace::Rare Workspace::kUntouchedRare{};
const Workspace::ScatterRun Workspace::kUntouchedScatter{};
const Workspace::ShardTransaction Workspace::kUntouchedTx{};

void Workspace::clear() {
  rebuild(pending_route);
  pending_link = 0;
  client_scratch.clear();
  client_spans.clear();
  reply_spans.clear();
  reply_scratch.clear();
  client_actions.clear();
  event_actions.clear();
  retry_request.clear();
  shrink(retry_request);
  unnamed_statement_text.clear();
  shrink(unnamed_statement_text);
  unnamed_statement_types.clear();
  shrink(unnamed_statement_types);
  retry_pending = false;
  retry_used = false;
  flush_as_sync = false;
  for (auto& l : links) {
    l.reset();
    l.actions.clear();
    l.scratch.clear();
    l.spans.clear();
    shrink(l.scratch);
  }
  if (rare_touched_) {
    // Rebuilt whole, so nothing a request left in it (and no memory it grew) stays.
    rebuild(rare_);
    rare_touched_ = false;
  }
  if (shard_work_touched_) {
    rebuild(scatter_);
    rebuild(tx_);
    shard_work_touched_ = false;
  }
  rebuild(unnamed_statement_note);
  rebuild(unnamed_portal_note);
  unnamed_statement_pins = false;
  unnamed_statement_noted = false;
  unnamed_portal_pins = false;
  unnamed_statement_fingerprint = 0;
  unnamed_portal_fingerprint = 0;
  unnamed_portal_unshaped_statement = 0;
  forget_fingerprint();
  accounting.text = nullptr;
  accounting.execution_due = false;
  accounting.transaction_due = false;
  accounting.sample.clear();  // an unsettled execution's (a session that closed)
  shrink(client_scratch);
  shrink(reply_scratch);
  shrink(client_actions.outbox);
  shrink(event_actions.outbox);
}

WorkspacePool::WorkspacePool() = default;
WorkspacePool::~WorkspacePool() = default;

std::unique_ptr<Workspace> WorkspacePool::take() {
  peak_ = std::max(peak_, ++in_use_);
  if (spare_.empty()) return std::make_unique<Workspace>();
  auto w = std::move(spare_.back());
  spare_.pop_back();
  return w;
}

std::size_t WorkspacePool::keep() const {
  return std::clamp(std::max(peak_, previous_peak_), kMinSpares, kMaxSpares);
}

void WorkspacePool::sweep() {
  previous_peak_ = peak_;
  peak_ = in_use_;
  while (!spare_.empty() && spare_.size() + in_use_ > keep())
    spare_.pop_back();
}

void WorkspacePool::statement_changed(std::uint64_t hash, std::int64_t at) {
  record_statement_change(changed_statements_, hash, at);
  if (shared_changes_) shared_changes_->record(hash, at);
}

std::shared_ptr<const Settings> WorkspacePool::share(Settings settings) {
  const std::uint64_t key = settings.fingerprint();
  std::weak_ptr<const Settings>& slot = shared_settings_[key];
  if (auto known = slot.lock(); known && known->all() == settings.all()) return known;
  auto made = std::make_shared<const Settings>(std::move(settings));
  slot = made;
  if (shared_settings_.size() >= next_sweep_) {
    // Copies no client holds any more are forgotten; sweeping again only once the table has
    // doubled keeps logins cheap when every client's settings differ (a device id as
    // application_name).
    std::erase_if(shared_settings_, [](const auto& entry) { return entry.second.expired(); });
    next_sweep_ = std::max(kFirstSweep, 2 * shared_settings_.size());
  }
  return made;
}

void WorkspacePool::give_back(std::unique_ptr<Workspace> workspace) {
  if (!workspace) return;
  if (in_use_ > 0) --in_use_;
  if (spare_.size() + in_use_ >= keep()) return;
  workspace->clear();
  spare_.push_back(std::move(workspace));
}

bool Link::statement_pending(std::uint64_t hash) const {
  for (std::size_t i = 0; i < pending.size(); ++i) {
    const protocol::PendingResponse& p = pending.at(i);
    if (p.statement_hash == hash && moves_statement(p)) return true;
  }
  return false;
}

bool Link::parse_pending(std::uint64_t hash) const {
  if (pending.parses() == 0) return false;  // the usual case: no scan per Bind
  for (std::size_t i = 0; i < pending.size(); ++i) {
    const protocol::PendingResponse& p = pending.at(i);
    if (p.kind == protocol::PendingResponse::Kind::ParseComplete && p.statement_hash == hash) {
      return true;
    }
  }
  return false;
}

bool Link::parse_unconfirmed(std::uint64_t hash) const {
  if (pending.parses() == 0) return false;  // the usual case: no scan per Bind
  bool parse = false;                       // the latest pending Parse of it
  bool behind_sync = false;                 // ... has a Sync after it
  for (std::size_t i = 0; i < pending.size(); ++i) {
    const protocol::PendingResponse& p = pending.at(i);
    if (p.kind == protocol::PendingResponse::Kind::ParseComplete && p.statement_hash == hash) {
      parse = true;
      behind_sync = false;
    } else if (parse && p.kind == protocol::PendingResponse::Kind::ReadyForQuery) {
      behind_sync = true;
    }
  }
  return behind_sync;
}

// ---- Session -------------------------------------------------------------------------------

namespace {

// Once per login: no lock shared per query.
std::uint64_t next_identity() {
  static std::atomic<std::uint64_t> last{0};
  return last.fetch_add(1, std::memory_order_relaxed) + 1;
}

}  // namespace

Session::Session(const SessionOptions& options, const routing::Router& router,
                 WorkspacePool& workspaces, const stats::Recorder* recorder)
    : options_(options),
      identity_(next_identity()),
      router_(router),
      workspaces_(&workspaces),
      recorder_(recorder && recorder->stats ? recorder : nullptr) {}

Session::~Session() {
  if (work_) workspaces_->give_back(std::move(work_));
}

void Session::enter(SessionState next) {
  assert(transition_allowed(state_, next));
  if ((next == SessionState::Holding || next == SessionState::PortalSuspended) && state_ != next) {
    held_since_ = now_;
  }
  state_ = next;
}

Workspace& Session::take_workspace() {
  work_ = workspaces_->take();
  return *work_;
}

const routing::Route& Session::pending_route() const {
  static const routing::Route none;
  return work_ ? work_->pending_route : none;
}

LinkId Session::pending_link() const {
  return work_ ? work_->pending_link : 0;
}

Actions& Session::client_actions() {
  Actions& a = work().client_actions;
  a.clear();
  return a;
}

Actions& Session::event_actions() {
  Actions& a = work().event_actions;
  a.clear();
  return a;
}

Link& Session::link(LinkId id) {
  auto& links = work().links;
  // Link 0 is nearly every lookup: the deque's front needs none of its index arithmetic.
  if (id == 0 && !links.empty()) return links.front();
  while (links.size() <= id) {
    links.emplace_back();
    links.back().id = static_cast<LinkId>(links.size() - 1);
  }
  return links[id];
}

LinkId Session::id_of(const Link& l) {
  return l.id;
}

// The link the client's next request goes to: a session-mode client's replica link (1) while
// it has one, else its own server.
Link* Session::linked_link() {
  if (!work_) return nullptr;
  // A transaction over several shards: the shard its last request went to.
  if (work_->tx().spans && work_->links[work_->tx().current].server) {
    return &work_->links[work_->tx().current];
  }
  for (auto it = work_->links.rbegin(); it != work_->links.rend(); ++it) {
    if (it->server) return &*it;
  }
  return nullptr;
}

void Session::enter_between_requests() {
  enter(linked_link() ? SessionState::Holding : SessionState::Idle);
}

bool Session::answer_due(LinkId id) const {
  return linked(id) && work_->links[id].busy();
}

bool Session::linked(LinkId id) const {
  if (!work_) return false;
  const auto& links = work_->links;
  if (id == 0) return !links.empty() && links.front().server != nullptr;  // as link()
  return id < links.size() && links[id].server != nullptr;
}

std::size_t Session::link_count() const {
  if (!work_) return 0;
  return static_cast<std::size_t>(std::count_if(work_->links.begin(), work_->links.end(),
                                                [](const Link& l) { return l.server; }));
}

std::size_t Session::prepared_statement_count() const {
  return statements_ ? statements_->size() : 0;
}

bool Session::wants_client_input() const {
  if (pipeline_full_) return false;
  // Its Terminate is read again once the COPY ahead of it is answered; the client's end (it
  // closes its socket after Terminate) is not taken for a client gone before that.
  if (close_when_answered_) {
    return state_ == SessionState::Idle ||
           (state_ == SessionState::Holding && !copy_being_answered());
  }
  if (memory_wait_ && !memory_retry_due_) return false;
  switch (state_) {
    case SessionState::Idle:
    case SessionState::Active:
    case SessionState::Holding:
    case SessionState::Copying:
    case SessionState::PortalSuspended:
      return true;
    default:
      return false;
  }
}

bool Session::has_own_input() const {
  return work_ && work_->retry_pending && state_ == SessionState::Holding;
}

bool Session::wants_server_input(LinkId id) const {
  // While a session-mode client's read runs on a replica its own server is not read: what that
  // server may send meanwhile (a notification) waits, not to land inside the replica's answer.
  if (id == 0 && options_.mode == config::PoolMode::Session && linked(1)) return false;
  if (state_ == SessionState::Closing || !work_) return false;
  // As linked(), with the link found once (a deque's index costs more than its front).
  const auto& links = work_->links;
  const Link* l = id == 0 ? (links.empty() ? nullptr : &links.front())
                          : (id < links.size() ? &links[id] : nullptr);
  return l != nullptr && l->server != nullptr && !l->held_back;
}

void Session::trim() {
  if (state_ != SessionState::Idle || !work_ || linked_link()) return;
  if (!work_->rare().notifications.empty()) return;
  workspaces_->give_back(std::move(work_));
}

Clock::time_point Session::next_deadline() const {
  auto deadline = Clock::time_point::max();
  auto earlier = [&](Clock::time_point t) { deadline = std::min(deadline, t); };
  // While it waits for memory the client is not read: its message's clock stops.
  if (partial_ && !memory_wait_ && options_.message_timeout.count() > 0) {
    earlier(partial_since_ + options_.message_timeout);
  }
  if (memory_wait_) {
    if (!memory_retry_due_) earlier(memory_retry_at_);
    if (options_.message_timeout.count() > 0) {
      earlier(memory_wait_since_ + options_.message_timeout);
    }
  }
  if (!work_) return deadline;
  for (const auto& l : work_->links) {
    if (!l.server) continue;
    if (l.syncing) earlier(l.sync_started + options_.sync_timeout);
    if (l.paused && options_.message_timeout.count() > 0) {
      earlier(l.client_behind_since + options_.message_timeout);
    }
    if (options_.query_timeout.count() > 0 && l.owes_answer() && !l.paused) {
      earlier(l.last_activity + options_.query_timeout);
    }
    if (holds_idle_transaction(l) && options_.idle_transaction_timeout.count() > 0) {
      earlier(held_since_ + options_.idle_transaction_timeout);
    }
    if (options_.idle_transaction_timeout.count() > 0 && waits_for_client(l)) {
      earlier(client_activity_ + options_.idle_transaction_timeout);
    }
  }
  return deadline;
}

void Session::set_server_paused(LinkId id, bool paused, Clock::time_point now) {
  if (!linked(id)) return;
  Link& l = link(id);
  if (l.paused && !paused) l.last_activity = now;
  if (!l.paused && paused) l.client_behind_since = now;
  l.paused = paused;
}

void Session::client_progress(std::uint64_t taken, Clock::time_point now) {
  if (!work_) return;
  for (auto& l : work_->links) {
    if (!l.server || !l.paused || l.client_taken == taken) continue;
    l.client_taken = taken;
    l.client_behind_since = now;
  }
}

// ---- Login ---------------------------------------------------------------------------------

bool Session::absorb_startup(const std::vector<std::pair<std::string, std::string>>& startup) {
  Settings startup_settings;
  auto apply = [&](std::string_view name, std::string_view value) {
    const std::string key = lower(name);
    if (key == "search_path" || key == "temp_tablespaces") {
      // PostgreSQL reads a startup value as set_config() does: `foo,public` is a list of two
      // names, where SET search_path TO 'foo,public' would name one schema.
      std::string literal;
      routing::append_literal(literal, value);
      startup_settings.set(key, literal, is_synced_setting(key), SettingForm::Function);
      return;
    }
    startup_settings.set(key, value, is_synced_setting(key));
  };
  // The limit a SET meets (53400) holds for the login's settings too: past it a client logged in
  // with 1,100 of them.
  bool fits = true;
  std::string_view user;
  std::string_view database;
  for (const auto& [name, value] : startup) {
    if (!fits) break;
    if (name == "user") user = value;
    if (name == "database") database = value;
    if (name == "user" || name == "database" || name == "replication") continue;
    if (name == "options") {
      for (const auto& [k, v] : parse_options(value)) {
        apply(k, v);
        fits = startup_settings.size() <= kMaxClientSettings;
        if (!fits) break;
      }
      continue;
    }
    apply(name, value);
    fits = startup_settings.size() <= kMaxClientSettings;
  }
  // In a fixed order, and with PostgreSQL's default database: drivers send the startup
  // parameters in any order (pgx from a map), and every client of one database and user must
  // find the same record.
  pool_key_ = protocol::KeyedHash().add(user).add(database.empty() ? user : database).finish();
  startup_settings_ = workspaces_->share(std::move(startup_settings));
  // A copy that shares the startup list until the client changes a setting.
  client_settings_ = *startup_settings_;
  note_default_isolation();
  return fits;
}

void Session::append_login_reply(std::string& out) {
  pr::append_authentication_ok(out);
  for (const auto& [name, value] : *defaults_) {
    const Setting* mine = client_settings_.find(name);
    pr::append_parameter_status(out, name, mine ? std::string_view(mine->value) : value);
  }
  pr::append_backend_key_data(out, key_);
  pr::append_ready_for_query(out, 'I');
  logged_in_ = true;
  told_ = client_settings_.share();
}

std::string_view Session::setting_value(std::string_view name) const {
  if (const Setting* s = client_settings_.find(name)) return s->value;
  return default_value(name);
}

std::string_view Session::default_value(std::string_view name) const {
  if (defaults_) {
    for (const auto& [default_name, value] : *defaults_) {
      if (routing::iequals(default_name, name)) return value;
    }
  }
  return {};
}

std::string_view Session::startup_value(std::string_view name) const {
  if (const Setting* s = startup_settings_ ? startup_settings_->find(name) : nullptr) {
    return s->value;
  }
  return default_value(name);
}

const routing::TextReading& Session::text_reading() const {
  // While reading_of_ shares the list, a change copies it: the same address, the same content.
  if (text_reading_known_ && client_settings_.items() == reading_of_.get()) return text_reading_;
  reading_of_ = client_settings_.share();
  text_reading_known_ = true;
  text_reading_ = routing::text_reading(setting_value("client_encoding"),
                                        setting_value("standard_conforming_strings"));
  return text_reading_;
}

// PostgreSQL reports a changed setting just before ReadyForQuery; so does pgvalve, for the
// client's session. The server's own ParameterStatus messages are not passed on: after a RESET
// they tell the pool's defaults, not the client's startup values, and during pgvalve's syncs
// values the client never changed.
void Session::report_settings(std::string& out) {
  if (client_settings_.items() == told_.get()) return;  // every request but a few
  auto now = client_settings_.share();
  for (const auto& [name, fallback] : *defaults_) {
    if (!is_synced_setting(name)) continue;
    const Setting* before = Settings::find_in(told_.get(), name);
    const Setting* after = Settings::find_in(now.get(), name);
    const std::string_view was = before ? std::string_view(before->value) : fallback;
    const std::string_view is = after ? std::string_view(after->value) : fallback;
    if (was != is) pr::append_parameter_status(out, name, is);
  }
  told_ = std::move(now);
}

const Actions& Session::start(const std::vector<std::pair<std::string, std::string>>& startup,
                              std::shared_ptr<const ServerParameters> defaults,
                              pr::BackendKeyData key, ServerState* server, Clock::time_point now) {
  now_ = now;
  Actions& out = client_actions();
  const bool fits = absorb_startup(startup);
  defaults_ = defaults ? std::move(defaults) : std::make_shared<const ServerParameters>();
  text_reading_known_ = false;  // worked out with the defaults
  key_ = key;
  client_activity_ = now;
  if (!fits) {
    if (server) {  // session mode's login server goes back with the close
      Link& l = link(0);
      l.reset();
      l.server = server;
      l.route = routing::Route::primary(0);
      l.last_activity = now;
    }
    close_with("53400",
               "pgvalve: a client may set at most " + std::to_string(kMaxClientSettings) +
                   " session settings, and this login sets more (startup parameters and "
                   "options -c); set fewer",
               out);
    return out;
  }
  if (server) {
    Link& l = link(0);
    l.reset();
    l.server = server;
    l.route = routing::Route::primary(0);
    l.login = true;
    l.last_activity = now;
    Workspace& w = work();
    if (start_sync(l, w.client_scratch, now)) {
      out.to_server.push_back({w.client_scratch.data(), w.client_scratch.size()});
      out.server_link = 0;
      enter(SessionState::Syncing);
      return out;
    }
    l.login = false;
    append_login_reply(out.outbox);
    if (options_.mode == config::PoolMode::Session) {
      enter(SessionState::Holding);
    } else {
      unlink(0, LinkOp::Kind::Release, out);
      enter(SessionState::Idle);
    }
    return out;
  }
  append_login_reply(out.outbox);
  enter(SessionState::Idle);
  return out;
}

// ---- Settings ------------------------------------------------------------------------------

std::uint64_t Session::settings_fingerprint() const {
  // The defaults are shared per pool: their address stands for their content.
  return client_settings_.fingerprint() ^ reinterpret_cast<std::uintptr_t>(defaults_.get());
}

bool Session::settings_match(const ServerState& server, bool own_changes) const {
  return (own_changes || !server.settings_unknown) &&
         server.synced_fingerprint == settings_fingerprint() &&
         server.synced_version == server.settings.version();
}

bool Session::start_sync(Link& l, std::string& out, Clock::time_point now, bool own_changes) {
  if (settings_match(*l.server, own_changes)) return false;
  SyncPlan plan = plan_sync(client_settings_, *defaults_, *l.server, !own_changes);
  if (plan.sql.empty()) {
    apply_sync(plan, client_settings_, *l.server, settings_fingerprint());
    return false;
  }
  pr::append_query(out, plan.sql);
  expect_own_answer(l, kActionSync);
  l.syncing = true;
  l.sync_started = now;
  l.last_activity = now;
  l.sync_plan = std::move(plan);
  return true;
}

// A replica refused settings its primary accepted (a role created on the primary and not yet
// replayed there, a setting a hot standby refuses): not the client's fault, and the primary
// would take them. The replica goes back (its next lender's sync starts from RESET ALL: the
// refused sync may have left pgvalve's record of it wrong) and the read runs on the primary; a
// session-mode client's on its own server, which has its settings.
void Session::read_on_primary_instead(Link& l, std::string_view refused, Actions& out) {
  const LinkId id = id_of(l);
  const std::uint16_t shard = l.route.shard;
  if (!replica_refusal_told_) {
    replica_refusal_told_ = true;
    out.replica_refused_settings = "replica " + l.server->name +
                                   " refused the client's settings (" + std::string(refused) +
                                   "); its reads run on the primary while replicas refuse them";
  }
  l.server->settings_unknown = true;
  unlink(id, LinkOp::Kind::Release, out);
  if (options_.mode == config::PoolMode::Session && id != 0 && linked(0)) {
    stay_on_own_server_ = true;
    enter(SessionState::Holding);
    out.resume_client = true;
    return;
  }
  routing::Route route = routing::Route::primary(shard);
  route.write = false;
  work().pending_route = route;
  work().pending_link = id;
  out.check_out = true;
  out.route = std::move(route);
  enter(SessionState::WaitingForServer);
}

void Session::finish_sync(Link& l, bool ok, Actions& out) {
  l.syncing = false;
  const bool login = l.login;
  l.login = false;
  std::string refused_sqlstate;
  std::string refused;
  if (!ok && !work().rare().sync_error.empty()) {
    Workspace::Rare& rare = work().change_rare();
    refused_sqlstate = std::exchange(rare.sync_error_sqlstate, {});
    refused = std::exchange(rare.sync_error, {});
  }
  if (!refused.empty() && l.route.kind == routing::Route::Kind::Replica && l.scatter_shard < 0 &&
      !l.begin_pending && !login && l.server->tx_status == 'I') {
    read_on_primary_instead(l, refused, out);
    return;
  }
  if (!refused.empty() && l.scatter_shard < 0 && !(l.begin_pending && work().tx().joining) &&
      l.server->tx_status == 'I') {
    // The server refused the settings themselves (`work_mem=abc` at login): every server would,
    // so the client is told now, as PostgreSQL would have at its login, rather than getting an
    // error for each request and costing a new server connection each time. The sync ran as one
    // implicit transaction and nothing of it stayed, but what it could not set or reset is still
    // in pgvalve's record of the server: were that record trusted, the next client's sync could
    // fail the same way (a reset of another client's leftover among it). The next sync starts
    // from RESET ALL instead.
    l.server->settings_unknown = true;
    close_with(refused_sqlstate,
               "pgvalve: the server refused this client's session settings (" + refused +
                   "); connect again with settings the server accepts",
               out);
    return;
  }
  if (!ok) {
    const std::string message =
        "pgvalve: could not apply the client's session settings on "
        "server " +
        l.server->name + "; check the settings the client uses";
    if (l.scatter_shard >= 0 && scattering()) {
      // The shard's part ran without the client's settings: not the client's answer.
      fail_scatter("08006", message, out);
      l.discard = true;
      return;
    }
    if (login) {
      close_with("08006", message, out);
      return;
    }
    if (l.begin_pending && work().tx().joining) {
      // A shard joining the client's transaction: the transaction goes on where it was.
      unlink(id_of(l), LinkOp::Kind::Close, out);
      join_failed("08006",
                  "could not join it: " + message.substr(std::string_view("pgvalve: ").size()),
                  out);
      return;
    }
    work().change_rare().failure_sqlstate = "08006";
    work().change_rare().failure = message;
    unlink(id_of(l), LinkOp::Kind::Close, out);
    enter_between_requests();
    out.resume_client = true;
    return;
  }
  // PostgreSQL may hold a normalised form of what the client asked for ("ISO" is "ISO, MDY")
  // and reports nothing when that equals what it had: the client's session has the server's
  // value (and hears of it before its request's ReadyForQuery). At login that form is also
  // what RESET returns to, as on a server of the client's own.
  std::optional<Settings> startup;
  for (const auto& [name, value] : l.server->startup_parameters) {
    if (!is_synced_setting(name)) continue;
    const Setting* have = l.server->settings.find(name);
    if (!have) continue;
    if (login && startup_settings_) {
      const Setting* given = startup_settings_->find(name);
      if (given && given->value != have->value) {
        if (!startup) startup = *startup_settings_;
        startup->set(name, have->value, true);
      }
    }
    const Setting* mine = client_settings_.find(name);
    if (mine && mine->value != have->value) client_settings_.set(name, have->value, true);
  }
  if (startup) startup_settings_ = workspaces_->share(std::move(*startup));
  apply_sync(l.sync_plan, client_settings_, *l.server, settings_fingerprint());
  if (l.scatter_shard >= 0) return;  // its part of the read follows
  if (login) {
    // The values the server reported during the sync are in the reply.
    const std::size_t from = l.scratch.size();
    append_login_reply(l.scratch);
    l.spans.push_back({true, from, l.scratch.size() - from});
    return;
  }
  // The request that waited for this server can go on (after its transaction's BEGIN).
  if (l.begin_pending) {
    l.syncing = true;
    return;
  }
  enter(SessionState::Holding);
  out.resume_client = true;
}

void Session::finish_begin(Link& l, bool ok, Actions& out) {
  l.begin_pending = false;
  l.syncing = false;
  if (!ok) {
    // Checked with PostgreSQL's grammar before it was answered, so only the server can have
    // failed it; the client's transaction did not start, and its request is answered so.
    work().change_rare().failure_sqlstate = "08006";
    work().change_rare().failure = "pgvalve: the transaction could not start on server " +
                                   l.server->name + "; it was rolled back, run it again";
    unlink(id_of(l), LinkOp::Kind::Close, out);
    enter_between_requests();
    out.resume_client = true;
    return;
  }
  enter(SessionState::Holding);
  out.resume_client = true;
}

// ---- Events ---------------------------------------------------------------------------------

namespace {

void write_error(std::string& out, std::string_view sqlstate, std::string_view message,
                 std::string_view hint = {}, bool fatal = false) {
  pr::ErrorFields e;
  e.severity = fatal ? "FATAL" : "ERROR";
  e.sqlstate = sqlstate;
  e.message = message;
  e.hint = hint;
  pr::append_error_response(out, e);
}

}  // namespace

void Session::append_error(std::string& out, std::string_view sqlstate, std::string_view message,
                           std::string_view hint, bool fatal) {
  if (recorder_) recorder_->stats->count_error(sqlstate);
  write_error(out, sqlstate, message, hint, fatal);
}

void Session::unlink(LinkId id, LinkOp::Kind kind, Actions& out, std::string_view sql1,
                     std::string_view sql2) {
  Link& l = link(id);
  if (!l.server) return;
  LinkOp op;
  op.kind = kind;
  op.link = id;
  op.sql[0] = sql1;
  op.sql[1] = sql2;
  out.link_ops.push_back(op);
  // A server that goes takes none of the shard traffic this step had for it (COPY rows, its
  // PREPARE TRANSACTION: those bytes may live in memory this very step frees, when the write
  // over several shards ends with this server), and one given back to the pool takes no
  // request at all. (A server closed behind a request the client sent before Terminate still
  // gets that request first.)
  std::erase_if(out.to_links, [id](const LinkChunk& c) { return c.link == id; });
  if (out.server_link == id &&
      (kind == LinkOp::Kind::Release || kind == LinkOp::Kind::CleanAndRelease)) {
    out.to_server.clear();
  }
  l.reset();
  if (pipeline_full_) {
    pipeline_full_ = false;
    out.resume_client = true;
  }
}

// Every link is given back as cleanly as it can be, then the client is closed.
void Session::release_all_for_close(Actions& out) {
  if (!work_) return;
  for (std::size_t i = 0; i < work_->links.size(); ++i) {
    Link& l = work_->links[i];
    if (!l.server) continue;
    const auto id = static_cast<LinkId>(i);
    ServerState& server = *l.server;
    // A transaction cut short may have left state a ROLLBACK keeps (a session advisory lock,
    // a SQL PREPARE): a server that was to be checked for it is reset too.
    const bool reset_session =
        options_.mode == config::PoolMode::Session || pinned_ || l.check_pins;
    if (l.busy() || l.stream_remaining > 0) {
      // A part of a two-phase commit whose PREPARE or decision is still running may stay
      // prepared there: the decision the others get follows it (Actions::prepared_parts).
      if (scattering() && !work_->scatter().gid.empty()) {
        const auto& run = work_->scatter();
        out.prepared_parts.push_back({l.route.shard, run.gid, run.deciding && run.commit});
      } else if (work_->tx().ending && !work_->tx().gid.empty()) {
        const auto& tx = work_->tx();
        out.prepared_parts.push_back({l.route.shard, tx.gid, tx.deciding && tx.commit});
      }
      unlink(id, LinkOp::Kind::CancelAndClose, out);
    } else if (l.prepared && !l.finishing && scattering()) {
      // A write over several shards whose client left: its part here is decided as the other
      // shards' are (rolled back unless the commit had begun), not left prepared.
      unlink(id, LinkOp::Kind::CleanAndRelease, out, scatter_decision_sql());
    } else if (l.prepared && !l.finishing && work_->tx().ending) {
      // The same for a part of a transaction over several shards.
      unlink(id, LinkOp::Kind::CleanAndRelease, out, tx_decision_sql());
    } else if (options_.mode == config::PoolMode::Session && server.touched_temp) {
      unlink(id, LinkOp::Kind::Close, out);
    } else if (server.tx_status != 'I' || reset_session) {
      std::string_view first = server.tx_status != 'I' ? "ROLLBACK" : "DISCARD ALL";
      std::string_view second = server.tx_status != 'I' && reset_session ? "DISCARD ALL" : "";
      if (reset_session) {
        // What DISCARD ALL leaves: the server's defaults and no prepared statements.
        server.settings.keep_reported_only();
        server.settings_unknown = false;
        server.statements.clear();
      }
      unlink(id, LinkOp::Kind::CleanAndRelease, out, first, second);
    } else {
      unlink(id, LinkOp::Kind::Release, out);
    }
  }
  if (pinned_) {
    pinned_ = false;
    out.pinned_change -= 1;
  }
  forget_tx_notes();
}

bool Session::client_mid_message() const {
  if (!work_) return false;
  return std::any_of(work_->links.begin(), work_->links.end(), [](const Link& l) {
    return l.server && l.stream_remaining > 0 && l.stream_forward;
  });
}

void Session::close_with(std::string_view sqlstate, std::string_view message, Actions& out) {
  if (state_ == SessionState::Closing) return;
  // Inside a message passing through, the client would read the error as part of it.
  if (!sqlstate.empty() && !client_mid_message()) {
    append_error(out.outbox, sqlstate, message, {}, true);
  }
  out.close_sqlstate.assign(sqlstate);
  out.close_reason.assign(message);
  release_all_for_close(out);
  if (!extras().listen_channels.empty()) {
    out.hub.kind = HubRequest::Kind::UnlistenAll;
    extras_->listen_channels.clear();
  }
  out.close_client = true;
  enter(SessionState::Closing);
}

void Session::leave(Actions& out) {
  if (copy_being_answered()) {
    close_when_answered_ = true;
    return;
  }
  close_with({}, {}, out);
}

bool Session::copy_being_answered() const {
  if (!work_) return false;
  if (state_ == SessionState::Scattering) {
    // Every shard took data (the client was told to send it) and the COPY is no longer taking
    // it: its parts are answering, preparing or committing.
    const auto& run = work_->scatter();
    return run.copy && run.scatter && run.copy_ready >= run.scatter->shards() &&
           std::none_of(work_->links.begin(), work_->links.end(),
                        [](const Link& l) { return l.server && l.copy_in; });
  }
  return std::any_of(work_->links.begin(), work_->links.end(),
                     [](const Link& l) { return l.server && l.copy_answer_due; });
}

void Session::refuse_request_during_copy(Actions& out) {
  close_with("08P01",
             "pgvalve: a request came during COPY FROM STDIN, where only CopyData, CopyDone, "
             "CopyFail, Flush and Sync may; end the COPY with CopyDone or CopyFail before "
             "sending the next request",
             out);
}

const Actions& Session::on_client_gone() {
  Actions& out = event_actions();
  close_with({}, {}, out);
  return out;
}

const Actions& Session::on_drain() {
  Actions& out = event_actions();
  drain(out);
  return out;
}

const Actions& Session::on_reload_change(config::ReloadChange change) {
  Actions& out = event_actions();
  if (change == config::ReloadChange::None) return out;
  reload_change_ = change;
  drain(out);
  // A request waiting for its first server was routed by the old rules and has run nowhere.
  if (state_ == SessionState::WaitingForServer && work_ &&
      std::none_of(work_->links.begin(), work_->links.end(),
                   [](const Link& l) { return l.server != nullptr; })) {
    close_with("57P01", drain_message(), out);
  }
  return out;
}

void Session::drain(Actions& out) {
  drain_requested_ = true;
  // Holding between requests: session mode, or a pinned client in transaction mode.
  const bool between_requests =
      state_ == SessionState::Idle ||
      (state_ == SessionState::Holding && work_ &&
       std::none_of(work_->links.begin(), work_->links.end(), [](const Link& l) {
         return l.server && (l.busy() || l.reserved || l.server->tx_status != 'I');
       }));
  if (between_requests && !partial_) close_with("57P01", drain_message(), out);
}

std::string_view Session::drain_message() const {
  switch (reload_change_) {
    case config::ReloadChange::ShardMap:
      return "pgvalve: a reload changed this database's shards or how keys map to them; "
             "reconnect to continue (a request not answered was not run)";
    case config::ReloadChange::Dbname:
      return "pgvalve: a reload changed the database on the servers (dbname) that this database "
             "leads to; reconnect to continue there (a request not answered was not run)";
    case config::ReloadChange::DatabaseRemoved:
      return "pgvalve: a reload removed this database from the configuration; connect to one "
             "that is configured (a request not answered was not run)";
    case config::ReloadChange::UserRemoved:
      return "pgvalve: a reload removed this user from the configuration; log in as a user that "
             "is configured (a request not answered was not run)";
    case config::ReloadChange::None:
      break;
  }
  return "pgvalve: shutting down; reconnect to continue";
}

const Actions& Session::on_kill(std::string_view message) {
  Actions& out = event_actions();
  close_with("57P01", message, out);
  return out;
}

const Actions& Session::on_client_memory_refused(bool may_fit_later, Clock::time_point now) {
  now_ = now;
  Actions& out = event_actions();
  if (state_ == SessionState::Closing) return out;
  if (!may_fit_later) {
    close_with("53400",
               "pgvalve: the message is too large to be received within "
               "limits.message_memory_bytes (messages over 1 MiB may hold three quarters of it, "
               "all of them together); send smaller messages, or raise "
               "limits.message_memory_bytes",
               out);
    return out;
  }
  // Other clients' messages hold the memory: this one waits for theirs to end (each within
  // limits.message_timeout_ms) rather than being refused for what they did.
  if (!memory_wait_) {
    memory_wait_ = true;
    memory_wait_since_ = now;
  }
  memory_retry_due_ = false;
  memory_retry_at_ = now + kMemoryRetry;
  return out;
}

const Actions& Session::on_server_lost(LinkId id, Clock::time_point now) {
  now_ = now;
  Actions& out = event_actions();
  if (!linked(id)) return out;
  Link& l = link(id);
  if (l.login) {
    close_with("08006",
               "pgvalve: lost the connection to server " + l.server->name +
                   " during login; reconnect, and check the server's log if it keeps happening",
               out);
    return out;
  }
  std::string goodbye;
  std::string goodbye_sqlstate;
  if (work_ && !work_->rare().server_goodbye.empty()) {
    goodbye.swap(work_->change_rare().server_goodbye);
    goodbye_sqlstate.swap(work_->change_rare().server_goodbye_sqlstate);
  }
  if (retry_elsewhere(l, id, out) || retry_scatter_part(l, out)) return out;
  // With a request of the client's running, whether it committed is not known: a COMMIT, or a
  // statement outside a transaction block, may have, and run again it would write twice.
  const bool running = l.owes_answer();
  std::string message = running ? "pgvalve: the server connection was lost while this request ran"
                                : "pgvalve: the server connection was lost";
  if (!goodbye.empty()) message += " (the server said: " + goodbye + ")";
  // A request of a transaction over several shards, not its end: every part is rolled back.
  const bool over_shards =
      running && work_ && work_->tx().spans && !work_->tx().ending && !work_->tx().implicit;
  message += over_shards ? "; the transaction was rolled back on every shard: end it with "
                           "ROLLBACK, then run it again"
             : running   ? "; an open transaction was rolled back, but a COMMIT or a statement "
                           "outside a transaction block may have taken effect: check before "
                           "running it again"
                         : "; the transaction was rolled back, run it again";
  if (losing_link_closes_client(l, id)) {
    std::string reason;
    if (holds_session(id)) {
      reason = "pgvalve: the server connection holding this session was lost";
      if (!goodbye.empty()) reason += " (the server said: " + goodbye + ")";
      reason += running ? " while a request ran, which may have taken effect; " : "; ";
      reason +=
          "its session state (prepared statements, temporary tables, advisory locks, LISTEN, "
          "settings) is gone: reconnect";
    } else {
      reason = "pgvalve: the server connection was lost while a request of this transaction ran";
      if (!goodbye.empty()) reason += " (the server said: " + goodbye + ")";
      reason +=
          "; the transaction was rolled back unless that request committed it: check, then "
          "reconnect and run it again";
    }
    lose_link(l, id, reason, LinkOp::Kind::Close, out);
    close_with(goodbye_sqlstate.starts_with("57P") ? std::string_view(goodbye_sqlstate) : "08006",
               reason, out);
    return out;
  }
  lose_link(l, id, message, LinkOp::Kind::Close, out);
  // Told at the client's next request, with the server's reason.
  if (lost_block_ == LostBlock::Untold && (extras_ || !goodbye.empty())) {
    extras_to_change().lost_goodbye.swap(goodbye);
  }
  return out;
}

bool Session::holds_session(LinkId id) const {
  return (options_.mode == config::PoolMode::Session && id == 0) || pinned_;
}

// The server held the client's session (session mode: its own server) or state pinned to it
// (transaction mode): prepared statements, temporary objects, advisory locks, LISTEN went with
// it, and a new server would fail each use of them or, worse, run on without them (a lock
// another client then takes too). Or it ran a request of the client's transaction block: the
// request may have ended the block (a COMMIT) or not, so no answer would tell the client
// truly whether its next statement is in a block. The client is closed, as PostgreSQL closes
// it, and its driver starts afresh. (Over shards the parts end together instead.)
bool Session::losing_link_closes_client(const Link& l, LinkId id) const {
  if (holds_session(id)) return true;
  if (scattering() || (work_ && (work_->tx().spans || work_->tx().joining))) return false;
  return !l.syncing && l.owes_answer() && l.server->tx_status != 'I';
}

void Session::give_up_link(Link& l, LinkId id, const std::string& message, LinkOp::Kind kind,
                           Actions& out) {
  if (!losing_link_closes_client(l, id)) {
    lose_link(l, id, message, kind, out);
    return;
  }
  const std::string reason =
      message + (holds_session(id)
                     ? "; the server connection held this session: its state (prepared "
                       "statements, temporary tables, advisory locks, LISTEN, settings) is gone, "
                       "reconnect"
                     : "; it ran a request of this transaction, which was rolled back unless "
                       "that request committed it: check, then reconnect");
  lose_link(l, id, reason, kind, out);
  close_with("08006", reason, out);
}

bool Session::retryable(const Link& l) const {
  const Workspace& w = *work_;
  return l.route.kind == routing::Route::Kind::Replica && l.scatter_shard < 0 && !w.retry_used &&
         !w.retry_request.empty() && !l.answered && l.in_flight == 1 &&
         l.server->tx_status == 'I' && !l.syncing && l.stream_remaining == 0 && !drain_requested_;
}

bool Session::retry_elsewhere(Link& l, LinkId id, Actions& out) {
  Workspace& w = work();
  if (!retryable(l)) return false;
  w.retry_used = true;
  w.retry_pending = true;
  const routing::Route route = l.route;
  unlink(id, LinkOp::Kind::Close, out);
  work().pending_route = route;
  work().pending_link = id;
  out.check_out = true;
  out.route = route;
  enter(SessionState::WaitingForServer);
  return true;
}

// The link's server can no longer be used: outstanding requests get `message`, an open
// transaction is reported lost at the client's next request, a request waiting for the sync
// gets it too.
void Session::lose_link(Link& l, LinkId id, std::string_view message, LinkOp::Kind kind,
                        Actions& out) {
  for (std::size_t i = 0; i < l.pending.size(); ++i) {
    // pgvalve's WAL position query after the client's write (on one shard, over several, or
    // a transaction's commit) was cut: the write may have committed, at a position pgvalve
    // now never learns.
    const auto& p = l.pending.at(i);
    if (p.internal && (p.action == kActionWalPosition || p.action == kActionScatterWal ||
                       p.action == kActionTxWal)) {
      auto& lsns = extras_to_change().write_lsns;
      if (l.route.shard >= lsns.size()) lsns.resize(l.route.shard + 1, 0);
      lsns[l.route.shard] = kUnknownWriteLsn;
    }
  }
  if (scattering() && (l.scatter_shard >= 0 || work_->scatter().in_transaction)) {
    end_scatter_link(l, kind, out.outbox, out, message);
    return;
  }
  if (work_ && (work_->tx().joining || work_->tx().ending) &&
      shard_transaction_link_lost(l, kind, out)) {
    return;
  }
  const bool spanned = work_ && (work_->tx().spans || work_->tx().joining);
  // A batch made a transaction over shards that had one part so far is over with that part's
  // server (with several parts, abandon_shard_transaction() below ends them all).
  if (work_ && work_->tx().implicit && !spanned) work().change_tx().implicit = false;
  if (l.stream_remaining > 0 && l.stream_forward) {
    // Part of a message went to the client and the rest never will: nothing can follow it,
    // not even an error, so the client's connection is closed.
    unlink(id, kind, out);
    close_with({}, {}, out);
    return;
  }
  const bool in_transaction = l.server->tx_status != 'I';
  // A part of a transaction over shards lost while a request other than its end ran: every part
  // is rolled back (abandon_shard_transaction), and the client's block has failed.
  const bool block_fails = spanned && !work_->tx().ending && !work_->tx().implicit;
  if (l.syncing) {
    work().change_rare().failure_sqlstate = "08006";
    work().change_rare().failure = std::string(message);
    // The BEGIN pgvalve answered was on its way with the settings: the block is the client's.
    if (l.begin_pending) lost_block_ = LostBlock::Untold;
    out.resume_client = true;
  } else {
    // Read before fail_pending clears it: a request in flight gets the error with a
    // ReadyForQuery 'I', after which the client knows its transaction is over (within a block
    // such a client is closed instead: losing_link_closes_client).
    const bool answered = l.in_flight > 0;
    fail_pending(l, "08006", message, out.outbox, block_fails && answered ? 'E' : 'I');
    if (answered && block_fails) {
      lost_block_ = LostBlock::Failed;
    } else if (!answered && in_transaction) {
      lost_block_ = LostBlock::Untold;
    }
  }
  if (work_) {
    forget_tx_notes();
    deliver_queued_notifications(out.outbox);
  }
  if (pinned_) {
    pinned_ = false;
    out.pinned_change -= 1;
  }
  unlink(id, kind, out);
  // The client's next request waited for this link's answers (behind pgvalve's WAL position
  // query, or a replica's one request): nothing else would plan it, and the client would wait
  // forever for its answer.
  if (input_waits_for_link_) {
    input_waits_for_link_ = false;
    out.resume_client = true;
  }
  // The other shards' parts of the client's transaction cannot commit without this one.
  if (spanned) abandon_shard_transaction(message, out, block_fails);
  if (state_ != SessionState::Closing && state_ != SessionState::WaitingForServer) {
    enter_between_requests();
  }
  if (drain_requested_ && state_ == SessionState::Idle) {
    close_with("57P01", drain_message(), out);
  }
}

// Every request waiting on `l` gets an error and, where the client waits for one, a
// ReadyForQuery; an unfinished extended flight gets one error and the rest of it is skipped
// up to its Sync.
void Session::fail_pending(Link& l, std::string_view sqlstate, std::string_view message,
                           std::string& out, char status) {
  int user_requests = 0;
  bool recorded = false;
  // The client's request continues past pgvalve's Sync of a part on one shard (hop): its rest,
  // up to its Sync, is failed like messages after the last Sync.
  bool request_goes_on = l.open_extended;
  while (!l.pending.empty()) {
    const auto& head = l.pending.front();
    if (!recorded && head.fingerprint && !head.internal && sqlstate.size() >= 2) {
      // The statement the server was running ended in this error: it counts as one (the
      // statements behind it never ran). Its error is counted here, not as pgvalve's own.
      l.error_class[0] = sqlstate[0];
      l.error_class[1] = sqlstate[1];
      record_execution(l, head, true);
      recorded = true;
    }
    if (head.kind == pr::PendingResponse::Kind::ReadyForQuery) {
      // The end of a request run as one transaction over several shards is the client's Sync.
      if (!head.internal || head.action == kActionImplicitEnd) ++user_requests;
      if (head.internal && head.action == kActionHop) request_goes_on = true;
    }
    l.pending.pop();
  }
  l.rows = 0;
  l.data_rows = 0;
  const auto error = [&] {
    if (recorded) {
      recorded = false;
      write_error(out, sqlstate, message);  // counted with its statement
    } else {
      append_error(out, sqlstate, message);
    }
  };
  for (int i = 0; i < user_requests; ++i) {
    error();
    pr::append_ready_for_query(out, status);
  }
  // Messages after the last Sync: one error, then nothing up to their Sync.
  if (request_goes_on) {
    error();
    error_sent_in_flight_ = true;
    skip_until_sync_ = true;
  }
  l.in_flight = 0;
  l.open_extended = false;
  l.notes.clear();
  l.tags.clear();
  l.pending_setting_notes = 0;
}

const Actions& Session::on_timer(Clock::time_point now) {
  now_ = now;
  Actions& out = event_actions();
  if (state_ == SessionState::Closing || state_ == SessionState::LoggingIn) return out;
  if (memory_wait_) {
    if (options_.message_timeout.count() > 0 &&
        now >= memory_wait_since_ + options_.message_timeout) {
      close_with("53400",
                 "pgvalve: too much memory is held for messages still being received "
                 "(limits.message_memory_bytes), and none was given back for this message "
                 "within limits.message_timeout_ms (" +
                     millis(options_.message_timeout) +
                     "); retry later, send smaller messages, or raise "
                     "limits.message_memory_bytes",
                 out);
      return out;
    }
    if (now >= memory_retry_at_) memory_retry_due_ = true;  // the client is read again
  }
  if (partial_ && !memory_wait_ && options_.message_timeout.count() > 0 &&
      now >= partial_since_ + options_.message_timeout) {
    close_with("08P01",
               "pgvalve: the client started a message and did not send the rest within "
               "limits.message_timeout_ms (" +
                   millis(options_.message_timeout) +
                   "); send whole messages, or raise the limit for clients on slow links",
               out);
    return out;
  }
  if (!work_) return out;
  for (std::size_t i = 0; i < work_->links.size(); ++i) {
    Link& l = work_->links[i];
    if (!l.server) continue;
    const auto id = static_cast<LinkId>(i);
    if (l.syncing && now >= l.sync_started + options_.sync_timeout) {
      if (l.login) {
        close_with("08006",
                   "pgvalve: server " + l.server->name +
                       " did not apply the session settings in time; try again",
                   out);
        return out;
      }
      out.server_given_up = "settings sync past its deadline";
      give_up_link(l, id,
                   "pgvalve: server " + l.server->name +
                       " did not apply the session settings in time; try again",
                   LinkOp::Kind::CancelAndClose, out);
      if (state_ == SessionState::Closing) return out;
      continue;
    }
    if (options_.query_timeout.count() > 0 && l.owes_answer() && !l.paused &&
        now >= l.last_activity + options_.query_timeout) {
      out.server_given_up = "pool.query_timeout_ms";
      give_up_link(l, id,
                   "pgvalve: server " + l.server->name +
                       " sent nothing for pool.query_timeout_ms (" +
                       millis(options_.query_timeout) +
                       "); the query was cancelled and any open transaction rolled back; run it "
                       "again, or raise the timeout if such queries are expected",
                   LinkOp::Kind::CancelAndClose, out);
      if (state_ == SessionState::Closing) return out;
      continue;
    }
    if (l.paused && options_.message_timeout.count() > 0 &&
        now >= l.client_behind_since + options_.message_timeout) {
      // Its server would wait for it as long as it liked, and every other client for a server.
      out.server_given_up = "limits.message_timeout_ms (its client took none of its results)";
      close_with("08P01",
                 "pgvalve: the client took none of the results written to it for "
                 "limits.message_timeout_ms (" +
                     millis(options_.message_timeout) +
                     ") while it held a server; its query was cancelled; read results as they "
                     "come, or raise limits.message_timeout_ms",
                 out);
      return out;
    }
    if (holds_idle_transaction(l) && options_.idle_transaction_timeout.count() > 0 &&
        now >= held_since_ + options_.idle_transaction_timeout) {
      close_with("25P03",
                 "pgvalve: the client was idle in a transaction for longer than "
                 "pool.idle_transaction_timeout_ms (" +
                     millis(options_.idle_transaction_timeout) +
                     "); the transaction was rolled back; end transactions with COMMIT or "
                     "ROLLBACK without waiting in between",
                 out);
      return out;
    }
    if (options_.idle_transaction_timeout.count() > 0 && waits_for_client(l) &&
        now >= client_activity_ + options_.idle_transaction_timeout) {
      close_with("25P03",
                 "pgvalve: the client held a server connection in the middle of a COPY, or of "
                 "an extended-protocol flight it did not end with Sync, and sent nothing for "
                 "longer than pool.idle_transaction_timeout_ms (" +
                     millis(options_.idle_transaction_timeout) +
                     "); its work was rolled back; send the rest of the COPY, or the Sync, "
                     "without pausing",
                 out);
      return out;
    }
  }
  return out;
}

// The client, idle in its transaction, holds `l`: a transaction's server, or a shard's server
// whose answer waits for the next Execute of a suspended portal.
bool Session::holds_idle_transaction(const Link& l) const {
  return (state_ == SessionState::Holding && l.server->tx_status != 'I') ||
         (state_ == SessionState::PortalSuspended && l.scatter_shard >= 0);
}

// The server can go on only once the client sends more: COPY data, or the Sync (or Flush) of
// an extended flight whose answers, if any, have come. The client holds the server meanwhile.
bool Session::waits_for_client(const Link& l) const {
  return !client_held_ &&
         (l.copy_in || (l.open_extended && !l.owes_answer() && state_ != SessionState::Syncing));
}

const Actions& Session::on_notification(std::string_view message, std::size_t unsent) {
  Actions& out = event_actions();
  if (state_ == SessionState::Closing || state_ == SessionState::LoggingIn) return out;
  // Not inside a server message passing through to the client: queued until its end.
  const bool between_requests = (state_ == SessionState::Idle || state_ == SessionState::Holding ||
                                 state_ == SessionState::PortalSuspended) &&
                                !client_mid_message();
  std::string& queue = work().change_rare().notifications;
  if (unsent + queue.size() + message.size() > kMaxQueuedNotificationBytes) {
    close_with("53400",
               "pgvalve: more than 1 MiB of notifications waited for this client; it must read "
               "its connection faster or listen to fewer channels",
               out);
    return out;
  }
  // Only channels the client listens on through the hub now: one it unlistened, or moved to
  // its own server, on a server may still come from the hub until the hub hears of it. A
  // LISTEN the hub is answering counts (its notifications may come before the answer).
  const std::string_view channel = notification_channel(message);
  const auto& channels = extras().listen_channels;
  if (std::find(channels.begin(), channels.end(), channel) == channels.end() &&
      !(state_ == SessionState::WaitingForHub &&
        work().rare().hub_request == HubRequest::Kind::Listen &&
        work().rare().hub_channel == channel)) {
    return out;
  }
  if (between_requests) {
    out.outbox.append(message);
    return out;
  }
  queue.append(message);
  return out;
}

const Actions& Session::on_hub_lost(std::string_view message) {
  Actions& out = event_actions();
  if (state_ == SessionState::Closing || extras().listen_channels.empty()) return out;
  // As a direct connection that drops: the application sees it, reconnects and listens again.
  extras_->listen_channels.clear();  // the hub forgot them
  close_with("08006", message, out);
  return out;
}

const Actions& Session::on_hub_done(std::optional<std::string_view> error,
                                    std::string_view sqlstate) {
  Actions& out = event_actions();
  if (state_ != SessionState::WaitingForHub) return out;
  const HubRequest::Kind kind = work().rare().hub_request;
  std::string& reply = out.outbox;
  append_local_heads(work().rare().hub_reply, reply);
  if (error) {
    append_error(reply, sqlstate.empty() ? std::string_view("08006") : sqlstate, *error);
  } else {
    pr::append_command_complete(reply, kind == HubRequest::Kind::Listen ? "LISTEN" : "UNLISTEN");
    if (kind == HubRequest::Kind::Listen) {
      auto& channels = extras_to_change().listen_channels;
      if (std::find(channels.begin(), channels.end(), work().rare().hub_channel) ==
          channels.end()) {
        channels.push_back(work().rare().hub_channel);
      }
    } else if (kind == HubRequest::Kind::Unlisten) {
      std::erase(extras_to_change().listen_channels, work().rare().hub_channel);
    } else {
      if (extras_) extras_->listen_channels.clear();
    }
  }
  pr::append_ready_for_query(reply, client_tx_status());
  work().change_rare().hub_channel.clear();
  work().change_rare().hub_request = HubRequest::Kind::None;
  enter(SessionState::Idle);
  // Notifications that came while the hub answered; the client is between requests now.
  deliver_queued_notifications(reply);
  out.resume_client = true;
  if (drain_requested_) close_with("57P01", drain_message(), out);
  return out;
}

void Session::deliver_queued_notifications(std::string& out) {
  if (!work_ || work_->rare().notifications.empty()) return;
  out += work_->rare().notifications;
  work_->change_rare().notifications.clear();
}

}  // namespace pgvalve::session
