"""LISTEN/NOTIFY through transaction pooling (issue 3): clients hold no server between
transactions, so pgvalve listens on their behalf and fans notifications out."""

from __future__ import annotations

import time

import psycopg
import pytest

from itutil import drain_notifies as drain
from pgcluster import APP_DB, APP_PASSWORD, APP_USER, wait_until
from test_sharding import config as sharding_config, shards  # noqa: F401 (fixture)


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


# ---- One listening state per client (hub and server agree) ----------------------------------

def unlisten_in_a_transaction(c):
    with c.transaction():
        c.execute("UNLISTEN a")


def unlisten_all_with_a_select(c):
    c.execute("UNLISTEN *; SELECT 1")  # asyncpg's reset query on a pool's release


def unlisten_while_pinned(c):
    c.execute("select pg_advisory_lock(1)")
    c.execute("UNLISTEN a")
    c.execute("select pg_advisory_unlock(1)")


@pytest.mark.parametrize("unlisten", [unlisten_in_a_transaction, unlisten_all_with_a_select,
                                      unlisten_while_pinned])
def test_unlisten_on_a_server_stops_what_the_hub_delivers(txpool, unlisten):
    """An UNLISTEN that runs on a server (in a transaction, with another statement, on a pinned
    server) leaves the client listening on nothing, as PostgreSQL does."""
    c = txpool.connect()
    n = txpool.connect()
    c.execute("LISTEN a")
    c.execute("LISTEN b")
    unlisten(c)
    n.execute("NOTIFY a, 'after unlisten'")
    n.execute("NOTIFY b, 'b'")
    expected = [] if unlisten is unlisten_all_with_a_select else [("b", "b")]
    assert drain(c, 2, timeout=1) == expected


def test_unlisten_rolled_back_keeps_listening(txpool):
    c = txpool.connect()
    n = txpool.connect()
    c.execute("LISTEN k")
    c.execute("BEGIN")
    c.execute("UNLISTEN k")
    c.execute("ROLLBACK")
    n.execute("NOTIFY k, 'kept'")
    assert drain(c, 1, timeout=2) == [("k", "kept")]


def test_listen_on_the_hub_and_on_its_server_delivers_once(txpool):
    c = txpool.connect()
    n = txpool.connect()
    c.execute("LISTEN a")
    with c.transaction():
        c.execute("LISTEN a")  # pins the client's server, which listens too
    n.execute("NOTIFY a, 'once'")
    assert drain(c, 3, timeout=1) == [("a", "once")]


def test_sharded_unlisten_in_a_transaction_after_a_statement(shards, pgvalve):
    pv = pgvalve(**sharding_config(shards))
    c = pv.connect()
    n = pv.connect()
    c.execute("LISTEN hub")
    c.execute("BEGIN")
    c.execute("select * from telemetry where device_id = 1")
    c.execute("UNLISTEN hub")
    c.execute("COMMIT")
    n.execute("NOTIFY hub, 'after'")
    assert drain(c, 1, timeout=1) == []


def test_unlisten_of_a_quoted_star_is_one_channel(txpool):
    c = txpool.connect()
    n = txpool.connect()
    c.execute('LISTEN "*"')
    c.execute("LISTEN keep")
    c.execute('UNLISTEN "*"')
    n.execute("NOTIFY keep, 'k'")
    n.execute('NOTIFY "*", \'star\'')
    assert drain(c, 2, timeout=1) == [("keep", "k")]


@pytest.mark.parametrize("sql", ["LISTEN ext1 junk", "LISTEN a.b", "LISTEN a, b"])
def test_listen_of_more_than_one_name_is_a_syntax_error(txpool, sql):
    c = txpool.connect()
    with pytest.raises(psycopg.errors.SyntaxError):
        c.execute(sql)
    c.execute("select 1")


# ---- The shared listening connection: confirmed, lost, logged in anew -----------------------

