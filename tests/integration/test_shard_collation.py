"""Text over several shards in the database's collation, against real PostgreSQL: rows the
shards sorted by a text column merge in the order one database gives (PostgreSQL itself sorts the
same values for the expected answer), as they come, in a libc and an ICU collation; min() and
max() of text agree; COLLATE "C" orders by the bytes; shards whose collations differ are refused
with the reason instead of answered in another order.

Both PostgreSQL and pgvalve load en_US.UTF-8 from this host (tests/run builds it)."""

from __future__ import annotations

import re
import subprocess
import urllib.request

import psycopg
import pytest

from itutil import SANITIZED, settle_rss
from pgcluster import APP_USER, PgCluster, wait_until

ENGLISH = "readings_en"  # en_US.UTF-8 on both shards
ICU = "readings_icu"  # ICU's Swedish collation on both (ä after z)
MIXED = "readings_mixed"  # en_US.UTF-8 on s0, C on s1

# Words whose en_US order differs from their bytes': capitals, accents, punctuation, digits.
NAMES = ["apple", "Apple", "APPLE", "banana", "Banana", "a-b", "ab", "a b", "\u00e9clair",
         "eclair", "Eclair", "Zebra", "zebra", "_under", "under", "10", "9", "\u00df", "ss",
         "\u00c4rger", "arger", "zz", "\u00d8re", "ore", "co-op", "coop", "Co-op", "x", "X1", "x1",
         "\u00e4pple", "\u00e5l", "\u00f6l", "z\u00e4"]

pytestmark = pytest.mark.skipif(
    "en_us.utf8" not in subprocess.run(["locale", "-a"], capture_output=True,
                                       text=True).stdout.lower(),
    reason="en_US.UTF-8 is not installed on this host (tests/run builds it)")


def create(node, db, options):
    node.psql(f"DROP DATABASE IF EXISTS {db}")
    node.psql(f"CREATE DATABASE {db} OWNER {APP_USER} TEMPLATE template0 ENCODING 'UTF8' {options}")
    node.psql("CREATE TABLE devices (device_id bigint NOT NULL, name text, code char(6), "
              "payload text)", dbname=db)
    node.psql(f"GRANT ALL ON devices TO {APP_USER}", dbname=db)


@pytest.fixture(scope="module")
def shards(request, cluster):
    s1 = PgCluster(replicas=0)
    request.addfinalizer(s1.teardown)
    s1.start()

    def drop():  # the session's cluster goes on to other modules
        for db in (ENGLISH, ICU, MIXED):
            cluster.primary.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    request.addfinalizer(drop)
    english = "LC_COLLATE 'en_US.UTF-8' LC_CTYPE 'en_US.UTF-8'"
    for c in (cluster, s1):
        create(c.primary, ENGLISH, english)
        create(c.primary, ICU, "LOCALE_PROVIDER icu ICU_LOCALE 'sv'")
    create(cluster.primary, MIXED, english)
    create(s1.primary, MIXED, "LC_COLLATE 'C' LC_CTYPE 'C'")
    cluster.wait_replay()
    return [cluster, s1]


def config(shards):
    s0, s1 = shards
    database = {
        "shards": [{"name": "s0", "primary": f"127.0.0.1:{s0.primary.port}"},
                   {"name": "s1", "primary": f"127.0.0.1:{s1.primary.port}"}],
        "sharding": {"key": "device_id", "hash": "md5_mod", "tables": ["devices"]},
    }
    return {
        "databases": {db: dict(database) for db in (ENGLISH, ICU, MIXED)},
        "health": {"interval_ms": 100, "timeout_ms": 1000, "failures_before_down": 2},
    }


def start(pgvalve, shards):
    pv = pgvalve(**config(shards))
    # The health checks read each database's collation from its servers.
    wait_until(lambda: all(any("event=text_order" in line and f"database={db}" in line
                               for line in pv.log_text().splitlines())
                           for db in (ENGLISH, ICU, MIXED)),
               5, message="the databases' collations in the log")
    return pv


def postgres_order(node, values, sql_type="text", db=ENGLISH):
    """PostgreSQL's own order of `values` in database `db`: the oracle."""
    with node.connect(dbname=db) as conn:
        return [r[0] for r in conn.execute(
            f"SELECT x FROM unnest(%s::{sql_type}[]) x ORDER BY x", (values,)).fetchall()]


def refused(conn, sql) -> str:
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql)
    assert e.value.sqlstate == "0A000", e.value
    assert str(e.value).startswith("pgvalve:"), e.value
    return str(e.value)


