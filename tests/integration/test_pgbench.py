"""pgbench through pgvalve: many clients on few server connections, every protocol mode, no
failed transactions, no aborted clients, and the TPC-B invariant holds afterwards
(sum of account balances = teller balances = branch balances = history deltas)."""

import os
import re
import subprocess
import threading
import urllib.request

import pytest

from pgcluster import APP_DB, APP_PASSWORD, APP_USER

PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"


def pgbench_command(pv, *args):
    return [PGBENCH, "-h", "127.0.0.1", "-p", str(pv.port), "-U", APP_USER, *args, APP_DB]


PGBENCH_ENV = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGCONNECT_TIMEOUT="10")


def pgbench(pv, *args, timeout=90):
    return subprocess.run(pgbench_command(pv, *args), capture_output=True, text=True,
                          timeout=timeout, env=PGBENCH_ENV)


def pgbench_init(pv):
    r = pgbench(pv, "-i", "-s", "1", "-q")
    assert r.returncode == 0, f"pgbench -i failed:\n{r.stdout}\n{r.stderr}"


# x86-64 numbers of the calls a stuck thread is likely in.
SYSCALL_NAMES = {"0": "read", "1": "write", "7": "poll", "23": "select", "44": "sendto",
                 "45": "recvfrom", "46": "sendmsg", "47": "recvmsg", "202": "futex",
                 "232": "epoll_wait", "270": "pselect6", "271": "ppoll", "281": "epoll_pwait"}


def threads_report(name, pid):
    """Each thread's state and the system call it waits in (number and arguments): a thread
    stuck in a blocking call shows there (pgbench's libpq waits in poll() on one socket with no
    timeout; an event loop waits in epoll_wait)."""
    lines = [f"{name} (pid {pid}) threads: tid state syscall"]
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            base = f"/proc/{pid}/task/{tid}"
            with open(f"{base}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            try:
                with open(f"{base}/syscall") as f:
                    call = f.read().strip()
            except OSError as e:
                call = f"? ({e.strerror})"
            number, _, arguments = call.partition(" ")
            lines.append(f"  {tid} {state} {SYSCALL_NAMES.get(number, number)} {arguments}")
    except OSError as e:
        lines.append(f"  {e!r}")
    return "\n".join(lines)


def stall_report(pv, cluster, pgbench_pid):
    """What the servers, pgvalve and pgbench were doing, for a run that outlived its time."""
    parts = [threads_report("pgvalve", pv.pid), threads_report("pgbench", pgbench_pid)]
    try:
        rows = cluster.primary.sql(
            "select pid, state, wait_event_type, wait_event,"
            "       round(extract(epoch from now() - xact_start)::numeric, 1),"
            "       left(query, 60) from pg_stat_activity"
            " where datname = %s and pid <> pg_backend_pid() order by pid", (APP_DB,),
            dbname=APP_DB)
        parts.append("pg_stat_activity: pid state wait xact_age_s query\n" +
                     "\n".join("  " + " | ".join(str(c) for c in row) for row in rows))
        rows = cluster.primary.sql(
            "select pid, locktype, mode, relation::regclass::text from pg_locks where not granted",
            dbname=APP_DB)
        parts.append("locks waited for:\n" + "\n".join("  " + str(row) for row in rows))
    except Exception as e:  # the report must not hide the failure it explains
        parts.append(f"pg_stat_activity: {e!r}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{pv.admin_port}/metrics", timeout=5) as m:
            lines = m.read().decode().splitlines()
        parts.append("metrics:\n" + "\n".join(
            "  " + line for line in lines
            if line.startswith(("pgvalve_pool", "pgvalve_client", "pgvalve_server"))
            and "_bucket" not in line))
    except Exception as e:
        parts.append(f"metrics: {e!r}")
    return "\n".join(parts)


def run_and_check(pv, cluster, *args, expect_clients):
    # A run that outlives its 10 s by far is stuck: what the servers wait for is kept, to be
    # shown if pgbench then fails.
    reports = []
    done = threading.Event()

    proc = subprocess.Popen(pgbench_command(pv, *args, "-T", "10", "-P", "5"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=PGBENCH_ENV)

    def watch():
        if not done.wait(25):
            try:
                reports.append(stall_report(pv, cluster, proc.pid))
            except Exception as e:  # the report must not hide the failure it explains
                reports.append(f"no report: {e!r}")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stdout, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    finally:
        done.set()
        watcher.join()
    out = stdout + stderr
    # The report first: a CI log shows the start of a long message.
    detail = (f"stalled; at 25 s:\n{reports[0]}\npgbench said:\n" if reports else "") + out[-3000:]
    assert proc.returncode == 0, f"pgbench exited {proc.returncode}:\n{detail}"
    assert "aborted" not in out, detail
    m = re.search(r"number of failed transactions: (\d+)", out)
    assert m, detail
    assert int(m.group(1)) == 0, detail
    m = re.search(r"number of clients: (\d+)", out)
    assert m and int(m.group(1)) == expect_clients, detail
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    assert m and int(m.group(1)) > 0, detail
    processed = int(m.group(1))
    m = re.search(r"tps = ([0-9.]+)", out)
    assert m and float(m.group(1)) > 0, detail
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
