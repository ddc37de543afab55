// The TCP options of the connections pgvalve accepts: no Nagle delay, keepalive with pgvalve's
// timings, and the rest hint (TCP_INQ, see arrival_wait.h). They are set once on each listening
// socket, from which Linux copies them to every socket it accepts: no system call per client.
// A worker checks its first accepted socket and, should a kernel not copy them, sets them on
// each client as it comes.
#pragma once

#include <cstdint>

namespace pgvalve::proxy {

// Keepalive: a peer that vanished without closing (a device that lost power, a server behind a
// dead link) is found within about two minutes (60 s idle, then 6 probes 10 s apart).
void set_keepalive(int fd);

// Sets the options every client connection has (on a listening socket: on every one it accepts).
void set_client_options(int fd);

// Whether `fd` has them all.
bool has_client_options(int fd);

// How many bytes written to the TCP socket `fd` its peer has acknowledged (TCP_INFO's
// tcpi_bytes_acked, Linux 4.1): once the peer's receive buffer is full it grows only as the
// peer's application reads. 0 when the kernel does not say.
std::uint64_t bytes_acked_by_peer(int fd);

}  // namespace pgvalve::proxy
