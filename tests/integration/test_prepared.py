"""Named prepared statements in transaction mode (DESIGN §4.2, issue 3): pgvalve keeps each
client's statements, gives them server-side names (pgv_<hash>) that cannot collide, prepares
them again wherever the client lands, keeps at most pool.max_prepared_statements per server
connection, and answers Close / DEALLOCATE itself without disturbing other clients.

Few server connections, so clients really share servers and land on different ones between
transactions."""

import json
import re
import threading
import time
import urllib.request

import psycopg
import pytest

from pgcluster import APP_DB, APP_PASSWORD, APP_USER, wait_until
from pgwire import query_message, read_message
from pgwire_ext import ExtClient, bind, close, describe, execute, flush, parse, sync
from test_pgbench import check_balances, pgbench, pgbench_init

PGV_STATEMENTS = r"select count(*) from pg_prepared_statements where name like 'pgv\_%'"


def tx_pool(pgvalve, **kw):
    kw.setdefault("max_overflow", 0)
    kw.setdefault("checkout_timeout_ms", 15000)
    return pgvalve(mode="transaction", **kw)


def server_pids(cluster):
    """pids of the app user's backends in the app database, read directly on the primary."""
    return {r[0] for r in cluster.primary.sql(
        "select pid from pg_stat_activity where usename = %s and datname = %s "
        "and backend_type = 'client backend'", (APP_USER, APP_DB))}


# --- pgbench -M prepared --------------------------------------------------------------------

def test_pgbench_prepared_64_clients_on_4_servers(pgvalve, cluster):
    pv = tx_pool(pgvalve, pool_size=4)
    pgbench_init(pv)
    r = pgbench(pv, "-M", "prepared", "-c", "64", "-j", "2", "-T", "20", "-P", "5", timeout=90)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"pgbench exited {r.returncode}:\n{out[-4000:]}"
    assert "aborted" not in out, out[-4000:]
    assert not re.search(r"(?i)\berror\b", r.stderr), r.stderr[-4000:]
    m = re.search(r"number of failed transactions: (\d+)", out)
    assert m and int(m.group(1)) == 0, out[-4000:]
    m = re.search(r"number of clients: (\d+)", out)
    assert m and int(m.group(1)) == 64, out[-4000:]
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    assert m and int(m.group(1)) > 0, out[-4000:]
    # pgbench truncates pgbench_history when it starts, so the history is this run's alone
    check_balances(cluster, int(m.group(1)))
    assert len(server_pids(cluster)) <= 4


# --- many statements, few slots -------------------------------------------------------------

N_CLIENTS = 50
PER_CLIENT = 40  # 50 x 40 = 2,000 distinct statements
MAX_PREPARED = 50


def stmt_text(k: int) -> str:
    # distinct text per k; the result tells which statement ran with which parameter
    return f"select %s::int * 2 + {k} as v, 'stmt {k}' as tag"


def test_2000_statements_50_clients_capped_per_server(pgvalve, cluster):
    pv = tx_pool(pgvalve, pool_size=2, max_prepared_statements=MAX_PREPARED)
    errors: list[str] = []
    counts: list[int] = []
    done = threading.Event()
    deadline = time.monotonic() + 100

    def client(c: int):
        try:
            with psycopg.connect(pv.dsn(), autocommit=True) as conn:
                # two passes: the second finds most statements evicted from the server
                for rnd in range(2):
                    for j in range(PER_CLIENT):
                        if time.monotonic() > deadline:
                            errors.append(f"client {c}: out of time")
                            return
                        k = c * PER_CLIENT + j
                        x = k * 7 + rnd
                        row = conn.execute(stmt_text(k), (x,), prepare=True).fetchone()
                        if row != (x * 2 + k, f"stmt {k}"):
                            errors.append(f"client {c} stmt {k}: got {row!r}")
                            return
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"client {c}: {e!r}")

    def monitor():
        # through pgvalve, inside a transaction: the server it lands on holds <= 50 of ours
        try:
            with psycopg.connect(pv.dsn(), autocommit=False, prepare_threshold=None) as conn:
                while not done.is_set():
                    counts.append(conn.execute(PGV_STATEMENTS).fetchone()[0])
                    conn.commit()
                    time.sleep(0.05)
        except Exception as e:  # noqa: BLE001
            errors.append(f"monitor: {e!r}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(N_CLIENTS)]
    mon = threading.Thread(target=monitor)
    mon.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1, deadline + 5 - time.monotonic()))
    done.set()
    mon.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "clients still running after 100 s"
    assert not errors, errors[:10]
    assert len(counts) >= 3, f"monitor ran {len(counts)} times"
    assert max(counts) <= MAX_PREPARED, f"a server held more than {MAX_PREPARED}: {counts}"

    # Both servers, each held by its own open transaction: each is full (each saw hundreds
    # of distinct statements, so it evicted to stay at the cap) and holds exactly the cap.
    a = psycopg.connect(pv.dsn(), autocommit=False, prepare_threshold=None)
    b = psycopg.connect(pv.dsn(), autocommit=False, prepare_threshold=None)
    try:
        pa, na = a.execute(f"select pg_backend_pid(), ({PGV_STATEMENTS})").fetchone()
        pb, nb = b.execute(f"select pg_backend_pid(), ({PGV_STATEMENTS})").fetchone()
        assert pa != pb
        assert (na, nb) == (MAX_PREPARED, MAX_PREPARED)
    finally:
        a.close()
        b.close()
    assert len(server_pids(cluster)) <= 2


