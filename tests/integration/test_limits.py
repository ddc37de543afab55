"""Limits and bad input (DESIGN §4.2, §7): checkout timeout, max_client_connections,
authentication failures, malformed / oversized startup packets and messages, auth timeout.
Errors are read off the wire (raw ErrorResponse fields) so the SQLSTATE is exact."""

import os
import signal
import socket
import struct
import threading
import time

import psycopg
import pytest
from psycopg import errors

from pgcluster import APP_DB, APP_PASSWORD, APP_USER, wait_until
from pgwire import (PROTOCOL_3_0, PgWireError, RawClient, query_message, read_error_then_close,
                    read_message, startup_packet)


def raw(pv, user=APP_USER, password=APP_PASSWORD, database=APP_DB):
    return RawClient("127.0.0.1", pv.port, user, password, database, timeout=5)


def assert_closed(sock, timeout=3):
    """After an error the server must close: recv returns EOF (or RST) within `timeout`."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
    except ConnectionResetError:
        return
    except socket.timeout:
        pytest.fail(f"connection still open {timeout}s after the error")


def assert_pgvalve_message(msg):
    assert msg.startswith("pgvalve:"), f"error message does not start with 'pgvalve:': {msg!r}"


# --- checkout timeout ----------------------------------------------------------------------

def test_checkout_timeout_53300_and_connection_kept(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=500)
    with pv.connect(autocommit=False) as a, pv.connect(autocommit=True) as b:
        a.execute("select 1")  # BEGIN; select 1 -> a holds the only server
        t0 = time.monotonic()
        with pytest.raises(psycopg.Error) as ei:
            b.execute("select 1")
        elapsed = time.monotonic() - t0
        assert ei.value.sqlstate == "53300", repr(ei.value)
        assert isinstance(ei.value, errors.TooManyConnections)
        assert_pgvalve_message(ei.value.diag.message_primary or "")
        assert 0.4 <= elapsed <= 2.0, f"checkout timeout after {elapsed:.2f}s, want ~0.5s"
        # b keeps its connection; once a commits, b's same connection works
        a.commit()
        assert b.execute("select 2").fetchone() == (2,)
        assert not b.closed
        # and a waiter that gets the server within the timeout is served, not refused
        a.execute("select 1")
        threading.Timer(0.2, a.commit).start()
        assert b.execute("select 3").fetchone() == (3,)


@pytest.mark.parametrize("goodbye", ["close", "terminate_then_close"])
def test_a_client_that_leaves_while_waiting_leaves_the_queue_and_its_request_is_dropped(
        cluster, pgvalve, goodbye):
    # A device that gives up waiting and reconnects to retry must not find its first attempt run
    # later, after the retry: the request of a client gone while it waited never runs.
    from itutil import APP_AND_OPS, show_pools
    cluster.primary.psql("CREATE TABLE IF NOT EXISTS left_waiting (n int)", dbname=APP_DB)
    cluster.primary.psql("GRANT ALL ON left_waiting TO app", dbname=APP_DB)
    cluster.primary.psql("TRUNCATE left_waiting", dbname=APP_DB)
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=10000,
                 users=APP_AND_OPS)
    with pv.connect(autocommit=False) as holder:
        holder.execute("select 1")  # holds the only server
        gone = raw(pv).connect()
        gone.sock.sendall(query_message("insert into left_waiting values (1)"))
        wait_until(lambda: show_pools(pv)[0]["cl_waiting"] == "1", 5, message="it waits")
        if goodbye == "terminate_then_close":
            gone.sock.sendall(b"X\x00\x00\x00\x04")  # libpq's PQfinish
        gone.sock.close()
        wait_until(lambda: show_pools(pv)[0]["cl_waiting"] == "0", 5,
                   message="the queue forgets it")
        holder.commit()
        # The server is free for the next client, and the request of the one that left did not run.
        with pv.connect() as c:
            assert c.execute("select count(*) from left_waiting").fetchone() == (0,)
    assert "event=client_left_while_waiting" in pv.log_text()
    assert "server_closed_dirty" not in pv.log_text()


def test_a_client_that_resets_with_its_request_leaves_the_queue(cluster, pgvalve):
    # The request and the reset reach pgvalve together (it is stopped meanwhile), so no arrival
    # after the read announces the end: pgvalve looks for it once the request has waited a while
    # in the queue (50 ms), and the request never runs.
    from itutil import APP_AND_OPS, show_pools
    cluster.primary.psql("CREATE TABLE IF NOT EXISTS reset_waiting (n int)", dbname=APP_DB)
    cluster.primary.psql("GRANT ALL ON reset_waiting TO app", dbname=APP_DB)
    cluster.primary.psql("TRUNCATE reset_waiting", dbname=APP_DB)
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=10000,
                 users=APP_AND_OPS)
    with pv.connect(autocommit=False) as holder:
        holder.execute("select 1")  # holds the only server
        gone = raw(pv).connect()
        os.kill(pv.proc.pid, signal.SIGSTOP)
        try:
            gone.sock.sendall(query_message("insert into reset_waiting values (1)"))
            gone.close_abruptly(reset=True)
            time.sleep(0.2)
        finally:
            os.kill(pv.proc.pid, signal.SIGCONT)
        wait_until(lambda: "event=client_left_while_waiting" in pv.log_text(), 5,
                   message="the reset is found while the request waits")
        assert show_pools(pv)[0]["cl_waiting"] == "0"
        holder.commit()
        with pv.connect() as c:
            assert c.execute("select count(*) from reset_waiting").fetchone() == (0,)


def login_until_it_waits(pv) -> RawClient:
    """A client that sent its startup packet and password and now waits for its login's
    ReadyForQuery (as drivers do), which comes once the login has a server (session mode)."""
    from pgwire import _Scram, message
    c = raw(pv)
    c.open()
    c.sock.sendall(startup_packet({"user": APP_USER, "database": APP_DB}))
    scram = None
    while True:
        kind, payload = read_message(c.sock)
        assert kind == b"R", (kind, payload)
        (code,) = struct.unpack("!I", payload[:4])
        if code == 10:
            scram = _Scram(APP_PASSWORD)
            first = scram.client_first().encode()
            c.sock.sendall(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) +
                                   first))
        elif code == 11:
            c.sock.sendall(message(b"p", scram.client_final(payload[4:].decode()).encode()))
        elif code == 12:
            return c
        else:
            raise AssertionError(f"unexpected authentication request {code}")


@pytest.mark.parametrize("goodbye", ["close", "reset"])
def test_a_client_that_hangs_up_while_its_login_waits_for_a_server_leaves_the_queue(
        pgvalve, goodbye):
    # A driver whose connect_timeout passes gives up and retries: its first login must neither
    # keep a place in the queue and a client slot, nor be served the server before the clients
    # still there.
    from itutil import APP_AND_OPS, show_pools
    pv = pgvalve(mode="session", pool_size=1, max_overflow=0, checkout_timeout_ms=20000,
                 users=APP_AND_OPS)
    holder = pv.connect()  # holds the only server
    gone = [login_until_it_waits(pv) for _ in range(3)]
    wait_until(lambda: show_pools(pv)[0]["cl_waiting"] == "3", 5, message="the logins wait")
    for c in gone:
        c.close_abruptly(reset=goodbye == "reset")
    wait_until(lambda: show_pools(pv)[0]["cl_waiting"] == "0", 5,
               message="the queue forgets the logins that hung up")
    wait_until(lambda: pv.open_client_sockets() == 1, 5, message="their client slots are free")
    assert pv.log_text().count("event=client_left_while_waiting") == 3
    # The next client in the queue gets the server when the holder leaves.
    live = login_until_it_waits(pv)
    wait_until(lambda: show_pools(pv)[0]["cl_waiting"] == "1", 5, message="the live login waits")
    holder.close()
    while read_message(live.sock)[0] != b"Z":
        pass
    assert live.rows("select 1") == [["1"]]
    live.terminate()
    assert pv.log_text().count("event=client_login ") == 2  # the holder and the live one


# --- max_client_connections ------------------------------------------------------------------

def test_max_client_connections(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=2, max_client_connections=3)
    conns = [pv.connect() for _ in range(3)]
    try:
        for c in conns:
            assert c.execute("select 1").fetchone() == (1,)
        r = raw(pv)
        with pytest.raises(PgWireError) as ei:
            r.connect()
        assert ei.value.sqlstate == "53300", ei.value.fields
        assert_pgvalve_message(ei.value.message)
        assert_closed(r.sock)
        # psycopg sees a connection error too
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pv.dsn())
        # the three are unaffected
        for c in conns:
            assert c.execute("select 2").fetchone() == (2,)
        # a slot frees when a client leaves
        conns.pop().close()

        def can_connect():
            with psycopg.connect(pv.dsn(), autocommit=True) as c:
                return c.execute("select 1").fetchone() == (1,)
        wait_until(can_connect, 5, interval=0.2, message="a freed client slot")
    finally:
        for c in conns:
            c.close()


# --- authentication ------------------------------------------------------------------------

@pytest.mark.parametrize("user,password", [("app", "wrong-password"),
                                           ("no_such_user", "app-secret"),
                                           ("app", "")])
def test_bad_credentials_28P01(pgvalve, user, password):
    pv = pgvalve()
    r = raw(pv, user=user, password=password)
    with pytest.raises(PgWireError) as ei:
        r.connect()
    assert ei.value.sqlstate == "28P01", ei.value.fields
    assert ei.value.fields.get("S") == "FATAL", ei.value.fields
    assert_closed(r.sock)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pv.dsn(user=user, password=password or "x"))
    # the right credentials still work
    with pv.connect() as c:
        assert c.execute("select current_user").fetchone() == ("app",)


# --- malformed startup packets ----------------------------------------------------------------

MALFORMED_STARTUP = {
    "length_4": struct.pack("!I", 4),
    "length_7": struct.pack("!I", 7) + b"\x00\x03\x00",
    "garbage_http": b"GET / HTTP/1.1\r\nHost: pgvalve\r\n\r\n",
    "oversized_100000": struct.pack("!II", 100000, PROTOCOL_3_0) + b"user\x00app\x00",
    "unterminated_parameters": struct.pack("!II", 4 + 4 + 8, PROTOCOL_3_0) + b"user\x00app",
    "protocol_2_0": startup_packet({"user": APP_USER, "database": APP_DB}, version=0x00020000),
}


@pytest.fixture
def pv_limits(pgvalve):
    return pgvalve(mode="transaction", pool_size=2,
                   limits={"max_message_bytes": 1048576, "auth_timeout_ms": 10000})


@pytest.mark.parametrize("case", list(MALFORMED_STARTUP))
def test_malformed_startup_08P01(pv_limits, case):
    pv = pv_limits
    with pv.connect() as healthy:
        assert healthy.execute("select 1").fetchone() == (1,)
        s = socket.create_connection(("127.0.0.1", pv.port), timeout=5)
        try:
            s.sendall(MALFORMED_STARTUP[case])
            # 3 s is far below auth_timeout_ms (10 s): the reply must come from the parser
            err, closed, kinds = read_error_then_close(s, 3)
        finally:
            s.close()
        assert err is not None, f"no ErrorResponse (closed={closed}, messages={kinds})"
        if case == "protocol_2_0":
            # PostgreSQL itself answers an unsupported protocol version with 0A000 (in the
            # 2.0 error format); 08P01 per DESIGN §7 is fine too
            assert err.get("v2") or err.get("C") in ("08P01", "0A000"), err
        else:
            assert err.get("C") == "08P01", err
        if not err.get("v2"):
            assert_pgvalve_message(err.get("M", ""))
        assert closed, f"connection not closed after the error (messages={kinds})"
        # the already-connected client keeps working, new clients are accepted
        assert healthy.execute("select 2").fetchone() == (2,)
    with pv.connect() as c:
        assert c.execute("select 3").fetchone() == (3,)


def test_a_login_with_more_settings_than_a_client_may_have_is_refused_53400(pgvalve):
    """Found by a review: a login with 1,100 startup settings was accepted, after which every
    SET of a new one got 53400. The login meets the same limit (256), counting options -c."""
    pv = pgvalve(mode="transaction", pool_size=1)
    settings = {f"app.s{i}": "1" for i in range(250)}
    r = RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB,
                  params={**settings, "options": " ".join(f"-c app.o{i}=2" for i in range(7))},
                  timeout=10)
    with pytest.raises(PgWireError) as ei:
        r.connect()
    assert ei.value.sqlstate == "53400", ei.value.fields
    assert_pgvalve_message(ei.value.message)
    assert "at most 256 session settings" in ei.value.message, ei.value.message
    assert_closed(r.sock)
    # Exactly the limit logs in, and the settings are the session's.
    r = RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB,
                  params={**settings, "options": " ".join(f"-c app.o{i}=2" for i in range(6))},
                  timeout=10).connect()
    assert r.rows("select current_setting('app.s249'), current_setting('app.o5')") == [["1", "2"]]
    r.terminate()


def test_oversized_message_08P01(pv_limits):
    pv = pv_limits
    with pv.connect() as healthy:
        assert healthy.execute("select 1").fetchone() == (1,)
        # control: a query just under the limit works
        r = raw(pv).connect()
        big = "x" * (900 * 1024)
        assert r.rows(f"select length('{big}')") == [[str(len(big))]]
        # a 2 MB Query with max_message_bytes 1 MB: 08P01 and closed
        payload = query_message("select '" + "y" * (2 * 1024 * 1024) + "'")
        sender_error = []

        def send():
            try:
                r.sock.sendall(payload)
            except OSError as e:  # the server may close before reading it all: fine
                sender_error.append(e)

        th = threading.Thread(target=send, daemon=True)
        th.start()
        err, closed, kinds = read_error_then_close(r.sock, 5)
        th.join(5)
        r.sock.close()
        assert err is not None, f"no ErrorResponse (closed={closed}, messages={kinds})"
        assert err.get("C") == "08P01", err
        assert_pgvalve_message(err.get("M", ""))
        assert closed, "connection not closed after an oversized message"
        assert healthy.execute("select 2").fetchone() == (2,)
    with pv.connect() as c:
        assert c.execute("select 3").fetchone() == (3,)


# --- auth timeout ------------------------------------------------------------------------------

@pytest.fixture
def pv_auth_timeout(pgvalve):
    return pgvalve(mode="transaction", pool_size=2, limits={"auth_timeout_ms": 500})


def test_auth_timeout_silent_client(pv_auth_timeout):
    pv = pv_auth_timeout
    with pv.connect() as healthy:
        s = socket.create_connection(("127.0.0.1", pv.port), timeout=5)
        t0 = time.monotonic()
        err, closed, kinds = read_error_then_close(s, 4)
        elapsed = time.monotonic() - t0
        s.close()
        assert closed, "a client that sends nothing was not disconnected within 4 s"
        assert elapsed <= 2.0, f"closed after {elapsed:.2f}s with auth_timeout_ms 500"
        if err is not None:
            assert err.get("C") == "08P01", err
        time.sleep(0.6)  # an authenticated client is not subject to the auth timeout
        assert healthy.execute("select 1").fetchone() == (1,)


def test_auth_timeout_stalled_in_scram(pv_auth_timeout):
    pv = pv_auth_timeout
    s = socket.create_connection(("127.0.0.1", pv.port), timeout=5)
    try:
        s.sendall(startup_packet({"user": APP_USER, "database": APP_DB}))
        t0 = time.monotonic()
        kind, payload = read_message(s)
        assert kind == b"R", (kind, payload)
        # never answer the authentication request
        err, closed, kinds = read_error_then_close(s, 4)
        elapsed = time.monotonic() - t0
    finally:
        s.close()
    assert closed, "a client stalled in authentication was not disconnected within 4 s"
    assert elapsed <= 2.0, f"closed after {elapsed:.2f}s with auth_timeout_ms 500"
    if err is not None:
        assert err.get("C") == "08P01", err
    with pv.connect() as c:
        assert c.execute("select 1").fetchone() == (1,)
