"""Writes to several shards in one statement, against real PostgreSQL: DDL and writes to
reference tables reach every shard, as do UPDATE/DELETE whose keys span shards or that are hinted
`all_shards`; each runs in a transaction per shard, prepared there, and committed on all of them
only once every shard prepared it (two-phase commit). A write that fails on one shard changes no
shard, nor does one whose first COMMIT PREPARED fails; servers without prepared transactions
refuse the write and keep nothing of it; a shard lost between PREPARE and COMMIT leaves the
others rolled back and its own part prepared, which SHOW SHARDS reports until pgvalve rolls it
back there once the shard is back."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import psycopg
import pytest

from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
from pgcluster import APP_DB, PgCluster, wait_until

PREPARED = "max_prepared_transactions = 10"


@pytest.fixture(scope="module")
def two_pc(request):
    """Two shards whose servers allow prepared transactions."""
    nodes = [PgCluster(replicas=0, extra_conf=PREPARED) for _ in range(2)]
    for c in nodes:
        request.addfinalizer(c.teardown)
        c.start()
    return nodes


def prepare_schema(nodes):
    for c in nodes:
        c.primary.psql("DROP TABLE IF EXISTS telemetry, device_types, archive", dbname=APP_DB)
        c.primary.psql("CREATE TABLE telemetry (device_id bigint NOT NULL, value float8)",
                       dbname=APP_DB)
        c.primary.psql("CREATE TABLE device_types (id int PRIMARY KEY, name text)", dbname=APP_DB)
        c.primary.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO app", dbname=APP_DB)
        c.primary.psql("GRANT CREATE ON SCHEMA public TO app", dbname=APP_DB)


def config(nodes):
    return {
        "databases": {APP_DB: {
            "shards": [{"name": f"s{i}", "primary": f"127.0.0.1:{c.primary.port}"}
                       for i, c in enumerate(nodes)],
            "sharding": {"key": "device_id", "hash": "md5_mod", "key_type": "bigint",
                         "tables": ["telemetry", "archive"],
                         "reference_tables": ["device_types"]},
        }},
        "health": {"interval_ms": 100, "timeout_ms": 1000, "failures_before_down": 2},
    }


def md5_mod(device_id, n=2) -> int:
    return int(hashlib.md5(str(device_id).encode()).hexdigest(), 16) % n


def on(node, query):
    with node.primary.connect(dbname=APP_DB) as conn:
        return conn.execute(query).fetchall()


def prepared_on(node):
    return on(node, "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'pgvalve:%'")


def in_background(pv, sql):
    """Runs `sql` through pgvalve on a thread of its own: (the thread, what it got)."""
    outcome = {}

    def run():
        try:
            with pv.connect() as conn:
                conn.execute(sql)
                outcome["ok"] = True
        except psycopg.Error as e:
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def write_waiting_on_s1(two_pc, pgvalve):
    """A row on each shard, then a write over both whose s1 part waits on a lock another
    connection holds on s1's row, so s0's part prepares first. Returns (pgvalve, the lock's
    connection, the writer's thread, what the writer got)."""
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    a = next(d for d in range(1, 100) if md5_mod(d) == 0)
    b = next(d for d in range(1, 100) if md5_mod(d) == 1)
    with pv.connect() as conn:
        conn.execute(f"INSERT INTO telemetry (device_id, value) VALUES ({a}, 1), ({b}, 1)")
    locker = two_pc[1].primary.connect(dbname=APP_DB, autocommit=False)
    locker.execute(f"SELECT * FROM telemetry WHERE device_id = {b} FOR UPDATE")
    writer, outcome = in_background(pv, "/* pgvalve: all_shards */ UPDATE telemetry SET value = 2")
    return pv, locker, writer, outcome


def refused(conn, sql, sqlstate) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql)
    assert e.value.sqlstate == sqlstate, e.value
    assert str(e.value).startswith("pgvalve:"), e.value
    return e.value