def status_pool(pv):
    with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/status", timeout=10) as r:
        body = json.loads(r.read().decode())
    return next(p for p in body["pools"] if p["database"] == APP_DB and p["user"] == APP_USER)


def test_evictions_are_counted(pgvalve):
    """One client, one server, cap 5, 20 distinct statements: exactly 15 evictions."""
    pv = tx_pool(pgvalve, pool_size=1, max_prepared_statements=5)
    with psycopg.connect(pv.dsn(), autocommit=True) as conn:
        for k in range(20):
            assert conn.execute(stmt_text(k), (k,), prepare=True).fetchone() == (3 * k, f"stmt {k}")
        assert conn.execute(PGV_STATEMENTS, prepare=False).fetchone()[0] == 5
    assert status_pool(pv)["total_statement_evictions"] == 15


# --- names shared between clients -----------------------------------------------------------

def test_same_name_different_queries_on_one_server(pgvalve):
    pv = tx_pool(pgvalve, pool_size=1)
    a = ExtClient.login(pv)
    b = ExtClient.login(pv)
    try:
        a.prepare("s1", "select 'A' || $1::text")
        b.prepare("s1", "select 'B' || $1::text, $1::int * 10")
        a.prepare("s2", "select 'A2'")
        for i in range(5):
            assert a.execute("s1", [str(i)]) == [[f"A{i}"]]
            assert b.execute("s1", [str(i)]) == [[f"B{i}", str(i * 10)]]
            assert a.execute("s2") == [["A2"]]
        # a pipelined flight, Parse/Describe/Bind/Execute per statement, one Sync
        r = b.run([parse("s3", "select $1::int + 1"), describe("S", "s3"),
                   bind("s3", ["41"]), execute(), bind("s1", ["7"]), execute(), sync()])
        r.raise_for_error()
        assert r.kinds == b"1tT2DC2DCZ", r.kinds
        assert r.rows == [["42"], ["B7", "70"]]
        # Flush instead of Sync in the middle, the way some drivers Describe first
        a.sock.sendall(parse("s4", "select $1::text || '!'") + describe("S", "s4") + flush())
        r = a.run([bind("s4", ["hey"]), execute(), sync()])
        r.raise_for_error()
        assert r.kinds == b"1tT2DCZ", r.kinds
        assert r.rows == [["hey!"]]
        assert a.execute("s1", ["x"]) == [["Ax"]]
        assert b.execute("s1", ["3"]) == [["B3", "30"]]
    finally:
        a.terminate()
        b.terminate()


def test_same_name_different_queries_psycopg(pgvalve):
    """psycopg names its statements _pg3_0, _pg3_1, ... in every connection."""
    pv = tx_pool(pgvalve, pool_size=1)
    conns = [psycopg.connect(pv.dsn(), autocommit=True) for _ in range(3)]
    try:
        for rnd in range(5):
            for i, conn in enumerate(conns):
                q = f"select %s::int + {i * 1000}"
                assert conn.execute(q, (rnd,), prepare=True).fetchone() == (rnd + i * 1000,)
                with conn.transaction():
                    q2 = f"select %s::text || '-{i}'"
                    assert conn.execute(q2, (str(rnd),), prepare=True).fetchone() == (
                        f"{rnd}-{i}",)
        pids = {c.execute("select pg_backend_pid()").fetchone()[0] for c in conns}
        assert len(pids) == 1
    finally:
        for c in conns:
            c.close()


