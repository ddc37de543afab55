"""Operations: SIGHUP reloads without dropping clients; a broken file is refused (named with its
line) and the old config keeps serving; SIGTERM drains: running transactions may finish within
shutdown_timeout_s, new connections are refused, then the process exits."""

import copy
import re
import signal
import time

import psycopg
import pytest

from pgcluster import APP_DB, APP_PASSWORD, APP_USER, wait_until
from pgwire import PgWireError, RawClient

APP2_PASSWORD = "app2-secret"


@pytest.fixture(scope="module")
def app2(cluster):
    cluster.create_user("app2", APP2_PASSWORD)
    return "app2"


def new_log(pv, offset):
    return pv.log_text()[offset:]


def test_broken_yaml_is_refused_and_old_config_keeps_serving(pgvalve, app2):
    pv = pgvalve(mode="transaction", pool_size=2)
    with pv.connect() as existing, pv.connect(autocommit=False) as in_tx:
        in_tx.execute("select 1")  # open transaction across the reload
        offset = len(pv.log_text())
        good = pv.render()
        broken = good + "pool:\n  mode: [transaction\n  pool_size: -3\n\tbad_indent: {\n"
        pv.reload(broken)
        time.sleep(1.0)
        assert pv.alive(), f"pgvalve exited on a broken config:\n{pv.log_tail()}"
        assert existing.execute("select 1").fetchone() == (1,)
        in_tx.execute("select 2")
        in_tx.commit()
        with pv.connect() as fresh:
            assert fresh.execute("select 3").fetchone() == (3,)
        # the refusal is logged, naming the file and a line
        log = new_log(pv, offset)
        refusal = [l for l in log.splitlines()
                   if re.search(r"reload|config", l, re.I)
                   and re.search(r"level=(error|warn)", l, re.I)]
        assert refusal, f"no error/warn line about the refused reload in:\n{log[-3000:]}"
        # DESIGN §1: "a bad file is refused with file:line:column"
        path = re.escape(str(pv.config_path))
        assert any(re.search(path + r":\d+:\d+", l)
                   or (re.search(r"file=\"?" + path, l) and re.search(r"line=\d+", l))
                   for l in refusal), refusal
        # a config that parses but is invalid (impossible value) is refused as well
        bad_value = copy.deepcopy(pv.config)
        bad_value["pool"]["mode"] = "sometimes"
        offset = len(pv.log_text())
        pv.reload(bad_value)
        time.sleep(1.0)
        assert pv.alive()
        assert existing.execute("select 4").fetchone() == (4,)
        assert re.search(r"level=(error|warn)", new_log(pv, offset), re.I), new_log(pv, offset)
        # the refused file did not half-apply: a new client in transaction mode still works
        with pv.connect() as fresh:
            assert fresh.execute("select 5").fetchone() == (5,)


def test_a_file_larger_than_any_configuration_is_refused_unread(pgvalve):
    from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
    pv = pgvalve(mode="transaction", pool_size=2, users=APP_AND_OPS)
    with pv.connect() as c:
        pv.write_config(pv.render() + "# " + "x" * (1 << 20) + "\n")
        with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                             autocommit=True) as admin:
            with pytest.raises(psycopg.Error) as e:
                admin.execute("RELOAD")
        assert e.value.sqlstate == "F0000"
        assert "larger than 1 MiB" in pv.log_text()
        assert c.execute("select 1").fetchone() == (1,)


