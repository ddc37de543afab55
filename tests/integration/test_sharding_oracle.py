"""The oracle: one generated telemetry data set is loaded into an unsharded PostgreSQL directly and
through pgvalve into four shards (xxh3, default bucket map; shard s0 answers reads from its
streaming replica). Then a battery of statements runs against both. Every answer through pgvalve
must equal the unsharded database's: statements on one shard, and statements scattered to every
shard whose answers pgvalve gathers (merge order, combined aggregates, DISTINCT, DISTINCT ON,
windows, subqueries and WITH by the key, LIMIT/OFFSET, literal and bound, simple and extended
protocol, named prepared statements). What cannot be combined correctly must be refused by rule
(0A000); nothing may be answered from a subset of the shards.

The data set has bigint and text device ids, NULL values, and one skewed device with many more
readings than the rest. Rows are placed through pgvalve with multi-row INSERTs (literal and
bound). Each row's shard is then checked directly against python3-xxhash."""

from __future__ import annotations

import math

import random
import struct
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
import xxhash

from pgcluster import APP_DB, PgCluster

SCHEMA = """
CREATE TABLE devices (device_id bigint PRIMARY KEY, type_id int, site text);
CREATE TABLE telemetry (device_id bigint NOT NULL, ts timestamptz NOT NULL, value float8,
                        note text);
CREATE TABLE device_events (device_id text NOT NULL, at timestamptz NOT NULL, kind text);
CREATE TABLE device_types (id int PRIMARY KEY, name text);
INSERT INTO device_types VALUES (1, 'thermometer'), (2, 'hygrometer'), (3, 'barometer');
GRANT ALL ON ALL TABLES IN SCHEMA public TO app;
"""
SHARDS = 4
BUCKETS = 1024
DEVICES = list(range(1, 121))
SKEWED = 7
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def shard_of(device_id) -> int:
    key = struct.pack("<q", device_id) if isinstance(device_id, int) else device_id.encode()
    return (xxhash.xxh3_64_intdigest(key) % BUCKETS) // (BUCKETS // SHARDS)


def dataset():
    rnd = random.Random(20261202)
    devices = [(d, d % 3 + 1, f"site-{d % 5}") for d in DEVICES]
    readings = []
    for d in DEVICES:
        for i in range(600 if d == SKEWED else rnd.randint(1, 25)):
            value = None if rnd.random() < 0.1 else round(rnd.uniform(-20, 40), 2)
            note = None if rnd.random() < 0.5 else rnd.choice(["ok", "warn", "Check", "éclair"])
            readings.append((d, T0 + timedelta(minutes=7 * i + d), value, note))
    events = [(f"dev-{d}", T0 + timedelta(hours=h), rnd.choice(["boot", "alarm"]))
              for d in DEVICES[:40] for h in range(d % 4 + 1)]
    return devices, readings, events


@pytest.fixture(scope="module")
def oracle(request, cluster):
    others = [PgCluster(replicas=0) for _ in range(SHARDS - 1)]
    for c in others:
        request.addfinalizer(c.teardown)
        c.start()
    shards = [cluster] + others
    for c in shards:
        c.primary.psql("DROP TABLE IF EXISTS devices, telemetry, device_events, device_types, "
                       "pp_parent", dbname=APP_DB)
        c.primary.psql(SCHEMA, dbname=APP_DB)
        c.primary.psql("GRANT pg_monitor TO app")
    # The unsharded database: another database on one of the servers.
    single = others[-1].primary
    single.psql("DROP DATABASE IF EXISTS oracle")
    single.psql("CREATE DATABASE oracle OWNER app")
    single.psql(SCHEMA, dbname="oracle")
    devices, readings, events = dataset()
    with single.connect(dbname="oracle") as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO devices VALUES (%s, %s, %s)", devices)
            cur.executemany("INSERT INTO telemetry VALUES (%s, %s, %s, %s)", readings)
            cur.executemany("INSERT INTO device_events VALUES (%s, %s, %s)", events)
    return shards, single, (devices, readings, events)


