"""A client that vanishes mid-transaction (socket closed without Terminate, or its process
SIGKILLed) must never leave a dirty server in the pool (DESIGN §4.2): with pool_size 1 the
next client gets that same server slot and must find no open transaction and no held lock."""

import signal
import subprocess
import time

import psycopg
import pytest

from pgcluster import APP_DB, APP_PASSWORD, APP_USER, wait_until
from pgwire import RawClient


@pytest.fixture
def pv(pgvalve, cluster):
    cluster.primary.psql("drop table if exists t; create table t(id int primary key, v int);"
                         "insert into t values (1, 0); alter table t owner to app;",
                         dbname=APP_DB)
    return pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=8000)


def raw_client(pv):
    return RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB).connect()


def assert_clean_server(pv, cluster, a_pid=None):
    """Client B, on the single pooled server, sees a clean session and can take the lock."""
    t0 = time.monotonic()
    with psycopg.connect(pv.dsn(), autocommit=True) as b:
        notices = []
        b.add_notice_handler(lambda d: notices.append(d.message_primary))
        with b.transaction():
            b.execute("SET LOCAL lock_timeout = '2s'")
            b.execute("SET LOCAL statement_timeout = '5s'")
            assert b.execute("select txid_current_if_assigned()").fetchone()[0] is None
            # A server closed for a vanished client lets go of its locks as its backend exits,
            # within moments of the close (pg_locks is read afresh by each query).
            def locks_on_t():
                return b.execute("select count(*) from pg_locks where locktype = 'relation' "
                                 "and relation = 't'::regclass and granted").fetchone()[0]
            wait_until(lambda: locks_on_t() == 0, 2,
                       message="no granted locks on t seen from a fresh transaction")
            assert b.execute("show transaction_isolation").fetchone()[0] == "read committed"
            # the same lock the vanished client held: must be granted, not time out
            b.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
            b.execute("update t set v = v + 1 where id = 1")
            assert b.execute("select pg_try_advisory_xact_lock(42)").fetchone()[0] is True
        assert not any("already a transaction in progress" in m for m in notices), notices
        assert b.execute("select v from t where id = 1").fetchone()[0] >= 1
        b_pid = b.execute("select pg_backend_pid()").fetchone()[0]
    elapsed = time.monotonic() - t0
    # nothing on the primary is left idle in transaction for app
    left = cluster.primary.sql(
        "select pid, state, query from pg_stat_activity where usename = 'app' "
        "and state like 'idle in transaction%'")
    assert left == [], f"server sessions left idle in transaction: {left}"
    return elapsed, b_pid


def test_raw_socket_close_after_lock(pv, cluster):
    a = raw_client(pv)
    a.query("BEGIN")
    a.query("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    msgs = a.query("insert into t values (100, 1)")
    assert a.transaction_status(msgs) == "T"
    a_pid = int(a.rows("select pg_backend_pid()")[0][0])
    a.close_abruptly()
    assert_clean_server(pv, cluster, a_pid)
    assert cluster.primary.scalar("select count(*) from t where id = 100", dbname=APP_DB) == 0


def test_raw_socket_reset_after_row_lock(pv, cluster):
    a = raw_client(pv)
    a.query("BEGIN")
    a.query("update t set v = v + 100 where id = 1")
    a.query("select pg_advisory_xact_lock(42)")
    a.close_abruptly(reset=True)
    assert_clean_server(pv, cluster)
    assert cluster.primary.scalar("select v < 100 from t where id = 1", dbname=APP_DB) is True


def test_psql_sigkill_mid_transaction(pv, cluster):
    p = subprocess.Popen(["psql", "-X", "-q", "-At", pv.dsn()], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        p.stdin.write("BEGIN;\nLOCK TABLE t IN ACCESS EXCLUSIVE MODE;\n"
                      "insert into t values (200, 1);\nselect 'locked';\n")
        p.stdin.flush()
        line = p.stdout.readline().strip()
        assert line == "locked", line
        # the lock is really held on the primary
        assert cluster.primary.scalar(
            "select count(*) from pg_locks where locktype = 'relation' "
            "and relation = 't'::regclass and mode = 'AccessExclusiveLock' and granted",
            dbname=APP_DB) == 1
        p.send_signal(signal.SIGKILL)
        p.wait(5)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    assert_clean_server(pv, cluster)
    assert cluster.primary.scalar("select count(*) from t where id = 200", dbname=APP_DB) == 0


def test_client_vanishes_while_query_runs(pv, cluster):
    """The client disconnects while its statement is still running inside a transaction that
    holds a lock: the next client must not wait for that statement (checkout_timeout 8 s,
    the statement would run 60 s)."""
    a = raw_client(pv)
    a.query("BEGIN")
    a.query("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    a.sock.sendall(b"Q" + (len("select pg_sleep(60)") + 5).to_bytes(4, "big")
                   + b"select pg_sleep(60)\0")
    wait_until(lambda: cluster.primary.scalar(
        "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)' "
        "and state = 'active'"), 5, message="pg_sleep running on the primary")
    a.close_abruptly()
    elapsed, _ = assert_clean_server(pv, cluster)
    assert elapsed < 8, f"next client waited {elapsed:.1f}s"
    wait_until(lambda: cluster.primary.scalar(
        "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'") == 0,
        10, message="the vanished client's pg_sleep to be cancelled or its server closed")


def test_next_client_after_clean_close_sees_same_server(pv, cluster):
    """Control: pool_size 1 really means one server, so the checks above are about it."""
    with psycopg.connect(pv.dsn(), autocommit=True) as a:
        pid_a = a.execute("select pg_backend_pid()").fetchone()[0]
    with psycopg.connect(pv.dsn(), autocommit=True) as b:
        pid_b = b.execute("select pg_backend_pid()").fetchone()[0]
    assert pid_a == pid_b
