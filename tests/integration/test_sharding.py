"""Sharding by device_id over real PostgreSQL clusters: shard s0 is a primary with a streaming
replica, shard s1 a primary alone. Where a row landed is checked on each shard directly, against
the placement the outside scheme computes (Python's hashlib for md5_mod, python3-xxhash for xxh3,
PostgreSQL's own satisfies_hash_partition() for pg_partition), never against pgvalve's account.

Reads over several shards are gathered (test_sharding_oracle.py compares them with one
database); writes over several shards need prepared transactions, which these servers do not
allow, so here they are refused (test_sharding_writes.py has servers that allow them)."""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from decimal import Decimal

import psycopg
import pytest
import xxhash

from itutil import SANITIZED, drain_notifies, rss_bytes, settle_rss
from pgcluster import APP_DB, PgCluster, wait_until

TABLE = "CREATE TABLE telemetry (device_id bigint NOT NULL, ts timestamptz NOT NULL DEFAULT now(), " \
        "value float8, note text)"


@pytest.fixture(scope="module")
def shards(request, cluster):
    s1 = PgCluster(replicas=0)
    request.addfinalizer(s1.teardown)
    s1.start()
    nodes = [cluster, s1]
    for c in nodes:
        c.primary.psql("DROP TABLE IF EXISTS telemetry, device_types, pp_parent", dbname=APP_DB)
        c.primary.psql(TABLE, dbname=APP_DB)
        c.primary.psql("CREATE TABLE device_types (id int PRIMARY KEY, name text)", dbname=APP_DB)
        c.primary.psql("INSERT INTO device_types VALUES (1, 'thermometer'), (2, 'hygrometer')",
                       dbname=APP_DB)
        # pg_partition's oracle: the parent of a hash partitioning with modulus 2.
        c.primary.psql("CREATE TABLE pp_parent (device_id bigint) PARTITION BY HASH (device_id)",
                       dbname=APP_DB)
        c.primary.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO app", dbname=APP_DB)
        c.primary.psql("GRANT pg_monitor TO app")
    cluster.wait_replay()
    return nodes


def config(shards, hash_="md5_mod", key_type="bigint", **extra):
    s0, s1 = shards
    sharding = {"key": "device_id", "hash": hash_, "key_type": key_type,
                "tables": ["telemetry"], "reference_tables": ["device_types"]}
    sharding.update(extra)
    return {
        "databases": {APP_DB: {
            "shards": [
                {"name": "s0", "primary": f"127.0.0.1:{s0.primary.port}",
                 "replicas": [f"127.0.0.1:{r.port}" for r in s0.replicas]},
                {"name": "s1", "primary": f"127.0.0.1:{s1.primary.port}"},
            ],
            "sharding": sharding,
        }},
        "health": {"interval_ms": 100, "timeout_ms": 1000, "failures_before_down": 2},
    }


def md5_mod(device_id, n=2) -> int:
    return int(hashlib.md5(str(device_id).encode()).hexdigest(), 16) % n


def clear(shards):
    for c in shards:
        c.primary.psql("TRUNCATE telemetry", dbname=APP_DB)
    shards[0].wait_replay()


def rows_on(cluster, query="SELECT device_id FROM telemetry") -> list:
    with cluster.primary.connect(dbname=APP_DB) as conn:
        return [r[0] for r in conn.execute(query).fetchall()]


def refused(conn, sql, params=None, sqlstate="0A000") -> psycopg.Error:
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, params)
    assert e.value.sqlstate == sqlstate, e.value
    assert str(e.value).startswith("pgvalve:"), e.value
    return e.value


def test_each_row_lands_on_the_shard_md5_mod_names(shards, pgvalve):
    clear(shards)
    pv = pgvalve(**config(shards))
    devices = list(range(1, 201))
    with pv.connect() as conn:
        for d in devices:  # extended protocol, $n bound as text
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, %s)", (d, d * 1.5))
        for d in devices[:50]:  # simple protocol, literal key
            conn.execute(f"INSERT INTO telemetry (value, device_id) VALUES ({d}, {d})",
                         prepare=False)
    for i, c in enumerate(shards):
        placed = rows_on(c)
        assert placed, f"no rows on shard s{i}"
        assert all(md5_mod(d) == i for d in placed), f"a row on s{i} belongs elsewhere"
    assert sorted(rows_on(shards[0]) + rows_on(shards[1])) == sorted(devices + devices[:50])


def test_reads_by_device_find_rows_the_application_placed(shards, pgvalve):
    """An existing deployment moves behind pgvalve without moving a row: rows placed by the
    app-side md5(str(id)) % 2 scheme are found by device_id through pgvalve, on either shard
    (shard s0 answers from its replica)."""
    clear(shards)
    expected = {}
    for d in range(1000, 1060):
        n = d % 4 + 1
        target = shards[md5_mod(d)]
        target.primary.psql(
            f"INSERT INTO telemetry (device_id, value) SELECT {d}, g FROM generate_series(1,{n}) g",
            dbname=APP_DB)
        expected[d] = n
    shards[0].wait_replay()
    pv = pgvalve(**config(shards))
    with pv.connect() as conn:
        for d, n in expected.items():
            got = conn.execute("SELECT count(*), sum(value) FROM telemetry WHERE device_id = %s",
                               (d,)).fetchone()
            assert got == (n, n * (n + 1) / 2), d
            # The same through the simple protocol, a cast and a qualified column.
            got = conn.execute(f"SELECT count(*) FROM telemetry t WHERE t.device_id = '{d}'::bigint",
                               prepare=False).fetchone()[0]
            assert got == n
        # IN with every value on one shard is that shard's answer.
        same = [d for d in expected if md5_mod(d) == 1][:5]
        got = conn.execute(f"SELECT count(*) FROM telemetry WHERE device_id IN ({','.join(map(str, same))})",
                           prepare=False).fetchone()[0]
        assert got == sum(expected[d] for d in same)
        # The replica of s0 answered the reads of its devices.
        d0 = next(d for d in expected if md5_mod(d) == 0)
        on_replica = conn.execute(
            "SELECT pg_is_in_recovery() FROM telemetry WHERE device_id = %s LIMIT 1", (d0,)
        ).fetchone()[0]
        assert on_replica is True