def test_same_text_is_shared(pgvalve):
    pv = tx_pool(pgvalve, pool_size=1)
    text = "select $1::int * 3 as shared_statement"
    a = ExtClient.login(pv)
    b = ExtClient.login(pv)
    try:
        a.prepare("mine", text)
        b.prepare("theirs", text)
        for i in range(5):
            assert a.execute("mine", [str(i)]) == [[str(3 * i)]]
            assert b.execute("theirs", [str(i + 1)]) == [[str(3 * i + 3)]]
        # one server-side statement for both
        rows = a.simple("select name from pg_prepared_statements where statement = "
                        f"'{text}'").raise_for_error().rows
        assert len(rows) == 1 and rows[0][0].startswith("pgv_"), rows
        # a closes its name; b's keeps working
        a.close_statement("mine")
        assert b.execute("theirs", ["10"]) == [["30"]]
        r = a.run([bind("mine", ["1"]), execute(), sync()])
        assert r.errors and r.errors[0]["C"] == "26000", r.errors
        assert r.status == "I"
    finally:
        a.terminate()
        b.terminate()


# --- Close / DEALLOCATE ---------------------------------------------------------------------

def test_close_and_deallocate_leave_other_clients_alone(pgvalve):
    pv = tx_pool(pgvalve, pool_size=1)
    a = ExtClient.login(pv)
    b = ExtClient.login(pv)
    try:
        b.prepare("keep", "select 'b keeps ' || $1::text")
        assert b.execute("keep", ["0"]) == [["b keeps 0"]]
        # the same text in a: shared on the server, so a's Close must not close it there
        a.prepare("keep", "select 'b keeps ' || $1::text")
        a.prepare("x1", "select 1")
        a.prepare("x2", "select 2")
        a.prepare("x3", "select 3")

        # protocol Close, in a flight with other work
        r = a.run([close("S", "keep"), bind("x1"), execute(), sync()]).raise_for_error()
        assert r.kinds == b"32DCZ", r.kinds
        assert b.execute("keep", ["1"]) == [["b keeps 1"]]
        # Close of a name that does not exist is not an error (as in PostgreSQL)
        a.close_statement("never_prepared")

        # DEALLOCATE name
        r = a.simple("DEALLOCATE x1").raise_for_error()
        assert r.tags == ["DEALLOCATE"] and r.status == "I"
        assert b.execute("keep", ["2"]) == [["b keeps 2"]]
        r = a.run([bind("x1"), execute(), sync()])
        assert r.errors and r.errors[0]["C"] == "26000", r.errors
        assert a.execute("x2") == [["2"]]

        # DEALLOCATE ALL
        r = a.simple("DEALLOCATE ALL").raise_for_error()
        assert r.tags == ["DEALLOCATE ALL"] and r.status == "I"
        assert b.execute("keep", ["3"]) == [["b keeps 3"]]
        for name in ("x2", "x3", "keep"):
            r = a.run([bind(name), execute(), sync()])
            assert r.errors and r.errors[0]["C"] == "26000", (name, r.errors)
        # the names are free again, for other queries
        a.prepare("x2", "select 'new x2'")
        assert a.execute("x2") == [["new x2"]]
        # DEALLOCATE PREPARE name, the long form
        r = a.simple("DEALLOCATE PREPARE x2").raise_for_error()
        assert r.tags == ["DEALLOCATE"]
        assert b.execute("keep", ["4"]) == [["b keeps 4"]]
        # SQL-level PREPARE / EXECUTE / DEALLOCATE inside one transaction still work
        r = a.simple("BEGIN; PREPARE sqlp(int) AS select $1 + 1; EXECUTE sqlp(1); "
                     "DEALLOCATE sqlp; COMMIT").raise_for_error()
        assert r.rows == [["2"]]
        assert b.execute("keep", ["5"]) == [["b keeps 5"]]
    finally:
        a.terminate()
        b.terminate()


