// A wait for bytes that arrive on a socket after the wait starts.
//
// Asio 1.18's socket.async_wait(wait_read) re-registers the socket with epoll on every wait (an
// epoll_ctl call) so that bytes already queued in the kernel complete it at once. A session that
// reads its sockets until the kernel is drained does not need that: the socket is registered
// edge-triggered once, and every arrival after the wait starts is reported by epoll anyway. This
// wait completes on the next such report, on an error or hang-up, or when it is cancelled —
// without a system call to start it. PgBouncer's level-triggered libevent registrations cost
// nothing per wait either; this is the same saving inside Asio's reactor.
//
// The rule for callers: arm it, before control returns to the event loop, only once the kernel
// holds nothing more for the socket: no bytes, no end, no reset. Epoll reports what came before
// the last read once, together with the bytes read, and never again — while a read returns the
// bytes and leaves an end or a reset that came with them for the next read.
// read_some_noting_rest() tells about bytes and an end (TCP_INQ); a reset only a further read
// (or a failed write) shows. Epoll reports what arrives later at the loop's next turn, which
// finds the wait armed.
//
// It reaches into Asio's epoll reactor, so it is built only for the Boost version it was written
// against; elsewhere (and for TLS streams, whose reads are not one recv each) callers use
// socket.async_wait.
#pragma once

#include <boost/version.hpp>

#include "proxy/io_util.h"

#if BOOST_VERSION == 107400 && defined(BOOST_ASIO_HAS_EPOLL) && !defined(BOOST_ASIO_HAS_IOCP)
#define PGVALVE_ARRIVAL_WAIT 1
#include <boost/asio/detail/epoll_reactor.hpp>
#include <boost/asio/detail/fenced_block.hpp>
#include <boost/asio/detail/handler_alloc_helpers.hpp>
#include <boost/asio/detail/handler_work.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <boost/asio/detail/socket_ops.hpp>
#endif

namespace pgvalve::proxy {

#ifdef PGVALVE_ARRIVAL_WAIT
namespace arrival_detail {

namespace ad = boost::asio::detail;

template <typename Handler, typename IoExecutor>
class ArrivalWaitOp : public ad::reactor_op {
 public:
  BOOST_ASIO_DEFINE_HANDLER_PTR(ArrivalWaitOp);

  ArrivalWaitOp(Handler& handler, const IoExecutor& io_ex)
      : ad::reactor_op(error_code(), &ArrivalWaitOp::do_perform, &ArrivalWaitOp::do_complete),
        handler_(std::move(handler)),
        work_(handler_, io_ex) {}

  // Asked once when the wait starts (Asio's speculative attempt: "not yet", so it queues the
  // operation without touching epoll), then at each epoll report for the socket: done.
  bool started = false;

  static status do_perform(ad::reactor_op* base) {
    return static_cast<ArrivalWaitOp*>(base)->started ? done : not_done;
  }

  static void do_complete(void* owner, ad::operation* base, const error_code&, std::size_t) {
    auto* o = static_cast<ArrivalWaitOp*>(base);
    ptr p = {std::addressof(o->handler_), o, o};
    ad::handler_work<Handler, IoExecutor> w(std::move(o->work_));
    ad::binder1<Handler, error_code> handler(o->handler_, o->ec_);
    p.h = std::addressof(handler.handler_);
    p.reset();  // the memory goes back before the upcall, which may wait again
    if (owner) {
      ad::fenced_block b(ad::fenced_block::half);
      w.complete(handler, handler.handler_);
    }
  }

 private:
  Handler handler_;
  ad::handler_work<Handler, IoExecutor> work_;
};

// basic_socket keeps its implementation protected; a using-declaration in a derived class
// names it.
struct SocketAccess : Socket {
  using Socket::impl_;
};

}  // namespace arrival_detail

// The epoll reactor of an io_context, looked up once: asio::use_service takes the context's
// service-registry mutex and compares type names on every call. Lives no longer than `context`.
class ArrivalReactor {
 public:
  explicit ArrivalReactor(asio::io_context& context)
      : context_(&context),
        reactor_(&asio::use_service<boost::asio::detail::epoll_reactor>(context)) {}
  // The reactor of `socket`'s context: the one kept when it is that context.
  boost::asio::detail::epoll_reactor& of(Socket& socket) const {
    asio::io_context& context = socket.get_executor().context();
    if (&context == context_) return *reactor_;
    return asio::use_service<boost::asio::detail::epoll_reactor>(context);
  }

 private:
  asio::io_context* context_;
  boost::asio::detail::epoll_reactor* reactor_;
};

// Calls handler(error_code) at the next arrival of bytes on `socket`, an error, or a cancel
// (operation_aborted). See the rule above. `arrival_reactor`: that of the caller's io_context.
template <typename Handler>
void async_wait_for_arrival(Socket& socket, const ArrivalReactor& arrival_reactor,
                            Handler handler) {
  namespace ad = boost::asio::detail;
  using Op = arrival_detail::ArrivalWaitOp<Handler, Socket::executor_type>;
  auto& impl = (socket.*(&arrival_detail::SocketAccess::impl_)).get_implementation();
  ad::epoll_reactor& reactor = arrival_reactor.of(socket);
  typename Op::ptr p = {std::addressof(handler), Op::ptr::allocate(handler), nullptr};
  p.p = new (p.v) Op(handler, socket.get_executor());
  Op* op = p.p;
  p.v = p.p = nullptr;
  if (!(impl.state_ & ad::socket_ops::non_blocking) &&
      !ad::socket_ops::set_internal_non_blocking(impl.socket_, impl.state_, true, op->ec_)) {
    reactor.post_immediate_completion(op, false);
    return;
  }
  reactor.start_op(ad::epoll_reactor::read_op, impl.socket_, impl.reactor_data_, op, false, true);
  // Single-threaded loop: no epoll report can reach the operation before this line.
  op->started = true;
}

template <typename Handler>
void async_wait_for_arrival(Socket& socket, Handler handler) {
  async_wait_for_arrival(socket, ArrivalReactor(socket.get_executor().context()),
                         std::move(handler));
}

inline constexpr bool kArrivalWaitAvailable = true;
#else
class ArrivalReactor {
 public:
  explicit ArrivalReactor(asio::io_context&) {}
};
template <typename Handler>
void async_wait_for_arrival(Socket& socket, const ArrivalReactor&, Handler handler) {
  socket.async_wait(Socket::wait_read, std::move(handler));
}
template <typename Handler>
void async_wait_for_arrival(Socket& socket, Handler handler) {
  socket.async_wait(Socket::wait_read, std::move(handler));
}
inline constexpr bool kArrivalWaitAvailable = false;
#endif

// Asks the kernel to say, with every read of `socket`, whether it holds more (TCP_INQ, Linux
// 4.18 on). False when it cannot: read_some_noting_rest() then always reports a rest.
bool enable_rest_hint(Socket& socket);

// The peer closed its end of `socket` or the connection failed, whatever bytes the kernel still
// holds for it (poll's POLLRDHUP, without reading them).
bool peer_hung_up(Socket& socket);

// One non-blocking read of a plain TCP socket (recvmsg). `rest` tells whether the kernel holds
// more for it: bytes beyond `into`, or the peer's end (TCP_INQ counts a received FIN as one byte
// still to read). Errors as Asio's read_some: would_block when there is nothing, eof at the end.
std::size_t read_some_noting_rest(Socket& socket, asio::mutable_buffer into, error_code& ec,
                                  bool& rest);

}  // namespace pgvalve::proxy
