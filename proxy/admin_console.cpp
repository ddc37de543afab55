#include "proxy/admin_console.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <vector>

#include "protocol/messages.h"
#include "proxy/app.h"
#include "proxy/io_util.h"
#include "proxy/log.h"

namespace pgvalve::proxy {

namespace pr = protocol;

namespace {

using Row = std::vector<std::string>;

void append_result(std::string& out, const std::vector<std::string_view>& columns,
                   const std::vector<Row>& rows, std::string_view tag_prefix = "SHOW") {
  pr::append_row_description(out, columns);
  std::vector<std::optional<std::string_view>> values;
  for (const auto& row : rows) {
    values.assign(row.begin(), row.end());
    pr::append_data_row(out, values);
  }
  std::string tag(tag_prefix);
  if (tag_prefix == "SHOW") tag = "SHOW";
  pr::append_command_complete(out, tag);
}

// Upper-cased words of the command, without a trailing ';'.
std::vector<std::string> words_of(std::string_view sql) {
  std::vector<std::string> words;
  std::string word;
  for (char c : sql) {
    if (std::isspace(static_cast<unsigned char>(c)) || c == ';') {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    } else {
      word += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

void show_pools(App& app, std::string& out) {
  std::vector<Row> rows;
  const auto mode = config::to_string(app.config()->pool.mode);
  for (const auto& pool : app.pools()) {
    const auto s = pool->stats();
    const auto& key = pool->key();
    std::string shard = "s0";
    if (const auto* db = app.config()->find_database(key.database); db && !db->shards.empty()) {
      shard = db->shards.front().name;
    }
    const int clients = pool->clients();
    rows.push_back({key.database,
                    key.user,
                    shard,
                    key.host.to_string(),
                    "primary",
                    std::to_string(std::max(0, clients - s.waiting)),
                    std::to_string(s.waiting),
                    std::to_string(s.checked_out),
                    std::to_string(s.checked_in),
                    "0",
                    "0",
                    std::to_string(s.opening),
                    std::to_string(s.max_wait_us),
                    mode,
                    std::to_string(s.size),
                    std::to_string(s.checked_in),
                    std::to_string(s.checked_out),
                    std::to_string(s.overflow),
                    "0",
                    std::to_string(s.pinned)});
  }
  append_result(out, {"database",   "user",        "shard",      "host",      "role",
                      "cl_active",  "cl_waiting",  "sv_active",  "sv_idle",   "sv_used",
                      "sv_tested",  "sv_login",    "maxwait_us", "pool_mode", "size",
                      "checked_in", "checked_out", "overflow",   "invalid",   "pinned"},
                rows);
}

void show_config(App& app, std::string& out) {
  std::vector<Row> rows;
  for (auto& [k, v] : config::describe(*app.config()))
    rows.push_back({k, v});
  append_result(out, {"key", "value"}, rows);
}

void error(std::string& out, std::string_view sqlstate, std::string_view message) {
  pr::ErrorFields e;
  e.severity = "ERROR";
  e.sqlstate = sqlstate;
  e.message = message;
  pr::append_error_response(out, e);
}

}  // namespace

boost::asio::awaitable<void> serve_admin_console(App& app, Stream& client, session::InputBuffer& in,
                                                 const std::string& user, std::uint64_t client_id) {
  std::string out;
  pr::append_authentication_ok(out);
  pr::append_parameter_status(out, "server_version", "15.0 (pgvalve " PGVALVE_VERSION ")");
  pr::append_parameter_status(out, "server_encoding", "UTF8");
  pr::append_parameter_status(out, "client_encoding", "UTF8");
  pr::append_parameter_status(out, "DateStyle", "ISO, MDY");
  pr::append_parameter_status(out, "standard_conforming_strings", "on");
  pr::append_parameter_status(out, "integer_datetimes", "on");
  pr::append_backend_key_data(out, {0, 0});
  pr::append_ready_for_query(out, 'I');
  if (!co_await write_all(client, out)) co_return;
  PGV_LOG(Info, "admin_login", {"client", client_id}, {"user", user});

  for (;;) {
    pr::Frame f;
    if (co_await read_frame(client, in, 1 << 20, f) != ReadStatus::Ok) co_return;
    out.clear();
    if (f.tag == 'X') co_return;
    if (f.tag != 'Q') {
      error(out, "0A000", "pgvalve: the admin console accepts simple queries only");
      if (f.tag == 'S') pr::append_ready_for_query(out, 'I');
    } else {
      auto sql = pr::read_query(f).value_or("");
      auto words = words_of(sql);
      PGV_LOG(Info, "admin_command", {"client", client_id}, {"command", sql});
      if (words.empty()) {
        pr::append_empty_query_response(out);
      } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "POOLS") {
        show_pools(app, out);
      } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "CONFIG") {
        show_config(app, out);
      } else if (words.size() == 2 && words[0] == "SHOW" && words[1] == "VERSION") {
        append_result(out, {"version"}, {{"pgvalve " PGVALVE_VERSION}});
      } else if (words.size() == 1 && words[0] == "RELOAD") {
        if (app.reload()) {
          pr::append_command_complete(out, "RELOAD");
        } else {
          error(out, "F0000",
                "pgvalve: the new config file was refused (see the log); the running "
                "configuration is unchanged");
        }
      } else {
        error(out, "42601",
              "pgvalve: unknown admin command; available: SHOW POOLS, SHOW CONFIG, SHOW "
              "VERSION, RELOAD");
      }
      pr::append_ready_for_query(out, 'I');
    }
    in.consume(f.whole.size());
    if (!co_await write_all(client, out)) co_return;
  }
}

}  // namespace pgvalve::proxy