def hub_pids(cluster, user=None):
    import pgcluster
    with cluster.primary.connect(dbname=pgcluster.APP_DB) as d:
        rows = d.execute("select pid, usename, query from pg_stat_activity "
                         "where backend_type = 'client backend' and pid <> pg_backend_pid()"
                         ).fetchall()
    return [p for p, u, q in rows
            if "LISTEN" in q.upper() and "SELECT" not in q.upper() and (user is None or u == user)]


def terminate(cluster, pid):
    cluster.primary.sql("select pg_terminate_backend(%s)", (pid,))


def test_lost_listening_connection_closes_its_listeners(txpool, cluster):
    """Notifications sent while pgvalve has no listening connection would be lost: a listener
    learns it as from a direct connection that dropped, and may LISTEN again."""
    a = txpool.connect()
    b = txpool.connect()
    n = txpool.connect()
    a.execute("LISTEN x")
    wait_until(lambda: hub_pids(cluster), 5, message="the hub listens")
    terminate(cluster, hub_pids(cluster)[0])
    with pytest.raises(psycopg.OperationalError) as e:
        for _ in range(50):
            a.execute("select 1")
            time.sleep(0.1)
    assert "notifications may have been missed" in str(e.value)
    # The next LISTEN returns once a new connection listens: nothing sent after it is missed.
    b.execute("LISTEN x")
    n.execute("NOTIFY x, 'after b listened'")
    assert drain(b, 1, timeout=3) == [("x", "after b listened")]


def test_failed_listen_leaves_the_client_unsubscribed(pgvalve, cluster):
    try:
        cluster.create_user("lim_listen", "limpw")
    except Exception:
        pass
    cluster.primary.psql("ALTER ROLE lim_listen CONNECTION LIMIT 1")
    try:
        pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0,
                     users=[{"name": APP_USER, "password": APP_PASSWORD},
                            {"name": "lim_listen", "password": "limpw"}])
        holder = pv.connect(user="lim_listen", password="limpw")
        holder.execute("BEGIN")
        holder.execute("select 1")  # the one server the role may have
        a = pv.connect(user="lim_listen", password="limpw")
        b = pv.connect(user="lim_listen", password="limpw")
        for c in (a, b):
            with pytest.raises(psycopg.Error) as e:
                c.execute("LISTEN q")
            assert e.value.sqlstate == "53300"  # the server's own
            assert str(e.value).startswith("pgvalve: ") and "too many connections" in str(e.value)
        holder.execute("COMMIT")
        cluster.primary.psql("ALTER ROLE lim_listen CONNECTION LIMIT -1")
        n = pv.connect()
        n.execute("NOTIFY q, 'hello'")
        assert drain(a, 1, timeout=1) == []
        assert drain(b, 1, timeout=1) == []
        a.execute("LISTEN q")
        n.execute("NOTIFY q, 'now'")
        assert drain(a, 1, timeout=2) == [("q", "now")]
    finally:
        cluster.primary.psql("ALTER ROLE lim_listen CONNECTION LIMIT -1")


def test_listening_connection_logs_in_with_a_rotated_password(pgvalve, cluster):
    try:
        cluster.create_user("rot_listen", "p1")
    except Exception:
        cluster.primary.psql("ALTER ROLE rot_listen PASSWORD 'p1'")
    pv = pgvalve(mode="transaction", pool_size=2, max_overflow=0,
                 users=[{"name": APP_USER, "password": APP_PASSWORD},
                        {"name": "rot_listen", "password": "p1"}])
    # Logged in and listened before the rotation.
    z = pv.connect(user="rot_listen", password="p1")
    z.execute("LISTEN zz")
    z.execute("UNLISTEN zz")
    cluster.primary.psql("ALTER ROLE rot_listen PASSWORD 'p2'")
    pv.config["users"][1]["password"] = "p2"
    pv.reload(pv.config)
    for pid in hub_pids(cluster, "rot_listen"):  # (it may have closed already: nobody listens)
        terminate(cluster, pid)
    z.execute("LISTEN r")  # a new connection, with the password configured now
    n = pv.connect()
    n.execute("NOTIFY r, 'after rotation'")
    assert drain(z, 1, timeout=2) == [("r", "after rotation")]