def test_reads_over_several_shards_are_gathered_and_writes_refused(shards, pgvalve):
    clear(shards)
    pv = pgvalve(**config(shards))
    with pv.connect() as conn:
        for d in range(1, 21):
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d,))
        # Reads without one key run on every shard that may hold rows, answered as one.
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (20,)
        a, b = next(d for d in range(1, 21) if md5_mod(d) == 0), next(
            d for d in range(1, 21) if md5_mod(d) == 1)
        assert conn.execute(f"SELECT device_id FROM telemetry WHERE device_id IN ({a}, {b}) "
                            "ORDER BY 1").fetchall() == [(min(a, b),), (max(a, b),)]
        # Averages run as sums and counts on each shard and are divided as avg() divides:
        # numeric for integers (in text and in binary), double precision for itself.
        want = Decimal("10.5000000000000000")
        assert conn.execute("SELECT avg(device_id) FROM telemetry").fetchone() == (want,)
        assert conn.execute("SELECT avg(device_id) FROM telemetry", binary=True).fetchone() == (
            want,)
        assert conn.execute("SELECT avg(value) AS mean FROM telemetry").fetchone() == (1.0,)
        # What cannot be combined correctly is refused, with a hint naming the key.
        e = refused(conn, "SELECT avg(DISTINCT value) FROM telemetry")
        assert "device_id" in e.diag.message_hint
        refused(conn, "UPDATE telemetry SET value = 2")
        refused(conn, "DELETE FROM telemetry WHERE value > 0")
        # Rows for two shards in one INSERT are split between them inside a two-phase commit,
        # which these servers do not allow (max_prepared_transactions = 0): refused, nothing kept.
        refused(conn, f"INSERT INTO telemetry (device_id, value) VALUES ({a}, 1), ({b}, 1)",
                sqlstate="55000")
        refused(conn, "INSERT INTO telemetry VALUES (1, now(), 1)")  # no column list
        refused(conn, "INSERT INTO telemetry (device_id) SELECT 5")
        refused(conn, "SELECT count(*) FROM telemetry WHERE device_id = 'abc'", sqlstate="22P02")
        # The connection is fine afterwards, and nothing changed on either shard.
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert sorted(rows_on(shards[0]) + rows_on(shards[1])) == list(range(1, 21))
    with shards[0].primary.connect(dbname=APP_DB) as direct:
        assert direct.execute("SELECT count(*) FROM telemetry WHERE value <> 1").fetchone()[0] == 0


def test_another_tables_device_id_does_not_place_a_statement(shards, pgvalve):
    """A column named device_id is the key only when it is the sharded table's: a reference
    table's device_id says nothing about where telemetry's rows are (found by a code review: a
    join with a reference table read one shard's rows, an UPDATE ... FROM it wrote one shard's,
    and count(DISTINCT) of its device_id counted each value once per shard)."""
    clear(shards)
    a = next(d for d in range(1, 21) if md5_mod(d) == 0)
    b = next(d for d in range(1, 21) if md5_mod(d) == 1)
    for i, c in enumerate(shards):
        c.primary.psql("DROP TABLE IF EXISTS device_settings", dbname=APP_DB)
        c.primary.psql("CREATE TABLE device_settings (device_id bigint PRIMARY KEY, threshold int)",
                       dbname=APP_DB)
        c.primary.psql("INSERT INTO device_settings VALUES (2, 7), (3, 8)", dbname=APP_DB)
        c.primary.psql("GRANT ALL ON device_settings TO app", dbname=APP_DB)
        c.primary.psql(f"INSERT INTO telemetry (device_id, value) VALUES ({(a, b)[i]}, 7)",
                       dbname=APP_DB)
    shards[0].wait_replay()
    pv = pgvalve(**config(shards, reference_tables=["device_types", "device_settings"]))
    with pv.connect(autocommit=True) as conn:
        # One matching row on each shard: both are counted.
        assert conn.execute(
            "SELECT count(*) FROM telemetry t JOIN device_settings s ON s.threshold = t.value "
            "WHERE s.device_id = 2", prepare=False).fetchone() == (2,)
        # The sharded table's own key still places a read on its shard.
        assert conn.execute(
            f"SELECT count(*) FROM telemetry t JOIN device_settings s ON s.threshold = t.value "
            f"WHERE t.device_id = {a}", prepare=False).fetchone() == (1,)
        refused(conn, "SELECT count(DISTINCT s.device_id) FROM telemetry t JOIN device_settings s "
                      "ON s.threshold = t.value")
        # A write to both shards' rows needs a two-phase commit these servers do not allow:
        # refused, where it ran on device 2's shard alone before.
        refused(conn, "UPDATE telemetry SET note = 'u' FROM device_settings s "
                      "WHERE s.device_id = 2 AND telemetry.value = s.threshold")
    for c in shards:
        assert rows_on(c, "SELECT count(*) FROM telemetry WHERE note IS NOT NULL") == [0]
        c.primary.psql("DROP TABLE device_settings", dbname=APP_DB)


def test_reads_over_several_shards_stream_rows_past_what_pgvalve_holds(shards, pgvalve):
    """A dashboard reading more rows than pgvalve would hold (16 MiB) gets them all: rows that
    are only concatenated, or merged for an ORDER BY on a number, a time or text, go to the
    client as the shards send them. pgvalve's memory does not follow the answer's size, and a client that
    reads slowly holds the shards back instead of filling pgvalve."""
    clear(shards)
    per_shard = 12000  # 2 x 12000 rows of 1 KiB: about 24 MiB
    for i, c in enumerate(shards):
        c.primary.psql(
            "INSERT INTO telemetry (device_id, ts, value, note) "
            f"SELECT 2 * g + {i}, timestamptz '2026-01-01' + g * interval '1 second', g, "
            f"repeat('x', 1000) FROM generate_series(1, {per_shard}) g", dbname=APP_DB)
    shards[0].wait_replay()
    pv = pgvalve(**config(shards))
    with pv.connect() as conn:
        conn.execute("SELECT 1")
        base = settle_rss(pv.pid)
        rows = conn.execute("SELECT device_id, note FROM telemetry").fetchall()
        assert len(rows) == 2 * per_shard
        assert sorted(r[0] for r in rows) == sorted(2 * g + i for i in (0, 1)
                                                    for g in range(1, per_shard + 1))
        assert all(len(r[1]) == 1000 for r in rows)
        # Merged by value, in text and in binary (a prepared statement).
        for binary in (False, True):
            got = conn.execute("SELECT device_id, note FROM telemetry ORDER BY device_id DESC "
                               "LIMIT 20000 OFFSET 10", binary=binary).fetchall()
            want = sorted((2 * g + i for i in (0, 1) for g in range(1, per_shard + 1)),
                          reverse=True)[10:20010]
            assert [r[0] for r in got] == want
        got = conn.execute("SELECT ts, device_id FROM telemetry ORDER BY ts, device_id").fetchall()
        assert len(got) == 2 * per_shard
        assert got == sorted(got)
        # A client that reads slowly: pgvalve passes rows on as the client takes them.
        with conn.cursor() as cur:
            taken = 0
            for _ in cur.stream("SELECT device_id, note FROM telemetry ORDER BY device_id"):
                taken += 1
                if taken == 100:
                    time.sleep(1)
                    held = rss_bytes(pv.pid) - base
            assert taken == 2 * per_shard
        # Text sorts in the database's collation (C here; test_shard_collation.py has others)
        # merge as they come too.
        got = conn.execute("SELECT device_id, note FROM telemetry ORDER BY note DESC, device_id"
                           ).fetchall()
        assert [r[0] for r in got] == sorted(2 * g + i for i in (0, 1)
                                             for g in range(1, per_shard + 1))
        grown = settle_rss(pv.pid) - base
    if not SANITIZED:
        assert held < 8 << 20, f"pgvalve grew by {held >> 10} KiB while the client paused"
        assert grown < 8 << 20, f"pgvalve grew by {grown >> 10} KiB streaming 24 MiB reads"


