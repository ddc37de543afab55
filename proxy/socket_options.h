// The TCP options of the connections pgvalve accepts: no Nagle delay, keepalive with pgvalve's
// timings, and the rest hint (TCP_INQ, see arrival_wait.h). They are set once on each listening
// socket, from which Linux copies them to every socket it accepts: no system call per client.
// A worker checks its first accepted socket and, should a kernel not copy them, sets them on
// each client as it comes.
#pragma once

namespace pgvalve::proxy {

// Keepalive: a peer that vanished without closing (a device that lost power, a server behind a
// dead link) is found within about two minutes (60 s idle, then 6 probes 10 s apart).
void set_keepalive(int fd);

// Sets the options every client connection has (on a listening socket: on every one it accepts).
void set_client_options(int fd);

// Whether `fd` has them all.
bool has_client_options(int fd);

}  // namespace pgvalve::proxy
