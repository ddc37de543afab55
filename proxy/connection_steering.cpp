#include "proxy/connection_steering.h"

#include <linux/filter.h>
#include <sys/socket.h>

#include <array>

namespace pgvalve::proxy {

bool steer_new_connections(int listener, int active) {
  if (active < 1) active = 1;
  // The returned number is an index into the group's listeners; the kernel falls back to its own
  // spreading when it is out of range.
  std::array<sock_filter, 3> code = {{
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, static_cast<__u32>(SKF_AD_OFF + SKF_AD_RANDOM)),
      BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, static_cast<__u32>(active)),
      BPF_STMT(BPF_RET | BPF_A, 0),
  }};
  sock_fprog program{static_cast<unsigned short>(code.size()), code.data()};
  return ::setsockopt(listener, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &program, sizeof program) ==
         0;
}

}  // namespace pgvalve::proxy
