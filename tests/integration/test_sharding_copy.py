"""COPY ... FROM STDIN into a sharded database, against real PostgreSQL: the client sends one
COPY to one DSN; each row lands on the shard its device_id maps to, the client learns the total
row count, and a COPY that fails anywhere (a bad row, a shard's constraint, the client's own
CopyFail) leaves no row and no prepared transaction on any shard. Inside a client's transaction
the COPY is part of it, committed or rolled back with it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import psycopg
import pytest

from itutil import DRIVERS, JDBC_JAR, npm_install, run
from pgcluster import APP_DB, APP_PASSWORD, APP_USER, PgCluster

PREPARED = "max_prepared_transactions = 10"


@pytest.fixture(scope="module")
def two_pc(request):
    nodes = [PgCluster(replicas=0, extra_conf=PREPARED) for _ in range(2)]
    for c in nodes:
        request.addfinalizer(c.teardown)
        c.start()
    return nodes


def prepare_schema(nodes):
    for c in nodes:
        c.primary.psql("DROP TABLE IF EXISTS telemetry, device_types", dbname=APP_DB)
        c.primary.psql("CREATE TABLE telemetry (device_id bigint NOT NULL, ts int, value float8, "
                       "note text, CHECK (value > -1000))", dbname=APP_DB)
        c.primary.psql("CREATE TABLE device_types (id int PRIMARY KEY, name text)", dbname=APP_DB)
        c.primary.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO app", dbname=APP_DB)


def config(nodes):
    return {
        "databases": {APP_DB: {
            "shards": [{"name": f"s{i}", "primary": f"127.0.0.1:{c.primary.port}"}
                       for i, c in enumerate(nodes)],
            "sharding": {"key": "device_id", "hash": "md5_mod", "key_type": "bigint",
                         "tables": ["telemetry"], "reference_tables": ["device_types"]},
        }},
    }


def md5_mod(device_id, n=2) -> int:
    return int(hashlib.md5(str(device_id).encode()).hexdigest(), 16) % n


def on(node, query):
    with node.primary.connect(dbname=APP_DB) as conn:
        return conn.execute(query).fetchall()


def rows_on(node):
    return on(node, "SELECT device_id, ts, value, note FROM telemetry")


def assert_nothing_left(nodes):
    for node in nodes:
        assert rows_on(node) == []
        assert on(node, "SELECT gid FROM pg_prepared_xacts") == []


def test_100k_rows_copied_through_pgvalve_land_on_their_shards(two_pc, pgvalve):
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    # 1,000 devices, 100 readings each; a few skewed devices, NULLs and awkward text.
    rows = []
    for i in range(100_000):
        device = 7 if i % 10 == 0 else i % 1000
        note = None if i % 7 == 0 else f"r{i}\t\\ \"quoted\", line\nbreak"
        rows.append((device, i, i / 4, note))
    with pv.connect() as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY telemetry (device_id, ts, value, note) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            assert cur.rowcount == 100_000
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (100_000,)
    placed = []
    for i, node in enumerate(two_pc):
        got = rows_on(node)
        assert got and all(md5_mod(r[0]) == i for r in got), f"s{i} holds a row of another shard"
        placed += got
        assert on(node, "SELECT gid FROM pg_prepared_xacts") == []
    assert sorted(placed, key=lambda r: r[1]) == rows


def test_binary_copy_lands_on_the_shards_of_its_device_ids(two_pc, pgvalve):
    """psycopg's binary COPY (as asyncpg's copy_records_to_table and pgx's CopyFrom send it):
    each tuple goes to its device_id's shard, the file header to both; an int4 key column is
    hashed by its value like an int8 one; a tuple without a device_id writes nothing."""
    prepare_schema(two_pc)
    for node in two_pc:
        node.primary.psql("DROP TABLE IF EXISTS narrow", dbname=APP_DB)
        node.primary.psql("CREATE TABLE narrow (device_id int, note bytea)", dbname=APP_DB)
        node.primary.psql("GRANT ALL ON narrow TO app", dbname=APP_DB)
    pv_config = config(two_pc)
    pv_config["databases"][APP_DB]["sharding"]["tables"].append("narrow")
    pv = pgvalve(**pv_config)
    rows = [(i % 50, i, i / 8, None if i % 9 == 0 else f"n{i}\n\t\\") for i in range(5000)]
    with pv.connect() as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY telemetry (device_id, ts, value, note) FROM STDIN "
                          "(FORMAT binary)") as copy:
                copy.set_types(["int8", "int4", "float8", "text"])
                for row in rows:
                    copy.write_row(row)
            assert cur.statusmessage == "COPY 5000"
            with cur.copy("COPY narrow (note, device_id) FROM STDIN BINARY") as copy:
                copy.set_types(["bytea", "int4"])
                for device in range(20):
                    copy.write_row((bytes([device, 0, 255]), device))
            assert cur.statusmessage == "COPY 20"
        with pytest.raises(psycopg.Error) as e:
            with conn.cursor().copy("COPY telemetry (device_id, ts) FROM STDIN (FORMAT binary)"
                                    ) as copy:
                copy.set_types(["int8", "int4"])
                copy.write_row((1, 1))
                copy.write_row((None, 2))
        assert e.value.sqlstate == "22004", e.value
        assert str(e.value).startswith("pgvalve: COPY row 2: device_id is NULL"), e.value
    placed = []
    for i, node in enumerate(two_pc):
        got = rows_on(node)
        assert got and all(md5_mod(r[0]) == i for r in got), f"s{i} holds a row of another shard"
        placed += got
        narrow = on(node, "SELECT device_id, note FROM narrow")
        assert narrow and all(md5_mod(d) == i and bytes(n) == bytes([d, 0, 255])
                              for d, n in narrow), narrow
        assert on(node, "SELECT gid FROM pg_prepared_xacts") == []
    assert sorted(placed, key=lambda r: r[1]) == rows


def test_psql_copy_of_a_csv_file_with_a_header(two_pc, pgvalve, tmp_path):
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    data = tmp_path / "readings.csv"
    # The key is not the first column; a quoted field holds the delimiter and a newline.
    data.write_text('ts;device_id;note\n1;1;"a;b"\n2;2;"multi\nline"\n3;3;\n4;2;""\n')
    out = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", pv.dsn(), "-c",
         f"\\copy telemetry (ts, device_id, note) FROM '{data}' WITH (FORMAT csv, HEADER, "
         "DELIMITER ';')"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "COPY 4"
    assert sorted(r[1] for r in rows_on(two_pc[0])) == [2, 4]
    assert sorted(r[1] for r in rows_on(two_pc[1])) == [1, 3]
    notes = {r[1]: r[3] for node in two_pc for r in rows_on(node)}
    assert notes == {1: "a;b", 2: "multi\nline", 3: None, 4: ""}


def test_reference_table_rows_reach_every_shard(two_pc, pgvalve):
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    with pv.connect() as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY device_types (id, name) FROM STDIN") as copy:
                copy.write_row((1, "thermometer"))
                copy.write_row((2, "barometer"))
            assert cur.rowcount == 2  # the same two rows on each shard: counted once
            assert cur.statusmessage == "COPY 2"
    for node in two_pc:
        assert on(node, "SELECT id, name FROM device_types ORDER BY id") == [
            (1, "thermometer"), (2, "barometer")]


def test_a_row_without_a_device_id_fails_the_whole_copy(two_pc, pgvalve):
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    with pv.connect() as conn:
        with pytest.raises(psycopg.Error) as e:
            with conn.cursor().copy("COPY telemetry (device_id, ts) FROM STDIN") as copy:
                for i in range(1, 2000):
                    copy.write_row((i, i))
                copy.write_row((None, 0))
                for i in range(1, 2000):
                    copy.write_row((i, i))
        assert e.value.sqlstate == "22004", e.value
        assert str(e.value).startswith("pgvalve:") and "row 2000" in str(e.value), e.value
        # The session goes on.
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert_nothing_left(two_pc)


def test_a_shards_error_rolls_back_every_shard(two_pc, pgvalve):
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    bad = next(d for d in range(1, 50) if md5_mod(d) == 1)
    with pv.connect() as conn:
        with pytest.raises(psycopg.Error) as e:
            with conn.cursor().copy("COPY telemetry (device_id, value) FROM STDIN") as copy:
                for i in range(1, 500):
                    copy.write_row((i, 1.0))
                copy.write_row((bad, -5000.0))  # breaks the CHECK on s1 only
        assert e.value.sqlstate == "23514", e.value
        # The client's own CopyFail (an exception inside the block) is the same.
        with pytest.raises(psycopg.Error) as e:
            with conn.cursor().copy("COPY telemetry (device_id, value) FROM STDIN") as copy:
                copy.write_row((1, 1.0))
                raise RuntimeError("changed my mind")
        assert e.value.sqlstate == "57014", e.value
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (1, 1)")
    assert rows_on(two_pc[0]) == []
    assert rows_on(two_pc[1]) == [(1, None, 1.0, None)]
    for node in two_pc:
        assert on(node, "SELECT gid FROM pg_prepared_xacts") == []


def test_copies_pgvalve_cannot_route_by_row_are_refused(two_pc, pgvalve):
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    with pv.connect() as conn:
        for sql, why in [
            ("COPY telemetry FROM STDIN", "list the columns"),
            ("COPY telemetry (device_id) FROM STDIN WHERE device_id > 0", "WHERE"),
        ]:
            with pytest.raises(psycopg.Error) as e:
                with conn.cursor().copy(sql) as copy:
                    copy.write_row((1,))
            assert e.value.sqlstate == "0A000", (sql, e.value)
            assert str(e.value).startswith("pgvalve:") and why in str(e.value), e.value
        # A hint runs the COPY on its shard as it is, whatever its form.
        with conn.cursor().copy("/* pgvalve: device_id=2 */ COPY telemetry FROM STDIN") as copy:
            copy.write_row((2, 1, 0.5, "x"))
    assert rows_on(two_pc[0]) == [(2, 1, 0.5, "x")]
    assert rows_on(two_pc[1]) == []


def test_a_copy_inside_a_transaction_commits_and_rolls_back_with_it(two_pc, pgvalve):
    """psycopg sends BEGIN before a COPY unless the connection is in autocommit: the COPY runs
    on every shard's part of the client's transaction, and its rows are committed (two-phase
    commit) or rolled back with the rest of the transaction."""
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    devices = range(1, 41)
    with pv.connect(autocommit=False) as conn:
        with conn.cursor().copy("COPY telemetry (device_id, ts) FROM STDIN") as copy:
            for d in devices:
                copy.write_row((d, d))
        # The transaction goes on: its other statements see the copied rows.
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (40,)
        conn.execute("INSERT INTO telemetry (device_id, ts) VALUES (1, 100)")
        for node in two_pc:
            assert rows_on(node) == [], "nothing is visible before the COMMIT"
        conn.commit()
        for i, node in enumerate(two_pc):
            want = sorted([(d, d) for d in devices if md5_mod(d) == i] +
                          ([(1, 100)] if md5_mod(1) == i else []))
            assert sorted(r[:2] for r in rows_on(node)) == want
            assert on(node, "SELECT gid FROM pg_prepared_xacts") == []
        # A COPY after the transaction's first statement: the other shard joins for it.
        conn.execute("INSERT INTO telemetry (device_id, ts) VALUES (2, 200)")
        with conn.cursor().copy("COPY telemetry (device_id, ts) FROM STDIN") as copy:
            copy.write_row((3, 300))
            copy.write_row((4, 400))
        conn.commit()
        assert conn.execute("SELECT count(*) FROM telemetry WHERE ts >= 200").fetchone() == (3,)
        # A rolled back transaction takes its COPY with it.
        with conn.cursor().copy("COPY telemetry (device_id, ts) FROM STDIN") as copy:
            for d in devices:
                copy.write_row((d, 1000 + d))
        conn.rollback()
        # A failed COPY fails the transaction, as on one server: only ROLLBACK is taken.
        with pytest.raises(psycopg.Error) as e:
            with conn.cursor().copy("COPY telemetry (device_id, ts) FROM STDIN") as copy:
                copy.write_row((5, 1))
                copy.write_row((None, 2))
        assert str(e.value).startswith("pgvalve:"), e.value
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (44,)
    for node in two_pc:
        assert on(node, "SELECT count(*) FROM telemetry WHERE ts >= 1000") == [(0,)]
        assert on(node, "SELECT gid FROM pg_prepared_xacts") == []


# --- other drivers: PgJDBC's CopyManager, postgres.js's writable COPY ----------------------

def driver_rows(n, devices, notes):
    """The rows the driver programs write: device_id = 1 + (i * 7919) % devices, ts = i."""
    rows = []
    for i in range(1, n + 1):
        note = None if not notes or i % 5 == 0 else f"n{i} tab\there back\\slash"
        rows.append((1 + (i * 7919) % devices, i, i + 0.5, note))
    return rows


def assert_on_their_shards(nodes, expected):
    placed = []
    for i, node in enumerate(nodes):
        got = rows_on(node)
        assert got and all(md5_mod(r[0]) == i for r in got), f"s{i} holds a row of another shard"
        placed += got
        assert on(node, "SELECT gid FROM pg_prepared_xacts") == []
    assert len(placed) == len(expected)
    assert sorted(placed, key=lambda r: r[1]) == expected


def test_jdbc_copy_manager_loads_many_devices_onto_their_shards(two_pc, pgvalve, tmp_path):
    """PgJDBC's CopyManager.copyIn of 5,000 rows for 200 devices: every row lands on its
    device's shard, copyIn returns 5,000, and a COPY with a NULL device_id fails with 22004
    leaving the connection usable."""
    assert JDBC_JAR.exists(), f"{JDBC_JAR} missing: apt-get install libpostgresql-jdbc-java"
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    r, out = run(["javac", "-cp", str(JDBC_JAR), "-d", str(tmp_path),
                  str(DRIVERS / "JdbcShardedCopy.java")], timeout=120)
    assert r.returncode == 0, out
    r, out = run(["java", "-cp", f"{tmp_path}:{JDBC_JAR}", "JdbcShardedCopy",
                  f"jdbc:postgresql://127.0.0.1:{pv.port}/{APP_DB}", APP_USER, APP_PASSWORD,
                  "5000", "200"], timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "OK 5000", out
    expected = driver_rows(5000, 200, notes=True)
    assert len({row[0] for row in expected}) == 200
    # Only the good COPY's rows: the failed one left nothing behind on either shard.
    assert_on_their_shards(two_pc, expected)


def test_postgresjs_copy_stream_loads_many_devices_onto_their_shards(two_pc, pgvalve):
    """postgres.js's sql`COPY ... FROM STDIN`.writable() fed 5,000 rows for 200 devices: every
    row lands on its device's shard, and once the stream finished all of them are visible."""
    npm_install()
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(pv.port), PGUSER=APP_USER,
               PGPASSWORD=APP_PASSWORD, PGDATABASE=APP_DB)
    r, out = run(["node", str(DRIVERS / "postgresjs_copy.js"), "5000", "200"],
                 timeout=120, env=env, cwd=str(DRIVERS))
    assert r.returncode == 0, out
    # postgres.js keeps the COPY's tag to itself; count(*) through pgvalve stands in for it.
    assert json.loads(r.stdout) == {"ok": True, "written": 5000, "count": 5000}, out
    assert_on_their_shards(two_pc, driver_rows(5000, 200, notes=False))


