// Client connections get their options from the listening socket: set there once, Linux copies
// them to every accepted socket, so a client costs no setsockopt (App::accept_loop checks the
// first one and falls back to setting them per client).
#include "proxy/socket_options.h"

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>

#include "proxy/io_util.h"

namespace pgvalve::proxy {
namespace {

// One connection accepted by `acceptor`; returns the accepted socket.
Socket accept_one(asio::io_context& io, tcp::acceptor& acceptor, tcp::socket& peer) {
  Socket accepted(io);
  peer.connect(acceptor.local_endpoint());
  acceptor.accept(accepted);
  return accepted;
}

tcp::acceptor listener(asio::io_context& io, bool with_options) {
  tcp::acceptor acceptor(io);
  acceptor.open(tcp::v4());
  if (with_options) set_client_options(acceptor.native_handle());
  acceptor.bind(tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  acceptor.listen();
  return acceptor;
}

TEST(SocketOptions, AnAcceptedSocketHasThemFromItsListener) {
  asio::io_context io;
  tcp::acceptor acceptor = listener(io, true);
  tcp::socket peer(io);
  Socket accepted = accept_one(io, acceptor, peer);
  EXPECT_TRUE(has_client_options(accepted.native_handle()));
}

TEST(SocketOptions, WithoutThemOnTheListenerTheyAreMissedAndSetPerSocket) {
  asio::io_context io;
  tcp::acceptor acceptor = listener(io, false);
  tcp::socket peer(io);
  Socket accepted = accept_one(io, acceptor, peer);
  EXPECT_FALSE(has_client_options(accepted.native_handle()));
  set_client_options(accepted.native_handle());
  EXPECT_TRUE(has_client_options(accepted.native_handle()));
}

TEST(SocketOptions, KeepaliveAloneIsNotAllOfThem) {
  asio::io_context io;
  tcp::acceptor acceptor = listener(io, false);
  tcp::socket peer(io);
  Socket accepted = accept_one(io, acceptor, peer);
  set_keepalive(accepted.native_handle());
  EXPECT_FALSE(has_client_options(accepted.native_handle()));  // no TCP_NODELAY yet
}

}  // namespace
}  // namespace pgvalve::proxy
