"""Real drivers' prepared statements through transaction pooling (issue 3): psycopg
(prepare=True and its default prepare_threshold), PgJDBC (prepareThreshold=1) and node-postgres
(named queries). Each runs several concurrent connections over 2 server connections
(pool_size 2, max_overflow 0), many transactions, every result checked by the driver program.

The Java and Node programs live in drivers/; javac compiles the Java one into a temporary
directory; npm installs node-postgres into drivers/node_modules (not in git) when missing.
A missing toolchain or an unreachable npm registry fails these tests: they do not skip."""

import os
import subprocess
import threading
import time

import psycopg
import pytest

from itutil import APP_AND_OPS, DRIVERS, JDBC_JAR, app_backends, fresh_table, npm_install, run
from pgcluster import APP_DB, APP_PASSWORD, APP_USER, wait_until
from test_admin_console import admin

CONNECTIONS = 4


@pytest.fixture
def pv(pgvalve):
    return pgvalve(mode="transaction", pool_size=2, max_overflow=0, checkout_timeout_ms=15000)


# --- psycopg --------------------------------------------------------------------------------

ITERATIONS = 150


def psycopg_client(pv, k, prepare, errors, pids):
    try:
        kw = {} if prepare is None else {"prepare": prepare}
        with psycopg.connect(pv.dsn(), autocommit=True) as conn:
            for i in range(ITERATIONS):
                # same text in every connection, and one of this connection's own
                assert conn.execute("select %s::int * 3", (i,), **kw).fetchone() == (3 * i,)
                row = conn.execute(f"select %s::text || '-{k}', %s::int + {k}", (str(i), i),
                                   **kw).fetchone()
                assert row == (f"{i}-{k}", i + k), row
                if i % 10 == 0:
                    with conn.transaction():
                        pid = conn.execute("select pg_backend_pid()", **kw).fetchone()[0]
                        pids.add(pid)
                        with conn.cursor() as cur:
                            # pipeline mode with the same statement many times
                            cur.executemany("insert into psycopg_results(client, i) values "
                                            "(%s, %s)", [(k, i * 10 + j) for j in range(5)])
                        n = conn.execute("select count(*) from psycopg_results where client = %s",
                                         (k,), **kw).fetchone()[0]
                        assert n == (i // 10 + 1) * 5, n
                        assert conn.execute("select pg_backend_pid()").fetchone()[0] == pid
            # statements psycopg prepared are named server-side by pgvalve
            with conn.transaction():
                n = conn.execute(r"select count(*) from pg_prepared_statements "
                                 r"where name like 'pgv\_%'").fetchone()[0]
                assert n >= 1
    except Exception as e:  # noqa: BLE001 - collected and reported by the test
        errors.append(f"client {k} (prepare={prepare}): {e!r}")


def test_psycopg(pv, cluster):
    fresh_table(cluster, "psycopg_results", "client int, i int")
    errors, pids = [], set()
    modes = [True, None] * (CONNECTIONS // 2)  # prepare=True, and the default threshold (5)
    threads = [threading.Thread(target=psycopg_client, args=(pv, k, m, errors, pids))
               for k, m in enumerate(modes)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 90
    for t in threads:
        t.join(timeout=max(1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "psycopg clients still running after 90 s"
    assert not errors, errors
    assert len(pids) == 2, f"transactions ran on {pids}, expected both server connections"
    assert app_backends(cluster) <= 2
    assert cluster.primary.scalar("select count(*) from psycopg_results", dbname=APP_DB) == \
        CONNECTIONS * (ITERATIONS // 10) * 5


def test_psycopg_closes_statements_it_evicts_from_its_cache(pv):
    # psycopg 3 keeps at most prepared_max statements and closes the least recently used with
    # `DEALLOCATE name` through the extended protocol. The name is the client's: the server
    # does not know it, and an error there (26000) used to fail the application's statement.
    errors = []

    def client(k):
        try:
            with psycopg.connect(pv.dsn(), autocommit=True) as conn:
                conn.prepare_threshold = 0
                conn.prepared_max = 3
                for i in range(40):
                    n = i % 8  # 8 texts over a cache of 3: evictions all along
                    assert conn.execute(f"select {n} + %s::int", (k,)).fetchone() == (n + k,)
                    if i % 10 == 0:
                        with conn.transaction():
                            assert conn.execute(f"select {n} * 2 + %s::int",
                                                (k,)).fetchone() == (n * 2 + k,)
                with conn.pipeline():
                    cursors = [conn.execute(f"select {n} - %s::int", (k,)) for n in range(8)]
                assert [c.fetchone()[0] for c in cursors] == [n - k for n in range(8)]
        except Exception as e:  # noqa: BLE001 - collected and reported by the test
            errors.append(f"client {k}: {e!r}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "psycopg clients still running after 60 s"
    assert not errors, errors


# --- node-postgres --------------------------------------------------------------------------

def test_node_postgres(pv, cluster):
    npm_install()
    fresh_table(cluster, "node_results", "client int, i int")
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(pv.port), PGUSER=APP_USER,
               PGPASSWORD=APP_PASSWORD, PGDATABASE=APP_DB)
    r, out = run(["node", str(DRIVERS / "node_named.js"), str(CONNECTIONS), "200"],
                 timeout=120, env=env, cwd=str(DRIVERS))
    assert r.returncode == 0 and r.stdout.startswith("OK"), out
    pids = r.stdout.strip().split("server_pids=", 1)[1].split(",")
    assert len(pids) == 2, out
    assert app_backends(cluster) <= 2
    assert cluster.primary.scalar("select count(*) from node_results", dbname=APP_DB) == \
        CONNECTIONS * 20 * 3


# --- PgJDBC ---------------------------------------------------------------------------------

def test_jdbc(pv, cluster, tmp_path):
    assert JDBC_JAR.exists(), f"{JDBC_JAR} missing: apt-get install libpostgresql-jdbc-java"
    fresh_table(cluster, "jdbc_results", "thread int, i int")
    r, out = run(["javac", "-cp", str(JDBC_JAR), "-d", str(tmp_path),
                  str(DRIVERS / "JdbcPrepared.java")], timeout=120)
    assert r.returncode == 0, out
    url = f"jdbc:postgresql://127.0.0.1:{pv.port}/{APP_DB}"
    r, out = run(["java", "-cp", f"{tmp_path}:{JDBC_JAR}", "JdbcPrepared", url, APP_USER,
                  APP_PASSWORD, str(CONNECTIONS), "200"], timeout=150)
    assert r.returncode == 0 and r.stdout.startswith("OK"), out
    pids = r.stdout.split("server_pids=[", 1)[1].split("]", 1)[0].split(",")
    assert len(pids) == 2, out
    assert app_backends(cluster) <= 2
    # 20 transactions per thread, every fifth rolled back, 3 rows each
    assert cluster.primary.scalar("select count(*) from jdbc_results", dbname=APP_DB) == \
        CONNECTIONS * 16 * 3


def test_jdbc_statement_whose_table_changed_fails_once_as_on_postgresql(pgvalve, cluster,
                                                                         tmp_path):
    """PgJDBC decodes a server-side prepared statement's rows by the columns of its first
    execution. After ALTER TABLE adds one, PostgreSQL fails the statement once (0A000, whose
    routine tells PgJDBC to prepare it again) and the next transaction gets the new columns.
    Through pgvalve the statement then lands on a server that never held it (RECONNECT replaced
    them all), inside a transaction whose BEGIN came with it: the same outcome, not rows of
    three columns read as two."""
    assert JDBC_JAR.exists(), f"{JDBC_JAR} missing: apt-get install libpostgresql-jdbc-java"
    r, out = run(["javac", "-cp", str(JDBC_JAR), "-d", str(tmp_path),
                  str(DRIVERS / "JdbcSchemaChange.java")], timeout=120)
    assert r.returncode == 0, out
    pv = pgvalve(users=APP_AND_OPS, mode="transaction", pool_size=2, max_overflow=0)

    def pool_backends():
        return {row[0] for row in cluster.primary.sql(
            "select pid from pg_stat_activity where usename = %s and datname = %s and "
            "backend_type = 'client backend' and application_name <> 'pgvalve health check'",
            (APP_USER, APP_DB))}

    seen, errors = {}, {}
    for target, port in (("direct", cluster.primary.port), ("pgvalve", pv.port)):
        fresh_table(cluster, "jdbc_shape", "a int, b text")
        cluster.primary.sql("insert into jdbc_shape values (1, 'one')", dbname=APP_DB)
        java = subprocess.Popen(
            ["java", "-cp", f"{tmp_path}:{JDBC_JAR}", "JdbcSchemaChange",
             f"jdbc:postgresql://127.0.0.1:{port}/{APP_DB}", APP_USER, APP_PASSWORD],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = java.stdout.readline()
            assert ready.startswith("READY columns=2 values=1,one"), \
                ready + java.stderr.read() if java.poll() is not None else ready
            cluster.primary.sql("alter table jdbc_shape add column c int default 3",
                                dbname=APP_DB)
            if target == "pgvalve":
                before = pool_backends()
                with admin(pv) as a:
                    a.execute(f"RECONNECT {APP_DB}")
                wait_until(lambda: not (pool_backends() & before), 5,
                           message="the idle server connections closed")
            stdout, stderr = java.communicate("go\n", timeout=60)
        finally:
            if java.poll() is None:
                java.kill()
                java.wait()
        assert java.returncode == 0 and stdout.startswith("OK"), stdout + stderr
        seen[target] = stdout.split()[1:]
        errors[target] = stderr[-2000:]
    assert seen["direct"] == ["0A000", "columns=3", "values=1,one,3"], (seen, errors)
    assert seen["pgvalve"] == seen["direct"], (seen, errors)