def test_ddl_reference_and_keyless_writes_reach_every_shard(two_pc, pgvalve):
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    a = next(d for d in range(1, 50) if md5_mod(d) == 0)
    b = next(d for d in range(1, 50) if md5_mod(d) == 1)
    with pv.connect() as conn:
        conn.execute("CREATE TABLE archive (device_id bigint, value float8)")
        cur = conn.execute("INSERT INTO device_types VALUES (1, 'thermometer'), (2, 'barometer')")
        assert cur.rowcount == 2  # the same two rows on each shard: counted once
        conn.execute("UPDATE device_types SET name = %s WHERE id = %s", ("hygrometer", 2))
        for d in (a, b, a, b):
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, -1)", (d,))
        # Keys on both shards: each shard deletes its own rows.
        cur = conn.execute(f"DELETE FROM telemetry WHERE device_id IN ({a}, {b}) AND value < 0 "
                           "AND device_id > 0")
        assert cur.rowcount == 4
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 5)", (a,))
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 6)", (b,))
        refused(conn, "UPDATE telemetry SET value = 0", "0A000")  # no key, no hint
        cur = conn.execute("/* pgvalve: all_shards */ UPDATE telemetry SET value = value * 10")
        assert cur.rowcount == 2
        # RETURNING rows of every shard, with the write's own tag.
        got = conn.execute("/* pgvalve: all_shards */ UPDATE telemetry SET value = value + 1 "
                           "RETURNING device_id, value").fetchall()
        assert sorted(got) == sorted([(a, 51.0), (b, 61.0)])
        assert conn.execute("SELECT count(*) FROM archive").fetchone() == (0,)
    for node in two_pc:
        assert on(node, "SELECT * FROM device_types ORDER BY id") == [
            (1, "thermometer"), (2, "hygrometer")]
        assert on(node, "SELECT count(*) FROM archive") == [(0,)]
        assert prepared_on(node) == []
    assert on(two_pc[0], "SELECT device_id, value FROM telemetry") == [(a, 51.0)]
    assert on(two_pc[1], "SELECT device_id, value FROM telemetry") == [(b, 61.0)]


def test_a_write_to_a_reference_table_answers_as_one_database(two_pc, pgvalve):
    """A reference table has the same rows on every shard, and a write to it runs on each: the
    client gets the tag and RETURNING rows one database gives (the first shard's), in the simple
    and extended protocols, hinted or not, in a transaction or not; DDL's tags come once too."""
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    a = next(d for d in range(1, 50) if md5_mod(d) == 0)
    b = next(d for d in range(1, 50) if md5_mod(d) == 1)
    with pv.connect() as conn:
        def write(sql, params=None, **kw):
            cur = conn.execute(sql, params, **kw)
            return cur.statusmessage, cur.rowcount, cur.fetchall() if cur.description else None

        assert write("CREATE TABLE archive (device_id bigint, value float8)") == (
            "CREATE TABLE", -1, None)
        assert write("INSERT INTO device_types VALUES (1, 'sensor')", prepare=False) == (
            "INSERT 0 1", 1, None)
        assert write("INSERT INTO device_types VALUES (%s, %s), (%s, %s) RETURNING id, name",
                     (2, "x", 3, "y")) == ("INSERT 0 2", 2, [(2, "x"), (3, "y")])
        assert write("UPDATE device_types SET name = 'gauge' WHERE id = 1", prepare=False) == (
            "UPDATE 1", 1, None)
        for n in range(2):  # the second time as a named prepared statement
            assert write("UPDATE device_types SET name = %s WHERE id >= %s RETURNING id",
                         (f"meter{n}", 2), prepare=True)[:2] == ("UPDATE 2", 2)
        assert write("/* pgvalve: all_shards */ UPDATE device_types SET name = name "
                     "WHERE id = 3") == ("UPDATE 1", 1, None)
        assert write("SELECT id FROM device_types WHERE id = 1 FOR UPDATE") == (
            "SELECT 1", 1, [(1,)])
        assert write("CREATE TABLE device_types_copy AS SELECT * FROM device_types") == (
            "SELECT 3", 3, None)
        assert write("DROP TABLE device_types_copy") == ("DROP TABLE", -1, None)
        assert write("DELETE FROM device_types WHERE id = 3 RETURNING id") == (
            "DELETE 1", 1, [(3,)])
        # Writes to sharded tables over several shards still add up every shard's rows.
        assert write(f"INSERT INTO telemetry (device_id, value) VALUES ({a}, 1), ({b}, 2) "
                     "RETURNING device_id")[:2] == ("INSERT 0 2", 2)
        assert write("/* pgvalve: all_shards */ UPDATE telemetry SET value = 0")[:2] == (
            "UPDATE 2", 2)
    # Inside a transaction over both shards.
    with pv.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 3)", (a,))
        cur = conn.execute("INSERT INTO device_types VALUES (4, 'tx') RETURNING id")
        assert (cur.statusmessage, cur.rowcount, cur.fetchall()) == ("INSERT 0 1", 1, [(4,)])
        cur = conn.execute("DELETE FROM device_types WHERE id IN (2, 4)")
        assert (cur.statusmessage, cur.rowcount) == ("DELETE 2", 2)
        conn.commit()
    for node in two_pc:
        assert on(node, "SELECT * FROM device_types ORDER BY id") == [(1, "gauge")]
        assert prepared_on(node) == []


