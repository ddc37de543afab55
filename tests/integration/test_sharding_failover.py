"""Shards that each have a primary and a streaming replica, one of whose hosts dies: a primary
lost in the middle of a two-phase commit over two shards (pgvalve promotes the replica, decides
the part left prepared there, and SHOW SHARDS counts it only while it is left), and a replica
lost under reads over both shards (no read fails)."""

from __future__ import annotations

import threading
import time

import psycopg

from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
from pgcluster import APP_DB, APP_PASSWORD, APP_USER, PgCluster, wait_until
from test_sharding_writes import PREPARED, md5_mod

D0 = next(d for d in range(1, 99) if md5_mod(d) == 0)
D1 = next(d for d in range(1, 99) if md5_mod(d) == 1)


def shard_cluster() -> PgCluster:
    c = PgCluster(replicas=1, extra_conf=PREPARED)
    c.start()
    p = c.primary
    p.psql("CREATE TABLE telemetry (device_id bigint NOT NULL, n int)", dbname=APP_DB)
    p.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO app", dbname=APP_DB)
    p.psql("GRANT pg_monitor TO app")
    p.psql("GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO app")
    return c


def on(node, query):
    with node.connect(dbname=APP_DB) as conn:
        return conn.execute(query).fetchall()


def sharded_database(nodes) -> dict:
    """The databases section for `nodes`, one shard each (its primary and replica)."""
    return {APP_DB: {
        "shards": [{"name": f"s{i}", "primary": f"127.0.0.1:{c.primary.port}",
                    "replicas": [f"127.0.0.1:{c.replicas[0].port}"]}
                   for i, c in enumerate(nodes)],
        "sharding": {"key": "device_id", "hash": "md5_mod", "key_type": "bigint",
                     "tables": ["telemetry"]}}}


def test_a_part_decided_on_a_promoted_replica_leaves_show_shards(pgvalve):
    nodes = [shard_cluster(), shard_cluster()]
    try:
        # s0's PREPARE takes 3 s (a deferred trigger), so s1's part waits prepared meanwhile.
        s0 = nodes[0].primary
        s0.psql("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
                "$$BEGIN PERFORM pg_sleep(3); RETURN NULL; END$$", dbname=APP_DB)
        s0.psql("CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON telemetry DEFERRABLE "
                "INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow()", dbname=APP_DB)
        for c in nodes:
            c.wait_replay()
        pv = pgvalve(
            databases=sharded_database(nodes),
            users=APP_AND_OPS,
            health={"interval_ms": 250, "timeout_ms": 1000, "failures_before_down": 2,
                    "user": APP_USER, "password": APP_PASSWORD},
            failover={"mode": "promote", "promote_after_ms": 0, "hold_writes_ms": 15000})

        def prepared_in_show_shards():
            with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD,
                                        dbname="pgvalve"), autocommit=True) as a:
                cur = a.execute("SHOW SHARDS")
                cols = [d.name for d in cur.description]
                return {r["shard"]: r["prepared"] for r in (dict(zip(cols, x)) for x in cur)}

        outcome = {}

        def transaction():
            with psycopg.connect(pv.dsn(), autocommit=False) as conn:
                try:
                    conn.execute("INSERT INTO telemetry (device_id, n) VALUES (%s, 1)", (D0,))
                    conn.execute("INSERT INTO telemetry (device_id, n) VALUES (%s, 1)", (D1,))
                    conn.commit()
                    outcome["committed"] = True
                except psycopg.Error as e:
                    outcome["error"] = e

        t = threading.Thread(target=transaction, daemon=True)
        t.start()
        s1 = nodes[1]
        wait_until(lambda: on(s1.primary, "SELECT count(*) FROM pg_prepared_xacts") == [(1,)],
                   10, message="s1's part prepared")
        wait_until(lambda: prepared_in_show_shards()["s1"] == "1", 5,
                   message="SHOW SHARDS counts the part")
        s1.primary.kill9()
        t.join(30)
        # Promoted, and the part decided there as s0's transaction ended.
        wait_until(lambda: on(s1.replicas[0], "SELECT pg_is_in_recovery()") == [(False,)], 20,
                   message="s1's replica promoted")
        wait_until(lambda: on(s1.replicas[0], "SELECT count(*) FROM pg_prepared_xacts")
                   == [(0,)], 30, message="the part decided on the promoted replica")
        wait_until(lambda: prepared_in_show_shards()["s1"] == "0", 10,
                   message="SHOW SHARDS no longer counts the part")
        rows = [on(n, "SELECT count(*) FROM telemetry")[0][0]
                for n in (nodes[0].primary, s1.replicas[0])]
        assert rows in ([0, 0], [1, 1]), (rows, outcome)
    finally:
        for c in nodes:
            c.teardown()


