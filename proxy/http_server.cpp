#include "proxy/http_server.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <exception>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <prometheus/text_serializer.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "proxy/app.h"
#include "proxy/io_util.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/shared_port.h"
#include "proxy/status_page.h"

namespace pgvalve::proxy {

namespace beast = boost::beast;
namespace http = beast::http;
using Clock = std::chrono::steady_clock;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

namespace {

constexpr std::size_t kMaxHeaderBytes = 8 * 1024;
constexpr std::size_t kMaxBodyBytes = 8 * 1024;
// One whole request must arrive within this, counted from when the server starts waiting for
// it: an idle keep-alive connection is closed after it too.
constexpr auto kReadTimeout = std::chrono::seconds(10);
constexpr auto kWriteTimeout = std::chrono::seconds(10);
constexpr std::size_t kMaxConnections = 64;
// Requests a connection may send ahead of their answers in a row: the answer to the last one
// closes it, so that one client cannot queue work (a scrape each) without end.
constexpr std::size_t kMaxPipelined = 100;
// After its last answer, a connection closed by the server is read and dropped for at most
// this long and this much (RFC 9112 §9.6).
constexpr auto kLingerTimeout = std::chrono::seconds(2);
constexpr std::size_t kMaxLingerBytes = 64 * 1024;
// A warning repeated by a flood (http_too_many_connections) is logged at most this often, with
// how many times it happened since the last line.
constexpr auto kLogEvery = std::chrono::seconds(10);
constexpr auto kProbeTimeout = std::chrono::seconds(1);
constexpr auto kProbeFreshFor = std::chrono::seconds(1);

}  // namespace

struct HttpServer::State {
  State(App& a, asio::io_context& c) : app(a), context(c), acceptor(c), refusals_timer(c) {}

  // A TCP connect to a primary, for /ready; shared by the requests that need it meanwhile.
  struct Probe {
    bool running = false;
    bool has_result = false;
    bool ok = false;
    std::string error;
    Clock::time_point finished_at{};
    std::vector<std::shared_ptr<asio::steady_timer>> waiters;  // cancelled when it finishes
  };

  App& app;
  asio::io_context& context;
  tcp::acceptor acceptor;
  bool closed = false;
  // What the connection limit looks at. At the limit the evictable connection with the oldest
  // `since` makes room, so that slow or idle clients cannot keep a health probe or a scrape out.
  struct Connection {
    // Waiting for (the rest of) a request: since it began waiting. Behind (it sent requests
    // ahead of their answers, or its answer is not taken): since the first request of that run.
    Clock::time_point since{};
    // False only while the answer to a request it did not send ahead is being prepared (a
    // probe being answered is not the one to close).
    bool evictable = true;
    bool evicted = false;  // its socket is closed; its coroutine has yet to end
  };
  std::unordered_map<beast::tcp_stream*, Connection> connections;
  std::size_t evicted = 0;
  // Connections closed at the limit and not logged yet, and when the last line was: a flood
  // is one line per kLogEvery, and what its end leaves unsaid is said by the timer.
  std::uint64_t refusals_unlogged = 0;
  std::uint64_t refusals_new_unlogged = 0;  // of them, the new connection (none evictable)
  Clock::time_point refusals_logged_at{};
  asio::steady_timer refusals_timer;
  bool refusals_timer_set = false;
  std::map<std::string, Probe> probes;  // by "host:port"

