"""A client whose text pgvalve cannot read as PostgreSQL does: with standard_conforming_strings
off a backslash in '' escapes a quote, and in SJIS (BIG5, GBK, ...) the second byte of a
character may be 0x5C, a backslash to a reader of bytes. What pgvalve takes for the inside of a
string may then run as SQL, so it cannot follow what such a client's statements do: each is
checked afterwards as a DO block is (the server's settings are reset before another client uses
it, state that pins keeps it), reads stay on the primary, and over shards only plain words run
(docs/pooling.md)."""

import psycopg
import pytest

from pgcluster import APP_DB, APP_PASSWORD, APP_USER, wait_until
from pgwire import RawClient, query_message, read_message


# PostgreSQL (standard_conforming_strings off) reads a string 'a'', ' and then a call; a reader
# of bytes, two strings and a comment.
HIDDEN_CALL = ("SELECT 'a\\', ' , set_config($q$search_path$q$, $q$s2$q$, false), "
               "pg_is_in_recovery() --'")


@pytest.fixture(scope="module")
def schemas(cluster):
    cluster.primary.psql(
        "DROP SCHEMA IF EXISTS s2 CASCADE; CREATE SCHEMA s2 AUTHORIZATION app;"
        "CREATE TABLE IF NOT EXISTS public.readings (x int); ALTER TABLE readings OWNER TO app;"
        "CREATE TABLE s2.readings (x int); INSERT INTO s2.readings VALUES (42);"
        "ALTER TABLE s2.readings OWNER TO app", dbname=APP_DB)
    cluster.wait_replay()


def replicated(cluster, **overrides):
    shard = {"name": "s0", "primary": f"127.0.0.1:{cluster.primary.port}",
             "replicas": [f"127.0.0.1:{r.port}" for r in cluster.replicas]}
    conf = {"databases": {APP_DB: {"shards": [shard]}}, "mode": "transaction", "pool_size": 1,
            "max_overflow": 0, "workers": 1, "routing": {"read_your_writes": "off"},
            "health": {"interval_ms": 100, "timeout_ms": 1000, "failures_before_down": 2}}
    conf.update(overrides)
    return conf


def fresh_search_path(pv):
    """What another client, logged in afresh, finds on the pooled servers, primary and replica."""
    with pv.connect() as b:
        return [b.execute(f"/* pgvalve: {where} */ select current_setting('search_path'), "
                          "count(*) from readings").fetchone()
                for where in ("primary", "replica") for _ in range(2)]


def test_conforming_strings_off_hides_nothing_from_the_next_client(cluster, schemas, pgvalve):
    pv = pgvalve(**replicated(cluster))

    def reads_on_replica():
        with pv.connect() as c:
            return c.execute("select pg_is_in_recovery()").fetchone()[0]
    wait_until(reads_on_replica, 10, message="reads on the replica")
    with pv.connect() as a:
        a.execute("set standard_conforming_strings = off")
        for _ in range(2):
            # Run where the client's session is, on the primary, as PostgreSQL reads it.
            assert a.execute(HIDDEN_CALL).fetchone()[1:] == ("s2", False)
    assert fresh_search_path(pv) == [('"$user", public', 0)] * 4


def test_a_character_of_sjis_holding_a_backslash_hides_nothing(cluster, schemas, pgvalve):
    pv = pgvalve(**replicated(cluster))
    # ソ is 0x83 0x5C in SJIS: PostgreSQL reads E'ソ' and then the call.
    sql = ("SELECT E'\u30bd' , set_config($q$search_path$q$, $q$s2$q$, false), "
           "pg_is_in_recovery() --'")
    with psycopg.connect(pv.dsn(), autocommit=True, client_encoding="SJIS") as a:
        assert a.execute(sql).fetchone() == ("\u30bd", "s2", False)
    assert fresh_search_path(pv) == [('"$user", public', 0)] * 4


def test_a_statement_pipelined_behind_the_setting_is_read_as_the_server_reads_it(
        cluster, schemas, pgvalve):
    pv = pgvalve(**replicated(cluster))
    c = RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB).connect()
    try:
        # Both in one write: the second is read by the server after the first ran.
        c.sock.sendall(query_message("set standard_conforming_strings = off") +
                       query_message(HIDDEN_CALL))
        ready, rows = 0, []
        while ready < 2:
            kind, payload = read_message(c.sock)
            if kind == b"E":
                raise AssertionError(payload)
            if kind == b"D":
                rows.append(payload)
            ready += kind == b"Z"
        assert len(rows) == 1 and b"s2" in rows[0]
    finally:
        c.close_abruptly()
    assert fresh_search_path(pv) == [('"$user", public', 0)] * 4


def test_session_mode_reads_of_such_a_client_stay_on_its_own_server(cluster, schemas, pgvalve):
    pv = pgvalve(**replicated(cluster, mode="session", pool_size=2))

    def reads_on_replica():
        with pv.connect() as c:
            return c.execute("select pg_is_in_recovery()").fetchone()[0]
    wait_until(reads_on_replica, 10, message="reads on the replica")
    with pv.connect() as a:
        a.execute("set standard_conforming_strings = off")
        assert a.execute(HIDDEN_CALL).fetchone()[1:] == ("s2", False)
        # The setting it made is there: the read ran on the client's own server.
        assert a.execute("select current_setting('search_path'), pg_is_in_recovery()"
                         ).fetchone() == ("s2", False)