def test_valid_reload_adds_user_without_dropping_clients(pgvalve, app2):
    pv = pgvalve(mode="transaction", pool_size=2)
    # before: app2 is unknown to pgvalve
    with pytest.raises(PgWireError) as ei:
        RawClient("127.0.0.1", pv.port, app2, APP2_PASSWORD, APP_DB, timeout=5).connect()
    assert ei.value.sqlstate == "28P01"
    with pv.connect() as existing, pv.connect(autocommit=False) as in_tx:
        in_tx.execute("select 1")  # a transaction open across the reload
        cfg = copy.deepcopy(pv.config)
        cfg["users"].append({"name": app2, "password": APP2_PASSWORD})
        pv.reload(cfg)

        def app2_can_connect():
            with psycopg.connect(pv.dsn(user=app2, password=APP2_PASSWORD),
                                 autocommit=True) as c:
                return c.execute("select current_user").fetchone()[0] == app2
        wait_until(app2_can_connect, 5, interval=0.2, message="app2 accepted after SIGHUP")
        # existing clients were not dropped
        assert existing.execute("select 1").fetchone() == (1,)
        assert not existing.closed
        in_tx.execute("select 2")
        in_tx.commit()
        assert existing.execute("select pg_backend_pid()").fetchone()[0] is not None
        with pv.connect() as fresh:
            assert fresh.execute("select current_user").fetchone() == ("app",)
        assert pv.alive()


def test_sigterm_drains_open_transaction(pgvalve, cluster):
    cluster.primary.psql("drop table if exists drain; create table drain(id int);"
                         "alter table drain owner to app", dbname=APP_DB)
    pv = pgvalve(mode="transaction", pool_size=2, shutdown_timeout_s=5)
    with pv.connect(autocommit=False) as c:
        c.execute("insert into drain values (1)")
        t0 = time.monotonic()
        pv.signal(signal.SIGTERM)
        time.sleep(1.0)
        assert pv.alive(), "pgvalve exited at once on SIGTERM with a transaction open"
        # new connections are refused while draining
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pv.dsn(connect_timeout=3))
        # the running transaction can finish
        c.execute("insert into drain values (2)")
        c.commit()
    assert cluster.primary.scalar("select count(*) from drain", dbname=APP_DB) == 2
    rc = pv.wait_exit(5)
    assert rc is not None, "pgvalve still running 5 s after the last transaction ended"
    assert time.monotonic() - t0 < 5 + 2
    assert rc == 0, f"exit code {rc} after a clean drain"


def test_sigterm_gives_up_after_shutdown_timeout(pgvalve, cluster):
    pv = pgvalve(mode="transaction", pool_size=2, shutdown_timeout_s=3)
    c = pv.connect(autocommit=False)
    try:
        c.execute("select 1")  # a transaction that never ends
        t0 = time.monotonic()
        pv.signal(signal.SIGTERM)
        rc = pv.wait_exit(10)
        elapsed = time.monotonic() - t0
        assert rc is not None, "pgvalve ignored shutdown_timeout_s (still running after 10 s)"
        assert 2.5 <= elapsed <= 6, f"exited {elapsed:.1f}s after SIGTERM, shutdown_timeout_s=3"
        # the abandoned client sees its connection closed, not a hang
        with pytest.raises(psycopg.OperationalError):
            c.execute("select 2")
    finally:
        c.close()
    # nothing of that client is left open on the server
    wait_until(lambda: cluster.primary.scalar(
        "select count(*) from pg_stat_activity where usename = 'app' "
        "and state like 'idle in transaction%'") == 0, 5,
        message="the abandoned transaction to be closed on the server")


def test_sigterm_without_clients_exits_promptly(pgvalve):
    pv = pgvalve(mode="transaction", pool_size=2, shutdown_timeout_s=5)
    with pv.connect() as c:
        c.execute("select 1")
    t0 = time.monotonic()
    pv.signal(signal.SIGTERM)
    rc = pv.wait_exit(4)
    assert rc is not None, "pgvalve with no transaction running did not exit within 4 s"
    assert rc == 0
    assert time.monotonic() - t0 < 4


def show_config(pv) -> dict:
    from itutil import OPS_PASSWORD, OPS_USER
    with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                         autocommit=True) as admin:
        return dict(admin.execute("SHOW CONFIG").fetchall())


