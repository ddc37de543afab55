"""Read/write routing over real streaming replication: a primary and two replicas made with
pg_basebackup -R. Where a statement ran is proven by the server itself (pg_is_in_recovery(),
inet_server_port()), never by pgvalve's own account."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pgcluster import APP_DB, PgCluster, wait_until
from itutil import drain_notifies, one


@pytest.fixture(scope="module")
def cluster(request):
    c = PgCluster(replicas=2)
    request.addfinalizer(c.teardown)
    c.start()
    c.primary.psql("CREATE TABLE readings (id bigserial PRIMARY KEY, device_id int, value float8)",
                   dbname=APP_DB)
    c.primary.psql("CREATE SEQUENCE ticket", dbname=APP_DB)
    c.primary.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO app", dbname=APP_DB)
    c.primary.psql("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app", dbname=APP_DB)
    # The health checks see standbys' timelines through pg_stat_wal_receiver (pg_monitor).
    c.primary.psql("GRANT pg_monitor TO app")
    c.wait_replay()
    return c


def replicated(cluster, **overrides):
    shard = {"name": "s0", "primary": f"127.0.0.1:{cluster.primary.port}",
             "replicas": [f"127.0.0.1:{r.port}" for r in cluster.replicas]}
    conf = {"databases": {APP_DB: {"shards": [shard]}},
            "health": {"interval_ms": 100, "timeout_ms": 1000, "failures_before_down": 2}}
    conf.update(overrides)
    return conf


def where(conn, sql="select pg_is_in_recovery(), inet_server_port()"):
    """(in_recovery, port) of the server that ran `sql` through `conn`."""
    return tuple(conn.execute(sql).fetchone())


def replicas_ready(pv, cluster, count=2, timeout=10):
    """Waits until reads reach `count` distinct replicas."""
    ports = {r.port for r in cluster.replicas}
    seen = set()

    def check():
        with pv.connect() as c:
            for _ in range(8):
                rec, port = where(c)
                if rec:
                    seen.add(port)
        return len(seen & ports) >= count

    wait_until(check, timeout, message=f"reads reaching {count} replicas ({seen})")


def test_autocommit_reads_go_to_replicas_and_writes_to_the_primary(cluster, pgvalve):
    pv = pgvalve(**replicated(cluster, routing={"load_balance": "round_robin"}))
    replicas_ready(pv, cluster)
    replica_ports = {r.port for r in cluster.replicas}
    with pv.connect() as c:
        counts = {}
        for _ in range(40):
            rec, port = where(c)
            assert rec is True, "an autocommit read ran on the primary"
            counts[port] = counts.get(port, 0) + 1
        assert set(counts) == replica_ports
        assert min(counts.values()) >= 15, counts  # round_robin shares them
        # Writes: on the primary, or they would fail on a standby.
        row = c.execute("insert into readings (device_id, value) values (7, 1.5) "
                        "returning pg_is_in_recovery(), inet_server_port()").fetchone()
        assert tuple(row) == (False, cluster.primary.port)
        assert one(c, "select nextval('ticket') > 0") is True  # a write function: primary
        assert one(c, "select txid_current() > 0") is True
        # A writable CTE and FOR UPDATE would fail on a replica: they reach the primary.
        assert where(c, "with d as (delete from readings where id < 0 returning id) "
                        "select pg_is_in_recovery(), inet_server_port()") == \
            (False, cluster.primary.port)
        assert where(c, "select pg_is_in_recovery(), inet_server_port() "
                        "from readings for update limit 1") == (False, cluster.primary.port)


def test_transactions_hints_and_read_only(cluster, pgvalve):
    # read_your_writes off: after the first transaction (a write route) this client's reads
    # would rightly go to the primary until the replicas are seen past its commit.
    pv = pgvalve(**replicated(cluster, routing={"read_your_writes": "off"}))
    replicas_ready(pv, cluster)
    with pv.connect() as c:
        # BEGIN goes to the primary for the whole transaction.
        c.execute("begin")
        assert where(c) == (False, cluster.primary.port)
        assert where(c)[0] is False
        c.execute("commit")
        # BEGIN READ ONLY may use a replica, and stays there.
        c.execute("begin read only")
        first = where(c)
        assert first[0] is True
        assert where(c) == first
        c.execute("commit")
        # Hint comments.
        assert where(c, "/* pgvalve: primary */ select pg_is_in_recovery(), inet_server_port()") \
            == (False, cluster.primary.port)
        assert where(c, "/* pgvalve: replica */ select pg_is_in_recovery(), inet_server_port()")[0]
        # The hint is pgvalve's: PostgreSQL sees the statement without it.
        seen = c.execute("/* pgvalve: primary */ select query from pg_stat_activity "
                         "where pid = pg_backend_pid()").fetchone()[0]
        assert "pgvalve" not in seen and seen.strip().startswith("select query"), seen
        # Through the extended protocol too (a parameter makes psycopg send Parse/Bind), named
        # or not.
        for threshold in (None, 0):
            c.prepare_threshold = threshold
            seen = c.execute("/* pgvalve: primary */ select query from pg_stat_activity "
                             "where pid = pg_backend_pid() and %s", (True,)).fetchone()[0]
            assert "pgvalve" not in seen and seen.strip().startswith("select query"), seen
        c.prepare_threshold = 5
        # A function pgvalve does not know to be read-only goes to the primary.
        c.execute("create or replace function bump() returns int language sql as 'select 1'")
        assert where(c, "select pg_is_in_recovery(), inet_server_port() from bump()") == \
            (False, cluster.primary.port)
        # Multi-statement strings go to the primary.
        cur = c.execute("select 1; select pg_is_in_recovery(), inet_server_port()")
        assert cur.nextset()
        assert tuple(cur.fetchone()) == (False, cluster.primary.port)


def test_serializable_transactions_and_the_question_may_i_write_go_to_the_primary(cluster,
                                                                                  pgvalve):
    """A hot standby refuses serializable transactions ("cannot use serializable mode in a hot
    standby", 0A000), which directly on the primary work. And pgjdbc's
    targetServerType=primary asks SHOW transaction_read_only: a replica's 'on' made it refuse to
    connect."""
    pv = pgvalve(**replicated(cluster, routing={"read_your_writes": "off"}))
    replicas_ready(pv, cluster)
    with pv.connect() as c:
        for _ in range(4):
            assert one(c, "show transaction_read_only") == "off"
        c.execute("begin isolation level serializable, read only, deferrable")
        assert where(c) == (False, cluster.primary.port)
        c.execute("commit")
        c.execute("begin isolation level repeatable read read only")  # still a replica's
        assert where(c)[0] is True
        c.execute("commit")
        c.execute("set default_transaction_isolation = 'serializable'")
        for _ in range(4):
            assert where(c) == (False, cluster.primary.port)
        c.execute("reset default_transaction_isolation")
        wait_until(lambda: where(c)[0] is True, 5, message="reads on replicas again")
    with psycopg.connect(pv.dsn(options="-c%20default_transaction_isolation%3Dserializable"),
                         autocommit=True) as c:
        for _ in range(4):
            assert where(c) == (False, cluster.primary.port)


def test_extended_protocol_and_prepared_statements_on_both_sides(cluster, pgvalve):
    pv = pgvalve(**replicated(cluster))
    replicas_ready(pv, cluster)
    # prepare_threshold=0: psycopg prepares every statement as a named server-side statement.
    with psycopg.connect(pv.dsn(), autocommit=True, prepare_threshold=0) as c:
        seen_replica = seen_primary = False
        for i in range(30):
            rec, _ = c.execute("select pg_is_in_recovery(), inet_server_port() where %s > 0",
                               (i + 1,)).fetchone()
            seen_replica |= rec
            row = c.execute("insert into readings (device_id, value) values (%s, %s) "
                            "returning pg_is_in_recovery()", (i, 0.5)).fetchone()
            assert row[0] is False
            seen_primary = True
        assert seen_replica and seen_primary


def test_session_mode_reads_borrow_a_replica_and_the_session_stays_on_the_primary(cluster,
                                                                                    pgvalve):
    pv = pgvalve(**replicated(cluster, mode="session", pool_size=8,
                              routing={"max_replica_lag_ms": 600000, "read_your_writes": "lsn"}))
    replicas_ready(pv, cluster)
    # prepare_threshold=None: psycopg never names its statements (named ones stay on the own
    # server, below).
    with pv.connect(prepare_threshold=None) as c, pv.connect() as notifier:
        # Autocommit reads: replicas; writes: the client's own primary server, every time.
        assert where(c)[0] is True
        row = c.execute("insert into readings (device_id, value) values (9, 1) "
                        "returning pg_is_in_recovery(), inet_server_port()").fetchone()
        assert tuple(row) == (False, cluster.primary.port)
        # Session settings follow the client to the replica that takes its read (once the
        # health checks see a replica past the client's write).
        c.execute("set statement_timeout = '7s'")
        wait_until(lambda: c.execute("select current_setting('statement_timeout'), "
                                     "pg_is_in_recovery()").fetchone() == ("7s", True), 10,
                   message="a read on a replica with the client's setting")
        # A transaction stays on the own server, and so does one server process for the session.
        c.execute("begin")
        pid = one(c, "select pg_backend_pid()")
        assert where(c) == (False, cluster.primary.port)
        c.execute("commit")
        c.execute("insert into readings (device_id, value) values (9, 2)")
        assert one(c, "select pg_backend_pid() from readings limit 1 for update") == pid
        # LISTEN on the own server: a notification sent while reads ran elsewhere arrives.
        got = []
        c.add_notify_handler(lambda n: got.append(n.payload))
        c.execute("listen telemetry")
        # (once the health checks have seen both replicas past the client's last write)
        wait_until(lambda: all(where(c)[0] for _ in range(4)), 10,
                   message="reads on replicas after the write")
        notifier.execute("notify telemetry, 'hello'")
        for _ in range(5):
            assert where(c)[0] is True
        got += [payload for _, payload in drain_notifies(c, 1 - len(got), timeout=3)]
        assert got == ["hello"]
        # A temporary table exists only there: from now on reads stay.
        c.execute("create temp table scratch (x int)")
        c.execute("insert into scratch values (1)")
        assert where(c, "select pg_is_in_recovery(), inet_server_port() from scratch") == \
            (False, cluster.primary.port)
    # A read-only transaction stays on the own server too. On a borrowed replica connection,
    # the statements psycopg names after 5 uses (pgjdbc: its COMMIT) were left behind, and the
    # next transaction on another connection failed with 26000 (or ran another client's).
    with psycopg.connect(pv.dsn()) as c:
        c.read_only = True
        for i in range(10):
            row = c.execute("select pg_is_in_recovery(), inet_server_port() where %s >= 0",
                            (i,)).fetchone()
            assert tuple(row) == (False, cluster.primary.port), i
            c.commit()
    # A row-level security tenant set through set_config with a parameter: psycopg names the
    # statement after 5 uses, and session mode does not follow what a named statement sets.
    # Reads then stay on the own server, where the tenant is (a replica would get the last one
    # pgvalve followed).
    with pv.connect() as c:
        for t in range(8):
            c.execute("select set_config('app.tenant', %s, false)", (f"t{t}",))
            time.sleep(0.3)  # past read-your-writes: the replicas could take the read
            assert one(c, "select current_setting('app.tenant')") == f"t{t}", t
    # Named prepared statements keep their name on the own server: they run there.
    with psycopg.connect(pv.dsn(), autocommit=True, prepare_threshold=0) as c:
        for i in range(5):
            row = c.execute("select pg_is_in_recovery() where %s > 0", (i + 1,)).fetchone()
            assert row[0] is False
    # Read-your-writes in session mode, with replay paused everywhere.
    for r in cluster.replicas:
        r.psql("select pg_wal_replay_pause()")
    try:
        with pv.connect() as writer:
            for i in range(200):
                rid = writer.execute("insert into readings (device_id, value) values (43, %s) "
                                     "returning id", (i,)).fetchone()[0]
                assert writer.execute("select count(*) from readings where id = %s",
                                      (rid,)).fetchone()[0] == 1, f"pair {i} lost its write"
    finally:
        for r in cluster.replicas:
            r.psql("select pg_wal_replay_resume()")
    cluster.wait_replay()


def test_a_reload_changes_where_connected_clients_read(cluster, pgvalve):
    conf = replicated(cluster, routing={"read_your_writes": "off",
                                        "load_balance": "least_connections"})
    pv = pgvalve(**conf)
    replicas_ready(pv, cluster)
    with pv.connect() as c:
        assert where(c)[0] is True
        # reads: primary, then round_robin over the replicas: the same connection follows.
        pv.config["routing"]["reads"] = "primary"
        pv.reload(pv.config)
        wait_until(lambda: where(c) == (False, cluster.primary.port), 10,
                   message="reads on the primary after the reload")
        assert all(where(c) == (False, cluster.primary.port) for _ in range(10))
        pv.config["routing"]["reads"] = "replicas"
        pv.config["routing"]["load_balance"] = "round_robin"
        pv.reload(pv.config)
        wait_until(lambda: where(c)[0], 10, message="reads on replicas again")
        ports = [where(c)[1] for _ in range(10)]
        # round_robin alternates; least_connections would pick the first idle replica each time.
        assert set(ports) == {r.port for r in cluster.replicas}
        assert all(a != b for a, b in zip(ports, ports[1:])), ports


def test_a_reload_that_adds_a_write_function_applies_to_clients_logging_in_after(cluster,
                                                                                pgvalve):
    # One worker, so that every client's decisions go through one cache: a client from before
    # the reload keeps its list (docs: the routing keys it logged in with), a client from after
    # has the new one, whichever of them routes a statement first.
    pv = pgvalve(workers=1, **replicated(cluster, routing={"read_your_writes": "off"}))
    replicas_ready(pv, cluster)
    seen = "select pg_is_in_recovery(), inet_server_port(), random() > 2"
    with pv.connect() as old:
        assert where(old, seen)[0] is True
        pv.config["routing"]["write_functions"] = ["nextval", "random"]
        offset = len(pv.log_text())
        pv.reload(pv.config)
        wait_until(lambda: "reload_ok" in pv.log_text()[offset:], 5, message="reload applied")
        assert where(old, seen)[0] is True  # the old list's decision, cached again
        with pv.connect() as new:
            assert [where(new, seen)[0] for _ in range(5)] == [False] * 5
            fresh = "select pg_is_in_recovery() as a, inet_server_port() as b, random() as c"
            assert where(new, fresh)[0] is False  # the new list's decision first
            assert where(old, fresh)[0] is True
            assert where(new, fresh)[0] is False
        assert where(old, seen)[0] is True


def test_reads_primary_keeps_every_statement_on_the_primary(cluster, pgvalve):
    pv = pgvalve(**replicated(cluster, routing={"reads": "primary"}))
    with pv.connect() as c:
        for _ in range(10):
            assert where(c) == (False, cluster.primary.port)


def test_reads_any_uses_primary_and_replicas(cluster, pgvalve):
    pv = pgvalve(**replicated(cluster, routing={"reads": "any", "load_balance": "round_robin"}))
    replicas_ready(pv, cluster)
    with pv.connect() as c:
        ports = {where(c)[1] for _ in range(30)}
    assert ports == {cluster.primary.port} | {r.port for r in cluster.replicas}


def test_a_lagging_replica_takes_no_reads_until_it_catches_up(cluster, pgvalve):
    pv = pgvalve(**replicated(cluster, routing={"max_replica_lag_ms": 300,
                                                "read_your_writes": "off"}))
    replicas_ready(pv, cluster)
    lagging = cluster.replicas[0]
    lagging.psql("select pg_wal_replay_pause()")
    try:
        stop = time.monotonic() + 1.5
        while time.monotonic() < stop:  # the primary moves on; the paused replica does not
            cluster.primary.psql("insert into readings (device_id, value) values (1, 1)",
                                 dbname=APP_DB)
            time.sleep(0.05)

        def lagging_gets_no_reads():
            with pv.connect() as c:
                return all(where(c)[1] != lagging.port for _ in range(20))

        wait_until(lagging_gets_no_reads, 5, message="the paused replica stops taking reads")
        assert "replica_takes_no_reads" in pv.log_text()
    finally:
        lagging.psql("select pg_wal_replay_resume()")
    replicas_ready(pv, cluster)  # both again once it has caught up


def test_reads_on_a_replica_that_stopped_replaying_are_no_older_than_the_lag_allowed(cluster,
                                                                                    pgvalve):
    """max_replica_lag_ms bounds how old a replica's answers are, give or take one
    health.interval_ms (configuration.md, How lag is measured). Replay stops just after a check
    of the primary: the next check, one interval later, is the first to see the primary past
    the replica; a lag counted from then, and only at the replica's own checks, let it answer
    reads up to two intervals too old."""
    lag_ms, interval_ms = 1500, 1000
    pv = pgvalve(**replicated(cluster, routing={"max_replica_lag_ms": lag_ms,
                                                "read_your_writes": "off"},
                              health={"interval_ms": interval_ms, "timeout_ms": 1000,
                                      "failures_before_down": 2}))
    replicas_ready(pv, cluster)
    paused = cluster.replicas[0]
    acks: list[tuple[float, int]] = []  # (when acknowledged, id) of each write
    stop = threading.Event()

    def writer():
        with pv.connect() as conn:
            while not stop.is_set():
                i = conn.execute("insert into readings (device_id, value) values (4, 4) "
                                 "returning id").fetchone()[0]
                acks.append((time.monotonic(), i))
                time.sleep(0.02)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    worst, reads_on_paused = 0.0, 0
    try:
        time.sleep(0.5)
        with cluster.primary.connect() as primary, paused.connect() as replica:
            def last_check():
                return primary.execute("select query_start from pg_stat_activity "
                                       "where application_name = 'pgvalve health check'"
                                       ).fetchone()[0]
            before = last_check()
            wait_until(lambda: last_check() != before, 3, interval=0.005,
                       message="a check of the primary")
            replica.execute("select pg_wal_replay_pause()")
        paused_at = time.monotonic()
        with pv.connect() as conn:
            while time.monotonic() < paused_at + (lag_ms + 3 * interval_ms) / 1000:
                t0 = time.monotonic()
                newest, port = conn.execute("select coalesce(max(id), 0), inet_server_port() "
                                            "from readings").fetchone()
                if port == paused.port:
                    reads_on_paused += 1
                    # How long the oldest acknowledged write this read did not see was done.
                    missed = [at for at, i in list(acks) if i > newest and at < t0]
                    if missed:
                        worst = max(worst, t0 - missed[0])
                time.sleep(0.01)
    finally:
        stop.set()
        t.join(10)
        paused.psql("select pg_wal_replay_resume()")
    assert reads_on_paused > 0
    print(f"worst {worst:.2f} s")
    assert worst < (lag_ms + interval_ms) / 1000, \
        f"a read on the paused replica was {worst:.2f} s old (max_replica_lag_ms {lag_ms})"
    replicas_ready(pv, cluster)


def test_a_replica_far_behind_when_pgvalve_starts_takes_no_reads(cluster, pgvalve):
    """pgvalve has never seen the primary at the paused replica's position: its lag is unknown,
    however recent the first samples are, so it takes no reads until it catches up."""
    behind = cluster.replicas[0]
    behind.psql("select pg_wal_replay_pause()")
    try:
        for _ in range(5):
            cluster.primary.psql("insert into readings (device_id, value) values (2, 2)",
                                 dbname=APP_DB)
        time.sleep(0.5)
        pv = pgvalve(**replicated(cluster, routing={"max_replica_lag_ms": 3000,
                                                    "read_your_writes": "off"}))
        replicas_ready(pv, cluster, count=1)
        with pv.connect() as c:
            assert all(where(c)[1] != behind.port for _ in range(40))
        took_reads = [line for line in pv.log_text().splitlines()
                      if "event=replica_takes_reads" in line and f":{behind.port} " in line]
        assert not took_reads, took_reads
    finally:
        behind.psql("select pg_wal_replay_resume()")
    replicas_ready(pv, cluster)  # both, once it has caught up


def test_read_your_writes_lsn_sees_every_write_with_replay_paused(cluster, pgvalve):
    pv = pgvalve(**replicated(cluster, routing={"max_replica_lag_ms": 600000,
                                                "read_your_writes": "lsn"}))
    replicas_ready(pv, cluster)
    for r in cluster.replicas:
        r.psql("select pg_wal_replay_pause()")
    try:
        with pv.connect() as writer, pv.connect() as other:
            for i in range(1000):
                rid = writer.execute("insert into readings (device_id, value) values (42, %s) "
                                     "returning id", (i,)).fetchone()[0]
                assert writer.execute("select count(*) from readings where id = %s",
                                      (rid,)).fetchone()[0] == 1, f"pair {i} lost its write"
            # Another client is not held to this client's writes: it reads from the (paused,
            # but within max lag) replicas, which do not have the rows — the test above could
            # have failed.
            rec, _ = where(other)
            assert rec is True
            assert other.execute("select count(*) from readings where id = %s",
                                 (rid,)).fetchone()[0] == 0
    finally:
        for r in cluster.replicas:
            r.psql("select pg_wal_replay_resume()")
    cluster.wait_replay()


def test_read_your_writes_lsn_covers_commits_with_synchronous_commit_off(cluster, pgvalve):
    """Telemetry writers often set synchronous_commit = off. Such a commit may sit in the
    primary's WAL buffers, past pg_current_wal_lsn(), for up to wal_writer_delay: replicas that
    replayed up to that position do not have it, and the writer's next read must not go there."""
    pv = pgvalve(**replicated(cluster, routing={"max_replica_lag_ms": 600000,
                                                "read_your_writes": "lsn"}))
    replicas_ready(pv, cluster)
    cluster.primary.psql("ALTER SYSTEM SET wal_writer_delay = '10s'")
    cluster.primary.psql("select pg_reload_conf()")
    try:
        with pv.connect() as writer:
            writer.execute("set synchronous_commit = off")
            for i in range(30):
                rid = writer.execute("insert into readings (device_id, value) values (43, %s) "
                                     "returning id", (i,)).fetchone()[0]
                if i % 3 == 0:
                    time.sleep(0.25)  # health checks see the replicas' replay positions
                assert writer.execute("select count(*) from readings where id = %s",
                                      (rid,)).fetchone()[0] == 1, f"read {i} missed its write"
    finally:
        cluster.primary.psql("ALTER SYSTEM RESET wal_writer_delay")
        cluster.primary.psql("select pg_reload_conf()")
    cluster.wait_replay()


def test_read_your_writes_time_window(cluster, pgvalve):
    pv = pgvalve(**replicated(cluster, routing={"read_your_writes": "time",
                                                "read_your_writes_window_ms": 800}))
    replicas_ready(pv, cluster)
    with pv.connect() as c:
        c.execute("insert into readings (device_id, value) values (3, 3)")
        assert where(c)[0] is False  # within the window: the primary
        time.sleep(1.0)
        assert where(c)[0] is True


def test_an_unreachable_replica_is_down_and_takes_no_reads(cluster, pgvalve):
    pv = pgvalve(**replicated(cluster))
    replicas_ready(pv, cluster)
    # A replica that refuses connections is down after two checks and takes no reads.
    bad = "127.0.0.1:1"
    conf = replicated(cluster)
    conf["databases"][APP_DB]["shards"][0]["replicas"].append(bad)
    pv.config.update(conf)
    pv.reload(pv.config)
    wait_until(lambda: "event=host_down" in pv.log_text() and bad in pv.log_text(), 5,
               message="the unreachable replica marked down")
    with pv.connect() as c:
        for _ in range(20):
            rec, port = where(c)
            assert port != 1


def test_set_pgvalve_route_is_kept_by_pgvalve(cluster, pgvalve):
    pv = pgvalve(**replicated(cluster, routing={"read_your_writes": "off"}))
    replicas_ready(pv, cluster)
    with pv.connect() as c:
        c.execute("SET pgvalve.route = primary")
        assert all(where(c) == (False, cluster.primary.port) for _ in range(5))
        # PostgreSQL never saw it: no such setting on the server.
        assert c.execute("select current_setting('pgvalve.route', true)").fetchone()[0] is None
        c.execute("SET pgvalve.route = replica")
        assert all(where(c)[0] for _ in range(5))
        c.execute("RESET pgvalve.route")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("SET pgvalve.route = sideways")


def test_a_misconfigured_health_check_takes_no_working_primary_out_of_service(cluster, pgvalve):
    conf = replicated(cluster)
    conf["health"] = dict(conf["health"], password="not-the-password")
    pv = pgvalve(**conf)
    wait_until(lambda: "event=health_check_refused" in pv.log_text(), 5,
               message="the refused check logged")
    time.sleep(0.5)  # several more refused checks
    with pv.connect() as c:
        # Writes still reach the primary (trusted as configured); reads too, since no replica
        # was ever seen healthy.
        c.execute("insert into readings (device_id, value) values (9, 9)")
        assert all(where(c) == (False, cluster.primary.port) for _ in range(5))
    status, body = pv_ready(pv)
    assert status == 200, body  # the primary answers: ready
    assert "password authentication failed" in pv.log_text()


def pv_ready(pv):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/ready", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_show_pools_names_each_hosts_shard_and_role(cluster, pgvalve):
    from itutil import APP_AND_OPS, show_pools
    pv = pgvalve(**replicated(cluster, users=APP_AND_OPS, routing={"read_your_writes": "off"}))
    replicas_ready(pv, cluster)
    with pv.connect() as c:
        c.execute("insert into readings (device_id, value) values (1, 1)")
    roles = {int(p["host"].rsplit(":", 1)[1]): (p["shard"], p["role"]) for p in show_pools(pv)}
    assert roles[cluster.primary.port] == ("s0", "primary"), roles
    for r in cluster.replicas:
        assert roles[r.port] == ("s0", "replica"), roles

def test_reads_waiting_for_a_replica_a_reload_removed_run_elsewhere(cluster, pgvalve):
    """configuration.md: hosts a reload no longer lists 'get no new work'. Reads queued for a
    removed replica's pool (pool_size 1, saturated) have not started: after the reload they run
    on a host that is still configured, not on the removed replica one by one, and none waits
    out checkout_timeout_ms (found by the operations audit: they stayed queued on the retired
    pool, invisible in SHOW POOLS, ran on the removed replica or failed with 53300)."""
    conf = replicated(cluster, pool_size=1, max_overflow=0, checkout_timeout_ms=4000,
                      routing={"read_your_writes": "off"})
    conf["databases"][APP_DB]["shards"][0]["replicas"] = [f"127.0.0.1:{cluster.replicas[0].port}"]
    pv = pgvalve(**conf)
    replicas_ready(pv, cluster, count=1)
    results = []

    def reader():
        try:
            with pv.connect(prepare_threshold=None) as c:
                results.append(c.execute("select inet_server_port(), pg_sleep(0.8)").fetchone()[0])
        except psycopg.Error as e:
            results.append(e.sqlstate)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.4)  # one read runs on the replica, three wait for its only connection
    del pv.config["databases"][APP_DB]["shards"][0]["replicas"]
    pv.reload(pv.config)
    for t in threads:
        t.join(30)
    assert len(results) == 4
    assert "53300" not in results, results
    removed = cluster.replicas[0].port
    assert results.count(removed) <= 1, f"reads ran on the removed replica after the reload: {results}"




