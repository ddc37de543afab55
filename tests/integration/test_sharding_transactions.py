"""Transactions (BEGIN ... COMMIT) over several shards, against real PostgreSQL: each statement
runs on its device's shard inside the one transaction, the shards it touched join it, and COMMIT
commits every part with two-phase commit or none of them: after an error, at a failing PREPARE
(a deferred constraint), or when a shard is lost between PREPARE and COMMIT, which SHOW SHARDS
then reports."""

from __future__ import annotations

import json
import os
import threading
import time

import psycopg
import pytest

from itutil import APP_AND_OPS, DRIVERS, JDBC_JAR, OPS_PASSWORD, OPS_USER, npm_install, run
from pgcluster import APP_DB, APP_PASSWORD, APP_USER, wait_until
# two_pc: two shards whose servers allow prepared transactions (a module fixture: this module
# gets clusters of its own).
from test_sharding_writes import config, md5_mod, on, prepared_on, two_pc  # noqa: F401


def prepare_schema(nodes):
    for c in nodes:
        c.primary.psql("DROP TABLE IF EXISTS telemetry, archive, device_types", dbname=APP_DB)
        c.primary.psql("CREATE TABLE telemetry (device_id bigint NOT NULL, value float8, "
                       "CHECK (value > -1000))", dbname=APP_DB)
        # Checked at COMMIT (its PREPARE TRANSACTION, on a shard).
        c.primary.psql("CREATE TABLE archive (device_id bigint, value float8, "
                       "UNIQUE (device_id) DEFERRABLE INITIALLY DEFERRED)", dbname=APP_DB)
        c.primary.psql("CREATE TABLE device_types (id int PRIMARY KEY, name text)", dbname=APP_DB)
        c.primary.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO app", dbname=APP_DB)


def devices():
    """A device on s0 and two on s1."""
    d0 = next(d for d in range(1, 50) if md5_mod(d) == 0)
    d1 = next(d for d in range(1, 50) if md5_mod(d) == 1)
    d1b = next(d for d in range(d1 + 1, 99) if md5_mod(d) == 1)
    return d0, d1, d1b


def rows(node, table="telemetry"):
    return sorted(on(node, f"SELECT device_id, value FROM {table}"))


def test_a_transaction_over_two_shards_commits_on_both(two_pc, pgvalve):
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    d0, d1, d1b = devices()
    with pv.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d0,))
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 2)", (d1,))
        conn.execute("UPDATE telemetry SET value = 3 WHERE device_id = %s", (d0,))
        # Each part sees the transaction's own writes; the shards' own clients do not yet.
        assert conn.execute("SELECT value FROM telemetry WHERE device_id = %s",
                            (d0,)).fetchall() == [(3.0,)]
        assert conn.execute("SELECT value FROM telemetry WHERE device_id = %s",
                            (d1,)).fetchall() == [(2.0,)]
        assert rows(two_pc[0]) == [] and rows(two_pc[1]) == []
        conn.commit()
        # The next transaction starts on s1 and takes s0 second.
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 4)", (d1b,))
        conn.execute("DELETE FROM telemetry WHERE device_id = %s", (d0,))
        conn.commit()
    assert rows(two_pc[0]) == []
    assert rows(two_pc[1]) == sorted([(d1, 2.0), (d1b, 4.0)])
    for node in two_pc:
        assert prepared_on(node) == []


def test_rollback_and_an_error_leave_no_shard_changed(two_pc, pgvalve):
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    d0, d1, _ = devices()
    with pv.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d0,))
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d1,))
        conn.rollback()
        # An error on s1 aborts the whole transaction: s0's part refuses statements too, and
        # COMMIT rolls back both.
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d0,))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, -5000)", (d1,))
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1 FROM telemetry WHERE device_id = %s", (d0,))
        conn.commit()
        # The connection goes on.
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 7)", (d0,))
        conn.commit()
    assert rows(two_pc[0]) == [(d0, 7.0)]
    assert rows(two_pc[1]) == []
    for node in two_pc:
        assert prepared_on(node) == []