def test_text_sorted_on_each_shard_merges_in_the_databases_collation(shards, pgvalve):
    for c in shards:
        c.primary.psql("TRUNCATE devices", dbname=ENGLISH)
    pv = start(pgvalve, shards)
    want = postgres_order(shards[0].primary, NAMES)
    assert want != sorted(NAMES), "the words must order differently by their bytes"
    with pv.connect(dbname=ENGLISH) as conn:
        for i, name in enumerate(NAMES):
            conn.execute("INSERT INTO devices (device_id, name, code) VALUES (%s, %s, %s)",
                         (i, name, name[:3]))
        on = []
        for c in shards:
            with c.primary.connect(dbname=ENGLISH) as direct:
                on.append(direct.execute("SELECT count(*) FROM devices").fetchone()[0])
        assert min(on) > 0, f"every shard holds some of the rows: {on}"

        got = [r[0] for r in conn.execute("SELECT name FROM devices ORDER BY name").fetchall()]
        assert got == want
        got = [r[0] for r in conn.execute(
            "SELECT name FROM devices ORDER BY name DESC").fetchall()]
        assert got == want[::-1]
        # Through the extended protocol, prepared and in binary, with LIMIT and OFFSET.
        for binary in (False, True):
            got = [r[0] for r in conn.execute(
                "SELECT name FROM devices WHERE device_id >= %s ORDER BY name LIMIT 10 OFFSET 3",
                (0,), prepare=True, binary=binary).fetchall()]
            assert got == want[3:13]
        # COLLATE "C": the bytes' order, whatever the database's.
        got = [r[0] for r in conn.execute(
            'SELECT name FROM devices ORDER BY name COLLATE "C"').fetchall()]
        assert got == sorted(NAMES, key=lambda s: s.encode())
        assert conn.execute("SELECT min(name), max(name) FROM devices").fetchone() == \
            (want[0], want[-1])
        by_bytes = sorted(NAMES, key=lambda s: s.encode())
        assert conn.execute('SELECT min(name COLLATE "C"), max(name COLLATE "C") FROM devices'
                            ).fetchone() == (by_bytes[0], by_bytes[-1])
        # char(6), grouped and ordered: held, combined, then sorted in the same collation.
        codes = [n[:3] for n in NAMES]
        want_codes = postgres_order(shards[0].primary, sorted(set(codes)), "char(6)")
        got = conn.execute("SELECT code, count(*) FROM devices GROUP BY code ORDER BY code"
                           ).fetchall()
        assert [r[0] for r in got] == want_codes
        assert {r[0].rstrip(): r[1] for r in got} == {c: codes.count(c) for c in set(codes)}


def test_a_text_sort_larger_than_pgvalve_holds_streams_in_order(shards, pgvalve):
    """About 20 MiB sorted by a text column, more than pgvalve holds (16 MiB): it streams."""
    per_shard = 10000
    for i, c in enumerate(shards):
        c.primary.psql("TRUNCATE devices", dbname=ENGLISH)
        # Mixed case and punctuation so that en_US and byte order disagree; device_ids of this
        # shard's own (md5_mod does not matter to a read of every shard).
        c.primary.psql(
            "INSERT INTO devices (device_id, name, payload) "
            f"SELECT 2 * g + {i}, CASE WHEN g % 3 = 0 THEN upper(m) WHEN g % 3 = 1 THEN m "
            "ELSE '-' || m END, repeat('p', 1000) "
            f"FROM generate_series(1, {per_shard}) g, LATERAL md5((2 * g + {i})::text) m",
            dbname=ENGLISH)
    names = []
    for c in shards:
        with c.primary.connect(dbname=ENGLISH) as conn:
            names += [r[0] for r in conn.execute("SELECT name FROM devices").fetchall()]
    want = postgres_order(shards[0].primary, names)
    assert want != sorted(names)
    pv = start(pgvalve, shards)
    with pv.connect(dbname=ENGLISH) as conn:
        conn.execute("SELECT 1")
        base = settle_rss(pv.pid)
        got = conn.execute("SELECT name, payload FROM devices ORDER BY name").fetchall()
        assert [r[0] for r in got] == want
        assert all(len(r[1]) == 1000 for r in got)
        grown = settle_rss(pv.pid) - base
    if not SANITIZED:
        assert grown < 8 << 20, f"pgvalve grew by {grown >> 10} KiB merging a 20 MiB text sort"


