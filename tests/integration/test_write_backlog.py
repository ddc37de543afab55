"""A client that reads slowly (docs/internals.md: what the kernel does not take is kept in a
backlog, and pgvalve reads no more input until it drained).

While the backlog exists nothing but the backlog's own write waits on the session: a client that
sends more meanwhile, or vanishes, must neither lose its session nor take its server with it.
A client that takes none of its results for limits.message_timeout_ms while it holds a server is
disconnected and the server given back; one that reads slowly but steadily is not.
pool_size 1, so a server that is not given back shows at once: the next client gets 53300."""

from __future__ import annotations

import struct
import time

import psycopg

from itutil import APP_AND_OPS, one, raw_login, show_pools, wait_closed
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


HUGE_RESULT = "select repeat('x', 1000) from generate_series(1, 1000000)"  # 1 GB


def test_a_client_that_takes_none_of_its_results_gives_its_server_back(pgvalve):
    """The reviewer's case: a client sends a query with a huge result and never reads. pgvalve
    stops reading the server, which blocks; after limits.message_timeout_ms without the client
    taking a byte, the client is disconnected, its query cancelled, and the only server goes to
    the next client."""
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=5000,
                 users=APP_AND_OPS, limits={"message_timeout_ms": 1000})
    a = raw_login(pv, timeout=30)
    a.sock.sendall(query_message(HUGE_RESULT))
    time.sleep(0.5)  # the result fills the kernel's buffers; pgvalve stops reading the server
    t0 = time.monotonic()
    with psycopg.connect(pv.dsn(), autocommit=True, connect_timeout=10) as b:
        assert one(b, "select 1") == 1
    waited = time.monotonic() - t0
    assert waited < 4.0, f"the next client got the server after {waited:.1f}s"
    assert wait_closed(a.sock, 10), "the client that never read is still connected"
    log = pv.log_text()
    assert "event=client_closed" in log and "sqlstate=08P01" in log, log[-3000:]
    assert "took none of the results" in log, log[-3000:]
    assert_server_free(pv)


def read_until_ready(sock, buffered: bytes) -> tuple[int, list[bytes]]:
    """Reads the rest of a simple query's answer after `buffered`, the bytes read so far:
    (DataRows, kinds of the other messages) up to ReadyForQuery."""
    data = bytearray(buffered)
    rows, kinds, at = 0, [], 0
    while True:
        while len(data) - at >= 5:
            (length,) = struct.unpack("!I", data[at + 1:at + 5])
            if len(data) - at < 1 + length:
                break
            kind = bytes(data[at:at + 1])
            at += 1 + length
            if kind == b"D":
                rows += 1
            else:
                kinds.append(kind)
                if kind == b"Z":
                    return rows, kinds
        del data[:at]
        at = 0
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise AssertionError(f"closed after {rows} rows (messages {kinds})")
        data += chunk


def test_a_client_that_reads_slowly_but_steadily_is_not_cut(pgvalve):
    """Any bytes the client takes restart limits.message_timeout_ms: a client reading a 20 MB
    result at about 300 kB/s for 3 s (three timeouts) keeps its session and gets every row."""
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=5000,
                 users=APP_AND_OPS, limits={"message_timeout_ms": 1000})
    r = raw_login(pv, timeout=30)
    r.sock.sendall(query_message("select repeat('x', 1000) from generate_series(1, 20000)"))
    slow = bytearray()
    until = time.monotonic() + 3.0
    while time.monotonic() < until:
        chunk = r.sock.recv(32768)
        assert chunk, f"closed after {len(slow)} bytes"
        slow += chunk
        time.sleep(0.1)
    assert len(slow) < 10_000_000, "the result was not read slowly: the test proves nothing"
    rows, kinds = read_until_ready(r.sock, bytes(slow))
    assert rows == 20000 and b"E" not in kinds, (rows, kinds)
    assert r.rows("select 7") == [["7"]]
    r.terminate()
    assert_server_free(pv)
