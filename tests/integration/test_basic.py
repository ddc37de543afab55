"""What every application relies on: psql and psycopg (libpq) work through pgvalve as they do
against PostgreSQL: simple and multi-statement queries, the extended protocol, real SQLSTATEs,
COPY both ways, NOTICEs and transactions."""

import subprocess

import psycopg
import pytest
from psycopg import errors, pq

from itutil import one
from pgcluster import APP_DB

@pytest.fixture
def pv(pgvalve):
    return pgvalve(mode="transaction", pool_size=4)


@pytest.fixture
def conn(pv):
    with pv.connect(autocommit=True) as c:
        yield c


def psql(pv, *args, input=None, timeout=30):
    return subprocess.run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", pv.dsn(), *args],
        capture_output=True, text=True, timeout=timeout, input=input)


def test_psql_simple_query(pv):
    r = psql(pv, "-c", "select 40 + 2, current_user, current_database()")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"42|app|{APP_DB}"


def test_psql_multi_statement_and_error(pv):
    r = psql(pv, "-c", "select 1; select 2; select 'three'")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "2", "three"]
    # psql reports the server's error and exits 1
    r = psql(pv, "-c", "select * from no_such_table_psql")
    assert r.returncode == 1
    assert 'relation "no_such_table_psql" does not exist' in r.stderr
    # script via stdin with a transaction
    r = psql(pv, input="begin;\nselect 7;\ncommit;\nselect 8;\n")
    assert r.returncode == 0, r.stderr
    assert [l for l in r.stdout.split() if l.isdigit()] == ["7", "8"]


def test_simple_query(conn):
    assert conn.execute("select 1, 'x'::text, null::int").fetchone() == (1, "x", None)
    assert conn.execute("select generate_series(1, 1000)").rowcount == 1000


def test_multi_statement_simple_query(conn):
    # psycopg sends a query without parameters as one simple Query message
    cur = conn.execute("select 1 as a; select 2 as b, 3 as c")
    assert [d.name for d in cur.description] == ["a"]
    assert cur.fetchall() == [(1,)]
    assert cur.nextset()
    assert [d.name for d in cur.description] == ["b", "c"]
    assert cur.fetchall() == [(2, 3)]
    assert not cur.nextset()
    cur = conn.cursor()
    cur.execute("select 10; select 20; select 30")
    results = [cur.fetchall()]
    while cur.nextset():
        results.append(cur.fetchall())
    assert results == [[(10,)], [(20,)], [(30,)]]


def test_extended_protocol_with_parameters(conn):
    row = conn.execute("select %s::int + %s::int, %s::text, %s::bytea, %s::int",
                       (40, 2, "héllo ☃", b"\x00\x01\xff", None)).fetchone()
    assert row == (42, "héllo ☃", b"\x00\x01\xff", None)
    # binary parameters and results
    cur = conn.cursor(binary=True)
    assert cur.execute("select %b::int8 * 2", (21,)).fetchone() == (42,)
    # many executions of the same statement (psycopg prepares it server-side after 5 uses)
    for i in range(12):
        assert conn.execute("select %s::int * 3", (i,)).fetchone() == (i * 3,)


def test_prepared_statements_shared_server(pgvalve):
    """Transaction mode, one server for two clients: psycopg names its server-side prepared
    statements _pg3_0, _pg3_1, ... in every connection, so both clients use the same names;
    pgvalve must keep them apart and re-prepare as needed (DESIGN §4.2)."""
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0)
    with pv.connect() as a, pv.connect() as b:
        for i in range(8):
            assert a.execute("select %s::int + 1", (i,), prepare=True).fetchone() == (i + 1,)
            assert b.execute("select %s::text || 'b'", (str(i),),
                             prepare=True).fetchone() == (f"{i}b",)
            # automatic preparation after prepare_threshold (5) executions
            assert a.execute("select %s::int * 10", (i,)).fetchone() == (i * 10,)
            assert b.execute("select %s::int * 100", (i,)).fetchone() == (i * 100,)
        # explicit SQL-level PREPARE / EXECUTE / DEALLOCATE in a transaction
        with a.transaction():
            a.execute("PREPARE sqlp(int) AS select $1 * 7")
            assert a.execute("EXECUTE sqlp(6)").fetchone() == (42,)
            a.execute("DEALLOCATE sqlp")


def test_executemany_and_pipeline(conn):
    conn.execute("drop table if exists basic_pipe")
    conn.execute("create table basic_pipe(id int primary key, v text)")
    with conn.cursor() as cur:
        cur.executemany("insert into basic_pipe values (%s, %s)", [(i, f"v{i}") for i in range(50)])
    with conn.pipeline():
        c1 = conn.execute("select count(*) from basic_pipe")
        c2 = conn.execute("select v from basic_pipe where id = %s", (7,))
    # reads may go to a replica; read-your-writes must hold anyway
    assert c1.fetchone() == (50,)
    assert c2.fetchone() == ("v7",)
    conn.execute("drop table basic_pipe")


def test_error_sqlstate_and_connection_survives(conn):
    with pytest.raises(errors.UndefinedTable) as ei:
        conn.execute("select * from no_such_table")
    assert ei.value.sqlstate == "42P01"
    assert conn.execute("select 1").fetchone() == (1,)
    with pytest.raises(errors.SyntaxError) as ei:
        conn.execute("selec 1")
    assert ei.value.sqlstate == "42601"
    with pytest.raises(errors.DivisionByZero) as ei:
        conn.execute("select 1 / %s::int", (0,))
    assert ei.value.sqlstate == "22012"
    assert conn.execute("select 2").fetchone() == (2,)