@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_a_write_after_reads_in_one_request_runs_on_the_primary(cluster, pgvalve, mode):
    """A request is routed by its first statement. Reads and then a write up to one Sync
    (psycopg's pipeline, pgx's SendBatch), or requests sent back to back without waiting
    (postgres.js): the write must not reach the replica the reads went to, where it failed with
    25006 (read-only transaction). Session mode keeps such a request on the client's own server."""
    from pgwire_ext import ExtClient, bind, execute, parse, sync
    pv = pgvalve(**replicated(cluster, mode=mode, routing={"read_your_writes": "off"}))
    replicas_ready(pv, cluster)

    def written():
        return cluster.primary.scalar("select count(*) from readings where device_id = 42",
                                      dbname=APP_DB)

    before = written()
    read = "select pg_is_in_recovery()"
    write = "insert into readings (device_id, value) values (42, 1) returning pg_is_in_recovery()"
    with psycopg.connect(pv.dsn(), autocommit=True) as c:
        with c.pipeline():
            first = c.execute(read)
            second = c.execute(write)
        assert second.fetchone() == (False,)
        assert first.fetchone() in ((True,), (False,))
    client = ExtClient.login(pv)
    try:
        # Up to one Sync: PostgreSQL runs it as one implicit transaction.
        r = client.run([parse("", read), bind(""), execute(),
                        parse("", write), bind(""), execute(), sync()])
        assert not r.errors, r.errors
        assert r.rows[-1] == ["f"] and len(r.rows) == 2, r.rows
        # Two requests in one write, each with its Sync.
        r = client.run([parse("", read), bind(""), execute(), sync(),
                        parse("", write), bind(""), execute(), sync()])
        assert not r.errors, r.errors
        assert r.rows[-1] == ["f"] and r.kinds.count(b"Z") == 2, r.kinds
        # And as simple queries sent back to back.
        from pgwire import query_message
        r = client.run([query_message(read), query_message(write), query_message(read)])
        assert not r.errors, r.errors
        assert r.rows[1] == ["f"], r.rows
    finally:
        client.sock.close()
    assert written() == before + 4


