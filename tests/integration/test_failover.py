"""Failover drills against real streaming replication: each test builds its own primary and two
replicas (pg_basebackup -R), because a drill leaves the old primary dead or retired. Whether a
write landed is checked on the servers themselves, never through pgvalve."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest

from itutil import drain_notifies, show_pools
from pgcluster import APP_DB, APP_PASSWORD, APP_USER, PG_BIN, PgCluster, wait_until

OPS_USER = "ops"
OPS_PASSWORD = "ops-secret"


def new_cluster(extra_conf: str = "", replicas: int = 2) -> PgCluster:
    c = PgCluster(replicas=replicas, extra_conf=extra_conf)
    c.start()
    c.primary.psql("CREATE TABLE drill (id bigserial PRIMARY KEY, client int, n int)",
                   dbname=APP_DB)
    c.primary.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO app", dbname=APP_DB)
    c.primary.psql("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app", dbname=APP_DB)
    # The health checks' role: sees standbys' timelines (pg_monitor) and may promote.
    c.primary.psql("GRANT pg_monitor TO app")
    c.primary.psql("GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO app")
    c.wait_replay()
    return c


@pytest.fixture(scope="module")
def cluster():
    """Each test makes its own cluster (fresh); pgvalve's default config only needs a port."""

    class Stub:
        class primary:  # noqa: N801
            port = 1

    return Stub()


@pytest.fixture
def fresh(request):
    made = []

    def make(**kw):
        c = new_cluster(**kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.teardown()


def config_for(cluster, **overrides):
    shard = {"name": "s0", "primary": f"127.0.0.1:{cluster.primary.port}",
             "replicas": [f"127.0.0.1:{r.port}" for r in cluster.replicas]}
    conf = {
        "databases": {APP_DB: {"shards": [shard]}},
        "users": [{"name": APP_USER, "password": APP_PASSWORD},
                  {"name": OPS_USER, "password": OPS_PASSWORD, "admin": True}],
        "health": {"interval_ms": 500, "timeout_ms": 1000, "failures_before_down": 2,
                   "user": APP_USER, "password": APP_PASSWORD},
        "routing": {"read_your_writes": "off"},
    }
    conf.update(overrides)
    return conf


def admin(pv):
    return psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                           autocommit=True)


def show_hosts(pv) -> list[dict]:
    with admin(pv) as a:
        cur = a.execute("SHOW HOSTS")
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def wait_hosts_checked(pv, timeout=10):
    wait_until(lambda: all(h["state"] == "up" for h in show_hosts(pv)), timeout,
               message="every host checked and up")


def test_show_hosts_lists_every_host_with_its_role_and_figures(fresh, pgvalve):
    c = fresh()
    pv = pgvalve(**config_for(c))
    wait_hosts_checked(pv)
    hosts = show_hosts(pv)
    assert [h["role"] for h in hosts] == ["primary", "replica", "replica"]
    assert [int(h["port"]) for h in hosts] == [c.primary.port] + [r.port for r in c.replicas]
    for h in hosts:
        assert h["database"] == APP_DB and h["shard"] == "s0"
        assert h["state"] == "up" and h["failures"] == "0"
        assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", h["lsn"])
        assert h["timeline"] == "1"
        assert h["last_check"]
    for h in hosts[1:]:
        assert h["readable"] == "yes"
        assert int(h["lag_ms"]) >= 0 and int(h["lag_bytes"]) >= 0
    # A replica that stops is down after failures_before_down checks, and takes no reads.
    c.replicas[1].stop(mode="immediate")
    wait_until(lambda: show_hosts(pv)[2]["state"] == "down", 5, message="replica down")
    row = show_hosts(pv)[2]
    assert row["readable"] == "no" and int(row["failures"]) >= 2 and row["last_error"]
    with admin(pv) as a:
        with pytest.raises(psycopg.errors.SyntaxError):
            a.execute("SWITCHOVER")


def read_load(pv, seconds: float, threads: int = 4, sql: str = "select count(*) from drill"):
    """Autocommit reads from `threads` clients for `seconds`; returns (ok, errors)."""
    ok = [0]
    errors: list[str] = []
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def run():
        with pv.connect() as conn:
            while time.monotonic() < stop:
                try:
                    conn.execute(sql).fetchone()
                    with lock:
                        ok[0] += 1
                except psycopg.Error as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    return ts, ok, errors


def test_a_replica_killed_under_read_load_costs_no_read(fresh, pgvalve):
    c = fresh()
    pv = pgvalve(**config_for(c, pool_size=8))
    wait_hosts_checked(pv)
    ts, ok, errors = read_load(pv, 4.0)
    time.sleep(1.5)
    c.replicas[0].kill9()
    for t in ts:
        t.join()
    assert errors == []
    assert ok[0] > 100
    assert "event=read_moved" in pv.log_text() or "event=server_lost" in pv.log_text()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_replica_shut_down_under_running_reads_costs_no_read(fresh, pgvalve, mode):
    # A shutdown flushes the start of the answer a backend held (its RowDescription) with its
    # goodbye (a FATAL, or a WARNING when immediate): pgvalve drops it, unsent, and the read
    # runs on another host.
    c = fresh()
    pv = pgvalve(**config_for(c, pool_size=8))
    wait_hosts_checked(pv)
    ts, ok, errors = read_load(pv, 4.0, threads=6, sql="select pg_sleep(0.02), count(*) from drill")
    time.sleep(1.5)
    c.replicas[0].stop(mode=mode)
    for t in ts:
        t.join()
    assert errors == []
    assert ok[0] > 100