def pgvalve_config(shards):
    return {
        "databases": {APP_DB: {
            "shards": [
                {"name": f"s{i}", "primary": f"127.0.0.1:{c.primary.port}",
                 "replicas": [f"127.0.0.1:{r.port}" for r in c.replicas]}
                for i, c in enumerate(shards)],
            "sharding": {"key": "device_id", "hash": "xxh3", "buckets": BUCKETS,
                         "tables": ["devices", "telemetry", "device_events"],
                         "reference_tables": ["device_types"]},
        }},
        "health": {"interval_ms": 100, "timeout_ms": 1000, "failures_before_down": 2},
    }


def load_through(pv, data):
    devices, readings, events = data
    by_device = {}
    for r in readings:
        by_device.setdefault(r[0], []).append(r)
    with pv.connect() as conn:
        for d, t, s in devices:
            conn.execute("INSERT INTO devices (device_id, type_id, site) VALUES (%s, %s, %s)",
                         (d, t, s))
        for i, (d, rows) in enumerate(sorted(by_device.items())):
            if i % 2:  # one literal multi-row INSERT per device, simple protocol
                values = ", ".join(
                    "({}, '{}', {}, {})".format(
                        d, ts.isoformat(), "NULL" if v is None else repr(v),
                        "NULL" if n is None else "'" + n.replace("'", "''") + "'")
                    for d, ts, v, n in rows)
                conn.execute(f"INSERT INTO telemetry (device_id, ts, value, note) VALUES {values}",
                             prepare=False)
            else:  # bound: $1..$4n
                params = [x for row in rows for x in row]
                slots = ", ".join(f"(%s, %s, %s, %s)" for _ in rows)
                conn.execute(f"INSERT INTO telemetry (device_id, ts, value, note) VALUES {slots}",
                             params)
        for e in events:
            conn.execute("INSERT INTO device_events (device_id, at, kind) VALUES (%s, %s, %s)", e)


def battery(data):
    """(sql, params, ordered) triples: single-shard statements that must match the oracle."""
    devices, readings, _ = data
    rnd = random.Random(7)
    picks = rnd.sample(DEVICES, 24) + [SKEWED]
    q = []
    for d in picks:
        q += [
            ("SELECT ts, value, note FROM telemetry WHERE device_id = %s ORDER BY ts", (d,), True),
            (f"SELECT count(*), count(value), sum(value), min(value), max(value), avg(value) "
             f"FROM telemetry WHERE device_id = {d}", None, True),
            ("SELECT note, count(*) FROM telemetry WHERE device_id = %s GROUP BY note "
             "ORDER BY note NULLS FIRST", (d,), True),
        ]
    for d in picks[:12]:
        lo = T0 + timedelta(hours=1)
        q += [
            ("SELECT ts, value FROM telemetry WHERE device_id = %s AND ts >= %s AND ts < %s "
             "ORDER BY ts DESC LIMIT 5", (d, lo, lo + timedelta(hours=2)), True),
            (f"SELECT date_trunc('hour', ts) AS h, count(*), max(value) FROM telemetry t "
             f"WHERE t.device_id = '{d}'::bigint GROUP BY h ORDER BY h", None, True),
            ("SELECT d.site, dt.name, count(*) FROM telemetry t JOIN devices d USING (device_id) "
             "JOIN device_types dt ON dt.id = d.type_id WHERE t.device_id = %s GROUP BY 1, 2",
             (d,), False),
            (f"SELECT count(*) FROM telemetry WHERE device_id = {d} AND value IS NULL", None, True),
            (f"SELECT * FROM devices WHERE device_id = {d}", None, True),
            ("SELECT value FROM telemetry WHERE device_id = %s AND note = %s ORDER BY ts",
             (d, "éclair"), True),
            # WITH queries that keep each device's rows apart, filtered by one device.
            ("WITH g AS (SELECT device_id, count(*) AS n, max(ts) AS last FROM telemetry "
             "GROUP BY device_id) SELECT * FROM g WHERE device_id = %s", (d,), True),
            ("WITH r AS (SELECT device_id, ts, rank() OVER (PARTITION BY device_id ORDER BY ts "
             "DESC) AS n FROM telemetry) SELECT ts FROM r WHERE device_id = %s AND n <= 3 "
             "ORDER BY ts", (d,), True),
        ]
    # IN lists whose devices share a shard.
    by_shard = {}
    for d in DEVICES:
        by_shard.setdefault(shard_of(d), []).append(d)
    for s, ds in sorted(by_shard.items()):
        ids = ds[:5]
        q.append((f"SELECT device_id, count(*) FROM telemetry WHERE device_id IN "
                  f"({', '.join(map(str, ids))}) GROUP BY 1 ORDER BY 1", None, True))
        q.append(("SELECT device_id, max(ts) FROM telemetry WHERE device_id IN (%s, %s) "
                  "GROUP BY 1 ORDER BY 1", (ids[0], ids[1]), True))
    # Text ids, and reference tables alone.
    for n in (1, 5, 17, 33):
        q.append(("SELECT kind, count(*) FROM device_events WHERE device_id = %s GROUP BY kind "
                  "ORDER BY kind", (f"dev-{n}",), True))
    q += [("SELECT * FROM device_types ORDER BY id", None, True),
          ("SELECT name FROM device_types WHERE id = %s", (2,), True),
          ("SELECT 1 + 1, 'x'::text", None, True)]
    return q