  // A snapshot being taken for /metrics or /status; the requests for the same that arrive
  // meanwhile wait for it and answer from it, so that concurrent scrapes make the workers
  // gather once, and hold one snapshot, not one each.
  struct Gathering {
    std::shared_ptr<const Snapshot> result;  // null until taken (or when it failed)
    int silent_worker = -1;  // it failed as this worker did not answer (WorkerSilent)
    std::vector<std::shared_ptr<asio::steady_timer>> waiters;  // cancelled when it is done
  };
  std::shared_ptr<Gathering> metrics_gathering;  // the one under way, if any
  std::shared_ptr<Gathering> status_gathering;
};

namespace {

using State = HttpServer::State;

auto log_failure(const char* event) {
  return [event](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      PGV_LOG(Error, event, {"error", ex.what()});
    }
  };
}

beast::string_view bsv(std::string_view s) {
  return {s.data(), s.size()};
}

Response make_response(unsigned version, http::status status, std::string_view content_type,
                       std::string body) {
  Response res{status, version};
  res.set(http::field::server, "pgvalve/" PGVALVE_VERSION);
  res.set(http::field::content_type, bsv(content_type));
  res.set(http::field::cache_control, "no-store");
  res.body() = std::move(body);
  res.prepare_payload();
  return res;
}

Response text(unsigned version, http::status status, std::string body) {
  return make_response(version, status, "text/plain; charset=utf-8", std::move(body));
}

// ---- JSON ----------------------------------------------------------------------------------

// /status: what an on-call needs during a drill, as JSON (nlohmann::json; text a client sent
// that is not valid UTF-8 is shown with U+FFFD).
std::string status_json(const Snapshot& s) {
  using nlohmann::json;
  json out;
  out["version"] = PGVALVE_VERSION;
  out["clients"] = s.client_connections;
  out["draining"] = s.draining;
  // PAUSE / KILL ("*": every database) and DISABLE from the admin console.
  json paused = json::array();
  for (const auto& d : s.paused)
    paused.push_back(d.empty() ? "*" : d);
  out["paused"] = std::move(paused);
  out["disabled"] = s.disabled;
  out["failovers"] = s.failovers;
  json pools = json::array();
  for (const auto& p : s.pools) {
    pools.push_back({{"database", p.key.database},
                     {"user", p.key.user},
                     {"host", p.key.host.to_string()},
                     {"size", p.stats.size},
                     {"checked_in", p.stats.checked_in},
                     {"checked_out", p.stats.checked_out},
                     {"opening", p.stats.opening},
                     {"overflow", p.stats.overflow},
                     {"waiting", p.stats.waiting},
                     {"max_wait_us", p.stats.max_wait_us},
                     {"clients", p.clients},
                     {"total_checkouts", p.stats.total_checkouts},
                     {"total_waits", p.stats.total_waits},
                     {"total_timeouts", p.stats.total_timeouts},
                     {"total_created", p.stats.total_created},
                     {"total_closed", p.stats.total_closed},
                     {"total_statement_evictions", p.stats.total_statement_evictions},
                     {"pinned", p.stats.pinned},
                     {"total_handoffs", p.stats.total_handoffs}});
  }
  out["pools"] = std::move(pools);
  json databases = json::array();
  if (s.config) {
    for (const auto& db : s.config->databases) {
      json shards = json::array();
      for (const auto& shard : db.shards) {
        json replicas = json::array();
        for (const auto& r : shard.replicas)
          replicas.push_back(r.to_string());
        shards.push_back({{"name", shard.name},
                          {"primary", shard.primary.to_string()},
                          {"replicas", std::move(replicas)}});
      }
      databases.push_back({{"name", db.name}, {"shards", std::move(shards)}});
    }
  }
  out["databases"] = std::move(databases);
  json hosts = json::array();
  for (const HostRow& h : s.hosts) {
    json row = {{"database", h.database},
                {"shard", h.shard},
                {"host", h.host.to_string()},
                {"role", std::string(health::role_name(h.role))},
                {"state", h.refused    ? "refused"
                          : !h.checked ? "unknown"
                          : h.up       ? "up"
                                       : "down"},
                {"readable", h.readable},
                {"writable", h.writable},
                {"failures", h.failures}};
    row["lag_ms"] = h.lag_ms >= 0 ? json(h.lag_ms) : json(nullptr);
    row["lag_bytes"] = h.lag_bytes >= 0 ? json(h.lag_bytes) : json(nullptr);
    row["timeline"] = h.timeline ? json(h.timeline) : json(nullptr);
    row["last_error"] = h.last_error.empty() ? json(nullptr) : json(h.last_error);
    hosts.push_back(std::move(row));
  }
  out["hosts"] = std::move(hosts);
  // The statements that cost the most, and the latest slow ones: the console has all of them.
  constexpr std::size_t kShown = stats::kTopShown;
  json queries = json::array();
  for (std::size_t i = 0; i < s.statements.queries.size() && i < kShown; ++i) {
    const auto& q = s.statements.queries[i];
    char fingerprint[17];
    std::snprintf(fingerprint, sizeof fingerprint, "%016llx",
                  static_cast<unsigned long long>(q.fingerprint));
    queries.push_back({{"fingerprint", fingerprint},
                       {"query", q.text},
                       {"calls", q.calls},
                       {"rows", q.rows},
                       {"errors", q.errors},
                       {"total_ms", static_cast<double>(q.total_micros) / 1000.0},
                       {"mean_ms", static_cast<double>(q.total_micros) / 1000.0 /
                                       static_cast<double>(std::max<std::uint64_t>(q.calls, 1))},
                       {"p95_ms", static_cast<double>(q.percentile_micros(0.95)) / 1000.0},
                       {"replica_calls", q.replica_calls}});
  }
  out["queries"] = std::move(queries);
  json slow = json::array();
  for (std::size_t i = 0; i < s.statements.slow.size() && i < kShown; ++i) {
    const auto& q = s.statements.slow[i];
    slow.push_back(
        {{"at_unix_ms",
          std::chrono::duration_cast<std::chrono::milliseconds>(q.at.time_since_epoch()).count()},
         {"database", q.database},
         {"user", q.user},
         {"host", q.host},
         {"duration_ms", static_cast<double>(q.micros) / 1000.0},
         {"query", q.text},
         {"advice", q.advice}});
  }
  out["slow_queries"] = std::move(slow);
  return out.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

// ---- /ready --------------------------------------------------------------------------------

asio::awaitable<void> run_probe(std::shared_ptr<State> st, config::Endpoint target) {
  // The timer's handler outlives this frame when it is cancelled: it owns what it touches.
  struct Attempt {
    explicit Attempt(asio::io_context& c) : resolver(c), socket(c) {}
    tcp::resolver resolver;
    tcp::socket socket;
    bool timed_out = false;
  };
  auto attempt = std::make_shared<Attempt>(st->context);
  asio::steady_timer timer(st->context);
  timer.expires_after(kProbeTimeout);
  timer.async_wait([attempt](const error_code& ec) {
    if (ec) return;
    attempt->timed_out = true;
    error_code ignored;
    attempt->resolver.cancel();
    attempt->socket.close(ignored);
  });

  error_code ec;
  auto endpoints = co_await attempt->resolver.async_resolve(
      target.host, std::to_string(target.port), await_ec(ec));
  if (!ec && !attempt->timed_out) {
    co_await asio::async_connect(attempt->socket, endpoints, await_ec(ec));
  }
  timer.cancel();
  error_code ignored;
  attempt->socket.close(ignored);

  auto& probe = st->probes[target.to_string()];
  probe.running = false;
  probe.has_result = true;
  probe.finished_at = Clock::now();
  if (attempt->timed_out) {
    probe.ok = false;
    probe.error = "no TCP connection within 1s";
  } else if (ec) {
    probe.ok = false;
    probe.error = "TCP connect failed: " + ec.message();
  } else {
    probe.ok = true;
    probe.error.clear();
  }
  for (auto& w : probe.waiters)
    w->cancel();
  probe.waiters.clear();
}

asio::awaitable<Response> ready(std::shared_ptr<State> st, unsigned version) {
  if (st->app.draining()) co_return text(version, http::status::service_unavailable, "draining\n");

  const Snapshot snap = take_pool_snapshot(st->app);
  struct Check {
    std::string where;  // "database/shard primary host:port"
    std::string key;    // host:port
    config::Endpoint host;
    int open = 0;  // server connections open to it (idle or lent) in pgvalve's pools
  };
  // Shards the health checks have decided about; the others (checks not finished yet) are
  // probed below.
  std::vector<Check> checks;
  bool all_ok = true;
  std::string details;
  const auto rows = st->app.hosts();
  for (const auto& db : snap.config->databases) {
    for (const auto& shard : db.shards) {
      const HostRow* primary = nullptr;
      const HostRow* writable = nullptr;
      bool split = false;
      for (const auto& r : rows) {
        if (r.database != db.name || r.shard != shard.name) continue;
        if (r.role == health::Role::Primary) primary = &r;
        if (r.writable) writable = &r;
        split = split || r.split_brain;
      }
      const std::string where = db.name + "/" + shard.name + " primary ";
      if (writable && writable->checked) {
        details += where + writable->host.to_string() + ": ok (health check: up, timeline " +
                   std::to_string(writable->timeline) + ")\n";
        continue;
      }
      if (primary && primary->checked) {
        all_ok = false;
        details += where + primary->host.to_string() + ": not ready: " +
                   (split          ? std::string("two hosts claim the primary role on one timeline")
                    : !primary->up ? "down (" + primary->last_error + ")"
                                   : std::string("no host takes writes now (a switchover "
                                                 "pauses them, or the host is in recovery; see "
                                                 "SHOW HOSTS)")) +
                   "\n";
        continue;
      }
      const config::Endpoint host = primary ? primary->host : shard.primary;
      Check c{where + host.to_string(), host.to_string(), host, 0};
      for (const auto& p : snap.pools) {
        if (p.key.database == db.name && p.key.host == host) {
          c.open += p.stats.checked_in + p.stats.checked_out;
        }
      }
      checks.push_back(std::move(c));
    }
  }

  // Primaries without a live pooled connection: a TCP connect, at most one per second each.
  const auto now = Clock::now();
  for (const auto& c : checks) {
    if (c.open > 0) continue;
    auto& probe = st->probes[c.key];
    if (probe.running) continue;
    if (probe.has_result && now - probe.finished_at < kProbeFreshFor) continue;
    probe.running = true;
    asio::co_spawn(st->context, run_probe(st, c.host), log_failure("http_probe_failed"));
  }
  const auto deadline = now + kProbeTimeout + std::chrono::milliseconds(500);
  for (;;) {
    auto timer = std::make_shared<asio::steady_timer>(st->context);
    bool waiting = false;
    for (const auto& c : checks) {
      if (c.open > 0) continue;
      auto& probe = st->probes[c.key];
      if (probe.running) {
        probe.waiters.push_back(timer);
        waiting = true;
      }
    }
    if (!waiting || Clock::now() >= deadline || st->closed) break;
    timer->expires_at(deadline);
    error_code ec;
    co_await timer->async_wait(await_ec(ec));
  }

  for (const auto& c : checks) {
    details += c.where;
    if (c.open > 0) {
      details += ": ok (" + std::to_string(c.open) + " server connection(s) open)\n";
      continue;
    }
    const auto& probe = st->probes[c.key];
    if (probe.running || !probe.has_result) {
      all_ok = false;
      details += ": not ready: TCP connect still in progress\n";
    } else if (probe.ok) {
      details += ": ok (TCP connect succeeded)\n";
    } else {
      all_ok = false;
      details += ": not ready: " + probe.error + "\n";
    }
  }
  if (snap.config->databases.empty()) details = "no databases configured\n";
  if (all_ok) co_return text(version, http::status::ok, "ready\n" + details);
  co_return text(version, http::status::service_unavailable, "not ready\n" + details);
}

// ---- snapshots -----------------------------------------------------------------------------

// A snapshot of `detail` (Totals for /metrics, Top for /status): the one under way when there is
// one, else a new one.
asio::awaitable<std::shared_ptr<const Snapshot>> shared_snapshot(std::shared_ptr<State> st,
                                                                 stats::Detail detail) {
  auto& slot = detail == stats::Detail::Top ? st->status_gathering : st->metrics_gathering;
  if (const auto under_way = slot) {
    auto timer = std::make_shared<asio::steady_timer>(st->context);
    timer->expires_at(asio::steady_timer::time_point::max());
    under_way->waiters.push_back(timer);
    error_code ec;
    co_await timer->async_wait(await_ec(ec));
    if (under_way->result) co_return under_way->result;
    // A stalled worker would stall this one as long: the same answer.
    if (under_way->silent_worker >= 0) throw WorkerSilent(under_way->silent_worker);
    // It failed otherwise: this request takes its own below.
  }
  auto gathering = std::make_shared<State::Gathering>();
  if (!slot) slot = gathering;
  const auto done = [&] {
    if (slot == gathering) slot.reset();
    for (auto& w : gathering->waiters)
      w->cancel();
    gathering->waiters.clear();
  };
  try {
    gathering->result = std::make_shared<const Snapshot>(co_await take_snapshot(st->app, detail));
  } catch (const WorkerSilent& e) {
    gathering->silent_worker = e.worker();
    done();
    throw;
  } catch (...) {
    done();
    throw;
  }
  done();
  co_return gathering->result;
}

// ---- dispatch ------------------------------------------------------------------------------

// The path of the request target, without its query: origin form ("/metrics?x"), or absolute
// form ("http://host:9930/metrics"), which a server must accept (RFC 9112 §3.2.2). The host in
// it is not checked, as the Host header is not.
std::string_view path_of(std::string_view target) {
  for (std::string_view scheme : {"http://", "https://"}) {
    if (target.size() < scheme.size() ||
        !beast::iequals(bsv(target.substr(0, scheme.size())), bsv(scheme))) {
      continue;
    }
    const std::size_t end = target.find_first_of("/?", scheme.size());
    if (end == std::string_view::npos || target[end] == '?') return "/";  // an empty path is "/"
    target = target.substr(end);
    break;
  }
  return target.substr(0, target.find('?'));
}

asio::awaitable<Response> answer(std::shared_ptr<State> st, const Request& req) {
  const unsigned version = req.version();
  const std::string_view path = path_of({req.target().data(), req.target().size()});

  const bool known = path == "/" || path == "/health" || path == "/ready" || path == "/status" ||
                     path == "/metrics";
  if (!known) co_return text(version, http::status::not_found, "not found\n");
  if (req.method() != http::verb::get && req.method() != http::verb::head) {
    auto res = text(version, http::status::method_not_allowed, "method not allowed\n");
    res.set(http::field::allow, "GET, HEAD");
    co_return res;
  }
  if (path == "/") {
    auto res = make_response(version, http::status::ok, "text/html; charset=utf-8",
                             std::string(status_page_html()));
    // Self-contained: nothing may be loaded from elsewhere, and scripts only run inline.
    res.set("Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'");
    co_return res;
  }
  if (path == "/health") co_return text(version, http::status::ok, "ok\n");
  if (path == "/ready") co_return co_await ready(st, version);
  // A worker that did not answer: its counters are missing from any sum, which Prometheus
  // would take for a reset (rate() spikes). A failed scrape (503) is what it is.
  std::shared_ptr<const Snapshot> snapshot;
  int silent = -1;
  try {
    snapshot = co_await shared_snapshot(
        st, path == "/status" ? stats::Detail::Top : stats::Detail::Totals);
  } catch (const WorkerSilent& e) {
    silent = e.worker();
  }
  if (silent >= 0) {
    co_return text(version, http::status::service_unavailable,
                   "pgvalve: worker " + std::to_string(silent) + " did not answer within " +
                       std::to_string(App::kWorkerAnswerMs) +
                       " ms (its thread is stalled or busy); the figures would be partial, so "
                       "none are given; retry\n");
  }
  if (path == "/status") {
    co_return make_response(version, http::status::ok, "application/json", status_json(*snapshot));
  }
  co_return make_response(
      version, http::status::ok, kMetricsContentType,
      prometheus::TextSerializer().Serialize(MetricsCollectable(*snapshot).Collect()));
}

// HEAD is answered as GET, with the same headers (Content-Length too) and no body (RFC 9110
// §9.3.2): load balancers and uptime checkers probe with it.
asio::awaitable<Response> respond(std::shared_ptr<State> st, const Request& req) {
  Response res = co_await answer(st, req);
  if (req.method() == http::verb::head) {
    const std::size_t length = res.body().size();
    res.body().clear();
    res.content_length(length);
  }
  co_return res;
}

// RFC 9112 §6.3: a request whose Transfer-Encoding is not chunked last has no length a server can
// tell, and must be answered 400 with the connection closed; read as having no body, the bytes
// after it (a request smuggled as its body) would be answered. Only "chunked" alone is taken (no
// other coding is implemented).
bool transfer_encoding_ok(const Request& req) {
  int fields = 0;
  for (const auto& field : req) {
    if (field.name() != http::field::transfer_encoding) continue;
    std::string_view value(field.value().data(), field.value().size());
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
      value.remove_prefix(1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t'))
      value.remove_suffix(1);
    if (++fields > 1 || !beast::iequals(bsv(value), "chunked")) return false;
  }
  return true;
}

bool is_request_error(const error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_target).category() ||
         ec == http::error::buffer_overflow;
}

asio::awaitable<void> serve_connection(std::shared_ptr<State> st, tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  State::Connection& me = st->connections[&stream];  // a node: stays put while others come and go
  struct Untrack {
    State* state;
    beast::tcp_stream* stream;
    ~Untrack() {
      if (state->connections.at(stream).evicted) --state->evicted;
      state->connections.erase(stream);
    }
  } untrack{st.get(), &stream};

  beast::flat_buffer buffer(kMaxHeaderBytes + kMaxBodyBytes);
  bool answered_last = false;  // the loop ended after writing an answer that closes
  Clock::time_point run_start{};
  std::size_t in_a_row = 0;  // requests read since the connection last had nothing sent ahead
  while (!st->closed && !me.evicted) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(kMaxHeaderBytes);
    parser.body_limit(kMaxBodyBytes);
    error_code ec;
    // Bytes already here: the client sent them before its last answer was written.
    const bool ahead = buffer.size() > 0 || stream.socket().available(ec) > 0;
    if (!ahead) in_a_row = 0;
    me.since = in_a_row > 0 ? run_start : Clock::now();
    me.evictable = true;
    stream.expires_after(kReadTimeout);
    co_await http::async_read(stream, buffer, parser, await_ec(ec));
    if (me.evicted) break;
    if (ec) {
      // Closed between requests, timed out, reset: nothing to answer.
      if (ec == http::error::end_of_stream || ec == http::error::partial_message ||
          !is_request_error(ec) || st->closed) {
        break;
      }
      const bool too_big = ec == http::error::header_limit || ec == http::error::body_limit ||
                           ec == http::error::buffer_overflow;
      auto res = text(11, too_big ? http::status::payload_too_large : http::status::bad_request,
                      too_big ? "request too large\n" : "bad request\n");
      res.keep_alive(false);
      stream.expires_after(kWriteTimeout);
      co_await http::async_write(stream, res, await_ec(ec));
      PGV_LOG(Debug, "http_bad_request", {"error", ec.message()});
      answered_last = !ec;
      break;
    }
    if (!transfer_encoding_ok(parser.get())) {
      auto res = text(11, http::status::bad_request,
                      "bad request: a Transfer-Encoding other than chunked\n");
      res.keep_alive(false);
      stream.expires_after(kWriteTimeout);
      co_await http::async_write(stream, res, await_ec(ec));
      PGV_LOG(Debug, "http_bad_request", {"error", "transfer-encoding other than chunked"});
      answered_last = !ec;
      break;
    }
    if (in_a_row++ == 0) run_start = Clock::now();
    me.since = run_start;
    me.evictable = in_a_row > 1;
    const Request& req = parser.get();
    Response res = co_await respond(st, req);
    if (me.evicted) break;
    const bool keep_alive = req.keep_alive() && !st->closed && in_a_row < kMaxPipelined;
    res.keep_alive(keep_alive);
    PGV_LOG(Debug, "http_request",
            {"method", std::string_view(req.method_string().data(), req.method_string().size())},
            {"target", std::string_view(req.target().data(), req.target().size())},
            {"status", res.result_int()});
    // Until the client takes the answer, it is behind.
    me.evictable = true;
    stream.expires_after(kWriteTimeout);
    co_await http::async_write(stream, res, await_ec(ec));
    answered_last = !ec && !keep_alive;
    if (ec || !keep_alive) break;
  }
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  if (answered_last && !me.evicted && !st->closed) {
    // Closed with bytes it sent still unread, the connection would be reset, and the client
    // could lose the answer before they reach it (requests pipelined behind the last one).
    // Meanwhile it is the first to make room.
    me.since = {};
    me.evictable = true;
    stream.expires_after(kLingerTimeout);
    std::array<char, 4096> sink;
    for (std::size_t dropped = 0; dropped < kMaxLingerBytes;) {
      error_code ec;
      dropped += co_await stream.async_read_some(asio::buffer(sink), await_ec(ec));
      if (ec) break;
    }
  }
  stream.close();
}

void log_refusals(const std::shared_ptr<State>& st);

asio::awaitable<void> log_refusals_later(std::shared_ptr<State> st) {
  st->refusals_timer.expires_at(st->refusals_logged_at + kLogEvery);
  error_code ec;
  co_await st->refusals_timer.async_wait(await_ec(ec));
  st->refusals_timer_set = false;
  if (!ec && !st->closed) log_refusals(st);
}

// http_too_many_connections, at most once per kLogEvery, with the count since the last line.
void log_refusals(const std::shared_ptr<State>& st) {
  if (st->refusals_unlogged == 0) return;
  const auto now = Clock::now();
  if (st->refusals_logged_at != Clock::time_point{} && now - st->refusals_logged_at < kLogEvery) {
    if (!st->refusals_timer_set) {
      st->refusals_timer_set = true;
      asio::co_spawn(st->context, log_refusals_later(st), log_failure("http_log_failed"));
    }
    return;
  }
  PGV_LOG(Warn, "http_too_many_connections", {"limit", kMaxConnections},
          {"closed", st->refusals_unlogged}, {"new_closed", st->refusals_new_unlogged},
          {"which",
           "the connection waiting longest for a request or behind longest, or the new "
           "one (new_closed) when every connection is being answered; logged at most "
           "once per 10 s"});
  st->refusals_unlogged = 0;
  st->refusals_new_unlogged = 0;
  st->refusals_logged_at = now;
}

asio::awaitable<void> accept_loop(std::shared_ptr<State> st) {
  auto last_warning = std::chrono::steady_clock::time_point{};
  int failures = 0;  // since the last warning
  for (;;) {
    error_code ec;
    tcp::socket socket(st->context);
    co_await st->acceptor.async_accept(socket, await_ec(ec));
    if (ec) {
      if (ec == asio::error::operation_aborted || st->closed || !st->acceptor.is_open()) co_return;
      // A probe or a scraper keeps a connection queued for as long as descriptors are short:
      // said once per 10 s, with how often it failed, as the client listener's accept_failed.
      ++failures;
      const auto now = std::chrono::steady_clock::now();
      if (now - last_warning >= std::chrono::seconds(10)) {
        last_warning = now;
        PGV_LOG(Warn, "http_accept_failed", {"error", ec.message()}, {"failures", failures},
                {"action", "pausing accept 100 ms at a time; requests wait in the listen queue"});
        failures = 0;
      }
      // Out of descriptors and the like: do not spin.
      asio::steady_timer pause(st->context, std::chrono::milliseconds(100));
      co_await pause.async_wait(await_ec(ec));
      continue;
    }
    if (st->connections.size() - st->evicted >= kMaxConnections) {
      // The connection that has waited longest for a request, or been behind longest, goes;
      // with none (every one is being answered a request it waited for), the new one does.
      auto victim = st->connections.end();
      for (auto it = st->connections.begin(); it != st->connections.end(); ++it) {
        const auto& c = it->second;
        if (!c.evictable || c.evicted) continue;
        if (victim == st->connections.end() || c.since < victim->second.since) victim = it;
      }
      ++st->refusals_unlogged;
      if (victim == st->connections.end()) ++st->refusals_new_unlogged;
      log_refusals(st);
      if (victim == st->connections.end()) {
        socket.close(ec);
        continue;
      }
      victim->second.evicted = true;
      ++st->evicted;
      victim->first->socket().close(ec);  // its read or write ends; its coroutine untracks it
    }
    socket.set_option(tcp::no_delay(true), ec);
    asio::co_spawn(st->context, serve_connection(st, std::move(socket)),
                   log_failure("http_connection_failed"));
  }
}

}  // namespace