def test_an_insert_whose_rows_span_shards_is_split_between_them(two_pc, pgvalve):
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    ids = list(range(1, 41))
    with pv.connect() as conn:
        # Literal rows (simple protocol), then bound rows (extended, $1..$2n).
        values = ", ".join(f"({d}, {d}.5)" for d in ids[:20])
        cur = conn.execute(f"INSERT INTO telemetry (device_id, value) VALUES {values}",
                           prepare=False)
        assert cur.rowcount == 20
        slots = ", ".join("(%s, %s)" for _ in ids[20:])
        params = [x for d in ids[20:] for x in (d, d + 0.5)]
        got = conn.execute(f"INSERT INTO telemetry (device_id, value) VALUES {slots} "
                           "RETURNING device_id", params).fetchall()
        assert sorted(r[0] for r in got) == ids[20:]
        # The same statement again, as a named prepared statement.
        conn.execute(f"INSERT INTO telemetry (device_id, value) VALUES {slots}",
                     [x for d in ids[20:] for x in (d + 100, 0.0)], prepare=True)
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (60,)
    for i, node in enumerate(two_pc):
        placed = [r[0] for r in on(node, "SELECT device_id FROM telemetry")]
        assert placed and all(md5_mod(d) == i for d in placed), f"s{i}: a row of another shard"
        assert prepared_on(node) == []
    rows = on(two_pc[0], "SELECT device_id, value FROM telemetry") + on(
        two_pc[1], "SELECT device_id, value FROM telemetry")
    assert sorted(rows) == sorted([(d, d + 0.5) for d in ids] +
                                  [(d + 100, 0.0) for d in ids[20:]])


def test_a_write_that_fails_on_one_shard_changes_no_shard(two_pc, pgvalve):
    prepare_schema(two_pc)
    # Only shard s1 refuses this name.
    two_pc[1].primary.psql("ALTER TABLE device_types ADD CHECK (name <> 'forbidden')",
                           dbname=APP_DB)
    pv = pgvalve(**config(two_pc))
    with pv.connect() as conn:
        with pytest.raises(psycopg.Error) as e:
            conn.execute("INSERT INTO device_types VALUES (%s, %s)", (9, "forbidden"))
        assert e.value.sqlstate == "23514"
        # The connection goes on; nothing was left on either shard.
        conn.execute("INSERT INTO device_types VALUES (%s, %s)", (10, "fine"))
    for node in two_pc:
        assert on(node, "SELECT id FROM device_types ORDER BY id") == [(10,)]
        assert prepared_on(node) == []


