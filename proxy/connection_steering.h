// Which worker's listener takes a new connection. Each worker listens on the same port
// (SO_REUSEPORT), and by default the kernel spreads connections over all of the listeners. While
// some workers are parked (worker_balance.h), a connection that lands on a parked worker's listener
// wakes that worker only to be handed to an active one: a wake-up, a cross-thread hand-over and
// two epoll changes per login. A small classic BPF program attached to the listeners' group sends
// new connections to the first `active` listeners instead, picked at random.
#pragma once

namespace pgvalve::proxy {

// `listener`: a listening socket of the SO_REUSEPORT group; the program applies to the whole
// group, whose listeners are numbered in the order they started listening. False when the kernel
// refuses the program: the kernel's own spreading stays, and parked workers hand clients over.
bool steer_new_connections(int listener, int active);

}  // namespace pgvalve::proxy
