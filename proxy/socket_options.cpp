#include "proxy/socket_options.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstddef>

namespace pgvalve::proxy {

namespace {

constexpr int kKeepaliveIdleSeconds = 60;
constexpr int kKeepaliveIntervalSeconds = 10;
constexpr int kKeepaliveProbes = 6;

void set_int(int fd, int level, int name, int value) {
  ::setsockopt(fd, level, name, &value, sizeof value);
}

bool has_int(int fd, int level, int name, int value) {
  int got = 0;
  socklen_t size = sizeof got;
  return ::getsockopt(fd, level, name, &got, &size) == 0 && got == value;
}

}  // namespace

void set_keepalive(int fd) {
  set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
  set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, kKeepaliveIdleSeconds);
  set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, kKeepaliveIntervalSeconds);
  set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, kKeepaliveProbes);
}

void set_client_options(int fd) {
  set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  set_keepalive(fd);
#ifdef TCP_INQ
  set_int(fd, IPPROTO_TCP, TCP_INQ, 1);
#endif
}

bool has_client_options(int fd) {
  return has_int(fd, IPPROTO_TCP, TCP_NODELAY, 1) && has_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1) &&
         has_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, kKeepaliveIdleSeconds) &&
         has_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, kKeepaliveIntervalSeconds) &&
         has_int(fd, IPPROTO_TCP, TCP_KEEPCNT, kKeepaliveProbes)
#ifdef TCP_INQ
         && has_int(fd, IPPROTO_TCP, TCP_INQ, 1)
#endif
      ;
}

// Linux's struct tcp_info up to tcpi_bytes_acked; glibc's copy of it ends before that field, and
// <linux/tcp.h> cannot be included beside <netinet/tcp.h>.
namespace {
struct TcpInfoUpToBytesAcked {
  std::uint8_t flags[8];
  std::uint32_t counters[24];
  std::uint64_t pacing_rate;
  std::uint64_t max_pacing_rate;
  std::uint64_t bytes_acked;
};
static_assert(offsetof(TcpInfoUpToBytesAcked, bytes_acked) == 120);
}  // namespace

std::uint64_t bytes_acked_by_peer(int fd) {
  TcpInfoUpToBytesAcked info{};
  socklen_t size = sizeof info;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &size) != 0 || size < sizeof info) return 0;
  return info.bytes_acked;
}

}  // namespace pgvalve::proxy