def writer(pv, n_writes: int, results: dict, name: str):
    """One client connection writing rows n=0..; records the acknowledged ones and errors."""
    acked, errors, acked_at = [], [], []
    results[name] = (acked, errors)
    results[name + "_at"] = acked_at  # when each acknowledgement arrived (time.monotonic())
    with pv.connect() as conn:
        for i in range(n_writes):
            try:
                conn.execute("insert into drill (client, n) values (%s, %s)", (hash(name) % 1000, i))
                acked.append(i)
                acked_at.append(time.monotonic())
            except psycopg.Error as e:
                errors.append((i, getattr(e, "sqlstate", None), str(e)))
            time.sleep(0.01)


def test_follow_the_primary_an_external_tool_promotes(fresh, pgvalve):
    c = fresh()
    pv = pgvalve(**config_for(c, failover={"mode": "follow", "hold_writes_ms": 15000}))
    wait_hosts_checked(pv)
    with pv.connect() as conn:
        conn.execute("insert into drill (client, n) values (1, 0)")
        c.primary.kill9()
        killed = time.monotonic()
        c.replicas[0].promote()
        # The same client connection writes again: held until pgvalve sees the new primary.
        row = conn.execute("insert into drill (client, n) values (1, 1) "
                           "returning inet_server_port()").fetchone()
        took = time.monotonic() - killed
    assert row[0] == c.replicas[0].port
    assert c.replicas[0].scalar("select count(*) from drill where client = 1", dbname=APP_DB) == 2
    # /ready follows the health checks: ready, with the new primary.
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/ready", timeout=5) as r:
        body = r.read().decode()
        assert r.status == 200, body
    assert f"primary 127.0.0.1:{c.replicas[0].port}: ok (health check: up, timeline 2)" in body
    assert "event=primary " in pv.log_text()
    hosts = show_hosts(pv)
    assert hosts[1]["role"] == "primary" and hosts[1]["timeline"] == "2"
    print(f"follow: first write {took:.2f}s after kill -9")


def test_follow_writes_no_more_to_a_former_primary_back_on_its_old_timeline(fresh, pgvalve):
    """The old primary, down when another tool promoted a replica, starts again without a rewind
    (a primary on timeline 1) while the new primary is out of sight: writes wait for the new
    primary rather than going to the abandoned timeline."""
    c = fresh()
    pv = pgvalve(**config_for(c, failover={"mode": "follow", "hold_writes_ms": 1500}))
    wait_hosts_checked(pv)
    old, new = c.primary, c.replicas[0]
    old.kill9()
    wait_until(lambda: show_hosts(pv)[0]["state"] == "down", 10, message="the old primary down")
    new.promote()
    wait_until(lambda: show_hosts(pv)[1]["role"] == "primary", 10, message="the new primary seen")
    assert show_hosts(pv)[0]["role"] == "retired"
    new.stop()
    old.start()
    assert old.scalar("select pg_is_in_recovery()") is False
    wait_until(lambda: show_hosts(pv)[0]["state"] == "up", 10, message="the old primary back up")
    with pv.connect() as conn:
        with pytest.raises(psycopg.errors.CannotConnectNow):  # 57P03 after hold_writes_ms
            conn.execute("insert into drill (client, n) values (8, 0)")
    assert old.scalar("select count(*) from drill where client = 8", dbname=APP_DB) == 0
    assert show_hosts(pv)[0]["role"] == "retired"
    new.start()
    with pv.connect() as conn:
        wait_until(lambda: show_hosts(pv)[1]["state"] == "up", 10, message="the new primary back")
        row = conn.execute("insert into drill (client, n) values (8, 1) "
                           "returning inet_server_port()").fetchone()
    assert row[0] == new.port


def test_promote_mode_fails_over_by_itself_and_reports_the_time(fresh, pgvalve):
    c = fresh()
    pv = pgvalve(**config_for(c, failover={"mode": "promote", "promote_after_ms": 0,
                                           "hold_writes_ms": 15000}))
    wait_hosts_checked(pv)
    results: dict = {}
    t = threading.Thread(target=writer, args=(pv, 400, results, "w"))
    t.start()
    time.sleep(0.5)
    c.primary.kill9()
    killed = time.monotonic()
    with pv.connect() as conn:
        conn.execute("insert into drill (client, n) values (-1, 0)")
    took = time.monotonic() - killed
    t.join()
    acked, errors = results["w"]
    # A write cut by the dying server may fail (08006); none other does, and none waits out.
    assert all(e[1] in ("08006",) for e in errors), errors
    assert len(errors) <= 1
    new_primary = next(r for r in c.replicas if not r.scalar("select pg_is_in_recovery()"))
    have = {r[0] for r in new_primary.sql("select n from drill where client = %s",
                                          (hash("w") % 1000,), dbname=APP_DB)}
    lost = [i for i in acked if i not in have and i < acked[-1]]
    # Without synchronous replication, writes acknowledged before the crash may be lost
    # (asynchronous replicas); every write acknowledged after it went to the new primary.
    after = [i for i, at in zip(acked, results["w_at"]) if at > killed]
    assert after and all(i in have for i in after), lost
    assert "event=failover_done" in pv.log_text()
    # Reported (docs/benchmarks.md), not asserted: timings are the benchmarks' business.
    print(f"promote: first write {took:.2f}s after kill -9 (interval_ms 500, "
          f"failures_before_down 2)")