def test_a_primary_paused_while_its_part_commits_is_fenced_before_the_promotion(pgvalve):
    """Found by a code review: s1's primary stops (a paused VM) with pgvalve's COMMIT PREPARED
    for it in flight, after s0 committed; pgvalve promotes s1's replica, and the old primary
    comes back meanwhile. The COMMIT PREPARED ran on the old primary, the client was told
    COMMIT, and the part stayed prepared on the promoted replica (its row missing there) until
    pgvalve restarted. Now the lent server is cut and writes pause before the promotion: the
    client learns the part is left to pgvalve, which commits it on the new primary."""
    import os
    import signal

    from pgcluster import _children_of
    from pgwire import RawClient, query_message, read_message, parse_fields

    nodes = [shard_cluster(), shard_cluster()]
    frozen = []
    try:
        s0, s1 = nodes
        s0.primary.psql("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
                        "$$BEGIN PERFORM pg_sleep(3); RETURN NULL; END$$", dbname=APP_DB)
        s0.primary.psql("CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON telemetry "
                        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow()",
                        dbname=APP_DB)
        for c in nodes:
            c.wait_replay()
        pv = pgvalve(
            databases=sharded_database(nodes), users=APP_AND_OPS,
            health={"interval_ms": 250, "timeout_ms": 1000, "failures_before_down": 2,
                    "user": APP_USER, "password": APP_PASSWORD},
            failover={"mode": "promote", "promote_after_ms": 0, "hold_writes_ms": 15000})
        c = RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB).connect()
        for q in ("BEGIN", f"INSERT INTO telemetry (device_id, n) VALUES ({D0}, 1)",
                  f"INSERT INTO telemetry (device_id, n) VALUES ({D1}, 1)"):
            c.query(q)
        c.sock.sendall(query_message("COMMIT"))
        wait_until(lambda: on(s1.primary, "SELECT gid FROM pg_prepared_xacts"), 10,
                   message="s1's part prepared")
        backend = on(s1.primary, "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND "
                                 "query LIKE 'PREPARE TRANSACTION%'")[0][0]
        os.kill(backend, signal.SIGSTOP)  # the COMMIT PREPARED sent to it waits there
        frozen.append(backend)
        s1.wait_replay()
        wait_until(lambda: on(s0.primary, "SELECT count(*) FROM telemetry")[0][0] == 1, 15,
                   message="s0 committed")
        postmaster = s1.primary.postmaster_pid()
        for p in [postmaster] + [p for p in _children_of(postmaster) if p != backend]:
            os.kill(p, signal.SIGSTOP)
            frozen.append(p)
        wait_until(lambda: on(s1.replicas[0], "SELECT pg_is_in_recovery()") == [(False,)], 30,
                   message="s1's replica promoted")
        for p in frozen:
            os.kill(p, signal.SIGCONT)
        frozen.clear()
        c.sock.settimeout(40)
        error = None
        while True:
            kind, payload = read_message(c.sock)
            if kind == b"E":
                error = parse_fields(payload)
            if kind == b"Z":
                break
        assert error is not None and error["C"] == "08006", error
        assert "other shards committed it" in error["M"], error
        new_primary = s1.replicas[0]
        wait_until(lambda: not on(new_primary, "SELECT gid FROM pg_prepared_xacts"), 20,
                   message="the part committed on the promoted replica")
        assert on(new_primary, "SELECT count(*) FROM telemetry") == [(1,)]
        c.terminate()
    finally:
        for p in frozen:
            os.kill(p, signal.SIGCONT)
        for c in nodes:
            c.teardown()


def test_a_replica_killed_under_reads_over_several_shards_costs_no_read(pgvalve):
    # Reads over both shards run on replicas; one shard's replica dies under them. A part cut
    # there before its shard answered runs again on that shard's primary, as a read on one shard
    # does, so no client sees an error.
    nodes = [shard_cluster(), shard_cluster()]
    try:
        for c in nodes:
            c.primary.psql("INSERT INTO telemetry SELECT d, 1 FROM generate_series(1, 50) d",
                           dbname=APP_DB)
            c.wait_replay()
        pv = pgvalve(
            databases=sharded_database(nodes),
            users=APP_AND_OPS, pool_size=8,
            routing={"read_your_writes": "off"},
            health={"interval_ms": 500, "timeout_ms": 1000, "failures_before_down": 2,
                    "user": APP_USER, "password": APP_PASSWORD})
        ok, errors = [0], []
        lock = threading.Lock()
        stop = time.monotonic() + 4.0

        def reader():
            with psycopg.connect(pv.dsn(), autocommit=True) as conn:
                while time.monotonic() < stop:
                    try:
                        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (100,)
                        with lock:
                            ok[0] += 1
                    except psycopg.Error as e:
                        with lock:
                            errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        before_kill = ok[0]
        nodes[1].replicas[0].kill9()
        for t in threads:
            t.join(15)
        assert errors == []
        assert before_kill > 20 and ok[0] - before_kill > 20
    finally:
        for c in nodes:
            c.teardown()