def test_a_first_commit_that_fails_rolls_the_write_back_on_every_shard(two_pc, pgvalve):
    """The first shard's COMMIT PREPARED decides a write over several shards. Here an operator
    rolls back that shard's prepared part while the other shard's part waits on a lock; its
    COMMIT PREPARED then fails, no shard has committed, and pgvalve rolls the other part back
    instead of committing it: the write is on no shard, and the client hears 40000."""
    pv, locker, writer, outcome = write_waiting_on_s1(two_pc, pgvalve)
    try:
        wait_until(lambda: prepared_on(two_pc[0]), 10, message="shard 0's part prepared")
        gid = prepared_on(two_pc[0])[0][0]
        with two_pc[0].primary.connect(dbname=APP_DB, autocommit=True) as operator:
            operator.execute(f"ROLLBACK PREPARED '{gid}'")
    finally:
        locker.rollback()
        locker.close()
        writer.join(15)
    assert "error" in outcome, outcome
    assert outcome["error"].sqlstate == "40000", outcome["error"]
    assert str(outcome["error"]).startswith("pgvalve:"), outcome["error"]
    assert on(two_pc[0], "SELECT value FROM telemetry") == [(1.0,)]
    assert on(two_pc[1], "SELECT value FROM telemetry") == [(1.0,)], "committed on shard 1 alone"
    assert prepared_on(two_pc[1]) == []
    with pv.connect() as conn:  # the client goes on
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (2,)


def test_without_prepared_transactions_a_write_to_several_shards_is_refused(two_pc, cluster,
                                                                             pgvalve):
    # s1 is the session's cluster: max_prepared_transactions = 0.
    nodes = [two_pc[0], cluster]
    prepare_schema(nodes)
    pv = pgvalve(**config(nodes))
    with pv.connect() as conn:
        e = refused(conn, "INSERT INTO device_types VALUES (4, 'x')", "55000")
        assert "max_prepared_transactions" in str(e)
        # Writes to one shard are not affected.
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (1, 1)")
    for node in nodes:
        assert on(node, "SELECT count(*) FROM device_types") == [(0,)]
    assert prepared_on(two_pc[0]) == []


@pytest.mark.parametrize("pgvalve_stops", [False, True], ids=["pgvalve_runs", "pgvalve_stops"])
def test_a_part_left_prepared_on_a_lost_shard_is_rolled_back_once_the_shard_is_back(
        two_pc, pgvalve, pgvalve_stops):
    """s0's part waits on a lock while s1 prepares; s1 is then killed. The write rolls back on
    s0 and the client gets an error naming the transaction. s1 comes back with its part still
    prepared (two-phase state survives a crash), and pgvalve rolls it back there by itself, as
    it did on s0; SHOW SHARDS counts it until then. A pgvalve that stops first logs the command
    that finishes the part, and an operator runs it."""
    prepare_schema(two_pc)
    pv = pgvalve(users=APP_AND_OPS, **config(two_pc))
    blocker = two_pc[0].primary.connect(dbname=APP_DB)
    blocker.execute("BEGIN")
    blocker.execute("LOCK TABLE device_types IN ACCESS EXCLUSIVE MODE")
    writer, outcome = in_background(pv, "INSERT INTO device_types VALUES (7, 'seven')")
    try:
        wait_until(lambda: len(prepared_on(two_pc[1])) == 1, 15, message="s1 prepared its part")
        gid = prepared_on(two_pc[1])[0][0]
        two_pc[1].primary.stop("immediate")  # a crash: the prepared part is in its WAL
        time.sleep(0.3)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    writer.join(30)
    assert not writer.is_alive()
    assert "error" in outcome, outcome
    assert outcome["error"].sqlstate == "08006"
    assert "SHOW SHARDS" in str(outcome["error"]) and gid in str(outcome["error"])
    assert "pgvalve rolls it back there" in str(outcome["error"])
    # s0 rolled its part back: nothing there, nothing prepared.
    assert on(two_pc[0], "SELECT count(*) FROM device_types") == [(0,)]
    assert prepared_on(two_pc[0]) == []
    # Waiting while s1 is down.
    time.sleep(1.5)
    assert "event=prepared_part_waiting" in pv.log_text()
    assert "event=prepared_part_resolved" not in pv.log_text()
    if pgvalve_stops:
        # The decision would leave with the process: the log keeps it, as a command to run.
        pv.stop()
        line = next(li for li in pv.log_text().splitlines()
                    if "event=prepared_part_not_resolved" in li)
        assert gid in line and "decision=rollback" in line and "shard=s1" in line, line
        command = f"ROLLBACK PREPARED '{gid}'"
        assert command in line, line
        two_pc[1].primary.start()
        assert prepared_on(two_pc[1]) == [(gid,)]
        with two_pc[1].primary.connect(dbname=APP_DB) as operator:
            operator.execute(command)
        assert prepared_on(two_pc[1]) == []
        return

    # s1 comes back: pgvalve rolls its part back there, no operator needed.
    two_pc[1].primary.start()
    wait_until(lambda: prepared_on(two_pc[1]) == [], 30,
               message="pgvalve rolled back the part left prepared on s1")
    wait_until(lambda: "event=prepared_part_resolved" in pv.log_text(), 5,
               message="the resolution is logged")
    line = next(li for li in pv.log_text().splitlines() if "event=prepared_part_resolved" in li)
    assert gid in line and "decision=rollback" in line and "shard=s1" in line, line
    assert on(two_pc[1], "SELECT count(*) FROM device_types") == [(0,)]
    with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                         autocommit=True, prepare_threshold=None) as admin:
        def prepared_counts():
            cur = admin.execute("SHOW SHARDS")
            cols = [d.name for d in cur.description]
            return {r[cols.index("shard")]: r[cols.index("prepared")] for r in cur.fetchall()
                    if r[cols.index("database")] == APP_DB}
        wait_until(lambda: prepared_counts() == {"s0": "0", "s1": "0"}, 15,
                   message="SHOW SHARDS counts nothing left prepared")
    # The shard takes writes over both shards again.
    with pv.connect() as conn:
        conn.execute("INSERT INTO device_types VALUES (8, 'eight')")
    assert on(two_pc[1], "SELECT count(*) FROM device_types") == [(1,)]