def test_reload_logs_each_change_and_keeps_restart_keys_in_effect(pgvalve):
    from itutil import APP_AND_OPS
    pv = pgvalve(mode="transaction", pool_size=2, users=APP_AND_OPS)
    listen_before = f"127.0.0.1:{pv.port}"
    assert show_config(pv)["listen"] == listen_before
    cfg = copy.deepcopy(pv.config)
    cfg["pool"]["pool_size"] = 3
    cfg["listen"] = "127.0.0.1:1"  # only a restart could bind it
    cfg["workers"] = 1
    offset = len(pv.log_text())
    pv.reload(cfg)
    wait_until(lambda: "reload_ok" in new_log(pv, offset), 5, message="reload_ok logged")
    log = new_log(pv, offset)
    assert re.search(r"event=reload_changed key=pool\.pool_size from=2 to=3", log), log
    assert re.search(r"level=warn event=reload_needs_restart key=listen in_effect=" +
                     re.escape(listen_before) + r" in_file=127\.0\.0\.1:1 ", log), log
    assert re.search(r"event=reload_needs_restart key=workers in_effect=2 in_file=1", log), log
    shown = show_config(pv)
    assert shown["pool.pool_size"] == "3"  # applied
    assert shown["listen"] == listen_before  # still the socket pgvalve listens on
    assert shown["workers"] == "2"
    with pv.connect() as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_key_not_supported_yet_is_refused_at_start_check_and_reload(pgvalve, tmp_path):
    """A key that would do nothing stops the start, fails --check, and a reload to it is refused
    while the running config keeps serving."""
    pv = pgvalve(mode="transaction", pool_size=2)
    cfg = copy.deepcopy(pv.config)
    # Session mode with a sharded database is not built yet.
    db = cfg["databases"][APP_DB]
    db["shards"] = [dict(db["shards"][0], name="s0"), dict(db["shards"][0], name="s1")]
    db["sharding"] = {"key": "device_id", "tables": ["telemetry"]}
    cfg["pool"]["mode"] = "session"
    text = pv.render(cfg)
    path = tmp_path / "session.yaml"
    path.write_text(text)
    line, column = next((i, l.index("session") + 1) for i, l in enumerate(text.splitlines(), 1)
                        if l.strip() == "mode: session")
    want = f"{path}:{line}:{column}: pool.mode: not supported yet"
    import subprocess
    check = subprocess.run([pv.binary, "--config", str(path), "--check"], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 1, check
    assert want in check.stdout + check.stderr, check
    start = subprocess.run([pv.binary, "--config", str(path)], capture_output=True, text=True,
                           timeout=30)
    assert start.returncode != 0 and want in start.stdout + start.stderr, start
    offset = len(pv.log_text())
    pv.reload(cfg)
    wait_until(lambda: "reload_failed" in new_log(pv, offset), 5, message="reload refused")
    assert "pool.mode: not supported yet" in new_log(pv, offset)
    with pv.connect() as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_restart_with_a_second_process_on_the_same_ports(pgvalve, cluster, tmp_path):
    """docs/operations.md, "Restarting without closing the door": a new pgvalve started with the
    same file shares both ports; the old one, sent SIGTERM, lets its transaction finish and
    exits, and from its drain on the new one answers HTTP. Clients connecting all along get a
    connection every time (with retries, as a pool does, for one the old process was still
    logging in when it stopped: each worker closes its listener on its own thread, so under a
    slow build a retry may land on a listener of the old process not yet closed)."""
    import threading
    import urllib.request

    from pgcluster import Pgvalve

    cluster.primary.psql("drop table if exists handover; create table handover(id int);"
                         "alter table handover owner to app", dbname=APP_DB)
    old = pgvalve(mode="transaction", pool_size=2, shutdown_timeout_s=20)
    new = Pgvalve(cluster, tmp_path / "new", binary=old.binary)
    new.port, new.admin_port = old.port, old.admin_port
    new.config = copy.deepcopy(old.config)
    stop = threading.Event()
    served, failures, second_failures = [0], [], []

    def connect_all_along():
        while not stop.is_set():
            for attempt in (1, 2, 3):
                try:
                    with psycopg.connect(old.dsn(connect_timeout=3), autocommit=True) as c:
                        c.execute("select 1")
                    served[0] += 1
                    break
                except psycopg.Error as e:
                    (failures if attempt < 3 else second_failures).append(str(e))
                    # A pool waits a moment before it tries again; three attempts at once could
                    # all reach the old process's listeners in the instant before they close.
                    time.sleep(0.05 * attempt)
            time.sleep(0.01)

    tx = old.connect(autocommit=False)
    tx.execute("insert into handover values (1)")
    loop = threading.Thread(target=connect_all_along, daemon=True)
    try:
        loop.start()
        new.start()
        wait_until(lambda: "event=admin_listen_shared" in new.log_text(), timeout=10,
                   message="the new process listening on both ports")
        assert "event=listen_port_shared" in new.log_text()
        before = served[0]
        old.signal(signal.SIGTERM)
        wait_until(lambda: "event=admin_listen_handed_over" in old.log_text(), timeout=5,
                   message="the draining process closing its HTTP listener")
        # Only the new process answers HTTP now: not /ready's "draining" of the old one.
        for _ in range(20):
            with urllib.request.urlopen(f"http://127.0.0.1:{old.admin_port}/ready",
                                        timeout=3) as r:
                assert r.status == 200
        assert old.alive(), "the old process exited with a transaction open"
        tx.execute("insert into handover values (2)")
        tx.commit()
        tx.close()
        assert old.wait_exit(10) == 0, "the old process did not exit after its last transaction"
        time.sleep(0.5)
        assert served[0] > before + 10, "clients stopped getting connections during the restart"
        with psycopg.connect(new.dsn(), autocommit=True) as c:
            assert c.execute("select count(*) from handover").fetchone()[0] == 2
    finally:
        stop.set()
        loop.join(10)
        new.stop()
    assert not second_failures, second_failures[:3]
    assert len(failures) <= 6, failures[:3]


def test_a_rotated_password_reaches_servers_opened_for_clients_logged_in_before(pgvalve,
                                                                                 cluster):
    """Password rotation: ALTER ROLE on the servers, then a reload with the new password. A
    client logged in before keeps working: the servers opened for it from then on (and its
    LISTEN's shared connection) log in with the new password, not the one of its login."""
    from itutil import OPS_PASSWORD, OPS_USER, drain_notifies
    cluster.primary.psql("DROP ROLE IF EXISTS rotating")
    cluster.create_user("rotating", "before-rotation")
    users = [{"name": "rotating", "password": "before-rotation"},
             {"name": OPS_USER, "password": OPS_PASSWORD, "admin": True}]
    pv = pgvalve(mode="transaction", pool_size=2, users=users)
    with psycopg.connect(pv.dsn(user="rotating", password="before-rotation"),
                         autocommit=True) as before:
        assert before.execute("select 1").fetchone() == (1,)
        cluster.primary.psql("ALTER ROLE rotating PASSWORD 'after-rotation'")
        cfg = copy.deepcopy(pv.config)
        cfg["users"][0]["password"] = "after-rotation"
        offset = len(pv.log_text())
        pv.reload(cfg)
        wait_until(lambda: "reload" in new_log(pv, offset), 5, message="the reload is applied")
        with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                             autocommit=True) as admin:
            admin.execute("RECONNECT")  # the pooled servers logged in with the old password go
        for i in range(3):
            assert before.execute("select %s::int", (i,)).fetchone() == (i,)
        before.execute("listen rotated")
        with psycopg.connect(pv.dsn(user="rotating", password="after-rotation"),
                             autocommit=True) as after:
            after.execute("notify rotated, 'hello'")
        assert drain_notifies(before, 1, timeout=5) == [("rotated", "hello")]
    assert "sqlstate=28P01" not in new_log(pv, offset)


