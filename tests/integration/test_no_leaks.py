"""Nothing one client sets reaches the next lender of its server (DESIGN §4.2: "nothing a client
sets (`set_config`, `SET ROLE`, ...) is ever seen by the next client of that server"), and what
pgvalve can follow, it follows for the client that set it.

Transaction mode with pool_size 1 (max_overflow 0) and more clients than servers: every client
runs on the one server, so B is certain to be the next lender after A (each test checks the
backend pid). The driver tests (PgJDBC, postgres.js) use pool_size 2 and holder connections so
the client under test lands on both servers in turn."""

from __future__ import annotations

import os

import psycopg
import pytest

from itutil import DRIVERS, JDBC_JAR, npm_install, one, run
from pgcluster import APP_DB, APP_PASSWORD, APP_USER
from pgwire_ext import ExtClient, bind, describe, execute, parse, sync


ROLE = "nl_r"
SUPER = "nl_super"
SUPER_PASSWORD = "super-secret"
DEFAULT_SEARCH_PATH = '"$user", public'


@pytest.fixture(scope="module")
def setup_db(cluster):
    p = cluster.primary
    p.psql(f"DO $$ BEGIN IF NOT EXISTS (select 1 from pg_roles where rolname = '{ROLE}') THEN "
           f"CREATE ROLE {ROLE} NOLOGIN; END IF; "
           f"IF NOT EXISTS (select 1 from pg_roles where rolname = '{SUPER}') THEN "
           f"CREATE ROLE {SUPER} SUPERUSER LOGIN PASSWORD '{SUPER_PASSWORD}'; END IF; END $$")
    p.psql(f"GRANT {ROLE} TO {APP_USER}")
    for s in ("a", "b"):
        p.sql(f"drop schema if exists {s} cascade; create schema {s} authorization {APP_USER}; "
              f"create table {s}.only_{s}(v text); insert into {s}.only_{s} values ('{s}'); "
              f"alter table {s}.only_{s} owner to {APP_USER}", dbname=APP_DB)
    return True


@pytest.fixture
def pv(pgvalve, setup_db):
    return pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=10000,
                   users=[{"name": APP_USER, "password": APP_PASSWORD},
                          {"name": SUPER, "password": SUPER_PASSWORD}])


def connect(pv, **kw):
    # no server-side prepared statements unless a test asks: this is about settings
    return psycopg.connect(pv.dsn(**kw), autocommit=True, prepare_threshold=None)


def server_default(cluster, setting):
    return cluster.primary.scalar(f"show {setting}", dbname=APP_DB)


def pid(conn):
    return one(conn, "select pg_backend_pid()")


class Pair:
    """A (the client that sets things) and B (the next lender), on the one server."""

    def __init__(self, pv, **kw):
        self.a = connect(pv, **kw)
        self.b = connect(pv, **kw)
        self.server = pid(self.a)

    def b_next(self):
        """B borrows the server A used last; returns B's connection."""
        assert pid(self.b) == self.server, "B did not get A's server (pool_size 1)"
        return self.b

    def a_next(self):
        assert pid(self.a) == self.server
        return self.a

    def close(self):
        self.a.close()
        self.b.close()


@pytest.fixture
def pair(pv):
    p = Pair(pv)
    yield p
    p.close()


# --- set_config --------------------------------------------------------------------------------

def test_set_config_followed_for_a_not_seen_by_b(pair, cluster):
    default = server_default(cluster, "statement_timeout")
    a = pair.a
    assert one(a, "select set_config('statement_timeout', '1ms', false)") == "1ms"
    for _ in range(3):
        assert one(pair.b_next(), "show statement_timeout") == default
        assert one(pair.b, "select current_setting('statement_timeout')") == default
        # A's next transaction, after B used the server: still 1 ms
        assert one(pair.a_next(), "show statement_timeout") == "1ms"


def test_set_config_list_setting(pair, cluster):
    a = pair.a
    assert one(a, "select set_config('search_path', 'a, b', false)") == "a, b"
    for _ in range(2):
        b = pair.b_next()
        assert one(b, "show search_path") == DEFAULT_SEARCH_PATH
        assert one(b, "select to_regclass('only_b')") is None
        a = pair.a_next()
        assert one(a, "show search_path") == "a, b"
        # two schemas, not one named "a, b"
        assert one(a, "select current_schemas(false)") == ["a", "b"]
        assert one(a, "select v from only_a") == "a"
        assert one(a, "select v from only_b") == "b"