def test_idle_session_timeout_does_not_end_the_listening_connection(pgvalve, cluster):
    try:
        cluster.create_user("idle_listen", "ipw")
    except Exception:
        pass
    cluster.primary.psql("ALTER ROLE idle_listen SET idle_session_timeout = '1s'")
    try:
        pv = pgvalve(mode="transaction", pool_size=2, max_overflow=0,
                     users=[{"name": APP_USER, "password": APP_PASSWORD},
                            {"name": "idle_listen", "password": "ipw"}])
        a = pv.connect(user="idle_listen", password="ipw")
        a.execute("LISTEN t")
        n = pv.connect()
        sent = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            n.execute(f"NOTIFY t, '{sent}'")
            sent += 1
            time.sleep(0.02)
        assert drain(a, sent, timeout=3) == [("t", str(i)) for i in range(sent)]
        a.execute("select 1")
    finally:
        cluster.primary.psql("ALTER ROLE idle_listen RESET idle_session_timeout")


def test_listening_connection_closes_after_the_last_unlisten(txpool, cluster):
    a = txpool.connect()
    a.execute("LISTEN gone")
    wait_until(lambda: hub_pids(cluster), 5, message="the hub listens")
    a.execute("UNLISTEN gone")
    wait_until(lambda: not hub_pids(cluster), 5, message="the hub's connection closes")


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_burst_to_many_listeners_shares_one_copy(pgvalve):
    """Each notification is held once for all its listeners, not once per listener."""
    pv = pgvalve(mode="transaction", pool_size=2, max_overflow=0)
    listeners = []
    try:
        for _ in range(300):
            c = pv.connect()
            c.execute("LISTEN burst")
            listeners.append(c)
        n = pv.connect()
        before = vm_hwm_kib(pv.pid)
        # 120 notifications of 8 KB: under the 1 MiB a client may have waiting.
        n.execute("select count(pg_notify('burst', g || repeat('x', 7900))) "
                  "from generate_series(1, 120) g")
        got = [len(drain(c, 120, timeout=10)) for c in listeners[:3]]
        time.sleep(1)
        grew_mib = (vm_hwm_kib(pv.pid) - before) / 1024
        assert got == [120, 120, 120]
        # A copy per listener would be 300 x 0.95 MB = 285 MB.
        assert grew_mib < 100, grew_mib
    finally:
        for c in listeners:
            c.close()


def test_listen_of_a_client_in_its_databases_encoding_is_refused(pgvalve, cluster):
    """A client that never sets client_encoding speaks its database's: LATIN1 here, which the
    shared connection's UTF8 would garble, as for a client that set LATIN1 itself."""
    cluster.primary.psql("DROP DATABASE IF EXISTS listen_latin1")
    cluster.primary.psql("CREATE DATABASE listen_latin1 OWNER app ENCODING 'LATIN1' "
                         "LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    shard = {"name": "s0", "primary": f"127.0.0.1:{cluster.primary.port}"}
    pv = pgvalve(mode="transaction", pool_size=2, max_overflow=0,
                 databases={APP_DB: {"shards": [shard]}, "listen_latin1": {"shards": [shard]}})
    with psycopg.connect(pv.dsn(dbname="listen_latin1"), autocommit=True) as c:
        assert c.execute("SHOW client_encoding").fetchone() == ("LATIN1",)
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            c.execute("LISTEN cafe")
        assert "LATIN1" in str(e.value)


def test_listen_of_a_client_in_another_encoding_is_refused(txpool):
    """The shared connection passes notifications on in UTF8; PostgreSQL would convert them for
    a LATIN1 client, so pgvalve refuses rather than send it bytes in the wrong encoding."""
    latin1 = txpool.connect(client_encoding="LATIN1")
    with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
        latin1.execute("LISTEN cafe")
    assert "client_encoding" in str(e.value)
    latin1.execute("select 1")
    utf8 = txpool.connect()
    utf8.execute('LISTEN "café"')
    txpool.connect().execute("""NOTIFY "café", 'crème'""")
    assert drain(utf8, 1, timeout=2) == [("café", "crème")]
