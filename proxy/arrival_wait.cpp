#include "proxy/arrival_wait.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace pgvalve::proxy {

bool enable_rest_hint(Socket& socket) {
#ifdef TCP_INQ
  const int on = 1;
  return ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_INQ, &on, sizeof on) == 0;
#else
  (void)socket;
  return false;
#endif
}

bool peer_hung_up(Socket& socket) {
  pollfd p{socket.native_handle(), POLLRDHUP, 0};
  int n;
  do {
    n = ::poll(&p, 1, 0);
  } while (n < 0 && errno == EINTR);
  return n > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

std::size_t read_some_noting_rest(Socket& socket, asio::mutable_buffer into, error_code& ec,
                                  bool& rest) {
  rest = true;
  iovec iov{into.data(), into.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  long n;
  do {
    // The system call itself: glibc's recvmsg() is a cancellation point, which costs two atomic
    // operations per read (see send_one() in socket_writer.cpp).
    n = ::syscall(SYS_recvmsg, socket.native_handle(), &msg, MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    ec = error_code(errno, asio::error::get_system_category());
    return 0;
  }
  if (n == 0 && into.size() > 0) {
    ec = asio::error::eof;
    return 0;
  }
  ec = {};
#ifdef TCP_CM_INQ
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == IPPROTO_TCP && c->cmsg_type == TCP_CM_INQ) {
      int inq = 0;
      std::memcpy(&inq, CMSG_DATA(c), sizeof inq);
      rest = inq != 0;
    }
  }
#endif
  return static_cast<std::size_t>(n);
}

}  // namespace pgvalve::proxy
