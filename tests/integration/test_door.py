"""The door (DESIGN §3 limits, §7; issue 7): every accepted socket counts against
pool.max_client_connections — clients still logging in and admin console sessions too — and
limits.connections_per_ip / connect_rate_per_ip / connect_burst_per_ip limit each source address.
A refused client reads 53300 and a `pgvalve:` message in answer to its startup packet; a cancel
request still gets through a full door; out of file descriptors, the accept loop pauses instead
of spinning."""

import os
import socket
import struct
import subprocess
import threading
import time

import psycopg
import pytest

from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER, SANITIZED
from pgcluster import APP_DB, APP_USER, wait_until
from test_limits import assert_closed, assert_pgvalve_message, raw
from pgwire import PgWireError


def refused(pv, fragment):
    r = raw(pv)
    with pytest.raises(PgWireError) as ei:
        r.connect()
    assert ei.value.sqlstate == "53300", ei.value.fields
    assert_pgvalve_message(ei.value.message)
    assert fragment in ei.value.message, ei.value.message
    assert_closed(r.sock)
    return ei.value.message


def bare_sockets(pv, n):
    """Connected sockets that never send a byte: clients still logging in."""
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", pv.port), timeout=5)
        out.append(s)
    return out


def can_connect(pv):
    try:
        with psycopg.connect(pv.dsn(), autocommit=True, connect_timeout=5) as c:
            return c.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_sockets_still_logging_in_and_admin_sessions_count(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=2, max_client_connections=4, users=APP_AND_OPS,
                 limits={"auth_timeout_ms": 20000})
    admin = psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                            autocommit=True)
    app = pv.connect()
    silent = bare_sockets(pv, 2)
    try:
        wait_until(lambda: pv.open_client_sockets() == 4, 5, interval=0.05,
                   message="pgvalve accepted the two silent sockets")
        msg = refused(pv, "pool.max_client_connections = 4")
        assert "too many client connections" in msg
        # Those admitted are unaffected.
        assert app.execute("select 1").fetchone() == (1,)
        assert admin.execute("SHOW VERSION").fetchone()
        # A silent socket that goes away frees its place.
        silent.pop().close()
        wait_until(lambda: can_connect(pv), 5, interval=0.2, message="a freed place")
    finally:
        for s in silent:
            s.close()
        app.close()
        admin.close()


def test_cancel_gets_through_a_full_door(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=2, max_client_connections=1)
    conn = pv.connect()
    try:
        assert not can_connect(pv)  # full
        timer = threading.Timer(1.0, conn.cancel)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
        assert time.monotonic() - t0 < 10
        timer.join()
        assert conn.execute("select 2").fetchone() == (2,)
    finally:
        conn.close()


def test_a_refused_tls_client_gets_no_handshake_and_reads_53300(pgvalve, tmp_path):
    """A client refused at the door costs no TLS handshake: its SSLRequest is answered 'N' and the
    53300 follows in plaintext, which libpq (sslmode=prefer) shows; with tls.mode require a
    plaintext client refused at the door reads the same 53300 (it got 28000 TLS is required)."""
    from pgwire import parse_fields, read_message, recv_exact, startup_packet
    from test_tls import SSL_REQUEST, make_ca
    make_ca(tmp_path, "server")
    for mode in ("prefer", "require"):
        pv = pgvalve(mode="transaction", pool_size=1, max_client_connections=1,
                     tls={"cert": str(tmp_path / "server.crt"),
                          "key": str(tmp_path / "server.key"), "mode": mode})
        held = pv.connect(**({"sslmode": "require"} if mode == "require" else {}))
        try:
            s = socket.create_connection(("127.0.0.1", pv.port), timeout=5)
            s.sendall(SSL_REQUEST)
            assert recv_exact(s, 1) == b"N"
            # A large packet is read past, not parsed.
            params = {"user": APP_USER, "database": APP_DB}
            params.update({f"p{i}": "v" for i in range(1200)})
            s.sendall(startup_packet(params))
            kind, payload = read_message(s)
            fields = parse_fields(payload)
            assert kind == b"E" and fields.get("C") == "53300", (kind, fields)
            assert "too many client connections" in fields["M"], fields
            assert_closed(s)
            s.close()
            if mode == "prefer":
                r = subprocess.run(["psql", pv.dsn(sslmode="prefer"), "-c", "select 1"],
                                   capture_output=True, text=True, timeout=20)
                assert r.returncode != 0 and "too many client connections" in r.stderr, r.stderr
            else:
                r = raw(pv)
                with pytest.raises(PgWireError) as ei:
                    r.connect()
                assert ei.value.sqlstate == "53300", ei.value.fields
        finally:
            held.close()