@pytest.mark.parametrize("how", ["subquery", "bind_parameter"])
def test_set_config_computed_value_is_not_seen_by_b(pair, cluster, how):
    default = server_default(cluster, "work_mem")
    a = pair.a
    if how == "subquery":
        assert one(a, "select set_config('work_mem', (select '5MB'), false)") == "5MB"
    else:  # the value arrives in a Bind message (extended protocol)
        assert one(a, "select set_config('work_mem', %s, false)", ("5MB",)) == "5MB"
    assert one(pair.b_next(), "show work_mem") == default
    assert one(pair.b, "select current_setting('work_mem')") == default
    print(f"A after B ({how}): work_mem = {one(pair.a_next(), 'show work_mem')}")


# --- roles ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["statements", "one_query"])
def test_set_role_in_a_transaction(pair, how):
    a = pair.a
    if how == "statements":
        a.execute("BEGIN")
        a.execute(f"SET ROLE {ROLE}")
        a.execute("COMMIT")
    else:
        a.execute(f"BEGIN; SET ROLE {ROLE}; COMMIT")
    for _ in range(2):
        b = pair.b_next()
        assert one(b, "select current_user") == APP_USER
        assert one(b, "show role") == "none"
        a = pair.a_next()
        assert one(a, "select current_user") == ROLE
        assert one(a, "select session_user") == APP_USER


def test_set_role_outside_a_transaction_and_reset_all(pair):
    a = pair.a
    a.execute(f"SET ROLE {ROLE}")
    assert one(pair.b_next(), "select current_user") == APP_USER
    assert one(pair.a_next(), "select current_user") == ROLE
    # RESET ALL does not reset the role (PostgreSQL: role is not reset by RESET ALL)
    a.execute("SET work_mem = '6MB'")
    a.execute("RESET ALL")
    assert one(pair.a_next(), "select current_user") == ROLE
    assert one(pair.b_next(), "select current_user") == APP_USER
    assert one(pair.a_next(), "select current_user") == ROLE
    assert one(pair.a, "show work_mem") != "6MB"
    a.execute("RESET ROLE")
    assert one(pair.a_next(), "select current_user") == APP_USER
    assert one(pair.b_next(), "select current_user") == APP_USER


@pytest.mark.parametrize("how", ["in_transaction", "autocommit"])
def test_set_session_authorization(pv, how):
    """SET SESSION AUTHORIZATION needs a superuser login; the pool of that user is shared by
    A and B (pools are per database and user)."""
    p = Pair(pv, user=SUPER, password=SUPER_PASSWORD)
    try:
        a = p.a
        if how == "in_transaction":
            a.execute("BEGIN")
        a.execute(f"SET SESSION AUTHORIZATION {APP_USER}")
        if how == "in_transaction":
            a.execute("COMMIT")
        for _ in range(2):
            b = p.b_next()
            assert one(b, "select session_user") == SUPER
            assert one(b, "select current_user") == SUPER
            a = p.a_next()
            assert one(a, "select session_user") == APP_USER
            assert one(a, "select current_user") == APP_USER
        # RESET ALL keeps it too, RESET SESSION AUTHORIZATION ends it
        a.execute("RESET ALL")
        assert one(p.a_next(), "select session_user") == APP_USER
        a.execute("RESET SESSION AUTHORIZATION")
        assert one(p.a_next(), "select session_user") == SUPER
        assert one(p.b_next(), "select session_user") == SUPER
    finally:
        p.close()


# --- SET in transactions -------------------------------------------------------------------------

def test_set_in_transactions_and_savepoints(pair, cluster):
    default = server_default(cluster, "work_mem")
    a = pair.a
    a.execute("SET work_mem = '6MB'")

    def check(a_value):
        assert one(pair.b_next(), "show work_mem") == default
        assert one(pair.a_next(), "show work_mem") == a_value

    a.execute("BEGIN")
    a.execute("SET work_mem = '7MB'")
    assert one(a, "show work_mem") == "7MB"
    a.execute("ROLLBACK")
    check("6MB")

    a.execute("BEGIN")
    a.execute("SET work_mem = '7MB'")
    a.execute("COMMIT")
    check("7MB")
    check("7MB")

    a.execute("BEGIN")
    a.execute("SAVEPOINT s")
    a.execute("SET work_mem = '8MB'")
    a.execute("ROLLBACK TO s")
    assert one(a, "show work_mem") == "7MB"
    a.execute("COMMIT")
    check("7MB")

    a.execute("BEGIN")
    a.execute("SAVEPOINT s")
    a.execute("SET work_mem = '9MB'")
    a.execute("RELEASE s")
    a.execute("COMMIT")
    check("9MB")

    # an error inside the transaction: COMMIT rolls back, the SET with it
    a.execute("BEGIN")
    a.execute("SET work_mem = '10MB'")
    with pytest.raises(psycopg.errors.DivisionByZero):
        a.execute("select 1/0")
    assert a.execute("COMMIT").statusmessage == "ROLLBACK"
    check("9MB")


