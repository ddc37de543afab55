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

// Session authorization first (it resets the role), then the role, then the rest.
int order_of(const Setting& s) {
  if (s.name == "session_authorization") return 0;
  if (s.name == "role") return 1;
  return 2;
}

}  // namespace

SyncPlan plan_sync(const Settings& client, const ServerParameters& defaults,
                   const ServerState& server) {
  SyncPlan plan;
  plan.from_defaults = server.settings_unknown;
  if (plan.from_defaults) plan.sql += kResetEverySetting;
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
      if (s.reported || client.find(s.name)) continue;
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
  for (const auto& name : plan.reset_names)
    server.settings.erase(name);
  for (const auto& s : client.all()) {
    if (!s.reported) server.settings.set(s.name, s.value, false, s.form);
  }
  server.synced_fingerprint = fingerprint;
  server.synced_version = server.settings.version();
}

}  // namespace pgvalve::session