@pytest.mark.parametrize("copy", ["/* pgvalve: shard=s1 */ COPY telemetry (device_id, ts) "
                                  "FROM STDIN",
                                  "COPY telemetry (device_id, ts) FROM STDIN"])
def test_a_client_reset_during_copy_from_stdin_frees_its_servers(two_pc, pgvalve, copy):
    """A client whose connection is reset right after its last CopyData (a crashed loader):
    pgvalve writes nothing to it during the COPY, so the reset itself must be noticed; the COPY
    fails on every shard, nothing stays, and the servers go back to the pool."""
    import time

    from pgwire import message, query_message, read_message
    from test_limits import raw
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc), pool_size=1, max_overflow=0)
    client = raw(pv).connect()
    client.sock.sendall(query_message(copy))
    assert read_message(client.sock)[0] == b"G"
    rows = b"".join(b"%d\t%d\n" % (1 + i % 50, i) for i in range(20000))
    for _ in range(5):
        client.sock.sendall(message(b"d", rows))
    client.sock.sendall(message(b"d", rows))
    client.close_abruptly(reset=True)  # with the last CopyData, as a killed process's kernel does

    def busy():
        return sum(len(on(node, "SELECT pid FROM pg_stat_activity WHERE usename = 'app' "
                               "AND state <> 'idle'")) for node in two_pc)

    deadline = time.monotonic() + 5
    while busy() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert busy() == 0, "a server is still in the COPY of a client that is gone"
    assert_nothing_left(two_pc)
    with pv.connect() as c:  # pool_size 1: every shard's server came back
        assert c.execute("SELECT count(*) FROM telemetry").fetchone() == (0,)


