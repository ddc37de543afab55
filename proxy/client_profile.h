// What a client logged in as: its user and database, the configuration of its login and what
// follows from them (the database's sharding, the session core's options). Clients that logged in
// as the same user to the same database under the same configuration share one profile
// (App::shared_profile), so each of the thousands of idle clients a fleet keeps connected holds a
// pointer to it instead of a copy.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "config/config.h"
#include "proxy/users.h"
#include "session/session.h"
#include "session/sharding_policy.h"

namespace pgvalve::proxy {

struct ClientProfile {
  std::string user_name;
  std::string database_name;  // as the client named it ("pgvalve": the admin console)
  config::ConfigPtr config;   // as of the login
  std::shared_ptr<const UserDirectory> users;  // what `user` points into
  const config::User* user = nullptr;          // once authenticated
  // The rest once the session starts (not for the admin console).
  const config::Database* database = nullptr;
  std::shared_ptr<const session::DatabaseSharding> sharding;  // null: one shard
  std::shared_ptr<const session::SessionOptions> options;
  // routing.write_functions as of the login (routing::RoutingPolicy::write_functions_id).
  std::uint32_t write_functions_id = 0;
};

}  // namespace pgvalve::proxy