HttpServer::HttpServer(App& app, asio::io_context& context)
    : state_(std::make_shared<State>(app, context)) {}

HttpServer::~HttpServer() {
  close();
}

void HttpServer::start(const config::Endpoint& where) {
  auto& st = *state_;
  tcp::endpoint endpoint;
  error_code ec;
  auto address = asio::ip::make_address(where.host, ec);
  if (ec) {
    tcp::resolver resolver(st.context);
    auto results = resolver.resolve(where.host, std::to_string(where.port));
    if (results.empty()) throw std::runtime_error("no address for " + where.host);
    endpoint = results.begin()->endpoint();
  } else {
    endpoint = tcp::endpoint(address, where.port);
  }
  const bool shared = someone_listens_on(endpoint);
  st.acceptor.open(endpoint.protocol());
  st.acceptor.set_option(tcp::acceptor::reuse_address(true));
  // Shared with the pgvalve this one replaces, during a restart; that one stops answering when
  // it starts to drain.
  int one = 1;
  ::setsockopt(st.acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  st.acceptor.bind(endpoint);
  st.acceptor.listen(asio::socket_base::max_listen_connections);
  asio::co_spawn(st.context, accept_loop(state_), log_failure("http_accept_loop_failed"));
  PGV_LOG(Info, "admin_listening", {"address", where.to_string()},
          {"endpoints", "/ /health /ready /status /metrics"});
  if (shared) {
    PGV_LOG(Warn, "admin_listen_shared", {"address", where.to_string()},
            {"action", "another process answers HTTP on this port until it drains"});
  }
}

void HttpServer::close() {
  auto& st = *state_;
  if (st.closed) return;
  st.closed = true;
  error_code ignored;
  st.acceptor.close(ignored);
  st.refusals_timer.cancel();
  // Posts the pending reads' completions; each connection then ends and untracks itself.
  for (auto& entry : st.connections)
    entry.first->close();
}

}  // namespace pgvalve::proxy