# --- what follows a COPY: leftover data, pipelined requests, Terminate, encodings, keys ----------

def read_until_ready(sock):
    """The messages up to and including ReadyForQuery: [(kind, payload)]."""
    from pgwire import read_message
    msgs = []
    while True:
        kind, payload = read_message(sock)
        msgs.append((kind, payload))
        if kind == b"Z":
            return msgs


def errors_of(msgs):
    from pgwire import parse_fields
    return [parse_fields(p) for k, p in msgs if k == b"E"]


def raw_client(pv):
    from test_limits import raw
    return raw(pv).connect()


def fail_a_copy(client):
    """A COPY whose first row has no device_id: the client hears of the error while it still has
    data to send, as psql does with a large file."""
    from pgwire import message, query_message, read_message
    client.sock.sendall(query_message("COPY telemetry (device_id, ts) FROM STDIN"))
    assert read_message(client.sock)[0] == b"G"
    client.sock.sendall(message(b"d", b"\\N\t1\n"))
    msgs = read_until_ready(client.sock)
    assert [e["C"] for e in errors_of(msgs)] == ["22004"], msgs
    return msgs


def test_copy_data_left_over_after_a_failed_copy_does_not_break_the_next_statement(
        two_pc, pgvalve):
    """psql sends the rest of its COPY data after the error, then its next statement, often in
    one read. PostgreSQL ignores the leftover data, and so must pgvalve: the statement behind it
    ran into 0A000, and inside a transaction the ROLLBACK got 25P02 and was not run (the client
    stuck in an aborted transaction holding a server on every shard)."""
    from pgwire import message, query_message
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    client = raw_client(pv)
    fail_a_copy(client)
    rest = b"".join(message(b"d", b"%d\t%d\n" % (i, i)) for i in range(2, 200)) + \
        message(b"c", b"")
    client.sock.sendall(rest + query_message("SELECT count(*) FROM telemetry"))
    msgs = read_until_ready(client.sock)
    assert errors_of(msgs) == [], msgs
    assert [p for k, p in msgs if k == b"C"] == [b"SELECT 1\0"]

    # Inside a transaction over both shards: the ROLLBACK behind the leftover data ends it.
    client.query("BEGIN")
    client.query("INSERT INTO telemetry (device_id, ts) VALUES (1, 1), (2, 2)")
    msgs = fail_a_copy(client)
    assert client.transaction_status(msgs) == "E"
    client.sock.sendall(rest + query_message("ROLLBACK"))
    msgs = read_until_ready(client.sock)
    assert errors_of(msgs) == [], msgs
    assert client.transaction_status(msgs) == "I"
    client.query("INSERT INTO telemetry (device_id, ts) VALUES (3, 3)")
    assert client.rows("SELECT count(*) FROM telemetry") == [["1"]]
    client.terminate()
    assert sorted(r[:2] for node in two_pc for r in rows_on(node)) == [(3, 3)]
    for node in two_pc:
        assert on(node, "SELECT gid FROM pg_prepared_xacts") == []


