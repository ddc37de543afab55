"""What cannot work across transactions is refused in transaction mode when
pool.pin_session_state is false (DESIGN §4.2): SQLSTATE 0A000 with a message starting "pgvalve:",
and the connection stays usable. Each case through the simple protocol, the extended protocol
(unnamed statement) and a named prepared statement. In statement mode, transaction blocks are
refused the same way. With the default pin_session_state: true the same statements pin the
server to the client instead (test_pinning.py); PREPARE TRANSACTION is refused either way.

LISTEN is not in this list: issue 3 has it work in transaction mode (one listening server
connection per pool fans notifications out), so it has tests of its own."""

import psycopg
import pytest
from psycopg import errors, pq

from pgcluster import APP_DB
from pgwire_ext import ExtClient, bind, execute, parse, sync

TX = pq.TransactionStatus


@pytest.fixture
def pv(pgvalve):
    return pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=5000,
                   pin_session_state=False)


def connect(pv, **kw):
    return psycopg.connect(pv.dsn(), autocommit=True, **kw)


# (statement, needs an open transaction block to be legal in PostgreSQL)
REFUSED = {
    "advisory_lock": ("select pg_advisory_lock(1)", False),
    "advisory_lock_shared": ("select pg_try_advisory_lock_shared(7, 8)", False),
    "with_hold_cursor": ("DECLARE c CURSOR WITH HOLD FOR select 1", True),
    "temp_table": ("CREATE TEMP TABLE t(x int)", False),
    "temporary_table_as": ("CREATE TEMPORARY TABLE t3 AS select 1 as x", False),
    "prepare_transaction": ("PREPARE TRANSACTION 'x'", True),
    "sql_prepare": ("PREPARE p AS select 1", False),
}

# how the statement is sent: psycopg sends a query without parameters with the simple
# protocol; binary=True forces the extended protocol (unnamed statement); prepare=True a named
# prepared statement (Parse+Sync, then Bind/Execute)
PROTOCOLS = {
    "simple": {},
    "extended": {"binary": True},
    "named": {"prepare": True},
}


def assert_refused(exc_info, sql):
    e = exc_info.value
    assert e.sqlstate == "0A000", f"{sql}: {e.sqlstate} {e}"
    assert e.diag.message_primary.startswith("pgvalve:"), e.diag.message_primary


def assert_usable(conn):
    assert conn.info.transaction_status == TX.IDLE
    assert conn.execute("select 41 + 1").fetchone() == (42,)
    assert conn.execute("select %s::int", (7,)).fetchone() == (7,)
    with conn.transaction():
        assert conn.execute("select 'in tx'").fetchone() == ("in tx",)
    assert conn.info.transaction_status == TX.IDLE


@pytest.mark.parametrize("proto", list(PROTOCOLS))
@pytest.mark.parametrize("case", list(REFUSED))
def test_refused(pv, case, proto):
    sql, in_tx = REFUSED[case]
    with connect(pv) as conn:
        for _ in range(2):  # and again: the first refusal left nothing behind
            with pytest.raises(psycopg.Error) as ei:
                if in_tx:
                    with conn.transaction():
                        conn.execute(sql, **PROTOCOLS[proto])
                else:
                    conn.execute(sql, **PROTOCOLS[proto])
            assert_refused(ei, sql)
            assert_usable(conn)


def test_refused_raw_pipeline(pv):
    """A refused named Parse in a pipelined flight: the error, nothing else until Sync, and
    the next flight works."""
    c = ExtClient.login(pv)
    try:
        r = c.run([parse("ok", "select 1"), bind("ok"), execute(),
                   parse("bad", "select pg_advisory_lock(1)"), bind("bad"), execute(), sync()])
        assert [e["C"] for e in r.errors] == ["0A000"], r.errors
        assert r.errors[0]["M"].startswith("pgvalve:")
        assert r.kinds == b"12DCEZ", r.kinds
        assert r.rows == [["1"]]
        assert r.status == "I"
        assert c.execute("ok") == [["1"]]
        r = c.run([bind("bad"), execute(), sync()])
        assert r.errors and r.errors[0]["C"] == "26000", r.errors
        r = c.simple("select 'usable'").raise_for_error()
        assert r.rows == [["usable"]]
    finally:
        c.terminate()