@pytest.mark.parametrize("state", ["declare c cursor with hold for select 1",
                                   "select pg_advisory_lock(5)", "prepare p as select 1"])
def test_state_a_read_only_transaction_would_leave_on_a_replica_is_refused(cluster, pgvalve,
                                                                           state):
    """Left on a replica, such state pinned the client there: every later INSERT failed with
    25006 and even a read-write BEGIN ran on the replica. It is refused in a transaction on a
    replica (0A000, saying how to run it on the primary); the client's writes keep working."""
    pv = pgvalve(**replicated(cluster, routing={"read_your_writes": "off"}))
    replicas_ready(pv, cluster)
    with pv.connect() as c:
        c.execute("begin read only")
        assert where(c)[0] is True
        with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
            c.execute(state)
        assert str(refused.value).startswith("pgvalve:")
        assert "/* pgvalve: primary */ BEGIN READ ONLY" in str(refused.value)
        c.execute("rollback")
        row = c.execute("insert into readings (device_id) values (1) "
                        "returning pg_is_in_recovery()").fetchone()
        assert row == (False,)
        # As the refusal says: the same transaction on the primary may hold the state.
        c.execute("/* pgvalve: primary */ begin read only")
        c.execute(state)
        assert where(c) == (False, cluster.primary.port)
        c.execute("commit")
        assert c.execute("insert into readings (device_id) values (1) "
                         "returning pg_is_in_recovery()").fetchone() == (False,)
        c.execute("discard all" if "lock" not in state else "select pg_advisory_unlock_all()")
    # psycopg's read-only connection with a WITH HOLD named cursor: refused, not pinned.
    with psycopg.connect(pv.dsn()) as c:
        c.read_only = True
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            with c.cursor("held", withhold=True) as cur:
                cur.execute("select 1")
        c.rollback()
        c.read_only = False
        c.execute("insert into readings (device_id) values (2)")
        c.commit()


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("setting", ["set transaction_read_only = off",
                                     "set transaction_isolation = 'serializable'"])