def extended(sql: str) -> bytes:
    """Parse, Bind, Execute and Sync of an unnamed statement without parameters."""
    from pgwire import message
    return (message(b"P", b"\0" + sql.encode() + b"\0\0\0") +
            message(b"B", b"\0\0\0\0\0\0\0\0") + message(b"E", b"\0\0\0\0\0") +
            message(b"S", b""))


def test_a_refused_request_does_not_fail_the_requests_pipelined_behind_it(two_pc, pgvalve):
    """Each request is routed on its own (docs/sharding.md): one pgvalve refuses gets its error,
    and those the client pipelined behind it in the same write run."""
    from pgwire import query_message
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    client = raw_client(pv)
    client.sock.sendall(query_message("COPY telemetry FROM STDIN") +
                        query_message("INSERT INTO telemetry (device_id, ts) VALUES (1, 1)"))
    first = read_until_ready(client.sock)
    assert [e["C"] for e in errors_of(first)] == ["0A000"], first
    second = read_until_ready(client.sock)
    assert errors_of(second) == [], second
    assert [p for k, p in second if k == b"C"] == [b"INSERT 0 1\0"]

    client.sock.sendall(extended("UPDATE telemetry SET ts = 5") +
                        extended("INSERT INTO telemetry (device_id, ts) VALUES (2, 2)"))
    first = read_until_ready(client.sock)
    assert [e["C"] for e in errors_of(first)] == ["0A000"], first
    second = read_until_ready(client.sock)
    assert errors_of(second) == [], second
    assert [k for k, _ in second] == [b"1", b"2", b"C", b"Z"]
    client.terminate()
    assert sorted(r[:2] for node in two_pc for r in rows_on(node)) == [(1, 1), (2, 2)]