def test_a_part_that_fails_to_prepare_rolls_back_every_part(two_pc, pgvalve):
    """A deferred UNIQUE fails at s1's PREPARE TRANSACTION: the client's COMMIT fails with that
    error, and s0's prepared part is rolled back."""
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    d0, d1, _ = devices()
    with pv.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO archive (device_id, value) VALUES (%s, 1)", (d0,))
        conn.execute("INSERT INTO archive (device_id, value) VALUES (%s, 1)", (d1,))
        conn.execute("INSERT INTO archive (device_id, value) VALUES (%s, 2)", (d1,))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.commit()
        conn.execute("INSERT INTO archive (device_id, value) VALUES (%s, 3)", (d1,))
        conn.commit()
    assert rows(two_pc[0], "archive") == []
    assert rows(two_pc[1], "archive") == [(d1, 3.0)]
    for node in two_pc:
        assert prepared_on(node) == []


def test_what_applies_to_one_part_only_is_refused_once_it_spans(two_pc, pgvalve):
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    d0, d1, _ = devices()
    with pv.connect(autocommit=False) as conn:
        # A savepoint made on s0 keeps the transaction there.
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d0,))
        conn.execute("SAVEPOINT a")
        with pytest.raises(psycopg.Error) as e:
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d1,))
        assert e.value.sqlstate == "0A000" and "savepoint" in str(e.value), e.value
        conn.rollback()
        # Once it spans two shards, a SET would change one part only.
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d0,))
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d1,))
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SET LOCAL work_mem = '8MB'")
        assert e.value.sqlstate == "0A000" and str(e.value).startswith("pgvalve:"), e.value
        conn.rollback()
    for node in two_pc:
        assert rows(node) == []
        assert prepared_on(node) == []


def test_without_prepared_transactions_the_second_shard_is_refused(two_pc, cluster, pgvalve):
    # s1 is the session's cluster: max_prepared_transactions = 0.
    nodes = [two_pc[0], cluster]
    prepare_schema(nodes)
    pv = pgvalve(**config(nodes))
    d0, d1, _ = devices()
    with pv.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d0,))
        with pytest.raises(psycopg.Error) as e:
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d1,))
        assert e.value.sqlstate == "0A000" and "max_prepared_transactions" in str(e.value)
        conn.rollback()
    for node in nodes:
        assert rows(node) == []


def run_jdbc(two_pc, pgvalve, tmp_path, program, *args):
    """Compiles and runs a PgJDBC program of drivers/ against a fresh schema through a new
    pgvalve; returns what it printed."""
    assert JDBC_JAR.exists(), f"{JDBC_JAR} missing: apt-get install libpostgresql-jdbc-java"
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    r, out = run(["javac", "-cp", str(JDBC_JAR), "-d", str(tmp_path),
                  str(DRIVERS / f"{program}.java")], timeout=120)
    assert r.returncode == 0, out
    r, out = run(["java", "-cp", f"{tmp_path}:{JDBC_JAR}", program,
                  f"jdbc:postgresql://127.0.0.1:{pv.port}/{APP_DB}", APP_USER, APP_PASSWORD,
                  *map(str, args)], timeout=120)
    assert r.returncode == 0, out
    return r.stdout.strip()


def assert_placed(two_pc, devices_written):
    """Exactly these devices' rows, each on its shard, and nothing left prepared."""
    placed = {i: [d for d, _ in rows(node)] for i, node in enumerate(two_pc)}
    assert sorted(placed[0] + placed[1]) == devices_written
    for i in (0, 1):
        assert all(md5_mod(d) == i for d in placed[i])
        assert prepared_on(two_pc[i]) == []


def test_pgjdbc_transactions_over_shards_commit_and_roll_back_whole(two_pc, pgvalve, tmp_path):
    """PgJDBC with autocommit off sends BEGIN in the flight of each transaction's first
    statement: 20 transactions of 10 devices each commit on both shards; one that fails after
    rows on both rolls back on both."""
    assert run_jdbc(two_pc, pgvalve, tmp_path, "JdbcShardedTransaction", 20, 10) == "OK 200"
    assert_placed(two_pc, list(range(1, 201)))


def test_pgjdbc_batches_over_shards_are_split_and_committed(two_pc, pgvalve, tmp_path):
    """PgJDBC's executeBatch() with and without reWriteBatchedInserts, and a hand-written
    multi-row INSERT: in autocommit and in a transaction, with the default prepareThreshold and
    with 1, every row lands on its shard."""
    assert run_jdbc(two_pc, pgvalve, tmp_path, "JdbcShardedBatch") == "OK 80"
    assert_placed(two_pc, [s * 100 + d for s in range(8) for d in range(1, 11)])