def fetch_in_parts(c, sql, per_execute):
    """PgJDBC with a fetch size, autocommit off: BEGIN in the first request, `sql` bound to
    portal C_1 and executed `per_execute` rows at a time, one request each. Every reply."""
    from pgwire_ext import bind, describe, execute, parse, sync
    replies = [c.run([parse("", "BEGIN"), bind(""), execute(),
                      parse("", sql), bind("", portal="C_1"), describe("P", "C_1"),
                      execute("C_1", per_execute), sync()])]
    while replies[-1].kinds.endswith(b"sZ"):
        assert len(replies) < 100, "the portal never ended"
        replies.append(c.run([execute("C_1", per_execute), sync()]))
    return replies


def test_a_portal_fetched_in_parts_over_shards_answers_as_one_postgresql(shards, pgvalve):
    """PgJDBC with a fetch size and asyncpg's cursors fetch a portal a few rows at a time, in
    a transaction. Over several shards each Execute gets the next rows, merged or combined, and
    ends as one PostgreSQL's does, message by message: compared with one server holding every
    row (a temporary table of the same name on shard s0's primary). The second Execute got 34000
    'portal does not exist' from a shard's server before."""
    from pgcluster import APP_PASSWORD, APP_USER
    from pgwire_ext import ExtClient
    clear(shards)
    pv = pgvalve(**config(shards))
    with pv.connect() as conn:
        for d in range(1, 24):
            conn.execute("INSERT INTO telemetry (device_id, value, note) VALUES (%s, %s, %s)",
                         (d, d % 4, f"n{d % 3}"))
    one = ExtClient("127.0.0.1", shards[0].primary.port, APP_USER, APP_PASSWORD, APP_DB,
                    timeout=20)
    one.connect()
    one.simple("CREATE TEMPORARY TABLE telemetry (LIKE public.telemetry INCLUDING DEFAULTS)"
               ).raise_for_error()
    one.simple("INSERT INTO telemetry (device_id, value, note) SELECT d, d % 4, 'n' || d % 3 "
               "FROM generate_series(1, 23) d").raise_for_error()
    c = ExtClient.login(pv)
    for sql, ordered in (
            ("SELECT device_id, value FROM telemetry ORDER BY device_id DESC", True),
            ("SELECT device_id, note FROM telemetry ORDER BY note, device_id LIMIT 20", True),
            ("SELECT value, count(*), sum(device_id) FROM telemetry GROUP BY value "
             "ORDER BY value", True),
            ("SELECT device_id FROM telemetry", False)):
        for per_execute in (5, 1, 23, -1):  # below zero: all rows, as PostgreSQL reads it
            got = fetch_in_parts(c, sql, per_execute)
            want = fetch_in_parts(one, sql, per_execute)
            what = f"{sql} fetching {per_execute}"
            assert [r.kinds for r in got] == [r.kinds for r in want], what
            assert [r.tags for r in got] == [r.tags for r in want], what
            assert [r.status for r in got] == ["T"] * len(want), what
            rows = [row for r in got for row in r.rows]
            want_rows = [row for r in want for row in r.rows]
            assert (rows if ordered else sorted(rows)) == \
                (want_rows if ordered else sorted(want_rows)), what
            assert c.simple("COMMIT").status == "I"
            one.simple("COMMIT")
    c.terminate()
    one.terminate()


def test_a_suspended_portal_over_shards_holds_its_servers_until_it_is_fetched_or_closed(
        shards, pgvalve):
    """Between the client's Executes the shards' servers wait mid-answer (pgvalve reads them only
    as far as it may hold rows; 40 MiB here). Another statement of the transaction closes the
    portal: its shards' queries are cancelled, and a later Execute of it says why (PostgreSQL
    would keep it; pgvalve's holds two servers)."""
    from pgwire_ext import ExtClient, bind, describe, execute, parse, sync
    clear(shards)
    per_shard = 20000  # 2 x 20000 rows of 1 KiB: more than a shard's share and its sockets
    for i, cl in enumerate(shards):
        cl.primary.psql(f"INSERT INTO telemetry (device_id, note) SELECT 2 * g + {i}, "
                        f"repeat('x', 1000) FROM generate_series(1, {per_shard}) g",
                        dbname=APP_DB)
    shards[0].wait_replay()
    pv = pgvalve(**config(shards))
    sql = "SELECT device_id, note FROM telemetry ORDER BY device_id"

    def waiting(node):
        with node.connect(dbname=APP_DB) as d:
            return d.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                             "AND query = %s", (sql,)).fetchone()[0]

    c = ExtClient.login(pv)
    r = c.run([parse("", "BEGIN"), bind(""), execute(), parse("", sql),
               bind("", portal="C_1"), describe("P", "C_1"), execute("C_1", 10), sync()])
    assert [int(row[0]) for row in r.rows] == list(range(2, 12)) and r.kinds.endswith(b"sZ")
    # (Shard s0's read may run on its replica.)
    wait_until(lambda: all(sum(waiting(n) for n in cl.nodes) == 1 for cl in shards), 5,
               message="each shard's query waits for the client")
    r = c.run([execute("C_1", 3), sync()])
    assert [int(row[0]) for row in r.rows] == [12, 13, 14]
    assert c.simple("SELECT 1").rows == [["1"]]
    wait_until(lambda: all(waiting(n) == 0 for cl in shards for n in cl.nodes), 5,
               message="the closed portal's queries were cancelled")
    r = c.run([execute("C_1", 3), sync()])
    assert r.errors and r.errors[0]["C"] == "34000", r.errors
    assert r.errors[0]["M"].startswith('pgvalve: portal "C_1" read several shards'), r.errors
    c.terminate()


def test_times_merge_in_time_order_also_in_the_hour_a_time_zone_repeats(shards, pgvalve):
    """A dashboard in Europe/Berlin reading across the autumn change: 02:30+02 comes before
    02:10+01. Orders pgvalve cannot follow (dates as DateStyle SQL writes them) are an error,
    never a wrong order."""
    clear(shards)
    pv = pgvalve(**config(shards))
    d0 = next(d for d in range(1, 50) if md5_mod(d) == 0)
    d1 = next(d for d in range(1, 50) if md5_mod(d) == 1)
    with pv.connect() as conn:
        conn.execute("SET TimeZone = 'Europe/Berlin'")
        for d in (d0, d1):
            conn.execute(f"/* pgvalve: device_id={d} */ INSERT INTO telemetry (device_id, ts, "
                         "value) SELECT %s, timestamptz '2026-10-25 00:00:00+00' + g * interval "
                         "'7 minutes', g FROM generate_series(0, 20) g", (d,))
        for binary in (False, True):
            got = conn.execute("SELECT ts, device_id FROM telemetry ORDER BY ts, device_id",
                               binary=binary).fetchall()
            assert len(got) == 42
            instants = [r[0].timestamp() for r in got]  # (Python compares wall times)
            assert instants == sorted(instants)
            assert [r[1] for r in got[:2]] == sorted((d0, d1))
        texts = [r[0] for r in conn.execute(
            "SELECT ts::text AS t FROM telemetry WHERE device_id = %s ORDER BY ts",
            (d0,)).fetchall()]
        assert texts != sorted(texts), "the text of these times sorts otherwise than the times"
        conn.execute("SET DateStyle = 'SQL, DMY'")
        e = refused(conn, "SELECT ts::date AS day, ts FROM telemetry "
                          "WHERE ts > '2026-09-01' ORDER BY ts")
        assert "does not reproduce" in str(e)
        conn.execute("RESET DateStyle")
        assert len(conn.execute("SELECT ts FROM telemetry ORDER BY ts").fetchall()) == 42


