// A server connection's state as the pool hands out a fresh one (PostgreSQL's defaults for the
// reported parameters), shared by the session unit tests and the session fuzz target.
#pragma once

#include <memory>

#include "session/server_state.h"

namespace pgvalve::session::testing {

inline std::unique_ptr<ServerState> fresh_server_state() {
  auto s = std::make_unique<ServerState>();
  s->name = "db:5432";
  s->settings.set("DateStyle", "ISO, MDY", true);
  s->settings.set("TimeZone", "UTC", true);
  s->settings.set("client_encoding", "UTF8", true);
  s->settings.set("application_name", "", true);
  s->startup_parameters = {{"DateStyle", "ISO, MDY"},
                           {"TimeZone", "UTC"},
                           {"client_encoding", "UTF8"},
                           {"application_name", ""}};
  return s;
}

}  // namespace pgvalve::session::testing
