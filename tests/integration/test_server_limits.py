"""When a new server connection cannot be opened for lack of room — PostgreSQL's max_connections
is reached (53300), pgvalve is out of file descriptors — or the server refuses logins while it
shuts down or starts up (57P03): what clients see (DESIGN §4.2, §4.5, §7; docs/errors.md).

- a full server: clients wait in the pool's queue for a connection to come back, and get 53300
  only after pool.checkout_timeout_ms, saying the server refuses new connections;
- a server shutting down: a request waits for it (failover.hold_writes_ms), as for a server that
  refuses TCP;
- pgvalve out of descriptors: 53300 after checkout_timeout_ms saying so, no failover hold.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request

import psycopg
import pytest

from itutil import SANITIZED
from pgcluster import APP_PASSWORD, APP_USER, DEFAULT_PGVALVE_BIN, PgCluster, Pgvalve, wait_until

OPS = {"name": "ops", "password": "ops-secret", "admin": True}
APP = {"name": APP_USER, "password": APP_PASSWORD}


@pytest.fixture(scope="module")
def full_cluster():
    # max_connections 6 leaves 3 slots to roles that are not superusers
    # (superuser_reserved_connections = 3): pgvalve's health check takes one, its pool two.
    c = PgCluster(replicas=0, extra_conf="max_connections = 6")
    c.start()
    yield c
    c.teardown()


@pytest.fixture(scope="module")
def plain_cluster():
    c = PgCluster(replicas=0)
    c.start()
    yield c
    c.teardown()


@pytest.fixture
def start(request, tmp_path):
    started: list[Pgvalve] = []

    def make(cluster, wrapper=None, **overrides) -> Pgvalve:
        binary = os.environ.get("PGVALVE_BIN") or str(DEFAULT_PGVALVE_BIN)
        overrides.setdefault("users", [APP, OPS])
        pv = Pgvalve(cluster, tmp_path / f"pgvalve{len(started)}", binary=binary,
                     wrapper=wrapper, **overrides)
        started.append(pv)
        request.node._pgvalve_instances = started  # conftest shows their logs on failure
        return pv.start()

    yield make
    for pv in reversed(started):
        pv.stop()


def metric_sum(pv, name: str, **labels) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def admin(pv):
    return psycopg.connect(pv.dsn(user=OPS["name"], password=OPS["password"], dbname="pgvalve"),
                           autocommit=True)


def run_in_thread(fn):
    """Runs fn() in a thread; returns (thread, result dict with 'ok' or 'error')."""
    result: dict = {}

    def body():
        try:
            fn()
            result["ok"] = True
        except psycopg.Error as e:
            result["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, result


# --- PostgreSQL's max_connections reached ---------------------------------------------------

def test_clients_wait_for_pooled_connections_while_the_server_is_full(full_cluster, start):
    # pool_size is larger than the server allows: logins beyond its slots are refused (53300),
    # and the clients that asked for them are served by the connections that come back.
    pv = start(full_cluster, pool_size=10, max_overflow=0, checkout_timeout_ms=30000)
    clients = [pv.connect() for _ in range(6)]
    try:
        def transaction(conn):
            def run():
                conn.execute("begin")
                conn.execute("select pg_sleep(0.3)")
                conn.execute("commit")
            return run

        runs = [run_in_thread(transaction(c)) for c in clients]
        for t, _ in runs:
            t.join(60)
        assert all(not t.is_alive() for t, _ in runs), "a client is still waiting after 60 s"
        failed = [repr(r["error"]) for _, r in runs if "error" in r]
        assert not failed, failed
        # The pool did ask for more than the server allows, and counted what it refused.
        assert metric_sum(pv, "pgvalve_server_login_failures_total", sqlstate="53300") >= 1
        assert "server_connect_failed" in pv.log_text()
    finally:
        for c in clients:
            c.close()


def test_a_full_server_gives_53300_after_checkout_timeout_and_says_so(full_cluster, start):
    pv = start(full_cluster, pool_size=10, max_overflow=0, checkout_timeout_ms=1000)
    a, b = pv.connect(), pv.connect()  # the first login opened the pool's one connection
    hogs = []
    try:
        # Another application takes the server's remaining slots.
        refused = None
        for _ in range(10):
            try:
                hogs.append(psycopg.connect(full_cluster.primary.tcp_dsn()))
            except psycopg.OperationalError as e:
                refused = str(e)
                break
        assert refused and ("remaining connection slots" in refused
                            or "too many clients" in refused), refused

        a.execute("begin")
        a.execute("select 1")  # a holds the pool's only connection
        with pytest.raises(psycopg.Error) as ei:
            b.execute("select 1")
        assert ei.value.sqlstate == "53300", repr(ei.value)
        message = ei.value.diag.message_primary or ""
        assert message.startswith("pgvalve: no server connection became available within "
                                  "pool.checkout_timeout_ms"), message
        assert "refuses new connections" in message and "max_connections" in message, message
        # b keeps its connection: once a's connection comes back, b gets it.
        a.execute("commit")
        assert b.execute("select 2").fetchone() == (2,)
    finally:
        for h in hogs:
            h.close()
        a.close()
        b.close()


# --- PostgreSQL shutting down ----------------------------------------------------------------

def test_a_server_shutting_down_holds_a_request_until_it_is_back(plain_cluster, start):
    pv = start(plain_cluster, pool_size=2, max_overflow=0,
               failover={"hold_writes_ms": 60000},
               health={"interval_ms": 200, "failures_before_down": 2})
    node = plain_cluster.primary
    b = pv.connect()
    direct = None
    restarted = False
    try:
        b.execute("select 1")
        with admin(pv) as a:
            a.execute("RECONNECT")  # the idle connection goes: b's next request opens one
        # A smart shutdown waits for the sessions it has (this one, the health check), and
        # meanwhile refuses every new login with 57P03 "the database system is shutting down".
        direct = node.connect()
        node.pg_ctl("-m", "smart", "-W", "stop")

        def refuses_logins():
            try:
                psycopg.connect(node.tcp_dsn()).close()
                return False
            except psycopg.OperationalError as e:
                return "shutting down" in str(e)

        wait_until(refuses_logins, 15, message="PostgreSQL refusing logins (shutting down)")
        t, result = run_in_thread(lambda: b.execute("select 1"))
        wait_until(lambda: "event=writes_held" in pv.log_text() or not t.is_alive(), 15,
                   message="the request held")
        assert t.is_alive(), f"the request did not wait for the server: {result}"
        assert "event=writes_held" in pv.log_text()

        node.stop("fast")  # the restart goes on
        node.start()
        restarted = True
        t.join(60)
        assert not t.is_alive(), "the request still waits after the server came back"
        assert result.get("ok"), repr(result.get("error"))
        assert metric_sum(pv, "pgvalve_server_login_failures_total", sqlstate="57P03") >= 1
    finally:
        if direct is not None and not direct.closed:
            try:
                direct.close()
            except psycopg.Error:
                pass
        b.close()
        if not restarted:  # leave the module's server running for the next test
            node.stop("fast")
            node.start()


def test_a_restart_under_load_fails_no_request_with_57P03(plain_cluster, start):
    # A request that meets the restart is cut (08006, its connection kept) or waits for the
    # server; whichever moment it asks, it is never refused with the server's 57P03.
    pv = start(plain_cluster, pool_size=2, max_overflow=2,
               failover={"hold_writes_ms": 60000},
               health={"interval_ms": 200, "failures_before_down": 2})
    node = plain_cluster.primary
    stop = threading.Event()
    errors: list[psycopg.Error] = []
    served = [0] * 6
    lock = threading.Lock()

    def load(i):
        with pv.connect() as conn:
            while not stop.is_set():
                try:
                    conn.execute("select 1")
                    served[i] += 1
                except psycopg.Error as e:
                    with lock:
                        errors.append(e)
                    if conn.closed:
                        return

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(served), 15, message="every client served before the restart")
        node.stop("fast")
        node.start()
        before = list(served)
        wait_until(lambda: all(s > b for s, b in zip(served, before)), 60,
                   message="every client served after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    wrong = [f"{e.sqlstate} {e}" for e in errors if e.sqlstate != "08006"]
    assert not wrong, wrong


# --- pgvalve out of file descriptors ---------------------------------------------------------

# UBSan's vptr check probes memory through a pipe: with no descriptor left it takes a virtual call
# for a bad one and aborts the process (a report of the tool, not of pgvalve; test_door.py).
@pytest.mark.skipif(SANITIZED, reason="UBSan needs a spare file descriptor for its vptr check")
def test_out_of_descriptors_gives_53300_saying_so_without_a_failover_hold(plain_cluster, start):
    pv = start(plain_cluster, wrapper=["prlimit", "--nofile=64:64", "--"], workers=1,
               pool_size=1, max_overflow=2, checkout_timeout_ms=1500,
               failover={"hold_writes_ms": 60000},
               limits={"auth_timeout_ms": 60000})  # the filler sockets stay while the test runs
    h, b = pv.connect(), pv.connect()
    filler: list[socket.socket] = []
    try:
        h.execute("begin")
        h.execute("select 1")  # h holds the pool's one connection: b's request needs another
        # Sockets that fill pgvalve's descriptor table; the rest wait in its listen queue.
        for _ in range(80):
            filler.append(socket.create_connection(("127.0.0.1", pv.port), timeout=10))
        wait_until(lambda: "event=accept_failed" in pv.log_text(), 15,
                   message="pgvalve out of descriptors (accept_failed)")

        with pytest.raises(psycopg.Error) as ei:
            b.execute("select 1")
        assert ei.value.sqlstate == "53300", repr(ei.value)
        message = ei.value.diag.message_primary or ""
        assert message.startswith("pgvalve: "), message
        assert "out of file descriptors" in message and "open_files_limit" in message, message
        # A local shortage is not the host's: no failover hold, no read moved, nothing said
        # about the primary.
        log = pv.log_text()
        assert "event=writes_held" not in log
        assert "no primary is available" not in log

        for s in filler:
            s.close()
        filler.clear()
        h.execute("commit")
        assert b.execute("select 2").fetchone() == (2,)  # b kept its connection
    finally:
        for s in filler:
            s.close()
        h.close()
        b.close()