def cancel_guess(pv):
    """A CancelRequest with a random key; True if pgvalve closed without a byte, as it must."""
    s = socket.create_connection(("127.0.0.1", pv.port), timeout=5)
    try:
        s.sendall(struct.pack("!iiii", 16, 80877102, int.from_bytes(os.urandom(3), "big") + 1,
                              int.from_bytes(os.urandom(4), "big", signed=True)))
        return s.recv(1) == b""
    finally:
        s.close()


def test_cancel_requests_count_against_the_connect_rate(pgvalve):
    """A cancel request takes a token of limits.connect_rate_per_ip as a connection does; one the
    rate refuses is closed unanswered, as PostgreSQL answers no cancel request. Through a door
    refusing connections at 1 a second, cancel keys were guessed at 24,000 a second. Keys that
    match no client are counted."""
    from test_cancel import run_and_cancel
    from test_http import metric, scrape

    rate, burst = 2, 2
    pv = pgvalve(mode="transaction", pool_size=2,
                 limits={"connect_rate_per_ip": rate, "connect_burst_per_ip": burst})
    time.sleep(burst / rate + 0.2)  # the fixture's readiness probes took tokens: refill
    conn = pv.connect(autocommit=True)
    try:
        time.sleep(burst / rate + 0.2)
        t0 = time.monotonic()
        assert all(cancel_guess(pv) for _ in range(300))
        elapsed = time.monotonic() - t0
        samples = scrape(pv)
        checked = metric(samples, "pgvalve_cancel_requests_total", result="unknown_key")
        dropped = metric(samples, "pgvalve_cancel_requests_total", result="connect_rate_per_ip")
        # The burst, plus what the bucket refilled meanwhile: no more keys were looked up.
        assert 1 <= checked <= burst + int(elapsed * rate) + 1, (checked, elapsed)
        assert checked + dropped == 300, (checked, dropped)
        # Within the rate, a client's cancel gets through as before.
        time.sleep(1 / rate + 0.2)
        exc, _ = run_and_cancel(conn, delay=0.5)
        assert exc.sqlstate == "57014", repr(exc)
        assert metric(scrape(pv), "pgvalve_cancel_requests_total", result="matched") == 1
    finally:
        conn.close()


def test_connections_per_ip(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=2, limits={"connections_per_ip": 3})
    conns = [pv.connect() for _ in range(3)]
    try:
        msg = refused(pv, "limits.connections_per_ip = 3")
        assert "too many connections from 127.0.0.1" in msg
        for c in conns:
            assert c.execute("select 1").fetchone() == (1,)
        conns.pop().close()
        wait_until(lambda: can_connect(pv), 5, interval=0.2, message="a freed place")
    finally:
        for c in conns:
            c.close()


def test_connect_rate_per_ip_token_bucket(pgvalve):
    rate, burst = 2, 3
    pv = pgvalve(mode="transaction", pool_size=2,
                 limits={"connect_rate_per_ip": rate, "connect_burst_per_ip": burst})
    time.sleep(burst / rate + 0.2)  # the fixture's readiness probes took tokens: refill
    ok, message, t0 = 0, None, time.monotonic()
    while ok <= 20:
        r = raw(pv)
        try:
            r.connect()
            r.sock.close()
            ok += 1
        except PgWireError as e:
            assert e.sqlstate == "53300", e.fields
            message = e.message
            assert_closed(r.sock)
            break
    elapsed = time.monotonic() - t0
    assert message is not None, f"{ok} connections in {elapsed:.2f}s, none refused"
    assert_pgvalve_message(message)
    assert "connecting too fast from 127.0.0.1" in message
    assert "limits.connect_rate_per_ip = 2 per second" in message
    # The burst, plus what the bucket refilled while they were made: no more.
    assert burst <= ok <= burst + int(elapsed * rate) + 1, (ok, elapsed)
    time.sleep(1 / rate + 0.2)  # one token back
    assert can_connect(pv)