def test_hints_and_set_device_id_choose_the_shard(shards, pgvalve):
    clear(shards)
    pv = pgvalve(**config(shards))
    d1 = next(d for d in range(1, 50) if md5_mod(d) == 1)
    with pv.connect() as conn:
        conn.execute(f"/* pgvalve: device_id={d1} */ INSERT INTO telemetry (device_id, value) "
                     f"SELECT {d1}, g FROM generate_series(1, 3) g", prepare=False)
        # A keyless read of one shard, named by a hint or by the session's key.
        assert conn.execute("/* pgvalve: shard=s1 */ SELECT count(*) FROM telemetry",
                            prepare=False).fetchone()[0] == 3
        assert conn.execute("/* pgvalve: shard=s0 */ SELECT count(*) FROM telemetry",
                            prepare=False).fetchone()[0] == 0
        refused(conn, "/* pgvalve: shard=nope */ SELECT 1")
        conn.execute(f"SET pgvalve.device_id = '{d1}'")
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone()[0] == 3
        conn.execute("RESET pgvalve.device_id")
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone()[0] == 3  # every shard
        refused(conn, "SET pgvalve.device_id = 'not-a-number'", sqlstate="22023")
        # Statements on no table, and reads of reference tables, run on any shard.
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        assert conn.execute("SELECT name FROM device_types WHERE id = 2").fetchone() == ("hygrometer",)
    assert rows_on(shards[1]) == [d1] * 3 and rows_on(shards[0]) == []


def test_a_transaction_runs_on_the_shard_of_its_first_statement(shards, pgvalve):
    """psycopg sends BEGIN before the first statement: pgvalve holds it back and starts the
    transaction on the shard that statement names; another shard in the same transaction is
    refused, and the transaction rolls back as PostgreSQL's would after an error."""
    clear(shards)
    pv = pgvalve(**config(shards))
    d0 = next(d for d in range(1, 50) if md5_mod(d) == 0)
    d1 = next(d for d in range(1, 50) if md5_mod(d) == 1)
    d1b = next(d for d in range(d1 + 1, 99) if md5_mod(d) == 1)
    with pv.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d1,))
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 2)", (d1b,))
        assert conn.execute("SELECT count(*) FROM telemetry WHERE device_id = %s",
                            (d1,)).fetchone()[0] == 1
        conn.commit()
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 3)", (d1,))
        with pytest.raises(psycopg.Error) as e:
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 4)", (d0,))
        assert e.value.sqlstate == "0A000" and "shard" in str(e.value)
        conn.rollback()
        # A transaction that only begins and ends touches no server.
        conn.commit()
        # BEGIN and ROLLBACK around one shard's statements.
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 5)", (d0,))
        conn.rollback()
    assert sorted(rows_on(shards[1])) == sorted([d1, d1b])
    assert rows_on(shards[0]) == []


def test_pg_partition_places_rows_as_postgresql_hash_partitioning_would(shards, pgvalve):
    clear(shards)
    pv = pgvalve(**config(shards, hash_="pg_partition"))
    ids = list(range(-50, 150)) + [2**40 + 7, -(2**35)]
    with pv.connect() as conn:
        for d in ids:
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 0)", (d,))
    for i, c in enumerate(shards):
        with c.primary.connect(dbname=APP_DB) as direct:
            wrong = direct.execute(
                "SELECT device_id FROM telemetry WHERE NOT satisfies_hash_partition("
                "'pp_parent'::regclass, 2, %s, device_id)", (i,)).fetchall()
            assert wrong == [], f"rows on s{i} that PostgreSQL would place elsewhere: {wrong[:5]}"
    assert sorted(rows_on(shards[0]) + rows_on(shards[1])) == sorted(ids)


def test_xxh3_bucket_map_places_rows_by_bucket(shards, pgvalve):
    clear(shards)
    # s1 owns only buckets 0-9 of 64: a skewed map, so a wrong bucket rule shows.
    pv = pgvalve(**config(shards, hash_="xxh3", key_type="auto", buckets=64,
                          bucket_map={"s0": "10-63", "s1": "0-9"}))
    ids = list(range(1, 301))
    with pv.connect() as conn:
        for d in ids:
            conn.execute(f"INSERT INTO telemetry (device_id, value) VALUES ({d}, 0)",
                         prepare=False)

    def shard_of(d):
        bucket = xxhash.xxh3_64_intdigest(struct.pack("<q", d)) % 64
        return 1 if bucket <= 9 else 0

    for i, c in enumerate(shards):
        placed = rows_on(c)
        assert all(shard_of(d) == i for d in placed), f"a row on s{i} belongs elsewhere"
    assert len(rows_on(shards[1])) == sum(1 for d in ids if shard_of(d) == 1) > 0


def test_show_shards_lists_each_shard_with_what_it_owns_and_routed(shards, pgvalve):
    from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
    clear(shards)
    pv = pgvalve(users=APP_AND_OPS, **config(shards))
    d1 = next(d for d in range(1, 50) if md5_mod(d) == 1)
    with pv.connect() as conn:
        for _ in range(3):
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d1,))
        assert conn.execute("SELECT count(*) FROM telemetry WHERE device_id = %s",
                            (d1,)).fetchone()[0] == 3
    with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                         autocommit=True, prepare_threshold=None) as a:
        def rows():
            cur = a.execute("SHOW SHARDS")
            cols = [d.name for d in cur.description]
            return {r[cols.index("shard")]: dict(zip(cols, r)) for r in cur.fetchall()
                    if r[cols.index("database")] == APP_DB}
        wait_until(lambda: all(r["primary"] for r in rows().values()), 10,
                   message="both primaries checked")
        got = rows()
    assert set(got) == {"s0", "s1"}
    assert got["s1"]["buckets"] == "md5_mod remainder 1 of 2"
    assert got["s1"]["primary"] == f"127.0.0.1:{shards[1].primary.port}"
    assert got["s0"]["replicas"] == f"127.0.0.1:{shards[0].replicas[0].port}"
    # 3 inserts and a count on s1: 4 statements, 3 rows written + 1 row read.
    assert got["s1"]["statements"] == "4" and got["s1"]["rows_routed"] == "4"
    assert got["s0"]["statements"] == "0"
    # The collation text merged across the shards follows (initdb --locale=C here).
    assert got["s0"]["collation"] == got["s1"]["collation"] == "C"


def test_a_bad_key_inside_a_transaction_fails_the_transaction(shards, pgvalve):
    clear(shards)
    pv = pgvalve(**config(shards))
    d1 = next(d for d in range(1, 50) if md5_mod(d) == 1)
    with pv.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d1,))
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SELECT * FROM telemetry WHERE device_id = 'x'")
        assert e.value.sqlstate == "22P02" and str(e.value).startswith("pgvalve:")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
    assert rows_on(shards[1]) == []