def test_parameters_of_the_current_transaction_do_not_follow_the_client(cluster, pgvalve, mode,
                                                                        setting):
    """Outside a transaction block they end with the statement. Replayed on a replica before
    each read (as session settings), a hot standby refused them and pgvalve closed the client."""
    pv = pgvalve(**replicated(cluster, mode=mode, routing={"read_your_writes": "off"}))
    replicas_ready(pv, cluster)
    with pv.connect() as c:
        c.execute(setting)
        assert any(where(c)[0] for _ in range(4))  # reads still on replicas
        assert c.execute("show transaction_isolation").fetchone() == ("read committed",)
        assert c.execute("insert into readings (device_id) values (3) "
                         "returning pg_is_in_recovery()").fetchone() == (False,)


@pytest.mark.parametrize("mode", ["transaction", "session"])
@pytest.mark.parametrize("ryw", ["off", "time"])
def test_a_role_a_replica_has_not_replayed_yet_sends_reads_to_the_primary(cluster, pgvalve,
                                                                          mode, ryw):
    """SET ROLE of a role created a moment ago on the primary: a replica behind it refuses the
    role when pgvalve replays the client's settings there. The read runs on the primary instead
    (it closed the client), once the replica has it the reads go back to replicas."""
    pv = pgvalve(**replicated(cluster, mode=mode,
                              routing={"read_your_writes": ryw, "read_your_writes_window_ms": 300}))
    replicas_ready(pv, cluster)
    role = f"analyst_{mode}_{ryw}"
    for r in cluster.replicas:
        r.psql("select pg_wal_replay_pause()")
    try:
        cluster.primary.psql(f"CREATE ROLE {role} NOLOGIN; GRANT {role} TO app", dbname=APP_DB)
        with pv.connect() as c:
            c.execute(f"set role {role}")
            time.sleep(0.5)  # past read_your_writes' window
            for _ in range(4):
                user, rec = c.execute("select current_user, pg_is_in_recovery()").fetchone()
                assert (user, rec) == (role, False)
            assert pv.log_text().count("event=replica_refused_settings") == 1
    finally:
        for r in cluster.replicas:
            r.psql("select pg_wal_replay_resume()")
    cluster.wait_replay()
    with pv.connect() as c:
        c.execute(f"set role {role}")
        time.sleep(0.5)

        def on_a_replica():
            user, rec = c.execute("select current_user, pg_is_in_recovery()").fetchone()
            assert user == role
            return rec
        wait_until(on_a_replica, 10, message="reads with the role back on replicas")
        c.execute("reset role")
    cluster.primary.psql(f"DROP ROLE {role}", dbname=APP_DB)


