"""Session mode (DESIGN §4.2): a client keeps its server connection until it leaves, so all
session state survives across its transactions; when it leaves, DISCARD ALL runs and the next
client on that server (pool_size 1) sees none of it."""

import time

import psycopg
import pytest

from pgcluster import APP_DB


@pytest.fixture
def pv(pgvalve):
    return pgvalve(mode="session", pool_size=1, max_overflow=0, checkout_timeout_ms=5000)


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def test_session_state_survives_transactions(pv):
    with psycopg.connect(pv.dsn(), autocommit=True) as a:
        pid = one(a, "select pg_backend_pid()")
        a.execute("SET work_mem = '7MB'")
        a.execute("SET statement_timeout = '41s'")
        a.execute("create temporary table tmp_session(v int)")
        a.execute("insert into tmp_session values (1)")
        a.execute("PREPARE sess_stmt(int) AS select $1 * 2")
        for i in range(3):
            with a.transaction():
                assert one(a, "select pg_backend_pid()") == pid
                assert one(a, "show work_mem") == "7MB"
                a.execute("insert into tmp_session values (%s)", (i,))
        assert one(a, "show statement_timeout") == "41s"
        assert one(a, "select count(*) from tmp_session") == 4
        assert one(a, "EXECUTE sess_stmt(21)") == 42
        assert one(a, "select pg_backend_pid()") == pid


def test_next_client_does_not_inherit_state(pv, cluster):
    default_work_mem = cluster.primary.scalar("show work_mem", dbname=APP_DB)
    with psycopg.connect(pv.dsn(), autocommit=True) as a:
        pid_a = one(a, "select pg_backend_pid()")
        a.execute("SET work_mem = '7MB'")
        a.execute("SET search_path = pg_catalog")
        a.execute("create temporary table tmp_leak(v int)")
        a.execute("PREPARE leak_stmt AS select 1")
        assert one(a, "select pg_try_advisory_lock(4242)") is True  # session-level lock
        a.execute("LISTEN leak_channel")
    with psycopg.connect(pv.dsn(), autocommit=True) as b:
        pid_b = one(b, "select pg_backend_pid()")
        assert one(b, "show work_mem") == default_work_mem
        assert one(b, "show search_path") == '"$user", public'
        assert one(b, "select to_regclass('pg_temp.tmp_leak')") is None
        assert one(b, "select count(*) from pg_prepared_statements") == 0
        assert one(b, "select count(*) from pg_listening_channels()") == 0
        assert one(b, "select count(*) from pg_locks where locktype = 'advisory' "
                      "and pid = pg_backend_pid()") == 0
        # and another session can take the advisory lock a held
        with psycopg.connect(cluster.primary.conninfo(APP_DB), autocommit=True) as direct:
            assert one(direct, "select pg_try_advisory_lock(4242)") is True
            direct.execute("select pg_advisory_unlock(4242)")
        # b can define the same names a used
        b.execute("create temporary table tmp_leak(v int)")
        b.execute("PREPARE leak_stmt AS select 2")
        assert one(b, "EXECUTE leak_stmt") == 2
    # pool_size 1: b reused a's server (DISCARD ALL) or got a fresh one; either way, clean.
    # Record which, so a failure above can be read correctly.
    print(f"server pid a={pid_a} b={pid_b} ({'reused' if pid_a == pid_b else 'new'})")


def test_second_client_waits_for_the_session(pv):
    """pool_size 1 in session mode: a second client waits for the first to leave."""
    import threading
    import time
    a = psycopg.connect(pv.dsn(), autocommit=True)
    pid_a = one(a, "select pg_backend_pid()")
    threading.Timer(0.8, a.close).start()
    t0 = time.monotonic()
    with psycopg.connect(pv.dsn(), autocommit=True) as b:
        pid_b = one(b, "select pg_backend_pid()")
        waited = time.monotonic() - t0
        assert waited >= 0.6, f"second client served after {waited:.2f}s while the first " \
                              f"held the only server (pids {pid_a}, {pid_b})"
        assert one(b, "show work_mem") is not None


# --- RESET returns to the client's startup values ------------------------------------------------

STARTUP_OPTIONS = "-c%20work_mem%3D5MB%20-c%20DateStyle%3DGerman"


@pytest.mark.parametrize("reset", ["RESET work_mem", "RESET ALL", "DISCARD ALL"])
def test_reset_returns_to_startup_options(pv, cluster, reset):
    """A setting the client gave at startup (libpq `options=-c ...`) is what RESET, RESET ALL
    and DISCARD ALL return to, as on a direct connection; not the server's default."""
    with psycopg.connect(pv.dsn(options=STARTUP_OPTIONS), autocommit=True) as a:
        assert one(a, "show work_mem") == "5MB"
        assert one(a, "show DateStyle") == "German, DMY"
        a.execute("SET work_mem = '8MB'")
        a.execute("SET DateStyle = 'ISO, MDY'")
        assert one(a, "show work_mem") == "8MB"
        a.execute(reset)
        for _ in range(2):  # and in the transactions after it
            with a.transaction():
                assert one(a, "show work_mem") == "5MB"
                assert one(a, "show DateStyle") == \
                    ("ISO, MDY" if reset == "RESET work_mem" else "German, DMY")
        assert a.info.parameter_status("DateStyle") == \
            ("ISO, MDY" if reset == "RESET work_mem" else "German, DMY")
    # the next client of that server has the server's defaults
    with psycopg.connect(pv.dsn(), autocommit=True) as b:
        assert one(b, "show work_mem") == cluster.primary.scalar("show work_mem", dbname=APP_DB)