def test_batches_up_to_one_sync_over_shards_commit_on_every_shard_or_none(two_pc, pgvalve):
    """psycopg's executemany() sends every row's Parse/Bind/Execute before one Sync, which
    PostgreSQL runs as one implicit transaction: rows for devices on both shards land on their
    shards, committed on both with two-phase commit; a batch whose row fails a check leaves no
    shard changed (a deferred constraint failing at the Sync is tested with a raw client in
    test_batch_answers_are_those_of_one_postgresql: psycopg itself cannot read that error in a
    pipeline); inside the client's transaction the batch waits for its COMMIT."""
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    d0, d1, d1b = devices()
    insert = "INSERT INTO telemetry (device_id, value) VALUES (%s, %s)"
    batch = [(d, float(i)) for i, d in enumerate([d0, d1, d1b, d0, d1, d0])]
    with pv.connect(autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(insert, batch)
            assert cur.rowcount == 6
            # A row the CHECK refuses, after rows on both shards: nothing of the batch is kept.
            with pytest.raises(psycopg.errors.CheckViolation):
                cur.executemany(insert, [(d0, 100.0), (d1, 100.0), (d0, -5000.0), (d1, 100.0)])
            # The connection goes on: a batch, then a read over both shards.
            cur.executemany("INSERT INTO archive (device_id, value) VALUES (%s, %s)",
                            [(d1, 3.0), (d0, 3.0)])
            assert cur.execute("SELECT count(*) FROM telemetry").fetchone() == (6,)
    with pv.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.executemany(insert, [(d1, 50.0), (d0, 50.0)])
            assert rows(two_pc[0]) == sorted((d, v) for d, v in batch if d == d0)
            conn.commit()
    assert rows(two_pc[0]) == sorted([(d, v) for d, v in batch if d == d0] + [(d0, 50.0)])
    assert rows(two_pc[1]) == sorted([(d, v) for d, v in batch if d != d0] + [(d1, 50.0)])
    assert rows(two_pc[0], "archive") == [(d0, 3.0)]
    assert rows(two_pc[1], "archive") == [(d1, 3.0)]
    for node in two_pc:
        assert prepared_on(node) == []


def test_batch_answers_are_those_of_one_postgresql(two_pc, pgvalve):
    """Requests whose statements name both shards, up to one Sync, get the messages one
    PostgreSQL sends for them (compared with s0 alone): a batch through the unnamed statement
    with portals described, one through a named statement, one whose third row fails, one whose
    first row fails before any other shard was reached, one whose deferred constraint fails at
    its Sync, one inside the client's transaction, and a request pipelined behind a failed one;
    each writes every row or none."""
    from types import SimpleNamespace

    from pgwire_ext import ExtClient, bind, describe, execute, parse, sync
    d0, d1, d1b = devices()
    ins = "INSERT INTO telemetry (device_id, value) VALUES ($1, $2)"
    arch = "INSERT INTO archive (device_id, value) VALUES ($1, $2)"
    count = "SELECT count(*) FROM telemetry WHERE device_id = $1"

    def rows_of(statement, values, portal_described=False):
        out = []
        for d, v in values:
            out += [bind(statement, [str(d), str(v)])]
            out += [describe("P", "")] if portal_described else []
            out += [execute()]
        return out

    flights = [
        [parse("", ins)] + rows_of("", [(d0, 1), (d1, 2), (d1b, 3), (d0, 4)], True) + [sync()],
        [parse("ins", ins)] + rows_of("ins", [(d1, 5), (d0, 6), (d1, 7)]) + [sync()],
        [parse("", ins)] + rows_of("", [(d0, 8), (d1, 8), (d0, -5000), (d1, 8)]) + [sync()],
        [parse("", ins)] + rows_of("", [(d0, -5000), (d1, 9)]) + [sync()],
        [parse("", arch)] + rows_of("", [(d0, 1), (d1, 1), (d1, 2)]) + [sync()],
        [parse("", arch)] + rows_of("", [(d1, 3), (d0, 3)]) + [sync()],
    ]

    def answers(port):
        c = ExtClient.login(SimpleNamespace(port=port))
        try:
            got = [c.run(f) for f in flights]
            c.run([parse("", "BEGIN"), bind(""), execute(), sync()]).raise_for_error()
            got.append(c.run(flights[0]))
            got.append(c.simple("COMMIT"))
            # A request pipelined behind a batch that failed before its second shard runs.
            got.append(c.run(flights[3] + [parse("", count), bind("", [str(d1)]), execute(),
                                           sync()]))
            return [(r.kinds, r.tags, [e["C"] for e in r.errors], r.status) for r in got]
        finally:
            c.terminate()

    prepare_schema(two_pc)
    expected = answers(two_pc[0].primary.port)
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    assert answers(pv.port) == expected
    assert [e[2] for e in expected] == [[], [], ["23514"], ["23514"], ["23505"], [], [], [],
                                        ["23514"]]
    assert expected[-1][1] == ["SELECT 1"], expected[-1]
    first, second = [(d0, 1.0), (d1, 2.0), (d1b, 3.0), (d0, 4.0)], [(d1, 5.0), (d0, 6.0), (d1, 7.0)]
    written = first + second + first
    assert rows(two_pc[0]) == sorted(r for r in written if md5_mod(r[0]) == 0)
    assert rows(two_pc[1]) == sorted(r for r in written if md5_mod(r[0]) == 1)
    assert rows(two_pc[0], "archive") == [(d0, 3.0)]
    assert rows(two_pc[1], "archive") == [(d1, 3.0)]
    for node in two_pc:
        assert prepared_on(node) == []


def run_postgresjs(two_pc, pgvalve, script, *args):
    """Runs a postgres.js program of drivers/ against a fresh schema through a new pgvalve;
    returns the JSON line it printed."""
    npm_install()
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(pv.port), PGUSER=APP_USER,
               PGPASSWORD=APP_PASSWORD, PGDATABASE=APP_DB)
    r, out = run(["node", str(DRIVERS / script), *map(str, args)], timeout=60, env=env,
                 cwd=str(DRIVERS))
    assert r.returncode == 0, out
    return json.loads(r.stdout)