@pytest.mark.parametrize("begin", ["BEGIN READ WRITE READ ONLY",
                                   "START TRANSACTION READ WRITE, READ ONLY",
                                   "BEGIN READ ONLY ISOLATION LEVEL SERIALIZABLE, "
                                   "ISOLATION LEVEL READ COMMITTED"])
def test_a_begin_with_any_mode_a_standby_refuses_runs_on_the_primary(cluster, pgvalve, begin):
    """PostgreSQL applies the modes in order: a hot standby refuses a read-write or serializable
    mode even when a later one overrides it. Such a transaction went to a replica, which refused
    its BEGIN; the primary takes it."""
    pv = pgvalve(**replicated(cluster, routing={"read_your_writes": "off"}))
    replicas_ready(pv, cluster)
    with pv.connect() as c:
        c.execute(begin)
        assert where(c) == (False, cluster.primary.port)
        assert c.execute("show transaction_read_only").fetchone() == ("on",)
        c.execute("commit")
        # Modes a standby takes still go to a replica.
        c.execute("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ, ISOLATION LEVEL READ COMMITTED")
        assert where(c)[0] is True
        c.execute("commit")


def test_session_mode_reads_about_the_clients_own_backend_run_on_its_server(cluster, pgvalve):
    """A session-mode client's autocommit reads borrow a replica; reads about the backend that
    runs them (its channels, cursors, prepared statements, pid) answered about a replica's
    backend: [] where PostgreSQL says ['chan'], ['cur'], ['pp']."""
    pv = pgvalve(**replicated(cluster, mode="session", routing={"read_your_writes": "off"}))
    replicas_ready(pv, cluster)
    with pv.connect() as c:
        c.execute("listen chan")
        c.execute("declare cur cursor with hold for select 1")
        c.execute("prepare pp as select 1")
        c.execute("begin")
        own_pid = c.execute("select pg_backend_pid()").fetchone()[0]
        c.execute("commit")
        assert any(where(c)[0] for _ in range(4))  # other reads still on replicas
        for _ in range(3):
            assert c.execute("select pg_listening_channels()").fetchall() == [("chan",)]
            assert c.execute("select name from pg_cursors").fetchall() == [("cur",)]
            assert c.execute("select name from pg_prepared_statements").fetchall() == [("pp",)]
            assert c.execute("select pg_backend_pid()").fetchone()[0] == own_pid