def test_a_deciding_part_lost_during_its_commit_decides_every_part(two_pc, pgvalve):
    """s0's part decides the write. Its server dies while its COMMIT PREPARED is unanswered:
    whether the write committed is s0's to say, so pgvalve commits nothing else meanwhile and
    the client hears 40003. Once s0 is back, pgvalve commits its part (the decision was to
    commit) and s1's part follows how s0's transaction ended."""
    import signal
    pv, locker, writer, outcome = write_waiting_on_s1(two_pc, pgvalve)
    wait_until(lambda: prepared_on(two_pc[0]), 10, message="s0's part prepared")
    gid = prepared_on(two_pc[0])[0][0]
    # s0's server stops before the COMMIT PREPARED pgvalve sends once s1 has prepared.
    backend = two_pc[0].primary.scalar(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE 'PREPARE TRANSACTION%'",
        dbname=APP_DB)
    os.kill(backend, signal.SIGSTOP)
    locker.rollback()
    locker.close()
    wait_until(lambda: prepared_on(two_pc[1]), 10, message="s1's part prepared")
    time.sleep(0.5)  # pgvalve's COMMIT PREPARED is in s0's socket, unread
    os.kill(backend, signal.SIGKILL)  # s0 restarts: its part, prepared, survives
    writer.join(30)
    assert "error" in outcome, outcome
    assert outcome["error"].sqlstate == "40003", outcome["error"]
    assert str(outcome["error"]).startswith("pgvalve:")
    assert prepared_on(two_pc[1]) == [(gid,)], "nothing committed before s0 is known to have"
    wait_until(lambda: prepared_on(two_pc[0]) == [] and prepared_on(two_pc[1]) == [], 60,
               message="s0's part committed once it is back, and s1's with it")
    assert on(two_pc[0], "SELECT value FROM telemetry") == [(2.0,)]
    assert on(two_pc[1], "SELECT value FROM telemetry") == [(2.0,)]


