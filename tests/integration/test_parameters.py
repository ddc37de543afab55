"""ParameterStatus / session-parameter sync in transaction mode: several clients share ONE
server connection (pool_size 1, max_overflow 0, all traffic to the primary), and each client
always sees its own TimeZone, application_name, client_encoding, DateStyle and search_path,
whether it set them in the startup packet (libpq sends PGTZ as the startup parameter
`timezone`, PGDATESTYLE as `datestyle`, application_name and client_encoding as themselves)
or with SET outside a transaction."""

import contextlib
import os

import psycopg
import pytest

from pgcluster import APP_DB, APP_PASSWORD, APP_USER
from pgwire import RawClient

ROUNDS = 5


@pytest.fixture
def pv(pgvalve):
    return pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=5000)


@contextlib.contextmanager
def libpq_env(**env):
    """libpq reads PGTZ / PGDATESTYLE at connect time and sends them as startup parameters."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if v is not None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def connect(pv, env=None, **params):
    # prepare_threshold=None: no server-side prepared statements, so this module tests
    # parameter sync only (prepared statements have their own tests)
    with libpq_env(**(env or {})):
        return psycopg.connect(pv.dsn(**params), autocommit=True, prepare_threshold=None)


def backend_pid(conn):
    return conn.execute("select pg_backend_pid()").fetchone()[0]


def assert_shared_server(conns):
    pids = {backend_pid(c) for c in conns}
    assert len(pids) == 1, f"expected one shared server connection (pool_size 1), got pids {pids}"


def server_default(cluster, setting):
    return cluster.primary.scalar(f"show {setting}", dbname=APP_DB)


def test_timezone_startup_parameter(pv, cluster):
    default_tz = server_default(cluster, "TimeZone")
    a = connect(pv, env={"PGTZ": "UTC"})
    b = connect(pv, env={"PGTZ": "Asia/Tokyo"})
    c = connect(pv)  # no timezone: the server default
    clients = [(a, "UTC", "+00"), (b, "Asia/Tokyo", "+09"), (c, default_tz, None)]
    try:
        assert_shared_server([a, b, c])
        for _ in range(ROUNDS):
            for conn, tz, offset in clients:
                assert conn.execute("show TimeZone").fetchone()[0] == tz
                now = conn.execute("select now()::text").fetchone()[0]
                if offset:
                    assert now.endswith(offset), f"{tz} client got {now}"
                assert conn.info.parameter_status("TimeZone") == tz
        # inside an explicit transaction too
        for conn, tz, _ in clients:
            with conn.transaction():
                assert conn.execute("show TimeZone").fetchone()[0] == tz
    finally:
        for conn, _, _ in clients:
            conn.close()


def test_timezone_set_outside_transaction(pv, cluster):
    default_tz = server_default(cluster, "TimeZone")
    a = connect(pv)
    b = connect(pv)
    c = connect(pv, env={"PGTZ": "Asia/Tokyo"})
    try:
        a.execute("SET TimeZone = 'America/New_York'")
        b.execute("select 1")
        assert b.execute("show TimeZone").fetchone()[0] == default_tz
        b.execute("SET TimeZone = 'Australia/Adelaide'")
        for _ in range(ROUNDS):
            assert a.execute("show TimeZone").fetchone()[0] == "America/New_York"
            assert b.execute("show TimeZone").fetchone()[0] == "Australia/Adelaide"
            assert c.execute("show TimeZone").fetchone()[0] == "Asia/Tokyo"
            assert a.execute("select now()::text").fetchone()[0][-3:] in ("-05", "-04")
            assert c.execute("select now()::text").fetchone()[0].endswith("+09")
            assert a.info.parameter_status("TimeZone") == "America/New_York"
            assert c.info.parameter_status("TimeZone") == "Asia/Tokyo"
        # a SET that is rolled back does not stick
        with a.transaction(force_rollback=True):
            a.execute("SET TimeZone = 'Europe/Paris'")
        assert a.execute("show TimeZone").fetchone()[0] == "America/New_York"
        # SET LOCAL lasts only for its transaction
        with a.transaction():
            a.execute("SET LOCAL TimeZone = 'Europe/Paris'")
            assert a.execute("show TimeZone").fetchone()[0] == "Europe/Paris"
        assert a.execute("show TimeZone").fetchone()[0] == "America/New_York"
        assert b.execute("show TimeZone").fetchone()[0] == "Australia/Adelaide"
        assert_shared_server([a, b, c])
    finally:
        for conn in (a, b, c):
            conn.close()


def test_application_name(pv):
    a = connect(pv, application_name="alpha")
    b = connect(pv, application_name="beta")
    c = connect(pv)
    try:
        assert_shared_server([a, b, c])
        c.execute("SET application_name = 'gamma'")
        for _ in range(ROUNDS):
            for conn, name in ((a, "alpha"), (b, "beta"), (c, "gamma")):
                assert conn.execute("show application_name").fetchone()[0] == name
                seen = conn.execute("select application_name from pg_stat_activity "
                                    "where pid = pg_backend_pid()").fetchone()[0]
                assert seen == name
                assert conn.info.parameter_status("application_name") == name
    finally:
        for conn in (a, b, c):
            conn.close()


def test_client_encoding(pv, cluster):
    latin = connect(pv, client_encoding="LATIN1")
    utf8 = connect(pv, client_encoding="UTF8")
    try:
        assert_shared_server([latin, utf8])
        for _ in range(ROUNDS):
            for conn, enc in ((latin, "LATIN1"), (utf8, "UTF8")):
                assert conn.execute("show client_encoding").fetchone()[0] == enc
                assert conn.info.parameter_status("client_encoding") == enc
                # the server converts to the client's encoding: é must arrive decodable and equal
                assert conn.execute("select chr(233) || 'tat'").fetchone()[0] == "état"
                # and what the client sends is read in its encoding
                assert conn.execute("select %s::text = chr(233) || 'tat'",
                                    ("état",)).fetchone()[0] is True
        # a UTF8-only character cannot be sent to a LATIN1 client: real SQLSTATE, connection ok
        with pytest.raises(psycopg.errors.UntranslatableCharacter) as ei:
            latin.execute("select chr(9731)")
        assert ei.value.sqlstate == "22P05"
        assert utf8.execute("select chr(9731)").fetchone()[0] == "☃"
        assert latin.execute("select 1").fetchone() == (1,)
        # SET client_encoding outside a transaction
        utf8.execute("SET client_encoding = 'LATIN1'")
        latin.execute("SET client_encoding = 'UTF8'")
        assert utf8.execute("show client_encoding").fetchone()[0] == "LATIN1"
        assert latin.execute("show client_encoding").fetchone()[0] == "UTF8"
        assert latin.execute("select chr(9731)").fetchone()[0] == "☃"
        assert utf8.execute("select chr(233)").fetchone()[0] == "é"
    finally:
        latin.close()
        utf8.close()


def test_datestyle_startup_parameter(pv):
    a = connect(pv, env={"PGDATESTYLE": "SQL, DMY"})
    b = connect(pv, env={"PGDATESTYLE": "ISO, MDY"})
    try:
        assert_shared_server([a, b])
        for _ in range(ROUNDS):
            assert a.execute("select '2024-03-05'::date::text").fetchone()[0] == "05/03/2024"
            assert b.execute("select '2024-03-05'::date::text").fetchone()[0] == "2024-03-05"
            assert a.execute("show DateStyle").fetchone()[0] == "SQL, DMY"
            assert b.execute("show DateStyle").fetchone()[0] == "ISO, MDY"
    finally:
        a.close()
        b.close()


def test_search_path_set(pv, cluster):
    cluster.primary.psql(
        "drop schema if exists sp_a cascade; drop schema if exists sp_b cascade;"
        "create schema sp_a authorization app; create schema sp_b authorization app;"
        "create table sp_a.who(v text); insert into sp_a.who values ('a');"
        "create table sp_b.who(v text); insert into sp_b.who values ('b');"
        "alter table sp_a.who owner to app; alter table sp_b.who owner to app;",
        dbname=APP_DB)
    a = connect(pv)
    b = connect(pv)
    try:
        a.execute("SET search_path = sp_a, public")
        b.execute("SET search_path = sp_b, public")
        for _ in range(ROUNDS):
            assert a.execute("select v from who").fetchone()[0] == "a"
            assert b.execute("select v from who").fetchone()[0] == "b"
        assert_shared_server([a, b])
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_startup_search_path_is_a_list(pgvalve, cluster, mode):
    # libpq's options=-c search_path=..., and PgJDBC's currentSchema (a startup parameter of its
    # own): PostgreSQL reads the value as a list of schemas, and so must every server the client
    # gets. The table exists only in the second schema of the list.
    cluster.primary.psql(
        "drop schema if exists sp_list cascade; create schema sp_list authorization app;"
        "drop table if exists public.only_public; create table public.only_public(v text);"
        "insert into public.only_public values ('public');"
        "alter table public.only_public owner to app;", dbname=APP_DB)
    pv = pgvalve(mode=mode, pool_size=1, max_overflow=0, checkout_timeout_ms=5000)
    with connect(pv, options="-c%20search_path%3Dsp_list,public") as a:
        assert a.execute("select current_schemas(false)").fetchone()[0] == ["sp_list", "public"]
        assert a.execute("select v from only_public").fetchone() == ("public",)
    b = RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB,
                  params={"search_path": "sp_list,public"}).connect()
    try:
        assert b.rows("select current_schemas(false)") == [["{sp_list,public}"]]
        assert b.rows("select v from only_public") == [["public"]]
    finally:
        b.sock.close()


@pytest.mark.parametrize("reset", ["reset all", "reset client_encoding", "discard all",
                                   "set client_encoding to default"])
def test_reset_leaves_a_latin1_client_writing_latin1(pv, cluster, reset):
    # psycopg encodes each statement in the client_encoding it was last told (ParameterStatus).
    # A RESET returns the client's session to its startup LATIN1, which PostgreSQL does not
    # report; the pool's server goes back to UTF8 meanwhile, and telling the client that made
    # it store 'café' as 'cafÃ©'.
    cluster.primary.psql("create table if not exists enc (src text, t text); "
                         "alter table enc owner to app; truncate enc", dbname=APP_DB)
    for src, dsn in (("direct", cluster.primary.tcp_dsn() + "&client_encoding=LATIN1"),
                     ("pgvalve", pv.dsn(client_encoding="LATIN1"))):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(reset)
            assert c.pgconn.parameter_status(b"client_encoding") == b"LATIN1", src
            c.execute("insert into enc values (%s, 'café')", (src,))
            c.execute("insert into enc values (%s, %s)", (src, "naïve"))
            assert [r[0] for r in c.execute("select t from enc where src = %s order by t",
                                            (src,))] == ["café", "naïve"]
    stored = cluster.primary.sql("select src, t from enc order by src, t", dbname=APP_DB)
    assert stored == [("direct", "café"), ("direct", "naïve"),
                      ("pgvalve", "café"), ("pgvalve", "naïve")]