def test_a_client_cannot_name_pgvalves_shared_statements(pgvalve):
    """The statements pgvalve prepares on a server (pgv_<hash>) are every client's: one that reads
    their names from pg_prepared_statements may not close, describe or run them by name. A
    DEALLOCATE of one closed it under every client of the server, whose Binds then failed with
    26000 until the server connection went."""
    pv = tx_pool(pgvalve, pool_size=1)
    a = ExtClient.login(pv)
    b = ExtClient.login(pv)
    try:
        a.prepare("mine", "select $1::int + 1")
        assert a.execute("mine", ["1"]) == [["2"]]
        names = [row[0] for row in b.simple("select name from pg_prepared_statements").rows]
        shared = next(n for n in names if n.startswith("pgv_"))

        def refused(reply):
            assert reply.errors and reply.errors[0]["C"] == "26000", reply.errors
            assert reply.errors[0]["M"].startswith("pgvalve: prepared statement"), reply.errors
            assert reply.status == "I"

        refused(b.simple(f'DEALLOCATE "{shared}"'))
        refused(b.run([bind(shared), execute(), sync()]))
        refused(b.run([describe("S", shared), sync()]))
        # Closing a name the client does not have is no error, and closes nothing.
        assert b.run([close("S", shared), sync()]).raise_for_error().kinds == b"3Z"
        for i in range(3):
            assert a.execute("mine", [str(i)]) == [[str(i + 1)]]
        # A DEALLOCATE pgvalve does not see coming (inside a longer query) drops it on the
        # server: the next Bind fails as it would on PostgreSQL, and the one after prepares it
        # again instead of failing on that server for good.
        b.simple(f'select 1; DEALLOCATE "{shared}"').raise_for_error()
        r = a.run([bind("mine", ["5"]), execute(), sync()])
        assert r.errors and r.errors[0]["C"] == "26000", r.errors
        assert a.execute("mine", ["6"]) == [["7"]]
        c = ExtClient.login(pv)
        try:
            c.prepare("same", "select $1::int + 1")
            assert c.execute("same", ["7"]) == [["8"]]
        finally:
            c.terminate()
    finally:
        a.terminate()
        b.terminate()


def test_discard_all_forgets_the_clients_statements(pgvalve):
    pv = tx_pool(pgvalve, pool_size=1)
    a = ExtClient.login(pv)
    b = ExtClient.login(pv)
    try:
        a.prepare("s", "select 'a'")
        b.prepare("s", "select 'b'")
        assert a.execute("s") == [["a"]]
        r = a.simple("DISCARD ALL").raise_for_error()
        assert r.tags == ["DISCARD ALL"]
        r = a.run([bind("s"), execute(), sync()])
        assert r.errors and r.errors[0]["C"] == "26000", r.errors
        assert b.execute("s") == [["b"]]
        a.prepare("s", "select 'a again'")
        assert a.execute("s") == [["a again"]]
    finally:
        a.terminate()
        b.terminate()


# --- statements survive new server connections ----------------------------------------------

def terminate_server_backends(cluster):
    pids = server_pids(cluster)
    assert pids, "pgvalve holds no server connection"
    cluster.primary.sql("select pg_terminate_backend(pid) from unnest(%s::int[]) pid",
                        (list(pids),))
    wait_until(lambda: not (server_pids(cluster) & pids), 10,
               message="terminated backends to go away")
    # pgvalve peeks at a pooled connection before lending it only when it has been idle for
    # 10 ms (proxy/client_session.cpp, kPeekIdleAfter); one reused sooner is trusted, as under
    # load. The next request of these tests comes after that.
    time.sleep(0.02)
    return pids


def test_statement_survives_server_termination_psycopg(pgvalve, cluster):
    pv = tx_pool(pgvalve, pool_size=2)
    with psycopg.connect(pv.dsn(), autocommit=True) as conn:
        q = "select %s::int * 5 as survivor"
        assert conn.execute(q, (1,), prepare=True).fetchone() == (5,)
        old = terminate_server_backends(cluster)
        # between transactions; the next use of the statement lands on a new server
        assert conn.execute(q, (2,), prepare=True).fetchone() == (10,)
        with conn.transaction():
            assert conn.execute(q, (3,), prepare=True).fetchone() == (15,)
        assert not (server_pids(cluster) & old)


def test_statement_survives_server_termination_raw(pgvalve, cluster):
    pv = tx_pool(pgvalve, pool_size=2)
    a = ExtClient.login(pv)
    try:
        a.prepare("s", "select $1::int * 5")
        assert a.execute("s", ["1"]) == [["5"]]
        old = terminate_server_backends(cluster)
        assert a.execute("s", ["2"]) == [["10"]]
        # and once more after a second round of terminations, with Describe first
        terminate_server_backends(cluster)
        r = a.run([describe("S", "s"), bind("s", ["3"]), execute(), sync()]).raise_for_error()
        assert r.kinds == b"tT2DCZ", r.kinds
        assert r.rows == [["15"]]
        assert not (server_pids(cluster) & old)
    finally:
        a.terminate()