def across(data):
    """(sql, params, ordered) statements that need several shards: scattered to them, their
    answers gathered; each must match the oracle exactly."""
    lo = T0 + timedelta(hours=2)
    return [
        ("SELECT count(*) FROM telemetry", None, True),
        ("SELECT count(*), count(value), count(note), min(value), max(value), min(ts), max(ts) "
         "FROM telemetry", None, True),
        ("SELECT sum(value::numeric), sum(device_id) FROM telemetry", None, True),
        ("SELECT device_id, count(*) FROM telemetry GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
         None, True),
        ("SELECT note, count(*), max(value), min(ts) FROM telemetry GROUP BY note "
         "ORDER BY note NULLS FIRST", None, True),
        ("SELECT note, count(*) FROM telemetry GROUP BY note ORDER BY note DESC", None, True),
        ("SELECT note, count(*) FROM telemetry GROUP BY note ORDER BY 2, 1 LIMIT 2 OFFSET 1",
         None, True),
        ("SELECT max(ts) FROM telemetry WHERE value > 10", None, True),
        ("SELECT device_id, ts, value FROM telemetry ORDER BY ts, device_id LIMIT 3", None, True),
        ("SELECT device_id, ts FROM telemetry ORDER BY ts DESC, device_id LIMIT 4 OFFSET 10",
         None, True),
        ("SELECT device_id, ts, value FROM telemetry ORDER BY value DESC NULLS LAST, device_id, ts "
         "LIMIT 6", None, True),
        ("SELECT device_id, ts, value FROM telemetry ORDER BY value NULLS FIRST, device_id, ts "
         "FETCH FIRST 8 ROWS ONLY", None, True),
        ("SELECT device_id, ts FROM telemetry WHERE value > %s ORDER BY ts, device_id "
         "LIMIT %s OFFSET %s", (30, 5, 2), True),
        ("SELECT device_id, ts FROM telemetry ORDER BY ts, device_id LIMIT ALL OFFSET %s",
         (2500,), True),
        ("SELECT DISTINCT note FROM telemetry ORDER BY 1", None, True),
        ("SELECT DISTINCT note FROM telemetry", None, False),
        ("SELECT DISTINCT site FROM devices ORDER BY site DESC LIMIT 2", None, True),
        ("SELECT count(*) FROM devices d JOIN device_types dt ON dt.id = d.type_id", None, True),
        ("SELECT dt.name, count(*) FROM devices d JOIN device_types dt ON dt.id = d.type_id "
         "GROUP BY 1 ORDER BY 1", None, True),
        ("SELECT count(*) FROM telemetry t JOIN devices d USING (device_id) "
         "WHERE d.site = 'site-1'", None, True),
        ("SELECT count(*) FROM device_events", None, True),
        ("SELECT kind, count(*) FROM device_events GROUP BY kind ORDER BY kind", None, True),
        ("SELECT device_id FROM device_events ORDER BY device_id LIMIT 5", None, True),
        ("SELECT count(*) FROM telemetry WHERE ts < %s", (lo,), True),
        ("SELECT device_id, count(*) FROM telemetry WHERE device_id IN (1, 2, 3, 4, 5, 6, 7, 8) "
         "GROUP BY 1 ORDER BY 1", None, True),
        ("SELECT count(DISTINCT device_id) FROM telemetry", None, True),
        ("SELECT * FROM telemetry WHERE value IS NULL AND note IS NOT NULL "
         "ORDER BY device_id, ts", None, True),
        ("SELECT device_id, ts FROM telemetry WHERE note = 'éclair'", None, False),
        ("SELECT type_id, count(*), min(site), max(site) FROM devices GROUP BY type_id "
         "ORDER BY type_id", None, True),
        ("SELECT date_trunc('day', ts) AS day, count(*), min(value) FROM telemetry "
         "GROUP BY 1 ORDER BY 1", None, True),
        # Groups by the key are whole on their shard: any aggregate, expressions over them,
        # HAVING, each shard's LIMIT of rows.
        ("SELECT device_id, count(*), max(value) - min(value), round(avg(value)::numeric, 6) "
         "FROM telemetry GROUP BY device_id HAVING count(*) > 100 ORDER BY 2 DESC, 1 LIMIT 7",
         None, True),
        ("SELECT device_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY value), "
         "count(DISTINCT note) FROM telemetry GROUP BY 1 ORDER BY 1", None, True),
        ("SELECT t.device_id, d.site, string_agg(t.note, ',' ORDER BY t.ts, t.note) "
         "FROM telemetry t JOIN devices d USING (device_id) WHERE t.ts < %s GROUP BY 1, 2 "
         "ORDER BY 1", (lo,), True),
        ("SELECT count(*) FROM telemetry GROUP BY device_id", None, False),
        # DISTINCT ON the key: each group is one device's rows, whole on its shard. The latest
        # reading of every device, of some, and a page of them.
        ("SELECT DISTINCT ON (device_id) device_id, ts, value FROM telemetry "
         "ORDER BY device_id, ts DESC", None, True),
        ("SELECT DISTINCT ON (device_id) device_id, ts, value, note FROM telemetry "
         "WHERE value IS NOT NULL AND ts < %s ORDER BY device_id, value DESC, ts", (lo,), True),
        ("SELECT DISTINCT ON (1) device_id, ts FROM telemetry ORDER BY 1, 2 DESC "
         "LIMIT %s OFFSET %s", (5, 7), True),
        ("SELECT DISTINCT ON (t.device_id, t.note) t.device_id, t.note, t.ts, d.site "
         "FROM telemetry t JOIN devices d USING (device_id) "
         "ORDER BY t.device_id, t.note NULLS FIRST, t.ts DESC", None, True),
        # Windows partitioned by the key: each partition is whole on its shard. The change
        # between readings, and running figures per device.
        ("SELECT device_id, ts, value - lag(value) OVER (PARTITION BY device_id ORDER BY ts) "
         "AS delta FROM telemetry ORDER BY device_id, ts", None, True),
        ("SELECT device_id, ts, row_number() OVER w, sum(value) OVER (w ORDER BY ts) "
         "FROM telemetry WINDOW w AS (PARTITION BY device_id) ORDER BY 1, 2 "
         "LIMIT %s OFFSET %s", (20, 300), True),
        # Subqueries that keep each device's rows apart, read as a sharded table: the last
        # three readings of every device, the devices whose latest reading is high, each
        # device's last reading time with its site.
        ("SELECT device_id, ts, value FROM (SELECT device_id, ts, value, row_number() OVER "
         "(PARTITION BY device_id ORDER BY ts DESC) AS n FROM telemetry) r WHERE n <= 3 "
         "ORDER BY device_id, ts DESC", None, True),
        ("SELECT count(*), max(value), min(device_id) FROM (SELECT DISTINCT ON (device_id) "
         "device_id, value FROM telemetry ORDER BY device_id, ts DESC) latest "
         "WHERE value > %s", (30,), True),
        ("SELECT l.device_id, l.last, d.site FROM (SELECT device_id, max(ts) AS last "
         "FROM telemetry GROUP BY device_id) l JOIN devices d USING (device_id) "
         "ORDER BY l.last DESC, 1 LIMIT 10", None, True),
        ("WITH latest AS (SELECT DISTINCT ON (device_id) device_id, ts, value FROM telemetry "
         "ORDER BY device_id, ts DESC) SELECT l.device_id, l.value, d.site FROM latest l "
         "JOIN devices d USING (device_id) WHERE l.value > %s ORDER BY l.value DESC, 1",
         (25,), True),
        ("WITH m AS (SELECT device_id, avg(value::numeric) AS mean FROM telemetry "
         "GROUP BY device_id) SELECT count(*), avg(mean), max(mean) FROM m", None, True),
        ("SELECT device_id, avg(value) FROM telemetry GROUP BY device_id "
         "ORDER BY 2 DESC NULLS LAST, 1 LIMIT 5 OFFSET 3", None, True),
        ("SELECT device_id, ts FROM telemetry WHERE value > 1000", None, True),  # no rows
        ("SELECT count(*) FROM telemetry WHERE value > 1000", None, True),
        ("SELECT max(value) FROM telemetry WHERE value > 1000", None, True),  # NULL
        # Averages: numeric for bigint, integer and numeric arguments (exact, PostgreSQL's
        # scale), double precision for itself (exact here: whole numbers add up exactly).
        ("SELECT avg(value::numeric), avg(device_id), avg(device_id::int4), "
         "avg(device_id::float8) FROM telemetry", None, True),
        ("SELECT note, avg(value::numeric) AS mean, count(*) FROM telemetry GROUP BY note "
         "ORDER BY mean NULLS FIRST, note", None, True),
        ("SELECT device_id %% 4 AS k, avg(extract(minute FROM ts)) FROM telemetry "
         "WHERE value > %s GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3", (-5,), True),
        ("SELECT avg(value::numeric) FROM telemetry WHERE value > 1000", None, True),  # NULL
        ("SELECT avg(value::numeric) FILTER (WHERE note = 'ok'), bool_and(value > -20), "
         "bool_or(value > 39), every(note IS NOT NULL), bit_and(device_id), bit_or(device_id), "
         "bit_xor(device_id) FROM telemetry", None, True),
        ("SELECT note, bit_or(device_id::int4), bool_or(value < 0), "
         "avg(value::numeric) FILTER (WHERE value > 0) FROM telemetry GROUP BY note "
         "ORDER BY note NULLS FIRST", None, True),
    ]


