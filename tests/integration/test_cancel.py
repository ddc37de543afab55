"""Query cancellation through pgvalve: libpq's PQcancel (psycopg conn.cancel()) opens a new
connection to pgvalve with the BackendKeyData pgvalve gave the client; the running query must
fail with 57014 promptly and the client connection must keep working."""

import threading
import time

import psycopg
import pytest
from psycopg import errors


def run_and_cancel(conn, sql="select pg_sleep(30)", delay=1.0):
    """Run `sql` in this thread; cancel it from another thread after `delay` seconds.
    Returns (exception raised, seconds from cancel call to the error)."""
    t_cancel = {}

    def canceller():
        time.sleep(delay)
        t_cancel["t"] = time.monotonic()
        conn.cancel()

    th = threading.Thread(target=canceller, daemon=True)
    th.start()
    t0 = time.monotonic()
    exc = None
    try:
        conn.execute(sql)
    except psycopg.Error as e:
        exc = e
    t_end = time.monotonic()
    th.join(5)
    assert exc is not None, f"query was not cancelled (ran {t_end - t0:.1f}s)"
    return exc, t_end - t_cancel["t"]


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_cancel_running_query(pgvalve, mode):
    pv = pgvalve(mode=mode, pool_size=2)
    with pv.connect(autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        exc, latency = run_and_cancel(conn)
        assert isinstance(exc, errors.QueryCanceled), repr(exc)
        assert exc.sqlstate == "57014"
        assert latency < 1.0, f"cancel took {latency:.2f}s"
        # the connection still works, and no cancel leaks into the next query
        assert conn.execute("select 2").fetchone() == (2,)
        assert conn.execute("select pg_sleep(1.2), 3").fetchone()[1] == 3


def test_cancel_inside_transaction_then_rollback(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=2)
    with pv.connect(autocommit=False) as conn:
        conn.execute("select 1")
        exc, latency = run_and_cancel(conn)
        assert exc.sqlstate == "57014"
        assert latency < 1.0, f"cancel took {latency:.2f}s"
        conn.rollback()
        assert conn.execute("select 4").fetchone() == (4,)
        conn.commit()


def test_cancel_reaches_right_client(pgvalve):
    """Two clients running long queries on different servers: cancelling one leaves the
    other running."""
    pv = pgvalve(mode="transaction", pool_size=2)
    with pv.connect(autocommit=True) as a, pv.connect(autocommit=True) as b:
        result = {}

        def run_b():
            try:
                result["b"] = b.execute("select pg_sleep(2.5), 'b done'").fetchone()[1]
            except psycopg.Error as e:
                result["b"] = e

        th = threading.Thread(target=run_b, daemon=True)
        th.start()
        exc, latency = run_and_cancel(a, delay=0.8)
        assert exc.sqlstate == "57014"
        th.join(10)
        assert result.get("b") == "b done", f"client b was affected: {result.get('b')!r}"
        assert a.execute("select 1").fetchone() == (1,)


def test_cancel_with_nothing_running_is_harmless(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=1)
    with pv.connect(autocommit=True) as conn:
        conn.cancel()
        time.sleep(0.3)
        assert conn.execute("select pg_sleep(0.5), 5").fetchone()[1] == 5


def test_a_cancel_on_its_way_never_stops_the_next_clients_query(pgvalve):
    """A and B share one server connection. A runs short queries, B long ones, and A's cancel
    key is sent over and over: a cancel still on its way to PostgreSQL when A's query ends must
    not stop B's query on the same server (the server waits for it before its next lend)."""
    from itutil import cancels_on_their_way, raw_login

    pv = pgvalve(pool_size=1, max_overflow=0, mode="transaction", checkout_timeout_ms=20000)
    a, b = raw_login(pv, timeout=30), raw_login(pv, timeout=30)
    try:
        counts = cancels_on_their_way(pv, a, "select 1", b, "select pg_sleep(0.05)")
    finally:
        a.terminate()
        b.terminate()
    assert counts["b"] > 20 and counts["b_cancelled"] == 0, counts


def test_cancel_of_a_request_waiting_for_a_server(pgvalve):
    """A cancel for a request still queued for a server (the pool is busy) fails it at once with
    57014, and the statement never runs: drivers with timeouts (asyncpg's timeout=, psycopg's
    cancel) would otherwise see it start, and wait for it, once a server frees up."""
    pv = pgvalve(pool_size=1, max_overflow=0, workers=1, checkout_timeout_ms=20000)
    holder = pv.connect(autocommit=False)
    holder.execute("select 1")  # holds the pool's one server in its transaction
    with pv.connect(autocommit=True) as conn:
        exc, after_cancel = run_and_cancel(
            conn, "select pg_sleep(3), set_config('application_name', 'ran', false)", delay=0.5)
        assert isinstance(exc, errors.QueryCanceled), exc
        assert "pgvalve:" in str(exc) and "waiting for a server" in str(exc)
        assert after_cancel < 2
        holder.rollback()
        assert conn.execute("select 1").fetchone()[0] == 1
        assert conn.execute("show application_name").fetchone()[0] != "ran"
    holder.close()