def test_statement_survives_reload_with_new_server_connections(pgvalve, cluster):
    """A reload that changes pool settings; then the old servers are gone all the same."""
    pv = tx_pool(pgvalve, pool_size=2)
    with psycopg.connect(pv.dsn(), autocommit=True) as conn:
        q = "select %s::int - 1 as after_reload"
        assert conn.execute(q, (1,), prepare=True).fetchone() == (0,)
        cfg = dict(pv.config)
        cfg["pool"] = dict(cfg["pool"], pool_size=3)
        pv.reload(cfg)
        time.sleep(0.5)
        terminate_server_backends(cluster)
        for i in range(5):
            assert conn.execute(q, (i,), prepare=True).fetchone() == (i - 1,)


def test_unnamed_statements_unchanged(pgvalve):
    pv = tx_pool(pgvalve, pool_size=1)
    a = ExtClient.login(pv)
    try:
        for i in range(3):
            r = a.run([parse("", "select $1::int + 100"), bind("", [str(i)]), execute(),
                       sync()]).raise_for_error()
            assert r.kinds == b"12DCZ" and r.rows == [[str(i + 100)]]
        # an error in an unnamed statement does not break the connection
        r = a.run([parse("", "select 1/0"), bind(""), execute(), sync()])
        assert r.errors and r.errors[0]["C"] == "22012" and r.status == "I"
        r = a.simple("select 'still fine'").raise_for_error()
        assert r.rows == [["still fine"]]
    finally:
        a.terminate()


def test_parse_error_in_named_statement(pgvalve):
    """A named statement that cannot be prepared gets its error (at Parse, or at the first
    Execute when pgvalve answered a lone Parse+Sync itself); the connection stays usable and
    the name can be prepared again."""
    pv = tx_pool(pgvalve, pool_size=1)
    a = ExtClient.login(pv)
    try:
        r1 = a.run([parse("bad", "select * from no_such_table"), sync()])
        assert r1.status == "I"
        r2 = a.run([bind("bad"), execute(), sync()])
        assert r2.status == "I"
        first = (r1.errors + r2.errors)[:1]
        assert first and first[0]["C"] == "42P01", (r1.errors, r2.errors)
        if r1.errors:  # as PostgreSQL: the failed Parse left no statement behind
            assert r2.errors and r2.errors[0]["C"] == "26000", r2.errors
        r = a.run([parse("bad", "select 'good'"), bind("bad"), execute(), sync()])
        r.raise_for_error()
        assert r.rows == [["good"]]
        assert a.execute("bad") == [["good"]]
    finally:
        a.terminate()


def test_parse_discarded_after_a_failed_request_is_not_taken_as_done(pgvalve):
    """Pipelining with Flush (libpq's pipeline mode): a request fails with no Sync behind it, and
    PostgreSQL discards what the client sends before its Sync, a Parse included. The statement
    does not exist then, and a later Parse of it must reach the server."""
    pv = tx_pool(pgvalve, pool_size=1)
    c = ExtClient.login(pv)
    try:
        c.sock.sendall(parse("", "select 1/0") + bind("") + execute() + flush())
        kinds = []
        while not kinds or kinds[-1] != b"E":
            kinds.append(read_message(c.sock)[0])
        assert kinds[0] == b"1" and kinds[-1] == b"E", kinds
        r = c.run([parse("discarded", "select 42"), bind("discarded"), execute(), sync()])
        assert r.kinds == b"Z", r.kinds  # discarded by the server, up to the Sync
        r = c.run([parse("discarded", "select 42"), bind("discarded"), execute(), sync()])
        assert not r.errors, r.errors
        assert r.rows == [["42"]]
    finally:
        c.terminate()


def test_statement_evicted_behind_deallocate_all_is_prepared_again(pgvalve):
    """DEALLOCATE ALL with two Parses pipelined behind it, the second evicting the first on the
    server (max_prepared_statements: 1). When DEALLOCATE ALL is answered the first Parse and its
    eviction Close are still on their way: the server ends without that statement, and using it
    must prepare it again (found by the session fuzz target)."""
    pv = tx_pool(pgvalve, pool_size=1, max_prepared_statements=1)
    c = ExtClient.login(pv)
    try:
        r = c.run([query_message("DEALLOCATE ALL"), parse("p", "select 1"), parse("q", "select 2"),
                   sync()])
        assert not r.errors, r.errors
        r = c.run([bind("p"), execute(), sync()])
        assert not r.errors, r.errors
        assert r.rows == [["1"]]
        r = c.run([bind("q"), execute(), sync()])
        assert not r.errors, r.errors
        assert r.rows == [["2"]]
    finally:
        c.terminate()


