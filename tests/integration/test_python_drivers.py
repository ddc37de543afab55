"""Python drivers as an IoT ingestion service really uses them, through transaction pooling with
fewer server connections than clients: asyncpg (its statement cache of `__asyncpg_stmt_N__`
names, a pool of 10 connections over pool_size 2, executemany, transactions and savepoints,
cursors, type introspection, binary COPY, LISTEN, the pool's reset on release, the retry after
ALTER TABLE, timeouts that cancel) and psycopg 3's pipeline mode; on one server, with a replica
taking reads, and over two shards by device_id. The answers asserted are those PostgreSQL
itself gives the same code. An audit with these drivers found what the tests below pin.

asyncpg runs in asyncio.run() inside each test; every wait is bounded (asyncio.wait with a
timeout, then Connection.terminate(), since a cancelled asyncpg query waits for the server)."""

from __future__ import annotations

import asyncio
import io
import json
import random
import struct
import threading
import time

import asyncpg
import psycopg
import pytest

from itutil import APP_AND_OPS, app_backends, drain_notifies, fresh_table
from pgcluster import APP_DB, APP_PASSWORD, APP_USER, wait_until
from pgwire import message, query_message, read_message
from pgwire_ext import ExtClient, describe, flush, parse
from test_admin_console import admin
# two_pc: two shards whose servers allow prepared transactions (a module fixture: this module
# gets clusters of its own).
from test_sharding_writes import config as sharded_config, md5_mod, two_pc  # noqa: F401

POOL = {"mode": "transaction", "pool_size": 2, "max_overflow": 0, "checkout_timeout_ms": 10000}