# Variances and standard deviations of double precision: combined as PostgreSQL combines the
# parts of a parallel plan, so their last digits may differ from one server's serial answer.
SPREADS = [
    ("SELECT stddev(value), stddev_samp(value), stddev_pop(value), variance(value), "
     "var_samp(value), var_pop(value) FROM telemetry", None),
    ("SELECT note, stddev(value) AS spread, var_pop(value) FILTER (WHERE value > 0), "
     "avg(value::numeric), count(*) FROM telemetry GROUP BY note ORDER BY note NULLS FIRST", None),
    ("SELECT device_id %% 3 AS k, variance(value) FROM telemetry WHERE ts >= %s "
     "GROUP BY 1 ORDER BY 2 DESC NULLS LAST, 1", (T0 + timedelta(hours=3),)),
    ("SELECT stddev(value) FROM telemetry WHERE value > 1000", None),  # NULL
]


def close_enough(got, want) -> bool:
    """Rows equal, floats to 1e-9 relative."""
    if len(got) != len(want):
        return False
    for g_row, w_row in zip(got, want):
        for g, w in zip(g_row, w_row):
            if isinstance(w, float) and isinstance(g, float):
                if not math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-12):
                    return False
            elif repr(g) != repr(w):
                return False
    return True


# Statements over several shards whose answers pgvalve cannot combine correctly: refused by
# rule (0A000), never answered from a subset of the shards.
REFUSED = [
    "SELECT avg(DISTINCT value) FROM telemetry",
    "SELECT avg(value::real) FROM telemetry",
    "SELECT stddev(device_id) FROM telemetry",  # numeric: PostgreSQL's digits are exact
    "SELECT variance(value::real) FROM telemetry",
    "SELECT bit_and(device_id::bit(64)) FROM telemetry",
    "SELECT device_id, ts FROM telemetry ORDER BY value LIMIT 3",
    "SELECT string_agg(note, ',') FROM telemetry",
    "SELECT count(*) FROM (SELECT device_id FROM telemetry LIMIT 10) t",
    "SELECT DISTINCT ON (note) note, device_id FROM telemetry ORDER BY note, device_id",
    "SELECT device_id, rank() OVER (ORDER BY value) FROM telemetry",
    "SELECT * FROM (SELECT device_id, ts FROM telemetry ORDER BY ts LIMIT 10) r",
    "WITH n AS (SELECT note, count(*) AS c FROM telemetry GROUP BY note) SELECT * FROM n",
    # A device's rows of a WITH query that mixes devices: not that device's shard alone.
    "WITH top AS (SELECT device_id, ts, value FROM telemetry ORDER BY value DESC NULLS LAST, ts "
    "LIMIT 50) SELECT * FROM top WHERE device_id = 7",
    "WITH r AS (SELECT device_id, ts, rank() OVER (ORDER BY value) FROM telemetry) "
    "SELECT * FROM r WHERE device_id = 7",
    "SELECT count(DISTINCT note) FROM telemetry",
    "DELETE FROM telemetry WHERE value < -100",
]


