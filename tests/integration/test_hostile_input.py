"""Hostile clients against memory and time bounds (DESIGN §7, §8 "an idle client holds no
buffer"; docs/configuration.md `limits.message_timeout_ms`, `limits.message_memory_bytes`,
"Per-client limits").

A message header that announces a huge length must not make pgvalve allocate it; a client that
stalls half-way through a message holds at most what it actually sent, no server, and only for
`message_timeout_ms`; the process-wide `message_memory_bytes` refuses what would not fit; bytes
that are not a protocol 3.0 message are refused on their first byte; results pass through without
being held; and each per-client cap is refused with 53400/54000 while other clients go on.

Memory is read from /proc/<pgvalve pid>/status (VmRSS)."""

from __future__ import annotations

import struct
import threading
import time

import psycopg
import pytest

from itutil import (SANITIZED, MiB, assert_pgvalve_message, drain_notifies, one, raw_login,
                    rss_bytes, settle_rss)
from pgcluster import APP_DB, APP_USER
from pgwire import (ConnectionClosed, PgWireError, parse_fields, query_message,
                    read_error_then_close, read_message, startup_packet)
from pgwire_ext import ExtClient, bind, execute, parse, sync

HUGE = 200_000_000  # what the hostile headers announce (< the default max_message_bytes)


def warm_up(pv, clients: int = 3):
    """Run a little normal traffic first, so the pools, thread arenas and buffer free lists that
    any pgvalve has after its first queries exist before the baseline is taken."""
    conns = [pv.connect() for _ in range(clients)]
    try:
        for c in conns:
            for i in range(5):
                assert one(c, "select %s::int", (i,)) == i
            assert len(one(c, "select repeat('w', 200000)")) == 200000
    finally:
        for c in conns:
            c.close()
    r = raw_login(pv)
    r.rows("select 1")
    r.terminate()


def timed_select_1(pv) -> float:
    t0 = time.monotonic()
    with psycopg.connect(pv.dsn(), autocommit=True) as c:
        assert one(c, "select 1") == 1
    return time.monotonic() - t0


def assert_fatal(err, sqlstate):
    assert err is not None, "no ErrorResponse"
    assert err.get("C") == sqlstate, err
    assert err.get("S") == "FATAL", err
    assert_pgvalve_message(err.get("M"))


# --- headers announcing 200 MB -------------------------------------------------------------------

def test_header_only_announcing_200MB(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=2, max_overflow=0,
                 limits={"message_timeout_ms": 60000})
    warm_up(pv)
    healthy = pv.connect()

    # one client
    one_client = raw_login(pv)
    base = settle_rss(pv.pid)
    one_client.sock.sendall(b"Q" + struct.pack("!I", HUGE))
    grown = settle_rss(pv.pid) - base
    assert grown <= 1 * MiB, f"RSS grew by {grown / MiB:.1f} MiB for one 5-byte header"

    # 200 clients at once
    n = 200
    base = settle_rss(pv.pid)
    holders = []
    try:
        for _ in range(n):
            holders.append(raw_login(pv))
        for h in holders:
            h.sock.sendall(b"Q" + struct.pack("!I", HUGE))
        grown = settle_rss(pv.pid, 0.5) - base
        print(f"200 logged-in clients each holding a 200 MB header: RSS +{grown / MiB:.1f} MiB")
        assert grown <= n * MiB, f"RSS grew by {grown / MiB:.1f} MiB for {n} clients"
        # a normal client is served while they hold (blocked, it would wait for the 60 s
        # message timeout)
        t0 = time.monotonic()
        assert one(healthy, "select 1") == 1
        assert time.monotonic() - t0 < 5.0
        assert timed_select_1(pv) < 5.0
        # nobody was disconnected: the holders are still waiting for their bodies
        for h in holders[:5]:
            h.sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                h.sock.recv(1)
    finally:
        for h in holders + [one_client]:
            h.close_abruptly()
        healthy.close()
    assert timed_select_1(pv) < 5.0


# --- stalled senders -------------------------------------------------------------------------------

