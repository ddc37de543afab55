"""pgbench through pgvalve: many clients on few server connections, every protocol mode, no
failed transactions, no aborted clients, and the TPC-B invariant holds afterwards
(sum of account balances = teller balances = branch balances = history deltas)."""

import os
import re
import subprocess

import pytest

from pgcluster import APP_DB, APP_PASSWORD, APP_USER

PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"


def pgbench(pv, *args, timeout=90):
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGCONNECT_TIMEOUT="10")
    cmd = [PGBENCH, "-h", "127.0.0.1", "-p", str(pv.port), "-U", APP_USER, *args, APP_DB]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return r


def pgbench_init(pv):
    r = pgbench(pv, "-i", "-s", "1", "-q")
    assert r.returncode == 0, f"pgbench -i failed:\n{r.stdout}\n{r.stderr}"


def run_and_check(pv, cluster, *args, expect_clients):
    r = pgbench(pv, *args, "-T", "10", "-P", "5")
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"pgbench exited {r.returncode}:\n{out[-4000:]}"
    assert "aborted" not in out, out[-4000:]
    m = re.search(r"number of failed transactions: (\d+)", out)
    assert m, out[-4000:]
    assert int(m.group(1)) == 0, out[-4000:]
    m = re.search(r"number of clients: (\d+)", out)
    assert m and int(m.group(1)) == expect_clients, out[-4000:]
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    assert m and int(m.group(1)) > 0, out[-4000:]
    processed = int(m.group(1))
    m = re.search(r"tps = ([0-9.]+)", out)
    assert m and float(m.group(1)) > 0, out[-4000:]
    check_balances(cluster, processed)
    return out


def check_balances(cluster, processed):
    # Read on the primary directly: this checks the data pgvalve wrote, not routing.
    a, t, b, h, n = cluster.primary.sql(
        "select (select sum(abalance) from pgbench_accounts),"
        "       (select sum(tbalance) from pgbench_tellers),"
        "       (select sum(bbalance) from pgbench_branches),"
        "       (select sum(delta) from pgbench_history),"
        "       (select count(*) from pgbench_history)", dbname=APP_DB)[0]
    assert a == t == b == h, f"balances differ: accounts={a} tellers={t} branches={b} history={h}"
    # every transaction pgbench counted as done inserted exactly one history row
    assert n == processed, f"pgbench_history has {n} rows, pgbench processed {processed}"


@pytest.fixture
def txpool(pgvalve):
    return pgvalve(mode="transaction", pool_size=4, max_overflow=0, checkout_timeout_ms=10000)


def test_transaction_mode_simple(txpool, cluster):
    pgbench_init(txpool)
    run_and_check(txpool, cluster, "-M", "simple", "-c", "32", "-j", "2",
                  expect_clients=32)


def test_transaction_mode_extended(txpool, cluster):
    pgbench_init(txpool)
    run_and_check(txpool, cluster, "-M", "extended", "-c", "32", "-j", "2",
                  expect_clients=32)


def test_session_mode_prepared(pgvalve, cluster):
    pv = pgvalve(mode="session", pool_size=40)
    pgbench_init(pv)
    run_and_check(pv, cluster, "-M", "prepared", "-c", "8", "-j", "2", expect_clients=8)


def test_transaction_mode_prepared(txpool, cluster):
    """Named prepared statements in transaction mode (DESIGN §4.2): 16 clients, 4 servers."""
    pgbench_init(txpool)
    run_and_check(txpool, cluster, "-M", "prepared", "-c", "16", "-j", "2",
                  expect_clients=16)