def test_bind_pipelined_behind_a_failed_parse_never_names_pgvalves_statement(pgvalve):
    """A Parse in a flight that fails before it (the server skips it), and a Bind of that
    statement pipelined in the next flight before the first is answered. PostgreSQL alone says
    the client's statement does not exist; pgvalve prepares it again in the Bind's flight. What
    the client must never see is an error about pgvalve's own server-side name."""
    pv = tx_pool(pgvalve, pool_size=1)
    c = ExtClient.login(pv)
    try:
        r = c.run([describe("S", "missing"), parse("p", "select 7"), sync(),
                   bind("p"), execute(), sync()])
        assert [e["C"] for e in r.errors] == ["26000"], r.errors  # the Describe's
        assert "missing" in r.errors[0]["M"]
        assert r.rows == [["7"]]
    finally:
        c.terminate()


def test_query_between_a_failed_extended_request_and_its_sync_gets_no_answer(pgvalve):
    """PostgreSQL ignores a simple Query sent after a failed extended-protocol message and before
    the Sync: the client gets the error and one ReadyForQuery. pgvalve must not wait for the
    Query's answer: the server goes back to the pool, and another client (pool of one) gets it
    (found by the session fuzz target; before, the server stayed with the first client)."""
    pv = tx_pool(pgvalve, pool_size=1, checkout_timeout_ms=3000)
    c = ExtClient.login(pv)
    other = ExtClient.login(pv)
    try:
        r = c.run([execute("missing"), query_message("select 1"), sync()], syncs=1)
        assert r.kinds == b"EZ", r.kinds
        assert [e["C"] for e in r.errors] == ["34000"], r.errors
        r = c.simple("select 2")
        assert not r.errors, r.errors
        assert r.rows == [["2"]]
        r = other.simple("select 3")
        assert not r.errors, r.errors
        assert r.rows == [["3"]]
    finally:
        c.terminate()
        other.terminate()


def test_another_statement_under_a_prepared_name_is_42P05_as_on_postgresql(pgvalve, cluster):
    from psycopg import pq
    pv = tx_pool(pgvalve, pool_size=1)
    for dsn in (cluster.primary.tcp_dsn(), pv.dsn()):
        with psycopg.connect(dsn, autocommit=True) as c:
            pg = c.pgconn
            assert pg.prepare(b"s1", b"select 1").status == pq.ExecStatus.COMMAND_OK
            # Run once: pgvalve answers a lone Parse itself, and only a server's acceptance
            # makes the name PostgreSQL's to refuse again.
            assert pg.exec_prepared(b"s1", []).get_value(0, 0) == b"1"
            again = pg.prepare(b"s1", b"select 2")
            assert again.status == pq.ExecStatus.FATAL_ERROR, dsn
            assert again.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05"
            if dsn == pv.dsn():
                message = again.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
                assert message.startswith(b"pgvalve: prepared statement \"s1\" already exists")
                # pgvalve's errors carry no PL/pgSQL context from how the server raised them.
                assert again.error_field(pq.DiagnosticField.CONTEXT) is None
            # The first definition stands.
            assert pg.exec_prepared(b"s1", []).get_value(0, 0) == b"1"


def test_the_same_text_under_another_search_path_is_its_own_statement(pgvalve, cluster):
    # PostgreSQL resolves a statement's tables when it prepares it (a differential audit found
    # q2 failing with 0A000, sharing q1's server-side statement).
    cluster.primary.psql("drop schema if exists sp_a cascade; drop schema if exists sp_b cascade;"
                         "create schema sp_a; create schema sp_b;"
                         "create table sp_a.t (a int); insert into sp_a.t values (1);"
                         "create table sp_b.t (x int, y text); insert into sp_b.t values (2, 'b');"
                         "grant usage on schema sp_a, sp_b to app;"
                         "grant select on all tables in schema sp_a, sp_b to app", dbname=APP_DB)
    from psycopg import pq
    pv = tx_pool(pgvalve, pool_size=1)
    for dsn in (cluster.primary.tcp_dsn(), pv.dsn()):
        with psycopg.connect(dsn, autocommit=True) as c:
            pg = c.pgconn
            c.execute("set search_path = sp_a")
            assert pg.prepare(b"q1", b"select * from t").status == pq.ExecStatus.COMMAND_OK
            assert pg.exec_prepared(b"q1", []).get_value(0, 0) == b"1"
            c.execute("set search_path = sp_b")
            assert pg.prepare(b"q2", b"select * from t").status == pq.ExecStatus.COMMAND_OK
            described = pg.describe_prepared(b"q2")
            assert described.status == pq.ExecStatus.COMMAND_OK, dsn
            assert described.nfields == 2
            res = pg.exec_prepared(b"q2", [])
            assert res.status == pq.ExecStatus.TUPLES_OK, res.error_message
            assert (res.get_value(0, 0), res.get_value(0, 1)) == (b"2", b"b")