def test_stalled_senders_hold_little_and_are_cut_after_message_timeout(pgvalve):
    timeout_ms = 3000
    # A checkout that waited for a stalled sender's server would fail with 53300 after 1 s,
    # long before the senders are cut.
    pv = pgvalve(mode="transaction", pool_size=2, max_overflow=0, checkout_timeout_ms=1000,
                 limits={"message_timeout_ms": timeout_ms})
    warm_up(pv)
    n = 40
    senders = [raw_login(pv) for _ in range(n)]
    others = [pv.connect() for _ in range(3)]
    try:
        base = settle_rss(pv.pid)
        start = b"Q" + struct.pack("!I", HUGE) + b"select '" + b"x" * (MiB - 8)
        sent_at = []
        for s in senders:
            s.sock.sendall(start)
            sent_at.append(time.monotonic())
        time.sleep(0.3)
        peak = rss_bytes(pv.pid)
        measured_at = time.monotonic()
        grown = peak - base
        print(f"{n} senders stalled after 1 MiB of a 200 MB message: RSS +{grown / MiB:.1f} MiB "
              f"(measured {measured_at - sent_at[0]:.2f}s after the first)")
        assert grown <= n * 4 * MiB, f"RSS grew by {grown / MiB:.1f} MiB for {n} stalled senders"

        # the stalled senders hold no server: with pool_size 2, others run queries meanwhile,
        # transactions too
        for i, c in enumerate(others):
            for j in range(5):
                assert one(c, "select %s::int", (i * 10 + j,)) == i * 10 + j
        with others[0].transaction(), others[1].transaction():
            p0 = one(others[0], "select pg_backend_pid()")
            p1 = one(others[1], "select pg_backend_pid()")
            assert p0 != p1

        # after message_timeout_ms each sender gets FATAL 08P01 and is closed
        deadline = sent_at[-1] + timeout_ms / 1000 + 3.0
        for s, at in zip(senders, sent_at):
            err, closed, kinds = read_error_then_close(s.sock, max(0.1, deadline -
                                                                   time.monotonic()))
            elapsed = time.monotonic() - at
            assert_fatal(err, "08P01")
            assert closed, f"sender not closed after its error (messages {kinds})"
            assert elapsed >= timeout_ms / 1000 * 0.8, \
                f"sender cut after {elapsed:.2f}s, before message_timeout_ms ({timeout_ms})"
        last = time.monotonic() - sent_at[-1]
        assert last <= timeout_ms / 1000 + 3.0, f"last sender cut {last:.2f}s after it stalled"

        # their memory is given back
        after = settle_rss(pv.pid, 1.0)
        print(f"RSS after they were cut: {(after - base) / MiB:+.1f} MiB from the baseline "
              f"(peak {(peak - base) / MiB:+.1f} MiB)")
        assert SANITIZED or after - base <= max(8 * MiB, (peak - base) // 4), \
            f"RSS stays {(after - base) / MiB:.1f} MiB above the baseline " \
            f"(peak was +{(peak - base) / MiB:.1f} MiB)"
        for c in others:
            assert one(c, "select 2") == 2
    finally:
        for s in senders:
            s.close_abruptly()
        for c in others:
            c.close()


# --- message_memory_bytes -----------------------------------------------------------------------

def test_message_memory_bytes_refuses_what_does_not_fit(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=2, max_overflow=0,
                 limits={"message_memory_bytes": 4 * MiB})
    healthy = pv.connect()
    try:
        # a 1 MB query fits
        r = raw_login(pv)
        big = "x" * 1_000_000
        assert r.rows(f"select length('{big}')") == [[str(len(big))]]
        r.terminate()
        assert one(healthy, "select length(%s)", (big,)) == len(big)

        # an 8 MB query does not: FATAL 53400 and closed
        r = raw_login(pv)
        payload = query_message("select length('" + "y" * 8_000_000 + "')")

        def send():
            try:
                r.sock.sendall(payload)
            except OSError:
                pass  # closed before it was all read: fine

        th = threading.Thread(target=send, daemon=True)
        th.start()
        err, closed, kinds = read_error_then_close(r.sock, 10)
        th.join(10)
        r.sock.close()
        assert_fatal(err, "53400")
        assert closed, f"connection not closed after 53400 (messages {kinds})"

        # the budget was given back: 1 MB queries still work, other clients unaffected
        r = raw_login(pv)
        assert r.rows(f"select length('{big}')") == [[str(len(big))]]
        r.terminate()
        assert one(healthy, "select 3") == 3
    finally:
        healthy.close()


def read_answer(sock, timeout: float) -> tuple[list[bytes], list[str]]:
    """Messages up to ReadyForQuery: ([DataRow payloads], [SQLSTATEs of errors])."""
    sock.settimeout(timeout)
    rows, errors = [], []
    while True:
        kind, payload = read_message(sock)
        if kind == b"D":
            rows.append(payload)
        elif kind == b"E":
            errors.append(parse_fields(payload).get("C"))
        elif kind == b"Z":
            return rows, errors


def test_a_large_message_cannot_take_the_memory_ordinary_ones_need(pgvalve):
    """The reviewer's case at 1/32 scale (there: 129 MiB of a 200 MB message, 256 MiB budget).
    One client announces a 6 MB message, sends 5.5 MiB of it and pauses. Messages over 1 MiB may
    hold three quarters of message_memory_bytes together, so a connected client's 20 kB
    statement, a new client's login with a 5 kB startup packet and its 20 kB statement all go on
    at once. A second large message that does not fit beside the first waits (its client is not
    read) and goes on once the first client's memory is given back, instead of being refused."""
    pv = pgvalve(mode="transaction", pool_size=2, max_overflow=0,
                 limits={"message_memory_bytes": 8 * MiB, "message_timeout_ms": 20000})
    healthy = pv.connect()
    statement = "v" * 20000
    hog = second = None
    try:
        assert one(healthy, "select length(%s)", (statement,)) == 20000
        hog = raw_login(pv)
        hog.sock.sendall(b"Q" + struct.pack("!I", 6_000_000))
        # Past 4 MiB: a buffer that doubled would take all 8 MiB.
        hog.sock.sendall(b"select '" + b"x" * (5 * MiB + MiB // 2))
        time.sleep(0.5)  # pgvalve reads it all

        t0 = time.monotonic()
        assert one(healthy, "select length(%s)", (statement,)) == 20000
        fresh = raw_login(pv, application_name="a" * 5000)
        assert fresh.rows(f"select length('{statement}')") == [["20000"]]
        fresh.terminate()
        with psycopg.connect(pv.dsn(), autocommit=True) as c:
            assert one(c, "select length(%s)", ("w" * 20000,)) == 20000
        assert time.monotonic() - t0 < 5.0

        # A second large message: 2 MB, about 1.9 MiB, where 0.28 MiB of the large messages'
        # share is left.
        second = raw_login(pv)
        big = "y" * 2_000_000
        payload = query_message(f"select length('{big}')")
        sender = threading.Thread(target=lambda: second.sock.sendall(payload), daemon=True)
        sender.start()
        time.sleep(1.0)
        second.sock.settimeout(0.05)
        with pytest.raises(TimeoutError):  # neither answered nor refused: it waits
            second.sock.recv(1)
        hog.close_abruptly()
        rows, errors = read_answer(second.sock, 10)
        sender.join(10)
        assert errors == [], errors
        assert len(rows) == 1 and rows[0].endswith(b"2000000"), rows
        assert one(healthy, "select length(%s)", (statement,)) == 20000
    finally:
        for r in (hog, second):
            if r is not None:
                r.close_abruptly()
        healthy.close()


# --- bytes that are not a client message -------------------------------------------------------------

NOT_A_MESSAGE = {
    "startup_message": startup_packet({"user": APP_USER, "database": APP_DB}),
    "ssl_request": struct.pack("!II", 8, 80877103),
    "nul_byte": b"\x00",
    "password_message_type": b"p",
    "backend_type_Z": b"Z",
}


@pytest.fixture
def pv_strict(pgvalve):
    return pgvalve(mode="transaction", pool_size=2,
                   limits={"max_message_bytes": MiB, "message_timeout_ms": 30000})


@pytest.mark.parametrize("case", list(NOT_A_MESSAGE))
def test_not_a_client_message_after_login_08P01_at_once(pv_strict, case):
    pv = pv_strict
    with pv.connect() as healthy:
        r = raw_login(pv)
        t0 = time.monotonic()
        r.sock.sendall(NOT_A_MESSAGE[case])
        # well within the 30 s message_timeout_ms: refused without waiting for more bytes
        err, closed, kinds = read_error_then_close(r.sock, 10)
        elapsed = time.monotonic() - t0
        r.sock.close()
        assert_fatal(err, "08P01")
        assert closed, f"not closed (messages {kinds})"
        assert elapsed < 10, f"refused after {elapsed:.2f}s; it must not wait for more bytes"
        assert one(healthy, "select 1") == 1


BAD_LENGTHS = {
    "query_length_0": (b"Q", 0),
    "query_length_3": (b"Q", 3),
    "parse_length_2": (b"P", 2),
    "sync_length_1": (b"S", 1),
    "query_over_max_message_bytes": (b"Q", MiB + 100),
    "bind_length_2GiB": (b"B", 0x7FFFFFFF),
    "execute_length_4GiB": (b"E", 0xFFFFFFFF),
}


@pytest.mark.parametrize("case", list(BAD_LENGTHS))
def test_bad_length_08P01_at_once(pv_strict, case):
    pv = pv_strict
    tag, length = BAD_LENGTHS[case]
    with pv.connect() as healthy:
        r = raw_login(pv)
        t0 = time.monotonic()
        r.sock.sendall(tag + struct.pack("!I", length))
        err, closed, kinds = read_error_then_close(r.sock, 10)
        elapsed = time.monotonic() - t0
        r.sock.close()
        assert_fatal(err, "08P01")
        assert closed, f"not closed (messages {kinds})"
        assert elapsed < 10, f"refused after {elapsed:.2f}s (message_timeout_ms is 30 s)"
        assert one(healthy, "select 1") == 1


def test_valid_message_up_to_max_message_bytes(pv_strict):
    """The control for the two tests above: a message just under the limit is accepted."""
    r = raw_login(pv_strict)
    try:
        s = "z" * (MiB - 1000)
        assert r.rows(f"select length('{s}')") == [[str(len(s))]]
    finally:
        r.terminate()


# --- results pass through ------------------------------------------------------------------------

def peak_growth(pv, work) -> int:
    """The RSS pgvalve grows by (sampled every 5 ms) while `work()` runs."""
    base = settle_rss(pv.pid)
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(pv.pid))
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        work()
    finally:
        stop.set()
        th.join(5)
    return peak[0] - base


def test_huge_result_is_not_held(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=2)
    warm_up(pv)

    def run():
        with pv.connect() as c:
            for _ in range(2):
                assert len(one(c, "select repeat('x', 50000000)")) == 50_000_000
            # the extended protocol too
            assert len(one(c, "select repeat('y', %s)", (50_000_000,))) == 50_000_000
    grown = peak_growth(pv, run)
    print(f"peak RSS during 50 MB results: +{grown / MiB:.1f} MiB")
    assert grown < 16 * MiB, f"pgvalve's RSS grew by {grown / MiB:.1f} MiB for a 50 MB row"


# --- statements whose parse would cost far more than their bytes ------------------------------

def test_statements_costly_to_parse_are_not_parsed_whole(cluster, pgvalve):
    # PostgreSQL's parser and its tree take about a hundred to a thousand times a statement's
    # size: a 0.4 MiB SELECT of 200,000 constants made the statistics take 1.6 GiB, a 1.6 MiB
    # IN list the read/write split 180 MiB.
    replica = f"127.0.0.1:{cluster.replicas[0].port}"
    pv = pgvalve(mode="transaction", pool_size=2,
                 databases={APP_DB: {"shards": [{"name": "s0",
                                                 "primary": f"127.0.0.1:{cluster.primary.port}",
                                                 "replicas": [replica]}]}})
    warm_up(pv)
    constants = "select " + ",".join("1" for _ in range(200_000))
    in_list = "select 1 where 1 in (" + ",".join(str(i) for i in range(250_000)) + ")"

    def run():
        with pv.connect() as c:
            with pytest.raises(psycopg.errors.TooManyColumns):  # PostgreSQL's answer
                c.execute(constants, prepare=False)
            assert c.execute(in_list, prepare=False).fetchone() == (1,)
    grown = peak_growth(pv, run)
    print(f"peak RSS for 0.4-1.6 MiB statements: +{grown / MiB:.1f} MiB")
    assert grown < 64 * MiB, f"pgvalve's RSS grew by {grown / MiB:.1f} MiB"
    with pv.connect() as c:
        # Not parsed, so not proven a read: the primary answers.
        port = c.execute("select inet_server_port() where 1 in (" +
                         ",".join(str(i) for i in range(60_000)) + ")", prepare=False).fetchone()
        assert port == (cluster.primary.port,)


# --- requests in flight --------------------------------------------------------------------------

def test_pipeline_past_the_in_flight_cap_without_sync_completes(pgvalve):
    """10,000 Bind/Execute pairs before the client's Sync: pgvalve stops reading the client at
    4,096 unanswered requests (asking the server to flush what it holds) and reads it again as
    the answers come; every answer arrives, nothing hangs, and the server goes back to the pool
    afterwards."""
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0)
    r = raw_login(pv, timeout=30)
    n = 10_000
    batch = parse("", "select 1") + (bind("") + execute()) * n + sync()
    # Sent from a thread while this one reads, as a pipelining driver does: the answers must not
    # wait for the whole batch to be sent.
    sender = threading.Thread(target=r.sock.sendall, args=(batch,), daemon=True)
    sender.start()
    counts = {}
    try:
        while True:
            kind, payload = read_message(r.sock)
            counts[kind] = counts.get(kind, 0) + 1
            assert kind != b"E", f"error in the pipeline: {payload!r}"
            if kind == b"Z":
                break
    finally:
        sender.join(10)
    assert counts.get(b"2") == n and counts.get(b"C") == n and counts.get(b"D") == n, counts
    r.sock.sendall(query_message("select 2"))
    while True:
        kind, payload = read_message(r.sock)
        if kind == b"Z":
            break
    r.close_abruptly()
    with pv.connect() as c:  # pool_size 1: the server was given back
        assert one(c, "select 3") == 3


# --- requests among COPY data ---------------------------------------------------------------------

@pytest.mark.parametrize("when", ["before_copy_in_response", "among_the_data"])
def test_request_during_copy_from_stdin_08P01(pgvalve, when):
    """PostgreSQL takes any request that comes during COPY FROM STDIN as the end of the COPY and
    never answers it; pgvalve refuses such a client rather than lose track of whose answer is
    whose, and the pool's only server is replaced for the next client."""
    pv = pgvalve(mode="transaction", pool_size=1)
    with pv.connect() as admin:
        admin.execute("drop table if exists hostile_copy")
        admin.execute("create table hostile_copy(id int)")
    r = raw_login(pv)
    copy = query_message("copy hostile_copy from stdin")
    insert = query_message("insert into hostile_copy values (42)")
    if when == "before_copy_in_response":
        r.sock.sendall(copy + insert)
    else:
        r.sock.sendall(copy)
        assert read_message(r.sock)[0] == b"G"
        rows = b"1\n2\n"
        r.sock.sendall(b"d" + struct.pack("!I", 4 + len(rows)) + rows + insert)
    err, closed, kinds = read_error_then_close(r.sock, 10)
    r.sock.close()
    assert_fatal(err, "08P01")
    assert "CopyDone" in err["M"]
    assert closed, f"not closed (messages {kinds})"
    assert b"Z" not in kinds
    with pv.connect() as after:
        assert one(after, "select count(*) from hostile_copy") == 0
        after.execute("drop table hostile_copy")


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("how", ["libpq", "one_write"])
def test_terminate_right_after_copydone_keeps_the_copy(cluster, pgvalve, mode, how):
    """libpq's PQputCopyEnd then PQfinish, without PQgetResult (and a raw client sending the
    COPY, its data, CopyDone and Terminate in one write): PostgreSQL finishes the COPY before it
    reads the Terminate. pgvalve closed the client at once and cancelled and closed the server,
    so in transaction mode the COPY was often lost (in one write, every time)."""
    from pgcluster import wait_until
    from pgwire import message
    for sql in ("drop table if exists copy_then_leave",
                "create table copy_then_leave(id int, note text)",
                "grant all on copy_then_leave to app"):
        cluster.primary.psql(sql, dbname=APP_DB)
    pv = pgvalve(mode=mode, pool_size=1)
    rows = b"".join(b"%d\tsome text to copy %d\n" % (i, i) for i in range(100))

    def idle_servers():
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/metrics", timeout=2) as r:
            return sum(float(line.split()[-1]) for line in r.read().decode().splitlines()
                       if line.startswith("pgvalve_server_connections{")
                       and 'state="idle"' in line)
    with pv.connect() as warm:
        warm.execute("select 1")
    for attempt in range(5):
        # The server the last check used back in the pool first: the COPY's checkout is then
        # served at once (the libpq way sends its data only once the server took the COPY).
        wait_until(lambda: idle_servers() >= 1, 5, message="the server back in the pool")
        if how == "libpq":
            conn = psycopg.connect(pv.dsn(), autocommit=True)
            pgconn = conn.pgconn
            result = pgconn.exec_(b"copy copy_then_leave from stdin")
            assert result.status == psycopg.pq.ExecStatus.COPY_IN
            assert pgconn.put_copy_data(rows) == 1
            assert pgconn.put_copy_end() == 1
            pgconn.finish()
        else:
            r = raw_login(pv)
            r.sock.sendall(query_message("copy copy_then_leave from stdin") + message(b"d", rows) +
                           message(b"c", b"") + message(b"X", b""))
            # Until pgvalve closes (after the Terminate): a client that hangs up while its
            # request still waits for a server (another worker's, handed over) never runs it.
            r.sock.settimeout(10)
            try:
                while r.sock.recv(65536):
                    pass
            except OSError:
                pass
            r.sock.close()
        want = 100 * (attempt + 1)
        with pv.connect() as c:
            wait_until(lambda: one(c, "select count(*) from copy_then_leave") >= want, 5,
                       message=f"the COPY of attempt {attempt}")
        assert "server_closed_dirty" not in pv.log_text(), "no server was cancelled"
    with pv.connect() as c:  # pool_size 1: the server went back each time
        assert one(c, "select count(*) from copy_then_leave") == 500
    cluster.primary.psql("drop table copy_then_leave", dbname=APP_DB)


# --- per-client caps -------------------------------------------------------------------------------

@pytest.fixture
def pv_caps(pgvalve):
    return pgvalve(mode="transaction", pool_size=2, max_overflow=0)


def check_bystander(pv, bystander):
    """Another client of the same pgvalve: its prepared statement, SET and queries work."""
    assert bystander.execute("select %s::int + 1", (41,), prepare=True).fetchone() == (42,)
    bystander.execute("SET work_mem = '5MB'")
    assert one(bystander, "show work_mem") == "5MB"
    assert one(bystander, "select count(*) from generate_series(1, 100)") == 100


def test_5001st_prepared_statement_53400(pv_caps):
    pv = pv_caps
    bystander = pv.connect()
    c = ExtClient.login(pv)
    try:
        check_bystander(pv, bystander)
        frames = []
        for i in range(5001):
            frames += [parse(f"s{i}", f"select {i}"), sync()]
        r = c.run(frames)
        assert len(r.errors) == 1, r.errors[:3]
        assert r.errors[0]["C"] == "53400", r.errors[0]
        assert r.errors[0].get("S") == "ERROR", r.errors[0]
        assert_pgvalve_message(r.errors[0]["M"])
        assert r.kinds == b"1Z" * 5000 + b"EZ", r.kinds[-10:]
        # the 5000 stay usable; the refused one does not exist
        for i in (0, 1, 2500, 4999):
            assert c.execute(f"s{i}") == [[str(i)]]
        r = c.run([bind("s5000"), execute(), sync()])
        assert r.errors and r.errors[0]["C"] == "26000", r.errors
        # closing one makes room for one
        c.close_statement("s0")
        c.prepare("s5000", "select 5000")
        assert c.execute("s5000") == [["5000"]]
        assert c.simple("select 'still usable'").raise_for_error().rows == [["still usable"]]
        check_bystander(pv, bystander)
    finally:
        c.terminate()
        bystander.close()


def test_prepared_statement_text_cap_54000(pv_caps):
    pv = pv_caps
    bystander = pv.connect()
    c = ExtClient.login(pv)
    try:
        body = "x" * MiB
        accepted, refused = 0, None
        for i in range(40):
            r = c.run([parse(f"big{i}", f"select length('{body}') + {i}"), sync()])
            if r.errors:
                refused = r.errors[0]
                break
            accepted += 1
        assert refused is not None, "40 MiB of prepared statement text accepted (cap 32 MiB)"
        assert refused["C"] == "54000", refused
        assert_pgvalve_message(refused["M"])
        assert 28 <= accepted <= 32, accepted
        assert c.execute("big0") == [[str(MiB)]]
        check_bystander(pv, bystander)
    finally:
        c.terminate()
        bystander.close()


def send_queries(c, queries, how):
    """Each query on its own (waiting for its ReadyForQuery), or all in one pipelined write
    (as psycopg's pipeline mode, node-postgres and postgres.js can send them). Returns the
    Reply of all of them."""
    from pgwire_ext import Reply
    if how == "pipelined":
        return c.run([query_message(q) for q in queries])
    msgs = []
    for q in queries:
        msgs += c.run([query_message(q)]).msgs
    return Reply(msgs)


@pytest.mark.parametrize("how", ["one_by_one", "pipelined"])
def test_257th_tracked_setting_53400(pv_caps, how):
    pv = pv_caps
    bystander = pv.connect()
    c = ExtClient.login(pv)
    try:
        r = send_queries(c, [f"SET myapp.k{i} = 'v{i}'" for i in range(257)], how)
        assert len(r.errors) == 1, f"{len(r.errors)} errors for 257 SETs (cap 256): " \
                                   f"{r.errors[:3]}"
        assert r.errors[0]["C"] == "53400", r.errors[0]
        assert_pgvalve_message(r.errors[0]["M"])
        assert r.tags == ["SET"] * 256, r.tags[-3:]
        # the 256 are still followed; the refused one was not applied
        assert c.rows("show myapp.k0") == [["v0"]]
        assert c.rows("show myapp.k255") == [["v255"]]
        with pytest.raises(PgWireError) as ei:
            c.rows("show myapp.k256")
        assert ei.value.sqlstate == "42704", ei.value.fields
        # changing a tracked one is still allowed
        c.rows("SET myapp.k7 = 'changed'")
        assert c.rows("show myapp.k7") == [["changed"]]
        check_bystander(pv, bystander)
        # PostgreSQL keeps a reset placeholder setting as '' on a backend that saw it: fine
        assert one(bystander, "select current_setting('myapp.k0', true)") in (None, "")
    finally:
        c.terminate()
        bystander.close()


def test_setting_text_cap_54000(pv_caps):
    pv = pv_caps
    bystander = pv.connect()
    c = ExtClient.login(pv)
    try:
        value = "v" * 10000
        refused = None
        for i in range(10):
            try:
                c.rows(f"SET myapp.big{i} = '{value}'")
            except PgWireError as e:
                refused = (i, e)
                break
        assert refused is not None, "100 KB of settings accepted (cap 64 KiB)"
        i, e = refused
        assert e.sqlstate == "54000", e.fields
        assert_pgvalve_message(e.message)
        assert 5 <= i <= 7, i
        assert c.rows("show myapp.big0") == [[value]]
        check_bystander(pv, bystander)
    finally:
        c.terminate()
        bystander.close()


def read_notification(sock, timeout):
    """The next NotificationResponse (channel, payload), or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            kind, payload = read_message(sock)
        except (TimeoutError, ConnectionClosed):
            return None
        if kind == b"A":
            channel, extra = payload[4:].split(b"\0")[:2]
            return channel.decode(), extra.decode()


@pytest.mark.parametrize("how", ["one_by_one", "pipelined"])
def test_1025th_listen_channel_53400(pv_caps, how):
    pv = pv_caps
    bystander = pv.connect()
    notifier = pv.connect()
    c = ExtClient.login(pv)
    try:
        r = send_queries(c, [f"LISTEN ch{i}" for i in range(1025)], how)
        assert len(r.errors) == 1, f"{len(r.errors)} errors for 1025 LISTENs (cap 1024): " \
                                   f"{r.errors[:3]}"
        assert r.errors[0]["C"] == "53400", r.errors[0]
        assert_pgvalve_message(r.errors[0]["M"])
        assert r.tags == ["LISTEN"] * 1024, r.tags[-3:]
        # the 1024 channels are delivered, the refused one is not
        for ch in ("ch0", "ch1024", "ch1023"):
            notifier.execute(f"NOTIFY {ch}, 'to {ch}'")
        assert read_notification(c.sock, 5) == ("ch0", "to ch0")
        assert read_notification(c.sock, 5) == ("ch1023", "to ch1023")
        assert c.simple("select 'usable'").raise_for_error().rows == [["usable"]]
        # another client listens and hears
        bystander.execute("LISTEN bystander_ch")
        notifier.execute("NOTIFY bystander_ch, 'hi'")
        assert drain_notifies(bystander, 1) == [("bystander_ch", "hi")]
        check_bystander(pv, bystander)
    finally:
        c.terminate()
        bystander.close()
        notifier.close()