def test_reload_turns_a_limit_on_for_sockets_already_open(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=2)
    conns = [pv.connect() for _ in range(2)]
    try:
        cfg = dict(pv.config)
        cfg["limits"] = {"connections_per_ip": 2}
        pv.reload(cfg)
        wait_until(lambda: "reload_ok" in pv.log_text(), 5, message="reload applied")
        refused(pv, "limits.connections_per_ip = 2")
    finally:
        for c in conns:
            c.close()


def test_a_refusal_flood_is_counted_and_the_unanswered_are_logged(pgvalve):
    """Past 256 refusals being answered at once, refused sockets are closed unanswered: they are
    counted (pgvalve_client_refusals_dropped_total) and said in the log at most once per 10 s,
    as every door refusal is counted by its reason."""
    from test_http import metric, scrape

    pv = pgvalve(mode="transaction", pool_size=1, max_client_connections=5,
                 limits={"auth_timeout_ms": 20000})
    held = bare_sockets(pv, 5)
    flood = []
    try:
        wait_until(lambda: pv.open_client_sockets() == 5, 5, message="the door full")
        # Silent: each refused one waits (up to 2 s) for a startup packet, holding its place
        # among the 256 being answered, so the rest of the 400 are closed at once.
        flood = bare_sockets(pv, 400)
        wait_until(lambda: metric(scrape(pv), "pgvalve_client_connections_refused_total",
                                  reason="max_client_connections") == 400, 20,
                   message="every refused socket counted")
        dropped = metric(scrape(pv), "pgvalve_client_refusals_dropped_total")
        assert 1 <= dropped <= 400 - 256, dropped
        lines = [line for line in pv.log_text().splitlines()
                 if "event=client_refusals_dropped" in line]
        # Once per 10 s per worker thread (two here), not once per socket.
        assert 1 <= len(lines) <= 2, lines
        assert "dropped=" in lines[0] and "action=" in lines[0], lines[0]
    finally:
        for s in held + flood:
            s.close()


# UBSan's vptr check probes memory through a pipe: with no descriptor left it takes every virtual
# call for a bad one and aborts the process (a report of the tool, not of pgvalve).
@pytest.mark.skipif(SANITIZED, reason="UBSan needs a spare file descriptor for its vptr check")
def test_out_of_file_descriptors_pauses_accepting(pgvalve, tmp_path):
    """With a tiny descriptor limit, clients beyond it wait in the listen queue while pgvalve
    pauses its accept loop (no spinning at 100% CPU); once clients leave, the waiting ones get
    in."""
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0, workers=1)
    pid = pv.proc.pid
    # Lower the running process's limit: the few descriptors above it (epoll, listeners, the
    # pool's server connection) leave room for only a handful of clients.
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    limit = fds + 3
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:{limit}"], check=True)
    held = bare_sockets(pv, 8)  # accepted up to the limit, the rest wait in the listen queue
    # A probe queued on the HTTP port fails its accept too, every 100 ms. Sent once the worker
    # has taken the last descriptors: sooner, the HTTP thread could take one of them first.
    wait_until(lambda: "event=accept_failed" in pv.log_text(), 5,
               message="the worker out of descriptors")
    held.append(socket.create_connection(("127.0.0.1", pv.admin_port), timeout=5))
    try:
        time.sleep(1.0)
        cpu0 = sum(int(x) for x in open(f"/proc/{pid}/stat").read().split()[13:15])
        time.sleep(2.0)
        cpu1 = sum(int(x) for x in open(f"/proc/{pid}/stat").read().split()[13:15])
        ticks = os.sysconf("SC_CLK_TCK")
        assert (cpu1 - cpu0) / ticks < 0.5, f"accept loop spun: {(cpu1 - cpu0) / ticks:.2f}s CPU in 2s"
        assert "accept_failed" in pv.log_text()
        # Each listener says it once per 10 s, not at every pause.
        log = pv.log_text()
        assert log.count("event=accept_failed") == 1, log[-3000:]
        assert log.count("event=http_accept_failed") == 1, log[-3000:]
    finally:
        for s in held:
            s.close()
    wait_until(lambda: can_connect(pv), 10, interval=0.3, message="accepting again")
    assert pv.alive()


def test_open_files_limit_raised_to_the_hard_limit_and_logged(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=2)
    with open(f"/proc/{pv.proc.pid}/limits") as f:
        line = next(l for l in f if l.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard, line
    import re
    m = re.search(r"event=open_files_limit limit=(\d+) needed=(\d+)", pv.log_text())
    assert m and m.group(1) == soft, pv.log_text()[-2000:]