def rows(conn, sql, params, ordered):
    cur = conn.execute(sql, params, prepare=False) if params is None else conn.execute(sql, params)
    got = cur.fetchall()
    return got if ordered else sorted(got, key=repr)


def test_every_answer_matches_the_unsharded_database_or_is_refused(oracle, pgvalve):
    shards, single, data = oracle
    pv = pgvalve(**pgvalve_config(shards))
    load_through(pv, data)
    shards[0].wait_replay()

    # Every row sits on the shard the map names, and all of them arrived.
    devices, readings, events = data
    placed = {"telemetry": 0, "devices": 0, "device_events": 0}
    for i, c in enumerate(shards):
        with c.primary.connect(dbname=APP_DB) as direct:
            for table in placed:
                ids = [r[0] for r in direct.execute(f"SELECT device_id FROM {table}").fetchall()]
                assert all(shard_of(d) == i for d in ids), f"{table}: a row on s{i} belongs elsewhere"
                placed[table] += len(ids)
    assert placed == {"telemetry": len(readings), "devices": len(devices),
                      "device_events": len(events)}
    assert len({shard_of(d) for d in DEVICES}) == SHARDS  # every shard holds devices

    queries = battery(data)
    assert len(queries) >= 100
    with pv.connect() as via, single.connect(dbname="oracle") as direct:
        for sql, params, ordered in queries:
            want = rows(direct, sql, params, ordered)
            got = rows(via, sql, params, ordered)
            # repr: a numeric's scale too (Decimal("2.5") == Decimal("2.50")).
            assert repr(got) == repr(want), \
                f"{sql} {params}: pgvalve answered {got[:3]}..., PostgreSQL {want[:3]}..."
        scattered = across(data)
        for sql, params, ordered in scattered:
            want = rows(direct, sql, params, ordered)
            got = rows(via, sql, params, ordered)
            # repr: a numeric's scale too (Decimal("2.5") == Decimal("2.50")).
            assert repr(got) == repr(want), \
                f"{sql} {params}: pgvalve answered {got[:3]}..., PostgreSQL {want[:3]}..."
            # The same as a named prepared statement, executed twice.
            for _ in range(2):
                got = via.execute(sql, params, prepare=True).fetchall()
                got = got if ordered else sorted(got, key=repr)
                assert repr(got) == repr(want), f"prepared: {sql}"
        for sql, params in SPREADS:
            want = rows(direct, sql, params, True)
            assert want and (any(v is not None for v in want[0]) or "1000" in sql), sql
            for binary in (False, True):
                got = via.execute(sql, params, binary=binary).fetchall()
                assert close_enough(got, want), \
                    f"{sql}: pgvalve answered {got[:3]}..., PostgreSQL {want[:3]}..."
                assert [d.name for d in via.execute(sql, params).description] == \
                    [d.name for d in direct.execute(sql, params).description]
        for sql in REFUSED:
            with pytest.raises(psycopg.Error) as e:
                via.execute(sql)
            assert e.value.sqlstate == "0A000" and str(e.value).startswith("pgvalve:"), sql
        # The connection still answers after the refusals.
        assert via.execute("SELECT count(*) FROM telemetry WHERE device_id = %s",
                           (SKEWED,)).fetchone() == (600,)
    # Nothing was refused that the oracle checked, and nothing was deleted.
    with single.connect(dbname="oracle") as direct:
        assert direct.execute("SELECT count(*) FROM telemetry").fetchone() == (len(readings),)