@pytest.mark.parametrize("how", ["libpq", "after_copy_in_response"])
def test_terminate_right_after_copydone_keeps_the_copy(two_pc, pgvalve, how):
    """libpq's PQputCopyEnd then PQfinish, without PQgetResult (and a raw client sending its
    data, CopyDone and Terminate in one write once the COPY took data): PostgreSQL finishes the
    COPY before it reads the Terminate; pgvalve closed the client and cancelled the shards'
    servers at once, and the COPY was lost. (A client that leaves before its COPY got the shards'
    servers leaves the queue, as any request does: test_limits.)"""
    from pgcluster import wait_until
    from pgwire import message, query_message, read_message
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    rows = b"".join(b"%d\t%d\n" % (i, i) for i in range(1, 101))
    for attempt in range(5):
        if how == "libpq":
            conn = psycopg.connect(pv.dsn(), autocommit=True)
            pgconn = conn.pgconn
            result = pgconn.exec_(b"COPY telemetry (device_id, ts) FROM STDIN")
            assert result.status == psycopg.pq.ExecStatus.COPY_IN
            assert pgconn.put_copy_data(rows) == 1
            assert pgconn.put_copy_end() == 1
            pgconn.finish()
        else:
            client = raw_client(pv)
            client.sock.sendall(query_message("COPY telemetry (device_id, ts) FROM STDIN"))
            assert read_message(client.sock)[0] == b"G"
            client.sock.sendall(message(b"d", rows) + message(b"c", b"") + message(b"X", b""))
            client.sock.close()
        want = 100 * (attempt + 1)
        wait_until(lambda: sum(len(rows_on(node)) for node in two_pc) >= want, 5,
                   message=f"the COPY of attempt {attempt} committed")
    assert sum(len(rows_on(node)) for node in two_pc) == 500
    for node in two_pc:
        assert on(node, "SELECT gid FROM pg_prepared_xacts") == []
    with pv.connect() as c:
        assert c.execute("SELECT count(*) FROM telemetry").fetchone() == (500,)


