// A stream moved to another worker's event loop (a client packed onto another worker, a server
// connection handed over): it stays non-blocking, keeps what the kernel held for it, and the new
// loop reports what arrives afterwards.
#include "proxy/stream.h"

#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include "proxy/arrival_wait.h"

namespace pgvalve::proxy {
namespace {

using namespace std::chrono_literals;

TEST(StreamMove, AMovedSocketStaysNonBlockingAndKeepsWhatTheKernelHeld) {
  asio::io_context first, second;
  tcp::acceptor acceptor(first, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  tcp::socket peer(first);
  peer.connect(acceptor.local_endpoint());
  Socket accepted(first);
  acceptor.accept(accepted);
  accepted.non_blocking(true);
  Stream stream(std::move(accepted));
  asio::write(peer, asio::buffer(std::string("held")));

  error_code ec;
  stream.move_to(second, ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(&stream.socket().get_executor().context(), &second);
  EXPECT_TRUE(stream.socket().non_blocking());

  char buf[16];
  std::size_t n = 0;
  for (int i = 0; i < 100 && n == 0; ++i) {
    n = stream.read_some(asio::buffer(buf), ec);
    if (ec == asio::error::would_block) std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(std::string(buf, n), "held");
  // Nothing more: the read says so at once instead of waiting for bytes.
  n = stream.read_some(asio::buffer(buf), ec);
  EXPECT_EQ(ec, asio::error::would_block);

  // The new loop reports an arrival.
  std::optional<error_code> arrived;
  async_wait_for_arrival(stream.socket(), [&](const error_code& e) { arrived = e; });
  asio::write(peer, asio::buffer(std::string("more")));
  asio::steady_timer stop(second, 2s);
  stop.async_wait([&](const error_code&) { second.stop(); });
  while (!arrived && !second.stopped())
    second.run_one();
  ASSERT_TRUE(arrived);
  EXPECT_FALSE(*arrived);
}

}  // namespace
}  // namespace pgvalve::proxy