def test_a_reload_that_forbids_insecure_auth_applies_to_clients_logged_in_before(pgvalve,
                                                                                  cluster):
    """server_allow_insecure_auth turned off by a reload: the server logins a client that logged
    in before makes from then on do not send its password in clear text either (they follow
    the configuration now, as the rotated password does)."""
    from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
    from test_limits import assert_pgvalve_message
    cluster.primary.psql("DROP ROLE IF EXISTS cleartext")
    cluster.create_user("cleartext", "clear-pw")
    hba = cluster.primary.datadir / "pg_hba.conf"
    before = hba.read_text()
    hba.write_text("host all cleartext 127.0.0.1/32 password\n" + before)
    cluster.primary.psql("select pg_reload_conf()")
    try:
        users = APP_AND_OPS + [{"name": "cleartext", "password": "clear-pw"}]
        pv = pgvalve(mode="transaction", pool_size=2, users=users,
                     server_allow_insecure_auth=True)
        with psycopg.connect(pv.dsn(user="cleartext", password="clear-pw"),
                             autocommit=True) as old:
            assert old.execute("select current_user").fetchone() == ("cleartext",)
            old.execute("listen reloaded")  # its shared LISTEN connection logs in in clear text
            cfg = copy.deepcopy(pv.config)
            cfg["server_allow_insecure_auth"] = False
            offset = len(pv.log_text())
            pv.reload(cfg)
            wait_until(lambda: "reload_ok" in new_log(pv, offset), 5, message="reload applied")
            with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD,
                                        dbname="pgvalve"), autocommit=True) as admin:
                admin.execute("RECONNECT")  # the pooled connection goes; the next is a login
            with pytest.raises(psycopg.Error) as e:
                old.execute("select 1")
            assert e.value.sqlstate == "28000", e.value
            assert "server_allow_insecure_auth" in str(e.value)
            assert_pgvalve_message(str(e.value))
            assert not old.closed
            # So does the LISTEN connection when it logs in again (losing it closed its
            # listener; the next LISTEN opens a new one).
            offset = len(pv.log_text())
            cluster.primary.psql("select pg_terminate_backend(pid) from pg_stat_activity "
                                 "where usename = 'cleartext'")
            # The old listening connection gone first: a LISTEN that joined it in the meantime
            # would get its loss (08006), not the new login's refusal.
            wait_until(lambda: "event=listen_connection_lost" in new_log(pv, offset)
                       or "event=listen_connection_closed" in new_log(pv, offset), 5,
                       message="the listening connection gone")
        with psycopg.connect(pv.dsn(user="cleartext", password="clear-pw"),
                             autocommit=True) as again:
            with pytest.raises(psycopg.Error) as e:
                again.execute("listen reloaded")
            assert e.value.sqlstate == "28000", e.value
            assert "server_allow_insecure_auth" in str(e.value)
            assert "event=listen_connection_failed" in new_log(pv, offset)
            assert "event=listen_connection_open" not in new_log(pv, offset)
    finally:
        hba.write_text(before)
        cluster.primary.psql("select pg_reload_conf()")