def test_several_sets_in_one_query(pair, cluster):
    defaults = {k: server_default(cluster, k) for k in ("work_mem", "statement_timeout")}
    a = pair.a
    a.execute("SET work_mem = '3MB'; SET statement_timeout = '2s'")

    def check(wm, st):
        b = pair.b_next()
        assert one(b, "show work_mem") == defaults["work_mem"]
        assert one(b, "show statement_timeout") == defaults["statement_timeout"]
        a = pair.a_next()
        assert one(a, "show work_mem") == wm
        assert one(a, "show statement_timeout") == st

    check("3MB", "2s")
    check("3MB", "2s")
    # the same with an error at the end: the implicit transaction rolls both back
    with pytest.raises(psycopg.errors.DivisionByZero):
        a.execute("SET work_mem = '4MB'; SET statement_timeout = '3s'; select 1/0")
    check("3MB", "2s")


# --- drivers: SET and LISTEN through the extended protocol ----------------------------------------

@pytest.fixture
def pv2(pgvalve, setup_db):
    return pgvalve(mode="transaction", pool_size=2, max_overflow=0, checkout_timeout_ms=15000)


@pytest.fixture(scope="module")
def jdbc_classes(tmp_path_factory):
    assert JDBC_JAR.exists(), f"{JDBC_JAR} missing: apt-get install libpostgresql-jdbc-java"
    out = tmp_path_factory.mktemp("jdbc")
    r, text = run(["javac", "-cp", str(JDBC_JAR), "-d", str(out),
                   str(DRIVERS / "JdbcSessionState.java")], timeout=120)
    assert r.returncode == 0, text
    return out


@pytest.mark.parametrize("threshold", ["1", "default"])
def test_jdbc_set_and_listen(pv2, cluster, jdbc_classes, threshold):
    default = server_default(cluster, "work_mem")
    url = f"jdbc:postgresql://127.0.0.1:{pv2.port}/{APP_DB}"
    r, out = run(["java", "-cp", f"{jdbc_classes}:{JDBC_JAR}", "JdbcSessionState", url,
                  APP_USER, APP_PASSWORD, threshold, default, "6"], timeout=90)
    assert r.returncode == 0 and r.stdout.startswith("OK"), out


def test_postgresjs_set_and_listen(pv2, cluster):
    npm_install()
    default = server_default(cluster, "work_mem")
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(pv2.port), PGUSER=APP_USER,
               PGPASSWORD=APP_PASSWORD, PGDATABASE=APP_DB)
    r, out = run(["node", str(DRIVERS / "node_postgresjs_state.js"), default, "6"],
                 timeout=90, env=env, cwd=str(DRIVERS))
    assert r.returncode == 0 and r.stdout.startswith("OK"), out


def test_no_client_binds_another_clients_unnamed_statement(pgvalve):
    """PostgreSQL keeps the unnamed statement until the next Parse of one: a server going from
    client to client holds the last one's. A Bind of it by a client that parsed none is refused
    (26000) instead of running the other client's statement, and the client whose Parse was
    described in one request and bound in a later one (pgx's describe-then-execute) runs its
    own statement wherever that Bind goes."""
    pv = pgvalve(pool_size=1, workers=1)
    a = ExtClient.login(pv)
    b = ExtClient.login(pv)
    a.run([parse("", "select 'secret of a'::text"), describe("S", ""), sync()]).raise_for_error()
    r = b.run([bind(""), execute(), sync()])
    assert r.rows == [] and r.errors and r.errors[0]["C"] == "26000", r.msgs
    assert r.errors[0]["M"].startswith("pgvalve: unnamed prepared statement does not exist")
    b.run([parse("", "select 'of b'::text"), bind(""), execute(), sync()]).raise_for_error()
    assert a.run([bind(""), execute(), sync()]).raise_for_error().rows == [["secret of a"]]
    # A simple query ends it, as on PostgreSQL.
    a.simple("select 1").raise_for_error()
    r = a.run([bind(""), execute(), sync()])
    assert r.errors and r.errors[0]["C"] == "26000", r.msgs