def test_a_read_after_the_own_write_waits_for_a_primary_like_a_write(fresh, pgvalve):
    """read_your_writes lsn: right after a client's write no replica is known to have replayed it
    (replay positions are as of the last check), so its read falls back to the primary. When
    that primary has just died the read waits (failover.hold_writes_ms) as a write does, and
    runs on a replica that has the write or on the new primary; it does not fail with 08006."""
    c = fresh()
    pv = pgvalve(**config_for(c, routing={"read_your_writes": "lsn"},
                              health={"interval_ms": 1000, "timeout_ms": 1000,
                                      "failures_before_down": 3,
                                      "user": APP_USER, "password": APP_PASSWORD},
                              failover={"mode": "follow", "hold_writes_ms": 10000}))
    wait_hosts_checked(pv)
    with pv.connect() as conn:
        conn.execute("insert into drill (client, n) values (8, 1)")
        c.wait_replay()
        c.primary.stop(mode="immediate")
        promoter = threading.Thread(target=lambda: (time.sleep(1.5), c.replicas[0].promote()),
                                    daemon=True)
        promoter.start()
        row = conn.execute("select max(n), inet_server_port() from drill "
                           "where client = 8").fetchone()
    # The read may have found a replica with the write before the promotion: the promotion
    # still ends before the cluster is torn down.
    promoter.join()
    assert row[0] == 1
    assert row[1] in {r.port for r in c.replicas}


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_first_login_waits_for_a_restarting_primary(fresh, pgvalve, mode):
    """A pgvalve that has not seen a server yet needs one to log a client in (its parameters; in
    session mode the client's own server). While the primary is shutting down (57P03) and then
    down (connection refused), the login waits, as a write does (failover.hold_writes_ms), and
    the client is served once the primary is back, instead of failing at once."""
    c = fresh(replicas=0)
    pv = pgvalve(**config_for(c, mode=mode, failover={"mode": "follow",
                                                      "hold_writes_ms": 20000}))
    holder = c.primary.connect()
    # A smart shutdown waits for `holder`; meanwhile PostgreSQL refuses logins with 57P03.
    c.primary.pg_ctl("-W", "-m", "smart", "stop")

    def refused_while_shutting_down():
        try:
            c.primary.connect().close()
        except psycopg.OperationalError as e:
            return "shutting down" in str(e)
        return False

    wait_until(refused_while_shutting_down, 10, message="primary refusing logins (57P03)")
    result: dict = {}

    def client():
        try:
            with psycopg.connect(pv.dsn(), connect_timeout=30, autocommit=True) as conn:
                result["port"] = conn.execute("select inet_server_port()").fetchone()[0]
        except Exception as e:  # reported by the assertion below
            result["error"] = e

    t = threading.Thread(target=client, daemon=True)
    t.start()
    wait_until(lambda: "event=login_held" in pv.log_text(), 10, message="login held")
    time.sleep(0.5)
    # pgvalve's health check holds a connection too: a fast shutdown ends the smart one.
    holder.close()
    c.primary.stop(mode="fast")
    time.sleep(0.5)  # refused connections now (08006)
    assert t.is_alive() and not result, result
    c.primary.start()
    t.join(30)
    assert result.get("port") == c.primary.port, result
    assert "sqlstate=57P03" in pv.log_text()


def set_on_primary(c, **settings):
    for name, value in settings.items():
        c.primary.psql(f"ALTER SYSTEM SET {name} = {value}")
    c.primary.psql("select pg_reload_conf()")