def test_refused_statement_in_multi_statement_query(pv):
    with connect(pv) as conn:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("select 1; select pg_advisory_lock(1); select 2")
        assert_refused(ei, "multi")
        assert_usable(conn)


def test_nothing_was_done_on_the_server(pv, cluster):
    """The refused statements did not run: no advisory lock held, no temp table, no SQL
    prepared statement, no prepared transaction."""
    with connect(pv) as conn:
        for sql, in_tx in REFUSED.values():
            with pytest.raises(psycopg.Error):
                conn.execute(sql)
        assert conn.execute("select count(*) from pg_locks where locktype = 'advisory'"
                            ).fetchone() == (0,)
        assert conn.execute("select to_regclass('pg_temp.t')").fetchone() == (None,)
        # pool_size 1: this is the server the refused PREPARE would have reached
        assert conn.execute("select count(*) from pg_prepared_statements where name = 'p'"
                            ).fetchone() == (0,)
    assert cluster.primary.scalar("select count(*) from pg_prepared_xacts") == 0


def test_what_is_allowed(pv):
    """The transaction-scoped counterparts work."""
    with connect(pv) as conn:
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE t2(x int) ON COMMIT DROP")
            conn.execute("insert into t2 values (1), (2)")
            assert conn.execute("select sum(x) from t2").fetchone() == (3,)
        assert conn.execute("select to_regclass('pg_temp.t2')").fetchone() == (None,)
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(1)")
            assert conn.execute("select count(*) from pg_locks where locktype = 'advisory' "
                                "and pid = pg_backend_pid()").fetchone() == (1,)
            conn.execute("DECLARE c2 CURSOR FOR select generate_series(1, 3)")
            assert conn.execute("FETCH ALL FROM c2").fetchall() == [(1,), (2,), (3,)]
        # mentioning the functions in a string is not calling them
        assert conn.execute("select 'pg_advisory_lock(1)'").fetchone() == ("pg_advisory_lock(1)",)
        assert conn.execute("NOTIFY ch, 'x'").statusmessage == "NOTIFY"
        assert conn.execute("select pg_notify('ch', 'y'), 1").fetchone()[1] == 1
        assert_usable(conn)


@pytest.mark.parametrize("begin", ["BEGIN", "begin transaction isolation level serializable",
                                   "START TRANSACTION"])
def test_statement_mode_refuses_transaction_blocks(pgvalve, begin):
    pv = pgvalve(mode="statement", pool_size=1, max_overflow=0)
    with connect(pv) as conn:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute(begin)
        assert_refused(ei, begin)
        assert_usable_statement_mode(conn)


def assert_usable_statement_mode(conn):
    assert conn.info.transaction_status == TX.IDLE
    assert conn.execute("select 41 + 1").fetchone() == (42,)
    assert conn.execute("select %s::int", (7,)).fetchone() == (7,)


def test_refusal_inside_transaction_fails_the_transaction(pv, cluster):
    """After an error inside a transaction block PostgreSQL fails the transaction: later
    statements are rejected and COMMIT rolls back. A refusal must behave the same, or a client
    that commits after a failed statement would commit half of its work."""
    cluster.primary.sql("drop table if exists refusal_tx; create table refusal_tx(x int); "
                        "alter table refusal_tx owner to app", dbname=APP_DB)
    with connect(pv) as conn:
        conn.execute("BEGIN")
        conn.execute("insert into refusal_tx values (1)")
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("DECLARE c CURSOR WITH HOLD FOR select 1")
        assert_refused(ei, "with hold")
        assert conn.info.transaction_status == TX.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("select 1")
        assert conn.execute("COMMIT").statusmessage == "ROLLBACK"
        assert_usable(conn)
    assert cluster.primary.scalar("select count(*) from refusal_tx", dbname=APP_DB) == 0