def test_extended_flights_route_by_their_statement_not_by_begin(shards, pgvalve):
    """JDBC sends BEGIN in the flight of the transaction's first statement; a client may pipeline
    autocommit statements for devices on different shards: each reaches its own shard."""
    from pgwire_ext import ExtClient, bind, execute, parse, sync
    clear(shards)
    pv = pgvalve(**config(shards))
    d0 = next(d for d in range(1, 50) if md5_mod(d) == 0)
    d1 = next(d for d in range(1, 50) if md5_mod(d) == 1)
    insert = "INSERT INTO telemetry (device_id, value) VALUES ($1, 1)"
    c = ExtClient.login(pv)
    try:
        r = c.run([parse("", "BEGIN"), bind(""), execute(),
                   parse("", insert), bind("", [str(d1)]), execute(), sync()]).raise_for_error()
        assert r.tags == ["BEGIN", "INSERT 0 1"] and r.status == "T"
        assert c.simple("COMMIT").raise_for_error().status == "I"
        r = c.run([parse("", insert), bind("", [str(d0)]), execute(), sync(),
                   parse("", insert), bind("", [str(d1)]), execute(), sync()]).raise_for_error()
        assert r.tags == ["INSERT 0 1", "INSERT 0 1"]
        # A Parse and its Bind in separate writes: the request waits for the Bind's key.
        c.sock.sendall(parse("", insert))
        time.sleep(0.2)
        r = c.run([bind("", [str(d1)]), execute(), sync()]).raise_for_error()
        assert r.tags == ["INSERT 0 1"]
        # Two Binds before one Sync are one implicit transaction: the second shard is refused,
        # and the first row rolls back with it.
        r = c.run([parse("", insert), bind("", [str(d0)]), execute(),
                   bind("", [str(d1)]), execute(), sync()])
        assert r.errors and r.errors[0]["C"] == "0A000" and r.status == "I"
    finally:
        c.terminate()
    assert rows_on(shards[0]) == [d0]
    assert rows_on(shards[1]) == [d1, d1, d1]


def test_a_held_back_begin_fails_with_a_request_that_got_no_server(shards, pgvalve):
    """The first statement after a BEGIN pgvalve answered gets no server: as after an error in a
    block on PostgreSQL, the block has failed (ReadyForQuery 'E') and the next statement gets
    25P02 instead of running on its own; after ROLLBACK the client goes on."""
    from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
    from pgwire_ext import ExtClient
    clear(shards)
    pv = pgvalve(users=APP_AND_OPS, checkout_timeout_ms=300, **config(shards))
    d1 = next(d for d in range(1, 50) if md5_mod(d) == 1)
    c = ExtClient.login(pv)
    try:
        assert c.simple("BEGIN").raise_for_error().status == "T"
        with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                             autocommit=True, prepare_threshold=None) as a:
            a.execute(f"PAUSE {APP_DB}")
            r = c.simple(f"INSERT INTO telemetry (device_id, value) VALUES ({d1}, 1)")
            assert r.errors and r.errors[0]["C"] == "53300" and r.status == "E"
            a.execute(f"RESUME {APP_DB}")
        r = c.simple(f"INSERT INTO telemetry (device_id, value) VALUES ({d1}, 3)")
        assert r.errors and r.errors[0]["C"] == "25P02" and r.status == "E"
        assert c.simple("ROLLBACK").raise_for_error().status == "I"
        r = c.simple(f"INSERT INTO telemetry (device_id, value) VALUES ({d1}, 2)")
        assert r.raise_for_error().status == "I"
    finally:
        c.terminate()
    with shards[1].primary.connect(dbname=APP_DB) as direct:
        assert direct.execute("SELECT value FROM telemetry").fetchall() == [(2.0,)]


def test_tables_pgvalve_cannot_place_are_refused_and_catalogs_answer(shards, pgvalve):
    pv = pgvalve(**config(shards))
    with pv.connect() as conn:
        e = refused(conn, "SELECT count(*) FROM pp_parent WHERE device_id = 1")
        assert '"pp_parent"' in str(e) and "sharding.tables" in str(e)
        refused(conn, "UPDATE telemetry SET device_id = 2 WHERE device_id = 1")
        # Drivers' and tools' catalog queries are the same on every shard.
        assert conn.execute("SELECT typname FROM pg_type WHERE oid = 23").fetchone() == ("int4",)
        assert conn.execute("SELECT count(*) FROM information_schema.tables "
                            "WHERE table_name = 'telemetry'").fetchone() == (1,)


def test_statements_whose_rows_pgvalve_would_misplace_are_refused(shards, pgvalve):
    """Found by review, each gave another answer than one database: FETCH FIRST ROW ONLY over
    shards returned a row per shard; ON CONFLICT DO UPDATE SET device_id left the row on a shard
    its new key does not hash to; under key_type auto, an unquoted 7.0 was hashed as the text
    '7.0' while a bigint column stores 7."""
    clear(shards)
    pv = pgvalve(**config(shards, key_type="auto"))
    with pv.connect() as conn:
        for d in (1, 2, 3, 4):
            conn.execute("INSERT INTO telemetry (device_id) VALUES (%s)", (d,))
        e = refused(conn, "SELECT device_id FROM telemetry ORDER BY device_id "
                          "FETCH FIRST ROW ONLY")
        assert "FETCH FIRST 1 ROW ONLY" in str(e)
        assert conn.execute("SELECT device_id FROM telemetry ORDER BY device_id "
                            "FETCH FIRST 1 ROW ONLY").fetchall() == [(1,)]
        refused(conn, "INSERT INTO telemetry (device_id) VALUES (1) ON CONFLICT (device_id) DO UPDATE "
                      "SET device_id = 2")
        e = refused(conn, "INSERT INTO telemetry (device_id) VALUES (7.0)", sqlstate="22P02")
        assert "not an integer" in str(e)
        refused(conn, "SELECT count(*) FROM telemetry WHERE device_id = 7.0", sqlstate="22P02")
    assert sorted(rows_on(shards[0]) + rows_on(shards[1])) == [1, 2, 3, 4]


def test_set_device_id_on_a_database_of_one_shard_says_it_does_not_apply(pgvalve):
    pv = pgvalve()
    with pv.connect() as conn:
        e = refused(conn, "SET pgvalve.device_id = '7'", sqlstate="22023")
        assert "only applies to a sharded database" in str(e)


