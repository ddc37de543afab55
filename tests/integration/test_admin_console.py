"""The admin console's own commands against real PostgreSQL: SHOW HELP, SHOW SHARDS, PAUSE and
RESUME under a pgbench write load (nothing lost, nothing fails), unknown commands."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import threading
import time

import psycopg
import pytest

from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER, stalled_thread
from pgcluster import APP_DB, APP_PASSWORD, APP_USER, wait_until
from pgwire import RawClient, message, query_message, read_message
from test_http import get, metric, scrape
from test_pgbench import check_balances, pgbench, pgbench_init


def admin(pv):
    # prepare_threshold=None: psycopg never prepares (the console takes simple queries only).
    return psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                           autocommit=True, prepare_threshold=None)


def rows_of(a, command):
    cur = a.execute(command)
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def test_help_lists_every_command_and_unknown_ones_are_refused(pgvalve):
    pv = pgvalve(users=APP_AND_OPS)
    with admin(pv) as a:
        commands = [r["command"] for r in rows_of(a, "SHOW HELP")]
        for c in ("SHOW POOLS", "SHOW HOSTS", "SHOW SHARDS", "SHOW QUERIES", "SHOW SLOW_QUERIES",
                  "PAUSE [database]", "RESUME [database]", "RESET QUERIES", "RELOAD"):
            assert c in commands
        with pytest.raises(psycopg.errors.SyntaxError) as e:
            a.execute("SHOW NONSENSE")
        assert str(e.value).startswith("pgvalve: unknown admin command; available: SHOW HELP")
        with pytest.raises(psycopg.errors.InvalidCatalogName):
            a.execute("PAUSE nosuchdb")


def test_show_shards_counts_statements_and_rows(pgvalve, cluster):
    pv = pgvalve(users=APP_AND_OPS)
    with pv.connect() as c:
        for _ in range(4):
            c.execute("select * from generate_series(1, 5)").fetchall()
    with admin(pv) as a:
        wait_until(lambda: rows_of(a, "SHOW SHARDS")[0]["primary"], 10,
                   message="the primary checked")
        (row,) = [r for r in rows_of(a, "SHOW SHARDS") if r["database"] == APP_DB]
    assert row["shard"] == "s0"
    assert row["primary"] == f"127.0.0.1:{cluster.primary.port}"
    assert row["statements"] == "4" and row["rows_routed"] == "20"


def test_pause_and_resume_under_pgbench_lose_nothing(pgvalve, cluster):
    pv = pgvalve(users=APP_AND_OPS, pool_size=4, checkout_timeout_ms=10000)
    pgbench_init(pv)
    result = {}

    def load():
        result["r"] = pgbench(pv, "-c", "8", "-j", "2", "-T", "6", timeout=60)

    t = threading.Thread(target=load)
    t.start()
    time.sleep(1.5)
    with admin(pv) as a:
        started = time.monotonic()
        assert a.execute("PAUSE").statusmessage == "PAUSE"
        # PAUSE returned: no server connection is lent, and none is while paused.
        for _ in range(10):
            pools = [p for p in rows_of(a, "SHOW POOLS") if p["database"] == APP_DB]
            assert all(int(p["sv_active"]) == 0 for p in pools), pools
            time.sleep(0.1)
        assert a.execute("RESUME").statusmessage == "RESUME"
        assert time.monotonic() - started < 5
    t.join()
    r = result["r"]
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert int(re.search(r"number of failed transactions: (\d+)", out).group(1)) == 0, out
    processed = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    check_balances(cluster, processed)


def test_a_pause_longer_than_checkout_timeout_fails_clearly(pgvalve):
    pv = pgvalve(users=APP_AND_OPS, checkout_timeout_ms=300)
    with admin(pv) as a, pv.connect() as c:
        a.execute(f"PAUSE {APP_DB}")
        with pytest.raises(psycopg.errors.TooManyConnections) as e:
            c.execute("select 1")
        assert "is paused (PAUSE or KILL on the admin console)" in str(e.value)
        a.execute(f"RESUME {APP_DB}")
        assert c.execute("select 1").fetchone() == (1,)


def test_resume_of_one_database_after_a_pause_of_all_is_refused(pgvalve):
    # It used to answer RESUME while the database stayed paused.
    pv = pgvalve(users=APP_AND_OPS, checkout_timeout_ms=300)
    with admin(pv) as a, pv.connect() as c:
        a.execute("PAUSE")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            a.execute(f"RESUME {APP_DB}")
        assert str(e.value).startswith("pgvalve: every database is paused"), e.value
        assert "RESUME without a name" in str(e.value)
        state = {r["key"]: r["value"] for r in rows_of(a, "SHOW STATE")}
        assert state["paused"] == "*", state
        with pytest.raises(psycopg.errors.TooManyConnections):
            c.execute("select 1")
        a.execute("RESUME")
        assert c.execute("select 1").fetchone() == (1,)


def test_sigusr1_pauses_and_sigusr2_resumes_as_in_pgbouncer(pgvalve):
    # A maintenance script written for PgBouncer pauses with kill -USR1: that must not end the
    # process (the signal's default action).
    import signal
    pv = pgvalve(checkout_timeout_ms=5000)
    with pv.connect() as c:
        pv.signal(signal.SIGUSR1)
        wait_until(lambda: "signal=SIGUSR1" in pv.log_text(), 5, message="the pause is logged")
        ran = threading.Event()
        t = threading.Thread(target=lambda: (c.execute("select 1"), ran.set()))
        t.start()
        assert not ran.wait(0.5), "a new transaction waits while paused"
        pv.signal(signal.SIGUSR2)
        t.join(5)
        assert ran.is_set()
    assert pv.proc.poll() is None


def test_shutdown_drains_like_sigterm(pgvalve):
    pv = pgvalve(users=APP_AND_OPS)
    with pv.connect() as c:
        c.execute("begin")
        c.execute("select 1")
        with admin(pv) as a:
            assert a.execute("SHUTDOWN").statusmessage == "SHUTDOWN"
        # The open transaction finishes; then the client is told to leave (FATAL 57P01 right
        # after its commit, which libpq reads as the connection closing).
        c.execute("select 2")
        c.execute("commit")
        with pytest.raises(psycopg.OperationalError):
            c.execute("select 3")
    assert pv.proc.wait(timeout=15) == 0
    assert "shutdown_requested" in pv.log_text()


def test_show_clients_and_servers_list_every_connection(pgvalve, cluster):
    pv = pgvalve(users=APP_AND_OPS, pool_size=4)
    with pv.connect() as busy, pv.connect() as idle:
        busy.execute("begin")
        pid = busy.execute("select pg_backend_pid()").fetchone()[0]
        idle.execute("select 1")
        with admin(pv) as a:
            clients = [r for r in rows_of(a, "SHOW CLIENTS") if r["database"] == APP_DB]
            servers = [r for r in rows_of(a, "SHOW SERVERS") if r["database"] == APP_DB]
        assert len(clients) == 2, clients
        with admin(pv) as a:
            consoles = [r for r in rows_of(a, "SHOW CLIENTS") if r["database"] == "pgvalve"]
        assert consoles and all(r["state"] == "admin_console" for r in consoles), consoles
        holding = [c for c in clients if c["state"] == "holding"]
        assert len(holding) == 1 and holding[0]["server"], clients
        assert holding[0]["host"] == f"127.0.0.1:{cluster.primary.port}"
        assert holding[0]["addr"] == "127.0.0.1" and int(holding[0]["port"]) > 0
        assert [c["state"] for c in clients if c is not holding[0]] == ["idle"]
        active = [s for s in servers if s["state"] == "active"]
        assert len(active) == 1 and active[0]["client"] == holding[0]["id"]
        assert active[0]["id"] == holding[0]["server"]
        assert all(s["state"] in ("active", "idle") for s in servers)
        assert len([s for s in servers if s["state"] == "idle"]) >= 1
        assert all(s["shard"] == "s0" and s["connect_time"] for s in servers)
        # The server PostgreSQL lists for the transaction is the one lent.
        assert cluster.primary.sql(
            "select count(*) from pg_stat_activity where pid = %s", (pid,))[0][0] == 1
        busy.execute("commit")


def test_show_stats_sums_a_known_workload_per_database(pgvalve):
    pv = pgvalve(users=APP_AND_OPS)
    with pv.connect() as c:
        for i in range(10):
            c.execute("select %s::int", (i,))
        with c.transaction():
            c.execute("select 1")
            c.execute("select pg_sleep(0.05)")
    with admin(pv) as a:
        (row,) = [r for r in rows_of(a, "SHOW STATS") if r["database"] == APP_DB]
    figures = {k: int(v) for k, v in row.items() if k != "database"}
    # 10 autocommit statements and one transaction of BEGIN, 2 statements, COMMIT.
    assert figures["total_xact_count"] == 11
    assert figures["total_query_count"] == 14
    assert figures["total_xact_time"] >= 50000  # microseconds: the sleep is in a transaction
    assert figures["total_query_time"] >= 50000
    assert figures["total_received"] > 0 and figures["total_sent"] > 0
    assert figures["total_wait_time"] >= 0
    assert figures["avg_query_time"] == figures["total_query_time"] // 14
    assert figures["avg_xact_time"] == figures["total_xact_time"] // 11


def test_show_pools_counts_connections_to_test_and_found_dead(pgvalve, cluster):
    import time as _time
    pv = pgvalve(users=APP_AND_OPS, pool_size=2, pre_ping=True, pre_ping_idle_s=1)
    with pv.connect() as c:
        c.execute("select 1")
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        _time.sleep(1.3)  # idle past pre_ping_idle_s: checked before its next lend
        with admin(pv) as a:
            (pool,) = [p for p in rows_of(a, "SHOW POOLS") if p["database"] == APP_DB and
                       p["user"] == "app"]
        assert int(pool["sv_used"]) == int(pool["sv_idle"]) >= 1, pool
        assert pool["sv_tested"] == "0" and pool["invalid"] == "0"
        # The server dies while idle: the next lend finds it dead, counts it, opens another.
        cluster.primary.sql("select pg_terminate_backend(%s)", (pid,))
        _time.sleep(0.1)
        assert c.execute("select 2").fetchone() == (2,)
    with admin(pv) as a:
        (pool,) = [p for p in rows_of(a, "SHOW POOLS") if p["database"] == APP_DB and
                   p["user"] == "app"]
    assert int(pool["invalid"]) == 1, pool


class CountingSocket:
    """A client socket that counts the bytes it sends and receives."""

    def __init__(self, sock):
        self.sock, self.sent, self.received = sock, 0, 0

    def sendall(self, data):
        self.sent += len(data)
        return self.sock.sendall(data)

    def recv(self, n, *flags):
        data = self.sock.recv(n, *flags)
        self.received += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.mark.parametrize("ssl_request", [False, True])
def test_show_stats_counts_every_byte_of_a_login_both_ways(pgvalve, ssl_request):
    """A database's row is there with zeros before its first client; then its figures are
    exactly the bytes a client sent and got, the SCRAM exchange and Terminate included — and the
    SSLRequest libpq's sslmode=prefer sends first, with the one-byte N a pgvalve without TLS
    answers."""
    import struct
    from pgwire import RawClient
    pv = pgvalve(users=APP_AND_OPS)

    def figures():
        with admin(pv) as a:
            (row,) = [r for r in rows_of(a, "SHOW STATS") if r["database"] == APP_DB]
        return {k: int(v) for k, v in row.items() if k != "database"}

    assert figures() == {k: 0 for k in figures()}
    c = RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB)
    c.sock = CountingSocket(c.open())
    if ssl_request:
        c.sock.sendall(struct.pack("!ii", 8, 80877103))
        assert c.sock.recv(1) == b"N"
    c.connect()
    c.query("select 1")
    c.terminate()
    wait_until(lambda: figures()["total_received"] == c.sock.sent, 5,
               message=f"total_received == the {c.sock.sent} bytes the client sent")
    assert figures()["total_sent"] == c.sock.received


def test_the_console_answers_protocol_it_does_not_take_as_postgresql_would(pgvalve):
    """An extended-protocol flight gets one error up to its Sync; a message over 1 MiB ends the
    session with 08P01; a drill naming an unknown database says so."""
    from itutil import OPS_PASSWORD, OPS_USER
    from pgwire import parse_fields, query_message, read_message
    from pgwire_ext import ExtClient, bind, execute, parse, sync
    pv = pgvalve(users=APP_AND_OPS)
    c = ExtClient.login(pv, user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve")
    try:
        r = c.run([parse("", "SHOW VERSION"), bind(""), execute(), sync()])
        assert r.kinds == b"EZ", r.kinds
        assert r.errors[0]["C"] == "0A000"
        r = c.run([query_message("SWITCHOVER nosuchdb")])
        assert "no database \"nosuchdb\"" in r.errors[0]["M"], r.errors
        # Its header alone: the console refuses on the announced length, and bytes still
        # arriving when it closes would make the kernel reset the connection over its FATAL.
        c.sock.sendall(query_message("SHOW " + "x" * (1 << 20))[:5])
        kind, payload = read_message(c.sock)
        assert kind == b"E"
        fields = parse_fields(payload)
        assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
        assert fields["M"].startswith("pgvalve:")
    finally:
        c.close_abruptly()


def test_a_console_that_stalls_mid_message_is_cut(pgvalve):
    """As an application client: a message begun must be whole within
    limits.message_timeout_ms; an idle console between commands is not cut."""
    from itutil import OPS_PASSWORD, OPS_USER
    from pgwire import parse_fields, read_message
    from pgwire_ext import ExtClient
    pv = pgvalve(users=APP_AND_OPS, limits={"message_timeout_ms": 500})
    c = ExtClient.login(pv, user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve")
    try:
        time.sleep(1.0)  # idle between commands: fine
        assert c.simple("SHOW VERSION").kinds.endswith(b"Z")
        c.sock.sendall(b"Q\x00\x00\x00\x20SHOW")  # the rest never comes
        t0 = time.monotonic()
        kind, payload = read_message(c.sock)
        assert kind == b"E" and time.monotonic() - t0 < 5
        fields = parse_fields(payload)
        assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
        assert "message_timeout_ms" in fields["M"]
    finally:
        c.close_abruptly()


def test_the_console_refuses_malformed_messages_clearly(pgvalve):
    """As PostgreSQL: a Query that is not one NUL-terminated string gets 08P01 and the session
    goes on; after a refused extended-protocol message a Query is skipped up to the Sync; a
    length field below 4, or a message over 1 MiB, ends the session with FATAL 08P01, each
    saying which."""
    from itutil import OPS_PASSWORD, OPS_USER
    from pgwire import message, parse_fields, query_message, read_error_then_close
    from pgwire_ext import ExtClient, parse, sync
    pv = pgvalve(users=APP_AND_OPS)

    def login():
        return ExtClient.login(pv, user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve")

    c = login()
    try:
        for body, what in [(b"SHOW\0VERSION\0", "a NUL byte at offset 4"),
                           (b"SHOW VERSION", "does not end with a NUL byte")]:
            r = c.run([message(b"Q", body)])
            assert r.kinds == b"EZ", (body, r.kinds)
            e = r.errors[0]
            assert (e["S"], e["C"]) == ("ERROR", "08P01")
            assert e["M"].startswith("pgvalve: malformed Query message: ") and what in e["M"]
        # one error for the flight; its Query is neither answered nor run
        r = c.run([parse("", "SHOW VERSION"), query_message("PAUSE"), sync()], syncs=1)
        assert r.kinds == b"EZ", r.kinds
        assert r.errors[0]["C"] == "0A000"
        r = c.simple("SHOW STATE")
        assert ["active", "yes"] in r.rows, r.rows
        c.sock.sendall(b"Q\x00\x00\x00\x03")
        err, closed, _ = read_error_then_close(c.sock, 5)
        assert closed and (err["S"], err["C"]) == ("FATAL", "08P01")
        assert err["M"].startswith("pgvalve: invalid message length 3 "), err["M"]
    finally:
        c.close_abruptly()
    c = login()
    try:
        c.sock.sendall(query_message("SHOW " + "x" * (1 << 20))[:5])
        err, closed, _ = read_error_then_close(c.sock, 5)
        assert closed and (err["S"], err["C"]) == ("FATAL", "08P01")
        assert err["M"].startswith("pgvalve: a message of 1048587 bytes is too large"), err["M"]
    finally:
        c.close_abruptly()


def test_a_client_waiting_for_a_replica_is_counted_once_as_waiting(pgvalve, cluster):
    # Clients join their shard's primary's pool at login; one waiting for a replica's server is
    # counted there as waiting, not also as active on the primary's row.
    import urllib.request
    replica = cluster.replicas[0]
    pv = pgvalve(users=APP_AND_OPS, pool_size=1, max_overflow=0, checkout_timeout_ms=5000,
                 health={"interval_ms": 100, "timeout_ms": 500, "failures_before_down": 1},
                 databases={APP_DB: {"shards": [{
                     "name": "s0", "primary": f"127.0.0.1:{cluster.primary.port}",
                     "replicas": [f"127.0.0.1:{replica.port}"]}]}})
    with admin(pv) as a:
        wait_until(lambda: any(h["port"] == str(replica.port) and h["readable"] == "yes"
                               for h in rows_of(a, "SHOW HOSTS")), 10, message="replica readable")
    holder = pv.connect()
    holder.execute("begin read only")
    holder.execute("select 1")  # holds the replica's only server
    waiter = threading.Thread(target=lambda: pv.connect().execute("select 2").fetchall())
    waiter.start()
    try:
        with admin(pv) as a:
            def pools():
                rows = [r for r in rows_of(a, "SHOW POOLS") if r["user"] == APP_USER]
                return rows if sum(int(r["cl_waiting"]) for r in rows) == 1 else None
            rows = wait_until(pools, 4, message="a client waiting")
        assert sum(int(r["cl_active"]) + int(r["cl_waiting"]) for r in rows) == 2, rows
        (waited,) = [r for r in rows if int(r["cl_waiting"]) == 1]
        assert waited["host"] == f"127.0.0.1:{replica.port}", rows
        with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/metrics",
                                    timeout=5) as r:
            text = r.read().decode()
        by_state = {line.split('"')[1]: float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("pgvalve_client_connections{")}
        assert by_state == {"active": 1, "waiting": 1}, by_state
    finally:
        holder.execute("rollback")
        holder.close()
        waiter.join()


def test_a_stalled_worker_gets_an_error_not_partial_figures(pgvalve):
    # A worker stopped (as by a debugger, or a thread stuck in the kernel): the sums of the other
    # alone would pass for the whole, and /metrics counters would go backwards (they vanished),
    # read by Prometheus as a reset. /metrics answers 503 (a failed scrape), the console an
    # error.
    pv = pgvalve(users=APP_AND_OPS)
    with pv.connect() as c:
        for _ in range(3):
            c.execute("select 1").fetchall()
    queries = metric(scrape(pv), "pgvalve_queries_total")
    assert queries >= 3
    with admin(pv) as a:
        # The console is on one worker (and stays there); the other one is stalled.
        def per_worker():
            return [int(metric(scrape(pv), "pgvalve_worker_clients", worker=i)) for i in (0, 1)]

        wait_until(lambda: sorted(per_worker()) == [0, 1], 15, interval=0.2,
                   message="the console alone on one worker")
        other = per_worker().index(0)
        said = f"pgvalve: worker {other} did not answer within 2000 ms"
        with stalled_thread(pv.pid, f"pgvalve-w{other}"):
            status, body, _ = get(pv, "/metrics")
            assert status == 503, body
            assert body.startswith(said), body
            status, body, _ = get(pv, "/status")
            assert status == 503 and body.startswith(said), body
            for command in ("SHOW STATS", "SHOW QUERIES", "SHOW SHARDS", "SHOW CLIENTS",
                            "SHOW SERVERS", "RESET QUERIES"):
                with pytest.raises(psycopg.errors.QueryCanceled) as e:
                    a.execute(command)
                assert str(e.value).startswith(said), (command, e.value)
        # Back: every figure again, none went backwards.
        assert metric(scrape(pv), "pgvalve_queries_total") >= queries
        assert rows_of(a, "SHOW STATS")
        assert [r for r in rows_of(a, "SHOW CLIENTS") if r["user"] == OPS_USER]


def test_names_and_statements_that_are_not_utf8_are_shown_with_replacement_characters(pgvalve):
    # The console says client_encoding=UTF8 and psycopg decodes every value so: one bad byte
    # failed the whole SHOW. A client still logging in is listed with its startup packet's
    # names, which anyone who can connect chooses, and statement text is kept as sent.
    pv = pgvalve(users=APP_AND_OPS)
    body = struct.pack("!I", 196608)
    for k, v in ((b"user", b"app\xff\xfe"), (b"database", b"tele\xffmetry")):
        body += k + b"\0" + v + b"\0"
    body += b"\0"
    stranger = socket.create_connection(("127.0.0.1", pv.port), timeout=10)
    stranger.sendall(struct.pack("!I", len(body) + 4) + body)
    kind, _ = read_message(stranger)  # asked for a password, which it never sends
    assert kind == b"R"
    app = RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB).connect()
    app.sock.sendall(message(b"Q", b'SELECT 1 AS "bad\xe9\xff ident"\0'))
    while read_message(app.sock)[0] != b"Z":
        pass
    try:
        with admin(pv) as a:
            clients = rows_of(a, "SHOW CLIENTS")
            assert {(r["user"], r["database"]) for r in clients} >= {
                ("app\ufffd\ufffd", "tele\ufffdmetry")}, clients
            texts = [r["query"] for r in rows_of(a, "SHOW QUERIES")]
            assert any('"bad\ufffd\ufffd ident"' in t for t in texts), texts
            slow = rows_of(a, "SHOW SLOW_QUERIES")  # decodes too
            assert isinstance(slow, list)
            # A name the console quotes back in an error is UTF-8 as well.
            with pytest.raises(psycopg.errors.InvalidCatalogName) as e:
                a.execute(b'PAUSE tele\xffmetry')
            assert "tele\ufffdmetry" in str(e.value)
    finally:
        stranger.close()
        app.terminate()


def test_a_console_client_that_leaves_a_waiting_pause_or_wait_close_ends_its_session(pgvalve):
    # psql killed while its PAUSE or WAIT_CLOSE waited: the session kept its socket (CLOSE_WAIT),
    # its max_client_connections slot and its polling for as long as the wait lasted.
    pv = pgvalve(users=APP_AND_OPS)
    holder = pv.connect(autocommit=False)
    holder.execute("select 1")  # a transaction: its server stays lent
    try:
        with admin(pv) as a:
            a.execute(f"RECONNECT {APP_DB}")

            def consoles():
                return len([r for r in rows_of(a, "SHOW CLIENTS")
                            if r["state"] == "admin_console"])

            waiting = []
            for command in (f"WAIT_CLOSE {APP_DB}", "WAIT_CLOSE", f"PAUSE {APP_DB}"):
                c = RawClient("127.0.0.1", pv.port, OPS_USER, OPS_PASSWORD, "pgvalve").connect()
                c.sock.sendall(query_message(command))
                waiting.append(c)
            wait_until(lambda: consoles() == 4, 5, message="four console sessions")
            time.sleep(0.3)
            assert consoles() == 4  # they wait, as they should
            for c in waiting:
                c.close_abruptly()
            wait_until(lambda: consoles() == 1, 5, message="the waiting sessions ended")
            wait_until(lambda: pv.open_client_sockets() == 2, 5,
                       message="only the holder and this console counted")
            # The PAUSE itself stays until RESUME.
            state = {r["key"]: r["value"] for r in rows_of(a, "SHOW STATE")}
            assert state["paused"] == APP_DB
            holder.rollback()
            assert a.execute(f"RESUME {APP_DB}").statusmessage == "RESUME"
    finally:
        holder.close()
    assert "event=admin_client_gone" in pv.log_text()


def test_a_lone_flush_or_sync_on_the_console_is_answered_as_postgresql_does(pgvalve):
    # psql and drivers send a Flush or a Sync on their own (a flush before a query, a Sync to
    # resynchronise): the Flush made the console skip the next Query unanswered (the client
    # hung), and a Sync got a 0A000 error. PostgreSQL answers the Query, and a Sync with
    # ReadyForQuery alone.
    from pgwire_ext import ExtClient, flush, sync
    pv = pgvalve(users=APP_AND_OPS)
    c = ExtClient.login(pv, user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve", timeout=5)
    try:
        r = c.run([flush(), query_message("SHOW VERSION")])
        assert r.kinds == b"TDCZ", r.kinds
        assert r.rows[0][0].startswith("pgvalve ")
        r = c.run([sync()])
        assert r.kinds == b"Z", r.kinds
        # A refused flight still gets one error and skips up to its Sync, a Flush too.
        r = c.run([message(b"P", b"\0SHOW VERSION\0\0\0"), flush(), query_message("PAUSE"),
                   sync()], syncs=1)
        assert r.kinds == b"EZ", r.kinds
        assert r.errors[0]["C"] == "0A000"
        r = c.run([query_message("SHOW STATE")])
        assert ["active", "yes"] in r.rows, r.rows
    finally:
        c.close_abruptly()


def test_names_with_spaces_or_semicolons_are_administered_in_double_quotes(pgvalve, cluster):
    # The config takes a database named "my db;x" and clients use it, but the console split
    # the command on the space and the ';' (PAUSE "my db;x" got 42601). As in SQL (and
    # PgBouncer, which takes PAUSE "telemetry"), a name may be double-quoted.
    shard = {"name": "s 0", "primary": f"127.0.0.1:{cluster.primary.port}"}
    pv = pgvalve(users=APP_AND_OPS, databases={
        APP_DB: {"shards": [dict(shard, name="s0")]},
        'my db;x "q"': {"dbname": APP_DB, "shards": [shard]}})
    odd = 'my db;x "q"'
    with pv.connect(dbname="my%20db%3Bx%20%22q%22") as c:
        assert c.execute("select 1").fetchone() == (1,)
    with admin(pv) as a:
        def paused():
            return {r["key"]: r["value"] for r in rows_of(a, "SHOW STATE")}["paused"]

        assert a.execute('PAUSE "my db;x ""q"""').statusmessage == "PAUSE"
        assert paused() == odd
        assert a.execute('resume "my db;x ""q"""').statusmessage == "RESUME"
        assert paused() == ""
        assert a.execute(f'PAUSE "{APP_DB}"').statusmessage == "PAUSE"
        assert paused() == APP_DB
        assert a.execute(f"RESUME {APP_DB}").statusmessage == "RESUME"
        assert a.execute('RECONNECT "my db;x ""q"""').statusmessage == "RECONNECT"
        assert a.execute('WAIT_CLOSE "my db;x ""q"""').statusmessage == "WAIT_CLOSE"
        with pytest.raises(psycopg.errors.InvalidCatalogName):
            a.execute('PAUSE "my db"')
        # A quoted name is never a command word.
        with pytest.raises(psycopg.errors.SyntaxError) as e:
            a.execute('SHOW "POOLS"')
        assert "unknown admin command" in str(e.value)
        for command, usage in [('PAUSE "my db;x', "a double-quoted name is not closed"),
                               ('PAUSE ""', "a double-quoted name is empty"),
                               (f"PAUSE {APP_DB} extra", "usage: PAUSE [database]"),
                               ("SHOW POOLS extra", "usage: SHOW POOLS"),
                               ("reload now", "usage: RELOAD")]:
            with pytest.raises(psycopg.errors.SyntaxError) as e:
                a.execute(command)
            assert str(e.value).startswith("pgvalve: " + usage), (command, e.value)
        assert paused() == ""