@pytest.mark.parametrize("decider_committed", [True, False], ids=["committed", "not_committed"])
def test_parts_a_killed_pgvalve_left_prepared_are_finished_by_the_next_one(two_pc, pgvalve,
                                                                           decider_committed):
    """pgvalve is killed in the middle of a write's two-phase commit, with both parts prepared.
    Every part is named after the deciding part's transaction (s0's), which commits first: the
    next pgvalve asks s0 how that transaction ended and finishes s1's part the same way, with no
    operator. Committed: s1 commits too. Not committed: s0's own part, prepared for longer than a
    live pgvalve would leave it, is rolled back, then s1's."""
    import signal
    prepare_schema(two_pc)
    a = next(d for d in range(1, 100) if md5_mod(d) == 0)
    b = next(d for d in range(1, 100) if md5_mod(d) == 1)
    first = pgvalve(**config(two_pc))
    with first.connect() as conn:
        conn.execute(f"INSERT INTO telemetry (device_id, value) VALUES ({a}, 1), ({b}, 1)")
    # s1's part waits on a lock behind its UPDATE, its PREPARE queued after it.
    locker = two_pc[1].primary.connect(dbname=APP_DB, autocommit=False)
    locker.execute(f"SELECT * FROM telemetry WHERE device_id = {b} FOR UPDATE")

    in_background(first, "/* pgvalve: all_shards */ UPDATE telemetry SET value = 2")  # killed
    wait_until(lambda: prepared_on(two_pc[0]), 10, message="s0's part prepared")
    # s1's PREPARE goes out in the same turn of pgvalve's loop; on a loaded machine give the
    # write a moment to leave before the kill.
    time.sleep(0.5)
    first.signal(signal.SIGKILL)
    first.wait_exit(5)
    locker.rollback()
    locker.close()
    wait_until(lambda: prepared_on(two_pc[1]), 30, message="s1's part prepared after pgvalve died")
    gid = prepared_on(two_pc[0])[0][0]
    assert prepared_on(two_pc[1]) == [(gid,)]
    assert gid.endswith(":0:" + gid.rsplit(":", 1)[1]), gid  # s0 (shard 0) decides
    if decider_committed:
        # What the killed pgvalve had done first: the decider's COMMIT PREPARED.
        with two_pc[0].primary.connect(dbname=APP_DB) as c:
            c.execute(f"COMMIT PREPARED '{gid}'")
    second = pgvalve(**config(two_pc))
    wait_until(lambda: prepared_on(two_pc[0]) == [] and prepared_on(two_pc[1]) == [], 90,
               message="the next pgvalve finished both parts")
    want = [(2.0,)] if decider_committed else [(1.0,)]
    assert on(two_pc[0], "SELECT value FROM telemetry") == want
    assert on(two_pc[1], "SELECT value FROM telemetry") == want
    # The part is gone from pg_prepared_xacts a moment before pgvalve checks and logs it.
    def resolved_s1():
        return next((li for li in second.log_text().splitlines()
                     if "event=prepared_part_resolved" in li and "shard=s1" in li), None)
    wait_until(resolved_s1, 10, message="the resolution of s1's part is logged")
    assert "event=prepared_part_recovered" in second.log_text()
    line = resolved_s1()
    assert ("decision=commit" if decider_committed else "decision=rollback") in line, line


@pytest.fixture(scope="module")
def two_pc_replicated(request):
    """Two shards, each a primary allowing prepared transactions with one streaming replica."""
    nodes = [PgCluster(replicas=1, extra_conf=PREPARED) for _ in range(2)]
    for c in nodes:
        request.addfinalizer(c.teardown)
        c.start()
    return nodes


def with_replicas(nodes, pgvalve, read_your_writes):
    """pgvalve over `nodes`, each shard's replica taking reads once it is known up."""
    conf = config(nodes)
    for shard, c in zip(conf["databases"][APP_DB]["shards"], nodes):
        shard["replicas"] = [f"127.0.0.1:{r.port}" for r in c.replicas]
    conf["routing"] = {"max_replica_lag_ms": 600000, "read_your_writes": read_your_writes}
    return pgvalve(**conf)