def test_a_begin_postgresql_refuses_fails_at_once(shards, pgvalve):
    pv = pgvalve(**config(shards))
    with pv.connect() as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as e:
            conn.execute("BEGIN ISOLATION LEVEL NONSENSE")
        assert not str(e.value).startswith("pgvalve:")  # PostgreSQL's own answer
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_statistics_count_a_statement_over_several_shards_once_and_each_shards_part(shards,
                                                                                  pgvalve):
    from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
    clear(shards)
    pv = pgvalve(users=APP_AND_OPS, **config(shards))
    with pv.connect() as conn:
        for d in range(1, 11):
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d,))
        for _ in range(3):
            assert conn.execute("SELECT count(*) FROM telemetry WHERE value > 0").fetchone() == (10,)
    with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                         autocommit=True, prepare_threshold=None) as a:
        def rows(command):
            cur = a.execute(command)
            cols = [d.name for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]
        (q,) = [r for r in rows("SHOW QUERIES") if "count(*)" in r["query"]]
        assert q["calls"] == "3" and q["rows"] == "3", q  # the client's statements, once each
        assert set(q["shards"].split(",")) == {"s0", "s1"}, q
        by_shard = {r["shard"]: r for r in rows("SHOW SHARDS") if r["database"] == APP_DB}
        # Each shard ran its part of the three reads, besides the inserts it got.
        inserted = {"s0": sum(md5_mod(d) == 0 for d in range(1, 11)),
                    "s1": sum(md5_mod(d) == 1 for d in range(1, 11))}
        for name in ("s0", "s1"):
            assert int(by_shard[name]["statements"]) == inserted[name] + 3, by_shard[name]


def test_a_shards_part_that_fails_after_some_rows_routes_none(shards, pgvalve):
    """SHOW SHARDS.rows_routed is the rows each shard's command tag reported: a shard whose part
    of a read over several shards failed after sending rows reported none, as a statement that
    fails on one server does."""
    from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
    clear(shards)
    pv = pgvalve(users=APP_AND_OPS, **config(shards))
    on_s1 = [d for d in range(1, 40) if md5_mod(d) == 1 and d != 3][:4]
    assert md5_mod(3) == 1 and md5_mod(2) == 0
    with pv.connect() as conn:
        # s1 reads its rows in this order: four rows, then device 3's division by zero.
        for d in on_s1 + [3, 2]:
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d,))
    shards[0].wait_replay()

    def routed():
        with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                             autocommit=True, prepare_threshold=None) as a:
            cur = a.execute("SHOW SHARDS")
            cols = [d.name for d in cur.description]
            return {r[cols.index("shard")]: int(r[cols.index("rows_routed")])
                    for r in cur.fetchall() if r[cols.index("database")] == APP_DB}

    import subprocess
    sql = "SELECT 1 / (device_id - 3) FROM telemetry"
    for simple in (False, True):
        before = routed()
        if simple:  # psql: the simple protocol
            run = subprocess.run(["psql", pv.dsn(), "-Xqc", sql], capture_output=True, text=True,
                                 timeout=30)
            assert run.returncode != 0 and "division by zero" in run.stderr, run
        else:
            with pv.connect() as conn, pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute(sql).fetchall()
        after = routed()
        assert after["s0"] - before["s0"] == 1, (simple, before, after)  # s0's SELECT 1
        assert after["s1"] - before["s1"] == 0, (simple, before, after)  # no tag: no rows


def test_a_slow_read_over_several_shards_names_where_its_parts_ran(shards, pgvalve):
    # s0's part runs on its replica, s1's on its primary (it has no replica): the slow sample
    # names both shards and both hosts, and each part counts under the role it ran on.
    import urllib.request
    from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
    clear(shards)
    pv = pgvalve(users=APP_AND_OPS, stats={"slow_query_ms": 20}, **config(shards))
    with pv.connect() as conn:
        for d in range(1, 11):
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d,))
    shards[0].wait_replay()
    s0_replica = f"127.0.0.1:{shards[0].replicas[0].port}"
    s1_primary = f"127.0.0.1:{shards[1].primary.port}"
    with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                         autocommit=True, prepare_threshold=None) as a:
        def rows(command):
            cur = a.execute(command)
            cols = [d.name for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]
        wait_until(lambda: any(f"{h['host']}:{h['port']}" == s0_replica and h["readable"] == "yes"
                               for h in rows("SHOW HOSTS")), 10, message="s0's replica readable")
        with pv.connect() as conn:
            assert conn.execute("SELECT count(*) FROM telemetry "
                                "WHERE pg_sleep(0.01) IS NOT NULL").fetchone() == (10,)
        (s,) = [r for r in rows("SHOW SLOW_QUERIES") if "pg_sleep" in r["query"]]
        assert s["shard"] == "s0,s1", s
        assert sorted(s["host"].split(",")) == sorted([s0_replica, s1_primary]), s
        (q,) = [r for r in rows("SHOW QUERIES") if "pg_sleep" in r["query"]]
        assert q["replica_share"] == "0.00", q  # not every part ran on a replica
    with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/metrics", timeout=5) as r:
        selects = [line for line in r.read().decode().splitlines()
                   if line.startswith("pgvalve_queries_total{") and 'kind="select"' in line]
    assert any('role="replica"' in line and 'shard="s0"' in line for line in selects), selects
    assert any('role="primary"' in line and 'shard="s1"' in line for line in selects), selects