def test_a_client_encoding_whose_characters_hold_ascii_bytes_is_refused_not_misread(
        two_pc, pgvalve):
    """In SJIS the second byte of 表 (\\x95\\x5C) looks like a backslash: read bytewise, the row
    `表<tab>5<tab>6` has device_id 6 and landed on 6's shard with no error. pgvalve refuses to
    read rows and keys in such an encoding, set at login or by SET, as it refuses COPY's own
    ENCODING 'SJIS'."""
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    assert md5_mod(5) != md5_mod(6)
    copy_sql = "COPY telemetry (note, device_id, ts) FROM STDIN"

    def refused_copy(conn):
        with pytest.raises(psycopg.Error) as e:
            with conn.cursor().copy(copy_sql) as copy:
                copy.write("表\t5\t6\n")
        assert e.value.sqlstate == "0A000", e.value
        assert str(e.value).startswith("pgvalve:") and "client_encoding" in str(e.value)
        assert "UTF8" in str(e.value)

    with pv.connect(client_encoding="SJIS") as conn:
        refused_copy(conn)
        # The statement path: in E'表' pgvalve would read an escaped quote and take 6 as the key.
        with pytest.raises(psycopg.Error) as e:
            conn.execute("INSERT INTO telemetry (note, device_id) VALUES (E'表', 5) --', 6)")
        assert e.value.sqlstate == "0A000", e.value
        assert "client_encoding" in str(e.value)
        # Characters without ASCII bytes (あ is \x82\xA0) are read as before; a hint places any.
        conn.execute("INSERT INTO telemetry (note, device_id) VALUES ('あ', 2)")
        conn.execute("/* pgvalve: device_id=5 */ INSERT INTO telemetry (note, device_id) "
                     "VALUES (E'表', 5)")
        # The data's own ENCODING decides how its rows are read.
        with conn.cursor().copy(copy_sql + " (ENCODING 'UTF8')") as copy:
            copy.write("表".encode() + b"\t7\t7\n")
    with pv.connect() as conn:
        conn.execute("SET client_encoding = 'SJIS'")
        refused_copy(conn)
    got = {i: sorted((r[0], r[3]) for r in rows_on(node)) for i, node in enumerate(two_pc)}
    want = {0: [], 1: []}
    for device, note in [(2, "あ"), (5, "表"), (7, "表")]:
        want[md5_mod(device)].append((device, note))
    assert got == {i: sorted(v) for i, v in want.items()}


