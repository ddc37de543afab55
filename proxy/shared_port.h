// Two pgvalve processes may listen on the same ports at once (SO_REUSEPORT on the client and
// the HTTP listeners): a new process takes connections while the old one drains, so a restart or
// an upgrade refuses none. These tell a process whether another one listens on its ports too.
#pragma once

#include <cstdint>

#include <boost/asio/ip/tcp.hpp>

namespace pgvalve::proxy {

// Whether a socket of another process (or of this one) listens on `endpoint` now: a bind
// without SO_REUSEPORT fails. Call before binding.
bool someone_listens_on(const boost::asio::ip::tcp::endpoint& endpoint);

// How many sockets listen on `port` in this network namespace, on any address (from
// /proc/net/tcp and /proc/net/tcp6); -1 when they cannot be read.
int listeners_on_port(std::uint16_t port);

}  // namespace pgvalve::proxy