def adsn(pv) -> str:
    """asyncpg's DSN: it sends unknown URI parameters (connect_timeout) as server settings."""
    return f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{pv.port}/{APP_DB}"


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def bounded(conn, coro, timeout: float):
    """(True, result) or (False, None) when `coro` on `conn` did not finish within `timeout`;
    the connection is then terminated, so that nothing waits for a hung server."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        conn.terminate()
        try:
            await asyncio.wait_for(task, 2)
        except BaseException:  # noqa: BLE001 - the task dies with its connection
            pass
        return False, None
    return True, task.result()


def assert_pgvalve_refusal(err, sqlstate):
    assert getattr(err, "sqlstate", None) == sqlstate, repr(err)
    assert str(err).startswith("pgvalve:"), repr(err)


@pytest.fixture
def pv(pgvalve):
    return pgvalve(**POOL)


# --- asyncpg over one server ------------------------------------------------------------------

def test_asyncpg_pool_shares_two_servers_with_its_statement_cache(pv, cluster):
    # Each connection numbers its statements itself: `__asyncpg_stmt_1__` is another text on
    # each of them, and all ten share the two server connections.
    async def main():
        pool = await asyncpg.create_pool(adsn(pv), min_size=10, max_size=10)

        async def worker(k):
            async with pool.acquire() as c:
                texts = [f"select $1::int + {j}" for j in range(6)]
                random.Random(k).shuffle(texts)
                for i in range(10):
                    for text in texts:
                        assert await c.fetchval(text, i) == i + int(text.rsplit(" ", 1)[1])
                    row = await c.fetchrow("select $1::text as a, $2::int8 as b", str(i), k)
                    assert (row["a"], row["b"]) == (str(i), k)
                    rows = await c.fetch("select g from generate_series(1, $1::int) g", i % 4 + 1)
                    assert [r["g"] for r in rows] == list(range(1, i % 4 + 2))
                return await c.fetchval(r"select count(*) from pg_prepared_statements "
                                        r"where name like 'pgv\_%'")

        named = await asyncio.gather(*[worker(k) for k in range(10)])
        await pool.close()
        return named

    assert all(n >= 1 for n in run(main())), "statements were not prepared by name server-side"
    assert app_backends(cluster) <= 2


def test_asyncpg_executemany_is_atomic_and_the_connection_goes_on(pv, cluster):
    fresh_table(cluster, "em", "device_id int, value float8 check (value >= 0)")

    async def main():
        c = await asyncpg.connect(adsn(pv))
        # Thousands of Bind/Execute pairs before one Sync.
        await c.executemany("insert into em values ($1, $2)",
                            [(i % 50, float(i)) for i in range(5000)])
        assert await c.fetchval("select count(*) from em") == 5000
        # A row that fails near the end: none of the batch is written.
        with pytest.raises(asyncpg.CheckViolationError):
            await c.executemany("insert into em values ($1, $2)",
                                [(1, 1.0)] * 2000 + [(1, -1.0)] + [(1, 2.0)] * 50)
        assert await c.fetchval("select count(*) from em") == 5000
        assert not c.is_in_transaction()
        # Inside a transaction, a failed executemany in a savepoint leaves the rest.
        async with c.transaction():
            await c.execute("insert into em values (7000, 1)")
            with pytest.raises(asyncpg.CheckViolationError):
                async with c.transaction():
                    await c.executemany("insert into em values ($1, $2)",
                                        [(7000, 1.0), (7000, -1.0)])
            await c.execute("insert into em values (7000, 2)")
        assert await c.fetchval("select count(*) from em where device_id = 7000") == 2
        await c.close()

    run(main())


def test_asyncpg_transactions_savepoints_isolation_and_read_only(pv, cluster):
    fresh_table(cluster, "tx", "device_id int, value float8")

    async def main():
        pool = await asyncpg.create_pool(adsn(pv), min_size=4, max_size=4)
        out = []
        async with pool.acquire() as c:
            async with c.transaction():
                await c.execute("insert into tx values (1, 1)")
                with pytest.raises(RuntimeError):
                    async with c.transaction():  # a savepoint, rolled back
                        await c.execute("insert into tx values (1, 2)")
                        raise RuntimeError("roll the savepoint back")
                async with c.transaction():
                    await c.execute("insert into tx values (1, 3)")
            out.append(sorted(r[0] for r in await c.fetch("select value from tx")))
            async with c.transaction(isolation="serializable", readonly=True):
                out.append(await c.fetchval("show transaction_isolation"))
                out.append(await c.fetchval("show transaction_read_only"))
            async with c.transaction(isolation="repeatable_read"):
                out.append(await c.fetchval("show transaction_isolation"))
            out.append(await c.fetchval("show transaction_isolation"))
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                async with c.transaction(readonly=True):
                    await c.execute("insert into tx values (1, 9)")
        await pool.close()
        return out

    assert run(main()) == [[1.0, 3.0], "serializable", "on", "repeatable read", "read committed"]


def test_asyncpg_cursors_in_transactions(pv):
    async def main():
        pool = await asyncpg.create_pool(adsn(pv), min_size=6, max_size=6)

        async def worker(k):
            async with pool.acquire() as c:
                for _ in range(3):
                    async with c.transaction():
                        total = 0
                        async for r in c.cursor("select g from generate_series(1, $1::int) g",
                                                100 + k, prefetch=16):
                            total += r[0]
                        assert total == (100 + k) * (101 + k) // 2
                        cur = await c.cursor("select g from generate_series(1, 1000) g")
                        assert [r[0] for r in await cur.fetch(3)] == [1, 2, 3]
                        await cur.forward(500)
                        assert (await cur.fetchrow())[0] == 504
                assert await c.fetchval("select 7") == 7

        await asyncio.gather(*[worker(k) for k in range(6)])
        await pool.close()

    run(main())


def test_asyncpg_type_introspection_and_codecs(pv, cluster):
    cluster.primary.sql("drop table if exists typed; drop type if exists reading_kind; "
                        "drop type if exists geo", dbname=APP_DB)

    async def main():
        c = await asyncpg.connect(adsn(pv))
        await c.execute("create type reading_kind as enum ('temp', 'hum'); "
                        "create type geo as (lat float8, lon float8); "
                        "create table typed (device_id int, kind reading_kind, loc geo, "
                        "tags text[], meta jsonb)")
        await c.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                               schema="pg_catalog")
        await c.execute("insert into typed values ($1, $2, $3, $4, $5)", 4, "hum", (1.5, 2.5),
                        ["a", "b"], {"fw": "1.2", "n": [1, 2]})
        row = await c.fetchrow("select kind, loc, tags, meta from typed where device_id = $1", 4)
        kinds = await c.fetchval("select array_agg(kind) from typed")
        await c.close()
        return row["kind"], tuple(row["loc"]), row["tags"], row["meta"], kinds

    assert run(main()) == ("hum", (1.5, 2.5), ["a", "b"], {"fw": "1.2", "n": [1, 2]}, ["hum"])


def test_asyncpg_binary_copy_in_and_out(pv, cluster):
    fresh_table(cluster, "cp", "device_id int, value float8")

    async def main():
        c = await asyncpg.connect(adsn(pv))
        out = [await c.copy_records_to_table("cp", records=[(i % 2, float(i)) for i in range(1000)],
                                             columns=["device_id", "value"])]
        out.append(await c.fetchval("select count(*) from cp"))
        buf = io.BytesIO()
        out.append(await c.copy_from_query("select * from cp where device_id = $1", 0,
                                           output=buf, format="csv"))
        out.append(len(buf.getvalue().splitlines()))
        out.append(await c.copy_from_table("cp", output=io.BytesIO(), format="binary"))
        async with c.transaction():
            out.append(await c.copy_records_to_table("cp", records=[(5, 1.0)]))
        out.append(await c.copy_to_table("cp", source=io.BytesIO(b"6\t1\n6\t2\n")))
        await c.close()
        return out

    assert run(main()) == ["COPY 1000", 1000, "COPY 500", 500, "COPY 1000", "COPY 1", "COPY 2"]


def test_asyncpg_listeners_hear_notifications_from_the_pool(pv):
    async def main():
        got = []
        enough = asyncio.Event()
        listener = await asyncpg.connect(adsn(pv))

        def heard(conn, pid, channel, payload):
            got.append((channel, payload))
            if len(got) == 3:
                enough.set()

        await listener.add_listener("ingest", heard)
        pool = await asyncpg.create_pool(adsn(pv), min_size=3, max_size=3)
        for i in range(3):
            async with pool.acquire() as n:
                await n.execute("select pg_notify('ingest', $1)", str(i))
        await asyncio.wait_for(enough.wait(), 5)
        assert await listener.fetchval("select 1") == 1
        await listener.remove_listener("ingest", heard)
        await pool.execute("notify ingest, 'after'")
        await asyncio.sleep(0.3)
        await listener.close()
        await pool.close()
        return sorted(got)

    assert run(main()) == [("ingest", "0"), ("ingest", "1"), ("ingest", "2")]


def test_asyncpg_pool_release_resets_what_the_connection_set(pv):
    # Pool.release runs Connection.reset(): pg_advisory_unlock_all(), CLOSE ALL, UNLISTEN *,
    # RESET ALL in one query. RESET ALL returns to the settings given at connect. The lock pins
    # the server, so the reset is followed by pgvalve's pin check, and the next acquire's query
    # may reach pgvalve while the check runs: it must wait for it and for the settings sync
    # (it ran without the sync about one time in seven before; hence several rounds).
    async def main():
        pool = await asyncpg.create_pool(adsn(pv), min_size=1, max_size=1, server_settings={
            "statement_timeout": "4321", "application_name": "ingest"})
        async with pool.acquire() as c:
            assert await c.fetchval("show statement_timeout") == "4321ms"
            await c.execute("set statement_timeout = 999")
            await c.execute("set work_mem = '7MB'")
            assert await c.fetchval("select pg_try_advisory_lock(777)") is True
        async with pool.acquire() as c:
            seen = [await c.fetchval("show statement_timeout"),
                    await c.fetchval("show application_name"),
                    await c.fetchval("show work_mem")]
        other = await asyncpg.connect(adsn(pv))
        free = await other.fetchval("select pg_try_advisory_lock(777)")
        await other.fetchval("select pg_advisory_unlock_all()")
        await other.close()
        await pool.close()
        return seen, free

    for _ in range(20):
        assert run(main()) == (["4321ms", "ingest", "4MB"], True)


def test_asyncpg_retries_a_statement_alter_table_invalidated(pv, cluster):
    fresh_table(cluster, "inv", "a int, b int")
    cluster.primary.sql("insert into inv values (1, 2)", dbname=APP_DB)

    async def main():
        c = await asyncpg.connect(adsn(pv))
        first = dict(await c.fetchrow("select * from inv where a = $1", 1))
        cluster.primary.sql("alter table inv add column c int default 3", dbname=APP_DB)
        # Outside a transaction asyncpg prepares the text again and retries.
        second = dict(await c.fetchrow("select * from inv where a = $1", 1))
        cluster.primary.sql("alter table inv add column d int default 4", dbname=APP_DB)
        # Inside one it cannot: it raises, and the next use prepares again.
        with pytest.raises(asyncpg.InvalidCachedStatementError):
            async with c.transaction():
                await c.fetchrow("select * from inv where a = $1", 1)
        third = dict(await c.fetchrow("select * from inv where a = $1", 1))
        await c.close()
        return first, second, third

    assert run(main()) == ({"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 3},
                           {"a": 1, "b": 2, "c": 3, "d": 4})


def test_asyncpg_retries_after_alter_table_also_on_a_server_that_never_held_the_statement(
        pgvalve, cluster):
    """asyncpg decodes a cached statement's rows by the columns its prepare was told. A server
    that prepares the statement after ALTER TABLE (RECONNECT replaced every server here) would
    send rows of the new shape under the old description; PostgreSQL, and so pgvalve, refuse the
    cached statement instead (0A000), which asyncpg takes as its cue to prepare again."""
    pv = pgvalve(users=APP_AND_OPS, **POOL)
    fresh_table(cluster, "inv2", "a int, b int")
    cluster.primary.sql("insert into inv2 values (1, 2)", dbname=APP_DB)

    def pool_backends():
        return {r[0] for r in cluster.primary.sql(
            "select pid from pg_stat_activity where usename = %s and datname = %s and "
            "backend_type = 'client backend' and application_name <> 'pgvalve health check'",
            (APP_USER, APP_DB))}

    def alter_and_replace_servers(column):
        cluster.primary.sql(f"alter table inv2 add column {column} int default 5", dbname=APP_DB)
        before = pool_backends()
        assert before, "the statement's server is pooled"
        with admin(pv) as a:
            a.execute(f"RECONNECT {APP_DB}")
        wait_until(lambda: not (pool_backends() & before), 5,
                   message="the idle server connections closed")

    async def main():
        c = await asyncpg.connect(adsn(pv))
        first = dict(await c.fetchrow("select * from inv2 where a = $1", 1))
        alter_and_replace_servers("c")
        # Outside a transaction asyncpg prepares the text again and retries.
        second = dict(await c.fetchrow("select * from inv2 where a = $1", 1))
        alter_and_replace_servers("d")
        # Inside one it cannot: it raises, and the next use prepares again.
        with pytest.raises(asyncpg.InvalidCachedStatementError):
            async with c.transaction():
                await c.fetchrow("select * from inv2 where a = $1", 1)
        third = dict(await c.fetchrow("select * from inv2 where a = $1", 1))
        # And it keeps running.
        fourth = dict(await c.fetchrow("select * from inv2 where a = $1", 1))
        await c.close()
        return first, second, third, fourth

    assert run(main()) == ({"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 5},
                           {"a": 1, "b": 2, "c": 5, "d": 5}, {"a": 1, "b": 2, "c": 5, "d": 5})


def test_asyncpg_timeouts_cancel_only_their_own_query(pv):
    async def main():
        pool = await asyncpg.create_pool(adsn(pv), min_size=10, max_size=10)

        async def slow(k):
            async with pool.acquire() as c:
                with pytest.raises(asyncio.TimeoutError):
                    await c.fetchval("select pg_sleep(3)", timeout=0.3)
                return await c.fetchval("select $1::int", k)

        async def fast(k):
            async with pool.acquire() as c:
                return sum([await c.fetchval("select $1::int from pg_sleep(0.05)", i)
                            for i in range(5)])

        started = time.monotonic()
        got = await asyncio.gather(*[slow(k) for k in range(3)], *[fast(k) for k in range(5)])
        await pool.close()
        return got, time.monotonic() - started

    got, took = run(main())
    assert got == [0, 1, 2, 10, 10, 10, 10, 10]
    assert took < 3, f"a cancelled pg_sleep(3) was waited for ({took:.1f} s)"


def test_asyncpg_connection_gone_mid_transaction_leaves_nothing(pv, cluster):
    fresh_table(cluster, "gone", "device_id int")

    async def main():
        pool = await asyncpg.create_pool(adsn(pv), min_size=2, max_size=2)
        c = await pool.acquire()
        tr = c.transaction()
        await tr.start()
        await c.execute("insert into gone values (1)")
        await pool.release(c)  # asyncpg's reset rolls back
        c = await asyncpg.connect(adsn(pv))
        await c.execute("begin")
        await c.execute("insert into gone values (2)")
        await c.fetchval("select pg_advisory_xact_lock(4242)")
        c.terminate()
        await asyncio.sleep(0.3)
        out = [await pool.fetchval("select count(*) from gone"),
               await pool.fetchval("select pg_try_advisory_xact_lock(4242)")]
        await pool.close()
        return out

    assert run(main()) == [0, True]


def test_asyncpg_prepare_does_not_hold_a_server_until_the_next_sync(pgvalve):
    """Connection.prepare() sends Parse/Describe/Flush (no Sync). The server goes back to the
    pool once it has described the statement: two connections that prepared their statements
    at start-up do not take both servers of pool_size 2 (they did: every other client got
    53300)."""
    pv = pgvalve(**dict(POOL, checkout_timeout_ms=1500))

    async def main():
        a, b, c = [await asyncpg.connect(adsn(pv)) for _ in range(3)]
        await a.prepare("select $1::int + 1")
        await b.prepare("select $1::int + 2")
        await a.execute("select 1")  # a simple query, answered with ReadyForQuery 'I'
        try:
            return await c.fetchval("select 3")
        except asyncpg.TooManyConnectionsError as e:
            return f"{e.sqlstate}: {e}"
        finally:
            for x in (a, b, c):
                x.terminate()

    assert run(main()) == 3


def test_asyncpg_listeners_do_not_take_a_server_each(pgvalve):
    """add_listener() sends `LISTEN "ch"` as asyncpg sends every statement: Parse/Describe/
    Flush, then Bind/Execute/Sync of the named statement. It goes to the listening connection,
    as psycopg's simple-query LISTEN does: idle listeners hold no server (two of them took both
    servers of pool_size 2, pinned)."""
    pv = pgvalve(**dict(POOL, checkout_timeout_ms=1500))

    async def main():
        listeners = []
        for i in range(2):
            conn = await asyncpg.connect(adsn(pv))
            await conn.add_listener(f"ch{i}", lambda *a: None)
            listeners.append(conn)
        other = await asyncpg.connect(adsn(pv))
        try:
            return await other.fetchval("select 3")
        except asyncpg.TooManyConnectionsError as e:
            return f"{e.sqlstate}: {e}"
        finally:
            for x in listeners + [other]:
                x.terminate()

    assert run(main()) == 3


# --- asyncpg and psycopg with a replica taking reads ------------------------------------------

def replicated(cluster, **overrides):
    shard = {"name": "s0", "primary": f"127.0.0.1:{cluster.primary.port}",
             "replicas": [f"127.0.0.1:{r.port}" for r in cluster.replicas]}
    conf = dict(POOL, databases={APP_DB: {"shards": [shard]}},
                health={"interval_ms": 100, "timeout_ms": 1000, "failures_before_down": 2})
    conf.update(overrides)
    return conf


@pytest.fixture
def rv(pgvalve, cluster):
    fresh_table(cluster, "rr", "device_id int, value float8")
    cluster.primary.psql("GRANT pg_monitor TO app")
    cluster.wait_replay()
    pv = pgvalve(**replicated(cluster))

    async def replica_reads():
        c = await asyncpg.connect(adsn(pv))
        try:
            for _ in range(100):
                if await c.fetchval("select pg_is_in_recovery()"):
                    return True
                await asyncio.sleep(0.05)
            return False
        finally:
            await c.close()

    assert run(replica_reads()), "reads never reached the replica"
    return pv


W = "select pg_is_in_recovery()"


def test_asyncpg_reads_go_to_the_replica_and_writes_to_the_primary(rv):
    async def main():
        pool = await asyncpg.create_pool(adsn(rv), min_size=4, max_size=4)
        out = {}
        async with pool.acquire() as c:
            out["read"] = await c.fetchval(W)
            out["read_param"] = await c.fetchval("select pg_is_in_recovery() and $1::int = 1", 1)
            async with c.transaction(readonly=True):
                out["read_only_tx"] = await c.fetchval(W)
                out["cursor"] = len([r async for r in c.cursor(
                    "select g from generate_series(1, 50) g", prefetch=7)])
            out["write"] = await c.fetchval(
                "insert into rr values ($1, $2) returning pg_is_in_recovery()", 1, 1.0)
            async with c.transaction():
                out["tx"] = await c.fetchval(W)
            await c.executemany("insert into rr values ($1, $2)",
                                [(2, float(i)) for i in range(10)])
            out["own_writes"] = await c.fetchval("select count(*) from rr where device_id = 2")
        await pool.close()
        return out

    assert run(main()) == {"read": True, "read_param": True, "read_only_tx": True, "cursor": 50,
                           "write": False, "tx": False, "own_writes": 10}


def test_asyncpg_write_after_prepare_goes_to_the_primary(rv):
    """After Connection.prepare() of a read (Parse/Describe/Flush, which ran on the replica),
    the client's next simple-query writes and transactions run on the primary (they stayed on
    the replica's server and failed with 25006)."""
    async def main():
        c = await asyncpg.connect(adsn(rv))
        try:
            await c.prepare("select device_id from rr limit 1")
            status = await c.execute("insert into rr values (42, 1)")
            async with c.transaction():
                in_tx = await c.fetchval("insert into rr values (43, 1) returning "
                                         "pg_is_in_recovery()")
            return status, in_tx
        except asyncpg.PostgresError as e:
            return f"{e.sqlstate}: {e}"
        finally:
            c.terminate()

    assert run(main()) == ("INSERT 0 1", False)