@pytest.mark.parametrize("setting, first, second, sql", [
    ("TimeZone", "UTC", "Asia/Tokyo",
     "select '2024-01-01 00:00'::timestamptz = '2024-01-01 00:00+00'"),
    ("DateStyle", "ISO, MDY", "ISO, DMY", "select '01/02/2024'::date"),
    ("standard_conforming_strings", "on", "off", r"select length('a\nb')"),
    ("transform_null_equals", "off", "on", "select (null::int = null) is null"),
])
def test_the_same_text_under_other_literal_settings_reads_its_own_literals(
        pgvalve, cluster, setting, first, second, sql):
    # PostgreSQL reads a statement's literals when it prepares it, by the session's settings: a
    # client must not get the reading of another client's settings (found: TimeZone gave f).
    from psycopg import pq
    pv = tx_pool(pgvalve, pool_size=1)

    def prepared_value(dsn, value):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"set {setting} = '{value}'")
            pg = c.pgconn
            assert pg.prepare(b"q", sql.encode()).status == pq.ExecStatus.COMMAND_OK
            res = pg.exec_prepared(b"q", [])
            assert res.status == pq.ExecStatus.TUPLES_OK, res.error_message
            return res.get_value(0, 0)

    expected = prepared_value(cluster.primary.tcp_dsn(), second)
    assert expected != prepared_value(cluster.primary.tcp_dsn(), first)
    assert prepared_value(pv.dsn(), first) != expected
    # Another client, on the same server, that prepares the same text under its own value.
    assert prepared_value(pv.dsn(), second) == expected


def test_a_statement_whose_table_changed_fails_once_as_on_postgresql(pgvalve, cluster):
    """After ALTER TABLE changes what a prepared statement returns, PostgreSQL fails its next
    Bind once (0A000, "cached plan must not change result type"); pgjdbc then prepares the
    text again under a new name, and a new client preparing it gets the new columns. pgvalve
    shares one server-side statement per text: each server that still holds the old one
    prepares it again at its next use, instead of failing every client until it is evicted."""
    from psycopg import pq

    def outcome(res):
        if res.status == pq.ExecStatus.TUPLES_OK:
            return res.nfields
        return res.error_field(pq.DiagnosticField.SQLSTATE).decode()

    # One worker: a client of another worker may see the error once more (docs/pooling.md), and
    # which worker takes client c below is the kernel's choice.
    pv = tx_pool(pgvalve, pool_size=2, workers=1)
    seen = {}
    for target, dsn in (("direct", cluster.primary.tcp_dsn()), ("pgvalve", pv.dsn())):
        cluster.primary.psql("drop table if exists chg; create table chg (a int);"
                             "insert into chg values (1); grant all on chg to app", dbname=APP_DB)
        with psycopg.connect(dsn, autocommit=True) as a, \
                psycopg.connect(dsn, autocommit=True) as b:
            pa, pb = a.pgconn, b.pgconn
            # b holds one server while a prepares on the other: both hold the statement.
            b.execute("begin")
            assert pb.prepare(b"s1", b"select * from chg").status == pq.ExecStatus.COMMAND_OK
            assert outcome(pb.exec_prepared(b"s1", [])) == 1
            assert pa.prepare(b"s1", b"select * from chg").status == pq.ExecStatus.COMMAND_OK
            assert outcome(pa.exec_prepared(b"s1", [])) == 1
            b.execute("commit")
            cluster.primary.psql("alter table chg add column b int default 7", dbname=APP_DB)
            runs = [outcome(pa.exec_prepared(b"s1", []))]
            # As pgjdbc does after the error: the same text under a new name.
            assert pa.prepare(b"s2", b"select * from chg").status == pq.ExecStatus.COMMAND_OK
            for _ in range(4):
                b.execute("begin")  # b holds either server: a runs on the other
                b.execute("select 1")
                runs.append(outcome(pa.exec_prepared(b"s2", [])))
                b.execute("commit")
            with psycopg.connect(dsn, autocommit=True) as c:
                assert c.pgconn.prepare(b"s9", b"select * from chg").status == \
                    pq.ExecStatus.COMMAND_OK
                runs.append(outcome(c.pgconn.exec_prepared(b"s9", [])))
        seen[target] = runs
    assert seen["direct"] == ["0A000", 2, 2, 2, 2, 2], seen
    assert seen["pgvalve"] == seen["direct"], seen


