"""Time bounds on servers and clients (docs/configuration.md `pool.query_timeout_ms`,
`pool.idle_transaction_timeout_ms`, TCP keepalive):

- a server that goes silent mid-response (SIGSTOP of its backend) or runs longer than
  query_timeout_ms without sending anything: the client gets 08006 and keeps its connection; the
  server is cancelled, closed and replaced;
- a client idle inside a transaction longer than idle_transaction_timeout_ms: FATAL 25P03, its
  transaction rolled back, its server back in the pool;
- client and server sockets have SO_KEEPALIVE (seen in `ss -tno` as timer:(keepalive,...));
- a server that hangs up in the middle of an answer, its FATAL and its end read together: the
  client hears of it at once, with no timeout needed; a client whose request and hang-up arrive
  together is logged out at once, not at the next TCP keepalive.

Backends stopped with SIGSTOP are always continued (SIGCONT) in a finally block."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time

import psycopg
import pytest

from itutil import assert_pgvalve_message, one, raw_login, wait_closed
from pgcluster import APP_DB, APP_USER, wait_until
from pgwire import query_message, read_error_then_close, read_message

QUERY_TIMEOUT_MS = 1000


@pytest.fixture
def pv_qt(pgvalve):
    return pgvalve(mode="transaction", pool_size=2, max_overflow=0, checkout_timeout_ms=5000,
                   query_timeout_ms=QUERY_TIMEOUT_MS)


def backend_alive(cluster, backend_pid) -> bool:
    return cluster.primary.scalar("select count(*) from pg_stat_activity where pid = %s",
                                  (backend_pid,)) > 0


class Unstick:
    """Keeps a test with a stopped backend bounded whatever pgvalve does: after `after` seconds
    the backend is continued, and 3 s later the client's socket is shut down (psycopg's stream
    otherwise waits, without a timeout, for the rest of a result that never comes, even after
    the conftest watchdog fired)."""

    def __init__(self, conn, backend, after):
        self.conn, self.backend, self.fired = conn, backend, False
        self.timers = [threading.Timer(after, self.cont), threading.Timer(after + 3, self.shut)]
        for t in self.timers:
            t.daemon = True
            t.start()

    def cont(self):
        self.fired = True
        try:
            os.kill(self.backend, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def shut(self):
        try:
            s = socket.socket(fileno=os.dup(self.conn.pgconn.socket))
            s.shutdown(socket.SHUT_RDWR)
            s.close()
        except OSError:
            pass

    def cancel(self):
        for t in self.timers:
            t.cancel()


def assert_pool_whole(pv, bad_pid):
    """Two clients hold a transaction each at once: two working servers, neither `bad_pid`."""
    a, b = pv.connect(), pv.connect()
    try:
        with a.transaction(), b.transaction():
            pids = {one(a, "select pg_backend_pid()"), one(b, "select pg_backend_pid()")}
        assert len(pids) == 2 and bad_pid not in pids, pids
    finally:
        a.close()
        b.close()


# Rows of 1000 bytes and of 100 kB are held whole before they are passed on, so a server that
# falls silent mid-row leaves nothing half-sent: the client gets 08006 and keeps its connection.
# Rows of 3 MB (above the 1 MiB pgvalve holds whole) are passed through as they arrive; if the
# server falls silent in the middle of one, the client already has part of it and the only honest
# answer is to close its connection (docs/errors.md). Either way the client hears within
# query_timeout_ms.
ROWS = {"small_rows": (1000, 100000), "rows_of_100kB": (100000, 1000),
        "rows_of_3MB": (3_000_000, 40)}


@pytest.mark.parametrize("rows_kind", list(ROWS))
def test_server_silent_mid_response_08006(pv_qt, cluster, rows_kind):
    row_bytes, row_count = ROWS[rows_kind]
    pv = pv_qt
    conn = pv.connect()
    backend = None
    try:
        cur = conn.cursor()
        rows = cur.stream(f"select pg_backend_pid(), repeat('x', {row_bytes}) "
                          f"from generate_series(1, {row_count})")
        first = next(rows)
        backend = first[0]
        os.kill(backend, signal.SIGSTOP)
        stopped_at = time.monotonic()
        unstick = Unstick(conn, backend, QUERY_TIMEOUT_MS / 1000 + 6)
        received = 1
        try:
            with pytest.raises(psycopg.Error) as ei:
                for _ in rows:
                    received += 1
        finally:
            unstick.cancel()
        elapsed = time.monotonic() - stopped_at
        assert not unstick.fired, \
            f"no error {elapsed:.1f}s after the server went silent (query_timeout_ms " \
            f"{QUERY_TIMEOUT_MS}); the test continued the backend itself: {ei.value!r}"
        print(f"{rows_kind}: rows received before the error: {received}; "
              f"error after {elapsed:.2f}s: {ei.value!r}")
        assert received < row_count
        assert elapsed <= QUERY_TIMEOUT_MS / 1000 + 2.5, \
            f"error {elapsed:.2f}s after the server went silent (query_timeout_ms 1000)"
        if row_bytes > 1024 * 1024 and ei.value.sqlstate is None:
            assert conn.broken, f"no SQLSTATE, yet the connection is open: {ei.value!r}"
        else:
            assert ei.value.sqlstate == "08006", \
                f"{ei.value!r} (the client's connection is " \
                f"{'closed' if conn.closed or conn.broken else 'open'})"
            assert_pgvalve_message(ei.value.diag.message_primary)
            # the client's connection stays usable, on another server
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert one(conn, "select pg_backend_pid()") != backend
            assert one(conn, "select 41 + 1") == 42
    finally:
        if backend is not None:
            try:
                os.kill(backend, signal.SIGCONT)
            except ProcessLookupError:
                pass
        conn.close()
    # the stopped backend was cancelled and its connection closed: it goes away once continued
    wait_until(lambda: not backend_alive(cluster, backend), 10,
               message=f"backend {backend} gone after SIGCONT")
    assert_pool_whole(pv, backend)


def test_long_silent_query_08006(pv_qt, cluster):
    pv = pv_qt
    with pv.connect() as conn:
        t0 = time.monotonic()
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("select pg_backend_pid(), pg_sleep(5)")
        elapsed = time.monotonic() - t0
        assert ei.value.sqlstate == "08006", repr(ei.value)
        assert_pgvalve_message(ei.value.diag.message_primary)
        assert 0.8 <= elapsed <= 3.5, f"pg_sleep(5) cut after {elapsed:.2f}s (timeout 1 s)"
        # which backend ran it: none of app's backends may still be sleeping
        wait_until(lambda: cluster.primary.scalar(
            "select count(*) from pg_stat_activity where usename = %s and query like "
            "'%%pg_sleep(5)%%' and pid <> pg_backend_pid()", (APP_USER,)) == 0, 5,
            message="the pg_sleep backend cancelled and gone")
        assert one(conn, "select 1") == 1
        # a query that runs shorter than the timeout is not affected
        assert one(conn, "select pg_sleep(0.5)::text") == ""
    assert_pool_whole(pv, None)
    # The operator reads why in the log.
    assert "event=server_given_up" in pv.log_text()
    assert "reason=pool.query_timeout_ms" in pv.log_text()


def test_slow_reading_client_is_not_cut(pv_qt):
    """query_timeout_ms measures the server's silence. A client that reads a large result slowly
    keeps the server waiting for it (pgvalve stops reading while the client is behind): that is
    not the server being silent, and must not end the query."""
    pv = pv_qt
    with pv.connect() as conn:
        cur = conn.cursor()
        n = 0
        for row in cur.stream("select i, repeat('x', 2000) from generate_series(1, 20000) i"):
            n += 1
            if n in (5, 10000):
                time.sleep(QUERY_TIMEOUT_MS / 1000 * 2)  # the client stops reading for 2 s
        assert n == 20000
        assert one(conn, "select 1") == 1


# --- idle in transaction ---------------------------------------------------------------------------

def assert_cut_25p03_after_a_second(r):
    """The raw client `r` gets FATAL 25P03 and is disconnected about 1 s (the timeout) after now."""
    t0 = time.monotonic()
    err, closed, kinds = read_error_then_close(r.sock, 6)
    elapsed = time.monotonic() - t0
    r.sock.close()
    assert err is not None, f"no error within 6 s (closed={closed}, messages={kinds})"
    assert err.get("C") == "25P03", err
    assert err.get("S") == "FATAL", err
    assert_pgvalve_message(err.get("M"))
    assert closed, "the client was not disconnected"
    assert 0.8 <= elapsed <= 4.0, f"disconnected after {elapsed:.2f}s (timeout 1 s)"


def test_idle_in_transaction_25P03(pgvalve, cluster):
    cluster.primary.sql(f"drop table if exists idle_tx; create table idle_tx(x int); "
                        f"alter table idle_tx owner to {APP_USER}", dbname=APP_DB)
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=5000,
                 idle_transaction_timeout_ms=1000)
    idle_outside = pv.connect()
    r = raw_login(pv)
    r.query("BEGIN")
    r.query("insert into idle_tx values (1)")
    assert r.transaction_status(r.query("select 1")) == "T"
    assert_cut_25p03_after_a_second(r)
    # the only server is back in the pool (a checkout would otherwise fail after 5 s), with no
    # transaction open
    with pv.connect() as c:
        assert one(c, "select count(*) from idle_tx") == 0  # rolled back
    states = cluster.primary.sql(
        "select state from pg_stat_activity where usename = %s and datname = %s "
        "and backend_type = 'client backend'", (APP_USER, APP_DB))
    assert all(s[0] in ("idle", "active") for s in states), states
    # a client idle outside a transaction is not affected
    assert one(idle_outside, "select 2") == 2
    idle_outside.close()
    # The operator reads who was closed and why in the log.
    closed = [line for line in pv.log_text().splitlines() if "event=client_closed" in line]
    assert len(closed) == 1 and "sqlstate=25P03" in closed[0], closed
    assert "idle_transaction_timeout_ms" in closed[0]


@pytest.mark.parametrize("stall", ["mid_copy", "flight_without_sync"])
def test_a_client_that_stalls_holding_a_server_is_cut_25P03(pgvalve, cluster, stall):
    # The server waits for the client (the rest of a COPY, or the Sync of a flight whose
    # answers PostgreSQL holds back until then): the pool's only server must not be kept.
    from pgwire import message
    from pgwire_ext import bind, execute, parse
    cluster.primary.sql(f"drop table if exists stall; create table stall(x int); "
                        f"alter table stall owner to {APP_USER}", dbname=APP_DB)
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=5000,
                 idle_transaction_timeout_ms=1000)
    r = raw_login(pv)
    if stall == "mid_copy":
        r.sock.sendall(query_message("copy stall from stdin"))
        assert read_message(r.sock)[0] == b"G"
        r.sock.sendall(message(b"d", b"1\n"))
    else:
        r.sock.sendall(parse("", "insert into stall values (1)") + bind("") +
                       execute(""))
    assert_cut_25p03_after_a_second(r)
    with pv.connect() as c:
        assert one(c, "select count(*) from stall") == 0  # nothing of it committed


def test_active_transaction_is_not_cut(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0,
                 idle_transaction_timeout_ms=1000)
    with pv.connect() as c:
        with c.transaction():
            for i in range(5):  # 2.5 s in the transaction, never idle for 1 s
                assert one(c, "select %s::int", (i,)) == i
                time.sleep(0.5)
        assert one(c, "select 1") == 1


# --- TCP keepalive -----------------------------------------------------------------------------------

TIMER = re.compile(r"timer:\((\w+),([^,)]*)")


def seconds(text: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"(\d+)(min|sec|ms)", text):
        total += int(value) * {"min": 60, "sec": 1, "ms": 0.001}[unit]
    return total


def test_tcp_keepalive_on_client_and_server_sockets(pv_qt, cluster):
    pv = pv_qt
    conn = pv.connect()
    try:
        assert one(conn, "select 1") == 1
        server_ports = {row[0] for row in cluster.primary.sql(
            "select client_port from pg_stat_activity where usename = %s and datname = %s "
            "and backend_type = 'client backend' and pid <> pg_backend_pid()",
            (APP_USER, APP_DB))}
        assert server_ports, "pgvalve holds no server connection"
        time.sleep(0.3)  # idle sockets show the keepalive timer
        out = subprocess.run(["ss", "-tnoH", "state", "established"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
        client_side, server_side = [], []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 4:
                continue
            local, peer = parts[2], parts[3]
            lport, pport = int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])
            if lport == pv.port:
                client_side.append(line)
            elif lport in server_ports and pport == cluster.primary.port:
                server_side.append(line)
        assert client_side, f"no accepted client socket on port {pv.port} in:\n{out}"
        assert len(server_side) == len(server_ports), \
            f"server sockets from ports {server_ports} not all found in:\n{out}"
        for line in client_side + server_side:
            m = TIMER.search(line)
            assert m and m.group(1) == "keepalive", f"no keepalive timer: {line}"
            # pgvalve's idle time is 60 s (the kernel default is 7200 s)
            assert seconds(m.group(2)) <= 60, f"keepalive idle above 60 s: {line}"
    finally:
        conn.close()



@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_server_that_hangs_up_mid_answer_is_found_at_once(pgvalve, cluster, mode):
    """The backend's FATAL and its hang-up reach pgvalve together (pgvalve is stopped while
    pg_terminate_backend ends the backend, so one read finds both): the client hears of it then,
    with no query_timeout to fall back on. In transaction mode its connection stays and its next
    query runs on a new server."""
    pv = pgvalve(mode=mode, pool_size=1, max_overflow=0, checkout_timeout_ms=5000)
    with pv.connect(autocommit=True) as c:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        result = {}

        def run():
            try:
                c.execute("select pg_sleep(60)")
                result["error"] = None
            except psycopg.Error as e:
                result["error"] = e

        t = threading.Thread(target=run)
        t.start()
        wait_until(lambda: cluster.primary.scalar(
            "select count(*) from pg_stat_activity where pid = %s and query like %s",
            (pid, "select pg_sleep%")), timeout=10, message="pg_sleep running")
        os.kill(pv.proc.pid, signal.SIGSTOP)
        try:
            cluster.primary.sql("select pg_terminate_backend(%s)", (pid,))
            wait_until(lambda: not backend_alive(cluster, pid), timeout=10,
                       message="backend gone")
            time.sleep(0.2)  # its socket closes as the process ends
        finally:
            os.kill(pv.proc.pid, signal.SIGCONT)
        t.join(timeout=20)
        assert not t.is_alive(), "the client still waits for an answer from a closed server"
        assert result["error"] is not None
        if mode == "transaction":
            assert c.execute("select pg_backend_pid()").fetchone()[0] != pid


def test_a_client_that_hangs_up_with_its_request_leaves_at_once(pgvalve):
    """The client's request and its end reach pgvalve together (pgvalve is stopped while the client
    sends and shuts its side): its session ends at once, not at the next TCP keepalive."""
    pv = pgvalve(mode="transaction", pool_size=1)
    c = raw_login(pv)
    c.query("select 1")
    time.sleep(0.2)  # pgvalve waits for the client's next request
    os.kill(pv.proc.pid, signal.SIGSTOP)
    try:
        c.sock.sendall(query_message("select 1"))
        c.sock.shutdown(socket.SHUT_WR)
        time.sleep(0.2)
    finally:
        os.kill(pv.proc.pid, signal.SIGCONT)
    assert wait_closed(c.sock, 10), "pgvalve kept the session of a client that hung up"
    wait_until(lambda: "event=client_logout" in pv.log_text(), timeout=10,
               message="client_logout logged")


def test_a_server_ended_while_its_client_idles_in_a_transaction_gives_one_08006(pgvalve,
                                                                                  cluster):
    """The server's FATAL goodbye (57P01 from pg_terminate_backend, or a postmaster going away)
    is not passed to a client sitting in a transaction between requests: drivers that drop
    their connection on a FATAL would lose it. The client's next request gets 08006 from
    pgvalve, and the connection goes on."""
    from pgwire import parse_fields
    pv = pgvalve(mode="transaction", pool_size=2)
    c = raw_login(pv)
    try:
        c.query("begin")
        pid = c.rows("select pg_backend_pid()")[0][0]
        cluster.primary.psql(f"select pg_terminate_backend({pid})")
        time.sleep(0.5)
        c.sock.settimeout(0.5)
        try:
            early = c.sock.recv(1, socket.MSG_PEEK)
        except socket.timeout:
            early = b""
        assert early == b"", "a message reached the idle client after its server was ended"
        c.sock.settimeout(10)
        c.sock.sendall(query_message("commit"))
        kinds, errors = [], []
        while True:
            kind, payload = read_message(c.sock)
            kinds.append(kind)
            if kind == b"E":
                errors.append(parse_fields(payload))
            if kind == b"Z":
                break
        assert len(errors) == 1, errors
        assert errors[0]["C"] == "08006" and errors[0]["S"] == "ERROR", errors[0]
        assert_pgvalve_message(errors[0]["M"])
        # The server's reason is quoted.
        assert "terminating connection due to administrator command" in errors[0]["M"]
        assert c.rows("select 1") == [["1"]]
    finally:
        c.terminate()


@pytest.mark.parametrize("mode", ["session", "transaction_pinned"])
def test_query_timeout_closes_a_client_whose_server_held_its_session(pgvalve, cluster, mode):
    """pool.query_timeout_ms gives up a server that held the client's session (session mode, or
    a temporary table pinning it in transaction mode): the client is closed (08006), as when
    such a server is lost, instead of running on without its advisory lock, temporary table and
    prepared statement (another session could take the lock it believed it held)."""
    pv = pgvalve(mode=mode.split("_")[0], pool_size=2, max_overflow=0,
                 query_timeout_ms=QUERY_TIMEOUT_MS)
    c = pv.connect()
    try:
        c.execute("select pg_advisory_lock(4711)")
        c.execute("create temp table mine (x int)")
        c.execute("prepare p as select 42")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("select pg_sleep(5)")
        assert ei.value.sqlstate == "08006", repr(ei.value)
        assert_pgvalve_message(ei.value.diag.message_primary)
        with pytest.raises(psycopg.OperationalError):
            c.execute("execute p")
        assert c.closed or c.broken
    finally:
        c.close()


def test_pre_ping_of_servers_that_never_answer_stays_within_the_checkout_timeout(pgvalve, cluster):
    """pool.pre_ping pings idle connections one at a time; when none answers (their backends
    stopped, as behind a network black hole) the client gets 53300 within
    checkout_timeout_ms, not 2 s per idle connection (it waited 10 s for 5)."""
    pv = pgvalve(mode="transaction", pool_size=5, max_overflow=0, pre_ping=True,
                 pre_ping_idle_s=0, checkout_timeout_ms=1000, workers=1)
    conns = [pv.connect(autocommit=False) for _ in range(5)]
    try:
        for c in conns:
            c.execute("select 1")
        for c in conns:
            c.commit()
        pids = [r[0] for r in cluster.primary.sql(
            "select pid from pg_stat_activity where usename = %s and datname = %s "
            "and backend_type = 'client backend' and pid <> pg_backend_pid()",
            (APP_USER, APP_DB))]
        assert len(pids) == 5, pids
        conns[0].autocommit = True
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(psycopg.Error) as ei:
                conns[0].execute("select 1")
            waited = time.monotonic() - started
        finally:
            for p in pids:
                try:
                    os.kill(p, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        assert ei.value.sqlstate == "53300", repr(ei.value)
        assert waited < 2.5, f"waited {waited:.1f}s with checkout_timeout_ms 1000"
    finally:
        for c in conns:
            c.close()
