// The admin console: a client that logs in to the virtual database "pgvalve" (as an admin
// user) speaks the simple query protocol with pgvalve itself. Each command returns a result
// set or a command tag, as PgBouncer's console does.
#pragma once

#include <cstdint>
#include <string>

#include <utility>  // Boost 1.74 awaitable.hpp needs std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "proxy/io_util.h"
#include "proxy/stream.h"
#include "session/input_buffer.h"

namespace pgvalve::proxy {

class App;

// Sends the login reply, then serves commands until the client leaves.
boost::asio::awaitable<void> serve_admin_console(App& app, Stream& client, session::InputBuffer& in,
                                                 const std::string& user, std::uint64_t client_id);

}  // namespace pgvalve::proxy