def test_a_backslash_with_standard_conforming_strings_off_is_refused_not_misread(
        two_pc, pgvalve):
    """With standard_conforming_strings off PostgreSQL reads 'x\', 5) --' as one string and
    places the row by the 6 after it; pgvalve, reading the backslash as a character, would have
    taken 5. Such a statement is refused unless a hint places it; one without a backslash reads
    the same either way and runs."""
    prepare_schema(two_pc)
    pv = pgvalve(**config(two_pc))
    assert md5_mod(5) != md5_mod(6)
    with pv.connect() as conn:
        conn.execute("SET standard_conforming_strings = off")
        with pytest.raises(psycopg.Error) as e:
            conn.execute("INSERT INTO telemetry (note, device_id) VALUES ('x\\', 5) --', 6)")
        assert e.value.sqlstate == "0A000", e.value
        assert str(e.value).startswith("pgvalve:") and "standard_conforming_strings" in str(e.value)
        conn.execute("INSERT INTO telemetry (note, device_id) VALUES ('y', 6)")
        conn.execute("/* pgvalve: device_id=6 */ INSERT INTO telemetry (note, device_id) "
                     "VALUES ('x\\', 5) --', 6)")
    got = {i: sorted((r[0], r[3]) for r in rows_on(node)) for i, node in enumerate(two_pc)}
    want = {0: [], 1: []}
    for device, note in [(6, "y"), (6, "x', 5) --")]:
        want[md5_mod(device)].append((device, note))
    assert got == {i: sorted(v) for i, v in want.items()}


def test_a_key_with_whitespace_around_it_is_read_as_postgres_reads_it(two_pc, pgvalve):
    """PostgreSQL stores the CSV row `x, 5,y` with the bigint 5 (int8in skips whitespace):
    under key_type bigint pgvalve refused it (22P02); under auto it hashed the text " 5", and
    WHERE device_id = 5 then found nothing. An integer beyond bigint is 22003, as PostgreSQL
    says."""
    prepare_schema(two_pc)
    sql = "COPY telemetry (note, device_id, ts) FROM STDIN (FORMAT csv)"
    pv = pgvalve(**config(two_pc))
    with pv.connect() as conn:
        with conn.cursor().copy(sql) as copy:
            copy.write("x, 5,1\ny,6 ,2\n")
        assert conn.execute("SELECT note FROM telemetry WHERE device_id = 5").fetchall() == [("x",)]
        assert conn.execute("SELECT note FROM telemetry WHERE device_id = 6").fetchall() == [("y",)]
        with pytest.raises(psycopg.Error) as e:
            with conn.cursor().copy(sql) as copy:
                copy.write("z,99999999999999999999,3\n")
        assert e.value.sqlstate == "22003", e.value
    for device in (5, 6):
        assert on(two_pc[md5_mod(device)], f"SELECT count(*) FROM telemetry WHERE device_id = "
                                           f"{device}") == [(1,)]

    auto = config(two_pc)
    auto["databases"][APP_DB]["sharding"]["key_type"] = "auto"
    pv = pgvalve(**auto)
    with pv.connect() as conn:
        with pytest.raises(psycopg.Error) as e:
            with conn.cursor().copy(sql) as copy:
                copy.write("w, 8,4\n")
        assert e.value.sqlstate == "22P02", e.value
        assert "whitespace" in str(e.value) and "key_type" in str(e.value), e.value
        with pytest.raises(psycopg.Error) as e:
            conn.execute("INSERT INTO telemetry (note, device_id) VALUES ('w', ' 8')")
        assert e.value.sqlstate == "22P02", e.value
        assert conn.execute("SELECT count(*) FROM telemetry WHERE device_id = 8").fetchone() == (0,)
