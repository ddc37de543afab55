"""Small helpers shared by the integration modules: the pgvalve process's resident memory, raw
logins, the admin console's SHOW POOLS, the assertions every refusal needs (SQLSTATE, `pgvalve:`
message, connection closed), and running the driver programs of drivers/ (javac/java with PgJDBC,
node with node-postgres and postgres.js), stopping one thread of pgvalve (stalled_thread)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import time
from pathlib import Path

import psycopg

from pgcluster import APP_DB, APP_PASSWORD, APP_USER
from pgwire import RawClient

OPS_USER = "ops"
OPS_PASSWORD = "ops-secret"
APP_AND_OPS = [{"name": APP_USER, "password": APP_PASSWORD},
               {"name": OPS_USER, "password": OPS_PASSWORD, "admin": True}]

MiB = 1024 * 1024

DRIVERS = Path(__file__).resolve().parent / "drivers"
JDBC_JAR = Path("/usr/share/java/postgresql.jar")

# `PGVALVE_SANITIZE=1 tests/run`: AddressSanitizer keeps freed memory in quarantine, so RSS
# does not fall when pgvalve frees; only growth bounds are meaningful then.
SANITIZED = os.environ.get("PGVALVE_SANITIZE") == "1"


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settle_rss(pid: int, wait: float = 0.3) -> int:
    """RSS after a short pause (pgvalve finishes what it was doing)."""
    time.sleep(wait)
    return rss_bytes(pid)


def raw_login(pv, timeout: float = 10, **params) -> RawClient:
    c = RawClient("127.0.0.1", pv.port, APP_USER, APP_PASSWORD, APP_DB, params=params,
                  timeout=timeout)
    return c.connect()


def assert_pgvalve_message(msg: str | None):
    assert (msg or "").startswith("pgvalve:"), \
        f"error message does not start with 'pgvalve:': {msg!r}"


def wait_closed(sock: socket.socket, timeout: float) -> bool:
    """True when the peer closes (EOF or RST) within `timeout`; data read meanwhile is dropped."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sock.settimeout(left)
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def cancels_on_their_way(pv, a: RawClient, a_sql: str, b: RawClient, b_sql: str,
                         seconds: float = 5) -> dict:
    """A runs `a_sql` and B `b_sql` over and over while A's cancel key is sent every 3 ms;
    counts each one's statements that ran and that were cancelled (57014). A cancel still on
    its way to PostgreSQL when A's statement ends must never stop B's on the same server."""
    import struct
    import threading

    from pgwire import PgWireError

    stop = threading.Event()
    counts = {"a": 0, "a_cancelled": 0, "b": 0, "b_cancelled": 0}

    def run(client, sql, name):
        while not stop.is_set():
            try:
                client.rows(sql)
                counts[name] += 1
            except PgWireError as e:
                assert e.sqlstate == "57014", e
                counts[name + "_cancelled"] += 1

    threads = [threading.Thread(target=run, args=(a, a_sql, "a")),
               threading.Thread(target=run, args=(b, b_sql, "b"))]
    for t in threads:
        t.start()
    pid, secret = a.backend_key
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", pv.port), timeout=5) as s:
                s.sendall(struct.pack("!IIII", 16, 80877102, pid, secret))
                s.settimeout(2)
                try:
                    s.recv(1)  # pgvalve closes the connection once the cancel is passed on
                except OSError:
                    pass
            time.sleep(0.003)
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    return counts


def show_pools(pv, user: str = APP_USER) -> list[dict]:
    """SHOW POOLS rows of `user` on the admin console (the pgvalve needs APP_AND_OPS users)."""
    with psycopg.connect(pv.dsn(user=OPS_USER, password=OPS_PASSWORD, dbname="pgvalve"),
                         autocommit=True) as admin:
        cur = admin.execute("SHOW POOLS")
        cols = [d.name for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    return [r for r in rows if r.get("user") == user and r.get("database") == APP_DB]


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def drain_notifies(conn, want: int, timeout: float = 5.0) -> list[tuple[str, str]]:
    """Notifications a psycopg connection receives while it sits idle, without sending."""
    import select
    got = []
    end = time.monotonic() + timeout
    while len(got) < want:
        left = end - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([conn.fileno()], [], [], left)
        if not ready:
            break
        conn.pgconn.consume_input()
        while (n := conn.pgconn.notifies()) is not None:
            got.append((n.relname.decode(), n.extra.decode()))
    return got


def run(cmd, timeout, **kw):
    """Runs a driver program (or its build); returns the result and a transcript for asserts."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    return r, f"$ {' '.join(map(str, cmd))}\nexit {r.returncode}\n" \
              f"stdout:\n{r.stdout[-6000:]}\nstderr:\n{r.stderr[-6000:]}"


def npm_install():
    """node-postgres and postgres.js (drivers/package.json), unless they are installed."""
    if all((DRIVERS / "node_modules" / p / "package.json").exists() for p in ("pg", "postgres")):
        return
    r, out = run(["npm", "install", "--no-audit", "--no-fund", "--no-package-lock",
                  "--loglevel=error"], timeout=180, cwd=str(DRIVERS))
    assert r.returncode == 0, f"npm could not install the node drivers:\n{out}"


def app_backends(cluster) -> int:
    """The application's client backends on the primary (what a pool holds there)."""
    return cluster.primary.scalar(
        "select count(*) from pg_stat_activity where usename = %s and datname = %s "
        "and backend_type = 'client backend'", (APP_USER, APP_DB))


def fresh_table(cluster, name, ddl):
    """Table `name` (columns `ddl`) created anew on the primary, owned by the application."""
    cluster.primary.sql(f"drop table if exists {name} cascade; create table {name}({ddl}); "
                        f"alter table {name} owner to {APP_USER}", dbname=APP_DB)


@contextlib.contextmanager
def stalled_thread(pid: int, name: str):
    """Stops the thread of `pid` named `name` (a worker: "pgvalve-w1") with ptrace for the
    block, as a debugger does; the process's other threads run on. Detached at the end (and by
    the kernel if this process dies first)."""
    tid = None
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/comm") as f:
            if f.read().strip() == name:
                tid = int(t)
    assert tid is not None, f"no thread named {name} in pgvalve {pid}"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    ptrace_seize, ptrace_interrupt, ptrace_detach, wall = 0x4206, 0x4207, 17, 0x40000000
    if libc.ptrace(ptrace_seize, tid, None, None) != 0:
        raise OSError(ctypes.get_errno(), f"PTRACE_SEIZE of thread {tid}")
    try:
        assert libc.ptrace(ptrace_interrupt, tid, None, None) == 0
        os.waitpid(tid, wall)  # it has stopped
        yield tid
    finally:
        libc.ptrace(ptrace_detach, tid, None, None)