def switchover_under_pgbench_writes(pv, c, tmp_path):
    """pgbench inserts rows for 6 s, logging every transaction it was told committed; a
    SWITCHOVER to the first replica runs 2 s in. Asserts that every acknowledged row is on the
    new primary."""
    script = tmp_path / "write.sql"
    script.write_text("insert into drill (client, n) values (:client_id, 1);\n")
    logdir = tmp_path / "log"
    logdir.mkdir()
    env = {"PGPASSWORD": APP_PASSWORD, "PATH": "/usr/bin:/bin"}
    bench = subprocess.Popen(
        [str(PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(pv.port), "-U", APP_USER,
         "-n", "-c", "4", "-T", "6", "-f", str(script), "-l", "--log-prefix",
         str(logdir / "tx"), APP_DB],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        cwd=str(tmp_path))
    time.sleep(2)
    try:
        with admin(pv) as a:
            a.execute(f"SWITCHOVER {APP_DB} s0 TO 127.0.0.1:{c.replicas[0].port}")
    finally:
        out, _ = bench.communicate(timeout=60)
    assert bench.returncode == 0, out
    assert "aborted" not in out or re.search(r"number of failed transactions: 0", out), out
    acked: dict[int, int] = {}
    for f in logdir.iterdir():
        for line in f.read_text().splitlines():
            client = int(line.split()[0])
            acked[client] = acked.get(client, 0) + 1
    new_primary = c.replicas[0]
    assert new_primary.scalar("select pg_is_in_recovery()") is False
    rows = dict(new_primary.sql("select client, count(*) from drill group by client",
                                dbname=APP_DB))
    for client, n in acked.items():
        assert rows.get(client, 0) >= n, (client, n, rows)
    assert sum(acked.values()) > 50


def test_switchover_under_pgbench_write_load_loses_no_acknowledged_write(fresh, pgvalve,
                                                                          tmp_path):
    c = fresh()
    # Synchronous replication to replica1, the switchover's target: an acknowledged commit is
    # applied there.
    set_on_primary(c, synchronous_standby_names="'replica1'", synchronous_commit="'remote_apply'")
    pv = pgvalve(**config_for(c, pool_size=4, failover={"mode": "follow",
                                                       "hold_writes_ms": 10000}))
    wait_hosts_checked(pv)
    switchover_under_pgbench_writes(pv, c, tmp_path)
    hosts = show_hosts(pv)
    assert hosts[0]["role"] == "retired" and hosts[1]["role"] == "primary"
    log = pv.log_text()
    assert "event=switchover_done" in log
    print(re.search(r"event=switchover_done.*", log).group(0))


def held_write_cancelled(pv, conn, sql: str) -> tuple[BaseException | None, float]:
    """Runs `sql` on `conn` in a thread; once pgvalve says it holds the write for a primary
    (writes_held), cancels it as psql's Ctrl-C or a driver's timeout does. Returns the error the
    statement raised within 3 s of the cancel (None: still running) and how long it took."""
    result: dict = {}

    def run():
        try:
            conn.execute(sql)
            result["error"] = None
        except psycopg.Error as e:
            result["error"] = e
        result["at"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_until(lambda: "event=writes_held" in pv.log_text(), 10, message="the write is held")
    cancelled_at = time.monotonic()
    conn.cancel()
    t.join(3)
    if "at" not in result:
        return None, time.monotonic() - cancelled_at
    return result["error"], result["at"] - cancelled_at


def test_a_cancelled_write_held_while_the_primary_is_down_never_runs(fresh, pgvalve):
    c = fresh(replicas=1)
    pv = pgvalve(**config_for(c, failover={"mode": "off", "hold_writes_ms": 15000}))
    wait_hosts_checked(pv)
    with pv.connect() as conn:
        conn.execute("select 1")
        c.primary.stop(mode="fast")
        wait_until(lambda: show_hosts(pv)[0]["state"] == "down", 10, message="primary down")
        error, took = held_write_cancelled(pv, conn, "insert into drill (client, n) values (94, 1)")
        # The primary comes back well within hold_writes_ms: a write still held would run now.
        c.primary.start()
        wait_until(lambda: show_hosts(pv)[0]["state"] == "up", 10, message="primary up")
        assert isinstance(error, psycopg.errors.QueryCanceled), (error, took)
        assert str(error).startswith("pgvalve: canceling statement due to user request"), error
        assert took < 1.0
        # The connection stays usable, and the next write runs.
        conn.execute("insert into drill (client, n) values (94, 2)")
    time.sleep(0.5)  # anything still held would have run by now
    assert c.primary.sql("select n from drill where client = 94 order by n",
                         dbname=APP_DB) == [(2,)]


def test_a_cancelled_write_held_by_a_switchover_never_runs(fresh, pgvalve):
    c = fresh(replicas=1)
    pv = pgvalve(**config_for(c, failover={"mode": "follow", "hold_writes_ms": 10000}))
    wait_hosts_checked(pv)
    target = c.replicas[0]
    with pv.connect() as blocker, pv.connect() as conn:
        # An open transaction keeps the switchover draining, and writes held, until it commits.
        blocker.execute("begin")
        blocker.execute("insert into drill (client, n) values (95, 0)")
        sw = threading.Thread(target=lambda: admin(pv).execute(
            f"SWITCHOVER {APP_DB} s0 TO 127.0.0.1:{target.port}"), daemon=True)
        sw.start()
        wait_until(lambda: "event=switchover_started" in pv.log_text(), 10,
                   message="switchover started")
        error, took = held_write_cancelled(pv, conn, "insert into drill (client, n) values (95, 1)")
        blocker.execute("commit")
        sw.join(30)
        wait_until(lambda: "event=switchover_done" in pv.log_text(), 10, message="done")
        assert isinstance(error, psycopg.errors.QueryCanceled), (error, took)
        assert took < 1.0
        conn.execute("insert into drill (client, n) values (95, 2)")
    time.sleep(0.5)
    assert target.sql("select n from drill where client = 95 order by n",
                      dbname=APP_DB) == [(0,), (2,)]


def test_failover_command_promotes_for_a_dead_primary(fresh, pgvalve):
    c = fresh()
    pv = pgvalve(**config_for(c, failover={"mode": "off", "hold_writes_ms": 500}))
    wait_hosts_checked(pv)
    c.primary.kill9()
    wait_until(lambda: show_hosts(pv)[0]["state"] == "down", 5, message="primary down")
    with pv.connect() as conn:
        with pytest.raises(psycopg.errors.CannotConnectNow):  # 57P03 after hold_writes_ms
            conn.execute("insert into drill (client, n) values (2, 0)")
    with admin(pv) as a:
        a.execute(f"FAILOVER {APP_DB}")
    with pv.connect() as conn:
        port = conn.execute("insert into drill (client, n) values (2, 1) "
                            "returning inet_server_port()").fetchone()[0]
    assert port in {r.port for r in c.replicas}


def test_reload_adds_and_removes_a_replica_under_load(fresh, pgvalve):
    c = fresh()
    conf = config_for(c, pool_size=8, routing={"read_your_writes": "off",
                                               "load_balance": "round_robin"})
    conf["databases"][APP_DB]["shards"][0]["replicas"] = [f"127.0.0.1:{c.replicas[0].port}"]
    pv = pgvalve(**conf)
    wait_until(lambda: show_hosts(pv)[1]["state"] == "up", 5, message="replica1 checked")
    ts, ok, errors = read_load(pv, 4.0)
    time.sleep(1)
    pv.config["databases"][APP_DB]["shards"][0]["replicas"] = [
        f"127.0.0.1:{c.replicas[1].port}"]
    pv.reload(pv.config)
    for t in ts:
        t.join()
    assert errors == []
    assert [int(h["port"]) for h in show_hosts(pv)] == [c.primary.port, c.replicas[1].port]
    with pv.connect() as conn:
        ports = {conn.execute("select inet_server_port()").fetchone()[0] for _ in range(10)}
    assert ports == {c.replicas[1].port}


def listener_closed(listener):
    """The listener is closed once its listening connection was lost (pooling.md)."""
    with pytest.raises(psycopg.OperationalError) as e:
        for _ in range(100):
            listener.execute("select 1")
            time.sleep(0.1)
    assert "notifications may have been missed" in str(e.value)


def test_listeners_listen_again_on_the_new_primary_after_a_failover(fresh, pgvalve):
    """The dead primary's listening connection is gone, and with it what it had not delivered:
    its listeners are closed (08006) and listen again once a primary answers."""
    c = fresh()
    pv = pgvalve(**config_for(c, failover={"mode": "follow", "hold_writes_ms": 15000}))
    wait_hosts_checked(pv)
    with pv.connect() as listener:
        listener.execute("LISTEN drill_events")
        c.primary.kill9()
        listener_closed(listener)
    c.replicas[0].promote()
    wait_until(lambda: show_hosts(pv)[1]["role"] == "primary", 10,
               message="pgvalve follows the promotion")
    with pv.connect() as listener, pv.connect() as sender:
        listener.execute("LISTEN drill_events")
        sender.execute("NOTIFY drill_events, 'after failover'")
        assert drain_notifies(listener, 1, timeout=5) == [("drill_events", "after failover")]
    assert f"event=listen_connection_open host=127.0.0.1:{c.replicas[0].port}" in pv.log_text()


def test_ready_and_metrics_follow_a_stopped_primary_and_its_return(fresh, pgvalve):
    c = fresh()
    pv = pgvalve(**config_for(c, failover={"mode": "off"}))
    wait_hosts_checked(pv)
    base = f"http://127.0.0.1:{pv.admin_port}"

    def ready():
        try:
            with urllib.request.urlopen(base + "/ready", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def primary_up():
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        line = next(l for l in text.splitlines() if l.startswith("pgvalve_shard_primary_up{"))
        return float(line.rsplit(" ", 1)[1])

    assert ready() == 200 and primary_up() == 1
    c.primary.stop()
    wait_until(lambda: ready() == 503 and primary_up() == 0, 10,
               message="/ready 503 and shard_primary_up 0 with the primary stopped")
    c.primary.start()
    wait_until(lambda: ready() == 200 and primary_up() == 1, 15,
               message="/ready 200 again once the primary is back")


def test_listeners_follow_the_primary_after_a_switchover(fresh, pgvalve):
    # The retired primary keeps running, and with it the listening connection: the switchover
    # moves that connection before writes resume, so the first NOTIFY on the new primary is heard.
    c = fresh()
    pv = pgvalve(**config_for(c, failover={"mode": "follow", "hold_writes_ms": 10000}))
    wait_hosts_checked(pv)
    with pv.connect() as listener, pv.connect() as sender:
        listener.execute("LISTEN drill_events")
        sender.execute("NOTIFY drill_events, 'before'")
        assert drain_notifies(listener, 1, timeout=5) == [("drill_events", "before")]
        with admin(pv) as a:
            a.execute(f"SWITCHOVER {APP_DB} s0 TO 127.0.0.1:{c.replicas[0].port}")
        assert c.primary.scalar("select pg_is_in_recovery()") is False  # still up, retired
        cur = sender.execute("NOTIFY drill_events, 'after'; select inet_server_port()")
        assert cur.nextset() and cur.fetchone()[0] == c.replicas[0].port
        assert drain_notifies(listener, 1, timeout=5) == [("drill_events", "after")]
    log = pv.log_text()
    moved = log.index(f"event=listen_connection_moved from=127.0.0.1:{c.primary.port} "
                      f"to=127.0.0.1:{c.replicas[0].port}")
    assert moved < log.index("event=switchover_done")


def test_listeners_of_a_dead_primary_are_told_when_pgvalve_promotes(fresh, pgvalve):
    c = fresh()
    pv = pgvalve(**config_for(c, failover={"mode": "promote", "promote_after_ms": 0,
                                           "hold_writes_ms": 15000}))
    wait_hosts_checked(pv)
    with pv.connect() as listener:
        listener.execute("LISTEN drill_events")
        c.primary.kill9()
        listener_closed(listener)
    with pv.connect() as listener, pv.connect() as sender:
        # Its LISTEN waits for a primary that takes it: the promoted replica.
        for attempt in range(50):
            try:
                listener.execute("LISTEN drill_events")
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        sender.execute("NOTIFY drill_events, 'first after the failover'")
        assert drain_notifies(listener, 1, timeout=5) == [
            ("drill_events", "first after the failover")]


def test_switchover_loses_no_write_committed_without_waiting_for_its_flush(fresh, pgvalve,
                                                                            tmp_path):
    """synchronous_commit = off (common for telemetry ingest) acknowledges a commit before its
    WAL is written, and a slow WAL writer keeps it in the buffers for seconds: the switchover
    has the old primary flush it before it waits for the target's replay. Waiting for the WAL
    writer instead would take longer than hold_writes_ms here, and the switchover would be
    refused; not waiting would lose acknowledged rows."""
    c = fresh()
    set_on_primary(c, synchronous_commit="off", wal_writer_delay="'10s'")
    pv = pgvalve(**config_for(c, pool_size=4, failover={"mode": "follow",
                                                       "hold_writes_ms": 3000}))
    wait_hosts_checked(pv)
    switchover_under_pgbench_writes(pv, c, tmp_path)


def test_a_replica_left_on_the_old_timeline_is_never_promoted(fresh, pgvalve):
    """After a switchover, the other replica still follows the former primary (timeline 1)
    until an operator rejoins it. When the new primary dies before that, promoting it would
    lose every write since the switchover: promote mode blocks, and FAILOVER refuses."""
    c = fresh()
    pv = pgvalve(**config_for(c, failover={"mode": "promote", "promote_after_ms": 300,
                                           "hold_writes_ms": 1000}))
    wait_hosts_checked(pv)
    with admin(pv) as a:
        a.execute(f"SWITCHOVER {APP_DB} s0 TO 127.0.0.1:{c.replicas[0].port}")
    with pv.connect() as conn:
        for n in range(20):
            conn.execute("insert into drill (client, n) values (7, %s)", (n,))
    left_behind = c.replicas[1]
    wait_until(lambda: show_hosts(pv)[1]["timeline"] == "2", 10,
               message="the new primary's timeline seen")
    assert show_hosts(pv)[2]["timeline"] == "1"
    c.replicas[0].kill9()
    wait_until(lambda: "no replica on the primary's timeline is up" in pv.log_text(), 15,
               message="promotion_blocked logged")
    time.sleep(1)
    assert left_behind.scalar("select pg_is_in_recovery()") is True
    assert "event=failover_started" not in pv.log_text()
    with admin(pv) as a:
        with pytest.raises(psycopg.Error) as e:
            a.execute(f"FAILOVER {APP_DB}")
    assert "older timeline" in str(e.value), e.value
    assert left_behind.scalar("select pg_is_in_recovery()") is True
    with pv.connect() as conn:
        with pytest.raises(psycopg.errors.CannotConnectNow):  # 57P03 after hold_writes_ms
            conn.execute("insert into drill (client, n) values (7, 100)")


@pytest.mark.parametrize("monitor", [True, False], ids=["pg_monitor", "no_pg_monitor"])
def test_a_restarted_pgvalve_reads_nothing_from_a_replica_left_on_the_dead_timeline(
        fresh, pgvalve, monitor):
    c = fresh()
    r1, r2 = c.replicas
    # The checks' role without pg_monitor sees no standby's timeline.
    c.primary.psql("CREATE ROLE checker LOGIN PASSWORD 'checker-secret'")
    # r1 stops replaying and falls behind; r2 keeps up.
    r1.psql("ALTER SYSTEM SET primary_conninfo = ''")
    r1.psql("select pg_reload_conf()")
    wait_until(lambda: r1.scalar("select count(*) from pg_stat_wal_receiver") == 0, 10,
               message="r1 streams no more")
    c.primary.psql("insert into drill (client, n) select 99, g from generate_series(1, 2000) g",
                   dbname=APP_DB)
    wait_until(lambda: r2.scalar("select count(*) from drill where client = 99",
                                 dbname=APP_DB) == 2000, 10, message="r2 replayed")
    # The primary dies and an external tool (Patroni & co.) promotes r1, the one behind.
    c.primary.kill9()
    r1.promote()
    assert r1.scalar("select count(*) from drill where client = 99", dbname=APP_DB) == 0
    # pgvalve starts afterwards, configured as the runbook says: the new primary first.
    conf = config_for(c, failover={"mode": "follow", "hold_writes_ms": 15000})
    if not monitor:
        conf["health"].update(user="checker", password="checker-secret")
    conf["databases"][APP_DB]["shards"][0] = {
        "name": "s0", "primary": f"127.0.0.1:{r1.port}",
        "replicas": [f"127.0.0.1:{c.primary.port}", f"127.0.0.1:{r2.port}"]}
    pv = pgvalve(**conf)
    wait_until(lambda: show_hosts(pv)[2]["state"] == "up", 10, message="r2 checked")
    with pv.connect() as conn:
        conn.execute("insert into drill (client, n) values (98, 1)")
        deadline = time.monotonic() + 3  # several rounds of checks (interval_ms 500)
        reads = set()
        while time.monotonic() < deadline:
            reads.add(conn.execute(
                "select (select count(*) from drill where client = 99), "
                "(select count(*) from drill where client = 98), inet_server_port()").fetchone())
            time.sleep(0.05)
    assert reads == {(0, 1, r1.port)}, f"reads from a timeline the primary left: {reads}"
    row = show_hosts(pv)[2]
    assert row["readable"] == "no", row
    if monitor:
        assert row["timeline"] == "1", row  # shown, though r2 streams nothing
    else:
        assert row["lag_ms"] is None, row
    # Never chosen for a promotion either.
    with admin(pv) as a:
        with pytest.raises(psycopg.Error, match="timeline|history"):
            a.execute(f"SWITCHOVER {APP_DB} s0 TO 127.0.0.1:{r2.port}")


def test_show_pools_counts_clients_on_the_primary_after_a_switchover(fresh, pgvalve):
    """A client counts in the pool of its shard's primary; after a switchover it is shown on
    the new primary's row, where its writes go, not on the retired host's."""
    c = fresh()
    pv = pgvalve(**config_for(c, failover={"mode": "follow"}))
    wait_hosts_checked(pv)
    with pv.connect() as conn:
        conn.execute("insert into drill (client, n) values (8, 0)")
        with admin(pv) as a:
            a.execute(f"SWITCHOVER {APP_DB} s0 TO 127.0.0.1:{c.replicas[0].port}")
        conn.execute("insert into drill (client, n) values (8, 1)")
        rows = {r["host"]: r for r in show_pools(pv)}
        old = rows[f"127.0.0.1:{c.primary.port}"]
        new = rows[f"127.0.0.1:{c.replicas[0].port}"]
        assert (old["role"], int(old["cl_active"])) == ("retired", 0), old
        assert (new["role"], int(new["cl_active"])) == ("primary", 1), new
        # The server connection the first insert left idle on the former primary is closed, not
        # kept until pool.idle_timeout_s.
        wait_until(lambda: int({r["host"]: r for r in show_pools(pv)}[
            f"127.0.0.1:{c.primary.port}"]["sv_idle"]) == 0, 5,
            message="the retired host's idle server connection closed")
        assert "event=host_retired" in pv.log_text()


def test_a_session_mode_client_writes_no_more_to_a_retired_primary(fresh, pgvalve):
    """SHOW HOSTS / configuration.md: a retired former primary 'takes no traffic'. FAILOVER may be
    run while the old primary still runs (the runbook says it promotes even then), and in follow
    mode a tool may promote a replica with the old primary up. A session-mode client logged in
    before holds a server connection to the old primary: its writes after the change must not be
    acknowledged there (they would be lost with that host). Either they reach the new primary or
    they fail (the client may be disconnected). Found by the operations audit: every later write of
    such a client was acknowledged on the retired host, none reached the new primary."""
    c = fresh()
    pv = pgvalve(**config_for(c, mode="session", pool_size=4,
                              failover={"mode": "follow", "hold_writes_ms": 5000}))
    wait_hosts_checked(pv)
    conn = pv.connect()
    assert conn.execute("insert into drill (client, n) values (7, 0) "
                        "returning inet_server_port()").fetchone()[0] == c.primary.port
    with admin(pv) as a:
        a.execute("FAILOVER telemetry")
    new_primary = c.replicas[0] if not c.replicas[0].scalar("select pg_is_in_recovery()") \
        else c.replicas[1]
    acked_on = []
    for i in range(1, 6):
        try:
            acked_on.append(conn.execute("insert into drill (client, n) values (7, %s) "
                                         "returning inet_server_port()", (i,)).fetchone()[0])
        except psycopg.Error:
            if conn.closed:
                conn = pv.connect()
    conn.close()
    assert c.primary.port not in acked_on, \
        f"writes acknowledged on the retired primary {c.primary.port}: {acked_on}"
    assert acked_on and all(p == new_primary.port for p in acked_on), acked_on


def test_a_session_mode_client_whose_primary_died_is_disconnected_and_reconnects(fresh, pgvalve):
    """failover-runbook.md, What clients see: a session-mode client loses its session with the
    dead primary and is closed (its next statement does not run anywhere); a new connection
    reaches the new primary."""
    c = fresh()
    pv = pgvalve(**config_for(c, mode="session", pool_size=4,
                              failover={"mode": "off", "hold_writes_ms": 10000}))
    wait_hosts_checked(pv)
    conn = pv.connect()
    conn.execute("insert into drill (client, n) values (8, 0)")
    c.wait_replay()
    c.primary.kill9()
    wait_until(lambda: show_hosts(pv)[0]["state"] == "down", 10, message="primary down")
    with admin(pv) as a:
        a.execute("FAILOVER telemetry")
    new_primary = next(r for r in c.replicas if not r.scalar("select pg_is_in_recovery()"))
    with pytest.raises(psycopg.OperationalError) as e:
        conn.execute("insert into drill (client, n) values (8, 1)")
    assert "pgvalve: the server connection holding this session was lost" in str(e.value)
    assert "reconnect" in str(e.value)
    assert conn.closed or conn.broken
    conn.close()
    with pv.connect() as again:
        assert again.execute("insert into drill (client, n) values (8, 2) "
                             "returning inet_server_port()").fetchone()[0] == new_primary.port
    assert new_primary.sql("select n from drill where client = 8 order by n",
                           dbname=APP_DB) == [(0,), (2,)]


def two_databases_over_the_same_hosts(c, reverse_replicas=False, **overrides):
    """configuration.md: two databases may use the same servers. `other` reaches the same
    PostgreSQL database as telemetry, over the same hosts (its replicas listed in the reverse
    order with `reverse_replicas`)."""
    conf = config_for(c, **overrides)
    shard = dict(conf["databases"][APP_DB]["shards"][0])
    if reverse_replicas:
        shard["replicas"] = list(reversed(shard["replicas"]))
    conf["databases"]["other"] = {"dbname": APP_DB, "shards": [shard]}
    return conf


def test_switchover_moves_the_writes_of_every_database_over_the_same_hosts(fresh, pgvalve):
    """Found by a code review: SWITCHOVER paused and moved the writes of the database it named
    only. A writer on another database over the same servers kept writing to the old primary
    during the replay wait and after the promotion, until its own next health check: 105 of 696
    acknowledged inserts were missing on the new primary."""
    c = fresh()
    pv = pgvalve(**two_databases_over_the_same_hosts(
        c, failover={"mode": "follow", "hold_writes_ms": 10000}))
    wait_hosts_checked(pv)
    acked, errors, ports = [], [], set()
    stop = threading.Event()

    def write_on_other():
        with pv.connect(dbname="other") as conn:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    ports.add(conn.execute("insert into drill (client, n) values (9, %s) "
                                           "returning inet_server_port()", (n,)).fetchone()[0])
                    acked.append(n)
                except psycopg.Error as e:
                    errors.append((n, e.sqlstate, str(e)))
                time.sleep(0.003)

    t = threading.Thread(target=write_on_other)
    t.start()
    try:
        time.sleep(1.0)
        with admin(pv) as a:
            a.execute(f"SWITCHOVER {APP_DB} s0 TO 127.0.0.1:{c.replicas[0].port}")
        time.sleep(1.5)
    finally:
        stop.set()
        t.join()
    new = c.replicas[0]
    assert new.scalar("select pg_is_in_recovery()") is False
    have = {r[0] for r in new.sql("select n from drill where client = 9", dbname=APP_DB)}
    missing = [n for n in acked if n not in have]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged inserts lost: {missing[:10]}"
    assert not errors, errors[:3]
    assert len(acked) > 100 and new.port in ports
    # Both databases' shards moved: the former primary is retired in each, and they both route
    # writes to the new primary at once.
    rows = {(h["database"], int(h["port"])): h["role"] for h in show_hosts(pv)}
    for db in (APP_DB, "other"):
        assert rows[(db, c.primary.port)] == "retired", rows
        assert rows[(db, new.port)] == "primary", rows
    assert re.search(r"event=switchover_started .* with=other/s0", pv.log_text())


def test_promote_mode_promotes_one_replica_for_databases_over_the_same_hosts(fresh, pgvalve):
    """failover.mode: promote decided once per shard of each database: two databases over the
    same hosts, their replicas listed in another order and equally advanced (an idle primary),
    each promoted its first replica — two primaries. One decision is taken for the servers."""
    c = fresh()
    pv = pgvalve(**two_databases_over_the_same_hosts(
        c, reverse_replicas=True,
        failover={"mode": "promote", "promote_after_ms": 0, "hold_writes_ms": 15000}))
    wait_hosts_checked(pv)
    c.wait_replay()
    time.sleep(1.0)  # both replicas checked at the primary's last position
    c.primary.kill9()
    wait_until(lambda: "event=failover_done" in pv.log_text(), 15, message="a promotion")
    time.sleep(2.0)  # a second promotion, if any, would have run by now
    promoted = [r.port for r in c.replicas if not r.scalar("select pg_is_in_recovery()")]
    assert len(promoted) == 1, f"two primaries: {promoted}\n{pv.log_text()}"
    for db in (APP_DB, "other"):
        with pv.connect(dbname=db) as conn:
            port = conn.execute("insert into drill (client, n) values (10, 0) "
                                "returning inet_server_port()").fetchone()[0]
        assert port == promoted[0], db


def test_switchover_is_refused_when_another_database_shares_only_some_hosts(fresh, pgvalve):
    """A shard that lists only some of the hosts cannot move with the one named (it may not list
    the target): the drill is refused before writes pause, and writes go on where they were."""
    c = fresh()
    conf = two_databases_over_the_same_hosts(c, failover={"mode": "follow"})
    conf["databases"]["other"]["shards"][0]["replicas"] = [f"127.0.0.1:{c.replicas[1].port}"]
    pv = pgvalve(**conf)
    wait_hosts_checked(pv)
    with admin(pv) as a:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as refused:
            a.execute(f"SWITCHOVER {APP_DB} s0 TO 127.0.0.1:{c.replicas[0].port}")
    assert "shares some of its hosts, but not all, with other/s0" in str(refused.value)
    assert c.replicas[0].scalar("select pg_is_in_recovery()") is True
    for db in (APP_DB, "other"):
        with pv.connect(dbname=db) as conn:
            assert conn.execute("insert into drill (client, n) values (11, 0) "
                                "returning inet_server_port()").fetchone()[0] == c.primary.port


def raw_client(pv):
    from pgwire import RawClient
    return RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB, timeout=30).connect()


def answers(c, sql):
    """A simple Query's answer: ('E', sqlstate), ('C', tag) and ('Z', status) in order."""
    from pgwire import parse_fields, query_message, read_message
    c.sock.sendall(query_message(sql))
    out = []
    while True:
        kind, payload = read_message(c.sock)
        if kind == b"E":
            out.append(("E", parse_fields(payload).get("C")))
        elif kind == b"C":
            out.append(("C", payload.rstrip(b"\0").decode()))
        elif kind == b"Z":
            out.append(("Z", payload.decode()))
            return out


def test_a_transaction_block_without_its_server_fails_until_the_client_ends_it(fresh, pgvalve):
    """BEGIN (answered by pgvalve), then the primary goes down and the next statement gets no
    server: as after an error in a block on PostgreSQL, the block fails (ReadyForQuery 'E'), the
    statements after it get 25P02 and COMMIT answers ROLLBACK. (They ran on their own: a psql
    script's second INSERT committed alone once the primary was back.)"""
    c = fresh(replicas=1)
    pv = pgvalve(**config_for(c, failover={"mode": "off", "hold_writes_ms": 800}))
    wait_hosts_checked(pv)
    cl = raw_client(pv)
    try:
        assert answers(cl, "BEGIN")[-1] == ("Z", "T")
        c.primary.stop(mode="fast")
        wait_until(lambda: show_hosts(pv)[0]["state"] == "down", 10)
        first = answers(cl, "insert into drill (client, n) values (91, 1)")
        assert first[0][0] == "E" and first[-1] == ("Z", "E"), first
        c.primary.start()
        wait_until(lambda: show_hosts(pv)[0]["state"] == "up", 10)
        assert answers(cl, "insert into drill (client, n) values (91, 2)") == \
            [("E", "25P02"), ("Z", "E")]
        assert answers(cl, "COMMIT") == [("C", "ROLLBACK"), ("Z", "I")]
        assert c.primary.sql("select n from drill where client = 91", dbname=APP_DB) == []
        # The client goes on.
        assert answers(cl, "insert into drill (client, n) values (91, 3)")[-1] == ("Z", "I")
        assert c.primary.sql("select n from drill where client = 91", dbname=APP_DB) == [(3,)]
    finally:
        cl.sock.close()


def test_a_server_lost_while_a_request_of_a_block_runs_closes_the_client(fresh, pgvalve):
    """Whether the request that was running ended the block is not known, so no ReadyForQuery
    could tell the client whether its next statement is in a block: the client is closed (FATAL
    08006), as PostgreSQL closes it, instead of running its next statements on their own."""
    c = fresh(replicas=1)
    pv = pgvalve(**config_for(c, failover={"mode": "off"}))
    wait_hosts_checked(pv)
    with pv.connect() as conn:
        conn.execute("begin")
        conn.execute("insert into drill (client, n) values (92, 1)")
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        killer = threading.Timer(0.5, lambda: c.primary.psql(
            f"select pg_terminate_backend({pid})"))
        killer.start()
        try:
            with pytest.raises(psycopg.Error) as ei:
                conn.execute("select pg_sleep(5)")
        finally:
            killer.join()
        assert ei.value.sqlstate in ("08006", "57P01"), repr(ei.value)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("insert into drill (client, n) values (92, 2)")
    assert c.primary.sql("select n from drill where client = 92", dbname=APP_DB) == []