@pytest.fixture(scope="module")
def telemetry2(cluster):
    """A second database on the same server, for a reload that changes `dbname`."""
    cluster.primary.psql("DROP DATABASE IF EXISTS telemetry2")
    cluster.primary.psql("CREATE DATABASE telemetry2 OWNER app")
    cluster.primary.psql("DROP TABLE IF EXISTS moved; CREATE TABLE moved (id int);"
                         "ALTER TABLE moved OWNER TO app", dbname=APP_DB)
    return "telemetry2"


def database_of(conn):
    return conn.execute("select current_database()").fetchone()[0]


def closed_by_reload(pv, offset, reason):
    """How many clients pgvalve closed with 57P01 and a reason starting `reason` (psycopg keeps
    a FATAL that arrives between requests as text at best, without its SQLSTATE)."""
    return sum("event=client_closed" in line and "sqlstate=57P01" in line
               and f'reason="{reason}' in line for line in new_log(pv, offset).splitlines())


@pytest.mark.parametrize("first", ["logged_in_before", "logged_in_after"])
def test_a_reload_that_changes_dbname_sends_clients_logged_in_before_away(pgvalve, cluster,
                                                                          telemetry2, first):
    """docs/configuration.md, reload: a changed `dbname` applies to clients that log in after
    the reload; those that logged in before finish their transaction in their database, then
    leave (57P01) rather than run anywhere else. One worker and two pooled connections shared
    by both, so whichever of them uses the pool first after the reload decides nothing."""
    cluster.primary.psql("TRUNCATE moved", dbname=APP_DB)
    pv = pgvalve(mode="transaction", pool_size=2, workers=1)
    before = pv.connect()
    in_tx = pv.connect(autocommit=False)
    assert database_of(before) == APP_DB
    in_tx.execute("insert into moved values (1)")
    cfg = copy.deepcopy(pv.config)
    cfg["databases"][APP_DB]["dbname"] = telemetry2
    offset = len(pv.log_text())
    pv.reload(cfg)
    wait_until(lambda: "event=dbname_changed" in new_log(pv, offset), 5, message="reload applied")

    def client_from_after():
        with pv.connect() as after:
            assert [database_of(after) for _ in range(3)] == [telemetry2] * 3

    def client_from_before():
        with pytest.raises(psycopg.OperationalError,
                           match=r"pgvalve: a reload changed the database on the servers "
                                 r"\(dbname\)"):
            database_of(before)
        assert closed_by_reload(pv, offset, "pgvalve: a reload changed the database on the "
                                            "servers (dbname)") == 1

    for check in ((client_from_before, client_from_after) if first == "logged_in_before"
                  else (client_from_after, client_from_before)):
        check()
    # The transaction open across the reload finishes where it began, then the client leaves.
    assert database_of(in_tx) == APP_DB
    in_tx.execute("insert into moved values (2)")
    in_tx.commit()
    with pytest.raises(psycopg.OperationalError):
        database_of(in_tx)
    assert closed_by_reload(pv, offset, "pgvalve: a reload changed the database on the servers "
                                        "(dbname)") == 2
    assert cluster.primary.scalar("select count(*) from moved", dbname=APP_DB) == 2
    with pv.connect() as again:
        assert database_of(again) == telemetry2
    for c in (before, in_tx):
        c.close()


