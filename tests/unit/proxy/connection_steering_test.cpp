#include "proxy/connection_steering.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <vector>

namespace pgvalve::proxy {
namespace {

// A descriptor closed at scope exit.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
  Fd(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Listeners of one SO_REUSEPORT group on a loopback port, listening in order, as the workers' are.
std::vector<Fd> reuseport_group(int count, in_port_t& port) {
  std::vector<Fd> listeners;
  port = 0;
  for (int i = 0; i < count; ++i) {
    Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
    const int one = 1;
    ::setsockopt(s.fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = port;
    if (::bind(s.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};
    socklen_t len = sizeof addr;
    ::getsockname(s.fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = addr.sin_port;
    if (::listen(s.fd, 256) != 0) return {};
    listeners.push_back(std::move(s));
  }
  return listeners;
}

// Opens `n` connections to the port (the kernel completes them into a listener's queue) and
// counts, per listener, how many each one's queue received.
std::vector<int> connect_and_count(std::vector<Fd>& listeners, in_port_t port, int n) {
  std::vector<Fd> clients;
  for (int i = 0; i < n; ++i) {
    Fd c(::socket(AF_INET, SOCK_STREAM, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = port;
    if (::connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};
    clients.push_back(std::move(c));
  }
  std::vector<int> counts(listeners.size(), 0);
  for (std::size_t i = 0; i < listeners.size(); ++i) {
    for (int fd; (fd = ::accept(listeners[i].fd, nullptr, nullptr)) >= 0;) {
      ::close(fd);
      ++counts[i];
    }
  }
  return counts;
}

TEST(ConnectionSteering, OneActiveListenerTakesEveryNewConnection) {
  in_port_t port = 0;
  auto listeners = reuseport_group(3, port);
  ASSERT_EQ(listeners.size(), 3u);
  ASSERT_TRUE(steer_new_connections(listeners[2].fd, 1));  // any listener of the group will do
  EXPECT_EQ(connect_and_count(listeners, port, 40), (std::vector<int>{40, 0, 0}));
}

TEST(ConnectionSteering, ConnectionsSpreadOverTheActiveListenersOnly) {
  in_port_t port = 0;
  auto listeners = reuseport_group(3, port);
  ASSERT_EQ(listeners.size(), 3u);
  ASSERT_TRUE(steer_new_connections(listeners[0].fd, 2));
  const std::vector<int> counts = connect_and_count(listeners, port, 120);
  ASSERT_EQ(counts.size(), 3u);
  // At random over two: all 120 on one side has a chance of 2^-119.
  EXPECT_GT(counts[0], 0);
  EXPECT_GT(counts[1], 0);
  EXPECT_EQ(counts[0] + counts[1], 120);
  EXPECT_EQ(counts[2], 0);
}

TEST(ConnectionSteering, UnparkingAWorkerReachesItsListenerAgain) {
  in_port_t port = 0;
  auto listeners = reuseport_group(2, port);
  ASSERT_EQ(listeners.size(), 2u);
  ASSERT_TRUE(steer_new_connections(listeners[0].fd, 1));
  EXPECT_EQ(connect_and_count(listeners, port, 20), (std::vector<int>{20, 0}));
  ASSERT_TRUE(steer_new_connections(listeners[0].fd, 2));
  const std::vector<int> counts = connect_and_count(listeners, port, 120);
  ASSERT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[1], 0);
}

}  // namespace
}  // namespace pgvalve::proxy