def test_error_inside_transaction_then_rollback(pv):
    with pv.connect(autocommit=False) as c:
        c.execute("select 1")
        with pytest.raises(errors.UndefinedTable):
            c.execute("select * from no_such_table_tx")
        with pytest.raises(errors.InFailedSqlTransaction) as ei:
            c.execute("select 1")
        assert ei.value.sqlstate == "25P02"
        c.rollback()
        assert c.execute("select 3").fetchone() == (3,)
        c.commit()


def test_copy_from_stdin_and_to_stdout(conn):
    conn.execute("drop table if exists basic_copy")
    conn.execute("create table basic_copy(id int, name text, payload bytea)")
    rows = [(i, f"name {i}\twith tab", bytes([i % 256]) * 10) for i in range(5000)]
    with conn.cursor() as cur:
        with cur.copy("copy basic_copy (id, name, payload) from stdin") as cp:
            for r in rows:
                cp.write_row(r)
        assert cur.rowcount == 5000
    assert conn.execute("select count(*), sum(id) from basic_copy").fetchone() == (
        5000, sum(range(5000)))
    out = []
    with conn.cursor() as cur:
        with cur.copy("copy (select id, name, payload from basic_copy order by id) to stdout") as cp:
            cp.set_types(["int4", "text", "bytea"])
            for r in cp.rows():
                out.append(r)
    assert out == rows
    # raw COPY TO in binary-ish chunks: csv
    data = b""
    with conn.cursor() as cur:
        with cur.copy("copy (select id from basic_copy where id < 3 order by id) to stdout "
                      "with (format csv)") as cp:
            for chunk in cp:
                data += bytes(chunk)
    assert data == b"0\n1\n2\n"
    conn.execute("drop table basic_copy")


def test_copy_error_keeps_connection(conn):
    conn.execute("drop table if exists basic_copy_err")
    conn.execute("create table basic_copy_err(id int)")
    with pytest.raises(errors.InvalidTextRepresentation) as ei:
        with conn.cursor() as cur:
            with cur.copy("copy basic_copy_err from stdin") as cp:
                cp.write(b"1\nnot-a-number\n3\n")
    assert ei.value.sqlstate == "22P02"
    assert conn.execute("select count(*) from basic_copy_err").fetchone() == (0,)
    conn.execute("drop table basic_copy_err")


def test_copy_through_the_extended_protocol(pgvalve):
    """libpq runs a COPY given to PQexecParams as Parse/Bind/Describe/Execute/Sync and sends a
    second Sync after CopyDone; the server ignores the first. With one server in the pool, another
    client's query while this one stays connected shows that the server went back to the pool."""
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=0, checkout_timeout_ms=2000)
    with pv.connect(autocommit=True) as c, pv.connect(autocommit=True) as other:
        c.execute("drop table if exists basic_copy_ext")
        c.execute("create table basic_copy_ext(id int)")
        pg = c.pgconn
        pg.send_query_params(b"copy basic_copy_ext from stdin", None)
        assert pg.get_result().status == pq.ExecStatus.COPY_IN
        assert pg.put_copy_data(b"".join(b"%d\n" % i for i in range(100))) == 1
        assert pg.put_copy_end() == 1
        while pg.flush() != 0:
            pass
        result = pg.get_result()
        assert result.status == pq.ExecStatus.COMMAND_OK, result.error_message
        assert result.command_status == b"COPY 100"
        assert pg.get_result() is None
        assert one(other, "select count(*) from basic_copy_ext") == 100
        assert c.execute("select count(*), sum(id) from basic_copy_ext").fetchone() == (
            100, sum(range(100)))
        assert one(other, "select 1") == 1
        other.execute("drop table basic_copy_ext")


def test_notice_delivery(conn):
    notices = []
    conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.sqlstate,
                                                      d.message_primary)))
    conn.execute("do $$ begin raise notice 'hello from %', 'pgvalve'; "
                 "raise warning 'careful'; end $$")
    assert ("NOTICE", "00000", "hello from pgvalve") in notices
    assert ("WARNING", "01000", "careful") in notices


def test_transaction_rollback_leaves_no_row(pv, conn, cluster):
    conn.execute("drop table if exists basic_tx")
    conn.execute("create table basic_tx(id int)")
    with pv.connect(autocommit=False) as c:
        c.execute("insert into basic_tx values (1)")
        assert c.execute("select count(*) from basic_tx").fetchone() == (1,)
        c.rollback()
        assert c.execute("select count(*) from basic_tx").fetchone() == (0,)
        c.rollback()
    # explicit BEGIN / INSERT / ROLLBACK in autocommit mode, as psql would send it
    conn.execute("begin")
    conn.execute("insert into basic_tx values (2)")
    conn.execute("rollback")
    assert conn.execute("select count(*) from basic_tx").fetchone() == (0,)
    assert cluster.primary.scalar("select count(*) from basic_tx", dbname=APP_DB) == 0
    # and a committed one is there
    conn.execute("begin")
    conn.execute("insert into basic_tx values (3)")
    conn.execute("commit")
    assert cluster.primary.scalar("select count(*) from basic_tx", dbname=APP_DB) == 1
    conn.execute("drop table basic_tx")


def test_many_sequential_connections(pv):
    for i in range(30):
        with psycopg.connect(pv.dsn(), autocommit=True) as c:
            assert c.execute("select %s::int", (i,)).fetchone() == (i,)