def test_postgresjs_transactions_over_shards_commit(two_pc, pgvalve):
    """postgres.js's sql.begin() with a row on each shard: its COMMIT (Parse, Describe of the
    statement, Bind, Execute, Sync) commits both parts and ends the transaction."""
    d0, d1, _ = devices()
    result = run_postgresjs(two_pc, pgvalve, "postgresjs_sharded_tx.js", d0, d1)
    assert result["committed"] and result["after"] == 1, result
    for i, d in enumerate((d0, d1)):
        assert (d, 1.0) in rows(two_pc[i]), rows(two_pc[i])
        assert prepared_on(two_pc[i]) == []


@pytest.mark.parametrize("statements", ["named", "unnamed"])
def test_postgresjs_first_uses_of_statements_route_by_their_values(two_pc, pgvalve, statements):
    """postgres.js describes each new statement (Parse, Describe, Flush) before it binds it:
    the first insert and read for a device on the second shard, and reads over every shard with
    a parameter, work on a fresh connection; also with prepare: false, whose unnamed statement
    pgvalve prepares again on the shards its Bind goes to."""
    d0, d1, _ = devices()
    result = run_postgresjs(two_pc, pgvalve, "postgresjs_sharded.js", d0, d1, statements)
    assert result == {"insert_d1": 1, "insert_d0": 1, "read_d1": 1, "count_over": 2,
                      "ordered": [d1, d0]}, result
    assert rows(two_pc[0]) == [(d0, 2.0)] and rows(two_pc[1]) == [(d1, 1.0)]


def test_a_shard_lost_between_prepare_and_commit_is_reported_in_show_shards(two_pc, pgvalve):
    """s0's PREPARE runs a deferred trigger that sleeps (5 s) while s1 prepares; s1 is then
    killed. The transaction rolls back on s0, the client's COMMIT fails naming the prepared part
    and SHOW SHARDS, which counts it once s1 is back, until an operator rolls it back."""
    prepare_schema(two_pc)
    s0 = two_pc[0].primary
    s0.psql("CREATE OR REPLACE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN PERFORM pg_sleep(5); RETURN NULL; END$$", dbname=APP_DB)
    s0.psql("CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON archive DEFERRABLE "
            "INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow()", dbname=APP_DB)
    pv = pgvalve(users=APP_AND_OPS, **config(two_pc))
    d0, d1, _ = devices()
    outcome = {}

    def transaction():
        try:
            with pv.connect(autocommit=False) as conn:
                conn.execute("INSERT INTO archive (device_id, value) VALUES (%s, 1)", (d0,))
                conn.execute("INSERT INTO archive (device_id, value) VALUES (%s, 1)", (d1,))
                conn.commit()
                outcome["ok"] = True
        except psycopg.Error as e:
            outcome["error"] = e

    writer = threading.Thread(target=transaction)
    writer.start()
    wait_until(lambda: len(prepared_on(two_pc[1])) == 1, 15, message="s1 prepared its part")
    gid = prepared_on(two_pc[1])[0][0]
    two_pc[1].primary.stop("immediate")  # a crash: the prepared part is in its WAL
    writer.join(30)
    assert not writer.is_alive()
    assert "error" in outcome, outcome
    assert outcome["error"].sqlstate == "08006"
    assert "SHOW SHARDS" in str(outcome["error"]) and gid in str(outcome["error"])
    assert rows(two_pc[0], "archive") == []
    assert prepared_on(two_pc[0]) == []

    two_pc[1].primary.start()
    with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                         autocommit=True, prepare_threshold=None) as admin:
        def shards():
            cur = admin.execute("SHOW SHARDS")
            cols = [d.name for d in cur.description]
            return {r[cols.index("shard")]: dict(zip(cols, r)) for r in cur.fetchall()
                    if r[cols.index("database")] == APP_DB}
        wait_until(lambda: shards()["s1"]["prepared"] == "1", 15,
                   message="SHOW SHARDS counts the prepared part on s1")
        with two_pc[1].primary.connect(dbname=APP_DB, autocommit=True) as direct:
            direct.execute(f"ROLLBACK PREPARED '{gid}'")
        wait_until(lambda: shards()["s1"]["prepared"] == "0", 15,
                   message="SHOW SHARDS no longer counts it")
    assert rows(two_pc[1], "archive") == []


