"""LISTEN/NOTIFY through transaction pooling (issue 3): clients hold no server between
transactions, so pgvalve listens on their behalf and fans notifications out."""

from __future__ import annotations

import psycopg
import pytest

from itutil import drain_notifies as drain


@pytest.fixture
def txpool(pgvalve):
    return pgvalve(mode="transaction", pool_size=2, max_overflow=0)


def test_notify_reaches_idle_listener(txpool):
    listener = txpool.connect()
    notifier = txpool.connect()
    try:
        listener.execute("LISTEN readings")
        notifier.execute("NOTIFY readings, 'device 7'")
        notifier.execute("select pg_notify('readings', 'device 8')")
        assert drain(listener, 2) == [("readings", "device 7"), ("readings", "device 8")]
        # Committed in a transaction: delivered once, at commit.
        with notifier.transaction():
            notifier.execute("NOTIFY readings, 'in transaction'")
        assert drain(listener, 1) == [("readings", "in transaction")]
        # Other channels are not delivered.
        notifier.execute("NOTIFY other_channel, 'x'")
        assert drain(listener, 1, timeout=0.5) == []
    finally:
        listener.close()
        notifier.close()


def test_notification_after_listener_query(txpool):
    listener = txpool.connect()
    notifier = txpool.connect()
    try:
        # psycopg hands notifications that arrive during its own queries to handlers.
        during = []
        listener.add_notify_handler(lambda n: during.append((n.channel, n.payload)))
        listener.execute("LISTEN events")
        # The listener keeps running transactions on pooled servers; delivery still happens.
        for i in range(5):
            assert listener.execute("select %s::int", (i,)).fetchone() == (i,)
            notifier.execute(f"NOTIFY events, 'n{i}'")
        got = during + drain(listener, 5 - len(during))
        assert got == [("events", f"n{i}") for i in range(5)]
    finally:
        listener.close()
        notifier.close()


def test_hundred_listeners_ten_channels(txpool):
    listeners = [txpool.connect() for _ in range(100)]
    notifier = txpool.connect()
    try:
        for i, conn in enumerate(listeners):
            conn.execute(f"LISTEN ch{i % 10}")
        for round_ in range(3):
            for ch in range(10):
                notifier.execute("select pg_notify(%s, %s)", (f"ch{ch}", f"{ch}:{round_}"))
        for i, conn in enumerate(listeners):
            ch = i % 10
            got = drain(conn, 3)
            assert got == [(f"ch{ch}", f"{ch}:{r}") for r in range(3)], f"listener {i}"
            assert drain(conn, 1, timeout=0.05) == [], f"listener {i} got extra notifications"
    finally:
        for conn in listeners:
            conn.close()
        notifier.close()


def test_unlisten_stops_delivery(txpool):
    listener = txpool.connect()
    notifier = txpool.connect()
    try:
        listener.execute("LISTEN a_chan")
        listener.execute("LISTEN b_chan")
        listener.execute("UNLISTEN a_chan")
        notifier.execute("NOTIFY a_chan, 'dropped'")
        notifier.execute("NOTIFY b_chan, 'kept'")
        assert drain(listener, 1) == [("b_chan", "kept")]
        listener.execute("UNLISTEN *")
        notifier.execute("NOTIFY b_chan, 'after unlisten all'")
        assert drain(listener, 1, timeout=0.5) == []
    finally:
        listener.close()
        notifier.close()


def test_listen_inside_transaction_pins_the_server(txpool):
    """LISTEN inside a transaction runs on the client's own server, which then stays the
    client's (pinned) until it UNLISTENs; notifications come on that connection."""
    conn = txpool.connect()
    notifier = txpool.connect()
    try:
        with conn.transaction():
            conn.execute("LISTEN in_tx")
            pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        # after the transaction the client is still on the server that listens, while other
        # clients' transactions run on other servers
        with notifier.transaction():
            assert notifier.execute("select pg_backend_pid()").fetchone()[0] != pid
        assert conn.execute("select pg_backend_pid(), array(select pg_listening_channels())"
                            ).fetchone() == (pid, ["in_tx"])
        notifier.execute("NOTIFY in_tx, 'pinned'")
        assert drain(conn, 1) == [("in_tx", "pinned")]
        conn.execute("UNLISTEN in_tx")
        assert conn.execute("select 1").fetchone() == (1,)
    finally:
        conn.close()
        notifier.close()


def test_listen_inside_transaction_refused_without_pinning(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=2, pin_session_state=False)
    conn = psycopg.connect(pv.dsn(), autocommit=True)
    try:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as err:
            with conn.transaction():
                conn.execute("LISTEN in_tx")
        assert str(err.value).startswith("pgvalve:")
        assert conn.execute("select 1").fetchone() == (1,)
    finally:
        conn.close()


def test_listener_disconnect_is_forgotten(txpool):
    notifier = txpool.connect()
    gone = txpool.connect()
    gone.execute("LISTEN leaving")
    gone.close()
    stays = txpool.connect()
    try:
        stays.execute("LISTEN leaving")
        notifier.execute("NOTIFY leaving, 'still delivered'")
        assert drain(stays, 1) == [("leaving", "still delivered")]
    finally:
        stays.close()
        notifier.close()
