"""Clients move between worker threads between transactions (docs/internals.md, "Packing and
spreading clients"): a light load spread over two workers is packed onto one, the other is
parked and hands the clients that connect to it over at once, and a client that moves keeps its
whole session — settings, prepared statements, TLS — and loses no statement. Session-mode
clients, which hold their server, never move."""

import threading
import time

import pytest

from pgcluster import wait_until
from test_http import metric, scrape
from test_pgbench import pgbench, pgbench_init
from test_tls import pki, tls_conf  # noqa: F401  (pki is a fixture)


def worker_clients(pv) -> list[int]:
    samples = scrape(pv)
    return [int(metric(samples, "pgvalve_worker_clients", worker=i)) for i in range(2)]


def moves(pv) -> int:
    return int(metric(scrape(pv), "pgvalve_client_moves_total"))


def active_workers(pv) -> int:
    return int(metric(scrape(pv), "pgvalve_workers_active"))


def check_pgbench(r):
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "number of failed transactions: 0 " in out, out[-3000:]
    assert "aborted" not in out, out[-3000:]


class Users:
    """Clients with session state of their own, each checking it in a loop until stopped."""

    def __init__(self, pv, count):
        self.conns = []
        for i in range(count):
            # Half over TLS: its state (OpenSSL's, in memory) moves with the socket.
            c = pv.connect(sslmode="require" if i % 2 else "disable")
            c.execute(f"SET work_mem = '{2000 + i}kB'")
            c.execute("SELECT %s::int + 1", (i,), prepare=True)
            self.conns.append(c)
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.checks = [0] * count
        self.threads = [threading.Thread(target=self.use, args=(i,)) for i in range(count)]

    def use(self, i):
        c = self.conns[i]
        while not self.stop.is_set():
            try:
                mem = c.execute("SHOW work_mem").fetchone()[0]
                assert mem == f"{2000 + i}kB", f"client {i} sees work_mem {mem}"
                got = c.execute("SELECT %s::int + 1", (i,), prepare=True).fetchone()[0]
                assert got == i + 1, f"client {i} got {got}"
                ssl = c.pgconn.ssl_in_use
                assert ssl == bool(i % 2), f"client {i}: TLS in use {ssl}"
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(f"client {i}: {e!r}")
                return
            self.checks[i] += 1
            time.sleep(0.01)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)
        for c in self.conns:
            c.close()


def test_a_light_load_is_packed_onto_one_worker_and_moved_clients_keep_their_session(
        pgvalve, pki):  # noqa: F811
    pv = pgvalve(pool_size=4, checkout_timeout_ms=10000, tls=tls_conf(pki, mode="prefer"))
    pgbench_init(pv)
    with Users(pv, 8) as users:
        # 8 pgbench clients at 1,000 transactions a second and the users above: a few hundredths
        # of a core to a few tenths, whatever the machine — worth packing, far from a full core.
        # The kernel spread the 16 clients over both workers; the balancer packs them.
        done = {}
        bench = threading.Thread(target=lambda: done.setdefault(
            "r", pgbench(pv, "-S", "-c", "8", "-j", "2", "-R", "1000", "-T", "8")))
        bench.start()
        try:
            wait_until(lambda: worker_clients(pv)[1] == 0 and worker_clients(pv)[0] >= 16,
                       timeout=7, interval=0.2, message="every client on worker 0")
        finally:
            bench.join(timeout=60)
        check_pgbench(done["r"])
        assert moves(pv) > 0
        assert active_workers(pv) == 1
        assert "event=workers_active active=1 before=2" in pv.log_text()
        # Worker 1 is parked: clients that connect now reach worker 0's listener (the kernel's
        # own spreading would give half of them to worker 1, to hand over: 32 all on worker 0
        # by chance has a probability of 2^-32).
        late = [pv.connect() for _ in range(32)]
        for i, c in enumerate(late):
            assert c.execute("SELECT %s::int", (i,)).fetchone()[0] == i
        time.sleep(1.5)  # the figures are published once a second
        assert worker_clients(pv) == [40, 0]  # the users and the late ones
        assert "connection_steering_refused" not in pv.log_text()
        assert "event=client_handed_over" not in pv.log_text()
        for c in late:
            c.close()
    assert not users.errors, users.errors
    assert all(n > 10 for n in users.checks), users.checks
    assert "client_move_failed" not in pv.log_text()


def test_session_mode_clients_stay_on_their_worker(pgvalve):
    pv = pgvalve(mode="session", pool_size=20)
    pgbench_init(pv)
    check_pgbench(pgbench(pv, "-S", "-c", "8", "-j", "2", "-R", "1000", "-T", "4"))
    assert moves(pv) == 0


def test_overflow_is_opened_only_when_no_worker_has_an_idle_connection(pgvalve, cluster):
    # pool_size 1, one transaction at a time from clients spread over 4 workers: the one
    # connection serves them all, moved to the worker of the client that needs it; a worker
    # without an idle connection of its own does not open an overflow one (docs/pooling.md).
    from itutil import APP_AND_OPS, app_backends, one, show_pools
    pv = pgvalve(mode="transaction", pool_size=1, max_overflow=10, workers=4, users=APP_AND_OPS)
    clients = [pv.connect() for _ in range(8)]

    def all_idle():
        row = show_pools(pv)[0]
        return row["size"] != "0" and row["sv_idle"] == row["size"]

    for _ in range(3):
        for i, c in enumerate(clients):
            # The previous client had its answer just before its server went back to the pool.
            wait_until(all_idle, 5, message="every server back in the pool")
            assert one(c, "select %s::int", (i,)) == i
    assert app_backends(cluster) == 1
    row = show_pools(pv)[0]
    assert (row["size"], row["overflow"]) == ("1", "0"), row
    # The clients were on several workers: the connection moved to serve them.
    assert metric(scrape(pv), "pgvalve_pool_handoffs_total") > 0
    for c in clients:
        c.close()