def test_a_statement_changed_in_one_database_still_runs_in_another(pgvalve, cluster):
    """A table changed in one database (0A000, cached plan must not change result type) says
    nothing of the same statement text in another database (found: every later call of the
    telemetry client failed with 0A000 after ALTER TABLE in another database)."""
    cluster.primary.psql("DROP DATABASE IF EXISTS pv_other")
    cluster.primary.psql("CREATE DATABASE pv_other OWNER app")
    for db in (APP_DB, "pv_other"):
        cluster.primary.psql("drop table if exists r3; create table r3 (id int, a int);"
                             "insert into r3 values (1, 1), (2, 2); alter table r3 owner to app",
                             dbname=db)
    shard = {"name": "s0", "primary": f"127.0.0.1:{cluster.primary.port}"}
    pv = tx_pool(pgvalve, pool_size=1, workers=1,
                 databases={APP_DB: {"shards": [shard]}, "pv_other": {"shards": [shard]}})
    sql = "select * from r3 where id > %s"
    with psycopg.connect(pv.dsn(), autocommit=True, prepare_threshold=0) as t, \
            psycopg.connect(pv.dsn(dbname="pv_other"), autocommit=True, prepare_threshold=0) as o:
        assert len(t.execute(sql, (0,)).fetchall()) == 2
        assert len(o.execute(sql, (0,)).fetchall()) == 2
        cluster.primary.psql("alter table r3 add column b int", dbname="pv_other")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            o.execute(sql, (0,))
        for _ in range(3):
            assert t.execute(sql, (0,)).fetchall() == [(1, 1), (2, 2)]


def test_a_statement_whose_parse_failed_is_gone_as_on_postgresql(pgvalve, cluster):
    """A Parse that fails in the flight that binds it defines nothing (found: the name stayed
    broken, 42601 again and then 42P05 for ever); a Close PostgreSQL skipped after an error
    before it closes nothing; a Parse refused in a failed transaction (25P02) leaves the name
    as it was. pgvalve answers as PostgreSQL does."""
    pv = tx_pool(pgvalve, pool_size=1)

    def codes(r):
        return [e.get("C") for e in r.errors]

    seen = {}
    for target, c in (("direct", ExtClient("127.0.0.1", cluster.primary.port, APP_USER,
                                           APP_PASSWORD, APP_DB, timeout=20)),
                      ("pgvalve", ExtClient.login(pv))):
        if target == "direct":
            c.connect()
        out = []
        out.append(codes(c.run([parse("s7", "selec 7"), bind("s7"), execute(), sync()])))
        out.append(codes(c.run([bind("s7"), execute(), sync()])))
        r = c.run([parse("s7", "select 77"), bind("s7"), execute(), sync()])
        out.append((codes(r), r.rows))
        # A Close skipped after the Execute's error.
        c.prepare("s1", "select 1 / $1::int")
        c.prepare("s2", "select 2")
        out.append(codes(c.run([bind("s1", ["0"]), execute(), close("S", "s2"), sync()])))
        out.append(c.execute("s2"))
        # A Parse refused in a failed transaction.
        c.prepare("s3", "select 3")
        c.simple("BEGIN")
        out.append(codes(c.simple("select 1 / 0")))
        out.append(codes(c.run([parse("s3", "select $1::int + 1"), sync()])))
        c.simple("ROLLBACK")
        out.append(c.execute("s3"))
        seen[target] = out
        c.terminate()
    assert seen["direct"] == [["42601"], ["26000"], ([], [["77"]]), ["22012"], [["2"]],
                              ["22012"], ["25P02"], [["3"]]], seen["direct"]
    assert seen["pgvalve"] == seen["direct"]
