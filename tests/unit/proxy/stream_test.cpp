// A stream moved to another worker's event loop (a client packed onto another worker, a server
// connection handed over): it stays non-blocking, keeps what the kernel held for it, and the new
// loop reports what arrives afterwards. The coroutines' reads and writes on a non-blocking
// plaintext stream (a login's): bytes already there, bytes that come later, a write larger than
// the socket takes at once. A Deadline cancels until it is disarmed.
#include "proxy/stream.h"

#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
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

struct Connected {
  asio::io_context io;
  tcp::socket peer{io};
  std::optional<Stream> stream;
  Connected() {
    tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
    peer.connect(acceptor.local_endpoint());
    Socket accepted(io);
    acceptor.accept(accepted);
    accepted.non_blocking(true);
    stream.emplace(std::move(accepted));
  }
};

TEST(StreamCoroutines, AReadReturnsBytesAlreadyThereAndWaitsForLaterOnes) {
  Connected c;
  asio::write(c.peer, asio::buffer(std::string("now")));
  std::this_thread::sleep_for(5ms);
  std::string got;
  bool done = false;
  asio::co_spawn(
      c.io,
      [&]() -> asio::awaitable<void> {
        char buf[16];
        error_code ec;
        std::size_t n = co_await c.stream->async_read_some(asio::buffer(buf), await_ec(ec));
        got.append(buf, n);
        // Nothing in the kernel now: the peer writes only once this read waits.
        asio::post(c.io, [&] { asio::write(c.peer, asio::buffer(std::string("later"))); });
        n = co_await c.stream->async_read_some(asio::buffer(buf), await_ec(ec));
        got.append("|").append(buf, n);
        c.peer.close();
        n = co_await c.stream->async_read_some(asio::buffer(buf), await_ec(ec));
        EXPECT_EQ(ec, asio::error::eof);
        EXPECT_EQ(n, 0u);
        done = true;
      },
      asio::detached);
  c.io.run_for(2s);
  EXPECT_TRUE(done);
  EXPECT_EQ(got, "now|later");
}

TEST(StreamCoroutines, AWriteLargerThanTheSocketTakesGoesOutWhole) {
  Connected c;
  std::string big(32 << 20, 'x');  // more than the socket buffers hold before the peer reads
  for (std::size_t i = 0; i < big.size(); i += 4096)
    big[i] = static_cast<char>('a' + (i / 4096) % 26);
  bool written = false;
  asio::co_spawn(
      c.io, [&]() -> asio::awaitable<void> { written = co_await c.stream->write_all(big); },
      asio::detached);
  std::string received(big.size(), '\0');
  std::thread reader([&] {
    std::this_thread::sleep_for(50ms);  // the write finds the buffers full and waits for room
    asio::read(c.peer, asio::buffer(received));
  });
  c.io.run_for(5s);
  reader.join();
  EXPECT_TRUE(written);
  EXPECT_TRUE(received == big);
}

struct CountsCancels {
  asio::io_context& io;
  int cancels = 0;
  asio::io_context::executor_type get_executor() { return io.get_executor(); }
  void cancel(error_code&) { ++cancels; }
};

TEST(Deadline, CancelsAtItsTimeAndAgainUntilDisarmed) {
  asio::io_context io;
  CountsCancels socket{io};
  std::optional<Deadline> deadline(std::in_place, socket, 10ms);
  io.run_for(5ms);
  EXPECT_EQ(socket.cancels, 0);
  EXPECT_FALSE(deadline->expired());
  io.run_for(100ms);
  EXPECT_TRUE(deadline->expired());
  // A read that completed just before a cancel is not cancelled; the next wait is.
  EXPECT_GE(socket.cancels, 2);
  deadline->disarm();
  const int cancels = socket.cancels;
  io.run_for(60ms);
  EXPECT_EQ(socket.cancels, cancels);
}

TEST(Deadline, ADisarmedDeadlineNeverCancels) {
  asio::io_context io;
  CountsCancels socket{io};
  { Deadline deadline(socket, 5ms); }
  io.run_for(30ms);
  EXPECT_EQ(socket.cancels, 0);
}

}  // namespace
}  // namespace pgvalve::proxy