def test_a_reload_that_removes_a_database_sends_its_clients_away(pgvalve, cluster, telemetry2):
    """A removed database's clients do not stay on pools nobody sees (not in SHOW POOLS, not
    health-checked): they leave at their next transaction boundary, told why."""
    from itutil import APP_AND_OPS, OPS_PASSWORD, OPS_USER
    cluster.primary.psql("TRUNCATE moved", dbname=APP_DB)
    shard = {"name": "s0", "primary": f"127.0.0.1:{cluster.primary.port}"}
    pv = pgvalve(mode="transaction", pool_size=2, users=APP_AND_OPS,
                 databases={APP_DB: {"shards": [shard]},
                            "other": {"dbname": APP_DB, "shards": [shard]}})
    idle = pv.connect(dbname="other")
    in_tx = pv.connect(dbname="other", autocommit=False)
    kept = pv.connect()
    assert database_of(idle) == APP_DB
    in_tx.execute("insert into moved values (1)")

    def pools_of_other():
        with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                             autocommit=True) as admin:
            cur = admin.execute("SHOW POOLS")
            cols = [d.name for d in cur.description]
            return [r for r in (dict(zip(cols, row)) for row in cur.fetchall())
                    if r["database"] == "other"]
    assert pools_of_other()
    cfg = copy.deepcopy(pv.config)
    del cfg["databases"]["other"]
    offset = len(pv.log_text())
    pv.reload(cfg)
    # The idle client is closed once its worker hears of the reload, just after the log line.
    wait_until(lambda: closed_by_reload(
        pv, offset, "pgvalve: a reload removed this database from the configuration") == 1, 5,
               message="the idle client sent away")
    with pytest.raises(psycopg.OperationalError,
                       match="pgvalve: a reload removed this database from the configuration"):
        idle.execute("select 1")
    assert closed_by_reload(pv, offset,
                            "pgvalve: a reload removed this database from the configuration") == 1
    in_tx.execute("insert into moved values (2)")
    in_tx.commit()
    with pytest.raises(psycopg.OperationalError):
        in_tx.execute("select 1")
    assert closed_by_reload(pv, offset,
                            "pgvalve: a reload removed this database from the configuration") == 2
    assert cluster.primary.scalar("select count(*) from moved", dbname=APP_DB) == 2
    assert database_of(kept) == APP_DB  # another database's clients go on
    assert not pools_of_other()
    with pytest.raises(PgWireError) as e:
        RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, "other", timeout=5).connect()
    assert e.value.sqlstate == "3D000", e.value
    for c in (idle, in_tx, kept):
        c.close()