def test_jdbc_reads_over_several_shards_also_once_prepared(shards, pgvalve, tmp_path):
    """PgJDBC switches a PreparedStatement to a named server-side statement with binary integer
    results from its fifth execution: the gathered answers stay right."""
    import subprocess
    from pathlib import Path
    jar = Path("/usr/share/java/postgresql.jar")
    assert jar.exists(), f"{jar} missing: apt-get install libpostgresql-jdbc-java"
    clear(shards)
    pv = pgvalve(**config(shards))
    with pv.connect() as conn:
        for d in range(1, 21):
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d,))
    src = Path(__file__).parent / "drivers" / "JdbcSharded.java"
    r = subprocess.run(["javac", "-cp", str(jar), "-d", str(tmp_path), str(src)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    from pgcluster import APP_PASSWORD, APP_USER
    r = subprocess.run(["java", "-cp", f"{tmp_path}:{jar}", "JdbcSharded",
                        f"jdbc:postgresql://127.0.0.1:{pv.port}/{APP_DB}", APP_USER, APP_PASSWORD,
                        "20"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr


def test_jdbc_fetch_size_reads_every_row_over_shards(shards, pgvalve, tmp_path):
    """PgJDBC with a fetch size (autocommit off) executes its portal a few rows at a time: over
    several shards every row comes, merged and combined, also once the statement is a named
    prepared one with binary results; a result set closed early leaves the transaction going
    on. Its second fetch failed with 34000 'portal C_1 does not exist' before."""
    import subprocess
    from pathlib import Path
    from pgcluster import APP_PASSWORD, APP_USER
    jar = Path("/usr/share/java/postgresql.jar")
    assert jar.exists(), f"{jar} missing: apt-get install libpostgresql-jdbc-java"
    clear(shards)
    rows = 300
    pv = pgvalve(**config(shards))
    with pv.connect() as conn:
        for d in range(1, rows + 1):
            conn.execute("INSERT INTO telemetry (device_id) VALUES (%s)", (d,))
    shards[0].wait_replay()
    src = Path(__file__).parent / "drivers" / "JdbcShardedFetch.java"
    r = subprocess.run(["javac", "-cp", str(jar), "-d", str(tmp_path), str(src)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for fetch in (7, 1000):
        r = subprocess.run(["java", "-cp", f"{tmp_path}:{jar}", "JdbcShardedFetch",
                            f"jdbc:postgresql://127.0.0.1:{pv.port}/{APP_DB}", APP_USER,
                            APP_PASSWORD, str(rows), str(fetch)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr


def test_a_cancel_stops_a_read_on_every_shard(shards, pgvalve):
    """A cancelled read over several shards stops on each of them, not only on the last one
    linked: the client gets 57014 at once and no shard keeps running the statement."""
    clear(shards)
    pv = pgvalve(**config(shards))
    sleep = "SELECT count(*) FROM telemetry WHERE pg_sleep(20) IS NOT NULL"
    with pv.connect() as conn:
        for d in (next(d for d in range(1, 50) if md5_mod(d) == i) for i in range(2)):
            conn.execute("INSERT INTO telemetry (device_id) VALUES (%s)", (d,))
        shards[0].wait_replay()
        canceller = threading.Timer(1.0, conn.cancel)
        canceller.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(sleep)
        took = time.monotonic() - started
        canceller.join()
        # A shard that got no cancel would have held the answer back for its whole sleep.
        assert took < 10, f"the read ended {took:.1f}s after it began"

        def sleeping(node):
            with node.connect(dbname=APP_DB) as c:
                return c.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                 "AND query LIKE '%pg_sleep(20)%' AND pid <> pg_backend_pid()"
                                 ).fetchone()[0]

        for cluster in shards:
            for node in cluster.nodes:
                wait_until(lambda: sleeping(node) == 0, 5, message=f"{node.port} stopped")
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_cancel_on_its_way_to_the_shards_never_stops_the_next_clients_query(shards, pgvalve):
    """Found by a code review: a cancel for a read over several shards was sent to each shard's
    server, which went back to the pool before PostgreSQL took the cancel; B, the next client
    of those servers, had 12 of its reads cancelled. Each server now stays with A until its
    cancel is taken, as a single server does (test_cancel.py)."""
    from itutil import cancels_on_their_way, raw_login

    clear(shards)
    pv = pgvalve(pool_size=1, max_overflow=0, mode="transaction", checkout_timeout_ms=20000,
                 **config(shards))
    with pv.connect() as conn:
        for d in (next(d for d in range(1, 50) if md5_mod(d) == i) for i in range(2)):
            conn.execute("INSERT INTO telemetry (device_id) VALUES (%s)", (d,))
    shards[0].wait_replay()
    a, b = raw_login(pv, timeout=30), raw_login(pv, timeout=30)
    try:
        counts = cancels_on_their_way(pv, a, "SELECT device_id FROM telemetry",
                                      b, "SELECT device_id, pg_sleep(0.05) FROM telemetry")
    finally:
        a.terminate()
        b.terminate()
    assert counts["a"] + counts["a_cancelled"] > 20, counts
    assert counts["b"] > 20 and counts["b_cancelled"] == 0, counts


def test_a_client_that_leaves_during_a_read_frees_every_shard(shards, pgvalve):
    """A client gone while its read over several shards runs (a dashboard closed, a timed-out
    HTTP handler) is not kept waiting for: every shard's server is cancelled and the pool gets
    them back, so the next client is served at once."""
    from pgwire import query_message
    from test_limits import raw
    clear(shards)
    pv = pgvalve(**config(shards), pool_size=1, max_overflow=0, checkout_timeout_ms=2000)
    with pv.connect() as conn:
        for d in (next(d for d in range(1, 50) if md5_mod(d) == i) for i in range(2)):
            conn.execute("INSERT INTO telemetry (device_id) VALUES (%s)", (d,))
    shards[0].wait_replay()
    gone = raw(pv).connect()
    gone.sock.sendall(query_message(
        "SELECT count(*) FROM telemetry WHERE pg_sleep(20) IS NOT NULL"))

    def sleeping(node):
        with node.connect(dbname=APP_DB) as c:
            return c.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                             "AND query LIKE '%pg_sleep(20)%' AND pid <> pg_backend_pid()"
                             ).fetchone()[0]

    wait_until(lambda: sum(sleeping(n) for c in shards for n in c.nodes) == 2, 5,
               message="the read runs on both shards")
    gone.close_abruptly()
    for cluster in shards:
        for node in cluster.nodes:
            wait_until(lambda: sleeping(node) == 0, 5, message=f"{node.port} stopped")
    with pv.connect() as c:  # pool_size 1: the servers came back
        assert c.execute("SELECT count(*) FROM telemetry").fetchone() == (2,)
    assert "event=client_left_while_waiting" in pv.log_text()


def test_listeners_hear_notifications_from_every_shard(shards, pgvalve):
    # A trigger on each shard announces new readings, the way a dashboard learns of them: a
    # listener through pgvalve hears the readings of devices on either shard, once each.
    clear(shards)
    for c in shards:
        c.primary.psql("CREATE FUNCTION announce() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                       "PERFORM pg_notify('readings', NEW.device_id::text); RETURN NEW; END $$;"
                       "CREATE TRIGGER announce AFTER INSERT ON telemetry FOR EACH ROW "
                       "EXECUTE FUNCTION announce()", dbname=APP_DB)
    try:
        pv = pgvalve(**config(shards))
        devices = list(range(1, 9))
        assert {md5_mod(d) for d in devices} == {0, 1}
        with pv.connect() as listener, pv.connect() as writer:
            listener.execute("LISTEN readings")
            for d in devices:
                writer.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d,))
            got = drain_notifies(listener, len(devices), timeout=10)
            assert sorted(int(payload) for _, payload in got) == devices
            assert drain_notifies(listener, 1, timeout=0.5) == []  # none twice
            listener.execute("UNLISTEN readings")
            for d in (1, 2):
                writer.execute("INSERT INTO telemetry (device_id, value) VALUES (%s, 1)", (d,))
            assert drain_notifies(listener, 1, timeout=1) == []
    finally:
        for c in shards:
            c.primary.psql("DROP TRIGGER announce ON telemetry; DROP FUNCTION announce()",
                           dbname=APP_DB)


def test_a_reload_that_moves_buckets_leaves_no_client_on_the_old_map(shards, pgvalve):
    # The runbook of sharding.md: PAUSE, move the rows, RELOAD the new bucket_map, RESUME. A
    # client connected before the reload must not write by the old map afterwards.
    from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
    clear(shards)
    conf = config(shards, hash_="xxh3", key_type="auto", buckets=64,
                  bucket_map={"s0": "0-63", "s1": []})
    pv = pgvalve(users=APP_AND_OPS, **conf)
    admin = psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                            autocommit=True, prepare_threshold=None)
    idle, in_tx, waiting = pv.connect(), pv.connect(), pv.connect()
    idle.execute("INSERT INTO telemetry (device_id, value) VALUES (1, 0)")
    in_tx.autocommit = False
    in_tx.execute("INSERT INTO telemetry (device_id, value) VALUES (2, 0)")  # open on s0
    paused = threading.Thread(target=admin.execute, args=(f"PAUSE {APP_DB}",))
    paused.start()
    in_tx.commit()  # PAUSE returns once no transaction holds a server
    paused.join(10)
    assert not paused.is_alive()
    outcome = {}

    def insert_while_paused():
        try:
            waiting.execute("INSERT INTO telemetry (device_id, value) VALUES (3, 0)")
            outcome["waiting"] = "ran"
        except psycopg.OperationalError as e:  # FATAL, then closed: psycopg keeps the text
            outcome["waiting"] = str(e)
    t = threading.Thread(target=insert_while_paused)
    t.start()

    def waiting_for_pause():  # its request waits for the pause, routed by the old map
        cur = admin.execute("SHOW CLIENTS")
        cols = [d.name for d in cur.description]
        states = [dict(zip(cols, r))["state"] for r in cur.fetchall()]
        return "waiting_for_server" in states
    wait_until(waiting_for_pause, 10, message="the INSERT waits for RESUME")
    pv.config["databases"][APP_DB]["sharding"]["bucket_map"] = {"s0": [], "s1": "0-63"}
    pv.reload(pv.config)
    wait_until(lambda: "event=shard_map_changed" in pv.log_text(), 5, message="reload seen")
    t.join(10)
    # Not run: refused, never written to s0.
    assert "a reload changed this database's shards" in outcome["waiting"]
    admin.execute(f"RESUME {APP_DB}")
    for conn in (idle, in_tx):
        with pytest.raises(psycopg.OperationalError, match="a reload changed this database's"):
            conn.execute("INSERT INTO telemetry (device_id, value) VALUES (4, 0)")
            conn.commit()
    with pv.connect() as fresh:
        fresh.execute("INSERT INTO telemetry (device_id, value) VALUES (5, 0)")
    for conn in (idle, in_tx, waiting, admin):
        conn.close()
    assert sorted(rows_on(shards[0])) == [1, 2]
    assert rows_on(shards[1]) == [5]


def test_a_statement_too_long_to_parse_is_refused_unless_a_hint_places_it(shards, pgvalve):
    clear(shards)
    pv = pgvalve(**config(shards))
    rows = ", ".join(f"(1, {i})" for i in range(30_000))  # about 300 KiB
    sql = f"INSERT INTO telemetry (device_id, value) VALUES {rows}"
    with pv.connect() as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="longer than 256 KiB"):
            conn.execute(sql, prepare=False)
        conn.execute("/* pgvalve: device_id=1 */ " + sql, prepare=False)
    assert len(rows_on(shards[md5_mod(1)])) == 30_000
    assert rows_on(shards[1 - md5_mod(1)]) == []


def test_groups_distinct_and_min_max_over_shards_compare_values_not_their_text(shards, pgvalve):
    # numeric 1.5 on one shard and 1.50 on the other are one value; dates under DateStyle
    # 'SQL, DMY' do not order by their text, so min() and max() of them over shards are refused.
    for c in shards:
        c.primary.psql("DROP TABLE IF EXISTS amounts; "
                       "CREATE TABLE amounts (device_id bigint NOT NULL, amount numeric, d date); "
                       "GRANT ALL ON amounts TO app", dbname=APP_DB)
    shards[0].wait_replay()
    pv = pgvalve(**config(shards, tables=["telemetry", "amounts"]))
    a = next(d for d in range(1, 50) if md5_mod(d) == 0)
    b = next(d for d in range(1, 50) if md5_mod(d) == 1)
    with pv.connect(autocommit=True) as conn:
        for device, amount, day in [(a, "1.5", "2024-01-05"), (a, "1.5", "2024-01-20"),
                                    (b, "1.50", "2023-12-25"), (b, "1.50", "2024-09-13")]:
            conn.execute("INSERT INTO amounts (device_id, amount, d) VALUES (%s, %s::numeric, %s::date)",
                         (device, amount, day))
        shards[0].wait_replay()
        assert rows_on(shards[0], "SELECT amount::text FROM amounts") == ["1.5"] * 2
        assert rows_on(shards[1], "SELECT amount::text FROM amounts") == ["1.50"] * 2
        for protocol in (False, True):
            got = conn.execute("SELECT amount, count(*) FROM amounts GROUP BY amount",
                               prepare=protocol).fetchall()
            assert got == [(Decimal("1.5"), 4)], got
            got = conn.execute("SELECT DISTINCT amount FROM amounts", prepare=protocol).fetchall()
            assert got == [(Decimal("1.5"),)], got
        got = conn.execute("SELECT min(d), max(d) FROM amounts").fetchall()
        assert [tuple(str(v) for v in r) for r in got] == [("2023-12-25", "2024-09-13")], got
        conn.execute("SET DateStyle = 'SQL, DMY'")
        e = refused(conn, "SELECT min(d), max(d) FROM amounts")
        assert "DateStyle" in str(e), e
        refused(conn, "SELECT d, count(*) FROM amounts GROUP BY d")
        refused(conn, "SELECT DISTINCT d FROM amounts")
        conn.execute("SET DateStyle = ISO")
        got = conn.execute("SELECT d, count(*) FROM amounts GROUP BY d ORDER BY d").fetchall()
        assert [str(r[0]) for r in got] == ["2023-12-25", "2024-01-05", "2024-01-20",
                                            "2024-09-13"], got
        # One device_id: one shard, whatever the DateStyle.
        conn.execute("SET DateStyle = 'SQL, DMY'")
        got = conn.execute(f"SELECT min(d)::text FROM amounts WHERE device_id = {b}").fetchall()
        assert got == [("25/12/2023",)], got


def test_a_reload_that_reorders_shards_keeps_each_shards_statistics(shards, pgvalve):
    # Statistics are kept by shard index and named through the configuration: a new order used
    # to swap every shard's figures.
    import copy
    import urllib.request
    from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
    conf = config(shards, hash_="xxh3", key_type="auto", buckets=4,
                  bucket_map={"s0": "0-1", "s1": "2-3"})
    pv = pgvalve(users=APP_AND_OPS, stats={"slow_query_ms": 50}, **conf)

    def rows(command):
        with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                             autocommit=True, prepare_threshold=None) as a:
            cur = a.execute(command)
            cols = [d.name for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    with pv.connect() as c:
        for _ in range(3):
            c.execute("/* pgvalve: shard=s1 */ select pg_sleep(0.06) as on_s1", prepare=False)
    before = {r["shard"]: r["statements"] for r in rows("SHOW SHARDS")}
    assert before == {"s0": "0", "s1": "3"}
    cfg = copy.deepcopy(pv.config)
    cfg["databases"][APP_DB]["shards"].reverse()
    pv.reload(cfg)
    wait_until(lambda: [r["shard"] for r in rows("SHOW SHARDS")] == ["s1", "s0"], 10,
               message="reloaded")
    time.sleep(0.2)  # each worker remaps on its own thread
    assert {r["shard"]: r["statements"] for r in rows("SHOW SHARDS")} == before
    (q,) = [r for r in rows("SHOW QUERIES") if "on_s1" in r["query"]]
    assert q["shards"] == "s1", q
    assert {r["shard"] for r in rows("SHOW SLOW_QUERIES")} == {"s1"}
    with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/metrics", timeout=5) as r:
        lines = [line for line in r.read().decode().splitlines()
                 if line.startswith("pgvalve_queries_total{")]
    assert lines and all('shard="s1"' in line for line in lines), lines
