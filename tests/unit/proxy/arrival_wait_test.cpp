// The arrival wait the sessions arm on their sockets: bytes, a hang-up or a cancel after it
// starts complete it; bytes the kernel already held when it started do not (the reader drained
// them), which is what spares the epoll_ctl of a plain wait.
#include "proxy/arrival_wait.h"

#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

namespace pgvalve::proxy {
namespace {

using namespace std::chrono_literals;

struct SocketPair {
  explicit SocketPair(asio::io_context& io) : ours(io), peer(io) {
    tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
    peer.connect(acceptor.local_endpoint());
    acceptor.accept(ours);
    ours.non_blocking(true);
    hinted = enable_rest_hint(ours);
  }
  void send(const std::string& bytes) { asio::write(peer, asio::buffer(bytes)); }
  std::string drain() {
    std::string got;
    char buf[256];
    error_code ec;
    for (;;) {
      const std::size_t n = ours.read_some(asio::buffer(buf), ec);
      if (ec) break;
      got.append(buf, n);
    }
    return got;
  }
  Socket ours;
  tcp::socket peer;
  bool hinted = false;
};

// Lets the event loop run (and epoll report what it has) for `d`.
void run_for(asio::io_context& io, std::chrono::milliseconds d) {
  asio::steady_timer timer(io, d);
  timer.async_wait([&io](const error_code&) { io.stop(); });
  io.restart();
  io.run();
}

TEST(ArrivalWait, BytesThatArriveAfterItStartsCompleteIt) {
  asio::io_context io;
  SocketPair s(io);
  std::optional<error_code> done;
  async_wait_for_arrival(s.ours, [&](const error_code& ec) { done = ec; });
  run_for(io, 20ms);
  EXPECT_FALSE(done);
  s.send("Q");
  run_for(io, 50ms);
  ASSERT_TRUE(done);
  EXPECT_FALSE(*done);
  EXPECT_EQ(s.drain(), "Q");
}

// Sessions pass their worker's reactor, looked up once when the worker starts.
TEST(ArrivalWait, AReactorLookedUpOnceServesEveryWait) {
  asio::io_context io;
  const ArrivalReactor kept(io);
  SocketPair s(io);
  for (const std::string bytes : {"a", "b", "c"}) {
    std::optional<error_code> done;
    async_wait_for_arrival(s.ours, kept, [&](const error_code& ec) { done = ec; });
    run_for(io, 20ms);
    EXPECT_FALSE(done);
    s.send(bytes);
    run_for(io, 50ms);
    ASSERT_TRUE(done);
    EXPECT_FALSE(*done);
    EXPECT_EQ(s.drain(), bytes);
  }
}

TEST(ArrivalWait, BytesTheReaderLeftInTheKernelDoNotCompleteItLaterOnesDo) {
  if (!kArrivalWaitAvailable) GTEST_SKIP() << "this Boost waits as socket.async_wait does";
  asio::io_context io;
  SocketPair s(io);
  s.send("early");
  run_for(io, 30ms);  // epoll reports the bytes while nothing waits for them
  std::optional<error_code> done;
  async_wait_for_arrival(s.ours, [&](const error_code& ec) { done = ec; });
  run_for(io, 50ms);
  EXPECT_FALSE(done) << "bytes held before the wait started are the reader's to drain";
  s.send("late");
  run_for(io, 50ms);
  ASSERT_TRUE(done);
  EXPECT_EQ(s.drain(), "earlylate");
}

TEST(ArrivalWait, APeerThatHangsUpCompletesIt) {
  asio::io_context io;
  SocketPair s(io);
  std::optional<error_code> done;
  async_wait_for_arrival(s.ours, [&](const error_code& ec) { done = ec; });
  s.peer.close();
  run_for(io, 50ms);
  ASSERT_TRUE(done);
  char byte;
  error_code ec;
  s.ours.read_some(asio::buffer(&byte, 1), ec);
  EXPECT_EQ(ec, asio::error::eof);
}

// Why a read must say whether the peer's end is still in the kernel: epoll reported the hang-up
// together with the last bytes, and a wait armed after reading them hears nothing more.
TEST(ArrivalWait, AHangUpThatCameWithTheBytesReadIsNotAnnouncedAgain) {
  if (!kArrivalWaitAvailable) GTEST_SKIP() << "this Boost waits as socket.async_wait does";
  asio::io_context io;
  SocketPair s(io);
  ASSERT_TRUE(s.hinted) << "the kernel does not support TCP_INQ";
  s.send("bye");
  s.peer.close();
  run_for(io, 30ms);
  char buf[64];
  error_code ec;
  bool rest = false;
  EXPECT_EQ(read_some_noting_rest(s.ours, asio::buffer(buf), ec, rest), 3u);
  EXPECT_TRUE(rest) << "the end is still to be read";
  std::optional<error_code> done;
  async_wait_for_arrival(s.ours, [&](const error_code& e) { done = e; });
  run_for(io, 50ms);
  EXPECT_FALSE(done);
  read_some_noting_rest(s.ours, asio::buffer(buf), ec, rest);
  EXPECT_EQ(ec, asio::error::eof) << "only another read finds the end";
  s.ours.cancel();
  run_for(io, 10ms);
}

TEST(ArrivalWait, AReadSaysWhetherTheKernelHoldsMoreBytes) {
  asio::io_context io;
  SocketPair s(io);
  ASSERT_TRUE(s.hinted) << "the kernel does not support TCP_INQ";
  s.send(std::string(100, 'x'));
  run_for(io, 20ms);
  char buf[64];
  error_code ec;
  bool rest = false;
  EXPECT_EQ(read_some_noting_rest(s.ours, asio::buffer(buf), ec, rest), 64u);
  EXPECT_TRUE(rest);
  EXPECT_EQ(read_some_noting_rest(s.ours, asio::buffer(buf), ec, rest), 36u);
  EXPECT_FALSE(rest) << "drained, and the peer is still there";
  read_some_noting_rest(s.ours, asio::buffer(buf), ec, rest);
  EXPECT_EQ(ec, asio::error::would_block);
}

// Why the session reads a server again after bytes that leave an answer due: a reset that came
// with them is not counted as a rest, and only the next read shows it.
TEST(ArrivalWait, AResetThatCameWithTheBytesIsNotCountedAsARest) {
  asio::io_context io;
  SocketPair s(io);
  ASSERT_TRUE(s.hinted) << "the kernel does not support TCP_INQ";
  s.send("bye");
  s.peer.set_option(asio::socket_base::linger(true, 0));
  s.peer.close();  // a reset, not an end
  run_for(io, 30ms);
  char buf[64];
  error_code ec;
  bool rest = true;
  EXPECT_EQ(read_some_noting_rest(s.ours, asio::buffer(buf), ec, rest), 3u);
  EXPECT_FALSE(rest);
  read_some_noting_rest(s.ours, asio::buffer(buf), ec, rest);
  EXPECT_EQ(ec, asio::error::connection_reset);
}

TEST(ArrivalWait, ACancelCompletesItAsAborted) {
  asio::io_context io;
  SocketPair s(io);
  std::optional<error_code> done;
  async_wait_for_arrival(s.ours, [&](const error_code& ec) { done = ec; });
  s.ours.cancel();
  run_for(io, 10ms);
  ASSERT_TRUE(done);
  EXPECT_EQ(*done, asio::error::operation_aborted);
}

TEST(ArrivalWait, ItCanBeArmedAgainFromItsOwnCompletion) {
  asio::io_context io;
  SocketPair s(io);
  int arrivals = 0;
  std::function<void(const error_code&)> on_arrival = [&](const error_code& ec) {
    if (ec) return;
    ++arrivals;
    async_wait_for_arrival(s.ours, on_arrival);  // before the read that drains (the rule)
    s.drain();
  };
  async_wait_for_arrival(s.ours, on_arrival);
  for (int i = 0; i < 3; ++i) {
    s.send("x");
    run_for(io, 30ms);
  }
  EXPECT_EQ(arrivals, 3);
  s.ours.cancel();
  run_for(io, 10ms);
}

}  // namespace
}  // namespace pgvalve::proxy