def wait_for_replica_reads(pv, read, devices):
    """Until `read` (its first column pg_is_in_recovery()) of every device runs on a replica."""
    def replicas_take_reads():
        with pv.connect() as c:
            return all(c.execute(read, (d,)).fetchone()[0] for d in devices)

    wait_until(replicas_take_reads, 10, message="both shards' replicas take reads")
    # Until a replica's second check its position cannot be compared with the primary's (the
    # checks start together), and one seen past the primary's last sample has an unknown lag
    # for a check: readable, then not for one health interval (100 ms here). Past a few checks
    # that no longer happens.
    time.sleep(0.5)
    wait_until(replicas_take_reads, 10, message="both shards' replicas take reads")


def test_a_batch_of_reads_over_both_shards_runs_on_their_replicas(two_pc_replicated, pgvalve):
    """Reads for devices on both shards up to one Sync (a psycopg pipeline, as pgx's SendBatch
    sends one) with replicas taking reads: each shard's reads run on its replica in turn, a read
    that fails ends the batch there, and a write among them runs on its primary, with the reads
    after it in its transaction on the primaries, committed together."""
    nodes = two_pc_replicated
    prepare_schema(nodes)
    pv = with_replicas(nodes, pgvalve, "off")
    a = next(d for d in range(1, 50) if md5_mod(d) == 0)
    b = next(d for d in range(1, 50) if md5_mod(d) == 1)
    with pv.connect() as c:
        c.execute(f"INSERT INTO telemetry (device_id, value) VALUES ({a}, 1), ({a}, 2), ({b}, 3)")
    for c in nodes:
        c.wait_replay()
    read = "SELECT pg_is_in_recovery(), count(*) FROM telemetry WHERE device_id = %s"
    wait_for_replica_reads(pv, read, (a, b))
    with pv.connect(autocommit=True) as conn:
        with conn.pipeline():
            got = [conn.execute(read, (d,)) for d in (a, b, a)]
        assert [r.fetchone() for r in got] == [(True, 2), (True, 1), (True, 2)]
        with pytest.raises(psycopg.errors.DivisionByZero):
            with conn.pipeline():
                conn.execute(read, (a,))
                conn.execute("SELECT 1 / (count(*) - 1) FROM telemetry WHERE device_id = %s",
                             (b,))
                conn.execute(read, (a,))
        with conn.pipeline():
            first = conn.execute(read, (a,))
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 4)", (b,))
            last = conn.execute(read, (a,))
        assert (first.fetchone(), last.fetchone()) == ((True, 2), (False, 2))
    assert sorted(on(nodes[1], "SELECT device_id, value FROM telemetry")) == [(b, 3.0), (b, 4.0)]
    for node in nodes:
        assert prepared_on(node) == []


def test_a_write_over_several_shards_is_read_back_with_replay_paused(two_pc_replicated, pgvalve):
    """read_your_writes = lsn: after a write committed on several shards, the client's reads of
    each shard go only where the write has been replayed (here, with every replica paused: the
    primaries), while another client still reads the replicas."""
    nodes = two_pc_replicated
    prepare_schema(nodes)
    for c in nodes:
        c.wait_replay()
    pv = with_replicas(nodes, pgvalve, "lsn")
    a = next(d for d in range(1, 50) if md5_mod(d) == 0)
    b = next(d for d in range(1, 50) if md5_mod(d) == 1)
    read = "SELECT pg_is_in_recovery(), count(*) FROM telemetry WHERE device_id = %s AND value = 7"
    wait_for_replica_reads(pv, read, (a, b))
    for c in nodes:
        c.replicas[0].psql("select pg_wal_replay_pause()")
    try:
        with pv.connect() as writer, pv.connect() as other:
            cur = writer.execute(f"INSERT INTO telemetry (device_id, value) VALUES ({a}, 7), "
                                 f"({b}, 7)")
            assert cur.rowcount == 2  # split between the shards, committed with 2PC
            for d in (a, b):
                assert writer.execute(read, (d,)).fetchone() == (False, 1), d
                # The other client is not held to the writer's marks: it reads a paused replica,
                # which lacks the row, so the check above could have failed.
                assert other.execute(read, (d,)).fetchone() == (True, 0), d
    finally:
        for c in nodes:
            c.replicas[0].psql("select pg_wal_replay_resume()")