def test_statements_over_every_shard_in_a_drivers_default_transaction(two_pc, pgvalve):
    """psycopg outside autocommit opens a transaction before a connection's first statement (as
    PgJDBC does with autocommit off). Reads over every shard as its first statements run outside
    it, at READ COMMITTED, and the client stays in its transaction. Later, or at REPEATABLE READ,
    and for writes, every shard joins the transaction and the statement runs on each part: it sees
    the transaction's own writes, and commits or rolls back with it."""
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    d0, d1, d1b = devices()
    with pv.connect(autocommit=True) as conn:
        for d in (d0, d1, d1b):
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d,))
    in_transaction = psycopg.pq.TransactionStatus.INTRANS
    with pv.connect(autocommit=False) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (3,)
        assert conn.info.transaction_status == in_transaction
        assert [r[0] for r in conn.execute(
            "SELECT device_id FROM telemetry ORDER BY device_id").fetchall()] == sorted(
                [d0, d1, d1b])
        conn.commit()
        # After a statement on a shard, the read runs on every part and sees the transaction's
        # own write.
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 2)", (d0,))
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (4,)
        conn.rollback()
        # A multi-row INSERT for both shards as the transaction's first statement: each shard
        # gets its rows inside the transaction; nothing is visible before COMMIT.
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 5), (%s, 5)", (d0, d1))
        assert rows(two_pc[0]) == [(d0, 1.0)] and sorted(rows(two_pc[1])) == sorted(
            [(d1, 1.0), (d1b, 1.0)])
        assert conn.execute("SELECT count(*) FROM telemetry WHERE value = 5").fetchone() == (2,)
        conn.commit()
        # At REPEATABLE READ a read over every shard runs on the transaction's parts too.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (5,)
        conn.execute("/* pgvalve: all_shards */ DELETE FROM telemetry WHERE value = 5")
        conn.rollback()
    assert sorted(rows(two_pc[0]) + rows(two_pc[1])) == sorted(
        [(d, 1.0) for d in (d0, d1, d1b)] + [(d0, 5.0), (d1, 5.0)])
    for node in two_pc:
        assert prepared_on(node) == []


def test_a_statement_prepared_after_a_held_back_begin_leaves_the_client_in_its_transaction(
        two_pc, pgvalve):
    """libpq's PQprepare (Parse and Sync alone) after BEGIN, which pgvalve holds back until a
    statement picks its shard: pgvalve answers the prepare itself, and libpq's transaction status
    still says the client is in its transaction, which then runs the statement and rolls back."""
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    d0, _, _ = devices()
    in_transaction = psycopg.pq.TransactionStatus.INTRANS
    with pv.connect(autocommit=True) as conn:
        conn.execute("BEGIN")
        assert conn.pgconn.transaction_status == in_transaction
        r = conn.pgconn.prepare(b"ins", b"INSERT INTO telemetry (device_id, value) VALUES ($1, 7)")
        assert r.status == psycopg.pq.ExecStatus.COMMAND_OK, r.error_message
        assert conn.pgconn.transaction_status == in_transaction
        r = conn.pgconn.exec_prepared(b"ins", [str(d0).encode()])
        assert r.status == psycopg.pq.ExecStatus.COMMAND_OK, r.error_message
        assert conn.pgconn.transaction_status == in_transaction
        conn.execute("ROLLBACK")
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert rows(two_pc[0]) == [] and rows(two_pc[1]) == []