def test_asyncpg_copy_records_to_table_with_a_replica(rv):
    """copy_records_to_table describes `SELECT cols FROM t LIMIT 1` with Parse/Describe/
    Flush, then sends `COPY t FROM STDIN (FORMAT binary)` and its data without waiting for
    CopyInResponse. With a replica the COPY runs on the primary, also right after a write of
    the client (it ran where the describe ran: on the replica, 25006, or the data never reached
    the COPY and the client hung)."""
    async def main():
        out = []
        for write_first in (False, True):
            c = await asyncpg.connect(adsn(rv))
            if write_first:
                await c.execute("insert into rr values (1, 1)")
            try:
                finished, status = await bounded(
                    c, c.copy_records_to_table("rr", records=[(3, 1.0)] * 5), 3)
                out.append(status if finished else "hung")
            except asyncpg.PostgresError as e:
                out.append(f"{e.sqlstate}: {e}")
            finally:
                c.terminate()
        return out

    assert run(main()) == ["COPY 5", "COPY 5"]


def test_copy_data_sent_before_copy_in_response_reaches_the_copy(rv):
    """The hang above without asyncpg: a write, a read described with Parse/Describe/Flush
    (on the primary: read-your-writes), then `COPY ... FROM STDIN` with its CopyData and
    CopyDone in the same packet (as asyncpg and libpq's pipelining send them): the COPY gets its
    data and completes."""
    body = (b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
            + struct.pack("!hiiid", 2, 4, 3, 8, 1.0) * 5 + struct.pack("!h", -1))
    outcomes = []
    for _ in range(2):
        c = ExtClient.login(rv, timeout=2)
        try:
            got = c.simple("insert into rr values (1, 1)").raise_for_error().kinds
            assert got.endswith(b"Z"), got
            c.sock.sendall(parse("s1", "SELECT * FROM rr LIMIT 1") + describe("S", "s1") + flush())
            kinds = b""
            while not kinds.endswith(b"T"):
                kinds += read_message(c.sock)[0]
            c.sock.sendall(query_message("COPY rr FROM STDIN (FORMAT binary)")
                           + message(b"d", body) + message(b"c", b""))
            kinds = b""
            try:
                while not kinds.endswith(b"Z"):
                    kinds += read_message(c.sock)[0]
            except OSError:  # socket.timeout
                kinds += b"...hung"
            outcomes.append(kinds.decode())
        finally:
            c.close_abruptly()
    assert outcomes == ["GCZ", "GCZ"], outcomes