def test_a_reload_that_removes_a_user_sends_its_clients_away(pgvalve, cluster, telemetry2, app2):
    """An operator who removes a user (a leaked password, a retired service) takes its access
    away from the clients logged in as it too: they finish the transaction they are in and
    leave (57P01), as a removed database's do; an admin console whose user was removed or lost
    `admin: true` ends at its next command (28000). Other users' clients go on."""
    from itutil import OPS_PASSWORD, OPS_USER
    cluster.primary.psql("TRUNCATE moved; GRANT ALL ON moved TO app2", dbname=APP_DB)
    users = [{"name": APP_USER, "password": APP_PASSWORD},
             {"name": app2, "password": APP2_PASSWORD},
             {"name": OPS_USER, "password": OPS_PASSWORD, "admin": True},
             {"name": "ops2", "password": OPS_PASSWORD, "admin": True}]
    pv = pgvalve(mode="transaction", pool_size=2, users=users)
    idle = psycopg.connect(pv.dsn(user=app2, password=APP2_PASSWORD), autocommit=True)
    in_tx = psycopg.connect(pv.dsn(user=app2, password=APP2_PASSWORD))
    kept = pv.connect()
    console = psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                              autocommit=True)
    demoted = psycopg.connect(pv.dsn(user="ops2", password=OPS_PASSWORD, dbname="pgvalve"),
                              autocommit=True)
    assert idle.execute("select current_user").fetchone() == (app2,)
    in_tx.execute("insert into moved values (1)")
    assert console.execute("SHOW VERSION").fetchone()
    assert demoted.execute("SHOW VERSION").fetchone()

    cfg = copy.deepcopy(pv.config)
    cfg["users"] = [u for u in cfg["users"] if u["name"] not in (app2, OPS_USER)]
    next(u for u in cfg["users"] if u["name"] == "ops2")["admin"] = False
    offset = len(pv.log_text())
    pv.reload(cfg)
    reason = "pgvalve: a reload removed this user from the configuration"
    # The idle client is closed once its worker hears of the reload, just after the log line.
    wait_until(lambda: "event=user_removed" in new_log(pv, offset)
               and closed_by_reload(pv, offset, reason) == 1, 5, message="reload applied")
    with pytest.raises(psycopg.OperationalError, match=reason):
        idle.execute("select 1")
    assert closed_by_reload(pv, offset, reason) == 1
    # The transaction open across the reload finishes, then the client leaves.
    in_tx.execute("insert into moved values (2)")
    in_tx.commit()
    with pytest.raises(psycopg.OperationalError):
        in_tx.execute("select 1")
    assert closed_by_reload(pv, offset, reason) == 2
    assert cluster.primary.scalar("select count(*) from moved", dbname=APP_DB) == 2
    assert kept.execute("select current_user").fetchone() == (APP_USER,)
    with pytest.raises(PgWireError) as e:
        RawClient("127.0.0.1", pv.port, app2, APP2_PASSWORD, APP_DB, timeout=5).connect()
    assert e.value.sqlstate == "28P01", e.value

    with pytest.raises(psycopg.OperationalError,
                       match=f'pgvalve: a reload removed user "{OPS_USER}"; this admin console'):
        console.execute("SHOW VERSION")
    with pytest.raises(psycopg.OperationalError,
                       match='pgvalve: a reload took admin: true from user "ops2"'):
        demoted.execute("SHOW VERSION")
    for c in (idle, in_tx, kept, console, demoted):
        c.close()
