#include "proxy/shared_port.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace pgvalve::proxy {

bool someone_listens_on(const boost::asio::ip::tcp::endpoint& endpoint) {
  const int fd = ::socket(endpoint.protocol().family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  // SO_REUSEADDR lets the bind pass a port in TIME_WAIT, so only a listening socket refuses it.
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  const bool in_use = ::bind(fd, endpoint.data(), static_cast<socklen_t>(endpoint.size())) != 0 &&
                      errno == EADDRINUSE;
  ::close(fd);
  return in_use;
}

int listeners_on_port(std::uint16_t port) {
  int count = 0;
  bool read_any = false;
  for (const char* path : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::FILE* f = std::fopen(path, "re");
    if (!f) continue;
    read_any = true;
    char line[512];
    // "  sl  local_address rem_address   st ...": the local address ends in ":PORT" (hex), and
    // state 0A is LISTEN.
    while (std::fgets(line, sizeof line, f)) {
      char local[128];
      char remote[128];
      unsigned state = 0;
      if (std::sscanf(line, " %*s %127s %127s %x", local, remote, &state) != 3) continue;
      const char* colon = std::strrchr(local, ':');
      if (!colon || state != 0x0A) continue;
      if (std::strtoul(colon + 1, nullptr, 16) == port) ++count;
    }
    std::fclose(f);
  }
  return read_any ? count : -1;
}

}  // namespace pgvalve::proxy