def test_a_column_with_a_collation_of_its_own_is_an_error_not_a_wrong_order(shards, pgvalve):
    """`name text COLLATE "C"` in an en_US.UTF-8 database: the shards sort it by the bytes,
    which pgvalve's merge would misplace; it says so, and COLLATE "C" in the ORDER BY works."""
    for c in shards:
        c.primary.psql('DROP TABLE IF EXISTS tagged; CREATE TABLE tagged '
                       '(device_id bigint, name text COLLATE "C")', dbname=ENGLISH)
        c.primary.psql(f"GRANT ALL ON tagged TO {APP_USER}", dbname=ENGLISH)
    cfg = config(shards)
    cfg["databases"][ENGLISH]["sharding"] = dict(cfg["databases"][ENGLISH]["sharding"],
                                                 tables=["devices", "tagged"])
    pv = pgvalve(**cfg)
    wait_until(lambda: "event=text_order" in pv.log_text(), 5, message="collations read")
    words = ["Apple", "apple", "Banana", "banana", "cherry", "Cherry"]
    with pv.connect(dbname=ENGLISH) as conn:
        for i, w in enumerate(words):
            conn.execute("INSERT INTO tagged (device_id, name) VALUES (%s, %s)",
                         (1 if i < 4 else 2, w))
        message = refused(conn, "SELECT name FROM tagged ORDER BY name")
        assert "does not reproduce" in message and "COLLATE" in message, message
        got = [r[0] for r in conn.execute(
            'SELECT name FROM tagged ORDER BY name COLLATE "C"').fetchall()]
        assert got == sorted(words)


def test_an_icu_collation_is_followed_too(shards, pgvalve):
    for c in shards:
        c.primary.psql("TRUNCATE devices", dbname=ICU)
    pv = start(pgvalve, shards)
    want = postgres_order(shards[0].primary, NAMES, db=ICU)
    assert want != postgres_order(shards[0].primary, NAMES), "Swedish is not English"
    with pv.connect(dbname=ICU) as conn:
        for i, name in enumerate(NAMES):
            conn.execute("INSERT INTO devices (device_id, name) VALUES (%s, %s)", (i, name))
        got = [r[0] for r in conn.execute("SELECT name FROM devices ORDER BY name").fetchall()]
        assert got == want
        got = [r[0] for r in conn.execute(
            "SELECT name FROM devices WHERE device_id >= %s ORDER BY name DESC LIMIT 5",
            (0,), prepare=True, binary=True).fetchall()]
        assert got == want[::-1][:5]
        assert conn.execute("SELECT min(name), max(name) FROM devices").fetchone() == \
            (want[0], want[-1])


def test_shards_with_different_collations_are_refused_with_the_reason(shards, pgvalve):
    pv = start(pgvalve, shards)
    for c in shards:
        c.primary.psql("TRUNCATE devices", dbname=MIXED)
    with pv.connect(dbname=MIXED) as conn:
        for i, name in enumerate(NAMES[:8]):
            conn.execute("INSERT INTO devices (device_id, name) VALUES (%s, %s)", (i, name))
        message = refused(conn, "SELECT name FROM devices ORDER BY name")
        assert "different collations" in message, message
        assert 'COLLATE "C"' in message, message
        assert "min() and max() of text" in refused(conn, "SELECT max(name) FROM devices")
        # What needs no collation still works.
        got = [r[0] for r in conn.execute(
            'SELECT name FROM devices ORDER BY name COLLATE "C"').fetchall()]
        assert got == sorted(NAMES[:8], key=lambda s: s.encode())
        got = [r[0] for r in conn.execute(
            "SELECT device_id FROM devices ORDER BY device_id").fetchall()]
        assert got == list(range(8))
        assert conn.execute('SELECT min(name COLLATE "C") FROM devices').fetchone() == \
            (min(NAMES[:8], key=lambda s: s.encode()),)
    log = pv.log_text()
    assert "event=text_order" in log and "different collations" in log


def test_show_shards_says_which_collation_text_follows(shards, pgvalve):
    from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
    cfg = config(shards)
    pv = pgvalve(users=APP_AND_OPS, **cfg)
    with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                         autocommit=True, prepare_threshold=None) as a:
        def collations():
            cur = a.execute("SHOW SHARDS")
            cols = [d.name for d in cur.description]
            return {(r[cols.index("database")], r[cols.index("shard")]): r[cols.index("collation")]
                    for r in cur.fetchall()}
        wait_until(lambda: all(collations().values()), 5, message="every collation read")
        got = collations()
    assert got[(ENGLISH, "s0")] == got[(ENGLISH, "s1")] == "libc en_US.UTF-8"
    assert got[(ICU, "s1")] == "icu sv"
    assert got[(MIXED, "s0")] == "libc en_US.UTF-8 / C (not followed)"
    # The gauge PgvalveTextOrderNotFollowed watches.
    with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    followed = dict(re.findall(r'^pgvalve_text_order_followed\{database="([^"]+)"\} (\S+)$',
                               metrics, re.M))
    assert followed == {ENGLISH: "1", ICU: "1", MIXED: "0"}, followed
