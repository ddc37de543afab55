#include "session/settings_sync.h"

#include "routing/sql_text.h"

namespace pgvalve::session {

namespace {

void append_set(std::string& sql, const Setting& s) {
  if (s.form == SettingForm::Function) {
    // The value is the string literal the client gave set_config(), quotes included.
    sql += "SELECT pg_catalog.set_config(";
    routing::append_literal(sql, s.name);
    sql += ", ";
    sql += s.value;
    sql += ", false);";
    return;
  }
  sql += "SET ";
  routing::append_identifier(sql, s.name);
  sql += " TO ";
  if (s.form == SettingForm::Raw) {
    sql += s.value;
  } else {
    routing::append_literal(sql, s.value);
  }
  sql += ';';
}

bool same(const Setting* have, const Setting& want) {
  return have && have->value == want.value && have->form == want.form;
}

// Parameters PostgreSQL reports (GUC_REPORT) that a client can change, besides the synced ones.
// The server's own (server_version, is_superuser, in_hot_standby, ...) are never reset.
bool client_settable_report(std::string_view name) {
  return name == "session_authorization" || name == "default_transaction_read_only";
}

const std::string* login_value(const ServerState& server, std::string_view name) {
  for (const auto& [n, v] : server.startup_parameters) {
    if (lower(n) == name) return &v;
  }
  return nullptr;
}

// The server holds `s` because a client set it: it must not outlive that client.
bool set_by_a_client(const ServerState& server, const Setting& s) {
  if (!s.reported) return true;
  if (!client_settable_report(s.name)) return false;
  const std::string* at_login = login_value(server, s.name);
  return !at_login || *at_login != s.value;
}

// Session authorization first (it resets the role), then the role, then the rest.
int order_of(const Setting& s) {
  if (s.name == "session_authorization") return 0;
  if (s.name == "role") return 1;
  return 2;
}

}  // namespace

SyncPlan plan_sync(const Settings& client, const ServerParameters& defaults,
                   const ServerState& server, bool reset_unknown) {
  SyncPlan plan;
  plan.from_defaults = reset_unknown && server.settings_unknown;
  if (plan.from_defaults) plan.sql += kResetEverySetting;
  // Another client's session authorization goes before the client's role is set: resetting it
  // would undo the role.
  const Setting* authorization = server.settings.find("session_authorization");
  if (!plan.from_defaults && authorization && !client.find("session_authorization") &&
      set_by_a_client(server, *authorization)) {
    plan.sql += "RESET SESSION AUTHORIZATION;";
    plan.reset_names.push_back(authorization->name);
  }
  for (const auto& [name, value] : defaults) {
    if (!is_synced_setting(name) || client.find(name)) continue;
    const Setting* have = server.settings.find(name);
    if (plan.from_defaults || !have || have->value != value) {
      append_set(plan.sql, Setting{lower(name), value, true, SettingForm::Literal});
    }
  }
  for (int pass = 0; pass < 3; ++pass) {
    for (const auto& s : client.all()) {
      if (order_of(s) != pass) continue;
      if (!plan.from_defaults && same(server.settings.find(s.name), s)) continue;
      append_set(plan.sql, s);
    }
  }
  if (!plan.from_defaults) {
    for (const auto& s : server.settings.all()) {
      if (s.name == "session_authorization" || client.find(s.name) || !set_by_a_client(server, s)) {
        continue;
      }
      plan.sql += "RESET ";
      routing::append_identifier(plan.sql, s.name);
      plan.sql += ';';
      plan.reset_names.push_back(s.name);
    }
  }
  return plan;
}

void apply_sync(const SyncPlan& plan, const Settings& client, ServerState& server,
                std::uint64_t fingerprint) {
  if (plan.from_defaults) {
    server.settings.keep_reported_only();
    server.settings_unknown = false;
  }
  for (const auto& name : plan.reset_names) {
    // A reported parameter is back at its value from the server's login.
    const std::string* at_login = login_value(server, name);
    if (at_login && client_settable_report(name)) {
      server.settings.set(name, *at_login, true);
    } else {
      server.settings.erase(name);
    }
  }
  for (const auto& s : client.all()) {
    if (!s.reported) server.settings.set(s.name, s.value, false, s.form);
  }
  server.synced_fingerprint = fingerprint;
  server.synced_version = server.settings.version();
}

}  // namespace pgvalve::session