def test_psycopg_pipeline_with_a_replica(rv):
    with psycopg.connect(rv.dsn(), autocommit=True) as c:
        with c.pipeline():
            a = c.execute(W)
            b = c.execute("select %s::int", (5,), prepare=True)
        assert (a.fetchone(), b.fetchone()) == ((True,), (5,))
        with c.pipeline():
            a = c.execute("insert into rr values (%s, %s) returning pg_is_in_recovery()", (7, 1.0))
            b = c.execute("select count(*) from rr where device_id = %s", (7,))
        assert (a.fetchone(), b.fetchone()) == ((False,), (1,))
        with pytest.raises(psycopg.errors.DivisionByZero):
            with c.pipeline():
                c.execute("select 1/0")
                c.execute("insert into rr values (%s, %s)", (8, 1.0))
        assert c.execute("select count(*) from rr where device_id = 8").fetchone() == (0,)


# --- psycopg 3 pipeline mode over one server --------------------------------------------------

def test_psycopg_pipelines(pv, cluster):
    fresh_table(cluster, "pl", "device_id int, value float8 check (value > -1000)")
    with psycopg.connect(pv.dsn(), autocommit=True) as c:
        with c.pipeline():
            a = c.execute("select %s::int + 1", (1,))
            b = c.execute("insert into pl values (%s, %s) returning value", (1, 2.0))
            d = c.execute("select count(*) from pl where device_id = %s", (1,))
        assert [a.fetchone(), b.fetchone(), d.fetchone()] == [(2,), (2.0,), (1,)]
        with c.pipeline():
            with c.cursor() as cur:
                cur.executemany("insert into pl values (%s, %s)",
                                [(2, float(i)) for i in range(100)])
        assert c.execute("select count(*) from pl where device_id = 2").fetchone() == (100,)
        # An error: the statements sent with it up to the Sync are not kept.
        with pytest.raises(psycopg.errors.CheckViolation):
            with c.pipeline():
                c.execute("insert into pl values (%s, %s)", (3, 1.0))
                c.execute("insert into pl values (%s, %s)", (3, -5000.0))
                c.execute("insert into pl values (%s, %s)", (3, 2.0))
        assert c.execute("select count(*) from pl where device_id = 3").fetchone() == (0,)
        assert c.info.transaction_status.name == "IDLE"
    with psycopg.connect(pv.dsn()) as c:  # a transaction
        with c.pipeline():
            c.execute("insert into pl values (%s, %s)", (4, 1.0))
            r = c.execute("select count(*) from pl where device_id = 4")
        c.commit()
        assert r.fetchone() == (1,)

    errors = []

    def prepared(k):
        try:
            with psycopg.connect(pv.dsn(), autocommit=True) as conn:
                for i in range(15):
                    with conn.pipeline():
                        cs = [conn.execute("select %s::int * %s::int", (i, j), prepare=True)
                              for j in range(5)]
                        conn.execute("insert into pl values (%s, %s)", (100 + k, float(i)),
                                     prepare=True)
                    assert [x.fetchone()[0] for x in cs] == [i * j for j in range(5)]
        except Exception as e:  # noqa: BLE001 - collected and reported by the test
            errors.append(f"client {k}: {e!r}")

    threads = [threading.Thread(target=prepared, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    assert cluster.primary.scalar("select count(*) from pl where device_id between 100 and 103",
                                  dbname=APP_DB) == 60


# --- two shards by device_id ------------------------------------------------------------------

def shard_schema(nodes):
    for c in nodes:
        c.primary.psql("DROP TABLE IF EXISTS telemetry, archive, device_types", dbname=APP_DB)
        c.primary.psql("CREATE TABLE telemetry (device_id bigint NOT NULL, value float8)",
                       dbname=APP_DB)
        c.primary.psql("CREATE TABLE archive (device_id bigint NOT NULL, value float8)",
                       dbname=APP_DB)
        c.primary.psql("CREATE TABLE device_types (id int PRIMARY KEY, name text); "
                       "INSERT INTO device_types VALUES (1, 'temp'), (2, 'hum')", dbname=APP_DB)
        c.primary.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO app", dbname=APP_DB)


def on(node, query):
    with node.primary.connect(dbname=APP_DB) as conn:
        return conn.execute(query).fetchall()


D0 = [d for d in range(1, 100) if md5_mod(d) == 0][:4]
D1 = [d for d in range(1, 100) if md5_mod(d) == 1][:4]


@pytest.fixture
def sv(two_pc, pgvalve):
    shard_schema(two_pc)
    conf = sharded_config(two_pc)
    return pgvalve(**dict(conf, **POOL))


def test_asyncpg_statements_of_one_device_reach_its_shard(sv, two_pc):
    """asyncpg sends a Parse without parameter types and the values in binary, typed by the
    server's ParameterDescription (int8 for device_id bigint). With sharding.key_type: bigint
    pgvalve reads them as the key column's type (every statement naming `device_id = $1` was
    refused with 22P02). Its executemany() of rows on both shards is one transaction over both."""
    async def main():
        c = await asyncpg.connect(adsn(sv))
        try:
            for d in (D0[0], D1[0]):
                await c.execute("insert into telemetry (device_id, value) values ($1, $2)", d, 1.5)
            await c.executemany("insert into telemetry (device_id, value) values ($1, $2)",
                                [(D0[1], float(i)) for i in range(5)])
            # Rows of devices on both shards up to one Sync: one transaction over both.
            await c.executemany("insert into telemetry (device_id, value) values ($1, $2)",
                                [(D1[1], 1.0), (D0[2], 2.0), (D1[1], 3.0)])
            return [await c.fetchval("select sum(value) from telemetry where device_id = $1", d)
                    for d in (D0[0], D1[0], D0[1], D1[1], D0[2])]
        except asyncpg.PostgresError as e:
            return f"{e.sqlstate}: {e}"
        finally:
            await c.close()

    assert run(main()) == [1.5, 1.5, 10.0, 4.0, 2.0]
    assert sorted(on(two_pc[0], "select device_id, count(*) from telemetry group by 1")) == \
        sorted([(D0[0], 1), (D0[1], 5), (D0[2], 1)])
    assert sorted(on(two_pc[1], "select device_id, count(*) from telemetry group by 1")) == \
        sorted([(D1[0], 1), (D1[1], 2)])


def test_asyncpg_statements_with_arguments_inside_transactions_on_shards(sv, two_pc):
    """asyncpg prepares a statement (Parse, Describe, Flush) where it first runs it, also inside
    a transaction. While pgvalve held the transaction's BEGIN back, that description took a
    server and began the transaction there: a read over several shards was refused (0A000,
    'send its Sync instead of a Flush'), and a statement for a device of the other shard was
    refused as moving the transaction within one request; once the transaction ran on a shard,
    a new read over several shards was refused the same way."""
    for node, d in ((two_pc[0], D0[0]), (two_pc[1], D1[0])):
        node.primary.psql(f"INSERT INTO telemetry VALUES ({d}, 2), ({d}, 3)", dbname=APP_DB)

    async def main():
        c = await asyncpg.connect(adsn(sv))
        out = []
        try:
            async with c.transaction():
                out.append(await c.fetchval("select count(*) from telemetry where value > $1",
                                            0.0))
            async with c.transaction():
                out.append(await c.fetchval(
                    "select sum(value) from telemetry where device_id = $1", D1[0]))
            async with c.transaction():
                await c.execute("insert into telemetry (device_id, value) values ($1, $2)",
                                D0[1], 7.0)
                out.append(await c.fetchval(
                    "select max(value) from telemetry where device_id = $1 and value > $2",
                    D0[1], 1.0))
            # A transaction over both shards (two-phase commit), each statement new.
            async with c.transaction():
                await c.execute("insert into telemetry (value, device_id) values ($1, $2)",
                                8.0, D1[1])
                await c.execute("insert into telemetry (device_id, value) values ($2, $1)",
                                8.0, D0[2])
                out.append(await c.fetchval("select count(*) from telemetry where value > $1",
                                            6.5))
        except asyncpg.PostgresError as e:
            out.append(f"{e.sqlstate}: {e}")
        finally:
            await c.close()
        return out

    assert run(main()) == [4, 5.0, 7.0, 3]
    assert sorted(on(two_pc[0], "select device_id, value from telemetry where value > 6")) == \
        sorted([(D0[1], 7.0), (D0[2], 8.0)])
    assert on(two_pc[1], "select device_id, value from telemetry where value > 6") == \
        [(D1[1], 8.0)]


def test_asyncpg_cursors_over_shards(sv, two_pc):
    """asyncpg's cursors (in a transaction) fetch a portal a few rows at a time: iterated with
    a prefetch (Bind and the first Execute in one request), or bound alone and fetched with
    Cursor.fetch(). Over several shards every row comes, in order; a second fetch failed before
    (and a cursor bound alone then read one shard's rows only). Cursor.forward() runs SQL's MOVE,
    another statement, which ends such a portal: refused, saying so."""
    rows = {0: [d for d in D0 for _ in range(4)], 1: [d for d in D1 for _ in range(4)]}
    for i, node in enumerate(two_pc):
        node.primary.psql("INSERT INTO telemetry (device_id, value) VALUES " +
                          ", ".join(f"({d}, {n})" for n, d in enumerate(rows[i])), dbname=APP_DB)
    want = sorted((d, float(n)) for i in (0, 1) for n, d in enumerate(rows[i]))
    sql = "select device_id, value from telemetry order by device_id, value"

    async def main():
        c = await asyncpg.connect(adsn(sv))
        try:
            async with c.transaction():
                iterated = [tuple(r) async for r in c.cursor(sql, prefetch=5)]
            async with c.transaction():
                cur = await c.cursor(sql)
                fetched = [tuple(r) for r in await cur.fetch(7)]
                fetched += [tuple(r) for r in await cur.fetch(7)]
                fetched += [tuple(r) for r in await cur.fetch(100)]
            # SQL's MOVE (Cursor.forward()) is another statement: it ends such a portal.
            moved = None
            try:
                async with c.transaction():
                    cur = await c.cursor(sql)
                    await cur.fetch(2)
                    await cur.forward(1)
            except asyncpg.PostgresError as e:
                moved = e
            return iterated, fetched, moved
        finally:
            await c.close()

    iterated, fetched, moved = run(main())
    assert iterated == want
    assert fetched == want
    assert isinstance(moved, asyncpg.InvalidCursorNameError), moved
    assert str(moved).startswith("pgvalve: portal"), moved


def test_asyncpg_pool_release_on_a_sharded_database(sv):
    """Pool.release() runs Connection.reset(), one simple query `SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`. On a sharded database it runs
    on any shard, as statements on no table do (it was refused as several statements in one
    query: every release raised and asyncpg dropped the connection)."""
    async def main():
        pool = await asyncpg.create_pool(adsn(sv), min_size=2, max_size=2)
        try:
            async with pool.acquire() as c:
                assert await c.fetchval("select count(*) from device_types") == 2
            return await pool.fetchval("select 1")
        except asyncpg.PostgresError as e:
            return f"{e.sqlstate}: {e}"
        finally:
            pool.terminate()

    assert run(main()) == 1


def test_asyncpg_fetchval_and_fetchrow_of_a_read_over_shards(sv, two_pc):
    """fetchval()/fetchrow() send Execute with a row limit of 1 (then Sync): over several shards
    the client gets the first row as from one server (it was refused with 0A000 'fetching rows in
    parts is not done across shards')."""
    for node, d in ((two_pc[0], D0[0]), (two_pc[1], D1[0])):
        node.primary.psql(f"INSERT INTO telemetry VALUES ({d}, 2), ({d}, 3)", dbname=APP_DB)

    async def main():
        c = await asyncpg.connect(adsn(sv))
        out = [await c.fetch("select count(*) from telemetry")]
        try:
            out.append(await c.fetchval("select count(*) from telemetry"))
            out.append(tuple(await c.fetchrow(
                "select device_id, value from telemetry order by value desc, device_id desc "
                "limit 1")))
            # The first of several rows (the server's portal suspends after it).
            out.append(tuple(await c.fetchrow(
                "select device_id, value from telemetry order by value, device_id")))
            out.append(await c.fetchval("select count(*) from telemetry"))  # connection fine
        except asyncpg.PostgresError as e:
            out.append(f"{e.sqlstate}: {e}")
        await c.close()
        return out

    got = run(main())
    assert got[0][0]["count"] == 4
    assert got[1:] == [4, (max(D0[0], D1[0]), 3.0), (min(D0[0], D1[0]), 2.0), 4], got


def test_asyncpg_on_shards_what_works(sv, two_pc):
    # Without Bind values for the key: reads gathered from both shards with fetch(), a
    # transaction over both shards (two-phase commit), text COPY split by row, and binary COPY
    # (copy_records_to_table) split by tuple.
    for node, d in ((two_pc[0], D0[0]), (two_pc[1], D1[0])):
        node.primary.psql(f"INSERT INTO telemetry VALUES ({d}, 1), ({d}, 2)", dbname=APP_DB)

    async def main():
        c = await asyncpg.connect(adsn(sv))
        out = [[tuple(r) for r in await c.fetch(
            "select device_id, value from telemetry order by device_id, value desc limit 3")]]
        out.append([tuple(r) for r in await c.fetch(
            "select device_id, count(*) from telemetry group by device_id order by device_id")])
        async with c.transaction():
            await c.execute(f"insert into archive (device_id, value) values ({D0[1]}, 1)")
            await c.execute(f"insert into archive (device_id, value) values ({D1[1]}, 2)")
        with pytest.raises(RuntimeError):
            async with c.transaction():
                await c.execute(f"insert into archive (device_id, value) values ({D0[2]}, 1)")
                await c.execute(f"insert into archive (device_id, value) values ({D1[2]}, 2)")
                raise RuntimeError("roll both parts back")
        data = "".join(f"{d}\t{v}\n" for d in (D0[2], D1[2]) for v in range(3)).encode()
        out.append(await c.copy_to_table("archive", source=io.BytesIO(data),
                                         columns=["device_id", "value"]))
        out.append(await c.copy_records_to_table(
            "archive", records=[(d, 10.0 + v) for d in (D0[3], D1[3]) for v in range(2)],
            columns=["device_id", "value"]))
        out.append(await c.fetchval("select 5"))
        await c.close()
        return out

    d_lo, d_hi = sorted((D0[0], D1[0]))
    assert run(main()) == [[(d_lo, 2.0), (d_lo, 1.0), (d_hi, 2.0)], [(d_lo, 2), (d_hi, 2)],
                           "COPY 6", "COPY 4", 5]
    assert sorted(on(two_pc[0], "select device_id, value from archive")) == \
        sorted([(D0[1], 1.0)] + [(D0[2], float(v)) for v in range(3)] + [(D0[3], 10.0),
                                                                         (D0[3], 11.0)])
    assert sorted(on(two_pc[1], "select device_id, value from archive")) == \
        sorted([(D1[1], 2.0)] + [(D1[2], float(v)) for v in range(3)] + [(D1[3], 10.0),
                                                                         (D1[3], 11.0)])


def test_psycopg_pipelines_on_shards(sv, two_pc):
    with psycopg.connect(sv.dsn(), autocommit=True) as c:
        with c.pipeline():
            a = c.execute("insert into archive (device_id, value) values (%s, %s) "
                          "returning value", (D0[0], 7.0))
            b = c.execute("select count(*) from archive where device_id = %s", (D0[0],))
        assert (a.fetchone(), b.fetchone()) == ((7.0,), (1,))
        # Two shards up to one Sync: one implicit transaction, committed on both.
        with c.pipeline():
            c.execute("insert into archive (device_id, value) values (%s, %s)", (D0[0], 8.0))
            c.execute("insert into archive (device_id, value) values (%s, %s)", (D1[0], 8.0))
        # ... and when its last statement fails, nothing of it is written on either shard.
        with pytest.raises(psycopg.errors.DivisionByZero):
            with c.pipeline():
                c.execute("insert into archive (device_id, value) values (%s, %s)", (D0[0], 10.0))
                c.execute("insert into archive (device_id, value) values (%s, %s)", (D1[0], 10.0))
                c.execute("insert into archive (device_id, value) values (%s, 1 / %s)",
                          (D0[0], 0))
        # A Sync between them: each reaches its shard.
        with c.pipeline() as p:
            c.execute("insert into archive (device_id, value) values (%s, %s)", (D0[0], 9.0),
                      prepare=True)
            p.sync()
            c.execute("insert into archive (device_id, value) values (%s, %s)", (D1[0], 9.0),
                      prepare=True)
    with psycopg.connect(sv.dsn()) as c:  # a transaction over both shards
        with c.pipeline() as p:
            c.execute("insert into archive (device_id, value) values (%s, %s)", (D0[1], 1.0))
            p.sync()
            c.execute("insert into archive (device_id, value) values (%s, %s)", (D1[1], 1.0))
        c.commit()
    assert sorted(on(two_pc[0], "select device_id, value from archive")) == \
        sorted([(D0[0], 7.0), (D0[0], 8.0), (D0[0], 9.0), (D0[1], 1.0)])
    assert sorted(on(two_pc[1], "select device_id, value from archive")) == \
        sorted([(D1[0], 8.0), (D1[0], 9.0), (D1[1], 1.0)])


def test_asyncpg_listener_hears_every_shard(sv, two_pc):
    """An asyncpg listener (LISTEN through Parse/Describe/Flush + Bind/Execute/Sync) listens on
    every shard, as psycopg's LISTEN does, and hears a NOTIFY from s1 (it ran on one pooled
    server of the first shard and heard only s0)."""
    async def main():
        got = []
        conn = await asyncpg.connect(adsn(sv))
        await conn.add_listener("ingest", lambda c, pid, channel, payload: got.append(payload))
        await asyncio.sleep(0.3)
        for i, node in enumerate(two_pc):
            node.primary.sql(f"notify ingest, 'from-s{i}'", dbname=APP_DB)
        for _ in range(40):
            if len(got) == 2:
                break
            await asyncio.sleep(0.05)
        conn.terminate()
        return sorted(got)

    assert run(main()) == ["from-s0", "from-s1"]


def test_notify_in_a_read_of_a_reference_table(sv):
    """pg_notify() in a read of a reference table sends one notification, from one shard's
    primary: it used to be taken for a write to the table, run on every shard and prepared for
    two-phase commit, which PostgreSQL refuses for a transaction that notified (0A000)."""
    with psycopg.connect(sv.dsn(), autocommit=True) as listener, \
            psycopg.connect(sv.dsn(), autocommit=True) as c:
        listener.execute("LISTEN ingest")
        try:
            got = c.execute("select pg_notify('ingest', name) from device_types where id = 1") \
                .fetchall()
        except psycopg.Error as e:
            got = f"{e.sqlstate}: {e}"
        assert got == [("",)]
        assert drain_notifies(listener, 1, 2) == [("ingest", "temp")]
