"""A client that reads slowly (docs/internals.md: what the kernel does not take is kept in a
backlog, and pgvalve reads no more input until it drained).

While the backlog exists nothing but the backlog's own write waits on the session: a client that
sends more meanwhile, or vanishes, must neither lose its session nor take its server with it.
pool_size 1, so a server that is not given back shows at once: the next client gets 53300."""

from __future__ import annotations

import struct
import time

from itutil import APP_AND_OPS, one, raw_login, show_pools
from pgcluster import wait_until
from pgwire import query_message, read_message

ROWS = 24
ROW_BYTES = 1_000_000  # 24 MB: far more than the kernel's socket buffers on both sides
BIG = f"select repeat('x', {ROW_BYTES}) from generate_series(1, {ROWS})"


def make(pgvalve):
    return pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=3000,
                   users=APP_AND_OPS)


def checked_out(pv) -> int:
    return sum(int(r["checked_out"]) for r in show_pools(pv))


def assert_server_free(pv):
    wait_until(lambda: checked_out(pv) == 0, 5, message="SHOW POOLS checked_out = 0")
    with pv.connect() as c:
        assert one(c, "select 1") == 1


def test_slow_reader_that_sends_meanwhile_keeps_its_session(pgvalve):
    pv = make(pgvalve)
    r = raw_login(pv, timeout=30)
    r.sock.sendall(query_message(BIG))
    time.sleep(1.0)  # the result fills the kernel's buffers; pgvalve keeps a backlog
    r.sock.sendall(query_message("select 42"))  # read while the backlog waits
    time.sleep(1.0)

    rows, ready, answer = 0, 0, None
    while ready < 2:
        kind, payload = read_message(r.sock)
        if kind == b"E":
            raise AssertionError(f"ErrorResponse: {payload!r}")
        if kind == b"D":
            (ln,) = struct.unpack("!i", payload[2:6])
            if ready == 0:
                assert ln == ROW_BYTES
                rows += 1
            else:
                answer = payload[6:6 + ln].decode()
        if kind == b"Z":
            ready += 1
    assert rows == ROWS
    assert answer == "42"
    r.terminate()
    assert_server_free(pv)


def test_slow_reader_that_vanishes_gives_its_server_back(pgvalve):
    pv = make(pgvalve)
    r = raw_login(pv, timeout=30)
    r.sock.sendall(query_message(BIG))
    time.sleep(1.0)  # a backlog, the server paused
    r.close_abruptly(reset=True)
    assert_server_free(pv)