def test_reset_returns_to_startup_parameter(pv, monkeypatch):
    """PGDATESTYLE is sent as a startup parameter (not in options)."""
    monkeypatch.setenv("PGDATESTYLE", "SQL, DMY")
    with psycopg.connect(pv.dsn(), autocommit=True) as a:
        assert one(a, "show DateStyle") == "SQL, DMY"
        a.execute("SET DateStyle = 'ISO'")
        assert one(a, "show DateStyle") == "ISO, DMY"
        a.execute("RESET DateStyle")
        assert one(a, "show DateStyle") == "SQL, DMY"
        a.execute("SET DateStyle = 'Postgres'")
        a.execute("RESET ALL")
        assert one(a, "show DateStyle") == "SQL, DMY"
        assert a.info.parameter_status("DateStyle") == "SQL, DMY"


def test_temp_table_client_leaves_server_closed(pv):
    """A session-mode client that created a temporary table: when it leaves, its server
    connection is closed rather than reused (pool_size 1, so the next client would otherwise
    get the same backend). A client that created none leaves its server for reuse."""
    with psycopg.connect(pv.dsn(), autocommit=True) as a:
        plain_pid = one(a, "select pg_backend_pid()")
    with psycopg.connect(pv.dsn(), autocommit=True) as b:
        reused_pid = one(b, "select pg_backend_pid()")
        b.execute("create temporary table tmp_closed(v int)")
        b.execute("insert into tmp_closed values (1)")
    with psycopg.connect(pv.dsn(), autocommit=True) as c:
        next_pid = one(c, "select pg_backend_pid()")
        assert one(c, "select to_regclass('pg_temp.tmp_closed')") is None
    print(f"plain client {plain_pid}, then {reused_pid} (temp table), then {next_pid}")
    assert reused_pid == plain_pid, "a server without temporary objects was not reused"
    assert next_pid != reused_pid, \
        f"backend {reused_pid} that had a temporary table was given to the next client"


def test_prepared_statements_are_not_lost_silently_when_the_server_is_replaced(pv, cluster):
    """Session mode: when a client's server connection is lost (the primary restarted) and
    pgvalve keeps the client connected on a new server, the statements the client prepared
    (psycopg prepares a query after 5 executions, as pgbench -M prepared and JDBC do) must not
    vanish under it: either they still work, or the client's connection is closed so that its
    driver starts afresh. Never a 26000 'prepared statement does not exist' on every later
    execution (found by the operations audit: a failover drill left session-mode psycopg
    clients failing every statement until they were restarted)."""
    a = psycopg.connect(pv.dsn(), autocommit=True)  # prepare_threshold: psycopg's default, 5
    try:
        for i in range(7):
            assert one(a, "select %s::int + 1", (i,)) == i + 1
        assert one(a, "select count(*) from pg_prepared_statements") >= 1
        cluster.primary.stop(mode="fast")
        cluster.primary.start()
        sqlstates = []
        for i in range(6):
            try:
                assert one(a, "select %s::int + 1", (i,)) == i + 1
                sqlstates.append("ok")
            except psycopg.Error as e:
                sqlstates.append(e.sqlstate)
                if a.closed:  # pgvalve ended the session: the application reconnects
                    a = psycopg.connect(pv.dsn(), autocommit=True)
        assert "26000" not in sqlstates, sqlstates
        assert sqlstates[-3:] == ["ok"] * 3, sqlstates
    finally:
        a.close()


def test_a_client_whose_server_is_killed_is_closed_before_its_next_statement_runs(pv, cluster):
    """A session-mode client's server is killed while the client is idle (pg_terminate_backend,
    idle_session_timeout): its session (locks, LISTEN, settings) is gone, so the client is closed
    with the server's 57P01 and a pgvalve: message, as PostgreSQL closes it. Its next statement
    fails and does not run (found: it ran on a new server and committed, and psycopg raised
    AdminShutdown for it, reading the stray FATAL as its answer)."""
    cluster.primary.psql("drop table if exists killed_writes; create table killed_writes (v int);"
                         "alter table killed_writes owner to app", dbname=APP_DB)
    with psycopg.connect(pv.dsn(), autocommit=True) as a:
        pid = one(a, "select pg_backend_pid()")
        one(a, "select pg_advisory_lock(81)")
        cluster.primary.sql("select pg_terminate_backend(%s)", (pid,))
        time.sleep(0.5)
        with pytest.raises(psycopg.OperationalError) as e:
            a.execute("insert into killed_writes values (1)")
        # libpq reads the FATAL that came while the client was idle as the connection's end
        # (no SQLSTATE then), as it does when PostgreSQL itself closes an idle session.
        assert e.value.sqlstate in ("57P01", None), e.value
        assert "pgvalve: the server connection holding this session was lost" in str(e.value)
        assert "reconnect" in str(e.value)
        assert a.closed or a.broken
    assert cluster.primary.scalar("select count(*) from killed_writes", dbname=APP_DB) == 0
    with psycopg.connect(pv.dsn(), autocommit=True) as b:
        assert one(b, "select pg_try_advisory_lock(81)") is True