def test_a_shard_without_a_primary_is_waited_for_then_refused_with_57P03(two_pc, pgvalve):
    """A transaction on s0 needs s1 while s1 has no primary: the statement waits
    failover.hold_writes_ms for one, as any write does, then gets 57P03 with pgvalve's message;
    the transaction is rolled back on s0 too, and the connection goes on."""
    prepare_schema(two_pc)
    d0, d1, _ = devices()
    pv = pgvalve(**config(two_pc), failover={"mode": "follow", "hold_writes_ms": 1500})
    s1 = two_pc[1].primary
    conn = pv.connect(autocommit=False)
    try:
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d0,))
        s1.stop()
        wait_until(lambda: "event=no_primary" in pv.log_text(), 10, message="s1 has no primary")
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.CannotConnectNow) as e:
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 2)", (d1,))
        assert time.monotonic() - t0 >= 1.0, "refused without waiting for a primary"
        assert str(e.value).startswith("pgvalve:"), e.value
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        conn.close()
        s1.start()
    assert rows(two_pc[0]) == []


def test_a_part_lost_while_a_statement_of_the_block_runs_fails_the_block(two_pc, pgvalve):
    """A transaction over both shards; the server of one part dies while a statement (not the
    end) of the block runs there. Every part is rolled back, and the client's block has failed
    as after an error on PostgreSQL: 08006 with ReadyForQuery 'E', 25P02 after, COMMIT answered
    ROLLBACK. (It got 'I', and its next INSERT committed on its own.)"""
    from pgwire_ext import ExtClient
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    d0, d1, d1b = devices()
    c = ExtClient.login(pv)

    def kill():
        time.sleep(0.7)
        two_pc[1].primary.psql("select pg_terminate_backend(pid) from pg_stat_activity "
                               "where query like '%pg_sleep(5)%' and pid <> pg_backend_pid()")

    try:
        assert c.simple("BEGIN").raise_for_error().status == "T"
        c.simple(f"INSERT INTO telemetry (device_id, value) VALUES ({d0}, 1)").raise_for_error()
        c.simple(f"INSERT INTO telemetry (device_id, value) VALUES ({d1}, 1)").raise_for_error()
        killer = threading.Thread(target=kill)
        killer.start()
        r = c.simple(f"SELECT pg_sleep(5) FROM telemetry WHERE device_id = {d1}")
        killer.join()
        assert r.errors and r.errors[0]["C"] == "08006" and r.status == "E", (r.errors, r.status)
        assert "rolled back on every shard" in r.errors[0]["M"], r.errors
        r = c.simple(f"INSERT INTO telemetry (device_id, value) VALUES ({d1b}, 7)")
        assert r.errors and r.errors[0]["C"] == "25P02" and r.status == "E", (r.errors, r.status)
        r = c.simple("COMMIT")
        assert not r.errors and r.tags == ["ROLLBACK"] and r.status == "I", (r.tags, r.status)
    finally:
        c.terminate()
    assert rows(two_pc[0]) == [] and rows(two_pc[1]) == []


def test_a_refused_first_statement_after_begin_fails_the_block(two_pc, pgvalve):
    """The first statement after BEGIN (which pgvalve answers) is refused (22P02: a key that is
    not a bigint): as after an error on PostgreSQL the block has failed, so the INSERT after it
    gets 25P02 and ROLLBACK leaves nothing (it committed on its own, with ReadyForQuery 'I')."""
    from pgwire_ext import ExtClient
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    d0, d1, _ = devices()
    c = ExtClient.login(pv)
    try:
        assert c.simple("BEGIN").raise_for_error().status == "T"
        r = c.simple("SELECT * FROM telemetry WHERE device_id = 'x'")
        assert r.errors and r.status == "E", (r.errors, r.status)
        r = c.simple(f"INSERT INTO telemetry (device_id, value) VALUES ({d1}, 1)")
        assert r.errors and r.errors[0]["C"] == "25P02" and r.status == "E", (r.errors, r.status)
        r = c.simple("ROLLBACK")
        assert not r.errors and r.status == "I"
    finally:
        c.terminate()
    assert rows(two_pc[0]) == [] and rows(two_pc[1]) == []
