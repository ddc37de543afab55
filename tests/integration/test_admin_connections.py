"""Admin console commands that act on connections, as PgBouncer's do, against real PostgreSQL:
RECONNECT and WAIT_CLOSE (server connections replaced, a lent one only once it comes back),
KILL (clients and servers gone now, the database paused), KILL_CLIENT, DISABLE / ENABLE, and
SHOW DATABASES / USERS / LISTS / STATE."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest

from itutil import APP_AND_OPS, APP_USER, OPS_USER, assert_pgvalve_message, raw_login
from pgcluster import APP_DB, wait_until
from pgwire import PgWireError, read_error_then_close
from test_admin_console import admin, rows_of
from test_http import get, scrape


def backends(cluster) -> set[int]:
    """The primary's backends serving pgvalve's pools (not its health checks)."""
    return {r[0] for r in cluster.primary.sql(
        "select pid from pg_stat_activity where usename = %s and backend_type = 'client backend'"
        " and application_name <> 'pgvalve health check'", (APP_USER,))}


def client_id(a, raw) -> str:
    """The SHOW CLIENTS id of a raw client, found by its port."""
    port = str(raw.sock.getsockname()[1])
    (row,) = [r for r in rows_of(a, "SHOW CLIENTS") if r["port"] == port]
    return row["id"]


def test_reconnect_replaces_servers_and_wait_close_waits_for_the_lent_one(pgvalve, cluster):
    pv = pgvalve(users=APP_AND_OPS, pool_size=4)
    with pv.connect() as idle_client, pv.connect() as busy:
        # The transaction holds one server; the other client's goes back to the pool idle.
        busy.execute("begin")
        busy_pid = busy.execute("select pg_backend_pid()").fetchone()[0]
        idle_pid = idle_client.execute("select pg_backend_pid()").fetchone()[0]
        assert idle_pid != busy_pid
        with admin(pv) as a:
            assert a.execute(f"RECONNECT {APP_DB}").statusmessage == "RECONNECT"
            # The idle one is closed at once; the lent one is marked and stays lent.
            wait_until(lambda: idle_pid not in backends(cluster), 5,
                       message="the idle server connection closed")
            servers = {r["id"]: r for r in rows_of(a, "SHOW SERVERS")}
            marked = [r for r in servers.values() if r["state"] == "active"]
            assert len(marked) == 1 and marked[0]["close_needed"] == "1", servers
            assert busy_pid in backends(cluster)

            waited = {}

            def wait_close():
                with admin(pv) as w:
                    waited["tag"] = w.execute(f"WAIT_CLOSE {APP_DB}").statusmessage
                    waited["at"] = time.monotonic()

            t = threading.Thread(target=wait_close)
            t.start()
            time.sleep(0.5)
            assert "tag" not in waited, "WAIT_CLOSE returned while a marked server was lent"
            # The transaction is not disturbed: it commits on the same server.
            assert busy.execute("select pg_backend_pid()").fetchone()[0] == busy_pid
            committed_at = time.monotonic()
            busy.execute("commit")
            t.join(timeout=10)
            assert waited.get("tag") == "WAIT_CLOSE" and waited["at"] >= committed_at
            assert busy_pid not in backends(cluster)
            # New server connections serve both clients, and are not marked.
            assert busy.execute("select pg_backend_pid()").fetchone()[0] not in (idle_pid, busy_pid)
            assert idle_client.execute("select pg_backend_pid()").fetchone()[0] not in (
                idle_pid, busy_pid)
            assert all(r["close_needed"] == "0" for r in rows_of(a, "SHOW SERVERS"))
            assert a.execute("WAIT_CLOSE").statusmessage == "WAIT_CLOSE"  # nothing left: at once
    assert "reconnect" in pv.log_text()


def test_kill_disconnects_clients_closes_servers_and_pauses_until_resume(pgvalve, cluster):
    pv = pgvalve(users=APP_AND_OPS, pool_size=4, checkout_timeout_ms=10000)
    with pv.connect() as setup:
        setup.execute("create table if not exists killed_writes (n int)")
        setup.execute("truncate killed_writes")
    idle_client = raw_login(pv)
    idle_client.query("select 1")
    busy = raw_login(pv)
    busy.query("begin")
    busy.query("insert into killed_writes values (1)")
    before = backends(cluster)
    assert before
    with admin(pv) as a:
        notices = []
        a.add_notice_handler(lambda d: notices.append(d.message_primary))
        assert a.execute(f"KILL {APP_DB}").statusmessage == "KILL"
        assert notices == [f"pgvalve: 2 clients disconnected; {APP_DB} is paused until RESUME"]
        for raw in (idle_client, busy):
            err, closed, _ = read_error_then_close(raw.sock, 5)
            assert closed and err is not None
            assert err["C"] == "57P01" and err["S"] == "FATAL"
            assert_pgvalve_message(err["M"])
            assert err["M"] == (f"pgvalve: disconnected by an administrator (KILL {APP_DB}); you "
                                "may reconnect, but requests wait until the database is resumed")
        # Every server connection of the database is closed, the open transaction rolled back.
        wait_until(lambda: not (before & backends(cluster)), 5,
                   message="the killed database's server connections closed")
        assert cluster.primary.sql("select count(*) from killed_writes", dbname=APP_DB)[0][0] == 0
        assert rows_of(a, "SHOW STATE")[1] == {"key": "paused", "value": APP_DB}

        # A new client logs in, and its request waits for RESUME.
        result = {}

        def late_client():
            with pv.connect() as c:
                result["row"] = c.execute("select 42").fetchone()
                result["at"] = time.monotonic()

        t = threading.Thread(target=late_client)
        t.start()
        time.sleep(0.5)
        assert "row" not in result
        resumed_at = time.monotonic()
        a.execute(f"RESUME {APP_DB}")
        t.join(timeout=10)
        assert result.get("row") == (42,) and result["at"] >= resumed_at
    assert "killed" in pv.log_text()


def test_kill_in_session_mode_closes_the_clients_own_servers(pgvalve, cluster):
    pv = pgvalve(users=APP_AND_OPS, mode="session", pool_size=4)
    client = raw_login(pv)
    (pid,) = client.rows("select pg_backend_pid()")[0]
    assert int(pid) in backends(cluster)
    with admin(pv) as a:
        a.execute("KILL")  # every database
        err, closed, _ = read_error_then_close(client.sock, 5)
        assert closed and err["C"] == "57P01"
        assert err["M"].startswith("pgvalve: disconnected by an administrator (KILL);")
        wait_until(lambda: int(pid) not in backends(cluster), 5,
                   message="the session's server closed, not kept for the next client")
        assert rows_of(a, "SHOW STATE")[1] == {"key": "paused", "value": "*"}
        a.execute("RESUME")
    with pv.connect() as c:
        assert c.execute("select pg_backend_pid()").fetchone()[0] != int(pid)


def test_kill_client_disconnects_that_client_only(pgvalve):
    pv = pgvalve(users=APP_AND_OPS)
    victim = raw_login(pv)
    other = raw_login(pv)
    with admin(pv) as a:
        id_ = client_id(a, victim)
        assert a.execute(f"KILL_CLIENT {id_}").statusmessage == "KILL_CLIENT"
        err, closed, _ = read_error_then_close(victim.sock, 5)
        assert closed and err["C"] == "57P01"
        assert err["M"] == (f"pgvalve: disconnected by an administrator (KILL_CLIENT {id_}); "
                            "reconnect to continue")
        assert other.rows("select 7") == [["7"]]
        assert id_ not in [r["id"] for r in rows_of(a, "SHOW CLIENTS")]
        with pytest.raises(psycopg.errors.UndefinedObject) as e:
            a.execute("KILL_CLIENT 999999999")
        assert str(e.value).startswith("pgvalve: no application client 999999999")
        with pytest.raises(psycopg.errors.SyntaxError):
            a.execute("KILL_CLIENT abc")
        # An admin console is not an application client.
        (console,) = [r for r in rows_of(a, "SHOW CLIENTS") if r["database"] == "pgvalve"]
        with pytest.raises(psycopg.errors.UndefinedObject):
            a.execute(f"KILL_CLIENT {console['id']}")
        assert a.execute("SHOW VERSION").fetchone()
    other.terminate()


def test_disable_refuses_new_logins_and_enable_allows_them(pgvalve):
    pv = pgvalve(users=APP_AND_OPS)
    with pv.connect() as connected, admin(pv) as a:
        assert a.execute(f"DISABLE {APP_DB}").statusmessage == "DISABLE"
        with pytest.raises(PgWireError) as e:
            raw_login(pv)
        assert e.value.sqlstate == "55000"
        assert e.value.message == (f'pgvalve: database "{APP_DB}" is disabled by an administrator '
                                   f"(DISABLE); connect again once it is enabled (ENABLE {APP_DB})")
        # A connected client goes on.
        assert connected.execute("select 1").fetchone() == (1,)
        assert rows_of(a, "SHOW STATE")[2] == {"key": "disabled", "value": APP_DB}
        (db,) = [r for r in rows_of(a, "SHOW DATABASES") if r["name"] == APP_DB]
        assert db["disabled"] == "1"
        assert a.execute(f"ENABLE {APP_DB}").statusmessage == "ENABLE"
        with pv.connect() as c:
            assert c.execute("select 2").fetchone() == (2,)
        with pytest.raises(psycopg.errors.SyntaxError):
            a.execute("DISABLE")
        with pytest.raises(psycopg.errors.InvalidCatalogName):
            a.execute("DISABLE nosuchdb")


def test_show_databases_users_lists_and_state(pgvalve, cluster):
    pv = pgvalve(users=APP_AND_OPS, pool_size=3)
    with pv.connect() as c, admin(pv) as a:
        c.execute("select 1")
        (db,) = [r for r in rows_of(a, "SHOW DATABASES") if r["name"] == APP_DB]
        assert (db["shard"], db["host"], db["port"]) == ("s0", "127.0.0.1",
                                                         str(cluster.primary.port))
        assert db["database"] == APP_DB and db["pool_size"] == "3"
        assert db["pool_mode"] == "transaction"
        assert int(db["current_connections"]) >= 1
        assert (db["paused"], db["disabled"]) == ("0", "0")
        users = {r["name"]: r for r in rows_of(a, "SHOW USERS")}
        assert users[APP_USER]["admin"] == "no" and users[OPS_USER]["admin"] == "yes"
        lists = {r["list"]: int(r["items"]) for r in rows_of(a, "SHOW LISTS")}
        assert lists["databases"] == 1 and lists["users"] == 2
        assert lists["used_clients"] == 1 and lists["used_servers"] >= 1
        assert rows_of(a, "SHOW STATE") == [
            {"key": "active", "value": "yes"}, {"key": "paused", "value": ""},
            {"key": "disabled", "value": ""}, {"key": "draining", "value": "no"}]
        a.execute("PAUSE")
        state = {r["key"]: r["value"] for r in rows_of(a, "SHOW STATE")}
        assert state["active"] == "no" and state["paused"] == "*"
        a.execute("RESUME")
        commands = [r["command"] for r in rows_of(a, "SHOW HELP")]
        for command in ("SHOW DATABASES", "RECONNECT [database]", "WAIT_CLOSE [database]",
                        "KILL [database]", "KILL_CLIENT <id>", "DISABLE <database>"):
            assert command in commands


def test_paused_and_disabled_databases_are_metrics_and_status(pgvalve):
    pv = pgvalve(users=APP_AND_OPS)

    def gauges():
        return {name: value for name, labels, value in scrape(pv)
                if name in ("pgvalve_database_paused", "pgvalve_database_disabled")
                and labels == {"database": APP_DB}}

    assert gauges() == {"pgvalve_database_paused": 0, "pgvalve_database_disabled": 0}
    with admin(pv) as a:
        a.execute("PAUSE")  # every database
        a.execute(f"DISABLE {APP_DB}")
        assert gauges() == {"pgvalve_database_paused": 1, "pgvalve_database_disabled": 1}
        status = json.loads(get(pv, "/status")[1])
        assert (status["paused"], status["disabled"]) == (["*"], [APP_DB])
        a.execute("RESUME")
        a.execute(f"KILL {APP_DB}")
        assert gauges() == {"pgvalve_database_paused": 1, "pgvalve_database_disabled": 1}
        a.execute(f"RESUME {APP_DB}")
        a.execute(f"ENABLE {APP_DB}")
        assert gauges() == {"pgvalve_database_paused": 0, "pgvalve_database_disabled": 0}
        status = json.loads(get(pv, "/status")[1])
        assert (status["paused"], status["disabled"]) == ([], [])
